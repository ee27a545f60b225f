//! The store and key part of a plan (runbooks 000, 002, 004): READ_ONLY windows, key store,
//! aggregate key and passphrase losses, group rekeys, planted operator mistakes and leaks, and
//! the store's own work; plain data, its swarm draw and its checks.

use std::collections::BTreeSet;

use drill_sim::rng::SeedTree;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{Action, Plan};

/// A READ_ONLY window on a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadOnlyWindow {
    pub node: String,
    pub at_ms: u64,
    pub ms: u64,
}

/// A device loses its key store file while its node is down for `down_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyStoreLoss {
    pub node: String,
    pub at_ms: u64,
    pub down_ms: u64,
}

/// A device loses its key store while down, and pairs again without the keys of `aggregates`
/// (a fresh device whose keys were not all restored): they come back only when the operator
/// restores the key backup, at the heal (runbook 000).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AggregateKeyLoss {
    pub node: String,
    pub at_ms: u64,
    pub down_ms: u64,
    pub aggregates: Vec<String>,
}

/// A device's user forgets its passphrase while its node is down for `down_ms`, and there is no
/// backup: the operator declares it lost, and pairing again gives back every key but those of
/// `aggregates`, whose payloads stay unrecoverable on this device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassphraseLoss {
    pub node: String,
    pub at_ms: u64,
    pub down_ms: u64,
    pub aggregates: Vec<String>,
}

/// A room's group key moves to a new epoch; members other than its authority get the new
/// key only `withhold_ms` later (runbook 002, "Missing Group Key").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRekey {
    pub tenant: String,
    pub at_ms: u64,
    pub withhold_ms: u64,
}

/// The store part of a plan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorePlan {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_only: Vec<ReadOnlyWindow>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_store_loss: Vec<KeyStoreLoss>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aggregate_key_loss: Vec<AggregateKeyLoss>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passphrase_loss: Vec<PassphraseLoss>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_rekeys: Vec<GroupRekey>,
    /// A planted operator mistake, for the test that shows INV-GROUP fires: a member that
    /// dropped packets from a full buffer is never reconnected to its room.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_group_reconnect: bool,
    /// Planted bugs, for tests that show a check fires: a workload plaintext written into a
    /// file on each named node's disk just before the end-of-run scan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plant_plaintext: Vec<String>,
    /// A planted operator mistake, for the test that shows INV-RECOVERY fires: the key backup
    /// of a device that lost aggregate keys is never restored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_key_restore: bool,
    /// A planted operator mistake, for the tests that show a key fault is not survived without
    /// its repair: a device that reports a key error when it opens is never answered (no backup
    /// restore, no declaration), so it refuses to work to the end of the run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_key_repair: bool,
    /// The store's own work on the devices (sagas, artifacts, migration, diagnostics bundle)
    /// and its faults; without it, none of it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<super::store_ops::OpsPlan>,
}

/// Adds store faults to `plan` (the swarm profile), from their own seed streams.
pub fn swarm(plan: &mut Plan, seeds: &SeedTree, duration_ms: u64) {
    let mut rng = seeds.stream("store-faults");
    let clients: Vec<String> = plan.clients.iter().map(|c| c.name.clone()).collect();
    let mut store = StorePlan::default();
    if rng.gen_bool(0.5) {
        for _ in 0..rng.gen_range(1..=2) {
            let node = clients[rng.gen_range(0..clients.len())].clone();
            store.read_only.push(ReadOnlyWindow { node, at_ms: rng.gen_range(0..duration_ms.max(1)), ms: rng.gen_range(100..=2_000) });
        }
    }
    if rng.gen_bool(0.3) {
        let node = clients[rng.gen_range(0..clients.len())].clone();
        store.key_store_loss.push(KeyStoreLoss { node, at_ms: rng.gen_range(0..duration_ms.max(1)), down_ms: rng.gen_range(50..=1_500) });
    }
    if rng.gen_bool(0.3) {
        let node = clients[rng.gen_range(0..clients.len())].clone();
        let written: BTreeSet<String> = plan
            .ops
            .iter()
            .filter_map(|o| match &o.action {
                Action::Append { aggregate, .. } => Some(aggregate.clone()),
                _ => None,
            })
            .collect();
        let aggregates: Vec<String> = written.into_iter().filter(|_| rng.gen_bool(0.4)).collect();
        if !aggregates.is_empty() {
            let loss = AggregateKeyLoss { node, at_ms: rng.gen_range(0..duration_ms.max(1)), down_ms: rng.gen_range(50..=1_500), aggregates };
            store.aggregate_key_loss.push(loss);
        }
    }
    // The passphrase loss draws from its own stream: every earlier draw stays as it was.
    let mut rng = seeds.stream("store-faults-passphrase");
    if rng.gen_bool(0.3) {
        let node = clients[rng.gen_range(0..clients.len())].clone();
        let mut aggregates: Vec<String> = written_aggregates(plan).into_iter().filter(|_| rng.gen_bool(0.3)).collect();
        if aggregates.is_empty() {
            aggregates.extend(written_aggregates(plan).into_iter().next());
        }
        store.passphrase_loss.push(PassphraseLoss { node, at_ms: rng.gen_range(0..duration_ms.max(1)), down_ms: rng.gen_range(50..=1_500), aggregates });
    }
    // Group rekeys draw from their own stream too.
    let mut rng = seeds.stream("store-faults-group");
    if rng.gen_bool(0.5) {
        let tenants: BTreeSet<String> = plan.clients.iter().map(|c| c.tenant.clone()).collect();
        let tenants: Vec<String> = tenants.into_iter().collect();
        for _ in 0..rng.gen_range(1..=2) {
            let tenant = tenants[rng.gen_range(0..tenants.len())].clone();
            store.group_rekeys.push(GroupRekey { tenant, at_ms: rng.gen_range(0..duration_ms.max(1)), withhold_ms: rng.gen_range(100..=4_000) });
        }
        store.group_rekeys.sort_by_key(|r| r.at_ms);
    }
    store.read_only.sort_by_key(|w| w.at_ms);
    store.ops = Some(super::store_ops::swarm(plan, seeds, duration_ms));
    if store != StorePlan::default() {
        plan.store = Some(store);
    }
}

/// The aggregates the plan's workload writes to.
fn written_aggregates(plan: &Plan) -> BTreeSet<String> {
    plan.ops
        .iter()
        .filter_map(|o| match &o.action {
            Action::Append { aggregate, .. } => Some(aggregate.clone()),
            _ => None,
        })
        .collect()
}

/// Checks the store part of a plan.
pub fn validate(plan: &Plan) -> Result<(), String> {
    let Some(s) = &plan.store else { return Ok(()) };
    let device = |n: &str| plan.clients.iter().any(|c| c.name == n);
    for w in &s.read_only {
        if !device(&w.node) {
            return Err(format!("read_only window on unknown device '{}'", w.node));
        }
    }
    for l in &s.key_store_loss {
        if !device(&l.node) {
            return Err(format!("key_store_loss on unknown device '{}'", l.node));
        }
    }
    for l in &s.aggregate_key_loss {
        if !device(&l.node) {
            return Err(format!("aggregate_key_loss on unknown device '{}'", l.node));
        }
    }
    for l in &s.passphrase_loss {
        if !device(&l.node) {
            return Err(format!("passphrase_loss on unknown device '{}'", l.node));
        }
    }
    for r in &s.group_rekeys {
        if !plan.clients.iter().any(|c| c.tenant == r.tenant) {
            return Err(format!("group_rekey of unknown tenant '{}'", r.tenant));
        }
    }
    if let Some(o) = &s.ops {
        super::store_ops::validate(plan, o)?;
    }
    for n in &s.plant_plaintext {
        if !plan.node_names().contains(n) {
            return Err(format!("plant_plaintext on unknown node '{n}'"));
        }
    }
    Ok(())
}

/// Devices whose aggregate keys the operator restores from their backup at the heal.
pub fn restore_at_heal(plan: &Plan) -> BTreeSet<String> {
    plan.store.iter().filter(|s| !s.skip_key_restore).flat_map(|s| s.aggregate_key_loss.iter().map(|l| l.node.clone())).collect()
}

/// Devices whose key errors the operator answers at the heal (one may still be refusing to
/// work: it came back after its operator's step, or crashed again before it).
pub fn repair_at_heal(plan: &Plan) -> BTreeSet<String> {
    let Some(s) = plan.store.as_ref().filter(|s| !s.skip_key_repair) else { return Default::default() };
    let losses = s.key_store_loss.iter().map(|l| &l.node).chain(s.aggregate_key_loss.iter().map(|l| &l.node));
    losses.chain(s.passphrase_loss.iter().map(|l| &l.node)).cloned().collect()
}

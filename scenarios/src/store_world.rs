//! Store and key faults in the world (runbooks 000 and 004): a device switched to READ_ONLY for
//! a while, a device that loses its key store (its node goes down and comes back with the key
//! store file gone, and pairs again), and planted bugs that prove the end-of-run scan for
//! plaintext and key material works.
//!
//! READ_ONLY is an operator's action: while it lasts, the device's appends and syncs must be
//! refused with `store:readOnly` and its stored content must not change (INV-READ-ONLY); the
//! world ends it when the window closes and again at the heal, so that a device that was down
//! when its window closed still converges.

use rand::Rng;
use serde::{Deserialize, Serialize};

use drill_sim::rng::SeedTree;

use crate::plan::Plan;

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

/// The store part of a plan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorePlan {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_only: Vec<ReadOnlyWindow>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_store_loss: Vec<KeyStoreLoss>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aggregate_key_loss: Vec<AggregateKeyLoss>,
    /// Planted bugs, for tests that show a check fires: a workload plaintext written into a
    /// file on each named node's disk just before the end-of-run scan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plant_plaintext: Vec<String>,
    /// A planted operator mistake, for the test that shows INV-RECOVERY fires: the key backup
    /// of a device that lost aggregate keys is never restored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_key_restore: bool,
    /// The store's own work on the devices (sagas, artifacts, migration, diagnostics bundle)
    /// and its faults; without it, none of it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<crate::store_ops::OpsPlan>,
}

/// What the world does at a point of the timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreStep {
    /// Switch a device to READ_ONLY (`on`) or back to NORMAL.
    ReadOnly { node: String, on: bool },
    /// Power the device off, delete its key store, and boot it after `down_ms`, pairing again
    /// without the keys of `withheld`.
    LoseKeyStore { node: String, down_ms: u64, withheld: Vec<String> },
    /// A step of the store's work (see [`crate::store_ops`]).
    Ops(crate::store_ops::Step),
}

/// Adds store faults to `plan` (the swarm profile), from their own seed streams.
pub fn add_to_plan(plan: &mut Plan, seeds: &SeedTree, duration_ms: u64) {
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
        let written: std::collections::BTreeSet<String> = plan
            .ops
            .iter()
            .filter_map(|o| match &o.action {
                crate::plan::Action::Append { aggregate, .. } => Some(aggregate.clone()),
                _ => None,
            })
            .collect();
        let aggregates: Vec<String> = written.into_iter().filter(|_| rng.gen_bool(0.4)).collect();
        if !aggregates.is_empty() {
            let loss = AggregateKeyLoss { node, at_ms: rng.gen_range(0..duration_ms.max(1)), down_ms: rng.gen_range(50..=1_500), aggregates };
            store.aggregate_key_loss.push(loss);
        }
    }
    store.read_only.sort_by_key(|w| w.at_ms);
    store.ops = Some(crate::store_ops::swarm(plan, seeds, duration_ms));
    if store != StorePlan::default() {
        plan.store = Some(store);
    }
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
    if let Some(o) = &s.ops {
        crate::store_ops::validate(plan, o)?;
    }
    for n in &s.plant_plaintext {
        if !plan.node_names().contains(n) {
            return Err(format!("plant_plaintext on unknown node '{n}'"));
        }
    }
    Ok(())
}

/// The plan's store steps, by time.
pub fn steps(plan: &Plan) -> Vec<(u64, StoreStep)> {
    let Some(s) = &plan.store else { return Vec::new() };
    let mut out = Vec::new();
    for w in &s.read_only {
        out.push((w.at_ms, StoreStep::ReadOnly { node: w.node.clone(), on: true }));
        out.push((w.at_ms + w.ms, StoreStep::ReadOnly { node: w.node.clone(), on: false }));
    }
    for l in &s.key_store_loss {
        out.push((l.at_ms, StoreStep::LoseKeyStore { node: l.node.clone(), down_ms: l.down_ms, withheld: Vec::new() }));
    }
    for l in &s.aggregate_key_loss {
        out.push((l.at_ms, StoreStep::LoseKeyStore { node: l.node.clone(), down_ms: l.down_ms, withheld: l.aggregates.clone() }));
    }
    if let Some(o) = &s.ops {
        out.extend(crate::store_ops::steps(o).into_iter().map(|(t, step)| (t, StoreStep::Ops(step))));
    }
    out
}

/// Devices whose aggregate keys the operator restores from their backup at the heal.
pub fn restore_at_heal(plan: &Plan) -> std::collections::BTreeSet<String> {
    plan.store.iter().filter(|s| !s.skip_key_restore).flat_map(|s| s.aggregate_key_loss.iter().map(|l| l.node.clone())).collect()
}

//! Store and key faults in the world (runbooks 000, 002 and 004): a device switched to READ_ONLY
//! for a while, a device that loses its key store (its node goes down and comes back with the
//! key store file gone), a device whose user forgets the passphrase, and planted bugs that prove
//! the end-of-run scan for plaintext and key material works.
//!
//! **Key faults are found when the device opens, and repaired by the operator.** A device opens
//! its database and its key store together and checks that they belong together
//! (`keys::binding::bind`): a database bound to a key store that is not there is
//! `keys:halfRestoreKeyStoreMissing` (counted as `keys.half_restore`), a passphrase that does
//! not open the store is `keys:passphraseWrong`. The device then records the typed error and
//! refuses every command with it: it never runs half-working on a fresh, unbound key store. The
//! operator answers a while after the device came back, and again at the heal (runbook 002,
//! "Backup and Recovery Guidance"):
//! - with the key backup at hand (`key_store_loss`), the key store is restored from it: the
//!   same store id, so the database's binding holds again and the device carries on;
//! - without it for now (`aggregate_key_loss`), the lost store is declared lost and a
//!   replacement bound in its place, which pairs again without the keys of the named
//!   aggregates; they come back when the operator restores the backup, at the heal;
//! - when the passphrase is gone and there is no backup (`passphrase_loss`, counted as
//!   `keys.passphrase_lost`), the operator declares it lost (`KeyStore::declare_passphrase_lost`):
//!   a new store under a new passphrase, pairing again. The keys of the named aggregates are
//!   the ones pairing cannot give back: on this device their payloads are unrecoverable
//!   (`keys:payloadsUnrecoverable`, naming them), its projections skip them and report them
//!   incomplete, and everything else (other aggregates, new writes, sync) keeps working.
//!
//! The loss is the device's only. Its tenant's other devices keep their keys and read every
//! event; the server only ever held ciphertext. That is what a user with several devices
//! expects: forgetting the passphrase of one phone must not make the shop's history unreadable
//! on the others. The model's INV-RECOVERY judges the device at the end of the run against the
//! events it held when it found the fault, exempting exactly the events of aggregates whose keys
//! the world took from it and it still reports lost; INV-NO-REGEN holds across the new store
//! (the vault marker survives, the vault key comes back from a peer).
//!
//! READ_ONLY is an operator's action: while it lasts, the device's appends and syncs must be
//! refused with `store:readOnly` and its stored content must not change (INV-READ-ONLY); the
//! world ends it when the window closes and again at the heal, so that a device that was down
//! when its window closed still converges.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use drill_model::secrets::Secret;
use drill_sim::faults::Fault;
use drill_sim::trace;
use drill_sim::world::FaultStep;
use serde_json::json;

use crate::group_world::{room, Member, VaultRoom};
use crate::node::{lock, Command, Mailbox, Parts};
use crate::plan::{ClientSpec, Plan};
use crate::seam::{step_of, Build, Core, Hook, Later, StepBox, Subsystem};
use crate::store_ops::OpsWorld;

/// How long the operator takes to answer a key error a device reports when it comes back.
pub const OPERATOR_MS: u64 = 300;

/// What the world does at a point of the timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreStep {
    /// Switch a device to READ_ONLY (`on`) or back to NORMAL.
    ReadOnly { node: String, on: bool },
    /// Power the device off, delete its key store, and boot it after `down_ms`; without
    /// `withheld` the operator restores the key backup, with it the store is declared lost and
    /// its replacement pairs again without the keys of `withheld`.
    LoseKeyStore { node: String, down_ms: u64, withheld: Vec<String> },
    /// Power the device off, make its user forget the passphrase, and boot it after `down_ms`;
    /// pairing again after the declaration gives back every key but those of `aggregates`.
    LosePassphrase { node: String, down_ms: u64, aggregates: Vec<String> },
    /// The operator answers the key error the device reported when it opened, if any.
    RepairKeys { node: String },
    /// A step of the store's work (see [`crate::store_ops`]).
    Ops(crate::store_ops::Step),
    /// A tenant's room starts a new group key epoch, handed to its members `withhold_ms` later.
    GroupRekey { tenant: String, withhold_ms: u64 },
    /// The room hands out the key of `epoch`.
    HandOutGroupKey { tenant: String, epoch: u64 },
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
    for l in &s.passphrase_loss {
        out.push((l.at_ms, StoreStep::LosePassphrase { node: l.node.clone(), down_ms: l.down_ms, aggregates: l.aggregates.clone() }));
    }
    for r in &s.group_rekeys {
        out.push((r.at_ms, StoreStep::GroupRekey { tenant: r.tenant.clone(), withhold_ms: r.withhold_ms }));
    }
    if let Some(o) = &s.ops {
        out.extend(crate::store_ops::steps(o).into_iter().map(|(t, step)| (t, StoreStep::Ops(step))));
    }
    out
}

/// The store and key work of the world as a subsystem: the plan's READ_ONLY windows, key store
/// and passphrase losses, group rekeys and the store's work ([`crate::store_ops`]: sagas,
/// artifacts, migrations, the effects node), and the tenants' rooms.
pub struct StoreWorld {
    ops: OpsWorld,
    rooms: BTreeMap<String, Arc<VaultRoom>>,
    /// Devices the operator answers in every convergence round: READ_ONLY periods ended, key
    /// errors repaired, key backups restored.
    read_only: BTreeSet<String>,
    repair: BTreeSet<String>,
    restore: BTreeSet<String>,
}

impl StoreWorld {
    /// Sets up the store work of the plan (with any, the effects node) and the tenants' rooms.
    pub fn build(b: &mut Build<'_>) -> StoreWorld {
        let plan = b.plan;
        StoreWorld {
            ops: OpsWorld::create(b.handle, plan, b.shared, b.seeds, b.nodes),
            rooms: crate::group_world::rooms(plan),
            read_only: plan.store.iter().flat_map(|s| s.read_only.iter().map(|w| w.node.clone())).collect(),
            repair: crate::plan::store::repair_at_heal(plan),
            restore: crate::plan::store::restore_at_heal(plan),
        }
    }
}

impl Subsystem for StoreWorld {
    fn steps(&self, plan: &Plan) -> Vec<(u64, StepBox)> {
        steps(plan).into_iter().map(|(t, s)| (t, Box::new(s) as StepBox)).collect()
    }

    fn apply(&mut self, step: StepBox, core: &mut Core<'_>) {
        match step_of::<StoreStep>(step) {
            StoreStep::ReadOnly { node, on } => {
                if on {
                    core.count("store.read_only");
                }
                trace::emit(&node, if on { "fault.read_only" } else { "fault.heal" }, json!({"read_only": on}));
                if core.nodes.is_down(&node) {
                    trace::emit(&node, "op.skipped", json!({"reason": "device is down", "read_only": on}));
                    return;
                }
                lock(&core.mailboxes[&node]).push(Command::SetReadOnly(on));
            }
            StoreStep::LoseKeyStore { node, down_ms, withheld } => {
                if core.nodes.is_down(&node) || !core.nodes.crash(&node) {
                    return;
                }
                core.crashed(&node);
                let lost = drill_sim::disk::DiskSim::current().lose_files(core.nodes.id(&node), crate::node::KEYS_DB);
                let kind = if withheld.is_empty() { "keys.store_lost" } else { "keys.aggregate_keys_lost" };
                core.count(kind);
                trace::emit(&node, "fault.key_store_lost", json!({"files": lost, "down_ms": down_ms, "withheld": withheld}));
                // With every key back from pairing, the operator has the backup at hand and
                // restores it; otherwise the store is declared lost and replaced.
                lock(&core.devices[&node].key_faults).restore_now = withheld.is_empty();
                lock(&core.devices[&node].withheld).extend(withheld);
                back_for_repair(core, node, down_ms);
            }
            StoreStep::LosePassphrase { node, down_ms, aggregates } => {
                if core.nodes.is_down(&node) || !core.nodes.crash(&node) {
                    return;
                }
                core.crashed(&node);
                core.count("keys.passphrase_lost");
                trace::emit(&node, "fault.passphrase_lost", json!({"down_ms": down_ms, "unrecoverable": aggregates}));
                let ctx = &core.devices[&node];
                {
                    let mut k = lock(&ctx.key_faults);
                    k.passphrase_forgotten = true;
                    k.unrecoverable.extend(aggregates.iter().cloned());
                }
                lock(&ctx.withheld).extend(aggregates);
                back_for_repair(core, node, down_ms);
            }
            StoreStep::GroupRekey { tenant, withhold_ms } => {
                let Some(room) = core.devices.values().find(|d| d.tenant == tenant).map(|d| d.parts.arc::<crate::group_world::VaultRoom>()) else { return };
                let epoch = lock(&room.epochs).rekey();
                core.count("keys.group_rekey");
                trace::emit("world", "fault.group_rekey", json!({"group": room.group, "epoch": epoch, "withhold_ms": withhold_ms}));
                core.after(withhold_ms, StoreStep::HandOutGroupKey { tenant, epoch });
            }
            StoreStep::HandOutGroupKey { tenant, epoch } => {
                let Some(room) = core.devices.values().find(|d| d.tenant == tenant).map(|d| d.parts.arc::<crate::group_world::VaultRoom>()) else { return };
                lock(&room.epochs).hand_out(epoch);
                trace::emit("world", "store.group_key_handed_out", json!({"group": room.group, "epoch": epoch}));
            }
            StoreStep::RepairKeys { node } => {
                if core.nodes.is_down(&node) {
                    trace::emit(&node, "op.skipped", json!({"reason": "device is down", "repair_keys": true}));
                    return;
                }
                lock(&core.mailboxes[&node]).push(Command::RepairKeys);
            }
            StoreStep::Ops(crate::store_ops::Step::CrashEffects { down_ms }) => {
                let node = crate::store_ops::EFFECTS_NODE;
                if self.ops.has_effects_node() && core.nodes.crash(node) {
                    self.ops.count("effects.crash");
                    core.boot_after(down_ms, node.into());
                }
            }
            StoreStep::Ops(crate::store_ops::Step::PartitionEffects { ms }) => {
                if !self.ops.has_effects_node() {
                    return;
                }
                let devices: Vec<String> = core.plan.clients.iter().map(|c| c.name.clone()).collect();
                let fault = Fault::Partition { a: vec![crate::store_ops::EFFECTS_NODE.into()], b: devices, one_way: false, ms };
                core.nodes.apply(&FaultStep::Inject(fault.clone()));
                self.ops.count("effects.partition");
                core.later.push(Later::Fault { at_ms: core.now_ms + ms, step: FaultStep::Undo(fault) });
            }
            StoreStep::Ops(s) => self.ops.apply(s, core.nodes, core.mailboxes),
        }
    }

    fn parts(&self, spec: &ClientSpec, parts: Parts) -> Parts {
        parts.with(self.ops.device(&spec.name)).with(self.rooms[&spec.tenant].clone()).with(Arc::new(Mutex::new(Member::default())))
    }

    fn heal(&mut self, core: &mut Core<'_>) {
        self.ops.heal();
        for d in core.devices.values() {
            lock(&room(d).epochs).hand_out_all();
        }
    }

    fn converge_round(&self, device: &str, mailbox: &Mutex<Mailbox>) {
        // The operator ends every READ_ONLY period (a device may have missed the end of its
        // window while down).
        if self.read_only.contains(device) {
            lock(mailbox).push(Command::SetReadOnly(false));
        }
        // The operator answers a device still refusing to work over a key error.
        if self.repair.contains(device) {
            lock(mailbox).push(Command::RepairKeys);
        }
        // The operator restores the key backup of a device that lost keys, and replays.
        if self.restore.contains(device) {
            lock(mailbox).push(Command::RestoreKeys);
        }
    }

    fn judge<'a>(&'a self, converged: bool, secrets: &'a [Secret], line: u64) -> Hook<'a> {
        Box::pin(self.ops.judge(converged, secrets, line))
    }

    fn add_counts(&self, counts: &mut BTreeMap<String, u64>) {
        self.ops.add_counts(counts);
    }
}

/// Boots a device whose keys were faulted after `down_ms`, and has the operator answer the key
/// error it reports a while later (unless the plan says the operator never does).
fn back_for_repair(core: &mut Core<'_>, node: String, down_ms: u64) {
    core.boot_after(down_ms, node.clone());
    if !core.plan.store.as_ref().is_some_and(|s| s.skip_key_repair) {
        core.after(down_ms + OPERATOR_MS, StoreStep::RepairKeys { node });
    }
}

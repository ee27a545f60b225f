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

use crate::plan::Plan;

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

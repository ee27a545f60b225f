//! What must hold when the server's event store dies and comes back (runbook 004 §5, §6.1):
//! the judgements of a restore, each a pure function of what the world read back.
//!
//! - [`check_backup_restore`] (INV-BACKUP): a verified backup restores to a chain-valid store
//!   equal to the server's at the backup point.
//! - [`check_point_in_time`] (INV-PITR): a point-in-time restore equals the committed history
//!   cut at that point (a sequence number, or each tenant's prefix up to a time).
//! - [`check_durable_across_restore`] (INV-DURABLE across a restore): every acknowledged push is
//!   on the restored server once the devices' events are re-offered; an asynchronous archive
//!   may lose only what its reported window held and no device still holds.
//! - [`check_server_projection`] (INV-SERVER-PROJECTION): the server's `aggregate_state` equals
//!   the model's fold of the server's events (over the stored, sealed payloads).
//!
//! INV-SERVER-PROJECTION and INV-BACKUP are in the registry (the 004 §3.1 and §5.3 drills on
//! the server judge them); the others join it once the world checks them.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use crate::facts::EventFact;

pub const PITR: &str = "INV-PITR";
pub use crate::invariants::{BACKUP, SERVER_PROJECTION};

/// The first event of each tenant whose `prev_hash` is not the hash of the tenant's event
/// before it (from `starts`: each tenant's anchor hash, else 32 zero bytes).
fn broken_link(events: &[EventFact], starts: &BTreeMap<String, Vec<u8>>) -> Option<(String, u64)> {
    let mut heads: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    for e in events {
        let head = heads.entry(&e.tenant).or_insert_with(|| starts.get(&e.tenant).cloned().unwrap_or_else(|| vec![0; 32]));
        if e.prev_hash != *head {
            return Some((e.tenant.clone(), e.seq));
        }
        *head = e.hash.clone();
    }
    None
}

fn same(a: &EventFact, b: &EventFact) -> bool {
    (a.seq, &a.op_id, &a.tenant, &a.kind, &a.stored, &a.prev_hash, &a.hash) == (b.seq, &b.op_id, &b.tenant, &b.kind, &b.stored, &b.prev_hash, &b.hash)
}

fn equal_stores(want: &[EventFact], got: &[EventFact]) -> Result<(), String> {
    if let Some((i, (w, g))) = want.iter().zip(got).enumerate().find(|(_, (w, g))| !same(w, g)) {
        return Err(format!("event {i} differs: expected op {} at seq {}, found op {} at seq {}", w.op_id, w.seq, g.op_id, g.seq));
    }
    if want.len() != got.len() {
        return Err(format!("{} events expected, {} found", want.len(), got.len()));
    }
    Ok(())
}

/// INV-BACKUP: `restored` (the store a verified backup restored to) chains, and equals the
/// server's events at the backup point `through_seq` (`server` read at or after that point,
/// before any loss).
pub fn check_backup_restore(server: &[EventFact], through_seq: u64, restored: &[EventFact], starts: &BTreeMap<String, Vec<u8>>) -> Result<(), String> {
    if let Some((t, seq)) = broken_link(restored, starts) {
        return Err(format!("the restored store's chain of {t} breaks at event {seq}"));
    }
    let want: Vec<EventFact> = server.iter().filter(|e| e.seq <= through_seq).cloned().collect();
    equal_stores(&want, restored).map_err(|e| format!("the restored store is not the server at seq {through_seq}: {e}"))
}

/// Where a point-in-time restore stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    Seq(u64),
    /// Each tenant's events up to the first one created after this time; `ts` gives an
    /// event's creation time.
    Time(i64),
}

/// INV-PITR: `restored` equals `history` (every committed event, in order) cut at `point`.
pub fn check_point_in_time(history: &[EventFact], point: Point, ts: impl Fn(&EventFact) -> i64, restored: &[EventFact]) -> Result<(), String> {
    let mut stopped: BTreeSet<&str> = BTreeSet::new();
    let want: Vec<EventFact> = history
        .iter()
        .filter(|e| match point {
            Point::Seq(s) => e.seq <= s,
            Point::Time(t) => {
                if stopped.contains(e.tenant.as_str()) || ts(e) > t {
                    stopped.insert(&e.tenant);
                    false
                } else {
                    true
                }
            }
        })
        .cloned()
        .collect();
    equal_stores(&want, restored).map_err(|e| format!("the point-in-time restore to {point:?} is not the history at that point: {e}"))
}

/// INV-DURABLE across a restore: every op in `acknowledged` is on the server after the
/// restore and the re-offer (`after`), except ops in `window` (an asynchronous archive's
/// reported loss window) that no device still holds (`held_by_devices`). The synchronous
/// archive passes an empty window.
pub fn check_durable_across_restore(
    acknowledged: &BTreeSet<String>,
    window: &BTreeSet<String>,
    held_by_devices: &BTreeSet<String>,
    after: &[EventFact],
) -> Result<(), String> {
    let on_server: BTreeSet<&str> = after.iter().map(|e| e.op_id.as_str()).collect();
    let lost: Vec<&String> =
        acknowledged.iter().filter(|op| !on_server.contains(op.as_str())).filter(|op| !window.contains(*op) || held_by_devices.contains(*op)).collect();
    match lost.first() {
        None => Ok(()),
        Some(first) => Err(format!(
            "{} acknowledged push(es) lost across the restore (outside the archive's reported window or still held by a device), the first op {first}",
            lost.len()
        )),
    }
}

/// The model's fold of one aggregate: events, last seq, last type, and the digest chain
/// `SHA-256(len ‖ prev ‖ len ‖ type ‖ len ‖ payload)` from 32 zero bytes, as rows of
/// `aggregate_state` (aggregate, events, last_seq, last_kind, digest) per tenant.
pub fn fold_aggregate_state(events: &[EventFact], aggregate_of: impl Fn(&EventFact) -> String) -> BTreeMap<String, Vec<Vec<String>>> {
    // (tenant, aggregate) -> (events, last seq, last type, digest)
    type Fold = (u64, u64, String, Vec<u8>);
    let mut state: BTreeMap<(String, String), Fold> = BTreeMap::new();
    for e in events {
        let s = state.entry((e.tenant.clone(), aggregate_of(e))).or_insert_with(|| (0, 0, String::new(), vec![0; 32]));
        let mut h = Sha256::new();
        for part in [s.3.as_slice(), e.kind.as_bytes(), e.stored.as_slice()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        *s = (s.0 + 1, e.seq, e.kind.clone(), h.finalize().to_vec());
    }
    let mut out: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
    for ((tenant, aggregate), (n, last, kind, digest)) in state {
        out.entry(tenant).or_default().push(vec![aggregate, n.to_string(), last.to_string(), kind, hex::encode(digest)]);
    }
    out
}

/// INV-SERVER-PROJECTION: the server's `aggregate_state` rows of every tenant equal the
/// model's fold of the server's events.
pub fn check_server_projection(folded: &BTreeMap<String, Vec<Vec<String>>>, rows: &BTreeMap<String, Vec<Vec<String>>>) -> Result<(), String> {
    let tenants: BTreeSet<&String> = folded.keys().chain(rows.keys()).collect();
    for t in tenants {
        let (want, got) = (folded.get(t).map(Vec::as_slice).unwrap_or(&[]), rows.get(t).map(Vec::as_slice).unwrap_or(&[]));
        if want != got {
            return Err(format!("tenant {t}: the server's aggregate_state is {got:?}, the fold of its events is {want:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(specs: &[(u64, &str, &str)]) -> Vec<EventFact> {
        let mut heads: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        specs
            .iter()
            .map(|&(seq, op, tenant)| {
                let prev = heads.get(tenant).cloned().unwrap_or_else(|| vec![0; 32]);
                let hash = Sha256::digest([prev.as_slice(), op.as_bytes()].concat()).to_vec();
                heads.insert(tenant.into(), hash.clone());
                EventFact {
                    seq,
                    op_id: op.into(),
                    tenant: tenant.into(),
                    kind: "k".into(),
                    replica: "r".into(),
                    write_id: seq,
                    payload: op.as_bytes().to_vec(),
                    stored: op.as_bytes().to_vec(),
                    prev_hash: prev,
                    hash,
                }
            })
            .collect()
    }

    #[test]
    fn a_backup_that_is_not_the_server_at_its_point_fires() {
        let server = chain(&[(1, "a", "acme"), (2, "b", "globex"), (3, "c", "acme")]);
        let none = BTreeMap::new();
        assert!(check_backup_restore(&server, 2, &server[..2], &none).is_ok());
        assert!(check_backup_restore(&server, 3, &server[..2], &none).unwrap_err().contains("3 events expected"));
        let mut broken = server.clone();
        broken[2].prev_hash = vec![9; 32];
        assert!(check_backup_restore(&server, 3, &broken, &none).unwrap_err().contains("breaks at event 3"));
    }

    #[test]
    fn a_point_in_time_restore_past_or_short_of_its_point_fires() {
        let history = chain(&[(1, "a", "acme"), (2, "b", "globex"), (3, "c", "acme"), (4, "d", "globex")]);
        let ts = |e: &EventFact| [0, 10, 20, 30, 15][e.seq as usize];
        assert!(check_point_in_time(&history, Point::Seq(2), ts, &history[..2]).is_ok());
        assert!(check_point_in_time(&history, Point::Seq(2), ts, &history[..3]).is_err());
        // Up to time 20: acme stops at its event created at 30, globex keeps its event at 15.
        let want = vec![history[0].clone(), history[1].clone(), history[3].clone()];
        assert!(check_point_in_time(&history, Point::Time(20), ts, &want).is_ok());
        assert!(check_point_in_time(&history, Point::Time(20), ts, &history).is_err());
    }

    #[test]
    fn a_lost_acknowledged_push_fires_unless_the_async_window_excuses_it() {
        let after = chain(&[(1, "a", "acme")]);
        let acked: BTreeSet<String> = ["a".into(), "b".into()].into();
        let empty = BTreeSet::new();
        assert!(check_durable_across_restore(&acked, &empty, &empty, &after).unwrap_err().contains("first op b"));
        let window: BTreeSet<String> = ["b".into()].into();
        assert!(check_durable_across_restore(&acked, &window, &empty, &after).is_ok());
        // A device still holds it: the re-offer should have brought it back.
        assert!(check_durable_across_restore(&acked, &window, &window, &after).is_err());
    }

    #[test]
    fn a_server_projection_that_is_not_the_fold_fires() {
        let events = chain(&[(1, "a", "acme"), (2, "b", "acme")]);
        let folded = fold_aggregate_state(&events, |_| "agg".into());
        assert_eq!(folded["acme"][0][..3], ["agg".to_string(), "2".into(), "2".into()]);
        assert!(check_server_projection(&folded, &folded).is_ok());
        let stale = fold_aggregate_state(&events[..1], |_| "agg".into());
        assert!(check_server_projection(&folded, &stale).unwrap_err().contains("tenant acme"));
    }
}

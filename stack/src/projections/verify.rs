//! Verifying projections against their events (runbook 004 §6.2 "Projection Inconsistency":
//! projection queries return incorrect data, counts do not match).
//!
//! [`verify`] replays a tenant's events, up to each projection's own cursor and with the keys the
//! caller holds now, into a scratch database in memory, and compares the result with the live
//! projection: the rows, and the aggregates skipped for missing keys. It reads the live database
//! only, so it is safe in every mode and changes nothing. What to do with an inconsistency is
//! the runbook's: mark the projection unhealthy ([`Engine::mark_unhealthy`], runbook 004 §7) and
//! rebuild it from the events ([`Engine::rebuild`]).
//!
//! Skipped aggregates that differ are reported too: the keys changed since the projection folded
//! them (a key lost after the fold, or restored without a rebuild). That is not corruption, but
//! the projection is not what a replay gives either, and a rebuild settles it the same way.

use std::collections::BTreeMap;

use rusqlite::Connection;

use super::engine::{feed, set_cursor};
use super::snapshot::Snapshot;
use super::{Engine, KeyRing, ProjectionError, Scope, SealedEvent};
use crate::store;

/// One projection of one tenant that differs from a replay of its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inconsistency {
    pub projection: &'static str,
    pub tenant: String,
    /// The first difference found.
    pub detail: String,
}

/// Compares every projection of `tenant` with a replay of `events` (any tenants, in seq order)
/// up to the projection's cursor, with `keys`. Reads only.
pub fn verify(c: &Connection, engine: &Engine, events: &[SealedEvent], keys: &dyn KeyRing, tenant: &str) -> Result<Vec<Inconsistency>, ProjectionError> {
    Ok(verify_from(c, engine, events, keys, tenant, &BTreeMap::new())?.expect("a replay from the start always compares"))
}

/// Like [`verify`], except that each projection named in `bases` is replayed from that
/// snapshot's rows and seq with only the events after it, up to the projection's cursor
/// (`events` need hold no more than those): a snapshot its caller knows matched a replay of
/// its events when it was taken (see `Client::verify_projections`), so that verifying costs the
/// tail, not the history. `None` when an event of such a tail does not open: the snapshot may
/// hold the fold of its aggregate's earlier events, which only a replay from the start leaves
/// out, so the caller verifies from the start instead. Reads only.
pub fn verify_from(
    c: &Connection,
    engine: &Engine,
    events: &[SealedEvent],
    keys: &dyn KeyRing,
    tenant: &str,
    bases: &BTreeMap<String, Snapshot>,
) -> Result<Option<Vec<Inconsistency>>, ProjectionError> {
    let mut out = Vec::new();
    // One scratch database for every projection: a replay in it clears only the projection and
    // tenant it replays, so each projection is compared with a replay of its own.
    let scratch = store::open(":memory:")?;
    engine.install(&scratch)?;
    for name in engine.names() {
        let cursor = engine.cursor(c, name, tenant)?;
        match bases.get(name) {
            Some(base) if base.through_seq <= cursor => {
                let p = engine.find(name)?;
                let tx = scratch.unchecked_transaction()?;
                p.load(&tx, tenant, &base.rows)?;
                set_cursor(&tx, name, tenant, base.through_seq)?;
                let tail = events.iter().filter(|e| e.tenant == tenant && e.seq > base.through_seq && e.seq <= cursor);
                if !feed(&tx, &[p], tail, keys)?.incomplete.is_empty() {
                    return Ok(None);
                }
                tx.commit()?;
            }
            _ => {
                let folded: Vec<SealedEvent> = events.iter().filter(|e| e.tenant == tenant && e.seq <= cursor).cloned().collect();
                let scope = Scope { tenant: Some(tenant.to_string()), projection: Some(name.to_string()), until_ts_ms: None };
                engine.rebuild(&scratch, &folded, keys, &scope)?;
            }
        }
        let skipped = |db: &Connection| -> Result<Vec<String>, ProjectionError> {
            Ok(engine.incomplete(db, tenant)?.into_iter().filter(|i| i.projection == name).map(|i| i.aggregate).collect())
        };
        let (live_skipped, replay_skipped) = (skipped(c)?, skipped(&scratch)?);
        let detail = if live_skipped != replay_skipped {
            Some(format!("skips {live_skipped:?} where a replay with the keys held now skips {replay_skipped:?}"))
        } else {
            first_difference(&engine.rows(&scratch, name, tenant)?, &engine.rows(c, name, tenant)?)
        };
        if let Some(detail) = detail {
            out.push(Inconsistency { projection: name, tenant: tenant.to_string(), detail });
        }
    }
    Ok(Some(out))
}

/// The first row where `live` differs from `replay` (both in canonical order), if any.
fn first_difference(replay: &[Vec<String>], live: &[Vec<String>]) -> Option<String> {
    let n = replay.len().max(live.len());
    (0..n).find_map(|i| match (replay.get(i), live.get(i)) {
        (Some(r), Some(l)) if r == l => None,
        (Some(r), Some(l)) => Some(format!("row {i}: a replay gives {r:?}, the projection holds {l:?}")),
        (Some(r), None) => Some(format!("row {i}: a replay gives {r:?}, the projection holds none")),
        (None, Some(l)) => Some(format!("row {i}: the projection holds {l:?}, a replay gives none")),
        (None, None) => None,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand_chacha::rand_core::SeedableRng;

    use super::*;
    use crate::crypto::{self, Key};

    struct Device {
        _dir: tempfile::TempDir,
        c: Connection,
        engine: Engine,
        keys: BTreeMap<String, Key>,
        events: Vec<SealedEvent>,
    }

    /// A device of acme (and one globex event) with every event folded.
    fn device() -> Device {
        let dir = tempfile::tempdir().unwrap();
        let c = store::open(dir.path().join("d.db").to_str().unwrap()).unwrap();
        let engine = Engine::builtin();
        engine.install(&c).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut keys = BTreeMap::new();
        let mut events = Vec::new();
        for (i, (tenant, aggregate, kind)) in
            [("acme", "a", "created"), ("acme", "b", "created"), ("globex", "g", "created"), ("acme", "a", "edited")].into_iter().enumerate()
        {
            let key: &Key = keys.entry(aggregate.to_string()).or_insert_with(|| Key::generate(&mut rng));
            let nonce = crypto::nonce_from(&mut rng);
            let ciphertext = crypto::seal_payload(key, &nonce, tenant, aggregate, kind, format!("payload {i}").as_bytes());
            events.push(SealedEvent { seq: i as u64 + 1, tenant: tenant.into(), aggregate: aggregate.into(), kind: kind.into(), ts_ms: 10, nonce, ciphertext });
        }
        engine.apply(&c, &events, &keys).unwrap();
        Device { _dir: dir, c, engine, keys, events }
    }

    impl Device {
        fn verify(&self) -> Vec<Inconsistency> {
            verify(&self.c, &self.engine, &self.events, &self.keys, "acme").unwrap()
        }
    }

    #[test]
    fn folded_projections_verify_and_a_changed_row_is_found_until_a_rebuild() {
        let d = device();
        assert_eq!(d.verify(), vec![]);
        for (sql, projection) in [
            ("UPDATE proj_aggregate_state SET events = events + 1 WHERE tenant = 'acme' AND aggregate = 'b'", "aggregate_state"),
            ("UPDATE proj_tenant_counters SET count = count + 1 WHERE tenant = 'acme' AND kind = 'edited'", "tenant_counters"),
            ("DELETE FROM proj_aggregate_state WHERE tenant = 'acme' AND aggregate = 'a'", "aggregate_state"),
        ] {
            d.c.execute_batch(sql).unwrap();
            let found = d.verify();
            assert_eq!(found.iter().map(|i| i.projection).collect::<Vec<_>>(), vec![projection], "{sql}: {found:?}");
            assert!(found[0].detail.starts_with("row "), "{found:?}");
            d.engine.rebuild(&d.c, &d.events, &d.keys, &Scope { tenant: Some("acme".into()), ..Scope::default() }).unwrap();
            assert_eq!(d.verify(), vec![], "a rebuild repairs it");
        }
    }

    #[test]
    fn a_projection_behind_its_events_is_compared_up_to_its_cursor() {
        let mut d = device();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let nonce = crypto::nonce_from(&mut rng);
        let ciphertext = crypto::seal_payload(&d.keys["b"], &nonce, "acme", "b", "edited", b"not folded yet");
        d.events.push(SealedEvent { seq: 5, tenant: "acme".into(), aggregate: "b".into(), kind: "edited".into(), ts_ms: 20, nonce, ciphertext });
        assert_eq!(d.verify(), vec![], "an event the projections have not folded is not an inconsistency");
    }

    #[test]
    fn a_key_lost_after_the_fold_is_reported_and_verifying_writes_nothing() {
        let mut d = device();
        let before = d.engine.rows(&d.c, "aggregate_state", "acme").unwrap();
        d.keys.remove("b");
        let found = d.verify();
        assert_eq!(found.len(), 2, "both projections folded b: {found:?}");
        assert!(found.iter().all(|i| i.detail.contains("skips []")), "{found:?}");
        assert_eq!(d.engine.rows(&d.c, "aggregate_state", "acme").unwrap(), before, "verify reads only");
        d.engine.rebuild(&d.c, &d.events, &d.keys, &Scope { tenant: Some("acme".into()), ..Scope::default() }).unwrap();
        assert_eq!(d.verify(), vec![]);
    }
}

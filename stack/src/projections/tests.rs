//! Engine tests: each projection equals an independent fold of its events, rebuilds in every
//! scope, missing keys, snapshots, and the resilience modes.

use std::collections::BTreeMap;

use rand_chacha::rand_core::SeedableRng;
use rusqlite::Connection;

use super::builtin::fold_digest;
use super::health::{EventStoreStatus, Level};
use super::resilience::{self, Mode};
use super::*;
use crate::crypto::{self, Key};
use crate::store;

struct World {
    _dir: tempfile::TempDir,
    c: Connection,
    keys: BTreeMap<String, Key>,
    events: Vec<SealedEvent>,
    rng: rand_chacha::ChaCha8Rng,
    engine: Engine,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let c = store::open(dir.path().join("d.db").to_str().unwrap()).unwrap();
    let engine = Engine::builtin();
    engine.install(&c).unwrap();
    World { _dir: dir, c, keys: BTreeMap::new(), events: Vec::new(), rng: rand_chacha::ChaCha8Rng::seed_from_u64(1), engine }
}

impl World {
    fn event(&mut self, tenant: &str, aggregate: &str, kind: &str, ts_ms: i64, payload: &[u8]) -> SealedEvent {
        let key = self.keys.entry(aggregate.to_string()).or_insert_with(|| Key::generate(&mut self.rng)).clone();
        let nonce = crypto::nonce_from(&mut self.rng);
        let ciphertext = crypto::seal_payload(&key, &nonce, tenant, aggregate, kind, payload);
        let e =
            SealedEvent { seq: self.events.len() as u64 + 1, tenant: tenant.into(), aggregate: aggregate.into(), kind: kind.into(), ts_ms, nonce, ciphertext };
        self.events.push(e.clone());
        e
    }

    /// A workload over two tenants and a few aggregates, timestamps 10, 20, ...
    fn workload(&mut self, n: usize) {
        for i in 0..n {
            let tenant = if i % 3 == 0 { "globex" } else { "acme" };
            let aggregate = format!("{tenant}-agg-{}", i % 4);
            let kind = ["created", "updated", "closed"][i % 3];
            self.event(tenant, &aggregate, kind, (i as i64 + 1) * 10, format!("payload {i}").as_bytes());
        }
    }

    fn rows(&self, projection: &str, tenant: &str) -> Vec<Vec<String>> {
        self.engine.rows(&self.c, projection, tenant).unwrap()
    }
}

/// The reference fold, written independently of the SQL projections.
fn reference(events: &[SealedEvent], keys: &BTreeMap<String, Key>, projection: &str, tenant: &str) -> Vec<Vec<String>> {
    let mut agg: BTreeMap<String, (u64, u64, String, Vec<u8>)> = BTreeMap::new();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for e in events.iter().filter(|e| e.tenant == tenant) {
        let Some(key) = keys.get(&e.aggregate) else { continue };
        let payload = crypto::open_payload(key, &e.nonce, &e.tenant, &e.aggregate, &e.kind, &e.ciphertext).unwrap();
        let s = agg.entry(e.aggregate.clone()).or_insert((0, 0, String::new(), vec![0u8; 32]));
        *s = (s.0 + 1, e.seq, e.kind.clone(), fold_digest(&s.3, &e.kind, &payload).to_vec());
        *counts.entry(e.kind.clone()).or_default() += 1;
    }
    match projection {
        "aggregate_state" => agg.into_iter().map(|(a, (n, seq, k, d))| vec![a, n.to_string(), seq.to_string(), k, hex::encode(d)]).collect(),
        _ => counts.into_iter().map(|(k, n)| vec![k, n.to_string()]).collect(),
    }
}

fn assert_matches_reference(w: &World, keys: &BTreeMap<String, Key>, events: &[SealedEvent]) {
    for p in ["aggregate_state", "tenant_counters"] {
        for t in ["acme", "globex"] {
            assert_eq!(w.rows(p, t), reference(events, keys, p, t), "{p} of {t}");
        }
    }
}

#[test]
fn applying_events_equals_the_fold_and_a_second_apply_changes_nothing() {
    let mut w = world();
    w.workload(20);
    let (head, tail) = w.events.split_at(7);
    w.engine.apply(&w.c, head, &w.keys).unwrap();
    let r = w.engine.apply(&w.c, &w.events, &w.keys).unwrap();
    assert_eq!(r.applied, (tail.len() * 2) as u64, "events at or below the cursor are skipped");
    assert_matches_reference(&w, &w.keys, &w.events);
    let again = w.engine.apply(&w.c, &w.events, &w.keys).unwrap();
    assert_eq!(again.applied, 0);
    assert_matches_reference(&w, &w.keys, &w.events);
}

#[test]
fn a_full_rebuild_equals_the_fold_of_the_events() {
    let mut w = world();
    w.workload(30);
    w.engine.apply(&w.c, &w.events, &w.keys).unwrap();
    // Corrupt the derived tables as a buggy projection would.
    w.c.execute("UPDATE proj_tenant_counters SET count = count + 5", []).unwrap();
    w.c.execute("DELETE FROM proj_aggregate_state WHERE aggregate = 'acme-agg-1'", []).unwrap();
    w.engine.rebuild(&w.c, &w.events, &w.keys, &Scope::default()).unwrap();
    assert_matches_reference(&w, &w.keys, &w.events);
}

#[test]
fn a_rebuild_per_tenant_or_per_projection_touches_nothing_else() {
    let mut w = world();
    w.workload(24);
    w.engine.apply(&w.c, &w.events, &w.keys).unwrap();
    w.c.execute("UPDATE proj_tenant_counters SET count = 99", []).unwrap();
    let globex_before = w.rows("tenant_counters", "globex");
    let scope = Scope { tenant: Some("acme".into()), ..Scope::default() };
    w.engine.rebuild(&w.c, &w.events, &w.keys, &scope).unwrap();
    assert_eq!(w.rows("tenant_counters", "acme"), reference(&w.events, &w.keys, "tenant_counters", "acme"));
    assert_eq!(w.rows("tenant_counters", "globex"), globex_before, "another tenant's rows are untouched");
    let agg_before = w.rows("aggregate_state", "globex");
    let scope = Scope { projection: Some("tenant_counters".into()), ..Scope::default() };
    w.engine.rebuild(&w.c, &w.events, &w.keys, &scope).unwrap();
    assert_matches_reference(&w, &w.keys, &w.events);
    assert_eq!(w.rows("aggregate_state", "globex"), agg_before);
    let bad = Scope { projection: Some("nope".into()), ..Scope::default() };
    assert_eq!(w.engine.rebuild(&w.c, &w.events, &w.keys, &bad).unwrap_err().code(), "projection:unknown");
}

#[test]
fn a_rebuild_up_to_a_time_gives_the_state_as_of_then() {
    let mut w = world();
    w.workload(20);
    let scope = Scope { until_ts_ms: Some(95), ..Scope::default() };
    w.engine.rebuild(&w.c, &w.events, &w.keys, &scope).unwrap();
    let as_of: Vec<SealedEvent> = w.events.iter().filter(|e| e.ts_ms <= 95).cloned().collect();
    assert_eq!(as_of.len(), 9);
    assert_matches_reference(&w, &w.keys, &as_of);
    // Catching up afterwards folds the rest.
    w.engine.apply(&w.c, &w.events, &w.keys).unwrap();
    assert_matches_reference(&w, &w.keys, &w.events);
}

/// A device that pushed late: the store orders an event created at 20 after one created at 30.
/// A rebuild up to 25 folds the prefix before the event created at 30, and catching up folds
/// the rest; it used to fold the one created at 20 as well, its cursor passing the one created
/// at 30, which no later apply folded.
#[test]
fn a_rebuild_up_to_a_time_stops_at_the_first_later_event_so_catching_up_misses_none() {
    let mut w = world();
    for (i, ts) in [10, 30, 20, 40, 15].into_iter().enumerate() {
        w.event("acme", &format!("acme-agg-{}", i % 2), "created", ts, format!("payload {i}").as_bytes());
    }
    w.event("globex", "globex-agg-0", "created", 5, b"other tenant");
    w.engine.apply(&w.c, &w.events, &w.keys).unwrap();
    let scope = Scope { until_ts_ms: Some(25), ..Scope::default() };
    w.engine.rebuild(&w.c, &w.events, &w.keys, &scope).unwrap();
    assert_matches_reference(&w, &w.keys, &[w.events[0].clone(), w.events[5].clone()]);
    assert_eq!(w.engine.cursor(&w.c, "aggregate_state", "acme").unwrap(), 1, "the cursor stops before the event created at 30");
    w.engine.apply(&w.c, &w.events, &w.keys).unwrap();
    assert_matches_reference(&w, &w.keys, &w.events);
}

#[test]
fn aggregates_without_keys_are_skipped_reported_and_recovered_by_a_rebuild() {
    let mut w = world();
    w.workload(20);
    let mut partial = w.keys.clone();
    partial.remove("acme-agg-1");
    let r = w.engine.apply(&w.c, &w.events, &partial).unwrap();
    assert!(r.incomplete.contains(&("acme".to_string(), "acme-agg-1".to_string())));
    assert_matches_reference(&w, &partial, &w.events);
    let inc = w.engine.incomplete(&w.c, "acme").unwrap();
    assert_eq!(inc.len(), 2, "one per projection: {inc:?}");
    assert!(inc.iter().all(|i| i.aggregate == "acme-agg-1" && i.reason == "keys:aggregateKeyMissing"));
    // The key arrives (a backup is imported): later events of the aggregate stay skipped until
    // a rebuild, so the projection never holds half an aggregate.
    w.event("acme", "acme-agg-1", "updated", 500, b"late");
    w.engine.apply(&w.c, &w.events, &w.keys).unwrap();
    assert!(!w.rows("aggregate_state", "acme").iter().any(|r| r[0] == "acme-agg-1"));
    w.engine.rebuild(&w.c, &w.events, &w.keys, &Scope::default()).unwrap();
    assert!(w.engine.incomplete(&w.c, "acme").unwrap().is_empty());
    assert_matches_reference(&w, &w.keys, &w.events);
}

/// An aggregate whose later event does not open: a rebuild leaves the whole aggregate out of
/// every projection (and reports it), where it used to keep the fold of the events before the
/// unreadable one while reporting the aggregate incomplete.
#[test]
fn a_rebuild_leaves_out_the_whole_aggregate_whose_later_event_does_not_open() {
    let mut w = world();
    w.workload(20);
    let mut events = w.events.clone();
    // The last event of acme-agg-1, after others of it were folded.
    let bad = events.iter().rposition(|e| e.aggregate == "acme-agg-1").unwrap();
    assert!(events[..bad].iter().filter(|e| e.aggregate == "acme-agg-1").count() >= 2);
    events[bad].ciphertext[0] ^= 1;
    let r = w.engine.rebuild(&w.c, &events, &w.keys, &Scope::default()).unwrap();
    assert!(r.incomplete.contains(&("acme".to_string(), "acme-agg-1".to_string())), "{r:?}");
    assert!(!w.rows("aggregate_state", "acme").iter().any(|row| row[0] == "acme-agg-1"), "no part of the aggregate is held");
    let readable: Vec<SealedEvent> = events.iter().filter(|e| e.aggregate != "acme-agg-1").cloned().collect();
    assert_eq!(w.rows("tenant_counters", "acme"), reference(&readable, &w.keys, "tenant_counters", "acme"));
    assert_eq!(w.rows("aggregate_state", "acme"), reference(&readable, &w.keys, "aggregate_state", "acme"));
    let inc = w.engine.incomplete(&w.c, "acme").unwrap();
    assert_eq!(inc.len(), 2, "one per projection: {inc:?}");
    assert!(inc.iter().all(|i| i.aggregate == "acme-agg-1" && i.reason == "crypto:tampered" && i.first_seq == events[bad].seq), "{inc:?}");
}

#[test]
fn a_tampered_payload_is_skipped_and_reported() {
    let mut w = world();
    w.workload(6);
    let mut events = w.events.clone();
    events[1].ciphertext[0] ^= 1;
    let r = w.engine.apply(&w.c, &events, &w.keys).unwrap();
    assert_eq!(r.incomplete.len(), 1);
    let tenant = &events[1].tenant;
    assert!(w.engine.incomplete(&w.c, tenant).unwrap().iter().all(|i| i.reason == "crypto:tampered"));
}

#[test]
fn read_only_refuses_apply_and_snapshot_and_changes_nothing_but_allows_recovery() {
    let mut w = world();
    w.workload(10);
    let (head, _) = w.events.split_at(5);
    w.engine.apply(&w.c, head, &w.keys).unwrap();
    resilience::set_mode(&w.c, Mode::ReadOnly, &[]).unwrap();
    let before = (w.rows("aggregate_state", "acme"), w.rows("tenant_counters", "acme"), snapshot::count(&w.c).unwrap());
    assert_eq!(w.engine.apply(&w.c, &w.events, &w.keys).unwrap_err().code(), "store:readOnly");
    assert_eq!(w.engine.snapshot(&w.c, "acme", 1).unwrap_err().code(), "store:readOnly");
    let after = (w.rows("aggregate_state", "acme"), w.rows("tenant_counters", "acme"), snapshot::count(&w.c).unwrap());
    assert_eq!(before, after);
    // The runbook's replay procedure runs in READ_ONLY.
    w.engine.rebuild(&w.c, &w.events, &w.keys, &Scope::default()).unwrap();
    assert_matches_reference(&w, &w.keys, &w.events);
}

#[test]
fn degraded_switches_off_a_non_essential_projection_only() {
    let mut w = world();
    w.workload(9);
    resilience::set_mode(&w.c, Mode::Degraded, &["tenant_counters", "aggregate_state"]).unwrap();
    let r = w.engine.apply(&w.c, &w.events, &w.keys).unwrap();
    assert_eq!(r.disabled, vec!["tenant_counters".to_string()], "an essential projection cannot be switched off");
    assert!(w.rows("tenant_counters", "acme").is_empty());
    assert_eq!(w.rows("aggregate_state", "acme"), reference(&w.events, &w.keys, "aggregate_state", "acme"));
    // Back to NORMAL: the switched-off projection catches up from its cursor.
    resilience::set_mode(&w.c, Mode::Normal, &[]).unwrap();
    w.engine.apply(&w.c, &w.events, &w.keys).unwrap();
    assert_matches_reference(&w, &w.keys, &w.events);
}

#[test]
fn snapshot_plus_tail_equals_full_replay() {
    let mut w = world();
    w.workload(12);
    w.engine.apply(&w.c, &w.events, &w.keys).unwrap();
    w.engine.snapshot(&w.c, "acme", 1_000).unwrap();
    w.workload(12);
    w.engine.apply(&w.c, &w.events, &w.keys).unwrap();
    w.c.execute("DELETE FROM proj_aggregate_state", []).unwrap();
    let restored = w.engine.restore_from_snapshot(&w.c, &w.events, &w.keys, "acme", "aggregate_state").unwrap();
    assert!(restored.used.is_some() && restored.skipped_corrupt.is_empty());
    let tail = w.events.iter().filter(|e| e.tenant == "acme" && e.seq > 12).count() as u64;
    assert_eq!(restored.tail.applied, tail, "only the tail is replayed");
    assert_eq!(w.rows("aggregate_state", "acme"), reference(&w.events, &w.keys, "aggregate_state", "acme"));
}

/// An event after the snapshot does not open: the restore must not keep the snapshot's fold of
/// that aggregate's earlier events while reporting the aggregate incomplete (it used to), so it
/// replays from the start instead.
#[test]
fn a_restore_whose_tail_has_an_unreadable_event_replays_from_the_start() {
    let mut w = world();
    w.workload(12);
    w.engine.apply(&w.c, &w.events, &w.keys).unwrap();
    w.engine.snapshot(&w.c, "acme", 1_000).unwrap();
    let late = w.event("acme", "acme-agg-1", "updated", 500, b"late");
    let mut events = w.events.clone();
    events.last_mut().unwrap().ciphertext[0] ^= 1;
    for p in ["aggregate_state", "tenant_counters"] {
        let restored = w.engine.restore_from_snapshot(&w.c, &events, &w.keys, "acme", p).unwrap();
        assert_eq!(restored.used, None, "{p}: {restored:?}");
        assert!(restored.tail.incomplete.contains(&("acme".to_string(), "acme-agg-1".to_string())), "{p}: {restored:?}");
    }
    let readable: Vec<SealedEvent> = events.iter().filter(|e| e.aggregate != late.aggregate).cloned().collect();
    assert_eq!(w.rows("aggregate_state", "acme"), reference(&readable, &w.keys, "aggregate_state", "acme"));
    assert_eq!(w.rows("tenant_counters", "acme"), reference(&readable, &w.keys, "tenant_counters", "acme"));
}

#[test]
fn a_corrupt_snapshot_is_skipped_for_the_previous_valid_one() {
    let mut w = world();
    w.workload(6);
    w.engine.apply(&w.c, &w.events, &w.keys).unwrap();
    let first = w.engine.snapshot(&w.c, "acme", 1).unwrap();
    w.workload(6);
    w.engine.apply(&w.c, &w.events, &w.keys).unwrap();
    let second = w.engine.snapshot(&w.c, "acme", 2).unwrap();
    // Snapshots are append-only...
    assert!(w.c.execute("UPDATE proj_snapshots SET state = '[]'", []).is_err());
    assert!(w.c.execute("DELETE FROM proj_snapshots", []).is_err());
    // ...so corruption comes from below SQL: simulate a flipped bit in the newest state.
    w.c.execute_batch("DROP TRIGGER proj_snapshots_no_update").unwrap();
    w.c.execute("UPDATE proj_snapshots SET state = replace(state, 'updated', 'updatex') WHERE id = ?1", [second[0]]).unwrap();
    let (snap, skipped) = w.engine.latest_valid_snapshot(&w.c, "acme", "aggregate_state").unwrap();
    assert_eq!((snap.map(|s| s.id), skipped), (Some(first[0]), vec![second[0]]));
    let restored = w.engine.restore_from_snapshot(&w.c, &w.events, &w.keys, "acme", "aggregate_state").unwrap();
    assert_eq!(restored.used, Some(first[0]));
    assert_eq!(w.rows("aggregate_state", "acme"), reference(&w.events, &w.keys, "aggregate_state", "acme"));
}

#[test]
fn a_snapshot_with_skipped_aggregates_is_refused() {
    let mut w = world();
    w.workload(6);
    let mut partial = w.keys.clone();
    partial.remove("acme-agg-1");
    w.engine.apply(&w.c, &w.events, &partial).unwrap();
    assert_eq!(w.engine.snapshot(&w.c, "acme", 1).unwrap_err().code(), "projection:snapshotIncomplete");
    assert_eq!(snapshot::count(&w.c).unwrap(), 0);
}

#[test]
fn health_reports_mode_and_unhealthy_projections() {
    let w = world();
    let h = w.engine.health(&w.c, EventStoreStatus::Writable).unwrap();
    assert!(h.is_healthy);
    w.engine.mark_unhealthy(&w.c, "tenant_counters", "counts do not match").unwrap();
    resilience::set_mode(&w.c, Mode::Degraded, &[]).unwrap();
    let h = w.engine.health(&w.c, EventStoreStatus::Writable).unwrap();
    assert_eq!((h.level, h.unhealthy_projections.len(), h.mode), (Level::Warning, 1, "DEGRADED"));
    resilience::set_mode(&w.c, Mode::ReadOnly, &[]).unwrap();
    assert_eq!(w.engine.health(&w.c, EventStoreStatus::Slow).unwrap().level, Level::Critical);
    // A rebuild clears the mark.
    w.engine.rebuild(&w.c, &w.events, &w.keys, &Scope::default()).unwrap();
    assert!(w.engine.health(&w.c, EventStoreStatus::Writable).unwrap().unhealthy_projections.is_empty());
}

fn planted(bug: crate::mutations::Bug, after: u32, times: u32) -> crate::mutations::Mutations {
    let m = crate::mutations::Mutation { node: "d0".into(), bug, after, times };
    crate::mutations::Mutations::new(&[m], Box::new(|_| {})).on("d0")
}

/// A planted fold bug lives in the incremental apply only: the projection goes wrong, the
/// verification finds it, and a rebuild from the events is right again.
#[test]
fn a_planted_fold_bug_breaks_the_incremental_apply_only_and_a_rebuild_repairs_it() {
    use crate::mutations::{Bug, FoldEffect};
    for (effect, projection) in [(FoldEffect::Twice, "tenant_counters"), (FoldEffect::Skipped, "aggregate_state")] {
        let mut w = world();
        w.workload(9);
        let bug = Bug::ProjectionFold { projection: projection.into(), event_kind: "archived".into(), effect };
        w.engine.plant(planted(bug, 0, 1));
        w.engine.apply(&w.c, &w.events, &w.keys).unwrap();
        assert_matches_reference(&w, &w.keys, &w.events);
        w.event("acme", "acme-agg-1", "archived", 500, b"the one the bug mishandles");
        w.engine.apply(&w.c, &w.events, &w.keys).unwrap();
        let found = verify::verify(&w.c, &w.engine, &w.events, &w.keys, "acme").unwrap();
        assert_eq!(found.iter().map(|i| i.projection.to_string()).collect::<Vec<_>>(), [projection], "{effect:?}");
        w.engine.rebuild(&w.c, &w.events, &w.keys, &Scope::default()).unwrap();
        assert_matches_reference(&w, &w.keys, &w.events);
        w.event("acme", "acme-agg-2", "archived", 600, b"after its one firing");
        w.engine.apply(&w.c, &w.events, &w.keys).unwrap();
        assert_matches_reference(&w, &w.keys, &w.events);
    }
}

/// A planted snapshot-writer bug fires on the chosen snapshot: it fails its checksum and the
/// restore takes the one before it.
#[test]
fn a_planted_snapshot_bug_makes_that_snapshot_fail_its_check() {
    let mut w = world();
    w.engine.plant(planted(crate::mutations::Bug::SnapshotState { projection: "tenant_counters".into() }, 1, 1));
    w.workload(6);
    w.engine.apply(&w.c, &w.events, &w.keys).unwrap();
    let first = w.engine.snapshot(&w.c, "acme", 1).unwrap();
    w.workload(6);
    w.engine.apply(&w.c, &w.events, &w.keys).unwrap();
    let second = w.engine.snapshot(&w.c, "acme", 2).unwrap();
    let (snap, skipped) = w.engine.latest_valid_snapshot(&w.c, "acme", "tenant_counters").unwrap();
    assert_eq!((snap.map(|s| s.id), skipped), (Some(first[1]), vec![second[1]]));
    let (other, none) = w.engine.latest_valid_snapshot(&w.c, "acme", "aggregate_state").unwrap();
    assert_eq!((other.map(|s| s.id), none), (Some(second[0]), vec![]), "the other projection's writer is right");
}

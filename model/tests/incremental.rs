//! The continuous check after a sync sees only the tail of a device's events
//! (`Fact::ClientTail`): it must find what a full check finds in that tail — a chain break at the
//! exact event, again at every check until it is gone, writes applied twice across old and new
//! events — and it must follow the device when it rewinds (a hydrate or forced resync drops
//! events after a cursor, a full resync anchors the chain past compacted history).

use drill_model::checker::event_hash;
use drill_model::{Checker, ClientSnapshot, EventFact, Fact, OutboxFact};

/// Events of other replicas of tenant `acme`, at seq `from + 1 ..`, chained from `prev`.
fn chain_from(prev: &[u8], from: u64, payloads: &[&[u8]]) -> Vec<EventFact> {
    let mut prev = prev.to_vec();
    let mut out = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let seq = from + i as u64 + 1;
        let hash = event_hash(&prev, "note", "acme", p);
        out.push(EventFact {
            seq,
            op_id: format!("client-2-{seq}"),
            tenant: "acme".into(),
            kind: "note".into(),
            replica: "client-2".into(),
            write_id: seq,
            payload: p.to_vec(),
            stored: p.to_vec(),
            prev_hash: prev.clone(),
            hash: hash.clone(),
        });
        prev = hash;
    }
    out
}

fn snapshot(outbox: &[(u64, &[u8])], events: Vec<EventFact>, anchor: Option<(u64, Vec<u8>)>) -> ClientSnapshot {
    ClientSnapshot {
        node: "client-1".into(),
        replica: "client-1".into(),
        tenant: "acme".into(),
        anchor,
        outbox: outbox
            .iter()
            .map(|(w, p)| OutboxFact { write_id: *w, op_id: format!("client-1-{w}"), payload: p.to_vec(), stored_sha256: drill_model::facts::sha256_hex(p) })
            .collect(),
        events,
    }
}

fn checker() -> Checker {
    let mut c = Checker::new();
    c.observe(Fact::Client { node: "client-1".into(), replica: "client-1".into(), tenant: "acme".into() }, 1);
    c
}

fn full(c: &mut Checker, events: Vec<EventFact>, line: u64) {
    c.observe(Fact::ClientState { snapshot: snapshot(&[], events, None), after_recovery: true }, line);
}

fn tail(c: &mut Checker, after_seq: u64, events: Vec<EventFact>, line: u64) {
    c.observe(Fact::ClientTail { snapshot: snapshot(&[], events, None), after_seq }, line);
}

fn ids(c: &Checker) -> Vec<(String, u64)> {
    c.violations().iter().map(|v| (v.invariant.clone(), v.trace_line)).collect()
}

const GENESIS: [u8; 32] = [0; 32];

#[test]
fn a_tail_is_verified_from_the_last_verified_hash() {
    let mut c = checker();
    let all = chain_from(&GENESIS, 0, &[b"a", b"b", b"c", b"d", b"e"]);
    assert_eq!(c.verified_through("client-1"), None, "no full check yet");
    full(&mut c, all[..2].to_vec(), 2);
    assert_eq!(c.verified_through("client-1"), Some(2));
    tail(&mut c, 2, all[2..].to_vec(), 3);
    assert!(c.violations().is_empty(), "{:?}", c.violations());
    assert_eq!(c.verified_through("client-1"), Some(5));
    // A tail that does not continue the verified chain breaks at its first event.
    let stray = chain_from(&[9u8; 32], 5, &[b"f"]);
    tail(&mut c, 5, stray, 4);
    assert_eq!(ids(&c), vec![("INV-CHAIN".to_string(), 4)]);
    assert!(c.violations()[0].message.contains("event 6"), "{}", c.violations()[0].message);
}

#[test]
fn a_break_in_a_tail_is_reported_at_the_exact_event_and_again_until_it_is_gone() {
    let mut c = checker();
    let mut evs = chain_from(&GENESIS, 0, &[b"a", b"b", b"c", b"d"]);
    full(&mut c, evs[..1].to_vec(), 2);
    evs[2].stored = b"tampered".to_vec();
    tail(&mut c, 1, evs[1..].to_vec(), 3);
    assert_eq!(ids(&c), vec![("INV-CHAIN".to_string(), 3)]);
    assert!(c.violations()[0].message.contains("event 3"), "{}", c.violations()[0].message);
    // The verified prefix ends before the break, so the next check reads it again.
    assert_eq!(c.verified_through("client-1"), Some(2));
    tail(&mut c, 2, evs[2..].to_vec(), 4);
    assert_eq!(ids(&c).len(), 2);
    assert!(c.violations()[1].message.contains("event 3"));
}

#[test]
fn a_rewind_forgets_what_came_after_it_and_verifies_what_replaced_it() {
    let mut c = checker();
    let first = chain_from(&GENESIS, 0, &[b"a", b"b", b"c", b"d"]);
    full(&mut c, first.clone(), 2);
    // A hydrate back to 2, then a sync pulls 3 and 4 again: the same events verify.
    tail(&mut c, 2, first[2..].to_vec(), 3);
    assert!(c.violations().is_empty(), "{:?}", c.violations());
    // Replaced by events that do not chain from 2: a break at 3, although 3 was verified before.
    let mut other = first[2..].to_vec();
    other[0].stored = b"x".to_vec();
    tail(&mut c, 2, other, 4);
    assert_eq!(ids(&c), vec![("INV-CHAIN".to_string(), 4)]);
}

#[test]
fn a_full_resync_anchors_the_tail_past_what_was_verified() {
    let mut c = checker();
    let all = chain_from(&GENESIS, 0, &[b"a", b"b", b"c", b"d", b"e", b"f"]);
    full(&mut c, all[..2].to_vec(), 2);
    // The device resynchronised from the server's floor at 4 (events 1..=4 compacted away) and
    // pulled 5 and 6: they chain from the anchor, not from event 2.
    let anchor = Some((4, all[3].hash.clone()));
    c.observe(Fact::ClientTail { snapshot: snapshot(&[], all[4..].to_vec(), anchor.clone()), after_seq: 2 }, 3);
    assert!(c.violations().is_empty(), "{:?}", c.violations());
    assert_eq!(c.verified_through("client-1"), Some(6));
    // And the next tail continues from 6.
    let next = chain_from(&all[5].hash, 6, &[b"g"]);
    c.observe(Fact::ClientTail { snapshot: snapshot(&[], next, anchor), after_seq: 6 }, 4);
    assert!(c.violations().is_empty(), "{:?}", c.violations());
}

#[test]
fn an_op_applied_before_and_again_in_a_tail_is_applied_twice() {
    let mut c = checker();
    let all = chain_from(&GENESIS, 0, &[b"a", b"b", b"c"]);
    full(&mut c, all[..2].to_vec(), 2);
    let mut again = all[2].clone();
    again.op_id = all[0].op_id.clone();
    again.hash = event_hash(&all[1].hash, "note", "acme", &again.stored);
    tail(&mut c, 2, vec![again], 3);
    assert_eq!(ids(&c), vec![("INV-ONCE".to_string(), 3)]);
}

#[test]
fn an_own_write_applied_earlier_and_pending_again_is_caught_by_a_tail_check() {
    let mut c = checker();
    c.observe(Fact::AppendStarted { node: "client-1".into(), payload: b"mine".to_vec() }, 2);
    c.observe(
        Fact::AppendAcked { node: "client-1".into(), write_id: 1, op_id: "client-1-1".into(), stored_sha256: drill_model::facts::sha256_hex(b"mine") },
        3,
    );
    let mut evs = chain_from(&GENESIS, 0, &[b"mine"]);
    evs[0].replica = "client-1".into();
    evs[0].op_id = "client-1-1".into();
    evs[0].write_id = 1;
    full(&mut c, evs, 4);
    assert!(c.violations().is_empty(), "{:?}", c.violations());
    // The write is back in the outbox although its event was verified in an earlier check.
    c.observe(Fact::ClientTail { snapshot: snapshot(&[(1, b"mine")], vec![], None), after_seq: 1 }, 5);
    assert_eq!(ids(&c), vec![("INV-ONCE".to_string(), 5)]);
}

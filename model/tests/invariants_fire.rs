//! Every invariant demonstrably fires, and uncertainty never produces a false alarm.

use drill_model::checker::event_hash;
use drill_model::{Checker, ClientSnapshot, EventFact, Fact, OutboxFact, ServerSnapshot};

fn chain(tenant: &str, writes: &[(&str, u64, &[u8])]) -> Vec<EventFact> {
    let mut prev = vec![0u8; 32];
    let mut out = Vec::new();
    for (i, (replica, w, p)) in writes.iter().enumerate() {
        let hash = event_hash(&prev, "note", tenant, p);
        out.push(EventFact {
            seq: i as u64 + 1,
            op_id: format!("{replica}-{w}"),
            tenant: tenant.into(),
            kind: "note".into(),
            replica: replica.to_string(),
            write_id: *w,
            payload: p.to_vec(),
            stored: p.to_vec(),
            prev_hash: prev.clone(),
            hash: hash.clone(),
        });
        prev = hash;
    }
    out
}

fn client(outbox: &[(u64, &[u8])], events: Vec<EventFact>) -> ClientSnapshot {
    ClientSnapshot {
        node: "client-1".into(),
        replica: "client-1".into(),
        tenant: "acme".into(),
        anchor: None,
        outbox: outbox
            .iter()
            .map(|(w, p)| OutboxFact { write_id: *w, op_id: format!("client-1-{w}"), payload: p.to_vec(), stored_sha256: drill_model::facts::sha256_hex(p) })
            .collect(),
        events,
    }
}

fn checker_with_ack(payload: &[u8]) -> Checker {
    let mut c = Checker::new();
    c.observe(Fact::Client { node: "client-1".into(), replica: "client-1".into(), tenant: "acme".into() }, 1);
    c.observe(Fact::AppendStarted { node: "client-1".into(), payload: payload.to_vec() }, 2);
    c.observe(
        Fact::AppendAcked { node: "client-1".into(), write_id: 1, op_id: "client-1-1".into(), stored_sha256: drill_model::facts::sha256_hex(payload) },
        3,
    );
    c
}

fn ids(c: &Checker) -> Vec<String> {
    c.violations().iter().map(|v| v.invariant.clone()).collect()
}

#[test]
fn durable_fires_when_an_acknowledged_write_is_lost() {
    let mut c = checker_with_ack(b"a");
    c.observe(Fact::Crashed { node: "client-1".into() }, 4);
    c.observe(Fact::ClientState { snapshot: client(&[], vec![]), after_recovery: true }, 5);
    assert_eq!(ids(&c), vec!["INV-DURABLE"]);
    assert_eq!(c.violations()[0].trace_line, 5);
}

#[test]
fn durable_fires_on_a_write_nothing_explains() {
    let mut c = checker_with_ack(b"a");
    c.observe(Fact::ClientState { snapshot: client(&[(1, b"a"), (2, b"ghost")], vec![]), after_recovery: true }, 5);
    assert_eq!(ids(&c), vec!["INV-DURABLE"]);
}

#[test]
fn uncertain_writes_may_go_either_way_but_then_stay_settled() {
    for present in [false, true] {
        let mut c = checker_with_ack(b"a");
        c.observe(Fact::AppendStarted { node: "client-1".into(), payload: b"b".to_vec() }, 4);
        c.observe(Fact::Crashed { node: "client-1".into() }, 5);
        let outbox: Vec<(u64, &[u8])> = if present { vec![(1, b"a"), (2, b"b")] } else { vec![(1, b"a")] };
        c.observe(Fact::ClientState { snapshot: client(&outbox, vec![]), after_recovery: true }, 6);
        assert!(c.violations().is_empty(), "present={present}: {:?}", c.violations());
        // Once settled as having happened, losing it is a violation.
        c.observe(Fact::ClientState { snapshot: client(&[(1, b"a")], vec![]), after_recovery: false }, 7);
        assert_eq!(c.violations().is_empty(), !present);
    }
}

#[test]
fn chain_fires_at_the_exact_event() {
    let mut c = checker_with_ack(b"a");
    let mut evs = chain("acme", &[("client-1", 1, b"a"), ("client-2", 1, b"x"), ("client-2", 2, b"y")]);
    // The chain covers the stored form; a tampered one no longer opens, so the world hands the
    // model the stored bytes as the payload.
    evs[1].stored = b"tampered".to_vec();
    evs[1].payload = b"tampered".to_vec();
    c.observe(Fact::ClientState { snapshot: client(&[], evs), after_recovery: false }, 9);
    assert_eq!(ids(&c), vec!["INV-CHAIN"]);
    assert!(c.violations()[0].message.contains("event 2"), "{}", c.violations()[0].message);
}

#[test]
fn once_fires_on_a_write_applied_twice() {
    let mut c = checker_with_ack(b"a");
    let mut evs = chain("acme", &[("client-1", 1, b"a"), ("client-1", 1, b"a")]);
    evs[1].seq = 2;
    c.observe(Fact::ClientState { snapshot: client(&[], evs), after_recovery: false }, 9);
    assert!(ids(&c).contains(&"INV-ONCE".to_string()), "{:?}", c.violations());
}

#[test]
fn once_fires_on_a_write_both_applied_and_pending() {
    let mut c = checker_with_ack(b"a");
    let evs = chain("acme", &[("client-1", 1, b"a")]);
    c.observe(Fact::ClientState { snapshot: client(&[(1, b"a")], evs), after_recovery: false }, 9);
    assert_eq!(ids(&c), vec!["INV-ONCE"]);
}

#[test]
fn converge_fires_when_a_device_lags() {
    let mut c = checker_with_ack(b"a");
    let server =
        ServerSnapshot { node: "server".into(), pruned: vec![], anchors: vec![], events: chain("acme", &[("client-1", 1, b"a"), ("client-2", 1, b"b")]) };
    let lagging = client(&[], chain("acme", &[("client-1", 1, b"a")]));
    c.observe(Fact::PushAcked { node: "client-1".into(), op_ids: vec!["client-1-1".into()] }, 4);
    c.check_final(&server, &[lagging], 10, true);
    assert_eq!(ids(&c), vec!["INV-CONVERGE"]);
}

#[test]
fn durable_fires_when_the_server_loses_an_acknowledged_push() {
    let mut c = checker_with_ack(b"a");
    c.observe(Fact::PushAcked { node: "client-1".into(), op_ids: vec!["client-1-1".into()] }, 4);
    c.observe(Fact::ServerState { snapshot: ServerSnapshot { node: "server".into(), pruned: vec![], anchors: vec![], events: vec![] } }, 5);
    assert_eq!(ids(&c), vec!["INV-DURABLE"]);
    assert_eq!(c.violations()[0].node, "server");
}

#[test]
fn a_correct_history_passes_and_counts_checks() {
    let mut c = checker_with_ack(b"a");
    let evs = chain("acme", &[("client-1", 1, b"a")]);
    let server = ServerSnapshot { node: "server".into(), pruned: vec![], anchors: vec![], events: evs.clone() };
    c.observe(Fact::PushAcked { node: "client-1".into(), op_ids: vec!["client-1-1".into()] }, 4);
    c.check_final(&server, &[client(&[], evs)], 10, true);
    assert!(c.violations().is_empty(), "{:?}", c.violations());
    for id in ["INV-DURABLE", "INV-CHAIN", "INV-ONCE", "INV-CONVERGE"] {
        assert!(c.checks().get(id).copied().unwrap_or(0) > 0, "{id} never checked");
    }
}

#[test]
fn fail_closed_fires_when_a_failed_attempt_changed_state() {
    let mut c = checker_with_ack(b"a");
    let failed = |after: &str| Fact::SyncFailed {
        node: "client-1".into(),
        code: "sync:transport".into(),
        signature: None,
        expected: None,
        state_before: "{\"replica\":\"client-1\",\"cursor\":3}".into(),
        state_after: after.into(),
    };
    c.observe(failed("{\"replica\":\"client-1\",\"cursor\":3}"), 4);
    assert!(c.violations().is_empty());
    c.observe(failed("{\"replica\":\"client-1\",\"cursor\":5}"), 5);
    assert_eq!(ids(&c), vec!["INV-FAIL-CLOSED"]);
}

#[test]
fn guardrail_fires_on_a_wrong_missing_or_spurious_signature() {
    let sig = |got: Option<&str>, expected: Option<&str>| Fact::SyncFailed {
        node: "client-1".into(),
        code: got.unwrap_or("sync:transport").into(),
        signature: got.map(Into::into),
        expected: expected.map(Into::into),
        state_before: "{\"replica\":\"client-1\"}".into(),
        state_after: "{\"replica\":\"client-1\"}".into(),
    };
    let mut c = checker_with_ack(b"a");
    c.observe(sig(Some("pull:pullCursorRegression"), Some("pull:pullCursorRegression")), 4);
    assert!(c.violations().is_empty());
    c.observe(sig(Some("pull:pullPageInvariantViolation"), Some("pull:pullCursorRegression")), 5);
    c.observe(sig(Some("pull:pullCursorRegression"), None), 6);
    c.observe(Fact::SyncSucceeded { node: "client-1".into(), expected: Some("reconcile:lastWriteIdRegression".into()) }, 7);
    assert_eq!(ids(&c), vec!["INV-GUARDRAIL"; 3]);
    // A timeout after the fault was injected proves nothing, and is no violation.
    c.observe(sig(None, Some("flush:staleWriteRecoveryExhausted")), 8);
    assert_eq!(c.violations().len(), 3);
}

#[test]
fn a_write_the_server_holds_may_leave_the_device() {
    let mut c = checker_with_ack(b"a");
    c.observe(Fact::PushAcked { node: "client-1".into(), op_ids: vec!["client-1-1".into()] }, 4);
    c.observe(Fact::ClientState { snapshot: client(&[], vec![]), after_recovery: true }, 5);
    assert!(c.violations().is_empty(), "{:?}", c.violations());
}

/// A device anchored past compacted history may drop a write the server compacted, even when
/// the push's acknowledgement was never recorded; the write is then the server's to hold, and a
/// server that does not hold it (stored or compacted) breaks INV-DURABLE.
#[test]
fn an_anchored_device_hands_a_dropped_write_to_the_server_which_must_hold_it() {
    let anchored = || {
        let mut c = checker_with_ack(b"a");
        let mut snap = client(&[], vec![]);
        snap.anchor = Some((5, vec![9; 32]));
        c.observe(Fact::Crashed { node: "client-1".into() }, 4);
        c.observe(Fact::ClientState { snapshot: snap, after_recovery: true }, 5);
        assert!(c.violations().is_empty(), "{:?}", c.violations());
        c
    };
    let mut c = anchored();
    c.observe(Fact::ServerState { snapshot: ServerSnapshot { node: "server".into(), pruned: vec![], anchors: vec![], events: vec![] } }, 6);
    assert_eq!(ids(&c), vec!["INV-DURABLE"]);
    assert_eq!(c.violations()[0].node, "server");
    let mut c = anchored();
    let pruned = drill_model::facts::PrunedFact {
        tenant: "acme".into(),
        replica: "client-1".into(),
        op_id: "client-1-1".into(),
        seq: 3,
        payload_sha256: drill_model::facts::sha256_hex(b"a"),
    };
    c.observe(Fact::ServerState { snapshot: ServerSnapshot { node: "server".into(), pruned: vec![pruned], anchors: vec![], events: vec![] } }, 6);
    assert!(c.violations().is_empty(), "{:?}", c.violations());
}

//! INV-RECOVERY fires when a recovery loses, changes or doubles a committed event, and allows
//! exactly the losses a runbook calls unrecoverable; it is registered with the drilled runbooks.

use std::collections::BTreeSet;

use drill_model::recovery::check_recovery;
use drill_model::EventFact;

fn events(tenant: &str, ops: &[(&str, &[u8])]) -> Vec<EventFact> {
    ops.iter()
        .enumerate()
        .map(|(i, (op, p))| EventFact {
            seq: i as u64 + 1,
            op_id: op.to_string(),
            tenant: tenant.into(),
            kind: "note".into(),
            replica: "client-1".into(),
            write_id: i as u64 + 1,
            payload: p.to_vec(),
            stored: p.to_vec(),
            prev_hash: Vec::new(),
            hash: Vec::new(),
        })
        .collect()
}

#[test]
fn a_recovery_that_keeps_everything_holds_even_when_it_renumbers() {
    let committed = events("acme", &[("a", b"1"), ("b", b"2")]);
    let mut after = events("acme", &[("x", b"0"), ("a", b"1"), ("b", b"2")]);
    after[1].seq = 10;
    assert!(check_recovery(&committed, &after, &BTreeSet::new()).is_ok());
}

#[test]
fn a_lost_event_fires_and_names_the_first() {
    let committed = events("acme", &[("a", b"1"), ("b", b"2"), ("c", b"3")]);
    let after = events("acme", &[("a", b"1")]);
    let why = check_recovery(&committed, &after, &BTreeSet::new()).unwrap_err();
    assert!(why.contains("2 committed event(s) lost") && why.contains("op b"), "{why}");
}

#[test]
fn only_what_the_runbook_calls_unrecoverable_may_be_lost() {
    let committed = events("acme", &[("a", b"1"), ("b", b"2"), ("c", b"3")]);
    let after = events("acme", &[("a", b"1")]);
    let some: BTreeSet<String> = ["b".to_string()].into();
    assert!(check_recovery(&committed, &after, &some).is_err(), "c is still lost");
    let both: BTreeSet<String> = ["b".to_string(), "c".to_string()].into();
    assert!(check_recovery(&committed, &after, &both).is_ok());
}

#[test]
fn a_changed_payload_tenant_or_type_fires() {
    let committed = events("acme", &[("a", b"1")]);
    assert!(check_recovery(&committed, &events("acme", &[("a", b"X")]), &BTreeSet::new()).unwrap_err().contains("changed"));
    assert!(check_recovery(&committed, &events("globex", &[("a", b"1")]), &BTreeSet::new()).unwrap_err().contains("changed"));
    let mut kind = events("acme", &[("a", b"1")]);
    kind[0].kind = "other".into();
    assert!(check_recovery(&committed, &kind, &BTreeSet::new()).unwrap_err().contains("changed"));
}

#[test]
fn an_event_held_twice_fires() {
    let committed = events("acme", &[("a", b"1")]);
    let twice = events("acme", &[("a", b"1"), ("a", b"1")]);
    assert!(check_recovery(&committed, &twice, &BTreeSet::new()).unwrap_err().contains("twice"));
}

#[test]
fn inv_recovery_is_registered() {
    let inv = drill_model::invariants::find(drill_model::invariants::RECOVERY).expect("registered");
    assert!(inv.runbook.contains("001") && inv.runbook.contains("004"));
}

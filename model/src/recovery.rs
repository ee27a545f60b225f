//! INV-RECOVERY: after a drill's recovery, no committed event is lost, except what a runbook
//! says is unrecoverable.
//!
//! A drill reads the committed events (the server's total order for a tenant, or a store's own
//! events) before it injects its failure, runs the runbook's recovery, and reads the events back.
//! Every committed event must come back exactly — same op id, tenant, type and stored payload —
//! and at most once, unless the drill names it as lost by design.

use std::collections::{BTreeMap, BTreeSet};

use crate::facts::EventFact;

/// Checks the events read back after a recovery against the events committed before the
/// failure. `unrecoverable` holds the op ids a runbook says cannot come back.
pub fn check_recovery(committed: &[EventFact], after: &[EventFact], unrecoverable: &BTreeSet<String>) -> Result<(), String> {
    let mut seen: BTreeMap<&str, &EventFact> = BTreeMap::new();
    for e in after {
        if seen.insert(e.op_id.as_str(), e).is_some() {
            return Err(format!("op {} is held twice after the recovery", e.op_id));
        }
    }
    let mut lost = Vec::new();
    for c in committed.iter().filter(|c| !unrecoverable.contains(&c.op_id)) {
        match seen.get(c.op_id.as_str()) {
            None => lost.push(c.op_id.clone()),
            Some(a) if a.tenant != c.tenant || a.kind != c.kind || a.payload != c.payload => {
                return Err(format!("op {} came back changed (seq {} before, {} after)", c.op_id, c.seq, a.seq));
            }
            Some(_) => {}
        }
    }
    if let Some(first) = lost.first() {
        return Err(format!("{} committed event(s) lost by the recovery, the first op {first}", lost.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, op: &str, payload: &[u8]) -> EventFact {
        EventFact {
            seq,
            op_id: op.into(),
            tenant: "acme".into(),
            kind: "created".into(),
            replica: "client-1".into(),
            write_id: seq,
            payload: payload.to_vec(),
            stored: payload.to_vec(),
            prev_hash: vec![],
            hash: vec![],
        }
    }

    #[test]
    fn a_lost_event_fires_unless_the_runbook_says_it_is_unrecoverable() {
        let committed = [ev(1, "a", b"1"), ev(2, "b", b"2")];
        assert!(check_recovery(&committed, &committed, &BTreeSet::new()).is_ok());
        let err = check_recovery(&committed, &committed[..1], &BTreeSet::new()).unwrap_err();
        assert!(err.contains("lost") && err.contains("op b"), "{err}");
        assert!(check_recovery(&committed, &committed[..1], &["b".to_string()].into()).is_ok());
    }

    #[test]
    fn a_changed_or_doubled_event_fires() {
        let committed = [ev(1, "a", b"1")];
        assert!(check_recovery(&committed, &[ev(1, "a", b"X")], &BTreeSet::new()).unwrap_err().contains("changed"));
        assert!(check_recovery(&committed, &[ev(1, "a", b"1"), ev(2, "a", b"1")], &BTreeSet::new()).unwrap_err().contains("twice"));
    }
}

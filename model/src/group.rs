//! INV-GROUP (runbook 002, "Missing Group Key"): every packet of a room, under whatever epoch,
//! reaches every member once the member holds that epoch's key, exactly as it was sent. A packet
//! under an epoch whose key has not arrived waits in the member's bounded buffer and is replayed
//! when the key arrives; one that found the buffer full is dropped with a typed error and comes
//! back when the member reconnects to the room and reads it again. Nothing is lost silently,
//! nothing is altered, and after the heal every member holds every epoch's key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::invariants::GROUP;
use crate::store::Judgement;

/// One packet the room carried: its id, epoch and the SHA-256 of its plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentPacket {
    pub id: u64,
    pub epoch: u64,
    pub sha256: String,
}

/// One member's view at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupFacts {
    pub node: String,
    pub group: String,
    /// Everything the room carried.
    pub sent: Vec<SentPacket>,
    /// The epochs whose keys the room has handed out (after the heal: every epoch).
    pub epochs: Vec<u64>,
    /// The epochs whose keys the member holds.
    pub held: Vec<u64>,
    /// Packets the member delivered, by id, with the SHA-256 of the plaintext it read.
    pub delivered: BTreeMap<u64, String>,
    /// Packets still waiting in its buffer.
    pub buffered: Vec<u64>,
}

/// INV-GROUP over one member at the end of a run.
pub fn check_group(f: &GroupFacts, line: u64) -> Judgement {
    let mut j = Judgement::default();
    if f.sent.is_empty() {
        return j;
    }
    j.check(GROUP);
    let sent: BTreeMap<u64, &SentPacket> = f.sent.iter().map(|p| (p.id, p)).collect();
    let mut bad = |m: String| j.violate(GROUP, &f.node, line, m);
    for e in f.epochs.iter().filter(|e| !f.held.contains(e)) {
        bad(format!("{}: the key of epoch {e} never reached this member", f.group));
    }
    for (id, sha) in &f.delivered {
        match sent.get(id) {
            None => bad(format!("{}: packet {id} was delivered but never sent", f.group)),
            Some(p) if &p.sha256 != sha => bad(format!("{}: packet {id} (epoch {}) was delivered altered", f.group, p.epoch)),
            Some(_) => {}
        }
    }
    let lost: Vec<String> = f
        .sent
        .iter()
        .filter(|p| f.held.contains(&p.epoch) && !f.delivered.contains_key(&p.id))
        .map(|p| format!("{} (epoch {}{})", p.id, p.epoch, if f.buffered.contains(&p.id) { ", still buffered" } else { "" }))
        .collect();
    if !lost.is_empty() {
        bad(format!("{}: packets whose epoch key the member holds were never delivered: {}", f.group, lost.join(", ")));
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> GroupFacts {
        GroupFacts {
            node: "client-2".into(),
            group: "room-acme".into(),
            sent: vec![SentPacket { id: 1, epoch: 1, sha256: "a".into() }, SentPacket { id: 2, epoch: 2, sha256: "b".into() }],
            epochs: vec![1, 2],
            held: vec![1, 2],
            delivered: [(1, "a".to_string()), (2, "b".to_string())].into(),
            buffered: vec![],
        }
    }

    #[test]
    fn every_packet_delivered_unchanged_passes() {
        let j = check_group(&facts(), 1);
        assert!(j.is_clean(), "{:?}", j.violations);
        assert_eq!(j.checks_of(GROUP), 1);
        let mut quiet = facts();
        quiet.sent.clear();
        assert_eq!(check_group(&quiet, 1).checks_of(GROUP), 0, "a room that carried nothing proves nothing");
    }

    #[test]
    fn a_packet_never_replayed_after_its_key_arrived_fires() {
        let mut f = facts();
        f.delivered.remove(&2);
        f.buffered = vec![2];
        let j = check_group(&f, 7);
        assert_eq!(j.violations.len(), 1);
        assert!(j.violations[0].message.contains("2 (epoch 2, still buffered)"), "{}", j.violations[0].message);
        // Dropped from a full buffer and never read again: lost just the same.
        f.buffered.clear();
        assert!(!check_group(&f, 7).is_clean());
    }

    #[test]
    fn an_altered_or_invented_packet_or_a_missing_epoch_key_fires() {
        let mut f = facts();
        f.delivered.insert(2, "evil".into());
        assert!(check_group(&f, 1).violations[0].message.contains("altered"));
        let mut f = facts();
        f.delivered.insert(9, "x".into());
        assert!(check_group(&f, 1).violations[0].message.contains("never sent"));
        let mut f = facts();
        f.held = vec![1];
        f.delivered.remove(&2);
        let j = check_group(&f, 1);
        assert_eq!(j.violations.len(), 1, "a packet of an epoch never received is the key's fault, not a second violation");
        assert!(j.violations[0].message.contains("key of epoch 2"));
    }
}

//! What the model has verified of one device's stored events, so that the check after a sync
//! looks only at what the sync can have changed.
//!
//! A device's events change at the tail only: a sync appends events after its cursor, and a
//! hydrate or a forced resync drops events after a cursor. The world therefore hands the model
//! the device's events after some position `after` (at most the cursor the last attempt started
//! from, and at most what the model verified last), and the model forgets what it verified past
//! `after` and verifies the new tail against what it kept: the hash chain continues from the last
//! verified hash, sequence numbers keep increasing, and no write or op id appears twice. Checks
//! after a recovery and at the end of a run hand over every event (`after` = none) and start
//! from nothing, as before.
//!
//! Each verified event costs the model its hash, write id, op id and (for the device's own
//! writes) payload: memory linear in the history, and a check linear in what changed.

use std::collections::BTreeMap;

use crate::facts::EventFact;

/// One verified event, as much of it as later checks need.
#[derive(Debug, Clone)]
struct Held {
    seq: u64,
    /// The event's hash when it belongs to the device's tenant (the chain runs per tenant).
    chain_hash: Option<Vec<u8>>,
    write: (String, u64),
    op_id: String,
    /// The payload when the write is the device's own, for INV-ONCE against the outbox.
    own_payload: Option<Vec<u8>>,
}

/// The verified prefix of one device's events.
#[derive(Debug, Clone, Default)]
pub(crate) struct Verified {
    held: Vec<Held>,
    by_write: BTreeMap<(String, u64), u64>,
    by_op: BTreeMap<String, u64>,
    /// Own writes' payloads: (write id, sequence number) of the event that applied each.
    own_payloads: BTreeMap<Vec<u8>, (u64, u64)>,
    /// The device's anchor when the prefix was verified.
    anchor: Option<(u64, Vec<u8>)>,
}

/// Why an event cannot extend the verified prefix.
pub(crate) enum Refused {
    /// Its sequence number does not follow the last one's.
    Order { prev: u64 },
    /// Its write or op id is already held.
    Twice,
}

impl Verified {
    /// The last verified event's sequence number (0 with none).
    pub(crate) fn through(&self) -> u64 {
        self.held.last().map(|h| h.seq).unwrap_or(0)
    }

    /// How many events are verified.
    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether any verified event belongs to the device's tenant.
    pub(crate) fn holds_chain(&self) -> bool {
        self.held.iter().rev().any(|h| h.chain_hash.is_some())
    }

    /// Forgets events after `seq`: the device may have dropped or replaced them.
    pub(crate) fn truncate_after(&mut self, seq: u64) {
        while self.held.last().is_some_and(|h| h.seq > seq) {
            let h = self.held.pop().expect("checked above");
            self.forget(&h);
        }
    }

    /// Takes the device's current anchor. A new anchor means a full resync dropped every event
    /// of the tenant up to it, so what was verified up to it is gone.
    pub(crate) fn set_anchor(&mut self, anchor: Option<&(u64, Vec<u8>)>) {
        if self.anchor.as_ref() == anchor {
            return;
        }
        if let Some((seq, _)) = anchor {
            let keep = self.held.iter().position(|h| h.seq > *seq).unwrap_or(self.held.len());
            let gone: Vec<Held> = self.held.drain(..keep).collect();
            for h in &gone {
                self.forget(h);
            }
        }
        self.anchor = anchor.cloned();
    }

    /// The hash the device's next event of its tenant must chain from: the last verified one,
    /// or the anchor when it is newer, or genesis.
    pub(crate) fn chain_head(&self) -> Vec<u8> {
        let last = self.held.iter().rev().find_map(|h| h.chain_hash.as_ref().map(|x| (h.seq, x)));
        match (last, &self.anchor) {
            (Some((seq, hash)), Some((anchor_seq, _))) if seq > *anchor_seq => hash.clone(),
            (Some((_, hash)), None) => hash.clone(),
            (_, Some((_, hash))) => hash.clone(),
            (None, None) => vec![0u8; 32],
        }
    }

    /// The write id and sequence number of the verified own write with this payload, if any.
    pub(crate) fn applied(&self, payload: &[u8]) -> Option<(u64, u64)> {
        self.own_payloads.get(payload).copied()
    }

    /// Adds `e` after the verified events. `chain` says whether it belongs to the device's
    /// tenant, `own` whether it is the device's own write.
    pub(crate) fn push(&mut self, e: &EventFact, chain: bool, own: bool) -> Result<(), Refused> {
        let prev = self.through();
        if !self.held.is_empty() && e.seq <= prev {
            return Err(Refused::Order { prev });
        }
        let write = (e.replica.clone(), e.write_id);
        if self.by_write.contains_key(&write) || self.by_op.contains_key(&e.op_id) {
            return Err(Refused::Twice);
        }
        self.by_write.insert(write.clone(), e.seq);
        self.by_op.insert(e.op_id.clone(), e.seq);
        if own {
            self.own_payloads.entry(e.payload.clone()).or_insert((e.write_id, e.seq));
        }
        self.held.push(Held {
            seq: e.seq,
            chain_hash: chain.then(|| e.hash.clone()),
            write,
            op_id: e.op_id.clone(),
            own_payload: own.then(|| e.payload.clone()),
        });
        Ok(())
    }

    fn forget(&mut self, h: &Held) {
        if self.by_write.get(&h.write) == Some(&h.seq) {
            self.by_write.remove(&h.write);
        }
        if self.by_op.get(&h.op_id) == Some(&h.seq) {
            self.by_op.remove(&h.op_id);
        }
        if let Some(p) = &h.own_payload {
            if self.own_payloads.get(p).map(|(_, seq)| *seq) == Some(h.seq) {
                self.own_payloads.remove(p);
            }
        }
    }
}

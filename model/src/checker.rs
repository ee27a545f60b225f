//! The checker: replays facts in trace order and judges every snapshot against them.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use crate::facts::{digest, ClientSnapshot, EventFact, Fact, ServerSnapshot};
use crate::invariants::{CHAIN, CONVERGE, DURABLE, ONCE};
use crate::Violation;

/// What the model knows of one device.
#[derive(Debug, Default, Clone)]
struct ClientModel {
    replica: String,
    tenant: String,
    /// The payload of the append being executed, if any.
    in_flight: Option<Vec<u8>>,
    /// Writes that must exist: acknowledged, or seen to exist after a recovery.
    acked: BTreeMap<u64, Vec<u8>>,
    /// Payloads of appends in flight at a crash: they may or may not exist.
    uncertain: Vec<Vec<u8>>,
}

/// The reference model of a run.
#[derive(Debug, Default)]
pub struct Checker {
    clients: BTreeMap<String, ClientModel>,
    /// Writes the server acknowledged to a device, by (replica, write id).
    server_acked: BTreeMap<(String, u64), Vec<u8>>,
    violations: Vec<Violation>,
    checks: BTreeMap<String, u64>,
}

impl Checker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Violations found so far.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Non-vacuous checks so far, by invariant id.
    pub fn checks(&self) -> &BTreeMap<String, u64> {
        &self.checks
    }

    /// Writes a device must hold (acknowledged or settled), for diagnostics.
    pub fn acknowledged(&self, node: &str) -> usize {
        self.clients.get(node).map(|c| c.acked.len()).unwrap_or(0)
    }

    fn violate(&mut self, invariant: &str, node: &str, line: u64, message: String) {
        self.violations.push(Violation { invariant: invariant.into(), node: node.into(), trace_line: line, message });
    }

    fn checked(&mut self, invariant: &str) {
        *self.checks.entry(invariant.to_string()).or_default() += 1;
    }

    /// Takes one fact; `line` is the trace line that recorded it.
    pub fn observe(&mut self, fact: Fact, line: u64) {
        match fact {
            Fact::Client { node, replica, tenant } => {
                let c = self.clients.entry(node).or_default();
                c.replica = replica;
                c.tenant = tenant;
            }
            Fact::AppendStarted { node, payload } => self.client(&node).in_flight = Some(payload),
            Fact::AppendAcked { node, write_id } => {
                let c = self.client(&node);
                let payload = c.in_flight.take().expect("an acknowledged append was started");
                c.acked.insert(write_id, payload);
            }
            Fact::AppendFailed { node } => {
                // A commit that reported an I/O error may still have reached the disk (its log
                // frames written, the sync failed): it is uncertain, like a write at a crash.
                let c = self.client(&node);
                if let Some(p) = c.in_flight.take() {
                    c.uncertain.push(p);
                }
            }
            Fact::PushAcked { node, write_ids } => {
                let c = self.client(&node).clone();
                for w in write_ids {
                    if let Some(p) = c.acked.get(&w) {
                        self.server_acked.insert((c.replica.clone(), w), p.clone());
                    }
                }
            }
            Fact::Crashed { node } => {
                if let Some(c) = self.clients.get_mut(&node) {
                    if let Some(p) = c.in_flight.take() {
                        c.uncertain.push(p);
                    }
                }
            }
            Fact::ClientState { snapshot, after_recovery } => self.check_client(&snapshot, after_recovery, line),
            Fact::ServerState { snapshot } => self.check_server(&snapshot, line),
        }
    }

    fn client(&mut self, node: &str) -> &mut ClientModel {
        self.clients.get_mut(node).unwrap_or_else(|| panic!("facts about unregistered device {node}"))
    }

    fn check_client(&mut self, s: &ClientSnapshot, after_recovery: bool, line: u64) {
        let node = s.node.as_str();
        let mut model = self.clients.get(node).cloned().unwrap_or_default();
        let own: Vec<&EventFact> = s.events.iter().filter(|e| e.tenant == model.tenant).collect();
        self.check_order(node, &s.events, line);
        self.check_chain(node, &own, line);
        // What the device holds of its own writes: pending in the outbox, or applied.
        let mut present: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        for w in &s.outbox {
            present.insert(w.write_id, w.payload.clone());
        }
        for e in s.events.iter().filter(|e| e.replica == model.replica) {
            if present.insert(e.write_id, e.payload.clone()).is_some() {
                self.violate(ONCE, node, line, format!("write {} is applied as event {} and still pending in the outbox", e.write_id, e.seq));
            }
        }
        if !s.outbox.is_empty() {
            self.checked(ONCE);
        }
        if !model.acked.is_empty() {
            self.checked(DURABLE);
        }
        for (w, p) in &model.acked {
            match present.get(w) {
                Some(q) if q == p => {}
                Some(q) => self.violate(DURABLE, node, line, format!("write {w} should hold payload {} but holds {}", digest(p), digest(q))),
                None => self.violate(DURABLE, node, line, format!("acknowledged write {w} (payload {}) is lost", digest(p))),
            }
        }
        for (w, p) in &present {
            if model.acked.get(w) == Some(p) {
                continue;
            }
            if let Some(i) = model.uncertain.iter().position(|u| u == p) {
                // A write in flight at a crash turned out to have happened: from now on it must stay.
                model.uncertain.remove(i);
                model.acked.insert(*w, p.clone());
            } else {
                self.violate(DURABLE, node, line, format!("write {w} (payload {}) exists but no append explains it", digest(p)));
            }
        }
        if after_recovery {
            // What was in flight and is not here after recovery did not happen.
            model.uncertain.clear();
        }
        self.clients.insert(node.to_string(), model);
    }

    fn check_server(&mut self, s: &ServerSnapshot, line: u64) {
        let node = s.node.as_str();
        self.check_order(node, &s.events, line);
        let tenants: BTreeSet<&str> = s.events.iter().map(|e| e.tenant.as_str()).collect();
        for t in tenants {
            let evs: Vec<&EventFact> = s.events.iter().filter(|e| e.tenant == t).collect();
            self.check_chain(node, &evs, line);
        }
        let held: BTreeMap<(&str, u64), &Vec<u8>> = s.events.iter().map(|e| ((e.replica.as_str(), e.write_id), &e.payload)).collect();
        if !self.server_acked.is_empty() {
            self.checked(DURABLE);
        }
        let mut lost = Vec::new();
        for ((r, w), p) in &self.server_acked {
            match held.get(&(r.as_str(), *w)) {
                Some(q) if *q == p => {}
                Some(q) => lost.push(format!("write {r}:{w} holds payload {} instead of {}", digest(q), digest(p))),
                None => lost.push(format!("write {r}:{w} the server acknowledged is lost")),
            }
        }
        for m in lost {
            self.violate(DURABLE, node, line, m);
        }
    }

    /// Sequence numbers strictly increase, and no write appears twice.
    fn check_order(&mut self, node: &str, events: &[EventFact], line: u64) {
        if events.is_empty() {
            return;
        }
        self.checked(ONCE);
        let mut seen = BTreeSet::new();
        let mut prev = 0;
        for e in events {
            if e.seq <= prev {
                self.violate(ONCE, node, line, format!("event {} follows event {prev}: an event is stored twice or out of order", e.seq));
            }
            if !seen.insert((e.replica.clone(), e.write_id)) {
                self.violate(ONCE, node, line, format!("write {}:{} is applied twice (again as event {})", e.replica, e.write_id, e.seq));
            }
            prev = e.seq;
        }
    }

    /// The hash chain of one tenant's events verifies from genesis.
    fn check_chain(&mut self, node: &str, events: &[&EventFact], line: u64) {
        if events.is_empty() {
            return;
        }
        self.checked(CHAIN);
        let mut prev = vec![0u8; 32];
        for e in events {
            let want = event_hash(&prev, &e.kind, &e.tenant, &e.payload);
            if e.prev_hash != prev || e.hash != want {
                self.violate(CHAIN, node, line, format!("hash chain of tenant {} breaks at event {}", e.tenant, e.seq));
                return;
            }
            prev = e.hash.clone();
        }
    }

    /// Whether every device has drained its outbox and holds exactly the server's events for its
    /// tenant; the reason when not.
    pub fn converged(&self, server: &ServerSnapshot, clients: &[ClientSnapshot]) -> Result<(), String> {
        let mut why = Vec::new();
        for c in clients {
            if !c.outbox.is_empty() {
                why.push(format!("{} still has {} pending writes", c.node, c.outbox.len()));
            }
            let want: Vec<(u64, &[u8])> = server.events.iter().filter(|e| e.tenant == c.tenant).map(|e| (e.seq, e.hash.as_slice())).collect();
            let have: Vec<(u64, &[u8])> = c.events.iter().map(|e| (e.seq, e.hash.as_slice())).collect();
            if want != have {
                why.push(format!("{} holds {} events of tenant {}, the server {}", c.node, have.len(), c.tenant, want.len()));
            }
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join("; "))
        }
    }

    /// The end of a run: devices converge on the server, and every write a device ever held for
    /// sure reached the server exactly once.
    /// With `converged_expected` false (the liveness phase already failed, and says why), the
    /// devices are not required to match the server.
    pub fn check_final(&mut self, server: &ServerSnapshot, clients: &[ClientSnapshot], line: u64, converged_expected: bool) {
        self.check_server(server, line);
        for c in clients {
            self.check_client(c, false, line);
        }
        if !converged_expected {
            return;
        }
        self.checked(CONVERGE);
        if let Err(why) = self.converged(server, clients) {
            self.violate(CONVERGE, "world", line, why);
        }
        let held: BTreeMap<(&str, u64), &Vec<u8>> = server.events.iter().map(|e| ((e.replica.as_str(), e.write_id), &e.payload)).collect();
        let mut missing = Vec::new();
        for (node, c) in &self.clients {
            for (w, p) in &c.acked {
                if held.get(&(c.replica.as_str(), *w)) != Some(&p) {
                    missing.push((node.clone(), format!("acknowledged write {}:{w} (payload {}) never reached the server", c.replica, digest(p))));
                }
            }
        }
        for (node, m) in missing {
            self.violate(DURABLE, &node, line, m);
        }
    }
}

/// The event hash, computed independently of the stack: SHA-256 over the length-prefixed
/// previous hash, type, tenant and payload.
pub fn event_hash(prev: &[u8], kind: &str, tenant: &str, payload: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    for part in [prev, kind.as_bytes(), tenant.as_bytes(), payload] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().to_vec()
}

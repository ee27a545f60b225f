//! The checker: replays facts in trace order and judges every snapshot against them.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use crate::facts::{digest, sha256_hex, ClientSnapshot, EventFact, Fact, ServerSnapshot};
use crate::invariants::{CHAIN, CONVERGE, DURABLE, FAIL_CLOSED, GUARDRAIL, ONCE, TENANT};
use crate::verified::{Refused, Verified};
use crate::Violation;

/// What the model knows of one device. Writes are known by their payload, which the workload
/// makes unique per operation: it survives renumbering and protocol versions alike.
#[derive(Debug, Default, Clone)]
struct ClientModel {
    replica: String,
    tenant: String,
    /// The payload of the append being executed, if any.
    in_flight: Option<Vec<u8>>,
    /// Writes that must exist: acknowledged, or seen to exist after a recovery.
    acked: BTreeSet<Vec<u8>>,
    /// The acknowledged writes not yet known to be on the server: the only ones a check must
    /// find on the device (once the server holds a write, holding it is the server's job).
    unconfirmed: BTreeSet<Vec<u8>>,
    /// Payloads by op id, for push acknowledgements.
    by_op: BTreeMap<String, Vec<u8>>,
    /// Payloads of appends in flight at a crash (or whose commit reported an error): they may or
    /// may not exist.
    uncertain: Vec<Vec<u8>>,
    /// The device's events the model has verified; none before the first full check.
    verified: Option<Verified>,
}

/// The reference model of a run.
#[derive(Debug, Default)]
pub struct Checker {
    clients: BTreeMap<String, ClientModel>,
    /// Writes the server acknowledged to a device: (replica, payload).
    server_acked: BTreeSet<(String, Vec<u8>)>,
    /// The hex SHA-256 of each write's stored form (its sealed envelope), by plaintext: the
    /// server holds only the stored form, and its tombstones only that form's hash.
    stored: BTreeMap<Vec<u8>, String>,
    violations: Vec<Violation>,
    checks: BTreeMap<String, u64>,
    /// Staged, attached and read blobs (runbook 003 §2, §3).
    blobs: crate::blobs::BlobModel,
    /// Exports and imports of the jobs node (runbook 001 §B, §C).
    jobs: crate::jobs::JobsModel,
    /// Projections, snapshots, tenants, READ_ONLY, scans and vault keys.
    store: crate::store::StoreModel,
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

    /// Counts one non-vacuous check of `invariant` made outside the checker (the world's
    /// liveness phase).
    pub fn count_check(&mut self, invariant: &str) {
        self.checked(invariant);
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
            Fact::AppendAcked { node, op_id, stored_sha256, .. } => {
                let c = self.client(&node);
                let payload = c.in_flight.take().expect("an acknowledged append was started");
                c.acked.insert(payload.clone());
                c.unconfirmed.insert(payload.clone());
                c.by_op.insert(op_id, payload.clone());
                self.stored.insert(payload, stored_sha256);
            }
            Fact::AppendFailed { node } => {
                // A commit that reported an I/O error may still have reached the disk (its log
                // frames written, the sync failed): it is uncertain, like a write at a crash.
                let c = self.client(&node);
                if let Some(p) = c.in_flight.take() {
                    c.uncertain.push(p);
                }
            }
            Fact::PushAcked { node, op_ids } => {
                let c = self.client(&node);
                let replica = c.replica.clone();
                let payloads: Vec<Vec<u8>> = op_ids.iter().filter_map(|op| c.by_op.get(op).cloned()).collect();
                for p in payloads {
                    self.server_acked.insert((replica.clone(), p));
                }
            }
            Fact::Crashed { node } => {
                if let Some(c) = self.clients.get_mut(&node) {
                    if let Some(p) = c.in_flight.take() {
                        c.uncertain.push(p);
                    }
                }
            }
            Fact::SyncFailed { node, code, signature, expected, state_before, state_after } => {
                self.checked(FAIL_CLOSED);
                self.check_exported(&node, line, [("before", &state_before), ("after", &state_after)]);
                if state_before != state_after {
                    let what = state_difference(&state_before, &state_after);
                    self.violate(FAIL_CLOSED, &node, line, format!("failed sync attempt ({code}) changed the exported state: {what}"));
                }
                self.check_guardrail(&node, line, signature.as_deref(), expected.as_deref(), &code);
            }
            Fact::SyncSucceeded { node, expected } => self.check_guardrail(&node, line, None, expected.as_deref(), "ok"),
            Fact::ClientState { snapshot, after_recovery } => self.check_client(&snapshot, None, after_recovery, line),
            Fact::ClientTail { snapshot, after_seq } => self.check_client(&snapshot, Some(after_seq), false, line),
            Fact::ServerState { snapshot } => self.check_server(&snapshot, line),
            Fact::Blob(f) => {
                let out = self.blobs.observe(f);
                for inv in out.checked {
                    self.checked(inv);
                }
                for (inv, node, message) in out.violations {
                    self.violate(inv, &node, line, message);
                }
            }
            Fact::Recovered { node, recovery, committed, after, unrecoverable } => {
                if !committed.is_empty() {
                    self.checked(crate::invariants::RECOVERY);
                }
                if let Err(why) = crate::recovery::check_recovery(&committed, &after, &unrecoverable) {
                    self.violate(crate::invariants::RECOVERY, &node, line, format!("after {recovery}: {why}"));
                }
            }
            Fact::Store(f) => {
                let out = self.store.observe(&f, line);
                for inv in out.checked {
                    self.checked(inv);
                }
                self.violations.extend(out.violations);
            }
            Fact::Jobs(f) => {
                let out = self.jobs.observe(f);
                for inv in out.checked {
                    self.checked(inv);
                }
                for (inv, node, message) in out.violations {
                    self.violate(inv, &node, line, message);
                }
            }
        }
    }

    /// An injected transport fault must raise exactly its signature; a guardrail must not fire
    /// without one.
    fn check_guardrail(&mut self, node: &str, line: u64, got: Option<&str>, expected: Option<&str>, code: &str) {
        match (expected, got) {
            (None, None) => {}
            (Some(e), Some(g)) if e == g => self.checked(GUARDRAIL),
            // The attempt failed for another reason (a timeout, a disk error) before the fault
            // played out: it did not fall back silently, but nothing is proven either way.
            (Some(_), None) if code != "ok" => {}
            (Some(e), _) => {
                self.checked(GUARDRAIL);
                self.violate(GUARDRAIL, node, line, format!("transport fault expected {e}, the attempt ended with {code}"));
            }
            (None, Some(g)) => self.violate(GUARDRAIL, node, line, format!("guardrail {g} fired with no transport fault injected")),
        }
    }

    fn client(&mut self, node: &str) -> &mut ClientModel {
        self.clients.get_mut(node).unwrap_or_else(|| panic!("facts about unregistered device {node}"))
    }

    /// The position after which a device's events must be read for an incremental check (the
    /// last event the model verified), or `None` when only a full snapshot will do (no full
    /// check yet).
    pub fn verified_through(&self, node: &str) -> Option<u64> {
        self.clients.get(node)?.verified.as_ref().map(Verified::through)
    }

    /// An exported state a failed attempt reports is this device's: text that parses as a state
    /// naming the device's replica. A comparison of two texts that are not states proves nothing.
    fn check_exported(&mut self, node: &str, line: u64, states: [(&str, &str); 2]) {
        let Some(replica) = self.clients.get(node).map(|c| c.replica.clone()) else { return };
        for (which, text) in states {
            let parsed = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text);
            let named = parsed.as_ref().ok().and_then(|m| m.get("replica")).and_then(|v| v.as_str());
            if named != Some(replica.as_str()) {
                let shown: String = text.chars().take(80).collect();
                self.violate(FAIL_CLOSED, node, line, format!("the exported state {which} the failed attempt is not a state of replica {replica}: {shown:?}"));
            }
        }
    }

    /// Checks a device's state. `after` none: `s.events` is every event the device holds, and
    /// everything is verified from scratch. `after` some: `s.events` is the device's events after
    /// that position only (see [`crate::verified`]); the outbox and anchor are always whole.
    fn check_client(&mut self, s: &ClientSnapshot, after: Option<u64>, after_recovery: bool, line: u64) {
        let node = s.node.as_str();
        let mut model = self.clients.remove(node).unwrap_or_default();
        if !model.replica.is_empty() && s.replica != model.replica {
            self.violate(TENANT, node, line, format!("the device reports replica {:?}, but it was registered as replica {}", s.replica, model.replica));
        }
        let mut v = match after {
            None => Verified::default(),
            Some(seq) => {
                let mut v = model.verified.take().unwrap_or_else(|| panic!("{node}: an incremental check before any full one"));
                v.truncate_after(seq);
                v
            }
        };
        v.set_anchor(s.anchor.as_ref());
        // What the device holds of its own writes that this check must look at: pending in the
        // outbox, or applied by an event it has not verified before.
        let mut present: BTreeSet<&[u8]> = BTreeSet::new();
        for w in &s.outbox {
            present.insert(&w.payload);
            self.stored.entry(w.payload.clone()).or_insert_with(|| w.stored_sha256.clone());
            // Learn op ids of writes whose append was never acknowledged (in flight at a crash),
            // so a later push acknowledgement can be attributed.
            model.by_op.entry(w.op_id.clone()).or_insert_with(|| w.payload.clone());
            if let Some((write_id, seq)) = v.applied(&w.payload) {
                self.violate(
                    ONCE,
                    node,
                    line,
                    format!("write {write_id} (payload {}) is applied as event {seq} and still pending, or applied twice", digest(&w.payload)),
                );
            }
        }
        self.learn_stored(&s.events);
        self.check_tail(node, &model, &mut v, &s.events, &mut present, line);
        if !s.outbox.is_empty() {
            self.checked(ONCE);
        }
        if !model.acked.is_empty() {
            self.checked(DURABLE);
        }
        let replica = model.replica.clone();
        for p in std::mem::take(&mut model.unconfirmed) {
            // Once the server acknowledged a write, holding it is the server's job: a device may
            // drop it locally (a hydrate rewinds its events) and pull it again.
            if self.server_acked.contains(&(replica.clone(), p.clone())) {
                continue;
            }
            if !present.contains(p.as_slice()) {
                if s.anchor.is_some() {
                    // An anchored device drops a pushed write the server says it compacted below
                    // the anchor, on the server's word (the acknowledgement may never have been
                    // recorded: a power cut right after the commit). From now on holding it is
                    // the server's job, and the server's snapshots judge it.
                    self.server_acked.insert((replica.clone(), p));
                    continue;
                }
                self.violate(DURABLE, node, line, format!("acknowledged write (payload {}) is lost", digest(&p)));
            }
            model.unconfirmed.insert(p);
        }
        for p in present {
            if model.acked.contains(p) {
                continue;
            }
            if let Some(i) = model.uncertain.iter().position(|u| u == p) {
                // A write in flight at a crash turned out to have happened: from now on it must stay.
                model.uncertain.remove(i);
                model.acked.insert(p.to_vec());
                if !self.server_acked.contains(&(replica.clone(), p.to_vec())) {
                    model.unconfirmed.insert(p.to_vec());
                }
            } else {
                self.violate(DURABLE, node, line, format!("a write (payload {}) exists but no append explains it", digest(p)));
            }
        }
        if after_recovery {
            // What was in flight and is not here after recovery did not happen.
            model.uncertain.clear();
        }
        model.verified = Some(v);
        self.clients.insert(node.to_string(), model);
    }

    /// Verifies `events` (in order) after the verified prefix `v` and adds them to it: sequence
    /// numbers increase, no write or op id is held twice, no own write is both applied and
    /// pending or applied twice, and the tenant's hash chain continues. A chain break is reported
    /// at the exact event, and the prefix ends before it, so the next check reads it again.
    fn check_tail<'a>(&mut self, node: &str, model: &ClientModel, v: &mut Verified, events: &'a [EventFact], present: &mut BTreeSet<&'a [u8]>, line: u64) {
        let mut head = v.chain_head();
        let mut broken: Option<u64> = None;
        let mut chained = v.holds_chain();
        for e in events {
            let chain = e.tenant == model.tenant;
            let own = e.replica == model.replica;
            if own {
                // An applied event came from the server's total order: the server holds that write.
                self.server_acked.insert((model.replica.clone(), e.payload.clone()));
                if present.contains(e.payload.as_slice()) || v.applied(&e.payload).is_some() {
                    self.violate(
                        ONCE,
                        node,
                        line,
                        format!("write {} (payload {}) is applied as event {} and still pending, or applied twice", e.write_id, digest(&e.payload), e.seq),
                    );
                }
                present.insert(&e.payload);
            }
            match v.push(e, chain, own) {
                Ok(()) => {}
                Err(Refused::Order { prev }) => {
                    self.violate(ONCE, node, line, format!("event {} follows event {prev}: an event is stored twice or out of order", e.seq));
                }
                Err(Refused::Twice) => {
                    self.violate(ONCE, node, line, format!("write {}:{} (op {}) is applied twice (again as event {})", e.replica, e.write_id, e.op_id, e.seq));
                }
            }
            if chain && broken.is_none() {
                chained = true;
                let want = event_hash(&head, &e.kind, &e.tenant, &e.stored);
                if e.prev_hash != head || e.hash != want {
                    self.violate(CHAIN, node, line, format!("hash chain of tenant {} breaks at event {}", e.tenant, e.seq));
                    broken = Some(e.seq);
                } else {
                    head = e.hash.clone();
                }
            }
        }
        if v.len() > 0 || !events.is_empty() {
            self.checked(ONCE);
        }
        if chained {
            self.checked(CHAIN);
        }
        if let Some(seq) = broken {
            v.truncate_after(seq - 1);
        }
    }

    fn check_server(&mut self, s: &ServerSnapshot, line: u64) {
        let node = s.node.as_str();
        self.check_order(node, &s.events, line);
        let tenants: BTreeSet<&str> = s.events.iter().map(|e| e.tenant.as_str()).collect();
        for t in tenants {
            let evs: Vec<&EventFact> = s.events.iter().filter(|e| e.tenant == t).collect();
            self.check_chain(node, &evs, s.anchor(t).map(|(_, h)| h), line);
        }
        self.learn_stored(&s.events);
        let held = self.server_held(s, line);
        if !self.server_acked.is_empty() {
            self.checked(DURABLE);
        }
        let lost: Vec<String> = self
            .server_acked
            .iter()
            .filter(|(r, p)| !held.contains(&(r.clone(), self.stored_sha256(p))))
            .map(|(r, p)| format!("write of {r} (payload {}) the server acknowledged is lost", digest(p)))
            .collect();
        for m in lost {
            self.violate(DURABLE, node, line, m);
        }
    }

    /// Learns the stored form of every write among `events`.
    fn learn_stored(&mut self, events: &[EventFact]) {
        for e in events {
            if !self.stored.contains_key(&e.payload) {
                self.stored.insert(e.payload.clone(), sha256_hex(&e.stored));
            }
        }
    }

    /// The hex SHA-256 of a write's stored form, known from any snapshot that held it (a write
    /// is always seen in an outbox, after its append or at the recovery that found it, before
    /// it can reach the server).
    fn stored_sha256(&self, payload: &[u8]) -> String {
        self.stored.get(payload).cloned().unwrap_or_else(|| sha256_hex(payload))
    }

    /// What the server holds, stored or compacted, as (replica, stored payload SHA-256); a
    /// write held twice breaks INV-ONCE.
    fn server_held(&mut self, s: &ServerSnapshot, line: u64) -> BTreeSet<(String, String)> {
        let mut held = BTreeSet::new();
        let all = s
            .events
            .iter()
            .map(|e| (e.replica.clone(), sha256_hex(&e.stored), e.seq))
            .chain(s.pruned.iter().map(|p| (p.replica.clone(), p.payload_sha256.clone(), p.seq)));
        let mut twice = Vec::new();
        for (replica, sum, seq) in all {
            if !held.insert((replica.clone(), sum.clone())) {
                twice.push(format!("a write of {replica} (payload {}) is held twice, again at {seq}", &sum[..12]));
            }
        }
        for m in twice {
            self.violate(ONCE, &s.node, line, m);
        }
        held
    }

    /// Sequence numbers strictly increase, and no write appears twice.
    fn check_order(&mut self, node: &str, events: &[EventFact], line: u64) {
        if events.is_empty() {
            return;
        }
        self.checked(ONCE);
        let mut seen = BTreeSet::new();
        let mut ops = BTreeSet::new();
        let mut prev = 0;
        for e in events {
            if e.seq <= prev {
                self.violate(ONCE, node, line, format!("event {} follows event {prev}: an event is stored twice or out of order", e.seq));
            }
            if !seen.insert((e.replica.clone(), e.write_id)) || !ops.insert(e.op_id.clone()) {
                self.violate(ONCE, node, line, format!("write {}:{} (op {}) is applied twice (again as event {})", e.replica, e.write_id, e.op_id, e.seq));
            }
            prev = e.seq;
        }
    }

    /// The hash chain of one tenant's events verifies from genesis, or from `anchor` (the hash
    /// of the last compacted event) when older history was compacted away.
    fn check_chain(&mut self, node: &str, events: &[&EventFact], anchor: Option<&[u8]>, line: u64) {
        if events.is_empty() {
            return;
        }
        self.checked(CHAIN);
        let mut prev = anchor.map(<[u8]>::to_vec).unwrap_or_else(|| vec![0u8; 32]);
        for e in events {
            let want = event_hash(&prev, &e.kind, &e.tenant, &e.stored);
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
            // A device may still hold history the server compacted; compare what both hold.
            let floor = server.anchor(&c.tenant).map(|(s, _)| s).unwrap_or(0);
            let want: Vec<(u64, &[u8])> = server.events.iter().filter(|e| e.tenant == c.tenant).map(|e| (e.seq, e.hash.as_slice())).collect();
            let have: Vec<(u64, &[u8])> = c.events.iter().filter(|e| e.seq > floor).map(|e| (e.seq, e.hash.as_slice())).collect();
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
            self.check_client(c, None, false, line);
        }
        if !converged_expected {
            return;
        }
        self.checked(CONVERGE);
        if let Err(why) = self.converged(server, clients) {
            self.violate(CONVERGE, "world", line, why);
        }
        let held = self.server_held(server, line);
        for c in clients {
            if let Some((seq, hash)) = &c.anchor {
                if !server.anchors.iter().any(|(t, s, h)| *t == c.tenant && s == seq && h == hash) {
                    self.violate(CHAIN, &c.node, line, format!("chain anchored at {seq}, which the server never compacted to"));
                }
            }
        }
        let mut missing = Vec::new();
        for (node, c) in &self.clients {
            for p in &c.acked {
                if !held.contains(&(c.replica.clone(), self.stored_sha256(p))) {
                    missing.push((node.clone(), format!("acknowledged write of {} (payload {}) never reached the server", c.replica, digest(p))));
                }
            }
        }
        for (node, m) in missing {
            self.violate(DURABLE, &node, line, m);
        }
    }
}

/// The fields of two exported states (JSON objects) that differ, as `field: before -> after`.
fn state_difference(before: &str, after: &str) -> String {
    let parse = |s: &str| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(s).unwrap_or_default();
    let (b, a) = (parse(before), parse(after));
    let keys: BTreeSet<&String> = b.keys().chain(a.keys()).collect();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| b.get(*k) != a.get(*k))
        .map(|k| format!("{k}: {} -> {}", b.get(k).map(|v| v.to_string()).unwrap_or_default(), a.get(k).map(|v| v.to_string()).unwrap_or_default()))
        .collect();
    if diffs.is_empty() {
        format!("{before} -> {after}")
    } else {
        diffs.join("; ")
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

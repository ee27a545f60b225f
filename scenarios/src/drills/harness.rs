//! The drill harness: one small world per drill run, and the verbs a drill is written in.
//!
//! A drill runs as the world's main task: it creates the nodes it needs (the server, devices, a
//! blob store, a jobs node), drives the stack through its own operator API, injects its failure,
//! and records what it sees. Every recovery step is a `drill.step` trace line naming the drill and
//! the step; symptoms and checks are trace lines too, and anything missing or wrong becomes a
//! violation of the run. The model judges INV-RECOVERY on the events committed before the failure
//! and read back after the recovery.
//!
//! A device's [`Client`] is not `Send` (its clock is a plain trait object), so it cannot come back
//! from a task spawned on the device's node; madsim runs every node on this one thread, so the
//! client opened there is handed over through a thread-local slot instead.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drill_model::{EventFact, Fact};
use drill_sim::disk::{DiskFaults, DiskSim, NodeFiles};
use drill_sim::rng::{SeedTree, Stream};
use drill_sim::trace;
use drill_sim::world::Nodes;
use drill_stack::client::{Client, DeviceKeys, ExportedState, Ring, SyncReport};
use drill_stack::crypto::Key;
use drill_stack::proto::SERVER_PORT;
use drill_stack::rpc::RpcClient;
use drill_stack::server::{Server, ServerOptions};
use drill_stack::store::EventRow;
use drill_stack::{StoreError, SyncError};
use madsim::task::NodeId;
use serde_json::{json, Value};

use super::busy::{self, BusyWorld, Bystander, BYSTANDER, BYSTANDER_IP, BYSTANDER_TENANT};
use super::Drill;
use crate::api::Violation;
use crate::node::{client_ip, lock, NodeClock, SharedRef, DEVICE_DB, SERVER_IP};
use crate::plan::transport::TransportFaultKind;
use crate::plan::Plan;
use crate::procs::{self, ServerCtx};
use crate::sim_fs::SimFs;
use crate::transport::{FaultyTransport, TransportState};

/// How long a device waits for the server in a drill.
pub const RPC_TIMEOUT_MS: u64 = 1_000;
/// Attempts of one sync that may lose messages to the network before the drill gives up.
pub const SYNC_ATTEMPTS_MAX: u32 = 20;
/// The aggregates the drills' devices write to; each tenant holds a key for each.
pub const AGGREGATES: [&str; 3] = ["note-1", "note-2", "note-3"];
/// Polls of a node's state (10 ms each) before the drill reports it never came up.
const WAIT_POLLS_MAX: u32 = 2_000;

/// The event kind a drill's planted fold bugs mishandle ([`Ctx::meet_planted_bugs`]); no other
/// step of a drill writes it.
pub const BUGGY_KIND: &str = "archived";

/// A drill's own checks fail under these ids (the model's checks under the registry's).
pub const SYMPTOM: &str = "DRILL-SYMPTOM";
pub const VALIDATION: &str = "DRILL-VALIDATION";

thread_local! {
    /// The client a task on a device's node just opened, waiting for the drill to take it.
    static HANDOFF: RefCell<Option<Result<Client, StoreError>>> = const { RefCell::new(None) };
}

/// One device of the drill's world.
pub struct Device {
    pub name: String,
    pub tenant: String,
    pub version: u32,
    pub node: NodeId,
    pub client: Option<Client>,
    pub rpc: Option<RpcClient>,
    pub transport: Arc<Mutex<TransportState>>,
    /// The state of the last sync attempt that succeeded: what a hydrate restarts from.
    pub last_good: Option<ExportedState>,
    /// Its connection for blob requests (answers may take the server a few store retries).
    pub blob_rpc: Option<RpcClient>,
    /// The guard a planted bug of the plan makes this device's sync attempts meet, while the
    /// drill knows the bug fired ([`Ctx::sync_expecting`]); judged like a transport fault's.
    pub expect: Option<String>,
    opens: u64,
}

impl Device {
    /// The open client; a drill that asks before opening it is a bug of the drill.
    pub fn client(&mut self) -> &mut Client {
        self.client.as_mut().unwrap_or_else(|| panic!("{} is not open", self.name))
    }
}

/// What a drill found, for the run's report.
#[derive(Default)]
pub struct Verdict {
    pub violations: Vec<Violation>,
    pub faults: BTreeMap<String, u64>,
    pub checks: BTreeMap<String, u64>,
    /// The failure happened (its symptom was seen).
    pub failure_seen: bool,
    /// A symptom the runbook lists did not appear: a drill of several failures is exercised only
    /// when every one of them happened.
    pub symptom_missed: bool,
    /// Recovery steps that ran, in order.
    pub steps_run: Vec<String>,
}

/// The drill's world and its verbs.
pub struct Ctx {
    pub plan: Plan,
    pub drill: &'static Drill,
    pub seeds: SeedTree,
    /// The drill's own random choices.
    pub rng: Stream,
    pub shared: SharedRef,
    /// The world's nodes, shared with the background faults of a busy world.
    pub nodes: Arc<Mutex<Nodes>>,
    pub server: NodeId,
    pub server_slot: Arc<Mutex<Option<Server>>>,
    pub devs: Vec<Device>,
    pub verdict: Verdict,
    /// The object store, once a drill asked for it.
    pub blobs: Option<crate::blobs_world::BlobWorld>,
    /// The token service the server requires tokens of (pairing keys come from it).
    pub tokens: Arc<crate::tokens::Tokens>,
    /// Under swarm: the busy world around the drill.
    pub busy_world: Option<BusyWorld>,
    next_op: u64,
}

/// Keys every device of `tenant` holds, one per aggregate the drills write (blob references
/// included).
pub fn tenant_ring(tenant: &str) -> BTreeMap<String, Key> {
    let byte = tenant.bytes().fold(7u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
    AGGREGATES
        .iter()
        .chain([&crate::node::BLOBS_AGGREGATE])
        .enumerate()
        .map(|(i, a)| (a.to_string(), Key::from_bytes([byte.wrapping_add(i as u8); 32])))
        .collect()
}

/// A stored event as the model sees it: its payload opened with the tenant's keys (as stored
/// when it does not open: tampered or corrupt, it then matches no write).
pub fn fact_of(e: &EventRow) -> EventFact {
    crate::node::event_fact(e, &tenant_ring(&e.tenant))
}

impl Ctx {
    /// Builds the world every drill starts from: the server and the plan's devices, each device
    /// open and bound to the server.
    pub async fn new(plan: Plan, drill: &'static Drill, shared: SharedRef) -> Ctx {
        let start = drill_sim::clock::now();
        let seeds = SeedTree::new(plan.seed);
        let handle = madsim::runtime::Handle::current();
        let mut nodes = Nodes::new();
        let server_slot = Arc::new(Mutex::new(None));
        let options = ServerOptions { retention_events: plan.server_retention, ..ServerOptions::default() };
        let busy = plan.drill.as_ref().and_then(|d| d.busy.clone());
        let tenants = plan.clients.iter().map(|c| c.tenant.as_str()).chain(busy.iter().map(|_| BYSTANDER_TENANT));
        let tenant_keys = Arc::new(tenants.map(|t| (t.to_string(), Arc::new(tenant_ring(t)))).collect());
        let tokens = Arc::new(crate::tokens::Tokens::new(plan.seed));
        let sctx = ServerCtx { options, tenant_keys, slot: server_slot.clone(), tokens: tokens.clone(), shared: shared.clone() };
        let server = procs::server_node(&handle, sctx);
        nodes.add("server", server.id(), DiskFaults::none(), &seeds);
        let mut devs = Vec::new();
        for (i, spec) in plan.clients.iter().enumerate() {
            let node = handle.create_node().name(spec.name.as_str()).ip(client_ip(i)).build();
            nodes.add(&spec.name, node.id(), DiskFaults::none(), &seeds);
            let fact = Fact::Client { node: spec.name.clone(), replica: spec.name.clone(), tenant: spec.tenant.clone() };
            crate::node::record(&shared, &spec.name, "node.start", json!({"tenant": spec.tenant, "protocol": spec.protocol_version}), Some(fact));
            devs.push(Device {
                name: spec.name.clone(),
                tenant: spec.tenant.clone(),
                version: spec.protocol_version,
                node: node.id(),
                client: None,
                rpc: None,
                transport: Arc::new(Mutex::new(TransportState::default())),
                last_good: None,
                blob_rpc: None,
                expect: None,
                opens: 0,
            });
        }
        let nodes = Arc::new(Mutex::new(nodes));
        let busy_world = busy.as_ref().map(|b| {
            let seen = Arc::new(Mutex::new(Bystander::default()));
            let faults = Arc::new(Mutex::new(BTreeMap::new()));
            let (times, pairing, streams, s) = (b.bystander_ms.clone(), tokens.pairing(BYSTANDER_TENANT, BYSTANDER), seeds.child("bystander"), seen.clone());
            let ring = tenant_ring(BYSTANDER_TENANT);
            let node = handle
                .create_node()
                .name(BYSTANDER)
                .ip(BYSTANDER_IP)
                .init(move || busy::bystander_main(start, times.clone(), pairing.clone(), ring.clone(), streams, s.clone()))
                .build();
            lock(&nodes).add(BYSTANDER, node.id(), DiskFaults::none(), &seeds);
            madsim::task::spawn(busy::background(start, plan.faults.clone(), nodes.clone(), faults.clone()));
            BusyWorld { bystander: seen, faults }
        });
        let rng = seeds.stream("drill");
        let mut cx = Ctx {
            plan,
            drill,
            seeds,
            rng,
            shared,
            nodes,
            server: server.id(),
            server_slot,
            devs,
            verdict: Verdict::default(),
            blobs: None,
            tokens,
            busy_world,
            next_op: 0,
        };
        cx.wait_server().await;
        for i in 0..cx.devs.len() {
            if let Err(e) = cx.open(i).await {
                panic!("{} cannot open its fresh database: {e}", cx.devs[i].name);
            }
        }
        if let Some(b) = busy {
            // The drill begins at its moment of the busy world.
            madsim::time::sleep_until(start + Duration::from_millis(b.start_ms)).await;
            trace::emit("drill", "drill.begin", json!({"drill": cx.drill.id, "busy": true}));
        }
        cx
    }

    // -----------------------------------------------------------------------------------------
    // The drill's own trace lines and verdict

    fn emit(&self, kind: &str, mut detail: Value) -> u64 {
        detail["drill"] = json!(self.drill.id);
        trace::emit("drill", kind, detail)
    }

    /// The drill injects its failure.
    pub fn inject(&mut self, kind: &str, detail: Value) {
        *self.verdict.faults.entry(format!("drill.{kind}")).or_default() += 1;
        let mut d = detail;
        d["kind"] = json!(kind);
        self.emit("drill.inject", d);
    }

    /// A symptom the runbook lists: it must appear.
    pub fn symptom(&mut self, seen: bool, what: &str, detail: Value) {
        let mut d = detail;
        d["symptom"] = json!(what);
        d["seen"] = json!(seen);
        let line = self.emit("drill.symptom", d);
        if seen {
            self.verdict.failure_seen = true;
        } else {
            self.verdict.symptom_missed = true;
            self.violate(SYMPTOM, line, format!("the runbook's symptom did not appear: {what}"));
        }
    }

    /// One recovery step, in the runbook's order. Returns false when a test asked for the step
    /// to be skipped (the drill must then fail).
    pub fn step(&mut self, step: &str) -> bool {
        debug_assert!(self.drill.steps.contains(&step), "{} has no step {step}", self.drill.id);
        let skipped = self.plan.drill.as_ref().and_then(|d| d.skip.as_deref()) == Some(step);
        let wrong = self.wrong(step);
        self.emit("drill.step", json!({"step": step, "skipped": skipped, "wrong": wrong}));
        if !skipped {
            self.verdict.steps_run.push(step.to_string());
        }
        !skipped
    }

    /// Whether a test asked for `step` to be done wrong.
    pub fn wrong(&self, step: &str) -> bool {
        self.plan.drill.as_ref().and_then(|d| d.wrong.as_deref()) == Some(step)
    }

    /// One of the drill's own validation checks.
    pub fn check(&mut self, ok: bool, what: &str, detail: Value) {
        let mut d = detail;
        d["check"] = json!(what);
        d["ok"] = json!(ok);
        let line = self.emit("drill.check", d);
        *self.verdict.checks.entry(VALIDATION.to_string()).or_default() += 1;
        if !ok {
            self.violate(VALIDATION, line, format!("post-recovery validation failed: {what}"));
        }
    }

    fn violate(&mut self, invariant: &str, line: u64, message: String) {
        trace::emit("drill", "check.violation", json!({"invariant": invariant, "line": line, "message": message}));
        self.verdict.violations.push(Violation { invariant: invariant.into(), node: "drill".into(), trace_line: line, message });
    }

    /// INV-RECOVERY, judged by the model: every event committed before the failure is back
    /// after the recovery, except those the runbook says are lost.
    pub fn recovery(&mut self, scope: &str, committed: &[EventFact], after: &[EventFact], unrecoverable: &BTreeSet<String>) {
        let result = drill_model::recovery::check_recovery(committed, after, unrecoverable);
        let detail = json!({"scope": scope, "committed": committed.len(), "after": after.len(), "unrecoverable": unrecoverable.len(), "ok": result.is_ok()});
        let line = self.emit("check.recovery", detail);
        lock(&self.shared).checker.count_check(drill_model::invariants::RECOVERY);
        if let Err(why) = result {
            self.violate(drill_model::invariants::RECOVERY, line, format!("{scope}: {why}"));
        }
    }

    /// One of the model's judgements (`invariant`, from its registry) of what the drill read
    /// back: counted as checked, and a violation of the run when it fails.
    pub fn judge(&mut self, invariant: &'static str, scope: &str, result: Result<(), String>) {
        let line = self.emit("check.model", json!({"invariant": invariant, "scope": scope, "ok": result.is_ok()}));
        lock(&self.shared).checker.count_check(invariant);
        if let Err(why) = result {
            self.violate(invariant, line, format!("{scope}: {why}"));
        }
    }

    // -----------------------------------------------------------------------------------------
    // Nodes

    /// Runs `f` on `node` (its disk, its network address) and returns what it returns.
    pub async fn on<T: Send + 'static>(&self, node: NodeId, f: impl std::future::Future<Output = T> + Send + 'static) -> T {
        let h = madsim::runtime::Handle::current().get_node(node).expect("the node exists");
        h.spawn(f).await.expect("a drill task on a node finishes")
    }

    async fn wait_server(&self) {
        for _ in 0..WAIT_POLLS_MAX {
            if lock(&self.server_slot).is_some() {
                return;
            }
            madsim::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the server never opened its store");
    }

    /// Runs `f` on the server's store, on the server's node.
    pub async fn server<T: Send + 'static>(&mut self, f: impl FnOnce(&mut Server) -> T + Send + 'static) -> T {
        self.wait_server().await;
        let slot = self.server_slot.clone();
        self.on(self.server, async move { f(lock(&slot).as_mut().expect("the server is open")) }).await
    }

    /// The server's events, every tenant.
    pub async fn server_events(&mut self) -> Vec<EventFact> {
        self.server(|s| s.events().expect("the server's events read back")).await.iter().map(fact_of).collect()
    }

    /// The server's events of `tenant`.
    pub async fn server_tenant(&mut self, tenant: &str) -> Vec<EventFact> {
        self.server_events().await.into_iter().filter(|e| e.tenant == tenant).collect()
    }

    /// Power loss on a node, and its restart at once (a device's client must be reopened).
    pub fn crash_and_boot(&mut self, name: &str) {
        if let Some(d) = self.devs.iter_mut().find(|d| d.name == name) {
            d.client = None;
            d.rpc = None;
        }
        lock(&self.nodes).crash(name);
        crate::node::observe(&self.shared, Fact::Crashed { node: name.into() }, trace::line_count());
        lock(&self.nodes).boot(name);
    }

    /// The files of a node's current boot, as the operator sees them.
    pub fn files(&self, node: NodeId) -> SimFs {
        SimFs::of(NodeFiles::of(DiskSim::current(), node))
    }

    // -----------------------------------------------------------------------------------------
    // Devices

    /// Opens device `i`'s database on its node and binds its connection to the server.
    pub async fn open(&mut self, i: usize) -> Result<(), StoreError> {
        let ring = Ring::Fixed(tenant_ring(&self.devs[i].tenant));
        self.open_with_ring(i, ring).await
    }

    fn op_id(&mut self) -> u64 {
        self.next_op += 1;
        self.next_op
    }

    /// Device `i` records `n` events locally; returns their op ids.
    pub fn append(&mut self, i: usize, n: usize) -> Vec<String> {
        self.append_kind(i, n, "created")
    }

    /// Like [`Ctx::append`], with events of `kind`.
    pub fn append_kind(&mut self, i: usize, n: usize, kind: &str) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            let id = self.op_id();
            let aggregate = AGGREGATES[id as usize % AGGREGATES.len()];
            let d = &mut self.devs[i];
            let payload = crate::node::payload_for(&d.name, id, 48);
            match d.client().append(aggregate, kind, &payload) {
                Ok((w, op_id)) => {
                    trace::emit(&d.name, "op.ok", json!({"op": id, "action": "append", "write_id": w, "op_id": op_id}));
                    out.push(op_id);
                }
                Err(e) => panic!("{} cannot append: {e}", d.name),
            }
        }
        out
    }

    /// Device `i` records one event of [`BUGGY_KIND`] and syncs it, so the stack's incremental
    /// fold takes it in and the device's planted fold bugs fire there: the drill's failure comes
    /// from the stack's own code. How often each of the device's bugs fired, as `(projection,
    /// firings)` in the plan's order.
    pub async fn meet_planted_bugs(&mut self, i: usize) -> Vec<(String, u32)> {
        let before = self.planted_fired(i);
        self.append_kind(i, 1, BUGGY_KIND);
        self.sync(i).await.unwrap_or_else(|e| panic!("the event a planted bug mishandles did not sync: {e}"));
        self.planted_fired(i).into_iter().zip(before).map(|((p, now), (_, was))| (p, now - was)).collect()
    }

    /// Device `i`'s planted bugs with their firings so far, as `(target, firings)`.
    pub fn planted_fired(&self, i: usize) -> Vec<(String, u32)> {
        self.planted_fired_on(&self.devs[i].name)
    }

    /// The planted bugs of node `node` with their firings so far, as `(target, firings)`.
    pub fn planted_fired_on(&self, node: &str) -> Vec<(String, u32)> {
        lock(&self.shared).mutations.fired().into_iter().filter(|f| f.0 == node).map(|f| (f.2, f.3)).collect()
    }

    /// Arms (or with `None` heals) device `i`'s faulty transport.
    pub fn transport(&mut self, i: usize, kind: Option<TransportFaultKind>) {
        let d = &self.devs[i];
        lock(&d.transport).mode = kind;
        match kind {
            Some(k) => {
                *self.verdict.faults.entry(k.counted_as()).or_default() += 1;
                trace::emit(&d.name, "fault.transport", json!({"kind": k, "expects": k.signature()}));
            }
            None => {
                trace::emit(&d.name, "fault.heal", json!({"transport": "healthy"}));
            }
        }
    }

    /// One sync attempt of device `i`, traced, with the model told whether it failed closed and
    /// raised exactly the signature of any transport fault injected into it.
    pub async fn sync_once(&mut self, i: usize) -> Result<SyncReport, SyncError> {
        let id = self.op_id();
        let shared = self.shared.clone();
        let d = &mut self.devs[i];
        let name = d.name.clone();
        let before = d.client().export_state()?;
        let renumbers = d.rpc.as_ref().map(|r| r.version() >= 2).unwrap_or(true);
        lock(&d.transport).begin(before.clone(), renumbers);
        trace::emit(&name, "op.start", json!({"op": id, "action": "sync"}));
        let client = d.client.as_mut().expect("open");
        let rpc = d.rpc.as_mut().expect("bound");
        let result = client.sync(rpc).await;
        let expected = lock(&d.transport).expected().map(String::from).or_else(|| d.expect.clone());
        match &result {
            Ok(r) => {
                let detail = json!({"op": id, "pulled": r.pulled, "pushed": r.pushed.len(), "settled": r.settled});
                crate::node::record(&shared, &name, "op.ok", detail, Some(Fact::SyncSucceeded { node: name.clone(), expected }));
                d.last_good = d.client().export_state().ok();
            }
            Err(e) => {
                let after = d.client().export_state()?;
                let detail = json!({"op": id, "code": e.code(), "signature": e.signature(), "expected": expected, "message": e.to_string()});
                let fact = Fact::SyncFailed {
                    node: name.clone(),
                    code: e.code(),
                    signature: e.signature(),
                    expected,
                    state_before: before.to_json(),
                    state_after: after.to_json(),
                };
                crate::node::record(&shared, &name, "op.err", detail, Some(fact));
            }
        }
        result
    }

    /// Syncs device `i` like [`Ctx::sync`] while a planted bug that fired makes its attempts
    /// meet `signature` (a guard's `stage:code`): the model judges each attempt against it
    /// (INV-GUARDRAIL), as it judges one under an injected transport fault, so a device that
    /// took in what the bug did is a violation.
    pub async fn sync_expecting(&mut self, i: usize, signature: &str) -> Result<SyncReport, SyncError> {
        self.devs[i].expect = Some(signature.to_string());
        let r = self.sync(i).await;
        self.devs[i].expect = None;
        r
    }

    /// One sync attempt of device `i` that reached the server and came back: attempts whose
    /// messages the network lost are tried again (a bounded number of times).
    pub async fn sync_through_loss(&mut self, i: usize) -> Result<SyncReport, SyncError> {
        let mut last = None;
        for _ in 0..SYNC_ATTEMPTS_MAX {
            match self.sync_once(i).await {
                Err(SyncError::Transport { detail }) => last = Some(Err(SyncError::Transport { detail })),
                other => return other,
            }
        }
        last.expect("at least one attempt")
    }

    /// Syncs device `i` until an attempt succeeds and settles, retrying what the network lost;
    /// any other error is returned at once.
    pub async fn sync(&mut self, i: usize) -> Result<SyncReport, SyncError> {
        let mut last = None;
        for _ in 0..SYNC_ATTEMPTS_MAX {
            match self.sync_once(i).await {
                Ok(r) if r.settled => return Ok(r),
                Ok(r) => last = Some(Ok(r)),
                Err(SyncError::Transport { detail }) => last = Some(Err(SyncError::Transport { detail })),
                Err(e) => return Err(e),
            }
        }
        last.expect("at least one attempt")
    }

    /// Device `i`'s events.
    pub fn device_events(&mut self, i: usize) -> Vec<EventFact> {
        self.devs[i].client().events().expect("the device's events read back").iter().map(fact_of).collect()
    }

    /// Whether device `i` holds exactly the server's events of its tenant (count and chain head).
    pub async fn converged(&mut self, i: usize) -> bool {
        let tenant = self.devs[i].tenant.clone();
        let server = self.server(move |s| s.diagnostics().expect("diagnostics")).await;
        let want = server.into_iter().find(|d| d.tenant == tenant).map(|d| (d.count, d.head));
        let have = self.devs[i].client().diagnostics().ok();
        let same = match (&want, &have) {
            (Some(w), Some(h)) => w == h,
            (None, Some((0, _))) => true,
            _ => false,
        };
        let short = |x: &Option<(u64, Vec<u8>)>| x.as_ref().map(|(c, h)| format!("{c}/{}", hex::encode(&h[..4.min(h.len())])));
        trace::emit(&self.devs[i].name, "drill.diagnostics", json!({"device": short(&have), "server": short(&want), "same": same}));
        same
    }

    /// Starts the object store node behind the server's blob layer, and waits until it serves.
    pub async fn start_blobstore(&mut self) {
        let handle = madsim::runtime::Handle::current();
        let names = self.devs.iter().map(|d| d.name.clone()).collect();
        let b = crate::blobs_world::BlobWorld::create(&handle, &self.shared, self.server, &self.server_slot, names);
        lock(&self.nodes).add(crate::blobs_world::BLOBSTORE_NODE, b.node, DiskFaults::none(), &self.seeds);
        self.blobs = Some(b);
        madsim::time::sleep(Duration::from_millis(200)).await;
    }

    /// One step of the object store's faults (an error window, an out-of-band deletion, a
    /// malformed reconcile state), given time to land.
    pub async fn blob_fault(&mut self, step: crate::blobs_world::BlobStep) {
        let b = self.blobs.as_mut().expect("the drill started the object store");
        b.play(step, &mut self.verdict.faults);
        madsim::time::sleep(Duration::from_millis(20)).await;
    }

    /// One blob request of device `i`, traced; a request the network lost is sent again.
    pub async fn blob(&mut self, i: usize, req: drill_stack::blobs::BlobRequest) -> Result<drill_stack::blobs::BlobResponse, SyncError> {
        use drill_stack::proto::{Request, Response};
        if self.devs[i].blob_rpc.is_none() {
            let server = SocketAddr::new(SERVER_IP, SERVER_PORT);
            let (node, base) = (self.devs[i].node, 1_000_000 + self.devs[i].opens);
            let timeout = Duration::from_millis(crate::blobs_world::BLOB_RPC_TIMEOUT_MS);
            self.devs[i].blob_rpc = Some(self.on(node, async move { RpcClient::bind(server, base, timeout).await }).await?);
        }
        let d = &mut self.devs[i];
        let rpc = d.blob_rpc.as_mut().expect("bound above");
        let mut last = None;
        for _ in 0..SYNC_ATTEMPTS_MAX {
            match rpc.call(&Request::Blob(req.clone())).await {
                Ok(Response::Blob(r)) => {
                    trace::emit(&d.name, "blob.answer", json!({"status": r.status, "code": r.code, "attempts": r.body.attempts}));
                    return Ok(*r);
                }
                Ok(other) => return Err(SyncError::Server { code: "unexpectedResponse".into(), message: format!("{other:?}") }),
                Err(e @ SyncError::Transport { .. }) => last = Some(Err(e)),
                Err(e) => return Err(e),
            }
        }
        last.expect("at least one attempt")
    }

    /// A busy tenant: every device appends a few events and syncs, twice over, so that every
    /// device holds a history and the server a total order of both tenants.
    pub async fn warm_up(&mut self) {
        for _round in 0..2 {
            for i in 0..self.devs.len() {
                let n = rand::Rng::gen_range(&mut self.rng, 2..=4);
                self.append(i, n);
                self.sync(i).await.unwrap_or_else(|e| panic!("warm-up sync failed: {e}"));
            }
        }
        for i in 0..self.devs.len() {
            self.sync(i).await.unwrap_or_else(|e| panic!("warm-up sync failed: {e}"));
        }
    }

    /// Opens device `i` like [`Ctx::open`], with its aggregate keys in `ring`: a real key store
    /// (opened on the device's node, so its file is on the device's disk) instead of the tenant's
    /// fixed keys.
    pub async fn open_with_ring(&mut self, i: usize, ring: Ring) -> Result<(), StoreError> {
        let d = &mut self.devs[i];
        d.opens += 1;
        let (name, tenant, node) = (d.name.clone(), d.tenant.clone(), d.node);
        let nonces = self.seeds.stream(&format!("nonces/{name}/{}", d.opens));
        let pairing = self.tokens.pairing(&tenant, &name);
        let task = async move {
            let keys = DeviceKeys::new(ring, Box::new(nonces));
            let r = Client::open(DEVICE_DB, &name, &tenant, Box::new(NodeClock(node)), keys);
            HANDOFF.with(|h| *h.borrow_mut() = Some(r));
        };
        self.on(node, task).await;
        let mut client = HANDOFF.with(|h| h.borrow_mut().take()).expect("the open task handed its client over")?;
        client.set_pairing(pairing);
        client.plant(lock(&self.shared).mutations.on(&self.devs[i].name));
        let boots = client.boots();
        let server = SocketAddr::new(SERVER_IP, SERVER_PORT);
        let rpc = self.on(node, async move { RpcClient::bind(server, boots, Duration::from_millis(RPC_TIMEOUT_MS)).await }).await;
        let d = &mut self.devs[i];
        let rpc = rpc.unwrap_or_else(|e| panic!("{} cannot bind: {e}", d.name));
        d.rpc = Some(rpc.with_version(d.version).with_filter(Box::new(FaultyTransport(d.transport.clone()))));
        d.client = Some(client);
        trace::emit(&d.name, "node.recovered", json!({"boots": boots}));
        Ok(())
    }
}

//! Running a plan: build the world, play the timeline of operations and faults, heal, wait for
//! convergence, and let the model judge.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use drill_model::{ClientSnapshot, Fact, ServerSnapshot};
use drill_sim::clock;
use drill_sim::disk::DiskConfig;
use drill_sim::faults::Fault;
use drill_sim::rng::SeedTree;
use drill_sim::trace::{self, Recorder};
use drill_sim::world::{fault_steps, FaultStep, NetConfig, Nodes, Runtime};
use madsim::runtime::NodeHandle;
use madsim::time::Instant;
use serde_json::json;

use crate::api::{Outcome, RunError, RunReport, Violation};
use crate::node::{client_ip, lock, record, ClientCtx, Command, Mailbox, Parts, Shared, SharedRef};
use crate::plan::transport::TransportFaultKind;
use crate::plan::{Action, Plan};
use crate::procs::{self, ServerCtx};
use crate::seam::{Build, Core, Later, StepBox, Subsystem};
use crate::transport::TransportState;

/// The trace format version, named in every trace's first line.
pub use drill_sim::trace::TRACE_FORMAT_VERSION;

/// drill's version and commit, for the first trace line.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("DRILL_GIT_COMMIT");

/// How long the world waits for a device to finish its queue or answer a snapshot.
const WAIT_STEP_MS: u64 = 5;

enum Step {
    Op {
        id: u64,
        client: String,
        action: Action,
    },
    Transport {
        node: String,
        kind: Option<TransportFaultKind>,
    },
    Fault(FaultStep),
    Boot(String),
    /// A step of subsystem `index` (of [`crate::subsystems::all`]).
    Sub {
        index: usize,
        step: StepBox,
    },
    /// A recovery step of a drill injected into the world (a `drill.step` line).
    DrillMark(crate::drills::swarm::Mark),
}

/// What the world hands back to `execute`.
struct Ending {
    liveness: Option<String>,
    steps: u64,
    faults: BTreeMap<String, u64>,
}

/// Runs `plan`; with `out_dir`, writes `plan.json` and `trace.jsonl` there as it goes.
pub fn execute(plan: &Plan, out_dir: Option<&Path>) -> Result<RunReport, RunError> {
    crate::check(plan).map_err(RunError::MalformedPlan)?;
    let plan_json = plan.canonical_json();
    let plan_hash = plan.hash();
    let trace_path = out_dir.map(|d| d.join("trace.jsonl"));
    if let Some(d) = out_dir {
        let pretty = serde_json::to_string_pretty(plan).expect("plans serialize") + "\n";
        std::fs::write(d.join("plan.json"), pretty).map_err(|e| RunError::Io(format!("cannot write {}: {e}", d.join("plan.json").display())))?;
    }
    let rec = Recorder::new(trace_path.as_deref(), true).map_err(|e| RunError::Io(format!("cannot write the trace: {e}")))?;
    let seeds = SeedTree::new(plan.seed);
    let net = NetConfig {
        packet_loss_rate: plan.knobs.net.loss_probability,
        latency_ms_min: plan.knobs.net.latency_ms_min,
        latency_ms_max: plan.knobs.net.latency_ms_max,
    };
    let limit = Duration::from_millis(plan.heal_at_ms + plan.liveness_ms_max + 60_000);
    let rt = Runtime::new(seeds.child("world"), net, DiskConfig::default(), limit);
    let watched = plan.drill.as_ref().and_then(|d| d.swarm.as_ref()).map(|s| s.device.clone());
    let shared: SharedRef = Arc::new(Mutex::new(Shared { watched, ..Shared::default() }));
    trace::install(rec, clock::true_us);
    let first = json!({
        "seed": plan.seed, "plan_hash": plan_hash, "version": VERSION, "commit": COMMIT,
        "profile": plan.profile, "scenario": plan.scenario, "trace_format": TRACE_FORMAT_VERSION,
    });
    trace::emit("world", "run.start", first);
    lock(&shared).mutations = crate::node::plant(plan);
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| rt.block_on(world(plan.clone(), shared.clone()))));
    let rec = trace::uninstall().expect("the recorder is installed");
    let sim_time_ms = rt.elapsed_ms();
    // Dropping the world runs the killed processes' drop code; nothing of it is recorded.
    let _ = std::panic::catch_unwind(AssertUnwindSafe(move || drop(rt)));
    let (ending, panic) = match result {
        Ok(e) => (e, None),
        Err(p) => (Ending { liveness: None, steps: 0, faults: BTreeMap::new() }, Some(panic_message(&p))),
    };
    let (fingerprint, trace) = rec.finish().map_err(|e| RunError::Io(format!("cannot write the trace: {e}")))?;
    let s = lock(&shared);
    let mut violations: Vec<Violation> = s.checker.violations().to_vec();
    if let Some(msg) = panic {
        violations.push(Violation { invariant: "SIM-NO-PANIC".into(), node: "world".into(), trace_line: trace.len() as u64, message: msg });
    }
    let outcome = if !violations.is_empty() {
        Outcome::Violation
    } else if ending.liveness.is_some() {
        Outcome::Liveness
    } else {
        Outcome::Pass
    };
    if let Some(why) = &ending.liveness {
        violations.push(Violation {
            invariant: drill_model::invariants::LIVE_DRAIN.into(),
            node: "world".into(),
            trace_line: trace.len() as u64,
            message: why.clone(),
        });
    }
    let mut report = RunReport {
        seed: plan.seed,
        scenario: plan.scenario.clone(),
        profile: plan.profile,
        outcome,
        violations,
        fingerprint,
        faults: ending.faults,
        checks: s.checker.checks().clone(),
        sim_time_ms,
        steps: ending.steps,
        plan_hash,
        plan_json,
        trace,
        drills: BTreeMap::new(),
        mutations: crate::node::planted_report(&s.mutations),
    };
    crate::drills::swarm::judge(plan, &s.attempts, &mut report);
    Ok(report)
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        format!("panic: {s}")
    } else if let Some(s) = p.downcast_ref::<String>() {
        format!("panic: {s}")
    } else {
        "panic".into()
    }
}

/// The world: nodes, the timeline, the heal, the liveness phase and the final judgement.
async fn world(plan: Plan, shared: SharedRef) -> Ending {
    let seeds = SeedTree::new(plan.seed);
    let handle = madsim::runtime::Handle::current();
    let mut nodes = Nodes::new();
    let slot = Arc::new(Mutex::new(None));
    let options = drill_stack::server::ServerOptions { retention_events: plan.server_retention, ..Default::default() };
    let tenant_keys = Arc::new(procs::provision(&plan));
    let tokens = Arc::new(crate::tokens::Tokens::new(plan.seed));
    let sctx = ServerCtx { options, tenant_keys: tenant_keys.clone(), slot: slot.clone(), tokens: tokens.clone(), shared: shared.clone() };
    let server = procs::server_node(&handle, sctx);
    nodes.add("server", server.id(), plan.knobs.disk.crash, &seeds);
    let subsystems = crate::subsystems::all(&mut Build {
        handle: &handle,
        plan: &plan,
        shared: &shared,
        seeds: &seeds,
        nodes: &mut nodes,
        server: server.id(),
        server_slot: &slot,
    });
    let mut mailboxes: BTreeMap<String, Arc<Mutex<Mailbox>>> = BTreeMap::new();
    let mut transports: BTreeMap<String, Arc<Mutex<TransportState>>> = BTreeMap::new();
    let mut devices: BTreeMap<String, Arc<ClientCtx>> = BTreeMap::new();
    for (i, spec) in plan.clients.iter().enumerate() {
        let fact = Fact::Client { node: spec.name.clone(), replica: spec.name.clone(), tenant: spec.tenant.clone() };
        record(&shared, &spec.name, "node.start", json!({"tenant": spec.tenant}), Some(fact));
        let mailbox = Arc::new(Mutex::new(Mailbox::default()));
        let transport = Arc::new(Mutex::new(TransportState::default()));
        let ctx = Arc::new(ClientCtx {
            name: spec.name.clone(),
            tenant: spec.tenant.clone(),
            tenant_keys: tenant_keys[&spec.tenant].clone(),
            passphrase: format!("passphrase of {}", spec.name),
            seeds: seeds.child("devices"),
            starts: Mutex::new(0),
            withheld: Mutex::new(std::collections::BTreeSet::new()),
            backup: Mutex::new(None),
            key_store_id: Mutex::new(None),
            recovery_base: Mutex::new(None),
            backup_restored: std::sync::atomic::AtomicBool::new(false),
            key_faults: Mutex::new(crate::node::KeyFaults::default()),
            protocol_version: spec.protocol_version,
            transport: transport.clone(),
            mailbox: mailbox.clone(),
            pairing: tokens.pairing(&spec.tenant, &spec.name),
            skip_group_reconnect: plan.store.as_ref().is_some_and(|s| s.skip_group_reconnect),
            parts: subsystems.iter().fold(Parts::default(), |parts, s| s.parts(spec, parts)),
            shared: shared.clone(),
        });
        transports.insert(spec.name.clone(), transport);
        devices.insert(spec.name.clone(), ctx.clone());
        let node = handle.create_node().name(spec.name.as_str()).ip(client_ip(i)).init(move || procs::client_main(ctx.clone())).build();
        nodes.add(&spec.name, node.id(), plan.knobs.disk.crash, &seeds);
        mailboxes.insert(spec.name.clone(), mailbox);
    }
    let mut w = World {
        plan: &plan,
        shared,
        tenant_keys,
        devices,
        nodes,
        mailboxes,
        transports,
        server,
        slot,
        start: clock::now(),
        steps: 0,
        timeline: BTreeMap::new(),
        next_key: 0,
        subsystems,
        tokens,
    };
    if let Some(keep) = plan.server_retention {
        *w.nodes.counts.entry("server.retention".into()).or_default() += 1;
        trace::emit("server", "fault.retention", json!({"keep_events": keep}));
    }
    w.load_timeline();
    w.play().await;
    let liveness = w.heal_and_converge().await;
    w.final_rounds(liveness.is_none()).await;
    w.judge(liveness.is_none()).await;
    for sub in &w.subsystems {
        sub.add_counts(&mut w.nodes.counts);
    }
    for (k, n) in &lock(&w.shared).counts {
        *w.nodes.counts.entry(k.clone()).or_default() += n;
    }
    let faults = w.nodes.counts.clone();
    trace::emit("world", "run.end", json!({"steps": w.steps, "liveness": liveness, "faults": faults}));
    Ending { liveness, steps: w.steps, faults }
}

struct World<'a> {
    plan: &'a Plan,
    shared: SharedRef,
    tokens: Arc<crate::tokens::Tokens>,
    tenant_keys: Arc<BTreeMap<String, Arc<crate::node::TenantKeys>>>,
    devices: BTreeMap<String, Arc<ClientCtx>>,
    nodes: Nodes,
    mailboxes: BTreeMap<String, Arc<Mutex<Mailbox>>>,
    transports: BTreeMap<String, Arc<Mutex<TransportState>>>,
    server: NodeHandle,
    slot: Arc<Mutex<Option<drill_stack::server::Server>>>,
    start: Instant,
    steps: u64,
    /// Steps by (time in ms, order of insertion).
    timeline: BTreeMap<(u64, u64), Step>,
    next_key: u64,
    /// The world's subsystems, plugged in through the seam.
    subsystems: Vec<Box<dyn Subsystem>>,
}

impl World<'_> {
    fn at(&mut self, ms: u64, step: Step) {
        self.timeline.insert((ms, self.next_key), step);
        self.next_key += 1;
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn load_timeline(&mut self) {
        for (id, op) in self.plan.ops.iter().enumerate() {
            self.at(op.at_ms, Step::Op { id: id as u64 + 1, client: op.client.clone(), action: op.action.clone() });
        }
        for (t, s) in fault_steps(&self.plan.faults) {
            self.at(t, Step::Fault(s));
        }
        for f in &self.plan.transport_faults {
            self.at(f.at_ms, Step::Transport { node: f.node.clone(), kind: Some(f.kind) });
            self.at(f.at_ms + f.ms, Step::Transport { node: f.node.clone(), kind: None });
        }
        let steps: Vec<(usize, u64, StepBox)> =
            self.subsystems.iter().enumerate().flat_map(|(index, sub)| sub.steps(self.plan).into_iter().map(move |(t, step)| (index, t, step))).collect();
        for (index, t, step) in steps {
            self.at(t, Step::Sub { index, step });
        }
        for (t, m) in crate::drills::swarm::marks(self.plan) {
            self.at(t, Step::DrillMark(m));
        }
    }

    /// Sleeps until `deadline`, or until a power cut fires somewhere (then handles it).
    async fn wait_until(&mut self, deadline: Instant) {
        loop {
            self.take_power_cuts();
            if clock::now() >= deadline {
                return;
            }
            let sleep = madsim::time::sleep_until(deadline);
            let mut sleep = std::pin::pin!(sleep);
            let cut = std::future::poll_fn(|cx| {
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(());
                }
                let cuts = drill_sim::disk::DiskSim::current().has_cuts(Some(cx.waker()));
                if cuts {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            });
            cut.await;
        }
    }

    /// Books power cuts that fired: the model learns the node crashed, its queue is dropped,
    /// and it boots after its downtime.
    fn take_power_cuts(&mut self) {
        for name in self.nodes.take_power_cuts(None) {
            let down_ms = self.down_ms_of_armed(&name);
            self.crashed(&name);
            let t = self.now_ms() + down_ms;
            self.at(t, Step::Boot(name));
        }
    }

    fn down_ms_of_armed(&self, name: &str) -> u64 {
        // The last armed crash of this node that has not fired yet is the one that fired.
        self.plan
            .faults
            .iter()
            .rev()
            .find_map(|s| match &s.fault {
                Fault::Crash { node, down_ms, after_disk_ops: Some(_) } if node == name && s.at_ms <= self.now_ms() => Some(*down_ms),
                _ => None,
            })
            .unwrap_or(1)
    }

    fn crashed(&mut self, name: &str) {
        crate::seam::crashed(&self.shared, &self.mailboxes, name);
    }

    async fn play(&mut self) {
        while let Some(((t, _), step)) = self.timeline.pop_first() {
            if t >= self.plan.heal_at_ms {
                self.timeline.insert((t, 0), step);
                break;
            }
            self.wait_until(self.start + Duration::from_millis(t)).await;
            self.apply(step);
        }
        self.wait_until(self.start + Duration::from_millis(self.plan.heal_at_ms)).await;
    }

    fn apply(&mut self, step: Step) {
        match step {
            Step::Op { id, client, action } => {
                self.steps += 1;
                if self.nodes.is_down(&client) {
                    trace::emit(&client, "op.skipped", json!({"op": id, "reason": "device is down"}));
                    return;
                }
                lock(&self.mailboxes[&client]).push(Command::Op { id, action });
            }
            Step::Fault(FaultStep::Inject(Fault::Crash { node, after_disk_ops: None, down_ms })) => {
                if self.nodes.crash(&node) {
                    self.crashed(&node);
                    let _ = down_ms;
                }
            }
            Step::Fault(s) => self.nodes.apply(&s),
            Step::Transport { node, kind } => self.set_transport(&node, kind),
            Step::Boot(name) => self.nodes.boot(&name),
            Step::DrillMark(m) => crate::drills::swarm::mark(&m),
            Step::Sub { index, step } => {
                let later = self.with_core(|subs, core| subs[index].apply(step, core));
                for l in later {
                    match l {
                        Later::Step { at_ms, step } => self.at(at_ms, Step::Sub { index, step }),
                        Later::Boot { at_ms, node } => self.at(at_ms, Step::Boot(node)),
                        Later::Fault { at_ms, step } => self.at(at_ms, Step::Fault(step)),
                    }
                }
            }
        }
    }

    /// Lends the subsystems the world's core; hands back what the subsystem asked for later.
    fn with_core(&mut self, f: impl FnOnce(&mut [Box<dyn Subsystem>], &mut Core<'_>)) -> Vec<Later> {
        let now_ms = self.now_ms();
        let World { plan, shared, nodes, mailboxes, devices, server, slot, subsystems, .. } = self;
        let mut core = Core { plan, shared, nodes, mailboxes, devices, server: server.id(), server_slot: slot, now_ms, later: Vec::new() };
        f(subsystems, &mut core);
        core.later
    }

    /// After the liveness phase: every subsystem's final round, in the registry's order.
    async fn final_rounds(&mut self, converged: bool) {
        let now_ms = self.now_ms();
        let World { plan, shared, nodes, mailboxes, devices, server, slot, subsystems, .. } = self;
        let core = Core { plan, shared, nodes, mailboxes, devices, server: server.id(), server_slot: slot, now_ms, later: Vec::new() };
        for sub in subsystems.iter() {
            sub.final_round(&core, converged).await;
        }
    }

    fn set_transport(&mut self, node: &str, kind: Option<TransportFaultKind>) {
        let mut t = lock(&self.transports[node]);
        match kind {
            Some(k) => {
                *self.nodes.counts.entry(k.counted_as()).or_default() += 1;
                trace::emit(node, "fault.transport", json!({"kind": k, "expects": k.signature()}));
            }
            None if t.mode.is_some() => {
                trace::emit(node, "fault.heal", json!({"transport": "healthy"}));
            }
            None => {}
        }
        t.mode = kind;
    }

    /// Ends every fault, then has every device sync until all converge, within the bound.
    async fn heal_and_converge(&mut self) -> Option<String> {
        self.take_power_cuts();
        self.timeline.clear();
        let later = self.with_core(|subs, core| subs.iter_mut().for_each(|sub| sub.heal(core)));
        debug_assert!(later.is_empty(), "nothing is scheduled after the heal");
        self.nodes.heal_all();
        let names: Vec<String> = self.transports.keys().cloned().collect();
        for n in names {
            self.set_transport(&n, None);
        }
        let deadline = clock::now() + Duration::from_millis(self.plan.liveness_ms_max);
        let mut round = 0u64;
        loop {
            round += 1;
            let names: Vec<String> = self.mailboxes.keys().cloned().collect();
            for n in &names {
                // The subsystems' standing operator answers first (a READ_ONLY period ended, a
                // key error repaired, a key backup restored), then a sync.
                for sub in &self.subsystems {
                    sub.converge_round(n, &self.mailboxes[n]);
                }
                lock(&self.mailboxes[n]).push(Command::Op { id: 0, action: Action::Sync });
            }
            self.wait_idle(deadline).await;
            let why = match self.snapshots(deadline).await {
                Ok((server, clients)) => lock(&self.shared).checker.converged(&server, &clients).err(),
                Err(e) => Some(e),
            };
            // Converging after the bound is a liveness failure all the same.
            let late = clock::now() > deadline;
            let why = match why {
                None if late => Some(format!("converged only after the bound, in round {round}")),
                other => other,
            };
            match why {
                None => {
                    trace::emit("world", "liveness.converged", json!({"rounds": round}));
                    lock(&self.shared).checker.count_check(drill_model::invariants::LIVE_DRAIN);
                    return None;
                }
                Some(why) if clock::now() >= deadline => {
                    trace::emit("world", "liveness.stuck", json!({"rounds": round, "why": why}));
                    lock(&self.shared).checker.count_check(drill_model::invariants::LIVE_DRAIN);
                    return Some(format!("no convergence within {} ms after heal: {why}", self.plan.liveness_ms_max));
                }
                Some(_) => self.wait_until(clock::now() + Duration::from_millis(200)).await,
            }
        }
    }

    async fn wait_idle(&mut self, deadline: Instant) {
        while clock::now() < deadline && !self.mailboxes.values().all(|m| lock(m).idle()) {
            self.wait_until(clock::now() + Duration::from_millis(WAIT_STEP_MS)).await;
        }
    }

    async fn client_snapshot(&mut self, name: &str, deadline: Instant) -> Result<ClientSnapshot, String> {
        let mb = self.mailboxes[name].clone();
        lock(&mb).snapshot = None;
        lock(&mb).push(Command::Snapshot);
        loop {
            if let Some(s) = lock(&mb).snapshot.take() {
                return s.map_err(|e| format!("{name} cannot be read: {e}"));
            }
            if clock::now() >= deadline {
                return Err(format!("{name} did not answer a snapshot request"));
            }
            self.wait_until(clock::now() + Duration::from_millis(WAIT_STEP_MS)).await;
        }
    }

    async fn server_snapshot(&mut self) -> Result<ServerSnapshot, String> {
        let slot = self.slot.clone();
        let keys = self.tenant_keys.clone();
        // A restarted node has a new identity in madsim: spawn through a fresh handle.
        let node = madsim::runtime::Handle::current().get_node(self.server.id()).ok_or("the server node is gone")?;
        let task = node.spawn(async move {
            match lock(&slot).as_ref() {
                Some(s) => procs::server_snapshot(s, &keys),
                None => Err("server store is not open".to_string()),
            }
        });
        task.await.map_err(|e| format!("server snapshot task failed: {e}"))?
    }

    async fn snapshots(&mut self, deadline: Instant) -> Result<(ServerSnapshot, Vec<ClientSnapshot>), String> {
        // A device busy with its last sync attempt still gets to answer.
        let deadline = deadline.max(clock::now() + Duration::from_millis(3 * crate::node::RPC_TIMEOUT_MS));
        // Devices first, the server last: every push a device saw acknowledged before its
        // snapshot was committed on the server before the server's snapshot.
        let mut clients = Vec::new();
        let names: Vec<String> = self.mailboxes.keys().cloned().collect();
        for n in names {
            clients.push(self.client_snapshot(&n, deadline).await?);
        }
        let server = self.server_snapshot().await?;
        Ok((server, clients))
    }

    async fn judge(&mut self, converged: bool) {
        let deadline = clock::now() + Duration::from_millis(5_000);
        match self.snapshots(deadline).await {
            Ok((server, clients)) => {
                let line = trace::emit("world", "check.final", json!({"server_events": server.events.len()}));
                let before = lock(&self.shared).checker.violations().len();
                lock(&self.shared).checker.check_final(&server, &clients, line, converged);
                let new = lock(&self.shared).checker.violations()[before..].to_vec();
                for v in new {
                    trace::emit(&v.node, "check.violation", json!({"invariant": v.invariant, "line": v.trace_line, "message": v.message}));
                }
            }
            Err(e) => {
                trace::emit("world", "check.final_unreadable", json!({"why": e}));
            }
        }
        self.audit(converged, deadline).await;
    }

    /// The end-of-run audit: every device audits its store (projections, tenants, a snapshot
    /// restore against a replay) and names the key material it holds; then every node's disk
    /// images are scanned for the workload's plaintexts and for key material (INV-NO-PLAINTEXT).
    async fn audit(&mut self, converged: bool, deadline: Instant) {
        let mut secrets = procs::workload_secrets(self.plan, &self.tenant_keys);
        for sub in &self.subsystems {
            secrets.extend(sub.secrets(self.plan));
        }
        secrets.extend(self.tokens.secrets(self.plan.clients.iter().map(|c| (c.tenant.as_str(), c.name.as_str()))));
        let names: Vec<String> = self.mailboxes.keys().cloned().collect();
        for n in &names {
            let mb = self.mailboxes[n].clone();
            lock(&mb).audit = None;
            lock(&mb).push(Command::Audit { converged });
            loop {
                if let Some(s) = lock(&mb).audit.take() {
                    secrets.extend(s);
                    break;
                }
                if clock::now() >= deadline {
                    trace::emit(n, "check.audit_unanswered", json!({}));
                    break;
                }
                self.wait_until(clock::now() + Duration::from_millis(WAIT_STEP_MS)).await;
            }
        }
        let disks = drill_sim::disk::DiskSim::current();
        for n in self.plan.store.iter().flat_map(|s| s.plant_plaintext.iter()) {
            // A planted bug: a workload plaintext left in a file on the node's disk.
            if let Some(s) = secrets.iter().find(|s| s.label.starts_with("payload")) {
                disks.put_file(self.nodes.id(n), "debug.log", &s.bytes);
                trace::emit(n, "fault.planted_plaintext", json!({"file": "debug.log", "secret": s.label}));
            }
        }
        let line = trace::emit("world", "check.scan", json!({"secrets": secrets.len()}));
        let nodes: Vec<String> = self.nodes.names().cloned().collect();
        for n in nodes {
            let images = disks.images(self.nodes.id(&n));
            let fact = drill_model::store::StoreFact::Scan { node: n.clone(), images, secrets: secrets.clone() };
            crate::node::observe(&self.shared, Fact::Store(fact), line);
        }
        for sub in &self.subsystems {
            sub.judge(converged, &secrets, line).await;
        }
    }
}

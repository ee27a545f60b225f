//! Jobs in the world (runbook 001 "Persistence and Sync Recovery", Scenarios A, B, C and E).
//!
//! The failure: a jobs process on its own node (`jobs`) runs jobs through external backends
//! that the plan makes crash (a signal), hang past the timeout, or exit non-zero; a persist can
//! fail on a disk error; the power is cut in the middle of an export (leaving `*.jsonl.tmp` and
//! a stale lock) and in the middle of an import; peers hand over snapshots that diverge from the
//! local database.
//!
//! The recovery, as the runbook says, through the stack's own operator API:
//! - a failed backend gets an error event naming it and the stage, the job falls back to the
//!   next backend, and when all fail a failed run shell with diagnostics is persisted (E);
//! - a failed persist is re-run persist-only from the result envelope found in the robot-mode
//!   output, with a remediation event linked to the original run (A);
//! - after a cut export the restarted process recognises its earlier boot's lock as stale,
//!   archives the temp files and exports again end to end (B);
//! - an import with `reject` that meets divergent rows aborts with the conflicts in
//!   `sync_conflicts.jsonl`; an `overwrite` that meets a divergent child row stops and imports
//!   into a fresh database, validates it and swaps the active pointer (C);
//! - a corrupt database or a blocked legacy migration found on boot is rebuilt from the latest
//!   valid snapshot (D, F).
//!
//! Checked (drill-model `jobs`): INV-EXPORT after every export, every recovery and at the end;
//! INV-IMPORT-REJECT after every import with `reject`, and after a recovery that cut one short.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

use drill_model::jobs::{JobsFact, RowFact};
use drill_model::Fact;
use drill_sim::disk::{DiskSim, IoFault, IoOp};
use drill_sim::rng::SeedTree;
use drill_stack::fs::{publish, FileSystem};
use drill_stack::jobs::backend::{segments_for, Backend, BackendExit, BoxFuture, ExitStatus, JobInput, Segment};
use drill_stack::jobs::db::{Contents, EventRow, JobsDb, RunRow, SegmentRow, Table};
use drill_stack::jobs::export::{export, sha256_hex, LockOwner, Manifest, ManifestFile, MANIFEST};
use drill_stack::jobs::import::{active_db, import_fresh, import_jsonl, read_conflicts, ConflictClass, ConflictPolicy};
use drill_stack::jobs::pipeline::{persist_only, run_job, JobOptions, ResultEnvelope};
use drill_stack::jobs::recovery::{recover_corrupt, recover_legacy};
use drill_stack::jobs::robot::{self, RobotEvent, RobotLog};
use drill_stack::jobs::JobError;
use madsim::task::NodeId;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::plan::Plan;
use crate::procs::{lock, record, SharedRef};
use crate::sim_fs::SimFs;

/// The jobs node.
pub const JOBS_NODE: &str = "jobs";
pub const JOBS_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 3, 1));
/// Where exports go, and where a peer's snapshot arrives.
pub const EXPORT_DIR: &str = "export";
pub const INBOX_DIR: &str = "inbox";
/// The backends, in fallback order.
pub const BACKENDS: [&str; 3] = ["whisper-gpu", "whisper-cpu", "tiny"];
/// How long a backend may take before it is killed.
pub const BACKEND_TIMEOUT_MS: u64 = 800;
/// Limits a plan must respect.
pub const JOB_OPS_MAX: usize = 1_000;
pub const WORK_MS_MAX: u64 = 10_000;
pub const CUT_AFTER_OPS_MAX: u32 = 10_000;
/// Largest disk-operation index a swarm plan cuts the power at during an export, and during an
/// import (an export takes about 25 operations; an import, less when it refuses early).
const EXPORT_CUT_SWARM_MAX: u32 = 30;
const IMPORT_CUT_SWARM_MAX: u32 = 15;
/// How long the world waits for the jobs round after the heal.
const FINAL_ROUND_MS_MAX: u64 = 60_000;
/// How often the process retries opening its database before it gives up.
const OPEN_ATTEMPTS_MAX: u32 = 200;

// ---------------------------------------------------------------------------------------------
// The plan

/// What a backend does with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendOutcome {
    Ok,
    /// Dies of a signal.
    Crash,
    /// Never answers: the job's timeout kills it.
    Hang,
    /// Exits with a non-zero code.
    Exit,
}

/// One backend of a job: what it does, after how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendPlan {
    pub outcome: BackendOutcome,
    pub work_ms: u64,
}

/// Where an import reads its snapshot from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The node's own last export.
    Export,
    /// A snapshot a peer handed over.
    Inbox,
}

impl Source {
    pub fn dir(self) -> &'static str {
        match self {
            Source::Export => EXPORT_DIR,
            Source::Inbox => INBOX_DIR,
        }
    }
}

/// An operation of the jobs process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum JobOp {
    /// Run job `run-<run>` through the backends in order, each doing what the plan says; with
    /// `persist_fault` the persist's sync fails once.
    Job {
        run: u32,
        backends: Vec<BackendPlan>,
        #[serde(default)]
        persist_fault: bool,
    },
    /// Export to `export/`; with `crash_after_ops` the power is cut at that disk operation of it.
    Export {
        #[serde(default)]
        crash_after_ops: Option<u32>,
    },
    /// A peer hands over a snapshot of what it holds (to `inbox/`): the local rows, one more
    /// run, and with `divergent` one row changed.
    PeerSnapshot { divergent: bool },
    /// Import a snapshot with a policy; with `crash_after_ops` the power is cut during it.
    Import {
        source: Source,
        policy: ConflictPolicy,
        #[serde(default)]
        crash_after_ops: Option<u32>,
    },
}

/// A jobs operation at a simulated time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOpAt {
    pub at_ms: u64,
    #[serde(flatten)]
    pub op: JobOp,
}

/// How much jobs traffic and how many jobs faults a swarm plan draws. Probabilities are per
/// backend run (crash, hang, exit), per job (persist fault) and per export or import (a cut).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobsKnobs {
    pub jobs_max: u32,
    pub exports_max: u32,
    pub imports_max: u32,
    pub backend_crash_probability: f64,
    pub backend_hang_probability: f64,
    pub backend_exit_probability: f64,
    pub persist_fault_probability: f64,
    pub crash_mid_export_probability: f64,
    pub crash_mid_import_probability: f64,
}

impl JobsKnobs {
    pub fn swarm(rng: &mut drill_sim::rng::Stream) -> Self {
        JobsKnobs {
            jobs_max: rng.gen_range(2..=10),
            exports_max: rng.gen_range(1..=4),
            imports_max: rng.gen_range(1..=4),
            backend_crash_probability: rng.gen_range(0.0..=0.4),
            backend_hang_probability: rng.gen_range(0.0..=0.2),
            backend_exit_probability: rng.gen_range(0.0..=0.3),
            persist_fault_probability: rng.gen_range(0.0..=0.25),
            crash_mid_export_probability: rng.gen_range(0.0..=0.7),
            crash_mid_import_probability: rng.gen_range(0.0..=0.7),
        }
    }

    fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("backend_crash_probability", self.backend_crash_probability),
            ("backend_hang_probability", self.backend_hang_probability),
            ("backend_exit_probability", self.backend_exit_probability),
            ("persist_fault_probability", self.persist_fault_probability),
            ("crash_mid_export_probability", self.crash_mid_export_probability),
            ("crash_mid_import_probability", self.crash_mid_import_probability),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("jobs.knobs.{name} must be within 0..=1, not {p}"));
            }
        }
        Ok(())
    }
}

/// The jobs part of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobsPlan {
    pub knobs: JobsKnobs,
    pub ops: Vec<JobOpAt>,
}

/// Adds a jobs node and its operations to `plan` (most swarm seeds), each draw from its own seed
/// stream so the rest of the plan stays as the seed made it.
pub fn add_to_plan(plan: &mut Plan, seeds: &SeedTree, duration_ms: u64) {
    let mut rng = seeds.stream("jobs-knobs");
    if !rng.gen_bool(0.8) {
        return;
    }
    let k = JobsKnobs::swarm(&mut rng);
    let mut rng = seeds.stream("jobs-ops");
    let at = |rng: &mut drill_sim::rng::Stream| rng.gen_range(0..duration_ms.max(1));
    let mut ops = Vec::new();
    for run in 1..=rng.gen_range(1..=k.jobs_max) {
        let backends = BACKENDS
            .iter()
            .map(|_| {
                let x: f64 = rng.gen();
                let outcome = if x < k.backend_crash_probability {
                    BackendOutcome::Crash
                } else if x < k.backend_crash_probability + k.backend_hang_probability {
                    BackendOutcome::Hang
                } else if x < k.backend_crash_probability + k.backend_hang_probability + k.backend_exit_probability {
                    BackendOutcome::Exit
                } else {
                    BackendOutcome::Ok
                };
                BackendPlan { outcome, work_ms: rng.gen_range(5..=150) }
            })
            .collect();
        ops.push(JobOpAt { at_ms: at(&mut rng), op: JobOp::Job { run, backends, persist_fault: rng.gen_bool(k.persist_fault_probability) } });
    }
    let cut = |rng: &mut drill_sim::rng::Stream, p: f64, max: u32| if rng.gen_bool(p) { Some(rng.gen_range(1..=max)) } else { None };
    for _ in 0..rng.gen_range(1..=k.exports_max) {
        ops.push(JobOpAt { at_ms: at(&mut rng), op: JobOp::Export { crash_after_ops: cut(&mut rng, k.crash_mid_export_probability, EXPORT_CUT_SWARM_MAX) } });
    }
    for _ in 0..rng.gen_range(1..=k.imports_max) {
        let source = if rng.gen_bool(0.4) { Source::Export } else { Source::Inbox };
        let policy = if rng.gen_bool(0.65) { ConflictPolicy::Reject } else { ConflictPolicy::Overwrite };
        let at_ms = at(&mut rng);
        if source == Source::Inbox {
            // A peer hands its snapshot over some time before it is imported.
            ops.push(JobOpAt { at_ms: rng.gen_range(0..=at_ms), op: JobOp::PeerSnapshot { divergent: rng.gen_bool(0.6) } });
        }
        ops.push(JobOpAt { at_ms, op: JobOp::Import { source, policy, crash_after_ops: cut(&mut rng, k.crash_mid_import_probability, IMPORT_CUT_SWARM_MAX) } });
    }
    ops.sort_by_key(|o| o.at_ms);
    plan.jobs = Some(JobsPlan { knobs: k, ops });
}

/// Checks the jobs part of a plan.
pub fn validate(plan: &Plan) -> Result<(), String> {
    let Some(j) = &plan.jobs else { return Ok(()) };
    j.knobs.validate()?;
    if j.ops.len() > JOB_OPS_MAX {
        return Err(format!("{} jobs operations exceed the limit of {JOB_OPS_MAX}", j.ops.len()));
    }
    for o in &j.ops {
        if o.at_ms > plan.heal_at_ms {
            return Err(format!("jobs operation at {} ms is after heal_at_ms {}", o.at_ms, plan.heal_at_ms));
        }
        match &o.op {
            JobOp::Job { backends, .. } if backends.is_empty() || backends.len() > BACKENDS.len() || backends.iter().any(|b| b.work_ms > WORK_MS_MAX) => {
                return Err(format!("job at {} ms needs 1 to {} backends working at most {WORK_MS_MAX} ms", o.at_ms, BACKENDS.len()));
            }
            JobOp::Export { crash_after_ops: Some(k) } | JobOp::Import { crash_after_ops: Some(k), .. } if *k == 0 || *k > CUT_AFTER_OPS_MAX => {
                return Err(format!("jobs operation at {} ms cuts the power at disk operation {k}, outside 1..={CUT_AFTER_OPS_MAX}", o.at_ms));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The timed steps of a plan's jobs operations, with their 1-based ids.
pub fn steps(plan: &Plan) -> Vec<(u64, JobsStep)> {
    plan.jobs.iter().flat_map(|j| &j.ops).enumerate().map(|(i, o)| (o.at_ms, JobsStep { id: i as u64 + 1, op: o.op.clone() })).collect()
}

/// One operation of the jobs timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobsStep {
    pub id: u64,
    pub op: JobOp,
}

// ---------------------------------------------------------------------------------------------
// The backends: simulated external processes

/// A backend as a simulated external process: a task on the jobs node that works for a while,
/// then answers, dies of a signal, exits non-zero, or never answers, as the plan says. Dropping
/// the run (the job's timeout) kills the task.
struct SimBackend {
    id: &'static str,
    plan: BackendPlan,
}

impl Backend for SimBackend {
    fn id(&self) -> &str {
        self.id
    }

    fn command(&self) -> Vec<String> {
        vec![format!("/usr/bin/{}", self.id), "--format".into(), "json".into(), "--input".into(), "-".into()]
    }

    fn run<'a>(&'a self, input: &'a JobInput) -> BoxFuture<'a, Result<Vec<Segment>, BackendExit>> {
        let (id, plan, input) = (self.id, self.plan, input.clone());
        Box::pin(async move {
            let process = madsim::task::spawn(async move {
                madsim::time::sleep(Duration::from_millis(plan.work_ms)).await;
                match plan.outcome {
                    BackendOutcome::Ok => Ok(segments_for(&input, id, 1 + (plan.work_ms % 4) as u32)),
                    BackendOutcome::Crash => Err(BackendExit { status: ExitStatus::Signal(11), stderr: "Segmentation fault (core dumped)".into() }),
                    BackendOutcome::Exit => {
                        Err(BackendExit { status: ExitStatus::Code(1 + (plan.work_ms % 3) as i32), stderr: format!("{id}: error: model failed to load") })
                    }
                    BackendOutcome::Hang => std::future::pending().await,
                }
            })
            .cancel_on_drop();
            process.await.unwrap_or_else(|| Err(BackendExit { status: ExitStatus::Signal(9), stderr: "killed".into() }))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The jobs process

enum JobCommand {
    Op(JobsStep),
    /// After the heal: check the export folder, export once more, import it with `reject`.
    Final,
}

#[derive(Default)]
struct JobsMailbox {
    queue: VecDeque<JobCommand>,
    waker: Option<Waker>,
    final_done: bool,
}

impl JobsMailbox {
    fn push(&mut self, c: JobCommand) {
        self.queue.push_back(c);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

async fn next_command(mb: &Mutex<JobsMailbox>) -> JobCommand {
    std::future::poll_fn(|cx| {
        let mut m = lock(mb);
        match m.queue.pop_front() {
            Some(c) => Poll::Ready(c),
            None => {
                m.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    })
    .await
}

/// What the jobs process shares with the world: its mailbox, the fault counts it observed, the
/// fault armed around the operation in progress (counted if the node dies during it), and how
/// many times it booted (its lock owner identity).
pub struct JobsCtx {
    shared: SharedRef,
    mailbox: Mutex<JobsMailbox>,
    counts: Mutex<BTreeMap<String, u64>>,
    armed: Mutex<Option<&'static str>>,
    boots: Mutex<u64>,
}

impl JobsCtx {
    fn count(&self, kind: &str) {
        *lock(&self.counts).entry(kind.to_string()).or_default() += 1;
    }
}

struct Proc {
    ctx: Arc<JobsCtx>,
    fs: SimFs,
    node: NodeId,
    boot: u64,
    db: Option<JobsDb>,
    /// Results whose persist failed and whose persist-only has not succeeded yet.
    unpersisted: Vec<ResultEnvelope>,
    /// Fresh databases made by this boot.
    fresh: u64,
}

fn rows_of(db: &JobsDb) -> Option<Vec<RowFact>> {
    db.contents().ok().map(|c| c.keyed())
}

/// The jobs process: open (and if need be recover) the active database, report what the disk
/// kept, then run operations.
pub async fn jobs_main(ctx: Arc<JobsCtx>) {
    let node = madsim::plugin::node();
    let boot = {
        let mut b = lock(&ctx.boots);
        *b += 1;
        *b
    };
    if let Some(kind) = lock(&ctx.armed).take() {
        ctx.count(kind);
        record(&ctx.shared, JOBS_NODE, "jobs.cut_counted", json!({"kind": kind}), None);
    }
    let mut p = Proc { ctx: ctx.clone(), fs: SimFs::current(), node, boot, db: None, unpersisted: Vec::new(), fresh: 0 };
    p.open().await;
    let db_name = p.db.as_ref().map(|d| d.name().to_string()).unwrap_or_default();
    let rows = p.db.as_ref().and_then(rows_of);
    let detail = json!({"boot": boot, "db": db_name, "rows": rows.as_ref().map(Vec::len)});
    record(&ctx.shared, JOBS_NODE, "node.recovered", detail, Some(Fact::Jobs(JobsFact::Recovered { node: JOBS_NODE.into(), db: db_name, rows })));
    p.check_export("recovery");
    loop {
        match next_command(&ctx.mailbox).await {
            JobCommand::Op(step) => p.op(step).await,
            JobCommand::Final => {
                p.final_round();
                lock(&ctx.mailbox).final_done = true;
            }
        }
    }
}

impl Proc {
    fn owner(&self) -> LockOwner {
        LockOwner { process: JOBS_NODE.into(), boot: self.boot }
    }

    fn now_ms(&self) -> i64 {
        drill_sim::clock::node_unix_ms(self.node)
    }

    fn stamp(&mut self) -> String {
        self.fresh += 1;
        format!("b{}-{}", self.boot, self.fresh)
    }

    fn down(&self) -> bool {
        DiskSim::current().is_down(self.node)
    }

    fn say(&self, kind: &str, detail: serde_json::Value, fact: Option<Fact>) {
        record(&self.ctx.shared, JOBS_NODE, kind, detail, fact);
    }

    /// Opens the active database; a corrupt one or a blocked legacy migration is recovered from
    /// the latest valid snapshot, as the runbook says (Scenarios D, F).
    async fn open(&mut self) {
        for attempt in 1..=OPEN_ATTEMPTS_MAX {
            let name = match active_db(&self.fs) {
                Ok(n) => n,
                Err(e) => {
                    self.say("node.open_failed", json!({"attempt": attempt, "code": e.code(), "message": e.to_string()}), None);
                    madsim::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let e = match JobsDb::open(&self.fs, &name) {
                Ok(db) => {
                    self.db = Some(db);
                    return;
                }
                Err(e) => e,
            };
            self.say("node.open_failed", json!({"attempt": attempt, "db": name, "code": e.code(), "message": e.to_string()}), None);
            let stamp = self.stamp();
            let recovered = match &e {
                JobError::DbCorrupt { .. } => Some(recover_corrupt(&self.fs, EXPORT_DIR, &stamp)),
                JobError::LegacyMigrationBlocked { .. } => Some(recover_legacy(&self.fs, EXPORT_DIR, &stamp)),
                _ => None,
            };
            match recovered {
                Some(Ok(r)) => self.say("jobs.recovered", serde_json::to_value(&r).expect("reports serialize"), None),
                Some(Err(e)) => self.say("jobs.recovery_failed", json!({"code": e.code(), "message": e.to_string()}), None),
                None => {}
            }
            if self.down() {
                return;
            }
            madsim::time::sleep(Duration::from_millis(50 * u64::from(attempt.min(20)))).await;
        }
    }

    async fn op(&mut self, step: JobsStep) {
        if self.db.is_none() {
            self.open().await;
        }
        self.retry_unpersisted();
        let id = step.id;
        match step.op {
            JobOp::Job { run, backends, persist_fault } => self.job(id, run, &backends, persist_fault).await,
            JobOp::Export { crash_after_ops } => self.export(id, crash_after_ops),
            JobOp::PeerSnapshot { divergent } => self.peer_snapshot(id, divergent),
            JobOp::Import { source, policy, crash_after_ops } => self.import(id, source, policy, crash_after_ops),
        }
    }

    /// Ingest, backends with fallback, persist; a failed persist is persisted again from the
    /// robot-mode output (Scenario A).
    async fn job(&mut self, id: u64, run: u32, plans: &[BackendPlan], persist_fault: bool) {
        let Some(db) = self.db.as_ref() else { return };
        let input = JobInput { run_id: format!("run-{run}"), input: format!("media-{run}.wav"), created_ms: self.now_ms() };
        let backends: Vec<SimBackend> = BACKENDS.iter().zip(plans).map(|(id, plan)| SimBackend { id, plan: *plan }).collect();
        let dyns: Vec<&dyn Backend> = backends.iter().map(|b| b as &dyn Backend).collect();
        self.say("op.start", json!({"op": id, "action": "job", "run": input.run_id, "backends": plans}), None);
        if persist_fault {
            // The persist's commit is the job's first sync: it fails once.
            DiskSim::current().arm_io_fault(self.node, IoFault { op: IoOp::Sync, nth: 1, persistent: false });
        }
        let mut robot = RobotLog::new();
        let opts = JobOptions { backend_timeout_ms: BACKEND_TIMEOUT_MS, fallback: true };
        let result = run_job(db, &dyns, &input, &opts, &mut robot).await;
        if self.down() {
            return;
        }
        if persist_fault {
            DiskSim::current().clear_io_faults(self.node);
        }
        let ndjson = robot.to_ndjson();
        if let Err((line, e)) = robot::parse(&ndjson) {
            panic!("robot-mode line {line} of job {} is not valid NDJSON: {e}", input.run_id);
        }
        for line in robot::parse(&ndjson).unwrap_or_default() {
            if let RobotEvent::BackendError { backend, outcome, .. } = line.event {
                let kind = match outcome.as_str() {
                    "signal" => "jobs.backend_crash",
                    "timeout" => "jobs.backend_hang",
                    _ => "jobs.backend_exit",
                };
                self.ctx.count(kind);
                self.say("fault.jobs_backend", json!({"op": id, "backend": backend, "outcome": outcome, "counted_as": kind}), None);
            }
        }
        match result {
            Ok(env) => self.say("op.ok", json!({"op": id, "run": env.run.run_id, "status": env.run.status, "backend": env.run.backend, "events": env.events.len(), "robot_lines": robot.lines().len()}), None),
            Err(JobError::PersistFailed { run_id, cause }) => {
                self.ctx.count("jobs.persist_failed");
                self.say("op.err", json!({"op": id, "run": run_id, "code": "jobs:persistFailed", "cause": cause.code()}), None);
                // Scenario A: the final result envelope, from the robot-mode output.
                match robot::find_envelope(&ndjson, &run_id) {
                    Some(env) => {
                        self.unpersisted.push(env);
                        self.retry_unpersisted();
                    }
                    None => panic!("job {run_id} failed to persist and robot mode has no result envelope"),
                }
            }
            Err(e) => self.say("op.err", json!({"op": id, "code": e.code(), "message": e.to_string()}), None),
        }
    }

    /// Persist-only re-runs of saved envelopes, each with a remediation event.
    fn retry_unpersisted(&mut self) {
        let Some(db) = self.db.as_ref() else { return };
        let mut left = Vec::new();
        for env in std::mem::take(&mut self.unpersisted) {
            let run_id = env.run.run_id.clone();
            match persist_only(db, &env, &run_id, "persist failed; re-run from the robot-mode result envelope") {
                Ok(r) => self.say("jobs.remediated", json!({"run": run_id, "inserted": r.inserted, "remediation_seq": r.remediation_seq}), None),
                Err(e) => {
                    self.say("jobs.remediation_failed", json!({"run": run_id, "code": e.code(), "message": e.to_string()}), None);
                    left.push(env);
                }
            }
        }
        self.unpersisted = left;
    }

    /// Arms a power cut at the `k`-th disk operation from now, counted as `kind` if it fires.
    fn arm(&self, k: Option<u32>, kind: &'static str, id: u64) {
        let Some(k) = k else { return };
        *lock(&self.ctx.armed) = Some(kind);
        DiskSim::current().arm_power_cut(self.node, u64::from(k));
        self.say("fault.power_cut_armed", json!({"op": id, "after_disk_ops": k, "during": kind}), None);
    }

    /// The operation finished with the power on: the armed cut did not fire.
    fn disarm(&self) {
        if lock(&self.ctx.armed).take().is_some() {
            DiskSim::current().disarm_power_cut(self.node);
        }
    }

    fn export(&mut self, id: u64, crash_after_ops: Option<u32>) {
        let Some(db) = self.db.as_ref() else { return };
        self.say("op.start", json!({"op": id, "action": "export"}), None);
        self.arm(crash_after_ops, "jobs.crash_mid_export", id);
        let result = export(&self.fs, db, EXPORT_DIR, &self.owner(), self.now_ms());
        if self.down() {
            return;
        }
        self.disarm();
        let mut robot = RobotLog::new();
        robot.command("export", &result);
        match &result {
            Ok(r) => self.say(
                "op.ok",
                json!({"op": id, "rows": r.manifest.files.iter().map(|f| f.rows).collect::<Vec<_>>(), "archived": r.archived, "broke_lock": r.broke_lock}),
                None,
            ),
            Err(e) => self.say("op.err", json!({"op": id, "code": e.code(), "message": e.to_string()}), None),
        }
        self.check_export("export");
    }

    /// Reads the export folder back for INV-EXPORT.
    fn check_export(&self, after: &str) {
        let Ok(names) = self.fs.list(&format!("{EXPORT_DIR}/")) else { return };
        let mut manifest = None;
        let mut files = Vec::new();
        for name in names {
            let Ok(data) = self.fs.read(&name) else { return };
            let base = name[EXPORT_DIR.len() + 1..].to_string();
            if base == MANIFEST {
                manifest = Some(data);
            } else {
                files.push((base, data));
            }
        }
        let detail = json!({"after": after, "manifest": manifest.is_some(), "files": files.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>()});
        let fact = JobsFact::ExportState { node: JOBS_NODE.into(), dir: EXPORT_DIR.into(), manifest, files };
        self.say("jobs.export_state", detail, Some(Fact::Jobs(fact)));
    }

    /// Writes a peer's snapshot to `inbox/`: the local rows, one more run, and with `divergent`
    /// one stored row changed.
    fn peer_snapshot(&mut self, id: u64, divergent: bool) {
        let Some(db) = self.db.as_ref() else { return };
        let Ok(mut c) = db.contents() else { return };
        let run_id = format!("peer-{}-{id}", self.boot);
        c.runs.push(RunRow {
            run_id: run_id.clone(),
            input: "peer.wav".into(),
            status: "ok".into(),
            backend: Some("peer".into()),
            diagnostics: "[]".into(),
            created_ms: 0,
        });
        c.segments.push(SegmentRow { run_id: run_id.clone(), idx: 0, start_ms: 0, end_ms: 900, text: "from a peer".into() });
        c.events.push(EventRow { run_id: run_id.clone(), seq: 1, kind: "stage.ok".into(), stage: "ingest".into(), backend: None, detail: "{}".into() });
        let changed = if !divergent {
            None
        } else if let Some(s) = c.segments.first_mut().filter(|s| s.run_id != run_id) {
            s.text.push_str(" (edited by a peer)");
            Some(format!("segments {}/{}", s.run_id, s.idx))
        } else {
            c.runs.first_mut().filter(|r| r.run_id != run_id).map(|r| {
                r.input.push_str(".peer");
                format!("runs {}", r.run_id)
            })
        };
        c.runs.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        c.segments.sort_by(|a, b| (&a.run_id, a.idx).cmp(&(&b.run_id, b.idx)));
        c.events.sort_by(|a, b| (&a.run_id, a.seq).cmp(&(&b.run_id, b.seq)));
        let result = write_snapshot(&self.fs, INBOX_DIR, &c, &format!("peer-of-{}", self.owner().label()), self.now_ms());
        match result {
            Ok(()) => self.say("op.ok", json!({"op": id, "action": "peer_snapshot", "divergent": changed}), None),
            Err(e) => self.say("op.err", json!({"op": id, "action": "peer_snapshot", "code": e.code(), "message": e.to_string()}), None),
        }
    }

    fn import(&mut self, id: u64, source: Source, policy: ConflictPolicy, crash_after_ops: Option<u32>) {
        let Some(db) = self.db.as_ref() else { return };
        let Some(before) = rows_of(db) else { return };
        let db_name = db.name().to_string();
        let policy_name = serde_json::to_value(policy).expect("policies serialize").as_str().unwrap_or_default().to_string();
        let fact = JobsFact::ImportStarted { node: JOBS_NODE.into(), db: db_name.clone(), policy: policy_name.clone(), rows: before };
        self.say("op.start", json!({"op": id, "action": "import", "source": source, "policy": policy}), Some(Fact::Jobs(fact)));
        self.arm(crash_after_ops, "jobs.crash_mid_import", id);
        let result = import_jsonl(&self.fs, db, source.dir(), policy);
        if self.down() {
            return;
        }
        self.disarm();
        let rows = rows_of(db);
        let code = result.as_ref().err().map(|e| e.code().to_string());
        let fact = Fact::Jobs(JobsFact::ImportEnded { node: JOBS_NODE.into(), db: db_name, code: code.clone(), rows });
        match &result {
            Ok(r) => {
                let mut detail = serde_json::to_value(r).expect("reports serialize");
                detail["op"] = json!(id);
                self.say("op.ok", detail, Some(fact))
            }
            Err(e) => self.say("op.err", json!({"op": id, "code": e.code(), "message": e.to_string()}), Some(fact)),
        }
        match result {
            Err(JobError::ImportConflict { .. }) => {
                // Scenario C, steps 1 and 2: inspect and classify the conflicts.
                if let Ok(conflicts) = read_conflicts(&self.fs) {
                    let divergent = conflicts.iter().filter(|c| c.class == ConflictClass::Divergent).count();
                    self.say("jobs.conflicts", json!({"op": id, "benign": conflicts.len() - divergent, "divergent": divergent}), None);
                }
            }
            Err(JobError::ChildRowOverwriteUnsupported { .. }) => self.fresh_import(id, source),
            _ => {}
        }
    }

    /// Scenario C §5: stop overwriting in place; import into a fresh database, validate, swap.
    fn fresh_import(&mut self, id: u64, source: Source) {
        let name = format!("jobs-{}.db", self.stamp());
        self.db = None;
        let result = import_fresh(&self.fs, source.dir(), &name);
        match &result {
            Ok(r) => self.say("jobs.fresh_import", json!({"op": id, "db": r.db, "previous": r.previous, "rows": r.rows}), None),
            Err(e) => self.say("jobs.fresh_import_failed", json!({"op": id, "code": e.code(), "message": e.to_string()}), None),
        }
        let active = active_db(&self.fs).unwrap_or_default();
        match JobsDb::open(&self.fs, &active) {
            Ok(db) => self.db = Some(db),
            Err(e) => self.say("node.open_failed", json!({"db": active, "code": e.code(), "message": e.to_string()}), None),
        }
    }

    /// After the heal: the export folder as the run left it, one more export, and an import of it
    /// with `reject`, so both invariants are judged in every run with a jobs node.
    fn final_round(&mut self) {
        self.check_export("final");
        self.retry_unpersisted();
        self.export(0, None);
        self.import(0, Source::Export, ConflictPolicy::Reject, None);
    }
}

/// Writes a snapshot of `c` to `dir` the way an export does: every file published whole, the
/// manifest last.
fn write_snapshot(fs: &dyn FileSystem, dir: &str, c: &Contents, owner: &str, now_ms: i64) -> Result<(), JobError> {
    let mut files = Vec::new();
    for t in Table::ALL {
        let data = c.jsonl(t);
        publish(fs, &format!("{dir}/{}", t.file()), &data)?;
        files.push(ManifestFile { name: t.file().into(), rows: c.count(t), bytes: data.len() as u64, sha256: sha256_hex(&data) });
    }
    let m = Manifest { format_version: 1, schema_version: drill_stack::jobs::db::SCHEMA_VERSION, created_ms: now_ms, owner: owner.into(), files };
    publish(fs, &format!("{dir}/{MANIFEST}"), (serde_json::to_string_pretty(&m).expect("manifests serialize") + "\n").as_bytes())?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The world's side

/// The world's handle on the jobs node.
pub struct JobsWorld {
    pub node: NodeId,
    ctx: Arc<JobsCtx>,
}

impl JobsWorld {
    /// Creates the jobs node; the world gives it a disk right after.
    pub fn create(handle: &madsim::runtime::Handle, shared: &SharedRef) -> JobsWorld {
        let ctx = Arc::new(JobsCtx {
            shared: shared.clone(),
            mailbox: Mutex::new(JobsMailbox::default()),
            counts: Mutex::new(BTreeMap::new()),
            armed: Mutex::new(None),
            boots: Mutex::new(0),
        });
        let c = ctx.clone();
        let node = handle.create_node().name(JOBS_NODE).ip(JOBS_IP).init(move || jobs_main(c.clone())).build();
        record(shared, JOBS_NODE, "node.start", json!({"backends": BACKENDS, "backend_timeout_ms": BACKEND_TIMEOUT_MS}), None);
        JobsWorld { node: node.id(), ctx }
    }

    /// Hands one operation to the jobs process, unless its node is down.
    pub fn apply(&mut self, step: JobsStep, down: bool) {
        if down {
            trace_skip(step.id);
            return;
        }
        lock(&self.ctx.mailbox).push(JobCommand::Op(step));
    }

    /// After the heal: the final round of checks (see `Proc::final_round`), within a bound.
    pub async fn final_round(&self) {
        lock(&self.ctx.mailbox).push(JobCommand::Final);
        let deadline = drill_sim::clock::true_ms() + FINAL_ROUND_MS_MAX;
        while drill_sim::clock::true_ms() < deadline && !lock(&self.ctx.mailbox).final_done {
            madsim::time::sleep(Duration::from_millis(5)).await;
        }
        if !lock(&self.ctx.mailbox).final_done {
            drill_sim::trace::emit(JOBS_NODE, "jobs.final_round_stuck", json!({"waited_ms": FINAL_ROUND_MS_MAX}));
        }
    }

    /// Adds the jobs faults that happened to the run's counts.
    pub fn add_counts(&self, counts: &mut BTreeMap<String, u64>) {
        for (k, n) in lock(&self.ctx.counts).iter() {
            *counts.entry(k.clone()).or_default() += n;
        }
    }
}

fn trace_skip(id: u64) {
    drill_sim::trace::emit(JOBS_NODE, "op.skipped", json!({"op": id, "reason": "the jobs node is down"}));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_swarm_plans_have_jobs_with_every_fault_kind_somewhere() {
        let mut with_jobs = 0;
        let mut kinds = std::collections::BTreeSet::new();
        for seed in 0..100 {
            let p = crate::plan_for(seed, "sync-basic", "swarm").unwrap();
            p.validate().unwrap();
            let Some(j) = &p.jobs else { continue };
            with_jobs += 1;
            for o in &j.ops {
                match &o.op {
                    JobOp::Job { backends, persist_fault, .. } => {
                        kinds.extend(backends.iter().map(|b| format!("{:?}", b.outcome)));
                        if *persist_fault {
                            kinds.insert("persist".into());
                        }
                    }
                    JobOp::Export { crash_after_ops: Some(_) } => {
                        kinds.insert("export-cut".into());
                    }
                    JobOp::Import { crash_after_ops: Some(_), .. } => {
                        kinds.insert("import-cut".into());
                    }
                    _ => {}
                }
            }
        }
        assert!((60..=95).contains(&with_jobs), "{with_jobs} of 100 swarm plans have jobs");
        for k in ["Crash", "Hang", "Exit", "Ok", "persist", "export-cut", "import-cut"] {
            assert!(kinds.contains(k), "no swarm plan has {k}: {kinds:?}");
        }
        assert!(crate::plan_for(1, "sync-basic", "lite").unwrap().jobs.is_none());
    }

    #[test]
    fn a_plan_with_bad_jobs_operations_is_refused() {
        let mut p = (0..50).map(|s| crate::plan_for(s, "sync-basic", "swarm").unwrap()).find(|p| p.jobs.is_some()).unwrap();
        let heal = p.heal_at_ms;
        let j = p.jobs.as_mut().unwrap();
        j.ops.push(JobOpAt { at_ms: heal + 1, op: JobOp::Export { crash_after_ops: None } });
        assert!(p.validate().unwrap_err().contains("after heal_at_ms"));
        let j = p.jobs.as_mut().unwrap();
        j.ops.pop();
        j.ops.push(JobOpAt { at_ms: 0, op: JobOp::Import { source: Source::Inbox, policy: ConflictPolicy::Reject, crash_after_ops: Some(0) } });
        assert!(p.validate().unwrap_err().contains("cuts the power"));
    }
}

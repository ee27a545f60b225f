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
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

use drill_model::jobs::{JobsFact, RowFact};
use drill_model::Fact;
use drill_sim::disk::{DiskSim, IoFault, IoOp};
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
use serde_json::json;

use crate::node::{lock, record, SharedRef};
use crate::plan::jobs::{BackendOutcome, BackendPlan, JobOp, Source, BACKENDS};
use crate::plan::Plan;
use crate::seam::{step_of, Build, Core, Hook, StepBox, Subsystem};
use crate::sim_fs::SimFs;

/// The jobs node.
pub const JOBS_NODE: &str = "jobs";
pub use crate::node::JOBS_IP;
/// Where exports go, and where a peer's snapshot arrives.
pub const EXPORT_DIR: &str = "export";
pub const INBOX_DIR: &str = "inbox";
/// How long a backend may take before it is killed.
pub const BACKEND_TIMEOUT_MS: u64 = 800;
/// How long the world waits for the jobs round after the heal.
const FINAL_ROUND_MS_MAX: u64 = 60_000;
/// How often the process retries opening its database before it gives up.
const OPEN_ATTEMPTS_MAX: u32 = 200;

/// The folder an import reads from.
pub fn source_dir(source: Source) -> &'static str {
    match source {
        Source::Export => EXPORT_DIR,
        Source::Inbox => INBOX_DIR,
    }
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
        let result = import_jsonl(&self.fs, db, source_dir(source), policy);
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
        let result = import_fresh(&self.fs, source_dir(source), &name);
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
    pub fn play(&mut self, step: JobsStep, down: bool) {
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
}

impl JobsWorld {
    /// The jobs node of a plan with jobs.
    pub fn build(b: &mut Build<'_>) -> JobsWorld {
        let world = JobsWorld::create(b.handle, b.shared);
        b.nodes.add(JOBS_NODE, world.node, b.plan.knobs.disk.crash, b.seeds);
        world
    }
}

impl Subsystem for JobsWorld {
    fn steps(&self, plan: &Plan) -> Vec<(u64, StepBox)> {
        steps(plan).into_iter().map(|(t, s)| (t, Box::new(s) as StepBox)).collect()
    }

    fn apply(&mut self, step: StepBox, core: &mut Core<'_>) {
        let down = core.nodes.is_down(JOBS_NODE);
        self.play(step_of(step), down);
    }

    fn final_round<'a>(&'a self, _core: &'a Core<'a>, _converged: bool) -> Hook<'a> {
        Box::pin(JobsWorld::final_round(self))
    }

    /// Adds the jobs faults that happened to the run's counts.
    fn add_counts(&self, counts: &mut BTreeMap<String, u64>) {
        for (k, n) in lock(&self.ctx.counts).iter() {
            *counts.entry(k.clone()).or_default() += n;
        }
    }
}

fn trace_skip(id: u64) {
    drill_sim::trace::emit(JOBS_NODE, "op.skipped", json!({"op": id, "reason": "the jobs node is down"}));
}

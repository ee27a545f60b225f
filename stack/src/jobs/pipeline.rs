//! A job: ingest → backend run → persist (runbook 001 Scenario E and A).
//!
//! - **Ingest** checks the input and that the run is new.
//! - **Backend run** tries each backend in order, each within a timeout. A backend that exits
//!   non-zero, crashes (a signal) or hangs past the timeout (it is killed) gets an error event
//!   naming the backend and the stage, with its command, exit status and stderr; the job falls
//!   back to the next backend if the options allow. When every backend fails, the run becomes a
//!   failed run shell carrying the diagnostics of every attempt.
//! - **Persist** writes the run, its segments and its events in one transaction. The result
//!   envelope is reported in robot mode before persisting, so when persisting fails the operator
//!   can take it from the output and [`persist_only`] it, which links a remediation event to the
//!   original run.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::backend::{Backend, ExitStatus, JobInput};
use super::db::{EventRow, JobsDb, Row, RunRow, SegmentRow};
use super::error::JobError;
use super::robot::{RobotEvent, RobotLog};

/// Stages, as events and robot mode name them.
pub const STAGE_INGEST: &str = "ingest";
pub const STAGE_BACKEND: &str = "backend_run";
pub const STAGE_PERSIST: &str = "persist";

/// How a job runs its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobOptions {
    /// A backend that has not answered within this is killed and counts as failed.
    pub backend_timeout_ms: u64,
    /// Whether a failed backend falls back to the next one.
    pub fallback: bool,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions { backend_timeout_ms: 2_000, fallback: true }
    }
}

/// One backend attempt, as the diagnostics of a run record it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub backend: String,
    pub command: Vec<String>,
    /// `ok`, `exit`, `signal` or `timeout`.
    pub outcome: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stderr: String,
}

/// Everything persist writes for a run: robot mode reports it as the final result envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultEnvelope {
    pub run: RunRow,
    pub segments: Vec<SegmentRow>,
    pub events: Vec<EventRow>,
}

impl ResultEnvelope {
    /// Whether a backend produced the result (rather than a failed run shell).
    pub fn succeeded(&self) -> bool {
        self.run.status == "ok"
    }
}

struct Events {
    run_id: String,
    rows: Vec<EventRow>,
}

impl Events {
    fn push(&mut self, kind: &str, stage: &str, backend: Option<&str>, detail: serde_json::Value) {
        let seq = self.rows.len() as u32 + 1;
        self.rows.push(EventRow {
            run_id: self.run_id.clone(),
            seq,
            kind: kind.into(),
            stage: stage.into(),
            backend: backend.map(String::from),
            detail: detail.to_string(),
        });
    }
}

/// Runs one job through its stages and persists it. `Err(PersistFailed)` means the run has a
/// result (reported in `robot`) that is not in the database.
pub async fn run_job(db: &JobsDb, backends: &[&dyn Backend], input: &JobInput, opts: &JobOptions, robot: &mut RobotLog) -> Result<ResultEnvelope, JobError> {
    let run_id = input.run_id.clone();
    robot.emit(RobotEvent::RunStart { run_id: run_id.clone(), input: input.input.clone() });
    if let Err(e) = ingest(db, input) {
        robot.emit(RobotEvent::Stage { run_id: run_id.clone(), stage: STAGE_INGEST.into(), status: "failed".into() });
        robot.emit(RobotEvent::CommandError { command: "job".into(), code: e.code().into(), message: e.to_string() });
        return Err(e);
    }
    robot.emit(RobotEvent::Stage { run_id: run_id.clone(), stage: STAGE_INGEST.into(), status: "ok".into() });
    let mut events = Events { run_id: run_id.clone(), rows: Vec::new() };
    events.push("stage.ok", STAGE_INGEST, None, json!({"input": input.input}));
    let mut attempts = Vec::new();
    let mut result = None;
    for b in backends {
        if !attempts.is_empty() && !opts.fallback {
            break;
        }
        let attempt = run_backend(*b, input, opts, &mut events, robot).await;
        let ok = attempt.1.is_some();
        attempts.push(attempt.0);
        if let Some(segments) = attempt.1 {
            result = Some((b.id().to_string(), segments));
        }
        if ok {
            break;
        }
    }
    let diagnostics = serde_json::to_string(&attempts).expect("attempts serialize");
    let (status, backend, segments) = match result {
        Some((backend, segments)) => ("ok", Some(backend), segments),
        None => {
            events.push("run.failed", STAGE_BACKEND, None, json!({"attempts": attempts.len()}));
            ("failed", None, Vec::new())
        }
    };
    robot.emit(RobotEvent::Stage { run_id: run_id.clone(), stage: STAGE_BACKEND.into(), status: if status == "ok" { "ok" } else { "failed" }.into() });
    let envelope = ResultEnvelope {
        run: RunRow { run_id: run_id.clone(), input: input.input.clone(), status: status.into(), backend, diagnostics, created_ms: input.created_ms },
        segments: segments
            .into_iter()
            .map(|s| SegmentRow { run_id: run_id.clone(), idx: s.idx, start_ms: s.start_ms, end_ms: s.end_ms, text: s.text })
            .collect(),
        events: events.rows,
    };
    robot.emit(RobotEvent::Result { envelope: envelope.clone() });
    match persist(db, &envelope) {
        Ok(()) => {
            robot.emit(RobotEvent::Stage { run_id: run_id.clone(), stage: STAGE_PERSIST.into(), status: "ok".into() });
            robot.emit(RobotEvent::RunEnd { run_id, status: status.into(), persisted: true });
            Ok(envelope)
        }
        Err(e) => {
            let err = match e {
                JobError::Store(cause) => JobError::PersistFailed { run_id: run_id.clone(), cause },
                JobError::DbCorrupt { detail } => JobError::PersistFailed { run_id: run_id.clone(), cause: crate::error::StoreError::Corrupt { detail } },
                other => other,
            };
            robot.emit(RobotEvent::PersistError { run_id: run_id.clone(), code: err.code().into(), message: err.to_string() });
            robot.emit(RobotEvent::RunEnd { run_id, status: status.into(), persisted: false });
            Err(err)
        }
    }
}

fn ingest(db: &JobsDb, input: &JobInput) -> Result<(), JobError> {
    if input.run_id.is_empty() || input.run_id.contains('/') || input.input.is_empty() {
        return Err(JobError::InvalidInput { detail: format!("run id {:?}, input {:?}", input.run_id, input.input) });
    }
    if db.has_run(&input.run_id)? {
        return Err(JobError::DuplicateRun { run_id: input.run_id.clone() });
    }
    Ok(())
}

/// One backend within the timeout: its attempt record, and its segments when it succeeded.
async fn run_backend(
    b: &dyn Backend,
    input: &JobInput,
    opts: &JobOptions,
    events: &mut Events,
    robot: &mut RobotLog,
) -> (Attempt, Option<Vec<super::backend::Segment>>) {
    let mut attempt = Attempt { backend: b.id().into(), command: b.command(), outcome: "ok".into(), exit_code: None, signal: None, stderr: String::new() };
    // Dropping the future on a timeout kills the backend's process.
    let outcome = madsim::time::timeout(Duration::from_millis(opts.backend_timeout_ms), b.run(input)).await;
    match outcome {
        Ok(Ok(segments)) => {
            events.push("stage.ok", STAGE_BACKEND, Some(b.id()), json!({"segments": segments.len()}));
            return (attempt, Some(segments));
        }
        Ok(Err(exit)) => {
            attempt.stderr = exit.stderr;
            match exit.status {
                ExitStatus::Code(c) => {
                    attempt.outcome = "exit".into();
                    attempt.exit_code = Some(c);
                }
                ExitStatus::Signal(s) => {
                    attempt.outcome = "signal".into();
                    attempt.signal = Some(s);
                }
            }
        }
        Err(_) => {
            attempt.outcome = "timeout".into();
            attempt.stderr = format!("no answer within {} ms: killed", opts.backend_timeout_ms);
        }
    }
    let detail =
        json!({"command": attempt.command, "outcome": attempt.outcome, "exit_code": attempt.exit_code, "signal": attempt.signal, "stderr": attempt.stderr});
    events.push("backend.error", STAGE_BACKEND, Some(b.id()), detail);
    robot.emit(RobotEvent::BackendError {
        run_id: input.run_id.clone(),
        backend: b.id().into(),
        stage: STAGE_BACKEND.into(),
        outcome: attempt.outcome.clone(),
        exit_code: attempt.exit_code,
        signal: attempt.signal,
        stderr: attempt.stderr.clone(),
    });
    (attempt, None)
}

/// Writes the run, its segments and its events in one transaction.
pub fn persist(db: &JobsDb, env: &ResultEnvelope) -> Result<(), JobError> {
    let tx = db.conn().unchecked_transaction()?;
    if env.run.stored(&tx)?.is_some() {
        return Err(JobError::DuplicateRun { run_id: env.run.run_id.clone() });
    }
    insert_envelope(&tx, env)?;
    tx.commit()?;
    Ok(())
}

fn insert_envelope(c: &rusqlite::Connection, env: &ResultEnvelope) -> Result<(), JobError> {
    env.run.insert(c)?;
    for s in &env.segments {
        s.insert(c)?;
    }
    for e in &env.events {
        e.insert(c)?;
    }
    Ok(())
}

/// What a persist-only re-run did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistOnlyReport {
    pub run_id: String,
    /// Whether the run's rows were written now (false: they were already there, identical).
    pub inserted: bool,
    /// The remediation event's sequence number in the original run.
    pub remediation_seq: u32,
}

/// Persists a saved result envelope without running any backend, and records a remediation
/// event linked to `original_run_id` (Scenario A, steps 2 to 4). Idempotent: a second call finds
/// the rows and the remediation already there.
pub fn persist_only(db: &JobsDb, env: &ResultEnvelope, original_run_id: &str, reason: &str) -> Result<PersistOnlyReport, JobError> {
    let tx = db.conn().unchecked_transaction()?;
    let inserted = match env.run.stored(&tx)? {
        None => {
            insert_envelope(&tx, env)?;
            true
        }
        Some(stored) if stored == env.run => {
            for s in &env.segments {
                if s.stored(&tx)?.as_ref() != Some(s) {
                    return Err(JobError::RunConflict { run_id: env.run.run_id.clone() });
                }
            }
            false
        }
        Some(_) => return Err(JobError::RunConflict { run_id: env.run.run_id.clone() }),
    };
    let exists: i64 = tx.query_row("SELECT count(*) FROM runs WHERE run_id = ?1", [original_run_id], |r| r.get(0))?;
    if exists == 0 {
        return Err(JobError::UnknownRun { run_id: original_run_id.into() });
    }
    let detail = json!({"action": "persist_only", "run_id": env.run.run_id, "reason": reason}).to_string();
    let existing: Option<u32> =
        tx.query_row("SELECT seq FROM events WHERE run_id = ?1 AND kind = 'remediation' AND detail = ?2", [original_run_id, &detail], |r| r.get(0)).ok();
    let remediation_seq = match existing {
        Some(seq) => seq,
        None => {
            let seq: u32 = tx.query_row("SELECT coalesce(max(seq), 0) + 1 FROM events WHERE run_id = ?1", [original_run_id], |r| r.get(0))?;
            EventRow { run_id: original_run_id.into(), seq, kind: "remediation".into(), stage: STAGE_PERSIST.into(), backend: None, detail }.insert(&tx)?;
            seq
        }
    };
    tx.commit()?;
    Ok(PersistOnlyReport { run_id: env.run.run_id.clone(), inserted, remediation_seq })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::StdFs;
    use crate::jobs::backend::{Scripted, ScriptedBackend};
    use crate::jobs::robot;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        madsim::runtime::Runtime::new().block_on(f)
    }

    fn backend(id: &str, outcome: Scripted) -> ScriptedBackend {
        ScriptedBackend { id: id.into(), outcome }
    }

    fn input(run_id: &str) -> JobInput {
        JobInput { run_id: run_id.into(), input: format!("audio-{run_id}"), created_ms: 7 }
    }

    #[test]
    fn a_job_falls_back_past_a_crash_an_exit_and_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let fs = StdFs::new(dir.path());
        let db = JobsDb::open(&fs, "jobs.db").unwrap();
        let crash = backend("whisper-gpu", Scripted::Fail(ExitStatus::Signal(11)));
        let exit = backend("whisper-cpu", Scripted::Fail(ExitStatus::Code(2)));
        let hang = backend("remote", Scripted::Hang);
        let ok = backend("tiny", Scripted::Ok { segments: 3 });
        let mut robot = RobotLog::new();
        let opts = JobOptions { backend_timeout_ms: 500, fallback: true };
        let env = block_on(run_job(&db, &[&crash, &exit, &hang, &ok], &input("r1"), &opts, &mut robot)).unwrap();
        assert!(env.succeeded());
        assert_eq!(env.run.backend.as_deref(), Some("tiny"));
        let errors: Vec<&EventRow> = env.events.iter().filter(|e| e.kind == "backend.error").collect();
        assert_eq!(errors.len(), 3);
        for (e, (id, outcome)) in errors.iter().zip([("whisper-gpu", "signal"), ("whisper-cpu", "exit"), ("remote", "timeout")]) {
            assert_eq!(e.backend.as_deref(), Some(id));
            assert_eq!(e.stage, STAGE_BACKEND);
            assert!(e.detail.contains(outcome), "{}", e.detail);
        }
        let c = db.contents().unwrap();
        assert_eq!((c.runs.len(), c.segments.len(), c.events.len()), (1, 3, 5));
        let lines = robot::parse(&robot.to_ndjson()).unwrap();
        assert_eq!(lines.iter().filter(|l| matches!(l.event, RobotEvent::BackendError { .. })).count(), 3);
    }

    #[test]
    fn when_every_backend_fails_a_failed_run_shell_keeps_the_diagnostics() {
        let dir = tempfile::tempdir().unwrap();
        let fs = StdFs::new(dir.path());
        let db = JobsDb::open(&fs, "jobs.db").unwrap();
        let a = backend("a", Scripted::Fail(ExitStatus::Code(1)));
        let b = backend("b", Scripted::Hang);
        let mut robot = RobotLog::new();
        let env = block_on(run_job(&db, &[&a, &b], &input("r1"), &JobOptions { backend_timeout_ms: 100, fallback: true }, &mut robot)).unwrap();
        assert!(!env.succeeded());
        let stored = db.contents().unwrap();
        assert_eq!(stored.runs[0].status, "failed");
        let attempts: Vec<Attempt> = serde_json::from_str(&stored.runs[0].diagnostics).unwrap();
        assert_eq!(attempts.iter().map(|a| a.outcome.as_str()).collect::<Vec<_>>(), ["exit", "timeout"]);
        assert_eq!(attempts[0].command, vec!["a", "--input", "-"]);
        assert!(stored.segments.is_empty());
        assert_eq!(stored.events.last().unwrap().kind, "run.failed");
    }

    #[test]
    fn without_fallback_the_first_failure_ends_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let fs = StdFs::new(dir.path());
        let db = JobsDb::open(&fs, "jobs.db").unwrap();
        let a = backend("a", Scripted::Fail(ExitStatus::Code(1)));
        let b = backend("b", Scripted::Ok { segments: 1 });
        let env = block_on(run_job(&db, &[&a, &b], &input("r1"), &JobOptions { backend_timeout_ms: 100, fallback: false }, &mut RobotLog::new())).unwrap();
        assert!(!env.succeeded());
    }

    #[test]
    fn ingest_refuses_bad_input_and_duplicate_runs() {
        let dir = tempfile::tempdir().unwrap();
        let fs = StdFs::new(dir.path());
        let db = JobsDb::open(&fs, "jobs.db").unwrap();
        let ok = backend("a", Scripted::Ok { segments: 1 });
        let opts = JobOptions::default();
        let e = block_on(run_job(&db, &[&ok], &JobInput { run_id: String::new(), input: "x".into(), created_ms: 0 }, &opts, &mut RobotLog::new())).unwrap_err();
        assert_eq!(e.code(), "jobs:invalidInput");
        block_on(run_job(&db, &[&ok], &input("r1"), &opts, &mut RobotLog::new())).unwrap();
        let e = block_on(run_job(&db, &[&ok], &input("r1"), &opts, &mut RobotLog::new())).unwrap_err();
        assert_eq!(e.code(), "jobs:duplicateRun");
    }

    #[test]
    fn a_failed_persist_is_recovered_from_the_robot_output_with_a_remediation_event() {
        let dir = tempfile::tempdir().unwrap();
        let fs = StdFs::new(dir.path());
        let db = JobsDb::open(&fs, "jobs.db").unwrap();
        // The persist fails: the runs table refuses writes (a stand-in for a disk error).
        db.conn().execute_batch("CREATE TRIGGER no_runs BEFORE INSERT ON runs BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END;").unwrap();
        let ok = backend("a", Scripted::Ok { segments: 2 });
        let mut robot = RobotLog::new();
        let e = block_on(run_job(&db, &[&ok], &input("r1"), &JobOptions::default(), &mut robot)).unwrap_err();
        assert_eq!(e.code(), "jobs:persistFailed");
        assert!(!db.has_run("r1").unwrap(), "the symptom: the run succeeded but is missing from the database");
        db.conn().execute_batch("DROP TRIGGER no_runs").unwrap();
        // Step 1: the final result envelope, from robot-mode output.
        let ndjson = robot.to_ndjson();
        assert!(ndjson.contains("\"event\":\"persist_error\""));
        let envelope = robot::find_envelope(&ndjson, "r1").expect("the envelope is in the output");
        // Steps 2 to 4: persist only, verify rows, the remediation event is linked to the run.
        let report = persist_only(&db, &envelope, "r1", "persist failed: disk I/O error").unwrap();
        assert!(report.inserted);
        let c = db.contents().unwrap();
        assert_eq!((c.runs.len(), c.segments.len()), (1, 2));
        let remediation = c.events.iter().find(|e| e.kind == "remediation").unwrap();
        assert_eq!((remediation.run_id.as_str(), remediation.seq), ("r1", report.remediation_seq));
        assert!(remediation.detail.contains("persist_only"));
        // Again: nothing changes.
        let again = persist_only(&db, &envelope, "r1", "persist failed: disk I/O error").unwrap();
        assert_eq!((again.inserted, again.remediation_seq), (false, report.remediation_seq));
        assert_eq!(db.contents().unwrap(), c);
        // A different envelope under the same id is a conflict; an unknown original run is refused.
        let mut other = envelope.clone();
        other.run.input = "something else".into();
        assert_eq!(persist_only(&db, &other, "r1", "x").unwrap_err().code(), "jobs:runConflict");
        let mut fresh = envelope.clone();
        fresh.run.run_id = "r2".into();
        fresh.segments.clear();
        fresh.events.clear();
        assert_eq!(persist_only(&db, &fresh, "r-unknown", "x").unwrap_err().code(), "jobs:unknownRun");
    }
}

//! Runbook 001 (persistence and sync recovery): Scenarios A to F and the post-recovery
//! validation, each on a jobs node whose files and databases live on its simulated disk.
//!
//! - A, a failed persist: the run's commit fails once on disk; the result envelope is found in
//!   the robot-mode output, persisted without re-running a backend, and linked to the original
//!   run by a remediation event.
//! - B, an export cut mid-write: temp files and the old manifest are left; the stale lock is
//!   recognised, the temp files are archived (never deleted), the export re-run end to end, and
//!   its checksums and row counts validated.
//! - C, an import conflict: `reject` aborts and changes nothing; the conflicts file is inspected
//!   and classified; `overwrite` refuses a divergent child row; a fresh database is imported,
//!   validated, and only then made active.
//! - D, a corrupted database: a backup copy of the damaged file, the latest valid snapshot
//!   replayed into a fresh database, compared with the manifest, and the pointer switched.
//! - E, backends that crash and hang: the error events name the backend and stage, the job
//!   falls back to the next backend, and when all fail a failed run shell with diagnostics is
//!   persisted.
//! - F, a legacy migration blocked: an evidence copy, one reopen, then the snapshot imported with
//!   `reject` into a fresh database, validated, and the pointer switched.
//! - The post-recovery validation: no orphan lock files, counts consistent with the manifest,
//!   robot-mode output valid NDJSON.
//!
//! Checked: each section's own validation, and INV-RECOVERY over the jobs rows (a row is an
//! event here: its table and key, and its canonical JSON).

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use drill_model::EventFact;
use drill_sim::disk::{DiskFaults, DiskSim, IoFault, IoOp};
use drill_stack::fs::{copy, CutFs, FileSystem};
use drill_stack::jobs::backend::{Backend, ExitStatus, JobInput, Scripted, ScriptedBackend};
use drill_stack::jobs::db::{create_legacy_v1, JobsDb};
use drill_stack::jobs::export::{self, export, validate_snapshot, LockInfo, LockOwner};
use drill_stack::jobs::import::{self, active_db, import_fresh, import_jsonl, read_conflicts, validate_against, ConflictClass, ConflictPolicy};
use drill_stack::jobs::pipeline::{persist_only, run_job, JobOptions};
use drill_stack::jobs::recovery::{fresh_name, open_active};
use drill_stack::jobs::robot::{self, RobotLog};
use drill_stack::jobs::JobError;
use madsim::task::NodeId;
use serde_json::json;

use super::harness::Ctx;
use super::Drill;
use crate::jobs_world::{JOBS_IP, JOBS_NODE};
use crate::node::lock;
use crate::sim_fs::SimFs;

const fn jobs(id: &'static str, section: &'static str, title: &'static str, steps: &'static [&'static str], body: super::Body) -> Drill {
    Drill { id, section, title, steps, devices: 1, server_retention: None, param: 0, bugs: super::no_bugs, body }
}

pub const DRILLS: &[Drill] = &[
    jobs(
        "001-A-failed-persist",
        "001 Scenario A",
        "a run whose persist failed: find its result envelope, persist-only, verify rows, remediation event",
        &["locate-result-envelope", "persist-only", "verify-rows", "record-remediation"],
        a_body,
    ),
    jobs(
        "001-B-export-mid-write",
        "001 Scenario B",
        "an export cut mid-write: stale lock, archive temp files, export again, validate checksums and counts",
        &["confirm-lock-stale", "archive-temp-files", "re-run-export", "validate-checksums"],
        b_body,
    ),
    jobs(
        "001-C-import-conflict",
        "001 Scenario C",
        "an import conflict: inspect and classify, reject by default, overwrite refused for child rows, fresh database + import + swap",
        &["inspect-conflicts", "classify", "re-run-with-overwrite", "fresh-db-import", "validate-and-swap"],
        c_body,
    ),
    jobs(
        "001-D-database-corruption",
        "001 Scenario D",
        "a corrupted database: backup copy, replay the latest valid snapshot into a fresh database, compare with the manifest, swap",
        &["backup-copy", "validate-snapshot", "replay-into-fresh-db", "compare-with-manifest"],
        d_body,
    ),
    jobs(
        "001-E-backend-crash-hang",
        "001 Scenario E",
        "backends that crash or hang: error events with backend and stage, fallback, failed run shell",
        &["capture-diagnostics", "emit-error-event", "fallback", "persist-failed-run-shell"],
        e_body,
    ),
    jobs(
        "001-F-legacy-migration-blocked",
        "001 Scenario F",
        "a blocked legacy migration: evidence copy, reopen once, snapshot into a fresh database with reject, validate, swap",
        &["preserve-evidence", "reopen-once", "locate-snapshot", "import-into-fresh-db", "validate-and-swap"],
        f_body,
    ),
    jobs(
        "001-post-recovery-validation",
        "001 Post-Recovery Validation",
        "after an export cut: no orphan lock files, counts consistent, robot mode NDJSON valid",
        &["re-run-export", "check-no-orphan-locks", "check-counts", "check-robot-ndjson"],
        v_body,
    ),
];

fn a_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(scenario_a(cx))
}
fn b_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(scenario_b(cx, false))
}
fn c_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(scenario_c(cx))
}
fn d_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(scenario_d(cx))
}
fn e_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(scenario_e(cx))
}
fn f_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(scenario_f(cx))
}
fn v_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(scenario_b(cx, true))
}

/// The jobs node of a drill: its id and the operator's view of its files.
struct Jobs {
    node: NodeId,
    fs: SimFs,
    robot: RobotLog,
}

fn me(boot: u64) -> LockOwner {
    LockOwner { process: JOBS_NODE.into(), boot }
}

fn ok(id: &str, segments: u32) -> ScriptedBackend {
    ScriptedBackend { id: id.into(), outcome: Scripted::Ok { segments } }
}

fn input(run: &str) -> JobInput {
    JobInput { run_id: run.into(), input: format!("audio-{run}"), created_ms: 1 }
}

async fn setup(cx: &mut Ctx) -> Jobs {
    let handle = madsim::runtime::Handle::current();
    let node = handle.create_node().name(JOBS_NODE).ip(JOBS_IP).build();
    lock(&cx.nodes).add(JOBS_NODE, node.id(), DiskFaults::none(), &cx.seeds);
    Jobs { node: node.id(), fs: cx.files(node.id()), robot: RobotLog::new() }
}

/// Opens a database by name on the jobs node (SQLite finds the disk of the task's node).
async fn open(cx: &Ctx, j: &Jobs, name: &str) -> Result<JobsDb, JobError> {
    let name = name.to_string();
    cx.on(j.node, async move { JobsDb::open(&SimFs::current(), &name) }).await
}

async fn open_active_db(cx: &Ctx, j: &Jobs) -> Result<JobsDb, JobError> {
    cx.on(j.node, async move { open_active(&SimFs::current()) }).await
}

/// Runs `runs` healthy jobs into `db`.
async fn fill(j: &mut Jobs, db: &JobsDb, runs: &[String]) {
    let b = ok("tiny", 2);
    for r in runs {
        run_job(db, &[&b as &dyn Backend], &input(r), &JobOptions::default(), &mut j.robot).await.expect("a healthy job persists");
    }
}

fn run_ids(cx: &mut Ctx, prefix: &str) -> Vec<String> {
    let n = rand::Rng::gen_range(&mut cx.rng, 2..=4);
    (1..=n).map(|i| format!("{prefix}{i}")).collect()
}

/// The rows of a jobs database as the model's events: table/key and canonical JSON.
fn rows(db: &JobsDb) -> Vec<EventFact> {
    db.contents()
        .expect("contents")
        .keyed()
        .into_iter()
        .enumerate()
        .map(|(i, (table, key, json))| EventFact {
            seq: i as u64 + 1,
            op_id: format!("{table}/{key}"),
            tenant: "jobs".into(),
            kind: table,
            replica: JOBS_NODE.into(),
            write_id: i as u64 + 1,
            payload: json.clone().into_bytes(),
            stored: json.into_bytes(),
            prev_hash: Vec::new(),
            hash: Vec::new(),
        })
        .collect()
}

async fn scenario_a(cx: &mut Ctx) {
    let mut j = setup(cx).await;
    let db = open(cx, &j, import::DEFAULT_DB).await.expect("open");
    let runs = run_ids(cx, "r");
    fill(&mut j, &db, &runs).await;
    let committed = rows(&db);
    // The persist's commit is the job's first sync on disk: it fails once.
    DiskSim::current().arm_io_fault(j.node, IoFault { op: IoOp::Sync, nth: 1, persistent: false });
    cx.inject("persist_sync_fails", json!({"node": JOBS_NODE}));
    let b = ok("tiny", 3);
    let r = run_job(&db, &[&b as &dyn Backend], &input("lost"), &JobOptions::default(), &mut j.robot).await;
    let code = r.as_ref().err().map(|e| e.code());
    let missing = !db.has_run("lost").unwrap_or(true);
    cx.symptom(code == Some("jobs:persistFailed") && missing, "the run succeeded but is missing from the database", json!({"code": code}));
    let mut env = None;
    if cx.step("locate-result-envelope") {
        env = robot::find_envelope(&j.robot.to_ndjson(), "lost");
        cx.check(env.as_ref().is_some_and(|e| e.succeeded()), "robot mode holds the run's final result envelope", json!({}));
    }
    let mut report = None;
    if cx.step("persist-only") {
        if let Some(e) = &env {
            report = persist_only(&db, e, "lost", "drill 001-A: persist failed").ok();
        }
    }
    if cx.step("verify-rows") {
        let have = db.contents().ok();
        let all = env.as_ref().zip(have.as_ref()).is_some_and(|(e, c)| {
            let keyed = c.keyed();
            keyed.iter().any(|(t, k, _)| t == "runs" && k == "lost")
                && e.segments.iter().all(|s| keyed.iter().any(|(t, k, _)| t == "segments" && k == &format!("lost/{}", s.idx)))
        });
        cx.check(all, "the run, its segments and its events are in the database", json!({}));
    }
    if cx.step("record-remediation") {
        cx.check(
            report.as_ref().is_some_and(|r| r.inserted && r.remediation_seq > 0),
            "a remediation event is linked to the original run",
            json!({"report": format!("{report:?}")}),
        );
    }
    let after = rows(&db);
    cx.recovery("jobs", &committed, &after, &BTreeSet::new());
}

fn temps(fs: &SimFs) -> Vec<String> {
    fs.list("export/").unwrap_or_default().into_iter().filter(|n| n.ends_with(".tmp")).collect()
}

/// Scenario B (and, with `validation`, the post-recovery validation after it).
async fn scenario_b(cx: &mut Ctx, validation: bool) {
    let mut j = setup(cx).await;
    let db = open(cx, &j, import::DEFAULT_DB).await.expect("open");
    let runs = run_ids(cx, "r");
    fill(&mut j, &db, &runs).await;
    let r = export(&j.fs, &db, "export", &me(1), 1_000);
    j.robot.command("export", &r);
    let more = run_ids(cx, "s");
    fill(&mut j, &db, &more).await;
    let committed = rows(&db);
    // The export dies at a call the seed picks, once it has written a temp file: each try is
    // a new boot of the exporter (the earlier one is gone), cut one call later than the last.
    let mut cut_at = rand::Rng::gen_range(&mut cx.rng, 4..=12);
    let mut boot = 1;
    let mut left = Vec::new();
    for _ in 0..32 {
        boot += 1;
        let cut = CutFs::new(&j.fs, cut_at);
        let r = export(&cut, &db, "export", &me(boot), 2_000);
        j.robot.command("export", &r);
        left = temps(&j.fs);
        if r.is_err() && !left.is_empty() {
            break;
        }
        cut_at += 1;
    }
    let restarted = me(boot + 1);
    cx.inject("export_cut_mid_write", json!({"node": JOBS_NODE, "after_calls": cut_at}));
    let stale_manifest = validate_snapshot(&j.fs, "export").map(|s| s.manifest.files.iter().map(|f| f.rows).collect::<Vec<_>>()).ok();
    let counts = db.counts().expect("counts");
    let incomplete = stale_manifest.as_ref() != Some(&counts.to_vec());
    cx.symptom(
        !left.is_empty() && incomplete,
        "*.jsonl.tmp files exist and the manifest is incomplete",
        json!({"temps": left, "manifest_rows": stale_manifest, "db_rows": counts}),
    );
    // The exporter restarts as boot 3.
    let now = 3_000;
    if !validation {
        if cx.step("confirm-lock-stale") {
            let found = j.fs.read("export/sync.lock").ok().and_then(|b| serde_json::from_slice::<LockInfo>(&b).ok());
            let stale = export::lock_is_stale(found.as_ref(), &restarted, now);
            cx.check(stale, "the lock left behind belongs to a boot that is gone", json!({"lock": found.map(|l| l.owner.label())}));
        }
        if cx.step("archive-temp-files") {
            let lock = export::acquire_lock(&j.fs, "export", &restarted, now);
            let archived = export::archive_stale_temps(&j.fs, "export", "t3").unwrap_or_default();
            if let Ok(l) = lock {
                let _ = l.release(&j.fs);
            }
            let kept = archived.iter().all(|a| j.fs.exists(a).unwrap_or(false));
            cx.check(archived.len() == left.len() && kept, "every temp file is archived, none deleted", json!({"archived": archived}));
        }
    }
    if cx.step("re-run-export") {
        let r = export(&j.fs, &db, "export", &restarted, now);
        j.robot.command("export", &r);
    }
    if !validation {
        if cx.step("validate-checksums") {
            let snap = validate_snapshot(&j.fs, "export");
            let rows_ok = snap.as_ref().is_ok_and(|s| s.manifest.files.iter().map(|f| f.rows).collect::<Vec<_>>() == counts.to_vec());
            cx.check(rows_ok, "the manifest's checksums and row counts match the database", json!({"error": snap.err().map(|e| e.to_string())}));
        }
    } else {
        if cx.step("check-no-orphan-locks") {
            let orphans: Vec<String> = j.fs.list("").unwrap_or_default().into_iter().filter(|n| n.ends_with(export::LOCK)).collect();
            cx.check(orphans.is_empty(), "no orphan lock files", json!({"locks": orphans}));
        }
        if cx.step("check-counts") {
            let snap = validate_snapshot(&j.fs, "export");
            let manifest = snap.as_ref().map(|s| s.manifest.files.iter().map(|f| f.rows).collect::<Vec<_>>()).ok();
            let events_per_run =
                db.contents().map(|c| c.count(drill_stack::jobs::db::Table::Events) >= c.count(drill_stack::jobs::db::Table::Runs)).unwrap_or(false);
            cx.check(
                manifest.as_ref() == Some(&counts.to_vec()) && events_per_run,
                "run and event counts are consistent with the manifest",
                json!({"manifest": manifest, "db": counts}),
            );
        }
        if cx.step("check-robot-ndjson") {
            let text = j.robot.to_ndjson();
            let parsed = robot::parse(&text);
            cx.check(parsed.is_ok(), "robot mode output is valid NDJSON", json!({"lines": text.lines().count(), "error": parsed.err()}));
        }
    }
    let after = rows(&db);
    cx.recovery("jobs", &committed, &after, &BTreeSet::new());
}

async fn scenario_c(cx: &mut Ctx) {
    let mut j = setup(cx).await;
    let source = open(cx, &j, "source.db").await.expect("open");
    let runs = run_ids(cx, "r");
    fill(&mut j, &source, &runs).await;
    export(&j.fs, &source, "export", &me(1), 1_000).expect("export");
    let committed = rows(&source);
    let target = open(cx, &j, import::DEFAULT_DB).await.expect("open");
    fill(&mut j, &target, &runs[..1]).await;
    // A divergent child row: the user corrected a segment of the target's copy.
    target.edit_segment(&runs[0], 1, "edited locally").expect("the segment is edited");
    let before = target.contents().expect("contents");
    cx.inject("divergent_target_row", json!({"run": runs[0]}));
    let r = import_jsonl(&j.fs, &target, "export", ConflictPolicy::Reject);
    let code = r.as_ref().err().map(|e| e.code());
    let unchanged = target.contents().ok().as_ref() == Some(&before);
    cx.symptom(code == Some("jobs:importConflict") && unchanged, "duplicate key mismatch, import aborted, nothing changed", json!({"code": code}));
    let mut conflicts = Vec::new();
    if cx.step("inspect-conflicts") {
        conflicts = read_conflicts(&j.fs).unwrap_or_default();
        cx.check(!conflicts.is_empty(), "sync_conflicts.jsonl lists the conflicts", json!({"conflicts": conflicts.len()}));
    }
    if cx.step("classify") {
        let divergent: Vec<String> = conflicts.iter().filter(|c| c.class == ConflictClass::Divergent).map(|c| format!("{}/{}", c.table, c.key)).collect();
        let benign = conflicts.iter().filter(|c| c.class == ConflictClass::BenignDuplicate).count();
        cx.check(
            divergent == [format!("segments/{}/1", runs[0])],
            "exactly the edited row is divergent, the rest benign",
            json!({"divergent": divergent, "benign": benign}),
        );
    }
    if cx.step("re-run-with-overwrite") {
        // The operator's intent is to overwrite, but a child row cannot be: stop there.
        let r = import_jsonl(&j.fs, &target, "export", ConflictPolicy::Overwrite);
        let code = r.as_ref().err().map(|e| e.code());
        cx.check(
            code == Some("jobs:childRowOverwriteUnsupported") && target.contents().ok().as_ref() == Some(&before),
            "overwrite of a child row is refused and changes nothing",
            json!({"code": code}),
        );
    }
    drop(target);
    let fresh_db = fresh_name("c1");
    if cx.step("fresh-db-import") {
        let (dir, name) = ("export".to_string(), fresh_db.clone());
        let r = cx.on(j.node, async move { import_fresh(&SimFs::current(), &dir, &name) }).await;
        cx.check(r.is_ok(), "the snapshot imports into a fresh database", json!({"error": r.err().map(|e| e.to_string())}));
    }
    if cx.step("validate-and-swap") {
        let active = active_db(&j.fs).unwrap_or_default();
        let db = open_active_db(cx, &j).await;
        let snap = validate_snapshot(&j.fs, "export");
        let valid = match (&db, &snap) {
            (Ok(db), Ok(s)) => validate_against(db, s).is_ok(),
            _ => false,
        };
        cx.check(active == fresh_db && valid, "the pointer names the validated fresh database", json!({"active": active}));
    }
    let after = open_active_db(cx, &j).await.map(|db| rows(&db)).unwrap_or_default();
    cx.recovery("jobs", &committed, &after, &BTreeSet::new());
}

async fn scenario_d(cx: &mut Ctx) {
    let mut j = setup(cx).await;
    let db = open(cx, &j, import::DEFAULT_DB).await.expect("open");
    let runs = run_ids(cx, "r");
    fill(&mut j, &db, &runs).await;
    export(&j.fs, &db, "export", &me(1), 1_000).expect("export");
    let committed = rows(&db);
    // Closed on its own node, so that its log is checkpointed and removed there.
    cx.on(j.node, async move { drop(db) }).await;
    let mut bytes = j.fs.read(import::DEFAULT_DB).expect("the database file");
    bytes[..100].fill(0x5a);
    j.fs.write_all(import::DEFAULT_DB, &bytes).expect("write");
    j.fs.sync(import::DEFAULT_DB).expect("sync");
    cx.inject("database_file_damaged", json!({"file": import::DEFAULT_DB}));
    let e = open_active_db(cx, &j).await.err().map(|e| e.code());
    cx.symptom(e == Some("jobs:dbCorrupt"), "opening the database fails", json!({"code": e}));
    if cx.step("backup-copy") {
        let r = copy(&j.fs, import::DEFAULT_DB, "backup/jobs.db.d1.backup");
        let same = j.fs.read("backup/jobs.db.d1.backup").ok().as_ref() == Some(&bytes);
        cx.check(r.is_ok() && same, "a timestamped backup copy of the damaged file", json!({}));
    }
    let mut snapshot = None;
    if cx.step("validate-snapshot") {
        snapshot = validate_snapshot(&j.fs, "export").ok();
        cx.check(snapshot.is_some(), "the latest JSONL snapshot is valid", json!({}));
    }
    if cx.step("replay-into-fresh-db") {
        let r = cx.on(j.node, async move { import_fresh(&SimFs::current(), "export", &fresh_name("d1")) }).await;
        cx.check(
            r.is_ok(),
            "the snapshot replays into a fresh database and the pointer switches after validation",
            json!({"error": r.err().map(|e| e.to_string())}),
        );
    }
    let active = open_active_db(cx, &j).await;
    if cx.step("compare-with-manifest") {
        let ok = match (&active, &snapshot) {
            (Ok(db), Some(s)) => validate_against(db, s).is_ok(),
            _ => false,
        };
        cx.check(ok, "row counts and checksums match the manifest", json!({"error": active.as_ref().err().map(|e| e.to_string())}));
    }
    let after = active.map(|db| rows(&db)).unwrap_or_default();
    cx.recovery("jobs", &committed, &after, &BTreeSet::new());
}

async fn scenario_e(cx: &mut Ctx) {
    let mut j = setup(cx).await;
    let db = open(cx, &j, import::DEFAULT_DB).await.expect("open");
    let runs = run_ids(cx, "r");
    fill(&mut j, &db, &runs).await;
    let committed = rows(&db);
    let crash = ScriptedBackend { id: "whisper-gpu".into(), outcome: Scripted::Fail(ExitStatus::Signal(9)) };
    let hang = ScriptedBackend { id: "whisper-cpu".into(), outcome: Scripted::Hang };
    let exit = ScriptedBackend { id: "whisper-cpu".into(), outcome: Scripted::Fail(ExitStatus::Code(3)) };
    let tiny = ok("tiny", 2);
    let opts = JobOptions { backend_timeout_ms: 800, fallback: !cx.wrong("fallback") };
    cx.inject("backend_crash_and_hang", json!({"backends": ["whisper-gpu: signal 9", "whisper-cpu: hangs"]}));
    let started = drill_sim::clock::now();
    let one = run_job(&db, &[&crash as &dyn Backend, &hang, &tiny], &input("e1"), &opts, &mut j.robot).await;
    let waited = started.elapsed() >= Duration::from_millis(800);
    let ndjson = j.robot.to_ndjson();
    let saw = ndjson.contains("whisper-gpu") && ndjson.contains("whisper-cpu") && waited;
    cx.symptom(saw, "a backend times out and another exits on a signal", json!({"waited_ms": started.elapsed().as_millis() as u64}));
    let env = one.as_ref().ok().cloned();
    if cx.step("capture-diagnostics") {
        let detail = env.as_ref().map(|e| e.events.iter().map(|ev| ev.detail.clone()).collect::<Vec<_>>().join(" ")).unwrap_or_default();
        cx.check(detail.contains("signal") && detail.contains("timeout"), "command, exit status and stderr of each attempt are captured", json!({}));
    }
    if cx.step("emit-error-event") {
        let named = env
            .as_ref()
            .is_some_and(|e| e.events.iter().any(|ev| ev.backend.as_deref() == Some("whisper-gpu") && ev.stage == drill_stack::jobs::pipeline::STAGE_BACKEND));
        cx.check(named, "an error event names the backend and its stage", json!({}));
    }
    if cx.step("fallback") {
        let fell_back = env.as_ref().is_some_and(|e| e.succeeded()) && db.has_run("e1").unwrap_or(false);
        cx.check(fell_back, "the job fell back to the next backend and persisted its result", json!({"error": one.as_ref().err().map(|e| e.to_string())}));
    }
    if cx.step("persist-failed-run-shell") {
        let r = run_job(&db, &[&crash as &dyn Backend, &exit], &input("e2"), &opts, &mut j.robot).await;
        let shell = r.as_ref().ok().is_some_and(|e| !e.succeeded()) && db.has_run("e2").unwrap_or(false);
        cx.check(
            shell,
            "when every backend fails, a failed run shell with diagnostics is persisted",
            json!({"result": format!("{:?}", r.as_ref().map(|e| e.run.status.clone()).map_err(|e| e.code()))}),
        );
    }
    let after = rows(&db);
    cx.recovery("jobs", &committed, &after, &BTreeSet::new());
}

async fn scenario_f(cx: &mut Ctx) {
    let mut j = setup(cx).await;
    let snap = open(cx, &j, "snap.db").await.expect("open");
    let runs = run_ids(cx, "r");
    fill(&mut j, &snap, &runs).await;
    export(&j.fs, &snap, "export", &me(1), 1_000).expect("export");
    let committed = rows(&snap);
    drop(snap);
    let first = runs[0].clone();
    let made = cx
        .on(j.node, async move {
            let input = format!("audio-{first}");
            create_legacy_v1(
                &SimFs::current(),
                import::DEFAULT_DB,
                &[(first.as_str(), input.as_str())],
                &[(first.as_str(), 0, "a"), ("ghost", 0, "orphan")],
                &[],
            )
        })
        .await;
    cx.inject("legacy_database_unmigratable", json!({"created": made.is_ok()}));
    let e = open_active_db(cx, &j).await.err().map(|e| e.code());
    cx.symptom(e == Some("jobs:legacyMigrationBlocked"), "open fails with a safe-legacy-migration error", json!({"code": e}));
    let original = j.fs.read(import::DEFAULT_DB).unwrap_or_default();
    if cx.step("preserve-evidence") {
        let r = copy(&j.fs, import::DEFAULT_DB, "backup/jobs.db.f1.evidence");
        let same = j.fs.read("backup/jobs.db.f1.evidence").ok().as_ref() == Some(&original);
        cx.check(r.is_ok() && same, "the original database is preserved as an evidence copy", json!({}));
    }
    if cx.step("reopen-once") {
        let again = open_active_db(cx, &j).await.err().map(|e| e.code());
        cx.check(again == Some("jobs:legacyMigrationBlocked"), "one more reopen does not finish the migration", json!({"code": again}));
    }
    let mut snapshot = None;
    if cx.step("locate-snapshot") {
        snapshot = validate_snapshot(&j.fs, "export").ok();
        cx.check(snapshot.is_some(), "the latest valid snapshot is found", json!({}));
    }
    if cx.step("import-into-fresh-db") {
        let r = cx.on(j.node, async move { import_fresh(&SimFs::current(), "export", &fresh_name("f1")) }).await;
        cx.check(r.is_ok(), "the snapshot imports with reject into a fresh database", json!({"error": r.err().map(|e| e.to_string())}));
    }
    let active = open_active_db(cx, &j).await;
    if cx.step("validate-and-swap") {
        let ok = match (&active, &snapshot) {
            (Ok(db), Some(s)) => validate_against(db, s).is_ok() && db.has_run(&runs[0]).unwrap_or(false),
            _ => false,
        };
        cx.check(ok, "counts, checksums and a run query hold on the new active database", json!({"error": active.as_ref().err().map(|e| e.to_string())}));
    }
    let after = active.map(|db| rows(&db)).unwrap_or_default();
    cx.recovery("jobs", &committed, &after, &BTreeSet::new());
}

//! The runbook's scenarios end to end on the real file system, outside the simulation.

use super::backend::{JobInput, Scripted, ScriptedBackend};
use super::db::{create_legacy_v1, JobsDb};
use super::export::{self, export, validate_snapshot, LockOwner, MANIFEST};
use super::import::{self, active_db, import_fresh, import_jsonl, read_conflicts, ConflictClass, ConflictPolicy};
use super::pipeline::{run_job, JobOptions};
use super::recovery::{open_active, recover_corrupt, recover_legacy};
use super::robot::{self, RobotLog};
use crate::fs::{CutFs, FileSystem, StdFs};

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    madsim::runtime::Runtime::new().block_on(f)
}

fn me(boot: u64) -> LockOwner {
    LockOwner { process: "jobs".into(), boot }
}

/// A database with `n` successful runs of 2 segments each.
fn with_runs(fs: &dyn FileSystem, db: &str, ids: &[&str]) -> JobsDb {
    let db = JobsDb::open(fs, db).unwrap();
    let ok = ScriptedBackend { id: "tiny".into(), outcome: Scripted::Ok { segments: 2 } };
    for id in ids {
        let input = JobInput { run_id: id.to_string(), input: format!("audio-{id}"), created_ms: 1 };
        block_on(run_job(&db, &[&ok], &input, &JobOptions::default(), &mut RobotLog::new())).unwrap();
    }
    db
}

#[test]
fn an_export_writes_every_table_and_a_manifest_that_validates() {
    let dir = tempfile::tempdir().unwrap();
    let fs = StdFs::new(dir.path());
    let db = with_runs(&fs, "jobs.db", &["r1", "r2"]);
    let report = export(&fs, &db, "export", &me(1), 100).unwrap();
    assert_eq!(report.manifest.files.iter().map(|f| f.rows).collect::<Vec<_>>(), [2, 4, 4]);
    let snapshot = validate_snapshot(&fs, "export").unwrap();
    assert_eq!(snapshot.manifest, report.manifest);
    assert_eq!(fs.list("export/").unwrap(), ["export/events.jsonl", "export/manifest.json", "export/runs.jsonl", "export/segments.jsonl"]);
    // A file changed behind the manifest's back is caught.
    fs.append("export/segments.jsonl", b"{}\n").unwrap();
    assert_eq!(validate_snapshot(&fs, "export").unwrap_err().code(), "jobs:manifestMismatch");
}

#[test]
fn an_export_cut_at_every_call_leaves_no_bad_manifest_and_the_next_export_recovers() {
    let mut cuts = 0;
    for budget in 0..200 {
        let dir = tempfile::tempdir().unwrap();
        let fs = StdFs::new(dir.path());
        let db = with_runs(&fs, "jobs.db", &["r1", "r2"]);
        export(&fs, &db, "export", &me(1), 100).unwrap();
        let db = with_runs(&fs, "jobs.db", &["r3"]);
        drop(db);
        let db = JobsDb::open(&fs, "jobs.db").unwrap();
        let cut = CutFs::new(&fs, budget);
        if export(&cut, &db, "export", &me(2), 200).is_ok() {
            assert!(cuts > 5, "the export takes more calls than that");
            break;
        }
        cuts += 1;
        // What the cut left: a manifest that exists matches its files.
        if fs.exists("export/manifest.json").unwrap() {
            validate_snapshot(&fs, "export").unwrap();
        }
        let temps = fs.list("export/").unwrap().into_iter().filter(|n| n.ends_with(".tmp")).count();
        // Scenario B: the restarted process breaks its earlier boot's lock, archives the temp
        // files (never deletes them), exports again end to end, and the checksums validate.
        let report = export(&fs, &db, "export", &me(3), 300).unwrap();
        assert_eq!(report.archived.len(), temps, "budget {budget}");
        assert!(report.archived.iter().all(|a| a.starts_with("archive/") && fs.exists(a).unwrap()));
        assert_eq!(validate_snapshot(&fs, "export").unwrap().manifest.files[0].rows, 3);
        assert!(!fs.exists("export/sync.lock").unwrap(), "no orphan lock file");
    }
    assert!(cuts > 10);
}

#[test]
fn a_live_lock_is_respected_and_a_stale_one_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    let fs = StdFs::new(dir.path());
    let db = with_runs(&fs, "jobs.db", &["r1"]);
    let other = LockOwner { process: "other-host".into(), boot: 1 };
    let held = export::acquire_lock(&fs, "export", &other, 1_000).unwrap();
    let e = export(&fs, &db, "export", &me(1), 2_000).unwrap_err();
    assert_eq!(e.code(), "jobs:locked");
    assert!(e.to_string().contains("other-host@boot-1"));
    assert!(!fs.exists("export/manifest.json").unwrap());
    // Past the stale age the same lock may be broken.
    let report = export(&fs, &db, "export", &me(1), 1_000 + export::LOCK_STALE_AFTER_MS + 1).unwrap();
    assert_eq!(report.broke_lock.as_deref(), Some("other-host@boot-1"));
    drop(held);
    // A torn lock file is stale too.
    fs.write_all("export/sync.lock", b"{\"owner\":{\"proc").unwrap();
    let report = export(&fs, &db, "export", &me(1), 5_000).unwrap();
    assert_eq!(report.broke_lock.as_deref(), Some("an unreadable lock"));
}

#[test]
fn import_with_reject_classifies_conflicts_and_changes_nothing_on_divergence() {
    let dir = tempfile::tempdir().unwrap();
    let fs = StdFs::new(dir.path());
    let source = with_runs(&fs, "source.db", &["r1", "r2"]);
    export(&fs, &source, "export", &me(1), 100).unwrap();
    // The target already holds r1 exactly (benign) and r2 with different segments (divergent).
    let target = JobsDb::open(&fs, "target.db").unwrap();
    let r1 = source.contents().unwrap();
    import_jsonl(&fs, &target, "export", ConflictPolicy::Reject).unwrap();
    assert_eq!(target.contents().unwrap(), r1, "into an empty database everything is inserted");
    target.conn().execute("UPDATE segments SET text = 'edited locally' WHERE run_id = 'r2' AND idx = 1", []).unwrap();
    let before = target.contents().unwrap();
    let e = import_jsonl(&fs, &target, "export", ConflictPolicy::Reject).unwrap_err();
    assert_eq!(e.code(), "jobs:importConflict");
    assert_eq!(target.contents().unwrap(), before, "reject never changes an existing row");
    let conflicts = read_conflicts(&fs).unwrap();
    let divergent: Vec<_> = conflicts.iter().filter(|c| c.class == ConflictClass::Divergent).collect();
    assert_eq!(divergent.len(), 1);
    assert_eq!((divergent[0].table.as_str(), divergent[0].key.as_str()), ("segments", "r2/1"));
    assert!(conflicts.iter().filter(|c| c.class == ConflictClass::BenignDuplicate).count() == 9);
}

#[test]
fn import_skips_benign_duplicates_and_inserts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let fs = StdFs::new(dir.path());
    let source = with_runs(&fs, "source.db", &["r1", "r2"]);
    export(&fs, &source, "export", &me(1), 100).unwrap();
    let target = with_runs(&fs, "target.db", &["r1"]);
    let report = import_jsonl(&fs, &target, "export", ConflictPolicy::Reject).unwrap();
    assert_eq!((report.inserted, report.benign, report.divergent), (5, 5, 0));
    assert_eq!(target.contents().unwrap(), source.contents().unwrap());
    assert!(read_conflicts(&fs).unwrap().iter().all(|c| c.class == ConflictClass::BenignDuplicate));
}

#[test]
fn overwrite_replaces_runs_refuses_child_rows_and_the_fresh_database_path_swaps_the_pointer() {
    let dir = tempfile::tempdir().unwrap();
    let fs = StdFs::new(dir.path());
    let source = with_runs(&fs, "source.db", &["r1"]);
    export(&fs, &source, "export", &me(1), 100).unwrap();
    let target = with_runs(&fs, import::DEFAULT_DB, &["r1"]);
    // A divergent parent row is overwritten with the operator's intent.
    target.conn().execute("UPDATE runs SET input = 'stale' WHERE run_id = 'r1'", []).unwrap();
    let report = import_jsonl(&fs, &target, "export", ConflictPolicy::Overwrite).unwrap();
    assert_eq!((report.divergent, report.overwritten), (1, 1));
    assert_eq!(target.contents().unwrap(), source.contents().unwrap());
    // A divergent child row is not: stop, and take the fresh database path instead.
    target.conn().execute("UPDATE events SET detail = '{}' WHERE run_id = 'r1' AND seq = 1", []).unwrap();
    let before = target.contents().unwrap();
    let e = import_jsonl(&fs, &target, "export", ConflictPolicy::Overwrite).unwrap_err();
    assert_eq!(e.code(), "jobs:childRowOverwriteUnsupported");
    assert!(e.to_string().contains("child-row UPDATE/DELETE is unsupported"));
    assert_eq!(target.contents().unwrap(), before);
    drop(target);
    assert_eq!(active_db(&fs).unwrap(), import::DEFAULT_DB);
    let fresh = import_fresh(&fs, "export", "jobs-2.db").unwrap();
    assert_eq!((fresh.previous.as_str(), fresh.db.as_str(), fresh.rows), (import::DEFAULT_DB, "jobs-2.db", [1, 2, 2]));
    assert_eq!(active_db(&fs).unwrap(), "jobs-2.db");
    assert_eq!(open_active(&fs).unwrap().contents().unwrap(), source.contents().unwrap());
    assert!(!fs.exists("ACTIVE.tmp").unwrap());
}

#[test]
fn an_import_refuses_a_snapshot_without_a_valid_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let fs = StdFs::new(dir.path());
    let source = with_runs(&fs, "source.db", &["r1"]);
    let target = JobsDb::open(&fs, "target.db").unwrap();
    assert_eq!(import_jsonl(&fs, &target, "export", ConflictPolicy::Reject).unwrap_err().code(), "jobs:manifestMissing");
    export(&fs, &source, "export", &me(1), 100).unwrap();
    let text = fs.read("export/runs.jsonl").unwrap();
    fs.write_all("export/runs.jsonl", &text.iter().map(|&b| if b == b'1' { b'2' } else { b }).collect::<Vec<u8>>()).unwrap();
    assert_eq!(import_jsonl(&fs, &target, "export", ConflictPolicy::Reject).unwrap_err().code(), "jobs:manifestMismatch");
    assert_eq!(target.counts().unwrap(), [0, 0, 0]);
}

#[test]
fn a_corrupt_database_is_rebuilt_from_the_latest_snapshot_and_the_pointer_switched() {
    let dir = tempfile::tempdir().unwrap();
    let fs = StdFs::new(dir.path());
    let db = with_runs(&fs, import::DEFAULT_DB, &["r1", "r2"]);
    export(&fs, &db, "export", &me(1), 100).unwrap();
    let want = db.contents().unwrap();
    drop(db);
    // The symptom: the database cannot be opened.
    let mut bytes = fs.read(import::DEFAULT_DB).unwrap();
    bytes[..100].fill(0x5a);
    fs.write_all(import::DEFAULT_DB, &bytes).unwrap();
    let e = open_active(&fs).err().expect("corrupt");
    assert_eq!(e.code(), "jobs:dbCorrupt", "{e}");
    let r = recover_corrupt(&fs, "export", "t500").unwrap();
    assert_eq!(r.copies, ["backup/jobs.db.t500.backup"]);
    assert_eq!(fs.read("backup/jobs.db.t500.backup").unwrap(), bytes, "the backup is the damaged file as it was");
    assert_eq!(active_db(&fs).unwrap(), "jobs-t500.db");
    assert_eq!(open_active(&fs).unwrap().contents().unwrap(), want);
    // Without a valid snapshot there is nothing to recover from, and the pointer stays.
    fs.remove("export/manifest.json").unwrap();
    assert_eq!(recover_corrupt(&fs, "export", "t600").unwrap_err().code(), "jobs:noValidSnapshot");
    assert_eq!(active_db(&fs).unwrap(), "jobs-t500.db");
}

#[test]
fn a_blocked_legacy_migration_is_recovered_from_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let fs = StdFs::new(dir.path());
    // The latest snapshot, exported before the old build wrote its damaged database.
    let snap = with_runs(&fs, "snap.db", &["r1"]);
    export(&fs, &snap, "export", &me(1), 100).unwrap();
    create_legacy_v1(&fs, import::DEFAULT_DB, &[("r1", "audio-r1")], &[("r1", 0, "a"), ("ghost", 0, "orphan")], &[]).unwrap();
    let e = open_active(&fs).err().expect("blocked");
    assert_eq!(e.code(), "jobs:legacyMigrationBlocked");
    let before = fs.read(import::DEFAULT_DB).unwrap();
    let r = recover_legacy(&fs, "export", "t9").unwrap();
    assert!(!r.reopened);
    assert_eq!(fs.read(&r.copies[0]).unwrap(), before, "the evidence copy is the original");
    assert_eq!(active_db(&fs).unwrap(), "jobs-t9.db");
    assert_eq!(open_active(&fs).unwrap().contents().unwrap(), snap.contents().unwrap());
    // A legacy database that can migrate does so on the reopen, with no rebuild.
    let dir = tempfile::tempdir().unwrap();
    let fs = StdFs::new(dir.path());
    create_legacy_v1(&fs, import::DEFAULT_DB, &[("r1", "audio-r1")], &[("r1", 0, "a")], &[]).unwrap();
    let r = recover_legacy(&fs, "export", "t9").unwrap();
    assert!(r.reopened && r.rebuilt.is_none());
}

#[test]
fn robot_mode_output_of_every_job_command_is_valid_ndjson() {
    let dir = tempfile::tempdir().unwrap();
    let fs = StdFs::new(dir.path());
    let db = JobsDb::open(&fs, "jobs.db").unwrap();
    let mut robot = RobotLog::new();
    let crash = ScriptedBackend { id: "gpu".into(), outcome: Scripted::Fail(super::backend::ExitStatus::Signal(9)) };
    let ok = ScriptedBackend { id: "cpu".into(), outcome: Scripted::Ok { segments: 2 } };
    let input = |id: &str| JobInput { run_id: id.into(), input: "audio \"quoted\"\nnewline".into(), created_ms: 3 };
    block_on(run_job(&db, &[&crash, &ok], &input("r1"), &JobOptions::default(), &mut robot)).unwrap();
    let _ = block_on(run_job(&db, &[&crash, &ok], &input("r1"), &JobOptions::default(), &mut robot));
    let r = export(&fs, &db, "export", &me(1), 10);
    robot.command("export", &r);
    let r = import_jsonl(&fs, &db, "export", ConflictPolicy::Reject);
    robot.command("import", &r);
    let r = import_jsonl(&fs, &db, "nowhere", ConflictPolicy::Reject);
    robot.command("import", &r);
    let text = robot.to_ndjson();
    assert!(text.ends_with('\n'));
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("line {} is not JSON: {e}: {line}", i + 1));
        assert!(v.get("event").and_then(|e| e.as_str()).is_some(), "line {} has no event: {line}", i + 1);
        assert_eq!(v["v"], robot::ROBOT_FORMAT_VERSION);
    }
    let lines = robot::parse(&text).unwrap();
    assert!(lines.len() >= 10);
    assert!(text.contains("\"code\":\"jobs:manifestMissing\""));
    assert!(text.contains("\"code\":\"jobs:duplicateRun\""));
    assert!(robot::find_envelope(&text, "r1").is_some());
    assert!(!fs.exists(&format!("export/{MANIFEST}.tmp")).unwrap());
}

//! The jobs export and import against the simulated disk, crash by crash: the power is cut
//! before every disk operation of an export (and of an import with `reject`), with several
//! seeded crash outcomes each; then the node boots and the model judges what the disk kept.
//!
//! - the stack's export never leaves a manifest that disagrees with its files (INV-EXPORT), and
//!   the next export after the crash recovers: it breaks the stale lock, archives the temp files
//!   and publishes a snapshot that validates;
//! - an export that skips the protocol (writes files in place, no syncs, the manifest without
//!   first removing the old one) is caught by INV-EXPORT: the model and the disk are sharp enough;
//! - an import with `reject` cut at any operation leaves every existing row as it was
//!   (INV-IMPORT-REJECT).

use drill_model::jobs::JobsFact;
use drill_model::{invariants, Checker, Fact};
use drill_scenarios::sim_fs::SimFs;
use drill_sim::disk::{DiskConfig, DiskFaults, DiskSim};
use drill_sim::rng::SeedTree;
use drill_sim::world::{NetConfig, Runtime};
use drill_stack::fs::FileSystem;
use drill_stack::jobs::backend::{JobInput, Scripted, ScriptedBackend};
use drill_stack::jobs::db::{JobsDb, Table};
use drill_stack::jobs::export::{export, sha256_hex, validate_snapshot, LockOwner, Manifest, ManifestFile, MANIFEST};
use drill_stack::jobs::import::{import_jsonl, ConflictPolicy};
use drill_stack::jobs::pipeline::{run_job, JobOptions};
use drill_stack::jobs::robot::RobotLog;

const DIR: &str = "export";

fn faults() -> DiskFaults {
    DiskFaults { crash_keep_probability: 0.4, crash_tear_probability: 0.3, capacity_bytes: None }
}

fn me(boot: u64) -> LockOwner {
    LockOwner { process: "jobs".into(), boot }
}

async fn add_runs(fs: &SimFs, db: &JobsDb, from: u32, to: u32) {
    let ok = ScriptedBackend { id: "tiny".into(), outcome: Scripted::Ok { segments: 2 } };
    for i in from..=to {
        let input = JobInput { run_id: format!("r{i}"), input: format!("audio-{i}"), created_ms: 0 };
        run_job(db, &[&ok], &input, &JobOptions::default(), &mut RobotLog::new()).await.unwrap();
    }
    let _ = fs;
}

/// The export folder as the model sees it.
fn export_state(fs: &SimFs) -> Fact {
    let mut manifest = None;
    let mut files = Vec::new();
    for name in fs.list(&format!("{DIR}/")).unwrap() {
        let data = fs.read(&name).unwrap();
        let base = name[DIR.len() + 1..].to_string();
        if base == MANIFEST {
            manifest = Some(data);
        } else {
            files.push((base, data));
        }
    }
    Fact::Jobs(JobsFact::ExportState { node: "jobs".into(), dir: DIR.into(), manifest, files })
}

/// An export without the protocol: files overwritten in place, nothing synced, the manifest
/// written over the old one.
fn careless_export(fs: &SimFs, db: &JobsDb) {
    let Ok(c) = db.contents() else { return };
    let mut files = Vec::new();
    for t in Table::ALL {
        let data = c.jsonl(t);
        let _ = fs.write_all(&format!("{DIR}/{}", t.file()), &data);
        files.push(ManifestFile { name: t.file().into(), rows: c.count(t), bytes: data.len() as u64, sha256: sha256_hex(&data) });
    }
    let m = Manifest { format_version: 1, schema_version: 2, created_ms: 0, owner: "careless".into(), files };
    let _ = fs.write_all(&format!("{DIR}/{MANIFEST}"), serde_json::to_string(&m).unwrap().as_bytes());
}

/// One trial: an export of 2 runs, 2 more runs, then a second export cut before its `cut`-th disk
/// operation (or a careless one, cut the same way); boot; judge. Returns the model's violations,
/// and whether the cut fired.
fn export_trial(seed: u64, cut: u64, careless: bool) -> (Vec<String>, bool) {
    let seeds = SeedTree::new(seed);
    let rt = Runtime::new(seeds, NetConfig::default(), DiskConfig::default(), std::time::Duration::from_secs(600));
    rt.block_on(async move {
        let disk = DiskSim::current();
        let node = madsim::plugin::node();
        disk.add_node(node, "jobs", faults(), &seeds);
        let fs = SimFs::current();
        let db = JobsDb::open(&fs, "jobs.db").unwrap();
        add_runs(&fs, &db, 1, 2).await;
        export(&fs, &db, DIR, &me(1), 0).unwrap();
        add_runs(&fs, &db, 3, 4).await;
        disk.power_cut_at(node, disk.ops(node) + cut);
        if careless {
            careless_export(&fs, &db);
        } else {
            let _ = export(&fs, &db, DIR, &me(1), 1);
        }
        let fired = disk.is_down(node);
        if !fired {
            disk.crash(node);
        }
        drop(db);
        disk.boot(node);
        let fs = SimFs::current();
        let mut checker = Checker::new();
        checker.observe(export_state(&fs), 1);
        if !careless {
            // Scenario B: the next boot exports again end to end, and the snapshot validates.
            let db = JobsDb::open(&fs, "jobs.db").unwrap();
            let r = export(&fs, &db, DIR, &me(2), 2).unwrap();
            assert!(r.archived.iter().all(|a| fs.exists(a).unwrap()), "seed {seed} cut {cut}");
            let snap = validate_snapshot(&fs, DIR).unwrap();
            assert_eq!(snap.manifest.files[0].rows, db.counts().unwrap()[0], "seed {seed} cut {cut}");
            assert!(!fs.exists(&format!("{DIR}/sync.lock")).unwrap(), "no orphan lock");
            checker.observe(export_state(&fs), 2);
        }
        (checker.violations().iter().map(|v| format!("{}: {}", v.invariant, v.message)).collect(), fired)
    })
}

#[test]
fn an_export_cut_at_any_disk_operation_never_leaves_a_bad_manifest() {
    let mut fired = 0;
    for cut in 1..=200 {
        let mut landed = false;
        for seed in 0..3 {
            let (violations, f) = export_trial(seed * 1_000 + cut, cut, false);
            assert!(violations.is_empty(), "cut before operation {cut}, seed {seed}: {violations:?}");
            fired += u64::from(f);
            landed |= f;
        }
        if !landed {
            break;
        }
    }
    eprintln!("export: {fired} cuts landed inside the export");
    assert!(fired >= 60, "only {fired} cuts landed inside the export");
}

#[test]
fn a_careless_export_is_caught_by_inv_export() {
    let mut caught = 0;
    for cut in 1..=12 {
        for seed in 0..6 {
            let (violations, _) = export_trial(seed * 1_000 + cut, cut, true);
            if violations.iter().any(|v| v.starts_with(invariants::EXPORT)) {
                caught += 1;
            }
        }
    }
    eprintln!("careless export: {caught} of 72 crashes broke its manifest");
    assert!(caught > 0, "no crash of a careless export broke its manifest");
}

#[test]
fn an_import_with_reject_cut_at_any_disk_operation_changes_no_row() {
    let mut fired = 0;
    for cut in 1..=150 {
        let seeds = SeedTree::new(cut);
        let rt = Runtime::new(seeds, NetConfig::default(), DiskConfig::default(), std::time::Duration::from_secs(600));
        let (violations, f) = rt.block_on(async move {
            let disk = DiskSim::current();
            let node = madsim::plugin::node();
            disk.add_node(node, "jobs", faults(), &seeds);
            let fs = SimFs::current();
            // A snapshot of r1..r3 with r2 divergent from the database, which also holds r4.
            let db = JobsDb::open(&fs, "jobs.db").unwrap();
            add_runs(&fs, &db, 1, 3).await;
            export(&fs, &db, DIR, &me(1), 0).unwrap();
            add_runs(&fs, &db, 4, 4).await;
            if cut % 2 == 0 {
                db.conn().execute("UPDATE segments SET text = 'local edit' WHERE run_id = 'r2'", []).unwrap();
            } else {
                db.conn().execute("DELETE FROM events WHERE run_id = 'r3'", []).unwrap();
            }
            let before = db.contents().unwrap().keyed();
            let mut checker = Checker::new();
            checker.observe(Fact::Jobs(JobsFact::ImportStarted { node: "jobs".into(), db: "jobs.db".into(), policy: "reject".into(), rows: before }), 1);
            disk.power_cut_at(node, disk.ops(node) + cut);
            let _ = import_jsonl(&fs, &db, DIR, ConflictPolicy::Reject);
            let fired = disk.is_down(node);
            if !fired {
                disk.crash(node);
            }
            drop(db);
            disk.boot(node);
            let fs = SimFs::current();
            let db = JobsDb::open(&fs, "jobs.db").unwrap();
            let rows = Some(db.contents().unwrap().keyed());
            checker.observe(Fact::Jobs(JobsFact::Recovered { node: "jobs".into(), db: "jobs.db".into(), rows }), 2);
            assert_eq!(checker.checks().get(invariants::IMPORT_REJECT), Some(&1));
            (checker.violations().to_vec(), fired)
        });
        assert!(violations.is_empty(), "cut before operation {cut}: {violations:?}");
        fired += u64::from(f);
        if !f && cut > 20 {
            break;
        }
    }
    eprintln!("import: {fired} cuts landed inside the import");
    assert!(fired >= 10, "only {fired} cuts landed inside the import");
}

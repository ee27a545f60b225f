//! The drills as a user meets them on the command line: `drill list --drills`, `drill run` and
//! `drill sweep` of a drill with its coverage table in `summary.json`, replay of a drill's run
//! folder, and a one-line error with exit code 2 for a drill that does not exist.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const DRILL: &str = env!("CARGO_BIN_EXE_drill");

fn drill(cwd: &Path, args: &[&str]) -> Output {
    Command::new(DRILL).current_dir(cwd).args(args).output().expect("drill starts")
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn list_drills_shows_every_drill_with_its_section_and_steps() {
    let dir = tempfile::tempdir().unwrap();
    let out = drill(dir.path(), &["list", "--drills"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for d in drill_scenarios::drills::registry() {
        let line = text.lines().find(|l| l.trim_start().starts_with(&format!("{} ", d.id))).unwrap_or_else(|| panic!("{} not listed", d.id));
        assert!(line.contains(d.section), "{line}");
    }
    assert!(text.contains("steps: capture-state -> retry-and-compare"));
}

#[test]
fn a_drill_runs_sweeps_and_replays_with_its_coverage() {
    let dir = tempfile::tempdir().unwrap();
    let id = "003-4-pull-cursor-regression";
    let out = drill(dir.path(), &["run", "--scenario", id, "--seed", "4", "--profile", "none", "--out", "run"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let s = read_json(&dir.path().join("run/summary.json"));
    assert_eq!(s["drills"][id], serde_json::json!({"runs": 1, "exercised": 1, "passed": 1}));
    let trace = fs::read_to_string(dir.path().join("run/trace.jsonl")).unwrap();
    assert!(trace.lines().any(|l| l.contains("\"drill.step\"") && l.contains("\"hydrate-last-known-good\"")));
    let out = drill(dir.path(), &["replay", "run"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));

    let out = drill(dir.path(), &["sweep", "--scenario", id, "--seeds", "1..=4", "--profile", "none", "--jobs", "1", "--out", "sweep"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let s = read_json(&dir.path().join("sweep/summary.json"));
    assert_eq!(s["drills"][id], serde_json::json!({"runs": 4, "exercised": 4, "passed": 4}));
}

#[test]
fn an_unknown_drill_is_one_line_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = drill(dir.path(), &["run", "--scenario", "003-9-no-such-drill", "--seed", "1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("003-9-no-such-drill"), "{err}");
    assert!(!dir.path().join("drill-out").exists());
}

//! The farm recipe is real: farm/gate-job.yaml's Indexed Job, run here the way Kubernetes runs
//! it (its shell command once per `JOB_COMPLETION_INDEX` = 0..completions-1, with its
//! environment, `drill` on the PATH and the results volume a folder), then its merge Job, must
//! give the same gate as one unsharded `drill gate` of the same seeds. The seed counts are
//! lowered through the Job's own environment variables so the test stays quick.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

const DRILL: &str = env!("CARGO_BIN_EXE_drill");
const MANIFEST: &str = include_str!("../farm/gate-job.yaml");
const SEEDS: &str = "4";
const DRILL_SEEDS: &str = "1";

/// The `command:` of each Job document of the manifest (a flow sequence, which is JSON), and
/// the first document's `completions`.
fn manifest() -> (u64, Vec<Vec<String>>) {
    let commands: Vec<Vec<String>> = MANIFEST
        .lines()
        .filter_map(|l| l.trim().strip_prefix("command: "))
        .map(|c| serde_json::from_str(c).unwrap_or_else(|e| panic!("command {c}: {e}")))
        .collect();
    let completions = MANIFEST.lines().find_map(|l| l.trim().strip_prefix("completions: ")).expect("completions").parse().unwrap();
    assert!(MANIFEST.contains("completionMode: Indexed") && MANIFEST.contains("image: drill:latest"));
    (completions, commands)
}

/// Runs one container command as Kubernetes would, in `results` for the volume.
fn run_container(command: &[String], index: Option<u64>, bin: &Path, results: &Path) -> i32 {
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..]).current_dir(results).env("PATH", path).env("RESULTS", results).env("DRILL_SEEDS", SEEDS).env("DRILL_DRILL_SEEDS", DRILL_SEEDS);
    if let Some(i) = index {
        cmd.env("JOB_COMPLETION_INDEX", i.to_string());
    }
    let out = cmd.output().unwrap();
    let code = out.status.code().unwrap();
    assert!([0, 1, 3, 4, 5].contains(&code), "{command:?} index {index:?}: {}", String::from_utf8_lossy(&out.stderr));
    code
}

/// The parts of a gate summary that sharding must not change.
fn verdict(g: &Value) -> Value {
    let s = &g["sweep"];
    let drills: Vec<Value> =
        g["drills"].as_array().unwrap().iter().map(|d| serde_json::json!([d["name"], d["counts"], d["exercised_runs"], d["checks"]])).collect();
    let failing: Vec<Value> = s["failing"].as_array().unwrap().iter().map(|f| serde_json::json!([f["seed"], f["outcome"], f["replay"]])).collect();
    serde_json::json!({
        "seeds": s["seeds"], "counts": s["counts"], "faults": s["faults"], "checks": s["checks"], "failing": failing,
        "drills": drills, "sampled": g["determinism"]["sampled"], "checked": g["determinism"]["checked"],
        "invariants": g["invariants"], "shortfalls": g["shortfalls"], "verdict": g["verdict"], "exit_code": g["exit_code"],
    })
}

#[test]
fn the_indexed_job_and_its_merge_give_the_unsharded_gate() {
    let (completions, commands) = manifest();
    assert_eq!(commands.len(), 2, "the shard Job and the merge Job");
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(DRILL, bin.join("drill")).unwrap();
    let results = tmp.path().join("results");
    fs::create_dir(&results).unwrap();
    for index in 0..completions {
        run_container(&commands[0], Some(index), &bin, &results);
        assert!(results.join(format!("gate-{}/summary.json", index + 1)).is_file());
    }
    let merged_code = run_container(&commands[1], None, &bin, &results);

    let args = ["gate", "--seeds", SEEDS, "--drill-seeds", DRILL_SEEDS, "--out", "whole"];
    let out = Command::new(DRILL).current_dir(tmp.path()).args(args).output().unwrap();
    let read = |p: &Path| -> Value { serde_json::from_str(&fs::read_to_string(p).unwrap()).unwrap() };
    let (merged, whole) = (read(&results.join("gate/summary.json")), read(&tmp.path().join("whole/summary.json")));
    assert_eq!(merged["sweep"]["merged_from"].as_array().unwrap().len() as u64, completions);
    assert_eq!(verdict(&merged), verdict(&whole));
    assert_eq!(merged_code, out.status.code().unwrap());
}

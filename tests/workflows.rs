//! The developer's and the release's workflows end to end through the `drill` binary: shrink a
//! failing run, shard a sweep and merge it, gate a release, stream NDJSON, rebuild a timeline.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const DRILL: &str = env!("CARGO_BIN_EXE_drill");

fn drill(cwd: &Path, args: &[&str]) -> Output {
    drill_env(cwd, args, &[])
}

fn drill_env(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(DRILL);
    cmd.current_dir(cwd).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("drill starts")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("drill exits with a code")
}

fn text(out: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn read_json(path: &Path) -> Value {
    let t = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn exit_code_of(outcome: &str) -> i32 {
    match outcome {
        "pass" => 0,
        "violation" => 1,
        "liveness" => 3,
        "nondeterminism" => 4,
        other => panic!("unknown outcome {other}"),
    }
}

/// A run folder whose plan cannot meet its 1 ms liveness bound: a real, deterministic failure
/// of today's correct stack, made from seed 1's plan.
fn failing_run(tmp: &Path) -> PathBuf {
    let seed_dir = tmp.join("seed-1");
    let out = drill(tmp, &["run", "--seed", "1", "--out", seed_dir.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let mut plan = read_json(&seed_dir.join("plan.json"));
    plan["liveness_ms_max"] = Value::from(1);
    let plan_path = tmp.join("failing-plan.json");
    fs::write(&plan_path, serde_json::to_string_pretty(&plan).unwrap()).unwrap();
    let dir = tmp.join("failing");
    let args = ["run", "--plan", plan_path.to_str().unwrap(), "--out", dir.to_str().unwrap()];
    let out = drill(tmp, &args);
    assert!([1, 3].contains(&code(&out)), "{}", text(&out));
    dir
}

fn items(size: &Value) -> u64 {
    size["ops"].as_u64().unwrap() + size["faults"].as_u64().unwrap()
}

#[test]
fn shrink_makes_a_failing_plan_five_times_smaller_and_it_replays() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = failing_run(tmp.path());
    let original = read_json(&dir.join("summary.json"));
    let out = drill(tmp.path(), &["shrink", dir.to_str().unwrap(), "--jobs", "2"]);
    let outcome = original["outcome"].as_str().unwrap();
    assert_eq!(code(&out), exit_code_of(outcome), "{}", text(&out));

    let shrunk = dir.join("shrunk");
    let record = read_json(&shrunk.join("shrink.json"));
    let (before, after) = (items(&record["before"]), items(&record["after"]));
    assert!(before >= 5 * after.max(1), "only {before} -> {after}: {record}");
    assert!(record["after"]["clients"].as_u64() <= record["before"]["clients"].as_u64());
    assert!(record["runs"].as_u64().unwrap() <= 500);

    // The same failure: outcome and first invariant.
    let summary = read_json(&shrunk.join("summary.json"));
    assert_eq!(summary["outcome"], original["outcome"]);
    assert_eq!(summary["violations"][0]["invariant"], original["violations"][0]["invariant"]);
    assert_eq!(summary["fingerprint"], record["fingerprint"]);
    for file in ["plan.json", "trace.jsonl", "report.html"] {
        assert!(shrunk.join(file).is_file(), "missing {file}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("before:") && stdout.contains("after:"), "{stdout}");

    // It replays with the same fingerprint.
    let replay = drill(tmp.path(), &["replay", shrunk.to_str().unwrap()]);
    assert_eq!(code(&replay), exit_code_of(outcome), "{}", text(&replay));
    assert!(String::from_utf8_lossy(&replay.stdout).contains("replay matches"));

    // Shrinking again replaces only its own output.
    let again = drill(tmp.path(), &["shrink", dir.to_str().unwrap(), "--max-runs", "3"]);
    assert_eq!(code(&again), exit_code_of(outcome), "{}", text(&again));
    assert_eq!(read_json(&shrunk.join("shrink.json"))["stopped"], "budget");
}

#[test]
fn shrink_refuses_passing_runs_and_foreign_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pass");
    drill(tmp.path(), &["run", "--seed", "2", "--profile", "none", "--out", dir.to_str().unwrap()]);
    for target in [dir.clone(), tmp.path().join("missing")] {
        let out = drill(tmp.path(), &["shrink", target.to_str().unwrap()]);
        assert_eq!(code(&out), 2, "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
    }
    assert!(!dir.join("shrunk").exists());
}

#[test]
fn four_shards_merged_count_what_the_whole_sweep_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let whole = drill(t, &["sweep", "--seeds", "1..=24", "--jobs", "2", "--out", "whole"]);
    assert_eq!(code(&whole), 0, "{}", text(&whole));
    for i in 1..=4 {
        let shard = format!("{i}/4");
        let out = drill(t, &["sweep", "--seeds", "1..=24", "--shard", &shard, "--jobs", "1", "--out", &format!("part-{i}")]);
        assert_eq!(code(&out), 0, "{}", text(&out));
        let s = read_json(&t.join(format!("part-{i}/summary.json")));
        assert_eq!(s["counts"]["pass"], 6, "shard {shard}");
        assert_eq!(s["shard"]["index"], i);
    }
    let merged = drill(t, &["merge", "part-1", "part-2", "part-3", "part-4", "--out", "merged"]);
    assert_eq!(code(&merged), 0, "{}", text(&merged));
    let (a, b) = (read_json(&t.join("whole/summary.json")), read_json(&t.join("merged/summary.json")));
    for field in ["seeds", "counts", "faults", "checks", "outcome"] {
        assert_eq!(a[field], b[field], "{field} differs");
    }
    assert!(b.get("shard").is_none());
    // A merge of sweeps writes a sweep's reports too.
    for (dir, file) in [("whole", "junit.xml"), ("merged", "junit.xml")] {
        let junit = fs::read_to_string(t.join(dir).join(file)).unwrap();
        assert!(junit.contains("<testsuites name=\"drill sweep\""), "{dir}: {junit}");
    }
    let md = fs::read_to_string(t.join("merged/report.md")).unwrap();
    assert!(md.starts_with("# drill sweep: pass"), "{md}");
    assert!(t.join("merged/report.html").is_file());

    // Overlapping or incomplete parts are refused, and nothing is written.
    for parts in [vec!["part-1", "part-1", "part-2", "part-3", "part-4"], vec!["part-1", "part-2"], vec!["whole", "part-1"]] {
        let mut args = vec!["merge"];
        args.extend(parts.iter());
        args.extend(["--out", "refused"]);
        let out = drill(t, &args);
        assert_eq!(code(&out), 2, "{parts:?}: {}", text(&out));
        assert!(!t.join("refused").exists());
    }
}

#[test]
fn merged_sweep_reports_link_the_failing_seeds_in_their_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    for i in 1..=2 {
        let (shard, dir) = (format!("{i}/2"), format!("part-{i}"));
        let args = ["sweep", "--seeds", "1..=4", "--profile", "none", "--shard", &shard, "--jobs", "1", "--out", &dir];
        let out = drill_env(t, &args, &[("DRILL_TEST_WORKER_FAULT", "panic:2")]);
        assert_eq!(code(&out), if i == 1 { 1 } else { 0 }, "{}", text(&out));
    }
    let out = drill(t, &["merge", "part-1", "part-2", "--out", "merged"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let junit = fs::read_to_string(t.join("merged/junit.xml")).unwrap();
    assert!(junit.contains("<testcase name=\"sync-basic seed 2\""), "{junit}");
    assert_eq!(junit.matches("<failure ").count(), 1, "{junit}");
    let html = fs::read_to_string(t.join("merged/report.html")).unwrap();
    assert!(html.contains("href=\"../part-1/seed-2/report.html\""), "{html}");
    let md = fs::read_to_string(t.join("merged/report.md")).unwrap();
    assert!(md.contains("[2](../part-1/seed-2/report.html)"), "{md}");
}

#[test]
fn a_gate_writes_its_reports_and_streams_ndjson() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let args = ["gate", "--seeds", "10", "--determinism-seeds", "3", "--jobs", "2", "--json", "--out", "gate"];
    let out = drill(t, &args);
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"))).collect();
    assert_eq!(lines[0]["event"], "start", "{}", text(&out));
    assert_eq!(lines[0]["ndjson_version"], 1);
    // One line per run: the sweep's seeds, and every drill of the registry over its seeds under
    // each profile.
    let seeds = |scenario: &str, profile: &str| lines.iter().filter(|l| l["event"] == "seed" && l["scenario"] == scenario && l["profile"] == profile).count();
    assert_eq!(seeds("sync-basic", "swarm"), 10);
    for d in drill_scenarios::drills::registry() {
        assert_eq!((seeds(d.id, "none"), seeds(d.id, "swarm")), (5, 5), "{}", d.id);
    }
    let result = lines.last().unwrap();
    assert_eq!(result["event"], "result");
    let summary = read_json(&t.join("gate/summary.json"));
    assert_eq!(result["summary"], summary);
    assert_eq!(Some(code(&out) as i64), summary["exit_code"].as_i64());
    assert_eq!(summary["kind"], "gate");
    assert_eq!(summary["determinism"]["checked"], 3);
    // Every drill under both profiles, each exercised and passed on at least the 3 seeds needed.
    assert_eq!(summary["drill_seeds_min"], 3);
    let rows = summary["drills"].as_array().unwrap();
    assert_eq!(rows.len(), 2 * drill_scenarios::drills::registry().len());
    for d in drill_scenarios::drills::registry() {
        for profile in ["none", "swarm"] {
            let row = rows.iter().find(|r| r["name"] == d.id && r["profile"] == profile).unwrap_or_else(|| panic!("{} under {profile}", d.id));
            assert!(row["passed_runs"].as_u64().unwrap() >= 3, "{row}");
        }
    }
    let ids: Vec<&str> = summary["invariants"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"INV-DURABLE") && ids.contains(&"LIVE-DRAIN"), "{ids:?}");
    let junit = fs::read_to_string(t.join("gate/junit.xml")).unwrap();
    assert!(junit.starts_with("<?xml") && junit.contains("<testsuites"), "{junit}");
    assert!(junit.contains("004-6.1-database-corruption (swarm)"), "{junit}");
    let md = fs::read_to_string(t.join("gate/report.md")).unwrap();
    assert!(md.starts_with("# drill gate: "), "{md}");
    assert!(md.contains("| 004-6.1-database-corruption | swarm | 1..6 | 5 | 5 | 5 | 0 | exercised and passed |"), "{md}");
    let html = fs::read_to_string(t.join("gate/report.html")).unwrap();
    assert!(html.contains("Drill coverage") && html.contains("Invariant checks"));
}

#[test]
fn a_gate_that_needs_more_drill_seeds_than_it_runs_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = drill(tmp.path(), &["gate", "--seeds", "2", "--drill-seeds", "2", "--drill-min", "3", "--out", "gate"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--drill-min 3 is more than the 2 seeds of --drill-seeds"), "{err}");
    assert!(!tmp.path().join("gate").exists(), "nothing is written for a refused gate");
}

#[test]
fn a_gate_fails_with_the_runs_code_and_keeps_the_failing_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let args = ["gate", "--seeds", "6", "--determinism-seeds", "0", "--jobs", "2", "--out", "gate"];
    let out = drill_env(t, &args, &[("DRILL_TEST_WORKER_FAULT", "panic:4")]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let summary = read_json(&t.join("gate/summary.json"));
    assert_eq!(summary["verdict"], "violation");
    assert_eq!(summary["sweep"]["failing"][0]["seed"], 4);
    assert!(t.join("gate/seed-4").is_dir());
    let junit = fs::read_to_string(t.join("gate/junit.xml")).unwrap();
    assert!(junit.contains("sync-basic seed 4") && junit.contains("<failure"), "{junit}");
    assert!(fs::read_to_string(t.join("gate/report.html")).unwrap().contains("seed-4/report.html"));
}

#[test]
fn a_gate_out_of_time_is_a_coverage_shortfall() {
    let tmp = tempfile::tempdir().unwrap();
    let out = drill(tmp.path(), &["gate", "--seeds", "50", "--time-budget", "1ns", "--out", "gate"]);
    assert_eq!(code(&out), 5, "{}", text(&out));
    let summary = read_json(&tmp.path().join("gate/summary.json"));
    assert_eq!(summary["verdict"], "shortfall");
    assert!(summary["unrun"].as_u64().unwrap() > 0);
    assert!(summary["shortfalls"].to_string().contains("time budget"));
}

#[test]
fn gate_shards_merge_into_one_gate() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    for i in 1..=2 {
        let (shard, dir) = (format!("{i}/2"), format!("gate-{i}"));
        let out = drill(t, &["gate", "--seeds", "8", "--determinism-seeds", "2", "--jobs", "1", "--shard", &shard, "--out", &dir]);
        assert_eq!(code(&out), 0, "{}", text(&out));
        assert_eq!(read_json(&t.join(&dir).join("summary.json"))["coverage_judged"], false);
    }
    let out = drill(t, &["merge", "gate-1", "gate-2", "--out", "gate"]);
    let s = read_json(&t.join("gate/summary.json"));
    // Every run passes; coverage (judged only now) may fall short while the registry has
    // invariants that no registered scenario checks yet.
    assert_eq!(Some(code(&out) as i64), s["exit_code"].as_i64(), "{}", text(&out));
    assert!(["pass", "shortfall"].contains(&s["verdict"].as_str().unwrap()), "{s}");
    for shortfall in s["shortfalls"].as_array().unwrap() {
        assert!(shortfall.as_str().unwrap().starts_with("invariant "), "{shortfall}");
    }
    assert_eq!((s["sweep"]["counts"]["pass"].as_u64(), s["coverage_judged"].as_bool()), (Some(8), Some(true)));
    assert_eq!(s["determinism"]["checked"], 2);
    assert!(t.join("gate/junit.xml").is_file() && t.join("gate/report.html").is_file());
}

#[test]
fn run_json_prints_only_ndjson_and_writes_a_timeline() {
    let tmp = tempfile::tempdir().unwrap();
    let out = drill(tmp.path(), &["run", "--seed", "5", "--json", "--out", "r"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let events: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("NDJSON")).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["start", "result"], "{stdout}");
    let summary = read_json(&tmp.path().join("r/summary.json"));
    assert_eq!(events[1]["summary"], summary);
    assert_eq!(code(&out), exit_code_of(summary["outcome"].as_str().unwrap()));

    let page = tmp.path().join("r/report.html");
    let first = fs::read_to_string(&page).unwrap();
    assert!(first.contains("<svg") && first.contains("id=\"trace\""));
    fs::remove_file(&page).unwrap();
    let out = drill(tmp.path(), &["timeline", "r"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(fs::read_to_string(&page).unwrap(), first, "the rebuilt page is the same");
    let out = drill(tmp.path(), &["timeline", "nowhere"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
}

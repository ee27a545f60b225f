//! drill never loses a user's results: each reproduction of issue #20 as the user met it through
//! the binary, with the exit code and the files it must leave. Every test here failed before the
//! fix it names.

// These tests drive the binary from outside a run and time it on the wall clock.
#![allow(clippy::disallowed_methods)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const DRILL: &str = env!("CARGO_BIN_EXE_drill");

fn drill(cwd: &Path, args: &[&str]) -> Output {
    Command::new(DRILL).current_dir(cwd).args(args).output().expect("drill starts")
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

/// Exit code 2 with exactly one `error:` line that holds `want`.
fn assert_refused(out: &Output, want: &str) {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(code(out), 2, "{}", text(out));
    assert_eq!(err.lines().count(), 1, "{}", text(out));
    assert!(err.starts_with("error: ") && err.contains(want), "wanted {want:?}: {}", text(out));
}

/// Every file under `dir` with its contents.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push((path.clone(), fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

/// A run folder of seed `seed` under profile none, which passes (exit 0 checked).
fn passing_run(tmp: &Path, name: &str, seed: &str) -> PathBuf {
    let dir = tmp.join(name);
    let out = drill(tmp, &["run", "--seed", seed, "--profile", "none", "--out", dir.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(dir.join("report.html").is_file() && dir.join("trace.jsonl").is_file());
    dir
}

/// Reproduction 1: `merge A1 A2 --out A1` replaced shard A1's data. Now refused, A1 untouched;
/// as are an `--out` inside an input and one that is another sweep's folder. A merge's own
/// folder is still replaced by the next merge.
#[test]
fn merge_refuses_an_out_that_is_an_input_or_another_sweeps_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    for (i, name) in [(1, "A1"), (2, "A2")] {
        let shard = format!("{i}/2");
        let out = drill(t, &["sweep", "--seeds", "1..=4", "--profile", "none", "--jobs", "1", "--shard", &shard, "--out", name]);
        assert_eq!(code(&out), 0, "{}", text(&out));
    }
    let other = drill(t, &["sweep", "--seeds", "7..=7", "--profile", "none", "--jobs", "1", "--out", "B"]);
    assert_eq!(code(&other), 0, "{}", text(&other));
    let before: Vec<_> = ["A1", "A2", "B"].iter().map(|d| snapshot(&t.join(d))).collect();
    assert_refused(&drill(t, &["merge", "A1", "A2", "--out", "A1"]), "is the same folder as the merged folder A1");
    assert_refused(&drill(t, &["merge", "A1", "A2", "--out", "./A2/"]), "the merged folder A2");
    assert_refused(&drill(t, &["merge", "A1", "A2", "--out", "A1/merged"]), "inside or around the merged folder A1");
    assert_refused(&drill(t, &["merge", "A1", "A2", "--out", "B"]), "does not hold a previous drill merge");
    assert_refused(&drill(t, &["merge", "A1", "A1", "--out", "M"]), "are the same folder");
    let after: Vec<_> = ["A1", "A2", "B"].iter().map(|d| snapshot(&t.join(d))).collect();
    assert_eq!(before, after, "a refused merge changed a folder");
    assert!(!t.join("M").exists() && !t.join("A1/merged").exists());

    for _ in 0..2 {
        let out = drill(t, &["merge", "A1", "A2", "--out", "M"]);
        assert_eq!(code(&out), 0, "{}", text(&out));
        assert_eq!(read_json(&t.join("M/summary.json"))["merged_from"], serde_json::json!(["A1", "A2"]));
    }
    // A sweep does not replace a merge's folder either: that is someone's combined result.
    assert_refused(&drill(t, &["sweep", "--seeds", "1..=1", "--profile", "none", "--out", "M"]), "does not hold a previous drill sweep");
}

/// Gate shards behaved the same: a gate's `--out` may hold only an earlier gate.
#[test]
fn gate_refuses_an_out_holding_a_sweep() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let out = drill(t, &["sweep", "--seeds", "1..=1", "--profile", "none", "--out", "S"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let before = snapshot(&t.join("S"));
    assert_refused(&drill(t, &["gate", "--seeds", "1", "--drill-seeds", "1", "--out", "S"]), "does not hold a previous drill gate");
    assert_eq!(snapshot(&t.join("S")), before);
}

/// Reproduction 2: `gate --seeds 18446744073709551615` built its whole queue up front and grew
/// until the kernel killed it. Now the queue is made as workers ask: under a 3 GB address-space
/// limit it stops at its time budget and reports the runs it did not start (exit 5).
#[test]
fn gate_streams_its_seeds_within_a_memory_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let script = format!(
        "ulimit -v 3000000 && exec '{DRILL}' gate --seeds 18446744073709551615 --drill-seeds 1 --determinism-seeds 0 --time-budget 1s --jobs 1 --out g"
    );
    let started = Instant::now();
    let out = Command::new("sh").current_dir(tmp.path()).args(["-c", &script]).output().unwrap();
    assert_eq!(code(&out), 5, "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(120), "the gate took {:?}", started.elapsed());
    let s = read_json(&tmp.path().join("g/summary.json"));
    assert!(s["unrun"].as_u64().unwrap() > u64::MAX / 2, "{}", s["unrun"]);
    assert!(s["shortfalls"].to_string().contains("the time budget ran out"), "{}", s["shortfalls"]);
}

/// A determinism sample larger than the documented bound is bad input.
#[test]
fn gate_bounds_its_determinism_sample() {
    let tmp = tempfile::tempdir().unwrap();
    assert_refused(&drill(tmp.path(), &["gate", "--seeds", "1000000000", "--determinism-seeds", "1000000000"]), "--determinism-seeds");
    assert!(!tmp.path().join("drill-out").exists());
}

/// Starts a sweep of `seeds` into `out` in the background and waits until it holds its lock.
fn background_sweep(cwd: &Path, seeds: &str, out: &str) -> Child {
    let child = Command::new(DRILL)
        .current_dir(cwd)
        .args(["sweep", "--seeds", seeds, "--profile", "none", "--jobs", "1", "--out", out])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lock = cwd.join(out).join(".drill-lock");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fs::read_to_string(&lock).is_ok_and(|t| t.contains("pid")) {
        assert!(Instant::now() < deadline, "the sweep never locked {out}");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

/// Runs `cmd`, sends it SIGINT after `after_ms` and checks it stopped honestly: exit 130 and a
/// last line `outcome: interrupted | ...`.
fn interrupted(cmd: &mut Command, after_ms: u64) -> Output {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(after_ms));
    signal(&child, "INT");
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 130, "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).lines().last().unwrap().starts_with("outcome: interrupted | "), "{}", text(&out));
    out
}

/// Reproduction 3: two writers of one folder interleaved their files. Now the second gets exit
/// 2 naming the first. And (doubtful case) SIGINT or SIGTERM stops a sweep honestly: workers
/// ended, summary marked interrupted (text and NDJSON), no scratch folder, exit 130, and a rerun
/// works.
#[test]
fn a_second_writer_is_refused_and_an_interrupted_sweep_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    for sig in ["INT", "TERM"] {
        let first = background_sweep(t, "0..=100000", "sw");
        for args in [
            &["run", "--seed", "1", "--profile", "none", "--out", "sw"][..],
            &["sweep", "--seeds", "0..2", "--profile", "none", "--out", "sw"][..],
            &["timeline", "sw"][..],
        ] {
            let out = drill(t, args);
            if args[0] == "timeline" {
                // sw holds no trace of its own: refused before the lock, still exit 2.
                assert_eq!(code(&out), 2, "{}", text(&out));
                continue;
            }
            assert_refused(&out, "sw is being written by drill sweep (pid ");
        }
        std::thread::sleep(Duration::from_millis(1500));
        signal(&first, sig);
        let out = first.wait_with_output().unwrap();
        assert_eq!(code(&out), 130, "{}", text(&out));
        let last = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string();
        assert!(last.starts_with("outcome: interrupted | "), "{}", text(&out));
        let s = read_json(&t.join("sw/summary.json"));
        assert_eq!(s["interrupted"], true);
        assert!(s["counts"]["pass"].as_u64().unwrap() < 100001);
        let mut names: Vec<String> = fs::read_dir(t.join("sw")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["junit.xml", "report.html", "report.md", "summary.json"], "left behind: {names:?}");
    }
    // NDJSON says it too.
    let child = Command::new(DRILL)
        .current_dir(t)
        .args(["sweep", "--seeds", "0..=100000", "--profile", "none", "--jobs", "1", "--out", "sw", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    signal(&child, "INT");
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 130, "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(
        (result["event"].as_str(), &result["interrupted"], &result["summary"]["interrupted"]),
        (Some("result"), &Value::Bool(true), &Value::Bool(true)),
        "{stdout}"
    );
    // The rerun replaces the interrupted sweep.
    let again = drill(t, &["sweep", "--seeds", "0..2", "--profile", "none", "--jobs", "1", "--out", "sw"]);
    assert_eq!(code(&again), 0, "{}", text(&again));
    assert!(read_json(&t.join("sw/summary.json")).get("interrupted").is_none());
}

/// check-determinism, interrupted, removes its scratch folder and exits 130.
#[test]
fn an_interrupted_determinism_check_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let args = ["check-determinism", "--seeds", "0..=100000", "--profile", "none", "--jobs", "1"];
    interrupted(Command::new(DRILL).current_dir(tmp.path()).env("TMPDIR", tmp.path()).args(args), 2500);
    let left: Vec<_> = fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Reproduction 5: a non-UTF-8 `--out` made `run` panic after writing its folder, and the other
/// commands fail after creating theirs. Now every command refuses it first.
#[test]
fn a_non_utf8_path_is_refused_before_anything_is_written() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let bad = std::ffi::OsStr::from_bytes(b"out-\xff");
    let run = passing_run(tmp.path(), "run", "1");
    let before = snapshot(tmp.path());
    let commands: Vec<Vec<&str>> = vec![
        vec!["run", "--seed", "1", "--out"],
        vec!["sweep", "--seeds", "1..2", "--out"],
        vec!["gate", "--seeds", "1", "--out"],
        vec!["merge", "run", "--out"],
        vec!["bench", "--quick", "--out"],
        vec!["shrink"],
        vec!["timeline"],
        vec!["replay"],
    ];
    for args in commands {
        let out = Command::new(DRILL).current_dir(tmp.path()).args(&args).arg(bad).output().unwrap();
        assert_refused(&out, "is not UTF-8");
    }
    assert_eq!(snapshot(tmp.path()), before);
    assert!(run.is_dir());
}

/// Reproduction 6: `timeline DIR` with an empty, cut or non-JSON trace exited 0 and replaced a
/// good report.html. Now exit 2 and every file as it was.
#[test]
fn timeline_refuses_a_bad_trace_and_keeps_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = passing_run(tmp.path(), "run", "2");
    let good = fs::read_to_string(dir.join("trace.jsonl")).unwrap();
    let lines: Vec<&str> = good.lines().collect();
    let cut_at_line = lines[..lines.len() - 1].join("\n") + "\n";
    let cases = [("", "it is empty"), (&good[..good.len() / 2], "cut short"), (&cut_at_line[..], "summary.json counts"), ("this is not a trace\n", "not JSON")];
    for (bad, want) in cases {
        fs::write(dir.join("trace.jsonl"), bad).unwrap();
        let before = snapshot(&dir);
        assert_refused(&drill(tmp.path(), &["timeline", "run"]), want);
        assert_refused(&drill(tmp.path(), &["replay", "run"]), want);
        assert_refused(&drill(tmp.path(), &["shrink", "run"]), want);
        assert_eq!(snapshot(&dir), before, "{want}");
    }
    fs::write(dir.join("trace.jsonl"), &good).unwrap();
    let out = drill(tmp.path(), &["timeline", "run"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
}

/// Doubtful case: `replay` of a folder whose trace was deleted said "matches".
#[test]
fn replay_refuses_a_folder_without_its_trace() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = passing_run(tmp.path(), "run", "3");
    fs::remove_file(dir.join("trace.jsonl")).unwrap();
    let before = snapshot(&dir);
    assert_refused(&drill(tmp.path(), &["replay", "run"]), "has no trace.jsonl");
    assert_eq!(snapshot(&dir), before);
}

/// Reproduction 8: inputs were read with no size limit (`--plan /dev/zero` reached 3.5 GB; a
/// trace linked to /dev/zero aborted replay). Now only regular files are read, within limits.
#[test]
fn inputs_are_regular_files_read_within_a_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let started = Instant::now();
    assert_refused(&drill(t, &["run", "--plan", "/dev/zero"]), "not a regular file");
    let dir = passing_run(t, "run", "4");
    fs::remove_file(dir.join("trace.jsonl")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("trace.jsonl")).unwrap();
    for cmd in ["replay", "timeline", "shrink"] {
        assert_refused(&drill(t, &[cmd, "run"]), "not a regular file");
    }
    fs::remove_file(dir.join("summary.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("summary.json")).unwrap();
    assert_refused(&drill(t, &["merge", "run", "--out", "m"]), "not a regular file");
    // A plan file past the limit (64 MiB), sparse so the test writes nothing much.
    let big = fs::File::create(t.join("big.json")).unwrap();
    big.set_len(65 << 20).unwrap();
    assert_refused(&drill(t, &["run", "--plan", "big.json"]), "larger than 64 MiB");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(!t.join("drill-out").exists() && !t.join("m").exists());
}

/// Doubtful case: `merge` of a run folder said "missing field 'seeds'".
#[test]
fn merge_of_a_run_folder_says_what_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    passing_run(tmp.path(), "run", "5");
    assert_refused(&drill(tmp.path(), &["merge", "run", "--out", "m"]), "run is a run folder; merge joins the folders of sweeps or gates");
    assert!(!tmp.path().join("m").exists());
}

/// Doubtful case: `--jobs 10000` started 150 workers on 2 cores. Now capped, with a note.
#[test]
fn jobs_beyond_the_cores_are_capped_with_a_note() {
    let tmp = tempfile::tempdir().unwrap();
    let out = drill(tmp.path(), &["sweep", "--seeds", "0..3", "--profile", "none", "--jobs", "10000", "--out", "sw"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let cores = std::thread::available_parallelism().unwrap().get() as u64;
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("note: --jobs 10000 is more than this machine's {cores} cores")), "{}", text(&out));
    assert!(read_json(&tmp.path().join("sw/summary.json"))["jobs"].as_u64().unwrap() <= cores);
}

/// Runs `drill run --plan` on the plan of `dir` changed by `edit`, in `cwd`.
fn run_edited_plan(cwd: &Path, dir: &Path, name: &str, edit: impl FnOnce(&mut Value)) -> Output {
    let mut plan = read_json(&dir.join("plan.json"));
    edit(&mut plan);
    let file = cwd.join(format!("{name}.json"));
    fs::write(&file, serde_json::to_string_pretty(&plan).unwrap()).unwrap();
    drill(cwd, &["run", "--plan", file.to_str().unwrap(), "--out", &format!("out-{name}")])
}

/// Reproduction 4: `server_retention`, a fault's `ms` or a group rekey's `withhold_ms` near
/// u64::MAX panicked the world (SIM-NO-PANIC, exit 1). Now a bad plan: exit 2 naming the field,
/// no folder written.
#[test]
fn plan_numbers_near_u64_max_are_bad_input_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let lite = t.join("lite");
    let out = drill(t, &["run", "--seed", "1", "--profile", "lite", "--out", lite.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(read_json(&lite.join("plan.json"))["faults"][0]["ms"].is_u64(), "seed 1 lite has a fault with a duration");
    // Seed 3 under swarm rekeys a group (its plan's store section has group_rekeys).
    let swarm = t.join("swarm");
    let out = drill(t, &["run", "--seed", "3", "--profile", "swarm", "--out", swarm.to_str().unwrap()]);
    assert!([0, 1, 3].contains(&code(&out)), "{}", text(&out));
    assert!(read_json(&swarm.join("plan.json"))["store"]["group_rekeys"][0]["withhold_ms"].is_u64(), "seed 3 swarm rekeys a group");
    let near = u64::MAX - 1;
    let cases = [
        ("retention", &lite, "/server_retention", "field `server_retention` is 18446744073709551614"),
        ("fault-ms", &lite, "/faults/0/ms", "field `faults[0].ms` is 18446744073709551614"),
        ("withhold", &swarm, "/store/group_rekeys/0/withhold_ms", "field `store.group_rekeys[0].withhold_ms`"),
    ];
    for (name, dir, field, want) in cases {
        let edit = |p: &mut Value| *p.pointer_mut(field).expect("the plan has the field") = near.into();
        assert_refused(&run_edited_plan(t, dir, name, edit), want);
        assert!(!t.join(format!("out-{name}")).exists(), "{name}");
    }
}

/// Reproduction 7: a plan whose profile is `heavy`, `""` or `server` ran (exit 0), and an
/// unknown nested field (`knobs.net.bogus`) was accepted. Now both are bad input.
#[test]
fn a_plan_with_an_unknown_profile_or_field_is_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let dir = passing_run(t, "run", "6");
    for (i, profile) in ["heavy", "", "server"].into_iter().enumerate() {
        let out = run_edited_plan(t, &dir, &format!("profile-{i}"), |p| p["profile"] = profile.into());
        assert_refused(&out, "unknown variant");
    }
    assert_refused(&run_edited_plan(t, &dir, "bogus", |p| p["knobs"]["net"]["bogus"] = 1.into()), "unknown field `knobs.net.bogus`");
    assert_refused(&run_edited_plan(t, &dir, "bogus-false", |p| p["knobs"]["net"]["bogus"] = false.into()), "unknown field `knobs.net.bogus`");
    let names: Vec<String> =
        fs::read_dir(t).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("out-")).collect();
    assert!(names.is_empty(), "refused plans wrote {names:?}");
}

/// The system under test cannot take the tool down: a run that never answers (planted through
/// the worker's test hook) is stopped after `--seed-timeout`, reported as SIM-NO-HANG with its
/// replay command, and the sweep goes on with the other seeds.
#[test]
fn a_hung_seed_is_contained_to_its_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = Command::new(DRILL)
        .current_dir(tmp.path())
        .args(["sweep", "--seeds", "0..4", "--profile", "none", "--jobs", "2", "--seed-timeout", "2s", "--out", "sw"])
        .env("DRILL_TEST_WORKER_FAULT", "hang:1")
        .output()
        .unwrap();
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(60), "the sweep took {:?}", started.elapsed());
    let s = read_json(&tmp.path().join("sw/summary.json"));
    assert_eq!((s["counts"]["pass"].as_u64(), s["counts"]["violation"].as_u64()), (Some(3), Some(1)), "{s}");
    let failing = &s["failing"][0];
    assert_eq!((failing["seed"].as_u64(), failing["first_violation"]["invariant"].as_str()), (Some(1), Some("SIM-NO-HANG")));
    assert!(failing["first_violation"]["message"].as_str().unwrap().contains("did not finish within 2s"), "{failing}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("drill run --seed 1 --scenario sync-basic --profile none"), "{}", text(&out));
    assert!(!tmp.path().join("sw/.drill-work").exists());
}

/// SIGINT during a gate: its workers stop, its summary says `interrupted`, its scratch folder is
/// gone and it exits 130.
#[test]
fn an_interrupted_gate_says_so_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let args = ["gate", "--seeds", "100000", "--drill-seeds", "1", "--jobs", "1", "--out", "g"];
    interrupted(Command::new(DRILL).current_dir(tmp.path()).args(args), 3000);
    let s = read_json(&tmp.path().join("g/summary.json"));
    assert_eq!(s["sweep"]["interrupted"], true, "{s}");
    let left: Vec<String> = fs::read_dir(tmp.path().join("g")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!left.iter().any(|n| n.starts_with(".drill-")), "left behind: {left:?}");
}

//! The `drill` binary as a user meets it: files written, exit codes, and one-line errors.
//!
//! These tests hold to the contract (file names, summary fields, exit codes, the replay round
//! trip), not to what a particular world happens to produce, so they keep passing as the world
//! grows. Each test works in its own temporary folder and runs few seeds to stay quick.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const DRILL: &str = env!("CARGO_BIN_EXE_drill");

/// Runs drill in `cwd` with `args`.
fn drill(cwd: &Path, args: &[&str]) -> Output {
    Command::new(DRILL).current_dir(cwd).args(args).output().expect("drill starts")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("drill exits with a code")
}

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn exit_code_of(outcome: &str) -> i32 {
    match outcome {
        "pass" => 0,
        "violation" => 1,
        "liveness" => 3,
        "nondeterminism" => 4,
        other => panic!("unknown outcome {other:?}"),
    }
}

/// Every file under `dir` with its contents, to show that a command changed nothing.
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

/// Runs `drill run` into `tmp/name` and returns the folder.
fn run_into(tmp: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let dir = tmp.join(name);
    let mut args = vec!["run", "--out", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = drill(tmp, &args);
    assert!([0, 1, 3, 4].contains(&code(&out)), "drill run failed: {}", stderr(&out));
    dir
}

#[test]
fn run_writes_three_files_and_a_complete_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let out = drill(tmp.path(), &["run", "--seed", "3", "--out", dir.to_str().unwrap()]);
    for file in ["trace.jsonl", "plan.json", "summary.json"] {
        assert!(dir.join(file).is_file(), "missing {file}");
    }
    let s = read_json(&dir.join("summary.json"));
    for field in [
        "format_version",
        "seed",
        "scenario",
        "profile",
        "outcome",
        "violations",
        "fingerprint",
        "plan_hash",
        "faults",
        "checks",
        "sim_time_ms",
        "steps",
        "replay",
    ] {
        assert!(s.get(field).is_some(), "summary.json lacks {field}");
    }
    assert_eq!((s["format_version"].as_u64(), s["seed"].as_u64()), (Some(1), Some(3)));
    assert_eq!((s["scenario"].as_str(), s["profile"].as_str()), (Some("sync-basic"), Some("swarm")));
    assert_eq!(s["replay"], "drill run --seed 3 --scenario sync-basic --profile swarm");
    let outcome = s["outcome"].as_str().unwrap();
    assert_eq!(code(&out), exit_code_of(outcome), "{}", stderr(&out));

    let text = stdout(&out);
    let first = text.lines().next().unwrap();
    let plan_hash = s["plan_hash"].as_str().unwrap();
    for part in ["seed 3", plan_hash, env!("CARGO_PKG_VERSION"), "swarm"] {
        assert!(first.contains(part), "first line {first:?} lacks {part}");
    }
    let last = text.lines().last().unwrap();
    assert!(last.contains(&format!("outcome: {outcome}")) && last.contains("drill run --seed 3"), "{last}");
}

#[test]
fn run_defaults_to_a_folder_per_seed_and_replaces_only_its_own_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = drill(tmp.path(), &["run", "--seed", "4", "--profile", "none"]);
    let dir = tmp.path().join("drill-out/run-4");
    assert!(dir.join("summary.json").is_file(), "{}", stderr(&out));

    // A previous run's folder is replaced...
    let again = drill(tmp.path(), &["run", "--seed", "4", "--profile", "none"]);
    assert_eq!(code(&again), code(&out), "{}", stderr(&again));

    // ...but a folder holding anything else is refused and left as it was.
    fs::write(dir.join("notes.txt"), "mine").unwrap();
    let before = snapshot(&dir);
    let refused = drill(tmp.path(), &["run", "--seed", "4", "--profile", "none"]);
    assert_eq!(code(&refused), 2);
    assert_eq!(snapshot(&dir), before);
}

#[test]
fn a_plan_file_runs_like_its_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let first = run_into(tmp.path(), "first", &["--seed", "5", "--profile", "none"]);
    let plan = first.join("plan.json");
    let second = run_into(tmp.path(), "second", &["--plan", plan.to_str().unwrap()]);
    let (a, b) = (read_json(&first.join("summary.json")), read_json(&second.join("summary.json")));
    assert_eq!(a["fingerprint"], b["fingerprint"]);
    assert!(b["replay"].as_str().unwrap().starts_with("drill run --plan "), "{}", b["replay"]);
}

#[test]
fn bad_input_exits_2_with_one_error_line_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    fs::write(t.join("not-json.json"), "{ not json").unwrap();
    fs::write(t.join("not-a-plan.json"), "[1, 2, 3]").unwrap();
    fs::create_dir(t.join("empty-folder")).unwrap();
    fs::create_dir(t.join("bad-summary")).unwrap();
    fs::write(t.join("bad-summary/summary.json"), "{}").unwrap();
    fs::write(t.join("bad-summary/plan.json"), "{}").unwrap();
    let cases: &[&[&str]] = &[
        &["run", "--seed", "1", "--scenario", "no-such-scenario"],
        &["run", "--seed", "1", "--profile", "no-such-profile"],
        &["run", "--seed", "-1"],
        &["run", "--seed", "18446744073709551616"],
        &["run", "--plan", "missing.json"],
        &["run", "--plan", "not-json.json"],
        &["run", "--plan", "not-a-plan.json"],
        &["sweep", "--seeds", "5..2"],
        &["sweep", "--seeds", "3..3"],
        &["sweep", "--seeds", "abc"],
        &["sweep", "--seeds", "-3..2"],
        &["sweep", "--seeds", ""],
        &["sweep", "--seeds", "0..18446744073709551616"],
        &["sweep", "--seeds", "0..=18446744073709551615"],
        &["sweep", "--seeds", "0..2", "--jobs", "0"],
        &["sweep", "--seeds", "0..2", "--scenario", "no-such-scenario"],
        &["check-determinism", "--seeds", "2..1"],
        &["check-determinism", "--seeds", "0..2", "--profile", "no-such-profile"],
        &["check-determinism", "--seeds", "0..2", "--jobs", "0"],
        &["replay", "no-such-folder"],
        &["replay", "not-json.json"],
        &["replay", "empty-folder"],
        &["replay", "bad-summary"],
    ];
    let before = snapshot(t);
    for args in cases {
        let out = drill(t, args);
        let err = stderr(&out);
        assert_eq!(code(&out), 2, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?} printed {err:?}");
        assert!(err.starts_with("error: "), "{args:?} printed {err:?}");
    }
    assert_eq!(snapshot(t), before, "bad input left files behind");
    assert!(!t.join("drill-out").exists(), "bad input created drill-out");
}

/// A sweep's `--out` whose name needs escaping in XML, HTML and markdown.
const NASTY_OUT: &str = "sw <&> \"q\"";

/// Checks that the sweep folder `dir`, whose summary is `s`, holds exactly the summary, its
/// reports and one folder per failing seed; that junit.xml is well-formed XML with one failing
/// test case per failing seed; and that report.html is one page loading nothing from elsewhere
/// and linking each failing seed's timeline.
fn assert_sweep_files(dir: &Path, s: &Value) {
    let failing = s["failing"].as_array().unwrap();
    let seeds: Vec<u64> = failing.iter().map(|f| f["seed"].as_u64().unwrap()).collect();
    let mut expected: Vec<String> = ["junit.xml", "report.html", "report.md", "summary.json"].map(String::from).to_vec();
    expected.extend(seeds.iter().map(|n| format!("seed-{n}")));
    expected.sort();
    let mut names: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, expected);

    let junit = fs::read_to_string(dir.join("junit.xml")).unwrap();
    assert_eq!(xml_root(&junit), "testsuites", "{junit}");
    // One passing case for the sweep as a whole, one failing case per failing seed.
    assert_eq!(junit.matches("<testcase ").count(), 1 + seeds.len(), "{junit}");
    assert_eq!(junit.matches("<failure ").count(), seeds.len(), "{junit}");
    let scenario = s["scenario"].as_str().unwrap();
    for n in &seeds {
        let case = format!("<testcase name=\"{scenario} seed {n}\"");
        assert_eq!(junit.matches(&case).count(), 1, "{case}: {junit}");
    }

    let md = fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.starts_with("# drill sweep: "), "{md}");
    let html = fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    for remote in ["http://", "https://", "<link", " src="] {
        assert!(!html.contains(remote), "report.html refers elsewhere ({remote})");
    }
    for n in &seeds {
        assert!(html.contains(&format!("href=\"seed-{n}/report.html\"")), "{html}");
        // A run that panicked before it began has no trace, and so no timeline.
        let seed = dir.join(format!("seed-{n}"));
        if seed.join("trace.jsonl").is_file() {
            assert!(seed.join("report.html").is_file());
        }
    }
}

/// The root element of `xml`, after checking that it is well-formed enough for a CI system: an
/// XML declaration, elements that nest and close, one root, quoted attributes, and no `<` or
/// stray `&` in text or attribute values.
fn xml_root(xml: &str) -> String {
    let rest = xml.strip_prefix("<?xml ").expect("an XML declaration");
    let mut rest = &rest[rest.find("?>").expect("the declaration ends") + 2..];
    let escaped = |t: &str| t.split('&').skip(1).all(|e| ["amp;", "lt;", "gt;", "quot;", "apos;", "#"].iter().any(|entity| e.starts_with(entity)));
    let (mut stack, mut root) = (Vec::<String>::new(), None::<String>);
    while let Some(open) = rest.find('<') {
        let text = &rest[..open];
        assert!(escaped(text), "unescaped & in {text:?}");
        assert!(!stack.is_empty() || text.trim().is_empty(), "text outside the root: {text:?}");
        let close = rest[open..].find('>').expect("a tag ends") + open;
        let tag = &rest[open + 1..close];
        rest = &rest[close + 1..];
        assert!(!tag.contains('<') && escaped(tag), "malformed tag <{tag}>");
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name), "</{name}> closes nothing open");
            continue;
        }
        let empty = tag.ends_with('/');
        let tag = tag.trim_end_matches('/');
        let name = tag.split_whitespace().next().expect("an element name");
        let attrs = tag[name.len()..].trim();
        // name="value" pairs: the quotes come in pairs and no value holds a quote.
        assert_eq!(attrs.matches('"').count(), 2 * attrs.matches("=\"").count(), "<{tag}>");
        if stack.is_empty() {
            assert!(root.is_none(), "a second root <{name}>");
            root = Some(name.to_string());
        }
        if !empty {
            stack.push(name.to_string());
        }
    }
    assert!(stack.is_empty(), "unclosed {stack:?}");
    assert!(rest.trim().is_empty(), "text after the root: {rest:?}");
    root.expect("a root element")
}

#[test]
fn sweep_counts_every_seed_and_keeps_only_failing_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let out = drill(tmp.path(), &["sweep", "--seeds", "0..4", "--jobs", "2", "--out", "sw"]);
    let s = read_json(&tmp.path().join("sw/summary.json"));
    let counts = &s["counts"];
    let sum: u64 = ["pass", "violation", "liveness", "nondeterminism"].iter().map(|k| counts[k].as_u64().unwrap()).sum();
    assert_eq!(sum, 4);
    assert_eq!((s["seeds"]["first"].as_u64(), s["seeds"]["last"].as_u64()), (Some(0), Some(3)));
    let failing = s["failing"].as_array().unwrap();
    assert_eq!(failing.len() as u64, 4 - counts["pass"].as_u64().unwrap());
    assert_eq!(code(&out), exit_code_of(s["outcome"].as_str().unwrap()), "{}", stderr(&out));
    for f in failing {
        let folder = tmp.path().join(f["folder"].as_str().unwrap());
        assert!(folder.join("trace.jsonl").is_file() && folder.join("plan.json").is_file());
        assert!(f["replay"].as_str().unwrap().starts_with("drill run --seed "));
    }
    // Only the summary, its reports and the failing seeds' folders remain.
    assert_sweep_files(&tmp.path().join("sw"), &s);
    assert!(stdout(&out).lines().last().unwrap().starts_with("outcome: "));
}

#[test]
fn a_fault_free_sweep_passes_and_replaces_its_previous_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let args = ["sweep", "--seeds", "10..=12", "--profile", "none", "--jobs", "2", "--out", "sw"];
    for _ in 0..2 {
        let out = drill(tmp.path(), &args);
        assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
        let s = read_json(&tmp.path().join("sw/summary.json"));
        assert_eq!((s["counts"]["pass"].as_u64(), s["outcome"].as_str()), (Some(3), Some("pass")));
        assert!(s["seeds_per_second"].as_f64().unwrap() > 0.0);
        assert_sweep_files(&tmp.path().join("sw"), &s);
    }
    // A run folder is not a sweep folder: the sweep refuses it and leaves it alone.
    let run = run_into(tmp.path(), "run", &["--seed", "1", "--profile", "none"]);
    let before = snapshot(&run);
    let out = drill(tmp.path(), &["sweep", "--seeds", "0..1", "--out", "run"]);
    assert_eq!(code(&out), 2);
    assert_eq!(snapshot(&run), before);
}

#[test]
fn check_determinism_passes_on_a_few_seeds() {
    let tmp = tempfile::tempdir().unwrap();
    let out = drill(tmp.path(), &["check-determinism", "--seeds", "0..3", "--jobs", "2"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert_eq!(stdout(&out).lines().last(), Some("3 seeds, 0 mismatches"));
}

#[test]
fn replay_of_a_run_folder_matches_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = run_into(tmp.path(), "run", &["--seed", "6", "--profile", "none"]);
    let outcome = read_json(&dir.join("summary.json"))["outcome"].as_str().unwrap().to_string();
    let before = snapshot(&dir);
    let out = drill(tmp.path(), &["replay", "run"]);
    assert_eq!(code(&out), exit_code_of(&outcome), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("replay matches"), "{}", stdout(&out));
    assert_eq!(snapshot(&dir), before);
}

#[test]
fn replay_reports_a_tampered_trace_at_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = run_into(tmp.path(), "run", &["--seed", "8", "--profile", "none"]);
    let trace = fs::read_to_string(dir.join("trace.jsonl")).unwrap();
    let mut lines: Vec<&str> = trace.lines().collect();
    assert!(lines.len() >= 2, "trace too short to tamper with");
    lines[1] = "{\"tampered\":true}";
    fs::write(dir.join("trace.jsonl"), lines.join("\n") + "\n").unwrap();
    let out = drill(tmp.path(), &["replay", "run"]);
    assert_eq!(code(&out), 4, "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("first difference at trace line 2") && text.contains("tampered"), "{text}");
}

#[test]
fn replay_reports_a_tampered_fingerprint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = run_into(tmp.path(), "run", &["--seed", "9", "--profile", "none"]);
    let path = dir.join("summary.json");
    let mut s = read_json(&path);
    s["fingerprint"] = Value::String("0".repeat(64));
    fs::write(&path, serde_json::to_string_pretty(&s).unwrap()).unwrap();
    let out = drill(tmp.path(), &["replay", "run"]);
    assert_eq!(code(&out), 4, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("fingerprint"), "{}", stdout(&out));
}

#[test]
fn list_names_the_scenarios_and_profiles() {
    let tmp = tempfile::tempdir().unwrap();
    let out = drill(tmp.path(), &["list"]);
    assert_eq!(code(&out), 0);
    let text = stdout(&out);
    for name in ["sync-basic", "none", "lite", "swarm"] {
        assert!(text.contains(name), "list lacks {name}: {text}");
    }
}

/// Makes workers panic on seed 1 and die abruptly on seed 2 (see `DRILL_TEST_WORKER_FAULT`).
fn with_worker_faults(cwd: &Path, args: &[&str]) -> Output {
    Command::new(DRILL).current_dir(cwd).args(args).env("DRILL_TEST_WORKER_FAULT", "panic:1,exit:2").output().expect("drill starts")
}

#[test]
fn a_sweep_survives_panicking_and_dying_workers() {
    let tmp = tempfile::tempdir().unwrap();
    let args = ["sweep", "--seeds", "0..5", "--profile", "none", "--jobs", "2", "--out", NASTY_OUT];
    let out = with_worker_faults(tmp.path(), &args);
    assert_eq!(code(&out), 1, "{}{}", stdout(&out), stderr(&out));
    let s = read_json(&tmp.path().join(NASTY_OUT).join("summary.json"));
    assert_eq!((s["counts"]["pass"].as_u64(), s["counts"]["violation"].as_u64()), (Some(3), Some(2)));
    let failing = s["failing"].as_array().unwrap();
    let seeds: Vec<u64> = failing.iter().map(|f| f["seed"].as_u64().unwrap()).collect();
    assert_eq!(seeds, [1, 2]);
    for f in failing {
        assert_eq!(f["first_violation"]["invariant"], "SIM-NO-PANIC");
        assert!(tmp.path().join(f["folder"].as_str().unwrap()).is_dir());
    }
    let messages = format!("{} {}", failing[0]["first_violation"]["message"], failing[1]["first_violation"]["message"]);
    assert!(messages.contains("injected panic") && messages.contains("exited"), "{messages}");
    assert!(stdout(&out).contains("drill run --seed 1 --scenario sync-basic --profile none"));
    // The failing folders' paths hold markup characters, which the reports escape.
    let dir = tmp.path().join(NASTY_OUT);
    assert_sweep_files(&dir, &s);
    let junit = fs::read_to_string(dir.join("junit.xml")).unwrap();
    assert!(junit.contains("folder: sw &lt;&amp;&gt; &quot;q&quot;/seed-1"), "{junit}");
}

#[test]
fn check_determinism_reports_panicking_seeds() {
    let tmp = tempfile::tempdir().unwrap();
    let args = ["check-determinism", "--seeds", "0..4", "--profile", "none", "--jobs", "2"];
    let out = with_worker_faults(tmp.path(), &args);
    assert_eq!(code(&out), 1, "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().last(), Some("4 seeds, 0 mismatches, 2 panicked"), "{text}");
    // The kept scratch folder is named in the output; clean it up.
    let kept = text.lines().find_map(|l| l.split(" in ").nth(1).filter(|_| l.starts_with("kept"))).unwrap();
    fs::remove_dir_all(kept).unwrap();
}

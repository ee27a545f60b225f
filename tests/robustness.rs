//! A generated robustness test: from a real plan, and from a real run folder's summary and
//! trace, every single-field mutation of a few kinds is handed to the binary, which must end in
//! an outcome (0, 1, 3, 4) or refuse the input (2) with exactly one `error:` line: never a
//! panic, an abort, a hang, or a violation the plan itself caused (`SIM-NO-PANIC`).
//!
//! The mutations are made, not listed: every field path of the plan (the first element standing
//! for each list), and of the summary, gets type changes, the extremes of each integer width,
//! empty and very long strings, non-finite numbers (as JSON cannot hold them, the text `NaN`,
//! `Infinity` and an out-of-range `1e400`), and an unknown field in every object.

// This test drives the binary from outside a run: it times each case on the wall clock and
// drains each child's stderr on a thread of its own.
#![allow(clippy::disallowed_methods)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const DRILL: &str = env!("CARGO_BIN_EXE_drill");
/// Longest a single mutated run may take before the test calls it a hang.
const HANG_AFTER: Duration = Duration::from_secs(60);
/// Workers running mutations side by side.
const PARALLEL: usize = 2;

/// What a mutation is fed to, and the file it replaces.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// `drill run --plan FILE`.
    Plan,
    /// `drill timeline DIR` then `drill replay DIR` with summary.json replaced.
    Summary,
    /// `drill timeline DIR` and, for a few, `drill replay DIR` with trace.jsonl replaced.
    Trace { replay: bool },
}

struct Case {
    name: String,
    target: Target,
    text: String,
}

/// Every path to a value in `v`, with only the first element of each list.
fn paths(v: &Value, here: Vec<Value>, out: &mut Vec<Vec<Value>>) {
    out.push(here.clone());
    match v {
        Value::Object(o) => {
            for (k, child) in o {
                let mut p = here.clone();
                p.push(json!(k));
                paths(child, p, out);
            }
        }
        Value::Array(a) => {
            if let Some(first) = a.first() {
                let mut p = here.clone();
                p.push(json!(0));
                paths(first, p, out);
            }
        }
        _ => {}
    }
}

fn at<'a>(v: &'a mut Value, path: &[Value]) -> &'a mut Value {
    path.iter().fold(v, |v, k| match k {
        Value::String(s) => &mut v[s.as_str()],
        Value::Number(n) => &mut v[n.as_u64().unwrap() as usize],
        _ => unreachable!(),
    })
}

fn show(path: &[Value]) -> String {
    path.iter().map(|k| k.as_str().map_or_else(|| format!("[{k}]"), |s| format!(".{s}"))).collect()
}

/// The replacement values for a field holding `v`; `Err` holds raw text for values JSON cannot
/// hold.
fn replacements(v: &Value) -> Vec<Result<Value, &'static str>> {
    let mut out: Vec<Result<Value, &'static str>> = vec![Ok(Value::Null), Ok(json!("text")), Ok(json!([]))];
    match v {
        Value::Number(_) => {
            for n in [json!(0), json!(-1), json!(1.5), json!(u32::MAX as u64 + 1), json!(i64::MIN), json!(u64::MAX), json!(1e300)] {
                out.push(Ok(n));
            }
            out.extend([Err("NaN"), Err("Infinity"), Err("1e400")]);
        }
        Value::String(_) => out.extend([Ok(json!("")), Ok(json!("x".repeat(100_000))), Ok(json!(7))]),
        Value::Bool(b) => out.extend([Ok(json!(!b)), Ok(json!(1))]),
        Value::Array(_) => out.extend([Ok(json!({})), Ok(json!([null]))]),
        Value::Object(_) => out.extend([Ok(json!(false))]),
        Value::Null => out.push(Ok(json!(0))),
    }
    out
}

/// Mutations of every field of `base`, and an unknown field in every object.
fn mutations(base: &Value, target: Target, prefix: &str) -> Vec<Case> {
    let mut all = Vec::new();
    paths(base, Vec::new(), &mut all);
    let mut cases = Vec::new();
    for path in all.iter().filter(|p| !p.is_empty()) {
        let mut probe = base.clone();
        let original = at(&mut probe, path).clone();
        for (i, r) in replacements(&original).into_iter().enumerate() {
            let mut v = base.clone();
            let text = match r {
                Ok(new) => {
                    *at(&mut v, path) = new;
                    serde_json::to_string_pretty(&v).unwrap()
                }
                Err(raw) => {
                    *at(&mut v, path) = json!("@RAW@");
                    serde_json::to_string_pretty(&v).unwrap().replace("\"@RAW@\"", raw)
                }
            };
            cases.push(Case { name: format!("{prefix}{} #{i}", show(path)), target, text });
        }
    }
    for path in all.iter().filter(|p| base.pointer(&pointer(p)).is_some_and(Value::is_object)) {
        let mut v = base.clone();
        at(&mut v, path)["drill_robustness_unknown"] = json!(1);
        cases.push(Case { name: format!("{prefix}{} +unknown", show(path)), target, text: serde_json::to_string(&v).unwrap() });
    }
    cases
}

fn pointer(path: &[Value]) -> String {
    path.iter().map(|k| format!("/{}", k.as_str().map_or_else(|| k.to_string(), str::to_string))).collect()
}

/// Line-level mutations of a trace: cut, emptied, a line removed, doubled, made non-JSON, made
/// another JSON type, and each field of the first line mutated.
fn trace_mutations(trace: &str) -> Vec<Case> {
    let lines: Vec<&str> = trace.lines().collect();
    let join = |l: &[&str]| l.join("\n") + "\n";
    let mid = lines.len() / 2;
    let mut texts: Vec<(String, String, bool)> = vec![
        ("empty".into(), String::new(), true),
        ("cut mid-line".into(), trace[..trace.len() / 2].to_string(), true),
        ("no final newline".into(), trace.trim_end().to_string(), false),
        ("last line gone".into(), join(&lines[..lines.len() - 1]), true),
        ("first line gone".into(), join(&lines[1..]), false),
        ("a line doubled".into(), join(&[&lines[..=mid], &lines[mid..]].concat()), true),
        ("binary".into(), "\u{0}\u{1}\u{2}\n".into(), false),
    ];
    for (what, line) in
        [("not JSON", "{"), ("an array", "[1,2]"), ("a number", "7"), ("an empty object", "{}"), ("a long string", "\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"")]
    {
        let mut l = lines.clone();
        l[mid] = line;
        texts.push((format!("line {} {what}", mid + 1), join(&l), what == "an empty object"));
    }
    let first: Value = serde_json::from_str(lines[0]).unwrap();
    let mut cases: Vec<Case> =
        texts.into_iter().map(|(name, text, replay)| Case { name: format!("trace {name}"), target: Target::Trace { replay }, text }).collect();
    for c in mutations(&first, Target::Trace { replay: false }, "trace line 1") {
        let mut l = lines.clone();
        let one = c.text.replace('\n', " ");
        l[0] = &one;
        cases.push(Case { text: join(&l), ..c });
    }
    cases
}

/// What went wrong with one case, if anything.
fn judge(case: &Case, code: Option<i32>, stderr: &str, dir: &Path, took: Duration) -> Option<String> {
    let why = match code {
        _ if took >= HANG_AFTER => format!("hung ({took:?})"),
        None => "killed by a signal (abort?)".to_string(),
        Some(2) => {
            let lines: Vec<&str> = stderr.lines().collect();
            if lines.len() == 1 && lines[0].starts_with("error: ") {
                return None;
            }
            format!("exit 2 without one error line: {stderr:?}")
        }
        Some(0 | 3 | 4) => return None,
        Some(1) => {
            let summary = fs::read_to_string(dir.join("summary.json")).unwrap_or_default();
            if matches!(case.target, Target::Plan) && summary.contains("SIM-NO-PANIC") {
                format!("the plan panicked the world: {}", &summary[..summary.len().min(600)])
            } else {
                return None;
            }
        }
        Some(c) => format!("exit {c}: {}", &stderr[..stderr.len().min(600)]),
    };
    Some(format!("{}: {why}", case.name))
}

/// Runs `drill args` in `cwd`, killing it after [`HANG_AFTER`].
fn run(cwd: &Path, args: &[&str]) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(DRILL).current_dir(cwd).args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    // stderr is drained as it comes: a long error line must not fill the pipe and stall drill.
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
        err
    });
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), reader.join().unwrap(), started.elapsed());
        }
        if started.elapsed() >= HANG_AFTER {
            let _ = child.kill();
            let _ = child.wait();
            return (Some(-1), reader.join().unwrap(), started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn check_case(root: &Path, base_run: &Path, i: usize, case: &Case) -> Vec<String> {
    let work = root.join(format!("case-{i}"));
    fs::create_dir_all(&work).unwrap();
    let mut problems = Vec::new();
    match case.target {
        Target::Plan => {
            fs::write(work.join("plan.json"), &case.text).unwrap();
            let out = work.join("out");
            let (code, err, took) = run(&work, &["run", "--plan", "plan.json", "--out", out.to_str().unwrap()]);
            problems.extend(judge(case, code, &err, &out, took));
        }
        Target::Summary | Target::Trace { .. } => {
            let dir = work.join("run");
            fs::create_dir_all(&dir).unwrap();
            for f in ["plan.json", "summary.json", "trace.jsonl", "report.html"] {
                fs::copy(base_run.join(f), dir.join(f)).unwrap();
            }
            let file = if matches!(case.target, Target::Summary) { "summary.json" } else { "trace.jsonl" };
            fs::write(dir.join(file), &case.text).unwrap();
            let replay = !matches!(case.target, Target::Trace { replay: false });
            for cmd in ["timeline", "replay"].into_iter().filter(|c| *c == "timeline" || replay) {
                let (code, err, took) = run(&work, &[cmd, "run"]);
                let named = Case { name: format!("{} ({cmd})", case.name), target: case.target, text: String::new() };
                problems.extend(judge(&named, code, &err, &dir, took));
            }
        }
    }
    let _ = fs::remove_dir_all(&work);
    problems
}

#[test]
fn every_single_field_mutation_ends_in_an_outcome_or_one_error_line() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let base_run: PathBuf = tmp.path().join("base");
    let out = Command::new(DRILL).args(["run", "--seed", "3", "--profile", "lite", "--out", base_run.to_str().unwrap()]).output().unwrap();
    assert!([0, 1, 3].contains(&out.status.code().unwrap()), "{}", String::from_utf8_lossy(&out.stderr));
    let mut plan: Value = serde_json::from_str(&fs::read_to_string(base_run.join("plan.json")).unwrap()).unwrap();
    // A real plan cut to a few operations, so that the mutations that validate run quickly.
    plan["ops"].as_array_mut().unwrap().truncate(6);
    let summary: Value = serde_json::from_str(&fs::read_to_string(base_run.join("summary.json")).unwrap()).unwrap();
    let trace = fs::read_to_string(base_run.join("trace.jsonl")).unwrap();

    let mut cases = mutations(&plan, Target::Plan, "plan");
    // A drill's plan under swarm: every field of its own parts (the drill, its busy world, the
    // background faults) mutated as well.
    let drill_run = tmp.path().join("drill");
    let args = ["run", "--scenario", "003-4-pull-cursor-regression", "--seed", "3", "--profile", "swarm", "--out", drill_run.to_str().unwrap()];
    let out = Command::new(DRILL).args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let drill_plan: Value = serde_json::from_str(&fs::read_to_string(drill_run.join("plan.json")).unwrap()).unwrap();
    assert!(drill_plan["drill"]["busy"].is_object() && !drill_plan["faults"].as_array().unwrap().is_empty(), "{drill_plan}");
    let own = |c: &Case| ["drill plan.drill", "drill plan.faults"].iter().any(|p| c.name.starts_with(p));
    cases.extend(mutations(&drill_plan, Target::Plan, "drill plan").into_iter().filter(own));
    cases.extend(mutations(&summary, Target::Summary, "summary"));
    cases.extend(trace_mutations(&trace));
    assert!(cases.len() >= 300, "only {} mutations", cases.len());

    let next = AtomicUsize::new(0);
    let problems = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..PARALLEL {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(case) = cases.get(i) else { return };
                let found = check_case(tmp.path(), &base_run, i, case);
                problems.lock().unwrap().extend(found);
            });
        }
    });
    let problems = problems.into_inner().unwrap();
    eprintln!("{} mutations in {:.1} s", cases.len(), started.elapsed().as_secs_f64());
    assert!(problems.is_empty(), "{} of {} mutations broke drill:\n{}", problems.len(), cases.len(), problems.join("\n"));
}

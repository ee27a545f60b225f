//! `drill replay DIR`: run a run folder's plan.json again and check that the same thing happens.
//!
//! The replay runs in memory (no `out_dir`), so nothing in the folder is written; it is compared
//! with the folder's summary.json (plan hash, fingerprint, outcome) and, line by line, with its
//! trace.jsonl. A folder whose trace is missing, empty, cut or not JSON lines is refused (exit
//! code 2) before the replay runs.

use std::path::Path;

use drill_reports::Summary;
use drill_scenarios::{RunReport, RunRequest, RunSource};

use crate::cli::ReplayArgs;
use crate::diff::{file_fingerprint, first_difference, trace_lines, LineDiff};
use crate::error::CliError;
use crate::input::{read_limited, read_trace, PLAN_BYTES_MAX};
use crate::runfiles::{folder_replay, read_json, DRILL_VERSION, PLAN_FILE, SUMMARY_FILE, TRACE_FILE};

/// Exit code when the replay differs from the folder.
const EXIT_NONDETERMINISM: i32 = 4;

/// Replays the folder; exit code 4 on any difference, else the run's outcome's code.
pub fn replay(args: ReplayArgs) -> Result<i32, CliError> {
    let dir = args.dir.as_path();
    let (summary, plan) = read_folder(dir)?;
    println!(
        "drill {DRILL_VERSION} replay {}: seed {} plan {} profile {} scenario {}",
        dir.display(),
        summary.seed,
        summary.plan_hash,
        summary.profile,
        summary.scenario
    );
    let report = drill_scenarios::run(&RunRequest { source: RunSource::Plan(plan), out_dir: None })?;
    let comparison = compare(dir, &summary, &report)?;
    let again = folder_replay(dir);
    if comparison.matches() {
        match &comparison.other_build {
            Some(build) => println!("replay matches line for line, but for the build named on line 1: the folder was written by {build}"),
            None => println!("replay matches: fingerprint {}, {} trace lines", report.fingerprint, report.trace.len()),
        }
        let outcome = report.outcome;
        println!("outcome: {outcome} | replay: {again}");
        return Ok(outcome.exit_code());
    }
    comparison.print(dir, &summary);
    println!("outcome: nondeterminism (the replay differs from {}) | replay: {again}", dir.display());
    Ok(EXIT_NONDETERMINISM)
}

/// The folder's summary and the text of its plan, once its trace is checked whole: a folder
/// whose trace is missing, empty, cut or malformed has nothing to compare a replay with.
fn read_folder(dir: &Path) -> Result<(Summary, String), CliError> {
    let meta = std::fs::metadata(dir).map_err(|e| CliError::io("cannot read replay folder", dir, e))?;
    if !meta.is_dir() {
        return Err(CliError::new(format!("{} is not a run folder", dir.display())));
    }
    let summary: Summary = read_json(&dir.join(SUMMARY_FILE))?;
    let plan = read_limited(&dir.join(PLAN_FILE), PLAN_BYTES_MAX, "plan file")?;
    let trace = dir.join(TRACE_FILE);
    if !trace.exists() {
        return Err(CliError::new(format!("{} has no {TRACE_FILE} to compare the replay with", dir.display())));
    }
    read_trace(&trace, Some(summary.trace_lines).filter(|n| *n > 0))?;
    Ok((summary, plan))
}

/// What differs between the folder and the replay.
#[derive(Default)]
struct Comparison {
    /// One line per differing item of summary.json or trace.jsonl.
    problems: Vec<String>,
    /// Where trace.jsonl first departs from the replay's trace.
    first_diff: Option<LineDiff>,
    /// Set when the traces differ only in the build named on the first line.
    other_build: Option<String>,
}

impl Comparison {
    fn matches(&self) -> bool {
        self.problems.is_empty()
    }

    fn print(&self, dir: &Path, summary: &Summary) {
        println!("replay differs from {}:", dir.display());
        for problem in &self.problems {
            println!("  {problem}");
        }
        match &self.first_diff {
            Some(diff) => println!("{}", diff.describe("replay", TRACE_FILE)),
            None => println!("{TRACE_FILE} matches the replay line for line"),
        }
        if summary.drill_version != DRILL_VERSION {
            println!(
                "note: the folder was written by drill {}; this is drill {DRILL_VERSION}",
                if summary.drill_version.is_empty() { "(unknown)" } else { &summary.drill_version }
            );
        }
    }
}

/// When two traces differ only in the `version` and `commit` of their first line, the build
/// that wrote the recorded one.
fn only_the_build_differs(replayed: &[String], recorded: &[String]) -> Option<String> {
    if replayed.len() != recorded.len() || replayed.is_empty() || replayed[1..] != recorded[1..] || replayed[0] == recorded[0] {
        return None;
    }
    let strip = |line: &str| -> Option<(serde_json::Value, String)> {
        let mut v: serde_json::Value = serde_json::from_str(line).ok()?;
        let d = v.get_mut("detail")?.as_object_mut()?;
        let build = format!("drill {} at commit {}", d.remove("version")?.as_str().unwrap_or("?"), d.remove("commit")?.as_str().unwrap_or("?"));
        Some((v, build))
    };
    let (a, _) = strip(&replayed[0])?;
    let (b, build) = strip(&recorded[0])?;
    (a == b).then_some(build)
}

fn compare(dir: &Path, summary: &Summary, report: &RunReport) -> Result<Comparison, CliError> {
    let mut c = Comparison::default();
    let mut differs = |what: &str, folder: &str, replay: &str| {
        if folder != replay {
            c.problems.push(format!("{what}: {SUMMARY_FILE} has {folder}, the replay has {replay}"));
        }
    };
    differs("plan hash", &summary.plan_hash, &report.plan_hash);
    differs("fingerprint", &summary.fingerprint, &report.fingerprint);
    differs("outcome", summary.outcome.as_str(), report.outcome.as_str());
    let trace = dir.join(TRACE_FILE);
    let recorded: Vec<String> = trace_lines(&trace)?.collect();
    if let Some(build) = only_the_build_differs(&report.trace, &recorded) {
        // Another build of drill ran the same world: everything that happened is identical.
        c.problems.retain(|p| !p.starts_with("fingerprint"));
        c.other_build = Some(build);
        return Ok(c);
    }
    // Bytes first: the fingerprint is `sha256sum trace.jsonl`, so any edit at all shows here.
    if file_fingerprint(&trace)? != report.fingerprint {
        c.problems.push(format!("{TRACE_FILE} does not hash to the replay's fingerprint"));
        c.first_diff = first_difference(report.trace.iter().cloned(), trace_lines(&trace)?);
    }
    Ok(c)
}

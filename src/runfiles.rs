//! The run folder's files as the CLI sees them: `summary.json` built from a run's report, the
//! replay commands it names, and reading and writing summaries.

use std::path::Path;

use drill_reports::{Summary, Violation, FORMAT_VERSION};
use drill_scenarios::RunReport;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::CliError;
use crate::input::{read_json_limited, read_limited, SUMMARY_BYTES_MAX, TRACE_BYTES_MAX};

/// The files a run folder holds; `trace.jsonl` and `plan.json` are written by the run itself.
pub const RUN_FILES: [&str; 4] = [TRACE_FILE, PLAN_FILE, SUMMARY_FILE, REPORT_FILE];
pub const TRACE_FILE: &str = "trace.jsonl";
pub const PLAN_FILE: &str = "plan.json";
pub const SUMMARY_FILE: &str = "summary.json";
/// The run's timeline page (a sweep's or gate's dashboard has the same name).
pub const REPORT_FILE: &str = "report.html";

/// This build's version, as written into summaries and printed on every first line.
pub const DRILL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The summary of one finished run; `replay` is the command that runs it again.
pub fn summary_of(report: &RunReport, replay: String) -> Summary {
    Summary {
        format_version: FORMAT_VERSION,
        drill_version: DRILL_VERSION.to_string(),
        seed: report.seed,
        scenario: report.scenario.clone(),
        profile: report.profile.to_string(),
        outcome: report.outcome,
        violations: report.violations.iter().map(violation_of).collect(),
        fingerprint: report.fingerprint.clone(),
        plan_hash: report.plan_hash.clone(),
        faults: report.faults.clone(),
        checks: report.checks.clone(),
        sim_time_ms: report.sim_time_ms,
        steps: report.steps,
        trace_lines: report.trace.len() as u64,
        replay,
        drills: report.drills.clone(),
        mutations: report.mutations.clone(),
    }
}

fn violation_of(v: &drill_scenarios::Violation) -> Violation {
    Violation { invariant: v.invariant.clone(), node: v.node.clone(), trace_line: v.trace_line, message: v.message.clone() }
}

/// `drill run --seed N --scenario S --profile P`, quoted for a POSIX shell.
pub fn seed_replay(seed: u64, scenario: &str, profile: &str) -> String {
    let seed = seed.to_string();
    shell_words(&["drill", "run", "--seed", &seed, "--scenario", scenario, "--profile", profile])
}

/// `drill run --plan FILE`, quoted for a POSIX shell.
pub fn plan_replay(plan: &Path) -> String {
    shell_words(&["drill", "run", "--plan", &plan.to_string_lossy()])
}

/// `drill replay DIR`, quoted for a POSIX shell.
pub fn folder_replay(dir: &Path) -> String {
    shell_words(&["drill", "replay", &dir.to_string_lossy()])
}

fn shell_words(words: &[&str]) -> String {
    // Quoting fails only on NUL bytes, which command-line arguments cannot hold.
    shlex::try_join(words.iter().copied()).unwrap_or_else(|_| words.join(" "))
}

/// Writes the run folder's report.html from its trace lines and summary.
pub fn write_timeline(dir: &Path, summary: &Summary, trace: &[String]) -> Result<(), CliError> {
    let html = drill_reports::render_timeline(Some(summary), trace);
    write_atomic(&dir.join(REPORT_FILE), html.as_bytes())
}

/// Writes the report.html of a run folder a sweep or gate kept, from the trace.jsonl (and
/// summary.json, if any) in it. The trace may be cut short: the run may have died writing it.
pub fn write_timeline_from(dir: &Path) -> Result<(), CliError> {
    let trace_path = dir.join(TRACE_FILE);
    let text = read_limited(&trace_path, TRACE_BYTES_MAX, "trace")?;
    let trace: Vec<String> = text.lines().map(str::to_string).collect();
    let summary_path = dir.join(SUMMARY_FILE);
    let summary: Option<Summary> = if summary_path.exists() { Some(read_json(&summary_path)?) } else { None };
    let html = drill_reports::render_timeline(summary.as_ref(), &trace);
    write_atomic(&dir.join(REPORT_FILE), html.as_bytes())
}

/// Writes `value` as pretty JSON to `path`, atomically ([`write_atomic`]).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), CliError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| CliError::new(format!("cannot encode {}: {e}", path.display())))?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Replaces `path` with `bytes` atomically: they are written beside it (`.NAME.drill-new`) and
/// renamed over it, so a reader, or a command interrupted here, sees the old file or the new,
/// never part of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let beside = path.with_file_name(format!(".{name}.drill-new"));
    let written = std::fs::write(&beside, bytes).and_then(|()| std::fs::rename(&beside, path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&beside);
        CliError::io("cannot write", path, e)
    })
}

/// Reads `path` as JSON of type `T` (at most [`SUMMARY_BYTES_MAX`] bytes of it).
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, CliError> {
    read_json_limited(path, SUMMARY_BYTES_MAX, "file")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_commands_quote_only_what_needs_it() {
        assert_eq!(seed_replay(7, "sync-basic", "swarm"), "drill run --seed 7 --scenario sync-basic --profile swarm");
        assert_eq!(folder_replay(Path::new("drill-out/run-7")), "drill replay drill-out/run-7");
        assert_eq!(plan_replay(Path::new("my runs/plan.json")), "drill run --plan 'my runs/plan.json'");
    }
}

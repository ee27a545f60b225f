//! `drill timeline DIR`: (re)build a run folder's report.html from its trace.jsonl.
//!
//! The trace (and summary.json, when there is one) is checked whole before anything is written,
//! so an empty, cut or malformed trace is refused with exit code 2 and the folder's report.html
//! stays as it was; the new page replaces the old one atomically.

use drill_reports::Summary;

use crate::cli::TimelineArgs;
use crate::error::CliError;
use crate::input::read_trace;
use crate::outdir;
use crate::runfiles::{read_json, write_atomic, REPORT_FILE, SUMMARY_FILE, TRACE_FILE};

/// Writes DIR/report.html; exit code 0, or 2 when DIR holds no whole trace.
pub fn timeline(args: TimelineArgs) -> Result<i32, CliError> {
    let dir = &args.dir;
    // A trace that exists but is not a regular file is refused by `read_trace`, by that name.
    if !dir.join(TRACE_FILE).exists() {
        return Err(CliError::new(format!("{} is not a run folder (it has no {TRACE_FILE})", dir.display())));
    }
    let claim = outdir::claim(dir, "drill timeline", |_, _| Ok(()))?;
    let summary_path = dir.join(SUMMARY_FILE);
    let summary: Option<Summary> = if summary_path.exists() { Some(read_json(&summary_path)?) } else { None };
    let trace = read_trace(&dir.join(TRACE_FILE), summary.as_ref().map(|s| s.trace_lines).filter(|n| *n > 0))?;
    let html = drill_reports::render_timeline(summary.as_ref(), &trace);
    write_atomic(&dir.join(REPORT_FILE), html.as_bytes())?;
    drop(claim);
    println!("timeline: {}", dir.join(REPORT_FILE).display());
    Ok(0)
}

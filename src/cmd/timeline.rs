//! `drill timeline DIR`: (re)build a run folder's report.html from its trace.jsonl.

use crate::cli::TimelineArgs;
use crate::error::CliError;
use crate::runfiles::{write_timeline_from, REPORT_FILE, TRACE_FILE};

/// Writes DIR/report.html; exit code 0, or 2 when DIR holds no trace.
pub fn timeline(args: TimelineArgs) -> Result<i32, CliError> {
    let dir = &args.dir;
    if !dir.join(TRACE_FILE).is_file() {
        return Err(CliError::new(format!("{} is not a run folder (it has no {TRACE_FILE})", dir.display())));
    }
    write_timeline_from(dir)?;
    println!("timeline: {}", dir.join(REPORT_FILE).display());
    Ok(0)
}

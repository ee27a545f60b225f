//! The release gate's wall time, as a user runs it: a fresh `drill gate --seeds N` process (its
//! own worker pool, every drill of the registry, the swarm sweep, the determinism sample), into
//! a scratch folder that the bench removes after. Reported: its wall time, the CPU time of the
//! process and its workers, and its exit code (0 when it passed).

use std::path::Path;
use std::process::{Command, Stdio};

use serde::Serialize;

use crate::bench::{measured, Budget, Who};
use crate::error::CliError;

/// What the gate cost.
#[derive(Debug, Clone, Serialize)]
pub struct GateResult {
    /// The command, as a user would type it.
    pub command: String,
    pub seeds: u64,
    pub wall_seconds: f64,
    /// User plus system CPU seconds of the gate and its workers.
    pub cpu_seconds: f64,
    /// The gate's exit code (0: every run passed and every drill and invariant was covered).
    pub exit_code: i32,
}

/// Runs the gate of `budget` in a fresh process with its output under `work`; `None` when the
/// budget leaves the gate out.
pub fn measure(budget: &Budget, work: &Path) -> Result<Option<GateResult>, CliError> {
    if budget.gate_seeds == 0 {
        return Ok(None);
    }
    let exe = std::env::current_exe().map_err(|e| CliError::new(format!("cannot find drill's own executable: {e}")))?;
    let out = work.join("gate");
    let args: Vec<String> = [
        "gate".to_string(),
        "--seeds".into(),
        budget.gate_seeds.to_string(),
        "--drill-seeds".into(),
        budget.gate_drill_seeds.to_string(),
        "--determinism-seeds".into(),
        budget.gate_determinism_seeds.to_string(),
        "--out".into(),
        out.display().to_string(),
    ]
    .into();
    let (status, took) = measured(Who::Children, || Command::new(&exe).args(&args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status());
    let status = status.map_err(|e| CliError::io("cannot start", &exe, e))?;
    let _ = std::fs::remove_dir_all(&out);
    let shown: Vec<&str> = args.iter().take(args.len() - 2).map(String::as_str).collect();
    Ok(Some(GateResult {
        command: format!("drill {}", shown.join(" ")),
        seeds: budget.gate_seeds,
        wall_seconds: took.wall.as_secs_f64(),
        cpu_seconds: took.cpu_seconds,
        exit_code: status.code().unwrap_or(-1),
    }))
}

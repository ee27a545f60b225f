//! Peak memory of a process running standard seeds one after another, as a sweep worker does.
//!
//! The bench starts a fresh `drill bench --probe memory` process, so that nothing the bench
//! itself allocated counts. The probe reads its own peak resident set size
//! (`getrusage(RUSAGE_SELF).ru_maxrss`) before any run, after the first seed and after the last,
//! and prints them as one JSON line. The first seed's rise is what one seed costs; a rise from
//! the first seed to the last would be memory that runs keep (a leak, or a cache that grows).
//!
//! On Linux a process's `ru_maxrss` starts from its parent's peak at the fork (the kernel carries
//! it across `exec`), so the bench runs the probe before anything else, while it is itself small;
//! the baseline is then the larger of the bench's start-up size and the probe's own.

use std::process::Command;

use drill_scenarios::{RunRequest, RunSource};
use serde::{Deserialize, Serialize};

use crate::bench::seeds::{PROFILE, SCENARIO};
use crate::bench::Who;
use crate::error::CliError;

/// The `--probe` name of this measurement.
pub const PROBE: &str = "memory";

/// What the probe saw, in KiB of peak resident set size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryResult {
    pub method: String,
    pub seeds: u64,
    pub baseline_kib: u64,
    pub after_first_seed_kib: u64,
    pub after_all_seeds_kib: u64,
    /// Peak growth per seed after the first: `(after_all - after_first) / (seeds - 1)`.
    pub growth_kib_per_seed: f64,
}

/// Runs the probe in a fresh process and reads its answer.
pub fn measure(seeds: u64) -> Result<MemoryResult, CliError> {
    let exe = std::env::current_exe().map_err(|e| CliError::new(format!("cannot find drill's own executable: {e}")))?;
    let seeds_arg = seeds.to_string();
    let out = Command::new(&exe).args(["bench", "--probe", PROBE, "--seeds", &seeds_arg]).output().map_err(|e| CliError::io("cannot start", &exe, e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(CliError::new(format!("the memory probe failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr))));
    }
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| CliError::new(format!("the memory probe answered {line:?}: {e}")))
}

/// The probe's side: runs seeds `1..=seeds` here and prints what it saw.
pub fn probe(seeds: u64) -> Result<i32, CliError> {
    let seeds = seeds.max(1);
    let baseline_kib = peak_rss_kib()?;
    let mut after_first_seed_kib = baseline_kib;
    for seed in 1..=seeds {
        let request = RunRequest { source: RunSource::Seed { seed, scenario: SCENARIO.to_string(), profile: PROFILE }, out_dir: None };
        drill_scenarios::run(&request)?;
        if seed == 1 {
            after_first_seed_kib = peak_rss_kib()?;
        }
    }
    let after_all_seeds_kib = peak_rss_kib()?;
    let growth = if seeds > 1 { after_all_seeds_kib.saturating_sub(after_first_seed_kib) as f64 / (seeds - 1) as f64 } else { 0.0 };
    let result = MemoryResult {
        method: "peak RSS (getrusage RUSAGE_SELF ru_maxrss) of a fresh process running the seeds in turn, without run files".to_string(),
        seeds,
        baseline_kib,
        after_first_seed_kib,
        after_all_seeds_kib,
        growth_kib_per_seed: growth,
    };
    let line = serde_json::to_string(&result).map_err(|e| CliError::new(format!("cannot encode the probe's answer: {e}")))?;
    println!("{line}");
    Ok(0)
}

fn peak_rss_kib() -> Result<u64, CliError> {
    crate::bench::peak_rss_kib(Who::This).ok_or_else(|| CliError::new(format!("getrusage failed: {}", std::io::Error::last_os_error())))
}

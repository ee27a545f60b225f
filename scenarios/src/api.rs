//! The entry point the CLI uses: run one world from a seed or a plan and report what happened.
//!
//! This is the contract between the scenarios crate and its callers (the `drill` CLI, the
//! integration tests, the bench). Everything a run decides comes from the seed or the plan.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::plan::Profile;

/// Where a run starts from.
#[derive(Debug, Clone)]
pub enum RunSource {
    /// Build the plan from a seed, for a named scenario and fault profile.
    Seed { seed: u64, scenario: String, profile: Profile },
    /// Run a plan exactly as written (the text of a `plan.json`).
    Plan(String),
}

/// One run to perform.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub source: RunSource,
    /// When set, `trace.jsonl` is written there line by line as the run goes, and `plan.json`
    /// before the world starts. The folder must exist.
    pub out_dir: Option<PathBuf>,
}

/// The verdict of one run: the file formats' type, so callers write it as it is.
pub use drill_reports::Outcome;

/// One drill's line of the coverage table, and one planted bug with its firings (the file
/// format's types).
pub use drill_reports::{DrillCoverage, PlantedBug};

/// One broken invariant (the model's type).
pub use drill_model::Violation;

/// Everything a caller needs to write `summary.json` and decide the exit code.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub seed: u64,
    pub scenario: String,
    pub profile: Profile,
    pub outcome: Outcome,
    pub violations: Vec<Violation>,
    /// Hex SHA-256 over the trace lines (each line plus `\n`).
    pub fingerprint: String,
    /// Faults injected, counted by kind (`crash`, `partition`, `disk.torn`, ...).
    pub faults: BTreeMap<String, u64>,
    /// Invariant checks that had something to check, counted by invariant id.
    pub checks: BTreeMap<String, u64>,
    /// Simulated time the run took, in milliseconds.
    pub sim_time_ms: u64,
    /// Workload operations issued.
    pub steps: u64,
    /// The hash of the plan (hex SHA-256 of its canonical JSON).
    pub plan_hash: String,
    /// The plan as canonical JSON, as written to `plan.json`.
    pub plan_json: String,
    /// Every trace line, without trailing newlines.
    pub trace: Vec<String>,
    /// The drill coverage table: the drill this run ran (or, in a swarm run, picked), whether
    /// it was exercised and whether it passed.
    pub drills: BTreeMap<String, DrillCoverage>,
    /// The plan's planted bugs and how often each fired, in the plan's order.
    pub mutations: Vec<PlantedBug>,
}

/// Bad input: the caller exits 2 with this message on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    UnknownScenario(String),
    UnknownProfile(String),
    MalformedPlan(String),
    Io(String),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::UnknownScenario(s) => {
                write!(f, "unknown scenario '{s}' (see `drill list`)")
            }
            RunError::UnknownProfile(p) => {
                write!(f, "unknown profile '{p}' (expected none, lite or swarm)")
            }
            RunError::MalformedPlan(why) => write!(f, "malformed plan: {why}"),
            RunError::Io(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for RunError {}

/// A named thing `drill list` shows.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub name: &'static str,
    pub description: &'static str,
}

//! The command line, as clap derive types. Values are checked here so that every bad value is
//! reported the same way (one `error:` line, exit code 2) before anything runs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use drill_reports::SeedRange;

use crate::seeds;

/// Deterministic simulation and fault-injection testing: one seed builds a world, runs it, and
/// writes a trace that replays byte for byte.
///
/// Exit codes: 0 pass, 1 invariant violated, 2 bad input, 3 liveness, 4 nondeterminism.
#[derive(Debug, Parser)]
#[command(name = "drill", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What drill does.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one seed (or one plan file) and write its run folder.
    Run(RunArgs),
    /// Run a range of seeds in parallel worker processes; keep a folder per failing seed.
    Sweep(SweepArgs),
    /// Run every seed twice and compare the traces.
    CheckDeterminism(DeterminismArgs),
    /// Run a run folder's plan.json again and compare with its trace and summary.
    Replay(ReplayArgs),
    /// List the scenarios and fault profiles.
    List(ListArgs),
    /// Internal: run the seeds read from stdin, one JSON answer a line (used by sweeps).
    #[command(name = "__worker", hide = true)]
    Worker(WorldArgs),
}

/// The world a seed builds: which workload and which faults.
#[derive(Debug, Clone, Args)]
pub struct WorldArgs {
    /// Workload to run (see `drill list`).
    #[arg(long, value_name = "NAME", default_value = "sync-basic", value_parser = parse_scenario)]
    pub scenario: String,
    /// Fault profile (see `drill list`).
    #[arg(long, value_name = "NAME", default_value = "swarm", value_parser = parse_profile)]
    pub profile: String,
}

/// `drill run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The seed that builds the world.
    #[arg(long, required_unless_present = "plan", value_parser = seeds::parse_seed, allow_negative_numbers = true)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub world: WorldArgs,
    /// Run this plan.json instead of building one from a seed.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["seed", "scenario", "profile"])]
    pub plan: Option<PathBuf>,
    /// Run folder [default: drill-out/run-SEED, or drill-out/plan-HASH for --plan].
    /// A previous run's folder is replaced; any other non-empty folder is refused.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Options shared by commands that run many seeds.
#[derive(Debug, Args)]
pub struct ManyArgs {
    /// Seeds to run: A..B excludes B (0..100 is 100 seeds), A..=B includes it.
    #[arg(long, value_name = "A..B", value_parser = seeds::parse_seed_range, allow_hyphen_values = true)]
    pub seeds: SeedRange,
    #[command(flatten)]
    pub world: WorldArgs,
    /// Worker processes [default: number of CPUs].
    #[arg(long, value_name = "J", value_parser = parse_jobs)]
    pub jobs: Option<usize>,
}

/// `drill sweep`.
#[derive(Debug, Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub many: ManyArgs,
    /// Sweep folder: summary.json plus seed-N/ for each failing seed. A previous sweep's folder
    /// is replaced; any other non-empty folder is refused.
    #[arg(long, value_name = "DIR", default_value = "drill-out/sweep")]
    pub out: PathBuf,
}

/// `drill check-determinism`.
#[derive(Debug, Args)]
pub struct DeterminismArgs {
    #[command(flatten)]
    pub many: ManyArgs,
}

/// `drill replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A run folder holding plan.json, summary.json and trace.jsonl. Nothing in it is changed.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// `drill list`. Flags for further lists (invariants, drills) belong here.
#[derive(Debug, Args)]
pub struct ListArgs {}

fn parse_scenario(name: &str) -> Result<String, String> {
    known(
        name,
        drill_scenarios::scenarios(),
        drill_scenarios::RunError::UnknownScenario,
    )
}

fn parse_profile(name: &str) -> Result<String, String> {
    known(
        name,
        drill_scenarios::profiles(),
        drill_scenarios::RunError::UnknownProfile,
    )
}

/// Accepts `name` if the registry lists it, with the scenarios crate's own wording otherwise.
fn known(
    name: &str,
    entries: &[drill_scenarios::Entry],
    unknown: fn(String) -> drill_scenarios::RunError,
) -> Result<String, String> {
    if entries.iter().any(|e| e.name == name) {
        Ok(name.to_string())
    } else {
        Err(unknown(name.to_string()).to_string())
    }
}

fn parse_jobs(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("at least one worker is needed".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{text}' is not a number of workers")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_defaults_to_sync_basic_under_swarm() {
        let cli = Cli::try_parse_from(["drill", "run", "--seed", "7"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(
            (
                args.seed,
                args.world.scenario.as_str(),
                args.world.profile.as_str()
            ),
            (Some(7), "sync-basic", "swarm")
        );
    }

    #[test]
    fn a_plan_excludes_a_seed() {
        assert!(Cli::try_parse_from(["drill", "run", "--plan", "p.json", "--seed", "1"]).is_err());
        assert!(Cli::try_parse_from(["drill", "run", "--plan", "p.json"]).is_ok());
        assert!(Cli::try_parse_from(["drill", "run"]).is_err());
    }

    #[test]
    fn zero_jobs_is_refused() {
        assert!(Cli::try_parse_from(["drill", "sweep", "--seeds", "0..2", "--jobs", "0"]).is_err());
    }
}

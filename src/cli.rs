//! The command line, as clap derive types. Values are checked here so that every bad value is
//! reported the same way (one `error:` line, exit code 2) before anything runs.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use drill_reports::{SeedRange, Shard};
use drill_scenarios::Profile;

use crate::seeds;

/// Deterministic simulation and fault-injection testing: one seed builds a world, runs it, and
/// writes a trace that replays byte for byte.
///
/// Exit codes: 0 pass, 1 invariant violated, 2 bad input, 3 liveness, 4 nondeterminism,
/// 5 coverage shortfall (`drill gate` and `drill merge` of gates only).
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
    /// Minimise a failing run's plan: fewer clients, faults and operations, same failure.
    ///
    /// The smallest plan found that fails with the same outcome and first violated invariant
    /// goes to DIR/shrunk/ (plan.json, trace.jsonl, summary.json, report.html, shrink.json).
    /// Exit code: the shrunk run's (1 or 3); 4 when DIR's plan no longer fails as its summary
    /// says; 2 for a passing run or bad input.
    Shrink(ShrinkArgs),
    /// Build (or rebuild) a run folder's report.html timeline from its trace.
    Timeline(TimelineArgs),
    /// The release gate: a swarm sweep, every drill, a determinism sample and coverage checks.
    ///
    /// Exit codes: 0 pass, 1 invariant violated, 3 liveness, 4 nondeterminism (the worst run
    /// decides), 5 coverage shortfall (a drill not exercised and passed, an invariant never
    /// checked, or seeds left unrun when the time budget ran out), 2 bad input.
    Gate(GateArgs),
    /// Combine the summaries of sweeps or gates run as shards (or over adjacent seed ranges).
    Merge(MergeArgs),
    /// Measure drill's speed and memory on this machine; write bench.json.
    Bench(crate::cmd::bench::BenchArgs),
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
    pub profile: Profile,
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
    #[arg(long, value_name = "FILE", conflicts_with_all = ["seed", "scenario", "profile"], value_parser = Utf8Path)]
    pub plan: Option<PathBuf>,
    /// Run folder [default: drill-out/run-SEED, or drill-out/plan-HASH for --plan].
    /// A previous run's folder is replaced; any other non-empty folder is refused.
    #[arg(long, value_name = "DIR", value_parser = Utf8Path)]
    pub out: Option<PathBuf>,
    /// Print NDJSON (one JSON object a line: start, result) on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Options shared by commands that run many seeds.
#[derive(Debug, Args)]
pub struct ManyArgs {
    /// Seeds to run: A..B excludes B (0..100 is 100 seeds), A..=B includes it.
    #[arg(long, value_name = "A..B", value_parser = seeds::parse_seed_range, allow_hyphen_values = true)]
    pub seeds: SeedRange,
    #[command(flatten)]
    pub world: WorldArgs,
    /// Worker processes [default: number of CPUs; never more].
    #[arg(long, value_name = "J", value_parser = parse_jobs)]
    pub jobs: Option<usize>,
    /// Wall-clock time one seed may take before its worker is stopped and the seed reported
    /// as hung (SIM-NO-HANG), for example 90s or 10m.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub seed_timeout: Duration,
}

/// `drill sweep`.
#[derive(Debug, Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub many: ManyArgs,
    /// Sweep folder: summary.json plus seed-N/ for each failing seed. A previous sweep's folder
    /// is replaced; any other non-empty folder is refused.
    #[arg(long, value_name = "DIR", default_value = "drill-out/sweep", value_parser = Utf8Path)]
    pub out: PathBuf,
    /// Run only shard I of N: the seeds s of the range with s mod N = I - 1. Merge the shards'
    /// folders with `drill merge`.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<Shard>,
    /// Print NDJSON (start, one line per seed, result) on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `drill shrink`.
#[derive(Debug, Args)]
pub struct ShrinkArgs {
    /// A failing run folder (plan.json, summary.json). Its shrunk run goes to DIR/shrunk/.
    #[arg(value_name = "DIR", value_parser = Utf8Path)]
    pub dir: PathBuf,
    /// Runs at most, the original's confirmation and the final run included.
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = parse_positive)]
    pub max_runs: u64,
    /// Wall-clock time at most, for example 90s, 5m, 1h.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub time_budget: Option<Duration>,
    /// Worker processes [default: number of CPUs].
    #[arg(long, value_name = "J", value_parser = parse_jobs)]
    pub jobs: Option<usize>,
}

/// `drill timeline`.
#[derive(Debug, Args)]
pub struct TimelineArgs {
    /// A run folder holding trace.jsonl (and summary.json); report.html is written there.
    #[arg(value_name = "DIR", value_parser = Utf8Path)]
    pub dir: PathBuf,
}

/// Most seeds a gate runs twice for its determinism check.
pub const DETERMINISM_SEEDS_MAX: u64 = 10_000;

/// `drill gate`.
#[derive(Debug, Args)]
pub struct GateArgs {
    /// Swarm seeds 1..=N of the main scenario.
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = parse_positive)]
    pub seeds: u64,
    /// Seeds 1..=K of every drill of the registry (`drill list --drills`), each run under the
    /// `none` profile and under `swarm` (a busy world with background faults).
    #[arg(long, value_name = "K", default_value_t = 5, value_parser = parse_positive)]
    pub drill_seeds: u64,
    /// Seeds on which each drill must be exercised and passed under each profile (at most K)
    /// [default: 3, or K when K is smaller].
    #[arg(long, value_name = "M", value_parser = parse_positive)]
    pub drill_min: Option<u64>,
    /// Seeds of the sweep run a second time to check determinism, spread over the range
    /// (0 to 10000).
    #[arg(long, value_name = "M", default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=DETERMINISM_SEEDS_MAX))]
    pub determinism_seeds: u64,
    /// Stop starting runs after this much wall-clock time (for example 10m); seeds left unrun
    /// are a coverage shortfall (exit code 5).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub time_budget: Option<Duration>,
    /// Gate folder: summary.json, junit.xml, report.md, report.html, failing runs' folders.
    #[arg(long, value_name = "DIR", default_value = "drill-out/gate", value_parser = Utf8Path)]
    pub out: PathBuf,
    /// Worker processes [default: number of CPUs; never more].
    #[arg(long, value_name = "J", value_parser = parse_jobs)]
    pub jobs: Option<usize>,
    /// Wall-clock time one run may take before its worker is stopped and the run reported as
    /// hung (SIM-NO-HANG), for example 90s or 10m.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub seed_timeout: Duration,
    /// Run only shard I of N (every seed s with s mod N = I - 1, drills and samples included);
    /// coverage is then judged by `drill merge` of all shards.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<Shard>,
    /// Print NDJSON (start, one line per run, result) on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `drill merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Sweep or gate folders, each with its summary.json: all shards of one run, or sweeps of
    /// adjacent seed ranges.
    #[arg(value_name = "DIR", required = true, num_args = 1.., value_parser = Utf8Path)]
    pub dirs: Vec<PathBuf>,
    /// Folder for the merged summary.json (and, for gates, junit.xml and reports).
    #[arg(long, value_name = "DIR", default_value = "drill-out/merged", value_parser = Utf8Path)]
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
    #[arg(value_name = "DIR", value_parser = Utf8Path)]
    pub dir: PathBuf,
}

/// `drill list`. Flags for further lists (invariants, drills) belong here.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// List the invariants the reference model checks: id, runbook source, statement, where.
    #[arg(long)]
    pub invariants: bool,
    /// List the runbook drills: id, runbook section, title and recovery steps.
    #[arg(long, conflicts_with = "invariants")]
    pub drills: bool,
}

fn parse_scenario(name: &str) -> Result<String, String> {
    known(name, drill_scenarios::scenarios(), drill_scenarios::RunError::UnknownScenario)
}

fn parse_profile(name: &str) -> Result<Profile, String> {
    drill_scenarios::profile(name).map_err(|e| e.to_string())
}

/// Accepts `name` if the registry lists it, with the scenarios crate's own wording otherwise.
fn known(name: &str, entries: &[drill_scenarios::Entry], unknown: fn(String) -> drill_scenarios::RunError) -> Result<String, String> {
    if entries.iter().any(|e| e.name == name) {
        Ok(name.to_string())
    } else {
        Err(unknown(name.to_string()).to_string())
    }
}

/// A path argument: UTF-8 and not empty ([`crate::input::parse_path`]).
#[derive(Debug, Clone, Copy)]
pub struct Utf8Path;

impl clap::builder::TypedValueParser for Utf8Path {
    type Value = PathBuf;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &std::ffi::OsStr) -> Result<PathBuf, clap::Error> {
        crate::input::parse_path(value).map_err(|why| {
            let name = arg.map(|a| a.to_string()).unwrap_or_else(|| "a path".to_string());
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("invalid value for '{name}': {why}\n")).with_cmd(cmd)
        })
    }
}

fn parse_jobs(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("at least one worker is needed".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{text}' is not a number of workers")),
    }
}

fn parse_positive(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{text}' is not a whole number")),
    }
}

/// `90s`, `5m`, `1h 30m`, as humantime reads them.
fn parse_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d.is_zero() => Err("a time budget must be more than zero".to_string()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("'{text}' is not a duration like 90s, 5m or 1h ({e})")),
    }
}

/// `I/N` with 1 <= I <= N.
fn parse_shard(text: &str) -> Result<Shard, String> {
    let bad = || format!("expected a shard I/N with 1 <= I <= N, got '{text}'");
    let (i, n) = text.trim().split_once('/').ok_or_else(bad)?;
    let (index, count) = (i.parse::<u64>(), n.parse::<u64>());
    match (index, count) {
        (Ok(index), Ok(count)) if index >= 1 && index <= count => Ok(Shard { index, count }),
        _ => Err(bad()),
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
        let Command::Run(args) = cli.command else { panic!("not run") };
        assert_eq!((args.seed, args.world.scenario.as_str(), args.world.profile.as_str()), (Some(7), "sync-basic", "swarm"));
    }

    #[test]
    fn a_plan_excludes_a_seed() {
        assert!(Cli::try_parse_from(["drill", "run", "--plan", "p.json", "--seed", "1"]).is_err());
        assert!(Cli::try_parse_from(["drill", "run", "--plan", "p.json"]).is_ok());
        assert!(Cli::try_parse_from(["drill", "run"]).is_err());
    }

    #[test]
    fn shards_and_budgets_are_checked() {
        assert_eq!(parse_shard("2/4"), Ok(Shard { index: 2, count: 4 }));
        for bad in ["0/4", "5/4", "1", "a/b", "1/0", "-1/2"] {
            assert!(parse_shard(bad).is_err(), "accepted {bad}");
        }
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("0s").is_err() && parse_duration("soon").is_err());
    }

    #[test]
    fn paths_must_be_utf8() {
        use std::os::unix::ffi::OsStrExt;
        let bad = std::ffi::OsStr::from_bytes(b"out\xff");
        let args: Vec<&std::ffi::OsStr> = ["drill", "sweep", "--seeds", "0..2", "--out"].iter().map(std::ffi::OsStr::new).chain([bad]).collect();
        assert!(Cli::try_parse_from(args).is_err());
        assert!(Cli::try_parse_from(["drill", "timeline", ""]).is_err());
    }

    #[test]
    fn zero_jobs_is_refused() {
        assert!(Cli::try_parse_from(["drill", "sweep", "--seeds", "0..2", "--jobs", "0"]).is_err());
    }
}

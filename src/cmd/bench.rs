//! `drill bench`: drill's speed, measured side by side on this machine in one run — the standard
//! swarm run through the worker pool, the store's commit on the simulated disk against
//! `:memory:` and a real file, how a run's cost grows with operations and devices, and peak
//! memory per seed — printed as a table with the targets, and written to `bench.json`.
//!
//! See docs/bench.md for what each number means and how to profile a run.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::bench::report::{self, BenchReport, Machine, Standard};
use crate::bench::{memory, scale, seeds, store, timed, Budget};
use crate::error::CliError;
use crate::outdir;
use crate::runfiles::{read_json, write_json, DRILL_VERSION};

/// The file a bench writes.
pub const BENCH_FILE: &str = "bench.json";
/// Scratch folder, inside the output folder, for the sweeps' run folders and the real file.
const WORK_DIR: &str = ".drill-bench-work";

/// `drill bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A small budget that finishes in seconds: a smoke check of every measurement, not numbers
    /// to quote.
    #[arg(long)]
    pub quick: bool,
    /// Folder for bench.json (a previous bench.json there is replaced).
    #[arg(long, value_name = "DIR", default_value = ".", value_parser = crate::cli::Utf8Path)]
    pub out: PathBuf,
    /// Internal: a tiny budget of N standard seeds, for tests.
    #[arg(long, hide = true, value_name = "N")]
    pub seeds: Option<u64>,
    /// Internal: take one measurement in this process and print it as JSON (the bench runs its
    /// memory measurement in a fresh process this way).
    #[arg(long, hide = true, value_name = "KIND")]
    pub probe: Option<String>,
}

/// Runs every measurement, prints the table and writes bench.json. Exits 0 whatever the targets
/// say; 1 when a run the bench made did not pass (the numbers are then of a broken build).
pub fn bench(args: BenchArgs) -> Result<i32, CliError> {
    let (budget, name) = match (args.seeds, args.quick) {
        (Some(n), _) => (Budget::tiny(n), "tiny"),
        (None, true) => (Budget::QUICK, "quick"),
        (None, false) => (Budget::FULL, "full"),
    };
    if let Some(kind) = &args.probe {
        return match kind.as_str() {
            memory::PROBE => memory::probe(budget.memory_seeds),
            other => Err(CliError::new(format!("unknown probe '{other}'"))),
        };
    }
    let target = args.out.join(BENCH_FILE);
    refuse_foreign(&target)?;
    let work = args.out.join(WORK_DIR);
    outdir::create(&work)?;
    println!(
        "drill {DRILL_VERSION} bench ({name}): standard seeds {}, scaling seeds {}, commits {}",
        budget.standard_seeds, budget.scale_seeds, budget.commits
    );
    let (report, wall) = timed(|| measure_all(budget, name, &work));
    let _ = std::fs::remove_dir_all(&work);
    let mut report = report?;
    report.wall_seconds = wall.as_secs_f64();
    write_json(&target, &report)?;
    print!("\n{}", report.table());
    println!("bench.json: {}", target.display());
    if report.all_runs_passed() {
        Ok(0)
    } else {
        println!("warning: some runs did not pass; these numbers are of a build that fails its own checks");
        Ok(1)
    }
}

fn measure_all(budget: Budget, name: &str, work: &Path) -> Result<BenchReport, CliError> {
    // First, while this process is small: on Linux a child's peak RSS starts from its parent's
    // at the fork.
    step(&format!("memory, {} seeds in a fresh process", budget.memory_seeds));
    let memory = memory::measure(budget.memory_seeds)?;
    let mut sweeps = Vec::new();
    for workers in [1, 2] {
        step(&format!("standard run, {workers} worker(s), {} seeds", budget.standard_seeds));
        sweeps.push(seeds::sweep(budget.standard_seeds, workers, &work.join("sweep"))?);
    }
    let standard = Standard::new(sweeps);
    step(&format!("store workload, {} commits ({} on the real file)", budget.commits, budget.file_commits));
    let store = store::measure(budget.commits, budget.file_commits, work)?;
    step(&format!("scaling, {} seed(s) at each size", budget.scale_seeds));
    let scaling = scale::measure(budget.scale_seeds, |size| step(&format!("  {size}")))?;
    let targets = report::targets(&standard, &store, &scaling);
    Ok(BenchReport {
        format_version: report::BENCH_FORMAT_VERSION,
        drill_version: DRILL_VERSION.to_string(),
        budget: name.to_string(),
        machine: Machine::this(),
        wall_seconds: 0.0,
        standard,
        store,
        scaling,
        memory,
        targets,
    })
}

/// Progress on stderr, so that stdout holds the header and the table.
fn step(what: &str) {
    eprintln!("bench: {what}");
}

/// Refuses to replace a `bench.json` that a bench did not write.
fn refuse_foreign(path: &Path) -> Result<(), CliError> {
    if !path.exists() {
        return Ok(());
    }
    let previous: serde_json::Value = read_json(path).unwrap_or_default();
    let ours = previous.get("format_version").is_some() && previous.get("standard").is_some() && previous.get("targets").is_some();
    if ours {
        Ok(())
    } else {
        Err(CliError::new(format!("{} exists and was not written by drill bench; choose another --out", path.display())))
    }
}

//! `drill sweep`: a range of seeds on worker processes; a folder per failing seed, a summary and
//! its reports (junit.xml, report.md, report.html).
//!
//! Every seed runs with its files in `OUT/.drill-work/seed-N/`, so that even a run that panics
//! or kills its worker leaves its trace so far. A passing seed's folder is then deleted and a
//! failing one's is moved to `OUT/seed-N/`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drill_reports::{add_counts, add_drills, DrillCoverage, FailingSeed, Outcome, OutcomeCounts, SeedRange, Shard, SweepSummary, Violation, FORMAT_VERSION};
use serde_json::json;

use crate::cli::{SweepArgs, WorldArgs};
use crate::cmd::{counts_line, worker_count};
use crate::error::CliError;
use crate::gatefiles::write_sweep_files;
use crate::interrupt::{self, EXIT_INTERRUPTED};
use crate::ndjson::Events;
use crate::outdir::{self, WORK_DIR};
use crate::pool::{self, Dispatch};
use crate::progress::{rate, Progress};
use crate::runfiles::{seed_replay, write_timeline_from, DRILL_VERSION, TRACE_FILE};
use crate::worker::{Answer, Job};

/// The invariant id a sweep records for a run that panicked outside the world (which reports its
/// own panics under the same id) or whose worker died.
pub const PANIC_INVARIANT: &str = "SIM-NO-PANIC";
/// The invariant id a sweep records for a run that hung: its worker gave no answer within the
/// seed timeout and was stopped.
pub const HANG_INVARIANT: &str = "SIM-NO-HANG";

/// Runs the sweep; the exit code is the worst outcome's.
pub fn sweep(args: SweepArgs) -> Result<i32, CliError> {
    let range = args.many.seeds;
    let total = seed_count(range, args.shard)?;
    let claim = outdir::claim_sweep_dir(&args.out, "drill sweep")?;
    let work = args.out.join(WORK_DIR);
    outdir::create(&work)?;
    let workers = worker_count(args.many.jobs, total);
    let world = args.many.world;
    let events = Events::new(args.json);
    let shard = args.shard.map(|s| format!(" shard {s}")).unwrap_or_default();
    if events.text() {
        println!("drill {DRILL_VERSION} sweep seeds {range}{shard} ({total} seeds) profile {} scenario {} jobs {workers}", world.profile, world.scenario);
    }
    events.start(
        "sweep",
        json!({"seeds": range, "shard": args.shard, "total": total, "scenario": world.scenario,
               "profile": world.profile, "jobs": workers}),
    );
    let mut sweep = Sweep::new(&args.out, work.clone(), range, &world, total);
    sweep.shard = args.shard;
    sweep.next_seed = first_in_shard(range, args.shard);
    sweep.events = events;
    sweep.seed_timeout = args.many.seed_timeout;
    pool::run(workers, &world, &mut sweep)?;
    fs::remove_dir_all(&work).map_err(|e| CliError::io("cannot remove", &work, e))?;
    let mut summary = sweep.into_summary(workers);
    summary.interrupted = interrupt::requested();
    write_sweep_files(&args.out, &summary)?;
    events.emit("result", &json!({ "summary": summary, "interrupted": summary.interrupted }));
    if events.text() {
        print_table(&summary, &args.out, total);
    }
    drop(claim);
    if summary.interrupted {
        return Ok(EXIT_INTERRUPTED);
    }
    Ok(summary.outcome.exit_code())
}

/// How many seeds of `range` a sweep (of one shard) runs.
pub fn seed_count(range: SeedRange, shard: Option<Shard>) -> Result<u64, CliError> {
    let total = match shard {
        Some(s) => s.len_in(range),
        None => range.len().ok_or_else(|| CliError::new("too many seeds"))?,
    };
    if total == 0 {
        let shard = shard.map(|s| s.to_string()).unwrap_or_default();
        return Err(CliError::new(format!("shard {shard} holds no seed of {range}; use fewer shards or more seeds")));
    }
    Ok(total)
}

/// The first seed of `range` in `shard`, if any.
pub fn first_in_shard(range: SeedRange, shard: Option<Shard>) -> Option<u64> {
    let Some(s) = shard else {
        return Some(range.first);
    };
    let offset = (s.index - 1 + s.count - range.first % s.count) % s.count;
    range.first.checked_add(offset).filter(|f| *f <= range.last)
}

/// The seed after `seed` in `range` and `shard`, if any.
pub fn next_in_shard(seed: u64, range: SeedRange, shard: Option<Shard>) -> Option<u64> {
    let step = shard.map_or(1, |s| s.count);
    seed.checked_add(step).filter(|next| *next <= range.last)
}

/// The sweep in progress: which seed is next and what the finished ones found.
struct Sweep {
    out: PathBuf,
    work: PathBuf,
    range: SeedRange,
    world: WorldArgs,
    next_seed: Option<u64>,
    counts: OutcomeCounts,
    failing: BTreeMap<u64, FailingSeed>,
    faults: BTreeMap<String, u64>,
    checks: BTreeMap<String, u64>,
    drills: BTreeMap<String, DrillCoverage>,
    progress: Progress,
    shard: Option<Shard>,
    events: Events,
    seed_timeout: Duration,
}

impl Sweep {
    fn new(out: &Path, work: PathBuf, range: SeedRange, world: &WorldArgs, total: u64) -> Self {
        Sweep {
            out: out.to_path_buf(),
            work,
            range,
            world: world.clone(),
            next_seed: Some(range.first),
            counts: OutcomeCounts::default(),
            failing: BTreeMap::new(),
            faults: BTreeMap::new(),
            checks: BTreeMap::new(),
            drills: BTreeMap::new(),
            progress: Progress::new("sweep", total),
            shard: None,
            events: Events::new(false),
            seed_timeout: crate::pool::SEED_TIMEOUT_DEFAULT,
        }
    }

    /// Moves a failing seed's run folder out of the scratch folder and records it.
    fn keep(&mut self, job: Job, outcome: Outcome, first_violation: Option<Violation>) -> Result<(), CliError> {
        let folder = self.out.join(format!("seed-{}", job.seed));
        fs::rename(&job.dir, &folder).map_err(|e| CliError::io("cannot move a failing run to", &folder, e))?;
        if folder.join(TRACE_FILE).is_file() {
            write_timeline_from(&folder)?;
        }
        let replay = seed_replay(job.seed, &self.world.scenario, self.world.profile.as_str());
        self.progress.println(&format!("seed {} {outcome}: {replay}", job.seed));
        let folder = folder.to_string_lossy().into_owned();
        self.failing.insert(job.seed, FailingSeed { seed: job.seed, outcome, first_violation, replay, folder });
        Ok(())
    }

    fn into_summary(self, jobs: usize) -> SweepSummary {
        let wall = self.progress.finish();
        SweepSummary {
            format_version: FORMAT_VERSION,
            drill_version: DRILL_VERSION.to_string(),
            scenario: self.world.scenario,
            profile: self.world.profile.to_string(),
            seeds: self.range,
            shard: self.shard,
            outcome: self.counts.worst(),
            counts: self.counts,
            failing: self.failing.into_values().collect(),
            faults: self.faults,
            checks: self.checks,
            jobs,
            wall_seconds: wall.as_secs_f64(),
            seeds_per_second: rate(self.counts.total(), wall),
            drills: self.drills,
            merged_from: Vec::new(),
            interrupted: false,
        }
    }
}

impl Dispatch for Sweep {
    fn next_job(&mut self, _slot: usize) -> Result<Option<Job>, CliError> {
        let Some(seed) = self.next_seed else {
            return Ok(None);
        };
        self.next_seed = next_in_shard(seed, self.range, self.shard);
        let dir = self.work.join(format!("seed-{seed}"));
        outdir::create(&dir)?;
        Ok(Some(Job::seed(seed, dir)))
    }

    fn finished(&mut self, _slot: usize, job: Job, answer: Answer) -> Result<(), CliError> {
        let (outcome, first_violation) = match &answer {
            Answer::Error { message } => return Err(CliError::new(format!("seed {}: {message}", job.seed))),
            Answer::Done { summary } => {
                add_counts(&mut self.faults, &summary.faults);
                add_counts(&mut self.checks, &summary.checks);
                add_drills(&mut self.drills, &summary.drills);
                (summary.outcome, summary.violations.first().cloned())
            }
            Answer::Panic { message } => (Outcome::Violation, Some(panic_violation(message.clone()))),
            Answer::Hang { message } => (Outcome::Violation, Some(hang_violation(message.clone()))),
        };
        self.counts.add(outcome);
        self.progress.finish_one(outcome != Outcome::Pass);
        self.events.emit("seed", &seed_event(job.seed, &answer, outcome, &first_violation));
        if outcome == Outcome::Pass {
            return fs::remove_dir_all(&job.dir).map_err(|e| CliError::io("cannot remove", &job.dir, e));
        }
        self.keep(job, outcome, first_violation)
    }

    fn tick(&mut self) {
        self.progress.tick();
    }

    fn seed_timeout(&self) -> Duration {
        self.seed_timeout
    }
}

/// The NDJSON `seed` event of one finished run.
pub fn seed_event(seed: u64, answer: &Answer, outcome: Outcome, first_violation: &Option<Violation>) -> serde_json::Value {
    let (fingerprint, sim_time_ms) = match answer {
        Answer::Done { summary } => (Some(summary.fingerprint.clone()), Some(summary.sim_time_ms)),
        _ => (None, None),
    };
    json!({"seed": seed, "outcome": outcome, "first_violation": first_violation,
           "fingerprint": fingerprint, "sim_time_ms": sim_time_ms})
}

/// A panic counts as a violation: a broken simulator or stack invariant (DESIGN.md).
pub fn panic_violation(message: String) -> Violation {
    Violation { invariant: PANIC_INVARIANT.to_string(), node: "world".to_string(), trace_line: 0, message }
}

/// A hang counts as a violation too: every loop and queue of the world has a limit.
pub fn hang_violation(message: String) -> Violation {
    Violation { invariant: HANG_INVARIANT.to_string(), node: "world".to_string(), trace_line: 0, message }
}

fn print_table(s: &SweepSummary, out: &Path, total: u64) {
    println!("seeds           {}", s.counts.total());
    for outcome in Outcome::ALL {
        println!("{:<15} {}", outcome.as_str(), s.counts.get(outcome));
    }
    println!("seeds/s         {:.1} ({:.2} s on {} workers)", s.seeds_per_second, s.wall_seconds, s.jobs);
    println!("faults          {}", counts_line(&s.faults));
    println!("checks          {}", counts_line(&s.checks));
    for (id, c) in &s.drills {
        println!("drill           {id}: {} runs, {} exercised, {} passed", c.runs, c.exercised, c.passed);
    }
    for f in &s.failing {
        let why = f.first_violation.as_ref().map(|v| format!(" {} at {}: {}", v.invariant, v.node, v.message));
        println!("failing seed {} {}{}", f.seed, f.outcome, why.unwrap_or_default());
        println!("  replay: {}", f.replay);
        println!("  folder: {}", f.folder);
    }
    println!("files: {} (summary.json, junit.xml, report.md, report.html)", out.display());
    if s.interrupted {
        println!("outcome: interrupted | {} of {total} seeds finished, {} failing; run the sweep again for the rest", s.counts.total(), s.failing.len());
        return;
    }
    match s.failing.first() {
        None => println!("outcome: pass | all {} seeds passed", s.counts.total()),
        Some(f) => println!("outcome: {} | {} failing; replay the first: {}", s.outcome, s.failing.len(), f.replay),
    }
}

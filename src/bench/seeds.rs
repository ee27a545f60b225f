//! The standard run as a sweep runs it: seeds handed to worker processes by the sweep's own
//! pool, each writing its run folder (trace, plan, summary), so the numbers are what a user of
//! `drill sweep` gets.
//!
//! A seed's time is taken in the parent, from the moment its job is handed to a worker to the
//! moment its answer arrives: it includes the worker's writing of the run files and the pipe,
//! and, for a worker's first seed, starting the worker.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use drill_scenarios::Profile;
use serde::Serialize;

use crate::bench::{measured, median, quantile, ratio, wall_now, Who};
use crate::cli::WorldArgs;
use crate::error::CliError;
use crate::outdir;
use crate::pool::{self, Dispatch};
use crate::worker::{Answer, Job};

/// The standard run's scenario and profile.
pub const SCENARIO: &str = "sync-basic";
pub const PROFILE: Profile = Profile::Swarm;

/// One sweep of the standard run.
#[derive(Debug, Clone, Serialize)]
pub struct SweepResult {
    pub workers: usize,
    pub seeds: u64,
    pub wall_seconds: f64,
    pub seeds_per_second: f64,
    pub ms_per_seed_median: f64,
    pub ms_per_seed_p95: f64,
    /// CPU time the workers spent, per seed (mean): steadier than wall time on a busy machine.
    pub cpu_ms_per_seed: f64,
    /// Simulated seconds the seeds covered, summed.
    pub sim_seconds: f64,
    /// Simulated seconds per wall-clock second of the whole sweep.
    pub sim_seconds_per_wall_second: f64,
    /// Outcomes by name (`pass`, `violation`, `liveness`, `nondeterminism`, `panic`).
    pub outcomes: BTreeMap<String, u64>,
}

/// Runs seeds `1..=seeds` of the standard run on `workers` workers, with scratch run folders
/// under `work` (removed as each seed finishes).
pub fn sweep(seeds: u64, workers: usize, work: &Path) -> Result<SweepResult, CliError> {
    outdir::create(work)?;
    let world = WorldArgs { scenario: SCENARIO.to_string(), profile: PROFILE };
    let mut timer =
        SeedTimer { work: work.to_path_buf(), next: 1, last: seeds, sent: vec![None; workers], ms: Vec::new(), sim_ms: 0, outcomes: BTreeMap::new() };
    let (result, took) = measured(Who::Children, || pool::run(workers, &world, &mut timer));
    result?;
    let _ = fs::remove_dir_all(work);
    let wall_seconds = took.wall.as_secs_f64();
    let sim_seconds = timer.sim_ms as f64 / 1000.0;
    Ok(SweepResult {
        workers,
        seeds,
        wall_seconds,
        seeds_per_second: ratio(timer.ms.len() as f64, wall_seconds),
        ms_per_seed_median: median(&timer.ms),
        ms_per_seed_p95: quantile(&timer.ms, 0.95),
        cpu_ms_per_seed: ratio(took.cpu_seconds * 1000.0, timer.ms.len() as f64),
        sim_seconds,
        sim_seconds_per_wall_second: ratio(sim_seconds, wall_seconds),
        outcomes: timer.outcomes,
    })
}

/// Hands out seeds in order and times each one per worker slot.
struct SeedTimer {
    work: PathBuf,
    next: u64,
    last: u64,
    /// When each slot's current job was handed out.
    sent: Vec<Option<Instant>>,
    ms: Vec<f64>,
    sim_ms: u64,
    outcomes: BTreeMap<String, u64>,
}

impl Dispatch for SeedTimer {
    fn next_job(&mut self, slot: usize) -> Result<Option<Job>, CliError> {
        if self.next > self.last {
            return Ok(None);
        }
        let seed = self.next;
        self.next += 1;
        let dir = self.work.join(format!("seed-{seed}"));
        outdir::create(&dir)?;
        self.sent[slot] = Some(wall_now());
        Ok(Some(Job::seed(seed, dir)))
    }

    fn finished(&mut self, slot: usize, job: Job, answer: Answer) -> Result<(), CliError> {
        if let Some(sent) = self.sent[slot].take() {
            self.ms.push(sent.elapsed().as_secs_f64() * 1000.0);
        }
        let outcome = match answer {
            Answer::Done { summary } => {
                self.sim_ms += summary.sim_time_ms;
                summary.outcome.to_string()
            }
            Answer::Panic { .. } => "panic".to_string(),
            Answer::Hang { .. } => "hang".to_string(),
            Answer::Error { message } => return Err(CliError::new(format!("seed {}: {message}", job.seed))),
        };
        *self.outcomes.entry(outcome).or_default() += 1;
        fs::remove_dir_all(&job.dir).map_err(|e| CliError::io("cannot remove", &job.dir, e))
    }
}

//! `drill gate`: the release gate. One pool of workers runs, in this order, every drill of the
//! registry (`drill list --drills`) over a few seeds, then the swarm sweep of the main scenario
//! with a second run of each sampled seed right after its first, for the determinism check.
//! The verdict (and exit code) is the worst run's; when every run passed, coverage decides:
//! every drill exercised, every registry invariant checked non-vacuously, no seed left unrun.
//!
//! Failing runs keep their folders: `OUT/seed-N/` for the sweep, `OUT/drills/NAME/seed-N/`
//! for drills, and `OUT/nondeterministic/NAME-seed-N/run-{1,2}/` for seeds whose runs differ.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use drill_reports::gate::{slowest, Determinism, DrillResult, Mismatch, SlowRun, GATE_KIND};
use drill_reports::{add_counts, FailingSeed, GateSummary, Outcome, OutcomeCounts, SeedRange, Shard, SweepSummary, Verdict, Violation, FORMAT_VERSION};
use drill_scenarios::Profile;
use serde_json::json;

use crate::cli::{GateArgs, WorldArgs};
use crate::cmd::sweep::{first_in_shard, hang_violation, next_in_shard, panic_violation, seed_event};
use crate::cmd::{counts_line, worker_count};
use crate::diff::{first_difference, trace_lines};
use crate::error::CliError;
use crate::gatefiles::{claim_gate_dir, write_gate_files, Replaces, DRILLS_DIR, NONDETERMINISTIC_DIR};
use crate::interrupt;
use crate::ndjson::Events;
use crate::outdir::{self, WORK_DIR};
use crate::pool::{self, Dispatch};
use crate::progress::{rate, wall_clock_now, Progress};
use crate::runfiles::{seed_replay, write_timeline_from, DRILL_VERSION, TRACE_FILE};
use crate::worker::{Answer, Job};

/// The scenario the gate sweeps; the drills come from the drill registry.
pub const MAIN_SCENARIO: &str = "sync-basic";
/// The fault profile of the gate's sweep.
pub const MAIN_PROFILE: Profile = Profile::Swarm;
/// The profiles every drill runs under: a calm world, and a busy one with background faults.
pub const DRILL_PROFILES: [Profile; 2] = [Profile::None, Profile::Swarm];
/// Seeds on which each drill must be exercised and passed under each profile, unless the gate
/// runs fewer drill seeds or says otherwise (`--drill-min`).
pub const DRILL_MIN_DEFAULT: u64 = 3;

/// Runs the gate; the exit code is the verdict's (0, 1, 3, 4 or 5).
pub fn gate(args: GateArgs) -> Result<i32, CliError> {
    let plan = GatePlan::new(&args)?;
    let claim = claim_gate_dir(&args.out, "drill gate", Replaces::Gate)?;
    let work = args.out.join(WORK_DIR);
    outdir::create(&work)?;
    let workers = worker_count(args.jobs, plan.queue.runs());
    let events = Events::new(args.json);
    announce(&plan, &args, workers, events);
    let world = WorldArgs { scenario: MAIN_SCENARIO.to_string(), profile: MAIN_PROFILE };
    let mut run = GateRun::new(plan, args.out.clone(), work.clone(), args.time_budget, events);
    run.seed_timeout = args.seed_timeout;
    pool::run(workers, &world, &mut run)?;
    fs::remove_dir_all(&work).map_err(|e| CliError::io("cannot remove", &work, e))?;
    let summary = run.into_summary(workers, args.shard, interrupt::requested());
    write_gate_files(&args.out, &summary)?;
    events.emit("result", &json!({ "summary": summary, "interrupted": summary.sweep.interrupted }));
    if events.text() {
        print_gate(&summary, &args.out);
    }
    drop(claim);
    Ok(summary.exit_code)
}

/// The invariant ids of the model's registry.
pub fn registry_ids() -> Vec<&'static str> {
    drill_model::REGISTRY.iter().map(|i| i.id).collect()
}

/// One run the gate will make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Planned {
    /// 0 for the sweep, 1 + i for drill i.
    group: usize,
    seed: u64,
    /// The determinism check's second run.
    rerun: bool,
}

/// What the gate runs: its groups (the sweep, then each drill under each profile) and the queue
/// of runs.
struct GatePlan {
    groups: Vec<Group>,
    queue: Queue,
    /// Seeds on which each drill must be exercised and passed under each profile.
    drill_min: u64,
}

impl GatePlan {
    fn new(args: &GateArgs) -> Result<GatePlan, CliError> {
        let drill_min = match args.drill_min {
            Some(m) if m > args.drill_seeds => {
                return Err(CliError::new(format!("--drill-min {m} is more than the {} seeds of --drill-seeds", args.drill_seeds)));
            }
            Some(m) => m,
            None => DRILL_MIN_DEFAULT.min(args.drill_seeds),
        };
        let range = SeedRange { first: 1, last: args.seeds };
        let drill_range = SeedRange { first: 1, last: args.drill_seeds };
        let mut groups = vec![Group::new(MAIN_SCENARIO, MAIN_PROFILE, range, &args.out)];
        for d in drill_scenarios::drills::registry() {
            for profile in DRILL_PROFILES {
                let folder = args.out.join(DRILLS_DIR).join(d.id).join(profile.as_str());
                groups.push(Group::new(d.id, profile, drill_range, &folder));
            }
        }
        let queue = Queue::new(&groups, sample_seeds(range, args.determinism_seeds), args.shard);
        Ok(GatePlan { groups, queue, drill_min })
    }
}

/// The runs still to start, made one at a time as workers ask (a gate of 10^19 seeds holds no
/// list of them): every drill's seeds in turn, then the sweep's, each sampled seed of the sweep
/// followed by its second run.
struct Queue {
    /// Group indices in the order they run: the drills, then the sweep (group 0).
    order: Vec<usize>,
    /// Seed ranges by group.
    ranges: Vec<SeedRange>,
    shard: Option<Shard>,
    /// Sweep seeds run twice (those of the shard).
    sample: BTreeSet<u64>,
    /// Position in `order`.
    at: usize,
    next_seed: Option<u64>,
    /// The second run due right after the first run just handed out.
    rerun: Option<Planned>,
    /// First runs in the whole queue, and how many have been handed out.
    first_runs: u64,
    first_started: u64,
}

impl Queue {
    fn new(groups: &[Group], sample: BTreeSet<u64>, shard: Option<Shard>) -> Queue {
        let ranges: Vec<SeedRange> = groups.iter().map(|g| g.seeds).collect();
        let order: Vec<usize> = (1..groups.len()).chain([0]).collect();
        let in_shard = |r: SeedRange| match shard {
            Some(s) => s.len_in(r),
            None => r.len().unwrap_or(u64::MAX),
        };
        let first_runs = ranges.iter().fold(0u64, |n, r| n.saturating_add(in_shard(*r)));
        let sample: BTreeSet<u64> = sample.into_iter().filter(|s| shard.is_none_or(|sh| s % sh.count == sh.index - 1)).collect();
        let next_seed = order.first().and_then(|g| first_in_shard(ranges[*g], shard));
        Queue { order, ranges, shard, sample, at: 0, next_seed, rerun: None, first_runs, first_started: 0 }
    }

    /// Runs made twice.
    fn sampled(&self) -> u64 {
        self.sample.len() as u64
    }

    /// Every run, second runs included.
    fn runs(&self) -> u64 {
        self.first_runs.saturating_add(self.sampled())
    }

    /// First runs not handed out yet.
    fn unrun(&self) -> u64 {
        self.first_runs - self.first_started
    }

    fn pop(&mut self) -> Option<Planned> {
        if let Some(p) = self.rerun.take() {
            return Some(p);
        }
        loop {
            let group = *self.order.get(self.at)?;
            let Some(seed) = self.next_seed else {
                self.at += 1;
                self.next_seed = self.order.get(self.at).and_then(|g| first_in_shard(self.ranges[*g], self.shard));
                continue;
            };
            self.next_seed = next_in_shard(seed, self.ranges[group], self.shard);
            self.first_started += 1;
            if group == 0 && self.sample.contains(&seed) {
                self.rerun = Some(Planned { group, seed, rerun: true });
            }
            return Some(Planned { group, seed, rerun: false });
        }
    }
}

/// `m` seeds spread evenly over `range` (all of them when `m` is at least its length).
fn sample_seeds(range: SeedRange, m: u64) -> BTreeSet<u64> {
    let len = range.len().unwrap_or(u64::MAX);
    if m == 0 {
        return BTreeSet::new();
    }
    let m = m.min(len);
    (0..m).map(|i| range.first + (u128::from(i) * u128::from(len) / u128::from(m)) as u64).collect()
}

fn announce(plan: &GatePlan, args: &GateArgs, workers: usize, events: Events) {
    let mut drills: Vec<&str> = plan.groups[1..].iter().map(|g| g.scenario.as_str()).collect();
    drills.dedup();
    let shard = args.shard.map(|s| format!(" shard {s}")).unwrap_or_default();
    if events.text() {
        println!(
            "drill {DRILL_VERSION} gate: {MAIN_SCENARIO} {MAIN_PROFILE} seeds 1..={}{shard}, {} drills x {} profiles x {} seeds, each exercised and passed on {} ({}), {} determinism seeds, {} runs, jobs {workers}",
            args.seeds,
            drills.len(),
            DRILL_PROFILES.len(),
            args.drill_seeds,
            plan.drill_min,
            if drills.is_empty() { "none registered".to_string() } else { drills.join(", ") },
            plan.queue.sampled(),
            plan.queue.runs()
        );
    }
    events.start(
        "gate",
        json!({"seeds": args.seeds, "shard": args.shard, "drills": drills, "drill_seeds": args.drill_seeds,
               "drill_profiles": DRILL_PROFILES, "drill_min": plan.drill_min, "determinism_seeds": plan.queue.sampled(),
               "runs": plan.queue.runs(), "jobs": workers}),
    );
}

/// The runs of one scenario: the sweep, or one drill.
struct Group {
    scenario: String,
    profile: Profile,
    seeds: SeedRange,
    /// Where failing runs' folders go.
    folder: PathBuf,
    counts: OutcomeCounts,
    failing: BTreeMap<u64, FailingSeed>,
    faults: BTreeMap<String, u64>,
    checks: BTreeMap<String, u64>,
    exercised_runs: u64,
    passed_runs: u64,
    /// The runs' drill coverage tables, summed.
    drills: BTreeMap<String, drill_reports::DrillCoverage>,
}

impl Group {
    fn new(scenario: &str, profile: Profile, seeds: SeedRange, folder: &Path) -> Group {
        Group {
            scenario: scenario.to_string(),
            profile,
            seeds,
            folder: folder.to_path_buf(),
            counts: OutcomeCounts::default(),
            failing: BTreeMap::new(),
            faults: BTreeMap::new(),
            checks: BTreeMap::new(),
            exercised_runs: 0,
            passed_runs: 0,
            drills: BTreeMap::new(),
        }
    }

    /// Counts a finished first run; the liveness phase checks LIVE-DRAIN in every run that
    /// reaches it, which run summaries do not count yet.
    fn record(&mut self, answer: &Answer) -> (Outcome, Option<Violation>) {
        match answer {
            Answer::Done { summary } => {
                add_counts(&mut self.faults, &summary.faults);
                add_counts(&mut self.checks, &summary.checks);
                let live = drill_model::invariants::LIVE_DRAIN;
                if !summary.checks.contains_key(live) && summary.outcome != Outcome::Violation {
                    *self.checks.entry(live.to_string()).or_default() += 1;
                }
                drill_reports::add_drills(&mut self.drills, &summary.drills);
                // A drill run reports whether its failure happened and its recovery ran.
                let own = summary.drills.get(&self.scenario);
                self.exercised_runs += own.map(|c| c.exercised).unwrap_or(0);
                self.passed_runs += own.map(|c| c.passed).unwrap_or(0);
                self.counts.add(summary.outcome);
                (summary.outcome, summary.violations.first().cloned())
            }
            Answer::Panic { message } => {
                self.counts.add(Outcome::Violation);
                (Outcome::Violation, Some(panic_violation(message.clone())))
            }
            Answer::Hang { message } => {
                self.counts.add(Outcome::Violation);
                (Outcome::Violation, Some(hang_violation(message.clone())))
            }
            // The dispatcher stops at an error before recording anything.
            Answer::Error { .. } => (Outcome::Violation, None),
        }
    }

    fn replay(&self, seed: u64) -> String {
        seed_replay(seed, &self.scenario, self.profile.as_str())
    }
}

/// Where a finished run's files are, until the determinism pair is complete.
struct Arrived {
    planned: Planned,
    fingerprint: Option<String>,
    dir: PathBuf,
    /// True while `dir` is the scratch folder (a passing run, removable).
    scratch: bool,
}

/// The gate in progress.
struct GateRun {
    groups: Vec<Group>,
    queue: Queue,
    sampled: u64,
    /// Seeds of the sweep (group 0) that have a second run.
    sample: BTreeSet<u64>,
    out: PathBuf,
    work: PathBuf,
    in_flight: BTreeMap<PathBuf, (Planned, Instant)>,
    pairs: BTreeMap<(usize, u64), Arrived>,
    determinism: Determinism,
    slow: Vec<SlowRun>,
    budget: Option<Duration>,
    started: Instant,
    progress: Progress,
    events: Events,
    seed_timeout: Duration,
    /// Seeds on which each drill must be exercised and passed under each profile.
    drill_min: u64,
}

impl GateRun {
    fn new(plan: GatePlan, out: PathBuf, work: PathBuf, budget: Option<Duration>, events: Events) -> GateRun {
        let total = plan.queue.runs();
        let sample = plan.queue.sample.clone();
        let sampled = plan.queue.sampled();
        GateRun {
            sample,
            groups: plan.groups,
            queue: plan.queue,
            sampled,
            out,
            work,
            in_flight: BTreeMap::new(),
            pairs: BTreeMap::new(),
            determinism: Determinism::default(),
            slow: Vec::new(),
            budget,
            started: wall_clock_now(),
            progress: Progress::new("gate", total),
            events,
            seed_timeout: crate::pool::SEED_TIMEOUT_DEFAULT,
            drill_min: plan.drill_min,
        }
    }

    fn job_dir(&self, p: Planned) -> PathBuf {
        let again = if p.rerun { "-again" } else { "" };
        self.work.join(format!("{}-seed-{}{again}", p.group, p.seed))
    }

    fn out_of_time(&self) -> bool {
        self.budget.is_some_and(|b| self.started.elapsed() >= b)
    }

    /// Counts a first run, keeps its folder if it failed; returns where its files now are.
    fn first_run(&mut self, p: Planned, job: &Job, answer: &Answer) -> Result<Arrived, CliError> {
        let group = &mut self.groups[p.group];
        let (outcome, first_violation) = group.record(answer);
        let mut event = seed_event(p.seed, answer, outcome, &first_violation);
        event["scenario"] = json!(group.scenario);
        event["profile"] = json!(group.profile);
        self.events.emit("seed", &event);
        self.progress.finish_one(outcome != Outcome::Pass);
        let mut arrived = arrived(p, job, answer);
        if outcome == Outcome::Pass {
            return Ok(arrived);
        }
        let folder = group.folder.join(format!("seed-{}", p.seed));
        outdir::create(&group.folder)?;
        fs::rename(&job.dir, &folder).map_err(|e| CliError::io("cannot move a failing run to", &folder, e))?;
        if folder.join(TRACE_FILE).is_file() {
            write_timeline_from(&folder)?;
        }
        let replay = group.replay(p.seed);
        self.progress.println(&format!("{} seed {} {outcome}: {replay}", group.scenario, p.seed));
        let failing = FailingSeed { seed: p.seed, outcome, first_violation, replay, folder: folder.to_string_lossy().into_owned() };
        group.failing.insert(p.seed, failing);
        arrived.dir = folder;
        arrived.scratch = false;
        Ok(arrived)
    }

    /// Pairs a sampled seed's two runs; compares them once both are in.
    fn pair(&mut self, arrived: Arrived) -> Result<(), CliError> {
        let key = (arrived.planned.group, arrived.planned.seed);
        let Some(other) = self.pairs.remove(&key) else {
            self.pairs.insert(key, arrived);
            return Ok(());
        };
        let (first, second) = if other.planned.rerun { (arrived, other) } else { (other, arrived) };
        self.determinism.checked += 1;
        if first.fingerprint == second.fingerprint {
            return remove_scratch(&[first, second]);
        }
        self.mismatch(first, second)
    }

    fn mismatch(&mut self, first: Arrived, second: Arrived) -> Result<(), CliError> {
        let group = &self.groups[first.planned.group];
        let name = format!("{}-seed-{}", group.scenario, first.planned.seed);
        let folder = self.out.join(NONDETERMINISTIC_DIR).join(name);
        let runs = [folder.join("run-1"), folder.join("run-2")];
        for (run, to) in [&first, &second].into_iter().zip(&runs) {
            take_trace(run, to)?;
        }
        let what = match first_difference(trace_lines(&runs[0].join(TRACE_FILE))?, trace_lines(&runs[1].join(TRACE_FILE))?) {
            Some(d) => d.describe("run 1", "run 2"),
            None => "the traces are equal line by line; one run did not finish".to_string(),
        };
        let replay = group.replay(first.planned.seed);
        self.progress.println(&format!("{} seed {} differs between two runs: {replay}", group.scenario, first.planned.seed));
        let fingerprints = [first.fingerprint, second.fingerprint].map(|f| f.unwrap_or_else(|| "(panicked)".into()));
        self.determinism.mismatches.push(Mismatch {
            scenario: group.scenario.clone(),
            seed: first.planned.seed,
            fingerprints,
            first_difference: what,
            folder: folder.to_string_lossy().into_owned(),
            replay,
        });
        Ok(())
    }

    fn into_summary(mut self, workers: usize, shard: Option<Shard>, interrupted: bool) -> GateSummary {
        let wall = self.progress.finish();
        // Reruns still queued are not counted: the budget covers first runs.
        let unrun = self.queue.unrun();
        self.determinism.sampled = self.sampled;
        self.determinism.mismatches.sort_by_key(|m| m.seed);
        let mut groups = self.groups.into_iter();
        let sweep = groups.next().expect("the sweep group");
        let total = sweep.counts.total();
        let sweep = SweepSummary {
            format_version: FORMAT_VERSION,
            drill_version: DRILL_VERSION.to_string(),
            scenario: sweep.scenario,
            profile: sweep.profile.to_string(),
            seeds: sweep.seeds,
            shard,
            outcome: sweep.counts.worst(),
            counts: sweep.counts,
            failing: sweep.failing.into_values().collect(),
            faults: sweep.faults,
            checks: sweep.checks,
            jobs: workers,
            wall_seconds: wall.as_secs_f64(),
            seeds_per_second: rate(total, wall),
            drills: sweep.drills,
            merged_from: Vec::new(),
            interrupted,
        };
        let drills = groups.map(|g| drill_result(g, shard)).collect();
        let mut summary = GateSummary {
            format_version: FORMAT_VERSION,
            drill_version: DRILL_VERSION.to_string(),
            kind: GATE_KIND.to_string(),
            sweep,
            drills,
            drill_seeds_min: self.drill_min,
            determinism: self.determinism,
            invariants: Vec::new(),
            unrun,
            shortfalls: Vec::new(),
            coverage_judged: shard.is_none(),
            slowest: slowest(self.slow),
            verdict: Verdict::Pass,
            exit_code: 0,
            wall_seconds: wall.as_secs_f64(),
        };
        summary.judge(&registry_ids(), shard.is_none());
        summary
    }
}

impl Dispatch for GateRun {
    fn next_job(&mut self, _slot: usize) -> Result<Option<Job>, CliError> {
        if self.out_of_time() {
            return Ok(None);
        }
        let Some(p) = self.queue.pop() else {
            return Ok(None);
        };
        let dir = self.job_dir(p);
        outdir::create(&dir)?;
        let g = &self.groups[p.group];
        let job = Job::seed_of(p.seed, dir.clone(), &g.scenario, g.profile);
        self.in_flight.insert(dir, (p, wall_clock_now()));
        Ok(Some(job))
    }

    fn finished(&mut self, _slot: usize, job: Job, answer: Answer) -> Result<(), CliError> {
        let (p, started) = self.in_flight.remove(&job.dir).ok_or_else(|| CliError::new("a worker answered a job the gate did not give"))?;
        if let Answer::Error { message } = &answer {
            let name = &self.groups[p.group].scenario;
            return Err(CliError::new(format!("{name} seed {}: {message}", p.seed)));
        }
        let arrived = if p.rerun {
            self.progress.finish_one(false);
            arrived(p, &job, &answer)
        } else {
            self.note_cost(p, started, &answer);
            self.first_run(p, &job, &answer)?
        };
        if p.group == 0 && self.sample.contains(&p.seed) {
            return self.pair(arrived);
        }
        remove_scratch(&[arrived])
    }

    fn tick(&mut self) {
        self.progress.tick();
    }

    fn seed_timeout(&self) -> Duration {
        self.seed_timeout
    }
}

impl GateRun {
    fn note_cost(&mut self, p: Planned, started: Instant, answer: &Answer) {
        let Answer::Done { summary } = answer else {
            return;
        };
        self.slow.push(SlowRun {
            scenario: self.groups[p.group].scenario.clone(),
            seed: p.seed,
            wall_ms: started.elapsed().as_millis() as u64,
            sim_time_ms: summary.sim_time_ms,
            steps: summary.steps,
        });
        if self.slow.len() > 4 * drill_reports::gate::SLOWEST_MAX {
            self.slow = slowest(std::mem::take(&mut self.slow));
        }
    }
}

fn arrived(p: Planned, job: &Job, answer: &Answer) -> Arrived {
    let fingerprint = match answer {
        Answer::Done { summary } => Some(summary.fingerprint.clone()),
        _ => None,
    };
    Arrived { planned: p, fingerprint, dir: job.dir.clone(), scratch: true }
}

fn remove_scratch(runs: &[Arrived]) -> Result<(), CliError> {
    for r in runs.iter().filter(|r| r.scratch) {
        fs::remove_dir_all(&r.dir).map_err(|e| CliError::io("cannot remove", &r.dir, e))?;
    }
    Ok(())
}

/// Moves a scratch run folder to `to`, or copies the trace of a kept one there.
fn take_trace(run: &Arrived, to: &Path) -> Result<(), CliError> {
    outdir::create(to.parent().unwrap_or(to))?;
    if run.scratch {
        return fs::rename(&run.dir, to).map_err(|e| CliError::io("cannot move a run to", to, e));
    }
    outdir::create(to)?;
    let (from, dest) = (run.dir.join(TRACE_FILE), to.join(TRACE_FILE));
    fs::copy(&from, &dest).map(|_| ()).map_err(|e| CliError::io("cannot copy", &from, e))
}

fn drill_result(g: Group, shard: Option<Shard>) -> DrillResult {
    DrillResult {
        name: g.scenario,
        profile: g.profile.to_string(),
        seeds: g.seeds,
        shard,
        counts: g.counts,
        failing: g.failing.into_values().collect(),
        faults: g.faults,
        checks: g.checks,
        exercised_runs: g.exercised_runs,
        passed_runs: g.passed_runs,
    }
}

fn print_gate(g: &GateSummary, out: &Path) {
    let s = &g.sweep;
    let counts = |c: &OutcomeCounts| Outcome::ALL.iter().map(|o| format!("{} {}", o.as_str(), c.get(*o))).collect::<Vec<_>>().join(", ");
    println!("sweep           {} seeds: {}", s.counts.total(), counts(&s.counts));
    if g.drills.is_empty() {
        println!("drills          none registered");
    }
    for d in &g.drills {
        let verdict = d.verdict(g.drill_seeds_min).label();
        println!(
            "drill {:<9} {:<5} {} runs: {}, exercised {}, passed {} ({verdict})",
            d.name,
            d.profile,
            d.counts.total(),
            counts(&d.counts),
            d.exercised_runs,
            d.passed_runs
        );
    }
    for (id, c) in &s.drills {
        println!("in swarm        {id}: picked {}, exercised {}, passed {}", c.runs, c.exercised, c.passed);
    }
    let det = &g.determinism;
    println!("determinism     {} of {} sampled seeds run twice, {} mismatches", det.checked, det.sampled, det.mismatches.len());
    let inv: BTreeMap<String, u64> = g.invariants.iter().map(|i| (i.id.clone(), i.checks)).collect();
    println!("invariants      {}", counts_line(&inv));
    println!("faults          {}", counts_line(&s.faults));
    println!("seeds/s         {:.1} ({:.2} s on {} workers)", s.seeds_per_second, g.wall_seconds, s.jobs);
    if !g.coverage_judged {
        println!("coverage        judged by `drill merge` of all shards");
    }
    for p in &g.shortfalls {
        println!("shortfall       {p}");
    }
    for (scenario, f) in g.failing() {
        println!("failing {scenario} seed {} {}: {}", f.seed, f.outcome, f.replay);
    }
    for m in &det.mismatches {
        println!("nondeterministic {} seed {}: {}\n{}", m.scenario, m.seed, m.folder, m.first_difference);
    }
    println!("files: {} (summary.json, junit.xml, report.md, report.html)", out.display());
    if s.interrupted {
        println!("outcome: interrupted | {} runs not started; exit code {}", g.unrun, g.exit_code);
        return;
    }
    println!("outcome: {} | exit code {}", g.verdict, g.exit_code);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_spread_over_the_range() {
        let r = SeedRange { first: 1, last: 100 };
        assert_eq!(sample_seeds(r, 4), BTreeSet::from([1, 26, 51, 76]));
        assert_eq!(sample_seeds(SeedRange { first: 5, last: 6 }, 9), BTreeSet::from([5, 6]));
        assert!(sample_seeds(r, 0).is_empty());
    }
}

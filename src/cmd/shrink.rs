//! `drill shrink DIR`: minimise a failing run's plan and write the smallest plan that still
//! fails the same way to `DIR/shrunk/`, with its trace, summary, timeline and `shrink.json`.
//!
//! Every candidate runs in a worker process (never two worlds in one process); candidates run
//! in scratch folders under `DIR/shrunk/.drill-work/` that are removed as soon as they answer.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use drill_reports::{Summary, FORMAT_VERSION};
use drill_scenarios::plan::Plan;
use serde::{Deserialize, Serialize};

use crate::cli::{ShrinkArgs, WorldArgs};
use crate::cmd::worker_count;
use crate::error::CliError;
use crate::input::{read_limited, read_trace, PLAN_BYTES_MAX};
use crate::interrupt::{self, EXIT_INTERRUPTED};
use crate::outdir::{self, WORK_DIR};
use crate::pool::Session;
use crate::progress::wall_clock_now;
use crate::runfiles::{plan_replay, read_json, write_json, write_timeline_from, DRILL_VERSION, PLAN_FILE, SUMMARY_FILE, TRACE_FILE};
use crate::shrink::{self, is_failing, Oracle, Signature, Size, Stop};
use crate::worker::{Answer, Job};

/// The folder inside the run folder that receives the shrunk run.
pub const SHRUNK_DIR: &str = "shrunk";
/// The before/after record in the shrunk folder.
pub const SHRINK_FILE: &str = "shrink.json";
/// Exit code when the original plan does not fail as its summary says.
const EXIT_NONDETERMINISM: i32 = 4;

/// What `shrink.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShrinkRecord {
    pub format_version: u32,
    pub drill_version: String,
    /// The run folder that was shrunk.
    pub source: String,
    /// The failure every accepted candidate kept.
    pub signature: Signature,
    pub before: Size,
    pub after: Size,
    /// Runs made, the original's confirmation and the final run included.
    pub runs: u64,
    /// Candidates skipped because they were not valid plans.
    pub invalid_candidates: u64,
    /// `fixpoint` (nothing smaller fails the same way) or `budget` (runs or time ran out).
    pub stopped: Stop,
    pub wall_seconds: f64,
    /// The fingerprint of the shrunk run; replaying the shrunk plan must give it again.
    pub fingerprint: String,
    pub replay: String,
}

/// Shrinks the folder's plan; the exit code is the shrunk run's outcome's.
pub fn shrink(args: ShrinkArgs) -> Result<i32, CliError> {
    let (summary, plan) = read_failing_run(&args.dir)?;
    let target = is_failing(&summary).ok_or_else(|| CliError::new(format!("{} passed; only a failing run can be shrunk", args.dir.display())))?;
    let out = args.dir.join(SHRUNK_DIR);
    let claim = outdir::claim(&out, "drill shrink", prepare_shrunk_dir)?;
    let work = out.join(WORK_DIR);
    outdir::create(&work)?;
    println!(
        "drill {DRILL_VERSION} shrink {}: seed {} plan {} profile {} scenario {}",
        args.dir.display(),
        summary.seed,
        summary.plan_hash,
        summary.profile,
        summary.scenario
    );
    let before = Size::of(&plan);
    println!("target: {target}");
    println!("before: {before}");
    let profile = drill_scenarios::profile(&summary.profile).map_err(|e| CliError::new(format!("{}: {e}", args.dir.display())))?;
    let world = WorldArgs { scenario: summary.scenario.clone(), profile };
    let session = Session::new(worker_count(args.jobs, u64::MAX), &world);
    let mut oracle = RunOracle::new(session, work.clone(), target.clone(), &args);
    let original = oracle.run_one(&plan, &work.join("original"))?;
    if is_failing(&original).as_ref() != Some(&target) {
        fs::remove_dir_all(&work).map_err(|e| CliError::io("cannot remove", &work, e))?;
        return Ok(not_reproduced(&args.dir, &target, &original));
    }
    let shrunk = shrink::shrink(plan, &mut oracle)?;
    if interrupt::requested() {
        fs::remove_dir_all(&work).map_err(|e| CliError::io("cannot remove", &work, e))?;
        return interrupted(&args, &out, &oracle, target, before, &shrunk);
    }
    let last = oracle.run_one(&shrunk.plan, &out)?;
    fs::remove_dir_all(&work).map_err(|e| CliError::io("cannot remove", &work, e))?;
    write_timeline_from(&out)?;
    let record = ShrinkRecord {
        format_version: FORMAT_VERSION,
        drill_version: DRILL_VERSION.to_string(),
        source: args.dir.display().to_string(),
        signature: target.clone(),
        before,
        after: Size::of(&shrunk.plan),
        runs: oracle.runs,
        invalid_candidates: shrunk.invalid,
        stopped: shrunk.stop,
        wall_seconds: oracle.started.elapsed().as_secs_f64(),
        fingerprint: last.fingerprint.clone(),
        replay: plan_replay(&out.join(PLAN_FILE)),
    };
    write_json(&out.join(SHRINK_FILE), &record)?;
    drop(claim);
    Ok(report(&record, &out, &target, &last))
}

/// Writes what an interrupted shrink found: the smallest plan so far (not run again) and
/// shrink.json with `stopped: interrupted`; exit code 130.
fn interrupted(args: &ShrinkArgs, out: &Path, oracle: &RunOracle, target: Signature, before: Size, shrunk: &shrink::Shrunk) -> Result<i32, CliError> {
    let plan_path = out.join(PLAN_FILE);
    write_json(&plan_path, &shrunk.plan)?;
    let record = ShrinkRecord {
        format_version: FORMAT_VERSION,
        drill_version: DRILL_VERSION.to_string(),
        source: args.dir.display().to_string(),
        signature: target,
        before,
        after: Size::of(&shrunk.plan),
        runs: oracle.runs,
        invalid_candidates: shrunk.invalid,
        stopped: Stop::Interrupted,
        wall_seconds: oracle.started.elapsed().as_secs_f64(),
        fingerprint: String::new(),
        replay: plan_replay(&plan_path),
    };
    write_json(&out.join(SHRINK_FILE), &record)?;
    println!("after:  {}", record.after);
    println!("outcome: interrupted | the smallest plan found so far, not run again: {}", record.replay);
    Ok(EXIT_INTERRUPTED)
}

/// The run folder's summary and plan; refuses anything that is not a run folder.
fn read_failing_run(dir: &Path) -> Result<(Summary, Plan), CliError> {
    if !dir.is_dir() {
        return Err(CliError::new(format!("{} is not a run folder", dir.display())));
    }
    let summary: Summary = read_json(&dir.join(SUMMARY_FILE))?;
    let path = dir.join(PLAN_FILE);
    let text = read_limited(&path, PLAN_BYTES_MAX, "plan file")?;
    let plan = Plan::parse(&text).map_err(|e| CliError::new(format!("malformed {}: {e}", path.display())))?;
    // The trace is what a reader compares the shrunk run with; a folder without a whole one is
    // not the run its summary describes.
    let trace = dir.join(TRACE_FILE);
    if !trace.exists() {
        return Err(CliError::new(format!("{} has no {TRACE_FILE}; it is not a whole run folder", dir.display())));
    }
    read_trace(&trace, Some(summary.trace_lines).filter(|n| *n > 0))?;
    Ok((summary, plan))
}

/// Makes `DIR/shrunk` ready: empty, or a previous shrink's output (replaced).
fn prepare_shrunk_dir(out: &Path, names: &[String]) -> Result<(), CliError> {
    if names.is_empty() {
        return Ok(());
    }
    if !names.iter().any(|n| n == SHRINK_FILE || n == WORK_DIR) {
        return Err(CliError::new(format!("{} is not empty and does not hold a previous drill shrink; move it away first", out.display())));
    }
    outdir::clear_previous(out, names, &[SHRINK_FILE], &[WORK_DIR])
}

fn not_reproduced(dir: &Path, target: &Signature, got: &Summary) -> i32 {
    let got = is_failing(got).map_or_else(|| "pass".to_string(), |s| s.to_string());
    println!("the plan in {} no longer fails as its summary says: expected {target}, got {got}", dir.display());
    println!("outcome: nondeterminism | check it with: drill replay {}", dir.display());
    EXIT_NONDETERMINISM
}

fn report(record: &ShrinkRecord, out: &Path, target: &Signature, last: &Summary) -> i32 {
    println!("after:  {}", record.after);
    let (b, a) = (record.before, record.after);
    println!(
        "shrunk {} -> {} clients, {} -> {} ops, {} -> {} faults ({} -> {} ops and faults) in {} runs ({:.1} s)",
        b.clients,
        a.clients,
        b.ops,
        a.ops,
        b.faults,
        a.faults,
        b.items(),
        a.items(),
        record.runs,
        record.wall_seconds
    );
    match record.stopped {
        Stop::Fixpoint => println!("stopped: no smaller plan fails the same way"),
        Stop::Budget => println!("stopped early: the run or time budget ran out (--max-runs, --time-budget); the plan may shrink further"),
        Stop::Interrupted => println!("stopped: interrupted"),
    }
    println!("shrunk run: {} (shrink.json has the counts)", out.display());
    let kept = is_failing(last);
    if kept.as_ref() != Some(target) {
        // Every accepted candidate failed this way; a different final run is nondeterminism.
        println!("the final run of the shrunk plan did not fail as its candidate did");
        println!("outcome: nondeterminism | replay: {}", record.replay);
        return EXIT_NONDETERMINISM;
    }
    println!("outcome: {} | replay: {}", last.outcome, record.replay);
    last.outcome.exit_code()
}

/// Runs candidates on the session's workers, within the run and time budget.
struct RunOracle {
    session: Session,
    work: PathBuf,
    target: Signature,
    runs: u64,
    runs_max: u64,
    time_budget: Option<Duration>,
    started: Instant,
    next_dir: u64,
}

impl RunOracle {
    fn new(session: Session, work: PathBuf, target: Signature, args: &ShrinkArgs) -> Self {
        RunOracle {
            session,
            work,
            target,
            runs: 0,
            // One run is kept back for the final run of the shrunk plan.
            runs_max: args.max_runs.saturating_sub(1).max(1),
            time_budget: args.time_budget,
            started: wall_clock_now(),
            next_dir: 0,
        }
    }

    /// Runs one plan into `dir` (created if missing) and returns its summary.
    fn run_one(&mut self, plan: &Plan, dir: &Path) -> Result<Summary, CliError> {
        outdir::create(dir)?;
        let job = Job::plan(plan_text(plan)?, plan.seed, dir.to_path_buf());
        self.runs += 1;
        let answer = self.session.run_batch(&[job])?.remove(0);
        match answer {
            Answer::Done { summary } => Ok(*summary),
            Answer::Panic { message } | Answer::Hang { message } | Answer::Error { message } => {
                Err(CliError::new(format!("the run in {} failed: {message}", dir.display())))
            }
        }
    }

    /// Candidates the budget still allows now.
    fn allowance(&self, wanted: usize) -> usize {
        let out_of_time = self.time_budget.is_some_and(|b| self.started.elapsed() >= b);
        if out_of_time || interrupt::requested() {
            return 0;
        }
        let left = self.runs_max.saturating_sub(self.runs);
        wanted.min(usize::try_from(left).unwrap_or(usize::MAX))
    }

    fn candidate_job(&mut self, plan: &Plan) -> Result<Job, CliError> {
        self.next_dir += 1;
        let dir = self.work.join(format!("candidate-{}", self.next_dir));
        outdir::create(&dir)?;
        Ok(Job::plan(plan_text(plan)?, plan.seed, dir))
    }

    /// Whether a candidate's answer keeps the target failure; a panic is its own signature.
    fn keeps_target(&self, answer: &Answer) -> bool {
        match answer {
            Answer::Done { summary } => is_failing(summary).as_ref() == Some(&self.target),
            Answer::Panic { .. } => self.target.invariant.as_deref() == Some(crate::cmd::sweep::PANIC_INVARIANT),
            Answer::Hang { .. } | Answer::Error { .. } => false,
        }
    }
}

impl Oracle for RunOracle {
    fn width(&self) -> usize {
        self.session.width()
    }

    fn still_fails(&mut self, candidates: &[Plan]) -> Result<Option<Vec<bool>>, CliError> {
        let take = self.allowance(candidates.len());
        if take == 0 {
            return Ok(None);
        }
        let jobs = candidates[..take].iter().map(|p| self.candidate_job(p)).collect::<Result<Vec<Job>, CliError>>()?;
        self.runs += jobs.len() as u64;
        let answers = self.session.run_batch(&jobs)?;
        let verdicts = answers.iter().map(|a| self.keeps_target(a)).collect();
        for job in &jobs {
            fs::remove_dir_all(&job.dir).map_err(|e| CliError::io("cannot remove", &job.dir, e))?;
        }
        Ok(Some(verdicts))
    }

    fn accepted(&mut self, plan: &Plan) {
        println!("runs {:>4}: {}", self.runs, Size::of(plan));
    }
}

fn plan_text(plan: &Plan) -> Result<String, CliError> {
    serde_json::to_string(plan).map_err(|e| CliError::new(format!("cannot encode a plan: {e}")))
}

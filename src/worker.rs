//! The worker process a sweep starts (`drill __worker`): it runs the seeds it reads on stdin, one
//! at a time, and answers each on stdout.
//!
//! Runs happen in workers, never in the sweep's own process, and a worker runs one seed at a
//! time, because SQLite's process-global state allows one simulated world per process at once.
//!
//! Protocol: the parent writes one [`Job`] as JSON per line; the worker writes one line
//! `ANSWER_MARK` + [`Answer`] as JSON per job, in order. The mark lets the parent skip anything
//! else the world might print on stdout. After a panic the worker answers and exits, since the
//! process's state may be inconsistent; the parent starts a fresh one.

use std::io::{BufRead, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Mutex;

use drill_reports::Summary;
use drill_scenarios::{Profile, RunReport, RunRequest, RunSource};
use serde::{Deserialize, Serialize};

use crate::cli::WorldArgs;
use crate::error::CliError;
use crate::runfiles::{plan_replay, seed_replay, summary_of, write_json, PLAN_FILE, SUMMARY_FILE};

/// Prefix of every answer line.
pub const ANSWER_MARK: &str = "@drill-answer ";

/// Exit code of a worker that stopped after a panic (Rust's own code for a panic).
const EXIT_AFTER_PANIC: i32 = 101;

/// One run, with the existing folder to write its run files into.
///
/// By default the worker builds the plan from `seed` with its own scenario and profile (the
/// ones it was started with); `world` names others, and `plan` gives a whole plan instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub seed: u64,
    pub dir: PathBuf,
    /// Scenario and profile for this job, when not the worker's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world: Option<JobWorld>,
    /// The text of a plan to run instead of building one from the seed (`seed` is then only a
    /// label for reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
}

/// The scenario and profile of one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobWorld {
    pub scenario: String,
    pub profile: Profile,
}

impl Job {
    /// A seed of the worker's own scenario and profile.
    pub fn seed(seed: u64, dir: PathBuf) -> Job {
        Job { seed, dir, world: None, plan: None }
    }

    /// A seed of `scenario` under `profile`.
    pub fn seed_of(seed: u64, dir: PathBuf, scenario: &str, profile: Profile) -> Job {
        Job { world: Some(JobWorld { scenario: scenario.to_string(), profile }), ..Job::seed(seed, dir) }
    }

    /// A plan, given as the text of its plan.json.
    pub fn plan(plan_text: String, seed: u64, dir: PathBuf) -> Job {
        Job { plan: Some(plan_text), ..Job::seed(seed, dir) }
    }

    /// What the worker runs, and the command that runs it again.
    fn source(&self, own: &WorldArgs) -> (RunSource, String) {
        if let Some(text) = &self.plan {
            let replay = plan_replay(&self.dir.join(PLAN_FILE));
            return (RunSource::Plan(text.clone()), replay);
        }
        let (scenario, profile) = match &self.world {
            Some(w) => (w.scenario.clone(), w.profile),
            None => (own.scenario.clone(), own.profile),
        };
        let replay = seed_replay(self.seed, &scenario, profile.as_str());
        let source = RunSource::Seed { seed: self.seed, scenario, profile };
        (source, replay)
    }
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Answer {
    /// The run finished; its summary.json is in the job's folder.
    Done { summary: Box<Summary> },
    /// The run panicked, or its worker died (the parent then writes this answer itself).
    Panic { message: String },
    /// The run did not answer in time and its worker was killed (written by the parent).
    Hang { message: String },
    /// The run refused its input (the same errors `drill run` reports with exit code 2).
    Error { message: String },
}

/// The last panic message, kept by the worker's panic hook for the answer.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Serves jobs from stdin until it closes; returns the worker's exit code.
pub fn serve(world: &WorldArgs) -> Result<i32, CliError> {
    // The parent reports panics; printing them too would tear its progress bar.
    std::panic::set_hook(Box::new(|info| {
        if let Ok(mut last) = LAST_PANIC.lock() {
            // `panicked at FILE:LINE:COL:` and the message, on one line for the reports.
            *last = Some(info.to_string().replace('\n', " "));
        }
    }));
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| CliError::new(format!("worker cannot read its jobs: {e}")))?;
        let job: Job = serde_json::from_str(&line).map_err(|e| CliError::new(format!("worker got a malformed job: {e}")))?;
        let answer = run_job(world, &job);
        let panicked = matches!(answer, Answer::Panic { .. });
        send(&answer)?;
        if panicked {
            return Ok(EXIT_AFTER_PANIC);
        }
    }
    Ok(0)
}

/// Runs one job; a panic inside the world becomes an answer instead of ending the sweep.
fn run_job(world: &WorldArgs, job: &Job) -> Answer {
    let (source, replay) = job.source(world);
    let request = RunRequest { source, out_dir: Some(job.dir.clone()) };
    let run = || match injected_fault(job.seed).as_deref() {
        Some("panic") => panic!("injected panic for seed {} ({FAULT_ENV})", job.seed),
        Some("exit") => std::process::exit(EXIT_INJECTED),
        // A run that never answers, as a future that never completes would leave it.
        Some("hang") => loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        },
        _ => drill_scenarios::run(&request),
    };
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(report)) => finish(job, &report, replay),
        Ok(Err(err)) => Answer::Error { message: err.to_string() },
        Err(_) => {
            let message = LAST_PANIC.lock().ok().and_then(|mut m| m.take());
            Answer::Panic { message: message.unwrap_or_else(|| "the run panicked".to_string()) }
        }
    }
}

/// Test hook: `DRILL_TEST_WORKER_FAULT=panic:3,exit:5,hang:7` makes workers panic on seed 3,
/// exit abruptly on seed 5 and never answer on seed 7, so that tests can check that sweeps
/// survive all three. The world never panics
/// on purpose, so without this hook those paths could not be tested end to end.
const FAULT_ENV: &str = "DRILL_TEST_WORKER_FAULT";
/// Exit code of a worker that exits abruptly by the test hook.
const EXIT_INJECTED: i32 = 9;

/// The fault the test hook asks for at `seed`: `panic`, `exit` or `hang`.
fn injected_fault(seed: u64) -> Option<String> {
    let spec = std::env::var(FAULT_ENV).ok()?;
    spec.split(',').find_map(|item| {
        let (fault, at) = item.trim().split_once(':')?;
        (at.parse::<u64>().ok()? == seed).then(|| fault.to_string())
    })
}

/// Writes the run's summary.json next to the files the run wrote, and answers with it. (The
/// timeline page is written only for the runs a sweep keeps.)
fn finish(job: &Job, report: &RunReport, replay: String) -> Answer {
    let summary = summary_of(report, replay);
    match write_json(&job.dir.join(SUMMARY_FILE), &summary) {
        Ok(()) => Answer::Done { summary: Box::new(summary) },
        Err(err) => Answer::Error { message: err.to_string() },
    }
}

fn send(answer: &Answer) -> Result<(), CliError> {
    let json = serde_json::to_string(answer).map_err(|e| CliError::new(format!("worker cannot encode its answer: {e}")))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{ANSWER_MARK}{json}").and_then(|()| out.flush()).map_err(|e| CliError::new(format!("worker cannot answer: {e}")))
}

/// Reads an answer from one line of a worker's stdout; `None` for lines that are not answers.
pub fn parse_answer(line: &str) -> Option<Result<Answer, CliError>> {
    let start = line.find(ANSWER_MARK)? + ANSWER_MARK.len();
    Some(serde_json::from_str(&line[start..]).map_err(|e| CliError::new(format!("malformed answer from a worker: {e}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_and_stray_output_is_skipped() {
        let answer = Answer::Panic { message: "boom".into() };
        let line = format!("debug noise{ANSWER_MARK}{}", serde_json::to_string(&answer).unwrap());
        assert_eq!(parse_answer(&line).unwrap().unwrap(), answer);
        assert!(parse_answer("just some output").is_none());
        assert!(parse_answer(&format!("{ANSWER_MARK}{{")).unwrap().is_err());
    }
}

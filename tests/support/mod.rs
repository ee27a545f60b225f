//! Helpers shared by the integration tests: running seeds in this process the way CI does, with
//! the one command that replays a failure.

#![allow(dead_code)]

use std::sync::Mutex;

use drill_scenarios::{Outcome, RunReport, RunRequest, RunSource};

/// SQLite's process-global state allows one simulated world per process at a time, and cargo
/// runs tests on several threads: every in-process run takes this lock.
static ONE_WORLD_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The seed a developer asked for: `DRILL_SEED=N` (or madsim's `MADSIM_TEST_SEED=N`).
pub fn seed_from_env() -> Option<u64> {
    ["DRILL_SEED", "MADSIM_TEST_SEED"].iter().find_map(|name| {
        let text = std::env::var(name).ok()?;
        let seed = text.trim().parse::<u64>();
        Some(seed.unwrap_or_else(|_| panic!("{name}={text:?} is not a seed (a whole number)")))
    })
}

/// The seeds to run: the one from the environment if set, else `defaults`.
pub fn seeds_or(defaults: &[u64]) -> Vec<u64> {
    seed_from_env().map_or_else(|| defaults.to_vec(), |s| vec![s])
}

/// Runs one seed in this process (one world at a time).
pub fn run_seed(seed: u64, scenario: &str, profile: &str) -> RunReport {
    let _one = ONE_WORLD_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let source = RunSource::Seed { seed, scenario: scenario.to_string(), profile: drill_scenarios::profile(profile).expect("a known profile") };
    drill_scenarios::run(&RunRequest { source, out_dir: None }).unwrap_or_else(|e| panic!("seed {seed} ({scenario}, {profile}) was refused: {e}"))
}

/// `Ok` when the seed passes; otherwise what broke and the exact commands that replay it.
pub fn check_seed(seed: u64, scenario: &str, profile: &str, test: &str) -> Result<(), String> {
    let report = run_seed(seed, scenario, profile);
    let replay = format!(
        "drill run --seed {seed} --scenario {scenario} --profile {profile}\
         \n  or:     DRILL_SEED={seed} cargo test --release --test {test}"
    );
    match describe_failure(&report, &replay) {
        None => Ok(()),
        Some(text) => Err(text),
    }
}

/// Runs the text of a plan in this process (one world at a time).
pub fn run_plan(plan_text: &str) -> RunReport {
    let _one = ONE_WORLD_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let source = RunSource::Plan(plan_text.to_string());
    drill_scenarios::run(&RunRequest { source, out_dir: None }).unwrap_or_else(|e| panic!("the plan was refused: {e}"))
}

/// `None` for a passing run; otherwise its outcome, first violations and `replay`.
pub fn describe_failure(report: &RunReport, replay: &str) -> Option<String> {
    if report.outcome == Outcome::Pass {
        return None;
    }
    let mut text = format!("seed {} ({}, {}): {:?}", report.seed, report.scenario, report.profile, report.outcome);
    for v in report.violations.iter().take(5) {
        text.push_str(&format!("\n  {} at {} (trace line {}): {}", v.invariant, v.node, v.trace_line, v.message));
    }
    text.push_str(&format!("\n  replay: {replay}"));
    Some(text)
}

//! Fixed seeds of every fault profile, as CI runs them on every push. A failure names the
//! invariant and prints the exact command that replays it.
//!
//! `DRILL_SEED=N cargo test --release --test seeds` (or `MADSIM_TEST_SEED=N`) runs seed N alone,
//! under every profile: the way back from a CI failure or a sweep to a debugger.

mod support;

use support::{check_seed, describe_failure, run_plan, seeds_or};

/// A handful of swarm seeds, small and large, so that 64-bit seeds stay exercised too.
const SWARM_SEEDS: [u64; 10] = [1, 2, 3, 4, 5, 6, 7, 8, 1 << 32, u64::MAX];
/// Fewer seeds of the fixed profiles: they vary less from seed to seed.
const FIXED_PROFILE_SEEDS: [u64; 3] = [1, 2, 3];

/// Runs `seeds` of `profile` and fails with every failing seed's replay command.
fn all_pass(profile: &str, seeds: &[u64]) {
    let failures: Vec<String> = seeds_or(seeds).into_iter().filter_map(|seed| check_seed(seed, "sync-basic", profile, "seeds").err()).collect();
    assert!(failures.is_empty(), "{} failing:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn swarm_seeds_pass() {
    all_pass("swarm", &SWARM_SEEDS);
}

#[test]
fn lite_seeds_pass() {
    all_pass("lite", &FIXED_PROFILE_SEEDS);
}

#[test]
fn fault_free_seeds_pass() {
    all_pass("none", &FIXED_PROFILE_SEEDS);
}

#[test]
fn a_failure_names_the_invariant_and_the_replay_command() {
    // No seed fails today, so a plan makes one: a 1 ms liveness bound cannot be met.
    let mut plan = drill_scenarios::plan_for(1, "sync-basic", drill_scenarios::Profile::Swarm).expect("a plan");
    plan.liveness_ms_max = 1;
    let report = run_plan(&serde_json::to_string(&plan).expect("plans serialize"));
    let text = describe_failure(&report, "drill run --plan plan.json").expect("the run fails");
    assert!(text.contains("seed 1 (sync-basic, swarm)"), "{text}");
    assert!(text.contains("LIVE-DRAIN") || text.contains("INV-"), "{text}");
    assert!(text.ends_with("replay: drill run --plan plan.json"), "{text}");
}

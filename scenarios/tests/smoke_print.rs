//! Prints the outcome of a few seeds (run with --nocapture while developing).
use drill_scenarios::{run, RunRequest, RunSource};

#[test]
#[ignore]
#[allow(clippy::disallowed_methods)] // a developer's printout of wall time per seed
fn print_seeds() {
    let from: u64 = std::env::var("FROM").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let n: u64 = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "swarm".into());
    for seed in from..from + n {
        let t = std::time::Instant::now();
        let r = run(&RunRequest { source: RunSource::Seed { seed, scenario: "sync-basic".into(), profile: profile.clone() }, out_dir: None }).unwrap();
        println!("seed {seed}: {:?} lines={} steps={} sim={}ms wall={:?} faults={:?}", r.outcome, r.trace.len(), r.steps, r.sim_time_ms, t.elapsed(), r.faults);
        for v in r.violations.iter().take(5) {
            println!("   {} {} line {}: {}", v.invariant, v.node, v.trace_line, v.message);
        }
        if std::env::var("DUMP").is_ok() {
            for l in &r.trace { println!("{l}"); }
        }
    }
}

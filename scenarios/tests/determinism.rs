//! Determinism is the product: a run depends only on its seed (or plan).

use drill_scenarios::Profile;
use drill_scenarios::{run, Outcome, RunReport, RunRequest, RunSource};

fn run_seed(seed: u64, profile: Profile) -> RunReport {
    let source = RunSource::Seed { seed, scenario: "sync-basic".into(), profile };
    run(&RunRequest { source, out_dir: None }).expect("a valid request")
}

#[test]
fn same_seed_same_fingerprint_for_every_profile() {
    for profile in Profile::ALL {
        for seed in 1..=20 {
            let a = run_seed(seed, profile);
            let b = run_seed(seed, profile);
            if a.fingerprint != b.fingerprint {
                let i = drill_sim::trace::first_difference(&a.trace, &b.trace).unwrap_or(0);
                panic!(
                    "seed {seed} profile {profile} is nondeterministic at trace line {}:\n  {}\n  {}",
                    i + 1,
                    a.trace.get(i).map(String::as_str).unwrap_or("<end>"),
                    b.trace.get(i).map(String::as_str).unwrap_or("<end>")
                );
            }
            assert_eq!(a.outcome, Outcome::Pass, "seed {seed} {profile}: {:?}", a.violations);
        }
    }
}

#[test]
fn different_seeds_different_fingerprints() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 1..=20 {
        assert!(seen.insert(run_seed(seed, Profile::Swarm).fingerprint), "seed {seed} repeats another seed's trace");
    }
}

#[test]
fn a_plan_replays_to_the_same_fingerprint() {
    for seed in [3, 11] {
        let a = run_seed(seed, Profile::Swarm);
        let b = run(&RunRequest { source: RunSource::Plan(a.plan_json.clone()), out_dir: None }).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint, "seed {seed}: a run from its plan differs from the run from its seed");
        assert_eq!(a.plan_hash, b.plan_hash);
    }
}

#[test]
fn the_first_line_names_the_run_and_the_last_its_end() {
    let r = run_seed(5, Profile::Lite);
    let first: serde_json::Value = serde_json::from_str(&r.trace[0]).unwrap();
    assert_eq!(first["kind"], "run.start");
    let d = &first["detail"];
    assert_eq!(d["seed"], 5);
    assert_eq!(d["plan_hash"], r.plan_hash.as_str());
    assert_eq!(d["profile"], "lite");
    assert!(d["version"].is_string() && d["commit"].is_string());
    let last: serde_json::Value = serde_json::from_str(r.trace.last().unwrap()).unwrap();
    assert_eq!(last["kind"], "run.end");
    // The fingerprint is the SHA-256 of the trace file's text.
    use sha2::{Digest, Sha256};
    let text = r.trace.join("\n") + "\n";
    assert_eq!(r.fingerprint, hex::encode(Sha256::digest(text.as_bytes())));
}

#[test]
fn the_trace_file_is_written_as_the_run_goes() {
    let dir = std::env::temp_dir().join(format!("drill-trace-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = RunSource::Seed { seed: 2, scenario: "sync-basic".into(), profile: Profile::Swarm };
    let r = run(&RunRequest { source, out_dir: Some(dir.clone()) }).unwrap();
    let text = std::fs::read_to_string(dir.join("trace.jsonl")).unwrap();
    assert_eq!(text, r.trace.join("\n") + "\n");
    let plan = std::fs::read_to_string(dir.join("plan.json")).unwrap();
    assert_eq!(drill_scenarios::plan::Plan::parse(&plan).unwrap().hash(), r.plan_hash);
    std::fs::remove_dir_all(&dir).unwrap();
}

//! drill-scenarios: workloads, fault profiles and drills, behind one `run` entry point.

mod api;
pub use api::*;

use std::collections::BTreeMap;

/// Scenarios `drill run --scenario` accepts.
pub fn scenarios() -> &'static [Entry] {
    &[Entry { name: "sync-basic", description: "clients append events and sync through the server" }]
}

/// Fault profiles `--profile` accepts.
pub fn profiles() -> &'static [Entry] {
    &[
        Entry { name: "none", description: "no faults" },
        Entry { name: "lite", description: "a few crashes and partitions" },
        Entry { name: "swarm", description: "the seed picks which fault kinds are on and their rates" },
    ]
}

/// TEMPORARY STUB until the world is wired in: a deterministic fake trace derived from the seed.
pub fn run(req: &RunRequest) -> Result<RunReport, RunError> {
    use sha2::{Digest, Sha256};
    let (seed, scenario, profile) = match &req.source {
        RunSource::Seed { seed, scenario, profile } => (*seed, scenario.clone(), profile.clone()),
        RunSource::Plan(text) => {
            let v: serde_json::Value =
                serde_json::from_str(text).map_err(|e| RunError::MalformedPlan(e.to_string()))?;
            let seed = v["seed"].as_u64().ok_or(RunError::MalformedPlan("no seed".into()))?;
            let sc = v["scenario"].as_str().ok_or(RunError::MalformedPlan("no scenario".into()))?;
            let pr = v["profile"].as_str().ok_or(RunError::MalformedPlan("no profile".into()))?;
            (seed, sc.to_string(), pr.to_string())
        }
    };
    if !scenarios().iter().any(|e| e.name == scenario) {
        return Err(RunError::UnknownScenario(scenario));
    }
    if !profiles().iter().any(|e| e.name == profile) {
        return Err(RunError::UnknownProfile(profile));
    }
    let plan_json = serde_json::json!({"seed": seed, "scenario": scenario, "profile": profile}).to_string();
    let plan_hash = hex::encode(Sha256::digest(plan_json.as_bytes()));
    let trace: Vec<String> = (0..5)
        .map(|i| serde_json::json!({"t_ms": i, "node": "world", "kind": "stub", "seed": seed}).to_string())
        .collect();
    let mut h = Sha256::new();
    for l in &trace {
        h.update(l.as_bytes());
        h.update(b"\n");
    }
    if let Some(dir) = &req.out_dir {
        std::fs::write(dir.join("plan.json"), &plan_json).map_err(|e| RunError::Io(e.to_string()))?;
        std::fs::write(dir.join("trace.jsonl"), trace.join("\n") + "\n").map_err(|e| RunError::Io(e.to_string()))?;
    }
    Ok(RunReport {
        seed,
        scenario,
        profile,
        outcome: Outcome::Pass,
        violations: vec![],
        fingerprint: hex::encode(h.finalize()),
        faults: BTreeMap::new(),
        checks: BTreeMap::new(),
        sim_time_ms: 5,
        steps: 0,
        plan_hash,
        plan_json,
        trace,
    })
}

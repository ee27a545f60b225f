//! One run's `summary.json`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Outcome;

/// One broken invariant, as found by the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Invariant id, for example `INV-DURABLE`.
    pub invariant: String,
    /// Node name, for example `client-2`, or `world` when no single node is at fault.
    pub node: String,
    /// 1-based line of `trace.jsonl` at which the violation was found; 0 when unknown.
    pub trace_line: u64,
    /// What was expected and what was found.
    pub message: String,
}

/// Everything one run decided, in the run folder next to `trace.jsonl` and `plan.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Always [`crate::FORMAT_VERSION`] when written by this build.
    pub format_version: u32,
    /// The version of drill that ran it; a replay under another version may legitimately differ.
    #[serde(default)]
    pub drill_version: String,
    pub seed: u64,
    pub scenario: String,
    pub profile: String,
    pub outcome: Outcome,
    /// Every broken invariant, in the order found.
    pub violations: Vec<Violation>,
    /// Hex SHA-256 over the trace lines, each followed by `\n` (so `sha256sum trace.jsonl`).
    pub fingerprint: String,
    /// Hex SHA-256 of the canonical `plan.json`.
    pub plan_hash: String,
    /// Faults injected, counted by kind (`crash`, `partition`, `disk.torn`, ...).
    pub faults: BTreeMap<String, u64>,
    /// Invariant checks that had something to check, counted by invariant id.
    pub checks: BTreeMap<String, u64>,
    /// Simulated time the run took, in milliseconds.
    pub sim_time_ms: u64,
    /// Workload operations issued.
    pub steps: u64,
    /// Lines in `trace.jsonl`.
    #[serde(default)]
    pub trace_lines: u64,
    /// The shell command that runs the same input again, for example
    /// `drill run --seed 7 --scenario sync-basic --profile swarm`.
    pub replay: String,
    /// The drill coverage table: per drill the run (or, inside a swarm run, picked) it.
    #[serde(default)]
    pub drills: BTreeMap<String, DrillCoverage>,
    /// The plan's planted bugs, each with how often it fired; none when the plan has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mutations: Vec<PlantedBug>,
}

/// A planted bug of the run's plan and its firings: the failure it caused came from a bug put
/// into the stack on purpose, not from a fault of the world.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlantedBug {
    /// The node that ran the buggy code.
    pub node: String,
    /// The bug's name (`projection_fold`, `snapshot_state`, `stored_payload`, `pull_commit`).
    pub bug: String,
    /// What it lives in: a projection, or `events` (the server's event store).
    pub target: String,
    /// How often it fired.
    pub fired: u32,
}

/// One drill's line of a coverage table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillCoverage {
    /// Runs that ran the drill (or picked it, inside swarm runs).
    pub runs: u64,
    /// Runs in which its failure happened and every recovery step ran.
    pub exercised: u64,
    /// Exercised runs that passed.
    pub passed: u64,
}

impl DrillCoverage {
    /// Adds another table's line.
    pub fn add(&mut self, other: &DrillCoverage) {
        self.runs += other.runs;
        self.exercised += other.exercised;
        self.passed += other.passed;
    }
}

/// Adds every line of `from` into `into`.
pub fn add_drills(into: &mut BTreeMap<String, DrillCoverage>, from: &BTreeMap<String, DrillCoverage>) {
    for (id, c) in from {
        into.entry(id.clone()).or_default().add(c);
    }
}

impl Summary {
    /// The first violation, which is the one to look at first.
    pub fn first_violation(&self) -> Option<&Violation> {
        self.violations.first()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Summary {
        Summary {
            format_version: crate::FORMAT_VERSION,
            drill_version: "0.1.0".into(),
            seed: u64::MAX,
            scenario: "sync-basic".into(),
            profile: "swarm".into(),
            outcome: Outcome::Violation,
            violations: vec![Violation {
                invariant: "INV-DURABLE".into(),
                node: "client-2".into(),
                trace_line: 42,
                message: "acknowledged write 7 lost after crash".into(),
            }],
            fingerprint: "ab".repeat(32),
            plan_hash: "cd".repeat(32),
            faults: BTreeMap::from([("crash".into(), 2), ("partition".into(), 1)]),
            checks: BTreeMap::from([("INV-DURABLE".into(), 10)]),
            sim_time_ms: 12_345,
            steps: 300,
            trace_lines: 900,
            replay: "drill run --seed 18446744073709551615 --scenario sync-basic --profile swarm".into(),
            drills: BTreeMap::from([("003-4-pull-cursor-regression".into(), DrillCoverage { runs: 1, exercised: 1, passed: 1 })]),
            mutations: vec![PlantedBug { node: "client-0".into(), bug: "projection_fold".into(), target: "tenant_counters".into(), fired: 1 }],
        }
    }

    #[test]
    fn round_trips_through_json() {
        let s = sample();
        let json = serde_json::to_string_pretty(&s).unwrap();
        assert_eq!(serde_json::from_str::<Summary>(&json).unwrap(), s);
    }

    #[test]
    fn writes_the_documented_field_names() {
        let v = serde_json::to_value(sample()).unwrap();
        for field in [
            "format_version",
            "seed",
            "scenario",
            "profile",
            "outcome",
            "violations",
            "fingerprint",
            "plan_hash",
            "faults",
            "checks",
            "sim_time_ms",
            "steps",
            "replay",
        ] {
            assert!(v.get(field).is_some(), "missing {field}");
        }
        assert_eq!(v["outcome"], "violation");
        assert_eq!(v["faults"]["crash"], 2);
        assert_eq!(v["violations"][0]["trace_line"], 42);
        // Seeds are full u64s; JSON numbers carry them exactly in serde_json.
        assert_eq!(v["seed"].as_u64(), Some(u64::MAX));
    }

    #[test]
    fn reads_summaries_with_unknown_and_without_optional_fields() {
        let mut v = serde_json::to_value(sample()).unwrap();
        let obj = v.as_object_mut().unwrap();
        obj.remove("drill_version");
        obj.remove("trace_lines");
        obj.insert("drills_exercised".into(), serde_json::json!(["004-6.1"]));
        let s: Summary = serde_json::from_value(v).unwrap();
        assert_eq!((s.drill_version.as_str(), s.trace_lines), ("", 0));
        assert_eq!(s.first_violation().map(|v| v.trace_line), Some(42));
    }
}

//! Drills inside swarm runs: the swarm profile may pick a drill's failure and inject it at a
//! random moment of the busy `sync-basic` world, while every other fault of the seed goes on.
//!
//! The drills that fit there are the ones whose failure the world can inject and whose recovery
//! the world's devices can run as user operations: the eight guardrail drills (a transport fault
//! window on one device, its syncs inside the window, then a hydrate from the last known-good
//! state and a sync after it) and the malformed hydrate. Each recovery step is a `drill.step`
//! trace line at the moment the world queues it. After the run the trace says whether the drill
//! was exercised (its signature appeared on that device, and the hydrate and the sync after it
//! succeeded); it passed when the run passed too. The world's own invariants judge the recovery:
//! INV-FAIL-CLOSED and INV-GUARDRAIL on every attempt, INV-CONVERGE and LIVE-DRAIN at the end.

use std::collections::BTreeMap;

use drill_sim::trace;
use serde_json::{json, Value};

use super::find;
use crate::api::{DrillCoverage, Outcome, RunReport};
use crate::plan::drill::{fault_of, WINDOW_MS};
use crate::plan::Plan;

/// A recovery step's mark on the world's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub drill: String,
    pub step: &'static str,
    pub device: String,
}

/// When each recovery step of the plan's swarm drill happens, as the world queues it.
pub fn marks(plan: &Plan) -> Vec<(u64, Mark)> {
    let Some(d) = &plan.drill else { return Vec::new() };
    let (Some(s), Some(drill)) = (&d.swarm, find(&d.id)) else { return Vec::new() };
    let end = s.at_ms + WINDOW_MS;
    let times: Vec<u64> = match fault_of(&d.id) {
        Some(Some(_)) => vec![s.at_ms + 10, s.at_ms + WINDOW_MS / 2, s.at_ms + WINDOW_MS / 2 + 1, end, end + 20, end + 40],
        _ => vec![s.at_ms + 11, end + 20, end + 40],
    };
    drill.steps.iter().zip(times).map(|(step, t)| (t, Mark { drill: d.id.clone(), step, device: s.device.clone() })).collect()
}

/// Traces one mark.
pub fn mark(m: &Mark) {
    trace::emit("drill", "drill.step", json!({"drill": m.drill, "step": m.step, "device": m.device, "swarm": true, "skipped": false}));
}

/// After a swarm run: whether its drill was exercised and passed, into the report's coverage
/// table.
pub fn judge(plan: &Plan, report: &mut RunReport) {
    let Some(d) = &plan.drill else { return };
    let (Some(s), Some(kind)) = (&d.swarm, fault_of(&d.id)) else { return };
    let want = match kind {
        Some(k) => k.signature().unwrap_or_default(),
        None => "hydrate:hydrateGuardrailViolation",
    };
    let lines: Vec<Value> = report.trace.iter().filter_map(|l| serde_json::from_str(l).ok()).filter(|v: &Value| v["node"] == s.device.as_str()).collect();
    let from_us = s.at_ms * 1_000;
    let end_us = (s.at_ms + WINDOW_MS) * 1_000;
    let failed = lines.iter().any(|v| v["kind"] == "op.err" && v["detail"]["signature"] == want && v["t_us"].as_u64().unwrap_or(0) >= from_us);
    // The recovery: a hydrate that succeeded after the window, then a sync that succeeded.
    let mut hydrated_op = None;
    let mut recovered = false;
    for v in lines.iter().filter(|v| v["t_us"].as_u64().unwrap_or(0) >= end_us) {
        if v["kind"] == "op.start" && v["detail"]["action"] == "hydrate" && v["detail"]["malformed"] == false {
            hydrated_op = Some((v["detail"]["op"].clone(), false));
        } else if let Some((op, false)) = &hydrated_op {
            if v["kind"] == "op.ok" && &v["detail"]["op"] == op {
                hydrated_op = Some((op.clone(), true));
            }
        } else if matches!(hydrated_op, Some((_, true))) && v["kind"] == "op.ok" && v["detail"].get("pulled").is_some() {
            recovered = true;
            break;
        }
    }
    let exercised = failed && recovered;
    let passed = exercised && report.outcome == Outcome::Pass;
    let entry = report.drills.entry(d.id.clone()).or_default();
    entry.runs += 1;
    entry.exercised += u64::from(exercised);
    entry.passed += u64::from(passed);
}

/// Drills a set of reports exercised, summed (for tests and summaries).
pub fn total(reports: &[RunReport]) -> BTreeMap<String, DrillCoverage> {
    let mut out: BTreeMap<String, DrillCoverage> = BTreeMap::new();
    for r in reports {
        for (id, c) in &r.drills {
            let e = out.entry(id.clone()).or_default();
            e.runs += c.runs;
            e.exercised += c.exercised;
            e.passed += c.passed;
        }
    }
    out
}

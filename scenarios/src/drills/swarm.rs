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

use drill_sim::rng::SeedTree;
use drill_sim::trace;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{find, DrillPlan};
use crate::api::{DrillCoverage, Outcome, RunReport};
use crate::plan::{Action, Plan, PlannedOp};
use crate::transport::{TransportFaultAt, TransportFaultKind as K};

/// Chance that a swarm seed carries a drill.
pub const DRILL_PROBABILITY: f64 = 0.5;
/// How long the drill's fault window lasts.
const WINDOW_MS: u64 = 600;

/// Where and when a swarm plan injects its drill's failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmDrill {
    pub at_ms: u64,
    pub device: String,
}

/// The drills a swarm seed may pick, with the transport fault each injects (`None`: the
/// malformed hydrate).
pub const CANDIDATES: [(&str, Option<K>); 8] = [
    ("003-4-pull-page-invariant", Some(K::PullEmptyPageHasMore)),
    ("003-4-pull-duplicate-op-replay", Some(K::PullDuplicateOpReplay)),
    ("003-4-pull-cursor-regression", Some(K::PullCursorRegression)),
    ("003-4-pull-last-write-id-regression", Some(K::PullLastWriteIdRegression)),
    ("003-4-reconcile-cursor-regression", Some(K::ReconcileCursorRegression)),
    ("003-4-reconcile-last-write-id-regression", Some(K::ReconcileLastWriteIdRegression)),
    ("003-4-stale-write-recovery-exhausted", Some(K::StaleWriteIds)),
    ("003-4-hydrate-guardrail", None),
];

fn fault_of(id: &str) -> Option<Option<K>> {
    CANDIDATES.iter().find(|(d, _)| *d == id).map(|(_, k)| *k)
}

/// Maybe adds a drill to a swarm plan, from its own seed stream so the rest of the plan stays as
/// the seed made it.
pub fn add_to_plan(plan: &mut Plan, seeds: &SeedTree, duration_ms: u64) {
    let mut rng = seeds.stream("swarm-drill");
    if !rng.gen_bool(DRILL_PROBABILITY) || plan.clients.is_empty() || duration_ms < 4 * WINDOW_MS {
        return;
    }
    let (id, kind) = CANDIDATES[rng.gen_range(0..CANDIDATES.len())];
    let device = plan.clients[rng.gen_range(0..plan.clients.len())].name.clone();
    let at_ms = rng.gen_range(WINDOW_MS..duration_ms - 2 * WINDOW_MS);
    let op = |at_ms: u64, action: Action| PlannedOp { at_ms, client: device.clone(), action };
    let end = at_ms + WINDOW_MS;
    match kind {
        Some(k) => {
            plan.transport_faults.push(TransportFaultAt { at_ms, node: device.clone(), kind: k, ms: WINDOW_MS });
            plan.transport_faults.sort_by_key(|f| f.at_ms);
            let append = Action::Append { aggregate: "note-1".into(), kind: "created".into(), bytes: 64 };
            plan.ops.extend([op(at_ms + 1, append), op(at_ms + 10, Action::Sync), op(at_ms + WINDOW_MS / 2, Action::Sync)]);
        }
        None => plan.ops.push(op(at_ms + 10, Action::Hydrate { malformed: true })),
    }
    plan.ops.extend([op(end + 20, Action::Hydrate { malformed: false }), op(end + 40, Action::Sync)]);
    plan.ops.sort_by_key(|o| o.at_ms);
    plan.drill = Some(DrillPlan { id: id.into(), skip: None, wrong: None, swarm: Some(SwarmDrill { at_ms, device }) });
}

/// Checks a swarm plan's drill.
pub fn validate(plan: &Plan) -> Result<(), String> {
    let Some(d) = &plan.drill else { return Ok(()) };
    let Some(s) = &d.swarm else { return Ok(()) };
    if fault_of(&d.id).is_none() {
        return Err(format!("drill {} cannot run inside a swarm world", d.id));
    }
    if !plan.clients.iter().any(|c| c.name == s.device) {
        return Err(format!("swarm drill names unknown device '{}'", s.device));
    }
    if s.at_ms + WINDOW_MS + 40 > plan.heal_at_ms {
        return Err(format!("swarm drill at {} ms does not end before heal_at_ms {}", s.at_ms, plan.heal_at_ms));
    }
    Ok(())
}

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

//! Drills inside swarm runs: the swarm profile may pick a drill's failure and inject it at a
//! random moment of the busy `sync-basic` world, while every other fault of the seed goes on.
//!
//! The drills that fit there are the ones whose failure the world can inject and whose recovery
//! the world's devices can run as user operations: the eight guardrail drills (a transport fault
//! window on one device, its syncs inside the window, then a hydrate from the last known-good
//! state and a sync after it) and the malformed hydrate. Each recovery step is a `drill.step`
//! trace line at the moment the world queues it. After the run the world's typed history of
//! attempts says whether the drill was exercised (its signature appeared on that device, and the
//! hydrate and the sync after it succeeded); it passed when the run passed too. The world's own invariants judge the recovery:
//! INV-FAIL-CLOSED and INV-GUARDRAIL on every attempt, INV-CONVERGE and LIVE-DRAIN at the end.

use std::collections::BTreeMap;

use drill_sim::trace;
use serde_json::json;

use super::find;
use crate::api::{DrillCoverage, Outcome, RunReport};
use crate::node::{Attempt, Attempted};
use crate::plan::drill::{fault_of, SwarmDrill, WINDOW_MS};
use crate::plan::transport::TransportFaultKind;
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
/// table, judged from the world's typed history of sync and hydrate attempts (`attempts`).
pub fn judge(plan: &Plan, attempts: &[Attempted], report: &mut RunReport) {
    let Some(d) = &plan.drill else { return };
    let (Some(s), Some(kind)) = (&d.swarm, fault_of(&d.id)) else { return };
    let exercised = exercised(s, kind, attempts);
    let passed = exercised && report.outcome == Outcome::Pass;
    let entry = report.drills.entry(d.id.clone()).or_default();
    entry.runs += 1;
    entry.exercised += u64::from(exercised);
    entry.passed += u64::from(passed);
}

/// Exercised: the drill's signature appeared on its device after the failure was injected, and
/// after the fault window a hydrate from a known-good state succeeded, then a sync after it.
fn exercised(s: &SwarmDrill, kind: Option<TransportFaultKind>, attempts: &[Attempted]) -> bool {
    let want = match kind {
        Some(k) => k.signature().unwrap_or_default(),
        None => "hydrate:hydrateGuardrailViolation",
    };
    let (from_us, end_us) = (s.at_ms * 1_000, (s.at_ms + WINDOW_MS) * 1_000);
    let mine = attempts.iter().filter(|a| a.node == s.device);
    let failed = mine.clone().any(|a| a.t_us >= from_us && matches!(&a.attempt, Attempt::Failed { signature: Some(sig) } if sig == want));
    let mut after = mine.filter(|a| a.t_us >= end_us).map(|a| &a.attempt);
    let hydrated = after.any(|a| *a == Attempt::Hydrated { malformed: false });
    failed && hydrated && after.any(|a| *a == Attempt::Synced)
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

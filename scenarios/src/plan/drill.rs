//! The drill part of a plan: which runbook drill the plan runs (a drill's own plan) or injects
//! into a busy swarm world, and which recovery step a test skips or does wrong; plain data, the
//! swarm's draw of a drill, and its checks.

use drill_sim::rng::SeedTree;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::transport::{TransportFaultAt, TransportFaultKind as K};
use super::{Action, Plan, PlannedOp};

/// What a plan says about the drill it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillPlan {
    pub id: String,
    /// A recovery step to skip (tests: the drill must then fail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip: Option<String>,
    /// A recovery step to do wrong (tests: the drill must then fail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrong: Option<String>,
    /// In a swarm plan: when the failure is injected, and on which device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swarm: Option<SwarmDrill>,
    /// In a drill's own plan under swarm: the busy world the drill runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<Busy>,
}

/// The busy world around a drill under swarm: the drill's body begins at a random moment, while
/// a bystander device of a tenant of its own keeps writing and syncing through the same server,
/// and the plan's background faults (partitions, clock jumps and drifts) go on while the stack
/// recovers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Busy {
    /// When the drill's body begins.
    pub start_ms: u64,
    /// When the bystander appends an event and syncs.
    pub bystander_ms: Vec<u64>,
}

/// How long the busy world's background lasts: its faults start within it.
pub const BUSY_MS: u64 = 6_000;
/// The heal of a busy drill world: every background fault has ended by then (the longest
/// partition the swarm knobs draw is 3 s), well within the retries of a drill's sync.
pub const BUSY_HEAL_AT_MS: u64 = BUSY_MS + 3_000;
/// The latest moment a drill's body begins in a busy world.
pub const BUSY_START_MS_MAX: u64 = 1_500;
/// Most bystander writes a plan may hold.
pub const BYSTANDER_OPS_MAX: usize = 200;

/// The busy world of the drill plan of `seed` (from its own seed stream).
pub fn busy(seeds: &SeedTree) -> Busy {
    let mut rng = seeds.stream("drill-busy");
    let start_ms = rng.gen_range(0..=BUSY_START_MS_MAX);
    let mut bystander_ms = Vec::new();
    let mut t = rng.gen_range(0..200);
    while t < BUSY_MS {
        bystander_ms.push(t);
        t += rng.gen_range(50..=400);
    }
    Busy { start_ms, bystander_ms }
}

/// Whether a busy drill world has `fault` in its background: the kinds a drill recovers through
/// (partitions, one-way ones included, and clock jumps and drifts). Crashes and disk faults are
/// the drills' own failures.
pub fn is_background(fault: &drill_sim::faults::Fault) -> bool {
    use drill_sim::faults::Fault;
    matches!(fault, Fault::Partition { .. } | Fault::ClockJump { .. } | Fault::ClockDrift { .. })
}

/// The background faults of a busy drill world, over [`BUSY_MS`]: of the swarm `schedule`
/// drawn for the drill's nodes, those [`is_background`] keeps.
pub fn background(schedule: Vec<drill_sim::faults::Scheduled>) -> Vec<drill_sim::faults::Scheduled> {
    schedule.into_iter().filter(|s| is_background(&s.fault)).collect()
}

/// Where and when a swarm plan injects its drill's failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmDrill {
    pub at_ms: u64,
    pub device: String,
}

/// Chance that a swarm seed carries a drill.
pub const DRILL_PROBABILITY: f64 = 0.5;
/// How long a swarm drill's fault window lasts.
pub const WINDOW_MS: u64 = 600;

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

/// The transport fault a swarm drill injects (`Some(None)`: the malformed hydrate); `None` for a
/// drill that cannot run inside a swarm world.
pub fn fault_of(id: &str) -> Option<Option<K>> {
    CANDIDATES.iter().find(|(d, _)| *d == id).map(|(_, k)| *k)
}

/// Maybe adds a drill to a swarm plan, from its own seed stream so the rest of the plan stays as
/// the seed made it.
pub fn swarm(plan: &mut Plan, seeds: &SeedTree, duration_ms: u64) {
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
    plan.drill = Some(DrillPlan { id: id.into(), skip: None, wrong: None, swarm: Some(SwarmDrill { at_ms, device }), busy: None });
}

/// A drill's own plan runs faults only in a busy world, only those [`is_background`] keeps, and
/// each over by the heal (a fault that never ends would leave the drill's recovery nothing to
/// recover through).
fn background_bounded(plan: &Plan, busy: bool) -> Result<(), String> {
    use drill_sim::faults::Fault;
    for s in &plan.faults {
        if !busy {
            return Err(format!("fault at {} ms: a drill's plan runs faults only in a busy world (drill.busy)", s.at_ms));
        }
        if !is_background(&s.fault) {
            return Err(format!("fault at {} ms: a busy drill world has no background {} (partitions and clock faults only)", s.at_ms, s.fault.kind()));
        }
        let end = match &s.fault {
            Fault::Partition { ms, .. } => s.at_ms.checked_add(*ms),
            _ => Some(s.at_ms),
        };
        if end.is_none_or(|e| e > plan.heal_at_ms) {
            return Err(format!("fault at {} ms lasts past heal_at_ms {}", s.at_ms, plan.heal_at_ms));
        }
    }
    Ok(())
}

/// Checks a plan's drill part, as far as the plan alone tells (the registry checks the drill's
/// id and step names).
pub fn validate(plan: &Plan) -> Result<(), String> {
    let Some(d) = &plan.drill else { return Ok(()) };
    let Some(s) = &d.swarm else {
        if plan.scenario != d.id {
            return Err(format!("a drill plan's scenario must be its drill, not '{}'", plan.scenario));
        }
        background_bounded(plan, d.busy.is_some())?;
        if let Some(b) = &d.busy {
            if b.start_ms > plan.heal_at_ms {
                return Err(format!("a busy drill world starts its drill at {} ms, after heal_at_ms {}", b.start_ms, plan.heal_at_ms));
            }
            if b.bystander_ms.len() > BYSTANDER_OPS_MAX {
                return Err(format!("{} bystander writes exceed the limit of {BYSTANDER_OPS_MAX}", b.bystander_ms.len()));
            }
            if let Some(t) = b.bystander_ms.iter().find(|t| **t > plan.heal_at_ms) {
                return Err(format!("bystander write at {t} ms is after heal_at_ms {}", plan.heal_at_ms));
            }
        }
        return Ok(());
    };
    if d.busy.is_some() {
        return Err(format!("drill {} injected into a swarm world cannot have a busy world of its own", d.id));
    }
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

//! The runbook drills: each runbook section that describes a failure or a recovery, made
//! executable, in one registry.
//!
//! A drill sets a small world up, injects the failure its section describes, checks that the
//! section's symptoms appear (the stack's typed errors and `stage:code` signatures), runs the
//! section's recovery steps in order through the stack's operator API — each a `drill.step` trace
//! line naming the drill and the step — and checks the post-recovery validation: INV-RECOVERY
//! by the model (no committed event lost, except what the runbook says is unrecoverable) and the
//! drill's own checks. A drill is *exercised* when its failure happened and every recovery step
//! ran; it *passed* when it was exercised and the run found nothing wrong.
//!
//! One file per runbook section (or group of sections); adding a drill is adding its [`Drill`]
//! to its file's `DRILLS` and, for a new file, one line in [`registry`]. `drill run --scenario
//! <id>` runs one; a plan's `drill.skip` / `drill.wrong` make one recovery step be skipped or
//! done wrong, which the tests use to show that every drill fails without its recovery.

pub mod busy;
pub mod d000_keys;
pub mod d000_retention;
pub mod d000_store;
pub mod d001_jobs;
pub mod d002_keys;
pub mod d002_rooms;
pub mod d003_blobs;
pub mod d003_sync;
pub mod d004_ops;
pub mod d004_replay;
pub mod d004_server;
pub mod d004_store;
pub mod harness;
pub mod swarm;

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drill_sim::clock;
use drill_sim::disk::DiskConfig;
use drill_sim::rng::{SeedTree, Stream};
use drill_sim::trace::{self, Recorder};
use drill_sim::world::{NetConfig, Runtime};
use drill_stack::proto::PROTOCOL_VERSION;
use serde_json::json;

use crate::api::{DrillCoverage, Outcome, RunError, RunReport, Violation};
use crate::node::{lock, Shared, SharedRef};
use crate::plan::drill::{self as drill_plan, DrillPlan};
use crate::plan::transport::TransportKnobs;
use crate::plan::{client_name, ClientSpec, Mutation, Plan, Profile, PLAN_FORMAT_VERSION, TENANTS};
use crate::run::{COMMIT, TRACE_FORMAT_VERSION, VERSION};
use harness::{Ctx, Verdict};

/// A drill's body: runs in the drill's world, records into the context.
pub type Body = for<'a> fn(&'a mut Ctx) -> Pin<Box<dyn Future<Output = ()> + 'a>>;

/// One drill.
pub struct Drill {
    /// `<runbook file>-<section>-<what>`, for example `003-4-pull-cursor-regression`.
    pub id: &'static str,
    /// The runbook and section it makes executable, for example `003 §4`.
    pub section: &'static str,
    pub title: &'static str,
    /// Its recovery steps, in the runbook's order; `drill.step` lines name them.
    pub steps: &'static [&'static str],
    /// Devices its world has (tenants alternate acme, globex).
    pub devices: usize,
    /// The server's retention (events kept per tenant), when the drill needs one.
    pub server_retention: Option<u64>,
    /// A value the body reads (which fault of a family of drills).
    pub param: u8,
    /// The bugs its plan plants in the stack, where the runbook's cause is a bug (a wrong
    /// projection, a snapshot written wrong); drawn from the plan's seed. Most drills plant none.
    pub bugs: Bugs,
    pub body: Body,
}

/// What a drill plants, from its own stream of the plan's seed.
pub type Bugs = fn(&mut Stream) -> Vec<Mutation>;

/// A drill whose failure comes from the world's faults: it plants no bug.
pub fn no_bugs(_: &mut Stream) -> Vec<Mutation> {
    Vec::new()
}

/// Every drill, in runbook order.
pub fn registry() -> Vec<&'static Drill> {
    [
        d000_keys::DRILLS,
        d000_retention::DRILLS,
        d000_store::DRILLS,
        d001_jobs::DRILLS,
        d002_rooms::DRILLS,
        d002_keys::DRILLS,
        d003_sync::DRILLS,
        d003_blobs::DRILLS,
        d004_store::DRILLS,
        d004_replay::DRILLS,
        d004_ops::DRILLS,
        d004_server::DRILLS,
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Looks a drill up by id.
pub fn find(id: &str) -> Option<&'static Drill> {
    registry().into_iter().find(|d| d.id == id)
}

/// How long a drill's plan gives its world before the heal (a drill's body runs its own
/// timeline; the plan's times bound its faults).
const DRILL_HEAL_AT_MS: u64 = 1_500;
/// How long a drill's devices have to converge.
const DRILL_LIVENESS_MS_MAX: u64 = 30_000;

/// The plan of drill `id` for `seed`: its devices and the profile's knobs (the drill injects
/// its own failure; the profile's network latency and loss apply to its world).
pub fn plan(seed: u64, id: &str, profile: Profile) -> Result<Plan, RunError> {
    let drill = find(id).ok_or_else(|| RunError::UnknownScenario(id.to_string()))?;
    let clients = (0..drill.devices)
        .map(|i| ClientSpec { name: client_name(i), tenant: TENANTS[i % TENANTS.len()].to_string(), protocol_version: PROTOCOL_VERSION })
        .collect();
    let mut plan = Plan {
        format_version: PLAN_FORMAT_VERSION,
        seed,
        scenario: id.to_string(),
        profile,
        clients,
        knobs: profile.knobs(seed),
        transport_knobs: TransportKnobs::none(),
        ops: Vec::new(),
        faults: Vec::new(),
        transport_faults: Vec::new(),
        server_retention: drill.server_retention,
        store: None,
        blobs: None,
        jobs: None,
        drill: Some(DrillPlan { id: id.to_string(), skip: None, wrong: None, swarm: None, busy: None }),
        mutations: (drill.bugs)(&mut SeedTree::new(seed).stream("drill-bugs")),
        heal_at_ms: DRILL_HEAL_AT_MS,
        liveness_ms_max: DRILL_LIVENESS_MS_MAX,
    };
    if profile == Profile::Swarm {
        // A busy world: the drill begins at a random moment while a bystander writes and the
        // background faults go on.
        let seeds = SeedTree::new(seed);
        let background = drill_sim::faults::schedule(&plan.knobs, &plan.node_names(), drill_plan::BUSY_MS, &mut seeds.stream("drill-faults"));
        plan.faults = drill_plan::background(background);
        plan.heal_at_ms = drill_plan::BUSY_HEAL_AT_MS;
        if let Some(d) = plan.drill.as_mut() {
            d.busy = Some(drill_plan::busy(&seeds));
        }
    }
    Ok(plan)
}

/// Checks a plan's drill against the registry: the drill exists and has the steps the plan
/// skips or does wrong (the plan checks the rest itself).
pub fn validate(plan: &Plan) -> Result<(), String> {
    let Some(d) = &plan.drill else { return Ok(()) };
    let drill = find(&d.id).ok_or_else(|| format!("unknown drill '{}'", d.id))?;
    for s in [&d.skip, &d.wrong].into_iter().flatten() {
        if !drill.steps.contains(&s.as_str()) {
            return Err(format!("drill {} has no step '{s}' (its steps: {})", drill.id, drill.steps.join(", ")));
        }
    }
    Ok(())
}

/// Runs a drill's plan; with `out_dir`, writes `plan.json` and `trace.jsonl` there as it goes.
pub fn execute(plan: &Plan, out_dir: Option<&Path>) -> Result<RunReport, RunError> {
    crate::check(plan).map_err(RunError::MalformedPlan)?;
    let drill = plan.drill.as_ref().and_then(|d| find(&d.id)).ok_or_else(|| RunError::MalformedPlan("not a drill plan".into()))?;
    let plan_json = plan.canonical_json();
    let plan_hash = plan.hash();
    if let Some(d) = out_dir {
        let pretty = serde_json::to_string_pretty(plan).expect("plans serialize") + "\n";
        std::fs::write(d.join("plan.json"), pretty).map_err(|e| RunError::Io(format!("cannot write {}: {e}", d.join("plan.json").display())))?;
    }
    let trace_path = out_dir.map(|d| d.join("trace.jsonl"));
    let rec = Recorder::new(trace_path.as_deref(), true).map_err(|e| RunError::Io(format!("cannot write the trace: {e}")))?;
    let net = NetConfig {
        packet_loss_rate: plan.knobs.net.loss_probability,
        latency_ms_min: plan.knobs.net.latency_ms_min,
        latency_ms_max: plan.knobs.net.latency_ms_max,
    };
    let limit = Duration::from_millis(plan.liveness_ms_max + 600_000);
    let rt = Runtime::new(SeedTree::new(plan.seed).child("world"), net, DiskConfig::default(), limit);
    let shared: SharedRef = Arc::new(Mutex::new(Shared::default()));
    trace::install(rec, clock::true_us);
    let first = json!({
        "seed": plan.seed, "plan_hash": plan_hash, "version": VERSION, "commit": COMMIT,
        "profile": plan.profile, "scenario": plan.scenario, "trace_format": TRACE_FORMAT_VERSION,
        "drill": drill.id, "section": drill.section,
    });
    trace::emit("world", "run.start", first);
    lock(&shared).mutations = crate::node::plant(plan);
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| rt.block_on(main(plan.clone(), drill, shared.clone()))));
    let sim_time_ms = rt.elapsed_ms();
    let rec = trace::uninstall().expect("the recorder is installed");
    let _ = std::panic::catch_unwind(AssertUnwindSafe(move || drop(rt)));
    let (fingerprint, trace) = rec.finish().map_err(|e| RunError::Io(format!("cannot write the trace: {e}")))?;
    let s = lock(&shared);
    let mut violations: Vec<Violation> = s.checker.violations().to_vec();
    let (mut verdict, steps) = match result {
        Ok(v) => v,
        Err(p) => {
            let message = match (p.downcast_ref::<&str>(), p.downcast_ref::<String>()) {
                (Some(s), _) => format!("panic: {s}"),
                (_, Some(s)) => format!("panic: {s}"),
                _ => "panic".into(),
            };
            violations.push(Violation { invariant: "SIM-NO-PANIC".into(), node: "drill".into(), trace_line: trace.len() as u64, message });
            (Verdict::default(), 0)
        }
    };
    violations.append(&mut verdict.violations);
    let mut checks = s.checker.checks().clone();
    for (id, n) in &verdict.checks {
        *checks.entry(id.clone()).or_default() += n;
    }
    let outcome = if violations.is_empty() { Outcome::Pass } else { Outcome::Violation };
    let exercised = exercised(drill, &verdict);
    let coverage = DrillCoverage { runs: 1, exercised: u64::from(exercised), passed: u64::from(exercised && outcome == Outcome::Pass) };
    Ok(RunReport {
        seed: plan.seed,
        scenario: plan.scenario.clone(),
        profile: plan.profile,
        outcome,
        violations,
        fingerprint,
        faults: verdict.faults,
        checks,
        sim_time_ms,
        steps,
        plan_hash,
        plan_json,
        trace,
        drills: BTreeMap::from([(drill.id.to_string(), coverage)]),
        mutations: crate::node::planted_report(&s.mutations),
    })
}

/// Exercised: the failure happened (every symptom the drill looks for appeared) and every
/// recovery step ran, in the runbook's order.
fn exercised(drill: &Drill, v: &Verdict) -> bool {
    v.failure_seen && !v.symptom_missed && v.steps_run.iter().map(String::as_str).eq(drill.steps.iter().copied())
}

/// The drill's world: build it, run the body, hand back what it found.
async fn main(plan: Plan, drill: &'static Drill, shared: SharedRef) -> (Verdict, u64) {
    let mut cx = Ctx::new(plan, drill, shared).await;
    (drill.body)(&mut cx).await;
    if let Some(world) = cx.busy_world.take() {
        busy_judgement(&mut cx, &world).await;
    }
    let steps = cx.verdict.steps_run.len() as u64;
    trace::emit("world", "run.end", json!({"drill": drill.id, "failure_seen": cx.verdict.failure_seen, "steps": cx.verdict.steps_run}));
    (std::mem::take(&mut cx.verdict), steps)
}

/// After the body in a busy world: every write the server acknowledged to the bystander is still
/// on the server (INV-DURABLE; under a retention, all but the oldest the server compacted), and
/// the background faults are counted into the run's faults.
async fn busy_judgement(cx: &mut Ctx, world: &busy::BusyWorld) {
    for (k, n) in lock(&world.faults).iter() {
        *cx.verdict.faults.entry(k.clone()).or_default() += n;
    }
    let (acknowledged, ok, failed) = {
        let s = lock(&world.bystander);
        (s.acknowledged.clone(), s.syncs_ok, s.syncs_failed)
    };
    let stored: std::collections::BTreeSet<String> = cx.server_tenant(busy::BYSTANDER_TENANT).await.into_iter().map(|e| e.op_id).collect();
    // Under a retention the server compacts a tenant's oldest events: those acknowledged first
    // may be gone, but none acknowledged after one that is still stored.
    let (compacted, lost) = busy::lost_writes(&acknowledged, &stored, cx.plan.server_retention.is_some());
    let detail = json!({"acknowledged": acknowledged.len(), "syncs_ok": ok, "syncs_failed": failed, "compacted": compacted, "lost": lost.len()});
    trace::emit("drill", "drill.bystander", detail);
    if acknowledged.is_empty() {
        // Nothing was acknowledged: nothing to judge, and no check is counted.
        return;
    }
    let result = match lost.first() {
        None => Ok(()),
        Some(op) => Err(format!("{} of the bystander's {} acknowledged writes are not on the server (first: {op})", lost.len(), acknowledged.len())),
    };
    cx.judge(drill_model::invariants::DURABLE, "the bystander's acknowledged writes", result);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_name_their_runbook_and_section() {
        let all = registry();
        let mut ids: Vec<&str> = all.iter().map(|d| d.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), all.len(), "duplicate drill ids");
        for d in all {
            let runbook = &d.id[..3];
            assert!(d.section.starts_with(runbook), "{}: section {} is not of runbook {runbook}", d.id, d.section);
            assert!(!d.steps.is_empty(), "{} has no recovery step", d.id);
        }
    }
}

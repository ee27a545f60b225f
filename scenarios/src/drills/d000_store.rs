//! Runbook 000 (local-first failure modes), "Projection corruption or stale indexes" and "Saga
//! stuck state".
//!
//! - `000-projection-corruption-rebuild`. The failure: a device's derived state goes wrong
//!   through a planted bug of the engine's incremental fold (the plan's `mutations`, drawn from
//!   the seed) — an event folded twice (a corrupt row), or the cursor moved past an event never
//!   folded (a stale index). The symptom: the projection differs from a replay of the
//!   committed events (`projection:inconsistent`). The recovery: the rebuild trigger clears the
//!   derived tables and replays the events in the effective total order (the server's sequence,
//!   which the device's events keep). Checked: every projection equals a fold of the server's
//!   events in the server's order, folded up to the last event. Done wrong: a replay in another
//!   order than the total order.
//! - `000-projection-corrupt-index-artifact`. The failure: bits flipped in a device's encrypted
//!   index artifact on disk. The symptom: loading it fails authentication (`artifact:corrupt`).
//!   The recovery: delete the artifact, then rebuild the missing artifact from the projection.
//!   Checked: the artifact opens and equals a fresh build of the projection.
//! - `000-saga-stuck-crash-before-effect` and `000-saga-stuck-crash-before-done`. The failure:
//!   a power cut between the saga's state and its effect (`delivering` committed, nothing sent),
//!   or between the effect and the saga's state (the effects node applied it, `done` never
//!   committed). The symptom: a saga step that is not `done`. The recovery: the reconcile at
//!   start re-derives the requests from the counts and re-runs every step not `done`,
//!   idempotently. Checked: the step is `done`, and the effects node applied the effect exactly
//!   once (INV-ONCE, by the model, on the receiver's log). Done wrong: a reconcile that records
//!   the step `done` without delivering it.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drill_model::store::StoreFact;
use drill_model::store_ops::{achievement_id, DeliveryFact, EffectsFacts, SagaCount, SagaStepFact};
use drill_model::{EventFact, Fact};
use drill_sim::disk::{DiskFaults, DiskSim};
use drill_sim::trace;
use drill_stack::artifacts::{self, ArtifactError};
use drill_stack::envelope;
use drill_stack::projections::{Engine, Scope};
use drill_stack::saga::{self, AchievementSaga, Delivered, Receiver};
use serde_json::json;

use super::d000_keys::{all_aggregates, close, open_keyed, server_rows};
use super::harness::{fact_of, tenant_ring, Ctx};
use super::Drill;
use crate::node::{lock, NodeClock};
use crate::plan::{Bug, FoldEffect, Mutation};
use crate::store_ops::{effects_main, EffectsClient, EffectsCtx, EFFECTS_IP, EFFECTS_NODE};

/// Rounds of the reconcile (each delivers every step not `done`) before the drill gives up: a
/// delivery whose message the network lost is tried again in the next round.
const RECONCILE_ROUNDS_MAX: u32 = 20;
/// Polls (10 ms each) of the effects node before the drill reports it never came up.
const EFFECTS_POLLS_MAX: u32 = 500;
/// The projections a device folds.
const PROJECTIONS: [&str; 2] = ["aggregate_state", "tenant_counters"];

pub const DRILLS: &[Drill] = &[
    Drill {
        id: "000-projection-corruption-rebuild",
        section: "000 Projection corruption or stale indexes",
        title: "a projection corrupt or stale: rebuild from the events in the effective total order, equal to a fold of the server's sequence",
        steps: &["rebuild-trigger", "verify-against-total-order"],
        devices: 3,
        server_retention: None,
        param: 0,
        bugs: stale_or_corrupt,
        body: projection_body,
    },
    Drill {
        id: "000-projection-corrupt-index-artifact",
        section: "000 Projection corruption or stale indexes",
        title: "an index artifact fails authentication (artifact:corrupt): delete it, rebuild it from the projection",
        steps: &["delete-artifact", "rebuild-artifact"],
        devices: 3,
        server_retention: None,
        param: 0,
        bugs: super::no_bugs,
        body: artifact_body,
    },
    Drill {
        id: "000-saga-stuck-crash-before-effect",
        section: "000 Saga stuck state",
        title: "power cut between the saga's state and its effect: reconcile at start, the effect happens exactly once",
        steps: &["reconcile-on-start", "verify-effect-once"],
        devices: 3,
        server_retention: None,
        param: 0,
        bugs: super::no_bugs,
        body: saga_body,
    },
    Drill {
        id: "000-saga-stuck-crash-before-done",
        section: "000 Saga stuck state",
        title: "power cut between the effect and the saga's state: reconcile at start, the duplicate is recognised, exactly once",
        steps: &["reconcile-on-start", "verify-effect-once"],
        devices: 3,
        server_retention: None,
        param: 1,
        bugs: super::no_bugs,
        body: saga_body,
    },
];

/// A bug of one projection's incremental fold, both drawn from the seed: an event folded twice
/// or skipped.
fn stale_or_corrupt(rng: &mut drill_sim::rng::Stream) -> Vec<Mutation> {
    let projection = PROJECTIONS[rand::Rng::gen_range(rng, 0..PROJECTIONS.len())];
    let effect = if rand::Rng::gen_bool(rng, 0.5) { FoldEffect::Skipped } else { FoldEffect::Twice };
    vec![super::d004_replay::fold_bug(projection, effect)]
}

fn projection_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(projection(cx))
}

fn artifact_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(artifact(cx))
}

fn saga_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(saga_stuck(cx))
}

// ---------------------------------------------------------------------------------------------
// Projection corruption or stale indexes

/// Each projection's rows of `tenant` folded from `tenant`'s events on the server, in the
/// server's order, into a scratch database on the server's node.
async fn fold_of_server_order(cx: &mut Ctx, tenant: &str) -> Vec<Vec<Vec<String>>> {
    let rows = server_rows(cx, tenant).await;
    let t = tenant.to_string();
    let task = async move {
        let sealed = rows.iter().map(envelope::sealed_event).collect::<Result<Vec<_>, _>>().expect("server payloads are envelopes");
        let scratch = drill_stack::store::open(":memory:").expect("a scratch database");
        let engine = Engine::builtin();
        engine.install(&scratch).expect("the projections install");
        let scope = Scope { tenant: Some(t.clone()), ..Scope::default() };
        engine.rebuild(&scratch, &sealed, &tenant_ring(&t), &scope).expect("a fold of the server's events");
        PROJECTIONS.iter().map(|p| engine.rows(&scratch, p, &t).expect("rows")).collect::<Vec<_>>()
    };
    cx.on(cx.server, task).await
}

async fn projection(cx: &mut Ctx) {
    cx.warm_up().await;
    let tenant = cx.devs[0].tenant.clone();
    let committed = cx.server_tenant(&tenant).await;
    // The failure: the projection's incremental fold mishandles an event (the plan's planted
    // bug): it folds it twice (a corrupt row), or moves the cursor past it unfolded (a stale
    // index).
    let fired = cx.meet_planted_bugs(0).await;
    let stale = cx.plan.mutations.iter().any(|m| matches!(m.bug, Bug::ProjectionFold { effect: FoldEffect::Skipped, .. }));
    cx.inject(if stale { "projection_stale" } else { "projection_corrupt" }, json!({"fired": fired}));
    let found = crate::store_ops::inconsistent_projections(cx.devs[0].client()).unwrap_or_default();
    cx.symptom(!found.is_empty(), "the projection differs from a replay of the committed events (projection:inconsistent)", json!({"found": found}));
    for (p, _) in &found {
        let c = cx.devs[0].client();
        let _ = c.engine().mark_unhealthy(c.db(), p, "projection:inconsistent");
    }

    if cx.step("rebuild-trigger") {
        let scope = Scope { tenant: Some(tenant.clone()), ..Scope::default() };
        let r = if cx.wrong("rebuild-trigger") {
            // Done wrong: the events replayed in arrival order on this device's clock, newest
            // first, instead of the total order.
            let c = cx.devs[0].client();
            let mut sealed: Vec<_> = c.events().expect("events").iter().map(envelope::sealed_event).collect::<Result<_, _>>().expect("envelopes");
            sealed.reverse();
            c.engine().rebuild(c.db(), &sealed, &c.keys().ring, &scope).map_err(drill_stack::StoreError::from)
        } else {
            cx.devs[0].client().rebuild_projections(&scope)
        };
        cx.check(r.is_ok(), "the rebuild trigger clears and replays the derived state", json!({"error": r.err().map(|e| e.to_string())}));
    }
    if cx.step("verify-against-total-order") {
        let want = fold_of_server_order(cx, &tenant).await;
        let c = cx.devs[0].client();
        let have: Vec<_> = PROJECTIONS.iter().map(|p| c.projection_rows(p).unwrap_or_default()).collect();
        let last = c.events().expect("events").last().map(|e| e.seq).unwrap_or(0);
        let cursors: Vec<u64> = PROJECTIONS.iter().map(|p| c.projection_cursor(p).unwrap_or(0)).collect();
        let unhealthy = c.health(drill_stack::projections::health::EventStoreStatus::Writable).map(|h| h.unhealthy_projections).unwrap_or_default();
        cx.check(have == want, "every projection equals a fold of the server's events in the server's order", json!({}));
        cx.check(cursors.iter().all(|&c| c == last), "every projection folded up to the last event", json!({"cursors": cursors, "last": last}));
        cx.check(unhealthy.is_empty(), "no projection is marked unhealthy after the rebuild", json!({"unhealthy": unhealthy}));
    }
    let found = crate::store_ops::inconsistent_projections(cx.devs[0].client()).unwrap_or_default();
    cx.check(found.is_empty(), "the projections equal a replay of the committed events", json!({"found": found}));
    let rows = cx.devs[0].client().events().expect("events");
    let after: Vec<EventFact> = rows.iter().map(fact_of).collect();
    cx.recovery("device", &committed, &after, &BTreeSet::new());
}

// ---------------------------------------------------------------------------------------------
// Corrupt index artifact

async fn artifact(cx: &mut Ctx) {
    let tenant = cx.devs[0].tenant.clone();
    let (node, name) = (cx.devs[0].node, cx.devs[0].name.clone());
    close(cx, 0);
    open_keyed(cx, 0, &all_aggregates(&tenant)).await;
    cx.warm_up().await;
    let committed = cx.server_tenant(&tenant).await;
    let key = crate::store_ops::artifact_key(cx.devs[0].client()).expect("the device's keys are in a key store");
    let fs = cx.files(node);
    let mut rng = cx.seeds.stream(&format!("artifact-nonces/{name}"));
    {
        let c = cx.devs[0].client();
        artifacts::refresh(c.db(), &fs, c.engine(), &key, &tenant, &mut rng).expect("the artifact is written");
    }
    // The failure: bits of the artifact file flip on the device's disk.
    let flipped = DiskSim::current().flip_bit(node, ".idx");
    cx.inject("artifact_bits_flipped", json!({"device": name, "flipped": flipped.as_ref().map(|f| json!({"file": f.0, "offset": f.1, "bit": f.2}))}));
    let loaded = artifacts::load(&fs, &key, &tenant);
    let code = loaded.as_ref().err().map(ArtifactError::code);
    cx.symptom(code == Some("artifact:corrupt"), "loading the artifact fails authentication (artifact:corrupt)", json!({"code": code}));

    if cx.step("delete-artifact") {
        let r = artifacts::remove(&fs, &tenant);
        cx.check(r.is_ok(), "the corrupt artifact is deleted", json!({"error": r.err().map(|e| e.to_string())}));
    }
    if cx.step("rebuild-artifact") {
        // The rebuild fills in the artifacts that are missing.
        if let Err(ArtifactError::Missing { .. }) = artifacts::load(&fs, &key, &tenant) {
            let c = cx.devs[0].client();
            let r = artifacts::refresh(c.db(), &fs, c.engine(), &key, &tenant, &mut rng);
            cx.check(r.is_ok(), "the artifact is rebuilt from the projection", json!({"error": r.err().map(|e| e.to_string())}));
        }
    }
    let checked = {
        let c = cx.devs[0].client();
        artifacts::check(c.db(), &fs, c.engine(), &key, &tenant)
    };
    let rows = cx.devs[0].client().projection_rows(artifacts::SOURCE).unwrap_or_default();
    let entries = checked.as_ref().map(|i| i.entries.len()).unwrap_or(0);
    cx.check(
        checked.is_ok() && entries == rows.len(),
        "the artifact opens and equals a fresh build of the projection",
        json!({"error": checked.err().map(|e| e.code()), "entries": entries, "rows": rows.len()}),
    );
    let events = cx.devs[0].client().events().expect("events");
    let after: Vec<EventFact> = events.iter().map(fact_of).collect();
    cx.recovery("device", &committed, &after, &BTreeSet::new());
}

// ---------------------------------------------------------------------------------------------
// Saga stuck state

/// Starts the effects node and waits until its receiver is open.
async fn start_effects(cx: &mut Ctx) -> (madsim::task::NodeId, Arc<Mutex<Option<Receiver>>>) {
    let slot = Arc::new(Mutex::new(None));
    let ctx = Arc::new(EffectsCtx { slot: slot.clone(), shared: cx.shared.clone() });
    let handle = madsim::runtime::Handle::current();
    let node = handle.create_node().name(EFFECTS_NODE).ip(EFFECTS_IP).init(move || effects_main(ctx.clone())).build();
    lock(&cx.nodes).add(EFFECTS_NODE, node.id(), DiskFaults::none(), &cx.seeds);
    for _ in 0..EFFECTS_POLLS_MAX {
        if lock(&slot).is_some() {
            return (node.id(), slot);
        }
        madsim::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the effects node never opened its receiver");
}

/// The receiver's record: the effects it applied, and every delivery.
async fn receiver_record(cx: &Ctx, node: madsim::task::NodeId, slot: &Arc<Mutex<Option<Receiver>>>) -> (Vec<String>, Vec<DeliveryFact>) {
    let slot = slot.clone();
    let task = async move {
        let guard = lock(&slot);
        let r = guard.as_ref().expect("the receiver is open");
        let applied = r.applied().expect("the receiver's record reads");
        let log = r.log().expect("the receiver's log reads").into_iter().map(|d| DeliveryFact { effect_id: d.effect_id, applied: d.applied }).collect();
        (applied, log)
    };
    cx.on(node, task).await
}

/// Binds device `i`'s connection to the effects node.
async fn effects_client(cx: &mut Ctx, i: usize) -> EffectsClient {
    let boots = cx.devs[i].client().boots();
    cx.on(cx.devs[i].node, async move { EffectsClient::bind(boots).await }).await.expect("the device binds to the effects node")
}

/// Delivers `effect_id` until the effects node answers (a lost message is sent again).
async fn deliver_answered(fx: &mut EffectsClient, effect_id: &str, body: &str) -> Result<Delivered, drill_stack::saga::EffectError> {
    let mut last = None;
    for _ in 0..RECONCILE_ROUNDS_MAX {
        match fx.deliver(effect_id, body).await {
            Ok(d) => return Ok(d),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one attempt"))
}

async fn saga_stuck(cx: &mut Ctx) {
    let before_done = cx.drill.param == 1;
    let (effects, slot) = start_effects(cx).await;
    cx.warm_up().await;
    let tenant = cx.devs[0].tenant.clone();
    let (node, name) = (cx.devs[0].node, cx.devs[0].name.clone());
    let clock = NodeClock(node);
    let committed = cx.server_tenant(&tenant).await;
    let count = saga::tenant_counts(cx.devs[0].client().db()).expect("counts").get(&tenant).copied().unwrap_or(0);
    let threshold = rand::Rng::gen_range(&mut cx.rng, 1..=count.max(1));
    let achievement = AchievementSaga::new(threshold);
    let effect_id = achievement.effect_id(&tenant);
    let requested = achievement.observe(cx.devs[0].client().db(), &tenant, count, &clock).expect("the saga records its request");
    let begun = saga::begin_deliveries(cx.devs[0].client().db(), &clock).expect("the delivery begins");
    let mut delivered = None;
    if before_done {
        let mut fx = effects_client(cx, 0).await;
        delivered = Some(deliver_answered(&mut fx, &effect_id, &achievement.body(&tenant)).await.map(|d| d.first_time).map_err(|e| e.code()));
    }
    // The failure: the power goes before the saga records what happened.
    cx.crash_and_boot(&name);
    cx.inject(
        if before_done { "saga_crash_before_done" } else { "saga_crash_before_effect" },
        json!({"device": name, "effect_id": effect_id, "requested": requested, "begun": begun.len(), "delivered": delivered}),
    );
    cx.open(0).await.expect("the device reopens");
    let _ = cx.devs[0].client().project();
    let steps = saga::steps(cx.devs[0].client().db()).expect("saga steps");
    let (applied, _) = receiver_record(cx, effects, &slot).await;
    let stuck = steps.iter().any(|s| s.effect_id == effect_id && s.state != saga::State::Done);
    let happened = applied.contains(&effect_id);
    cx.symptom(
        stuck && happened == before_done,
        "a saga step is not done after the restart, its effect pending or unacknowledged",
        json!({"steps": steps.iter().map(|s| (s.effect_id.clone(), s.state.as_str())).collect::<Vec<_>>(), "applied": happened}),
    );

    if cx.step("reconcile-on-start") {
        let wrong = cx.wrong("reconcile-on-start");
        let mut fx = effects_client(cx, 0).await;
        for _ in 0..RECONCILE_ROUNDS_MAX {
            let db = cx.devs[0].client().db();
            let counts = saga::tenant_counts(db).expect("counts");
            for (t, &n) in &counts {
                achievement.observe(db, t, n, &clock).expect("requests re-derived from the counts");
            }
            let begun = saga::begin_deliveries(db, &clock).expect("deliveries begin");
            if begun.is_empty() {
                break;
            }
            for step in begun {
                let outcome = if wrong { Ok(Delivered { first_time: false }) } else { fx.deliver(&step.effect_id, &step.body).await };
                let r = saga::finish_delivery(cx.devs[0].client().db(), &step.effect_id, &outcome, &clock);
                trace::emit(
                    &name,
                    "store.saga_reconciled",
                    json!({"effect_id": step.effect_id, "outcome": outcome.as_ref().map(|d| d.first_time).map_err(|e| e.code()), "recorded": r.is_ok()}),
                );
            }
        }
    }
    let steps = saga::steps(cx.devs[0].client().db()).expect("saga steps");
    let (applied, log) = receiver_record(cx, effects, &slot).await;
    if cx.step("verify-effect-once") {
        let done = steps.iter().any(|s| s.effect_id == effect_id && s.state == saga::State::Done);
        let times = log.iter().filter(|d| d.effect_id == effect_id && d.applied).count();
        cx.check(done, "the saga step is done", json!({"effect_id": effect_id}));
        cx.check(
            times == 1 && applied.iter().filter(|a| **a == effect_id).count() == 1,
            "the effects node applied the effect exactly once",
            json!({"applied": times}),
        );
    }
    // INV-ONCE, by the model: the receiver's log next to the device's saga.
    let readable =
        cx.devs[0].client().events().map(|es| es.iter().filter(|e| e.tenant == tenant && cx.devs[0].client().open_payload(e).is_ok()).count() as u64);
    let facts = EffectsFacts {
        node: EFFECTS_NODE.into(),
        thresholds: vec![threshold],
        counts: vec![SagaCount { device: name.clone(), tenant: tenant.clone(), readable_events: readable.unwrap_or(0) }],
        steps: steps
            .iter()
            .map(|s| SagaStepFact { device: name.clone(), tenant: s.tenant.clone(), effect_id: s.effect_id.clone(), state: s.state.as_str().into() })
            .collect(),
        log,
        applied,
        settled: true,
    };
    debug_assert_eq!(achievement_id(&tenant, threshold), effect_id);
    let line = trace::emit(EFFECTS_NODE, "check.effects", json!({"drill": cx.drill.id, "applied": facts.applied.len(), "deliveries": facts.log.len()}));
    crate::node::observe(&cx.shared, Fact::Store(StoreFact::Effects(facts)), line);
    let rows = cx.devs[0].client().events().expect("events");
    let after: Vec<EventFact> = rows.iter().map(fact_of).collect();
    cx.recovery("device", &committed, &after, &BTreeSet::new());
}

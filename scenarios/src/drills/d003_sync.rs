//! Runbook 003 (VFS sync), §1 "Sync-State Divergence" and §4 "Guardrail Telemetry Reference":
//! one drill per guardrail signature.
//!
//! The failure: a device's transport turns faulty in one of the ways a guardrail exists for
//! (§4's table), or the device is offered a malformed state to hydrate from. The symptoms: every
//! sync attempt fails with the guardrail's exact `stage:code` signature and leaves the exported
//! state as it was. The recovery is §1's triage in order: capture the exported state, retry once
//! and capture it again (a change would be a fail-closed bug), compare the cursor and
//! `lastReconciledWriteIds` with the server's order, repair the transport, hydrate from the last
//! known-good exported state, and sync again. Checked: the device converges with the server
//! (count and chain head), its pending writes drained, and no committed event of its tenant was
//! lost (INV-RECOVERY).

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;

use serde_json::json;

use super::harness::Ctx;
use super::Drill;
use crate::plan::transport::TransportFaultKind as K;

const STEPS: &[&str] = &["capture-state", "retry-and-compare", "compare-with-server", "repair-transport", "hydrate-last-known-good", "re-run-sync"];
const HYDRATE_STEPS: &[&str] = &["capture-state", "hydrate-last-known-good", "re-run-sync"];

/// The transport faults of the eight guardrails, by `Drill::param`.
const FAULTS: [K; 7] = [
    K::PullEmptyPageHasMore,
    K::PullDuplicateOpReplay,
    K::PullCursorRegression,
    K::PullLastWriteIdRegression,
    K::ReconcileCursorRegression,
    K::ReconcileLastWriteIdRegression,
    K::StaleWriteIds,
];

const fn guardrail(id: &'static str, title: &'static str, param: u8) -> Drill {
    Drill { id, section: "003 §4, §1", title, steps: STEPS, devices: 3, server_retention: None, param, bugs: super::no_bugs, body: guardrail_body }
}

pub const DRILLS: &[Drill] = &[
    guardrail("003-4-pull-page-invariant", "hasMore with an empty page: pull:pullPageInvariantViolation, triage, hydrate, sync", 0),
    guardrail("003-4-pull-duplicate-op-replay", "an op replayed within a pull cycle: pull:pullDuplicateOpReplay, triage, hydrate, sync", 1),
    guardrail("003-4-pull-cursor-regression", "a regressing pull cursor: pull:pullCursorRegression, triage, hydrate, sync", 2),
    guardrail("003-4-pull-last-write-id-regression", "a pull regressing lastReconciledWriteIds: pull:lastWriteIdRegression, triage, hydrate, sync", 3),
    guardrail("003-4-reconcile-cursor-regression", "a regressing reconcile cursor: reconcile:reconcileCursorRegression, triage, hydrate, sync", 4),
    guardrail(
        "003-4-reconcile-last-write-id-regression",
        "a reconcile regressing lastReconciledWriteIds: reconcile:lastWriteIdRegression, triage, hydrate, sync",
        5,
    ),
    guardrail("003-4-stale-write-recovery-exhausted", "stale write ids past 2 renumbered retries: flush:staleWriteRecoveryExhausted, triage, hydrate, sync", 6),
    Drill {
        id: "003-4-hydrate-guardrail",
        section: "003 §4, §1",
        title: "a malformed state offered to hydrate: hydrate:hydrateGuardrailViolation, nothing changed; hydrate from the last known-good state, sync",
        steps: HYDRATE_STEPS,
        devices: 3,
        server_retention: None,
        param: 0,
        bugs: super::no_bugs,
        body: hydrate_body,
    },
];

fn guardrail_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(guardrail_drill(cx))
}

fn hydrate_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(hydrate_drill(cx))
}

/// Device 0 (tenant acme) is the one that fails; device 2 shares its tenant and writes while it
/// is stuck, so that there is something to pull.
async fn guardrail_drill(cx: &mut Ctx) {
    let kind = FAULTS[cx.drill.param as usize];
    let want = kind.signature().expect("a guardrail fault");
    cx.warm_up().await;
    let tenant = cx.devs[0].tenant.clone();
    let committed = cx.server_tenant(&tenant).await;
    let n = rand::Rng::gen_range(&mut cx.rng, 1..=3);
    cx.append(2, n);
    cx.sync(2).await.expect("the other device syncs");
    let pending = cx.append(0, 2);
    cx.transport(0, Some(kind));
    cx.inject("transport", json!({"device": cx.devs[0].name, "fault": kind}));
    let first = cx.sync_through_loss(0).await;
    let sig = first.as_ref().err().and_then(|e| e.signature());
    cx.symptom(sig.as_deref() == Some(want), want, json!({"got": sig}));

    let mut captured = None;
    if cx.step("capture-state") {
        captured = cx.devs[0].client().export_state().ok();
    }
    if cx.step("retry-and-compare") {
        let again = cx.sync_through_loss(0).await;
        let after = cx.devs[0].client().export_state().ok();
        let sig = again.as_ref().err().and_then(|e| e.signature());
        cx.check(sig.as_deref() == Some(want), "the retry fails with the same signature", json!({"got": sig}));
        cx.check(captured.is_some() && after == captured, "a failed attempt leaves the exported state unchanged", json!({}));
    }
    if cx.step("compare-with-server") {
        let state = cx.devs[0].client().export_state().expect("state");
        let server = cx.server_tenant(&tenant).await;
        let head = server.last().map(|e| e.seq).unwrap_or(0);
        let own = server.iter().filter(|e| e.replica == state.replica).map(|e| e.write_id).max().unwrap_or(0);
        let reconciled = state.last_reconciled_write_ids.get(&state.replica).copied().unwrap_or(0);
        let behind = state.cursor < head;
        cx.check(
            state.cursor <= head && reconciled <= own,
            "the device is never ahead of the server's order",
            json!({"cursor": state.cursor, "server_head": head, "reconciled": reconciled, "server_write_id": own, "behind": behind}),
        );
    }
    if cx.step("repair-transport") {
        cx.transport(0, None);
    }
    if cx.step("hydrate-last-known-good") {
        let mut good = cx.devs[0].last_good.clone().expect("a sync succeeded in the warm-up");
        if cx.wrong("hydrate-last-known-good") {
            // Done wrong: the state is hand-edited instead of the one exported.
            good.last_reconciled_write_ids.insert(good.replica.clone(), 0);
        }
        hydrate(cx, &good);
    }
    resync_and_validate(cx, &tenant, &committed, &pending).await;
}

/// Post-recovery validation of device `i`: it converged, drained its pending writes, and every
/// committed event of its tenant is still on the server and on the device.
/// The hydrate step of runbook 003 §1: device 0 restarts sync from `good`.
fn hydrate(cx: &mut Ctx, good: &drill_stack::client::ExportedState) {
    let r = cx.devs[0].client().hydrate(good);
    cx.check(r.is_ok(), "the device hydrates from its last known-good state", json!({"error": r.err().map(|e| e.to_string())}));
}

/// The last step of runbook 003 §1 (device 0 syncs again), then the post-recovery validation.
async fn resync_and_validate(cx: &mut Ctx, tenant: &str, committed: &[drill_model::EventFact], pending: &[String]) {
    if cx.step("re-run-sync") {
        let r = cx.sync(0).await;
        cx.check(r.is_ok(), "the sync after hydrate succeeds", json!({"error": r.err().map(|e| e.to_string())}));
    }
    validate(cx, 0, tenant, committed, pending).await;
}

async fn validate(cx: &mut Ctx, i: usize, tenant: &str, committed: &[drill_model::EventFact], pending: &[String]) {
    let converged = cx.converged(i).await;
    cx.check(converged, "the device converged with the server (count and chain head)", json!({}));
    let outbox = cx.devs[i].client().outbox().map(|o| o.len()).unwrap_or(usize::MAX);
    cx.check(outbox == 0, "the pending queue drained", json!({"pending": outbox}));
    let server = cx.server_tenant(tenant).await;
    let pushed = pending.iter().all(|op| server.iter().any(|e| &e.op_id == op));
    cx.check(pushed, "the writes pending at the failure reached the server", json!({}));
    cx.recovery("server", committed, &server, &BTreeSet::new());
    let device = cx.device_events(i);
    cx.recovery("device", committed, &device, &BTreeSet::new());
}

async fn hydrate_drill(cx: &mut Ctx) {
    cx.warm_up().await;
    let tenant = cx.devs[0].tenant.clone();
    let committed = cx.server_tenant(&tenant).await;
    let n = rand::Rng::gen_range(&mut cx.rng, 1..=3);
    cx.append(2, n);
    cx.sync(2).await.expect("the other device syncs");
    let pending = cx.append(0, 1);
    let before = cx.devs[0].client().export_state().expect("state");
    let mut bad = cx.devs[0].last_good.clone().expect("a known-good state");
    bad.last_reconciled_write_ids.insert(bad.replica.clone(), 0);
    cx.inject("malformed_hydrate_state", json!({"device": cx.devs[0].name}));
    let r = cx.devs[0].client().hydrate(&bad);
    let sig = r.as_ref().err().and_then(|e| e.signature());
    let after = cx.devs[0].client().export_state().expect("state");
    cx.symptom(sig.as_deref() == Some("hydrate:hydrateGuardrailViolation"), "hydrate:hydrateGuardrailViolation", json!({"got": sig}));
    cx.check(before == after, "the refused hydrate changed nothing", json!({}));
    if cx.step("capture-state") {
        let s = cx.devs[0].client().export_state().ok();
        cx.check(s.as_ref() == Some(&before), "the captured state is the one before the attempt", json!({}));
    }
    if cx.step("hydrate-last-known-good") {
        let good = if cx.wrong("hydrate-last-known-good") { bad.clone() } else { cx.devs[0].last_good.clone().expect("known-good") };
        hydrate(cx, &good);
    }
    resync_and_validate(cx, &tenant, &committed, &pending).await;
}

//! Runbook 000 (local-first failure modes), "Sync divergence": a device whose `since` is behind
//! the server's retention.
//!
//! The failure: the server keeps only a window of each tenant's events and compacts the rest,
//! while a device is away; its cursor is now before the oldest event the server still holds. The
//! symptom: its sync is refused with the explicit `pull:resyncRequired` answer naming the floor,
//! and nothing changes on the device. The recovery is the explicit path the protocol defines: a
//! full resync from the floor (the device's events go, its chain is anchored at the floor), then
//! a sync that pulls from there and pushes what the device wrote meanwhile. Checked: the device
//! converges with the server (count and chain head), its pending writes reach the server, and
//! every event the server still holds is on the device (INV-RECOVERY); the compacted history
//! before the floor is what the runbook allows to be gone from the device.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;

use drill_stack::SyncError;
use serde_json::json;

use super::harness::Ctx;
use super::Drill;

/// Events the drill's server keeps per tenant.
const KEEP_EVENTS: u64 = 6;

pub const DRILLS: &[Drill] = &[Drill {
    id: "000-sync-divergence-retention-resync",
    section: "000 Sync divergence",
    title: "a device's since is behind the server's retention: pull:resyncRequired, full resync from the floor, sync, converge",
    steps: &["surface-recovery-path", "full-resync", "re-run-sync", "validate-convergence"],
    devices: 3,
    server_retention: Some(KEEP_EVENTS),
    param: 0,
    bugs: super::no_bugs,
    body: retention_body,
}];

fn retention_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(retention(cx))
}

async fn retention(cx: &mut Ctx) {
    cx.append(0, 2);
    cx.sync(0).await.expect("the device syncs before it goes away");
    // While device 0 is away its tenant writes past the server's window.
    let rounds = rand::Rng::gen_range(&mut cx.rng, 3..=5);
    for _ in 0..rounds {
        cx.append(2, KEEP_EVENTS as usize / 2 + 1);
        cx.sync(2).await.expect("the other device syncs");
    }
    let pending = cx.append(0, 2);
    let tenant = cx.devs[0].tenant.clone();
    let committed = cx.server_tenant(&tenant).await;
    cx.inject("server_compacted_past_device", json!({"keep_events": KEEP_EVENTS, "rounds": rounds}));
    let before = cx.devs[0].client().export_state().expect("state");
    let r = cx.sync_through_loss(0).await;
    let after = cx.devs[0].client().export_state().expect("state");
    let floor = match &r {
        Err(SyncError::ResyncRequired { floor_seq, floor_hash }) => Some((*floor_seq, floor_hash.clone())),
        _ => None,
    };
    let code = r.as_ref().err().map(|e| e.code());
    cx.symptom(
        floor.is_some() && before == after,
        "pull:resyncRequired, the exported state unchanged",
        json!({"code": code, "floor": floor.as_ref().map(|f| f.0)}),
    );
    if cx.step("surface-recovery-path") {
        let explicit = floor.as_ref().is_some_and(|(seq, hash)| *seq > before.cursor && !hash.is_empty());
        cx.check(explicit, "the answer names the floor the device must resync from", json!({"cursor": before.cursor, "floor": floor.as_ref().map(|f| f.0)}));
    }
    if cx.step("full-resync") {
        if let Some((seq, hash)) = &floor {
            let r = cx.devs[0].client().full_resync(*seq, hash);
            cx.check(r.is_ok(), "the device resyncs from the floor, its pending writes kept", json!({"error": r.err().map(|e| e.to_string())}));
        }
    }
    if cx.step("re-run-sync") {
        let r = cx.sync(0).await;
        cx.check(r.is_ok(), "the sync after the full resync succeeds", json!({"error": r.err().map(|e| e.to_string())}));
    }
    if cx.step("validate-convergence") {
        let ok = cx.converged(0).await;
        cx.check(ok, "count and chain head equal the server's", json!({}));
        let server = cx.server_tenant(&tenant).await;
        let pushed = pending.iter().all(|op| server.iter().any(|e| &e.op_id == op));
        cx.check(pushed, "the writes made while away reached the server", json!({}));
    }
    let device = cx.device_events(0);
    cx.recovery("device", &committed, &device, &BTreeSet::new());
}

//! Runbook 004 (event store disaster recovery), §3.1 "Hash-Chain Verification", §6.1
//! "Database Corruption" and §6.3 "Partial Write Failure".
//!
//! - `004-3.1-hash-chain-tamper`. The failure: one stored event's payload on the server is
//!   changed behind the stack's back. The recovery is §3.1's procedure — read the events in
//!   order, recompute each hash, compare with the stored one, flag the first mismatch — and then
//!   the flagged event restored from a replica whose own chain verifies it. Checked: the exact
//!   tampered event is flagged, the chain verifies after the restore, and no committed event is
//!   lost or changed (INV-RECOVERY).
//! - `004-6.1-database-corruption`. The failure: bits flipped in a device's database file on
//!   disk. The symptom: opening or querying it fails with the store's corruption error (pages
//!   are checksummed). The recovery is §6.1's: restore the last verified backup, verify its hash
//!   chain, replay what the server committed since, and verify the state. Checked: the device
//!   converges and holds every committed event (INV-RECOVERY).
//! - `004-6.3-partial-write-failure`. The failure: a device's disk fails the commit of its
//!   projections right after the commit of the events a sync pulled. The symptom: the events are
//!   persisted but the projections did not fold them. The recovery is §6.3's: the next startup
//!   folds every event not yet folded. Checked: each projection's cursor reaches the last event,
//!   its rows equal a full rebuild from the events, and no committed event is lost.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;

use drill_model::EventFact;
use drill_sim::disk::DiskSim;
use drill_stack::chain::{first_broken, Link};
use drill_stack::fs::FileSystem;
use serde_json::json;

use super::harness::Ctx;
use super::Drill;
use crate::procs::DEVICE_DB;

pub const DRILLS: &[Drill] = &[
    Drill {
        id: "004-3.1-hash-chain-tamper",
        section: "004 §3.1",
        title: "a stored event changed on the server: verify the chain, flag the exact event, restore it from a replica",
        steps: &["read-events-in-order", "recompute-and-compare", "flag-corrupt-event", "restore-from-replica", "verify-again"],
        devices: 3,
        server_retention: None,
        param: 0,
        body: tamper_body,
    },
    Drill {
        id: "004-6.3-partial-write-failure",
        section: "004 §6.3",
        title: "events persisted but projections not updated: the next startup folds them; verify against a full rebuild",
        steps: &["restart", "verify-projections"],
        devices: 3,
        server_retention: None,
        param: 0,
        body: partial_body,
    },
    Drill {
        id: "004-6.1-database-corruption",
        section: "004 §6.1, §3.1",
        title: "bits flipped in a device's database: restore the last verified backup, verify its chain, replay since, verify",
        steps: &["restore-backup", "verify-chain", "replay-since-backup", "verify-state"],
        devices: 3,
        server_retention: None,
        param: 0,
        body: disk_body,
    },
];

fn tamper_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(tamper(cx))
}

fn disk_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(disk(cx))
}

fn partial_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(partial(cx))
}

/// The projections a device folds.
const PROJECTIONS: [&str; 2] = ["aggregate_state", "tenant_counters"];

async fn partial(cx: &mut Ctx) {
    use drill_sim::disk::{IoFault, IoOp};
    cx.warm_up().await;
    let tenant = cx.devs[0].tenant.clone();
    let node = cx.devs[0].node;
    // The disk fails the k-th sync from now: the one after the events' commit is the
    // projections' commit. A try that hits the events' commit fails closed; the next try fails
    // one sync later.
    let mut hit = None;
    for k in 2..=8u64 {
        let n = rand::Rng::gen_range(&mut cx.rng, 1..=3);
        cx.append(2, n);
        cx.sync(2).await.expect("the other device syncs");
        DiskSim::current().arm_io_fault(node, IoFault { op: IoOp::Sync, nth: k, persistent: false });
        let r = cx.sync_through_loss(0).await;
        DiskSim::current().clear_io_faults(node);
        if let Ok(r) = r {
            if r.pulled > 0 && r.projection_error.is_some() {
                hit = Some((k, r.projection_error));
                break;
            }
        }
        // The device recovers from a failed try before the next one.
        cx.crash_and_boot(&cx.devs[0].name.clone());
        cx.open(0).await.expect("reopen");
        let _ = cx.devs[0].client().project();
        let _ = cx.sync(0).await;
    }
    cx.inject("projection_commit_fails", json!({"device": cx.devs[0].name, "sync": hit.as_ref().map(|h| h.0)}));
    let committed = cx.server_tenant(&tenant).await;
    let last = cx.device_events(0).last().map(|e| e.seq).unwrap_or(0);
    let cursors: Vec<u64> = PROJECTIONS.iter().map(|p| cx.devs[0].client().projection_cursor(p).unwrap_or(0)).collect();
    let behind = cursors.iter().any(|&c| c < last);
    cx.symptom(
        hit.is_some() && behind,
        "the event is persisted but the projection is not updated",
        json!({"error": hit.and_then(|h| h.1), "last_event": last, "cursors": cursors}),
    );
    if cx.step("restart") {
        // Startup folds whatever the projections missed.
        let name = cx.devs[0].name.clone();
        cx.crash_and_boot(&name);
        cx.open(0).await.expect("reopen");
        let r = cx.devs[0].client().project();
        cx.check(r.is_ok(), "startup folds the missed events", json!({"error": r.err().map(|e| e.to_string())}));
    }
    if cx.step("verify-projections") {
        let cursors: Vec<u64> = PROJECTIONS.iter().map(|p| cx.devs[0].client().projection_cursor(p).unwrap_or(0)).collect();
        let rows: Vec<_> = PROJECTIONS.iter().map(|p| cx.devs[0].client().projection_rows(p).ok()).collect();
        let rebuilt = cx.devs[0].client().rebuild_projections(&drill_stack::projections::Scope::default());
        let again: Vec<_> = PROJECTIONS.iter().map(|p| cx.devs[0].client().projection_rows(p).ok()).collect();
        cx.check(cursors.iter().all(|&c| c >= last), "every projection folded up to the last event", json!({"cursors": cursors, "last_event": last}));
        cx.check(rebuilt.is_ok() && rows == again, "the projections equal a full rebuild from the events", json!({}));
    }
    let device = cx.device_events(0);
    cx.recovery("device", &committed, &device, &BTreeSet::new());
}

/// The first event of `events` (one tenant, in order) whose hash does not verify. With
/// `recompute` false only the stored links are followed (each `prev_hash` is the previous
/// `hash`), which is what verification done wrong looks like.
fn verify(events: &[EventFact], recompute: bool) -> Option<u64> {
    if !recompute {
        return events.windows(2).find(|w| w[1].prev_hash != w[0].hash).map(|w| w[1].seq);
    }
    first_broken(events.iter().map(|e| Link { seq: e.seq, kind: &e.kind, tenant: &e.tenant, payload: &e.stored, prev_hash: &e.prev_hash, hash: &e.hash }))
}

async fn tamper(cx: &mut Ctx) {
    cx.warm_up().await;
    let tenant = cx.devs[0].tenant.clone();
    let committed = cx.server_tenant(&tenant).await;
    let victim = committed[rand::Rng::gen_range(&mut cx.rng, 0..committed.len())].seq;
    let changed = cx
        .server(move |s| s.registry_conn().execute("UPDATE events SET payload = CAST(payload || x'00' AS BLOB) WHERE seq = ?1", [victim]).expect("tampered"))
        .await;
    cx.inject("event_payload_tampered", json!({"node": "server", "seq": victim, "rows": changed}));
    let stored = cx.server_tenant(&tenant).await;
    cx.symptom(verify(&stored, true) == Some(victim), "the hash chain no longer verifies", json!({"seq": victim}));
    let mut events = Vec::new();
    if cx.step("read-events-in-order") {
        events = cx.server_tenant(&tenant).await;
    }
    let mut flagged = None;
    if cx.step("recompute-and-compare") {
        flagged = verify(&events, !cx.wrong("recompute-and-compare"));
    }
    if cx.step("flag-corrupt-event") {
        cx.check(flagged == Some(victim), "the exact tampered event is flagged", json!({"flagged": flagged, "tampered": victim}));
    }
    if cx.step("restore-from-replica") {
        // The replica's copy verifies against its own chain before it is trusted.
        let replica = cx.device_events(0);
        let copy = replica.iter().find(|e| Some(e.seq) == flagged).cloned();
        let trusted = verify(&replica, true).is_none();
        cx.check(copy.is_some() && trusted, "a replica holds a verified copy of the flagged event", json!({}));
        if let Some(copy) = copy.filter(|_| trusted) {
            let sql = format!("UPDATE events SET payload = x'{}' WHERE seq = {}", hex::encode(&copy.stored), copy.seq);
            cx.server(move |s| s.registry_conn().execute_batch(&sql).expect("restored")).await;
        }
    }
    if cx.step("verify-again") {
        let after = cx.server_tenant(&tenant).await;
        cx.check(verify(&after, true).is_none(), "the chain verifies end to end after the restore", json!({}));
    }
    let server = cx.server_tenant(&tenant).await;
    cx.recovery("server", &committed, &server, &BTreeSet::new());
}

async fn disk(cx: &mut Ctx) {
    cx.warm_up().await;
    let tenant = cx.devs[0].tenant.clone();
    let node = cx.devs[0].node;
    // The last verified backup: taken with the device closed and its log checkpointed into the
    // database file, and its chain verified.
    cx.devs[0].client = None;
    cx.devs[0].rpc = None;
    cx.open(0).await.expect("reopen");
    let backup_events = cx.device_events(0);
    cx.devs[0].client = None;
    cx.devs[0].rpc = None;
    let fs = cx.files(node);
    let backup = fs.read(DEVICE_DB).expect("the database file reads");
    let verified = verify(&backup_events, true).is_none();
    cx.check(verified, "the backup's chain verified when it was taken", json!({"events": backup_events.len()}));
    cx.open(0).await.expect("reopen");
    // The tenant moves on after the backup: another device writes.
    let n = rand::Rng::gen_range(&mut cx.rng, 1..=3);
    cx.append(2, n);
    cx.sync(2).await.expect("the other device syncs");
    cx.sync(0).await.expect("the device pulls");
    let committed = cx.server_tenant(&tenant).await;
    let name = cx.devs[0].name.clone();
    cx.devs[0].client = None;
    cx.devs[0].rpc = None;
    // Bits flip until a page the device reads is hit (checksummed pages make it an error).
    let mut flips = 0;
    let mut broken = None;
    while broken.is_none() && flips < 64 {
        for _ in 0..4 {
            DiskSim::current().flip_bit(node, DEVICE_DB);
            flips += 1;
        }
        broken = match cx.open(0).await {
            Err(e) => Some(e.to_string()),
            Ok(()) => match cx.devs[0].client().events() {
                Err(e) => Some(e.to_string()),
                Ok(_) => {
                    cx.devs[0].client = None;
                    cx.devs[0].rpc = None;
                    None
                }
            },
        };
    }
    cx.inject("disk_bit_flips", json!({"device": name, "flips": flips}));
    cx.symptom(broken.is_some(), "queries return errors (a page fails its checksum)", json!({"error": broken}));
    cx.devs[0].client = None;
    cx.devs[0].rpc = None;
    if cx.step("restore-backup") {
        let fs = cx.files(node);
        let _ = fs.rename(DEVICE_DB, "device.db.damaged");
        for side in ["device.db-wal", "device.db-shm"] {
            if fs.exists(side).unwrap_or(false) {
                let _ = fs.remove(side);
            }
        }
        let _ = fs.sync_dir();
        DiskSim::current().put_file(node, DEVICE_DB, &backup);
    }
    let reopened = cx.open(0).await;
    let events = match &reopened {
        Ok(()) => cx.devs[0].client().events().ok(),
        Err(_) => None,
    };
    if cx.step("verify-chain") {
        let ok = events.as_ref().is_some_and(|e| verify(&e.iter().map(super::harness::fact_of).collect::<Vec<_>>(), true).is_none());
        cx.check(ok, "the restored database opens and its chain verifies", json!({"error": reopened.as_ref().err().map(|e| e.to_string())}));
    }
    if events.is_none() {
        cx.check(false, "the device has a readable database after the recovery", json!({}));
        return;
    }
    if cx.step("replay-since-backup") {
        let r = cx.sync(0).await;
        cx.check(r.is_ok(), "what the server committed since the backup is replayed", json!({"error": r.err().map(|e| e.to_string())}));
    }
    if cx.step("verify-state") {
        let ok = cx.converged(0).await;
        cx.check(ok, "the device's count and chain head equal the server's", json!({}));
    }
    let device = cx.device_events(0);
    cx.recovery("device", &committed, &device, &BTreeSet::new());
}

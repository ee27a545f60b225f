//! Runbook 004 (event store disaster recovery), §3.1 "Hash-Chain Verification", §6.1
//! "Database Corruption" and §6.3 "Partial Write Failure".
//!
//! - `004-3.1-hash-chain-tamper`, on the server's event store. The world: the server archives
//!   every committed push continuously to the backup node (its own node), and the operator took
//!   the daily full backup there; the tenant moved on after it, and a newer backup was damaged on
//!   the backup node's disk (a bit flipped in its object). The failure: a bug of the server's
//!   event-store writer (the plan's planted `stored_payload`) stores one pushed event with its
//!   payload changed, while its hash, the push's answer and the archive hold the event as
//!   pushed. The symptoms: the device's pull of the event is refused by its own chain check
//!   (`pull:hashChainViolation`), and the server's chain check (§3.1: read in order, recompute
//!   each hash, compare) flags exactly that event. The
//!   recovery, triggered by that flag, is §6.1's through the server's operator API, never an edit
//!   by hand: READ_ONLY, restore the newest backup that passes its verification checklist (the
//!   damaged one is refused for the previous verified one), replay
//!   the archive since it, rebuild the projections, verify every tenant's count and head against
//!   what the chain promised, and NORMAL once they match. Checked: the exact tampered event is
//!   flagged, the chain verifies end to end afterwards, the event is back as pushed, the server's projections equal the
//!   model's fold of its events (INV-SERVER-PROJECTION), the server takes writes again, and no
//!   committed event is lost or changed (INV-RECOVERY).
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

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;

use drill_model::server_dr::{check_server_projection, fold_aggregate_state, SERVER_PROJECTION};
use drill_model::EventFact;
use drill_sim::disk::DiskSim;
use drill_sim::trace;
use drill_stack::chain::{first_broken, Link};
use drill_stack::clock::Clock;
use drill_stack::fs::FileSystem;
use drill_stack::projections::resilience::Mode;
use drill_stack::projections::Scope;
use drill_stack::server::restore::{choose_backup, ReplayPoint};
use drill_stack::server::{ArchiveMode, Diagnostics, FullBackup, ModeScope, Transition};
use serde_json::json;

use super::harness::{fact_of, Ctx, BUGGY_KIND};
use super::Drill;
use crate::backup_world::{BackupWorld, BACKUP_NODE};
use crate::node::{NodeClock, DEVICE_DB};
use crate::plan::{Bug, Mutation};

pub const DRILLS: &[Drill] = &[
    Drill {
        id: "004-3.1-hash-chain-tamper",
        section: "004 §3.1",
        title:
            "a server bug stores an event changed: devices refuse it, the chain check flags the exact event; restore the verified backup and replay the archive",
        steps: &["verify-chain", "set-read-only", "restore-verified-backup", "replay-archive", "rebuild-projections", "verify-tenants", "restore-normal"],
        devices: 3,
        server_retention: None,
        param: 0,
        bugs: writer_bug,
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
        bugs: super::no_bugs,
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
        bugs: super::no_bugs,
        body: disk_body,
    },
];

/// §3.1: the server's event-store writer stores a changed payload for one event of
/// [`BUGGY_KIND`].
fn writer_bug(_: &mut drill_sim::rng::Stream) -> Vec<Mutation> {
    vec![Mutation { node: "server".into(), bug: Bug::StoredPayload { event_kind: BUGGY_KIND.into() }, after: 0, times: 1 }]
}

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
    let backups = BackupWorld::start(cx);
    let mode = ArchiveMode::Asynchronous { window_events_max: ARCHIVE_WINDOW_EVENTS };
    cx.server(move |s| s.set_archive_mode(Some(mode)).expect("the archive mode is set")).await;
    cx.warm_up().await;
    let tenant = cx.devs[0].tenant.clone();
    let server_node = cx.server;
    let taken_ms = NodeClock(server_node).now_unix_ms();
    let backup = backups.take_backup(1, taken_ms).await;
    cx.check(backup.is_ok(), "the daily full backup is on the backup node", json!({"backup": backup.as_ref().map(|m| m.through_seq).map_err(|e| e.clone())}));
    // The tenant moves on after the backup; only the archive holds these events elsewhere.
    for i in 0..cx.devs.len() {
        let n = rand::Rng::gen_range(&mut cx.rng, 1..=2);
        cx.append(i, n);
        cx.sync(i).await.unwrap_or_else(|e| panic!("a sync after the backup failed: {e}"));
    }
    let mut committed = cx.server_tenant(&tenant).await;
    // The failure: the server's event-store writer has a bug (the plan's planted
    // `stored_payload`) that stores a changed payload for events of one kind. Device 0 writes
    // one; the server acknowledges it, hashing and archiving the event as pushed, and stores the
    // changed row; the device's pull of it is refused by its own chain check.
    let pushed = cx.append_kind(0, 1, BUGGY_KIND);
    let payload = cx.devs[0].client().pending_write(&pushed[0]).ok().flatten().map(|w| w.payload);
    let caught = cx.plan.mutations.iter().find_map(|m| m.bug.caught_by()).unwrap_or("pull:hashChainViolation");
    let pulled = cx.sync_expecting(0, caught).await;
    let refused = pulled.as_ref().err().and_then(drill_stack::SyncError::signature);
    let fired: u32 = cx.planted_fired_on("server").iter().map(|(_, n)| n).sum();
    let op = pushed[0].clone();
    let stored = cx.server(move |s| s.events().expect("the server's events")).await.into_iter().find(|e| e.op_id == op);
    let victim = stored.as_ref().map(|e| e.seq).unwrap_or(0);
    // What the server committed and acknowledged is the event as pushed.
    if let (Some(mut row), Some(p)) = (stored, payload.clone()) {
        row.payload = p;
        committed.push(fact_of(&row));
    }
    cx.inject("event_payload_tampered", json!({"node": "server", "seq": victim, "fired": fired, "device_pull": refused}));
    cx.symptom(refused.as_deref() == Some(caught), "devices refuse the stored event: it does not extend their chain", json!({"signature": refused}));
    let drained = backups.drained().await;
    cx.check(drained, "the archive shipped every committed event", json!({}));
    // A newer backup, damaged on the backup node's disk: the restore must refuse it for the
    // previous verified one.
    let newer = backups.take_backup(2, NodeClock(server_node).now_unix_ms()).await;
    let flipped = DiskSim::current().flip_bit(backups.node, &FullBackup::object_name(2));
    cx.inject("backup_object_corrupted", json!({"node": BACKUP_NODE, "backup": 2, "shipped": newer.is_ok(), "flipped": flipped.map(|f| f.1)}));
    // What the chain promises: every tenant's count and head (a changed payload leaves both).
    let promised = cx.server(|s| s.diagnostics().expect("diagnostics")).await;
    let broken = cx.server(|s| s.verify_chain().expect("the chain check runs")).await;
    cx.symptom(broken.contains(&(tenant.clone(), victim)), "the hash chain no longer verifies", json!({"seq": victim, "broken": broken}));

    let mut flagged = None;
    if cx.step("verify-chain") {
        flagged = if cx.wrong("verify-chain") {
            // Done wrong: only the stored links are followed, no hash recomputed.
            verify(&cx.server_tenant(&tenant).await, false)
        } else {
            cx.server(|s| s.verify_chain().expect("the chain check runs")).await.into_iter().find(|(t, _)| *t == tenant).map(|(_, seq)| seq)
        };
        cx.check(flagged == Some(victim), "the exact tampered event is flagged", json!({"flagged": flagged, "tampered": victim}));
    }
    // The flag is what sends the operator to the restore; without it nothing is repaired.
    if flagged.is_some() {
        restore_server(cx, &backups, &promised).await;
    }
    let after = cx.server(|s| s.verify_chain().expect("the chain check runs")).await;
    cx.check(after.is_empty(), "the chain verifies end to end after the restore", json!({"broken": after}));
    let back = cx.server(move |s| s.events().expect("the server's events")).await.into_iter().find(|e| e.seq == victim).map(|e| e.payload);
    cx.check(back.is_some() && back == payload, "the tampered event is back as the device pushed it", json!({"seq": victim}));
    judge_server_projections(cx).await;
    let i = 0;
    cx.append(i, 1);
    let r = cx.sync(i).await;
    let taken = r.as_ref().is_ok_and(|r| r.push_deferred.is_none());
    cx.check(taken, "the server takes writes again", json!({"sync": r.map(|r| r.push_deferred).map_err(|e| e.to_string())}));
    let server = cx.server_tenant(&tenant).await;
    cx.recovery("server", &committed, &server, &BTreeSet::new());
}

/// Events the asynchronous archive may hold unshipped in the 3.1 drill (far more than it
/// writes: the drill waits for the archiver before it tampers).
const ARCHIVE_WINDOW_EVENTS: u64 = 256;

/// Runbook 004 §6.1 on the server, one operator command a step: READ_ONLY, the newest verified
/// backup from the backup node into the store, the archive since it, projections, each tenant
/// against `promised`, then NORMAL once they all match.
async fn restore_server(cx: &mut Ctx, backups: &BackupWorld, promised: &[Diagnostics]) {
    if cx.step("set-read-only") {
        let t = cx.server(|s| s.set_mode(&ModeScope::Server, Mode::ReadOnly, &[])).await;
        trace_transition(&t);
    }
    let mut timeline = None;
    if cx.step("restore-verified-backup") {
        let fetched = backups.fetch_backups().await;
        let timelines_max = backups.fetch_segments(0).await.map(|(_, max)| max).unwrap_or(0);
        let restored = match fetched {
            Ok(all) => {
                let (chosen, refused) = choose_backup(&all);
                let refused_newer = chosen.is_some_and(|b| b.manifest.id == 1) && refused.iter().any(|v| v.id == 2 && !v.passed());
                cx.check(refused_newer, "the damaged newer backup is refused for the previous verified one", json!({"chosen": chosen.map(|b| b.manifest.id)}));
                let refused: Vec<_> = refused.iter().map(|v| json!({"id": v.id, "failed": v.failure().map(|i| i.name)})).collect();
                match chosen.cloned() {
                    Some(b) => {
                        let id = b.manifest.id;
                        let tl = b.manifest.timeline;
                        let r = cx.server(move |s| s.restore_backup(&b, timelines_max).map(|v| v.passed()).map_err(|e| e.to_string())).await;
                        timeline = r.is_ok().then_some(tl);
                        json!({"backup": id, "refused": refused, "restored": r})
                    }
                    None => json!({"backup": null, "refused": refused}),
                }
            }
            Err(e) => json!({"error": e.to_string()}),
        };
        cx.check(timeline.is_some(), "a verified backup is restored into the store", restored);
    }
    if cx.step("replay-archive") {
        // The archive of the timeline the running store sealed on (the backup's, once restored).
        let tl = match timeline {
            Some(tl) => tl,
            None => cx.server(|s| s.archive_timeline().expect("the timeline reads")).await,
        };
        let segments = backups.fetch_segments(tl).await;
        let detail = match segments {
            Ok((segs, _)) => {
                let r = cx.server(move |s| s.replay_archive(&segs, ReplayPoint::End)).await;
                match r {
                    Ok(rep) => {
                        json!({"replayed": rep.replayed, "segments": rep.segments, "stopped_at": rep.stopped_at, "through_seq": rep.through_seq, "ok": rep.stopped_at.is_none()})
                    }
                    Err(e) => json!({"error": e.to_string(), "ok": false}),
                }
            }
            Err(e) => json!({"error": e.to_string(), "ok": false}),
        };
        cx.check(detail["ok"] == true, "the archive since the backup replays to its end", detail);
    }
    if cx.step("rebuild-projections") {
        let r = cx.server(|s| s.rebuild_projections(&Scope::default()).map(|_| ()).map_err(|e| e.to_string())).await;
        cx.check(r.is_ok(), "the server's projections are rebuilt", json!({"error": r.err()}));
    }
    let mut verified = false;
    if cx.step("verify-tenants") {
        let want = promised.to_vec();
        let mismatches = cx.server(move |s| s.verify_tenants(&want).expect("the tenants read")).await;
        verified = mismatches.is_empty();
        let shown: Vec<_> = mismatches
            .iter()
            .map(|m| json!({"tenant": m.tenant, "expected": m.expected.as_ref().map(|e| e.0), "found": m.found.as_ref().map(|f| f.0)}))
            .collect();
        cx.check(verified, "every tenant's count and head are what the chain promised", json!({"mismatches": shown}));
    }
    // NORMAL only once the state is verified (§6.1 step 6).
    if verified && cx.step("restore-normal") {
        let t = cx.server(|s| s.set_mode(&ModeScope::Server, Mode::Normal, &[])).await;
        trace_transition(&t);
    }
}

fn trace_transition(t: &Result<Transition, drill_stack::StoreError>) {
    let detail = match t {
        Ok(t) => json!({"scope": format!("{:?}", t.scope), "from": t.from.as_str(), "to": t.to.as_str()}),
        Err(e) => json!({"error": e.to_string()}),
    };
    trace::emit("server", "server.mode", detail);
}

/// INV-SERVER-PROJECTION: the server's `aggregate_state` of every tenant equals the model's fold
/// of the server's events.
async fn judge_server_projections(cx: &mut Ctx) {
    let (rows, events) = cx
        .server(|s| {
            let events = s.events().expect("the server's events read back");
            let tenants = s.tenants().expect("the tenants read");
            let rows: BTreeMap<String, Vec<Vec<String>>> = tenants
                .into_iter()
                .map(|t| {
                    let r = s.projection_rows("aggregate_state", &t).unwrap_or_default();
                    (t, r)
                })
                .filter(|(_, r)| !r.is_empty())
                .collect();
            (rows, events)
        })
        .await;
    let aggregates: BTreeMap<u64, String> = events.iter().map(|e| (e.seq, e.aggregate.clone())).collect();
    let facts: Vec<EventFact> = events.iter().map(super::harness::fact_of).collect();
    let folded = fold_aggregate_state(&facts, |e| aggregates[&e.seq].clone());
    cx.judge(SERVER_PROJECTION, "server", check_server_projection(&folded, &rows));
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

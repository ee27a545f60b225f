//! Runbook 004 (event store disaster recovery), §2.1 and §2.2 (resilience mode transitions),
//! §5.3 (backup verification checklist), §6.2 (projection inconsistency), §6.4 (tenant data
//! isolation breach) and §7.2 (health indicators), on a device's store.
//!
//! - `004-2.1-mode-transitions`. The failure: the non-essential projection folds wrong (a planted
//!   bug of its incremental fold). The
//!   operator goes NORMAL → DEGRADED (that projection switched off, writes still taken; the
//!   essential one keeps folding) → READ_ONLY (every command refused with `store:readOnly`,
//!   stored content unchanged, INV-READ-ONLY) → a rebuild → NORMAL, where the switched-off
//!   projection catches up. Each transition is checked by what the device then does.
//! - `004-5.3-backup-verification`. A backup of a device's database goes through the checklist:
//!   restored to a clean file, opened and integrity-checked, hash chain verified, projections
//!   rebuilt and compared with the model's fold, event count compared with the server's, no
//!   other tenant's data. Five bad copies (truncated, a flipped byte, an event changed, a stale
//!   copy, another tenant's event) must each be rejected by some item; the good one passes all.
//! - `004-6.2-projection-inconsistency`. A planted bug of one projection's incremental fold (drawn
//!   from the seed) folds an event twice; the stack's verification
//!   (a replay into a scratch database) flags exactly that projection, which is marked unhealthy,
//!   truncated and replayed; the verification and the dashboard are clean again.
//! - `004-6.4-tenant-isolation-breach`. The stack's own guard refuses a pull page carrying
//!   another tenant's event (`pull:tenantViolation`, the attempt failing closed); then such an
//!   event lands in the store anyway (written into the database directly) and a full replay folds
//!   it. Recovery: READ_ONLY, audit the store for cross-tenant events, review the scope guards
//!   (the server binds a replica to its tenant), quarantine the events, rebuild every tenant's
//!   projections, NORMAL. INV-TENANT judges the end. The READ_ONLY period handed to the model
//!   (INV-READ-ONLY) is the audit's: the quarantine is the fix, which changes stored content.
//! - `004-7.2-health-indicators`. Three indicators flipped one after another — projections
//!   folded wrong by planted bugs and marked unhealthy, READ_ONLY, a disk that fails every write and read — each seen in the
//!   health status, then repaired one after another, each flip back seen. The event store's
//!   `slow` is not injected: the simulated disk's locks never wait and no time passes inside a
//!   call, so the local probe cannot be slow (the stack's unit test covers it on a real file).

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;

use drill_model::store::StoreFact;
use drill_sim::disk::{DiskSim, IoFault, IoOp};
use drill_sim::trace;
use drill_stack::chain::{first_broken, Link};
use drill_stack::client::{Client, DeviceKeys, Ring};
use drill_stack::fs::FileSystem;
use drill_stack::projections::health::{self, EventStoreStatus, Health, Level};
use drill_stack::projections::resilience::Mode;
use drill_stack::projections::Scope;
use drill_stack::proto::{Request, Response, WireEvent};
use drill_stack::rpc::{Exchange, RpcClient};
use drill_stack::store::EventRow;
use drill_stack::SyncError;
use serde_json::json;

use super::d004_replay::{
    client_projection_facts, client_tenant_facts, cursors, findings, fold_bug, fold_bugs, inconsistencies, projections_wrong, rebuild, rows, tenant_facts,
    truncate, validate, writes_refused, Period, PEER, PROJECTIONS,
};
use super::harness::{fact_of, tenant_ring, Ctx};
use super::Drill;
use crate::node::{NodeClock, DEVICE_DB};

pub const DRILLS: &[Drill] = &[
    Drill {
        id: "004-2.1-mode-transitions",
        section: "004 §2.1, §2.2",
        title: "a non-essential projection misbehaves: DEGRADED switches it off, READ_ONLY refuses every write, rebuild, back to NORMAL",
        steps: &["set-degraded", "set-read-only", "rebuild-projections", "restore-normal"],
        devices: 3,
        server_retention: None,
        param: 0,
        bugs: counters_bug,
        body: modes_body,
    },
    Drill {
        id: "004-5.3-backup-verification",
        section: "004 §5.3",
        title: "a device backup through the checklist: the good copy passes every item, each damaged copy is rejected",
        steps: &["backup-completes", "restore-to-clean-db", "verify-hash-chain", "rebuild-projections", "compare-event-counts", "check-tenant-isolation"],
        devices: 3,
        server_retention: None,
        param: 0,
        bugs: super::no_bugs,
        body: backup_body,
    },
    Drill {
        id: "004-6.2-projection-inconsistency",
        section: "004 §6.2, §7.2",
        title: "a projection bug folded rows wrong: verification flags them, truncate, replay, verify",
        steps: &["truncate-projection", "replay-projection", "verify-rebuilt"],
        devices: 3,
        server_retention: None,
        param: 0,
        bugs: one_fold_bug,
        body: inconsistency_body,
    },
    Drill {
        id: "004-6.4-tenant-isolation-breach",
        section: "004 §6.4",
        title: "another tenant's event in a device's store and projections: READ_ONLY, audit, review the guards, quarantine, rebuild, NORMAL",
        steps: &["set-read-only", "audit-event-store", "review-scope-guard", "quarantine-foreign-events", "rebuild-projections", "restore-normal"],
        devices: 3,
        server_retention: None,
        param: 0,
        bugs: super::no_bugs,
        body: tenant_body,
    },
    Drill {
        id: "004-7.2-health-indicators",
        section: "004 §7.2",
        title: "projections unhealthy, READ_ONLY, the disk failing: each indicator flips, and flips back after its repair",
        steps: &["repair-event-store", "rebuild-unhealthy-projections", "restore-normal"],
        devices: 3,
        server_retention: None,
        param: 0,
        bugs: fold_bugs,
        body: health_body,
    },
];

/// §2.1: the non-essential projection's fold folds an event twice.
fn counters_bug(_: &mut drill_sim::rng::Stream) -> Vec<crate::plan::Mutation> {
    vec![fold_bug("tenant_counters", crate::plan::FoldEffect::Twice)]
}

/// §6.2: one projection's fold, drawn from the seed, folds an event twice.
fn one_fold_bug(rng: &mut drill_sim::rng::Stream) -> Vec<crate::plan::Mutation> {
    vec![fold_bug(PROJECTIONS[rand::Rng::gen_range(rng, 0..PROJECTIONS.len())], crate::plan::FoldEffect::Twice)]
}

fn modes_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(modes(cx))
}

fn backup_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(backup(cx))
}

fn inconsistency_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(inconsistency(cx))
}

fn tenant_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(tenant_breach(cx))
}

fn health_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(health_indicators(cx))
}

/// Marks each projection the stack's verification flags as unhealthy; returns them.
fn mark_flagged(cx: &mut Ctx, i: usize) -> Vec<String> {
    let found = inconsistencies(cx, i);
    let c = cx.devs[i].client();
    for (p, detail) in &found {
        c.engine().mark_unhealthy(c.db(), p, detail).expect("the mark is written");
    }
    found.into_iter().map(|(p, _)| p).collect()
}

/// Device `i`'s health status, its event store probed as the dashboard does.
fn probe(cx: &mut Ctx, i: usize) -> Health {
    let (node, name) = (cx.devs[i].node, cx.devs[i].name.clone());
    let c = cx.devs[i].client();
    let store = health::probe(c.db(), &NodeClock(node), health::SLOW_MS_MIN);
    // With the database unreadable, the status itself cannot be read: every indicator but the
    // event store's is unknown, and the store's says why.
    let h = c.health(store).unwrap_or_else(|_| health::status(Mode::ReadOnly, Vec::new(), EventStoreStatus::Unreachable));
    trace::emit(&name, "drill.health", json!({"health": h}));
    h
}

// ---------------------------------------------------------------------------------------------
// §2.1, §2.2

async fn modes(cx: &mut Ctx) {
    cx.warm_up().await;
    let tenant = cx.devs[0].tenant.clone();
    let changed = cx.meet_planted_bugs(0).await;
    cx.inject("non_essential_projection_corrupted", json!({"device": cx.devs[0].name, "fired": changed}));
    let flagged = mark_flagged(cx, 0);
    cx.symptom(flagged == ["tenant_counters"], "the non-essential projection is inconsistent", json!({"flagged": flagged}));
    if cx.step("set-degraded") {
        cx.devs[0].client().set_mode(Mode::Degraded, &["tenant_counters"]).expect("the mode is set");
    }
    // DEGRADED: writes still taken and the essential projection folds them; the switched-off
    // one stands still.
    let (before, _) = cursors(cx, 0);
    let n = rand::Rng::gen_range(&mut cx.rng, 1..=3);
    cx.append(PEER, n);
    cx.sync(PEER).await.expect("the other device syncs");
    let appended = super::d004_replay::try_append(cx, 0, 1);
    let synced = cx.sync(0).await;
    let (after, last) = cursors(cx, 0);
    let h = probe(cx, 0);
    let degraded = appended.is_ok() && synced.is_ok() && after[0] == last && after[1] == before[1] && before[1] < last && h.mode == "DEGRADED";
    let detail = json!({"append": appended.err(), "sync": synced.err().map(|e| e.code()), "cursors_before": before, "cursors_after": after, "last": last, "mode": h.mode});
    cx.check(degraded, "DEGRADED takes writes, folds the essential projection, and leaves the switched-off one", detail);
    cx.check(h.mode_level == Level::Warning, "the dashboard warns in DEGRADED", json!({"level": h.mode_level}));
    let mut period = None;
    if cx.step("set-read-only") {
        period = Some(Period::start(cx, 0));
    }
    let (refused, codes) = writes_refused(cx, 0, &mut period, 2).await;
    cx.check(refused, "READ_ONLY refuses every write with store:readOnly", codes);
    let h = probe(cx, 0);
    cx.check(h.mode_level == Level::Critical, "the dashboard is critical in READ_ONLY", json!({"mode": h.mode}));
    if cx.step("rebuild-projections") {
        let r = rebuild(cx, 0, &Scope::default());
        if let Some(p) = &mut period {
            p.attempted("rebuild", true, &r);
        }
    }
    let committed = cx.server_tenant(&tenant).await;
    if cx.step("restore-normal") {
        if let Some(p) = period.take() {
            p.end(cx, 0, Mode::Normal);
        } else {
            cx.devs[0].client().set_mode(Mode::Normal, &[]).expect("the mode is set");
        }
    }
    if let Some(p) = period.take() {
        p.end(cx, 0, Mode::ReadOnly);
    }
    validate(cx, 0, &committed).await;
    let h = probe(cx, 0);
    cx.check(h.is_healthy, "back in NORMAL, the dashboard is healthy", json!({"health": h}));
}

// ---------------------------------------------------------------------------------------------
// §5.3

/// What the checklist finds in one copy of a device database restored to a clean file.
#[derive(Debug, Clone, Default)]
struct Checked {
    /// Why the copy is not a sound database: its open error, or what integrity_check says.
    unsound: Option<String>,
    /// The device tenant's events, when they read back.
    events: Option<Vec<EventRow>>,
    /// Why the rebuild failed, or what the model finds in the rebuilt projections.
    rebuild: Option<String>,
    /// What the model finds of another tenant in the copy (events, projection tables).
    foreign: Vec<String>,
}

/// Restores `bytes` to a clean file `name` on device `i`'s node and runs the checklist's reads.
async fn check_copy(cx: &mut Ctx, i: usize, name: String, bytes: Vec<u8>) -> Checked {
    let (node, replica, tenant) = (cx.devs[i].node, cx.devs[i].name.clone(), cx.devs[i].tenant.clone());
    DiskSim::current().put_file(node, &name, &bytes);
    let nonces = cx.seeds.stream(&format!("nonces/{replica}/{name}"));
    let task = async move {
        let keys = DeviceKeys::new(Ring::Fixed(tenant_ring(&tenant)), Box::new(nonces));
        let mut c = match Client::open(&name, &replica, &tenant, Box::new(NodeClock(node)), keys) {
            Ok(c) => c,
            Err(e) => return Checked { unsound: Some(e.code().to_string()), ..Checked::default() },
        };
        let integrity = c.db().query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0)).unwrap_or_else(|e| e.to_string());
        let mut out = Checked { unsound: (integrity != "ok").then_some(integrity), ..Checked::default() };
        out.events = c.events().ok().map(|all| all.into_iter().filter(|e| e.tenant == tenant).collect());
        out.rebuild = match c.rebuild_projections(&Scope::default()) {
            Err(e) => Some(e.code().to_string()),
            Ok(_) => match client_projection_facts(&c, &replica, true, None) {
                Ok(f) => findings(&StoreFact::Projection(f)).into_iter().next(),
                Err(e) => Some(e),
            },
        };
        out.foreign = match client_tenant_facts(&c, &replica) {
            Ok(f) => findings(&StoreFact::Tenant(f)),
            Err(e) => vec![format!("tenants unreadable: {e}")],
        };
        out
    };
    cx.on(node, task).await
}

/// The device's database as a backup takes it: its log checkpointed into the file, and closed.
async fn take_backup(cx: &mut Ctx, i: usize) -> Option<Vec<u8>> {
    let _ = cx.devs[i].client().db().query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    cx.devs[i].client = None;
    cx.devs[i].rpc = None;
    let fs = cx.files(cx.devs[i].node);
    let bytes = fs.read(DEVICE_DB);
    let log = fs.read("device.db-wal").map(|b| b.len()).unwrap_or(0);
    trace::emit(
        &cx.devs[i].name,
        "drill.backup",
        json!({"bytes": bytes.as_ref().map(Vec::len).ok(), "error": bytes.as_ref().err().map(|e| e.to_string()), "log": log}),
    );
    cx.open(i).await.expect("the device reopens");
    bytes.ok().filter(|b| !b.is_empty() && log == 0)
}

/// A copy of `good` changed through SQL on a scratch file on device `i`'s node.
async fn altered(cx: &mut Ctx, i: usize, name: &str, good: &[u8], change: Change) -> Vec<u8> {
    let node = cx.devs[i].node;
    DiskSim::current().put_file(node, name, good);
    let path = name.to_string();
    cx.on(node, async move {
        let c = drill_stack::store::open(&path).expect("the scratch copy opens");
        match change {
            Change::Sql(sql) => c.execute_batch(&sql).expect("the scratch copy changes"),
            Change::Insert(row) => drill_stack::store::insert_event(&c, &row).expect("the scratch copy takes the event"),
        }
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).expect("checkpointed");
    })
    .await;
    cx.files(node).read(name).expect("the scratch copy reads back")
}

enum Change {
    Sql(String),
    Insert(EventRow),
}

/// A checklist item, by its step.
fn item_passes(step: &str, c: &Checked, expected: u64) -> bool {
    match step {
        "verify-hash-chain" => c.events.as_ref().is_some_and(|ev| {
            first_broken(ev.iter().map(|e| Link { seq: e.seq, kind: &e.kind, tenant: &e.tenant, payload: &e.payload, prev_hash: &e.prev_hash, hash: &e.hash }))
                .is_none()
        }),
        "rebuild-projections" => c.rebuild.is_none(),
        "compare-event-counts" => c.events.as_ref().is_some_and(|ev| ev.len() as u64 == expected),
        "check-tenant-isolation" => c.foreign.is_empty(),
        _ => c.unsound.is_none(),
    }
}

async fn backup(cx: &mut Ctx) {
    cx.warm_up().await;
    let tenant = cx.devs[0].tenant.clone();
    let other = cx.devs[1].tenant.clone();
    // A copy from before the tenant's latest writes: what a backup job that silently kept an old
    // file would hand over.
    let stale = take_backup(cx, 0).await.expect("the earlier copy");
    let n = rand::Rng::gen_range(&mut cx.rng, 1..=3);
    cx.append(PEER, n);
    cx.sync(PEER).await.expect("the other device syncs");
    cx.sync(0).await.expect("the device syncs");
    let committed = cx.server_tenant(&tenant).await;
    let expected = committed.len() as u64;
    let mut good = None;
    if cx.step("backup-completes") {
        good = take_backup(cx, 0).await;
        cx.check(good.is_some(), "the backup completes: the file reads back whole, no log left beside it", json!({}));
    }
    let base = good.clone().unwrap_or_else(|| stale.clone());
    // The damaged copies.
    let mut truncated = base.clone();
    truncated.truncate(base.len() / 2);
    let mut flipped = base.clone();
    let at = rand::Rng::gen_range(&mut cx.rng, base.len() / 4..base.len() * 3 / 4);
    flipped[at] ^= 0x5a;
    let mine = cx.device_events(0);
    let victim = mine[rand::Rng::gen_range(&mut cx.rng, 0..mine.len())].seq;
    let tampered =
        altered(cx, 0, "tampered.db", &base, Change::Sql(format!("UPDATE events SET payload = CAST(payload || x'00' AS BLOB) WHERE seq = {victim}"))).await;
    let theirs = cx.server(|s| s.events().expect("the server's events")).await;
    let foreign_row = theirs.into_iter().rfind(|e| e.tenant == other).expect("the other tenant wrote");
    let foreign = altered(cx, 0, "foreign.db", &base, Change::Insert(foreign_row)).await;
    let bad = [("truncated", truncated), ("flipped", flipped), ("tampered", tampered), ("stale", stale), ("foreign", foreign)];
    let differ = bad.iter().all(|(_, b)| *b != base);
    cx.inject(
        "damaged_backup_copies",
        json!({"copies": bad.iter().map(|(k, b)| json!({"kind": k, "bytes": b.len()})).collect::<Vec<_>>(), "flipped_at": at, "tampered_seq": victim}),
    );
    cx.symptom(differ, "the backup job handed over copies that differ from the database", json!({}));
    let mut copies: Vec<(&str, Vec<u8>)> = good.clone().map(|g| ("good", g)).into_iter().chain(bad).collect();
    let mut checked: Vec<(&str, Checked)> = Vec::new();
    if cx.step("restore-to-clean-db") {
        for (k, bytes) in copies.drain(..) {
            let c = check_copy(cx, 0, format!("restored-{k}.db"), bytes).await;
            checked.push((k, c));
        }
    }
    let mut rejected: Vec<(&str, Vec<&str>)> =
        checked.iter().map(|(k, c)| (*k, if item_passes("restore-to-clean-db", c, expected) { vec![] } else { vec!["restore-to-clean-db"] })).collect();
    for step in ["verify-hash-chain", "rebuild-projections", "compare-event-counts", "check-tenant-isolation"] {
        if cx.step(step) {
            for ((_, c), (_, by)) in checked.iter().zip(rejected.iter_mut()) {
                if !item_passes(step, c, expected) {
                    by.push(step);
                }
            }
        }
    }
    let verdict: Vec<_> = rejected.iter().map(|(k, by)| json!({"copy": k, "rejected_by": by})).collect();
    trace::emit(
        "drill",
        "drill.backup_verdict",
        json!({"verdict": verdict, "details": checked.iter().map(|(k, c)| json!({"copy": k, "unsound": c.unsound, "events": c.events.as_ref().map(Vec::len), "rebuild": c.rebuild, "foreign": c.foreign})).collect::<Vec<_>>()}),
    );
    let good_ok = rejected.iter().any(|(k, by)| *k == "good" && by.is_empty());
    cx.check(good_ok, "the verified backup passes every item of the checklist", json!({"verdict": verdict}));
    for kind in ["truncated", "flipped", "tampered", "stale", "foreign"] {
        let caught = rejected.iter().any(|(k, by)| *k == kind && !by.is_empty());
        cx.check(caught, &format!("the {kind} copy is rejected"), json!({}));
    }
    let restored: Vec<_> = checked.iter().find(|(k, _)| *k == "good").and_then(|(_, c)| c.events.clone()).unwrap_or_default();
    let after: Vec<_> = restored.iter().map(fact_of).collect();
    cx.recovery("backup", &committed, &after, &BTreeSet::new());
}

// ---------------------------------------------------------------------------------------------
// §6.2

async fn inconsistency(cx: &mut Ctx) {
    cx.warm_up().await;
    let tenant = cx.devs[0].tenant.clone();
    // The projection the plan's bug lives in.
    let planted = cx.plan.mutations.first().map(|m| m.bug.target().to_string()).unwrap_or_default();
    let target = PROJECTIONS.iter().copied().find(|p| *p == planted).unwrap_or(PROJECTIONS[0]);
    let other = PROJECTIONS.iter().copied().find(|p| *p != target).expect("two projections");
    let changed = cx.meet_planted_bugs(0).await;
    cx.inject("projection_rows_updated", json!({"device": cx.devs[0].name, "projection": target, "fired": changed}));
    projections_wrong(cx, 0);
    let flagged = mark_flagged(cx, 0);
    cx.check(flagged == [target], "the stack's verification flags exactly the changed projection", json!({"flagged": flagged}));
    let h = probe(cx, 0);
    cx.check(h.unhealthy_projections == [target], "the dashboard lists the projection as unhealthy", json!({"health": h}));
    // Done wrong: the operator replays the projection that verified, not the flagged one.
    let name = if cx.wrong("replay-projection") { other } else { target };
    if cx.step("truncate-projection") {
        let r = truncate(cx, 0, Some(name));
        let empty = cx.devs[0].client().projection_rows(name).map(|r| r.is_empty()).unwrap_or(false);
        cx.check(r.is_ok() && empty, "the projection is empty after the truncate", json!({"error": r.err()}));
    }
    if cx.step("replay-projection") {
        let r = rebuild(cx, 0, &Scope { tenant: Some(tenant.clone()), projection: Some(name.into()), until_ts_ms: None });
        cx.check(r.is_ok(), "the projection's events are replayed", json!({"error": r.err()}));
    }
    if cx.step("verify-rebuilt") {
        let left = inconsistencies(cx, 0);
        cx.check(left.is_empty(), "the stack's verification passes after the replay", json!({"inconsistent": left}));
    }
    // The post-recovery validation: the projections equal a full rebuild and the dashboard is
    // clean; no event was lost.
    let h = probe(cx, 0);
    cx.check(h.is_healthy, "the dashboard is healthy again", json!({"health": h}));
    let before = rows(cx, 0);
    let r = rebuild(cx, 0, &Scope::default());
    let same = rows(cx, 0) == before;
    cx.check(r.is_ok() && same, "the projections equal a full rebuild", json!({}));
    let committed = cx.server_tenant(&tenant).await;
    validate(cx, 0, &committed).await;
}

// ---------------------------------------------------------------------------------------------
// §6.4

/// A transport that slips another tenant's event into every pull page, in seq order.
struct Foreign<'a> {
    rpc: &'a mut RpcClient,
    event: WireEvent,
}

impl Exchange for Foreign<'_> {
    fn version(&self) -> u32 {
        self.rpc.version()
    }

    async fn call(&mut self, req: &Request) -> Result<Response, SyncError> {
        match self.rpc.call(req).await? {
            Response::Page { mut items, has_more, next_cursor, last_reconciled_write_ids } => {
                items.push(self.event.clone());
                items.sort_by_key(|e| e.seq);
                let next_cursor = next_cursor.max(self.event.seq);
                Ok(Response::Page { items, has_more, next_cursor, last_reconciled_write_ids })
            }
            other => Ok(other),
        }
    }
}

/// The stack's own guard: a pull page carrying another tenant's event is refused with
/// `pull:tenantViolation` and the attempt changes nothing (retried while the network loses it).
async fn guard_refuses(cx: &mut Ctx, row: &EventRow) {
    let before = (cx.devs[0].client().export_state().expect("state"), cx.device_events(0).len());
    let mut r = Err(SyncError::Transport { detail: "not tried".into() });
    for _ in 0..super::harness::SYNC_ATTEMPTS_MAX {
        let d = &mut cx.devs[0];
        let (c, rpc) = (d.client.as_mut().expect("open"), d.rpc.as_mut().expect("bound"));
        r = c.sync(&mut Foreign { rpc, event: WireEvent::from(row.clone()) }).await;
        if !matches!(r, Err(SyncError::Transport { .. })) {
            break;
        }
    }
    let after = (cx.devs[0].client().export_state().expect("state"), cx.device_events(0).len());
    let sig = r.as_ref().err().and_then(SyncError::signature);
    let guarded = sig.as_deref() == Some("pull:tenantViolation") && before == after;
    cx.symptom(guarded, "the stack's tenant check refuses another tenant's event in a pull page, failing closed", json!({"signature": sig}));
}

/// The server's scope guard, reviewed: it binds each replica to its tenant, refuses the device's
/// pull of another tenant, and answers its own pulls with its tenant's events only.
async fn review_scope_guard(cx: &mut Ctx, tenant: &str, other: &str) {
    let replica = cx.devs[0].name.clone();
    let r2 = replica.clone();
    let bound: Vec<String> = cx
        .server(move |s| {
            let mut st = s.registry_conn().prepare("SELECT tenant FROM replicas WHERE replica = ?1").expect("the replica registry");
            st.query_map([&r2], |r| r.get(0)).expect("bindings").collect::<Result<_, _>>().expect("bindings")
        })
        .await;
    let mut answers = Vec::new();
    for t in [tenant.to_string(), other.to_string()] {
        let req = Request::Pull { tenant: t, replica: replica.clone(), since: 0, limit: 1_000, head: None };
        let rpc = cx.devs[0].rpc.as_mut().expect("bound");
        let mut answer = Err(SyncError::Transport { detail: "not sent".into() });
        for _ in 0..super::harness::SYNC_ATTEMPTS_MAX {
            answer = rpc.call(&req).await;
            if !matches!(answer, Err(SyncError::Transport { .. })) {
                break;
            }
        }
        answers.push(answer);
    }
    let own_only = matches!(&answers[0], Ok(Response::Page { items, .. }) if items.iter().all(|e| e.tenant == tenant));
    let refused = matches!(&answers[1], Ok(Response::Error { .. }));
    let refused = refused && bound == [tenant];
    let shown: Vec<String> = answers.iter().map(|a| format!("{a:?}").chars().take(200).collect()).collect();
    trace::emit("drill", "drill.scope_guard", json!({"bound": bound, "answers": shown}));
    let detail = json!({"own_only": own_only, "other_refused": refused});
    cx.check(own_only && refused, "the server binds the replica to its tenant and scopes its pulls to it", detail);
}

async fn tenant_breach(cx: &mut Ctx) {
    cx.warm_up().await;
    let (tenant, other) = (cx.devs[0].tenant.clone(), cx.devs[1].tenant.clone());
    // The other tenant writes last, so its newest event is past everything device 0 pulled.
    cx.append(1, 1);
    cx.sync(1).await.expect("the other tenant's device syncs");
    let theirs = cx.server(|s| s.events().expect("the server's events")).await;
    let row = theirs.into_iter().rfind(|e| e.tenant == other).expect("the other tenant wrote");
    guard_refuses(cx, &row).await;
    // Behind the guard: the event is written into the store directly (a mixed restore, a bad
    // tool), and the routine full replay folds it.
    drill_stack::store::insert_event(cx.devs[0].client().db(), &row).expect("the event is written");
    let r = rebuild(cx, 0, &Scope::default());
    cx.inject("cross_tenant_event_in_store", json!({"device": cx.devs[0].name, "seq": row.seq, "tenant": other, "replayed": r.is_ok()}));
    let leaks = findings(&StoreFact::Tenant(tenant_facts(cx, 0)));
    cx.symptom(!leaks.is_empty(), "cross-tenant data is visible in the device's queries", json!({"findings": leaks}));
    let committed = cx.server_tenant(&tenant).await;
    let mut period = None;
    if cx.step("set-read-only") {
        period = Some(Period::start(cx, 0));
    }
    let (refused, codes) = writes_refused(cx, 0, &mut period, 3).await;
    cx.check(refused, "the affected tenant takes no writes during the audit", codes);
    let mut cross: Vec<u64> = Vec::new();
    if cx.step("audit-event-store") {
        cross = if cx.wrong("audit-event-store") {
            // Done wrong: audited through the projections, which show the device's tenant only.
            Vec::new()
        } else {
            let c = cx.devs[0].client();
            let mut st = c.db().prepare("SELECT seq FROM events WHERE tenant != ?1 ORDER BY seq").expect("the audit query");
            st.query_map([&tenant], |r| r.get(0)).expect("audited").collect::<Result<_, _>>().expect("audited")
        };
        cx.check(cross == [row.seq], "the audit finds exactly the cross-tenant event", json!({"found": cross, "seq": row.seq}));
    }
    if cx.step("review-scope-guard") {
        review_scope_guard(cx, &tenant, &other).await;
    }
    // The READ_ONLY period of the audit ends here for the model: the fix changes stored content.
    let mut frozen = None;
    if let Some(p) = period.take() {
        let mode = cx.devs[0].client().mode().expect("mode");
        p.end(cx, 0, mode);
        frozen = Some(mode);
    }
    if cx.step("quarantine-foreign-events") && !cross.is_empty() {
        let list = cross.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let sql = format!(
            "BEGIN; CREATE TABLE IF NOT EXISTS quarantine_events AS SELECT * FROM events WHERE 0;
             INSERT INTO quarantine_events SELECT * FROM events WHERE seq IN ({list}); DELETE FROM events WHERE seq IN ({list}); COMMIT;"
        );
        cx.devs[0].client().db().execute_batch(&sql).expect("quarantined");
    }
    if cx.step("rebuild-projections") {
        // Every tenant the projections hold, not only the device's: done wrong, the other
        // tenant's rows stay.
        let scope = if cx.wrong("rebuild-projections") { Scope { tenant: Some(tenant.clone()), ..Scope::default() } } else { Scope::default() };
        let r = rebuild(cx, 0, &scope);
        cx.check(r.is_ok(), "the projections are rebuilt", json!({"error": r.err()}));
    }
    if cx.step("restore-normal") {
        cx.devs[0].client().set_mode(Mode::Normal, &[]).expect("the mode is set");
    }
    trace::emit(&cx.devs[0].name, "drill.audit_mode", json!({"frozen": frozen.map(Mode::as_str)}));
    let quarantined: u64 = cx.devs[0].client().db().query_row("SELECT COUNT(*) FROM quarantine_events", [], |r| r.get(0)).unwrap_or(0);
    cx.check(
        quarantined == cross.len() as u64 && quarantined > 0,
        "the cross-tenant events are kept in quarantine, out of the store",
        json!({"quarantined": quarantined}),
    );
    validate(cx, 0, &committed).await;
}

// ---------------------------------------------------------------------------------------------
// §7.2

async fn health_indicators(cx: &mut Ctx) {
    cx.warm_up().await;
    let tenant = cx.devs[0].tenant.clone();
    let node = cx.devs[0].node;
    let h = probe(cx, 0);
    cx.check(h.is_healthy, "the dashboard starts healthy", json!({"health": h}));
    // Projections.
    let changed = cx.meet_planted_bugs(0).await;
    let flagged = mark_flagged(cx, 0);
    cx.inject("projections_corrupted", json!({"fired": changed, "flagged": flagged}));
    let h = probe(cx, 0);
    let seen = h.unhealthy_projections.len() == PROJECTIONS.len() && h.projections_level == Level::Warning;
    cx.symptom(seen, "the unhealthy projections indicator warns", json!({"health": h}));
    // Mode.
    cx.devs[0].client().set_mode(Mode::ReadOnly, &[]).expect("the mode is set");
    cx.inject("read_only", json!({}));
    let h = probe(cx, 0);
    cx.symptom(h.mode_level == Level::Critical && h.mode == "READ_ONLY", "the resilience mode indicator is critical", json!({"health": h}));
    // The event store: the disk fails every operation from now on.
    for op in [IoOp::Read, IoOp::Write, IoOp::Sync] {
        DiskSim::current().arm_io_fault(node, IoFault { op, nth: 1, persistent: true });
    }
    cx.inject("disk_fails", json!({"device": cx.devs[0].name}));
    let h = probe(cx, 0);
    cx.symptom(h.event_store == EventStoreStatus::Unreachable && h.level == Level::Critical, "the event store indicator is unreachable", json!({"health": h}));
    let committed = cx.server_tenant(&tenant).await;
    if cx.step("repair-event-store") {
        DiskSim::current().clear_io_faults(node);
    }
    let h = probe(cx, 0);
    let writable = h.event_store == EventStoreStatus::Writable;
    cx.check(writable, "after the disk's repair the event store is writable again", json!({"health": h}));
    if !writable {
        // Nothing more can be read from this device until its disk is repaired.
        return;
    }
    if cx.step("rebuild-unhealthy-projections") {
        let r = rebuild(cx, 0, &Scope::default());
        cx.check(r.is_ok(), "the unhealthy projections are rebuilt", json!({"error": r.err()}));
    }
    let h = probe(cx, 0);
    cx.check(h.unhealthy_projections.is_empty(), "after the rebuild no projection is unhealthy", json!({"health": h}));
    if cx.step("restore-normal") {
        let r = cx.devs[0].client().set_mode(Mode::Normal, &[]);
        cx.check(r.is_ok(), "the mode is set back", json!({"error": r.err().map(|e| e.code())}));
    }
    let h = probe(cx, 0);
    cx.check(h.is_healthy && h.mode == "NORMAL", "back in NORMAL every indicator is healthy", json!({"health": h}));
    validate(cx, 0, &committed).await;
}

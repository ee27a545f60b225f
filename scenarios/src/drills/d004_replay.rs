//! Runbook 004 (event store disaster recovery), §3.2 "Replay Procedure", §3.3 "Selective
//! Replay" and §4.2 "Recovery from Snapshot": projections rebuilt from the events a device holds,
//! through the stack's own engine; and what every drill of runbook 004 on a device's projections
//! shares (its facts for the model, the planted fold bugs, the READ_ONLY period, the ending).
//!
//! Every drill here starts from a planted bug of the projection engine's incremental fold
//! (the plan's `mutations`: events of one kind folded twice) that fires when device 0 syncs such
//! an event, the symptom being that the model's reference fold of the device's events no longer
//! matches its projections; a rebuild from the events is right. The model judges the end state: INV-PROJECTION (each projection equals
//! the reference fold of the events), INV-SNAPSHOT (a restore from the latest valid snapshot
//! plus the tail equals a full replay), INV-READ-ONLY (no command succeeded while the mode was
//! READ_ONLY, and stored content did not change), and INV-RECOVERY (no committed event lost).
//!
//! - `004-3.2-full-replay-read-only`. The mode goes READ_ONLY, the projections are cleared and
//!   every event replayed while the other devices of the tenant go on writing; the device's own
//!   writes, syncs and snapshots during the replay are refused with `store:readOnly`; the counts
//!   are verified; the mode goes back to NORMAL and the device syncs what it missed.
//! - `004-3.3-replay-per-tenant`, `-per-projection`, `-time-range`, `-from-snapshot`. One scope
//!   each. Per tenant: a rebuild scoped to another tenant leaves this one's rows untouched, one
//!   scoped to this tenant repairs them. Per projection: rebuilding one leaves the other exactly
//!   as it was. Time range: a rebuild as of a point in time (with a device that wrote offline, so
//!   creation times and the store's order disagree) equals the fold of the events up to then,
//!   and the incremental fold from that point reaches a full rebuild. From a snapshot: the
//!   latest snapshot plus the events after it equals a full replay.
//! - `004-4.2-snapshot-recovery`. The newest snapshot of each projection is corrupt too (the
//!   snapshot writer's planted bug stores its state changed after the checksum was taken): the
//!   restore skips it for the newest one that passes its checksum, and the restore plus the tail
//!   equals a full rebuild. Done wrong, the newest snapshot is loaded without checking it.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;

use drill_model::store::{ProjectionFacts, ProjectionRead, ReadOnlyFacts, SnapshotFacts, SnapshotPair, StoreFact, StoreModel, TenantFacts, WriteAttempt};
use drill_model::Fact;
use drill_sim::trace;
use drill_stack::client::Client;
use drill_stack::envelope;
use drill_stack::projections::resilience::Mode;
use drill_stack::projections::{verify, Scope, SealedEvent};
use serde_json::{json, Value};

use super::harness::{Ctx, AGGREGATES};
use super::Drill;
use crate::plan::{Bug, FoldEffect, Mutation};

pub const DRILLS: &[Drill] = &[
    Drill {
        id: "004-3.2-full-replay-read-only",
        section: "004 §3.2",
        title: "projections lost their fold: READ_ONLY, clear, replay every event, verify the counts, back to NORMAL",
        steps: &["set-read-only", "clear-projections", "replay-all-events", "verify-counts", "restore-normal"],
        devices: 3,
        server_retention: None,
        param: 0,
        bugs: fold_bugs,
        body: full_replay_body,
    },
    Drill {
        id: "004-3.3-replay-per-tenant",
        section: "004 §3.3",
        title: "one tenant's projections corrupt: a rebuild scoped to that tenant repairs them and touches no other tenant",
        steps: &["rebuild-tenant", "verify-projections"],
        devices: 3,
        server_retention: None,
        param: SCOPE_TENANT,
        bugs: fold_bugs,
        body: selective_body,
    },
    Drill {
        id: "004-3.3-replay-per-projection",
        section: "004 §3.3",
        title: "both projections corrupt: each rebuilt on its own, the other left exactly as it was",
        steps: &["rebuild-tenant-counters", "rebuild-aggregate-state", "verify-projections"],
        devices: 3,
        server_retention: None,
        param: SCOPE_PROJECTION,
        bugs: fold_bugs,
        body: selective_body,
    },
    Drill {
        id: "004-3.3-replay-time-range",
        section: "004 §3.3",
        title: "projections wrong since a point in time: rebuild as of that point, replay the events from it, verify",
        steps: &["rebuild-as-of-point", "replay-from-point", "verify-projections"],
        devices: 3,
        server_retention: None,
        param: SCOPE_TIME,
        bugs: fold_bugs,
        body: selective_body,
    },
    Drill {
        id: "004-3.3-replay-from-snapshot",
        section: "004 §3.3, §4.2",
        title: "projections corrupt after a snapshot: restore the snapshot and replay only the newer events",
        steps: &["restore-from-snapshot", "verify-projections"],
        devices: 3,
        server_retention: None,
        param: SCOPE_SNAPSHOT,
        bugs: fold_bugs,
        body: selective_body,
    },
    Drill {
        id: "004-4.2-snapshot-recovery",
        section: "004 §4.2",
        title: "projections folded wrong and the newest snapshot written wrong: restore the latest valid snapshot plus the tail, verify against a full rebuild",
        steps: &["find-latest-valid-snapshot", "restore-snapshot-and-tail", "verify-final-state"],
        devices: 3,
        server_retention: None,
        param: 0,
        bugs: snapshot_bugs,
        body: snapshot_body,
    },
];

const SCOPE_TENANT: u8 = 0;
const SCOPE_PROJECTION: u8 = 1;
const SCOPE_TIME: u8 = 2;
const SCOPE_SNAPSHOT: u8 = 3;

/// The projections a device folds.
pub const PROJECTIONS: [&str; 2] = ["aggregate_state", "tenant_counters"];

fn full_replay_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(full_replay(cx))
}

fn selective_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(selective(cx))
}

fn snapshot_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(snapshot_recovery(cx))
}

// ---------------------------------------------------------------------------------------------
// What the drills of runbook 004 share (the other file of these drills uses them too).

/// Device `i`'s projections as the model takes them: its events opened with the keys it holds,
/// each projection's rows, skipped aggregates and cursor.
pub fn projection_facts(cx: &mut Ctx, i: usize, rebuilt: bool, until_ts_ms: Option<i64>) -> ProjectionFacts {
    let node = cx.devs[i].name.clone();
    client_projection_facts(cx.devs[i].client(), &node, rebuilt, until_ts_ms).expect("the device's projections read back")
}

/// [`projection_facts`] of any open client.
pub fn client_projection_facts(c: &Client, node: &str, rebuilt: bool, until_ts_ms: Option<i64>) -> Result<ProjectionFacts, String> {
    let s = |e: drill_stack::StoreError| e.code().to_string();
    let (node, tenant) = (node.to_string(), c.tenant().to_string());
    let events = c.events().map_err(s)?;
    let incomplete = c.incomplete().map_err(s)?;
    let mut projections = Vec::new();
    for p in PROJECTIONS {
        projections.push(ProjectionRead {
            name: p.to_string(),
            rows: c.projection_rows(p).map_err(s)?,
            incomplete: incomplete.iter().filter(|x| x.projection == p).map(|x| x.aggregate.clone()).collect(),
            cursor: Some(c.projection_cursor(p).map_err(s)?),
        });
    }
    Ok(ProjectionFacts {
        node,
        tenant,
        events: crate::facts::opened_events(c, &events),
        keys_present: c.keys().ring.aggregates().unwrap_or_default().into_iter().collect(),
        rebuilt,
        until_ts_ms,
        projections,
    })
}

/// Device `i`'s events and the tenants its projection tables name, as the model takes them.
pub fn tenant_facts(cx: &mut Ctx, i: usize) -> TenantFacts {
    let node = cx.devs[i].name.clone();
    client_tenant_facts(cx.devs[i].client(), &node).expect("the device's tenants read back")
}

/// [`tenant_facts`] of any open client.
pub fn client_tenant_facts(c: &Client, node: &str) -> Result<TenantFacts, String> {
    let (node, tenant) = (node.to_string(), c.tenant().to_string());
    let events = c.events().map_err(|e| e.code().to_string())?.iter().map(|e| (e.seq, e.tenant.clone())).collect();
    let mut projection_tenants = Vec::new();
    for table in ["proj_aggregate_state", "proj_tenant_counters", "proj_cursor", "proj_incomplete"] {
        let sql = format!("SELECT DISTINCT tenant FROM {table} ORDER BY tenant");
        let read = c.db().prepare(&sql).and_then(|mut st| st.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>());
        projection_tenants.extend(read.map_err(|e| e.to_string())?.into_iter().map(|t| (table.to_string(), t)));
    }
    Ok(TenantFacts { node, tenant, events, projection_tenants, seen: Vec::new() })
}

/// Hands store facts about device `i` to the model, which judges them: a violation fails the run.
pub fn judge(cx: &mut Ctx, i: usize, what: &str, facts: Vec<StoreFact>) {
    let line = trace::emit(&cx.devs[i].name, "check.store", json!({"what": what, "drill": cx.drill.id}));
    for f in facts {
        crate::node::observe(&cx.shared, Fact::Store(f), line);
    }
}

/// What the model would find in `fact`, without it counting against the run: the symptom side.
pub fn findings(fact: &StoreFact) -> Vec<String> {
    StoreModel::new().observe(fact, 0).violations.into_iter().map(|v| v.message).collect()
}

/// Device `i`'s events as the projections take them.
pub fn sealed(cx: &mut Ctx, i: usize) -> Vec<SealedEvent> {
    let events = cx.devs[i].client().events().expect("the device's events read back");
    events.iter().map(|e| envelope::sealed_event(e).expect("stored envelopes parse")).collect()
}

/// The stack's verification of device `i`'s projections (a replay into a scratch database):
/// the projections that differ, with the first difference.
pub fn inconsistencies(cx: &mut Ctx, i: usize) -> Vec<(String, String)> {
    let events = sealed(cx, i);
    let c = cx.devs[i].client();
    let found = verify::verify(c.db(), c.engine(), &events, &c.keys().ring, c.tenant()).expect("verification runs");
    found.into_iter().map(|x| (x.projection.to_string(), x.detail)).collect()
}

/// The bugs of the drills here: device 0's incremental fold of each projection folds the events
/// of [`BUGGY_KIND`](super::harness::BUGGY_KIND) twice, once (a buggy projection, runbook 004
/// §3); a rebuild from the events is right.
pub fn fold_bugs(_: &mut drill_sim::rng::Stream) -> Vec<Mutation> {
    PROJECTIONS.iter().map(|p| fold_bug(p, FoldEffect::Twice)).collect()
}

/// Device 0's fold of `projection` mishandles the events of
/// [`BUGGY_KIND`](super::harness::BUGGY_KIND) with `effect`, once.
pub fn fold_bug(projection: &str, effect: FoldEffect) -> Mutation {
    let bug = Bug::ProjectionFold { projection: projection.into(), event_kind: super::harness::BUGGY_KIND.into(), effect };
    Mutation { node: crate::plan::client_name(0), bug, after: 0, times: 1 }
}

/// The fold bugs and, for §4.2, the snapshot writer's bug on the third snapshot of each
/// projection.
fn snapshot_bugs(rng: &mut drill_sim::rng::Stream) -> Vec<Mutation> {
    let writer = PROJECTIONS.iter().map(|p| Mutation {
        node: crate::plan::client_name(0),
        bug: Bug::SnapshotState { projection: p.to_string() },
        after: SNAPSHOTS - 1,
        times: 1,
    });
    fold_bugs(rng).into_iter().chain(writer).collect()
}

/// Snapshots §4.2 takes; the writer's bug fires on the last.
const SNAPSHOTS: u32 = 3;

/// The rows of each projection of device `i`.
pub fn rows(cx: &mut Ctx, i: usize) -> Vec<Vec<Vec<String>>> {
    PROJECTIONS.iter().map(|p| cx.devs[i].client().projection_rows(p).expect("rows read back")).collect()
}

/// Each projection's cursor on device `i`, and the seq of the device's last event of its tenant.
pub fn cursors(cx: &mut Ctx, i: usize) -> (Vec<u64>, u64) {
    let tenant = cx.devs[i].tenant.clone();
    let c = cx.devs[i].client();
    let at: Vec<u64> = PROJECTIONS.iter().map(|p| c.projection_cursor(p).expect("cursor reads back")).collect();
    let last = c.events().expect("events").iter().filter(|e| e.tenant == tenant).map(|e| e.seq).max().unwrap_or(0);
    (at, last)
}

/// Rebuilds device `i`'s projections in `scope`; the error's code when it fails.
pub fn rebuild(cx: &mut Ctx, i: usize, scope: &Scope) -> Result<u64, String> {
    cx.devs[i].client().rebuild_projections(scope).map(|r| r.applied).map_err(|e| e.code().to_string())
}

/// Empties every projection of device `i`'s tenant (a rebuild that replays nothing).
pub fn truncate(cx: &mut Ctx, i: usize, projection: Option<&str>) -> Result<u64, String> {
    let scope = Scope { tenant: Some(cx.devs[i].tenant.clone()), projection: projection.map(String::from), until_ts_ms: Some(i64::MIN) };
    rebuild(cx, i, &scope)
}

/// Device `i` records one event, through its own store; the error's code when refused.
pub fn try_append(cx: &mut Ctx, i: usize, n: u64) -> Result<String, String> {
    let aggregate = AGGREGATES[n as usize % AGGREGATES.len()];
    let d = &mut cx.devs[i];
    let payload = crate::node::payload_for(&d.name, 1_000_000 + n, 48);
    let name = d.name.clone();
    let r = d.client().append(aggregate, "created", &payload).map(|(_, op)| op).map_err(|e| e.code().to_string());
    trace::emit(&name, "drill.append", json!({"ok": r.is_ok(), "code": r.as_ref().err()}));
    r
}

/// One sync of device `i` straight through its store (not the harness's, which tells the model
/// every attempt); the error's code when it fails.
pub async fn try_sync(cx: &mut Ctx, i: usize) -> Result<(), String> {
    let d = &mut cx.devs[i];
    let (c, rpc) = (d.client.as_mut().expect("open"), d.rpc.as_mut().expect("bound"));
    c.sync(rpc).await.map(|_| ()).map_err(|e| e.code())
}

// INV-READ-ONLY's storage facts: `procs::content_digest`, as the world takes them.
use crate::procs::content_digest;

/// A READ_ONLY period of device `i`: the writes tried, and the stored content at its start.
pub struct Period {
    pub facts: ReadOnlyFacts,
}

impl Period {
    /// Device `i` goes READ_ONLY now.
    pub fn start(cx: &mut Ctx, i: usize) -> Period {
        let name = cx.devs[i].name.clone();
        let c = cx.devs[i].client();
        c.set_mode(Mode::ReadOnly, &[]).expect("the mode is set");
        let before = content_digest(c);
        trace::emit(&name, "store.mode", json!({"mode": "READ_ONLY"}));
        Period { facts: ReadOnlyFacts { node: name, attempts: Vec::new(), storage_before: before, storage_after: None } }
    }

    /// Notes a write tried during the period.
    pub fn attempted(&mut self, what: &str, recovery: bool, result: &Result<impl Sized, String>) {
        let line = trace::emit(&self.facts.node, "drill.write_attempt", json!({"what": what, "ok": result.is_ok(), "code": result.as_ref().err()}));
        self.facts.attempts.push(WriteAttempt { what: what.into(), line, recovery, ok: result.is_ok(), code: result.as_ref().err().cloned() });
    }

    /// Device `i` leaves READ_ONLY for `mode`; the model judges the period.
    pub fn end(mut self, cx: &mut Ctx, i: usize, mode: Mode) {
        let c = cx.devs[i].client();
        self.facts.storage_after = content_digest(c);
        c.set_mode(mode, &[]).expect("the mode is set");
        trace::emit(&self.facts.node, "store.mode", json!({"mode": mode.as_str()}));
        judge(cx, i, "read_only", vec![StoreFact::ReadOnly(self.facts)]);
    }
}

/// Device `i` tries every kind of command (an append, a sync, a snapshot, an incremental fold)
/// and notes each in `period`; returns whether every one was refused with `store:readOnly`.
pub async fn writes_refused(cx: &mut Ctx, i: usize, period: &mut Option<Period>, n: u64) -> (bool, Value) {
    let append = try_append(cx, i, n);
    let sync = try_sync(cx, i).await;
    let snapshot = cx.devs[i].client().snapshot_projections().map_err(|e| e.code().to_string());
    let fold = cx.devs[i].client().project().map_err(|e| e.code().to_string());
    let refused = |e: Option<&String>| e.map(String::as_str) == Some("store:readOnly");
    let all = refused(append.as_ref().err()) && refused(sync.as_ref().err()) && refused(snapshot.as_ref().err()) && refused(fold.as_ref().err());
    if let Some(p) = period {
        p.attempted("append", false, &append);
        p.attempted("sync", false, &sync);
        p.attempted("snapshot", false, &snapshot);
        p.attempted("apply", false, &fold);
    }
    let codes = json!({"append": append.err(), "sync": sync.err(), "snapshot": snapshot.err(), "apply": fold.err()});
    (all, codes)
}

/// The other device of device 0's tenant (tenants alternate over the devices).
pub const PEER: usize = 2;

/// The post-recovery ending every drill here shares: device `i` appends and syncs again, its
/// projections fold every event and equal the model's fold, and no committed event is lost.
pub async fn validate(cx: &mut Ctx, i: usize, committed: &[drill_model::EventFact]) {
    let appended = try_append(cx, i, 999);
    cx.check(appended.is_ok(), "the device takes writes again", json!({"error": appended.err()}));
    let synced = cx.sync(i).await;
    cx.check(synced.is_ok(), "the device syncs again", json!({"error": synced.err().map(|e| e.code())}));
    let converged = cx.converged(i).await;
    cx.check(converged, "the device's count and chain head equal the server's", json!({}));
    let (at, last) = cursors(cx, i);
    cx.check(at.iter().all(|&c| c == last), "every projection folded every event", json!({"cursors": at, "last_event": last}));
    let facts = projection_facts(cx, i, false, None);
    let tenant = tenant_facts(cx, i);
    judge(cx, i, "projections", vec![StoreFact::Projection(facts), StoreFact::Tenant(tenant)]);
    let device = cx.device_events(i);
    cx.recovery("device", committed, &device, &BTreeSet::new());
}

/// The symptom every drill here starts from: the model's fold of the device's events no longer
/// matches its projections.
pub fn projections_wrong(cx: &mut Ctx, i: usize) {
    let f = projection_facts(cx, i, false, None);
    let found = findings(&StoreFact::Projection(f));
    cx.symptom(
        !found.is_empty(),
        "projection queries return data that is not the fold of the events",
        json!({"findings": found.len(), "first": found.first()}),
    );
}

// ---------------------------------------------------------------------------------------------
// §3.2

async fn full_replay(cx: &mut Ctx) {
    cx.warm_up().await;
    let tenant = cx.devs[0].tenant.clone();
    let changed = cx.meet_planted_bugs(0).await;
    cx.inject("projections_corrupted", json!({"device": cx.devs[0].name, "fired": changed}));
    projections_wrong(cx, 0);
    let mut period = None;
    if cx.step("set-read-only") {
        period = Some(Period::start(cx, 0));
    }
    if cx.step("clear-projections") {
        let r = truncate(cx, 0, None);
        let empty = rows(cx, 0).iter().all(Vec::is_empty);
        cx.check(r.is_ok() && empty, "the projections are empty after the clear", json!({"error": r.err()}));
    }
    // The tenant goes on writing on its other device while this one replays.
    let n = rand::Rng::gen_range(&mut cx.rng, 1..=3);
    cx.append(PEER, n);
    cx.sync(PEER).await.expect("the other device syncs");
    let (refused, codes) = writes_refused(cx, 0, &mut period, 1).await;
    cx.check(refused, "every write during the replay is refused with store:readOnly", codes);
    if cx.step("replay-all-events") {
        // Done wrong: the incremental fold (a command) instead of the recovery's replay.
        let r = if cx.wrong("replay-all-events") {
            cx.devs[0].client().project().map(|r| r.applied).map_err(|e| e.code().to_string())
        } else {
            rebuild(cx, 0, &Scope::default())
        };
        if let Some(p) = &mut period {
            p.attempted("rebuild", !cx.wrong("replay-all-events"), &r);
        }
    }
    let (at, last) = cursors(cx, 0);
    if cx.step("verify-counts") {
        let tenant_events = cx.device_events(0).iter().filter(|e| e.tenant == tenant).count() as u64;
        let r = rows(cx, 0);
        let agg: u64 = r[0].iter().filter_map(|row| row[1].parse::<u64>().ok()).sum();
        let kinds: u64 = r[1].iter().filter_map(|row| row[1].parse::<u64>().ok()).sum();
        cx.check(
            agg == tenant_events && kinds == tenant_events,
            "the replayed counts equal the events held",
            json!({"events": tenant_events, "aggregate_state": agg, "tenant_counters": kinds}),
        );
    }
    // Validation of the replay itself, before the mode changes back.
    cx.check(at.iter().all(|&c| c == last), "the replay folded every event", json!({"cursors": at, "last_event": last}));
    let facts = projection_facts(cx, 0, true, None);
    judge(cx, 0, "replayed", vec![StoreFact::Projection(facts)]);
    let committed = cx.server_tenant(&tenant).await;
    if cx.step("restore-normal") {
        if let Some(p) = period.take() {
            p.end(cx, 0, Mode::Normal);
        }
    }
    if let Some(p) = period.take() {
        // The mode never went back: the period is judged as it stands.
        let mode = cx.devs[0].client().mode().expect("mode");
        p.end(cx, 0, mode);
    }
    validate(cx, 0, &committed).await;
}

// ---------------------------------------------------------------------------------------------
// §3.3

async fn selective(cx: &mut Ctx) {
    cx.warm_up().await;
    match cx.drill.param {
        SCOPE_TENANT => per_tenant(cx).await,
        SCOPE_PROJECTION => per_projection(cx).await,
        SCOPE_TIME => time_range(cx).await,
        _ => from_snapshot(cx).await,
    }
    let tenant = cx.devs[0].tenant.clone();
    let committed = cx.server_tenant(&tenant).await;
    validate(cx, 0, &committed).await;
}

async fn per_tenant(cx: &mut Ctx) {
    let (tenant, other) = (cx.devs[0].tenant.clone(), cx.devs[1].tenant.clone());
    let changed = cx.meet_planted_bugs(0).await;
    cx.inject("tenant_projections_corrupted", json!({"device": cx.devs[0].name, "tenant": tenant, "fired": changed}));
    projections_wrong(cx, 0);
    let before = rows(cx, 0);
    if cx.step("rebuild-tenant") {
        // A rebuild of another tenant first: it must leave this tenant's rows as they are.
        let r = rebuild(cx, 0, &Scope { tenant: Some(other.clone()), ..Scope::default() });
        let untouched = rows(cx, 0) == before;
        cx.check(r.is_ok() && untouched, "a rebuild scoped to another tenant leaves this tenant's rows untouched", json!({"other": other}));
        let target = if cx.wrong("rebuild-tenant") { other } else { tenant };
        let r = rebuild(cx, 0, &Scope { tenant: Some(target), ..Scope::default() });
        cx.check(r.is_ok(), "the tenant's rebuild runs", json!({"error": r.err()}));
    }
    if cx.step("verify-projections") {
        let facts = projection_facts(cx, 0, true, None);
        judge(cx, 0, "rebuilt_tenant", vec![StoreFact::Projection(facts)]);
    }
}

async fn per_projection(cx: &mut Ctx) {
    let changed = cx.meet_planted_bugs(0).await;
    cx.inject("projections_corrupted", json!({"device": cx.devs[0].name, "fired": changed}));
    projections_wrong(cx, 0);
    // Each projection's rebuild must leave the other exactly as it was.
    for (step, target, other) in [("rebuild-tenant-counters", 1, 0), ("rebuild-aggregate-state", 0, 1)] {
        if !cx.step(step) {
            continue;
        }
        let before = rows(cx, 0)[other].clone();
        let cursor = cx.devs[0].client().projection_cursor(PROJECTIONS[other]).expect("cursor");
        // Done wrong: the scope names the other projection.
        let name = if cx.wrong(step) { PROJECTIONS[other] } else { PROJECTIONS[target] };
        let r = rebuild(cx, 0, &Scope { projection: Some(name.into()), ..Scope::default() });
        let after = rows(cx, 0)[other].clone();
        let same = cx.devs[0].client().projection_cursor(PROJECTIONS[other]).expect("cursor") == cursor;
        let ok = r.is_ok() && (cx.wrong(step) || (after == before && same));
        cx.check(ok, "a rebuild of one projection leaves the other untouched", json!({"rebuilt": name, "error": r.err()}));
        let left: Vec<String> = inconsistencies(cx, 0).into_iter().map(|(p, _)| p).collect();
        cx.check(!left.contains(&PROJECTIONS[target].to_string()), "the rebuilt projection verifies", json!({"inconsistent": left}));
    }
    if cx.step("verify-projections") {
        let facts = projection_facts(cx, 0, true, None);
        judge(cx, 0, "rebuilt_projections", vec![StoreFact::Projection(facts)]);
    }
}

async fn time_range(cx: &mut Ctx) {
    // A device of the tenant writes offline before device 0 writes and syncs: the store orders
    // its events after device 0's, though they were created before.
    let offline = rand::Rng::gen_range(&mut cx.rng, 1..=3);
    cx.append(PEER, offline);
    madsim::time::sleep(std::time::Duration::from_millis(50)).await;
    let n = rand::Rng::gen_range(&mut cx.rng, 1..=3);
    cx.append(0, n);
    cx.sync(0).await.expect("the device syncs");
    madsim::time::sleep(std::time::Duration::from_millis(50)).await;
    cx.sync(PEER).await.expect("the other device syncs");
    // The point: just before device 0's newest events were created.
    let events = projection_facts(cx, 0, false, None).events;
    let mine: Vec<i64> = events.iter().filter(|e| e.tenant == cx.devs[0].tenant).map(|e| e.ts_ms).collect();
    let point = *mine.iter().max().expect("events") - 1;
    for _ in 0..2 {
        let k = rand::Rng::gen_range(&mut cx.rng, 1..=2);
        cx.append(0, k);
        cx.sync(0).await.expect("the device syncs");
    }
    cx.sync(0).await.expect("the device syncs");
    let changed = cx.meet_planted_bugs(0).await;
    cx.inject("projections_corrupted_since_point", json!({"device": cx.devs[0].name, "point_ms": point, "fired": changed}));
    projections_wrong(cx, 0);
    if cx.step("rebuild-as-of-point") {
        let r = rebuild(cx, 0, &Scope { tenant: Some(cx.devs[0].tenant.clone()), projection: None, until_ts_ms: Some(point) });
        cx.check(r.is_ok(), "the rebuild as of the point runs", json!({"error": r.err()}));
        let facts = projection_facts(cx, 0, true, Some(point));
        judge(cx, 0, "as_of_point", vec![StoreFact::Projection(facts)]);
    }
    if cx.step("replay-from-point") {
        let r = cx.devs[0].client().project().map(|r| r.applied).map_err(|e| e.code().to_string());
        cx.check(r.is_ok(), "the events after the point are replayed", json!({"error": r.err()}));
        let facts = projection_facts(cx, 0, false, None);
        judge(cx, 0, "replayed_from_point", vec![StoreFact::Projection(facts)]);
    }
    if cx.step("verify-projections") {
        let incremental = rows(cx, 0);
        let r = rebuild(cx, 0, &Scope::default());
        let full = rows(cx, 0);
        cx.check(r.is_ok() && incremental == full, "the state from the point on equals a full rebuild", json!({}));
    }
}

async fn from_snapshot(cx: &mut Ctx) {
    let ids = cx.devs[0].client().snapshot_projections().expect("a snapshot in NORMAL");
    for _ in 0..2 {
        let k = rand::Rng::gen_range(&mut cx.rng, 1..=3);
        cx.append(PEER, k);
        cx.sync(PEER).await.expect("the other device syncs");
        cx.sync(0).await.expect("the device syncs");
    }
    let changed = cx.meet_planted_bugs(0).await;
    cx.inject("projections_corrupted_after_snapshot", json!({"device": cx.devs[0].name, "snapshots": ids, "fired": changed}));
    projections_wrong(cx, 0);
    if cx.step("restore-from-snapshot") {
        restore_and_compare(cx, 0, &ids, &[]);
    }
    if cx.step("verify-projections") {
        let left = inconsistencies(cx, 0);
        cx.check(left.is_empty(), "the restored projections verify", json!({"inconsistent": left}));
    }
}

/// Restores every projection of device `i` from its latest valid snapshot plus the tail and
/// checks it used the snapshot it should (one of `want`, in projection order) and skipped the
/// corrupt ones (`corrupt`); the model compares the result with a full replay (INV-SNAPSHOT).
/// Leaves the restored state in place.
fn restore_and_compare(cx: &mut Ctx, i: usize, want: &[u64], corrupt: &[u64]) {
    let mut restored = Vec::new();
    for (k, p) in PROJECTIONS.iter().enumerate() {
        let r = cx.devs[i].client().restore_projection(p);
        let ok = r.as_ref().is_ok_and(|r| r.used == want.get(k).copied() && corrupt.get(k).is_none_or(|c| r.skipped_corrupt.contains(c)));
        let detail = match &r {
            Ok(r) => json!({"projection": p, "used": r.used, "want": want.get(k), "skipped": r.skipped_corrupt, "tail": r.tail.applied}),
            Err(e) => json!({"projection": p, "error": e.code()}),
        };
        cx.check(ok, "the restore starts from the latest valid snapshot", detail);
    }
    let c = cx.devs[i].client();
    let incomplete = |c: &Client, p: &str| -> BTreeSet<String> {
        c.incomplete().expect("skipped aggregates").into_iter().filter(|x| x.projection == p).map(|x| x.aggregate).collect()
    };
    for p in PROJECTIONS {
        restored.push((p, c.projection_rows(p).expect("rows"), incomplete(c, p)));
    }
    // A full replay into a scratch copy of the state, to compare; then the restore is put back.
    let events = sealed(cx, i);
    let c = cx.devs[i].client();
    let scratch = drill_stack::store::open(":memory:").expect("a scratch database");
    c.engine().install(&scratch).expect("scratch tables");
    c.engine().rebuild(&scratch, &events, &c.keys().ring, &Scope { tenant: Some(c.tenant().to_string()), ..Scope::default() }).expect("a replay");
    let tenant = c.tenant().to_string();
    let pairs = restored
        .into_iter()
        .map(|(p, rows, inc)| SnapshotPair {
            name: p.to_string(),
            restored: rows,
            restored_incomplete: inc,
            replayed: c.engine().rows(&scratch, p, &tenant).expect("rows"),
            replayed_incomplete: c
                .engine()
                .incomplete(&scratch, &tenant)
                .expect("skipped")
                .into_iter()
                .filter(|x| x.projection == p)
                .map(|x| x.aggregate)
                .collect(),
        })
        .collect();
    let f = SnapshotFacts { node: cx.devs[i].name.clone(), tenant, projections: pairs };
    judge(cx, i, "snapshot_restore", vec![StoreFact::Snapshot(f)]);
}

// ---------------------------------------------------------------------------------------------
// §4.2

async fn snapshot_recovery(cx: &mut Ctx) {
    cx.warm_up().await;
    let tenant = cx.devs[0].tenant.clone();
    // Three snapshots, with events between them: the newest goes corrupt, the one before it is
    // the latest valid one.
    let mut taken = Vec::new();
    for _ in 0..SNAPSHOTS {
        taken.push(cx.devs[0].client().snapshot_projections().expect("a snapshot in NORMAL"));
        let k = rand::Rng::gen_range(&mut cx.rng, 1..=3);
        cx.append(PEER, k);
        cx.sync(PEER).await.expect("the other device syncs");
        cx.sync(0).await.expect("the device syncs");
    }
    let (good, newest) = (taken[1].clone(), taken[2].clone());
    // The newest snapshots were written wrong (the writer's planted bug), and the projections
    // went wrong too (the fold's).
    let changed = cx.meet_planted_bugs(0).await;
    cx.inject("snapshot_and_projections_corrupted", json!({"device": cx.devs[0].name, "snapshots": newest, "fired": changed}));
    projections_wrong(cx, 0);
    let c = cx.devs[0].client();
    let skipped: Vec<Vec<u64>> = PROJECTIONS.iter().map(|p| c.engine().latest_valid_snapshot(c.db(), &tenant, p).expect("snapshots read").1).collect();
    let flagged = skipped.iter().zip(&newest).all(|(s, n)| s.contains(n));
    cx.symptom(flagged, "the newest snapshot fails its checksum", json!({"skipped": skipped, "newest": newest}));
    let mut chosen: Vec<Option<u64>> = Vec::new();
    if cx.step("find-latest-valid-snapshot") {
        let c = cx.devs[0].client();
        for p in PROJECTIONS {
            let (snap, _) = c.engine().latest_valid_snapshot(c.db(), &tenant, p).expect("snapshots read");
            chosen.push(snap.map(|s| s.id));
        }
        let want: Vec<Option<u64>> = good.iter().copied().map(Some).collect();
        cx.check(chosen == want, "the latest valid snapshot is the one before the corrupt ones", json!({"chosen": chosen, "valid": good}));
    }
    if cx.step("restore-snapshot-and-tail") {
        if cx.wrong("find-latest-valid-snapshot") {
            load_unchecked(cx, 0, &newest);
        } else {
            restore_and_compare(cx, 0, &good, &newest);
        }
    }
    if cx.step("verify-final-state") {
        let left = inconsistencies(cx, 0);
        cx.check(left.is_empty(), "the restored projections verify against their events", json!({"inconsistent": left}));
        let restored = rows(cx, 0);
        let r = rebuild(cx, 0, &Scope::default());
        let same = rows(cx, 0) == restored;
        cx.check(r.is_ok() && same, "snapshot plus tail equals a full rebuild", json!({}));
    }
    let committed = cx.server_tenant(&tenant).await;
    validate(cx, 0, &committed).await;
}

/// The restore done wrong: the newest snapshot's rows loaded as they are, unchecked, then the
/// events after it folded.
fn load_unchecked(cx: &mut Ctx, i: usize, ids: &[u64]) {
    let tenant = cx.devs[i].tenant.clone();
    let c = cx.devs[i].client();
    for (p, id) in PROJECTIONS.iter().zip(ids) {
        let (state, through): (String, u64) =
            c.db().query_row("SELECT state, through_seq FROM proj_snapshots WHERE id = ?1", [id], |r| Ok((r.get(0)?, r.get(1)?))).expect("the snapshot row");
        let rows: Vec<Vec<String>> = serde_json::from_str(state.trim()).unwrap_or_default();
        let q = |v: &str| format!("'{}'", v.replace('\'', "''"));
        let mut sql = String::from("BEGIN;");
        if *p == "aggregate_state" {
            sql += &format!("DELETE FROM proj_aggregate_state WHERE tenant = {};", q(&tenant));
            for r in rows.iter().filter(|r| r.len() == 5) {
                sql +=
                    &format!("INSERT INTO proj_aggregate_state VALUES ({}, {}, {}, {}, {}, {});", q(&tenant), q(&r[0]), q(&r[1]), q(&r[2]), q(&r[3]), q(&r[4]));
            }
        } else {
            sql += &format!("DELETE FROM proj_tenant_counters WHERE tenant = {};", q(&tenant));
            for r in rows.iter().filter(|r| r.len() == 2) {
                sql += &format!("INSERT INTO proj_tenant_counters VALUES ({}, {}, {});", q(&tenant), q(&r[0]), q(&r[1]));
            }
        }
        sql += &format!("INSERT OR REPLACE INTO proj_cursor(projection, tenant, seq) VALUES ({}, {}, {through}); COMMIT;", q(p), q(&tenant));
        c.db().execute_batch(&sql).expect("the snapshot's rows are loaded");
    }
    let _ = c.project();
}

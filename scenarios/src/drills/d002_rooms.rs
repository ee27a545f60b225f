//! Runbook 002 (operations): "Database Corruption on Native" and "Sync Divergence"; and runbook
//! 003 §1, whose last triage step restarts a device from its last known-good exported state.
//!
//! - `002-database-corruption-native`. The failure: a device's database file is overwritten with
//!   bytes that are not a database while the device is down. The symptom: opening it fails with
//!   the store's corruption error ("file is not a database"). The recovery: capture the error and
//!   the file name, recreate the database through the stack (`Client::recreate`: the damaged file
//!   and its log kept as evidence, a fresh database at the next open), recover by syncing from
//!   the server, validate convergence by count and hash. Writes the device never synced are lost
//!   with its file: the runbook recovers from peers, and no peer ever had them.
//! - `002-sync-divergence`. The failure: a bug of the device's commit of a pull (the plan's
//!   planted `pull_commit`) moves its cursor on but stores none of the pulled events, so it holds
//!   fewer events than the server and an ordinary sync does not notice. The symptoms: the consistency check (count + head) differs, and still differs after
//!   a retry. The recovery: run the consistency check, inspect the device's sync errors, force a
//!   sync, inspect the server's RBAC rejections (a device of the other tenant asking for this one
//!   is refused), and check every device is within the N/N-1 protocol window (one device speaks
//!   N-1; a peer speaking N-2 is refused).
//! - `003-1-hydrate-last-known-good`. The same lost rows, recovered the way runbook 003 §1 says:
//!   capture the state, retry, compare with the server's order, hydrate from the last known-good
//!   exported state, and sync again.
//!
//! Checked: every device converges with the server, and no committed event is lost
//! (INV-RECOVERY), except the corrupted device's never-synced writes.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use drill_sim::disk::DiskSim;
use drill_stack::client::Client;
use drill_stack::proto::{Request, Response, PROTOCOL_VERSION, SERVER_PORT};
use drill_stack::rpc::RpcClient;
use drill_stack::StoreError;
use serde_json::json;

use super::harness::{Ctx, BUGGY_KIND};
use super::Drill;
use crate::node::{lock, DEVICE_DB, SERVER_IP};
use crate::plan::{Bug, Mutation};

pub const DRILLS: &[Drill] = &[
    Drill {
        id: "002-database-corruption-native",
        section: "002 Database Corruption on Native",
        title: "a device's file is not a database: capture, recreate, recover from the server, converge",
        steps: &["capture-logs", "recreate-database", "sync-recovery", "validate-convergence"],
        devices: 3,
        server_retention: None,
        param: 0,
        bugs: super::no_bugs,
        body: corruption_body,
    },
    Drill {
        id: "002-sync-divergence",
        section: "002 Sync Divergence",
        title: "a device's counts differ after convergence: consistency check, packet flow, forced sync, RBAC rejections, N/N-1 window",
        steps: &["consistency-check", "inspect-packet-flow", "forced-sync", "inspect-rbac-rejections", "check-version-window"],
        devices: 3,
        server_retention: None,
        param: 0,
        bugs: commit_bug,
        body: divergence_body,
    },
    Drill {
        id: "003-1-hydrate-last-known-good",
        section: "003 §1",
        title: "a device that no longer converges after retries: triage, hydrate from the last known-good state, sync",
        steps: &["capture-state", "retry-and-compare", "compare-with-server", "hydrate-last-known-good", "re-run-sync"],
        devices: 3,
        server_retention: None,
        param: 0,
        bugs: commit_bug,
        body: hydrate_body,
    },
];

fn corruption_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(corruption(cx))
}

fn divergence_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(divergence(cx))
}

fn hydrate_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(hydrate(cx))
}

async fn corruption(cx: &mut Ctx) {
    cx.warm_up().await;
    let tenant = cx.devs[0].tenant.clone();
    let committed = cx.server_tenant(&tenant).await;
    // Writes the device never synced: lost with its file, by the runbook's own account.
    let lost: BTreeSet<String> = cx.append(0, 2).into_iter().collect();
    let node = cx.devs[0].node;
    let name = cx.devs[0].name.clone();
    cx.devs[0].client = None;
    cx.devs[0].rpc = None;
    lock(&cx.nodes).crash(&name);
    // One page of bytes that are not a database, with a page checksum that holds: what SQLite
    // then reads is a header it does not recognise, not a damaged page.
    let mut garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let sum = drill_sim::disk::page_checksum(&garbage);
    let n = garbage.len();
    garbage[n - sum.len()..].copy_from_slice(&sum);
    // The whole file is replaced, its log with it: nothing of the database is left to read.
    DiskSim::current().put_file(node, DEVICE_DB, &garbage);
    DiskSim::current().put_file(node, "device.db-wal", &[]);
    cx.inject("database_not_a_database", json!({"device": name, "file": DEVICE_DB}));
    lock(&cx.nodes).boot(&name);
    let opened = cx.open(0).await;
    let seen = matches!(&opened, Err(StoreError::Corrupt { detail }) if detail.contains("not a database"));
    cx.symptom(seen, "sqlite open fails: file is not a database", json!({"error": opened.as_ref().err().map(|e| e.to_string())}));
    if cx.step("capture-logs") {
        let files = DiskSim::current().files(node);
        cx.check(
            files.iter().any(|f| f == DEVICE_DB),
            "the damaged database file is named in the capture",
            json!({"files": files, "error": opened.err().map(|e| e.to_string())}),
        );
    }
    if cx.step("recreate-database") {
        // The stack's own recovery: it checks the file is damaged, keeps it (and its log) as
        // evidence, and the next open creates a fresh database.
        let fs = cx.files(node);
        let recreated = cx.on(node, async move { Client::recreate(&fs, DEVICE_DB) }).await;
        let opened = match &recreated {
            Ok(_) => cx.open(0).await,
            Err(e) => Err(e.clone()),
        };
        let kept = recreated.as_ref().map(|r| r.kept.clone()).unwrap_or_default();
        cx.check(
            recreated.is_ok() && opened.is_ok() && kept.first().is_some_and(|k| k.starts_with("device.db.corrupt-")),
            "the stack recreates the database, the damaged file kept as evidence",
            json!({"kept": kept, "damage": recreated.as_ref().ok().map(|r| r.damage.clone()), "error": opened.err().map(|e| e.to_string())}),
        );
    }
    if cx.step("sync-recovery") && cx.devs[0].client.is_some() {
        let r = cx.sync(0).await;
        cx.check(r.is_ok(), "the recreated device recovers the tenant's events from the server", json!({"error": r.err().map(|e| e.to_string())}));
    }
    if cx.step("validate-convergence") {
        let ok = cx.devs[0].client.is_some() && cx.converged(0).await;
        cx.check(ok, "count and hash equal the server's", json!({}));
    }
    if cx.devs[0].client.is_none() {
        cx.check(false, "the device has a working database after the recovery", json!({}));
        return;
    }
    // The recreated device writes and syncs again (its write ids start over; the server
    // renumbers nothing it already holds).
    let fresh = cx.append(0, 1);
    let r = cx.sync(0).await;
    let server = cx.server_tenant(&tenant).await;
    cx.check(r.is_ok() && server.iter().any(|e| e.op_id == fresh[0]), "the recreated device's new write reaches the server", json!({}));
    let device = cx.device_events(0);
    cx.recovery("device", &committed, &device, &lost);
    cx.recovery("server", &committed, &server, &lost);
}

/// The bug of the divergence drills: device 0's commit of a pull that brings an event of
/// [`BUGGY_KIND`] moves its cursor on but stores none of the pulled events, once.
fn commit_bug(_: &mut drill_sim::rng::Stream) -> Vec<Mutation> {
    vec![Mutation { node: crate::plan::client_name(0), bug: Bug::PullCommit { event_kind: BUGGY_KIND.into() }, after: 0, times: 1 }]
}

/// A device whose last rows are gone: returns the committed events, and the seq the device's
/// last known-good state (taken before the lost rows arrived) points at.
async fn diverge(cx: &mut Ctx) -> (Vec<drill_model::EventFact>, drill_stack::client::ExportedState) {
    cx.warm_up().await;
    let good = cx.devs[0].last_good.clone().expect("known-good");
    // The other device writes, the first of its events of the kind the planted bug of device
    // 0's pull commit mishandles: device 0's pull of them stores none while its cursor moves on.
    let n = rand::Rng::gen_range(&mut cx.rng, 1..=3);
    cx.append_kind(2, 1, BUGGY_KIND);
    cx.append(2, n);
    cx.sync(2).await.expect("the other device syncs");
    cx.sync(0).await.expect("the device pulls them");
    let tenant = cx.devs[0].tenant.clone();
    let committed = cx.server_tenant(&tenant).await;
    let held = cx.device_events(0).iter().filter(|e| e.tenant == tenant).count();
    let lost = committed.len().saturating_sub(held);
    let fired: u32 = cx.planted_fired(0).iter().map(|(_, n)| n).sum();
    cx.inject("event_rows_lost", json!({"device": cx.devs[0].name, "after_seq": good.cursor, "rows": lost, "fired": fired}));
    let first = cx.converged(0).await;
    let _ = cx.sync(0).await;
    let still = cx.converged(0).await;
    cx.symptom(lost > 0 && !first && !still, "counts differ after the expected convergence window, and after a retry", json!({"rows_lost": lost}));
    (committed, good)
}

async fn divergence(cx: &mut Ctx) {
    // The third device is an older build: N-1 must interoperate with N.
    cx.devs[2].version = PROTOCOL_VERSION - 1;
    cx.open(2).await.expect("reopen as N-1");
    let (committed, _) = diverge(cx).await;
    let tenant = cx.devs[0].tenant.clone();
    if cx.step("consistency-check") {
        let server = cx.server(|s| s.diagnostics().expect("diagnostics")).await;
        let have = cx.devs[0].client().diagnostics().expect("diagnostics");
        let want = server.iter().find(|d| d.tenant == tenant).map(|d| d.count).unwrap_or(0);
        cx.check(have.0 < want, "the consistency check shows the device behind by count", json!({"device": have.0, "server": want}));
    }
    if cx.step("inspect-packet-flow") {
        // No attempt failed on a signature or a decrypt: the divergence is not in the packets.
        let r = cx.sync_through_loss(0).await;
        cx.check(r.is_ok(), "the device's sync raises no signature or decrypt failure", json!({"error": r.err().map(|e| e.to_string())}));
    }
    if cx.step("forced-sync") {
        let r = if cx.wrong("forced-sync") { Ok(()) } else { cx.devs[0].client().force_resync() };
        let s = cx.sync(0).await;
        cx.check(r.is_ok() && s.is_ok(), "the forced sync pulls and verifies the tenant again", json!({}));
    }
    if cx.step("inspect-rbac-rejections") {
        // A device of the other tenant asks for this tenant's events: the server refuses it and
        // nothing of this tenant reaches it.
        // It holds a live token (of its own tenant).
        let other = cx.devs[1].name.clone();
        let node = cx.devs[1].node;
        let token = cx.devs[1].client().token_state().and_then(|s| s.token().map(String::from));
        let req = Request::Pull { tenant: tenant.clone(), replica: other, since: 0, limit: 100, head: None };
        let resp = cx
            .on(node, async move {
                let server = SocketAddr::new(SERVER_IP, SERVER_PORT);
                let mut rpc = RpcClient::bind(server, 9_000, Duration::from_millis(1_000)).await.ok()?;
                drill_stack::rpc::Exchange::set_token(&mut rpc, token);
                for _ in 0..super::harness::SYNC_ATTEMPTS_MAX {
                    if let Ok(r) = rpc.call(&req).await {
                        return Some(r);
                    }
                }
                None
            })
            .await;
        let refused = matches!(&resp, Some(Response::Error { code, .. }) if code == "rbacDenied");
        cx.check(
            refused,
            "a cross-tenant pull is refused with rbacDenied, never merged",
            json!({"answer": format!("{resp:?}").chars().take(120).collect::<String>()}),
        );
        let leaked = cx.device_events(1).iter().any(|e| e.tenant == tenant);
        cx.check(!leaked, "the other tenant's device holds none of this tenant's events", json!({}));
    }
    if cx.step("check-version-window") {
        let versions: Vec<u32> = cx.devs.iter().map(|d| d.version).collect();
        let inside = versions.iter().all(|v| (PROTOCOL_VERSION - 1..=PROTOCOL_VERSION).contains(v));
        cx.check(inside, "every device is within the N/N-1 window", json!({"versions": versions}));
        let node = cx.devs[1].node;
        let (t, r) = (cx.devs[1].tenant.clone(), cx.devs[1].name.clone());
        let resp = cx
            .on(node, async move {
                let server = SocketAddr::new(SERVER_IP, SERVER_PORT);
                let mut rpc = RpcClient::bind(server, 9_100, Duration::from_millis(1_000)).await.ok()?.with_version(PROTOCOL_VERSION - 2);
                for _ in 0..super::harness::SYNC_ATTEMPTS_MAX {
                    match rpc.call(&Request::Pull { tenant: t.clone(), replica: r.clone(), since: 0, limit: 1, head: None }).await {
                        Ok(resp) => return Some(Ok(resp)),
                        Err(drill_stack::SyncError::Transport { .. }) => continue,
                        Err(e) => return Some(Err(e.code())),
                    }
                }
                None
            })
            .await;
        let refused = matches!(&resp, Some(Err(code)) if code == "sync:protocolVersion")
            || matches!(&resp, Some(Ok(Response::Error { code, .. })) if code.contains("protocol"));
        cx.check(refused, "a peer outside N-1..N is refused", json!({"answer": format!("{resp:?}").chars().take(120).collect::<String>()}));
    }
    for i in 0..cx.devs.len() {
        let _ = cx.sync(i).await;
        let ok = cx.converged(i).await;
        cx.check(ok, "every device converged after the recovery", json!({"device": cx.devs[i].name}));
    }
    let device = cx.device_events(0);
    cx.recovery("device", &committed, &device, &BTreeSet::new());
}

async fn hydrate(cx: &mut Ctx) {
    let (committed, good) = diverge(cx).await;
    let tenant = cx.devs[0].tenant.clone();
    let mut captured = None;
    if cx.step("capture-state") {
        captured = cx.devs[0].client().export_state().ok();
    }
    if cx.step("retry-and-compare") {
        let _ = cx.sync_through_loss(0).await;
        let after = cx.devs[0].client().export_state().ok();
        cx.check(captured.is_some() && after == captured, "a retry leaves the exported state as captured", json!({}));
    }
    if cx.step("compare-with-server") {
        let state = cx.devs[0].client().export_state().expect("state");
        let server = cx.server_tenant(&tenant).await;
        let held = cx.device_events(0).len();
        let at_cursor = server.iter().filter(|e| e.seq <= state.cursor).count();
        cx.check(
            held < at_cursor,
            "the cursor claims events the device does not hold",
            json!({"cursor": state.cursor, "held": held, "server_upto_cursor": at_cursor}),
        );
    }
    if cx.step("hydrate-last-known-good") {
        let state = if cx.wrong("hydrate-last-known-good") { cx.devs[0].client().export_state().expect("state") } else { good.clone() };
        let r = cx.devs[0].client().hydrate(&state);
        cx.check(r.is_ok(), "the device hydrates from its last known-good state", json!({"cursor": state.cursor}));
    }
    if cx.step("re-run-sync") {
        let r = cx.sync(0).await;
        cx.check(r.is_ok(), "the sync after hydrate succeeds", json!({"error": r.err().map(|e| e.to_string())}));
    }
    let ok = cx.converged(0).await;
    cx.check(ok, "the device converged with the server (count and chain head)", json!({}));
    let device = cx.device_events(0);
    cx.recovery("device", &committed, &device, &BTreeSet::new());
}

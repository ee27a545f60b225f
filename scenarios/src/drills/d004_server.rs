//! Runbook 004 §5.1, §5.3 (event store backup and its verification), on the server's real
//! backups.
//!
//! - `004-5.3-server-backup-checklist`. The world: the operator takes full backups of the
//!   server's event store with the online backup API and ships them to the backup node (its own
//!   node); the tenant moves on between them. The failure: the backup node's disk damages the
//!   newest backup (a bit flipped in its object) and loses the one before it whole (object and
//!   manifest). The symptom: the newest backup the node holds fails the checklist. The recovery
//!   is the runbook's verification before any restore: every backup the node holds goes through
//!   the six items (completed, restorable to a clean database, hash chain, projection rebuild,
//!   counts, tenant isolation), and the newest that passes all six is restored into a clean
//!   staging database of the server. Checked: the good backup passes every item in the
//!   runbook's order, the damaged one fails `completed`, and the staging store is chain-valid and
//!   equal to the server's events at that backup's point (INV-BACKUP).

use std::future::Future;
use std::pin::Pin;

use drill_model::server_dr::{check_backup_restore, BACKUP};
use drill_model::EventFact;
use drill_sim::disk::DiskSim;
use drill_stack::clock::Clock;
use drill_stack::projections::resilience::Mode;
use drill_stack::server::backup::{verify, CHECKLIST};
use drill_stack::server::restore::choose_backup;
use drill_stack::server::{FullBackup, ModeScope, Server};
use serde_json::json;

use super::harness::{fact_of, Ctx};
use super::Drill;
use crate::backup_world::{BackupWorld, BACKUP_NODE};
use crate::node::NodeClock;

pub const DRILLS: &[Drill] = &[Drill {
    id: "004-5.3-server-backup-checklist",
    section: "004 §5.1, §5.3",
    title: "the server's backups on the backup node, one damaged and one lost: each through the six-item checklist, the newest verified one restored to a clean database",
    steps: &["verify-each-backup", "restore-to-clean-db"],
    devices: 3,
    server_retention: None,
    param: 0,
    bugs: super::no_bugs,
    body: checklist_body,
}];

fn checklist_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(checklist(cx))
}

/// The clean staging database a backup is restored into, on the server's disk.
const STAGING_DB: &str = "staging.db";

async fn checklist(cx: &mut Ctx) {
    let backups = BackupWorld::start(cx);
    cx.warm_up().await;
    let server_node = cx.server;
    // Three backups, the tenant moving on between them; what the server held at each point.
    let mut points: Vec<(u64, Vec<EventFact>)> = Vec::new();
    for id in 1..=3u64 {
        let m = backups.take_backup(id, NodeClock(server_node).now_unix_ms()).await;
        cx.check(m.is_ok(), "the full backup is on the backup node", json!({"id": id, "error": m.as_ref().err()}));
        let through = m.map(|m| m.through_seq).unwrap_or(0);
        points.push((through, cx.server_events().await));
        for i in 0..cx.devs.len() {
            let n = rand::Rng::gen_range(&mut cx.rng, 1..=2);
            cx.append(i, n);
            cx.sync(i).await.unwrap_or_else(|e| panic!("a sync between the backups failed: {e}"));
        }
    }
    let flipped = DiskSim::current().flip_bit(backups.node, &FullBackup::object_name(3));
    let lost = DiskSim::current().lose_files(backups.node, &format!("objects/{}", FullBackup::object_name(2)));
    cx.inject("backup_objects_damaged", json!({"node": BACKUP_NODE, "flipped": flipped.map(|f| f.0), "lost": lost}));
    let held = backups.fetch_backups().await.unwrap_or_default();
    let newest = held.iter().max_by_key(|b| b.manifest.id).cloned();
    let newest_fails = newest.as_ref().is_some_and(|b| !verify(b).0.passed());
    cx.symptom(
        newest_fails,
        "the newest backup on the backup node fails its checklist",
        json!({"held": held.iter().map(|b| b.manifest.id).collect::<Vec<_>>()}),
    );

    // Without the verification the operator would take the newest backup the node holds.
    let mut chosen = newest;
    if cx.step("verify-each-backup") {
        let verdicts: Vec<_> = held.iter().map(|b| (b.manifest.id, verify(b).0)).collect();
        let shown: Vec<_> = verdicts
            .iter()
            .map(|(id, v)| json!({"id": id, "items": v.items.iter().map(|i| json!({"item": i.name, "passed": i.passed})).collect::<Vec<_>>()}))
            .collect();
        let good = verdicts.iter().find(|(id, _)| *id == 1).is_some_and(|(_, v)| v.passed() && v.items.iter().map(|i| i.name).eq(CHECKLIST));
        cx.check(good, "the good backup passes the six items in the runbook's order", json!({"verdicts": shown}));
        let damaged = verdicts.iter().find(|(id, _)| *id == 3).and_then(|(_, v)| v.failure().map(|i| i.name));
        cx.check(damaged == Some("completed"), "the damaged backup fails its first item", json!({"failed": damaged}));
        chosen = choose_backup(&held).0.cloned();
    }
    let mut restored = None;
    if cx.step("restore-to-clean-db") {
        let b = chosen.clone();
        let r = cx
            .on(server_node, async move {
                let b = b.ok_or("no backup chosen")?;
                let mut staging = Server::open(STAGING_DB).map_err(|e| e.to_string())?;
                staging.set_mode(&ModeScope::Server, Mode::ReadOnly, &[]).map_err(|e| e.to_string())?;
                staging.restore_backup(&b, 0).map_err(|e| e.to_string())?;
                let events = staging.events().map_err(|e| e.to_string())?;
                Ok::<_, String>((b.manifest.id, b.manifest.through_seq, events))
            })
            .await;
        cx.check(r.is_ok(), "a backup is restored into a clean database", json!({"restored": r.as_ref().map(|r| r.0), "error": r.as_ref().err()}));
        restored = r.ok();
    }
    // INV-BACKUP: the restored store chains and is the server as it was at that backup's point.
    let (through, events) = match &restored {
        Some((_, through, events)) => (*through, events.iter().map(fact_of).collect()),
        None => (points[0].0, Vec::new()),
    };
    let at_point = points.iter().find(|(t, _)| *t == through).map(|(_, e)| e.clone()).unwrap_or_default();
    cx.judge(BACKUP, "staging", check_backup_restore(&at_point, through, &events, &Default::default()));
    cx.recovery("staging", &at_point.into_iter().filter(|e| e.seq <= through).collect::<Vec<_>>(), &events, &Default::default());
}

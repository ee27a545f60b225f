//! Runbook 000 (local-first failure modes), "Key loss", and the diagnostics export of its open
//! questions. The devices these drills fail hold their keys in a real key store (Argon2id at the
//! simulation's costs) on their own disk.
//!
//! - `000-key-loss-no-backup`. The failure: the user lost the key store's passphrase and has no
//!   key backup. The symptom: unlocking is `keys:passphraseWrong`, and nothing can bring the keys
//!   back. The recovery: declare the passphrase lost (a new key store; the old aggregates are
//!   recorded lost), rebuild the projections (they skip the lost aggregates and say why), write
//!   new events under new aggregates with new keys, and sync. Checked: every old payload answers
//!   the typed `keys:payloadsUnrecoverable` (never a tampered-looking error), a lost aggregate
//!   takes no event under a second key, the ciphertext stays held, the new events reach the
//!   server and read back, the device converges, and INV-RECOVERY holds with exactly the lost
//!   aggregates' events named unrecoverable. Done wrong: regenerating keys under the old names.
//! - `000-key-loss-missing-aggregate-keys`. The failure: the device is replaced by a fresh one
//!   that syncs without importing every aggregate key. The symptom: projections skip those
//!   aggregates (`keys:aggregateKeyMissing`) and report them incomplete. The recovery: restore
//!   the key backup into the key store, unlock it, replay the projections from the committed
//!   encrypted events. Checked: nothing incomplete, projections equal a replay, every event
//!   opens with the device's own keys (INV-RECOVERY on the plaintexts).
//! - `000-diagnostics-export-no-secrets`. The failure: a device in trouble (keys missing, its
//!   projections incomplete) whose operator needs its diagnostics. The recovery is the export
//!   flow: export the bundle, check it with the bundle's own check, scan it for every key,
//!   passphrase and plaintext the drill knows (INV-NO-PLAINTEXT, by the model). Checked: the
//!   bundle names the skipped aggregates with their codes, and holds no secret. Done wrong: an
//!   export that attaches an event's plaintext "for context".

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;

use drill_model::secrets::Secret;
use drill_model::store::StoreFact;
use drill_model::{EventFact, Fact};
use drill_sim::trace;
use drill_stack::client::Ring;
use drill_stack::crypto::Key;
use drill_stack::diagnostics::{self, ErrorLog, Sources};
use drill_stack::fs::FileSystem;
use drill_stack::keys::{KdfParams, KeyError, KeyStore};
use drill_stack::projections::health;
use drill_stack::projections::Scope;
use drill_stack::store::EventRow;
use serde_json::{json, Value};

use super::harness::{fact_of, tenant_ring, Ctx, AGGREGATES};
use super::Drill;
use crate::node::{NodeClock, DEVICE_DB, KEYS_DB};

/// The passphrase of a drill device's key store.
pub(super) const PASSPHRASE: &str = "correct horse battery staple";
/// The passphrase the operator keeps the key backup under.
const BACKUP_PASSPHRASE: &str = "the operator's backup passphrase";
/// The passphrase of the key store that replaces one whose passphrase was lost.
const NEW_PASSPHRASE: &str = "a new passphrase after the loss";
/// Events the user writes under new aggregates after a key loss.
const NEW_EVENTS: usize = 3;

pub const DRILLS: &[Drill] = &[
    Drill {
        id: "000-key-loss-no-backup",
        section: "000 Key loss",
        title: "passphrase lost and no key backup: payloads unrecoverable (typed), everything else keeps working",
        steps: &["declare-passphrase-lost", "rebuild-projections", "write-under-new-keys", "re-run-sync"],
        devices: 3,
        server_retention: None,
        param: 0,
        bugs: super::no_bugs,
        body: no_backup_body,
    },
    Drill {
        id: "000-key-loss-missing-aggregate-keys",
        section: "000 Key loss",
        title: "a fresh device synced without its aggregate keys: projections incomplete; restore the key backup, unlock, replay",
        steps: &["restore-key-backup", "unlock", "replay-projections"],
        devices: 3,
        server_retention: None,
        param: 0,
        bugs: super::no_bugs,
        body: missing_keys_body,
    },
    Drill {
        id: "000-diagnostics-export-no-secrets",
        section: "000 Open Questions",
        title: "export diagnostics from a device in trouble: the bundle checks itself and holds no key, passphrase or plaintext",
        steps: &["export-bundle", "check-bundle", "scan-bundle"],
        devices: 3,
        server_retention: None,
        param: 0,
        bugs: super::no_bugs,
        body: diagnostics_body,
    },
];

fn no_backup_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(no_backup(cx))
}

fn missing_keys_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(missing_keys(cx))
}

fn diagnostics_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(diagnostics_export(cx))
}

// ---------------------------------------------------------------------------------------------
// Shared by the 000 drills

/// A fresh seeded stream for key operations on device `i` (salts, nonces, new keys).
fn key_rng(cx: &Ctx, i: usize, what: &str) -> drill_sim::rng::Stream {
    cx.seeds.stream(&format!("keys/{}/{what}/{}", cx.devs[i].name, trace::line_count()))
}

/// Opens (creating on first use) device `i`'s key store on its node, unlocked, and imports the
/// tenant's keys of `aggregates` it lacks: what pairing hands a device.
pub(super) async fn key_store(cx: &mut Ctx, i: usize, aggregates: &[String]) -> KeyStore {
    let (node, name) = (cx.devs[i].node, cx.devs[i].name.clone());
    let keys: Vec<(String, Key)> = tenant_ring(&cx.devs[i].tenant).into_iter().filter(|(a, _)| aggregates.contains(a)).collect();
    let mut rng = key_rng(cx, i, "pair");
    let task = async move {
        let mut ks = match KeyStore::open(KEYS_DB) {
            Ok(mut ks) => {
                ks.unlock(PASSPHRASE)?;
                ks
            }
            Err(KeyError::KeyStoreUninitialized) => KeyStore::create(KEYS_DB, PASSPHRASE, KdfParams::sim(), &mut rng)?,
            Err(e) => return Err(e),
        };
        for (a, k) in &keys {
            if ks.aggregate_key(a).is_err() {
                ks.import_aggregate_key(a, k, &mut rng)?;
            }
        }
        Ok::<_, KeyError>(ks)
    };
    cx.on(node, task).await.unwrap_or_else(|e| panic!("{name} cannot open its key store: {e}"))
}

/// Every aggregate the tenants hold a key for.
pub(super) fn all_aggregates(tenant: &str) -> Vec<String> {
    tenant_ring(tenant).into_keys().collect()
}

/// Opens device `i` with a key store holding the tenant's keys of `aggregates`.
pub(super) async fn open_keyed(cx: &mut Ctx, i: usize, aggregates: &[String]) {
    let ks = key_store(cx, i, aggregates).await;
    let name = cx.devs[i].name.clone();
    cx.open_with_ring(i, Ring::Store(Box::new(ks))).await.unwrap_or_else(|e| panic!("{name} cannot open: {e}"));
}

/// Opens device `i` with key store `ks`; a device that does not open (its key store locked)
/// fails the drill's validation instead of the run.
async fn reopen(cx: &mut Ctx, i: usize, ks: KeyStore) -> bool {
    let r = cx.open_with_ring(i, Ring::Store(Box::new(ks))).await;
    let code = r.as_ref().err().map(|e| e.code());
    cx.check(r.is_ok(), "the device opens with its key store", json!({"code": code}));
    r.is_ok()
}

/// Closes device `i` (its database and key store).
pub(super) fn close(cx: &mut Ctx, i: usize) {
    cx.devs[i].client = None;
    cx.devs[i].rpc = None;
}

/// Removes device `i`'s database and key store files (the device is closed).
fn wipe(cx: &mut Ctx, i: usize) {
    let fs = cx.files(cx.devs[i].node);
    for base in [DEVICE_DB, KEYS_DB] {
        for f in [base.to_string(), format!("{base}-wal"), format!("{base}-shm"), format!("{base}-journal")] {
            if fs.exists(&f).unwrap_or(false) {
                let _ = fs.remove(&f);
            }
        }
    }
    let _ = fs.sync_dir();
}

/// Device `i`'s events as the model sees them through the device's own keys: a payload it
/// cannot open is given as stored, so it matches no write.
pub(super) fn own_facts(cx: &mut Ctx, i: usize) -> Vec<EventFact> {
    let c = cx.devs[i].client();
    let rows = c.events().expect("the device's events read back");
    rows.iter()
        .map(|e| {
            let mut f = crate::node::event_fact(e, &BTreeMap::new());
            f.payload = c.open_payload(e).unwrap_or_else(|_| e.payload.clone());
            f
        })
        .collect()
}

/// The server's events of `tenant`, as stored.
pub(super) async fn server_rows(cx: &mut Ctx, tenant: &str) -> Vec<EventRow> {
    let t = tenant.to_string();
    cx.server(move |s| s.events().expect("the server's events read back").into_iter().filter(|e| e.tenant == t).collect()).await
}

/// The aggregates device `i`'s projections skip, with the codes they give.
fn skipped(cx: &mut Ctx, i: usize) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in cx.devs[i].client().incomplete().unwrap_or_default() {
        out.entry(s.aggregate).or_default().insert(s.reason);
    }
    out
}

/// The projections of device `i` that differ from a replay of its events with the keys it
/// holds now (none, or the error that kept them from being compared).
fn inconsistent(cx: &mut Ctx, i: usize) -> Value {
    match crate::store_ops::inconsistent_projections(cx.devs[i].client()) {
        Ok(v) if v.is_empty() => Value::Null,
        Ok(v) => json!(v.iter().map(|(p, why)| format!("{p}: {why}")).collect::<Vec<_>>()),
        Err(e) => json!(format!("not comparable: {e}")),
    }
}

/// The failure of both key drills: device `i` is replaced by a fresh one that paired without
/// one or two of the tenant's keys (its database and key store go, a new key store gets the
/// other keys, and it syncs the tenant's history). Returns the withheld aggregates.
async fn replace_without_some_keys(cx: &mut Ctx, i: usize) -> BTreeSet<String> {
    let (tenant, name) = (cx.devs[i].tenant.clone(), cx.devs[i].name.clone());
    let withheld = pick_withheld(cx);
    let keep: Vec<String> = all_aggregates(&tenant).into_iter().filter(|a| !withheld.contains(a)).collect();
    cx.inject("fresh_device_without_keys", json!({"device": name, "withheld": withheld}));
    close(cx, i);
    wipe(cx, i);
    open_keyed(cx, i, &keep).await;
    cx.sync(i).await.unwrap_or_else(|e| panic!("the fresh device cannot sync: {e}"));
    withheld
}

/// Aggregates withheld from a fresh device: one or two of the drills' aggregates.
fn pick_withheld(cx: &mut Ctx) -> BTreeSet<String> {
    let n = rand::Rng::gen_range(&mut cx.rng, 1..=2);
    let mut out = BTreeSet::new();
    while out.len() < n {
        out.insert(AGGREGATES[rand::Rng::gen_range(&mut cx.rng, 0..AGGREGATES.len())].to_string());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Key loss without a backup

async fn no_backup(cx: &mut Ctx) {
    let tenant = cx.devs[0].tenant.clone();
    let (node, name) = (cx.devs[0].node, cx.devs[0].name.clone());
    close(cx, 0);
    open_keyed(cx, 0, &all_aggregates(&tenant)).await;
    cx.warm_up().await;
    let before = own_facts(cx, 0);
    let before_rows = cx.devs[0].client().events().expect("events");
    // The failure: the passphrase is gone and no backup was ever taken.
    close(cx, 0);
    cx.inject("passphrase_lost_no_backup", json!({"device": name, "events": before.len()}));
    let tried = cx.on(node, async { KeyStore::open(KEYS_DB).and_then(|mut ks| ks.unlock("a guess at the passphrase")) }).await;
    let code = tried.as_ref().err().map(KeyError::code);
    cx.symptom(code == Some("keys:passphraseWrong"), "the key store does not unlock (keys:passphraseWrong) and no key backup exists", json!({"code": code}));
    let lost: BTreeSet<String> = before_rows.iter().map(|e| e.aggregate.clone()).collect();

    let declared = cx.step("declare-passphrase-lost");
    let wrong = cx.wrong("declare-passphrase-lost");
    let mut rng = key_rng(cx, 0, "declare");
    let regenerate: Vec<String> = all_aggregates(&tenant);
    let task = async move {
        if !declared {
            // Nothing declared: the store stays as it is, locked.
            return KeyStore::open(KEYS_DB);
        }
        if wrong {
            // Done wrong: a new store, and new keys under the lost aggregates' names.
            let fs = crate::sim_fs::SimFs::current();
            for f in [KEYS_DB.to_string(), format!("{KEYS_DB}-wal"), format!("{KEYS_DB}-shm")] {
                if fs.exists(&f).unwrap_or(false) {
                    let _ = fs.remove(&f);
                }
            }
            let mut ks = KeyStore::create(KEYS_DB, NEW_PASSPHRASE, KdfParams::sim(), &mut rng)?;
            for a in &regenerate {
                ks.ensure_aggregate_key(a, &mut rng)?;
            }
            return Ok(ks);
        }
        KeyStore::declare_passphrase_lost(KEYS_DB, NEW_PASSPHRASE, KdfParams::sim(), &mut rng)
    };
    let ks = cx.on(node, task).await.unwrap_or_else(|e| panic!("{name}: the key store cannot be replaced: {e}"));
    if !reopen(cx, 0, ks).await {
        return;
    }
    // What an old payload answers now.
    let codes: BTreeSet<&'static str> = {
        let c = cx.devs[0].client();
        before_rows.iter().map(|e| c.open_payload(e).err().map(|u| u.code).unwrap_or("opened")).collect()
    };
    cx.check(
        codes.len() == 1 && codes.contains("keys:payloadsUnrecoverable"),
        "every payload under a lost key answers keys:payloadsUnrecoverable",
        json!({"codes": codes}),
    );

    if cx.step("rebuild-projections") {
        let scope = Scope { tenant: Some(tenant.clone()), ..Scope::default() };
        let r = cx.devs[0].client().rebuild_projections(&scope);
        cx.check(r.is_ok(), "the projections rebuild without the lost keys", json!({"error": r.err().map(|e| e.to_string())}));
    }

    let mut new_ops = Vec::new();
    let mut new_keys: BTreeMap<String, Key> = BTreeMap::new();
    if cx.step("write-under-new-keys") {
        let mut rng = key_rng(cx, 0, "new-aggregates");
        let refused = {
            let a = AGGREGATES[0];
            cx.devs[0].client().append(a, "created", b"a write to an aggregate whose key was lost").err().map(|e| e.code())
        };
        cx.check(refused == Some("keys:payloadsUnrecoverable"), "a lost aggregate takes no event under a second key", json!({"code": refused}));
        for k in 0..NEW_EVENTS {
            let aggregate = format!("{}.2", AGGREGATES[k % AGGREGATES.len()]);
            let key = match &mut cx.devs[0].client().keys_mut().ring {
                Ring::Store(ks) => ks.ensure_aggregate_key(&aggregate, &mut rng),
                Ring::Fixed(_) => unreachable!("the device runs with its key store"),
            };
            let key = match key {
                Ok(key) => key,
                Err(e) => {
                    cx.check(false, "a new aggregate gets a new key", json!({"aggregate": aggregate, "code": e.code()}));
                    break;
                }
            };
            new_keys.insert(aggregate.clone(), key);
            let payload = crate::node::payload_for(&name, 100_000 + k as u64, 48);
            match cx.devs[0].client().append(&aggregate, "created", &payload) {
                Ok((_, op)) => new_ops.push((op, payload)),
                Err(e) => cx.check(false, "the device appends under a new key", json!({"aggregate": aggregate, "code": e.code()})),
            }
        }
    }

    if cx.step("re-run-sync") {
        let r = cx.sync(0).await;
        cx.check(r.is_ok(), "the device syncs after the loss", json!({"error": r.err().map(|e| e.to_string())}));
    }

    // Validation.
    let ok = cx.converged(0).await;
    cx.check(ok, "count and chain head equal the server's", json!({}));
    let rows = cx.devs[0].client().events().expect("events");
    let held = before_rows.iter().all(|b| rows.iter().any(|r| r.op_id == b.op_id && r.payload == b.payload));
    cx.check(held, "every old event is still held, its ciphertext unchanged", json!({"events": before_rows.len()}));
    let server = server_rows(cx, &tenant).await;
    let readable = !new_ops.is_empty()
        && new_ops.iter().all(|(op, payload)| {
            server.iter().any(|e| &e.op_id == op)
                && rows.iter().find(|e| &e.op_id == op).is_some_and(|e| cx.devs[0].client().open_payload(e).ok().as_ref() == Some(payload))
        });
    cx.check(readable, "the events written under new keys reach the server and read back", json!({"new": new_ops.len()}));
    let skips = skipped(cx, 0);
    let unrecoverable_skips =
        skips.iter().filter(|(_, r)| r.len() == 1 && r.contains("keys:payloadsUnrecoverable")).map(|(a, _)| a.clone()).collect::<BTreeSet<_>>();
    cx.check(
        unrecoverable_skips == lost && skips.len() == lost.len(),
        "the projections skip exactly the lost aggregates, as unrecoverable",
        json!({"skipped": skips, "lost": lost}),
    );
    let differs = inconsistent(cx, 0);
    cx.check(differs.is_null(), "the projections equal a replay with the keys held now", json!({"inconsistent": differs}));
    // INV-RECOVERY: every event the tenant committed, read through the device's keys; the lost
    // aggregates' events are the runbook's unrecoverable set.
    let mut ring = tenant_ring(&tenant);
    ring.extend(new_keys);
    let committed: Vec<EventFact> = server.iter().map(|e| crate::node::event_fact(e, &ring)).collect();
    let unrecoverable: BTreeSet<String> = rows.iter().filter(|e| lost.contains(&e.aggregate)).map(|e| e.op_id.clone()).collect();
    let after = own_facts(cx, 0);
    cx.recovery("device", &committed, &after, &unrecoverable);
}

// ---------------------------------------------------------------------------------------------
// Missing aggregate keys on a fresh device

async fn missing_keys(cx: &mut Ctx) {
    let tenant = cx.devs[0].tenant.clone();
    let (node, name) = (cx.devs[0].node, cx.devs[0].name.clone());
    close(cx, 0);
    open_keyed(cx, 0, &all_aggregates(&tenant)).await;
    // The operator's key backup, kept off the device.
    let mut rng = key_rng(cx, 0, "backup");
    let backup = match &cx.devs[0].client().keys().ring {
        Ring::Store(ks) => ks.export_backup(BACKUP_PASSPHRASE, KdfParams::sim(), &mut rng).expect("a backup exports"),
        Ring::Fixed(_) => unreachable!("the device runs with its key store"),
    };
    cx.warm_up().await;
    let committed = cx.server_tenant(&tenant).await;
    let withheld = replace_without_some_keys(cx, 0).await;
    let skips = skipped(cx, 0);
    let missing = skips.iter().filter(|(_, r)| r.contains("keys:aggregateKeyMissing")).map(|(a, _)| a.clone()).collect::<BTreeSet<_>>();
    let unreadable = {
        let c = cx.devs[0].client();
        let rows = c.events().unwrap_or_default();
        rows.iter().filter_map(|e| c.open_payload(e).err()).map(|u| u.code).collect::<BTreeSet<_>>()
    };
    cx.symptom(
        missing == withheld && unreadable.len() == 1 && unreadable.contains("keys:aggregateKeyMissing"),
        "projections skip the aggregates without a key and report them incomplete (keys:aggregateKeyMissing)",
        json!({"skipped": skips, "unreadable": unreadable}),
    );

    close(cx, 0);
    if cx.step("restore-key-backup") {
        let mut rng = key_rng(cx, 0, "restore");
        let task = async move {
            let mut ks = KeyStore::open(KEYS_DB)?;
            ks.unlock(PASSPHRASE)?;
            let report = ks.import_backup(&backup, BACKUP_PASSPHRASE, &mut rng)?;
            ks.lock();
            Ok::<_, KeyError>(report.added)
        };
        let r = cx.on(node, task).await;
        let added: Option<BTreeSet<String>> = r.as_ref().ok().map(|a| a.iter().cloned().collect());
        cx.check(
            added.as_ref() == Some(&withheld),
            "the backup brings back exactly the missing keys",
            json!({"added": added, "error": r.err().map(|e| e.code())}),
        );
    }
    let unlock = cx.step("unlock");
    let task = async move {
        let mut ks = KeyStore::open(KEYS_DB)?;
        if unlock {
            ks.unlock(PASSPHRASE)?;
        }
        Ok::<_, KeyError>(ks)
    };
    let ks = cx.on(node, task).await.unwrap_or_else(|e| panic!("{name}: the key store does not open: {e}"));
    if !reopen(cx, 0, ks).await {
        return;
    }
    if cx.step("replay-projections") {
        let scope = Scope { tenant: Some(tenant.clone()), ..Scope::default() };
        let r = cx.devs[0].client().rebuild_projections(&scope);
        cx.check(r.is_ok(), "the projections replay from the committed encrypted events", json!({"error": r.err().map(|e| e.to_string())}));
    }

    // Validation.
    let skips = skipped(cx, 0);
    cx.check(skips.is_empty(), "no aggregate is skipped any more", json!({"skipped": skips}));
    let differs = inconsistent(cx, 0);
    cx.check(differs.is_null(), "the projections equal a replay of every event", json!({"inconsistent": differs}));
    let ok = cx.converged(0).await;
    cx.check(ok, "count and chain head equal the server's", json!({}));
    let after = own_facts(cx, 0);
    cx.recovery("device", &committed, &after, &BTreeSet::new());
}

// ---------------------------------------------------------------------------------------------
// The diagnostics export

/// Every secret the drill knows: both tenants' aggregate keys, the device's identity key, the
/// passphrases, and the plaintext of every event the server holds.
async fn known_secrets(cx: &mut Ctx, identity: Option<Key>) -> Vec<Secret> {
    let mut out = Vec::new();
    let tenants: BTreeSet<String> = cx.devs.iter().map(|d| d.tenant.clone()).collect();
    for t in &tenants {
        for (a, k) in tenant_ring(t) {
            out.extend(Secret::key(format!("aggregate key {t}/{a}"), k.as_bytes()));
        }
    }
    if let Some(k) = identity {
        out.extend(Secret::key("identity key", k.as_bytes()));
    }
    for p in [PASSPHRASE, BACKUP_PASSPHRASE] {
        out.push(Secret::plaintext("a passphrase", p.as_bytes()));
    }
    for e in cx.server_events().await {
        out.push(Secret::plaintext(format!("payload of {}", e.op_id), &e.payload));
    }
    out
}

async fn diagnostics_export(cx: &mut Ctx) {
    let tenant = cx.devs[0].tenant.clone();
    let (node, name) = (cx.devs[0].node, cx.devs[0].name.clone());
    cx.warm_up().await;
    let committed = cx.server_tenant(&tenant).await;
    // The device in trouble: replaced by a fresh one that paired without some of its keys.
    let withheld = replace_without_some_keys(cx, 0).await;
    let clock = NodeClock(node);
    let mut errors = ErrorLog::new(16);
    for s in cx.devs[0].client().incomplete().unwrap_or_default() {
        let code = if s.reason == "keys:aggregateKeyMissing" { "keys:aggregateKeyMissing" } else { "projection:incomplete" };
        errors.record(&clock, code);
    }
    let skips = skipped(cx, 0);
    let missing: BTreeSet<String> = skips.keys().cloned().collect();
    cx.symptom(missing == withheld, "the device's projections are incomplete: it needs diagnosing", json!({"skipped": skips}));
    let identity = match &cx.devs[0].client().keys().ring {
        Ring::Store(ks) => ks.identity_key().ok(),
        Ring::Fixed(_) => None,
    };
    let secrets = known_secrets(cx, identity).await;

    let mut bundle: Option<Vec<u8>> = None;
    if cx.step("export-bundle") {
        let fs = cx.files(node);
        let c = cx.devs[0].client();
        let keys = match &c.keys().ring {
            Ring::Store(ks) => Some(&**ks),
            Ring::Fixed(_) => None,
        };
        let probe = health::probe(c.db(), &clock, health::SLOW_MS_MIN);
        let sources = Sources { db: c.db(), engine: c.engine(), keys, files: Some(&fs as &dyn FileSystem), errors: &errors, event_store: probe };
        let exported = diagnostics::export(&sources, &clock).map(|b| b.to_json());
        let plaintext = c.events().ok().and_then(|es| es.iter().find_map(|e| c.open_payload(e).ok()));
        match exported {
            Ok(mut bytes) => {
                if cx.wrong("export-bundle") {
                    // Done wrong: a hand-made export that attaches the last readable event.
                    bytes.extend_from_slice(&plaintext.unwrap_or_default());
                }
                bundle = Some(bytes);
            }
            Err(e) => cx.check(false, "the bundle exports", json!({"code": e.code()})),
        }
    }
    let mut checked = false;
    if cx.step("check-bundle") {
        if let Some(b) = &bundle {
            let refs: Vec<&[u8]> = secrets.iter().map(|s| s.bytes.as_slice()).collect();
            let r = diagnostics::check_bundle(b, &refs);
            let detail = match &r {
                Ok(c) => json!({"secrets": c.secrets, "too_short": c.too_short}),
                Err(e) => json!({"code": e.code(), "message": e.to_string()}),
            };
            checked = r.is_ok();
            cx.check(checked, "the bundle passes its own check against every secret the drill knows", detail);
        }
    }
    let mut scanned = false;
    if cx.step("scan-bundle") {
        if let Some(b) = &bundle {
            let images = vec![(format!("{name}:diagnostics.json"), b.clone())];
            let line = trace::emit("drill", "drill.scan", json!({"drill": cx.drill.id, "image": format!("{name}:diagnostics.json"), "secrets": secrets.len()}));
            crate::node::observe(&cx.shared, Fact::Store(StoreFact::Scan { node: name.clone(), images, secrets: secrets.clone() }), line);
            scanned = true;
        }
    }

    // Validation.
    cx.check(
        bundle.is_some() && checked && scanned,
        "a bundle left the device only checked and scanned",
        json!({"exported": bundle.is_some(), "checked": checked, "scanned": scanned}),
    );
    let parsed: Option<Value> = bundle.as_ref().and_then(|b| serde_json::from_slice(b).ok());
    let named: BTreeSet<String> = parsed
        .as_ref()
        .and_then(|v| v["tenants"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|t| t["tenant"] == json!(tenant))
        .flat_map(|t| t["incomplete"].as_array().cloned().unwrap_or_default())
        .filter(|s| s["reason"] == "keys:aggregateKeyMissing")
        .filter_map(|s| s["aggregate"].as_str().map(String::from))
        .collect();
    cx.check(named == withheld, "the bundle names the skipped aggregates and why", json!({"named": named, "withheld": withheld}));
    let ok = cx.converged(0).await;
    cx.check(ok, "count and chain head equal the server's", json!({}));
    let rows = cx.devs[0].client().events().expect("events");
    let after: Vec<EventFact> = rows.iter().map(fact_of).collect();
    cx.recovery("device", &committed, &after, &BTreeSet::new());
}

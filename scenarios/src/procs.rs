//! The processes of the world: the server and the devices, as madsim node tasks.
//!
//! A node's task is its process: a crash kills it, a restart runs it again from the top, and it
//! recovers from whatever its disk kept. Devices take commands (the user's operations) from a
//! mailbox the world fills; what they do is recorded as trace lines and as facts for the model.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drill_model::facts::digest;
use drill_model::store::{ReadOnlyFacts, SnapshotFacts, SnapshotPair, StoreFact, WriteAttempt};
use drill_model::{EventFact, Fact, ServerSnapshot};
use drill_sim::rng::SeedTree;
use drill_sim::trace;
use drill_stack::client::{Client, DeviceKeys, ExportedState, Ring};
use drill_stack::crypto::Key;
use drill_stack::keys::{KdfParams, KeyError, KeyStore};
use drill_stack::projections::resilience::Mode;
use drill_stack::proto::SERVER_PORT;
use drill_stack::rpc::RpcClient;
use drill_stack::server::Server;
use serde_json::{json, Value};

use crate::facts::{client_snapshot, client_snapshot_after, observe_store, store_facts};
use crate::group_world::member;
use crate::node::{
    append_acked, book_attempt, event_fact, lock, next_command, observe, payload_for, record, record_at, Attempt, ClientCtx, Command, NodeClock, SharedRef,
    TenantKeys, BLOBS_AGGREGATE, DEVICE_DB, KEYS_DB, RPC_TIMEOUT_MS, SERVER_DB, SERVER_IP,
};
use crate::plan::Action;
use crate::seam::DevicePart;
use crate::store_ops::DeviceOps;
use crate::transport::FaultyTransport;

/// How often a process retries opening its database, at most, before its node is healed.
const OPEN_ATTEMPTS_MAX: u32 = 1_000;

/// Checks a device's stored state against the model right after a sync attempt (recorded at
/// `line`) that started from cursor `since`: invariants are checked continuously, not only at
/// recovery and at the end. The attempt can only have changed events after `since`, and the
/// model verified the ones up to what it saw last, so only the events after the lower of the two
/// are read and verified (the outbox is read whole); the first check of a device is whole.
fn check_now(ctx: &ClientCtx, client: &Client, line: Option<u64>, since: u64) {
    let Some(line) = line else { return };
    let through = lock(&ctx.shared).checker.verified_through(&ctx.name);
    let fact = match through {
        Some(seq) => {
            let after_seq = seq.min(since);
            client_snapshot_after(ctx, client, Some(after_seq)).map(|snapshot| Fact::ClientTail { snapshot, after_seq })
        }
        None => client_snapshot(ctx, client).map(|snapshot| Fact::ClientState { snapshot, after_recovery: false }),
    };
    if let Ok(fact) = fact {
        observe(&ctx.shared, fact, line);
    }
}

/// What no disk image may hold: every payload the plan's workload appends and every tenant's
/// aggregate keys (the subsystems add their own workload's plaintexts).
pub fn workload_secrets(plan: &crate::plan::Plan, keys: &BTreeMap<String, Arc<TenantKeys>>) -> Vec<drill_model::secrets::Secret> {
    use drill_model::secrets::Secret;
    let mut out = Vec::new();
    for (i, op) in plan.ops.iter().enumerate() {
        let id = i as u64 + 1;
        if let Action::Append { bytes, .. } = &op.action {
            out.push(Secret::plaintext(format!("payload of {} op {id}", op.client), &payload_for(&op.client, id, *bytes)));
        }
    }
    for (tenant, ks) in keys {
        for (aggregate, k) in ks.iter() {
            out.extend(Secret::key(format!("aggregate key {tenant}/{aggregate}"), k.as_bytes()));
        }
    }
    out
}

/// Every tenant's aggregate keys, drawn from the seed: one key per aggregate the plan writes to
/// (and the blob references' aggregate), handed to each device of the tenant when it pairs.
pub fn provision(plan: &crate::plan::Plan) -> BTreeMap<String, Arc<TenantKeys>> {
    let seeds = SeedTree::new(plan.seed).child("tenant-keys");
    let mut aggregates: std::collections::BTreeSet<&str> = [BLOBS_AGGREGATE].into();
    for op in &plan.ops {
        if let Action::Append { aggregate, .. } = &op.action {
            aggregates.insert(aggregate);
        }
    }
    let tenants: std::collections::BTreeSet<&str> = plan.clients.iter().map(|c| c.tenant.as_str()).collect();
    tenants
        .into_iter()
        .map(|t| {
            let mut rng = seeds.stream(t);
            let keys = aggregates.iter().map(|a| (a.to_string(), Key::generate(&mut rng))).collect();
            (t.to_string(), Arc::new(keys))
        })
        .collect()
}

/// The end-of-run audit: projections and tenants; when the device converged (it holds the
/// whole history it will ever hold) and keeps its full history, a restore of every projection
/// from its latest valid snapshot plus the tail, compared with a full replay. Returns the key
/// material the device holds, which no disk image may contain.
fn audit(ctx: &ClientCtx, c: &mut Client, converged: bool, parts: &[Box<dyn DevicePart>]) -> Vec<drill_model::secrets::Secret> {
    match store_facts(ctx, c) {
        Ok(facts) => observe_store(ctx, "projections", facts),
        Err(e) => {
            record(&ctx.shared, &ctx.name, "check.store_unreadable", json!({"message": e}), None);
        }
    }
    if converged && matches!(c.anchor(), Ok(None)) {
        match snapshot_pairs(c) {
            Ok(pairs) if !pairs.is_empty() => {
                let f = SnapshotFacts { node: ctx.name.clone(), tenant: ctx.tenant.clone(), projections: pairs };
                observe_store(ctx, "snapshot", vec![StoreFact::Snapshot(f)]);
            }
            Ok(_) => {}
            Err(e) => record(&ctx.shared, &ctx.name, "check.snapshot_unreadable", json!({"code": e.code(), "message": e.to_string()}), None),
        }
    }
    let mut secrets = Vec::new();
    if let Ring::Store(ks) = &c.keys().ring {
        if let Ok(k) = ks.identity_key() {
            secrets.extend(drill_model::secrets::Secret::key(format!("identity key of {}", ctx.name), k.as_bytes()));
        }
        if let Ok(k) = ks.vault_key() {
            secrets.extend(drill_model::secrets::Secret::key(format!("vault key of {}", ctx.name), k.as_bytes()));
        }
    }
    for p in parts {
        secrets.extend(p.secrets(ctx));
    }
    secrets
}

/// Each projection restored from its latest valid snapshot plus the tail, next to a full
/// replay of the same events; projections with no snapshot yet are left out.
fn snapshot_pairs(c: &mut Client) -> Result<Vec<SnapshotPair>, drill_stack::StoreError> {
    let mut restored = Vec::new();
    for name in c.engine().names() {
        let r = c.restore_projection(name)?;
        if r.used.is_some() {
            let incomplete = c.incomplete()?.into_iter().filter(|i| i.projection == name).map(|i| i.aggregate).collect();
            restored.push((name, c.projection_rows(name)?, incomplete));
        }
    }
    if restored.is_empty() {
        return Ok(Vec::new());
    }
    c.rebuild_projections(&drill_stack::projections::Scope::default())?;
    let incomplete = c.incomplete()?;
    let mut pairs = Vec::new();
    for (name, rows, restored_incomplete) in restored {
        pairs.push(SnapshotPair {
            name: name.to_string(),
            restored: rows,
            restored_incomplete,
            replayed: c.projection_rows(name)?,
            replayed_incomplete: incomplete.iter().filter(|i| i.projection == name).map(|i| i.aggregate.clone()).collect(),
        });
    }
    Ok(pairs)
}

/// At boot: a key store other than the one the device last ran with means it was lost and the
/// device paired again; the events it holds are what the recovery must keep readable. With every
/// key back from pairing the recovery is over at once; otherwise it ends with the operator's
/// backup restore ([`restore_keys`]).
fn key_store_recovery(ctx: &ClientCtx, client: &Client) {
    let Ring::Store(ks) = &client.keys().ring else { return };
    let id = ks.store_id().to_string();
    let replaced = lock(&ctx.key_store_id).replace(id.clone()).is_some_and(|old| old != id);
    if !replaced {
        return;
    }
    let Ok(events) = client.events() else { return };
    let committed: Vec<EventFact> = events.iter().map(|e| event_fact(e, &ctx.tenant_keys)).collect();
    record(&ctx.shared, &ctx.name, "store.key_store_replaced", json!({"events": committed.len()}), None);
    // A second loss before the first recovery was checked keeps the first base: it holds more.
    lock(&ctx.recovery_base).get_or_insert(committed);
}

/// INV-RECOVERY for a key recovery, judged at the end of a run that converged (a device drops
/// and pulls events again on hydrates and resyncs, so only then does it hold everything it
/// will): every event held when the key store was found lost is held, and opens with the
/// device's own keys to the same plaintext; events below a resync anchor are the server's
/// to hold.
fn check_key_recovery(ctx: &ClientCtx, client: &Client) {
    let Some(mut committed) = lock(&ctx.recovery_base).take() else { return };
    let restored = ctx.backup_restored.load(std::sync::atomic::Ordering::Relaxed);
    let (repairs, lost_for_good) = {
        let k = lock(&ctx.key_faults);
        (k.repairs.clone(), k.unrecoverable.clone())
    };
    let recovery = match (repairs.is_empty(), restored) {
        (true, true) => "pairing again and the operator's key backup restore and replay".to_string(),
        (true, false) => "pairing again after the key store was lost".to_string(),
        (false, heal) => format!("{}, pairing again{}", repairs.join(", then "), if heal { ", and the key backup restore and replay at the heal" } else { "" }),
    };
    if let Ok(Some((floor, _))) = client.anchor() {
        committed.retain(|e| e.seq > floor);
    }
    let Ok(events) = client.events() else { return };
    let after: Vec<EventFact> = events
        .iter()
        .map(|e| {
            let mut f = event_fact(e, &TenantKeys::new());
            f.payload = client.open_payload(e).unwrap_or_else(|_| e.payload.clone());
            f
        })
        .collect();
    // Unrecoverable: the events of aggregates whose keys the world took for good and that the
    // device does not hold (it reports them `keys:payloadsUnrecoverable`, or missing when a
    // later loss of its key store took the record with it). A key back from elsewhere makes its
    // events count again; an event gone from the device is never excused.
    let held: std::collections::BTreeSet<String> = client.keys().ring.aggregates().unwrap_or_default().into_iter().collect();
    let still_lost: std::collections::BTreeSet<String> = lost_for_good.iter().filter(|a| !held.contains(*a)).cloned().collect();
    let unrecoverable: std::collections::BTreeSet<String> = events.iter().filter(|e| still_lost.contains(&e.aggregate)).map(|e| e.op_id.clone()).collect();
    let detail = json!({"recovery": recovery, "unrecoverable": unrecoverable.len(), "lost_aggregates": still_lost});
    let fact = Fact::Recovered { node: ctx.name.clone(), recovery, committed, after, unrecoverable };
    record(&ctx.shared, &ctx.name, "check.recovery", detail, Some(fact));
}

/// The passphrase the operator keeps the device's key backup under.
fn backup_passphrase(ctx: &ClientCtx) -> String {
    format!("backup passphrase of {}", ctx.name)
}

/// The operator restores the device's key backup into its key store and replays the
/// projections; the model checks them right after, as a rebuild with every key back.
fn restore_keys(ctx: &ClientCtx, client: &mut Client, start: u64) {
    let name = ctx.name.as_str();
    let Some(backup) = lock(&ctx.backup).clone() else { return };
    let mut rng = ctx.seeds.child(&format!("device/{name}/start-{start}/restore-{}", trace::line_count())).stream("keys");
    let imported = match &mut client.keys_mut().ring {
        Ring::Store(ks) => ks.import_backup(&backup, &backup_passphrase(ctx), &mut rng).map_err(|e| (e.code(), e.to_string())),
        Ring::Fixed(_) => return,
    };
    match imported {
        Ok(r) => {
            lock(&ctx.withheld).clear();
            record(&ctx.shared, name, "store.keys_restored", json!({"added": r.added, "conflicting": r.conflicting}), None);
        }
        Err((code, message)) => return record(&ctx.shared, name, "op.err", json!({"action": "restore_keys", "code": code, "message": message}), None),
    }
    ctx.backup_restored.store(true, std::sync::atomic::Ordering::Relaxed);
    let scope = drill_stack::projections::Scope { tenant: Some(ctx.tenant.clone()), ..Default::default() };
    match client.rebuild_projections(&scope) {
        Ok(_) => match store_facts(ctx, client) {
            Ok(mut facts) => {
                for f in &mut facts {
                    if let StoreFact::Projection(p) = f {
                        p.rebuilt = true;
                    }
                }
                observe_store(ctx, "keys_restored", facts)
            }
            Err(e) => record(&ctx.shared, name, "check.store_unreadable", json!({"message": e}), None),
        },
        Err(e) => record(&ctx.shared, name, "op.err", json!({"action": "rebuild", "code": e.code(), "message": e.to_string()}), None),
    }
}

/// The passphrase the device's unlock is given: the user's current one, or something else once
/// it is forgotten.
fn passphrase(ctx: &ClientCtx) -> String {
    let k = lock(&ctx.key_faults);
    let current = match k.passphrase_changes {
        0 => ctx.passphrase.clone(),
        n => format!("{} (new {n})", ctx.passphrase),
    };
    if k.passphrase_forgotten {
        format!("{current}, misremembered")
    } else {
        current
    }
}

/// What opening a device found.
enum Opened {
    /// Boxed: a client is far larger than a key error.
    Ready(Box<Client>),
    /// A key error only the operator can answer: the device refuses to work until then.
    Refused(KeyError),
}

/// Opens the device: its key store (created on first start) and its database, checked to
/// belong together (`keys::binding::bind`, before any event is decrypted), then pairing (every
/// tenant key the store lacks, but the withheld ones) and the database. A key store missing or
/// foreign to the database, or a passphrase that does not open it, is [`Opened::Refused`].
fn open_device(ctx: &ClientCtx, node: madsim::task::NodeId, start: u64, attempt: u32) -> Result<Opened, KeyError> {
    use drill_stack::keys::binding;
    let streams = ctx.seeds.child(&format!("device/{}/start-{start}/attempt-{attempt}", ctx.name));
    let mut rng = streams.stream("keys");
    let ks = match KeyStore::open(KEYS_DB) {
        Ok(mut ks) => match ks.unlock(&passphrase(ctx)) {
            Ok(()) => Some(ks),
            Err(e @ KeyError::PassphraseWrong) => return Ok(Opened::Refused(e)),
            Err(e) => return Err(e),
        },
        Err(KeyError::KeyStoreUninitialized) => None,
        Err(e) => return Err(e),
    };
    let db = drill_stack::store::open(DEVICE_DB)?;
    let mut ks = match (binding::bind(&db, ks.as_ref(), &mut rng), ks) {
        (Ok(_), Some(ks)) => ks,
        // No key store and a database never bound: the device's first start.
        (Ok(_), None) => {
            let ks = KeyStore::create(KEYS_DB, &passphrase(ctx), KdfParams::sim(), &mut rng)?;
            binding::bind(&db, Some(&ks), &mut rng)?;
            ks
        }
        (Err(e @ KeyError::HalfRestore(_)), _) => return Ok(Opened::Refused(e)),
        (Err(e), _) => return Err(e),
    };
    drop(db);
    let withheld = lock(&ctx.withheld).clone();
    for (aggregate, key) in ctx.tenant_keys.iter() {
        if !withheld.contains(aggregate) && ks.aggregate_key(aggregate).is_err() {
            ks.import_aggregate_key(aggregate, key, &mut rng)?;
        }
    }
    {
        let mut backup = lock(&ctx.backup);
        if backup.is_none() {
            *backup = Some(ks.export_backup(&backup_passphrase(ctx), KdfParams::sim(), &mut rng)?);
        }
    }
    let backed_up = lock(&ctx.key_faults).store_backup.as_ref().is_some_and(|(id, _)| id == ks.store_id());
    if !backed_up {
        let b = ks.export_backup(&backup_passphrase(ctx), KdfParams::sim(), &mut rng)?;
        lock(&ctx.key_faults).store_backup = Some((ks.store_id().to_string(), b));
    }
    let keys = DeviceKeys::new(Ring::Store(Box::new(ks)), Box::new(streams.stream("nonces")));
    let mut client = Client::open(DEVICE_DB, &ctx.name, &ctx.tenant, Box::new(NodeClock(node)), keys)?;
    client.plant(lock(&ctx.shared).mutations.on(&ctx.name));
    Ok(Opened::Ready(Box::new(client)))
}

/// A key error found when the device opened: it records the typed error, sets aside the events
/// it holds for the recovery check, and refuses every command with the error until the
/// operator's repair succeeds. It never works half: no write, no sync, no read of its store.
async fn refuse_until_repaired(ctx: &ClientCtx, start: u64, e: KeyError) {
    let name = ctx.name.as_str();
    let code = e.code();
    if matches!(e, KeyError::HalfRestore(_)) {
        ctx.parts.get::<DeviceOps>().count("keys.half_restore");
    }
    record(&ctx.shared, name, "node.keys_refused", json!({"code": code, "message": e.to_string()}), None);
    recovery_base_from_disk(ctx);
    loop {
        match next_command(&ctx.mailbox).await {
            Command::RepairKeys => match repair_keys(ctx, start, &e) {
                Ok(done) => return record(&ctx.shared, name, "store.keys_repaired", json!({"repair": done, "after": code}), None),
                Err(err) => record(&ctx.shared, name, "op.err", json!({"action": "repair_keys", "code": err.code(), "message": err.to_string()}), None),
            },
            Command::Snapshot => lock(&ctx.mailbox).snapshot = Some(Err(format!("refuses to work until its keys are repaired: {code}"))),
            Command::Audit { .. } => lock(&ctx.mailbox).audit = Some(Vec::new()),
            Command::Op { id, .. } => record(&ctx.shared, name, "op.err", json!({"op": id, "code": code, "message": format!("refused: {e}")}), None),
            other => record(&ctx.shared, name, "op.skipped", json!({"code": code, "command": format!("{other:?}")}), None),
        }
    }
}

/// The events the device's database holds when a key fault is found, read without keys: what
/// the recovery must keep (a second fault before the first recovery was checked keeps the
/// first base).
fn recovery_base_from_disk(ctx: &ClientCtx) {
    let Ok(db) = drill_stack::store::open(DEVICE_DB) else { return };
    let Ok(events) = drill_stack::store::all_events(&db) else { return };
    let committed: Vec<EventFact> = events.iter().map(|e| event_fact(e, &ctx.tenant_keys)).collect();
    lock(&ctx.recovery_base).get_or_insert(committed);
}

/// The operator's answer to a key error the device reported (runbook 002, "Backup and Recovery
/// Guidance"; runbook 000, "Key loss"): a key store gone is restored from the key backup when
/// the operator has it at hand, else declared lost and replaced; a forgotten passphrase with no
/// backup is declared lost. Returns what was done.
fn repair_keys(ctx: &ClientCtx, start: u64, e: &KeyError) -> Result<&'static str, KeyError> {
    use drill_stack::keys::Half;
    let mut rng = ctx.seeds.child(&format!("device/{}/start-{start}/repair-{}", ctx.name, trace::line_count())).stream("keys");
    let (restore_now, forgotten, changes) = {
        let k = lock(&ctx.key_faults);
        (k.restore_now, k.passphrase_forgotten, k.passphrase_changes)
    };
    let done = match e {
        KeyError::PassphraseWrong if forgotten => {
            let new = format!("{} (new {})", ctx.passphrase, changes + 1);
            drop(KeyStore::declare_passphrase_lost(KEYS_DB, &new, KdfParams::sim(), &mut rng)?);
            let mut k = lock(&ctx.key_faults);
            k.passphrase_changes = changes + 1;
            k.passphrase_forgotten = false;
            // There is no backup: keys this device was still waiting to get back from one (an
            // earlier loss of aggregate keys) are gone for good with it.
            k.unrecoverable.extend(lock(&ctx.withheld).iter().cloned());
            // The operator takes a backup of the new store once it paired again.
            *lock(&ctx.backup) = None;
            "passphrase declared lost"
        }
        KeyError::HalfRestore(Half::KeyStoreMissing { expected_store_id }) => {
            let backup = lock(&ctx.key_faults).store_backup.clone().filter(|(id, _)| restore_now && id == expected_store_id);
            match backup {
                Some((_, b)) => {
                    drop(KeyStore::restore_backup(KEYS_DB, &b, &backup_passphrase(ctx), &passphrase(ctx), KdfParams::sim(), &mut rng)?);
                    "key store restored from the key backup"
                }
                None => {
                    drop(KeyStore::replace_lost(KEYS_DB, expected_store_id, &passphrase(ctx), KdfParams::sim(), &mut rng)?);
                    "key store declared lost and replaced"
                }
            }
        }
        other => return Err(other.clone()),
    };
    lock(&ctx.key_faults).repairs.push(done);
    Ok(done)
}

/// Names, with their typed error, the aggregates whose payloads the device can never open
/// again (a passphrase declared lost with no backup): everything else keeps working.
fn report_unrecoverable(ctx: &ClientCtx, client: &Client) {
    let Ring::Store(ks) = &client.keys().ring else { return };
    let Ok(lost) = ks.lost_aggregates() else { return };
    let errors: Vec<Value> = lost.iter().filter_map(|a| ks.aggregate_key(a).err()).map(|e| json!({"code": e.code(), "message": e.to_string()})).collect();
    if !errors.is_empty() {
        record(&ctx.shared, &ctx.name, "store.payloads_unrecoverable", json!({"aggregates": lost, "errors": errors}), None);
    }
}

/// Opens a store, retrying while the disk refuses (an I/O fault window, a full disk).
async fn open_with_retry<T, E: std::fmt::Display + HasCode>(shared: &SharedRef, node: &str, open: impl Fn() -> Result<T, E>) -> Option<T> {
    for attempt in 1..=OPEN_ATTEMPTS_MAX {
        match open() {
            Ok(v) => return Some(v),
            Err(e) => {
                record(shared, node, "node.open_failed", json!({"attempt": attempt, "code": e.code(), "message": e.to_string()}), None);
                madsim::time::sleep(Duration::from_millis(50 * u64::from(attempt.min(20)))).await;
            }
        }
    }
    None
}

/// Errors with a stable code.
pub trait HasCode {
    fn code(&self) -> String;
}

impl HasCode for KeyError {
    fn code(&self) -> String {
        KeyError::code(self).to_string()
    }
}

impl HasCode for drill_stack::StoreError {
    fn code(&self) -> String {
        drill_stack::StoreError::code(self).to_string()
    }
}

/// A device's process: recover from disk, report what survived, then serve the user.
pub async fn client_main(ctx: Arc<ClientCtx>) {
    let node = madsim::plugin::node();
    let name = ctx.name.as_str();
    let start = {
        let mut s = lock(&ctx.starts);
        *s += 1;
        *s
    };
    lock(member(&ctx)).reset();
    let attempt = std::cell::Cell::new(0u32);
    let mut client = loop {
        let opened = open_with_retry(&ctx.shared, name, || {
            attempt.set(attempt.get() + 1);
            open_device(&ctx, node, start, attempt.get())
        })
        .await;
        match opened {
            Some(Opened::Ready(c)) => break *c,
            Some(Opened::Refused(e)) => refuse_until_repaired(&ctx, start, e).await,
            None => return,
        }
    };
    key_store_recovery(&ctx, &client);
    report_unrecoverable(&ctx, &client);
    client.set_pairing(ctx.pairing.clone());
    // Derived state catches up with whatever the disk kept.
    if let Err(e) = client.project() {
        record(&ctx.shared, name, "node.projection_behind", json!({"code": e.code(), "message": e.to_string()}), None);
    }
    // The store's own work resumes before the model reads the store (runbook 000: on start).
    let mut parts = crate::subsystems::device_parts(&ctx, &mut client, start).await;
    match client_snapshot(&ctx, &client) {
        Ok(s) => {
            let detail = json!({"boots": client.boots(), "pending": s.outbox.len(), "events": s.events.len()});
            record(&ctx.shared, name, "node.recovered", detail, Some(Fact::ClientState { snapshot: s, after_recovery: true }));
        }
        Err(e) => record(&ctx.shared, name, "node.snapshot_failed", json!({"message": e}), None),
    }
    match store_facts(&ctx, &client) {
        Ok(facts) => observe_store(&ctx, "recovery", facts),
        Err(e) => record(&ctx.shared, name, "check.store_unreadable", json!({"message": e}), None),
    }
    let server = SocketAddr::new(SERVER_IP, SERVER_PORT);
    let mut rpc = match RpcClient::bind(server, client.boots(), Duration::from_millis(RPC_TIMEOUT_MS)).await {
        Ok(r) => r.with_version(ctx.protocol_version).with_filter(Box::new(FaultyTransport(ctx.transport.clone()))),
        Err(e) => return record(&ctx.shared, name, "node.bind_failed", json!({"message": e.to_string()}), None),
    };
    for p in &mut parts {
        p.bound(&ctx, &mut client);
    }
    // A READ_ONLY period in progress (the mode persists across restarts: a device that boots
    // in READ_ONLY starts a period at boot).
    let mut read_only = match client.mode() {
        Ok(Mode::ReadOnly) => Some(read_only_period(&ctx, &client)),
        _ => None,
    };
    // The last state a sync attempt succeeded from: what a hydrate restarts from.
    let mut last_good: Option<ExportedState> = None;
    loop {
        match next_command(&ctx.mailbox).await {
            Command::Op { id, action: Action::Append { aggregate, kind, bytes } } => {
                let payload = payload_for(name, id, bytes);
                let detail = json!({"op": id, "action": "append", "aggregate": aggregate, "kind": kind, "payload": digest(&payload)});
                record(&ctx.shared, name, "op.start", detail, Some(Fact::AppendStarted { node: name.into(), payload: payload.clone() }));
                let result = match client.append(&aggregate, &kind, &payload) {
                    Ok((w, op_id)) => {
                        let fact = append_acked(name, &client, w, &op_id);
                        record(&ctx.shared, name, "op.ok", json!({"op": id, "write_id": w, "op_id": op_id}), Some(fact));
                        Ok(())
                    }
                    Err(e) => {
                        record(
                            &ctx.shared,
                            name,
                            "op.err",
                            json!({"op": id, "code": e.code(), "message": e.to_string()}),
                            Some(Fact::AppendFailed { node: name.into() }),
                        );
                        Err(e.code().to_string())
                    }
                };
                attempted(&mut read_only, "append", result);
            }
            Command::Op { id, action: Action::Sync } => {
                let result = sync_op(&ctx, &mut client, &mut rpc, id, &mut last_good).await;
                let snapshot_due = matches!(result, Ok(true));
                let synced = result.is_ok();
                attempted(&mut read_only, "sync", result.map(|_| ()));
                for p in &mut parts {
                    p.after_sync(&ctx, &mut client, synced).await;
                }
                if snapshot_due {
                    // No snapshot may hold a corrupt row: the projections are verified first.
                    parts.iter_mut().for_each(|p| p.before_snapshot(&ctx, &mut client));
                    match client.snapshot_projections() {
                        Ok(ids) => parts.iter_mut().for_each(|p| p.after_snapshot(&client, &ids)),
                        Err(e) => record(&ctx.shared, name, "op.snapshot_refused", json!({"op": id, "code": e.code(), "message": e.to_string()}), None),
                    }
                }
                parts.iter_mut().for_each(|p| p.after_round(&ctx, &mut client, synced));
            }
            Command::Op { id, action: Action::Hydrate { malformed } } => {
                let result = hydrate_op(&ctx, &mut client, last_good.as_ref(), id, malformed);
                attempted(&mut read_only, "hydrate", result);
            }
            Command::Op { id, action: Action::ForceSync } => {
                record(&ctx.shared, name, "op.start", json!({"op": id, "action": "force_sync"}), None);
                let result = match client.force_resync() {
                    Ok(()) => {
                        last_good = None;
                        record(&ctx.shared, name, "op.ok", json!({"op": id}), None);
                        Ok(())
                    }
                    Err(e) => {
                        record(&ctx.shared, name, "op.err", json!({"op": id, "code": e.code(), "message": e.to_string()}), None);
                        Err(e.code().to_string())
                    }
                };
                attempted(&mut read_only, "force_sync", result);
            }
            Command::SetReadOnly(on) => set_read_only(&ctx, &client, &mut read_only, on),
            Command::RestoreKeys => restore_keys(&ctx, &mut client, start),
            Command::RepairKeys => {}
            Command::Op { id, action: a @ (Action::StageBlob { .. } | Action::AttachBlob | Action::ReadBlob { .. }) } => {
                for p in &mut parts {
                    if let Some(run) = p.user_op(&ctx, &mut client, id, &a) {
                        run.await;
                        break;
                    }
                }
            }
            Command::Store(c) => parts.iter_mut().for_each(|p| p.command(&ctx, &mut client, &c)),
            Command::Snapshot => {
                let s = client_snapshot(&ctx, &client);
                lock(&ctx.mailbox).snapshot = Some(s);
            }
            Command::Audit { converged } => {
                for p in &mut parts {
                    p.audit(&ctx, &mut client, converged).await;
                }
                if converged {
                    check_key_recovery(&ctx, &client);
                }
                let secrets = audit(&ctx, &mut client, converged, &parts);
                lock(&ctx.mailbox).audit = Some(secrets);
            }
        }
    }
}

/// One sync attempt. The model learns whether it failed closed and raised exactly the
/// signature of any transport fault injected into it. A success becomes the last known-good
/// state; a full resync makes every earlier one stale.
/// Returns, when the attempt succeeded, whether the device's history crossed a multiple of
/// [`SNAPSHOT_EVERY`] events: its projections are due for a snapshot.
async fn sync_op(ctx: &ClientCtx, client: &mut Client, rpc: &mut RpcClient, id: u64, last_good: &mut Option<ExportedState>) -> Result<bool, String> {
    let name = ctx.name.as_str();
    let before = match client.export_state() {
        Ok(s) => s,
        Err(e) => {
            record(&ctx.shared, name, "op.err", json!({"op": id, "action": "sync", "code": e.code(), "message": e.to_string()}), None);
            return Err(e.code().to_string());
        }
    };
    lock(&ctx.transport).begin(before.clone(), rpc.version() >= 2);
    record(&ctx.shared, name, "op.start", json!({"op": id, "action": "sync"}), None);
    let result = client.sync(rpc).await;
    let expected = lock(&ctx.transport).expected().map(String::from);
    match result {
        Ok(r) => {
            if !r.pushed.is_empty() {
                let fact = Fact::PushAcked { node: name.into(), op_ids: r.pushed.clone() };
                record(&ctx.shared, name, "op.pushed", json!({"op": id, "ops": r.pushed.len(), "renumbered": r.renumbered}), Some(fact));
            }
            let detail = json!({"op": id, "pulled": r.pulled, "pages": r.pages, "settled": r.settled});
            let line = record_at(&ctx.shared, name, "op.ok", detail, Some(Fact::SyncSucceeded { node: name.into(), expected }));
            book_attempt(&ctx.shared, name, Attempt::Synced, line);
            check_now(ctx, client, line, before.cursor);
            let mut snapshot_due = false;
            if let Ok(s) = client.export_state() {
                // Every SNAPSHOT_EVERY events of history the projections are snapshotted (a
                // snapshot is refused while aggregates are skipped; the next one will do).
                snapshot_due = s.cursor / SNAPSHOT_EVERY > before.cursor / SNAPSHOT_EVERY;
                *last_good = Some(s);
            }
            Ok(snapshot_due)
        }
        Err(e) => {
            let code = e.code();
            failed_closed(ctx, client, id, &e, expected, &before);
            if let drill_stack::SyncError::ResyncRequired { floor_seq, floor_hash } = &e {
                // The explicit recovery path the protocol defines for a device behind retention.
                match client.full_resync(*floor_seq, floor_hash) {
                    Ok(()) => {
                        *last_good = None;
                        record(&ctx.shared, name, "op.resync", json!({"op": id, "floor": floor_seq}), None)
                    }
                    Err(e) => record(&ctx.shared, name, "op.err", json!({"op": id, "action": "resync", "code": e.code(), "message": e.to_string()}), None),
                }
            }
            Err(code)
        }
    }
}

/// Events of history between two snapshots of a device's projections.
pub const SNAPSHOT_EVERY: u64 = 16;

/// A digest of what commands write to a device's database: events, outbox, snapshots and meta
/// (but the mode itself); not the derived projection tables, which a recovery may rebuild.
pub fn content_digest(client: &Client) -> Option<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let queries = [
        "SELECT seq || ':' || op_id || ':' || hex(hash) FROM events ORDER BY seq",
        "SELECT write_id || ':' || op_id || ':' || hex(payload) FROM outbox ORDER BY write_id",
        "SELECT id || ':' || checksum FROM proj_snapshots ORDER BY id",
        "SELECT key || '=' || value FROM meta WHERE key NOT LIKE 'resilience/%' ORDER BY key",
    ];
    for q in queries {
        let mut st = client.db().prepare(q).ok()?;
        let rows = st.query_map([], |r| r.get::<_, String>(0)).ok()?;
        for r in rows {
            h.update(r.ok()?.as_bytes());
            h.update(b"\n");
        }
        h.update(b"--\n");
    }
    Some(hex::encode(h.finalize()))
}

/// A READ_ONLY period starting now.
fn read_only_period(ctx: &ClientCtx, client: &Client) -> ReadOnlyFacts {
    ReadOnlyFacts { node: ctx.name.clone(), attempts: Vec::new(), storage_before: content_digest(client), storage_after: None }
}

/// Notes a write tried during a READ_ONLY period.
fn attempted(period: &mut Option<ReadOnlyFacts>, what: &str, result: Result<(), String>) {
    if let Some(p) = period {
        let line = trace::line_count();
        p.attempts.push(WriteAttempt { what: what.into(), line, recovery: false, ok: result.is_ok(), code: result.err() });
    }
}

/// The operator switches the device to READ_ONLY or back; leaving READ_ONLY hands the period
/// to the model.
fn set_read_only(ctx: &ClientCtx, client: &Client, period: &mut Option<ReadOnlyFacts>, on: bool) {
    let name = ctx.name.as_str();
    let mode = if on { Mode::ReadOnly } else { Mode::Normal };
    if let Err(e) = client.set_mode(mode, &[]) {
        return record(&ctx.shared, name, "op.err", json!({"action": "set_mode", "mode": mode.as_str(), "code": e.code(), "message": e.to_string()}), None);
    }
    record(&ctx.shared, name, "store.mode", json!({"mode": mode.as_str()}), None);
    match (on, period.take()) {
        (true, None) => *period = Some(read_only_period(ctx, client)),
        (true, Some(p)) => *period = Some(p),
        (false, Some(mut p)) => {
            p.storage_after = content_digest(client);
            observe_store(ctx, "read_only", vec![StoreFact::ReadOnly(p)]);
        }
        (false, None) => {}
    }
}

/// Records a failed attempt with the state before and after it, for INV-FAIL-CLOSED and
/// INV-GUARDRAIL.
fn failed_closed(ctx: &ClientCtx, client: &Client, id: u64, e: &drill_stack::SyncError, expected: Option<String>, before: &ExportedState) {
    let name = ctx.name.as_str();
    let detail = json!({"op": id, "code": e.code(), "signature": e.signature(), "expected": expected, "message": e.to_string()});
    match client.export_state() {
        Ok(after) => {
            let fact = Fact::SyncFailed {
                node: name.into(),
                code: e.code(),
                signature: e.signature(),
                expected,
                state_before: before.to_json(),
                state_after: after.to_json(),
            };
            let line = record_at(&ctx.shared, name, "op.err", detail, Some(fact));
            book_attempt(&ctx.shared, name, Attempt::Failed { signature: e.signature() }, line);
            check_now(ctx, client, line, before.cursor);
        }
        // The disk refused the read: there is nothing to compare, and nothing is claimed.
        Err(_) => {
            let line = record_at(&ctx.shared, name, "op.err", detail, None);
            book_attempt(&ctx.shared, name, Attempt::Failed { signature: e.signature() }, line);
        }
    }
}

/// Restarts sync from the last known-good state, or offers a malformed one that must be
/// refused without changing anything.
fn hydrate_op(ctx: &ClientCtx, client: &mut Client, last_good: Option<&ExportedState>, id: u64, malformed: bool) -> Result<(), String> {
    let name = ctx.name.as_str();
    let before = client.export_state().map_err(|e| e.code().to_string())?;
    let mut state = last_good.cloned().unwrap_or_else(|| before.clone());
    let expected = if malformed {
        state.last_reconciled_write_ids.insert(state.replica.clone(), 0);
        Some("hydrate:hydrateGuardrailViolation".to_string())
    } else {
        None
    };
    record(&ctx.shared, name, "op.start", json!({"op": id, "action": "hydrate", "malformed": malformed, "cursor": state.cursor}), None);
    match client.hydrate(&state) {
        Ok(()) => {
            let line = record_at(&ctx.shared, name, "op.ok", json!({"op": id}), Some(Fact::SyncSucceeded { node: name.into(), expected }));
            book_attempt(&ctx.shared, name, Attempt::Hydrated { malformed }, line);
            Ok(())
        }
        Err(e) => {
            failed_closed(ctx, client, id, &e, expected, &before);
            Err(e.code())
        }
    }
}

/// What the server's process needs: the slot its store lives in (so the world can read it back
/// on the server's node), and the model.
pub struct ServerCtx {
    pub options: drill_stack::server::ServerOptions,
    /// Every tenant's aggregate keys: the server never has them; the world opens what the
    /// server stores for the model.
    pub tenant_keys: Arc<BTreeMap<String, Arc<TenantKeys>>>,
    pub slot: Arc<Mutex<Option<Server>>>,
    /// The token service: every start issues under a new key.
    pub tokens: Arc<crate::tokens::Tokens>,
    pub shared: SharedRef,
}

/// The server's events as the model sees them.
pub fn server_snapshot(s: &Server, keys: &BTreeMap<String, Arc<TenantKeys>>) -> Result<ServerSnapshot, String> {
    let events = s.events().map_err(|e| e.to_string())?;
    let none = TenantKeys::new();
    let pruned = s
        .tombstones()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|t| drill_model::facts::PrunedFact { tenant: t.tenant, replica: t.replica, op_id: t.op_id, seq: t.seq, payload_sha256: t.payload_sha256 })
        .collect();
    let anchors = s.anchors().map_err(|e| e.to_string())?;
    let events = events.iter().map(|e| event_fact(e, keys.get(&e.tenant).map(|k| &**k).unwrap_or(&none))).collect();
    Ok(ServerSnapshot { node: "server".into(), events, pruned, anchors })
}

/// Creates a world's server node (every world has one, named `server`, at [`SERVER_IP`]): its
/// process is [`server_main`], run anew at every boot.
pub fn server_node(handle: &madsim::runtime::Handle, ctx: ServerCtx) -> madsim::runtime::NodeHandle {
    let ctx = Arc::new(ctx);
    handle.create_node().name("server").ip(SERVER_IP).init(move || server_main(ctx.clone())).build()
}

/// The server's process: recover, report what survived, then answer requests.
pub async fn server_main(ctx: Arc<ServerCtx>) {
    let Some(server) = open_with_retry(&ctx.shared, "server", || Server::open_with(SERVER_DB, ctx.options)).await else { return };
    let mut server = server.with_tokens(ctx.tokens.service(madsim::plugin::node()));
    server.plant(lock(&ctx.shared).mutations.on("server"));
    match server_snapshot(&server, &ctx.tenant_keys) {
        Ok(s) => {
            let detail = json!({"events": s.events.len()});
            record(&ctx.shared, "server", "node.recovered", detail, Some(Fact::ServerState { snapshot: s }));
        }
        Err(e) => record(&ctx.shared, "server", "node.snapshot_failed", json!({"message": e}), None),
    }
    *lock(&ctx.slot) = Some(server);
    let ep = match madsim::net::Endpoint::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), SERVER_PORT)).await {
        Ok(ep) => ep,
        Err(e) => return record(&ctx.shared, "server", "node.bind_failed", json!({"message": e.to_string()}), None),
    };
    let shared = ctx.shared.clone();
    let slot = ctx.slot.clone();
    let blobs = crate::blobs_world::server_blobs(&ctx.slot, &ctx.shared);
    let _ = drill_stack::blobs::serve::serve_with_blobs(
        ep,
        move |token, req| {
            let resp = match lock(&slot).as_mut() {
                Some(s) => s.handle_with_token(token.as_deref(), req.clone()),
                None => drill_stack::proto::Response::error("unavailable", "server store is closed"),
            };
            trace_request(&shared, &req, &resp);
            resp
        },
        blobs,
    )
    .await;
}

fn trace_request(shared: &SharedRef, req: &drill_stack::proto::Request, resp: &drill_stack::proto::Response) {
    use drill_stack::proto::{Request, Response};
    let outcome = match resp {
        Response::Error { code, .. } => json!({"error": code}),
        Response::RetryLater { code, .. } => json!({"retry_later": code}),
        Response::Rewound { held } => json!({"rewound": held.as_ref().map(|h| h.seq)}),
        Response::ResyncRequired { floor_seq, .. } => json!({"resync_required": floor_seq}),
        Response::Blob(_) => json!({"blob": "answered"}),
        Response::Token { .. } => json!({"token": "issued"}),
        Response::Keys(_) => json!({"keys": "answered"}),
        Response::Pushed { accepted, .. } => json!({"accepted": accepted.len()}),
        Response::Page { items, has_more, next_cursor, .. } => json!({"items": items.len(), "has_more": has_more, "next_cursor": next_cursor}),
    };
    let detail = match req {
        Request::Push { replica, writes, .. } => json!({"from": replica, "op": "push", "writes": writes.len(), "result": outcome}),
        Request::Pull { replica, since, .. } => json!({"from": replica, "op": "pull", "since": since, "result": outcome}),
        Request::Blob(_) => json!({"op": "blob", "result": outcome}),
        Request::Token { replica, .. } => json!({"from": replica, "op": "token", "result": outcome}),
        Request::Keys(k) => json!({"op": "keys", "request": k.name(), "result": outcome}),
    };
    if let Response::Error { code, .. } = resp {
        if let Some(kind) = code.strip_prefix("keys:token") {
            let counted = match kind {
                "Expired" => "token.expired",
                "Invalid" => "token.invalid",
                _ => "token.identity_mismatch",
            };
            *lock(shared).counts.entry(counted.into()).or_default() += 1;
        }
    }
    record(shared, "server", "net.request", detail, None);
}

//! Runbook 002 (operations): "Token Invalid or Expired", "Missing Group Key (GSK)", "Vault Key
//! Unavailable", and "Backup and Recovery Guidance".
//!
//! - `002-token-invalid-or-expired`. The failure: the server restarts (its token issuer key
//!   changes, so every token out there is invalid) while a proxy in front of its token endpoint
//!   answers with something that is not a token. The symptoms: sync attempt after attempt fails
//!   with `keys:tokenInvalid` — the reconnect loop. The recovery: probe the token endpoint and
//!   its answer's format (and take the broken proxy out), force the refresh path by
//!   reconnecting, check the identity bound in the token's payload, and confirm the key store
//!   saved the refreshed token. Checked: the device converges and lost nothing (INV-RECOVERY).
//! - `002-missing-group-key`. The failure: the room's authority moves the group key to a new
//!   epoch, and a member's handshake never carried the new epoch's key. The symptoms: the
//!   member cannot decrypt the packets under it; its buffer of waiting packets grows to its
//!   limit and overflows (`keys:groupBufferOverflow`). The recovery: check which epoch keys each
//!   side holds, request the key from the authority (sealed under the epoch both hold), check
//!   the epoch update reached the member's key store, replay the buffered packets, and reconnect
//!   to the room to read again what the full buffer dropped, comparing what was delivered with
//!   what was sent. Checked by the model: INV-GROUP (every packet delivered unchanged, every
//!   epoch key held).
//! - `002-vault-key-unavailable`. The failure: a member's key store is lost with no backup at
//!   hand (the operator declares it lost and pairs a replacement) while the room's authority is
//!   offline. The symptoms: the vault does not open (`keys:vaultKeyMissing`), and the member's
//!   request for the key goes unanswered. The recovery: check the vault was initialized before
//!   (the database says so), request the key from peers (the authority, back, answers with a
//!   share sealed under the room's group key), check that generation is refused here (the vault
//!   was initialized: `keys:vaultKeyRegenerationRefused`), and recover the key from the share.
//!   Checked: the member holds the authority's vault key again, and the model's INV-NO-REGEN.
//! - `002-backup-needs-both-files`. The failure: a device's disk is lost and the operator
//!   restores only its database from the manual backup. The symptom: opening the pair reports
//!   the half restore (`keys:halfRestoreKeyStoreMissing`) instead of working without keys. The
//!   recovery: restore the key store from the same backup, verify the two are paired again,
//!   verify every payload decrypts, sync and converge. Checked: INV-RECOVERY.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;

use drill_model::group::{GroupFacts, SentPacket};
use drill_model::store::StoreFact;
use drill_model::Fact;
use drill_sim::disk::DiskSim;
use drill_stack::client::Ring;
use drill_stack::crypto::{self, Key};
use drill_stack::fs::FileSystem;
use drill_stack::keys::group::{GroupPacket, GroupSession, Received};
use drill_stack::keys::token;
use drill_stack::keys::vault::{self, Role};
use drill_stack::keys::{binding, KdfParams, KeyError, KeyStore};
use serde_json::json;

use super::d000_keys::{all_aggregates, close, key_store, open_keyed, own_facts, PASSPHRASE};
use super::harness::Ctx;
use super::Drill;
use crate::group_world::Inbox;
use crate::node::{DEVICE_DB, KEYS_DB};
use crate::plan::transport::TransportFaultKind;

pub const DRILLS: &[Drill] = &[
    Drill {
        id: "002-token-invalid-or-expired",
        section: "002 Token Invalid or Expired",
        title: "tokens refused in a reconnect loop: probe the token endpoint, reconnect to refresh, check the identity bound, confirm the saved token",
        steps: &["verify-token-endpoint", "force-refresh-by-reconnect", "verify-identity-bound", "confirm-saved-token"],
        devices: 3,
        server_retention: None,
        param: 0,
        bugs: super::no_bugs,
        body: token_body,
    },
    Drill {
        id: "002-missing-group-key",
        section: "002 Missing Group Key (GSK)",
        title: "packets under an epoch a member lacks: check keys, request the key, verify the epoch update, replay the buffer, reconnect and compare",
        steps: &["check-handshake-keys", "request-group-key", "verify-epoch-update", "replay-buffered", "reconnect-and-compare"],
        devices: 3,
        server_retention: None,
        param: 0,
        bugs: super::no_bugs,
        body: group_body,
    },
    Drill {
        id: "002-vault-key-unavailable",
        section: "002 Vault Key Unavailable",
        title: "a member's vault key is gone: check it was initialized, request it from peers, refuse regeneration, recover from a peer's share",
        steps: &["check-initialized", "request-from-peers", "refuse-regeneration", "recover-from-peer-share"],
        devices: 3,
        server_retention: None,
        param: 0,
        bugs: super::no_bugs,
        body: vault_body,
    },
    Drill {
        id: "002-backup-needs-both-files",
        section: "002 Backup and Recovery Guidance",
        title: "only the database restored from a backup: the half restore is reported; restore the key store too, verify pairing and decryption, converge",
        steps: &["restore-key-store", "verify-pairing", "verify-decryption", "sync-and-converge"],
        devices: 3,
        server_retention: None,
        param: 0,
        bugs: super::no_bugs,
        body: backup_body,
    },
];

fn token_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(token_drill(cx))
}

fn group_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(group_drill(cx))
}

fn vault_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(vault_drill(cx))
}

fn backup_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(backup_drill(cx))
}

/// Devices 0 and 2 share a tenant (tenants alternate).
const PEER: usize = 2;

/// Devices `ids` reopened with real key stores holding every key of their tenant.
async fn keyed(cx: &mut Ctx, ids: &[usize]) {
    for &i in ids {
        close(cx, i);
        let aggregates = all_aggregates(&cx.devs[i].tenant);
        open_keyed(cx, i, &aggregates).await;
    }
}

/// Device `i`'s key store, open in its client.
fn ks(cx: &mut Ctx, i: usize) -> &mut KeyStore {
    match &mut cx.devs[i].client().keys_mut().ring {
        Ring::Store(ks) => ks,
        Ring::Fixed(_) => panic!("device {i} was opened without a key store"),
    }
}

fn rng(cx: &Ctx, what: &str) -> drill_sim::rng::Stream {
    cx.seeds.stream(&format!("d002/{what}/{}", drill_sim::trace::line_count()))
}

// ---------------------------------------------------------------------------------------------
// Token Invalid or Expired

/// Device `i` asks for a token through its own connection (asking again when the network
/// lost the exchange).
async fn refresh(cx: &mut Ctx, i: usize) -> Result<(), drill_stack::SyncError> {
    let d = &mut cx.devs[i];
    let mut last = Ok(());
    for _ in 0..super::harness::SYNC_ATTEMPTS_MAX {
        let rpc = d.rpc.as_mut().expect("bound");
        last = d.client.as_mut().expect("open").refresh_token(rpc).await;
        if !matches!(last, Err(drill_stack::SyncError::Transport { .. })) {
            break;
        }
    }
    last
}

async fn token_drill(cx: &mut Ctx) {
    keyed(cx, &[0]).await;
    cx.warm_up().await;
    let tenant = cx.devs[0].tenant.clone();
    // The server restarts: a new issuer key. A proxy in front of its token endpoint mangles
    // the answers.
    cx.crash_and_boot("server");
    cx.transport(0, Some(TransportFaultKind::TokenEndpointMalformed));
    cx.inject("token_service_restarted_endpoint_broken", json!({"device": cx.devs[0].name}));
    let n = rand::Rng::gen_range(&mut cx.rng, 1..=3);
    cx.append(PEER, n);
    cx.sync(PEER).await.expect("the peer syncs");
    let committed = cx.server_tenant(&tenant).await;
    let mut codes = Vec::new();
    for _ in 0..3 {
        match cx.sync_through_loss(0).await {
            Err(e) => codes.push(e.code()),
            Ok(_) => break,
        }
    }
    let looping = codes.len() == 3 && codes.iter().all(|c| c.starts_with("keys:token"));
    cx.symptom(looping, "connect failures with token warnings, in a reconnect loop", json!({"codes": codes}));
    if cx.step("verify-token-endpoint") {
        let broken = refresh(cx, 0).await.err().map(|e| e.code());
        // The probe shows the answer is not a token: the proxy is taken out.
        cx.transport(0, None);
        let fixed = refresh(cx, 0).await;
        let held = cx.devs[0].client().token_state().and_then(|s| s.token().map(String::from));
        let well_formed = held.as_deref().is_some_and(|t| token::claims(t).is_ok() && t.split('.').count() == 3);
        cx.check(
            fixed.is_ok() && well_formed,
            "the token endpoint answers a well-formed token",
            json!({"before": broken, "after": fixed.err().map(|e| e.code())}),
        );
    }
    if cx.step("force-refresh-by-reconnect") {
        keyed(cx, &[0]).await;
        let r = cx.sync_through_loss(0).await;
        // Counted over the connection: an attempt the network cut short may have refreshed.
        let refreshed = cx.devs[0].client().token_state().map(|s| s.refreshes).unwrap_or(0);
        cx.check(
            r.is_ok() && refreshed >= 1,
            "the reconnect refreshed the token and the sync went through",
            json!({"refreshes": refreshed, "error": r.err().map(|e| e.code())}),
        );
    }
    if cx.step("verify-identity-bound") {
        let name = cx.devs[0].name.clone();
        let c = cx.devs[0].client();
        let identity = c.identity();
        let claims = c.token_state().and_then(|s| s.token()).map(token::claims);
        let bound = matches!(&claims, Some(Ok(k)) if k.identity == identity && k.replica == name && k.tenant == tenant);
        cx.check(bound, "the token's payload names this device's identity, replica and tenant", json!({"identity": identity}));
    }
    if cx.step("confirm-saved-token") {
        let held = cx.devs[0].client().token_state().and_then(|s| s.token().map(String::from));
        let saved = ks(cx, 0).saved_token(&tenant).ok().flatten();
        cx.check(held.is_some() && saved == held, "the key store holds the refreshed token", json!({}));
    }
    let ok = cx.converged(0).await;
    cx.check(ok, "the device's count and chain head equal the server's", json!({}));
    let after = own_facts(cx, 0);
    cx.recovery("device", &committed, &after, &BTreeSet::new());
}

// ---------------------------------------------------------------------------------------------
// Missing Group Key

/// A member's buffer of packets under unknown epochs.
const BUFFER_MAX: usize = 4;

struct Room {
    group: String,
    /// What the room carried: id, packet, SHA-256 of the plaintext.
    packets: Vec<(u64, GroupPacket, String)>,
}

impl Room {
    fn post(&mut self, epoch: u64, key: &Key, nonce: crypto::Nonce, from: &str) {
        let id = self.packets.len() as u64 + 1;
        let plain = format!("{} packet {id} from {from}", self.group).into_bytes();
        let packet = GroupPacket::seal(&self.group, epoch, key, nonce, &plain);
        self.packets.push((id, packet, drill_model::facts::sha256_hex(&plain)));
    }
}

/// A member reading the room: what its inbox took in, and the codes of what it refused.
#[derive(Default)]
struct Reader {
    inbox: Inbox,
    errors: Vec<String>,
}

impl Reader {
    fn read(&mut self, session: &mut GroupSession, packets: &[(u64, GroupPacket, String)]) {
        for (id, p, _) in packets {
            if let Err(e) = self.inbox.receive(session, *id, p.clone()) {
                self.errors.push(e.code().to_string());
            }
        }
    }
}

async fn group_drill(cx: &mut Ctx) {
    keyed(cx, &[0, PEER]).await;
    cx.warm_up().await;
    let tenant = cx.devs[0].tenant.clone();
    let committed = cx.server_tenant(&tenant).await;
    let (authority, member) = (cx.devs[0].name.clone(), cx.devs[PEER].name.clone());
    let mut room = Room { group: format!("room-{tenant}"), packets: Vec::new() };
    let group = room.group.clone();
    let (e1, e2) = (Key::generate(&mut cx.rng), Key::generate(&mut cx.rng));
    // Pairing gave both epoch 1.
    for i in [0, PEER] {
        let mut r = rng(cx, "pair");
        ks(cx, i).put_group_key(&group, 1, &e1, &mut r).expect("epoch 1 stored");
    }
    let mut session = GroupSession::load(ks(cx, PEER), &group, BUFFER_MAX).expect("the member's session");
    let mut reader = Reader::default();
    for _ in 0..2 {
        room.post(1, &e1, crypto::nonce_from(&mut cx.rng), &authority);
    }
    reader.read(&mut session, &room.packets);
    // The authority moves to epoch 2; the member's handshake does not carry its key.
    let mut r = rng(cx, "rekey");
    ks(cx, 0).put_group_key(&group, 2, &e2, &mut r).expect("epoch 2 stored");
    let extra = rand::Rng::gen_range(&mut cx.rng, 1..=3);
    for _ in 0..BUFFER_MAX + extra {
        room.post(2, &e2, crypto::nonce_from(&mut cx.rng), &authority);
    }
    cx.inject("group_rekey_without_member_key", json!({"group": group, "epoch": 2, "packets": BUFFER_MAX + extra}));
    reader.read(&mut session, &room.packets[2..]);
    let undecrypted = session.key(2).is_none() && reader.inbox.delivered.len() == 2;
    let overflow = session.buffered() == BUFFER_MAX && reader.errors.iter().any(|c| c == "keys:groupBufferOverflow");
    cx.symptom(
        undecrypted && overflow,
        "packets under the new epoch do not decrypt; the buffer grows to its limit and overflows",
        json!({"buffered": session.buffered(), "errors": reader.errors}),
    );
    if cx.step("check-handshake-keys") {
        let theirs = ks(cx, 0).group_keys(&group).map(|k| k.keys().copied().collect::<Vec<_>>()).unwrap_or_default();
        let mine = ks(cx, PEER).group_keys(&group).map(|k| k.keys().copied().collect::<Vec<_>>()).unwrap_or_default();
        cx.check(
            theirs.contains(&2) && !mine.contains(&2),
            "the member lacks the epoch key the authority sends under",
            json!({"authority": theirs, "member": mine}),
        );
    }
    let mut fetched = None;
    if cx.step("request-group-key") {
        // The authority answers the member's request with the new key, sealed under the epoch
        // both hold, and the member stores it.
        let key = ks(cx, 0).group_keys(&group).ok().and_then(|k| k.get(&2).cloned());
        if let Some(key) = key {
            let answer = GroupPacket::seal(&group, 1, &e1, crypto::nonce_from(&mut cx.rng), key.as_bytes());
            let opened = session.receive(answer).ok().and_then(|r| match r {
                Received::Delivered(b) => <[u8; 32]>::try_from(b.as_slice()).ok().map(Key::from_bytes),
                Received::Buffered { .. } => None,
            });
            if let Some(k) = &opened {
                let mut r = rng(cx, "gsk");
                let stored = ks(cx, PEER).put_group_key(&group, 2, k, &mut r);
                cx.check(stored.is_ok(), "the member stores the epoch key it was sent", json!({}));
            }
            fetched = opened;
        }
    }
    if cx.step("verify-epoch-update") {
        let held = ks(cx, PEER).group_keys(&group).map(|k| k.get(&2).cloned()).ok().flatten();
        cx.check(held.as_ref() == Some(&e2), "the member's key store holds the new epoch's key", json!({}));
    }
    if cx.step("replay-buffered") {
        if let Some(k) = fetched.clone() {
            let replayed = reader.inbox.add_key(&mut session, 2, k);
            let n = replayed.len();
            cx.check(n == BUFFER_MAX, "every buffered packet replays after the key update", json!({"replayed": n}));
        }
    }
    if cx.step("reconnect-and-compare") {
        // A new session from the key store reads the room again: what the full buffer dropped
        // comes back; delivered and sent compared packet by packet.
        let mut again = GroupSession::load(ks(cx, PEER), &group, BUFFER_MAX).expect("the member's session");
        let mut fresh = Reader::default();
        fresh.read(&mut again, &room.packets);
        for (id, sha) in fresh.inbox.delivered {
            reader.inbox.delivered.entry(id).or_insert(sha);
        }
        session = again;
        reader.inbox.waiting = fresh.inbox.waiting;
    }
    // The model judges the member (INV-GROUP).
    let held: Vec<u64> = [1, 2].into_iter().filter(|e| session.key(*e).is_some()).collect();
    let facts = GroupFacts {
        node: member.clone(),
        group: group.clone(),
        sent: room.packets.iter().map(|(id, p, sha)| SentPacket { id: *id, epoch: p.epoch, sha256: sha.clone() }).collect(),
        epochs: vec![1, 2],
        held,
        delivered: reader.inbox.delivered.clone(),
        buffered: reader.inbox.waiting.iter().map(|(id, _)| *id).collect(),
    };
    let line = drill_sim::trace::emit("drill", "check.group", json!({"drill": cx.drill.id, "delivered": facts.delivered.len(), "sent": facts.sent.len()}));
    crate::node::observe(&cx.shared, Fact::Store(StoreFact::Group(facts)), line);
    let after = own_facts(cx, PEER);
    cx.recovery("device", &committed, &after, &BTreeSet::new());
}

// ---------------------------------------------------------------------------------------------
// Vault Key Unavailable

fn vault_seen(cx: &mut Ctx, i: usize, recovered: bool) {
    let node = cx.devs[i].name.clone();
    let fingerprint = ks(cx, i).vault_key().ok().map(|k| k.fingerprint());
    crate::group_world::observe_vault(&cx.shared, &node, fingerprint, recovered);
}

/// Device `i`'s key store file is lost with no backup at hand: the operator declares it lost,
/// and the replacement pairs again (the tenant's aggregate keys; no vault key).
async fn replace_key_store(cx: &mut Ctx, i: usize) {
    let lost = ks(cx, i).store_id().to_string();
    close(cx, i);
    let node = cx.devs[i].node;
    let files = DiskSim::current().lose_files(node, KEYS_DB);
    let mut r = rng(cx, "replace");
    let replaced = cx.on(node, async move { KeyStore::replace_lost(KEYS_DB, &lost, PASSPHRASE, KdfParams::sim(), &mut r).map(|_| ()) }).await;
    cx.inject("key_store_lost_no_backup", json!({"device": cx.devs[i].name, "files": files, "replaced": replaced.is_ok()}));
    // Opened together, the database and the replacement bind: the vault marker comes over.
    let bound = pairing(cx, i).await;
    cx.check(bound.is_ok(), "the replacement key store binds with the database", json!({"error": bound.err().map(|e| e.code().to_string())}));
    let aggregates = all_aggregates(&cx.devs[i].tenant);
    let ks = key_store(cx, i, &aggregates).await;
    cx.open_with_ring(i, Ring::Store(Box::new(ks))).await.expect("the device opens with its new key store");
}

async fn vault_drill(cx: &mut Ctx) {
    keyed(cx, &[0, PEER]).await;
    cx.warm_up().await;
    let tenant = cx.devs[0].tenant.clone();
    let group = format!("room-{tenant}");
    let group_key = Key::generate(&mut cx.rng);
    // The authority initializes the vault; the member recovers it from a share.
    let mut r = rng(cx, "vault");
    let (keys, db) = cx.devs[0].client().keys_and_db();
    let Ring::Store(a) = &mut keys.ring else { panic!("keyed") };
    let authority_key = a.generate_vault_key(db, Role::Authority, &mut r).expect("the authority initializes the vault");
    vault_seen(cx, 0, false);
    let share = |cx: &mut Ctx| {
        let who = ks(cx, PEER).identity_id().to_string();
        let mut r = rng(cx, "share");
        ks(cx, 0).vault_share(&group, 1, &group_key, &who, &mut r).expect("a share")
    };
    let first = share(cx);
    let mut r = rng(cx, "recover");
    let (keys, db) = cx.devs[PEER].client().keys_and_db();
    let Ring::Store(m) = &mut keys.ring else { panic!("keyed") };
    m.recover_vault_key(db, &first, &group_key, &mut r).expect("the member recovers the vault key");
    vault_seen(cx, PEER, true);
    let committed = cx.server_tenant(&tenant).await;
    // The failure: the member's key store is lost and replaced; the authority is offline.
    replace_key_store(cx, PEER).await;
    close(cx, 0);
    let missing = ks(cx, PEER).vault_key().err().map(|e| e.code());
    vault_seen(cx, PEER, false);
    // The member asks and waits: nobody answers while the authority is away.
    madsim::time::sleep(std::time::Duration::from_millis(2_000)).await;
    cx.symptom(
        missing == Some("keys:vaultKeyMissing"),
        "the vault does not open and the request for its key times out",
        json!({"code": missing, "waited_ms": 2_000}),
    );
    if cx.step("check-initialized") {
        let db = cx.devs[PEER].client().db();
        let initialized = vault::initialized_in_db(db).unwrap_or(false);
        cx.check(initialized, "the database says the vault was initialized before: the key must come back, not be made anew", json!({}));
    }
    let mut answered = None;
    if cx.step("request-from-peers") {
        keyed(cx, &[0]).await;
        answered = Some(share(cx));
    }
    if cx.step("refuse-regeneration") {
        let mut r = rng(cx, "regen");
        let (keys, db) = cx.devs[PEER].client().keys_and_db();
        let Ring::Store(m) = &mut keys.ring else { panic!("keyed") };
        let refused = m.generate_vault_key(db, Role::Member, &mut r).err().map(|e| e.code());
        cx.check(refused == Some("keys:vaultKeyRegenerationRefused"), "generation is refused: the vault was initialized", json!({"code": refused}));
    }
    if cx.step("recover-from-peer-share") {
        let mut r = rng(cx, "recover");
        let (keys, db) = cx.devs[PEER].client().keys_and_db();
        let Ring::Store(m) = &mut keys.ring else { panic!("keyed") };
        let got = match &answered {
            Some(s) => m.recover_vault_key(db, s, &group_key, &mut r).map(|_| ()).map_err(|e| e.code()),
            None => Err("no share to recover from"),
        };
        cx.check(got.is_ok(), "the member recovers the vault key from the peer's share", json!({"error": got.err()}));
        vault_seen(cx, PEER, true);
    }
    let back = ks(cx, PEER).vault_key().ok();
    cx.check(back.as_ref() == Some(&authority_key), "the member holds the authority's vault key again", json!({}));
    let ok = cx.sync(PEER).await.is_ok() && cx.converged(PEER).await;
    cx.check(ok, "the member syncs and converges with its new key store", json!({}));
    let after = own_facts(cx, PEER);
    cx.recovery("device", &committed, &after, &BTreeSet::new());
}

// ---------------------------------------------------------------------------------------------
// Backup and Recovery Guidance

/// The files of a backup: every file of the database and the key store, with its bytes.
fn copy_files(cx: &Ctx, i: usize) -> BTreeMap<String, Vec<u8>> {
    let fs = cx.files(cx.devs[i].node);
    let mut out = BTreeMap::new();
    for base in [DEVICE_DB, KEYS_DB] {
        for f in [base.to_string(), format!("{base}-wal")] {
            if fs.exists(&f).unwrap_or(false) {
                out.insert(f.clone(), fs.read(&f).expect("a backup file reads"));
            }
        }
    }
    out
}

/// Whether device `i`'s database and key store (unlocked with the passphrase) belong together.
async fn pairing(cx: &mut Ctx, i: usize) -> Result<binding::Pairing, KeyError> {
    let node = cx.devs[i].node;
    let mut r = rng(cx, "bind");
    cx.on(node, async move {
        let db = drill_stack::store::open(DEVICE_DB).map_err(KeyError::Store)?;
        let ks = match KeyStore::open(KEYS_DB) {
            Ok(mut ks) => {
                ks.unlock(PASSPHRASE)?;
                Some(ks)
            }
            Err(KeyError::KeyStoreUninitialized) => None,
            Err(e) => return Err(e),
        };
        binding::bind(&db, ks.as_ref(), &mut r)
    })
    .await
}

async fn backup_drill(cx: &mut Ctx) {
    keyed(cx, &[0]).await;
    cx.warm_up().await;
    let tenant = cx.devs[0].tenant.clone();
    // The pair is bound, then backed up whole, closed.
    close(cx, 0);
    let bound = pairing(cx, 0).await;
    cx.check(bound.is_ok(), "the device's database and key store are paired", json!({"error": bound.err().map(|e| e.code().to_string())}));
    let backup = copy_files(cx, 0);
    keyed(cx, &[0]).await;
    let n = rand::Rng::gen_range(&mut cx.rng, 1..=3);
    cx.append(PEER, n);
    cx.sync(PEER).await.expect("the peer syncs");
    cx.sync(0).await.expect("the device syncs");
    let committed = cx.server_tenant(&tenant).await;
    // The failure: the disk is lost; the operator restores only the database.
    close(cx, 0);
    let node = cx.devs[0].node;
    let lost = [DEVICE_DB, KEYS_DB].iter().flat_map(|f| DiskSim::current().lose_files(node, f)).collect::<Vec<_>>();
    for (f, bytes) in backup.iter().filter(|(f, _)| f.starts_with(DEVICE_DB)) {
        DiskSim::current().put_file(node, f, bytes);
    }
    cx.inject("only_database_restored", json!({"device": cx.devs[0].name, "lost": lost}));
    let half = pairing(cx, 0).await.err().map(|e| e.code());
    cx.symptom(half == Some("keys:halfRestoreKeyStoreMissing"), "the half restore is reported, not run half-working", json!({"code": half}));
    if cx.step("restore-key-store") {
        for (f, bytes) in backup.iter().filter(|(f, _)| f.starts_with(KEYS_DB)) {
            DiskSim::current().put_file(node, f, bytes);
        }
    }
    let paired = if cx.step("verify-pairing") {
        let p = pairing(cx, 0).await;
        cx.check(p.is_ok(), "the database and the key store are paired again", json!({"error": p.as_ref().err().map(|e| e.code().to_string())}));
        p.is_ok()
    } else {
        false
    };
    if !paired {
        cx.check(false, "the device runs only with both halves of its backup", json!({}));
        return;
    }
    let aggregates = all_aggregates(&tenant);
    open_keyed(cx, 0, &aggregates).await;
    if cx.step("verify-decryption") {
        let c = cx.devs[0].client();
        let events = c.events().unwrap_or_default();
        let sealed = events.iter().filter(|e| c.open_payload(e).is_err()).count();
        cx.check(
            !events.is_empty() && sealed == 0,
            "every payload of the restored database decrypts",
            json!({"events": events.len(), "undecryptable": sealed}),
        );
    }
    if cx.step("sync-and-converge") {
        let ok = cx.sync(0).await.is_ok() && cx.converged(0).await;
        cx.check(ok, "the device syncs what it missed since the backup and converges", json!({}));
    }
    let after = own_facts(cx, 0);
    cx.recovery("device", &committed, &after, &BTreeSet::new());
}

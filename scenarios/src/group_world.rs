//! Group keys with epochs in the world (runbook 002, "Missing Group Key").
//!
//! Each tenant's room carries packets between its members, each sealed under an epoch of the
//! room's group key. A rekey (`keys.group_rekey`) starts a new epoch: its authority has the key
//! at once and seals under it, while the other members get it only when the room hands it out,
//! a while later — the window in which their packets arrive under an epoch they do not know.
//! A member then buffers them in its bounded buffer (`GROUP_BUFFER_MAX`; each counted as
//! `keys.group_epoch_unknown`) and replays them when its key request is answered; a packet that
//! finds the buffer full is dropped with `keys:groupBufferOverflow` (counted as
//! `keys.group_buffer_overflow`). The runbook's last step answers that: the operator reconnects
//! the member to the room, which reads every packet again with every key it now holds.
//!
//! A member keeps its epoch keys in its key store (a restart loads them; a lost key store asks
//! the room again) and its buffer in memory (a restart reads the room from its start). At the
//! end of a run that converged, the model judges each member (INV-GROUP): every packet under an
//! epoch it holds delivered, unchanged, and every epoch's key held.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use drill_model::group::{GroupFacts, SentPacket};
use drill_model::store::StoreFact;
use drill_model::Fact;
use drill_sim::rng::SeedTree;
use drill_sim::trace;
use drill_stack::client::{Client, Ring};
use drill_stack::crypto::{self, Key};
use drill_stack::keys::group::{GroupPacket, GroupSession, Received};
use drill_stack::keys::KeyError;
use serde_json::json;

use crate::node::{lock, observe, record, record_at, ClientCtx, SharedRef};
use crate::seam::{DevicePart, Hook};

/// The room of the device's tenant, one of its parts.
pub fn room(ctx: &ClientCtx) -> &VaultRoom {
    ctx.parts.get::<VaultRoom>()
}

/// The device's session with its room (group keys with epochs), in its process's memory, one
/// of its parts.
pub fn member(ctx: &ClientCtx) -> &Mutex<Member> {
    ctx.parts.get::<Mutex<Member>>()
}

/// How many packets under unknown epochs a member holds before it drops them.
pub const GROUP_BUFFER_MAX: usize = 3;
/// Packets a member sends after each sync of its own.
pub const POSTS_PER_SYNC: u64 = 2;

/// One packet the room carried.
#[derive(Debug, Clone)]
pub struct RoomPacket {
    pub id: u64,
    pub from: String,
    pub packet: GroupPacket,
    pub sha256: String,
}

/// A room's epochs and packets.
pub struct RoomEpochs {
    seeds: SeedTree,
    keys: BTreeMap<u64, Key>,
    /// Epochs whose keys the room answers key requests with (the authority holds every epoch).
    handed_out: BTreeSet<u64>,
    packets: Vec<RoomPacket>,
}

impl RoomEpochs {
    /// A room whose first epoch's key is `first`, handed to every member when it pairs.
    pub fn new(first: Key, seeds: SeedTree) -> RoomEpochs {
        RoomEpochs { seeds, keys: [(1, first)].into(), handed_out: [1].into(), packets: Vec::new() }
    }

    /// Starts a new epoch, its key not handed out yet; returns it.
    pub fn rekey(&mut self) -> u64 {
        let epoch = self.keys.keys().next_back().copied().unwrap_or(0) + 1;
        self.keys.insert(epoch, Key::generate(&mut self.seeds.stream(&format!("epoch-{epoch}"))));
        epoch
    }

    /// From now on the room answers key requests for `epoch`.
    pub fn hand_out(&mut self, epoch: u64) {
        if self.keys.contains_key(&epoch) {
            self.handed_out.insert(epoch);
        }
    }

    /// Every epoch is handed out (the heal).
    pub fn hand_out_all(&mut self) {
        self.handed_out = self.keys.keys().copied().collect();
    }

    /// Every epoch key the room ever had (for the disk scan).
    pub fn keys(&self) -> impl Iterator<Item = (&u64, &Key)> {
        self.keys.iter()
    }

    fn available(&self, authority: bool) -> Vec<(u64, Key)> {
        self.keys.iter().filter(|(e, _)| authority || self.handed_out.contains(e)).map(|(e, k)| (*e, k.clone())).collect()
    }
}

/// What a member read from its room, packet by packet (the world's members and the 002 drill
/// read through it).
#[derive(Debug, Default)]
pub struct Inbox {
    /// Delivered packets by id, with the SHA-256 of the plaintext read.
    pub delivered: BTreeMap<u64, String>,
    /// Buffered packets' ids and epochs, in the session buffer's order.
    pub waiting: Vec<(u64, u64)>,
    /// Packets a full buffer dropped.
    pub dropped: BTreeSet<u64>,
}

impl Inbox {
    /// Receives packet `id` through `session`: delivered, buffered, or dropped by a full buffer
    /// (`keys:groupBufferOverflow`), as the session answers.
    pub fn receive(&mut self, session: &mut GroupSession, id: u64, packet: GroupPacket) -> Result<Received, KeyError> {
        let epoch = packet.epoch;
        let r = session.receive(packet);
        match &r {
            Ok(Received::Delivered(pt)) => {
                self.delivered.insert(id, sha256_hex(pt));
            }
            Ok(Received::Buffered { .. }) => self.waiting.push((id, epoch)),
            Err(KeyError::GroupBufferOverflow { .. }) => {
                self.dropped.insert(id);
            }
            Err(_) => {}
        }
        r
    }

    /// Gives `session` the key of `epoch` and takes in the packets that waited for it: each
    /// replayed id, with why it did not open if it did not.
    pub fn add_key(&mut self, session: &mut GroupSession, epoch: u64, key: Key) -> Vec<(u64, Result<(), KeyError>)> {
        let replayed = session.add_epoch_key(epoch, key);
        let ids: Vec<u64> = self.waiting.iter().filter(|(_, e)| *e == epoch).map(|(id, _)| *id).collect();
        self.waiting.retain(|(_, e)| *e != epoch);
        let delivered = &mut self.delivered;
        ids.into_iter()
            .zip(replayed)
            .map(|(id, r)| {
                (
                    id,
                    r.map(|pt| {
                        delivered.insert(id, sha256_hex(&pt));
                    }),
                )
            })
            .collect()
    }
}

/// A member's session with its room: in the device process's memory.
#[derive(Default)]
pub struct Member {
    session: Option<GroupSession>,
    /// How many of the room's packets this session has read.
    cursor: usize,
    inbox: Inbox,
}

impl Member {
    /// The process (re)started: the session is gone with its memory.
    pub fn reset(&mut self) {
        *self = Member::default();
    }
}

fn sha256_hex(b: &[u8]) -> String {
    drill_model::facts::sha256_hex(b)
}

/// The device's room step, at start, after every sync and at the audit: load the session
/// (epoch keys from the key store), ask the room for every epoch key it lacks (replaying what
/// waited for it), read the room's new packets, and, with `post`, send one.
pub fn step(ctx: &ClientCtx, client: &mut Client, start: u64, post: bool) {
    let name = ctx.name.as_str();
    let room = room(ctx);
    let (keys, _) = client.keys_and_db();
    let Ring::Store(ks) = &mut keys.ring else { return };
    let mut rng = ctx.seeds.child(&format!("device/{name}/start-{start}/group-{}", trace::line_count())).stream("keys");
    let mut m = lock(member(ctx));
    if m.session.is_none() {
        match GroupSession::load(ks, &room.group, GROUP_BUFFER_MAX) {
            Ok(s) => {
                m.reset();
                m.session = Some(s);
            }
            Err(e) => return record(&ctx.shared, name, "op.err", json!({"action": "group_join", "code": e.code(), "message": e.to_string()}), None),
        }
    }
    let available = lock(&room.epochs).available(room.authority == name);
    for (epoch, key) in available {
        if m.session.as_ref().is_some_and(|s| s.key(epoch).is_some()) {
            continue;
        }
        if let Err(e) = ks.put_group_key(&room.group, epoch, &key, &mut rng) {
            record(&ctx.shared, name, "op.err", json!({"action": "group_key", "epoch": epoch, "code": e.code(), "message": e.to_string()}), None);
            continue;
        }
        let Member { session, inbox, .. } = &mut *m;
        let replayed = inbox.add_key(session.as_mut().expect("joined"), epoch, key);
        let ids: Vec<u64> = replayed.iter().map(|(id, _)| *id).collect();
        record(&ctx.shared, name, "store.group_key", json!({"epoch": epoch, "replayed": ids}), None);
        for (id, r) in replayed {
            if let Err(e) = r {
                record(
                    &ctx.shared,
                    name,
                    "op.err",
                    json!({"action": "group_replay", "packet": id, "epoch": epoch, "code": e.code(), "message": e.to_string()}),
                    None,
                );
            }
        }
    }
    let new: Vec<RoomPacket> = lock(&room.epochs).packets[m.cursor..].to_vec();
    m.cursor += new.len();
    let Member { session, inbox, .. } = &mut *m;
    let session = session.as_mut().expect("joined");
    for p in new {
        let epoch = p.packet.epoch;
        match inbox.receive(session, p.id, p.packet) {
            Ok(Received::Delivered(_)) => {}
            Ok(Received::Buffered { buffered }) => {
                *lock(&ctx.shared).counts.entry("keys.group_epoch_unknown".into()).or_default() += 1;
                record(&ctx.shared, name, "store.group_buffered", json!({"packet": p.id, "epoch": epoch, "buffered": buffered}), None);
            }
            Err(e @ KeyError::GroupBufferOverflow { .. }) => {
                *lock(&ctx.shared).counts.entry("keys.group_buffer_overflow".into()).or_default() += 1;
                record(&ctx.shared, name, "op.err", json!({"action": "group_receive", "packet": p.id, "code": e.code(), "message": e.to_string()}), None);
            }
            Err(e) => record(
                &ctx.shared,
                name,
                "op.err",
                json!({"action": "group_replay", "packet": p.id, "epoch": epoch, "code": e.code(), "message": e.to_string()}),
                None,
            ),
        }
    }
    if !post {
        return;
    }
    let session = m.session.as_ref().expect("joined");
    let Some(epoch) = session.current_epoch() else { return };
    let key = session.key(epoch).expect("the current epoch's key").clone();
    let mut epochs = lock(&room.epochs);
    for _ in 0..POSTS_PER_SYNC {
        let id = epochs.packets.len() as u64 + 1;
        let plaintext = format!("{} packet {id} from {name} under epoch {epoch}", room.group).into_bytes();
        let packet = GroupPacket::seal(&room.group, epoch, &key, crypto::nonce_from(&mut rng), &plaintext);
        epochs.packets.push(RoomPacket { id, from: name.into(), packet, sha256: sha256_hex(&plaintext) });
    }
}

/// The audit: a last room step; a member that dropped packets from a full buffer is reconnected
/// by the operator (unless the plan skips it) and reads the room again; then, when the run
/// converged, the model judges the member (INV-GROUP).
pub fn audit(ctx: &ClientCtx, client: &mut Client, start: u64, converged: bool, skip_reconnect: bool) {
    step(ctx, client, start, false);
    let dropped = lock(member(ctx)).inbox.dropped.len();
    if dropped > 0 && !skip_reconnect {
        lock(member(ctx)).reset();
        record(&ctx.shared, &ctx.name, "store.group_reconnect", json!({"dropped": dropped}), None);
        step(ctx, client, start, false);
    }
    if !converged {
        return;
    }
    let (sent, epochs) = {
        let e = lock(&room(ctx).epochs);
        let sent = e.packets.iter().map(|p| SentPacket { id: p.id, epoch: p.packet.epoch, sha256: p.sha256.clone() }).collect();
        (sent, e.handed_out.iter().copied().collect())
    };
    let m = lock(member(ctx));
    let Some(session) = m.session.as_ref() else { return };
    let held = (1..=session.current_epoch().unwrap_or(0)).filter(|e| session.key(*e).is_some()).collect();
    let facts = GroupFacts {
        node: ctx.name.clone(),
        group: room(ctx).group.clone(),
        sent,
        epochs,
        held,
        delivered: m.inbox.delivered.clone(),
        buffered: m.inbox.waiting.iter().map(|(id, _)| *id).collect(),
    };
    let detail = json!({"delivered": facts.delivered.len(), "sent": facts.sent.len(), "held": facts.held});
    drop(m);
    if let Some(line) = record_at(&ctx.shared, &ctx.name, "check.group", detail, None) {
        observe(&ctx.shared, Fact::Store(StoreFact::Group(facts)), line);
    }
}

/// A tenant's room (runbook 002): its authority creates the vault key once; every other member,
/// and any member whose key store was lost, asks for a share, which a member holding the key
/// seals for the asker's identity under the room's group key. The board carries those messages
/// between the devices' processes.
pub struct VaultRoom {
    pub authority: String,
    pub group: String,
    pub epoch: u64,
    /// The room's group key for `epoch`, handed to members when they pair.
    pub group_key: Key,
    pub board: Mutex<VaultBoard>,
    /// The room's epochs (the first is `group_key`'s) and the packets it carried.
    pub epochs: Mutex<RoomEpochs>,
}

/// Requests for the vault key (by identity) and the shares answering them.
#[derive(Default)]
pub struct VaultBoard {
    pub requests: std::collections::BTreeSet<String>,
    pub shares: BTreeMap<String, Vec<u8>>,
}

/// Every tenant's room: the first device of the tenant is its authority; the group key comes
/// from the seed.
pub fn rooms(plan: &crate::plan::Plan) -> BTreeMap<String, Arc<VaultRoom>> {
    let seeds = SeedTree::new(plan.seed).child("rooms");
    let mut out = BTreeMap::new();
    for c in &plan.clients {
        out.entry(c.tenant.clone()).or_insert_with(|| {
            Arc::new(VaultRoom {
                authority: c.name.clone(),
                group: format!("room-{}", c.tenant),
                epoch: 1,
                group_key: Key::generate(&mut seeds.stream(&c.tenant)),
                board: Mutex::new(VaultBoard::default()),
                epochs: Mutex::new(RoomEpochs::new(Key::generate(&mut seeds.stream(&c.tenant)), seeds.child(&c.tenant))),
            })
        });
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The device's part: the vault and the room

/// The keys' part of a device process: the vault step and the room step at boot, after every
/// sync round and at the audit.
pub struct KeysDevice {
    /// The device's boot count.
    pub start: u64,
}

impl DevicePart for KeysDevice {
    fn bound(&mut self, ctx: &ClientCtx, client: &mut Client) {
        vault_step(ctx, client, self.start, true);
        step(ctx, client, self.start, false);
    }

    fn after_round(&mut self, ctx: &ClientCtx, client: &mut Client, synced: bool) {
        vault_step(ctx, client, self.start, false);
        step(ctx, client, self.start, synced);
    }

    fn audit<'a>(&'a mut self, ctx: &'a ClientCtx, client: &'a mut Client, converged: bool) -> Hook<'a> {
        vault_step(ctx, client, self.start, true);
        audit(ctx, client, self.start, converged, ctx.skip_group_reconnect);
        Box::pin(async {})
    }

    /// The room's group key and every epoch key it handed out.
    fn secrets(&self, ctx: &ClientCtx) -> Vec<drill_model::secrets::Secret> {
        use drill_model::secrets::Secret;
        let room = room(ctx);
        let mut out = Secret::key(format!("group key of {}", room.group), room.group_key.as_bytes());
        for (epoch, k) in lock(&room.epochs).keys() {
            out.extend(Secret::key(format!("group key of {} epoch {epoch}", room.group), k.as_bytes()));
        }
        out
    }
}

/// Hands the model what `node`'s vault holds (the fingerprint of its key, or none): a read, or
/// with `recovered` an explicit recovery of that key (INV-NO-REGEN).
pub fn observe_vault(shared: &SharedRef, node: &str, fingerprint: Option<String>, recovered: bool) {
    use drill_model::secrets::VaultObservation;
    let Some(line) = record_at(shared, node, "store.vault", json!({"fingerprint": fingerprint, "recovered": recovered}), None) else { return };
    let o = match (fingerprint, recovered) {
        (Some(fingerprint), true) => VaultObservation::Recovered { node: node.into(), line, fingerprint },
        (fingerprint, _) => VaultObservation::Read { node: node.into(), line, fingerprint },
    };
    observe(shared, Fact::Store(StoreFact::Vault(o)), line);
}

/// The vault step a device takes at start and after every sync: the authority creates the
/// vault key if the room never had one; a device without it asks peers and recovers it from a
/// share (never creates a new one: the stack refuses when its database says the vault was
/// initialized); a device holding it answers peers' requests. `observe_read` also hands the
/// model what the vault holds (INV-NO-REGEN).
pub fn vault_step(ctx: &ClientCtx, client: &mut Client, start: u64, observe_read: bool) {
    use drill_stack::keys::vault::{Role, VaultShare};
    let name = ctx.name.as_str();
    let room = room(ctx);
    let mut rng = ctx.seeds.child(&format!("device/{name}/start-{start}/vault-{}", trace::line_count())).stream("keys");
    let (keys, db) = client.keys_and_db();
    let Ring::Store(ks) = &mut keys.ring else { return };
    let vault = |fp: Option<String>, recovered: bool| observe_vault(&ctx.shared, name, fp, recovered);
    match ks.vault_key() {
        Ok(k) => {
            if observe_read {
                vault(Some(k.fingerprint()), false);
            }
            let requests: Vec<String> = std::mem::take(&mut lock(&room.board).requests).into_iter().collect();
            for who in requests {
                match ks.vault_share(&room.group, room.epoch, &room.group_key, &who, &mut rng) {
                    Ok(share) => {
                        lock(&room.board).shares.insert(who.clone(), share.to_bytes());
                        record(&ctx.shared, name, "store.vault_share", json!({"for": who}), None);
                    }
                    Err(e) => record(&ctx.shared, name, "op.err", json!({"action": "vault_share", "code": e.code(), "message": e.to_string()}), None),
                }
            }
            return;
        }
        Err(KeyError::VaultKeyUninitialized) if room.authority == name => match ks.generate_vault_key(db, Role::Authority, &mut rng) {
            Ok(k) => return vault(Some(k.fingerprint()), false),
            // The database says the vault was initialized: the key store was lost; recover.
            Err(e) => record(&ctx.shared, name, "store.vault_refused", json!({"code": e.code()}), None),
        },
        Err(KeyError::VaultKeyUninitialized | KeyError::VaultKeyMissing) => {}
        Err(e) => return record(&ctx.shared, name, "op.err", json!({"action": "vault", "code": e.code(), "message": e.to_string()}), None),
    }
    let me = ks.identity_id().to_string();
    let share = lock(&room.board).shares.remove(&me);
    match share.map(|b| VaultShare::from_bytes(&b)) {
        Some(Ok(share)) => match ks.recover_vault_key(db, &share, &room.group_key, &mut rng) {
            Ok(k) => vault(Some(k.fingerprint()), true),
            Err(e) => record(&ctx.shared, name, "op.err", json!({"action": "vault_recover", "code": e.code(), "message": e.to_string()}), None),
        },
        Some(Err(e)) => record(&ctx.shared, name, "op.err", json!({"action": "vault_recover", "code": e.code(), "message": e.to_string()}), None),
        None => {
            if observe_read {
                vault(None, false);
            }
            lock(&room.board).requests.insert(me);
        }
    }
}

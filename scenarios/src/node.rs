//! The ground every process of the world stands on: what the server's and the devices'
//! processes, the subsystems plugged into the world and the world's core share — the model and
//! the trace (`record`, `observe`), a node's clock, the files and addresses of its nodes, a
//! device's mailbox of commands and its context. It imports nothing of the world above it: the
//! subsystems (blobs, jobs, store work, group keys, tokens, transport) build on it, and the
//! device and server processes (`procs`) and the world's core (`run`) build on them.
//!
//! A subsystem keeps its share of a device in the device's [`Parts`], found by type, so the
//! context names no subsystem.

use std::any::Any;
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use drill_model::{Checker, ClientSnapshot, EventFact, Fact};
use drill_sim::disk::DiskSim;
use drill_sim::rng::SeedTree;
use drill_sim::trace;
use drill_stack::client::Client;
use drill_stack::clock::Clock;
use drill_stack::crypto::Key;
use drill_stack::envelope;
use drill_stack::store::EventRow;
use serde_json::{json, Value};

use crate::plan::Action;
use crate::transport::TransportState;

/// A device's share of each subsystem plugged into the world, one value per subsystem, found by
/// its type: the device's context carries them without naming the subsystems.
#[derive(Default)]
pub struct Parts(Vec<Arc<dyn Any + Send + Sync>>);

impl Parts {
    /// Adds a subsystem's part (one per type).
    pub fn with<T: Any + Send + Sync>(mut self, part: Arc<T>) -> Parts {
        assert!(!self.0.iter().any(|p| p.is::<T>()), "a device has one {} part", std::any::type_name::<T>());
        self.0.push(part);
        self
    }

    /// The part of type `T`; asking for a part no subsystem plugged in is a bug of the world.
    pub fn get<T: Any + Send + Sync>(&self) -> &T {
        self.0.iter().find_map(|p| p.downcast_ref::<T>()).unwrap_or_else(|| panic!("the device has no {} part", std::any::type_name::<T>()))
    }

    /// [`Parts::get`], shared.
    pub fn arc<T: Any + Send + Sync>(&self) -> Arc<T> {
        self.0.iter().find_map(|p| p.clone().downcast::<T>().ok()).unwrap_or_else(|| panic!("the device has no {} part", std::any::type_name::<T>()))
    }
}

/// The device database's file name.
pub const DEVICE_DB: &str = "device.db";

/// The device key store's file name, beside the database.
pub const KEYS_DB: &str = "keys.db";

/// The server database's file name.
pub const SERVER_DB: &str = "server.db";

/// How long a device waits for an answer from the server.
pub const RPC_TIMEOUT_MS: u64 = 1_000;

pub const SERVER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
/// The world's other fixed addresses, all here so that no two nodes share one (the devices are
/// 10.0.1.x, [`client_ip`]).
pub const BLOBSTORE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1));
pub const JOBS_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 3, 1));
pub const EFFECTS_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 4, 1));
pub const BYSTANDER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 5, 1));
pub const BACKUP_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 6, 1));
/// Every fixed address, for the test that they differ.
pub const FIXED_IPS: [IpAddr; 6] = [SERVER_IP, BLOBSTORE_IP, JOBS_IP, EFFECTS_IP, BYSTANDER_IP, BACKUP_IP];

/// The simulated address of device `i` (0-based).
pub fn client_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 1, (i + 1) as u8))
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the whole world shares: the model.
#[derive(Default)]
pub struct Shared {
    pub checker: Checker,
    /// What happened to the run that the world did not inject itself but counts with its
    /// faults (the server's refusals of tokens its clock or its restart made stale).
    pub counts: BTreeMap<String, u64>,
    /// The device a drill injected into a swarm world runs on, if any: its attempts are booked.
    pub watched: Option<String>,
    /// Every sync and hydrate attempt of the watched device, in order: the typed history the
    /// injected drill is judged from.
    pub attempts: Vec<Attempted>,
    /// The plan's planted bugs; each device's stack gets its node's view when it opens.
    pub mutations: drill_stack::mutations::Mutations,
}

/// The plan's planted bugs, armed: a `mutations.planted` trace line lists them (none when the
/// plan has none) and each firing is a `mutation.fired` line on the node it fired on.
pub fn plant(plan: &crate::plan::Plan) -> drill_stack::mutations::Mutations {
    use drill_stack::mutations::Mutations;
    if plan.mutations.is_empty() {
        return Mutations::none();
    }
    trace::emit("world", "mutations.planted", json!({"mutations": plan.mutations}));
    Mutations::new(
        &plan.mutations,
        Box::new(|f| {
            trace::emit(&f.node, "mutation.fired", json!({"bug": f.bug, "place": f.place, "detail": f.detail, "n": f.n}));
        }),
    )
}

/// What the run's planted bugs did, for its report.
pub fn planted_report(m: &drill_stack::mutations::Mutations) -> Vec<crate::api::PlantedBug> {
    m.fired().into_iter().map(|(node, bug, target, fired)| crate::api::PlantedBug { node, bug: bug.to_string(), target, fired }).collect()
}

pub type SharedRef = Arc<Mutex<Shared>>;

/// What one sync or hydrate attempt of a device came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// A sync that succeeded.
    Synced,
    /// A hydrate the client accepted.
    Hydrated { malformed: bool },
    /// A sync or hydrate that failed, with its `stage:code` signature when it has one.
    Failed { signature: Option<String> },
}

/// One attempt, with when and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempted {
    /// Simulated microseconds since the world started.
    pub t_us: u64,
    pub node: String,
    pub attempt: Attempt,
}

/// Books an attempt of the watched device whose trace line was written (`line`; none when the
/// node's power was cut and it said nothing). Other devices' attempts cost nothing.
pub fn book_attempt(shared: &SharedRef, node: &str, attempt: Attempt, line: Option<u64>) {
    let mut s = lock(shared);
    if line.is_some() && s.watched.as_deref() == Some(node) {
        let t_us = drill_sim::clock::true_us();
        s.attempts.push(Attempted { t_us, node: node.to_string(), attempt });
    }
}

/// Records one trace line and, when given, hands a fact to the model. A node whose power is cut
/// says nothing more: lines and facts from its dying task are dropped.
pub fn record(shared: &SharedRef, node: &str, kind: &str, detail: Value, fact: Option<Fact>) {
    record_at(shared, node, kind, detail, fact);
}

/// [`record`], returning the trace line (none when the node's power is cut).
pub fn record_at(shared: &SharedRef, node: &str, kind: &str, detail: Value, fact: Option<Fact>) -> Option<u64> {
    if madsim::runtime::Handle::try_current().is_ok() && DiskSim::current().is_known_and_down(madsim::plugin::node()) {
        return None;
    }
    let line = trace::emit(node, kind, detail);
    if let Some(f) = fact {
        observe(shared, f, line);
    }
    Some(line)
}

/// Hands a fact recorded at `line` to the model and traces any violation it finds.
pub fn observe(shared: &SharedRef, fact: Fact, line: u64) {
    let new = {
        let mut s = lock(shared);
        let before = s.checker.violations().len();
        s.checker.observe(fact, line);
        s.checker.violations()[before..].to_vec()
    };
    for v in new {
        trace::emit(&v.node, "check.violation", json!({"invariant": v.invariant, "line": v.trace_line, "message": v.message}));
    }
}

/// The node clock, read through the simulator.
#[derive(Clone, Copy)]
pub struct NodeClock(pub madsim::task::NodeId);

impl Clock for NodeClock {
    fn now_unix_ms(&self) -> i64 {
        drill_sim::clock::node_unix_ms(self.0)
    }
}

/// A store-work command for a device (a buggy projection write, a schema upgrade).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreCmd {
    CorruptProjection { projection: String, nth: u32 },
    Upgrade { cut_after_ops: Option<u32> },
}

/// A user command for a device.
#[derive(Debug, Clone)]
pub enum Command {
    Op {
        id: u64,
        action: Action,
    },
    Snapshot,
    /// Switch the device to READ_ONLY, or back to NORMAL (an operator's action).
    SetReadOnly(bool),
    /// The operator restores the device's key backup and replays its projections (runbook 000).
    RestoreKeys,
    /// The operator answers the key error the device reported when it opened (a lost key store,
    /// a forgotten passphrase); a device working normally has nothing to repair.
    RepairKeys,
    /// A store-work step of the plan (a buggy projection write, a schema upgrade).
    Store(StoreCmd),
    /// The end-of-run audit of the device's store: projections, tenants, a snapshot restore
    /// against a full replay; the answer is the key material the device holds, for the scan.
    Audit {
        converged: bool,
    },
}

/// A device's inbox, filled by the world and drained by the device's process.
#[derive(Default)]
pub struct Mailbox {
    pub queue: VecDeque<Command>,
    waker: Option<Waker>,
    pub busy: bool,
    pub snapshot: Option<Result<ClientSnapshot, String>>,
    pub audit: Option<Vec<drill_model::secrets::Secret>>,
}

impl Mailbox {
    pub fn push(&mut self, c: Command) {
        self.queue.push_back(c);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    pub fn idle(&self) -> bool {
        self.queue.is_empty() && !self.busy
    }

    /// Forgets queued commands (the device died) and returns how many there were.
    pub fn clear(&mut self) -> usize {
        let n = self.queue.len();
        self.queue.clear();
        self.busy = false;
        n
    }
}

pub(crate) async fn next_command(mb: &Mutex<Mailbox>) -> Command {
    std::future::poll_fn(|cx| {
        let mut m = lock(mb);
        match m.queue.pop_front() {
            Some(c) => {
                m.busy = true;
                Poll::Ready(c)
            }
            None => {
                m.busy = false;
                m.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    })
    .await
}

/// What a device's process needs.
pub struct ClientCtx {
    pub name: String,
    pub tenant: String,
    /// The tenant's aggregate keys, as pairing hands them to every device of the tenant; the
    /// world keeps them too, to open what devices store for the model.
    pub tenant_keys: Arc<TenantKeys>,
    /// The passphrase of the device's key store.
    pub passphrase: String,
    /// Where the device's key and nonce streams come from.
    pub seeds: SeedTree,
    /// How many times the device's process started: every start draws fresh streams, so a
    /// nonce is never drawn twice.
    pub starts: Mutex<u64>,
    /// Aggregate keys the device does not get when it pairs (a fresh device whose keys were
    /// not all restored), until the operator restores its key backup.
    pub withheld: Mutex<std::collections::BTreeSet<String>>,
    /// The device's key backup, kept off the device by its operator: taken when its key store
    /// was first created.
    pub backup: Mutex<Option<Vec<u8>>>,
    /// The id of the key store the device last ran with: another one at boot means the key
    /// store was lost and the device paired again.
    pub key_store_id: Mutex<Option<String>>,
    /// The events the device held when it found its key store lost, until its recovery
    /// (pairing again, or the operator's key backup restore and replay) is checked.
    pub recovery_base: Mutex<Option<Vec<EventFact>>>,
    /// Whether the operator restored the device's key backup.
    pub backup_restored: std::sync::atomic::AtomicBool,
    /// The device's key faults and the operator's answers, across its processes.
    pub key_faults: Mutex<KeyFaults>,
    pub protocol_version: u32,
    pub transport: Arc<Mutex<TransportState>>,
    pub mailbox: Arc<Mutex<Mailbox>>,
    /// The key pairing gave the device, to prove itself when it asks for a token.
    pub pairing: Key,
    /// A planted operator mistake (tests): a member that dropped packets is never reconnected.
    pub skip_group_reconnect: bool,
    /// The device's share of each subsystem plugged into the world (its store work, its room and
    /// its session with it).
    pub parts: Parts,
    pub shared: SharedRef,
}

/// What the world and the operator know of a device's key faults (see
/// [`crate::store_world`]), across the device's processes.
#[derive(Debug, Default)]
pub struct KeyFaults {
    /// The operator has the key backup at hand for a lost key store and restores it; otherwise
    /// the store is declared lost and replaced.
    pub restore_now: bool,
    /// The user forgot the passphrase: the device's unlock is given something else.
    pub passphrase_forgotten: bool,
    /// How many times the passphrase was declared lost (each time with a new one).
    pub passphrase_changes: u32,
    /// Aggregates whose keys the world took from the device for good: no backup holds them and
    /// pairing does not give them back.
    pub unrecoverable: std::collections::BTreeSet<String>,
    /// What the operator did, in order, for the recovery check's name.
    pub repairs: Vec<&'static str>,
    /// The operator's backup of the key store the database is bound to now, by store id: what
    /// restores a lost store so that it binds again. (`ClientCtx::backup`, the first one, is
    /// the one whose aggregate keys are imported at the heal.)
    pub store_backup: Option<(String, Vec<u8>)>,
}

/// The bytes a device's user writes for operation `op`: unique per operation, so the model can
/// tell every write apart.
pub fn payload_for(node: &str, op: u64, bytes: u32) -> Vec<u8> {
    let mut p = format!("{node}/op-{op}/").into_bytes();
    let mut x = op.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while p.len() < bytes as usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p.push(b'a' + (x % 26) as u8);
    }
    p
}

/// Aggregate keys by aggregate, of one tenant.
pub type TenantKeys = BTreeMap<String, Key>;

/// The aggregate the devices' blob references are written to.
pub const BLOBS_AGGREGATE: &str = "blobs";

/// The plaintext of a stored payload, opened with the keys the world handed out; a payload that
/// does not open (tampered, corrupt) is given to the model as stored, so it matches no write.
pub(crate) fn opened(keys: &TenantKeys, tenant: &str, aggregate: &str, kind: &str, stored: &[u8]) -> Vec<u8> {
    envelope::open(keys, tenant, aggregate, kind, stored).unwrap_or_else(|_| stored.to_vec())
}

/// A stored event as the model sees it: its payload opened with `keys` (as stored when it does
/// not open: tampered or corrupt, it then matches no write).
pub(crate) fn event_fact(e: &EventRow, keys: &TenantKeys) -> EventFact {
    EventFact {
        seq: e.seq,
        op_id: e.op_id.clone(),
        tenant: e.tenant.clone(),
        kind: e.kind.clone(),
        replica: e.replica.clone(),
        write_id: e.write_id,
        payload: opened(keys, &e.tenant, &e.aggregate, &e.kind, &e.payload),
        stored: e.payload.clone(),
        prev_hash: e.prev_hash.clone(),
        hash: e.hash.clone(),
    }
}

/// The fact that an append committed as `write_id` with `op_id`, with its stored form's hash.
pub fn append_acked(node: &str, client: &Client, write_id: u64, op_id: &str) -> Fact {
    let stored = client.pending_write(op_id).ok().flatten().map(|w| drill_model::facts::sha256_hex(&w.payload)).unwrap_or_default();
    Fact::AppendAcked { node: node.into(), write_id, op_id: op_id.into(), stored_sha256: stored }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_two_nodes_share_an_address() {
        let mut all: Vec<IpAddr> = FIXED_IPS.to_vec();
        all.extend((0..crate::plan::CLIENTS_MAX).map(client_ip));
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "an address is taken twice");
    }
}

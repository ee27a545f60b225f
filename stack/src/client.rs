//! A device: its own SQLite store with an outbox of pending writes, and the sync that pushes the
//! outbox and pulls the tenant's total order.
//!
//! A sync attempt is all or nothing for the device's state: the reconcile acknowledgement and
//! every pulled page are validated as they arrive (the guardrails of the sync runbook, each with
//! its `stage:code` signature) and applied in one transaction at the end, so a failed attempt
//! leaves [`Client::export_state`] exactly as it was (fail-closed). A write leaves the outbox
//! only in the transaction that applies its event from the server, so it is never lost and never
//! applied twice. Every write carries an op id that survives retries and renumbering.
//!
//! Payloads are sealed under their aggregate's key as they are appended ([`crate::envelope`]):
//! the outbox, the wire and the server only ever hold ciphertext. The device's projections fold
//! the tenant's events after every sync that brought new ones, skipping aggregates whose key it
//! lacks (reported incomplete). Every command checks the resilience mode first: READ_ONLY
//! refuses appends and syncs with `store:readOnly` and changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use rand_core::RngCore;
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::blobs::object::RetryPolicy;
use crate::chain;
use crate::clock::Clock;
use crate::crypto::{self, Key};
use crate::envelope;
use crate::error::{StoreError, SyncError};
use crate::fs::{FileSystem, FsError};
use crate::keys::exchange::{self, GroupKeysFetched, VaultRecovered};
use crate::keys::token::{self, TokenState};
use crate::keys::{KeyError, KeyStore};
use crate::projections::health::{EventStoreStatus, Health};
use crate::projections::resilience::{self, Mode, Write};
use crate::projections::verify::{self, Inconsistency};
use crate::projections::{ApplyReport, Engine, Incomplete, KeyRing, Scope};
use crate::proto::{ChainPoint, PendingWrite, Request, Response, WireEvent, PAGE_LIMIT_MAX};
use crate::rpc::Exchange;
use crate::saga::{self, AchievementSaga, Reconciled, RemoteEffectSink, SagaError};
use crate::store::{self, EventRow};

/// Writes pushed in one request at most.
pub const PUSH_BATCH_MAX: usize = 64;
/// Pages pulled in one sync attempt at most; the rest waits for the next attempt.
pub const PULL_PAGES_MAX: u32 = 16;
/// Retries of a push refused for stale write ids, each after renumbering, before giving up.
pub const STALE_WRITE_RETRIES_MAX: u32 = 2;

const CLIENT_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox(
    write_id INTEGER PRIMARY KEY,
    op_id TEXT NOT NULL UNIQUE,
    aggregate TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_ms INTEGER NOT NULL
);
";

/// One pending write as the exported state names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRef {
    pub op_id: String,
    pub write_id: u64,
}

/// What a device exports and can be hydrated from: its sync position and its pending writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedState {
    pub replica: String,
    pub tenant: String,
    pub cursor: u64,
    pub reconcile_cursor: u64,
    pub last_reconciled_write_ids: BTreeMap<String, u64>,
    pub pending: Vec<PendingRef>,
}

impl ExportedState {
    /// The canonical text, for byte-for-byte comparison.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a state serializes")
    }
}

/// Where a device's aggregate keys live.
pub enum Ring {
    /// The device's key store file, unlocked.
    Store(Box<KeyStore>),
    /// Keys held in memory: storage-layer tests and benchmarks, which measure the store, not the
    /// key store.
    Fixed(BTreeMap<String, Key>),
}

impl KeyRing for Ring {
    fn aggregate_key(&self, aggregate: &str) -> Result<Key, KeyError> {
        match self {
            Ring::Store(ks) => ks.aggregate_key(aggregate),
            Ring::Fixed(keys) => keys.aggregate_key(aggregate),
        }
    }
}

impl Ring {
    /// The aggregates whose key the ring holds.
    pub fn aggregates(&self) -> Result<Vec<String>, KeyError> {
        match self {
            Ring::Store(ks) => ks.aggregates(),
            Ring::Fixed(keys) => Ok(keys.keys().cloned().collect()),
        }
    }
}

/// A device's keys, and the stream its nonces come from (in a run, a seeded stream that never
/// repeats across the device's restarts; never the OS).
pub struct DeviceKeys {
    pub ring: Ring,
    nonces: Box<dyn RngCore + Send>,
}

impl DeviceKeys {
    pub fn new(ring: Ring, nonces: Box<dyn RngCore + Send>) -> DeviceKeys {
        DeviceKeys { ring, nonces }
    }
}

/// What one successful sync attempt did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    /// Op ids the server acknowledged in this attempt.
    pub pushed: Vec<String>,
    /// Pushed writes that got a new write id after the server refused stale ones.
    pub renumbered: usize,
    pub pulled: usize,
    pub pages: u32,
    /// Whether the device caught up with the server (no page left).
    pub settled: bool,
    /// Events the projections folded after the commit.
    pub projected: u64,
    /// Why the projections could not catch up after the commit, if they could not (they catch
    /// up at the next sync or boot).
    pub projection_error: Option<String>,
    /// Tokens this attempt asked for, and the server's refusals of the held one (each followed
    /// by a refresh and a retry).
    pub token_refreshes: u64,
    pub token_refusals: Vec<String>,
    /// The server answered the push "retry later" (its code: `readOnly`, `tenantReadOnly`,
    /// `archivePending`, `archiveWindowFull`): the writes stay in the outbox for the next attempt,
    /// and the pull went on.
    pub push_deferred: Option<String>,
}

/// Everything an attempt will commit, held in memory until it has fully succeeded.
#[derive(Default)]
struct Attempt {
    cursor: u64,
    reconcile_cursor: u64,
    last_reconciled: BTreeMap<String, u64>,
    renumbered: BTreeMap<String, u64>,
    pushed: Vec<String>,
    /// Pushed ops the server already compacted below this device's anchor: they will never be
    /// pulled back, so they leave the outbox on the server's word.
    compacted: Vec<String>,
    items: Vec<EventRow>,
    pages: u32,
    settled: bool,
    deferred: Option<String>,
}

/// What a verification of a device's projections found good, for the next one to start from
/// ([`Client::verify_projections`]): per projection the snapshot taken right after it, and the
/// aggregates whose keys the device held then.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifiedSnapshots {
    by_projection: BTreeMap<String, VerifiedBase>,
    keys: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct VerifiedBase {
    snapshot_id: u64,
    /// The tenant's chain hash at the snapshot's seq (`None`: no event at or below it).
    hash: Option<Vec<u8>>,
}

fn sealed(events: &[EventRow]) -> Result<Vec<crate::projections::SealedEvent>, StoreError> {
    events.iter().map(envelope::sealed_event).collect::<Result<Vec<_>, _>>()
}

/// What [`Client::recreate`] did with a device database that is not a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recreated {
    /// Why the file does not open: the store's corruption error, as the operator captures it.
    pub damage: String,
    /// The names the damaged file and its log have now, kept as evidence.
    pub kept: Vec<String>,
}

/// Most evidence copies of one database kept side by side.
const EVIDENCE_MAX: u32 = 1_000;

/// A device's store.
pub struct Client {
    conn: Connection,
    replica: String,
    tenant: String,
    incarnation: String,
    clock: Box<dyn Clock>,
    boots: u64,
    keys: DeviceKeys,
    engine: Engine,
    /// The device's pairing key and token, when its server requires tokens.
    auth: Option<Auth>,
    /// The planted bugs of a test plan ([`crate::mutations`]); none in production.
    mutations: crate::mutations::Mutations,
}

struct Auth {
    pairing: Key,
    state: TokenState,
}

/// Codes of a server's refusal of the token a request carried.
const TOKEN_REFUSALS: [&str; 3] = ["keys:tokenExpired", "keys:tokenInvalid", "keys:tokenIdentityMismatch"];

fn guard(stage: &'static str, code: &'static str, detail: String) -> SyncError {
    SyncError::Guardrail { stage, code, detail }
}

/// The server does not hold this device's chain head: it was restored behind the device.
fn rewound(held: Option<ChainPoint>) -> SyncError {
    let at = held.map(|h| format!("event {}", h.seq)).unwrap_or_else(|| "no event".into());
    guard("sync", "serverRewound", format!("the server's chain ends at {at} and does not hold this device's head: it was restored behind this device"))
}

fn get_u64(c: &Connection, key: &str) -> Result<u64, StoreError> {
    Ok(store::meta_get(c, key)?.and_then(|v| v.parse().ok()).unwrap_or(0))
}

impl Client {
    /// Opens (or creates) the device database at `path` for `replica` of `tenant`, recovering
    /// whatever the disk kept.
    pub fn open(path: &str, replica: &str, tenant: &str, clock: Box<dyn Clock>, keys: DeviceKeys) -> Result<Client, StoreError> {
        Client::open_with_vfs(path, None, replica, tenant, clock, keys)
    }

    /// Like [`Client::open`], through the SQLite VFS named `vfs` (see [`store::open_with_vfs`]);
    /// `drill bench` uses it to run the same workload on a real file and in memory.
    pub fn open_with_vfs(path: &str, vfs: Option<&str>, replica: &str, tenant: &str, clock: Box<dyn Clock>, keys: DeviceKeys) -> Result<Client, StoreError> {
        let conn = store::open_with_vfs(path, vfs)?;
        conn.execute_batch(store::EVENTS_SCHEMA)?;
        conn.execute_batch(CLIENT_SCHEMA)?;
        let engine = Engine::builtin();
        engine.install(&conn)?;
        let tx = conn.unchecked_transaction()?;
        for (key, want) in [("replica", replica), ("tenant", tenant)] {
            match store::meta_get(&tx, key)? {
                None => store::meta_set(&tx, key, want)?,
                Some(have) if have == want => {}
                Some(have) => return Err(StoreError::Invalid { detail: format!("database belongs to {key} {have}, not {want}") }),
            }
        }
        // A fresh database gets a fresh incarnation, so op ids never repeat even when a device
        // loses its database and starts its write ids over.
        let incarnation = match store::meta_get(&tx, "incarnation")? {
            Some(i) => i,
            None => {
                let i: String = tx.query_row("SELECT lower(hex(randomblob(8)))", [], |r| r.get(0))?;
                store::meta_set(&tx, "incarnation", &i)?;
                i
            }
        };
        let boots = get_u64(&tx, "boots")? + 1;
        store::meta_set(&tx, "boots", &boots.to_string())?;
        tx.commit()?;
        let mutations = crate::mutations::Mutations::none();
        Ok(Client { conn, replica: replica.into(), tenant: tenant.into(), incarnation, clock, boots, keys, engine, auth: None, mutations })
    }

    /// The operator's recovery of a device database that is not a database (runbook 002,
    /// "Database Corruption on Native"; runbook 001, scenario D). The file `name` of `fs` must
    /// fail to open, or fail SQLite's quick check, with `store:corrupt`; it and its log are then
    /// kept aside as evidence under `<name>.corrupt-<n>` (never over earlier evidence), so the
    /// next [`Client::open`] creates a fresh database. The key store survives: binding accepts
    /// an empty database ([`crate::keys::binding::bind`]), and sync refills it from the server.
    /// Writes the device never pushed are lost with the file. A file that opens and passes the
    /// check is refused with `store:invalid` and left as it is: a healthy database is never
    /// thrown away.
    pub fn recreate(fs: &dyn FileSystem, name: &str) -> Result<Recreated, StoreError> {
        let damage = match store::open(&fs.db_path(name)).and_then(|c| store::quick_check(&c)) {
            Err(StoreError::Corrupt { detail }) => detail,
            Err(other) => return Err(other),
            Ok(()) => return Err(StoreError::Invalid { detail: format!("{name} opens and passes its quick check: not recreated") }),
        };
        let fs_err = |e: FsError| match e {
            FsError::Full { .. } => StoreError::Full,
            e => StoreError::Io { detail: format!("{}: {e}", e.code()) },
        };
        let mut evidence = None;
        for n in 1..=EVIDENCE_MAX {
            let candidate = format!("{name}.corrupt-{n}");
            if !fs.exists(&candidate).map_err(fs_err)? {
                evidence = Some(candidate);
                break;
            }
        }
        let evidence = evidence.ok_or_else(|| StoreError::Invalid { detail: format!("{EVIDENCE_MAX} evidence copies of {name} already kept") })?;
        let mut kept = Vec::new();
        for suffix in ["", "-wal", "-shm"] {
            let from = format!("{name}{suffix}");
            if fs.exists(&from).map_err(fs_err)? {
                let to = format!("{evidence}{suffix}");
                fs.rename(&from, &to).map_err(fs_err)?;
                kept.push(to);
            }
        }
        fs.sync_dir().map_err(fs_err)?;
        Ok(Recreated { damage, kept })
    }

    /// How many times this database has been opened, this time included.
    pub fn boots(&self) -> u64 {
        self.boots
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Records a write locally, its payload sealed under the aggregate's key; it is durable when
    /// this returns, and pushed by a later sync. Returns its write id and op id. Refused in
    /// READ_ONLY (`store:readOnly`) and without the aggregate's key (`keys:aggregateKeyMissing`),
    /// changing nothing.
    pub fn append(&mut self, aggregate: &str, kind: &str, payload: &[u8]) -> Result<(u64, String), StoreError> {
        resilience::check_write(&self.conn, Write::Command)?;
        let key = self.keys.ring.aggregate_key(aggregate)?;
        let ts = self.clock.now_unix_ms();
        let nonce = crypto::nonce_from(&mut *self.keys.nonces);
        let sealed = envelope::seal(&key, &nonce, &self.tenant, aggregate, kind, ts, payload);
        let tx = self.conn.transaction()?;
        let next = get_u64(&tx, "next_write_id")?.max(1);
        let op_id = format!("{}-{next}", self.incarnation);
        tx.execute(
            "INSERT INTO outbox(write_id, op_id, aggregate, kind, payload, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![next, op_id, aggregate, kind, sealed, ts],
        )?;
        store::meta_set(&tx, "next_write_id", &(next + 1).to_string())?;
        tx.commit()?;
        Ok((next, op_id))
    }

    /// The pending writes, oldest first.
    pub fn outbox(&self) -> Result<Vec<PendingWrite>, StoreError> {
        let mut st = self.conn.prepare_cached("SELECT write_id, op_id, aggregate, kind, payload FROM outbox ORDER BY write_id")?;
        let rows =
            st.query_map([], |r| Ok(PendingWrite { write_id: r.get(0)?, op_id: Some(r.get(1)?), aggregate: r.get(2)?, kind: r.get(3)?, payload: r.get(4)? }))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The pending write with op id `op_id`, if it is still pending.
    pub fn pending_write(&self, op_id: &str) -> Result<Option<PendingWrite>, StoreError> {
        use rusqlite::OptionalExtension;
        let mut st = self.conn.prepare_cached("SELECT write_id, op_id, aggregate, kind, payload FROM outbox WHERE op_id = ?1")?;
        Ok(st
            .query_row([op_id], |r| Ok(PendingWrite { write_id: r.get(0)?, op_id: Some(r.get(1)?), aggregate: r.get(2)?, kind: r.get(3)?, payload: r.get(4)? }))
            .optional()?)
    }

    /// Every event this device holds, in the server's order.
    pub fn events(&self) -> Result<Vec<EventRow>, StoreError> {
        store::all_events(&self.conn)
    }

    /// The state a sync attempt must leave unchanged when it fails.
    pub fn export_state(&self) -> Result<ExportedState, StoreError> {
        Ok(ExportedState {
            replica: self.replica.clone(),
            tenant: self.tenant.clone(),
            cursor: get_u64(&self.conn, "cursor")?,
            reconcile_cursor: get_u64(&self.conn, "reconcile_cursor")?,
            last_reconciled_write_ids: self.last_reconciled()?,
            pending: self.outbox()?.into_iter().map(|w| PendingRef { op_id: w.op_id.unwrap_or_default(), write_id: w.write_id }).collect(),
        })
    }

    fn last_reconciled(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        match store::meta_get(&self.conn, "last_reconciled_write_ids")? {
            None => Ok(BTreeMap::new()),
            Some(v) => serde_json::from_str(&v).map_err(|e| StoreError::Invalid { detail: format!("lastReconciledWriteIds: {e}") }),
        }
    }

    /// Restarts sync from an exported state (the last known-good one): the sync position goes
    /// back to it and events after its cursor are dropped, to be pulled again. Pending writes
    /// stay. A state that is malformed or not this device's is refused and changes nothing.
    pub fn hydrate(&mut self, state: &ExportedState) -> Result<(), SyncError> {
        resilience::check_write(&self.conn, Write::Command).map_err(StoreError::from)?;
        let refuse = |detail: String| Err(SyncError::Hydrate { detail });
        if state.replica != self.replica || state.tenant != self.tenant {
            return refuse(format!("state of {}/{} offered to {}/{}", state.replica, state.tenant, self.replica, self.tenant));
        }
        if let Some((r, _)) = state.last_reconciled_write_ids.iter().find(|(_, &w)| w == 0) {
            return refuse(format!("lastReconciledWriteIds must map replicas to positive integers; {r} maps to 0"));
        }
        let floor = store::anchor(&self.conn, &self.tenant)?.map(|(seq, _)| seq).unwrap_or(0);
        let held: u64 = self.conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get::<_, u64>(0))?.max(floor);
        if state.cursor < floor {
            return refuse(format!("cursor {} is behind this device's resync floor {floor}", state.cursor));
        }
        if state.cursor > held {
            return refuse(format!("cursor {} is past the last event this device holds ({held})", state.cursor));
        }
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM events WHERE seq > ?1", [state.cursor])?;
        self.engine.reset(&tx, &self.tenant).map_err(StoreError::from)?;
        store::meta_set(&tx, "cursor", &state.cursor.to_string())?;
        store::meta_set(&tx, "reconcile_cursor", &state.reconcile_cursor.to_string())?;
        let lrw = serde_json::to_string(&state.last_reconciled_write_ids).expect("a map serializes");
        store::meta_set(&tx, "last_reconciled_write_ids", &lrw)?;
        tx.commit()?;
        // Derived state refolds from what the device still holds; if the disk refuses now, the
        // next sync or boot catches up.
        let _ = self.project();
        Ok(())
    }

    /// Resynchronises from the server's retention floor after a `pull:resyncRequired` answer:
    /// the device's events go, its chain is anchored at the floor, and the next sync pulls from
    /// there. Pending writes stay.
    pub fn full_resync(&mut self, floor_seq: u64, floor_hash: &[u8]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM events WHERE tenant = ?1", [&self.tenant])?;
        self.engine.reset(&tx, &self.tenant)?;
        store::set_anchor(&tx, &self.tenant, floor_seq, floor_hash)?;
        store::meta_set(&tx, "cursor", &floor_seq.to_string())?;
        tx.commit()?;
        Ok(())
    }

    /// A forced sync: drops the device's events after its anchor so that the next sync pulls
    /// and re-verifies everything the server holds for the tenant. Pending writes stay.
    pub fn force_resync(&mut self) -> Result<(), StoreError> {
        resilience::check_write(&self.conn, Write::Command)?;
        let floor = store::anchor(&self.conn, &self.tenant)?.map(|(seq, _)| seq).unwrap_or(0);
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM events WHERE seq > ?1", [floor])?;
        self.engine.reset(&tx, &self.tenant)?;
        store::meta_set(&tx, "cursor", &floor.to_string())?;
        tx.commit()?;
        Ok(())
    }

    /// This device's chain head as the server must hold it: its last event, or its anchor, or
    /// none (an empty chain).
    pub fn chain_point(&self) -> Result<Option<ChainPoint>, StoreError> {
        let last: Option<(u64, Vec<u8>)> = self
            .conn
            .prepare_cached("SELECT seq, hash FROM events WHERE tenant = ?1 ORDER BY seq DESC LIMIT 1")?
            .query_row([&self.tenant], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(match last {
            Some((seq, hash)) => Some(ChainPoint { seq, hash }),
            None => store::anchor(&self.conn, &self.tenant)?.map(|(seq, hash)| ChainPoint { seq, hash }),
        })
    }

    /// After the operator re-offered this device's events to a restored server
    /// ([`crate::server::Server::reoffer`]): drops the device's events and sync position, so the
    /// next sync pulls and verifies the server's history from the start. `server_holds` is
    /// every op the server answered it holds; an event of this device outside it is not dropped
    /// but refused with `rebase:eventsNotReoffered` (nothing the device holds may be lost).
    /// Pending writes stay.
    pub fn rebase_after_restore(&mut self, server_holds: &BTreeSet<String>) -> Result<(), SyncError> {
        resilience::check_write(&self.conn, Write::Command).map_err(StoreError::from)?;
        let missing: Vec<String> = self.events()?.into_iter().map(|e| e.op_id).filter(|op| !server_holds.contains(op)).collect();
        if !missing.is_empty() {
            return Err(guard("rebase", "eventsNotReoffered", format!("{} events the server does not hold, first {}", missing.len(), missing[0])));
        }
        let floor = store::anchor(&self.conn, &self.tenant)?.map(|(seq, _)| seq).unwrap_or(0);
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM events WHERE tenant = ?1", [&self.tenant])?;
        self.engine.reset(&tx, &self.tenant).map_err(StoreError::from)?;
        store::meta_set(&tx, "cursor", &floor.to_string())?;
        store::meta_set(&tx, "reconcile_cursor", "0")?;
        store::meta_set(&tx, "last_reconciled_write_ids", "{}")?;
        tx.commit()?;
        Ok(())
    }

    /// Where this device's chain starts, if it resynchronised past compacted history.
    pub fn anchor(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        store::anchor(&self.conn, &self.tenant)
    }

    /// One sync attempt: push the outbox, then pull until settled (or the page budget is spent),
    /// and commit everything at once. On any error nothing changes locally.
    pub async fn sync(&mut self, rpc: &mut impl Exchange) -> Result<SyncReport, SyncError> {
        resilience::check_write(&self.conn, Write::Command).map_err(StoreError::from)?;
        let base = self.export_state()?;
        let mut a =
            Attempt { cursor: base.cursor, reconcile_cursor: base.reconcile_cursor, last_reconciled: base.last_reconciled_write_ids, ..Attempt::default() };
        let (refreshes, refusals) = self.auth.as_ref().map(|a| (a.state.refreshes, a.state.refusals.len())).unwrap_or_default();
        self.push(rpc, &mut a).await?;
        self.pull(rpc, &mut a).await?;
        let mut report = SyncReport {
            pushed: a.pushed.clone(),
            renumbered: a.renumbered.len(),
            pulled: a.items.len(),
            pages: a.pages,
            settled: a.settled,
            push_deferred: a.deferred.clone(),
            ..SyncReport::default()
        };
        if let Some(auth) = &self.auth {
            report.token_refreshes = auth.state.refreshes - refreshes;
            report.token_refusals = auth.state.refusals[refusals..].to_vec();
        }
        self.commit(a)?;
        match self.project() {
            Ok(r) => report.projected = r.applied,
            Err(e) => report.projection_error = Some(format!("{}: {e}", e.code())),
        }
        Ok(report)
    }

    /// Pushes the oldest pending writes and validates the reconcile acknowledgement. A push the
    /// server refuses for stale write ids is renumbered above the server's last write id and
    /// retried, at most [`STALE_WRITE_RETRIES_MAX`] times.
    async fn push(&mut self, rpc: &mut impl Exchange, a: &mut Attempt) -> Result<(), SyncError> {
        let mut writes = self.outbox()?;
        writes.truncate(PUSH_BATCH_MAX);
        if writes.is_empty() {
            return Ok(());
        }
        let local_max = self.conn.query_row("SELECT COALESCE(MAX(write_id), 0) FROM outbox", [], |r| r.get::<_, u64>(0))?;
        let mut stale = 0;
        loop {
            let mut sent = writes.clone();
            if rpc.version() < 2 {
                sent.iter_mut().for_each(|w| w.op_id = None);
            }
            let req = Request::Push { tenant: self.tenant.clone(), replica: self.replica.clone(), writes: sent, head: self.chain_point()? };
            match self.call(rpc, &req).await? {
                Response::Pushed { accepted, cursor, last_reconciled_write_ids } => {
                    return self.reconciled(a, &writes, accepted, cursor, last_reconciled_write_ids);
                }
                Response::RetryLater { code, .. } => {
                    a.deferred = Some(code);
                    return Ok(());
                }
                Response::Rewound { held } => return Err(rewound(held)),
                Response::Error { code, last_write_id: Some(last), .. } if code == "staleWriteId" => {
                    stale += 1;
                    if stale > STALE_WRITE_RETRIES_MAX || rpc.version() < 2 {
                        return Err(guard(
                            "flush",
                            "staleWriteRecoveryExhausted",
                            format!("stale write-id recovery exceeded max retry attempts without forward progress ({stale} attempts, max {STALE_WRITE_RETRIES_MAX} retries)"),
                        ));
                    }
                    let base = last.max(local_max);
                    for (i, w) in writes.iter_mut().enumerate() {
                        w.write_id = base + 1 + i as u64;
                    }
                }
                Response::Error { code, message, .. } => return Err(SyncError::Server { code, message }),
                other => return Err(unexpected("flush", &other)),
            }
        }
    }

    fn reconciled(
        &self,
        a: &mut Attempt,
        writes: &[PendingWrite],
        accepted: Vec<crate::proto::Accepted>,
        cursor: u64,
        lrw: BTreeMap<String, u64>,
    ) -> Result<(), SyncError> {
        if cursor < a.reconcile_cursor {
            return Err(guard(
                "reconcile",
                "reconcileCursorRegression",
                format!("transport reconcile regressed sync cursor: {} -> {cursor}", a.reconcile_cursor),
            ));
        }
        check_last_write_ids("reconcile", &a.last_reconciled, &lrw)?;
        let by_op: BTreeMap<&str, (u64, u64)> = accepted.iter().map(|x| (x.op_id.as_str(), (x.write_id, x.seq))).collect();
        let floor = store::anchor(&self.conn, &self.tenant)?.map(|(seq, _)| seq).unwrap_or(0);
        for w in writes {
            let op = w.op_id.clone().unwrap_or_default();
            // A version-1 push carries no op id: the server knows the write as `replica:write_id`.
            let key = if by_op.contains_key(op.as_str()) { op.clone() } else { format!("{}:{}", self.replica, w.write_id) };
            let Some(&(write_id, seq)) = by_op.get(key.as_str()) else {
                return Err(SyncError::Server { code: "pushIncomplete".into(), message: format!("op {op} was not acknowledged") });
            };
            a.pushed.push(op.clone());
            if seq <= floor {
                a.compacted.push(op.clone());
            }
            if write_id != w.write_id || self.outbox_write_id(&op)? != write_id {
                a.renumbered.insert(op, write_id);
            }
        }
        a.reconcile_cursor = cursor;
        a.last_reconciled = lrw;
        Ok(())
    }

    fn outbox_write_id(&self, op: &str) -> Result<u64, StoreError> {
        Ok(self.conn.query_row("SELECT write_id FROM outbox WHERE op_id = ?1", [op], |r| r.get(0))?)
    }

    /// Pulls the tenant's events until settled (or the page budget is spent), validating every
    /// page and every event against the local hash chain.
    async fn pull(&mut self, rpc: &mut impl Exchange, a: &mut Attempt) -> Result<(), SyncError> {
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut head = store::chain_head(&self.conn, &self.tenant)?;
        let mut point = self.chain_point()?;
        while a.pages < PULL_PAGES_MAX {
            let req = Request::Pull { tenant: self.tenant.clone(), replica: self.replica.clone(), since: a.cursor, limit: PAGE_LIMIT_MAX, head: point.clone() };
            let (items, has_more, next_cursor, lrw) = match self.call(rpc, &req).await? {
                Response::Page { items, has_more, next_cursor, last_reconciled_write_ids } => (items, has_more, next_cursor, last_reconciled_write_ids),
                Response::Rewound { held } => return Err(rewound(held)),
                Response::ResyncRequired { floor_seq, floor_hash } => return Err(SyncError::ResyncRequired { floor_seq, floor_hash }),
                Response::Error { code, message, .. } => return Err(SyncError::Server { code, message }),
                other => return Err(unexpected("pull", &other)),
            };
            a.pages += 1;
            check_page(a.cursor, &items, has_more, next_cursor)?;
            check_last_write_ids("pull", &a.last_reconciled, &lrw)?;
            for item in items {
                let e = EventRow::from(item);
                if !seen.insert(e.op_id.clone()) {
                    return Err(guard("pull", "pullDuplicateOpReplay", format!("transport replayed opId {} during pull pagination", e.op_id)));
                }
                if e.tenant != self.tenant {
                    return Err(guard("pull", "tenantViolation", format!("event {} of tenant {} sent to tenant {}", e.seq, e.tenant, self.tenant)));
                }
                let want = chain::event_hash(&head, &e.kind, &e.tenant, &e.payload);
                if e.prev_hash != head || e.hash != want {
                    return Err(guard("pull", "hashChainViolation", format!("event {} does not extend the local chain", e.seq)));
                }
                head = e.hash.clone();
                point = Some(ChainPoint { seq: e.seq, hash: e.hash.clone() });
                a.items.push(e);
            }
            a.cursor = next_cursor;
            a.last_reconciled = lrw;
            if !has_more {
                a.settled = true;
                break;
            }
        }
        Ok(())
    }

    /// Requires tokens of this device from now on: `pairing` is the key pairing gave it. The
    /// first request of this connection asks for a token (runbook 002: a reconnect forces the
    /// refresh path); each one the server issues is saved in the key store.
    pub fn set_pairing(&mut self, pairing: Key) {
        self.auth = Some(Auth { pairing, state: TokenState::default() });
    }

    /// The identity tokens are bound to: the key store's identity, or (with fixed keys and no
    /// key store) the replica.
    pub fn identity(&self) -> String {
        match &self.keys.ring {
            Ring::Store(ks) => ks.identity_id().to_string(),
            Ring::Fixed(_) => self.replica.clone(),
        }
    }

    /// The device's token state, when it uses tokens.
    pub fn token_state(&self) -> Option<&TokenState> {
        self.auth.as_ref().map(|a| &a.state)
    }

    /// Asks the server for a token with a proof of this device's pairing, checks that the
    /// token is bound to this device, and saves it in the key store.
    pub async fn refresh_token(&mut self, rpc: &mut impl Exchange) -> Result<(), SyncError> {
        let identity = self.identity();
        let Some(auth) = self.auth.as_ref() else { return Ok(()) };
        let nonce = crypto::nonce_from(&mut *self.keys.nonces);
        let proof = token::proof(&auth.pairing, &nonce, &self.tenant, &self.replica, &identity);
        let req = Request::Token { tenant: self.tenant.clone(), replica: self.replica.clone(), identity: identity.clone(), nonce: nonce.to_vec(), proof };
        let (fresh, server_unix_ms) = match rpc.call(&req).await? {
            Response::Token { token, server_unix_ms } => (token, server_unix_ms),
            Response::Error { code, message, .. } => return Err(SyncError::Token { code, detail: message }),
            other => return Err(unexpected("token", &other)),
        };
        let now = self.clock.now_unix_ms();
        let auth = self.auth.as_mut().expect("checked above");
        auth.state
            .accept(fresh.clone(), server_unix_ms, now, &identity, &self.replica, &self.tenant)
            .map_err(|e| SyncError::Token { code: e.code().into(), detail: e.to_string() })?;
        if let Ring::Store(ks) = &mut self.keys.ring {
            ks.save_token(&self.tenant, &fresh, &mut *self.keys.nonces).map_err(StoreError::from)?;
        }
        Ok(())
    }

    /// Sends `req` with this device's token (refreshed first when it needs to be). A refusal of
    /// the token by the server — whose clock decides — drops it, and the request is retried
    /// once with a fresh one; a second refusal is the attempt's error.
    async fn call(&mut self, rpc: &mut impl Exchange, req: &Request) -> Result<Response, SyncError> {
        if self.auth.is_none() {
            return rpc.call(req).await;
        }
        for retry in [false, true] {
            let now = self.clock.now_unix_ms();
            if self.auth.as_ref().is_some_and(|a| a.state.needs_refresh(now)) {
                self.refresh_token(rpc).await?;
            }
            rpc.set_token(self.auth.as_ref().and_then(|a| a.state.token().map(String::from)));
            let resp = rpc.call(req).await?;
            match &resp {
                Response::Error { code, message, .. } if TOKEN_REFUSALS.contains(&code.as_str()) => {
                    self.auth.as_mut().expect("checked above").state.refused(code);
                    if retry {
                        return Err(SyncError::Token { code: code.clone(), detail: message.clone() });
                    }
                }
                _ => return Ok(resp),
            }
        }
        unreachable!("the second try returns")
    }

    /// Commits a whole attempt in one transaction: renumbered write ids, events in, their outbox
    /// entries out, sync position on.
    fn commit(&mut self, a: Attempt) -> Result<(), SyncError> {
        let tx = self.conn.transaction()?;
        let mut next = get_u64(&tx, "next_write_id")?;
        for (op, w) in &a.renumbered {
            tx.execute("UPDATE outbox SET write_id = ?1 WHERE op_id = ?2", rusqlite::params![w, op])?;
            next = next.max(w + 1);
        }
        store::meta_set(&tx, "next_write_id", &next.to_string())?;
        for op in &a.compacted {
            tx.execute("DELETE FROM outbox WHERE op_id = ?1", [op])?;
        }
        // A planted bug of the commit drops the page's events while the cursor moves on.
        let dropped = {
            let items = &a.items;
            let planted =
                |b: &crate::mutations::Bug| matches!(b, crate::mutations::Bug::PullCommit { event_kind } if items.iter().any(|e| e.kind == *event_kind));
            self.mutations.fires("client::commit", planted, || format!("{} pulled events dropped, cursor {}", items.len(), a.cursor)).is_some()
        };
        for e in a.items.iter().filter(|_| !dropped) {
            store::insert_event(&tx, e)?;
            if e.replica == self.replica {
                // A version-1 push carries no op ids: the server names such writes
                // `replica:write_id`, and only the write id finds them in the outbox.
                if e.op_id == format!("{}:{}", self.replica, e.write_id) {
                    tx.execute("DELETE FROM outbox WHERE write_id = ?1", [e.write_id])?;
                } else {
                    tx.execute("DELETE FROM outbox WHERE op_id = ?1", [&e.op_id])?;
                }
            }
        }
        store::meta_set(&tx, "cursor", &a.cursor.to_string())?;
        store::meta_set(&tx, "reconcile_cursor", &a.reconcile_cursor.to_string())?;
        let lrw = serde_json::to_string(&a.last_reconciled).expect("a map serializes");
        store::meta_set(&tx, "last_reconciled_write_ids", &lrw)?;
        tx.commit()?;
        Ok(())
    }

    /// Folds the tenant's events the projections have not folded yet (after a sync, at boot).
    /// An event is folded at most once per projection; aggregates without a key are skipped and
    /// reported incomplete.
    pub fn project(&mut self) -> Result<ApplyReport, StoreError> {
        let mut from = u64::MAX;
        for name in self.engine.names() {
            from = from.min(self.engine.cursor(&self.conn, name, &self.tenant)?);
        }
        let events = store::events_after(&self.conn, &self.tenant, from, u32::MAX)?;
        let sealed = events.iter().map(envelope::sealed_event).collect::<Result<Vec<_>, _>>()?;
        let skipped_before = self.engine.incomplete(&self.conn, &self.tenant)?.len();
        let report = self.engine.apply(&self.conn, &sealed, &self.keys.ring)?;
        if self.engine.incomplete(&self.conn, &self.tenant)?.len() > skipped_before {
            // An aggregate became unreadable (its key is missing) after some of its events were
            // folded: refold without it, so no projection holds part of an aggregate.
            return self.rebuild_projections(&Scope { tenant: Some(self.tenant.clone()), ..Scope::default() });
        }
        Ok(report)
    }

    /// Clears and refolds the projections in `scope` from the events the device holds (runbook
    /// 004 §3: full, per tenant, per projection, up to a time). Recovery: allowed in READ_ONLY.
    pub fn rebuild_projections(&mut self, scope: &Scope) -> Result<ApplyReport, StoreError> {
        let events = store::all_events(&self.conn)?;
        let sealed = events.iter().map(envelope::sealed_event).collect::<Result<Vec<_>, _>>()?;
        Ok(self.engine.rebuild(&self.conn, &sealed, &self.keys.ring, scope)?)
    }

    /// The projections that differ from a replay of this device's events
    /// ([`verify::verify`](crate::projections::verify::verify)). With `since` (what an earlier
    /// verification found good, [`Client::verified_snapshots`]), each projection whose latest
    /// valid snapshot is the one `since` names is replayed from it, with only the events after
    /// it: the cost of the tail, not of the history. That gives the replay from the start's
    /// answer only while the history up to the snapshot is the one it was taken of (the chain
    /// hash there is unchanged) and every key it was taken with is still held; otherwise, and
    /// when an event of the tail does not open, the projection is replayed from the start.
    /// Reads only.
    pub fn verify_projections(&self, since: Option<&VerifiedSnapshots>) -> Result<Vec<Inconsistency>, StoreError> {
        let mut bases = BTreeMap::new();
        if let Some(since) = since.filter(|v| self.still_holds_keys(v)) {
            for (name, base) in &since.by_projection {
                let (latest, _) = self.engine.latest_valid_snapshot(&self.conn, &self.tenant, name)?;
                let Some(snapshot) = latest.filter(|s| s.id == base.snapshot_id) else { continue };
                let cursor = self.engine.cursor(&self.conn, name, &self.tenant)?;
                if snapshot.through_seq <= cursor && store::hash_through(&self.conn, &self.tenant, snapshot.through_seq)? == base.hash {
                    bases.insert(name.clone(), snapshot);
                }
            }
        }
        if !bases.is_empty() {
            // A projection without a base replays from the start, so it needs every event.
            let all = bases.len() < self.engine.names().len();
            let from = if all { 0 } else { bases.values().map(|s| s.through_seq).min().unwrap_or(0) };
            let sealed = sealed(&store::events_after(&self.conn, &self.tenant, from, u32::MAX)?)?;
            if let Some(found) = verify::verify_from(&self.conn, &self.engine, &sealed, &self.keys.ring, &self.tenant, &bases)? {
                return Ok(found);
            }
        }
        let sealed = sealed(&store::all_events(&self.conn)?)?;
        Ok(verify::verify(&self.conn, &self.engine, &sealed, &self.keys.ring, &self.tenant)?)
    }

    /// After the snapshots `ids` were taken of projections a verification found consistent (or
    /// that were just rebuilt from the events): what the next [`Client::verify_projections`] may
    /// start from.
    pub fn verified_snapshots(&self, ids: &[u64]) -> Result<VerifiedSnapshots, StoreError> {
        let mut by_projection = BTreeMap::new();
        for name in self.engine.names() {
            let (latest, _) = self.engine.latest_valid_snapshot(&self.conn, &self.tenant, name)?;
            if let Some(s) = latest.filter(|s| ids.contains(&s.id)) {
                let hash = store::hash_through(&self.conn, &self.tenant, s.through_seq)?;
                by_projection.insert(name.to_string(), VerifiedBase { snapshot_id: s.id, hash });
            }
        }
        let keys = self.keys.ring.aggregates().map(|a| a.into_iter().collect()).unwrap_or_default();
        Ok(VerifiedSnapshots { by_projection, keys })
    }

    fn still_holds_keys(&self, v: &VerifiedSnapshots) -> bool {
        match self.keys.ring.aggregates() {
            Ok(now) => {
                let now: BTreeSet<String> = now.into_iter().collect();
                v.keys.is_subset(&now)
            }
            Err(_) => false,
        }
    }

    /// The saga reconcile of the device's start path (runbook 000, "Saga stuck state"): every
    /// saga's request re-derived from the tenant counts, and every effect not `done` delivered
    /// through `sink`. A device runs it at every start, before new work.
    pub async fn reconcile_sagas(&mut self, sagas: &[AchievementSaga], sink: &mut impl RemoteEffectSink) -> Result<Reconciled, SagaError> {
        let counts = saga::tenant_counts(&self.conn)?;
        saga::reconcile_remote(&self.conn, sagas, &counts, sink, &*self.clock).await
    }

    /// Arms this device's planted bugs of a test plan ([`crate::mutations`]): the commit of a
    /// pull, the projections' incremental fold and the snapshot writer consult them.
    pub fn plant(&mut self, mutations: crate::mutations::Mutations) {
        self.engine.plant(mutations.clone());
        self.mutations = mutations;
    }

    /// The projections' engine, for operator tools (snapshots, health, rows).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The device's database, for operator tools that work on it (snapshots, sagas, artifacts,
    /// migrations, diagnostics). One connection per database: tools borrow this one.
    pub fn db(&self) -> &Connection {
        &self.conn
    }

    /// The device's keys.
    pub fn keys(&self) -> &DeviceKeys {
        &self.keys
    }

    /// The device's keys and its database at once, for key operations that record markers in
    /// the database (the vault key: runbook 002).
    pub fn keys_and_db(&mut self) -> (&mut DeviceKeys, &Connection) {
        (&mut self.keys, &self.conn)
    }

    /// The device's keys, to import or restore them (runbook 000).
    pub fn keys_mut(&mut self) -> &mut DeviceKeys {
        &mut self.keys
    }

    /// The device's key store, or `keys:keyStoreUninitialized` for a device on fixed keys.
    fn key_store(keys: &mut DeviceKeys) -> Result<(&mut KeyStore, &mut (dyn RngCore + Send)), KeyError> {
        match &mut keys.ring {
            Ring::Store(ks) => Ok((ks, &mut *keys.nonces)),
            Ring::Fixed(_) => Err(KeyError::KeyStoreUninitialized),
        }
    }

    /// Asks `peer` (a member's key service) for the epochs of `group` this device lacks and
    /// stores them (runbook 002, "request-group-key"; see [`crate::keys::exchange`]).
    pub async fn request_group_keys(&mut self, peer: &mut impl Exchange, group: &str, policy: &RetryPolicy) -> Result<GroupKeysFetched, KeyError> {
        let (ks, rng) = Self::key_store(&mut self.keys)?;
        exchange::request_group_keys(peer, ks, group, policy, rng).await
    }

    /// Recovers the initialized vault key this device lost from the first of `peers` that gives
    /// a share (runbook 002, "request from peers"); never regenerates it.
    pub async fn recover_vault_from_peers<E: Exchange>(&mut self, peers: &mut [E], group: &str, policy: &RetryPolicy) -> Result<VaultRecovered, KeyError> {
        let (ks, rng) = Self::key_store(&mut self.keys)?;
        exchange::request_vault_share(peers, ks, &mut self.conn, group, policy, rng).await
    }

    /// `projection`'s rows for this device's tenant.
    pub fn projection_rows(&self, projection: &str) -> Result<Vec<Vec<String>>, StoreError> {
        Ok(self.engine.rows(&self.conn, projection, &self.tenant)?)
    }

    /// Appends a snapshot of every active projection (a command: refused in READ_ONLY, and
    /// while aggregates are skipped). Returns the snapshot ids.
    pub fn snapshot_projections(&self) -> Result<Vec<u64>, StoreError> {
        Ok(self.engine.snapshot(&self.conn, &self.tenant, self.clock.now_unix_ms())?)
    }

    /// Restores `projection` from its latest valid snapshot plus the events after it (runbook
    /// 004 §4.2). Recovery: allowed in READ_ONLY.
    pub fn restore_projection(&mut self, projection: &str) -> Result<crate::projections::snapshot::Restored, StoreError> {
        let events = store::all_events(&self.conn)?;
        let sealed = events.iter().map(envelope::sealed_event).collect::<Result<Vec<_>, _>>()?;
        Ok(self.engine.restore_from_snapshot(&self.conn, &sealed, &self.keys.ring, &self.tenant, projection)?)
    }

    /// The last seq `projection` folded.
    pub fn projection_cursor(&self, projection: &str) -> Result<u64, StoreError> {
        Ok(self.engine.cursor(&self.conn, projection, &self.tenant)?)
    }

    /// Aggregates the projections skipped (keys missing), every projection.
    pub fn incomplete(&self) -> Result<Vec<Incomplete>, StoreError> {
        Ok(self.engine.incomplete(&self.conn, &self.tenant)?)
    }

    /// The resilience mode.
    pub fn mode(&self) -> Result<Mode, StoreError> {
        resilience::mode(&self.conn)
    }

    /// Sets the resilience mode (an operator action, allowed in every mode); in DEGRADED,
    /// `disabled` names the projections to switch off.
    pub fn set_mode(&self, mode: Mode, disabled: &[&str]) -> Result<(), StoreError> {
        resilience::set_mode(&self.conn, mode, disabled)
    }

    /// The health status of runbook 004 §7, given how the event store answered.
    pub fn health(&self, event_store: EventStoreStatus) -> Result<Health, StoreError> {
        Ok(self.engine.health(&self.conn, event_store)?)
    }

    /// An event's payload, opened with the device's keys.
    pub fn open_payload(&self, e: &EventRow) -> Result<Vec<u8>, envelope::Unreadable> {
        envelope::open(&self.keys.ring, &e.tenant, &e.aggregate, &e.kind, &e.payload)
    }

    /// Count and chain head of this device's tenant, to compare with the server's.
    pub fn diagnostics(&self) -> Result<(u64, Vec<u8>), StoreError> {
        let count: u64 = self.conn.query_row("SELECT COUNT(*) FROM events WHERE tenant = ?1", [&self.tenant], |r| r.get(0))?;
        Ok((count, store::chain_head(&self.conn, &self.tenant)?))
    }
}

fn unexpected(stage: &str, r: &Response) -> SyncError {
    SyncError::Server { code: "unexpectedResponse".into(), message: format!("{stage} got {r:?}") }
}

/// The page invariants: a page that says there is more is not empty, its `nextCursor` is its last
/// item's position (or, for an empty page, where it started), and the cursor never moves back.
fn check_page(cursor: u64, items: &[WireEvent], has_more: bool, next_cursor: u64) -> Result<(), SyncError> {
    if has_more && items.is_empty() {
        return Err(guard("pull", "pullPageInvariantViolation", "hasMore=true with an empty pull page".into()));
    }
    if next_cursor < cursor {
        return Err(guard("pull", "pullCursorRegression", format!("transport returned regressing sync cursor: {cursor} -> {next_cursor}")));
    }
    let tail = items.last().map(|e| e.seq).unwrap_or(cursor);
    if tail != next_cursor {
        return Err(guard("pull", "pullPageInvariantViolation", format!("nextCursor {next_cursor} does not match page tail {tail}")));
    }
    let mut prev = cursor;
    for item in items {
        if item.seq <= prev {
            return Err(guard("pull", "pullCursorRegression", format!("transport returned regressing sync cursor: item {} after {prev}", item.seq)));
        }
        prev = item.seq;
    }
    Ok(())
}

/// `lastReconciledWriteIds` never move backwards for any replica.
fn check_last_write_ids(stage: &'static str, old: &BTreeMap<String, u64>, new: &BTreeMap<String, u64>) -> Result<(), SyncError> {
    for (replica, &was) in old {
        let now = new.get(replica).copied().unwrap_or(0);
        if now < was {
            return Err(guard(stage, "lastWriteIdRegression", format!("regressed lastReconciledWriteIds for {replica}: {was} -> {now}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(seq: u64) -> WireEvent {
        WireEvent {
            seq,
            op_id: format!("op-{seq}"),
            tenant: "t".into(),
            aggregate: "a".into(),
            kind: "k".into(),
            replica: "r".into(),
            write_id: seq,
            payload: vec![],
            prev_hash: vec![],
            hash: vec![],
        }
    }

    fn sig(r: Result<(), SyncError>) -> Option<String> {
        r.err().and_then(|e| e.signature())
    }

    #[test]
    fn page_guardrails_have_their_signatures() {
        assert_eq!(check_page(5, &[item(6), item(7)], true, 7).ok(), Some(()));
        assert_eq!(sig(check_page(5, &[], true, 5)).as_deref(), Some("pull:pullPageInvariantViolation"));
        assert_eq!(sig(check_page(5, &[item(6)], false, 9)).as_deref(), Some("pull:pullPageInvariantViolation"));
        assert_eq!(sig(check_page(5, &[], false, 8)).as_deref(), Some("pull:pullPageInvariantViolation"));
        assert_eq!(sig(check_page(5, &[], false, 4)).as_deref(), Some("pull:pullCursorRegression"));
        assert_eq!(sig(check_page(5, &[item(3)], false, 3)).as_deref(), Some("pull:pullCursorRegression"));
    }

    /// Keys for aggregate `a`, held in memory.
    pub(crate) fn test_keys() -> DeviceKeys {
        use rand_chacha::rand_core::SeedableRng;
        let ring = Ring::Fixed([("a".to_string(), Key::from_bytes([7; 32]))].into());
        DeviceKeys::new(ring, Box::new(rand_chacha::ChaCha8Rng::seed_from_u64(1)))
    }

    fn device(dir: &tempfile::TempDir) -> Client {
        let path = dir.path().join("device.db");
        Client::open(path.to_str().unwrap(), "client-1", "acme", Box::new(crate::clock::FixedClock(0)), test_keys()).unwrap()
    }

    #[test]
    fn hydrate_refuses_malformed_or_foreign_states_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = device(&dir);
        c.append("a", "k", b"x").unwrap();
        let good = c.export_state().unwrap();
        let mut cases = Vec::new();
        let mut s = good.clone();
        s.replica = "client-2".into();
        cases.push(s);
        let mut s = good.clone();
        s.last_reconciled_write_ids.insert("client-1".into(), 0);
        cases.push(s);
        let mut s = good.clone();
        s.cursor = 9;
        cases.push(s);
        for bad in cases {
            let err = c.hydrate(&bad).unwrap_err();
            assert_eq!(err.signature().as_deref(), Some("hydrate:hydrateGuardrailViolation"), "{err}");
            assert_eq!(c.export_state().unwrap(), good, "a refused hydrate changed the state");
        }
        c.hydrate(&good).unwrap();
    }

    #[test]
    fn a_database_belongs_to_one_replica_and_keeps_its_writes() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = device(&dir);
        let (w1, op1) = c.append("a", "k", b"one").unwrap();
        let (w2, op2) = c.append("a", "k", b"two").unwrap();
        assert_eq!((w1, w2), (1, 2));
        assert_ne!(op1, op2);
        drop(c);
        let c = device(&dir);
        assert_eq!(c.boots(), 2);
        assert_eq!(c.outbox().unwrap().len(), 2);
        let path = dir.path().join("device.db");
        let other = Client::open(path.to_str().unwrap(), "client-9", "acme", Box::new(crate::clock::FixedClock(0)), test_keys());
        assert!(matches!(other, Err(StoreError::Invalid { .. })));
    }

    /// A database file whose bytes are not a database: SQLite's header magic gone.
    fn damage_header(dir: &tempfile::TempDir) {
        let p = dir.path().join("device.db");
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[0] ^= 0x5a;
        std::fs::write(&p, bytes).unwrap();
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_at_open_and_recreated_with_its_evidence_kept() {
        let dir = tempfile::tempdir().unwrap();
        let fs = crate::fs::StdFs::new(dir.path());
        let mut c = device(&dir);
        c.append("a", "k", b"x").unwrap();
        drop(c);
        // A bit-flipped header, then plain garbage over a second database.
        damage_header(&dir);
        for round in 1..=2 {
            let damaged = std::fs::read(dir.path().join("device.db")).unwrap();
            let path = dir.path().join("device.db");
            let opened = Client::open(path.to_str().unwrap(), "client-1", "acme", Box::new(crate::clock::FixedClock(0)), test_keys());
            assert_eq!(opened.err().map(|e| e.code()), Some("store:corrupt"), "round {round}");
            let r = Client::recreate(&fs, "device.db").unwrap();
            assert!(r.damage.contains("not a database"), "{}", r.damage);
            assert_eq!(r.kept[0], format!("device.db.corrupt-{round}"));
            assert_eq!(std::fs::read(dir.path().join(&r.kept[0])).unwrap(), damaged, "the evidence is the damaged file, unchanged");
            let fresh = device(&dir);
            assert_eq!((fresh.boots(), fresh.outbox().unwrap().len()), (1, 0), "a fresh database");
            drop(fresh);
            std::fs::write(dir.path().join("device.db"), vec![0x42u8; 8192]).unwrap();
        }
    }

    #[test]
    fn a_healthy_database_is_never_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let fs = crate::fs::StdFs::new(dir.path());
        let mut c = device(&dir);
        c.append("a", "k", b"x").unwrap();
        drop(c);
        assert_eq!(Client::recreate(&fs, "device.db").unwrap_err().code(), "store:invalid");
        assert_eq!(device(&dir).outbox().unwrap().len(), 1, "the database is untouched");
        assert!(!dir.path().join("device.db.corrupt-1").exists());
    }

    #[test]
    fn full_resync_anchors_the_chain_and_keeps_pending_writes() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = device(&dir);
        c.append("a", "k", b"pending").unwrap();
        c.full_resync(40, &[7u8; 32]).unwrap();
        assert_eq!(c.anchor().unwrap(), Some((40, vec![7u8; 32])));
        assert_eq!(c.export_state().unwrap().cursor, 40);
        assert_eq!(c.outbox().unwrap().len(), 1);
        assert_eq!(c.diagnostics().unwrap(), (0, vec![7u8; 32]));
    }

    /// Stores events `seqs` of aggregate `a` (as a sync would: sealed, chained; `edit` names
    /// their payloads) and folds them.
    fn pulled(c: &mut Client, seqs: std::ops::RangeInclusive<u64>, edit: &str) {
        let key = Key::from_bytes([7; 32]);
        for seq in seqs {
            let head = store::chain_head(c.db(), "acme").unwrap();
            let payload = envelope::seal(&key, &[seq as u8; 24], "acme", "a", "edited", 0, format!("{edit} {seq}").as_bytes());
            let hash = chain::event_hash(&head, "edited", "acme", &payload).to_vec();
            let e = EventRow {
                seq,
                op_id: format!("op-{seq}"),
                tenant: "acme".into(),
                aggregate: "a".into(),
                kind: "edited".into(),
                replica: "client-9".into(),
                write_id: seq,
                payload,
                prev_hash: head,
                hash,
            };
            store::insert_event(c.db(), &e).unwrap();
        }
        c.project().unwrap();
    }

    #[test]
    fn verifying_from_a_verified_snapshot_answers_as_a_replay_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = device(&dir);
        pulled(&mut c, 1..=5, "edit");
        assert_eq!(c.verify_projections(None).unwrap(), vec![]);
        let since = c.verified_snapshots(&c.snapshot_projections().unwrap()).unwrap();
        pulled(&mut c, 6..=8, "edit");
        assert_eq!(c.verify_projections(Some(&since)).unwrap(), vec![]);

        // Only the tail is replayed: an event below the snapshot that went missing (the chain
        // hash at the snapshot unchanged) is not read, which a replay from the start notices.
        let gone: EventRow = store::events_after(c.db(), "acme", 1, 1).unwrap().remove(0);
        c.db().execute("DELETE FROM events WHERE seq = 2", []).unwrap();
        assert_eq!(c.verify_projections(Some(&since)).unwrap(), vec![], "the tail alone is consistent");
        assert_eq!(c.verify_projections(None).unwrap().len(), 2, "a replay from the start misses event 2 in both projections");
        store::insert_event(c.db(), &gone).unwrap();

        // A corrupt row after the snapshot is found either way, with the same first difference.
        c.db().execute_batch("UPDATE proj_tenant_counters SET count = count + 1").unwrap();
        let found = c.verify_projections(Some(&since)).unwrap();
        assert_eq!(found.iter().map(|i| i.projection).collect::<Vec<_>>(), ["tenant_counters"]);
        assert_eq!(found, c.verify_projections(None).unwrap());
        c.rebuild_projections(&Scope::default()).unwrap();

        // A key lost since the snapshot: the snapshot holds folds a replay with the keys held
        // now would skip, so the check starts from the beginning, tail or no tail.
        let since = c.verified_snapshots(&c.snapshot_projections().unwrap()).unwrap();
        c.keys_mut().ring = Ring::Fixed(BTreeMap::new());
        let found = c.verify_projections(Some(&since)).unwrap();
        assert_eq!(found.len(), 2, "both projections folded aggregate a: {found:?}");
        assert_eq!(found, c.verify_projections(None).unwrap());
        c.keys_mut().ring = test_keys().ring;

        // The history below the snapshot replaced (a hydrate back to seq 3, then other events
        // pulled): the chain hash at the snapshot differs, so the check starts from the beginning
        // (the snapshot's folds are of events the device no longer holds).
        c.hydrate(&ExportedState { cursor: 3, ..c.export_state().unwrap() }).unwrap();
        pulled(&mut c, 4..=9, "other");
        assert_eq!(c.verify_projections(Some(&since)).unwrap(), vec![]);
        c.db().execute_batch("UPDATE proj_aggregate_state SET events = events + 1").unwrap();
        let found = c.verify_projections(Some(&since)).unwrap();
        assert_eq!(found.iter().map(|i| i.projection).collect::<Vec<_>>(), ["aggregate_state"]);
        assert_eq!(found, c.verify_projections(None).unwrap());
    }

    #[test]
    fn write_id_regressions_are_refused_per_stage() {
        let old: BTreeMap<String, u64> = [("a".to_string(), 3)].into();
        let new: BTreeMap<String, u64> = [("a".to_string(), 2)].into();
        assert_eq!(sig(check_last_write_ids("pull", &old, &new)).as_deref(), Some("pull:lastWriteIdRegression"));
        assert_eq!(sig(check_last_write_ids("reconcile", &old, &new)).as_deref(), Some("reconcile:lastWriteIdRegression"));
        assert!(check_last_write_ids("pull", &old, &old).is_ok());
    }
}

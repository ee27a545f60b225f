//! The server: holds the total order of every tenant's events and answers push and pull.
//!
//! A push appends each write once, identified by its op id: a retry (or a duplicated or
//! replayed request) is answered with the write id and sequence number the op already has. A
//! write whose `(replica, write_id)` the server already holds for a *different* op is stale
//! (the device's write ids went backwards): the push is refused with `staleWriteId` and the
//! replica's last write id, so the device can renumber. Every push is one transaction,
//! committed before the answer leaves.
//!
//! A replica is bound to the tenant of its first request; a request for another tenant is
//! refused (`rbacDenied`) and reported, never silently merged.
//!
//! A server with a token service ([`Server::with_tokens`]) answers token requests and admits a
//! push or pull only with a live token of that replica and tenant, judged by its own clock;
//! anything else is refused with the token's typed error (`keys:tokenInvalid`,
//! `keys:tokenExpired`, `keys:tokenIdentityMismatch`) before the request touches the store; a
//! live token of another tenant than the request's is refused `rbacDenied`.
//!
//! The server's event store is the source of truth, and it can die and come back (runbook 004):
//! [`modes`] (NORMAL / DEGRADED / READ_ONLY, per server and per tenant; READ_ONLY answers pushes
//! "retry later"), [`projections`] folded on the server, full [`backup`]s and a continuous
//! [`archive`] of sealed segments, and the [`restore`] procedure. A request naming a chain head
//! the server does not hold (a device ahead of a restored server) is answered
//! [`Response::Rewound`] and changes nothing.

pub mod archive;
pub mod backup;
pub mod modes;
pub mod projections;
pub mod restore;

pub use archive::{ArchiveMode, Segment, SegmentManifest};
pub use backup::{BackupManifest, FullBackup};
pub use modes::{ModeScope, ServerWork, Transition};
pub use projections::StoredForm;

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension};

use crate::chain;
use crate::error::StoreError;
use crate::keys::token::TokenAuth;
use crate::mutations::{Bug, Mutations};
use crate::projections::Engine;
use crate::proto::{Accepted, ChainPoint, PendingWrite, Request, Response, WireEvent, PAGE_LIMIT_MAX};
use crate::store::{self, EventRow};

const SERVER_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS replicas(
    replica TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    last_write_id INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS pruned(
    op_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    replica TEXT NOT NULL,
    write_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    payload_sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS anchors(tenant TEXT NOT NULL, seq INTEGER NOT NULL, hash BLOB NOT NULL, PRIMARY KEY(tenant, seq));
";

/// Server settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerOptions {
    /// Keep at least this many events per tenant; older ones are compacted away (a tombstone per
    /// op stays, so retries stay idempotent), and a device behind them must resync in full.
    pub retention_events: Option<u64>,
    /// Archive every committed push as a sealed segment, shipped to a backup node
    /// ([`archive`]); `None`: no archive. The operator may change it later
    /// ([`Server::set_archive_mode`]); the store keeps that choice over this default.
    pub archive: Option<ArchiveMode>,
}

/// The server's store.
pub struct Server {
    conn: Connection,
    options: ServerOptions,
    tokens: Option<TokenAuth>,
    engine: Engine,
    mutations: Mutations,
}

/// A compacted write: enough to keep pushes idempotent and to account for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    pub op_id: String,
    pub tenant: String,
    pub replica: String,
    pub write_id: u64,
    pub seq: u64,
    pub payload_sha256: String,
}

/// Per-tenant consistency diagnostics: how many events, and the chain head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics {
    pub tenant: String,
    pub count: u64,
    pub head: Vec<u8>,
}

enum Refusal {
    Store(StoreError),
    Answer(Response),
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal::Store(e)
    }
}

impl From<rusqlite::Error> for Refusal {
    fn from(e: rusqlite::Error) -> Self {
        Refusal::Store(e.into())
    }
}

impl Server {
    /// Opens (or creates) the server database at `path`, keeping every event.
    pub fn open(path: &str) -> Result<Server, StoreError> {
        Self::open_with(path, ServerOptions::default())
    }

    /// Opens (or creates) the server database at `path` with `options`.
    pub fn open_with(path: &str, options: ServerOptions) -> Result<Server, StoreError> {
        let conn = store::open(path)?;
        conn.execute_batch(store::EVENTS_SCHEMA)?;
        conn.execute_batch(SERVER_SCHEMA)?;
        conn.execute_batch(crate::blobs::registry::SCHEMA)?;
        conn.execute_batch(modes::SCHEMA)?;
        conn.execute_batch(archive::SCHEMA)?;
        let engine = Engine::builtin();
        engine.install(&conn)?;
        Ok(Server { conn, options, tokens: None, engine, mutations: Mutations::none() })
    }

    /// Arms the server's planted bugs of a test plan ([`crate::mutations`]): the event-store
    /// writer of a push consults them.
    pub fn plant(&mut self, mutations: Mutations) {
        self.mutations = mutations;
    }

    /// The row a planted [`Bug::StoredPayload`] writes instead of `row`, if one fires: its
    /// payload with a byte appended.
    fn tampered(mutations: &Mutations, row: &EventRow) -> Option<EventRow> {
        let planted = |b: &Bug| matches!(b, Bug::StoredPayload { event_kind } if *event_kind == row.kind);
        mutations.fires("server::push", planted, || format!("seq {} ({}) of {}", row.seq, row.kind, row.tenant))?;
        let mut stored = row.clone();
        stored.payload.push(0);
        Some(stored)
    }

    /// The settings the server was opened with.
    pub fn options(&self) -> ServerOptions {
        self.options
    }

    /// The connection the blob registry lives on (the blob layer borrows it step by step).
    pub fn registry_conn(&self) -> &Connection {
        &self.conn
    }

    /// Requires tokens from now on, issued and checked by `tokens`.
    pub fn with_tokens(mut self, tokens: TokenAuth) -> Server {
        self.tokens = Some(tokens);
        self
    }

    /// Answers one request that carries no token.
    pub fn handle(&mut self, req: Request) -> Response {
        self.handle_with_token(None, req)
    }

    /// Answers one request carrying `token`. Without a token service the token is ignored.
    pub fn handle_with_token(&mut self, token: Option<&str>, req: Request) -> Response {
        if let Some(auth) = self.tokens.as_mut() {
            let admitted = match &req {
                Request::Token { tenant, replica, identity, nonce, proof } => {
                    return match auth.issue(tenant, replica, identity, nonce, proof) {
                        Ok((token, server_unix_ms)) => Response::Token { token, server_unix_ms },
                        Err(e) => Response::error(e.code(), e.to_string()),
                    };
                }
                Request::Push { tenant, replica, .. } | Request::Pull { tenant, replica, .. } => match auth.admit(token, replica) {
                    // A live token of another tenant: the replica asks for what it may not see.
                    Ok(c) if &c.tenant != tenant => {
                        return Response::error("rbacDenied", format!("replica {replica} holds a token of tenant {}, not {tenant}", c.tenant));
                    }
                    r => r.map(|_| ()),
                },
                Request::Blob(_) | Request::Keys(_) => Ok(()),
            };
            if let Err(e) = admitted {
                return Response::error(e.code(), e.to_string());
            }
        }
        let result = match req {
            Request::Push { tenant, replica, writes, head } => self.push(&tenant, &replica, &writes, head.as_ref()),
            Request::Pull { tenant, replica, since, limit, head } => self.pull(&tenant, &replica, since, limit, head.as_ref()),
            // Blob requests wait on the object store: `blobs::serve` hands them to the blob layer.
            Request::Blob(_) => Err(Refusal::Answer(Response::error("blobServiceRequired", "blob requests are served by the blob layer"))),
            Request::Token { .. } => Err(Refusal::Answer(Response::error("tokenServiceDisabled", "this server issues no tokens"))),
            // The server holds no keys: members ask each other (`keys::exchange`).
            Request::Keys(_) => {
                Err(Refusal::Answer(Response::error("keys:notAKeyPeer", "the sync server holds no keys: key requests go to the group's members")))
            }
        };
        let resp = match result {
            Ok(r) | Err(Refusal::Answer(r)) => r,
            Err(Refusal::Store(e)) => return Response::error(e.code(), e.to_string()),
        };
        // A synchronous archive acknowledges a push only once its events are on the backup node.
        self.acknowledge(resp).unwrap_or_else(|e| Response::error(e.code(), e.to_string()))
    }

    /// Binds `replica` to `tenant` on first sight; refuses it for any other tenant.
    fn authorize(conn: &Connection, tenant: &str, replica: &str) -> Result<(), Refusal> {
        let bound: Option<String> = conn.query_row("SELECT tenant FROM replicas WHERE replica = ?1", [replica], |r| r.get(0)).optional()?;
        match bound {
            Some(t) if t == tenant => Ok(()),
            Some(t) => Err(Refusal::Answer(Response::error("rbacDenied", format!("replica {replica} belongs to tenant {t}, not {tenant}")))),
            None => {
                conn.execute("INSERT INTO replicas(replica, tenant) VALUES (?1, ?2)", [replica, tenant])?;
                Ok(())
            }
        }
    }

    /// Refuses a request that names a chain head this server does not hold.
    fn check_head(conn: &Connection, tenant: &str, head: Option<&ChainPoint>) -> Result<(), Refusal> {
        match head {
            Some(h) if !Self::holds(conn, tenant, h)? => Err(Refusal::Answer(Response::Rewound { held: Self::head_point(conn, tenant)? })),
            _ => Ok(()),
        }
    }

    /// Whether `tenant`'s chain here passes through `point`: a stored event or an anchor with
    /// its hash, or an event compacted away (its tombstone keeps its seq, and the anchor's hash
    /// covers it; a device that far behind is told to resync by the pull).
    pub(crate) fn holds(conn: &Connection, tenant: &str, point: &ChainPoint) -> Result<bool, StoreError> {
        let n: u64 = conn.query_row(
            "SELECT (SELECT COUNT(*) FROM events WHERE seq = ?1 AND tenant = ?2 AND hash = ?3)
                  + (SELECT COUNT(*) FROM anchors WHERE seq = ?1 AND tenant = ?2 AND hash = ?3)
                  + (SELECT COUNT(*) FROM pruned WHERE seq = ?1 AND tenant = ?2)",
            rusqlite::params![point.seq, tenant, point.hash],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    /// `tenant`'s chain head here: its last event, or its anchor, or none.
    pub(crate) fn head_point(conn: &Connection, tenant: &str) -> Result<Option<ChainPoint>, StoreError> {
        let last: Option<(u64, Vec<u8>)> = conn
            .prepare_cached("SELECT seq, hash FROM events WHERE tenant = ?1 ORDER BY seq DESC LIMIT 1")?
            .query_row([tenant], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(match last {
            Some((seq, hash)) => Some(ChainPoint { seq, hash }),
            None => store::anchor(conn, tenant)?.map(|(seq, hash)| ChainPoint { seq, hash }),
        })
    }

    fn push(&mut self, tenant: &str, replica: &str, writes: &[PendingWrite], head: Option<&ChainPoint>) -> Result<Response, Refusal> {
        let tx = self.conn.transaction()?;
        // Authorized first: a refusal below names the tenant's mode and chain head, which only
        // the tenant's own replicas may learn. Every refusal rolls the binding back.
        Self::authorize(&tx, tenant, replica)?;
        if let Some(answer) = modes::push_refusal(&tx, tenant)? {
            return Err(Refusal::Answer(answer));
        }
        Self::check_head(&tx, tenant, head)?;
        archive::check_window(&tx, archive::mode(&tx, self.options.archive)?)?;
        let mut appended: Vec<EventRow> = Vec::new();
        let mut accepted = Vec::with_capacity(writes.len());
        let mut head = store::chain_head(&tx, tenant)?;
        let mut next_seq: u64 = tx.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM events", [], |r| r.get(0))?;
        for w in writes {
            let op_id = w.op_id.clone().unwrap_or_else(|| format!("{replica}:{}", w.write_id));
            let known: Option<(String, u64, u64)> = tx
                .query_row(
                    "SELECT replica, write_id, seq FROM events WHERE op_id = ?1
                     UNION ALL SELECT replica, write_id, seq FROM pruned WHERE op_id = ?1",
                    [&op_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            if let Some((owner, write_id, seq)) = known {
                if owner != replica {
                    return Err(Refusal::Answer(Response::error("opConflict", format!("op {op_id} belongs to replica {owner}"))));
                }
                accepted.push(Accepted { op_id, write_id, seq });
                continue;
            }
            let last = Self::last_write_id(&tx, replica)?;
            if w.write_id <= last {
                return Err(Refusal::Answer(Response::Error {
                    code: "staleWriteId".into(),
                    message: format!("write id {} of replica {replica} is taken by another op; last is {last}", w.write_id),
                    last_write_id: Some(last),
                }));
            }
            let hash = chain::event_hash(&head, &w.kind, tenant, &w.payload);
            let row = EventRow {
                seq: next_seq,
                op_id: op_id.clone(),
                tenant: tenant.into(),
                aggregate: w.aggregate.clone(),
                kind: w.kind.clone(),
                replica: replica.into(),
                write_id: w.write_id,
                payload: w.payload.clone(),
                prev_hash: head,
                hash: hash.to_vec(),
            };
            match Self::tampered(&self.mutations, &row) {
                Some(stored) => store::insert_event(&tx, &stored)?,
                None => store::insert_event(&tx, &row)?,
            }
            tx.execute("UPDATE replicas SET last_write_id = MAX(last_write_id, ?1) WHERE replica = ?2", rusqlite::params![w.write_id, replica])?;
            accepted.push(Accepted { op_id, write_id: w.write_id, seq: next_seq });
            appended.push(row);
            head = hash.to_vec();
            next_seq += 1;
        }
        // The archive seals what this push committed in the same transaction, before any
        // compaction could drop it.
        if archive::mode(&tx, self.options.archive)?.is_some() {
            archive::seal(&tx, &appended)?;
        }
        if let Some(keep) = self.options.retention_events {
            if modes::enabled(&tx, Some(tenant), ServerWork::Compaction)? {
                Self::compact(&tx, tenant, keep)?;
            }
        }
        let cursor = Self::tenant_cursor(&tx, tenant)?;
        let last_reconciled_write_ids = Self::last_reconciled(&tx, tenant)?;
        // What this answer acknowledges is the client's reconcile state from the server's view
        // (`crdt:<replica>`), which blob attach is judged against: it commits with the push.
        crate::blobs::registry::record_reconcile(&tx, replica, cursor, &last_reconciled_write_ids)?;
        tx.commit()?;
        if !appended.is_empty() {
            // Derived and disposable: a fold that fails now is caught up by the next push or a
            // rebuild, and never fails the push it follows.
            let _ = self.project();
        }
        Ok(Response::Pushed { accepted, cursor, last_reconciled_write_ids })
    }

    /// Compacts `tenant` down to its last `keep` events once it holds twice as many: each
    /// compacted write leaves a tombstone, and the chain gets a new anchor.
    fn compact(conn: &Connection, tenant: &str, keep: u64) -> Result<(), StoreError> {
        let count: u64 = conn.query_row("SELECT COUNT(*) FROM events WHERE tenant = ?1", [tenant], |r| r.get(0))?;
        if count <= keep.max(1) * 2 {
            return Ok(());
        }
        let (floor, hash): (u64, Vec<u8>) = conn.query_row(
            "SELECT seq, hash FROM events WHERE tenant = ?1 ORDER BY seq LIMIT 1 OFFSET ?2",
            rusqlite::params![tenant, count - keep - 1],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let doomed: Vec<EventRow> = store::all_events(conn)?.into_iter().filter(|e| e.tenant == tenant && e.seq <= floor).collect();
        for e in &doomed {
            use sha2::{Digest, Sha256};
            conn.execute(
                "INSERT INTO pruned(op_id, tenant, replica, write_id, seq, payload_sha256) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                rusqlite::params![e.op_id, e.tenant, e.replica, e.write_id, e.seq, hex::encode(Sha256::digest(&e.payload))],
            )?;
        }
        conn.execute("DELETE FROM events WHERE tenant = ?1 AND seq <= ?2", rusqlite::params![tenant, floor])?;
        conn.execute("INSERT INTO anchors(tenant, seq, hash) VALUES (?1, ?2, ?3)", rusqlite::params![tenant, floor, hash])?;
        store::set_anchor(conn, tenant, floor, &hash)
    }

    fn pull(&mut self, tenant: &str, replica: &str, since: u64, limit: u32, head: Option<&ChainPoint>) -> Result<Response, Refusal> {
        Self::authorize(&self.conn, tenant, replica)?;
        Self::check_head(&self.conn, tenant, head)?;
        if let Some((floor_seq, floor_hash)) = store::anchor(&self.conn, tenant)? {
            if since < floor_seq {
                return Ok(Response::ResyncRequired { floor_seq, floor_hash });
            }
        }
        let limit = limit.clamp(1, PAGE_LIMIT_MAX);
        let mut items = store::events_after(&self.conn, tenant, since, limit + 1)?;
        // A synchronous archive shows only what it holds: an event not yet on the backup node is
        // neither acknowledged nor served, so no device holds history the archive could lose.
        let horizon = archive::visible_through(&self.conn, self.archive_mode()?)?;
        items.retain(|e| e.seq <= horizon);
        let has_more = items.len() > limit as usize;
        items.truncate(limit as usize);
        let next_cursor = items.last().map(|e| e.seq).unwrap_or(since);
        Ok(Response::Page {
            items: items.into_iter().map(WireEvent::from).collect(),
            has_more,
            next_cursor,
            last_reconciled_write_ids: Self::last_reconciled(&self.conn, tenant)?,
        })
    }

    fn last_write_id(conn: &Connection, replica: &str) -> Result<u64, StoreError> {
        Ok(conn.query_row("SELECT COALESCE(MAX(last_write_id), 0) FROM replicas WHERE replica = ?1", [replica], |r| r.get(0))?)
    }

    fn tenant_cursor(conn: &Connection, tenant: &str) -> Result<u64, StoreError> {
        Ok(conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events WHERE tenant = ?1", [tenant], |r| r.get(0))?)
    }

    fn last_reconciled(conn: &Connection, tenant: &str) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut st = conn.prepare_cached("SELECT replica, last_write_id FROM replicas WHERE tenant = ?1 AND last_write_id > 0")?;
        let rows = st.query_map([tenant], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every event the server holds, in total order.
    pub fn events(&self) -> Result<Vec<EventRow>, StoreError> {
        store::all_events(&self.conn)
    }

    /// Every compacted write.
    pub fn tombstones(&self) -> Result<Vec<Tombstone>, StoreError> {
        let mut st = self.conn.prepare_cached("SELECT op_id, tenant, replica, write_id, seq, payload_sha256 FROM pruned ORDER BY seq")?;
        let rows = st.query_map([], |r| {
            Ok(Tombstone { op_id: r.get(0)?, tenant: r.get(1)?, replica: r.get(2)?, write_id: r.get(3)?, seq: r.get(4)?, payload_sha256: r.get(5)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every anchor the chains ever had: (tenant, seq, hash), oldest first.
    pub fn anchors(&self) -> Result<Vec<(String, u64, Vec<u8>)>, StoreError> {
        let mut st = self.conn.prepare_cached("SELECT tenant, seq, hash FROM anchors ORDER BY seq")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Count and chain head of every tenant, for comparing with devices.
    pub fn diagnostics(&self) -> Result<Vec<Diagnostics>, StoreError> {
        let mut st = self.conn.prepare_cached("SELECT tenant, COUNT(*) FROM events GROUP BY tenant ORDER BY tenant")?;
        let counts: Vec<(String, u64)> = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        counts.into_iter().map(|(tenant, count)| Ok(Diagnostics { head: store::chain_head(&self.conn, &tenant)?, tenant, count })).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> (tempfile::TempDir, Server) {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::open(dir.path().join("server.db").to_str().unwrap()).unwrap();
        (dir, s)
    }

    fn write(write_id: u64, op: &str, payload: &[u8]) -> PendingWrite {
        PendingWrite { write_id, op_id: Some(op.into()), aggregate: "a".into(), kind: "k".into(), payload: payload.to_vec() }
    }

    fn push(s: &mut Server, tenant: &str, replica: &str, writes: Vec<PendingWrite>) -> Response {
        s.handle(Request::Push { tenant: tenant.into(), replica: replica.into(), writes, head: None })
    }

    /// A planted bug of the event-store writer stores a changed payload for the kind it
    /// mishandles, once: the chain check names that event, and the archive's segment holds the
    /// event as pushed.
    #[test]
    fn a_planted_writer_bug_stores_a_row_the_chain_check_flags_while_the_archive_keeps_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let options = ServerOptions { archive: Some(ArchiveMode::Asynchronous { window_events_max: 100 }), ..ServerOptions::default() };
        let mut s = Server::open_with(dir.path().join("s.db").to_str().unwrap(), options).unwrap();
        let bug = crate::mutations::Mutation { node: "server".into(), bug: Bug::StoredPayload { event_kind: "archived".into() }, after: 0, times: 1 };
        s.plant(Mutations::new(&[bug], Box::new(|_| {})).on("server"));
        push(&mut s, "acme", "r1", vec![write(1, "x-1", b"one")]);
        let mut w = write(2, "x-2", b"two");
        w.kind = "archived".into();
        push(&mut s, "acme", "r1", vec![w]);
        let mut w = write(3, "x-3", b"three");
        w.kind = "archived".into();
        push(&mut s, "acme", "r1", vec![w]);
        assert_eq!(s.verify_chain().unwrap(), [("acme".to_string(), 2)], "only the one firing's row is flagged");
        assert_eq!(s.events().unwrap()[1].payload, b"two\0");
        let sealed: Vec<Vec<u8>> = s.unshipped_segments().unwrap().iter().flat_map(|seg| seg.verify().unwrap()).map(|e| e.payload).collect();
        assert!(sealed.contains(&b"two".to_vec()) && !sealed.contains(&b"two\0".to_vec()), "the archive has the event as pushed");
    }

    #[test]
    fn a_retried_push_is_applied_once() {
        let (_d, mut s) = server();
        let first = push(&mut s, "acme", "r1", vec![write(1, "x-1", b"one")]);
        let again = push(&mut s, "acme", "r1", vec![write(1, "x-1", b"one")]);
        assert_eq!(first, again);
        assert_eq!(s.events().unwrap().len(), 1);
    }

    #[test]
    fn a_reused_write_id_is_stale_and_names_the_last_one() {
        let (_d, mut s) = server();
        push(&mut s, "acme", "r1", vec![write(1, "x-1", b"one"), write(2, "x-2", b"two")]);
        match push(&mut s, "acme", "r1", vec![write(2, "y-1", b"other")]) {
            Response::Error { code, last_write_id, .. } => {
                assert_eq!(code, "staleWriteId");
                assert_eq!(last_write_id, Some(2));
            }
            r => panic!("expected a stale write refusal, got {r:?}"),
        }
        // A renumbered retry of the same op is accepted, and a later retry under the old id is
        // recognised by its op id.
        assert!(matches!(push(&mut s, "acme", "r1", vec![write(3, "y-1", b"other")]), Response::Pushed { .. }));
        match push(&mut s, "acme", "r1", vec![write(2, "y-1", b"other")]) {
            Response::Pushed { accepted, .. } => assert_eq!(accepted[0].write_id, 3),
            r => panic!("{r:?}"),
        }
        assert_eq!(s.events().unwrap().len(), 3);
    }

    #[test]
    fn a_replica_is_refused_for_another_tenant_and_the_refusal_is_reported() {
        let (_d, mut s) = server();
        push(&mut s, "acme", "r1", vec![write(1, "x-1", b"one")]);
        let pull = s.handle(Request::Pull { tenant: "globex".into(), replica: "r1".into(), since: 0, limit: 8, head: None });
        assert!(matches!(&pull, Response::Error { code, .. } if code == "rbacDenied"), "{pull:?}");
        let pushed = push(&mut s, "globex", "r1", vec![write(2, "x-2", b"two")]);
        assert!(matches!(&pushed, Response::Error { code, .. } if code == "rbacDenied"), "{pushed:?}");
        assert_eq!(s.events().unwrap().len(), 1);
    }

    #[test]
    fn diagnostics_count_and_hash_per_tenant() {
        let (_d, mut s) = server();
        push(&mut s, "acme", "r1", vec![write(1, "x-1", b"one"), write(2, "x-2", b"two")]);
        push(&mut s, "globex", "r2", vec![write(1, "z-1", b"three")]);
        let d = s.diagnostics().unwrap();
        assert_eq!(d.iter().map(|x| (x.tenant.as_str(), x.count)).collect::<Vec<_>>(), vec![("acme", 2), ("globex", 1)]);
        assert_eq!(d[0].head, s.events().unwrap()[1].hash);
    }

    #[test]
    fn retention_compacts_and_asks_a_lagging_device_to_resync() {
        let dir = tempfile::tempdir().unwrap();
        let mut s =
            Server::open_with(dir.path().join("s.db").to_str().unwrap(), ServerOptions { retention_events: Some(3), ..ServerOptions::default() }).unwrap();
        let writes: Vec<PendingWrite> = (1..=7).map(|i| write(i, &format!("x-{i}"), b"p")).collect();
        push(&mut s, "acme", "r1", writes);
        assert_eq!(s.events().unwrap().len(), 3);
        assert_eq!(s.tombstones().unwrap().len(), 4);
        let Response::ResyncRequired { floor_seq, floor_hash } =
            s.handle(Request::Pull { tenant: "acme".into(), replica: "r1".into(), since: 0, limit: 8, head: None })
        else {
            panic!("a device behind retention must be told to resync")
        };
        assert_eq!(floor_seq, 4);
        assert_eq!(s.events().unwrap()[0].prev_hash, floor_hash);
        // A retried push of a compacted op is still recognised.
        match push(&mut s, "acme", "r1", vec![write(2, "x-2", b"p")]) {
            Response::Pushed { accepted, last_reconciled_write_ids, .. } => {
                assert_eq!(accepted[0].seq, 2);
                assert_eq!(last_reconciled_write_ids["r1"], 7);
            }
            r => panic!("{r:?}"),
        }
        assert!(matches!(s.handle(Request::Pull { tenant: "acme".into(), replica: "r1".into(), since: 4, limit: 8, head: None }), Response::Page { .. }));
    }

    #[test]
    fn pages_end_where_they_say() {
        let (_d, mut s) = server();
        let writes: Vec<PendingWrite> = (1..=70).map(|i| write(i, &format!("x-{i}"), b"p")).collect();
        push(&mut s, "acme", "r1", writes);
        let Response::Page { items, has_more, next_cursor, .. } =
            s.handle(Request::Pull { tenant: "acme".into(), replica: "r1".into(), since: 0, limit: 100, head: None })
        else {
            panic!("a page")
        };
        assert_eq!(items.len(), PAGE_LIMIT_MAX as usize);
        assert!(has_more);
        assert_eq!(next_cursor, items.last().unwrap().seq);
    }
}

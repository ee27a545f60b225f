//! A device: its own SQLite store with an outbox of pending writes, and the sync that pushes the
//! outbox and pulls the tenant's total order.
//!
//! A sync attempt is all or nothing for the client's state: pages are validated as they arrive
//! and applied in one transaction at the end, so a failed attempt leaves [`Client::export_state`]
//! exactly as it was (fail-closed). A write leaves the outbox only in the transaction that applies
//! its event from the server, so it is never lost and never applied twice.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::chain;
use crate::clock::Clock;
use crate::error::{StoreError, SyncError};
use crate::proto::{PendingWrite, Request, Response, PAGE_LIMIT_MAX};
use crate::rpc::RpcClient;
use crate::store::{self, EventRow};

/// Writes pushed in one request at most.
pub const PUSH_BATCH_MAX: usize = 64;
/// Pages pulled in one sync attempt at most; the rest waits for the next attempt.
pub const PULL_PAGES_MAX: u32 = 16;

const CLIENT_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox(
    write_id INTEGER PRIMARY KEY,
    aggregate TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_ms INTEGER NOT NULL
);
";

/// What a client exports and can be hydrated from: its sync position and its pending writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedState {
    pub replica: String,
    pub tenant: String,
    pub cursor: u64,
    pub last_reconciled_write_ids: BTreeMap<String, u64>,
    pub pending_write_ids: Vec<u64>,
}

/// What one successful sync attempt did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    pub pushed: usize,
    pub pushed_write_ids: Vec<u64>,
    pub pulled: usize,
    pub pages: u32,
    /// Whether the client caught up with the server (no page left).
    pub settled: bool,
}

/// A device's store.
pub struct Client {
    conn: Connection,
    replica: String,
    tenant: String,
    clock: Box<dyn Clock>,
    boots: u64,
}

impl Client {
    /// Opens (or creates) the device database at `path` for `replica` of `tenant`, recovering
    /// whatever the disk kept.
    pub fn open(path: &str, replica: &str, tenant: &str, clock: Box<dyn Clock>) -> Result<Client, StoreError> {
        let conn = store::open(path)?;
        conn.execute_batch(store::EVENTS_SCHEMA)?;
        conn.execute_batch(CLIENT_SCHEMA)?;
        let tx = conn.unchecked_transaction()?;
        for (key, want) in [("replica", replica), ("tenant", tenant)] {
            match store::meta_get(&tx, key)? {
                None => store::meta_set(&tx, key, want)?,
                Some(have) if have == want => {}
                Some(have) => {
                    return Err(StoreError::Invalid { detail: format!("database belongs to {key} {have}, not {want}") })
                }
            }
        }
        let boots = store::meta_get(&tx, "boots")?.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + 1;
        store::meta_set(&tx, "boots", &boots.to_string())?;
        tx.commit()?;
        Ok(Client { conn, replica: replica.into(), tenant: tenant.into(), clock, boots })
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

    /// Records a write locally; it is durable when this returns, and pushed by a later sync.
    pub fn append(&mut self, aggregate: &str, kind: &str, payload: &[u8]) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        let next: u64 = store::meta_get(&tx, "next_write_id")?.and_then(|v| v.parse().ok()).unwrap_or(1);
        tx.execute(
            "INSERT INTO outbox(write_id, aggregate, kind, payload, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![next, aggregate, kind, payload, self.clock.now_unix_ms()],
        )?;
        store::meta_set(&tx, "next_write_id", &(next + 1).to_string())?;
        tx.commit()?;
        Ok(next)
    }

    /// The pending writes, oldest first.
    pub fn outbox(&self) -> Result<Vec<PendingWrite>, StoreError> {
        let mut st = self.conn.prepare_cached("SELECT write_id, aggregate, kind, payload FROM outbox ORDER BY write_id")?;
        let rows = st.query_map([], |r| {
            Ok(PendingWrite { write_id: r.get(0)?, aggregate: r.get(1)?, kind: r.get(2)?, payload: r.get(3)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
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
            cursor: self.cursor()?,
            last_reconciled_write_ids: self.last_reconciled()?,
            pending_write_ids: self.outbox()?.into_iter().map(|w| w.write_id).collect(),
        })
    }

    fn cursor(&self) -> Result<u64, StoreError> {
        Ok(store::meta_get(&self.conn, "cursor")?.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    fn last_reconciled(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        match store::meta_get(&self.conn, "last_reconciled_write_ids")? {
            None => Ok(BTreeMap::new()),
            Some(v) => serde_json::from_str(&v).map_err(|e| StoreError::Invalid { detail: format!("lastReconciledWriteIds: {e}") }),
        }
    }

    /// One sync attempt: push the outbox, then pull until settled (or the page budget is spent).
    pub async fn sync(&mut self, rpc: &mut RpcClient) -> Result<SyncReport, SyncError> {
        let pushed = self.push(rpc).await?;
        let mut report = self.pull_and_apply(rpc).await?;
        report.pushed = pushed.len();
        report.pushed_write_ids = pushed;
        Ok(report)
    }

    /// Pushes the oldest pending writes; returns the write ids the server acknowledged. Changes
    /// nothing locally: a write leaves the outbox when its event is pulled back.
    pub async fn push(&mut self, rpc: &mut RpcClient) -> Result<Vec<u64>, SyncError> {
        let mut writes = self.outbox()?;
        writes.truncate(PUSH_BATCH_MAX);
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let req = Request::Push { tenant: self.tenant.clone(), replica: self.replica.clone(), writes: writes.clone() };
        match rpc.call(&req).await? {
            Response::Pushed { accepted, .. } => {
                let got: BTreeSet<u64> = accepted.iter().map(|(w, _)| *w).collect();
                if let Some(missing) = writes.iter().find(|w| !got.contains(&w.write_id)) {
                    return Err(SyncError::Server {
                        code: "pushIncomplete".into(),
                        message: format!("write {} was not accepted", missing.write_id),
                    });
                }
                Ok(writes.iter().map(|w| w.write_id).collect())
            }
            Response::Error { code, message } => Err(SyncError::Server { code, message }),
            other => Err(unexpected("flush", &other)),
        }
    }

    /// Pulls the tenant's events until settled (or the page budget is spent), validating every
    /// page, and applies them in one transaction. On any error nothing changes.
    pub async fn pull_and_apply(&mut self, rpc: &mut RpcClient) -> Result<SyncReport, SyncError> {
        let pull = self.pull(rpc).await?;
        let report = SyncReport { pulled: pull.items.len(), pages: pull.pages, settled: pull.settled, ..SyncReport::default() };
        self.apply(pull)?;
        Ok(report)
    }

    async fn pull(&mut self, rpc: &mut RpcClient) -> Result<Pulled, SyncError> {
        let start = self.cursor()?;
        let mut p = Pulled { cursor: start, last_reconciled: self.last_reconciled()?, ..Pulled::default() };
        let mut seen: BTreeSet<(String, u64)> = BTreeSet::new();
        let mut head = store::chain_head(&self.conn, &self.tenant)?;
        while p.pages < PULL_PAGES_MAX {
            let req = Request::Pull { tenant: self.tenant.clone(), replica: self.replica.clone(), since: p.cursor, limit: PAGE_LIMIT_MAX };
            let (items, has_more, next_cursor, lrw) = match rpc.call(&req).await? {
                Response::Page { items, has_more, next_cursor, last_reconciled_write_ids } => {
                    (items, has_more, next_cursor, last_reconciled_write_ids)
                }
                Response::Error { code, message } => return Err(SyncError::Server { code, message }),
                other => return Err(unexpected("pull", &other)),
            };
            p.pages += 1;
            check_page(p.cursor, &items, has_more, next_cursor)?;
            check_last_write_ids("pull", &p.last_reconciled, &lrw)?;
            for item in items {
                let e = EventRow::from(item);
                if !seen.insert((e.replica.clone(), e.write_id)) {
                    return Err(guard("pull", "pullDuplicateOpReplay", format!("transport replayed opId {}:{} during pull pagination", e.replica, e.write_id)));
                }
                if e.tenant != self.tenant {
                    return Err(guard("pull", "tenantViolation", format!("event {} of tenant {} sent to tenant {}", e.seq, e.tenant, self.tenant)));
                }
                let want = chain::event_hash(&head, &e.kind, &e.tenant, &e.payload);
                if e.prev_hash != head || e.hash != want {
                    return Err(guard("pull", "hashChainViolation", format!("event {} does not extend the local chain", e.seq)));
                }
                head = e.hash.clone();
                p.items.push(e);
            }
            p.cursor = next_cursor;
            p.last_reconciled = lrw;
            if !has_more {
                p.settled = true;
                break;
            }
        }
        Ok(p)
    }

    /// Applies a validated pull in one transaction: events in, their outbox entries out, cursor on.
    fn apply(&mut self, p: Pulled) -> Result<(), SyncError> {
        let tx = self.conn.transaction()?;
        for e in &p.items {
            store::insert_event(&tx, e)?;
            if e.replica == self.replica {
                tx.execute("DELETE FROM outbox WHERE write_id = ?1", [e.write_id])?;
            }
        }
        store::meta_set(&tx, "cursor", &p.cursor.to_string())?;
        let lrw = serde_json::to_string(&p.last_reconciled).expect("a map serializes");
        store::meta_set(&tx, "last_reconciled_write_ids", &lrw)?;
        tx.commit()?;
        Ok(())
    }
}

#[derive(Default)]
struct Pulled {
    items: Vec<EventRow>,
    cursor: u64,
    last_reconciled: BTreeMap<String, u64>,
    pages: u32,
    settled: bool,
}

fn guard(stage: &'static str, code: &'static str, detail: String) -> SyncError {
    SyncError::Guardrail { stage, code, detail }
}

fn unexpected(stage: &str, r: &Response) -> SyncError {
    SyncError::Server { code: "unexpectedResponse".into(), message: format!("{stage} got {r:?}") }
}

/// The page invariants: a page that says there is more is not empty, its `nextCursor` is its last
/// item's position, and the cursor never moves backwards.
fn check_page(cursor: u64, items: &[crate::proto::WireEvent], has_more: bool, next_cursor: u64) -> Result<(), SyncError> {
    if has_more && items.is_empty() {
        return Err(guard("pull", "pullPageInvariantViolation", "hasMore=true with an empty pull page".into()));
    }
    if next_cursor < cursor {
        return Err(guard("pull", "pullCursorRegression", format!("transport returned regressing sync cursor: {cursor} -> {next_cursor}")));
    }
    if let Some(last) = items.last() {
        if last.seq != next_cursor {
            return Err(guard("pull", "pullPageInvariantViolation", format!("nextCursor {next_cursor} does not match page tail {}", last.seq)));
        }
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

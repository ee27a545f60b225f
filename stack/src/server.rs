//! The server: holds the total order of every tenant's events and answers push and pull.
//!
//! A push appends each write once: a `(replica, write_id)` the server already holds is answered
//! with the sequence number it already has, so retries are harmless. Every push is one
//! transaction, committed before the answer leaves.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension};

use crate::chain;
use crate::error::StoreError;
use crate::proto::{PendingWrite, Request, Response, WireEvent, PAGE_LIMIT_MAX};
use crate::store::{self, EventRow};

/// The server's store.
pub struct Server {
    conn: Connection,
}

impl Server {
    /// Opens (or creates) the server database at `path`.
    pub fn open(path: &str) -> Result<Server, StoreError> {
        let conn = store::open(path)?;
        conn.execute_batch(store::EVENTS_SCHEMA)?;
        Ok(Server { conn })
    }

    /// Answers one request.
    pub fn handle(&mut self, req: Request) -> Response {
        let result = match req {
            Request::Push { tenant, replica, writes } => self.push(&tenant, &replica, &writes),
            Request::Pull { tenant, since, limit, .. } => self.pull(&tenant, since, limit),
        };
        result.unwrap_or_else(|e| Response::Error { code: e.code().into(), message: e.to_string() })
    }

    fn push(&mut self, tenant: &str, replica: &str, writes: &[PendingWrite]) -> Result<Response, StoreError> {
        let tx = self.conn.transaction()?;
        let mut accepted = Vec::with_capacity(writes.len());
        let mut head = store::chain_head(&tx, tenant)?;
        let mut next_seq: u64 = tx.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM events", [], |r| r.get(0))?;
        for w in writes {
            let existing: Option<u64> = tx
                .query_row("SELECT seq FROM events WHERE replica = ?1 AND write_id = ?2", rusqlite::params![replica, w.write_id], |r| r.get(0))
                .optional()?;
            if let Some(seq) = existing {
                accepted.push((w.write_id, seq));
                continue;
            }
            let hash = chain::event_hash(&head, &w.kind, tenant, &w.payload);
            store::insert_event(
                &tx,
                &EventRow {
                    seq: next_seq,
                    tenant: tenant.into(),
                    aggregate: w.aggregate.clone(),
                    kind: w.kind.clone(),
                    replica: replica.into(),
                    write_id: w.write_id,
                    payload: w.payload.clone(),
                    prev_hash: head,
                    hash: hash.to_vec(),
                },
            )?;
            accepted.push((w.write_id, next_seq));
            head = hash.to_vec();
            next_seq += 1;
        }
        let last_write_id: u64 = tx.query_row(
            "SELECT COALESCE(MAX(write_id), 0) FROM events WHERE replica = ?1",
            [replica],
            |r| r.get(0),
        )?;
        tx.commit()?;
        Ok(Response::Pushed { accepted, last_write_id })
    }

    fn pull(&mut self, tenant: &str, since: u64, limit: u32) -> Result<Response, StoreError> {
        let limit = limit.clamp(1, PAGE_LIMIT_MAX);
        let mut items = store::events_after(&self.conn, tenant, since, limit + 1)?;
        let has_more = items.len() > limit as usize;
        items.truncate(limit as usize);
        let next_cursor = items.last().map(|e| e.seq).unwrap_or(since);
        Ok(Response::Page {
            items: items.into_iter().map(WireEvent::from).collect(),
            has_more,
            next_cursor,
            last_reconciled_write_ids: self.last_reconciled(tenant)?,
        })
    }

    fn last_reconciled(&self, tenant: &str) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut st = self.conn.prepare_cached("SELECT replica, MAX(write_id) FROM events WHERE tenant = ?1 GROUP BY replica")?;
        let rows = st.query_map([tenant], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every event the server holds, in total order.
    pub fn events(&self) -> Result<Vec<EventRow>, StoreError> {
        store::all_events(&self.conn)
    }
}

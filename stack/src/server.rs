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

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension};

use crate::chain;
use crate::error::StoreError;
use crate::proto::{Accepted, PendingWrite, Request, Response, WireEvent, PAGE_LIMIT_MAX};
use crate::store::{self, EventRow};

const SERVER_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS replicas(replica TEXT PRIMARY KEY, tenant TEXT NOT NULL);
";

/// The server's store.
pub struct Server {
    conn: Connection,
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
    /// Opens (or creates) the server database at `path`.
    pub fn open(path: &str) -> Result<Server, StoreError> {
        let conn = store::open(path)?;
        conn.execute_batch(store::EVENTS_SCHEMA)?;
        conn.execute_batch(SERVER_SCHEMA)?;
        Ok(Server { conn })
    }

    /// Answers one request.
    pub fn handle(&mut self, req: Request) -> Response {
        let result = match req {
            Request::Push { tenant, replica, writes } => self.push(&tenant, &replica, &writes),
            Request::Pull { tenant, replica, since, limit } => self.pull(&tenant, &replica, since, limit),
        };
        match result {
            Ok(r) | Err(Refusal::Answer(r)) => r,
            Err(Refusal::Store(e)) => Response::error(e.code(), e.to_string()),
        }
    }

    /// Binds `replica` to `tenant` on first sight; refuses it for any other tenant.
    fn authorize(conn: &Connection, tenant: &str, replica: &str) -> Result<(), Refusal> {
        let bound: Option<String> =
            conn.query_row("SELECT tenant FROM replicas WHERE replica = ?1", [replica], |r| r.get(0)).optional()?;
        match bound {
            Some(t) if t == tenant => Ok(()),
            Some(t) => Err(Refusal::Answer(Response::error(
                "rbacDenied",
                format!("replica {replica} belongs to tenant {t}, not {tenant}"),
            ))),
            None => {
                conn.execute("INSERT INTO replicas(replica, tenant) VALUES (?1, ?2)", [replica, tenant])?;
                Ok(())
            }
        }
    }

    fn push(&mut self, tenant: &str, replica: &str, writes: &[PendingWrite]) -> Result<Response, Refusal> {
        let tx = self.conn.transaction()?;
        Self::authorize(&tx, tenant, replica)?;
        let mut accepted = Vec::with_capacity(writes.len());
        let mut head = store::chain_head(&tx, tenant)?;
        let mut next_seq: u64 = tx.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM events", [], |r| r.get(0))?;
        for w in writes {
            let op_id = w.op_id.clone().unwrap_or_else(|| format!("{replica}:{}", w.write_id));
            let known: Option<(String, u64, u64)> = tx
                .query_row("SELECT replica, write_id, seq FROM events WHERE op_id = ?1", [&op_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            if let Some((owner, write_id, seq)) = known {
                if owner != replica {
                    return Err(Refusal::Answer(Response::error("opConflict", format!("op {op_id} belongs to replica {owner}"))));
                }
                accepted.push(Accepted { op_id, write_id, seq });
                continue;
            }
            let taken: bool = tx
                .query_row("SELECT 1 FROM events WHERE replica = ?1 AND write_id = ?2", rusqlite::params![replica, w.write_id], |_| Ok(()))
                .optional()?
                .is_some();
            if taken {
                let last = Self::last_write_id(&tx, replica)?;
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
            store::insert_event(&tx, &row)?;
            accepted.push(Accepted { op_id, write_id: w.write_id, seq: next_seq });
            head = hash.to_vec();
            next_seq += 1;
        }
        let cursor = Self::tenant_cursor(&tx, tenant)?;
        let last_reconciled_write_ids = Self::last_reconciled(&tx, tenant)?;
        tx.commit()?;
        Ok(Response::Pushed { accepted, cursor, last_reconciled_write_ids })
    }

    fn pull(&mut self, tenant: &str, replica: &str, since: u64, limit: u32) -> Result<Response, Refusal> {
        Self::authorize(&self.conn, tenant, replica)?;
        let limit = limit.clamp(1, PAGE_LIMIT_MAX);
        let mut items = store::events_after(&self.conn, tenant, since, limit + 1)?;
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
        Ok(conn.query_row("SELECT COALESCE(MAX(write_id), 0) FROM events WHERE replica = ?1", [replica], |r| r.get(0))?)
    }

    fn tenant_cursor(conn: &Connection, tenant: &str) -> Result<u64, StoreError> {
        Ok(conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events WHERE tenant = ?1", [tenant], |r| r.get(0))?)
    }

    fn last_reconciled(conn: &Connection, tenant: &str) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut st = conn.prepare_cached("SELECT replica, MAX(write_id) FROM events WHERE tenant = ?1 GROUP BY replica")?;
        let rows = st.query_map([tenant], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every event the server holds, in total order.
    pub fn events(&self) -> Result<Vec<EventRow>, StoreError> {
        store::all_events(&self.conn)
    }

    /// Count and chain head of every tenant, for comparing with devices.
    pub fn diagnostics(&self) -> Result<Vec<Diagnostics>, StoreError> {
        let mut st = self.conn.prepare_cached("SELECT tenant, COUNT(*) FROM events GROUP BY tenant ORDER BY tenant")?;
        let counts: Vec<(String, u64)> = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        counts
            .into_iter()
            .map(|(tenant, count)| Ok(Diagnostics { head: store::chain_head(&self.conn, &tenant)?, tenant, count }))
            .collect()
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
        s.handle(Request::Push { tenant: tenant.into(), replica: replica.into(), writes })
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
        let pull = s.handle(Request::Pull { tenant: "globex".into(), replica: "r1".into(), since: 0, limit: 8 });
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
    fn pages_end_where_they_say() {
        let (_d, mut s) = server();
        let writes: Vec<PendingWrite> = (1..=70).map(|i| write(i, &format!("x-{i}"), b"p")).collect();
        push(&mut s, "acme", "r1", writes);
        let Response::Page { items, has_more, next_cursor, .. } = s.handle(Request::Pull { tenant: "acme".into(), replica: "r1".into(), since: 0, limit: 100 }) else {
            panic!("a page")
        };
        assert_eq!(items.len(), PAGE_LIMIT_MAX as usize);
        assert!(has_more);
        assert_eq!(next_cursor, items.last().unwrap().seq);
    }
}

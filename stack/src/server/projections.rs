//! The server's projections (runbook 004 §1, §4, §6.2): the two built-in projections of every
//! tenant, folded on the server from the events it holds, by the same engine devices use.
//!
//! The server never holds aggregate keys, so it folds each event's payload in its stored,
//! sealed form ([`StoredForm`]): `aggregate_state`'s digest then covers the exact bytes the hash
//! chain covers, and two folds agree only when they saw the same events in the same order. They
//! are disposable: rebuilt full, per tenant, per projection or up to a time, and snapshotted
//! append-only with time travel (the state as of a time) and latest-valid-plus-tail recovery.

use crate::crypto::{Key, NONCE_BYTES};
use crate::envelope;
use crate::error::StoreError;
use crate::keys::KeyError;
use crate::projections::snapshot::{Restored, Snapshot};
use crate::projections::{ApplyReport, DecryptedEvent, KeyRing, ProjectionError, Scope, SealedEvent};
use crate::store::{self, EventRow};

use super::modes::{self, ServerWork};
use super::Server;

/// The server's "key ring": it opens nothing and folds every payload as stored.
pub struct StoredForm;

impl KeyRing for StoredForm {
    fn aggregate_key(&self, aggregate: &str) -> Result<Key, KeyError> {
        Err(KeyError::AggregateKeyMissing { aggregate: aggregate.into() })
    }

    fn open(&self, e: &SealedEvent) -> Result<DecryptedEvent, &'static str> {
        Ok(DecryptedEvent {
            seq: e.seq,
            tenant: e.tenant.clone(),
            aggregate: e.aggregate.clone(),
            kind: e.kind.clone(),
            ts_ms: e.ts_ms,
            payload: e.ciphertext.clone(),
        })
    }
}

/// A stored event as the server's projections take it: the whole stored payload, and the
/// creation time its envelope carries (0 for a payload that is not an envelope).
pub fn stored_event(e: &EventRow) -> SealedEvent {
    let (ts_ms, nonce) = envelope::parse(&e.payload).map(|(ts, n, _)| (ts, n)).unwrap_or((0, [0; NONCE_BYTES]));
    SealedEvent { seq: e.seq, tenant: e.tenant.clone(), aggregate: e.aggregate.clone(), kind: e.kind.clone(), ts_ms, nonce, ciphertext: e.payload.clone() }
}

impl Server {
    fn stored_events(&self) -> Result<Vec<SealedEvent>, StoreError> {
        Ok(store::all_events(&self.conn)?.iter().map(stored_event).collect())
    }

    /// Folds the events the projections have not folded yet. Done after every push; the
    /// non-essential `tenant_counters` is skipped while DEGRADED switches it off.
    pub fn project(&self) -> Result<ApplyReport, ProjectionError> {
        let mut from = u64::MAX;
        for t in self.tenants()? {
            for name in self.engine.names() {
                from = from.min(self.engine.cursor(&self.conn, name, &t)?);
            }
        }
        let from = if from == u64::MAX { 0 } else { from };
        let events: Vec<SealedEvent> = store::events_since(&self.conn, from)?.iter().map(stored_event).collect();
        self.engine.apply(&self.conn, &events, &StoredForm)
    }

    /// Clears and refolds the projections in `scope` (runbook 004 §3.2, §3.3, §6.2). Recovery:
    /// allowed in READ_ONLY.
    pub fn rebuild_projections(&self, scope: &Scope) -> Result<ApplyReport, ProjectionError> {
        self.engine.rebuild(&self.conn, &self.stored_events()?, &StoredForm, scope)
    }

    /// `tenant`'s state in `projection`, as canonical rows.
    pub fn projection_rows(&self, projection: &str, tenant: &str) -> Result<Vec<Vec<String>>, ProjectionError> {
        self.engine.rows(&self.conn, projection, tenant)
    }

    /// The names of the server's projections.
    pub fn projection_names(&self) -> Vec<&'static str> {
        self.engine.names()
    }

    /// Appends a snapshot of every active projection of `tenant` (runbook 004 §4.1), unless
    /// DEGRADED switched snapshots off (then `Ok(vec![])`). Refused in READ_ONLY.
    pub fn snapshot_projections(&self, tenant: &str, created_ms: i64) -> Result<Vec<u64>, ProjectionError> {
        if !modes::enabled(&self.conn, Some(tenant), ServerWork::Snapshots)? {
            return Ok(Vec::new());
        }
        self.engine.snapshot(&self.conn, tenant, created_ms)
    }

    /// Time travel: the newest valid snapshot of `projection` for `tenant` taken at or before
    /// `at_ms` (runbook 004 §4.1).
    pub fn snapshot_as_of(&self, tenant: &str, projection: &str, at_ms: i64) -> Result<Option<Snapshot>, ProjectionError> {
        self.engine.snapshot_as_of(&self.conn, tenant, projection, at_ms)
    }

    /// Restores `projection` of `tenant` from its latest valid snapshot plus the events after it
    /// (runbook 004 §4.2). Recovery.
    pub fn restore_projection(&self, tenant: &str, projection: &str) -> Result<Restored, ProjectionError> {
        self.engine.restore_from_snapshot(&self.conn, &self.stored_events()?, &StoredForm, tenant, projection)
    }

    /// Every tenant the server holds events or bindings of, in order.
    pub fn tenants(&self) -> Result<Vec<String>, StoreError> {
        let mut st = self.conn.prepare_cached("SELECT tenant FROM events UNION SELECT tenant FROM replicas ORDER BY 1")?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projections::builtin::fold_digest;
    use crate::proto::{PendingWrite, Request};

    fn server() -> (tempfile::TempDir, Server) {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::open(dir.path().join("server.db").to_str().unwrap()).unwrap();
        (dir, s)
    }

    fn push(s: &mut Server, tenant: &str, id: u64, payload: &[u8]) {
        let w = PendingWrite { write_id: id, op_id: Some(format!("{tenant}-{id}")), aggregate: "a".into(), kind: "k".into(), payload: payload.to_vec() };
        s.handle(Request::Push { tenant: tenant.into(), replica: format!("r-{tenant}"), writes: vec![w], head: None });
    }

    #[test]
    fn projections_fold_the_stored_payloads_per_tenant() {
        let (_d, mut s) = server();
        push(&mut s, "acme", 1, b"one");
        push(&mut s, "acme", 2, b"two");
        push(&mut s, "globex", 1, b"other");
        let rows = s.projection_rows("aggregate_state", "acme").unwrap();
        let digest = fold_digest(&fold_digest(&[0; 32], "k", b"one"), "k", b"two");
        assert_eq!(rows, vec![vec!["a".to_string(), "2".into(), "2".into(), "k".into(), hex::encode(digest)]]);
        assert_eq!(s.projection_rows("tenant_counters", "globex").unwrap(), vec![vec!["k".to_string(), "1".into()]]);
        // A rebuild of one tenant and one projection gives the same rows back.
        let scope = Scope { tenant: Some("acme".into()), projection: Some("aggregate_state".into()), until_ts_ms: None };
        s.rebuild_projections(&scope).unwrap();
        assert_eq!(s.projection_rows("aggregate_state", "acme").unwrap(), rows);
    }

    #[test]
    fn snapshots_travel_in_time_and_restore_with_the_tail() {
        let (_d, mut s) = server();
        push(&mut s, "acme", 1, b"one");
        s.snapshot_projections("acme", 100).unwrap();
        let at_100 = s.projection_rows("aggregate_state", "acme").unwrap();
        push(&mut s, "acme", 2, b"two");
        s.snapshot_projections("acme", 200).unwrap();
        let now = s.projection_rows("aggregate_state", "acme").unwrap();
        assert_eq!(s.snapshot_as_of("acme", "aggregate_state", 150).unwrap().unwrap().rows, at_100);
        assert_eq!(s.snapshot_as_of("acme", "aggregate_state", 250).unwrap().unwrap().rows, now);
        assert_eq!(s.snapshot_as_of("acme", "aggregate_state", 50).unwrap(), None);
        push(&mut s, "acme", 3, b"three");
        let want = s.projection_rows("aggregate_state", "acme").unwrap();
        let r = s.restore_projection("acme", "aggregate_state").unwrap();
        assert!(r.used.is_some());
        assert_eq!(r.tail.applied, 1, "only the event after the snapshot is replayed");
        assert_eq!(s.projection_rows("aggregate_state", "acme").unwrap(), want);
    }

    #[test]
    fn degraded_skips_the_switched_off_work() {
        use crate::projections::resilience::Mode;
        let (_d, mut s) = server();
        s.set_mode(&super::super::ModeScope::Server, Mode::Degraded, &[ServerWork::TenantCounters, ServerWork::Snapshots]).unwrap();
        push(&mut s, "acme", 1, b"one");
        assert_eq!(s.projection_rows("tenant_counters", "acme").unwrap(), Vec::<Vec<String>>::new());
        assert_eq!(s.projection_rows("aggregate_state", "acme").unwrap().len(), 1, "essential work goes on");
        assert_eq!(s.snapshot_projections("acme", 1).unwrap(), Vec::<u64>::new());
    }
}

//! Snapshots of projection state (runbook 004 §4): append-only, per tenant, each with a
//! checksum; recovery starts from the latest snapshot that passes its check and replays only the
//! events after it.
//!
//! Append-only is enforced by the database itself (triggers refuse UPDATE and DELETE), not by
//! convention. A snapshot records the seq it covers, and the tail is the events after that seq:
//! seq is the store's total order, whereas timestamps come from skewed clocks.

use rusqlite::Connection;
use sha2::{Digest, Sha256};

use crate::error::StoreError;
use crate::mutations::Bug;

use super::engine::{clear, feed, set_cursor, Engine};
use super::resilience::{self, Write};
use super::{ApplyReport, KeyRing, ProjectionError, SealedEvent};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS proj_snapshots(
    id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, projection TEXT NOT NULL,
    through_seq INTEGER NOT NULL, created_ms INTEGER NOT NULL, state TEXT NOT NULL, checksum TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS proj_snapshots_no_update BEFORE UPDATE ON proj_snapshots
    BEGIN SELECT RAISE(ABORT, 'snapshots are append-only'); END;
CREATE TRIGGER IF NOT EXISTS proj_snapshots_no_delete BEFORE DELETE ON proj_snapshots
    BEGIN SELECT RAISE(ABORT, 'snapshots are append-only'); END;
";

/// One stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub id: u64,
    pub tenant: String,
    pub projection: String,
    pub through_seq: u64,
    pub created_ms: i64,
    pub rows: Vec<Vec<String>>,
}

/// How a restore went: the snapshot used (if any valid one) and the ones skipped as corrupt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    pub used: Option<u64>,
    pub skipped_corrupt: Vec<u64>,
    pub tail: ApplyReport,
}

fn checksum(tenant: &str, projection: &str, through_seq: u64, state: &str) -> String {
    let framed = crate::crypto::framed(&[b"drill-snapshot-v1", tenant.as_bytes(), projection.as_bytes(), &through_seq.to_le_bytes(), state.as_bytes()]);
    hex::encode(Sha256::digest(framed))
}

impl Engine {
    /// Appends a snapshot of every active projection of `tenant`. A command (refused in
    /// READ_ONLY). Refused with `projection:snapshotIncomplete` while aggregates are skipped:
    /// restoring such a snapshot after the keys came back would keep them missing.
    pub fn snapshot(&self, c: &Connection, tenant: &str, created_ms: i64) -> Result<Vec<u64>, ProjectionError> {
        resilience::check_write(c, Write::Command)?;
        let (on, _) = self.active(c, None)?;
        let tx = c.unchecked_transaction()?;
        let mut ids = Vec::new();
        for p in on {
            let missing: Vec<String> = self.incomplete(&tx, tenant)?.into_iter().filter(|i| i.projection == p.name()).map(|i| i.aggregate).collect();
            if !missing.is_empty() {
                return Err(ProjectionError::SnapshotIncomplete { projection: p.name().into(), tenant: tenant.into(), aggregates: missing });
            }
            let through = self.cursor(&tx, p.name(), tenant)?;
            let mut state = serde_json::to_string(&p.rows(&tx, tenant)?).expect("rows serialize");
            let sum = checksum(tenant, p.name(), through, &state);
            let name = p.name();
            let planted = |b: &Bug| matches!(b, Bug::SnapshotState { projection } if projection == name);
            if self.mutations.fires("projections::snapshot", planted, || format!("{name} of {tenant} through seq {through}")).is_some() {
                // The first value of the first row marked, or a row where there was none.
                state = match state.find('"') {
                    Some(i) => format!("{}~{}", &state[..=i], &state[i + 1..]),
                    None => r#"[["~"]]"#.to_string(),
                };
            }
            tx.prepare_cached("INSERT INTO proj_snapshots(tenant, projection, through_seq, created_ms, state, checksum) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?
                .execute(rusqlite::params![tenant, p.name(), through, created_ms, state, sum])?;
            ids.push(tx.last_insert_rowid() as u64);
        }
        tx.commit()?;
        Ok(ids)
    }

    /// The newest snapshot of `projection` for `tenant` that passes its checksum, and the ids of
    /// newer ones that did not.
    pub fn latest_valid_snapshot(&self, c: &Connection, tenant: &str, projection: &str) -> Result<(Option<Snapshot>, Vec<u64>), ProjectionError> {
        self.valid_snapshot(c, tenant, projection, i64::MAX)
    }

    /// Time travel (runbook 004 §4.1): the newest snapshot of `projection` for `tenant` taken at
    /// or before `at_ms` that passes its checksum.
    pub fn snapshot_as_of(&self, c: &Connection, tenant: &str, projection: &str, at_ms: i64) -> Result<Option<Snapshot>, ProjectionError> {
        Ok(self.valid_snapshot(c, tenant, projection, at_ms)?.0)
    }

    fn valid_snapshot(&self, c: &Connection, tenant: &str, projection: &str, at_ms: i64) -> Result<(Option<Snapshot>, Vec<u64>), ProjectionError> {
        self.find(projection)?;
        let mut st = c.prepare_cached(
            "SELECT id, through_seq, created_ms, state, checksum FROM proj_snapshots WHERE tenant = ?1 AND projection = ?2 AND created_ms <= ?3 ORDER BY id DESC",
        )?;
        let rows = st.query_map(rusqlite::params![tenant, projection, at_ms], |r| {
            Ok((r.get::<_, u64>(0)?, r.get::<_, u64>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?, r.get::<_, String>(4)?))
        })?;
        let mut skipped = Vec::new();
        for row in rows {
            let (id, through_seq, created_ms, state, sum) = row?;
            let parsed: Option<Vec<Vec<String>>> = serde_json::from_str(&state).ok();
            match parsed {
                Some(rows) if checksum(tenant, projection, through_seq, &state) == sum => {
                    let s = Snapshot { id, tenant: tenant.into(), projection: projection.into(), through_seq, created_ms, rows };
                    return Ok((Some(s), skipped));
                }
                _ => skipped.push(id),
            }
        }
        Ok((None, skipped))
    }

    /// Restores `projection` of `tenant` from its latest valid snapshot and replays the events
    /// after it (runbook 004 §4.2); with no valid snapshot, or when an event of the tail does not
    /// open (the snapshot may hold part of its aggregate), replays everything. Recovery.
    pub fn restore_from_snapshot(
        &self,
        c: &Connection,
        events: &[SealedEvent],
        keys: &dyn KeyRing,
        tenant: &str,
        projection: &str,
    ) -> Result<Restored, ProjectionError> {
        resilience::check_write(c, Write::Recovery)?;
        let p = self.find(projection)?;
        let (snap, skipped_corrupt) = self.latest_valid_snapshot(c, tenant, projection)?;
        let tx = c.unchecked_transaction()?;
        clear(&tx, p, tenant)?;
        let mut from = 0;
        if let Some(s) = &snap {
            p.load(&tx, tenant, &s.rows)?;
            set_cursor(&tx, projection, tenant, s.through_seq)?;
            from = s.through_seq;
        }
        let tail = events.iter().filter(|e| e.tenant == tenant && e.seq > from);
        let report = feed(&tx, &[p], tail, keys).map_err(ProjectionError::from)?;
        if snap.is_some() && !report.incomplete.is_empty() {
            // An event of the tail does not open: the snapshot may hold the fold of its
            // aggregate's earlier events, which a projection reporting the aggregate incomplete
            // must not. Only a replay from the start leaves the whole aggregate out.
            drop(tx);
            let scope = super::Scope { tenant: Some(tenant.to_string()), projection: Some(projection.to_string()), until_ts_ms: None };
            let tail = self.rebuild(c, events, keys, &scope)?;
            return Ok(Restored { used: None, skipped_corrupt, tail });
        }
        tx.commit()?;
        Ok(Restored { used: snap.map(|s| s.id), skipped_corrupt, tail: report })
    }
}

/// Number of snapshots stored (every tenant, every projection).
pub fn count(c: &Connection) -> Result<u64, StoreError> {
    Ok(c.prepare_cached("SELECT COUNT(*) FROM proj_snapshots")?.query_row([], |r| r.get(0))?)
}

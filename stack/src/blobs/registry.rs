//! The server's blob registry, in the server's SQLite database.
//!
//! Two tables. `blob_registry` holds one row per blob: who staged it, where its object is, its
//! checksum, and its stage status (`blob-stage:staged`, `blob-stage:attached`,
//! `blob-stage:abandoned`) with the expiry the server's clock gave it. `reconcile_state` holds,
//! per client (`crdt:<clientId>`), the reconcile state the server acknowledged to it: the cursor
//! and `lastReconciledWriteIds` (an object map, replica to positive integer) of every push
//! answer, merged so they only move forward. It is written in the push's own transaction, so the
//! server never answers a push whose acknowledgement it could forget.
//!
//! Attach is judged against that persisted state (runbook 003 §2): it must dominate the
//! checkpoint the client took when it staged. Every check reads only the database and the clock
//! value it is given, so the same state and payload always get the same answer.

use std::collections::BTreeMap;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension};

use crate::error::StoreError;

use super::error::{BlobError, BlobOp};
use super::wire::{AttachCheckpoint, BlobBody, ReconcileView};

/// The registry's tables.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS blob_registry(
    blob_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    client_id TEXT NOT NULL,
    status TEXT NOT NULL,
    object_key TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    staged_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER,
    item_id TEXT,
    attach_checkpoint TEXT,
    attached_at_ms INTEGER
);
CREATE TABLE IF NOT EXISTS reconcile_state(
    client_key TEXT PRIMARY KEY,
    cursor INTEGER NOT NULL,
    last_reconciled_write_ids TEXT NOT NULL
);
";

pub const STATUS_STAGED: &str = "blob-stage:staged";
pub const STATUS_ATTACHED: &str = "blob-stage:attached";
pub const STATUS_ABANDONED: &str = "blob-stage:abandoned";

/// The key of a client's persisted reconcile state.
pub fn client_key(client_id: &str) -> String {
    format!("crdt:{client_id}")
}

/// Parses a `lastReconciledWriteIds` value: an object map from non-empty replica ids to positive
/// integers. Anything else is malformed, and says why.
pub fn parse_write_ids(v: &serde_json::Value) -> Result<BTreeMap<String, u64>, String> {
    let obj = v.as_object().ok_or_else(|| format!("lastReconciledWriteIds must be an object map, not {v}"))?;
    let mut out = BTreeMap::new();
    for (replica, w) in obj {
        if replica.is_empty() {
            return Err("lastReconciledWriteIds has an empty replica id".into());
        }
        match w.as_u64() {
            Some(n) if n > 0 => {
                out.insert(replica.clone(), n);
            }
            _ => return Err(format!("lastReconciledWriteIds must map replicas to positive integers; {replica} maps to {w}")),
        }
    }
    Ok(out)
}

/// Records what the server acknowledged to `client_id` in a push answer, merged with what it
/// acknowledged before: the cursor and each replica's write id only move forward. A stored state
/// that no longer parses is replaced.
pub fn record_reconcile(conn: &Connection, client_id: &str, cursor: u64, lrw: &BTreeMap<String, u64>) -> Result<(), StoreError> {
    let key = client_key(client_id);
    let old: Option<(SqlValue, String)> = conn
        .query_row("SELECT cursor, last_reconciled_write_ids FROM reconcile_state WHERE client_key = ?1", [&key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let mut merged = ReconcileView { cursor, last_reconciled_write_ids: lrw.iter().filter(|(_, &w)| w > 0).map(|(r, w)| (r.clone(), *w)).collect() };
    if let Some((old_cursor, old_lrw)) = &old {
        if let SqlValue::Integer(c) = old_cursor {
            merged.cursor = merged.cursor.max(u64::try_from(*c).unwrap_or(0));
        }
        let parsed = serde_json::from_str(old_lrw).ok().and_then(|v| parse_write_ids(&v).ok()).unwrap_or_default();
        for (r, w) in parsed {
            let e = merged.last_reconciled_write_ids.entry(r).or_insert(0);
            *e = (*e).max(w);
        }
    }
    let text = serde_json::to_string(&merged.last_reconciled_write_ids).expect("a map serializes");
    if let Some((SqlValue::Integer(c), t)) = &old {
        if u64::try_from(*c).ok() == Some(merged.cursor) && *t == text {
            return Ok(());
        }
    }
    conn.execute(
        "INSERT INTO reconcile_state(client_key, cursor, last_reconciled_write_ids) VALUES (?1, ?2, ?3)
         ON CONFLICT(client_key) DO UPDATE SET cursor = excluded.cursor, last_reconciled_write_ids = excluded.last_reconciled_write_ids",
        rusqlite::params![key, merged.cursor, text],
    )?;
    Ok(())
}

/// The persisted reconcile state of `client_id`, if any. A malformed one (a cursor that is not a
/// non-negative integer, a write-id map that is not an object of positive integers) is an
/// attach failure.
pub fn reconcile_view(conn: &Connection, client_id: &str) -> Result<Option<ReconcileView>, BlobError> {
    let row: Option<(SqlValue, SqlValue)> = conn
        .query_row("SELECT cursor, last_reconciled_write_ids FROM reconcile_state WHERE client_key = ?1", [client_key(client_id)], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .map_err(|e| BlobError::Registry { op: BlobOp::Attach, error: e.into() })?;
    let Some((cursor, lrw)) = row else { return Ok(None) };
    let malformed = |detail: String| BlobError::AttachFailed { detail: format!("reconcile state of {}: {detail}", client_key(client_id)) };
    let cursor = match cursor {
        SqlValue::Integer(c) if c >= 0 => c as u64,
        other => return Err(malformed(format!("cursor is not a non-negative integer: {other:?}"))),
    };
    let SqlValue::Text(text) = lrw else { return Err(malformed("lastReconciledWriteIds is not text".into())) };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| malformed(format!("lastReconciledWriteIds is not JSON: {e}")))?;
    let last_reconciled_write_ids = parse_write_ids(&value).map_err(malformed)?;
    Ok(Some(ReconcileView { cursor, last_reconciled_write_ids }))
}

/// One registry row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRow {
    pub blob_id: String,
    pub tenant: String,
    pub client_id: String,
    pub status: String,
    pub object_key: String,
    pub size: u64,
    pub sha256: String,
    /// `None` when the stored value is missing or not an integer (malformed metadata).
    pub expires_at_ms: Option<i64>,
    pub item_id: Option<String>,
    pub attach_checkpoint: Option<String>,
}

const ROW_COLUMNS: &str = "blob_id, tenant, client_id, status, object_key, size, sha256, expires_at_ms, item_id, attach_checkpoint";

fn row_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<BlobRow> {
    let expires: SqlValue = r.get(7)?;
    Ok(BlobRow {
        blob_id: r.get(0)?,
        tenant: r.get(1)?,
        client_id: r.get(2)?,
        status: r.get(3)?,
        object_key: r.get(4)?,
        size: r.get(5)?,
        sha256: r.get(6)?,
        expires_at_ms: match expires {
            SqlValue::Integer(v) => Some(v),
            _ => None,
        },
        item_id: r.get(8)?,
        attach_checkpoint: r.get(9)?,
    })
}

/// The row of `blob_id`, whatever its tenant or status.
pub fn row(conn: &Connection, blob_id: &str) -> Result<Option<BlobRow>, StoreError> {
    Ok(conn.query_row(&format!("SELECT {ROW_COLUMNS} FROM blob_registry WHERE blob_id = ?1"), [blob_id], row_from).optional()?)
}

/// Every row, by blob id.
pub fn rows(conn: &Connection) -> Result<Vec<BlobRow>, StoreError> {
    let mut st = conn.prepare_cached(&format!("SELECT {ROW_COLUMNS} FROM blob_registry ORDER BY blob_id"))?;
    let rows = st.query_map([], row_from)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The blob `blob_id` of `tenant`, for a read or a delete: 404 when the registry has none (or
/// only another tenant's, or an abandoned one).
pub fn lookup(conn: &Connection, op: BlobOp, tenant: &str, blob_id: &str) -> Result<BlobRow, BlobError> {
    match row(conn, blob_id).map_err(|error| BlobError::Registry { op, error })? {
        Some(r) if r.tenant == tenant && r.status != STATUS_ABANDONED => Ok(r),
        _ => Err(BlobError::NotFound { blob_id: blob_id.into() }),
    }
}

/// A stage about to be registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStage {
    pub blob_id: String,
    pub tenant: String,
    pub client_id: String,
    pub object_key: String,
    pub size: u64,
    pub sha256: String,
    pub now_ms: i64,
    pub ttl_ms: i64,
}

/// Whether a stage is registered already: the same blob from the same client with the same bytes
/// is a retry (`Ok(Some(row))`); anything else under that id is a conflict.
pub fn existing_stage(conn: &Connection, s: &NewStage) -> Result<Option<BlobRow>, BlobError> {
    match row(conn, &s.blob_id).map_err(|error| BlobError::Registry { op: BlobOp::Stage, error })? {
        None => Ok(None),
        Some(r) if r.tenant == s.tenant && r.client_id == s.client_id && r.sha256 == s.sha256 => Ok(Some(r)),
        Some(_) => Err(BlobError::IdConflict { blob_id: s.blob_id.clone() }),
    }
}

/// Registers a staged blob whose object is stored, expiring `ttl_ms` after `now_ms` by the
/// server's clock. A retry returns the row already there.
pub fn insert_stage(conn: &Connection, s: &NewStage) -> Result<BlobRow, BlobError> {
    if let Some(r) = existing_stage(conn, s)? {
        return Ok(r);
    }
    let store = |error: rusqlite::Error| BlobError::Registry { op: BlobOp::Stage, error: error.into() };
    conn.execute(
        &format!(
            "INSERT INTO blob_registry(blob_id, tenant, client_id, status, object_key, size, sha256, staged_at_ms, expires_at_ms)
             VALUES (?1, ?2, ?3, '{STATUS_STAGED}', ?4, ?5, ?6, ?7, ?8)"
        ),
        rusqlite::params![s.blob_id, s.tenant, s.client_id, s.object_key, s.size, s.sha256, s.now_ms, s.now_ms.saturating_add(s.ttl_ms)],
    )
    .map_err(store)?;
    row(conn, &s.blob_id)
        .map_err(|error| BlobError::Registry { op: BlobOp::Stage, error })?
        .ok_or_else(|| BlobError::Registry { op: BlobOp::Stage, error: StoreError::Invalid { detail: format!("staged row {} vanished", s.blob_id) } })
}

/// The checkpoint's required state, or why it is not a coherent tuple.
pub fn parse_checkpoint(c: &AttachCheckpoint) -> Result<BTreeMap<String, u64>, BlobError> {
    if c.client_id.is_empty() {
        return Err(BlobError::InvalidCheckpoint { detail: "clientId is required".into() });
    }
    parse_write_ids(&c.required_last_reconciled_write_ids)
        .map_err(|detail| BlobError::InvalidCheckpoint { detail: format!("requiredLastReconciledWriteIds: {detail}") })
}

/// Attaches staged blob `blob_id` of `tenant` to `item_id`, at server time `now_ms`, if the
/// persisted reconcile state of the checkpoint's client dominates it (runbook 003 §2). Retrying
/// with the identical payload after a success answers the same again.
pub fn attach(conn: &Connection, now_ms: i64, tenant: &str, blob_id: &str, item_id: &str, checkpoint: &AttachCheckpoint) -> Result<BlobBody, BlobError> {
    let required = parse_checkpoint(checkpoint)?;
    let store = |error: rusqlite::Error| BlobError::Registry { op: BlobOp::Attach, error: error.into() };
    let tx = conn.unchecked_transaction().map_err(store)?;
    let row = row(&tx, blob_id).map_err(|error| BlobError::Registry { op: BlobOp::Attach, error })?;
    let Some(row) = row.filter(|r| r.tenant == tenant) else { return Err(BlobError::StagingNotFound { blob_id: blob_id.into() }) };
    if row.client_id != checkpoint.client_id {
        return Err(BlobError::Forbidden { detail: format!("blob {blob_id} was staged by {}, not {}", row.client_id, checkpoint.client_id) });
    }
    let payload = serde_json::to_string(&(item_id, checkpoint)).expect("a checkpoint serializes");
    let body = |observed: Option<ReconcileView>, replayed: bool| BlobBody {
        blob_id: Some(row.blob_id.clone()),
        object_key: Some(row.object_key.clone()),
        status: Some(STATUS_ATTACHED.into()),
        now_ms: Some(now_ms),
        expires_at_ms: row.expires_at_ms,
        observed,
        replayed,
        ..BlobBody::default()
    };
    match row.status.as_str() {
        STATUS_STAGED => {}
        STATUS_ATTACHED if row.attach_checkpoint.as_deref() == Some(payload.as_str()) => return Ok(body(None, true)),
        STATUS_ATTACHED | STATUS_ABANDONED => return Err(BlobError::NotAttachable { status: row.status.clone() }),
        other => return Err(BlobError::AttachFailed { detail: format!("staged row {blob_id} has unknown status {other:?}") }),
    }
    let Some(expires_at_ms) = row.expires_at_ms else {
        return Err(BlobError::AttachFailed { detail: format!("staged row {blob_id} has no valid expiry") });
    };
    if now_ms >= expires_at_ms {
        return Err(BlobError::StagingExpired { expires_at_ms, now_ms });
    }
    let observed = reconcile_view(&tx, &checkpoint.client_id)?;
    if !observed.as_ref().is_some_and(|v| v.dominates(checkpoint.required_cursor, &required)) {
        return Err(BlobError::ReconcileBehind { observed });
    }
    // Conditional on the row still being staged, so a race can never attach it twice.
    let changed = tx
        .execute(
            &format!(
                "UPDATE blob_registry SET status = '{STATUS_ATTACHED}', item_id = ?2, attach_checkpoint = ?3, attached_at_ms = ?4
                 WHERE blob_id = ?1 AND status = '{STATUS_STAGED}'"
            ),
            rusqlite::params![blob_id, item_id, payload, now_ms],
        )
        .map_err(store)?;
    if changed != 1 {
        return Err(BlobError::NotAttachable { status: "changed concurrently".into() });
    }
    tx.commit().map_err(store)?;
    Ok(body(observed, false))
}

/// Removes `blob_id`'s row; says whether there was one.
pub fn remove(conn: &Connection, blob_id: &str) -> Result<bool, StoreError> {
    Ok(conn.execute("DELETE FROM blob_registry WHERE blob_id = ?1", [blob_id])? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::open(dir.path().join("server.db").to_str().unwrap()).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        (dir, conn)
    }

    fn lrw(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(r, w)| (r.to_string(), *w)).collect()
    }

    fn stage(conn: &Connection, blob_id: &str, now_ms: i64) -> BlobRow {
        let s = NewStage {
            blob_id: blob_id.into(),
            tenant: "acme".into(),
            client_id: "desktop".into(),
            object_key: format!("blobs/{blob_id}"),
            size: 3,
            sha256: "abc".into(),
            now_ms,
            ttl_ms: 1_000,
        };
        insert_stage(conn, &s).unwrap()
    }

    fn checkpoint(cursor: u64, required: serde_json::Value) -> AttachCheckpoint {
        AttachCheckpoint { client_id: "desktop".into(), required_cursor: cursor, required_last_reconciled_write_ids: required }
    }

    fn attach_at(conn: &Connection, now_ms: i64, c: &AttachCheckpoint) -> Result<BlobBody, BlobError> {
        attach(conn, now_ms, "acme", "b-1", "note-1", c)
    }

    #[test]
    fn attach_is_refused_with_409_until_the_reconcile_state_dominates_then_the_same_payload_succeeds() {
        let (_d, conn) = db();
        stage(&conn, "b-1", 100);
        let c = checkpoint(5, json!({"desktop": 2}));
        // No persisted state at all.
        let e = attach_at(&conn, 200, &c).unwrap_err();
        assert_eq!((e.status(), e.message()), (409, "Client reconcile state is behind required visibility"));
        // The cursor is there but the write id is behind.
        record_reconcile(&conn, "desktop", 5, &lrw(&[("desktop", 1)])).unwrap();
        assert!(matches!(attach_at(&conn, 200, &c), Err(BlobError::ReconcileBehind { observed: Some(_) })));
        // The write id is there but the cursor is behind.
        let (_d2, conn2) = db();
        stage(&conn2, "b-1", 100);
        record_reconcile(&conn2, "desktop", 4, &lrw(&[("desktop", 2)])).unwrap();
        assert!(matches!(attach_at(&conn2, 200, &c), Err(BlobError::ReconcileBehind { .. })));
        // A required replica that is absent is not dominated.
        record_reconcile(&conn, "desktop", 9, &lrw(&[("desktop", 2)])).unwrap();
        let other = checkpoint(5, json!({"desktop": 2, "laptop": 1}));
        assert!(matches!(attach_at(&conn, 200, &other), Err(BlobError::ReconcileBehind { .. })));
        // The identical payload, retried after reconcile advanced, succeeds.
        let ok = attach_at(&conn, 200, &c).unwrap();
        assert_eq!(ok.observed, Some(ReconcileView { cursor: 9, last_reconciled_write_ids: lrw(&[("desktop", 2)]) }));
        assert_eq!(row(&conn, "b-1").unwrap().unwrap().status, STATUS_ATTACHED);
        // And once more: a retry of a success is answered the same, a different payload is refused.
        assert!(attach_at(&conn, 200, &c).unwrap().replayed);
        assert!(matches!(attach(&conn, 200, "acme", "b-1", "note-2", &c), Err(BlobError::NotAttachable { .. })));
    }

    #[test]
    fn the_recorded_reconcile_state_only_moves_forward() {
        let (_d, conn) = db();
        record_reconcile(&conn, "desktop", 9, &lrw(&[("desktop", 3), ("laptop", 1)])).unwrap();
        record_reconcile(&conn, "desktop", 7, &lrw(&[("desktop", 2), ("phone", 4)])).unwrap();
        let v = reconcile_view(&conn, "desktop").unwrap().unwrap();
        assert_eq!(v, ReconcileView { cursor: 9, last_reconciled_write_ids: lrw(&[("desktop", 3), ("laptop", 1), ("phone", 4)]) });
    }

    #[test]
    fn malformed_reconcile_state_is_a_deterministic_500() {
        let malformed = [
            (json!(9), "'[1,2]'"),
            (json!(9), "'{\"desktop\":0}'"),
            (json!(9), "'{\"desktop\":-3}'"),
            (json!(9), "'{\"desktop\":\"2\"}'"),
            (json!(9), "'{\"desktop\":1.5}'"),
            (json!(9), "'not json'"),
            (json!("x"), "'{\"desktop\":2}'"),
            (json!(-1), "'{\"desktop\":2}'"),
        ];
        for (cursor, lrw_sql) in malformed {
            let (_d, conn) = db();
            stage(&conn, "b-1", 100);
            let cursor_sql = match &cursor {
                serde_json::Value::String(s) => format!("'{s}'"),
                v => v.to_string(),
            };
            conn.execute_batch(&format!("INSERT INTO reconcile_state VALUES ('crdt:desktop', {cursor_sql}, {lrw_sql})")).unwrap();
            for _ in 0..2 {
                let e = attach_at(&conn, 200, &checkpoint(1, json!({"desktop": 1}))).unwrap_err();
                assert_eq!((e.status(), e.message(), e.code()), (500, "Failed to attach staged blob", "blob:attachFailed"), "{cursor} {lrw_sql}: {e}");
            }
            assert_eq!(row(&conn, "b-1").unwrap().unwrap().status, STATUS_STAGED, "a failed attach changes nothing");
        }
    }

    #[test]
    fn malformed_staged_metadata_is_a_deterministic_500() {
        for broken in [
            "UPDATE blob_registry SET expires_at_ms = NULL",
            "UPDATE blob_registry SET expires_at_ms = 'soon'",
            "UPDATE blob_registry SET status = 'blob-stage:???'",
        ] {
            let (_d, conn) = db();
            stage(&conn, "b-1", 100);
            record_reconcile(&conn, "desktop", 9, &lrw(&[("desktop", 3)])).unwrap();
            conn.execute_batch(broken).unwrap();
            let e = attach_at(&conn, 200, &checkpoint(1, json!({"desktop": 1}))).unwrap_err();
            assert_eq!((e.status(), e.message()), (500, "Failed to attach staged blob"), "{broken}");
        }
    }

    #[test]
    fn an_incoherent_checkpoint_is_a_400() {
        let (_d, conn) = db();
        stage(&conn, "b-1", 100);
        for bad in [json!([1]), json!({"desktop": 0}), json!({"": 1}), json!(null)] {
            let e = attach_at(&conn, 200, &checkpoint(1, bad.clone())).unwrap_err();
            assert_eq!(e.status(), 400, "{bad}");
        }
        let mut c = checkpoint(1, json!({}));
        c.client_id = String::new();
        assert_eq!(attach_at(&conn, 200, &c).unwrap_err().status(), 400);
    }

    #[test]
    fn a_staged_row_expires_by_the_server_clock() {
        let (_d, conn) = db();
        let r = stage(&conn, "b-1", 100);
        assert_eq!(r.expires_at_ms, Some(1_100));
        record_reconcile(&conn, "desktop", 9, &lrw(&[("desktop", 3)])).unwrap();
        let c = checkpoint(1, json!({"desktop": 1}));
        let e = attach_at(&conn, 1_100, &c).unwrap_err();
        assert_eq!((e.status(), e.message()), (409, "Blob staging has expired"));
        // A clock that went back makes it attachable again: expiry is the server clock's word.
        assert!(attach_at(&conn, 1_099, &c).is_ok());
    }

    #[test]
    fn attach_of_an_unknown_or_foreign_blob_is_refused() {
        let (_d, conn) = db();
        stage(&conn, "b-1", 100);
        let c = checkpoint(1, json!({}));
        assert_eq!(attach(&conn, 200, "acme", "b-9", "n", &c).unwrap_err().status(), 404);
        assert_eq!(attach(&conn, 200, "globex", "b-1", "n", &c).unwrap_err().status(), 404);
        let mut other = c.clone();
        other.client_id = "laptop".into();
        assert_eq!(attach_at(&conn, 200, &other).unwrap_err().status(), 403);
    }

    #[test]
    fn a_restage_is_a_retry_or_a_conflict() {
        let (_d, conn) = db();
        let first = stage(&conn, "b-1", 100);
        assert_eq!(stage(&conn, "b-1", 500), first, "a retry keeps the first row and its expiry");
        let mut s = NewStage {
            blob_id: "b-1".into(),
            tenant: "acme".into(),
            client_id: "desktop".into(),
            object_key: "k".into(),
            size: 3,
            sha256: "other".into(),
            now_ms: 0,
            ttl_ms: 1,
        };
        assert!(matches!(insert_stage(&conn, &s), Err(BlobError::IdConflict { .. })));
        s.sha256 = "abc".into();
        s.client_id = "laptop".into();
        assert!(matches!(insert_stage(&conn, &s), Err(BlobError::IdConflict { .. })));
    }

    #[test]
    fn lookup_is_404_for_missing_foreign_and_abandoned_blobs() {
        let (_d, conn) = db();
        stage(&conn, "b-1", 100);
        assert!(lookup(&conn, BlobOp::Read, "acme", "b-1").is_ok());
        assert_eq!(lookup(&conn, BlobOp::Read, "globex", "b-1").unwrap_err().status(), 404);
        assert_eq!(lookup(&conn, BlobOp::Read, "acme", "b-2").unwrap_err().status(), 404);
        conn.execute_batch(&format!("UPDATE blob_registry SET status = '{STATUS_ABANDONED}'")).unwrap();
        assert_eq!(lookup(&conn, BlobOp::Read, "acme", "b-1").unwrap_err().status(), 404);
    }
}

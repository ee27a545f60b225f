//! The S3-like object store: its wire protocol and its server.
//!
//! The server keeps one bucket's objects in SQLite on its own node. It answers with S3's error
//! codes; the ones a real store produces on its own (a missing key, a refused bucket) come from
//! its state, and the outage kinds (`ServiceUnavailable`, `SlowDown`, `InternalError`, and a
//! forced `AccessDenied` or `NoSuchKey`) are injected by whoever runs it, per request.

use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::StoreError;
use crate::store;

use super::error::ObjectErrorKind;
use super::wire::{hex_bytes, opt_hex_bytes};

/// The object store's port.
pub const S3_PORT: u16 = 9000;

/// Keys one list answer holds at most.
pub const LIST_KEYS_MAX: usize = 1_000;

/// S3's error codes, as the store answers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum S3ErrorCode {
    NoSuchKey,
    AccessDenied,
    ServiceUnavailable,
    SlowDown,
    InternalError,
}

impl S3ErrorCode {
    pub const ALL: [S3ErrorCode; 5] =
        [S3ErrorCode::NoSuchKey, S3ErrorCode::AccessDenied, S3ErrorCode::ServiceUnavailable, S3ErrorCode::SlowDown, S3ErrorCode::InternalError];

    /// The object layer's view of the code.
    pub fn kind(self) -> ObjectErrorKind {
        match self {
            S3ErrorCode::NoSuchKey => ObjectErrorKind::NoSuchKey,
            S3ErrorCode::AccessDenied => ObjectErrorKind::AccessDenied,
            S3ErrorCode::ServiceUnavailable => ObjectErrorKind::ServiceUnavailable,
            S3ErrorCode::SlowDown => ObjectErrorKind::SlowDown,
            S3ErrorCode::InternalError => ObjectErrorKind::InternalError,
        }
    }

    /// Whether an injected error of this code can answer `req`: a missing key is an answer to
    /// reading an object, not to writing or deleting one (S3 deletes a missing key quietly).
    pub fn applies_to(self, req: &S3Request) -> bool {
        match self {
            S3ErrorCode::NoSuchKey => matches!(req, S3Request::GetObject { .. } | S3Request::HeadObject { .. }),
            _ => true,
        }
    }
}

/// Requests to the object store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "s3_op", rename_all = "snake_case")]
pub enum S3Request {
    PutObject {
        bucket: String,
        key: String,
        #[serde(with = "hex_bytes")]
        bytes: Vec<u8>,
    },
    GetObject {
        bucket: String,
        key: String,
    },
    HeadObject {
        bucket: String,
        key: String,
    },
    DeleteObject {
        bucket: String,
        key: String,
    },
    ListObjects {
        bucket: String,
        prefix: String,
    },
}

impl S3Request {
    /// The key the request is about (empty for a list).
    pub fn key(&self) -> &str {
        match self {
            S3Request::PutObject { key, .. } | S3Request::GetObject { key, .. } | S3Request::HeadObject { key, .. } | S3Request::DeleteObject { key, .. } => {
                key
            }
            S3Request::ListObjects { .. } => "",
        }
    }

    /// The operation's name, for traces.
    pub fn op(&self) -> &'static str {
        match self {
            S3Request::PutObject { .. } => "put",
            S3Request::GetObject { .. } => "get",
            S3Request::HeadObject { .. } => "head",
            S3Request::DeleteObject { .. } => "delete",
            S3Request::ListObjects { .. } => "list",
        }
    }
}

/// A successful answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Reply {
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_hex_bytes")]
    pub bytes: Option<Vec<u8>>,
    /// Hex SHA-256 of the object's bytes (its ETag here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
}

/// Answers of the object store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "s3_status", rename_all = "snake_case")]
pub enum S3Response {
    Ok(S3Reply),
    Error { code: S3ErrorCode, message: String },
}

const OBJECTS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS objects(
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    bytes BLOB NOT NULL,
    etag TEXT NOT NULL,
    PRIMARY KEY(bucket, key)
);
";

/// The object store's server: one bucket's objects in SQLite.
pub struct ObjectServer {
    conn: Connection,
    bucket: String,
}

impl ObjectServer {
    /// Opens (or creates) the store at `path`, serving `bucket`.
    pub fn open(path: &str, bucket: &str) -> Result<ObjectServer, StoreError> {
        let conn = store::open(path)?;
        conn.execute_batch(OBJECTS_SCHEMA)?;
        Ok(ObjectServer { conn, bucket: bucket.into() })
    }

    /// Answers one request; `injected` (when it applies to the request) answers instead of the
    /// store.
    pub fn handle(&mut self, req: &S3Request, injected: Option<S3ErrorCode>) -> S3Response {
        if let Some(code) = injected.filter(|c| c.applies_to(req)) {
            return S3Response::Error { code, message: format!("{code:?} (injected)") };
        }
        match self.answer(req) {
            Ok(r) => r,
            // The store's own disk failed: to its client that is an internal error.
            Err(e) => S3Response::Error { code: S3ErrorCode::InternalError, message: e.to_string() },
        }
    }

    fn answer(&mut self, req: &S3Request) -> Result<S3Response, StoreError> {
        let bucket = match req {
            S3Request::PutObject { bucket, .. }
            | S3Request::GetObject { bucket, .. }
            | S3Request::HeadObject { bucket, .. }
            | S3Request::DeleteObject { bucket, .. }
            | S3Request::ListObjects { bucket, .. } => bucket,
        };
        if *bucket != self.bucket {
            return Ok(S3Response::Error { code: S3ErrorCode::AccessDenied, message: format!("no access to bucket {bucket}") });
        }
        let missing = |key: &str| S3Response::Error { code: S3ErrorCode::NoSuchKey, message: format!("no object {key}") };
        Ok(match req {
            S3Request::PutObject { key, bytes, .. } => {
                let etag = hex::encode(Sha256::digest(bytes));
                self.conn.execute(
                    "INSERT INTO objects(bucket, key, bytes, etag) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(bucket, key) DO UPDATE SET bytes = excluded.bytes, etag = excluded.etag",
                    rusqlite::params![self.bucket, key, bytes, etag],
                )?;
                S3Response::Ok(S3Reply { etag: Some(etag), ..S3Reply::default() })
            }
            S3Request::GetObject { key, .. } => match self.get(key)? {
                Some((bytes, etag)) => S3Response::Ok(S3Reply { bytes: Some(bytes), etag: Some(etag), keys: vec![] }),
                None => missing(key),
            },
            S3Request::HeadObject { key, .. } => match self.get(key)? {
                Some((_, etag)) => S3Response::Ok(S3Reply { etag: Some(etag), ..S3Reply::default() }),
                None => missing(key),
            },
            S3Request::DeleteObject { key, .. } => {
                self.remove(key)?;
                S3Response::Ok(S3Reply::default())
            }
            S3Request::ListObjects { prefix, .. } => {
                let keys = self.keys()?.into_iter().filter(|k| k.starts_with(prefix.as_str())).take(LIST_KEYS_MAX).collect();
                S3Response::Ok(S3Reply { keys, ..S3Reply::default() })
            }
        })
    }

    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, String)>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT bytes, etag FROM objects WHERE bucket = ?1 AND key = ?2", [&self.bucket, key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    /// Deletes an object; says whether there was one. Also what an out-of-band deletion does.
    pub fn remove(&mut self, key: &str) -> Result<bool, StoreError> {
        Ok(self.conn.execute("DELETE FROM objects WHERE bucket = ?1 AND key = ?2", [&self.bucket, key])? > 0)
    }

    /// Every key, in order.
    pub fn keys(&self) -> Result<Vec<String>, StoreError> {
        let mut st = self.conn.prepare_cached("SELECT key FROM objects WHERE bucket = ?1 ORDER BY key")?;
        let rows = st.query_map([&self.bucket], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> (tempfile::TempDir, ObjectServer) {
        let dir = tempfile::tempdir().unwrap();
        let s = ObjectServer::open(dir.path().join("objects.db").to_str().unwrap(), "bucket").unwrap();
        (dir, s)
    }

    fn put(key: &str, bytes: &[u8]) -> S3Request {
        S3Request::PutObject { bucket: "bucket".into(), key: key.into(), bytes: bytes.to_vec() }
    }

    fn get(key: &str) -> S3Request {
        S3Request::GetObject { bucket: "bucket".into(), key: key.into() }
    }

    #[test]
    fn objects_are_stored_read_and_deleted_idempotently() {
        let (_d, mut s) = server();
        assert!(matches!(s.handle(&put("k", b"one"), None), S3Response::Ok(_)));
        assert!(matches!(s.handle(&put("k", b"one"), None), S3Response::Ok(_)), "a retried put is harmless");
        let S3Response::Ok(r) = s.handle(&get("k"), None) else { panic!("stored") };
        assert_eq!(r.bytes.as_deref(), Some(&b"one"[..]));
        let del = S3Request::DeleteObject { bucket: "bucket".into(), key: "k".into() };
        assert!(matches!(s.handle(&del, None), S3Response::Ok(_)));
        assert!(matches!(s.handle(&del, None), S3Response::Ok(_)), "deleting a missing key succeeds, as in S3");
        assert!(matches!(s.handle(&get("k"), None), S3Response::Error { code: S3ErrorCode::NoSuchKey, .. }));
    }

    #[test]
    fn a_wrong_bucket_is_access_denied() {
        let (_d, mut s) = server();
        let req = S3Request::GetObject { bucket: "other".into(), key: "k".into() };
        assert!(matches!(s.handle(&req, None), S3Response::Error { code: S3ErrorCode::AccessDenied, .. }));
    }

    #[test]
    fn every_code_can_be_injected_where_it_applies() {
        let (_d, mut s) = server();
        s.handle(&put("k", b"one"), None);
        for code in S3ErrorCode::ALL {
            assert_eq!(s.handle(&get("k"), Some(code)), S3Response::Error { code, message: format!("{code:?} (injected)") });
        }
        // A missing key is no answer to a put: the put goes through.
        assert!(matches!(s.handle(&put("k2", b"two"), Some(S3ErrorCode::NoSuchKey)), S3Response::Ok(_)));
        assert_eq!(s.keys().unwrap(), vec!["k".to_string(), "k2".to_string()]);
    }
}

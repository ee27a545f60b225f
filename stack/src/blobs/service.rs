//! The server's blob layer: each operation over the registry (metadata) and the object store
//! (bytes), in the order that keeps them consistent and every retry safe.
//!
//! - Stage writes the object first, then registers it: a crash in between leaves an
//!   unreferenced object, never a registry row without its bytes.
//! - Read and delete answer 404 when the registry has no row, 500 when it has one but the object
//!   layer fails.
//! - Delete removes the object first, then the row: if the row removal never happens, the row is
//!   orphaned metadata, which the orphan scan finds.
//! - The orphan scan (an operator operation) checks every row's object and, when asked, removes
//!   the rows whose object is missing. Only a definite `NoSuchKey` makes a row an orphan; a store
//!   that refuses or fails leaves the row unverified, never removed.

use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::server::Server;

use super::error::{BlobError, BlobOp, ObjectError, ObjectErrorKind};
use super::object::{object_key, with_retries, ObjectStore, RetryPolicy};
use super::registry::{self, NewStage};
use super::s3::S3Request;
use super::wire::{AttachCheckpoint, BlobBody, BlobRequest, BlobResponse};

/// Where the registry lives. The blob layer borrows its connection for one synchronous step at
/// a time and never across a wait on the object store.
pub trait RegistryHost: Send + Sync + 'static {
    /// Runs `f` on the registry's connection; `None` when the store is closed.
    fn with_conn<R>(&self, f: impl FnOnce(&Connection) -> R) -> Option<R>;
}

impl RegistryHost for Mutex<Connection> {
    fn with_conn<R>(&self, f: impl FnOnce(&Connection) -> R) -> Option<R> {
        Some(f(&self.lock().unwrap_or_else(|e| e.into_inner())))
    }
}

impl RegistryHost for Mutex<Option<Server>> {
    fn with_conn<R>(&self, f: impl FnOnce(&Connection) -> R) -> Option<R> {
        self.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|s| f(s.registry_conn()))
    }
}

/// Settings of the blob layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobConfig {
    /// The bucket objects go to (`VFS_BLOB_S3_BUCKET`).
    pub bucket: String,
    /// The prefix of every object key (`VFS_BLOB_S3_KEY_PREFIX`).
    pub key_prefix: String,
    /// How long a staged blob stays attachable, by the server's clock.
    pub stage_ttl_ms: i64,
    /// Largest blob.
    pub bytes_max: usize,
    pub retry: RetryPolicy,
}

impl Default for BlobConfig {
    fn default() -> Self {
        BlobConfig { bucket: "drill-blobs".into(), key_prefix: "blobs/".into(), stage_ttl_ms: 600_000, bytes_max: 1 << 20, retry: RetryPolicy::DEFAULT }
    }
}

/// The blob layer of one server.
pub struct BlobService<H: RegistryHost> {
    host: Arc<H>,
    objects: Arc<dyn ObjectStore>,
    clock: Arc<dyn Clock + Send + Sync>,
    config: BlobConfig,
}

impl<H: RegistryHost> BlobService<H> {
    pub fn new(host: Arc<H>, objects: Arc<dyn ObjectStore>, clock: Arc<dyn Clock + Send + Sync>, config: BlobConfig) -> Self {
        BlobService { host, objects, clock, config }
    }

    pub fn config(&self) -> &BlobConfig {
        &self.config
    }

    /// The object key of `blob_id`.
    pub fn key_of(&self, blob_id: &str) -> String {
        object_key(&self.config.key_prefix, blob_id)
    }

    /// Answers one blob request.
    pub async fn handle(&self, req: BlobRequest) -> BlobResponse {
        BlobResponse::from_result(match req {
            BlobRequest::Stage { tenant, client_id, blob_id, bytes } => self.stage(&tenant, &client_id, &blob_id, &bytes).await,
            BlobRequest::Attach { tenant, blob_id, item_id, checkpoint } => self.attach(&tenant, &blob_id, &item_id, &checkpoint),
            BlobRequest::Read { tenant, blob_id } => self.read(&tenant, &blob_id).await,
            BlobRequest::Delete { tenant, blob_id } => self.delete(&tenant, &blob_id).await,
            BlobRequest::Orphans { cleanup } => self.orphans(cleanup).await,
        })
    }

    fn registry<R>(&self, f: impl FnOnce(&Connection) -> Result<R, BlobError>) -> Result<R, BlobError> {
        self.host.with_conn(f).unwrap_or(Err(BlobError::Unavailable))
    }

    async fn object(&self, req: S3Request) -> Result<(super::s3::S3Reply, u32), ObjectError> {
        with_retries(self.objects.as_ref(), &self.config.retry, &req).await
    }

    /// Stores the bytes under the blob's key, then registers the blob as staged.
    pub async fn stage(&self, tenant: &str, client_id: &str, blob_id: &str, bytes: &[u8]) -> Result<BlobBody, BlobError> {
        if blob_id.is_empty() || client_id.is_empty() {
            return Err(BlobError::InvalidRequest { detail: "blobId and clientId are required".into() });
        }
        if bytes.len() > self.config.bytes_max {
            return Err(BlobError::InvalidRequest { detail: format!("{} bytes exceed the limit of {}", bytes.len(), self.config.bytes_max) });
        }
        let s = NewStage {
            blob_id: blob_id.into(),
            tenant: tenant.into(),
            client_id: client_id.into(),
            object_key: self.key_of(blob_id),
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
            now_ms: self.clock.now_unix_ms(),
            ttl_ms: self.config.stage_ttl_ms,
        };
        // A retry of a registered stage is answered from the registry; a conflicting one is
        // refused before anything is written.
        let mut attempts = 0;
        let row = match self.registry(|c| registry::existing_stage(c, &s))? {
            Some(row) => row,
            None => {
                let put = S3Request::PutObject { bucket: self.config.bucket.clone(), key: s.object_key.clone(), bytes: bytes.to_vec() };
                let (_, n) = self.object(put).await.map_err(BlobError::Persist)?;
                attempts = n;
                self.registry(|c| registry::insert_stage(c, &s))?
            }
        };
        Ok(BlobBody {
            blob_id: Some(row.blob_id),
            object_key: Some(row.object_key),
            sha256: Some(row.sha256),
            status: Some(row.status),
            expires_at_ms: row.expires_at_ms,
            now_ms: Some(s.now_ms),
            attempts,
            ..BlobBody::default()
        })
    }

    /// Attaches a staged blob if the client's persisted reconcile state dominates the checkpoint.
    pub fn attach(&self, tenant: &str, blob_id: &str, item_id: &str, checkpoint: &AttachCheckpoint) -> Result<BlobBody, BlobError> {
        let now_ms = self.clock.now_unix_ms();
        self.registry(|c| registry::attach(c, now_ms, tenant, blob_id, item_id, checkpoint))
    }

    /// The blob's bytes, checked against the checksum the registry recorded.
    pub async fn read(&self, tenant: &str, blob_id: &str) -> Result<BlobBody, BlobError> {
        let row = self.registry(|c| registry::lookup(c, BlobOp::Read, tenant, blob_id))?;
        let get = S3Request::GetObject { bucket: self.config.bucket.clone(), key: row.object_key.clone() };
        let (reply, attempts) = self.object(get).await.map_err(BlobError::Read)?;
        let bytes = reply.bytes.unwrap_or_default();
        let sha256 = hex::encode(Sha256::digest(&bytes));
        if sha256 != row.sha256 {
            return Err(BlobError::Read(ObjectError {
                kind: ObjectErrorKind::BadResponse,
                attempts,
                detail: format!("object {} has checksum {sha256}, the registry recorded {}", row.object_key, row.sha256),
            }));
        }
        Ok(BlobBody {
            blob_id: Some(row.blob_id),
            object_key: Some(row.object_key),
            sha256: Some(sha256),
            bytes: Some(bytes),
            status: Some(row.status),
            attempts,
            ..BlobBody::default()
        })
    }

    /// Deletes the object, then the registry row.
    pub async fn delete(&self, tenant: &str, blob_id: &str) -> Result<BlobBody, BlobError> {
        let row = self.registry(|c| registry::lookup(c, BlobOp::Delete, tenant, blob_id))?;
        let del = S3Request::DeleteObject { bucket: self.config.bucket.clone(), key: row.object_key.clone() };
        let (_, attempts) = self.object(del).await.map_err(BlobError::Delete)?;
        self.registry(|c| registry::remove(c, blob_id).map_err(|error| BlobError::Registry { op: BlobOp::Delete, error }))?;
        Ok(BlobBody { blob_id: Some(row.blob_id), object_key: Some(row.object_key), attempts, ..BlobBody::default() })
    }

    /// Finds registry rows whose object is missing and, with `cleanup`, removes them.
    pub async fn orphans(&self, cleanup: bool) -> Result<BlobBody, BlobError> {
        let rows = self.registry(|c| registry::rows(c).map_err(|error| BlobError::Registry { op: BlobOp::Orphans, error }))?;
        let mut body = BlobBody::default();
        for row in rows.iter().filter(|r| r.status != registry::STATUS_ABANDONED) {
            let head = S3Request::HeadObject { bucket: self.config.bucket.clone(), key: row.object_key.clone() };
            match self.object(head).await {
                Ok((_, n)) => body.attempts += n,
                Err(e) if e.kind == ObjectErrorKind::NoSuchKey => {
                    body.attempts += e.attempts;
                    body.orphans.push(row.blob_id.clone());
                }
                Err(e) => {
                    body.attempts += e.attempts;
                    body.unverified.push(row.blob_id.clone());
                }
            }
        }
        if cleanup {
            for id in &body.orphans {
                let removed = self.registry(|c| registry::remove(c, id).map_err(|error| BlobError::Registry { op: BlobOp::Orphans, error }))?;
                body.cleaned += u64::from(removed);
            }
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobs::object::{AttemptFailure, BoxFuture};
    use crate::blobs::s3::{ObjectServer, S3ErrorCode, S3Reply, S3Response};
    use crate::clock::FixedClock;
    use serde_json::json;
    use std::collections::BTreeMap;

    /// The real object server in-process, with a scripted queue of injected errors.
    struct Local {
        server: Mutex<ObjectServer>,
        inject: Mutex<Vec<S3ErrorCode>>,
        calls: Mutex<u32>,
    }

    impl ObjectStore for Local {
        fn call(&self, req: S3Request) -> BoxFuture<'_, Result<S3Reply, AttemptFailure>> {
            *self.calls.lock().unwrap() += 1;
            let injected = {
                let mut q = self.inject.lock().unwrap();
                if q.is_empty() {
                    None
                } else {
                    Some(q.remove(0))
                }
            };
            let resp = self.server.lock().unwrap().handle(&req, injected);
            Box::pin(async move {
                match resp {
                    S3Response::Ok(r) => Ok(r),
                    S3Response::Error { code, message } => Err(AttemptFailure { kind: code.kind(), detail: message }),
                }
            })
        }
    }

    struct World {
        _dir: tempfile::TempDir,
        svc: BlobService<Mutex<Connection>>,
        db: Arc<Mutex<Connection>>,
        objects: Arc<Local>,
    }

    fn world() -> World {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::open(dir.path().join("server.db").to_str().unwrap()).unwrap();
        conn.execute_batch(registry::SCHEMA).unwrap();
        let db = Arc::new(Mutex::new(conn));
        let server = ObjectServer::open(dir.path().join("objects.db").to_str().unwrap(), "drill-blobs").unwrap();
        let objects = Arc::new(Local { server: Mutex::new(server), inject: Mutex::new(vec![]), calls: Mutex::new(0) });
        let svc = BlobService::new(db.clone(), objects.clone(), Arc::new(FixedClock(1_000)), BlobConfig::default());
        World { _dir: dir, svc, db, objects }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        madsim::runtime::Runtime::new().block_on(f)
    }

    impl World {
        fn inject(&self, codes: &[S3ErrorCode]) {
            *self.objects.inject.lock().unwrap() = codes.to_vec();
            *self.objects.calls.lock().unwrap() = 0;
        }
        fn calls(&self) -> u32 {
            *self.objects.calls.lock().unwrap()
        }
        fn run(&self, req: BlobRequest) -> BlobResponse {
            block_on(self.svc.handle(req))
        }
        fn stage(&self, blob_id: &str, bytes: &[u8]) -> BlobResponse {
            self.run(BlobRequest::Stage { tenant: "acme".into(), client_id: "desktop".into(), blob_id: blob_id.into(), bytes: bytes.to_vec() })
        }
        fn read(&self, blob_id: &str) -> BlobResponse {
            self.run(BlobRequest::Read { tenant: "acme".into(), blob_id: blob_id.into() })
        }
        fn delete(&self, blob_id: &str) -> BlobResponse {
            self.run(BlobRequest::Delete { tenant: "acme".into(), blob_id: blob_id.into() })
        }
    }

    fn err(r: &BlobResponse) -> (u16, &str, &str) {
        (r.status, r.error.as_deref().unwrap_or(""), r.code.as_deref().unwrap_or(""))
    }

    #[test]
    fn a_staged_blob_reads_back_its_bytes_and_attaches_after_reconcile() {
        let w = world();
        let staged = w.stage("b-1", b"hello");
        assert_eq!(staged.status, 200, "{staged:?}");
        assert_eq!(staged.body.object_key.as_deref(), Some(w.svc.key_of("b-1").as_str()));
        assert_eq!(staged.body.expires_at_ms, Some(1_000 + BlobConfig::default().stage_ttl_ms));
        assert_eq!(w.read("b-1").body.bytes.as_deref(), Some(&b"hello"[..]));
        let attach = || {
            w.run(BlobRequest::Attach {
                tenant: "acme".into(),
                blob_id: "b-1".into(),
                item_id: "note-1".into(),
                checkpoint: AttachCheckpoint { client_id: "desktop".into(), required_cursor: 3, required_last_reconciled_write_ids: json!({"desktop": 1}) },
            })
        };
        assert_eq!(err(&attach()), (409, "Client reconcile state is behind required visibility", "blob:reconcileBehind"));
        let lrw: BTreeMap<String, u64> = [("desktop".to_string(), 1)].into();
        registry::record_reconcile(&w.db.lock().unwrap(), "desktop", 3, &lrw).unwrap();
        assert_eq!(attach().status, 200);
    }

    #[test]
    fn a_retried_stage_writes_the_same_key_and_registers_once() {
        let w = world();
        let a = w.stage("b-1", b"hello");
        let b = w.stage("b-1", b"hello");
        assert_eq!(a.body.object_key, b.body.object_key);
        assert_eq!(a.body.expires_at_ms, b.body.expires_at_ms);
        assert_eq!(w.objects.server.lock().unwrap().keys().unwrap().len(), 1);
        assert_eq!(err(&w.stage("b-1", b"other")).0, 409);
    }

    #[test]
    fn stage_survives_transient_errors_and_reports_each_failure_with_its_code() {
        let w = world();
        w.inject(&[S3ErrorCode::SlowDown, S3ErrorCode::ServiceUnavailable, S3ErrorCode::InternalError]);
        let r = w.stage("b-1", b"x");
        assert_eq!((r.status, r.body.attempts), (200, 4));
        for code in [S3ErrorCode::ServiceUnavailable, S3ErrorCode::SlowDown, S3ErrorCode::InternalError] {
            w.inject(&[code; 8]);
            let r = w.stage(&format!("b-{code:?}"), b"x");
            assert_eq!(err(&r), (500, "Failed to persist blob data", code.kind().code()));
            assert_eq!((r.body.attempts, w.calls()), (RetryPolicy::DEFAULT.attempts_max, RetryPolicy::DEFAULT.attempts_max), "{code:?}");
        }
        w.inject(&[S3ErrorCode::AccessDenied; 8]);
        let r = w.stage("b-denied", b"x");
        assert_eq!(err(&r), (500, "Failed to persist blob data", "s3:AccessDenied"));
        assert_eq!((r.body.attempts, w.calls()), (1, 1), "AccessDenied is surfaced, not retried");
        // Nothing was registered for the failed stages.
        assert_eq!(err(&w.read("b-denied")).0, 404);
    }

    #[test]
    fn read_is_404_without_a_row_and_500_when_the_object_layer_fails() {
        let w = world();
        assert_eq!(err(&w.read("nope")), (404, "Blob not found", "blob:notFound"));
        w.stage("b-1", b"x");
        w.inject(&[S3ErrorCode::NoSuchKey]);
        assert_eq!(err(&w.read("b-1")), (500, "Failed to read blob data", "s3:NoSuchKey"));
        assert_eq!(w.calls(), 1, "a missing key is not retried");
        w.inject(&[S3ErrorCode::AccessDenied]);
        assert_eq!(err(&w.read("b-1")), (500, "Failed to read blob data", "s3:AccessDenied"));
        w.inject(&[S3ErrorCode::InternalError; 8]);
        assert_eq!(err(&w.read("b-1")), (500, "Failed to read blob data", "s3:InternalError"));
        w.inject(&[]);
        assert_eq!(w.read("b-1").status, 200);
    }

    #[test]
    fn read_refuses_bytes_that_do_not_match_the_registry() {
        let w = world();
        w.stage("b-1", b"x");
        let key = w.svc.key_of("b-1");
        let put = S3Request::PutObject { bucket: "drill-blobs".into(), key, bytes: b"tampered".to_vec() };
        w.objects.server.lock().unwrap().handle(&put, None);
        assert_eq!(err(&w.read("b-1")), (500, "Failed to read blob data", "s3:badResponse"));
    }

    #[test]
    fn delete_is_404_without_a_row_500_when_the_object_layer_fails_and_idempotent_otherwise() {
        let w = world();
        assert_eq!(err(&w.delete("nope")).0, 404);
        w.stage("b-1", b"x");
        w.inject(&[S3ErrorCode::AccessDenied]);
        assert_eq!(err(&w.delete("b-1")), (500, "Failed to delete blob data", "s3:AccessDenied"));
        assert_eq!(w.read("b-1").status, 200, "a failed delete keeps the blob");
        w.inject(&[S3ErrorCode::SlowDown]);
        assert_eq!(w.delete("b-1").status, 200);
        assert_eq!(err(&w.read("b-1")).0, 404);
        assert!(w.objects.server.lock().unwrap().keys().unwrap().is_empty());
    }

    #[test]
    fn orphaned_metadata_is_found_and_cleaned_up() {
        let w = world();
        for id in ["b-1", "b-2", "b-3"] {
            w.stage(id, id.as_bytes());
        }
        // Out of band: the object of b-2 is deleted behind the registry's back.
        w.objects.server.lock().unwrap().remove(&w.svc.key_of("b-2")).unwrap();
        assert_eq!(err(&w.read("b-2")), (500, "Failed to read blob data", "s3:NoSuchKey"));
        let scan = w.run(BlobRequest::Orphans { cleanup: false });
        assert_eq!((scan.body.orphans.clone(), scan.body.cleaned), (vec!["b-2".to_string()], 0));
        // A store that refuses during a scan leaves rows unverified, never removed.
        w.inject(&[S3ErrorCode::AccessDenied]);
        let refused = w.run(BlobRequest::Orphans { cleanup: true });
        assert_eq!(refused.body.unverified, vec!["b-1".to_string()]);
        assert_eq!(refused.body.orphans, vec!["b-2".to_string()]);
        assert_eq!(refused.body.cleaned, 1);
        assert_eq!(err(&w.read("b-2")).0, 404, "after cleanup the orphan is gone from the registry");
        assert_eq!(w.read("b-1").status, 200);
        assert!(w.run(BlobRequest::Orphans { cleanup: true }).body.orphans.is_empty());
    }
}

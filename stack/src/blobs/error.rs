//! Typed blob errors. Each has an HTTP-like status, a stable code for traces and monitoring, and
//! the message the runbook's symptoms name ("Failed to persist blob data", "Client reconcile
//! state is behind required visibility", ...): those strings are part of the API.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;

use super::wire::ReconcileView;

/// What the object store (or the way to it) answered when an object operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ObjectErrorKind {
    /// The object is missing: with a registry row, that is orphaned metadata.
    NoSuchKey,
    /// The store refused the credentials or the bucket: a configuration error, never retried.
    AccessDenied,
    /// A transient outage: retried.
    ServiceUnavailable,
    /// Throttling: retried with backoff.
    SlowDown,
    /// The store failed internally: retried.
    InternalError,
    /// No answer within the call's timeout (a lost message, a slow store): retried.
    Timeout,
    /// The answer was malformed, or the bytes did not match their recorded checksum.
    BadResponse,
}

impl ObjectErrorKind {
    pub const ALL: [ObjectErrorKind; 7] = [
        ObjectErrorKind::NoSuchKey,
        ObjectErrorKind::AccessDenied,
        ObjectErrorKind::ServiceUnavailable,
        ObjectErrorKind::SlowDown,
        ObjectErrorKind::InternalError,
        ObjectErrorKind::Timeout,
        ObjectErrorKind::BadResponse,
    ];

    /// The stable code, `s3:<S3 error code>` for the store's own codes.
    pub fn code(self) -> &'static str {
        match self {
            ObjectErrorKind::NoSuchKey => "s3:NoSuchKey",
            ObjectErrorKind::AccessDenied => "s3:AccessDenied",
            ObjectErrorKind::ServiceUnavailable => "s3:ServiceUnavailable",
            ObjectErrorKind::SlowDown => "s3:SlowDown",
            ObjectErrorKind::InternalError => "s3:InternalError",
            ObjectErrorKind::Timeout => "s3:timeout",
            ObjectErrorKind::BadResponse => "s3:badResponse",
        }
    }

    /// Whether the same request may succeed if sent again: the runbook's "safe to retry" codes
    /// and timeouts. A missing key or refused access stays so.
    pub fn transient(self) -> bool {
        matches!(self, ObjectErrorKind::ServiceUnavailable | ObjectErrorKind::SlowDown | ObjectErrorKind::InternalError | ObjectErrorKind::Timeout)
    }
}

/// An object operation that failed for good: the last answer and how many attempts were made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectError {
    pub kind: ObjectErrorKind,
    pub attempts: u32,
    pub detail: String,
}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} after {} attempt(s): {}", self.kind.code(), self.attempts, self.detail)
    }
}

/// The blob operation an error belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobOp {
    Stage,
    Attach,
    Read,
    Delete,
    Orphans,
}

/// Why a blob request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobError {
    /// The request is malformed (an empty id, too many bytes).
    InvalidRequest { detail: String },
    /// The attach checkpoint is not a coherent `{clientId, requiredCursor,
    /// requiredLastReconciledWriteIds}` tuple.
    InvalidCheckpoint { detail: String },
    /// The blob belongs to another client.
    Forbidden { detail: String },
    /// The registry has no such blob (the metadata layer).
    NotFound { blob_id: String },
    /// Attach: the registry has no staged row for the blob.
    StagingNotFound { blob_id: String },
    /// Attach: the row is no longer `blob-stage:staged` (attached with another payload, or
    /// abandoned).
    NotAttachable { status: String },
    /// Attach: the staged row expired by the server's clock.
    StagingExpired { expires_at_ms: i64, now_ms: i64 },
    /// Attach: the server's persisted reconcile state for the client does not dominate the
    /// checkpoint (or there is none). `observed` is what it holds.
    ReconcileBehind { observed: Option<ReconcileView> },
    /// Stage: the blob id is staged already, with other bytes or by another client.
    IdConflict { blob_id: String },
    /// Attach: the staged row or the persisted reconcile state is malformed.
    AttachFailed { detail: String },
    /// Stage: the object store did not take the bytes.
    Persist(ObjectError),
    /// Read: the object store did not give the bytes back.
    Read(ObjectError),
    /// Delete: the object store did not delete the object.
    Delete(ObjectError),
    /// The registry's storage failed.
    Registry { op: BlobOp, error: StoreError },
    /// The server's store is closed (it is recovering).
    Unavailable,
}

/// The runbook's answer texts.
pub const MSG_RECONCILE_BEHIND: &str = "Client reconcile state is behind required visibility";
pub const MSG_ATTACH_FAILED: &str = "Failed to attach staged blob";
pub const MSG_PERSIST_FAILED: &str = "Failed to persist blob data";
pub const MSG_READ_FAILED: &str = "Failed to read blob data";
pub const MSG_DELETE_FAILED: &str = "Failed to delete blob data";

impl BlobError {
    /// The HTTP-like status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            BlobError::InvalidRequest { .. } | BlobError::InvalidCheckpoint { .. } => 400,
            BlobError::Forbidden { .. } => 403,
            BlobError::NotFound { .. } | BlobError::StagingNotFound { .. } => 404,
            BlobError::NotAttachable { .. } | BlobError::StagingExpired { .. } | BlobError::ReconcileBehind { .. } | BlobError::IdConflict { .. } => 409,
            BlobError::AttachFailed { .. } | BlobError::Persist(_) | BlobError::Read(_) | BlobError::Delete(_) | BlobError::Registry { .. } => 500,
            BlobError::Unavailable => 503,
        }
    }

    /// A short stable code: `blob:<code>`, the object store's `s3:<code>`, or the registry's
    /// `store:<code>`.
    pub fn code(&self) -> &'static str {
        match self {
            BlobError::InvalidRequest { .. } => "blob:invalidRequest",
            BlobError::InvalidCheckpoint { .. } => "blob:invalidCheckpoint",
            BlobError::Forbidden { .. } => "blob:forbidden",
            BlobError::NotFound { .. } => "blob:notFound",
            BlobError::StagingNotFound { .. } => "blob:stagingNotFound",
            BlobError::NotAttachable { .. } => "blob:notAttachable",
            BlobError::StagingExpired { .. } => "blob:stagingExpired",
            BlobError::ReconcileBehind { .. } => "blob:reconcileBehind",
            BlobError::IdConflict { .. } => "blob:idConflict",
            BlobError::AttachFailed { .. } => "blob:attachFailed",
            BlobError::Persist(e) | BlobError::Read(e) | BlobError::Delete(e) => e.kind.code(),
            BlobError::Registry { error, .. } => error.code(),
            BlobError::Unavailable => "blob:unavailable",
        }
    }

    /// The answer's error text, as the runbook names it.
    pub fn message(&self) -> &'static str {
        match self {
            BlobError::InvalidRequest { .. } => "Invalid blob request",
            BlobError::InvalidCheckpoint { .. } => "Invalid visibility checkpoint",
            BlobError::Forbidden { .. } => "Forbidden",
            BlobError::NotFound { .. } => "Blob not found",
            BlobError::StagingNotFound { .. } => "Blob staging not found",
            BlobError::NotAttachable { .. } => "Blob staging is no longer attachable",
            BlobError::StagingExpired { .. } => "Blob staging has expired",
            BlobError::ReconcileBehind { .. } => MSG_RECONCILE_BEHIND,
            BlobError::IdConflict { .. } => "Blob id is already staged with other bytes",
            BlobError::AttachFailed { .. } => MSG_ATTACH_FAILED,
            BlobError::Persist(_) => MSG_PERSIST_FAILED,
            BlobError::Read(_) => MSG_READ_FAILED,
            BlobError::Delete(_) => MSG_DELETE_FAILED,
            BlobError::Registry { op, .. } => match op {
                BlobOp::Stage => "Failed to stage blob",
                BlobOp::Attach => MSG_ATTACH_FAILED,
                BlobOp::Read => "Failed to read blob",
                BlobOp::Delete => "Failed to delete blob",
                BlobOp::Orphans => "Failed to scan the blob registry",
            },
            BlobError::Unavailable => "Server store is closed",
        }
    }

    /// Attempts the object layer made, for errors from it.
    pub fn attempts(&self) -> u32 {
        match self {
            BlobError::Persist(e) | BlobError::Read(e) | BlobError::Delete(e) => e.attempts,
            _ => 0,
        }
    }

    /// What an operator needs beyond the message.
    pub fn detail(&self) -> String {
        match self {
            BlobError::InvalidRequest { detail }
            | BlobError::InvalidCheckpoint { detail }
            | BlobError::Forbidden { detail }
            | BlobError::AttachFailed { detail } => detail.clone(),
            BlobError::NotFound { blob_id } | BlobError::StagingNotFound { blob_id } | BlobError::IdConflict { blob_id } => {
                format!("blob {blob_id}")
            }
            BlobError::NotAttachable { status } => format!("staged row status is {status}"),
            BlobError::StagingExpired { expires_at_ms, now_ms } => format!("expired at {expires_at_ms}, server clock reads {now_ms}"),
            BlobError::ReconcileBehind { observed: None } => "no persisted reconcile state for the client".into(),
            BlobError::ReconcileBehind { observed: Some(v) } => {
                format!("persisted cursor {} and lastReconciledWriteIds {:?}", v.cursor, v.last_reconciled_write_ids)
            }
            BlobError::Persist(e) | BlobError::Read(e) | BlobError::Delete(e) => e.to_string(),
            BlobError::Registry { error, .. } => error.to_string(),
            BlobError::Unavailable => "the server is recovering".into(),
        }
    }
}

impl fmt::Display for BlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ({}): {}", self.status(), self.message(), self.code(), self.detail())
    }
}

impl std::error::Error for BlobError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runbook_status_and_messages_are_stable() {
        let obj = |kind| ObjectError { kind, attempts: 1, detail: String::new() };
        let cases: Vec<(BlobError, u16, &str, &str)> = vec![
            (BlobError::ReconcileBehind { observed: None }, 409, "blob:reconcileBehind", "Client reconcile state is behind required visibility"),
            (BlobError::AttachFailed { detail: "x".into() }, 500, "blob:attachFailed", "Failed to attach staged blob"),
            (BlobError::Persist(obj(ObjectErrorKind::SlowDown)), 500, "s3:SlowDown", "Failed to persist blob data"),
            (BlobError::Read(obj(ObjectErrorKind::NoSuchKey)), 500, "s3:NoSuchKey", "Failed to read blob data"),
            (BlobError::Delete(obj(ObjectErrorKind::AccessDenied)), 500, "s3:AccessDenied", "Failed to delete blob data"),
            (BlobError::NotFound { blob_id: "b".into() }, 404, "blob:notFound", "Blob not found"),
            (BlobError::StagingExpired { expires_at_ms: 1, now_ms: 2 }, 409, "blob:stagingExpired", "Blob staging has expired"),
        ];
        for (e, status, code, message) in cases {
            assert_eq!((e.status(), e.code(), e.message()), (status, code, message), "{e}");
        }
    }

    #[test]
    fn only_the_runbooks_safe_to_retry_codes_are_transient() {
        let transient: Vec<ObjectErrorKind> = ObjectErrorKind::ALL.into_iter().filter(|k| k.transient()).collect();
        assert_eq!(transient, vec![ObjectErrorKind::ServiceUnavailable, ObjectErrorKind::SlowDown, ObjectErrorKind::InternalError, ObjectErrorKind::Timeout]);
    }
}

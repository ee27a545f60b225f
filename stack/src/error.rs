//! Typed errors a user can act on. Sync guardrails carry the `stage:code` signatures that the
//! operational runbooks name; they are part of the stack's API.

use std::fmt;

/// What went wrong with local storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// A page failed its checksum or SQLite found the file malformed: the database is corrupt.
    Corrupt { detail: String },
    /// The disk is full.
    Full,
    /// The disk failed an operation (read, write, sync, open).
    Io { detail: String },
    /// Any other SQLite failure.
    Sqlite { detail: String },
    /// The database holds something the stack did not write (a broken invariant of its own).
    Invalid { detail: String },
    /// The store is READ_ONLY (runbook 004): the write was refused and nothing changed.
    ReadOnly,
    /// A key the write needs is not available: `code` is the key store's (`keys:...`).
    Keys { code: &'static str, detail: String },
}

impl StoreError {
    /// A short stable code for traces and diagnostics.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Corrupt { .. } => "store:corrupt",
            StoreError::Full => "store:full",
            StoreError::Io { .. } => "store:io",
            StoreError::Sqlite { .. } => "store:sqlite",
            StoreError::Invalid { .. } => "store:invalid",
            StoreError::ReadOnly => "store:readOnly",
            StoreError::Keys { code, .. } => code,
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Corrupt { detail } => write!(f, "database is corrupt: {detail}"),
            StoreError::Full => write!(f, "disk is full"),
            StoreError::Io { detail } => write!(f, "disk I/O error: {detail}"),
            StoreError::Sqlite { detail } => write!(f, "sqlite error: {detail}"),
            StoreError::Invalid { detail } => write!(f, "stored data is invalid: {detail}"),
            StoreError::ReadOnly => write!(f, "{}", crate::projections::resilience::ReadOnly),
            StoreError::Keys { detail, .. } => write!(f, "{detail}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ffi::ErrorCode as C;
        let detail = e.to_string();
        match e.sqlite_error_code() {
            Some(C::DatabaseCorrupt) | Some(C::NotADatabase) => StoreError::Corrupt { detail },
            Some(C::DiskFull) => StoreError::Full,
            Some(C::SystemIoFailure) | Some(C::CannotOpen) => {
                // A page checksum mismatch surfaces as SQLITE_IOERR_DATA: that is corruption.
                if let rusqlite::Error::SqliteFailure(f, _) = &e {
                    if f.extended_code == rusqlite::ffi::SQLITE_IOERR_DATA {
                        return StoreError::Corrupt { detail };
                    }
                }
                StoreError::Io { detail }
            }
            _ => StoreError::Sqlite { detail },
        }
    }
}

impl From<crate::keys::KeyError> for StoreError {
    fn from(e: crate::keys::KeyError) -> Self {
        match e {
            crate::keys::KeyError::Store(s) => s,
            other => StoreError::Keys { code: other.code(), detail: other.to_string() },
        }
    }
}

impl From<crate::projections::resilience::CheckError> for StoreError {
    fn from(e: crate::projections::resilience::CheckError) -> Self {
        match e {
            crate::projections::resilience::CheckError::ReadOnly(_) => StoreError::ReadOnly,
            crate::projections::resilience::CheckError::Store(s) => s,
        }
    }
}

impl From<crate::projections::ProjectionError> for StoreError {
    fn from(e: crate::projections::ProjectionError) -> Self {
        use crate::projections::ProjectionError as P;
        match e {
            P::ReadOnly => StoreError::ReadOnly,
            P::Store(s) => s,
            other => StoreError::Invalid { detail: other.to_string() },
        }
    }
}

/// Why a sync attempt failed. A failed attempt leaves the client's exported state unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncError {
    /// The server did not answer in time, or the network refused the message.
    Transport { detail: String },
    /// The server answered with an error.
    Server { code: String, message: String },
    /// A guardrail stopped the attempt: the transport or server broke a protocol invariant.
    Guardrail { stage: &'static str, code: &'static str, detail: String },
    /// The server compacted the events this device still needs: resynchronise from the floor
    /// with `Client::full_resync`.
    ResyncRequired { floor_seq: u64, floor_hash: Vec<u8> },
    /// The peer speaks a protocol version outside the supported window.
    Protocol { detail: String },
    /// The state to hydrate from is malformed or does not belong to this device.
    Hydrate { detail: String },
    /// The server refused this device's token (`keys:tokenExpired`, `keys:tokenInvalid`,
    /// `keys:tokenIdentityMismatch`) even after a refresh, or refused to issue one: reconnect
    /// to force the refresh path, and check the token service and the pairing.
    Token { code: String, detail: String },
    /// Local storage failed.
    Store(StoreError),
}

impl SyncError {
    /// The `stage:code` signature of a guardrail violation.
    pub fn signature(&self) -> Option<String> {
        match self {
            SyncError::Guardrail { stage, code, .. } => Some(format!("{stage}:{code}")),
            SyncError::Hydrate { .. } => Some("hydrate:hydrateGuardrailViolation".into()),
            _ => None,
        }
    }

    /// A short stable code for traces.
    pub fn code(&self) -> String {
        match self {
            SyncError::Transport { .. } => "sync:transport".into(),
            SyncError::Server { code, .. } => format!("server:{code}"),
            SyncError::Guardrail { stage, code, .. } => format!("{stage}:{code}"),
            SyncError::Protocol { .. } => "sync:protocolVersion".into(),
            SyncError::ResyncRequired { .. } => "pull:resyncRequired".into(),
            SyncError::Hydrate { .. } => "hydrate:hydrateGuardrailViolation".into(),
            SyncError::Token { code, .. } => code.clone(),
            SyncError::Store(e) => e.code().into(),
        }
    }
}

impl fmt::Display for SyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncError::Transport { detail } => write!(f, "transport failed: {detail}"),
            SyncError::Server { code, message } => write!(f, "server error {code}: {message}"),
            SyncError::Guardrail { stage, code, detail } => write!(f, "{stage}:{code}: {detail}"),
            SyncError::Protocol { detail } => write!(f, "protocol version refused: {detail}"),
            SyncError::ResyncRequired { floor_seq, .. } => {
                write!(f, "the server no longer holds events before {floor_seq}: a full resync from there is required")
            }
            SyncError::Hydrate { detail } => write!(f, "hydrate:hydrateGuardrailViolation: {detail}"),
            SyncError::Token { code, detail } => write!(f, "{code}: {detail}: reconnect to force a token refresh"),
            SyncError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SyncError {}

impl From<StoreError> for SyncError {
    fn from(e: StoreError) -> Self {
        SyncError::Store(e)
    }
}

impl From<rusqlite::Error> for SyncError {
    fn from(e: rusqlite::Error) -> Self {
        SyncError::Store(e.into())
    }
}

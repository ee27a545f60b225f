//! Projections (runbooks 004 and 000): derived SQLite tables folded from decrypted events,
//! disposable and rebuildable.
//!
//! - [`Projection`]: one derived table set; [`builtin`] has an aggregate's current state and
//!   per-tenant counters.
//! - [`Engine`]: folds events into every active projection, exactly once per projection (each
//!   keeps a cursor per tenant). An aggregate whose key is missing is skipped as a whole and
//!   reported incomplete (runbook 000, "Key loss"), so a projection is always the fold of the
//!   events of the aggregates it reports complete. Rebuilds: full, per tenant, per projection, up
//!   to a point in time, and from the latest valid snapshot plus the tail ([`snapshot`]).
//! - [`resilience`]: NORMAL / DEGRADED / READ_ONLY, checked before every write.
//! - [`health`]: the dashboard status of runbook 004 §7.
//!
//! The engine works on a connection the caller owns (the device's or server's database: one
//! connection per database per node) and on events the caller passes in, so it knows nothing of
//! sync or of the event table's layout.

pub mod builtin;
mod engine;
pub mod health;
pub mod resilience;
pub mod snapshot;
pub mod verify;

use std::collections::BTreeMap;
use std::fmt;

use rusqlite::Connection;

use crate::crypto::{Key, Nonce};
use crate::error::StoreError;
use crate::keys::{KeyError, KeyStore};

pub use engine::{ApplyReport, Engine, Incomplete, Scope};

/// An event as stored: its payload sealed under its aggregate's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedEvent {
    pub seq: u64,
    pub tenant: String,
    pub aggregate: String,
    pub kind: String,
    /// When the event was created, by the writer's clock.
    pub ts_ms: i64,
    pub nonce: Nonce,
    pub ciphertext: Vec<u8>,
}

/// An event a projection folds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecryptedEvent {
    pub seq: u64,
    pub tenant: String,
    pub aggregate: String,
    pub kind: String,
    pub ts_ms: i64,
    pub payload: Vec<u8>,
}

/// One projection: its tables, how it folds one event, and its state as canonical rows.
pub trait Projection: Send + Sync {
    /// A stable name (also the snapshots' key).
    fn name(&self) -> &'static str;
    /// Whether DEGRADED may switch it off (false) or not (true).
    fn essential(&self) -> bool;
    /// `CREATE TABLE IF NOT EXISTS` statements.
    fn schema(&self) -> &'static str;
    /// Deletes `tenant`'s rows, and only those.
    fn clear(&self, c: &Connection, tenant: &str) -> Result<(), StoreError>;
    /// Folds one event into the tables.
    fn apply(&self, c: &Connection, e: &DecryptedEvent) -> Result<(), StoreError>;
    /// `tenant`'s state, as rows of strings in a canonical order.
    fn rows(&self, c: &Connection, tenant: &str) -> Result<Vec<Vec<String>>, StoreError>;
    /// Writes `rows` (as [`Projection::rows`] gave them) back for `tenant`, whose rows are empty.
    fn load(&self, c: &Connection, tenant: &str, rows: &[Vec<String>]) -> Result<(), StoreError>;
}

/// Where projections get aggregate keys.
pub trait KeyRing {
    fn aggregate_key(&self, aggregate: &str) -> Result<Key, KeyError>;

    /// The event as projections fold it, or why it is unreadable (a stable code). By default its
    /// payload opened under its aggregate's key; a store that folds what it holds without keys
    /// (the server: [`crate::server::StoredForm`]) says otherwise.
    fn open(&self, e: &SealedEvent) -> Result<DecryptedEvent, &'static str> {
        engine::decrypt(e, self)
    }
}

impl KeyRing for KeyStore {
    fn aggregate_key(&self, aggregate: &str) -> Result<Key, KeyError> {
        KeyStore::aggregate_key(self, aggregate)
    }
}

impl KeyRing for BTreeMap<String, Key> {
    fn aggregate_key(&self, aggregate: &str) -> Result<Key, KeyError> {
        self.get(aggregate).cloned().ok_or_else(|| KeyError::AggregateKeyMissing { aggregate: aggregate.into() })
    }
}

/// Why a projection operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectionError {
    /// The store is READ_ONLY: the command was refused and nothing changed.
    ReadOnly,
    /// No projection has this name.
    UnknownProjection {
        name: String,
    },
    /// A snapshot of state that lacks aggregates (missing keys) would hide them after a restore.
    SnapshotIncomplete {
        projection: String,
        tenant: String,
        aggregates: Vec<String>,
    },
    Store(StoreError),
}

impl ProjectionError {
    /// A short stable code for traces and diagnostics.
    pub fn code(&self) -> &'static str {
        match self {
            ProjectionError::ReadOnly => "store:readOnly",
            ProjectionError::UnknownProjection { .. } => "projection:unknown",
            ProjectionError::SnapshotIncomplete { .. } => "projection:snapshotIncomplete",
            ProjectionError::Store(e) => e.code(),
        }
    }
}

impl fmt::Display for ProjectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProjectionError::ReadOnly => write!(f, "{}", resilience::ReadOnly),
            ProjectionError::UnknownProjection { name } => write!(f, "projection:unknown: no projection {name}"),
            ProjectionError::SnapshotIncomplete { projection, tenant, aggregates } => write!(
                f,
                "projection:snapshotIncomplete: {projection} of {tenant} lacks aggregates {aggregates:?} (missing keys): import keys and rebuild first"
            ),
            ProjectionError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ProjectionError {}

impl From<StoreError> for ProjectionError {
    fn from(e: StoreError) -> Self {
        ProjectionError::Store(e)
    }
}

impl From<rusqlite::Error> for ProjectionError {
    fn from(e: rusqlite::Error) -> Self {
        ProjectionError::Store(e.into())
    }
}

impl From<resilience::CheckError> for ProjectionError {
    fn from(e: resilience::CheckError) -> Self {
        match e {
            resilience::CheckError::ReadOnly(_) => ProjectionError::ReadOnly,
            resilience::CheckError::Store(s) => ProjectionError::Store(s),
        }
    }
}

#[cfg(test)]
mod tests;

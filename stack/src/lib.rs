//! drill-stack: the local-first store + sync stack under test.
//!
//! Real code, not a model: SQLite for storage, a SHA-256 hash chain over events, and a
//! request/response protocol over the network. It reaches the world only through madsim's
//! network and time, the [`clock::Clock`] it is given, and SQLite's default VFS.
//!
//! - [`store`]: the SQLite schema and connection settings shared by client and server.
//! - [`chain`]: the event hash chain.
//! - [`proto`]: the wire protocol.
//! - [`server`]: the server's store, which holds the total order, and its request handler; its
//!   resilience modes, projections, full backups, continuous archive and restore (runbook 004).
//! - [`backup_node`]: the node that keeps the server's backups and archive segments, and its
//!   protocol.
//! - [`client`]: a device's store with its outbox, and the sync that pushes and pulls.
//! - [`rpc`]: request/response over madsim endpoints.
//! - [`blobs`]: staged blobs in an S3-like object store, their registry, and attach with a
//!   visibility checkpoint (runbook 003 §2, §3).
//! - [`fs`]: plain files beside the databases (the [`fs::FileSystem`] seam).
//! - [`jobs`]: ingest → backend run → persist, JSONL export and import, and the persistence
//!   recoveries of runbook 001.
//! - [`envelope`]: the stored form of a payload, sealed under its aggregate's key.
//! - [`crypto`]: XChaCha20-Poly1305 seals for payloads (bound to tenant, aggregate and type) and
//!   wrapped keys.
//! - [`keys`]: the key store (identity, aggregate, vault and group keys under a passphrase),
//!   backups, half-restore detection and tokens (runbooks 000, 002).
//! - [`projections`]: derived tables folded from decrypted events, rebuilds, snapshots,
//!   resilience modes and health (runbooks 004, 000).
//! - [`saga`]: a saga that persists its own state and reconciles on start, so its external
//!   effect happens exactly once across crashes (runbook 000).
//! - [`artifacts`]: encrypted index artifacts derived from projections; a corrupt one is
//!   detected, deleted and rebuilt (runbook 000).
//! - [`migrate`]: schema versions and the crash-safe migration (snapshot, rebuild, swap), with
//!   `migrate:legacyMigrationBlocked` when it cannot finish.
//! - [`mutations`]: planted bugs a test plan switches on, consulted at the one place each would
//!   live (the projection engine's incremental fold, the snapshot writer).
//! - [`diagnostics`]: the export bundle (counts, hashes, modes, health, recent error codes),
//!   free of keys and plaintext by construction, and the check that proves it (runbook 000).

pub mod artifacts;
pub mod backup_node;
pub mod blobs;
pub mod chain;
pub mod client;
pub mod clock;
pub mod crypto;
pub mod diagnostics;
pub mod envelope;
pub mod error;
pub mod fs;
pub mod jobs;
pub mod keys;
pub mod migrate;
pub mod mutations;
pub mod projections;
pub mod proto;
pub mod rpc;
pub mod saga;
pub mod server;
pub mod store;

pub use error::{StoreError, SyncError};

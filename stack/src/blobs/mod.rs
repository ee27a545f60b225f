//! Blobs (runbook 003 §2 and §3): bytes a device stages on the server, kept in an S3-like object
//! store, recorded in a registry on the server, and attached once the server's view of the
//! device's reconcile state dominates the device's visibility checkpoint.
//!
//! - [`wire`]: the blob requests and HTTP-like answers of the sync protocol.
//! - [`registry`]: the server's SQLite registry: staged rows, and the reconcile state the server
//!   acknowledged to each client (`crdt:<clientId>`).
//! - [`s3`]: the S3-like object store: its wire protocol, its error codes and its SQLite-backed
//!   server, which the world runs as its own node.
//! - [`object`]: the server's object layer: deterministic object keys, the [`object::ObjectStore`]
//!   seam, and retries with exponential backoff for the transient error codes.
//! - [`service`]: stage, attach, read, delete and the orphan scan, over the registry and the
//!   object layer.
//! - [`serve`]: the server's request loop with blob requests served concurrently.
//! - [`error`]: typed errors with stable codes and the runbook's messages.

pub mod error;
pub mod object;
pub mod registry;
pub mod s3;
pub mod serve;
pub mod service;
pub mod wire;

pub use error::{BlobError, ObjectError, ObjectErrorKind};
pub use service::{BlobConfig, BlobService, RegistryHost};
pub use wire::{AttachCheckpoint, BlobBody, BlobRequest, BlobResponse, ReconcileView};

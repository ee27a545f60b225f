//! Jobs (runbook 001): ingest → backend run → persist of runs, segments and events, and the
//! persistence and sync recoveries the runbook describes.
//!
//! - [`backend`]: the external backends a job runs (the [`backend::Backend`] seam).
//! - [`pipeline`]: a job's stages, fallback across backends, the failed run shell, and
//!   persist-only from a saved result envelope with a remediation event (Scenarios A, E).
//! - [`db`]: the jobs database, its canonical JSONL rows, and the legacy migration (Scenario F).
//! - [`export`]: JSONL export with a SHA-256 manifest, through temp files and renames, under a
//!   sync lock that is recognised when stale; stale temp files are archived (Scenario B).
//! - [`import`]: import with conflict policy `reject` or `overwrite`, `sync_conflicts.jsonl`,
//!   and the fresh database + validate + pointer swap path (Scenario C).
//! - [`recovery`]: the operator recoveries of a corrupt database and of a blocked legacy
//!   migration (Scenarios D, F).
//! - [`robot`]: robot mode, NDJSON events of every job command.
//! - [`error`]: typed errors with stable `jobs:` codes.
//!
//! Everything reaches files through [`crate::fs::FileSystem`] and databases through
//! [`crate::store::open`], so the world runs it on its simulated disk unchanged.

pub mod backend;
pub mod db;
pub mod error;
pub mod export;
pub mod import;
pub mod pipeline;
pub mod recovery;
pub mod robot;

pub use error::JobError;

#[cfg(test)]
mod tests;

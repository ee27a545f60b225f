//! Operator recoveries of the jobs database (runbook 001 Scenarios D and F): both keep the
//! damaged database as evidence, rebuild from the latest valid JSONL snapshot into a fresh
//! database, validate it against the manifest, and only then swap the active pointer.

use serde::{Deserialize, Serialize};

use super::db::JobsDb;
use super::error::JobError;
use super::export::validate_snapshot;
use super::import::{active_db, import_fresh, FreshImport};
use crate::fs::{copy, FileSystem};

/// Where backups and evidence copies go, under the storage's root.
pub const BACKUP: &str = "backup";

/// What a recovery did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovery {
    /// Copies of the damaged database's files.
    pub copies: Vec<String>,
    /// Set when a reopen finished the migration and no rebuild was needed.
    pub reopened: bool,
    /// The rebuild from the snapshot, when one was needed.
    pub rebuilt: Option<FreshImport>,
}

/// Copies the database file `db` (and its WAL, if any) to `backup/<db>.<stamp>.<kind>`.
fn keep_copies(fs: &dyn FileSystem, db: &str, stamp: &str, kind: &str) -> Result<Vec<String>, JobError> {
    let mut out = Vec::new();
    for suffix in ["", "-wal"] {
        let name = format!("{db}{suffix}");
        if fs.exists(&name)? {
            let to = format!("{BACKUP}/{name}.{stamp}.{kind}");
            copy(fs, &name, &to)?;
            out.push(to);
        }
    }
    Ok(out)
}

/// The name of the fresh database a recovery at `stamp` rebuilds into.
pub fn fresh_name(stamp: &str) -> String {
    format!("jobs-{stamp}.db")
}

/// Scenario D, a corrupted or inaccessible database: a timestamped backup copy of the active
/// database, the latest valid snapshot in `dir` replayed into a fresh database, its row counts
/// and checksums compared with the manifest, and the pointer switched. Close the damaged
/// database first.
pub fn recover_corrupt(fs: &dyn FileSystem, dir: &str, stamp: &str) -> Result<Recovery, JobError> {
    let active = active_db(fs)?;
    let copies = keep_copies(fs, &active, stamp, "backup")?;
    validate_snapshot(fs, dir).map_err(|e| JobError::NoValidSnapshot { detail: e.to_string() })?;
    let rebuilt = import_fresh(fs, dir, &fresh_name(stamp))?;
    Ok(Recovery { copies, reopened: false, rebuilt: Some(rebuilt) })
}

/// Scenario F, a legacy migration blocked: the original database preserved as an immutable
/// evidence copy, one more reopen to let the rollback-safe migration finish, and if it is still
/// blocked, the latest valid snapshot imported with `reject` into a fresh database, validated,
/// and the pointer switched.
pub fn recover_legacy(fs: &dyn FileSystem, dir: &str, stamp: &str) -> Result<Recovery, JobError> {
    let active = active_db(fs)?;
    let copies = keep_copies(fs, &active, stamp, "evidence")?;
    match JobsDb::open(fs, &active) {
        Ok(_) => return Ok(Recovery { copies, reopened: true, rebuilt: None }),
        Err(JobError::LegacyMigrationBlocked { .. }) => {}
        Err(e) => return Err(e),
    }
    validate_snapshot(fs, dir).map_err(|e| JobError::NoValidSnapshot { detail: e.to_string() })?;
    let rebuilt = import_fresh(fs, dir, &fresh_name(stamp))?;
    Ok(Recovery { copies, reopened: false, rebuilt: Some(rebuilt) })
}

/// Opens the active database, as a job command does.
pub fn open_active(fs: &dyn FileSystem) -> Result<JobsDb, JobError> {
    JobsDb::open(fs, &active_db(fs)?)
}

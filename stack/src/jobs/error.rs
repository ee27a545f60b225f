//! Typed job errors with stable codes (`jobs:<code>`): the runbook's symptoms, named so an
//! operator or a script can act on them.

use std::fmt;

use crate::error::StoreError;
use crate::fs::FsError;

/// What went wrong in a job command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// The input of a job is unusable (empty run id or input).
    InvalidInput { detail: String },
    /// A run with this id is already persisted.
    DuplicateRun { run_id: String },
    /// The run's result could not be persisted; its envelope is in the robot-mode output, and
    /// `persist_only` persists it (runbook 001 Scenario A).
    PersistFailed { run_id: String, cause: StoreError },
    /// A persist-only re-run found the run stored with different content.
    RunConflict { run_id: String },
    /// The run a remediation event links to does not exist.
    UnknownRun { run_id: String },
    /// The database cannot be opened or read: it is corrupt or inaccessible (Scenario D).
    DbCorrupt { detail: String },
    /// Any other database failure.
    Store(StoreError),
    /// A file operation failed.
    Fs(FsError),
    /// Another live process holds the sync lock.
    Locked { owner: String },
    /// The snapshot folder has no manifest: an export did not finish (Scenario B).
    ManifestMissing { dir: String },
    /// A snapshot file does not match its manifest's checksum or row count.
    ManifestMismatch { file: String, detail: String },
    /// A snapshot file holds a line that is not a row.
    SnapshotMalformed { file: String, line: u64, detail: String },
    /// Import with the `reject` policy met rows that differ from stored ones: nothing was
    /// imported, and the conflicts are in `sync_conflicts.jsonl` (Scenario C).
    ImportConflict { divergent: u64, benign: u64 },
    /// Overwrite met a divergent child row (segment or event): child rows are never updated or
    /// deleted in place. Import into a fresh database and swap the pointer instead (Scenario C §5).
    ChildRowOverwriteUnsupported { table: String, key: String },
    /// Opening a legacy database needs a migration that cannot finish safely (Scenario F).
    LegacyMigrationBlocked { from_version: u32, detail: String },
    /// A database imported into a fresh file does not match the manifest it came from.
    ValidationFailed { detail: String },
    /// No snapshot with a valid manifest to recover from.
    NoValidSnapshot { detail: String },
}

impl JobError {
    /// A short stable code for traces, robot mode and diagnostics.
    pub fn code(&self) -> &'static str {
        match self {
            JobError::InvalidInput { .. } => "jobs:invalidInput",
            JobError::DuplicateRun { .. } => "jobs:duplicateRun",
            JobError::PersistFailed { .. } => "jobs:persistFailed",
            JobError::RunConflict { .. } => "jobs:runConflict",
            JobError::UnknownRun { .. } => "jobs:unknownRun",
            JobError::DbCorrupt { .. } => "jobs:dbCorrupt",
            JobError::Store(e) => e.code(),
            JobError::Fs(e) => e.code(),
            JobError::Locked { .. } => "jobs:locked",
            JobError::ManifestMissing { .. } => "jobs:manifestMissing",
            JobError::ManifestMismatch { .. } => "jobs:manifestMismatch",
            JobError::SnapshotMalformed { .. } => "jobs:snapshotMalformed",
            JobError::ImportConflict { .. } => "jobs:importConflict",
            JobError::ChildRowOverwriteUnsupported { .. } => "jobs:childRowOverwriteUnsupported",
            JobError::LegacyMigrationBlocked { .. } => "jobs:legacyMigrationBlocked",
            JobError::ValidationFailed { .. } => "jobs:validationFailed",
            JobError::NoValidSnapshot { .. } => "jobs:noValidSnapshot",
        }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::InvalidInput { detail } => write!(f, "invalid job input: {detail}"),
            JobError::DuplicateRun { run_id } => write!(f, "run {run_id} is already persisted"),
            JobError::PersistFailed { run_id, cause } => {
                write!(f, "run {run_id} succeeded but was not persisted ({cause}): re-run persist-only with its result envelope")
            }
            JobError::RunConflict { run_id } => write!(f, "run {run_id} is stored with different content"),
            JobError::UnknownRun { run_id } => write!(f, "no run {run_id} to link the remediation event to"),
            JobError::DbCorrupt { detail } => write!(f, "jobs database is corrupt or inaccessible: {detail}"),
            JobError::Store(e) => write!(f, "{e}"),
            JobError::Fs(e) => write!(f, "{e}"),
            JobError::Locked { owner } => write!(f, "sync lock is held by {owner}"),
            JobError::ManifestMissing { dir } => write!(f, "{dir} has no manifest.json: the export did not finish"),
            JobError::ManifestMismatch { file, detail } => write!(f, "{file} does not match the manifest: {detail}"),
            JobError::SnapshotMalformed { file, line, detail } => write!(f, "{file} line {line} is not a row: {detail}"),
            JobError::ImportConflict { divergent, benign } => {
                write!(f, "duplicate key mismatch, import aborted: {divergent} divergent and {benign} benign duplicate row(s), see sync_conflicts.jsonl")
            }
            JobError::ChildRowOverwriteUnsupported { table, key } => {
                write!(f, "child-row UPDATE/DELETE is unsupported ({table} {key}): import into a fresh database and swap the active pointer")
            }
            JobError::LegacyMigrationBlocked { from_version, detail } => {
                write!(f, "safe legacy migration from schema {from_version} is blocked: {detail}")
            }
            JobError::ValidationFailed { detail } => write!(f, "imported database failed validation: {detail}"),
            JobError::NoValidSnapshot { detail } => write!(f, "no valid JSONL snapshot: {detail}"),
        }
    }
}

impl std::error::Error for JobError {}

impl From<StoreError> for JobError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt { detail } => JobError::DbCorrupt { detail },
            e => JobError::Store(e),
        }
    }
}

impl From<rusqlite::Error> for JobError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::from(e).into()
    }
}

impl From<FsError> for JobError {
    fn from(e: FsError) -> Self {
        JobError::Fs(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_distinct() {
        let all = [
            JobError::InvalidInput { detail: String::new() },
            JobError::DuplicateRun { run_id: String::new() },
            JobError::PersistFailed { run_id: String::new(), cause: StoreError::Full },
            JobError::RunConflict { run_id: String::new() },
            JobError::UnknownRun { run_id: String::new() },
            JobError::DbCorrupt { detail: String::new() },
            JobError::Locked { owner: String::new() },
            JobError::ManifestMissing { dir: String::new() },
            JobError::ManifestMismatch { file: String::new(), detail: String::new() },
            JobError::SnapshotMalformed { file: String::new(), line: 1, detail: String::new() },
            JobError::ImportConflict { divergent: 1, benign: 0 },
            JobError::ChildRowOverwriteUnsupported { table: String::new(), key: String::new() },
            JobError::LegacyMigrationBlocked { from_version: 1, detail: String::new() },
            JobError::ValidationFailed { detail: String::new() },
            JobError::NoValidSnapshot { detail: String::new() },
        ];
        let codes: std::collections::BTreeSet<&str> = all.iter().map(|e| e.code()).collect();
        assert_eq!(codes.len(), all.len());
        assert!(codes.iter().all(|c| c.starts_with("jobs:")));
        assert_eq!(JobError::from(StoreError::Corrupt { detail: "x".into() }).code(), "jobs:dbCorrupt");
        assert_eq!(JobError::from(FsError::Refused).code(), "fs:refused");
        assert!(JobError::ImportConflict { divergent: 2, benign: 1 }.to_string().starts_with("duplicate key mismatch, import aborted"));
    }
}

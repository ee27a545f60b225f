//! JSONL import (runbook 001 Scenario C) and the fresh-database path (Scenarios C §5, D, F).
//!
//! An import first validates the snapshot against its manifest, then compares every row with the
//! stored row of the same key, in one transaction:
//! - no stored row: inserted;
//! - an identical stored row: a **benign duplicate**, skipped;
//! - a different stored row: **divergent**. With the `reject` policy (the default) the import is
//!   aborted and nothing changes; with `overwrite` (the operator's explicit intent) a divergent
//!   run is updated in place, but a divergent child row (segment or event) is never updated or
//!   deleted in place: the import aborts with `jobs:childRowOverwriteUnsupported`, and the way on
//!   is a fresh database.
//!
//! Every conflict, benign or divergent, is written to `sync_conflicts.jsonl` with its class.
//!
//! The fresh path: import the snapshot into a new, empty database, validate its row counts and
//! checksums against the manifest, and only then swap the **active database pointer** (a small
//! file naming the active database, replaced by temp file and rename).

use serde::{Deserialize, Serialize};

use super::db::{EventRow, JobsDb, Row, RunRow, SegmentRow, Table};
use super::error::JobError;
use super::export::{sha256_hex, validate_snapshot, Snapshot};
use crate::fs::{publish, FileSystem, FsError};

/// Where conflicts of the last import are written, under the storage's root.
pub const CONFLICTS: &str = "sync_conflicts.jsonl";
/// The active database pointer.
pub const ACTIVE_POINTER: &str = "ACTIVE";
/// The database used while no pointer exists.
pub const DEFAULT_DB: &str = "jobs.db";

/// What to do with a row that differs from the stored one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    /// Abort the import; nothing changes.
    #[default]
    Reject,
    /// Replace divergent runs in place (child rows never are).
    Overwrite,
}

/// The class of a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictClass {
    /// The snapshot's row equals the stored one.
    BenignDuplicate,
    /// The rows differ.
    Divergent,
}

/// One line of `sync_conflicts.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub table: String,
    pub key: String,
    pub class: ConflictClass,
    /// Canonical JSON of the stored row and of the snapshot's.
    pub stored: String,
    pub incoming: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    pub dir: String,
    pub policy: ConflictPolicy,
    pub inserted: u64,
    pub benign: u64,
    pub divergent: u64,
    pub overwritten: u64,
}

/// Imports the snapshot in `dir` into `db` with `policy` (see the module's documentation).
/// Conflicts go to [`CONFLICTS`].
pub fn import_jsonl(fs: &dyn FileSystem, db: &JobsDb, dir: &str, policy: ConflictPolicy) -> Result<ImportReport, JobError> {
    let snapshot = validate_snapshot(fs, dir)?;
    let rows = parse(&snapshot)?;
    let mut report = ImportReport { dir: dir.into(), policy, ..ImportReport::default() };
    let mut conflicts = Vec::new();
    let tx = db.conn().unchecked_transaction()?;
    let outcome = (|| {
        apply(&tx, &rows.runs, policy, &mut report, &mut conflicts)?;
        apply(&tx, &rows.segments, policy, &mut report, &mut conflicts)?;
        apply(&tx, &rows.events, policy, &mut report, &mut conflicts)?;
        if policy == ConflictPolicy::Reject && report.divergent > 0 {
            return Err(JobError::ImportConflict { divergent: report.divergent, benign: report.benign });
        }
        Ok(())
    })();
    match outcome {
        Ok(()) => tx.commit()?,
        Err(e) => {
            drop(tx);
            write_conflicts(fs, &conflicts)?;
            return Err(e);
        }
    }
    write_conflicts(fs, &conflicts)?;
    Ok(report)
}

fn apply<R: Overwrite>(
    c: &rusqlite::Connection,
    rows: &[R],
    policy: ConflictPolicy,
    report: &mut ImportReport,
    conflicts: &mut Vec<Conflict>,
) -> Result<(), JobError> {
    for row in rows {
        match row.stored(c)? {
            None => {
                row.insert(c)?;
                report.inserted += 1;
            }
            Some(stored) => {
                let class = if &stored == row { ConflictClass::BenignDuplicate } else { ConflictClass::Divergent };
                conflicts.push(Conflict {
                    table: R::TABLE.name().into(),
                    key: row.key(),
                    class,
                    stored: serde_json::to_string(&stored).expect("rows serialize"),
                    incoming: serde_json::to_string(row).expect("rows serialize"),
                });
                match class {
                    ConflictClass::BenignDuplicate => report.benign += 1,
                    ConflictClass::Divergent => {
                        report.divergent += 1;
                        if policy == ConflictPolicy::Overwrite {
                            row.overwrite(c)?;
                            report.overwritten += 1;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Replacing a stored row in place: runs only.
trait Overwrite: Row {
    fn overwrite(&self, c: &rusqlite::Connection) -> Result<(), JobError>;
}

impl Overwrite for RunRow {
    fn overwrite(&self, c: &rusqlite::Connection) -> Result<(), JobError> {
        Ok(self.update(c)?)
    }
}

impl Overwrite for SegmentRow {
    fn overwrite(&self, _: &rusqlite::Connection) -> Result<(), JobError> {
        Err(JobError::ChildRowOverwriteUnsupported { table: Table::Segments.name().into(), key: self.key() })
    }
}

impl Overwrite for EventRow {
    fn overwrite(&self, _: &rusqlite::Connection) -> Result<(), JobError> {
        Err(JobError::ChildRowOverwriteUnsupported { table: Table::Events.name().into(), key: self.key() })
    }
}

/// Writes the conflicts file whole (or removes a stale one when there are none).
fn write_conflicts(fs: &dyn FileSystem, conflicts: &[Conflict]) -> Result<(), JobError> {
    if conflicts.is_empty() {
        return match fs.remove(CONFLICTS) {
            Ok(()) => Ok(fs.sync_dir()?),
            Err(FsError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        };
    }
    let mut text = String::new();
    for c in conflicts {
        text.push_str(&serde_json::to_string(c).expect("conflicts serialize"));
        text.push('\n');
    }
    publish(fs, CONFLICTS, text.as_bytes())?;
    Ok(())
}

/// Reads `sync_conflicts.jsonl` (Scenario C, step 1).
pub fn read_conflicts(fs: &dyn FileSystem) -> Result<Vec<Conflict>, JobError> {
    let text = match fs.read(CONFLICTS) {
        Ok(t) => t,
        Err(FsError::NotFound { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let text = String::from_utf8_lossy(&text);
    text.lines()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| JobError::SnapshotMalformed { file: CONFLICTS.into(), line: i as u64 + 1, detail: e.to_string() }))
        .collect()
}

struct Rows {
    runs: Vec<RunRow>,
    segments: Vec<SegmentRow>,
    events: Vec<EventRow>,
}

fn parse(s: &Snapshot) -> Result<Rows, JobError> {
    fn lines<R: Row>(t: Table, data: &[u8]) -> Result<Vec<R>, JobError> {
        let text = std::str::from_utf8(data).map_err(|e| JobError::SnapshotMalformed { file: t.file().into(), line: 0, detail: e.to_string() })?;
        text.lines()
            .enumerate()
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| JobError::SnapshotMalformed { file: t.file().into(), line: i as u64 + 1, detail: e.to_string() }))
            .collect()
    }
    let get = |t: Table| s.data.iter().find(|(x, _)| *x == t).map(|(_, d)| d.as_slice()).unwrap_or(&[]);
    Ok(Rows {
        runs: lines(Table::Runs, get(Table::Runs))?,
        segments: lines(Table::Segments, get(Table::Segments))?,
        events: lines(Table::Events, get(Table::Events))?,
    })
}

/// The database the pointer names ([`DEFAULT_DB`] while there is no pointer).
pub fn active_db(fs: &dyn FileSystem) -> Result<String, JobError> {
    match fs.read(ACTIVE_POINTER) {
        Ok(bytes) => {
            let name = String::from_utf8_lossy(&bytes).trim().to_string();
            if name.is_empty() || name.contains('\n') {
                return Err(JobError::ValidationFailed { detail: format!("the active pointer names {name:?}") });
            }
            Ok(name)
        }
        Err(FsError::NotFound { .. }) => Ok(DEFAULT_DB.into()),
        Err(e) => Err(e.into()),
    }
}

/// Points the active pointer at `db_name`: temp file, sync, rename, directory sync. After a
/// crash the pointer names either the old database or the new one.
pub fn swap_active(fs: &dyn FileSystem, db_name: &str) -> Result<(), JobError> {
    publish(fs, ACTIVE_POINTER, format!("{db_name}\n").as_bytes())?;
    Ok(())
}

/// Checks that `db` holds exactly the snapshot: each table's row count and the SHA-256 of its
/// canonical JSONL equal the manifest's.
pub fn validate_against(db: &JobsDb, snapshot: &Snapshot) -> Result<(), JobError> {
    let contents = db.contents()?;
    for t in Table::ALL {
        let entry = snapshot.manifest.file(t.file()).ok_or_else(|| JobError::ValidationFailed { detail: format!("{} not in the manifest", t.file()) })?;
        let data = contents.jsonl(t);
        if contents.count(t) != entry.rows || sha256_hex(&data) != entry.sha256 {
            return Err(JobError::ValidationFailed {
                detail: format!(
                    "{} holds {} rows (sha256 {}), the manifest {} ({})",
                    t.name(),
                    contents.count(t),
                    &sha256_hex(&data)[..12],
                    entry.rows,
                    &entry.sha256[..12.min(entry.sha256.len())]
                ),
            });
        }
    }
    Ok(())
}

/// What the fresh path did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreshImport {
    /// The new active database.
    pub db: String,
    /// The database the pointer named before.
    pub previous: String,
    pub rows: [u64; 3],
}

/// Imports the snapshot in `dir` into the new, empty database `new_db`, validates it against the
/// manifest, and only then swaps the active pointer to it. A leftover file of that name (an
/// attempt cut short) is archived first.
pub fn import_fresh(fs: &dyn FileSystem, dir: &str, new_db: &str) -> Result<FreshImport, JobError> {
    let previous = active_db(fs)?;
    if previous == new_db {
        return Err(JobError::ValidationFailed { detail: format!("{new_db} is the active database") });
    }
    for suffix in ["", "-wal"] {
        let name = format!("{new_db}{suffix}");
        if fs.exists(&name)? {
            fs.rename(&name, &format!("{}/{name}.leftover", super::export::ARCHIVE))?;
            fs.sync_dir()?;
        }
    }
    let snapshot = validate_snapshot(fs, dir)?;
    let rows = {
        let db = JobsDb::open(fs, new_db)?;
        import_jsonl(fs, &db, dir, ConflictPolicy::Reject)?;
        validate_against(&db, &snapshot)?;
        db.counts()?
    };
    swap_active(fs, new_db)?;
    Ok(FreshImport { db: new_db.into(), previous, rows })
}

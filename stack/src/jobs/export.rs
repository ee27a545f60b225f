//! JSONL export of the jobs database (runbook 001 Scenario B): `runs.jsonl`, `segments.jsonl`,
//! `events.jsonl` and `manifest.json` (SHA-256 and row count of each file) in a snapshot folder.
//!
//! The export holds the folder's sync lock, a file naming its owner (process and boot) and when
//! it was taken, so a lock left by a process that has since crashed is recognised as stale and
//! broken, while a live owner's lock is respected. Under the lock:
//! 1. temp files left by an earlier export (`*.tmp`) are archived under `archive/`, never deleted;
//! 2. the old manifest is deleted durably first, so no manifest ever describes a mix of old and
//!    new files;
//! 3. each table is written to `<file>.tmp`, synced, and renamed over `<file>`;
//! 4. the directory is synced, then the manifest is published the same way (temp, sync, rename,
//!    directory sync) — it exists only once every file it names is durable;
//! 5. the lock is released.
//!
//! A crash mid-export therefore leaves `*.jsonl.tmp` files and no manifest, the runbook's
//! symptom, and the next export recovers by itself; [`validate_snapshot`] is step 4's check.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::db::{JobsDb, Table};
use super::error::JobError;
use crate::fs::{FileSystem, FsError};

/// The manifest's file name in a snapshot folder.
pub const MANIFEST: &str = "manifest.json";
/// The sync lock's file name in a snapshot folder.
pub const LOCK: &str = "sync.lock";
/// Where stale temp files are moved to, under the storage's root.
pub const ARCHIVE: &str = "archive";
/// Version of the manifest format.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;
/// A lock older than this (by its owner's clock) is stale even if its owner may be alive.
pub const LOCK_STALE_AFTER_MS: i64 = 10 * 60 * 1_000;

/// One file of a snapshot, as the manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    pub name: String,
    pub rows: u64,
    pub bytes: u64,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub schema_version: u32,
    pub created_ms: i64,
    pub owner: String,
    pub files: Vec<ManifestFile>,
}

impl Manifest {
    /// The entry of `name`.
    pub fn file(&self, name: &str) -> Option<&ManifestFile> {
        self.files.iter().find(|f| f.name == name)
    }
}

/// Who takes a lock: a process name and its boot (a process that restarted is another owner).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockOwner {
    pub process: String,
    pub boot: u64,
}

impl LockOwner {
    pub fn label(&self) -> String {
        format!("{}@boot-{}", self.process, self.boot)
    }
}

/// What the lock file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub owner: LockOwner,
    pub acquired_ms: i64,
}

/// Whether a lock found on disk may be broken by `me` at `now_ms`: its owner is an earlier boot
/// of the same process (which is therefore gone), or it is older than [`LOCK_STALE_AFTER_MS`].
/// An unreadable lock file can only be a lock whose writing was cut short: stale too.
pub fn lock_is_stale(found: Option<&LockInfo>, me: &LockOwner, now_ms: i64) -> bool {
    match found {
        None => true,
        Some(l) => (l.owner.process == me.process && l.owner.boot != me.boot) || now_ms - l.acquired_ms > LOCK_STALE_AFTER_MS,
    }
}

/// The sync lock of a folder, held until released.
#[derive(Debug)]
pub struct SyncLock {
    path: String,
    /// The stale lock this one replaced, if any.
    pub broke: Option<String>,
}

/// Takes the sync lock of `dir`, breaking a stale one (Scenario B, step 1).
pub fn acquire_lock(fs: &dyn FileSystem, dir: &str, me: &LockOwner, now_ms: i64) -> Result<SyncLock, JobError> {
    let path = format!("{dir}/{LOCK}");
    let mut broke = None;
    match fs.read(&path) {
        Ok(bytes) => {
            let found = serde_json::from_slice::<LockInfo>(&bytes).ok();
            let label = found.as_ref().map(|l| l.owner.label()).unwrap_or_else(|| "an unreadable lock".into());
            if !lock_is_stale(found.as_ref(), me, now_ms) {
                return Err(JobError::Locked { owner: label });
            }
            broke = Some(label);
        }
        Err(FsError::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let info = LockInfo { owner: me.clone(), acquired_ms: now_ms };
    fs.write_all(&path, serde_json::to_string(&info).expect("locks serialize").as_bytes())?;
    fs.sync(&path)?;
    fs.sync_dir()?;
    Ok(SyncLock { path, broke })
}

impl SyncLock {
    /// Releases the lock durably.
    pub fn release(self, fs: &dyn FileSystem) -> Result<(), JobError> {
        fs.remove(&self.path)?;
        fs.sync_dir()?;
        Ok(())
    }
}

/// Moves every temp file of `dir` (`*.tmp`) to `archive/<stamp>/`, keeping its name; never
/// deletes one (Scenario B, step 2). Call it holding the lock: then no live export owns them.
pub fn archive_stale_temps(fs: &dyn FileSystem, dir: &str, stamp: &str) -> Result<Vec<String>, JobError> {
    let mut moved = Vec::new();
    for name in fs.list(&format!("{dir}/"))? {
        let base = &name[dir.len() + 1..];
        if base.contains('/') || !base.ends_with(".tmp") {
            continue;
        }
        let to = format!("{ARCHIVE}/{stamp}/{dir}/{base}");
        fs.rename(&name, &to)?;
        moved.push(to);
    }
    if !moved.is_empty() {
        fs.sync_dir()?;
    }
    Ok(moved)
}

/// What an export did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportReport {
    pub dir: String,
    pub manifest: Manifest,
    /// Temp files archived before writing.
    pub archived: Vec<String>,
    /// The stale lock broken, if any.
    pub broke_lock: Option<String>,
}

/// Hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Rows in a JSONL file: its lines.
pub fn count_rows(data: &[u8]) -> u64 {
    data.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Exports every table of `db` to `dir` under the sync lock (see the module's documentation).
pub fn export(fs: &dyn FileSystem, db: &JobsDb, dir: &str, me: &LockOwner, now_ms: i64) -> Result<ExportReport, JobError> {
    let lock = acquire_lock(fs, dir, me, now_ms)?;
    let stamp = format!("{now_ms}-{}", me.label());
    let archived = archive_stale_temps(fs, dir, &stamp)?;
    let manifest_path = format!("{dir}/{MANIFEST}");
    if fs.exists(&manifest_path)? {
        fs.remove(&manifest_path)?;
        fs.sync_dir()?;
    }
    let contents = db.contents()?;
    let mut files = Vec::new();
    for t in Table::ALL {
        let data = contents.jsonl(t);
        let path = format!("{dir}/{}", t.file());
        let tmp = format!("{path}.tmp");
        fs.write_all(&tmp, &data)?;
        fs.sync(&tmp)?;
        fs.rename(&tmp, &path)?;
        files.push(ManifestFile { name: t.file().into(), rows: contents.count(t), bytes: data.len() as u64, sha256: sha256_hex(&data) });
    }
    fs.sync_dir()?;
    let manifest =
        Manifest { format_version: MANIFEST_FORMAT_VERSION, schema_version: super::db::SCHEMA_VERSION, created_ms: now_ms, owner: me.label(), files };
    let text = serde_json::to_string_pretty(&manifest).expect("manifests serialize") + "\n";
    crate::fs::publish(fs, &manifest_path, text.as_bytes())?;
    let broke_lock = lock.broke.clone();
    lock.release(fs)?;
    Ok(ExportReport { dir: dir.into(), manifest, archived, broke_lock })
}

/// A snapshot whose files match its manifest: the manifest and each file's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub manifest: Manifest,
    /// Bytes of each table's file, in [`Table::ALL`] order.
    pub data: Vec<(Table, Vec<u8>)>,
}

/// Reads `dir`'s manifest and checks every file it names against its SHA-256 and row count
/// (Scenario B step 4, and the check before any import).
pub fn validate_snapshot(fs: &dyn FileSystem, dir: &str) -> Result<Snapshot, JobError> {
    let text = match fs.read(&format!("{dir}/{MANIFEST}")) {
        Ok(t) => t,
        Err(FsError::NotFound { .. }) => return Err(JobError::ManifestMissing { dir: dir.into() }),
        Err(e) => return Err(e.into()),
    };
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| JobError::ManifestMismatch { file: MANIFEST.into(), detail: e.to_string() })?;
    let mut data = Vec::new();
    for t in Table::ALL {
        let entry = manifest.file(t.file()).ok_or_else(|| JobError::ManifestMismatch { file: t.file().into(), detail: "not in the manifest".into() })?;
        let bytes = match fs.read(&format!("{dir}/{}", t.file())) {
            Ok(b) => b,
            Err(FsError::NotFound { .. }) => return Err(JobError::ManifestMismatch { file: t.file().into(), detail: "missing".into() }),
            Err(e) => return Err(e.into()),
        };
        let sum = sha256_hex(&bytes);
        if sum != entry.sha256 {
            return Err(JobError::ManifestMismatch { file: t.file().into(), detail: format!("sha256 {} is not {}", &sum[..12], short(&entry.sha256)) });
        }
        let rows = count_rows(&bytes);
        if rows != entry.rows || bytes.len() as u64 != entry.bytes {
            return Err(JobError::ManifestMismatch {
                file: t.file().into(),
                detail: format!("{rows} rows, {} bytes; the manifest says {} and {}", bytes.len(), entry.rows, entry.bytes),
            });
        }
        data.push((t, bytes));
    }
    Ok(Snapshot { manifest, data })
}

fn short(s: &str) -> &str {
    &s[..s.len().min(12)]
}

//! Plain files, for what the stack keeps beside its databases: JSONL exports and their manifest,
//! temp files, a lock file, an archive folder, a pointer naming the active database.
//!
//! The stack reaches files only through [`FileSystem`], so the world can put them on its
//! simulated disk (where an unsynced write or rename can be lost in a crash) and tests outside
//! the simulation can use [`StdFs`] in a temporary directory. Names are relative, with `/`
//! between folders (`export/runs.jsonl`); folders exist implicitly.
//!
//! The durability contract the stack codes against is POSIX's: a write is durable once its file
//! is synced; a rename or a delete is durable once the directory is synced. Publishing a file
//! whole is therefore: write a temp file, sync it, rename it over the target, sync the directory.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a file operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsError {
    /// No file of that name.
    NotFound { name: String },
    /// The disk is full.
    Full { name: String },
    /// The disk failed the operation.
    Io { detail: String },
    /// The process's storage is gone (its node is down, or it crashed since): nothing changed.
    Refused,
}

impl FsError {
    /// A short stable code for traces and diagnostics.
    pub fn code(&self) -> &'static str {
        match self {
            FsError::NotFound { .. } => "fs:notFound",
            FsError::Full { .. } => "fs:full",
            FsError::Io { .. } => "fs:io",
            FsError::Refused => "fs:refused",
        }
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsError::NotFound { name } => write!(f, "no file {name}"),
            FsError::Full { name } => write!(f, "disk is full writing {name}"),
            FsError::Io { detail } => write!(f, "file I/O error: {detail}"),
            FsError::Refused => write!(f, "storage refused the call: the process is gone"),
        }
    }
}

impl std::error::Error for FsError {}

/// Whole-file operations on the storage of one process.
pub trait FileSystem {
    /// Creates `name`, or replaces its content, with `data`. Not durable until [`Self::sync`].
    fn write_all(&self, name: &str, data: &[u8]) -> Result<(), FsError>;
    /// Appends `data` to `name`, creating it. Not durable until [`Self::sync`].
    fn append(&self, name: &str, data: &[u8]) -> Result<(), FsError>;
    /// The whole content of `name`.
    fn read(&self, name: &str) -> Result<Vec<u8>, FsError>;
    /// Renames `from` to `to`, replacing `to`. Durable once the directory is synced.
    fn rename(&self, from: &str, to: &str) -> Result<(), FsError>;
    /// Deletes `name`. Durable once the directory is synced.
    fn remove(&self, name: &str) -> Result<(), FsError>;
    /// Makes `name`'s content durable.
    fn sync(&self, name: &str) -> Result<(), FsError>;
    /// Makes every rename and delete so far durable.
    fn sync_dir(&self) -> Result<(), FsError>;
    /// Names that start with `prefix`, in order.
    fn list(&self, prefix: &str) -> Result<Vec<String>, FsError>;
    /// Whether `name` exists.
    fn exists(&self, name: &str) -> Result<bool, FsError>;
    /// The path under which SQLite opens the database file `name` of this storage.
    fn db_path(&self, name: &str) -> String;
}

/// Writes `name` whole and durably: temp file, sync, rename, directory sync. After a crash the
/// name holds either its old content or `data`, never a mix.
pub fn publish(fs: &dyn FileSystem, name: &str, data: &[u8]) -> Result<(), FsError> {
    let tmp = format!("{name}.tmp");
    fs.write_all(&tmp, data)?;
    fs.sync(&tmp)?;
    fs.rename(&tmp, name)?;
    fs.sync_dir()
}

/// Copies `from` to `to` durably (a backup, an evidence copy).
pub fn copy(fs: &dyn FileSystem, from: &str, to: &str) -> Result<u64, FsError> {
    let data = fs.read(from)?;
    fs.write_all(to, &data)?;
    fs.sync(to)?;
    fs.sync_dir()?;
    Ok(data.len() as u64)
}

/// The real file system under a root folder, for tests and tools outside the simulation.
#[derive(Debug, Clone)]
pub struct StdFs {
    root: PathBuf,
}

impl StdFs {
    /// Files under `root`, which must exist.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StdFs { root: root.into() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn parent_dirs(&self, name: &str) -> Result<(), FsError> {
        match self.path(name).parent() {
            Some(p) => std::fs::create_dir_all(p).map_err(|e| io(name, e)),
            None => Ok(()),
        }
    }

    fn walk(&self, dir: &Path, out: &mut Vec<String>) -> Result<(), FsError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&dir.display().to_string(), e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io(&dir.display().to_string(), e))?;
            let path = entry.path();
            if path.is_dir() {
                self.walk(&path, out)?;
            } else if let Ok(rel) = path.strip_prefix(&self.root) {
                let parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
                out.push(parts.join("/"));
            }
        }
        Ok(())
    }
}

fn io(name: &str, e: std::io::Error) -> FsError {
    match e.kind() {
        std::io::ErrorKind::NotFound => FsError::NotFound { name: name.to_string() },
        std::io::ErrorKind::StorageFull => FsError::Full { name: name.to_string() },
        _ => FsError::Io { detail: format!("{name}: {e}") },
    }
}

impl FileSystem for StdFs {
    fn write_all(&self, name: &str, data: &[u8]) -> Result<(), FsError> {
        self.parent_dirs(name)?;
        std::fs::write(self.path(name), data).map_err(|e| io(name, e))
    }

    fn append(&self, name: &str, data: &[u8]) -> Result<(), FsError> {
        self.parent_dirs(name)?;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(self.path(name)).map_err(|e| io(name, e))?;
        f.write_all(data).map_err(|e| io(name, e))
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, FsError> {
        std::fs::read(self.path(name)).map_err(|e| io(name, e))
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), FsError> {
        self.parent_dirs(to)?;
        std::fs::rename(self.path(from), self.path(to)).map_err(|e| io(from, e))
    }

    fn remove(&self, name: &str) -> Result<(), FsError> {
        std::fs::remove_file(self.path(name)).map_err(|e| io(name, e))
    }

    fn sync(&self, name: &str) -> Result<(), FsError> {
        std::fs::File::open(self.path(name)).and_then(|f| f.sync_all()).map_err(|e| io(name, e))
    }

    fn sync_dir(&self) -> Result<(), FsError> {
        // Every folder that holds files: renames may have crossed folders.
        let mut dirs = vec![self.root.clone()];
        let mut files = Vec::new();
        self.walk(&self.root, &mut files)?;
        for f in files {
            if let Some(p) = self.path(&f).parent() {
                if !dirs.iter().any(|d| d == p) {
                    dirs.push(p.to_path_buf());
                }
            }
        }
        for d in dirs {
            std::fs::File::open(&d).and_then(|f| f.sync_all()).map_err(|e| io(&d.display().to_string(), e))?;
        }
        Ok(())
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, FsError> {
        let mut out = Vec::new();
        self.walk(&self.root, &mut out)?;
        out.retain(|n| n.starts_with(prefix));
        out.sort();
        Ok(out)
    }

    fn exists(&self, name: &str) -> Result<bool, FsError> {
        Ok(self.path(name).is_file())
    }

    fn db_path(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }
}

/// A file system whose storage is cut after a budget of calls: every call past it is
/// [`FsError::Refused`], and what was written before stays as it was. Tests and drills use it to
/// stop a process at every step of an export or an import.
pub struct CutFs<'a> {
    inner: &'a dyn FileSystem,
    left: std::cell::Cell<u64>,
}

impl<'a> CutFs<'a> {
    /// `inner`, cut after `calls` more calls.
    pub fn new(inner: &'a dyn FileSystem, calls: u64) -> CutFs<'a> {
        CutFs { inner, left: std::cell::Cell::new(calls) }
    }

    fn tick(&self) -> Result<(), FsError> {
        if self.left.get() == 0 {
            return Err(FsError::Refused);
        }
        self.left.set(self.left.get() - 1);
        Ok(())
    }
}

impl FileSystem for CutFs<'_> {
    fn write_all(&self, n: &str, d: &[u8]) -> Result<(), FsError> {
        self.tick()?;
        self.inner.write_all(n, d)
    }
    fn append(&self, n: &str, d: &[u8]) -> Result<(), FsError> {
        self.tick()?;
        self.inner.append(n, d)
    }
    fn read(&self, n: &str) -> Result<Vec<u8>, FsError> {
        self.tick()?;
        self.inner.read(n)
    }
    fn rename(&self, a: &str, b: &str) -> Result<(), FsError> {
        self.tick()?;
        self.inner.rename(a, b)
    }
    fn remove(&self, n: &str) -> Result<(), FsError> {
        self.tick()?;
        self.inner.remove(n)
    }
    fn sync(&self, n: &str) -> Result<(), FsError> {
        self.tick()?;
        self.inner.sync(n)
    }
    fn sync_dir(&self) -> Result<(), FsError> {
        self.tick()?;
        self.inner.sync_dir()
    }
    fn list(&self, p: &str) -> Result<Vec<String>, FsError> {
        self.tick()?;
        self.inner.list(p)
    }
    fn exists(&self, n: &str) -> Result<bool, FsError> {
        self.tick()?;
        self.inner.exists(n)
    }
    fn db_path(&self, n: &str) -> String {
        self.inner.db_path(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn std_fs_does_every_operation() {
        let dir = tempfile::tempdir().unwrap();
        let fs = StdFs::new(dir.path());
        fs.write_all("export/runs.jsonl.tmp", b"{}\n").unwrap();
        fs.append("export/runs.jsonl.tmp", b"{}\n").unwrap();
        fs.sync("export/runs.jsonl.tmp").unwrap();
        fs.rename("export/runs.jsonl.tmp", "export/runs.jsonl").unwrap();
        fs.sync_dir().unwrap();
        assert_eq!(fs.read("export/runs.jsonl").unwrap(), b"{}\n{}\n");
        assert!(!fs.exists("export/runs.jsonl.tmp").unwrap());
        fs.write_all("export/a", b"").unwrap();
        fs.write_all("other/b", b"").unwrap();
        assert_eq!(fs.list("export/").unwrap(), vec!["export/a".to_string(), "export/runs.jsonl".to_string()]);
        fs.remove("export/a").unwrap();
        assert_eq!(fs.read("export/a"), Err(FsError::NotFound { name: "export/a".into() }));
        assert_eq!(fs.remove("export/a").unwrap_err().code(), "fs:notFound");
        assert!(fs.db_path("jobs.db").ends_with("jobs.db"));
    }

    #[test]
    fn publish_and_copy_leave_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let fs = StdFs::new(dir.path());
        publish(&fs, "ACTIVE", b"jobs-1.db").unwrap();
        publish(&fs, "ACTIVE", b"jobs-2.db").unwrap();
        assert_eq!(fs.read("ACTIVE").unwrap(), b"jobs-2.db");
        assert_eq!(copy(&fs, "ACTIVE", "backup/ACTIVE").unwrap(), 9);
        assert_eq!(fs.list("").unwrap(), vec!["ACTIVE".to_string(), "backup/ACTIVE".to_string()]);
    }
}

//! The lock an output folder carries while a command writes it, so that two writers never mix
//! their files in one folder.
//!
//! The lock is an advisory `flock` on `DIR/.drill-lock`, a file that names its holder
//! (`drill sweep (pid 4242)`). The kernel releases it when the holder ends, however it ends, so a
//! killed command never leaves a folder locked: the next one finds the stale file, takes the
//! lock and goes on. A command that ends normally removes the file while it still holds the lock.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::CliError;

/// The lock file's name inside the folder it locks.
pub const LOCK_FILE: &str = ".drill-lock";
/// Attempts at taking a lock whose file another holder removes meanwhile.
const ATTEMPTS_MAX: u32 = 10;
/// Longest holder description read back from a lock file.
const HOLDER_BYTES_MAX: u64 = 256;

/// A held lock on a folder; dropping it removes the lock file and releases the lock.
#[derive(Debug)]
pub struct FolderLock {
    file: File,
    path: PathBuf,
}

impl FolderLock {
    /// Locks the existing folder `dir` for `holder` (the command, `drill sweep`), or fails with
    /// the name of the command that holds it.
    pub fn take(dir: &Path, holder: &str) -> Result<FolderLock, CliError> {
        let path = dir.join(LOCK_FILE);
        for _ in 0..ATTEMPTS_MAX {
            let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(|e| CliError::io("cannot lock", dir, e))?;
            // SAFETY: flock on a file descriptor this function owns for as long as `file` lives.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    return Err(busy(dir, &path));
                }
                return Err(CliError::io("cannot lock", dir, err));
            }
            // A holder that finished removed the file between our open and our lock: what we
            // locked is no longer the folder's lock file, so start over.
            let locked = file.metadata().map_err(|e| CliError::io("cannot lock", dir, e))?;
            let same = fs::symlink_metadata(&path).is_ok_and(|now| now.ino() == locked.ino() && now.dev() == locked.dev());
            if !same {
                continue;
            }
            let mut lock = FolderLock { file, path };
            lock.name(holder).map_err(|e| CliError::io("cannot lock", dir, e))?;
            return Ok(lock);
        }
        Err(CliError::new(format!("cannot lock {}: its lock file keeps changing; another drill is starting and ending there", dir.display())))
    }

    fn name(&mut self, holder: &str) -> std::io::Result<()> {
        self.file.set_len(0)?;
        writeln!(self.file, "{holder} (pid {})", std::process::id())?;
        self.file.flush()
    }
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        // Removed while still locked, so nobody can lock the old file and believe they hold
        // the folder (see the inode check in `take`).
        let _ = fs::remove_file(&self.path);
    }
}

/// The error for a folder someone else is writing: it names the holder the lock file records.
fn busy(dir: &Path, path: &Path) -> CliError {
    let mut text = String::new();
    if let Ok(file) = File::open(path) {
        let _ = file.take(HOLDER_BYTES_MAX).read_to_string(&mut text);
    }
    let holder = text.lines().next().map(str::trim).filter(|h| !h.is_empty()).unwrap_or("another drill command");
    CliError::new(format!("{} is being written by {holder}; wait for it to finish or choose another folder", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_name_and_the_lock_goes_with_its_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let first = FolderLock::take(tmp.path(), "drill sweep").unwrap();
        let err = FolderLock::take(tmp.path(), "drill run").unwrap_err().to_string();
        assert!(err.contains("is being written by drill sweep (pid "), "{err}");
        drop(first);
        assert!(!tmp.path().join(LOCK_FILE).exists());
        let again = FolderLock::take(tmp.path(), "drill run").unwrap();
        drop(again);
    }

    #[test]
    fn a_stale_lock_file_is_taken_over() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join(LOCK_FILE), "drill run (pid 1)\n").unwrap();
        let lock = FolderLock::take(tmp.path(), "drill sweep").unwrap();
        let text = fs::read_to_string(tmp.path().join(LOCK_FILE)).unwrap();
        assert!(text.starts_with("drill sweep (pid "), "{text}");
        drop(lock);
    }
}

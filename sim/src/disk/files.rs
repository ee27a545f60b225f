//! Whole-file operations on a node's file system, for code that keeps plain files next to its
//! databases: exports, manifests, lock files, a pointer naming the active database.
//!
//! The files are the same [`FileEntry`]s the SQLite VFS keeps, with the same durability model
//! (see [`super::file`]): every write is pending until the file is synced, a crash keeps, drops
//! or tears each pending write, a file never synced vanishes, and a delete is pending until the
//! next sync on the node. Each call counts as one disk operation of the node, so injected I/O
//! errors and a power cut armed at an operation index land on these calls as on the VFS's.
//!
//! A **rename** is a namespace operation: it is pending until the next sync on the node (of any
//! file, or of the directory with [`NodeFiles::sync_dir`]), like a delete. File systems that
//! journal their metadata commit namespace changes in order, so a crash keeps a *prefix* of the
//! node's pending renames: each is kept with the node's keep probability, and the first one
//! dropped ends the prefix. A dropped rename is undone: the file is back under its old name and
//! whatever the new name held before is back too. A kept rename commits the moved file's
//! creation with it (the file exists under the new name, empty if none of its data was synced),
//! but not its data: a rename of a file whose writes were never synced can leave an empty or torn
//! file under the new name. Only `write, sync, rename, sync` publishes a whole file.
//!
//! A [`NodeFiles`] remembers the crash generation of its node when it was taken: once the node
//! crashes (and until it boots) every call is refused, and afterwards every call through an older
//! `NodeFiles` is refused and changes nothing, as for the VFS's handles.

use std::sync::Arc;

use madsim::task::NodeId;
use rand::Rng;

use super::{crash_model, CrashModel, CrashTally, DiskSim, FileEntry, IoOp, NodeDisk, Pending};

/// A rename not yet made durable by a sync on its node.
#[derive(Debug, Clone)]
pub(crate) struct PendingRename {
    from: String,
    to: String,
    /// What the new name held before (any incarnation, durable or pending): restored if the
    /// rename is undone.
    displaced: Option<FileEntry>,
    /// Length of the moved file's pending log at the rename: entries before it happened first.
    pending_len: usize,
}

/// Why a file operation failed. Nothing changed, except where a power cut hit the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileError {
    /// The node is powered off, or crashed since this `NodeFiles` was taken.
    Refused,
    /// No file of that name.
    NotFound { name: String },
    /// The disk failed the operation (an injected I/O error, or the power was cut during it).
    Io { op: &'static str, name: String },
    /// The write would grow the node's files past the disk's capacity.
    Full { name: String },
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileError::Refused => write!(f, "the node is down or crashed since the call was prepared"),
            FileError::NotFound { name } => write!(f, "no file {name}"),
            FileError::Io { op, name } => write!(f, "disk failed {op} of {name}"),
            FileError::Full { name } => write!(f, "disk is full writing {name}"),
        }
    }
}

impl std::error::Error for FileError {}

/// Whole-file access to one node's file system, for the crash generation it was taken in.
#[derive(Clone)]
pub struct NodeFiles {
    disk: Arc<DiskSim>,
    node: NodeId,
    generation: u64,
}

impl NodeFiles {
    /// The files of node `id`, for its current crash generation.
    pub fn of(disk: Arc<DiskSim>, id: NodeId) -> NodeFiles {
        let generation = disk.generation(id);
        NodeFiles { disk, node: id, generation }
    }

    /// The files of the calling madsim node.
    pub fn current() -> NodeFiles {
        Self::of(DiskSim::current(), madsim::plugin::node())
    }

    /// The node these files belong to.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Runs one counted operation on the node's disk: refused when the node is down or this
    /// handle is stale, failed when an injected fault or a power cut hits it.
    fn call<R>(&self, op: Option<IoOp>, what: &'static str, name: &str, f: impl FnOnce(&mut NodeDisk) -> Result<R, FileError>) -> Result<R, FileError> {
        let out = {
            let mut s = self.disk.lock();
            let s = &mut *s;
            let config = s.config;
            let Some(d) = s.nodes.get_mut(&self.node) else { return Err(FileError::Refused) };
            if d.down || d.generation != self.generation {
                return Err(FileError::Refused);
            }
            match d.tick(op, name, crash_model(&d.faults, &config)) {
                Some(_) => Err(FileError::Io { op: what, name: name.to_string() }),
                None => f(d),
            }
        };
        // A power cut that fired during the call stops the node's processes now.
        self.disk.after_call(self.node);
        out
    }

    /// Creates `name` or replaces its content with `data` (pending until [`NodeFiles::sync`]).
    pub fn write(&self, name: &str, data: &[u8]) -> Result<(), FileError> {
        self.call(Some(IoOp::Write), "write", name, |d| {
            let old = d.files.get(name).map(|f| f.len()).unwrap_or(0);
            if !d.fits((data.len() as u64).saturating_sub(old)) {
                return Err(FileError::Full { name: name.to_string() });
            }
            let f = open_for_write(d, name);
            if !f.is_empty() {
                f.truncate(0);
            }
            f.write(data, 0);
            Ok(())
        })
    }

    /// Appends `data` to `name`, creating it if needed (pending until [`NodeFiles::sync`]).
    pub fn append(&self, name: &str, data: &[u8]) -> Result<(), FileError> {
        self.call(Some(IoOp::Write), "append", name, |d| {
            if !d.fits(data.len() as u64) {
                return Err(FileError::Full { name: name.to_string() });
            }
            let f = open_for_write(d, name);
            let at = f.len();
            f.write(data, at);
            Ok(())
        })
    }

    /// The whole content of `name`, as reads see it now.
    pub fn read(&self, name: &str) -> Result<Vec<u8>, FileError> {
        self.call(Some(IoOp::Read), "read", name, |d| match d.files.get(name).and_then(|f| f.current.clone()) {
            Some(data) => Ok(data),
            None => Err(FileError::NotFound { name: name.to_string() }),
        })
    }

    /// Makes `name`'s pending writes durable, and with them every pending namespace change of
    /// the node (deletes and renames).
    pub fn sync(&self, name: &str) -> Result<(), FileError> {
        self.call(Some(IoOp::Sync), "sync", name, |d| {
            let Some(f) = d.files.get_mut(name).filter(|f| f.exists()) else {
                return Err(FileError::NotFound { name: name.to_string() });
            };
            f.sync();
            d.flush_deletes();
            Ok(())
        })
    }

    /// Syncs the directory: every pending namespace change of the node (deletes and renames)
    /// becomes durable; file data stays pending.
    pub fn sync_dir(&self) -> Result<(), FileError> {
        self.call(Some(IoOp::Sync), "sync_dir", "/", |d| {
            d.flush_deletes();
            Ok(())
        })
    }

    /// Renames `from` to `to`, replacing `to` if it exists. Pending until the next sync on the
    /// node (see the module's documentation).
    pub fn rename(&self, from: &str, to: &str) -> Result<(), FileError> {
        self.call(None, "rename", from, |d| {
            if !d.files.get(from).is_some_and(|f| f.exists()) {
                return Err(FileError::NotFound { name: from.to_string() });
            }
            if from == to {
                return Ok(());
            }
            let moved = d.files.remove(from).expect("exists");
            let displaced = d.files.remove(to);
            let pending_len = moved.pending.len();
            d.files.insert(to.to_string(), moved);
            d.renames.push(PendingRename { from: from.to_string(), to: to.to_string(), displaced, pending_len });
            Ok(())
        })
    }

    /// Deletes `name` (pending until the next sync on the node).
    pub fn delete(&self, name: &str) -> Result<(), FileError> {
        self.call(None, "delete", name, |d| match d.files.get_mut(name).filter(|f| f.exists()) {
            Some(f) => {
                f.delete(false);
                Ok(())
            }
            None => Err(FileError::NotFound { name: name.to_string() }),
        })
    }

    /// Whether `name` exists now.
    pub fn exists(&self, name: &str) -> Result<bool, FileError> {
        self.call(None, "exists", name, |d| Ok(d.files.get(name).is_some_and(|f| f.exists())))
    }

    /// Names of the files that exist now and start with `prefix`, in order.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>, FileError> {
        self.call(None, "list", prefix, |d| Ok(d.files.iter().filter(|(n, f)| n.starts_with(prefix) && f.exists()).map(|(n, _)| n.clone()).collect()))
    }
}

/// The entry of `name`, created (or re-created after a delete) when it does not exist now.
fn open_for_write<'a>(d: &'a mut NodeDisk, name: &str) -> &'a mut FileEntry {
    let f = d.files.entry(name.to_string()).or_insert_with(FileEntry::created);
    if !f.exists() {
        f.recreate();
    }
    f
}

/// At a crash, before each file's pending log is resolved: a prefix of the node's pending
/// renames is kept, the rest undone newest first.
pub(crate) fn crash_renames(d: &mut NodeDisk, model: &CrashModel, tally: &mut CrashTally) {
    let renames = std::mem::take(&mut d.renames);
    let mut kept = 0;
    while kept < renames.len() && d.rng.gen::<f64>() < model.keep_probability {
        kept += 1;
    }
    tally.kept += kept as u64;
    tally.dropped += (renames.len() - kept) as u64;
    for r in renames[kept..].iter().rev() {
        // Anything created under the old name since is unsynced (a sync would have made the
        // rename durable), so it would vanish anyway: the moved file takes its place again.
        if let Some(moved) = d.files.remove(&r.to) {
            d.files.insert(r.from.clone(), moved);
        }
        if let Some(old) = r.displaced.clone() {
            d.files.insert(r.to.clone(), old);
        }
    }
    commit_renames(d, &renames[..kept]);
}

/// A sync on the node makes every pending rename durable.
pub(crate) fn flush_renames(d: &mut NodeDisk) {
    let renames = std::mem::take(&mut d.renames);
    commit_renames(d, &renames);
}

/// Durable renames commit their files' creation.
fn commit_renames(d: &mut NodeDisk, renames: &[PendingRename]) {
    for (i, r) in renames.iter().enumerate().rev() {
        // A later rename that moved the file on commits at least as much of its log.
        if renames[i + 1..].iter().any(|later| later.from == r.to) {
            continue;
        }
        if let Some(f) = d.files.get_mut(&r.to) {
            commit_creation(f, r.pending_len);
        }
    }
}

/// A kept rename commits the moved file's creation, not its data: the last `Create` among the
/// first `upto` pending entries becomes an empty durable file.
fn commit_creation(f: &mut FileEntry, upto: usize) {
    let upto = upto.min(f.pending.len());
    if let Some(pos) = f.pending[..upto].iter().rposition(|p| matches!(p, Pending::Create)) {
        f.pending.drain(..=pos);
        f.durable = Some(Vec::new());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{DiskConfig, DiskFaults};
    use crate::rng::SeedTree;
    use crate::world::{NetConfig, Runtime};

    /// Runs `f` with the files of a fresh node whose crashes keep pending entries with
    /// probability `keep`.
    fn with_node<R>(seed: u64, keep: f64, f: impl FnOnce(Arc<DiskSim>, NodeId) -> R) -> R {
        let seeds = SeedTree::new(seed);
        let rt = Runtime::new(seeds, NetConfig::default(), DiskConfig::default(), std::time::Duration::from_secs(60));
        rt.block_on(async move {
            let disk = DiskSim::current();
            let node = madsim::plugin::node();
            let faults = DiskFaults { crash_keep_probability: keep, crash_tear_probability: 0.0, capacity_bytes: None };
            disk.add_node(node, "n", faults, &seeds);
            f(disk, node)
        })
    }

    fn reboot(disk: &Arc<DiskSim>, node: NodeId) -> NodeFiles {
        disk.crash(node);
        disk.boot(node);
        NodeFiles::of(disk.clone(), node)
    }

    #[test]
    fn synced_files_survive_and_unsynced_ones_vanish() {
        with_node(1, 0.0, |disk, node| {
            let fs = NodeFiles::of(disk.clone(), node);
            fs.write("a", b"durable").unwrap();
            fs.sync("a").unwrap();
            fs.write("b", b"never synced").unwrap();
            fs.append("a", b" and more").unwrap();
            assert_eq!(fs.read("a").unwrap(), b"durable and more");
            let fs = reboot(&disk, node);
            assert_eq!(fs.read("a").unwrap(), b"durable");
            assert!(!fs.exists("b").unwrap());
        });
    }

    #[test]
    fn a_handle_from_before_a_crash_is_refused() {
        with_node(1, 1.0, |disk, node| {
            let old = NodeFiles::of(disk.clone(), node);
            old.write("a", b"x").unwrap();
            old.sync("a").unwrap();
            disk.crash(node);
            assert_eq!(old.read("a"), Err(FileError::Refused), "down");
            disk.boot(node);
            assert_eq!(old.write("a", b"stale"), Err(FileError::Refused), "stale generation");
            assert_eq!(NodeFiles::of(disk.clone(), node).read("a").unwrap(), b"x");
        });
    }

    #[test]
    fn an_unsynced_rename_can_be_undone_by_a_crash() {
        with_node(1, 0.0, |disk, node| {
            let fs = NodeFiles::of(disk.clone(), node);
            fs.write("data", b"old").unwrap();
            fs.sync("data").unwrap();
            fs.write("data.tmp", b"new").unwrap();
            fs.sync("data.tmp").unwrap();
            fs.rename("data.tmp", "data").unwrap();
            assert_eq!(fs.read("data").unwrap(), b"new");
            assert!(!fs.exists("data.tmp").unwrap());
            let fs = reboot(&disk, node);
            assert_eq!(fs.read("data").unwrap(), b"old", "the rename is undone");
            assert_eq!(fs.read("data.tmp").unwrap(), b"new", "the temp file is back");
        });
    }

    #[test]
    fn a_rename_is_durable_after_a_sync_of_any_file_or_the_directory() {
        for via_dir in [false, true] {
            with_node(2, 0.0, |disk, node| {
                let fs = NodeFiles::of(disk.clone(), node);
                fs.write("other", b"o").unwrap();
                fs.write("data.tmp", b"new").unwrap();
                fs.sync("data.tmp").unwrap();
                fs.rename("data.tmp", "data").unwrap();
                if via_dir {
                    fs.sync_dir().unwrap();
                } else {
                    fs.sync("other").unwrap();
                }
                let fs = reboot(&disk, node);
                assert_eq!(fs.read("data").unwrap(), b"new");
                assert!(!fs.exists("data.tmp").unwrap());
            });
        }
    }

    #[test]
    fn a_crash_keeps_a_prefix_of_the_pending_renames() {
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let kept = with_node(seed, 0.5, |disk, node| {
                let fs = NodeFiles::of(disk.clone(), node);
                for n in ["a", "b", "c"] {
                    fs.write(&format!("{n}.tmp"), n.as_bytes()).unwrap();
                    fs.sync(&format!("{n}.tmp")).unwrap();
                }
                for n in ["a", "b", "c"] {
                    fs.rename(&format!("{n}.tmp"), n).unwrap();
                }
                let fs = reboot(&disk, node);
                let kept: Vec<bool> = ["a", "b", "c"].iter().map(|n| fs.exists(n).unwrap()).collect();
                for (i, n) in ["a", "b", "c"].iter().enumerate() {
                    assert_eq!(fs.exists(&format!("{n}.tmp")).unwrap(), !kept[i], "a file is under exactly one name");
                }
                kept
            });
            let prefix = kept.iter().take_while(|k| **k).count();
            assert!(kept[prefix..].iter().all(|k| !k), "seed {seed}: kept {kept:?} is not a prefix");
            seen.insert(prefix);
        }
        assert_eq!(seen.len(), 4, "64 crashes never produced every prefix: {seen:?}");
    }

    #[test]
    fn a_kept_rename_of_unsynced_data_leaves_an_empty_file() {
        // keep 1.0 keeps the rename and the file's write: with keep 0.0 the rename is undone.
        // In between, a seed keeps the rename but drops the write.
        let mut empty = false;
        for seed in 0..64 {
            let got = with_node(seed, 0.5, |disk, node| {
                let fs = NodeFiles::of(disk.clone(), node);
                fs.write("data.tmp", b"never synced").unwrap();
                fs.rename("data.tmp", "data").unwrap();
                let fs = reboot(&disk, node);
                assert!(!fs.exists("data.tmp").unwrap(), "an unsynced file never survives under its old name");
                fs.read("data").ok()
            });
            if let Some(data) = got {
                assert!(data.is_empty() || data == b"never synced", "seed {seed}: {data:?}");
                empty |= data.is_empty();
            }
        }
        assert!(empty, "no crash kept the rename without the data");
    }

    #[test]
    fn a_dropped_rename_restores_what_the_target_held() {
        with_node(3, 0.0, |disk, node| {
            let fs = NodeFiles::of(disk.clone(), node);
            fs.write("manifest", b"v1").unwrap();
            fs.sync("manifest").unwrap();
            fs.write("manifest.tmp", b"v2").unwrap();
            fs.sync("manifest.tmp").unwrap();
            fs.rename("manifest.tmp", "manifest").unwrap();
            fs.write("manifest.tmp", b"v3, unsynced").unwrap();
            let fs = reboot(&disk, node);
            assert_eq!(fs.read("manifest").unwrap(), b"v1");
            assert_eq!(fs.read("manifest.tmp").unwrap(), b"v2");
        });
    }

    #[test]
    fn list_delete_and_faults() {
        with_node(4, 1.0, |disk, node| {
            let fs = NodeFiles::of(disk.clone(), node);
            for n in ["x/1", "x/2", "y/1"] {
                fs.write(n, b"v").unwrap();
            }
            assert_eq!(fs.list("x/").unwrap(), vec!["x/1".to_string(), "x/2".to_string()]);
            fs.delete("x/1").unwrap();
            assert_eq!(fs.list("x/").unwrap(), vec!["x/2".to_string()]);
            assert_eq!(fs.read("x/1"), Err(FileError::NotFound { name: "x/1".into() }));
            disk.arm_io_fault(node, crate::disk::IoFault { op: IoOp::Sync, nth: 1, persistent: false });
            assert!(matches!(fs.sync("x/2"), Err(FileError::Io { .. })));
            fs.sync("x/2").unwrap();
            disk.set_capacity(node, Some(disk.used_bytes(node) + 4));
            assert_eq!(fs.write("big", b"too large"), Err(FileError::Full { name: "big".into() }));
            disk.power_cut_at(node, disk.ops(node) + 1);
            assert!(matches!(fs.write("y/1", b"cut"), Err(FileError::Io { .. })));
            assert!(disk.is_down(node));
            assert_eq!(fs.read("y/1"), Err(FileError::Refused));
        });
    }
}

//! The simulated disk: one file system per node, registered as a madsim plugin and exposed to
//! SQLite as the VFS `drill` (see [`vfs`]).
//!
//! [`file`] holds the durability model of a single file. This module adds what belongs to a whole
//! node's disk: crash generations, crash outcomes drawn from the node's disk stream, bit flips in
//! durable images, injected I/O errors, a capacity, and a power cut at a chosen operation index.

pub mod file;
pub mod files;
pub mod vfs;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use madsim::plugin::Simulator;
use madsim::task::NodeId;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

pub use file::{CrashModel, CrashTally, FileEntry, Pending};
pub use files::{FileError, NodeFiles};

use crate::rng::{SeedTree, Stream};
use crate::trace;

/// Bytes at the end of every database page that hold its checksum.
pub const CHECKSUM_BYTES: usize = 8;

/// World-wide disk settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DiskConfig {
    /// Sector size the VFS reports and tears by.
    pub sector_size: usize,
    /// Page size of the databases; page-sized reads and writes of main databases carry checksums.
    pub page_size: usize,
    /// Whether main-database pages carry checksums in their last [`CHECKSUM_BYTES`] bytes.
    pub checksums: bool,
}

impl Default for DiskConfig {
    fn default() -> Self {
        DiskConfig { sector_size: 512, page_size: 4096, checksums: true }
    }
}

/// The kinds of VFS operation an injected I/O error can hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoOp {
    Open,
    Read,
    Write,
    Sync,
}

/// Fail the `nth` (1-based, counted per node from when it is armed) operation of a kind, once or
/// from then on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoFault {
    pub op: IoOp,
    pub nth: u64,
    pub persistent: bool,
}

/// Disk faults of one node: how crashes land, and limits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DiskFaults {
    /// Per pending entry at a crash: probability it is kept.
    pub crash_keep_probability: f64,
    /// Per pending write at a crash: probability it is torn (the rest are dropped).
    pub crash_tear_probability: f64,
    /// Total bytes the node's files may hold; writes past it fail with `SQLITE_FULL`.
    pub capacity_bytes: Option<u64>,
}

impl DiskFaults {
    pub fn none() -> Self {
        DiskFaults { crash_keep_probability: 1.0, crash_tear_probability: 0.0, capacity_bytes: None }
    }

    /// Checks the ranges; a broken plan is a bug in whoever wrote it.
    pub fn validate(&self) -> Result<(), String> {
        let k = self.crash_keep_probability;
        let t = self.crash_tear_probability;
        if !(0.0..=1.0).contains(&k) || !(0.0..=1.0).contains(&t) || k + t > 1.0 + 1e-9 {
            return Err(format!("disk crash probabilities out of range: keep {k}, tear {t}"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct ArmedFault {
    fault: IoFault,
    seen: u64,
    fired: bool,
}

/// Shared memory of one database (the WAL index). It lives in the node's memory, not on disk,
/// so a crash loses it; regions are never freed while a run lasts, because a killed connection
/// may still touch them from its `Drop`.
#[derive(Default)]
pub(crate) struct Shm {
    pub(crate) regions: Vec<Box<[u8]>>,
}

/// One node's disk.
pub(crate) struct NodeDisk {
    pub(crate) name: String,
    pub(crate) generation: u64,
    pub(crate) files: BTreeMap<String, FileEntry>,
    /// Shared memory by open handle.
    pub(crate) shm: BTreeMap<u64, Shm>,
    /// Between a crash and the next boot: every call is refused.
    pub(crate) down: bool,
    pub(crate) next_handle: u64,
    pub(crate) rng: Stream,
    pub(crate) faults: DiskFaults,
    io_faults: Vec<ArmedFault>,
    pub(crate) ops: u64,
    pub(crate) power_cut_at: Option<u64>,
    /// Whether the armed power cut also stops the node's processes (see [`DiskSim::arm_power_cut`]).
    pub(crate) cut_kills: bool,
    /// Set when a power cut that kills has just fired; taken by the VFS once it has let go of
    /// the disk, to kill the node.
    pub(crate) cut_fired: bool,
    pub(crate) next_temp: u64,
    pub(crate) last_tally: CrashTally,
    /// Renames of whole files (see [`files`]) not yet made durable by a sync on the node.
    pub(crate) renames: Vec<files::PendingRename>,
}

impl NodeDisk {
    fn used_bytes(&self) -> u64 {
        self.files.values().map(|f| f.len()).sum()
    }

    /// Counts one operation; returns an error code when an injected fault or a power cut hits it.
    pub(crate) fn tick(&mut self, op: Option<IoOp>, file: &str, crash_model: CrashModel) -> Option<i32> {
        self.ops += 1;
        if debug_log() {
            eprintln!("[disk {}] op {} {:?} {}", self.name, self.ops, op, file);
        }
        if self.power_cut_at == Some(self.ops) {
            self.power_cut_at = None;
            trace::emit(&self.name, "disk.power_cut", json!({"op_index": self.ops, "file": file}));
            self.crash(crash_model);
            self.cut_fired = self.cut_kills;
            return Some(libsqlite3_sys::SQLITE_IOERR);
        }
        let op = op?;
        for a in self.io_faults.iter_mut().filter(|a| a.fault.op == op) {
            a.seen += 1;
            let hit = if a.fault.persistent { a.seen >= a.fault.nth } else { a.seen == a.fault.nth };
            if hit {
                if !a.fired {
                    trace::emit(&self.name, "disk.ioerr", json!({"op": op, "nth": a.fault.nth, "persistent": a.fault.persistent, "file": file}));
                }
                a.fired = true;
                return Some(match op {
                    IoOp::Open => libsqlite3_sys::SQLITE_CANTOPEN,
                    IoOp::Read => libsqlite3_sys::SQLITE_IOERR_READ,
                    IoOp::Write => libsqlite3_sys::SQLITE_IOERR_WRITE,
                    IoOp::Sync => libsqlite3_sys::SQLITE_IOERR_FSYNC,
                });
            }
        }
        None
    }

    /// Makes every pending delete of the node durable: a sync commits earlier namespace changes.
    pub(crate) fn flush_deletes(&mut self) {
        self.files.retain(|_, f| !f.flush_deletes());
        files::flush_renames(self);
    }

    /// Whether a write growing the node's files by `grow` bytes fits its capacity.
    pub(crate) fn fits(&self, grow: u64) -> bool {
        match self.faults.capacity_bytes {
            Some(cap) => self.used_bytes() + grow <= cap,
            None => true,
        }
    }

    /// Power loss: every file's pending entries kept, dropped or torn; shared memory lost; every
    /// handle from before now refused.
    pub(crate) fn crash(&mut self, model: CrashModel) -> CrashTally {
        let mut tally = CrashTally::default();
        files::crash_renames(self, &model, &mut tally);
        let names: Vec<String> = self.files.keys().cloned().collect();
        for name in names {
            let f = self.files.get_mut(&name).expect("listed");
            if !f.crash(&model, &mut self.rng, &mut tally) {
                self.files.remove(&name);
            }
        }
        self.generation += 1;
        self.down = true;
        self.last_tally = tally;
        trace::emit(
            &self.name,
            "disk.crash",
            json!({"generation": self.generation, "kept": tally.kept, "dropped": tally.dropped,
                   "torn": tally.torn, "vanished": tally.vanished}),
        );
        tally
    }
}

pub(crate) struct State {
    config: DiskConfig,
    nodes: BTreeMap<NodeId, NodeDisk>,
    sqlite_rng: Stream,
    /// Nodes whose power was cut mid-operation, not yet taken by the world.
    cuts: Vec<NodeId>,
    /// The world's task waiting for cuts.
    cut_waker: Option<std::task::Waker>,
}

/// The disk simulator: a madsim plugin holding every node's file system.
pub struct DiskSim {
    state: Mutex<State>,
}

impl Simulator for DiskSim {
    fn new(_rand: &madsim::rand::GlobalRng, _time: &madsim::time::TimeHandle, _config: &madsim::Config) -> Self {
        DiskSim {
            state: Mutex::new(State {
                config: DiskConfig::default(),
                nodes: BTreeMap::new(),
                sqlite_rng: SeedTree::new(0).stream("sqlite"),
                cuts: Vec::new(),
                cut_waker: None,
            }),
        }
    }
}

impl DiskSim {
    /// The disk of the current madsim runtime.
    pub fn current() -> Arc<DiskSim> {
        madsim::plugin::simulator::<DiskSim>()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resets the disk for a new run: settings, and SQLite's random stream.
    pub fn configure(&self, config: DiskConfig, seeds: &SeedTree) {
        let mut s = self.lock();
        s.config = config;
        s.nodes.clear();
        s.sqlite_rng = seeds.stream("sqlite");
        s.cuts.clear();
        s.cut_waker = None;
    }

    /// Gives node `id` an empty disk.
    pub fn add_node(&self, id: NodeId, name: &str, faults: DiskFaults, seeds: &SeedTree) {
        faults.validate().expect("disk faults");
        let disk = NodeDisk {
            name: name.to_string(),
            generation: 0,
            files: BTreeMap::new(),
            shm: BTreeMap::new(),
            down: false,
            next_handle: 0,
            rng: seeds.child(name).stream("disk"),
            faults,
            io_faults: Vec::new(),
            ops: 0,
            power_cut_at: None,
            cut_kills: false,
            cut_fired: false,
            next_temp: 0,
            last_tally: CrashTally::default(),
            renames: Vec::new(),
        };
        self.lock().nodes.insert(id, disk);
    }

    fn with_node<R>(&self, id: NodeId, f: impl FnOnce(&mut NodeDisk, &DiskConfig) -> R) -> R {
        let mut s = self.lock();
        let s = &mut *s;
        let disk = s.nodes.get_mut(&id).unwrap_or_else(|| panic!("node {id} has no disk"));
        f(disk, &s.config)
    }

    /// Power loss on node `id`. Call it before killing the node's tasks, so that whatever they
    /// do while being dropped is refused.
    pub fn crash(&self, id: NodeId) -> CrashTally {
        self.with_node(id, |d, c| {
            let model = crash_model(&d.faults, c);
            d.crash(model)
        })
    }

    /// Powers node `id` back on: calls are served again, for handles opened from now on.
    pub fn boot(&self, id: NodeId) {
        self.with_node(id, |d, _| {
            d.down = false;
            d.power_cut_at = None;
            d.cut_kills = false;
        });
    }

    /// Cuts power to every node when a world ends, without deciding any crash: every later call
    /// is refused and changes nothing, so processes dropped after the run (whose connections
    /// would otherwise checkpoint on close) cost nothing.
    pub(crate) fn power_off_all(&self) {
        for d in self.lock().nodes.values_mut() {
            d.down = true;
        }
    }

    /// Whether `id` has a disk and it is powered off; false for nodes without a disk.
    pub fn is_known_and_down(&self, id: NodeId) -> bool {
        self.lock().nodes.get(&id).is_some_and(|d| d.down)
    }

    /// Whether node `id` is powered off (crashed and not yet booted).
    pub fn is_down(&self, id: NodeId) -> bool {
        self.with_node(id, |d, _| d.down)
    }

    /// Flips one bit in the durable image of a main database file of node `id` (the file whose
    /// name ends with `suffix`), inside a page's checksummed bytes. Returns (file, offset, bit).
    pub fn flip_bit(&self, id: NodeId, suffix: &str) -> Option<(String, u64, u8)> {
        self.with_node(id, |d, _| {
            let name = d.files.iter().find(|(n, f)| n.ends_with(suffix) && f.durable.as_ref().is_some_and(|img| !img.is_empty()))?.0.clone();
            let f = d.files.get_mut(&name).expect("found");
            let len = f.durable.as_ref().expect("durable").len();
            let offset = d.rng.gen_range(0..len) as u64;
            let bit = d.rng.gen_range(0..8u8);
            for img in [f.durable.as_mut(), f.current.as_mut()].into_iter().flatten() {
                if let Some(b) = img.get_mut(offset as usize) {
                    *b ^= 1 << bit;
                }
            }
            trace::emit(&d.name, "disk.corrupt", json!({"file": name, "offset": offset, "bit": bit}));
            Some((name, offset, bit))
        })
    }

    /// Arms an I/O error on node `id`.
    pub fn arm_io_fault(&self, id: NodeId, fault: IoFault) {
        self.with_node(id, |d, _| d.io_faults.push(ArmedFault { fault, seen: 0, fired: false }));
    }

    /// Disarms every I/O error of node `id` (a replaced device, a cleared condition).
    pub fn clear_io_faults(&self, id: NodeId) {
        self.with_node(id, |d, _| d.io_faults.clear());
    }

    /// Sets the capacity of node `id`'s disk.
    pub fn set_capacity(&self, id: NodeId, capacity_bytes: Option<u64>) {
        self.with_node(id, |d, _| d.faults.capacity_bytes = capacity_bytes);
    }

    /// Cuts power on node `id` just before its `index`-th VFS operation (1-based, counted from
    /// the node's creation): that operation and every later one on an older handle fail.
    pub fn power_cut_at(&self, id: NodeId, index: u64) {
        self.with_node(id, |d, _| d.power_cut_at = Some(index));
    }

    /// Cuts power on node `id` just before its `after_ops`-th VFS operation from now, in the middle
    /// of whatever it is doing, and stops its processes there. The world learns of it through
    /// [`DiskSim::take_cuts`].
    pub fn arm_power_cut(&self, id: NodeId, after_ops: u64) {
        self.with_node(id, |d, _| {
            d.power_cut_at = Some(d.ops + after_ops.max(1));
            d.cut_kills = true;
        });
    }

    /// Disarms node `id`'s pending power cut.
    pub fn disarm_power_cut(&self, id: NodeId) {
        self.with_node(id, |d, _| {
            d.power_cut_at = None;
            d.cut_kills = false;
        });
    }

    /// Called by the VFS once it has let go of the disk: if a killing power cut just fired on
    /// `id`, stop the node's processes and tell the world.
    pub(crate) fn after_call(&self, id: NodeId) {
        let fired = {
            let mut s = self.lock();
            let fired = s.nodes.get_mut(&id).is_some_and(|d| std::mem::take(&mut d.cut_fired));
            if fired {
                s.cuts.push(id);
                if let Some(w) = s.cut_waker.take() {
                    w.wake();
                }
            }
            fired
        };
        if fired {
            madsim::runtime::Handle::current().kill(id);
        }
    }

    /// Whether power cuts fired that the world has not taken; registers `waker` to hear of the next.
    pub fn has_cuts(&self, waker: Option<&std::task::Waker>) -> bool {
        let mut s = self.lock();
        if let Some(w) = waker {
            s.cut_waker = Some(w.clone());
        }
        !s.cuts.is_empty()
    }

    /// Power cuts that fired since the last call; registers `waker` to hear of the next.
    pub fn take_cuts(&self, waker: Option<&std::task::Waker>) -> Vec<NodeId> {
        let mut s = self.lock();
        if let Some(w) = waker {
            s.cut_waker = Some(w.clone());
        }
        std::mem::take(&mut s.cuts)
    }

    /// What node `id`'s last crash did to its pending writes.
    pub fn last_crash_tally(&self, id: NodeId) -> CrashTally {
        self.with_node(id, |d, _| d.last_tally)
    }

    /// VFS operations node `id` has made so far.
    pub fn ops(&self, id: NodeId) -> u64 {
        self.with_node(id, |d, _| d.ops)
    }

    /// The crash generation of node `id` (how many crashes it has had).
    pub fn generation(&self, id: NodeId) -> u64 {
        self.with_node(id, |d, _| d.generation)
    }

    /// Bytes node `id`'s files hold now.
    pub fn used_bytes(&self, id: NodeId) -> u64 {
        self.with_node(id, |d, _| d.used_bytes())
    }

    /// Names of the files node `id` has now.
    pub fn files(&self, id: NodeId) -> Vec<String> {
        self.with_node(id, |d, _| d.files.iter().filter(|(_, f)| f.exists()).map(|(n, _)| n.clone()).collect())
    }

    /// Every byte node `id` holds, durable and current, by file, for scans.
    pub fn images(&self, id: NodeId) -> Vec<(String, Vec<u8>)> {
        self.with_node(id, |d, _| {
            let mut out = Vec::new();
            for (n, f) in &d.files {
                if let Some(c) = &f.current {
                    out.push((n.clone(), c.clone()));
                }
                if f.durable != f.current {
                    if let Some(img) = &f.durable {
                        out.push((format!("{n} (durable)"), img.clone()));
                    }
                }
            }
            out
        })
    }

    /// Loses every file of node `id` whose name starts with `prefix` (a database and its log
    /// and shared-memory files), durably: media lost or wiped while the node is down. Returns
    /// the names lost.
    pub fn lose_files(&self, id: NodeId, prefix: &str) -> Vec<String> {
        self.with_node(id, |d, _| {
            let names: Vec<String> = d.files.keys().filter(|n| n.starts_with(prefix)).cloned().collect();
            for n in &names {
                d.files.remove(n);
            }
            names
        })
    }

    /// Writes a file directly (a backup restored by an operator, a planted test file).
    pub fn put_file(&self, id: NodeId, name: &str, data: &[u8]) {
        self.with_node(id, |d, _| {
            let mut f = FileEntry::created();
            f.write(data, 0);
            f.sync();
            d.files.insert(name.to_string(), f);
        })
    }

    pub(crate) fn sqlite_random(&self, buf: &mut [u8]) {
        self.lock().sqlite_rng.fill(buf);
    }
}

/// `DRILL_DISK_LOG=1` prints every counted VFS operation to stderr, for debugging the disk.
fn debug_log() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("DRILL_DISK_LOG").is_some())
}

pub(crate) fn crash_model(f: &DiskFaults, c: &DiskConfig) -> CrashModel {
    CrashModel { keep_probability: f.crash_keep_probability, tear_probability: f.crash_tear_probability, sector_size: c.sector_size }
}

/// The checksum stored in a page's last [`CHECKSUM_BYTES`] bytes: SHA-256 of the rest, truncated.
pub fn page_checksum(page: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let body = &page[..page.len() - CHECKSUM_BYTES];
    let d = Sha256::digest(body);
    d[..CHECKSUM_BYTES].try_into().expect("8 bytes")
}

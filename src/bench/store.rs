//! The device store's write path three ways: the same workload — [`Client::append`] in a loop,
//! each call one transaction that adds the event to the outbox and commits — on the simulated
//! disk (drill's VFS inside a world, as every run uses it), on SQLite's `:memory:`, and on a
//! real file through SQLite's `unix` VFS with the stack's `synchronous=FULL`.
//!
//! Each way is timed from outside, opening included: once with no commits (the set-up, median
//! of a few) and once with the workload (median of a few); the cost of a
//! commit is the difference divided by the commits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use drill_sim::disk::{DiskConfig, DiskFaults, DiskSim};
use drill_sim::rng::SeedTree;
use drill_sim::world::{NetConfig, Runtime};
use drill_stack::client::{Client, DeviceKeys, Ring};
use drill_stack::clock::FixedClock;
use drill_stack::crypto::Key;
use serde::Serialize;

use crate::bench::{measured, median, ratio, Took, Who};
use crate::error::CliError;

/// Bytes of each appended event's payload (the middle of what the standard run appends).
pub const PAYLOAD_BYTES: usize = 256;
/// Repetitions of the cheap ways, whose median is kept.
const REPEATS: usize = 3;
/// The database's file name on the simulated disk and in the temporary folder.
const DB_FILE: &str = "bench.db";

/// The three ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Way {
    SimulatedDisk,
    Memory,
    RealFile,
}

impl Way {
    pub fn label(self) -> &'static str {
        match self {
            Way::SimulatedDisk => "simulated disk (drill VFS)",
            Way::Memory => "SQLite :memory:",
            Way::RealFile => "real file (unix VFS, synchronous=FULL)",
        }
    }
}

/// One way's cost.
#[derive(Debug, Clone, Serialize)]
pub struct WayResult {
    pub way: Way,
    pub commits: u32,
    pub setup_ms: f64,
    pub us_per_commit: f64,
    /// CPU time per commit: the real file's wait for its device is not in it.
    pub cpu_us_per_commit: f64,
}

/// The three ways and their ratios.
#[derive(Debug, Clone, Serialize)]
pub struct StoreResult {
    pub payload_bytes: usize,
    pub ways: Vec<WayResult>,
    /// Where the real file was: its file system decides what `synchronous=FULL` costs.
    pub real_file_dir: String,
    /// Simulated disk's cost per commit over `:memory:`'s.
    pub simulated_over_memory: f64,
    /// Real file's cost per commit over the simulated disk's.
    pub real_file_over_simulated: f64,
}

impl StoreResult {
    pub fn us_per_commit(&self, way: Way) -> f64 {
        self.ways.iter().find(|w| w.way == way).map_or(0.0, |w| w.us_per_commit)
    }
}

/// Measures the three ways; the real file lives in a fresh folder under `tmp`, removed after.
pub fn measure(commits: u32, file_commits: u32, tmp: &Path) -> Result<StoreResult, CliError> {
    let dir = tmp.join(format!("drill-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| CliError::io("cannot create folder", &dir, e))?;
    let file = dir.join(DB_FILE);
    let ways = [
        way(Way::SimulatedDisk, commits, REPEATS, &|n| on_simulated_disk(n)),
        way(Way::Memory, commits, REPEATS, &|n| in_memory(n)),
        way(Way::RealFile, file_commits, REPEATS, &|n| on_real_file(&file, n)),
    ];
    let _ = std::fs::remove_dir_all(&dir);
    let ways = ways.into_iter().collect::<Result<Vec<_>, _>>()?;
    let mut result =
        StoreResult { payload_bytes: PAYLOAD_BYTES, ways, real_file_dir: dir.display().to_string(), simulated_over_memory: 0.0, real_file_over_simulated: 0.0 };
    let (sim, mem, real) = (result.us_per_commit(Way::SimulatedDisk), result.us_per_commit(Way::Memory), result.us_per_commit(Way::RealFile));
    result.simulated_over_memory = ratio(sim, mem);
    result.real_file_over_simulated = ratio(real, sim);
    Ok(result)
}

type Workload<'a> = &'a dyn Fn(u32) -> Result<(), String>;

fn way(way: Way, commits: u32, repeats: usize, run: Workload<'_>) -> Result<WayResult, CliError> {
    let fail = |e: String| CliError::new(format!("store workload on {}: {e}", way.label()));
    let mut setups: Vec<Took> = Vec::new();
    let mut totals: Vec<Took> = Vec::new();
    for _ in 0..repeats.max(1) {
        let (done, took) = measured(Who::This, || run(0));
        done.map_err(fail)?;
        setups.push(took);
        let (done, took) = measured(Who::This, || run(commits));
        done.map_err(fail)?;
        totals.push(took);
    }
    let wall_ms = |v: &[Took]| median(&v.iter().map(|t| t.wall.as_secs_f64() * 1000.0).collect::<Vec<_>>());
    let cpu_ms = |v: &[Took]| median(&v.iter().map(|t| t.cpu_seconds * 1000.0).collect::<Vec<_>>());
    let per_commit = |total: f64, setup: f64| ratio((total - setup).max(0.0) * 1000.0, f64::from(commits));
    Ok(WayResult {
        way,
        commits,
        setup_ms: wall_ms(&setups),
        us_per_commit: per_commit(wall_ms(&totals), wall_ms(&setups)),
        cpu_us_per_commit: per_commit(cpu_ms(&totals), cpu_ms(&setups)),
    })
}

/// Appends `commits` events, each in its own transaction with its outbox entry.
fn workload(client: &mut Client, commits: u32) -> Result<(), String> {
    let payload: Vec<u8> = (0..PAYLOAD_BYTES).map(|i| (i * 7 + 3) as u8).collect();
    for i in 0..commits {
        let aggregate = format!("note-{}", i % 5 + 1);
        client.append(&aggregate, "created", &payload).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn open(path: &str, vfs: Option<&str>) -> Result<Client, String> {
    use rand_chacha::rand_core::SeedableRng;
    // The same keys and nonces on every storage layer: the three measure the same work.
    let ring = (1..=5).map(|i| (format!("note-{i}"), Key::from_bytes([i as u8; 32]))).collect();
    let keys = DeviceKeys::new(Ring::Fixed(ring), Box::new(rand_chacha::ChaCha8Rng::seed_from_u64(0)));
    Client::open_with_vfs(path, vfs, "bench", "acme", Box::new(FixedClock(0)), keys).map_err(|e| e.to_string())
}

/// In a world of its own, on a node's simulated disk with no faults.
fn on_simulated_disk(commits: u32) -> Result<(), String> {
    let seeds = SeedTree::new(0);
    let rt = Runtime::new(seeds, NetConfig::default(), DiskConfig::default(), Duration::from_secs(3_600));
    rt.block_on(async move {
        let node = madsim::plugin::node();
        DiskSim::current().add_node(node, "bench", DiskFaults::none(), &seeds);
        let mut client = open(DB_FILE, None)?;
        workload(&mut client, commits)
    })
}

/// SQLite's in-memory database, reached through the `unix` VFS (which it never touches for
/// pages): no world, no files.
fn in_memory(commits: u32) -> Result<(), String> {
    let mut client = open(":memory:", Some("unix"))?;
    workload(&mut client, commits)
}

/// A fresh real file through SQLite's `unix` VFS, named explicitly because drill makes its own
/// VFS the process's default.
fn on_real_file(file: &Path, commits: u32) -> Result<(), String> {
    remove_db(file);
    let path = file.to_str().ok_or("the temporary folder's path is not UTF-8")?;
    let result = open(path, Some("unix")).and_then(|mut client| workload(&mut client, commits));
    remove_db(file);
    result
}

/// Removes a database and its WAL and shared-memory files.
fn remove_db(file: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p: PathBuf = file.to_path_buf();
        p.set_file_name(format!("{DB_FILE}{suffix}"));
        let _ = std::fs::remove_file(p);
    }
}

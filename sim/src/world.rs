//! Building a simulated runtime: madsim plus drill's disk and clock simulators.
//!
//! SQLite keeps process-global state (its PRNG, its VFS list), so two runs never share a process
//! at the same time: [`Runtime::new`] takes a process-wide lock that the run holds until it is
//! dropped. Parallel sweeps use worker processes.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use madsim::task::NodeId;
use serde_json::json;

use crate::clock::ClockSim;
use crate::disk::{vfs, CrashTally, DiskConfig, DiskFaults, DiskSim, IoFault};
use crate::faults::{Fault, Scheduled};
use crate::rng::SeedTree;
use crate::trace;

static ONE_RUN_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Network knobs handed to madsim.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetConfig {
    pub packet_loss_rate: f64,
    pub latency_ms_min: u64,
    pub latency_ms_max: u64,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig { packet_loss_rate: 0.0, latency_ms_min: 1, latency_ms_max: 10 }
    }
}

/// A madsim runtime with drill's simulators registered, holding the process's run lock.
pub struct Runtime {
    // Field order matters: the runtime (and every task it still holds) is dropped before the lock.
    rt: madsim::runtime::Runtime,
    seeds: SeedTree,
    disk: DiskConfig,
    elapsed_ms: std::cell::Cell<u64>,
    _lock: MutexGuard<'static, ()>,
}

impl Runtime {
    /// A fresh world for `seeds`, waiting for any other run in this process to finish first.
    pub fn new(seeds: SeedTree, net: NetConfig, disk: DiskConfig, time_limit: Duration) -> Self {
        let lock = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        vfs::register();
        let mut config = madsim::Config::default();
        config.net.packet_loss_rate = net.packet_loss_rate;
        config.net.send_latency = Duration::from_millis(net.latency_ms_min)..Duration::from_millis(net.latency_ms_max.max(net.latency_ms_min + 1));
        let mut rt = madsim::runtime::Runtime::with_seed_and_config(seeds.derive_u64("madsim"), config);
        rt.add_simulator::<DiskSim>();
        rt.add_simulator::<ClockSim>();
        rt.add_simulator::<NodeList>();
        rt.set_time_limit(time_limit);
        Runtime { rt, seeds, disk, elapsed_ms: std::cell::Cell::new(0), _lock: lock }
    }

    /// Runs the world's main future to completion.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        let seeds = self.seeds;
        let disk = self.disk;
        let elapsed = &self.elapsed_ms;
        self.rt.block_on(async move {
            DiskSim::current().configure(disk, &seeds);
            vfs::reset_sqlite_prng();
            let out = f.await;
            elapsed.set(crate::clock::true_ms());
            out
        })
    }

    /// Simulated time since the world started, in milliseconds.
    pub fn elapsed_ms(&self) -> u64 {
        self.elapsed_ms.get()
    }

    /// The underlying madsim runtime, to create nodes before `block_on`.
    pub fn madsim(&self) -> &madsim::runtime::Runtime {
        &self.rt
    }
}

impl Drop for Runtime {
    /// Stops every node's processes before the world goes, so that their memory goes with it.
    ///
    /// A process waiting for its mailbox or a socket holds, inside its own future, the waker
    /// that would run it again: madsim never drops such a task by itself, and with it would keep
    /// the process's database connection and, through the connection's file handles, the whole
    /// simulated disk. Without this, every run left its disk behind and a worker grew by
    /// megabytes a seed. Killed tasks are dropped by the executor, so the kills run in one last
    /// turn of it, after the disks are powered off: a closing connection would otherwise
    /// checkpoint its WAL, work nobody reads. By then the run is over (its trace recorder is
    /// gone), so nothing the dying processes do is recorded. Skipped while unwinding from a
    /// panic, to not panic twice.
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        self.rt.block_on(async {
            DiskSim::current().power_off_all();
            let handle = madsim::runtime::Handle::current();
            let main = madsim::plugin::node();
            for id in madsim::plugin::simulator::<NodeList>().ids() {
                if id != main {
                    handle.kill(id);
                }
            }
        });
    }
}

/// Every node the world created (madsim tells its simulators), so that [`Runtime`] can stop
/// them all when it is dropped.
struct NodeList {
    ids: Mutex<Vec<NodeId>>,
}

impl NodeList {
    fn ids(&self) -> Vec<NodeId> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl madsim::plugin::Simulator for NodeList {
    fn new(_rand: &madsim::rand::GlobalRng, _time: &madsim::time::TimeHandle, _config: &madsim::Config) -> Self {
        NodeList { ids: Mutex::new(Vec::new()) }
    }

    fn create_node(&self, id: NodeId) {
        self.ids.lock().unwrap_or_else(|e| e.into_inner()).push(id);
    }
}

/// One step of a fault schedule: a fault starting, or its window closing.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultStep {
    Inject(Fault),
    /// The end of a fault's window: the partition heals, the node boots, the disk recovers.
    Undo(Fault),
}

/// Expands a schedule into timed steps, each fault followed by the end of its window.
pub fn fault_steps(schedule: &[Scheduled]) -> Vec<(u64, FaultStep)> {
    let mut out = Vec::new();
    for s in schedule {
        out.push((s.at_ms, FaultStep::Inject(s.fault.clone())));
        let window = match &s.fault {
            // A crash at a disk operation boots when it fires plus its downtime: the world
            // schedules that itself (see `Nodes::take_power_cuts`).
            Fault::Crash { after_disk_ops: Some(_), .. } => None,
            Fault::Crash { down_ms, .. } => Some(*down_ms),
            Fault::Partition { ms, .. } | Fault::IoError { ms, .. } | Fault::DiskFull { ms, .. } => Some(*ms),
            Fault::ClockJump { .. } | Fault::ClockDrift { .. } => None,
        };
        if let Some(ms) = window {
            out.push((s.at_ms + ms, FaultStep::Undo(s.fault.clone())));
        }
    }
    out.sort_by_key(|(t, _)| *t);
    out
}

/// The nodes of a world by name, and the verbs that fault them.
pub struct Nodes {
    by_name: BTreeMap<String, NodeId>,
    clogged: BTreeMap<(NodeId, NodeId), u32>,
    down: BTreeMap<String, bool>,
    /// Faults that actually happened, by kind.
    pub counts: BTreeMap<String, u64>,
}

impl Default for Nodes {
    fn default() -> Self {
        Self::new()
    }
}

impl Nodes {
    pub fn new() -> Self {
        Nodes { by_name: BTreeMap::new(), clogged: BTreeMap::new(), down: BTreeMap::new(), counts: BTreeMap::new() }
    }

    /// Registers a node created with madsim, and gives it a disk.
    pub fn add(&mut self, name: &str, id: NodeId, disk: DiskFaults, seeds: &SeedTree) {
        DiskSim::current().add_node(id, name, disk, seeds);
        self.by_name.insert(name.to_string(), id);
        self.down.insert(name.to_string(), false);
    }

    pub fn id(&self, name: &str) -> NodeId {
        *self.by_name.get(name).unwrap_or_else(|| panic!("no node named {name}"))
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.by_name.keys()
    }

    /// Whether the node is crashed and not yet booted.
    pub fn is_down(&self, name: &str) -> bool {
        self.down.get(name).copied().unwrap_or(false)
    }

    fn count(&mut self, kind: &str) {
        *self.counts.entry(kind.to_string()).or_default() += 1;
    }

    /// Power loss: the disk crashes first, so whatever the killed tasks do while being dropped
    /// is refused; then madsim kills the node's tasks. Returns whether the node was up.
    pub fn crash(&mut self, name: &str) -> bool {
        if self.is_down(name) {
            return false;
        }
        let id = self.id(name);
        self.count("crash");
        trace::emit(name, "fault.crash", json!({}));
        DiskSim::current().disarm_power_cut(id);
        let tally = DiskSim::current().crash(id);
        self.count_tally(tally);
        madsim::runtime::Handle::current().kill(id);
        self.down.insert(name.to_string(), true);
        true
    }

    fn count_tally(&mut self, tally: CrashTally) {
        if tally.torn > 0 {
            *self.counts.entry("disk.torn_write".into()).or_default() += tally.torn;
        }
        if tally.dropped > 0 {
            *self.counts.entry("disk.dropped_write".into()).or_default() += tally.dropped;
        }
    }

    /// Nodes whose armed power cut fired since the last call (the disk already crashed them and
    /// madsim already stopped their tasks); each is now marked down. `waker` hears of the next.
    pub fn take_power_cuts(&mut self, waker: Option<&std::task::Waker>) -> Vec<String> {
        let ids = DiskSim::current().take_cuts(waker);
        let mut out = Vec::new();
        for id in ids {
            let Some(name) = self.by_name.iter().find(|(_, v)| **v == id).map(|(k, _)| k.clone()) else { continue };
            self.count("crash.mid_io");
            trace::emit(&name, "fault.crash", json!({"mid_io": true}));
            let tally = DiskSim::current().last_crash_tally(id);
            self.count_tally(tally);
            self.down.insert(name.clone(), true);
            out.push(name);
        }
        out
    }

    /// Power back on: the disk serves again and the node's init runs anew.
    pub fn boot(&mut self, name: &str) {
        if !self.is_down(name) {
            return;
        }
        let id = self.id(name);
        trace::emit(name, "fault.restart", json!({}));
        DiskSim::current().boot(id);
        madsim::runtime::Handle::current().restart(id);
        self.down.insert(name.to_string(), false);
    }

    fn clog(&mut self, a: NodeId, b: NodeId) {
        let n = self.clogged.entry((a, b)).or_default();
        *n += 1;
        if *n == 1 {
            madsim::net::NetSim::current().clog_link(a, b);
        }
    }

    fn unclog(&mut self, a: NodeId, b: NodeId) {
        if let Some(n) = self.clogged.get_mut(&(a, b)) {
            *n -= 1;
            if *n == 0 {
                self.clogged.remove(&(a, b));
                madsim::net::NetSim::current().unclog_link(a, b);
            }
        }
    }

    fn links(&self, a: &[String], b: &[String], one_way: bool) -> Vec<(NodeId, NodeId)> {
        let mut out = Vec::new();
        for x in a {
            for y in b {
                out.push((self.id(x), self.id(y)));
                if !one_way {
                    out.push((self.id(y), self.id(x)));
                }
            }
        }
        out
    }

    /// Applies one step of a fault schedule.
    pub fn apply(&mut self, step: &FaultStep) {
        match step {
            FaultStep::Inject(f) => self.inject(f),
            FaultStep::Undo(f) => self.undo(f),
        }
    }

    fn inject(&mut self, f: &Fault) {
        let detail = serde_json::to_value(f).expect("faults serialize");
        match f {
            Fault::Crash { node, after_disk_ops: None, .. } => {
                self.crash(node);
                return;
            }
            Fault::Crash { node, after_disk_ops: Some(k), .. } => {
                if self.is_down(node) {
                    return;
                }
                DiskSim::current().arm_power_cut(self.id(node), u64::from(*k));
                trace::emit(node, "fault.power_cut_armed", json!({"after_disk_ops": k}));
                return;
            }
            Fault::Partition { a, b, one_way, .. } => {
                for (x, y) in self.links(a, b, *one_way) {
                    self.clog(x, y);
                }
            }
            Fault::IoError { node, op, nth, persistent, .. } => {
                DiskSim::current().arm_io_fault(self.id(node), IoFault { op: *op, nth: *nth, persistent: *persistent });
            }
            Fault::DiskFull { node, spare_bytes, .. } => {
                let id = self.id(node);
                let disk = DiskSim::current();
                disk.set_capacity(id, Some(disk.used_bytes(id) + spare_bytes));
            }
            Fault::ClockJump { node, delta_ms } => ClockSim::current().jump(self.id(node), *delta_ms),
            Fault::ClockDrift { node, ppm } => ClockSim::current().drift(self.id(node), *ppm),
        }
        self.count(f.kind());
        trace::emit(f.nodes().first().copied().unwrap_or("world"), &format!("fault.{}", f.kind()), detail);
    }

    fn undo(&mut self, f: &Fault) {
        match f {
            Fault::Crash { node, .. } => self.boot(node),
            Fault::Partition { a, b, one_way, .. } => {
                for (x, y) in self.links(a, b, *one_way) {
                    self.unclog(x, y);
                }
                trace::emit("world", "fault.heal", json!({"partition": {"a": a, "b": b, "one_way": one_way}}));
            }
            Fault::IoError { node, .. } => {
                DiskSim::current().clear_io_faults(self.id(node));
                trace::emit(node, "fault.heal", json!({"io_error": "cleared"}));
            }
            Fault::DiskFull { node, .. } => {
                DiskSim::current().set_capacity(self.id(node), None);
                trace::emit(node, "fault.heal", json!({"disk_full": "cleared"}));
            }
            Fault::ClockJump { .. } | Fault::ClockDrift { .. } => {}
        }
    }

    /// Ends every fault: links unclogged, disks healthy, crashed nodes booted.
    pub fn heal_all(&mut self) {
        let links: Vec<(NodeId, NodeId)> = self.clogged.keys().copied().collect();
        for (a, b) in links {
            madsim::net::NetSim::current().unclog_link(a, b);
        }
        self.clogged.clear();
        let names: Vec<String> = self.by_name.keys().cloned().collect();
        for name in names {
            let id = self.id(&name);
            DiskSim::current().clear_io_faults(id);
            DiskSim::current().set_capacity(id, None);
            if !self.is_down(&name) {
                DiskSim::current().disarm_power_cut(id);
            }
            self.boot(&name);
        }
        trace::emit("world", "fault.heal_all", json!({}));
    }
}

//! Fault knobs, grouped by subsystem, and the fault schedule they produce.
//!
//! Each subsystem has `none()`, `lite()` and `swarm(rng)`. Swarm testing turns whole fault kinds
//! on or off per seed and draws their rates, so that some seeds hammer one kind while others mix
//! them: a bug that needs quiet in one place and chaos in another gets its chance. Every knob is
//! checked by `validate`.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::disk::{DiskFaults, IoOp};
use crate::rng::Stream;

/// Network: loss and latency per message, and partitions over the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetFaults {
    /// Per message: probability it is lost.
    pub loss_probability: f64,
    pub latency_ms_min: u64,
    pub latency_ms_max: u64,
    /// Partitions over the whole run, at most.
    pub partitions_max: u32,
    /// Per partition: probability it is one-way rather than full.
    pub one_way_probability: f64,
    pub partition_ms_max: u64,
}

/// Processes: crashes (power loss, then restart after a downtime).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessFaults {
    /// Crashes over the whole run, at most.
    pub crashes_max: u32,
    /// Per crash: probability it hits the server rather than a client.
    pub server_crash_probability: f64,
    pub down_ms_max: u64,
}

/// Disk: how crashes land (per pending entry), and windows of I/O errors or a full disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskFaultKnobs {
    pub crash: DiskFaults,
    /// Injected I/O errors over the whole run, at most.
    pub io_errors_max: u32,
    /// Per I/O error: probability it persists for its window rather than hitting once.
    pub io_error_persistent_probability: f64,
    /// Windows during which a node's disk is full, at most.
    pub full_windows_max: u32,
    pub window_ms_max: u64,
}

/// Clocks: jumps and drifts of node clocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClockFaults {
    pub jumps_max: u32,
    pub jump_ms_max: i64,
    pub drifts_max: u32,
    pub drift_ppm_max: i64,
}

/// Every knob of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Knobs {
    pub net: NetFaults,
    pub process: ProcessFaults,
    pub disk: DiskFaultKnobs,
    pub clock: ClockFaults,
}

impl NetFaults {
    pub fn none() -> Self {
        NetFaults { loss_probability: 0.0, latency_ms_min: 1, latency_ms_max: 10, partitions_max: 0, one_way_probability: 0.0, partition_ms_max: 0 }
    }
    pub fn lite() -> Self {
        NetFaults { loss_probability: 0.01, latency_ms_min: 1, latency_ms_max: 20, partitions_max: 1, one_way_probability: 0.5, partition_ms_max: 1500 }
    }
    pub fn swarm(rng: &mut Stream) -> Self {
        let on = |rng: &mut Stream| rng.gen_bool(0.5);
        let latency_ms_max = rng.gen_range(2..=120);
        NetFaults {
            loss_probability: if on(rng) { rng.gen_range(0.0..0.1) } else { 0.0 },
            latency_ms_min: 1,
            latency_ms_max,
            partitions_max: if on(rng) { rng.gen_range(1..=4) } else { 0 },
            one_way_probability: rng.gen_range(0.0..=1.0),
            partition_ms_max: rng.gen_range(200..=3000),
        }
    }
}

impl ProcessFaults {
    pub fn none() -> Self {
        ProcessFaults { crashes_max: 0, server_crash_probability: 0.0, down_ms_max: 0 }
    }
    pub fn lite() -> Self {
        ProcessFaults { crashes_max: 2, server_crash_probability: 0.3, down_ms_max: 500 }
    }
    pub fn swarm(rng: &mut Stream) -> Self {
        let on = rng.gen_bool(0.75);
        ProcessFaults {
            crashes_max: if on { rng.gen_range(1..=8) } else { 0 },
            server_crash_probability: rng.gen_range(0.0..=0.5),
            down_ms_max: rng.gen_range(1..=2000),
        }
    }
}

impl DiskFaultKnobs {
    pub fn none() -> Self {
        DiskFaultKnobs { crash: DiskFaults::none(), io_errors_max: 0, io_error_persistent_probability: 0.0, full_windows_max: 0, window_ms_max: 0 }
    }
    pub fn lite() -> Self {
        DiskFaultKnobs {
            crash: DiskFaults { crash_keep_probability: 0.5, crash_tear_probability: 0.1, capacity_bytes: None },
            io_errors_max: 1,
            io_error_persistent_probability: 0.0,
            full_windows_max: 0,
            window_ms_max: 500,
        }
    }
    pub fn swarm(rng: &mut Stream) -> Self {
        let keep = rng.gen_range(0.0..=1.0);
        let tear = rng.gen_range(0.0..=(1.0 - keep));
        DiskFaultKnobs {
            crash: DiskFaults { crash_keep_probability: keep, crash_tear_probability: tear, capacity_bytes: None },
            io_errors_max: if rng.gen_bool(0.5) { rng.gen_range(1..=6) } else { 0 },
            io_error_persistent_probability: rng.gen_range(0.0..=0.5),
            full_windows_max: if rng.gen_bool(0.3) { rng.gen_range(1..=2) } else { 0 },
            window_ms_max: rng.gen_range(50..=1500),
        }
    }
}

impl ClockFaults {
    pub fn none() -> Self {
        ClockFaults { jumps_max: 0, jump_ms_max: 0, drifts_max: 0, drift_ppm_max: 0 }
    }
    pub fn lite() -> Self {
        ClockFaults { jumps_max: 1, jump_ms_max: 60_000, drifts_max: 0, drift_ppm_max: 0 }
    }
    pub fn swarm(rng: &mut Stream) -> Self {
        let on = rng.gen_bool(0.5);
        ClockFaults {
            jumps_max: if on { rng.gen_range(1..=3) } else { 0 },
            jump_ms_max: rng.gen_range(1_000..=3_600_000),
            drifts_max: if on { rng.gen_range(0..=2) } else { 0 },
            drift_ppm_max: rng.gen_range(10..=100_000),
        }
    }
}

impl Knobs {
    pub fn none() -> Self {
        Knobs { net: NetFaults::none(), process: ProcessFaults::none(), disk: DiskFaultKnobs::none(), clock: ClockFaults::none() }
    }
    pub fn lite() -> Self {
        Knobs { net: NetFaults::lite(), process: ProcessFaults::lite(), disk: DiskFaultKnobs::lite(), clock: ClockFaults::lite() }
    }
    pub fn swarm(rng: &mut Stream) -> Self {
        Knobs { net: NetFaults::swarm(rng), process: ProcessFaults::swarm(rng), disk: DiskFaultKnobs::swarm(rng), clock: ClockFaults::swarm(rng) }
    }

    /// Checks every range; a plan file edited by hand gets a clear message.
    pub fn validate(&self) -> Result<(), String> {
        let p = |name: &str, v: f64| if (0.0..=1.0).contains(&v) { Ok(()) } else { Err(format!("{name} must be within 0..=1, not {v}")) };
        p("net.loss_probability", self.net.loss_probability)?;
        p("net.one_way_probability", self.net.one_way_probability)?;
        p("process.server_crash_probability", self.process.server_crash_probability)?;
        p("disk.io_error_persistent_probability", self.disk.io_error_persistent_probability)?;
        if self.net.latency_ms_min > self.net.latency_ms_max {
            return Err("net.latency_ms_min exceeds net.latency_ms_max".into());
        }
        self.disk.crash.validate()
    }
}

/// One fault, as the schedule names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Power loss on a node; it boots again after `down_ms`. With `after_disk_ops`, the power
    /// is cut just before the node's that-many-th disk operation from then on, in the middle of
    /// whatever it is writing; otherwise at once.
    Crash { node: String, down_ms: u64, after_disk_ops: Option<u32> },
    /// Messages from `a` to `b` (and back, unless one-way) are dropped for `ms`.
    Partition { a: Vec<String>, b: Vec<String>, one_way: bool, ms: u64 },
    /// The node's `nth` operation of a kind fails (once, or until the window closes).
    IoError { node: String, op: IoOp, nth: u64, persistent: bool, ms: u64 },
    /// The node's disk holds only `spare_bytes` more for `ms`.
    DiskFull { node: String, spare_bytes: u64, ms: u64 },
    /// The node's clock jumps.
    ClockJump { node: String, delta_ms: i64 },
    /// The node's clock drifts.
    ClockDrift { node: String, ppm: i64 },
}

impl Fault {
    /// The kind under which the fault is counted in summaries.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Crash { after_disk_ops: None, .. } => "crash",
            Fault::Crash { after_disk_ops: Some(_), .. } => "crash.mid_io",
            Fault::Partition { one_way: false, .. } => "partition",
            Fault::Partition { one_way: true, .. } => "partition.one_way",
            Fault::IoError { persistent: false, .. } => "disk.io_error",
            Fault::IoError { persistent: true, .. } => "disk.io_error.persistent",
            Fault::DiskFull { .. } => "disk.full",
            Fault::ClockJump { .. } => "clock.jump",
            Fault::ClockDrift { .. } => "clock.drift",
        }
    }

    /// Nodes the fault names.
    pub fn nodes(&self) -> Vec<&str> {
        match self {
            Fault::Partition { a, b, .. } => a.iter().chain(b.iter()).map(String::as_str).collect(),
            Fault::Crash { node, .. }
            | Fault::IoError { node, .. }
            | Fault::DiskFull { node, .. }
            | Fault::ClockJump { node, .. }
            | Fault::ClockDrift { node, .. } => vec![node.as_str()],
        }
    }
}

/// A fault at a simulated time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scheduled {
    pub at_ms: u64,
    #[serde(flatten)]
    pub fault: Fault,
}

/// Draws the fault schedule over `[0, duration_ms)` for `nodes` (the server first).
pub fn schedule(k: &Knobs, nodes: &[String], duration_ms: u64, rng: &mut Stream) -> Vec<Scheduled> {
    let (server, clients) = nodes.split_first().expect("a server");
    let mut out = Vec::new();
    let at = |rng: &mut Stream| rng.gen_range(0..duration_ms.max(1));
    let any = |rng: &mut Stream| nodes[rng.gen_range(0..nodes.len())].clone();
    for _ in 0..rng.gen_range(0..=k.process.crashes_max) {
        let node = if clients.is_empty() || rng.gen_bool(k.process.server_crash_probability) {
            server.clone()
        } else {
            clients[rng.gen_range(0..clients.len())].clone()
        };
        let down_ms = rng.gen_range(1..=k.process.down_ms_max.max(1));
        let after_disk_ops = if rng.gen_bool(0.6) { Some(rng.gen_range(1..=40)) } else { None };
        out.push(Scheduled { at_ms: at(rng), fault: Fault::Crash { node, down_ms, after_disk_ops } });
    }
    for _ in 0..rng.gen_range(0..=k.net.partitions_max) {
        let mut shuffled: Vec<String> = nodes.to_vec();
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, rng.gen_range(0..=i));
        }
        let cut = rng.gen_range(1..shuffled.len().max(2));
        let b = shuffled.split_off(cut.min(shuffled.len()));
        let one_way = rng.gen_bool(k.net.one_way_probability);
        let ms = rng.gen_range(1..=k.net.partition_ms_max.max(1));
        out.push(Scheduled { at_ms: at(rng), fault: Fault::Partition { a: shuffled, b, one_way, ms } });
    }
    for _ in 0..rng.gen_range(0..=k.disk.io_errors_max) {
        let op = [IoOp::Read, IoOp::Write, IoOp::Sync, IoOp::Open][rng.gen_range(0..4)];
        let fault = Fault::IoError {
            node: any(rng),
            op,
            nth: rng.gen_range(1..=20),
            persistent: rng.gen_bool(k.disk.io_error_persistent_probability),
            ms: rng.gen_range(1..=k.disk.window_ms_max.max(1)),
        };
        out.push(Scheduled { at_ms: at(rng), fault });
    }
    for _ in 0..rng.gen_range(0..=k.disk.full_windows_max) {
        let fault = Fault::DiskFull { node: any(rng), spare_bytes: rng.gen_range(0..=16_384), ms: rng.gen_range(1..=k.disk.window_ms_max.max(1)) };
        out.push(Scheduled { at_ms: at(rng), fault });
    }
    for _ in 0..rng.gen_range(0..=k.clock.jumps_max) {
        let delta_ms = rng.gen_range(-k.clock.jump_ms_max..=k.clock.jump_ms_max);
        out.push(Scheduled { at_ms: at(rng), fault: Fault::ClockJump { node: any(rng), delta_ms } });
    }
    for _ in 0..rng.gen_range(0..=k.clock.drifts_max) {
        let ppm = rng.gen_range(-k.clock.drift_ppm_max..=k.clock.drift_ppm_max);
        out.push(Scheduled { at_ms: at(rng), fault: Fault::ClockDrift { node: any(rng), ppm } });
    }
    out.sort_by_key(|s| s.at_ms);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeedTree;

    #[test]
    fn swarm_knobs_are_valid_and_vary() {
        let mut kinds = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let mut rng = SeedTree::new(seed).stream("knobs");
            let k = Knobs::swarm(&mut rng);
            k.validate().unwrap();
            let nodes: Vec<String> = ["server", "client-1", "client-2"].iter().map(|s| s.to_string()).collect();
            for s in schedule(&k, &nodes, 10_000, &mut rng) {
                assert!(s.at_ms < 10_000);
                kinds.insert(s.fault.kind());
            }
        }
        assert!(kinds.len() >= 8, "swarm never produced some kinds: {kinds:?}");
    }

    #[test]
    fn none_schedules_nothing() {
        let mut rng = SeedTree::new(1).stream("knobs");
        let nodes = vec!["server".to_string(), "client-1".to_string()];
        assert!(schedule(&Knobs::none(), &nodes, 10_000, &mut rng).is_empty());
    }
}

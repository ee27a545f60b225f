//! Node clocks: simulated time is true time; each node reads its wall clock as true time plus
//! its own skew, which faults jump or drift.

use std::collections::BTreeMap;
use std::sync::Mutex;

use madsim::plugin::Simulator;
use madsim::task::NodeId;

/// Unix time (ms) at which every world starts: 2026-01-01T00:00:00Z. A fixed epoch keeps runs
/// independent of the machine's clock.
pub const EPOCH_UNIX_MS: i64 = 1_767_225_600_000;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Skew {
    offset_ms: i64,
    drift_ppm: i64,
    drift_since_ms: u64,
}

impl Skew {
    fn at(&self, true_ms: u64) -> i64 {
        let drifted = true_ms.saturating_sub(self.drift_since_ms) as i64 * self.drift_ppm / 1_000_000;
        self.offset_ms + drifted
    }
}

/// The clock simulator: one skew per node.
pub struct ClockSim {
    skews: Mutex<BTreeMap<NodeId, Skew>>,
}

impl Simulator for ClockSim {
    fn new(_rand: &madsim::rand::GlobalRng, _time: &madsim::time::TimeHandle, _config: &madsim::Config) -> Self {
        ClockSim { skews: Mutex::new(BTreeMap::new()) }
    }
}

/// The simulated instant now. (Under madsim, `Instant::now` is simulated too, but outside a
/// runtime it would read the machine's clock; this cannot.)
pub fn now() -> madsim::time::Instant {
    madsim::time::TimeHandle::current().now_instant()
}

/// Simulated milliseconds since the world started.
pub fn true_ms() -> u64 {
    madsim::time::TimeHandle::current().elapsed().as_millis() as u64
}

/// Simulated microseconds since the world started (for trace lines).
pub fn true_us() -> u64 {
    madsim::time::TimeHandle::try_current().map(|t| t.elapsed().as_micros() as u64).unwrap_or(0)
}

impl ClockSim {
    pub fn current() -> std::sync::Arc<ClockSim> {
        madsim::plugin::simulator::<ClockSim>()
    }

    fn update(&self, node: NodeId, f: impl FnOnce(&mut Skew, u64)) {
        let now = true_ms();
        let mut m = self.skews.lock().unwrap_or_else(|e| e.into_inner());
        f(m.entry(node).or_default(), now);
    }

    /// Jumps node `node`'s clock by `delta_ms` (forward or back).
    pub fn jump(&self, node: NodeId, delta_ms: i64) {
        self.update(node, |s, _| s.offset_ms += delta_ms);
    }

    /// From now on node `node`'s clock runs `ppm` parts per million fast (or slow if negative).
    pub fn drift(&self, node: NodeId, ppm: i64) {
        self.update(node, |s, now| {
            s.offset_ms = s.at(now);
            s.drift_ppm = ppm;
            s.drift_since_ms = now;
        });
    }

    /// Puts node `node`'s clock back on true time.
    pub fn reset(&self, node: NodeId) {
        self.update(node, |s, _| *s = Skew::default());
    }

    /// Node `node`'s current skew in milliseconds.
    pub fn skew_ms(&self, node: NodeId) -> i64 {
        let now = true_ms();
        let m = self.skews.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&node).map(|s| s.at(now)).unwrap_or(0)
    }
}

/// The wall clock of `node`, in Unix milliseconds.
pub fn node_unix_ms(node: NodeId) -> i64 {
    EPOCH_UNIX_MS + true_ms() as i64 + ClockSim::current().skew_ms(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_accumulates_from_its_start() {
        let s = Skew { offset_ms: 10, drift_ppm: 1000, drift_since_ms: 1000 };
        assert_eq!(s.at(1000), 10);
        assert_eq!(s.at(11_000), 20);
    }
}

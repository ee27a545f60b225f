//! Building a simulated runtime: madsim plus drill's disk and clock simulators.
//!
//! SQLite keeps process-global state (its PRNG, its VFS list), so two runs never share a process
//! at the same time: [`Runtime::new`] takes a process-wide lock that the run holds until it is
//! dropped. Parallel sweeps use worker processes.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::clock::ClockSim;
use crate::disk::{vfs, DiskConfig, DiskSim};
use crate::rng::SeedTree;

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
    _lock: MutexGuard<'static, ()>,
}

impl Runtime {
    /// A fresh world for `seeds`, waiting for any other run in this process to finish first.
    pub fn new(seeds: SeedTree, net: NetConfig, disk: DiskConfig, time_limit: Duration) -> Self {
        let lock = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        vfs::register();
        let mut config = madsim::Config::default();
        config.net.packet_loss_rate = net.packet_loss_rate;
        config.net.send_latency =
            Duration::from_millis(net.latency_ms_min)..Duration::from_millis(net.latency_ms_max.max(net.latency_ms_min + 1));
        let mut rt = madsim::runtime::Runtime::with_seed_and_config(seeds.derive_u64("madsim"), config);
        rt.add_simulator::<DiskSim>();
        rt.add_simulator::<ClockSim>();
        rt.set_time_limit(time_limit);
        Runtime { rt, seeds, disk, _lock: lock }
    }

    /// Runs the world's main future to completion.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        let seeds = self.seeds;
        let disk = self.disk;
        self.rt.block_on(async move {
            DiskSim::current().configure(disk, &seeds);
            vfs::reset_sqlite_prng();
            f.await
        })
    }

    /// The underlying madsim runtime, to create nodes before `block_on`.
    pub fn madsim(&self) -> &madsim::runtime::Runtime {
        &self.rt
    }
}

//! `drill bench`'s measurements, each in its own module, all taken in one process run on one
//! machine so that their ratios mean something:
//!
//! - [`seeds`]: the standard swarm run through the sweep's worker pool, with 1 and 2 workers;
//! - [`store`]: the device store's append workload on the simulated disk, in memory and on a
//!   real file;
//! - [`scale`]: the standard run with more operations and more devices;
//! - [`memory`]: peak memory of a fresh process running seeds one after another.
//!
//! [`report`] holds the results, the targets they are held against, and the table.
//!
//! This is the one place in drill that reads the machine's clock on purpose: what it measures is
//! the machine. It never reads it inside a run: every timing brackets a whole world from outside
//! (madsim answers the clock with simulated time inside one).

pub mod memory;
pub mod report;
pub mod scale;
pub mod seeds;
pub mod store;

use std::time::{Duration, Instant};

/// How much work each measurement does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Standard-run seeds, for each worker count.
    pub standard_seeds: u64,
    /// Seeds at each size of the scaling runs.
    pub scale_seeds: u64,
    /// Commits of the store workload on the simulated disk and in memory.
    pub commits: u32,
    /// Commits of the store workload on the real file (each one waits for the device).
    pub file_commits: u32,
    /// Seeds the memory probe runs in one process.
    pub memory_seeds: u64,
}

impl Budget {
    /// The full bench: a few minutes on two cores.
    pub const FULL: Budget = Budget { standard_seeds: 600, scale_seeds: 20, commits: 5_000, file_commits: 500, memory_seeds: 200 };
    /// `--quick`: seconds, a smoke check of every measurement rather than numbers to quote.
    pub const QUICK: Budget = Budget { standard_seeds: 60, scale_seeds: 2, commits: 500, file_commits: 100, memory_seeds: 20 };

    /// A budget scaled down to `seeds` standard seeds (the hidden `--seeds`, for tests).
    pub fn tiny(seeds: u64) -> Budget {
        let seeds = seeds.max(1);
        // At least 200 commits a way: with fewer, the workload's time over the set-up's is within
        // a loaded machine's noise and a way can measure 0 us a commit.
        let commits = u32::try_from(seeds.saturating_mul(20)).unwrap_or(u32::MAX).max(200);
        Budget { standard_seeds: seeds, scale_seeds: 1, commits, file_commits: commits.min(100), memory_seeds: seeds }
    }
}

/// The machine's clock, for measurements only.
#[allow(clippy::disallowed_methods)] // the bench measures the machine; never called inside a run
pub fn wall_now() -> Instant {
    Instant::now()
}

/// Runs `f` and returns its result with the wall-clock time it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = wall_now();
    let out = f();
    (out, start.elapsed())
}

/// Wall-clock and CPU time of one measured stretch.
#[derive(Debug, Clone, Copy, Default)]
pub struct Took {
    pub wall: Duration,
    /// User plus system CPU seconds of this process, or of its reaped children (see
    /// [`cpu_seconds`]); on a busy machine this stays close to the work done while wall time grows.
    pub cpu_seconds: f64,
}

/// Runs `f` and returns its result with the wall-clock time and the CPU time of `who` it took.
pub fn measured<T>(who: Who, f: impl FnOnce() -> T) -> (T, Took) {
    let cpu = cpu_seconds(who);
    let (out, wall) = timed(f);
    (out, Took { wall, cpu_seconds: (cpu_seconds(who) - cpu).max(0.0) })
}

/// Whose CPU time [`measured`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// This process, every thread.
    This,
    /// Child processes that have ended and been waited for (the pool's workers).
    Children,
}

/// User plus system CPU seconds so far of `who`; 0 when the system does not say.
pub fn cpu_seconds(who: Who) -> f64 {
    rusage(who).map_or(0.0, |u| seconds(u.ru_utime) + seconds(u.ru_stime))
}

/// This process's (or its waited-for children's largest) peak resident set size so far, in KiB.
pub fn peak_rss_kib(who: Who) -> Option<u64> {
    let maxrss = u64::try_from(rusage(who)?.ru_maxrss).ok()?;
    // Linux reports KiB, macOS bytes.
    Some(if cfg!(target_os = "macos") { maxrss / 1024 } else { maxrss })
}

fn rusage(who: Who) -> Option<libc::rusage> {
    let who = match who {
        Who::This => libc::RUSAGE_SELF,
        Who::Children => libc::RUSAGE_CHILDREN,
    };
    // SAFETY: an all-zero rusage is a valid value, and getrusage only writes the struct it is
    // given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid `who` and a pointer to a live rusage.
    let rc = unsafe { libc::getrusage(who, &mut usage) };
    (rc == 0).then_some(usage)
}

fn seconds(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// The median of `xs` (the mean of the middle two for an even count); 0 for none.
pub fn median(xs: &[f64]) -> f64 {
    let v = sorted(xs);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The `q` quantile of `xs` by nearest rank (`q = 0.95`: the smallest value at least 95% of the
/// values do not exceed); 0 for none.
pub fn quantile(xs: &[f64], q: f64) -> f64 {
    let v = sorted(xs);
    if v.is_empty() {
        return 0.0;
    }
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn sorted(xs: &[f64]) -> Vec<f64> {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// `a / b`, or 0 when `b` is not positive.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_quantiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&xs, 0.95), 95.0);
        assert_eq!(quantile(&xs, 1.0), 100.0);
        assert_eq!(quantile(&[7.0], 0.95), 7.0);
    }

    #[test]
    fn a_tiny_budget_still_measures_everything() {
        let b = Budget::tiny(0);
        assert!(b.standard_seeds >= 1 && b.scale_seeds >= 1 && b.commits >= 1 && b.file_commits >= 1 && b.memory_seeds >= 1);
    }
}

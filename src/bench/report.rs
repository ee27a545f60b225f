//! `bench.json` and the table: every measurement of one bench run, and the targets drill holds
//! itself to, each with its goal, what was measured and whether it was met. The targets are
//! reported, never asserted: a slow machine is not a failing build.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::bench::memory::MemoryResult;
use crate::bench::scale::{ScaleResult, SizeResult};
use crate::bench::seeds::{SweepResult, PROFILE, SCENARIO};
use crate::bench::store::{StoreResult, Way};

/// Version of bench.json's layout; bump it when a field changes meaning.
pub const BENCH_FORMAT_VERSION: u32 = 1;

/// Everything one `drill bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub format_version: u32,
    pub drill_version: String,
    /// `full` or `quick` (or `tiny` for a test budget).
    pub budget: String,
    pub machine: Machine,
    pub wall_seconds: f64,
    pub standard: Standard,
    pub store: StoreResult,
    pub scaling: ScaleResult,
    pub memory: MemoryResult,
    pub targets: Vec<Target>,
}

/// Where the numbers were taken.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub os: String,
    pub arch: String,
}

impl Machine {
    pub fn this() -> Machine {
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
        }
    }
}

/// The standard run through the worker pool.
#[derive(Debug, Clone, Serialize)]
pub struct Standard {
    pub scenario: String,
    pub profile: String,
    pub sweeps: Vec<SweepResult>,
}

impl Standard {
    pub fn new(sweeps: Vec<SweepResult>) -> Standard {
        Standard { scenario: SCENARIO.to_string(), profile: PROFILE.to_string(), sweeps }
    }

    fn one_worker(&self) -> Option<&SweepResult> {
        self.sweeps.iter().find(|s| s.workers == 1)
    }
}

/// One target: what was wanted, what was measured, and whether it was met.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub goal: String,
    pub measured: String,
    pub met: bool,
}

/// Goals (see docs/bench.md for why these).
pub const SEED_MEDIAN_MS_MAX: f64 = 40.0;
pub const SIMULATED_OVER_MEMORY_MAX: f64 = 4.0;
pub const REAL_FILE_OVER_SIMULATED_MIN: f64 = 20.0;
pub const OPS_GROWTH_MAX: f64 = 1.25;

/// The targets, judged against the measurements.
pub fn targets(standard: &Standard, store: &StoreResult, scaling: &ScaleResult) -> Vec<Target> {
    let median = standard.one_worker().map_or(0.0, |s| s.ms_per_seed_median);
    vec![
        Target {
            name: "standard seed, median (1 worker)".into(),
            goal: format!("<= {SEED_MEDIAN_MS_MAX} ms"),
            measured: format!("{median:.1} ms"),
            met: median <= SEED_MEDIAN_MS_MAX,
        },
        Target {
            name: "commit: simulated disk / :memory:".into(),
            goal: format!("<= {SIMULATED_OVER_MEMORY_MAX}x"),
            measured: format!("{:.2}x", store.simulated_over_memory),
            met: store.simulated_over_memory <= SIMULATED_OVER_MEMORY_MAX,
        },
        Target {
            name: "commit: real file / simulated disk".into(),
            goal: format!(">= {REAL_FILE_OVER_SIMULATED_MIN}x"),
            measured: format!("{:.1}x", store.real_file_over_simulated),
            met: store.real_file_over_simulated >= REAL_FILE_OVER_SIMULATED_MIN,
        },
        Target {
            name: "time per operation, 16x ops / 1x ops".into(),
            goal: format!("<= {OPS_GROWTH_MAX}x (flat within 25%)"),
            measured: format!("{:.2}x", scaling.ops_growth),
            met: scaling.ops_growth <= OPS_GROWTH_MAX,
        },
    ]
}

impl BenchReport {
    /// Whether every run the bench made passed (a bench of a failing build still reports).
    pub fn all_runs_passed(&self) -> bool {
        let sizes = self.scaling.by_ops.iter().chain(&self.scaling.by_clients);
        let outcomes = self.standard.sweeps.iter().map(|s| &s.outcomes).chain(sizes.map(|s| &s.outcomes));
        outcomes.flat_map(|o| o.keys()).all(|k| k == "pass")
    }

    /// The table printed at the end of a bench.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        out += &format!("drill {} bench ({}) on {} CPUs, {} {}: {:.1} s\n", self.drill_version, self.budget, m.cpus, m.os, m.arch, self.wall_seconds);
        out += &format!("\nstandard run ({}, {}, server + 3 devices) through the sweep's worker pool\n", self.standard.scenario, self.standard.profile);
        let mut t = vec![row(&["workers", "seeds", "seeds/s", "median ms", "p95 ms", "cpu ms/seed", "sim s/wall s", "outcomes"])];
        for s in &self.standard.sweeps {
            t.push(vec![
                s.workers.to_string(),
                s.seeds.to_string(),
                format!("{:.1}", s.seeds_per_second),
                format!("{:.2}", s.ms_per_seed_median),
                format!("{:.2}", s.ms_per_seed_p95),
                format!("{:.2}", s.cpu_ms_per_seed),
                format!("{:.0}", s.sim_seconds_per_wall_second),
                outcomes(&s.outcomes),
            ]);
        }
        out += &render(&t);
        out += &format!("\nstore workload: Client::append in a loop, {}-byte payload, one commit each\n", self.store.payload_bytes);
        let mem = self.store.us_per_commit(Way::Memory);
        let mut t = vec![row(&["way", "commits", "us/commit", "x :memory:", "cpu us/commit", "set-up ms"])];
        for w in &self.store.ways {
            let vs = if mem > 0.0 { format!("{:.2}", w.us_per_commit / mem) } else { "-".into() };
            t.push(vec![
                w.way.label().into(),
                w.commits.to_string(),
                format!("{:.1}", w.us_per_commit),
                vs,
                format!("{:.1}", w.cpu_us_per_commit),
                format!("{:.2}", w.setup_ms),
            ]);
        }
        out += &render(&t);
        out += &format!("  (real file in {})\n", self.store.real_file_dir);
        let s = &self.scaling;
        let seeds = s.by_ops.first().map_or(0, |x| x.seeds);
        out += &format!("\nscaling ({}, seeds 1..={seeds} at each size, in this process, no run files)\n", s.profile);
        let mut t = vec![row(&["size", "devices", "ops/device", "phase ms", "ops", "us/op", "cpu us/op", "ms/seed", "outcomes"])];
        for z in s.by_ops.iter().chain(&s.by_clients) {
            t.push(size_row(z));
        }
        out += &render(&t);
        out += &format!(
            "  us/op growth: 16x ops {:.2}x (cpu {:.2}x), 8 devices vs 2 {:.2}x (cpu {:.2}x)\n",
            s.ops_growth, s.ops_growth_cpu, s.clients_growth, s.clients_growth_cpu
        );
        let mm = &self.memory;
        out += &format!(
            "\nmemory ({} seeds in a fresh process): peak RSS {} before any run, {} after the first seed, {} after the last ({:+.1} KiB/seed)\n",
            mm.seeds,
            mib(mm.baseline_kib),
            mib(mm.after_first_seed_kib),
            mib(mm.after_all_seeds_kib),
            mm.growth_kib_per_seed
        );
        out += "\ntargets (reported, not asserted)\n";
        let mut t = vec![row(&["target", "goal", "measured", "met"])];
        for g in &self.targets {
            t.push(vec![g.name.clone(), g.goal.clone(), g.measured.clone(), if g.met { "yes" } else { "NO" }.into()]);
        }
        out += &render(&t);
        out
    }
}

fn size_row(z: &SizeResult) -> Vec<String> {
    vec![
        z.label.clone(),
        z.clients.to_string(),
        z.ops_per_client.to_string(),
        z.duration_ms.to_string(),
        z.ops.to_string(),
        format!("{:.1}", z.us_per_op),
        format!("{:.1}", z.cpu_us_per_op),
        format!("{:.1}", z.ms_per_seed),
        outcomes(&z.outcomes),
    ]
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

fn outcomes(o: &BTreeMap<String, u64>) -> String {
    o.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Left-aligned columns, two spaces apart, indented by two.
fn render(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r.iter().enumerate().map(|(i, s)| format!("{s:<w$}", w = widths[i])).collect();
        out += &format!("  {}\n", cells.join("  ").trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let t = render(&[row(&["a", "bbb"]), row(&["cccc", "d"])]);
        assert_eq!(t, "  a     bbb\n  cccc  d\n");
    }
}

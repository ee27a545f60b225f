//! How the cost of a run grows: the standard run with 1×, 4× and 16× the operations, and with 2,
//! 4 and 8 devices, each size over the same seeds, in this process (one world at a time, no run
//! files). What is compared is wall time per planned operation, so a cost that grows worse than
//! linearly with the history shows as a rising column.
//!
//! More operations come with a proportionally longer workload phase, so that operations arrive
//! at the standard rate and every cost that follows simulated time (polling, retries, the fault
//! schedule's windows) grows linearly too; what does not stay flat then is the cost of a bigger
//! history.

use std::collections::BTreeMap;

use drill_scenarios::plan::Plan;
use drill_scenarios::sync_basic::{self, Shape};
use serde::Serialize;

use crate::bench::seeds::PROFILE;
use crate::bench::{measured, ratio, Who};
use crate::error::CliError;

/// One size.
#[derive(Debug, Clone, Serialize)]
pub struct SizeResult {
    pub label: String,
    pub clients: usize,
    pub ops_per_client: usize,
    pub duration_ms: u64,
    pub seeds: u64,
    /// Planned operations over all seeds.
    pub ops: u64,
    pub wall_seconds: f64,
    pub us_per_op: f64,
    /// CPU time per planned operation: steadier than wall time on a busy machine.
    pub cpu_us_per_op: f64,
    pub ms_per_seed: f64,
    pub outcomes: BTreeMap<String, u64>,
}

/// Both series and their growth.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleResult {
    pub profile: String,
    pub by_ops: Vec<SizeResult>,
    pub by_clients: Vec<SizeResult>,
    /// Time per operation at the largest size over the smallest, for each series (1.0 is flat).
    pub ops_growth: f64,
    pub clients_growth: f64,
    /// The same growths in CPU time per operation.
    pub ops_growth_cpu: f64,
    pub clients_growth_cpu: f64,
}

/// Operation multipliers and device counts measured.
pub const OPS_FACTORS: [usize; 3] = [1, 4, 16];
pub const CLIENT_COUNTS: [usize; 3] = [2, 4, 8];

/// Runs every size over seeds `1..=seeds`.
pub fn measure(seeds: u64, mut progress: impl FnMut(&str)) -> Result<ScaleResult, CliError> {
    let standard = Shape::STANDARD;
    let mut by_ops = Vec::new();
    for k in OPS_FACTORS {
        let shape = Shape { ops_per_client: standard.ops_per_client * k, duration_ms: standard.duration_ms * k as u64, ..standard };
        progress(&format!("{k}x operations"));
        by_ops.push(size(format!("{k}x ops"), shape, seeds)?);
    }
    let mut by_clients = Vec::new();
    for n in CLIENT_COUNTS {
        progress(&format!("{n} devices"));
        by_clients.push(size(format!("{n} devices"), Shape { clients: n, ..standard }, seeds)?);
    }
    let growth = |v: &[SizeResult], per_op: fn(&SizeResult) -> f64| ratio(v.last().map_or(0.0, per_op), v.first().map_or(0.0, per_op));
    Ok(ScaleResult {
        profile: PROFILE.to_string(),
        ops_growth: growth(&by_ops, |s| s.us_per_op),
        clients_growth: growth(&by_clients, |s| s.us_per_op),
        ops_growth_cpu: growth(&by_ops, |s| s.cpu_us_per_op),
        clients_growth_cpu: growth(&by_clients, |s| s.cpu_us_per_op),
        by_ops,
        by_clients,
    })
}

fn size(label: String, shape: Shape, seeds: u64) -> Result<SizeResult, CliError> {
    let mut ops = 0u64;
    let mut wall = 0.0;
    let mut cpu = 0.0;
    let mut outcomes = BTreeMap::new();
    for seed in 1..=seeds {
        let plan = plan(seed, shape)?;
        ops += plan.ops.len() as u64;
        let (report, took) = measured(Who::This, || drill_scenarios::run::execute(&plan, None));
        wall += took.wall.as_secs_f64();
        cpu += took.cpu_seconds;
        let outcome = report?.outcome.to_string();
        *outcomes.entry(outcome).or_default() += 1;
    }
    Ok(SizeResult {
        label,
        clients: shape.clients,
        ops_per_client: shape.ops_per_client,
        duration_ms: shape.duration_ms,
        seeds,
        ops,
        wall_seconds: wall,
        us_per_op: ratio(wall * 1e6, ops as f64),
        cpu_us_per_op: ratio(cpu * 1e6, ops as f64),
        ms_per_seed: ratio(wall * 1000.0, seeds as f64),
        outcomes,
    })
}

/// The standard run's plan for `seed`, at another shape.
fn plan(seed: u64, shape: Shape) -> Result<Plan, CliError> {
    Ok(sync_basic::plan(seed, PROFILE, shape))
}

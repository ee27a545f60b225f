//! drill-scenarios: workloads, fault profiles and drills, behind one `run` entry point.
//!
//! A run starts from a seed (the scenario builds the plan, the profile picks the fault knobs) or
//! from a plan file, and [`run::execute`]s it.

mod api;
pub mod blobs_world;
pub mod drills;
pub mod group_world;
pub mod jobs_world;
pub mod plan;
pub mod procs;
pub mod run;
pub mod sim_fs;
pub mod store_ops;
pub mod store_world;
pub mod sync_basic;
pub mod tokens;
pub mod transport;

pub use api::*;

use drill_sim::faults::Knobs;
use drill_sim::rng::SeedTree;

use crate::plan::Plan;
use crate::transport::TransportKnobs;

/// Scenarios `drill run --scenario` accepts: the workload, then every drill of the registry.
pub fn scenarios() -> &'static [Entry] {
    static ALL: std::sync::OnceLock<Vec<Entry>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        let main = Entry { name: sync_basic::NAME, description: "devices of two tenants record events offline and sync them through the server" };
        std::iter::once(main).chain(drills::registry().into_iter().map(|d| Entry { name: d.id, description: d.title })).collect()
    })
}

/// Fault profiles `--profile` accepts.
pub fn profiles() -> &'static [Entry] {
    &[
        Entry { name: "none", description: "no faults: the stack's happy path" },
        Entry { name: "lite", description: "a couple of crashes, one partition, 1% message loss, one disk error, one clock jump" },
        Entry { name: "swarm", description: "the seed turns each fault kind on or off and draws its rates" },
    ]
}

/// The fault knobs of a profile for a seed.
pub fn knobs(profile: &str, seed: u64) -> Result<Knobs, RunError> {
    match profile {
        "none" => Ok(Knobs::none()),
        "lite" => Ok(Knobs::lite()),
        "swarm" => Ok(Knobs::swarm(&mut SeedTree::new(seed).stream("knobs"))),
        other => Err(RunError::UnknownProfile(other.to_string())),
    }
}

/// The transport fault knobs of a profile for a seed.
pub fn transport_knobs(profile: &str, seed: u64) -> Result<TransportKnobs, RunError> {
    match profile {
        "none" => Ok(TransportKnobs::none()),
        "lite" => Ok(TransportKnobs::lite()),
        "swarm" => Ok(TransportKnobs::swarm(&mut SeedTree::new(seed).stream("transport-knobs"))),
        other => Err(RunError::UnknownProfile(other.to_string())),
    }
}

/// The plan a seed builds for a scenario and profile.
pub fn plan_for(seed: u64, scenario: &str, profile: &str) -> Result<Plan, RunError> {
    let knobs = knobs(profile, seed)?;
    let transport = transport_knobs(profile, seed)?;
    match scenario {
        sync_basic::NAME => Ok(sync_basic::plan(seed, profile, knobs, transport, sync_basic::Shape::STANDARD)),
        other if drills::find(other).is_some() => drills::plan(seed, other, profile),
        other => Err(RunError::UnknownScenario(other.to_string())),
    }
}

/// Builds (from a seed) or parses and checks (from a plan file) the plan a request would run,
/// without running it: callers can print its hash and refuse bad input before touching files.
pub fn prepare(source: &RunSource) -> Result<Plan, RunError> {
    let plan = match source {
        RunSource::Seed { seed, scenario, profile } => {
            if !scenarios().iter().any(|e| e.name == scenario) {
                return Err(RunError::UnknownScenario(scenario.clone()));
            }
            plan_for(*seed, scenario, profile)?
        }
        RunSource::Plan(text) => Plan::parse(text).map_err(RunError::MalformedPlan)?,
    };
    if !scenarios().iter().any(|e| e.name == plan.scenario) {
        return Err(RunError::MalformedPlan(format!("unknown scenario '{}'", plan.scenario)));
    }
    Ok(plan)
}

/// Runs one world. `RunReport::trace` always holds every line, with or without `out_dir`.
pub fn run(req: &RunRequest) -> Result<RunReport, RunError> {
    let plan = prepare(&req.source)?;
    if plan.scenario != sync_basic::NAME && plan.drill.is_some() {
        return drills::execute(&plan, req.out_dir.as_deref());
    }
    let mut report = run::execute(&plan, req.out_dir.as_deref())?;
    drills::swarm::judge(&plan, &mut report);
    Ok(report)
}

//! drill-scenarios: workloads, fault profiles and drills, behind one `run` entry point.
//!
//! A run starts from a seed (the scenario builds the plan, the profile picks the fault knobs) or
//! from a plan file, and [`run::execute`]s it.

mod api;
pub mod backup_world;
pub mod blobs_world;
pub mod drills;
pub mod facts;
pub mod group_world;
pub mod jobs_world;
pub mod node;
pub mod plan;
pub mod procs;
pub mod run;
pub mod seam;
pub mod sim_fs;
pub mod store_ops;
pub mod store_world;
pub mod subsystems;
pub mod sync_basic;
pub mod tokens;
pub mod transport;

pub use api::*;
pub use plan::Profile;

use crate::plan::Plan;

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
    static ALL: std::sync::OnceLock<Vec<Entry>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| Profile::ALL.into_iter().map(|p| Entry { name: p.as_str(), description: p.description() }).collect())
}

/// The profile named `name`; an unknown one is bad input.
pub fn profile(name: &str) -> Result<Profile, RunError> {
    Profile::parse(name).ok_or_else(|| RunError::UnknownProfile(name.to_string()))
}

/// The plan a seed builds for a scenario and profile.
pub fn plan_for(seed: u64, scenario: &str, profile: Profile) -> Result<Plan, RunError> {
    match scenario {
        sync_basic::NAME => Ok(sync_basic::plan(seed, profile, sync_basic::Shape::STANDARD)),
        other if drills::find(other).is_some() => drills::plan(seed, other, profile),
        other => Err(RunError::UnknownScenario(other.to_string())),
    }
}

/// Checks a plan as a run needs it: the plan's own checks, then the drill registry's (the drill
/// it names exists and has the steps it skips or does wrong).
pub fn check(plan: &Plan) -> Result<(), String> {
    plan.validate()?;
    drills::validate(plan)
}

/// Builds (from a seed) or parses and checks (from a plan file) the plan a request would run,
/// without running it: callers can print its hash and refuse bad input before touching files.
pub fn prepare(source: &RunSource) -> Result<Plan, RunError> {
    let plan = match source {
        RunSource::Seed { seed, scenario, profile } => {
            if !scenarios().iter().any(|e| e.name == scenario) {
                return Err(RunError::UnknownScenario(scenario.clone()));
            }
            plan_for(*seed, scenario, *profile)?
        }
        RunSource::Plan(text) => Plan::parse(text).map_err(RunError::MalformedPlan)?,
    };
    drills::validate(&plan).map_err(RunError::MalformedPlan)?;
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
    run::execute(&plan, req.out_dir.as_deref())
}

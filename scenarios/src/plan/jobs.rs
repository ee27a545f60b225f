//! The jobs part of a plan (runbook 001): the jobs node's operations (jobs through backends
//! that crash, hang or exit, exports and imports the power is cut in) and the knobs a swarm plan
//! draws them with; plain data, its swarm draw and its checks.

use drill_sim::rng::SeedTree;
use drill_stack::jobs::import::ConflictPolicy;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::Plan;

/// The backends, in fallback order.
pub const BACKENDS: [&str; 3] = ["whisper-gpu", "whisper-cpu", "tiny"];
/// Limits a plan must respect.
pub const JOB_OPS_MAX: usize = 1_000;
pub const WORK_MS_MAX: u64 = 10_000;
pub const CUT_AFTER_OPS_MAX: u32 = 10_000;
/// Largest disk-operation index a swarm plan cuts the power at during an export, and during an
/// import (an export takes about 25 operations; an import, less when it refuses early).
const EXPORT_CUT_SWARM_MAX: u32 = 30;
const IMPORT_CUT_SWARM_MAX: u32 = 15;

/// What a backend does with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendOutcome {
    Ok,
    /// Dies of a signal.
    Crash,
    /// Never answers: the job's timeout kills it.
    Hang,
    /// Exits with a non-zero code.
    Exit,
}

/// One backend of a job: what it does, after how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendPlan {
    pub outcome: BackendOutcome,
    pub work_ms: u64,
}

/// Where an import reads its snapshot from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The node's own last export.
    Export,
    /// A snapshot a peer handed over.
    Inbox,
}

/// An operation of the jobs process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum JobOp {
    /// Run job `run-<run>` through the backends in order, each doing what the plan says; with
    /// `persist_fault` the persist's sync fails once.
    Job {
        run: u32,
        backends: Vec<BackendPlan>,
        #[serde(default)]
        persist_fault: bool,
    },
    /// Export to `export/`; with `crash_after_ops` the power is cut at that disk operation of it.
    Export {
        #[serde(default)]
        crash_after_ops: Option<u32>,
    },
    /// A peer hands over a snapshot of what it holds (to `inbox/`): the local rows, one more
    /// run, and with `divergent` one row changed.
    PeerSnapshot { divergent: bool },
    /// Import a snapshot with a policy; with `crash_after_ops` the power is cut during it.
    Import {
        source: Source,
        policy: ConflictPolicy,
        #[serde(default)]
        crash_after_ops: Option<u32>,
    },
}

/// A jobs operation at a simulated time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOpAt {
    pub at_ms: u64,
    #[serde(flatten)]
    pub op: JobOp,
}

/// How much jobs traffic and how many jobs faults a swarm plan draws. Probabilities are per
/// backend run (crash, hang, exit), per job (persist fault) and per export or import (a cut).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobsKnobs {
    pub jobs_max: u32,
    pub exports_max: u32,
    pub imports_max: u32,
    pub backend_crash_probability: f64,
    pub backend_hang_probability: f64,
    pub backend_exit_probability: f64,
    pub persist_fault_probability: f64,
    pub crash_mid_export_probability: f64,
    pub crash_mid_import_probability: f64,
}

impl JobsKnobs {
    pub fn swarm(rng: &mut drill_sim::rng::Stream) -> Self {
        JobsKnobs {
            jobs_max: rng.gen_range(2..=10),
            exports_max: rng.gen_range(1..=4),
            imports_max: rng.gen_range(1..=4),
            backend_crash_probability: rng.gen_range(0.0..=0.4),
            backend_hang_probability: rng.gen_range(0.0..=0.2),
            backend_exit_probability: rng.gen_range(0.0..=0.3),
            persist_fault_probability: rng.gen_range(0.0..=0.25),
            crash_mid_export_probability: rng.gen_range(0.0..=0.7),
            crash_mid_import_probability: rng.gen_range(0.0..=0.7),
        }
    }

    fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("backend_crash_probability", self.backend_crash_probability),
            ("backend_hang_probability", self.backend_hang_probability),
            ("backend_exit_probability", self.backend_exit_probability),
            ("persist_fault_probability", self.persist_fault_probability),
            ("crash_mid_export_probability", self.crash_mid_export_probability),
            ("crash_mid_import_probability", self.crash_mid_import_probability),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("jobs.knobs.{name} must be within 0..=1, not {p}"));
            }
        }
        Ok(())
    }
}

/// The jobs part of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobsPlan {
    pub knobs: JobsKnobs,
    pub ops: Vec<JobOpAt>,
}

/// Adds a jobs node and its operations to `plan` (most swarm seeds), each draw from its own seed
/// stream so the rest of the plan stays as the seed made it.
pub fn swarm(plan: &mut Plan, seeds: &SeedTree, duration_ms: u64) {
    let mut rng = seeds.stream("jobs-knobs");
    if !rng.gen_bool(0.8) {
        return;
    }
    let k = JobsKnobs::swarm(&mut rng);
    let mut rng = seeds.stream("jobs-ops");
    let at = |rng: &mut drill_sim::rng::Stream| rng.gen_range(0..duration_ms.max(1));
    let mut ops = Vec::new();
    for run in 1..=rng.gen_range(1..=k.jobs_max) {
        let backends = BACKENDS
            .iter()
            .map(|_| {
                let x: f64 = rng.gen();
                let outcome = if x < k.backend_crash_probability {
                    BackendOutcome::Crash
                } else if x < k.backend_crash_probability + k.backend_hang_probability {
                    BackendOutcome::Hang
                } else if x < k.backend_crash_probability + k.backend_hang_probability + k.backend_exit_probability {
                    BackendOutcome::Exit
                } else {
                    BackendOutcome::Ok
                };
                BackendPlan { outcome, work_ms: rng.gen_range(5..=150) }
            })
            .collect();
        ops.push(JobOpAt { at_ms: at(&mut rng), op: JobOp::Job { run, backends, persist_fault: rng.gen_bool(k.persist_fault_probability) } });
    }
    let cut = |rng: &mut drill_sim::rng::Stream, p: f64, max: u32| if rng.gen_bool(p) { Some(rng.gen_range(1..=max)) } else { None };
    for _ in 0..rng.gen_range(1..=k.exports_max) {
        ops.push(JobOpAt { at_ms: at(&mut rng), op: JobOp::Export { crash_after_ops: cut(&mut rng, k.crash_mid_export_probability, EXPORT_CUT_SWARM_MAX) } });
    }
    for _ in 0..rng.gen_range(1..=k.imports_max) {
        let source = if rng.gen_bool(0.4) { Source::Export } else { Source::Inbox };
        let policy = if rng.gen_bool(0.65) { ConflictPolicy::Reject } else { ConflictPolicy::Overwrite };
        let at_ms = at(&mut rng);
        if source == Source::Inbox {
            // A peer hands its snapshot over some time before it is imported.
            ops.push(JobOpAt { at_ms: rng.gen_range(0..=at_ms), op: JobOp::PeerSnapshot { divergent: rng.gen_bool(0.6) } });
        }
        ops.push(JobOpAt { at_ms, op: JobOp::Import { source, policy, crash_after_ops: cut(&mut rng, k.crash_mid_import_probability, IMPORT_CUT_SWARM_MAX) } });
    }
    ops.sort_by_key(|o| o.at_ms);
    plan.jobs = Some(JobsPlan { knobs: k, ops });
}

/// Checks the jobs part of a plan.
pub fn validate(plan: &Plan) -> Result<(), String> {
    let Some(j) = &plan.jobs else { return Ok(()) };
    j.knobs.validate()?;
    if j.ops.len() > JOB_OPS_MAX {
        return Err(format!("{} jobs operations exceed the limit of {JOB_OPS_MAX}", j.ops.len()));
    }
    for o in &j.ops {
        if o.at_ms > plan.heal_at_ms {
            return Err(format!("jobs operation at {} ms is after heal_at_ms {}", o.at_ms, plan.heal_at_ms));
        }
        match &o.op {
            JobOp::Job { backends, .. } if backends.is_empty() || backends.len() > BACKENDS.len() || backends.iter().any(|b| b.work_ms > WORK_MS_MAX) => {
                return Err(format!("job at {} ms needs 1 to {} backends working at most {WORK_MS_MAX} ms", o.at_ms, BACKENDS.len()));
            }
            JobOp::Export { crash_after_ops: Some(k) } | JobOp::Import { crash_after_ops: Some(k), .. } if *k == 0 || *k > CUT_AFTER_OPS_MAX => {
                return Err(format!("jobs operation at {} ms cuts the power at disk operation {k}, outside 1..={CUT_AFTER_OPS_MAX}", o.at_ms));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Profile;

    #[test]
    fn most_swarm_plans_have_jobs_with_every_fault_kind_somewhere() {
        let mut with_jobs = 0;
        let mut kinds = std::collections::BTreeSet::new();
        for seed in 0..100 {
            let p = crate::plan_for(seed, "sync-basic", Profile::Swarm).unwrap();
            p.validate().unwrap();
            let Some(j) = &p.jobs else { continue };
            with_jobs += 1;
            for o in &j.ops {
                match &o.op {
                    JobOp::Job { backends, persist_fault, .. } => {
                        kinds.extend(backends.iter().map(|b| format!("{:?}", b.outcome)));
                        if *persist_fault {
                            kinds.insert("persist".into());
                        }
                    }
                    JobOp::Export { crash_after_ops: Some(_) } => {
                        kinds.insert("export-cut".into());
                    }
                    JobOp::Import { crash_after_ops: Some(_), .. } => {
                        kinds.insert("import-cut".into());
                    }
                    _ => {}
                }
            }
        }
        assert!((60..=95).contains(&with_jobs), "{with_jobs} of 100 swarm plans have jobs");
        for k in ["Crash", "Hang", "Exit", "Ok", "persist", "export-cut", "import-cut"] {
            assert!(kinds.contains(k), "no swarm plan has {k}: {kinds:?}");
        }
        assert!(crate::plan_for(1, "sync-basic", Profile::Lite).unwrap().jobs.is_none());
    }

    #[test]
    fn a_plan_with_bad_jobs_operations_is_refused() {
        let mut p = (0..50).map(|s| crate::plan_for(s, "sync-basic", Profile::Swarm).unwrap()).find(|p| p.jobs.is_some()).unwrap();
        let heal = p.heal_at_ms;
        let j = p.jobs.as_mut().unwrap();
        j.ops.push(JobOpAt { at_ms: heal + 1, op: JobOp::Export { crash_after_ops: None } });
        assert!(p.validate().unwrap_err().contains("after heal_at_ms"));
        let j = p.jobs.as_mut().unwrap();
        j.ops.pop();
        j.ops.push(JobOpAt { at_ms: 0, op: JobOp::Import { source: Source::Inbox, policy: ConflictPolicy::Reject, crash_after_ops: Some(0) } });
        assert!(p.validate().unwrap_err().contains("cuts the power"));
    }
}

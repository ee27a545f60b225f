//! The store-work part of a plan (runbooks 000, 002, 004): the devices' sagas, index
//! artifacts, projections and schema migration, the faults that exercise them (power cuts
//! inside a saga or a migration, a corrupt artifact, a buggy projection write, the effects
//! node's crash and partition) and planted bugs; plain data, its swarm draw and its checks.

use drill_sim::rng::SeedTree;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::Plan;

/// The largest disk-operation index inside a migration a swarm plan cuts the power at.
pub const MIGRATION_CUT_OPS_MAX: u32 = 60;
/// The thresholds of the swarm's achievement sagas.
pub const SWARM_THRESHOLDS: [u64; 4] = [2, 6, 12, 24];

/// Where the saga's failpoint cuts the power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaPoint {
    /// After `delivering` is committed, before the effect is sent.
    BeforeEffect,
    /// After the receiver applied the effect, before `done` is committed.
    BeforeDone,
}

/// A device's next saga delivery after `at_ms` is cut at `point`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaCrash {
    pub node: String,
    pub at_ms: u64,
    pub point: SagaPoint,
}

/// Bits of a device's index artifact flipped on its disk at `at_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactCorrupt {
    pub node: String,
    pub at_ms: u64,
}

/// A buggy write changes row `nth` (modulo the rows there are) of a device's projection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionCorrupt {
    pub node: String,
    pub at_ms: u64,
    /// `aggregate_state` or `tenant_counters`.
    pub projection: String,
    pub nth: u32,
}

/// A device installs the version 2 schema at `at_ms` and migrates; with `cut_after_ops` the
/// power is cut at that disk operation from the start of the migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upgrade {
    pub node: String,
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut_after_ops: Option<u32>,
}

/// The effects node loses its power at `at_ms` and boots again after `down_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectsCrash {
    pub at_ms: u64,
    pub down_ms: u64,
}

/// The effects node is cut off from every device (both ways) from `at_ms` for `ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectsPartition {
    pub at_ms: u64,
    pub ms: u64,
}

/// A planted bug: a recovery every device skips, or a leak, for tests that show a check fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bug {
    /// A saga step already tried is never delivered again.
    SkipSagaRedelivery,
    /// A corrupt artifact is detected but left in place.
    SkipArtifactRebuild,
    /// An inconsistent projection is marked unhealthy but not rebuilt.
    SkipProjectionRepair,
    /// An interrupted migration is not run again at the next start.
    SkipMigrationResume,
    /// The diagnostics export appends a payload plaintext to the bundle.
    LeakInBundle,
}

/// The store's work on the devices and its faults; without it devices only sync and fold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpsPlan {
    /// One achievement saga per threshold.
    pub saga_thresholds: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub saga_crash: Vec<SagaCrash>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifact_corrupt: Vec<ArtifactCorrupt>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub projection_corrupt: Vec<ProjectionCorrupt>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upgrade: Vec<Upgrade>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub effects_crash: Vec<EffectsCrash>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub effects_partition: Vec<EffectsPartition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bugs: Vec<Bug>,
}

impl OpsPlan {
    /// The work without faults: sagas at `thresholds`, artifacts, verification, bundles.
    pub fn work(thresholds: &[u64]) -> OpsPlan {
        OpsPlan { saga_thresholds: thresholds.to_vec(), ..OpsPlan::default() }
    }
}

/// The swarm's store work and faults for `plan`, from their own seed stream.
pub fn swarm(plan: &Plan, seeds: &SeedTree, duration_ms: u64) -> OpsPlan {
    let mut rng = seeds.stream("store-ops");
    let clients: Vec<String> = plan.clients.iter().map(|c| c.name.clone()).collect();
    let mut ops = OpsPlan::work(&SWARM_THRESHOLDS);
    let span = duration_ms.max(1);
    let pick = |rng: &mut drill_sim::rng::Stream| clients[rng.gen_range(0..clients.len())].clone();
    if rng.gen_bool(0.6) {
        for _ in 0..rng.gen_range(1..=2) {
            let point = if rng.gen_bool(0.5) { SagaPoint::BeforeEffect } else { SagaPoint::BeforeDone };
            ops.saga_crash.push(SagaCrash { node: pick(&mut rng), at_ms: rng.gen_range(0..span), point });
        }
    }
    if rng.gen_bool(0.5) {
        for _ in 0..rng.gen_range(1..=2) {
            ops.artifact_corrupt.push(ArtifactCorrupt { node: pick(&mut rng), at_ms: rng.gen_range(span / 8..span) });
        }
    }
    if rng.gen_bool(0.5) {
        for _ in 0..rng.gen_range(1..=2) {
            let projection = ["aggregate_state", "tenant_counters"][rng.gen_range(0..2)].to_string();
            ops.projection_corrupt.push(ProjectionCorrupt { node: pick(&mut rng), at_ms: rng.gen_range(span / 8..span), projection, nth: rng.gen_range(0..8) });
        }
    }
    if rng.gen_bool(0.7) {
        let cut_after_ops = rng.gen_bool(0.7).then(|| rng.gen_range(1..=MIGRATION_CUT_OPS_MAX));
        ops.upgrade.push(Upgrade { node: pick(&mut rng), at_ms: rng.gen_range(span / 4..span * 3 / 4), cut_after_ops });
    }
    // The effects node's faults draw from their own stream: adding them left every earlier
    // draw (and so every earlier swarm plan's store work) as it was.
    let mut rng = seeds.stream("store-ops-effects");
    if rng.gen_bool(0.4) {
        ops.effects_crash.push(EffectsCrash { at_ms: rng.gen_range(0..span), down_ms: rng.gen_range(50..=2_000) });
    }
    if rng.gen_bool(0.4) {
        ops.effects_partition.push(EffectsPartition { at_ms: rng.gen_range(0..span), ms: rng.gen_range(100..=3_000) });
    }
    ops
}

/// Checks the store work of a plan.
pub fn validate(plan: &Plan, ops: &OpsPlan) -> Result<(), String> {
    let device = |n: &str| -> Result<(), String> {
        if plan.clients.iter().any(|c| c.name == n) {
            Ok(())
        } else {
            Err(format!("store work on unknown device '{n}'"))
        }
    };
    if ops.saga_thresholds.contains(&0) {
        return Err("a saga threshold must be at least 1".into());
    }
    for c in &ops.saga_crash {
        device(&c.node)?;
    }
    for c in &ops.artifact_corrupt {
        device(&c.node)?;
    }
    for c in &ops.projection_corrupt {
        device(&c.node)?;
        if c.projection != "aggregate_state" && c.projection != "tenant_counters" {
            return Err(format!("projection_corrupt names unknown projection '{}'", c.projection));
        }
    }
    for u in &ops.upgrade {
        device(&u.node)?;
    }
    Ok(())
}

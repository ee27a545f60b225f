//! The blob part of a plan (runbook 003 §2, §3): blob traffic, and the object store's faults
//! with their windows; plain data, its swarm draw and its checks.

use drill_sim::rng::SeedTree;
use drill_stack::blobs::s3::S3ErrorCode;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{Action, Plan, PlannedOp};

/// Largest blob a plan may stage.
pub const BLOB_BYTES_MAX: u32 = 64 * 1024;
/// Longest error window a plan may ask for.
pub const WINDOW_MS_MAX: u64 = 60_000;

/// Blob store faults a plan can schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobFaultKind {
    NoSuchKey,
    AccessDenied,
    ServiceUnavailable,
    SlowDown,
    InternalError,
    /// An object deleted behind the registry's back: orphaned metadata.
    OutOfBandDelete,
    /// A client's persisted reconcile state rewritten malformed behind the server's back (a
    /// non-object or non-positive write-id map, a non-integer cursor): its attaches fail with a
    /// deterministic 500 until a push records a well-formed state over it.
    MalformedReconcileState,
}

impl BlobFaultKind {
    pub const ALL: [BlobFaultKind; 7] = [
        BlobFaultKind::NoSuchKey,
        BlobFaultKind::AccessDenied,
        BlobFaultKind::ServiceUnavailable,
        BlobFaultKind::SlowDown,
        BlobFaultKind::InternalError,
        BlobFaultKind::OutOfBandDelete,
        BlobFaultKind::MalformedReconcileState,
    ];

    /// The error code the store answers with during the window.
    pub fn s3_code(self) -> Option<S3ErrorCode> {
        match self {
            BlobFaultKind::NoSuchKey => Some(S3ErrorCode::NoSuchKey),
            BlobFaultKind::AccessDenied => Some(S3ErrorCode::AccessDenied),
            BlobFaultKind::ServiceUnavailable => Some(S3ErrorCode::ServiceUnavailable),
            BlobFaultKind::SlowDown => Some(S3ErrorCode::SlowDown),
            BlobFaultKind::InternalError => Some(S3ErrorCode::InternalError),
            BlobFaultKind::OutOfBandDelete | BlobFaultKind::MalformedReconcileState => None,
        }
    }

    /// The name the fault is counted under: `blob.<kind>`.
    pub fn counted_as(self) -> String {
        format!("blob.{}", serde_json::to_value(self).expect("kinds serialize").as_str().expect("a string"))
    }
}

/// One blob fault in the plan: an error window on the store, or an out-of-band deletion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobFaultAt {
    pub at_ms: u64,
    pub kind: BlobFaultKind,
    /// How long the store answers with the error (0 for a deletion or a malformed state).
    pub ms: u64,
    /// Which stored object a deletion removes (the `nth` by key, modulo how many there are), or
    /// which device's reconcile state is made malformed, and how.
    pub nth: u32,
}

/// How much blob traffic and how many blob faults a plan draws.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobKnobs {
    /// Blob operations per device, at most.
    pub ops_per_client_max: u32,
    /// Blob faults over the run, at most.
    pub faults_max: u32,
    pub window_ms_max: u64,
}

impl BlobKnobs {
    pub fn swarm(rng: &mut drill_sim::rng::Stream) -> Self {
        BlobKnobs {
            ops_per_client_max: rng.gen_range(4..=14),
            faults_max: if rng.gen_bool(0.75) { rng.gen_range(1..=5) } else { 0 },
            window_ms_max: rng.gen_range(200..=2_500),
        }
    }
}

/// The blob part of a plan: its knobs and its faults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobPlan {
    pub knobs: BlobKnobs,
    pub faults: Vec<BlobFaultAt>,
}

/// Adds blob traffic and blob faults to `plan` (the swarm profile), each from its own seed
/// stream so the rest of the plan stays as the seed made it.
pub fn swarm(plan: &mut Plan, seeds: &SeedTree, duration_ms: u64) {
    let knobs = BlobKnobs::swarm(&mut seeds.stream("blob-knobs"));
    let mut rng = seeds.stream("blob-ops");
    let clients: Vec<String> = plan.clients.iter().map(|c| c.name.clone()).collect();
    for c in &clients {
        for _ in 0..rng.gen_range(0..=knobs.ops_per_client_max) {
            let at_ms = rng.gen_range(0..duration_ms.max(1));
            let action = match rng.gen_range(0..10) {
                0..=4 => Action::StageBlob { bytes: rng.gen_range(64..=4_096) },
                5..=7 => Action::AttachBlob,
                _ => Action::ReadBlob { all: false },
            };
            plan.ops.push(PlannedOp { at_ms, client: c.clone(), action });
        }
    }
    plan.ops.sort_by_key(|o| o.at_ms);
    let mut rng = seeds.stream("blob-faults");
    let mut faults: Vec<BlobFaultAt> = (0..rng.gen_range(0..=knobs.faults_max))
        .map(|_| {
            let kind = BlobFaultKind::ALL[rng.gen_range(0..BlobFaultKind::ALL.len())];
            let ms = if kind.s3_code().is_none() { 0 } else { rng.gen_range(1..=knobs.window_ms_max.max(1)) };
            BlobFaultAt { at_ms: rng.gen_range(0..duration_ms.max(1)), kind, ms, nth: rng.gen_range(0..64) }
        })
        .collect();
    faults.sort_by_key(|f| f.at_ms);
    plan.blobs = Some(BlobPlan { knobs, faults });
}

/// Checks the blob part of a plan.
pub fn validate(plan: &Plan) -> Result<(), String> {
    for op in &plan.ops {
        match op.action {
            Action::StageBlob { bytes } if bytes > BLOB_BYTES_MAX => return Err(format!("blob of {bytes} bytes exceeds {BLOB_BYTES_MAX}")),
            Action::StageBlob { .. } | Action::AttachBlob | Action::ReadBlob { .. } if plan.blobs.is_none() => {
                return Err(format!("blob operation at {} ms in a plan without a blob store", op.at_ms))
            }
            _ => {}
        }
    }
    for f in plan.blobs.iter().flat_map(|b| &b.faults) {
        if f.at_ms > plan.heal_at_ms || f.ms > WINDOW_MS_MAX {
            return Err(format!("blob fault at {} ms must start by heal_at_ms {} and last at most {WINDOW_MS_MAX} ms", f.at_ms, plan.heal_at_ms));
        }
    }
    Ok(())
}

//! Runbook 003 (VFS sync), §2 "Staged-Blob Visibility Failures" and §3 "Blob Persistence
//! Failures", against the server's blob layer and an S3-like object store node.
//!
//! - `003-2-visibility-409-retry`: a device attaches a blob before the server reconciled the
//!   write that references it; the attach is refused with 409 (reconcile state behind). The
//!   triage validates the staged row, the checkpoint tuple, the persisted reconcile state and its
//!   shape; the recovery advances reconcile (the device syncs) and retries the identical payload.
//! - `003-2-deterministic-500`: the persisted reconcile state is rewritten malformed; every attach
//!   fails with the same 500. The recovery is a push that records a well-formed state, then the
//!   identical attach.
//! - `003-3-transient-retry-backoff`: the store answers with a transient error for longer than
//!   the server's retries; the stage fails with 500 after the retry bound. The recovery retries
//!   the same payload (the same object key) once the outage ends.
//! - `003-3-no-such-key-orphan-cleanup`: an object deleted out of band; reads of its blob fail with
//!   500 `NoSuchKey`. The recovery scans for orphaned metadata and cleans it up.
//! - `003-3-access-denied-surfaced`: the store denies access; the stage fails at once with
//!   `AccessDenied`, not retried. The recovery fixes the permissions and the configuration, then
//!   stages again.
//! - `003-3-404-vs-500`: a blob the registry never had answers 404; a registered blob whose object
//!   read fails answers 500. The recovery waits out the store's failure and reads again.
//!
//! Checked: each section's own validation, and no committed event of the device's tenant lost
//! (INV-RECOVERY).

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use drill_stack::blobs::object::object_key;
use drill_stack::blobs::{AttachCheckpoint, BlobRequest, BlobResponse};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::harness::Ctx;
use super::Drill;
use crate::blobs_world::{checkpoint_of, config, BlobStep};
use crate::node::{payload_for, BLOBS_AGGREGATE};
use crate::plan::blobs::BlobFaultKind;

const fn blob(id: &'static str, section: &'static str, title: &'static str, steps: &'static [&'static str], param: u8, body: super::Body) -> Drill {
    Drill { id, section, title, steps, devices: 2, server_retention: None, param, bugs: super::no_bugs, body }
}

const VISIBILITY: &[&str] =
    &["validate-staged-row", "validate-checkpoint-tuple", "validate-persisted-state", "validate-payload-shape", "advance-reconcile", "retry-identical-attach"];

pub const DRILLS: &[Drill] = &[
    blob(
        "003-2-visibility-409-retry",
        "003 §2",
        "attach before reconcile: 409 behind required visibility; validate, advance reconcile, retry the identical payload",
        VISIBILITY,
        0,
        visibility_body,
    ),
    blob(
        "003-2-deterministic-500",
        "003 §2",
        "malformed persisted reconcile state: a deterministic 500; validate, a push records a good state, retry the identical payload",
        VISIBILITY,
        1,
        visibility_body,
    ),
    blob(
        "003-3-transient-retry-backoff",
        "003 §3",
        "a transient store outage past the retry bound: 500 after backoff; retry the same payload, same key",
        &["confirm-transient", "wait-out-outage", "retry-same-payload", "verify-read"],
        0,
        transient_body,
    ),
    blob(
        "003-3-no-such-key-orphan-cleanup",
        "003 §3",
        "an object deleted out of band: 500 NoSuchKey; find the orphaned metadata, clean it up",
        &["find-orphans", "cleanup-orphans", "verify-registry"],
        0,
        orphan_body,
    ),
    blob(
        "003-3-access-denied-surfaced",
        "003 §3",
        "the store denies access: 500 AccessDenied at once, not retried; fix permissions, check configuration, stage again",
        &["verify-permissions", "check-configuration", "retry-stage"],
        0,
        denied_body,
    ),
    blob(
        "003-3-404-vs-500",
        "003 §3",
        "404 for a blob the registry lacks, 500 for a registered blob whose object read fails; read again after the outage",
        &["distinguish-404-vs-500", "retry-after-outage"],
        0,
        not_found_body,
    ),
];

fn visibility_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(visibility(cx))
}
fn transient_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(transient(cx))
}
fn orphan_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(orphans(cx))
}
fn denied_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(denied(cx))
}
fn not_found_body(cx: &mut Ctx) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    Box::pin(not_found(cx))
}

/// A blob device 0 staged: its id, bytes and the checkpoint it took.
struct Staged {
    id: String,
    bytes: Vec<u8>,
    checkpoint: AttachCheckpoint,
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Device 0 writes a local reference to a new blob, takes its checkpoint from its exported state
/// and stages the bytes.
async fn stage(cx: &mut Ctx, n: u64) -> (Staged, BlobResponse) {
    let name = cx.devs[0].name.clone();
    let id = format!("{name}-blob-{n}");
    let bytes = payload_for(&format!("{name}/blob"), n, 256 + 64 * n as u32);
    let reference = format!("blob-ref:{id}").into_bytes();
    cx.devs[0].client().append(BLOBS_AGGREGATE, "blob.staged", &reference).expect("the reference is written");
    let state = cx.devs[0].client().export_state().expect("state");
    let (cursor, ids) = checkpoint_of(&state);
    let checkpoint = AttachCheckpoint { client_id: state.replica.clone(), required_cursor: cursor, required_last_reconciled_write_ids: json!(ids) };
    let tenant = cx.devs[0].tenant.clone();
    let r = cx.blob(0, BlobRequest::Stage { tenant, client_id: state.replica, blob_id: id.clone(), bytes: bytes.clone() }).await.expect("a stage answer");
    (Staged { id, bytes, checkpoint }, r)
}

async fn attach(cx: &mut Ctx, b: &Staged) -> BlobResponse {
    let tenant = cx.devs[0].tenant.clone();
    let req = BlobRequest::Attach { tenant, blob_id: b.id.clone(), item_id: format!("item-{}", b.id), checkpoint: b.checkpoint.clone() };
    cx.blob(0, req).await.expect("an attach answer")
}

async fn read(cx: &mut Ctx, id: &str) -> BlobResponse {
    let tenant = cx.devs[0].tenant.clone();
    cx.blob(0, BlobRequest::Read { tenant, blob_id: id.to_string() }).await.expect("a read answer")
}

async fn setup(cx: &mut Ctx) -> Vec<drill_model::EventFact> {
    cx.start_blobstore().await;
    cx.warm_up().await;
    let tenant = cx.devs[0].tenant.clone();
    cx.server_tenant(&tenant).await
}

async fn finish(cx: &mut Ctx, committed: &[drill_model::EventFact]) {
    let _ = cx.sync(0).await;
    let tenant = cx.devs[0].tenant.clone();
    let server = cx.server_tenant(&tenant).await;
    cx.recovery("server", committed, &server, &BTreeSet::new());
}

async fn visibility(cx: &mut Ctx) {
    let malformed = cx.drill.param == 1;
    let committed = setup(cx).await;
    let (b, staged) = stage(cx, 1).await;
    if malformed {
        // The device reconciles its reference, so its persisted state dominates the checkpoint;
        // then that state is rewritten malformed behind the stack's back.
        cx.sync(0).await.expect("sync");
        let nth = rand::Rng::gen_range(&mut cx.rng, 0..3u32) * cx.devs.len() as u32;
        cx.blob_fault(BlobStep::Corrupt { nth }).await;
        cx.inject("malformed_reconcile_state", json!({"client": cx.devs[0].name}));
    } else {
        cx.inject("attach_before_reconcile", json!({"blob": b.id}));
    }
    let first = attach(cx, &b).await;
    let again = attach(cx, &b).await;
    let want = if malformed { (500, "Failed to attach staged blob") } else { (409, "Client reconcile state is behind required visibility") };
    let seen = first.status == want.0 && first.error.as_deref() == Some(want.1) && again.status == first.status && again.code == first.code;
    cx.symptom(seen, want.1, json!({"status": first.status, "code": first.code, "retry_status": again.status}));
    if cx.step("validate-staged-row") {
        let staged_ok = staged.status == 200 && staged.body.status.as_deref() == Some("blob-stage:staged") && staged.body.expires_at_ms > staged.body.now_ms;
        cx.check(
            staged_ok,
            "the staged row is blob-stage:staged and not expired",
            json!({"status": staged.body.status, "expires_at_ms": staged.body.expires_at_ms}),
        );
    }
    if cx.step("validate-checkpoint-tuple") {
        let c = &b.checkpoint;
        let coherent = c.client_id == cx.devs[0].name && c.required_last_reconciled_write_ids.as_object().is_some_and(|m| m.contains_key(&c.client_id));
        cx.check(coherent, "the attach payload carries clientId, requiredCursor and requiredLastReconciledWriteIds", json!({"checkpoint": c}));
    }
    if cx.step("validate-persisted-state") {
        // 409: the observed state does not dominate; a malformed state cannot be judged at all.
        let behind = match &first.body.observed {
            Some(v) => {
                !v.dominates(b.checkpoint.required_cursor, &serde_json::from_value(b.checkpoint.required_last_reconciled_write_ids.clone()).unwrap_or_default())
            }
            None => malformed,
        };
        cx.check(behind, "the persisted reconcile state does not dominate the checkpoint", json!({"observed": first.body.observed}));
    }
    if cx.step("validate-payload-shape") {
        let shape_ok = first.status != 500 || malformed;
        cx.check(shape_ok, "a 500 appears only for a malformed persisted state", json!({"status": first.status}));
    }
    if cx.step("advance-reconcile") {
        // A push records the device's reconcile state anew: a write, then a sync.
        cx.append(0, 1);
        let r = cx.sync(0).await;
        cx.check(r.is_ok(), "the device reconciles", json!({"error": r.err().map(|e| e.to_string())}));
    }
    if cx.step("retry-identical-attach") {
        let r = attach(cx, &b).await;
        cx.check(r.status == 200, "the identical attach succeeds once reconcile has advanced", json!({"status": r.status, "code": r.code}));
        let back = read(cx, &b.id).await;
        cx.check(back.body.bytes.as_deref().map(sha) == Some(sha(&b.bytes)), "the attached blob reads back its bytes", json!({}));
    }
    finish(cx, &committed).await;
}

const TRANSIENT: [BlobFaultKind; 3] = [BlobFaultKind::ServiceUnavailable, BlobFaultKind::SlowDown, BlobFaultKind::InternalError];

async fn transient(cx: &mut Ctx) {
    let committed = setup(cx).await;
    let kind = TRANSIENT[rand::Rng::gen_range(&mut cx.rng, 0..TRANSIENT.len())];
    cx.blob_fault(BlobStep::Arm(kind)).await;
    cx.inject("store_outage", json!({"kind": kind}));
    let (b, r) = stage(cx, 1).await;
    // The last attempt's code: the armed one, or a timeout when the network lost the answer.
    let transient = |c: &Option<String>| c.as_deref().is_some_and(|c| ["s3:ServiceUnavailable", "s3:SlowDown", "s3:InternalError", "s3:timeout"].contains(&c));
    let bound = config().retry.attempts_max;
    let seen = r.status == 500 && r.error.as_deref() == Some("Failed to persist blob data") && transient(&r.code) && r.body.attempts == bound;
    cx.symptom(
        seen,
        "500 Failed to persist blob data after the retry bound",
        json!({"status": r.status, "code": r.code, "attempts": r.body.attempts, "bound": bound}),
    );
    if cx.step("confirm-transient") {
        cx.check(transient(&r.code), "the store's code is one that is safe to retry", json!({"code": r.code, "armed": kind}));
    }
    if cx.step("wait-out-outage") {
        madsim::time::sleep(Duration::from_millis(500)).await;
        cx.blob_fault(BlobStep::Disarm).await;
    }
    if cx.step("retry-same-payload") {
        let tenant = cx.devs[0].tenant.clone();
        let client_id = cx.devs[0].name.clone();
        let r = cx.blob(0, BlobRequest::Stage { tenant, client_id, blob_id: b.id.clone(), bytes: b.bytes.clone() }).await;
        let key = object_key(&config().key_prefix, &b.id);
        let ok = r.as_ref().is_ok_and(|r| r.status == 200 && r.body.object_key.as_deref() == Some(key.as_str()));
        cx.check(ok, "the same payload stages under the same object key", json!({"status": r.as_ref().ok().map(|r| r.status)}));
    }
    if cx.step("verify-read") {
        let back = read(cx, &b.id).await;
        cx.check(
            back.status == 200 && back.body.bytes.as_deref().map(sha) == Some(sha(&b.bytes)),
            "the blob reads back its bytes",
            json!({"status": back.status, "code": back.code}),
        );
    }
    finish(cx, &committed).await;
}

async fn orphans(cx: &mut Ctx) {
    let committed = setup(cx).await;
    let n = rand::Rng::gen_range(&mut cx.rng, 2..=4u64);
    let mut blobs = Vec::new();
    for i in 1..=n {
        let (b, r) = stage(cx, i).await;
        assert_eq!(r.status, 200, "a healthy stage");
        blobs.push(b);
    }
    let nth = rand::Rng::gen_range(&mut cx.rng, 0..64u32);
    cx.blob_fault(BlobStep::Delete { nth }).await;
    cx.inject("object_deleted_out_of_band", json!({"nth": nth}));
    let mut gone = Vec::new();
    for b in &blobs {
        let r = read(cx, &b.id).await;
        if r.status == 500 && r.code.as_deref() == Some("s3:NoSuchKey") {
            gone.push(b.id.clone());
        }
    }
    cx.symptom(gone.len() == 1, "500 Failed to read blob data: NoSuchKey for a registered blob", json!({"orphaned": gone}));
    if cx.step("find-orphans") {
        let r = cx.blob(0, BlobRequest::Orphans { cleanup: false }).await.expect("a scan answer");
        cx.check(r.body.orphans == gone, "the scan finds exactly the blob whose object is missing", json!({"orphans": r.body.orphans}));
    }
    if cx.step("cleanup-orphans") {
        let r = cx.blob(0, BlobRequest::Orphans { cleanup: true }).await.expect("a cleanup answer");
        // A cleanup whose answer the network lost was sent again and found nothing left: the
        // scan after it is the judge.
        let after = cx.blob(0, BlobRequest::Orphans { cleanup: false }).await.expect("a scan answer");
        cx.check(
            after.body.orphans.is_empty() && r.body.cleaned <= gone.len() as u64,
            "the orphaned registry rows are removed",
            json!({"cleaned": r.body.cleaned, "left": after.body.orphans}),
        );
    }
    if cx.step("verify-registry") {
        for b in &blobs {
            let r = read(cx, &b.id).await;
            let want = if gone.contains(&b.id) { 404 } else { 200 };
            cx.check(r.status == want, "an orphan is gone from the registry (404), every other blob reads back", json!({"blob": b.id, "status": r.status}));
        }
    }
    finish(cx, &committed).await;
}

async fn denied(cx: &mut Ctx) {
    let committed = setup(cx).await;
    cx.blob_fault(BlobStep::Arm(BlobFaultKind::AccessDenied)).await;
    cx.inject("store_access_denied", json!({}));
    let (b, mut r) = stage(cx, 1).await;
    // A store answer the network lost is a timeout, retried; the identical stage is sent again
    // until the store's own answer comes back (the model holds the server to not retrying it).
    for _ in 0..super::harness::SYNC_ATTEMPTS_MAX {
        if r.code.as_deref() != Some("s3:timeout") {
            break;
        }
        let (tenant, client_id) = (cx.devs[0].tenant.clone(), cx.devs[0].name.clone());
        r = cx.blob(0, BlobRequest::Stage { tenant, client_id, blob_id: b.id.clone(), bytes: b.bytes.clone() }).await.expect("a stage answer");
    }
    let seen = r.status == 500 && r.code.as_deref() == Some("s3:AccessDenied");
    cx.symptom(seen, "500 AccessDenied surfaced at once, not retried", json!({"status": r.status, "code": r.code, "attempts": r.body.attempts}));
    if cx.step("verify-permissions") {
        cx.blob_fault(BlobStep::Disarm).await;
    }
    if cx.step("check-configuration") {
        let c = config();
        let key = object_key(&c.key_prefix, &b.id);
        cx.check(
            !c.bucket.is_empty() && key.starts_with(&c.key_prefix),
            "bucket and key prefix are configured",
            json!({"bucket": c.bucket, "prefix": c.key_prefix}),
        );
    }
    if cx.step("retry-stage") {
        let tenant = cx.devs[0].tenant.clone();
        let client_id = cx.devs[0].name.clone();
        let r = cx.blob(0, BlobRequest::Stage { tenant, client_id, blob_id: b.id.clone(), bytes: b.bytes.clone() }).await;
        cx.check(
            r.as_ref().is_ok_and(|r| r.status == 200),
            "the stage succeeds once access is granted",
            json!({"status": r.as_ref().ok().map(|r| r.status), "code": r.as_ref().ok().and_then(|r| r.code.clone())}),
        );
    }
    finish(cx, &committed).await;
}

async fn not_found(cx: &mut Ctx) {
    let committed = setup(cx).await;
    let (b, r) = stage(cx, 1).await;
    assert_eq!(r.status, 200, "a healthy stage");
    cx.blob_fault(BlobStep::Arm(BlobFaultKind::InternalError)).await;
    cx.inject("store_internal_error", json!({}));
    let missing = read(cx, "never-staged").await;
    let failing = read(cx, &b.id).await;
    let seen = missing.status == 404 && failing.status == 500 && failing.error.as_deref() == Some("Failed to read blob data");
    cx.symptom(
        seen,
        "404 for an unknown blob, 500 Failed to read blob data for a registered one",
        json!({"unknown": missing.status, "registered": failing.status, "code": failing.code}),
    );
    if cx.step("distinguish-404-vs-500") {
        let metadata = missing.error.as_deref() == Some("Blob not found");
        let object = failing.code.as_deref().is_some_and(|c| c.starts_with("s3:"));
        cx.check(
            metadata && object,
            "404 is the metadata layer, 500 the object layer with the store's code",
            json!({"404": missing.error, "500": failing.code}),
        );
    }
    if cx.step("retry-after-outage") {
        cx.blob_fault(BlobStep::Disarm).await;
    }
    let back = read(cx, &b.id).await;
    cx.check(
        back.status == 200 && back.body.bytes.as_deref().map(sha) == Some(sha(&b.bytes)),
        "the registered blob reads back after the outage",
        json!({"status": back.status}),
    );
    finish(cx, &committed).await;
}

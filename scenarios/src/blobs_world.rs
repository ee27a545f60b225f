//! Blobs in the world (runbook 003 §2 "Staged-Blob Visibility Failures" and §3 "Blob
//! Persistence Failures").
//!
//! The failure: devices stage blobs on the server, whose blob layer keeps the bytes on an
//! S3-like object store (its own node, `blobstore`, with objects in SQLite on its simulated disk)
//! while the store answers with each of its error codes in windows (`NoSuchKey`, `AccessDenied`,
//! `ServiceUnavailable`, `SlowDown`, `InternalError`), objects are deleted behind the registry's
//! back, and a device's persisted reconcile state is rewritten malformed. A device attaches a staged blob with the visibility checkpoint it took from
//! its exported state when it staged — its cursor, and its `lastReconciledWriteIds` including its
//! own write that references the blob — so an attach is legitimately refused (409) until the
//! device has synced.
//!
//! The recovery, as the runbook says: retry the attach with the identical payload once
//! reconcile has advanced (after the heal every device has synced, and every staged blob that
//! has not expired must attach); transient object errors are retried with backoff by the
//! server; orphaned metadata is found and cleaned up by the operator's orphan scan; a malformed
//! reconcile state fails attaches with a deterministic 500 until the device's next push records
//! a well-formed one over it.
//!
//! Checked (drill-model `blobs`): INV-BLOB-VISIBILITY and INV-BLOB-OBJECT.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drill_model::blobs::{BlobFact, CheckpointFact, ReconcileFact};
use drill_model::Fact;
use drill_sim::trace;
use drill_stack::blobs::object::{object_key, serve_objects, BoxFuture, NetObjectStore};
use drill_stack::blobs::s3::{ObjectServer, S3ErrorCode, S3Request, S3_PORT};
use drill_stack::blobs::{AttachCheckpoint, BlobConfig, BlobRequest, BlobResponse, BlobService, ReconcileView};
use drill_stack::client::{Client, ExportedState};
use drill_stack::proto::{Request, Response, SERVER_PORT};
use drill_stack::rpc::RpcClient;
use drill_stack::server::Server;
use drill_stack::SyncError;
use madsim::task::NodeId;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::node::{lock, payload_for, record, ClientCtx, Command, Mailbox, NodeClock, SharedRef, SERVER_IP};
use crate::plan::blobs::BlobFaultKind;
use crate::plan::{Action, Plan};
use crate::seam::{step_of, Build, Core, DevicePart, Hook, StepBox, Subsystem};

/// The object store's node.
pub const BLOBSTORE_NODE: &str = "blobstore";
pub use crate::node::BLOBSTORE_IP;
/// The object store's database file.
pub const OBJECTS_DB: &str = "objects.db";
/// How long a device waits for a blob answer: the server may retry the store several times.
pub const BLOB_RPC_TIMEOUT_MS: u64 = 3_000;
/// How long the server waits for one answer of the object store.
pub const S3_TIMEOUT_MS: u64 = 400;
/// How long a staged blob stays attachable by the server's clock: past the workload, so the
/// retries after the heal attach what a clock jump did not expire.
pub const STAGE_TTL_MS: i64 = 20_000;
/// Staged blobs one attach operation tries, at most.
const ATTACH_PER_OP_MAX: usize = 4;
/// Attempts of a blob call after the heal, where a lost message must not hide a verdict.
const FINAL_ATTEMPTS_MAX: u32 = 5;
/// How long the world waits for the blob round after the heal.
const FINAL_ROUND_MS_MAX: u64 = 60_000;

/// The blob layer's settings in the world.
pub fn config() -> BlobConfig {
    BlobConfig { stage_ttl_ms: STAGE_TTL_MS, ..BlobConfig::default() }
}

/// The local write that references the blob device `node` stages in operation `op`.
pub fn reference(node: &str, op: u64) -> Vec<u8> {
    format!("blob-ref:{node}-blob-{op}").into_bytes()
}

// ---------------------------------------------------------------------------------------------
// The object store's node

/// What the object store's process shares with the world: the armed error and its store.
pub struct BlobStoreCtx {
    pub shared: SharedRef,
    pub armed: Arc<Mutex<Option<S3ErrorCode>>>,
    pub slot: Arc<Mutex<Option<ObjectServer>>>,
}

/// The object store's process: open its database, then answer; an armed error answers instead
/// of the store wherever it applies, and the model hears of each one.
pub async fn blobstore_main(ctx: Arc<BlobStoreCtx>) {
    let bucket = config().bucket;
    let mut server = None;
    for attempt in 1..=1_000u32 {
        match ObjectServer::open(OBJECTS_DB, &bucket) {
            Ok(s) => {
                server = Some(s);
                break;
            }
            Err(e) => {
                record(&ctx.shared, BLOBSTORE_NODE, "node.open_failed", json!({"attempt": attempt, "code": e.code(), "message": e.to_string()}), None);
                madsim::time::sleep(Duration::from_millis(50 * u64::from(attempt.min(20)))).await;
            }
        }
    }
    let Some(server) = server else { return };
    let objects = server.keys().map(|k| k.len()).unwrap_or(0);
    record(&ctx.shared, BLOBSTORE_NODE, "node.recovered", json!({"objects": objects}), None);
    *lock(&ctx.slot) = Some(server);
    let ep = match madsim::net::Endpoint::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), S3_PORT)).await {
        Ok(ep) => ep,
        Err(e) => return record(&ctx.shared, BLOBSTORE_NODE, "node.bind_failed", json!({"message": e.to_string()}), None),
    };
    let c = ctx.clone();
    let _ = serve_objects(&ep, move |req| answer_s3(&c, req)).await;
}

fn answer_s3(ctx: &BlobStoreCtx, req: &S3Request) -> drill_stack::blobs::s3::S3Response {
    use drill_stack::blobs::s3::S3Response;
    let injected = (*lock(&ctx.armed)).filter(|c| c.applies_to(req));
    if let Some(code) = injected {
        let fact = BlobFact::Injected { key: req.key().to_string(), code: code.kind().code().to_string() };
        record(&ctx.shared, BLOBSTORE_NODE, "blob.injected", json!({"op": req.op(), "key": req.key(), "code": code}), Some(Fact::Blob(fact)));
    }
    match lock(&ctx.slot).as_mut() {
        Some(s) => s.handle(req, injected),
        None => {
            // Not injected, but the store's own answer all the same: the model hears of it.
            let code = S3ErrorCode::ServiceUnavailable;
            let fact = BlobFact::Injected { key: req.key().to_string(), code: code.kind().code().to_string() };
            record(&ctx.shared, BLOBSTORE_NODE, "blob.unavailable", json!({"op": req.op(), "key": req.key()}), Some(Fact::Blob(fact)));
            S3Response::Error { code, message: "the store is starting".into() }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The server's blob layer

/// The blob layer over the server's store (in `slot`), reaching the object store across the
/// network and reading the server node's clock. Call it on the server's node.
pub fn service(slot: Arc<Mutex<Option<Server>>>) -> BlobService<Mutex<Option<Server>>> {
    let objects = NetObjectStore { addr: SocketAddr::new(BLOBSTORE_IP, S3_PORT), timeout: Duration::from_millis(S3_TIMEOUT_MS) };
    BlobService::new(slot, Arc::new(objects), Arc::new(NodeClock(madsim::plugin::node())), config())
}

/// What the server's request loop runs for each blob request: the blob layer's answer, traced.
pub fn server_blobs(slot: &Arc<Mutex<Option<Server>>>, shared: &SharedRef) -> impl Fn(BlobRequest) -> BoxFuture<'static, BlobResponse> {
    let svc = Arc::new(service(slot.clone()));
    let shared = shared.clone();
    move |req| {
        let svc = svc.clone();
        let shared = shared.clone();
        Box::pin(async move {
            let detail = request_detail(&req);
            let resp = svc.handle(req).await;
            let mut detail = detail;
            detail["status"] = json!(resp.status);
            if let Some(code) = &resp.code {
                detail["code"] = json!(code);
            }
            record(&shared, "server", "net.request", detail, None);
            resp
        })
    }
}

fn request_detail(req: &BlobRequest) -> serde_json::Value {
    match req {
        BlobRequest::Stage { client_id, blob_id, bytes, .. } => json!({"from": client_id, "op": "blob.stage", "blob": blob_id, "bytes": bytes.len()}),
        BlobRequest::Attach { blob_id, checkpoint, .. } => json!({"from": checkpoint.client_id, "op": "blob.attach", "blob": blob_id}),
        BlobRequest::Read { blob_id, .. } => json!({"op": "blob.read", "blob": blob_id}),
        BlobRequest::Delete { blob_id, .. } => json!({"op": "blob.delete", "blob": blob_id}),
        BlobRequest::Orphans { cleanup } => json!({"op": "blob.orphans", "cleanup": cleanup}),
    }
}

// ---------------------------------------------------------------------------------------------
// A device's blobs

/// A blob this device staged, with the checkpoint it took then.
#[derive(Debug, Clone)]
struct StagedBlob {
    blob_id: String,
    object_key: String,
    checkpoint: AttachCheckpoint,
    attached: bool,
    expired: bool,
}

/// A device's blob client: its own connection to the server (blob answers may take a few store
/// retries, longer than a sync exchange), and the blobs it staged since it booted.
pub struct BlobDevice {
    rpc: Option<RpcClient>,
    id_base: u64,
    staged: Vec<StagedBlob>,
}

/// The checkpoint a device takes from its exported state: its cursor, and its
/// `lastReconciledWriteIds` with its own pending writes in — the server must have reconciled
/// everything the device had written when it staged.
pub fn checkpoint_of(state: &ExportedState) -> (u64, BTreeMap<String, u64>) {
    let mut ids: BTreeMap<String, u64> = state.last_reconciled_write_ids.iter().filter(|(_, &w)| w > 0).map(|(r, w)| (r.clone(), *w)).collect();
    if let Some(max) = state.pending.iter().map(|p| p.write_id).max().filter(|&w| w > 0) {
        let e = ids.entry(state.replica.clone()).or_insert(0);
        *e = (*e).max(max);
    }
    (state.cursor, ids)
}

fn checkpoint_fact(c: &AttachCheckpoint) -> CheckpointFact {
    let write_ids = drill_stack::blobs::registry::parse_write_ids(&c.required_last_reconciled_write_ids).unwrap_or_default();
    CheckpointFact { client_id: c.client_id.clone(), cursor: c.required_cursor, write_ids }
}

fn reconcile_fact(v: &ReconcileView) -> ReconcileFact {
    ReconcileFact { cursor: v.cursor, write_ids: v.last_reconciled_write_ids.clone() }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl BlobDevice {
    /// `id_base` keeps request ids of different boots apart (the device's boot count).
    pub fn new(id_base: u64) -> Self {
        BlobDevice { rpc: None, id_base, staged: Vec::new() }
    }

    /// Runs one blob operation of the device's user (id 0: the round after the heal).
    pub async fn op(&mut self, ctx: &ClientCtx, client: &mut Client, id: u64, action: &Action) {
        match action {
            Action::StageBlob { bytes } => self.stage(ctx, client, id, *bytes).await,
            Action::AttachBlob => self.attach(ctx, id).await,
            Action::ReadBlob { all } => self.read(ctx, id, *all).await,
            _ => {}
        }
    }

    /// Sends one blob request; after the heal (id 0) a lost message is retried.
    async fn call(&mut self, id: u64, req: &BlobRequest) -> Result<BlobResponse, SyncError> {
        if self.rpc.is_none() {
            let server = SocketAddr::new(SERVER_IP, SERVER_PORT);
            self.rpc = Some(RpcClient::bind(server, self.id_base, Duration::from_millis(BLOB_RPC_TIMEOUT_MS)).await?);
        }
        let rpc = self.rpc.as_mut().expect("bound above");
        let attempts = if id == 0 { FINAL_ATTEMPTS_MAX } else { 1 };
        let mut last = None;
        for _ in 0..attempts {
            match rpc.call(&Request::Blob(req.clone())).await {
                Ok(Response::Blob(r)) if id == 0 && r.code.as_deref() == Some("s3:timeout") => last = Some(Ok(*r)),
                Ok(Response::Blob(r)) => return Ok(*r),
                Ok(other) => return Err(SyncError::Server { code: "unexpectedResponse".into(), message: format!("blob request got {other:?}") }),
                Err(e) => last = Some(Err(e)),
            }
        }
        last.expect("at least one attempt")
    }

    /// Writes the local reference to the blob, takes the checkpoint, and stages the bytes.
    async fn stage(&mut self, ctx: &ClientCtx, client: &mut Client, id: u64, bytes: u32) {
        let name = ctx.name.as_str();
        let blob_id = format!("{name}-blob-{id}");
        let data = payload_for(&format!("{name}/blob"), id, bytes);
        let reference = reference(name, id);
        let detail = json!({"op": id, "action": "stage_blob", "blob": blob_id, "bytes": data.len()});
        record(&ctx.shared, name, "op.start", detail, Some(Fact::AppendStarted { node: name.into(), payload: reference.clone() }));
        match client.append(crate::node::BLOBS_AGGREGATE, "blob.staged", &reference) {
            Ok((w, op_id)) => {
                let fact = crate::node::append_acked(name, client, w, &op_id);
                record(&ctx.shared, name, "op.progress", json!({"op": id, "write_id": w, "op_id": op_id}), Some(fact));
            }
            Err(e) => {
                let detail = json!({"op": id, "code": e.code(), "message": e.to_string()});
                return record(&ctx.shared, name, "op.err", detail, Some(Fact::AppendFailed { node: name.into() }));
            }
        }
        let state = match client.export_state() {
            Ok(s) => s,
            Err(e) => return record(&ctx.shared, name, "op.err", json!({"op": id, "code": e.code(), "message": e.to_string()}), None),
        };
        let (cursor, ids) = checkpoint_of(&state);
        let checkpoint = AttachCheckpoint {
            client_id: state.replica.clone(),
            required_cursor: cursor,
            required_last_reconciled_write_ids: serde_json::to_value(&ids).expect("a map serializes"),
        };
        let object_key = object_key(&config().key_prefix, &blob_id);
        let req = BlobRequest::Stage { tenant: ctx.tenant.clone(), client_id: state.replica.clone(), blob_id: blob_id.clone(), bytes: data.clone() };
        match self.call(id, &req).await {
            Ok(r) if r.status == 200 => {
                let fact = BlobFact::Staged {
                    node: name.into(),
                    blob_id: blob_id.clone(),
                    object_key: object_key.clone(),
                    sha256: sha256_hex(&data),
                    checkpoint: checkpoint_fact(&checkpoint),
                };
                let detail =
                    json!({"op": id, "blob": blob_id, "attempts": r.body.attempts, "cursor": cursor, "write_ids": ids, "expires_at_ms": r.body.expires_at_ms});
                record(&ctx.shared, name, "op.ok", detail, Some(Fact::Blob(fact)));
                self.staged.push(StagedBlob { blob_id, object_key, checkpoint, attached: false, expired: false });
            }
            Ok(r) => {
                let code = r.code.clone().unwrap_or_default();
                let fact = BlobFact::StageFailed {
                    node: name.into(),
                    blob_id: blob_id.clone(),
                    object_key,
                    status: r.status,
                    code: code.clone(),
                    attempts: r.body.attempts,
                };
                let detail = json!({"op": id, "blob": blob_id, "status": r.status, "code": code, "error": r.error, "attempts": r.body.attempts});
                record(&ctx.shared, name, "op.err", detail, Some(Fact::Blob(fact)));
            }
            Err(e) => record(&ctx.shared, name, "op.err", json!({"op": id, "blob": blob_id, "code": e.code(), "message": e.to_string()}), None),
        }
    }

    /// Attaches the oldest staged blobs not attached yet, each with its own checkpoint.
    async fn attach(&mut self, ctx: &ClientCtx, id: u64) {
        let name = ctx.name.as_str();
        let todo: Vec<usize> = (0..self.staged.len()).filter(|&i| !self.staged[i].attached && !self.staged[i].expired).take(ATTACH_PER_OP_MAX).collect();
        for i in todo {
            let b = self.staged[i].clone();
            let req = BlobRequest::Attach {
                tenant: ctx.tenant.clone(),
                blob_id: b.blob_id.clone(),
                item_id: format!("item-{}", b.blob_id),
                checkpoint: b.checkpoint.clone(),
            };
            record(&ctx.shared, name, "op.start", json!({"op": id, "action": "attach_blob", "blob": b.blob_id}), None);
            match self.call(id, &req).await {
                Ok(r) => {
                    let fact = BlobFact::Attach {
                        node: name.into(),
                        blob_id: b.blob_id.clone(),
                        checkpoint: checkpoint_fact(&b.checkpoint),
                        status: r.status,
                        code: r.code.clone(),
                        observed: r.body.observed.as_ref().map(reconcile_fact),
                        replayed: r.body.replayed,
                    };
                    let detail =
                        json!({"op": id, "blob": b.blob_id, "status": r.status, "code": r.code, "observed": r.body.observed, "replayed": r.body.replayed});
                    let kind = if r.status == 200 { "op.ok" } else { "op.err" };
                    record(&ctx.shared, name, kind, detail, Some(Fact::Blob(fact)));
                    self.staged[i].attached |= r.status == 200;
                    self.staged[i].expired |= r.code.as_deref() == Some("blob:stagingExpired");
                }
                Err(e) => record(&ctx.shared, name, "op.err", json!({"op": id, "blob": b.blob_id, "code": e.code(), "message": e.to_string()}), None),
            }
        }
    }

    /// Reads one staged blob back (every one with `all`).
    async fn read(&mut self, ctx: &ClientCtx, id: u64, all: bool) {
        let name = ctx.name.as_str();
        if self.staged.is_empty() {
            return;
        }
        let picks: Vec<usize> = if all { (0..self.staged.len()).collect() } else { vec![(id as usize) % self.staged.len()] };
        for i in picks {
            let b = self.staged[i].clone();
            record(&ctx.shared, name, "op.start", json!({"op": id, "action": "read_blob", "blob": b.blob_id}), None);
            match self.call(id, &BlobRequest::Read { tenant: ctx.tenant.clone(), blob_id: b.blob_id.clone() }).await {
                Ok(r) => {
                    let sha256 = r.body.bytes.as_deref().map(sha256_hex);
                    let fact = BlobFact::Read {
                        node: name.into(),
                        blob_id: b.blob_id.clone(),
                        object_key: b.object_key.clone(),
                        status: r.status,
                        code: r.code.clone(),
                        attempts: r.body.attempts,
                        sha256: sha256.clone(),
                    };
                    let detail = json!({"op": id, "blob": b.blob_id, "status": r.status, "code": r.code, "attempts": r.body.attempts, "sha256": sha256.map(|s| s[..12].to_string())});
                    let kind = if r.status == 200 { "op.ok" } else { "op.err" };
                    record(&ctx.shared, name, kind, detail, Some(Fact::Blob(fact)));
                }
                Err(e) => record(&ctx.shared, name, "op.err", json!({"op": id, "blob": b.blob_id, "code": e.code(), "message": e.to_string()}), None),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The world's side

/// A step of the blob fault timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobStep {
    Arm(BlobFaultKind),
    Disarm,
    Delete { nth: u32 },
    Corrupt { nth: u32 },
}

/// The timed steps of a plan's blob faults.
pub fn steps(plan: &Plan) -> Vec<(u64, BlobStep)> {
    let mut out = Vec::new();
    for f in plan.blobs.iter().flat_map(|b| &b.faults) {
        match f.kind {
            BlobFaultKind::OutOfBandDelete => out.push((f.at_ms, BlobStep::Delete { nth: f.nth })),
            BlobFaultKind::MalformedReconcileState => out.push((f.at_ms, BlobStep::Corrupt { nth: f.nth })),
            kind => {
                out.push((f.at_ms, BlobStep::Arm(kind)));
                out.push((f.at_ms + f.ms, BlobStep::Disarm));
            }
        }
    }
    out
}

/// The world's handle on the object store (its node, the armed error, its store) and on the
/// server's registry, for the faults that reach behind the stack's back.
pub struct BlobWorld {
    pub node: NodeId,
    server: NodeId,
    server_slot: Arc<Mutex<Option<Server>>>,
    clients: Vec<String>,
    armed: Arc<Mutex<Option<S3ErrorCode>>>,
    slot: Arc<Mutex<Option<ObjectServer>>>,
    shared: SharedRef,
    /// Error windows open now; the store answers with the latest one.
    open: Vec<BlobFaultKind>,
}

impl BlobWorld {
    /// Creates the object store's node and tells the model the server's retry bound.
    pub fn create(
        handle: &madsim::runtime::Handle,
        shared: &SharedRef,
        server: NodeId,
        server_slot: &Arc<Mutex<Option<Server>>>,
        clients: Vec<String>,
    ) -> BlobWorld {
        let armed = Arc::new(Mutex::new(None));
        let slot = Arc::new(Mutex::new(None));
        let ctx = Arc::new(BlobStoreCtx { shared: shared.clone(), armed: armed.clone(), slot: slot.clone() });
        let node = handle.create_node().name(BLOBSTORE_NODE).ip(BLOBSTORE_IP).init(move || blobstore_main(ctx.clone())).build();
        let attempts_max = config().retry.attempts_max;
        record(shared, BLOBSTORE_NODE, "node.start", json!({"attempts_max": attempts_max}), Some(Fact::Blob(BlobFact::Config { attempts_max })));
        BlobWorld { node: node.id(), server, server_slot: server_slot.clone(), clients, armed, slot, shared: shared.clone(), open: Vec::new() }
    }

    /// Plays one step; counts what was injected.
    pub fn play(&mut self, step: BlobStep, counts: &mut BTreeMap<String, u64>) {
        match step {
            BlobStep::Arm(kind) => {
                *counts.entry(kind.counted_as()).or_default() += 1;
                trace::emit(BLOBSTORE_NODE, "fault.blob_store", json!({"kind": kind}));
                self.open.push(kind);
            }
            BlobStep::Disarm => {
                if !self.open.is_empty() {
                    self.open.remove(0);
                }
                if self.open.is_empty() {
                    trace::emit(BLOBSTORE_NODE, "fault.heal", json!({"blob_store": "healthy"}));
                }
            }
            BlobStep::Delete { nth } => {
                *counts.entry(BlobFaultKind::OutOfBandDelete.counted_as()).or_default() += 1;
                self.delete_out_of_band(nth);
            }
            BlobStep::Corrupt { nth } => {
                *counts.entry(BlobFaultKind::MalformedReconcileState.counted_as()).or_default() += 1;
                self.corrupt_reconcile_state(nth);
            }
        }
        *lock(&self.armed) = self.open.last().and_then(|k| k.s3_code());
    }

    /// Deletes the `nth` stored object (by key) on the store's own node, behind the registry's
    /// back.
    fn delete_out_of_band(&self, nth: u32) {
        let Some(node) = madsim::runtime::Handle::current().get_node(self.node) else { return };
        let slot = self.slot.clone();
        let shared = self.shared.clone();
        node.spawn(async move {
            let mut guard = lock(&slot);
            let Some(store) = guard.as_mut() else { return };
            let keys = store.keys().unwrap_or_default();
            if keys.is_empty() {
                drop(guard);
                trace::emit(BLOBSTORE_NODE, "fault.blob_delete", json!({"deleted": null, "why": "no objects"}));
                return;
            }
            let key = keys[nth as usize % keys.len()].clone();
            let deleted = store.remove(&key).unwrap_or(false);
            drop(guard);
            if deleted {
                let fact = Fact::Blob(BlobFact::DeletedOutOfBand { key: key.clone() });
                record(&shared, BLOBSTORE_NODE, "fault.blob_delete", json!({"deleted": key}), Some(fact));
            }
        });
    }

    /// Rewrites a device's persisted reconcile state malformed, on the server's node, with
    /// plain SQL behind the stack's back (runbook 003 §2, triage step 4).
    fn corrupt_reconcile_state(&self, nth: u32) {
        let Some(node) = madsim::runtime::Handle::current().get_node(self.server) else { return };
        if self.clients.is_empty() {
            return;
        }
        let client = self.clients[nth as usize % self.clients.len()].clone();
        // Each malformed shape the runbook names: a zero write id, a non-object map, a
        // non-integer cursor.
        let (column, value) = [
            ("last_reconciled_write_ids", format!("{{\"{client}\":0}}")),
            ("last_reconciled_write_ids", "[1,2]".to_string()),
            ("cursor", "not-a-cursor".to_string()),
        ][(nth as usize / self.clients.len()) % 3]
            .clone();
        let slot = self.server_slot.clone();
        let shared = self.shared.clone();
        node.spawn(async move {
            let key = drill_stack::blobs::registry::client_key(&client);
            let changed = lock(&slot)
                .as_ref()
                .map(|s| s.registry_conn().execute(&format!("UPDATE reconcile_state SET {column} = ?1 WHERE client_key = ?2"), [value.as_str(), key.as_str()]));
            match changed {
                Some(Ok(n)) if n > 0 => {
                    let fact = Fact::Blob(BlobFact::ReconcileStateCorrupted { client_id: client.clone() });
                    record(&shared, "server", "fault.blob_reconcile_state", json!({"client": client, column: value}), Some(fact));
                }
                other => {
                    let why = match other {
                        Some(Err(e)) => e.to_string(),
                        Some(Ok(_)) => "no reconcile state yet".into(),
                        None => "the server store is closed".into(),
                    };
                    trace::emit("server", "fault.blob_reconcile_state", json!({"client": client, "skipped": why}));
                }
            }
        });
    }

    /// Closes every error window.
    pub fn heal(&mut self) {
        self.open.clear();
        *lock(&self.armed) = None;
    }

    /// After the heal and convergence: every device retries its attaches (reconcile has
    /// advanced, so each must succeed or be expired) and reads its blobs back, then the operator
    /// scans for orphaned metadata and cleans it up.
    pub async fn final_round(&self, mailboxes: &BTreeMap<String, Arc<Mutex<Mailbox>>>, server: NodeId, server_slot: &Arc<Mutex<Option<Server>>>) {
        let deadline = drill_sim::clock::true_ms() + FINAL_ROUND_MS_MAX;
        procs_observe(&self.shared, BlobFact::FinalRound);
        for action in [Action::AttachBlob, Action::ReadBlob { all: true }] {
            for mb in mailboxes.values() {
                lock(mb).push(Command::Op { id: 0, action: action.clone() });
            }
            while drill_sim::clock::true_ms() < deadline && !mailboxes.values().all(|m| lock(m).idle()) {
                madsim::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let Some(node) = madsim::runtime::Handle::current().get_node(server) else { return };
        let slot = server_slot.clone();
        let scan = node.spawn(async move { service(slot).orphans(true).await });
        match scan.await {
            Ok(Ok(body)) => {
                let prefix = config().key_prefix;
                let found: Vec<(String, String)> = body.orphans.iter().map(|b| (b.clone(), object_key(&prefix, b))).collect();
                let detail = json!({"orphans": body.orphans, "unverified": body.unverified, "cleaned": body.cleaned});
                let fact = Fact::Blob(BlobFact::Orphans { found, cleaned: body.cleaned });
                record(&self.shared, "server", "blob.orphans", detail, Some(fact));
            }
            Ok(Err(e)) => {
                trace::emit("server", "blob.orphans_failed", json!({"status": e.status(), "code": e.code(), "message": e.to_string()}));
            }
            Err(e) => {
                trace::emit("server", "blob.orphans_failed", json!({"message": e.to_string()}));
            }
        }
    }
}

/// Hands the model a world-level blob fact, traced on its own line.
fn procs_observe(shared: &SharedRef, fact: BlobFact) {
    let line = trace::emit("world", "blob.final_round", json!({}));
    crate::node::observe(shared, Fact::Blob(fact), line);
}

impl BlobWorld {
    /// The object store of a plan with blobs, behind the server's blob layer.
    pub fn build(b: &mut Build<'_>) -> BlobWorld {
        let devices = b.plan.clients.iter().map(|c| c.name.clone()).collect();
        let world = BlobWorld::create(b.handle, b.shared, b.server, b.server_slot, devices);
        b.nodes.add(BLOBSTORE_NODE, world.node, drill_sim::disk::DiskFaults::none(), b.seeds);
        world
    }
}

impl Subsystem for BlobWorld {
    /// Every blob reference the plan's devices stage.
    fn secrets(&self, plan: &Plan) -> Vec<drill_model::secrets::Secret> {
        let staged = plan.ops.iter().enumerate().filter(|(_, op)| matches!(op.action, Action::StageBlob { .. }));
        staged
            .map(|(i, op)| {
                drill_model::secrets::Secret::plaintext(format!("blob reference of {} op {}", op.client, i + 1), &reference(&op.client, i as u64 + 1))
            })
            .collect()
    }

    fn steps(&self, plan: &Plan) -> Vec<(u64, StepBox)> {
        steps(plan).into_iter().map(|(t, s)| (t, Box::new(s) as StepBox)).collect()
    }

    fn apply(&mut self, step: StepBox, core: &mut Core<'_>) {
        self.play(step_of(step), &mut core.nodes.counts);
    }

    fn heal(&mut self, _core: &mut Core<'_>) {
        BlobWorld::heal(self);
    }

    fn final_round<'a>(&'a self, core: &'a Core<'a>, converged: bool) -> Hook<'a> {
        Box::pin(async move {
            if converged {
                BlobWorld::final_round(self, core.mailboxes, core.server, core.server_slot).await;
            }
        })
    }
}

impl DevicePart for BlobDevice {
    fn user_op<'a>(&'a mut self, ctx: &'a ClientCtx, client: &'a mut Client, id: u64, action: &'a Action) -> Option<Hook<'a>> {
        matches!(action, Action::StageBlob { .. } | Action::AttachBlob | Action::ReadBlob { .. })
            .then(|| Box::pin(BlobDevice::op(self, ctx, client, id, action)) as Hook<'a>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drill_stack::client::PendingRef;

    #[test]
    fn the_checkpoint_requires_the_devices_own_pending_writes() {
        let state = ExportedState {
            replica: "client-1".into(),
            tenant: "acme".into(),
            cursor: 7,
            reconcile_cursor: 7,
            last_reconciled_write_ids: [("client-1".to_string(), 3), ("client-3".to_string(), 2)].into(),
            pending: vec![PendingRef { op_id: "x-4".into(), write_id: 4 }, PendingRef { op_id: "x-5".into(), write_id: 5 }],
        };
        let (cursor, ids) = checkpoint_of(&state);
        assert_eq!(cursor, 7);
        assert_eq!(ids, [("client-1".to_string(), 5), ("client-3".to_string(), 2)].into());
    }

    #[test]
    fn every_blob_fault_kind_has_its_counter_name() {
        let names: Vec<String> = BlobFaultKind::ALL.iter().map(|k| k.counted_as()).collect();
        assert_eq!(
            names,
            [
                "blob.no_such_key",
                "blob.access_denied",
                "blob.service_unavailable",
                "blob.slow_down",
                "blob.internal_error",
                "blob.out_of_band_delete",
                "blob.malformed_reconcile_state"
            ]
        );
    }
}

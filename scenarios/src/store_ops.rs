//! The store's own work on devices in the world, and the faults that exercise it (runbooks 000,
//! 002 and 004).
//!
//! - **Sagas** (000 "Saga stuck state"). After every sync, and at boot (the reconcile on start),
//!   a device's achievement sagas record a request for each threshold its tenant's count passed
//!   and deliver every effect not yet `done` to the *effects node*: a process on its own node,
//!   reached over the simulated network, that applies each effect id once ([`saga::Receiver`],
//!   in its own database on its own disk). The fault: a power cut between the saga's state and
//!   its effect (`delivering` committed, nothing sent) or between the effect and the state
//!   update (the receiver applied it, `done` never committed). The recovery is the saga's own:
//!   re-deliver whatever is not `done`; the receiver recognises a duplicate.
//! - **Index artifacts** (000 "Projection corruption or stale indexes"). After every sync and
//!   at boot, a device loads its tenant's artifact and rebuilds it when it is missing, stale or
//!   corrupt. The fault flips bits of the artifact file on the device's disk; the load fails
//!   authentication (`artifact:corrupt`), and the device deletes and rebuilds it.
//! - **Projection corruption** (004 §6.2). A buggy write changes a projection row through the
//!   device's connection. Before every sync and at boot the device verifies its projections
//!   against a replay of its events into a scratch database; an inconsistent projection is
//!   marked unhealthy (004 §7) and rebuilt from the events (004 §6.2), and the model checks the
//!   rebuilt state at once (INV-PROJECTION). Verifying before the sync keeps a snapshot from ever
//!   capturing the corrupt rows, and at boot it runs before the model reads the projections.
//! - **Schema migration** (002 release checklist). A device installs the version 2 schema at
//!   some moment and migrates at once; the fault cuts its power at a disk operation inside the
//!   migration. Every later start runs the migration again, which resumes or starts over, so the
//!   device ends at version 2 (INV-MIGRATION) with its projections intact (INV-PROJECTION).
//! - **The effects node's own faults.** The external service crashes (its process dies and its
//!   node boots again after a while, its receiver recovering from its own disk) or is cut off
//!   from every device for a while. A delivery in flight then gets no answer
//!   (`saga:effectUnavailable`: the receiver may or may not have applied it) and stays
//!   `delivering`; the next round sends it again and the receiver recognises a duplicate, so
//!   each effect is applied exactly once all the same (INV-ONCE).
//! - **Diagnostics bundle** (000 open question). At the end-of-run audit every device exports
//!   its bundle and proves it with `check_bundle` against every secret it holds; the world adds
//!   the bytes to the INV-NO-PLAINTEXT scan as `<device>:diagnostics.json`.
//!
//! Each fault is counted in the run's faults by kind (`saga.crash`, `artifact.corrupt`,
//! `projection.corrupt`, `migration.crash`, `effects.crash`, `effects.partition`) only when it
//! really happened. Planted bugs
//! ([`Bug`]) switch a recovery off, for tests that show the run then fails.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drill_model::store::StoreFact;
use drill_model::store_ops::{ArtifactFacts, ArtifactRead, DeliveryFact, EffectsFacts, MigrationFacts, SagaCount, SagaStepFact};
use drill_model::Fact;
use drill_sim::disk::DiskSim;
use drill_sim::rng::SeedTree;
use drill_sim::trace;
use drill_sim::world::Nodes;
use drill_stack::artifacts::{self, ArtifactError};
use drill_stack::client::{Client, Ring, VerifiedSnapshots};
use drill_stack::diagnostics::{self, ErrorLog, Sources};
use drill_stack::fs::FileSystem;
use drill_stack::migrate;
use drill_stack::projections::health::{self, EventStoreStatus};
use drill_stack::projections::resilience::Mode;
use drill_stack::projections::Scope;
use drill_stack::saga::{self, AchievementSaga, Delivered, EffectError, EffectSink, Receiver};
use drill_stack::store;
use madsim::net::Endpoint;
use madsim::task::NodeId;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::facts::{observe_store, opened_events, store_facts};
use crate::node::{lock, observe, record, ClientCtx, Command, Mailbox, NodeClock, SharedRef, StoreCmd as Cmd, DEVICE_DB};
use crate::plan::store_ops::{Bug, OpsPlan, SagaPoint};
use crate::plan::Plan;
use crate::seam::{DevicePart, Hook};
use crate::sim_fs::SimFs;

/// The effects node: the external service the sagas' effects go to.
pub const EFFECTS_NODE: &str = "effects";
pub use crate::node::EFFECTS_IP;
pub const EFFECTS_PORT: u16 = 7400;
/// The receiver's database on the effects node.
pub const EFFECTS_DB: &str = "effects.db";
const TAG_EFFECT: u64 = 0xEFFE_C701;
const TAG_EFFECT_ANSWER: u64 = 0xEFFE_C702;
/// How long a device waits for the receiver's answer.
pub const EFFECT_TIMEOUT_MS: u64 = 500;
/// Answers to earlier deliveries skipped while waiting for one, at most.
const STALE_ANSWERS_MAX: u32 = 16;
/// Saga rounds a device runs at the end-of-run audit until nothing is pending (messages may
/// still be lost after the heal).
const FINAL_SAGA_ROUNDS_MAX: u32 = 6;
/// Recent errors a device keeps for its diagnostics bundle.
const ERROR_LOG_CAPACITY: usize = 32;

// ---------------------------------------------------------------------------------------------
/// What the world does at a point of the timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    ArmSagaCrash {
        node: String,
        point: SagaPoint,
    },
    CorruptArtifact {
        node: String,
    },
    CorruptProjection {
        node: String,
        projection: String,
        nth: u32,
    },
    Upgrade {
        node: String,
        cut_after_ops: Option<u32>,
    },
    /// Crash the effects node; it boots after `down_ms` (played by the world, which owns the
    /// nodes).
    CrashEffects {
        down_ms: u64,
    },
    /// Cut the effects node off from every device for `ms` (played by the world).
    PartitionEffects {
        ms: u64,
    },
}

/// The plan's store-work steps, by time.
pub fn steps(ops: &OpsPlan) -> Vec<(u64, Step)> {
    let mut out = Vec::new();
    for c in &ops.saga_crash {
        out.push((c.at_ms, Step::ArmSagaCrash { node: c.node.clone(), point: c.point }));
    }
    for c in &ops.artifact_corrupt {
        out.push((c.at_ms, Step::CorruptArtifact { node: c.node.clone() }));
    }
    for c in &ops.projection_corrupt {
        out.push((c.at_ms, Step::CorruptProjection { node: c.node.clone(), projection: c.projection.clone(), nth: c.nth }));
    }
    for u in &ops.upgrade {
        out.push((u.at_ms, Step::Upgrade { node: u.node.clone(), cut_after_ops: u.cut_after_ops }));
    }
    for c in &ops.effects_crash {
        out.push((c.at_ms, Step::CrashEffects { down_ms: c.down_ms }));
    }
    for p in &ops.effects_partition {
        out.push((p.at_ms, Step::PartitionEffects { ms: p.ms }));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The world's side

/// What the world and a device's successive processes share about the device's store work.
#[derive(Default)]
struct DeviceState {
    /// The saga failpoint armed for the next delivery.
    saga_crash: Option<SagaPoint>,
    /// The device installed the version 2 schema: every start migrates.
    upgraded: bool,
    /// The world healed: no more power cuts.
    healed: bool,
    /// What the end-of-run audit found.
    steps: Vec<SagaStepFact>,
    count: Option<SagaCount>,
    bundle: Option<Vec<u8>>,
}

/// One device's share of the store work.
pub struct DeviceOps {
    plan: Option<OpsPlan>,
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
    state: Mutex<DeviceState>,
}

impl DeviceOps {
    /// A device with no store work (plans without it, drills).
    pub fn none() -> Arc<DeviceOps> {
        Arc::new(DeviceOps { plan: None, counts: Arc::default(), state: Mutex::default() })
    }

    pub(crate) fn count(&self, kind: &str) {
        *lock(&self.counts).entry(kind.into()).or_default() += 1;
    }

    fn has(&self, bug: Bug) -> bool {
        self.plan.as_ref().is_some_and(|p| p.bugs.contains(&bug))
    }
}

/// The store work of a world: the effects node and every device's share.
pub struct OpsWorld {
    plan: Option<OpsPlan>,
    effects: Option<NodeId>,
    slot: Arc<Mutex<Option<Receiver>>>,
    devices: BTreeMap<String, Arc<DeviceOps>>,
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
    shared: SharedRef,
}

pub(crate) struct EffectsCtx {
    pub(crate) slot: Arc<Mutex<Option<Receiver>>>,
    pub(crate) shared: SharedRef,
}

impl OpsWorld {
    /// Sets up the store work of `plan`: with any, the effects node (added to `nodes`, so its
    /// disk is scanned and healed like the others).
    pub fn create(handle: &madsim::runtime::Handle, plan: &Plan, shared: &SharedRef, seeds: &SeedTree, nodes: &mut Nodes) -> OpsWorld {
        let ops = plan.store.as_ref().and_then(|s| s.ops.clone());
        let slot = Arc::new(Mutex::new(None));
        let counts: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let effects = ops.as_ref().map(|_| {
            let ctx = Arc::new(EffectsCtx { slot: slot.clone(), shared: shared.clone() });
            let node = handle.create_node().name(EFFECTS_NODE).ip(EFFECTS_IP).init(move || effects_main(ctx.clone())).build();
            nodes.add(EFFECTS_NODE, node.id(), plan.knobs.disk.crash, seeds);
            record(shared, EFFECTS_NODE, "node.start", json!({"thresholds": ops.as_ref().map(|o| o.saga_thresholds.clone())}), None);
            node.id()
        });
        let devices = plan
            .clients
            .iter()
            .map(|c| {
                let d = DeviceOps { plan: ops.clone(), counts: counts.clone(), state: Mutex::default() };
                (c.name.clone(), Arc::new(d))
            })
            .collect();
        OpsWorld { plan: ops, effects, slot, devices, counts, shared: shared.clone() }
    }

    /// Device `name`'s share, for its process.
    pub fn device(&self, name: &str) -> Arc<DeviceOps> {
        self.devices.get(name).cloned().unwrap_or_else(DeviceOps::none)
    }

    /// Plays one step.
    pub fn apply(&self, step: Step, nodes: &Nodes, mailboxes: &BTreeMap<String, Arc<Mutex<Mailbox>>>) {
        let node = match &step {
            Step::ArmSagaCrash { node, .. } | Step::CorruptArtifact { node } | Step::CorruptProjection { node, .. } | Step::Upgrade { node, .. } => {
                node.clone()
            }
            // The world plays the effects node's faults (see `run.rs`).
            Step::CrashEffects { .. } | Step::PartitionEffects { .. } => return,
        };
        if nodes.is_down(&node) {
            trace::emit(&node, "op.skipped", json!({"reason": "device is down", "store_step": format!("{step:?}")}));
            return;
        }
        let push = |c: Cmd| lock(&mailboxes[&node]).push(Command::Store(c));
        match step {
            Step::ArmSagaCrash { point, .. } => {
                lock(&self.devices[&node].state).saga_crash = Some(point);
                trace::emit(&node, "fault.saga_crash_armed", json!({"point": point}));
            }
            Step::CorruptArtifact { .. } => match DiskSim::current().flip_bit(nodes.id(&node), ".idx") {
                Some((file, offset, bit)) => {
                    *lock(&self.counts).entry("artifact.corrupt".into()).or_default() += 1;
                    trace::emit(&node, "fault.artifact_corrupt", json!({"file": file, "offset": offset, "bit": bit}));
                }
                None => {
                    trace::emit(&node, "fault.artifact_corrupt", json!({"file": null, "why": "no artifact yet"}));
                }
            },
            Step::CorruptProjection { projection, nth, .. } => push(Cmd::CorruptProjection { projection, nth }),
            Step::Upgrade { cut_after_ops, .. } => push(Cmd::Upgrade { cut_after_ops }),
            Step::CrashEffects { .. } | Step::PartitionEffects { .. } => {}
        }
    }

    /// The heal: no armed failpoint fires any more (a power cut after the heal would leave the
    /// device down).
    pub fn heal(&self) {
        for d in self.devices.values() {
            let mut s = lock(&d.state);
            s.healed = true;
            s.saga_crash = None;
        }
    }

    /// Counts a fault of the effects node that happened (the world plays them).
    pub fn count(&self, kind: &str) {
        *lock(&self.counts).entry(kind.into()).or_default() += 1;
    }

    /// Whether the world has an effects node.
    pub fn has_effects_node(&self) -> bool {
        self.effects.is_some()
    }

    /// Adds the faults that happened to the run's counts.
    pub fn add_counts(&self, counts: &mut BTreeMap<String, u64>) {
        for (k, n) in lock(&self.counts).iter() {
            *counts.entry(k.clone()).or_default() += n;
        }
    }

    /// After every device's audit: the receiver's record next to the devices' sagas (INV-ONCE),
    /// and every diagnostics bundle into the scan (INV-NO-PLAINTEXT).
    pub async fn judge(&self, converged: bool, secrets: &[drill_model::secrets::Secret], line: u64) {
        let Some(plan) = &self.plan else { return };
        for (name, d) in &self.devices {
            if let Some(bundle) = lock(&d.state).bundle.take() {
                let images = vec![(format!("{name}:diagnostics.json"), bundle)];
                let fact = StoreFact::Scan { node: name.clone(), images, secrets: secrets.to_vec() };
                observe(&self.shared, Fact::Store(fact), line);
            }
        }
        let (applied, log) = match self.receiver_record().await {
            Ok(r) => r,
            Err(e) => {
                trace::emit(EFFECTS_NODE, "check.effects_unreadable", json!({"why": e}));
                return;
            }
        };
        let mut facts =
            EffectsFacts { node: EFFECTS_NODE.into(), thresholds: plan.saga_thresholds.clone(), applied, log, settled: converged, ..EffectsFacts::default() };
        for d in self.devices.values() {
            let s = lock(&d.state);
            facts.steps.extend(s.steps.iter().cloned());
            match &s.count {
                Some(c) => facts.counts.push(c.clone()),
                // A device that did not finish its audit cannot vouch for its sagas.
                None => facts.settled = false,
            }
        }
        let line = trace::emit(EFFECTS_NODE, "check.effects", json!({"applied": facts.applied.len(), "deliveries": facts.log.len(), "settled": facts.settled}));
        observe(&self.shared, Fact::Store(StoreFact::Effects(facts)), line);
    }

    async fn receiver_record(&self) -> Result<(Vec<String>, Vec<DeliveryFact>), String> {
        let id = self.effects.ok_or("no effects node")?;
        let node = madsim::runtime::Handle::current().get_node(id).ok_or("the effects node is gone")?;
        let slot = self.slot.clone();
        let task = node.spawn(async move {
            let guard = lock(&slot);
            let r = guard.as_ref().ok_or("the receiver is not open")?;
            let applied = r.applied().map_err(|e| e.to_string())?;
            let log = r.log().map_err(|e| e.to_string())?.into_iter().map(|d| DeliveryFact { effect_id: d.effect_id, applied: d.applied }).collect();
            Ok::<_, String>((applied, log))
        });
        task.await.map_err(|e| format!("effects task failed: {e}"))?
    }
}

// ---------------------------------------------------------------------------------------------
// The effects node

#[derive(Debug, Serialize, Deserialize)]
struct EffectRequest {
    id: u64,
    effect_id: String,
    body: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct EffectAnswer {
    id: u64,
    first_time: Option<bool>,
    code: Option<String>,
    detail: Option<String>,
}

/// The effects node's process: the receiver in its own database, answering deliveries.
pub(crate) async fn effects_main(ctx: Arc<EffectsCtx>) {
    // The receiver of a process that died with its node is gone with it (its handles belong to
    // an earlier crash generation of the disk, which refuses them).
    drop(lock(&ctx.slot).take());
    let mut receiver = None;
    for attempt in 1..=1_000u32 {
        match store::open(EFFECTS_DB).and_then(Receiver::open) {
            Ok(r) => {
                receiver = Some(r);
                break;
            }
            Err(e) => {
                record(&ctx.shared, EFFECTS_NODE, "node.open_failed", json!({"attempt": attempt, "code": e.code(), "message": e.to_string()}), None);
                madsim::time::sleep(Duration::from_millis(50 * u64::from(attempt.min(20)))).await;
            }
        }
    }
    let Some(receiver) = receiver else { return };
    let applied = receiver.applied().map(|a| a.len()).unwrap_or(0);
    record(&ctx.shared, EFFECTS_NODE, "node.recovered", json!({"applied": applied}), None);
    *lock(&ctx.slot) = Some(receiver);
    let ep = match Endpoint::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), EFFECTS_PORT)).await {
        Ok(ep) => ep,
        Err(e) => return record(&ctx.shared, EFFECTS_NODE, "node.bind_failed", json!({"message": e.to_string()}), None),
    };
    loop {
        let Ok((payload, from)) = ep.recv_from_raw(TAG_EFFECT).await else { return };
        let Ok(bytes) = payload.downcast::<Vec<u8>>() else { continue };
        let Ok(req) = serde_json::from_slice::<EffectRequest>(&bytes) else { continue };
        let outcome = match lock(&ctx.slot).as_mut() {
            Some(r) => r.deliver(&req.effect_id, &req.body),
            None => Err(EffectError::Unavailable { detail: "the receiver is closed".into() }),
        };
        let answer = match &outcome {
            Ok(d) => EffectAnswer { id: req.id, first_time: Some(d.first_time), code: None, detail: None },
            Err(e) => EffectAnswer { id: req.id, first_time: None, code: Some(e.code().into()), detail: Some(e.to_string()) },
        };
        let detail = json!({"effect_id": req.effect_id, "first_time": answer.first_time, "code": answer.code});
        record(&ctx.shared, EFFECTS_NODE, "effects.delivery", detail, None);
        let out = serde_json::to_vec(&answer).expect("an answer serializes");
        if ep.send_to_raw(from, TAG_EFFECT_ANSWER, Box::new(out)).await.is_err() {
            return;
        }
    }
}

/// The simulated instant now, from madsim's time handle (never the machine's clock).
fn now() -> madsim::time::Instant {
    madsim::time::TimeHandle::current().now_instant()
}

/// A device's connection to the effects node.
pub(crate) struct EffectsClient {
    ep: Endpoint,
    next_id: u64,
}

impl EffectsClient {
    pub(crate) async fn bind(boots: u64) -> Option<EffectsClient> {
        let ep = Endpoint::bind("0.0.0.0:0").await.ok()?;
        Some(EffectsClient { ep, next_id: boots << 32 })
    }

    /// Sends one effect and waits for the receiver's answer; no answer in time is
    /// `saga:effectUnavailable` (the receiver may or may not have applied it).
    pub(crate) async fn deliver(&mut self, effect_id: &str, body: &str) -> Result<Delivered, EffectError> {
        self.next_id += 1;
        let id = self.next_id;
        let unavailable = |detail: String| EffectError::Unavailable { detail };
        let req = serde_json::to_vec(&EffectRequest { id, effect_id: effect_id.into(), body: body.into() }).expect("a request serializes");
        let to = SocketAddr::new(EFFECTS_IP, EFFECTS_PORT);
        self.ep.send_to_raw(to, TAG_EFFECT, Box::new(req)).await.map_err(|e| unavailable(format!("send: {e}")))?;
        let deadline = now() + Duration::from_millis(EFFECT_TIMEOUT_MS);
        for _ in 0..STALE_ANSWERS_MAX {
            let left = deadline.saturating_duration_since(now());
            let (payload, _) = match madsim::time::timeout(left, self.ep.recv_from_raw(TAG_EFFECT_ANSWER)).await {
                Err(_) => return Err(unavailable(format!("no answer within {EFFECT_TIMEOUT_MS} ms"))),
                Ok(Err(e)) => return Err(unavailable(format!("recv: {e}"))),
                Ok(Ok(x)) => x,
            };
            let Ok(bytes) = payload.downcast::<Vec<u8>>() else { continue };
            let Ok(a) = serde_json::from_slice::<EffectAnswer>(&bytes) else { continue };
            if a.id != id {
                continue;
            }
            return match (a.first_time, a.code.as_deref()) {
                (Some(first_time), _) => Ok(Delivered { first_time }),
                (None, Some("saga:effectRejected")) => Err(EffectError::Rejected { detail: a.detail.unwrap_or_default() }),
                _ => Err(unavailable(a.detail.unwrap_or_default())),
            };
        }
        Err(unavailable("too many stale answers".into()))
    }
}

// ---------------------------------------------------------------------------------------------
// The device's side

/// A device process's store work.
pub struct Device {
    ops: Arc<DeviceOps>,
    node: NodeId,
    fs: SimFs,
    effects: Option<EffectsClient>,
    nonces: drill_sim::rng::Stream,
    errors: ErrorLog,
    /// What the last verification found good, for the next one to replay only the events
    /// after it; `None` until a snapshot follows a verification that found (or left) the
    /// projections consistent.
    verified: Option<VerifiedSnapshots>,
    /// Whether the last verification found the projections consistent or rebuilt them.
    consistent: bool,
}

impl Device {
    /// At boot, after the store opened and its projections caught up, before the model reads
    /// them: resume the migration of an upgraded device, verify the projections, check the
    /// artifact, and reconcile the sagas (runbook 000: on start).
    pub async fn boot(ctx: &ClientCtx, client: &mut Client) -> Device {
        let start = *lock(&ctx.starts);
        let node = madsim::plugin::node();
        let nonces = ctx.seeds.child(&format!("device/{}/start-{start}/store-ops", ctx.name)).stream("artifact-nonces");
        let mut d = Device {
            ops: ctx.parts.arc::<DeviceOps>(),
            node,
            fs: SimFs::current(),
            effects: None,
            nonces,
            errors: ErrorLog::new(ERROR_LOG_CAPACITY),
            verified: None,
            consistent: false,
        };
        if d.ops.plan.is_none() {
            return d;
        }
        d.effects = EffectsClient::bind(client.boots()).await;
        if lock(&d.ops.state).upgraded {
            if d.ops.has(Bug::SkipMigrationResume) {
                record(&ctx.shared, &ctx.name, "store.migration_skipped", json!({"bug": "skip_migration_resume"}), None);
            } else {
                d.migrate(ctx, client, None);
            }
        }
        d.verify(ctx, client);
        d.artifact(ctx, client);
        d.saga_round(ctx, client).await;
        d
    }

    /// Before a snapshot of the projections: verify them, so that no snapshot holds a corrupt
    /// row. (Verifying replays the device's history, from the last snapshot a verification
    /// found good when there is one: it runs at boot, before snapshots and at the audit, not
    /// around every sync.)
    pub fn before_snapshot(&mut self, ctx: &ClientCtx, client: &mut Client) {
        if self.ops.plan.is_some() {
            self.verify(ctx, client);
        }
    }

    /// After the snapshots `ids` were taken right after [`Device::before_snapshot`]: when the
    /// verification found the projections consistent (or rebuilt them), the next one starts
    /// from these snapshots.
    pub fn after_snapshot(&mut self, client: &Client, ids: &[u64]) {
        if self.ops.plan.is_none() {
            return;
        }
        self.verified = if self.consistent { client.verified_snapshots(ids).ok() } else { None };
    }

    /// After a sync attempt: finish a deferred migration, refresh the artifact, and (when the
    /// sync went through) run the sagas.
    pub async fn after_sync(&mut self, ctx: &ClientCtx, client: &mut Client, synced: bool) {
        if self.ops.plan.is_none() {
            return;
        }
        let pending = lock(&self.ops.state).upgraded && migrate::version(client.db()).ok() != Some(migrate::CURRENT);
        if pending && client.mode().ok() != Some(Mode::ReadOnly) && !self.ops.has(Bug::SkipMigrationResume) {
            self.migrate(ctx, client, None);
        }
        self.artifact(ctx, client);
        if synced {
            self.saga_round(ctx, client).await;
        }
    }

    /// A command from the world.
    pub fn command(&mut self, ctx: &ClientCtx, client: &mut Client, cmd: Cmd) {
        match cmd {
            Cmd::CorruptProjection { projection, nth } => self.corrupt_projection(ctx, client, &projection, nth),
            Cmd::Upgrade { cut_after_ops } => {
                lock(&self.ops.state).upgraded = true;
                record(&ctx.shared, &ctx.name, "store.upgrade", json!({"to_version": migrate::CURRENT, "cut_after_ops": cut_after_ops}), None);
                // A migration changes what READ_ONLY must keep still (the recorded version): it
                // waits for the mode to end.
                if client.mode().ok() == Some(Mode::ReadOnly) {
                    return record(&ctx.shared, &ctx.name, "store.migration_deferred", json!({"mode": "READ_ONLY"}), None);
                }
                self.migrate(ctx, client, cut_after_ops);
            }
        }
    }

    /// Runs the migration; with `cut_after_ops`, the power is cut at that disk operation of it.
    fn migrate(&mut self, ctx: &ClientCtx, client: &mut Client, cut_after_ops: Option<u32>) {
        let disk = DiskSim::current();
        let cut = cut_after_ops.filter(|_| !lock(&self.ops.state).healed);
        if let Some(n) = cut {
            disk.arm_power_cut(self.node, u64::from(n));
        }
        let result = migrate::run(client.db(), &NodeClock(self.node));
        if disk.is_known_and_down(self.node) {
            // The power went in the middle of it: this process is gone, the next start resumes.
            if cut.is_some() {
                self.ops.count("migration.crash");
            }
            return;
        }
        if cut.is_some() {
            disk.disarm_power_cut(self.node);
        }
        let name = ctx.name.as_str();
        match result {
            Ok(m) => {
                let resumed = m.resumed_from.map(|s| format!("{s:?}"));
                let detail = json!({"from": m.from_version, "to": m.to_version, "resumed_from": resumed, "restarted": m.restarted, "rows": m.rows, "cut_missed": cut.is_some()});
                record(&ctx.shared, name, "store.migrated", detail, None);
            }
            Err(e) => {
                self.errors.record(&NodeClock(self.node), e.code());
                record(&ctx.shared, name, "op.err", json!({"action": "migrate", "code": e.code(), "message": e.to_string()}), None);
            }
        }
    }

    /// A buggy write: one projection row changed behind the engine's back.
    fn corrupt_projection(&mut self, ctx: &ClientCtx, client: &mut Client, projection: &str, nth: u32) {
        let (table, key, column) = match projection {
            "aggregate_state" => ("proj_aggregate_state", "aggregate", "events"),
            _ => ("proj_tenant_counters", "kind", "count"),
        };
        let db = client.db();
        let keys: Vec<String> = match db.prepare(&format!("SELECT {key} FROM {table} WHERE tenant = ?1 ORDER BY {key}")) {
            Ok(mut st) => st.query_map([&ctx.tenant], |r| r.get(0)).map(|rows| rows.filter_map(Result::ok).collect()).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let Some(row) = (!keys.is_empty()).then(|| keys[nth as usize % keys.len()].clone()) else {
            return record(&ctx.shared, &ctx.name, "fault.projection_corrupt", json!({"projection": projection, "row": null, "why": "no rows yet"}), None);
        };
        let sql = format!("UPDATE {table} SET {column} = {column} + 1 WHERE tenant = ?1 AND {key} = ?2");
        match db.execute(&sql, [&ctx.tenant, &row]) {
            Ok(1) => {
                self.ops.count("projection.corrupt");
                record(&ctx.shared, &ctx.name, "fault.projection_corrupt", json!({"projection": projection, "row": row}), None);
            }
            Ok(_) => record(&ctx.shared, &ctx.name, "fault.projection_corrupt", json!({"projection": projection, "row": row, "why": "not changed"}), None),
            Err(e) => record(&ctx.shared, &ctx.name, "fault.projection_corrupt", json!({"projection": projection, "row": row, "why": e.to_string()}), None),
        }
    }

    /// Verifies every projection against a replay of the device's events into a scratch
    /// database; an inconsistent one is marked unhealthy and the tenant's projections are
    /// rebuilt (runbook 004 §6.2), then the model checks them.
    fn verify(&mut self, ctx: &ClientCtx, client: &mut Client) {
        let name = ctx.name.as_str();
        self.consistent = false;
        let inconsistent = match inconsistent_projections_since(client, self.verified.as_ref()) {
            Ok(v) => v,
            Err(e) => return record(&ctx.shared, name, "store.verify_failed", json!({"message": e}), None),
        };
        if inconsistent.is_empty() {
            self.consistent = true;
            return;
        }
        for (p, why) in &inconsistent {
            let _ = client.engine().mark_unhealthy(client.db(), p, "projection:inconsistent");
            self.errors.record(&NodeClock(self.node), "projection:inconsistent");
            let unhealthy = client.health(EventStoreStatus::Writable).map(|h| h.unhealthy_projections).unwrap_or_default();
            record(&ctx.shared, name, "store.projection_unhealthy", json!({"projection": p, "why": why, "unhealthy": unhealthy}), None);
        }
        if self.ops.has(Bug::SkipProjectionRepair) {
            return record(&ctx.shared, name, "store.projection_repair_skipped", json!({"bug": "skip_projection_repair"}), None);
        }
        let scope = Scope { tenant: Some(ctx.tenant.clone()), ..Scope::default() };
        match client.rebuild_projections(&scope) {
            Ok(r) => {
                self.consistent = true;
                record(&ctx.shared, name, "store.projection_rebuilt", json!({"applied": r.applied}), None);
                check_rebuilt(ctx, client);
                // The index artifact is derived from the projections: one built from the corrupt
                // rows is rebuilt with them.
                if let Some(key) = artifact_key(client) {
                    if let Err(e) = artifacts::rebuild(client.db(), &self.fs, client.engine(), &key, &ctx.tenant, &mut self.nonces) {
                        record(&ctx.shared, name, "op.err", json!({"action": "artifact_rebuild", "code": e.code(), "message": e.to_string()}), None);
                    }
                }
            }
            Err(e) => record(&ctx.shared, name, "op.err", json!({"action": "rebuild", "code": e.code(), "message": e.to_string()}), None),
        }
    }

    /// Loads the tenant's artifact and rebuilds it when it is missing, stale or corrupt.
    fn artifact(&mut self, ctx: &ClientCtx, client: &mut Client) {
        let Some(key) = artifact_key(client) else { return };
        let (db, engine, tenant) = (client.db(), client.engine(), ctx.tenant.as_str());
        if self.ops.has(Bug::SkipArtifactRebuild) {
            if let Err(e @ ArtifactError::Corrupt { .. }) = artifacts::load(&self.fs, &key, tenant) {
                return record(
                    &ctx.shared,
                    &ctx.name,
                    "store.artifact_corrupt",
                    json!({"code": e.code(), "rebuilt": false, "bug": "skip_artifact_rebuild"}),
                    None,
                );
            }
        }
        match artifacts::load_or_rebuild(db, &self.fs, engine, &key, tenant, &mut self.nonces) {
            Ok(r) => {
                if let Some(e @ ArtifactError::Corrupt { .. }) = &r.found {
                    self.errors.record(&NodeClock(self.node), e.code());
                    record(&ctx.shared, &ctx.name, "store.artifact_corrupt", json!({"code": e.code(), "rebuilt": true, "message": e.to_string()}), None);
                }
            }
            Err(e) => {
                self.errors.record(&NodeClock(self.node), e.code());
                record(&ctx.shared, &ctx.name, "op.err", json!({"action": "artifact", "code": e.code(), "message": e.to_string()}), None);
            }
        }
    }

    /// One saga round: record the requests the counts call for, then deliver everything not
    /// `done` (the reconcile of runbook 000). An armed failpoint cuts the power inside it.
    async fn saga_round(&mut self, ctx: &ClientCtx, client: &mut Client) -> Option<usize> {
        let plan = self.ops.plan.clone()?;
        let name = ctx.name.as_str();
        let clock = NodeClock(self.node);
        let db = client.db();
        let count = saga::tenant_counts(db).ok()?.get(&ctx.tenant).copied().unwrap_or(0);
        for t in &plan.saga_thresholds {
            match AchievementSaga::new(*t).observe(db, &ctx.tenant, count, &clock) {
                Ok(Some(id)) => record(&ctx.shared, name, "store.saga_requested", json!({"effect_id": id, "count": count}), None),
                Ok(None) => {}
                Err(e) => {
                    self.errors.record(&clock, e.code());
                    return None;
                }
            }
        }
        let mut begun = match saga::begin_deliveries(db, &clock) {
            Ok(b) => b,
            Err(e) => {
                self.errors.record(&clock, e.code());
                return None;
            }
        };
        if self.ops.has(Bug::SkipSagaRedelivery) {
            begun.retain(|s| s.attempts == 1);
        }
        if !begun.is_empty() && self.cut_saga(ctx, SagaPoint::BeforeEffect, &begun[0].effect_id) {
            return None;
        }
        let mut fx = self.effects.take()?;
        let result = self.deliver(ctx, client, &mut fx, begun).await;
        self.effects = Some(fx);
        result
    }

    /// Sends each begun step and records the answer; `None` when the round stopped early.
    async fn deliver(&mut self, ctx: &ClientCtx, client: &mut Client, fx: &mut EffectsClient, begun: Vec<saga::Step>) -> Option<usize> {
        let name = ctx.name.as_str();
        let clock = NodeClock(self.node);
        let mut failed = 0;
        for step in begun {
            let outcome = fx.deliver(&step.effect_id, &step.body).await;
            if outcome.is_ok() && self.cut_saga(ctx, SagaPoint::BeforeDone, &step.effect_id) {
                return None;
            }
            if let Err(e) = saga::finish_delivery(client.db(), &step.effect_id, &outcome, &clock) {
                self.errors.record(&clock, e.code());
                return None;
            }
            match &outcome {
                Ok(d) => record(
                    &ctx.shared,
                    name,
                    "store.saga_delivered",
                    json!({"effect_id": step.effect_id, "first_time": d.first_time, "attempts": step.attempts}),
                    None,
                ),
                Err(e) => {
                    failed += 1;
                    self.errors.record(&clock, e.code());
                    record(&ctx.shared, name, "store.saga_failed", json!({"effect_id": step.effect_id, "code": e.code()}), None);
                }
            }
        }
        Some(failed)
    }

    /// Cuts the power here when the failpoint armed for this device is `point`: a real crash,
    /// at the next disk operation, that ends this process.
    fn cut_saga(&mut self, ctx: &ClientCtx, point: SagaPoint, effect_id: &str) -> bool {
        {
            let mut s = lock(&self.ops.state);
            if s.healed || s.saga_crash != Some(point) {
                return false;
            }
            s.saga_crash = None;
        }
        record(&ctx.shared, &ctx.name, "fault.saga_crash", json!({"point": point, "effect_id": effect_id}), None);
        self.ops.count("saga.crash");
        let disk = DiskSim::current();
        disk.arm_power_cut(self.node, 1);
        let _ = self.fs.exists(DEVICE_DB);
        disk.is_known_and_down(self.node)
    }

    /// The end-of-run audit: the sagas run to the end, then the model gets the device's saga
    /// steps and count, its artifact, its schema, and its diagnostics bundle.
    pub async fn audit(&mut self, ctx: &ClientCtx, client: &mut Client) {
        if self.ops.plan.is_none() {
            return;
        }
        // The model reads the projections next: a corruption since the last verification is
        // found and repaired first, as at boot.
        self.verify(ctx, client);
        for _ in 0..FINAL_SAGA_ROUNDS_MAX {
            let pending = saga::steps(client.db()).map(|s| s.iter().any(|s| s.state != saga::State::Done)).unwrap_or(false);
            match self.saga_round(ctx, client).await {
                Some(0) if !pending => break,
                _ => {}
            }
        }
        let name = ctx.name.as_str();
        let readable = client.events().map(|es| es.iter().filter(|e| e.tenant == ctx.tenant && client.open_payload(e).is_ok()).count() as u64);
        let steps = saga::steps(client.db());
        if let (Ok(readable), Ok(steps)) = (readable, steps) {
            let mut s = lock(&self.ops.state);
            s.count = Some(SagaCount { device: name.into(), tenant: ctx.tenant.clone(), readable_events: readable });
            s.steps = steps
                .into_iter()
                .map(|st| SagaStepFact { device: name.into(), tenant: st.tenant, effect_id: st.effect_id, state: st.state.as_str().into() })
                .collect();
        }
        let mut facts = Vec::new();
        if let Some(f) = self.artifact_facts(ctx, client) {
            facts.push(StoreFact::Artifact(f));
        }
        let upgraded = lock(&self.ops.state).upgraded;
        let version = migrate::version(client.db()).ok();
        let in_progress = migrate::pending(client.db()).map(|p| p.is_some()).unwrap_or(true);
        facts.push(StoreFact::Migration(MigrationFacts { node: name.into(), upgraded, target: migrate::CURRENT, version, in_progress }));
        observe_store(ctx, "store_ops", facts);
        let bundle = self.bundle(ctx, client);
        lock(&self.ops.state).bundle = bundle;
    }

    fn artifact_facts(&self, ctx: &ClientCtx, client: &Client) -> Option<ArtifactFacts> {
        let key = artifact_key(client)?;
        let events = client.events().ok()?;
        let plain = opened_events(client, &events);
        let keys_present: BTreeSet<String> = client.keys().ring.aggregates().ok()?.into_iter().collect();
        let incomplete = client.incomplete().ok()?.into_iter().filter(|i| i.projection == artifacts::SOURCE).map(|i| i.aggregate).collect();
        let loaded = artifacts::load(&self.fs, &key, &ctx.tenant)
            .map(|index| ArtifactRead {
                through_seq: index.through_seq,
                rows: index.entries.into_iter().map(|e| vec![e.aggregate, e.events.to_string(), e.last_seq.to_string(), e.last_kind, e.digest]).collect(),
            })
            .map_err(|e| e.code().to_string());
        Some(ArtifactFacts { node: ctx.name.clone(), tenant: ctx.tenant.clone(), events: plain, keys_present, incomplete, loaded })
    }

    /// Exports the diagnostics bundle and proves it against every secret the device holds.
    fn bundle(&self, ctx: &ClientCtx, client: &Client) -> Option<Vec<u8>> {
        let clock = NodeClock(self.node);
        let keys = match &client.keys().ring {
            Ring::Store(ks) => Some(&**ks),
            Ring::Fixed(_) => None,
        };
        let probe = health::probe(client.db(), &clock, health::SLOW_MS_MIN);
        let sources =
            Sources { db: client.db(), engine: client.engine(), keys, files: Some(&self.fs as &dyn FileSystem), errors: &self.errors, event_store: probe };
        let mut bytes = match diagnostics::export(&sources, &clock) {
            Ok(b) => b.to_json(),
            Err(e) => {
                record(&ctx.shared, &ctx.name, "check.diagnostics", json!({"exported": false, "code": e.code(), "message": e.to_string()}), None);
                return None;
            }
        };
        let mut secrets: Vec<Vec<u8>> = Vec::new();
        if let Some(ks) = keys {
            secrets.extend(ks.identity_key().ok().map(|k| k.as_bytes().to_vec()));
            for a in ks.aggregates().unwrap_or_default() {
                secrets.extend(ks.aggregate_key(&a).ok().map(|k| k.as_bytes().to_vec()));
            }
        }
        let plaintexts: Vec<Vec<u8>> = client.events().unwrap_or_default().iter().filter_map(|e| client.open_payload(e).ok()).collect();
        if self.ops.has(Bug::LeakInBundle) {
            if let Some(p) = plaintexts.first() {
                bytes.extend_from_slice(p);
            }
        }
        secrets.extend(plaintexts);
        let refs: Vec<&[u8]> = secrets.iter().map(Vec::as_slice).collect();
        let detail = match diagnostics::check_bundle(&bytes, &refs) {
            Ok(c) => json!({"exported": true, "bytes": bytes.len(), "secrets": c.secrets, "too_short": c.too_short, "ok": true}),
            Err(e) => json!({"exported": true, "bytes": bytes.len(), "ok": false, "code": e.code(), "message": e.to_string()}),
        };
        record(&ctx.shared, &ctx.name, "check.diagnostics", detail, None);
        Some(bytes)
    }
}

/// Hands the model the device's projections right after a full rebuild of its tenant.
fn check_rebuilt(ctx: &ClientCtx, client: &Client) {
    match store_facts(ctx, client) {
        Ok(mut facts) => {
            for f in &mut facts {
                if let StoreFact::Projection(p) = f {
                    p.rebuilt = true;
                }
            }
            observe_store(ctx, "projection_repaired", facts);
        }
        Err(e) => record(&ctx.shared, &ctx.name, "check.store_unreadable", json!({"message": e}), None),
    }
}

/// The key the device's artifacts are sealed under, when its keys are in a key store.
pub(crate) fn artifact_key(client: &Client) -> Option<drill_stack::crypto::Key> {
    match &client.keys().ring {
        Ring::Store(ks) => ks.identity_key().ok().map(|k| artifacts::artifact_key(&k)),
        Ring::Fixed(_) => None,
    }
}

/// The projections that differ from a replay of the device's events (the stack's
/// [`verify`](drill_stack::projections::verify::verify)), with the first difference.
pub(crate) fn inconsistent_projections(client: &Client) -> Result<Vec<(&'static str, String)>, String> {
    inconsistent_projections_since(client, None)
}

/// [`inconsistent_projections`], replaying from the snapshots an earlier verification found
/// good where that gives the same answer ([`Client::verify_projections`]).
fn inconsistent_projections_since(client: &Client, since: Option<&VerifiedSnapshots>) -> Result<Vec<(&'static str, String)>, String> {
    let found = client.verify_projections(since).map_err(|e| e.to_string())?;
    Ok(found.into_iter().map(|i| (i.projection, i.detail)).collect())
}

impl DevicePart for Device {
    fn after_sync<'a>(&'a mut self, ctx: &'a ClientCtx, client: &'a mut Client, synced: bool) -> Hook<'a> {
        Box::pin(Device::after_sync(self, ctx, client, synced))
    }

    fn before_snapshot(&mut self, ctx: &ClientCtx, client: &mut Client) {
        Device::before_snapshot(self, ctx, client);
    }

    fn after_snapshot(&mut self, client: &Client, ids: &[u64]) {
        Device::after_snapshot(self, client, ids);
    }

    fn command(&mut self, ctx: &ClientCtx, client: &mut Client, cmd: &Cmd) {
        Device::command(self, ctx, client, cmd.clone());
    }

    fn audit<'a>(&'a mut self, ctx: &'a ClientCtx, client: &'a mut Client, _converged: bool) -> Hook<'a> {
        Box::pin(Device::audit(self, ctx, client))
    }
}

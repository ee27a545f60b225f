//! Sagas (runbook 000, "Saga stuck state"): a process that persists its own state in the
//! device's database and performs an external effect, exactly once across crashes.
//!
//! The saga here is the runbook's example: once a tenant's event count reaches a threshold, an
//! achievement is requested from an external service. Each effect has a deterministic id
//! (`achievement/<tenant>/<threshold>`), and the receiving side applies an id at most once
//! ([`Receiver`]), so delivering it again is harmless. The saga's state moves
//! `requested → delivering → done`, each step its own committed transaction:
//!
//! 1. [`AchievementSaga::observe`] records `requested` when the count passes the threshold;
//! 2. [`drive`] records `delivering`, calls [`EffectSink::deliver`], then records `done`
//!    ([`begin_deliveries`] and [`finish_delivery`] are the same two halves, for a caller that
//!    sends the effect asynchronously).
//!
//! A crash can stop it between any two of these. [`reconcile`], called on start, re-derives the
//! requests from the counts (so even cleared saga tables are rebuilt: the runbook's manual
//! recovery) and re-runs everything not `done`. A crash between the saga state and the effect
//! leaves `delivering` with no effect: the re-run performs it. A crash between the effect and the
//! state update leaves `delivering` with the effect applied: the re-run is a duplicate the
//! receiver recognises, and the saga records `done`. Either way the effect happens once.
//!
//! Saga writes are commands: READ_ONLY refuses them with `store:readOnly` and nothing changes.

use std::collections::BTreeMap;
use std::fmt;

use rusqlite::{Connection, OptionalExtension};

use crate::clock::Clock;
use crate::error::StoreError;
use crate::projections::resilience::{self, Write};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS saga_state(
    effect_id TEXT PRIMARY KEY, saga TEXT NOT NULL, tenant TEXT NOT NULL, state TEXT NOT NULL,
    body TEXT NOT NULL, requested_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL, last_error TEXT);
";

/// Where a saga step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    /// The effect is wanted; no delivery has started.
    Requested,
    /// A delivery started; whether the receiver applied it is unknown until the next one.
    Delivering,
    /// The receiver acknowledged the effect.
    Done,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Requested => "requested",
            State::Delivering => "delivering",
            State::Done => "done",
        }
    }

    fn parse(s: &str) -> Result<State, StoreError> {
        [State::Requested, State::Delivering, State::Done]
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| StoreError::Invalid { detail: format!("saga state {s}") })
    }
}

/// The points where a world's failpoint stops [`drive_with`], as a power cut there would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    /// After `delivering` is committed, before the effect is sent.
    BeforeEffect,
    /// After the receiver applied the effect, before `done` is committed.
    BeforeDone,
}

/// Why the receiving side did not take an effect. The saga stays `delivering` and the next
/// [`reconcile`] tries again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EffectError {
    /// The receiver did not answer (down, partitioned, timed out): it may or may not have applied it.
    Unavailable { detail: String },
    /// The receiver refused the effect.
    Rejected { detail: String },
}

impl EffectError {
    /// A short stable code for traces and diagnostics.
    pub fn code(&self) -> &'static str {
        match self {
            EffectError::Unavailable { .. } => "saga:effectUnavailable",
            EffectError::Rejected { .. } => "saga:effectRejected",
        }
    }
}

impl fmt::Display for EffectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EffectError::Unavailable { detail } => write!(f, "{}: the effect's receiver is unavailable: {detail}", self.code()),
            EffectError::Rejected { detail } => write!(f, "{}: the effect's receiver refused it: {detail}", self.code()),
        }
    }
}

impl std::error::Error for EffectError {}

/// What the receiver said about an effect it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// False when the receiver had already applied this effect id (a re-run after a crash).
    pub first_time: bool,
}

/// The external side of a saga: applies each effect id at most once.
pub trait EffectSink {
    fn deliver(&mut self, effect_id: &str, body: &str) -> Result<Delivered, EffectError>;
}

/// Why a saga operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaError {
    /// The store is READ_ONLY: nothing was recorded or delivered.
    ReadOnly,
    /// A failpoint stopped [`drive_with`] at `at`, as a crash would.
    Interrupted {
        effect_id: String,
        at: Crash,
    },
    Store(StoreError),
}

impl SagaError {
    /// A short stable code for traces and diagnostics.
    pub fn code(&self) -> &'static str {
        match self {
            SagaError::ReadOnly => "store:readOnly",
            SagaError::Interrupted { .. } => "saga:interrupted",
            SagaError::Store(e) => e.code(),
        }
    }
}

impl fmt::Display for SagaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SagaError::ReadOnly => write!(f, "{}", resilience::ReadOnly),
            SagaError::Interrupted { effect_id, at } => write!(f, "saga:interrupted: {effect_id} stopped at {at:?}: reconcile on start finishes it"),
            SagaError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SagaError {}

impl From<StoreError> for SagaError {
    fn from(e: StoreError) -> Self {
        SagaError::Store(e)
    }
}

impl From<rusqlite::Error> for SagaError {
    fn from(e: rusqlite::Error) -> Self {
        SagaError::Store(e.into())
    }
}

impl From<resilience::CheckError> for SagaError {
    fn from(e: resilience::CheckError) -> Self {
        match e {
            resilience::CheckError::ReadOnly(_) => SagaError::ReadOnly,
            resilience::CheckError::Store(s) => SagaError::Store(s),
        }
    }
}

/// One saga row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub effect_id: String,
    pub saga: String,
    pub tenant: String,
    pub state: State,
    pub body: String,
    pub requested_ms: i64,
    pub updated_ms: i64,
    /// Deliveries started.
    pub attempts: u64,
    /// The code of the last failed delivery.
    pub last_error: Option<String>,
}

/// What one [`drive`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriveReport {
    /// Effects the receiver applied for the first time.
    pub delivered: Vec<String>,
    /// Effects the receiver already had: a re-run after a crash, now recorded `done`.
    pub duplicates: Vec<String>,
    /// Effects whose delivery failed; they stay `delivering`.
    pub failed: Vec<(String, EffectError)>,
}

/// What one [`reconcile`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Requests recorded now (new, or rebuilt after the saga tables were cleared).
    pub requested: Vec<String>,
    pub drive: DriveReport,
}

/// Creates the saga table.
pub fn install(c: &Connection) -> Result<(), StoreError> {
    c.execute_batch(SCHEMA)?;
    Ok(())
}

/// The saga of runbook 000: an achievement once a tenant has `threshold` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AchievementSaga {
    pub threshold: u64,
}

impl AchievementSaga {
    pub const NAME: &'static str = "achievement";

    pub fn new(threshold: u64) -> AchievementSaga {
        assert!(threshold > 0, "an achievement needs at least one event");
        AchievementSaga { threshold }
    }

    /// The effect's id: the same for the same tenant and threshold on every run, so a request
    /// rebuilt after a crash or a cleared table is recognised by the receiver.
    pub fn effect_id(&self, tenant: &str) -> String {
        format!("{}/{tenant}/{}", Self::NAME, self.threshold)
    }

    /// The effect's body: ids and numbers only, never payloads.
    pub fn body(&self, tenant: &str) -> String {
        serde_json::json!({ "saga": Self::NAME, "tenant": tenant, "threshold": self.threshold }).to_string()
    }

    /// Records the request when `count` (the tenant's events) has reached the threshold and it
    /// is not recorded yet; returns its effect id when it recorded one. A command.
    pub fn observe(&self, c: &Connection, tenant: &str, count: u64, clock: &dyn Clock) -> Result<Option<String>, SagaError> {
        resilience::check_write(c, Write::Command)?;
        install(c)?;
        if count < self.threshold {
            return Ok(None);
        }
        let id = self.effect_id(tenant);
        let now = clock.now_unix_ms();
        let added = c.execute(
            "INSERT OR IGNORE INTO saga_state(effect_id, saga, tenant, state, body, requested_ms, updated_ms, attempts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, 0)",
            rusqlite::params![id, Self::NAME, tenant, State::Requested.as_str(), self.body(tenant), now],
        )?;
        Ok((added == 1).then_some(id))
    }
}

/// Every tenant's event count, from the `tenant_counters` projection (no tenant when the
/// projection was never installed). The projection may lag the events (DEGRADED switches it
/// off), which only delays a request: counts never go back below a recorded request.
pub fn tenant_counts(c: &Connection) -> Result<BTreeMap<String, u64>, StoreError> {
    let installed: bool = c.query_row("SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'proj_tenant_counters'", [], |r| r.get(0))?;
    if !installed {
        return Ok(BTreeMap::new());
    }
    let mut st = c.prepare("SELECT tenant, SUM(count) FROM proj_tenant_counters GROUP BY tenant ORDER BY tenant")?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every saga row, by effect id.
pub fn steps(c: &Connection) -> Result<Vec<Step>, StoreError> {
    install(c)?;
    let mut st = c.prepare("SELECT effect_id, saga, tenant, state, body, requested_ms, updated_ms, attempts, last_error FROM saga_state ORDER BY effect_id")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, i64>(5)?,
            r.get::<_, i64>(6)?,
            r.get::<_, u64>(7)?,
            r.get::<_, Option<String>>(8)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (effect_id, saga, tenant, state, body, requested_ms, updated_ms, attempts, last_error) = row?;
        out.push(Step { effect_id, saga, tenant, state: State::parse(&state)?, body, requested_ms, updated_ms, attempts, last_error });
    }
    Ok(out)
}

/// The effect ids the saga has recorded `done`.
pub fn done_effects(c: &Connection) -> Result<Vec<String>, StoreError> {
    Ok(steps(c)?.into_iter().filter(|s| s.state == State::Done).map(|s| s.effect_id).collect())
}

/// Delivers every effect not `done`. A command.
pub fn drive(c: &Connection, sink: &mut dyn EffectSink, clock: &dyn Clock) -> Result<DriveReport, SagaError> {
    drive_with(c, sink, clock, None)
}

/// [`drive`], stopped at `crash` (the first effect that reaches it) with
/// [`SagaError::Interrupted`]: what a power cut at that point leaves on disk.
pub fn drive_with(c: &Connection, sink: &mut dyn EffectSink, clock: &dyn Clock, crash: Option<Crash>) -> Result<DriveReport, SagaError> {
    let mut report = DriveReport::default();
    for step in begin_deliveries(c, clock)? {
        if crash == Some(Crash::BeforeEffect) {
            return Err(SagaError::Interrupted { effect_id: step.effect_id, at: Crash::BeforeEffect });
        }
        let outcome = sink.deliver(&step.effect_id, &step.body);
        if outcome.is_ok() && crash == Some(Crash::BeforeDone) {
            return Err(SagaError::Interrupted { effect_id: step.effect_id, at: Crash::BeforeDone });
        }
        finish_delivery(c, &step.effect_id, &outcome, clock)?;
        report.record(step.effect_id, outcome);
    }
    Ok(report)
}

impl DriveReport {
    fn record(&mut self, effect_id: String, outcome: Result<Delivered, EffectError>) {
        match outcome {
            Ok(d) if d.first_time => self.delivered.push(effect_id),
            Ok(_) => self.duplicates.push(effect_id),
            Err(e) => self.failed.push((effect_id, e)),
        }
    }
}

/// The external side of a saga across the network: one delivery, answered, refused or timed
/// out (the asynchronous [`EffectSink`]).
pub trait RemoteEffectSink {
    fn deliver(&mut self, effect_id: &str, body: &str) -> impl std::future::Future<Output = Result<Delivered, EffectError>>;
}

/// [`reconcile`] for a receiver across the network, for every saga of `sagas`: what a device
/// runs at every start, before it does anything else (runbook 000: "Saga stuck state: reconcile
/// on start"). Re-derives the requests from `counts`, then sends every effect not `done` and
/// records each answer; a crash anywhere in it leaves a state the next start finishes.
pub async fn reconcile_remote(
    c: &Connection,
    sagas: &[AchievementSaga],
    counts: &BTreeMap<String, u64>,
    sink: &mut impl RemoteEffectSink,
    clock: &dyn Clock,
) -> Result<Reconciled, SagaError> {
    let mut requested = Vec::new();
    for saga in sagas {
        requested.extend(observe_all(c, saga, counts, clock)?);
    }
    let mut drive = DriveReport::default();
    for step in begin_deliveries(c, clock)? {
        let outcome = sink.deliver(&step.effect_id, &step.body).await;
        finish_delivery(c, &step.effect_id, &outcome, clock)?;
        drive.record(step.effect_id, outcome);
    }
    Ok(Reconciled { requested, drive })
}

/// Records the request of `saga` for every tenant whose count calls for it; returns the new ones.
fn observe_all(c: &Connection, saga: &AchievementSaga, counts: &BTreeMap<String, u64>, clock: &dyn Clock) -> Result<Vec<String>, SagaError> {
    let mut requested = Vec::new();
    for (tenant, &count) in counts {
        requested.extend(saga.observe(c, tenant, count, clock)?);
    }
    Ok(requested)
}

/// The first half of a delivery, for a caller that sends effects itself (over the network,
/// asynchronously): marks every effect not `done` as `delivering` (committed, one attempt
/// each) and returns them. Send each, then call [`finish_delivery`] with the answer; a crash
/// in between is what [`reconcile`] recovers. A command.
pub fn begin_deliveries(c: &Connection, clock: &dyn Clock) -> Result<Vec<Step>, SagaError> {
    resilience::check_write(c, Write::Command)?;
    let mut out = Vec::new();
    for mut step in steps(c)?.into_iter().filter(|s| s.state != State::Done) {
        set_state(c, &step.effect_id, State::Delivering, None, clock)?;
        step.state = State::Delivering;
        step.attempts += 1;
        out.push(step);
    }
    Ok(out)
}

/// The second half of a delivery: records `done` when the receiver took the effect (first
/// time or duplicate), or the failure's code, leaving it `delivering`. A command.
pub fn finish_delivery(c: &Connection, effect_id: &str, outcome: &Result<Delivered, EffectError>, clock: &dyn Clock) -> Result<(), SagaError> {
    resilience::check_write(c, Write::Command)?;
    match outcome {
        Ok(_) => set_state(c, effect_id, State::Done, None, clock)?,
        Err(e) => set_state(c, effect_id, State::Delivering, Some(e.code()), clock)?,
    }
    Ok(())
}

/// Commits one state change; starting a delivery counts an attempt.
fn set_state(c: &Connection, effect_id: &str, state: State, error: Option<&str>, clock: &dyn Clock) -> Result<(), StoreError> {
    let attempt = u64::from(state == State::Delivering && error.is_none());
    c.execute(
        "UPDATE saga_state SET state = ?2, updated_ms = ?3, attempts = attempts + ?4, last_error = ?5 WHERE effect_id = ?1",
        rusqlite::params![effect_id, state.as_str(), clock.now_unix_ms(), attempt, error],
    )?;
    Ok(())
}

/// On start (runbook 000): re-derives the requests from `counts` (per tenant, e.g.
/// [`tenant_counts`]) and re-runs every effect not `done`, idempotently. The operator's
/// recovery of a stuck saga, and of cleared saga tables.
pub fn reconcile(
    c: &Connection,
    saga: &AchievementSaga,
    counts: &BTreeMap<String, u64>,
    sink: &mut dyn EffectSink,
    clock: &dyn Clock,
) -> Result<Reconciled, SagaError> {
    let requested = observe_all(c, saga, counts, clock)?;
    Ok(Reconciled { requested, drive: drive(c, sink, clock)? })
}

/// The runbook's manual recovery: forgets every saga's state, so that the next [`reconcile`]
/// rebuilds it from the counts. Safe because effect ids are deterministic and the receiver
/// applies each once. Recovery, so allowed in READ_ONLY.
pub fn clear(c: &Connection) -> Result<u64, SagaError> {
    resilience::check_write(c, Write::Recovery)?;
    install(c)?;
    Ok(c.execute("DELETE FROM saga_state", [])? as u64)
}

/// One delivery the receiver saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub effect_id: String,
    /// Whether this delivery applied the effect (false: a duplicate it ignored).
    pub applied: bool,
}

/// A receiver that applies each effect id at most once, keeping its record in its own
/// database (so it survives its own crashes), and logs every delivery, duplicates included:
/// what a model needs to check that no effect happened twice.
pub struct Receiver {
    conn: Connection,
}

const RECEIVER_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS effects_applied(effect_id TEXT PRIMARY KEY, body TEXT NOT NULL, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS effects_log(n INTEGER PRIMARY KEY AUTOINCREMENT, effect_id TEXT NOT NULL, applied INTEGER NOT NULL);
";

impl Receiver {
    /// The receiver whose record is in `conn` (created if needed).
    pub fn open(conn: Connection) -> Result<Receiver, StoreError> {
        conn.execute_batch(RECEIVER_SCHEMA)?;
        Ok(Receiver { conn })
    }

    /// Effect ids applied, in the order they were.
    pub fn applied(&self) -> Result<Vec<String>, StoreError> {
        let mut st = self.conn.prepare("SELECT effect_id FROM effects_applied ORDER BY n")?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every delivery, in order.
    pub fn log(&self) -> Result<Vec<Delivery>, StoreError> {
        let mut st = self.conn.prepare("SELECT effect_id, applied FROM effects_log ORDER BY n")?;
        let rows = st.query_map([], |r| Ok(Delivery { effect_id: r.get(0)?, applied: r.get(1)? }))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// INV-ONCE on the receiving side: the ids that the log shows applied more than once (none
    /// unless idempotency is broken), with how many times.
    pub fn applied_twice(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut times: BTreeMap<String, u64> = BTreeMap::new();
        for d in self.log()?.into_iter().filter(|d| d.applied) {
            *times.entry(d.effect_id).or_default() += 1;
        }
        Ok(times.into_iter().filter(|(_, n)| *n > 1).collect())
    }
}

impl EffectSink for Receiver {
    fn deliver(&mut self, effect_id: &str, body: &str) -> Result<Delivered, EffectError> {
        let unavailable = |e: rusqlite::Error| EffectError::Unavailable { detail: e.to_string() };
        let tx = self.conn.unchecked_transaction().map_err(unavailable)?;
        let n: i64 = tx.query_row("SELECT COUNT(*) FROM effects_log", [], |r| r.get(0)).map_err(unavailable)?;
        let added = tx
            .execute("INSERT OR IGNORE INTO effects_applied(effect_id, body, n) VALUES (?1, ?2, ?3)", rusqlite::params![effect_id, body, n])
            .map_err(unavailable)?;
        let stored: Option<String> =
            tx.query_row("SELECT body FROM effects_applied WHERE effect_id = ?1", [effect_id], |r| r.get(0)).optional().map_err(unavailable)?;
        if stored.as_deref() != Some(body) {
            return Err(EffectError::Rejected { detail: format!("{effect_id} was applied with another body") });
        }
        tx.execute("INSERT INTO effects_log(effect_id, applied) VALUES (?1, ?2)", rusqlite::params![effect_id, added == 1]).map_err(unavailable)?;
        tx.commit().map_err(unavailable)?;
        Ok(Delivered { first_time: added == 1 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FixedClock;
    use crate::projections::resilience::Mode;
    use crate::projections::Engine;
    use crate::store;

    struct Device {
        dir: tempfile::TempDir,
        c: Connection,
        receiver: Receiver,
    }

    fn device() -> Device {
        let dir = tempfile::tempdir().unwrap();
        let c = store::open(dir.path().join("d.db").to_str().unwrap()).unwrap();
        install(&c).unwrap();
        let receiver = Receiver::open(store::open(dir.path().join("r.db").to_str().unwrap()).unwrap()).unwrap();
        Device { dir, c, receiver }
    }

    impl Device {
        /// A crash of the device: the connection is gone, the file is reopened.
        fn restart(&mut self) {
            self.c = store::open(self.dir.path().join("d.db").to_str().unwrap()).unwrap();
        }
    }

    fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    const CLOCK: FixedClock = FixedClock(1_000);

    /// Every effect the saga recorded is applied exactly once, and nothing else is.
    fn assert_once(d: &Device) {
        assert!(d.receiver.applied_twice().unwrap().is_empty());
        let mut applied = d.receiver.applied().unwrap();
        applied.sort();
        assert_eq!(done_effects(&d.c).unwrap(), applied);
        assert!(steps(&d.c).unwrap().iter().all(|s| s.state == State::Done));
    }

    #[test]
    fn a_request_is_recorded_once_past_the_threshold_and_delivered_once() {
        let mut d = device();
        let saga = AchievementSaga::new(5);
        assert_eq!(saga.observe(&d.c, "acme", 4, &CLOCK).unwrap(), None);
        assert_eq!(saga.observe(&d.c, "acme", 5, &CLOCK).unwrap().as_deref(), Some("achievement/acme/5"));
        assert_eq!(saga.observe(&d.c, "acme", 9, &CLOCK).unwrap(), None, "recorded once");
        assert_eq!(steps(&d.c).unwrap()[0].state, State::Requested);
        let r = drive(&d.c, &mut d.receiver, &CLOCK).unwrap();
        assert_eq!(r.delivered, vec!["achievement/acme/5".to_string()]);
        let again = drive(&d.c, &mut d.receiver, &CLOCK).unwrap();
        assert_eq!(again, DriveReport::default(), "done effects are not delivered again");
        assert_eq!(d.receiver.log().unwrap().len(), 1);
        assert_eq!(steps(&d.c).unwrap()[0].attempts, 1);
        assert_once(&d);
    }

    #[test]
    fn a_crash_at_every_step_still_delivers_exactly_once() {
        for crash in [None, Some(Crash::BeforeEffect), Some(Crash::BeforeDone)] {
            let mut d = device();
            let saga = AchievementSaga::new(3);
            saga.observe(&d.c, "acme", 3, &CLOCK).unwrap();
            saga.observe(&d.c, "globex", 7, &CLOCK).unwrap();
            if let Some(at) = crash {
                let e = drive_with(&d.c, &mut d.receiver, &CLOCK, Some(at)).unwrap_err();
                assert_eq!(e.code(), "saga:interrupted");
                d.restart();
                assert_eq!(steps(&d.c).unwrap()[0].state, State::Delivering, "{crash:?}");
                let applied = usize::from(at == Crash::BeforeDone);
                assert_eq!(d.receiver.applied().unwrap().len(), applied, "{crash:?}");
            } else {
                d.restart();
            }
            let r = reconcile(&d.c, &saga, &counts(&[("acme", 3), ("globex", 7)]), &mut d.receiver, &CLOCK).unwrap();
            assert!(r.requested.is_empty());
            let duplicates = usize::from(crash == Some(Crash::BeforeDone));
            assert_eq!((r.drive.delivered.len(), r.drive.duplicates.len()), (2 - duplicates, duplicates), "{crash:?}");
            assert_once(&d);
            assert_eq!(d.receiver.applied().unwrap().len(), 2);
        }
    }

    #[test]
    fn an_unavailable_receiver_leaves_the_effect_pending_until_a_later_reconcile() {
        struct Down;
        impl EffectSink for Down {
            fn deliver(&mut self, _: &str, _: &str) -> Result<Delivered, EffectError> {
                Err(EffectError::Unavailable { detail: "timed out".into() })
            }
        }
        let mut d = device();
        let saga = AchievementSaga::new(2);
        let r = reconcile(&d.c, &saga, &counts(&[("acme", 2)]), &mut Down, &CLOCK).unwrap();
        assert_eq!(r.drive.failed[0].1.code(), "saga:effectUnavailable");
        let s = &steps(&d.c).unwrap()[0];
        assert_eq!((s.state, s.last_error.as_deref()), (State::Delivering, Some("saga:effectUnavailable")));
        let r = reconcile(&d.c, &saga, &counts(&[("acme", 2)]), &mut d.receiver, &CLOCK).unwrap();
        assert_eq!(r.drive.delivered.len(), 1);
        assert_eq!(steps(&d.c).unwrap()[0].attempts, 2);
        assert_once(&d);
    }

    #[test]
    fn cleared_saga_tables_are_rebuilt_from_the_counts_without_a_second_effect() {
        let mut d = device();
        let saga = AchievementSaga::new(4);
        reconcile(&d.c, &saga, &counts(&[("acme", 4), ("globex", 1)]), &mut d.receiver, &CLOCK).unwrap();
        assert_eq!(clear(&d.c).unwrap(), 1);
        let r = reconcile(&d.c, &saga, &counts(&[("acme", 4), ("globex", 1)]), &mut d.receiver, &CLOCK).unwrap();
        assert_eq!(r.requested, vec!["achievement/acme/4".to_string()]);
        assert_eq!(r.drive.duplicates, vec!["achievement/acme/4".to_string()]);
        assert_once(&d);
        assert_eq!(d.receiver.log().unwrap().len(), 2, "delivered twice, applied once");
    }

    #[test]
    fn read_only_refuses_saga_writes_and_changes_nothing() {
        let mut d = device();
        let saga = AchievementSaga::new(1);
        saga.observe(&d.c, "acme", 1, &CLOCK).unwrap();
        resilience::set_mode(&d.c, Mode::ReadOnly, &[]).unwrap();
        let before = steps(&d.c).unwrap();
        assert_eq!(saga.observe(&d.c, "globex", 5, &CLOCK), Err(SagaError::ReadOnly));
        let e = reconcile(&d.c, &saga, &counts(&[("acme", 1)]), &mut d.receiver, &CLOCK).unwrap_err();
        assert_eq!(e.code(), "store:readOnly");
        assert_eq!(steps(&d.c).unwrap(), before);
        assert!(d.receiver.log().unwrap().is_empty());
    }

    #[test]
    fn counts_come_from_the_tenant_counters_projection() {
        let d = device();
        assert!(tenant_counts(&d.c).unwrap().is_empty());
        Engine::builtin().install(&d.c).unwrap();
        d.c.execute_batch("INSERT INTO proj_tenant_counters VALUES ('acme', 'created', 2), ('acme', 'updated', 3), ('globex', 'created', 1);").unwrap();
        assert_eq!(tenant_counts(&d.c).unwrap(), counts(&[("acme", 5), ("globex", 1)]));
    }

    #[test]
    fn the_two_halves_of_a_delivery_recover_like_drive() {
        let mut d = device();
        let saga = AchievementSaga::new(1);
        saga.observe(&d.c, "acme", 1, &CLOCK).unwrap();
        let begun = begin_deliveries(&d.c, &CLOCK).unwrap();
        assert_eq!((begun.len(), begun[0].state, begun[0].attempts), (1, State::Delivering, 1));
        let outcome = d.receiver.deliver(&begun[0].effect_id, &begun[0].body);
        // The device crashes before recording the answer; the next start finishes it.
        d.restart();
        let r = reconcile(&d.c, &saga, &counts(&[("acme", 1)]), &mut d.receiver, &CLOCK).unwrap();
        assert_eq!(r.drive.duplicates, vec![begun[0].effect_id.clone()]);
        finish_delivery(&d.c, &begun[0].effect_id, &outcome, &CLOCK).unwrap();
        assert_once(&d);
    }

    /// A receiver that is down for the next `down` deliveries.
    struct Flaky<'a> {
        inner: &'a mut Receiver,
        down: u32,
    }

    impl EffectSink for Flaky<'_> {
        fn deliver(&mut self, effect_id: &str, body: &str) -> Result<Delivered, EffectError> {
            if self.down > 0 {
                self.down -= 1;
                return Err(EffectError::Unavailable { detail: "down".into() });
            }
            self.inner.deliver(effect_id, body)
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A tenant's count grows by this much and the saga observes it.
        Grow(usize, u64),
        /// A delivery round with the receiver down for a few deliveries, maybe cut by a crash.
        Drive(u32, Option<Crash>),
        Restart,
        Clear,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let crash = prop_oneof![Just(None), Just(Some(Crash::BeforeEffect)), Just(Some(Crash::BeforeDone))];
        prop_oneof![
            (0..3usize, 0..4u64).prop_map(|(t, n)| Op::Grow(t, n)),
            (0..3u32, crash).prop_map(|(down, crash)| Op::Drive(down, crash)),
            Just(Op::Restart),
            Just(Op::Clear),
        ]
    }

    proptest::proptest! {
        // Each case opens databases and restarts with fsyncs: a few dozen cases, not hundreds.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

        /// Any interleaving of growth, deliveries, crashes at either point, an unavailable
        /// receiver and cleared saga tables ends, after one reconcile on start, with every
        /// tenant past the threshold rewarded exactly once and no one else.
        #[test]
        fn effects_happen_exactly_once_whatever_the_crashes(ops in proptest::collection::vec(op(), 1..20)) {
            let mut d = device();
            let saga = AchievementSaga::new(4);
            let tenants = ["acme", "globex", "initech"];
            let mut totals = [0u64; 3];
            for op in ops {
                match op {
                    Op::Grow(t, n) => {
                        totals[t] += n;
                        saga.observe(&d.c, tenants[t], totals[t], &CLOCK).unwrap();
                    }
                    Op::Drive(down, crash) => {
                        let mut sink = Flaky { inner: &mut d.receiver, down };
                        match drive_with(&d.c, &mut sink, &CLOCK, crash) {
                            Ok(_) | Err(SagaError::Interrupted { .. }) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                    Op::Restart => d.restart(),
                    Op::Clear => {
                        clear(&d.c).unwrap();
                    }
                }
            }
            d.restart();
            let all: BTreeMap<String, u64> = tenants.iter().zip(totals).map(|(t, n)| (t.to_string(), n)).collect();
            reconcile(&d.c, &saga, &all, &mut d.receiver, &CLOCK).unwrap();
            let rewarded: Vec<String> = tenants.iter().zip(totals).filter(|(_, n)| *n >= 4).map(|(t, _)| saga.effect_id(t)).collect();
            let mut applied = d.receiver.applied().unwrap();
            applied.sort();
            proptest::prop_assert_eq!(applied, rewarded);
            assert_once(&d);
        }
    }

    /// The receiver across a network that answers at once.
    struct Remote<'a>(&'a mut Receiver);

    impl RemoteEffectSink for Remote<'_> {
        fn deliver(&mut self, effect_id: &str, body: &str) -> impl std::future::Future<Output = Result<Delivered, EffectError>> {
            std::future::ready(self.0.deliver(effect_id, body))
        }
    }

    fn ready<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("a ready sink never waits"),
        }
    }

    #[test]
    fn reconcile_at_start_finishes_what_a_crash_left_and_rebuilds_cleared_tables_for_every_saga() {
        for crash in [Crash::BeforeEffect, Crash::BeforeDone] {
            let mut d = device();
            let sagas = [AchievementSaga::new(2), AchievementSaga::new(5)];
            sagas[0].observe(&d.c, "acme", 3, &CLOCK).unwrap();
            drive_with(&d.c, &mut d.receiver, &CLOCK, Some(crash)).unwrap_err();
            d.restart();
            let all = counts(&[("acme", 6), ("globex", 1)]);
            let r = ready(reconcile_remote(&d.c, &sagas, &all, &mut Remote(&mut d.receiver), &CLOCK)).unwrap();
            assert_eq!(r.requested, vec!["achievement/acme/5".to_string()], "{crash:?}");
            let duplicates = usize::from(crash == Crash::BeforeDone);
            assert_eq!((r.drive.delivered.len(), r.drive.duplicates.len()), (2 - duplicates, duplicates), "{crash:?}");
            assert_once(&d);
            // The manual recovery: cleared tables come back from the counts, no effect twice.
            clear(&d.c).unwrap();
            let r = ready(reconcile_remote(&d.c, &sagas, &all, &mut Remote(&mut d.receiver), &CLOCK)).unwrap();
            assert_eq!((r.requested.len(), r.drive.duplicates.len()), (2, 2));
            assert_once(&d);
            assert_eq!(d.receiver.applied().unwrap().len(), 2);
        }
    }

    #[test]
    fn the_receiver_refuses_an_id_reused_with_another_body() {
        let mut d = device();
        assert!(d.receiver.deliver("x", "a").unwrap().first_time);
        assert!(!d.receiver.deliver("x", "a").unwrap().first_time);
        assert_eq!(d.receiver.deliver("x", "b").unwrap_err().code(), "saga:effectRejected");
        assert_eq!(d.receiver.applied().unwrap(), vec!["x".to_string()]);
        assert!(d.receiver.applied_twice().unwrap().is_empty());
    }
}

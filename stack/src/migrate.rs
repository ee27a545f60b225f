//! Schema versions of the device database and the migration between them, safe against a crash
//! at any point (runbook 002's "migration checklist"; DESIGN: snapshot, rebuild, swap).
//!
//! The version is recorded in the `meta` table (`schema/version`); a database that records none
//! predates versions and has the version 1 layout. Version 2 rebuilds the projection tables as
//! STRICT tables with CHECK constraints (counts and seqs at least 1, digests of 64 hex digits)
//! and adds an index of aggregates by their last event type. SQLite changes a table's
//! constraints only by rebuilding it, so the migration is three steps, each one committed
//! transaction, with its progress in `schema_migration`:
//!
//! 1. **snapshot**: the version 1 rows, canonical, with a SHA-256 checksum;
//! 2. **rebuild**: new tables under staging names, filled from the snapshot after checking it;
//! 3. **swap**: drop the old tables, rename the staging ones, add the index, record version 2
//!    and forget the progress, in one transaction.
//!
//! Until the swap commits, the live tables are the old ones and the version says 1; after it,
//! both are new. A crash anywhere leaves one or the other, never half, and [`run`] resumes from
//! the recorded step. Before the rebuild and before the swap it checks the snapshot against its
//! checksum and against the live tables: when the live tables changed since (the device kept
//! writing after a crash), it starts over from a fresh snapshot, so nothing written in between
//! is lost.
//!
//! A device runs it on open, after installing the projection engine (which creates version 1
//! tables in a new database; a migrated table is left alone, as the engine only creates tables
//! that do not exist). The engine's SQL works on both layouts.
//!
//! When the migration cannot finish, `migrate:legacyMigrationBlocked` says why, and the
//! database stays usable at its old version with no staging left behind: the recorded version
//! has no migration path (unknown, or newer than this code), the snapshot fails its check, or
//! the old rows break the new constraints (rebuild the projections from the events, then run
//! again).

use std::fmt;

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::error::StoreError;
use crate::projections::builtin::{AggregateState, TenantCounters};
use crate::projections::Projection;
use crate::store;

/// The version this code writes.
pub const CURRENT: u32 = 2;
/// The `meta` key of the schema version.
pub const VERSION_KEY: &str = "schema/version";

/// The tables version 2 rebuilds: live name, staging name, version 2 definition (under the
/// staging name), and the columns in canonical order.
const TABLES: [(&str, &str, &str, &str); 2] = [
    (
        "proj_aggregate_state",
        "mig_v2_proj_aggregate_state",
        "CREATE TABLE mig_v2_proj_aggregate_state(
            tenant TEXT NOT NULL, aggregate TEXT NOT NULL, events INTEGER NOT NULL CHECK (events >= 1),
            last_seq INTEGER NOT NULL CHECK (last_seq >= 1), last_kind TEXT NOT NULL,
            digest TEXT NOT NULL CHECK (length(digest) = 64), PRIMARY KEY(tenant, aggregate)) STRICT",
        "tenant, aggregate, events, last_seq, last_kind, digest",
    ),
    (
        "proj_tenant_counters",
        "mig_v2_proj_tenant_counters",
        "CREATE TABLE mig_v2_proj_tenant_counters(
            tenant TEXT NOT NULL, kind TEXT NOT NULL, count INTEGER NOT NULL CHECK (count >= 1),
            PRIMARY KEY(tenant, kind)) STRICT",
        "tenant, kind, count",
    ),
];

const V2_INDEX: &str = "CREATE INDEX IF NOT EXISTS proj_aggregate_state_by_kind ON proj_aggregate_state(tenant, last_kind)";

const PROGRESS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS schema_migration(
    id INTEGER PRIMARY KEY CHECK (id = 1), from_version INTEGER NOT NULL, to_version INTEGER NOT NULL,
    step TEXT NOT NULL, snapshot TEXT NOT NULL, checksum TEXT NOT NULL, started_ms INTEGER NOT NULL);
";

/// The last committed step of a migration in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Snapshot,
    Rebuild,
}

impl Step {
    fn as_str(self) -> &'static str {
        match self {
            Step::Snapshot => "snapshot",
            Step::Rebuild => "rebuild",
        }
    }
}

/// Where a world's failpoint stops [`run_with`], as a crash there would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    /// After the snapshot committed.
    AfterSnapshot,
    /// Inside the rebuild's transaction, before it commits.
    DuringRebuild,
    /// After the rebuild committed.
    AfterRebuild,
    /// Inside the swap's transaction, before it commits.
    DuringSwap,
}

impl Crash {
    pub const ALL: [Crash; 4] = [Crash::AfterSnapshot, Crash::DuringRebuild, Crash::AfterRebuild, Crash::DuringSwap];
}

/// Why a migration did not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrateError {
    /// The migration cannot finish; the database is usable at `from_version` and holds no
    /// migration in progress.
    LegacyMigrationBlocked {
        from_version: u32,
        detail: String,
    },
    /// A failpoint stopped the migration at `at`, as a crash would: [`run`] finishes it.
    Interrupted {
        at: Crash,
    },
    Store(StoreError),
}

impl MigrateError {
    /// A short stable code for traces and diagnostics.
    pub fn code(&self) -> &'static str {
        match self {
            MigrateError::LegacyMigrationBlocked { .. } => "migrate:legacyMigrationBlocked",
            MigrateError::Interrupted { .. } => "migrate:interrupted",
            MigrateError::Store(e) => e.code(),
        }
    }
}

impl fmt::Display for MigrateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.code();
        match self {
            MigrateError::LegacyMigrationBlocked { from_version, detail } => {
                write!(f, "{code}: the migration from version {from_version} cannot finish ({detail}); the database is usable at version {from_version}")
            }
            MigrateError::Interrupted { at } => write!(f, "{code}: stopped at {at:?}: run the migration again to finish it"),
            MigrateError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for MigrateError {}

impl From<StoreError> for MigrateError {
    fn from(e: StoreError) -> Self {
        MigrateError::Store(e)
    }
}

impl From<rusqlite::Error> for MigrateError {
    fn from(e: rusqlite::Error) -> Self {
        MigrateError::Store(e.into())
    }
}

/// What a finished [`run`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    pub from_version: u32,
    pub to_version: u32,
    /// The step a migration found in progress resumed from.
    pub resumed_from: Option<Step>,
    /// Whether a snapshot was dropped and retaken because the live tables changed after it.
    pub restarted: bool,
    /// Rows carried over.
    pub rows: u64,
}

fn blocked(from_version: u32, detail: impl Into<String>) -> MigrateError {
    MigrateError::LegacyMigrationBlocked { from_version, detail: detail.into() }
}

/// The recorded schema version (1 when none is recorded). A value that is not a version is
/// `migrate:legacyMigrationBlocked`.
pub fn version(c: &Connection) -> Result<u32, MigrateError> {
    c.execute_batch("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);")?;
    match store::meta_get(c, VERSION_KEY)? {
        None => Ok(1),
        Some(v) => v.parse().map_err(|_| blocked(0, format!("schema version {v:?} is not a number"))),
    }
}

/// The step of a migration in progress, if any.
pub fn pending(c: &Connection) -> Result<Option<Step>, MigrateError> {
    c.execute_batch(PROGRESS_SCHEMA)?;
    let step: Option<String> = c.query_row("SELECT step FROM schema_migration WHERE id = 1", [], |r| r.get(0)).optional()?;
    Ok(match step.as_deref() {
        None => None,
        Some("snapshot") => Some(Step::Snapshot),
        Some("rebuild") => Some(Step::Rebuild),
        Some(other) => return Err(StoreError::Invalid { detail: format!("migration step {other}") }.into()),
    })
}

/// Migrates the database to [`CURRENT`], resuming a migration a crash interrupted. Allowed in
/// every resilience mode: it changes derived tables only, and keeps their content.
pub fn run(c: &Connection, clock: &dyn Clock) -> Result<Migrated, MigrateError> {
    run_with(c, clock, None)
}

/// [`run`], stopped at `crash` with [`MigrateError::Interrupted`]; a crash inside a step is a
/// transaction that never commits.
pub fn run_with(c: &Connection, clock: &dyn Clock, crash: Option<Crash>) -> Result<Migrated, MigrateError> {
    let from = version(c)?;
    let resumed_from = pending(c)?;
    if from == CURRENT {
        // A swap forgets its progress in the same transaction; anything left is stale staging.
        if resumed_from.is_some() {
            abort(c)?;
        }
        return Ok(Migrated { from_version: from, to_version: CURRENT, resumed_from: None, restarted: false, rows: 0 });
    }
    if from != 1 {
        return Err(blocked(from, format!("no migration path from version {from} to {CURRENT}")));
    }
    for sql in [AggregateState.schema(), TenantCounters.schema()] {
        c.execute_batch(sql)?;
    }
    let mut step = resumed_from;
    let mut restarted = false;
    loop {
        step = match step {
            None => {
                snapshot(c, clock)?;
                stop(crash, Crash::AfterSnapshot)?;
                Some(Step::Snapshot)
            }
            Some(s) => {
                if !snapshot_current(c)? {
                    abort(c)?;
                    restarted = true;
                    step = None;
                    continue;
                }
                if s == Step::Snapshot {
                    rebuild(c, crash)?;
                    stop(crash, Crash::AfterRebuild)?;
                    Some(Step::Rebuild)
                } else {
                    let rows = swap(c, crash)?;
                    return Ok(Migrated { from_version: from, to_version: CURRENT, resumed_from, restarted, rows });
                }
            }
        };
    }
}

fn stop(crash: Option<Crash>, here: Crash) -> Result<(), MigrateError> {
    if crash == Some(here) {
        return Err(MigrateError::Interrupted { at: here });
    }
    Ok(())
}

/// Forgets a migration in progress: drops the staging tables and the progress. The live tables
/// and the version are untouched, so the database stays at its old version.
pub fn abort(c: &Connection) -> Result<(), MigrateError> {
    c.execute_batch(PROGRESS_SCHEMA)?;
    let tx = c.unchecked_transaction()?;
    for (_, staging, _, _) in TABLES {
        tx.execute_batch(&format!("DROP TABLE IF EXISTS {staging}"))?;
    }
    tx.execute("DELETE FROM schema_migration", [])?;
    tx.commit()?;
    Ok(())
}

/// The live version 1 rows of every migrated table, canonical, as JSON.
fn live_rows(c: &Connection) -> Result<String, MigrateError> {
    let mut tables = Vec::new();
    for (live, _, _, columns) in TABLES {
        let n = columns.split(',').count();
        let mut st = c.prepare(&format!("SELECT {columns} FROM {live} ORDER BY {columns}"))?;
        let rows = st.query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i).map(cell)).collect::<Result<Vec<_>, _>>())?;
        tables.push(serde_json::Value::Array(rows.collect::<Result<Vec<_>, _>>()?.into_iter().map(serde_json::Value::Array).collect()));
    }
    Ok(serde_json::Value::Array(tables).to_string())
}

fn cell(v: Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Integer(i) => i.into(),
        Value::Real(f) => f.into(),
        Value::Text(t) => t.into(),
        Value::Blob(b) => serde_json::json!({ "blob": hex::encode(b) }),
    }
}

fn uncell(v: &serde_json::Value) -> Result<Value, String> {
    Ok(match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Real(n.as_f64().ok_or("a number out of range")?),
        },
        serde_json::Value::String(s) => Value::Text(s.clone()),
        serde_json::Value::Object(o) => Value::Blob(o.get("blob").and_then(|b| b.as_str()).and_then(|h| hex::decode(h).ok()).ok_or("a malformed blob")?),
        serde_json::Value::Bool(_) | serde_json::Value::Array(_) => return Err("a value that is not a cell".into()),
    })
}

fn checksum(snapshot: &str) -> String {
    hex::encode(Sha256::digest(crate::crypto::framed(&[b"drill-migration-v1", snapshot.as_bytes()])))
}

fn snapshot(c: &Connection, clock: &dyn Clock) -> Result<(), MigrateError> {
    let tx = c.unchecked_transaction()?;
    let rows = live_rows(&tx)?;
    tx.execute(
        "INSERT INTO schema_migration(id, from_version, to_version, step, snapshot, checksum, started_ms) VALUES (1, 1, ?1, ?2, ?3, ?4, ?5)",
        rusqlite::params![CURRENT, Step::Snapshot.as_str(), rows, checksum(&rows), clock.now_unix_ms()],
    )?;
    tx.commit()?;
    Ok(())
}

/// The snapshot, if it passes its checksum.
fn stored_snapshot(c: &Connection) -> Result<Option<String>, MigrateError> {
    let (rows, sum): (String, String) = c.query_row("SELECT snapshot, checksum FROM schema_migration WHERE id = 1", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok((checksum(&rows) == sum).then_some(rows))
}

/// The snapshot, checked against its checksum; a failed check blocks the migration (after
/// forgetting it, so the database stays usable at version 1).
fn checked_snapshot(c: &Connection) -> Result<String, MigrateError> {
    match stored_snapshot(c)? {
        Some(rows) => Ok(rows),
        None => {
            abort(c)?;
            Err(blocked(1, "the migration's snapshot fails its checksum"))
        }
    }
}

/// Whether the checked snapshot still equals the live tables.
fn snapshot_current(c: &Connection) -> Result<bool, MigrateError> {
    Ok(checked_snapshot(c)? == live_rows(c)?)
}

fn rebuild(c: &Connection, crash: Option<Crash>) -> Result<(), MigrateError> {
    let snapshot = checked_snapshot(c)?;
    let tables: Vec<Vec<Vec<serde_json::Value>>> =
        serde_json::from_str(&snapshot).map_err(|e| StoreError::Invalid { detail: format!("migration snapshot: {e}") })?;
    let tx = c.unchecked_transaction()?;
    let mut failure = None;
    for ((_, staging, create, columns), rows) in TABLES.iter().zip(&tables) {
        tx.execute_batch(&format!("DROP TABLE IF EXISTS {staging}; {create};"))?;
        let marks = (1..=columns.split(',').count()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
        let mut st = tx.prepare(&format!("INSERT INTO {staging}({columns}) VALUES ({marks})"))?;
        for row in rows {
            let values =
                row.iter().map(uncell).collect::<Result<Vec<_>, _>>().map_err(|d| StoreError::Invalid { detail: format!("migration snapshot: {d}") })?;
            if let Err(e) = st.execute(rusqlite::params_from_iter(values)) {
                failure = Some(match e.sqlite_error_code() {
                    Some(rusqlite::ErrorCode::ConstraintViolation) => blocked(1, format!("a row of {staging} breaks version {CURRENT}'s constraints: {e}")),
                    _ => e.into(),
                });
                break;
            }
        }
        if failure.is_some() {
            break;
        }
    }
    if let Some(e) = failure {
        drop(tx);
        if matches!(e, MigrateError::LegacyMigrationBlocked { .. }) {
            abort(c)?;
        }
        return Err(e);
    }
    tx.execute("UPDATE schema_migration SET step = ?1 WHERE id = 1", [Step::Rebuild.as_str()])?;
    stop(crash, Crash::DuringRebuild)?;
    tx.commit()?;
    Ok(())
}

fn swap(c: &Connection, crash: Option<Crash>) -> Result<u64, MigrateError> {
    let tx = c.unchecked_transaction()?;
    let mut rows = 0;
    for (live, staging, _, _) in TABLES {
        rows += tx.query_row(&format!("SELECT COUNT(*) FROM {staging}"), [], |r| r.get::<_, u64>(0))?;
        tx.execute_batch(&format!("DROP TABLE {live}; ALTER TABLE {staging} RENAME TO {live};"))?;
    }
    tx.execute_batch(V2_INDEX)?;
    // The rebuilt tables hold exactly the checked snapshot: the rebuild lost and changed nothing.
    if Some(live_rows(&tx)?) != stored_snapshot(&tx)? {
        drop(tx);
        abort(c)?;
        return Err(blocked(1, "the rebuilt tables differ from the snapshot"));
    }
    store::meta_set(&tx, VERSION_KEY, &CURRENT.to_string())?;
    tx.execute("DELETE FROM schema_migration", [])?;
    stop(crash, Crash::DuringSwap)?;
    tx.commit()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand_chacha::rand_core::SeedableRng;

    use super::*;
    use crate::clock::FixedClock;
    use crate::crypto::{self, Key};
    use crate::projections::resilience::{self, Mode};
    use crate::projections::{Engine, Scope, SealedEvent};

    const CLOCK: FixedClock = FixedClock(5_000);

    struct Device {
        dir: tempfile::TempDir,
        c: Connection,
        engine: Engine,
        keys: BTreeMap<String, Key>,
        events: Vec<SealedEvent>,
        rng: rand_chacha::ChaCha8Rng,
    }

    fn device() -> Device {
        let dir = tempfile::tempdir().unwrap();
        let c = store::open(dir.path().join("d.db").to_str().unwrap()).unwrap();
        let engine = Engine::builtin();
        engine.install(&c).unwrap();
        let mut d = Device { dir, c, engine, keys: BTreeMap::new(), events: Vec::new(), rng: rand_chacha::ChaCha8Rng::seed_from_u64(9) };
        d.write(15);
        d
    }

    impl Device {
        fn write(&mut self, n: usize) {
            for _ in 0..n {
                let i = self.events.len();
                let tenant = ["acme", "globex"][i % 2];
                let aggregate = format!("{tenant}-{}", i % 5);
                let kind = ["created", "paid", "shipped"][i % 3];
                let key = self.keys.entry(aggregate.clone()).or_insert_with(|| Key::generate(&mut self.rng)).clone();
                let nonce = crypto::nonce_from(&mut self.rng);
                let ciphertext = crypto::seal_payload(&key, &nonce, tenant, &aggregate, kind, format!("p{i}").as_bytes());
                let seq = i as u64 + 1;
                self.events.push(SealedEvent { seq, tenant: tenant.into(), aggregate, kind: kind.into(), ts_ms: seq as i64, nonce, ciphertext });
            }
            self.engine.apply(&self.c, &self.events, &self.keys).unwrap();
        }

        fn restart(&mut self) {
            self.c = store::open(self.dir.path().join("d.db").to_str().unwrap()).unwrap();
        }

        fn state(&self) -> Vec<Vec<Vec<String>>> {
            let mut out = Vec::new();
            for p in ["aggregate_state", "tenant_counters"] {
                for t in ["acme", "globex"] {
                    out.push(self.engine.rows(&self.c, p, t).unwrap());
                }
            }
            out
        }
    }

    fn strict(c: &Connection, table: &str) -> bool {
        c.query_row("SELECT strict FROM pragma_table_list WHERE name = ?1", [table], |r| r.get(0)).unwrap()
    }

    /// Fully old or fully new: the version and both tables' layouts agree, and the rows are
    /// the ones the device had.
    fn assert_whole(d: &Device, rows: &[Vec<Vec<String>>]) -> u32 {
        let v = version(&d.c).unwrap();
        let layouts = [strict(&d.c, "proj_aggregate_state"), strict(&d.c, "proj_tenant_counters")];
        assert_eq!(layouts, [v == 2, v == 2], "version {v} with layouts {layouts:?}");
        assert_eq!(d.state(), rows);
        v
    }

    #[test]
    fn a_migration_keeps_every_row_and_the_engine_keeps_working() {
        let mut d = device();
        let before = d.state();
        assert_eq!(version(&d.c).unwrap(), 1);
        let m = run(&d.c, &CLOCK).unwrap();
        assert_eq!((m.from_version, m.to_version, m.resumed_from, m.restarted), (1, 2, None, false));
        assert!(m.rows > 0);
        assert_eq!(assert_whole(&d, &before), 2);
        assert_eq!(run(&d.c, &CLOCK).unwrap().rows, 0, "a second run has nothing to do");
        // New events, a rebuild and a snapshot restore all work on the new tables.
        d.write(10);
        let mut plain = device();
        plain.write(10);
        assert_eq!(d.state(), plain.state());
        d.engine.rebuild(&d.c, &d.events, &d.keys, &Scope::default()).unwrap();
        d.engine.snapshot(&d.c, "acme", 1).unwrap();
        d.engine.restore_from_snapshot(&d.c, &d.events, &d.keys, "acme", "aggregate_state").unwrap();
        assert_eq!(d.state(), plain.state());
        let bad = d.c.execute("UPDATE proj_tenant_counters SET count = 0", []);
        assert!(bad.is_err(), "version 2's constraints hold");
    }

    #[test]
    fn a_crash_at_any_step_leaves_old_or_new_and_a_rerun_finishes() {
        for at in Crash::ALL {
            let mut d = device();
            let before = d.state();
            assert_eq!(run_with(&d.c, &CLOCK, Some(at)).unwrap_err(), MigrateError::Interrupted { at });
            d.restart();
            let v = assert_whole(&d, &before);
            assert_eq!(v, 1, "{at:?}: only a committed swap makes version 2");
            let expected = match at {
                Crash::AfterSnapshot | Crash::DuringRebuild => Some(Step::Snapshot),
                Crash::AfterRebuild | Crash::DuringSwap => Some(Step::Rebuild),
            };
            assert_eq!(pending(&d.c).unwrap(), expected, "{at:?}");
            let m = run(&d.c, &CLOCK).unwrap();
            assert_eq!((m.resumed_from, m.restarted), (expected, false), "{at:?}");
            assert_eq!(assert_whole(&d, &before), 2);
            assert_eq!(pending(&d.c).unwrap(), None);
        }
    }

    #[test]
    fn writes_after_a_crash_mid_migration_are_kept() {
        for at in [Crash::AfterSnapshot, Crash::AfterRebuild] {
            let mut d = device();
            run_with(&d.c, &CLOCK, Some(at)).unwrap_err();
            d.restart();
            d.write(6);
            let after_writes = d.state();
            let m = run(&d.c, &CLOCK).unwrap();
            assert!(m.restarted, "{at:?}: the stale snapshot is retaken");
            assert_eq!(assert_whole(&d, &after_writes), 2);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// Any amount of data, a crash at any step (or none), then writes before the rerun:
        /// after the crash the database is whole at version 1, and the rerun ends whole at
        /// version 2 with every row, including the ones written in between.
        #[test]
        fn any_crash_then_writes_then_a_rerun_ends_whole(
            events in 0..25usize,
            crash in proptest::option::of(proptest::sample::select(Crash::ALL.to_vec())),
            between in 0..4usize,
        ) {
            let mut d = device();
            d.write(events);
            let before = d.state();
            let first = run_with(&d.c, &CLOCK, crash);
            d.restart();
            let v = assert_whole(&d, &before);
            proptest::prop_assert_eq!(v, if crash.is_some() { 1 } else { 2 }, "{:?}: {:?}", crash, first);
            d.write(between);
            let now = d.state();
            run(&d.c, &CLOCK).unwrap();
            proptest::prop_assert_eq!(assert_whole(&d, &now), 2);
            proptest::prop_assert_eq!(pending(&d.c).unwrap(), None);
        }
    }

    #[test]
    fn an_empty_or_a_new_database_migrates_too() {
        let dir = tempfile::tempdir().unwrap();
        let c = store::open(dir.path().join("new.db").to_str().unwrap()).unwrap();
        assert_eq!(run(&c, &CLOCK).unwrap().rows, 0);
        assert_eq!((version(&c).unwrap(), strict(&c, "proj_tenant_counters")), (2, true));
        let engine = Engine::builtin();
        engine.install(&c).unwrap();
        assert!(strict(&c, "proj_aggregate_state"), "installing the engine keeps the new layout");
    }

    #[test]
    fn no_migration_path_is_blocked_and_changes_nothing() {
        for v in ["7", "0", "two"] {
            let d = device();
            store::meta_set(&d.c, VERSION_KEY, v).unwrap();
            let e = run(&d.c, &CLOCK).unwrap_err();
            assert_eq!(e.code(), "migrate:legacyMigrationBlocked", "{v}: {e}");
            assert!(!strict(&d.c, "proj_aggregate_state"));
            assert_eq!(pending(&d.c).unwrap(), None);
        }
    }

    #[test]
    fn a_snapshot_that_fails_its_check_blocks_and_leaves_version_one_usable() {
        for at in [Crash::AfterSnapshot, Crash::AfterRebuild] {
            let mut d = device();
            let before = d.state();
            run_with(&d.c, &CLOCK, Some(at)).unwrap_err();
            d.restart();
            d.c.execute("UPDATE schema_migration SET snapshot = replace(snapshot, 'acme', 'acmf')", []).unwrap();
            let e = run(&d.c, &CLOCK).unwrap_err();
            assert_eq!(e.code(), "migrate:legacyMigrationBlocked", "{at:?}");
            assert_eq!(assert_whole(&d, &before), 1);
            assert_eq!(pending(&d.c).unwrap(), None);
            let staging: u32 = d.c.query_row("SELECT COUNT(*) FROM sqlite_master WHERE name LIKE 'mig_v2_%'", [], |r| r.get(0)).unwrap();
            assert_eq!(staging, 0, "no staging left behind");
            d.write(3);
            let now = d.state();
            assert_eq!(run(&d.c, &CLOCK).unwrap().to_version, 2, "a rerun takes a fresh snapshot");
            assert_eq!(assert_whole(&d, &now), 2);
        }
    }

    #[test]
    fn rows_that_break_the_new_constraints_block_until_the_projections_are_rebuilt() {
        let d = device();
        resilience::set_mode(&d.c, Mode::ReadOnly, &[]).unwrap();
        d.c.execute("UPDATE proj_tenant_counters SET count = 0 WHERE tenant = 'acme' AND kind = 'paid'", []).unwrap();
        let broken = d.state();
        let e = run(&d.c, &CLOCK).unwrap_err();
        assert_eq!(e.code(), "migrate:legacyMigrationBlocked", "{e}");
        assert_eq!(assert_whole(&d, &broken), 1);
        assert_eq!(pending(&d.c).unwrap(), None);
        d.engine.rebuild(&d.c, &d.events, &d.keys, &Scope::default()).unwrap();
        let rebuilt = d.state();
        run(&d.c, &CLOCK).unwrap();
        assert_eq!(assert_whole(&d, &rebuilt), 2);
    }
}

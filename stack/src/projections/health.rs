//! Health status as in runbook 004 §7.2: one level per indicator, and the worst of them.
//!
//! | indicator | healthy | warning | critical |
//! |---|---|---|---|
//! | resilience mode | NORMAL | DEGRADED | READ_ONLY |
//! | unhealthy projections | 0 | 1–2 | 3+ |
//! | event store | writable | slow | unreachable |
//!
//! The runbook's cache hit rate has no counterpart: this stack has no cache.
//!
//! The event store's indicator comes from a probe: [`probe`] for the local database (a read from
//! storage and, outside READ_ONLY, a committed heartbeat write), or [`judge`] for a caller that
//! timed a write itself (a push to the server's store).

use rusqlite::Connection;
use serde::Serialize;

use super::resilience::Mode;
use crate::clock::Clock;

/// A write slower than this, by the node clock, makes the event store `slow`.
pub const SLOW_MS_MIN: i64 = 1_000;

/// A health level, ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Healthy,
    Warning,
    Critical,
}

/// How the event store answered its last probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventStoreStatus {
    Writable,
    Slow,
    Unreachable,
}

/// The dashboard's health status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    pub mode: &'static str,
    pub mode_level: Level,
    pub unhealthy_projections: Vec<String>,
    pub projections_level: Level,
    pub event_store: EventStoreStatus,
    pub event_store_level: Level,
    /// The worst indicator.
    pub level: Level,
    pub is_healthy: bool,
}

/// Judges the indicators.
pub fn status(mode: Mode, unhealthy_projections: Vec<String>, event_store: EventStoreStatus) -> Health {
    let mode_level = match mode {
        Mode::Normal => Level::Healthy,
        Mode::Degraded => Level::Warning,
        Mode::ReadOnly => Level::Critical,
    };
    let projections_level = match unhealthy_projections.len() {
        0 => Level::Healthy,
        1 | 2 => Level::Warning,
        _ => Level::Critical,
    };
    let event_store_level = match event_store {
        EventStoreStatus::Writable => Level::Healthy,
        EventStoreStatus::Slow => Level::Warning,
        EventStoreStatus::Unreachable => Level::Critical,
    };
    let level = mode_level.max(projections_level).max(event_store_level);
    Health {
        mode: mode.as_str(),
        mode_level,
        unhealthy_projections,
        projections_level,
        event_store,
        event_store_level,
        level,
        is_healthy: level == Level::Healthy,
    }
}

/// Judges one probe of the event store: `Ok(elapsed_ms)` of a write it took, or `Err(busy)`
/// when it did not take it (busy: another writer held the lock, so it is there but slow).
pub fn judge(outcome: Result<i64, bool>, slow_ms_min: i64) -> EventStoreStatus {
    match outcome {
        Ok(ms) if ms >= slow_ms_min => EventStoreStatus::Slow,
        Ok(_) => EventStoreStatus::Writable,
        Err(true) => EventStoreStatus::Slow,
        Err(false) => EventStoreStatus::Unreachable,
    }
}

/// The table of the heartbeat a probe writes: one row, rewritten by every probe outside
/// READ_ONLY, that nothing else reads.
const HEARTBEAT_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS health_probe(id INTEGER PRIMARY KEY CHECK (id = 1), at_ms INTEGER NOT NULL)";

/// Probes the local event store, timed by `clock`: drops the connection's cached pages so that
/// what it reads comes from storage, takes the write lock and reads the schema; outside
/// READ_ONLY it then commits a heartbeat row, so the store is called writable only after a write
/// went through the log and its sync. In READ_ONLY it writes nothing and leaves storage as it
/// was (a disk that fails only writes then goes unseen until the mode is left). A lock held by
/// another writer is `slow`; any other failure (I/O, a full, corrupt or vanished file) is
/// `unreachable`.
pub fn probe(c: &Connection, clock: &dyn Clock, slow_ms_min: i64) -> EventStoreStatus {
    let start = clock.now_unix_ms();
    let outcome = match probe_once(c, start) {
        Ok(()) => Ok(clock.now_unix_ms() - start),
        Err(busy) => Err(busy),
    };
    // A failed statement may leave the transaction open: the probe never leaves a lock behind.
    if !c.is_autocommit() {
        let _ = c.execute_batch("ROLLBACK");
    }
    judge(outcome, slow_ms_min)
}

/// One probe; `Err(busy)` when it failed.
fn probe_once(c: &Connection, at_ms: i64) -> Result<(), bool> {
    let busy = |e: rusqlite::Error| e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy);
    c.execute_batch("PRAGMA shrink_memory; BEGIN IMMEDIATE").map_err(busy)?;
    c.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)).map_err(busy)?;
    let mode = super::resilience::mode(c).map_err(|_| false)?;
    if mode == Mode::ReadOnly {
        return c.execute_batch("ROLLBACK").map_err(busy);
    }
    c.execute_batch(HEARTBEAT_SCHEMA).map_err(busy)?;
    c.execute("INSERT OR REPLACE INTO health_probe(id, at_ms) VALUES (1, ?1)", [at_ms]).map_err(busy)?;
    c.execute_batch("COMMIT").map_err(busy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("p{i}")).collect()
    }

    #[test]
    fn each_indicator_follows_the_runbook_table() {
        let h = status(Mode::Normal, vec![], EventStoreStatus::Writable);
        assert!(h.is_healthy);
        assert_eq!(h.level, Level::Healthy);
        assert_eq!(status(Mode::Degraded, vec![], EventStoreStatus::Writable).level, Level::Warning);
        assert_eq!(status(Mode::ReadOnly, vec![], EventStoreStatus::Writable).level, Level::Critical);
        assert_eq!(status(Mode::Normal, names(1), EventStoreStatus::Writable).projections_level, Level::Warning);
        assert_eq!(status(Mode::Normal, names(2), EventStoreStatus::Writable).projections_level, Level::Warning);
        assert_eq!(status(Mode::Normal, names(3), EventStoreStatus::Writable).projections_level, Level::Critical);
        assert_eq!(status(Mode::Normal, vec![], EventStoreStatus::Slow).level, Level::Warning);
        let worst = status(Mode::Degraded, names(1), EventStoreStatus::Unreachable);
        assert_eq!((worst.event_store_level, worst.level, worst.is_healthy), (Level::Critical, Level::Critical, false));
    }

    /// A clock that moves `step_ms` every time it is read.
    struct Ticking(std::cell::Cell<i64>, i64);

    impl Clock for Ticking {
        fn now_unix_ms(&self) -> i64 {
            self.0.set(self.0.get() + self.1);
            self.0.get()
        }
    }

    #[test]
    fn the_probe_tells_writable_slow_and_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        let c = crate::store::open(path.to_str().unwrap()).unwrap();
        c.execute_batch("CREATE TABLE t(x);").unwrap();
        // Not rusqlite's default five seconds of waiting for a lock.
        c.busy_timeout(std::time::Duration::ZERO).unwrap();
        assert_eq!(probe(&c, &Ticking(0.into(), 10), SLOW_MS_MIN), EventStoreStatus::Writable);
        assert_eq!(probe(&c, &Ticking(0.into(), SLOW_MS_MIN), SLOW_MS_MIN), EventStoreStatus::Slow);
        let other = crate::store::open(path.to_str().unwrap()).unwrap();
        other.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (1);").unwrap();
        assert_eq!(probe(&c, &Ticking(0.into(), 10), SLOW_MS_MIN), EventStoreStatus::Slow, "another writer holds the lock");
        other.execute_batch("ROLLBACK").unwrap();
        assert_eq!(probe(&c, &Ticking(0.into(), 10), SLOW_MS_MIN), EventStoreStatus::Writable, "the probe left no lock behind");
        drop((c, other));
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.path().join(format!("d.db{suffix}")));
        }
        let garbage = rusqlite::Connection::open(&path).unwrap();
        assert_eq!(probe(&garbage, &Ticking(0.into(), 10), SLOW_MS_MIN), EventStoreStatus::Unreachable);
        assert_eq!(judge(Err(false), SLOW_MS_MIN), EventStoreStatus::Unreachable);
    }

    /// A store whose reads still work but whose writes fail (here: full) is not writable. The
    /// probe used to take the lock and read the schema only, and called such a store writable.
    #[test]
    fn a_store_that_takes_no_writes_is_unreachable_and_read_only_probes_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = crate::store::open(dir.path().join("d.db").to_str().unwrap()).unwrap();
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
        let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        c.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(())).unwrap();
        assert_eq!(c.query_row("SELECT x FROM t", [], |r| r.get::<_, i64>(0)).unwrap(), 1, "reads work");
        assert_eq!(probe(&c, &Ticking(0.into(), 10), SLOW_MS_MIN), EventStoreStatus::Unreachable, "no write goes through");
        assert!(c.is_autocommit(), "the failed probe left no transaction open");
        c.query_row(&format!("PRAGMA max_page_count = {}", pages + 100), [], |_| Ok(())).unwrap();
        assert_eq!(probe(&c, &Ticking(0.into(), 10), SLOW_MS_MIN), EventStoreStatus::Writable);
        let beat = |c: &Connection| c.query_row("SELECT at_ms FROM health_probe", [], |r| r.get::<_, i64>(0)).unwrap();
        let first = beat(&c);
        crate::projections::resilience::set_mode(&c, Mode::ReadOnly, &[]).unwrap();
        assert_eq!(probe(&c, &Ticking(100.into(), 10), SLOW_MS_MIN), EventStoreStatus::Writable);
        assert_eq!(beat(&c), first, "READ_ONLY: the probe wrote nothing");
        crate::projections::resilience::set_mode(&c, Mode::Normal, &[]).unwrap();
        assert_eq!(probe(&c, &Ticking(100.into(), 10), SLOW_MS_MIN), EventStoreStatus::Writable);
        assert_ne!(beat(&c), first, "outside READ_ONLY the heartbeat is rewritten");
    }
}

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
//! The event store's indicator comes from a probe: [`probe`] for the local database, or
//! [`judge`] for a caller that timed a write itself (a push to the server's store).

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

/// Probes the local event store: takes the write lock, reads the schema (pages from disk) and
/// releases the lock, timed by `clock`. It writes nothing, so it may run in READ_ONLY and leaves
/// storage as it was. A lock held by another writer is `slow`; any other failure (I/O, a
/// corrupt or vanished file) is `unreachable`.
pub fn probe(c: &Connection, clock: &dyn Clock, slow_ms_min: i64) -> EventStoreStatus {
    let start = clock.now_unix_ms();
    let attempt = c.execute_batch("BEGIN IMMEDIATE").and_then(|_| {
        let read = c.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0));
        c.execute_batch("ROLLBACK").and(read)
    });
    let outcome = match attempt {
        Ok(_) => Ok(clock.now_unix_ms() - start),
        Err(e) => Err(e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)),
    };
    judge(outcome, slow_ms_min)
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
}

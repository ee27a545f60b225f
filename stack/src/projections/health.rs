//! Health status as in runbook 004 §7.2: one level per indicator, and the worst of them.
//!
//! | indicator | healthy | warning | critical |
//! |---|---|---|---|
//! | resilience mode | NORMAL | DEGRADED | READ_ONLY |
//! | unhealthy projections | 0 | 1–2 | 3+ |
//! | event store | writable | slow | unreachable |
//!
//! The runbook's cache hit rate has no counterpart: this stack has no cache.

use serde::Serialize;

use super::resilience::Mode;

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
}

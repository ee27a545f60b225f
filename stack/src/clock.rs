//! The wall clock the stack reads. The world supplies it; the stack never reads the OS clock.

/// A source of wall-clock time.
pub trait Clock {
    /// Milliseconds since the Unix epoch, as this node's clock reads them.
    fn now_unix_ms(&self) -> i64;
}

/// A clock that always reads the same time, for tests outside a simulation.
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub i64);

impl Clock for FixedClock {
    fn now_unix_ms(&self) -> i64 {
        self.0
    }
}

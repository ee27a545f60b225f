//! Resilience modes (runbook 004 §2): NORMAL, DEGRADED, READ_ONLY, persisted in the database's
//! `meta` table and checked before every write.
//!
//! READ_ONLY refuses every command (an event append, an incremental projection update, a
//! snapshot) with `store:readOnly` and leaves storage untouched. The runbook's own recovery
//! procedures (§3.2, §6.1: set READ_ONLY, then clear and replay projections) run in READ_ONLY,
//! so a rebuild is a [`Write::Recovery`] and is allowed: it changes derived tables only, never
//! events. DEGRADED allows writes but switches off the non-essential projections named when the
//! mode was set (§2.2: "non-essential engines can be disabled via feature flags").

use std::fmt;

use rusqlite::Connection;

use crate::error::StoreError;
use crate::store;

/// A resilience mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Normal,
    Degraded,
    ReadOnly,
}

impl Mode {
    /// The runbook's name for the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Normal => "NORMAL",
            Mode::Degraded => "DEGRADED",
            Mode::ReadOnly => "READ_ONLY",
        }
    }

    fn parse(s: &str) -> Option<Mode> {
        [Mode::Normal, Mode::Degraded, Mode::ReadOnly].into_iter().find(|m| m.as_str() == s)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of write is about to happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// A command: appending events, updating projections with new events, taking a snapshot.
    Command,
    /// The runbook's recovery: clearing and replaying derived state.
    Recovery,
}

/// A write the mode refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOnly;

impl ReadOnly {
    pub fn code(&self) -> &'static str {
        "store:readOnly"
    }
}

impl fmt::Display for ReadOnly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store:readOnly: the store is in READ_ONLY mode: writes are refused until recovery completes")
    }
}

const MODE: &str = "resilience/mode";
const DISABLED: &str = "resilience/disabled";

/// Every command reads the mode, so the statement is compiled once per connection and kept.
fn ensure_meta(c: &Connection) -> Result<(), StoreError> {
    c.prepare_cached("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)")?.execute([])?;
    Ok(())
}

/// The current mode (NORMAL when never set).
pub fn mode(c: &Connection) -> Result<Mode, StoreError> {
    ensure_meta(c)?;
    match store::meta_get(c, MODE)? {
        None => Ok(Mode::Normal),
        Some(v) => Mode::parse(&v).ok_or_else(|| StoreError::Invalid { detail: format!("resilience mode {v}") }),
    }
}

/// Sets the mode; in DEGRADED, `disabled` names the projections to switch off (ignored
/// otherwise). An administrative action, allowed in every mode.
pub fn set_mode(c: &Connection, mode: Mode, disabled: &[&str]) -> Result<(), StoreError> {
    ensure_meta(c)?;
    let tx = c.unchecked_transaction()?;
    write_mode(&tx, mode, disabled)?;
    tx.commit()?;
    Ok(())
}

/// [`set_mode`] inside the caller's transaction (the server logs the transition with it).
pub(crate) fn write_mode(c: &Connection, mode: Mode, disabled: &[&str]) -> Result<(), StoreError> {
    ensure_meta(c)?;
    let off: Vec<&str> = if mode == Mode::Degraded { disabled.to_vec() } else { Vec::new() };
    store::meta_set(c, MODE, mode.as_str())?;
    store::meta_set(c, DISABLED, &serde_json::to_string(&off).expect("names serialize"))?;
    Ok(())
}

/// The projections switched off (non-empty only in DEGRADED).
pub fn disabled(c: &Connection) -> Result<Vec<String>, StoreError> {
    ensure_meta(c)?;
    match store::meta_get(c, DISABLED)? {
        None => Ok(Vec::new()),
        Some(v) => serde_json::from_str(&v).map_err(|e| StoreError::Invalid { detail: format!("disabled projections: {e}") }),
    }
}

/// Call before every write: READ_ONLY refuses commands.
pub fn check_write(c: &Connection, write: Write) -> Result<Mode, CheckError> {
    let m = mode(c)?;
    if m == Mode::ReadOnly && write == Write::Command {
        return Err(CheckError::ReadOnly(ReadOnly));
    }
    Ok(m)
}

/// Why [`check_write`] said no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckError {
    ReadOnly(ReadOnly),
    Store(StoreError),
}

impl From<StoreError> for CheckError {
    fn from(e: StoreError) -> Self {
        CheckError::Store(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_persist_and_read_only_refuses_commands_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.db");
        let c = store::open(p.to_str().unwrap()).unwrap();
        assert_eq!(mode(&c).unwrap(), Mode::Normal);
        set_mode(&c, Mode::Degraded, &["tenant_counters"]).unwrap();
        assert_eq!(disabled(&c).unwrap(), vec!["tenant_counters".to_string()]);
        set_mode(&c, Mode::ReadOnly, &["ignored"]).unwrap();
        assert!(disabled(&c).unwrap().is_empty());
        drop(c);
        let c = store::open(p.to_str().unwrap()).unwrap();
        assert_eq!(mode(&c).unwrap(), Mode::ReadOnly);
        assert_eq!(check_write(&c, Write::Command), Err(CheckError::ReadOnly(ReadOnly)));
        assert_eq!(ReadOnly.code(), "store:readOnly");
        assert_eq!(check_write(&c, Write::Recovery), Ok(Mode::ReadOnly));
        set_mode(&c, Mode::Normal, &[]).unwrap();
        assert_eq!(check_write(&c, Write::Command), Ok(Mode::Normal));
    }
}

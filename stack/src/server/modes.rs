//! The server's resilience modes (runbook 004 §2): NORMAL / DEGRADED / READ_ONLY for the whole
//! server and for each tenant, persisted in the server's database.
//!
//! The server-wide mode lives where every store keeps its mode ([`resilience`]), so the server's
//! projections honour it as a device's do. A tenant's own mode is kept beside it; a tenant is in
//! the stricter of the two. READ_ONLY refuses pushes with [`Response::RetryLater`]
//! (`readOnly` / `tenantReadOnly`): nothing is appended, the device keeps its writes in its
//! outbox and asks again, and pulls are still served. DEGRADED switches off the server work
//! named when it was set, from [`ServerWork`]: essential work (appending, answering pulls,
//! archiving) is never switched off. Every transition is kept in `mode_log` and returned, for
//! the caller's trace.
//!
//! [`Response::RetryLater`]: crate::proto::Response::RetryLater

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::projections::resilience::{self, Mode};
use crate::proto::Response;
use crate::store;

use super::Server;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mode_log(
    id INTEGER PRIMARY KEY AUTOINCREMENT, scope TEXT NOT NULL, from_mode TEXT NOT NULL, to_mode TEXT NOT NULL, disabled TEXT NOT NULL);
";

/// The server's non-essential work, which DEGRADED may switch off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ServerWork {
    /// Folding the non-essential `tenant_counters` projection after each push.
    TenantCounters,
    /// Taking projection snapshots.
    Snapshots,
    /// Compacting events past the retention (pushes stay idempotent without it).
    Compaction,
}

impl ServerWork {
    /// Every kind of non-essential work.
    pub const ALL: [ServerWork; 3] = [ServerWork::TenantCounters, ServerWork::Snapshots, ServerWork::Compaction];

    /// The name DEGRADED records (for `TenantCounters`, the projection's own name, so the
    /// projection engine switches it off).
    pub fn as_str(self) -> &'static str {
        match self {
            ServerWork::TenantCounters => "tenant_counters",
            ServerWork::Snapshots => "snapshots",
            ServerWork::Compaction => "compaction",
        }
    }
}

/// What a mode applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ModeScope {
    Server,
    Tenant(String),
}

impl ModeScope {
    fn key(&self) -> String {
        match self {
            ModeScope::Server => "server".into(),
            ModeScope::Tenant(t) => format!("tenant/{t}"),
        }
    }

    fn parse(s: &str) -> ModeScope {
        match s.strip_prefix("tenant/") {
            Some(t) => ModeScope::Tenant(t.into()),
            None => ModeScope::Server,
        }
    }
}

/// One mode change, as the server recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub scope: ModeScope,
    pub from: Mode,
    pub to: Mode,
    /// The work switched off (DEGRADED only).
    pub disabled: Vec<ServerWork>,
}

#[derive(Serialize, Deserialize)]
struct TenantMode {
    mode: String,
    disabled: Vec<ServerWork>,
}

fn parse_mode(v: &str) -> Result<Mode, StoreError> {
    [Mode::Normal, Mode::Degraded, Mode::ReadOnly].into_iter().find(|m| m.as_str() == v).ok_or_else(|| StoreError::Invalid { detail: format!("mode {v}") })
}

fn tenant_mode(c: &Connection, tenant: &str) -> Result<(Mode, Vec<ServerWork>), StoreError> {
    match store::meta_get(c, &format!("tenant_mode/{tenant}"))? {
        None => Ok((Mode::Normal, Vec::new())),
        Some(v) => {
            let m: TenantMode = serde_json::from_str(&v).map_err(|e| StoreError::Invalid { detail: format!("tenant mode of {tenant}: {e}") })?;
            Ok((parse_mode(&m.mode)?, m.disabled))
        }
    }
}

fn server_disabled(c: &Connection) -> Result<Vec<ServerWork>, StoreError> {
    let names = resilience::disabled(c)?;
    Ok(ServerWork::ALL.into_iter().filter(|w| names.iter().any(|n| n == w.as_str())).collect())
}

/// The mode `tenant`'s requests are judged by: the stricter of the server's and the tenant's.
pub(super) fn effective(c: &Connection, tenant: &str) -> Result<Mode, StoreError> {
    Ok(resilience::mode(c)?.max(tenant_mode(c, tenant)?.0))
}

/// The answer to a push of `tenant` that the modes refuse, if they do.
pub(super) fn push_refusal(c: &Connection, tenant: &str) -> Result<Option<Response>, StoreError> {
    if resilience::mode(c)? == Mode::ReadOnly {
        return Ok(Some(Response::RetryLater { code: "readOnly".into(), message: "the server is READ_ONLY: retry later".into() }));
    }
    if tenant_mode(c, tenant)?.0 == Mode::ReadOnly {
        return Ok(Some(Response::RetryLater { code: "tenantReadOnly".into(), message: format!("tenant {tenant} is READ_ONLY: retry later") }));
    }
    Ok(None)
}

/// Whether `work` runs for `tenant` (`None`: server-wide work).
pub(super) fn enabled(c: &Connection, tenant: Option<&str>, work: ServerWork) -> Result<bool, StoreError> {
    if resilience::mode(c)? == Mode::Degraded && server_disabled(c)?.contains(&work) {
        return Ok(false);
    }
    match tenant {
        Some(t) => {
            let (m, off) = tenant_mode(c, t)?;
            Ok(!(m == Mode::Degraded && off.contains(&work)))
        }
        None => Ok(true),
    }
}

impl Server {
    /// The server-wide mode.
    pub fn mode(&self) -> Result<Mode, StoreError> {
        resilience::mode(&self.conn)
    }

    /// `tenant`'s own mode (the server-wide one may be stricter: see [`Server::effective_mode`]).
    pub fn tenant_mode(&self, tenant: &str) -> Result<Mode, StoreError> {
        Ok(tenant_mode(&self.conn, tenant)?.0)
    }

    /// The mode `tenant`'s requests are judged by.
    pub fn effective_mode(&self, tenant: &str) -> Result<Mode, StoreError> {
        effective(&self.conn, tenant)
    }

    /// Whether `work` runs now for `tenant` (`None`: server-wide).
    pub fn work_enabled(&self, tenant: Option<&str>, work: ServerWork) -> Result<bool, StoreError> {
        enabled(&self.conn, tenant, work)
    }

    /// Sets the mode of `scope`; in DEGRADED, `disabled` names the work to switch off (ignored
    /// otherwise). An administrative action, allowed in every mode; persisted and logged.
    pub fn set_mode(&self, scope: &ModeScope, mode: Mode, disabled: &[ServerWork]) -> Result<Transition, StoreError> {
        let off: Vec<ServerWork> = if mode == Mode::Degraded { disabled.to_vec() } else { Vec::new() };
        let tx = self.conn.unchecked_transaction()?;
        let from = match scope {
            ModeScope::Server => {
                let from = resilience::mode(&tx)?;
                let names: Vec<&str> = off.iter().map(|w| w.as_str()).collect();
                resilience::write_mode(&tx, mode, &names)?;
                from
            }
            ModeScope::Tenant(t) => {
                let from = tenant_mode(&tx, t)?.0;
                let v = serde_json::to_string(&TenantMode { mode: mode.as_str().into(), disabled: off.clone() }).expect("a mode serializes");
                store::meta_set(&tx, &format!("tenant_mode/{t}"), &v)?;
                from
            }
        };
        tx.execute(
            "INSERT INTO mode_log(scope, from_mode, to_mode, disabled) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![scope.key(), from.as_str(), mode.as_str(), serde_json::to_string(&off).expect("names serialize")],
        )?;
        tx.commit()?;
        Ok(Transition { scope: scope.clone(), from, to: mode, disabled: off })
    }

    /// Every recorded transition, oldest first.
    pub fn transitions(&self) -> Result<Vec<Transition>, StoreError> {
        let mut st = self.conn.prepare("SELECT scope, from_mode, to_mode, disabled FROM mode_log ORDER BY id")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (scope, from, to, disabled) = row?;
            let disabled = serde_json::from_str(&disabled).map_err(|e| StoreError::Invalid { detail: format!("mode log: {e}") })?;
            out.push(Transition { scope: ModeScope::parse(&scope), from: parse_mode(&from)?, to: parse_mode(&to)?, disabled });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{PendingWrite, Request};

    fn push(s: &mut Server, tenant: &str, replica: &str, id: u64) -> Response {
        let w = PendingWrite { write_id: id, op_id: Some(format!("{replica}-{id}")), aggregate: "a".into(), kind: "k".into(), payload: b"p".to_vec() };
        s.handle(Request::Push { tenant: tenant.into(), replica: replica.into(), writes: vec![w], head: None })
    }

    #[test]
    fn read_only_refuses_pushes_retryably_and_still_serves_pulls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        let mut s = Server::open(path.to_str().unwrap()).unwrap();
        assert!(matches!(push(&mut s, "acme", "r1", 1), Response::Pushed { .. }));
        let t = s.set_mode(&ModeScope::Server, Mode::ReadOnly, &[]).unwrap();
        assert_eq!((t.from, t.to), (Mode::Normal, Mode::ReadOnly));
        let Response::RetryLater { code, .. } = push(&mut s, "acme", "r1", 2) else { panic!("a retry-later answer") };
        assert_eq!(code, "readOnly");
        assert_eq!(s.events().unwrap().len(), 1, "nothing appended in READ_ONLY");
        let pull = s.handle(Request::Pull { tenant: "acme".into(), replica: "r1".into(), since: 0, limit: 8, head: None });
        assert!(matches!(pull, Response::Page { ref items, .. } if items.len() == 1), "{pull:?}");
        // Persisted: a reopened server is still READ_ONLY.
        drop(s);
        let mut s = Server::open(path.to_str().unwrap()).unwrap();
        assert_eq!(s.mode().unwrap(), Mode::ReadOnly);
        s.set_mode(&ModeScope::Server, Mode::Normal, &[]).unwrap();
        assert!(matches!(push(&mut s, "acme", "r1", 2), Response::Pushed { .. }));
        assert_eq!(s.transitions().unwrap().len(), 2);
    }

    #[test]
    fn a_tenant_read_only_leaves_other_tenants_writable() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Server::open(dir.path().join("server.db").to_str().unwrap()).unwrap();
        s.set_mode(&ModeScope::Tenant("acme".into()), Mode::ReadOnly, &[]).unwrap();
        assert!(matches!(push(&mut s, "acme", "r1", 1), Response::RetryLater { ref code, .. } if code == "tenantReadOnly"));
        assert!(matches!(push(&mut s, "globex", "r2", 1), Response::Pushed { .. }));
        assert_eq!(s.effective_mode("acme").unwrap(), Mode::ReadOnly);
        assert_eq!(s.effective_mode("globex").unwrap(), Mode::Normal);
        let log = s.transitions().unwrap();
        assert_eq!(log[0].scope, ModeScope::Tenant("acme".into()));
    }

    #[test]
    fn degraded_switches_off_only_the_named_work() {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::open(dir.path().join("server.db").to_str().unwrap()).unwrap();
        s.set_mode(&ModeScope::Server, Mode::Degraded, &[ServerWork::Compaction]).unwrap();
        assert!(!s.work_enabled(None, ServerWork::Compaction).unwrap());
        assert!(s.work_enabled(None, ServerWork::Snapshots).unwrap());
        s.set_mode(&ModeScope::Tenant("acme".into()), Mode::Degraded, &[ServerWork::Snapshots]).unwrap();
        assert!(!s.work_enabled(Some("acme"), ServerWork::Snapshots).unwrap());
        assert!(s.work_enabled(Some("globex"), ServerWork::Snapshots).unwrap());
        // Leaving DEGRADED switches everything back on.
        s.set_mode(&ModeScope::Server, Mode::Normal, &[ServerWork::Compaction]).unwrap();
        assert!(s.work_enabled(None, ServerWork::Compaction).unwrap());
    }
}

//! Full backups of the event store (runbook 004 §5.1, §5.3), taken with SQLite's online backup
//! API while the server keeps serving, and their verification.
//!
//! A backup is the database's pages copied by the backup API into a staging database in memory
//! and serialized, with a manifest: the timeline, the last sequence number, every tenant's
//! event count and chain head, and the SHA-256 of the bytes. [`verify`] runs the runbook's
//! checklist on a backup restored into a clean staging database, item by item: it completed
//! (bytes match the manifest), it restores to a clean database (integrity check), the hash
//! chain verifies, a projection rebuild is consistent, the event counts match, and no event
//! crosses tenants. A restore takes only a backup that passes all six.

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, MAIN_DB};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::StoreError;
use crate::projections::{Engine, Scope};
use crate::store;

use super::projections::{stored_event, StoredForm};
use super::{archive, Server};

/// One tenant's part of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSummary {
    pub tenant: String,
    pub count: u64,
    /// The chain head, hex.
    pub head: String,
}

/// What a full backup holds, and the digest that proves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupManifest {
    pub id: u64,
    /// The archive timeline the backup was taken on: the segments to replay after it.
    pub timeline: u64,
    /// The server's clock when it was taken.
    pub taken_ms: i64,
    /// The last sequence number it holds (0: none).
    pub through_seq: u64,
    pub tenants: Vec<TenantSummary>,
    pub size: u64,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
}

/// A full backup: the database's bytes and their manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullBackup {
    pub manifest: BackupManifest,
    pub bytes: Vec<u8>,
}

impl FullBackup {
    /// The object name of backup `id`'s bytes on the backup node (its manifest is this plus
    /// `.json`).
    pub fn object_name(id: u64) -> String {
        format!("full/{id:08}.db")
    }
}

/// One item of the runbook's backup verification checklist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckItem {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

/// The checklist of one backup (runbook 004 §5.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupVerification {
    pub id: u64,
    pub items: Vec<CheckItem>,
}

impl BackupVerification {
    pub fn passed(&self) -> bool {
        self.items.len() == CHECKLIST.len() && self.items.iter().all(|i| i.passed)
    }

    /// The first item that failed.
    pub fn failure(&self) -> Option<&CheckItem> {
        self.items.iter().find(|i| !i.passed)
    }
}

/// The checklist's items, in the runbook's order.
pub const CHECKLIST: [&str; 6] = ["completed", "restorable", "chainVerified", "projectionsConsistent", "countsMatch", "tenantsIsolated"];

fn sqlite_bytes(conn: &Connection) -> Result<Vec<u8>, StoreError> {
    Ok(conn.serialize(MAIN_DB)?.to_vec())
}

/// Copies every page of `from` into `to` with the online backup API, in one step.
pub(super) fn copy(from: &Connection, to: &mut Connection) -> Result<(), StoreError> {
    let b = Backup::new(from, to)?;
    match b.step(-1)? {
        StepResult::Done => Ok(()),
        other => Err(StoreError::Sqlite { detail: format!("online backup did not finish in one step: {other:?}") }),
    }
}

/// `bytes` as a database of its own, in memory: the clean staging database of a verification
/// or a restore.
pub(super) fn stage(bytes: &[u8]) -> Result<Connection, StoreError> {
    let mut image = bytes.to_vec();
    // The store runs in WAL mode, which its header says (read and write versions 2); a database
    // in memory has no log, so the staging copy is marked for a rollback journal (1).
    if image.len() >= 20 && image[18] == 2 && image[19] == 2 {
        image[18] = 1;
        image[19] = 1;
    }
    let mut c = Connection::open_in_memory()?;
    c.deserialize_read_exact(MAIN_DB, image.as_slice(), image.len(), false)?;
    Ok(c)
}

/// Each tenant's count and head, in tenant order.
pub(super) fn summaries(c: &Connection) -> Result<Vec<TenantSummary>, StoreError> {
    let mut st = c.prepare("SELECT tenant, COUNT(*) FROM events GROUP BY tenant ORDER BY tenant")?;
    let counts: Vec<(String, u64)> = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
    counts.into_iter().map(|(tenant, count)| Ok(TenantSummary { head: hex::encode(store::chain_head(c, &tenant)?), tenant, count })).collect()
}

/// The first event of each tenant whose chain link does not verify, from the tenant's anchor.
pub(super) fn broken_links(c: &Connection) -> Result<Vec<(String, u64)>, StoreError> {
    let mut out = Vec::new();
    for t in summaries(c)? {
        let start = store::anchor(c, &t.tenant)?.map(|(_, h)| h).unwrap_or_else(|| crate::chain::GENESIS.to_vec());
        let events = store::events_after(c, &t.tenant, 0, u32::MAX)?;
        let links = events.iter().map(|e| crate::chain::Link {
            seq: e.seq,
            kind: &e.kind,
            tenant: &e.tenant,
            payload: &e.payload,
            prev_hash: &e.prev_hash,
            hash: &e.hash,
        });
        if let Some(seq) = crate::chain::first_broken_from(&start, links) {
            out.push((t.tenant.clone(), seq));
        }
    }
    Ok(out)
}

impl Server {
    /// Takes full backup `id` (runbook 004 §5.1) with the online backup API. Allowed in every
    /// mode: it reads the store and writes nothing to it.
    pub fn full_backup(&self, id: u64, taken_ms: i64) -> Result<FullBackup, StoreError> {
        let mut staging = Connection::open_in_memory()?;
        copy(&self.conn, &mut staging)?;
        let bytes = sqlite_bytes(&staging)?;
        let through_seq: u64 = staging.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
        let manifest = BackupManifest {
            id,
            timeline: archive::timeline(&staging)?,
            taken_ms,
            through_seq,
            tenants: summaries(&staging)?,
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
        };
        Ok(FullBackup { manifest, bytes })
    }
}

fn item(name: &'static str, result: Result<String, String>) -> CheckItem {
    match result {
        Ok(detail) => CheckItem { name, passed: true, detail },
        Err(detail) => CheckItem { name, passed: false, detail },
    }
}

/// Runs the runbook's checklist on `b`, restored into a clean staging database; stops at the
/// first failing item. Returns the staging database when every item passed.
pub fn verify(b: &FullBackup) -> (BackupVerification, Option<Connection>) {
    let mut v = BackupVerification { id: b.manifest.id, items: Vec::new() };
    let m = &b.manifest;
    let digest = hex::encode(Sha256::digest(&b.bytes));
    v.items.push(item(
        "completed",
        if digest == m.sha256 && b.bytes.len() as u64 == m.size {
            Ok(format!("{} bytes, sha256 {}", m.size, &m.sha256[..12]))
        } else {
            Err(format!("the bytes ({} of them) do not match the manifest's size {} and SHA-256", b.bytes.len(), m.size))
        },
    ));
    if !v.items[0].passed {
        return (v, None);
    }
    let staged = stage(&b.bytes).and_then(|c| {
        let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if ok != "ok" {
            return Err(StoreError::Corrupt { detail: ok });
        }
        Ok(c)
    });
    let c = match staged {
        Ok(c) => {
            v.items.push(item("restorable", Ok("restored into a clean database; integrity check ok".into())));
            c
        }
        Err(e) => {
            v.items.push(item("restorable", Err(format!("{}: {e}", e.code()))));
            return (v, None);
        }
    };
    let checks: [(&'static str, Check); 4] =
        [("chainVerified", check_chain), ("projectionsConsistent", check_projections), ("countsMatch", check_counts), ("tenantsIsolated", check_tenants)];
    for (name, check) in checks {
        let i = item(name, check(&c, m));
        let passed = i.passed;
        v.items.push(i);
        if !passed {
            return (v, None);
        }
    }
    (v, Some(c))
}

/// One item of the checklist past the restore into a clean database: its detail, or why not.
type Check = fn(&Connection, &BackupManifest) -> Result<String, String>;

fn store_err(e: StoreError) -> String {
    format!("{}: {e}", e.code())
}

fn check_chain(c: &Connection, _: &BackupManifest) -> Result<String, String> {
    match broken_links(c).map_err(store_err)?.as_slice() {
        [] => Ok("every tenant's chain verifies".into()),
        broken => Err(broken.iter().map(|(t, seq)| format!("tenant {t}: event {seq} does not verify")).collect::<Vec<_>>().join("; ")),
    }
}

fn check_projections(c: &Connection, _: &BackupManifest) -> Result<String, String> {
    let engine = Engine::builtin();
    engine.install(c).map_err(store_err)?;
    let events: Vec<_> = store::all_events(c).map_err(store_err)?.iter().map(stored_event).collect();
    engine.rebuild(c, &events, &StoredForm, &Scope::default()).map_err(|e| format!("{}: {e}", e.code()))?;
    for t in summaries(c).map_err(store_err)? {
        let rows = engine.rows(c, "aggregate_state", &t.tenant).map_err(|e| e.to_string())?;
        let folded: u64 = rows.iter().map(|r| r[1].parse::<u64>().unwrap_or(0)).sum();
        if folded != t.count {
            return Err(format!("tenant {}: the rebuilt projection folds {folded} events of {}", t.tenant, t.count));
        }
    }
    Ok("a rebuild folds every event of every tenant".into())
}

fn check_counts(c: &Connection, m: &BackupManifest) -> Result<String, String> {
    let got = summaries(c).map_err(store_err)?;
    if got != m.tenants {
        return Err(format!("the restored store holds {got:?}, the manifest says {:?}", m.tenants));
    }
    Ok(format!("{} events in {} tenants", got.iter().map(|t| t.count).sum::<u64>(), got.len()))
}

fn check_tenants(c: &Connection, _: &BackupManifest) -> Result<String, String> {
    let crossed: u64 = c
        .query_row("SELECT COUNT(*) FROM events e JOIN replicas r ON e.replica = r.replica WHERE e.tenant != r.tenant", [], |r| r.get(0))
        .map_err(|e| store_err(e.into()))?;
    if crossed > 0 {
        return Err(format!("{crossed} events of a replica bound to another tenant"));
    }
    Ok("no event crosses tenants".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{PendingWrite, Request};

    fn server() -> (tempfile::TempDir, Server) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Server::open(dir.path().join("server.db").to_str().unwrap()).unwrap();
        for (tenant, id) in [("acme", 1), ("acme", 2), ("globex", 1)] {
            let w = PendingWrite { write_id: id, op_id: Some(format!("{tenant}-{id}")), aggregate: "a".into(), kind: "k".into(), payload: vec![id as u8] };
            s.handle(Request::Push { tenant: tenant.into(), replica: format!("r-{tenant}"), writes: vec![w], head: None });
        }
        (dir, s)
    }

    #[test]
    fn a_backup_passes_the_whole_checklist() {
        let (_d, s) = server();
        let b = s.full_backup(1, 10).unwrap();
        assert_eq!(b.manifest.through_seq, 3);
        assert_eq!(b.manifest.tenants.iter().map(|t| t.count).collect::<Vec<_>>(), vec![2, 1]);
        let (v, staged) = verify(&b);
        assert!(v.passed(), "{v:?}");
        assert_eq!(v.items.iter().map(|i| i.name).collect::<Vec<_>>(), CHECKLIST.to_vec());
        assert_eq!(store::all_events(&staged.unwrap()).unwrap(), s.events().unwrap());
    }

    #[test]
    fn each_damage_fails_its_own_item() {
        let (_d, s) = server();
        let good = s.full_backup(1, 10).unwrap();
        let fails = |b: &FullBackup| verify(b).0.failure().map(|i| i.name);
        let mut truncated = good.clone();
        truncated.bytes.truncate(100);
        assert_eq!(fails(&truncated), Some("completed"));
        let mut garbage = good.clone();
        garbage.bytes = vec![7; 4096];
        garbage.manifest.size = 4096;
        garbage.manifest.sha256 = hex::encode(Sha256::digest(&garbage.bytes));
        assert_eq!(fails(&garbage), Some("restorable"));
        // A tampered row, with a manifest that matches the tampered bytes: the chain names it.
        let tampered = {
            let c = stage(&good.bytes).unwrap();
            c.execute("UPDATE events SET payload = x'ff' WHERE seq = 2", []).unwrap();
            let bytes = sqlite_bytes(&c).unwrap();
            let manifest = BackupManifest { size: bytes.len() as u64, sha256: hex::encode(Sha256::digest(&bytes)), ..good.manifest.clone() };
            FullBackup { manifest, bytes }
        };
        let v = verify(&tampered).0;
        assert_eq!(v.failure().map(|i| i.name), Some("chainVerified"));
        assert!(v.failure().unwrap().detail.contains("tenant acme: event 2"), "{v:?}");
        let mut miscounted = good.clone();
        miscounted.manifest.tenants[0].count = 9;
        assert_eq!(fails(&miscounted), Some("countsMatch"));
        assert_eq!(fails(&good), None);
    }
}

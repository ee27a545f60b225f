//! Restore (runbook 004 §6.1, §5.3) as the server's operator API, one call per step of the
//! runbook so each is a drill step of its own:
//!
//! 1. [`Server::set_mode`] READ_ONLY;
//! 2. [`choose_backup`]: the newest backup that passes the verification checklist (one that
//!    fails is refused, with the item it failed, for the previous one), and
//!    [`Server::restore_backup`] into a clean database with the online backup API;
//! 3. [`Server::verify_chain`];
//! 4. [`Server::replay_archive`] up to a point: a sequence number or a time (point-in-time);
//! 5. [`Server::rebuild_projections`];
//! 6. [`Server::verify_tenants`] against the counts and heads the backup and the archive
//!    promise, then [`Server::set_mode`] NORMAL.
//!
//! Devices ahead of the restored server are answered `Rewound` and fail closed; the operator
//! collects what they hold and [`Server::reoffer`]s it, so nothing a device holds is lost.

use std::collections::BTreeMap;

use rusqlite::OptionalExtension;

use crate::chain;
use crate::error::StoreError;
use crate::projections::resilience::Mode;
use crate::store::{self, EventRow};

use super::archive::{self, Segment};
use super::backup::{self, BackupVerification, FullBackup};
use super::{Diagnostics, Server};

/// Why a restore step refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreError {
    /// The step needs the server READ_ONLY first (runbook 004 §6.1 step 1).
    NotReadOnly,
    /// The backup failed its verification checklist.
    Unverified {
        id: u64,
        check: &'static str,
        detail: String,
    },
    /// No backup passed verification.
    NoVerifiedBackup,
    /// A re-offered event is not the tenant's, or its write id is taken by another op.
    Reoffer {
        op_id: String,
        detail: String,
    },
    Store(StoreError),
}

impl RestoreError {
    pub fn code(&self) -> &'static str {
        match self {
            RestoreError::NotReadOnly => "restore:notReadOnly",
            RestoreError::Unverified { .. } => "restore:backupUnverified",
            RestoreError::NoVerifiedBackup => "restore:noVerifiedBackup",
            RestoreError::Reoffer { .. } => "restore:reofferRefused",
            RestoreError::Store(e) => e.code(),
        }
    }
}

impl std::fmt::Display for RestoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreError::NotReadOnly => write!(f, "restore:notReadOnly: set the server READ_ONLY before restoring"),
            RestoreError::Unverified { id, check, detail } => write!(f, "restore:backupUnverified: backup {id} fails {check}: {detail}"),
            RestoreError::NoVerifiedBackup => write!(f, "restore:noVerifiedBackup: no backup passes verification"),
            RestoreError::Reoffer { op_id, detail } => write!(f, "restore:reofferRefused: op {op_id}: {detail}"),
            RestoreError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RestoreError {}

impl From<StoreError> for RestoreError {
    fn from(e: StoreError) -> Self {
        RestoreError::Store(e)
    }
}

impl From<rusqlite::Error> for RestoreError {
    fn from(e: rusqlite::Error) -> Self {
        RestoreError::Store(e.into())
    }
}

/// The newest of `candidates` that passes verification, and the checklists of the newer ones
/// refused.
pub fn choose_backup(candidates: &[FullBackup]) -> (Option<&FullBackup>, Vec<BackupVerification>) {
    let mut newest_first: Vec<&FullBackup> = candidates.iter().collect();
    newest_first.sort_by_key(|b| std::cmp::Reverse((b.manifest.taken_ms, b.manifest.id)));
    let mut refused = Vec::new();
    for b in newest_first {
        let (v, _) = backup::verify(b);
        if v.passed() {
            return (Some(b), refused);
        }
        refused.push(v);
    }
    (None, refused)
}

/// Where a replay stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayPoint {
    /// Everything the archive holds.
    End,
    /// Events up to and including this sequence number.
    Seq(u64),
    /// Each tenant's events up to the first one created after this time (by its envelope).
    Time(i64),
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub replayed: u64,
    /// The segments replayed whole.
    pub segments: u64,
    /// The first segment that could not be used (missing from the sequence, or failing its
    /// manifest), where the replay stopped.
    pub stopped_at: Option<(u64, String)>,
    /// The last sequence number the store holds after the replay.
    pub through_seq: u64,
}

/// A tenant whose restored events differ from what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantMismatch {
    pub tenant: String,
    pub expected: Option<(u64, Vec<u8>)>,
    pub found: Option<(u64, Vec<u8>)>,
}

/// What a re-offer did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReofferReport {
    /// Ops the server did not hold and appended, in order.
    pub appended: Vec<String>,
    /// Ops it already held.
    pub held: Vec<String>,
}

impl Server {
    fn require_read_only(&self) -> Result<(), RestoreError> {
        if self.mode()? != Mode::ReadOnly {
            return Err(RestoreError::NotReadOnly);
        }
        Ok(())
    }

    /// Restores `b` into the store (runbook 004 §6.1 step 2), once it passes the checklist: its
    /// pages replace every page of the store through the online backup API, so nothing of the
    /// damaged store survives. The server stays READ_ONLY, and new archive segments go on a new
    /// timeline above `timelines_max` (the highest the backup node holds).
    pub fn restore_backup(&mut self, b: &FullBackup, timelines_max: u64) -> Result<BackupVerification, RestoreError> {
        self.require_read_only()?;
        let (v, staged) = backup::verify(b);
        let Some(staged) = staged else {
            let f = v.failure().expect("a refused backup names the item it failed");
            return Err(RestoreError::Unverified { id: b.manifest.id, check: f.name, detail: f.detail.clone() });
        };
        self.conn.flush_prepared_statement_cache();
        backup::copy(&staged, &mut self.conn)?;
        // The copied header is the staging copy's (a rollback journal): the store runs in WAL.
        let mode: String = self.conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(RestoreError::Store(StoreError::Sqlite { detail: format!("journal_mode is {mode} after the restore, not wal") }));
        }
        // The backup carries the modes of its time: the restore is not over yet.
        self.set_mode(&super::ModeScope::Server, Mode::ReadOnly, &[])?;
        archive::set_timeline(&self.conn, timelines_max.max(b.manifest.timeline) + 1)?;
        Ok(v)
    }

    /// Verifies every tenant's hash chain (runbook 004 §3.1): the first event of each tenant
    /// whose link does not verify, named exactly; empty when all verify.
    pub fn verify_chain(&self) -> Result<Vec<(String, u64)>, StoreError> {
        backup::broken_links(&self.conn)
    }

    /// Replays archived events the store does not hold, in order, up to `until` (runbook 004
    /// §6.1 step 4). Each event must extend its tenant's chain; segments must follow each other
    /// without a gap, and a missing or corrupt one stops the replay there (reported). Replayed
    /// segments are recorded as archived. Recovery: needs READ_ONLY.
    pub fn replay_archive(&mut self, segments: &[Segment], until: ReplayPoint) -> Result<ReplayReport, RestoreError> {
        self.require_read_only()?;
        let mut sorted: Vec<&Segment> = segments.iter().collect();
        sorted.sort_by_key(|s| (s.manifest.timeline, s.manifest.id));
        let tx = self.conn.transaction()?;
        let held: u64 = tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
        let mut expect = held + 1;
        let mut report = ReplayReport::default();
        let mut stopped_tenants: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        'segments: for s in sorted {
            if s.manifest.last_seq <= held {
                continue;
            }
            let events = match s.verify() {
                Ok(events) if s.manifest.first_seq <= expect => events,
                Ok(_) => {
                    report.stopped_at = Some((s.manifest.id, format!("archive:segmentGap: events {expect}..{} are missing", s.manifest.first_seq)));
                    break;
                }
                Err(e) => {
                    report.stopped_at = Some((s.manifest.id, e.to_string()));
                    break;
                }
            };
            for e in events.iter().filter(|e| e.seq > held) {
                let stop = match until {
                    ReplayPoint::End => false,
                    ReplayPoint::Seq(seq) => e.seq > seq,
                    ReplayPoint::Time(t) => stopped_tenants.contains(&e.tenant) || super::projections::stored_event(e).ts_ms > t,
                };
                if stop {
                    if let ReplayPoint::Time(_) = until {
                        // This tenant's prefix ends here; the others go on (creation times come
                        // from the writers' clocks, so only a prefix of each chain is a state
                        // the tenant was in).
                        stopped_tenants.insert(e.tenant.clone());
                        continue;
                    }
                    break 'segments;
                }
                append_verbatim(&tx, e)?;
                report.replayed += 1;
            }
            expect = s.manifest.last_seq + 1;
            if stopped_tenants.is_empty() {
                archive::insert(&tx, s, true)?;
                report.segments += 1;
            }
        }
        tx.commit()?;
        report.through_seq = self.conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
        Ok(report)
    }

    /// Compares every tenant's count and head with `expected` (runbook 004 §6.1 step 6): the
    /// tenants that differ, either way.
    pub fn verify_tenants(&self, expected: &[Diagnostics]) -> Result<Vec<TenantMismatch>, StoreError> {
        let found: BTreeMap<String, (u64, Vec<u8>)> = self.diagnostics()?.into_iter().map(|d| (d.tenant, (d.count, d.head))).collect();
        let want: BTreeMap<String, (u64, Vec<u8>)> = expected.iter().map(|d| (d.tenant.clone(), (d.count, d.head.clone()))).collect();
        let tenants: std::collections::BTreeSet<&String> = found.keys().chain(want.keys()).collect();
        Ok(tenants
            .into_iter()
            .filter(|t| found.get(*t) != want.get(*t))
            .map(|t| TenantMismatch { tenant: t.clone(), expected: want.get(t).cloned(), found: found.get(t).cloned() })
            .collect())
    }

    /// Takes back events of `tenant` that a device holds and the restored server lost (runbook
    /// 004 §6.1 after the restore): each op the server does not hold is appended, in the
    /// device's order, with its replica and write id, chained onto the server's head and
    /// archived; ops it holds are skipped. Allowed in READ_ONLY: it is the restore's last step.
    pub fn reoffer(&mut self, tenant: &str, events: &[EventRow]) -> Result<ReofferReport, RestoreError> {
        let tx = self.conn.transaction()?;
        let mut report = ReofferReport::default();
        let mut head = store::chain_head(&tx, tenant)?;
        let mut next_seq: u64 = tx.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM events", [], |r| r.get(0))?;
        let mut appended = Vec::new();
        for e in events {
            let refuse = |detail: String| RestoreError::Reoffer { op_id: e.op_id.clone(), detail };
            if e.tenant != tenant {
                return Err(refuse(format!("an event of tenant {} offered for {tenant}", e.tenant)));
            }
            let known: Option<String> = tx
                .query_row("SELECT replica FROM events WHERE op_id = ?1 UNION ALL SELECT replica FROM pruned WHERE op_id = ?1", [&e.op_id], |r| r.get(0))
                .optional()?;
            if known.is_some() {
                report.held.push(e.op_id.clone());
                continue;
            }
            let bound: Option<String> = tx.query_row("SELECT tenant FROM replicas WHERE replica = ?1", [&e.replica], |r| r.get(0)).optional()?;
            match bound {
                Some(t) if t != tenant => return Err(refuse(format!("replica {} belongs to tenant {t}", e.replica))),
                Some(_) => {}
                None => {
                    tx.execute("INSERT INTO replicas(replica, tenant) VALUES (?1, ?2)", [&e.replica, tenant])?;
                }
            }
            let taken: Option<String> = tx
                .query_row("SELECT op_id FROM events WHERE replica = ?1 AND write_id = ?2", rusqlite::params![e.replica, e.write_id], |r| r.get(0))
                .optional()?;
            if let Some(other) = taken {
                return Err(refuse(format!("write id {} of replica {} is taken by op {other}", e.write_id, e.replica)));
            }
            let hash = chain::event_hash(&head, &e.kind, tenant, &e.payload);
            let row = EventRow { seq: next_seq, prev_hash: head, hash: hash.to_vec(), ..e.clone() };
            store::insert_event(&tx, &row)?;
            tx.execute("UPDATE replicas SET last_write_id = MAX(last_write_id, ?1) WHERE replica = ?2", rusqlite::params![e.write_id, e.replica])?;
            report.appended.push(e.op_id.clone());
            appended.push(row);
            head = hash.to_vec();
            next_seq += 1;
        }
        if archive::mode(&tx, self.options.archive)?.is_some() {
            archive::seal(&tx, &appended)?;
        }
        tx.commit()?;
        Ok(report)
    }
}

/// Appends an archived event as it was (same seq, same hashes), after checking it extends its
/// tenant's chain; binds its replica and raises its last write id as the push did.
fn append_verbatim(c: &rusqlite::Connection, e: &EventRow) -> Result<(), RestoreError> {
    let head = store::chain_head(c, &e.tenant)?;
    if e.prev_hash != head || e.hash != chain::event_hash(&head, &e.kind, &e.tenant, &e.payload).as_slice() {
        return Err(RestoreError::Store(StoreError::Invalid { detail: format!("archived event {} of {} does not extend its chain", e.seq, e.tenant) }));
    }
    store::insert_event(c, e)?;
    c.execute("INSERT OR IGNORE INTO replicas(replica, tenant) VALUES (?1, ?2)", [&e.replica, &e.tenant])?;
    c.execute("UPDATE replicas SET last_write_id = MAX(last_write_id, ?1) WHERE replica = ?2", rusqlite::params![e.write_id, e.replica])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{PendingWrite, Request, Response};
    use crate::server::{ArchiveMode, ModeScope, ServerOptions};

    fn server(dir: &tempfile::TempDir, name: &str) -> Server {
        let options = ServerOptions { archive: Some(ArchiveMode::Asynchronous { window_events_max: 1_000 }), ..ServerOptions::default() };
        Server::open_with(dir.path().join(name).to_str().unwrap(), options).unwrap()
    }

    fn push(s: &mut Server, tenant: &str, id: u64) -> Response {
        let w = PendingWrite { write_id: id, op_id: Some(format!("{tenant}-{id}")), aggregate: "a".into(), kind: "k".into(), payload: vec![id as u8] };
        s.handle(Request::Push { tenant: tenant.into(), replica: format!("r-{tenant}"), writes: vec![w], head: None })
    }

    #[test]
    fn restore_then_replay_to_a_point_equals_the_server_at_that_point() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = server(&dir, "server.db");
        push(&mut s, "acme", 1);
        push(&mut s, "globex", 1);
        let b = s.full_backup(1, 0).unwrap();
        push(&mut s, "acme", 2);
        let at_4 = {
            push(&mut s, "globex", 2);
            s.diagnostics().unwrap()
        };
        push(&mut s, "acme", 3);
        let archive = s.unshipped_segments().unwrap();
        let all = s.diagnostics().unwrap();

        // A lost disk: a clean database, READ_ONLY, the backup, then the archive up to seq 4.
        let mut r = server(&dir, "fresh.db");
        assert_eq!(r.restore_backup(&b, 1), Err(RestoreError::NotReadOnly));
        r.set_mode(&ModeScope::Server, Mode::ReadOnly, &[]).unwrap();
        assert!(r.restore_backup(&b, 1).unwrap().passed());
        assert_eq!(r.verify_chain().unwrap(), vec![]);
        let rep = r.replay_archive(&archive, ReplayPoint::Seq(4)).unwrap();
        assert_eq!((rep.replayed, rep.through_seq), (2, 4));
        assert_eq!(r.verify_tenants(&at_4).unwrap(), vec![]);
        assert_eq!(r.verify_tenants(&all).unwrap().len(), 1, "acme's last event is past the point");
        // The rest of the archive, then projections, then NORMAL.
        r.replay_archive(&archive, ReplayPoint::End).unwrap();
        assert_eq!(r.events().unwrap(), s.events().unwrap());
        r.rebuild_projections(&Default::default()).unwrap();
        assert_eq!(r.projection_rows("aggregate_state", "acme").unwrap(), s.projection_rows("aggregate_state", "acme").unwrap());
        r.set_mode(&ModeScope::Server, Mode::Normal, &[]).unwrap();
        assert_eq!(r.archive_timeline().unwrap(), 2, "a restore starts a new timeline");
        assert!(matches!(push(&mut r, "acme", 4), Response::Pushed { .. }));
    }

    #[test]
    fn a_corrupt_segment_stops_the_replay_where_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = server(&dir, "server.db");
        let b = s.full_backup(1, 0).unwrap();
        push(&mut s, "acme", 1);
        push(&mut s, "acme", 2);
        let mut archive = s.unshipped_segments().unwrap();
        archive[1].bytes[5] ^= 4;
        let mut r = server(&dir, "fresh.db");
        r.set_mode(&ModeScope::Server, Mode::ReadOnly, &[]).unwrap();
        r.restore_backup(&b, 1).unwrap();
        let rep = r.replay_archive(&archive, ReplayPoint::End).unwrap();
        assert_eq!(rep.replayed, 1);
        assert_eq!(rep.stopped_at.as_ref().map(|s| s.0), Some(2));
        // A missing segment is a gap.
        let rep = r.replay_archive(&archive[..0], ReplayPoint::End).unwrap();
        assert_eq!(rep.replayed, 0);
    }

    #[test]
    fn a_failing_backup_is_refused_for_the_previous_verified_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = server(&dir, "server.db");
        push(&mut s, "acme", 1);
        let older = s.full_backup(1, 10).unwrap();
        push(&mut s, "acme", 2);
        let mut newer = s.full_backup(2, 20).unwrap();
        newer.bytes[200] ^= 1;
        let candidates = [older.clone(), newer.clone()];
        let (chosen, refused) = choose_backup(&candidates);
        assert_eq!(chosen, Some(&older));
        assert_eq!(refused.len(), 1);
        assert_eq!((refused[0].id, refused[0].failure().unwrap().name), (2, "completed"));
        s.set_mode(&ModeScope::Server, Mode::ReadOnly, &[]).unwrap();
        let e = s.restore_backup(&newer, 1).unwrap_err();
        assert_eq!(e.code(), "restore:backupUnverified");
    }

    #[test]
    fn a_device_ahead_is_answered_rewound_and_its_reoffer_loses_nothing() {
        use crate::proto::ChainPoint;
        let dir = tempfile::tempdir().unwrap();
        let mut s = server(&dir, "server.db");
        push(&mut s, "acme", 1);
        let b = s.full_backup(1, 0).unwrap();
        push(&mut s, "acme", 2);
        push(&mut s, "acme", 3);
        // What a device pulled before the disaster.
        let held = s.events().unwrap();
        let device_head = ChainPoint { seq: held[2].seq, hash: held[2].hash.clone() };
        let mut r = server(&dir, "fresh.db");
        r.set_mode(&ModeScope::Server, Mode::ReadOnly, &[]).unwrap();
        r.restore_backup(&b, 1).unwrap();
        r.set_mode(&ModeScope::Server, Mode::Normal, &[]).unwrap();
        let pull = r.handle(Request::Pull { tenant: "acme".into(), replica: "r-acme".into(), since: 3, limit: 8, head: Some(device_head) });
        let Response::Rewound { held: server_head } = pull else { panic!("{pull:?}") };
        assert_eq!(server_head.map(|h| h.seq), Some(1));
        let rep = r.reoffer("acme", &held).unwrap();
        assert_eq!(rep.held, vec!["acme-1".to_string()]);
        assert_eq!(rep.appended, vec!["acme-2".to_string(), "acme-3".to_string()]);
        // Nothing else was pushed meanwhile, so the chain is the very one the device holds.
        assert_eq!(r.events().unwrap(), held);
        assert_eq!(r.reoffer("acme", &held).unwrap().appended, Vec::<String>::new(), "a re-offer is idempotent");
        let other = EventRow { tenant: "globex".into(), ..held[0].clone() };
        assert_eq!(r.reoffer("acme", &[other]).unwrap_err().code(), "restore:reofferRefused");
    }
}

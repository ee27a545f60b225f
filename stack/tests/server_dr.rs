//! Devices against a server that dies and comes back (runbook 004 §2, §5, §6.1): a READ_ONLY
//! server answers pushes "retry later" and the device keeps its writes while it still pulls; a
//! verified backup restores to a chain-valid store equal to the server at the backup point, and
//! the archive replays it forward to a sequence number or a time; a backup that fails its
//! checklist is refused for the previous verified one; a synchronous archive loses no
//! acknowledged push, an asynchronous one only the window it reported; a device ahead of a
//! server restored from an older backup is refused `sync:serverRewound` and changes nothing,
//! until the operator re-offers what it holds and rebases it; then every chain agrees and
//! nothing any device held is lost.
//!
//! Real clients against a real server in the same process; the backup node's part (what was
//! shipped) is the segments the server marked shipped.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use drill_stack::client::{Client, DeviceKeys, Ring};
use drill_stack::clock::Clock;
use drill_stack::crypto::Key;
use drill_stack::projections::resilience::Mode;
use drill_stack::proto::{Request, Response};
use drill_stack::rpc::Exchange;
use drill_stack::server::projections::stored_event;
use drill_stack::server::restore::{choose_backup, ReplayPoint};
use drill_stack::server::{ArchiveMode, ModeScope, Segment, Server, ServerOptions};
use drill_stack::store::EventRow;
use drill_stack::SyncError;

struct Direct<'a>(&'a mut Server);

impl Exchange for Direct<'_> {
    fn version(&self) -> u32 {
        drill_stack::proto::PROTOCOL_VERSION
    }

    fn call(&mut self, req: &Request) -> impl Future<Output = Result<Response, SyncError>> {
        std::future::ready(Ok(self.0.handle(req.clone())))
    }
}

fn sync(c: &mut Client, s: &mut Server) -> Result<drill_stack::client::SyncReport, SyncError> {
    let mut wire = Direct(s);
    let mut f = pin!(c.sync(&mut wire));
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("an in-process exchange never waits"),
    }
}

/// A device clock the test moves.
#[derive(Clone, Default)]
struct TestClock(Rc<Cell<i64>>);

impl Clock for TestClock {
    fn now_unix_ms(&self) -> i64 {
        self.0.get()
    }
}

fn device_of(dir: &tempfile::TempDir, replica: &str, tenant: &str, clock: TestClock) -> Client {
    use rand_chacha::rand_core::SeedableRng;
    let ring = Ring::Fixed([("a".to_string(), Key::from_bytes([7; 32]))].into());
    let seed = replica.bytes().map(u64::from).sum();
    let keys = DeviceKeys::new(ring, Box::new(rand_chacha::ChaCha8Rng::seed_from_u64(seed)));
    let path = dir.path().join(format!("{replica}.db"));
    Client::open(path.to_str().unwrap(), replica, tenant, Box::new(clock), keys).unwrap()
}

fn device(dir: &tempfile::TempDir, replica: &str) -> Client {
    device_of(dir, replica, "acme", TestClock::default())
}

fn server_with(dir: &tempfile::TempDir, name: &str, archive: ArchiveMode) -> Server {
    let options = ServerOptions { archive: Some(archive), ..ServerOptions::default() };
    Server::open_with(dir.path().join(name).to_str().unwrap(), options).unwrap()
}

fn server(dir: &tempfile::TempDir, name: &str) -> Server {
    server_with(dir, name, ArchiveMode::Synchronous)
}

/// Ships every sealed segment to the "backup node" (`node`) and records it shipped.
fn ship_to(s: &Server, node: &mut Vec<Segment>) {
    for seg in s.unshipped_segments().unwrap() {
        s.mark_shipped(seg.manifest.timeline, seg.manifest.id).unwrap();
        node.push(seg);
    }
}

fn ship_all(s: &Server) {
    ship_to(s, &mut Vec::new());
}

/// Syncs until the device's outbox is empty, shipping between attempts (a synchronous archive
/// acknowledges a push on the attempt after its segment is shipped).
fn settle(c: &mut Client, s: &mut Server, node: &mut Vec<Segment>) {
    for _ in 0..4 {
        sync(c, s).unwrap();
        ship_to(s, node);
        if c.outbox().unwrap().is_empty() {
            sync(c, s).unwrap();
            return;
        }
    }
    panic!("the outbox did not drain: {:?}", c.outbox().unwrap());
}

fn ops(events: &[EventRow]) -> BTreeSet<String> {
    events.iter().map(|e| e.op_id.clone()).collect()
}

/// The runbook's restore onto a clean database, each step an operator API: READ_ONLY, the
/// newest verified backup, the chain, the archive up to `until`, projections, NORMAL.
fn restore(
    dir: &tempfile::TempDir,
    name: &str,
    archive: ArchiveMode,
    backups: &[drill_stack::server::FullBackup],
    node: &[Segment],
    until: ReplayPoint,
) -> Server {
    let mut r = server_with(dir, name, archive);
    r.set_mode(&ModeScope::Server, Mode::ReadOnly, &[]).unwrap();
    let (chosen, _) = choose_backup(backups);
    r.restore_backup(chosen.expect("a verified backup"), 1).unwrap();
    assert_eq!(r.verify_chain().unwrap(), vec![]);
    let rep = r.replay_archive(node, until).unwrap();
    assert_eq!(rep.stopped_at, None, "{rep:?}");
    r.rebuild_projections(&Default::default()).unwrap();
    assert_eq!(r.verify_chain().unwrap(), vec![]);
    r.set_mode(&ModeScope::Server, Mode::Normal, &[]).unwrap();
    r
}

#[test]
fn a_verified_backup_restores_to_a_chain_valid_store_equal_to_the_server_at_the_backup_point() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = server(&dir, "server.db");
    let mut node = Vec::new();
    let mut a = device(&dir, "a");
    let mut g = device_of(&dir, "g", "globex", TestClock::default());
    for (acme, p) in [(true, &b"one"[..]), (false, b"other"), (true, b"two")] {
        let c = if acme { &mut a } else { &mut g };
        c.append("a", "k", p).unwrap();
        settle(c, &mut s, &mut node);
    }
    let backup = s.full_backup(1, 10).unwrap();
    let at_backup = s.events().unwrap();
    a.append("a", "k", b"three").unwrap();
    settle(&mut a, &mut s, &mut node);
    assert_eq!(backup.manifest.through_seq, 3);

    let mut r = server(&dir, "fresh.db");
    r.set_mode(&ModeScope::Server, Mode::ReadOnly, &[]).unwrap();
    let checklist = r.restore_backup(&backup, 1).unwrap();
    assert!(checklist.passed(), "{checklist:?}");
    assert_eq!(r.verify_chain().unwrap(), vec![], "the restored store's chain verifies");
    assert_eq!(r.events().unwrap(), at_backup, "the server as it was at the backup point");
    let counts: Vec<(String, u64)> = r.diagnostics().unwrap().into_iter().map(|d| (d.tenant, d.count)).collect();
    assert_eq!(counts, vec![("acme".to_string(), 2), ("globex".to_string(), 1)]);
    assert_eq!(r.events().unwrap().len() as u64, backup.manifest.tenants.iter().map(|t| t.count).sum::<u64>());
}

#[test]
fn a_point_in_time_restore_stops_at_a_sequence_number_or_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let mode = ArchiveMode::Asynchronous { window_events_max: 100 };
    let mut s = server_with(&dir, "server.db", mode);
    let mut node = Vec::new();
    let backup = s.full_backup(1, 0).unwrap();
    let (ca, cg) = (TestClock::default(), TestClock::default());
    let mut a = device_of(&dir, "a", "acme", ca.clone());
    let mut g = device_of(&dir, "g", "globex", cg.clone());
    // Writes at 100, 200, 300 (acme) and 150, 250 (globex), pushed in time order.
    for (t, acme) in [(100, true), (150, false), (200, true), (250, false), (300, true)] {
        let (c, clock) = if acme { (&mut a, &ca) } else { (&mut g, &cg) };
        clock.0.set(t);
        c.append("a", "k", format!("at {t}").as_bytes()).unwrap();
        settle(c, &mut s, &mut node);
    }
    let history = s.events().unwrap();
    assert_eq!(history.len(), 5);

    let by_seq = restore(&dir, "seq.db", mode, std::slice::from_ref(&backup), &node, ReplayPoint::Seq(3));
    assert_eq!(by_seq.events().unwrap(), history[..3].to_vec());
    let by_time = restore(&dir, "time.db", mode, std::slice::from_ref(&backup), &node, ReplayPoint::Time(220));
    let want: Vec<EventRow> = history.iter().filter(|e| stored_event(e).ts_ms <= 220).cloned().collect();
    assert_eq!(want.len(), 3);
    assert_eq!(by_time.events().unwrap(), want, "each tenant's history as of 220");
    let whole = restore(&dir, "end.db", mode, std::slice::from_ref(&backup), &node, ReplayPoint::End);
    assert_eq!(whole.events().unwrap(), history);
    assert_eq!(whole.projection_rows("aggregate_state", "acme").unwrap(), s.projection_rows("aggregate_state", "acme").unwrap());
}

#[test]
fn a_backup_that_fails_verification_is_refused_for_the_previous_verified_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = server(&dir, "server.db");
    let mut node = Vec::new();
    let mut a = device(&dir, "a");
    a.append("a", "k", b"one").unwrap();
    settle(&mut a, &mut s, &mut node);
    let older = s.full_backup(1, 10).unwrap();
    a.append("a", "k", b"two").unwrap();
    settle(&mut a, &mut s, &mut node);
    let mut newer = s.full_backup(2, 20).unwrap();
    let middle = newer.bytes.len() / 2;
    newer.bytes[middle] ^= 0x10;
    let candidates = [older.clone(), newer.clone()];

    let (chosen, refused) = choose_backup(&candidates);
    assert_eq!(chosen.map(|b| b.manifest.id), Some(1), "the previous verified backup");
    assert_eq!(refused.iter().map(|v| (v.id, v.failure().unwrap().name)).collect::<Vec<_>>(), vec![(2, "completed")]);
    let mut r = server(&dir, "fresh.db");
    r.set_mode(&ModeScope::Server, Mode::ReadOnly, &[]).unwrap();
    let e = r.restore_backup(&newer, 1).unwrap_err();
    assert_eq!(e.code(), "restore:backupUnverified", "{e}");
    assert!(r.events().unwrap().is_empty(), "a refused backup changes nothing");
    drop(r);
    // The older backup plus the archive loses nothing.
    let r = restore(&dir, "fresh2.db", ArchiveMode::Synchronous, &candidates, &node, ReplayPoint::End);
    assert_eq!(r.events().unwrap(), s.events().unwrap());
}

#[test]
fn a_synchronous_archive_loses_no_acknowledged_push() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = server(&dir, "server.db");
    let mut node = Vec::new();
    let backup = s.full_backup(1, 0).unwrap();
    let mut a = device(&dir, "a");
    let mut b = device(&dir, "b");
    for p in [&b"one"[..], b"two"] {
        a.append("a", "k", p).unwrap();
        settle(&mut a, &mut s, &mut node);
    }
    b.append("a", "k", b"three").unwrap();
    settle(&mut b, &mut s, &mut node);
    // Committed on the server, never shipped: not acknowledged, not served.
    b.append("a", "k", b"four").unwrap();
    let r = sync(&mut b, &mut s).unwrap();
    assert_eq!(r.push_deferred.as_deref(), Some("archivePending"));
    assert_eq!(s.events().unwrap().len(), 4);
    assert_eq!(b.outbox().unwrap().len(), 1, "the unacknowledged write stays in the outbox");
    let r = sync(&mut a, &mut s).unwrap();
    assert_eq!(r.pulled, 1, "only what the archive holds is served: b's three, not four");
    let acknowledged: BTreeSet<String> = ops(&a.events().unwrap()).union(&ops(&b.events().unwrap())).cloned().collect();
    assert_eq!(acknowledged.len(), 3);

    // The disk is lost with the unshipped segment.
    drop(s);
    let mut r = restore(&dir, "fresh.db", ArchiveMode::Synchronous, &[backup], &node, ReplayPoint::End);
    let restored = ops(&r.events().unwrap());
    assert!(acknowledged.is_subset(&restored), "every acknowledged push is on the restored server");
    // No device is ahead; the unacknowledged write comes back from b's outbox.
    settle(&mut b, &mut r, &mut node);
    settle(&mut a, &mut r, &mut node);
    assert_eq!(r.events().unwrap().len(), 4);
    for c in [&a, &b] {
        assert_eq!(c.events().unwrap(), r.events().unwrap());
    }
}

#[test]
fn an_asynchronous_archive_loses_only_its_reported_window() {
    let dir = tempfile::tempdir().unwrap();
    let mode = ArchiveMode::Asynchronous { window_events_max: 8 };
    let mut s = server_with(&dir, "server.db", mode);
    let mut node = Vec::new();
    let backup = s.full_backup(1, 0).unwrap();
    let mut a = device(&dir, "a");
    for p in [&b"one"[..], b"two"] {
        a.append("a", "k", p).unwrap();
        settle(&mut a, &mut s, &mut node);
    }
    // Acknowledged at once, not yet shipped when the disk goes.
    for p in [&b"three"[..], b"four", b"five"] {
        a.append("a", "k", p).unwrap();
        assert_eq!(sync(&mut a, &mut s).unwrap().push_deferred, None);
    }
    let window = s.archive_window().unwrap();
    assert_eq!((window.segments, window.events), (3, 3));
    let in_window: BTreeSet<String> = s.unshipped_segments().unwrap().iter().flat_map(|seg| seg.verify().unwrap()).map(|e| e.op_id).collect();
    let acknowledged = ops(&s.events().unwrap());
    assert!(a.outbox().unwrap().is_empty());

    drop(s);
    let mut r = restore(&dir, "fresh.db", mode, &[backup], &node, ReplayPoint::End);
    let lost: BTreeSet<String> = acknowledged.difference(&ops(&r.events().unwrap())).cloned().collect();
    assert_eq!(lost, in_window, "exactly the reported window is lost");
    // The device that holds them is ahead; the operator re-offers what it holds.
    let err = sync(&mut a, &mut r).unwrap_err();
    assert_eq!(err.signature().as_deref(), Some("sync:serverRewound"), "{err}");
    let report = r.reoffer("acme", &a.events().unwrap()).unwrap();
    assert_eq!(report.appended.iter().cloned().collect::<BTreeSet<_>>(), in_window);
    let holds: BTreeSet<String> = report.appended.iter().chain(&report.held).cloned().collect();
    a.rebase_after_restore(&holds).unwrap();
    sync(&mut a, &mut r).unwrap();
    assert_eq!(ops(&r.events().unwrap()), acknowledged, "nothing any device held is lost");
    assert_eq!(a.events().unwrap(), r.events().unwrap());
}

#[test]
fn a_read_only_server_defers_pushes_and_still_serves_pulls() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = server(&dir, "server.db");
    let mut a = device(&dir, "a");
    let mut b = device(&dir, "b");
    b.append("a", "k", b"from b").unwrap();
    let r = sync(&mut b, &mut s).unwrap();
    assert_eq!(r.push_deferred.as_deref(), Some("archivePending"), "a synchronous archive acknowledges only what is shipped");
    ship_all(&s);
    sync(&mut b, &mut s).unwrap();
    assert!(b.outbox().unwrap().is_empty());
    s.set_mode(&ModeScope::Server, Mode::ReadOnly, &[]).unwrap();
    a.append("a", "k", b"from a").unwrap();
    let r = sync(&mut a, &mut s).unwrap();
    assert_eq!(r.push_deferred.as_deref(), Some("readOnly"));
    assert_eq!(r.pulled, 1, "pulls are served in READ_ONLY");
    assert_eq!(a.outbox().unwrap().len(), 1, "the outbox keeps the refused write");
    s.set_mode(&ModeScope::Server, Mode::Normal, &[]).unwrap();
    sync(&mut a, &mut s).unwrap();
    ship_all(&s);
    let r = sync(&mut a, &mut s).unwrap();
    assert_eq!(r.push_deferred, None);
    assert!(a.outbox().unwrap().is_empty());
    assert_eq!(s.events().unwrap().len(), 2);
}

#[test]
fn a_device_ahead_of_a_restored_server_fails_closed_until_its_events_are_reoffered() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = server(&dir, "server.db");
    let mut a = device(&dir, "a");
    let mut b = device(&dir, "b");
    a.append("a", "k", b"one").unwrap();
    sync(&mut a, &mut s).unwrap();
    ship_all(&s);
    sync(&mut a, &mut s).unwrap();
    let backup = s.full_backup(1, 0).unwrap();
    for p in [&b"two"[..], b"three"] {
        a.append("a", "k", p).unwrap();
    }
    sync(&mut a, &mut s).unwrap();
    ship_all(&s);
    sync(&mut a, &mut s).unwrap();
    assert_eq!(a.events().unwrap().len(), 3);
    // The disk is lost and so is the archive after the backup: the server comes back behind `a`.
    drop(s);
    let mut s = server(&dir, "fresh.db");
    s.set_mode(&ModeScope::Server, Mode::ReadOnly, &[]).unwrap();
    s.restore_backup(&backup, 1).unwrap();
    s.set_mode(&ModeScope::Server, Mode::Normal, &[]).unwrap();
    // Another device writes to the restored server meanwhile.
    b.append("a", "k", b"b after the restore").unwrap();
    sync(&mut b, &mut s).unwrap();
    ship_all(&s);
    sync(&mut b, &mut s).unwrap();

    let before = a.export_state().unwrap();
    a.append("a", "k", b"four").unwrap();
    let before_with_write = a.export_state().unwrap();
    let held_by_a: BTreeSet<String> = ops(&a.events().unwrap()).into_iter().chain(a.outbox().unwrap().into_iter().filter_map(|w| w.op_id)).collect();
    let err = sync(&mut a, &mut s).unwrap_err();
    assert_eq!(err.signature().as_deref(), Some("sync:serverRewound"), "{err}");
    assert_eq!(a.export_state().unwrap(), before_with_write, "fail-closed");
    assert_ne!(before, before_with_write);
    assert_eq!(s.events().unwrap().len(), 2, "nothing of the device ahead was appended");

    // Rebasing before the re-offer would drop what only `a` holds: refused.
    let held: BTreeSet<String> = s.events().unwrap().into_iter().map(|e| e.op_id).collect();
    assert_eq!(a.rebase_after_restore(&held).unwrap_err().signature().as_deref(), Some("rebase:eventsNotReoffered"));
    // The operator's procedure: re-offer what `a` holds, rebase it, sync.
    let report = s.reoffer("acme", &a.events().unwrap()).unwrap();
    assert_eq!(report.appended.len(), 2);
    let holds: BTreeSet<String> = report.appended.iter().chain(&report.held).cloned().collect();
    a.rebase_after_restore(&holds).unwrap();
    ship_all(&s);
    sync(&mut a, &mut s).unwrap();
    ship_all(&s);
    sync(&mut a, &mut s).unwrap();
    sync(&mut b, &mut s).unwrap();
    let server_ops: Vec<String> = s.events().unwrap().into_iter().map(|e| e.op_id).collect();
    assert_eq!(server_ops.len(), 5, "one, two, three, b's write and four: {server_ops:?}");
    assert!(held_by_a.is_subset(&ops(&s.events().unwrap())), "nothing the device ahead held is lost");
    for c in [&a, &b] {
        assert_eq!(c.events().unwrap(), s.events().unwrap(), "every chain agrees");
        assert!(c.outbox().unwrap().is_empty());
    }
}

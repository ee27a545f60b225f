//! The checks that catch what mutation testing found no test noticing in the sync client and
//! server (docs/bench.md, "Power to find bugs"): renumbering of write ids that really went
//! backwards, the counts a sync reports, the page budget, a tampered pulled event, the version-1
//! wire shape, the exported state's text, the device's identity, and two server policies
//! (retention starts at twice the kept events; `hasMore` means more items).
//!
//! Each test runs a real client against a real server in the same process; a few put a rewriting
//! hook between them, as a faulty transport would.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use drill_stack::client::{Client, DeviceKeys, ExportedState, Ring, PULL_PAGES_MAX};
use drill_stack::clock::FixedClock;
use drill_stack::crypto::Key;
use drill_stack::proto::{PendingWrite, Request, Response, PAGE_LIMIT_MAX, PROTOCOL_VERSION};
use drill_stack::rpc::Exchange;
use drill_stack::server::{Server, ServerOptions};
use drill_stack::SyncError;

/// Rewrites a response before the client sees it.
type Rewrite = Box<dyn FnMut(&Request, Response) -> Response>;

/// A client's link to an in-process server: a protocol version, the requests sent, and an
/// optional rewrite of every response.
struct Wire<'a> {
    server: &'a mut Server,
    version: u32,
    sent: Vec<Request>,
    rewrite: Option<Rewrite>,
}

impl<'a> Wire<'a> {
    fn to(server: &'a mut Server) -> Self {
        Wire { server, version: PROTOCOL_VERSION, sent: Vec::new(), rewrite: None }
    }

    fn rewriting(server: &'a mut Server, f: impl FnMut(&Request, Response) -> Response + 'static) -> Self {
        Wire { rewrite: Some(Box::new(f)), ..Wire::to(server) }
    }
}

impl Exchange for Wire<'_> {
    fn version(&self) -> u32 {
        self.version
    }

    fn call(&mut self, req: &Request) -> impl Future<Output = Result<Response, SyncError>> {
        self.sent.push(req.clone());
        let resp = self.server.handle(req.clone());
        let resp = match &mut self.rewrite {
            Some(f) => f(req, resp),
            None => resp,
        };
        std::future::ready(Ok(resp))
    }
}

/// In-process exchanges are ready at once, so one poll finishes a sync.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("an in-process exchange never waits"),
    }
}

/// A device of tenant `acme` with its own database `file` in `dir`, holding the key of
/// aggregate `a`; its nonces come from a stream seeded by the file's name, so two devices of a
/// test never draw the same ones.
fn device(dir: &tempfile::TempDir, file: &str, replica: &str) -> Client {
    use rand_chacha::rand_core::SeedableRng;
    let path = dir.path().join(file);
    let seed = file.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let ring = Ring::Fixed([("a".to_string(), Key::from_bytes([7; 32]))].into());
    let keys = DeviceKeys::new(ring, Box::new(rand_chacha::ChaCha8Rng::seed_from_u64(seed)));
    Client::open(path.to_str().unwrap(), replica, "acme", Box::new(FixedClock(0)), keys).unwrap()
}

fn server_in(dir: &tempfile::TempDir, options: ServerOptions) -> Server {
    Server::open_with(dir.path().join("server.db").to_str().unwrap(), options).unwrap()
}

/// Writes of `replica` with ids `ids`, pushed straight to the server.
fn push_writes(s: &mut Server, replica: &str, ids: std::ops::RangeInclusive<u64>) -> Response {
    let writes = ids
        .map(|i| PendingWrite {
            write_id: i,
            op_id: Some(format!("{replica}-op-{i}")),
            aggregate: "a".into(),
            kind: "k".into(),
            payload: format!("p{i}").into_bytes(),
        })
        .collect();
    s.handle(Request::Push { tenant: "acme".into(), replica: replica.into(), writes, head: None })
}

fn write_ids_of(s: &Server, replica: &str) -> Vec<u64> {
    s.events().unwrap().into_iter().filter(|e| e.replica == replica).map(|e| e.write_id).collect()
}

/// A device whose database starts over (a fresh incarnation of the same replica) while the
/// server holds the replica's writes 1..=5: its new writes 1 and 2 are stale, are renumbered to
/// 6 and 7 above the server's last write id, are reported as renumbered, and the device's next
/// write gets 8.
#[test]
fn write_ids_that_went_backwards_are_renumbered_above_the_servers_last() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = server_in(&dir, ServerOptions::default());
    let mut old = device(&dir, "old.db", "client-1");
    for i in 0..5 {
        old.append("a", "k", format!("old-{i}").as_bytes()).unwrap();
    }
    block_on(old.sync(&mut Wire::to(&mut server))).unwrap();
    assert_eq!(write_ids_of(&server, "client-1"), vec![1, 2, 3, 4, 5]);

    let mut fresh = device(&dir, "fresh.db", "client-1");
    assert_eq!(fresh.append("a", "k", b"new-1").unwrap().0, 1);
    assert_eq!(fresh.append("a", "k", b"new-2").unwrap().0, 2);
    let report = block_on(fresh.sync(&mut Wire::to(&mut server))).expect("a renumbered push is accepted");
    assert_eq!(report.pushed.len(), 2);
    assert_eq!(report.renumbered, 2, "both stale writes got new ids");
    assert_eq!(write_ids_of(&server, "client-1"), vec![1, 2, 3, 4, 5, 6, 7]);
    assert!(fresh.outbox().unwrap().is_empty(), "the renumbered writes were pulled back and left the outbox");
    assert_eq!(fresh.append("a", "k", b"new-3").unwrap().0, 8, "the next write id is above every renumbered one");
}

/// Only `staleWriteId` means "renumber": another refusal that happens to name a last write id
/// is the server's answer and surfaces as it is, changing nothing.
#[test]
fn another_refusal_naming_a_last_write_id_is_not_renumbered() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = server_in(&dir, ServerOptions::default());
    let mut c = device(&dir, "device.db", "client-1");
    c.append("a", "k", b"one").unwrap();
    let before = c.export_state().unwrap();
    let mut wire = Wire::rewriting(&mut server, |req, resp| match req {
        Request::Push { .. } => Response::Error { code: "slowDown".into(), message: "try later".into(), last_write_id: Some(3) },
        _ => resp,
    });
    let err = block_on(c.sync(&mut wire)).unwrap_err();
    assert_eq!(err.code(), "server:slowDown", "{err}");
    assert_eq!(wire.sent.len(), 1, "one push, no renumbered retries");
    assert_eq!(c.export_state().unwrap(), before);
}

/// A reconcile acknowledgement whose cursor equals the last one is no regression (runbook 003:
/// the cursor regresses only when it moves back).
#[test]
fn a_reconcile_cursor_equal_to_the_last_one_is_not_a_regression() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = server_in(&dir, ServerOptions::default());
    let mut c = device(&dir, "device.db", "client-1");
    c.append("a", "k", b"one").unwrap();
    block_on(c.sync(&mut Wire::to(&mut server))).unwrap();
    let last = c.export_state().unwrap().reconcile_cursor;
    assert_eq!(last, 1);
    c.append("a", "k", b"two").unwrap();
    let mut wire = Wire::rewriting(&mut server, move |_, resp| match resp {
        Response::Pushed { accepted, last_reconciled_write_ids, .. } => Response::Pushed { accepted, cursor: last, last_reconciled_write_ids },
        other => other,
    });
    block_on(c.sync(&mut wire)).expect("an equal reconcile cursor is accepted");
}

/// A push nothing made stale renumbers nothing, and an attempt that settles in one page says so.
#[test]
fn a_plain_sync_reports_no_renumbering_and_its_pages() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = server_in(&dir, ServerOptions::default());
    let mut c = device(&dir, "device.db", "client-1");
    for p in [b"one", b"two", b"tri"] {
        c.append("a", "k", p).unwrap();
    }
    let report = block_on(c.sync(&mut Wire::to(&mut server))).unwrap();
    assert_eq!(report.pushed.len(), 3);
    assert_eq!(report.renumbered, 0);
    assert_eq!((report.pulled, report.pages, report.settled), (3, 1, true));
    // Pages are counted up, one a request.
    push_writes(&mut server, "client-2", 1..=(u64::from(PAGE_LIMIT_MAX) + 1));
    let report = block_on(c.sync(&mut Wire::to(&mut server))).unwrap();
    assert_eq!((report.pages, report.settled), (2, true));
}

/// One attempt pulls at most `PULL_PAGES_MAX` pages; the rest waits for the next attempt.
#[test]
fn one_attempt_pulls_at_most_the_page_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = server_in(&dir, ServerOptions::default());
    let budget = u64::from(PULL_PAGES_MAX) * u64::from(PAGE_LIMIT_MAX);
    push_writes(&mut server, "client-2", 1..=budget + 10);
    let mut c = device(&dir, "device.db", "client-1");
    let mut wire = Wire::to(&mut server);
    let report = block_on(c.sync(&mut wire)).unwrap();
    assert_eq!(report.pages, PULL_PAGES_MAX);
    assert_eq!(wire.sent.len(), PULL_PAGES_MAX as usize);
    assert_eq!(report.pulled as u64, budget);
    assert!(!report.settled);
    let report = block_on(c.sync(&mut Wire::to(&mut server))).unwrap();
    assert_eq!((report.pulled, report.pages, report.settled), (10, 1, true));
}

/// A pulled event whose payload was changed on the way (its hashes left as they were) does not
/// extend the local chain: `pull:hashChainViolation`, and nothing changes.
#[test]
fn a_tampered_pulled_event_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = server_in(&dir, ServerOptions::default());
    push_writes(&mut server, "client-2", 1..=3);
    let mut c = device(&dir, "device.db", "client-1");
    let before = c.export_state().unwrap();
    let mut wire = Wire::rewriting(&mut server, |_, resp| match resp {
        Response::Page { mut items, has_more, next_cursor, last_reconciled_write_ids } => {
            if let Some(e) = items.get_mut(1) {
                e.payload.push(b'!');
            }
            Response::Page { items, has_more, next_cursor, last_reconciled_write_ids }
        }
        other => other,
    });
    let err = block_on(c.sync(&mut wire)).unwrap_err();
    assert_eq!(err.signature().as_deref(), Some("pull:hashChainViolation"), "{err}");
    assert_eq!(c.export_state().unwrap(), before);
    assert!(c.events().unwrap().is_empty());
}

/// A version-1 device sends its writes without op ids (an N-1 server does not know the field),
/// and still syncs: the server names them by `(replica, write_id)`.
#[test]
fn a_version_1_push_carries_no_op_ids() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = server_in(&dir, ServerOptions::default());
    let mut c = device(&dir, "device.db", "client-1");
    c.append("a", "k", b"one").unwrap();
    c.append("a", "k", b"two").unwrap();
    let mut wire = Wire::to(&mut server);
    wire.version = 1;
    block_on(c.sync(&mut wire)).unwrap();
    let pushes: Vec<&Request> = wire.sent.iter().filter(|r| matches!(r, Request::Push { .. })).collect();
    assert_eq!(pushes.len(), 1);
    let Request::Push { writes, .. } = pushes[0] else { unreachable!() };
    assert_eq!(writes.len(), 2);
    assert!(writes.iter().all(|w| w.op_id.is_none()), "a version-1 push carries op ids: {writes:?}");
    assert!(c.outbox().unwrap().is_empty());
}

/// The exported state's text is the state: it parses back to an equal one (INV-FAIL-CLOSED
/// compares these texts, so a text that says nothing would make it vacuous).
#[test]
fn the_exported_state_text_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = server_in(&dir, ServerOptions::default());
    let mut c = device(&dir, "device.db", "client-1");
    c.append("a", "k", b"one").unwrap();
    block_on(c.sync(&mut Wire::to(&mut server))).unwrap();
    c.append("a", "k", b"two").unwrap();
    let state = c.export_state().unwrap();
    let text = state.to_json();
    let back: ExportedState = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?} is not a state: {e}"));
    assert_eq!(back, state);
    assert_eq!(back.replica, "client-1");
    assert_eq!(back.pending.len(), 1);
}

/// A device knows the replica it was opened as.
#[test]
fn a_device_knows_its_replica() {
    let dir = tempfile::tempdir().unwrap();
    let c = device(&dir, "device.db", "client-7");
    assert_eq!(c.replica(), "client-7");
    assert_eq!(c.tenant(), "acme");
}

/// Retention compacts a tenant once it holds more than twice the events it keeps, not sooner.
#[test]
fn retention_compacts_only_past_twice_the_kept_events() {
    let dir = tempfile::tempdir().unwrap();
    let keep = 3;
    let mut server = server_in(&dir, ServerOptions { retention_events: Some(keep), ..ServerOptions::default() });
    push_writes(&mut server, "client-2", 1..=2 * keep);
    assert!(server.anchors().unwrap().is_empty(), "compacted at {} events", 2 * keep);
    assert_eq!(server.events().unwrap().len() as u64, 2 * keep);
    push_writes(&mut server, "client-2", 2 * keep + 1..=2 * keep + 1);
    assert_eq!(server.anchors().unwrap().len(), 1);
    assert_eq!(server.events().unwrap().len() as u64, keep);
}

/// `hasMore` means more items: a tenant with exactly a page's worth answers one full page that
/// says there is no more.
#[test]
fn a_page_of_exactly_the_limit_has_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = server_in(&dir, ServerOptions::default());
    push_writes(&mut server, "client-2", 1..=u64::from(PAGE_LIMIT_MAX));
    let req = Request::Pull { tenant: "acme".into(), replica: "client-1".into(), since: 0, limit: PAGE_LIMIT_MAX, head: None };
    let Response::Page { items, has_more, next_cursor, .. } = server.handle(req) else { panic!("a page") };
    assert_eq!(items.len(), PAGE_LIMIT_MAX as usize);
    assert!(!has_more);
    assert_eq!(next_cursor, u64::from(PAGE_LIMIT_MAX));
}

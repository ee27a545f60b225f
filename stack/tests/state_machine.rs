//! The store against a reference model, outside the simulation: proptest drives devices and a
//! server in one process (real SQLite files in a temporary folder, requests handed straight to
//! the server) through appends, syncs, reopens, hydrates and forced syncs, and after every step
//! the stored state must equal the model's: each device's outbox holds exactly its writes the
//! server does not have, its events are a prefix of its tenant's total order, the server holds
//! the total order, and every chain verifies.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use drill_stack::chain::{first_broken, Link};
use drill_stack::client::{Client, DeviceKeys, ExportedState, Ring};
use drill_stack::clock::FixedClock;
use drill_stack::crypto::Key;
use drill_stack::envelope;
use drill_stack::proto::{Request, Response};
use drill_stack::rpc::Exchange;
use drill_stack::server::Server;
use drill_stack::store::EventRow;
use drill_stack::SyncError;
use proptest::prelude::*;

/// Requests go straight to a server in the same process.
struct Direct<'a>(&'a mut Server);

impl Exchange for Direct<'_> {
    fn version(&self) -> u32 {
        drill_stack::proto::PROTOCOL_VERSION
    }

    fn call(&mut self, req: &Request) -> impl Future<Output = Result<Response, SyncError>> {
        std::future::ready(Ok(self.0.handle(req.clone())))
    }
}

/// In-process exchanges are ready at once, so one poll finishes a sync.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("an in-process exchange never waits"),
    }
}

const TENANTS: [&str; 3] = ["acme", "acme", "globex"];

#[derive(Debug, Clone)]
enum Op {
    Append { c: usize, bytes: usize },
    Sync { c: usize },
    Reopen { c: usize },
    Hydrate { c: usize },
    ForceResync { c: usize },
    ReopenServer,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..3, 1usize..200).prop_map(|(c, bytes)| Op::Append { c, bytes }),
        4 => (0usize..3).prop_map(|c| Op::Sync { c }),
        1 => (0usize..3).prop_map(|c| Op::Reopen { c }),
        1 => (0usize..3).prop_map(|c| Op::Hydrate { c }),
        1 => (0usize..3).prop_map(|c| Op::ForceResync { c }),
        1 => Just(Op::ReopenServer),
    ]
}

/// What must be true, as plain data.
#[derive(Default)]
struct Model {
    /// Every device's acknowledged writes, in order.
    appended: [Vec<Vec<u8>>; 3],
    /// Each tenant's total order.
    order: BTreeMap<&'static str, Vec<Vec<u8>>>,
    /// How much of its tenant's order each device has applied.
    applied: [usize; 3],
    /// A device's last known-good state and how much it had applied then.
    good: [Option<(ExportedState, usize)>; 3],
    next: u64,
}

struct World {
    dir: tempfile::TempDir,
    server: Server,
    clients: Vec<Client>,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::open(dir.path().join("server.db").to_str().unwrap()).unwrap();
        let clients = (0..3).map(|c| open_client(&dir, c)).collect();
        World { dir, server, clients }
    }
}

/// Every device of a tenant holds the tenant's key for the one aggregate the test writes.
fn ring(tenant: &str) -> BTreeMap<String, Key> {
    let byte = tenant.bytes().fold(0u8, |a, b| a.wrapping_add(b));
    [("note".to_string(), Key::from_bytes([byte; 32]))].into()
}

fn open_client(dir: &tempfile::TempDir, c: usize) -> Client {
    use rand_chacha::rand_core::SeedableRng;
    let path = dir.path().join(format!("client-{c}.db"));
    // A reopened device draws nonces from a fresh stream: the count of opens makes it one.
    let opens = OPENS.with(|o| {
        *o.borrow_mut() += 1;
        *o.borrow()
    });
    let keys = DeviceKeys::new(Ring::Fixed(ring(TENANTS[c])), Box::new(rand_chacha::ChaCha8Rng::seed_from_u64(opens)));
    Client::open(path.to_str().unwrap(), &format!("client-{c}"), TENANTS[c], Box::new(FixedClock(0)), keys).unwrap()
}

thread_local! {
    static OPENS: std::cell::RefCell<u64> = const { std::cell::RefCell::new(0) };
}

/// The plaintext of a stored envelope.
fn plain(tenant: &str, kind: &str, sealed: &[u8]) -> Vec<u8> {
    envelope::open(&ring(tenant), tenant, "note", kind, sealed).expect("a stored payload opens with its tenant's key")
}

fn step(w: &mut World, m: &mut Model, op: &Op) {
    match *op {
        Op::Append { c, bytes } => {
            m.next += 1;
            let payload: Vec<u8> = format!("w{}:", m.next).bytes().chain((0..bytes).map(|i| i as u8)).collect();
            w.clients[c].append("note", "edited", &payload).unwrap();
            m.appended[c].push(payload);
        }
        Op::Sync { c } => {
            block_on(w.clients[c].sync(&mut Direct(&mut w.server))).unwrap();
            let order = m.order.entry(TENANTS[c]).or_default();
            for p in &m.appended[c] {
                if !order.contains(p) {
                    order.push(p.clone());
                }
            }
            m.applied[c] = order.len();
            m.good[c] = Some((w.clients[c].export_state().unwrap(), m.applied[c]));
        }
        Op::Reopen { c } => {
            let dir = &w.dir;
            w.clients[c] = open_client(dir, c);
        }
        Op::Hydrate { c } => {
            if let Some((state, applied)) = m.good[c].clone() {
                w.clients[c].hydrate(&state).unwrap();
                m.applied[c] = applied;
            }
        }
        Op::ForceResync { c } => {
            w.clients[c].force_resync().unwrap();
            m.applied[c] = 0;
            // A state from before the forced sync points past what the device now holds:
            // hydrating from it is refused (it would skip events), so it is no longer good.
            if let Some((state, _)) = m.good[c].take() {
                let refused = w.clients[c].hydrate(&state).is_err() || state.cursor == 0;
                assert!(refused, "hydrate to a cursor the device no longer holds was accepted");
            }
        }
        Op::ReopenServer => {
            w.server = Server::open(w.dir.path().join("server.db").to_str().unwrap()).unwrap();
        }
    }
}

fn chain_ok(events: &[EventRow]) -> Option<u64> {
    first_broken(events.iter().map(|e| Link { seq: e.seq, kind: &e.kind, tenant: &e.tenant, payload: &e.payload, prev_hash: &e.prev_hash, hash: &e.hash }))
}

fn check(w: &World, m: &Model) -> Result<(), TestCaseError> {
    let server = w.server.events().unwrap();
    for (tenant, order) in &m.order {
        let held: Vec<Vec<u8>> = server.iter().filter(|e| e.tenant == *tenant).map(|e| plain(tenant, &e.kind, &e.payload)).collect();
        prop_assert_eq!(&held, order, "server order of {}", tenant);
        let evs: Vec<EventRow> = server.iter().filter(|e| e.tenant == *tenant).cloned().collect();
        prop_assert_eq!(chain_ok(&evs), None, "server chain of {}", tenant);
    }
    for c in 0..3 {
        let order = m.order.get(TENANTS[c]).cloned().unwrap_or_default();
        let pending: Vec<Vec<u8>> = m.appended[c].iter().filter(|p| !order.contains(p)).cloned().collect();
        let outbox: Vec<Vec<u8>> = w.clients[c].outbox().unwrap().into_iter().map(|x| plain(TENANTS[c], &x.kind, &x.payload)).collect();
        prop_assert_eq!(outbox, pending, "outbox of client {}", c);
        let events = w.clients[c].events().unwrap();
        let held: Vec<Vec<u8>> = events.iter().map(|e| plain(TENANTS[c], &e.kind, &e.payload)).collect();
        prop_assert_eq!(&held[..], &order[..m.applied[c]], "events of client {}", c);
        // The aggregate-state projection has folded exactly the events the device holds.
        let rows = w.clients[c].projection_rows("aggregate_state").unwrap();
        let folded: usize = rows.iter().map(|r| r[1].parse::<usize>().unwrap()).sum();
        prop_assert_eq!(folded, m.applied[c], "projection of client {}: {:?}", c, rows);
        prop_assert_eq!(chain_ok(&events), None, "chain of client {}", c);
        let state = w.clients[c].export_state().unwrap();
        prop_assert_eq!(state.pending.len(), m.appended[c].iter().filter(|p| !order.contains(p)).count());
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_store_follows_the_model(ops in prop::collection::vec(op(), 1..60)) {
        let mut w = World::new();
        let mut m = Model::default();
        for op in &ops {
            step(&mut w, &mut m, op);
            check(&w, &m)?;
        }
    }
}

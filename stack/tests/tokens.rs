//! Tokens between a real client and a real server (runbook 002, "Token Invalid or Expired"):
//! the first request of a connection refreshes the token; the server judges expiry by its own
//! clock and refuses a stale or foreign token before the request touches its store; the device
//! refreshes once and retries; a device clock that runs an hour off does not make it refresh at
//! every sync; a server restart (a new issuer key) invalidates every token out there; and the
//! refreshed token is saved, wrapped, in the device's key store.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use drill_stack::client::{Client, DeviceKeys, Ring};
use drill_stack::clock::Clock;
use drill_stack::crypto::Key;
use drill_stack::keys::token::{self, TokenAuth, TokenIssuer};
use drill_stack::keys::{KdfParams, KeyStore};
use drill_stack::proto::{PendingWrite, Request, Response, PROTOCOL_VERSION};
use drill_stack::rpc::Exchange;
use drill_stack::server::Server;
use drill_stack::SyncError;
use rand_chacha::rand_core::SeedableRng;

const TTL_MS: i64 = 60_000;

/// A clock a test moves by hand; clones share the time.
#[derive(Clone)]
struct Manual(Arc<AtomicI64>);

impl Manual {
    fn at(ms: i64) -> Manual {
        Manual(Arc::new(AtomicI64::new(ms)))
    }
    fn jump(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for Manual {
    fn now_unix_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// An in-process link that carries the token like the network does.
struct Wire<'a> {
    server: &'a mut Server,
    token: Option<String>,
}

impl Exchange for Wire<'_> {
    fn version(&self) -> u32 {
        PROTOCOL_VERSION
    }

    fn call(&mut self, req: &Request) -> impl Future<Output = Result<Response, SyncError>> {
        std::future::ready(Ok(self.server.handle_with_token(self.token.as_deref(), req.clone())))
    }

    fn set_token(&mut self, token: Option<String>) {
        self.token = token;
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("an in-process exchange never waits"),
    }
}

struct World {
    dir: tempfile::TempDir,
    secret: Key,
    server_clock: Manual,
    device_clock: Manual,
    issuer_seed: u64,
}

impl World {
    fn new() -> World {
        World {
            dir: tempfile::tempdir().unwrap(),
            secret: Key::from_bytes([3; 32]),
            server_clock: Manual::at(1_000_000),
            device_clock: Manual::at(1_000_000),
            issuer_seed: 1,
        }
    }

    /// The server (re)started: a new issuer key.
    fn server(&mut self) -> Server {
        self.issuer_seed += 1;
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(self.issuer_seed);
        let issuer = TokenIssuer::new(Key::generate(&mut r), TTL_MS);
        let auth = TokenAuth::new(issuer, self.secret.clone(), Box::new(self.server_clock.clone()), Box::new(r));
        Server::open(self.dir.path().join("server.db").to_str().unwrap()).unwrap().with_tokens(auth)
    }

    /// The device (re)connected, with fixed keys or its key store.
    fn device(&self, ring: Ring, seed: u64) -> Client {
        let keys = DeviceKeys::new(ring, Box::new(rand_chacha::ChaCha8Rng::seed_from_u64(seed)));
        let path = self.dir.path().join("device.db");
        let mut c = Client::open(path.to_str().unwrap(), "dev-1", "acme", Box::new(self.device_clock.clone()), keys).unwrap();
        c.set_pairing(token::pairing_key(&self.secret, "acme", "dev-1"));
        c
    }
}

fn fixed() -> Ring {
    Ring::Fixed([("a".to_string(), Key::from_bytes([7; 32]))].into())
}

fn sync(c: &mut Client, s: &mut Server) -> Result<drill_stack::client::SyncReport, SyncError> {
    block_on(c.sync(&mut Wire { server: s, token: None }))
}

#[test]
fn a_connection_refreshes_once_then_rides_its_token() {
    let mut w = World::new();
    let mut s = w.server();
    let mut c = w.device(fixed(), 1);
    c.append("a", "k", b"one").unwrap();
    let r = sync(&mut c, &mut s).unwrap();
    assert_eq!((r.token_refreshes, r.pushed.len()), (1, 1));
    w.device_clock.jump(10_000);
    c.append("a", "k", b"two").unwrap();
    let r = sync(&mut c, &mut s).unwrap();
    assert_eq!((r.token_refreshes, r.token_refusals.len(), r.pushed.len()), (0, 0, 1));
    let claims = token::claims(c.token_state().unwrap().token().unwrap()).unwrap();
    assert_eq!((claims.identity.as_str(), claims.replica.as_str(), claims.tenant.as_str()), ("dev-1", "dev-1", "acme"));
}

#[test]
fn the_servers_clock_expires_a_token_and_the_device_refreshes_and_retries() {
    let mut w = World::new();
    let mut s = w.server();
    let mut c = w.device(fixed(), 1);
    sync(&mut c, &mut s).unwrap();
    // The server's clock jumps past the token's life; the device's does not move.
    w.server_clock.jump(TTL_MS + 1);
    c.append("a", "k", b"after the jump").unwrap();
    let r = sync(&mut c, &mut s).unwrap();
    assert_eq!(r.token_refusals, vec!["keys:tokenExpired".to_string()]);
    assert_eq!((r.token_refreshes, r.pushed.len()), (1, 1));
    assert_eq!(s.events().unwrap().len(), 1, "the refused push was not applied, its retry was, once");
}

#[test]
fn a_restarted_server_invalidates_every_token_out_there() {
    let mut w = World::new();
    let mut s = w.server();
    let mut c = w.device(fixed(), 1);
    sync(&mut c, &mut s).unwrap();
    drop(s);
    let mut s = w.server();
    let r = sync(&mut c, &mut s).unwrap();
    assert_eq!(r.token_refusals, vec!["keys:tokenInvalid".to_string()]);
    assert_eq!(r.token_refreshes, 1);
}

#[test]
fn a_device_clock_an_hour_off_neither_loops_nor_keeps_stale_tokens() {
    for skew in [3_600_000, -3_600_000] {
        let mut w = World::new();
        let mut s = w.server();
        let mut c = w.device(fixed(), 1);
        sync(&mut c, &mut s).unwrap();
        w.device_clock.jump(skew);
        // One refresh at most (running ahead, the device thinks its token expired), then the
        // offset to the server's time is known and the token is used to the end of its life.
        let mut refreshes = 0;
        let mut refusals = 0;
        for _ in 0..5 {
            w.device_clock.jump(5_000);
            w.server_clock.jump(5_000);
            let r = sync(&mut c, &mut s).unwrap();
            refreshes += r.token_refreshes;
            refusals += r.token_refusals.len();
        }
        assert!(refreshes <= 1 && refusals == 0, "skew {skew}: {refreshes} refreshes, {refusals} refusals");
        // Past the token's life by the server's clock. A device that ran ahead refreshed after
        // its jump and knows the offset: it refreshes ahead of the refusal. One that fell
        // behind after its refresh does not know yet: the server's refusal corrects it, once.
        w.device_clock.jump(TTL_MS);
        w.server_clock.jump(TTL_MS);
        let r = sync(&mut c, &mut s).unwrap();
        let refused = usize::from(skew < 0);
        assert_eq!((r.token_refreshes, r.token_refusals.len()), (1, refused), "skew {skew}");
        // From then on both know the offset.
        w.device_clock.jump(TTL_MS);
        w.server_clock.jump(TTL_MS);
        let r = sync(&mut c, &mut s).unwrap();
        assert_eq!((r.token_refreshes, r.token_refusals.len()), (1, 0), "skew {skew}");
    }
}

#[test]
fn requests_without_a_live_token_of_their_own_are_refused_and_change_nothing() {
    let mut w = World::new();
    let mut s = w.server();
    let write = PendingWrite { write_id: 1, op_id: Some("op-1".into()), aggregate: "a".into(), kind: "k".into(), payload: b"x".to_vec() };
    let push = Request::Push { tenant: "acme".into(), replica: "dev-1".into(), writes: vec![write], head: None };
    let code = |r: Response| match r {
        Response::Error { code, .. } => code,
        other => panic!("refused, not {other:?}"),
    };
    assert_eq!(code(s.handle(push.clone())), "keys:tokenInvalid");
    // A token of another replica, and one whose proof was made for another replica.
    let mut c2 = {
        let keys = DeviceKeys::new(fixed(), Box::new(rand_chacha::ChaCha8Rng::seed_from_u64(9)));
        let path = w.dir.path().join("other.db");
        let mut c = Client::open(path.to_str().unwrap(), "dev-2", "acme", Box::new(w.device_clock.clone()), keys).unwrap();
        c.set_pairing(token::pairing_key(&w.secret, "acme", "dev-2"));
        c
    };
    sync(&mut c2, &mut s).unwrap();
    let foreign = c2.token_state().unwrap().token().unwrap().to_string();
    assert_eq!(code(s.handle_with_token(Some(&foreign), push.clone())), "keys:tokenIdentityMismatch");
    // The other replica's own live token, asking for another tenant: an RBAC refusal.
    let globex = Request::Pull { tenant: "globex".into(), replica: "dev-2".into(), since: 0, limit: 10, head: None };
    assert_eq!(code(s.handle_with_token(Some(&foreign), globex)), "rbacDenied");
    let mut stolen = w.device(fixed(), 1);
    stolen.set_pairing(token::pairing_key(&w.secret, "acme", "dev-2"));
    let e = sync(&mut stolen, &mut s).unwrap_err();
    assert_eq!(e.code(), "keys:tokenInvalid", "{e}");
    assert!(s.events().unwrap().is_empty(), "nothing refused was applied");
}

#[test]
fn a_reconnect_refreshes_and_the_key_store_keeps_the_refreshed_token() {
    let mut w = World::new();
    let mut s = w.server();
    let ks_path = w.dir.path().join("keys.db");
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut ks = KeyStore::create(ks_path.to_str().unwrap(), "pass", KdfParams::sim(), &mut r).unwrap();
    ks.import_aggregate_key("a", &Key::from_bytes([7; 32]), &mut r).unwrap();
    let identity = ks.identity_id().to_string();
    let mut c = w.device(Ring::Store(Box::new(ks)), 1);
    sync(&mut c, &mut s).unwrap();
    let first = c.token_state().unwrap().token().unwrap().to_string();
    assert_eq!(token::claims(&first).unwrap().identity, identity, "bound to the key store's identity");
    drop(c);
    w.device_clock.jump(1_000);
    w.server_clock.jump(1_000);
    let mut ks = KeyStore::open(ks_path.to_str().unwrap()).unwrap();
    ks.unlock("pass").unwrap();
    assert_eq!(ks.saved_token("acme").unwrap().as_deref(), Some(first.as_str()));
    let mut c = w.device(Ring::Store(Box::new(ks)), 2);
    let r = sync(&mut c, &mut s).unwrap();
    assert_eq!(r.token_refreshes, 1, "a reconnect forces the refresh path");
    let second = c.token_state().unwrap().token().unwrap().to_string();
    assert_ne!(second, first);
    drop(c);
    let mut ks = KeyStore::open(ks_path.to_str().unwrap()).unwrap();
    ks.unlock("pass").unwrap();
    assert_eq!(ks.saved_token("acme").unwrap().as_deref(), Some(second.as_str()), "the saved token is the refreshed one");
}

//! Key exchange on the wire between real nodes (runbook 002, "Missing Group Key" and "Vault Key
//! Unavailable"): a member asks the room's authority for the epochs it missed and replays the
//! packets that waited for them; an authority that is down or cut off lets every attempt time
//! out (`keys:keyRequestTimedOut`, after the policy's attempts and backoff) and answers once it
//! is back; a device that lost its initialized vault key asks its peers in turn and recovers from
//! the first share that opens, and when none has one the vault stays missing
//! (`keys:vaultShareUnavailable`), never regenerated.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use drill_stack::client::{Client, DeviceKeys, Ring};
use drill_stack::clock::FixedClock;
use drill_stack::crypto::{self, Key};
use drill_stack::keys::binding;
use drill_stack::keys::exchange::{self, KEYS_PORT, KEY_RETRY};
use drill_stack::keys::group::{GroupPacket, GroupSession, Received};
use drill_stack::keys::vault::Role;
use drill_stack::keys::{KdfParams, KeyError, KeyStore};
use drill_stack::rpc::{serve, RpcClient};
use madsim::runtime::Handle;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

const TIMEOUT: Duration = Duration::from_millis(300);
const PASSPHRASE: &str = "pass";
const GROUP: &str = "room";

fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 1, n))
}

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn path(dir: &tempfile::TempDir, name: &str) -> String {
    at(dir.path().to_str().unwrap(), name)
}

fn at(base: &str, name: &str) -> String {
    format!("{base}/{name}")
}

/// A node at `ip(n)` whose key service answers from the key store at `keys` (reopened, and
/// unlocked, at every start).
fn key_peer(n: u8, keys: String) -> madsim::runtime::NodeHandle {
    Handle::current()
        .create_node()
        .name(format!("peer-{n}"))
        .ip(ip(n))
        .init(move || {
            let keys = keys.clone();
            async move {
                let mut ks = KeyStore::open(&keys).expect("the peer's key store");
                ks.unlock(PASSPHRASE).expect("unlocked");
                let ep = madsim::net::Endpoint::bind(SocketAddr::new(ip(n), KEYS_PORT)).await.expect("bound");
                let mut r = rng(u64::from(n));
                let _ = serve(&ep, move |_, req| exchange::handle(&ks, req, &mut r)).await;
            }
        })
        .build()
}

async fn connect(n: u8, id_base: u64) -> RpcClient {
    RpcClient::bind(SocketAddr::new(ip(n), KEYS_PORT), id_base, TIMEOUT).await.expect("bound")
}

/// Creates a device's key store at `<base>/<name>-keys.db`, holding epoch 1 of the group.
fn device_keys(base: &str, name: &str, first_epoch: &Key, seed: u64) {
    let mut r = rng(seed);
    let mut ks = KeyStore::create(&at(base, &format!("{name}-keys.db")), PASSPHRASE, KdfParams::sim(), &mut r).unwrap();
    ks.put_group_key(GROUP, 1, first_epoch, &mut r).unwrap();
}

/// Opens the device `name` on its key store, unlocked.
fn device(base: &str, name: &str, seed: u64) -> Client {
    let mut ks = KeyStore::open(&at(base, &format!("{name}-keys.db"))).unwrap();
    ks.unlock(PASSPHRASE).unwrap();
    let keys = DeviceKeys::new(Ring::Store(Box::new(ks)), Box::new(rng(seed + 100)));
    Client::open(&at(base, &format!("{name}.db")), name, "acme", Box::new(FixedClock(0)), keys).unwrap()
}

fn store(c: &Client) -> &KeyStore {
    match &c.keys().ring {
        Ring::Store(ks) => ks,
        Ring::Fixed(_) => unreachable!("devices here have key stores"),
    }
}

/// Runs the future `body` makes on a device node of its own (answers come back to its
/// address; the device's client stays on its node), and waits for it to finish.
fn run<F: std::future::Future<Output = ()> + 'static>(body: impl Fn() -> F + Send + Sync + 'static) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let finished = done.clone();
    madsim::runtime::Runtime::new().block_on(async move {
        let _device = Handle::current()
            .create_node()
            .name("device")
            .ip(ip(100))
            .init(move || {
                let (f, done) = (body(), done.clone());
                async move {
                    f.await;
                    done.store(true, Ordering::SeqCst);
                }
            })
            .build();
        for _ in 0..600 {
            if finished.load(Ordering::SeqCst) {
                return;
            }
            madsim::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the device's task did not finish within 60 simulated seconds");
    })
}

/// The authority's key store with `epochs` epochs of the group; returns its path and the keys.
fn authority_store(dir: &tempfile::TempDir, epochs: u64) -> (String, Vec<Key>) {
    let mut r = rng(1);
    let p = path(dir, "authority-keys.db");
    let mut ks = KeyStore::create(&p, PASSPHRASE, KdfParams::sim(), &mut r).unwrap();
    let keys: Vec<Key> = (1..=epochs).map(|_| Key::generate(&mut r)).collect();
    for (i, k) in keys.iter().enumerate() {
        ks.put_group_key(GROUP, i as u64 + 1, k, &mut r).unwrap();
    }
    (p, keys)
}

#[test]
fn a_member_gets_the_epochs_it_missed_from_the_authority_and_replays_what_waited() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_str().unwrap().to_string();
    let (authority, keys) = authority_store(&dir, 3);
    device_keys(&base, "member", &keys[0], 7);
    run(move || {
        let (authority, keys, base) = (authority.clone(), keys.clone(), base.clone());
        async move {
            let _peer = key_peer(1, authority);
            madsim::time::sleep(Duration::from_millis(10)).await;
            let mut member = device(&base, "member", 7);
            let mut session = GroupSession::load(store(&member), GROUP, 4).unwrap();
            let mut r = rng(3);
            for (epoch, text) in [(2, b"two".as_slice()), (3, b"three")] {
                let p = GroupPacket::seal(GROUP, epoch, &keys[epoch as usize - 1], crypto::nonce_from(&mut r), text);
                assert!(matches!(session.receive(p).unwrap(), Received::Buffered { .. }));
            }
            let mut rpc = connect(1, 1).await;
            let fetched = member.request_group_keys(&mut rpc, GROUP, &KEY_RETRY).await.unwrap();
            assert_eq!(fetched.attempts, 1);
            assert_eq!(fetched.epochs, vec![(2, keys[1].clone()), (3, keys[2].clone())]);
            let replayed: Vec<_> = fetched.epochs.into_iter().flat_map(|(e, k)| session.add_epoch_key(e, k)).collect();
            assert_eq!(replayed, vec![Ok(b"two".to_vec()), Ok(b"three".to_vec())]);
            assert_eq!(session.buffered(), 0);
            // The keys are in the member's key store: a restart loads them.
            drop(member);
            let mut member = device(&base, "member", 7);
            assert_eq!(store(&member).group_keys(GROUP).unwrap().len(), 3);
            let again = member.request_group_keys(&mut rpc, GROUP, &KEY_RETRY).await.unwrap();
            assert!(again.epochs.is_empty(), "an up-to-date member gets nothing new");
        }
    });
}

#[test]
fn a_down_authority_times_out_after_every_attempt_and_answers_after_its_restart() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_str().unwrap().to_string();
    let (authority, keys) = authority_store(&dir, 2);
    device_keys(&base, "member", &keys[0], 8);
    run(move || {
        let (authority, keys, base) = (authority.clone(), keys.clone(), base.clone());
        async move {
            let peer = key_peer(1, authority);
            madsim::time::sleep(Duration::from_millis(10)).await;
            Handle::current().kill(peer.id());
            let mut member = device(&base, "member", 8);
            let mut rpc = connect(1, 1).await;
            let start = madsim::time::TimeHandle::current().now_instant();
            let e = member.request_group_keys(&mut rpc, GROUP, &KEY_RETRY).await.unwrap_err();
            let KeyError::KeyRequestTimedOut { attempts, .. } = &e else { panic!("{e}") };
            assert_eq!((*attempts, e.code()), (KEY_RETRY.attempts_max, "keys:keyRequestTimedOut"));
            // Every attempt waited its full timeout, and the backoff between them.
            let backoff: u64 = (1..KEY_RETRY.attempts_max).map(|a| KEY_RETRY.backoff_ms(a)).sum();
            let waited = TIMEOUT * KEY_RETRY.attempts_max + Duration::from_millis(backoff);
            assert!(start.elapsed() >= waited, "gave up after {:?}, not {waited:?}", start.elapsed());
            assert_eq!(store(&member).group_keys(GROUP).unwrap().len(), 1, "a timed-out request changes nothing");
            Handle::current().restart(peer.id());
            madsim::time::sleep(Duration::from_millis(10)).await;
            let fetched = member.request_group_keys(&mut rpc, GROUP, &KEY_RETRY).await.unwrap();
            assert_eq!(fetched.epochs, vec![(2, keys[1].clone())]);
        }
    });
}

#[test]
fn a_cut_off_authority_is_asked_again_until_the_partition_heals() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_str().unwrap().to_string();
    let (authority, keys) = authority_store(&dir, 2);
    device_keys(&base, "member", &keys[0], 9);
    run(move || {
        let (authority, keys, base) = (authority.clone(), keys.clone(), base.clone());
        async move {
            let peer = key_peer(1, authority);
            madsim::time::sleep(Duration::from_millis(10)).await;
            madsim::net::NetSim::current().clog_node(peer.id());
            let id = peer.id();
            // The partition heals while the first attempt's backoff runs.
            madsim::task::spawn(async move {
                madsim::time::sleep(TIMEOUT + Duration::from_millis(50)).await;
                madsim::net::NetSim::current().unclog_node(id);
            });
            let mut member = device(&base, "member", 9);
            let mut rpc = connect(1, 1).await;
            let fetched = member.request_group_keys(&mut rpc, GROUP, &KEY_RETRY).await.unwrap();
            assert_eq!(fetched.attempts, 2, "the first attempt was cut off, the second answered");
            assert_eq!(fetched.epochs, vec![(2, keys[1].clone())]);
        }
    });
}

#[test]
fn a_member_that_holds_no_epoch_or_names_one_the_peer_lacks_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_str().unwrap().to_string();
    let (authority, keys) = authority_store(&dir, 1);
    device_keys(&base, "member", &keys[0], 10);
    // The stranger holds an epoch 2 the authority never had.
    let other = Key::generate(&mut rng(99));
    device_keys(&base, "stranger", &keys[0], 11);
    {
        let mut ks = KeyStore::open(&at(&base, "stranger-keys.db")).unwrap();
        ks.unlock(PASSPHRASE).unwrap();
        ks.put_group_key(GROUP, 2, &other, &mut rng(12)).unwrap();
    }
    run(move || {
        let (authority, base) = (authority.clone(), base.clone());
        async move {
            let _peer = key_peer(1, authority);
            madsim::time::sleep(Duration::from_millis(10)).await;
            let mut rpc = connect(1, 1).await;
            let mut member = device(&base, "member", 10);
            let e = member.request_group_keys(&mut rpc, "other-room", &KEY_RETRY).await.unwrap_err();
            assert_eq!(e.code(), "keys:groupEpochUnknown", "{e}");
            let mut stranger = device(&base, "stranger", 11);
            let e = stranger.request_group_keys(&mut rpc, GROUP, &KEY_RETRY).await.unwrap_err();
            assert_eq!(e.code(), "keys:keyRequestRefused", "{e}");
            assert!(e.to_string().contains("keys:groupEpochUnknown"), "{e}");
        }
    });
}

#[test]
fn a_lost_vault_key_comes_back_from_the_first_peer_that_has_one_and_is_never_regenerated() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_str().unwrap().to_string();
    let (authority, keys) = authority_store(&dir, 1);
    let mut r = rng(20);
    // The authority initializes the vault; the member "without" never gets a share.
    {
        let mut ks = KeyStore::open(&authority).unwrap();
        ks.unlock(PASSPHRASE).unwrap();
        let db = drill_stack::store::open(&at(&base, "authority.db")).unwrap();
        binding::bind(&db, Some(&ks), &mut r).unwrap();
        ks.generate_vault_key(&db, Role::Authority, &mut r).unwrap();
    }
    device_keys(&base, "without", &keys[0], 23);
    device_keys(&base, "member", &keys[0], 24);
    run(move || {
        let (authority, keys, base) = (authority.clone(), keys.clone(), base.clone());
        async move {
            let mut r = rng(26);
            let peer = key_peer(1, authority);
            let _without = key_peer(2, at(&base, "without-keys.db"));
            madsim::time::sleep(Duration::from_millis(10)).await;
            let mut member = device(&base, "member", 24);
            bind(&mut member, &mut r);
            // The member's first vault key comes from the authority, on the wire.
            let got = member.recover_vault_from_peers(&mut [connect(1, 1).await], GROUP, &KEY_RETRY).await.unwrap();
            assert_eq!(got.from, Some(0));
            let vault = store(&member).vault_key().unwrap();
            // Its key store is lost; a replacement pairs with the group again, and the database's
            // marker says the vault was initialized.
            let lost_store_id = store(&member).store_id().to_string();
            drop(member);
            std::fs::remove_file(at(&base, "member-keys.db")).unwrap();
            let mut ks = KeyStore::replace_lost(&at(&base, "member-keys.db"), &lost_store_id, PASSPHRASE, KdfParams::sim(), &mut r).unwrap();
            ks.put_group_key(GROUP, 1, &keys[0], &mut r).unwrap();
            drop(ks);
            let mut member = device(&base, "member", 25);
            bind(&mut member, &mut r);
            {
                let (k, db) = member.keys_and_db();
                let Ring::Store(ks) = &mut k.ring else { unreachable!() };
                assert_eq!(ks.vault_key().unwrap_err().code(), "keys:vaultKeyMissing");
                assert_eq!(ks.generate_vault_key(db, Role::Authority, &mut r).unwrap_err().code(), "keys:vaultKeyRegenerationRefused");
            }
            // The authority is down and the other member has no vault key: no share, nothing made up.
            Handle::current().kill(peer.id());
            let mut peers = vec![connect(1, 2).await, connect(2, 3).await];
            let e = member.recover_vault_from_peers(&mut peers, GROUP, &KEY_RETRY).await.unwrap_err();
            assert_eq!(e.code(), "keys:vaultShareUnavailable", "{e}");
            let text = e.to_string();
            assert!(text.contains("keys:keyRequestTimedOut") && text.contains("keys:vaultKeyUninitialized"), "{text}");
            assert_eq!(store(&member).vault_key().unwrap_err().code(), "keys:vaultKeyMissing", "nothing was regenerated");
            // The authority is back: the second peer asked gives the share.
            Handle::current().restart(peer.id());
            madsim::time::sleep(Duration::from_millis(10)).await;
            let mut peers = vec![connect(2, 4).await, connect(1, 5).await];
            let recovered = member.recover_vault_from_peers(&mut peers, GROUP, &KEY_RETRY).await.unwrap();
            assert_eq!((recovered.from, recovered.refused.len()), (Some(1), 1));
            assert_eq!(store(&member).vault_key().unwrap(), vault);
        }
    });
}

/// Binds the device's database and key store to each other (what pairing does).
fn bind(c: &mut Client, r: &mut ChaCha8Rng) {
    let (k, db) = c.keys_and_db();
    let Ring::Store(ks) = &mut k.ring else { unreachable!() };
    binding::bind(db, Some(ks), r).unwrap();
}

//! The key store: its own SQLite file, separate from the event database (runbook 002: "include
//! both CRDT DB and secure key store artifacts; restoring only one may break decryption paths").
//!
//! Every key is stored wrapped: sealed under the key derived from the passphrase, with the
//! store's id and the entry's name as associated data, so an entry copied to another name or
//! another store does not open. What is stored in the clear is only what is not secret: entry
//! names (aggregate ids), the store's id, the identity's id, the KDF salt and costs, and the
//! `vault_key_initialized` marker. Unlocking proves the passphrase by opening the identity key.

use rand_core::RngCore;
use rusqlite::{Connection, OptionalExtension};

use crate::crypto::{self, Key};
use crate::store;

use super::kdf::{self, KdfParams, SALT_BYTES};
use super::KeyError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS wrapped(name TEXT PRIMARY KEY, nonce BLOB NOT NULL, sealed BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS lost(aggregate TEXT PRIMARY KEY);
";

pub(super) const IDENTITY: &str = "identity";
pub(super) const VAULT: &str = "vault";
pub(super) const VAULT_INITIALIZED: &str = "vault_key_initialized";

/// The entry name of an aggregate's key.
pub(super) fn aggregate_entry(aggregate: &str) -> String {
    format!("aggregate/{aggregate}")
}

/// The keys a store is made of, in memory only (creating, restoring, backing up).
#[derive(Debug, Clone, Default)]
pub(super) struct Contents {
    pub store_id: String,
    pub identity_id: String,
    /// Every wrapped entry by name, the identity among them.
    pub entries: std::collections::BTreeMap<String, Key>,
    pub vault_initialized: bool,
    pub lost: Vec<String>,
    /// The store this one replaces after a declared passphrase loss.
    pub replaces_store_id: Option<String>,
}

/// A device's key store. Opened locked; [`KeyStore::unlock`] with the passphrase.
pub struct KeyStore {
    pub(super) conn: Connection,
    store_id: String,
    identity_id: String,
    kek: Option<Key>,
    /// Aggregate keys already unwrapped while unlocked (every sealed append and every folded
    /// event needs one): filled by reads only, emptied by any write and by [`KeyStore::lock`].
    unwrapped: std::cell::RefCell<std::collections::BTreeMap<String, Key>>,
}

fn hex_id(rng: &mut dyn RngCore) -> String {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    hex::encode(b)
}

impl KeyStore {
    /// Creates a key store at `path` with a fresh identity key, unlocked. Refuses a path that
    /// already holds one ([`KeyError::KeyStoreExists`]): that would destroy its keys.
    pub fn create(path: &str, passphrase: &str, kdf: KdfParams, rng: &mut dyn RngCore) -> Result<KeyStore, KeyError> {
        let identity = Key::generate(rng);
        let mut c = Contents { store_id: hex_id(rng), identity_id: format!("id-{}", identity.fingerprint()), ..Contents::default() };
        c.entries.insert(IDENTITY.into(), identity);
        Self::write_new(path, passphrase, kdf, rng, &c)
    }

    /// Writes a whole new store from `c` in one transaction, and returns it unlocked.
    pub(super) fn write_new(path: &str, passphrase: &str, kdf: KdfParams, rng: &mut dyn RngCore, c: &Contents) -> Result<KeyStore, KeyError> {
        let conn = store::open(path)?;
        conn.execute_batch(SCHEMA)?;
        if store::meta_get(&conn, "store_id")?.is_some() {
            return Err(KeyError::KeyStoreExists);
        }
        let mut salt = [0u8; SALT_BYTES];
        rng.fill_bytes(&mut salt);
        let kek = kdf::derive(passphrase, &salt, &kdf)?;
        let ks = KeyStore { conn, store_id: c.store_id.clone(), identity_id: c.identity_id.clone(), kek: Some(kek), unwrapped: Default::default() };
        let tx = ks.conn.unchecked_transaction()?;
        store::meta_set(&tx, "kdf_params", &serde_json::to_string(&kdf).expect("params serialize"))?;
        store::meta_set(&tx, "kdf_salt", &hex::encode(salt))?;
        store::meta_set(&tx, "identity_id", &c.identity_id)?;
        if c.vault_initialized {
            store::meta_set(&tx, VAULT_INITIALIZED, "1")?;
        }
        if let Some(old) = &c.replaces_store_id {
            store::meta_set(&tx, "replaces_store_id", old)?;
        }
        for (name, key) in &c.entries {
            ks.put_in(&tx, name, key.as_bytes(), rng)?;
        }
        for a in &c.lost {
            tx.execute("INSERT OR IGNORE INTO lost(aggregate) VALUES (?1)", [a])?;
        }
        // The id goes in last: a store whose creation did not commit has none and counts as
        // uninitialized, never as a store with missing keys.
        store::meta_set(&tx, "store_id", &c.store_id)?;
        tx.commit()?;
        Ok(ks)
    }

    /// Opens the key store at `path`, locked. A path without one is
    /// [`KeyError::KeyStoreUninitialized`].
    pub fn open(path: &str) -> Result<KeyStore, KeyError> {
        let conn = store::open(path)?;
        conn.execute_batch(SCHEMA)?;
        let store_id = store::meta_get(&conn, "store_id")?.ok_or(KeyError::KeyStoreUninitialized)?;
        let identity_id = store::meta_get(&conn, "identity_id")?.ok_or(KeyError::KeyStoreUninitialized)?;
        Ok(KeyStore { conn, store_id, identity_id, kek: None, unwrapped: Default::default() })
    }

    /// Unlocks with `passphrase`; a wrong one is [`KeyError::PassphraseWrong`] and leaves the
    /// store locked.
    pub fn unlock(&mut self, passphrase: &str) -> Result<(), KeyError> {
        let params: KdfParams = serde_json::from_str(&self.meta_required("kdf_params")?)
            .map_err(|e| KeyError::Store(crate::error::StoreError::Invalid { detail: format!("kdf_params: {e}") }))?;
        let salt: [u8; SALT_BYTES] = hex::decode(self.meta_required("kdf_salt")?)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| KeyError::Store(crate::error::StoreError::Invalid { detail: "kdf_salt".into() }))?;
        let kek = kdf::derive(passphrase, &salt, &params)?;
        let (nonce, sealed) = self.raw(IDENTITY)?.ok_or(KeyError::KeyStoreUninitialized)?;
        crypto::open(&kek, &nonce, &self.aad(IDENTITY), &sealed).map_err(|_| KeyError::PassphraseWrong)?;
        self.kek = Some(kek);
        Ok(())
    }

    /// Forgets the wrapping key: keys can no longer be read until the next unlock.
    pub fn lock(&mut self) {
        self.kek = None;
        self.unwrapped.borrow_mut().clear();
    }

    pub fn is_unlocked(&self) -> bool {
        self.kek.is_some()
    }

    /// The store's id (not secret): the event database records it to detect half restores.
    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    /// The identity's id (not secret): what tokens are bound to.
    pub fn identity_id(&self) -> &str {
        &self.identity_id
    }

    /// The identity key.
    pub fn identity_key(&self) -> Result<Key, KeyError> {
        self.get(IDENTITY)?.ok_or(KeyError::KeyStoreUninitialized)
    }

    /// The key of `aggregate`: [`KeyError::AggregateKeyMissing`] when this store never had it,
    /// [`KeyError::PayloadsUnrecoverable`] when it was lost with the passphrase.
    pub fn aggregate_key(&self, aggregate: &str) -> Result<Key, KeyError> {
        if let Some(k) = self.unwrapped.borrow().get(aggregate) {
            self.kek()?;
            return Ok(k.clone());
        }
        if self.is_lost(aggregate)? {
            return Err(KeyError::PayloadsUnrecoverable { aggregate: aggregate.into() });
        }
        let key = self.get(&aggregate_entry(aggregate))?.ok_or_else(|| KeyError::AggregateKeyMissing { aggregate: aggregate.into() })?;
        self.unwrapped.borrow_mut().insert(aggregate.to_string(), key.clone());
        Ok(key)
    }

    /// The key of `aggregate`, generated from `rng` the first time. An aggregate whose key was
    /// lost stays unrecoverable: new events go to a new aggregate, never under a second key
    /// that would make the old events look tampered rather than lost.
    pub fn ensure_aggregate_key(&mut self, aggregate: &str, rng: &mut dyn RngCore) -> Result<Key, KeyError> {
        match self.aggregate_key(aggregate) {
            Err(KeyError::AggregateKeyMissing { .. }) => {
                let key = Key::generate(rng);
                self.put(&aggregate_entry(aggregate), &key, rng)?;
                Ok(key)
            }
            other => other,
        }
    }

    /// Stores a key for `aggregate` received from elsewhere (a peer, a backup).
    pub fn import_aggregate_key(&mut self, aggregate: &str, key: &Key, rng: &mut dyn RngCore) -> Result<(), KeyError> {
        self.put(&aggregate_entry(aggregate), key, rng)?;
        self.conn.execute("DELETE FROM lost WHERE aggregate = ?1", [aggregate])?;
        Ok(())
    }

    /// The aggregates this store holds a key for, in order (names are not secret).
    pub fn aggregates(&self) -> Result<Vec<String>, KeyError> {
        let mut st = self.conn.prepare("SELECT substr(name, 11) FROM wrapped WHERE name LIKE 'aggregate/%' ORDER BY name")?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The aggregates whose keys were lost with the passphrase.
    pub fn lost_aggregates(&self) -> Result<Vec<String>, KeyError> {
        let mut st = self.conn.prepare("SELECT aggregate FROM lost ORDER BY aggregate")?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn is_lost(&self, aggregate: &str) -> Result<bool, KeyError> {
        Ok(self.conn.query_row("SELECT 1 FROM lost WHERE aggregate = ?1", [aggregate], |_| Ok(())).optional()?.is_some())
    }

    pub(super) fn meta(&self, key: &str) -> Result<Option<String>, KeyError> {
        Ok(store::meta_get(&self.conn, key)?)
    }

    pub(super) fn set_meta(&self, key: &str, value: &str) -> Result<(), KeyError> {
        Ok(store::meta_set(&self.conn, key, value)?)
    }

    fn meta_required(&self, key: &str) -> Result<String, KeyError> {
        self.meta(key)?.ok_or(KeyError::KeyStoreUninitialized)
    }

    fn aad(&self, name: &str) -> Vec<u8> {
        crypto::framed(&[b"drill-wrapped-key-v1", self.store_id.as_bytes(), name.as_bytes()])
    }

    fn kek(&self) -> Result<&Key, KeyError> {
        self.kek.as_ref().ok_or(KeyError::Locked)
    }

    fn raw(&self, name: &str) -> Result<Option<(crypto::Nonce, Vec<u8>)>, KeyError> {
        let row: Option<(Vec<u8>, Vec<u8>)> =
            self.conn.query_row("SELECT nonce, sealed FROM wrapped WHERE name = ?1", [name], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        match row {
            None => Ok(None),
            Some((n, s)) => Ok(Some((crypto::nonce_from_slice(&n)?, s))),
        }
    }

    /// Reads and unwraps the entry `name`, a key.
    pub(super) fn get(&self, name: &str) -> Result<Option<Key>, KeyError> {
        let Some(plain) = self.get_secret(name)? else { return Ok(None) };
        let bytes: [u8; crypto::KEY_BYTES] =
            plain.try_into().map_err(|_| KeyError::Store(crate::error::StoreError::Invalid { detail: format!("wrapped {name}") }))?;
        Ok(Some(Key::from_bytes(bytes)))
    }

    /// Reads and unwraps the entry `name`, any secret bytes.
    pub(super) fn get_secret(&self, name: &str) -> Result<Option<Vec<u8>>, KeyError> {
        let kek = self.kek()?;
        let Some((nonce, sealed)) = self.raw(name)? else { return Ok(None) };
        Ok(Some(crypto::open(kek, &nonce, &self.aad(name), &sealed)?))
    }

    /// Wraps and writes the entry `name` (replacing it).
    pub(super) fn put(&self, name: &str, key: &Key, rng: &mut dyn RngCore) -> Result<(), KeyError> {
        self.put_in(&self.conn, name, key.as_bytes(), rng)
    }

    /// Wraps and writes secret bytes under `name` (replacing them).
    pub(super) fn put_secret(&self, name: &str, secret: &[u8], rng: &mut dyn RngCore) -> Result<(), KeyError> {
        self.put_in(&self.conn, name, secret, rng)
    }

    fn put_in(&self, c: &Connection, name: &str, secret: &[u8], rng: &mut dyn RngCore) -> Result<(), KeyError> {
        // A write may belong to a transaction that rolls back: nothing unwrapped is kept across it.
        self.unwrapped.borrow_mut().clear();
        let nonce = crypto::nonce_from(rng);
        let sealed = crypto::seal(self.kek()?, &nonce, &self.aad(name), secret);
        c.execute(
            "INSERT INTO wrapped(name, nonce, sealed) VALUES (?1, ?2, ?3) ON CONFLICT(name) DO UPDATE SET nonce = excluded.nonce, sealed = excluded.sealed",
            rusqlite::params![name, nonce.to_vec(), sealed],
        )?;
        Ok(())
    }

    /// Every wrapped entry, unwrapped, with the non-secret state: what a backup holds.
    pub(super) fn contents(&self) -> Result<Contents, KeyError> {
        let mut c = Contents {
            store_id: self.store_id.clone(),
            identity_id: self.identity_id.clone(),
            vault_initialized: self.meta(VAULT_INITIALIZED)?.is_some(),
            lost: self.lost_aggregates()?,
            replaces_store_id: self.meta("replaces_store_id")?,
            ..Contents::default()
        };
        let names: Vec<String> = {
            let mut st = self.conn.prepare("SELECT name FROM wrapped ORDER BY name")?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for name in names {
            // Saved tokens are credentials of one session, not keys: a backup leaves them out.
            if name.starts_with("token/") {
                continue;
            }
            let key = self.get(&name)?.expect("a listed entry exists");
            c.entries.insert(name, key);
        }
        Ok(c)
    }

    /// The store this one replaced after a declared passphrase loss, if any.
    pub fn replaces_store_id(&self) -> Result<Option<String>, KeyError> {
        self.meta("replaces_store_id")
    }

    /// The key store file is gone and no backup is at hand: the operator declares the store
    /// `lost_store_id` (the one the database is bound to) lost. A new store (new id, new
    /// identity) is written at `path` as its replacement, so [`super::binding::bind`] accepts it
    /// with that database; it holds no aggregate key until pairing or a backup import brings
    /// them back (`keys:aggregateKeyMissing` until then). Refuses a path that holds a store.
    pub fn replace_lost(path: &str, lost_store_id: &str, new_passphrase: &str, kdf: KdfParams, rng: &mut dyn RngCore) -> Result<KeyStore, KeyError> {
        let identity = Key::generate(rng);
        let mut c = Contents {
            store_id: hex_id(rng),
            identity_id: format!("id-{}", identity.fingerprint()),
            replaces_store_id: Some(lost_store_id.to_string()),
            ..Contents::default()
        };
        c.entries.insert(IDENTITY.into(), identity);
        Self::write_new(path, new_passphrase, kdf, rng, &c)
    }

    /// The user lost the passphrase and has no backup. The store at `path` is replaced by a new
    /// one (new id, new identity) under `new_passphrase`; the old aggregate keys are recorded as
    /// lost, so their payloads answer [`KeyError::PayloadsUnrecoverable`] while every other
    /// aggregate, sync and the ciphertext itself keep working. An initialized vault stays
    /// initialized: its key must come back from a peer, never from a regeneration.
    pub fn declare_passphrase_lost(path: &str, new_passphrase: &str, kdf: KdfParams, rng: &mut dyn RngCore) -> Result<KeyStore, KeyError> {
        let old = KeyStore::open(path)?;
        let mut lost = old.aggregates()?;
        lost.extend(old.lost_aggregates()?);
        lost.sort();
        lost.dedup();
        let identity = Key::generate(rng);
        let mut c = Contents {
            store_id: hex_id(rng),
            identity_id: format!("id-{}", identity.fingerprint()),
            vault_initialized: old.meta(VAULT_INITIALIZED)?.is_some(),
            lost,
            replaces_store_id: Some(old.store_id.clone()),
            ..Contents::default()
        };
        c.entries.insert(IDENTITY.into(), identity);
        // The old rows are useless without the passphrase; clear them in one transaction so
        // the new store is written into an empty file.
        old.conn.execute_batch("BEGIN; DELETE FROM wrapped; DELETE FROM lost; DELETE FROM meta; COMMIT;")?;
        drop(old);
        Self::write_new(path, new_passphrase, kdf, rng, &c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    pub(crate) fn rng() -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(42)
    }

    fn path(dir: &tempfile::TempDir, name: &str) -> String {
        dir.path().join(name).to_str().unwrap().to_string()
    }

    #[test]
    fn create_unlock_and_read_keys_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        let mut ks = KeyStore::create(&path(&dir, "keys.db"), "pass", KdfParams::sim(), &mut r).unwrap();
        let k1 = ks.ensure_aggregate_key("order-1", &mut r).unwrap();
        assert_eq!(ks.ensure_aggregate_key("order-1", &mut r).unwrap(), k1, "a second ensure returns the same key");
        let id = ks.identity_key().unwrap();
        drop(ks);
        let mut ks = KeyStore::open(&path(&dir, "keys.db")).unwrap();
        assert_eq!(ks.aggregate_key("order-1").unwrap_err(), KeyError::Locked);
        ks.unlock("pass").unwrap();
        assert_eq!(ks.aggregate_key("order-1").unwrap(), k1);
        assert_eq!(ks.identity_key().unwrap(), id);
        assert_eq!(ks.aggregates().unwrap(), vec!["order-1".to_string()]);
        assert_eq!(ks.identity_id(), format!("id-{}", id.fingerprint()));
        // A key read once is kept unwrapped only while the store is unlocked.
        ks.lock();
        assert_eq!(ks.aggregate_key("order-1").unwrap_err(), KeyError::Locked);
        ks.unlock("pass").unwrap();
        let k2 = Key::generate(&mut r);
        ks.import_aggregate_key("order-1", &k2, &mut r).unwrap();
        assert_eq!(ks.aggregate_key("order-1").unwrap(), k2, "a write replaces what was read before it");
    }

    #[test]
    fn a_wrong_passphrase_is_refused_and_leaves_the_store_locked() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        drop(KeyStore::create(&path(&dir, "keys.db"), "pass", KdfParams::sim(), &mut r).unwrap());
        let mut ks = KeyStore::open(&path(&dir, "keys.db")).unwrap();
        let e = ks.unlock("wrong").unwrap_err();
        assert_eq!(e.code(), "keys:passphraseWrong");
        assert!(!ks.is_unlocked());
        assert_eq!(ks.identity_key().unwrap_err().code(), "keys:locked");
    }

    #[test]
    fn creating_over_an_existing_store_is_refused_and_an_empty_file_is_uninitialized() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        drop(KeyStore::create(&path(&dir, "keys.db"), "pass", KdfParams::sim(), &mut r).unwrap());
        let again = KeyStore::create(&path(&dir, "keys.db"), "other", KdfParams::sim(), &mut r);
        assert_eq!(again.err().map(|e| e.code()), Some("keys:keyStoreExists"));
        assert_eq!(KeyStore::open(&path(&dir, "none.db")).err().map(|e| e.code()), Some("keys:keyStoreUninitialized"));
    }

    #[test]
    fn a_missing_aggregate_key_is_typed() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        let ks = KeyStore::create(&path(&dir, "keys.db"), "pass", KdfParams::sim(), &mut r).unwrap();
        let e = ks.aggregate_key("order-9").unwrap_err();
        assert_eq!(e, KeyError::AggregateKeyMissing { aggregate: "order-9".into() });
        assert_eq!(e.code(), "keys:aggregateKeyMissing");
    }

    #[test]
    fn no_key_material_is_stored_in_the_clear() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        let p = path(&dir, "keys.db");
        let mut ks = KeyStore::create(&p, "pass phrase", KdfParams::sim(), &mut r).unwrap();
        let mut keys = vec![ks.identity_key().unwrap()];
        for a in ["a", "b", "c"] {
            keys.push(ks.ensure_aggregate_key(a, &mut r).unwrap());
        }
        drop(ks);
        let mut image = std::fs::read(&p).unwrap();
        if let Ok(wal) = std::fs::read(format!("{p}-wal")) {
            image.extend(wal);
        }
        for k in &keys {
            assert!(!image.windows(32).any(|w| w == k.as_bytes()), "a raw key is on disk");
            assert!(!image.windows(64).any(|w| w == hex::encode(k.as_bytes()).as_bytes()), "a hex key is on disk");
        }
        assert!(!image.windows(11).any(|w| w == b"pass phrase"), "the passphrase is on disk");
    }

    #[test]
    fn a_wrapped_entry_moved_to_another_name_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        let mut ks = KeyStore::create(&path(&dir, "keys.db"), "pass", KdfParams::sim(), &mut r).unwrap();
        ks.ensure_aggregate_key("a", &mut r).unwrap();
        ks.conn.execute("INSERT INTO wrapped(name, nonce, sealed) SELECT 'aggregate/b', nonce, sealed FROM wrapped WHERE name = 'aggregate/a'", []).unwrap();
        assert_eq!(ks.aggregate_key("b").unwrap_err().code(), "store:invalid");
    }

    #[test]
    fn a_lost_passphrase_makes_old_payloads_unrecoverable_and_the_rest_keeps_working() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        let p = path(&dir, "keys.db");
        let mut ks = KeyStore::create(&p, "forgotten", KdfParams::sim(), &mut r).unwrap();
        ks.ensure_aggregate_key("old", &mut r).unwrap();
        let old_id = ks.store_id().to_string();
        drop(ks);
        let mut ks = KeyStore::declare_passphrase_lost(&p, "new", KdfParams::sim(), &mut r).unwrap();
        assert_ne!(ks.store_id(), old_id);
        assert_eq!(ks.replaces_store_id().unwrap(), Some(old_id));
        let e = ks.aggregate_key("old").unwrap_err();
        assert_eq!(e.code(), "keys:payloadsUnrecoverable");
        assert_eq!(ks.ensure_aggregate_key("old", &mut r).unwrap_err().code(), "keys:payloadsUnrecoverable");
        ks.ensure_aggregate_key("fresh", &mut r).unwrap();
        drop(ks);
        let mut ks = KeyStore::open(&p).unwrap();
        assert_eq!(ks.unlock("forgotten").unwrap_err().code(), "keys:passphraseWrong");
        ks.unlock("new").unwrap();
        assert!(ks.aggregate_key("fresh").is_ok());
        assert_eq!(ks.lost_aggregates().unwrap(), vec!["old".to_string()]);
    }
}

//! The vault key (runbook 002, "Vault Key Unavailable"): once initialized it is never silently
//! regenerated, because everything sealed under it would be orphaned; when it is missing it is
//! recovered from a peer's share. Only an authority whose vault was never initialized may
//! generate one.
//!
//! "Initialized" is a persisted marker (`vault_key_initialized`) kept in the key store and in
//! the event database (see [`super::binding`]): losing either file alone leaves the other's
//! marker, so a restore never turns an initialized vault into a new one.
//!
//! A share is the vault key sealed under the room's group key at some epoch, bound to the
//! recipient's identity id: the recipient (and only a member holding that epoch's key) opens it.

use rand_core::RngCore;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::crypto::{self, Key};
use crate::store;

use super::binding::DB_VAULT_INITIALIZED;
use super::keystore::{KeyStore, VAULT, VAULT_INITIALIZED};
use super::KeyError;

/// Who is asking to generate the first vault key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The room's authority: may generate a vault key if none was ever initialized.
    Authority,
    /// Any other member: must get the key from a peer.
    Member,
}

/// The vault key wrapped for one recipient, as bytes a peer hands over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultShare {
    pub group: String,
    pub epoch: u64,
    pub recipient_identity: String,
    pub nonce: String,
    pub sealed: String,
}

impl VaultShare {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a share serializes")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<VaultShare, KeyError> {
        serde_json::from_slice(bytes).map_err(|e| KeyError::VaultShareInvalid { detail: format!("not a vault share: {e}") })
    }
}

fn share_aad(group: &str, epoch: u64, recipient: &str) -> Vec<u8> {
    crypto::framed(&[b"drill-vault-share-v1", group.as_bytes(), &epoch.to_le_bytes(), recipient.as_bytes()])
}

/// Creating or recovering the vault key records a marker in the event database: a command,
/// which READ_ONLY refuses (`store:readOnly`) before anything is written to either file.
fn writable(db: &Connection) -> Result<(), KeyError> {
    crate::projections::resilience::check_write(db, crate::projections::resilience::Write::Command).map(|_| ()).map_err(|e| KeyError::Store(e.into()))
}

/// Whether the database says the vault was initialized.
pub fn initialized_in_db(db: &Connection) -> Result<bool, KeyError> {
    db.execute_batch("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);")?;
    Ok(store::meta_get(db, DB_VAULT_INITIALIZED)?.is_some())
}

impl KeyStore {
    /// Whether this store says the vault was initialized.
    pub fn vault_initialized(&self) -> Result<bool, KeyError> {
        Ok(self.meta(VAULT_INITIALIZED)?.is_some())
    }

    /// The vault key: `keys:vaultKeyMissing` when it was initialized and is gone (recover it
    /// from a peer), `keys:vaultKeyUninitialized` when there never was one.
    pub fn vault_key(&self) -> Result<Key, KeyError> {
        match self.get(VAULT)? {
            Some(k) => Ok(k),
            None if self.vault_initialized()? => Err(KeyError::VaultKeyMissing),
            None => Err(KeyError::VaultKeyUninitialized),
        }
    }

    /// Generates the first vault key. Refused with `keys:vaultKeyRegenerationRefused` when the
    /// store or the database `db` says it was initialized (even if the key is gone), and with
    /// `keys:notAuthority` for a member. The key store is written first: a crash before the
    /// database's marker leaves the key and the store's marker, which [`super::binding::bind`]
    /// copies over.
    pub fn generate_vault_key(&mut self, db: &Connection, role: Role, rng: &mut dyn RngCore) -> Result<Key, KeyError> {
        writable(db)?;
        if self.vault_initialized()? || initialized_in_db(db)? {
            return Err(KeyError::VaultKeyRegenerationRefused);
        }
        if role != Role::Authority {
            return Err(KeyError::NotAuthority);
        }
        let key = Key::generate(rng);
        let tx = self.conn.unchecked_transaction()?;
        self.put(VAULT, &key, rng)?;
        store::meta_set(&tx, VAULT_INITIALIZED, "1")?;
        tx.commit()?;
        store::meta_set(db, DB_VAULT_INITIALIZED, "1")?;
        Ok(key)
    }

    /// Wraps this store's vault key for `recipient_identity` under the group key of `epoch`.
    pub fn vault_share(&self, group: &str, epoch: u64, group_key: &Key, recipient_identity: &str, rng: &mut dyn RngCore) -> Result<VaultShare, KeyError> {
        let vault = self.vault_key()?;
        let nonce = crypto::nonce_from(rng);
        let sealed = crypto::seal(group_key, &nonce, &share_aad(group, epoch, recipient_identity), vault.as_bytes());
        Ok(VaultShare { group: group.into(), epoch, recipient_identity: recipient_identity.into(), nonce: hex::encode(nonce), sealed: hex::encode(sealed) })
    }

    /// Recovers the vault key from a peer's share, opened with the group key of the share's
    /// epoch. A share for another identity, one that does not open, or one holding a key other
    /// than the one this store already has is `keys:vaultShareInvalid` and changes nothing.
    pub fn recover_vault_key(&mut self, db: &Connection, share: &VaultShare, group_key: &Key, rng: &mut dyn RngCore) -> Result<Key, KeyError> {
        let invalid = |detail: &str| KeyError::VaultShareInvalid { detail: detail.into() };
        writable(db)?;
        if share.recipient_identity != self.identity_id() {
            return Err(invalid(&format!("share is for {}, not {}", share.recipient_identity, self.identity_id())));
        }
        let nonce = hex::decode(&share.nonce).ok().and_then(|n| crypto::nonce_from_slice(&n).ok()).ok_or_else(|| invalid("nonce"))?;
        let sealed = hex::decode(&share.sealed).map_err(|_| invalid("sealed"))?;
        let plain = crypto::open(group_key, &nonce, &share_aad(&share.group, share.epoch, &share.recipient_identity), &sealed)
            .map_err(|_| invalid("share did not open under the group key"))?;
        let key = Key::from_bytes(plain.try_into().map_err(|_| invalid("share holds no key"))?);
        match self.get(VAULT)? {
            Some(have) if have != key => return Err(invalid("share holds a vault key other than this store's")),
            Some(have) => return Ok(have),
            None => {}
        }
        let tx = self.conn.unchecked_transaction()?;
        self.put(VAULT, &key, rng)?;
        store::meta_set(&tx, VAULT_INITIALIZED, "1")?;
        tx.commit()?;
        store::meta_set(db, DB_VAULT_INITIALIZED, "1")?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KdfParams;
    use rand_chacha::rand_core::SeedableRng;

    fn rng() -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(5)
    }

    struct Device {
        ks: KeyStore,
        db: Connection,
    }

    fn device(dir: &tempfile::TempDir, name: &str, r: &mut rand_chacha::ChaCha8Rng) -> Device {
        let ks = KeyStore::create(dir.path().join(format!("{name}-keys.db")).to_str().unwrap(), "p", KdfParams::sim(), r).unwrap();
        let db = store::open(dir.path().join(format!("{name}.db")).to_str().unwrap()).unwrap();
        super::super::binding::bind(&db, Some(&ks), r).unwrap();
        Device { ks, db }
    }

    fn forget_vault_key(d: &Device) {
        d.ks.conn.execute("DELETE FROM wrapped WHERE name = 'vault'", []).unwrap();
    }

    #[test]
    fn only_an_authority_with_an_uninitialized_vault_generates() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        let mut d = device(&dir, "a", &mut r);
        assert_eq!(d.ks.vault_key().unwrap_err().code(), "keys:vaultKeyUninitialized");
        assert_eq!(d.ks.generate_vault_key(&d.db, Role::Member, &mut r).unwrap_err().code(), "keys:notAuthority");
        let k = d.ks.generate_vault_key(&d.db, Role::Authority, &mut r).unwrap();
        assert_eq!(d.ks.vault_key().unwrap(), k);
        assert!(initialized_in_db(&d.db).unwrap());
        let again = d.ks.generate_vault_key(&d.db, Role::Authority, &mut r).unwrap_err();
        assert_eq!(again.code(), "keys:vaultKeyRegenerationRefused");
        assert_eq!(d.ks.vault_key().unwrap(), k, "a refused regeneration changes nothing");
    }

    #[test]
    fn read_only_refuses_creating_or_recovering_the_vault_key_and_writes_nothing() {
        use crate::projections::resilience::{set_mode, Mode};
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        let mut a = device(&dir, "a", &mut r);
        let mut b = device(&dir, "b", &mut r);
        set_mode(&a.db, Mode::ReadOnly, &[]).unwrap();
        assert_eq!(a.ks.generate_vault_key(&a.db, Role::Authority, &mut r).unwrap_err().code(), "store:readOnly");
        assert!(!initialized_in_db(&a.db).unwrap() && !a.ks.vault_initialized().unwrap());
        set_mode(&a.db, Mode::Normal, &[]).unwrap();
        a.ks.generate_vault_key(&a.db, Role::Authority, &mut r).unwrap();
        let gsk = Key::generate(&mut r);
        let share = a.ks.vault_share("room", 1, &gsk, b.ks.identity_id(), &mut r).unwrap();
        set_mode(&b.db, Mode::ReadOnly, &[]).unwrap();
        assert_eq!(b.ks.recover_vault_key(&b.db, &share, &gsk, &mut r).unwrap_err().code(), "store:readOnly");
        assert!(!initialized_in_db(&b.db).unwrap() && !b.ks.vault_initialized().unwrap());
        set_mode(&b.db, Mode::Normal, &[]).unwrap();
        b.ks.recover_vault_key(&b.db, &share, &gsk, &mut r).unwrap();
    }

    #[test]
    fn a_missing_initialized_vault_key_is_never_regenerated_and_comes_back_from_a_peer() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        let mut a = device(&dir, "a", &mut r);
        let mut b = device(&dir, "b", &mut r);
        let vault = a.ks.generate_vault_key(&a.db, Role::Authority, &mut r).unwrap();
        let gsk = Key::generate(&mut r);
        let share = a.ks.vault_share("room", 1, &gsk, b.ks.identity_id(), &mut r).unwrap();
        b.ks.recover_vault_key(&b.db, &share, &gsk, &mut r).unwrap();
        assert_eq!(b.ks.vault_key().unwrap(), vault);
        forget_vault_key(&a);
        assert_eq!(a.ks.vault_key().unwrap_err().code(), "keys:vaultKeyMissing");
        assert_eq!(a.ks.generate_vault_key(&a.db, Role::Authority, &mut r).unwrap_err().code(), "keys:vaultKeyRegenerationRefused");
        let back = b.ks.vault_share("room", 1, &gsk, a.ks.identity_id(), &mut r).unwrap();
        let bytes = back.to_bytes();
        a.ks.recover_vault_key(&a.db, &VaultShare::from_bytes(&bytes).unwrap(), &gsk, &mut r).unwrap();
        assert_eq!(a.ks.vault_key().unwrap(), vault);
    }

    #[test]
    fn a_lost_key_store_cannot_make_an_initialized_vault_look_new() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        let mut a = device(&dir, "a", &mut r);
        a.ks.generate_vault_key(&a.db, Role::Authority, &mut r).unwrap();
        // The key store is lost; a fresh one is made and paired with the surviving database
        // after the operator declares the old one lost.
        let p = dir.path().join("a-keys.db");
        drop(a.ks);
        let mut ks = KeyStore::declare_passphrase_lost(p.to_str().unwrap(), "new", KdfParams::sim(), &mut r).unwrap();
        super::super::binding::bind(&a.db, Some(&ks), &mut r).unwrap();
        assert_eq!(ks.vault_key().unwrap_err().code(), "keys:vaultKeyMissing");
        assert_eq!(ks.generate_vault_key(&a.db, Role::Authority, &mut r).unwrap_err().code(), "keys:vaultKeyRegenerationRefused");
        // And a database alone that says initialized refuses too, whatever the store says.
        let mut other = device(&dir, "c", &mut r);
        store::meta_set(&other.db, DB_VAULT_INITIALIZED, "1").unwrap();
        assert_eq!(other.ks.generate_vault_key(&other.db, Role::Authority, &mut r).unwrap_err().code(), "keys:vaultKeyRegenerationRefused");
    }

    #[test]
    fn a_bad_share_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        let mut a = device(&dir, "a", &mut r);
        let mut b = device(&dir, "b", &mut r);
        a.ks.generate_vault_key(&a.db, Role::Authority, &mut r).unwrap();
        let gsk = Key::generate(&mut r);
        let for_a = a.ks.vault_share("room", 1, &gsk, a.ks.identity_id(), &mut r).unwrap();
        let code = |e: KeyError| e.code();
        assert_eq!(b.ks.recover_vault_key(&b.db, &for_a, &gsk, &mut r).map_err(code).unwrap_err(), "keys:vaultShareInvalid");
        let mut share = a.ks.vault_share("room", 1, &gsk, b.ks.identity_id(), &mut r).unwrap();
        let wrong_gsk = Key::generate(&mut r);
        assert_eq!(b.ks.recover_vault_key(&b.db, &share, &wrong_gsk, &mut r).map_err(code).unwrap_err(), "keys:vaultShareInvalid");
        share.epoch = 2;
        assert_eq!(b.ks.recover_vault_key(&b.db, &share, &gsk, &mut r).map_err(code).unwrap_err(), "keys:vaultShareInvalid");
        assert_eq!(b.ks.vault_key().unwrap_err().code(), "keys:vaultKeyUninitialized");
        assert!(!initialized_in_db(&b.db).unwrap());
        assert_eq!(VaultShare::from_bytes(b"junk").unwrap_err().code(), "keys:vaultShareInvalid");
    }
}

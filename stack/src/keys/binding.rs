//! The event database and the key store record each other's ids, so restoring one without the
//! other (runbook 002, "Backup and Recovery Guidance") is detected when they are opened
//! together, with an error that names the half that is missing or foreign.
//!
//! The database's `meta` table holds `keys/store_id` (its key store) and `keys/db_id` (its own
//! id); the key store's holds `bound_db_id`. The vault's `vault_key_initialized` marker is kept
//! in both files, so losing either one alone can never make an initialized vault look new.

use rand_core::RngCore;
use rusqlite::Connection;

use crate::store;

use super::keystore::{KeyStore, VAULT_INITIALIZED};
use super::{Half, KeyError};

const DB_STORE_ID: &str = "keys/store_id";
const DB_ID: &str = "keys/db_id";
/// The vault marker's key in the event database's `meta` table.
pub const DB_VAULT_INITIALIZED: &str = "keys/vault_key_initialized";
const KS_DB_ID: &str = "bound_db_id";

/// How the pair stood when [`bind`] checked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pairing {
    /// No key store and a database that was never bound: nothing to check yet.
    NoKeys,
    /// The two already belonged together.
    Bound,
    /// A fresh pair, a fresh (empty) database for an existing key store, or the new store of a
    /// declared passphrase loss: now bound.
    NewlyBound,
}

fn ensure_meta(db: &Connection) -> Result<(), KeyError> {
    db.execute_batch("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);")?;
    Ok(())
}

/// Whether the database holds no event: a database recreated after corruption, which sync
/// refills from peers, may be bound to the surviving key store.
fn db_is_empty(db: &Connection) -> Result<bool, KeyError> {
    let has_table: bool = db.query_row("SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'events'", [], |r| r.get(0))?;
    if !has_table {
        return Ok(true);
    }
    Ok(!db.query_row("SELECT EXISTS(SELECT 1 FROM events)", [], |r| r.get::<_, bool>(0))?)
}

/// Checks that `db` and `ks` belong together, and binds them when neither is bound yet. Call it
/// whenever both are opened, before any event is decrypted.
///
/// - database bound, no key store: `keys:halfRestoreKeyStoreMissing`;
/// - database bound to another store, and this store unbound (a fresh one):
///   `keys:halfRestoreKeyStoreMissing`;
/// - store bound to a database, and this database unbound but holding events (an old or foreign
///   copy): `keys:halfRestoreDatabaseMissing`;
/// - both bound, to different partners: `keys:halfRestoreMismatch`.
///
/// Writes the database first: a crash before the store's half leaves a state this function
/// recognises and completes next time.
pub fn bind(db: &Connection, ks: Option<&KeyStore>, rng: &mut dyn RngCore) -> Result<Pairing, KeyError> {
    ensure_meta(db)?;
    let db_store = store::meta_get(db, DB_STORE_ID)?;
    let Some(ks) = ks else {
        return match db_store {
            Some(s) => Err(KeyError::HalfRestore(Half::KeyStoreMissing { expected_store_id: s })),
            None => Ok(Pairing::NoKeys),
        };
    };
    let db_id = store::meta_get(db, DB_ID)?;
    let ks_db = ks.meta(KS_DB_ID)?;
    let pairing = match (db_store, ks_db) {
        (Some(s), ks_db) if s == ks.store_id() => {
            if let (Some(want), Some(have)) = (&ks_db, &db_id) {
                if want != have {
                    return Err(KeyError::HalfRestore(Half::DatabaseMissing { expected_db_id: want.clone() }));
                }
            }
            Pairing::Bound
        }
        (Some(s), _) if ks.replaces_store_id()?.as_deref() == Some(s.as_str()) => Pairing::NewlyBound,
        (Some(s), None) => return Err(KeyError::HalfRestore(Half::KeyStoreMissing { expected_store_id: s })),
        (Some(s), Some(_)) => {
            return Err(KeyError::HalfRestore(Half::Mismatch { db_says_store_id: s, store_id: ks.store_id().into() }));
        }
        (None, Some(d)) if !db_is_empty(db)? => return Err(KeyError::HalfRestore(Half::DatabaseMissing { expected_db_id: d })),
        (None, _) => Pairing::NewlyBound,
    };
    let db_id = match db_id {
        Some(id) => id,
        None => {
            let mut b = [0u8; 16];
            rng.fill_bytes(&mut b);
            hex::encode(b)
        }
    };
    let tx = db.unchecked_transaction()?;
    store::meta_set(&tx, DB_STORE_ID, ks.store_id())?;
    store::meta_set(&tx, DB_ID, &db_id)?;
    tx.commit()?;
    ks.set_meta(KS_DB_ID, &db_id)?;
    mirror_vault_marker(db, ks)?;
    Ok(pairing)
}

/// Copies the vault marker to whichever file lacks it: initialized in either means initialized.
fn mirror_vault_marker(db: &Connection, ks: &KeyStore) -> Result<(), KeyError> {
    let in_db = store::meta_get(db, DB_VAULT_INITIALIZED)?.is_some();
    let in_ks = ks.meta(VAULT_INITIALIZED)?.is_some();
    if in_db && !in_ks {
        ks.set_meta(VAULT_INITIALIZED, "1")?;
    }
    if in_ks && !in_db {
        store::meta_set(db, DB_VAULT_INITIALIZED, "1")?;
    }
    Ok(())
}

/// The key store id the database is bound to, if any.
pub fn bound_store_id(db: &Connection) -> Result<Option<String>, KeyError> {
    ensure_meta(db)?;
    Ok(store::meta_get(db, DB_STORE_ID)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KdfParams;
    use rand_chacha::rand_core::SeedableRng;

    fn rng() -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(11)
    }

    fn path(dir: &tempfile::TempDir, name: &str) -> String {
        dir.path().join(name).to_str().unwrap().to_string()
    }

    fn db_with_events(p: &str) -> Connection {
        let c = store::open(p).unwrap();
        c.execute_batch(store::EVENTS_SCHEMA).unwrap();
        c.execute("INSERT INTO events VALUES (1, 'op', 't', 'a', 'k', 'r', 1, x'00', x'00', x'00')", []).unwrap();
        c
    }

    fn code(r: Result<Pairing, KeyError>) -> &'static str {
        r.err().map(|e| e.code()).unwrap_or("ok")
    }

    #[test]
    fn a_pair_binds_once_and_then_checks() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        let db = db_with_events(&path(&dir, "events.db"));
        assert_eq!(bind(&db, None, &mut r).unwrap(), Pairing::NoKeys);
        let ks = KeyStore::create(&path(&dir, "keys.db"), "p", KdfParams::sim(), &mut r).unwrap();
        assert_eq!(bind(&db, Some(&ks), &mut r).unwrap(), Pairing::NewlyBound);
        assert_eq!(bind(&db, Some(&ks), &mut r).unwrap(), Pairing::Bound);
        assert_eq!(bound_store_id(&db).unwrap().as_deref(), Some(ks.store_id()));
    }

    #[test]
    fn a_database_restored_without_its_key_store_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        let db = db_with_events(&path(&dir, "events.db"));
        let ks = KeyStore::create(&path(&dir, "keys.db"), "p", KdfParams::sim(), &mut r).unwrap();
        bind(&db, Some(&ks), &mut r).unwrap();
        let e = bind(&db, None, &mut r).unwrap_err();
        assert_eq!(e, KeyError::HalfRestore(Half::KeyStoreMissing { expected_store_id: ks.store_id().into() }));
        let fresh = KeyStore::create(&path(&dir, "fresh.db"), "p", KdfParams::sim(), &mut r).unwrap();
        assert_eq!(code(bind(&db, Some(&fresh), &mut r)), "keys:halfRestoreKeyStoreMissing");
    }

    #[test]
    fn a_key_store_restored_without_its_database_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        let db = db_with_events(&path(&dir, "events.db"));
        let ks = KeyStore::create(&path(&dir, "keys.db"), "p", KdfParams::sim(), &mut r).unwrap();
        bind(&db, Some(&ks), &mut r).unwrap();
        // An old, unbound copy of the database that holds events: not this store's database.
        let old = db_with_events(&path(&dir, "old.db"));
        assert_eq!(code(bind(&old, Some(&ks), &mut r)), "keys:halfRestoreDatabaseMissing");
        // A database recreated empty after corruption is refilled by sync: it may be bound.
        let recreated = store::open(&path(&dir, "recreated.db")).unwrap();
        assert_eq!(bind(&recreated, Some(&ks), &mut r).unwrap(), Pairing::NewlyBound);
    }

    #[test]
    fn halves_from_different_backups_are_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        let db1 = db_with_events(&path(&dir, "e1.db"));
        let db2 = db_with_events(&path(&dir, "e2.db"));
        let ks1 = KeyStore::create(&path(&dir, "k1.db"), "p", KdfParams::sim(), &mut r).unwrap();
        let ks2 = KeyStore::create(&path(&dir, "k2.db"), "p", KdfParams::sim(), &mut r).unwrap();
        bind(&db1, Some(&ks1), &mut r).unwrap();
        bind(&db2, Some(&ks2), &mut r).unwrap();
        let e = bind(&db1, Some(&ks2), &mut r).unwrap_err();
        assert_eq!(e.code(), "keys:halfRestoreMismatch");
        assert!(e.to_string().contains(ks1.store_id()), "{e}");
    }

    #[test]
    fn a_lost_key_store_declared_and_replaced_binds_and_a_backup_restore_binds_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        let db = db_with_events(&path(&dir, "events.db"));
        let kp = path(&dir, "keys.db");
        let ks = KeyStore::create(&kp, "p", KdfParams::sim(), &mut r).unwrap();
        bind(&db, Some(&ks), &mut r).unwrap();
        let backup = ks.export_backup("bp", KdfParams::sim(), &mut r).unwrap();
        let old_id = ks.store_id().to_string();
        drop(ks);
        std::fs::remove_file(&kp).unwrap();
        // The file is gone: named, and a store created in its place does not pass for it.
        assert_eq!(code(bind(&db, None, &mut r)), "keys:halfRestoreKeyStoreMissing");
        // Restored from its backup (same id): bound as before.
        let restored = KeyStore::restore_backup(&kp, &backup, "bp", "p2", KdfParams::sim(), &mut r).unwrap();
        assert_eq!(bind(&db, Some(&restored), &mut r).unwrap(), Pairing::Bound);
        drop(restored);
        std::fs::remove_file(&kp).unwrap();
        // Declared lost instead: the replacement binds, and only for the store it replaces.
        let other = db_with_events(&path(&dir, "other.db"));
        let stranger = KeyStore::create(&path(&dir, "k2.db"), "p", KdfParams::sim(), &mut r).unwrap();
        bind(&other, Some(&stranger), &mut r).unwrap();
        let replacement = KeyStore::replace_lost(&kp, &old_id, "p3", KdfParams::sim(), &mut r).unwrap();
        assert_eq!(code(bind(&other, Some(&replacement), &mut r)), "keys:halfRestoreKeyStoreMissing");
        assert_eq!(bind(&db, Some(&replacement), &mut r).unwrap(), Pairing::NewlyBound);
        assert_eq!(replacement.aggregate_key("a").unwrap_err().code(), "keys:aggregateKeyMissing");
        assert!(KeyStore::replace_lost(&kp, &old_id, "p3", KdfParams::sim(), &mut r).is_err(), "a store is there");
    }

    #[test]
    fn a_declared_passphrase_loss_rebinds_to_the_new_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        let db = db_with_events(&path(&dir, "events.db"));
        let kp = path(&dir, "keys.db");
        let ks = KeyStore::create(&kp, "p", KdfParams::sim(), &mut r).unwrap();
        bind(&db, Some(&ks), &mut r).unwrap();
        drop(ks);
        let ks = KeyStore::declare_passphrase_lost(&kp, "new", KdfParams::sim(), &mut r).unwrap();
        assert_eq!(bind(&db, Some(&ks), &mut r).unwrap(), Pairing::NewlyBound);
        assert_eq!(bind(&db, Some(&ks), &mut r).unwrap(), Pairing::Bound);
    }
}

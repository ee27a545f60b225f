//! Key backups (runbook 000, "Key loss": "Restore a key backup that includes identity +
//! aggregate keys, then unlock").
//!
//! A backup is one byte string: a JSON envelope with the KDF costs and salt in the clear and
//! everything else sealed under a key derived from the backup's own passphrase. The envelope's
//! clear fields are the associated data, so changing the costs or the salt fails like a wrong
//! passphrase. Saved tokens are left out: they are session credentials, not keys.

use std::collections::BTreeMap;

use rand_core::RngCore;
use serde::{Deserialize, Serialize};

use crate::crypto::{self, Key};

use super::kdf::{self, KdfParams, SALT_BYTES};
use super::keystore::{Contents, KeyStore, VAULT, VAULT_INITIALIZED};
use super::KeyError;

const FORMAT: &str = "drill-key-backup-v1";

#[derive(Serialize, Deserialize)]
struct Envelope {
    format: String,
    kdf: KdfParams,
    salt: String,
    nonce: String,
    sealed: String,
}

/// What a backup holds once opened. Lives in memory only.
#[derive(Serialize, Deserialize)]
struct Sealed {
    store_id: String,
    identity_id: String,
    entries: BTreeMap<String, String>,
    vault_initialized: bool,
    lost: Vec<String>,
    replaces_store_id: Option<String>,
}

/// What importing a backup into an existing store did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Aggregates whose keys were added (and are readable again if they had been lost).
    pub added: Vec<String>,
    /// Aggregates this store already had a different key for: the store's key was kept.
    pub conflicting: Vec<String>,
    /// Whether the vault key came from the backup.
    pub vault_added: bool,
}

fn envelope_aad(format: &str, kdf: &KdfParams, salt: &str) -> Vec<u8> {
    let params = serde_json::to_string(kdf).expect("params serialize");
    crypto::framed(&[format.as_bytes(), params.as_bytes(), salt.as_bytes()])
}

fn invalid(detail: impl Into<String>) -> KeyError {
    KeyError::BackupInvalid { detail: detail.into() }
}

impl KeyStore {
    /// Exports every key (identity, aggregates, vault, group keys) sealed under
    /// `backup_passphrase`. The store must be unlocked.
    pub fn export_backup(&self, backup_passphrase: &str, kdf: KdfParams, rng: &mut dyn RngCore) -> Result<Vec<u8>, KeyError> {
        let c = self.contents()?;
        let inner = Sealed {
            store_id: c.store_id,
            identity_id: c.identity_id,
            entries: c.entries.iter().map(|(n, k)| (n.clone(), hex::encode(k.as_bytes()))).collect(),
            vault_initialized: c.vault_initialized,
            lost: c.lost,
            replaces_store_id: c.replaces_store_id,
        };
        let plain = serde_json::to_vec(&inner).expect("a backup serializes");
        let mut salt = [0u8; SALT_BYTES];
        rng.fill_bytes(&mut salt);
        let salt_hex = hex::encode(salt);
        let key = kdf::derive(backup_passphrase, &salt, &kdf)?;
        let nonce = crypto::nonce_from(rng);
        let sealed = crypto::seal(&key, &nonce, &envelope_aad(FORMAT, &kdf, &salt_hex), &plain);
        let env = Envelope { format: FORMAT.into(), kdf, salt: salt_hex, nonce: hex::encode(nonce), sealed: hex::encode(sealed) };
        Ok(serde_json::to_vec(&env).expect("an envelope serializes"))
    }

    /// Restores a whole key store at `path` from a backup: the same store id and identity (so
    /// the database it was bound to recognises it) and every key, wrapped under
    /// `new_passphrase`. Refuses a path that already holds a store.
    pub fn restore_backup(
        path: &str,
        backup: &[u8],
        backup_passphrase: &str,
        new_passphrase: &str,
        kdf: KdfParams,
        rng: &mut dyn RngCore,
    ) -> Result<KeyStore, KeyError> {
        let c = open_backup(backup, backup_passphrase)?;
        KeyStore::write_new(path, new_passphrase, kdf, rng, &c)
    }

    /// Imports a backup's aggregate keys (and its vault key, if this store has none) into this
    /// unlocked store, keeping this store's identity. A key this store already has is never
    /// replaced; a differing one is reported as conflicting.
    pub fn import_backup(&mut self, backup: &[u8], backup_passphrase: &str, rng: &mut dyn RngCore) -> Result<ImportReport, KeyError> {
        let c = open_backup(backup, backup_passphrase)?;
        let mut report = ImportReport::default();
        for (name, key) in &c.entries {
            if let Some(aggregate) = name.strip_prefix("aggregate/") {
                match self.get(name)? {
                    None => {
                        self.import_aggregate_key(aggregate, key, rng)?;
                        report.added.push(aggregate.to_string());
                    }
                    Some(have) if have != *key => report.conflicting.push(aggregate.to_string()),
                    Some(_) => {}
                }
            }
        }
        if let Some(vault) = c.entries.get(VAULT) {
            if self.get(VAULT)?.is_none() {
                self.put(VAULT, vault, rng)?;
                self.set_meta(VAULT_INITIALIZED, "1")?;
                report.vault_added = true;
            }
        }
        Ok(report)
    }
}

/// Opens a backup: malformed bytes are [`KeyError::BackupInvalid`], a wrong passphrase (or any
/// change to the backup) is [`KeyError::BackupPassphraseWrong`].
fn open_backup(backup: &[u8], passphrase: &str) -> Result<Contents, KeyError> {
    let env: Envelope = serde_json::from_slice(backup).map_err(|e| invalid(format!("not a key backup: {e}")))?;
    if env.format != FORMAT {
        return Err(invalid(format!("unknown backup format {}", env.format)));
    }
    let salt: [u8; SALT_BYTES] = hex::decode(&env.salt).ok().and_then(|s| s.try_into().ok()).ok_or_else(|| invalid("salt"))?;
    let nonce = hex::decode(&env.nonce).ok().and_then(|n| crypto::nonce_from_slice(&n).ok()).ok_or_else(|| invalid("nonce"))?;
    let sealed = hex::decode(&env.sealed).map_err(|_| invalid("sealed"))?;
    let key = kdf::derive(passphrase, &salt, &env.kdf)?;
    let plain = crypto::open(&key, &nonce, &envelope_aad(&env.format, &env.kdf, &env.salt), &sealed).map_err(|_| KeyError::BackupPassphraseWrong)?;
    let inner: Sealed = serde_json::from_slice(&plain).map_err(|e| invalid(format!("contents: {e}")))?;
    let mut entries = BTreeMap::new();
    for (name, k) in inner.entries {
        let bytes: [u8; crypto::KEY_BYTES] = hex::decode(&k).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| invalid(format!("key {name}")))?;
        entries.insert(name, Key::from_bytes(bytes));
    }
    Ok(Contents {
        store_id: inner.store_id,
        identity_id: inner.identity_id,
        entries,
        vault_initialized: inner.vault_initialized,
        lost: inner.lost,
        replaces_store_id: inner.replaces_store_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    fn rng() -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(3)
    }

    fn path(dir: &tempfile::TempDir, name: &str) -> String {
        dir.path().join(name).to_str().unwrap().to_string()
    }

    fn store_with_keys(dir: &tempfile::TempDir, r: &mut rand_chacha::ChaCha8Rng) -> (KeyStore, Key, Key) {
        let mut ks = KeyStore::create(&path(dir, "keys.db"), "pass", KdfParams::sim(), r).unwrap();
        let a = ks.ensure_aggregate_key("a", r).unwrap();
        let b = ks.ensure_aggregate_key("b", r).unwrap();
        (ks, a, b)
    }

    #[test]
    fn a_backup_restores_identity_and_aggregate_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        let (ks, a, b) = store_with_keys(&dir, &mut r);
        let backup = ks.export_backup("backup pass", KdfParams::sim(), &mut r).unwrap();
        let text = String::from_utf8_lossy(&backup);
        assert!(!text.contains(&hex::encode(a.as_bytes())), "the backup holds a key in the clear");
        let restored = KeyStore::restore_backup(&path(&dir, "restored.db"), &backup, "backup pass", "new pass", KdfParams::sim(), &mut r).unwrap();
        assert_eq!(restored.store_id(), ks.store_id());
        assert_eq!(restored.identity_id(), ks.identity_id());
        assert_eq!(restored.identity_key().unwrap(), ks.identity_key().unwrap());
        assert_eq!(restored.aggregate_key("a").unwrap(), a);
        assert_eq!(restored.aggregate_key("b").unwrap(), b);
        drop(restored);
        let mut reopened = KeyStore::open(&path(&dir, "restored.db")).unwrap();
        assert_eq!(reopened.unlock("pass").unwrap_err().code(), "keys:passphraseWrong");
        reopened.unlock("new pass").unwrap();
        assert_eq!(reopened.aggregate_key("b").unwrap(), b);
    }

    #[test]
    fn a_wrong_backup_passphrase_or_a_changed_backup_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        let (ks, _, _) = store_with_keys(&dir, &mut r);
        let backup = ks.export_backup("backup pass", KdfParams::sim(), &mut r).unwrap();
        let p = path(&dir, "r.db");
        let e = KeyStore::restore_backup(&p, &backup, "nope", "x", KdfParams::sim(), &mut r).err().unwrap();
        assert_eq!(e.code(), "keys:backupPassphraseWrong");
        let mut env: serde_json::Value = serde_json::from_slice(&backup).unwrap();
        env["kdf"]["iterations"] = 2.into();
        let changed = serde_json::to_vec(&env).unwrap();
        let e = KeyStore::restore_backup(&p, &changed, "backup pass", "x", KdfParams::sim(), &mut r).err().unwrap();
        assert_eq!(e.code(), "keys:backupPassphraseWrong");
        let e = KeyStore::restore_backup(&p, b"not json", "backup pass", "x", KdfParams::sim(), &mut r).err().unwrap();
        assert_eq!(e.code(), "keys:backupInvalid");
    }

    #[test]
    fn importing_a_backup_fills_missing_keys_and_reports_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        let (ks, a, b) = store_with_keys(&dir, &mut r);
        let backup = ks.export_backup("bp", KdfParams::sim(), &mut r).unwrap();
        let mut fresh = KeyStore::create(&path(&dir, "fresh.db"), "p2", KdfParams::sim(), &mut r).unwrap();
        let own_b = fresh.ensure_aggregate_key("b", &mut r).unwrap();
        assert_eq!(fresh.aggregate_key("a").unwrap_err().code(), "keys:aggregateKeyMissing");
        let report = fresh.import_backup(&backup, "bp", &mut r).unwrap();
        assert_eq!(report, ImportReport { added: vec!["a".into()], conflicting: vec!["b".into()], vault_added: false });
        assert_eq!(fresh.aggregate_key("a").unwrap(), a);
        assert_eq!(fresh.aggregate_key("b").unwrap(), own_b);
        assert_ne!(own_b, b);
        assert_ne!(fresh.identity_id(), ks.identity_id(), "import keeps this store's identity");
    }

    #[test]
    fn a_backup_found_after_a_declared_loss_makes_payloads_recoverable_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        let (ks, a, _) = store_with_keys(&dir, &mut r);
        let backup = ks.export_backup("bp", KdfParams::sim(), &mut r).unwrap();
        drop(ks);
        let mut ks = KeyStore::declare_passphrase_lost(&path(&dir, "keys.db"), "new", KdfParams::sim(), &mut r).unwrap();
        assert_eq!(ks.aggregate_key("a").unwrap_err().code(), "keys:payloadsUnrecoverable");
        ks.import_backup(&backup, "bp", &mut r).unwrap();
        assert_eq!(ks.aggregate_key("a").unwrap(), a);
    }
}

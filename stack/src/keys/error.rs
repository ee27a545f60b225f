//! Typed key errors, each with a stable `keys:<code>` a runbook step can act on.

use std::fmt;

use crate::crypto::CryptoError;
use crate::error::StoreError;

/// Which half of a backup pair is missing or does not belong (runbook 002, "Backup and Recovery
/// Guidance": restoring only one of the database and the key store breaks decryption).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Half {
    /// The database is bound to a key store, and no key store file is there.
    KeyStoreMissing { expected_store_id: String },
    /// The key store is bound to a database, and the database was replaced by one that is not
    /// bound to any key store (a fresh or an older, unbound database).
    DatabaseMissing { expected_db_id: String },
    /// Both are bound, to different partners: one of them was restored from another backup.
    Mismatch { db_says_store_id: String, store_id: String },
}

/// What went wrong with keys, tokens or the key store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The passphrase does not unwrap the key store.
    PassphraseWrong,
    /// The key store is locked: unlock it with the passphrase first.
    Locked,
    /// The key store file holds no key store (create one, or restore a backup).
    KeyStoreUninitialized,
    /// A key store already exists at this path; creating one would destroy its keys.
    KeyStoreExists,
    /// No key for this aggregate: its events cannot be decrypted until a backup is imported.
    AggregateKeyMissing { aggregate: String },
    /// The passphrase was lost with no backup: this aggregate's payloads are gone for good, by
    /// design (runbook 000, "Key loss"). Everything else keeps working.
    PayloadsUnrecoverable { aggregate: String },
    /// The backup's passphrase is wrong, or the backup was changed.
    BackupPassphraseWrong,
    /// The bytes are not a key backup this stack wrote.
    BackupInvalid { detail: String },
    /// The database and the key store do not belong together (a half restore).
    HalfRestore(Half),
    /// The vault key was initialized once and is not here: recover it from a peer's share.
    VaultKeyMissing,
    /// No vault key was ever initialized.
    VaultKeyUninitialized,
    /// The vault key was initialized once; generating another would orphan everything under it.
    VaultKeyRegenerationRefused,
    /// Only the room's authority may generate the first vault key.
    NotAuthority,
    /// A vault share did not open, or holds a key other than the one this store already has.
    VaultShareInvalid { detail: String },
    /// A group packet under an unknown epoch found the buffer full and was dropped.
    GroupBufferOverflow { group: String, epoch: u64, capacity: usize },
    /// A group packet did not open under its epoch's key.
    GroupPacketRejected { group: String, epoch: u64 },
    /// A key request names an epoch of the group that the side judging it does not hold (the
    /// peer asked does not hold the epoch the requester can open, or the requester holds no
    /// epoch of the group at all and must pair again).
    GroupEpochUnknown { group: String, epoch: Option<u64> },
    /// A key request got no answer from its peer in any of its attempts (the peer is down or cut
    /// off): ask again later, or ask another peer.
    KeyRequestTimedOut { request: String, attempts: u32, detail: String },
    /// The peer answered a key request with a refusal (its own typed code is in `detail`).
    KeyRequestRefused { request: String, detail: String },
    /// A peer's answer to a key request does not open or does not answer the request.
    KeyAnswerInvalid { detail: String },
    /// No peer asked for a vault share could give one: each peer's reason is in `detail`.
    VaultShareUnavailable { asked: usize, detail: String },
    /// The token's expiry is past, by the node's clock.
    TokenExpired { expires_unix_ms: i64, now_unix_ms: i64 },
    /// The token is malformed or its tag does not verify.
    TokenInvalid { detail: String },
    /// The token names another identity than the one connecting.
    TokenIdentityMismatch { token_identity: String, identity: String },
    /// KDF cost parameters out of the KDF's range.
    KdfParams { detail: String },
    /// The key store's storage failed.
    Store(StoreError),
}

impl KeyError {
    /// A short stable code for traces and diagnostics.
    pub fn code(&self) -> &'static str {
        match self {
            KeyError::PassphraseWrong => "keys:passphraseWrong",
            KeyError::Locked => "keys:locked",
            KeyError::KeyStoreUninitialized => "keys:keyStoreUninitialized",
            KeyError::KeyStoreExists => "keys:keyStoreExists",
            KeyError::AggregateKeyMissing { .. } => "keys:aggregateKeyMissing",
            KeyError::PayloadsUnrecoverable { .. } => "keys:payloadsUnrecoverable",
            KeyError::BackupPassphraseWrong => "keys:backupPassphraseWrong",
            KeyError::BackupInvalid { .. } => "keys:backupInvalid",
            KeyError::HalfRestore(Half::KeyStoreMissing { .. }) => "keys:halfRestoreKeyStoreMissing",
            KeyError::HalfRestore(Half::DatabaseMissing { .. }) => "keys:halfRestoreDatabaseMissing",
            KeyError::HalfRestore(Half::Mismatch { .. }) => "keys:halfRestoreMismatch",
            KeyError::VaultKeyMissing => "keys:vaultKeyMissing",
            KeyError::VaultKeyUninitialized => "keys:vaultKeyUninitialized",
            KeyError::VaultKeyRegenerationRefused => "keys:vaultKeyRegenerationRefused",
            KeyError::NotAuthority => "keys:notAuthority",
            KeyError::VaultShareInvalid { .. } => "keys:vaultShareInvalid",
            KeyError::GroupBufferOverflow { .. } => "keys:groupBufferOverflow",
            KeyError::GroupPacketRejected { .. } => "keys:groupPacketRejected",
            KeyError::GroupEpochUnknown { .. } => "keys:groupEpochUnknown",
            KeyError::KeyRequestTimedOut { .. } => "keys:keyRequestTimedOut",
            KeyError::KeyRequestRefused { .. } => "keys:keyRequestRefused",
            KeyError::KeyAnswerInvalid { .. } => "keys:keyAnswerInvalid",
            KeyError::VaultShareUnavailable { .. } => "keys:vaultShareUnavailable",
            KeyError::TokenExpired { .. } => "keys:tokenExpired",
            KeyError::TokenInvalid { .. } => "keys:tokenInvalid",
            KeyError::TokenIdentityMismatch { .. } => "keys:tokenIdentityMismatch",
            KeyError::KdfParams { .. } => "keys:kdfParams",
            KeyError::Store(e) => e.code(),
        }
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.code();
        match self {
            KeyError::PassphraseWrong => write!(f, "{code}: the passphrase does not unlock the key store"),
            KeyError::Locked => write!(f, "{code}: the key store is locked"),
            KeyError::KeyStoreUninitialized => write!(f, "{code}: no key store here: create one or import a backup"),
            KeyError::KeyStoreExists => write!(f, "{code}: a key store already exists here"),
            KeyError::AggregateKeyMissing { aggregate } => {
                write!(f, "{code}: no key for aggregate {aggregate}: import a key backup, then unlock")
            }
            KeyError::PayloadsUnrecoverable { aggregate } => {
                write!(f, "{code}: aggregate {aggregate}'s key was lost with its passphrase and no backup: its payloads are unrecoverable by design")
            }
            KeyError::BackupPassphraseWrong => write!(f, "{code}: the backup passphrase is wrong or the backup was changed"),
            KeyError::BackupInvalid { detail } => write!(f, "{code}: {detail}"),
            KeyError::HalfRestore(Half::KeyStoreMissing { expected_store_id }) => {
                write!(f, "{code}: the database is bound to key store {expected_store_id}, which is missing: restore the key store with the database")
            }
            KeyError::HalfRestore(Half::DatabaseMissing { expected_db_id }) => {
                write!(f, "{code}: the key store is bound to database {expected_db_id}, and this database is not it: restore the database with the key store")
            }
            KeyError::HalfRestore(Half::Mismatch { db_says_store_id, store_id }) => {
                write!(f, "{code}: the database is bound to key store {db_says_store_id}, not to {store_id}: one half was restored from another backup")
            }
            KeyError::VaultKeyMissing => write!(f, "{code}: the vault key was initialized and is missing: recover it from a peer's share, never regenerate"),
            KeyError::VaultKeyUninitialized => write!(f, "{code}: no vault key was ever initialized"),
            KeyError::VaultKeyRegenerationRefused => write!(f, "{code}: the vault key was initialized before: regeneration refused"),
            KeyError::NotAuthority => write!(f, "{code}: only the authority may generate the first vault key"),
            KeyError::VaultShareInvalid { detail } => write!(f, "{code}: {detail}"),
            KeyError::GroupBufferOverflow { group, epoch, capacity } => {
                write!(f, "{code}: packet of group {group} under unknown epoch {epoch} dropped: buffer full ({capacity})")
            }
            KeyError::GroupPacketRejected { group, epoch } => write!(f, "{code}: packet of group {group} did not open under epoch {epoch}"),
            KeyError::GroupEpochUnknown { group, epoch: Some(epoch) } => write!(f, "{code}: epoch {epoch} of group {group} is not held here"),
            KeyError::GroupEpochUnknown { group, epoch: None } => write!(f, "{code}: no epoch of group {group} is held here: pair with the group again"),
            KeyError::KeyRequestTimedOut { request, attempts, detail } => {
                write!(f, "{code}: {request} got no answer in {attempts} attempts ({detail}): the peer is down or cut off")
            }
            KeyError::KeyRequestRefused { request, detail } => write!(f, "{code}: {request} was refused: {detail}"),
            KeyError::KeyAnswerInvalid { detail } => write!(f, "{code}: {detail}"),
            KeyError::VaultShareUnavailable { asked, detail } => write!(f, "{code}: none of the {asked} peers asked gave a vault share: {detail}"),
            KeyError::TokenExpired { expires_unix_ms, now_unix_ms } => {
                write!(f, "{code}: token expired at {expires_unix_ms}, now {now_unix_ms}: reconnect to refresh it")
            }
            KeyError::TokenInvalid { detail } => write!(f, "{code}: {detail}"),
            KeyError::TokenIdentityMismatch { token_identity, identity } => {
                write!(f, "{code}: token is bound to {token_identity}, not {identity}")
            }
            KeyError::KdfParams { detail } => write!(f, "{code}: {detail}"),
            KeyError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for KeyError {}

impl From<StoreError> for KeyError {
    fn from(e: StoreError) -> Self {
        KeyError::Store(e)
    }
}

impl From<rusqlite::Error> for KeyError {
    fn from(e: rusqlite::Error) -> Self {
        KeyError::Store(e.into())
    }
}

impl From<CryptoError> for KeyError {
    /// Outside the places that name a better code (unlock, backups, shares, packets), a wrapped
    /// key that does not open means the key store file was changed.
    fn from(e: CryptoError) -> Self {
        KeyError::Store(StoreError::Invalid { detail: e.to_string() })
    }
}

//! Keys (runbooks 000 and 002): an identity key and per-aggregate keys, wrapped by a key derived
//! from a passphrase, in a key store file separate from the event database.
//!
//! - [`KeyStore`]: create, unlock (a wrong passphrase is `keys:passphraseWrong`), aggregate keys
//!   (`keys:aggregateKeyMissing`), a declared passphrase loss (`keys:payloadsUnrecoverable`).
//! - [`backup`]: key backup export, restore and import.
//! - [`binding`]: the event database and the key store record each other's ids, so a half
//!   restore is detected and says which half is missing.
//! - [`vault`]: the vault key, never silently regenerated once initialized, recovered from a
//!   peer's share.
//! - [`group`]: group keys with epochs; packets under an unknown epoch wait in a bounded buffer.
//! - [`exchange`]: group key requests and vault share requests between members, on the wire,
//!   with timeouts, retries and typed errors.
//! - [`token`]: tokens bound to an identity, with an expiry read from the node's clock,
//!   refreshed on (re)connect.
//!
//! Randomness always comes from the caller's [`rand_core::RngCore`] (in a run, a seeded stream);
//! nothing here reads OS entropy or the OS clock.

pub mod backup;
pub mod binding;
mod error;
pub mod exchange;
pub mod group;
pub mod kdf;
mod keystore;
pub mod token;
pub mod vault;

pub use crate::crypto::Key;
pub use backup::ImportReport;
pub use error::{Half, KeyError};
pub use kdf::KdfParams;
pub use keystore::KeyStore;

//! Authenticated encryption for payloads and wrapped keys: XChaCha20-Poly1305.
//!
//! A payload is sealed under its aggregate's key with the associated data
//! `tenant ‖ aggregate ‖ type` (each length-prefixed), so a ciphertext moved to another tenant,
//! aggregate or event type no longer opens. The nonce comes from the caller: in a run the world
//! derives it from a seeded stream, so the stack never reads OS entropy. XChaCha's 24-byte nonce
//! is long enough that nonces drawn at random never repeat in practice, which is why it is the
//! variant used throughout (ChaCha20-Poly1305's 12 bytes are not).
//!
//! `open` fails with [`CryptoError::Tampered`] on any change to the key, nonce, associated data
//! or ciphertext: the AEAD cannot tell a wrong key from a flipped bit, and neither can we.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::RngCore;
use sha2::{Digest, Sha256};

/// Bytes of a nonce.
pub const NONCE_BYTES: usize = 24;
/// Bytes of a key.
pub const KEY_BYTES: usize = 32;
/// Bytes the AEAD adds to a plaintext (its tag).
pub const TAG_BYTES: usize = 16;

/// A nonce: never reuse one with the same key.
pub type Nonce = [u8; NONCE_BYTES];

/// A 32-byte symmetric key. Its `Debug` never prints the key, so a key cannot leak into a
/// trace or a diagnostics bundle through formatting.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; KEY_BYTES]);

impl Key {
    /// 32 bytes from `rng` (in a run, a seeded stream; never the OS).
    pub fn generate(rng: &mut dyn RngCore) -> Key {
        let mut k = [0u8; KEY_BYTES];
        rng.fill_bytes(&mut k);
        Key(k)
    }

    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Key {
        Key(bytes)
    }

    /// The raw key. Only key wrapping and backups should need it.
    pub fn as_bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }

    /// A short, non-secret name for the key (16 hex digits of a domain-separated SHA-256), so
    /// that a model or a diagnostics bundle can tell two keys apart without holding either.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"drill-key-fingerprint-v1");
        h.update(self.0);
        hex::encode(&h.finalize()[..8])
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(fp={})", self.fingerprint())
    }
}

/// A fresh nonce from `rng`.
pub fn nonce_from(rng: &mut dyn RngCore) -> Nonce {
    let mut n = [0u8; NONCE_BYTES];
    rng.fill_bytes(&mut n);
    n
}

/// Why a ciphertext did not open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CryptoError {
    /// The key, nonce, associated data or ciphertext is not what was sealed.
    Tampered,
}

impl CryptoError {
    /// A short stable code for traces and diagnostics.
    pub fn code(&self) -> &'static str {
        match self {
            CryptoError::Tampered => "crypto:tampered",
        }
    }
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CryptoError::Tampered => write!(f, "crypto:tampered: ciphertext failed authentication (tampered, or the wrong key)"),
        }
    }
}

impl std::error::Error for CryptoError {}

/// Encrypts `plaintext` under `key` with `nonce`, binding `aad`.
pub fn seal(key: &Key, nonce: &Nonce, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
    cipher
        .encrypt(XNonce::from_slice(nonce), Payload { msg: plaintext, aad })
        .expect("XChaCha20-Poly1305 encryption fails only past 256 GiB, far beyond any payload")
}

/// Decrypts what [`seal`] produced; any change to the inputs is [`CryptoError::Tampered`].
pub fn open(key: &Key, nonce: &Nonce, aad: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
    cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad }).map_err(|_| CryptoError::Tampered)
}

/// Length-prefixed concatenation, so that no two different field lists give the same bytes
/// (`("ab","c")` and `("a","bc")` differ), as in the hash chain.
pub fn framed(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(&(p.len() as u64).to_le_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// The associated data of an event payload: `tenant ‖ aggregate ‖ type`.
pub fn payload_aad(tenant: &str, aggregate: &str, kind: &str) -> Vec<u8> {
    framed(&[b"drill-payload-v1", tenant.as_bytes(), aggregate.as_bytes(), kind.as_bytes()])
}

/// Seals an event payload under its aggregate's key.
pub fn seal_payload(key: &Key, nonce: &Nonce, tenant: &str, aggregate: &str, kind: &str, plaintext: &[u8]) -> Vec<u8> {
    seal(key, nonce, &payload_aad(tenant, aggregate, kind), plaintext)
}

/// Opens an event payload; fails if any of tenant, aggregate, type, nonce or bytes changed.
pub fn open_payload(key: &Key, nonce: &Nonce, tenant: &str, aggregate: &str, kind: &str, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    open(key, nonce, &payload_aad(tenant, aggregate, kind), ciphertext)
}

/// Reads a nonce stored as bytes; a wrong length is tampering.
pub fn nonce_from_slice(bytes: &[u8]) -> Result<Nonce, CryptoError> {
    bytes.try_into().map_err(|_| CryptoError::Tampered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    fn rng() -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(7)
    }

    #[test]
    fn a_payload_round_trips_and_hides_its_plaintext() {
        let mut r = rng();
        let key = Key::generate(&mut r);
        let nonce = nonce_from(&mut r);
        let ct = seal_payload(&key, &nonce, "acme", "order-1", "placed", b"secret plaintext");
        assert_eq!(ct.len(), b"secret plaintext".len() + TAG_BYTES);
        assert!(!ct.windows(6).any(|w| w == b"secret"));
        assert_eq!(open_payload(&key, &nonce, "acme", "order-1", "placed", &ct).unwrap(), b"secret plaintext");
    }

    #[test]
    fn any_tampering_is_refused() {
        let mut r = rng();
        let key = Key::generate(&mut r);
        let other = Key::generate(&mut r);
        let nonce = nonce_from(&mut r);
        let ct = seal_payload(&key, &nonce, "acme", "order-1", "placed", b"payload");
        let tampered = CryptoError::Tampered;
        for i in 0..ct.len() {
            let mut bad = ct.clone();
            bad[i] ^= 0x01;
            assert_eq!(open_payload(&key, &nonce, "acme", "order-1", "placed", &bad), Err(tampered.clone()), "bit flip at byte {i}");
        }
        let mut n2 = nonce;
        n2[0] ^= 1;
        assert_eq!(open_payload(&key, &n2, "acme", "order-1", "placed", &ct), Err(tampered.clone()));
        assert_eq!(open_payload(&other, &nonce, "acme", "order-1", "placed", &ct), Err(tampered.clone()));
        assert_eq!(open_payload(&key, &nonce, "globex", "order-1", "placed", &ct), Err(tampered.clone()));
        assert_eq!(open_payload(&key, &nonce, "acme", "order-2", "placed", &ct), Err(tampered.clone()));
        assert_eq!(open_payload(&key, &nonce, "acme", "order-1", "cancelled", &ct), Err(tampered.clone()));
        assert_eq!(open_payload(&key, &nonce, "acme", "order-1", "placed", &ct[..ct.len() - 1]), Err(tampered.clone()));
        assert_eq!(tampered.code(), "crypto:tampered");
    }

    #[test]
    fn associated_data_fields_do_not_run_together() {
        assert_ne!(payload_aad("ab", "c", "k"), payload_aad("a", "bc", "k"));
    }

    #[test]
    fn a_key_debug_names_only_its_fingerprint() {
        let key = Key::from_bytes([0xAB; 32]);
        let shown = format!("{key:?}");
        assert!(!shown.contains("abab") && !shown.contains("171"), "{shown}");
        assert_eq!(shown, format!("Key(fp={})", key.fingerprint()));
        assert_ne!(key.fingerprint(), Key::from_bytes([0xAC; 32]).fingerprint());
    }

    #[test]
    fn the_same_seed_gives_the_same_keys_and_nonces() {
        let (mut a, mut b) = (rng(), rng());
        assert_eq!(Key::generate(&mut a), Key::generate(&mut b));
        assert_eq!(nonce_from(&mut a), nonce_from(&mut b));
    }
}

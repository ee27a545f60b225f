//! The stored form of an event payload: sealed under its aggregate's key, never plaintext.
//!
//! An envelope is `MAGIC ‖ ts_ms (8 bytes, big-endian) ‖ nonce (24 bytes) ‖ ciphertext`. The
//! ciphertext is XChaCha20-Poly1305 over the plaintext with the associated data
//! `tenant ‖ aggregate ‖ type` ([`crypto::payload_aad`]), so an envelope moved to another
//! tenant, aggregate or type no longer opens. The envelope is what the outbox keeps, what the
//! protocol carries, what the server stores and what the hash chain covers: only a device that
//! holds the aggregate's key ever sees the plaintext. The creation time travels in the clear
//! (projections rebuild "up to a point in time" from it) and the chain protects it.

use crate::crypto::{self, Key, Nonce, NONCE_BYTES, TAG_BYTES};
use crate::error::StoreError;
use crate::projections::{KeyRing, SealedEvent};
use crate::store::EventRow;

/// The first bytes of every envelope (format version 1).
pub const MAGIC: &[u8; 4] = b"dse1";
/// Bytes an envelope adds to its plaintext.
pub const OVERHEAD: usize = MAGIC.len() + 8 + NONCE_BYTES + TAG_BYTES;

/// Seals `plaintext` of an event of `tenant`/`aggregate`/`kind` created at `ts_ms`.
pub fn seal(key: &Key, nonce: &Nonce, tenant: &str, aggregate: &str, kind: &str, ts_ms: i64, plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&ts_ms.to_be_bytes());
    out.extend_from_slice(nonce);
    out.extend_from_slice(&crypto::seal_payload(key, nonce, tenant, aggregate, kind, plaintext));
    out
}

/// The parts of an envelope: creation time, nonce and ciphertext.
pub fn parse(bytes: &[u8]) -> Result<(i64, Nonce, &[u8]), StoreError> {
    let invalid = |why: &str| StoreError::Invalid { detail: format!("payload envelope: {why}") };
    if bytes.len() < OVERHEAD {
        return Err(invalid(&format!("{} bytes, shorter than the {OVERHEAD} every envelope has", bytes.len())));
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(invalid("unknown format (a plaintext payload, or not an envelope)"));
    }
    let ts = i64::from_be_bytes(bytes[4..12].try_into().expect("8 bytes"));
    let nonce: Nonce = bytes[12..12 + NONCE_BYTES].try_into().expect("a nonce's bytes");
    Ok((ts, nonce, &bytes[12 + NONCE_BYTES..]))
}

/// A stored event as projections take it.
pub fn sealed_event(e: &EventRow) -> Result<SealedEvent, StoreError> {
    let (ts_ms, nonce, ciphertext) = parse(&e.payload)?;
    Ok(SealedEvent {
        seq: e.seq,
        tenant: e.tenant.clone(),
        aggregate: e.aggregate.clone(),
        kind: e.kind.clone(),
        ts_ms,
        nonce,
        ciphertext: ciphertext.to_vec(),
    })
}

/// Why an envelope did not open, as a stable code: `keys:aggregateKeyMissing`,
/// `crypto:tampered` or `store:invalid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub code: &'static str,
    pub detail: String,
}

/// Opens the envelope of an event of `tenant`/`aggregate`/`kind` with the keys in `ring`.
pub fn open(ring: &dyn KeyRing, tenant: &str, aggregate: &str, kind: &str, envelope: &[u8]) -> Result<Vec<u8>, Unreadable> {
    let (_, nonce, ct) = parse(envelope).map_err(|e| Unreadable { code: e.code(), detail: e.to_string() })?;
    let key = ring.aggregate_key(aggregate).map_err(|e| Unreadable { code: e.code(), detail: e.to_string() })?;
    crypto::open_payload(&key, &nonce, tenant, aggregate, kind, ct).map_err(|e| Unreadable { code: e.code(), detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand_chacha::rand_core::SeedableRng;

    use super::*;

    #[test]
    fn an_envelope_opens_only_where_it_was_sealed() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let key = Key::generate(&mut rng);
        let nonce = crypto::nonce_from(&mut rng);
        let env = seal(&key, &nonce, "acme", "note-1", "noted", 42, b"the plaintext");
        assert_eq!(env.len(), b"the plaintext".len() + OVERHEAD);
        assert!(!env.windows(5).any(|w| w == b"plain"), "the plaintext shows in the envelope");
        let ring: BTreeMap<String, Key> = [("note-1".to_string(), key)].into();
        assert_eq!(open(&ring, "acme", "note-1", "noted", &env).unwrap(), b"the plaintext");
        assert_eq!(parse(&env).unwrap().0, 42);
        assert_eq!(open(&ring, "globex", "note-1", "noted", &env).unwrap_err().code, "crypto:tampered");
        assert_eq!(open(&ring, "acme", "note-2", "noted", &env).unwrap_err().code, "keys:aggregateKeyMissing");
        let mut flipped = env.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(open(&ring, "acme", "note-1", "noted", &flipped).unwrap_err().code, "crypto:tampered");
        assert_eq!(open(&ring, "acme", "note-1", "noted", b"plaintext, not sealed at all, long enough to parse").unwrap_err().code, "store:invalid");
    }
}

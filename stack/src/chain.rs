//! The event hash chain: `hash = SHA-256(prev_hash ‖ type ‖ tenant ‖ payload)`, each field
//! length-prefixed so that no two different events hash alike. The first event of a tenant
//! chains from [`GENESIS`].

use sha2::{Digest, Sha256};

/// The hash a tenant's first event chains from.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// The hash of one event.
pub fn event_hash(prev_hash: &[u8], kind: &str, tenant: &str, payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [prev_hash, kind.as_bytes(), tenant.as_bytes(), payload] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// One stored event as the chain sees it.
pub struct Link<'a> {
    pub seq: u64,
    pub kind: &'a str,
    pub tenant: &'a str,
    pub payload: &'a [u8],
    pub prev_hash: &'a [u8],
    pub hash: &'a [u8],
}

/// Verifies a tenant's events in order; returns the seq of the first event that does not verify.
pub fn first_broken<'a>(links: impl IntoIterator<Item = Link<'a>>) -> Option<u64> {
    first_broken_from(&GENESIS, links)
}

/// [`first_broken`] for a chain that starts at `start` (a compaction anchor's hash) instead of
/// [`GENESIS`].
pub fn first_broken_from<'a>(start: &[u8], links: impl IntoIterator<Item = Link<'a>>) -> Option<u64> {
    let mut prev: Vec<u8> = start.to_vec();
    for l in links {
        let want = event_hash(&prev, l.kind, l.tenant, l.payload);
        if l.prev_hash != prev.as_slice() || l.hash != want.as_slice() {
            return Some(l.seq);
        }
        prev = l.hash.to_vec();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_detects_a_changed_payload() {
        let h1 = event_hash(&GENESIS, "t", "acme", b"one");
        let h2 = event_hash(&h1, "t", "acme", b"two");
        let ok = [
            Link { seq: 1, kind: "t", tenant: "acme", payload: b"one", prev_hash: &GENESIS, hash: &h1 },
            Link { seq: 2, kind: "t", tenant: "acme", payload: b"two", prev_hash: &h1, hash: &h2 },
        ];
        assert_eq!(first_broken(ok), None);
        let bad = [
            Link { seq: 1, kind: "t", tenant: "acme", payload: b"one", prev_hash: &GENESIS, hash: &h1 },
            Link { seq: 2, kind: "t", tenant: "acme", payload: b"TWO", prev_hash: &h1, hash: &h2 },
        ];
        assert_eq!(first_broken(bad), Some(2));
    }

    #[test]
    fn fields_do_not_run_together() {
        assert_ne!(event_hash(&GENESIS, "ab", "c", b""), event_hash(&GENESIS, "a", "bc", b""));
    }
}

//! The key that wraps every stored key is derived from the passphrase with Argon2id.
//!
//! Its cost is a parameter: a device uses [`KdfParams::interactive`], a simulation that unlocks
//! thousands of times uses [`KdfParams::sim`] (the smallest costs Argon2 allows), so runs stay
//! fast while the code path is the real one. The parameters and the salt are stored beside the
//! wrapped keys, so a store or a backup opens with the costs it was written with.

use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};

use crate::crypto::Key;

use super::KeyError;

/// Bytes of a KDF salt.
pub const SALT_BYTES: usize = 16;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB; at least 8 × `lanes`.
    pub memory_kib: u32,
    /// Passes over memory; at least 1.
    pub iterations: u32,
    /// Degree of parallelism (computed sequentially here); at least 1.
    pub lanes: u32,
}

impl KdfParams {
    /// OWASP's recommended minimum for Argon2id (19 MiB, 2 passes, 1 lane).
    pub fn interactive() -> KdfParams {
        KdfParams { memory_kib: 19 * 1024, iterations: 2, lanes: 1 }
    }

    /// The cheapest costs Argon2 accepts: for simulations and tests, never for real secrets.
    pub fn sim() -> KdfParams {
        KdfParams { memory_kib: 8, iterations: 1, lanes: 1 }
    }

    fn argon2(&self) -> Result<Argon2<'static>, KeyError> {
        let p = Params::new(self.memory_kib, self.iterations, self.lanes, Some(crate::crypto::KEY_BYTES))
            .map_err(|e| KeyError::KdfParams { detail: format!("{self:?}: {e}") })?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, p))
    }
}

/// Derives the wrapping key from `passphrase` and `salt`.
pub fn derive(passphrase: &str, salt: &[u8; SALT_BYTES], params: &KdfParams) -> Result<Key, KeyError> {
    let mut out = [0u8; crate::crypto::KEY_BYTES];
    params.argon2()?.hash_password_into(passphrase.as_bytes(), salt, &mut out).map_err(|e| KeyError::KdfParams { detail: e.to_string() })?;
    Ok(Key::from_bytes(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_depends_on_passphrase_salt_and_costs() {
        let p = KdfParams::sim();
        let k = derive("correct horse", &[1; SALT_BYTES], &p).unwrap();
        assert_eq!(k, derive("correct horse", &[1; SALT_BYTES], &p).unwrap());
        assert_ne!(k, derive("correct horsf", &[1; SALT_BYTES], &p).unwrap());
        assert_ne!(k, derive("correct horse", &[2; SALT_BYTES], &p).unwrap());
        let p2 = KdfParams { iterations: 2, ..p };
        assert_ne!(k, derive("correct horse", &[1; SALT_BYTES], &p2).unwrap());
    }

    #[test]
    fn costs_out_of_range_are_a_typed_error() {
        let bad = KdfParams { memory_kib: 1, iterations: 0, lanes: 1 };
        let e = derive("x", &[0; SALT_BYTES], &bad).unwrap_err();
        assert_eq!(e.code(), "keys:kdfParams");
    }
}

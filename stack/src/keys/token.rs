//! Tokens (runbook 002, "Token Invalid or Expired"): bound to an identity, with an expiry read
//! from the node's [`Clock`], refreshed on (re)connect and saved in the key store.
//!
//! A token is `hex(claims JSON) . hex(nonce) . hex(tag)`: the claims are readable by the
//! device (it must know when its token expires), and the tag is an AEAD seal of nothing with
//! the claims as associated data under the issuer's key, so only the issuer can make one.
//! Expiry is judged by whoever reads the clock: a device whose clock runs ahead sees its token
//! expire early, which is exactly the skew the simulation injects.

use rand_core::RngCore;
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::crypto::{self, Key};

use super::keystore::KeyStore;
use super::KeyError;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub identity: String,
    pub tenant: String,
    pub issued_unix_ms: i64,
    pub expires_unix_ms: i64,
}

fn invalid(detail: impl Into<String>) -> KeyError {
    KeyError::TokenInvalid { detail: detail.into() }
}

/// Reads a token's claims without verifying its tag (a device cannot: it has no issuer key).
pub fn claims(token: &str) -> Result<Claims, KeyError> {
    let claims_hex = token.split('.').next().ok_or_else(|| invalid("empty token"))?;
    let bytes = hex::decode(claims_hex).map_err(|_| invalid("claims are not hex"))?;
    serde_json::from_slice(&bytes).map_err(|e| invalid(format!("claims: {e}")))
}

fn tag_aad(claims_hex: &str) -> Vec<u8> {
    crypto::framed(&[b"drill-token-v1", claims_hex.as_bytes()])
}

/// Checks a token's identity and expiry against `identity` and `clock`.
pub fn check(c: &Claims, identity: &str, clock: &dyn Clock) -> Result<(), KeyError> {
    if c.identity != identity {
        return Err(KeyError::TokenIdentityMismatch { token_identity: c.identity.clone(), identity: identity.into() });
    }
    let now = clock.now_unix_ms();
    if now >= c.expires_unix_ms {
        return Err(KeyError::TokenExpired { expires_unix_ms: c.expires_unix_ms, now_unix_ms: now });
    }
    Ok(())
}

/// The server side: issues and verifies tokens under its own key.
pub struct TokenIssuer {
    key: Key,
    ttl_ms: i64,
}

impl TokenIssuer {
    /// An issuer whose tokens live `ttl_ms` milliseconds.
    pub fn new(key: Key, ttl_ms: i64) -> TokenIssuer {
        TokenIssuer { key, ttl_ms }
    }

    /// A token for `identity` in `tenant`, valid from the clock's now for the issuer's TTL.
    pub fn issue(&self, identity: &str, tenant: &str, clock: &dyn Clock, rng: &mut dyn RngCore) -> String {
        let now = clock.now_unix_ms();
        let c = Claims { identity: identity.into(), tenant: tenant.into(), issued_unix_ms: now, expires_unix_ms: now + self.ttl_ms };
        let claims_hex = hex::encode(serde_json::to_vec(&c).expect("claims serialize"));
        let nonce = crypto::nonce_from(rng);
        let tag = crypto::seal(&self.key, &nonce, &tag_aad(&claims_hex), b"");
        format!("{claims_hex}.{}.{}", hex::encode(nonce), hex::encode(tag))
    }

    /// Verifies a token presented by `identity`: a bad tag or shape is `keys:tokenInvalid`,
    /// another identity `keys:tokenIdentityMismatch`, a past expiry `keys:tokenExpired`.
    pub fn verify(&self, token: &str, identity: &str, clock: &dyn Clock) -> Result<Claims, KeyError> {
        let parts: Vec<&str> = token.split('.').collect();
        let [claims_hex, nonce_hex, tag_hex] = parts[..] else { return Err(invalid("a token has three parts")) };
        let nonce = hex::decode(nonce_hex).ok().and_then(|n| crypto::nonce_from_slice(&n).ok()).ok_or_else(|| invalid("nonce"))?;
        let tag = hex::decode(tag_hex).map_err(|_| invalid("tag is not hex"))?;
        crypto::open(&self.key, &nonce, &tag_aad(claims_hex), &tag).map_err(|_| invalid("tag does not verify"))?;
        let c = claims(token)?;
        check(&c, identity, clock)?;
        Ok(c)
    }
}

fn token_entry(tenant: &str) -> String {
    format!("token/{tenant}")
}

impl KeyStore {
    /// The token saved for `tenant`, if any.
    pub fn saved_token(&self, tenant: &str) -> Result<Option<String>, KeyError> {
        let Some(raw) = self.get_secret(&token_entry(tenant))? else { return Ok(None) };
        String::from_utf8(raw).map(Some).map_err(|_| invalid("saved token is not text"))
    }

    /// What a device calls when it (re)connects to `tenant`: the saved token if it is this
    /// identity's and not expired by `clock`, otherwise a fresh one from `refresh`, checked the
    /// same way and saved (wrapped) in the key store. A refreshed token that is expired already
    /// or names another identity is refused with its typed error and not saved.
    pub fn token_on_connect(
        &mut self,
        tenant: &str,
        clock: &dyn Clock,
        refresh: &mut dyn FnMut() -> Result<String, KeyError>,
        rng: &mut dyn RngCore,
    ) -> Result<String, KeyError> {
        let identity = self.identity_id().to_string();
        if let Some(saved) = self.saved_token(tenant)? {
            if claims(&saved).and_then(|c| check(&c, &identity, clock)).is_ok() {
                return Ok(saved);
            }
        }
        let fresh = refresh()?;
        check(&claims(&fresh)?, &identity, clock)?;
        self.put_secret(&token_entry(tenant), fresh.as_bytes(), rng)?;
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FixedClock;
    use crate::keys::KdfParams;
    use rand_chacha::rand_core::SeedableRng;

    fn rng() -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(13)
    }

    #[test]
    fn a_token_verifies_until_it_expires_and_only_for_its_identity() {
        let mut r = rng();
        let issuer = TokenIssuer::new(Key::generate(&mut r), 1_000);
        let t = issuer.issue("id-a", "acme", &FixedClock(10_000), &mut r);
        assert_eq!(issuer.verify(&t, "id-a", &FixedClock(10_999)).unwrap().expires_unix_ms, 11_000);
        assert_eq!(issuer.verify(&t, "id-a", &FixedClock(11_000)).unwrap_err().code(), "keys:tokenExpired");
        assert_eq!(issuer.verify(&t, "id-b", &FixedClock(10_500)).unwrap_err().code(), "keys:tokenIdentityMismatch");
    }

    #[test]
    fn a_forged_or_malformed_token_is_invalid() {
        let mut r = rng();
        let issuer = TokenIssuer::new(Key::generate(&mut r), 1_000);
        let other = TokenIssuer::new(Key::generate(&mut r), 1_000_000);
        let forged = other.issue("id-a", "acme", &FixedClock(0), &mut r);
        assert_eq!(issuer.verify(&forged, "id-a", &FixedClock(0)).unwrap_err().code(), "keys:tokenInvalid");
        // Extending one's own expiry breaks the tag.
        let t = issuer.issue("id-a", "acme", &FixedClock(0), &mut r);
        let mut c = claims(&t).unwrap();
        c.expires_unix_ms = i64::MAX;
        let rest = t.split_once('.').unwrap().1;
        let stretched = format!("{}.{rest}", hex::encode(serde_json::to_vec(&c).unwrap()));
        assert_eq!(issuer.verify(&stretched, "id-a", &FixedClock(0)).unwrap_err().code(), "keys:tokenInvalid");
        assert_eq!(issuer.verify("garbage", "id-a", &FixedClock(0)).unwrap_err().code(), "keys:tokenInvalid");
    }

    #[test]
    fn reconnect_keeps_a_valid_token_and_refreshes_an_expired_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        let mut ks = KeyStore::create(dir.path().join("k.db").to_str().unwrap(), "p", KdfParams::sim(), &mut r).unwrap();
        let issuer = TokenIssuer::new(Key::generate(&mut r), 1_000);
        let me = ks.identity_id().to_string();
        let mut issued = 0;
        let mut r2 = rng();
        let mut refresh_at = |now: i64| {
            let t = issuer.issue(&me, "acme", &FixedClock(now), &mut r2);
            move || -> Result<String, KeyError> { Ok(t.clone()) }
        };
        let f = refresh_at(0);
        let t1 = ks.token_on_connect("acme", &FixedClock(0), &mut || { issued += 1; f() }, &mut r).unwrap();
        let f = refresh_at(500);
        let again = ks.token_on_connect("acme", &FixedClock(900), &mut || { issued += 1; f() }, &mut r).unwrap();
        assert_eq!((again.as_str(), issued), (t1.as_str(), 1), "a valid saved token is reused");
        let f = refresh_at(1_200);
        let t2 = ks.token_on_connect("acme", &FixedClock(1_200), &mut || { issued += 1; f() }, &mut r).unwrap();
        assert_ne!(t2, t1);
        assert_eq!(issued, 2);
        assert_eq!(ks.saved_token("acme").unwrap(), Some(t2));
    }

    #[test]
    fn reconnect_refuses_a_refreshed_token_that_is_expired_or_foreign() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        let mut ks = KeyStore::create(dir.path().join("k.db").to_str().unwrap(), "p", KdfParams::sim(), &mut r).unwrap();
        let issuer = TokenIssuer::new(Key::generate(&mut r), 1_000);
        // The device's clock runs far ahead of the issuer's: the new token is expired on arrival.
        let stale = issuer.issue(ks.identity_id(), "acme", &FixedClock(0), &mut r);
        let e = ks.token_on_connect("acme", &FixedClock(5_000), &mut || Ok(stale.clone()), &mut r).unwrap_err();
        assert_eq!(e.code(), "keys:tokenExpired");
        let foreign = issuer.issue("id-someone-else", "acme", &FixedClock(5_000), &mut r);
        let e = ks.token_on_connect("acme", &FixedClock(5_000), &mut || Ok(foreign.clone()), &mut r).unwrap_err();
        assert_eq!(e.code(), "keys:tokenIdentityMismatch");
        assert_eq!(ks.saved_token("acme").unwrap(), None, "a refused token is not saved");
    }
}

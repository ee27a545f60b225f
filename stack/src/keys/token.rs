//! Tokens (runbook 002, "Token Invalid or Expired"): bound to an identity, a replica and a
//! tenant, with an expiry read from a node's [`Clock`], refreshed on (re)connect and saved in
//! the key store.
//!
//! A token is `hex(claims JSON) . hex(nonce) . hex(tag)`: the claims are readable by the device
//! (it must know when its token expires), and the tag is an AEAD seal of nothing with the claims
//! as associated data under the issuer's key, so only the issuer can make one.
//!
//! How a device gets one: it asks with a proof — a seal under its *pairing key* over the tenant,
//! replica, identity and a fresh nonce ([`proof`]). The pairing key is what pairing hands the
//! device; the server derives the same key from its pairing secret ([`pairing_key`]), so it
//! keeps no table of devices.
//!
//! Whose clock decides: the server's. It refuses a request whose token its own clock finds
//! expired (`keys:tokenExpired`), forged or of another issuer — a server that restarted issues
//! under a new key, so every older token is `keys:tokenInvalid` — and the device then refreshes
//! once and retries. The device refreshes ahead of time too, but it judges expiry by the
//! server's time: each token answer carries the server's clock, and the device keeps the offset
//! to its own ([`TokenState`]). A device clock that jumps by more than a token's lifetime would
//! otherwise throw every fresh token away (running ahead) or keep sending stale ones (behind);
//! with the offset it does neither, and when its clock moves after a refresh the server's
//! refusal corrects it at the cost of one round trip.

use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::crypto::{self, Key, Nonce};

use super::keystore::KeyStore;
use super::KeyError;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub identity: String,
    pub replica: String,
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

/// Checks that a token's claims are bound to `identity`, `replica` and `tenant`.
pub fn check_binding(c: &Claims, identity: &str, replica: &str, tenant: &str) -> Result<(), KeyError> {
    if c.identity != identity || c.replica != replica {
        let token_identity = format!("{}@{}", c.identity, c.replica);
        return Err(KeyError::TokenIdentityMismatch { token_identity, identity: format!("{identity}@{replica}") });
    }
    if c.tenant != tenant {
        return Err(invalid(format!("token is for tenant {}, not {tenant}", c.tenant)));
    }
    Ok(())
}

/// Checks a token's expiry against `now_unix_ms`.
pub fn check_expiry(c: &Claims, now_unix_ms: i64) -> Result<(), KeyError> {
    if now_unix_ms >= c.expires_unix_ms {
        return Err(KeyError::TokenExpired { expires_unix_ms: c.expires_unix_ms, now_unix_ms });
    }
    Ok(())
}

/// The key pairing gives the device `replica` of `tenant`, derived from the server's pairing
/// secret (so the server can derive it again instead of storing it).
pub fn pairing_key(secret: &Key, tenant: &str, replica: &str) -> Key {
    let digest = Sha256::digest(crypto::framed(&[b"drill-pairing-v1", secret.as_bytes(), tenant.as_bytes(), replica.as_bytes()]));
    Key::from_bytes(digest.into())
}

fn proof_aad(tenant: &str, replica: &str, identity: &str) -> Vec<u8> {
    crypto::framed(&[b"drill-token-request-v1", tenant.as_bytes(), replica.as_bytes(), identity.as_bytes()])
}

/// A device's proof that it holds `pairing` for `replica` of `tenant`, asking a token for
/// `identity`.
pub fn proof(pairing: &Key, nonce: &Nonce, tenant: &str, replica: &str, identity: &str) -> Vec<u8> {
    crypto::seal(pairing, nonce, &proof_aad(tenant, replica, identity), b"")
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

    /// A token for `identity` as `replica` of `tenant`, valid from the clock's now for the
    /// issuer's TTL.
    pub fn issue(&self, identity: &str, replica: &str, tenant: &str, clock: &dyn Clock, rng: &mut dyn RngCore) -> String {
        let now = clock.now_unix_ms();
        let c = Claims { identity: identity.into(), replica: replica.into(), tenant: tenant.into(), issued_unix_ms: now, expires_unix_ms: now + self.ttl_ms };
        let claims_hex = hex::encode(serde_json::to_vec(&c).expect("claims serialize"));
        let nonce = crypto::nonce_from(rng);
        let tag = crypto::seal(&self.key, &nonce, &tag_aad(&claims_hex), b"");
        format!("{claims_hex}.{}.{}", hex::encode(nonce), hex::encode(tag))
    }

    /// Verifies a token's tag and its expiry by `clock`: a bad tag or shape (or another
    /// issuer's token) is `keys:tokenInvalid`, a past expiry `keys:tokenExpired`.
    pub fn verify(&self, token: &str, clock: &dyn Clock) -> Result<Claims, KeyError> {
        let parts: Vec<&str> = token.split('.').collect();
        let [claims_hex, nonce_hex, tag_hex] = parts[..] else { return Err(invalid("a token has three parts")) };
        let nonce = hex::decode(nonce_hex).ok().and_then(|n| crypto::nonce_from_slice(&n).ok()).ok_or_else(|| invalid("nonce"))?;
        let tag = hex::decode(tag_hex).map_err(|_| invalid("tag is not hex"))?;
        crypto::open(&self.key, &nonce, &tag_aad(claims_hex), &tag)
            .map_err(|_| invalid("tag does not verify (forged, or issued before the issuer's key changed)"))?;
        let c = claims(token)?;
        check_expiry(&c, clock.now_unix_ms())?;
        Ok(c)
    }
}

/// The server's token service: the issuer (its key changes at every server start, which makes
/// every older token invalid), the pairing secret, and the server's clock and randomness.
pub struct TokenAuth {
    issuer: TokenIssuer,
    pairing_secret: Key,
    clock: Box<dyn Clock + Send>,
    rng: Box<dyn RngCore + Send>,
}

impl TokenAuth {
    pub fn new(issuer: TokenIssuer, pairing_secret: Key, clock: Box<dyn Clock + Send>, rng: Box<dyn RngCore + Send>) -> TokenAuth {
        TokenAuth { issuer, pairing_secret, clock, rng }
    }

    /// Answers a token request: a token and the server's now, when the proof verifies under the
    /// pairing key of `replica` of `tenant`.
    pub fn issue(&mut self, tenant: &str, replica: &str, identity: &str, nonce: &[u8], proof: &[u8]) -> Result<(String, i64), KeyError> {
        let pairing = pairing_key(&self.pairing_secret, tenant, replica);
        let nonce = crypto::nonce_from_slice(nonce).map_err(|_| invalid("the token request's nonce is malformed"))?;
        crypto::open(&pairing, &nonce, &proof_aad(tenant, replica, identity), proof)
            .map_err(|_| invalid(format!("the token request of {replica} does not prove its pairing")))?;
        let token = self.issuer.issue(identity, replica, tenant, &*self.clock, &mut *self.rng);
        Ok((token, self.clock.now_unix_ms()))
    }

    /// Admits a request of `replica` carrying `token`, by the server's clock. The caller
    /// compares the claims' tenant with the request's: a live token of another tenant is an
    /// authorization question (`rbacDenied`), not a token one.
    pub fn admit(&self, token: Option<&str>, replica: &str) -> Result<Claims, KeyError> {
        let token = token.ok_or_else(|| invalid("the request carries no token"))?;
        let c = self.issuer.verify(token, &*self.clock)?;
        if c.replica != replica {
            return Err(KeyError::TokenIdentityMismatch { token_identity: format!("{}@{}", c.identity, c.replica), identity: replica.into() });
        }
        Ok(c)
    }
}

/// A device's token on one connection: the one the server issued it since the connection
/// opened (a reconnect always refreshes: the token saved in the key store is never reused), its
/// expiry, and the offset from the device's clock to the server's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenState {
    held: Option<(String, i64)>,
    offset_ms: i64,
    /// Refreshes and refusals on this connection.
    pub refreshes: u64,
    pub refusals: Vec<String>,
}

/// How long before its expiry (by the server's time) a device refreshes a token.
pub const REFRESH_MARGIN_MS: i64 = 1_000;

impl TokenState {
    /// The token requests go out with.
    pub fn token(&self) -> Option<&str> {
        self.held.as_ref().map(|(t, _)| t.as_str())
    }

    /// The offset from the device's clock to the server's, as of the last refresh.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms
    }

    /// Whether the device must ask for a token before its next request: none held on this
    /// connection, or expiring by the server's time as the device estimates it.
    pub fn needs_refresh(&self, local_now_unix_ms: i64) -> bool {
        self.held.as_ref().is_none_or(|(_, expires)| local_now_unix_ms + self.offset_ms + REFRESH_MARGIN_MS >= *expires)
    }

    /// Takes a fresh token from the server's answer, after checking it is bound to this device
    /// (runbook 002: the identity in the token's payload); a token bound to someone else is
    /// refused with its typed error and not kept.
    pub fn accept(&mut self, token: String, server_unix_ms: i64, local_now_unix_ms: i64, identity: &str, replica: &str, tenant: &str) -> Result<(), KeyError> {
        let c = claims(&token)?;
        check_binding(&c, identity, replica, tenant)?;
        self.offset_ms = server_unix_ms - local_now_unix_ms;
        self.held = Some((token, c.expires_unix_ms));
        self.refreshes += 1;
        Ok(())
    }

    /// The server refused the held token (`code`): it is dropped, and the next request refreshes.
    pub fn refused(&mut self, code: &str) {
        self.refusals.push(code.to_string());
        self.held = None;
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

    /// Saves (wrapped) the token of `tenant`, replacing the old one.
    pub fn save_token(&mut self, tenant: &str, token: &str, rng: &mut dyn RngCore) -> Result<(), KeyError> {
        self.put_secret(&token_entry(tenant), token.as_bytes(), rng)
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
    fn a_token_verifies_until_it_expires_and_carries_its_binding() {
        let mut r = rng();
        let issuer = TokenIssuer::new(Key::generate(&mut r), 1_000);
        let t = issuer.issue("id-a", "dev-1", "acme", &FixedClock(10_000), &mut r);
        let c = issuer.verify(&t, &FixedClock(10_999)).unwrap();
        assert_eq!((c.expires_unix_ms, c.identity.as_str(), c.replica.as_str()), (11_000, "id-a", "dev-1"));
        assert_eq!(issuer.verify(&t, &FixedClock(11_000)).unwrap_err().code(), "keys:tokenExpired");
        assert!(check_binding(&c, "id-a", "dev-1", "acme").is_ok());
        assert_eq!(check_binding(&c, "id-b", "dev-1", "acme").unwrap_err().code(), "keys:tokenIdentityMismatch");
        assert_eq!(check_binding(&c, "id-a", "dev-2", "acme").unwrap_err().code(), "keys:tokenIdentityMismatch");
        assert_eq!(check_binding(&c, "id-a", "dev-1", "globex").unwrap_err().code(), "keys:tokenInvalid");
    }

    #[test]
    fn a_forged_or_malformed_token_is_invalid() {
        let mut r = rng();
        let issuer = TokenIssuer::new(Key::generate(&mut r), 1_000);
        let other = TokenIssuer::new(Key::generate(&mut r), 1_000_000);
        let forged = other.issue("id-a", "dev-1", "acme", &FixedClock(0), &mut r);
        assert_eq!(issuer.verify(&forged, &FixedClock(0)).unwrap_err().code(), "keys:tokenInvalid");
        // Extending one's own expiry breaks the tag.
        let t = issuer.issue("id-a", "dev-1", "acme", &FixedClock(0), &mut r);
        let mut c = claims(&t).unwrap();
        c.expires_unix_ms = i64::MAX;
        let rest = t.split_once('.').unwrap().1;
        let stretched = format!("{}.{rest}", hex::encode(serde_json::to_vec(&c).unwrap()));
        assert_eq!(issuer.verify(&stretched, &FixedClock(0)).unwrap_err().code(), "keys:tokenInvalid");
        assert_eq!(issuer.verify("garbage", &FixedClock(0)).unwrap_err().code(), "keys:tokenInvalid");
    }

    fn auth(secret: &Key, issuer_key: Key, now: i64) -> TokenAuth {
        TokenAuth::new(TokenIssuer::new(issuer_key, 1_000), secret.clone(), Box::new(FixedClock(now)), Box::new(rng()))
    }

    #[test]
    fn the_server_issues_only_to_a_proven_pairing_and_admits_only_its_own_live_tokens() {
        let mut r = rng();
        let secret = Key::generate(&mut r);
        let issuer_key = Key::generate(&mut r);
        let mut server = auth(&secret, issuer_key.clone(), 5_000);
        let pairing = pairing_key(&secret, "acme", "dev-1");
        let nonce = crypto::nonce_from(&mut r);
        let p = proof(&pairing, &nonce, "acme", "dev-1", "id-a");
        let (t, now) = server.issue("acme", "dev-1", "id-a", &nonce, &p).unwrap();
        assert_eq!(now, 5_000);
        let c = server.admit(Some(&t), "dev-1").unwrap();
        assert_eq!((c.identity.as_str(), c.tenant.as_str()), ("id-a", "acme"));
        // Another replica, no token, a proof for another replica or identity.
        assert_eq!(server.admit(Some(&t), "dev-2").unwrap_err().code(), "keys:tokenIdentityMismatch");
        assert_eq!(server.admit(None, "dev-1").unwrap_err().code(), "keys:tokenInvalid");
        assert_eq!(server.issue("acme", "dev-2", "id-a", &nonce, &p).unwrap_err().code(), "keys:tokenInvalid");
        assert_eq!(server.issue("acme", "dev-1", "id-b", &nonce, &p).unwrap_err().code(), "keys:tokenInvalid");
        let wrong = proof(&pairing_key(&Key::generate(&mut r), "acme", "dev-1"), &nonce, "acme", "dev-1", "id-a");
        assert_eq!(server.issue("acme", "dev-1", "id-a", &nonce, &wrong).unwrap_err().code(), "keys:tokenInvalid");
        // Expired by the server's clock; and a restarted server (new issuer key) invalidates it.
        assert_eq!(auth(&secret, issuer_key, 6_000).admit(Some(&t), "dev-1").unwrap_err().code(), "keys:tokenExpired");
        assert_eq!(auth(&secret, Key::generate(&mut r), 5_000).admit(Some(&t), "dev-1").unwrap_err().code(), "keys:tokenInvalid");
    }

    #[test]
    fn a_device_judges_expiry_by_the_servers_time_and_refreshes_on_reconnect() {
        let mut r = rng();
        let issuer = TokenIssuer::new(Key::generate(&mut r), 10_000);
        let t = issuer.issue("id-a", "dev-1", "acme", &FixedClock(100_000), &mut r);
        let mut s = TokenState::default();
        assert!(s.needs_refresh(100_000), "a new connection refreshes first");
        // The device's clock runs an hour ahead of the server's: the fresh token is not
        // thrown away, and it is refreshed just before the server would refuse it.
        let ahead = 100_000 + 3_600_000;
        s.accept(t.clone(), 100_000, ahead, "id-a", "dev-1", "acme").unwrap();
        assert_eq!(s.offset_ms(), -3_600_000);
        assert!(!s.needs_refresh(ahead + 8_000));
        assert!(s.needs_refresh(ahead + 9_500));
        // Behind by an hour: the same.
        let mut s = TokenState::default();
        s.accept(t.clone(), 100_000, 100_000 - 3_600_000, "id-a", "dev-1", "acme").unwrap();
        assert!(!s.needs_refresh(100_000 - 3_600_000 + 8_000));
        assert!(s.needs_refresh(100_000 - 3_600_000 + 9_500));
        // A refusal drops the token.
        s.refused("keys:tokenInvalid");
        assert!(s.token().is_none() && s.needs_refresh(0));
        assert_eq!(s.refusals, vec!["keys:tokenInvalid".to_string()]);
        // A token bound to someone else is refused and not kept.
        let mut s = TokenState::default();
        assert_eq!(s.accept(t, 100_000, 100_000, "id-b", "dev-1", "acme").unwrap_err().code(), "keys:tokenIdentityMismatch");
        assert!(s.token().is_none());
    }

    #[test]
    fn the_key_store_keeps_the_refreshed_token_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        let path = dir.path().join("k.db");
        let mut ks = KeyStore::create(path.to_str().unwrap(), "p", KdfParams::sim(), &mut r).unwrap();
        assert_eq!(ks.saved_token("acme").unwrap(), None);
        let t2 = "second-token-with-claims-long-enough-to-find";
        ks.save_token("acme", "first-token", &mut r).unwrap();
        ks.save_token("acme", t2, &mut r).unwrap();
        assert_eq!(ks.saved_token("acme").unwrap().as_deref(), Some(t2));
        drop(ks);
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let raw = std::fs::read(f.unwrap().path()).unwrap();
            assert!(!raw.windows(t2.len()).any(|w| w == t2.as_bytes()), "the token is stored wrapped");
        }
    }
}

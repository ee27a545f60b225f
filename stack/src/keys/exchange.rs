//! Key exchange on the wire (runbook 002, "Missing Group Key" and "Vault Key Unavailable"): a
//! member that lacks an epoch of its group's key, or the vault key, asks a peer for it with a
//! protocol message ([`crate::proto::Request::Keys`]) and never reads another node's key store.
//!
//! - **Group keys.** A member names the newest epoch it holds; the peer (the room's authority,
//!   or any member holding newer epochs) answers with every newer epoch's key sealed under that
//!   epoch's key, bound to the group, both epochs and the requester's identity. Only a member
//!   that already holds the epoch it named can open the answer, so the request itself needs no
//!   other proof.
//! - **Vault shares.** A member whose initialized vault key is gone asks its peers in turn for
//!   a share ([`super::vault::VaultShare`]: the vault key sealed under a group epoch's key for
//!   the requester's identity) and recovers from the first one that opens; a peer without the
//!   vault key, or one that does not answer, sends it on to the next.
//!
//! Every request is bounded: a peer that is down or cut off lets the request time out (the
//! exchange's own timeout), the request is sent again after an exponential backoff up to the
//! policy's attempts, and then fails with `keys:keyRequestTimedOut`. A refusal is answered at
//! once with `keys:keyRequestRefused` naming the peer's own code, since asking the same peer
//! again cannot change it. The peer's side is [`handle`], which answers from its own key store.

use rand_core::RngCore;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::blobs::object::RetryPolicy;
use crate::crypto::{self, Key};
use crate::error::SyncError;
use crate::proto::{Request, Response};
use crate::rpc::Exchange;

use super::keystore::KeyStore;
use super::vault::VaultShare;
use super::KeyError;

/// The port a member's key service listens on.
pub const KEYS_PORT: u16 = 7100;

/// How key requests are retried when their peer does not answer: a few attempts, a short wait.
pub const KEY_RETRY: RetryPolicy = RetryPolicy { attempts_max: 3, backoff_ms_base: 100, backoff_ms_max: 800 };

/// A request one member sends another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "key_op", rename_all = "snake_case")]
pub enum KeyRequest {
    /// Every epoch key of `group` after `have_epoch`, for `requester`, sealed under the key of
    /// `have_epoch`.
    GroupKeys { group: String, requester: String, have_epoch: u64 },
    /// The vault key, wrapped for `requester` under `group`'s key of `epoch`.
    VaultShare { group: String, requester: String, epoch: u64 },
}

impl KeyRequest {
    /// The request's name in errors and traces.
    pub fn name(&self) -> String {
        match self {
            KeyRequest::GroupKeys { group, have_epoch, .. } => format!("groupKeys({group} after epoch {have_epoch})"),
            KeyRequest::VaultShare { group, epoch, .. } => format!("vaultShare({group} epoch {epoch})"),
        }
    }
}

/// One epoch's key, sealed for one requester.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedEpochKey {
    pub epoch: u64,
    pub nonce: String,
    pub sealed: String,
}

/// A peer's answer to a [`KeyRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "key_op", rename_all = "snake_case")]
pub enum KeyAnswer {
    /// The epochs after the one the request named (none when the requester is up to date).
    GroupKeys {
        group: String,
        wrapped_under: u64,
        keys: Vec<WrappedEpochKey>,
    },
    VaultShare {
        share: VaultShare,
    },
}

fn epoch_aad(group: &str, under: u64, epoch: u64, requester: &str) -> Vec<u8> {
    crypto::framed(&[b"drill-epoch-key-v1", group.as_bytes(), &under.to_le_bytes(), &epoch.to_le_bytes(), requester.as_bytes()])
}

fn refusal(e: &KeyError) -> Response {
    Response::error(e.code(), e.to_string())
}

/// A member's key service: answers a key request from `ks` (which must be unlocked), and
/// refuses anything else. What [`crate::rpc::serve`] runs on [`KEYS_PORT`].
pub fn handle(ks: &KeyStore, req: Request, rng: &mut dyn RngCore) -> Response {
    match req {
        Request::Keys(k) => match answer(ks, &k, rng) {
            Ok(a) => Response::Keys(a),
            Err(e) => refusal(&e),
        },
        _ => Response::error("keys:notASyncServer", "a member's key service answers key requests only"),
    }
}

/// The answer `ks` gives to `req`: `keys:groupEpochUnknown` when it does not hold the epoch
/// the request names, the vault's own codes when it has no vault key to share.
pub fn answer(ks: &KeyStore, req: &KeyRequest, rng: &mut dyn RngCore) -> Result<KeyAnswer, KeyError> {
    match req {
        KeyRequest::GroupKeys { group, requester, have_epoch } => {
            let held = ks.group_keys(group)?;
            let under = held.get(have_epoch).ok_or_else(|| KeyError::GroupEpochUnknown { group: group.clone(), epoch: Some(*have_epoch) })?;
            let keys = held
                .range(have_epoch + 1..)
                .map(|(&epoch, key)| {
                    let nonce = crypto::nonce_from(rng);
                    let sealed = crypto::seal(under, &nonce, &epoch_aad(group, *have_epoch, epoch, requester), key.as_bytes());
                    WrappedEpochKey { epoch, nonce: hex::encode(nonce), sealed: hex::encode(sealed) }
                })
                .collect();
            Ok(KeyAnswer::GroupKeys { group: group.clone(), wrapped_under: *have_epoch, keys })
        }
        KeyRequest::VaultShare { group, requester, epoch } => {
            let held = ks.group_keys(group)?;
            let key = held.get(epoch).ok_or_else(|| KeyError::GroupEpochUnknown { group: group.clone(), epoch: Some(*epoch) })?;
            Ok(KeyAnswer::VaultShare { share: ks.vault_share(group, *epoch, key, requester, rng)? })
        }
    }
}

/// Sends `req` to `peer` until it answers, retrying a peer that does not answer after the
/// policy's backoff; returns the answer and the attempts it took.
async fn ask(peer: &mut impl Exchange, req: &KeyRequest, policy: &RetryPolicy) -> Result<(KeyAnswer, u32), KeyError> {
    let attempts_max = policy.attempts_max.max(1);
    let wire = Request::Keys(req.clone());
    let mut attempt = 1;
    loop {
        match peer.call(&wire).await {
            Ok(Response::Keys(a)) => return Ok((a, attempt)),
            Ok(Response::Error { code, message, .. }) => return Err(KeyError::KeyRequestRefused { request: req.name(), detail: format!("{code}: {message}") }),
            Ok(other) => return Err(KeyError::KeyAnswerInvalid { detail: format!("{} got {other:?}", req.name()) }),
            Err(SyncError::Transport { detail }) if attempt >= attempts_max => {
                return Err(KeyError::KeyRequestTimedOut { request: req.name(), attempts: attempt, detail });
            }
            Err(SyncError::Transport { .. }) => {
                madsim::time::sleep(std::time::Duration::from_millis(policy.backoff_ms(attempt))).await;
                attempt += 1;
            }
            Err(e) => return Err(KeyError::KeyRequestRefused { request: req.name(), detail: e.to_string() }),
        }
    }
}

/// What a group key request brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupKeysFetched {
    /// The epochs received, oldest first, with their keys (already stored in the key store):
    /// hand each to [`super::group::GroupSession::add_epoch_key`] to replay what waited for it.
    pub epochs: Vec<(u64, Key)>,
    /// Attempts the request took (more than one when the peer did not answer at first).
    pub attempts: u32,
}

/// Asks `peer` for the epoch keys of `group` newer than the newest one `ks` holds, opens them
/// and stores them. A member holding no epoch of the group is `keys:groupEpochUnknown` (it
/// must pair again); a peer that never answers is `keys:keyRequestTimedOut`.
pub async fn request_group_keys(
    peer: &mut impl Exchange,
    ks: &mut KeyStore,
    group: &str,
    policy: &RetryPolicy,
    rng: &mut (dyn RngCore + Send),
) -> Result<GroupKeysFetched, KeyError> {
    let held = ks.group_keys(group)?;
    let (&have_epoch, under) = held.iter().next_back().ok_or_else(|| KeyError::GroupEpochUnknown { group: group.into(), epoch: None })?;
    let requester = ks.identity_id().to_string();
    let req = KeyRequest::GroupKeys { group: group.into(), requester: requester.clone(), have_epoch };
    let (answer, attempts) = ask(peer, &req, policy).await?;
    let epochs = open_group_keys(&answer, group, have_epoch, under, &requester)?;
    for (epoch, key) in &epochs {
        ks.put_group_key(group, *epoch, key, rng)?;
    }
    Ok(GroupKeysFetched { epochs, attempts })
}

/// Opens a group key answer to a request for the epochs of `group` after `have_epoch`, made by
/// `requester`; anything else, or a key that does not open, is `keys:keyAnswerInvalid`.
fn open_group_keys(answer: &KeyAnswer, group: &str, have_epoch: u64, under: &Key, requester: &str) -> Result<Vec<(u64, Key)>, KeyError> {
    let invalid = |detail: String| KeyError::KeyAnswerInvalid { detail };
    let KeyAnswer::GroupKeys { group: g, wrapped_under, keys } = answer else {
        return Err(invalid(format!("a group key request got {answer:?}")));
    };
    if g != group || *wrapped_under != have_epoch {
        return Err(invalid(format!("asked for {group} after epoch {have_epoch}, got {g} after epoch {wrapped_under}")));
    }
    let mut out: Vec<(u64, Key)> = Vec::new();
    for w in keys {
        if w.epoch <= out.last().map_or(have_epoch, |(e, _)| *e) {
            return Err(invalid(format!("epoch {} out of order after epoch {have_epoch}", w.epoch)));
        }
        let nonce = hex::decode(&w.nonce).ok().and_then(|n| crypto::nonce_from_slice(&n).ok()).ok_or_else(|| invalid(format!("epoch {} nonce", w.epoch)))?;
        let sealed = hex::decode(&w.sealed).map_err(|_| invalid(format!("epoch {} key", w.epoch)))?;
        let plain = crypto::open(under, &nonce, &epoch_aad(group, have_epoch, w.epoch, requester), &sealed)
            .map_err(|_| invalid(format!("epoch {} of {group} does not open under epoch {have_epoch}", w.epoch)))?;
        let bytes: [u8; crypto::KEY_BYTES] = plain.try_into().map_err(|_| invalid(format!("epoch {} key length", w.epoch)))?;
        out.push((w.epoch, Key::from_bytes(bytes)));
    }
    Ok(out)
}

/// What a vault share request brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultRecovered {
    /// The index of the peer whose share opened (none when the vault key was still here).
    pub from: Option<usize>,
    /// Why each peer asked before it gave none, in the order asked.
    pub refused: Vec<(usize, String)>,
}

/// Gets the vault key from peers (a member's first one, or the initialized one `ks` lost): asks
/// each in turn for a share under the newest epoch of `group` that `ks` holds, and recovers from the first share
/// that opens ([`KeyStore::recover_vault_key`]). A vault key `ks` still has is not asked for.
/// Never generates one: when no peer gives a share it is `keys:vaultShareUnavailable`, and the
/// vault stays missing.
pub async fn request_vault_share<E: Exchange>(
    peers: &mut [E],
    ks: &mut KeyStore,
    db: &mut Connection,
    group: &str,
    policy: &RetryPolicy,
    rng: &mut (dyn RngCore + Send),
) -> Result<VaultRecovered, KeyError> {
    match ks.vault_key() {
        // Lost after it was initialized, or a member's first vault key: both come from a peer.
        Err(KeyError::VaultKeyMissing | KeyError::VaultKeyUninitialized) => {}
        Ok(_) => return Ok(VaultRecovered { from: None, refused: Vec::new() }),
        Err(e) => return Err(e),
    }
    let held = ks.group_keys(group)?;
    let (&epoch, group_key) = held.iter().next_back().ok_or_else(|| KeyError::GroupEpochUnknown { group: group.into(), epoch: None })?;
    let req = KeyRequest::VaultShare { group: group.into(), requester: ks.identity_id().to_string(), epoch };
    let mut refused = Vec::new();
    for (i, peer) in peers.iter_mut().enumerate() {
        let got = match ask(peer, &req, policy).await {
            Ok((KeyAnswer::VaultShare { share }, _)) => ks.recover_vault_key(db, &share, group_key, rng),
            Ok((other, _)) => Err(KeyError::KeyAnswerInvalid { detail: format!("a vault share request got {other:?}") }),
            Err(e) => Err(e),
        };
        match got {
            Ok(_) => return Ok(VaultRecovered { from: Some(i), refused }),
            // The store refuses to write (READ_ONLY, a failing disk): no other peer changes that.
            Err(e @ KeyError::Store(_)) => return Err(e),
            Err(e) => refused.push((i, e.to_string())),
        }
    }
    let detail = refused.iter().map(|(i, e)| format!("peer {i}: {e}")).collect::<Vec<_>>().join("; ");
    Err(KeyError::VaultShareUnavailable { asked: peers.len(), detail })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KdfParams;
    use rand_chacha::rand_core::SeedableRng;

    fn rng() -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(11)
    }

    fn store(dir: &tempfile::TempDir, name: &str, r: &mut rand_chacha::ChaCha8Rng) -> KeyStore {
        KeyStore::create(dir.path().join(name).to_str().unwrap(), "p", KdfParams::sim(), r).unwrap()
    }

    #[test]
    fn an_answer_opens_only_for_the_requester_that_holds_the_named_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        let mut authority = store(&dir, "a.db", &mut r);
        let keys: Vec<Key> = (0..3).map(|_| Key::generate(&mut r)).collect();
        for (i, k) in keys.iter().enumerate() {
            authority.put_group_key("room", i as u64 + 1, k, &mut r).unwrap();
        }
        let req = KeyRequest::GroupKeys { group: "room".into(), requester: "id-m".into(), have_epoch: 1 };
        let a = answer(&authority, &req, &mut r).unwrap();
        let opened = open_group_keys(&a, "room", 1, &keys[0], "id-m").unwrap();
        assert_eq!(opened, vec![(2, keys[1].clone()), (3, keys[2].clone())]);
        // Another requester, or a member that does not hold epoch 1, cannot open it.
        assert_eq!(open_group_keys(&a, "room", 1, &keys[0], "id-x").unwrap_err().code(), "keys:keyAnswerInvalid");
        assert_eq!(open_group_keys(&a, "room", 1, &keys[2], "id-m").unwrap_err().code(), "keys:keyAnswerInvalid");
        // An answer to another request is refused.
        assert_eq!(open_group_keys(&a, "room", 2, &keys[1], "id-m").unwrap_err().code(), "keys:keyAnswerInvalid");
        // A member up to date gets nothing new; an epoch the peer does not hold is refused.
        let up_to_date = answer(&authority, &KeyRequest::GroupKeys { group: "room".into(), requester: "id-m".into(), have_epoch: 3 }, &mut r).unwrap();
        assert!(open_group_keys(&up_to_date, "room", 3, &keys[2], "id-m").unwrap().is_empty());
        let unknown = answer(&authority, &KeyRequest::GroupKeys { group: "room".into(), requester: "id-m".into(), have_epoch: 9 }, &mut r);
        assert_eq!(unknown.unwrap_err().code(), "keys:groupEpochUnknown");
    }

    #[test]
    fn the_key_service_answers_key_requests_only_and_refusals_carry_their_code() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        let mut peer = store(&dir, "p.db", &mut r);
        peer.put_group_key("room", 1, &Key::generate(&mut r), &mut r).unwrap();
        let pull = Request::Pull { tenant: "t".into(), replica: "r".into(), since: 0, limit: 1, head: None };
        assert!(matches!(handle(&peer, pull, &mut r), Response::Error { code, .. } if code == "keys:notASyncServer"));
        let share = Request::Keys(KeyRequest::VaultShare { group: "room".into(), requester: "id-m".into(), epoch: 1 });
        assert!(matches!(handle(&peer, share, &mut r), Response::Error { code, .. } if code == "keys:vaultKeyUninitialized"));
        peer.lock();
        let keys = Request::Keys(KeyRequest::GroupKeys { group: "room".into(), requester: "id-m".into(), have_epoch: 1 });
        assert!(matches!(handle(&peer, keys, &mut r), Response::Error { code, .. } if code == "keys:locked"));
    }

    #[test]
    fn requests_and_answers_round_trip_on_the_wire() {
        let mut r = rng();
        let req = Request::Keys(KeyRequest::GroupKeys { group: "room".into(), requester: "id-m".into(), have_epoch: 4 });
        let bytes = crate::proto::encode(crate::proto::PROTOCOL_VERSION, 3, &req);
        assert_eq!(crate::proto::decode::<Request>(&bytes).unwrap().body, req);
        let nonce = hex::encode(crypto::nonce_from(&mut r));
        let resp = Response::Keys(KeyAnswer::GroupKeys {
            group: "room".into(),
            wrapped_under: 4,
            keys: vec![WrappedEpochKey { epoch: 5, nonce, sealed: "00".into() }],
        });
        let bytes = crate::proto::encode(crate::proto::PROTOCOL_VERSION, 3, &resp);
        assert_eq!(crate::proto::decode::<Response>(&bytes).unwrap().body, resp);
    }
}

//! Tokens in the world (runbook 002, "Token Invalid or Expired"): the server requires a live
//! token with every push and pull, issues tokens to devices that prove their pairing, and
//! judges expiry by its own node clock — which the clock faults jump and drift, as they do the
//! devices' clocks. Its issuer key is new at every server start, so a server crash makes every
//! token out there invalid; devices meet the refusal, refresh and retry.
//!
//! Pairing hands each device the key derived from the world's pairing secret for its tenant and
//! replica; the device keeps it in memory only (the end-of-run disk scan looks for it), and its
//! tokens are saved wrapped in its key store.

use std::sync::Mutex;

use drill_sim::rng::SeedTree;
use drill_stack::crypto::Key;
use drill_stack::keys::token::{self, TokenAuth, TokenIssuer};

use crate::node::{lock, NodeClock};

/// How long a token lives, in milliseconds of the issuing server's clock: longer than a run
/// without faults, shorter than the largest clock jumps of the swarm profile.
pub const TOKEN_TTL_MS: i64 = 300_000;

/// The world's token service configuration.
pub struct Tokens {
    secret: Key,
    seeds: SeedTree,
    starts: Mutex<u64>,
}

impl Tokens {
    /// The token service of the run of `seed`.
    pub fn new(seed: u64) -> Tokens {
        let seeds = SeedTree::new(seed).child("tokens");
        let secret = Key::generate(&mut seeds.stream("pairing-secret"));
        Tokens { secret, seeds, starts: Mutex::new(0) }
    }

    /// The key pairing hands `replica` of `tenant`.
    pub fn pairing(&self, tenant: &str, replica: &str) -> Key {
        token::pairing_key(&self.secret, tenant, replica)
    }

    /// The server's token service for its next start on `node`: a new issuer key each start.
    pub fn service(&self, node: madsim::task::NodeId) -> TokenAuth {
        let start = {
            let mut s = lock(&self.starts);
            *s += 1;
            *s
        };
        let streams = self.seeds.child(&format!("server/start-{start}"));
        let issuer = TokenIssuer::new(Key::generate(&mut streams.stream("issuer")), TOKEN_TTL_MS);
        TokenAuth::new(issuer, self.secret.clone(), Box::new(NodeClock(node)), Box::new(streams.stream("tokens")))
    }

    /// Secrets no disk image may hold: the pairing secret and every device's pairing key.
    pub fn secrets<'a>(&self, devices: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<drill_model::secrets::Secret> {
        use drill_model::secrets::Secret;
        let mut out = Secret::key("pairing secret".to_string(), self.secret.as_bytes());
        for (tenant, replica) in devices {
            out.extend(Secret::key(format!("pairing key of {replica}"), self.pairing(tenant, replica).as_bytes()));
        }
        out
    }
}

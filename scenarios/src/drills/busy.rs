//! The busy world a drill runs in under `--profile swarm`: the same world as under `none` (the
//! server, the drill's devices), plus a bystander device of a tenant of its own that keeps
//! writing and syncing through the same server, and the plan's background faults (partitions and
//! clock faults) applied at their times while the drill's body injects its failure and the stack
//! recovers. The body begins at the plan's `busy.start_ms`, a random moment of that world.
//!
//! The bystander's writes are judged too: when the body is done, every write the server
//! acknowledged to the bystander is still on the server (INV-DURABLE) — a drill that restores the
//! server from its backup and archive must bring them back as well; under a retention only the
//! oldest may have been compacted ([`lost_writes`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drill_sim::faults::Scheduled;
use drill_sim::rng::SeedTree;
use drill_sim::trace;
use drill_sim::world::{fault_steps, FaultStep, Nodes};
use drill_stack::client::{Client, DeviceKeys, Ring};
use drill_stack::crypto::Key;
use drill_stack::proto::SERVER_PORT;
use drill_stack::rpc::RpcClient;
use madsim::time::Instant;
use serde_json::json;

use crate::node::{lock, payload_for, NodeClock, DEVICE_DB, RPC_TIMEOUT_MS, SERVER_IP};

/// The bystander device's node.
pub const BYSTANDER: &str = "bystander";
/// Its tenant: none of the drill's devices belongs to it.
pub const BYSTANDER_TENANT: &str = "initech";
/// Its address.
pub use crate::node::BYSTANDER_IP;
/// The aggregate it writes to.
const BYSTANDER_AGGREGATE: &str = "note-1";

/// A drill's busy world while it runs: what the bystander saw, and the background faults that
/// happened, by kind.
pub struct BusyWorld {
    pub bystander: Arc<Mutex<Bystander>>,
    pub faults: Arc<Mutex<BTreeMap<String, u64>>>,
}

/// What the bystander saw acknowledged, for the judgement after the body.
#[derive(Default)]
pub struct Bystander {
    /// Op ids of its writes the server acknowledged.
    pub acknowledged: Vec<String>,
    pub syncs_ok: u64,
    pub syncs_failed: u64,
}

/// The bystander's process: opens its database (its tenant's keys in `ring`), then at each of
/// `times` (ms since the world started) appends one event and makes one sync attempt. Errors
/// are traced and left: the bystander is load, and its next sync tries again.
pub async fn bystander_main(start: Instant, times: Vec<u64>, pairing: Key, ring: BTreeMap<String, Key>, seeds: SeedTree, seen: Arc<Mutex<Bystander>>) {
    let node = madsim::plugin::node();
    let keys = DeviceKeys::new(Ring::Fixed(ring), Box::new(seeds.stream("nonces/bystander")));
    let mut client = match Client::open(DEVICE_DB, BYSTANDER, BYSTANDER_TENANT, Box::new(NodeClock(node)), keys) {
        Ok(c) => c,
        Err(e) => {
            trace::emit(BYSTANDER, "node.open_failed", json!({"message": e.to_string()}));
            return;
        }
    };
    client.set_pairing(pairing);
    let server = SocketAddr::new(SERVER_IP, SERVER_PORT);
    let mut rpc = match RpcClient::bind(server, client.boots(), Duration::from_millis(RPC_TIMEOUT_MS)).await {
        Ok(r) => r,
        Err(e) => {
            trace::emit(BYSTANDER, "node.bind_failed", json!({"message": e.to_string()}));
            return;
        }
    };
    for (n, t) in times.into_iter().enumerate() {
        madsim::time::sleep_until(start + Duration::from_millis(t)).await;
        if let Err(e) = client.append(BYSTANDER_AGGREGATE, "created", &payload_for(BYSTANDER, n as u64, 48)) {
            trace::emit(BYSTANDER, "op.err", json!({"op": n, "action": "append", "message": e.to_string()}));
            continue;
        }
        match client.sync(&mut rpc).await {
            Ok(r) => {
                trace::emit(BYSTANDER, "op.ok", json!({"op": n, "pulled": r.pulled, "pushed": r.pushed.len(), "settled": r.settled}));
                let mut s = lock(&seen);
                s.syncs_ok += 1;
                s.acknowledged.extend(r.pushed.iter().cloned());
            }
            Err(e) => {
                trace::emit(BYSTANDER, "op.err", json!({"op": n, "action": "sync", "signature": e.signature()}));
                lock(&seen).syncs_failed += 1;
            }
        }
    }
}

/// The background faults: each step at its time, on the world's nodes (which the drill shares),
/// counted into `counts`.
pub async fn background(start: Instant, faults: Vec<Scheduled>, nodes: Arc<Mutex<Nodes>>, counts: Arc<Mutex<BTreeMap<String, u64>>>) {
    for (t, step) in fault_steps(&faults) {
        madsim::time::sleep_until(start + Duration::from_millis(t)).await;
        if let FaultStep::Inject(f) = &step {
            *lock(&counts).entry(f.kind().to_string()).or_default() += 1;
        }
        lock(&nodes).apply(&step);
    }
}

/// Of the writes the server acknowledged to the bystander (in the order it acknowledged them),
/// those `stored` (the op ids on the server) lacks: how many of the first were compacted under a
/// `retention` (all of them up to the first one still stored), and the lost ones after those.
pub fn lost_writes<'a>(acknowledged: &'a [String], stored: &BTreeSet<String>, retention: bool) -> (usize, Vec<&'a String>) {
    let compacted = if retention { acknowledged.iter().take_while(|op| !stored.contains(*op)).count() } else { 0 };
    (compacted, acknowledged[compacted..].iter().filter(|op| !stored.contains(*op)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_missing_after_a_stored_one_is_lost_even_under_a_retention() {
        let acked: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let stored = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<BTreeSet<String>>();
        assert_eq!(lost_writes(&acked, &stored(&["a", "b", "c", "d"]), false), (0, vec![]));
        assert_eq!(lost_writes(&acked, &stored(&["c", "d"]), true), (2, vec![]), "the oldest compacted");
        assert_eq!(lost_writes(&acked, &stored(&["c", "d"]), false).1, [&acked[0], &acked[1]], "no retention: nothing may go");
        assert_eq!(lost_writes(&acked, &stored(&["b", "d"]), true), (1, vec![&acked[2]]), "a gap after a stored write");
        assert_eq!(lost_writes(&acked, &stored(&[]), true), (4, vec![]), "all compacted");
    }
}

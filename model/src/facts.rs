//! What the world tells the model: facts from the history, and snapshots of stored state.

use serde::{Deserialize, Serialize};

/// One stored event, as a node holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFact {
    pub seq: u64,
    pub op_id: String,
    pub tenant: String,
    pub kind: String,
    pub replica: String,
    pub write_id: u64,
    /// The plaintext the world opened the stored payload to: the model knows writes by it.
    pub payload: Vec<u8>,
    /// The payload as the node stores it (a sealed envelope), which the hash chain covers.
    pub stored: Vec<u8>,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

/// One pending write in a device's outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxFact {
    pub write_id: u64,
    pub op_id: String,
    /// The plaintext of the pending write.
    pub payload: Vec<u8>,
    /// Hex SHA-256 of the payload as stored and pushed (the sealed envelope): what the server's
    /// tombstones record once it compacts the write.
    pub stored_sha256: String,
}

/// A device's stored state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSnapshot {
    pub node: String,
    pub replica: String,
    pub tenant: String,
    pub outbox: Vec<OutboxFact>,
    pub events: Vec<EventFact>,
    /// Where the device's chain starts after a full resync past compacted history: (seq, hash).
    #[serde(default)]
    pub anchor: Option<(u64, Vec<u8>)>,
}

/// A write the server compacted away, as its tombstone records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrunedFact {
    pub tenant: String,
    pub replica: String,
    pub op_id: String,
    pub seq: u64,
    /// Hex SHA-256 of the payload as the server stored it (the sealed envelope).
    pub payload_sha256: String,
}

/// The server's stored state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSnapshot {
    pub node: String,
    pub events: Vec<EventFact>,
    /// Compacted writes.
    #[serde(default)]
    pub pruned: Vec<PrunedFact>,
    /// Every anchor the chains ever had: (tenant, seq, hash), oldest first.
    #[serde(default)]
    pub anchors: Vec<(String, u64, Vec<u8>)>,
}

impl ServerSnapshot {
    /// The latest anchor of `tenant`: where its stored chain starts.
    pub fn anchor(&self, tenant: &str) -> Option<(u64, &[u8])> {
        self.anchors.iter().filter(|(t, _, _)| t == tenant).max_by_key(|(_, s, _)| *s).map(|(_, s, h)| (*s, h.as_slice()))
    }
}

/// Hex SHA-256 of a payload, as tombstones record it.
pub fn sha256_hex(payload: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(payload))
}

/// Facts from the history, in trace order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    /// A device was registered: its replica id and tenant.
    Client { node: String, replica: String, tenant: String },
    /// A local append began, with this payload.
    AppendStarted { node: String, payload: Vec<u8> },
    /// The append committed as `write_id`, with op id `op_id`.
    /// `stored_sha256` is the hex SHA-256 of the write's stored form (its sealed envelope).
    AppendAcked { node: String, write_id: u64, op_id: String, stored_sha256: String },
    /// The append reported an error: it probably did not happen, but a commit whose sync failed
    /// may still surface after a crash, so it stays uncertain until a recovery settles it.
    AppendFailed { node: String },
    /// The server acknowledged these writes (by op id) of the device: its push answer arrived.
    PushAcked { node: String, op_ids: Vec<String> },
    /// A sync attempt failed. `signature` is its guardrail signature, if any; `expected` the
    /// signature of the transport fault injected into it, if any; the states are the device's
    /// exported state before and after, as canonical text.
    SyncFailed { node: String, code: String, signature: Option<String>, expected: Option<String>, state_before: String, state_after: String },
    /// A sync attempt succeeded although `expected` names the transport fault injected into it.
    SyncSucceeded { node: String, expected: Option<String> },
    /// The node lost power: whatever it had in flight may or may not have happened.
    Crashed { node: String },
    /// A device's state, read back after it recovered, or whenever the world looks.
    ClientState { snapshot: ClientSnapshot, after_recovery: bool },
    /// A device's state after an operation, with only its events after `after_seq`: the model
    /// verified the ones before when it last looked (see `Checker::verified_through`), and the
    /// operation cannot have changed them. The outbox and anchor are whole.
    ClientTail { snapshot: ClientSnapshot, after_seq: u64 },
    /// The server's state.
    ServerState { snapshot: ServerSnapshot },
    /// Something about blobs (runbook 003 §2, §3).
    Blob(crate::blobs::BlobFact),
    /// Something about jobs: exports read back, imports (runbook 001 §B, §C).
    Jobs(crate::jobs::JobsFact),
    /// Something about a node's store or secrets: projections, snapshots, tenants, READ_ONLY
    /// periods, scans for plaintext and key material, vault keys (runbooks 000, 002, 004).
    Store(crate::store::StoreFact),
    /// A runbook recovery finished on `node`: the events it held (committed) when the failure
    /// was found, and what it holds after the recovery, payloads as the node itself opens them.
    /// `unrecoverable` names the op ids the runbook says cannot come back (INV-RECOVERY).
    Recovered { node: String, recovery: String, committed: Vec<EventFact>, after: Vec<EventFact>, unrecoverable: std::collections::BTreeSet<String> },
}

/// A short digest of a payload, for messages.
pub fn digest(payload: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(payload)[..6])
}

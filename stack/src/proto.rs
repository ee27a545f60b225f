//! The sync protocol: JSON messages in an envelope that carries the protocol version and a
//! request id. Byte fields travel as hex.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::EventRow;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 2;
/// The oldest version it still speaks: versions N and N-1 interoperate.
pub const PROTOCOL_VERSION_MIN: u32 = 1;

/// Network tag of requests (client to server).
pub const TAG_REQUEST: u64 = 1;
/// Network tag of responses (server to client).
pub const TAG_RESPONSE: u64 = 2;

/// The server's port.
pub const SERVER_PORT: u16 = 7000;

/// Most events the server puts in one pull page.
pub const PAGE_LIMIT_MAX: u32 = 64;

/// Every message on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub v: u32,
    pub id: u64,
    /// The sender's token (requests of a device that has one); optional on the wire, so a
    /// message without one still decodes and the server decides whether it may pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub body: T,
}

/// A write that a client made offline and pushes later, tagged `(replica, write_id)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingWrite {
    pub write_id: u64,
    /// The write's identity across retries and renumbering. Version 1 peers send none; the
    /// server then derives it from `(replica, write_id)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_id: Option<String>,
    pub aggregate: String,
    pub kind: String,
    #[serde(with = "hex_bytes")]
    pub payload: Vec<u8>,
}

/// Client requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Appends writes to the total order; idempotent per `(replica, write_id)`. `head` is the
    /// device's chain head: a server that does not hold it was restored behind the device and
    /// answers [`Response::Rewound`] without appending anything.
    Push {
        tenant: String,
        replica: String,
        writes: Vec<PendingWrite>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        head: Option<ChainPoint>,
    },
    /// The tenant's events after `since`, one page; `head` as for a push.
    Pull {
        tenant: String,
        replica: String,
        since: u64,
        limit: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        head: Option<ChainPoint>,
    },
    /// A blob request (runbook 003 §2, §3), served by the server's blob layer.
    Blob(crate::blobs::BlobRequest),
    /// A fresh token for `identity`, proven by a seal under the device's pairing key over the
    /// tenant, replica, identity and the request's nonce ([`crate::keys::token::proof`]).
    Token {
        tenant: String,
        replica: String,
        identity: String,
        #[serde(with = "hex_bytes")]
        nonce: Vec<u8>,
        #[serde(with = "hex_bytes")]
        proof: Vec<u8>,
    },
    /// A key request to a member's key service, never to the sync server (runbook 002:
    /// [`crate::keys::exchange`]).
    Keys(crate::keys::exchange::KeyRequest),
}

/// A point of a tenant's hash chain: an event's sequence number and hash (or a compaction
/// anchor's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainPoint {
    pub seq: u64,
    #[serde(with = "hex_bytes")]
    pub hash: Vec<u8>,
}

/// One event on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEvent {
    pub seq: u64,
    pub op_id: String,
    pub tenant: String,
    pub aggregate: String,
    pub kind: String,
    pub replica: String,
    pub write_id: u64,
    #[serde(with = "hex_bytes")]
    pub payload: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub prev_hash: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub hash: Vec<u8>,
}

impl From<EventRow> for WireEvent {
    fn from(e: EventRow) -> Self {
        WireEvent {
            seq: e.seq,
            op_id: e.op_id,
            tenant: e.tenant,
            aggregate: e.aggregate,
            kind: e.kind,
            replica: e.replica,
            write_id: e.write_id,
            payload: e.payload,
            prev_hash: e.prev_hash,
            hash: e.hash,
        }
    }
}

impl From<WireEvent> for EventRow {
    fn from(e: WireEvent) -> Self {
        EventRow {
            seq: e.seq,
            op_id: e.op_id,
            tenant: e.tenant,
            aggregate: e.aggregate,
            kind: e.kind,
            replica: e.replica,
            write_id: e.write_id,
            payload: e.payload,
            prev_hash: e.prev_hash,
            hash: e.hash,
        }
    }
}

/// Server responses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Response {
    /// The reconcile acknowledgement: every pushed write with the write id and sequence number
    /// it has in the total order, the tenant's cursor, and every replica's last reconciled write.
    Pushed { accepted: Vec<Accepted>, cursor: u64, last_reconciled_write_ids: BTreeMap<String, u64> },
    /// One page of events.
    Page { items: Vec<WireEvent>, has_more: bool, next_cursor: u64, last_reconciled_write_ids: BTreeMap<String, u64> },
    /// The client's `since` is behind the server's retention: the events it would need are
    /// compacted. It must resynchronise from the floor (the last compacted event).
    ResyncRequired {
        floor_seq: u64,
        #[serde(with = "hex_bytes")]
        floor_hash: Vec<u8>,
    },
    /// The answer to a blob request: HTTP-like, with its own status.
    Blob(Box<crate::blobs::BlobResponse>),
    /// A token, and the server's clock when it issued it: the device judges the token's expiry
    /// by the server's time (its own clock plus the offset it learns here), so a device clock
    /// that runs ahead or behind neither throws fresh tokens away nor keeps stale ones.
    Token { token: String, server_unix_ms: i64 },
    /// A member's answer to a key request.
    Keys(crate::keys::exchange::KeyAnswer),
    /// The server cannot take the request now but will later (runbook 004 §2: READ_ONLY, or its
    /// archive is behind): nothing was changed, the device keeps its writes and asks again.
    /// `code` names why: `readOnly`, `tenantReadOnly`, `archivePending`, `archiveWindowFull`.
    RetryLater { code: String, message: String },
    /// The server does not hold the chain head the request named: it was restored from a backup
    /// older than what the device holds. `held` is the server's head of the tenant. The device
    /// fails closed (`sync:serverRewound`) until the operator re-offers what the server lost.
    Rewound { held: Option<ChainPoint> },
    /// The request failed. A `staleWriteId` error carries the replica's last write id the
    /// server holds, so the client can renumber.
    Error {
        code: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_write_id: Option<u64>,
    },
}

/// One write the server holds for a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub op_id: String,
    pub write_id: u64,
    pub seq: u64,
}

impl Response {
    /// An error answer.
    pub fn error(code: &str, message: impl Into<String>) -> Response {
        Response::Error { code: code.into(), message: message.into(), last_write_id: None }
    }
}

/// Encodes a message in protocol version `v`.
pub fn encode<T: Serialize>(v: u32, id: u64, body: &T) -> Vec<u8> {
    encode_with_token(v, id, None, body)
}

/// Encodes a message in protocol version `v`, carrying `token`.
pub fn encode_with_token<T: Serialize>(v: u32, id: u64, token: Option<&str>, body: &T) -> Vec<u8> {
    #[derive(Serialize)]
    struct Out<'a, T> {
        v: u32,
        id: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<&'a str>,
        body: &'a T,
    }
    serde_json::to_vec(&Out { v, id, token, body }).expect("messages serialize")
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Malformed(String),
    /// The peer speaks a version outside `PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION`; the id is
    /// kept so the refusal can be answered.
    Version {
        v: u32,
        id: u64,
    },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Malformed(e) => write!(f, "malformed message: {e}"),
            DecodeError::Version { v, .. } => {
                write!(f, "protocol version {v} is outside the supported window {PROTOCOL_VERSION_MIN}..={PROTOCOL_VERSION}")
            }
        }
    }
}

/// Decodes a message, refusing versions outside the supported window.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<Envelope<T>, DecodeError> {
    #[derive(Deserialize)]
    struct Head {
        v: u32,
        id: u64,
    }
    let head: Head = serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&head.v) {
        return Err(DecodeError::Version { v: head.v, id: head.id });
    }
    serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Byte fields as hex strings on the wire (serde `with`).
pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let req = Request::Push {
            tenant: "acme".into(),
            replica: "client-1".into(),
            writes: vec![PendingWrite { write_id: 1, op_id: Some("x-1".into()), aggregate: "a".into(), kind: "k".into(), payload: vec![0, 255] }],
            head: Some(ChainPoint { seq: 4, hash: vec![1, 2] }),
        };
        let bytes = encode(PROTOCOL_VERSION, 7, &req);
        let env: Envelope<Request> = decode(&bytes).unwrap();
        assert_eq!(env.id, 7);
        assert_eq!(env.body, req);
    }

    #[test]
    fn versions_outside_the_window_are_refused() {
        for v in [0, PROTOCOL_VERSION + 1] {
            let bytes = serde_json::to_vec(&Envelope { v, id: 1, token: None, body: 0u8 }).unwrap();
            assert_eq!(decode::<u8>(&bytes), Err(DecodeError::Version { v, id: 1 }));
        }
        for v in PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION {
            let bytes = serde_json::to_vec(&Envelope { v, id: 1, token: None, body: 0u8 }).unwrap();
            assert!(decode::<u8>(&bytes).is_ok());
        }
    }

    #[test]
    fn a_version_1_push_has_no_op_ids() {
        let text = r#"{"v":1,"id":3,"body":{"op":"push","tenant":"t","replica":"r","writes":[{"write_id":1,"aggregate":"a","kind":"k","payload":"00"}]}}"#;
        let env: Envelope<Request> = decode(text.as_bytes()).unwrap();
        let Request::Push { writes, head, .. } = env.body else { panic!("a push") };
        assert_eq!(writes[0].op_id, None);
        assert_eq!(head, None);
    }
}

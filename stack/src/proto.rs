//! The sync protocol: JSON messages in an envelope that carries the protocol version and a
//! request id. Byte fields travel as hex.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::EventRow;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

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
    pub body: T,
}

/// A write that a client made offline and pushes later, tagged `(replica, write_id)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingWrite {
    pub write_id: u64,
    pub aggregate: String,
    pub kind: String,
    #[serde(with = "hex_bytes")]
    pub payload: Vec<u8>,
}

/// Client requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Appends writes to the total order; idempotent per `(replica, write_id)`.
    Push { tenant: String, replica: String, writes: Vec<PendingWrite> },
    /// The tenant's events after `since`, one page.
    Pull { tenant: String, replica: String, since: u64, limit: u32 },
}

/// One event on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEvent {
    pub seq: u64,
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
    /// Every pushed write with the sequence number it has in the total order.
    Pushed { accepted: Vec<(u64, u64)>, last_write_id: u64 },
    /// One page of events.
    Page {
        items: Vec<WireEvent>,
        has_more: bool,
        next_cursor: u64,
        last_reconciled_write_ids: BTreeMap<String, u64>,
    },
    /// The request failed.
    Error { code: String, message: String },
}

/// Encodes a message.
pub fn encode<T: Serialize>(id: u64, body: &T) -> Vec<u8> {
    serde_json::to_vec(&Envelope { v: PROTOCOL_VERSION, id, body }).expect("messages serialize")
}

/// Decodes a message, refusing other protocol versions.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<Envelope<T>, String> {
    let env: Envelope<T> = serde_json::from_slice(bytes).map_err(|e| format!("malformed message: {e}"))?;
    if env.v != PROTOCOL_VERSION {
        return Err(format!("protocol version {} is not {PROTOCOL_VERSION}", env.v));
    }
    Ok(env)
}

mod hex_bytes {
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
            writes: vec![PendingWrite { write_id: 1, aggregate: "a".into(), kind: "k".into(), payload: vec![0, 255] }],
        };
        let bytes = encode(7, &req);
        let env: Envelope<Request> = decode(&bytes).unwrap();
        assert_eq!(env.id, 7);
        assert_eq!(env.body, req);
    }

    #[test]
    fn other_versions_are_refused() {
        let bytes = serde_json::to_vec(&Envelope { v: 99, id: 1, body: 0u8 }).unwrap();
        assert!(decode::<u8>(&bytes).is_err());
    }
}

//! Blob requests and answers on the sync protocol (`Request::Blob`, `Response::Blob`). Answers
//! are HTTP-like: a status, and for an error its runbook text and stable code.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::BlobError;

/// A client's reconcile state as the server persisted it: the sync cursor and, per replica, the
/// last reconciled write id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileView {
    pub cursor: u64,
    pub last_reconciled_write_ids: BTreeMap<String, u64>,
}

impl ReconcileView {
    /// Whether this state is at or past `required`: the cursor dominates, and every required
    /// replica's write id is present and dominated.
    pub fn dominates(&self, required_cursor: u64, required: &BTreeMap<String, u64>) -> bool {
        self.cursor >= required_cursor && required.iter().all(|(r, &w)| self.last_reconciled_write_ids.get(r).is_some_and(|&have| have >= w))
    }
}

/// The visibility checkpoint an attach carries: the client's sync position when it staged. The
/// write-id map travels as raw JSON so that a malformed one reaches the server and is refused
/// there, with its reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachCheckpoint {
    pub client_id: String,
    pub required_cursor: u64,
    pub required_last_reconciled_write_ids: serde_json::Value,
}

/// Blob requests from a client (and the operator's orphan scan).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "blob_op", rename_all = "snake_case")]
pub enum BlobRequest {
    /// Store `bytes` as blob `blob_id` and register it as staged; idempotent per blob id.
    Stage {
        tenant: String,
        client_id: String,
        blob_id: String,
        #[serde(with = "hex_bytes")]
        bytes: Vec<u8>,
    },
    /// Attach a staged blob to `item_id` once the client's reconcile state is visible.
    Attach { tenant: String, blob_id: String, item_id: String, checkpoint: AttachCheckpoint },
    /// The blob's bytes.
    Read { tenant: String, blob_id: String },
    /// Delete the object, then the registry row.
    Delete { tenant: String, blob_id: String },
    /// Operator: registry rows whose object is missing; with `cleanup`, those rows are removed.
    Orphans { cleanup: bool },
}

/// What a successful answer carries (fields unused by an operation stay empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_hex_bytes")]
    pub bytes: Option<Vec<u8>>,
    /// The staged row's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    /// The server's clock when it answered an attach or stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub now_ms: Option<i64>,
    /// Attempts the object layer made.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// The persisted reconcile state an attach was judged against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<ReconcileView>,
    /// An answer to a retry of a request that already took effect.
    #[serde(default, skip_serializing_if = "is_false")]
    pub replayed: bool,
    /// Orphan scan: blob ids whose object is missing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orphans: Vec<String>,
    /// Orphan scan: blob ids whose object could not be checked (the store refused or failed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unverified: Vec<String>,
    /// Orphan scan: registry rows removed.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub cleaned: u64,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// One blob answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobResponse {
    /// HTTP-like status: 200, 400, 403, 404, 409, 500, 503.
    pub status: u16,
    /// The runbook's error text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The stable code of the error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default)]
    pub body: BlobBody,
}

impl BlobResponse {
    pub fn ok(body: BlobBody) -> Self {
        BlobResponse { status: 200, error: None, code: None, detail: None, body }
    }

    /// The answer to a failed request; the body keeps what helps triage (attempts, the observed
    /// reconcile state, the expiry).
    pub fn from_error(e: &BlobError) -> Self {
        let mut body = BlobBody { attempts: e.attempts(), ..BlobBody::default() };
        match e {
            BlobError::ReconcileBehind { observed } => body.observed = observed.clone(),
            BlobError::StagingExpired { expires_at_ms, now_ms } => {
                body.expires_at_ms = Some(*expires_at_ms);
                body.now_ms = Some(*now_ms);
            }
            _ => {}
        }
        BlobResponse { status: e.status(), error: Some(e.message().into()), code: Some(e.code().into()), detail: Some(e.detail()), body }
    }

    pub fn from_result(r: Result<BlobBody, BlobError>) -> Self {
        match r {
            Ok(body) => Self::ok(body),
            Err(e) => Self::from_error(&e),
        }
    }
}

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

pub(crate) mod opt_hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| hex::decode(s).map_err(serde::de::Error::custom)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lrw(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(r, w)| (r.to_string(), *w)).collect()
    }

    #[test]
    fn domination_needs_the_cursor_and_every_required_write_id() {
        let v = ReconcileView { cursor: 10, last_reconciled_write_ids: lrw(&[("a", 3), ("b", 5)]) };
        assert!(v.dominates(10, &lrw(&[("a", 3)])));
        assert!(v.dominates(0, &lrw(&[])));
        assert!(!v.dominates(11, &lrw(&[])), "cursor behind");
        assert!(!v.dominates(10, &lrw(&[("a", 4)])), "write id behind");
        assert!(!v.dominates(10, &lrw(&[("c", 1)])), "required replica absent");
    }

    #[test]
    fn blob_messages_round_trip() {
        let req = BlobRequest::Attach {
            tenant: "acme".into(),
            blob_id: "b-1".into(),
            item_id: "note-1".into(),
            checkpoint: AttachCheckpoint { client_id: "c".into(), required_cursor: 4, required_last_reconciled_write_ids: serde_json::json!({"c": 2}) },
        };
        let text = serde_json::to_string(&req).unwrap();
        assert_eq!(serde_json::from_str::<BlobRequest>(&text).unwrap(), req);
        let resp = BlobResponse::ok(BlobBody { bytes: Some(vec![0, 255]), attempts: 2, ..BlobBody::default() });
        let text = serde_json::to_string(&resp).unwrap();
        assert_eq!(serde_json::from_str::<BlobResponse>(&text).unwrap(), resp);
        // Inside the sync protocol's envelope, as the server and devices exchange them.
        use crate::proto::{decode, encode, Envelope, Request, Response, PROTOCOL_VERSION};
        let bytes = encode(PROTOCOL_VERSION, 9, &Request::Blob(req.clone()));
        let env: Envelope<Request> = decode(&bytes).unwrap();
        assert_eq!(env.body, Request::Blob(req));
        let bytes = encode(PROTOCOL_VERSION, 9, &Response::Blob(Box::new(resp.clone())));
        let env: Envelope<Response> = decode(&bytes).unwrap();
        assert_eq!(env.body, Response::Blob(Box::new(resp)));
    }
}

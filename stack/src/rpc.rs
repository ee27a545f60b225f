//! Request/response over madsim endpoints: one request in flight per client, answered or timed
//! out. Responses to earlier requests (late, duplicated, replayed) are recognised by id and
//! dropped.
//!
//! Between the client and the network sits an optional [`TransportFilter`]: the seam where a
//! test world puts a faulty transport (rewritten responses, duplicated and replayed requests).

use std::net::SocketAddr;
use std::time::Duration;

use madsim::net::Endpoint;

use crate::error::SyncError;
use crate::proto::{self, DecodeError, Request, Response, PROTOCOL_VERSION, TAG_REQUEST, TAG_RESPONSE};

/// Most stale responses skipped while waiting for one answer; past it the call fails.
const STALE_RESPONSES_MAX: u32 = 64;

/// Something a client can send requests through: the network ([`RpcClient`]) or, in tests
/// outside a simulation, a server in the same process.
pub trait Exchange {
    /// The protocol version spoken.
    fn version(&self) -> u32;
    /// Sends `req` and waits for its response.
    fn call(&mut self, req: &Request) -> impl std::future::Future<Output = Result<Response, SyncError>>;
    /// The token the next requests carry (an exchange without tokens ignores it).
    fn set_token(&mut self, _token: Option<String>) {}
}

impl Exchange for RpcClient {
    fn version(&self) -> u32 {
        self.version
    }

    fn call(&mut self, req: &Request) -> impl std::future::Future<Output = Result<Response, SyncError>> {
        RpcClient::call(self, req)
    }

    fn set_token(&mut self, token: Option<String>) {
        self.token = token;
    }
}

/// A hook on every exchange of one client.
pub trait TransportFilter: Send + Sync {
    /// Messages to send before request `id` (each with its own id): duplicates of it, or
    /// replays of older requests.
    fn extra_sends(&mut self, _id: u64, _req: &Request) -> Vec<(u64, Request)> {
        Vec::new()
    }

    /// Rewrites the response to `req` before the client sees it.
    fn response(&mut self, _req: &Request, resp: Response) -> Response {
        resp
    }

    /// Rewrites the token `req` goes out with.
    fn token(&mut self, _req: &Request, token: Option<String>) -> Option<String> {
        token
    }
}

/// The simulated instant now, read from madsim's time handle (never the machine's clock).
fn now() -> madsim::time::Instant {
    madsim::time::TimeHandle::current().now_instant()
}

/// A client's connection to the server.
pub struct RpcClient {
    ep: Endpoint,
    server: SocketAddr,
    next_id: u64,
    timeout: Duration,
    version: u32,
    token: Option<String>,
    filter: Option<Box<dyn TransportFilter>>,
}

impl RpcClient {
    /// Binds a local endpoint. `id_base` keeps request ids of different boots apart, so a
    /// response meant for a previous boot is never taken for a new request's.
    pub async fn bind(server: SocketAddr, id_base: u64, timeout: Duration) -> Result<Self, SyncError> {
        let ep = Endpoint::bind("0.0.0.0:0").await.map_err(|e| SyncError::Transport { detail: format!("bind: {e}") })?;
        Ok(RpcClient { ep, server, next_id: id_base << 32, timeout, version: PROTOCOL_VERSION, token: None, filter: None })
    }

    /// Speaks protocol version `v` (an older device).
    pub fn with_version(mut self, v: u32) -> Self {
        self.version = v;
        self
    }

    /// The protocol version this client speaks.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Puts `filter` between this client and the network.
    pub fn with_filter(mut self, filter: Box<dyn TransportFilter>) -> Self {
        self.filter = Some(filter);
        self
    }

    async fn send(&mut self, id: u64, req: &Request) -> Result<(), SyncError> {
        let token = match self.filter.as_mut() {
            Some(f) => f.token(req, self.token.clone()),
            None => self.token.clone(),
        };
        let bytes = proto::encode_with_token(self.version, id, token.as_deref(), req);
        self.ep.send_to_raw(self.server, TAG_REQUEST, Box::new(bytes)).await.map_err(|e| SyncError::Transport { detail: format!("send: {e}") })
    }

    /// Sends `req` and waits for its response.
    pub async fn call(&mut self, req: &Request) -> Result<Response, SyncError> {
        self.next_id += 1;
        let id = self.next_id;
        let extra = self.filter.as_mut().map(|f| f.extra_sends(id, req)).unwrap_or_default();
        for (xid, x) in &extra {
            self.send(*xid, x).await?;
        }
        self.send(id, req).await?;
        let deadline = now() + self.timeout;
        for _ in 0..STALE_RESPONSES_MAX {
            let left = deadline.saturating_duration_since(now());
            let got = madsim::time::timeout(left, self.ep.recv_from_raw(TAG_RESPONSE)).await;
            let (payload, _) = match got {
                Err(_) => return Err(SyncError::Transport { detail: format!("no response within {:?}", self.timeout) }),
                Ok(Err(e)) => return Err(SyncError::Transport { detail: format!("recv: {e}") }),
                Ok(Ok(x)) => x,
            };
            let Ok(bytes) = payload.downcast::<Vec<u8>>() else { continue };
            let env = match proto::decode::<Response>(&bytes) {
                Ok(env) => env,
                Err(e @ DecodeError::Version { .. }) => return Err(SyncError::Protocol { detail: e.to_string() }),
                Err(e) => return Err(SyncError::Transport { detail: e.to_string() }),
            };
            if env.id == id {
                let resp = match self.filter.as_mut() {
                    Some(f) => f.response(req, env.body),
                    None => env.body,
                };
                if let Response::Error { code, message, .. } = &resp {
                    if code == "protocolVersionUnsupported" {
                        return Err(SyncError::Protocol { detail: message.clone() });
                    }
                }
                return Ok(resp);
            }
        }
        Err(SyncError::Transport { detail: "too many stale responses".into() })
    }
}

/// Serves requests on the server's endpoint until the node stops; `handle` gets each request
/// with the token it carries. Each answer is in the protocol version of its request.
pub async fn serve(ep: &Endpoint, mut handle: impl FnMut(Option<String>, Request) -> Response) -> std::io::Result<()> {
    loop {
        let (payload, from) = ep.recv_from_raw(TAG_REQUEST).await?;
        let Ok(bytes) = payload.downcast::<Vec<u8>>() else { continue };
        let (v, id, resp) = match proto::decode::<Request>(&bytes) {
            Ok(env) => (env.v, env.id, handle(env.token, env.body)),
            Err(e @ DecodeError::Version { id, .. }) => (PROTOCOL_VERSION, id, Response::error("protocolVersionUnsupported", e.to_string())),
            Err(e) => (PROTOCOL_VERSION, 0, Response::error("badRequest", e.to_string())),
        };
        ep.send_to_raw(from, TAG_RESPONSE, Box::new(proto::encode(v, id, &resp))).await?;
    }
}

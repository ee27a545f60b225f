//! Request/response over madsim endpoints: one request in flight per client, answered or timed
//! out. Responses to earlier requests (late, duplicated) are recognised by id and dropped.

use std::net::SocketAddr;
use std::time::Duration;

use madsim::net::Endpoint;

use crate::error::SyncError;
use crate::proto::{self, Request, Response, TAG_REQUEST, TAG_RESPONSE};

/// Most stale responses skipped while waiting for one answer; past it the call fails.
const STALE_RESPONSES_MAX: u32 = 64;

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
}

impl RpcClient {
    /// Binds a local endpoint. `id_base` keeps request ids of different boots apart, so a
    /// response meant for a previous boot is never taken for a new request's.
    pub async fn bind(server: SocketAddr, id_base: u64, timeout: Duration) -> Result<Self, SyncError> {
        let ep = Endpoint::bind("0.0.0.0:0").await.map_err(|e| SyncError::Transport { detail: format!("bind: {e}") })?;
        Ok(RpcClient { ep, server, next_id: id_base << 32, timeout })
    }

    /// Sends `req` and waits for its response.
    pub async fn call(&mut self, req: &Request) -> Result<Response, SyncError> {
        self.next_id += 1;
        let id = self.next_id;
        let bytes = proto::encode(id, req);
        self.ep
            .send_to_raw(self.server, TAG_REQUEST, Box::new(bytes))
            .await
            .map_err(|e| SyncError::Transport { detail: format!("send: {e}") })?;
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
            let env = proto::decode::<Response>(&bytes).map_err(|e| SyncError::Transport { detail: e })?;
            if env.id == id {
                return Ok(env.body);
            }
        }
        Err(SyncError::Transport { detail: "too many stale responses".into() })
    }
}

/// Serves requests on the server's endpoint until the node stops.
pub async fn serve(ep: &Endpoint, mut handle: impl FnMut(Request) -> Response) -> std::io::Result<()> {
    loop {
        let (payload, from) = ep.recv_from_raw(TAG_REQUEST).await?;
        let Ok(bytes) = payload.downcast::<Vec<u8>>() else { continue };
        let resp = match proto::decode::<Request>(&bytes) {
            Ok(env) => (env.id, handle(env.body)),
            Err(e) => (0, Response::Error { code: "badRequest".into(), message: e }),
        };
        ep.send_to_raw(from, TAG_RESPONSE, Box::new(proto::encode(resp.0, &resp.1))).await?;
    }
}

//! The server's request loop with blob requests. Sync requests are answered in order, as
//! [`crate::rpc::serve`] does; a blob request waits on the object store (with retries and
//! backoff), so each runs as its own task and the loop goes on answering pushes and pulls.

use std::future::Future;
use std::sync::Arc;

use madsim::net::Endpoint;

use crate::proto::{self, DecodeError, Request, Response, PROTOCOL_VERSION, TAG_REQUEST, TAG_RESPONSE};

use super::wire::{BlobRequest, BlobResponse};

/// Serves requests on `ep` until the node stops: `handle` answers sync requests, `blob` starts
/// the answer to each blob request. Each answer is in the protocol version of its request.
pub async fn serve_with_blobs<B, F>(ep: Endpoint, mut handle: impl FnMut(Option<String>, Request) -> Response, blob: B) -> std::io::Result<()>
where
    B: Fn(BlobRequest) -> F,
    F: Future<Output = BlobResponse> + Send + 'static,
{
    let ep = Arc::new(ep);
    loop {
        let (payload, from) = ep.recv_from_raw(TAG_REQUEST).await?;
        let Ok(bytes) = payload.downcast::<Vec<u8>>() else { continue };
        let (v, id, resp) = match proto::decode::<Request>(&bytes) {
            Ok(env) => match env.body {
                Request::Blob(req) => {
                    let answer = blob(req);
                    let ep = ep.clone();
                    let (v, id) = (env.v, env.id);
                    madsim::task::spawn(async move {
                        let resp = Response::Blob(Box::new(answer.await));
                        // The asker may be gone; its retry gets its own answer.
                        let _ = ep.send_to_raw(from, TAG_RESPONSE, Box::new(proto::encode(v, id, &resp))).await;
                    });
                    continue;
                }
                body => (env.v, env.id, handle(env.token, body)),
            },
            Err(e @ DecodeError::Version { id, .. }) => (PROTOCOL_VERSION, id, Response::error("protocolVersionUnsupported", e.to_string())),
            Err(e) => (PROTOCOL_VERSION, 0, Response::error("badRequest", e.to_string())),
        };
        ep.send_to_raw(from, TAG_RESPONSE, Box::new(proto::encode(v, id, &resp))).await?;
    }
}

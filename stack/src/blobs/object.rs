//! The server's object layer: where a blob's bytes live in the object store, and how a request
//! to the store is retried.
//!
//! A blob's object key is derived from its id alone (`<prefix><hex SHA-256 of the id>`), so a
//! retried stage writes the same object and every operation is idempotent. Transient failures
//! (`ServiceUnavailable`, `SlowDown`, `InternalError`, timeouts) are retried with exponential
//! backoff up to a bounded number of attempts; `AccessDenied` and `NoSuchKey` are answered at
//! once, since sending the same request again cannot change them.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use madsim::net::Endpoint;
use sha2::{Digest, Sha256};

use crate::proto::{self, PROTOCOL_VERSION, TAG_REQUEST, TAG_RESPONSE};

use super::error::{ObjectError, ObjectErrorKind};
use super::s3::{S3Reply, S3Request, S3Response};

/// A boxed future that can move between tasks.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptFailure {
    pub kind: ObjectErrorKind,
    pub detail: String,
}

/// The seam between the blob service and an object store: one request, one attempt.
pub trait ObjectStore: Send + Sync {
    fn call(&self, req: S3Request) -> BoxFuture<'_, Result<S3Reply, AttemptFailure>>;
}

/// The object key of blob `blob_id` under `prefix`.
pub fn object_key(prefix: &str, blob_id: &str) -> String {
    format!("{prefix}{}", hex::encode(Sha256::digest(blob_id.as_bytes())))
}

/// How requests to the object store are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per operation, the first included.
    pub attempts_max: u32,
    /// Wait before the second attempt; each later wait doubles.
    pub backoff_ms_base: u64,
    /// Longest single wait.
    pub backoff_ms_max: u64,
}

impl RetryPolicy {
    pub const DEFAULT: RetryPolicy = RetryPolicy { attempts_max: 4, backoff_ms_base: 25, backoff_ms_max: 400 };

    /// The wait after failed attempt `attempt` (1-based): base, 2×base, 4×base, ... capped.
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        let doublings = attempt.saturating_sub(1).min(32);
        self.backoff_ms_base.saturating_mul(1u64 << doublings).min(self.backoff_ms_max)
    }
}

/// Sends `req` until it succeeds, fails for good, or the attempts run out. Returns the reply and
/// the attempts it took.
pub async fn with_retries(store: &dyn ObjectStore, policy: &RetryPolicy, req: &S3Request) -> Result<(S3Reply, u32), ObjectError> {
    let attempts_max = policy.attempts_max.max(1);
    let mut attempt = 1;
    loop {
        match store.call(req.clone()).await {
            Ok(reply) => return Ok((reply, attempt)),
            Err(f) if f.kind.transient() && attempt < attempts_max => {
                madsim::time::sleep(Duration::from_millis(policy.backoff_ms(attempt))).await;
                attempt += 1;
            }
            Err(f) => return Err(ObjectError { kind: f.kind, attempts: attempt, detail: f.detail }),
        }
    }
}

/// The object store across the network: each attempt binds its own endpoint, so concurrent
/// requests never take each other's answers and a late answer to an earlier attempt is never
/// taken for a later one's.
pub struct NetObjectStore {
    pub addr: SocketAddr,
    pub timeout: Duration,
}

impl NetObjectStore {
    async fn attempt(&self, req: S3Request) -> Result<S3Reply, AttemptFailure> {
        let fail = |kind, detail: String| AttemptFailure { kind, detail };
        let ep = Endpoint::bind("0.0.0.0:0").await.map_err(|e| fail(ObjectErrorKind::Timeout, format!("bind: {e}")))?;
        let bytes = proto::encode(PROTOCOL_VERSION, 1, &req);
        ep.send_to_raw(self.addr, TAG_REQUEST, Box::new(bytes)).await.map_err(|e| fail(ObjectErrorKind::Timeout, format!("send: {e}")))?;
        let got = madsim::time::timeout(self.timeout, ep.recv_from_raw(TAG_RESPONSE)).await;
        let payload = match got {
            Err(_) => return Err(fail(ObjectErrorKind::Timeout, format!("no answer within {:?}", self.timeout))),
            Ok(Err(e)) => return Err(fail(ObjectErrorKind::Timeout, format!("recv: {e}"))),
            Ok(Ok((payload, _))) => payload,
        };
        let bytes = payload.downcast::<Vec<u8>>().map_err(|_| fail(ObjectErrorKind::BadResponse, "not bytes".into()))?;
        match proto::decode::<S3Response>(&bytes) {
            Ok(env) => match env.body {
                S3Response::Ok(r) => Ok(r),
                S3Response::Error { code, message } => Err(fail(code.kind(), message)),
            },
            Err(e) => Err(fail(ObjectErrorKind::BadResponse, e.to_string())),
        }
    }
}

impl ObjectStore for NetObjectStore {
    fn call(&self, req: S3Request) -> BoxFuture<'_, Result<S3Reply, AttemptFailure>> {
        Box::pin(self.attempt(req))
    }
}

/// Serves the object store on `ep`: each request is answered by `handle` (which decides on
/// injected errors), in the protocol version it came in.
pub async fn serve_objects(ep: &Endpoint, mut handle: impl FnMut(&S3Request) -> S3Response) -> std::io::Result<()> {
    loop {
        let (payload, from) = ep.recv_from_raw(TAG_REQUEST).await?;
        let Ok(bytes) = payload.downcast::<Vec<u8>>() else { continue };
        let Ok(env) = proto::decode::<S3Request>(&bytes) else { continue };
        let resp = handle(&env.body);
        ep.send_to_raw(from, TAG_RESPONSE, Box::new(proto::encode(env.v, env.id, &resp))).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An object store that fails its first attempts with scripted kinds.
    struct Scripted {
        failures: Mutex<Vec<ObjectErrorKind>>,
        calls: Mutex<u32>,
    }

    impl ObjectStore for Scripted {
        fn call(&self, _req: S3Request) -> BoxFuture<'_, Result<S3Reply, AttemptFailure>> {
            *self.calls.lock().unwrap() += 1;
            let next = {
                let mut f = self.failures.lock().unwrap();
                if f.is_empty() {
                    None
                } else {
                    Some(f.remove(0))
                }
            };
            Box::pin(async move {
                match next {
                    Some(kind) => Err(AttemptFailure { kind, detail: "scripted".into() }),
                    None => Ok(S3Reply::default()),
                }
            })
        }
    }

    fn scripted(failures: &[ObjectErrorKind]) -> Scripted {
        Scripted { failures: Mutex::new(failures.to_vec()), calls: Mutex::new(0) }
    }

    fn get() -> S3Request {
        S3Request::GetObject { bucket: "b".into(), key: "k".into() }
    }

    /// Runs `f` on a bare madsim runtime (no world): retries sleep in simulated time.
    fn block_on<F: Future>(f: F) -> F::Output {
        madsim::runtime::Runtime::new().block_on(f)
    }

    #[test]
    fn keys_are_deterministic_per_blob_id() {
        assert_eq!(object_key("blobs/", "b-1"), object_key("blobs/", "b-1"));
        assert_ne!(object_key("blobs/", "b-1"), object_key("blobs/", "b-2"));
        assert!(object_key("blobs/", "b-1").starts_with("blobs/"));
        assert_eq!(object_key("p/", "b").len(), "p/".len() + 64);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let p = RetryPolicy { attempts_max: 6, backoff_ms_base: 25, backoff_ms_max: 150 };
        assert_eq!((1..=5).map(|a| p.backoff_ms(a)).collect::<Vec<_>>(), vec![25, 50, 100, 150, 150]);
    }

    #[test]
    fn transient_kinds_are_retried_until_success() {
        for kind in [ObjectErrorKind::ServiceUnavailable, ObjectErrorKind::SlowDown, ObjectErrorKind::InternalError, ObjectErrorKind::Timeout] {
            let store = scripted(&[kind, kind]);
            let (_, attempts) = block_on(with_retries(&store, &RetryPolicy::DEFAULT, &get())).unwrap();
            assert_eq!(attempts, 3, "{kind:?}");
        }
    }

    #[test]
    fn retries_are_bounded_and_wait_with_exponential_backoff() {
        let store = scripted(&[ObjectErrorKind::SlowDown; 10]);
        let policy = RetryPolicy::DEFAULT;
        let (result, waited) = block_on(async {
            let start = madsim::time::TimeHandle::current().now_instant();
            let r = with_retries(&store, &policy, &get()).await;
            (r, start.elapsed())
        });
        let e = result.unwrap_err();
        assert_eq!((e.kind, e.attempts), (ObjectErrorKind::SlowDown, policy.attempts_max));
        assert_eq!(*store.calls.lock().unwrap(), policy.attempts_max);
        let want: u64 = (1..policy.attempts_max).map(|a| policy.backoff_ms(a)).sum();
        // madsim charges a few microseconds per scheduling step on top of the sleeps.
        assert!(waited >= Duration::from_millis(want) && waited < Duration::from_millis(want + 5), "waited {waited:?}, backoff {want} ms");
    }

    #[test]
    fn access_denied_and_no_such_key_are_not_retried() {
        for kind in [ObjectErrorKind::AccessDenied, ObjectErrorKind::NoSuchKey] {
            let store = scripted(&[kind]);
            let e = block_on(with_retries(&store, &RetryPolicy::DEFAULT, &get())).unwrap_err();
            assert_eq!((e.kind, e.attempts), (kind, 1));
            assert_eq!(*store.calls.lock().unwrap(), 1);
        }
    }
}

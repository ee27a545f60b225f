//! The backup node (runbook 004 §5.1): a node of its own that keeps the server's full backups
//! and archive segments as objects, reached over the network with its own protocol messages.
//!
//! An object is stored whole and durably (temp file, sync, rename, directory sync) under
//! `objects/NAME`; a put carries the SHA-256 of its bytes and is refused
//! (`backup:digestMismatch`) when they arrived otherwise, so what the node holds is what the
//! server sent, until its disk loses or damages it, which the manifests then reveal. Names:
//! `full/ID.db` + `full/ID.db.json` (a backup and its manifest), `wal/TIMELINE/ID.seg` +
//! `.json` (an archive segment). The manifest is put after the bytes: an object without its
//! manifest is an upload that did not finish.
//!
//! Retention ([`Retention`]) keeps the newest full backups by count, drops older ones past an
//! age (never the newest), and drops the segments no kept backup needs.

use std::net::SocketAddr;
use std::time::Duration;

use madsim::net::Endpoint;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fs::{self, FileSystem, FsError};
use crate::proto::{self, PROTOCOL_VERSION};
use crate::server::{BackupManifest, FullBackup, Segment, SegmentManifest};

/// The backup node's port.
pub const BACKUP_PORT: u16 = 7100;
/// Network tag of requests to the backup node.
pub const TAG_BACKUP_REQUEST: u64 = 21;
/// Network tag of its responses.
pub const TAG_BACKUP_RESPONSE: u64 = 22;

/// Requests to the backup node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum BackupRequest {
    Put {
        name: String,
        #[serde(with = "crate::proto::hex_bytes")]
        bytes: Vec<u8>,
        sha256: String,
    },
    Get {
        name: String,
    },
    List {
        prefix: String,
    },
    Delete {
        name: String,
    },
}

/// The backup node's answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum BackupResponse {
    Stored {
        name: String,
    },
    Object {
        name: String,
        #[serde(with = "crate::proto::hex_bytes")]
        bytes: Vec<u8>,
    },
    Names {
        names: Vec<String>,
    },
    Deleted {
        name: String,
    },
    Missing {
        name: String,
    },
    Refused {
        code: String,
        message: String,
    },
}

/// The node's objects, on its own storage.
pub struct BackupStore<'a> {
    fs: &'a (dyn FileSystem + Sync),
}

fn object(name: &str) -> String {
    format!("objects/{name}")
}

impl<'a> BackupStore<'a> {
    pub fn new(fs: &'a (dyn FileSystem + Sync)) -> Self {
        BackupStore { fs }
    }

    /// Answers one request.
    pub fn handle(&self, req: BackupRequest) -> BackupResponse {
        let refused = |e: FsError| BackupResponse::Refused { code: e.code().into(), message: e.to_string() };
        match req {
            BackupRequest::Put { name, bytes, sha256 } => {
                if hex::encode(Sha256::digest(&bytes)) != sha256 {
                    return BackupResponse::Refused {
                        code: "backup:digestMismatch".into(),
                        message: format!("{name} arrived with other bytes than its digest"),
                    };
                }
                match fs::publish(self.fs, &object(&name), &bytes) {
                    Ok(()) => BackupResponse::Stored { name },
                    Err(e) => refused(e),
                }
            }
            BackupRequest::Get { name } => match self.fs.read(&object(&name)) {
                Ok(bytes) => BackupResponse::Object { name, bytes },
                Err(FsError::NotFound { .. }) => BackupResponse::Missing { name },
                Err(e) => refused(e),
            },
            BackupRequest::List { prefix } => match self.fs.list(&object(&prefix)) {
                Ok(names) => BackupResponse::Names {
                    names: names.into_iter().filter(|n| !n.ends_with(".tmp")).filter_map(|n| n.strip_prefix("objects/").map(String::from)).collect(),
                },
                Err(e) => refused(e),
            },
            BackupRequest::Delete { name } => match self.fs.remove(&object(&name)).and_then(|_| self.fs.sync_dir()) {
                Ok(()) | Err(FsError::NotFound { .. }) => BackupResponse::Deleted { name },
                Err(e) => refused(e),
            },
        }
    }
}

/// Serves the node's objects on `ep` until the endpoint fails.
pub async fn serve(ep: Endpoint, fs: &(dyn FileSystem + Sync)) -> std::io::Result<()> {
    let store = BackupStore::new(fs);
    loop {
        let (payload, from) = ep.recv_from_raw(TAG_BACKUP_REQUEST).await?;
        let Ok(bytes) = payload.downcast::<Vec<u8>>() else { continue };
        let (id, resp) = match proto::decode::<BackupRequest>(&bytes) {
            Ok(env) => (env.id, store.handle(env.body)),
            Err(e) => (0, BackupResponse::Refused { code: "backup:badRequest".into(), message: e.to_string() }),
        };
        ep.send_to_raw(from, TAG_BACKUP_RESPONSE, Box::new(proto::encode(PROTOCOL_VERSION, id, &resp))).await?;
    }
}

/// Why a call to the backup node failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupError {
    /// No answer in time (the node is down or partitioned away), or the network refused.
    Unreachable { detail: String },
    /// The node answered with a refusal.
    Refused { code: String, message: String },
    /// The object is not there.
    Missing { name: String },
    /// The object's manifest does not parse.
    Manifest { name: String, detail: String },
}

impl BackupError {
    pub fn code(&self) -> String {
        match self {
            BackupError::Unreachable { .. } => "backup:unreachable".into(),
            BackupError::Refused { code, .. } => code.clone(),
            BackupError::Missing { .. } => "backup:missing".into(),
            BackupError::Manifest { .. } => "backup:manifest".into(),
        }
    }
}

impl std::fmt::Display for BackupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackupError::Unreachable { detail } => write!(f, "backup:unreachable: {detail}"),
            BackupError::Refused { code, message } => write!(f, "{code}: {message}"),
            BackupError::Missing { name } => write!(f, "backup:missing: no object {name}"),
            BackupError::Manifest { name, detail } => write!(f, "backup:manifest: {name}: {detail}"),
        }
    }
}

impl std::error::Error for BackupError {}

/// A connection to the backup node.
pub struct BackupClient {
    ep: Endpoint,
    node: SocketAddr,
    next_id: u64,
    timeout: Duration,
    attempts: u32,
}

/// Answers from earlier, timed-out calls that one call skips at most.
const STALE_ANSWERS_MAX: u32 = 64;

impl BackupClient {
    pub async fn bind(node: SocketAddr, timeout: Duration) -> Result<Self, BackupError> {
        let ep = Endpoint::bind("0.0.0.0:0").await.map_err(|e| BackupError::Unreachable { detail: format!("bind: {e}") })?;
        Ok(BackupClient { ep, node, next_id: 0, timeout, attempts: 1 })
    }

    /// Sends each request up to `attempts` times (at least once) while no answer comes in time:
    /// every request of the protocol is idempotent, so a lost message costs only a retry.
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    async fn call(&mut self, req: &BackupRequest) -> Result<BackupResponse, BackupError> {
        let mut attempt = 1;
        loop {
            match self.call_once(req).await {
                Err(BackupError::Unreachable { .. }) if attempt < self.attempts => attempt += 1,
                r => return r,
            }
        }
    }

    async fn call_once(&mut self, req: &BackupRequest) -> Result<BackupResponse, BackupError> {
        self.next_id += 1;
        let id = self.next_id;
        let unreachable = |detail: String| BackupError::Unreachable { detail };
        let bytes = proto::encode(PROTOCOL_VERSION, id, req);
        self.ep.send_to_raw(self.node, TAG_BACKUP_REQUEST, Box::new(bytes)).await.map_err(|e| unreachable(format!("send: {e}")))?;
        let deadline = madsim::time::TimeHandle::current().now_instant() + self.timeout;
        for _ in 0..STALE_ANSWERS_MAX {
            let left = deadline.saturating_duration_since(madsim::time::TimeHandle::current().now_instant());
            let (payload, _) = match madsim::time::timeout(left, self.ep.recv_from_raw(TAG_BACKUP_RESPONSE)).await {
                Err(_) => return Err(unreachable(format!("no answer within {:?}", self.timeout))),
                Ok(Err(e)) => return Err(unreachable(format!("recv: {e}"))),
                Ok(Ok(x)) => x,
            };
            let Ok(bytes) = payload.downcast::<Vec<u8>>() else { continue };
            match proto::decode::<BackupResponse>(&bytes) {
                Ok(env) if env.id == id => {
                    return match env.body {
                        BackupResponse::Refused { code, message } => Err(BackupError::Refused { code, message }),
                        BackupResponse::Missing { name } => Err(BackupError::Missing { name }),
                        other => Ok(other),
                    };
                }
                _ => continue,
            }
        }
        Err(unreachable(format!("{STALE_ANSWERS_MAX} stale answers")))
    }

    /// Stores `bytes` as `name`.
    pub async fn put(&mut self, name: &str, bytes: &[u8]) -> Result<(), BackupError> {
        let req = BackupRequest::Put { name: name.into(), bytes: bytes.to_vec(), sha256: hex::encode(Sha256::digest(bytes)) };
        self.call(&req).await.map(|_| ())
    }

    /// The bytes of `name`.
    pub async fn get(&mut self, name: &str) -> Result<Vec<u8>, BackupError> {
        match self.call(&BackupRequest::Get { name: name.into() }).await? {
            BackupResponse::Object { bytes, .. } => Ok(bytes),
            other => Err(BackupError::Refused { code: "backup:unexpected".into(), message: format!("{other:?}") }),
        }
    }

    /// The names under `prefix`, in order.
    pub async fn list(&mut self, prefix: &str) -> Result<Vec<String>, BackupError> {
        match self.call(&BackupRequest::List { prefix: prefix.into() }).await? {
            BackupResponse::Names { names } => Ok(names),
            other => Err(BackupError::Refused { code: "backup:unexpected".into(), message: format!("{other:?}") }),
        }
    }

    pub async fn delete(&mut self, name: &str) -> Result<(), BackupError> {
        self.call(&BackupRequest::Delete { name: name.into() }).await.map(|_| ())
    }

    /// Ships a sealed archive segment: its bytes, then its manifest.
    pub async fn ship_segment(&mut self, s: &Segment) -> Result<(), BackupError> {
        let name = Segment::object_name(s.manifest.timeline, s.manifest.id);
        self.put(&name, &s.bytes).await?;
        self.put(&format!("{name}.json"), &serde_json::to_vec(&s.manifest).expect("a manifest serializes")).await
    }

    /// Ships a full backup: its bytes, then its manifest.
    pub async fn ship_backup(&mut self, b: &FullBackup) -> Result<(), BackupError> {
        let name = FullBackup::object_name(b.manifest.id);
        self.put(&name, &b.bytes).await?;
        self.put(&format!("{name}.json"), &serde_json::to_vec(&b.manifest).expect("a manifest serializes")).await
    }

    /// Every full backup with a manifest, as the node holds them (verification judges them).
    /// A backup whose bytes are gone comes back empty, so that it fails verification.
    pub async fn fetch_backups(&mut self) -> Result<Vec<FullBackup>, BackupError> {
        let mut out = Vec::new();
        for name in self.list("full/").await?.into_iter().filter(|n| n.ends_with(".json")) {
            let manifest: BackupManifest = self.manifest(&name).await?;
            let bytes = match self.get(name.trim_end_matches(".json")).await {
                Ok(b) => b,
                Err(BackupError::Missing { .. }) => Vec::new(),
                Err(e) => return Err(e),
            };
            out.push(FullBackup { manifest, bytes });
        }
        Ok(out)
    }

    /// Every archive segment with a manifest on `timeline`, in order; one whose bytes are gone
    /// is left out (the replay then stops at the gap).
    pub async fn fetch_segments(&mut self, timeline: u64) -> Result<Vec<Segment>, BackupError> {
        let mut out = Vec::new();
        for name in self.list(&format!("wal/{timeline:04}/")).await?.into_iter().filter(|n| n.ends_with(".json")) {
            let manifest: SegmentManifest = self.manifest(&name).await?;
            match self.get(name.trim_end_matches(".json")).await {
                Ok(bytes) => out.push(Segment { manifest, bytes }),
                Err(BackupError::Missing { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The highest archive timeline the node holds segments of (0: none).
    pub async fn timelines_max(&mut self) -> Result<u64, BackupError> {
        Ok(self.list("wal/").await?.iter().filter_map(|n| n.split('/').nth(1)?.parse::<u64>().ok()).max().unwrap_or(0))
    }

    async fn manifest<T: for<'de> Deserialize<'de>>(&mut self, name: &str) -> Result<T, BackupError> {
        let bytes = self.get(name).await?;
        serde_json::from_slice(&bytes).map_err(|e| BackupError::Manifest { name: name.into(), detail: e.to_string() })
    }
}

/// How long backups are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many full backups (at least 1).
    pub backups_max: usize,
    /// Drop full backups older than this, except the newest.
    pub age_ms_max: i64,
}

impl Retention {
    /// The object names retention drops, given every backup's and segment's manifest: backups
    /// past the count or the age (the newest always stays), and the segments of a timeline that
    /// end at or before the oldest kept backup of that timeline.
    pub fn expired(&self, backups: &[BackupManifest], segments: &[SegmentManifest], now_ms: i64) -> Vec<String> {
        let mut newest_first: Vec<&BackupManifest> = backups.iter().collect();
        newest_first.sort_by_key(|b| std::cmp::Reverse((b.taken_ms, b.id)));
        let keep = |i: usize, b: &BackupManifest| i == 0 || (i < self.backups_max.max(1) && now_ms.saturating_sub(b.taken_ms) <= self.age_ms_max);
        let mut out = Vec::new();
        let mut kept: Vec<&BackupManifest> = Vec::new();
        for (i, b) in newest_first.into_iter().enumerate() {
            if keep(i, b) {
                kept.push(b);
            } else {
                let name = FullBackup::object_name(b.id);
                out.push(format!("{name}.json"));
                out.push(name);
            }
        }
        for s in segments {
            let floor = kept.iter().filter(|b| b.timeline == s.timeline).map(|b| b.through_seq).min();
            let later_timeline = kept.iter().all(|b| b.timeline > s.timeline);
            if floor.is_some_and(|f| s.last_seq <= f) || (later_timeline && !kept.is_empty()) {
                let name = Segment::object_name(s.timeline, s.id);
                out.push(format!("{name}.json"));
                out.push(name);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(id: u64, taken_ms: i64, through_seq: u64) -> BackupManifest {
        BackupManifest { id, timeline: 1, taken_ms, through_seq, tenants: vec![], size: 0, sha256: String::new() }
    }

    fn segment(id: u64, last_seq: u64) -> SegmentManifest {
        SegmentManifest { timeline: 1, id, first_seq: last_seq, last_seq, count: 1, tenants: Default::default(), sha256: String::new() }
    }

    #[test]
    fn the_store_refuses_bytes_that_do_not_match_their_digest_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let fs = crate::fs::StdFs::new(dir.path());
        let store = BackupStore::new(&fs);
        let put = |bytes: &[u8], sha: String| store.handle(BackupRequest::Put { name: "full/00000001.db".into(), bytes: bytes.to_vec(), sha256: sha });
        assert!(matches!(put(b"pages", hex::encode(Sha256::digest(b"other"))), BackupResponse::Refused { ref code, .. } if code == "backup:digestMismatch"));
        assert!(matches!(store.handle(BackupRequest::Get { name: "full/00000001.db".into() }), BackupResponse::Missing { .. }));
        assert!(matches!(put(b"pages", hex::encode(Sha256::digest(b"pages"))), BackupResponse::Stored { .. }));
        assert_eq!(
            store.handle(BackupRequest::Get { name: "full/00000001.db".into() }),
            BackupResponse::Object { name: "full/00000001.db".into(), bytes: b"pages".to_vec() }
        );
        assert_eq!(store.handle(BackupRequest::List { prefix: "full/".into() }), BackupResponse::Names { names: vec!["full/00000001.db".into()] });
        assert!(matches!(store.handle(BackupRequest::Delete { name: "full/00000001.db".into() }), BackupResponse::Deleted { .. }));
        assert_eq!(store.handle(BackupRequest::List { prefix: "full/".into() }), BackupResponse::Names { names: vec![] });
    }

    #[test]
    fn retention_keeps_the_newest_by_count_and_age_and_the_segments_they_need() {
        let r = Retention { backups_max: 2, age_ms_max: 2_000 };
        let backups = [backup(1, 0, 10), backup(2, 500, 20), backup(3, 2_000, 30)];
        let segments = [segment(1, 10), segment(2, 20), segment(3, 25), segment(4, 35)];
        let full = |gone: &[String]| gone.iter().filter(|n| n.ends_with(".db")).cloned().collect::<Vec<_>>();
        let segs = |gone: &[String]| gone.iter().filter(|n| n.ends_with(".seg")).cloned().collect::<Vec<_>>();
        // At 2_100 both newest are young: the count drops the oldest, and the segments up to
        // the oldest kept backup's point go with it.
        let gone = r.expired(&backups, &segments, 2_100);
        assert_eq!(full(&gone), vec!["full/00000001.db".to_string()]);
        assert_eq!(segs(&gone), vec!["wal/0001/00000001.seg".to_string(), "wal/0001/00000002.seg".into()]);
        // At 3_000 backup 2 is past the age: only the newest stays, and what replays after it.
        let gone = r.expired(&backups, &segments, 3_000);
        assert_eq!(full(&gone).len(), 2);
        assert_eq!(segs(&gone).len(), 3, "segment 4 is needed to replay past backup 3");
        // The newest is kept however old.
        assert!(r.expired(&backups[..1], &[], 1_000_000).is_empty());
    }

    #[test]
    fn a_client_ships_and_fetches_over_the_network() {
        madsim::runtime::Runtime::new().block_on(async {
            let handle = madsim::runtime::Handle::current();
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().to_path_buf();
            let addr: SocketAddr = "10.0.0.9:7100".parse().unwrap();
            handle.create_node().name("backup").ip(addr.ip()).build().spawn(async move {
                let ep = Endpoint::bind(addr).await.unwrap();
                let fs = crate::fs::StdFs::new(root);
                let _ = serve(ep, &fs).await;
            });
            let client_node = handle.create_node().name("server").ip("10.0.0.1".parse().unwrap()).build();
            client_node
                .spawn(async move {
                    let mut c = BackupClient::bind(addr, Duration::from_secs(1)).await.unwrap();
                    let events = vec![crate::store::EventRow {
                        seq: 1,
                        op_id: "op".into(),
                        tenant: "acme".into(),
                        aggregate: "a".into(),
                        kind: "k".into(),
                        replica: "r".into(),
                        write_id: 1,
                        payload: vec![1],
                        prev_hash: vec![0; 32],
                        hash: vec![1; 32],
                    }];
                    let seg = Segment::seal(1, 1, &events);
                    c.ship_segment(&seg).await.unwrap();
                    assert_eq!(c.fetch_segments(1).await.unwrap(), vec![seg]);
                    assert_eq!(c.timelines_max().await.unwrap(), 1);
                    assert_eq!(c.get("nothing").await, Err(BackupError::Missing { name: "nothing".into() }));
                })
                .await
                .unwrap();
        });
    }

    #[test]
    fn a_lost_request_is_sent_again_within_the_attempts() {
        madsim::runtime::Runtime::new().block_on(async {
            let handle = madsim::runtime::Handle::current();
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().to_path_buf();
            let addr: SocketAddr = "10.0.0.9:7100".parse().unwrap();
            let backup = handle.create_node().name("backup").ip(addr.ip()).build();
            backup.spawn(async move {
                let ep = Endpoint::bind(addr).await.unwrap();
                let fs = crate::fs::StdFs::new(root);
                let _ = serve(ep, &fs).await;
            });
            let backup_id = backup.id();
            let client_node = handle.create_node().name("server").ip("10.0.0.1".parse().unwrap()).build();
            client_node
                .spawn(async move {
                    let net = madsim::net::NetSim::current();
                    // Cut off for 1.5 s: one try of 1 s cannot get through, three can.
                    net.clog_node(backup_id);
                    madsim::task::spawn(async move {
                        madsim::time::sleep(Duration::from_millis(1_500)).await;
                        madsim::net::NetSim::current().unclog_node(backup_id);
                    });
                    let mut once = BackupClient::bind(addr, Duration::from_secs(1)).await.unwrap();
                    assert!(matches!(once.list("full/").await, Err(BackupError::Unreachable { .. })));
                    let mut thrice = BackupClient::bind(addr, Duration::from_secs(1)).await.unwrap().with_attempts(3);
                    assert_eq!(thrice.list("full/").await, Ok(vec![]));
                })
                .await
                .unwrap();
        });
    }
}

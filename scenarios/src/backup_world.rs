//! The backup node in the world (runbook 004 §5.1): a node of its own, `backup`, that keeps the
//! server's full backups and archive segments as objects on its simulated disk, reached over the
//! network with the backup node's protocol ([`drill_stack::backup_node`]).
//!
//! The server's archiver runs on the server's node: every tick it takes the segments the store
//! sealed and has not shipped, ships each (bytes, then manifest) and records it shipped. A
//! segment the network lost stays unshipped and goes again on the next tick, so the archive's
//! window (what a lost disk would take with it) is what the store reports.
//!
//! The operator's commands that reach the backup node (ship a full backup, fetch the backups and
//! the segments of a timeline) run on the server's node too; each request is sent again a
//! bounded number of times while the network loses it (every request of the protocol is
//! idempotent).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drill_sim::disk::DiskFaults;
use drill_sim::trace;
use drill_stack::backup_node::{self, BackupClient, BackupError, BACKUP_PORT};
use drill_stack::server::{BackupManifest, FullBackup, Segment, Server};
use madsim::task::NodeId;
use serde_json::json;

use crate::drills::harness::Ctx;
use crate::node::lock;
use crate::sim_fs::SimFs;

/// The backup node.
pub const BACKUP_NODE: &str = "backup";
pub use crate::node::BACKUP_IP;
/// How long the server waits for one answer of the backup node.
pub const BACKUP_TIMEOUT_MS: u64 = 400;
/// How often the archiver ships what the store sealed.
pub const SHIP_INTERVAL_MS: u64 = 25;
/// Ticks an archiver runs at most (far past any drill; reaching it is a drill that never ends).
const SHIP_TICKS_MAX: u64 = 1_000_000;
/// Tries of one request of an operator command before the backup node is reported unreachable.
pub const ATTEMPTS_MAX: u32 = 20;
/// Ticks a drill waits for the archiver to ship everything sealed.
const DRAIN_TICKS_MAX: u32 = 400;

fn addr() -> SocketAddr {
    SocketAddr::new(BACKUP_IP, BACKUP_PORT)
}

/// The backup node of one world, and the server it backs up.
pub struct BackupWorld {
    pub node: NodeId,
    server: NodeId,
    server_slot: Arc<Mutex<Option<Server>>>,
}

async fn backup_main() {
    let fs = SimFs::current();
    let ep = match madsim::net::Endpoint::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), BACKUP_PORT)).await {
        Ok(ep) => ep,
        Err(e) => {
            trace::emit(BACKUP_NODE, "node.bind_failed", json!({"message": e.to_string()}));
            return;
        }
    };
    let _ = backup_node::serve(ep, &fs).await;
}

/// The server's archiver: ships every sealed, unshipped segment, tick after tick.
async fn archiver(slot: Arc<Mutex<Option<Server>>>) {
    let mut client = None;
    for _ in 0..SHIP_TICKS_MAX {
        madsim::time::sleep(Duration::from_millis(SHIP_INTERVAL_MS)).await;
        if client.is_none() {
            client = BackupClient::bind(addr(), Duration::from_millis(BACKUP_TIMEOUT_MS)).await.ok();
        }
        let Some(c) = client.as_mut() else { continue };
        let pending = match lock(&slot).as_ref().map(|s| s.unshipped_segments()) {
            Some(Ok(p)) => p,
            _ => continue,
        };
        for seg in pending {
            let (timeline, id) = (seg.manifest.timeline, seg.manifest.id);
            match c.ship_segment(&seg).await {
                Ok(()) => {
                    let marked = lock(&slot).as_ref().map(|s| s.mark_shipped(timeline, id));
                    trace::emit(
                        "server",
                        "archive.shipped",
                        json!({"timeline": timeline, "segment": id, "events": seg.manifest.count, "marked": matches!(marked, Some(Ok(())))}),
                    );
                }
                Err(e) => {
                    // The rest waits for the next tick: segments ship in order.
                    trace::emit("server", "archive.ship_failed", json!({"timeline": timeline, "segment": id, "error": e.code()}));
                    break;
                }
            }
        }
    }
}

/// A client of the backup node that sends each request again while the network loses it.
async fn client() -> Result<BackupClient, BackupError> {
    Ok(BackupClient::bind(addr(), Duration::from_millis(BACKUP_TIMEOUT_MS)).await?.with_attempts(ATTEMPTS_MAX))
}

impl BackupWorld {
    /// Starts the backup node and the server's archiver, in `cx`'s world.
    pub fn start(cx: &mut Ctx) -> BackupWorld {
        let handle = madsim::runtime::Handle::current();
        let node = handle.create_node().name(BACKUP_NODE).ip(BACKUP_IP).init(backup_main).build();
        crate::node::lock(&cx.nodes).add(BACKUP_NODE, node.id(), DiskFaults::none(), &cx.seeds);
        trace::emit(BACKUP_NODE, "node.start", json!({"port": BACKUP_PORT}));
        let server = handle.get_node(cx.server).expect("the server node exists");
        server.spawn(archiver(cx.server_slot.clone()));
        BackupWorld { node: node.id(), server: cx.server, server_slot: cx.server_slot.clone() }
    }

    /// Runs `task` on the server's node (its disk, its address) and returns what it returns.
    async fn on_server<T: Send + 'static>(&self, task: impl Future<Output = T> + Send + 'static) -> T {
        let h = madsim::runtime::Handle::current().get_node(self.server).expect("the server node exists");
        h.spawn(task).await.expect("a backup command on the server's node finishes")
    }

    /// The operator's daily full backup: taken by the server's online backup API and shipped to
    /// the backup node. Returns its manifest.
    pub async fn take_backup(&self, id: u64, taken_ms: i64) -> Result<BackupManifest, String> {
        let slot = self.server_slot.clone();
        let r = self
            .on_server(async move {
                let backup = {
                    let guard = lock(&slot);
                    let s = guard.as_ref().ok_or_else(|| "the server is not open".to_string())?;
                    s.full_backup(id, taken_ms).map_err(|e| e.to_string())?
                };
                let shipped = match client().await {
                    Ok(mut c) => c.ship_backup(&backup).await,
                    Err(e) => Err(e),
                };
                shipped.map(|()| backup.manifest).map_err(|e| e.to_string())
            })
            .await;
        let detail = match &r {
            Ok(m) => json!({"id": id, "through_seq": m.through_seq, "bytes": m.size, "shipped": true}),
            Err(e) => json!({"id": id, "shipped": false, "error": e}),
        };
        trace::emit("server", "backup.full", detail);
        r
    }

    /// Every full backup the backup node holds, as it holds them.
    pub async fn fetch_backups(&self) -> Result<Vec<FullBackup>, BackupError> {
        self.on_server(async move { client().await?.fetch_backups().await }).await
    }

    /// Every archive segment of `timeline` the backup node holds, and the highest timeline it
    /// holds segments of.
    pub async fn fetch_segments(&self, timeline: u64) -> Result<(Vec<Segment>, u64), BackupError> {
        self.on_server(async move {
            let mut c = client().await?;
            let segments = c.fetch_segments(timeline).await?;
            Ok((segments, c.timelines_max().await?))
        })
        .await
    }

    /// Waits until the archiver shipped every segment the store sealed; false when it did not
    /// within the drill's patience.
    pub async fn drained(&self) -> bool {
        for _ in 0..DRAIN_TICKS_MAX {
            let slot = self.server_slot.clone();
            let empty = self.on_server(async move { matches!(lock(&slot).as_ref().map(|s| s.archive_window()), Some(Ok(w)) if w.events == 0) }).await;
            if empty {
                return true;
            }
            madsim::time::sleep(Duration::from_millis(SHIP_INTERVAL_MS)).await;
        }
        false
    }
}

//! The continuous archive of committed events (runbook 004 §5.1, "continuous WAL archiving"):
//! every push that appends events seals them, in the push's own transaction, into a segment
//! with a SHA-256 manifest; the segments are shipped to a backup node and replayed on restore.
//!
//! A segment's bytes are its events as JSON lines, in order; its manifest names the timeline,
//! the sequence range, the count per tenant and the SHA-256 of the bytes, so a lost or corrupt
//! object is found before anything is replayed from it. Each restore starts a new *timeline*:
//! segments sealed after a restore never share a name with the ones of the history it left.
//!
//! The archive mode says when a push is acknowledged ([`ArchiveMode`]): *synchronous*, only
//! once every segment holding its events is on the backup node ([`Server::acknowledge`]
//! answers `retryLater: archivePending` until then; the push is idempotent, so the device's
//! retry gets the acknowledgement); *asynchronous*, at once, with the events not yet shipped
//! bounded by a window ([`ArchiveWindow`], reported) beyond which pushes are answered
//! `retryLater: archiveWindowFull`.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::StoreError;
use crate::proto::{Response, WireEvent};
use crate::store::{self, EventRow};

use super::{Refusal, Server};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS archive_segments(
    timeline INTEGER NOT NULL, id INTEGER NOT NULL, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, count INTEGER NOT NULL,
    manifest TEXT NOT NULL, bytes BLOB NOT NULL, shipped INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(timeline, id));
";

const TIMELINE: &str = "archive/timeline";
/// The operator's choice of archive mode, over the server's options.
const MODE: &str = "archive/mode";

/// When a push is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveMode {
    /// Only once its segment is on the backup node: no acknowledged push can be lost.
    Synchronous,
    /// At once; at most `window_events_max` committed events may wait to be shipped.
    Asynchronous { window_events_max: u64 },
}

/// What a segment holds, and the digest that proves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentManifest {
    pub timeline: u64,
    pub id: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub count: u64,
    /// Events per tenant.
    pub tenants: BTreeMap<String, u64>,
    /// SHA-256 of the segment's bytes, hex.
    pub sha256: String,
}

/// A sealed segment: its manifest and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub manifest: SegmentManifest,
    pub bytes: Vec<u8>,
}

/// Why a segment cannot be replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentError {
    /// The bytes do not match the manifest's digest.
    Digest { id: u64 },
    /// The bytes do not parse, or do not hold what the manifest says.
    Malformed { id: u64, detail: String },
}

impl SegmentError {
    pub fn code(&self) -> &'static str {
        match self {
            SegmentError::Digest { .. } => "archive:segmentDigest",
            SegmentError::Malformed { .. } => "archive:segmentMalformed",
        }
    }
}

impl std::fmt::Display for SegmentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SegmentError::Digest { id } => write!(f, "archive:segmentDigest: segment {id} does not match its manifest's SHA-256"),
            SegmentError::Malformed { id, detail } => write!(f, "archive:segmentMalformed: segment {id}: {detail}"),
        }
    }
}

impl Segment {
    /// Seals `events` (in order, non-empty) as segment `id` of `timeline`.
    pub fn seal(timeline: u64, id: u64, events: &[EventRow]) -> Segment {
        assert!(!events.is_empty(), "a segment holds at least one event");
        let mut bytes = Vec::new();
        let mut tenants: BTreeMap<String, u64> = BTreeMap::new();
        for e in events {
            serde_json::to_writer(&mut bytes, &WireEvent::from(e.clone())).expect("an event serializes");
            bytes.push(b'\n');
            *tenants.entry(e.tenant.clone()).or_default() += 1;
        }
        let manifest = SegmentManifest {
            timeline,
            id,
            first_seq: events[0].seq,
            last_seq: events[events.len() - 1].seq,
            count: events.len() as u64,
            tenants,
            sha256: hex::encode(Sha256::digest(&bytes)),
        };
        Segment { manifest, bytes }
    }

    /// The object name of the segment's bytes on the backup node (its manifest is this plus
    /// `.json`).
    pub fn object_name(timeline: u64, id: u64) -> String {
        format!("wal/{timeline:04}/{id:08}.seg")
    }

    /// The events, once the bytes match the manifest.
    pub fn verify(&self) -> Result<Vec<EventRow>, SegmentError> {
        let id = self.manifest.id;
        if hex::encode(Sha256::digest(&self.bytes)) != self.manifest.sha256 {
            return Err(SegmentError::Digest { id });
        }
        let mut events = Vec::new();
        for line in self.bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let w: WireEvent = serde_json::from_slice(line).map_err(|e| SegmentError::Malformed { id, detail: e.to_string() })?;
            events.push(EventRow::from(w));
        }
        let range_ok = events.first().map(|e| e.seq) == Some(self.manifest.first_seq) && events.last().map(|e| e.seq) == Some(self.manifest.last_seq);
        if events.len() as u64 != self.manifest.count || !range_ok || events.windows(2).any(|w| w[0].seq >= w[1].seq) {
            return Err(SegmentError::Malformed { id, detail: "events do not match the manifest's range and count".into() });
        }
        Ok(events)
    }
}

/// The events committed but not yet on the backup node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchiveWindow {
    pub segments: u64,
    pub events: u64,
}

impl ArchiveMode {
    fn encode(mode: Option<ArchiveMode>) -> String {
        match mode {
            None => "off".into(),
            Some(ArchiveMode::Synchronous) => "synchronous".into(),
            Some(ArchiveMode::Asynchronous { window_events_max }) => format!("asynchronous:{window_events_max}"),
        }
    }

    fn decode(v: &str) -> Result<Option<ArchiveMode>, StoreError> {
        let window = v.strip_prefix("asynchronous:").map(|n| n.parse::<u64>());
        match (v, window) {
            ("off", _) => Ok(None),
            ("synchronous", _) => Ok(Some(ArchiveMode::Synchronous)),
            (_, Some(Ok(window_events_max))) => Ok(Some(ArchiveMode::Asynchronous { window_events_max })),
            _ => Err(StoreError::Invalid { detail: format!("archive mode {v}") }),
        }
    }
}

/// The archive mode in force: the operator's choice kept in the store, else `default` (the
/// server's options).
pub(super) fn mode(c: &Connection, default: Option<ArchiveMode>) -> Result<Option<ArchiveMode>, StoreError> {
    match store::meta_get(c, MODE)? {
        Some(v) => ArchiveMode::decode(&v),
        None => Ok(default),
    }
}

/// The timeline new segments are sealed on.
pub(super) fn timeline(c: &Connection) -> Result<u64, StoreError> {
    Ok(store::meta_get(c, TIMELINE)?.and_then(|v| v.parse().ok()).unwrap_or(1))
}

pub(super) fn set_timeline(c: &Connection, timeline: u64) -> Result<(), StoreError> {
    store::meta_set(c, TIMELINE, &timeline.to_string())
}

/// Seals what a push appended, inside its transaction.
pub(super) fn seal(c: &Connection, appended: &[EventRow]) -> Result<(), StoreError> {
    if appended.is_empty() {
        return Ok(());
    }
    let tl = timeline(c)?;
    let id: u64 = c.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM archive_segments WHERE timeline = ?1", [tl], |r| r.get(0))?;
    insert(c, &Segment::seal(tl, id, appended), false)
}

pub(super) fn insert(c: &Connection, s: &Segment, shipped: bool) -> Result<(), StoreError> {
    let m = &s.manifest;
    c.execute(
        "INSERT OR REPLACE INTO archive_segments(timeline, id, first_seq, last_seq, count, manifest, bytes, shipped) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        rusqlite::params![m.timeline, m.id, m.first_seq, m.last_seq, m.count, serde_json::to_string(m).expect("a manifest serializes"), s.bytes, shipped],
    )?;
    Ok(())
}

fn window(c: &Connection) -> Result<ArchiveWindow, StoreError> {
    let (segments, events): (u64, u64) =
        c.query_row("SELECT COUNT(*), COALESCE(SUM(count), 0) FROM archive_segments WHERE shipped = 0", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(ArchiveWindow { segments, events })
}

/// The last sequence number pulls may serve: with a synchronous archive, the one before the
/// first event not yet shipped; otherwise every event.
pub(super) fn visible_through(c: &Connection, mode: Option<ArchiveMode>) -> Result<u64, StoreError> {
    if mode != Some(ArchiveMode::Synchronous) {
        return Ok(u64::MAX);
    }
    let first: Option<u64> = c.query_row("SELECT MIN(first_seq) FROM archive_segments WHERE shipped = 0", [], |r| r.get(0))?;
    Ok(first.map_or(u64::MAX, |f| f - 1))
}

/// Refuses a push while the asynchronous window is full.
pub(super) fn check_window(c: &Connection, mode: Option<ArchiveMode>) -> Result<(), Refusal> {
    if let Some(ArchiveMode::Asynchronous { window_events_max }) = mode {
        let w = window(c)?;
        if w.events >= window_events_max {
            return Err(Refusal::Answer(Response::RetryLater {
                code: "archiveWindowFull".into(),
                message: format!("{} committed events wait to be archived (window {window_events_max}): retry later", w.events),
            }));
        }
    }
    Ok(())
}

fn manifest_of(v: &str) -> Result<SegmentManifest, StoreError> {
    serde_json::from_str(v).map_err(|e| StoreError::Invalid { detail: format!("segment manifest: {e}") })
}

impl Server {
    /// Segments sealed but not yet shipped, oldest first.
    pub fn unshipped_segments(&self) -> Result<Vec<Segment>, StoreError> {
        let mut st = self.conn.prepare_cached("SELECT manifest, bytes FROM archive_segments WHERE shipped = 0 ORDER BY timeline, id")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (m, bytes) = row?;
            out.push(Segment { manifest: manifest_of(&m)?, bytes });
        }
        Ok(out)
    }

    /// Records that segment `id` of `timeline` is on the backup node. Bookkeeping of the
    /// archive, allowed in every mode.
    pub fn mark_shipped(&self, timeline: u64, id: u64) -> Result<(), StoreError> {
        self.conn.execute("UPDATE archive_segments SET shipped = 1 WHERE timeline = ?1 AND id = ?2", rusqlite::params![timeline, id])?;
        Ok(())
    }

    /// The archive mode in force.
    pub fn archive_mode(&self) -> Result<Option<ArchiveMode>, StoreError> {
        mode(&self.conn, self.options.archive)
    }

    /// Sets the archive mode (runbook 004 §5.1: continuous archiving is a setting of the
    /// server), kept in the store over the server's options. An administrative action, allowed
    /// in every mode; from the next push on, committed events are sealed (or no longer are).
    pub fn set_archive_mode(&self, mode: Option<ArchiveMode>) -> Result<(), StoreError> {
        store::meta_set(&self.conn, MODE, &ArchiveMode::encode(mode))
    }

    /// The committed events not yet on the backup node.
    pub fn archive_window(&self) -> Result<ArchiveWindow, StoreError> {
        window(&self.conn)
    }

    /// The timeline new segments are sealed on.
    pub fn archive_timeline(&self) -> Result<u64, StoreError> {
        timeline(&self.conn)
    }

    /// The answer to send for `resp`: with a synchronous archive, a push acknowledgement
    /// naming an event whose segment is not yet shipped becomes `retryLater: archivePending`
    /// (the events stay committed; the device's retry is recognised by its write ids and
    /// acknowledged once they are shipped). Every answer of [`Server::handle`] passes here.
    pub(super) fn acknowledge(&self, resp: Response) -> Result<Response, StoreError> {
        let Response::Pushed { accepted, .. } = &resp else { return Ok(resp) };
        if self.archive_mode()? != Some(ArchiveMode::Synchronous) {
            return Ok(resp);
        }
        for a in accepted {
            let pending: Option<u64> = self
                .conn
                .prepare_cached("SELECT id FROM archive_segments WHERE shipped = 0 AND first_seq <= ?1 AND last_seq >= ?1 LIMIT 1")?
                .query_row([a.seq], |r| r.get(0))
                .optional()?;
            if pending.is_some() {
                return Ok(Response::RetryLater {
                    code: "archivePending".into(),
                    message: format!("event {} is committed but not yet archived: retry later", a.seq),
                });
            }
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{PendingWrite, Request};
    use crate::server::ServerOptions;

    fn server(mode: ArchiveMode) -> (tempfile::TempDir, Server) {
        let dir = tempfile::tempdir().unwrap();
        let options = ServerOptions { archive: Some(mode), ..ServerOptions::default() };
        let s = Server::open_with(dir.path().join("server.db").to_str().unwrap(), options).unwrap();
        (dir, s)
    }

    fn push(s: &mut Server, id: u64) -> Response {
        let w = PendingWrite { write_id: id, op_id: Some(format!("op-{id}")), aggregate: "a".into(), kind: "k".into(), payload: vec![id as u8] };
        s.handle(Request::Push { tenant: "acme".into(), replica: "r1".into(), writes: vec![w], head: None })
    }

    #[test]
    fn segments_verify_and_find_a_flipped_byte() {
        let (_d, mut s) = server(ArchiveMode::Asynchronous { window_events_max: 10 });
        push(&mut s, 1);
        push(&mut s, 2);
        let segs = s.unshipped_segments().unwrap();
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[1].manifest.first_seq, 2);
        assert_eq!(segs[0].verify().unwrap(), s.events().unwrap()[..1].to_vec());
        let mut bad = segs[0].clone();
        bad.bytes[3] ^= 1;
        assert_eq!(bad.verify(), Err(SegmentError::Digest { id: 1 }));
        assert_eq!(Segment::object_name(1, 2), "wal/0001/00000002.seg");
    }

    #[test]
    fn a_synchronous_archive_acknowledges_only_shipped_pushes() {
        let (_d, mut s) = server(ArchiveMode::Synchronous);
        let answer = push(&mut s, 1);
        assert!(matches!(answer, Response::RetryLater { ref code, .. } if code == "archivePending"), "{answer:?}");
        assert_eq!(s.events().unwrap().len(), 1, "committed, not yet acknowledged");
        assert_eq!(push(&mut s, 1), answer, "a retry before the shipping is not acknowledged either");
        let seg = &s.unshipped_segments().unwrap()[0];
        s.mark_shipped(seg.manifest.timeline, seg.manifest.id).unwrap();
        // The device's retry is recognised by its write id and now acknowledged.
        let Response::Pushed { accepted, .. } = push(&mut s, 1) else { panic!("acknowledged once shipped") };
        assert_eq!(accepted[0].seq, 1);
        assert_eq!(s.events().unwrap().len(), 1);
    }

    #[test]
    fn the_operator_sets_the_archive_mode_over_the_options() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        let mut s = Server::open(path.to_str().unwrap()).unwrap();
        push(&mut s, 1);
        assert_eq!((s.archive_mode().unwrap(), s.unshipped_segments().unwrap().len()), (None, 0), "no archive by default");
        let mode = Some(ArchiveMode::Asynchronous { window_events_max: 5 });
        s.set_archive_mode(mode).unwrap();
        push(&mut s, 2);
        assert_eq!(s.unshipped_segments().unwrap().len(), 1, "sealed from the next push on");
        drop(s);
        let s = Server::open(path.to_str().unwrap()).unwrap();
        assert_eq!(s.archive_mode().unwrap(), mode, "kept in the store");
        s.set_archive_mode(Some(ArchiveMode::Synchronous)).unwrap();
        assert_eq!(s.archive_mode().unwrap(), Some(ArchiveMode::Synchronous));
        s.set_archive_mode(None).unwrap();
        assert_eq!(s.archive_mode().unwrap(), None);
    }

    #[test]
    fn an_asynchronous_archive_bounds_its_window() {
        let (_d, mut s) = server(ArchiveMode::Asynchronous { window_events_max: 2 });
        assert!(matches!(push(&mut s, 1), Response::Pushed { .. }), "an asynchronous archive acknowledges at once");
        push(&mut s, 2);
        assert_eq!(s.archive_window().unwrap(), ArchiveWindow { segments: 2, events: 2 });
        assert!(matches!(push(&mut s, 3), Response::RetryLater { ref code, .. } if code == "archiveWindowFull"));
        assert_eq!(s.events().unwrap().len(), 2, "a full window appends nothing");
        for seg in s.unshipped_segments().unwrap() {
            s.mark_shipped(seg.manifest.timeline, seg.manifest.id).unwrap();
        }
        assert!(matches!(push(&mut s, 3), Response::Pushed { .. }));
    }
}

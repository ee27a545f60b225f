//! The jobs database: `runs`, their `segments` and their `events`, on SQLite opened the way the
//! stack always opens it ([`crate::store::open`]).
//!
//! Segments and events are child rows of a run (foreign keys on). Each table has a canonical
//! JSON form of its rows, one object a line, ordered by key: the export writes it, the import
//! reads it, and a database's content can be compared with a snapshot byte for byte.
//!
//! Schema versions: 2 is current. A database at version 1 (the legacy layout, without timings,
//! stages, diagnostics or foreign keys) is migrated on open in one transaction, so a migration
//! that cannot finish rolls back and leaves the legacy database as it was; the open then fails
//! with `jobs:legacyMigrationBlocked` (runbook 001 Scenario F).

use rusqlite::{params, Connection, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::JobError;
use crate::fs::FileSystem;
use crate::store;

/// The schema version this code writes.
pub const SCHEMA_VERSION: u32 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs(
    run_id TEXT PRIMARY KEY,
    input TEXT NOT NULL,
    status TEXT NOT NULL,
    backend TEXT,
    diagnostics TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS segments(
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    idx INTEGER NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY(run_id, idx)
);
CREATE TABLE IF NOT EXISTS events(
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    stage TEXT NOT NULL,
    backend TEXT,
    detail TEXT NOT NULL,
    PRIMARY KEY(run_id, seq)
);
";

/// The legacy (version 1) layout, kept to create legacy databases in tests and drills.
pub const LEGACY_SCHEMA_V1: &str = "
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs(run_id TEXT PRIMARY KEY, input TEXT NOT NULL, status TEXT NOT NULL, backend TEXT);
CREATE TABLE segments(run_id TEXT NOT NULL, idx INTEGER NOT NULL, text TEXT NOT NULL);
CREATE TABLE events(run_id TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL);
INSERT INTO meta(key, value) VALUES ('schema_version', '1');
";

/// Version 1 to 2, in the transaction the caller holds: rename the legacy tables away, create
/// the current ones, copy every row (timings from the segment index, stage `legacy`), drop the
/// legacy tables. A row the current schema refuses (an orphan child row, a duplicate key) fails
/// the copy and the whole migration rolls back.
const MIGRATE_V1_TO_V2: &str = "
ALTER TABLE runs RENAME TO runs_v1;
ALTER TABLE segments RENAME TO segments_v1;
ALTER TABLE events RENAME TO events_v1;
CREATE TABLE runs(
    run_id TEXT PRIMARY KEY, input TEXT NOT NULL, status TEXT NOT NULL, backend TEXT,
    diagnostics TEXT NOT NULL, created_ms INTEGER NOT NULL
);
CREATE TABLE segments(
    run_id TEXT NOT NULL REFERENCES runs(run_id), idx INTEGER NOT NULL, start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL, text TEXT NOT NULL, PRIMARY KEY(run_id, idx)
);
CREATE TABLE events(
    run_id TEXT NOT NULL REFERENCES runs(run_id), seq INTEGER NOT NULL, kind TEXT NOT NULL,
    stage TEXT NOT NULL, backend TEXT, detail TEXT NOT NULL, PRIMARY KEY(run_id, seq)
);
INSERT INTO runs SELECT run_id, input, status, backend, '[]', 0 FROM runs_v1 ORDER BY run_id;
INSERT INTO segments SELECT run_id, idx, idx * 1000, idx * 1000 + 1000, text FROM segments_v1 ORDER BY run_id, idx;
INSERT INTO events SELECT run_id, seq, kind, 'legacy', NULL, detail FROM events_v1 ORDER BY run_id, seq;
DROP TABLE runs_v1;
DROP TABLE segments_v1;
DROP TABLE events_v1;
UPDATE meta SET value = '2' WHERE key = 'schema_version';
";

/// One run: its result, or for a failed run the shell with the diagnostics of every attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRow {
    pub run_id: String,
    pub input: String,
    /// `ok` or `failed`.
    pub status: String,
    /// The backend that produced the result.
    pub backend: Option<String>,
    /// Canonical JSON of the backend attempts.
    pub diagnostics: String,
    pub created_ms: i64,
}

/// One segment of a run's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRow {
    pub run_id: String,
    pub idx: u32,
    pub start_ms: u64,
    pub end_ms: u64,
    pub text: String,
}

/// One event of a run: a stage's outcome, a backend error, a remediation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRow {
    pub run_id: String,
    pub seq: u32,
    pub kind: String,
    pub stage: String,
    pub backend: Option<String>,
    /// Canonical JSON.
    pub detail: String,
}

/// The three tables, in the order they are exported and imported (parents first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Table {
    Runs,
    Segments,
    Events,
}

impl Table {
    pub const ALL: [Table; 3] = [Table::Runs, Table::Segments, Table::Events];

    pub fn name(self) -> &'static str {
        match self {
            Table::Runs => "runs",
            Table::Segments => "segments",
            Table::Events => "events",
        }
    }

    /// The snapshot file of the table.
    pub fn file(self) -> &'static str {
        match self {
            Table::Runs => "runs.jsonl",
            Table::Segments => "segments.jsonl",
            Table::Events => "events.jsonl",
        }
    }

    /// Whether rows of the table belong to a run (and are never updated in place).
    pub fn is_child(self) -> bool {
        self != Table::Runs
    }
}

/// A row of one of the tables.
pub trait Row: Serialize + DeserializeOwned + PartialEq + Clone {
    const TABLE: Table;
    /// The primary key, as text (`run_id`, or `run_id/idx`).
    fn key(&self) -> String;
    fn insert(&self, c: &Connection) -> rusqlite::Result<()>;
    /// Every row, by key.
    fn all(c: &Connection) -> rusqlite::Result<Vec<Self>>;
    /// The stored row with the same key, if any.
    fn stored(&self, c: &Connection) -> rusqlite::Result<Option<Self>>;
}

impl Row for RunRow {
    const TABLE: Table = Table::Runs;
    fn key(&self) -> String {
        self.run_id.clone()
    }
    fn insert(&self, c: &Connection) -> rusqlite::Result<()> {
        c.prepare_cached("INSERT INTO runs(run_id, input, status, backend, diagnostics, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?.execute(params![
            self.run_id,
            self.input,
            self.status,
            self.backend,
            self.diagnostics,
            self.created_ms
        ])?;
        Ok(())
    }
    fn all(c: &Connection) -> rusqlite::Result<Vec<Self>> {
        let mut st = c.prepare_cached("SELECT run_id, input, status, backend, diagnostics, created_ms FROM runs ORDER BY run_id")?;
        let rows = st.query_map([], run_from_row)?;
        rows.collect()
    }
    fn stored(&self, c: &Connection) -> rusqlite::Result<Option<Self>> {
        c.query_row("SELECT run_id, input, status, backend, diagnostics, created_ms FROM runs WHERE run_id = ?1", [&self.run_id], run_from_row).optional()
    }
}

fn run_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow { run_id: r.get(0)?, input: r.get(1)?, status: r.get(2)?, backend: r.get(3)?, diagnostics: r.get(4)?, created_ms: r.get(5)? })
}

impl RunRow {
    /// Replaces the stored run of the same id (overwrite, with the operator's intent).
    pub fn update(&self, c: &Connection) -> rusqlite::Result<()> {
        c.execute(
            "UPDATE runs SET input = ?2, status = ?3, backend = ?4, diagnostics = ?5, created_ms = ?6 WHERE run_id = ?1",
            params![self.run_id, self.input, self.status, self.backend, self.diagnostics, self.created_ms],
        )?;
        Ok(())
    }
}

impl Row for SegmentRow {
    const TABLE: Table = Table::Segments;
    fn key(&self) -> String {
        format!("{}/{}", self.run_id, self.idx)
    }
    fn insert(&self, c: &Connection) -> rusqlite::Result<()> {
        c.prepare_cached("INSERT INTO segments(run_id, idx, start_ms, end_ms, text) VALUES (?1, ?2, ?3, ?4, ?5)")?.execute(params![
            self.run_id,
            self.idx,
            self.start_ms,
            self.end_ms,
            self.text
        ])?;
        Ok(())
    }
    fn all(c: &Connection) -> rusqlite::Result<Vec<Self>> {
        let mut st = c.prepare_cached("SELECT run_id, idx, start_ms, end_ms, text FROM segments ORDER BY run_id, idx")?;
        let rows = st.query_map([], segment_from_row)?;
        rows.collect()
    }
    fn stored(&self, c: &Connection) -> rusqlite::Result<Option<Self>> {
        c.query_row("SELECT run_id, idx, start_ms, end_ms, text FROM segments WHERE run_id = ?1 AND idx = ?2", params![self.run_id, self.idx], segment_from_row)
            .optional()
    }
}

fn segment_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SegmentRow> {
    Ok(SegmentRow { run_id: r.get(0)?, idx: r.get(1)?, start_ms: r.get(2)?, end_ms: r.get(3)?, text: r.get(4)? })
}

impl Row for EventRow {
    const TABLE: Table = Table::Events;
    fn key(&self) -> String {
        format!("{}/{}", self.run_id, self.seq)
    }
    fn insert(&self, c: &Connection) -> rusqlite::Result<()> {
        c.prepare_cached("INSERT INTO events(run_id, seq, kind, stage, backend, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?.execute(params![
            self.run_id,
            self.seq,
            self.kind,
            self.stage,
            self.backend,
            self.detail
        ])?;
        Ok(())
    }
    fn all(c: &Connection) -> rusqlite::Result<Vec<Self>> {
        let mut st = c.prepare_cached("SELECT run_id, seq, kind, stage, backend, detail FROM events ORDER BY run_id, seq")?;
        let rows = st.query_map([], event_from_row)?;
        rows.collect()
    }
    fn stored(&self, c: &Connection) -> rusqlite::Result<Option<Self>> {
        c.query_row(
            "SELECT run_id, seq, kind, stage, backend, detail FROM events WHERE run_id = ?1 AND seq = ?2",
            params![self.run_id, self.seq],
            event_from_row,
        )
        .optional()
    }
}

fn event_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow { run_id: r.get(0)?, seq: r.get(1)?, kind: r.get(2)?, stage: r.get(3)?, backend: r.get(4)?, detail: r.get(5)? })
}

/// The canonical JSONL of `rows`: one JSON object a line, each line ending with `\n`.
pub fn to_jsonl<R: Row>(rows: &[R]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in rows {
        out.extend_from_slice(serde_json::to_string(r).expect("rows serialize").as_bytes());
        out.push(b'\n');
    }
    out
}

/// Every row of every table, read in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contents {
    pub runs: Vec<RunRow>,
    pub segments: Vec<SegmentRow>,
    pub events: Vec<EventRow>,
}

impl Contents {
    /// The canonical JSONL of one table.
    pub fn jsonl(&self, t: Table) -> Vec<u8> {
        match t {
            Table::Runs => to_jsonl(&self.runs),
            Table::Segments => to_jsonl(&self.segments),
            Table::Events => to_jsonl(&self.events),
        }
    }

    /// Rows of one table.
    pub fn count(&self, t: Table) -> u64 {
        (match t {
            Table::Runs => self.runs.len(),
            Table::Segments => self.segments.len(),
            Table::Events => self.events.len(),
        }) as u64
    }

    /// Every row as (table, key, canonical JSON), for comparing states.
    pub fn keyed(&self) -> Vec<(String, String, String)> {
        fn rows<R: Row>(out: &mut Vec<(String, String, String)>, rows: &[R]) {
            for r in rows {
                out.push((R::TABLE.name().to_string(), r.key(), serde_json::to_string(r).expect("rows serialize")));
            }
        }
        let mut out = Vec::new();
        rows(&mut out, &self.runs);
        rows(&mut out, &self.segments);
        rows(&mut out, &self.events);
        out
    }
}

/// An open jobs database.
pub struct JobsDb {
    conn: Connection,
    name: String,
}

impl JobsDb {
    /// Opens (creating if needed) the database file `name` of `fs`: migrates a legacy database,
    /// and reads every page so a corrupt one fails here (`jobs:dbCorrupt`), not halfway through
    /// a job.
    pub fn open(fs: &dyn FileSystem, name: &str) -> Result<JobsDb, JobError> {
        let conn = store::open(&fs.db_path(name))?;
        let has_meta: bool = conn.query_row("SELECT count(*) FROM sqlite_master WHERE name = 'meta'", [], |r| r.get::<_, i64>(0))? > 0;
        let version = if has_meta { store::meta_get(&conn, "schema_version")? } else { None };
        match version.as_deref().map(str::parse::<u32>) {
            None => {
                conn.execute_batch(&format!("BEGIN; {SCHEMA} INSERT INTO meta(key, value) VALUES ('schema_version', '{SCHEMA_VERSION}'); COMMIT;"))?;
            }
            Some(Ok(SCHEMA_VERSION)) => {}
            Some(Ok(1)) => migrate_v1(&conn)?,
            Some(other) => {
                return Err(JobError::LegacyMigrationBlocked { from_version: 0, detail: format!("unknown schema version {other:?}") });
            }
        }
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(JobError::DbCorrupt { detail: check });
        }
        Ok(JobsDb { conn, name: name.to_string() })
    }

    /// The file name the database was opened from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The connection, for operator queries (and tests that damage a database on purpose).
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Every row of every table, in one read transaction.
    pub fn contents(&self) -> Result<Contents, JobError> {
        let tx = self.conn.unchecked_transaction()?;
        let c = Contents { runs: RunRow::all(&tx)?, segments: SegmentRow::all(&tx)?, events: EventRow::all(&tx)? };
        tx.finish()?;
        Ok(c)
    }

    /// A user's correction of segment `idx` of run `run_id`: its text replaced. A copy edited
    /// this way diverges from another copy of the same run, which an import then meets as a
    /// divergent row (runbook 001 Scenario C). Refused with `jobs:invalidInput` when the run has
    /// no such segment.
    pub fn edit_segment(&self, run_id: &str, idx: u32, text: &str) -> Result<(), JobError> {
        let n = self.conn.execute("UPDATE segments SET text = ?3 WHERE run_id = ?1 AND idx = ?2", params![run_id, idx, text])?;
        if n == 0 {
            return Err(JobError::InvalidInput { detail: format!("run {run_id} has no segment {idx}") });
        }
        Ok(())
    }

    /// Whether run `run_id` is stored.
    pub fn has_run(&self, run_id: &str) -> Result<bool, JobError> {
        Ok(self.conn.query_row("SELECT count(*) FROM runs WHERE run_id = ?1", [run_id], |r| r.get::<_, i64>(0))? > 0)
    }

    /// Row counts of the three tables.
    pub fn counts(&self) -> Result<[u64; 3], JobError> {
        let mut out = [0; 3];
        for (i, t) in Table::ALL.iter().enumerate() {
            out[i] = self.conn.query_row(&format!("SELECT count(*) FROM {}", t.name()), [], |r| r.get::<_, i64>(0))? as u64;
        }
        Ok(out)
    }
}

fn migrate_v1(conn: &Connection) -> Result<(), JobError> {
    let blocked = |e: rusqlite::Error| JobError::LegacyMigrationBlocked { from_version: 1, detail: e.to_string() };
    conn.execute_batch("BEGIN IMMEDIATE").map_err(blocked)?;
    match conn.execute_batch(MIGRATE_V1_TO_V2).and_then(|_| conn.execute_batch("COMMIT")) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(blocked(e))
        }
    }
}

/// Creates a legacy (version 1) database `name` with these runs, segments `(run_id, idx,
/// text)` and events `(run_id, seq, kind, detail)`: what an old build left behind.
pub fn create_legacy_v1(
    fs: &dyn FileSystem,
    name: &str,
    runs: &[(&str, &str)],
    segments: &[(&str, u32, &str)],
    events: &[(&str, u32, &str, &str)],
) -> Result<(), JobError> {
    let conn = store::open(&fs.db_path(name))?;
    conn.execute_batch(&format!("BEGIN; {LEGACY_SCHEMA_V1}"))?;
    for (run_id, input) in runs {
        conn.execute("INSERT INTO runs VALUES (?1, ?2, 'ok', 'legacy')", params![run_id, input])?;
    }
    for (run_id, idx, text) in segments {
        conn.execute("INSERT INTO segments VALUES (?1, ?2, ?3)", params![run_id, idx, text])?;
    }
    for (run_id, seq, kind, detail) in events {
        conn.execute("INSERT INTO events VALUES (?1, ?2, ?3, ?4)", params![run_id, seq, kind, detail])?;
    }
    conn.execute_batch("COMMIT")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::StdFs;

    #[test]
    fn a_fresh_database_has_the_current_schema_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let fs = StdFs::new(dir.path());
        let db = JobsDb::open(&fs, "jobs.db").unwrap();
        assert_eq!(db.counts().unwrap(), [0, 0, 0]);
        drop(db);
        let db = JobsDb::open(&fs, "jobs.db").unwrap();
        assert_eq!(store::meta_get(db.conn(), "schema_version").unwrap().as_deref(), Some("2"));
    }

    #[test]
    fn a_segment_edit_changes_that_segment_only_and_a_missing_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fs = StdFs::new(dir.path());
        create_legacy_v1(&fs, "old.db", &[("r1", "audio-1")], &[("r1", 0, "hello"), ("r1", 1, "world")], &[]).unwrap();
        let db = JobsDb::open(&fs, "old.db").unwrap();
        db.edit_segment("r1", 1, "there").unwrap();
        let texts: Vec<String> = db.contents().unwrap().segments.into_iter().map(|s| s.text).collect();
        assert_eq!(texts, ["hello", "there"]);
        assert_eq!(db.edit_segment("r1", 7, "x").unwrap_err().code(), "jobs:invalidInput");
        assert_eq!(db.edit_segment("r9", 0, "x").unwrap_err().code(), "jobs:invalidInput");
    }

    #[test]
    fn a_legacy_database_migrates_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let fs = StdFs::new(dir.path());
        create_legacy_v1(&fs, "old.db", &[("r1", "audio-1")], &[("r1", 0, "hello"), ("r1", 1, "world")], &[("r1", 1, "done", "{}")]).unwrap();
        let db = JobsDb::open(&fs, "old.db").unwrap();
        let c = db.contents().unwrap();
        assert_eq!(c.runs.len(), 1);
        assert_eq!(c.segments[1], SegmentRow { run_id: "r1".into(), idx: 1, start_ms: 1000, end_ms: 2000, text: "world".into() });
        assert_eq!(c.events[0].stage, "legacy");
    }

    #[test]
    fn a_legacy_database_with_an_orphan_row_is_blocked_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let fs = StdFs::new(dir.path());
        create_legacy_v1(&fs, "old.db", &[("r1", "audio-1")], &[("r1", 0, "hello"), ("gone", 0, "orphan")], &[]).unwrap();
        let before = std::fs::read(dir.path().join("old.db")).unwrap();
        for _ in 0..2 {
            let e = JobsDb::open(&fs, "old.db").err().expect("blocked");
            assert_eq!(e.code(), "jobs:legacyMigrationBlocked", "{e}");
        }
        let conn = store::open(&fs.db_path("old.db")).unwrap();
        assert_eq!(store::meta_get(&conn, "schema_version").unwrap().as_deref(), Some("1"));
        let n: i64 = conn.query_row("SELECT count(*) FROM segments", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 2);
        drop(conn);
        assert_eq!(std::fs::read(dir.path().join("old.db")).unwrap().len(), before.len());
    }

    #[test]
    fn canonical_jsonl_is_one_object_a_line_by_key() {
        let rows = vec![
            SegmentRow { run_id: "a".into(), idx: 0, start_ms: 0, end_ms: 10, text: "x\ny".into() },
            SegmentRow { run_id: "a".into(), idx: 1, start_ms: 10, end_ms: 20, text: "z".into() },
        ];
        let text = String::from_utf8(to_jsonl(&rows)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let back: SegmentRow = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(back, rows[0]);
        assert_eq!(rows[1].key(), "a/1");
    }
}

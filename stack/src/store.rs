//! Opening a SQLite database the way the stack always does.
//!
//! WAL with `synchronous=FULL` (an acknowledged commit survives power loss), no memory-mapped
//! I/O, temporary data in memory, and 8 reserved bytes at the end of every page, where a
//! checksumming storage layer keeps each page's checksum.

use std::ffi::c_void;

use rusqlite::{ffi, Connection, OpenFlags};

use crate::error::StoreError;

/// Bytes reserved at the end of every page for a page checksum.
pub const PAGE_RESERVE_BYTES: i32 = 8;

/// Prepared statements each connection keeps compiled.
pub const STATEMENT_CACHE_CAPACITY: usize = 128;

/// Opens (creating if needed) the database at `path` with the stack's settings, and checks that
/// SQLite can read it.
pub fn open(path: &str) -> Result<Connection, StoreError> {
    open_with_vfs(path, None)
}

/// Like [`open`], through the SQLite VFS named `vfs` (`None`: the process's default VFS).
///
/// For measurements that compare storage layers: `Some("unix")` reaches a real file even where a
/// simulator has made itself the default VFS. An in-memory database (`:memory:`) keeps its
/// journal in memory, since WAL needs a file; every other setting is the same.
pub fn open_with_vfs(path: &str, vfs: Option<&str>) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let c = match vfs {
        Some(name) => Connection::open_with_flags_and_vfs(path, flags, name)?,
        None => Connection::open_with_flags(path, flags)?,
    };
    let mut reserve = PAGE_RESERVE_BYTES;
    // SAFETY: a live connection handle and a pointer to an int, as this file control expects.
    let rc = unsafe { ffi::sqlite3_file_control(c.handle(), c"main".as_ptr(), ffi::SQLITE_FCNTL_RESERVE_BYTES, &mut reserve as *mut i32 as *mut c_void) };
    if rc != ffi::SQLITE_OK {
        return Err(StoreError::Sqlite { detail: format!("reserving page checksum bytes failed with code {rc}") });
    }
    let mode: String = c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    let in_memory = path == ":memory:" && mode.eq_ignore_ascii_case("memory");
    if !mode.eq_ignore_ascii_case("wal") && !in_memory {
        return Err(StoreError::Sqlite { detail: format!("journal_mode is {mode}, not wal") });
    }
    c.execute_batch("PRAGMA synchronous=FULL; PRAGMA mmap_size=0; PRAGMA temp_store=MEMORY; PRAGMA foreign_keys=ON;")?;
    // Recovery keeps whatever the log held, and SQLite appends the next transaction right after
    // it: into the sector that holds the end of the last recovered commit. On a device without
    // powersafe overwrite a second power loss can garble that sector and the commit with it
    // (drill's crash oracle shows it). Checkpointing and truncating the log on open means new
    // frames never share a sector with recovered ones.
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    // Hot statements are cached per connection (`prepare_cached`); rusqlite keeps 16 by default,
    // fewer than a device and a server use, and an evicted statement is compiled again.
    c.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    Ok(c)
}

/// Reads a value of the `meta` table.
///
/// The statement is compiled once per connection and kept (`prepare_cached`): the meta table is
/// read on every command and every sync, and compiling it each time was a fifth of a run.
pub fn meta_get(c: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    use rusqlite::OptionalExtension;
    let mut st = c.prepare_cached("SELECT value FROM meta WHERE key = ?1")?;
    Ok(st.query_row([key], |r| r.get(0)).optional()?)
}

/// Writes a value of the `meta` table (a cached statement, as [`meta_get`]).
pub fn meta_set(c: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
    let mut st = c.prepare_cached("INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")?;
    st.execute([key, value])?;
    Ok(())
}

/// The schema of the event table, shared by client and server.
pub const EVENTS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events(
    seq INTEGER PRIMARY KEY,
    op_id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    aggregate TEXT NOT NULL,
    kind TEXT NOT NULL,
    replica TEXT NOT NULL,
    write_id INTEGER NOT NULL,
    payload BLOB NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL,
    UNIQUE(replica, write_id)
);
CREATE INDEX IF NOT EXISTS events_by_tenant ON events(tenant, seq);
";

/// One stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub seq: u64,
    pub op_id: String,
    pub tenant: String,
    pub aggregate: String,
    pub kind: String,
    pub replica: String,
    pub write_id: u64,
    pub payload: Vec<u8>,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

const EVENT_COLUMNS: &str = "seq, op_id, tenant, aggregate, kind, replica, write_id, payload, prev_hash, hash";

fn event_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        seq: r.get(0)?,
        op_id: r.get(1)?,
        tenant: r.get(2)?,
        aggregate: r.get(3)?,
        kind: r.get(4)?,
        replica: r.get(5)?,
        write_id: r.get(6)?,
        payload: r.get(7)?,
        prev_hash: r.get(8)?,
        hash: r.get(9)?,
    })
}

/// Events of `tenant` after `since`, in order, at most `limit`.
pub fn events_after(c: &Connection, tenant: &str, since: u64, limit: u32) -> Result<Vec<EventRow>, StoreError> {
    let mut st = c.prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE tenant = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"))?;
    let rows = st.query_map(rusqlite::params![tenant, since, limit], event_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every stored event, in order.
pub fn all_events(c: &Connection) -> Result<Vec<EventRow>, StoreError> {
    let mut st = c.prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events ORDER BY seq"))?;
    let rows = st.query_map([], event_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every stored event after `since` (of any tenant), in order: what changed at the tail of a
/// device's history since a check that saw everything up to `since`.
pub fn events_since(c: &Connection, since: u64) -> Result<Vec<EventRow>, StoreError> {
    let mut st = c.prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq > ?1 ORDER BY seq"))?;
    let rows = st.query_map([since], event_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Inserts one event.
pub fn insert_event(c: &Connection, e: &EventRow) -> Result<(), StoreError> {
    c.prepare_cached(&format!("INSERT INTO events({EVENT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"))?.execute(rusqlite::params![
        e.seq,
        e.op_id,
        e.tenant,
        e.aggregate,
        e.kind,
        e.replica,
        e.write_id,
        e.payload,
        e.prev_hash,
        e.hash
    ])?;
    Ok(())
}

/// The hash of `tenant`'s last event (the chain head); with no event, the chain's anchor (where
/// compacted history ends) or the genesis hash.
pub fn chain_head(c: &Connection, tenant: &str) -> Result<Vec<u8>, StoreError> {
    use rusqlite::OptionalExtension;
    let h: Option<Vec<u8>> =
        c.prepare_cached("SELECT hash FROM events WHERE tenant = ?1 ORDER BY seq DESC LIMIT 1")?.query_row([tenant], |r| r.get(0)).optional()?;
    match h {
        Some(h) => Ok(h),
        None => Ok(anchor(c, tenant)?.map(|(_, h)| h).unwrap_or_else(|| crate::chain::GENESIS.to_vec())),
    }
}

/// The hash of `tenant`'s last stored event at or below `seq`, if any: equal hashes mean the
/// same history up to there (each hash covers the one before it).
pub fn hash_through(c: &Connection, tenant: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
    use rusqlite::OptionalExtension;
    let mut st = c.prepare_cached("SELECT hash FROM events WHERE tenant = ?1 AND seq <= ?2 ORDER BY seq DESC LIMIT 1")?;
    Ok(st.query_row(rusqlite::params![tenant, seq], |r| r.get(0)).optional()?)
}

/// Where `tenant`'s stored chain starts when older events were compacted away: the sequence
/// number and hash of the last event before the stored ones.
pub fn anchor(c: &Connection, tenant: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
    let Some(v) = meta_get(c, &format!("anchor/{tenant}"))? else { return Ok(None) };
    let (seq, hash) = v.split_once(':').ok_or_else(|| StoreError::Invalid { detail: format!("anchor {v}") })?;
    let seq = seq.parse().map_err(|_| StoreError::Invalid { detail: format!("anchor {v}") })?;
    let hash = hex::decode(hash).map_err(|_| StoreError::Invalid { detail: format!("anchor {v}") })?;
    Ok(Some((seq, hash)))
}

/// SQLite's quick check of every page of `c`'s database: `store:corrupt`, naming what it found,
/// when the file is damaged.
pub fn quick_check(c: &Connection) -> Result<(), StoreError> {
    let mut st = c.prepare("PRAGMA quick_check")?;
    let found: Vec<String> = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    if found == ["ok"] {
        Ok(())
    } else {
        Err(StoreError::Corrupt { detail: found.join("; ") })
    }
}

/// Records `tenant`'s chain anchor.
pub fn set_anchor(c: &Connection, tenant: &str, seq: u64, hash: &[u8]) -> Result<(), StoreError> {
    meta_set(c, &format!("anchor/{tenant}"), &format!("{seq}:{}", hex::encode(hash)))
}

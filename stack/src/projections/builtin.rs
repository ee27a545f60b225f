//! The two built-in projections.
//!
//! - [`AggregateState`] (essential): per aggregate, how many events, the last event's seq and
//!   type, and a digest that folds every payload in order: `digest = SHA-256(digest ‖ type ‖
//!   payload)` from 32 zero bytes. Two replays agree on it only if they applied the same payloads
//!   in the same order, which makes it a sharp equality check for rebuilds.
//! - [`TenantCounters`] (non-essential, the one DEGRADED switches off first): events per type.
//!
//! State is exposed as rows of strings ([`Projection::rows`]) in a canonical order, the form
//! snapshots store and tests compare.

use rusqlite::Connection;
use sha2::{Digest, Sha256};

use crate::error::StoreError;

use super::{DecryptedEvent, Projection};

/// An aggregate's current state.
pub struct AggregateState;

/// Per-tenant counters of events by type.
pub struct TenantCounters;

/// The next digest of an aggregate's fold.
pub fn fold_digest(prev: &[u8], kind: &str, payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [prev, kind.as_bytes(), payload] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

fn collect(c: &Connection, sql: &str, tenant: &str, columns: usize) -> Result<Vec<Vec<String>>, StoreError> {
    let mut st = c.prepare_cached(sql)?;
    let rows = st.query_map([tenant], |r| (0..columns).map(|i| r.get::<_, String>(i)).collect::<Result<Vec<_>, _>>())?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn parse<T: std::str::FromStr>(v: &str) -> Result<T, StoreError> {
    v.parse().map_err(|_| StoreError::Invalid { detail: format!("projection value {v}") })
}

impl Projection for AggregateState {
    fn name(&self) -> &'static str {
        "aggregate_state"
    }

    fn essential(&self) -> bool {
        true
    }

    fn schema(&self) -> &'static str {
        "CREATE TABLE IF NOT EXISTS proj_aggregate_state(
            tenant TEXT NOT NULL, aggregate TEXT NOT NULL, events INTEGER NOT NULL,
            last_seq INTEGER NOT NULL, last_kind TEXT NOT NULL, digest TEXT NOT NULL,
            PRIMARY KEY(tenant, aggregate));"
    }

    fn clear(&self, c: &Connection, tenant: &str) -> Result<(), StoreError> {
        c.prepare_cached("DELETE FROM proj_aggregate_state WHERE tenant = ?1")?.execute([tenant])?;
        Ok(())
    }

    fn apply(&self, c: &Connection, e: &DecryptedEvent) -> Result<(), StoreError> {
        use rusqlite::OptionalExtension;
        let prev: Option<String> = c
            .prepare_cached("SELECT digest FROM proj_aggregate_state WHERE tenant = ?1 AND aggregate = ?2")?
            .query_row([&e.tenant, &e.aggregate], |r| r.get(0))
            .optional()?;
        let prev = match prev {
            Some(h) => hex::decode(h).map_err(|_| StoreError::Invalid { detail: "aggregate digest".into() })?,
            None => vec![0u8; 32],
        };
        let digest = hex::encode(fold_digest(&prev, &e.kind, &e.payload));
        c.prepare_cached(
            "INSERT INTO proj_aggregate_state(tenant, aggregate, events, last_seq, last_kind, digest) VALUES (?1, ?2, 1, ?3, ?4, ?5)
             ON CONFLICT(tenant, aggregate) DO UPDATE SET events = events + 1, last_seq = excluded.last_seq,
             last_kind = excluded.last_kind, digest = excluded.digest",
        )?
        .execute(rusqlite::params![e.tenant, e.aggregate, e.seq, e.kind, digest])?;
        Ok(())
    }

    fn rows(&self, c: &Connection, tenant: &str) -> Result<Vec<Vec<String>>, StoreError> {
        collect(
            c,
            "SELECT aggregate, CAST(events AS TEXT), CAST(last_seq AS TEXT), last_kind, digest FROM proj_aggregate_state WHERE tenant = ?1 ORDER BY aggregate",
            tenant,
            5,
        )
    }

    fn load(&self, c: &Connection, tenant: &str, rows: &[Vec<String>]) -> Result<(), StoreError> {
        for r in rows {
            let [aggregate, events, last_seq, last_kind, digest] = &r[..] else {
                return Err(StoreError::Invalid { detail: "aggregate_state snapshot row".into() });
            };
            c.prepare_cached("INSERT INTO proj_aggregate_state VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?.execute(rusqlite::params![
                tenant,
                aggregate,
                parse::<u64>(events)?,
                parse::<u64>(last_seq)?,
                last_kind,
                digest
            ])?;
        }
        Ok(())
    }
}

impl Projection for TenantCounters {
    fn name(&self) -> &'static str {
        "tenant_counters"
    }

    fn essential(&self) -> bool {
        false
    }

    fn schema(&self) -> &'static str {
        "CREATE TABLE IF NOT EXISTS proj_tenant_counters(
            tenant TEXT NOT NULL, kind TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY(tenant, kind));"
    }

    fn clear(&self, c: &Connection, tenant: &str) -> Result<(), StoreError> {
        c.prepare_cached("DELETE FROM proj_tenant_counters WHERE tenant = ?1")?.execute([tenant])?;
        Ok(())
    }

    fn apply(&self, c: &Connection, e: &DecryptedEvent) -> Result<(), StoreError> {
        c.prepare_cached(
            "INSERT INTO proj_tenant_counters(tenant, kind, count) VALUES (?1, ?2, 1)
             ON CONFLICT(tenant, kind) DO UPDATE SET count = count + 1",
        )?
        .execute([&e.tenant, &e.kind])?;
        Ok(())
    }

    fn rows(&self, c: &Connection, tenant: &str) -> Result<Vec<Vec<String>>, StoreError> {
        collect(c, "SELECT kind, CAST(count AS TEXT) FROM proj_tenant_counters WHERE tenant = ?1 ORDER BY kind", tenant, 2)
    }

    fn load(&self, c: &Connection, tenant: &str, rows: &[Vec<String>]) -> Result<(), StoreError> {
        for r in rows {
            let [kind, count] = &r[..] else { return Err(StoreError::Invalid { detail: "tenant_counters snapshot row".into() }) };
            c.prepare_cached("INSERT INTO proj_tenant_counters VALUES (?1, ?2, ?3)")?.execute(rusqlite::params![tenant, kind, parse::<u64>(count)?])?;
        }
        Ok(())
    }
}

//! The projection engine: folds events into projections, once each, and rebuilds them.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::Connection;

use crate::crypto;
use crate::error::StoreError;
use crate::keys::KeyError;
use crate::mutations::{Bug, FoldEffect, Mutations};

use super::builtin::{AggregateState, TenantCounters};
use super::health::{self, EventStoreStatus, Health};
use super::resilience::{self, Write};
use super::{DecryptedEvent, KeyRing, Projection, ProjectionError, SealedEvent};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS proj_cursor(projection TEXT NOT NULL, tenant TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY(projection, tenant));
CREATE TABLE IF NOT EXISTS proj_incomplete(
    projection TEXT NOT NULL, tenant TEXT NOT NULL, aggregate TEXT NOT NULL, reason TEXT NOT NULL, first_seq INTEGER NOT NULL,
    PRIMARY KEY(projection, tenant, aggregate));
CREATE TABLE IF NOT EXISTS proj_unhealthy(projection TEXT PRIMARY KEY, detail TEXT NOT NULL);
";

/// An aggregate a projection skipped, and why (`keys:aggregateKeyMissing`,
/// `keys:payloadsUnrecoverable`, `crypto:tampered`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Incomplete {
    pub projection: String,
    pub tenant: String,
    pub aggregate: String,
    pub reason: String,
    pub first_seq: u64,
}

/// What one apply or rebuild did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Event applications (one per event per projection).
    pub applied: u64,
    /// `(tenant, aggregate)` skipped for a missing key or a payload that did not open.
    pub incomplete: BTreeSet<(String, String)>,
    /// Projections switched off by DEGRADED, left untouched.
    pub disabled: Vec<String>,
}

/// Which part of the derived state a rebuild replaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// One tenant, or every tenant.
    pub tenant: Option<String>,
    /// One projection, or every one.
    pub projection: Option<String>,
    /// Replay only events created at or before this time: the state as of then. Each tenant's
    /// events are replayed in the store's order up to the first one created after it, so the
    /// projection is a fold of a prefix and a later apply continues from there.
    pub until_ts_ms: Option<i64>,
}

/// The projections of one database.
pub struct Engine {
    projections: Vec<Box<dyn Projection>>,
    /// The planted bugs of a test plan ([`crate::mutations`]); none in production.
    pub(super) mutations: Mutations,
}

impl Engine {
    /// The built-in projections: `aggregate_state` and `tenant_counters`.
    pub fn builtin() -> Engine {
        Engine::with(vec![Box::new(AggregateState), Box::new(TenantCounters)])
    }

    pub fn with(projections: Vec<Box<dyn Projection>>) -> Engine {
        Engine { projections, mutations: Mutations::none() }
    }

    /// Arms the process's planted bugs of a test plan: the incremental fold and the snapshot
    /// writer consult them.
    pub fn plant(&mut self, mutations: Mutations) {
        self.mutations = mutations;
    }

    /// Creates the engine's and every projection's tables.
    pub fn install(&self, c: &Connection) -> Result<(), StoreError> {
        c.execute_batch(SCHEMA)?;
        c.execute_batch(super::snapshot::SCHEMA)?;
        for p in &self.projections {
            c.execute_batch(p.schema())?;
        }
        Ok(())
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.projections.iter().map(|p| p.name()).collect()
    }

    pub(super) fn find(&self, name: &str) -> Result<&dyn Projection, ProjectionError> {
        self.projections.iter().find(|p| p.name() == name).map(|p| p.as_ref()).ok_or(ProjectionError::UnknownProjection { name: name.into() })
    }

    /// The projections in `scope` that the mode leaves on, and the names it switched off.
    pub(super) fn active(&self, c: &Connection, only: Option<&str>) -> Result<(Vec<&dyn Projection>, Vec<String>), ProjectionError> {
        if let Some(name) = only {
            self.find(name)?;
        }
        let off = resilience::disabled(c)?;
        let mut on = Vec::new();
        let mut disabled = Vec::new();
        for p in self.projections.iter().filter(|p| only.is_none_or(|n| n == p.name())) {
            if !p.essential() && off.iter().any(|n| n == p.name()) {
                disabled.push(p.name().to_string());
            } else {
                on.push(p.as_ref());
            }
        }
        Ok((on, disabled))
    }

    /// Folds new events into every active projection, in one transaction; events at or below a
    /// projection's cursor are skipped, so passing an event twice applies it once. A command:
    /// refused in READ_ONLY with `store:readOnly`, changing nothing.
    pub fn apply(&self, c: &Connection, events: &[SealedEvent], keys: &dyn KeyRing) -> Result<ApplyReport, ProjectionError> {
        resilience::check_write(c, Write::Command)?;
        let (on, disabled) = self.active(c, None)?;
        let tx = c.unchecked_transaction()?;
        let mut report = feed_tracking(&tx, &on, events.iter(), keys, Some(&self.mutations))?.0;
        tx.commit()?;
        report.disabled = disabled;
        Ok(report)
    }

    /// Clears the projections and tenants in `scope` and replays `events` into them (runbook 004
    /// §3.2, §3.3). Recovery, so allowed in READ_ONLY; all or nothing.
    pub fn rebuild(&self, c: &Connection, events: &[SealedEvent], keys: &dyn KeyRing, scope: &Scope) -> Result<ApplyReport, ProjectionError> {
        resilience::check_write(c, Write::Recovery)?;
        let (on, disabled) = self.active(c, scope.projection.as_deref())?;
        let tenants: BTreeSet<String> = match &scope.tenant {
            Some(t) => [t.clone()].into(),
            None => events.iter().map(|e| e.tenant.clone()).chain(known_tenants(c)?).collect(),
        };
        // Up to a time: each tenant's events in the store's order until the first one created
        // after it. Creation times come from writers' clocks and a device may push late, so a
        // later event can carry an earlier time; folding it while skipping the one before it
        // would put the cursor past an event never folded, which no later apply would fold.
        let chosen: Vec<&SealedEvent> = {
            let mut stopped: BTreeSet<&str> = BTreeSet::new();
            events
                .iter()
                .filter(|e| tenants.contains(&e.tenant))
                .filter(|e| match scope.until_ts_ms {
                    None => true,
                    Some(_) if stopped.contains(e.tenant.as_str()) => false,
                    Some(until) if e.ts_ms > until => {
                        stopped.insert(&e.tenant);
                        false
                    }
                    Some(_) => true,
                })
                .collect()
        };
        let tx = c.unchecked_transaction()?;
        // An aggregate found unreadable after some of its events were folded (an event of it
        // that does not open) is skipped from its first event on the next pass, so that no
        // projection holds part of an aggregate it reports incomplete.
        let mut skipped: BTreeMap<(String, String), (u64, &'static str)> = BTreeMap::new();
        let mut report = loop {
            for p in &on {
                // A rebuilt projection is healthy again, whichever tenants it holds.
                tx.prepare_cached("DELETE FROM proj_unhealthy WHERE projection = ?1")?.execute([p.name()])?;
                for t in &tenants {
                    clear(&tx, *p, t)?;
                }
                for ((t, a), (seq, reason)) in &skipped {
                    tx.prepare_cached("INSERT OR IGNORE INTO proj_incomplete(projection, tenant, aggregate, reason, first_seq) VALUES (?1, ?2, ?3, ?4, ?5)")?
                        .execute(rusqlite::params![p.name(), t, a, *reason, seq])?;
                }
            }
            let (mut report, partial) = feed_tracking(&tx, &on, chosen.iter().copied(), keys, None)?;
            if partial.is_empty() {
                report.incomplete.extend(skipped.into_keys());
                break report;
            }
            skipped.extend(partial);
        };
        tx.commit()?;
        report.disabled = disabled;
        Ok(report)
    }

    /// Empties every projection of `tenant` inside the caller's transaction, so that the next
    /// [`Engine::apply`] refolds from the start: for when the events a projection folded are
    /// dropped (hydrate, forced or full resync) in that same transaction.
    pub fn reset(&self, c: &Connection, tenant: &str) -> Result<(), ProjectionError> {
        for p in &self.projections {
            clear(c, p.as_ref(), tenant)?;
        }
        Ok(())
    }

    /// `tenant`'s state in `projection`, as canonical rows.
    pub fn rows(&self, c: &Connection, projection: &str, tenant: &str) -> Result<Vec<Vec<String>>, ProjectionError> {
        Ok(self.find(projection)?.rows(c, tenant)?)
    }

    /// The aggregates skipped for `tenant`, every projection.
    pub fn incomplete(&self, c: &Connection, tenant: &str) -> Result<Vec<Incomplete>, ProjectionError> {
        let mut st =
            c.prepare_cached("SELECT projection, tenant, aggregate, reason, first_seq FROM proj_incomplete WHERE tenant = ?1 ORDER BY projection, aggregate")?;
        let rows = st.query_map([tenant], |r| {
            Ok(Incomplete { projection: r.get(0)?, tenant: r.get(1)?, aggregate: r.get(2)?, reason: r.get(3)?, first_seq: r.get(4)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The last seq `projection` folded for `tenant`.
    pub fn cursor(&self, c: &Connection, projection: &str, tenant: &str) -> Result<u64, ProjectionError> {
        Ok(cursor(c, projection, tenant)?)
    }

    /// Marks a projection unhealthy (an inconsistency found by a check), until its next rebuild.
    pub fn mark_unhealthy(&self, c: &Connection, projection: &str, detail: &str) -> Result<(), ProjectionError> {
        self.find(projection)?;
        c.prepare_cached("INSERT OR REPLACE INTO proj_unhealthy(projection, detail) VALUES (?1, ?2)")?.execute([projection, detail])?;
        Ok(())
    }

    /// The dashboard status (runbook 004 §7), given how the event store answered.
    pub fn health(&self, c: &Connection, event_store: EventStoreStatus) -> Result<Health, ProjectionError> {
        let mut st = c.prepare_cached("SELECT projection FROM proj_unhealthy ORDER BY projection")?;
        let unhealthy: Vec<String> = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(health::status(resilience::mode(c)?, unhealthy, event_store))
    }
}

pub(super) fn known_tenants(c: &Connection) -> Result<Vec<String>, StoreError> {
    let mut st = c.prepare_cached("SELECT DISTINCT tenant FROM proj_cursor ORDER BY tenant")?;
    let rows = st.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn cursor(c: &Connection, projection: &str, tenant: &str) -> Result<u64, StoreError> {
    use rusqlite::OptionalExtension;
    let seq: Option<u64> =
        c.prepare_cached("SELECT seq FROM proj_cursor WHERE projection = ?1 AND tenant = ?2")?.query_row([projection, tenant], |r| r.get(0)).optional()?;
    Ok(seq.unwrap_or(0))
}

pub(super) fn set_cursor(c: &Connection, projection: &str, tenant: &str, seq: u64) -> Result<(), StoreError> {
    c.prepare_cached("INSERT OR REPLACE INTO proj_cursor(projection, tenant, seq) VALUES (?1, ?2, ?3)")?.execute(rusqlite::params![projection, tenant, seq])?;
    Ok(())
}

/// Empties one projection of one tenant: its rows, cursor, skipped aggregates and unhealthy mark.
pub(super) fn clear(c: &Connection, p: &dyn Projection, tenant: &str) -> Result<(), StoreError> {
    p.clear(c, tenant)?;
    c.prepare_cached("DELETE FROM proj_cursor WHERE projection = ?1 AND tenant = ?2")?.execute([p.name(), tenant])?;
    c.prepare_cached("DELETE FROM proj_incomplete WHERE projection = ?1 AND tenant = ?2")?.execute([p.name(), tenant])?;
    c.prepare_cached("DELETE FROM proj_unhealthy WHERE projection = ?1")?.execute([p.name()])?;
    Ok(())
}

/// Why an event's payload is not available, as a stable code.
pub(super) fn decrypt<K: KeyRing + ?Sized>(e: &SealedEvent, keys: &K) -> Result<DecryptedEvent, &'static str> {
    let key = keys.aggregate_key(&e.aggregate).map_err(|k: KeyError| k.code())?;
    let payload = crypto::open_payload(&key, &e.nonce, &e.tenant, &e.aggregate, &e.kind, &e.ciphertext).map_err(|x| x.code())?;
    Ok(DecryptedEvent { seq: e.seq, tenant: e.tenant.clone(), aggregate: e.aggregate.clone(), kind: e.kind.clone(), ts_ms: e.ts_ms, payload })
}

/// Folds `events` (in seq order) into `on`. An aggregate that cannot be read is recorded as
/// incomplete for each projection and skipped from then on; an aggregate folded in part before
/// one of its events turned out unreadable is refolded without it by the caller (a rebuild does;
/// after an apply, `Client::project` rebuilds the tenant when the skipped aggregates grew).
pub(super) fn feed<'a>(
    c: &Connection,
    on: &[&dyn Projection],
    events: impl Iterator<Item = &'a SealedEvent>,
    keys: &dyn KeyRing,
) -> Result<ApplyReport, StoreError> {
    Ok(feed_tracking(c, on, events, keys, None)?.0)
}

/// A partial fold: `(tenant, aggregate)` and the seq and reason of its first unreadable event.
type Partial = BTreeMap<(String, String), (u64, &'static str)>;

/// [`feed`], also returning the aggregates that became unreadable after this feed folded some
/// of their events. With `planted` (the incremental fold, not a rebuild) a planted
/// [`Bug::ProjectionFold`] may fold an event twice or not at all.
fn feed_tracking<'a>(
    c: &Connection,
    on: &[&dyn Projection],
    events: impl Iterator<Item = &'a SealedEvent>,
    keys: &dyn KeyRing,
    planted: Option<&Mutations>,
) -> Result<(ApplyReport, Partial), StoreError> {
    let mut report = ApplyReport::default();
    let mut partial = Partial::new();
    let mut folded: BTreeSet<(&str, String, String)> = BTreeSet::new();
    let mut cursors: BTreeMap<(&str, String), u64> = BTreeMap::new();
    for e in events {
        let mut opened: Option<Result<DecryptedEvent, &'static str>> = None;
        for p in on {
            let key = (p.name(), e.tenant.clone());
            let at = match cursors.get(&key) {
                Some(&s) => s,
                None => cursor(c, p.name(), &e.tenant)?,
            };
            if e.seq <= at {
                continue;
            }
            cursors.insert(key, e.seq);
            set_cursor(c, p.name(), &e.tenant, e.seq)?;
            if is_incomplete(c, p.name(), &e.tenant, &e.aggregate)? {
                continue;
            }
            match opened.get_or_insert_with(|| keys.open(e)) {
                Ok(d) => {
                    match planted.and_then(|m| wrong_fold(m, p.name(), d)) {
                        None => p.apply(c, d)?,
                        Some(FoldEffect::Twice) => {
                            p.apply(c, d)?;
                            p.apply(c, d)?;
                        }
                        Some(FoldEffect::Skipped) => {}
                    }
                    folded.insert((p.name(), e.tenant.clone(), e.aggregate.clone()));
                    report.applied += 1;
                }
                Err(reason) => {
                    c.prepare_cached("INSERT OR IGNORE INTO proj_incomplete(projection, tenant, aggregate, reason, first_seq) VALUES (?1, ?2, ?3, ?4, ?5)")?
                        .execute(rusqlite::params![p.name(), e.tenant, e.aggregate, *reason, e.seq])?;
                    report.incomplete.insert((e.tenant.clone(), e.aggregate.clone()));
                    if folded.contains(&(p.name(), e.tenant.clone(), e.aggregate.clone())) {
                        partial.entry((e.tenant.clone(), e.aggregate.clone())).or_insert((e.seq, *reason));
                    }
                }
            }
        }
    }
    Ok((report, partial))
}

/// How a planted bug of `projection`'s incremental fold mishandles `e`, if one fires.
fn wrong_fold(planted: &Mutations, projection: &str, e: &DecryptedEvent) -> Option<FoldEffect> {
    let bug = planted.fires(
        "projections::apply",
        |b| matches!(b, Bug::ProjectionFold { projection: p, event_kind, .. } if p == projection && *event_kind == e.kind),
        || format!("{projection} seq {} ({}) of {}", e.seq, e.kind, e.aggregate),
    )?;
    match bug {
        Bug::ProjectionFold { effect, .. } => Some(effect),
        _ => None,
    }
}

fn is_incomplete(c: &Connection, projection: &str, tenant: &str, aggregate: &str) -> Result<bool, StoreError> {
    use rusqlite::OptionalExtension;
    Ok(c.prepare_cached("SELECT 1 FROM proj_incomplete WHERE projection = ?1 AND tenant = ?2 AND aggregate = ?3")?
        .query_row([projection, tenant, aggregate], |_| Ok(()))
        .optional()?
        .is_some())
}

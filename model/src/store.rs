//! The store part of the model (runbooks 004 and 000): projections, snapshots, tenants and the
//! READ_ONLY mode, judged from state the world reads back from a node. Each check is a pure
//! function of plain facts and returns a [`Judgement`].
//!
//! - INV-PROJECTION ([`check_projection`]): each projection equals the fold of its events for the
//!   aggregates whose keys are present. The model keeps its own reference implementation of the
//!   stack's two built-in projections ([`aggregate_state_rows`], [`tenant_counters_rows`]),
//!   written from their specification, not imported from the stack.
//! - INV-SNAPSHOT ([`check_snapshot`]): restoring from the latest valid snapshot plus the tail
//!   equals a full replay.
//! - INV-TENANT ([`check_tenant`]): no device or projection sees another tenant's events.
//! - INV-READ-ONLY ([`check_read_only`]): in READ_ONLY no command succeeds and stored content does
//!   not change.
//!
//! Uncertainty is handled in the model's favour of the stack: whatever the world could not
//! observe (a payload it could not open, an aggregate one side of a comparison skipped) is left
//! unjudged, never guessed.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::invariants::{PROJECTION, READ_ONLY, SNAPSHOT, TENANT};
use crate::Violation;

/// The name of the essential built-in projection: per aggregate, its event count, last seq,
/// last kind and fold digest.
pub const AGGREGATE_STATE: &str = "aggregate_state";
/// The name of the non-essential built-in projection: events per kind.
pub const TENANT_COUNTERS: &str = "tenant_counters";

/// What one check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Judgement {
    /// Non-vacuous checks made (there was something to check), one entry per check, by
    /// invariant id: the world adds each to the coverage counts of `summary.json`
    /// (`Checker::count_check`).
    pub checked: Vec<&'static str>,
    /// What broke.
    pub violations: Vec<Violation>,
}

impl Judgement {
    /// Whether nothing broke.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    /// How many non-vacuous checks of `invariant` were made.
    pub fn checks_of(&self, invariant: &str) -> usize {
        self.checked.iter().filter(|i| **i == invariant).count()
    }

    /// Adds another judgement's checks and violations to this one.
    pub fn merge(&mut self, other: Judgement) {
        self.checked.extend(other.checked);
        self.violations.extend(other.violations);
    }

    pub(crate) fn check(&mut self, invariant: &'static str) {
        self.checked.push(invariant);
    }

    pub(crate) fn violate(&mut self, invariant: &'static str, node: &str, line: u64, message: String) {
        self.violations.push(Violation { invariant: invariant.into(), node: node.into(), trace_line: line, message });
    }
}

// ---------------------------------------------------------------------------------------------
// INV-PROJECTION: the reference fold.

/// One event as the world decrypted it with the keys the node holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlainEvent {
    pub seq: u64,
    pub tenant: String,
    pub aggregate: String,
    pub kind: String,
    /// When the event was created, by the writer's clock (for rebuilds "up to a time").
    pub ts_ms: i64,
    /// The plaintext, or `None` when the world could not open it: the aggregate's key is not
    /// held, or the ciphertext does not open under it (tampered, unrecoverable).
    pub payload: Option<Vec<u8>>,
}

/// The next digest of an aggregate's fold: SHA-256 over the length-prefixed (8 bytes, little
/// endian) previous digest, kind and payload. The first digest folds from 32 zero bytes.
pub fn fold_digest(prev: &[u8], kind: &str, payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [prev, kind.as_bytes(), payload] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// One aggregate's state in the reference fold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateFold {
    pub events: u64,
    pub last_seq: u64,
    pub last_kind: String,
    /// The fold digest, or `None` when a payload of the aggregate is unknown.
    pub digest: Option<[u8; 32]>,
}

impl AggregateFold {
    /// The row `aggregate_state` holds for `aggregate`, when the digest is known:
    /// `[aggregate, events, last_seq, last_kind, digest hex]`.
    pub fn row(&self, aggregate: &str) -> Option<Vec<String>> {
        let digest = self.digest?;
        Some(vec![aggregate.into(), self.events.to_string(), self.last_seq.to_string(), self.last_kind.clone(), hex::encode(digest)])
    }
}

/// Folds events, in the order given (seq order), per aggregate.
pub fn fold_aggregates<'a>(events: impl IntoIterator<Item = &'a PlainEvent>) -> BTreeMap<String, AggregateFold> {
    let mut out: BTreeMap<String, AggregateFold> = BTreeMap::new();
    for e in events {
        let f = out.entry(e.aggregate.clone()).or_insert(AggregateFold { events: 0, last_seq: 0, last_kind: String::new(), digest: Some([0u8; 32]) });
        f.events += 1;
        f.last_seq = e.seq;
        f.last_kind = e.kind.clone();
        f.digest = match (&f.digest, &e.payload) {
            (Some(prev), Some(p)) => Some(fold_digest(prev, &e.kind, p)),
            _ => None,
        };
    }
    out
}

/// The canonical rows of `aggregate_state` for these events, exactly as the stack's
/// `Projection::rows` gives them: one row per aggregate, ordered by aggregate (byte order),
/// `[aggregate, events, last_seq, last_kind, digest hex]`. `None` when a payload is unknown.
pub fn aggregate_state_rows<'a>(events: impl IntoIterator<Item = &'a PlainEvent>) -> Option<Vec<Vec<String>>> {
    fold_aggregates(events).iter().map(|(a, f)| f.row(a)).collect()
}

/// The canonical rows of `tenant_counters` for these events: `[kind, count]` ordered by kind.
pub fn tenant_counters_rows<'a>(events: impl IntoIterator<Item = &'a PlainEvent>) -> Vec<Vec<String>> {
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for e in events {
        *counts.entry(e.kind.as_str()).or_default() += 1;
    }
    counts.into_iter().map(|(k, n)| vec![k.to_string(), n.to_string()]).collect()
}

/// One projection of one tenant as the stack reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionRead {
    /// `aggregate_state` or `tenant_counters` (other names are not judged).
    pub name: String,
    /// `Engine::rows(name, tenant)`, unchanged.
    pub rows: Vec<Vec<String>>,
    /// The aggregates `Engine::incomplete(tenant)` reports for this projection.
    pub incomplete: BTreeSet<String>,
    /// `Engine::cursor(name, tenant)`: the last seq the projection folded; events after it are
    /// not expected in it yet. `None` means every event given.
    pub cursor: Option<u64>,
}

/// A node's projections of one tenant, read back with what they should be the fold of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionFacts {
    pub node: String,
    pub tenant: String,
    /// The node's events (any tenant; only `tenant`'s are folded), in seq order, as the world
    /// decrypted them with the keys the node holds.
    pub events: Vec<PlainEvent>,
    /// The aggregates whose key the node holds.
    pub keys_present: BTreeSet<String>,
    /// Whether the projections were read right after a full rebuild of `tenant` with exactly
    /// `keys_present`, nothing folded since. Only then must the incomplete aggregates be
    /// exactly the unreadable ones: between rebuilds, an aggregate skipped while its key was
    /// missing stays skipped after the key comes back (the runbook says: import keys, then
    /// rebuild), and one folded while its key was present stays folded after the key is lost.
    pub rebuilt: bool,
    /// The time bound of a rebuild "up to a time": only events with `ts_ms` at or before it
    /// are folded.
    pub until_ts_ms: Option<i64>,
    /// The projections read back (leave out a projection DEGRADED switched off, or pass its
    /// cursor: it stopped folding).
    pub projections: Vec<ProjectionRead>,
}

/// INV-PROJECTION: each projection of `facts.tenant` equals the reference fold of its events
/// for the aggregates it does not report incomplete; an aggregate reported incomplete is absent
/// from it; after a rebuild an aggregate is reported incomplete exactly when it is unreadable.
/// A digest is compared only when the world opened every payload of the aggregate.
pub fn check_projection(facts: &ProjectionFacts, line: u64) -> Judgement {
    let mut j = Judgement::default();
    let mut events: Vec<&PlainEvent> = facts.events.iter().filter(|e| e.tenant == facts.tenant).collect();
    events.sort_by_key(|e| e.seq);
    for p in &facts.projections {
        let folded: Vec<&PlainEvent> =
            events.iter().copied().filter(|e| p.cursor.is_none_or(|c| e.seq <= c) && facts.until_ts_ms.is_none_or(|u| e.ts_ms <= u)).collect();
        if folded.is_empty() && p.rows.is_empty() && p.incomplete.is_empty() {
            continue;
        }
        let why = match p.name.as_str() {
            AGGREGATE_STATE => aggregate_state_mismatches(facts, p, &folded),
            TENANT_COUNTERS => tenant_counters_mismatches(p, &folded),
            _ => continue,
        };
        j.check(PROJECTION);
        let why = incomplete_mismatches(facts, p, &folded).into_iter().chain(why);
        for w in why {
            j.violate(PROJECTION, &facts.node, line, format!("{} of tenant {}: {w}", p.name, facts.tenant));
        }
    }
    j
}

/// Whether the world could read every event of `aggregate` (its key is held and every payload
/// opened).
fn readable(facts: &ProjectionFacts, folded: &[&PlainEvent], aggregate: &str) -> bool {
    facts.keys_present.contains(aggregate) && folded.iter().filter(|e| e.aggregate == aggregate).all(|e| e.payload.is_some())
}

/// After a rebuild: the incomplete aggregates are exactly the unreadable ones.
fn incomplete_mismatches(facts: &ProjectionFacts, p: &ProjectionRead, folded: &[&PlainEvent]) -> Vec<String> {
    if !facts.rebuilt {
        return Vec::new();
    }
    let mut why = Vec::new();
    for a in &p.incomplete {
        if readable(facts, folded, a) {
            why.push(format!("aggregate {a} is reported incomplete after a rebuild, but its key is present and every event of it opens"));
        }
    }
    let aggregates: BTreeSet<&str> = folded.iter().map(|e| e.aggregate.as_str()).collect();
    for a in aggregates {
        if !p.incomplete.contains(a) && !readable(facts, folded, a) {
            let cause = if facts.keys_present.contains(a) { "an event of it does not open" } else { "its key is missing" };
            why.push(format!("aggregate {a} is not reported incomplete after a rebuild, but {cause}"));
        }
    }
    why
}

fn aggregate_state_mismatches(facts: &ProjectionFacts, p: &ProjectionRead, folded: &[&PlainEvent]) -> Vec<String> {
    let mut why = Vec::new();
    let mut found: BTreeMap<&str, &[String]> = BTreeMap::new();
    for r in &p.rows {
        if r.len() != 5 {
            why.push(format!("row {r:?} is not [aggregate, events, last_seq, last_kind, digest]"));
            continue;
        }
        if found.insert(r[0].as_str(), r).is_some() {
            why.push(format!("aggregate {} has two rows", r[0]));
        }
    }
    why.extend(order_mismatch(&p.rows));
    let want = fold_aggregates(folded.iter().copied().filter(|e| !p.incomplete.contains(&e.aggregate)));
    for a in &p.incomplete {
        if let Some(r) = found.get(a.as_str()) {
            why.push(format!("aggregate {a} is reported incomplete but the projection holds it: {r:?}"));
        }
    }
    for (a, f) in &want {
        let Some(r) = found.get(a.as_str()) else {
            why.push(format!("aggregate {a} is missing: expected {} events through seq {}", f.events, f.last_seq));
            continue;
        };
        let fields = [("events", f.events.to_string(), &r[1]), ("last_seq", f.last_seq.to_string(), &r[2]), ("last_kind", f.last_kind.clone(), &r[3])];
        for (name, expected, got) in fields {
            if &expected != got {
                why.push(format!("aggregate {a}: expected {name} {expected}, found {got}"));
            }
        }
        // A digest the world cannot recompute (a payload it could not open) is left unjudged.
        if let Some(d) = f.digest.filter(|_| readable(facts, folded, a)) {
            let expected = hex::encode(d);
            if r[4] != expected {
                why.push(format!("aggregate {a}: expected digest {}, found {}", short(&expected), short(&r[4])));
            }
        }
    }
    for a in found.keys() {
        if !want.contains_key(*a) && !p.incomplete.contains(*a) {
            why.push(format!("aggregate {a} has a row but no folded event"));
        }
    }
    why
}

fn tenant_counters_mismatches(p: &ProjectionRead, folded: &[&PlainEvent]) -> Vec<String> {
    let want = tenant_counters_rows(folded.iter().copied().filter(|e| !p.incomplete.contains(&e.aggregate)));
    rows_mismatch(&want, &p.rows).into_iter().collect()
}

/// Rows must be strictly ordered by their first column (byte order), as the stack's `ORDER BY`
/// gives them.
fn order_mismatch(rows: &[Vec<String>]) -> Option<String> {
    rows.windows(2).find(|w| w[0].first() >= w[1].first()).map(|w| format!("rows are not in canonical order: {:?} before {:?}", w[0], w[1]))
}

/// The first way `found` differs from `expected` (rows keyed by their first column), if any.
pub fn rows_mismatch(expected: &[Vec<String>], found: &[Vec<String>]) -> Option<String> {
    if expected == found {
        return None;
    }
    let key = |r: &Vec<String>| r.first().cloned().unwrap_or_default();
    let want: BTreeMap<String, &Vec<String>> = expected.iter().map(|r| (key(r), r)).collect();
    let got: BTreeMap<String, &Vec<String>> = found.iter().map(|r| (key(r), r)).collect();
    for (k, w) in &want {
        match got.get(k) {
            None => return Some(format!("expected row {w:?}, found none")),
            Some(g) if g != w => return Some(format!("expected row {w:?}, found {g:?}")),
            Some(_) => {}
        }
    }
    if let Some((_, g)) = got.iter().find(|(k, _)| !want.contains_key(*k)) {
        return Some(format!("unexpected row {g:?}"));
    }
    Some(order_mismatch(found).unwrap_or_else(|| format!("expected {} rows, found {} (a row repeats)", expected.len(), found.len())))
}

fn short(hex: &str) -> &str {
    &hex[..hex.len().min(12)]
}

// ---------------------------------------------------------------------------------------------
// INV-SNAPSHOT

/// One projection of one tenant after a restore from the latest valid snapshot plus the tail,
/// and after a full replay of the same events with the same keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPair {
    pub name: String,
    /// `Engine::rows` after `restore_from_snapshot`.
    pub restored: Vec<Vec<String>>,
    /// The aggregates reported incomplete after the restore.
    pub restored_incomplete: BTreeSet<String>,
    /// `Engine::rows` after a full rebuild of the tenant (no time bound).
    pub replayed: Vec<Vec<String>>,
    /// The aggregates reported incomplete after the full rebuild.
    pub replayed_incomplete: BTreeSet<String>,
}

/// A node's restore-versus-replay comparison for one tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFacts {
    pub node: String,
    pub tenant: String,
    pub projections: Vec<SnapshotPair>,
}

/// INV-SNAPSHOT: restored equals replayed. An aggregate either side reports incomplete is left
/// out (a key lost after the snapshot leaves the snapshot's fold of it, which a replay cannot
/// produce); a projection without a per-aggregate key (`tenant_counters`) is compared only when
/// neither side skipped any aggregate.
pub fn check_snapshot(facts: &SnapshotFacts, line: u64) -> Judgement {
    let mut j = Judgement::default();
    for p in &facts.projections {
        if p.restored.is_empty() && p.replayed.is_empty() {
            continue;
        }
        let skipped: BTreeSet<&String> = p.restored_incomplete.iter().chain(&p.replayed_incomplete).collect();
        let (restored, replayed) = if p.name == AGGREGATE_STATE {
            let keep = |rows: &[Vec<String>]| -> Vec<Vec<String>> { rows.iter().filter(|r| r.first().is_none_or(|a| !skipped.contains(a))).cloned().collect() };
            (keep(&p.restored), keep(&p.replayed))
        } else if skipped.is_empty() {
            (p.restored.clone(), p.replayed.clone())
        } else {
            continue;
        };
        j.check(SNAPSHOT);
        if let Some(why) = rows_mismatch(&replayed, &restored) {
            j.violate(SNAPSHOT, &facts.node, line, format!("{} of tenant {}: snapshot + tail differs from a full replay: {why}", p.name, facts.tenant));
        }
    }
    j
}

// ---------------------------------------------------------------------------------------------
// INV-TENANT

/// What a device holds or saw, with the tenant of each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantFacts {
    pub node: String,
    /// The device's tenant.
    pub tenant: String,
    /// Every event the device holds: (seq, tenant).
    pub events: Vec<(u64, String)>,
    /// Every tenant for which one of the device's projections holds rows: (projection, tenant).
    pub projection_tenants: Vec<(String, String)>,
    /// Anything else the device saw that names a tenant (pull-page items, answers): (what,
    /// tenant).
    pub seen: Vec<(String, String)>,
}

/// INV-TENANT: every event, projection row and item a device holds or saw is of its tenant.
pub fn check_tenant(facts: &TenantFacts, line: u64) -> Judgement {
    let mut j = Judgement::default();
    if facts.events.is_empty() && facts.projection_tenants.is_empty() && facts.seen.is_empty() {
        return j;
    }
    j.check(TENANT);
    let own = facts.tenant.as_str();
    let mut foreign: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (seq, t) in &facts.events {
        if t != own {
            foreign.entry(t).or_default().push(format!("event {seq}"));
        }
    }
    for (p, t) in &facts.projection_tenants {
        if t != own {
            foreign.entry(t).or_default().push(format!("rows of projection {p}"));
        }
    }
    for (what, t) in &facts.seen {
        if t != own {
            foreign.entry(t).or_default().push(what.clone());
        }
    }
    for (t, what) in foreign {
        let shown: Vec<&str> = what.iter().take(5).map(String::as_str).collect();
        let more = if what.len() > shown.len() { format!(" and {} more", what.len() - shown.len()) } else { String::new() };
        j.violate(TENANT, &facts.node, line, format!("a device of tenant {own} sees tenant {t}'s data: {}{more}", shown.join(", ")));
    }
    j
}

// ---------------------------------------------------------------------------------------------
// INV-READ-ONLY

/// One write tried while the node's mode was READ_ONLY.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteAttempt {
    /// What was tried, for messages (`append`, `apply`, `snapshot`, `rebuild`).
    pub what: String,
    /// The trace line of its answer.
    pub line: u64,
    /// Whether it is the runbook's own recovery (a rebuild or restore of derived state), which
    /// READ_ONLY allows.
    pub recovery: bool,
    /// Whether it succeeded.
    pub ok: bool,
    /// Its error code when it failed (`store:readOnly` expected; another error, such as an I/O
    /// error before the mode was read, also leaves storage unchanged and is allowed).
    pub code: Option<String>,
}

/// A node's READ_ONLY period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadOnlyFacts {
    pub node: String,
    /// Every write tried while the mode was READ_ONLY.
    pub attempts: Vec<WriteAttempt>,
    /// A digest of the stored content right after the mode became READ_ONLY, and right before
    /// it was left (`None` when it could not be read). Digest the rows commands write (events,
    /// outbox, snapshots, keys, meta other than the mode), not the file bytes (a WAL checkpoint
    /// on reopening changes bytes, not content) and not the derived projection tables that a
    /// recovery may rebuild.
    pub storage_before: Option<String>,
    pub storage_after: Option<String>,
}

/// INV-READ-ONLY: no command succeeded while READ_ONLY, and the stored content did not change.
/// `line` is the trace line at which the period ended.
pub fn check_read_only(facts: &ReadOnlyFacts, line: u64) -> Judgement {
    let mut j = Judgement::default();
    let commands: Vec<&WriteAttempt> = facts.attempts.iter().filter(|a| !a.recovery).collect();
    let digests = facts.storage_before.as_ref().zip(facts.storage_after.as_ref());
    if commands.is_empty() && digests.is_none() {
        return j;
    }
    j.check(READ_ONLY);
    for a in commands.iter().filter(|a| a.ok) {
        j.violate(READ_ONLY, &facts.node, a.line, format!("{} succeeded in READ_ONLY: expected store:readOnly", a.what));
    }
    if let Some((before, after)) = digests {
        if before != after {
            j.violate(
                READ_ONLY,
                &facts.node,
                line,
                format!("stored content changed during READ_ONLY: digest {} before, {} after", short(before), short(after)),
            );
        }
    }
    j
}

// ---------------------------------------------------------------------------------------------
// One entry point for the checker.

/// Something about stores and secrets the world read back, for [`StoreModel::observe`]: each
/// variant is the input of one check above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreFact {
    /// A node's projections of one tenant, with its decrypted events and the keys it holds.
    Projection(ProjectionFacts),
    /// A restore from the latest valid snapshot plus the tail, next to a full replay.
    Snapshot(SnapshotFacts),
    /// What a device holds or saw, with tenants.
    Tenant(TenantFacts),
    /// A node's READ_ONLY period, at its end.
    ReadOnly(ReadOnlyFacts),
    /// Byte images (disk files, exports, diagnostics bundles) of `node` (or `world`) and the
    /// secrets that must not be in them.
    Scan { node: String, images: Vec<(String, Vec<u8>)>, secrets: Vec<crate::secrets::Secret> },
    /// A read of a node's vault, or an explicit recovery of its key.
    Vault(crate::secrets::VaultObservation),
    /// The saga effects' receiver next to the devices' sagas (INV-ONCE).
    Effects(crate::store_ops::EffectsFacts),
    /// A device's index artifact at the end of the run (INV-PROJECTION).
    Artifact(crate::store_ops::ArtifactFacts),
    /// A device's schema at the end of the run (INV-MIGRATION).
    Migration(crate::store_ops::MigrationFacts),
    /// A room member's packets and epoch keys at the end of the run (INV-GROUP).
    Group(crate::group::GroupFacts),
}

/// The store and secrets part of the model: stateless checks, plus what it remembers of vault
/// keys.
#[derive(Debug, Clone, Default)]
pub struct StoreModel {
    vaults: crate::secrets::NoRegen,
    /// The scanner of the last scan, kept while the secrets are the same: the end of a run
    /// scans every node's images for one list, and building the scanner costs more than
    /// comparing the list.
    scanner: Option<crate::secrets::SecretScanner>,
}

impl StoreModel {
    pub fn new() -> StoreModel {
        StoreModel::default()
    }

    /// Takes one fact; `line` is the trace line that recorded it (a vault observation carries
    /// its own).
    pub fn observe(&mut self, fact: &StoreFact, line: u64) -> Judgement {
        match fact {
            StoreFact::Projection(f) => check_projection(f, line),
            StoreFact::Snapshot(f) => check_snapshot(f, line),
            StoreFact::Tenant(f) => check_tenant(f, line),
            StoreFact::ReadOnly(f) => check_read_only(f, line),
            StoreFact::Scan { node, images, secrets } => {
                let images: Vec<(String, &[u8])> = images.iter().map(|(n, b)| (n.clone(), b.as_slice())).collect();
                if !self.scanner.as_ref().is_some_and(|s| s.looks_for(secrets)) {
                    self.scanner = Some(crate::secrets::SecretScanner::new(secrets.clone()));
                }
                let scanner = self.scanner.as_ref().expect("built above");
                crate::secrets::check_no_plaintext_with(scanner, node, line, &images)
            }
            StoreFact::Vault(o) => self.vaults.observe(o),
            StoreFact::Effects(f) => crate::store_ops::check_effects(f, line),
            StoreFact::Artifact(f) => crate::store_ops::check_artifact(f, line),
            StoreFact::Migration(f) => crate::store_ops::check_migration(f, line),
            StoreFact::Group(f) => crate::group::check_group(f, line),
        }
    }
}

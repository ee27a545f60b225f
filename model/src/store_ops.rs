//! The store's own work on a device, judged from what the world reads back (runbooks 000, 002,
//! 004): saga effects, index artifacts and the schema migration.
//!
//! - INV-ONCE for saga effects ([`check_effects`]): the receiver applied no effect twice, every
//!   effect a saga recorded `done` happened, and once the world healed and the sagas settled,
//!   every effect a device's counts call for (or that a saga recorded) happened, no saga step is
//!   left unfinished, and no effect happened without a request. The expected effects come from
//!   the model's own count of the events each device can read, not from the stack's projection.
//! - INV-PROJECTION for index artifacts ([`check_artifact`]): an artifact at rest opens and
//!   equals the reference fold of the events it indexes (an artifact is derived state, like a
//!   projection).
//! - INV-MIGRATION ([`check_migration`]): a device that installed the new schema ends the run at
//!   the new version with no migration left in progress, however often a crash cut it short.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::invariants::{MIGRATION, ONCE, PROJECTION};
use crate::store::{check_projection, Judgement, PlainEvent, ProjectionFacts, ProjectionRead, AGGREGATE_STATE};

/// The effect id the achievement saga gives the effect for `tenant` passing `threshold` events
/// (runbook 000's example): the same on every device and every run.
pub fn achievement_id(tenant: &str, threshold: u64) -> String {
    format!("achievement/{tenant}/{threshold}")
}

/// One saga step a device holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaStepFact {
    pub device: String,
    pub tenant: String,
    pub effect_id: String,
    /// `requested`, `delivering` or `done`.
    pub state: String,
}

/// One delivery the receiver logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryFact {
    pub effect_id: String,
    /// Whether this delivery applied the effect (false: a duplicate it recognised).
    pub applied: bool,
}

/// What a device can count for its saga: its tenant's events whose payload it can read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaCount {
    pub device: String,
    pub tenant: String,
    pub readable_events: u64,
}

/// The receiver's record next to the devices' sagas.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectsFacts {
    /// The receiver's node.
    pub node: String,
    /// The thresholds the devices' achievement sagas use.
    pub thresholds: Vec<u64>,
    pub counts: Vec<SagaCount>,
    pub steps: Vec<SagaStepFact>,
    /// Every delivery, in order.
    pub log: Vec<DeliveryFact>,
    /// The effect ids the receiver's record says it applied.
    pub applied: Vec<String>,
    /// Whether the world healed and every device ran its sagas to the end: only then must every
    /// requested effect have happened.
    pub settled: bool,
}

/// INV-ONCE for saga effects.
pub fn check_effects(f: &EffectsFacts, line: u64) -> Judgement {
    let mut j = Judgement::default();
    if f.log.is_empty() && f.applied.is_empty() && f.steps.is_empty() && !(f.settled && f.counts.iter().any(|c| c.readable_events > 0)) {
        return j;
    }
    j.check(ONCE);
    let mut why = Vec::new();
    let mut times: BTreeMap<&str, u64> = BTreeMap::new();
    for d in f.log.iter().filter(|d| d.applied) {
        *times.entry(d.effect_id.as_str()).or_default() += 1;
    }
    for (id, n) in times.iter().filter(|(_, n)| **n > 1) {
        why.push(format!("effect {id} was applied {n} times"));
    }
    let applied: BTreeSet<&str> = f.applied.iter().map(String::as_str).collect();
    if applied.len() != f.applied.len() {
        why.push("the receiver's record names an effect twice".to_string());
    }
    for id in times.keys().filter(|id| !applied.contains(**id)) {
        why.push(format!("the receiver logged effect {id} as applied but its record does not hold it"));
    }
    for id in applied.iter().filter(|id| !times.contains_key(**id)) {
        why.push(format!("the receiver's record holds effect {id} but no delivery applied it"));
    }
    for s in f.steps.iter().filter(|s| s.state == "done" && !applied.contains(s.effect_id.as_str())) {
        why.push(format!("{} recorded effect {} done, but it never happened", s.device, s.effect_id));
    }
    if f.settled {
        why.extend(settled_mismatches(f, &applied));
    }
    for w in why {
        j.violate(ONCE, &f.node, line, w);
    }
    j
}

/// After the heal: every effect called for happened, every step is done, nothing else happened.
fn settled_mismatches(f: &EffectsFacts, applied: &BTreeSet<&str>) -> Vec<String> {
    let mut why = Vec::new();
    let mut wanted: BTreeMap<String, String> = BTreeMap::new();
    for c in &f.counts {
        for t in f.thresholds.iter().filter(|t| **t <= c.readable_events) {
            wanted.entry(achievement_id(&c.tenant, *t)).or_insert_with(|| format!("{} reads {} events of {}", c.device, c.readable_events, c.tenant));
        }
    }
    for s in &f.steps {
        wanted.entry(s.effect_id.clone()).or_insert_with(|| format!("{} recorded it", s.device));
        if s.state != "done" {
            why.push(format!("{}'s saga step {} is still {} after the heal", s.device, s.effect_id, s.state));
        }
    }
    for (id, cause) in &wanted {
        if !applied.contains(id.as_str()) {
            why.push(format!("effect {id} never happened after the heal ({cause})"));
        }
    }
    for id in applied.iter().filter(|id| !wanted.contains_key(**id)) {
        why.push(format!("effect {id} happened without a request: no device recorded it or counts enough events"));
    }
    why
}

/// A device's index artifact as the world loaded it at the end of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRead {
    /// The projection cursor the artifact was built at.
    pub through_seq: u64,
    /// Its entries as `aggregate_state` rows: `[aggregate, events, last_seq, last_kind, digest]`.
    pub rows: Vec<Vec<String>>,
}

/// A device's index artifact with what it should be the fold of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactFacts {
    pub node: String,
    pub tenant: String,
    /// The device's events, decrypted with the keys it holds.
    pub events: Vec<PlainEvent>,
    pub keys_present: BTreeSet<String>,
    /// The aggregates the indexed projection reports incomplete.
    pub incomplete: BTreeSet<String>,
    /// The artifact, or the code of why it did not load.
    pub loaded: Result<ArtifactRead, String>,
}

/// INV-PROJECTION for an index artifact: it loads and equals the reference fold of the events
/// through its cursor.
pub fn check_artifact(f: &ArtifactFacts, line: u64) -> Judgement {
    let read = match &f.loaded {
        Ok(r) => r,
        Err(code) => {
            let mut j = Judgement::default();
            j.check(PROJECTION);
            let m = format!("the index artifact of tenant {} does not load at the end of the run ({code}): it was left broken, not rebuilt", f.tenant);
            j.violate(PROJECTION, &f.node, line, m);
            return j;
        }
    };
    let projection = ProjectionRead { name: AGGREGATE_STATE.into(), rows: read.rows.clone(), incomplete: f.incomplete.clone(), cursor: Some(read.through_seq) };
    let facts = ProjectionFacts {
        node: f.node.clone(),
        tenant: f.tenant.clone(),
        events: f.events.clone(),
        keys_present: f.keys_present.clone(),
        rebuilt: false,
        until_ts_ms: None,
        projections: vec![projection],
    };
    let mut j = check_projection(&facts, line);
    for v in &mut j.violations {
        v.message = format!("index artifact: {}", v.message);
    }
    j
}

/// A device's schema at the end of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationFacts {
    pub node: String,
    /// Whether the device installed the code that migrates to `target`.
    pub upgraded: bool,
    pub target: u32,
    /// The recorded version (`None`: unreadable).
    pub version: Option<u32>,
    pub in_progress: bool,
}

/// INV-MIGRATION: an upgraded device ends at the target version with nothing in progress.
pub fn check_migration(f: &MigrationFacts, line: u64) -> Judgement {
    let mut j = Judgement::default();
    if !f.upgraded {
        return j;
    }
    j.check(MIGRATION);
    if f.version != Some(f.target) || f.in_progress {
        let version = f.version.map(|v| v.to_string()).unwrap_or_else(|| "unreadable".into());
        let m = format!(
            "the device installed schema {} but ends at version {version}{}",
            f.target,
            if f.in_progress { " with a migration in progress" } else { "" }
        );
        j.violate(MIGRATION, &f.node, line, m);
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(device: &str, id: &str, state: &str) -> SagaStepFact {
        SagaStepFact { device: device.into(), tenant: "acme".into(), effect_id: id.into(), state: state.into() }
    }

    fn delivery(id: &str, applied: bool) -> DeliveryFact {
        DeliveryFact { effect_id: id.into(), applied }
    }

    /// Two devices of acme, thresholds 2 and 5; one reads 4 events: only the first is called for.
    fn settled_run() -> EffectsFacts {
        let a2 = achievement_id("acme", 2);
        EffectsFacts {
            node: "effects".into(),
            thresholds: vec![2, 5],
            counts: vec![
                SagaCount { device: "client-1".into(), tenant: "acme".into(), readable_events: 4 },
                SagaCount { device: "client-3".into(), tenant: "acme".into(), readable_events: 4 },
            ],
            steps: vec![step("client-1", &a2, "done"), step("client-3", &a2, "done")],
            // client-3 delivered it again after a crash between the effect and its state update.
            log: vec![delivery(&a2, true), delivery(&a2, false)],
            applied: vec![a2],
            settled: true,
        }
    }

    fn messages(j: &Judgement) -> Vec<String> {
        j.violations.iter().map(|v| v.message.clone()).collect()
    }

    #[test]
    fn a_clean_run_with_a_recognised_duplicate_holds() {
        let j = check_effects(&settled_run(), 7);
        assert!(j.is_clean(), "{:?}", messages(&j));
        assert_eq!(j.checks_of(ONCE), 1);
    }

    #[test]
    fn an_effect_applied_twice_breaks_once() {
        let mut f = settled_run();
        f.log[1].applied = true;
        let m = messages(&check_effects(&f, 7));
        assert!(m.iter().any(|m| m.contains("applied 2 times")), "{m:?}");
    }

    #[test]
    fn an_effect_lost_by_a_crash_before_it_was_sent_breaks_once_after_the_heal() {
        let mut f = settled_run();
        f.steps[0].state = "delivering".into();
        f.steps[1].state = "delivering".into();
        f.log.clear();
        f.applied.clear();
        let m = messages(&check_effects(&f, 7));
        assert!(m.iter().any(|m| m.contains("never happened after the heal")), "{m:?}");
        assert!(m.iter().any(|m| m.contains("still delivering")), "{m:?}");
        // Before the heal, an unfinished step is allowed: the saga may still finish it.
        f.settled = false;
        assert!(check_effects(&f, 7).is_clean());
    }

    #[test]
    fn a_step_recorded_done_without_its_effect_breaks_once_at_any_time() {
        let mut f = settled_run();
        f.settled = false;
        f.log.clear();
        f.applied.clear();
        let m = messages(&check_effects(&f, 7));
        assert!(m.iter().any(|m| m.contains("recorded effect achievement/acme/2 done, but it never happened")), "{m:?}");
    }

    #[test]
    fn an_effect_called_for_by_the_counts_must_happen_even_if_no_saga_recorded_it() {
        let mut f = settled_run();
        f.counts[0].readable_events = 5;
        let m = messages(&check_effects(&f, 7));
        assert_eq!(m, vec!["effect achievement/acme/5 never happened after the heal (client-1 reads 5 events of acme)".to_string()]);
    }

    #[test]
    fn an_effect_without_a_request_breaks_once() {
        let mut f = settled_run();
        let extra = achievement_id("acme", 5);
        f.log.push(delivery(&extra, true));
        f.applied.push(extra);
        let m = messages(&check_effects(&f, 7));
        assert!(m.iter().any(|m| m.contains("happened without a request")), "{m:?}");
    }

    #[test]
    fn a_receiver_whose_record_and_log_disagree_breaks_once() {
        let mut f = settled_run();
        f.applied.clear();
        let m = messages(&check_effects(&f, 7));
        assert!(m.iter().any(|m| m.contains("its record does not hold it")), "{m:?}");
    }

    #[test]
    fn nothing_to_check_is_vacuous() {
        let f = EffectsFacts { node: "effects".into(), thresholds: vec![2], settled: true, ..EffectsFacts::default() };
        assert_eq!(check_effects(&f, 1).checks_of(ONCE), 0);
    }

    fn event(seq: u64, aggregate: &str, payload: &[u8]) -> PlainEvent {
        PlainEvent { seq, tenant: "acme".into(), aggregate: aggregate.into(), kind: "created".into(), ts_ms: 0, payload: Some(payload.to_vec()) }
    }

    fn artifact(loaded: Result<ArtifactRead, String>) -> ArtifactFacts {
        ArtifactFacts {
            node: "client-1".into(),
            tenant: "acme".into(),
            events: vec![event(1, "a", b"one"), event(2, "b", b"two"), event(3, "a", b"three")],
            keys_present: ["a".to_string(), "b".to_string()].into(),
            incomplete: BTreeSet::new(),
            loaded,
        }
    }

    #[test]
    fn an_artifact_equal_to_the_fold_holds_and_a_changed_or_broken_one_does_not() {
        let rows = crate::store::aggregate_state_rows(&artifact(Err(String::new())).events).unwrap();
        let good = artifact(Ok(ArtifactRead { through_seq: 3, rows: rows.clone() }));
        let j = check_artifact(&good, 3);
        assert!(j.is_clean(), "{:?}", messages(&j));
        assert_eq!(j.checks_of(PROJECTION), 1);
        // Built before the last event: its cursor says so, and it holds.
        let early = crate::store::aggregate_state_rows(&good.events[..2]).unwrap();
        assert!(check_artifact(&artifact(Ok(ArtifactRead { through_seq: 2, rows: early })), 3).is_clean());
        let mut changed = rows;
        changed[0][1] = "9".into();
        let m = messages(&check_artifact(&artifact(Ok(ArtifactRead { through_seq: 3, rows: changed })), 3));
        assert!(m.iter().any(|m| m.starts_with("index artifact: ") && m.contains("expected events 2, found 9")), "{m:?}");
        let m = messages(&check_artifact(&artifact(Err("artifact:corrupt".into())), 3));
        assert!(m[0].contains("does not load") && m[0].contains("artifact:corrupt"), "{m:?}");
    }

    #[test]
    fn an_upgraded_device_must_end_at_the_new_version_with_nothing_in_progress() {
        let f = |upgraded, version, in_progress| MigrationFacts { node: "client-2".into(), upgraded, target: 2, version, in_progress };
        assert!(check_migration(&f(true, Some(2), false), 1).is_clean());
        assert_eq!(check_migration(&f(true, Some(2), false), 1).checks_of(MIGRATION), 1);
        assert_eq!(check_migration(&f(false, Some(1), false), 1).checks_of(MIGRATION), 0, "not upgraded: nothing to check");
        assert!(!check_migration(&f(true, Some(1), false), 1).is_clean());
        assert!(!check_migration(&f(true, Some(1), true), 1).is_clean());
        assert!(!check_migration(&f(true, None, false), 1).is_clean());
    }
}

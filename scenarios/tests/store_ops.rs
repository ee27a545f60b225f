//! The store's own work in the world (sagas with an external receiver, index artifacts,
//! projection verification, the schema migration, diagnostics bundles) and the faults that
//! exercise it: each fault recovers and the run passes, and each run fails when the recovery is
//! skipped (a planted bug).

use drill_scenarios::plan::store::StorePlan;
use drill_scenarios::plan::store_ops::{ArtifactCorrupt, Bug, OpsPlan, ProjectionCorrupt, SagaCrash, SagaPoint, Upgrade};
use drill_scenarios::plan::Plan;
use drill_scenarios::Profile;
use drill_scenarios::{plan_for, run::execute, Outcome, RunReport};
use serde_json::Value;

fn lines(r: &RunReport) -> Vec<Value> {
    r.trace.iter().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn of_kind<'a>(l: &'a [Value], kind: &str) -> Vec<&'a Value> {
    l.iter().filter(|v| v["kind"] == kind).collect()
}

fn checks(r: &RunReport, invariant: &str) -> u64 {
    r.checks.get(invariant).copied().unwrap_or(0)
}

fn fault(r: &RunReport, kind: &str) -> u64 {
    r.faults.get(kind).copied().unwrap_or(0)
}

fn with_ops(seed: u64, ops: OpsPlan) -> Plan {
    let mut p = plan_for(seed, "sync-basic", Profile::None).unwrap();
    p.store = Some(StorePlan { ops: Some(ops), ..StorePlan::default() });
    p
}

fn work() -> OpsPlan {
    OpsPlan::work(&[2, 6, 12])
}

fn violated(r: &RunReport, invariant: &str) -> Vec<String> {
    r.violations.iter().filter(|v| v.invariant == invariant).map(|v| v.message.clone()).collect()
}

#[test]
fn the_store_work_runs_clean_and_every_bundle_is_checked_and_scanned() {
    for seed in [1, 2] {
        let r = execute(&with_ops(seed, work()), None).unwrap();
        assert_eq!(r.outcome, Outcome::Pass, "seed {seed}: {:?}", r.violations);
        let l = lines(&r);
        // Effects reached the receiver on its own node, and the model judged them.
        assert!(!of_kind(&l, "effects.delivery").is_empty(), "seed {seed}: no delivery");
        assert!(checks(&r, "INV-ONCE") > 0);
        // Every device exported a bundle that passed check_bundle, and the scan saw it.
        let bundles = of_kind(&l, "check.diagnostics");
        assert_eq!(bundles.len(), 3, "seed {seed}");
        assert!(bundles.iter().all(|b| b["detail"]["ok"] == true), "{bundles:?}");
        // Every device checked its artifact at the end against the model's fold.
        assert!(checks(&r, "INV-PROJECTION") > 3);
        assert!(of_kind(&l, "fault.saga_crash").is_empty() && r.faults.is_empty(), "{:?}", r.faults);
    }
}

#[test]
fn a_saga_cut_before_its_effect_delivers_it_after_the_restart_and_skipping_that_fails() {
    let crash = |bugs: Vec<Bug>| OpsPlan { saga_crash: vec![SagaCrash { node: "client-1".into(), at_ms: 0, point: SagaPoint::BeforeEffect }], bugs, ..work() };
    for seed in [1, 2] {
        let r = execute(&with_ops(seed, crash(vec![])), None).unwrap();
        assert_eq!(r.outcome, Outcome::Pass, "seed {seed}: {:?}", r.violations);
        assert_eq!(fault(&r, "saga.crash"), 1, "{:?}", r.faults);
        let l = lines(&r);
        let cut = of_kind(&l, "fault.saga_crash")[0]["detail"]["effect_id"].as_str().unwrap().to_string();
        // The interrupted effect was delivered later, on its second attempt, and applied once.
        let again = l.iter().any(|v| {
            v["node"] == "client-1" && v["kind"] == "store.saga_delivered" && v["detail"]["effect_id"] == cut.as_str() && v["detail"]["attempts"] == 2
        });
        assert!(again, "seed {seed}: {cut} was not delivered again");

        let skipped = execute(&with_ops(seed, crash(vec![Bug::SkipSagaRedelivery])), None).unwrap();
        assert_eq!(skipped.outcome, Outcome::Violation, "seed {seed}");
        let m = violated(&skipped, "INV-ONCE");
        assert!(m.iter().any(|m| m.contains("still delivering")), "{m:?}");
    }
}

#[test]
fn a_saga_cut_between_its_effect_and_its_state_sends_a_duplicate_the_receiver_recognises() {
    let crash = |bugs: Vec<Bug>| OpsPlan { saga_crash: vec![SagaCrash { node: "client-2".into(), at_ms: 0, point: SagaPoint::BeforeDone }], bugs, ..work() };
    for seed in [1, 2] {
        let r = execute(&with_ops(seed, crash(vec![])), None).unwrap();
        assert_eq!(r.outcome, Outcome::Pass, "seed {seed}: {:?}", r.violations);
        assert_eq!(fault(&r, "saga.crash"), 1);
        let l = lines(&r);
        let cut = of_kind(&l, "fault.saga_crash")[0]["detail"]["effect_id"].as_str().unwrap().to_string();
        let duplicate = of_kind(&l, "effects.delivery").iter().any(|v| v["detail"]["effect_id"] == cut.as_str() && v["detail"]["first_time"] == false);
        assert!(duplicate, "seed {seed}: the re-run of {cut} was not a recognised duplicate");

        let skipped = execute(&with_ops(seed, crash(vec![Bug::SkipSagaRedelivery])), None).unwrap();
        assert_eq!(skipped.outcome, Outcome::Violation, "seed {seed}");
        assert!(violated(&skipped, "INV-ONCE").iter().any(|m| m.contains(&cut) && m.contains("still delivering")), "{:?}", skipped.violations);
    }
}

#[test]
fn a_corrupt_artifact_is_detected_deleted_and_rebuilt_and_leaving_it_fails() {
    let corrupt = |bugs: Vec<Bug>| OpsPlan { artifact_corrupt: vec![ArtifactCorrupt { node: "client-1".into(), at_ms: 4_000 }], bugs, ..work() };
    for seed in [1, 2] {
        let r = execute(&with_ops(seed, corrupt(vec![])), None).unwrap();
        assert_eq!(r.outcome, Outcome::Pass, "seed {seed}: {:?}", r.violations);
        assert_eq!(fault(&r, "artifact.corrupt"), 1, "{:?}", r.faults);
        let l = lines(&r);
        let found = of_kind(&l, "store.artifact_corrupt");
        assert!(found.iter().any(|v| v["node"] == "client-1" && v["detail"]["code"] == "artifact:corrupt" && v["detail"]["rebuilt"] == true), "{found:?}");

        let left = execute(&with_ops(seed, corrupt(vec![Bug::SkipArtifactRebuild])), None).unwrap();
        assert_eq!(left.outcome, Outcome::Violation, "seed {seed}");
        let m = violated(&left, "INV-PROJECTION");
        assert!(m.iter().any(|m| m.contains("index artifact") && m.contains("artifact:corrupt")), "{m:?}");
    }
}

#[test]
fn a_corrupt_projection_row_is_found_marked_unhealthy_and_rebuilt_and_leaving_it_fails() {
    for projection in ["aggregate_state", "tenant_counters"] {
        let corrupt = |bugs: Vec<Bug>| OpsPlan {
            projection_corrupt: vec![ProjectionCorrupt { node: "client-3".into(), at_ms: 4_000, projection: projection.into(), nth: 1 }],
            bugs,
            ..work()
        };
        for seed in [1, 2] {
            let r = execute(&with_ops(seed, corrupt(vec![])), None).unwrap();
            assert_eq!(r.outcome, Outcome::Pass, "{projection} seed {seed}: {:?}", r.violations);
            assert_eq!(fault(&r, "projection.corrupt"), 1, "{:?}", r.faults);
            let l = lines(&r);
            let unhealthy = of_kind(&l, "store.projection_unhealthy");
            assert!(unhealthy.iter().any(|v| v["detail"]["projection"] == projection && v["detail"]["unhealthy"][0] == projection), "{unhealthy:?}");
            assert!(!of_kind(&l, "store.projection_rebuilt").is_empty());
            let checked = l.iter().any(|v| v["kind"] == "check.store" && v["detail"]["what"] == "projection_repaired");
            assert!(checked, "the repaired projections were not checked");

            let left = execute(&with_ops(seed, corrupt(vec![Bug::SkipProjectionRepair])), None).unwrap();
            assert_eq!(left.outcome, Outcome::Violation, "{projection} seed {seed}");
            assert!(!violated(&left, "INV-PROJECTION").is_empty(), "{:?}", left.violations);
        }
    }
}

#[test]
fn a_migration_cut_by_a_power_cut_finishes_at_the_next_start_and_not_resuming_fails() {
    let mut cut_inside = 0;
    for (seed, ops) in [(1, 5), (2, 20), (3, 35)] {
        let upgrade = |bugs: Vec<Bug>| OpsPlan { upgrade: vec![Upgrade { node: "client-2".into(), at_ms: 3_000, cut_after_ops: Some(ops) }], bugs, ..work() };
        let r = execute(&with_ops(seed, upgrade(vec![])), None).unwrap();
        assert_eq!(r.outcome, Outcome::Pass, "seed {seed}: {:?}", r.violations);
        assert!(checks(&r, "INV-MIGRATION") > 0);
        let l = lines(&r);
        let migrated = of_kind(&l, "store.migrated");
        assert!(!migrated.is_empty(), "seed {seed}: never migrated");
        if fault(&r, "migration.crash") == 1 {
            cut_inside += 1;
            let skipped = execute(&with_ops(seed, upgrade(vec![Bug::SkipMigrationResume])), None).unwrap();
            assert_eq!(skipped.outcome, Outcome::Violation, "seed {seed}");
            assert!(violated(&skipped, "INV-MIGRATION").iter().any(|m| m.contains("ends at version 1")), "{:?}", skipped.violations);
        }
    }
    assert!(cut_inside >= 2, "the cuts missed the migration");
}

#[test]
fn a_bundle_that_leaks_a_plaintext_is_caught_by_its_check_and_by_the_scan() {
    let r = execute(&with_ops(1, OpsPlan { bugs: vec![Bug::LeakInBundle], ..work() }), None).unwrap();
    assert_eq!(r.outcome, Outcome::Violation);
    let m: Vec<_> = r.violations.iter().filter(|v| v.invariant == "INV-NO-PLAINTEXT").collect();
    assert!(m.iter().any(|v| v.message.contains(":diagnostics.json")), "{m:?}");
    let l = lines(&r);
    assert!(of_kind(&l, "check.diagnostics").iter().any(|v| v["detail"]["code"] == "diagnostics:secretFound"));
}

#[test]
fn swarm_plans_carry_the_store_work_and_each_fault_kind() {
    let mut kinds = std::collections::BTreeSet::new();
    for seed in 1..=40 {
        let p = plan_for(seed, "sync-basic", Profile::Swarm).unwrap();
        let ops = p.store.as_ref().and_then(|s| s.ops.as_ref()).expect("swarm plans carry store work");
        assert!(!ops.saga_thresholds.is_empty());
        for (k, n) in [
            ("saga", ops.saga_crash.len()),
            ("artifact", ops.artifact_corrupt.len()),
            ("projection", ops.projection_corrupt.len()),
            ("upgrade", ops.upgrade.len()),
        ] {
            if n > 0 {
                kinds.insert(k);
            }
        }
        assert_eq!(drill_scenarios::plan::Plan::parse(&p.canonical_json()).unwrap(), p);
    }
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    let mut bad = with_ops(1, OpsPlan { upgrade: vec![Upgrade { node: "client-9".into(), at_ms: 0, cut_after_ops: None }], ..work() });
    assert!(bad.validate().unwrap_err().contains("client-9"));
    bad.store = Some(StorePlan { ops: Some(OpsPlan::work(&[0])), ..StorePlan::default() });
    assert!(bad.validate().is_err());
}

#[test]
fn the_effects_node_crashed_or_cut_off_still_applies_each_effect_once_and_skipping_redelivery_fails() {
    use drill_scenarios::plan::store_ops::{EffectsCrash, EffectsPartition};
    let faults = |bugs: Vec<Bug>, crash: bool| OpsPlan {
        effects_crash: if crash { vec![EffectsCrash { at_ms: 0, down_ms: 4_000 }] } else { vec![] },
        effects_partition: if crash { vec![] } else { vec![EffectsPartition { at_ms: 0, ms: 4_000 }] },
        bugs,
        ..work()
    };
    for (seed, crash) in [(1, true), (2, true), (1, false), (2, false)] {
        let r = execute(&with_ops(seed, faults(vec![], crash)), None).unwrap();
        assert_eq!(r.outcome, Outcome::Pass, "seed {seed} crash {crash}: {:?}", r.violations);
        let kind = if crash { "effects.crash" } else { "effects.partition" };
        assert_eq!(fault(&r, kind), 1, "{:?}", r.faults);
        assert!(checks(&r, "INV-ONCE") > 0);
        let l = lines(&r);
        // A delivery found the receiver unreachable, and the same effect went through later.
        let failed: Vec<&Value> = of_kind(&l, "store.saga_failed").into_iter().filter(|v| v["detail"]["code"] == "saga:effectUnavailable").collect();
        assert!(!failed.is_empty(), "seed {seed} crash {crash}: no delivery met the fault");
        let id = failed[0]["detail"]["effect_id"].as_str().unwrap();
        let later = of_kind(&l, "store.saga_delivered").iter().any(|v| v["detail"]["effect_id"] == id && v["detail"]["attempts"].as_u64() > Some(1));
        assert!(later, "seed {seed} crash {crash}: {id} was not delivered again");
        if crash {
            assert!(l.iter().any(|v| v["node"] == "effects" && v["kind"] == "fault.restart"), "the effects node never came back");
        }

        let skipped = execute(&with_ops(seed, faults(vec![Bug::SkipSagaRedelivery], crash)), None).unwrap();
        assert_eq!(skipped.outcome, Outcome::Violation, "seed {seed} crash {crash}");
        assert!(violated(&skipped, "INV-ONCE").iter().any(|m| m.contains("still delivering")), "{:?}", skipped.violations);
    }
}

#[test]
fn swarm_plans_carry_the_effects_node_faults() {
    let (mut crashes, mut partitions) = (0, 0);
    for seed in 1..=40 {
        let p = plan_for(seed, "sync-basic", Profile::Swarm).unwrap();
        let ops = p.store.as_ref().and_then(|s| s.ops.as_ref()).expect("swarm plans carry store work");
        crashes += ops.effects_crash.len();
        partitions += ops.effects_partition.len();
        assert_eq!(drill_scenarios::plan::Plan::parse(&p.canonical_json()).unwrap(), p);
    }
    assert!(crashes > 0 && partitions > 0, "{crashes} crashes, {partitions} partitions");
}

//! The store and keys in the world: sealed payloads (no plaintext or key material on any disk),
//! projections folded and checked against the model, READ_ONLY windows, key store loss.

use drill_scenarios::plan::Plan;
use drill_scenarios::store_world::{KeyStoreLoss, ReadOnlyWindow, StorePlan};
use drill_scenarios::{plan_for, run::execute, Outcome, RunReport};

fn lines(r: &RunReport) -> Vec<serde_json::Value> {
    r.trace.iter().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn checks(r: &RunReport, invariant: &str) -> u64 {
    r.checks.get(invariant).copied().unwrap_or(0)
}

fn with_store(seed: u64, store: StorePlan) -> Plan {
    let mut p = plan_for(seed, "sync-basic", "none").unwrap();
    p.store = Some(store);
    p
}

#[test]
fn no_disk_holds_a_plaintext_or_a_key_and_a_planted_plaintext_is_found() {
    for seed in [1, 2] {
        let clean = execute(&plan_for(seed, "sync-basic", "none").unwrap(), None).unwrap();
        assert_eq!(clean.outcome, Outcome::Pass, "{:?}", clean.violations);
        // Every node's disk was scanned, for every payload and every key.
        assert!(checks(&clean, "INV-NO-PLAINTEXT") >= 4, "{:?}", clean.checks);
        assert!(checks(&clean, "INV-PROJECTION") > 0 && checks(&clean, "INV-TENANT") > 0, "{:?}", clean.checks);

        let planted = execute(&with_store(seed, StorePlan { plant_plaintext: vec!["client-2".into()], ..StorePlan::default() }), None).unwrap();
        assert_eq!(planted.outcome, Outcome::Violation);
        let found: Vec<_> = planted.violations.iter().filter(|v| v.invariant == "INV-NO-PLAINTEXT").collect();
        assert_eq!(found.len(), 1, "{:?}", planted.violations);
        assert_eq!(found[0].node, "client-2");
        assert!(found[0].message.contains("debug.log"), "{}", found[0].message);
    }
}

#[test]
fn read_only_refuses_every_write_and_changes_nothing() {
    let mut checked = 0;
    for seed in 1..=4 {
        let window = ReadOnlyWindow { node: "client-1".into(), at_ms: 0, ms: 4_000 };
        let r = execute(&with_store(seed, StorePlan { read_only: vec![window], ..StorePlan::default() }), None).unwrap();
        assert_eq!(r.outcome, Outcome::Pass, "seed {seed}: {:?}", r.violations);
        let refused = lines(&r)
            .iter()
            .filter(|v| v["node"] == "client-1" && v["kind"] == "op.err" && v["detail"]["code"] == "store:readOnly")
            .count();
        assert!(refused > 0, "seed {seed}: nothing was refused in READ_ONLY");
        assert_eq!(r.faults.get("store.read_only"), Some(&1));
        checked += checks(&r, "INV-READ-ONLY");
    }
    assert!(checked >= 4, "the READ_ONLY periods were not checked ({checked})");
}

#[test]
fn a_device_that_loses_its_key_store_pairs_again_reads_everything_and_converges() {
    for seed in 1..=4 {
        let loss = KeyStoreLoss { node: "client-1".into(), at_ms: 3_000, down_ms: 500 };
        let r = execute(&with_store(seed, StorePlan { key_store_loss: vec![loss], ..StorePlan::default() }), None).unwrap();
        assert_eq!(r.outcome, Outcome::Pass, "seed {seed}: {:?}", r.violations);
        assert_eq!(r.faults.get("keys.store_lost"), Some(&1));
        let lost = lines(&r).iter().filter(|v| v["kind"] == "fault.key_store_lost").count();
        assert_eq!(lost, 1);
        assert!(checks(&r, "INV-PROJECTION") > 0 && checks(&r, "INV-CONVERGE") > 0);
    }
}

#[test]
fn store_plans_name_known_nodes() {
    let p = with_store(1, StorePlan { read_only: vec![ReadOnlyWindow { node: "client-9".into(), at_ms: 0, ms: 1 }], ..StorePlan::default() });
    assert!(p.validate().unwrap_err().contains("client-9"));
    let p = with_store(1, StorePlan { plant_plaintext: vec!["nowhere".into()], ..StorePlan::default() });
    assert!(p.validate().unwrap_err().contains("nowhere"));
}

#[test]
fn missing_aggregate_keys_are_skipped_until_the_backup_is_restored_and_replayed() {
    use drill_scenarios::store_world::AggregateKeyLoss;
    let mut refused = 0;
    for seed in 1..=4 {
        let loss = AggregateKeyLoss { node: "client-1".into(), at_ms: 2_000, down_ms: 300, aggregates: vec!["note-1".into(), "note-2".into()] };
        let r = execute(&with_store(seed, StorePlan { aggregate_key_loss: vec![loss], ..StorePlan::default() }), None).unwrap();
        assert_eq!(r.outcome, Outcome::Pass, "seed {seed}: {:?}", r.violations);
        assert_eq!(r.faults.get("keys.aggregate_keys_lost"), Some(&1));
        let l = lines(&r);
        // While the keys are missing, the device refuses to write under them...
        refused += l.iter().filter(|v| v["node"] == "client-1" && v["detail"]["code"] == "keys:aggregateKeyMissing").count();
        // ...and the operator's restore brings exactly them back, then the replay is checked.
        let restored: Vec<&serde_json::Value> = l.iter().filter(|v| v["kind"] == "store.keys_restored").collect();
        assert!(!restored.is_empty(), "seed {seed}: no restore");
        assert_eq!(restored[0]["detail"]["added"], serde_json::json!(["note-1", "note-2"]), "seed {seed}");
        let checked_after = l.iter().any(|v| v["kind"] == "check.store" && v["detail"]["what"] == "keys_restored");
        assert!(checked_after, "seed {seed}: the replay after the restore was not checked");
    }
    assert!(refused > 0, "no write was refused for a missing key");
}

#[test]
fn a_skipped_key_backup_restore_fails_the_recovery_check() {
    use drill_scenarios::store_world::AggregateKeyLoss;
    let loss = AggregateKeyLoss { node: "client-1".into(), at_ms: 6_000, down_ms: 300, aggregates: vec!["note-1".into(), "note-2".into()] };
    let store = StorePlan { aggregate_key_loss: vec![loss.clone()], ..StorePlan::default() };
    let r = execute(&with_store(1, store), None).unwrap();
    assert_eq!(r.outcome, Outcome::Pass, "{:?}", r.violations);
    assert!(checks(&r, "INV-RECOVERY") > 0, "{:?}", r.checks);
    let skipped = StorePlan { aggregate_key_loss: vec![loss], skip_key_restore: true, ..StorePlan::default() };
    let r = execute(&with_store(1, skipped), None).unwrap();
    let found: Vec<_> = r.violations.iter().filter(|v| v.invariant == "INV-RECOVERY").collect();
    assert_eq!(found.len(), 1, "{:?}", r.violations);
    assert_eq!(found[0].node, "client-1");
}

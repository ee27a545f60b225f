//! The store and keys in the world: sealed payloads (no plaintext or key material on any disk),
//! projections folded and checked against the model, READ_ONLY windows, key store loss.

use drill_scenarios::plan::store::{KeyStoreLoss, PassphraseLoss, ReadOnlyWindow, StorePlan};
use drill_scenarios::plan::Plan;
use drill_scenarios::Profile;
use drill_scenarios::{plan_for, run::execute, Outcome, RunReport};

fn lines(r: &RunReport) -> Vec<serde_json::Value> {
    r.trace.iter().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn checks(r: &RunReport, invariant: &str) -> u64 {
    r.checks.get(invariant).copied().unwrap_or(0)
}

fn with_store(seed: u64, store: StorePlan) -> Plan {
    let mut p = plan_for(seed, "sync-basic", Profile::None).unwrap();
    p.store = Some(store);
    p
}

#[test]
fn no_disk_holds_a_plaintext_or_a_key_and_a_planted_plaintext_is_found() {
    for seed in [1, 2] {
        let clean = execute(&plan_for(seed, "sync-basic", Profile::None).unwrap(), None).unwrap();
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
        let refused = lines(&r).iter().filter(|v| v["node"] == "client-1" && v["kind"] == "op.err" && v["detail"]["code"] == "store:readOnly").count();
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
    use drill_scenarios::plan::store::AggregateKeyLoss;
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
    use drill_scenarios::plan::store::AggregateKeyLoss;
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

fn of<'a>(l: &'a [serde_json::Value], node: &str, kind: &str) -> Vec<&'a serde_json::Value> {
    l.iter().filter(|v| v["node"] == node && v["kind"] == kind).collect()
}

/// The trace lines of `node` between its first `from` line and its first `to` line after it.
fn between<'a>(l: &'a [serde_json::Value], node: &str, from: &str, to: &str) -> Vec<&'a serde_json::Value> {
    let mine: Vec<&serde_json::Value> = l.iter().filter(|v| v["node"] == node).collect();
    let start = mine.iter().position(|v| v["kind"] == from).expect("the from line");
    let end = mine[start..].iter().position(|v| v["kind"] == to).map_or(mine.len(), |i| start + i);
    mine[start..end].to_vec()
}

#[test]
fn a_lost_key_store_is_a_half_restore_the_device_refuses_until_the_operator_restores_the_backup() {
    for seed in 1..=4 {
        let loss = KeyStoreLoss { node: "client-1".into(), at_ms: 3_000, down_ms: 500 };
        let r = execute(&with_store(seed, StorePlan { key_store_loss: vec![loss.clone()], ..StorePlan::default() }), None).unwrap();
        assert_eq!(r.outcome, Outcome::Pass, "seed {seed}: {:?}", r.violations);
        assert_eq!(r.faults.get("keys.half_restore"), Some(&1), "{:?}", r.faults);
        let l = lines(&r);
        // Opening the database without its key store is named...
        let refused = of(&l, "client-1", "node.keys_refused");
        assert_eq!(refused.len(), 1, "seed {seed}");
        assert_eq!(refused[0]["detail"]["code"], "keys:halfRestoreKeyStoreMissing");
        // ...the device does nothing until the operator answers...
        let waiting = between(&l, "client-1", "node.keys_refused", "store.keys_repaired");
        assert!(waiting.iter().all(|v| v["kind"] != "op.ok" && v["kind"] != "node.recovered"), "seed {seed}: it worked half");
        // ...who restores the key backup: the same store, so no re-pairing as a new one.
        let repaired = of(&l, "client-1", "store.keys_repaired");
        assert_eq!(repaired[0]["detail"]["repair"], "key store restored from the key backup");
        assert!(of(&l, "client-1", "store.key_store_replaced").is_empty());
        // Every event it held came back readable.
        assert!(!of(&l, "client-1", "check.recovery").is_empty(), "seed {seed}: recovery not judged");
        assert!(checks(&r, "INV-RECOVERY") > 0);

        if seed == 1 {
            let skipped = StorePlan { key_store_loss: vec![loss], skip_key_repair: true, ..StorePlan::default() };
            let r = execute(&with_store(seed, skipped), None).unwrap();
            assert_eq!(r.outcome, Outcome::Liveness, "{:?}", r.violations);
            assert!(r.violations.iter().any(|v| v.message.contains("keys:halfRestoreKeyStoreMissing")), "{:?}", r.violations);
            let l = lines(&r);
            let after = between(&l, "client-1", "node.keys_refused", "run.end");
            assert!(after.iter().all(|v| v["kind"] != "op.ok"), "an unrepaired device worked half");
            assert!(after.iter().any(|v| v["kind"] == "op.err" && v["detail"]["code"] == "keys:halfRestoreKeyStoreMissing"));
        }
    }
}

#[test]
fn a_forgotten_passphrase_without_backup_is_declared_lost_and_only_its_aggregates_stay_unreadable_there() {
    let (mut refused_writes, mut recovery_checks) = (0, 0);
    for seed in 1..=4 {
        let loss = PassphraseLoss { node: "client-1".into(), at_ms: 2_500, down_ms: 400, aggregates: vec!["note-1".into()] };
        let r = execute(&with_store(seed, StorePlan { passphrase_loss: vec![loss.clone()], ..StorePlan::default() }), None).unwrap();
        assert_eq!(r.outcome, Outcome::Pass, "seed {seed}: {:?}", r.violations);
        assert_eq!(r.faults.get("keys.passphrase_lost"), Some(&1), "{:?}", r.faults);
        let l = lines(&r);
        assert_eq!(of(&l, "client-1", "node.keys_refused")[0]["detail"]["code"], "keys:passphraseWrong");
        assert_eq!(of(&l, "client-1", "store.keys_repaired")[0]["detail"]["repair"], "passphrase declared lost");
        // The typed error names the aggregate that is gone, and only it.
        let named = of(&l, "client-1", "store.payloads_unrecoverable");
        assert!(!named.is_empty(), "seed {seed}");
        assert_eq!(named[0]["detail"]["aggregates"], serde_json::json!(["note-1"]));
        assert_eq!(named[0]["detail"]["errors"][0]["code"], "keys:payloadsUnrecoverable");
        // INV-RECOVERY excused exactly the events under it, and judged the rest.
        let judged = of(&l, "client-1", "check.recovery");
        assert_eq!(judged.len(), 1, "seed {seed}");
        assert_eq!(judged[0]["detail"]["lost_aggregates"], serde_json::json!(["note-1"]));
        assert!(checks(&r, "INV-NO-REGEN") > 0 && checks(&r, "INV-PROJECTION") > 0);
        // (A device that held no event yet when it lost its passphrase has nothing to judge.)
        recovery_checks += checks(&r, "INV-RECOVERY");
        // No other device lost anything.
        assert!(l.iter().all(|v| v["kind"] != "store.payloads_unrecoverable" || v["node"] == "client-1"));
        // The device keeps writing, but never under a second key for the lost aggregate.
        let after = between(&l, "client-1", "store.keys_repaired", "run.end");
        refused_writes += after.iter().filter(|v| v["kind"] == "op.err" && v["detail"]["code"] == "keys:payloadsUnrecoverable").count();
        assert!(after.iter().any(|v| v["kind"] == "op.ok"), "seed {seed}: the device stopped working");

        if seed == 1 {
            let skipped = StorePlan { passphrase_loss: vec![loss], skip_key_repair: true, ..StorePlan::default() };
            let r = execute(&with_store(seed, skipped), None).unwrap();
            assert_eq!(r.outcome, Outcome::Liveness, "{:?}", r.violations);
            assert!(r.violations.iter().any(|v| v.message.contains("keys:passphraseWrong")), "{:?}", r.violations);
        }
    }
    assert!(refused_writes > 0, "no write under the lost aggregate was refused");
    assert!(recovery_checks >= 3, "{recovery_checks}");
}

#[test]
fn key_fault_plans_name_known_devices_and_swarm_plans_carry_them() {
    let loss = PassphraseLoss { node: "client-9".into(), at_ms: 0, down_ms: 1, aggregates: vec![] };
    let p = with_store(1, StorePlan { passphrase_loss: vec![loss], ..StorePlan::default() });
    assert!(p.validate().unwrap_err().contains("client-9"));
    let mut found = 0;
    for seed in 1..=40 {
        let p = plan_for(seed, "sync-basic", Profile::Swarm).unwrap();
        found += p.store.as_ref().map_or(0, |s| s.passphrase_loss.len());
    }
    assert!(found > 0);
}

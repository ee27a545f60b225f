//! Group keys with epochs in the world (runbook 002, "Missing Group Key"): a room rekeys and
//! hands the new epoch's key to its members a while later; the members' packets under it wait
//! in a bounded buffer and are replayed when the key arrives, a full buffer drops packets with
//! `keys:groupBufferOverflow`, and the operator's reconnect reads them again. INV-GROUP judges
//! every member at the end; without the reconnect it fires.

use drill_scenarios::plan::store::{GroupRekey, StorePlan};
use drill_scenarios::plan::Plan;
use drill_scenarios::Profile;
use drill_scenarios::{plan_for, run::execute, Outcome, RunReport};

fn lines(r: &RunReport) -> Vec<serde_json::Value> {
    r.trace.iter().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A quiet world whose acme room rekeys early and hands the new key out only after 6 s.
fn rekeyed(seed: u64, skip_reconnect: bool) -> Plan {
    let mut p = plan_for(seed, "sync-basic", Profile::None).unwrap();
    let tenant = p.clients[0].tenant.clone();
    let rekey = GroupRekey { tenant, at_ms: 200, withhold_ms: 6_000 };
    p.store = Some(StorePlan { group_rekeys: vec![rekey], skip_group_reconnect: skip_reconnect, ..StorePlan::default() });
    p
}

#[test]
fn packets_under_an_unknown_epoch_wait_and_replay_and_overflow_is_read_again_on_reconnect() {
    let mut overflowed = 0;
    for seed in 1..=4 {
        let r = execute(&rekeyed(seed, false), None).unwrap();
        assert_eq!(r.outcome, Outcome::Pass, "seed {seed}: {:?}", r.violations);
        assert_eq!(r.faults.get("keys.group_rekey"), Some(&1));
        assert!(r.faults.get("keys.group_epoch_unknown").copied().unwrap_or(0) > 0, "seed {seed}: nothing was buffered: {:?}", r.faults);
        assert!(r.checks.get("INV-GROUP").copied().unwrap_or(0) >= 3, "seed {seed}: {:?}", r.checks);
        let t = lines(&r);
        let replayed = t.iter().filter(|v| v["kind"] == "store.group_key" && v["detail"]["replayed"].as_array().is_some_and(|a| !a.is_empty())).count();
        assert!(replayed > 0, "seed {seed}: no buffered packet was replayed when its key arrived");
        let n = r.faults.get("keys.group_buffer_overflow").copied().unwrap_or(0);
        if n > 0 {
            assert!(t.iter().any(|v| v["kind"] == "op.err" && v["detail"]["code"] == "keys:groupBufferOverflow"));
            assert!(t.iter().any(|v| v["kind"] == "store.group_reconnect"), "seed {seed}: dropped packets but no reconnect");
            overflowed += 1;
        }
    }
    assert!(overflowed > 0, "no seed filled a member's buffer");
}

#[test]
fn without_the_reconnect_dropped_packets_are_lost_and_inv_group_fires() {
    let mut fired = 0;
    for seed in 1..=4 {
        let r = execute(&rekeyed(seed, true), None).unwrap();
        if r.faults.get("keys.group_buffer_overflow").copied().unwrap_or(0) == 0 {
            assert_eq!(r.outcome, Outcome::Pass, "seed {seed}: {:?}", r.violations);
            continue;
        }
        assert_eq!(r.outcome, Outcome::Violation, "seed {seed}");
        assert!(r.violations.iter().all(|v| v.invariant == "INV-GROUP"), "{:?}", r.violations);
        assert!(r.violations[0].message.contains("never delivered"), "{}", r.violations[0].message);
        fired += 1;
    }
    assert!(fired > 0, "no seed dropped a packet");
}

#[test]
fn a_rekey_of_an_unknown_tenant_is_refused() {
    let mut p = rekeyed(1, false);
    p.store.as_mut().unwrap().group_rekeys[0].tenant = "initech".into();
    let e = p.validate().unwrap_err();
    assert!(e.contains("unknown tenant 'initech'"), "{e}");
}

//! Server retention: a device whose `since` falls behind it gets an explicit full-resync answer
//! (`pull:resyncRequired`, failing closed), resynchronises from the floor, and converges.

use drill_scenarios::plan::{Action, PlannedOp};
use drill_scenarios::Profile;
use drill_scenarios::{plan_for, run::execute, Outcome};
use drill_sim::faults::{Fault, Scheduled};

#[test]
fn a_device_behind_retention_resyncs_and_converges() {
    let mut p = plan_for(3, "sync-basic", Profile::None).unwrap();
    p.server_retention = Some(3);
    // client-1 is cut off while the others write and sync far past the retention window.
    p.faults = vec![Scheduled { at_ms: 500, fault: Fault::Partition { a: vec!["client-1".into()], b: vec!["server".into()], one_way: false, ms: 6_000 } }];
    p.ops.push(PlannedOp { at_ms: 100, client: "client-1".into(), action: Action::Sync });
    p.ops.push(PlannedOp { at_ms: 7_000, client: "client-1".into(), action: Action::Sync });
    p.ops.sort_by_key(|o| o.at_ms);
    let r = execute(&p, None).unwrap();
    assert_eq!(r.outcome, Outcome::Pass, "{:?}", r.violations);
    let lines: Vec<serde_json::Value> = r.trace.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let resyncs = lines.iter().filter(|v| v["kind"] == "op.resync").count();
    let answers = lines.iter().filter(|v| v["kind"] == "op.err" && v["detail"]["code"] == "pull:resyncRequired").count();
    assert!(resyncs > 0 && answers > 0, "no device had to resync ({answers} answers, {resyncs} resyncs)");
    assert!(r.checks.get("INV-CONVERGE").copied().unwrap_or(0) > 0);
}

//! Runbook 003 §2 and §3 in the simulated world, one symptom at a time: an attach refused as
//! behind until the device syncs and then accepted with the identical payload; a staged row
//! expired by a jump of the server's clock; transient store errors retried to the bound and
//! `AccessDenied` surfaced at once; an object deleted out of band, found and cleaned up by the
//! orphan scan. Each run must also pass the model.

use drill_scenarios::plan::blobs::{BlobFaultAt, BlobFaultKind, BlobKnobs, BlobPlan};
use drill_scenarios::plan::{Action, Plan, PlannedOp};
use drill_scenarios::Profile;
use drill_scenarios::{plan_for, run::execute, Outcome, RunReport};
use drill_sim::faults::{Fault, Scheduled};
use serde_json::Value;

/// A quiet plan where client-1 does only `ops` and the blob store has `faults`.
fn plan(ops: &[(u64, Action)], faults: Vec<BlobFaultAt>) -> Plan {
    let mut p = plan_for(5, "sync-basic", Profile::None).unwrap();
    p.ops.retain(|o| o.client != "client-1");
    for (at_ms, action) in ops {
        p.ops.push(PlannedOp { at_ms: *at_ms, client: "client-1".into(), action: action.clone() });
    }
    p.ops.sort_by_key(|o| o.at_ms);
    p.blobs = Some(BlobPlan { knobs: BlobKnobs { ops_per_client_max: 0, faults_max: 0, window_ms_max: 0 }, faults });
    p
}

fn run(p: &Plan) -> (RunReport, Vec<Value>) {
    let r = execute(p, None).unwrap();
    assert_eq!(r.outcome, Outcome::Pass, "{:#?}", r.violations);
    let lines = r.trace.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    (r, lines)
}

/// client-1's answers to blob operations (`op.ok` / `op.err` lines naming a blob), in order, as
/// (operation id, status, code).
fn answers(lines: &[Value]) -> Vec<(u64, u64, String)> {
    lines
        .iter()
        .filter(|v| v["node"] == "client-1" && (v["kind"] == "op.ok" || v["kind"] == "op.err") && v["detail"]["blob"].is_string())
        .map(|v| {
            let d = &v["detail"];
            (d["op"].as_u64().unwrap(), d["status"].as_u64().unwrap_or(0), d["code"].as_str().unwrap_or("").to_string())
        })
        .collect()
}

#[test]
fn attach_is_behind_until_the_device_syncs_then_the_same_payload_succeeds_and_reads_back() {
    let p = plan(
        &[
            (100, Action::StageBlob { bytes: 700 }),
            (300, Action::AttachBlob),
            (500, Action::Sync),
            (900, Action::AttachBlob),
            (1_200, Action::ReadBlob { all: false }),
        ],
        vec![],
    );
    let (r, lines) = run(&p);
    let got: Vec<(u64, String)> = answers(&lines).into_iter().filter(|(op, _, _)| *op != 0).map(|(_, s, c)| (s, c)).collect();
    assert_eq!(
        got,
        vec![
            (0, String::new()), // the stage (its line carries no status)
            (409, "blob:reconcileBehind".into()),
            (200, String::new()),
            (200, String::new()),
        ],
        "{lines:#?}"
    );
    assert!(r.checks["INV-BLOB-VISIBILITY"] >= 2);
    assert!(r.checks["INV-BLOB-OBJECT"] >= 1);
}

#[test]
fn a_jump_of_the_server_clock_expires_a_staged_row() {
    let mut p = plan(&[(100, Action::StageBlob { bytes: 100 }), (300, Action::Sync), (900, Action::AttachBlob)], vec![]);
    p.faults.push(Scheduled { at_ms: 600, fault: Fault::ClockJump { node: "server".into(), delta_ms: 60_000 } });
    p.faults.sort_by_key(|f| f.at_ms);
    let (_, lines) = run(&p);
    assert!(answers(&lines).iter().any(|(_, s, c)| *s == 409 && c == "blob:stagingExpired"), "{:#?}", answers(&lines));
}

#[test]
fn transient_errors_are_retried_to_the_bound_access_denied_is_surfaced_and_orphans_are_cleaned_up() {
    let window = |at_ms, kind| BlobFaultAt { at_ms, kind, ms: 400, nth: 0 };
    let p = plan(
        &[
            (100, Action::StageBlob { bytes: 300 }),
            (200, Action::StageBlob { bytes: 300 }),
            (1_100, Action::ReadBlob { all: false }),
            (2_100, Action::ReadBlob { all: false }),
            (3_100, Action::StageBlob { bytes: 300 }),
        ],
        vec![
            window(1_000, BlobFaultKind::SlowDown),
            window(2_000, BlobFaultKind::AccessDenied),
            window(3_000, BlobFaultKind::InternalError),
            BlobFaultAt { at_ms: 4_000, kind: BlobFaultKind::OutOfBandDelete, ms: 0, nth: 0 },
        ],
    );
    let (r, lines) = run(&p);
    let attempts = |op: u64| {
        lines
            .iter()
            .find(|v| v["node"] == "client-1" && v["kind"] == "op.err" && v["detail"]["op"] == op)
            .map(|v| (v["detail"]["code"].clone(), v["detail"]["attempts"].clone()))
    };
    let ids: Vec<u64> = p.ops.iter().enumerate().filter(|(_, o)| o.client == "client-1").map(|(i, _)| i as u64 + 1).collect();
    assert_eq!(attempts(ids[2]), Some(("s3:SlowDown".into(), 4.into())), "SlowDown is retried to the bound");
    assert_eq!(attempts(ids[3]), Some(("s3:AccessDenied".into(), 1.into())), "AccessDenied is not retried");
    assert_eq!(attempts(ids[4]), Some(("s3:InternalError".into(), 4.into())), "a stage during an outage fails after its retries");
    for kind in ["blob.slow_down", "blob.access_denied", "blob.internal_error", "blob.out_of_band_delete"] {
        assert_eq!(r.faults.get(kind), Some(&1), "{kind}");
    }
    let scan = lines.iter().find(|v| v["kind"] == "blob.orphans").expect("the orphan scan ran");
    assert_eq!(scan["detail"]["orphans"].as_array().map(Vec::len), Some(1), "{scan}");
    assert_eq!(scan["detail"]["cleaned"], 1);
    // After the heal, the orphan's read failed with NoSuchKey and the other blob read back.
    let final_reads: Vec<(u64, String)> = answers(&lines).into_iter().filter(|(op, _, _)| *op == 0).map(|(_, s, c)| (s, c)).collect();
    assert!(final_reads.contains(&(500, "s3:NoSuchKey".into())) && final_reads.contains(&(200, String::new())), "{final_reads:?}");
}

#[test]
fn blob_plans_round_trip_and_plans_without_blobs_keep_their_text() {
    let p = plan_for(9, "sync-basic", Profile::Swarm).unwrap();
    assert!(p.blobs.is_some());
    assert_eq!(Plan::parse(&p.canonical_json()).unwrap(), p);
    let lite = plan_for(9, "sync-basic", Profile::Lite).unwrap();
    assert!(lite.blobs.is_none() && !lite.canonical_json().contains("blobs"));
    let mut bad = lite.clone();
    bad.ops[0].action = Action::StageBlob { bytes: 10 };
    assert!(bad.validate().unwrap_err().contains("without a blob store"));
}

#[test]
fn malformed_reconcile_state_is_a_deterministic_500_until_a_push_records_a_good_one() {
    let append = Action::Append { aggregate: "note-1".into(), kind: "edited".into(), bytes: 32 };
    let p = plan(
        &[
            (100, Action::StageBlob { bytes: 200 }),
            (200, Action::StageBlob { bytes: 200 }),
            (300, Action::Sync),
            (700, Action::AttachBlob),
            (800, Action::AttachBlob),
            (1_000, append),
            (1_100, Action::Sync),
            (1_300, Action::AttachBlob),
        ],
        vec![BlobFaultAt { at_ms: 500, kind: BlobFaultKind::MalformedReconcileState, ms: 0, nth: 0 }],
    );
    let (r, lines) = run(&p);
    assert_eq!(r.faults.get("blob.malformed_reconcile_state"), Some(&1));
    let attaches: Vec<(u64, String)> = answers(&lines).into_iter().filter(|(op, s, _)| *op != 0 && *s != 0).map(|(_, s, c)| (s, c)).collect();
    let failed = (500, "blob:attachFailed".to_string());
    // Both staged blobs, twice each: the same 500 every time; after a push recorded a well-formed
    // state over it, both attach.
    assert_eq!(attaches, vec![failed.clone(), failed.clone(), failed.clone(), failed, (200, String::new()), (200, String::new())], "{lines:#?}");
}

//! Every guardrail of the sync runbook fires with its exact `stage:code` signature when the
//! faulty transport produces its condition, and the failed attempt leaves the device's exported
//! state byte for byte as it was (the model checks both on every attempt: INV-GUARDRAIL and
//! INV-FAIL-CLOSED). Duplicated and replayed requests are absorbed without error.

use drill_scenarios::plan::transport::{TransportFaultAt, TransportFaultKind};
use drill_scenarios::plan::{Action, Plan, PlannedOp};
use drill_scenarios::Profile;
use drill_scenarios::{plan_for, run::execute, Outcome};

/// One device, a quiet network, and the transport of client-1 faulty from 2 s to 6 s while it
/// appends and syncs.
fn plan_with(kind: TransportFaultKind) -> Plan {
    let mut p = plan_for(1, "sync-basic", Profile::None).unwrap();
    p.ops.clear();
    let mut t = 0;
    for round in 0..12 {
        for client in ["client-1", "client-2", "client-3"] {
            t += 100;
            let action = Action::Append { aggregate: "note".into(), kind: "created".into(), bytes: 64 };
            p.ops.push(PlannedOp { at_ms: t, client: client.into(), action });
        }
        t += 100;
        let client = if round % 2 == 0 { "client-1" } else { "client-3" };
        p.ops.push(PlannedOp { at_ms: t, client: client.into(), action: Action::Sync });
        t += 100;
        p.ops.push(PlannedOp { at_ms: t, client: "client-1".into(), action: Action::Sync });
    }
    p.transport_faults = vec![TransportFaultAt { at_ms: 2_000, node: "client-1".into(), kind, ms: 4_000 }];
    if kind.token_error().is_some() {
        // The server's clock jumps past every token's life as the window opens: the device
        // needs a new token while the token path is broken.
        let jump = drill_sim::faults::Fault::ClockJump { node: "server".into(), delta_ms: 2 * drill_scenarios::tokens::TOKEN_TTL_MS };
        p.faults = vec![drill_sim::faults::Scheduled { at_ms: 2_000, fault: jump }];
    }
    p.heal_at_ms = t + 500;
    p
}

fn errors_of(trace: &[String], node: &str) -> Vec<serde_json::Value> {
    trace.iter().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).filter(|v| v["node"] == node && v["kind"] == "op.err").collect()
}

#[test]
fn each_guardrail_raises_its_signature_and_fails_closed() {
    for kind in TransportFaultKind::ALL {
        let r = execute(&plan_with(kind), None).unwrap();
        assert_eq!(r.outcome, Outcome::Pass, "{kind:?}: {:?}", r.violations);
        let errs = errors_of(&r.trace, "client-1");
        match kind.signature() {
            Some(sig) => {
                let hits = errs.iter().filter(|e| e["detail"]["signature"] == sig).count();
                assert!(hits > 0, "{kind:?}: no attempt failed with {sig}; errors: {errs:?}");
                assert!(r.checks.get("INV-FAIL-CLOSED").copied().unwrap_or(0) >= hits as u64);
                assert!(r.checks.get("INV-GUARDRAIL").copied().unwrap_or(0) >= hits as u64, "{kind:?}: guardrail not checked");
            }
            None => match kind.token_error() {
                Some(code) => {
                    assert!(!errs.is_empty(), "{kind:?}: no attempt failed");
                    assert!(errs.iter().all(|e| e["detail"]["code"] == code), "{kind:?}: every failure is {code}: {errs:?}");
                    assert!(r.checks.get("INV-FAIL-CLOSED").copied().unwrap_or(0) >= errs.len() as u64, "{kind:?}: failures not checked closed");
                    assert!(
                        r.faults.get("token.invalid").copied().unwrap_or(0) > 0 || kind == TransportFaultKind::TokenEndpointMalformed,
                        "{kind:?}: the server refused nothing"
                    );
                }
                None => assert!(errs.is_empty(), "{kind:?} must be absorbed, but: {errs:?}"),
            },
        }
    }
}

#[test]
fn a_malformed_hydrate_is_refused_and_changes_nothing() {
    let mut p = plan_with(TransportFaultKind::DuplicateRequests);
    p.transport_faults.clear();
    let at = p.ops[p.ops.len() / 2].at_ms + 1;
    p.ops.push(PlannedOp { at_ms: at, client: "client-1".into(), action: Action::Hydrate { malformed: true } });
    p.ops.push(PlannedOp { at_ms: at + 1, client: "client-1".into(), action: Action::Hydrate { malformed: false } });
    p.ops.sort_by_key(|o| o.at_ms);
    let r = execute(&p, None).unwrap();
    assert_eq!(r.outcome, Outcome::Pass, "{:?}", r.violations);
    let errs = errors_of(&r.trace, "client-1");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0]["detail"]["signature"], "hydrate:hydrateGuardrailViolation");
    assert!(r.checks["INV-FAIL-CLOSED"] >= 1);
}

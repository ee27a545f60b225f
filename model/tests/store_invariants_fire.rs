//! Every store and secrets check (INV-PROJECTION, INV-SNAPSHOT, INV-NO-PLAINTEXT, INV-NO-REGEN,
//! INV-TENANT, INV-READ-ONLY) demonstrably fires on a state that breaks it, stays quiet on one
//! that holds, and never reports what a correct stack could produce.

use std::collections::BTreeSet;

use drill_model::invariants;
use drill_model::secrets::{self, check_no_plaintext, check_no_regen, Secret, SecretScanner, VaultObservation};
use drill_model::store::{
    aggregate_state_rows, check_projection, check_read_only, check_snapshot, check_tenant, tenant_counters_rows, Judgement, PlainEvent, ProjectionFacts,
    ProjectionRead, ReadOnlyFacts, SnapshotFacts, SnapshotPair, TenantFacts, WriteAttempt, AGGREGATE_STATE, TENANT_COUNTERS,
};

fn ids(j: &Judgement) -> Vec<String> {
    j.violations.iter().map(|v| v.invariant.clone()).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn ev(seq: u64, aggregate: &str, kind: &str, payload: &[u8]) -> PlainEvent {
    PlainEvent { seq, tenant: "acme".into(), aggregate: aggregate.into(), kind: kind.into(), ts_ms: seq as i64 * 1000, payload: Some(payload.to_vec()) }
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// The reference fold, pinned to vectors computed apart from both the model and the stack.

const HELLO: &str = "6a03998a96a68cf5e730281e631be1f2e56a325829800c1812e125a754d950a0";
const HELLO_WORLD: &str = "25a094d69908624fda285438849426e5a4dd7d28668fe20f4f79c235b7d78d48";

#[test]
fn the_reference_fold_matches_pinned_vectors_and_the_stack_row_format() {
    let events = [ev(1, "a-1", "note", b"hello"), ev(2, "b-2", "note", b"x"), ev(3, "a-1", "edit", b"world")];
    let rows = aggregate_state_rows(&events).unwrap();
    assert_eq!(rows[0], row(&["a-1", "2", "3", "edit", HELLO_WORLD]));
    assert_eq!(rows[1][0], "b-2");
    assert_eq!(aggregate_state_rows(&events[..1]).unwrap(), vec![row(&["a-1", "1", "1", "note", HELLO])]);
    assert_eq!(tenant_counters_rows(&events), vec![row(&["edit", "1"]), row(&["note", "2"])]);
    // A payload the world could not open leaves the digest unknown.
    let mut sealed = events.to_vec();
    sealed[0].payload = None;
    assert_eq!(aggregate_state_rows(&sealed), None);
}

// ---------------------------------------------------------------------------------------------
// INV-PROJECTION

fn events() -> Vec<PlainEvent> {
    vec![ev(1, "a-1", "note", b"hello"), ev(2, "b-2", "note", b"b one"), ev(3, "a-1", "edit", b"world"), ev(4, "c-3", "note", b"c one")]
}

fn read(name: &str, rows: Vec<Vec<String>>, incomplete: &[&str]) -> ProjectionRead {
    ProjectionRead { name: name.into(), rows, incomplete: set(incomplete), cursor: None }
}

/// The projections a correct stack reports for `events` with `incomplete` skipped.
fn correct(events: &[PlainEvent], incomplete: &[&str]) -> Vec<ProjectionRead> {
    let kept: Vec<PlainEvent> = events.iter().filter(|e| !incomplete.contains(&e.aggregate.as_str())).cloned().collect();
    vec![read(AGGREGATE_STATE, aggregate_state_rows(&kept).unwrap(), incomplete), read(TENANT_COUNTERS, tenant_counters_rows(&kept), incomplete)]
}

fn facts(events: Vec<PlainEvent>, keys: &[&str], rebuilt: bool, projections: Vec<ProjectionRead>) -> ProjectionFacts {
    ProjectionFacts { node: "client-1".into(), tenant: "acme".into(), events, keys_present: set(keys), rebuilt, until_ts_ms: None, projections }
}

#[test]
fn inv_projection_holds_for_the_fold_of_every_complete_aggregate() {
    let j = check_projection(&facts(events(), &["a-1", "b-2", "c-3"], true, correct(&events(), &[])), 7);
    assert!(j.is_clean(), "{:?}", j.violations);
    assert_eq!(j.checks_of(invariants::PROJECTION), 2);
    // Nothing to check: no events, no rows, nothing skipped.
    let j = check_projection(&facts(vec![], &[], true, vec![read(AGGREGATE_STATE, vec![], &[])]), 7);
    assert!(j.is_clean() && j.checked.is_empty());
}

#[test]
fn inv_projection_fires_on_a_fold_that_differs() {
    let mut p = correct(&events(), &[]);
    // The fold applied a different payload: only the digest shows it.
    p[0].rows[0][4] = HELLO.into();
    // A counter off by one.
    p[1].rows[0][1] = "2".into();
    let j = check_projection(&facts(events(), &["a-1", "b-2", "c-3"], true, p), 9);
    assert_eq!(ids(&j), [invariants::PROJECTION, invariants::PROJECTION], "{:?}", j.violations);
    assert!(j.violations[0].message.contains("aggregate a-1: expected digest 25a094d69908"), "{}", j.violations[0].message);
    assert!(j.violations[1].message.contains("tenant_counters"), "{}", j.violations[1].message);
    assert_eq!((j.violations[0].node.as_str(), j.violations[0].trace_line), ("client-1", 9));
    // A missing row, a row no event explains, and rows out of order.
    let mut p = correct(&events(), &[]);
    p[0].rows.remove(1);
    p[0].rows.push(row(&["a-0", "1", "1", "note", HELLO]));
    let j = check_projection(&facts(events(), &["a-1", "b-2", "c-3"], true, vec![p[0].clone()]), 9);
    let text: Vec<&str> = j.violations.iter().map(|v| v.message.as_str()).collect();
    assert!(text.iter().any(|m| m.contains("aggregate b-2 is missing")), "{text:?}");
    assert!(text.iter().any(|m| m.contains("a-0 has a row but no folded event")), "{text:?}");
    assert!(text.iter().any(|m| m.contains("not in canonical order")), "{text:?}");
    // A row that is not in the stack's format.
    let j = check_projection(&facts(events(), &["a-1", "b-2", "c-3"], true, vec![read(AGGREGATE_STATE, vec![row(&["a-1", "2"])], &[])]), 9);
    assert!(j.violations.iter().any(|v| v.message.contains("is not [aggregate")), "{:?}", j.violations);
}

/// An aggregate whose key is missing: its events' payloads do not open.
fn sealed(mut events: Vec<PlainEvent>, aggregate: &str) -> Vec<PlainEvent> {
    for e in events.iter_mut().filter(|e| e.aggregate == aggregate) {
        e.payload = None;
    }
    events
}

#[test]
fn inv_projection_holds_when_an_aggregate_without_its_key_is_skipped() {
    let evs = sealed(events(), "b-2");
    let j = check_projection(&facts(evs.clone(), &["a-1", "c-3"], true, correct(&events(), &["b-2"])), 3);
    assert!(j.is_clean(), "{:?}", j.violations);
    assert_eq!(j.checks_of(invariants::PROJECTION), 2);
}

#[test]
fn inv_projection_fires_when_an_incomplete_aggregate_is_in_the_projection() {
    // The key was lost after b-2's first event was folded: the aggregate is reported incomplete
    // yet the projection still holds its partial fold, and the counters still count it.
    let evs = sealed(events(), "b-2");
    let mut p = correct(&events(), &["b-2"]);
    p[0].rows = aggregate_state_rows(&events()).unwrap();
    p[1].rows = tenant_counters_rows(&events());
    let j = check_projection(&facts(evs, &["a-1", "c-3"], false, p), 4);
    let text: Vec<&str> = j.violations.iter().map(|v| v.message.as_str()).collect();
    assert_eq!(j.violations.len(), 2, "{text:?}");
    assert!(text[0].contains("aggregate b-2 is reported incomplete but the projection holds it"), "{text:?}");
    assert!(text[1].contains("tenant_counters") && text[1].contains("note"), "{text:?}");
}

#[test]
fn inv_projection_fires_after_a_rebuild_on_a_wrong_incomplete_report() {
    // Reported incomplete although the key is held and every event opens.
    let j = check_projection(&facts(events(), &["a-1", "b-2", "c-3"], true, correct(&events(), &["b-2"])), 5);
    assert_eq!(ids(&j), [invariants::PROJECTION, invariants::PROJECTION]);
    assert!(j.violations[0].message.contains("b-2 is reported incomplete after a rebuild, but its key is present"), "{:?}", j.violations);
    // Not reported incomplete although the key is missing.
    let j = check_projection(&facts(sealed(events(), "b-2"), &["a-1", "c-3"], true, correct(&events(), &[])), 5);
    assert!(j.violations.iter().any(|v| v.message.contains("b-2 is not reported incomplete after a rebuild, but its key is missing")), "{:?}", j.violations);
    // Not reported incomplete although an event does not open under the key held (tampered).
    let j = check_projection(&facts(sealed(events(), "c-3"), &["a-1", "b-2", "c-3"], true, correct(&events(), &[])), 5);
    assert!(
        j.violations.iter().any(|v| v.message.contains("c-3 is not reported incomplete after a rebuild, but an event of it does not open")),
        "{:?}",
        j.violations
    );
    // A tampered event correctly reported incomplete although its key is present: quiet.
    let j = check_projection(&facts(sealed(events(), "c-3"), &["a-1", "b-2", "c-3"], true, correct(&events(), &["c-3"])), 5);
    assert!(j.is_clean(), "{:?}", j.violations);
}

#[test]
fn inv_projection_never_reports_what_a_correct_stack_produces_between_rebuilds() {
    // Skipped while its key was missing, the key imported since, no rebuild yet: still skipped.
    let j = check_projection(&facts(events(), &["a-1", "b-2", "c-3"], false, correct(&events(), &["b-2"])), 6);
    assert!(j.is_clean(), "{:?}", j.violations);
    // Folded while its key was present, the key lost since: the fold stays; its digest cannot be
    // recomputed and is not judged, its count and last event still are.
    let evs = sealed(events(), "a-1");
    let j = check_projection(&facts(evs.clone(), &["b-2", "c-3"], false, correct(&events(), &[])), 6);
    assert!(j.is_clean(), "{:?}", j.violations);
    let mut p = correct(&events(), &[]);
    p[0].rows[0][1] = "3".into();
    let j = check_projection(&facts(evs, &["b-2", "c-3"], false, p), 6);
    assert!(j.violations.iter().any(|v| v.message.contains("aggregate a-1: expected events 2, found 3")), "{:?}", j.violations);
}

#[test]
fn inv_projection_follows_the_cursor_the_time_bound_and_the_tenant() {
    // Events after the projection's cursor are not expected in it yet (DEGRADED switched the
    // counters off after seq 2).
    let mut p = correct(&events(), &[]);
    p[1] = ProjectionRead { cursor: Some(2), ..read(TENANT_COUNTERS, tenant_counters_rows(&events()[..2]), &[]) };
    let j = check_projection(&facts(events(), &["a-1", "b-2", "c-3"], true, p), 8);
    assert!(j.is_clean(), "{:?}", j.violations);
    // A rebuild up to a time folds only what was created by then.
    let mut f = facts(events(), &["a-1", "b-2", "c-3"], true, correct(&events()[..2], &[]));
    f.until_ts_ms = Some(2000);
    assert!(check_projection(&f, 8).is_clean());
    f.until_ts_ms = None;
    assert!(!check_projection(&f, 8).is_clean());
    // Another tenant's events (on a server) are not part of this tenant's fold.
    let mut evs = events();
    evs.push(PlainEvent { tenant: "globex".into(), ..ev(5, "a-1", "note", b"other") });
    let j = check_projection(&facts(evs, &["a-1", "b-2", "c-3"], true, correct(&events(), &[])), 8);
    assert!(j.is_clean(), "{:?}", j.violations);
}

// ---------------------------------------------------------------------------------------------
// INV-SNAPSHOT

fn pair(name: &str, restored: Vec<Vec<String>>, replayed: Vec<Vec<String>>) -> SnapshotPair {
    SnapshotPair { name: name.into(), restored, replayed, ..SnapshotPair::default() }
}

fn snap(projections: Vec<SnapshotPair>) -> SnapshotFacts {
    SnapshotFacts { node: "server".into(), tenant: "acme".into(), projections }
}

#[test]
fn inv_snapshot_holds_when_restore_equals_replay() {
    let agg = aggregate_state_rows(&events()).unwrap();
    let counters = tenant_counters_rows(&events());
    let j = check_snapshot(&snap(vec![pair(AGGREGATE_STATE, agg.clone(), agg), pair(TENANT_COUNTERS, counters.clone(), counters)]), 11);
    assert!(j.is_clean(), "{:?}", j.violations);
    assert_eq!(j.checks_of(invariants::SNAPSHOT), 2);
    assert!(check_snapshot(&snap(vec![pair(AGGREGATE_STATE, vec![], vec![])]), 11).checked.is_empty());
}

#[test]
fn inv_snapshot_fires_when_snapshot_plus_tail_differs_from_replay() {
    let agg = aggregate_state_rows(&events()).unwrap();
    // The tail was replayed from the wrong seq: the last event is missing from the restore.
    let short = aggregate_state_rows(&events()[..3]).unwrap();
    let j = check_snapshot(&snap(vec![pair(AGGREGATE_STATE, short, agg.clone())]), 12);
    assert_eq!(ids(&j), [invariants::SNAPSHOT]);
    assert!(j.violations[0].message.contains("c-3"), "{}", j.violations[0].message);
    assert_eq!((j.violations[0].node.as_str(), j.violations[0].trace_line), ("server", 12));
    // A counter applied twice (the tail overlapped the snapshot).
    let mut twice = tenant_counters_rows(&events());
    twice[1][1] = "4".into();
    let j = check_snapshot(&snap(vec![pair(TENANT_COUNTERS, twice, tenant_counters_rows(&events()))]), 12);
    assert_eq!(ids(&j), [invariants::SNAPSHOT]);
}

#[test]
fn inv_snapshot_leaves_out_what_either_side_skipped() {
    // A key lost after the snapshot: the restore keeps the snapshot's fold of b-2, a replay
    // skips it. The other aggregates must still agree; the counters cannot be compared.
    let restored = aggregate_state_rows(&events()).unwrap();
    let kept: Vec<PlainEvent> = events().into_iter().filter(|e| e.aggregate != "b-2").collect();
    let replayed = aggregate_state_rows(&kept).unwrap();
    let p = SnapshotPair { replayed_incomplete: set(&["b-2"]), ..pair(AGGREGATE_STATE, restored.clone(), replayed.clone()) };
    let c = SnapshotPair { replayed_incomplete: set(&["b-2"]), ..pair(TENANT_COUNTERS, tenant_counters_rows(&events()), tenant_counters_rows(&kept)) };
    let j = check_snapshot(&snap(vec![p, c]), 13);
    assert!(j.is_clean(), "{:?}", j.violations);
    assert_eq!(j.checks_of(invariants::SNAPSHOT), 1);
    // ...but a difference in an aggregate both hold is still a violation.
    let mut wrong = restored;
    wrong[0][4] = HELLO.into();
    let p = SnapshotPair { replayed_incomplete: set(&["b-2"]), ..pair(AGGREGATE_STATE, wrong, replayed) };
    assert_eq!(ids(&check_snapshot(&snap(vec![p]), 13)), [invariants::SNAPSHOT]);
}

// ---------------------------------------------------------------------------------------------
// INV-NO-PLAINTEXT

/// Bytes that look like ciphertext (xorshift), deterministic.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

fn plant(image: &mut [u8], at: usize, secret: &[u8]) {
    image[at..at + secret.len()].copy_from_slice(secret);
}

#[test]
fn inv_no_plaintext_fires_on_a_planted_plaintext_and_key() {
    let payload = b"client-1/op-7/qwhxkzbtrm".to_vec();
    let key: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect();
    let mut disk = noise(2 << 20, 1);
    plant(&mut disk, 1_000_003, &payload);
    plant(&mut disk, 2_000_000, &payload);
    plant(&mut disk, (2 << 20) - 32, &key);
    let export = format!("{{\"run\":1,\"note\":\"{}\"}}\n", hex::encode(&key)).into_bytes();
    let mut secrets = vec![Secret::plaintext("payload of client-1 op 7", &payload)];
    secrets.extend(Secret::key("aggregate key a-1", &key));
    let images = [("client-1:events.db".to_string(), disk.as_slice()), ("export/runs.jsonl".to_string(), export.as_slice())];
    let j = check_no_plaintext("client-1", 21, &images, &secrets);
    assert_eq!(ids(&j), [invariants::NO_PLAINTEXT; 3], "{:?}", j.violations);
    let text: Vec<&str> = j.violations.iter().map(|v| v.message.as_str()).collect();
    assert!(text[0].contains("payload of client-1 op 7 found in client-1:events.db at offset 1000003 (2 times)"), "{text:?}");
    assert!(text[1].contains("aggregate key a-1 found in client-1:events.db at offset 2097120"), "{text:?}");
    assert!(text[2].contains("aggregate key a-1 (hex) found in export/runs.jsonl at offset 17"), "{text:?}");
    assert_eq!((j.violations[0].node.as_str(), j.violations[0].trace_line), ("client-1", 21));
}

#[test]
fn inv_no_plaintext_holds_on_ciphertext_only() {
    let payload = b"client-1/op-7/qwhxkzbtrm".to_vec();
    let disk = noise(1 << 20, 2);
    let mut secrets = vec![Secret::plaintext("payload", &payload)];
    secrets.extend(Secret::key("key", &[7u8; 32]));
    let j = check_no_plaintext("client-1", 22, &[("disk".to_string(), disk.as_slice())], &secrets);
    assert!(j.is_clean(), "{:?}", j.violations);
    assert_eq!(j.checks_of(invariants::NO_PLAINTEXT), 1);
    // Nothing to look in, or nothing to look for: vacuous.
    assert!(check_no_plaintext("client-1", 22, &[("empty".to_string(), &[][..])], &secrets).checked.is_empty());
    assert!(check_no_plaintext("client-1", 22, &[("disk".to_string(), disk.as_slice())], &[]).checked.is_empty());
}

#[test]
fn the_scanner_handles_short_secrets_shared_prefixes_and_edges() {
    // Too short to tell from chance: skipped, never reported.
    let short = Secret::plaintext("short", b"abc");
    let scanner = SecretScanner::new(vec![short, Secret::plaintext("long-a", b"prefix-0-A-tail"), Secret::plaintext("long-b", b"prefix-0-B")]);
    assert_eq!(scanner.skipped(), ["short".to_string()]);
    // Two secrets with the same first 8 bytes, one at offset 0 and one ending the image.
    let image = b"prefix-0-A-tail...abc...prefix-0-B";
    let found: Vec<(String, usize)> = scanner.scan("img", image).into_iter().map(|f| (f.secret, f.offset)).collect();
    assert_eq!(found, [("long-a".to_string(), 0), ("long-b".to_string(), 24)]);
    // A secret longer than what is left of the image at its prefix is not found.
    assert!(scanner.scan("img", b"xxprefix-0-A-ta").is_empty());
    assert!(scanner.scan("img", b"prefix").is_empty());
}

#[test]
fn the_scanner_takes_a_few_megabytes_and_hundreds_of_secrets_in_one_pass() {
    let secrets: Vec<Secret> = (0..300).map(|i| Secret::plaintext(format!("payload {i}"), &noise(40, 1000 + 2 * i))).collect();
    let mut disk = noise(4 << 20, 3);
    plant(&mut disk, 123_456, &secrets[42].bytes);
    plant(&mut disk, 3_999_999, &secrets[299].bytes);
    let found = secrets::scan(&[("disk".to_string(), disk.as_slice())], &secrets);
    let got: Vec<(&str, usize)> = found.iter().map(|f| (f.secret.as_str(), f.offset)).collect();
    assert_eq!(got, [("payload 42", 123_456), ("payload 299", 3_999_999)]);
}

// ---------------------------------------------------------------------------------------------
// INV-NO-REGEN

fn read_vault(node: &str, line: u64, fingerprint: Option<&str>) -> VaultObservation {
    VaultObservation::Read { node: node.into(), line, fingerprint: fingerprint.map(String::from) }
}

fn recovered(node: &str, line: u64, fingerprint: &str) -> VaultObservation {
    VaultObservation::Recovered { node: node.into(), line, fingerprint: fingerprint.into() }
}

#[test]
fn inv_no_regen_holds_through_loss_and_recovery_of_the_same_key() {
    let history = [
        read_vault("client-1", 1, None),
        read_vault("client-1", 2, Some("aaaa")),
        read_vault("client-1", 3, Some("aaaa")),
        // The key is lost (disk fault), then recovered from a peer's share: the same key.
        read_vault("client-1", 4, None),
        recovered("client-1", 5, "aaaa"),
        read_vault("client-1", 6, Some("aaaa")),
        // A member's first vault key comes from a peer.
        recovered("client-2", 7, "aaaa"),
        read_vault("client-2", 8, Some("aaaa")),
    ];
    let j = check_no_regen(&history);
    assert!(j.is_clean(), "{:?}", j.violations);
    assert_eq!(j.checks_of(invariants::NO_REGEN), 4);
    // Only reads of vaults never initialized: nothing to check.
    assert!(check_no_regen(&[read_vault("client-1", 1, None), read_vault("client-1", 2, Some("aaaa"))]).checked.is_empty());
}

#[test]
fn inv_no_regen_fires_on_a_regenerated_key_or_a_recovery_to_another_key() {
    let j = check_no_regen(&[
        read_vault("client-1", 2, Some("aaaa")),
        read_vault("client-1", 4, None),
        read_vault("client-1", 9, Some("bbbb")),
        read_vault("client-1", 10, Some("bbbb")),
    ]);
    assert_eq!(ids(&j), [invariants::NO_REGEN], "reported once: {:?}", j.violations);
    let v = &j.violations[0];
    assert_eq!((v.node.as_str(), v.trace_line), ("client-1", 9));
    assert!(v.message.contains("vault key aaaa initialized (seen at line 2) was regenerated: the vault now holds bbbb"), "{}", v.message);
    let j = check_no_regen(&[read_vault("client-1", 2, Some("aaaa")), recovered("client-1", 5, "cccc")]);
    assert_eq!(ids(&j), [invariants::NO_REGEN]);
    assert!(j.violations[0].message.contains("a recovery restored cccc"), "{}", j.violations[0].message);
    // Nodes are judged apart: another node's key is not this one's.
    let j = check_no_regen(&[read_vault("client-1", 1, Some("aaaa")), read_vault("client-2", 2, Some("dddd"))]);
    assert!(j.is_clean());
}

// ---------------------------------------------------------------------------------------------
// INV-TENANT

fn tenant_facts(events: &[(u64, &str)], projections: &[(&str, &str)]) -> TenantFacts {
    TenantFacts {
        node: "client-3".into(),
        tenant: "acme".into(),
        events: events.iter().map(|(s, t)| (*s, t.to_string())).collect(),
        projection_tenants: projections.iter().map(|(p, t)| (p.to_string(), t.to_string())).collect(),
        seen: Vec::new(),
    }
}

#[test]
fn inv_tenant_holds_for_a_device_that_sees_only_its_tenant() {
    let j = check_tenant(&tenant_facts(&[(1, "acme"), (2, "acme")], &[(AGGREGATE_STATE, "acme")]), 30);
    assert!(j.is_clean());
    assert_eq!(j.checks_of(invariants::TENANT), 1);
    assert!(check_tenant(&tenant_facts(&[], &[]), 30).checked.is_empty());
}

#[test]
fn inv_tenant_fires_on_another_tenants_event_or_projection_rows() {
    let mut f = tenant_facts(&[(1, "acme"), (2, "globex"), (3, "globex")], &[(TENANT_COUNTERS, "initech")]);
    f.seen.push(("pull page item 4".into(), "globex".into()));
    let j = check_tenant(&f, 31);
    assert_eq!(ids(&j), [invariants::TENANT, invariants::TENANT]);
    assert_eq!((j.violations[0].node.as_str(), j.violations[0].trace_line), ("client-3", 31));
    assert!(j.violations[0].message.contains("sees tenant globex's data: event 2, event 3, pull page item 4"), "{}", j.violations[0].message);
    assert!(j.violations[1].message.contains("initech") && j.violations[1].message.contains("rows of projection tenant_counters"));
}

// ---------------------------------------------------------------------------------------------
// INV-READ-ONLY

fn attempt(what: &str, line: u64, recovery: bool, ok: bool, code: Option<&str>) -> WriteAttempt {
    WriteAttempt { what: what.into(), line, recovery, ok, code: code.map(String::from) }
}

fn read_only(attempts: Vec<WriteAttempt>, before: &str, after: &str) -> ReadOnlyFacts {
    ReadOnlyFacts { node: "client-1".into(), attempts, storage_before: Some(before.into()), storage_after: Some(after.into()) }
}

#[test]
fn inv_read_only_holds_when_commands_are_refused_and_storage_stays() {
    let attempts = vec![
        attempt("append", 41, false, false, Some("store:readOnly")),
        attempt("snapshot", 42, false, false, Some("store:readOnly")),
        // An I/O error before the mode was read also changes nothing.
        attempt("apply", 43, false, false, Some("store:io")),
        // The runbook's recovery rebuilds derived state in READ_ONLY.
        attempt("rebuild", 44, true, true, None),
    ];
    let j = check_read_only(&read_only(attempts, "d1", "d1"), 45);
    assert!(j.is_clean(), "{:?}", j.violations);
    assert_eq!(j.checks_of(invariants::READ_ONLY), 1);
    let vacuous =
        ReadOnlyFacts { node: "client-1".into(), attempts: vec![attempt("rebuild", 44, true, true, None)], storage_before: None, storage_after: None };
    assert!(check_read_only(&vacuous, 45).checked.is_empty());
}

#[test]
fn inv_read_only_fires_on_a_write_that_succeeds_or_storage_that_changes() {
    let j = check_read_only(&read_only(vec![attempt("append", 41, false, true, None)], "d1", "d1"), 45);
    assert_eq!(ids(&j), [invariants::READ_ONLY]);
    assert_eq!((j.violations[0].node.as_str(), j.violations[0].trace_line), ("client-1", 41));
    assert!(j.violations[0].message.contains("append succeeded in READ_ONLY"));
    let j = check_read_only(&read_only(vec![attempt("append", 41, false, false, Some("store:readOnly"))], "d1", "d2"), 45);
    assert_eq!(ids(&j), [invariants::READ_ONLY]);
    assert_eq!(j.violations[0].trace_line, 45);
    assert!(j.violations[0].message.contains("stored content changed during READ_ONLY"));
}

#[test]
fn every_store_and_secrets_invariant_is_in_the_registry() {
    for id in [invariants::PROJECTION, invariants::SNAPSHOT, invariants::NO_PLAINTEXT, invariants::NO_REGEN, invariants::TENANT, invariants::READ_ONLY] {
        let i = invariants::find(id).unwrap_or_else(|| panic!("{id} is not registered"));
        assert!(!i.runbook.is_empty() && !i.statement.is_empty() && !i.checked.is_empty(), "{id}");
    }
}

#[test]
fn the_store_model_routes_each_fact_to_its_check_and_remembers_vaults() {
    use drill_model::store::{StoreFact, StoreModel};
    let mut m = StoreModel::new();
    let mut all = Judgement::default();
    all.merge(m.observe(&StoreFact::Vault(read_vault("client-1", 1, Some("aaaa"))), 1));
    all.merge(m.observe(&StoreFact::Vault(read_vault("client-1", 2, Some("bbbb"))), 2));
    all.merge(m.observe(&StoreFact::Tenant(tenant_facts(&[(1, "globex")], &[])), 3));
    all.merge(m.observe(&StoreFact::ReadOnly(read_only(vec![], "d1", "d2")), 4));
    all.merge(m.observe(&StoreFact::Snapshot(snap(vec![pair(TENANT_COUNTERS, vec![row(&["note", "1"])], vec![])])), 5));
    all.merge(m.observe(&StoreFact::Projection(facts(events(), &["a-1", "b-2", "c-3"], true, vec![read(TENANT_COUNTERS, vec![], &[])])), 6));
    let scan = StoreFact::Scan {
        node: "world".into(),
        images: vec![("bundle".into(), b"..a-secret-payload..".to_vec())],
        secrets: vec![Secret::plaintext("p", b"a-secret-payload")],
    };
    all.merge(m.observe(&scan, 7));
    let lines: Vec<(String, u64)> = all.violations.iter().map(|v| (v.invariant.clone(), v.trace_line)).collect();
    let want = [invariants::NO_REGEN, invariants::TENANT, invariants::READ_ONLY, invariants::SNAPSHOT, invariants::PROJECTION, invariants::NO_PLAINTEXT];
    assert_eq!(lines, want.iter().zip(2..).map(|(i, l)| (i.to_string(), l)).collect::<Vec<_>>(), "{:?}", all.violations);
}

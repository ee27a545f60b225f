//! Every blob check (INV-BLOB-VISIBILITY, INV-BLOB-OBJECT) demonstrably fires, and the
//! legitimate histories around each one stay quiet.

use std::collections::BTreeMap;

use drill_model::blobs::{BlobFact, CheckpointFact, ReconcileFact};
use drill_model::{Checker, Fact};

fn checker() -> Checker {
    let mut c = Checker::new();
    c.observe(Fact::Blob(BlobFact::Config { attempts_max: 4 }), 1);
    c
}

fn ids(c: &Checker) -> Vec<String> {
    c.violations().iter().map(|v| v.invariant.clone()).collect()
}

fn ids_of(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(r, w)| (r.to_string(), *w)).collect()
}

fn checkpoint(cursor: u64, w: &[(&str, u64)]) -> CheckpointFact {
    CheckpointFact { client_id: "client-1".into(), cursor, write_ids: ids_of(w) }
}

fn observed(cursor: u64, w: &[(&str, u64)]) -> Option<ReconcileFact> {
    Some(ReconcileFact { cursor, write_ids: ids_of(w) })
}

fn attach(status: u16, code: Option<&str>, cp: CheckpointFact, obs: Option<ReconcileFact>) -> Fact {
    Fact::Blob(BlobFact::Attach {
        node: "client-1".into(),
        blob_id: "b-1".into(),
        checkpoint: cp,
        status,
        code: code.map(String::from),
        observed: obs,
        replayed: false,
    })
}

fn staged(blob: &str, key: &str, sha: &str) -> Fact {
    Fact::Blob(BlobFact::Staged { node: "client-1".into(), blob_id: blob.into(), object_key: key.into(), sha256: sha.into(), checkpoint: checkpoint(0, &[]) })
}

fn read(blob: &str, key: &str, status: u16, code: Option<&str>, attempts: u32, sha: Option<&str>) -> Fact {
    Fact::Blob(BlobFact::Read {
        node: "client-1".into(),
        blob_id: blob.into(),
        object_key: key.into(),
        status,
        code: code.map(String::from),
        attempts,
        sha256: sha.map(String::from),
    })
}

const BEHIND: Option<&str> = Some("blob:reconcileBehind");

#[test]
fn an_attach_that_succeeds_without_domination_breaks_visibility() {
    let mut c = checker();
    c.observe(attach(200, None, checkpoint(5, &[("client-1", 3)]), observed(5, &[("client-1", 3)])), 2);
    assert!(ids(&c).is_empty());
    c.observe(attach(200, None, checkpoint(5, &[("client-1", 4)]), observed(5, &[("client-1", 3)])), 3);
    assert_eq!(ids(&c), vec!["INV-BLOB-VISIBILITY"]);
    c.observe(attach(200, None, checkpoint(1, &[]), None), 4);
    assert_eq!(ids(&c).len(), 2, "a success with no persisted state at all");
}

#[test]
fn a_409_behind_when_the_state_dominates_breaks_visibility() {
    let mut c = checker();
    c.observe(attach(409, BEHIND, checkpoint(6, &[("client-1", 3)]), observed(5, &[("client-1", 3)])), 2);
    c.observe(attach(409, BEHIND, checkpoint(5, &[("client-1", 3)]), None), 3);
    assert!(ids(&c).is_empty());
    c.observe(attach(409, BEHIND, checkpoint(5, &[("client-1", 3)]), observed(5, &[("client-1", 3), ("client-2", 1)])), 4);
    assert_eq!(ids(&c), vec!["INV-BLOB-VISIBILITY"]);
    assert_eq!(c.violations()[0].trace_line, 4);
}

#[test]
fn a_reconcile_state_that_goes_back_breaks_visibility() {
    let mut c = checker();
    c.observe(attach(409, BEHIND, checkpoint(9, &[]), observed(5, &[("client-1", 3)])), 2);
    c.observe(attach(409, BEHIND, checkpoint(9, &[]), observed(6, &[("client-1", 3), ("client-2", 1)])), 3);
    assert!(ids(&c).is_empty());
    c.observe(attach(409, BEHIND, checkpoint(9, &[]), observed(6, &[("client-1", 2), ("client-2", 1)])), 4);
    assert_eq!(ids(&c), vec!["INV-BLOB-VISIBILITY"]);
}

#[test]
fn an_attach_still_behind_after_the_heal_breaks_visibility() {
    let mut c = checker();
    c.observe(attach(409, BEHIND, checkpoint(9, &[]), observed(5, &[])), 2);
    c.observe(Fact::Blob(BlobFact::FinalRound), 3);
    c.observe(attach(409, Some("blob:stagingExpired"), checkpoint(9, &[]), None), 4);
    assert!(ids(&c).is_empty(), "an expired stage may stay unattached");
    c.observe(attach(409, BEHIND, checkpoint(9, &[]), observed(5, &[])), 5);
    assert_eq!(ids(&c), vec!["INV-BLOB-VISIBILITY"]);
}

#[test]
fn a_500_for_malformed_state_nothing_corrupted_breaks_visibility() {
    let mut c = checker();
    c.observe(attach(500, Some("store:io"), checkpoint(1, &[]), None), 2);
    assert!(ids(&c).is_empty(), "a disk fault may fail an attach");
    c.observe(attach(500, Some("blob:attachFailed"), checkpoint(1, &[]), None), 3);
    assert_eq!(ids(&c), vec!["INV-BLOB-VISIBILITY"]);
    // State made malformed behind the stack's back gets the runbook's deterministic 500.
    c.observe(Fact::Blob(BlobFact::ReconcileStateCorrupted { client_id: "client-1".into() }), 4);
    c.observe(attach(500, Some("blob:attachFailed"), checkpoint(1, &[]), None), 5);
    assert_eq!(ids(&c).len(), 1);
}

#[test]
fn a_read_with_other_bytes_or_a_lost_registry_row_breaks_object() {
    let mut c = checker();
    c.observe(staged("b-1", "k1", "aaa"), 2);
    c.observe(read("b-1", "k1", 200, None, 1, Some("aaa")), 3);
    c.observe(read("b-9", "k9", 404, Some("blob:notFound"), 0, None), 4);
    assert!(ids(&c).is_empty());
    c.observe(read("b-1", "k1", 200, None, 1, Some("bbb")), 5);
    c.observe(read("b-1", "k1", 404, Some("blob:notFound"), 0, None), 6);
    assert_eq!(ids(&c), vec!["INV-BLOB-OBJECT", "INV-BLOB-OBJECT"]);
}

#[test]
fn an_object_failure_the_store_never_produced_breaks_object() {
    let mut c = checker();
    c.observe(staged("b-1", "k1", "aaa"), 2);
    c.observe(Fact::Blob(BlobFact::Injected { key: "k1".into(), code: "s3:AccessDenied".into() }), 3);
    c.observe(read("b-1", "k1", 500, Some("s3:AccessDenied"), 1, None), 4);
    c.observe(read("b-1", "k1", 500, Some("s3:timeout"), 4, None), 5);
    c.observe(read("b-1", "k1", 500, Some("store:io"), 0, None), 6);
    assert!(ids(&c).is_empty());
    c.observe(read("b-1", "k1", 500, Some("s3:NoSuchKey"), 1, None), 7);
    assert_eq!(ids(&c), vec!["INV-BLOB-OBJECT"], "no object was deleted and no NoSuchKey injected");
    c.observe(Fact::Blob(BlobFact::DeletedOutOfBand { key: "k1".into() }), 8);
    c.observe(read("b-1", "k1", 500, Some("s3:NoSuchKey"), 1, None), 9);
    assert_eq!(ids(&c).len(), 1, "an out-of-band deletion explains NoSuchKey");
    let failed =
        BlobFact::StageFailed { node: "client-1".into(), blob_id: "b-2".into(), object_key: "k2".into(), status: 500, code: "s3:SlowDown".into(), attempts: 4 };
    c.observe(Fact::Blob(failed), 10);
    assert_eq!(ids(&c).len(), 2);
}

#[test]
fn transient_failures_not_retried_to_the_bound_break_object() {
    let mut c = checker();
    c.observe(Fact::Blob(BlobFact::Injected { key: "k2".into(), code: "s3:SlowDown".into() }), 2);
    let failed = |attempts| BlobFact::StageFailed {
        node: "client-1".into(),
        blob_id: "b-2".into(),
        object_key: "k2".into(),
        status: 500,
        code: "s3:SlowDown".into(),
        attempts,
    };
    c.observe(Fact::Blob(failed(4)), 3);
    assert!(ids(&c).is_empty());
    c.observe(Fact::Blob(failed(1)), 4);
    c.observe(Fact::Blob(failed(5)), 5);
    assert_eq!(ids(&c), vec!["INV-BLOB-OBJECT", "INV-BLOB-OBJECT"]);
}

#[test]
fn a_staged_blob_unreadable_after_the_heal_breaks_object() {
    let mut c = checker();
    c.observe(staged("b-1", "k1", "aaa"), 2);
    c.observe(staged("b-2", "k2", "bbb"), 3);
    c.observe(Fact::Blob(BlobFact::DeletedOutOfBand { key: "k2".into() }), 4);
    c.observe(Fact::Blob(BlobFact::FinalRound), 5);
    c.observe(read("b-2", "k2", 500, Some("s3:NoSuchKey"), 1, None), 6);
    assert!(ids(&c).is_empty(), "an orphan cannot be read");
    c.observe(read("b-1", "k1", 500, Some("s3:timeout"), 4, None), 7);
    assert!(ids(&c).is_empty(), "a message lost to the network even after retries proves nothing");
    c.observe(Fact::Blob(BlobFact::Injected { key: "k1".into(), code: "s3:InternalError".into() }), 8);
    c.observe(read("b-1", "k1", 500, Some("s3:InternalError"), 4, None), 9);
    assert_eq!(ids(&c), vec!["INV-BLOB-OBJECT"]);
}

#[test]
fn an_injection_before_the_heal_explains_nothing_after_it() {
    let mut c = checker();
    c.observe(staged("b-1", "k1", "aaa"), 2);
    c.observe(Fact::Blob(BlobFact::Injected { key: "k1".into(), code: "s3:AccessDenied".into() }), 3);
    c.observe(read("b-1", "k1", 500, Some("s3:AccessDenied"), 1, None), 4);
    assert!(ids(&c).is_empty());
    c.observe(Fact::Blob(BlobFact::FinalRound), 5);
    c.observe(read("b-1", "k1", 500, Some("s3:AccessDenied"), 1, None), 6);
    assert!(ids(&c).contains(&"INV-BLOB-OBJECT".to_string()));
}

#[test]
fn an_orphan_scan_that_misses_or_invents_an_orphan_breaks_object() {
    let mut c = checker();
    c.observe(staged("b-1", "k1", "aaa"), 2);
    c.observe(staged("b-2", "k2", "bbb"), 3);
    c.observe(Fact::Blob(BlobFact::DeletedOutOfBand { key: "k2".into() }), 4);
    c.observe(Fact::Blob(BlobFact::Orphans { found: vec![("b-2".into(), "k2".into())], cleaned: 1 }), 5);
    assert!(ids(&c).is_empty());
    // After the cleanup, the orphan's 404 is expected.
    c.observe(read("b-2", "k2", 404, Some("blob:notFound"), 0, None), 6);
    assert!(ids(&c).is_empty());

    let mut missed = checker();
    missed.observe(staged("b-2", "k2", "bbb"), 2);
    missed.observe(Fact::Blob(BlobFact::DeletedOutOfBand { key: "k2".into() }), 3);
    missed.observe(Fact::Blob(BlobFact::Orphans { found: vec![], cleaned: 0 }), 4);
    assert_eq!(ids(&missed), vec!["INV-BLOB-OBJECT"]);

    let mut invented = checker();
    invented.observe(staged("b-1", "k1", "aaa"), 2);
    invented.observe(Fact::Blob(BlobFact::Orphans { found: vec![("b-1".into(), "k1".into())], cleaned: 1 }), 3);
    assert_eq!(ids(&invented), vec!["INV-BLOB-OBJECT"]);
}

#[test]
fn the_blob_invariants_are_registered_with_runbook_003() {
    for id in ["INV-BLOB-VISIBILITY", "INV-BLOB-OBJECT"] {
        let inv = drill_model::invariants::find(id).unwrap_or_else(|| panic!("{id} is not registered"));
        assert!(inv.runbook.starts_with("003"), "{id}: {}", inv.runbook);
    }
}

//! Every jobs check (INV-EXPORT, INV-IMPORT-REJECT) demonstrably fires, and the legitimate
//! histories around each one stay quiet.

use drill_model::jobs::{JobsFact, RowFact};
use drill_model::{invariants, Checker, Fact};
use sha2::{Digest, Sha256};

fn ids(c: &Checker) -> Vec<String> {
    c.violations().iter().map(|v| v.invariant.clone()).collect()
}

fn manifest(files: &[(&str, &[u8])]) -> Vec<u8> {
    let entries: Vec<serde_json::Value> = files
        .iter()
        .map(|(n, d)| {
            serde_json::json!({"name": n, "rows": d.iter().filter(|&&b| b == b'\n').count(), "bytes": d.len(), "sha256": hex::encode(Sha256::digest(d))})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({"format_version": 1, "files": entries})).unwrap()
}

fn export_state(manifest: Option<Vec<u8>>, files: &[(&str, &[u8])]) -> Fact {
    Fact::Jobs(JobsFact::ExportState {
        node: "jobs".into(),
        dir: "export".into(),
        manifest,
        files: files.iter().map(|(n, d)| (n.to_string(), d.to_vec())).collect(),
    })
}

const RUNS: &[u8] = b"{\"run_id\":\"r1\"}\n{\"run_id\":\"r2\"}\n";
const SEGMENTS: &[u8] = b"{\"run_id\":\"r1\",\"idx\":0}\n";

#[test]
fn inv_export_holds_for_matching_files_and_for_no_manifest() {
    let mut c = Checker::new();
    c.observe(export_state(Some(manifest(&[("runs.jsonl", RUNS), ("segments.jsonl", SEGMENTS)])), &[("runs.jsonl", RUNS), ("segments.jsonl", SEGMENTS)]), 1);
    // A crash mid-export: temp files and no manifest. Nothing is claimed, nothing is wrong.
    c.observe(export_state(None, &[("runs.jsonl.tmp", b"{\"run"), ("runs.jsonl", b"")]), 2);
    assert!(ids(&c).is_empty(), "{:?}", c.violations());
    assert_eq!(c.checks().get(invariants::EXPORT), Some(&1));
}

#[test]
fn inv_export_fires_on_a_file_that_differs_from_its_manifest() {
    let m = manifest(&[("runs.jsonl", RUNS), ("segments.jsonl", SEGMENTS)]);
    // New data renamed into place under an old manifest.
    let mut c = Checker::new();
    c.observe(
        export_state(Some(m.clone()), &[("runs.jsonl", b"{\"run_id\":\"r1\"}\n{\"run_id\":\"r2\"}\n{\"run_id\":\"r3\"}\n"), ("segments.jsonl", SEGMENTS)]),
        4,
    );
    assert_eq!(ids(&c), [invariants::EXPORT, invariants::EXPORT, invariants::EXPORT], "{:?}", c.violations());
    assert!(c.violations()[0].message.contains("runs.jsonl"));
    assert_eq!(c.violations()[0].trace_line, 4);
    // A file the manifest names is missing.
    let mut c = Checker::new();
    c.observe(export_state(Some(m.clone()), &[("runs.jsonl", RUNS)]), 5);
    assert_eq!(ids(&c), [invariants::EXPORT]);
    assert!(c.violations()[0].message.contains("segments.jsonl is missing"));
    // A torn write of the same length: the checksum catches it.
    let mut torn = RUNS.to_vec();
    torn[3] ^= 0x20;
    let mut c = Checker::new();
    c.observe(export_state(Some(m.clone()), &[("runs.jsonl", &torn), ("segments.jsonl", SEGMENTS)]), 6);
    assert_eq!(ids(&c), [invariants::EXPORT]);
    // A manifest that is itself torn.
    let mut c = Checker::new();
    c.observe(export_state(Some(m[..m.len() / 2].to_vec()), &[("runs.jsonl", RUNS), ("segments.jsonl", SEGMENTS)]), 7);
    assert_eq!(ids(&c), [invariants::EXPORT]);
}

fn rows(rs: &[(&str, &str, &str)]) -> Vec<RowFact> {
    rs.iter().map(|(t, k, j)| (t.to_string(), k.to_string(), j.to_string())).collect()
}

fn started(policy: &str, r: Vec<RowFact>) -> Fact {
    Fact::Jobs(JobsFact::ImportStarted { node: "jobs".into(), db: "jobs.db".into(), policy: policy.into(), rows: r })
}

fn ended(code: Option<&str>, r: Vec<RowFact>) -> Fact {
    Fact::Jobs(JobsFact::ImportEnded { node: "jobs".into(), db: "jobs.db".into(), code: code.map(String::from), rows: Some(r) })
}

#[test]
fn inv_import_reject_holds_when_rows_are_only_added() {
    let before = rows(&[("runs", "r1", "{a}"), ("segments", "r1/0", "{s}")]);
    let mut after = before.clone();
    after.push(("runs".into(), "r2".into(), "{b}".into()));
    let mut c = Checker::new();
    c.observe(started("reject", before.clone()), 1);
    c.observe(ended(None, after), 2);
    c.observe(started("reject", before.clone()), 3);
    c.observe(ended(Some("jobs:importConflict"), before.clone()), 4);
    // Overwrite may change rows: it is the operator's intent, not checked here.
    c.observe(started("overwrite", before.clone()), 5);
    c.observe(ended(None, rows(&[("runs", "r1", "{changed}")])), 6);
    assert!(ids(&c).is_empty(), "{:?}", c.violations());
    assert_eq!(c.checks().get(invariants::IMPORT_REJECT), Some(&2));
}

#[test]
fn inv_import_reject_fires_on_a_changed_or_removed_row() {
    let before = rows(&[("runs", "r1", "{a}"), ("segments", "r1/0", "{s}")]);
    let mut c = Checker::new();
    c.observe(started("reject", before.clone()), 1);
    c.observe(ended(Some("jobs:importConflict"), rows(&[("runs", "r1", "{overwritten}"), ("segments", "r1/0", "{s}")])), 2);
    assert_eq!(ids(&c), [invariants::IMPORT_REJECT]);
    assert!(c.violations()[0].message.contains("changed runs row r1"));
    assert_eq!(c.violations()[0].trace_line, 2);
    // Cut short by a crash: judged when the node has recovered.
    let mut c = Checker::new();
    c.observe(started("reject", before.clone()), 1);
    c.observe(Fact::Crashed { node: "jobs".into() }, 2);
    c.observe(Fact::Jobs(JobsFact::Recovered { node: "jobs".into(), db: "jobs.db".into(), rows: Some(rows(&[("runs", "r1", "{a}")])) }), 3);
    assert_eq!(ids(&c), [invariants::IMPORT_REJECT]);
    assert!(c.violations()[0].message.contains("removed segments row r1/0"));
}

#[test]
fn both_jobs_invariants_are_in_the_registry() {
    for id in [invariants::EXPORT, invariants::IMPORT_REJECT] {
        let i = invariants::find(id).unwrap_or_else(|| panic!("{id} is not registered"));
        assert!(i.runbook.starts_with("001"));
    }
}

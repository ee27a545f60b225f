//! The jobs part of the model (runbook 001 Scenarios B and C), judged from what the jobs process
//! reads back from its disk, independently of the stack: the model parses manifests and hashes
//! files itself.
//!
//! - INV-EXPORT: a manifest that exists matches its files: every file it names exists, with the
//!   SHA-256, byte count and row count (lines) the manifest records. Checked after every export,
//!   finished or cut short, after every recovery of the jobs node, and at the end of the run.
//! - INV-IMPORT-REJECT: an import with the `reject` policy never changes an existing row: every
//!   row the database held when the import started is there, unchanged, when it ends — or, when
//!   the node crashed during the import, when it has recovered.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::invariants::{EXPORT, IMPORT_REJECT};

/// A stored row: (table, key, canonical JSON).
pub type RowFact = (String, String, String);

/// Something the jobs process saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobsFact {
    /// A snapshot folder as read back from disk: the manifest's bytes, if it exists, and the
    /// bytes of every other file in the folder.
    ExportState { node: String, dir: String, manifest: Option<Vec<u8>>, files: Vec<(String, Vec<u8>)> },
    /// An import into database `db` began with `policy` (`reject` or `overwrite`); `rows` is
    /// what the database held.
    ImportStarted { node: String, db: String, policy: String, rows: Vec<RowFact> },
    /// The import ended (`code` is its error, if any); `rows` is what the database holds now,
    /// `None` when it could not be read.
    ImportEnded { node: String, db: String, code: Option<String>, rows: Option<Vec<RowFact>> },
    /// The jobs process recovered from a crash and read database `db`.
    Recovered { node: String, db: String, rows: Option<Vec<RowFact>> },
}

/// What one fact produced: checks made and violations (invariant, node, message).
#[derive(Debug, Default)]
pub struct Outcome {
    pub checked: Vec<&'static str>,
    pub violations: Vec<(&'static str, String, String)>,
}

/// What the model knows of jobs: imports with `reject` not yet judged, by node.
#[derive(Debug, Default, Clone)]
pub struct JobsModel {
    pending_reject: BTreeMap<String, (String, Vec<RowFact>)>,
}

impl JobsModel {
    /// Takes one fact.
    pub fn observe(&mut self, fact: JobsFact) -> Outcome {
        let mut out = Outcome::default();
        match fact {
            JobsFact::ExportState { node, dir, manifest, files } => {
                if let Some(m) = manifest {
                    out.checked.push(EXPORT);
                    for why in manifest_mismatches(&m, &files) {
                        out.violations.push((EXPORT, node.clone(), format!("{dir}/manifest.json: {why}")));
                    }
                }
            }
            JobsFact::ImportStarted { node, db, policy, rows } => {
                if policy == "reject" {
                    self.pending_reject.insert(node, (db, rows));
                } else {
                    self.pending_reject.remove(&node);
                }
            }
            JobsFact::ImportEnded { node, db, rows, code } => {
                let what = format!("import with reject ({})", code.as_deref().unwrap_or("ok"));
                self.judge(&mut out, &node, &db, rows.as_deref(), &what);
            }
            JobsFact::Recovered { node, db, rows } => self.judge(&mut out, &node, &db, rows.as_deref(), "import with reject cut short by a crash"),
        }
        out
    }

    fn judge(&mut self, out: &mut Outcome, node: &str, db: &str, rows: Option<&[RowFact]>, what: &str) {
        let Some((started_db, before)) = self.pending_reject.get(node) else { return };
        let Some(after) = rows else { return };
        if started_db != db {
            return;
        }
        out.checked.push(IMPORT_REJECT);
        let now: BTreeMap<(&str, &str), &str> = after.iter().map(|(t, k, j)| ((t.as_str(), k.as_str()), j.as_str())).collect();
        for (t, k, j) in before {
            match now.get(&(t.as_str(), k.as_str())) {
                Some(v) if v == j => {}
                Some(v) => out.violations.push((IMPORT_REJECT, node.into(), format!("{what} changed {t} row {k}: {j} -> {v}"))),
                None => out.violations.push((IMPORT_REJECT, node.into(), format!("{what} removed {t} row {k}"))),
            }
        }
        self.pending_reject.remove(node);
    }
}

/// Every way the files differ from the manifest `m` (empty when they match).
pub fn manifest_mismatches(m: &[u8], files: &[(String, Vec<u8>)]) -> Vec<String> {
    let parsed: serde_json::Value = match serde_json::from_slice(m) {
        Ok(v) => v,
        Err(e) => return vec![format!("the manifest is not JSON: {e}")],
    };
    let Some(entries) = parsed.get("files").and_then(|f| f.as_array()) else {
        return vec!["the manifest lists no files".into()];
    };
    let mut why = Vec::new();
    for e in entries {
        let name = e.get("name").and_then(|v| v.as_str()).unwrap_or("");
        let Some((_, data)) = files.iter().find(|(n, _)| n == name) else {
            why.push(format!("{name} is missing"));
            continue;
        };
        let sha = hex::encode(Sha256::digest(data));
        let rows = data.iter().filter(|&&b| b == b'\n').count() as u64;
        if e.get("sha256").and_then(|v| v.as_str()) != Some(sha.as_str()) {
            why.push(format!("{name} has sha256 {}, the manifest {}", &sha[..12], e.get("sha256").and_then(|v| v.as_str()).unwrap_or("none")));
        }
        if e.get("rows").and_then(|v| v.as_u64()) != Some(rows) {
            why.push(format!("{name} has {rows} rows, the manifest {}", e.get("rows").map(|v| v.to_string()).unwrap_or_default()));
        }
        if e.get("bytes").and_then(|v| v.as_u64()) != Some(data.len() as u64) {
            why.push(format!("{name} has {} bytes, the manifest {}", data.len(), e.get("bytes").map(|v| v.to_string()).unwrap_or_default()));
        }
    }
    why
}

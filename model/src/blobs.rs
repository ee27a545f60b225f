//! The blob part of the model (runbook 003 §2 and §3): what staging, attaching and reading blobs
//! must look like, judged from the answers devices got, what the object store injected, and
//! what was deleted behind the registry's back.
//!
//! - INV-BLOB-VISIBILITY: an attach succeeds only when the reconcile state the server judged it
//!   against dominates the checkpoint, and is refused as behind only when it does not; that state
//!   never moves back; once every device has reconciled, no attach is still behind.
//! - INV-BLOB-OBJECT: a staged blob reads back its bytes, and stays registered; every object
//!   failure an answer names is explained by an error the store produced (an injected code, or
//!   for `NoSuchKey` an object deleted out of band); transient failures are retried to the
//!   bound and no further; the orphan scan finds exactly the registered blobs whose object is
//!   gone.

use std::collections::{BTreeMap, BTreeSet};

use crate::invariants::{BLOB_OBJECT, BLOB_VISIBILITY};

/// A device's visibility checkpoint: the cursor and write ids it requires.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointFact {
    pub client_id: String,
    pub cursor: u64,
    pub write_ids: BTreeMap<String, u64>,
}

/// The server's persisted reconcile state an attach was judged against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileFact {
    pub cursor: u64,
    pub write_ids: BTreeMap<String, u64>,
}

impl ReconcileFact {
    /// Dominance as runbook 003 §2 states it, computed apart from the stack.
    pub fn dominates(&self, c: &CheckpointFact) -> bool {
        self.cursor >= c.cursor && c.write_ids.iter().all(|(r, w)| self.write_ids.get(r).is_some_and(|have| have >= w))
    }
}

/// One blob answer or world event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobFact {
    /// The retry bound of the server's object layer.
    Config { attempts_max: u32 },
    /// The server answered a stage with 200.
    Staged { node: String, blob_id: String, object_key: String, sha256: String, checkpoint: CheckpointFact },
    /// A stage failed with an HTTP-like status and stable code.
    StageFailed { node: String, blob_id: String, object_key: String, status: u16, code: String, attempts: u32 },
    /// An attach answer.
    Attach { node: String, blob_id: String, checkpoint: CheckpointFact, status: u16, code: Option<String>, observed: Option<ReconcileFact>, replayed: bool },
    /// A read answer; `sha256` of the bytes on a 200.
    Read { node: String, blob_id: String, object_key: String, status: u16, code: Option<String>, attempts: u32, sha256: Option<String> },
    /// The object store answered a request for `key` with injected error `code` (`s3:<Code>`).
    Injected { key: String, code: String },
    /// The object of `key` was deleted behind the registry's back.
    DeletedOutOfBand { key: String },
    /// The server's persisted reconcile state of `client_id` was made malformed behind its back.
    ReconcileStateCorrupted { client_id: String },
    /// From here on every fault is healed and every device has reconciled.
    FinalRound,
    /// The operator's orphan scan (with cleanup) found these `(blob id, object key)` pairs.
    Orphans { found: Vec<(String, String)>, cleaned: u64 },
}

/// What the model knows of blobs.
#[derive(Debug, Default, Clone)]
pub struct BlobModel {
    attempts_max: Option<u32>,
    /// Blobs staged with 200: blob id to (object key, sha256).
    staged: BTreeMap<String, (String, String)>,
    /// Injected error codes per object key.
    injected: BTreeMap<String, BTreeSet<String>>,
    deleted_out_of_band: BTreeSet<String>,
    /// Clients whose persisted reconcile state was made malformed.
    corrupted: BTreeSet<String>,
    /// Blob ids the orphan cleanup removed.
    cleaned: BTreeSet<String>,
    /// The most the server ever showed of each client's reconcile state.
    observed_max: BTreeMap<String, ReconcileFact>,
    final_round: bool,
}

/// What one fact produced: checks made (by invariant id) and violations (invariant, node,
/// message).
#[derive(Debug, Default)]
pub struct Outcome {
    pub checked: Vec<&'static str>,
    pub violations: Vec<(&'static str, String, String)>,
}

impl Outcome {
    fn violate(&mut self, inv: &'static str, node: &str, msg: String) {
        self.violations.push((inv, node.to_string(), msg));
    }
}

const STORE_CODES: [&str; 5] = ["s3:NoSuchKey", "s3:AccessDenied", "s3:ServiceUnavailable", "s3:SlowDown", "s3:InternalError"];
const TRANSIENT_CODES: [&str; 4] = ["s3:ServiceUnavailable", "s3:SlowDown", "s3:InternalError", "s3:timeout"];

impl BlobModel {
    /// Takes one fact.
    pub fn observe(&mut self, fact: BlobFact) -> Outcome {
        let mut out = Outcome::default();
        match fact {
            BlobFact::Config { attempts_max } => self.attempts_max = Some(attempts_max),
            BlobFact::Staged { blob_id, object_key, sha256, .. } => {
                self.staged.insert(blob_id, (object_key, sha256));
            }
            BlobFact::StageFailed { node, blob_id, object_key, status, code, attempts } => {
                self.check_object_failure(&mut out, &node, "stage", &blob_id, &object_key, status, &code, attempts);
            }
            BlobFact::Attach { node, blob_id, checkpoint, status, code, observed, replayed } => {
                self.check_attach(&mut out, &node, &blob_id, &checkpoint, status, code.as_deref(), observed, replayed);
            }
            BlobFact::Read { node, blob_id, object_key, status, code, attempts, sha256 } => {
                self.check_read(&mut out, &node, &blob_id, &object_key, status, code.as_deref().unwrap_or(""), attempts, sha256.as_deref());
            }
            BlobFact::Injected { key, code } => {
                self.injected.entry(key).or_default().insert(code);
            }
            BlobFact::DeletedOutOfBand { key } => {
                self.deleted_out_of_band.insert(key);
            }
            BlobFact::ReconcileStateCorrupted { client_id } => {
                self.corrupted.insert(client_id);
            }
            BlobFact::FinalRound => {
                // Every error window is closed: what the store injected before cannot explain a
                // failure from now on.
                self.final_round = true;
                self.injected.clear();
            }
            BlobFact::Orphans { found, .. } => self.check_orphans(&mut out, &found),
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn check_attach(
        &mut self,
        out: &mut Outcome,
        node: &str,
        blob_id: &str,
        checkpoint: &CheckpointFact,
        status: u16,
        code: Option<&str>,
        observed: Option<ReconcileFact>,
        replayed: bool,
    ) {
        let behind = code == Some("blob:reconcileBehind");
        if status == 200 && !replayed {
            out.checked.push(BLOB_VISIBILITY);
            if !observed.as_ref().is_some_and(|o| o.dominates(checkpoint)) {
                out.violate(
                    BLOB_VISIBILITY,
                    node,
                    format!("attach of {blob_id} succeeded although the server's reconcile state {observed:?} does not dominate the checkpoint {checkpoint:?}"),
                );
            }
        }
        if behind {
            out.checked.push(BLOB_VISIBILITY);
            if let Some(o) = observed.as_ref().filter(|o| o.dominates(checkpoint)) {
                out.violate(
                    BLOB_VISIBILITY,
                    node,
                    format!("attach of {blob_id} was refused as behind although the server's reconcile state {o:?} dominates the checkpoint {checkpoint:?}"),
                );
            }
            if self.final_round {
                out.violate(
                    BLOB_VISIBILITY,
                    node,
                    format!("attach of {blob_id} retried after the device reconciled is still behind (observed {observed:?}, checkpoint {checkpoint:?})"),
                );
            }
        }
        if code == Some("blob:attachFailed") {
            // The runbook's deterministic 500 is right for state made malformed behind the
            // stack's back; for anything the stack wrote itself it is a bug.
            out.checked.push(BLOB_VISIBILITY);
            if status != 500 || !self.corrupted.contains(&checkpoint.client_id) {
                out.violate(
                    BLOB_VISIBILITY,
                    node,
                    format!("attach of {blob_id} answered {status} attachFailed, but nothing made the metadata or reconcile state malformed"),
                );
            }
        }
        if let Some(o) = observed {
            let max = self.observed_max.entry(checkpoint.client_id.clone()).or_default();
            let regressed = o.cursor < max.cursor || max.write_ids.iter().any(|(r, w)| o.write_ids.get(r).is_none_or(|now| now < w));
            out.checked.push(BLOB_VISIBILITY);
            if regressed {
                out.violate(BLOB_VISIBILITY, node, format!("the server's reconcile state for {} went back from {max:?} to {o:?}", checkpoint.client_id));
            }
            max.cursor = max.cursor.max(o.cursor);
            for (r, w) in o.write_ids {
                let e = max.write_ids.entry(r).or_insert(0);
                *e = (*e).max(w);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check_read(&mut self, out: &mut Outcome, node: &str, blob_id: &str, key: &str, status: u16, code: &str, attempts: u32, sha256: Option<&str>) {
        let staged = self.staged.get(blob_id).cloned();
        match status {
            200 => {
                if let Some((_, want)) = &staged {
                    out.checked.push(BLOB_OBJECT);
                    if sha256 != Some(want.as_str()) {
                        out.violate(BLOB_OBJECT, node, format!("read of {blob_id} returned bytes {sha256:?}, it was staged as {want}"));
                    }
                }
            }
            404 => {
                if staged.is_some() && !self.cleaned.contains(blob_id) {
                    out.checked.push(BLOB_OBJECT);
                    out.violate(BLOB_OBJECT, node, format!("read of staged blob {blob_id} answered 404: the registry lost it"));
                }
            }
            _ => self.check_object_failure(out, node, "read", blob_id, key, status, code, attempts),
        }
        // After the heal only a lost message (retried to the bound) may keep a staged blob from
        // reading back, unless its object is gone.
        let lost_message = code == "s3:timeout";
        if self.final_round && staged.is_some() && status != 200 && !lost_message && !self.deleted_out_of_band.contains(key) && !self.cleaned.contains(blob_id)
        {
            out.checked.push(BLOB_OBJECT);
            out.violate(BLOB_OBJECT, node, format!("after the heal, read of staged blob {blob_id} answered {status} {code}"));
        }
    }

    /// An object-layer failure must be explained by what the store did, and retried as the
    /// runbook says: transient codes to the bound, the others not at all.
    #[allow(clippy::too_many_arguments)]
    fn check_object_failure(&mut self, out: &mut Outcome, node: &str, op: &str, blob_id: &str, key: &str, status: u16, code: &str, attempts: u32) {
        if status != 500 || !code.starts_with("s3:") {
            return;
        }
        out.checked.push(BLOB_OBJECT);
        let injected = self.injected.get(key).is_some_and(|s| s.contains(code));
        let explained = match code {
            "s3:timeout" => true,
            "s3:NoSuchKey" => injected || self.deleted_out_of_band.contains(key),
            c if STORE_CODES.contains(&c) => injected,
            _ => false,
        };
        if !explained {
            out.violate(BLOB_OBJECT, node, format!("{op} of {blob_id} failed with {code}, which the object store never produced for {key}"));
        }
        if let Some(max) = self.attempts_max {
            if attempts > max || (TRANSIENT_CODES.contains(&code) && attempts != max) {
                out.violate(
                    BLOB_OBJECT,
                    node,
                    format!("{op} of {blob_id} gave up on {code} after {attempts} attempts; transient codes are retried to exactly {max}"),
                );
            }
        }
    }

    fn check_orphans(&mut self, out: &mut Outcome, found: &[(String, String)]) {
        out.checked.push(BLOB_OBJECT);
        for (blob_id, key) in found {
            if !self.deleted_out_of_band.contains(key) {
                out.violate(BLOB_OBJECT, "server", format!("orphan scan reported {blob_id}, whose object was never deleted"));
            }
            self.cleaned.insert(blob_id.clone());
        }
        let found_ids: BTreeSet<&String> = found.iter().map(|(b, _)| b).collect();
        for (blob_id, (key, _)) in &self.staged {
            if self.deleted_out_of_band.contains(key) && !found_ids.contains(blob_id) {
                out.violate(BLOB_OBJECT, "server", format!("orphan scan missed {blob_id}, whose object was deleted out of band"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dominance_is_pointwise_and_needs_every_required_replica() {
        let o = ReconcileFact { cursor: 5, write_ids: [("a".to_string(), 2)].into() };
        let c = |cursor, w: &[(&str, u64)]| CheckpointFact { client_id: "a".into(), cursor, write_ids: w.iter().map(|(r, n)| (r.to_string(), *n)).collect() };
        assert!(o.dominates(&c(5, &[("a", 2)])));
        assert!(!o.dominates(&c(6, &[])));
        assert!(!o.dominates(&c(0, &[("a", 3)])));
        assert!(!o.dominates(&c(0, &[("b", 1)])));
    }
}

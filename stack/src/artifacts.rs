//! Encrypted index artifacts (runbook 000, "Projection corruption or stale indexes"): a blob
//! derived from a projection, sealed under a device key, kept as a file beside the database.
//!
//! The artifact is a per-tenant search index of aggregates, built from the `aggregate_state`
//! projection: every aggregate with its event count, last event and digest, and the aggregates
//! grouped by their last event type. It is sealed with XChaCha20-Poly1305 (the tenant bound as
//! associated data, the nonce from the caller's rng) and published whole through
//! [`crate::fs::publish`], so a crash leaves the old artifact or the new one.
//!
//! Loading authenticates it. Because of the AEAD, a flipped bit, a truncated file, an artifact
//! copied under another tenant's name and one sealed under another key all look the same:
//! `artifact:corrupt`. The runbook's recovery is to delete it and rebuild it from the projection
//! ([`load_or_rebuild`], [`rebuild`]); a rebuild is checked to read back equal to a fresh build.
//! An artifact that opens but no longer matches the projection is `artifact:stale`.
//!
//! Writing an artifact is a command (refused in READ_ONLY, which leaves storage unchanged);
//! rebuilding one is recovery, allowed in every mode.

use std::collections::BTreeMap;
use std::fmt;

use rand_core::RngCore;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::{self, Key, NONCE_BYTES};
use crate::fs::{self, FileSystem, FsError};
use crate::projections::resilience::{self, Write};
use crate::projections::{Engine, ProjectionError};

/// The folder of artifact files.
pub const DIR: &str = "artifacts/";
/// The projection artifacts are derived from.
pub const SOURCE: &str = "aggregate_state";
const MAGIC: &[u8; 8] = b"DRLIDX01";

/// One aggregate in a tenant's index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub aggregate: String,
    pub events: u64,
    pub last_seq: u64,
    pub last_kind: String,
    pub digest: String,
}

/// A tenant's search index of aggregates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    pub tenant: String,
    /// The projection's cursor when the index was built.
    pub through_seq: u64,
    /// By aggregate.
    pub entries: Vec<Entry>,
    /// Aggregate names by the type of their last event.
    pub by_last_kind: BTreeMap<String, Vec<String>>,
}

/// Why an artifact could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactError {
    /// No artifact for this tenant.
    Missing {
        tenant: String,
    },
    /// The artifact failed authentication or is not an artifact: corrupt, truncated, moved or
    /// sealed under another key. Delete it and rebuild.
    Corrupt {
        tenant: String,
        detail: String,
    },
    /// The artifact opens but differs from the projection: rebuild it.
    Stale {
        tenant: String,
        artifact_through_seq: u64,
        projection_through_seq: u64,
    },
    /// A rebuilt artifact did not read back equal to a fresh build.
    RebuildMismatch {
        tenant: String,
    },
    /// The store is READ_ONLY: nothing was written.
    ReadOnly,
    Fs(FsError),
    Projection(ProjectionError),
}

impl ArtifactError {
    /// A short stable code for traces and diagnostics.
    pub fn code(&self) -> &'static str {
        match self {
            ArtifactError::Missing { .. } => "artifact:missing",
            ArtifactError::Corrupt { .. } => "artifact:corrupt",
            ArtifactError::Stale { .. } => "artifact:stale",
            ArtifactError::RebuildMismatch { .. } => "artifact:rebuildMismatch",
            ArtifactError::ReadOnly => "store:readOnly",
            ArtifactError::Fs(e) => e.code(),
            ArtifactError::Projection(e) => e.code(),
        }
    }
}

impl fmt::Display for ArtifactError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.code();
        match self {
            ArtifactError::Missing { tenant } => write!(f, "{code}: no index artifact for {tenant}: rebuild it"),
            ArtifactError::Corrupt { tenant, detail } => {
                write!(f, "{code}: the index artifact of {tenant} failed authentication ({detail}): delete and rebuild it")
            }
            ArtifactError::Stale { tenant, artifact_through_seq, projection_through_seq } => {
                write!(f, "{code}: the index artifact of {tenant} covers seq {artifact_through_seq}, the projection {projection_through_seq}: rebuild it")
            }
            ArtifactError::RebuildMismatch { tenant } => write!(f, "{code}: the rebuilt artifact of {tenant} does not read back as built"),
            ArtifactError::ReadOnly => write!(f, "{}", resilience::ReadOnly),
            ArtifactError::Fs(e) => write!(f, "{e}"),
            ArtifactError::Projection(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ArtifactError {}

impl From<FsError> for ArtifactError {
    fn from(e: FsError) -> Self {
        ArtifactError::Fs(e)
    }
}

impl From<ProjectionError> for ArtifactError {
    fn from(e: ProjectionError) -> Self {
        ArtifactError::Projection(e)
    }
}

impl From<resilience::CheckError> for ArtifactError {
    fn from(e: resilience::CheckError) -> Self {
        match e {
            resilience::CheckError::ReadOnly(_) => ArtifactError::ReadOnly,
            resilience::CheckError::Store(s) => ArtifactError::Projection(s.into()),
        }
    }
}

/// The key artifacts are sealed under, derived from the device's identity key, so that one key
/// is never used for two purposes.
pub fn artifact_key(identity: &Key) -> Key {
    let digest = Sha256::digest(crypto::framed(&[b"drill-artifact-key-v1", identity.as_bytes()]));
    Key::from_bytes(digest.into())
}

/// The file of `tenant`'s artifact (the tenant hex-encoded, so any name is a safe file name).
pub fn file_name(tenant: &str) -> String {
    format!("{DIR}{}.idx", hex::encode(tenant))
}

fn aad(tenant: &str) -> Vec<u8> {
    crypto::framed(&[b"drill-artifact-v1", tenant.as_bytes()])
}

/// Builds `tenant`'s index from the projection as it is now.
pub fn build(c: &Connection, engine: &Engine, tenant: &str) -> Result<Index, ArtifactError> {
    let mut entries = Vec::new();
    let mut by_last_kind: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in engine.rows(c, SOURCE, tenant)? {
        let [aggregate, events, last_seq, last_kind, digest] = &row[..] else {
            return Err(ArtifactError::Projection(crate::error::StoreError::Invalid { detail: "aggregate_state row".into() }.into()));
        };
        let number = |v: &str| v.parse::<u64>().map_err(|_| crate::error::StoreError::Invalid { detail: format!("aggregate_state value {v}") });
        by_last_kind.entry(last_kind.clone()).or_default().push(aggregate.clone());
        entries.push(Entry {
            aggregate: aggregate.clone(),
            events: number(events).map_err(ProjectionError::from)?,
            last_seq: number(last_seq).map_err(ProjectionError::from)?,
            last_kind: last_kind.clone(),
            digest: digest.clone(),
        });
    }
    Ok(Index { tenant: tenant.into(), through_seq: engine.cursor(c, SOURCE, tenant)?, entries, by_last_kind })
}

/// Seals `index` and publishes it whole (temp file, sync, rename, directory sync).
fn write(fs: &dyn FileSystem, key: &Key, index: &Index, rng: &mut dyn RngCore) -> Result<(), ArtifactError> {
    let plain = serde_json::to_vec(index).expect("an index serializes");
    let nonce = crypto::nonce_from(rng);
    let mut blob = MAGIC.to_vec();
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(&crypto::seal(key, &nonce, &aad(&index.tenant), &plain));
    fs::publish(fs, &file_name(&index.tenant), &blob)?;
    Ok(())
}

/// Loads and authenticates `tenant`'s artifact.
pub fn load(fs: &dyn FileSystem, key: &Key, tenant: &str) -> Result<Index, ArtifactError> {
    let blob = match fs.read(&file_name(tenant)) {
        Ok(b) => b,
        Err(FsError::NotFound { .. }) => return Err(ArtifactError::Missing { tenant: tenant.into() }),
        Err(e) => return Err(e.into()),
    };
    let corrupt = |detail: &str| ArtifactError::Corrupt { tenant: tenant.into(), detail: detail.into() };
    if blob.len() < MAGIC.len() + NONCE_BYTES || &blob[..MAGIC.len()] != MAGIC {
        return Err(corrupt("not an artifact"));
    }
    let (nonce, sealed) = blob[MAGIC.len()..].split_at(NONCE_BYTES);
    let nonce = crypto::nonce_from_slice(nonce).map_err(|e| corrupt(e.code()))?;
    let plain = crypto::open(key, &nonce, &aad(tenant), sealed).map_err(|e| corrupt(e.code()))?;
    let index: Index = serde_json::from_slice(&plain).map_err(|_| corrupt("authenticated but unreadable"))?;
    if index.tenant != tenant {
        return Err(corrupt("another tenant's index"));
    }
    Ok(index)
}

/// Builds and writes `tenant`'s artifact from the projection. A command.
pub fn refresh(c: &Connection, fs: &dyn FileSystem, engine: &Engine, key: &Key, tenant: &str, rng: &mut dyn RngCore) -> Result<Index, ArtifactError> {
    resilience::check_write(c, Write::Command)?;
    let index = build(c, engine, tenant)?;
    write(fs, key, &index, rng)?;
    Ok(index)
}

/// The operator's recovery: deletes `tenant`'s artifact, rebuilds it from the projection, and
/// checks that it reads back equal to a fresh build. Allowed in every mode.
pub fn rebuild(c: &Connection, fs: &dyn FileSystem, engine: &Engine, key: &Key, tenant: &str, rng: &mut dyn RngCore) -> Result<Index, ArtifactError> {
    resilience::check_write(c, Write::Recovery)?;
    remove(fs, tenant)?;
    let index = build(c, engine, tenant)?;
    write(fs, key, &index, rng)?;
    let back = load(fs, key, tenant)?;
    if back != index || back != build(c, engine, tenant)? {
        return Err(ArtifactError::RebuildMismatch { tenant: tenant.into() });
    }
    Ok(index)
}

/// Deletes `tenant`'s artifact durably (nothing to do when there is none).
pub fn remove(fs: &dyn FileSystem, tenant: &str) -> Result<(), ArtifactError> {
    match fs.remove(&file_name(tenant)) {
        Ok(()) => Ok(fs.sync_dir()?),
        Err(FsError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Checks `tenant`'s artifact: it must open and equal a fresh build of the projection.
pub fn check(c: &Connection, fs: &dyn FileSystem, engine: &Engine, key: &Key, tenant: &str) -> Result<Index, ArtifactError> {
    let index = load(fs, key, tenant)?;
    let fresh = build(c, engine, tenant)?;
    if index != fresh {
        return Err(ArtifactError::Stale { tenant: tenant.into(), artifact_through_seq: index.through_seq, projection_through_seq: fresh.through_seq });
    }
    Ok(index)
}

/// What [`load_or_rebuild`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub index: Index,
    /// The problem found (missing, corrupt or stale) that made it rebuild; `None` when the
    /// artifact was good.
    pub found: Option<ArtifactError>,
}

/// Uses `tenant`'s artifact when it opens and is current; otherwise reports why, deletes it and
/// rebuilds it (runbook 000's recovery).
pub fn load_or_rebuild(
    c: &Connection,
    fs: &dyn FileSystem,
    engine: &Engine,
    key: &Key,
    tenant: &str,
    rng: &mut dyn RngCore,
) -> Result<Recovered, ArtifactError> {
    match check(c, fs, engine, key, tenant) {
        Ok(index) => Ok(Recovered { index, found: None }),
        Err(e @ (ArtifactError::Missing { .. } | ArtifactError::Corrupt { .. } | ArtifactError::Stale { .. })) => {
            Ok(Recovered { index: rebuild(c, fs, engine, key, tenant, rng)?, found: Some(e) })
        }
        Err(e) => Err(e),
    }
}

/// The tenants that have an artifact file, in order.
pub fn tenants(fs: &dyn FileSystem) -> Result<Vec<String>, ArtifactError> {
    let mut out = Vec::new();
    for name in fs.list(DIR)? {
        let stem = name.strip_prefix(DIR).and_then(|n| n.strip_suffix(".idx"));
        if let Some(t) = stem.and_then(|h| hex::decode(h).ok()).and_then(|b| String::from_utf8(b).ok()) {
            out.push(t);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::StdFs;
    use crate::projections::resilience::Mode;
    use crate::projections::SealedEvent;
    use crate::store;
    use rand_chacha::rand_core::SeedableRng;

    struct Device {
        _dir: tempfile::TempDir,
        fs: StdFs,
        c: Connection,
        engine: Engine,
        keys: BTreeMap<String, Key>,
        events: Vec<SealedEvent>,
        rng: rand_chacha::ChaCha8Rng,
        key: Key,
    }

    fn device() -> Device {
        let dir = tempfile::tempdir().unwrap();
        let fs = StdFs::new(dir.path());
        let c = store::open(&fs.db_path("d.db")).unwrap();
        let engine = Engine::builtin();
        engine.install(&c).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let key = artifact_key(&Key::generate(&mut rng));
        Device { _dir: dir, fs, c, engine, keys: BTreeMap::new(), events: Vec::new(), rng, key }
    }

    impl Device {
        fn write_events(&mut self, n: usize) {
            for _ in 0..n {
                let i = self.events.len();
                let tenant = ["globex", "acme", "acme"][i % 3];
                let aggregate = format!("{tenant}-order-{}", i % 4);
                let kind = ["created", "updated", "closed"][i % 3];
                let key = self.keys.entry(aggregate.clone()).or_insert_with(|| Key::generate(&mut self.rng)).clone();
                let nonce = crypto::nonce_from(&mut self.rng);
                let ciphertext = crypto::seal_payload(&key, &nonce, tenant, &aggregate, kind, format!("secret payload {i}").as_bytes());
                let seq = i as u64 + 1;
                self.events.push(SealedEvent { seq, tenant: tenant.into(), aggregate, kind: kind.into(), ts_ms: seq as i64, nonce, ciphertext });
            }
            self.engine.apply(&self.c, &self.events, &self.keys).unwrap();
        }

        fn refresh(&mut self, tenant: &str) -> Index {
            refresh(&self.c, &self.fs, &self.engine, &self.key, tenant, &mut self.rng).unwrap()
        }

        fn load_or_rebuild(&mut self, tenant: &str) -> Recovered {
            load_or_rebuild(&self.c, &self.fs, &self.engine, &self.key, tenant, &mut self.rng).unwrap()
        }
    }

    #[test]
    fn an_artifact_round_trips_and_holds_nothing_in_the_clear() {
        let mut d = device();
        d.write_events(12);
        let index = d.refresh("acme");
        assert_eq!(index.entries.len(), 4);
        assert_eq!(index.through_seq, 12);
        assert_eq!(index.by_last_kind.values().map(Vec::len).sum::<usize>(), 4);
        assert_eq!(load(&d.fs, &d.key, "acme").unwrap(), index);
        assert_eq!(check(&d.c, &d.fs, &d.engine, &d.key, "acme").unwrap(), index);
        let blob = d.fs.read(&file_name("acme")).unwrap();
        for needle in [&b"acme-order"[..], b"created", b"secret", index.entries[0].digest.as_bytes()] {
            assert!(!blob.windows(needle.len()).any(|w| w == needle));
        }
        assert_eq!(tenants(&d.fs).unwrap(), vec!["acme".to_string()]);
    }

    #[test]
    fn every_corruption_is_detected_reported_deleted_and_rebuilt() {
        let mut d = device();
        d.write_events(9);
        let good = d.refresh("acme");
        let name = file_name("acme");
        let blob = d.fs.read(&name).unwrap();
        let mut corrupted: Vec<Vec<u8>> = (0..blob.len())
            .step_by(7)
            .map(|i| {
                let mut b = blob.clone();
                b[i] ^= 0x20;
                b
            })
            .collect();
        corrupted.push(blob[..blob.len() / 2].to_vec());
        corrupted.push(Vec::new());
        for bad in corrupted {
            d.fs.write_all(&name, &bad).unwrap();
            assert_eq!(load(&d.fs, &d.key, "acme").unwrap_err().code(), "artifact:corrupt");
            let r = d.load_or_rebuild("acme");
            assert_eq!(r.found.map(|e| e.code()), Some("artifact:corrupt"));
            assert_eq!(r.index, good);
            assert_eq!(load(&d.fs, &d.key, "acme").unwrap(), build(&d.c, &d.engine, "acme").unwrap());
        }
        assert_eq!(d.load_or_rebuild("acme").found, None);
    }

    #[test]
    fn a_moved_artifact_or_another_key_is_corrupt_and_a_missing_one_is_rebuilt() {
        let mut d = device();
        d.write_events(9);
        d.refresh("acme");
        d.fs.write_all(&file_name("globex"), &d.fs.read(&file_name("acme")).unwrap()).unwrap();
        assert_eq!(load(&d.fs, &d.key, "globex").unwrap_err().code(), "artifact:corrupt");
        let other = artifact_key(&Key::generate(&mut d.rng));
        assert_eq!(load(&d.fs, &other, "acme").unwrap_err().code(), "artifact:corrupt");
        remove(&d.fs, "acme").unwrap();
        remove(&d.fs, "acme").unwrap();
        assert_eq!(load(&d.fs, &d.key, "acme").unwrap_err(), ArtifactError::Missing { tenant: "acme".into() });
        let r = d.load_or_rebuild("acme");
        assert_eq!(r.found.map(|e| e.code()), Some("artifact:missing"));
        assert_eq!(r.index, build(&d.c, &d.engine, "acme").unwrap());
    }

    #[test]
    fn a_publish_cut_short_leaves_the_old_artifact_in_use() {
        let mut d = device();
        d.write_events(6);
        let old = d.refresh("acme");
        // A crash after the temp file was written, before the rename: garbage under the temp name.
        d.fs.write_all(&format!("{}.tmp", file_name("acme")), b"half an artifact").unwrap();
        assert_eq!(tenants(&d.fs).unwrap(), vec!["acme".to_string()]);
        assert_eq!(load(&d.fs, &d.key, "acme").unwrap(), old);
        assert_eq!(d.refresh("acme"), old, "the next publish replaces the temp file");
        assert_eq!(d.fs.list(DIR).unwrap(), vec![file_name("acme")]);
    }

    #[test]
    fn an_artifact_behind_the_projection_is_stale_until_rebuilt() {
        let mut d = device();
        d.write_events(6);
        d.refresh("acme");
        d.write_events(6);
        let e = check(&d.c, &d.fs, &d.engine, &d.key, "acme").unwrap_err();
        assert_eq!(e, ArtifactError::Stale { tenant: "acme".into(), artifact_through_seq: 6, projection_through_seq: 12 });
        let r = d.load_or_rebuild("acme");
        assert_eq!(r.found.map(|e| e.code()), Some("artifact:stale"));
        assert_eq!(r.index.through_seq, 12);
    }

    #[test]
    fn read_only_refuses_a_refresh_and_allows_the_rebuild() {
        let mut d = device();
        d.write_events(6);
        d.refresh("acme");
        let before = d.fs.read(&file_name("acme")).unwrap();
        resilience::set_mode(&d.c, Mode::ReadOnly, &[]).unwrap();
        assert_eq!(refresh(&d.c, &d.fs, &d.engine, &d.key, "acme", &mut d.rng), Err(ArtifactError::ReadOnly));
        assert_eq!(d.fs.read(&file_name("acme")).unwrap(), before);
        let rebuilt = rebuild(&d.c, &d.fs, &d.engine, &d.key, "acme", &mut d.rng).unwrap();
        assert_eq!(rebuilt, build(&d.c, &d.engine, "acme").unwrap());
    }
}

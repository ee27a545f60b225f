//! The diagnostics export (runbook 000's open question: "a single export diagnostics flow that
//! is safe-by-construction"): a JSON bundle of counts, chain-head hashes, modes, health,
//! projection cursors, key ids and recent error codes.
//!
//! Safe by construction: the bundle is built only from typed, non-secret fields, and no field
//! can hold a payload or a key.
//!
//! - Numbers are counts, seqs and times.
//! - Hashes are [`Hash`]es: 32 bytes, shown in hex (chain heads are SHA-256 over ciphertext).
//! - Errors and skip reasons are [`Code`]s, made only from `&'static str`: the stable
//!   `stage:code` strings of the stack's error types, never their messages (a message may
//!   quote a value).
//! - Projection names are the engine's own `&'static str` names.
//! - Names the database stores in the clear beside every event (tenant and aggregate ids) and
//!   the key store's ids (a random store id, the identity's key fingerprint) are identifiers.
//!
//! Nothing reads the `payload` column or unlocks a key. [`check_bundle`] then proves it on
//! every bundle, whatever the construction: it scans the bytes for each secret the caller
//! holds (raw keys, plaintext payloads) in every form a bundle could carry it.
//! [`export_checked`] does both; a drill calls it.
//!
//! Exporting reads only: it creates no table and changes nothing, so it runs in READ_ONLY.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use rusqlite::Connection;
use serde::Serialize;

use crate::clock::Clock;
use crate::error::StoreError;
use crate::fs::FileSystem;
use crate::keys::KeyStore;
use crate::projections::health::{self, EventStoreStatus, Health};
use crate::projections::resilience::{self, Mode};
use crate::projections::Engine;
use crate::store;

/// The bundle's format name.
pub const FORMAT: &str = "drill-diagnostics-v1";
/// Secrets shorter than this cannot be told apart from ordinary bundle text (a two-byte
/// payload appears in any hex hash); [`check_bundle`] counts them as not checked.
pub const SECRET_BYTES_MIN: usize = 8;

/// A stable error or reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Code(&'static str);

impl Code {
    pub fn new(code: &'static str) -> Code {
        Code(code)
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }
}

/// A 32-byte hash, shown in hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hash([u8; 32]);

impl Hash {
    /// A hash as stored; anything but 32 bytes is not a hash and gives `None`.
    pub fn from_slice(bytes: &[u8]) -> Option<Hash> {
        bytes.try_into().ok().map(Hash)
    }
}

impl Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

/// One recent error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RecentError {
    pub at_ms: i64,
    pub code: Code,
}

/// The device's recent error codes, bounded: the oldest go first, and are counted.
#[derive(Debug, Clone)]
pub struct ErrorLog {
    capacity: usize,
    entries: VecDeque<RecentError>,
    dropped: u64,
}

impl ErrorLog {
    pub fn new(capacity: usize) -> ErrorLog {
        assert!(capacity > 0, "an error log keeps at least one entry");
        ErrorLog { capacity, entries: VecDeque::new(), dropped: 0 }
    }

    /// Records an error's stable code (`e.code()`), at the node clock's time.
    pub fn record(&mut self, clock: &dyn Clock, code: &'static str) {
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
            self.dropped += 1;
        }
        self.entries.push_back(RecentError { at_ms: clock.now_unix_ms(), code: Code(code) });
    }

    pub fn entries(&self) -> impl Iterator<Item = &RecentError> {
        self.entries.iter()
    }

    /// Errors pushed out by newer ones.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// An aggregate a projection skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub projection: &'static str,
    pub aggregate: String,
    pub reason: Code,
    pub first_seq: u64,
}

/// One tenant's counts, chain head and cursors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantDiagnostics {
    pub tenant: String,
    pub events: u64,
    pub last_seq: u64,
    /// The hash of the tenant's last stored event (or the chain's anchor, or genesis).
    pub chain_head: Option<Hash>,
    /// Each projection's last folded seq.
    pub cursors: BTreeMap<&'static str, u64>,
    pub incomplete: Vec<Skipped>,
}

/// The key store, by ids and counts only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyDiagnostics {
    pub store_id: String,
    /// `id-` and the identity key's fingerprint.
    pub identity_id: String,
    pub unlocked: bool,
    pub aggregate_keys: u64,
    pub lost_aggregates: u64,
    pub vault_initialized: bool,
}

/// The bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bundle {
    pub format: &'static str,
    pub created_ms: i64,
    /// The recorded schema version (`None`: not a number).
    pub schema_version: Option<u32>,
    pub migration_in_progress: bool,
    pub mode: &'static str,
    pub disabled_projections: Vec<&'static str>,
    pub health: Health,
    pub tenants: Vec<TenantDiagnostics>,
    pub snapshots: u64,
    /// Saga steps by state.
    pub sagas: BTreeMap<&'static str, u64>,
    /// The key store the database is bound to (half-restore detection).
    pub bound_key_store_id: Option<String>,
    pub keys: Option<KeyDiagnostics>,
    /// Tenants with an index artifact file.
    pub artifacts: Option<u64>,
    pub recent_errors: Vec<RecentError>,
    pub recent_errors_dropped: u64,
}

impl Bundle {
    /// The bundle as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a bundle serializes")
    }
}

/// Where a bundle's contents come from.
pub struct Sources<'a> {
    /// The device's (or server's) database.
    pub db: &'a Connection,
    pub engine: &'a Engine,
    pub keys: Option<&'a KeyStore>,
    /// The files beside the database (index artifacts).
    pub files: Option<&'a dyn FileSystem>,
    pub errors: &'a ErrorLog,
    /// How the event store answered its last probe ([`health::probe`]).
    pub event_store: EventStoreStatus,
}

/// Why an export failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiagnosticsError {
    /// The bundle holds secret number `secret` (in the caller's list) in `form`, at byte
    /// `offset`: it must not leave the device.
    SecretFound {
        secret: usize,
        form: &'static str,
        offset: usize,
    },
    Store(StoreError),
}

impl DiagnosticsError {
    /// A short stable code for traces.
    pub fn code(&self) -> &'static str {
        match self {
            DiagnosticsError::SecretFound { .. } => "diagnostics:secretFound",
            DiagnosticsError::Store(e) => e.code(),
        }
    }
}

impl fmt::Display for DiagnosticsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiagnosticsError::SecretFound { secret, form, offset } => {
                write!(f, "diagnostics:secretFound: secret {secret} appears ({form}) at byte {offset} of the bundle: it was not exported")
            }
            DiagnosticsError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for DiagnosticsError {}

impl From<StoreError> for DiagnosticsError {
    fn from(e: StoreError) -> Self {
        DiagnosticsError::Store(e)
    }
}

impl From<rusqlite::Error> for DiagnosticsError {
    fn from(e: rusqlite::Error) -> Self {
        DiagnosticsError::Store(e.into())
    }
}

/// The skip reasons the engine records, as codes (any other text is not exported).
const REASONS: [&str; 3] = ["keys:aggregateKeyMissing", "keys:payloadsUnrecoverable", "crypto:tampered"];

fn has_table(c: &Connection, name: &str) -> Result<bool, StoreError> {
    Ok(c.query_row("SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1", [name], |r| r.get(0))?)
}

fn static_name(engine: &Engine, name: &str) -> Option<&'static str> {
    engine.names().into_iter().find(|n| *n == name)
}

/// Builds the bundle. Reads only.
pub fn export(s: &Sources<'_>, clock: &dyn Clock) -> Result<Bundle, DiagnosticsError> {
    let c = s.db;
    let has_meta = has_table(c, "meta")?;
    let (mode, disabled) = if has_meta { (resilience::mode(c)?, resilience::disabled(c)?) } else { (Mode::Normal, Vec::new()) };
    let schema_version = match has_meta.then(|| store::meta_get(c, crate::migrate::VERSION_KEY)).transpose()?.flatten() {
        None => Some(1),
        Some(v) => v.parse().ok(),
    };
    let unhealthy = if has_table(c, "proj_unhealthy")? {
        let mut st = c.prepare("SELECT projection FROM proj_unhealthy ORDER BY projection")?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().filter_map(|p| static_name(s.engine, &p).map(str::to_string)).collect()
    } else {
        Vec::new()
    };
    let keys = match s.keys {
        None => None,
        Some(ks) => Some(KeyDiagnostics {
            store_id: ks.store_id().to_string(),
            identity_id: ks.identity_id().to_string(),
            unlocked: ks.is_unlocked(),
            aggregate_keys: ks.aggregates().map_err(key_store)?.len() as u64,
            lost_aggregates: ks.lost_aggregates().map_err(key_store)?.len() as u64,
            vault_initialized: ks.vault_initialized().map_err(key_store)?,
        }),
    };
    let artifacts = match s.files {
        None => None,
        Some(fs) => Some(crate::artifacts::tenants(fs).map_err(|e| StoreError::Io { detail: e.code().into() })?.len() as u64),
    };
    Ok(Bundle {
        format: FORMAT,
        created_ms: clock.now_unix_ms(),
        schema_version,
        migration_in_progress: has_table(c, "schema_migration")? && c.query_row("SELECT COUNT(*) > 0 FROM schema_migration", [], |r| r.get(0))?,
        mode: mode.as_str(),
        disabled_projections: disabled.iter().filter_map(|p| static_name(s.engine, p)).collect(),
        health: health::status(mode, unhealthy, s.event_store),
        tenants: tenants(c, s.engine)?,
        snapshots: if has_table(c, "proj_snapshots")? { crate::projections::snapshot::count(c)? } else { 0 },
        sagas: sagas(c)?,
        bound_key_store_id: if has_meta { store::meta_get(c, "keys/store_id")? } else { None },
        keys,
        artifacts,
        recent_errors: s.errors.entries().copied().collect(),
        recent_errors_dropped: s.errors.dropped(),
    })
}

fn key_store(e: crate::keys::KeyError) -> StoreError {
    match e {
        crate::keys::KeyError::Store(s) => s,
        other => StoreError::Invalid { detail: other.code().into() },
    }
}

fn tenants(c: &Connection, engine: &Engine) -> Result<Vec<TenantDiagnostics>, DiagnosticsError> {
    let mut counts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    if has_table(c, "events")? {
        let mut st = c.prepare("SELECT tenant, COUNT(*), MAX(seq) FROM events GROUP BY tenant ORDER BY tenant")?;
        for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?, r.get::<_, u64>(2)?)))? {
            let (t, n, last) = row?;
            counts.insert(t, (n, last));
        }
    }
    let installed = has_table(c, "proj_cursor")?;
    if installed {
        let mut st = c.prepare("SELECT DISTINCT tenant FROM proj_cursor ORDER BY tenant")?;
        for t in st.query_map([], |r| r.get::<_, String>(0))? {
            counts.entry(t?).or_insert((0, 0));
        }
    }
    let mut out = Vec::new();
    for (tenant, (events, last_seq)) in counts {
        let chain_head = if has_table(c, "events")? { Hash::from_slice(&store::chain_head(c, &tenant)?) } else { None };
        let mut cursors = BTreeMap::new();
        let mut incomplete = Vec::new();
        if installed {
            for p in engine.names() {
                cursors.insert(p, engine.cursor(c, p, &tenant).map_err(projection)?);
            }
            for i in engine.incomplete(c, &tenant).map_err(projection)? {
                let Some(p) = static_name(engine, &i.projection) else { continue };
                let reason = REASONS.into_iter().find(|r| *r == i.reason).unwrap_or("unknown");
                incomplete.push(Skipped { projection: p, aggregate: i.aggregate, reason: Code(reason), first_seq: i.first_seq });
            }
        }
        out.push(TenantDiagnostics { tenant, events, last_seq, chain_head, cursors, incomplete });
    }
    Ok(out)
}

fn projection(e: crate::projections::ProjectionError) -> DiagnosticsError {
    match e {
        crate::projections::ProjectionError::Store(s) => DiagnosticsError::Store(s),
        other => DiagnosticsError::Store(StoreError::Invalid { detail: other.code().into() }),
    }
}

fn sagas(c: &Connection) -> Result<BTreeMap<&'static str, u64>, DiagnosticsError> {
    let mut out = BTreeMap::new();
    if has_table(c, "saga_state")? {
        for step in crate::saga::steps(c)? {
            *out.entry(step.state.as_str()).or_default() += 1;
        }
    }
    Ok(out)
}

/// What [`check_bundle`] scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub secrets: usize,
    /// Secrets under [`SECRET_BYTES_MIN`] bytes, not scanned for.
    pub too_short: usize,
}

/// The forms a secret could take in a JSON bundle.
fn forms(secret: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let mut out = vec![
        ("raw", secret.to_vec()),
        ("hex", hex::encode(secret).into_bytes()),
        ("HEX", hex::encode_upper(secret).into_bytes()),
        ("byte array", serde_json::to_vec(secret).expect("bytes serialize")),
    ];
    if let Ok(text) = std::str::from_utf8(secret) {
        let quoted = serde_json::to_string(text).expect("text serializes");
        out.push(("json string", quoted.as_bytes()[1..quoted.len() - 1].to_vec()));
    }
    // The byte array without its brackets, as it would sit inside a longer array.
    let array = serde_json::to_vec(secret).expect("bytes serialize");
    out.push(("byte array items", array[1..array.len() - 1].to_vec()));
    out
}

/// Proves a bundle holds none of `secrets` (raw keys, plaintext payloads): scans its bytes for
/// each one raw, in hex (either case), as JSON string content and as a JSON byte array.
pub fn check_bundle(bundle: &[u8], secrets: &[&[u8]]) -> Result<Checked, DiagnosticsError> {
    let mut too_short = 0;
    for (i, secret) in secrets.iter().enumerate() {
        if secret.len() < SECRET_BYTES_MIN {
            too_short += 1;
            continue;
        }
        for (form, needle) in forms(secret) {
            if let Some(offset) = bundle.windows(needle.len()).position(|w| w == needle.as_slice()) {
                return Err(DiagnosticsError::SecretFound { secret: i, form, offset });
            }
        }
    }
    Ok(Checked { secrets: secrets.len(), too_short })
}

/// Builds the bundle, checks it against `secrets`, and returns its bytes only if it passes:
/// the operator's "export diagnostics".
pub fn export_checked(s: &Sources<'_>, clock: &dyn Clock, secrets: &[&[u8]]) -> Result<Vec<u8>, DiagnosticsError> {
    let bytes = export(s, clock)?.to_json();
    check_bundle(&bytes, secrets)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use rand_chacha::rand_core::SeedableRng;

    use super::*;
    use crate::clock::FixedClock;
    use crate::crypto::{self, Key};
    use crate::fs::StdFs;
    use crate::keys::KdfParams;
    use crate::projections::SealedEvent;
    use crate::saga::{AchievementSaga, Receiver};
    use crate::store::EventRow;

    const CLOCK: FixedClock = FixedClock(42_000);

    struct Device {
        _dir: tempfile::TempDir,
        fs: StdFs,
        c: Connection,
        engine: Engine,
        ks: KeyStore,
        errors: ErrorLog,
        /// Every plaintext payload and every raw key the device holds.
        secrets: Vec<Vec<u8>>,
    }

    /// A device with events of two tenants (one aggregate's key missing), projections, a
    /// snapshot, a saga, an artifact and a few errors.
    fn device() -> Device {
        let dir = tempfile::tempdir().unwrap();
        let fs = StdFs::new(dir.path());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let c = store::open(&fs.db_path("d.db")).unwrap();
        c.execute_batch(store::EVENTS_SCHEMA).unwrap();
        let engine = Engine::builtin();
        engine.install(&c).unwrap();
        let mut ks = KeyStore::create(&fs.db_path("keys.db"), "correct horse", KdfParams::sim(), &mut rng).unwrap();
        crate::keys::binding::bind(&c, Some(&ks), &mut rng).unwrap();
        let mut secrets = vec![ks.identity_key().unwrap().as_bytes().to_vec()];
        let mut sealed = Vec::new();
        let mut prev: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for i in 0..12u64 {
            let tenant = ["acme", "globex"][i as usize % 2];
            let aggregate = format!("{tenant}-{}", i % 3);
            let key = ks.ensure_aggregate_key(&aggregate, &mut rng).unwrap();
            let payload = format!("{{\"customer\":\"Jane Roe {i}\",\"card\":\"4111-1111-{i:04}\"}}");
            let nonce = crypto::nonce_from(&mut rng);
            let ct = crypto::seal_payload(&key, &nonce, tenant, &aggregate, "placed", payload.as_bytes());
            let p = prev.entry(tenant.to_string()).or_insert_with(|| crate::chain::GENESIS.to_vec());
            let hash = crate::chain::event_hash(p, "placed", tenant, &ct).to_vec();
            let row = EventRow {
                seq: i + 1,
                op_id: format!("op-{i}"),
                tenant: tenant.into(),
                aggregate: aggregate.clone(),
                kind: "placed".into(),
                replica: "r1".into(),
                write_id: i,
                payload: ct.clone(),
                prev_hash: p.clone(),
                hash: hash.clone(),
            };
            store::insert_event(&c, &row).unwrap();
            *p = hash;
            sealed.push(SealedEvent { seq: i + 1, tenant: tenant.into(), aggregate, kind: "placed".into(), ts_ms: i as i64, nonce, ciphertext: ct });
            secrets.push(payload.into_bytes());
        }
        for a in ks.aggregates().unwrap() {
            secrets.push(ks.aggregate_key(&a).unwrap().as_bytes().to_vec());
        }
        // One aggregate's key is missing on this device: its events are skipped, reported.
        let mut ring: BTreeMap<String, Key> = ks.aggregates().unwrap().into_iter().map(|a| (a.clone(), ks.aggregate_key(&a).unwrap())).collect();
        ring.remove("globex-1");
        engine.apply(&c, &sealed, &ring).unwrap();
        engine.snapshot(&c, "acme", 1).unwrap();
        let mut receiver = Receiver::open(store::open(&fs.db_path("r.db")).unwrap()).unwrap();
        crate::saga::reconcile(&c, &AchievementSaga::new(3), &crate::saga::tenant_counts(&c).unwrap(), &mut receiver, &CLOCK).unwrap();
        let artifact_key = crate::artifacts::artifact_key(&ks.identity_key().unwrap());
        secrets.push(artifact_key.as_bytes().to_vec());
        crate::artifacts::refresh(&c, &fs, &engine, &artifact_key, "acme", &mut rng).unwrap();
        let mut errors = ErrorLog::new(4);
        errors.record(&CLOCK, crate::keys::KeyError::AggregateKeyMissing { aggregate: "globex-1".into() }.code());
        errors.record(&CLOCK, "artifact:corrupt");
        Device { _dir: dir, fs, c, engine, ks, errors, secrets }
    }

    impl Device {
        fn sources(&self) -> Sources<'_> {
            Sources {
                db: &self.c,
                engine: &self.engine,
                keys: Some(&self.ks),
                files: Some(&self.fs),
                errors: &self.errors,
                event_store: EventStoreStatus::Writable,
            }
        }

        fn secrets(&self) -> Vec<&[u8]> {
            self.secrets.iter().map(Vec::as_slice).collect()
        }
    }

    #[test]
    fn a_bundle_has_the_counts_hashes_and_modes_and_no_secret() {
        let d = device();
        let bundle = export(&d.sources(), &CLOCK).unwrap();
        assert_eq!((bundle.format, bundle.created_ms, bundle.schema_version, bundle.mode), (FORMAT, 42_000, Some(1), "NORMAL"));
        assert_eq!(bundle.tenants.iter().map(|t| (t.tenant.as_str(), t.events, t.last_seq)).collect::<Vec<_>>(), vec![("acme", 6, 11), ("globex", 6, 12)]);
        let head = hex::encode(store::chain_head(&d.c, "acme").unwrap());
        assert_eq!(serde_json::to_value(bundle.tenants[0].chain_head).unwrap(), serde_json::Value::String(head));
        assert_eq!(bundle.tenants[0].cursors.get("aggregate_state"), Some(&11));
        let skipped = &bundle.tenants[1].incomplete;
        assert_eq!(skipped.len(), 2, "globex-1 in both projections");
        assert_eq!((skipped[0].aggregate.as_str(), skipped[0].reason.as_str()), ("globex-1", "keys:aggregateKeyMissing"));
        assert_eq!(bundle.snapshots, 2);
        assert_eq!(bundle.sagas.get("done"), Some(&2), "both tenants counted at least 3 events");
        let keys = bundle.keys.as_ref().unwrap();
        assert_eq!((keys.aggregate_keys, keys.unlocked), (6, true));
        assert_eq!(bundle.bound_key_store_id.as_deref(), Some(d.ks.store_id()));
        assert_eq!(bundle.artifacts, Some(1));
        assert!(bundle.health.is_healthy);
        assert_eq!(bundle.recent_errors.iter().map(|e| e.code.as_str()).collect::<Vec<_>>(), vec!["keys:aggregateKeyMissing", "artifact:corrupt"]);
        let bytes = export_checked(&d.sources(), &CLOCK, &d.secrets()).unwrap();
        assert_eq!(bytes, bundle.to_json());
        assert_eq!(check_bundle(&bytes, &d.secrets()).unwrap(), Checked { secrets: d.secrets.len(), too_short: 0 });
    }

    #[test]
    fn the_check_catches_a_planted_secret_in_every_form() {
        let d = device();
        let bytes = export(&d.sources(), &CLOCK).unwrap().to_json();
        let key = d.ks.identity_key().unwrap();
        let payload = d.secrets[1].clone();
        let plants: Vec<(Vec<u8>, usize, &str)> = vec![
            (key.as_bytes().to_vec(), 0, "raw"),
            (hex::encode(key.as_bytes()).into_bytes(), 0, "hex"),
            (hex::encode_upper(key.as_bytes()).into_bytes(), 0, "HEX"),
            (serde_json::to_vec(&key.as_bytes().to_vec()).unwrap(), 0, "byte array"),
            (payload.clone(), 1, "raw"),
            (serde_json::to_vec(&String::from_utf8(payload.clone()).unwrap()).unwrap(), 1, "json string"),
        ];
        for (plant, secret, form) in plants {
            let mut bad = bytes.clone();
            let at = bad.len() / 2;
            bad.splice(at..at, plant);
            let e = check_bundle(&bad, &d.secrets()).unwrap_err();
            assert_eq!(e.code(), "diagnostics:secretFound");
            let DiagnosticsError::SecretFound { secret: s, form: f, .. } = e else { unreachable!() };
            assert_eq!((s, f), (secret, form));
        }
    }

    #[test]
    fn a_secret_that_reaches_a_field_is_caught_before_export() {
        // A tenant id is an identifier; if a workload ever used a payload as one, the check
        // refuses the bundle rather than exporting it.
        let d = device();
        let leaked = String::from_utf8(d.secrets[1].clone()).unwrap();
        d.engine.mark_unhealthy(&d.c, "tenant_counters", &leaked).unwrap();
        d.c.execute("INSERT INTO proj_cursor(projection, tenant, seq) VALUES ('aggregate_state', ?1, 1)", [&leaked]).unwrap();
        let e = export_checked(&d.sources(), &CLOCK, &d.secrets()).unwrap_err();
        assert!(matches!(e, DiagnosticsError::SecretFound { secret: 1, form: "json string", .. }), "{e}");
        // The unhealthy mark's detail (free text) is never exported.
        d.c.execute("DELETE FROM proj_cursor WHERE tenant = ?1", [&leaked]).unwrap();
        let bytes = export_checked(&d.sources(), &CLOCK, &d.secrets()).unwrap();
        assert!(String::from_utf8(bytes).unwrap().contains("tenant_counters"));
    }

    #[test]
    fn short_secrets_are_counted_not_scanned_and_the_log_is_bounded() {
        assert_eq!(check_bundle(b"{\"a\":\"ab\"}", &[b"ab", b"not there at all"]).unwrap(), Checked { secrets: 2, too_short: 1 });
        let mut log = ErrorLog::new(2);
        for code in ["a:1", "a:2", "a:3"] {
            log.record(&CLOCK, code);
        }
        assert_eq!(log.entries().map(|e| e.code.as_str()).collect::<Vec<_>>(), vec!["a:2", "a:3"]);
        assert_eq!(log.dropped(), 1);
    }

    #[test]
    fn exporting_changes_nothing_and_works_in_read_only_and_on_an_empty_database() {
        let d = device();
        resilience::set_mode(&d.c, Mode::ReadOnly, &[]).unwrap();
        let schema = |c: &Connection| -> Vec<String> {
            let mut st = c.prepare("SELECT sql FROM sqlite_master ORDER BY name").unwrap();
            st.query_map([], |r| r.get::<_, Option<String>>(0)).unwrap().map(|r| r.unwrap().unwrap_or_default()).collect()
        };
        let before = (schema(&d.c), d.c.total_changes());
        let bundle = export(&d.sources(), &CLOCK).unwrap();
        assert_eq!((bundle.mode, bundle.health.is_healthy), ("READ_ONLY", false));
        assert_eq!((schema(&d.c), d.c.total_changes()), before);
        let empty = Connection::open_in_memory().unwrap();
        let errors = ErrorLog::new(1);
        let s = Sources { db: &empty, engine: &d.engine, keys: None, files: None, errors: &errors, event_store: EventStoreStatus::Unreachable };
        let bundle = export(&s, &CLOCK).unwrap();
        assert!(bundle.tenants.is_empty());
        assert_eq!(schema(&empty), Vec::<String>::new(), "nothing created");
    }
}

//! The runbook drills: every drill of the registry passes and is exercised on a few seeds, its
//! recovery steps traced in the runbook's order; and every drill fails when a recovery step is
//! skipped or done wrong — a drill that cannot fail checks nothing. Swarm seeds that pick a
//! drill put it in their coverage table.

use drill_scenarios::drills;
use drill_scenarios::Profile;
use drill_scenarios::{plan_for, run, Outcome, RunReport, RunRequest, RunSource};
use serde_json::Value;

fn run_drill(id: &str, seed: u64, profile: Profile, skip: Option<&str>, wrong: Option<&str>) -> RunReport {
    let mut plan = plan_for(seed, id, profile).unwrap();
    let d = plan.drill.as_mut().unwrap();
    (d.skip, d.wrong) = (skip.map(String::from), wrong.map(String::from));
    drills::execute(&plan, None).unwrap()
}

fn kinds(r: &RunReport) -> Vec<String> {
    r.trace.iter().map(|l| serde_json::from_str::<Value>(l).unwrap()["kind"].as_str().unwrap().to_string()).collect()
}

fn steps_traced(r: &RunReport, id: &str) -> Vec<String> {
    r.trace
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["kind"] == "drill.step" && v["detail"]["drill"] == id && v["detail"]["skipped"] == false)
        .map(|v| v["detail"]["step"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_drill_passes_exercised_with_its_steps_in_order() {
    for d in drills::registry() {
        for seed in 1..=3 {
            let r = run_drill(d.id, seed, Profile::None, None, None);
            assert_eq!(r.outcome, Outcome::Pass, "{} seed {seed}: {:?}", d.id, r.violations);
            let c = r.drills[d.id];
            assert_eq!((c.runs, c.exercised, c.passed), (1, 1, 1), "{} seed {seed}", d.id);
            assert_eq!(steps_traced(&r, d.id), d.steps, "{} seed {seed}", d.id);
            assert!(r.checks.get("INV-RECOVERY").copied().unwrap_or(0) > 0, "{}: INV-RECOVERY not checked", d.id);
        }
    }
}

/// Under swarm every drill recovers in a busy world: it begins at a random moment, a bystander
/// of another tenant writes through the same server (none of its acknowledged writes may be
/// lost), and background partitions and clock faults go on while the stack recovers.
#[test]
fn every_drill_passes_exercised_in_a_busy_world() {
    let mut background = std::collections::BTreeMap::<String, u64>::new();
    for d in drills::registry() {
        for seed in 1..=3 {
            let r = run_drill(d.id, seed, Profile::Swarm, None, None);
            assert_eq!(r.outcome, Outcome::Pass, "{} seed {seed}: {:?}", d.id, r.violations);
            let c = r.drills[d.id];
            assert_eq!((c.runs, c.exercised, c.passed), (1, 1, 1), "{} seed {seed}", d.id);
            assert_eq!(steps_traced(&r, d.id), d.steps, "{} seed {seed}", d.id);
            let kinds = kinds(&r);
            assert!(kinds.iter().any(|k| k == "drill.begin") && kinds.iter().any(|k| k == "drill.bystander"), "{} seed {seed}", d.id);
            for k in ["partition", "partition.one_way"] {
                *background.entry(k.to_string()).or_default() += r.faults.get(k).copied().unwrap_or(0);
            }
        }
    }
    // Seeds 1 to 3 switch the clock faults off (the plans' test sees them on other seeds).
    assert!(background.values().all(|n| *n > 10), "partitions happen while drills recover: {background:?}");
}

#[test]
fn drill_plans_are_calm_under_none_and_busy_under_swarm() {
    use drill_scenarios::plan::drill::{BUSY_HEAL_AT_MS, BUSY_MS};
    use drill_sim::faults::Fault;
    let id = "004-6.1-database-corruption";
    let calm = plan_for(7, id, Profile::None).unwrap();
    assert!(calm.faults.is_empty() && calm.drill.as_ref().unwrap().busy.is_none());
    let busy = plan_for(7, id, Profile::Swarm).unwrap();
    assert_eq!(busy.heal_at_ms, BUSY_HEAL_AT_MS);
    let b = busy.drill.as_ref().unwrap().busy.clone().unwrap();
    assert!(b.start_ms <= BUSY_MS && !b.bystander_ms.is_empty());
    assert!(busy.faults.iter().all(|s| matches!(s.fault, Fault::Partition { .. } | Fault::ClockJump { .. } | Fault::ClockDrift { .. })));
    // Over 20 seeds the swarm knobs switch every background family on somewhere.
    let mut kinds = std::collections::BTreeSet::new();
    for seed in 1..=20 {
        kinds.extend(plan_for(seed, id, Profile::Swarm).unwrap().faults.iter().map(|s| s.fault.kind()));
    }
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), ["clock.drift", "clock.jump", "partition", "partition.one_way"]);
    let mut late = busy.clone();
    late.drill.as_mut().unwrap().busy.as_mut().unwrap().start_ms = BUSY_HEAL_AT_MS + 1;
    assert!(late.validate().unwrap_err().contains("after heal_at_ms"));
    let mut late = busy.clone();
    late.drill.as_mut().unwrap().busy.as_mut().unwrap().bystander_ms.push(BUSY_HEAL_AT_MS + 1);
    assert!(late.validate().unwrap_err().contains("bystander write"));
    // Background faults: bounded, of the kinds a drill recovers through, and only when busy.
    let partition = busy.faults.iter().position(|s| matches!(s.fault, Fault::Partition { .. })).expect("seed 7 partitions");
    let mut endless = busy.clone();
    if let Fault::Partition { ms, .. } = &mut endless.faults[partition].fault {
        *ms = u64::from(u32::MAX) + 1;
    }
    assert!(endless.validate().unwrap_err().contains("lasts past heal_at_ms"));
    let mut crash = busy.clone();
    crash.faults[0].fault = Fault::Crash { node: "server".into(), down_ms: 10, after_disk_ops: None };
    assert!(crash.validate().unwrap_err().contains("no background crash"));
    let mut calm_with_faults = calm.clone();
    (calm_with_faults.faults, calm_with_faults.heal_at_ms) = (busy.faults.clone(), busy.heal_at_ms);
    assert!(calm_with_faults.validate().unwrap_err().contains("only in a busy world"));
}

/// For each drill, recovery steps that, skipped (`S`) or done wrong (`W`), must make it fail,
/// and what must say so: each entry is found in one of the run's violations (`INVARIANT:
/// message`) — a model invariant (`INV-...:`), or the drill's own post-recovery check or runbook
/// symptom that the missing step leaves failing. Any other violation is not enough.
type Broken = (&'static str, char, &'static str, &'static [&'static str]);
const BROKEN: &[Broken] = &[
    (
        "000-sync-divergence-retention-resync",
        'S',
        "full-resync",
        &["INV-RECOVERY:", "validation failed: count and chain head equal the server's", "validation failed: the sync after the full resync succeeds"],
    ),
    ("000-sync-divergence-retention-resync", 'S', "re-run-sync", &["INV-RECOVERY:", "validation failed: count and chain head equal the server's"]),
    (
        "000-key-loss-no-backup",
        'S',
        "declare-passphrase-lost",
        &[
            "validation failed: a lost aggregate takes no event under a second key",
            "validation failed: a new aggregate gets a new key",
            "validation failed: every payload under a lost key answers keys:payloadsUnrecoverable",
            "validation failed: the device syncs after the loss",
            "validation failed: the events written under new keys reach the server and read back",
            "validation failed: the projections skip exactly the lost aggregates, as unrecoverable",
        ],
    ),
    (
        "000-key-loss-no-backup",
        'W',
        "declare-passphrase-lost",
        &[
            "validation failed: a lost aggregate takes no event under a second key",
            "validation failed: every payload under a lost key answers keys:payloadsUnrecoverable",
            "validation failed: the projections skip exactly the lost aggregates, as unrecoverable",
        ],
    ),
    (
        "000-key-loss-no-backup",
        'S',
        "rebuild-projections",
        &[
            "validation failed: the projections equal a replay with the keys held now",
            "validation failed: the projections skip exactly the lost aggregates, as unrecoverable",
        ],
    ),
    ("000-key-loss-no-backup", 'S', "write-under-new-keys", &["validation failed: the events written under new keys reach the server and read back"]),
    ("000-key-loss-no-backup", 'S', "re-run-sync", &["validation failed: the events written under new keys reach the server and read back"]),
    ("000-key-loss-missing-aggregate-keys", 'S', "restore-key-backup", &["INV-RECOVERY:", "validation failed: no aggregate is skipped any more"]),
    ("000-key-loss-missing-aggregate-keys", 'S', "unlock", &["INV-RECOVERY:", "validation failed: no aggregate is skipped any more"]),
    (
        "000-key-loss-missing-aggregate-keys",
        'S',
        "replay-projections",
        &["validation failed: no aggregate is skipped any more", "validation failed: the projections equal a replay of every event"],
    ),
    (
        "000-projection-corruption-rebuild",
        'S',
        "rebuild-trigger",
        &[
            "validation failed: every projection equals a fold of the server's events in the server's order",
            "validation failed: no projection is marked unhealthy after the rebuild",
            "validation failed: the projections equal a replay of the committed events",
        ],
    ),
    (
        "000-projection-corruption-rebuild",
        'W',
        "rebuild-trigger",
        &[
            "validation failed: every projection equals a fold of the server's events in the server's order",
            "validation failed: the projections equal a replay of the committed events",
        ],
    ),
    ("000-projection-corrupt-index-artifact", 'S', "delete-artifact", &["validation failed: the artifact opens and equals a fresh build of the projection"]),
    ("000-projection-corrupt-index-artifact", 'S', "rebuild-artifact", &["validation failed: the artifact opens and equals a fresh build of the projection"]),
    (
        "000-saga-stuck-crash-before-effect",
        'S',
        "reconcile-on-start",
        &["INV-ONCE:", "validation failed: the effects node applied the effect exactly once", "validation failed: the saga step is done"],
    ),
    ("000-saga-stuck-crash-before-effect", 'W', "reconcile-on-start", &["INV-ONCE:", "validation failed: the effects node applied the effect exactly once"]),
    ("000-saga-stuck-crash-before-done", 'S', "reconcile-on-start", &["INV-ONCE:", "validation failed: the saga step is done"]),
    (
        "000-diagnostics-export-no-secrets",
        'S',
        "export-bundle",
        &["validation failed: a bundle left the device only checked and scanned", "validation failed: the bundle names the skipped aggregates and why"],
    ),
    (
        "000-diagnostics-export-no-secrets",
        'W',
        "export-bundle",
        &[
            "INV-NO-PLAINTEXT:",
            "validation failed: a bundle left the device only checked and scanned",
            "validation failed: the bundle names the skipped aggregates and why",
            "validation failed: the bundle passes its own check against every secret the drill knows",
        ],
    ),
    ("000-diagnostics-export-no-secrets", 'S', "check-bundle", &["validation failed: a bundle left the device only checked and scanned"]),
    ("000-diagnostics-export-no-secrets", 'S', "scan-bundle", &["validation failed: a bundle left the device only checked and scanned"]),
    (
        "001-A-failed-persist",
        'S',
        "persist-only",
        &[
            "validation failed: a remediation event is linked to the original run",
            "validation failed: the run, its segments and its events are in the database",
        ],
    ),
    (
        "001-A-failed-persist",
        'S',
        "locate-result-envelope",
        &[
            "validation failed: a remediation event is linked to the original run",
            "validation failed: the run, its segments and its events are in the database",
        ],
    ),
    ("001-B-export-mid-write", 'S', "re-run-export", &["validation failed: the manifest's checksums and row counts match the database"]),
    ("001-C-import-conflict", 'S', "fresh-db-import", &["INV-RECOVERY:", "validation failed: the pointer names the validated fresh database"]),
    ("001-D-database-corruption", 'S', "replay-into-fresh-db", &["INV-RECOVERY:", "validation failed: row counts and checksums match the manifest"]),
    (
        "001-E-backend-crash-hang",
        'W',
        "fallback",
        &[
            "symptom did not appear: a backend times out and another exits on a signal",
            "validation failed: command, exit status and stderr of each attempt are captured",
            "validation failed: the job fell back to the next backend and persisted its result",
        ],
    ),
    (
        "001-F-legacy-migration-blocked",
        'S',
        "import-into-fresh-db",
        &["INV-RECOVERY:", "validation failed: counts, checksums and a run query hold on the new active database"],
    ),
    (
        "001-post-recovery-validation",
        'S',
        "re-run-export",
        &["validation failed: no orphan lock files", "validation failed: run and event counts are consistent with the manifest"],
    ),
    (
        "002-database-corruption-native",
        'S',
        "recreate-database",
        &["validation failed: count and hash equal the server's", "validation failed: the device has a working database after the recovery"],
    ),
    ("002-database-corruption-native", 'S', "sync-recovery", &["validation failed: count and hash equal the server's"]),
    ("002-sync-divergence", 'S', "forced-sync", &["INV-RECOVERY:", "validation failed: every device converged after the recovery"]),
    ("002-sync-divergence", 'W', "forced-sync", &["INV-RECOVERY:", "validation failed: every device converged after the recovery"]),
    (
        "002-token-invalid-or-expired",
        'S',
        "verify-token-endpoint",
        &[
            "INV-RECOVERY:",
            "validation failed: the device's count and chain head equal the server's",
            "validation failed: the key store holds the refreshed token",
            "validation failed: the reconnect refreshed the token and the sync went through",
            "validation failed: the token's payload names this device's identity, replica and tenant",
        ],
    ),
    (
        "002-token-invalid-or-expired",
        'S',
        "force-refresh-by-reconnect",
        &["INV-RECOVERY:", "validation failed: the device's count and chain head equal the server's"],
    ),
    ("002-missing-group-key", 'S', "request-group-key", &["INV-GROUP:", "validation failed: the member's key store holds the new epoch's key"]),
    ("002-missing-group-key", 'S', "reconnect-and-compare", &["INV-GROUP:"]),
    (
        "002-vault-key-unavailable",
        'S',
        "request-from-peers",
        &["validation failed: the member holds the authority's vault key again", "validation failed: the member recovers the vault key from the peer's share"],
    ),
    ("002-vault-key-unavailable", 'S', "recover-from-peer-share", &["validation failed: the member holds the authority's vault key again"]),
    (
        "002-backup-needs-both-files",
        'S',
        "restore-key-store",
        &["validation failed: the database and the key store are paired again", "validation failed: the device runs only with both halves of its backup"],
    ),
    ("002-backup-needs-both-files", 'S', "sync-and-converge", &["INV-RECOVERY:"]),
    ("003-2-visibility-409-retry", 'S', "advance-reconcile", &["validation failed: the identical attach succeeds once reconcile has advanced"]),
    ("003-2-deterministic-500", 'S', "advance-reconcile", &["validation failed: the identical attach succeeds once reconcile has advanced"]),
    (
        "003-3-transient-retry-backoff",
        'S',
        "wait-out-outage",
        &["validation failed: the blob reads back its bytes", "validation failed: the same payload stages under the same object key"],
    ),
    ("003-3-transient-retry-backoff", 'S', "retry-same-payload", &["validation failed: the blob reads back its bytes"]),
    (
        "003-3-no-such-key-orphan-cleanup",
        'S',
        "cleanup-orphans",
        &["validation failed: an orphan is gone from the registry (404), every other blob reads back"],
    ),
    ("003-3-access-denied-surfaced", 'S', "verify-permissions", &["validation failed: the stage succeeds once access is granted"]),
    ("003-3-404-vs-500", 'S', "retry-after-outage", &["validation failed: the registered blob reads back after the outage"]),
    (
        "003-1-hydrate-last-known-good",
        'S',
        "hydrate-last-known-good",
        &["INV-RECOVERY:", "validation failed: the device converged with the server (count and chain head)"],
    ),
    (
        "003-1-hydrate-last-known-good",
        'W',
        "hydrate-last-known-good",
        &[
            "INV-RECOVERY:",
            "validation failed: the device converged with the server (count and chain head)",
            "validation failed: the device hydrates from its last known-good state",
        ],
    ),
    ("003-4-hydrate-guardrail", 'W', "hydrate-last-known-good", &["validation failed: the device hydrates from its last known-good state"]),
    (
        "003-4-hydrate-guardrail",
        'S',
        "re-run-sync",
        &[
            "validation failed: the device converged with the server (count and chain head)",
            "validation failed: the pending queue drained",
            "validation failed: the writes pending at the failure reached the server",
        ],
    ),
    (
        "004-3.1-hash-chain-tamper",
        'S',
        "verify-chain",
        &["INV-RECOVERY:", "INV-GUARDRAIL:", "validation failed: the chain verifies end to end after the restore"],
    ),
    (
        "004-3.1-hash-chain-tamper",
        'W',
        "verify-chain",
        &[
            "INV-RECOVERY:",
            "INV-GUARDRAIL:",
            "validation failed: the chain verifies end to end after the restore",
            "validation failed: the exact tampered event is flagged",
        ],
    ),
    (
        "004-3.1-hash-chain-tamper",
        'S',
        "set-read-only",
        &[
            "INV-RECOVERY:",
            "validation failed: a verified backup is restored into the store",
            "validation failed: the archive since the backup replays to its end",
            "validation failed: the chain verifies end to end after the restore",
        ],
    ),
    ("004-3.1-hash-chain-tamper", 'S', "restore-verified-backup", &["INV-RECOVERY:", "validation failed: the chain verifies end to end after the restore"]),
    (
        "004-3.1-hash-chain-tamper",
        'S',
        "replay-archive",
        &[
            "INV-GUARDRAIL:",
            "INV-RECOVERY:",
            "validation failed: every tenant's count and head are what the chain promised",
            "validation failed: the server takes writes again",
        ],
    ),
    ("004-3.1-hash-chain-tamper", 'S', "rebuild-projections", &["INV-SERVER-PROJECTION:"]),
    ("004-3.1-hash-chain-tamper", 'S', "verify-tenants", &["validation failed: the server takes writes again"]),
    ("004-3.1-hash-chain-tamper", 'S', "restore-normal", &["validation failed: the server takes writes again"]),
    (
        "004-5.3-server-backup-checklist",
        'S',
        "verify-each-backup",
        &["INV-BACKUP:", "INV-RECOVERY:", "validation failed: a backup is restored into a clean database"],
    ),
    ("004-5.3-server-backup-checklist", 'S', "restore-to-clean-db", &["INV-BACKUP:", "INV-RECOVERY:"]),
    (
        "004-6.3-partial-write-failure",
        'S',
        "restart",
        &["validation failed: every projection folded up to the last event", "validation failed: the projections equal a full rebuild from the events"],
    ),
    (
        "004-6.1-database-corruption",
        'S',
        "restore-backup",
        &["validation failed: the device has a readable database after the recovery", "validation failed: the restored database opens and its chain verifies"],
    ),
    ("004-6.1-database-corruption", 'S', "replay-since-backup", &["INV-RECOVERY:", "validation failed: the device's count and chain head equal the server's"]),
    ("004-3.2-full-replay-read-only", 'S', "set-read-only", &["validation failed: every write during the replay is refused with store:readOnly"]),
    (
        "004-3.2-full-replay-read-only",
        'S',
        "replay-all-events",
        &["validation failed: the replay folded every event", "validation failed: the replayed counts equal the events held"],
    ),
    (
        "004-3.2-full-replay-read-only",
        'W',
        "replay-all-events",
        &["validation failed: the replay folded every event", "validation failed: the replayed counts equal the events held"],
    ),
    (
        "004-3.2-full-replay-read-only",
        'S',
        "restore-normal",
        &[
            "INV-RECOVERY:",
            "validation failed: the device syncs again",
            "validation failed: the device takes writes again",
            "validation failed: the device's count and chain head equal the server's",
        ],
    ),
    ("004-3.3-replay-per-tenant", 'S', "rebuild-tenant", &["INV-PROJECTION:"]),
    ("004-3.3-replay-per-tenant", 'W', "rebuild-tenant", &["INV-PROJECTION:"]),
    ("004-3.3-replay-per-projection", 'S', "rebuild-tenant-counters", &["INV-PROJECTION:"]),
    ("004-3.3-replay-per-projection", 'S', "rebuild-aggregate-state", &["INV-PROJECTION:"]),
    ("004-3.3-replay-per-projection", 'W', "rebuild-tenant-counters", &["INV-PROJECTION:", "validation failed: the rebuilt projection verifies"]),
    ("004-3.3-replay-time-range", 'S', "rebuild-as-of-point", &["INV-PROJECTION:", "validation failed: the state from the point on equals a full rebuild"]),
    ("004-3.3-replay-time-range", 'S', "replay-from-point", &["validation failed: the state from the point on equals a full rebuild"]),
    ("004-3.3-replay-from-snapshot", 'S', "restore-from-snapshot", &["INV-PROJECTION:", "validation failed: the restored projections verify"]),
    (
        "004-4.2-snapshot-recovery",
        'S',
        "restore-snapshot-and-tail",
        &["validation failed: snapshot plus tail equals a full rebuild", "validation failed: the restored projections verify against their events"],
    ),
    (
        "004-4.2-snapshot-recovery",
        'W',
        "find-latest-valid-snapshot",
        &["validation failed: snapshot plus tail equals a full rebuild", "validation failed: the restored projections verify against their events"],
    ),
    (
        "004-2.1-mode-transitions",
        'S',
        "set-degraded",
        &[
            "validation failed: DEGRADED takes writes, folds the essential projection, and leaves the switched-off one",
            "validation failed: the dashboard warns in DEGRADED",
        ],
    ),
    (
        "004-2.1-mode-transitions",
        'S',
        "set-read-only",
        &[
            "INV-PROJECTION:",
            "validation failed: READ_ONLY refuses every write with store:readOnly",
            "validation failed: back in NORMAL, the dashboard is healthy",
            "validation failed: the dashboard is critical in READ_ONLY",
        ],
    ),
    ("004-2.1-mode-transitions", 'S', "rebuild-projections", &["INV-PROJECTION:", "validation failed: back in NORMAL, the dashboard is healthy"]),
    (
        "004-2.1-mode-transitions",
        'S',
        "restore-normal",
        &[
            "validation failed: back in NORMAL, the dashboard is healthy",
            "validation failed: the device syncs again",
            "validation failed: the device takes writes again",
        ],
    ),
    (
        "004-5.3-backup-verification",
        'S',
        "backup-completes",
        &[
            "INV-RECOVERY:",
            "symptom did not appear: the backup job handed over copies that differ from the database",
            "validation failed: the verified backup passes every item of the checklist",
        ],
    ),
    (
        "004-5.3-backup-verification",
        'S',
        "restore-to-clean-db",
        &[
            "INV-RECOVERY:",
            "validation failed: the flipped copy is rejected",
            "validation failed: the foreign copy is rejected",
            "validation failed: the stale copy is rejected",
            "validation failed: the tampered copy is rejected",
            "validation failed: the truncated copy is rejected",
            "validation failed: the verified backup passes every item of the checklist",
        ],
    ),
    ("004-5.3-backup-verification", 'S', "verify-hash-chain", &["validation failed: the tampered copy is rejected"]),
    ("004-5.3-backup-verification", 'S', "compare-event-counts", &["validation failed: the stale copy is rejected"]),
    ("004-5.3-backup-verification", 'S', "check-tenant-isolation", &["validation failed: the foreign copy is rejected"]),
    ("004-6.2-projection-inconsistency", 'S', "replay-projection", &["validation failed: the projections equal a full rebuild"]),
    (
        "004-6.2-projection-inconsistency",
        'W',
        "replay-projection",
        &[
            "validation failed: the dashboard is healthy again",
            "validation failed: the projections equal a full rebuild",
            "validation failed: the stack's verification passes after the replay",
        ],
    ),
    ("004-6.4-tenant-isolation-breach", 'S', "set-read-only", &["validation failed: the affected tenant takes no writes during the audit"]),
    (
        "004-6.4-tenant-isolation-breach",
        'S',
        "audit-event-store",
        &["INV-TENANT:", "validation failed: the cross-tenant events are kept in quarantine, out of the store"],
    ),
    (
        "004-6.4-tenant-isolation-breach",
        'W',
        "audit-event-store",
        &[
            "INV-TENANT:",
            "validation failed: the audit finds exactly the cross-tenant event",
            "validation failed: the cross-tenant events are kept in quarantine, out of the store",
        ],
    ),
    (
        "004-6.4-tenant-isolation-breach",
        'S',
        "quarantine-foreign-events",
        &["INV-TENANT:", "validation failed: the cross-tenant events are kept in quarantine, out of the store"],
    ),
    ("004-6.4-tenant-isolation-breach", 'S', "rebuild-projections", &["INV-TENANT:"]),
    ("004-6.4-tenant-isolation-breach", 'W', "rebuild-projections", &["INV-TENANT:"]),
    (
        "004-6.4-tenant-isolation-breach",
        'S',
        "restore-normal",
        &["validation failed: the device syncs again", "validation failed: the device takes writes again"],
    ),
    ("004-7.2-health-indicators", 'S', "repair-event-store", &["validation failed: after the disk's repair the event store is writable again"]),
    (
        "004-7.2-health-indicators",
        'S',
        "rebuild-unhealthy-projections",
        &["INV-PROJECTION:", "validation failed: after the rebuild no projection is unhealthy", "validation failed: back in NORMAL every indicator is healthy"],
    ),
    (
        "004-7.2-health-indicators",
        'S',
        "restore-normal",
        &[
            "validation failed: back in NORMAL every indicator is healthy",
            "validation failed: the device syncs again",
            "validation failed: the device takes writes again",
        ],
    ),
];

/// The eight guardrail drills share their recovery: each fails without its transport repaired,
/// without its sync after the hydrate, or hydrated from a hand-edited state.
const GUARDRAIL_BROKEN: &[(char, &str, &[&str])] = &[
    (
        'S',
        "repair-transport",
        &[
            "validation failed: the device converged with the server (count and chain head)",
            "validation failed: the pending queue drained",
            "validation failed: the sync after hydrate succeeds",
        ],
    ),
    ('S', "re-run-sync", &["validation failed: the device converged with the server (count and chain head)", "validation failed: the pending queue drained"]),
    ('W', "hydrate-last-known-good", &["validation failed: the device hydrates from its last known-good state"]),
];

fn broken_cases() -> Vec<Broken> {
    let mut out: Vec<Broken> = BROKEN.to_vec();
    for d in drills::registry().into_iter().filter(|d| d.id.starts_with("003-4-") && d.id != "003-4-hydrate-guardrail") {
        out.extend(GUARDRAIL_BROKEN.iter().map(|(k, s, want)| (d.id, *k, *s, *want)));
    }
    out
}

#[test]
fn every_drill_fails_when_its_recovery_is_skipped_or_done_wrong() {
    let cases = broken_cases();
    for d in drills::registry() {
        assert!(cases.iter().any(|(id, ..)| *id == d.id), "{} has no skipped-recovery test", d.id);
    }
    // Seeds 1 and 2 calm, seed 3 in a busy world: the recovery is load-bearing in both.
    for (id, kind, step, want) in cases {
        for (seed, profile) in [(1, Profile::None), (2, Profile::None), (3, Profile::Swarm)] {
            let (skip, wrong) = if kind == 'S' { (Some(step), None) } else { (None, Some(step)) };
            let r = run_drill(id, seed, profile, skip, wrong);
            assert_eq!(r.outcome, Outcome::Violation, "{id} with {kind} {step} (seed {seed}, {profile}) passed: the drill checks nothing there");
            assert!(r.violations.iter().all(|v| v.invariant != "SIM-NO-PANIC"), "{id} with {kind} {step}: {:?}", r.violations);
            let said: Vec<String> = r.violations.iter().map(|v| format!("{}: {}", v.invariant, v.message)).collect();
            for w in want {
                assert!(said.iter().any(|s| s.contains(w)), "{id} with {kind} {step} (seed {seed}, {profile}): no violation says {w:?}; it said {said:#?}");
            }
            assert_eq!(r.drills[id].passed, 0, "{id} with {kind} {step}");
        }
    }
}

#[test]
fn a_drill_plan_names_only_steps_its_drill_has() {
    let mut plan = plan_for(1, "003-4-pull-cursor-regression", Profile::None).unwrap();
    plan.drill.as_mut().unwrap().skip = Some("no-such-step".into());
    assert!(plan.validate().is_ok(), "the plan alone does not know the registry's steps");
    let err = drill_scenarios::check(&plan).unwrap_err();
    assert!(err.contains("no step 'no-such-step'"), "{err}");
    assert!(plan_for(1, "no-such-drill", Profile::None).is_err());
}

#[test]
fn swarm_seeds_pick_drills_and_count_them() {
    let mut picked = 0;
    let mut exercised = 0;
    for seed in 1..=12 {
        let source = RunSource::Seed { seed, scenario: "sync-basic".into(), profile: Profile::Swarm };
        let plan = drill_scenarios::prepare(&source).unwrap();
        let r = run(&RunRequest { source, out_dir: None }).unwrap();
        assert_eq!(r.outcome, Outcome::Pass, "seed {seed}: {:?}", r.violations);
        let Some(d) = plan.drill else {
            assert!(r.drills.is_empty());
            continue;
        };
        picked += 1;
        let c = r.drills[d.id.as_str()];
        assert_eq!(c.runs, 1);
        exercised += c.exercised;
        let drill = drills::find(&d.id).unwrap();
        assert_eq!(steps_traced(&r, &d.id), drill.steps, "seed {seed}: every recovery step is marked on the world's timeline");
    }
    assert!(picked >= 3 && exercised >= 2, "picked {picked}, exercised {exercised}");
}

/// A drill whose failure comes from a planted bug is load-bearing on it: with the plan's bugs it
/// fires them (each a `mutation.fired` line, counted in the report) and is exercised; the same
/// plan without them sees no failure, so it is not exercised and its symptom check fails. The
/// test walks the registry: every drill that plants a bug is covered.
#[test]
fn a_drill_with_a_planted_bug_needs_the_bug_for_its_failure() {
    let mut planting = 0;
    for d in drills::registry() {
        let plan = plan_for(1, d.id, Profile::None).unwrap();
        if plan.mutations.is_empty() {
            continue;
        }
        planting += 1;
        let r = drills::execute(&plan, None).unwrap();
        let fired = kinds(&r).iter().filter(|k| *k == "mutation.fired").count() as u32;
        assert_eq!(r.mutations.len(), plan.mutations.len(), "{}", d.id);
        assert!(r.mutations.iter().all(|m| m.fired >= 1), "{}: a bug of its plan never fired: {:?}", d.id, r.mutations);
        assert_eq!(fired, r.mutations.iter().map(|m| m.fired).sum::<u32>(), "{}: every firing is traced", d.id);
        assert_eq!(r.drills[d.id].exercised, 1, "{}", d.id);
        let mut clean = plan.clone();
        clean.mutations.clear();
        let r = drills::execute(&clean, None).unwrap();
        assert_eq!(r.drills[d.id].exercised, 0, "{}: exercised without its planted bug", d.id);
        assert!(r.violations.iter().any(|v| v.invariant == "DRILL-SYMPTOM"), "{}: {:?}", d.id, r.violations);
    }
    assert_eq!(planting, 13, "the drills that plant a bug (000 projection, 002 divergence, 003 §1, 004 §2.1, §3.1, §3.2, §3.3 x4, §4.2, §6.2, §7.2)");
}

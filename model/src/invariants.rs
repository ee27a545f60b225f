//! The invariant registry: every property the model checks, with its source and statement.

/// One invariant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invariant {
    pub id: &'static str,
    /// The runbook it comes from.
    pub runbook: &'static str,
    pub statement: &'static str,
    /// Where it is checked.
    pub checked: &'static str,
}

pub const DURABLE: &str = "INV-DURABLE";
pub const CHAIN: &str = "INV-CHAIN";
pub const CONVERGE: &str = "INV-CONVERGE";
pub const ONCE: &str = "INV-ONCE";
pub const LIVE_DRAIN: &str = "LIVE-DRAIN";
pub const FAIL_CLOSED: &str = "INV-FAIL-CLOSED";
pub const GUARDRAIL: &str = "INV-GUARDRAIL";
pub const BLOB_VISIBILITY: &str = "INV-BLOB-VISIBILITY";
pub const BLOB_OBJECT: &str = "INV-BLOB-OBJECT";
pub const EXPORT: &str = "INV-EXPORT";
pub const IMPORT_REJECT: &str = "INV-IMPORT-REJECT";
pub const RECOVERY: &str = "INV-RECOVERY";
pub const PROJECTION: &str = "INV-PROJECTION";
pub const SNAPSHOT: &str = "INV-SNAPSHOT";
pub const NO_PLAINTEXT: &str = "INV-NO-PLAINTEXT";
pub const NO_REGEN: &str = "INV-NO-REGEN";
pub const TENANT: &str = "INV-TENANT";
pub const READ_ONLY: &str = "INV-READ-ONLY";
pub const MIGRATION: &str = "INV-MIGRATION";
pub const GROUP: &str = "INV-GROUP";
pub const SERVER_PROJECTION: &str = "INV-SERVER-PROJECTION";
pub const BACKUP: &str = "INV-BACKUP";

/// Every invariant the model checks today.
pub const REGISTRY: &[Invariant] = &[
    Invariant {
        id: DURABLE,
        runbook: "004 §1, 001",
        statement: "an acknowledged local write survives any crash; a write the server acknowledged survives server crashes",
        checked: "after every node recovery and at the end of the run",
    },
    Invariant {
        id: CHAIN,
        runbook: "004 §3.1",
        statement: "every stored event's hash chain verifies; a break is reported at the exact event",
        checked: "on every snapshot of every node",
    },
    Invariant {
        id: CONVERGE,
        runbook: "002 Sync Divergence, 003 §1",
        statement: "after heal and quiet, every device's events equal the server's for its tenant (count + hash)",
        checked: "at the end of the run, after the liveness phase",
    },
    Invariant {
        id: ONCE,
        runbook: "000 Saga stuck state, 003 §1",
        statement: "no event is applied twice, and no applied write is still pending; no saga effect happens twice, and after the heal every effect a saga requested (or a device's counts call for) has happened",
        checked: "on every snapshot of every node; saga effects against the receiver's log at the end of the run",
    },
    Invariant {
        id: FAIL_CLOSED,
        runbook: "003 §1",
        statement: "a failed sync attempt leaves the exported client state unchanged",
        checked: "after every failed sync attempt",
    },
    Invariant {
        id: GUARDRAIL,
        runbook: "003 §4, §5",
        statement: "each transport fault raises its exact stage:code signature; no silent fallback, no guardrail without a fault",
        checked: "after every sync attempt",
    },
    Invariant {
        id: LIVE_DRAIN,
        runbook: "003 §1",
        statement: "after heal, pending queues drain and devices converge within a bounded simulated time",
        checked: "in the liveness phase at the end of every run",
    },
    Invariant {
        id: BLOB_VISIBILITY,
        runbook: "003 §2",
        statement: "an attach succeeds only when the server's persisted reconcile state dominates the checkpoint, and is refused as behind only when it does not; that state never moves back; once the device reconciled, an identical retry is not behind",
        checked: "on every attach answer, and on the retries after the heal",
    },
    Invariant {
        id: BLOB_OBJECT,
        runbook: "003 §3",
        statement: "a staged blob stays registered and reads back its bytes; every object failure is one the store produced, retried to the bound when transient and not at all otherwise; the orphan scan finds exactly the registered blobs whose object was deleted",
        checked: "on every stage and read answer, on the reads after the heal, and on the orphan scan at the end",
    },
    Invariant {
        id: EXPORT,
        runbook: "001 Scenario B",
        statement: "a manifest that exists matches its files: each file it names exists with its SHA-256, byte count and row count",
        checked: "after every export (finished or cut short), after every recovery of the jobs node, and at the end of the run",
    },
    Invariant {
        id: IMPORT_REJECT,
        runbook: "001 Scenario C",
        statement: "an import with the reject policy never changes an existing row",
        checked: "when every import with reject ends, or when the jobs node recovered from a crash during one",
    },
    Invariant {
        id: RECOVERY,
        runbook: "every drilled section of 001, 002, 003, 004",
        statement: "after a drill's recovery no committed event is lost, changed or held twice, except what the runbook says is unrecoverable",
        checked: "at the end of every drill, on the events committed before its failure and read back after its recovery",
    },
    Invariant {
        id: PROJECTION,
        runbook: "004 §3.2, §6.2; 000 Key loss",
        statement: "each projection equals the fold of its events for the aggregates whose keys are present; an aggregate reported incomplete is absent from it, and after a rebuild exactly the unreadable aggregates are reported incomplete",
        checked: "whenever a node's projections are read back with its decrypted events and the keys it holds (after rebuilds and at the end of the run); a device's index artifact, derived from aggregate_state, at the end of the run",
    },
    Invariant {
        id: SNAPSHOT,
        runbook: "004 §4.2",
        statement: "restoring from the latest valid snapshot plus the tail equals a full replay, for the aggregates both report complete",
        checked: "whenever a node restores a projection from a snapshot and the world replays it in full to compare",
    },
    Invariant {
        id: NO_PLAINTEXT,
        runbook: "000 Open Questions (diagnostics export); 002 Backup and Recovery Guidance",
        statement: "no payload plaintext or key material appears in any disk image, export or diagnostics bundle",
        checked: "on every disk image, export and diagnostics bundle the world scans (at the end of the run and after drills)",
    },
    Invariant {
        id: NO_REGEN,
        runbook: "002 Vault Key Unavailable",
        statement: "an initialized vault key is never regenerated: its fingerprint never changes, and a recovery restores the same key",
        checked: "on every read of a node's vault and on every vault recovery",
    },
    Invariant {
        id: TENANT,
        runbook: "004 §6.4",
        statement: "no device or projection ever sees another tenant's events",
        checked: "whenever a device's events and projection rows are read back",
    },
    Invariant {
        id: READ_ONLY,
        runbook: "004 §2",
        statement: "in READ_ONLY no command succeeds and stored content does not change (the runbook's own recovery may rebuild derived tables)",
        checked: "at the end of every READ_ONLY period of a node",
    },
    Invariant {
        id: MIGRATION,
        runbook: "002 Release and Rollback Checklist (migration checklist, migration corruption)",
        statement: "a schema migration cut short by a crash at any point finishes at the next start: the device ends at the new version with no migration in progress",
        checked: "at the end of the run, on every device that installed the new schema",
    },
    Invariant {
        id: GROUP,
        runbook: "002 Missing Group Key",
        statement: "every room packet reaches every member unchanged once the member holds its epoch's key: buffered (bounded) while the key is missing and replayed when it arrives; a packet dropped by a full buffer is reported and read again on reconnect; after the heal every member holds every epoch's key",
        checked: "at the end of the run, on every device of a room that carried packets",
    },
    Invariant {
        id: SERVER_PROJECTION,
        runbook: "004 §1, §3.2, §6.1",
        statement: "the server's aggregate_state of every tenant equals the fold of the server's events (over their stored, sealed payloads)",
        checked: "after every restore of the server's event store (drills on the server)",
    },
    Invariant {
        id: BACKUP,
        runbook: "004 §5.1, §5.3",
        statement: "a backup that passes verification restores to a chain-valid store equal to the server's events at the backup's point",
        checked: "whenever a drill restores one of the server's backups into a clean database",
    },
];

/// Looks an invariant up by id.
pub fn find(id: &str) -> Option<&'static Invariant> {
    REGISTRY.iter().find(|i| i.id == id)
}

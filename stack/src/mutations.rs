//! Planted bugs: named faults in the stack's own code that a test plan switches on, for the
//! runbook sections whose real cause is a bug (a wrong projection, a snapshot written wrong).
//!
//! A bug is consulted at the one place it would live — the projection engine's incremental fold,
//! the snapshot writer, the server's event-store writer, a device's commit of a pull — and
//! nowhere else, so the failure it causes goes through the stack's own
//! code paths and the stack's own detection and recovery must deal with it. A plan lists its
//! bugs ([`Mutation`]); the world hands each process a [`Mutations`] view of the list, and every
//! firing is reported to the world's observer (a `mutation.fired` trace line) and counted for the
//! run's summary. Without a plan's list nothing is armed and every consultation is one branch.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// A bug the stack can carry, by name and where it lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum Bug {
    /// The incremental fold of `projection` (a device's apply after a sync or at boot, not a
    /// rebuild) mishandles events of kind `event_kind`: folds them twice, or advances the cursor
    /// without folding them (a stale row). A rebuild from the events is right.
    ProjectionFold { projection: String, event_kind: String, effect: FoldEffect },
    /// The snapshot writer stores `projection`'s state changed after its checksum was taken
    /// (the first value of its first row marked `~`), so the snapshot fails its check when read
    /// back.
    SnapshotState { projection: String },
    /// The server's event-store writer stores the payload of a pushed event of kind
    /// `event_kind` with a byte appended (a tampered row): its chain hash, the push's answer and
    /// the archive's segment are taken from the event as pushed, so the stored row no longer
    /// verifies.
    StoredPayload { event_kind: String },
    /// A device's commit of a pull whose pages hold an event of kind `event_kind` moves the
    /// cursor on but stores none of the pulled events (rows gone while the cursor says they
    /// arrived): the device no longer converges, and a retry pulls nothing.
    PullCommit { event_kind: String },
}

/// What a wrong fold does to the event it mishandles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FoldEffect {
    Twice,
    Skipped,
}

impl Bug {
    /// Its name in traces and summaries.
    pub fn name(&self) -> &'static str {
        match self {
            Bug::ProjectionFold { .. } => "projection_fold",
            Bug::SnapshotState { .. } => "snapshot_state",
            Bug::StoredPayload { .. } => "stored_payload",
            Bug::PullCommit { .. } => "pull_commit",
        }
    }

    /// What it lives in: a projection, or `events` (the event store).
    pub fn target(&self) -> &str {
        match self {
            Bug::ProjectionFold { projection, .. } | Bug::SnapshotState { projection } => projection,
            Bug::StoredPayload { .. } | Bug::PullCommit { .. } => "events",
        }
    }

    /// The projection it lives in, if it lives in one.
    pub fn projection(&self) -> Option<&str> {
        match self {
            Bug::ProjectionFold { projection, .. } | Bug::SnapshotState { projection } => Some(projection),
            Bug::StoredPayload { .. } | Bug::PullCommit { .. } => None,
        }
    }

    /// The `stage:code` a device's guard must raise when it meets what the bug did, when a
    /// sync guard is what catches it (a tampered row: the pull's chain check).
    pub fn caught_by(&self) -> Option<&'static str> {
        match self {
            Bug::StoredPayload { .. } => Some("pull:hashChainViolation"),
            Bug::ProjectionFold { .. } | Bug::SnapshotState { .. } | Bug::PullCommit { .. } => None,
        }
    }

    /// Whether the server runs the buggy code (else a device does).
    pub fn on_server(&self) -> bool {
        matches!(self, Bug::StoredPayload { .. })
    }
}

/// One planted bug of a plan: on which process, and when it fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mutation {
    /// The process that runs the buggy code (a device's or the server's node name).
    pub node: String,
    pub bug: Bug,
    /// Chances the bug lets pass before it first fires.
    #[serde(default)]
    pub after: u32,
    /// How many times it fires, then the code is right again.
    #[serde(default = "one")]
    pub times: u32,
}

fn one() -> u32 {
    1
}

/// Most firings one mutation may ask for.
pub const TIMES_MAX: u32 = 1_000;
/// Most chances a mutation may let pass first.
pub const AFTER_MAX: u32 = 1_000_000;

impl Mutation {
    /// What a plan may not hold, in one line; the names of nodes and projections are the
    /// plan's and the engine's to check.
    pub fn check(&self) -> Result<(), String> {
        let what = format!("mutation {} on {}", self.bug.name(), self.node);
        if self.times == 0 || self.times > TIMES_MAX {
            return Err(format!("{what}: times must be 1..={TIMES_MAX}, not {}", self.times));
        }
        if self.after > AFTER_MAX {
            return Err(format!("{what}: after must be at most {AFTER_MAX}, not {}", self.after));
        }
        if let Bug::ProjectionFold { event_kind, .. } | Bug::StoredPayload { event_kind } | Bug::PullCommit { event_kind } = &self.bug {
            if event_kind.is_empty() || event_kind.len() > 64 {
                return Err(format!("{what}: event_kind must be 1 to 64 bytes"));
            }
        }
        Ok(())
    }
}

/// One firing, as the observer hears of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    pub node: String,
    pub bug: &'static str,
    /// Where in the stack it fired (`projections::apply`, `projections::snapshot`).
    pub place: &'static str,
    /// What it did, for the trace.
    pub detail: String,
    /// Its firings so far, this one included.
    pub n: u32,
}

type Observer = Box<dyn Fn(&Fired) + Send>;

struct Armed {
    mutation: Mutation,
    seen: u32,
    fired: u32,
}

#[derive(Default)]
struct State {
    armed: Vec<Armed>,
    observer: Option<Observer>,
}

/// A process's view of its run's planted bugs; cheap to clone. [`Mutations::none`] arms nothing.
#[derive(Clone, Default)]
pub struct Mutations {
    state: Option<Arc<Mutex<State>>>,
    node: String,
}

impl std::fmt::Debug for Mutations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mutations({}, {} armed)", self.node, self.with(|s| s.armed.len()).unwrap_or(0))
    }
}

impl Mutations {
    /// No bug anywhere.
    pub fn none() -> Mutations {
        Mutations::default()
    }

    /// A run's bugs, each firing reported to `observer`; hand each process its [`Mutations::on`].
    pub fn new(list: &[Mutation], observer: Observer) -> Mutations {
        if list.is_empty() {
            return Mutations::none();
        }
        let armed = list.iter().map(|m| Armed { mutation: m.clone(), seen: 0, fired: 0 }).collect();
        Mutations { state: Some(Arc::new(Mutex::new(State { armed, observer: Some(observer) }))), node: String::new() }
    }

    /// The view of process `node`: only its bugs fire there.
    pub fn on(&self, node: &str) -> Mutations {
        Mutations { state: self.state.clone(), node: node.to_string() }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> Option<T> {
        let state = self.state.as_ref()?;
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        Some(f(&mut s))
    }

    /// One chance for the first of this process's bugs that `matches` (and has not fired all
    /// its times) to fire at `place`; whether it did, and the bug. Every call is a chance for
    /// each matching bug, so `after` counts the places the bug would have been reached.
    pub fn fires(&self, place: &'static str, matches: impl Fn(&Bug) -> bool, detail: impl FnOnce() -> String) -> Option<Bug> {
        self.with(|s| {
            let node = &self.node;
            let mut hit = None;
            for a in s.armed.iter_mut().filter(|a| &a.mutation.node == node && matches(&a.mutation.bug)) {
                a.seen += 1;
                if hit.is_none() && a.seen > a.mutation.after && a.fired < a.mutation.times {
                    a.fired += 1;
                    hit = Some((a.mutation.bug.clone(), a.fired));
                }
            }
            let (bug, n) = hit?;
            if let Some(observe) = &s.observer {
                observe(&Fired { node: node.clone(), bug: bug.name(), place, detail: detail(), n });
            }
            Some(bug)
        })
        .flatten()
    }

    /// Every bug of the run with its firings so far, as `(node, bug name, target, fired)`, in
    /// the plan's order.
    pub fn fired(&self) -> Vec<(String, &'static str, String, u32)> {
        self.with(|s| s.armed.iter().map(|a| (a.mutation.node.clone(), a.mutation.bug.name(), a.mutation.bug.target().to_string(), a.fired)).collect())
            .unwrap_or_default()
    }

    /// Whether any bug is armed at all (in any process).
    pub fn any(&self) -> bool {
        self.state.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(node: &str, after: u32, times: u32) -> Mutation {
        Mutation {
            node: node.into(),
            bug: Bug::ProjectionFold { projection: "tenant_counters".into(), event_kind: "archived".into(), effect: FoldEffect::Twice },
            after,
            times,
        }
    }

    #[test]
    fn a_bug_fires_on_its_node_after_its_chances_for_its_times_and_each_firing_is_observed() {
        let heard = Arc::new(Mutex::new(Vec::new()));
        let h = heard.clone();
        let m = Mutations::new(&[fold("d0", 1, 2)], Box::new(move |f| h.lock().unwrap().push((f.node.clone(), f.n))));
        let (d0, d1) = (m.on("d0"), m.on("d1"));
        let any = |_: &Bug| true;
        assert!(d1.fires("p", any, String::new).is_none(), "another node's code is right");
        let fired: Vec<bool> = (0..5).map(|_| d0.fires("p", any, String::new).is_some()).collect();
        assert_eq!(fired, [false, true, true, false, false]);
        assert_eq!(*heard.lock().unwrap(), [("d0".to_string(), 1), ("d0".to_string(), 2)]);
        assert_eq!(m.fired(), [("d0".to_string(), "projection_fold", "tenant_counters".to_string(), 2)]);
    }

    #[test]
    fn nothing_fires_without_a_list_or_when_the_place_does_not_match() {
        assert!(Mutations::none().on("d0").fires("p", |_| true, String::new).is_none());
        let m = Mutations::new(&[fold("d0", 0, 1)], Box::new(|_| {}));
        assert!(m.on("d0").fires("p", |b| b.target() == "aggregate_state", String::new).is_none());
        assert!(m.on("d0").fires("p", |b| b.target() == "tenant_counters", String::new).is_some());
    }

    #[test]
    fn a_plan_entry_is_checked_and_reads_back() {
        assert!(fold("d0", 0, 0).check().unwrap_err().contains("times must be"));
        assert!(fold("d0", AFTER_MAX + 1, 1).check().unwrap_err().contains("after must be"));
        let text = r#"{"node":"d0","bug":{"name":"projection_fold","projection":"tenant_counters","event_kind":"archived","effect":"twice"}}"#;
        let m: Mutation = serde_json::from_str(text).unwrap();
        assert_eq!(m, fold("d0", 0, 1));
        assert!(m.check().is_ok());
    }
}

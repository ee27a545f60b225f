//! The transport part of a plan: the faulty transport's fault kinds (runbook 003 §4's
//! guardrail conditions, duplicated and replayed requests, token faults), their windows, and
//! the knobs that draw them; plain data, its profiles' knobs and its schedule.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// The transport faults the world can arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportFaultKind {
    PullEmptyPageHasMore,
    PullNextCursorMismatch,
    PullCursorRegression,
    PullDuplicateOpReplay,
    PullLastWriteIdRegression,
    ReconcileCursorRegression,
    ReconcileLastWriteIdRegression,
    StaleWriteIds,
    DuplicateRequests,
    ReplayRequests,
    /// A pulled event's payload altered on the way, its hashes left as they were.
    PullTamperedEvent,
    /// Pushes and pulls go out without their token (a proxy that drops it): the server refuses
    /// them `keys:tokenInvalid`, and a refresh does not help while the window lasts.
    TokenStripped,
    /// The token endpoint answers with something that is not a token: the device refuses it
    /// (`keys:tokenInvalid`) and cannot connect while the window lasts.
    TokenEndpointMalformed,
}

impl TransportFaultKind {
    pub const ALL: [TransportFaultKind; 13] = [
        TransportFaultKind::PullEmptyPageHasMore,
        TransportFaultKind::PullNextCursorMismatch,
        TransportFaultKind::PullCursorRegression,
        TransportFaultKind::PullDuplicateOpReplay,
        TransportFaultKind::PullLastWriteIdRegression,
        TransportFaultKind::ReconcileCursorRegression,
        TransportFaultKind::ReconcileLastWriteIdRegression,
        TransportFaultKind::StaleWriteIds,
        TransportFaultKind::DuplicateRequests,
        TransportFaultKind::ReplayRequests,
        TransportFaultKind::PullTamperedEvent,
        TransportFaultKind::TokenStripped,
        TransportFaultKind::TokenEndpointMalformed,
    ];

    /// The guardrail signature an attempt hit by this fault must raise; `None` for faults the
    /// stack must absorb without error.
    pub fn signature(self) -> Option<&'static str> {
        use TransportFaultKind as K;
        match self {
            K::PullEmptyPageHasMore | K::PullNextCursorMismatch => Some("pull:pullPageInvariantViolation"),
            K::PullCursorRegression => Some("pull:pullCursorRegression"),
            K::PullDuplicateOpReplay => Some("pull:pullDuplicateOpReplay"),
            K::PullTamperedEvent => Some("pull:hashChainViolation"),
            K::PullLastWriteIdRegression => Some("pull:lastWriteIdRegression"),
            K::ReconcileCursorRegression => Some("reconcile:reconcileCursorRegression"),
            K::ReconcileLastWriteIdRegression => Some("reconcile:lastWriteIdRegression"),
            K::StaleWriteIds => Some("flush:staleWriteRecoveryExhausted"),
            K::DuplicateRequests | K::ReplayRequests | K::TokenStripped | K::TokenEndpointMalformed => None,
        }
    }

    /// The typed error an attempt hit by a token fault ends with (the server's refusal, or the
    /// device's of a malformed token): refreshing cannot help while the window lasts.
    pub fn token_error(self) -> Option<&'static str> {
        matches!(self, TransportFaultKind::TokenStripped | TransportFaultKind::TokenEndpointMalformed).then_some("keys:tokenInvalid")
    }

    /// The name the fault is counted under.
    pub fn counted_as(self) -> String {
        format!("transport.{}", serde_json::to_value(self).expect("kinds serialize").as_str().expect("a string"))
    }
}

/// A transport fault window in the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportFaultAt {
    pub at_ms: u64,
    pub node: String,
    pub kind: TransportFaultKind,
    pub ms: u64,
}

/// How many transport faults a plan draws.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransportKnobs {
    pub faults_max: u32,
    pub window_ms_max: u64,
}

impl TransportKnobs {
    pub fn none() -> Self {
        TransportKnobs { faults_max: 0, window_ms_max: 0 }
    }
    pub fn lite() -> Self {
        TransportKnobs { faults_max: 1, window_ms_max: 1_000 }
    }
    pub fn swarm(rng: &mut drill_sim::rng::Stream) -> Self {
        TransportKnobs { faults_max: if rng.gen_bool(0.6) { rng.gen_range(1..=6) } else { 0 }, window_ms_max: rng.gen_range(100..=3_000) }
    }

    /// Draws the windows over `[0, duration_ms)` for `clients`.
    pub fn schedule(&self, clients: &[String], duration_ms: u64, rng: &mut drill_sim::rng::Stream) -> Vec<TransportFaultAt> {
        let mut out: Vec<TransportFaultAt> = (0..rng.gen_range(0..=self.faults_max))
            .map(|_| TransportFaultAt {
                at_ms: rng.gen_range(0..duration_ms.max(1)),
                node: clients[rng.gen_range(0..clients.len())].clone(),
                kind: TransportFaultKind::ALL[rng.gen_range(0..TransportFaultKind::ALL.len())],
                ms: rng.gen_range(1..=self.window_ms_max.max(1)),
            })
            .collect();
        out.sort_by_key(|f| f.at_ms);
        out
    }
}

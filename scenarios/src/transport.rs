//! The faulty transport: a filter between a device and the network that produces, on demand,
//! each condition the sync runbook's guardrails exist for — a regressing cursor, an op replayed
//! within a pull cycle, `hasMore` with an empty page, a `nextCursor` that is not the page tail,
//! regressing `lastReconciledWriteIds` on pull and on reconcile, a regressing reconcile cursor,
//! stale write ids, a pulled event altered on the way — plus duplicated and replayed requests,
//! which the stack must absorb.
//!
//! The world arms a device's transport for a window; the device resets it before each sync
//! attempt with its exported state as the baseline, and afterwards reads which signature the
//! attempt must have raised. A fault is only injected where it is a real regression against
//! that baseline, so the expectation is exact.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use drill_stack::client::ExportedState;
use drill_stack::proto::{Request, Response};
use drill_stack::rpc::TransportFilter;

use crate::plan::transport::TransportFaultKind;

/// A device's transport: the armed fault, the attempt's baseline, and what was injected.
#[derive(Default)]
pub struct TransportState {
    pub mode: Option<TransportFaultKind>,
    baseline: Option<ExportedState>,
    injected: Option<TransportFaultKind>,
    /// Responses rewritten in this attempt.
    injections: u32,
    /// Whether the device renumbers stale writes (protocol version 2 and later) or gives up at once.
    renumbers: bool,
    sent: Vec<(u64, Request)>,
}

impl TransportState {
    /// Starts an attempt from `baseline`, for a device that does or does not renumber.
    pub fn begin(&mut self, baseline: ExportedState, renumbers: bool) {
        self.baseline = Some(baseline);
        self.renumbers = renumbers;
        self.injected = None;
        self.injections = 0;
    }

    /// The signature the attempt must have raised, if a guardrail fault was injected. Stale
    /// write ids only exhaust the recovery when every push of the attempt was refused; when the
    /// window closed in between, renumbering legitimately succeeded.
    pub fn expected(&self) -> Option<&'static str> {
        let kind = self.injected?;
        let retries = if self.renumbers { drill_stack::client::STALE_WRITE_RETRIES_MAX } else { 0 };
        if kind == TransportFaultKind::StaleWriteIds && self.injections <= retries {
            return None;
        }
        kind.signature()
    }
}

/// The filter the device's RPC client runs every exchange through.
pub struct FaultyTransport(pub Arc<Mutex<TransportState>>);

/// Requests kept for replays.
const SENT_KEPT_MAX: usize = 8;

impl FaultyTransport {
    /// The device's transport state (a panicked holder does not poison it: the world reads on).
    fn state(&self) -> MutexGuard<'_, TransportState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl TransportFilter for FaultyTransport {
    fn extra_sends(&mut self, id: u64, req: &Request) -> Vec<(u64, Request)> {
        let mut s = self.state();
        let extra = match s.mode {
            Some(TransportFaultKind::DuplicateRequests) => vec![(id, req.clone())],
            Some(TransportFaultKind::ReplayRequests) => s.sent.first().cloned().into_iter().collect(),
            _ => Vec::new(),
        };
        if s.sent.len() >= SENT_KEPT_MAX {
            s.sent.remove(0);
        }
        s.sent.push((id, req.clone()));
        extra
    }

    fn token(&mut self, req: &Request, token: Option<String>) -> Option<String> {
        let mut s = self.state();
        if s.mode != Some(TransportFaultKind::TokenStripped) || !matches!(req, Request::Push { .. } | Request::Pull { .. }) || token.is_none() {
            return token;
        }
        s.injected = Some(TransportFaultKind::TokenStripped);
        s.injections += 1;
        None
    }

    fn response(&mut self, req: &Request, resp: Response) -> Response {
        let mut s = self.state();
        let Some(kind) = s.mode else { return resp };
        let repeatable = matches!(kind, TransportFaultKind::StaleWriteIds | TransportFaultKind::TokenEndpointMalformed);
        if s.injected.is_some() && !repeatable {
            return resp;
        }
        let Some(base) = s.baseline.clone() else { return resp };
        match mutate(kind, req, resp, &base) {
            (resp, true) => {
                s.injected = Some(kind);
                s.injections += 1;
                resp
            }
            (resp, false) => resp,
        }
    }
}

/// The first replica whose reconciled write id can regress, and to what.
fn regressed(base: &ExportedState) -> Option<(String, u64)> {
    base.last_reconciled_write_ids.iter().find(|(_, &w)| w > 0).map(|(r, &w)| (r.clone(), w - 1))
}

/// Rewrites `resp` for `kind` when the fault applies; says whether it did.
fn mutate(kind: TransportFaultKind, req: &Request, resp: Response, base: &ExportedState) -> (Response, bool) {
    use TransportFaultKind as K;
    let since = match req {
        Request::Pull { since, .. } => *since,
        Request::Push { .. } | Request::Blob(_) | Request::Token { .. } | Request::Keys(_) => 0,
    };
    match (kind, resp) {
        (K::TokenEndpointMalformed, Response::Token { server_unix_ms, .. }) => (Response::Token { token: "not a token".into(), server_unix_ms }, true),
        (K::PullEmptyPageHasMore, Response::Page { last_reconciled_write_ids, .. }) => {
            (Response::Page { items: vec![], has_more: true, next_cursor: since, last_reconciled_write_ids }, true)
        }
        (K::PullNextCursorMismatch, Response::Page { items, has_more, next_cursor, last_reconciled_write_ids }) => {
            (Response::Page { items, has_more, next_cursor: next_cursor + 1, last_reconciled_write_ids }, true)
        }
        (K::PullCursorRegression, Response::Page { last_reconciled_write_ids, .. }) if since > 0 => {
            (Response::Page { items: vec![], has_more: false, next_cursor: since - 1, last_reconciled_write_ids }, true)
        }
        (K::PullDuplicateOpReplay, Response::Page { mut items, has_more, last_reconciled_write_ids, .. }) if !items.is_empty() => {
            let mut copy = items[0].clone();
            copy.seq = items.last().expect("not empty").seq + 1;
            let next_cursor = copy.seq;
            items.push(copy);
            (Response::Page { items, has_more, next_cursor, last_reconciled_write_ids }, true)
        }
        (K::PullTamperedEvent, Response::Page { mut items, has_more, next_cursor, last_reconciled_write_ids }) if !items.is_empty() => {
            // The first item is the one the device checks first against its own chain head.
            let e = &mut items[0];
            match e.payload.last_mut() {
                Some(b) => *b ^= 0x01,
                None => e.payload.push(0),
            }
            (Response::Page { items, has_more, next_cursor, last_reconciled_write_ids }, true)
        }
        (K::PullLastWriteIdRegression, Response::Page { items, has_more, next_cursor, mut last_reconciled_write_ids }) => match regressed(base) {
            Some((r, w)) => {
                last_reconciled_write_ids.insert(r, w);
                (Response::Page { items, has_more, next_cursor, last_reconciled_write_ids }, true)
            }
            None => (Response::Page { items, has_more, next_cursor, last_reconciled_write_ids }, false),
        },
        (K::ReconcileCursorRegression, Response::Pushed { accepted, last_reconciled_write_ids, cursor }) => {
            if base.reconcile_cursor > 0 {
                (Response::Pushed { accepted, cursor: base.reconcile_cursor - 1, last_reconciled_write_ids }, true)
            } else {
                (Response::Pushed { accepted, cursor, last_reconciled_write_ids }, false)
            }
        }
        (K::ReconcileLastWriteIdRegression, Response::Pushed { accepted, cursor, mut last_reconciled_write_ids }) => match regressed(base) {
            Some((r, w)) => {
                last_reconciled_write_ids.insert(r, w);
                (Response::Pushed { accepted, cursor, last_reconciled_write_ids }, true)
            }
            None => (Response::Pushed { accepted, cursor, last_reconciled_write_ids }, false),
        },
        (K::StaleWriteIds, Response::Pushed { accepted, .. }) => {
            let last = accepted.iter().map(|a| a.write_id).max().unwrap_or(0);
            let e = Response::Error { code: "staleWriteId".into(), message: "write ids are stale (faulty transport)".into(), last_write_id: Some(last) };
            (e, true)
        }
        (_, resp) => (resp, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drill_stack::proto::WireEvent;

    fn base() -> ExportedState {
        ExportedState {
            replica: "client-1".into(),
            tenant: "acme".into(),
            cursor: 4,
            reconcile_cursor: 4,
            last_reconciled_write_ids: [("client-1".to_string(), 2)].into(),
            pending: vec![],
        }
    }

    fn page(seqs: &[u64]) -> Response {
        let items = seqs
            .iter()
            .map(|&seq| WireEvent {
                seq,
                op_id: format!("op-{seq}"),
                tenant: "acme".into(),
                aggregate: "a".into(),
                kind: "k".into(),
                replica: "client-2".into(),
                write_id: seq,
                payload: vec![],
                prev_hash: vec![],
                hash: vec![],
            })
            .collect();
        Response::Page {
            items,
            has_more: false,
            next_cursor: seqs.last().copied().unwrap_or(4),
            last_reconciled_write_ids: [("client-1".to_string(), 2)].into(),
        }
    }

    fn pull(since: u64) -> Request {
        Request::Pull { tenant: "acme".into(), replica: "client-1".into(), since, limit: 64, head: None }
    }

    #[test]
    fn each_pull_fault_applies_only_where_it_is_a_real_regression() {
        use TransportFaultKind as K;
        assert!(mutate(K::PullCursorRegression, &pull(4), page(&[]), &base()).1);
        assert!(!mutate(K::PullCursorRegression, &pull(0), page(&[]), &base()).1);
        assert!(!mutate(K::PullDuplicateOpReplay, &pull(4), page(&[]), &base()).1);
        assert!(mutate(K::PullDuplicateOpReplay, &pull(4), page(&[5, 6]), &base()).1);
        let mut b = base();
        b.last_reconciled_write_ids.clear();
        assert!(!mutate(K::PullLastWriteIdRegression, &pull(4), page(&[]), &b).1);
        assert!(mutate(K::PullLastWriteIdRegression, &pull(4), page(&[]), &base()).1);
        assert!(!mutate(K::PullTamperedEvent, &pull(4), page(&[]), &base()).1);
        let (tampered, injected) = mutate(K::PullTamperedEvent, &pull(4), page(&[5, 6]), &base());
        let (Response::Page { items: got, .. }, Response::Page { items: sent, .. }) = (tampered, page(&[5, 6])) else { panic!("pages") };
        assert!(injected);
        assert_ne!(got[0].payload, sent[0].payload);
        assert_eq!((&got[0].hash, &got[0].prev_hash, &got[1]), (&sent[0].hash, &sent[0].prev_hash, &sent[1]));
    }

    #[test]
    fn guardrail_kinds_name_their_signatures() {
        let with: Vec<_> = TransportFaultKind::ALL.iter().filter_map(|k| k.signature()).collect();
        assert_eq!(with.len(), 9);
        assert_eq!(TransportFaultKind::StaleWriteIds.counted_as(), "transport.stale_write_ids");
    }
}

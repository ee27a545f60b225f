//! A device's state read back for the model: its events and outbox (opened with the keys the
//! world handed out), its projections and tenants, as the facts the model judges.

use drill_model::store::{PlainEvent, ProjectionFacts, ProjectionRead, StoreFact, TenantFacts};
use drill_model::{ClientSnapshot, Fact, OutboxFact};
use drill_stack::client::Client;
use drill_stack::envelope;
use drill_stack::store::EventRow;
use serde_json::json;

use crate::node::{event_fact, observe, opened, record_at, ClientCtx};

pub(crate) fn client_snapshot(ctx: &ClientCtx, c: &Client) -> Result<ClientSnapshot, String> {
    client_snapshot_after(ctx, c, None)
}

/// [`client_snapshot`] holding only the events after `after` (every event with none).
pub(crate) fn client_snapshot_after(ctx: &ClientCtx, c: &Client, after: Option<u64>) -> Result<ClientSnapshot, String> {
    let outbox = c.outbox().map_err(|e| e.to_string())?;
    let events = match after {
        None => c.events(),
        Some(seq) => drill_stack::store::events_since(c.db(), seq),
    }
    .map_err(|e| e.to_string())?;
    let keys = &*ctx.tenant_keys;
    Ok(ClientSnapshot {
        node: ctx.name.clone(),
        replica: c.replica().into(),
        tenant: c.tenant().into(),
        outbox: outbox
            .into_iter()
            .map(|w| OutboxFact {
                write_id: w.write_id,
                op_id: w.op_id.unwrap_or_default(),
                payload: opened(keys, c.tenant(), &w.aggregate, &w.kind, &w.payload),
                stored_sha256: drill_model::facts::sha256_hex(&w.payload),
            })
            .collect(),
        events: events.iter().map(|e| event_fact(e, keys)).collect(),
        anchor: c.anchor().map_err(|e| e.to_string())?,
    })
}

/// What a device's projections and tenants are, read back for the model: its events opened
/// with the keys it holds, its projections' rows, cursors and skipped aggregates, and the
/// tenants its events and projection tables name.
pub(crate) fn store_facts(ctx: &ClientCtx, c: &Client) -> Result<Vec<StoreFact>, String> {
    let s = |e: drill_stack::StoreError| e.to_string();
    let events = c.events().map_err(s)?;
    let plain = opened_events(c, &events);
    let keys_present = c.keys().ring.aggregates().map_err(|e| e.to_string())?.into_iter().collect();
    let incomplete = c.incomplete().map_err(s)?;
    let mut projections = Vec::new();
    for name in c.engine().names() {
        projections.push(ProjectionRead {
            name: name.to_string(),
            rows: c.projection_rows(name).map_err(s)?,
            incomplete: incomplete.iter().filter(|i| i.projection == name).map(|i| i.aggregate.clone()).collect(),
            cursor: Some(c.projection_cursor(name).map_err(s)?),
        });
    }
    let mut projection_tenants = Vec::new();
    for table in ["proj_aggregate_state", "proj_tenant_counters", "proj_cursor"] {
        let mut st = c.db().prepare(&format!("SELECT DISTINCT tenant FROM {table} ORDER BY tenant")).map_err(|e| e.to_string())?;
        let tenants = st.query_map([], |r| r.get::<_, String>(0)).map_err(|e| e.to_string())?;
        for t in tenants {
            projection_tenants.push((table.to_string(), t.map_err(|e| e.to_string())?));
        }
    }
    let tenant = TenantFacts {
        node: ctx.name.clone(),
        tenant: ctx.tenant.clone(),
        events: events.iter().map(|e| (e.seq, e.tenant.clone())).collect(),
        projection_tenants,
        seen: Vec::new(),
    };
    let projection =
        ProjectionFacts { node: ctx.name.clone(), tenant: ctx.tenant.clone(), events: plain, keys_present, rebuilt: false, until_ts_ms: None, projections };
    Ok(vec![StoreFact::Projection(projection), StoreFact::Tenant(tenant)])
}

/// A device's events as the model takes them: each opened with the keys the device holds (no
/// payload when it does not open).
pub(crate) fn opened_events(c: &Client, events: &[EventRow]) -> Vec<PlainEvent> {
    events
        .iter()
        .map(|e| PlainEvent {
            seq: e.seq,
            tenant: e.tenant.clone(),
            aggregate: e.aggregate.clone(),
            kind: e.kind.clone(),
            ts_ms: envelope::parse(&e.payload).map(|(ts, _, _)| ts).unwrap_or(i64::MIN),
            payload: c.open_payload(e).ok(),
        })
        .collect()
}

/// Hands store facts to the model at a `check.store` line.
pub(crate) fn observe_store(ctx: &ClientCtx, what: &str, facts: Vec<StoreFact>) {
    let Some(line) = record_at(&ctx.shared, &ctx.name, "check.store", json!({"what": what}), None) else { return };
    for f in facts {
        observe(&ctx.shared, Fact::Store(f), line);
    }
}

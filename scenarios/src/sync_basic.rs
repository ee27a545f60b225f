//! `sync-basic`: devices of two tenants record events offline and sync them through the server
//! while the fault profile crashes nodes, partitions the network, fails disks and skews clocks.
//! Checked: every acknowledged write survives (INV-DURABLE), every stored hash chain verifies
//! (INV-CHAIN), nothing is applied twice (INV-ONCE), and after the heal every device holds exactly
//! the server's events for its tenant (INV-CONVERGE, LIVE-DRAIN).

use drill_sim::faults::schedule;
use drill_sim::rng::SeedTree;
use rand::Rng;

use drill_stack::proto::PROTOCOL_VERSION;

use crate::plan::{self, client_name, Action, ClientSpec, Plan, PlannedOp, Profile, PLAN_FORMAT_VERSION, TENANTS};

/// The scenario's name.
pub const NAME: &str = "sync-basic";

/// Workload shape.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub clients: usize,
    pub ops_per_client: usize,
    pub duration_ms: u64,
}

impl Shape {
    /// The standard run: a server and three devices.
    pub const STANDARD: Shape = Shape { clients: 3, ops_per_client: 24, duration_ms: 8_000 };
}

/// Builds the plan for `seed` under `profile`'s knobs.
pub fn plan(seed: u64, profile: Profile, shape: Shape) -> Plan {
    let (knobs, transport_knobs) = (profile.knobs(seed), profile.transport_knobs(seed));
    let swarm = profile == Profile::Swarm;
    let seeds = SeedTree::new(seed);
    let mut rng = seeds.stream("plan");
    // Under swarm some devices run the previous protocol version: N and N-1 must interoperate.
    let old_device_probability = if swarm { 0.25 } else { 0.0 };
    let clients: Vec<ClientSpec> = (0..shape.clients)
        .map(|i| ClientSpec {
            name: client_name(i),
            tenant: TENANTS[i % TENANTS.len()].to_string(),
            protocol_version: if rng.gen_bool(old_device_probability) { PROTOCOL_VERSION - 1 } else { PROTOCOL_VERSION },
        })
        .collect();
    let hydrate_probability = if swarm { 0.04 } else { 0.0 };
    let mut ops = Vec::new();
    for c in &clients {
        for _ in 0..shape.ops_per_client {
            let at_ms = rng.gen_range(0..shape.duration_ms);
            let action = if rng.gen_bool(hydrate_probability) {
                if rng.gen_bool(0.3) {
                    Action::ForceSync
                } else {
                    Action::Hydrate { malformed: rng.gen_bool(0.3) }
                }
            } else if rng.gen_bool(0.7) {
                Action::Append {
                    aggregate: format!("note-{}", rng.gen_range(1..=5)),
                    kind: ["created", "edited", "tagged"][rng.gen_range(0..3)].to_string(),
                    bytes: rng.gen_range(16..=512),
                }
            } else {
                Action::Sync
            };
            ops.push(PlannedOp { at_ms, client: c.name.clone(), action });
        }
    }
    ops.sort_by_key(|o| o.at_ms);
    let mut plan = Plan {
        format_version: PLAN_FORMAT_VERSION,
        seed,
        scenario: NAME.to_string(),
        profile,
        clients,
        knobs,
        transport_knobs,
        ops,
        faults: Vec::new(),
        transport_faults: Vec::new(),
        server_retention: if swarm && rng.gen_bool(0.3) { Some(rng.gen_range(4..=20)) } else { None },
        blobs: None,
        jobs: None,
        store: None,
        drill: None,
        mutations: Vec::new(),
        heal_at_ms: shape.duration_ms + 500,
        liveness_ms_max: 30_000,
    };
    let nodes = plan.node_names();
    plan.faults = schedule(&plan.knobs, &nodes, shape.duration_ms, &mut seeds.stream("faults"));
    let devices: Vec<String> = plan.clients.iter().map(|c| c.name.clone()).collect();
    plan.transport_faults = plan.transport_knobs.schedule(&devices, shape.duration_ms, &mut seeds.stream("transport"));
    if swarm {
        plan::blobs::swarm(&mut plan, &seeds, shape.duration_ms);
        plan::jobs::swarm(&mut plan, &seeds, shape.duration_ms);
        plan::store::swarm(&mut plan, &seeds, shape.duration_ms);
        plan::drill::swarm(&mut plan, &seeds, shape.duration_ms);
    }
    plan
}

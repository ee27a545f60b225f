//! `sync-basic`: devices of two tenants record events offline and sync them through the server
//! while the fault profile crashes nodes, partitions the network, fails disks and skews clocks.
//! Checked: every acknowledged write survives (INV-DURABLE), every stored hash chain verifies
//! (INV-CHAIN), nothing is applied twice (INV-ONCE), and after the heal every device holds exactly
//! the server's events for its tenant (INV-CONVERGE, LIVE-DRAIN).

use drill_sim::faults::{schedule, Knobs};
use drill_sim::rng::SeedTree;
use rand::Rng;

use drill_stack::proto::PROTOCOL_VERSION;

use crate::plan::{Action, ClientSpec, Plan, PlannedOp, PLAN_FORMAT_VERSION};
use crate::transport::TransportKnobs;

/// The scenario's name.
pub const NAME: &str = "sync-basic";

/// Tenants the devices belong to, round robin.
const TENANTS: [&str; 2] = ["acme", "globex"];

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
pub fn plan(seed: u64, profile: &str, knobs: Knobs, transport_knobs: TransportKnobs, shape: Shape) -> Plan {
    let seeds = SeedTree::new(seed);
    let mut rng = seeds.stream("plan");
    // Under swarm some devices run the previous protocol version: N and N-1 must interoperate.
    let old_device_probability = if profile == "swarm" { 0.25 } else { 0.0 };
    let clients: Vec<ClientSpec> = (0..shape.clients)
        .map(|i| ClientSpec {
            name: format!("client-{}", i + 1),
            tenant: TENANTS[i % TENANTS.len()].to_string(),
            protocol_version: if rng.gen_bool(old_device_probability) { PROTOCOL_VERSION - 1 } else { PROTOCOL_VERSION },
        })
        .collect();
    let hydrate_probability = if profile == "swarm" { 0.04 } else { 0.0 };
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
        profile: profile.to_string(),
        clients,
        knobs,
        transport_knobs,
        ops,
        faults: Vec::new(),
        transport_faults: Vec::new(),
        server_retention: if profile == "swarm" && rng.gen_bool(0.3) { Some(rng.gen_range(4..=20)) } else { None },
        blobs: None,
        jobs: None,
        store: None,
        drill: None,
        heal_at_ms: shape.duration_ms + 500,
        liveness_ms_max: 30_000,
    };
    let nodes = plan.node_names();
    plan.faults = schedule(&plan.knobs, &nodes, shape.duration_ms, &mut seeds.stream("faults"));
    let devices: Vec<String> = plan.clients.iter().map(|c| c.name.clone()).collect();
    plan.transport_faults = plan.transport_knobs.schedule(&devices, shape.duration_ms, &mut seeds.stream("transport"));
    if profile == "swarm" {
        crate::blobs_world::add_to_plan(&mut plan, &seeds, shape.duration_ms);
        crate::jobs_world::add_to_plan(&mut plan, &seeds, shape.duration_ms);
        crate::store_world::add_to_plan(&mut plan, &seeds, shape.duration_ms);
        crate::drills::swarm::add_to_plan(&mut plan, &seeds, shape.duration_ms);
    }
    plan
}

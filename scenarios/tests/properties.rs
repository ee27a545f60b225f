//! CI property runs: proptest generates whole plans — topology, workload, fault schedule — and
//! every plan must pass. A failure shrinks to a minimal plan (fewer clients, operations and
//! faults), which is written to `target/drill-proptest/` with the command that replays it.
//!
//! `PROPTEST_CASES` sets the number of plans (default 24, to fit CI); a larger run:
//! `PROPTEST_CASES=2000 cargo test --release -p drill-scenarios --test properties`.

use drill_scenarios::plan::store::{AggregateKeyLoss, KeyStoreLoss, ReadOnlyWindow, StorePlan};
use drill_scenarios::plan::transport::{TransportFaultAt, TransportFaultKind, TransportKnobs};
use drill_scenarios::plan::{Action, ClientSpec, Plan, PlannedOp, PLAN_FORMAT_VERSION};
use drill_scenarios::run::execute;
use drill_scenarios::Outcome;
use drill_scenarios::Profile;
use drill_sim::disk::IoOp;
use drill_sim::faults::{Fault, Knobs, Scheduled};
use proptest::prelude::*;

const DURATION_MS: u64 = 6_000;

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (1u32..=5, 16u32..=400).prop_map(|(n, bytes)| Action::Append { aggregate: format!("note-{n}"), kind: "edited".into(), bytes }),
        3 => Just(Action::Sync),
        1 => any::<bool>().prop_map(|malformed| Action::Hydrate { malformed }),
        1 => Just(Action::ForceSync),
    ]
}

/// A fault naming nodes by index: 0 is the server, 1.. the devices (taken modulo the topology).
#[derive(Debug, Clone)]
enum FaultSpec {
    Crash { node: usize, down_ms: u64, mid_io: Option<u32> },
    Partition { node: usize, one_way: bool, ms: u64 },
    IoError { node: usize, op: u8, nth: u64, persistent: bool, ms: u64 },
    ClockJump { node: usize, delta_ms: i64 },
    Transport { node: usize, kind: usize, ms: u64 },
    ReadOnly { node: usize, ms: u64 },
    KeyStoreLoss { node: usize, down_ms: u64, withheld: Vec<u8> },
}

fn fault() -> impl Strategy<Value = (u64, FaultSpec)> {
    let spec = prop_oneof![
        (0usize..5, 1u64..1_500, prop::option::of(1u32..40)).prop_map(|(node, down_ms, mid_io)| FaultSpec::Crash { node, down_ms, mid_io }),
        (0usize..5, any::<bool>(), 1u64..2_000).prop_map(|(node, one_way, ms)| FaultSpec::Partition { node, one_way, ms }),
        (0usize..5, 0u8..4, 1u64..20, any::<bool>(), 1u64..1_000).prop_map(|(node, op, nth, persistent, ms)| FaultSpec::IoError {
            node,
            op,
            nth,
            persistent,
            ms
        }),
        (0usize..5, -600_000i64..600_000).prop_map(|(node, delta_ms)| FaultSpec::ClockJump { node, delta_ms }),
        (1usize..5, 0usize..TransportFaultKind::ALL.len(), 1u64..2_000).prop_map(|(node, kind, ms)| FaultSpec::Transport { node, kind, ms }),
        (1usize..5, 1u64..2_000).prop_map(|(node, ms)| FaultSpec::ReadOnly { node, ms }),
        (1usize..5, 1u64..1_500, prop::collection::vec(1u8..=5, 0..3)).prop_map(|(node, down_ms, withheld)| FaultSpec::KeyStoreLoss {
            node,
            down_ms,
            withheld
        }),
    ];
    (0..DURATION_MS, spec)
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        1usize..=4,
        prop::collection::vec((0..DURATION_MS, 0usize..4, action()), 0..50),
        prop::collection::vec(fault(), 0..8),
        0u64..1_000_000,
        prop::option::of(3u64..20),
        any::<bool>(),
    )
        .prop_map(|(n, ops, faults, seed, retention, old_device)| build(n, ops, faults, seed, retention, old_device))
}

fn build(n: usize, ops: Vec<(u64, usize, Action)>, faults: Vec<(u64, FaultSpec)>, seed: u64, retention: Option<u64>, old_device: bool) -> Plan {
    let clients: Vec<ClientSpec> = (0..n)
        .map(|i| ClientSpec {
            name: format!("client-{}", i + 1),
            tenant: ["acme", "globex"][i % 2].into(),
            protocol_version: if old_device && i == 0 { 1 } else { 2 },
        })
        .collect();
    let name = |i: usize| if i.is_multiple_of(n + 1) { "server".to_string() } else { format!("client-{}", i % (n + 1)) };
    let device = |i: usize| format!("client-{}", i % n + 1);
    let mut planned: Vec<PlannedOp> = ops.into_iter().map(|(at_ms, c, action)| PlannedOp { at_ms, client: device(c), action }).collect();
    planned.sort_by_key(|o| o.at_ms);
    let mut scheduled = Vec::new();
    let mut transport = Vec::new();
    let mut store = StorePlan::default();
    for (at_ms, f) in faults {
        let fault = match f {
            FaultSpec::Crash { node, down_ms, mid_io } => Fault::Crash { node: name(node), down_ms, after_disk_ops: mid_io },
            FaultSpec::Partition { node, one_way, ms } => {
                let others: Vec<String> = (0..=n).map(name).filter(|x| *x != name(node)).collect();
                Fault::Partition { a: vec![name(node)], b: others, one_way, ms }
            }
            FaultSpec::IoError { node, op, nth, persistent, ms } => {
                let op = [IoOp::Read, IoOp::Write, IoOp::Sync, IoOp::Open][op as usize];
                Fault::IoError { node: name(node), op, nth, persistent, ms }
            }
            FaultSpec::ClockJump { node, delta_ms } => Fault::ClockJump { node: name(node), delta_ms },
            FaultSpec::Transport { node, kind, ms } => {
                transport.push(TransportFaultAt { at_ms, node: device(node), kind: TransportFaultKind::ALL[kind], ms });
                continue;
            }
            FaultSpec::ReadOnly { node, ms } => {
                store.read_only.push(ReadOnlyWindow { node: device(node), at_ms, ms });
                continue;
            }
            FaultSpec::KeyStoreLoss { node, down_ms, withheld } if withheld.is_empty() => {
                store.key_store_loss.push(KeyStoreLoss { node: device(node), at_ms, down_ms });
                continue;
            }
            FaultSpec::KeyStoreLoss { node, down_ms, withheld } => {
                let aggregates = withheld.iter().map(|n| format!("note-{n}")).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
                store.aggregate_key_loss.push(AggregateKeyLoss { node: device(node), at_ms, down_ms, aggregates });
                continue;
            }
        };
        scheduled.push(Scheduled { at_ms, fault });
    }
    scheduled.sort_by_key(|s| s.at_ms);
    transport.sort_by_key(|t| t.at_ms);
    let mut knobs = Knobs::lite();
    knobs.net.loss_probability = 0.02;
    Plan {
        format_version: PLAN_FORMAT_VERSION,
        seed,
        scenario: "sync-basic".into(),
        profile: Profile::None,
        clients,
        knobs,
        transport_knobs: TransportKnobs::none(),
        ops: planned,
        faults: scheduled,
        transport_faults: transport,
        mutations: Vec::new(),
        heal_at_ms: DURATION_MS + 500,
        liveness_ms_max: 30_000,
        server_retention: retention,
        blobs: None,
        jobs: None,
        store: if store == StorePlan::default() { None } else { Some(store) },
        drill: None,
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24)
}

/// Writes a failing plan where a developer can replay it, and returns the replay command.
fn keep(plan: &Plan) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/drill-proptest");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("plan-{}.json", &plan.hash()[..12]));
    let _ = std::fs::write(&path, serde_json::to_string_pretty(plan).unwrap_or_default());
    format!("drill run --plan {}", path.display())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 256,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_generated_plan_passes(plan in plan()) {
        prop_assert!(plan.validate().is_ok(), "the generator made an invalid plan: {:?}", plan.validate());
        let r = execute(&plan, None).expect("a valid plan runs");
        if r.outcome != Outcome::Pass {
            let replay = keep(&plan);
            prop_assert!(false, "{:?}: {:?}\nreplay: {replay}", r.outcome, r.violations.first());
        }
    }
}

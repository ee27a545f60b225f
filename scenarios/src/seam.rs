//! The seam the world's subsystems plug in through, the way a simulator plugs in its parts: the
//! world's core (`run.rs`) keeps the timeline, the nodes, the heal, the liveness phase and the
//! final judgement, and knows each subsystem (blobs, jobs, store and key work, ...) only as a
//! [`Subsystem`]: the steps its part of the plan puts on the timeline, what it does when one
//! comes due, and its hooks at the heal, in every convergence round, after convergence and at
//! the final judgement. [`crate::subsystems::all`] is the one list that names them.
//!
//! A subsystem acts through the [`Core`] the world lends it: the plan, the nodes, the devices'
//! mailboxes and contexts, the server; what it wants done later (its own steps, a node's boot,
//! a fault undone) it asks for, and the core puts it on the timeline in the order asked.
//!
//! On a device's side a subsystem is a [`DevicePart`]: made when the device process boots
//! ([`crate::subsystems::device_parts`] is that list), then called at the process's moments —
//! bound to the server, after a sync, around a snapshot, at the end of a sync round, for its own
//! user operations and world commands, and at the audit. The device process (`procs.rs`) names
//! none of them.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use drill_model::secrets::Secret;
use drill_model::Fact;
use drill_sim::rng::SeedTree;
use drill_sim::trace;
use drill_sim::world::{FaultStep, Nodes};
use drill_stack::client::Client;
use drill_stack::server::Server;
use madsim::task::NodeId;
use serde_json::json;

use crate::node::{lock, observe, ClientCtx, Mailbox, Parts, SharedRef, StoreCmd};
use crate::plan::{Action, ClientSpec, Plan};

/// One of a subsystem's own steps, opaque to the core.
pub type StepBox = Box<dyn Any>;

/// A future a hook returns (the world runs on one thread: nothing needs to be `Send`).
pub type Hook<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

/// What a subsystem gets to build itself with: its nodes are created and added here, in the
/// registry's order (node creation order is part of a seed's world).
pub struct Build<'a> {
    pub handle: &'a madsim::runtime::Handle,
    pub plan: &'a Plan,
    pub shared: &'a SharedRef,
    pub seeds: &'a SeedTree,
    pub nodes: &'a mut Nodes,
    pub server: NodeId,
    pub server_slot: &'a Arc<Mutex<Option<Server>>>,
}

/// What the core does later, when a subsystem asks for it.
pub enum Later {
    /// One of the asking subsystem's own steps.
    Step { at_ms: u64, step: StepBox },
    /// A node that went down boots.
    Boot { at_ms: u64, node: String },
    /// A fault of the world's own families (a partition undone, ...).
    Fault { at_ms: u64, step: FaultStep },
}

/// The world as a subsystem sees it while it acts.
pub struct Core<'a> {
    pub plan: &'a Plan,
    pub shared: &'a SharedRef,
    pub nodes: &'a mut Nodes,
    pub mailboxes: &'a BTreeMap<String, Arc<Mutex<Mailbox>>>,
    pub devices: &'a BTreeMap<String, Arc<ClientCtx>>,
    pub server: NodeId,
    pub server_slot: &'a Arc<Mutex<Option<Server>>>,
    /// Milliseconds since the world started.
    pub now_ms: u64,
    /// What the subsystem asked for, in order.
    pub later: Vec<Later>,
}

impl Core<'_> {
    /// Counts one fault of `kind` into the run's faults.
    pub fn count(&mut self, kind: &str) {
        *self.nodes.counts.entry(kind.into()).or_default() += 1;
    }

    /// Books a node that went down: see [`crashed`].
    pub fn crashed(&self, name: &str) {
        crashed(self.shared, self.mailboxes, name);
    }

    /// Asks for one of the subsystem's own steps `in_ms` from now.
    pub fn after(&mut self, in_ms: u64, step: impl Any) {
        self.later.push(Later::Step { at_ms: self.now_ms + in_ms, step: Box::new(step) });
    }

    /// Asks for `node` to boot `in_ms` from now.
    pub fn boot_after(&mut self, in_ms: u64, node: String) {
        self.later.push(Later::Boot { at_ms: self.now_ms + in_ms, node });
    }
}

/// A node went down: the model learns it crashed and its queued commands are dropped.
pub fn crashed(shared: &SharedRef, mailboxes: &BTreeMap<String, Arc<Mutex<Mailbox>>>, name: &str) {
    let line = trace::line_count();
    observe(shared, Fact::Crashed { node: name.into() }, line);
    if let Some(mb) = mailboxes.get(name) {
        let dropped = lock(mb).clear();
        if dropped > 0 {
            trace::emit(name, "op.dropped", json!({"queued": dropped}));
        }
    }
}

/// A part of the world that plugs in through the seam. Every hook but [`Subsystem::apply`] does
/// nothing unless the subsystem says otherwise.
pub trait Subsystem {
    /// Its steps of the plan, by time (in the order the core puts them on the timeline).
    fn steps(&self, plan: &Plan) -> Vec<(u64, StepBox)>;

    /// Does one of its steps, come due.
    fn apply(&mut self, step: StepBox, core: &mut Core<'_>);

    /// Its share of device `spec`, added to the device's parts before the device starts.
    fn parts(&self, _spec: &ClientSpec, parts: Parts) -> Parts {
        parts
    }

    /// Every fault ends (the nodes heal after this hook).
    fn heal(&mut self, _core: &mut Core<'_>) {}

    /// In each convergence round, before the core has `device` sync: the operator's standing
    /// answers (end a READ_ONLY period, repair keys, ...), pushed to its mailbox.
    fn converge_round(&self, _device: &str, _mailbox: &Mutex<Mailbox>) {}

    /// After the liveness phase (`converged` when every device converged): its final round.
    fn final_round<'a>(&'a self, _core: &'a Core<'a>, _converged: bool) -> Hook<'a> {
        Box::pin(async {})
    }

    /// At the end of the final judgement, after every device's audit: its own checks, with the
    /// secrets no disk image may hold and the line of the scan.
    fn judge<'a>(&'a self, _converged: bool, _secrets: &'a [Secret], _line: u64) -> Hook<'a> {
        Box::pin(async {})
    }

    /// Adds the faults it counted itself to the run's faults.
    fn add_counts(&self, _counts: &mut BTreeMap<String, u64>) {}

    /// Plaintexts of its part of the plan's workload, which no disk image may hold.
    fn secrets(&self, _plan: &Plan) -> Vec<Secret> {
        Vec::new()
    }
}

/// A subsystem's part of one device process, made when the device boots (after its store opened
/// and its projections caught up, before the model reads the store back). The process calls
/// every part at each of its moments, in the order of [`crate::subsystems::device_parts`];
/// each hook does nothing unless the part says otherwise.
pub trait DevicePart {
    /// The device is bound to the server, at boot.
    fn bound(&mut self, _ctx: &ClientCtx, _client: &mut Client) {}

    /// After a sync attempt (`synced`: it went through), before a snapshot that came due.
    fn after_sync<'a>(&'a mut self, _ctx: &'a ClientCtx, _client: &'a mut Client, _synced: bool) -> Hook<'a> {
        Box::pin(async {})
    }

    /// Right before the projections are snapshotted.
    fn before_snapshot(&mut self, _ctx: &ClientCtx, _client: &mut Client) {}

    /// Right after the snapshots `ids` were taken.
    fn after_snapshot(&mut self, _client: &Client, _ids: &[u64]) {}

    /// At the end of a sync round, after its snapshot.
    fn after_round(&mut self, _ctx: &ClientCtx, _client: &mut Client, _synced: bool) {}

    /// The hook that runs user operation `action` (`id` 0: the round after the heal), when the
    /// operation is this part's.
    fn user_op<'a>(&'a mut self, _ctx: &'a ClientCtx, _client: &'a mut Client, _id: u64, _action: &'a Action) -> Option<Hook<'a>> {
        None
    }

    /// A command of the world's to the device's store work.
    fn command(&mut self, _ctx: &ClientCtx, _client: &mut Client, _cmd: &StoreCmd) {}

    /// The end-of-run audit (`converged` when every device converged).
    fn audit<'a>(&'a mut self, _ctx: &'a ClientCtx, _client: &'a mut Client, _converged: bool) -> Hook<'a> {
        Box::pin(async {})
    }

    /// At the audit: key material this part's work keeps for the device, which no disk image
    /// may hold.
    fn secrets(&self, _ctx: &ClientCtx) -> Vec<Secret> {
        Vec::new()
    }
}

/// Downcasts a step the core hands back to the subsystem that asked for it.
pub fn step_of<T: Any>(step: StepBox) -> T {
    *step.downcast::<T>().unwrap_or_else(|_| panic!("a step that is not a {}", std::any::type_name::<T>()))
}

//! drill-model: the reference model and the invariant registry.
//!
//! Pure: the model sees the history (facts in trace order) and state read back from the stack
//! (snapshots), and knows what must be true. It does no I/O and knows nothing of madsim or
//! SQLite. Writes in flight at a crash are *uncertain*: the model keeps them as possibilities
//! until a snapshot taken after the node recovered settles them.

pub mod blobs;
pub mod checker;
pub mod facts;
pub mod group;
pub mod invariants;
pub mod jobs;
pub mod recovery;
pub mod secrets;
pub mod server_dr;
pub mod store;
pub mod store_ops;
mod verified;

pub use checker::Checker;
pub use facts::{ClientSnapshot, EventFact, Fact, OutboxFact, ServerSnapshot};
pub use invariants::{Invariant, REGISTRY};

use serde::{Deserialize, Serialize};

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Invariant id, for example `INV-DURABLE`.
    pub invariant: String,
    /// Node name, for example `client-2`, or `world` when no single node is at fault.
    pub node: String,
    /// 1-based line of `trace.jsonl` at which the violation was found.
    pub trace_line: u64,
    /// What was expected and what was found.
    pub message: String,
}

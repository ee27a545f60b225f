//! drill-sim: the simulated world. It knows nothing of the stack under test.
//!
//! - [`rng`]: the seed tree of labelled ChaCha8 streams.
//! - [`disk`]: one file system per node behind the SQLite VFS `drill`.
//! - [`clock`]: node clocks (simulated time plus skew).
//! - [`trace`]: the trace recorder and its fingerprint.
//! - [`world`]: building and running a world of nodes under madsim.

pub mod clock;
pub mod disk;
pub mod faults;
pub mod rng;
pub mod trace;
pub mod world;

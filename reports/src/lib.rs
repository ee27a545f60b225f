//! drill-reports: the files drill writes about its runs, as plain serde types.
//!
//! - [`Summary`]: one run's `summary.json`.
//! - [`SweepSummary`]: a sweep's `summary.json`, with one [`FailingSeed`] per failing seed.
//! - [`GateSummary`]: a gate's `summary.json`, rendered by [`render_junit`],
//!   [`render_markdown`] and [`render_dashboard`]; a sweep's reports are rendered from
//!   [`GateSummary::of_sweep`].
//! - [`render_timeline`]: a run's `report.html`.
//!
//! The types live here, apart from the world, so that renderers (markdown, JUnit XML, HTML) and
//! outside tools can read drill's output without building madsim or SQLite. Readers ignore fields
//! they do not know, so adding a field keeps `format_version`; changing one's meaning bumps it.

mod dashboard;
pub mod gate;
pub mod html;
mod junit;
mod markdown;
mod outcome;
mod summary;
mod sweep;
pub mod timeline;

pub use dashboard::render_dashboard;
pub use gate::{GateSummary, Verdict};
pub use junit::render_junit;
pub use markdown::render_markdown;
pub use outcome::{Outcome, OutcomeCounts};
pub use summary::{add_drills, DrillCoverage, PlantedBug, Summary, Violation};
pub use sweep::{add_counts, FailingSeed, SeedRange, Shard, SweepSummary};
pub use timeline::render_timeline;

/// The `format_version` every summary this build writes carries.
pub const FORMAT_VERSION: u32 = 1;

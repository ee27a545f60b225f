//! Runbook 003 §2, §3.
use super::Drill;
pub const DRILLS: &[Drill] = &[];

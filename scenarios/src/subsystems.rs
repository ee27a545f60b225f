//! The world's subsystems, in one list: every part of the world beyond the server and the
//! devices' sync plugs in here, through the seam ([`crate::seam`]). Adding a subsystem is one
//! file with its steps and its [`Subsystem`] impl, and one line here; the world's core names
//! none of them.

use crate::blobs_world::BlobWorld;
use crate::jobs_world::JobsWorld;
use crate::seam::{Build, Subsystem};
use crate::store_world::StoreWorld;

/// The subsystems a plan's world has, built in this order (the order their nodes are created,
/// their steps are put on the timeline and their hooks run).
pub fn all(b: &mut Build<'_>) -> Vec<Box<dyn Subsystem>> {
    let mut out: Vec<Box<dyn Subsystem>> = Vec::new();
    if b.plan.blobs.is_some() {
        out.push(Box::new(BlobWorld::build(b)));
    }
    if b.plan.jobs.is_some() {
        out.push(Box::new(JobsWorld::build(b)));
    }
    out.push(Box::new(StoreWorld::build(b)));
    out
}

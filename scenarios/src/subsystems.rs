//! The world's subsystems, in one list: every part of the world beyond the server and the
//! devices' sync plugs in here, through the seam ([`crate::seam`]). Adding a subsystem is one
//! file with its steps and its [`Subsystem`] impl, and one line here; the world's core names
//! none of them.

use drill_stack::client::Client;

use crate::blobs_world::{BlobDevice, BlobWorld};
use crate::group_world::KeysDevice;
use crate::jobs_world::JobsWorld;
use crate::node::ClientCtx;
use crate::seam::{Build, DevicePart, Subsystem};
use crate::store_ops::Device as StoreDevice;
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

/// The parts of a device process, made at its boot `start` in this order (the order their hooks
/// run): the store's own work (which resumes at once: a migration, the projections' check, the
/// artifact, the sagas), the vault and group keys, the blob client.
pub async fn device_parts(ctx: &ClientCtx, client: &mut Client, start: u64) -> Vec<Box<dyn DevicePart>> {
    let store = StoreDevice::boot(ctx, client).await;
    vec![Box::new(store), Box::new(KeysDevice { start }), Box::new(BlobDevice::new(client.boots()))]
}

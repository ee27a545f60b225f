//! The model of one simulated file: what is durable, what the OS shows, and what is pending.
//!
//! The durability model, written down:
//! - Every write, truncate, create and delete since the file's last sync is *pending*, in order.
//! - `sync` makes the file's pending entries durable, in order.
//! - A crash keeps, drops or tears each pending entry independently (the device claims no
//!   sequential or atomic writes). A torn write lands per sector: each sector it touches ends up
//!   new, old, or garbage (the whole sector, since the device does not claim powersafe overwrite).
//! - A file whose current incarnation was never synced vanishes in a crash.
//! - A delete is pending until a sync: of the directory (`sync_dir`), or of any file of the same
//!   node, because file systems that journal their metadata commit namespace changes in order
//!   with the next sync (see `NodeDisk::flush_deletes`). SQLite's documented behaviour follows:
//!   with a DELETE journal and `synchronous=FULL` the last commit can roll back after a crash.

use rand::Rng;

use crate::rng::Stream;

/// One entry of the pending log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    Write { offset: u64, data: Vec<u8> },
    Truncate { size: u64 },
    Create,
    Delete,
}

/// What a crash did to one pending entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Kept,
    Dropped,
    Torn,
}

/// How a crash treats pending entries: probabilities of keep and tear; the rest are dropped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CrashModel {
    pub keep_probability: f64,
    pub tear_probability: f64,
    pub sector_size: usize,
}

/// Counts of what a crash did, for the trace.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CrashTally {
    pub kept: u64,
    pub dropped: u64,
    pub torn: u64,
    pub vanished: u64,
}

/// One file by name.
#[derive(Debug, Clone, Default)]
pub struct FileEntry {
    /// The image a crash would start from; `None` when the file does not exist durably.
    pub durable: Option<Vec<u8>>,
    /// The image reads see now; `None` when the file does not exist now.
    pub current: Option<Vec<u8>>,
    pub pending: Vec<Pending>,
}

impl FileEntry {
    /// A file created now, not yet durable.
    pub fn created() -> Self {
        FileEntry { durable: None, current: Some(Vec::new()), pending: vec![Pending::Create] }
    }

    /// Re-creates a file that exists durably but was deleted (pending) since.
    pub fn recreate(&mut self) {
        self.current = Some(Vec::new());
        self.pending.push(Pending::Create);
    }

    pub fn exists(&self) -> bool {
        self.current.is_some()
    }

    pub fn len(&self) -> u64 {
        self.current.as_ref().map(|c| c.len() as u64).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads into `buf`; returns the number of bytes that existed (the rest is zero-filled).
    pub fn read(&self, buf: &mut [u8], offset: u64) -> usize {
        let data = self.current.as_deref().unwrap_or(&[]);
        let start = (offset as usize).min(data.len());
        let n = (data.len() - start).min(buf.len());
        buf[..n].copy_from_slice(&data[start..start + n]);
        buf[n..].fill(0);
        n
    }

    pub fn write(&mut self, data: &[u8], offset: u64) {
        let Some(cur) = self.current.as_mut() else { return };
        write_at(cur, data, offset);
        self.pending.push(Pending::Write { offset, data: data.to_vec() });
    }

    pub fn truncate(&mut self, size: u64) {
        let Some(cur) = self.current.as_mut() else { return };
        cur.resize(size as usize, 0);
        self.pending.push(Pending::Truncate { size });
    }

    /// Makes every pending entry durable.
    pub fn sync(&mut self) {
        if self.current.is_none() {
            return;
        }
        let mut img = self.durable.take();
        for p in self.pending.drain(..) {
            apply(&mut img, &p, true);
        }
        self.durable = img;
        debug_assert_eq!(self.durable, self.current, "sync must make durable equal current");
    }

    /// Deletes the file; with `sync_dir` the deletion is durable at once.
    pub fn delete(&mut self, sync_dir: bool) {
        self.current = None;
        if sync_dir {
            self.durable = None;
            self.pending.clear();
        } else {
            self.pending.push(Pending::Delete);
        }
    }

    /// Makes a pending delete durable (a later sync elsewhere on the node committed it), with
    /// everything before it. Returns whether nothing is left of the file.
    pub fn flush_deletes(&mut self) -> bool {
        if let Some(pos) = self.pending.iter().rposition(|p| matches!(p, Pending::Delete)) {
            self.durable = None;
            self.pending.drain(..=pos);
        }
        self.durable.is_none() && self.current.is_none() && self.pending.is_empty()
    }

    /// Applies a crash: each pending entry kept, dropped or torn. Returns whether the file still
    /// exists, and adds to `tally`.
    pub fn crash(&mut self, model: &CrashModel, rng: &mut Stream, tally: &mut CrashTally) -> bool {
        let mut img = self.durable.take();
        // Whether later writes still reach the incarnation that survives. A `Create` in the log
        // starts an incarnation that was never synced (a sync empties the log), so nothing
        // written to it survives; a delete, kept or not, ends the old one's writes.
        let mut live = true;
        for p in std::mem::take(&mut self.pending) {
            match p {
                Pending::Create => {
                    live = false;
                    tally.vanished += 1;
                }
                Pending::Delete => {
                    live = false;
                    if choose(model, rng, false) == Outcome::Kept {
                        tally.kept += 1;
                        img = None;
                    } else {
                        tally.dropped += 1;
                    }
                }
                Pending::Write { .. } | Pending::Truncate { .. } if live => {
                    let can_tear = matches!(p, Pending::Write { .. });
                    match choose(model, rng, can_tear) {
                        Outcome::Kept => {
                            tally.kept += 1;
                            apply(&mut img, &p, false);
                        }
                        Outcome::Dropped => tally.dropped += 1,
                        Outcome::Torn => {
                            tally.torn += 1;
                            if let (Some(buf), Pending::Write { offset, data }) = (img.as_mut(), &p) {
                                tear(buf, data, *offset, model.sector_size, rng);
                            }
                        }
                    }
                }
                Pending::Write { .. } | Pending::Truncate { .. } => {}
            }
        }
        self.durable = img.clone();
        self.current = img;
        self.current.is_some()
    }
}

fn choose(model: &CrashModel, rng: &mut Stream, can_tear: bool) -> Outcome {
    let x: f64 = rng.gen();
    if x < model.keep_probability {
        Outcome::Kept
    } else if can_tear && x < model.keep_probability + model.tear_probability {
        Outcome::Torn
    } else {
        Outcome::Dropped
    }
}

fn write_at(buf: &mut Vec<u8>, data: &[u8], offset: u64) {
    let off = offset as usize;
    // Files grow mostly by appends (WAL frames, new pages): extend rather than zero-fill and
    // overwrite, which cost as much as the copy itself. A hole before `off` reads as zeros.
    if buf.len() < off {
        buf.resize(off, 0);
    }
    let overlap = (buf.len() - off).min(data.len());
    buf[off..off + overlap].copy_from_slice(&data[..overlap]);
    buf.extend_from_slice(&data[overlap..]);
}

/// Applies one entry to an image. `creating` allows a `Create` to bring a missing file into being.
fn apply(img: &mut Option<Vec<u8>>, p: &Pending, creating: bool) {
    match p {
        Pending::Create => {
            if img.is_none() && creating {
                *img = Some(Vec::new());
            }
        }
        Pending::Delete => *img = None,
        Pending::Write { offset, data } => {
            if let Some(buf) = img.as_mut() {
                write_at(buf, data, *offset);
            }
        }
        Pending::Truncate { size } => {
            if let Some(buf) = img.as_mut() {
                buf.resize(*size as usize, 0);
            }
        }
    }
}

/// Lands a write sector by sector: each touched sector ends up new, old, or garbage.
fn tear(buf: &mut Vec<u8>, data: &[u8], offset: u64, sector: usize, rng: &mut Stream) {
    let start = offset as usize;
    let end = start + data.len();
    let mut s = start / sector * sector;
    while s < end {
        let e = s + sector;
        match rng.gen_range(0..3u8) {
            0 => {
                let lo = s.max(start);
                let hi = e.min(end);
                write_at(buf, &data[lo - start..hi - start], lo as u64);
            }
            1 => {}
            _ => {
                let mut junk = vec![0u8; sector];
                rng.fill(&mut junk[..]);
                write_at(buf, &junk, s as u64);
            }
        }
        s = e;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeedTree;

    fn model(keep: f64, tear: f64) -> CrashModel {
        CrashModel { keep_probability: keep, tear_probability: tear, sector_size: 512 }
    }

    #[test]
    fn writes_land_inside_across_and_past_the_end() {
        let mut buf = b"abcdef".to_vec();
        write_at(&mut buf, b"XY", 1);
        assert_eq!(buf, b"aXYdef");
        write_at(&mut buf, b"123", 4);
        assert_eq!(buf, b"aXYd123");
        write_at(&mut buf, b"z", 7);
        assert_eq!(buf, b"aXYd123z");
        write_at(&mut buf, b"!", 10);
        assert_eq!(buf, b"aXYd123z\0\0!");
        write_at(&mut buf, b"", 20);
        assert_eq!(buf.len(), 20, "an empty write past the end still extends the file, as before");
    }

    #[test]
    fn synced_data_survives_any_crash() {
        let mut f = FileEntry::created();
        f.write(b"hello", 0);
        f.sync();
        f.write(b"HELLO", 0);
        let mut rng = SeedTree::new(1).stream("t");
        let mut t = CrashTally::default();
        assert!(f.crash(&model(0.0, 0.0), &mut rng, &mut t));
        assert_eq!(f.current.as_deref(), Some(&b"hello"[..]));
        assert_eq!(t.dropped, 1);
    }

    #[test]
    fn never_synced_file_vanishes() {
        let mut f = FileEntry::created();
        f.write(b"data", 0);
        let mut rng = SeedTree::new(1).stream("t");
        let mut t = CrashTally::default();
        assert!(!f.crash(&model(1.0, 0.0), &mut rng, &mut t));
        assert_eq!(t.vanished, 1);
    }

    #[test]
    fn kept_entries_apply_in_order() {
        let mut f = FileEntry::created();
        f.sync();
        f.write(b"aaaa", 0);
        f.truncate(2);
        let mut rng = SeedTree::new(1).stream("t");
        f.crash(&model(1.0, 0.0), &mut rng, &mut CrashTally::default());
        assert_eq!(f.current.as_deref(), Some(&b"aa"[..]));
    }

    #[test]
    fn pending_delete_can_be_undone_by_crash() {
        let mut f = FileEntry::created();
        f.write(b"journal", 0);
        f.sync();
        f.delete(false);
        assert!(!f.exists());
        let mut rng = SeedTree::new(1).stream("t");
        assert!(f.crash(&model(0.0, 0.0), &mut rng, &mut CrashTally::default()));
        assert_eq!(f.current.as_deref(), Some(&b"journal"[..]));
    }

    #[test]
    fn recreated_file_after_kept_delete_vanishes() {
        let mut f = FileEntry::created();
        f.write(b"old", 0);
        f.sync();
        f.delete(false);
        f.recreate();
        f.write(b"new", 0);
        let mut rng = SeedTree::new(1).stream("t");
        assert!(!f.crash(&model(1.0, 0.0), &mut rng, &mut CrashTally::default()));
    }

    #[test]
    fn torn_write_lands_per_sector() {
        let mut seen_mixed = false;
        for seed in 0..64 {
            let mut f = FileEntry::created();
            f.write(&vec![0u8; 2048], 0);
            f.sync();
            f.write(&vec![1u8; 2048], 0);
            let mut rng = SeedTree::new(seed).stream("t");
            f.crash(&model(0.0, 1.0), &mut rng, &mut CrashTally::default());
            let img = f.current.unwrap();
            assert_eq!(img.len(), 2048);
            let sectors: Vec<&[u8]> = img.chunks(512).collect();
            let new = sectors.iter().filter(|s| s.iter().all(|&b| b == 1)).count();
            let old = sectors.iter().filter(|s| s.iter().all(|&b| b == 0)).count();
            if new > 0 && new < 4 && old < 4 {
                seen_mixed = true;
            }
        }
        assert!(seen_mixed, "tearing never mixed sectors in 64 trials");
    }

    #[test]
    fn sync_dir_delete_is_durable() {
        let mut f = FileEntry::created();
        f.write(b"x", 0);
        f.sync();
        f.delete(true);
        let mut rng = SeedTree::new(1).stream("t");
        assert!(!f.crash(&model(0.0, 0.0), &mut rng, &mut CrashTally::default()));
    }
}

//! The stack's [`FileSystem`] on the simulated disk of the node a process runs on.
//!
//! A `SimFs` is taken when a process boots and keeps that boot's crash generation (through
//! [`NodeFiles`]): while its node is down, and forever after the node crashed, every call is
//! refused with [`FsError::Refused`] and changes nothing, so a killed process cannot touch the
//! files of its successor. Databases are opened by name through the VFS `drill`, which finds the
//! same node's disk.

use drill_sim::disk::{FileError, NodeFiles};
use drill_stack::fs::{FileSystem, FsError};

/// Whole files of one node, for the process that took them.
#[derive(Clone)]
pub struct SimFs {
    files: NodeFiles,
}

impl SimFs {
    /// The files of the calling madsim node, for its current boot.
    pub fn current() -> SimFs {
        SimFs { files: NodeFiles::current() }
    }

    /// The files of a given node's current boot (for the world's own reads).
    pub fn of(files: NodeFiles) -> SimFs {
        SimFs { files }
    }
}

fn map(e: FileError) -> FsError {
    match e {
        FileError::Refused => FsError::Refused,
        FileError::NotFound { name } => FsError::NotFound { name },
        FileError::Full { name } => FsError::Full { name },
        FileError::Io { op, name } => FsError::Io { detail: format!("{op} {name}") },
    }
}

impl FileSystem for SimFs {
    fn write_all(&self, name: &str, data: &[u8]) -> Result<(), FsError> {
        self.files.write(name, data).map_err(map)
    }

    fn append(&self, name: &str, data: &[u8]) -> Result<(), FsError> {
        self.files.append(name, data).map_err(map)
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, FsError> {
        self.files.read(name).map_err(map)
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), FsError> {
        self.files.rename(from, to).map_err(map)
    }

    fn remove(&self, name: &str) -> Result<(), FsError> {
        self.files.delete(name).map_err(map)
    }

    fn sync(&self, name: &str) -> Result<(), FsError> {
        self.files.sync(name).map_err(map)
    }

    fn sync_dir(&self) -> Result<(), FsError> {
        self.files.sync_dir().map_err(map)
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, FsError> {
        self.files.list(prefix).map_err(map)
    }

    fn exists(&self, name: &str) -> Result<bool, FsError> {
        self.files.exists(name).map_err(map)
    }

    fn db_path(&self, name: &str) -> String {
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drill_sim::disk::{DiskConfig, DiskFaults, DiskSim};
    use drill_sim::rng::SeedTree;
    use drill_sim::world::{NetConfig, Runtime};
    use drill_stack::jobs::db::JobsDb;
    use drill_stack::jobs::export::{export, validate_snapshot, LockOwner};

    #[test]
    fn the_jobs_stack_runs_on_the_simulated_disk_and_a_stale_boot_is_refused() {
        let seeds = SeedTree::new(5);
        let rt = Runtime::new(seeds, NetConfig::default(), DiskConfig::default(), std::time::Duration::from_secs(60));
        rt.block_on(async move {
            let disk = DiskSim::current();
            let node = madsim::plugin::node();
            disk.add_node(node, "jobs", DiskFaults::none(), &seeds);
            let fs = SimFs::current();
            let db = JobsDb::open(&fs, "jobs.db").unwrap();
            let me = LockOwner { process: "jobs".into(), boot: 1 };
            export(&fs, &db, "export", &me, 0).unwrap();
            assert_eq!(validate_snapshot(&fs, "export").unwrap().manifest.files.len(), 3);
            assert!(disk.files(node).iter().any(|f| f == "jobs.db"), "the database is on the node's disk");
            drop(db);
            disk.crash(node);
            disk.boot(node);
            assert_eq!(fs.read("export/manifest.json"), Err(FsError::Refused));
            let fs = SimFs::current();
            validate_snapshot(&fs, "export").unwrap();
        });
    }
}

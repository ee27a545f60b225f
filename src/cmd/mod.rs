//! One module per subcommand; each returns the process exit code.

pub mod bench;
pub mod determinism;
pub mod gate;
pub mod list;
pub mod merge;
pub mod replay;
pub mod run;
pub mod shrink;
pub mod sweep;
pub mod timeline;

use std::collections::BTreeMap;

/// Worker processes for `total` jobs: as asked but never more than the machine's cores (a note
/// says so when `--jobs` asked for more), else one per core, and never more than jobs.
pub fn worker_count(requested: Option<usize>, total: u64) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (workers, note) = capped(requested, cores, total);
    if let Some(note) = note {
        eprintln!("{note}");
    }
    workers
}

/// [`worker_count`] for a machine of `cores` cores, with the note to print.
fn capped(requested: Option<usize>, cores: usize, total: u64) -> (usize, Option<String>) {
    let wanted = requested.unwrap_or(cores);
    let note = (wanted > cores).then(|| format!("note: --jobs {wanted} is more than this machine's {cores} cores; using {cores} workers"));
    let total = usize::try_from(total).unwrap_or(usize::MAX);
    (wanted.min(cores).min(total).max(1), note)
}

/// `crash 2, partition 1`, or `none`.
pub fn counts_line(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".to_string();
    }
    counts.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
}

/// `1 seed`, `2 seeds`.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_more_workers_than_jobs_or_cores() {
        assert_eq!(capped(Some(8), 16, 3), (3, None));
        assert_eq!(capped(Some(2), 16, 100), (2, None));
        assert_eq!(capped(None, 4, 100), (4, None));
        let (n, note) = capped(Some(10_000), 2, 100);
        assert_eq!(n, 2);
        assert!(note.unwrap().contains("--jobs 10000 is more than this machine's 2 cores"));
    }

    #[test]
    fn counts_read_as_one_line() {
        let c = BTreeMap::from([("partition".to_string(), 1), ("crash".to_string(), 2)]);
        assert_eq!(counts_line(&c), "crash 2, partition 1");
        assert_eq!(counts_line(&BTreeMap::new()), "none");
        assert_eq!((count(1, "seed", "seeds"), count(0, "seed", "seeds")), ("1 seed".into(), "0 seeds".into()));
    }
}

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

/// Worker processes for `total` jobs: as asked, else one per CPU, and never more than jobs.
pub fn worker_count(requested: Option<usize>, total: u64) -> usize {
    let wanted = requested.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let total = usize::try_from(total).unwrap_or(usize::MAX);
    wanted.min(total).max(1)
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
    fn never_more_workers_than_jobs() {
        assert_eq!(worker_count(Some(8), 3), 3);
        assert_eq!(worker_count(Some(2), 100), 2);
        assert!(worker_count(None, 100) >= 1);
    }

    #[test]
    fn counts_read_as_one_line() {
        let c = BTreeMap::from([("partition".to_string(), 1), ("crash".to_string(), 2)]);
        assert_eq!(counts_line(&c), "crash 2, partition 1");
        assert_eq!(counts_line(&BTreeMap::new()), "none");
        assert_eq!((count(1, "seed", "seeds"), count(0, "seed", "seeds")), ("1 seed".into(), "0 seeds".into()));
    }
}

//! A sweep's `summary.json`: many seeds of one scenario and profile.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Outcome, OutcomeCounts, Violation};

/// A non-empty range of seeds, both ends included (so every range of `u64` seeds fits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedRange {
    pub first: u64,
    pub last: u64,
}

impl SeedRange {
    /// How many seeds the range holds; `None` only for the full `0..=u64::MAX`.
    pub fn len(&self) -> Option<u64> {
        (self.last - self.first).checked_add(1)
    }

    /// Always false: a range holds at least its first seed.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The seeds in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> {
        self.first..=self.last
    }
}

impl fmt::Display for SeedRange {
    /// Writes the range the way `--seeds` reads it: `A..B` (B excluded) when B fits in a u64.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.last.checked_add(1) {
            Some(end) => write!(f, "{}..{}", self.first, end),
            None => write!(f, "{}..={}", self.first, self.last),
        }
    }
}

/// One of `count` disjoint slices of a seed range: shard `index` (1-based) holds the seeds `s`
/// with `s mod count = index - 1`. A seed's shard depends only on the seed, so the shards of any
/// range are disjoint and together hold every seed, each with an even share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Shard {
    /// 1..=count.
    pub index: u64,
    pub count: u64,
}

impl Shard {
    /// Whether `seed` belongs to this shard.
    pub fn contains(&self, seed: u64) -> bool {
        seed % self.count == self.index - 1
    }

    /// How many seeds of `range` belong to this shard.
    pub fn len_in(&self, range: SeedRange) -> u64 {
        let below = |end: u64| -> u64 {
            // Seeds s in 0..end with s mod count = index - 1.
            let r = self.index - 1;
            if end <= r {
                0
            } else {
                (end - 1 - r) / self.count + 1
            }
        };
        let upto_last = below(range.last).saturating_add(u64::from(self.contains(range.last)));
        upto_last - below(range.first)
    }
}

impl fmt::Display for Shard {
    /// `I/N`, as `--shard` reads it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// One seed that did not pass, with what is needed to look at it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailingSeed {
    pub seed: u64,
    pub outcome: Outcome,
    /// The first violation the run reported, if it reported any.
    pub first_violation: Option<Violation>,
    /// The shell command that runs this seed again.
    pub replay: String,
    /// The folder holding this seed's `trace.jsonl`, `plan.json` and `summary.json`.
    pub folder: String,
}

/// Everything a sweep found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepSummary {
    /// Always [`crate::FORMAT_VERSION`] when written by this build.
    pub format_version: u32,
    pub drill_version: String,
    pub scenario: String,
    pub profile: String,
    pub seeds: SeedRange,
    /// The shard of `seeds` this sweep ran, when it ran one; `None` for every seed of the range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
    /// Runs by outcome; they add up to the number of seeds.
    pub counts: OutcomeCounts,
    /// The worst outcome of any seed; the sweep's exit code is its exit code.
    pub outcome: Outcome,
    /// Seeds that did not pass, in seed order.
    pub failing: Vec<FailingSeed>,
    /// Faults injected over all seeds, summed by kind.
    pub faults: BTreeMap<String, u64>,
    /// Invariant checks over all seeds, summed by invariant id.
    pub checks: BTreeMap<String, u64>,
    /// Worker processes used.
    pub jobs: usize,
    /// Wall-clock time of the whole sweep.
    pub wall_seconds: f64,
    /// Seeds finished per wall-clock second.
    pub seeds_per_second: f64,
    /// The drill coverage table over all seeds: runs, exercised and passed per drill.
    #[serde(default)]
    pub drills: BTreeMap<String, crate::DrillCoverage>,
    /// The folders `drill merge` joined into this summary; empty for a sweep's own summary. A
    /// sweep or gate never replaces a folder that holds a merge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<String>,
    /// True when a signal (SIGINT, SIGTERM) stopped the sweep before every seed ran: the counts
    /// are of the seeds that finished, and the exit code is 130.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

/// Adds every count of `from` into `into` (faults by kind, checks by invariant).
pub fn add_counts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (key, n) in from {
        *into.entry(key.clone()).or_insert(0) += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SweepSummary {
        let mut counts = OutcomeCounts::default();
        counts.add(Outcome::Pass);
        counts.add(Outcome::Liveness);
        SweepSummary {
            format_version: crate::FORMAT_VERSION,
            drill_version: "0.1.0".into(),
            scenario: "sync-basic".into(),
            profile: "swarm".into(),
            seeds: SeedRange { first: 10, last: 11 },
            shard: None,
            counts,
            outcome: counts.worst(),
            failing: vec![FailingSeed {
                seed: 11,
                outcome: Outcome::Liveness,
                first_violation: None,
                replay: "drill run --seed 11 --scenario sync-basic --profile swarm".into(),
                folder: "drill-out/sweep/seed-11".into(),
            }],
            faults: BTreeMap::from([("crash".into(), 3)]),
            checks: BTreeMap::new(),
            jobs: 2,
            wall_seconds: 0.5,
            seeds_per_second: 4.0,
            drills: BTreeMap::new(),
            merged_from: vec![],
            interrupted: false,
        }
    }

    #[test]
    fn round_trips_through_json() {
        let s = sample();
        let json = serde_json::to_string_pretty(&s).unwrap();
        assert_eq!(serde_json::from_str::<SweepSummary>(&json).unwrap(), s);
    }

    #[test]
    fn writes_counts_by_outcome_name() {
        let v = serde_json::to_value(sample()).unwrap();
        assert_eq!(v["counts"]["liveness"], 1);
        assert_eq!(v["outcome"], "liveness");
        assert_eq!(v["seeds"]["first"], 10);
        assert_eq!(v["failing"][0]["folder"], "drill-out/sweep/seed-11");
    }

    #[test]
    fn totals_add_up_by_key() {
        let mut faults = sample().faults;
        add_counts(&mut faults, &BTreeMap::from([("crash".into(), 2), ("partition".into(), 1)]));
        assert_eq!(faults, BTreeMap::from([("crash".into(), 5), ("partition".into(), 1)]));
    }

    #[test]
    fn shards_split_a_range_evenly_and_disjointly() {
        let range = SeedRange { first: 1, last: 10 };
        let mut seen = Vec::new();
        for index in 1..=4 {
            let shard = Shard { index, count: 4 };
            let seeds: Vec<u64> = range.iter().filter(|s| shard.contains(*s)).collect();
            assert_eq!(shard.len_in(range), seeds.len() as u64, "{shard}");
            seen.extend(seeds);
        }
        seen.sort();
        assert_eq!(seen, range.iter().collect::<Vec<_>>());
        let top = SeedRange { first: u64::MAX - 5, last: u64::MAX };
        let n: u64 = (1..=3).map(|index| Shard { index, count: 3 }.len_in(top)).sum();
        assert_eq!(n, 6);
    }

    #[test]
    fn ranges_count_and_print_like_the_cli_reads_them() {
        let r = SeedRange { first: 0, last: 99 };
        assert_eq!((r.len(), r.to_string()), (Some(100), "0..100".to_string()));
        let top = SeedRange { first: u64::MAX - 1, last: u64::MAX };
        assert_eq!((top.len(), top.to_string()), (Some(2), format!("{}..={}", u64::MAX - 1, u64::MAX)));
        assert_eq!(SeedRange { first: 0, last: u64::MAX }.len(), None);
        assert_eq!(SeedRange { first: 3, last: 5 }.iter().collect::<Vec<_>>(), [3, 4, 5]);
    }
}

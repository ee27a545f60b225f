//! A gate's `summary.json`, its verdict, and merging the summaries of shards.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{add_counts, FailingSeed, Outcome, OutcomeCounts, SeedRange, Shard, SweepSummary};

/// The value of [`GateSummary::kind`], which tells a gate's summary.json from a sweep's.
pub const GATE_KIND: &str = "gate";
/// The value of [`GateSummary::kind`] for a sweep viewed as a gate ([`GateSummary::of_sweep`]),
/// which only drill's renderers see: a sweep's summary.json is the [`SweepSummary`] itself.
pub const SWEEP_KIND: &str = "sweep";
/// Slowest runs a gate summary lists.
pub const SLOWEST_MAX: usize = 10;

/// Exit code of a gate, sweep or merge stopped by SIGINT or SIGTERM.
pub const EXIT_INTERRUPTED: i32 = 130;

/// A gate's verdict. The worst run decides first; only when every run passed can coverage fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Violation,
    Liveness,
    Nondeterminism,
    /// Every run passed, but something the gate promises was not covered: a drill not
    /// exercised, an invariant never checked, or seeds left unrun when the time budget ran out.
    Shortfall,
}

impl Verdict {
    /// Exit codes: 0, 1, 3, 4 as for runs, and 5 for a coverage shortfall.
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Pass => 0,
            Verdict::Violation => 1,
            Verdict::Liveness => 3,
            Verdict::Nondeterminism => 4,
            Verdict::Shortfall => 5,
        }
    }

    /// `pass`, `violation`, `liveness`, `nondeterminism` or `shortfall`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Violation => "violation",
            Verdict::Liveness => "liveness",
            Verdict::Nondeterminism => "nondeterminism",
            Verdict::Shortfall => "shortfall",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Outcome> for Verdict {
    fn from(o: Outcome) -> Verdict {
        match o {
            Outcome::Pass => Verdict::Pass,
            Outcome::Violation => Verdict::Violation,
            Outcome::Liveness => Verdict::Liveness,
            Outcome::Nondeterminism => Verdict::Nondeterminism,
        }
    }
}

/// The seeds of one drill (a scenario other than the gate's main one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillResult {
    /// The scenario's name.
    pub name: String,
    pub profile: String,
    pub seeds: SeedRange,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
    pub counts: OutcomeCounts,
    pub failing: Vec<FailingSeed>,
    pub faults: BTreeMap<String, u64>,
    pub checks: BTreeMap<String, u64>,
    /// Runs in which the drill was exercised (its failure happened and its recovery ran).
    pub exercised_runs: u64,
    /// Runs in which it was exercised and the run passed.
    #[serde(default)]
    pub passed_runs: u64,
}

/// What one drill's runs under one profile came to, against the seeds the gate needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrillVerdict {
    /// Exercised and passed on at least the seeds needed, and no run failed.
    Passed,
    /// A run failed.
    Failed,
    /// No run failed, but fewer than the seeds needed exercised the drill and passed.
    Short,
}

impl DrillVerdict {
    /// How the reports say it.
    pub fn label(self) -> &'static str {
        match self {
            DrillVerdict::Passed => "exercised and passed",
            DrillVerdict::Failed => "failed",
            DrillVerdict::Short => "not exercised enough",
        }
    }
}

impl DrillResult {
    /// Its verdict when each drill must be exercised and passed on at least `needed` seeds.
    pub fn verdict(&self, needed: u64) -> DrillVerdict {
        if self.counts.failing() > 0 {
            DrillVerdict::Failed
        } else if self.exercised_runs >= needed.max(1) && self.passed_runs >= needed.max(1) {
            DrillVerdict::Passed
        } else {
            DrillVerdict::Short
        }
    }
}

fn one() -> u64 {
    1
}

/// One seed whose two runs differed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    pub scenario: String,
    pub seed: u64,
    pub fingerprints: [String; 2],
    /// Where the traces first part, as `drill check-determinism` reports it.
    pub first_difference: String,
    /// The folder holding both runs.
    pub folder: String,
    pub replay: String,
}

/// The determinism sample: seeds of the sweep run twice.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Determinism {
    /// Seeds sampled (in this shard).
    pub sampled: u64,
    /// Seeds whose two runs were compared.
    pub checked: u64,
    pub mismatches: Vec<Mismatch>,
}

/// How often one invariant of the registry was checked non-vacuously.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvariantCoverage {
    pub id: String,
    pub checks: u64,
}

/// One run's cost, for the slowest-seeds table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlowRun {
    pub scenario: String,
    pub seed: u64,
    pub wall_ms: u64,
    pub sim_time_ms: u64,
    pub steps: u64,
}

/// Everything a gate found: `summary.json` in the gate folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateSummary {
    /// Always [`crate::FORMAT_VERSION`] when written by this build.
    pub format_version: u32,
    pub drill_version: String,
    /// Always [`GATE_KIND`].
    pub kind: String,
    /// The swarm sweep of the main scenario.
    pub sweep: SweepSummary,
    /// Every drill under each profile (`none`, then `swarm`), in the registry's order.
    pub drills: Vec<DrillResult>,
    /// Seeds on which each drill must be exercised and passed under each profile.
    #[serde(default = "one")]
    pub drill_seeds_min: u64,
    pub determinism: Determinism,
    /// Every invariant of the registry with its checks over all runs.
    pub invariants: Vec<InvariantCoverage>,
    /// Runs never started because the time budget ran out.
    pub unrun: u64,
    /// What the gate promised and did not cover; empty when coverage was not judged.
    pub shortfalls: Vec<String>,
    /// False for one shard of a gate: coverage is judged when the shards are merged.
    pub coverage_judged: bool,
    pub slowest: Vec<SlowRun>,
    pub verdict: Verdict,
    pub exit_code: i32,
    /// Wall-clock time (for a merge, the longest part's).
    pub wall_seconds: f64,
}

impl GateSummary {
    /// A sweep viewed as a gate with no drills, no determinism sample and no coverage judgement,
    /// so that the gate's renderers write a sweep's junit.xml, report.md and report.html. The
    /// verdict and exit code are the sweep's worst outcome's (a sweep has no shortfall), and the
    /// invariants are those the sweep checked.
    pub fn of_sweep(s: &SweepSummary) -> GateSummary {
        let verdict = Verdict::from(s.outcome);
        GateSummary {
            format_version: s.format_version,
            drill_version: s.drill_version.clone(),
            kind: SWEEP_KIND.to_string(),
            sweep: s.clone(),
            drills: Vec::new(),
            drill_seeds_min: 1,
            determinism: Determinism::default(),
            invariants: s.checks.iter().map(|(id, n)| InvariantCoverage { id: id.clone(), checks: *n }).collect(),
            unrun: 0,
            shortfalls: Vec::new(),
            coverage_judged: false,
            slowest: Vec::new(),
            verdict,
            exit_code: verdict.exit_code(),
            wall_seconds: s.wall_seconds,
        }
    }

    /// True for a sweep viewed as a gate ([`GateSummary::of_sweep`]): its reports leave out the
    /// drills, the determinism sample, coverage and the slowest runs.
    pub fn is_sweep(&self) -> bool {
        self.kind == SWEEP_KIND
    }

    /// `gate` or `sweep`, for the reports' titles.
    pub fn what(&self) -> &'static str {
        if self.is_sweep() {
            SWEEP_KIND
        } else {
            GATE_KIND
        }
    }

    /// Counts checks per registry invariant, lists shortfalls (when `judge_coverage`), and sets
    /// the verdict and exit code.
    pub fn judge(&mut self, invariant_ids: &[&str], judge_coverage: bool) {
        let mut checks = self.sweep.checks.clone();
        for d in &self.drills {
            add_counts(&mut checks, &d.checks);
        }
        self.invariants = invariant_ids.iter().map(|id| InvariantCoverage { id: id.to_string(), checks: checks.get(*id).copied().unwrap_or(0) }).collect();
        self.coverage_judged = judge_coverage;
        self.shortfalls = if judge_coverage { self.coverage_problems() } else { Vec::new() };
        self.verdict = self.worst_run();
        if self.verdict == Verdict::Pass && !self.shortfalls.is_empty() {
            self.verdict = Verdict::Shortfall;
        }
        // An interrupted gate judged only what finished; it exits as interrupted (130).
        self.exit_code = if self.sweep.interrupted { EXIT_INTERRUPTED } else { self.verdict.exit_code() };
    }

    fn coverage_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let needed = self.drill_seeds_min;
        for d in self.drills.iter().filter(|d| d.verdict(needed) == DrillVerdict::Short) {
            out.push(format!(
                "drill {} under {} was exercised on {} and passed on {} of {} runs; the gate needs {needed}",
                d.name,
                d.profile,
                d.exercised_runs,
                d.passed_runs,
                d.counts.total()
            ));
        }
        for i in self.invariants.iter().filter(|i| i.checks == 0) {
            out.push(format!("invariant {} was never checked non-vacuously", i.id));
        }
        if self.unrun > 0 {
            let why = if self.sweep.interrupted { "the gate was interrupted" } else { "the time budget ran out" };
            out.push(format!("{} runs were not started: {why}", self.unrun));
        }
        out
    }

    fn worst_run(&self) -> Verdict {
        let mut worst = Verdict::from(self.sweep.counts.worst());
        for d in &self.drills {
            worst = worst.max(Verdict::from(d.counts.worst()));
        }
        if !self.determinism.mismatches.is_empty() {
            worst = worst.max(Verdict::Nondeterminism);
        }
        worst
    }

    /// Failing seeds of the sweep and of every drill, with their scenario.
    pub fn failing(&self) -> Vec<(&str, &FailingSeed)> {
        let sweep = self.sweep.failing.iter().map(|f| (self.sweep.scenario.as_str(), f));
        let drills = self.drills.iter().flat_map(|d| d.failing.iter().map(move |f| (d.name.as_str(), f)));
        sweep.chain(drills).collect()
    }
}

/// Why summaries cannot be merged; the CLI reports it as bad input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeError(pub String);

impl fmt::Display for MergeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The range and shard of the union of parts, or why they do not fit together: all shards
/// `1..=N` of one range, or unsharded adjacent ranges.
pub fn union_of(parts: &[(SeedRange, Option<Shard>)]) -> Result<(SeedRange, Option<Shard>), MergeError> {
    let first = parts.first().ok_or_else(|| MergeError("nothing to merge".into()))?;
    if parts.iter().all(|(_, s)| s.is_some()) {
        return union_of_shards(parts, first.0);
    }
    if parts.iter().any(|(_, s)| s.is_some()) {
        return Err(MergeError("cannot merge shards with unsharded sweeps".into()));
    }
    let mut ranges: Vec<SeedRange> = parts.iter().map(|(r, _)| *r).collect();
    ranges.sort_by_key(|r| r.first);
    for pair in ranges.windows(2) {
        if pair[1].first <= pair[0].last {
            return Err(MergeError(format!("seed ranges {} and {} overlap", pair[0], pair[1])));
        }
        if pair[1].first != pair[0].last + 1 {
            return Err(MergeError(format!("seed ranges {} and {} leave a gap; merge adjacent ranges only", pair[0], pair[1])));
        }
    }
    let last = ranges.last().map_or(first.0.last, |r| r.last);
    Ok((SeedRange { first: ranges[0].first, last }, None))
}

fn union_of_shards(parts: &[(SeedRange, Option<Shard>)], range: SeedRange) -> Result<(SeedRange, Option<Shard>), MergeError> {
    let mut shards: Vec<Shard> = parts.iter().filter_map(|(_, s)| *s).collect();
    let count = shards[0].count;
    if let Some((r, _)) = parts.iter().find(|(r, _)| *r != range) {
        return Err(MergeError(format!("shards of different seed ranges ({range} and {r})")));
    }
    if let Some(s) = shards.iter().find(|s| s.count != count) {
        return Err(MergeError(format!("shards of different counts (1/{count} and {s})")));
    }
    shards.sort();
    if let Some(pair) = shards.windows(2).find(|p| p[0] == p[1]) {
        return Err(MergeError(format!("shard {} appears twice", pair[0])));
    }
    let missing: Vec<String> = (1..=count).filter(|i| !shards.iter().any(|s| s.index == *i)).map(|index| Shard { index, count }.to_string()).collect();
    match missing.len() {
        0 => {}
        1 => return Err(MergeError(format!("shard {} is missing", missing[0]))),
        _ => return Err(MergeError(format!("shards {} are missing", missing.join(", ")))),
    }
    Ok((range, None))
}

/// Merges sweeps of one scenario and profile: all shards of one range, or adjacent ranges.
pub fn merge_sweeps(parts: &[SweepSummary]) -> Result<SweepSummary, MergeError> {
    let first = parts.first().ok_or_else(|| MergeError("nothing to merge".into()))?;
    for p in parts {
        if (p.scenario.as_str(), p.profile.as_str()) != (first.scenario.as_str(), first.profile.as_str()) {
            return Err(MergeError(format!("sweeps of different worlds ({} / {} and {} / {})", first.scenario, first.profile, p.scenario, p.profile)));
        }
        if p.drill_version != first.drill_version {
            return Err(MergeError(format!("sweeps by different drill versions ({} and {})", first.drill_version, p.drill_version)));
        }
    }
    let seeds: Vec<(SeedRange, Option<Shard>)> = parts.iter().map(|p| (p.seeds, p.shard)).collect();
    let (range, shard) = union_of(&seeds)?;
    let mut merged = SweepSummary {
        seeds: range,
        shard,
        counts: OutcomeCounts::default(),
        failing: Vec::new(),
        faults: BTreeMap::new(),
        checks: BTreeMap::new(),
        jobs: 0,
        wall_seconds: 0.0,
        seeds_per_second: 0.0,
        drills: BTreeMap::new(),
        ..first.clone()
    };
    for p in parts {
        for o in Outcome::ALL {
            for _ in 0..p.counts.get(o) {
                merged.counts.add(o);
            }
        }
        merged.failing.extend(p.failing.iter().cloned());
        add_counts(&mut merged.faults, &p.faults);
        add_counts(&mut merged.checks, &p.checks);
        crate::add_drills(&mut merged.drills, &p.drills);
        merged.jobs += p.jobs;
        merged.wall_seconds = merged.wall_seconds.max(p.wall_seconds);
        merged.seeds_per_second += p.seeds_per_second;
    }
    merged.failing.sort_by_key(|f| f.seed);
    merged.outcome = merged.counts.worst();
    Ok(merged)
}

/// Merges the drills of gate shards, drill by drill and profile by profile.
pub fn merge_drills(parts: &[&[DrillResult]]) -> Result<Vec<DrillResult>, MergeError> {
    let mut by_name: BTreeMap<(String, String), Vec<&DrillResult>> = BTreeMap::new();
    // The drills keep the order they first appear in (the registry's, as one gate lists them),
    // so that a merge of shards lists them as the unsharded gate does.
    let mut order: Vec<(String, String)> = Vec::new();
    for d in parts.iter().flat_map(|p| p.iter()) {
        let key = (d.name.clone(), d.profile.clone());
        if !by_name.contains_key(&key) {
            order.push(key.clone());
        }
        by_name.entry(key).or_default().push(d);
    }
    let mut out = Vec::new();
    for key in order {
        let runs = by_name.remove(&key).expect("every name in order was collected");
        let seeds: Vec<(SeedRange, Option<Shard>)> = runs.iter().map(|d| (d.seeds, d.shard)).collect();
        let (name, profile) = &key;
        let (range, shard) = union_of(&seeds).map_err(|e| MergeError(format!("drill {name} under {profile}: {e}")))?;
        let mut merged = DrillResult {
            seeds: range,
            shard,
            counts: OutcomeCounts::default(),
            failing: Vec::new(),
            faults: BTreeMap::new(),
            checks: BTreeMap::new(),
            exercised_runs: 0,
            passed_runs: 0,
            ..runs[0].clone()
        };
        for d in runs {
            for o in Outcome::ALL {
                (0..d.counts.get(o)).for_each(|_| merged.counts.add(o));
            }
            merged.failing.extend(d.failing.iter().cloned());
            add_counts(&mut merged.faults, &d.faults);
            add_counts(&mut merged.checks, &d.checks);
            merged.exercised_runs += d.exercised_runs;
            merged.passed_runs += d.passed_runs;
        }
        merged.failing.sort_by_key(|f| f.seed);
        out.push(merged);
    }
    Ok(out)
}

/// The `SLOWEST_MAX` slowest of `runs`, slowest first.
pub fn slowest(mut runs: Vec<SlowRun>) -> Vec<SlowRun> {
    runs.sort_by(|a, b| b.wall_ms.cmp(&a.wall_ms).then(a.seed.cmp(&b.seed)));
    runs.truncate(SLOWEST_MAX);
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep(first: u64, last: u64, shard: Option<Shard>, pass: u64) -> SweepSummary {
        let mut counts = OutcomeCounts::default();
        (0..pass).for_each(|_| counts.add(Outcome::Pass));
        SweepSummary {
            format_version: 1,
            drill_version: "0.1.0".into(),
            scenario: "sync-basic".into(),
            profile: "swarm".into(),
            seeds: SeedRange { first, last },
            shard,
            counts,
            outcome: Outcome::Pass,
            failing: vec![],
            faults: BTreeMap::from([("crash".into(), 1)]),
            checks: BTreeMap::from([("INV-A".into(), 2)]),
            jobs: 2,
            wall_seconds: 1.0,
            seeds_per_second: 5.0,
            drills: BTreeMap::new(),
            merged_from: vec![],
            interrupted: false,
        }
    }

    fn shard(index: u64, count: u64) -> Option<Shard> {
        Some(Shard { index, count })
    }

    #[test]
    fn merges_all_shards_of_a_range() {
        let parts: Vec<SweepSummary> = (1..=3).map(|i| sweep(1, 9, shard(i, 3), 3)).collect();
        let m = merge_sweeps(&parts).unwrap();
        assert_eq!((m.seeds, m.shard, m.counts.total()), (SeedRange { first: 1, last: 9 }, None, 9));
        assert_eq!((m.faults["crash"], m.checks["INV-A"], m.jobs), (3, 6, 6));
    }

    #[test]
    fn merged_drills_keep_the_order_of_the_registry() {
        let drill = |name: &str, index: u64| DrillResult {
            name: name.to_string(),
            profile: "none".to_string(),
            seeds: SeedRange { first: 1, last: 2 },
            shard: shard(index, 2),
            counts: OutcomeCounts::default(),
            failing: Vec::new(),
            faults: BTreeMap::new(),
            checks: BTreeMap::new(),
            exercised_runs: 1,
            passed_runs: 1,
        };
        let swarm = |d: DrillResult| DrillResult { profile: "swarm".into(), ..d };
        let one = [drill("zeta", 1), swarm(drill("zeta", 1)), drill("alpha", 1)];
        let two = [drill("zeta", 2), swarm(drill("zeta", 2)), drill("alpha", 2)];
        let merged = merge_drills(&[&one[..], &two[..]]).unwrap();
        let names: Vec<(&str, &str)> = merged.iter().map(|d| (d.name.as_str(), d.profile.as_str())).collect();
        assert_eq!(names, [("zeta", "none"), ("zeta", "swarm"), ("alpha", "none")]);
        assert_eq!((merged[0].shard, merged[0].exercised_runs, merged[0].passed_runs), (None, 2, 2));
        assert_eq!(merged[0].verdict(2), DrillVerdict::Passed);
        assert_eq!(merged[0].verdict(3), DrillVerdict::Short, "passed on 2 seeds, 3 needed");
    }

    #[test]
    fn refuses_missing_repeated_and_mismatched_shards() {
        let one = sweep(1, 9, shard(1, 3), 3);
        let err = |parts: &[SweepSummary]| merge_sweeps(parts).unwrap_err().0;
        assert!(err(&[one.clone(), sweep(1, 9, shard(2, 3), 3)]).contains("shard 3/3 is missing"));
        assert!(err(&[one.clone(), one.clone(), sweep(1, 9, shard(3, 3), 3)]).contains("twice"));
        assert!(err(&[one.clone(), sweep(1, 8, shard(2, 3), 3)]).contains("different seed ranges"));
        assert!(err(&[one.clone(), sweep(1, 9, None, 9)]).contains("unsharded"));
        let mut other = sweep(1, 9, shard(2, 3), 3);
        other.profile = "lite".into();
        assert!(err(&[one, other]).contains("different worlds"));
    }

    #[test]
    fn merges_adjacent_ranges_and_refuses_overlaps_and_gaps() {
        let m = merge_sweeps(&[sweep(11, 20, None, 10), sweep(1, 10, None, 10)]).unwrap();
        assert_eq!(m.seeds, SeedRange { first: 1, last: 20 });
        assert!(merge_sweeps(&[sweep(1, 10, None, 10), sweep(10, 20, None, 11)]).unwrap_err().0.contains("overlap"));
        assert!(merge_sweeps(&[sweep(1, 10, None, 10), sweep(12, 20, None, 9)]).unwrap_err().0.contains("gap"));
    }

    fn gate() -> GateSummary {
        GateSummary {
            format_version: 1,
            drill_version: "0.1.0".into(),
            kind: GATE_KIND.into(),
            sweep: sweep(1, 3, None, 3),
            drills: vec![],
            drill_seeds_min: 1,
            determinism: Determinism::default(),
            invariants: vec![],
            unrun: 0,
            shortfalls: vec![],
            coverage_judged: true,
            slowest: vec![],
            verdict: Verdict::Pass,
            exit_code: 0,
            wall_seconds: 1.0,
        }
    }

    #[test]
    fn a_gate_fails_on_runs_first_and_on_coverage_only_when_runs_pass() {
        let mut g = gate();
        g.judge(&["INV-A"], true);
        assert_eq!((g.verdict, g.exit_code), (Verdict::Pass, 0));
        g.judge(&["INV-A", "INV-B"], true);
        assert_eq!((g.verdict, g.exit_code), (Verdict::Shortfall, 5));
        assert!(g.shortfalls[0].contains("INV-B"));
        g.judge(&["INV-A", "INV-B"], false);
        assert_eq!(g.verdict, Verdict::Pass, "a shard leaves coverage to the merge");
        g.sweep.counts.add(Outcome::Liveness);
        g.judge(&["INV-A", "INV-B"], true);
        assert_eq!((g.verdict, g.exit_code), (Verdict::Liveness, 3));
    }

    #[test]
    fn a_sweep_viewed_as_a_gate_keeps_the_sweeps_outcome() {
        let mut s = sweep(1, 3, None, 2);
        s.counts.add(Outcome::Liveness);
        s.outcome = s.counts.worst();
        let g = GateSummary::of_sweep(&s);
        assert!(g.is_sweep() && !g.coverage_judged && g.drills.is_empty());
        assert_eq!((g.verdict, g.exit_code), (Verdict::Liveness, 3));
        assert_eq!(g.invariants, [InvariantCoverage { id: "INV-A".into(), checks: 2 }]);
        assert_eq!(g.what(), "sweep");
    }

    #[test]
    fn a_sweeps_reports_leave_out_what_only_a_gate_has() {
        let mut s = sweep(1, 3, None, 2);
        s.counts.add(Outcome::Violation);
        s.outcome = s.counts.worst();
        s.failing.push(FailingSeed {
            seed: 3,
            outcome: Outcome::Violation,
            first_violation: None,
            replay: "drill run --seed 3".into(),
            folder: "out/seed-<3>".into(),
        });
        let g = GateSummary::of_sweep(&s);
        let link = |f: &str| format!("{f}/report.html");
        let junit = crate::render_junit(&g);
        assert!(junit.contains("<testsuites name=\"drill sweep\""), "{junit}");
        assert_eq!(junit.matches("<testsuite ").count(), 1, "{junit}");
        assert_eq!(junit.matches("<testcase ").count(), 2, "{junit}");
        assert!(junit.contains("out/seed-&lt;3&gt;") && !junit.contains("seed-<3>"));
        let md = crate::render_markdown(&g, &link);
        assert!(md.starts_with("# drill sweep: violation"), "{md}");
        assert!(!md.contains("Determinism") && !md.contains("## Drills") && !md.contains("Slowest"));
        assert!(md.contains("| sweep | 2 | 1 | 0 | 0 |"), "{md}");
        let html = crate::render_dashboard(&g, &link);
        assert!(html.contains("<title>drill sweep: violation</title>"));
        assert!(html.contains("href=\"out/seed-&lt;3&gt;/report.html\""), "{html}");
        assert!(!html.contains("Drill coverage") && !html.contains("<dt>determinism</dt>"));
    }

    #[test]
    fn the_markdown_outcome_table_has_one_delimiter_row_as_wide_as_its_header() {
        let md = crate::render_markdown(&gate(), &|f: &str| f.to_string());
        let lines: Vec<&str> = md.lines().skip_while(|l| !l.starts_with("| runs |")).collect();
        assert_eq!(lines[0].matches('|').count(), lines[1].matches('|').count(), "{md}");
        assert!(lines[1].starts_with("|---|") && lines[2].starts_with("| sweep |"), "{md}");
    }
}

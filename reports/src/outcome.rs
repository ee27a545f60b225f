//! A run's verdict and counts of verdicts over many runs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The verdict of one run, ordered by severity: the worst of several is their maximum.
///
/// This mirrors `drill_scenarios::Outcome`; it is repeated here so that readers of the files do
/// not depend on the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every invariant held and the world converged.
    Pass,
    /// An invariant was broken.
    Violation,
    /// The world did not converge within its bound after healing.
    Liveness,
    /// Two runs of the same input differed.
    Nondeterminism,
}

impl Outcome {
    /// Every outcome, from best to worst.
    pub const ALL: [Outcome; 4] = [Outcome::Pass, Outcome::Violation, Outcome::Liveness, Outcome::Nondeterminism];

    /// The process exit code DESIGN.md assigns to this outcome.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Pass => 0,
            Outcome::Violation => 1,
            Outcome::Liveness => 3,
            Outcome::Nondeterminism => 4,
        }
    }

    /// The name used in files and output: `pass`, `violation`, `liveness`, `nondeterminism`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Violation => "violation",
            Outcome::Liveness => "liveness",
            Outcome::Nondeterminism => "nondeterminism",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many runs ended in each outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCounts {
    pub pass: u64,
    pub violation: u64,
    pub liveness: u64,
    pub nondeterminism: u64,
}

impl OutcomeCounts {
    /// Counts one more run with `outcome`.
    pub fn add(&mut self, outcome: Outcome) {
        *self.slot(outcome) += 1;
    }

    /// How many runs ended in `outcome`.
    pub fn get(&self, outcome: Outcome) -> u64 {
        match outcome {
            Outcome::Pass => self.pass,
            Outcome::Violation => self.violation,
            Outcome::Liveness => self.liveness,
            Outcome::Nondeterminism => self.nondeterminism,
        }
    }

    /// All runs counted.
    pub fn total(&self) -> u64 {
        Outcome::ALL.iter().map(|o| self.get(*o)).sum()
    }

    /// Runs that did not pass.
    pub fn failing(&self) -> u64 {
        self.total() - self.pass
    }

    /// The worst outcome with a non-zero count, or `Pass` when nothing was counted.
    pub fn worst(&self) -> Outcome {
        Outcome::ALL.into_iter().rev().find(|o| self.get(*o) > 0).unwrap_or(Outcome::Pass)
    }

    fn slot(&mut self, outcome: Outcome) -> &mut u64 {
        match outcome {
            Outcome::Pass => &mut self.pass,
            Outcome::Violation => &mut self.violation,
            Outcome::Liveness => &mut self.liveness,
            Outcome::Nondeterminism => &mut self.nondeterminism,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_serialize_as_their_names() {
        for o in Outcome::ALL {
            let json = serde_json::to_string(&o).unwrap();
            assert_eq!(json, format!("\"{}\"", o.as_str()));
            assert_eq!(serde_json::from_str::<Outcome>(&json).unwrap(), o);
        }
    }

    #[test]
    fn exit_codes_grow_with_severity() {
        let codes: Vec<i32> = Outcome::ALL.iter().map(|o| o.exit_code()).collect();
        assert_eq!(codes, [0, 1, 3, 4]);
    }

    #[test]
    fn counts_add_up_and_name_the_worst() {
        let mut c = OutcomeCounts::default();
        assert_eq!(c.worst(), Outcome::Pass);
        c.add(Outcome::Pass);
        c.add(Outcome::Liveness);
        c.add(Outcome::Violation);
        assert_eq!((c.total(), c.failing(), c.worst()), (3, 2, Outcome::Liveness));
    }
}

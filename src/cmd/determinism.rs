//! `drill check-determinism`: every seed twice, on worker processes, with the traces compared.
//!
//! With two or more workers the second run of a seed goes to a different worker process than the
//! first whenever one is free, so that process-level differences (address layout, lazily
//! initialised globals) show up as well as state leaking from one run into the next. Both traces
//! are written to a scratch folder under the system's temporary folder; a seed whose runs agree
//! is deleted at once, one whose runs differ is kept there for a closer look.

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::path::PathBuf;

use drill_reports::SeedRange;

use crate::cli::{DeterminismArgs, WorldArgs};
use crate::cmd::{count, worker_count};
use crate::diff::{first_difference, trace_lines};
use crate::error::CliError;
use crate::interrupt::{self, EXIT_INTERRUPTED};
use crate::outdir;
use crate::pool::{self, Dispatch};
use crate::progress::Progress;
use crate::runfiles::{seed_replay, DRILL_VERSION, TRACE_FILE};
use crate::worker::{Answer, Job};

/// Exit code when any seed's runs differ.
const EXIT_NONDETERMINISM: i32 = 4;
/// Exit code when runs agree but some panicked (a bug to look at, like a violation).
const EXIT_PANIC: i32 = 1;
/// Attempts at a fresh scratch folder name before giving up.
const SCRATCH_ATTEMPTS_MAX: u32 = 100;

/// Runs the check; exit code 4 if any seed's two runs differ.
pub fn check(args: DeterminismArgs) -> Result<i32, CliError> {
    let range = args.many.seeds;
    let total = range.len().ok_or_else(|| CliError::new("too many seeds"))?;
    let workers = worker_count(args.many.jobs, total.saturating_mul(2));
    let world = args.many.world;
    let root = scratch_root()?;
    println!("drill {DRILL_VERSION} check-determinism seeds {range} ({total} seeds) profile {} scenario {} jobs {workers}", world.profile, world.scenario);
    let mut check = Check::new(root, range, &world, total, workers);
    check.seed_timeout = args.many.seed_timeout;
    let result = pool::run(workers, &world, &mut check);
    check.progress.finish();
    if result.is_err() && check.kept.is_empty() {
        // Nothing found worth keeping; the error is what matters.
        let _ = fs::remove_dir_all(&check.root);
    }
    result?;
    if interrupt::requested() {
        check.drop_unfinished()?;
        let done = check.done;
        check.report(total)?;
        println!("outcome: interrupted | {done} of {total} seeds checked; run it again for the rest");
        return Ok(EXIT_INTERRUPTED);
    }
    check.report(total)
}

/// A seed's second run, waiting for a worker other than the one that took the first.
struct Pending {
    job: Job,
    first_slot: usize,
}

struct Check {
    root: PathBuf,
    world: WorldArgs,
    last_seed: u64,
    next_seed: Option<u64>,
    pending: VecDeque<Pending>,
    /// Second runs waiting at most; past it a worker takes one even if it ran the first.
    pending_max: usize,
    /// The answer of whichever run of a seed finished first.
    first_answers: BTreeMap<u64, Answer>,
    /// Report of each seed whose runs differ, by seed.
    mismatches: BTreeMap<u64, String>,
    /// Report of each seed whose run panicked, by seed.
    panics: BTreeMap<u64, String>,
    /// Seeds whose folders are kept under `root`.
    kept: Vec<u64>,
    /// Seeds whose two runs were compared.
    done: u64,
    progress: Progress,
    seed_timeout: std::time::Duration,
}

impl Check {
    fn new(root: PathBuf, range: SeedRange, world: &WorldArgs, total: u64, workers: usize) -> Self {
        Check {
            root,
            world: world.clone(),
            last_seed: range.last,
            next_seed: Some(range.first),
            pending: VecDeque::new(),
            pending_max: workers,
            first_answers: BTreeMap::new(),
            mismatches: BTreeMap::new(),
            panics: BTreeMap::new(),
            kept: Vec::new(),
            done: 0,
            progress: Progress::new("check-determinism", total),
            seed_timeout: crate::pool::SEED_TIMEOUT_DEFAULT,
        }
    }

    fn seed_dir(&self, seed: u64) -> PathBuf {
        self.root.join(format!("seed-{seed}"))
    }

    fn trace_path(&self, seed: u64, run: u8) -> PathBuf {
        self.seed_dir(seed).join(format!("run-{run}")).join(TRACE_FILE)
    }

    /// Both runs of a fresh seed, their folders created.
    fn fresh_jobs(&mut self) -> Result<Option<(Job, Job)>, CliError> {
        let Some(seed) = self.next_seed else {
            return Ok(None);
        };
        self.next_seed = seed.checked_add(1).filter(|next| *next <= self.last_seed);
        let mut jobs = [1, 2].map(|run| Job::seed(seed, self.seed_dir(seed).join(format!("run-{run}"))));
        for job in &mut jobs {
            outdir::create(&job.dir)?;
        }
        let [first, second] = jobs;
        Ok(Some((first, second)))
    }

    /// Compares the two answers for `seed`; removes its folder when they agree.
    fn compare(&mut self, seed: u64, a: Answer, b: Answer) -> Result<(), CliError> {
        let keep = match (a, b) {
            (Answer::Done { summary: a }, Answer::Done { summary: b }) => {
                let differ = a.fingerprint != b.fingerprint;
                if differ {
                    self.describe_mismatch(seed)?;
                }
                differ
            }
            (Answer::Panic { message }, _) | (_, Answer::Panic { message }) => {
                self.panics.insert(seed, format!("seed {seed}: a run panicked: {message}"));
                true
            }
            (Answer::Hang { message }, _) | (_, Answer::Hang { message }) => {
                self.panics.insert(seed, format!("seed {seed}: a run hung: {message}"));
                true
            }
            // `finished` stops at an error before any comparison.
            (Answer::Error { message }, _) | (_, Answer::Error { message }) => return Err(CliError::new(message)),
        };
        self.progress.finish_one(keep);
        self.done += 1;
        if keep {
            self.kept.push(seed);
            return Ok(());
        }
        let dir = self.seed_dir(seed);
        fs::remove_dir_all(&dir).map_err(|e| CliError::io("cannot remove", &dir, e))
    }

    fn describe_mismatch(&mut self, seed: u64) -> Result<(), CliError> {
        let (one, two) = (self.trace_path(seed, 1), self.trace_path(seed, 2));
        let diff = first_difference(trace_lines(&one)?, trace_lines(&two)?);
        let what = match diff {
            Some(d) => d.describe("run 1", "run 2"),
            None => "the trace files are equal line by line, but their fingerprints differ".to_string(),
        };
        let replay = seed_replay(seed, &self.world.scenario, self.world.profile.as_str());
        let text = format!("seed {seed}: the two runs differ\n{what}\ntraces: {} and {}\nreplay: {replay}", one.display(), two.display());
        self.progress.println(&format!("seed {seed}: the two runs differ"));
        self.mismatches.insert(seed, text);
        Ok(())
    }

    /// Removes the folders of seeds whose runs were cut short by an interruption; the folders
    /// of seeds found to differ or to panic stay.
    fn drop_unfinished(&self) -> Result<(), CliError> {
        let entries = fs::read_dir(&self.root).map_err(|e| CliError::io("cannot read folder", &self.root, e))?;
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let seed = name.strip_prefix("seed-").and_then(|n| n.parse::<u64>().ok());
            if seed.is_none_or(|s| !self.kept.contains(&s)) {
                let path = entry.path();
                fs::remove_dir_all(&path).map_err(|e| CliError::io("cannot remove", &path, e))?;
            }
        }
        Ok(())
    }

    /// Prints what was found; the last line counts seeds and mismatches.
    fn report(self, total: u64) -> Result<i32, CliError> {
        for text in self.mismatches.values().chain(self.panics.values()) {
            println!("{text}");
        }
        if self.kept.is_empty() {
            fs::remove_dir_all(&self.root).map_err(|e| CliError::io("cannot remove", &self.root, e))?;
        } else {
            let seeds = count(self.kept.len() as u64, "seed", "seeds");
            println!("kept the traces of {seeds} in {}", self.root.display());
        }
        let n = self.mismatches.len();
        let panics = match self.panics.len() {
            0 => String::new(),
            p => format!(", {p} panicked"),
        };
        let (seeds, mismatches) = (count(self.done.min(total), "seed", "seeds"), count(n as u64, "mismatch", "mismatches"));
        println!("{seeds}, {mismatches}{panics}");
        Ok(match (n, self.panics.len()) {
            (0, 0) => 0,
            (0, _) => EXIT_PANIC,
            _ => EXIT_NONDETERMINISM,
        })
    }
}

impl Dispatch for Check {
    fn next_job(&mut self, slot: usize) -> Result<Option<Job>, CliError> {
        if let Some(i) = self.pending.iter().position(|p| p.first_slot != slot) {
            return Ok(self.pending.remove(i).map(|p| p.job));
        }
        if self.pending.len() < self.pending_max {
            if let Some((first, second)) = self.fresh_jobs()? {
                self.pending.push_back(Pending { job: second, first_slot: slot });
                return Ok(Some(first));
            }
        }
        Ok(self.pending.pop_front().map(|p| p.job))
    }

    fn finished(&mut self, _slot: usize, job: Job, answer: Answer) -> Result<(), CliError> {
        if let Answer::Error { message } = answer {
            return Err(CliError::new(format!("seed {}: {message}", job.seed)));
        }
        match self.first_answers.remove(&job.seed) {
            None => {
                self.first_answers.insert(job.seed, answer);
                Ok(())
            }
            Some(first) => self.compare(job.seed, first, answer),
        }
    }

    fn tick(&mut self) {
        self.progress.tick();
    }

    fn seed_timeout(&self) -> std::time::Duration {
        self.seed_timeout
    }
}

/// A new folder of our own under the system's temporary folder.
fn scratch_root() -> Result<PathBuf, CliError> {
    let base = std::env::temp_dir();
    for attempt in 0..SCRATCH_ATTEMPTS_MAX {
        let dir = base.join(format!("drill-determinism-{}-{attempt}", std::process::id()));
        // create_dir fails on an existing folder, so nothing that was there is reused.
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(CliError::io("cannot create folder", &dir, e)),
        }
    }
    Err(CliError::new(format!("cannot find a free scratch folder name in {}", base.display())))
}

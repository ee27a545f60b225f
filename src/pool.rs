//! The parent side of worker processes: start J copies of this executable as `drill __worker`,
//! hand each one job at a time as it becomes free, and pass every answer to a [`Dispatch`].
//!
//! [`Session`] drives workers in lock step instead, for callers whose next jobs depend on the
//! last answers.
//!
//! One reader thread per worker turns its stdout into events on one channel, so the parent can
//! wait for whichever worker answers first. A worker that dies is reported as a panic of the job
//! it held and replaced while jobs remain. A worker that does not answer within the dispatcher's
//! [`Dispatch::seed_timeout`] (a run whose future never completes, or that loops without ever
//! letting simulated time pass) is killed and its job reported as [`Answer::Hang`]. On SIGINT or
//! SIGTERM ([`crate::interrupt`]) the pool stops at once, ends its workers and returns; the jobs
//! in flight are dropped unanswered.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use crate::cli::WorldArgs;
use crate::error::CliError;
use crate::interrupt;
use crate::progress::wall_clock_now;
use crate::worker::{parse_answer, Answer, Job};

/// How often [`Dispatch::tick`] runs while every worker is busy.
const TICK_INTERVAL: Duration = Duration::from_millis(200);
/// Wall-clock time a run may take before its worker is taken to hang, unless the command sets
/// another (`--seed-timeout`).
pub const SEED_TIMEOUT_DEFAULT: Duration = Duration::from_secs(600);

/// What the pool runs jobs for: it decides the jobs and takes the answers.
pub trait Dispatch {
    /// The next job for worker `slot`, or `None` once no job is left (it stays `None`).
    fn next_job(&mut self, slot: usize) -> Result<Option<Job>, CliError>;
    /// A job ended. An `Err` stops the pool: its workers are killed and the error returned.
    fn finished(&mut self, slot: usize, job: Job, answer: Answer) -> Result<(), CliError>;
    /// Called between events, at least every [`TICK_INTERVAL`], for progress output.
    fn tick(&mut self) {}
    /// How long one job may run before its worker is killed and the job reported as a hang.
    fn seed_timeout(&self) -> Duration {
        SEED_TIMEOUT_DEFAULT
    }
}

/// Runs all of `dispatch`'s jobs on `workers` worker processes building `world`.
pub fn run(workers: usize, world: &WorldArgs, dispatch: &mut dyn Dispatch) -> Result<(), CliError> {
    let (events_tx, events) = mpsc::channel();
    let mut pool = Pool { world: world.clone(), slots: Vec::new(), events_tx };
    for slot in 0..workers {
        pool.slots.push(None);
        pool.start_next(slot, dispatch)?;
    }
    pool.drive(&events, dispatch)
}

/// A running worker process.
struct Worker {
    child: Child,
    /// Closed (None) once the worker has no more jobs coming, which ends it.
    stdin: Option<ChildStdin>,
    job: Option<Job>,
    /// When the job in hand was sent.
    since: Instant,
    /// Set once the worker was killed for taking too long.
    hung: Option<Duration>,
}

enum Event {
    Line(usize, String),
    Closed(usize),
}

struct Pool {
    world: WorldArgs,
    slots: Vec<Option<Worker>>,
    events_tx: Sender<Event>,
}

impl Pool {
    fn drive(&mut self, events: &Receiver<Event>, dispatch: &mut dyn Dispatch) -> Result<(), CliError> {
        while self.slots.iter().any(Option::is_some) {
            if interrupt::requested() {
                // Drop ends the workers; the caller reports what finished.
                return Ok(());
            }
            self.stop_hung(dispatch.seed_timeout());
            match events.recv_timeout(TICK_INTERVAL) {
                Ok(Event::Line(slot, line)) => self.on_line(slot, &line, dispatch)?,
                Ok(Event::Closed(slot)) => self.on_closed(slot, dispatch)?,
                Err(RecvTimeoutError::Timeout) => {}
                // The pool holds a sender, so the channel cannot disconnect.
                Err(RecvTimeoutError::Disconnected) => break,
            }
            dispatch.tick();
        }
        Ok(())
    }

    fn on_line(&mut self, slot: usize, line: &str, dispatch: &mut dyn Dispatch) -> Result<(), CliError> {
        let Some(answer) = parse_answer(line) else {
            return Ok(());
        };
        let answer = answer?;
        let worker = self.slots[slot].as_mut().ok_or_else(|| unexpected(slot))?;
        let job = worker.job.take().ok_or_else(|| unexpected(slot))?;
        let panicked = matches!(answer, Answer::Panic { .. });
        if panicked {
            // The worker exits after a panic; its replacement starts when it has closed.
            worker.stdin = None;
        }
        dispatch.finished(slot, job, answer)?;
        if !panicked {
            self.give_next(slot, dispatch)?;
        }
        Ok(())
    }

    fn on_closed(&mut self, slot: usize, dispatch: &mut dyn Dispatch) -> Result<(), CliError> {
        let Some(mut worker) = self.slots[slot].take() else {
            return Ok(());
        };
        let status = worker.child.wait().map_err(|e| CliError::new(format!("cannot wait for a worker: {e}")))?;
        if let Some(job) = worker.job.take() {
            let answer = match worker.hung {
                Some(after) => Answer::Hang { message: hung_message(job.seed, after) },
                None => Answer::Panic { message: died_message(job.seed, status) },
            };
            dispatch.finished(slot, job, answer)?;
        }
        self.start_next(slot, dispatch)
    }

    /// Kills every worker whose job has run longer than `timeout`; its closed stdout then
    /// reports the job as a hang.
    fn stop_hung(&mut self, timeout: Duration) {
        for worker in self.slots.iter_mut().flatten() {
            if worker.job.is_some() && worker.hung.is_none() && worker.since.elapsed() >= timeout {
                worker.hung = Some(timeout);
                let _ = worker.child.kill();
            }
        }
    }

    /// Starts a worker in `slot` if a job is left for it.
    fn start_next(&mut self, slot: usize, dispatch: &mut dyn Dispatch) -> Result<(), CliError> {
        let Some(job) = dispatch.next_job(slot)? else {
            return Ok(());
        };
        self.slots[slot] = Some(self.spawn(slot)?);
        self.send(slot, job)
    }

    /// Gives the free worker in `slot` its next job, or closes its stdin so that it exits.
    fn give_next(&mut self, slot: usize, dispatch: &mut dyn Dispatch) -> Result<(), CliError> {
        match dispatch.next_job(slot)? {
            Some(job) => self.send(slot, job),
            None => {
                if let Some(worker) = self.slots[slot].as_mut() {
                    worker.stdin = None;
                }
                Ok(())
            }
        }
    }

    fn send(&mut self, slot: usize, job: Job) -> Result<(), CliError> {
        let line = serde_json::to_string(&job).map_err(|e| CliError::new(format!("cannot encode a job: {e}")))?;
        let worker = self.slots[slot].as_mut().ok_or_else(|| unexpected(slot))?;
        if let Some(stdin) = worker.stdin.as_mut() {
            // A failed write means the worker died; its closed stdout reports the job as lost.
            let _ = writeln!(stdin, "{line}").and_then(|()| stdin.flush());
        }
        worker.job = Some(job);
        worker.since = wall_clock_now();
        Ok(())
    }

    fn spawn(&self, slot: usize) -> Result<Worker, CliError> {
        let mut child = worker_command(&self.world)?;
        let stdout = child.stdout.take().ok_or_else(|| unexpected(slot))?;
        read_answers(slot, stdout, self.events_tx.clone());
        Ok(Worker { stdin: child.stdin.take(), child, job: None, since: wall_clock_now(), hung: None })
    }
}

impl Drop for Pool {
    /// Ends every worker still running, so that an error never leaves orphans working.
    fn drop(&mut self) {
        for worker in self.slots.iter_mut().filter_map(Option::take) {
            let Worker { mut child, stdin, .. } = worker;
            drop(stdin);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Forwards a worker's stdout, line by line, to the pool's channel from a thread of its own.
///
/// This thread belongs to the sweep's parent process, which never runs a world; the no-threads
/// rule is about threads inside a run.
#[allow(clippy::disallowed_methods)]
fn read_answers(slot: usize, stdout: ChildStdout, events: Sender<Event>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if events.send(Event::Line(slot, line)).is_err() {
                return;
            }
        }
        let _ = events.send(Event::Closed(slot));
    });
}

fn died_message(seed: u64, status: ExitStatus) -> String {
    format!("the worker running seed {seed} exited ({status}) without answering")
}

fn hung_message(seed: u64, after: Duration) -> String {
    format!(
        "seed {seed} did not finish within {} of wall-clock time (a future that never completes, or a loop that never lets simulated time pass); its worker was stopped",
        humantime::format_duration(after)
    )
}

fn unexpected(slot: usize) -> CliError {
    CliError::new(format!("worker {slot} answered out of turn"))
}

/// Workers driven in lock step, for callers that decide their next jobs from the last answers
/// (shrinking): [`Session::run_batch`] hands one job to each of up to J workers and waits for
/// all of them. Answers come back in the order of the jobs, whichever worker ran them, so the
/// caller's decisions do not depend on timing.
pub struct Session {
    world: WorldArgs,
    workers: Vec<Option<SyncWorker>>,
}

/// A worker read synchronously: one job out, one answer back.
struct SyncWorker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Session {
    /// A session of `workers` processes building `world`; they start on first use.
    pub fn new(workers: usize, world: &WorldArgs) -> Session {
        Session { world: world.clone(), workers: (0..workers.max(1)).map(|_| None).collect() }
    }

    /// How many jobs one batch can run at once.
    pub fn width(&self) -> usize {
        self.workers.len()
    }

    /// Runs up to [`Session::width`] jobs at once; one answer per job, in the jobs' order.
    pub fn run_batch(&mut self, jobs: &[Job]) -> Result<Vec<Answer>, CliError> {
        assert!(jobs.len() <= self.width(), "a batch is at most one job per worker");
        for (slot, job) in jobs.iter().enumerate() {
            self.send(slot, job)?;
        }
        let mut answers = Vec::with_capacity(jobs.len());
        for (slot, job) in jobs.iter().enumerate() {
            answers.push(self.receive(slot, job)?);
        }
        Ok(answers)
    }

    fn send(&mut self, slot: usize, job: &Job) -> Result<(), CliError> {
        if self.workers[slot].is_none() {
            self.workers[slot] = Some(self.spawn()?);
        }
        let line = serde_json::to_string(job).map_err(|e| CliError::new(format!("cannot encode a job: {e}")))?;
        let worker = self.workers[slot].as_mut().ok_or_else(|| unexpected(slot))?;
        // A failed write means the worker died; `receive` then reads its end and says so.
        let _ = writeln!(worker.stdin, "{line}").and_then(|()| worker.stdin.flush());
        Ok(())
    }

    /// The worker's answer; a worker that ends without one is reported as a panic and retired,
    /// as is one that panicked (it exits after answering).
    fn receive(&mut self, slot: usize, job: &Job) -> Result<Answer, CliError> {
        let worker = self.workers[slot].as_mut().ok_or_else(|| unexpected(slot))?;
        let mut line = String::new();
        loop {
            line.clear();
            let read = worker.stdout.read_line(&mut line).unwrap_or(0);
            if read == 0 {
                let mut gone = self.workers[slot].take().ok_or_else(|| unexpected(slot))?;
                let status = gone.child.wait().map_err(|e| CliError::new(format!("cannot wait for a worker: {e}")))?;
                let message = died_message(job.seed, status);
                return Ok(Answer::Panic { message });
            }
            if let Some(answer) = parse_answer(line.trim_end()) {
                let answer = answer?;
                if matches!(answer, Answer::Panic { .. }) {
                    self.retire(slot);
                }
                return Ok(answer);
            }
        }
    }

    fn retire(&mut self, slot: usize) {
        if let Some(mut worker) = self.workers[slot].take() {
            drop(worker.stdin);
            let _ = worker.child.wait();
        }
    }

    fn spawn(&self) -> Result<SyncWorker, CliError> {
        let mut child = worker_command(&self.world)?;
        let stdout = child.stdout.take().ok_or_else(|| unexpected(0))?;
        let stdin = child.stdin.take().ok_or_else(|| unexpected(0))?;
        Ok(SyncWorker { child, stdin, stdout: BufReader::new(stdout) })
    }
}

impl Drop for Session {
    /// Closes every worker's stdin, which ends it, and waits for it.
    fn drop(&mut self) {
        for slot in 0..self.workers.len() {
            self.retire(slot);
        }
    }
}

/// Starts `drill __worker` for `world`, with piped stdin and stdout.
fn worker_command(world: &WorldArgs) -> Result<Child, CliError> {
    let exe = std::env::current_exe().map_err(|e| CliError::new(format!("cannot find drill's own executable: {e}")))?;
    Command::new(&exe)
        .args(["__worker", "--scenario", &world.scenario, "--profile", world.profile.as_str()])
        // A group of its own: a Ctrl-C at the terminal reaches the parent, which ends it.
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CliError::io("cannot start worker", &exe, e))
}

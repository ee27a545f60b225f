//! External processing backends: what a job hands its input to. Each is an external process in
//! production; the stack sees only [`Backend`], so the world can run them as simulated processes
//! that crash, hang or exit non-zero, and tests can script them.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

/// A boxed future, as backends return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// What a job processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInput {
    pub run_id: String,
    /// What to process (a media reference in production).
    pub input: String,
    /// When the job was submitted, by the node's clock.
    pub created_ms: i64,
}

/// One segment a backend produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub idx: u32,
    pub start_ms: u64,
    pub end_ms: u64,
    pub text: String,
}

/// How an external process ended, when it did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// It exited with a non-zero code.
    Code(i32),
    /// It was killed by a signal (it crashed).
    Signal(i32),
}

/// A backend run that failed: its exit status and what it wrote to stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendExit {
    pub status: ExitStatus,
    pub stderr: String,
}

/// An external backend.
pub trait Backend {
    /// The backend's id, named in error events.
    fn id(&self) -> &str;
    /// The command line it runs, for diagnostics.
    fn command(&self) -> Vec<String>;
    /// Runs the backend on `input`. Dropping the future kills the process.
    fn run<'a>(&'a self, input: &'a JobInput) -> BoxFuture<'a, Result<Vec<Segment>, BackendExit>>;
}

/// A backend that answers at once as scripted: for tests outside the simulation.
#[derive(Debug, Clone)]
pub struct ScriptedBackend {
    pub id: String,
    pub outcome: Scripted,
}

/// What a [`ScriptedBackend`] does.
#[derive(Debug, Clone)]
pub enum Scripted {
    /// Succeeds with this many segments.
    Ok { segments: u32 },
    /// Exits with a code, or crashes with a signal.
    Fail(ExitStatus),
    /// Never answers.
    Hang,
}

/// Deterministic segments for `input`: what a healthy backend transcribes.
pub fn segments_for(input: &JobInput, backend: &str, n: u32) -> Vec<Segment> {
    (0..n)
        .map(|i| Segment {
            idx: i,
            start_ms: u64::from(i) * 1_500,
            end_ms: u64::from(i) * 1_500 + 1_400,
            text: format!("{} by {backend}: part {i}", input.input),
        })
        .collect()
}

impl Backend for ScriptedBackend {
    fn id(&self) -> &str {
        &self.id
    }

    fn command(&self) -> Vec<String> {
        vec![self.id.clone(), "--input".into(), "-".into()]
    }

    fn run<'a>(&'a self, input: &'a JobInput) -> BoxFuture<'a, Result<Vec<Segment>, BackendExit>> {
        Box::pin(async move {
            match &self.outcome {
                Scripted::Ok { segments } => Ok(segments_for(input, &self.id, *segments)),
                Scripted::Fail(status) => Err(BackendExit { status: *status, stderr: format!("{}: scripted failure", self.id) }),
                Scripted::Hang => std::future::pending().await,
            }
        })
    }
}

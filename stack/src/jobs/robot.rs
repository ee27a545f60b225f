//! Robot mode: job commands report what they do as NDJSON events, one JSON object a line, so a
//! script (or an operator following the runbook) can follow a run, and find a run's final
//! result envelope to persist it again (runbook 001 Scenario A).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::pipeline::ResultEnvelope;

/// Version of the robot-mode event format, named in every event.
pub const ROBOT_FORMAT_VERSION: u32 = 1;

/// One robot-mode event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RobotEvent {
    /// A job started.
    RunStart { run_id: String, input: String },
    /// A stage of a job finished (`ingest`, `backend_run`, `persist`) with `status` `ok` or
    /// `failed`.
    Stage { run_id: String, stage: String, status: String },
    /// A backend failed at a stage; the job falls back to the next one if it may.
    BackendError {
        run_id: String,
        backend: String,
        stage: String,
        /// `exit`, `signal` or `timeout`.
        outcome: String,
        exit_code: Option<i32>,
        signal: Option<i32>,
        stderr: String,
    },
    /// The final result envelope of a run: everything persist writes.
    Result { envelope: ResultEnvelope },
    /// Persisting the run failed; the envelope above is what to persist again.
    PersistError { run_id: String, code: String, message: String },
    /// A job ended.
    RunEnd { run_id: String, status: String, persisted: bool },
    /// Another job command (export, import, recovery) succeeded.
    CommandOk { command: String, detail: Value },
    /// A job command failed with a typed error.
    CommandError { command: String, code: String, message: String },
}

/// A line of robot-mode output: the format version and the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RobotLine {
    pub v: u32,
    #[serde(flatten)]
    pub event: RobotEvent,
}

/// Robot-mode output collected as NDJSON lines.
#[derive(Debug, Clone, Default)]
pub struct RobotLog {
    lines: Vec<String>,
}

impl RobotLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one event as a line.
    pub fn emit(&mut self, event: RobotEvent) {
        let line = RobotLine { v: ROBOT_FORMAT_VERSION, event };
        self.lines.push(serde_json::to_string(&line).expect("robot events serialize"));
    }

    /// The lines so far, without newlines.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// Takes the lines written so far.
    pub fn take(&mut self) -> Vec<String> {
        std::mem::take(&mut self.lines)
    }

    /// The output as NDJSON text: every line ends with `\n`.
    pub fn to_ndjson(&self) -> String {
        self.lines.iter().map(|l| format!("{l}\n")).collect()
    }

    /// Reports a command's outcome.
    pub fn command<T: Serialize>(&mut self, command: &str, result: &Result<T, super::JobError>) {
        match result {
            Ok(v) => self.emit(RobotEvent::CommandOk { command: command.into(), detail: serde_json::to_value(v).expect("reports serialize") }),
            Err(e) => self.emit(RobotEvent::CommandError { command: command.into(), code: e.code().into(), message: e.to_string() }),
        }
    }
}

/// Parses NDJSON robot output; the line number (1-based) and error of the first bad line.
pub fn parse(ndjson: &str) -> Result<Vec<RobotLine>, (usize, String)> {
    ndjson.lines().enumerate().map(|(i, l)| serde_json::from_str(l).map_err(|e| (i + 1, e.to_string()))).collect()
}

/// The last result envelope of `run_id` in robot output (Scenario A, step 1).
pub fn find_envelope(ndjson: &str, run_id: &str) -> Option<ResultEnvelope> {
    ndjson.lines().filter_map(|l| serde_json::from_str::<RobotLine>(l).ok()).rev().find_map(|l| match l.event {
        RobotEvent::Result { envelope } if envelope.run.run_id == run_id => Some(envelope),
        _ => None,
    })
}

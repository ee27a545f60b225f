//! The trace recorder: one JSON object per line, written as it happens, with a running SHA-256.
//!
//! A run installs a recorder for its thread with [`install`]; everything in the world (the disk,
//! the network faults, the workload, the checker) appends through [`emit`]. The fingerprint is
//! the SHA-256 over every line followed by `\n`, so it equals `sha256sum trace.jsonl`.

use std::cell::RefCell;
use std::fs::File;
use std::io::{LineWriter, Write};
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// Version of the trace line format; bump it when a field changes meaning.
pub const TRACE_FORMAT_VERSION: u32 = 1;

/// One line of the trace.
#[derive(Debug, Serialize)]
pub struct Line<'a> {
    /// Simulated time since the world started, in microseconds.
    pub t_us: u64,
    /// Node name (`server`, `client-1`, ...) or `world`.
    pub node: &'a str,
    /// What happened: `op.start`, `op.ok`, `op.err`, `fault.*`, `net.*`, `disk.*`, `check.*`, ...
    pub kind: &'a str,
    /// Kind-specific detail.
    pub detail: &'a serde_json::Value,
}

/// Collects a run's lines, hashes them and optionally writes them to a file.
pub struct Recorder {
    lines: Vec<String>,
    hasher: Sha256,
    file: Option<LineWriter<File>>,
    keep_lines: bool,
    count: u64,
}

impl Recorder {
    /// A recorder that keeps lines in memory and, when `path` is given, writes them there too.
    pub fn new(path: Option<&Path>, keep_lines: bool) -> std::io::Result<Self> {
        let file = match path {
            Some(p) => Some(LineWriter::new(File::create(p)?)),
            None => None,
        };
        Ok(Recorder { lines: Vec::new(), hasher: Sha256::new(), file, keep_lines, count: 0 })
    }

    /// Appends one line; returns its 1-based line number.
    pub fn push(&mut self, line: String) -> u64 {
        self.hasher.update(line.as_bytes());
        self.hasher.update(b"\n");
        if let Some(f) = self.file.as_mut() {
            // A failing trace file must not change the run; the error surfaces at `finish`.
            let _ = writeln!(f, "{line}");
        }
        if self.keep_lines {
            self.lines.push(line);
        }
        self.count += 1;
        self.count
    }

    /// Lines recorded so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The fingerprint (hex SHA-256) and the kept lines.
    pub fn finish(mut self) -> std::io::Result<(String, Vec<String>)> {
        if let Some(f) = self.file.as_mut() {
            f.flush()?;
        }
        Ok((hex::encode(self.hasher.finalize()), self.lines))
    }
}

thread_local! {
    static CURRENT: RefCell<Option<(Recorder, Clock)>> = const { RefCell::new(None) };
}

/// Where trace timestamps come from.
pub type Clock = fn() -> u64;

/// Makes `rec` the current thread's recorder; `clock` gives the simulated time in microseconds.
pub fn install(rec: Recorder, clock: Clock) {
    CURRENT.with(|c| *c.borrow_mut() = Some((rec, clock)));
}

/// Removes and returns the current thread's recorder.
pub fn uninstall() -> Option<Recorder> {
    CURRENT.with(|c| c.borrow_mut().take().map(|(r, _)| r))
}

/// Appends one line to the current recorder, if any; returns its line number (0 when none).
pub fn emit(node: &str, kind: &str, detail: serde_json::Value) -> u64 {
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        let Some((rec, clock)) = c.as_mut() else { return 0 };
        let line = Line { t_us: clock(), node, kind, detail: &detail };
        let text = serde_json::to_string(&line).expect("trace lines serialize");
        rec.push(text)
    })
}

/// The number of lines recorded so far by the current recorder.
pub fn line_count() -> u64 {
    CURRENT.with(|c| c.borrow().as_ref().map(|(r, _)| r.count()).unwrap_or(0))
}

/// Index of the first differing line of two traces, if they differ.
pub fn first_difference(a: &[String], b: &[String]) -> Option<usize> {
    let n = a.len().max(b.len());
    (0..n).find(|&i| a.get(i) != b.get(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_sha256_of_the_file_text() {
        let mut r = Recorder::new(None, true).unwrap();
        r.push("{\"a\":1}".into());
        r.push("{\"b\":2}".into());
        let (fp, lines) = r.finish().unwrap();
        let text = lines.join("\n") + "\n";
        assert_eq!(fp, hex::encode(Sha256::digest(text.as_bytes())));
    }

    #[test]
    fn first_difference_finds_extra_lines() {
        let a = vec!["x".to_string(), "y".to_string()];
        let b = vec!["x".to_string()];
        assert_eq!(first_difference(&a, &a), None);
        assert_eq!(first_difference(&a, &b), Some(1));
    }
}

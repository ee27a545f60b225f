//! Finding where two traces part, which is what a nondeterminism report must show.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::CliError;

/// Longest part of a trace line shown in a report; the rest is in the trace files.
const SHOWN_CHARS_MAX: usize = 240;

/// The first line at which two traces differ; a side that ended early holds `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineDiff {
    /// 1-based line number.
    pub line: u64,
    pub left: Option<String>,
    pub right: Option<String>,
}

impl LineDiff {
    /// The report: the line number, then each side on its own line under its label.
    pub fn describe(&self, left_label: &str, right_label: &str) -> String {
        let width = left_label.len().max(right_label.len());
        format!(
            "first difference at trace line {}:\n  {left_label:width$}  {}\n  {right_label:width$}  {}",
            self.line,
            shown(self.left.as_deref()),
            shown(self.right.as_deref())
        )
    }
}

/// The first differing line of two line sequences, or `None` when they are equal.
pub fn first_difference<L, R>(left: L, right: R) -> Option<LineDiff>
where
    L: IntoIterator<Item = String>,
    R: IntoIterator<Item = String>,
{
    let (mut left, mut right) = (left.into_iter(), right.into_iter());
    let mut line = 0;
    loop {
        line += 1;
        match (left.next(), right.next()) {
            (None, None) => return None,
            (l, r) if l == r => continue,
            (l, r) => return Some(LineDiff { line, left: l, right: r }),
        }
    }
}

/// The lines of a trace file, read lazily (traces can be large).
pub fn trace_lines(path: &Path) -> Result<impl Iterator<Item = String>, CliError> {
    let file = File::open(path).map_err(|e| CliError::io("cannot read", path, e))?;
    // A read error mid-file ends the sequence, which then shows up as a difference.
    Ok(BufReader::new(file).lines().map_while(Result::ok))
}

/// Hex SHA-256 of a file's bytes: a trace file's fingerprint.
pub fn file_fingerprint(path: &Path) -> Result<String, CliError> {
    let mut file = File::open(path).map_err(|e| CliError::io("cannot read", path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| CliError::io("cannot read", path, e))?;
    Ok(hex::encode(hasher.finalize()))
}

fn shown(line: Option<&str>) -> String {
    match line {
        None => "<end of trace>".to_string(),
        Some(l) if l.chars().count() > SHOWN_CHARS_MAX => {
            format!("{}...", l.chars().take(SHOWN_CHARS_MAX).collect::<String>())
        }
        Some(l) => l.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn equal_traces_have_no_difference() {
        assert_eq!(first_difference(lines(&["a", "b"]), lines(&["a", "b"])), None);
    }

    #[test]
    fn finds_the_first_changed_line() {
        let d = first_difference(lines(&["a", "b", "c"]), lines(&["a", "x", "y"])).unwrap();
        assert_eq!(d, LineDiff { line: 2, left: Some("b".into()), right: Some("x".into()) });
        assert!(d.describe("run 1", "run 2").contains("run 1  b\n  run 2  x"));
    }

    #[test]
    fn a_shorter_trace_ends_early() {
        let d = first_difference(lines(&["a"]), lines(&["a", "b"])).unwrap();
        assert_eq!((d.line, d.left, d.right), (2, None, Some("b".into())));
    }

    #[test]
    fn fingerprints_match_sha256sum() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("t");
        std::fs::write(&path, "abc").unwrap();
        let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(file_fingerprint(&path).unwrap(), expected);
        assert_eq!(trace_lines(&path).unwrap().collect::<Vec<_>>(), ["abc"]);
    }
}

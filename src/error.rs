//! The CLI's one error type: bad input or an I/O problem, reported on one line with exit code 2.

use std::fmt;

/// Longest message an error prints, in characters: a value quoted from a hostile input (a
/// 100,000-character name in a plan) is cut, so the one `error:` line stays readable.
const MESSAGE_CHARS_MAX: usize = 2000;

/// Something the user can fix: printed as `error: <message>` and the process exits 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError(String);

impl CliError {
    /// An error with `message`, folded onto one line so that scripts can rely on one line.
    pub fn new(message: impl Into<String>) -> Self {
        let message: String = message.into();
        let mut line = message.split_whitespace().collect::<Vec<_>>().join(" ");
        if let Some((cut, _)) = line.char_indices().nth(MESSAGE_CHARS_MAX) {
            line.truncate(cut);
            line.push_str(" ... (cut)");
        }
        CliError(line)
    }

    /// An I/O failure on `path`, for example `cannot read plan.json: No such file ...`.
    pub fn io(what: &str, path: &std::path::Path, err: std::io::Error) -> Self {
        CliError::new(format!("{what} {}: {err}", path.display()))
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

impl From<drill_scenarios::RunError> for CliError {
    fn from(err: drill_scenarios::RunError) -> Self {
        CliError::new(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_stay_on_one_line() {
        let e = CliError::new("malformed plan:\n  expected value\tat line 1");
        assert_eq!(e.to_string(), "malformed plan: expected value at line 1");
    }

    #[test]
    fn long_messages_are_cut() {
        let e = CliError::new(format!("unknown client '{}'", "é".repeat(100_000)));
        assert_eq!(e.to_string().chars().count(), MESSAGE_CHARS_MAX + " ... (cut)".len());
        assert!(e.to_string().ends_with(" ... (cut)"));
    }
}

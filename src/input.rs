//! Reading the files a user hands drill: only regular files, never more than a known size, and a
//! trace only once it is checked whole, so that a bad input is refused (exit code 2) before
//! anything is written.

use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::error::CliError;

/// Largest plan.json drill reads: a plan at every limit (100,000 operations, 16 clients) is a
/// few megabytes.
pub const PLAN_BYTES_MAX: u64 = 64 << 20;
/// Largest summary.json (of a run, a sweep or a gate) drill reads.
pub const SUMMARY_BYTES_MAX: u64 = 64 << 20;
/// Largest trace.jsonl drill reads.
pub const TRACE_BYTES_MAX: u64 = 512 << 20;

/// The text of the regular file `path`, refused when it is something else (a folder, a device
/// such as /dev/zero, a pipe), larger than `limit` bytes, or not UTF-8. `what` names the file
/// in messages (`plan file`, `summary`).
pub fn read_limited(path: &Path, limit: u64, what: &str) -> Result<String, CliError> {
    let meta = std::fs::metadata(path).map_err(|e| CliError::io(&format!("cannot read {what}"), path, e))?;
    if !meta.is_file() {
        return Err(CliError::new(format!("cannot read {what} {}: not a regular file", path.display())));
    }
    if meta.len() > limit {
        return Err(too_large(path, what, limit));
    }
    let file = File::open(path).map_err(|e| CliError::io(&format!("cannot read {what}"), path, e))?;
    let mut bytes = Vec::new();
    // The file may grow after the size was read; the limit holds all the same.
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| CliError::io(&format!("cannot read {what}"), path, e))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(path, what, limit));
    }
    String::from_utf8(bytes).map_err(|_| CliError::new(format!("malformed {what} {}: not UTF-8 text", path.display())))
}

fn too_large(path: &Path, what: &str, limit: u64) -> CliError {
    CliError::new(format!("cannot read {what} {}: larger than {} MiB, the limit for it", path.display(), limit >> 20))
}

/// Reads `path` as JSON of type `T`, within `limit` bytes.
pub fn read_json_limited<T: serde::de::DeserializeOwned>(path: &Path, limit: u64, what: &str) -> Result<T, CliError> {
    let text = read_limited(path, limit, what)?;
    serde_json::from_str(&text).map_err(|e| CliError::new(format!("malformed {what} {}: {e}", path.display())))
}

/// The lines of the trace at `path`, after checking it is a whole trace of a run: not empty,
/// every line a JSON object, the first `run.start`, the file
/// ending with a newline (a cut trace does not), and, when the run's summary is known, as many
/// lines as it counted (`expected_lines`: a trace cut at a line's end). A run that panicked has
/// no `run.end`, so the last line may be any kind.
pub fn read_trace(path: &Path, expected_lines: Option<u64>) -> Result<Vec<String>, CliError> {
    let text = read_limited(path, TRACE_BYTES_MAX, "trace")?;
    let bad = |why: String| CliError::new(format!("malformed trace {}: {why}", path.display()));
    if text.is_empty() {
        return Err(bad("it is empty".into()));
    }
    if !text.ends_with('\n') {
        return Err(bad("its last line is cut short (no newline at the end)".into()));
    }
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    for (i, line) in lines.iter().enumerate() {
        let kind = trace_kind(line).map_err(|why| bad(format!("line {}: {why}", i + 1)))?;
        if i == 0 && kind != "run.start" {
            return Err(bad(format!("line 1 is {kind}, not run.start")));
        }
    }
    match expected_lines {
        Some(n) if n != lines.len() as u64 => Err(bad(format!("it has {} lines where its summary.json counts {n}", lines.len()))),
        _ => Ok(lines),
    }
}

/// The `kind` of one trace line (`?` when it has none), or why it is not a trace line. Lines
/// are only checked to be JSON objects: a line edited into another object is for `drill replay`
/// to show as a difference.
fn trace_kind(line: &str) -> Result<String, String> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    let obj = value.as_object().ok_or("not a JSON object")?;
    Ok(obj.get("kind").and_then(serde_json::Value::as_str).unwrap_or("?").to_string())
}

/// Checks that a path given on the command line is UTF-8: drill writes paths into summaries,
/// replay commands and reports, which are UTF-8 text.
pub fn parse_path(text: &std::ffi::OsStr) -> Result<PathBuf, String> {
    match text.to_str() {
        Some("") => Err("a path must not be empty".to_string()),
        Some(_) => Ok(PathBuf::from(text)),
        None => Err(format!("{} is not UTF-8; drill writes its paths into UTF-8 reports", Path::new(text).display())),
    }
}

/// `path` made absolute and free of `.` and `..`, resolving links in the part of it that
/// exists, so that two spellings of one folder compare equal even before it is created.
pub fn absolute(path: &Path) -> PathBuf {
    let joined = if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir().map(|d| d.join(path)).unwrap_or_else(|_| path.to_path_buf()) };
    let mut clean = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                clean.pop();
            }
            other => clean.push(other.as_os_str()),
        }
    }
    let mut missing = Vec::new();
    let mut existing = clean.as_path();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            let mut out = real;
            for part in missing.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_os_string());
                existing = parent;
            }
            _ => return clean,
        }
    }
}

/// True when `a` and `b` are the same folder or one lies inside the other.
pub fn overlaps(a: &Path, b: &Path) -> bool {
    let (a, b) = (absolute(a), absolute(b));
    a.starts_with(&b) || b.starts_with(&a)
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = r#"{"t_us":0,"node":"world","kind":"run.start","detail":{}}"#;
    const END: &str = r#"{"t_us":5,"node":"world","kind":"run.end","detail":{}}"#;

    #[test]
    fn only_whole_traces_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("trace.jsonl");
        let good = format!("{START}\n{END}\n");
        std::fs::write(&path, &good).unwrap();
        assert_eq!(read_trace(&path, Some(2)).unwrap().len(), 2);
        assert_eq!(read_trace(&path, None).unwrap().len(), 2);
        assert!(read_trace(&path, Some(3)).unwrap_err().to_string().contains("counts 3"));
        let cases = [
            ("", "empty"),
            (&good[..good.len() - 1], "cut short"),
            (&good[..good.len() / 2], "cut short"),
            ("not json\n", "not JSON"),
            ("[1]\n", "not a JSON object"),
            (&format!("{END}\n{END}\n"), "not run.start"),
            (&format!("{START}\n[]\n{END}\n"), "line 2: not a JSON object"),
        ];
        for (text, want) in cases {
            std::fs::write(&path, text).unwrap();
            let err = read_trace(&path, None).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn devices_folders_and_large_files_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(read_limited(Path::new("/dev/zero"), 10, "plan file").unwrap_err().to_string().contains("not a regular file"));
        assert!(read_limited(tmp.path(), 10, "plan file").is_err());
        let big = tmp.path().join("big");
        std::fs::write(&big, vec![b'x'; 11]).unwrap();
        assert!(read_limited(&big, 10, "plan file").unwrap_err().to_string().contains("larger than"));
        assert_eq!(read_limited(&big, 11, "plan file").unwrap().len(), 11);
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(read_limited(&link, 10, "trace").unwrap_err().to_string().contains("not a regular file"));
    }

    #[test]
    fn absolute_paths_compare_spellings_of_one_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        std::fs::create_dir(&a).unwrap();
        assert_eq!(absolute(&a.join("../a/./b")), absolute(&a).join("b"));
        assert!(overlaps(&a, &a.join("x/y")) && overlaps(&a.join("x"), &a) && !overlaps(&a, &tmp.path().join("ab")));
    }

    #[test]
    fn paths_must_be_utf8_and_not_empty() {
        use std::os::unix::ffi::OsStrExt;
        assert!(parse_path(std::ffi::OsStr::from_bytes(b"out\xff")).is_err());
        assert!(parse_path(std::ffi::OsStr::new("")).is_err());
        assert_eq!(parse_path(std::ffi::OsStr::new("a b")), Ok(PathBuf::from("a b")));
    }
}

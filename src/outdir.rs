//! Output folders, and the rule that drill never overwrites files it did not write.
//!
//! An output folder may be missing (it is created), empty, or hold exactly what an earlier drill
//! command of the same kind left there (it is emptied first, so no stale file survives next to
//! new ones). Anything else is refused before any work starts.

use std::fs;
use std::path::{Path, PathBuf};

use drill_reports::{Summary, SweepSummary};

use crate::error::CliError;
use crate::gatefiles::{JUNIT_FILE, MARKDOWN_FILE};
use crate::runfiles::{read_json, PLAN_FILE, REPORT_FILE, RUN_FILES, SUMMARY_FILE, TRACE_FILE};

/// The scratch folder inside a sweep folder where workers write runs in progress. It sits inside
/// the sweep folder so that keeping a failing run is a rename on the same file system.
pub const WORK_DIR: &str = ".drill-work";

/// Makes `dir` ready for one run's files. Returns the folders this call created, deepest first,
/// so that a run refused as bad input can leave no trace with [`remove_created`].
pub fn prepare_run_dir(dir: &Path) -> Result<Vec<PathBuf>, CliError> {
    match list(dir)? {
        None => {
            let missing: Vec<PathBuf> = dir.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists()).map(Path::to_path_buf).collect();
            create(dir).map(|()| missing)
        }
        Some(names) if names.is_empty() => Ok(Vec::new()),
        Some(_) if is_previous_run(dir) => remove_run_files(dir).map(|()| Vec::new()),
        Some(_) => Err(refuse(dir, "run")),
    }
}

/// Makes `dir` ready for a sweep: summary.json, its reports (junit.xml, report.md,
/// report.html), seed-N/ folders and the scratch folder.
pub fn prepare_sweep_dir(dir: &Path) -> Result<(), CliError> {
    match list(dir)? {
        None => create(dir),
        Some(names) if names.is_empty() => Ok(()),
        Some(names) if is_previous_sweep(dir, &names) => remove_sweep(dir, &names),
        Some(_) => Err(refuse(dir, "sweep")),
    }
}

/// Creates `dir` and its parents.
pub fn create(dir: &Path) -> Result<(), CliError> {
    fs::create_dir_all(dir).map_err(|e| CliError::io("cannot create folder", dir, e))
}

/// Removes the folders [`prepare_run_dir`] created, deepest first, as long as they are empty.
pub fn remove_created(created: &[PathBuf]) {
    for dir in created {
        // A folder that is no longer empty is exactly what should stay as it is.
        if fs::remove_dir(dir).is_err() {
            return;
        }
    }
}

/// The names in `dir`, or `None` when it does not exist.
fn list(dir: &Path) -> Result<Option<Vec<String>>, CliError> {
    match fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CliError::io("cannot read folder", dir, e)),
        Ok(meta) if !meta.is_dir() => return Err(CliError::new(format!("{} exists and is not a folder", dir.display()))),
        Ok(_) => {}
    }
    let entries = fs::read_dir(dir).map_err(|e| CliError::io("cannot read folder", dir, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| CliError::io("cannot read folder", dir, e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(Some(names))
}

fn refuse(dir: &Path, kind: &str) -> CliError {
    CliError::new(format!("{} is not empty and does not hold a previous drill {kind}; choose another --out or empty it", dir.display()))
}

/// Removes a previous output of drill from `dir`, whose entries are `names`: run files and
/// `files` are removed, folders named in `dirs` are removed with their contents. Anything else
/// makes it refuse before removing anything.
pub fn clear_previous(dir: &Path, names: &[String], files: &[&str], dirs: &[&str]) -> Result<(), CliError> {
    let known_file = |n: &str| RUN_FILES.contains(&n) || files.contains(&n);
    let ok = names.iter().all(|n| {
        let path = dir.join(n);
        (known_file(n) && path.is_file()) || (dirs.contains(&n.as_str()) && is_real_dir(&path))
    });
    if !ok {
        return Err(refuse(dir, "output"));
    }
    for n in names {
        let path = dir.join(n);
        let removed = if path.is_file() { fs::remove_file(&path) } else { fs::remove_dir_all(&path) };
        removed.map_err(|e| CliError::io("cannot remove", &path, e))?;
    }
    Ok(())
}

/// True when every entry of `dir` is a regular file named like a run file (vacuously for an
/// empty folder: a worker's scratch folder may not have been written yet).
fn holds_only_run_files(dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    entries.into_iter().all(|entry| {
        entry.is_ok_and(|e| {
            let is_file = e.file_type().is_ok_and(|t| t.is_file());
            is_file && RUN_FILES.contains(&e.file_name().to_string_lossy().as_ref())
        })
    })
}

/// A previous run: only run files, and either a summary drill wrote, or (for a run that was
/// interrupted before its summary) both the plan and the trace.
fn is_previous_run(dir: &Path) -> bool {
    if !holds_only_run_files(dir) {
        return false;
    }
    let summary = dir.join(SUMMARY_FILE);
    if summary.exists() {
        return read_json::<Summary>(&summary).is_ok();
    }
    dir.join(PLAN_FILE).is_file() && dir.join(TRACE_FILE).is_file()
}

fn remove_run_files(dir: &Path) -> Result<(), CliError> {
    for name in RUN_FILES {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(CliError::io("cannot remove", &path, e)),
            _ => {}
        }
    }
    Ok(())
}

/// The report files a sweep writes next to its summary.json.
const SWEEP_REPORTS: [&str; 3] = [JUNIT_FILE, MARKDOWN_FILE, REPORT_FILE];

/// A previous sweep: its summary.json or its scratch folder, plus its reports and seed-N/ run
/// folders.
fn is_previous_sweep(dir: &Path, names: &[String]) -> bool {
    let marked = names.iter().any(|n| n == SUMMARY_FILE || n == WORK_DIR);
    marked && names.iter().all(|name| is_sweep_entry(&dir.join(name), name))
}

fn is_sweep_entry(path: &Path, name: &str) -> bool {
    if name == SUMMARY_FILE {
        return path.is_file() && read_json::<SweepSummary>(path).is_ok();
    }
    if SWEEP_REPORTS.contains(&name) {
        return path.is_file();
    }
    if name == WORK_DIR {
        return is_real_dir(path) && subfolders(path).is_some_and(|dirs| dirs.iter().all(|d| holds_only_run_files(d)));
    }
    is_seed_folder_name(name) && is_real_dir(path) && holds_only_run_files(path)
}

fn remove_sweep(dir: &Path, names: &[String]) -> Result<(), CliError> {
    for name in names {
        let path = dir.join(name);
        // Every entry was checked above to be drill's own output.
        let removed = if name == SUMMARY_FILE || SWEEP_REPORTS.contains(&name.as_str()) { fs::remove_file(&path) } else { fs::remove_dir_all(&path) };
        removed.map_err(|e| CliError::io("cannot remove", &path, e))?;
    }
    Ok(())
}

/// `seed-` followed by a seed number, as sweeps name the folders of failing seeds.
pub fn is_seed_folder_name(name: &str) -> bool {
    name.strip_prefix("seed-").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// A directory that is not a symbolic link (a link could lead removal outside the folder).
fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// The entries of `dir` when every one is a real directory.
fn subfolders(dir: &Path) -> Option<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if !is_real_dir(&path) {
            return None;
        }
        dirs.push(path);
    }
    Some(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary_text() -> String {
        let s = Summary {
            format_version: 1,
            drill_version: "0".into(),
            seed: 1,
            scenario: "s".into(),
            profile: "p".into(),
            outcome: drill_reports::Outcome::Pass,
            violations: vec![],
            fingerprint: String::new(),
            plan_hash: String::new(),
            faults: Default::default(),
            checks: Default::default(),
            sim_time_ms: 0,
            steps: 0,
            trace_lines: 0,
            replay: String::new(),
            drills: Default::default(),
        };
        serde_json::to_string(&s).unwrap()
    }

    fn write_run(dir: &Path) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join(PLAN_FILE), "{}").unwrap();
        fs::write(dir.join(TRACE_FILE), "{}\n").unwrap();
        fs::write(dir.join(SUMMARY_FILE), summary_text()).unwrap();
    }

    #[test]
    fn creates_missing_and_accepts_empty_folders() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let created = prepare_run_dir(&dir).unwrap();
        assert_eq!(created, [dir.clone(), tmp.path().join("a")]);
        assert_eq!(prepare_run_dir(&dir), Ok(vec![]));
        remove_created(&created);
        assert!(!tmp.path().join("a").exists());
    }

    #[test]
    fn replaces_a_previous_run_but_not_foreign_files() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        write_run(&run);
        assert_eq!(prepare_run_dir(&run), Ok(vec![]));
        assert!(fs::read_dir(&run).unwrap().next().is_none());

        write_run(&run);
        fs::write(run.join("notes.txt"), "mine").unwrap();
        assert!(prepare_run_dir(&run).is_err());
        assert!(run.join("notes.txt").exists() && run.join(TRACE_FILE).exists());
    }

    #[test]
    fn a_lone_plan_file_is_not_a_run() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join(PLAN_FILE), "{}").unwrap();
        assert!(prepare_run_dir(tmp.path()).is_err());
        assert!(tmp.path().join(PLAN_FILE).exists());
    }

    #[test]
    fn a_file_is_not_a_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, "x").unwrap();
        assert!(prepare_run_dir(&file).is_err());
        assert!(prepare_sweep_dir(&file).is_err());
    }

    #[test]
    fn replaces_an_interrupted_sweep_but_not_a_run_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let sweep = tmp.path().join("sweep");
        write_run(&sweep.join("seed-3"));
        fs::create_dir_all(sweep.join(WORK_DIR).join("seed-4")).unwrap();
        assert_eq!(prepare_sweep_dir(&sweep), Ok(()));
        assert!(fs::read_dir(&sweep).unwrap().next().is_none());

        let run = tmp.path().join("run");
        write_run(&run);
        assert!(prepare_sweep_dir(&run).is_err());
        assert!(run.join(SUMMARY_FILE).exists());
    }

    #[test]
    fn seed_folder_names() {
        assert!(is_seed_folder_name("seed-0") && is_seed_folder_name("seed-18446744073709551615"));
        assert!(!is_seed_folder_name("seed-") && !is_seed_folder_name("seed-1a") && !is_seed_folder_name("x"));
    }
}

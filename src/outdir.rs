//! Output folders, and the rule that drill never overwrites files it did not write.
//!
//! An output folder may be missing (it is created), empty, or hold exactly what an earlier drill
//! command of the same kind left there (it is emptied first, so no stale file survives next to
//! new ones). Anything else is refused before any work starts. A folder is locked
//! ([`FolderLock`]) before it is looked at, and stays locked while the command writes it.

use std::fs;
use std::path::{Path, PathBuf};

use drill_reports::{Summary, SweepSummary};

use crate::error::CliError;
use crate::gatefiles::{JUNIT_FILE, MARKDOWN_FILE};
use crate::lock::{FolderLock, LOCK_FILE};
use crate::runfiles::{read_json, PLAN_FILE, REPORT_FILE, RUN_FILES, SUMMARY_FILE, TRACE_FILE};

/// The scratch folder inside a sweep folder where workers write runs in progress. It sits inside
/// the sweep folder so that keeping a failing run is a rename on the same file system.
pub const WORK_DIR: &str = ".drill-work";

/// An output folder this command holds: locked, and ready for its files.
#[derive(Debug)]
pub struct Claim {
    /// Released (and its file removed) when the claim is dropped.
    pub lock: FolderLock,
    /// The folders the claim created, deepest first, for [`Claim::abandon`].
    created: Vec<PathBuf>,
}

impl Claim {
    /// Gives the folder up after a refusal of bad input: the lock is released and the folders
    /// the claim created are removed again, so that nothing is left behind.
    pub fn abandon(self) {
        let Claim { lock, created } = self;
        drop(lock);
        remove_created(&created);
    }
}

/// Creates `dir` if missing, locks it for `holder`, and runs `prepare` on its entries (the lock
/// file left out). On any error the folder is left as it was found.
pub fn claim(dir: &Path, holder: &str, prepare: impl FnOnce(&Path, &[String]) -> Result<(), CliError>) -> Result<Claim, CliError> {
    let created = match fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let missing: Vec<PathBuf> = dir.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists()).map(Path::to_path_buf).collect();
            create(dir)?;
            missing
        }
        Err(e) => return Err(CliError::io("cannot read folder", dir, e)),
        Ok(meta) if !meta.is_dir() => return Err(CliError::new(format!("{} exists and is not a folder", dir.display()))),
        Ok(_) => Vec::new(),
    };
    let lock = match FolderLock::take(dir, holder) {
        Ok(lock) => lock,
        Err(e) => {
            remove_created(&created);
            return Err(e);
        }
    };
    let claim = Claim { lock, created };
    let names = match list(dir) {
        Ok(names) => names.unwrap_or_default(),
        Err(e) => {
            claim.abandon();
            return Err(e);
        }
    };
    match prepare(dir, &names) {
        Ok(()) => Ok(claim),
        Err(e) => {
            claim.abandon();
            Err(e)
        }
    }
}

/// Claims `dir` for one run's files: it may hold a previous run, which is removed.
pub fn claim_run_dir(dir: &Path, holder: &str) -> Result<Claim, CliError> {
    claim(dir, holder, |dir, names| {
        if names.is_empty() {
            Ok(())
        } else if is_previous_run(dir) {
            remove_run_files(dir)
        } else {
            Err(refuse(dir, "run"))
        }
    })
}

/// Claims `dir` for a sweep: summary.json, its reports (junit.xml, report.md, report.html),
/// seed-N/ folders and the scratch folder. It may hold a previous sweep, which is removed.
pub fn claim_sweep_dir(dir: &Path, holder: &str) -> Result<Claim, CliError> {
    claim(dir, holder, |dir, names| {
        if names.is_empty() {
            Ok(())
        } else if is_previous_sweep(dir, names) {
            remove_sweep(dir, names)
        } else {
            Err(refuse(dir, "sweep"))
        }
    })
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

/// The names in `dir` but its lock file, or `None` when it does not exist.
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
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != LOCK_FILE {
            names.push(name);
        }
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

/// True when every entry of `dir` is a regular file named like a run file or the lock file
/// (vacuously for an empty folder: a worker's scratch folder may not have been written yet).
fn holds_only_run_files(dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    entries.into_iter().all(|entry| {
        entry.is_ok_and(|e| {
            let is_file = e.file_type().is_ok_and(|t| t.is_file());
            let name = e.file_name().to_string_lossy().into_owned();
            is_file && (RUN_FILES.contains(&name.as_str()) || name == LOCK_FILE)
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
        // A merge's summary is someone's combined results, not a sweep to run again.
        return path.is_file() && read_json::<SweepSummary>(path).is_ok_and(|s| s.merged_from.is_empty());
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
            mutations: Vec::new(),
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
        let claim = claim_run_dir(&dir, "drill run").unwrap();
        assert!(dir.join(LOCK_FILE).is_file());
        claim.abandon();
        assert!(!tmp.path().join("a").exists());
        create(&dir).unwrap();
        drop(claim_run_dir(&dir, "drill run").unwrap());
        assert!(dir.is_dir() && !dir.join(LOCK_FILE).exists());
    }

    #[test]
    fn replaces_a_previous_run_but_not_foreign_files() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        write_run(&run);
        let claim = claim_run_dir(&run, "drill run").unwrap();
        assert_eq!(list(&run).unwrap(), Some(vec![]));
        drop(claim);

        write_run(&run);
        fs::write(run.join("notes.txt"), "mine").unwrap();
        assert!(claim_run_dir(&run, "drill run").is_err());
        assert!(run.join("notes.txt").exists() && run.join(TRACE_FILE).exists() && !run.join(LOCK_FILE).exists());
    }

    #[test]
    fn a_lone_plan_file_is_not_a_run() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join(PLAN_FILE), "{}").unwrap();
        assert!(claim_run_dir(tmp.path(), "drill run").is_err());
        assert!(tmp.path().join(PLAN_FILE).exists());
    }

    #[test]
    fn a_file_is_not_a_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, "x").unwrap();
        assert!(claim_run_dir(&file, "drill run").is_err());
        assert!(claim_sweep_dir(&file, "drill sweep").is_err());
    }

    #[test]
    fn replaces_an_interrupted_sweep_but_not_a_run_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let sweep = tmp.path().join("sweep");
        write_run(&sweep.join("seed-3"));
        fs::create_dir_all(sweep.join(WORK_DIR).join("seed-4")).unwrap();
        fs::write(sweep.join(LOCK_FILE), "drill sweep (pid 1)\n").unwrap();
        drop(claim_sweep_dir(&sweep, "drill sweep").unwrap());
        assert!(fs::read_dir(&sweep).unwrap().next().is_none());

        let run = tmp.path().join("run");
        write_run(&run);
        assert!(claim_sweep_dir(&run, "drill sweep").is_err());
        assert!(run.join(SUMMARY_FILE).exists());
    }

    #[test]
    fn seed_folder_names() {
        assert!(is_seed_folder_name("seed-0") && is_seed_folder_name("seed-18446744073709551615"));
        assert!(!is_seed_folder_name("seed-") && !is_seed_folder_name("seed-1a") && !is_seed_folder_name("x"));
    }
}

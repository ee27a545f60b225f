//! The files of a gate or sweep folder (summary.json, junit.xml, report.md, report.html) for
//! `drill gate`, `drill sweep` and `drill merge`, the links from its reports to run folders, and
//! claiming a gate's or merge's folder.

use std::fs;
use std::path::{Component, Path, PathBuf};

use drill_reports::{render_dashboard, render_junit, render_markdown, GateSummary, SweepSummary};

use crate::error::CliError;
use crate::outdir::{self, is_seed_folder_name, Claim, WORK_DIR};
use crate::runfiles::{read_json, write_atomic, write_json, REPORT_FILE, SUMMARY_FILE};

pub const JUNIT_FILE: &str = "junit.xml";
pub const MARKDOWN_FILE: &str = "report.md";
/// Folder of a gate holding one folder per drill, each with its failing seeds.
pub const DRILLS_DIR: &str = "drills";
/// Folder of a gate holding both runs of every nondeterministic seed.
pub const NONDETERMINISTIC_DIR: &str = "nondeterministic";

/// Writes summary.json, junit.xml, report.md and report.html into `out`.
pub fn write_gate_files(out: &Path, g: &GateSummary) -> Result<(), CliError> {
    write_json(&out.join(SUMMARY_FILE), g)?;
    write_reports(out, g)
}

/// Writes a sweep's summary.json, and its junit.xml, report.md and report.html rendered as a
/// gate's without drills, determinism sample or coverage ([`GateSummary::of_sweep`]).
pub fn write_sweep_files(out: &Path, s: &SweepSummary) -> Result<(), CliError> {
    write_json(&out.join(SUMMARY_FILE), s)?;
    write_reports(out, &GateSummary::of_sweep(s))
}

/// Writes junit.xml, report.md and report.html into `out`, linking failing runs' timelines.
fn write_reports(out: &Path, g: &GateSummary) -> Result<(), CliError> {
    let link = |folder: &str| timeline_href(out, folder);
    write_text(&out.join(JUNIT_FILE), &render_junit(g))?;
    write_text(&out.join(MARKDOWN_FILE), &render_markdown(g, &link))?;
    write_text(&out.join(REPORT_FILE), &render_dashboard(g, &link))
}

fn write_text(path: &Path, text: &str) -> Result<(), CliError> {
    write_atomic(path, text.as_bytes())
}

/// The href from a report in `from` to the timeline of the run folder `folder`.
pub fn timeline_href(from: &Path, folder: &str) -> String {
    let target = Path::new(folder).join(REPORT_FILE);
    let rel = match (fs::canonicalize(from), fs::canonicalize(folder)) {
        (Ok(a), Ok(b)) => relative(&a, &b.join(REPORT_FILE)),
        _ => target,
    };
    rel.to_string_lossy().replace('\\', "/")
}

/// The path from folder `from` to `to`, both absolute.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let a: Vec<Component> = from.components().collect();
    let b: Vec<Component> = to.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..a.len() {
        out.push("..");
    }
    for c in &b[common..] {
        out.push(c.as_os_str());
    }
    out
}

/// What may already be in a folder that a gate or a merge writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replaces {
    /// A gate's own folder: an earlier gate (or gate shard), or one it left unfinished.
    Gate,
    /// A merge's own folder: an earlier merge. A sweep's or gate's folder is never replaced, so
    /// that `--out` cannot destroy a shard's results.
    Merge,
}

/// Claims `dir` for a gate or a merge: missing, empty, or holding exactly what an earlier
/// command of the same kind wrote (then emptied). Anything else is refused before any work
/// starts, with the folder left as it was.
pub fn claim_gate_dir(dir: &Path, holder: &str, replaces: Replaces) -> Result<Claim, CliError> {
    outdir::claim(dir, holder, |dir, names| {
        if names.is_empty() {
            return Ok(());
        }
        let summary = dir.join(SUMMARY_FILE);
        let merged_from = |s: &SweepSummary| !s.merged_from.is_empty();
        let marked = match replaces {
            Replaces::Gate => {
                read_json::<GateSummary>(&summary).is_ok_and(|g| !merged_from(&g.sweep))
                    || (names.iter().any(|n| n == WORK_DIR) && !names.iter().any(|n| n == SUMMARY_FILE))
            }
            Replaces::Merge => {
                read_json::<GateSummary>(&summary).is_ok_and(|g| merged_from(&g.sweep)) || read_json::<SweepSummary>(&summary).is_ok_and(|s| merged_from(&s))
            }
        };
        if !marked || !names.iter().all(|n| is_gate_entry(dir, n)) {
            let kind = if replaces == Replaces::Gate { "gate" } else { "merge" };
            return Err(CliError::new(format!("{} is not empty and does not hold a previous drill {kind}; choose another --out or empty it", dir.display())));
        }
        for n in names {
            let path = dir.join(n);
            let removed = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            removed.map_err(|e| CliError::io("cannot remove", &path, e))?;
        }
        Ok(())
    })
}

fn is_gate_entry(dir: &Path, name: &str) -> bool {
    let path = dir.join(name);
    let real_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
    match name {
        SUMMARY_FILE | JUNIT_FILE | MARKDOWN_FILE | REPORT_FILE => path.is_file(),
        WORK_DIR | DRILLS_DIR | NONDETERMINISTIC_DIR => real_dir,
        n => real_dir && is_seed_folder_name(n),
    }
}

/// Where a run folder recorded in a summary is, given the folder the summary now sits in:
/// `seed-N`, `drills/NAME/PROFILE/seed-N` (`drills/NAME/seed-N` in older gates) or
/// `nondeterministic/NAME` inside `dir`.
pub fn relocate(folder: &str, dir: &Path) -> String {
    let parts: Vec<&str> = Path::new(folder).iter().filter_map(|c| c.to_str()).collect();
    let n = parts.len();
    let keep = if n >= 4 && parts[n - 4] == DRILLS_DIR {
        4
    } else if n >= 3 && parts[n - 3] == DRILLS_DIR {
        3
    } else if n >= 2 && parts[n - 2] == NONDETERMINISTIC_DIR {
        2
    } else {
        1
    };
    let mut path = dir.to_path_buf();
    for p in &parts[n.saturating_sub(keep)..] {
        path.push(p);
    }
    path.to_string_lossy().into_owned()
}

/// A sweep summary whose failing folders point into `dir`.
pub fn relocate_sweep(mut s: SweepSummary, dir: &Path) -> SweepSummary {
    for f in &mut s.failing {
        f.folder = relocate(&f.folder, dir);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_and_descend() {
        let p = relative(Path::new("/a/b/merged"), Path::new("/a/b/shard-1/seed-3/report.html"));
        assert_eq!(p, PathBuf::from("../shard-1/seed-3/report.html"));
    }

    #[test]
    fn relocates_the_folders_a_gate_writes() {
        let d = Path::new("shard-2");
        assert_eq!(relocate("out/gate/seed-4", d), "shard-2/seed-4");
        assert_eq!(relocate("out/drills/x/seed-4", d), "shard-2/drills/x/seed-4");
        assert_eq!(relocate("out/gate/drills/x/swarm/seed-4", d), "shard-2/drills/x/swarm/seed-4");
        assert_eq!(relocate("g/nondeterministic/sync-basic-seed-4", d), "shard-2/nondeterministic/sync-basic-seed-4");
    }

    #[test]
    fn refuses_a_folder_of_other_files() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("notes.txt"), "mine").unwrap();
        for replaces in [Replaces::Gate, Replaces::Merge] {
            assert!(claim_gate_dir(tmp.path(), "drill gate", replaces).is_err());
        }
        assert!(tmp.path().join("notes.txt").exists() && !tmp.path().join(crate::lock::LOCK_FILE).exists());
    }
}

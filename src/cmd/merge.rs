//! `drill merge DIR...`: one summary from the summaries of sweeps or gates run as shards
//! (`--shard I/N`, all N of them) or over adjacent seed ranges. Overlapping, missing or
//! mismatched parts are refused as bad input (exit code 2) before anything is written.
//!
//! `--out` must be a folder of its own: never one of the merged folders (or inside or around
//! one), never a sweep's or gate's folder; an earlier merge's folder is replaced.
//!
//! A merge of gates judges coverage over all shards and exits like a gate (0, 1, 3, 4 or 5); a
//! merge of sweeps exits with the worst outcome's code. Either writes summary.json, junit.xml,
//! report.md and report.html. Failing runs stay in their shard's folder; the merged summary and
//! reports point there.

use std::path::{Path, PathBuf};

use drill_reports::gate::{merge_drills, merge_sweeps, slowest, Determinism, GATE_KIND};
use drill_reports::{GateSummary, SweepSummary, Verdict};
use serde_json::Value;

use crate::cli::MergeArgs;
use crate::cmd::gate::registry_ids;
use crate::error::CliError;
use crate::gatefiles::{claim_gate_dir, relocate, relocate_sweep, write_gate_files, write_sweep_files, Replaces};
use crate::input::{absolute, overlaps};
use crate::runfiles::{read_json, DRILL_VERSION, SUMMARY_FILE};

/// Merges the folders' summaries into `--out`.
pub fn merge(args: MergeArgs) -> Result<i32, CliError> {
    if let Some(d) = args.dirs.iter().find(|d| overlaps(&args.out, d)) {
        return Err(CliError::new(format!(
            "--out {} is {} the merged folder {}; merge into a folder of its own",
            args.out.display(),
            if absolute(&args.out) == absolute(d) { "the same folder as" } else { "inside or around" },
            d.display()
        )));
    }
    let parts = read_parts(&args.dirs)?;
    let gates = parts.iter().filter(|(_, v)| is_gate(v)).count();
    if gates != 0 && gates != parts.len() {
        return Err(CliError::new("cannot merge gates with sweeps"));
    }
    println!("drill {DRILL_VERSION} merge of {} {}", parts.len(), if gates > 0 { "gates" } else { "sweeps" });
    if gates > 0 {
        merge_gates(&parts, &args.out)
    } else {
        merge_sweep_parts(&parts, &args.out)
    }
}

fn is_gate(v: &Value) -> bool {
    v.get("kind").and_then(Value::as_str) == Some(GATE_KIND)
}

/// Each folder's summary; a folder that is not a sweep's or gate's is refused, as is one that
/// was interrupted (its counts cover only part of its seeds) or given twice.
fn read_parts(dirs: &[PathBuf]) -> Result<Vec<(PathBuf, Value)>, CliError> {
    let mut parts: Vec<(PathBuf, Value)> = Vec::new();
    for d in dirs {
        if let Some((twice, _)) = parts.iter().find(|(p, _)| absolute(p) == absolute(d)) {
            return Err(CliError::new(format!("{} and {} are the same folder", twice.display(), d.display())));
        }
        if !d.is_dir() {
            return Err(CliError::new(format!("{} is not a sweep or gate folder", d.display())));
        }
        let v: Value = read_json(&d.join(SUMMARY_FILE))?;
        let sweep = if is_gate(&v) { v.get("sweep") } else { Some(&v) };
        if v.get("fingerprint").is_some() && v.get("counts").is_none() {
            return Err(CliError::new(format!("{} is a run folder; merge joins the folders of sweeps or gates", d.display())));
        }
        if sweep.and_then(|s| s.get("interrupted")).and_then(Value::as_bool) == Some(true) {
            return Err(CliError::new(format!(
                "{} holds an interrupted run (its summary covers only the seeds that finished); run it again first",
                d.display()
            )));
        }
        parts.push((d.clone(), v));
    }
    Ok(parts)
}

/// The merged folders, as the merged summary records them.
fn sources(parts: &[(PathBuf, Value)]) -> Vec<String> {
    parts.iter().map(|(d, _)| d.to_string_lossy().into_owned()).collect()
}

fn parse<T: serde::de::DeserializeOwned>(dir: &Path, v: &Value) -> Result<T, CliError> {
    serde_json::from_value(v.clone()).map_err(|e| CliError::new(format!("malformed {}: {e}", dir.join(SUMMARY_FILE).display())))
}

fn merge_sweep_parts(parts: &[(PathBuf, Value)], out: &Path) -> Result<i32, CliError> {
    let sweeps = parts.iter().map(|(d, v)| parse::<SweepSummary>(d, v).map(|s| relocate_sweep(s, d))).collect::<Result<Vec<_>, _>>()?;
    let mut merged = merge_sweeps(&sweeps).map_err(|e| CliError::new(e.to_string()))?;
    merged.merged_from = sources(parts);
    let claim = claim_gate_dir(out, "drill merge", Replaces::Merge)?;
    write_sweep_files(out, &merged)?;
    drop(claim);
    println!(
        "seeds {}: {} seeds, {} failing; files: {} (summary.json, junit.xml, report.md, report.html)",
        merged.seeds,
        merged.counts.total(),
        merged.counts.failing(),
        out.display()
    );
    for f in &merged.failing {
        println!("failing seed {} {}: {} ({})", f.seed, f.outcome, f.replay, f.folder);
    }
    println!("outcome: {}", merged.outcome);
    Ok(merged.outcome.exit_code())
}

fn merge_gates(parts: &[(PathBuf, Value)], out: &Path) -> Result<i32, CliError> {
    let gates = parts.iter().map(|(d, v)| parse::<GateSummary>(d, v).map(|g| relocate_gate(g, d))).collect::<Result<Vec<_>, _>>()?;
    let sweeps: Vec<SweepSummary> = gates.iter().map(|g| g.sweep.clone()).collect();
    let mut sweep = merge_sweeps(&sweeps).map_err(|e| CliError::new(e.to_string()))?;
    sweep.merged_from = sources(parts);
    if let Some(g) = gates.iter().find(|g| g.drill_seeds_min != gates[0].drill_seeds_min) {
        return Err(CliError::new(format!(
            "the gates need drills exercised on different numbers of seeds ({} and {}); merge shards of one gate",
            gates[0].drill_seeds_min, g.drill_seeds_min
        )));
    }
    let drill_parts: Vec<&[drill_reports::gate::DrillResult]> = gates.iter().map(|g| g.drills.as_slice()).collect();
    let drills = merge_drills(&drill_parts).map_err(|e| CliError::new(e.to_string()))?;
    let mut determinism = Determinism::default();
    for g in &gates {
        determinism.sampled += g.determinism.sampled;
        determinism.checked += g.determinism.checked;
        determinism.mismatches.extend(g.determinism.mismatches.iter().cloned());
    }
    let mut merged = GateSummary {
        sweep,
        drills,
        determinism,
        unrun: gates.iter().map(|g| g.unrun).sum(),
        slowest: slowest(gates.iter().flat_map(|g| g.slowest.iter().cloned()).collect()),
        wall_seconds: gates.iter().map(|g| g.wall_seconds).fold(0.0, f64::max),
        verdict: Verdict::Pass,
        ..gates[0].clone()
    };
    merged.judge(&registry_ids(), true);
    let claim = claim_gate_dir(out, "drill merge", Replaces::Merge)?;
    write_gate_files(out, &merged)?;
    drop(claim);
    print_merged_gate(&merged, out);
    Ok(merged.exit_code)
}

/// A gate summary whose run folders point into `dir`, where the shard's folder now is.
fn relocate_gate(mut g: GateSummary, dir: &Path) -> GateSummary {
    g.sweep = relocate_sweep(g.sweep, dir);
    for d in &mut g.drills {
        for f in &mut d.failing {
            f.folder = relocate(&f.folder, dir);
        }
    }
    for m in &mut g.determinism.mismatches {
        m.folder = relocate(&m.folder, dir);
    }
    g
}

fn print_merged_gate(g: &GateSummary, out: &Path) {
    let s = &g.sweep;
    println!(
        "sweep seeds {}: {} seeds, {} failing; {} drills; determinism {} of {} seeds, {} mismatches",
        s.seeds,
        s.counts.total(),
        s.counts.failing(),
        g.drills.len(),
        g.determinism.checked,
        g.determinism.sampled,
        g.determinism.mismatches.len()
    );
    for p in &g.shortfalls {
        println!("shortfall: {p}");
    }
    for (scenario, f) in g.failing() {
        println!("failing {scenario} seed {} {}: {} ({})", f.seed, f.outcome, f.replay, f.folder);
    }
    println!("files: {} (summary.json, junit.xml, report.md, report.html)", out.display());
    println!("outcome: {} | exit code {}", g.verdict, g.exit_code);
}

//! `drill merge DIR...`: one summary from the summaries of sweeps or gates run as shards
//! (`--shard I/N`, all N of them) or over adjacent seed ranges. Overlapping, missing or
//! mismatched parts are refused as bad input (exit code 2) before anything is written.
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
use crate::gatefiles::{prepare_gate_dir, relocate, relocate_sweep, write_gate_files, write_sweep_files};
use crate::runfiles::{read_json, DRILL_VERSION, SUMMARY_FILE};

/// Merges the folders' summaries into `--out`.
pub fn merge(args: MergeArgs) -> Result<i32, CliError> {
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

fn read_parts(dirs: &[PathBuf]) -> Result<Vec<(PathBuf, Value)>, CliError> {
    dirs.iter()
        .map(|d| {
            let v: Value = read_json(&d.join(SUMMARY_FILE))?;
            Ok((d.clone(), v))
        })
        .collect()
}

fn parse<T: serde::de::DeserializeOwned>(dir: &Path, v: &Value) -> Result<T, CliError> {
    serde_json::from_value(v.clone()).map_err(|e| CliError::new(format!("malformed {}: {e}", dir.join(SUMMARY_FILE).display())))
}

fn merge_sweep_parts(parts: &[(PathBuf, Value)], out: &Path) -> Result<i32, CliError> {
    let sweeps = parts.iter().map(|(d, v)| parse::<SweepSummary>(d, v).map(|s| relocate_sweep(s, d))).collect::<Result<Vec<_>, _>>()?;
    let merged = merge_sweeps(&sweeps).map_err(|e| CliError::new(e.to_string()))?;
    prepare_gate_dir(out)?;
    write_sweep_files(out, &merged)?;
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
    let sweep = merge_sweeps(&sweeps).map_err(|e| CliError::new(e.to_string()))?;
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
    prepare_gate_dir(out)?;
    write_gate_files(out, &merged)?;
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

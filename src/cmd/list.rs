//! `drill list`: what `--scenario` and `--profile` accept; with `--invariants`, the registry of
//! invariants the reference model checks.

use std::fmt::Write as _;
use std::io::Write as _;

use drill_scenarios::Entry;

use crate::cli::ListArgs;
use crate::error::CliError;

/// Prints the scenarios and the fault profiles with their descriptions (or the invariants).
pub fn list(args: ListArgs) -> Result<i32, CliError> {
    let text = if args.invariants {
        invariants()
    } else if args.drills {
        drills()
    } else {
        section("scenarios", drill_scenarios::scenarios()) + &section("profiles", drill_scenarios::profiles())
    };
    // A reader that stops early (`drill list --drills | head`) is not an error.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(0)
}

fn section(title: &str, entries: &[Entry]) -> String {
    let mut out = format!("{title}:\n");
    let width = entries.iter().map(|e| e.name.len()).max().unwrap_or(0);
    for e in entries {
        let _ = writeln!(out, "  {:width$}  {}", e.name, e.description);
    }
    out
}

fn drills() -> String {
    let all = drill_scenarios::drills::registry();
    let mut out = format!("drills ({}):\n", all.len());
    let width = all.iter().map(|d| d.id.len()).max().unwrap_or(0);
    for d in all {
        let _ = writeln!(out, "  {:width$}  {}: {}", d.id, d.section, d.title);
        let _ = writeln!(out, "  {:width$}  steps: {}", "", d.steps.join(" -> "));
    }
    out
}

fn invariants() -> String {
    let mut out = String::from("invariants:\n");
    let width = drill_model::REGISTRY.iter().map(|i| i.id.len()).max().unwrap_or(0);
    for i in drill_model::REGISTRY {
        let _ = writeln!(out, "  {:width$}  {}", i.id, i.statement);
        let _ = writeln!(out, "  {:width$}  source: runbook {}; checked {}", "", i.runbook, i.checked);
    }
    out
}

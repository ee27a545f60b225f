//! `drill list`: what `--scenario` and `--profile` accept; with `--invariants`, the registry of
//! invariants the reference model checks.

use drill_scenarios::Entry;

use crate::cli::ListArgs;
use crate::error::CliError;

/// Prints the scenarios and the fault profiles with their descriptions (or the invariants).
pub fn list(args: ListArgs) -> Result<i32, CliError> {
    if args.invariants {
        print_invariants();
        return Ok(0);
    }
    if args.drills {
        print_drills();
        return Ok(0);
    }
    print_section("scenarios", drill_scenarios::scenarios());
    print_section("profiles", drill_scenarios::profiles());
    Ok(0)
}

fn print_section(title: &str, entries: &[Entry]) {
    println!("{title}:");
    let width = entries.iter().map(|e| e.name.len()).max().unwrap_or(0);
    for e in entries {
        println!("  {:width$}  {}", e.name, e.description);
    }
}

fn print_drills() {
    let all = drill_scenarios::drills::registry();
    println!("drills ({}):", all.len());
    let width = all.iter().map(|d| d.id.len()).max().unwrap_or(0);
    for d in all {
        println!("  {:width$}  {}: {}", d.id, d.section, d.title);
        println!("  {:width$}  steps: {}", "", d.steps.join(" -> "));
    }
}

fn print_invariants() {
    println!("invariants:");
    let width = drill_model::REGISTRY.iter().map(|i| i.id.len()).max().unwrap_or(0);
    for i in drill_model::REGISTRY {
        println!("  {:width$}  {}", i.id, i.statement);
        println!("  {:width$}  source: runbook {}; checked {}", "", i.runbook, i.checked);
    }
}

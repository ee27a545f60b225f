//! `drill list`: what `--scenario` and `--profile` accept.

use drill_scenarios::Entry;

use crate::cli::ListArgs;
use crate::error::CliError;

/// Prints the scenarios and the fault profiles with their descriptions.
pub fn list(_args: ListArgs) -> Result<i32, CliError> {
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

//! A gate's (or sweep's) `report.md`: the same facts as the dashboard, for a CI job summary or a
//! pull request.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::gate::GateSummary;
use crate::Outcome;

/// Renders the gate's (or sweep's) markdown report. `link` maps a run folder to the link to its timeline.
pub fn render_markdown(g: &GateSummary, link: &dyn Fn(&str) -> String) -> String {
    let mut out = String::new();
    let s = &g.sweep;
    let shard = s.shard.map(|sh| format!(" (shard {sh})")).unwrap_or_default();
    let _ = writeln!(out, "# drill {}: {}\n", g.what(), g.verdict);
    let _ = writeln!(
        out,
        "{} / {} seeds {}{shard}, drill {}, {:.1} s wall clock, exit code {}.\n",
        s.scenario, s.profile, s.seeds, g.drill_version, g.wall_seconds, g.exit_code
    );
    outcomes(&mut out, g);
    if !g.shortfalls.is_empty() {
        let _ = writeln!(out, "## Coverage shortfalls\n");
        for p in &g.shortfalls {
            let _ = writeln!(out, "- {}", cell(p));
        }
        out.push('\n');
    }
    failing(&mut out, g, link);
    if !g.is_sweep() {
        drills(&mut out, g);
    }
    invariants(&mut out, g);
    table(&mut out, "Faults by kind", "fault", &s.faults);
    if !g.is_sweep() {
        slowest(&mut out, g);
    }
    out
}

/// Text for a markdown table cell: no pipes or line breaks.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn outcomes(out: &mut String, g: &GateSummary) {
    let _ = writeln!(out, "| runs | {} |", Outcome::ALL.map(|o| o.as_str()).join(" | "));
    let row = |name: &str, c: &crate::OutcomeCounts| {
        let cells: Vec<String> = Outcome::ALL.iter().map(|o| c.get(*o).to_string()).collect();
        format!("| {} | {} |\n", cell(name), cells.join(" | "))
    };
    let _ = writeln!(out, "|---|{}", "---:|".repeat(Outcome::ALL.len()));
    out.push_str(&row("sweep", &g.sweep.counts));
    for d in &g.drills {
        out.push_str(&row(&format!("drill {}", d.name), &d.counts));
    }
    let det = &g.determinism;
    if g.is_sweep() {
        out.push('\n');
        return;
    }
    let _ = writeln!(out, "\nDeterminism: {} of {} sampled seeds run twice, {} mismatches.\n", det.checked, det.sampled, det.mismatches.len());
}

fn failing(out: &mut String, g: &GateSummary, link: &dyn Fn(&str) -> String) {
    let failing = g.failing();
    if failing.is_empty() && g.determinism.mismatches.is_empty() {
        return;
    }
    let _ = writeln!(out, "## Failing seeds\n\n| scenario | seed | outcome | first violation | replay |\n|---|---:|---|---|---|");
    for (scenario, f) in failing {
        let why = f.first_violation.as_ref().map_or(String::new(), |v| format!("{}: {}", v.invariant, v.message));
        let _ = writeln!(out, "| {} | [{}]({}) | {} | {} | `{}` |", cell(scenario), f.seed, link(&f.folder), f.outcome, cell(&why), cell(&f.replay));
    }
    for m in &g.determinism.mismatches {
        let _ = writeln!(out, "| {} | {} | nondeterminism | {} | `{}` |", cell(&m.scenario), m.seed, cell(&m.first_difference), cell(&m.replay));
    }
    out.push('\n');
}

fn drills(out: &mut String, g: &GateSummary) {
    let _ = writeln!(out, "## Drills\n");
    if g.drills.is_empty() {
        let _ = writeln!(out, "No drills are registered yet.\n");
        return;
    }
    let _ = writeln!(out, "Each drill must be exercised and passed on at least {} seeds under each profile.\n", g.drill_seeds_min);
    let _ = writeln!(out, "| drill | profile | seeds | runs | exercised | passed | failing | verdict |\n|---|---|---|---:|---:|---:|---:|---|");
    for d in &g.drills {
        let verdict = d.verdict(g.drill_seeds_min).label();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {verdict} |",
            cell(&d.name),
            cell(&d.profile),
            d.seeds,
            d.counts.total(),
            d.exercised_runs,
            d.passed_runs,
            d.counts.failing()
        );
    }
    out.push('\n');
}

fn invariants(out: &mut String, g: &GateSummary) {
    let _ = writeln!(out, "## Invariant checks\n\n| invariant | checks |\n|---|---:|");
    for i in &g.invariants {
        let _ = writeln!(out, "| {} | {} |", cell(&i.id), i.checks);
    }
    out.push('\n');
}

fn table(out: &mut String, title: &str, what: &str, counts: &BTreeMap<String, u64>) {
    let _ = writeln!(out, "## {title}\n\n| {what} | count |\n|---|---:|");
    for (k, n) in counts {
        let _ = writeln!(out, "| {} | {n} |", cell(k));
    }
    out.push('\n');
}

fn slowest(out: &mut String, g: &GateSummary) {
    let _ = writeln!(out, "## Slowest runs\n\n| scenario | seed | wall ms | simulated ms | steps |\n|---|---:|---:|---:|---:|");
    for r in &g.slowest {
        let _ = writeln!(out, "| {} | {} | {} | {} | {} |", cell(&r.scenario), r.seed, r.wall_ms, r.sim_time_ms, r.steps);
    }
}

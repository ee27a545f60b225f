//! A gate's `report.html`: outcomes, faults by kind, the drill coverage matrix, invariant check
//! counts, the slowest seeds, and a link to each failing seed's timeline. A sweep's (a sweep
//! viewed as a gate, [`GateSummary::of_sweep`]) leaves out drills, determinism and slowest runs.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::gate::{DrillVerdict, GateSummary};
use crate::html::{attr, badge, facts, page, text};
use crate::{Outcome, OutcomeCounts};

/// Renders the dashboard. `link` maps a run folder to the href of its timeline page.
pub fn render_dashboard(g: &GateSummary, link: &dyn Fn(&str) -> String) -> String {
    let s = &g.sweep;
    let mut body = format!("<h1>drill {} {}</h1>", g.what(), badge(g.verdict.as_str(), g.verdict.as_str()));
    let shard = s.shard.map_or("all".to_string(), |sh| sh.to_string());
    let mut rows = vec![
        ("sweep", text(&format!("{} / {} seeds {}", s.scenario, s.profile, s.seeds))),
        ("shard", text(&shard)),
        ("exit code", g.exit_code.to_string()),
        ("drill", text(&g.drill_version)),
        ("wall clock", format!("{:.1} s, {:.1} seeds/s", g.wall_seconds, s.seeds_per_second)),
    ];
    if !g.is_sweep() {
        rows.push((
            "determinism",
            text(&format!("{} of {} sampled seeds run twice, {} mismatches", g.determinism.checked, g.determinism.sampled, g.determinism.mismatches.len())),
        ));
    }
    body.push_str(&facts(&rows));
    for p in &g.shortfalls {
        let _ = write!(body, "<div class=\"alert\">coverage: {}</div>", text(p));
    }
    body.push_str(&outcomes(g));
    body.push_str(&failing(g, link));
    if !g.is_sweep() {
        body.push_str(&drills(g));
    }
    body.push_str("<div class=\"cols\">");
    body.push_str(&bars("Invariant checks", g.invariants.iter().map(|i| (i.id.clone(), i.checks)).collect()));
    body.push_str(&bars("Faults by kind", s.faults.clone()));
    body.push_str("</div>");
    if !g.is_sweep() {
        body.push_str(&slowest(g));
    }
    page(&format!("drill {}: {}", g.what(), g.verdict), CSS, &body, "")
}

const CSS: &str = ".cols { display: flex; gap: 40px; flex-wrap: wrap; } .cols > div { min-width: 420px; }";

fn outcomes(g: &GateSummary) -> String {
    let mut out = String::from("<h2>Outcomes</h2><table><tr><th>runs</th>");
    for o in Outcome::ALL {
        let _ = write!(out, "<th>{}</th>", o.as_str());
    }
    out.push_str("</tr>");
    let row = |name: &str, c: &OutcomeCounts| {
        let mut r = format!("<tr><td>{}</td>", text(name));
        for o in Outcome::ALL {
            let n = c.get(o);
            let class = if n > 0 && o != Outcome::Pass { "num cell-bad" } else { "num" };
            let _ = write!(r, "<td class=\"{class}\">{n}</td>");
        }
        r + "</tr>"
    };
    out.push_str(&row("sweep", &g.sweep.counts));
    for d in &g.drills {
        out.push_str(&row(&format!("drill {}", d.name), &d.counts));
    }
    out.push_str("</table>");
    out
}

fn failing(g: &GateSummary, link: &dyn Fn(&str) -> String) -> String {
    let failing = g.failing();
    let mismatches = &g.determinism.mismatches;
    if failing.is_empty() && mismatches.is_empty() {
        return "<h2>Failing seeds</h2><p>None.</p>".to_string();
    }
    let mut out = String::from("<h2>Failing seeds</h2><table><tr><th>scenario</th><th>seed</th><th>outcome</th><th>first violation</th><th>replay</th></tr>");
    for (scenario, f) in failing {
        let why = f.first_violation.as_ref().map_or(String::new(), |v| format!("{} at {}: {}", v.invariant, v.node, v.message));
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"num\"><a href=\"{}\">{} (timeline)</a></td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            text(scenario),
            attr(&link(&f.folder)),
            f.seed,
            badge(f.outcome.as_str(), f.outcome.as_str()),
            text(&why),
            text(&f.replay)
        );
    }
    for m in mismatches {
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"num\">{}</td><td>{}</td><td><pre>{}</pre></td><td><code>{}</code></td></tr>",
            text(&m.scenario),
            m.seed,
            badge("nondeterminism", "nondeterminism"),
            text(&m.first_difference),
            text(&m.replay)
        );
    }
    out.push_str("</table>");
    out
}

/// The drill coverage matrix: one row per drill, one column per seed run.
fn drills(g: &GateSummary) -> String {
    let mut out = String::from("<h2>Drill coverage</h2>");
    if g.drills.is_empty() {
        out.push_str("<p>No drills are registered yet; every scenario other than the sweep's becomes one.</p>");
        return out;
    }
    let _ = write!(out, "<p>Each drill must be exercised and passed on at least {} seeds under each profile.</p>", g.drill_seeds_min);
    out.push_str("<table><tr><th>drill</th><th>profile</th><th>seeds</th><th>runs</th><th>exercised</th><th>passed</th><th>failing</th><th>verdict</th></tr>");
    for d in &g.drills {
        let verdict = d.verdict(g.drill_seeds_min);
        let class = match verdict {
            DrillVerdict::Passed => "cell-ok",
            DrillVerdict::Failed => "cell-bad",
            DrillVerdict::Short => "cell-none",
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"{class}\">{}</td></tr>",
            text(&d.name),
            text(&d.profile),
            text(&d.seeds.to_string()),
            d.counts.total(),
            d.exercised_runs,
            d.passed_runs,
            d.counts.failing(),
            verdict.label()
        );
    }
    out.push_str("</table>");
    out
}

/// A table of counts with a bar each, scaled to the largest.
fn bars(title: &str, counts: BTreeMap<String, u64>) -> String {
    let max = counts.values().copied().max().unwrap_or(0).max(1);
    let mut out = format!("<div><h2>{}</h2><table>", text(title));
    for (k, n) in &counts {
        let width = 1 + 200 * n / max;
        let class = if *n == 0 { " cell-bad" } else { "" };
        let _ = write!(
            out,
            "<tr><td class=\"mono{class}\">{}</td><td class=\"num\">{n}</td><td><span class=\"bar\" style=\"width:{width}px\"></span></td></tr>",
            text(k)
        );
    }
    if counts.is_empty() {
        out.push_str("<tr><td>none</td></tr>");
    }
    out.push_str("</table></div>");
    out
}

fn slowest(g: &GateSummary) -> String {
    let mut out = String::from("<h2>Slowest runs</h2><table><tr><th>scenario</th><th>seed</th><th>wall ms</th><th>simulated ms</th><th>steps</th></tr>");
    for r in &g.slowest {
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            text(&r.scenario),
            r.seed,
            r.wall_ms,
            r.sim_time_ms,
            r.steps
        );
    }
    out.push_str("</table>");
    out
}

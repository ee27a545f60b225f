//! A run's `report.html`: one lane per node on a simulated-time axis, requests as arrows from
//! the device to the server, faults, disk events and drill steps marked, violations
//! highlighted, and every mark linked to its trace line (shown on hover and on click).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

use crate::html::{badge, facts, page, text};
use crate::Summary;

/// Trace lines listed under the timeline at most; the rest stay in trace.jsonl.
const LISTED_LINES_MAX: usize = 20_000;
/// Width of the plot at zoom 1, in pixels.
const PLOT_WIDTH: f64 = 1180.0;
/// Height of one lane, in pixels.
const LANE_HEIGHT: f64 = 44.0;
/// Space above the first lane for the time axis.
const AXIS_HEIGHT: f64 = 30.0;

/// One trace line, as the timeline reads it.
#[derive(Debug, Clone)]
struct Event {
    /// 1-based line number in trace.jsonl.
    line: usize,
    t_us: u64,
    node: String,
    kind: String,
    detail: Value,
    raw: String,
}

/// Renders the page for a run from its trace lines and, when there is one, its summary.
pub fn render_timeline(summary: Option<&Summary>, trace: &[String]) -> String {
    let events = parse(trace);
    let lanes = lanes(&events);
    let end_us = events.iter().map(|e| e.t_us).max().unwrap_or(0).max(1);
    let violations = summary.map_or_else(Vec::new, |s| s.violations.iter().map(|v| v.trace_line as usize).collect());
    let plot = Plot { lanes: &lanes, end_us, violations: &violations };
    let mut body = header(summary, &events);
    body.push_str(&legend());
    body.push_str(&plot.render(&events));
    body.push_str("<div id=\"detail\" class=\"mono\">Click a mark to see its trace line.</div>");
    body.push_str(&listing(&events, trace.len()));
    let title = match summary {
        Some(s) => format!("drill run: seed {} ({})", s.seed, s.outcome),
        None => "drill run timeline".to_string(),
    };
    page(&title, CSS, &body, SCRIPT)
}

fn parse(trace: &[String]) -> Vec<Event> {
    trace
        .iter()
        .enumerate()
        .filter_map(|(i, raw)| {
            let v: Value = serde_json::from_str(raw).ok()?;
            Some(Event {
                line: i + 1,
                t_us: v.get("t_us")?.as_u64()?,
                node: v.get("node")?.as_str()?.to_string(),
                kind: v.get("kind")?.as_str()?.to_string(),
                detail: v.get("detail").cloned().unwrap_or(Value::Null),
                raw: raw.clone(),
            })
        })
        .collect()
}

/// Lane order: the server, then other nodes as they first appear, then `world`.
fn lanes(events: &[Event]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for e in events {
        if !names.contains(&e.node) {
            names.push(e.node.clone());
        }
    }
    let rank = |n: &String| match n.as_str() {
        "server" => 0,
        "world" => 2,
        _ => 1,
    };
    names.sort_by_key(rank);
    names
}

fn header(summary: Option<&Summary>, events: &[Event]) -> String {
    let mut out = String::new();
    let Some(s) = summary else {
        out.push_str("<h1>drill run timeline</h1>");
        return out;
    };
    let _ = write!(out, "<h1>drill run: seed {} {}</h1>", s.seed, badge(s.outcome.as_str(), s.outcome.as_str()));
    for v in &s.violations {
        let _ = write!(
            out,
            "<div class=\"alert\"><b>{}</b> at {} (<a href=\"#L{}\" data-goto=\"{}\">trace line {}</a>): {}</div>",
            text(&v.invariant),
            text(&v.node),
            v.trace_line,
            v.trace_line,
            v.trace_line,
            text(&v.message)
        );
    }
    let counts = |m: &BTreeMap<String, u64>| {
        let parts: Vec<String> = m.iter().map(|(k, n)| format!("{k} {n}")).collect();
        text(&if parts.is_empty() { "none".to_string() } else { parts.join(", ") })
    };
    out.push_str(&facts(&[
        ("scenario / profile", text(&format!("{} / {}", s.scenario, s.profile))),
        ("replay", format!("<code>{}</code>", text(&s.replay))),
        ("faults", counts(&s.faults)),
        ("planted bugs", planted(&s.mutations)),
        ("checks", counts(&s.checks)),
        ("simulated", text(&format!("{} ms, {} steps, {} trace lines", s.sim_time_ms, s.steps, events.len()))),
        ("plan / fingerprint", format!("<code>{}</code> / <code>{}</code>", text(&s.plan_hash), text(&s.fingerprint))),
    ]));
    out
}

/// The plan's planted bugs and their firings, or `none`.
fn planted(bugs: &[crate::PlantedBug]) -> String {
    let parts: Vec<String> = bugs.iter().map(|b| format!("{} in {} on {}: fired {}", b.bug, b.target, b.node, b.fired)).collect();
    text(&if parts.is_empty() { "none".to_string() } else { parts.join("; ") })
}

fn legend() -> String {
    let items = [
        ("op", "operation"),
        ("ok", "op ok"),
        ("err", "op error"),
        ("net", "request to server"),
        ("fault", "fault"),
        ("heal", "heal / restart"),
        ("disk", "disk event"),
        ("node", "node start / recovery"),
        ("drill", "drill step"),
        ("bug", "planted bug fired"),
        ("viol", "violation"),
    ];
    let mut out = String::from("<div class=\"legend\">");
    for (class, label) in items {
        let _ = write!(out, "<span><i class=\"sw {class}\"></i>{}</span>", text(label));
    }
    out.push_str(
        "<span class=\"zoom\">zoom <button data-zoom=\"0.5\">&minus;</button><button data-zoom=\"2\">+</button><button data-zoom=\"0\">fit</button></span></div>",
    );
    out
}

/// The drawing: lane geometry and the time scale.
struct Plot<'a> {
    lanes: &'a [String],
    end_us: u64,
    /// Trace lines the summary names as violations (a liveness failure has no
    /// `check.violation` line of its own).
    violations: &'a [usize],
}

impl Plot<'_> {
    fn x(&self, t_us: u64) -> f64 {
        10.0 + PLOT_WIDTH * t_us as f64 / self.end_us as f64
    }

    fn y(&self, node: &str) -> f64 {
        let i = self.lanes.iter().position(|n| n == node).unwrap_or(0);
        AXIS_HEIGHT + LANE_HEIGHT * (i as f64 + 0.5)
    }

    fn height(&self) -> f64 {
        AXIS_HEIGHT + LANE_HEIGHT * self.lanes.len() as f64 + 10.0
    }

    fn render(&self, events: &[Event]) -> String {
        let h = self.height();
        let mut out = String::new();
        let _ = write!(
            out,
            "<div class=\"tl\"><svg class=\"labels\" width=\"110\" height=\"{h}\">{}</svg>\
             <div class=\"scroll\"><svg id=\"plot\" data-end=\"{}\" width=\"{}\" height=\"{h}\">\
             <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"#7986cb\"/></marker></defs>",
            self.labels(),
            self.end_us,
            PLOT_WIDTH + 20.0
        );
        out.push_str(&self.axis());
        out.push_str(&self.lane_lines());
        out.push_str(&self.spans(events));
        for e in events {
            out.push_str(&self.mark(e));
        }
        out.push_str("</svg></div></div>");
        out
    }

    fn labels(&self) -> String {
        let mut out = String::new();
        for name in self.lanes {
            let _ = write!(out, "<text x=\"104\" y=\"{:.1}\" text-anchor=\"end\" class=\"lane-label\">{}</text>", self.y(name) + 4.0, text(name));
        }
        out
    }

    /// Ticks every 1, 2 or 5 × 10^k ms, about ten across the plot.
    fn axis(&self) -> String {
        let end_ms = self.end_us as f64 / 1000.0;
        let raw = (end_ms / 10.0).max(0.001);
        let mag = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
        let mut out = String::new();
        let mut ms = 0.0;
        while ms <= end_ms + step * 0.01 {
            let t = (ms * 1000.0) as u64;
            let _ = write!(
                out,
                "<g class=\"tick\" data-t=\"{t}\"><line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{}\" y2=\"{:.1}\"/><text x=\"{x:.1}\" y=\"14\" text-anchor=\"{}\">{} ms</text></g>",
                AXIS_HEIGHT - 8.0,
                self.height() - 10.0,
                if t == 0 { "start" } else { "middle" },
                format_ms(ms),
                x = self.x(t),
            );
            ms += step;
        }
        out
    }

    fn lane_lines(&self) -> String {
        let mut out = String::new();
        for name in self.lanes {
            let _ = write!(
                out,
                "<line class=\"lane\" data-t=\"0\" data-t2=\"{}\" x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>",
                self.end_us,
                self.x(0),
                self.x(self.end_us),
                y = self.y(name)
            );
        }
        out
    }

    /// Bars for time spans: a node down between its crash and restart, partitions, windows.
    fn spans(&self, events: &[Event]) -> String {
        let mut out = String::new();
        let mut down: BTreeMap<&str, &Event> = BTreeMap::new();
        for e in events {
            match e.kind.as_str() {
                "fault.crash" => {
                    down.insert(&e.node, e);
                }
                "fault.restart" => {
                    if let Some(start) = down.remove(e.node.as_str()) {
                        out.push_str(&self.bar(&e.node, start, e.t_us, "down", 14.0));
                    }
                }
                k if k.starts_with("fault.partition") => out.push_str(&self.partition(e)),
                _ => {}
            }
        }
        for (node, start) in down {
            out.push_str(&self.bar(node, start, self.end_us, "down", 14.0));
        }
        out
    }

    fn partition(&self, e: &Event) -> String {
        let ms = e.detail.get("ms").and_then(Value::as_u64).unwrap_or(0);
        let end = (e.t_us + ms * 1000).min(self.end_us);
        let side = e.detail.get("b").and_then(Value::as_array);
        let names = side.into_iter().flatten().filter_map(Value::as_str);
        names.map(|n| self.bar(n, e, end, "cut", 6.0)).collect::<String>()
    }

    fn bar(&self, node: &str, start: &Event, end_us: u64, class: &str, h: f64) -> String {
        if !self.lanes.iter().any(|n| n == node) {
            return String::new();
        }
        format!(
            "<rect class=\"span {class} ev\" data-line=\"{}\" data-t=\"{}\" data-t2=\"{end_us}\" x=\"{:.1}\" width=\"{:.1}\" y=\"{:.1}\" height=\"{h}\"><title>{}</title></rect>",
            start.line,
            start.t_us,
            self.x(start.t_us),
            (self.x(end_us) - self.x(start.t_us)).max(1.0),
            self.y(node) - h / 2.0,
            text(&start.raw)
        )
    }

    /// The mark of one trace line.
    fn mark(&self, e: &Event) -> String {
        let (x, y) = (self.x(e.t_us), self.y(&e.node));
        let title = format!("<title>line {}: {}</title>", e.line, text(&e.raw));
        let data = format!("data-line=\"{}\" data-t=\"{}\"", e.line, e.t_us);
        let k = e.kind.as_str();
        if k == "net.request" {
            return self.arrow(e, &data, &title);
        }
        if k == "check.violation" || self.violations.contains(&e.line) {
            let h = self.height() - 10.0;
            return format!(
                "<g class=\"ev viol\" {data}><line class=\"vline\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{AXIS_HEIGHT}\" y2=\"{h:.1}\"/><circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"8\"/>{title}</g>"
            );
        }
        let class = class_of(k);
        let shape = match class {
            "fault" | "heal" => format!("<path d=\"M{x:.1},{:.1} l6,11 l-12,0 z\"/>", y - 7.0),
            "disk" => format!("<rect x=\"{:.1}\" y=\"{:.1}\" width=\"7\" height=\"7\"/>", x - 3.5, y + 4.0),
            "drill" | "world" => format!("<rect x=\"{:.1}\" y=\"{:.1}\" width=\"9\" height=\"9\" transform=\"rotate(45 {x:.1} {y:.1})\"/>", x - 4.5, y - 4.5),
            "bug" => format!("<path d=\"M{:.1},{:.1} l10,10 m0,-10 l-10,10\"/>", x - 5.0, y - 5.0),
            _ => format!("<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"4\"/>"),
        };
        let label = if class == "drill" {
            let step = e.detail.get("step").and_then(Value::as_str).unwrap_or("step");
            format!("<text class=\"drill-label\" x=\"{:.1}\" y=\"{:.1}\">{}</text>", x + 6.0, y - 8.0, text(step))
        } else if k == "mutation.fired" {
            let bug = e.detail.get("bug").and_then(Value::as_str).unwrap_or("bug");
            format!("<text class=\"bug-label\" x=\"{:.1}\" y=\"{:.1}\">planted: {}</text>", x + 6.0, y - 8.0, text(bug))
        } else {
            String::new()
        };
        format!("<g class=\"ev {class}\" {data}>{shape}{label}{title}</g>")
    }

    /// A request as an arrow from the device's lane to the server's at the time it was served.
    fn arrow(&self, e: &Event, data: &str, title: &str) -> String {
        let from = e.detail.get("from").and_then(Value::as_str).unwrap_or("");
        let x = self.x(e.t_us);
        let (y1, y2) = (self.y(from), self.y(&e.node));
        let dir = if y1 > y2 { 6.0 } else { -6.0 };
        format!(
            "<g class=\"ev net\" {data}><line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" marker-end=\"url(#arrow)\"/>{title}</g>",
            y1 - dir,
            y2 + dir
        )
    }
}

/// The legend class of a trace kind.
fn class_of(kind: &str) -> &'static str {
    match kind {
        "op.ok" | "op.pushed" => "ok",
        "op.err" | "op.skipped" | "op.dropped" => "err",
        "fault.heal" | "fault.heal_all" | "fault.restart" | "liveness.converged" => "heal",
        "drill.step" => "drill",
        "mutation.fired" | "mutations.planted" => "bug",
        k if k.starts_with("op.") => "op",
        k if k.starts_with("fault.") || k == "liveness.stuck" => "fault",
        k if k.starts_with("disk.") => "disk",
        k if k.starts_with("node.") => "node",
        _ => "world",
    }
}

fn format_ms(ms: f64) -> String {
    if ms.fract().abs() < 1e-9 {
        format!("{ms:.0}")
    } else {
        format!("{ms:.3}").trim_end_matches('0').to_string()
    }
}

/// Every trace line (up to a limit), each with an anchor the marks link to.
fn listing(events: &[Event], total: usize) -> String {
    let mut out = String::from("<h2>Trace</h2><ol id=\"trace\" class=\"mono\">");
    for e in events.iter().take(LISTED_LINES_MAX) {
        let class = if e.kind == "check.violation" { " class=\"bad\"" } else { "" };
        let _ = write!(out, "<li id=\"L{}\" value=\"{}\"{class}>{}</li>", e.line, e.line, text(&e.raw));
    }
    out.push_str("</ol>");
    if total > LISTED_LINES_MAX {
        let _ = write!(out, "<p>{} more lines are in trace.jsonl.</p>", total - LISTED_LINES_MAX);
    }
    out
}

const CSS: &str = r#"
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; margin: 10px 0 6px; font-size: 12px; align-items: center; }
.legend .sw { display: inline-block; width: 10px; height: 10px; border-radius: 5px; margin-right: 4px; vertical-align: -1px; }
.legend .zoom button { margin-left: 4px; }
.tl { display: flex; border: 1px solid #d6dae3; border-radius: 4px; }
.tl .labels { flex: none; background: #f7f8fb; border-right: 1px solid #d6dae3; }
.tl .scroll { overflow-x: auto; flex: 1; }
.lane-label { font-size: 12px; fill: #33394a; }
.tick line { stroke: #eceef3; } .tick text { font-size: 10px; fill: #8a90a0; }
.lane { stroke: #c5cad6; stroke-width: 1; }
.ev { cursor: pointer; }
.op, .sw.op { fill: #90a4ae; background: #90a4ae; } .ok, .sw.ok { fill: #43a047; background: #43a047; }
.err, .sw.err { fill: #fb8c00; background: #fb8c00; } .node, .sw.node { fill: #00897b; background: #00897b; }
.fault, .sw.fault { fill: #e53935; background: #e53935; } .heal, .sw.heal { fill: #7cb342; background: #7cb342; }
.disk, .sw.disk { fill: #8d6e63; background: #8d6e63; } .drill, .sw.drill { fill: #8e24aa; background: #8e24aa; }
.world { fill: #546e7a; } .sw.net { background: #7986cb; } .sw.viol { background: #d50000; }
.net line { stroke: #7986cb; stroke-width: 1.2; }
.viol circle { fill: #d50000; stroke: #fff; stroke-width: 2; } .viol .vline { stroke: #d50000; stroke-width: 2; stroke-dasharray: 5 3; }
.drill-label { font-size: 10px; fill: #6a1b9a; }
.bug path, .sw.bug { stroke: #c2185b; stroke-width: 3; background: #c2185b; } .bug-label { font-size: 10px; fill: #c2185b; }
.span.down { fill: rgba(229, 57, 53, 0.18); } .span.cut { fill: rgba(251, 140, 0, 0.45); }
.ev.sel, .ev.sel * { stroke: #000; stroke-width: 2; }
#detail { white-space: pre-wrap; background: #f7f8fb; border: 1px solid #d6dae3; padding: 6px 10px; margin: 8px 0; min-height: 18px; }
#trace { max-height: 420px; overflow-y: auto; border: 1px solid #d6dae3; padding: 4px 4px 4px 56px; margin: 0; }
#trace li { white-space: pre-wrap; word-break: break-all; }
#trace li.bad { background: #fdecea; } #trace li.sel { background: #fff3c4; }
"#;

/// Click a mark: show its trace line and select it in the listing. Zoom: move every mark by
/// its time (`data-t`, `data-t2`) so that text keeps its size.
const SCRIPT: &str = r#"
(function () {
  var plot = document.getElementById('plot');
  var detail = document.getElementById('detail');
  var end = Number(plot.getAttribute('data-end')) || 1;
  var width = 1180, zoom = 1;
  function show(line) {
    var li = document.getElementById('L' + line);
    document.querySelectorAll('.sel').forEach(function (e) { e.classList.remove('sel'); });
    document.querySelectorAll('[data-line="' + line + '"]').forEach(function (e) { e.classList.add('sel'); });
    if (li) { li.classList.add('sel'); li.scrollIntoView({block: 'nearest'}); detail.textContent = 'line ' + line + ': ' + li.textContent; }
  }
  document.addEventListener('click', function (ev) {
    var g = ev.target.closest('[data-line]');
    if (g) { show(g.getAttribute('data-line')); return; }
    var a = ev.target.closest('[data-goto]');
    if (a) { ev.preventDefault(); show(a.getAttribute('data-goto')); }
    var z = ev.target.closest('[data-zoom]');
    if (z) { var f = Number(z.getAttribute('data-zoom')); zoom = f === 0 ? 1 : Math.min(64, Math.max(1, zoom * f)); layout(); }
  });
  function x(t) { return 10 + width * zoom * t / end; }
  function setX(el, t, t2) {
    var tag = el.tagName.toLowerCase();
    if (tag === 'line') { el.setAttribute('x1', x(t)); el.setAttribute('x2', t2 === null ? x(t) : x(t2)); }
    else if (tag === 'rect' && t2 !== null) { el.setAttribute('x', x(t)); el.setAttribute('width', Math.max(1, x(t2) - x(t))); }
  }
  function layout() {
    plot.setAttribute('width', width * zoom + 20);
    plot.querySelectorAll('[data-t]').forEach(function (g) {
      var t = Number(g.getAttribute('data-t'));
      var t2 = g.hasAttribute('data-t2') ? Number(g.getAttribute('data-t2')) : null;
      if (g.tagName.toLowerCase() !== 'g') { setX(g, t, t2); return; }
      var dx = x(t) - Number(g.getAttribute('data-x0') || x0(g, t));
      g.setAttribute('transform', 'translate(' + dx + ',0)');
    });
  }
  function x0(g, t) { var v = 10 + width * t / end; g.setAttribute('data-x0', v); return v; }
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn trace() -> Vec<String> {
        [
            r#"{"t_us":0,"node":"world","kind":"run.start","detail":{"seed":1}}"#,
            r#"{"t_us":0,"node":"client-1","kind":"node.start","detail":{}}"#,
            r#"{"t_us":1000,"node":"client-1","kind":"op.start","detail":{"op":1}}"#,
            r#"{"t_us":2000,"node":"server","kind":"net.request","detail":{"from":"client-1","op":"push"}}"#,
            r#"{"t_us":2500,"node":"client-1","kind":"fault.crash","detail":{}}"#,
            r#"{"t_us":3000,"node":"client-1","kind":"fault.restart","detail":{}}"#,
            r#"{"t_us":3500,"node":"client-1","kind":"drill.step","detail":{"step":"restore <backup>"}}"#,
            r#"{"t_us":3600,"node":"client-1","kind":"mutation.fired","detail":{"bug":"projection_fold","n":1}}"#,
            r#"{"t_us":4000,"node":"server","kind":"check.violation","detail":{"message":"<script>alert(1)</script>"}}"#,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    #[test]
    fn draws_lanes_arrows_spans_and_the_violation() {
        let html = render_timeline(None, &trace());
        assert!(html.contains(">server</text>") && html.contains(">client-1</text>"));
        assert!(html.find(">server</text>") < html.find(">client-1</text>"));
        assert!(html.contains("class=\"ev net\"") && html.contains("marker-end"));
        assert!(html.contains("class=\"span down ev\""));
        assert!(html.contains("class=\"ev viol\"") && html.contains("id=\"L9\" value=\"9\" class=\"bad\""));
        assert!(html.contains(">restore &lt;backup&gt;</text>"));
        assert!(html.contains("class=\"ev bug\"") && html.contains(">planted: projection_fold</text>"), "a planted bug's firing is marked as such");
    }

    #[test]
    fn escapes_everything_from_the_trace() {
        let html = render_timeline(None, &trace());
        assert!(!html.contains("<script>alert"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }

    #[test]
    fn survives_an_empty_or_garbled_trace() {
        let html = render_timeline(None, &["not json".to_string()]);
        assert!(html.contains("<svg"));
    }
}

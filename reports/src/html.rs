//! Pieces shared by drill's HTML pages: escaping, the page frame and its stylesheet.
//!
//! Pages are self-contained (inline CSS, SVG and a little JS, no network access), so that a
//! report opens from a CI artifact or a mail attachment as it is.

use std::fmt::Write;

/// Text for an HTML (or inline SVG) text node.
pub fn text(s: &str) -> String {
    html_escape::encode_text(s).into_owned()
}

/// Text for a double-quoted attribute value.
pub fn attr(s: &str) -> String {
    html_escape::encode_double_quoted_attribute(s).into_owned()
}

/// The stylesheet every page shares.
const STYLE: &str = r#"
body { font: 14px/1.4 system-ui, -apple-system, "DejaVu Sans", sans-serif; margin: 16px 20px; color: #1d2330; background: #fff; }
h1 { font-size: 20px; margin: 0 0 6px; }
h2 { font-size: 16px; margin: 22px 0 8px; }
code, pre, .mono { font-family: "DejaVu Sans Mono", ui-monospace, monospace; font-size: 12px; }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 8px 0; }
.facts dt { color: #5b6475; } .facts dd { margin: 0; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff; font-weight: 600; }
.pass { background: #2e7d32; } .violation { background: #c62828; } .liveness { background: #ef6c00; }
.nondeterminism { background: #6a1b9a; } .shortfall { background: #8d6e63; }
.alert { border-left: 4px solid #c62828; background: #fdecea; padding: 6px 10px; margin: 6px 0; }
table { border-collapse: collapse; margin: 4px 0; }
th, td { border: 1px solid #d6dae3; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f1f3f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.bar { display: inline-block; height: 10px; background: #5c6bc0; vertical-align: middle; }
.cell-ok { background: #e8f5e9; } .cell-bad { background: #fdecea; } .cell-none { background: #f5f5f5; color: #888; }
a { color: #1a4fb5; }
"#;

/// A whole page: `title` (plain text), extra CSS, the body's HTML and an optional script.
pub fn page(title: &str, css: &str, body: &str, script: &str) -> String {
    let mut out = String::with_capacity(body.len() + 4096);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}{css}</style>\n</head>\n<body>\n{body}\n",
        text(title)
    );
    if !script.is_empty() {
        let _ = writeln!(out, "<script>{script}</script>");
    }
    out.push_str("</body>\n</html>\n");
    out
}

/// A definition list of facts; values are HTML already escaped by the caller.
pub fn facts(rows: &[(&str, String)]) -> String {
    let mut out = String::from("<dl class=\"facts\">");
    for (k, v) in rows {
        let _ = write!(out, "<dt>{}</dt><dd>{v}</dd>", text(k));
    }
    out.push_str("</dl>");
    out
}

/// An outcome badge: `pass`, `violation`, `liveness`, `nondeterminism` or `shortfall`.
pub fn badge(class: &str, label: &str) -> String {
    format!("<span class=\"badge {}\">{}</span>", attr(class), text(label))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_in_text_and_attributes() {
        assert_eq!(text("<b>&"), "&lt;b&gt;&amp;");
        assert_eq!(attr("a\"b<"), "a&quot;b&lt;");
        let p = page("x</title><script>", "", "<p>hi</p>", "");
        assert!(p.contains("<title>x&lt;/title&gt;&lt;script&gt;</title>"));
        assert!(!p.contains("http"), "pages load nothing from the network");
    }
}

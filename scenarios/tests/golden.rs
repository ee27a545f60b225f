//! A golden trace: one fixed seed's whole trace, reviewed and committed. A change that alters
//! what a run does shows up here as a diff to read, not just a changed hash.

use drill_scenarios::Profile;
use drill_scenarios::{run, RunRequest, RunSource};

#[test]
fn golden_trace_seed_7_lite() {
    let source = RunSource::Seed { seed: 7, scenario: "sync-basic".into(), profile: Profile::Lite };
    let r = run(&RunRequest { source, out_dir: None }).unwrap();
    // The first line names the build's commit and version, which change with every commit.
    let mut first: serde_json::Value = serde_json::from_str(&r.trace[0]).unwrap();
    first["detail"]["commit"] = "[commit]".into();
    first["detail"]["version"] = "[version]".into();
    let mut text = first.to_string();
    for l in &r.trace[1..] {
        text.push('\n');
        text.push_str(l);
    }
    insta::assert_snapshot!(text);
}

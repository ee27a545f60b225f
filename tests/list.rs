//! `drill list --invariants` shows every invariant of the model's registry with its source.

use std::process::Command;

#[test]
fn list_invariants_shows_the_whole_registry() {
    let out = Command::new(env!("CARGO_BIN_EXE_drill")).args(["list", "--invariants"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for inv in drill_model::REGISTRY {
        assert!(text.contains(inv.id), "{} missing from:\n{text}", inv.id);
        assert!(text.contains(inv.statement), "{}'s statement missing", inv.id);
    }
}

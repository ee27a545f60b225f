//! `drill list --invariants` shows the model's registry; `drill replay` tells another build from nondeterminism.

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

/// A run folder written by another build of drill replays as a match: only the build on the
/// first trace line differs.
#[test]
fn replay_of_a_folder_from_another_build_matches() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let status = Command::new(env!("CARGO_BIN_EXE_drill")).args(["run", "--seed", "4", "--profile", "lite", "--out"]).arg(&out).output().unwrap();
    assert!(status.status.success(), "{status:?}");
    let trace = out.join("trace.jsonl");
    let text = std::fs::read_to_string(&trace).unwrap();
    let (first, rest) = text.split_once('\n').unwrap();
    let mut v: serde_json::Value = serde_json::from_str(first).unwrap();
    v["detail"]["commit"] = "0123456789ab".into();
    std::fs::write(&trace, format!("{v}\n{rest}")).unwrap();
    let r = Command::new(env!("CARGO_BIN_EXE_drill")).arg("replay").arg(&out).output().unwrap();
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert_eq!(r.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("0123456789ab"), "{stdout}");
    // Any other change is still a mismatch.
    std::fs::write(&trace, format!("{v}\n{}", rest.replacen("client", "klient", 1))).unwrap();
    let r = Command::new(env!("CARGO_BIN_EXE_drill")).arg("replay").arg(&out).output().unwrap();
    assert_eq!(r.status.code(), Some(4));
}

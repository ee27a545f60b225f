//! `drill bench` as a user meets it: it runs every measurement, prints the table and writes a
//! bench.json of the documented shape. Timing is never asserted (a busy machine is not a
//! failure); only that every measurement happened and produced positive numbers.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const DRILL: &str = env!("CARGO_BIN_EXE_drill");

fn drill(cwd: &Path, args: &[&str]) -> Output {
    Command::new(DRILL).current_dir(cwd).args(args).output().expect("drill starts")
}

fn positive(v: &Value, path: &str) -> f64 {
    let x = v.pointer(path).and_then(Value::as_f64).unwrap_or_else(|| panic!("{path} is missing or not a number in {v}"));
    assert!(x > 0.0, "{path} is {x}, not positive");
    x
}

fn array<'a>(v: &'a Value, path: &str, len: usize) -> &'a Vec<Value> {
    let a = v.pointer(path).and_then(Value::as_array).unwrap_or_else(|| panic!("{path} is not an array"));
    assert_eq!(a.len(), len, "{path} has {} entries", a.len());
    a
}

#[test]
fn a_tiny_bench_writes_every_measurement() {
    let tmp = tempfile::tempdir().unwrap();
    let out = drill(tmp.path(), &["bench", "--quick", "--seeds", "2", "--out", "result"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "drill bench failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    for heading in ["standard run", "store workload", "scaling", "memory", "targets"] {
        assert!(stdout.contains(heading), "the table has no {heading} section:\n{stdout}");
    }
    let text = fs::read_to_string(tmp.path().join("result/bench.json")).expect("bench.json is written");
    let b: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(b["format_version"], 1);
    assert_eq!(b["budget"], "tiny");
    positive(&b, "/machine/cpus");
    positive(&b, "/wall_seconds");

    let sweeps = array(&b, "/standard/sweeps", 2);
    for (i, workers) in [1, 2].into_iter().enumerate() {
        let s = &sweeps[i];
        assert_eq!(s["workers"], workers);
        assert_eq!(s["seeds"], 2);
        for f in ["/seeds_per_second", "/ms_per_seed_median", "/ms_per_seed_p95", "/cpu_ms_per_seed", "/sim_seconds_per_wall_second"] {
            positive(s, f);
        }
        assert_eq!(s["outcomes"]["pass"], 2, "standard seeds 1 and 2 pass: {s}");
    }

    let ways = array(&b, "/store/ways", 3);
    let names: Vec<&str> = ways.iter().map(|w| w["way"].as_str().unwrap()).collect();
    assert_eq!(names, ["simulated_disk", "memory", "real_file"]);
    for w in ways {
        assert!(w["us_per_commit"].as_f64().is_some_and(|x| x > 0.0), "{} measured no cost a commit: {w}", w["way"]);
        positive(w, "/commits");
    }
    positive(&b, "/store/simulated_over_memory");
    positive(&b, "/store/real_file_over_simulated");

    for series in ["/scaling/by_ops", "/scaling/by_clients"] {
        for size in array(&b, series, 3) {
            positive(size, "/ops");
            positive(size, "/us_per_op");
            assert!(size["outcomes"].is_object(), "{size}");
        }
    }
    positive(&b, "/scaling/ops_growth");
    positive(&b, "/scaling/clients_growth");

    positive(&b, "/memory/baseline_kib");
    let first = positive(&b, "/memory/after_first_seed_kib");
    let last = positive(&b, "/memory/after_all_seeds_kib");
    assert!(last >= first, "a peak never shrinks");

    for t in array(&b, "/targets", 4) {
        assert!(t["name"].is_string() && t["goal"].is_string() && t["measured"].is_string() && t["met"].is_boolean(), "{t}");
    }
    assert!(!tmp.path().join("result/.drill-bench-work").exists(), "the scratch folder is removed");
}

#[test]
fn a_file_the_bench_did_not_write_is_not_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("bench.json"), "{\"mine\": true}").unwrap();
    let out = drill(tmp.path(), &["bench", "--seeds", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: "));
    assert_eq!(fs::read_to_string(tmp.path().join("bench.json")).unwrap(), "{\"mine\": true}");
}

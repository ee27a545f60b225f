//! drill's HTML pages in a real headless browser: a failing run's timeline and a gate's
//! dashboard are rendered by Chromium and screenshotted, and the pictures must be the right size
//! and not blank.
//!
//! Chromium comes from Debian: when it is missing the test installs it with
//! `scripts/install-chromium.sh` (which needs apt-get and root). Where that cannot work the
//! test says so and passes, except under CI (`CI` set), where it fails.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;

const DRILL: &str = env!("CARGO_BIN_EXE_drill");
const WIDTH: u32 = 1400;
const HEIGHT: u32 = 900;
/// How long one screenshot may take before the browser is killed.
const SCREENSHOT_TIMEOUT: Duration = Duration::from_secs(120);

fn drill(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(DRILL);
    cmd.current_dir(cwd).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("drill starts")
}

/// The browser, installed on first use when that is possible.
fn chromium() -> Option<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-chromium.sh");
    let out = Command::new("bash").arg(&script).stderr(Stdio::inherit()).output();
    let found = out.ok().filter(|o| o.status.success()).and_then(|o| {
        let path = String::from_utf8_lossy(&o.stdout).lines().last()?.trim().to_string();
        (!path.is_empty()).then(|| PathBuf::from(path))
    });
    if found.is_none() {
        let why = "Chromium is not installed and scripts/install-chromium.sh could not install it";
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("skipping the browser test: {why}");
    }
    found
}

/// Screenshots `page` at WIDTH x HEIGHT into `png` with a fresh browser profile. The machine's
/// clock bounds the browser, which runs outside any simulated world.
#[allow(clippy::disallowed_methods)]
fn screenshot(browser: &Path, page: &Path, png: &Path, profile: &Path) {
    let url = format!("file://{}", fs::canonicalize(page).unwrap().display());
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("--window-size={WIDTH},{HEIGHT}"))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let deadline = Instant::now() + SCREENSHOT_TIMEOUT;
    while child.try_wait().expect("chromium runs").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium took longer than {SCREENSHOT_TIMEOUT:?} on {}", page.display());
        }
        sleep(Duration::from_millis(100));
    }
}

/// Checks the PNG's size and that it shows something: many colours, and a fair share of
/// pixels that are not the background.
fn assert_drawn(png: &Path) {
    let decoder = png::Decoder::new(fs::File::open(png).expect("the screenshot exists"));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("a frame");
    assert_eq!((info.width, info.height), (WIDTH, HEIGHT), "{}", png.display());
    let channels = info.color_type.samples();
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(channels).collect();
    let background = pixels[pixels.len() - 1];
    let drawn = pixels.iter().filter(|p| *p != &background).count();
    let mut colours: Vec<&[u8]> = pixels.clone();
    colours.sort();
    colours.dedup();
    assert!(colours.len() > 20, "{}: only {} colours", png.display(), colours.len());
    assert!(drawn * 50 > pixels.len(), "{}: only {drawn} drawn pixels", png.display());
}

/// A failing run (a plan whose 1 ms liveness bound cannot be met), so the timeline shows a
/// violation.
fn failing_run(t: &Path) -> PathBuf {
    drill(t, &["run", "--seed", "3", "--out", "seed-3"], &[]);
    let mut plan: Value = serde_json::from_str(&fs::read_to_string(t.join("seed-3/plan.json")).unwrap()).unwrap();
    plan["liveness_ms_max"] = Value::from(1);
    fs::write(t.join("plan.json"), plan.to_string()).unwrap();
    let out = drill(t, &["run", "--plan", "plan.json", "--out", "failing"], &[]);
    assert!([1, 3].contains(&out.status.code().unwrap()), "{out:?}");
    t.join("failing")
}

#[test]
fn timelines_and_dashboards_render_in_a_browser() {
    let Some(browser) = chromium() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let run = failing_run(t);
    let gate_args = ["gate", "--seeds", "8", "--determinism-seeds", "2", "--out", "gate"];
    let gate = drill(t, &gate_args, &[("DRILL_TEST_WORKER_FAULT", "panic:5")]);
    assert_eq!(gate.status.code(), Some(1), "{gate:?}");
    for (name, page) in [("timeline", run.join("report.html")), ("dashboard", t.join("gate/report.html"))] {
        let png = t.join(format!("{name}.png"));
        screenshot(&browser, &page, &png, &t.join(format!("profile-{name}")));
        assert_drawn(&png);
        if let Some(keep) = std::env::var_os("DRILL_KEEP_SCREENSHOTS") {
            fs::copy(&png, Path::new(&keep).join(format!("{name}.png"))).unwrap();
        }
    }
}

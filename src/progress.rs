//! Progress of a many-seed command on stderr: a bar on a terminal, a plain line every few
//! seconds otherwise (CI logs do not render bars).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often the plain (non-terminal) form prints a line.
const PLAIN_LINE_INTERVAL: Duration = Duration::from_secs(2);

/// Counts finished and failing seeds and shows them.
pub struct Progress {
    label: &'static str,
    bar: Option<ProgressBar>,
    total: u64,
    done: u64,
    failing: u64,
    started: Instant,
    last_plain_line: Instant,
}

impl Progress {
    /// Starts the clock for `total` seeds.
    pub fn new(label: &'static str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let style =
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ");
            ProgressBar::new(total).with_style(style).with_prefix(label)
        });
        let now = wall_clock_now();
        Progress { label, bar, total, done: 0, failing: 0, started: now, last_plain_line: now }
    }

    /// Counts one finished seed.
    pub fn finish_one(&mut self, failed: bool) {
        self.done += 1;
        self.failing += u64::from(failed);
        if let Some(bar) = &self.bar {
            bar.inc(1);
            bar.set_message(self.status());
        }
    }

    /// Prints the plain progress line when it is due; the bar redraws itself.
    pub fn tick(&mut self) {
        if self.bar.is_some() || self.last_plain_line.elapsed() < PLAIN_LINE_INTERVAL {
            return;
        }
        self.last_plain_line = wall_clock_now();
        eprintln!("{}: {}/{} seeds, {}", self.label, self.done, self.total, self.status());
    }

    /// Prints a line without tearing the bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Removes the bar and returns the wall-clock time since [`Progress::new`].
    pub fn finish(&self) -> Duration {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        self.started.elapsed()
    }

    /// Seeds finished per wall-clock second so far.
    pub fn seeds_per_second(&self) -> f64 {
        rate(self.done, self.started.elapsed())
    }

    fn status(&self) -> String {
        format!("{:.1} seeds/s, {} failing", self.seeds_per_second(), self.failing)
    }
}

/// `count` per second over `elapsed`, 0 for no elapsed time.
pub fn rate(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

/// The real clock. Only the CLI's throughput numbers and time budgets read it; nothing
/// simulated does, and it is never called inside a run (workers run the seeds).
#[allow(clippy::disallowed_methods)]
pub fn wall_clock_now() -> Instant {
    Instant::now()
}

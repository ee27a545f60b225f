//! `drill run`: one seed or one plan file, in this process, into one run folder.

use std::path::{Path, PathBuf};

use drill_reports::Summary;
use drill_scenarios::{RunRequest, RunSource};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::cli::RunArgs;
use crate::cmd::counts_line;
use crate::error::CliError;
use crate::input::{read_limited, PLAN_BYTES_MAX};
use crate::ndjson::Events;
use crate::outdir;
use crate::runfiles::{folder_replay, plan_replay, seed_replay, summary_of, write_json, write_timeline, DRILL_VERSION, PLAN_FILE, SUMMARY_FILE};

/// Hex digits of the plan file's hash used to name its default run folder.
const PLAN_FOLDER_HASH_CHARS: usize = 12;

/// What to run: a seed, or the text of a plan file.
enum Input {
    Seed { seed: u64, scenario: String, profile: drill_scenarios::Profile },
    Plan { text: String },
}

/// Runs one world and writes its run folder; the exit code is the outcome's.
pub fn run(args: RunArgs) -> Result<i32, CliError> {
    let input = Input::from_args(&args)?;
    let out = args.out.clone().unwrap_or_else(|| input.default_out());
    // The plan is checked before the folder is touched, so a refused plan leaves nothing.
    drill_scenarios::prepare(&input.source())?;
    let claim = outdir::claim_run_dir(&out, "drill run")?;
    let replay = input.replay(&out);
    note_replay_on_panic(replay.clone());
    let request = RunRequest { source: input.source(), out_dir: Some(out.clone()) };
    let report = match drill_scenarios::run(&request) {
        Ok(report) => report,
        Err(e) => {
            claim.abandon();
            return Err(e.into());
        }
    };
    let summary = summary_of(&report, replay);
    write_json(&out.join(SUMMARY_FILE), &summary)?;
    write_timeline(&out, &summary, &report.trace)?;
    let events = Events::new(args.json);
    if events.text() {
        print_report(&summary, &out);
    }
    events.start(
        "run",
        json!({"seed": summary.seed, "scenario": summary.scenario, "profile": summary.profile,
               "plan_hash": summary.plan_hash, "out": out}),
    );
    events.emit("result", &json!({ "summary": summary }));
    drop(claim);
    Ok(summary.outcome.exit_code())
}

impl Input {
    /// Reads the plan file now, so that an unreadable or non-JSON plan is refused before the
    /// output folder is touched.
    fn from_args(args: &RunArgs) -> Result<Input, CliError> {
        let Some(path) = &args.plan else {
            // clap requires --seed whenever --plan is absent.
            let seed = args.seed.ok_or_else(|| CliError::new("--seed or --plan is required"))?;
            let (scenario, profile) = (args.world.scenario.clone(), args.world.profile);
            return Ok(Input::Seed { seed, scenario, profile });
        };
        let text = read_limited(path, PLAN_BYTES_MAX, "plan file")?;
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&text) {
            return Err(CliError::new(format!("malformed plan file {}: {e}", path.display())));
        }
        Ok(Input::Plan { text })
    }

    fn source(&self) -> RunSource {
        match self {
            Input::Seed { seed, scenario, profile } => RunSource::Seed { seed: *seed, scenario: scenario.clone(), profile: *profile },
            Input::Plan { text } => RunSource::Plan(text.clone()),
        }
    }

    /// `drill-out/run-SEED`, or for a plan `drill-out/plan-HASH` (the file's own hash: the
    /// canonical plan hash is only known once the run has read the plan).
    fn default_out(&self) -> PathBuf {
        let name = match self {
            Input::Seed { seed, .. } => format!("run-{seed}"),
            Input::Plan { text } => {
                let hash = hex::encode(Sha256::digest(text.as_bytes()));
                format!("plan-{}", &hash[..PLAN_FOLDER_HASH_CHARS])
            }
        };
        Path::new("drill-out").join(name)
    }

    /// The command that runs the same input again; a plan is replayed from its copy in `out`.
    fn replay(&self, out: &Path) -> String {
        match self {
            Input::Seed { seed, scenario, profile } => seed_replay(*seed, scenario, profile.as_str()),
            Input::Plan { .. } => plan_replay(&out.join(PLAN_FILE)),
        }
    }
}

/// A panic is a bug in drill or the stack, not an outcome; Rust's report is kept and the command
/// that reproduces it is added.
fn note_replay_on_panic(replay: String) {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        eprintln!("note: the run panicked; reproduce it with: {replay}");
    }));
}

fn print_report(summary: &Summary, out: &Path) {
    println!("drill {DRILL_VERSION} seed {} plan {} profile {} scenario {}", summary.seed, summary.plan_hash, summary.profile, summary.scenario);
    for v in &summary.violations {
        println!("violation {} at {} (trace line {}): {}", v.invariant, v.node, v.trace_line, v.message);
    }
    println!("faults: {}", counts_line(&summary.faults));
    println!("{} steps, {} ms simulated, {} trace lines, fingerprint {}", summary.steps, summary.sim_time_ms, summary.trace_lines, summary.fingerprint);
    println!("run folder: {} (check it with: {})", out.display(), folder_replay(out));
    println!("outcome: {} | replay: {}", summary.outcome, summary.replay);
}

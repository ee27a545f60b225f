//! `drill`: run, sweep, replay and check seeds of the simulated world.
//!
//! Every command returns the exit code DESIGN.md assigns (0 pass, 1 violation, 3 liveness,
//! 4 nondeterminism) or a [`CliError`], which is printed as one `error:` line with exit code 2.

mod bench;
mod cli;
mod cmd;
mod diff;
mod error;
mod gatefiles;
mod input;
mod interrupt;
mod lock;
mod ndjson;
mod outdir;
mod pool;
mod progress;
mod runfiles;
mod seeds;
mod shrink;
mod worker;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

use crate::cli::{Cli, Command};
use crate::error::CliError;

/// The exit code for bad input and usage errors.
const EXIT_BAD_INPUT: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    match dispatch(cli.command) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(EXIT_BAD_INPUT)),
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

fn dispatch(command: Command) -> Result<i32, CliError> {
    if matches!(command, Command::Sweep(_) | Command::Gate(_) | Command::Shrink(_) | Command::CheckDeterminism(_)) {
        interrupt::install();
    }
    match command {
        Command::Run(args) => cmd::run::run(args),
        Command::Sweep(args) => cmd::sweep::sweep(args),
        Command::CheckDeterminism(args) => cmd::determinism::check(args),
        Command::Replay(args) => cmd::replay::replay(args),
        Command::List(args) => cmd::list::list(args),
        Command::Shrink(args) => cmd::shrink::shrink(args),
        Command::Timeline(args) => cmd::timeline::timeline(args),
        Command::Gate(args) => cmd::gate::gate(args),
        Command::Merge(args) => cmd::merge::merge(args),
        Command::Bench(args) => cmd::bench::bench(args),
        Command::Worker(world) => worker::serve(&world),
    }
}

/// Reports a command-line error. A bad value (an unknown scenario, a malformed seed range, ...)
/// gets clap's first line only, so that every bad value reads as one `error:` line; other usage
/// errors keep clap's hints (a similar flag, the usage), and `--help` / `--version` print as usual.
fn usage_error(err: clap::Error) -> ExitCode {
    match err.kind() {
        ErrorKind::ValueValidation | ErrorKind::InvalidValue => {
            let rendered = err.render().to_string();
            eprintln!("{}", rendered.lines().next().unwrap_or("error: invalid value"));
            ExitCode::from(EXIT_BAD_INPUT)
        }
        _ => err.exit(),
    }
}

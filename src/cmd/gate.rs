//! `drill gate` (in progress).

use crate::cli::GateArgs;
use crate::error::CliError;

/// Not yet.
pub fn gate(_args: GateArgs) -> Result<i32, CliError> {
    Err(CliError::new("not yet"))
}

//! `drill merge` (in progress).

use crate::cli::MergeArgs;
use crate::error::CliError;

/// Not yet.
pub fn merge(_args: MergeArgs) -> Result<i32, CliError> {
    Err(CliError::new("not yet"))
}

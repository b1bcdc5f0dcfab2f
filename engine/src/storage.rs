//! placeholder, filled in by its owner

/// Entry point of the `recorder storage` subcommand (args after the subcommand name).
#[allow(dead_code)]
pub fn placeholder() {}

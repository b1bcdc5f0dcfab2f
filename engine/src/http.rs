//! placeholder, filled in by its owner

/// Entry point of the `recorder http` subcommand (args after the subcommand name).
#[allow(dead_code)]
pub fn placeholder() {}

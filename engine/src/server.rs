//! placeholder, filled in by its owner

/// Entry point of the `recorder` subcommand (args after the subcommand name).
pub fn cli_main(_args: Vec<String>) -> std::process::ExitCode {
    eprintln!("recorder: this command is not built yet");
    std::process::ExitCode::from(2)
}

/// The io_uring backend (helper "uring-server"). Shim declaration on branch uring-server
/// until server/mod.rs lands.
pub mod uring;

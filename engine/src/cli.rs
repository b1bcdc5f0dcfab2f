//! Conventions shared by the command-line tools (`recorder`, `harness`).

/// `NAME VERSION (git REVISION)`, what `--version` prints.
pub fn version_line(name: &str) -> String {
    format!("{name} {} (git {})", crate::VERSION, crate::GIT_REVISION)
}

/// A closed stdout (`recorder options | head -1`) ends the program quietly with status 0,
/// as it does for the classic Unix tools, instead of `println!`'s panic (exit 101). Rust
/// ignores SIGPIPE, so the write fails with EPIPE and `println!` panics with a message
/// naming stdout and the error: only that panic is turned into the exit; every other
/// panic goes to the default hook.
pub fn exit_quietly_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let p = info.payload();
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info)
    }));
}

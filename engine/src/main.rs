//! `recorder`: the replay recorder and the engine's lab commands.
//! Each subcommand owns its argument parsing; this file only dispatches.

use std::process::ExitCode;

const USAGE: &str = "\
recorder: game replay recorder with every io_uring setup flag and opcode as a runtime option

usage: recorder <command> [options]

commands:
  serve      run the recorder (DS ingest + HTTP replay serving)
  probe      tell what this kernel and device accept (setup flags, opcodes, DIO alignment, IOPOLL, limits)
  options    list every option (--markdown writes docs/options.md's text)
  io-bench   file I/O benchmark with any ring configuration and opcode, side by side with fio

`recorder <command> --help` describes each command; `recorder --version` prints the
version and the git revision it was built from.";

fn main() -> ExitCode {
    engine::cli::exit_quietly_on_closed_stdout();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(
        args.first().map(String::as_str),
        Some("--version" | "-V" | "version")
    ) {
        println!("{}", engine::cli::version_line("recorder"));
        return ExitCode::SUCCESS;
    }
    if args.is_empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help" {
        println!("{USAGE}");
        return if args.is_empty() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let cmd = args.remove(0);
    match cmd.as_str() {
        "serve" => engine::server::cli_main(args),
        "probe" => engine::probe::cli_main(args),
        "options" => engine::config::cli_main(args),
        "io-bench" => engine::bench::cli_main(args),
        other => {
            eprintln!("recorder: unknown command {other:?}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

//! `harness`: load generators (`ds`, `clients`) and sweeps (`sweep`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use harness::{clients, ds, util::SizeDist};

#[derive(Parser)]
#[command(
    name = "harness",
    version = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("GIT_REVISION"), ")"),
    about = "uring-lab harness: simulated game servers, replay clients, sweeps with telemetry",
    after_help = "Exit status: 0 done; 1 ds/clients: the run or its check failed (never connected, verification failed); 2 bad command line or input (an experiment file's error, an unknown or refused option; nothing ran), for every command; 3 sweep: a run failed (with --fail-on-failed); 4 sweep: no cell could run at all; 130 interrupted."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Simulated game dedicated servers streaming matches to a recorder (open loop at a tick
    /// rate, or closed loop with --tick-hz 0)
    Ds(DsArgs),
    /// Replay downloaders and live viewers over HTTP
    Clients(ClientsArgs),
    /// Run an experiment: every cell with a fresh recorder (or anchor), telemetry, runs.csv
    Sweep(SweepArgs),
    /// Expand an experiment and print its cells without running anything
    Plan(PlanArgs),
    /// Power study of the regression check: N trials of an A/A sweep and of each injected
    /// slowdown (`analysis power DIR` gives the false-alarm and detection rates)
    Power(PowerArgs),
}

#[derive(Args)]
struct PowerArgs {
    /// Experiment file (experiments/ci.toml)
    experiment: std::path::PathBuf,
    /// Recorder binary measured on both sides
    #[arg(long)]
    recorder: std::path::PathBuf,
    /// Study directory (power.json and trials/TT-NAME/{base,head}); run again to continue
    #[arg(long)]
    out: std::path::PathBuf,
    /// Trials of each kind
    #[arg(long, default_value_t = 10)]
    trials: u32,
    /// A/A trials (default --trials). More: the extra rounds are A/A only, run between the
    /// full rounds. Fewer (at least 1): only that many rounds, spread evenly from round 1,
    /// have an A/A sweep; the others' injected trials take the nearest earlier one's margins
    #[arg(long)]
    aa_trials: Option<u32>,
    /// An injected slowdown, NAME=ARGS: the head recorder runs with ARGS (repeatable), e.g.
    /// kib5="--test-burn-rounds-per-kib 20"
    #[arg(long = "inject", value_name = "NAME=ARGS", allow_hyphen_values = true)]
    injections: Vec<String>,
    /// Stop before a trial sweep that would end after this many minutes (run again to go on)
    #[arg(long)]
    max_minutes: Option<f64>,
}

#[derive(Args)]
struct SweepArgs {
    /// Experiment file (experiments/NAME.toml)
    experiment: std::path::PathBuf,
    /// Output directory (default results/NAME-TIMESTAMP)
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Continue a sweep in --out: runs already in runs.csv are skipped
    #[arg(long)]
    resume: bool,
    /// Recorder binary (default: `recorder` next to this harness binary)
    #[arg(long)]
    recorder: Option<std::path::PathBuf>,
    /// A/B mode: build BASE_REV in a temporary worktree and run base and head interleaved
    #[arg(long, value_name = "BASE_REV")]
    ab: Option<String>,
    /// A/B mode with a prebuilt base recorder binary instead of a revision to build
    /// (same-build A/A checks, or a head with an injected slowdown via --recorder)
    #[arg(long, value_name = "PATH", conflicts_with = "ab")]
    base_recorder: Option<std::path::PathBuf>,
    /// Exit with status 3 if any run failed (recorder crash, harness error)
    #[arg(long)]
    fail_on_failed: bool,
    /// Extra arguments for every head recorder, e.g. CI's calibrated injected slowdown
    /// "--test-burn-rounds-per-frame 60 --test-burn-rounds-per-kib 10" (recorded in the manifest)
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    head_args: Option<String>,
}

#[derive(Args)]
struct PlanArgs {
    experiment: std::path::PathBuf,
}

#[derive(Args)]
struct DsArgs {
    /// Recorder ingest address
    #[arg(long, default_value = "127.0.0.1:7070")]
    addr: SocketAddr,
    /// Recorder HTTP address (for --verify; the recorder's default)
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Concurrent matches, one connection each
    #[arg(long, default_value_t = 16)]
    matches: usize,
    /// Frames per second per match; 0 = unpaced (closed loop: as fast as acks allow, bounded
    /// by --max-unacked)
    #[arg(long, default_value_t = 32.0)]
    tick_hz: f64,
    /// Frames sent but not yet acknowledged, per match, at most this many. Default: 32 with
    /// --tick-hz 0; no bound with a tick rate (pure open loop; frames held back by a bound
    /// go out late and are counted as late frames)
    #[arg(long, value_name = "N")]
    max_unacked: Option<u64>,
    /// Payload bytes sent but not yet acknowledged, per match, at most this much (e.g. 4m; a
    /// frame larger than this still goes out alone); with --max-unacked both bounds apply
    #[arg(long, value_name = "SIZE")]
    max_unacked_bytes: Option<String>,
    /// Unpaced only (--tick-hz 0): a keyframe every N frames; 0 = only the first frame is a
    /// keyframe. With a tick rate use --keyframe-interval-s
    #[arg(long, default_value_t = 0, value_name = "N")]
    keyframe_every: u64,
    /// Delta frame size distribution: fixed:N, uniform:A-B, lognormal:MEDIAN,SIGMA, exp:MEAN
    #[arg(long, default_value = "uniform:200-2000")]
    delta: String,
    /// Keyframe size distribution (same forms)
    #[arg(long, default_value = "48k")]
    keyframe: String,
    /// Seconds between keyframes (paced mode; x tick rate = every K-th frame)
    #[arg(long, default_value_t = 3.0)]
    keyframe_interval_s: f64,
    /// Match length in seconds; 0 = until the run ends. Ended matches are replaced (churn)
    #[arg(long, default_value_t = 0.0)]
    match_duration_s: f64,
    /// Ramp-up seconds (matches start spread over it; not measured)
    #[arg(long, default_value_t = 1.0)]
    ramp_up_s: f64,
    /// Measured window in seconds
    #[arg(long, default_value_t = 10.0)]
    measure_s: f64,
    /// Mean seconds between forced disconnects per match (then RESUME); 0 = never
    #[arg(long, default_value_t = 0.0)]
    disconnect_every_s: f64,
    /// Delay before reconnecting after a disconnect
    #[arg(long, default_value_t = 100)]
    reconnect_delay_ms: u64,
    /// Generator threads (each drives its share of connections with epoll)
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Match id prefix
    #[arg(long, default_value = "ds")]
    id_prefix: String,
    /// DS credential (the recorder's ds-token)
    #[arg(long, default_value = "")]
    credential: String,
    /// Do not END the matches at the end of the run (leave them open)
    #[arg(long)]
    no_end: bool,
    /// After the stop (END for every match), wait for SEALED while the recorder makes
    /// progress; give up after this many seconds without an ACK or SEALED
    #[arg(long, default_value_t = ds::DEFAULT_DRAIN_IDLE_S, value_name = "S")]
    drain_idle_s: f64,
    /// The longest drain after the stop, in seconds
    #[arg(long, default_value_t = ds::DEFAULT_DRAIN_MAX_S, value_name = "S")]
    drain_max_s: f64,
    /// Largest payload generated
    #[arg(long, default_value = "1m")]
    max_frame_bytes: String,
    /// Seed for ids and payloads
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Afterwards download every acknowledged match and check it byte for byte over --http
    #[arg(long)]
    verify: bool,
    /// Print the report as one JSON object on stdout instead of the text summary
    #[arg(long)]
    json: bool,
    /// A fleet of recorders (ingest addresses, comma-separated): each match goes to the
    /// node rendezvous hashing of its id picks (docs/tier.md); --addr is then unused
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<SocketAddr>,
}

#[derive(Args)]
struct ClientsArgs {
    /// Recorder (or nginx) HTTP address
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// uniform or zipf:S
    #[arg(long, default_value = "uniform")]
    popularity: String,
    /// whole, range:SIZE or live:DELAY_MS
    #[arg(long, default_value = "whole")]
    mode: String,
    /// Phases to run in order: hot, cold (cold drops the page cache first; needs root)
    #[arg(long, default_value = "hot", value_delimiter = ',')]
    phases: Vec<String>,
    #[arg(long, default_value_t = 1.0)]
    ramp_up_s: f64,
    #[arg(long, default_value_t = 10.0)]
    measure_s: f64,
    /// Match ids (default: GET /matches)
    #[arg(long, value_delimiter = ',')]
    ids: Vec<String>,
    /// URL path prefix before the match id
    #[arg(long, default_value = "/matches/")]
    path_prefix: String,
    /// Do not check contents against the reference pass
    #[arg(long)]
    no_verify: bool,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as JSON on stdout ({"phases": [{"phase": ..., report}]}) instead of
    /// the text summary
    #[arg(long)]
    json: bool,
}

/// Why a command failed: its exit status and message (see `--help`'s exit status).
enum Fail {
    /// 1: the run or its check failed.
    Run(String),
    /// 2: bad command line or input.
    Input(String),
}

impl From<String> for Fail {
    fn from(s: String) -> Fail {
        Fail::Run(s)
    }
}

fn stop_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    stop
}

fn ds_main(a: DsArgs) -> Result<(), Fail> {
    let cfg = ds::DsConfig {
        addr: a.addr,
        nodes: a.nodes,
        matches: a.matches,
        tick_hz: a.tick_hz,
        delta: SizeDist::parse(&a.delta).map_err(|e| Fail::Input(format!("--delta: {e}")))?,
        keyframe: SizeDist::parse(&a.keyframe)
            .map_err(|e| Fail::Input(format!("--keyframe: {e}")))?,
        keyframe_interval_s: a.keyframe_interval_s,
        keyframe_every: a.keyframe_every,
        max_unacked: match (a.max_unacked, &a.max_unacked_bytes) {
            (Some(n), _) => Some(n),
            (None, None) if a.tick_hz == 0.0 => Some(ds::DEFAULT_MAX_UNACKED_UNPACED),
            (None, _) => None,
        },
        max_unacked_bytes: a
            .max_unacked_bytes
            .as_deref()
            .map(engine::config::parse_bytes)
            .transpose()
            .map_err(|e| Fail::Input(format!("--max-unacked-bytes: {e}")))?,
        match_duration_s: a.match_duration_s,
        ramp_up_s: a.ramp_up_s,
        measure_s: a.measure_s,
        disconnect_every_s: a.disconnect_every_s,
        reconnect_delay_ms: a.reconnect_delay_ms,
        threads: a.threads,
        id_prefix: a.id_prefix,
        credential: a.credential,
        end_at_stop: !a.no_end || a.verify,
        drain_idle_s: a.drain_idle_s,
        drain_max_s: a.drain_max_s,
        max_frame_bytes: engine::config::parse_bytes(&a.max_frame_bytes)
            .map_err(|e| Fail::Input(format!("--max-frame-bytes: {e}")))?,
        seed: a.seed,
    };
    cfg.check().map_err(Fail::Input)?;
    let rep = ds::run(&cfg, Arc::new(ds::DsCounters::default()), stop_flag())?;
    let mut json = rep.to_json();
    if !a.json {
        print!("{}", rep.summary());
    }
    let mut ok = true;
    if a.verify {
        let v = ds::verify(&cfg, a.http, &rep.matches);
        if a.json {
            json["verify"] = serde_json::json!({
                "verified": v.verified,
                "not_sealed": v.not_sealed,
                "mismatches": v.mismatches,
            });
        } else {
            println!(
                "verify: {} matches byte-identical, {} not sealed (not checked), {} mismatches",
                v.verified,
                v.not_sealed,
                v.mismatches.len()
            );
            for m in v.mismatches.iter().take(20) {
                println!("verify: {m}");
            }
        }
        ok = v.mismatches.is_empty();
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json).unwrap_or_default()
        );
    }
    if rep.established == 0 {
        let why: Vec<String> = rep
            .errors
            .iter()
            .map(|(k, v)| format!("{k} x{v}"))
            .collect();
        return Err(Fail::Run(format!(
            "never connected to the recorder at {} ({}); is `recorder serve` running with ingest-addr {}?",
            a.addr,
            if why.is_empty() { "no connection completed".to_string() } else { why.join(", ") },
            a.addr
        )));
    }
    if ok {
        Ok(())
    } else {
        Err(Fail::Run("verification failed".into()))
    }
}

fn clients_main(a: ClientsArgs) -> Result<(), Fail> {
    let stop = stop_flag();
    let mut ok = true;
    let mut phases = Vec::new();
    for phase in &a.phases {
        let cold = match phase.as_str() {
            "hot" => false,
            "cold" => true,
            p => {
                return Err(Fail::Input(format!(
                    "--phases: unknown phase {p:?}; use hot and/or cold"
                )))
            }
        };
        let cfg = clients::ClientsConfig {
            addr: a.addr,
            concurrency: a.concurrency,
            popularity: clients::Popularity::parse(&a.popularity).map_err(Fail::Input)?,
            mode: clients::Mode::parse(&a.mode).map_err(Fail::Input)?,
            ramp_up_s: a.ramp_up_s,
            measure_s: a.measure_s,
            ids: a.ids.clone(),
            path_prefix: a.path_prefix.clone(),
            verify: !a.no_verify,
            cold,
            seed: a.seed,
            timeout: std::time::Duration::from_secs(30),
        };
        let rep = clients::run(&cfg, Arc::new(AtomicU64::new(0)), stop.clone())?;
        if a.json {
            let mut j = rep.to_json();
            j["phase"] = serde_json::json!(phase);
            phases.push(j);
        } else {
            println!("phase {phase}:");
            print!("{}", rep.summary());
        }
        ok &= rep.verify_failures.is_empty();
    }
    if a.json {
        let j = serde_json::json!({ "phases": phases });
        println!("{}", serde_json::to_string_pretty(&j).unwrap_or_default());
    }
    if ok {
        Ok(())
    } else {
        Err(Fail::Run("content verification failed".into()))
    }
}

/// Prints the cells, then checks every one of them as `harness sweep` would before
/// running (exit 2 with every problem named; nothing runs either way).
fn plan_main(a: PlanArgs) -> ExitCode {
    let e = match harness::experiment::Experiment::load(&a.experiment) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("harness: {e}");
            return ExitCode::from(harness::sweep::EXIT_USAGE as u8);
        }
    };
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{}: {} cells ({} excluded), dimensions: {}",
        e.name,
        e.cells.len(),
        e.excluded,
        e.dims.join(", ")
    );
    for c in &e.cells {
        let kv: Vec<String> = c.values.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if writeln!(
            out,
            "{} {} {} {}",
            c.id,
            c.kind(),
            c.workload(),
            kv.join(" ")
        )
        .is_err()
        {
            break; // stdout closed (| head): not an error
        }
    }
    // Bench time, roughly: each run is its ramp-up and measured window plus ~1 s of start
    // and stop (a serve run also prefills its replays), times each cell's repeat.min..max
    // (measured: a ci.toml A/A sweep, 60 runs of 4 s windows, took 287 s).
    let per_run = |c: &harness::experiment::Cell| {
        let prefill = match (c.kind(), c.workload().as_str()) {
            ("recorder", "serve" | "wrk-serve") => {
                c.f64_or("load.prefill-s", 3.0).unwrap_or(3.0) + 0.2
            }
            _ => 0.0,
        };
        let window = if c.kind() == "nop" {
            e.measure_s
        } else {
            e.ramp_up_s + e.measure_s
        };
        window + prefill + 1.0
    };
    let (mut runs, mut secs) = ((0u64, 0u64), (0.0f64, 0.0f64));
    for c in &e.cells {
        let r = e.repeat_for(&c.id);
        runs = (runs.0 + r.min as u64, runs.1 + r.max as u64);
        secs = (
            secs.0 + per_run(c) * r.min as f64,
            secs.1 + per_run(c) * r.max as f64,
        );
    }
    let own: Vec<String> = e
        .cells
        .iter()
        .filter_map(|c| {
            e.cell_repeat
                .get(&c.id)
                .map(|r| format!("{} {}..{}", c.id, r.min, r.max))
        })
        .collect();
    let _ = writeln!(
        out,
        "runs: {}..{} (repeat {}..{}{}), about {:.1}..{:.1} min of bench time; an A/B sweep (--ab, --base-recorder) runs each twice: about {:.1}..{:.1} min",
        runs.0,
        runs.1,
        e.repeat.min,
        e.repeat.max,
        if own.is_empty() {
            String::new()
        } else {
            format!("; own counts: {}", own.join(", "))
        },
        secs.0 / 60.0,
        secs.1 / 60.0,
        2.0 * secs.0 / 60.0,
        2.0 * secs.1 / 60.0
    );
    drop(out);
    match harness::validate::check_all(&e) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("harness: {msg}");
            ExitCode::from(harness::sweep::EXIT_USAGE as u8)
        }
    }
}

fn main() -> ExitCode {
    engine::cli::exit_quietly_on_closed_stdout();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Ds(a) => ds_main(a),
        Cmd::Clients(a) => clients_main(a),
        Cmd::Sweep(a) => {
            let opts = harness::sweep::SweepOpts {
                experiment: a.experiment,
                out: a.out,
                resume: a.resume,
                recorder: a.recorder,
                ab: a.ab,
                base_recorder: a.base_recorder,
                command_line: std::env::args().collect::<Vec<_>>().join(" "),
                fail_on_failed: a.fail_on_failed,
                head_args: a
                    .head_args
                    .map(|s| s.split_whitespace().map(String::from).collect())
                    .unwrap_or_default(),
            };
            return match harness::sweep::sweep(opts, stop_flag()) {
                Ok(code) => ExitCode::from(code as u8),
                Err(e) => {
                    eprintln!("harness: {e}");
                    ExitCode::from(harness::sweep::EXIT_USAGE as u8)
                }
            };
        }
        Cmd::Plan(a) => return plan_main(a),
        Cmd::Power(a) => {
            let injections = match a
                .injections
                .iter()
                .map(|s| harness::power::parse_injection(s))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("harness: {e}");
                    return ExitCode::from(harness::sweep::EXIT_USAGE as u8);
                }
            };
            let opts = harness::power::PowerOpts {
                experiment: a.experiment,
                recorder: a.recorder,
                out: a.out,
                trials: a.trials,
                aa_trials: a.aa_trials.unwrap_or(a.trials),
                injections,
                max_minutes: a.max_minutes,
                command_line: std::env::args().collect::<Vec<_>>().join(" "),
            };
            return match harness::power::run(&opts, stop_flag()) {
                Ok(code) => ExitCode::from(code as u8),
                Err(e) => {
                    eprintln!("harness: {e}");
                    ExitCode::from(harness::sweep::EXIT_USAGE as u8)
                }
            };
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail::Run(e)) => {
            eprintln!("harness: {e}");
            ExitCode::from(1)
        }
        Err(Fail::Input(e)) => {
            eprintln!("harness: {e}");
            ExitCode::from(harness::sweep::EXIT_USAGE as u8)
        }
    }
}

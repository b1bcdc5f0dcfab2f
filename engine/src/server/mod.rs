//! `recorder serve`: the replay recorder.
//!
//! # Backend-independent core (for both backends)
//!
//! - [`registry::Registry`] (`Arc`, all `&self`): matches live/sealed, one writer per match
//!   ([`registry::Registry::claim_writer`] -> [`registry::Claim`] New / Resume(file) /
//!   Rescan; give it back with `release_writer(guard, Some(file))` to park the append
//!   state for a resume), limits (`try_ds_connection`, `try_http_connection`), live-tail
//!   notification ([`registry::MatchShared::version`] to poll, `wait_change` to block,
//!   `Registry::set_waker` for a hook called on every publish/seal, e.g. an eventfd write),
//!   listing, metrics, `begin_shutdown`.
//! - [`session::IngestSession`]: a DS connection, sans-IO. `feed(bytes)`, loop
//!   `next_io(now)` -> [`session::Io`] (Open / Write(WriteReq) / Sync / FinishSeal), execute
//!   it, report with `open_done` / `write_done` / `sync_done` / `seal_done`; send
//!   `take_output()`; `on_timer(now)` at `deadline()`; `peer_closed()` on EOF;
//!   `begin_shutdown()`; close when `is_finished()` and the output is sent.
//!   std implementations of each Io: `storage::io::{open_match, write_req, seal_match}` and
//!   `File::sync_data` (the blocking backend's `exec_io` shows the mapping).
//! - [`crate::storage::MatchFile`]: append -> `take_write()` -> WriteReq {offset, aligned
//!   buffer, end, last_seq} -> `write_done`; O_DIRECT tail-block rewrite inside; group
//!   commit via `needs_sync`/`sync_done`; `seal`; `resume` from a recovery scan.
//! - [`crate::http`]: `parse_request(buf, max)` (one request per call, pipelining-safe),
//!   `route(&req, &registry)` -> `Response { head, body: None|Bytes|File{path,offset,len}
//!   |Live(LiveTail), close }`; `LiveTail::next_range/sent/is_done/retry_at` drive a chunked
//!   live download (`chunk_head`, `CHUNK_END`).
//! - [`start`] builds everything both backends share: validated config, recovered store,
//!   registry, session config, bound listeners ([`ServerContext`]).
//!
//! Backends: [`blocking::run`] (thread per connection, std) and `uring::run` (helper
//! "uring-server"; until it exists [`run_uring`] says it is not built).

pub mod blocking;
pub mod registry;
pub mod session;
pub mod testkit;

use crate::config::server::{AckModeKnob, Backend};
use crate::config::{self, Config};
use crate::protocol::AckMode;
use crate::storage::{self, Durability, MatchFile, StoreOptions, StorePaths};
use registry::{Limits, Registry};
use session::SessionConfig;
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// Everything a backend needs to run.
pub struct ServerContext {
    pub cfg: Config,
    pub registry: Arc<Registry>,
    pub session: Arc<SessionConfig>,
    pub ingest: TcpListener,
    pub http: TcpListener,
    /// Set by SIGINT/SIGTERM (or a test): stop accepting, flush, ack, close, return.
    pub shutdown: Arc<AtomicBool>,
}

/// How match files are written, from the run's configuration. The [file] section (helper
/// "fileio") is not on main yet: until it is, files use buffered pwrite with fdatasync
/// group commit at the ack cadence.
pub fn store_options(cfg: &Config) -> StoreOptions {
    StoreOptions {
        direct: false,
        align: 4096,
        durability: Durability::Fdatasync,
        stage_bytes: cfg.server.append_buffer_bytes as usize,
        prealloc_bytes: 0,
    }
}

pub fn session_config(cfg: &Config) -> SessionConfig {
    let s = &cfg.server;
    SessionConfig {
        ack_mode: match s.ack_mode {
            AckModeKnob::Durable => AckMode::Durable,
            AckModeKnob::Received => AckMode::Received,
        },
        ack_interval: Duration::from_millis(s.ack_interval_ms),
        max_frame_bytes: s.max_frame_bytes as u32,
        idle_timeout: Duration::from_millis(s.idle_timeout_ms),
        ds_token: s.ds_token.as_bytes().to_vec(),
        store: store_options(cfg),
        max_buffered_input: (s.max_frame_bytes as usize + 64).max(4 << 20),
    }
}

pub fn limits(cfg: &Config) -> Limits {
    let s = &cfg.server;
    Limits {
        max_matches: s.max_matches as usize,
        max_connections: s.max_connections as usize,
        http_max_connections: s.http_max_connections as usize,
        live_max_delay: Duration::from_millis(s.live_max_delay_ms),
    }
}

/// Why the server could not start or run.
#[derive(Debug)]
pub struct ServerError(pub String);

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ServerError {}

/// Validates the configuration, recovers the store, binds both listeners.
pub fn start(cfg: Config, shutdown: Arc<AtomicBool>) -> Result<ServerContext, ServerError> {
    cfg.validate().map_err(|e| ServerError(format!("invalid configuration: {e}")))?;
    if cfg.server.store.is_empty() {
        return Err(ServerError("no store directory: pass --store DIR (or store = \"DIR\" under [server])".into()));
    }
    let paths = StorePaths::new(&cfg.server.store);
    let opts = store_options(&cfg);
    let rec = storage::recover_store(&paths, &opts, cfg.server.max_frame_bytes as u32)
        .map_err(|e| ServerError(format!("cannot prepare the store {}: {e}", paths.root.display())))?;
    for n in &rec.notes {
        eprintln!("recovery: {n}");
    }
    let registry = Registry::new(paths, limits(&cfg));
    let live: Vec<MatchFile> = rec.live.iter().map(|(id, scan, tail)| MatchFile::resume(id, scan, tail, opts.clone())).collect();
    if !live.is_empty() || !rec.sealed.is_empty() {
        eprintln!("recovery: {} resumable matches, {} sealed replays", live.len(), rec.sealed.len());
    }
    registry.load_recovered(&rec.sealed, live);
    let ingest = TcpListener::bind(&cfg.server.ingest_addr)
        .map_err(|e| ServerError(format!("cannot listen on ingest-addr {}: {e}", cfg.server.ingest_addr)))?;
    let http =
        TcpListener::bind(&cfg.server.http_addr).map_err(|e| ServerError(format!("cannot listen on http-addr {}: {e}", cfg.server.http_addr)))?;
    let session = Arc::new(session_config(&cfg));
    Ok(ServerContext { cfg, registry, session, ingest, http, shutdown })
}

/// The io_uring backend entry point (helper "uring-server" replaces this stub's body with
/// a call to `uring::run(ctx)`).
pub fn run_uring(_ctx: ServerContext) -> Result<(), ServerError> {
    Err(ServerError("the io_uring backend is not built yet; use --backend blocking".into()))
}

/// Requested and effective configuration as JSON (`--print-config`).
pub fn config_json(requested: &Config, effective: &Config) -> serde_json::Value {
    let pairs = |c: &Config| serde_json::Value::Object(c.to_pairs().into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect());
    let o = store_options(effective);
    serde_json::json!({
        "requested": pairs(requested),
        "effective": pairs(effective),
        "storage": {
            "direct": o.direct,
            "align": o.align,
            "durability": format!("{:?}", o.durability).to_lowercase(),
            "stage_bytes": o.stage_bytes,
            "prealloc_bytes": o.prealloc_bytes,
        },
    })
}

fn effective(cfg: &Config) -> Config {
    let mut e = cfg.clone();
    if e.server.workers == 0 {
        e.server.workers = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    }
    e
}

fn command() -> clap::Command {
    let cmd = clap::Command::new("recorder serve")
        .about("Run the replay recorder: DS ingest (docs/protocol.md) and HTTP replay serving")
        .arg(clap::Arg::new("config").long("config").value_name("FILE").help("TOML configuration file ([ring], [file], [net], [server] tables)"))
        .arg(
            clap::Arg::new("print-config")
                .long("print-config")
                .action(clap::ArgAction::SetTrue)
                .help("Print the requested and effective configuration as JSON and exit"),
        );
    config::add_knob_args(cmd)
}

/// `recorder serve ...`.
pub fn cli_main(args: Vec<String>) -> ExitCode {
    let m = match command().try_get_matches_from(std::iter::once("serve".to_string()).chain(args)) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let mut cfg = Config::default();
    if let Some(p) = m.get_one::<String>("config") {
        let text = match std::fs::read_to_string(p) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("recorder serve: cannot read config file {p}: {e}");
                return ExitCode::from(2);
            }
        };
        if let Err(e) = cfg.apply_toml(&text) {
            eprintln!("recorder serve: {p}: {e}");
            return ExitCode::from(2);
        }
    }
    if let Err(e) = config::apply_knob_args(&mut cfg, &m) {
        eprintln!("recorder serve: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = cfg.validate() {
        eprintln!("recorder serve: invalid configuration: {e}");
        return ExitCode::from(2);
    }
    let eff = effective(&cfg);
    if m.get_flag("print-config") {
        println!("{}", serde_json::to_string_pretty(&config_json(&cfg, &eff)).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, shutdown.clone()) {
            eprintln!("recorder serve: cannot install the signal handler: {e}");
            return ExitCode::from(1);
        }
    }
    let ctx = match start(eff, shutdown) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("recorder serve: {e}");
            return ExitCode::from(1);
        }
    };
    match (ctx.ingest.local_addr(), ctx.http.local_addr()) {
        (Ok(i), Ok(h)) => {
            eprintln!("ingest listening on {i}");
            eprintln!("http listening on {h}");
        }
        _ => {
            eprintln!("recorder serve: cannot read the bound addresses");
            return ExitCode::from(1);
        }
    }
    let r = match ctx.cfg.server.backend {
        Backend::Blocking => blocking::run(ctx),
        Backend::Uring => run_uring(ctx),
    };
    match r {
        Ok(()) => {
            eprintln!("recorder serve: stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("recorder serve: {e}");
            ExitCode::from(1)
        }
    }
}

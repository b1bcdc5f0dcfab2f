//! `harness sweep EXP.toml [--out DIR] [--resume] [--ab BASE_REV]`.
//!
//! Each cell starts a fresh recorder (or anchor) with the cell's configuration, runs a
//! ramp-up and a measured window with telemetry, stops it, restores the block layer, and
//! appends one row to runs.csv (flushed). Cells run in randomised interleaved rounds,
//! repeated from `repeat.min` up to `repeat.max` while the relative spread of throughput is
//! above `repeat.rsd_pct`. See docs/sweeps.md and docs/results.md.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::block::{self, Journal};
use crate::experiment::{Cell, Experiment, ENGINE_SECTIONS};
use crate::target::Target;
use crate::telemetry::{self, Derived, Sampler};
use crate::util::{fmt_opt, mean_sd, rfc3339_now, run_cmd, unix_now, SizeDist};
use crate::{clients, ds, placement};

/// Columns of runs.csv before the dimension columns.
pub const HEAD_COLS: &[&str] = &[
    "run_id",
    "cell_id",
    "rep",
    "pair",
    "revision",
    "kind",
    "workload",
    "status",
    "reason",
    "started_at",
    "duration_s",
    "dims",
];
/// Columns after the dimension columns (docs/results.md order), then the added ones.
pub const TAIL_COLS: &[&str] = &[
    "requested_flags",
    "effective_flags",
    "throughput_mbps",
    "frames_per_s",
    "ack_p50_us",
    "ack_p99_us",
    "ack_p999_us",
    "ack_max_us",
    "req_p50_us",
    "req_p99_us",
    "cpu_s_per_gib",
    "ios_per_syscall",
    "rss_kb",
    "gen_cpu_pct",
    "dev_mbps",
    "dev_iops",
    "dev_merge_pct",
    "dev_await_ms",
    "dev_aqu_sz",
    "dev_util_pct",
    "ctx_switches_per_s",
    "steal_pct",
    "dirty_kb_max",
    "writeback_kb_max",
    "errors",
    "log",
    // Added after the documented columns (readers by name are unaffected).
    "recorder_cpu_pct",
    "recorder_write_mbps",
    "net_rx_softirq_per_s",
    "block_softirq_per_s",
    "interrupts_per_s",
    "ring_fdinfo",
    "error_kinds",
    "placement",
    "load",
    "inflight_max_frames",
    "inflight_max_bytes",
    "late_frames",
];

pub fn header(dims: &[String]) -> Vec<String> {
    HEAD_COLS
        .iter()
        .map(|s| s.to_string())
        .chain(dims.iter().map(|d| format!("dim.{d}")))
        .chain(TAIL_COLS.iter().map(|s| s.to_string()))
        .collect()
}

pub struct SweepOpts {
    pub experiment: PathBuf,
    pub out: Option<PathBuf>,
    pub resume: bool,
    pub recorder: Option<PathBuf>,
    pub ab: Option<String>,
    /// A/B with a prebuilt base binary (no build); exclusive with `ab`.
    pub base_recorder: Option<PathBuf>,
    pub command_line: String,
    /// Exit with 3 when a run failed (default: failed runs are data, exit 0).
    pub fail_on_failed: bool,
}

/// One finished run.
#[derive(Default, Debug, Clone)]
pub struct Outcome {
    pub status: String,
    pub reason: String,
    pub started_at: Option<f64>,
    pub duration_s: Option<f64>,
    pub requested_flags: String,
    pub effective_flags: String,
    pub m: BTreeMap<&'static str, String>,
    pub log: String,
}

impl Outcome {
    fn bad(status: &str, reason: impl Into<String>) -> Outcome {
        Outcome {
            status: status.into(),
            reason: one_line(&reason.into()),
            ..Default::default()
        }
    }
    pub fn throughput(&self) -> Option<f64> {
        self.m.get("throughput_mbps").and_then(|v| v.parse().ok())
    }
}

fn one_line(s: &str) -> String {
    let s = s.replace(['\n', '\r'], " | ");
    if s.len() > 600 {
        format!(
            "{}...",
            &s[..s
                .char_indices()
                .take_while(|(i, _)| *i < 600)
                .last()
                .map(|(i, _)| i)
                .unwrap_or(0)]
        )
    } else {
        s
    }
}

/// runs.csv of one result directory.
pub struct RunsCsv {
    path: PathBuf,
    header: Vec<String>,
    /// (cell_id, rep) already present, with their status and throughput.
    pub done: HashMap<(String, u32), (String, Option<f64>)>,
}

impl RunsCsv {
    pub fn open(dir: &Path, dims: &[String], resume: bool) -> Result<RunsCsv, String> {
        let path = dir.join("runs.csv");
        let header = header(dims);
        let mut done = HashMap::new();
        if path.exists() {
            if !resume {
                return Err(format!(
                    "{} exists; use --resume to continue that sweep or choose another --out",
                    path.display()
                ));
            }
            let mut rd = csv::Reader::from_path(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let h: Vec<String> = rd
                .headers()
                .map_err(|e| e.to_string())?
                .iter()
                .map(String::from)
                .collect();
            if h != header {
                return Err(format!(
                    "{} was written by a different experiment (its columns differ); resume needs the same experiment file",
                    path.display()
                ));
            }
            let ci = |n: &str| h.iter().position(|x| x == n).expect("own header");
            let (c_cell, c_rep, c_status, c_thr) = (
                ci("cell_id"),
                ci("rep"),
                ci("status"),
                ci("throughput_mbps"),
            );
            for r in rd.records() {
                let r = r.map_err(|e| format!("{}: {e}", path.display()))?;
                let rep: u32 = r.get(c_rep).and_then(|v| v.parse().ok()).unwrap_or(0);
                done.insert(
                    (r.get(c_cell).unwrap_or("").to_string(), rep),
                    (
                        r.get(c_status).unwrap_or("").to_string(),
                        r.get(c_thr).and_then(|v| v.parse().ok()),
                    ),
                );
            }
        } else {
            let mut w = csv::Writer::from_path(&path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            w.write_record(&header).map_err(|e| e.to_string())?;
            w.flush().map_err(|e| e.to_string())?;
        }
        Ok(RunsCsv { path, header, done })
    }

    pub fn append(&mut self, row: &BTreeMap<String, String>) -> Result<(), String> {
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        let mut w = csv::WriterBuilder::new().has_headers(false).from_writer(f);
        let rec: Vec<&str> = self
            .header
            .iter()
            .map(|h| row.get(h).map(String::as_str).unwrap_or(""))
            .collect();
        w.write_record(&rec).map_err(|e| e.to_string())?;
        w.flush()
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        let f = w.into_inner().map_err(|e| e.to_string())?;
        f.sync_data().map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// What every run needs.
pub struct Ctx<'a> {
    pub exp: &'a Experiment,
    pub out: PathBuf,
    pub target: Target,
    pub journal: &'a Journal,
    pub stop: Arc<AtomicBool>,
    pub topo: placement::Topo,
}

/// Knobs the harness sets itself for every recorder run.
const HARNESS_OWNED: &[&str] = &["server.store", "server.ingest-addr", "server.http-addr"];

/// The recorder's command-line arguments for a cell and the setup flags it requests,
/// validated with the engine's own rules first (a refusal makes the cell `unsupported`).
#[allow(clippy::result_large_err)] // an Outcome is the natural error here
fn cell_engine_args(cell: &Cell) -> Result<(Vec<String>, String), Outcome> {
    let mut cfg = engine::config::Config::default();
    let _ = cfg.set("server.store", "/nonexistent-store-checked-by-the-recorder");
    let _ = cfg.set("server.ingest-addr", "127.0.0.1:0");
    let _ = cfg.set("server.http-addr", "127.0.0.1:0");
    let mut args = Vec::new();
    for k in cell.values.keys() {
        if HARNESS_OWNED.contains(&k.as_str()) {
            return Err(Outcome::bad(
                "failed",
                format!("{k} is set by the harness for every run; remove it from the experiment"),
            ));
        }
    }
    for (k, v) in &cell.values {
        let ns = k.split('.').next().unwrap_or("");
        if ENGINE_SECTIONS.contains(&ns) {
            cfg.set(k, v).map_err(|e| {
                Outcome::bad(
                    "unsupported",
                    format!("refused by the engine's knob table: {e}"),
                )
            })?;
            let knob = engine::config::find_knob(k).expect("checked at load");
            args.push(format!("--{}", knob.name));
            args.push(v.clone());
        } else if let Some(raw) = k.strip_prefix("raw.") {
            args.push(format!("--{raw}"));
            args.push(v.clone());
        }
    }
    cfg.validate()
        .and_then(|_| engine::config::server::validate_serve(&cfg))
        .map_err(|e| {
            Outcome::bad(
                "unsupported",
                format!("refused by the engine's configuration rules: {e}"),
            )
        })?;
    let requested = if cfg.server.backend == engine::config::server::Backend::Uring {
        engine::uring::flag_names(cfg.ring.setup_flags()).replace("none", "")
    } else {
        String::new()
    };
    Ok((args, requested))
}

/// Reads the recorder's log for a line saying the config is unsupported.
fn classify_exit(log: &str, status: &str) -> Outcome {
    let hit = log.lines().find(|l| {
        let l = l.to_ascii_lowercase();
        l.contains("unsupported")
            || l.contains("not supported")
            || l.contains("eopnotsupp")
            || l.contains("unknown option")
    });
    match hit {
        Some(l) => Outcome::bad("unsupported", l.trim().to_string()),
        None => {
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            Outcome::bad(
                "failed",
                format!(
                    "recorder exited ({status}) before listening: {}",
                    tail.join(" | ")
                ),
            )
        }
    }
}

/// Setup flags the recorder reports in its log. The uring backend prints, per worker,
/// `ring flags EFFECTIVE (asked REQUESTED), ...`; other lines naming `requested` / `effective`
/// with `IORING_SETUP_*` tokens are also understood. `word` is `requested` or `effective`.
fn flags_from_log(log: &str, word: &str) -> String {
    for l in log.lines() {
        if let Some(rest) = l.split("ring flags ").nth(1) {
            let (eff, req) = match rest.split_once(" (asked ") {
                Some((e, r)) => (e.trim(), r.split(')').next().unwrap_or("").trim()),
                None => (rest.split(',').next().unwrap_or("").trim(), ""),
            };
            let v = if word == "effective" { eff } else { req };
            return if v == "none" {
                String::new()
            } else {
                v.to_string()
            };
        }
    }
    for l in log.lines() {
        let low = l.to_ascii_lowercase();
        if low.contains(word) && l.contains("IORING_SETUP_") {
            let names: Vec<&str> = l
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|t| t.starts_with("IORING_SETUP_"))
                .collect();
            return names.join("|");
        }
    }
    String::new()
}

/// `(io_uring_enter calls, completions)` from the recorder's `/metrics`.
fn uring_counters(http: SocketAddr) -> Option<(u64, u64)> {
    let r = crate::httpc::get(http, "/metrics", None, Duration::from_secs(2)).ok()?;
    if r.status != 200 {
        return None;
    }
    let text = String::from_utf8_lossy(&r.body);
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    Some((
        value("recorder_uring_enter_calls_total ")?,
        value("recorder_uring_completions_total ")?,
    ))
}

struct Recorder {
    child: Child,
    ingest: SocketAddr,
    http: SocketAddr,
    log_path: PathBuf,
}

#[allow(clippy::result_large_err)]
fn spawn_recorder(
    bin: &Path,
    store: &Path,
    args: &[String],
    log_path: &Path,
    cpus: Option<&str>,
    stop: &AtomicBool,
) -> Result<Recorder, Outcome> {
    let log = std::fs::File::create(log_path).map_err(|e| {
        Outcome::bad(
            "failed",
            format!("cannot create log {}: {e}", log_path.display()),
        )
    })?;
    let mut cmd = match cpus {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c).arg(bin);
            cmd
        }
        None => Command::new(bin),
    };
    cmd.arg("serve")
        .arg("--store")
        .arg(store)
        .args(["--ingest-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(args)
        // the recorder's per-worker ring set-up lines, which `flags_from_log` reads, are
        // logged at debug level under this target
        .env("RUST_LOG", "info,recorder::startup=debug")
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .map_err(|e| Outcome::bad("failed", e.to_string()))?,
        )
        .stderr(log);
    let mut child = cmd.spawn().map_err(|e| {
        Outcome::bad(
            "failed",
            format!("cannot start recorder {}: {e}", bin.display()),
        )
    })?;
    crate::util::raise_nofile_of(child.id(), 65_536);
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(log_path).unwrap_or_default();
        let find = |p: &str| {
            text.lines().find_map(|l| {
                l.split(p)
                    .nth(1)
                    .and_then(|a| a.trim().parse::<SocketAddr>().ok())
            })
        };
        if let (Some(i), Some(h)) = (find("ingest listening on "), find("http listening on ")) {
            return Ok(Recorder {
                child,
                ingest: i,
                http: h,
                log_path: log_path.to_path_buf(),
            });
        }
        if let Ok(Some(st)) = child.try_wait() {
            std::thread::sleep(Duration::from_millis(50));
            let text = std::fs::read_to_string(log_path).unwrap_or_default();
            return Err(classify_exit(&text, &st.to_string()));
        }
        if t0.elapsed() > Duration::from_secs(30) || stop.load(Relaxed) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Outcome::bad(
                "failed",
                "recorder did not print `ingest listening on` and `http listening on` within 30 s",
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Recorder {
    /// SIGTERM, wait up to 10 s, then SIGKILL. Err if it had died before we asked.
    fn stop(mut self) -> Result<(), String> {
        if let Ok(Some(st)) = self.child.try_wait() {
            return Err(format!(
                "recorder exited during the run ({st}); see the log"
            ));
        }
        let _ = crate::util::send_signal(self.child.id(), "TERM");
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log_path)
            .and_then(|mut f| {
                writeln!(
                    f,
                    "harness: recorder did not stop within 10 s of SIGTERM; killed"
                )
            });
        Ok(())
    }
}

fn vmhwm_kb(pid: u32) -> Option<f64> {
    procfs::process::Process::new(pid as i32)
        .ok()?
        .status()
        .ok()?
        .vmhwm
        .map(|v| v as f64)
}

fn ds_config_for(
    cell: &Cell,
    exp: &Experiment,
    addr: SocketAddr,
    run_seed: u64,
) -> Result<ds::DsConfig, String> {
    // bulk-ingest: closed loop, a few matches sending 64 KiB frames as fast as acks allow
    // (64 frames = 4 MiB in flight per match): the recorder's saturation throughput.
    let bulk = cell.workload() == "bulk-ingest";
    let mut c = ds::DsConfig {
        addr,
        ramp_up_s: exp.ramp_up_s,
        measure_s: exp.measure_s,
        seed: run_seed,
        ..Default::default()
    };
    c.matches = cell.u64_or("load.matches", if bulk { 8 } else { 300 })? as usize;
    c.tick_hz = cell.f64_or("load.tick-hz", if bulk { 0.0 } else { 64.0 })?;
    c.delta = SizeDist::parse(cell.str_or(
        "load.delta",
        if bulk {
            "fixed:64k"
        } else {
            "uniform:200-2000"
        },
    ))?;
    c.keyframe = SizeDist::parse(cell.str_or("load.keyframe", "48k"))?;
    c.keyframe_interval_s = cell.f64_or("load.keyframe-interval-s", 3.0)?;
    c.keyframe_every = cell.u64_or("load.keyframe-every", 0)?;
    // load.max-unacked: frames in flight per match, or "off" (paced runs only).
    let default_unacked = if bulk {
        Some(64)
    } else if c.tick_hz == 0.0 && cell.get("load.max-unacked-bytes").is_none() {
        Some(ds::DEFAULT_MAX_UNACKED_UNPACED)
    } else {
        None
    };
    c.max_unacked = match cell.get("load.max-unacked") {
        None => default_unacked,
        Some("off") => None,
        Some(_) => Some(cell.u64_or("load.max-unacked", 0)?),
    };
    c.max_unacked_bytes = match cell.get("load.max-unacked-bytes") {
        None | Some("off") => None,
        Some(v) => Some(
            engine::config::parse_bytes(v)
                .map_err(|e| format!("load.max-unacked-bytes = {v:?}: {e}"))?,
        ),
    };
    c.match_duration_s = cell.f64_or("load.match-duration-s", 0.0)?;
    c.disconnect_every_s = cell.f64_or("load.disconnect-every-s", 0.0)?;
    c.threads = cell.u64_or("load.threads", 2)? as usize;
    c.end_at_stop = true;
    c.id_prefix = "m".into();
    c.check().map_err(|e| {
        format!(
            "load settings refused: {e} (the load.* keys map to the harness ds flags of the same name)"
        )
    })?;
    Ok(c)
}

/// The measured part of a recorder run, given a started recorder.
fn drive_recorder(
    ctx: &Ctx,
    cell: &Cell,
    rec: &Recorder,
    run_seed: u64,
    progress: &Arc<AtomicU64>,
    o: &mut Outcome,
) -> Result<(Instant, f64, u64), String> {
    let exp = ctx.exp;
    match cell.workload().as_str() {
        "ingest" | "bulk-ingest" => {
            let cfg = ds_config_for(cell, exp, rec.ingest, run_seed)?;
            let ctr = Arc::new(ds::DsCounters::default());
            // Forward acked bytes to the sampler's progress counter.
            let fwd_stop = Arc::new(AtomicBool::new(false));
            let fwd = {
                let (ctr, p, s) = (ctr.clone(), progress.clone(), fwd_stop.clone());
                std::thread::spawn(move || {
                    while !s.load(Relaxed) {
                        p.store(ctr.payload_bytes_acked.load(Relaxed), Relaxed);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    p.store(ctr.payload_bytes_acked.load(Relaxed), Relaxed);
                })
            };
            let ws =
                Instant::now() + Duration::from_millis(20) + Duration::from_secs_f64(cfg.ramp_up_s);
            let started = unix_now() + 0.02 + cfg.ramp_up_s;
            let rep = ds::run(&cfg, ctr, ctx.stop.clone());
            fwd_stop.store(true, Relaxed);
            let _ = fwd.join();
            let rep = rep?;
            o.started_at = Some(started);
            o.duration_s = Some(rep.measure_s);
            o.m.insert("throughput_mbps", fmt_opt(Some(rep.throughput_mbps())));
            o.m.insert("frames_per_s", fmt_opt(Some(rep.frames_per_s())));
            o.m.insert("ack_p50_us", fmt_opt(rep.ack_pct(50.0)));
            o.m.insert("ack_p99_us", fmt_opt(rep.ack_pct(99.0)));
            o.m.insert("ack_p999_us", fmt_opt(rep.ack_pct(99.9)));
            o.m.insert("ack_max_us", fmt_opt(rep.ack_pct(100.0)));
            o.m.insert("gen_cpu_pct", fmt_opt(rep.gen_cpu_pct));
            o.m.insert("load", cfg.describe());
            o.m.insert("inflight_max_frames", rep.max_inflight_frames().to_string());
            o.m.insert("inflight_max_bytes", rep.max_inflight_bytes().to_string());
            // Late frames only exist when paced; empty (not 0) for closed-loop runs.
            if !cfg.unpaced() {
                o.m.insert("late_frames", rep.late_frames.to_string());
            }
            o.m.insert("errors", rep.errors_total().to_string());
            o.m.insert(
                "error_kinds",
                rep.errors
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(";"),
            );
            Ok((ws, rep.measure_s, rep.payload_bytes_acked_window))
        }
        "serve" => {
            // Prefill: sealed matches to download.
            let mut pre = ds_config_for(cell, exp, rec.ingest, run_seed)?;
            pre.matches = cell.u64_or("load.prefill-matches", 16)? as usize;
            pre.ramp_up_s = 0.2;
            pre.measure_s = cell.f64_or("load.prefill-s", 3.0)?;
            let prep = ds::run(&pre, Arc::new(ds::DsCounters::default()), ctx.stop.clone())?;
            let ids: Vec<String> = prep
                .matches
                .iter()
                .filter(|m| m.sealed.is_some() && m.acked_seq > 0)
                .map(|m| m.id.clone())
                .collect();
            if ids.is_empty() {
                return Err(format!(
                    "prefill sealed no match ({})",
                    prep.summary().replace('\n', " ")
                ));
            }
            let ccfg = clients_config_for(cell, exp, rec.http, ids, run_seed)?;
            run_clients(&ccfg, progress, ctx, o)
        }
        w => Err(format!(
            "workload {w} does not apply to the recorder; use ingest, bulk-ingest or serve"
        )),
    }
}

fn clients_config_for(
    cell: &Cell,
    exp: &Experiment,
    addr: SocketAddr,
    ids: Vec<String>,
    seed: u64,
) -> Result<clients::ClientsConfig, String> {
    let cold = match cell.str_or("load.cache", "hot") {
        "hot" => false,
        "cold" => true,
        o => return Err(format!("load.cache = {o:?}; use hot or cold")),
    };
    Ok(clients::ClientsConfig {
        addr,
        concurrency: cell.u64_or("load.concurrency", 8)? as usize,
        popularity: clients::Popularity::parse(cell.str_or("load.popularity", "uniform"))?,
        mode: clients::Mode::parse(cell.str_or("load.mode", "whole"))?,
        ramp_up_s: exp.ramp_up_s,
        measure_s: exp.measure_s,
        ids,
        path_prefix: "/matches/".into(),
        verify: true,
        cold,
        seed,
        timeout: Duration::from_secs(30),
    })
}

fn run_clients(
    ccfg: &clients::ClientsConfig,
    progress: &Arc<AtomicU64>,
    ctx: &Ctx,
    o: &mut Outcome,
) -> Result<(Instant, f64, u64), String> {
    // The reference pass happens inside clients::run before its clock starts; estimate the
    // window start from when the run's own t0 is taken: sample progress until it moves.
    let before = Instant::now();
    let rep = clients::run(ccfg, progress.clone(), ctx.stop.clone())?;
    let end = Instant::now();
    let ws = end - Duration::from_secs_f64(rep.measure_s);
    o.started_at = Some(unix_now() - end.duration_since(ws).as_secs_f64());
    o.duration_s = Some(rep.measure_s);
    let _ = before;
    o.m.insert("throughput_mbps", fmt_opt(Some(rep.throughput_mbps())));
    o.m.insert(
        "req_p50_us",
        fmt_opt(clients::ClientsReport::pct(&rep.req_us, 50.0)),
    );
    o.m.insert(
        "req_p99_us",
        fmt_opt(clients::ClientsReport::pct(&rep.req_us, 99.0)),
    );
    o.m.insert("gen_cpu_pct", fmt_opt(rep.gen_cpu_pct));
    o.m.insert("errors", rep.errors_total().to_string());
    let mut kinds: Vec<String> = rep.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !rep.verify_failures.is_empty() {
        kinds.push(format!("VERIFY={}", rep.verify_failures.len()));
        o.reason = one_line(&format!(
            "content verification failed: {}",
            rep.verify_failures[0]
        ));
    }
    o.m.insert("error_kinds", kinds.join(";"));
    Ok((ws, rep.measure_s, rep.bytes))
}

/// Runs one recorder cell once.
fn run_recorder(ctx: &Ctx, cell: &Cell, run_id: &str, bin: &Path, run_seed: u64) -> Outcome {
    let (args, requested) = match cell_engine_args(cell) {
        Ok(a) => a,
        Err(o) => return o,
    };
    let store = ctx.target.path.join(format!("store-{run_id}"));
    let _ = std::fs::remove_dir_all(&store);
    if let Err(e) = std::fs::create_dir_all(&store) {
        return Outcome::bad(
            "failed",
            format!("cannot create store {}: {e}", store.display()),
        );
    }
    let log_rel = format!("logs/{run_id}.log");
    let log_path = ctx.out.join(&log_rel);
    let pl = placement::plan(&ctx.topo, cell.str_or("placement.policy", "shared"));
    let pl = match pl {
        Ok(p) => p,
        Err(e) => return Outcome::bad("unsupported", e),
    };
    let mut o = match spawn_recorder(
        bin,
        &store,
        &args,
        &log_path,
        pl.recorder_cpus.as_deref(),
        &ctx.stop,
    ) {
        Ok(rec) => {
            let mut o = Outcome {
                status: "ok".into(),
                log: log_rel.clone(),
                ..Default::default()
            };
            o.m.insert("placement", pl.describe());
            if let Err(e) = placement::bind_self(&ctx.topo, pl.generator_cpus.as_deref()) {
                o.m.insert(
                    "placement",
                    format!("{} (generator binding failed: {e})", pl.describe()),
                );
            }
            let progress = Arc::new(AtomicU64::new(0));
            let sampler = Sampler::start(
                ctx.target.device.clone(),
                vec![rec.child.id() as i32],
                progress.clone(),
                Duration::from_millis(250),
            );
            let uring0 = uring_counters(rec.http);
            let res = drive_recorder(ctx, cell, &rec, run_seed, &progress, &mut o);
            // I/Os per system call over the whole run (ramp-up included), from the
            // recorder's own counters; empty when it made no io_uring_enter call (blocking).
            if let (Some((e0, c0)), Some((e1, c1))) = (uring0, uring_counters(rec.http)) {
                if e1 > e0 {
                    o.m.insert(
                        "ios_per_syscall",
                        fmt_opt(Some((c1 - c0) as f64 / (e1 - e0) as f64)),
                    );
                }
            }
            let (samples, fdinfo) = sampler.finish();
            let _ = placement::bind_self(&ctx.topo, None);
            o.m.insert("rss_kb", fmt_opt(vmhwm_kb(rec.child.id())));
            o.m.insert("ring_fdinfo", fdinfo);
            let stopped = rec.stop();
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            // Requested: from the engine's knob table (the one place that maps knobs to flags);
            // effective: only what the recorder itself reports in its log (never guessed).
            let logged = flags_from_log(&text, "requested");
            o.requested_flags = if logged.is_empty() {
                requested.clone()
            } else {
                logged
            };
            o.effective_flags = flags_from_log(&text, "effective");
            match (res, stopped) {
                (Err(e), _) => {
                    let mut b = Outcome::bad("failed", e);
                    b.log = log_rel.clone();
                    b
                }
                (Ok(_), Err(e)) => {
                    let last = text
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("")
                        .trim();
                    let mut b = Outcome::bad("failed", format!("{e}; last log line: {last}"));
                    b.log = log_rel.clone();
                    b
                }
                (Ok((ws, measure_s, bytes)), Ok(())) => {
                    let we = ws + Duration::from_secs_f64(measure_s);
                    let d = telemetry::derive(&samples, ws, we);
                    let _ = telemetry::write_timeseries(
                        &ctx.out.join(format!("timeseries/{run_id}.csv")),
                        &samples,
                        ws,
                    );
                    fill_derived(&mut o, &d, bytes, measure_s);
                    o
                }
            }
        }
        Err(mut o) => {
            o.log = log_rel;
            o
        }
    };
    let _ = std::fs::remove_dir_all(&store);
    if o.status == "ok" && o.reason.starts_with("content verification failed") {
        o.status = "failed".into();
    }
    reject_if_noisy(ctx, cell, &mut o);
    o
}

fn fill_derived(o: &mut Outcome, d: &Derived, bytes: u64, measure_s: f64) {
    o.m.insert("dev_mbps", fmt_opt(d.dev_mbps));
    o.m.insert("dev_iops", fmt_opt(d.dev_iops));
    o.m.insert("dev_merge_pct", fmt_opt(d.dev_merge_pct));
    o.m.insert("dev_await_ms", fmt_opt(d.dev_await_ms));
    o.m.insert("dev_aqu_sz", fmt_opt(d.dev_aqu_sz));
    o.m.insert("dev_util_pct", fmt_opt(d.dev_util_pct));
    o.m.insert("ctx_switches_per_s", fmt_opt(d.ctx_switches_per_s));
    o.m.insert("steal_pct", fmt_opt(d.steal_pct));
    o.m.insert("dirty_kb_max", fmt_opt(d.dirty_kb_max));
    o.m.insert("writeback_kb_max", fmt_opt(d.writeback_kb_max));
    o.m.insert("net_rx_softirq_per_s", fmt_opt(d.net_rx_softirq_per_s));
    o.m.insert("block_softirq_per_s", fmt_opt(d.block_softirq_per_s));
    o.m.insert("interrupts_per_s", fmt_opt(d.interrupts_per_s));
    o.m.insert("recorder_write_mbps", fmt_opt(d.srv_write_mbps));
    if let Some(cpu) = d.srv_cpu_s {
        o.m.insert("recorder_cpu_pct", fmt_opt(Some(100.0 * cpu / measure_s)));
        if bytes > 0 && !o.m.contains_key("cpu_s_per_gib") {
            o.m.insert(
                "cpu_s_per_gib",
                fmt_opt(Some(cpu / (bytes as f64 / (1u64 << 30) as f64))),
            );
        }
    }
}

/// Marks a run `rejected` when steal or generator saturation is over its limit.
fn reject_if_noisy(ctx: &Ctx, cell: &Cell, o: &mut Outcome) {
    if o.status != "ok" {
        clear_metrics_keep(o);
        return;
    }
    let get = |k: &str| o.m.get(k).and_then(|v| v.parse::<f64>().ok());
    let thr = get("throughput_mbps")
        .map(|t| format!(" (measured {t:.2} MB/s)"))
        .unwrap_or_default();
    if let Some(s) = get("steal_pct") {
        if s > ctx.exp.steal_limit_pct {
            o.status = "rejected".into();
            o.reason = format!(
                "steal {s:.1}% is over the limit {}%{thr}",
                ctx.exp.steal_limit_pct
            );
        }
    }
    if let Some(g) = get("gen_cpu_pct") {
        // The generator can use one core per thread, up to the machine's cores.
        let ncpu = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        let threads = match (cell.kind(), cell.workload().as_str()) {
            ("iperf3", _) => 1.0,
            (_, "serve") => cell.u64_or("load.concurrency", 8).unwrap_or(8) as f64,
            _ => cell.u64_or("load.threads", 2).unwrap_or(2) as f64,
        };
        let limit = ctx.exp.gen_cpu_limit_pct * threads.min(ncpu).max(1.0);
        // iperf3 is CPU-bound on loopback by nature: its client saturating a core *is* the
        // network limit this anchor measures, so it is never rejected for it.
        if o.status == "ok" && g > limit && cell.kind() != "iperf3" {
            o.status = "rejected".into();
            o.reason = format!(
                "load generator saturated: {g:.0}% of a core is over the limit {limit:.0}%{thr}"
            );
        }
    }
    if o.status != "ok" {
        clear_metrics_keep(o);
    }
}

/// A run that is not `ok` keeps no metrics (docs/results.md), only its diagnostics.
fn clear_metrics_keep(o: &mut Outcome) {
    let keep = ["errors", "error_kinds", "placement", "ring_fdinfo", "load"];
    o.m.retain(|k, _| keep.contains(k));
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// Runs a child to completion while sampling telemetry for it; returns (exit ok, stdout+stderr text).
fn run_sampled(
    ctx: &Ctx,
    mut cmd: Command,
    log_path: &Path,
    extra_pids: &[i32],
) -> Result<(bool, String, Vec<telemetry::Sample>), String> {
    let log =
        std::fs::File::create(log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "cannot start {:?}: {e} (is it installed?)",
            cmd.get_program()
        )
    })?;
    let mut pids = vec![child.id() as i32];
    pids.extend_from_slice(extra_pids);
    let sampler = Sampler::start(
        ctx.target.device.clone(),
        pids,
        Arc::new(AtomicU64::new(0)),
        Duration::from_millis(250),
    );
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st;
        }
        if ctx.stop.load(Relaxed) {
            let _ = crate::util::send_signal(child.id(), "INT");
            std::thread::sleep(Duration::from_millis(500));
            let _ = child.kill();
            break child.wait().map_err(|e| e.to_string())?;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (samples, _) = sampler.finish();
    let text = std::fs::read_to_string(log_path).unwrap_or_default();
    Ok((status.success(), text, samples))
}

fn unsupported_or_failed(text: &str, what: &str) -> Outcome {
    let low = text.to_ascii_lowercase();
    let line = text
        .lines()
        .find(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("not supported")
                || l.contains("unsupported")
                || l.contains("invalid argument")
                || l.contains("error")
        })
        .unwrap_or_else(|| {
            text.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
        })
        .trim()
        .to_string();
    if low.contains("operation not supported")
        || low.contains("not supported")
        || low.contains("unsupported")
    {
        Outcome::bad("unsupported", format!("{what}: {line}"))
    } else {
        Outcome::bad("failed", format!("{what}: {line}"))
    }
}

fn run_fio(ctx: &Ctx, cell: &Cell, run_id: &str) -> Outcome {
    let exp = ctx.exp;
    let dir = ctx.target.path.join(format!("fio-{run_id}"));
    let _ = std::fs::create_dir_all(&dir);
    let log_rel = format!("logs/{run_id}.log");
    let json = ctx.out.join(format!("logs/{run_id}.fio.json"));
    let mut opts: BTreeMap<String, String> = [
        ("name", "anchor"),
        ("rw", "write"),
        ("bs", "1m"),
        ("size", "1g"),
        ("ioengine", "io_uring"),
        ("iodepth", "32"),
        ("direct", "1"),
        ("numjobs", "1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in cell.section("fio") {
        opts.insert(k, v);
    }
    let mut cmd = Command::new("fio");
    // Engine options (hipri, sqthread_poll, fixedbufs, ...) are only known after --ioengine.
    for first in ["name", "ioengine"] {
        if let Some(v) = opts.get(first) {
            cmd.arg(format!("--{first}={v}"));
        }
    }
    for (k, v) in opts
        .iter()
        .filter(|(k, _)| *k != "name" && *k != "ioengine")
    {
        cmd.arg(format!("--{k}={v}"));
    }
    cmd.arg(format!("--directory={}", dir.display()))
        .arg("--time_based")
        .arg("--group_reporting")
        .arg(format!("--runtime={}", exp.measure_s.ceil() as u64))
        .arg(format!("--ramp_time={}", exp.ramp_up_s.ceil() as u64))
        .arg("--output-format=json")
        .arg(format!("--output={}", json.display()));
    let t_start = Instant::now();
    let started = unix_now();
    let res = run_sampled(ctx, cmd, &ctx.out.join(&log_rel), &[]);
    let _ = std::fs::remove_dir_all(&dir);
    let (ok, text, samples) = match res {
        Ok(x) => x,
        Err(e) => return Outcome::bad("failed", e),
    };
    let jtext = std::fs::read_to_string(&json).unwrap_or_default();
    if !ok {
        let mut o = unsupported_or_failed(&format!("{text}\n{jtext}"), "fio");
        o.log = log_rel;
        return o;
    }
    // fio may print warnings before the JSON object.
    let v: serde_json::Value = match jtext
        .find('{')
        .and_then(|i| serde_json::from_str(&jtext[i..]).ok())
    {
        Some(v) => v,
        None => {
            return Outcome {
                log: log_rel,
                ..Outcome::bad("failed", "fio wrote no JSON result")
            }
        }
    };
    let job = &v["jobs"][0];
    if job["error"].as_i64().unwrap_or(0) != 0 {
        let mut o =
            unsupported_or_failed(&format!("{text}\nerror {}", job["error"]), "fio job error");
        if job["error"].as_i64() == Some(95) {
            o.status = "unsupported".into();
        }
        o.log = log_rel;
        return o;
    }
    let bw = job["read"]["bw_bytes"].as_f64().unwrap_or(0.0)
        + job["write"]["bw_bytes"].as_f64().unwrap_or(0.0);
    let iops =
        job["read"]["iops"].as_f64().unwrap_or(0.0) + job["write"]["iops"].as_f64().unwrap_or(0.0);
    let side = if job["write"]["bw_bytes"].as_f64().unwrap_or(0.0)
        >= job["read"]["bw_bytes"].as_f64().unwrap_or(0.0)
    {
        "write"
    } else {
        "read"
    };
    let pct = |p: &str| {
        job[side]["clat_ns"]["percentile"][p]
            .as_f64()
            .map(|ns| ns / 1000.0)
    };
    let mut o = Outcome {
        status: "ok".into(),
        log: log_rel,
        ..Default::default()
    };
    let ws = t_start + Duration::from_secs_f64(exp.ramp_up_s.ceil());
    o.started_at = Some(started + exp.ramp_up_s.ceil());
    o.duration_s = Some(exp.measure_s.ceil());
    o.m.insert("throughput_mbps", fmt_opt(Some(bw / 1e6)));
    o.m.insert("req_p50_us", fmt_opt(pct("50.000000")));
    o.m.insert("req_p99_us", fmt_opt(pct("99.000000")));
    o.m.insert("errors", "0".into());
    let runtime_s = exp.measure_s.ceil();
    let cpu_s = (job["usr_cpu"].as_f64().unwrap_or(0.0) + job["sys_cpu"].as_f64().unwrap_or(0.0))
        / 100.0
        * runtime_s;
    let bytes = bw * runtime_s;
    if bytes > 0.0 {
        o.m.insert(
            "cpu_s_per_gib",
            fmt_opt(Some(cpu_s / (bytes / (1u64 << 30) as f64))),
        );
    }
    let _ = iops;
    let d = telemetry::derive(&samples, ws, ws + Duration::from_secs_f64(runtime_s));
    let _ = telemetry::write_timeseries(
        &ctx.out.join(format!("timeseries/{run_id}.csv")),
        &samples,
        ws,
    );
    fill_derived(&mut o, &d, bytes as u64, runtime_s);
    reject_if_noisy(ctx, cell, &mut o);
    o
}

fn run_iperf3(ctx: &Ctx, cell: &Cell, run_id: &str) -> Outcome {
    let exp = ctx.exp;
    let log_rel = format!("logs/{run_id}.log");
    let port = match free_port() {
        Ok(p) => p.to_string(),
        Err(e) => return Outcome::bad("failed", e),
    };
    let slog = ctx.out.join(format!("logs/{run_id}.server.log"));
    let server = std::fs::File::create(&slog)
        .map_err(|e| e.to_string())
        .and_then(|f| {
            Command::new("iperf3")
                .args(["-s", "-1", "-B", "127.0.0.1", "-p", &port])
                .stdin(Stdio::null())
                .stdout(f.try_clone().map_err(|e| e.to_string())?)
                .stderr(f)
                .spawn()
                .map_err(|e| format!("cannot start iperf3 -s: {e} (is iperf3 installed?)"))
        });
    let mut server = match server {
        Ok(s) => s,
        Err(e) => return Outcome::bad("failed", e),
    };
    std::thread::sleep(Duration::from_millis(400));
    let mut cmd = Command::new("iperf3");
    cmd.args(["-c", "127.0.0.1", "-p", &port, "-J"])
        .arg("-t")
        .arg(format!("{}", exp.measure_s.ceil() as u64))
        .arg("-O")
        .arg(format!("{}", exp.ramp_up_s.ceil() as u64));
    for (k, v) in cell.section("iperf3") {
        match k.as_str() {
            "parallel" => {
                cmd.arg("-P").arg(v);
            }
            "len" => {
                cmd.arg("-l").arg(v);
            }
            "window" => {
                cmd.arg("-w").arg(v);
            }
            "zerocopy" => {
                if v == "true" || v == "1" {
                    cmd.arg("-Z");
                }
            }
            "reverse" => {
                if v == "true" || v == "1" {
                    cmd.arg("-R");
                }
            }
            other => {
                let _ = server.kill();
                let _ = server.wait();
                return Outcome::bad(
                    "failed",
                    format!("iperf3.{other} is not a known iperf3 setting; use parallel, len, window, zerocopy, reverse"),
                );
            }
        }
    }
    let t_start = Instant::now();
    let started = unix_now();
    let res = run_sampled(ctx, cmd, &ctx.out.join(&log_rel), &[server.id() as i32]);
    let _ = server.kill();
    let _ = server.wait();
    let (ok, text, samples) = match res {
        Ok(x) => x,
        Err(e) => return Outcome::bad("failed", e),
    };
    let v: Option<serde_json::Value> = text
        .find('{')
        .and_then(|i| serde_json::from_str(&text[i..]).ok());
    let Some(v) = v.filter(|_| ok) else {
        let mut o = unsupported_or_failed(&text, "iperf3");
        o.log = log_rel;
        return o;
    };
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    let secs = v["end"]["sum_received"]["seconds"]
        .as_f64()
        .unwrap_or(exp.measure_s);
    let mut o = Outcome {
        status: "ok".into(),
        log: log_rel,
        ..Default::default()
    };
    let ws = t_start + Duration::from_secs_f64(exp.ramp_up_s.ceil());
    o.started_at = Some(started + exp.ramp_up_s.ceil());
    o.duration_s = Some(secs);
    o.m.insert("throughput_mbps", fmt_opt(Some(bps / 8.0 / 1e6)));
    o.m.insert("errors", "0".into());
    let bytes = bps / 8.0 * secs;
    let cpu_pct = v["end"]["cpu_utilization_percent"]["remote_total"].as_f64();
    if let Some(c) = cpu_pct {
        if bytes > 0.0 {
            o.m.insert(
                "cpu_s_per_gib",
                fmt_opt(Some(c / 100.0 * secs / (bytes / (1u64 << 30) as f64))),
            );
        }
    }
    let d = telemetry::derive(&samples, ws, ws + Duration::from_secs_f64(secs));
    let _ = telemetry::write_timeseries(
        &ctx.out.join(format!("timeseries/{run_id}.csv")),
        &samples,
        ws,
    );
    fill_derived(&mut o, &d, bytes as u64, secs);
    // The generator here is the iperf3 client, not the harness.
    if let Some(c) = v["end"]["cpu_utilization_percent"]["host_total"].as_f64() {
        o.m.insert("gen_cpu_pct", fmt_opt(Some(c)));
    }
    reject_if_noisy(ctx, cell, &mut o);
    o
}

fn run_nginx(ctx: &Ctx, cell: &Cell, run_id: &str, run_seed: u64) -> Outcome {
    let exp = ctx.exp;
    let log_rel = format!("logs/{run_id}.log");
    let files = match cell.u64_or("nginx.files", 16) {
        Ok(v) => v.max(1),
        Err(e) => return Outcome::bad("failed", e),
    };
    let size = match engine::config::parse_bytes(
        cell.get("nginx.file-size")
            .or(cell.get("load.file-size"))
            .unwrap_or("8m"),
    ) {
        Ok(v) => v,
        Err(e) => return Outcome::bad("failed", format!("nginx.file-size: {e}")),
    };
    let sendfile = cell.str_or("nginx.sendfile", "on").to_string();
    let workers = cell.str_or("nginx.workers", "1").to_string();
    let root = ctx.target.path.join(format!("nginx-{}", cell.id));
    let mdir = root.join("matches");
    if let Err(e) = std::fs::create_dir_all(&mdir) {
        return Outcome::bad("failed", format!("{}: {e}", mdir.display()));
    }
    let ids: Vec<String> = (0..files).map(|i| format!("n{i:05}")).collect();
    let gen =
        crate::util::PayloadGen::new(SizeDist::Fixed(size), SizeDist::Fixed(size), 1, size.max(1));
    let mut buf = Vec::new();
    for id in &ids {
        let p = mdir.join(id);
        if std::fs::metadata(&p)
            .map(|m| m.len() == size)
            .unwrap_or(false)
        {
            continue;
        }
        gen.payload(crate::util::fnv1a(id.as_bytes()), 1, &mut buf);
        if let Err(e) = std::fs::write(&p, &buf) {
            return Outcome::bad("failed", format!("{}: {e}", p.display()));
        }
    }
    let port = match free_port() {
        Ok(p) => p,
        Err(e) => return Outcome::bad("failed", e),
    };
    let ndir = ctx.out.join(format!("nginx-{run_id}"));
    let _ = std::fs::create_dir_all(ndir.join("tmp"));
    let conf = format!(
        "user root;\nworker_processes {workers};\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  sendfile {sendfile};\n  tcp_nopush on;\n  keepalive_requests 1000000;\n  default_type application/octet-stream;\n\
         \x20 client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
         \x20 server {{\n    listen 127.0.0.1:{port};\n    root {root};\n    location /matches/ {{ }}\n  }}\n}}\n",
        d = ndir.display(),
        root = root.display(),
    );
    let conf_path = ndir.join("nginx.conf");
    if let Err(e) = std::fs::write(&conf_path, conf) {
        return Outcome::bad("failed", e.to_string());
    }
    let log_path = ctx.out.join(&log_rel);
    let mut child = match std::fs::File::create(&log_path)
        .map_err(|e| e.to_string())
        .and_then(|f| {
            Command::new("nginx")
                .arg("-p")
                .arg(&ndir)
                .arg("-c")
                .arg(&conf_path)
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(f.try_clone().map_err(|e| e.to_string())?)
                .stderr(f)
                .spawn()
                .map_err(|e| format!("cannot start nginx: {e} (is nginx installed?)"))
        }) {
        Ok(c) => c,
        Err(e) => return Outcome::bad("failed", e),
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("valid addr");
    let t0 = Instant::now();
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        if let Ok(Some(st)) = child.try_wait() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Outcome {
                log: log_rel,
                ..Outcome::bad(
                    "failed",
                    format!("nginx exited ({st}): {}", one_line(&text)),
                )
            };
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            return Outcome {
                log: log_rel,
                ..Outcome::bad("failed", "nginx did not listen within 10 s")
            };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut pids = vec![child.id() as i32];
    pids.extend(children_of(child.id() as i32));
    let ccfg = match clients_config_for(cell, exp, addr, ids, run_seed) {
        Ok(c) => c,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Outcome::bad("failed", e);
        }
    };
    let progress = Arc::new(AtomicU64::new(0));
    let sampler = Sampler::start(
        ctx.target.device.clone(),
        pids,
        progress.clone(),
        Duration::from_millis(250),
    );
    let mut o = Outcome {
        status: "ok".into(),
        log: log_rel.clone(),
        ..Default::default()
    };
    let res = run_clients(&ccfg, &progress, ctx, &mut o);
    let (samples, _) = sampler.finish();
    let _ = crate::util::send_signal(child.id(), "QUIT");
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&ndir);
    match res {
        Err(e) => Outcome {
            log: log_rel,
            ..Outcome::bad("failed", e)
        },
        Ok((ws, measure_s, bytes)) => {
            let d = telemetry::derive(&samples, ws, ws + Duration::from_secs_f64(measure_s));
            let _ = telemetry::write_timeseries(
                &ctx.out.join(format!("timeseries/{run_id}.csv")),
                &samples,
                ws,
            );
            fill_derived(&mut o, &d, bytes, measure_s);
            if o.reason.starts_with("content verification failed") {
                o.status = "failed".into();
            }
            reject_if_noisy(ctx, cell, &mut o);
            o
        }
    }
}

fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect()
}

/// One run of one cell: block settings applied and always restored around it.
pub fn run_cell(ctx: &Ctx, cell: &Cell, run_id: &str, bin: &Path, run_seed: u64) -> Outcome {
    let blk = cell.section("block");
    if !blk.is_empty() {
        let Some(dev) = ctx.target.device.clone() else {
            return Outcome::bad(
                "unsupported",
                "block.* settings need a target on a block device; none found for the target path",
            );
        };
        if ctx.target.kind == "dir" && !ctx.exp.target.allow_block_changes {
            return Outcome::bad(
                "unsupported",
                format!("block.* settings on a dir target would change {dev} (the root disk); use target kind = \"loop\", or set allow_block_changes = true"),
            );
        }
        if let Err(e) = block::apply(ctx.journal, &dev, &blk) {
            let problems = ctx.journal.restore_sysfs();
            let mut o = Outcome::bad("unsupported", format!("{dev} refused it: {e}"));
            if !problems.is_empty() {
                o.reason
                    .push_str(&format!("; restore problems: {}", problems.join("; ")));
            }
            return o;
        }
    }
    // A panic inside a run must not leave the block layer changed: catch it, restore, record.
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match cell.kind() {
        "recorder" => run_recorder(ctx, cell, run_id, bin, run_seed),
        "fio" => run_fio(ctx, cell, run_id),
        "iperf3" => run_iperf3(ctx, cell, run_id),
        "nginx" => run_nginx(ctx, cell, run_id, run_seed),
        k => Outcome::bad("failed", format!("unknown kind {k}")),
    }));
    let problems = ctx.journal.restore_sysfs();
    let mut o = res.unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Outcome::bad("failed", format!("harness panicked during the run: {msg}"))
    });
    if !problems.is_empty() {
        o.reason = one_line(&format!(
            "{}{}block restore problems: {}",
            o.reason,
            if o.reason.is_empty() { "" } else { "; " },
            problems.join("; ")
        ));
    }
    if ctx.stop.load(Relaxed) && o.status == "ok" {
        o.status = "failed".into();
        o.reason = "interrupted (SIGINT/SIGTERM) during the run".into();
        clear_metrics_keep(&mut o);
    }
    o
}

fn row_for(
    exp: &Experiment,
    cell: &Cell,
    run_id: &str,
    rep: u32,
    pair: Option<u32>,
    revision: &str,
    o: &Outcome,
) -> BTreeMap<String, String> {
    let mut r = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        r.insert(k.to_string(), v);
    };
    put("run_id", run_id.into());
    put("cell_id", cell.id.clone());
    put("rep", rep.to_string());
    put("pair", pair.map(|p| p.to_string()).unwrap_or_default());
    put("revision", revision.into());
    put("kind", cell.kind().into());
    put("workload", cell.workload());
    put("status", o.status.clone());
    put("reason", o.reason.clone());
    put(
        "started_at",
        o.started_at
            .filter(|_| o.status == "ok")
            .map(|t| format!("{t:.3}"))
            .unwrap_or_default(),
    );
    put(
        "duration_s",
        o.duration_s
            .filter(|_| o.status == "ok")
            .map(|t| format!("{t:.3}"))
            .unwrap_or_default(),
    );
    put("dims", cell.label(&exp.dims));
    for d in &exp.dims {
        put(&format!("dim.{d}"), cell.get(d).unwrap_or("").to_string());
    }
    put("requested_flags", o.requested_flags.clone());
    put("effective_flags", o.effective_flags.clone());
    for (k, v) in &o.m {
        put(k, v.clone());
    }
    put("log", o.log.clone());
    r
}

/// System facts for the manifest.
fn system_facts() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_string();
    let mem = procfs::Meminfo::current_mem_total_kb();
    serde_json::json!({
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpu_model": model,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "mem_total_kb": mem,
    })
}

trait MemKb {
    fn current_mem_total_kb() -> u64;
}
impl MemKb for procfs::Meminfo {
    fn current_mem_total_kb() -> u64 {
        use procfs::Current;
        procfs::Meminfo::current()
            .map(|m| m.mem_total / 1024)
            .unwrap_or(0)
    }
}

pub fn git_rev(dir: &Path, rev: &str) -> String {
    run_cmd("git", &["-C", &dir.to_string_lossy(), "rev-parse", rev])
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn write_manifest(
    dir: &Path,
    ctx: &Ctx,
    cmdline: &str,
    started: &str,
    finished: Option<&str>,
    revisions: Option<&BTreeMap<String, String>>,
    queue_before: &[(String, String)],
) -> Result<(), String> {
    let exp = ctx.exp;
    let facts = system_facts();
    let repo = std::env::current_dir().unwrap_or_default();
    let mut m = serde_json::json!({
        "schema": 1,
        "git_rev": git_rev(&repo, "HEAD"),
        "command_line": cmdline,
        "started_at": started,
        "finished_at": finished,
        "kernel": facts["kernel"],
        "cpu_model": facts["cpu_model"],
        "cores": facts["cores"],
        "mem_total_kb": facts["mem_total_kb"],
        "hwloc_topology": ctx.topo.summary,
        "target": ctx.target.to_json(queue_before),
        "experiment_file": exp.path.display().to_string(),
        "experiment": exp.text,
        "dimensions": exp.dims,
        "experiment_name": exp.name,
        "cells": exp.cells.len(),
        "excluded_cells": exp.excluded,
        "repeat": {"min": exp.repeat.min, "max": exp.repeat.max, "rsd_pct": exp.repeat.rsd_pct},
        "ramp_up_s": exp.ramp_up_s,
        "measure_s": exp.measure_s,
        "restore_journal": ctx.journal.path().display().to_string(),
    });
    if let Some(r) = revisions {
        m["revisions"] = serde_json::to_value(r).map_err(|e| e.to_string())?;
        if let Some(h) = r.get(dir.file_name().and_then(|s| s.to_str()).unwrap_or("")) {
            m["git_rev"] = serde_json::Value::String(h.clone());
        }
    }
    let tmp = dir.join("manifest.json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_string_pretty(&m).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join("manifest.json")).map_err(|e| e.to_string())
}

/// Builds `rev` in a temporary git worktree; returns the recorder binary.
fn build_base(out: &Path, rev: &str) -> Result<(PathBuf, String), String> {
    let repo = std::env::current_dir().map_err(|e| e.to_string())?;
    let sha = git_rev(&repo, rev);
    if sha.is_empty() {
        return Err(format!(
            "--ab {rev}: not a revision of the repository in {}",
            repo.display()
        ));
    }
    let wt = out.join(".ab-base");
    if !wt.join("Cargo.toml").exists() {
        run_cmd(
            "git",
            &[
                "-C",
                &repo.to_string_lossy(),
                "worktree",
                "add",
                "--detach",
                &wt.to_string_lossy(),
                &sha,
            ],
        )
        .map_err(|e| format!("--ab: cannot create a worktree for {rev}: {e}"))?;
    }
    // A target dir of its own (so head's target/release/recorder is never overwritten) that
    // persists across A/B sweeps, so only the engine itself is rebuilt next time.
    let top = run_cmd(
        "git",
        &[
            "-C",
            &repo.to_string_lossy(),
            "rev-parse",
            "--show-toplevel",
        ],
    )
    .map(|s| PathBuf::from(s.trim()))
    .unwrap_or(repo.clone());
    let tdir = top.join("target/ab-base");
    eprintln!(
        "harness: building base revision {sha} in {} (cargo build --release -p engine, target dir {})",
        wt.display(),
        tdir.display()
    );
    let st = Command::new("cargo")
        .args(["build", "--release", "-p", "engine", "--bin", "recorder"])
        .env("CARGO_TARGET_DIR", &tdir)
        .current_dir(&wt)
        .status()
        .map_err(|e| format!("--ab: cannot run cargo: {e}"))?;
    if !st.success() {
        return Err(format!("--ab: building {rev} failed ({st})"));
    }
    let built = tdir.join("release/recorder");
    let bin = out.join("recorder-base");
    std::fs::copy(&built, &bin)
        .map_err(|e| format!("--ab: {} was not built ({e})", built.display()))?;
    Ok((bin, sha))
}

fn remove_base_worktree(out: &Path) {
    let wt = out.join(".ab-base");
    if wt.exists() {
        let repo = std::env::current_dir().unwrap_or_default();
        let _ = run_cmd(
            "git",
            &[
                "-C",
                &repo.to_string_lossy(),
                "worktree",
                "remove",
                "--force",
                &wt.to_string_lossy(),
            ],
        );
    }
}

pub fn default_recorder() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .map(|p| p.join("recorder"))
        .unwrap_or_else(|| PathBuf::from("recorder"))
}

/// The whole sweep. Returns the exit code.
pub fn sweep(opts: SweepOpts, stop: Arc<AtomicBool>) -> Result<i32, String> {
    for msg in block::recover_stale() {
        eprintln!("harness: {msg}");
    }
    let exp = Experiment::load(&opts.experiment)?;
    let out = opts.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "results/{}-{}",
            exp.name,
            rfc3339_now().replace([':', '-'], "")
        ))
    });
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let out = out.canonicalize().map_err(|e| e.to_string())?;
    let journal = Journal::open()?;
    let mut target = Target::setup(&exp.target, &out, &journal)?;
    let queue_before = target
        .device
        .as_deref()
        .map(block::all_settings)
        .unwrap_or_default();
    let topo = placement::Topo::discover();
    let ctx = Ctx {
        exp: &exp,
        out: out.clone(),
        target: target.clone(),
        journal: &journal,
        stop: stop.clone(),
        topo,
    };
    let result = sweep_inner(&ctx, &opts, &queue_before);
    let problems = journal.restore_sysfs();
    for p in &problems {
        eprintln!("harness: restore: {p}");
    }
    if let Err(e) = target.teardown(&journal) {
        eprintln!("harness: target teardown: {e}");
    }
    if opts.ab.is_some() {
        remove_base_worktree(&out);
    }
    drop(journal);
    result.map(|c| if stop.load(Relaxed) { 130 } else { c })
}

fn sweep_inner(
    ctx: &Ctx,
    opts: &SweepOpts,
    queue_before: &[(String, String)],
) -> Result<i32, String> {
    let exp = ctx.exp;
    let stop = &ctx.stop;
    let started = rfc3339_now();
    // Revisions: plain sweep = one "head" dir (the out dir itself); A/B = base/ and head/.
    let head_bin = opts.recorder.clone().unwrap_or_else(default_recorder);
    let needs_recorder = exp.cells.iter().any(|c| c.kind() == "recorder");
    if needs_recorder && !head_bin.exists() {
        return Err(format!(
            "recorder binary {} not found; build it (cargo build --release -p engine) or pass --recorder PATH",
            head_bin.display()
        ));
    }
    let mut revs: Vec<(String, PathBuf, PathBuf)> = Vec::new(); // label, dir, binary
    let mut revisions = None;
    if let Some(bbin) = &opts.base_recorder {
        if !bbin.exists() {
            return Err(format!("--base-recorder {}: no such file", bbin.display()));
        }
        let repo = std::env::current_dir().unwrap_or_default();
        let mut r = BTreeMap::new();
        r.insert("base".to_string(), format!("binary {}", bbin.display()));
        r.insert(
            "head".to_string(),
            format!("{} ({})", git_rev(&repo, "HEAD"), head_bin.display()),
        );
        revisions = Some(r);
        revs.push(("base".into(), ctx.out.join("base"), bbin.clone()));
        revs.push(("head".into(), ctx.out.join("head"), head_bin.clone()));
    } else if let Some(base) = &opts.ab {
        let (bbin, bsha) = build_base(&ctx.out, base)?;
        let repo = std::env::current_dir().unwrap_or_default();
        let mut r = BTreeMap::new();
        r.insert("base".to_string(), bsha);
        r.insert("head".to_string(), git_rev(&repo, "HEAD"));
        revisions = Some(r);
        revs.push(("base".into(), ctx.out.join("base"), bbin));
        revs.push(("head".into(), ctx.out.join("head"), head_bin.clone()));
    } else {
        revs.push(("head".into(), ctx.out.clone(), head_bin.clone()));
    }
    let mut csvs = Vec::new();
    for (_, dir, _) in &revs {
        for sub in ["logs", "timeseries"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        // Timeseries and logs are written under ctx.out; for A/B they go to the revision dir.
        csvs.push(RunsCsv::open(dir, &exp.dims, opts.resume)?);
        write_manifest(
            dir,
            ctx,
            &opts.command_line,
            &started,
            None,
            revisions.as_ref(),
            queue_before,
        )?;
    }
    let ab = opts.ab.is_some() || opts.base_recorder.is_some();
    let mut rng = rand::rngs::StdRng::seed_from_u64(exp.seed ^ 0xA5A5);
    // Per cell: throughputs of ok runs (head, or head/base ratio for A/B) and reps done.
    let mut values: HashMap<String, Vec<f64>> = HashMap::new();
    let mut reps_done: HashMap<String, u32> = HashMap::new();
    let mut once: HashSet<String> = HashSet::new(); // unsupported cells are not repeated
    for c in &exp.cells {
        let mut r = 0;
        while csvs
            .iter()
            .all(|csv| csv.done.contains_key(&(c.id.clone(), r + 1)))
        {
            r += 1;
            let h = csvs
                .last()
                .expect("head")
                .done
                .get(&(c.id.clone(), r))
                .cloned();
            if let Some((st, thr)) = h {
                if st == "unsupported" {
                    once.insert(c.id.clone());
                }
                if st == "ok" {
                    if let Some(t) = thr {
                        let v = if ab {
                            csvs[0]
                                .done
                                .get(&(c.id.clone(), r))
                                .and_then(|b| b.1)
                                .map(|b| t / b)
                        } else {
                            Some(t)
                        };
                        if let Some(v) = v {
                            values.entry(c.id.clone()).or_default().push(v);
                        }
                    }
                }
            }
        }
        reps_done.insert(c.id.clone(), r);
    }
    let est_runs: u64 = exp
        .cells
        .iter()
        .map(|c| exp.repeat.min.saturating_sub(reps_done[&c.id]) as u64)
        .sum::<u64>()
        * revs.len() as u64;
    let per_run_s = exp.ramp_up_s + exp.measure_s + 3.0;
    let pb = indicatif::ProgressBar::new(est_runs);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} runs, ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let tty = std::io::stderr().is_terminal();
    eprintln!(
        "harness: sweep {}: {} cells ({} excluded), {}..{} repetitions, ~{:.0} s per run, results in {}",
        exp.name,
        exp.cells.len(),
        exp.excluded,
        exp.repeat.min,
        exp.repeat.max,
        per_run_s,
        ctx.out.display()
    );
    let mut any_failed = false;
    let mut round = 0u32;
    loop {
        round += 1;
        // Which cells run in this round.
        let mut todo: Vec<&Cell> = exp
            .cells
            .iter()
            .filter(|c| {
                let done = reps_done[&c.id];
                if once.contains(&c.id) || done >= exp.repeat.max {
                    return false;
                }
                if done < exp.repeat.min {
                    return true;
                }
                let v = values.get(&c.id).map(Vec::as_slice).unwrap_or(&[]);
                let (_, _, rsd) = mean_sd(v);
                v.len() >= 2 && rsd > exp.repeat.rsd_pct
            })
            .collect();
        if todo.is_empty() || stop.load(Relaxed) {
            break;
        }
        if round > exp.repeat.max + 1 {
            break;
        }
        if exp.random_order {
            todo.shuffle(&mut rng);
        }
        if reps_done.values().all(|r| *r >= exp.repeat.min) {
            pb.inc_length(todo.len() as u64 * revs.len() as u64);
        }
        for cell in todo {
            if stop.load(Relaxed) {
                break;
            }
            let rep = reps_done[&cell.id] + 1;
            let mut order: Vec<usize> = (0..revs.len()).collect();
            if exp.random_order {
                order.shuffle(&mut rng);
            }
            let mut thr: HashMap<usize, Option<f64>> = HashMap::new();
            let mut statuses = Vec::new();
            for ri in order {
                if stop.load(Relaxed) {
                    break;
                }
                let (label, dir, bin) = &revs[ri];
                let run_id = format!("{}-r{rep}", cell.id);
                pb.set_message(format!(
                    "{}{} {}",
                    if ab {
                        format!("{label} ")
                    } else {
                        String::new()
                    },
                    run_id,
                    cell.short_label(&exp.dims)
                ));
                let rctx = Ctx {
                    exp,
                    out: dir.clone(),
                    target: ctx.target.clone(),
                    journal: ctx.journal,
                    stop: ctx.stop.clone(),
                    topo: ctx.topo.clone(),
                };
                let seed = exp.seed.wrapping_mul(1_000_003).wrapping_add(rep as u64);
                let o = run_cell(&rctx, cell, &run_id, bin, seed);
                let row = row_for(
                    exp,
                    cell,
                    &run_id,
                    rep,
                    if ab { Some(rep) } else { None },
                    label,
                    &o,
                );
                csvs[ri].append(&row)?;
                let line = format!(
                    "{}{run_id} {} -> {}{}{}",
                    if ab {
                        format!("[{label}] ")
                    } else {
                        String::new()
                    },
                    cell.short_label(&exp.dims),
                    o.status,
                    o.throughput()
                        .map(|t| format!(" {t:.2} MB/s"))
                        .unwrap_or_default(),
                    if o.reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", o.reason)
                    }
                );
                if tty {
                    pb.println(line);
                } else {
                    eprintln!("harness: {line}");
                }
                pb.inc(1);
                if o.status == "failed" {
                    any_failed = true;
                }
                if o.status == "unsupported" {
                    once.insert(cell.id.clone());
                }
                thr.insert(
                    ri,
                    if o.status == "ok" {
                        o.throughput()
                    } else {
                        None
                    },
                );
                statuses.push(o.status.clone());
            }
            if stop.load(Relaxed) && statuses.len() < revs.len() {
                break;
            }
            *reps_done.get_mut(&cell.id).expect("every cell") = rep;
            let v = if ab {
                match (
                    thr.get(&0).copied().flatten(),
                    thr.get(&1).copied().flatten(),
                ) {
                    (Some(b), Some(h)) if b > 0.0 => Some(h / b),
                    _ => None,
                }
            } else {
                thr.get(&0).copied().flatten()
            };
            if let Some(v) = v {
                values.entry(cell.id.clone()).or_default().push(v);
            }
        }
    }
    pb.finish_and_clear();
    let finished = rfc3339_now();
    for (_, dir, _) in &revs {
        write_manifest(
            dir,
            ctx,
            &opts.command_line,
            &started,
            Some(&finished),
            revisions.as_ref(),
            queue_before,
        )?;
    }
    if stop.load(Relaxed) {
        eprintln!("harness: interrupted; the block layer is restored and runs.csv keeps every finished run (use --resume)");
    }
    eprintln!("harness: sweep done: results in {}", ctx.out.display());
    if any_failed {
        eprintln!("harness: some runs failed; their rows say why and their logs are kept");
    }
    Ok(if any_failed && opts.fail_on_failed {
        3
    } else {
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_is_told_from_failed() {
        let o = classify_exit(
            "starting\nrecorder: ring.iopoll: IOPOLL unsupported on vda (no poll queues)\n",
            "exit status: 3",
        );
        assert_eq!(o.status, "unsupported");
        assert!(o.reason.contains("IOPOLL"));
        let o = classify_exit("thread main panicked at x.rs\n", "signal: 6");
        assert_eq!(o.status, "failed");
        assert!(o.reason.contains("panicked"), "{}", o.reason);
    }

    #[test]
    fn flags_are_read_from_the_log() {
        let log = "ring: requested IORING_SETUP_SQPOLL|IORING_SETUP_SQ_AFF\nring: effective flags IORING_SETUP_SQPOLL\n";
        assert_eq!(
            flags_from_log(log, "requested"),
            "IORING_SETUP_SQPOLL|IORING_SETUP_SQ_AFF"
        );
        assert_eq!(flags_from_log(log, "effective"), "IORING_SETUP_SQPOLL");
        let log = "uring worker 0: ring flags IORING_SETUP_SQPOLL|IORING_SETUP_SUBMIT_ALL (asked IORING_SETUP_SQPOLL|IORING_SETUP_SUBMIT_ALL), sq 256 cq 512\n";
        assert_eq!(
            flags_from_log(log, "effective"),
            "IORING_SETUP_SQPOLL|IORING_SETUP_SUBMIT_ALL"
        );
        assert_eq!(
            flags_from_log(log, "requested"),
            "IORING_SETUP_SQPOLL|IORING_SETUP_SUBMIT_ALL"
        );
        assert_eq!(
            flags_from_log(
                "uring worker 1: ring flags none (asked none), sq 256\n",
                "effective"
            ),
            ""
        );
    }

    #[test]
    fn header_has_documented_columns_in_order() {
        let h = header(&["server.backend".to_string()]);
        assert_eq!(
            h[..12],
            HEAD_COLS.iter().map(|s| s.to_string()).collect::<Vec<_>>()[..]
        );
        assert_eq!(h[12], "dim.server.backend");
        assert_eq!(h[13], "requested_flags");
        let log_at = h.iter().position(|c| c == "log").unwrap();
        assert_eq!(h[log_at - 1], "errors");
    }
}

//! The load of each recorder workload: DS generators (ingest, bulk-ingest) and replay
//! downloaders (serve), configured from the cell's `load.*` keys, and the columns they fill.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::outcome::one_line;
use super::recorder_proc::Recorder;
use super::{Ctx, Outcome};
use crate::experiment::{Cell, Experiment};
use crate::telemetry::Sampler;
use crate::util::{fmt_opt, unix_now, SizeDist};
use crate::{clients, ds};
use results_schema::col;

pub(crate) fn ds_config_for(
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
pub(crate) fn drive_recorder(
    ctx: &Ctx,
    cell: &Cell,
    rec: &Recorder,
    run_seed: u64,
    progress: &Arc<AtomicU64>,
    sampler: &Sampler,
    o: &mut Outcome,
) -> Result<(Instant, f64, u64), String> {
    let exp = ctx.exp;
    match cell.workload().as_str() {
        "ingest" | "bulk-ingest" => {
            let (ws, rep) = run_ingest(ctx, cell, rec, run_seed, progress, sampler, o)?;
            Ok((ws, rep.measure_s, rep.payload_bytes_acked_window))
        }
        "serve" => {
            let ids = prefill(ctx, cell, rec, run_seed)?
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            let ccfg = clients_config_for(cell, exp, rec.http, ids, run_seed)?;
            run_clients(&ccfg, progress, ctx, o)
        }
        w => Err(format!(
            "workload {w} does not apply to the recorder; use ingest, bulk-ingest, serve, wrk-serve or tier"
        )),
    }
}

/// The prefill of the serving workloads (`serve`, `wrk-serve`): `load.prefill-matches`
/// matches ingested for `load.prefill-s` seconds and sealed. Returns each sealed match's
/// id and replay length.
pub(crate) fn prefill(
    ctx: &Ctx,
    cell: &Cell,
    rec: &Recorder,
    run_seed: u64,
) -> Result<Vec<(String, u64)>, String> {
    let mut pre = ds_config_for(cell, ctx.exp, rec.ingest, run_seed)?;
    pre.matches = cell.u64_or("load.prefill-matches", 16)? as usize;
    pre.ramp_up_s = 0.2;
    pre.measure_s = cell.f64_or("load.prefill-s", 3.0)?;
    let prep = ds::run(&pre, Arc::new(ds::DsCounters::default()), ctx.stop.clone())?;
    let sealed: Vec<(String, u64)> = prep
        .matches
        .iter()
        .filter(|m| m.acked_seq > 0)
        .filter_map(|m| m.sealed.map(|(_, len)| (m.id.clone(), len)))
        .collect();
    if sealed.is_empty() {
        return Err(format!(
            "prefill sealed no match ({})",
            prep.summary().replace('\n', " ")
        ));
    }
    Ok(sealed)
}

/// The ingest load on `rec` with the measured window aligned to the sampler and acked
/// bytes forwarded to `progress` (`ingest`, `bulk-ingest`, and the `tier` workload's
/// ingest phase); fills the ingest columns. Returns the window start and the report.
pub(crate) fn run_ingest(
    ctx: &Ctx,
    cell: &Cell,
    rec: &Recorder,
    run_seed: u64,
    progress: &Arc<AtomicU64>,
    sampler: &Sampler,
    o: &mut Outcome,
) -> Result<(Instant, ds::DsReport), String> {
    let exp = ctx.exp;
    let cfg = ds_config_for(cell, exp, rec.ingest, run_seed)?;
    let ctr = Arc::new(ds::DsCounters::default());
    // Forward acked bytes to the sampler's progress counter (every 2 ms: the
    // CPU per GiB divides the recorder's CPU between two samples by the bytes
    // acked between them).
    let fwd_stop = Arc::new(AtomicBool::new(false));
    let fwd = {
        let (ctr, p, s) = (ctr.clone(), progress.clone(), fwd_stop.clone());
        std::thread::spawn(move || {
            while !s.load(Relaxed) {
                p.store(ctr.payload_bytes_acked.load(Relaxed), Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
            p.store(ctr.payload_bytes_acked.load(Relaxed), Relaxed);
        })
    };
    let ws = Instant::now() + Duration::from_millis(20) + Duration::from_secs_f64(cfg.ramp_up_s);
    let started = unix_now() + 0.02 + cfg.ramp_up_s;
    sampler.align_to(ws);
    let rep = ds::run(&cfg, ctr, ctx.stop.clone());
    fwd_stop.store(true, Relaxed);
    let _ = fwd.join();
    let rep = rep?;
    o.started_at = Some(started);
    o.duration_s = Some(rep.measure_s);
    fill_ingest(o, &cfg, &rep);
    Ok((ws, rep))
}

/// The ingest columns of a DS run (`ingest`, `bulk-ingest`, and the `tier` workload's
/// ingest phase).
pub(crate) fn fill_ingest(o: &mut Outcome, cfg: &ds::DsConfig, rep: &ds::DsReport) {
    o.m.insert(col::THROUGHPUT, fmt_opt(Some(rep.throughput_mb_per_s())));
    o.m.insert(col::FRAMES_PER_S, fmt_opt(Some(rep.frames_per_s())));
    o.m.insert(col::ACK_P50_US, fmt_opt(rep.ack_pct(50.0)));
    o.m.insert(col::ACK_P90_US, fmt_opt(rep.ack_pct(90.0)));
    o.m.insert(col::ACK_P99_US, fmt_opt(rep.ack_pct(99.0)));
    o.m.insert(col::ACK_P999_US, fmt_opt(rep.ack_pct(99.9)));
    o.m.insert(col::ACK_MAX_US, fmt_opt(rep.ack_pct(100.0)));
    o.m.insert(col::GEN_CPU_PCT, fmt_opt(rep.gen_cpu_pct));
    o.m.insert(col::LOAD, cfg.describe());
    o.m.insert(
        col::INFLIGHT_MAX_FRAMES,
        rep.max_inflight_frames().to_string(),
    );
    o.m.insert(
        col::INFLIGHT_MAX_BYTES,
        rep.max_inflight_bytes().to_string(),
    );
    // Late frames and the offered load only exist when paced; empty (not 0) for
    // closed-loop runs.
    if !cfg.unpaced() {
        o.m.insert(col::SENT_MB_PER_S, fmt_opt(Some(rep.sent_mb_per_s())));
        o.m.insert(col::LATE_FRAMES, rep.late_frames.to_string());
    }
    o.m.insert(col::ERRORS, rep.errors_total().to_string());
    o.m.insert(
        "error_kinds",
        rep.errors
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";"),
    );
}

pub(crate) fn clients_config_for(
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

pub(crate) fn run_clients(
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
    o.m.insert(col::THROUGHPUT, fmt_opt(Some(rep.throughput_mb_per_s())));
    o.m.insert(
        "req_p50_us",
        fmt_opt(clients::ClientsReport::pct(&rep.req_us, 50.0)),
    );
    o.m.insert(
        "req_p99_us",
        fmt_opt(clients::ClientsReport::pct(&rep.req_us, 99.0)),
    );
    o.m.insert(col::GEN_CPU_PCT, fmt_opt(rep.gen_cpu_pct));
    o.m.insert(col::ERRORS, rep.errors_total().to_string());
    let mut kinds: Vec<String> = rep.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !rep.verify_failures.is_empty() {
        kinds.push(format!("VERIFY={}", rep.verify_failures.len()));
        o.reason = one_line(&format!(
            "content verification failed: {}",
            rep.verify_failures[0]
        ));
    }
    o.m.insert(col::ERROR_KINDS, kinds.join(";"));
    Ok((ws, rep.measure_s, rep.bytes))
}

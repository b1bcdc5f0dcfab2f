//! One run of a recorder cell: store, placement, recorder process, telemetry, load, and
//! the derived columns.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::engine_args::cell_engine_args;
use super::load::drive_recorder;
use super::outcome::{fill_derived, reject_if_noisy};
use super::recorder_proc::{
    classify_exit, flags_from_log, journal_columns, options_in_effect, recorder_metrics,
    spawn_recorder, uring_counters, vmhwm_kb, ExitPhase,
};
use super::{Ctx, Outcome};
use crate::experiment::Cell;
use crate::placement;
use crate::telemetry::{self, Sampler};
use crate::util::fmt_opt;
use results_schema::col;

/// Runs one recorder cell once.
pub(crate) fn run_recorder(
    ctx: &Ctx,
    cell: &Cell,
    run_id: &str,
    bin: &Path,
    run_seed: u64,
) -> Outcome {
    let (mut args, requested, cfg) = match cell_engine_args(cell) {
        Ok(a) => (a.args, a.requested_flags, a.config),
        // Checked before the sweep started (crate::validate); kept as a run error.
        Err(e) => return Outcome::bad("failed", e),
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
    args.extend(ctx.extra_args.iter().cloned());
    // The tier workload: a SeaweedFS for the run, and node A pointed at it.
    let tier_env = match cell.workload() == "tier" {
        true => match super::tier::prepare(ctx, cell, run_id) {
            Ok(t) => Some(t),
            Err(o) => return o,
        },
        false => None,
    };
    let mut args_a = args.clone();
    if let Some(t) = &tier_env {
        args_a.extend(t.args.iter().cloned());
    }
    let mut o = match spawn_recorder(
        bin,
        &store,
        &args_a,
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
            o.m.insert(col::PLACEMENT, pl.describe());
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
            let metrics0 = recorder_metrics(rec.http).map(|m| (Instant::now(), m));
            let res = match &tier_env {
                Some(t) => super::tier::drive(
                    ctx, cell, &rec, t, bin, &args, run_id, run_seed, &progress, &sampler, &mut o,
                ),
                None if cell.workload() == super::wrk::WORKLOAD => super::wrk::drive_recorder(
                    ctx, cell, run_id, &rec, run_seed, &progress, &sampler, &mut o,
                ),
                None => drive_recorder(ctx, cell, &rec, run_seed, &progress, &sampler, &mut o),
            };
            // journal flushes, group size, write amplification over the run (ramp-up too)
            if let (Some((t0, m0)), Some(m1)) = (&metrics0, recorder_metrics(rec.http)) {
                for (k, v) in journal_columns(m0, &m1, t0.elapsed().as_secs_f64()) {
                    o.m.insert(k, fmt_opt(Some(v)));
                }
            }
            // I/Os per system call over the whole run (ramp-up included), from the
            // recorder's own counters; empty when it made no io_uring_enter call (blocking).
            if let (Some((e0, c0)), Some((e1, c1))) = (uring0, uring_counters(rec.http)) {
                if e1 > e0 {
                    o.m.insert(
                        "ios_per_syscall",
                        fmt_opt(Some((c1 - c0) as f64 / (e1 - e0) as f64)),
                    );
                    if let Some((t0, _)) = &metrics0 {
                        o.m.insert(
                            col::URING_COMPLETIONS_PER_S,
                            fmt_opt(Some((c1 - c0) as f64 / t0.elapsed().as_secs_f64())),
                        );
                    }
                }
            }
            let (samples, fdinfo) = sampler.finish();
            let _ = placement::bind_self(&ctx.topo, None);
            o.m.insert(col::RSS_KB, fmt_opt(vmhwm_kb(rec.child.id())));
            o.m.insert(col::RING_FDINFO, fdinfo);
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
            o.options = options_in_effect(&text, &cfg);
            // A run whose configuration the recorder did not apply as asked is not that
            // cell: recorded unsupported with the difference, never with its figures.
            if let Some(diff) = text
                .lines()
                .find_map(|l| l.split("not in effect as requested: ").nth(1))
            {
                let mut b = Outcome::bad(
                    "unsupported",
                    format!(
                        "the recorder did not apply the cell as requested: {}",
                        diff.trim()
                    ),
                );
                b.log = log_rel.clone();
                return b;
            }
            // A recorder that exited during the run: `classify_exit` says whether it refused
            // the cell (its `recorder serve: unsupported: ...`, e.g. a kernel or device
            // refusal at first use: unsupported, whatever the load saw) or failed.
            let exited = stopped
                .err()
                .map(|st| classify_exit(&text, &st, ExitPhase::Run));
            match (res, exited) {
                (_, Some(mut b)) if b.status == "unsupported" => {
                    b.log = log_rel.clone();
                    b
                }
                (Err(e), _) => {
                    let mut b = Outcome::bad("failed", e);
                    b.log = log_rel.clone();
                    b
                }
                (Ok(_), Some(mut b)) => {
                    b.log = log_rel.clone();
                    b
                }
                (Ok((ws, measure_s, bytes)), None) => {
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

//! The result of one run (`Outcome`), the per-run columns derived from telemetry, and the
//! rejection of runs measured on a noisy machine (steal, generator saturation).

use std::collections::BTreeMap;

use super::Ctx;
use crate::experiment::Cell;
use crate::telemetry::Derived;
use crate::util::fmt_opt;
use results_schema::col;

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
    /// `(section.name, value)` of the engine options in effect (the `opt.*` columns).
    pub options: Vec<(String, String)>,
    pub log: String,
}

impl Outcome {
    pub(crate) fn bad(status: &str, reason: impl Into<String>) -> Outcome {
        Outcome {
            status: status.into(),
            reason: one_line(&reason.into()),
            ..Default::default()
        }
    }
    pub fn throughput(&self) -> Option<f64> {
        self.m.get(col::THROUGHPUT).and_then(|v| v.parse().ok())
    }
}

pub(crate) fn one_line(s: &str) -> String {
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

pub(crate) fn fill_derived(o: &mut Outcome, d: &Derived, bytes: u64, measure_s: f64) {
    o.m.insert(col::DEV_MB_PER_S, fmt_opt(d.dev_mb_per_s));
    o.m.insert(col::DEV_IOPS, fmt_opt(d.dev_iops));
    o.m.insert(col::DEV_MERGE_PCT, fmt_opt(d.dev_merge_pct));
    o.m.insert(col::DEV_AWAIT_MS, fmt_opt(d.dev_await_ms));
    o.m.insert(col::DEV_AQU_SZ, fmt_opt(d.dev_aqu_sz));
    o.m.insert(col::DEV_UTIL_PCT, fmt_opt(d.dev_util_pct));
    o.m.insert(col::CTX_SWITCHES_PER_S, fmt_opt(d.ctx_switches_per_s));
    o.m.insert(col::STEAL_PCT, fmt_opt(d.steal_pct));
    o.m.insert(col::DIRTY_KB_MAX, fmt_opt(d.dirty_kb_max));
    o.m.insert(col::WRITEBACK_KB_MAX, fmt_opt(d.writeback_kb_max));
    o.m.insert(col::NET_RX_SOFTIRQ_PER_S, fmt_opt(d.net_rx_softirq_per_s));
    o.m.insert(col::BLOCK_SOFTIRQ_PER_S, fmt_opt(d.block_softirq_per_s));
    o.m.insert(col::INTERRUPTS_PER_S, fmt_opt(d.interrupts_per_s));
    o.m.insert(col::RECORDER_WRITE_MB_PER_S, fmt_opt(d.srv_write_mb_per_s));
    // CPU and bytes over the same samples (the window's when the sampler was aligned to
    // it): CPU over the samples divided by bytes over the whole window would carry the
    // difference between the two spans (up to two sample intervals) as noise.
    if let Some(cpu) = d.srv_cpu_s {
        let covered = d.covered_s.filter(|s| *s > 0.0).unwrap_or(measure_s);
        o.m.insert(col::RECORDER_CPU_PCT, fmt_opt(Some(100.0 * cpu / covered)));
        o.m.insert(col::RECORDER_CPU_S, fmt_opt(Some(cpu)));
        let (cpu, bytes) = match d.progress_bytes {
            Some(p) if p > 0 => (cpu, p),
            _ => (cpu * measure_s / covered, bytes),
        };
        if bytes > 0 && !o.m.contains_key(col::CPU_S_PER_GIB) {
            o.m.insert(
                col::CPU_S_PER_GIB,
                fmt_opt(Some(cpu / (bytes as f64 / (1u64 << 30) as f64))),
            );
        }
    }
}

/// Marks a run `rejected` when steal or generator saturation is over its limit.
pub(crate) fn reject_if_noisy(ctx: &Ctx, cell: &Cell, o: &mut Outcome) {
    if o.status != "ok" {
        clear_metrics_keep(o);
        return;
    }
    let get = |k: &str| o.m.get(k).and_then(|v| v.parse::<f64>().ok());
    let thr = get(col::THROUGHPUT)
        .map(|t| format!(" (measured {t:.2} MB/s)"))
        .unwrap_or_default();
    if let Some(s) = get(col::STEAL_PCT) {
        if s > ctx.exp.steal_limit_pct {
            o.status = "rejected".into();
            o.reason = format!(
                "steal {s:.1}% is over the limit {}%{thr}",
                ctx.exp.steal_limit_pct
            );
        }
    }
    if let Some(g) = get(col::GEN_CPU_PCT) {
        // The generator can use one core per thread, up to the cores it may run on: all of
        // them, or its half with `placement.policy = separate`.
        let ncpu = crate::placement::plan(&ctx.topo, cell.str_or("placement.policy", "shared"))
            .ok()
            .and_then(|p| p.generator_cpus)
            .map(|c| c.split(',').filter(|x| !x.trim().is_empty()).count())
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            }) as f64;
        let threads = match (cell.kind(), cell.workload().as_str()) {
            ("iperf3", _) => 1.0,
            (_, "serve") => cell.u64_or("load.concurrency", 8).unwrap_or(8) as f64,
            (_, super::wrk::WORKLOAD) => cell.u64_or("wrk.threads", 2).unwrap_or(2) as f64,
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
pub(crate) fn clear_metrics_keep(o: &mut Outcome) {
    let keep = ["errors", "error_kinds", "placement", "ring_fdinfo", "load"];
    o.m.retain(|k, _| keep.contains(k));
}

//! The margin delta of each (cell, metric): the smallest change `compare` calls a
//! REGRESSION or IMPROVED, and whether the metric may fail a build at all (gated).
//!
//! delta = max(floor, 2 x spread, bias): the spread is how far the median pair change of a
//! same-build comparison with as many pairs as the one judged moves by chance, its
//! standard error `1.2533 x sigma / sqrt(n)`, with sigma the noise of one pair's log ratio;
//! the bias is the part of a same-build sweep's own median change that chance does not
//! explain (a systematic offset between two identical sides; 0 when none was measured).
//! sigma comes, by preference, from:
//! 1. `--aa DIR` given (at least [`MIN_AA_PAIRS`] pairs of that cell in a same-build sweep
//!    measured in the same job): 1.4826 x the median absolute deviation of the A/A pair log
//!    ratios about their median, pooled with the judged pairs' deviations about theirs. Both
//!    are the noise of exactly the quantity the verdict is about, measured in the same job;
//!    pooling them doubles the pairs the estimate rests on, so that one noisy A/A sweep of
//!    10 pairs no longer doubles every margin of the run (it did: a 5% injection whose 10
//!    pairs were all worse, p = 0.001, was missed against a 7.2% margin). The bias is then
//!    |median A/A change| minus twice its own standard error, when positive;
//! 2. else the cell's own within-build spread: median |ln(x_i/x_j)| / 0.6745 over pairs of
//!    ok runs of the cell in the same build (both builds pooled; at least 4 runs per build);
//!    it includes drift between repetitions, so it is the larger of the two;
//! 3. else the same pooled over every cell; else the floor alone.
//!
//! Floors: 3% for throughput, CPU s/GiB and other figures, 5% for latency p50 / p90 and
//! request latencies, 10% for p99 and beyond (measurement-method.md). Gating: latency
//! percentiles fail a build only where their margin is at most [`LATENCY_GATE_MAX`] (their
//! A/A spread is small); p99 and beyond never by default; open-loop throughput never (it
//! is the offered load); anchors never (they measure the machine, not the build).

use std::collections::BTreeMap;

use crate::data::{m, Run};
use crate::stats;

/// Fewest A/A pairs of a cell for its A/A spread to be used.
pub const MIN_AA_PAIRS: usize = 5;
/// Latency percentiles are gated only where their margin is at most this.
pub const LATENCY_GATE_MAX: f64 = 0.10;

pub fn floor(metric: usize) -> f64 {
    match metric {
        m::ACK_P99 | m::ACK_P999 | m::ACK_MAX => 0.10,
        m::ACK_P50 | m::ACK_P90 | m::REQ_P50 | m::REQ_P99 => 0.05,
        _ => 0.03,
    }
}

pub fn is_latency(k: usize) -> bool {
    matches!(
        k,
        m::ACK_P50 | m::ACK_P90 | m::ACK_P99 | m::ACK_P999 | m::ACK_MAX | m::REQ_P50 | m::REQ_P99
    )
}

/// Where a cell's spread came from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    AaPairs { pairs: usize },
    WithinBuildCell { run_pairs: usize },
    WithinBuildPooled { run_pairs: usize },
    FloorOnly,
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::AaPairs { pairs } => format!("A/A sweep, {pairs} pairs"),
            Source::WithinBuildCell { run_pairs } => {
                format!("within-build spread of the cell, {run_pairs} run pairs")
            }
            Source::WithinBuildPooled { run_pairs } => {
                format!("within-build spread of all cells, {run_pairs} run pairs")
            }
            Source::FloorOnly => "no repetitions to estimate a spread: the floor".into(),
        }
    }
    pub fn key(&self) -> &'static str {
        match self {
            Source::AaPairs { .. } => "aa_pairs",
            Source::WithinBuildCell { .. } => "within_build_cell",
            Source::WithinBuildPooled { .. } => "within_build_pooled",
            Source::FloorOnly => "floor",
        }
    }
}

/// The margin of one (cell, metric).
#[derive(Clone, Debug)]
pub struct CellMargin {
    /// sigma: the noise of one pair's log ratio, as a fraction, if estimated.
    pub pair_noise: Option<f64>,
    /// The standard error of the median pair change for the pairs judged (fraction).
    pub spread: Option<f64>,
    /// |median change| of the A/A sweep (fraction), when one was given; delta counts only
    /// its part beyond twice its standard error.
    pub bias: Option<f64>,
    pub source: Source,
    /// delta as a fraction (0.05 = 5%).
    pub delta: f64,
}

/// Standard error of the median of `n` values of standard deviation `sigma`.
pub fn se_median(sigma: f64, n: usize) -> f64 {
    1.2533 * sigma / (n.max(1) as f64).sqrt()
}

/// `aa`: the A/A median change (log) and its pair count, when margins come from an A/A
/// sweep.
fn from_sigma(
    metric: usize,
    sigma: Option<f64>,
    aa: Option<(f64, usize)>,
    n: usize,
    source: Source,
) -> CellMargin {
    let se = sigma.map(|s| se_median(s, n));
    let twice = se.map(|s| (2.0 * s).exp() - 1.0).unwrap_or(0.0);
    // Only the part of the A/A median change that its own chance spread does not explain.
    let excess = aa
        .map(|(b, n_aa)| {
            let se_aa = sigma.map(|s| se_median(s, n_aa)).unwrap_or(0.0);
            (b.abs() - 2.0 * se_aa).max(0.0).exp() - 1.0
        })
        .unwrap_or(0.0);
    CellMargin {
        pair_noise: sigma.map(|s| s.exp() - 1.0),
        spread: se.map(|s| s.exp() - 1.0),
        bias: aa.map(|(b, _)| b.abs().exp() - 1.0),
        source,
        delta: floor(metric).max(twice).max(excess),
    }
}

/// 1.4826 x the median absolute deviation of each set about its own median, pooled: the
/// pair noise when several sets measure the same noise around different centres.
pub fn pooled_robust_sd(sets: &[&[f64]]) -> f64 {
    let mut dev = Vec::new();
    for w in sets.iter().filter(|w| !w.is_empty()) {
        let med = stats::median(w);
        dev.extend(w.iter().map(|x| (x - med).abs()));
    }
    1.4826 * stats::median(&dev)
}

/// Positive values of `metric` for the ok runs.
fn values(runs: &[&Run], metric: usize) -> Vec<f64> {
    runs.iter()
        .filter(|r| r.is_ok())
        .filter_map(|r| r.metric(metric))
        .filter(|x| *x > 0.0)
        .collect()
}

/// |ln(x_i / x_j)| over pairs of ok runs of one cell within one build.
fn within(runs: &[&Run], metric: usize, out: &mut Vec<f64>) {
    let v = values(runs, metric);
    for i in 0..v.len() {
        for j in (i + 1)..v.len().min(i + 50) {
            out.push((v[i] / v[j]).ln().abs());
        }
    }
}

/// The inputs of every margin of one comparison.
pub struct MarginInputs<'a> {
    /// Per cell: base runs and head runs of the comparison itself.
    pub base: &'a BTreeMap<&'a str, Vec<&'a Run>>,
    pub head: &'a BTreeMap<&'a str, Vec<&'a Run>>,
    /// Per cell: oriented A/A pair log ratios (positive = head worse), per metric, from
    /// `--aa`.
    pub aa: Option<&'a BTreeMap<(String, usize), Vec<f64>>>,
}

impl MarginInputs<'_> {
    /// The pooled within-build pair noise of a metric over every cell (and how many run
    /// pairs): median |ln(x_i/x_j)| / 0.6745.
    pub fn pooled(&self, metric: usize) -> (Option<f64>, usize) {
        let mut d = Vec::new();
        for g in [self.base, self.head] {
            for runs in g.values() {
                within(runs, metric, &mut d);
            }
        }
        ((!d.is_empty()).then(|| stats::median(&d) / 0.6745), d.len())
    }

    /// The margin of a cell's metric judged on the oriented pair log ratios `judged`.
    pub fn margin(&self, cell: &str, metric: usize, judged: &[f64]) -> CellMargin {
        let n = judged.len();
        if let Some(w) = self.aa.and_then(|aa| aa.get(&(cell.to_string(), metric))) {
            if w.len() >= MIN_AA_PAIRS {
                return from_sigma(
                    metric,
                    Some(pooled_robust_sd(&[w.as_slice(), judged])),
                    Some((stats::median(w), w.len())),
                    n,
                    Source::AaPairs { pairs: w.len() },
                );
            }
        }
        let (b, h) = (
            self.base.get(cell).map(Vec::as_slice).unwrap_or(&[]),
            self.head.get(cell).map(Vec::as_slice).unwrap_or(&[]),
        );
        if values(b, metric).len() >= 4 && values(h, metric).len() >= 4 {
            let mut d = Vec::new();
            within(b, metric, &mut d);
            within(h, metric, &mut d);
            return from_sigma(
                metric,
                Some(stats::median(&d) / 0.6745),
                None,
                n,
                Source::WithinBuildCell { run_pairs: d.len() },
            );
        }
        match self.pooled(metric) {
            (Some(s), runs) => from_sigma(
                metric,
                Some(s),
                None,
                n,
                Source::WithinBuildPooled { run_pairs: runs },
            ),
            (None, _) => from_sigma(metric, None, None, n, Source::FloorOnly),
        }
    }
}

/// Whether a (cell, metric) may fail a build, and why not.
pub fn gate(kind: &str, open_loop: bool, metric: usize, delta: f64) -> (bool, String) {
    if kind != "recorder" {
        return (
            false,
            format!("anchor ({kind}): measures the machine, not the build"),
        );
    }
    if metric == m::THROUGHPUT && open_loop {
        return (
            false,
            "open loop: acked throughput is the offered load whatever the build (acked vs offered only)".into(),
        );
    }
    if matches!(metric, m::ACK_P99 | m::ACK_P999 | m::ACK_MAX) {
        return (false, "p99 and beyond are reported, not gated".into());
    }
    if is_latency(metric) && delta > LATENCY_GATE_MAX {
        return (
            false,
            format!(
                "A/A spread too large to gate: margin {:.1}% > {:.0}%",
                delta * 100.0,
                LATENCY_GATE_MAX * 100.0
            ),
        );
    }
    (true, String::new())
}

/// The metrics compared by default for a cell: closed loop (bulk ingest, serve, anchors)
/// by throughput and CPU s/GiB; open loop by CPU s/GiB and ack latency (p50, p90 gated
/// where small; p99 and the acked throughput shown).
pub fn default_metrics(open_loop: bool) -> &'static [usize] {
    if open_loop {
        &[
            m::CPU_S_PER_GIB,
            m::ACK_P50,
            m::ACK_P90,
            m::ACK_P99,
            m::THROUGHPUT,
        ]
    } else {
        &[m::THROUGHPUT, m::CPU_S_PER_GIB]
    }
}

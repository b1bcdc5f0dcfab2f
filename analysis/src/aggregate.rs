//! Grouping runs into configurations (one per revision and cell) and their statistics.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::data::{m, ResultSet, Run, Status, METRICS, N_METRICS};
use crate::stats::{self, Interval};

/// Metrics whose per-configuration median gets an interval (the ones verdicts, rankings and
/// `best` use).
pub const CI_METRICS: &[usize] = &[
    m::THROUGHPUT,
    m::ACK_P50,
    m::ACK_P90,
    m::ACK_P99,
    m::CPU_S_PER_GIB,
];
/// Confidence level of per-configuration intervals.
pub const CI_LEVEL: f64 = 0.90;

#[derive(Clone, Debug)]
pub struct MetricStats {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Relative standard deviation over the repetitions, % (0 with one).
    pub rsd_pct: f64,
    /// 90% interval of the median (exact order statistics, stats::median_ci); None with
    /// fewer than 5 repetitions, where only the range can be said.
    pub ci: Option<Interval>,
}

impl MetricStats {
    /// The 90% interval when the repetitions support one, else the range (min, max).
    pub fn band(&self) -> Interval {
        self.ci.unwrap_or(Interval {
            estimate: self.median,
            lo: self.min,
            hi: self.max,
        })
    }
    /// What [`MetricStats::band`] is: "90% interval" or "range".
    pub fn band_name(&self) -> &'static str {
        if self.ci.is_some() {
            "90% interval"
        } else {
            "range"
        }
    }
    /// `lo–hi` with what it is when it is a range: "12–15" or "range 12–15".
    pub fn band_text(&self) -> String {
        let b = self.band();
        let t = format!("{}–{}", crate::charts::num(b.lo), crate::charts::num(b.hi));
        if self.ci.is_some() {
            t
        } else {
            format!("range {t}")
        }
    }
}

/// One configuration: the runs of one cell of one revision.
#[derive(Clone, Debug)]
pub struct Config {
    pub cell_id: String,
    pub revision: String,
    pub kind: String,
    pub workload: String,
    pub dims: Vec<String>,
    /// `name=value;...` over every dimension.
    pub dims_label: String,
    /// Short label for charts (only the dimensions that vary).
    pub short: String,
    /// Indexes into ResultSet::runs.
    pub runs: Vec<usize>,
    pub n_ok: usize,
    /// (status, reason) of every run that is not ok.
    pub not_ok: Vec<(Status, String)>,
    pub metrics: Vec<Option<MetricStats>>,
}

impl Config {
    pub fn metric(&self, idx: usize) -> Option<&MetricStats> {
        self.metrics[idx].as_ref()
    }
    pub fn is_recorder(&self) -> bool {
        self.kind == "recorder"
    }
    /// The configuration's value of a dimension, or of any engine option in effect
    /// (`opt.*` columns, from its first run) when no dimension has that name.
    pub fn dim<'r>(&self, rs: &'r ResultSet, name: &str) -> Option<&'r str> {
        rs.value_of(&rs.runs[*self.runs.first()?], name)
    }
    /// The setup flags in effect in its first ok run (empty: none, or not io_uring).
    pub fn effective_flags<'r>(&self, rs: &'r ResultSet) -> Option<&'r str> {
        self.runs
            .iter()
            .map(|&i| &rs.runs[i])
            .find(|r| r.is_ok())
            .map(|r| r.effective_flags.as_str())
    }
    /// Every run of the configuration failed or was unsupported (nothing was measured).
    pub fn all_unsupported_or_failed(&self) -> bool {
        self.n_ok == 0
            && self
                .not_ok
                .iter()
                .any(|(s, _)| matches!(s, Status::Unsupported | Status::Failed))
    }
}

/// Every configuration of a result set, with the dimensions that vary.
#[derive(Clone, Debug)]
pub struct Summary {
    pub configs: Vec<Config>,
    /// For each dimension: its distinct values in order of first appearance in cell order.
    pub dim_values: Vec<Vec<String>>,
    /// Whether more than one revision is present (labels then carry the revision).
    pub multi_revision: bool,
}

impl Summary {
    pub fn build(rs: &ResultSet) -> Summary {
        let mut order: Vec<(String, String)> = Vec::new();
        let mut groups: HashMap<(String, String), Vec<usize>> = HashMap::new();
        for (i, r) in rs.runs.iter().enumerate() {
            let key = (r.revision.clone(), r.cell_id.clone());
            groups
                .entry(key.clone())
                .or_insert_with(|| {
                    order.push(key);
                    Vec::new()
                })
                .push(i);
        }
        // Values in cell order: the harness numbers cells in the experiment's order (a
        // cartesian product, first listed value first), while runs.csv is in the random
        // order the runs were measured in.
        let mut dim_values: Vec<Vec<String>> = vec![Vec::new(); rs.dimensions.len()];
        let mut rec: Vec<&Run> = rs.runs.iter().filter(|r| r.kind == "recorder").collect();
        rec.sort_by(|a, b| a.cell_id.cmp(&b.cell_id).then(a.rep.cmp(&b.rep)));
        for r in rec {
            for (k, v) in r.dims.iter().enumerate() {
                if !dim_values[k].contains(v) {
                    dim_values[k].push(v.clone());
                }
            }
        }
        let multi_revision = rs.revisions().len() > 1;
        let configs: Vec<Config> = order
            .par_iter()
            .map(|key| build_config(rs, &groups[key], &dim_values, multi_revision))
            .collect();
        Summary {
            configs,
            dim_values,
            multi_revision,
        }
    }

    /// Dimensions (indexes) with more than one value among recorder runs.
    pub fn varying_dims(&self) -> Vec<usize> {
        (0..self.dim_values.len())
            .filter(|&k| self.dim_values[k].len() > 1)
            .collect()
    }

    /// Recorder configurations with at least one ok run that has `metric`.
    pub fn measured(&self, metric: usize) -> Vec<&Config> {
        self.configs
            .iter()
            .filter(|c| c.is_recorder() && c.metric(metric).is_some())
            .collect()
    }
}

fn build_config(
    rs: &ResultSet,
    idx: &[usize],
    dim_values: &[Vec<String>],
    multi_revision: bool,
) -> Config {
    let first: &Run = &rs.runs[idx[0]];
    let ok: Vec<&Run> = idx
        .iter()
        .map(|&i| &rs.runs[i])
        .filter(|r| r.is_ok())
        .collect();
    let not_ok = idx
        .iter()
        .map(|&i| &rs.runs[i])
        .filter(|r| !r.is_ok())
        .map(|r| (r.status, r.reason.clone()))
        .collect();
    let metrics = (0..N_METRICS)
        .map(|k| {
            let v: Vec<f64> = ok.iter().filter_map(|r| r.metric(k)).collect();
            if v.is_empty() {
                return None;
            }
            let ci = if CI_METRICS.contains(&k) {
                stats::median_ci(&v, CI_LEVEL)
            } else {
                None
            };
            let mean = stats::mean(&v);
            let rsd_pct = if v.len() > 1 && mean != 0.0 {
                let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
                100.0 * var.sqrt() / mean.abs()
            } else {
                0.0
            };
            Some(MetricStats {
                n: v.len(),
                median: stats::median(&v),
                min: v.iter().copied().fold(f64::INFINITY, f64::min),
                max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                rsd_pct,
                ci,
            })
        })
        .collect();
    let dims_label = rs
        .dimensions
        .iter()
        .zip(&first.dims)
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(";");
    let mut short = if first.kind == "recorder" {
        short_label(&rs.dimensions, &first.dims, dim_values)
    } else {
        // Anchors: kind, workload and the anchor's own settings (`fio.bs=...` -> `bs=...`).
        let own = format!("{}.", first.kind);
        let mut l = format!("{} {}", first.kind, first.workload);
        for (n, v) in rs.dimensions.iter().zip(&first.dims) {
            if let Some(knob) = n.strip_prefix(&own) {
                if !v.is_empty() {
                    l.push_str(&format!(" {knob}={v}"));
                }
            }
        }
        l
    };
    if multi_revision {
        short = format!("[{}] {short}", first.revision);
    }
    Config {
        cell_id: first.cell_id.clone(),
        revision: first.revision.clone(),
        kind: first.kind.clone(),
        workload: first.workload.clone(),
        dims: first.dims.clone(),
        dims_label,
        short,
        runs: idx.to_vec(),
        n_ok: ok.len(),
        not_ok,
        metrics,
    }
}

/// Short, readable label: only the dimensions that vary, and only where the value differs
/// from the dimension's first value; `true` shows the knob's name, a word value shows
/// itself, numbers and generic words (`none`, `auto`, ...) show `knob=value`.
pub fn short_label(names: &[String], values: &[String], dim_values: &[Vec<String>]) -> String {
    let mut parts = Vec::new();
    for (k, (n, v)) in names.iter().zip(values).enumerate() {
        if dim_values.get(k).is_none_or(|vals| vals.len() < 2) {
            continue;
        }
        // Not set for this cell (a key of another workload's cells), or the first value.
        if v.is_empty() || dim_values[k].first() == Some(v) {
            continue;
        }
        let knob = n.rsplit('.').next().unwrap_or(n);
        let generic = matches!(
            v.as_str(),
            "none"
                | "auto"
                | "default"
                | "all"
                | "on"
                | "off"
                | "yes"
                | "no"
                | "required"
                | "optional"
                | ""
        ) || !v.chars().any(|c| c.is_ascii_alphabetic());
        match v.as_str() {
            "true" => parts.push(knob.to_string()),
            "false" => parts.push(format!("no-{knob}")),
            _ if generic => parts.push(format!("{knob}={v}")),
            _ => parts.push(v.clone()),
        }
    }
    if parts.is_empty() {
        "baseline".to_string()
    } else {
        parts.join(" ")
    }
}

/// Metric display name with unit.
pub fn metric_title(idx: usize) -> &'static str {
    match idx {
        m::THROUGHPUT => "throughput (MB/s)",
        m::FRAMES => "frames/s",
        m::ACK_P50 => "ack p50 (us)",
        m::ACK_P90 => "ack p90 (us)",
        m::ACK_P99 => "ack p99 (us)",
        m::ACK_P999 => "ack p99.9 (us)",
        m::ACK_MAX => "ack max (us)",
        m::CPU_S_PER_GIB => "CPU s/GiB",
        m::IOS_PER_SYSCALL => "I/Os per syscall",
        m::REQ_P50 => "request p50 (us)",
        m::REQ_P99 => "request p99 (us)",
        m::GEN_CPU => "generator CPU (% of a core)",
        m::RECORDER_CPU_PCT => "recorder CPU (% of a core)",
        m::SENT => "offered (MB/s)",
        m::LATE_FRAMES => "late frames",
        _ => METRICS[idx],
    }
}

/// Whether a larger value of the metric is better.
pub fn higher_is_better(idx: usize) -> bool {
    matches!(
        idx,
        m::THROUGHPUT | m::FRAMES | m::IOS_PER_SYSCALL | 12 | 13
    )
}

//! `analysis report DIR`: DIR/report/report.md, report.html (charts inlined as SVG) and
//! every chart as PNG and SVG.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::aggregate::{metric_title, Config, Summary};
use crate::charts::{self, BarChart, BarRow, Heatmap, MultiChart, Panel, SeriesChart};
use crate::data::{m, ResultSet, SeriesSummary, Status};
use crate::doc::Doc;
use crate::error::{Error, Result};
use crate::stats;

/// Most configurations drawn in one chart (all of them are in the tables).
pub const TOP: usize = 40;
/// Most dimension pairs drawn as heatmaps.
pub const MAX_HEATMAPS: usize = 6;

#[derive(Clone, Debug, Default)]
pub struct ReportOptions {
    /// Run whose time series is drawn (default: the median run of the best configuration).
    pub run: Option<String>,
    /// Output directory (default DIR/report).
    pub out: Option<PathBuf>,
}

/// Time spent per phase, for the scale benchmark.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    pub load_s: f64,
    pub aggregate_s: f64,
    pub series_s: f64,
    pub charts_s: f64,
    pub total_s: f64,
    pub runs: usize,
    pub series_files: usize,
}

pub struct ReportOutput {
    pub dir: PathBuf,
    pub markdown: PathBuf,
    pub html: PathBuf,
    pub charts: Vec<charts::ChartFiles>,
    pub timings: Timings,
}

fn f1(v: f64) -> String {
    charts::num(v)
}

fn opt(v: Option<f64>) -> String {
    v.map(f1).unwrap_or_else(|| "–".into())
}

fn pct(r: f64) -> String {
    format!("{:+.1}%", (r - 1.0) * 100.0)
}

pub fn report(dir: &Path, opts: &ReportOptions) -> Result<ReportOutput> {
    let t0 = Instant::now();
    let rs = ResultSet::load(dir)?;
    let load_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let sum = Summary::build(&rs);
    let aggregate_s = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let series = rs.timeseries_summaries()?;
    let series_s = t2.elapsed().as_secs_f64();
    let out = opts.out.clone().unwrap_or_else(|| dir.join("report"));
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, "create", e))?;
    remove_stale_charts(&out)?;
    let t3 = Instant::now();
    let mut doc = Doc::new(format!("Sweep report: {}", dir.display()));
    let mut charts_made = Vec::new();
    build(&rs, &sum, &series, &out, opts, &mut doc, &mut charts_made)?;
    let charts_s = t3.elapsed().as_secs_f64();
    let md = out.join("report.md");
    let html = out.join("report.html");
    std::fs::write(&md, doc.to_markdown()).map_err(|e| Error::io(&md, "write", e))?;
    std::fs::write(&html, doc.to_html()).map_err(|e| Error::io(&html, "write", e))?;
    Ok(ReportOutput {
        dir: out,
        markdown: md,
        html,
        charts: charts_made,
        timings: Timings {
            load_s,
            aggregate_s,
            series_s,
            charts_s,
            total_s: t0.elapsed().as_secs_f64(),
            runs: rs.runs.len(),
            series_files: series.len(),
        },
    })
}

/// Chart file name prefixes this module writes.
const CHART_PREFIXES: &[&str] = &[
    "throughput-",
    "latency-",
    "effects-",
    "heatmap-",
    "cpu-per-gib-",
    "ios-per-syscall-",
    "ratios-",
    "timeseries",
];

/// Removes charts of an earlier report in the same directory (a heatmap pair that no
/// longer exists must not linger next to the new report).
fn remove_stale_charts(out: &Path) -> Result<()> {
    let rd = std::fs::read_dir(out).map_err(|e| Error::io(out, "list", e))?;
    for ent in rd.flatten() {
        let name = ent.file_name().to_string_lossy().to_string();
        if (name.ends_with(".png") || name.ends_with(".svg"))
            && CHART_PREFIXES.iter().any(|p| name.starts_with(p))
        {
            let p = ent.path();
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, "remove", e))?;
        }
    }
    Ok(())
}

/// Recorder workloads, the one with the most runs first.
pub fn workloads(rs: &ResultSet) -> Vec<String> {
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for r in rs.runs.iter().filter(|r| r.kind == "recorder") {
        *count.entry(r.workload.as_str()).or_default() += 1;
    }
    let mut v: Vec<(&str, usize)> = count.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v.into_iter().map(|(w, _)| w.to_string()).collect()
}

/// Recorder configurations of `workload` with a throughput, best first.
pub fn ranked<'a>(sum: &'a Summary, workload: &str, metric: usize) -> Vec<&'a Config> {
    let mut v: Vec<&Config> = sum
        .measured(metric)
        .into_iter()
        .filter(|c| c.workload == workload)
        .collect();
    let hib = crate::aggregate::higher_is_better(metric);
    v.sort_by(|a, b| {
        let (x, y) = (
            a.metric(metric).map_or(f64::NAN, |s| s.median),
            b.metric(metric).map_or(f64::NAN, |s| s.median),
        );
        if hib {
            y.total_cmp(&x)
        } else {
            x.total_cmp(&y)
        }
    });
    v
}

fn build(
    rs: &ResultSet,
    sum: &Summary,
    series: &HashMap<String, SeriesSummary>,
    out: &Path,
    opts: &ReportOptions,
    doc: &mut Doc,
    made: &mut Vec<charts::ChartFiles>,
) -> Result<()> {
    overview(rs, sum, doc);
    let wls = workloads(rs);
    if wls.is_empty() {
        doc.p("No recorder runs in this sweep: only anchors or nothing was measured.");
    }
    let mut chosen_run_done = false;
    for (wi, wl) in wls.iter().enumerate() {
        let tag = sanitize(wl);
        let rank = ranked(sum, wl, m::THROUGHPUT);
        doc.h(1, format!("Workload `{wl}`"));
        if rank.is_empty() {
            doc.p("No configuration of this workload has an ok run with a throughput.");
            continue;
        }
        best_paragraph(&rank, doc);
        throughput_section(rs, sum, wl, &rank, out, &tag, doc, made)?;
        latency_section(sum, wl, out, &tag, doc, made)?;
        if wi == 0 || rank.len() > 3 {
            heatmaps_and_effects(rs, sum, &rank, out, &tag, doc, made)?;
        }
        efficiency_section(sum, wl, out, &tag, doc, made)?;
        ratios_section(rs, sum, wl, &rank, out, &tag, doc, made)?;
        if !chosen_run_done && (opts.run.is_none() || wi == 0) {
            timeseries_section(rs, sum, series, &rank, opts, out, doc, made)?;
            chosen_run_done = true;
        }
    }
    stability_section(rs, sum, series, doc);
    failures_section(rs, sum, doc);
    machine_section(rs, doc);
    Ok(())
}

fn best_paragraph(rank: &[&Config], doc: &mut Doc) {
    let top = rank[0];
    let Some(s) = top.metric(m::THROUGHPUT) else {
        return;
    };
    let Some(ci) = s.ci else { return };
    let ties: Vec<&str> = rank[1..]
        .iter()
        .filter(|c| {
            c.metric(m::THROUGHPUT)
                .and_then(|x| x.ci)
                .is_some_and(|x| x.overlaps(&ci))
        })
        .map(|c| c.short.as_str())
        .collect();
    doc.p(format!(
        "**Highest throughput: {} — {} MB/s (90% interval {}–{}, {} ok runs), cell `{}`.** {}",
        top.short,
        f1(s.median),
        f1(ci.lo),
        f1(ci.hi),
        s.n,
        top.cell_id,
        if ties.is_empty() {
            "No other configuration is statistically tied with it.".to_string()
        } else {
            format!(
                "Statistically tied (intervals overlap): {}{}. `analysis best` picks the simplest of them.",
                ties.iter().take(8).copied().collect::<Vec<_>>().join("; "),
                if ties.len() > 8 { format!("; and {} more", ties.len() - 8) } else { String::new() }
            )
        }
    ));
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

fn overview(rs: &ResultSet, sum: &Summary, doc: &mut Doc) {
    let mut by_status: BTreeMap<Status, usize> = BTreeMap::new();
    for r in &rs.runs {
        *by_status.entry(r.status).or_default() += 1;
    }
    let counts = by_status
        .iter()
        .map(|(s, n)| format!("{n} {}", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    let anchors: Vec<String> = {
        let mut a: Vec<String> = rs
            .runs
            .iter()
            .filter(|r| r.kind != "recorder")
            .map(|r| format!("{} ({})", r.kind, r.workload))
            .collect();
        a.sort();
        a.dedup();
        a
    };
    doc.h(1, "Overview");
    doc.p(format!(
        "{} runs ({counts}) in {} configurations; revisions: {}; workloads: {}; anchors: {}.",
        rs.runs.len(),
        sum.configs.len(),
        rs.revisions().join(", "),
        workloads(rs).join(", "),
        if anchors.is_empty() {
            "none".to_string()
        } else {
            anchors.join(", ")
        }
    ));
    let varying: Vec<String> = sum
        .varying_dims()
        .iter()
        .map(|&k| format!("`{}` ({})", rs.dimensions[k], sum.dim_values[k].join(", ")))
        .collect();
    doc.p(format!(
        "Dimensions that vary: {}.",
        if varying.is_empty() {
            "none".into()
        } else {
            varying.join("; ")
        }
    ));
    doc.p(
        "Intervals are 90% intervals of the median over a configuration's ok repetitions (bootstrap, 4000 resamples, \
         fixed seed; order statistics beyond 200 repetitions). Runs whose status is not `ok` are never counted as zero: \
         they are listed under *Unsupported, failed and rejected runs*. Chart labels show only the dimensions that vary \
         and only where the value differs from the dimension's first value (`knob` = true, `no-knob` = false, \
         otherwise the value; `baseline` = every dimension at its first value); the tables give the full cell.",
    );
    if !rs.absent_columns.is_empty() {
        doc.p(format!(
            "runs.csv has no column for: {} (shown as –).",
            rs.absent_columns.join(", ")
        ));
    }
}

#[allow(clippy::too_many_arguments)]
fn throughput_section(
    rs: &ResultSet,
    _sum: &Summary,
    wl: &str,
    rank: &[&Config],
    out: &Path,
    tag: &str,
    doc: &mut Doc,
    made: &mut Vec<charts::ChartFiles>,
) -> Result<()> {
    doc.h(2, "Throughput, ranked");
    let best = rank[0].metric(m::THROUGHPUT).and_then(|s| s.ci);
    let rows: Vec<BarRow> = rank
        .iter()
        .take(TOP)
        .enumerate()
        .map(|(i, c)| {
            let s = c
                .metric(m::THROUGHPUT)
                .expect("ranked configs have throughput");
            let tie = match (best, s.ci) {
                (Some(b), Some(ci)) => b.overlaps(&ci),
                _ => false,
            };
            BarRow {
                label: format!("#{} {}", i + 1, c.short),
                value: s.median,
                lo: s.ci.map(|x| x.lo),
                hi: s.ci.map(|x| x.hi),
                points: c
                    .runs
                    .iter()
                    .filter_map(|&r| {
                        rs.runs[r]
                            .is_ok()
                            .then(|| rs.runs[r].metric(m::THROUGHPUT))
                            .flatten()
                    })
                    .collect(),
                color: if tie { charts::GREEN } else { charts::BLUE },
            }
        })
        .collect();
    let more = if rank.len() > TOP {
        format!(" (best {TOP} of {})", rank.len())
    } else {
        String::new()
    };
    let c = charts::bar_chart(
        out,
        &format!("throughput-{tag}"),
        &BarChart {
            title: format!("{wl}: throughput per configuration{more}"),
            x_label: "throughput (MB/s): bar = median, line = 90% interval, dots = repetitions"
                .into(),
            rows,
            bars: true,
            reference: None,
            band: None,
            legend: vec![
                (charts::GREEN, "interval overlaps the best's (tie)".into()),
                (charts::BLUE, "below the best".into()),
            ],
        },
    )?;
    made.push(c.clone());
    doc.chart(c);
    let top = rank[0]
        .metric(m::THROUGHPUT)
        .map(|s| s.median)
        .unwrap_or(f64::NAN);
    let rows = rank
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let s = c.metric(m::THROUGHPUT).expect("ranked");
            vec![
                (i + 1).to_string(),
                c.short.clone(),
                f1(s.median),
                s.ci.map(|x| format!("{}–{}", f1(x.lo), f1(x.hi)))
                    .unwrap_or_default(),
                format!("{}–{}", f1(s.min), f1(s.max)),
                format!("{}/{}", c.n_ok, c.runs.len()),
                pct(s.median / top),
                format!("`{}`", c.cell_id),
                c.dims_label.clone(),
            ]
        })
        .collect();
    doc.table(
        &[
            "rank",
            "configuration",
            "median MB/s",
            "90% interval",
            "min–max",
            "ok/runs",
            "vs best",
            "cell",
            "dimensions",
        ],
        rows,
    );
    Ok(())
}

fn latency_section(
    sum: &Summary,
    wl: &str,
    out: &Path,
    tag: &str,
    doc: &mut Doc,
    made: &mut Vec<charts::ChartFiles>,
) -> Result<()> {
    let rank = ranked(sum, wl, m::ACK_P99);
    doc.h(2, "Ack latency (p50, p99, p99.9)");
    if rank.is_empty() {
        doc.p("No run of this workload measured ack latency.");
        return Ok(());
    }
    let val = |c: &Config, k: usize| c.metric(k).map(|s| s.median);
    let more = if rank.len() > TOP {
        format!(" (lowest p99: {TOP} of {})", rank.len())
    } else {
        String::new()
    };
    let c = charts::multi_log_chart(
        out,
        &format!("latency-{tag}"),
        &MultiChart {
            title: format!("{wl}: ack latency from intended send time{more}"),
            x_label: "ack latency (µs, log scale), median over repetitions".into(),
            series: vec!["p50".into(), "p99".into(), "p99.9".into()],
            reference: None,
            rows: rank
                .iter()
                .take(TOP)
                .map(|c| {
                    (
                        c.short.clone(),
                        vec![val(c, m::ACK_P50), val(c, m::ACK_P99), val(c, m::ACK_P999)],
                    )
                })
                .collect(),
        },
    )?;
    made.push(c.clone());
    doc.chart(c);
    doc.table(
        &[
            "configuration",
            "p50 µs",
            "p99 µs",
            "p99 90% interval",
            "p99.9 µs",
            "max µs",
            "cell",
        ],
        rank.iter()
            .map(|c| {
                vec![
                    c.short.clone(),
                    opt(val(c, m::ACK_P50)),
                    opt(val(c, m::ACK_P99)),
                    c.metric(m::ACK_P99)
                        .and_then(|s| s.ci)
                        .map(|x| format!("{}–{}", f1(x.lo), f1(x.hi)))
                        .unwrap_or_default(),
                    opt(val(c, m::ACK_P999)),
                    opt(val(c, m::ACK_MAX)),
                    format!("`{}`", c.cell_id),
                ]
            })
            .collect(),
    );
    Ok(())
}

/// Main effect of changing one dimension from its first value to `value`, all others equal.
#[derive(Clone, Debug)]
pub struct Effect {
    pub dim: String,
    pub baseline: String,
    pub value: String,
    /// Geometric mean of throughput(value)/throughput(baseline) over matched configurations.
    pub ratio: f64,
    pub lo: Option<f64>,
    pub hi: Option<f64>,
    /// Matched configuration pairs (0: no matched pairs, marginal geometric means).
    pub matched: usize,
}

pub fn main_effects(rs: &ResultSet, sum: &Summary, rank: &[&Config]) -> Vec<Effect> {
    let mut out = Vec::new();
    for k in sum.varying_dims() {
        let values = &sum.dim_values[k];
        let baseline = &values[0];
        // key: every other dimension's value -> (value of k -> median throughput)
        let mut by_key: HashMap<Vec<&str>, HashMap<&str, f64>> = HashMap::new();
        for c in rank {
            let key: Vec<&str> = c
                .dims
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != k)
                .map(|(_, v)| v.as_str())
                .collect();
            if let Some(s) = c.metric(m::THROUGHPUT) {
                by_key
                    .entry(key)
                    .or_default()
                    .insert(c.dims[k].as_str(), s.median);
            }
        }
        for v in values.iter().skip(1) {
            let logs: Vec<f64> = by_key
                .values()
                .filter_map(|mp| Some((mp.get(v.as_str())? / mp.get(baseline.as_str())?).ln()))
                .filter(|x| x.is_finite())
                .collect();
            if !logs.is_empty() {
                let ci =
                    stats::bootstrap_mean_ci(&logs, 0.90, stats::BOOT_RESAMPLES, stats::BOOT_SEED);
                out.push(Effect {
                    dim: rs.dimensions[k].clone(),
                    baseline: baseline.clone(),
                    value: v.clone(),
                    ratio: ci.estimate.exp(),
                    lo: (logs.len() > 1).then(|| ci.lo.exp()),
                    hi: (logs.len() > 1).then(|| ci.hi.exp()),
                    matched: logs.len(),
                });
            } else {
                let g = |val: &str| {
                    let xs: Vec<f64> = rank
                        .iter()
                        .filter(|c| c.dims[k] == val)
                        .filter_map(|c| c.metric(m::THROUGHPUT).map(|s| s.median))
                        .filter(|x| *x > 0.0)
                        .collect();
                    (!xs.is_empty()).then(|| stats::geomean(&xs))
                };
                if let (Some(a), Some(b)) = (g(v), g(baseline)) {
                    out.push(Effect {
                        dim: rs.dimensions[k].clone(),
                        baseline: baseline.clone(),
                        value: v.clone(),
                        ratio: a / b,
                        lo: None,
                        hi: None,
                        matched: 0,
                    });
                }
            }
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn heatmaps_and_effects(
    rs: &ResultSet,
    sum: &Summary,
    rank: &[&Config],
    out: &Path,
    tag: &str,
    doc: &mut Doc,
    made: &mut Vec<charts::ChartFiles>,
) -> Result<()> {
    let effects = main_effects(rs, sum, rank);
    doc.h(2, "Main effect of each dimension");
    if effects.is_empty() {
        doc.p("No dimension varies among the measured configurations.");
    } else {
        doc.p(
            "Change in throughput when one dimension moves from its first value to another while every other \
             dimension stays the same: geometric mean of the ratios over the matched pairs of configurations, with a \
             90% bootstrap interval over those pairs (a dimension that interacts with another, e.g. ring knobs with \
             the blocking backend, averages over both; the heatmaps show the interaction). Where no configuration pair matches, the ratio of geometric means is shown \
             without an interval.",
        );
        let c = charts::bar_chart(
            out,
            &format!("effects-{tag}"),
            &BarChart {
                title: "Main effects on throughput (vs the dimension's first value)".into(),
                x_label: "change in throughput (%), dot = geometric mean over matched pairs, line = 90% interval".into(),
                rows: effects
                    .iter()
                    .map(|e| BarRow {
                        label: format!("{}: {} → {}", e.dim, e.baseline, e.value),
                        value: (e.ratio - 1.0) * 100.0,
                        lo: e.lo.map(|x| (x - 1.0) * 100.0),
                        hi: e.hi.map(|x| (x - 1.0) * 100.0),
                        points: vec![],
                        color: if e.ratio >= 1.0 { charts::GREEN } else { charts::RED },
                    })
                    .collect(),
                bars: false,
                reference: Some(0.0),
                band: None,
                legend: vec![],
            },
        )?;
        made.push(c.clone());
        doc.chart(c);
        doc.table(
            &[
                "dimension",
                "from",
                "to",
                "throughput change",
                "90% interval",
                "matched pairs",
            ],
            effects
                .iter()
                .map(|e| {
                    vec![
                        format!("`{}`", e.dim),
                        e.baseline.clone(),
                        e.value.clone(),
                        pct(e.ratio),
                        match (e.lo, e.hi) {
                            (Some(a), Some(b)) => format!("{} … {}", pct(a), pct(b)),
                            _ => "–".into(),
                        },
                        if e.matched == 0 {
                            "none (marginal)".into()
                        } else {
                            e.matched.to_string()
                        },
                    ]
                })
                .collect(),
        );
    }

    // Heatmaps: pairs of varying dimensions, strongest dimensions first.
    let mut dims = sum.varying_dims();
    let strength = |k: usize| {
        effects
            .iter()
            .filter(|e| e.dim == rs.dimensions[k])
            .map(|e| e.ratio.ln().abs())
            .fold(0.0f64, f64::max)
    };
    dims.sort_by(|a, b| strength(*b).total_cmp(&strength(*a)));
    let mut pairs = Vec::new();
    for i in 0..dims.len() {
        for j in (i + 1)..dims.len() {
            pairs.push((dims[i], dims[j]));
        }
    }
    // Pairs of two strong dimensions first.
    pairs.sort_by(|a, b| {
        strength(b.0)
            .min(strength(b.1))
            .total_cmp(&strength(a.0).min(strength(a.1)))
    });
    let total_pairs = pairs.len();
    pairs.truncate(MAX_HEATMAPS);
    doc.h(2, "Two dimensions at a time");
    if pairs.is_empty() {
        doc.p("Fewer than two dimensions vary: no heatmap.");
        return Ok(());
    }
    doc.p(format!(
        "Throughput for each combination of two dimensions: geometric mean of the configurations' medians over every \
         other dimension. {} of {total_pairs} pairs shown, strongest dimensions first.",
        pairs.len()
    ));
    for (x, y) in pairs {
        let xv = &sum.dim_values[x];
        let yv = &sum.dim_values[y];
        let values: Vec<Vec<Option<f64>>> = yv
            .iter()
            .map(|b| {
                xv.iter()
                    .map(|a| {
                        let xs: Vec<f64> = rank
                            .iter()
                            .filter(|c| &c.dims[x] == a && &c.dims[y] == b)
                            .filter_map(|c| c.metric(m::THROUGHPUT).map(|s| s.median))
                            .filter(|v| *v > 0.0)
                            .collect();
                        (!xs.is_empty()).then(|| stats::geomean(&xs))
                    })
                    .collect()
            })
            .collect();
        let c = charts::heatmap(
            out,
            &format!(
                "heatmap-{tag}-{}-{}",
                sanitize(&rs.dimensions[x]),
                sanitize(&rs.dimensions[y])
            ),
            &Heatmap {
                title: format!(
                    "Throughput (MB/s): {} × {}",
                    rs.dimensions[x], rs.dimensions[y]
                ),
                x_dim: rs.dimensions[x].clone(),
                y_dim: rs.dimensions[y].clone(),
                x_values: xv.clone(),
                y_values: yv.clone(),
                values,
                unit: "MB/s".into(),
            },
        )?;
        made.push(c.clone());
        doc.chart(c);
    }
    Ok(())
}

fn efficiency_section(
    sum: &Summary,
    wl: &str,
    out: &Path,
    tag: &str,
    doc: &mut Doc,
    made: &mut Vec<charts::ChartFiles>,
) -> Result<()> {
    doc.h(2, "Efficiency");
    let mut any = false;
    for (k, stem, what) in [
        (
            m::CPU_S_PER_GIB,
            "cpu-per-gib",
            "CPU seconds (user+sys) per GiB moved, lower is better",
        ),
        (
            m::IOS_PER_SYSCALL,
            "ios-per-syscall",
            "I/Os per system call, higher is better",
        ),
    ] {
        let rank = ranked(sum, wl, k);
        if rank.is_empty() {
            doc.p(format!("No run measured {}.", metric_title(k)));
            continue;
        }
        any = true;
        let more = if rank.len() > TOP {
            format!(" (best {TOP} of {})", rank.len())
        } else {
            String::new()
        };
        let c = charts::bar_chart(
            out,
            &format!("{stem}-{tag}"),
            &BarChart {
                title: format!("{wl}: {}{more}", metric_title(k)),
                x_label: format!("{what}; bar = median, line = min–max"),
                rows: rank
                    .iter()
                    .take(TOP)
                    .map(|c| {
                        let s = c.metric(k).expect("ranked");
                        BarRow {
                            label: c.short.clone(),
                            value: s.median,
                            lo: Some(s.min),
                            hi: Some(s.max),
                            points: vec![],
                            color: charts::PURPLE,
                        }
                    })
                    .collect(),
                bars: true,
                reference: None,
                band: None,
                legend: vec![],
            },
        )?;
        made.push(c.clone());
        doc.chart(c);
    }
    if any {
        let rank = ranked(sum, wl, m::THROUGHPUT);
        doc.table(
            &[
                "configuration",
                "MB/s",
                "CPU s/GiB",
                "I/Os per syscall",
                "ctx switches/s",
                "generator CPU %",
                "peak RSS KiB",
            ],
            rank.iter()
                .map(|c| {
                    let v = |k| c.metric(k).map(|s| s.median);
                    vec![
                        c.short.clone(),
                        opt(v(m::THROUGHPUT)),
                        opt(v(m::CPU_S_PER_GIB)),
                        opt(v(m::IOS_PER_SYSCALL)),
                        opt(v(18)),
                        opt(v(m::GEN_CPU)),
                        opt(v(m::RSS_KB)),
                    ]
                })
                .collect(),
        );
    }
    Ok(())
}

/// Anchor workloads compared with a recorder workload: same workload first, then the
/// natural counterparts (ingest: disk write and network; serve: nginx, disk read).
pub fn anchor_workloads(wl: &str) -> &'static [&'static str] {
    match wl {
        "ingest" | "bulk-ingest" => &["ingest", "bulk-ingest", "disk-write", "net"],
        "serve" => &["serve", "disk-read", "net"],
        _ => &[],
    }
}

#[allow(clippy::too_many_arguments)]
fn ratios_section(
    rs: &ResultSet,
    sum: &Summary,
    wl: &str,
    rank: &[&Config],
    out: &Path,
    tag: &str,
    doc: &mut Doc,
    made: &mut Vec<charts::ChartFiles>,
) -> Result<()> {
    doc.h(2, "Relative to the anchors and to the blocking backend");
    let wanted = anchor_workloads(wl);
    let mut anchors: Vec<&Config> = sum
        .configs
        .iter()
        .filter(|c| !c.is_recorder() && (c.workload == wl || wanted.contains(&c.workload.as_str())))
        .filter(|c| c.metric(m::THROUGHPUT).is_some())
        .collect();
    anchors.sort_by_key(|c| wanted.iter().position(|w| *w == c.workload).unwrap_or(99));
    let backend = rs.dim_index("server.backend");
    let blocking: Vec<&Config> = match backend {
        Some(b) => rank
            .iter()
            .copied()
            .filter(|c| c.dims[b] == "blocking")
            .collect(),
        None => vec![],
    };
    if anchors.is_empty() && blocking.is_empty() {
        doc.p("No anchor rows (fio, iperf3, nginx) and no `server.backend=blocking` configuration in this sweep.");
        return Ok(());
    }
    let blocking_ref = |c: &Config| -> Option<f64> {
        let b = backend?;
        // Same cell apart from the backend; else the median of the blocking configurations.
        let matched = blocking.iter().find(|x| {
            x.dims
                .iter()
                .enumerate()
                .all(|(j, v)| j == b || *v == c.dims[j] || rs.dimensions[j].starts_with("ring."))
        });
        matched
            .and_then(|x| x.metric(m::THROUGHPUT).map(|s| s.median))
            .or_else(|| {
                (!blocking.is_empty()).then(|| {
                    stats::median(
                        &blocking
                            .iter()
                            .filter_map(|x| x.metric(m::THROUGHPUT).map(|s| s.median))
                            .collect::<Vec<_>>(),
                    )
                })
            })
    };
    let mut series: Vec<String> = anchors.iter().map(|a| a.short.clone()).collect();
    let with_blocking = !blocking.is_empty();
    if with_blocking {
        series.push("blocking backend".into());
    }
    let candidates: Vec<&Config> = rank
        .iter()
        .copied()
        .filter(|c| backend.is_none_or(|b| c.dims[b] != "blocking"))
        .collect();
    let row_vals = |c: &Config| -> Vec<Option<f64>> {
        let tp = c
            .metric(m::THROUGHPUT)
            .map(|s| s.median)
            .unwrap_or(f64::NAN);
        let mut v: Vec<Option<f64>> = anchors
            .iter()
            .map(|a| a.metric(m::THROUGHPUT).map(|s| tp / s.median))
            .collect();
        if with_blocking {
            v.push(blocking_ref(c).map(|b| tp / b));
        }
        v
    };
    doc.p(format!(
        "Median throughput of each configuration divided by the median of the anchor measured in the same sweep \
         ({}), and by the blocking backend (same cell apart from `server.backend` and the ring knobs, else the median \
         blocking configuration). 1.0 = as fast as the reference.",
        if anchors.is_empty() { "none".into() } else { anchors.iter().map(|a| format!("{} = {} MB/s", a.short, f1(a.metric(m::THROUGHPUT).map_or(f64::NAN, |s| s.median)))).collect::<Vec<_>>().join(", ") }
    ));
    if candidates.is_empty() {
        return Ok(());
    }
    let more = if candidates.len() > TOP {
        format!(" (best {TOP} of {})", candidates.len())
    } else {
        String::new()
    };
    let c = charts::multi_log_chart(
        out,
        &format!("ratios-{tag}"),
        &MultiChart {
            title: format!("{wl}: throughput relative to references{more}"),
            x_label: "configuration throughput / reference throughput (log scale; 1 = equal)"
                .into(),
            series: series.clone(),
            reference: Some(1.0),
            rows: candidates
                .iter()
                .take(TOP)
                .map(|c| (c.short.clone(), row_vals(c)))
                .collect(),
        },
    )?;
    made.push(c.clone());
    doc.chart(c);
    let mut head = vec!["configuration".to_string(), "MB/s".to_string()];
    head.extend(series.iter().map(|s| format!("÷ {s}")));
    let head_ref: Vec<&str> = head.iter().map(|s| s.as_str()).collect();
    doc.table(
        &head_ref,
        candidates
            .iter()
            .map(|c| {
                let mut r = vec![
                    c.short.clone(),
                    opt(c.metric(m::THROUGHPUT).map(|s| s.median)),
                ];
                r.extend(
                    row_vals(c)
                        .into_iter()
                        .map(|v| v.map(|x| format!("{x:.2}×")).unwrap_or_else(|| "–".into())),
                );
                r
            })
            .collect(),
    );
    Ok(())
}

/// The ok run of `c` whose throughput is closest to the configuration's median.
pub fn median_run<'a>(rs: &'a ResultSet, c: &Config) -> Option<&'a crate::data::Run> {
    let med = c.metric(m::THROUGHPUT)?.median;
    c.runs
        .iter()
        .map(|&i| &rs.runs[i])
        .filter(|r| r.is_ok())
        .filter_map(|r| r.metric(m::THROUGHPUT).map(|t| (r, (t - med).abs())))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(r, _)| r)
}

#[allow(clippy::too_many_arguments)]
fn timeseries_section(
    rs: &ResultSet,
    sum: &Summary,
    _series: &HashMap<String, SeriesSummary>,
    rank: &[&Config],
    opts: &ReportOptions,
    out: &Path,
    doc: &mut Doc,
    made: &mut Vec<charts::ChartFiles>,
) -> Result<()> {
    doc.h(2, "Time series of one run");
    let run = match &opts.run {
        Some(id) => rs.runs.iter().find(|r| &r.run_id == id).ok_or_else(|| {
            Error::Usage(format!(
                "--run {id}: no run with that run_id in {}/runs.csv",
                rs.dir.display()
            ))
        })?,
        None => match median_run(rs, rank[0]) {
            Some(r) => r,
            None => {
                doc.p("No ok run to show.");
                return Ok(());
            }
        },
    };
    let cfg = sum
        .configs
        .iter()
        .find(|c| c.cell_id == run.cell_id && c.revision == run.revision);
    let Some(ts) = rs.timeseries(&run.run_id)? else {
        doc.p(format!(
            "Run `{}` has no time series ({} does not exist).",
            run.run_id,
            rs.timeseries_path(&run.run_id).display()
        ));
        return Ok(());
    };
    doc.p(format!(
        "Run `{}` ({}; {}), {} samples. {}",
        run.run_id,
        cfg.map(|c| c.short.as_str()).unwrap_or(""),
        run.dims
            .iter()
            .zip(&rs.dimensions)
            .map(|(v, n)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(";"),
        ts.t_s.len(),
        if opts.run.is_some() {
            "Chosen with --run."
        } else {
            "The median run of the best configuration (choose another with --run RUN_ID)."
        }
    ));
    let col = |name: &str| ts.column(name).map(|v| v.to_vec());
    let kib_to_mib = |name: &str| {
        ts.column(name)
            .map(|v| v.iter().map(|x| x.map(|k| k / 1024.0)).collect::<Vec<_>>())
    };
    let mut panels = Vec::new();
    let mk = |names: &[(&str, &str)],
              f: &dyn Fn(&str) -> Option<Vec<Option<f64>>>|
     -> Vec<(String, Vec<Option<f64>>)> {
        names
            .iter()
            .filter_map(|(n, label)| f(n).map(|v| (label.to_string(), v)))
            .collect()
    };
    for (label, names, mib) in [
        (
            "MB/s",
            &[
                (results_schema::series::THROUGHPUT, "recorder throughput"),
                (results_schema::series::DEV_MB_PER_S, "device"),
            ][..],
            false,
        ),
        (
            "device utilisation (%)",
            &[("dev_util_pct", "device util")][..],
            false,
        ),
        (
            "MiB",
            &[("dirty_kb", "Dirty"), ("writeback_kb", "Writeback")][..],
            true,
        ),
        (
            "CPU (% of one core / of machine)",
            &[
                ("cpu_user_pct", "user"),
                ("cpu_sys_pct", "sys"),
                ("cpu_iowait_pct", "iowait"),
                ("steal_pct", "steal"),
                ("recorder_cpu_pct", "recorder"),
                ("gen_cpu_pct", "generator"),
            ][..],
            false,
        ),
    ] {
        let s = if mib {
            mk(names, &kib_to_mib)
        } else {
            mk(names, &col)
        };
        if !s.is_empty() {
            panels.push(Panel {
                y_label: label.into(),
                series: s,
            });
        }
    }
    let c = charts::series_chart(
        out,
        "timeseries",
        &SeriesChart {
            title: format!(
                "Run {}: throughput, device, page cache and CPU over time",
                run.run_id
            ),
            t: ts.t_s.clone(),
            panels,
        },
    )?;
    made.push(c.clone());
    doc.chart(c);
    Ok(())
}

fn stability_section(
    rs: &ResultSet,
    sum: &Summary,
    series: &HashMap<String, SeriesSummary>,
    doc: &mut Doc,
) {
    doc.h(1, "Stability within runs");
    if series.is_empty() {
        doc.p("No time series in this sweep.");
        return;
    }
    let mut rows: Vec<(f64, f64, f64, f64, &Config, usize)> = Vec::new();
    for c in sum.configs.iter().filter(|c| c.is_recorder()) {
        let ss: Vec<&SeriesSummary> = c
            .runs
            .iter()
            .filter_map(|&i| series.get(&rs.runs[i].run_id))
            .collect();
        if ss.is_empty() {
            continue;
        }
        let stall = stats::mean(&ss.iter().map(|s| s.stall_fraction).collect::<Vec<_>>());
        let cov = stats::median(&ss.iter().map(|s| s.throughput_cov).collect::<Vec<_>>());
        let dirty = ss.iter().map(|s| s.dirty_kb_max).fold(0.0, f64::max);
        let wb = ss.iter().map(|s| s.writeback_kb_max).fold(0.0, f64::max);
        rows.push((stall, cov, dirty, wb, c, ss.len()));
    }
    rows.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.total_cmp(&a.1)));
    doc.p(format!(
        "From the time series of {} runs: share of samples in the measured window below half the run's median \
         throughput (stalls, e.g. write-back throttling) and the coefficient of variation of per-sample throughput. \
         The 15 least stable configurations:",
        series.len()
    ));
    doc.table(
        &[
            "configuration",
            "runs",
            "stalled samples",
            "throughput CoV",
            "max Dirty MiB",
            "max Writeback MiB",
        ],
        rows.iter()
            .take(15)
            .map(|(stall, cov, d, w, c, n)| {
                vec![
                    format!("{} ({})", c.short, c.workload),
                    n.to_string(),
                    format!("{:.1}%", stall * 100.0),
                    format!("{:.1}%", cov * 100.0),
                    f1(d / 1024.0),
                    f1(w / 1024.0),
                ]
            })
            .collect(),
    );
}

fn failures_section(rs: &ResultSet, sum: &Summary, doc: &mut Doc) {
    doc.h(1, "Unsupported, failed and rejected runs");
    let mut groups: BTreeMap<(Status, String), Vec<&crate::data::Run>> = BTreeMap::new();
    for r in rs.runs.iter().filter(|r| !r.is_ok()) {
        groups
            .entry((r.status, r.reason.clone()))
            .or_default()
            .push(r);
    }
    if groups.is_empty() {
        doc.p("Every run is ok.");
        return;
    }
    let short: HashMap<(&str, &str), &str> = sum
        .configs
        .iter()
        .map(|c| ((c.revision.as_str(), c.cell_id.as_str()), c.short.as_str()))
        .collect();
    doc.p("Never counted as zero throughput; an `unsupported` cell is what this kernel or device cannot do.");
    doc.table(
        &["status", "reason", "runs", "cells", "examples"],
        groups
            .iter()
            .map(|((st, reason), runs)| {
                let mut cells: Vec<&str> = runs.iter().map(|r| r.cell_id.as_str()).collect();
                cells.sort();
                cells.dedup();
                let ex: Vec<String> = runs
                    .iter()
                    .take(4)
                    .map(|r| {
                        format!(
                            "`{}` {}",
                            r.run_id,
                            short
                                .get(&(r.revision.as_str(), r.cell_id.as_str()))
                                .copied()
                                .unwrap_or("")
                        )
                    })
                    .collect();
                vec![
                    st.as_str().to_string(),
                    if reason.is_empty() {
                        "(no reason given)".into()
                    } else {
                        reason.clone()
                    },
                    runs.len().to_string(),
                    cells.len().to_string(),
                    ex.join("; ") + if runs.len() > 4 { "; …" } else { "" },
                ]
            })
            .collect(),
    );
    let all_bad: Vec<&Config> = sum
        .configs
        .iter()
        .filter(|c| c.all_unsupported_or_failed())
        .collect();
    if !all_bad.is_empty() {
        doc.p(format!(
            "{} configurations have no ok run at all.",
            all_bad.len()
        ));
    }
}

fn machine_section(rs: &ResultSet, doc: &mut Doc) {
    doc.h(1, "Machine and sweep");
    let mf = &rs.manifest;
    let s = |k: &str| -> String {
        match mf.get(k) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Null) | None => "–".into(),
            Some(v) => v.to_string(),
        }
    };
    let mem = mf
        .get("mem_total_kb")
        .and_then(|v| v.as_f64())
        .map(|k| format!("{:.1} GiB", k / 1048576.0))
        .unwrap_or_else(|| "–".into());
    let mut rows = vec![
        vec!["kernel".into(), s("kernel")],
        vec!["CPU".into(), s("cpu_model")],
        vec!["cores".into(), s("cores")],
        vec!["memory".into(), mem],
        vec!["git revision".into(), s("git_rev")],
    ];
    if let Some(revs) = mf.get("revisions").and_then(|v| v.as_object()) {
        rows.push(vec![
            "revisions".into(),
            revs.iter()
                .map(|(k, v)| format!("{k} = {}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    rows.push(vec![
        "command line".into(),
        format!("`{}`", s("command_line")),
    ]);
    rows.push(vec![
        "started / finished".into(),
        format!("{} / {}", s("started_at"), s("finished_at")),
    ]);
    rows.push(vec!["experiment file".into(), s("experiment_file")]);
    if let Some(t) = mf.get("target").and_then(|v| v.as_object()) {
        let g = |k: &str| t.get(k).and_then(|v| v.as_str()).unwrap_or("–").to_string();
        rows.push(vec![
            "target".into(),
            format!(
                "{} `{}` on {} ({}), fs {} ({})",
                g("kind"),
                g("path"),
                g("device"),
                g("model"),
                g("fs"),
                g("mount_options")
            ),
        ]);
        if let Some(q) = t.get("queue").and_then(|v| v.as_object()) {
            rows.push(vec![
                "queue settings before the sweep".into(),
                q.iter()
                    .map(|(k, v)| {
                        format!(
                            "{k}={}",
                            v.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string())
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            ]);
        }
    }
    doc.table(&["", "value"], rows);
    if let Some(h) = mf.get("hwloc_topology").and_then(|v| v.as_str()) {
        doc.p("Topology (hwloc):");
        doc.pre(h);
    }
    if let Some(x) = mf.get("experiment").and_then(|v| v.as_str()) {
        doc.p("Experiment:");
        doc.pre(x);
    }
}

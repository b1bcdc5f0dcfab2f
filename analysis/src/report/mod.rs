//! `analysis report DIR`: DIR/report/report.md, report.html (charts inlined as SVG) and
//! every chart as PNG and SVG.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

mod by;
mod effects;
mod efficiency;
mod floor;
mod ranking;
mod ratios;
mod runs;
mod summary;

pub use effects::{main_effects, Effect};
pub use ratios::anchor_workloads;
pub use runs::median_run;

use crate::aggregate::{Config, Summary};
use crate::charts;
use crate::data::{m, ResultSet, SeriesSummary, Status};
use crate::doc::Doc;
use crate::error::{Error, Result};

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
    /// Dimensions or options (`opt.net.send`) to group each workload's configurations by.
    pub by: Vec<String>,
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

pub(crate) fn f1(v: f64) -> String {
    charts::num(v)
}

pub(crate) fn opt(v: Option<f64>) -> String {
    v.map(f1).unwrap_or_else(|| "–".into())
}

pub(crate) fn pct(r: f64) -> String {
    format!("{:+.1}%", (r - 1.0) * 100.0)
}

pub fn report(dir: &Path, opts: &ReportOptions) -> Result<ReportOutput> {
    let t0 = Instant::now();
    let rs = ResultSet::load(dir)?;
    by::check_names(&rs, &opts.by)?;
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
    let ctx = Ctx {
        rs: &rs,
        sum: &sum,
        series: &series,
        out: &out,
        opts,
    };
    build(&ctx, &mut doc, &mut charts_made)?;
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

/// What every section needs.
pub(crate) struct Ctx<'a> {
    pub rs: &'a ResultSet,
    pub sum: &'a Summary,
    pub series: &'a HashMap<String, SeriesSummary>,
    pub out: &'a Path,
    pub opts: &'a ReportOptions,
}

/// One recorder workload as the report presents it.
pub(crate) struct Workload<'a> {
    pub name: String,
    pub tag: String,
    /// Open loop (paced ingest): ranked by ack latency, throughput shown as acked vs offered.
    pub open_loop: bool,
    /// The metric configurations are ranked by: throughput (closed loop) or ack p99.
    pub metric: usize,
    /// Configurations with the metric, best first.
    pub rank: Vec<&'a Config>,
    /// Dimensions (indexes) with more than one value among this workload's configurations.
    pub varying: Vec<usize>,
}

/// Whether most ok runs of a workload are open loop.
pub fn is_open_loop(rs: &ResultSet, wl: &str) -> bool {
    let runs: Vec<&crate::data::Run> = rs
        .runs
        .iter()
        .filter(|r| r.kind == "recorder" && r.workload == wl && r.is_ok())
        .collect();
    !runs.is_empty() && runs.iter().filter(|r| r.open_loop()).count() * 2 > runs.len()
}

impl<'a> Workload<'a> {
    pub fn new(rs: &ResultSet, sum: &'a Summary, wl: &str) -> Workload<'a> {
        let open_loop = is_open_loop(rs, wl);
        let mut metric = if open_loop { m::ACK_P99 } else { m::THROUGHPUT };
        let mut rank = ranked(sum, wl, metric);
        if rank.is_empty() && open_loop {
            metric = m::THROUGHPUT;
            rank = ranked(sum, wl, metric);
        }
        let varying = (0..rs.dimensions.len())
            .filter(|&k| {
                let mut v: Vec<&str> = rank.iter().map(|c| c.dims[k].as_str()).collect();
                v.sort();
                v.dedup();
                v.len() > 1
            })
            .collect();
        Workload {
            name: wl.to_string(),
            tag: sanitize(wl),
            open_loop,
            metric,
            rank,
            varying,
        }
    }
}

fn build(ctx: &Ctx, doc: &mut Doc, made: &mut Vec<charts::ChartFiles>) -> Result<()> {
    let (rs, sum) = (ctx.rs, ctx.sum);
    let wls: Vec<Workload> = workloads(rs)
        .iter()
        .map(|w| Workload::new(rs, sum, w))
        .collect();
    summary::summary(ctx, &wls, doc);
    overview(rs, sum, doc);
    if wls.is_empty() {
        doc.p("No recorder runs in this sweep: only anchors or nothing was measured.");
    }
    let mut chosen_run_done = false;
    for (wi, w) in wls.iter().enumerate() {
        doc.h(1, format!("Workload `{}`", w.name));
        if w.rank.is_empty() {
            doc.p("No configuration of this workload has an ok run with a throughput.");
            continue;
        }
        if w.open_loop && w.metric == m::ACK_P99 {
            ranking::open_loop_section(ctx, w, doc);
        } else {
            ranking::best_paragraph(w, doc);
            ranking::throughput_section(ctx, w, doc, made)?;
        }
        ranking::latency_section(ctx, w, doc, made)?;
        if wi == 0 || w.rank.len() > 3 {
            effects::heatmaps_and_effects(ctx, w, doc, made)?;
        }
        for name in &ctx.opts.by {
            by::by_section(ctx, w, name, doc);
        }
        efficiency::efficiency_section(ctx, w, doc, made)?;
        ratios::ratios_section(ctx, w, doc, made)?;
        if !chosen_run_done && (ctx.opts.run.is_none() || wi == 0) {
            runs::timeseries_section(ctx, w, doc, made)?;
            chosen_run_done = true;
        }
    }
    floor::floor_section(ctx, doc);
    runs::stability_section(ctx, doc);
    runs::failures_section(rs, sum, doc);
    runs::machine_section(rs, doc);
    Ok(())
}

pub(crate) fn sanitize(s: &str) -> String {
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
        .map(|&k| {
            let set: Vec<&str> = sum.dim_values[k]
                .iter()
                .map(String::as_str)
                .filter(|v| !v.is_empty())
                .collect();
            let unset = set.len() < sum.dim_values[k].len();
            format!(
                "`{}` ({}{})",
                rs.dimensions[k],
                set.join(", "),
                if unset { "; not set in some cells" } else { "" }
            )
        })
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
        "Every figure per configuration is the median over its ok repetitions. An interval is a 90% interval of \
         that median (distribution-free, from order statistics with exact binomial coverage), given only from 5 \
         repetitions on; with fewer the report says *range* and gives min–max. Runs whose status is not `ok` are \
         never counted as zero: \
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

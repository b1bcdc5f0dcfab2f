//! `analysis compare BASE_DIR HEAD_DIR`: paired regression verdicts
//! (shared/reference/measurement-method.md, docs/analysis.md).
//!
//! Per cell, base and head runs are paired (by the `pair` column when both sides have it,
//! else by repetition order). Per pair the log ratio is taken, oriented so that a positive
//! value means "head is worse". Verdicts per configuration and metric:
//! - REGRESSION: one-sided Wilcoxon signed-rank p < 0.01 and median ratio worse than delta;
//! - IMPROVED: the mirror image;
//! - SAME: the 90% bootstrap interval of the median log ratio lies within +-delta;
//! - INCONCLUSIVE: anything else.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::aggregate::{higher_is_better, short_label, Summary};
use crate::charts::{self, BarChart, BarRow};
use crate::data::{m, metric_index, ResultSet, Run};
use crate::doc::Doc;
use crate::error::{Error, Result};
use crate::stats::{self, Interval};

pub const ALPHA: f64 = 0.01;
/// Smallest delta for throughput-like metrics.
pub const DELTA_FLOOR: f64 = 0.03;
/// Delta for latency percentiles.
pub const DELTA_LATENCY: f64 = 0.10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Regression,
    Improved,
    Inconclusive,
    Same,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Regression => "REGRESSION",
            Verdict::Improved => "IMPROVED",
            Verdict::Inconclusive => "INCONCLUSIVE",
            Verdict::Same => "SAME",
        }
    }
}

/// Resolves a metric name: `throughput`, `p99`, `p50`, `p999`, `cpu`, `efficiency`, or a column.
pub fn resolve_metric(name: &str) -> Result<usize> {
    let idx = match name.trim() {
        "throughput" | "tp" => Some(m::THROUGHPUT),
        "p99" | "latency" => Some(m::ACK_P99),
        "p50" => Some(m::ACK_P50),
        "p999" | "p99.9" => Some(m::ACK_P999),
        "cpu" | "efficiency" | "cpu_s_per_gib" => Some(m::CPU_S_PER_GIB),
        other => metric_index(other),
    };
    idx.ok_or_else(|| {
        Error::Usage(format!(
            "unknown metric {name:?}; use throughput, p99, p50, p999, cpu or a metric column of runs.csv ({})",
            crate::data::METRICS.join(", ")
        ))
    })
}

/// Delta of a metric and how it was derived.
#[derive(Clone, Debug)]
pub struct Margin {
    pub metric: usize,
    /// A/A spread: median |ln(x_i/x_j)| over same-build, same-cell run pairs (None if no cell has 2 ok runs).
    pub aa_spread: Option<f64>,
    pub aa_pairs: usize,
    /// delta as a fraction (0.05 = 5%).
    pub delta: f64,
    pub rule: String,
}

#[derive(Clone, Debug)]
pub struct Row {
    pub cell_id: String,
    pub label: String,
    pub kind: String,
    pub workload: String,
    pub metric: usize,
    pub pairs: usize,
    /// Median of head/base.
    pub ratio: f64,
    /// 90% bootstrap interval of the median head/base ratio.
    pub ci: (f64, f64),
    /// One-sided p-values: head worse / head better.
    pub p_worse: f64,
    pub p_better: f64,
    pub delta: f64,
    pub verdict: Verdict,
}

#[derive(Clone, Debug)]
pub struct Excluded {
    pub cell_id: String,
    pub side: &'static str,
    pub run_id: String,
    pub status: String,
    pub reason: String,
}

pub struct Comparison {
    pub base_dir: PathBuf,
    pub head_dir: PathBuf,
    pub rows: Vec<Row>,
    pub margins: Vec<Margin>,
    pub excluded: Vec<Excluded>,
    /// Runs with no partner on the other side.
    pub unpaired: Vec<(String, &'static str, String)>,
    pub markdown: PathBuf,
    pub charts: Vec<charts::ChartFiles>,
}

impl Comparison {
    pub fn any_regression(&self) -> bool {
        self.rows.iter().any(|r| r.verdict == Verdict::Regression)
    }

    pub fn count(&self, v: Verdict) -> usize {
        self.rows.iter().filter(|r| r.verdict == v).count()
    }

    /// The summary table as aligned text (stdout).
    pub fn summary_text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "compare {} (base) -> {} (head): {} REGRESSION, {} IMPROVED, {} INCONCLUSIVE, {} SAME; {} runs excluded (status not ok), {} unpaired",
            self.base_dir.display(),
            self.head_dir.display(),
            self.count(Verdict::Regression),
            self.count(Verdict::Improved),
            self.count(Verdict::Inconclusive),
            self.count(Verdict::Same),
            self.excluded.len(),
            self.unpaired.len()
        );
        let w = self
            .rows
            .iter()
            .map(|r| r.label.chars().count())
            .max()
            .unwrap_or(13)
            .clamp(13, 60);
        let _ = writeln!(
            o,
            "{:<12} {:<w$} {:<18} {:>5} {:>9} {:>19} {:>9} {:>6}",
            "verdict",
            "configuration",
            "metric",
            "pairs",
            "head/base",
            "90% interval",
            "p(worse)",
            "delta"
        );
        for r in &self.rows {
            let _ = writeln!(
                o,
                "{:<12} {:<w$} {:<18} {:>5} {:>+8.1}% {:>+8.1}% … {:>+6.1}% {:>9.4} {:>5.1}%",
                r.verdict.as_str(),
                charts::ellipsize(&r.label, w),
                crate::aggregate::metric_title(r.metric),
                r.pairs,
                (r.ratio - 1.0) * 100.0,
                (r.ci.0 - 1.0) * 100.0,
                (r.ci.1 - 1.0) * 100.0,
                r.p_worse,
                r.delta * 100.0
            );
        }
        o
    }
}

/// `cell metric (label)` of every REGRESSION in `first` that is also a REGRESSION in `second`.
pub fn confirmed_regressions(first: &Comparison, second: &Comparison) -> Vec<String> {
    first
        .rows
        .iter()
        .filter(|r| r.verdict == Verdict::Regression)
        .filter(|r| {
            second.rows.iter().any(|s| {
                s.cell_id == r.cell_id && s.metric == r.metric && s.verdict == Verdict::Regression
            })
        })
        .map(|r| {
            format!(
                "{} {} ({})",
                r.cell_id,
                crate::aggregate::metric_title(r.metric),
                r.label
            )
        })
        .collect()
}

/// Rows of `rs` that belong to `side` ("base"/"head"): an A/B directory holding both
/// revisions contributes only its own side; a plain sweep contributes every row.
fn side_runs<'a>(rs: &'a ResultSet, side: &str) -> Vec<&'a Run> {
    let revs = rs.revisions();
    let ab = revs.iter().any(|r| r == "base") && revs.iter().any(|r| r == "head");
    rs.runs
        .iter()
        .filter(|r| !ab || r.revision == side)
        .collect()
}

fn by_cell<'a>(runs: &[&'a Run]) -> BTreeMap<&'a str, Vec<&'a Run>> {
    let mut out: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
    for r in runs {
        out.entry(r.cell_id.as_str()).or_default().push(r);
    }
    out
}

fn only_cell<'a>(
    m: &BTreeMap<&'a str, Vec<&'a Run>>,
    cell: &str,
) -> BTreeMap<&'a str, Vec<&'a Run>> {
    m.get_key_value(cell)
        .map(|(k, v)| BTreeMap::from([(*k, v.clone())]))
        .unwrap_or_default()
}

fn is_latency(k: usize) -> bool {
    matches!(
        k,
        m::ACK_P50 | m::ACK_P99 | m::ACK_P999 | m::ACK_MAX | m::REQ_P50 | m::REQ_P99
    )
}

/// Median |ln(x_i / x_j)| over every pair of ok runs of the same cell within one build.
pub fn aa_spread(groups: &[&BTreeMap<&str, Vec<&Run>>], metric: usize) -> (Option<f64>, usize) {
    let mut d = Vec::new();
    for g in groups {
        for runs in g.values() {
            let v: Vec<f64> = runs
                .iter()
                .filter(|r| r.is_ok())
                .filter_map(|r| r.metric(metric))
                .filter(|x| *x > 0.0)
                .collect();
            for i in 0..v.len() {
                for j in (i + 1)..v.len().min(i + 50) {
                    d.push((v[i] / v[j]).ln().abs());
                }
            }
        }
    }
    let n = d.len();
    ((n > 0).then(|| stats::median(&d)), n)
}

pub fn compare(
    base_dir: &Path,
    head_dir: &Path,
    metric_names: &[String],
    out: Option<&Path>,
) -> Result<Comparison> {
    let metrics: Vec<usize> = {
        let mut v = Vec::new();
        for n in metric_names {
            let k = resolve_metric(n)?;
            if !v.contains(&k) {
                v.push(k);
            }
        }
        v
    };
    let (base, head) = rayon::join(|| ResultSet::load(base_dir), || ResultSet::load(head_dir));
    let (base, head) = (base?, head?);
    let b_runs = side_runs(&base, "base");
    let h_runs = side_runs(&head, "head");
    let b_cells = by_cell(&b_runs);
    let h_cells = by_cell(&h_runs);
    let summary = Summary::build(&head);

    // Pairing.
    let mut pairs: BTreeMap<&str, Vec<(&Run, &Run)>> = BTreeMap::new();
    let mut excluded = Vec::new();
    let mut unpaired = Vec::new();
    let use_pair_col = b_runs.iter().chain(h_runs.iter()).all(|r| r.pair.is_some());
    for (cell, hb) in &h_cells {
        let Some(bb) = b_cells.get(cell) else {
            for r in hb {
                unpaired.push((r.run_id.clone(), "head", "cell not in base".to_string()));
            }
            continue;
        };
        let matched: Vec<(Option<&Run>, Option<&Run>)> = if use_pair_col {
            let bm: HashMap<u32, &Run> = bb.iter().map(|r| (r.pair.unwrap_or(0), *r)).collect();
            let hm: HashMap<u32, &Run> = hb.iter().map(|r| (r.pair.unwrap_or(0), *r)).collect();
            let mut keys: Vec<u32> = bm.keys().chain(hm.keys()).copied().collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .map(|k| (bm.get(&k).copied(), hm.get(&k).copied()))
                .collect()
        } else {
            let mut bs = bb.clone();
            let mut hs = hb.clone();
            bs.sort_by_key(|r| r.rep);
            hs.sort_by_key(|r| r.rep);
            (0..bs.len().max(hs.len()))
                .map(|i| (bs.get(i).copied(), hs.get(i).copied()))
                .collect()
        };
        for (b, h) in matched {
            match (b, h) {
                (Some(b), Some(h)) => {
                    let mut ok = true;
                    for (side, r) in [("base", b), ("head", h)] {
                        if !r.is_ok() {
                            ok = false;
                            excluded.push(Excluded {
                                cell_id: cell.to_string(),
                                side,
                                run_id: r.run_id.clone(),
                                status: r.status.as_str().into(),
                                reason: r.reason.clone(),
                            });
                        }
                    }
                    if ok {
                        pairs.entry(cell).or_default().push((b, h));
                    }
                }
                (Some(r), None) => unpaired.push((
                    r.run_id.clone(),
                    "base",
                    "no head run with the same pair".into(),
                )),
                (None, Some(r)) => unpaired.push((
                    r.run_id.clone(),
                    "head",
                    "no base run with the same pair".into(),
                )),
                (None, None) => {}
            }
        }
    }
    for (cell, bb) in &b_cells {
        if !h_cells.contains_key(cell) {
            for r in bb {
                unpaired.push((r.run_id.clone(), "base", "cell not in head".to_string()));
            }
        }
    }

    // Margins.
    let margins: Vec<Margin> = metrics
        .iter()
        .map(|&k| {
            let (spread, n) = aa_spread(&[&b_cells, &h_cells], k);
            let latency = is_latency(k);
            let (delta, rule) = if latency {
                (
                    DELTA_LATENCY,
                    "fixed 10% for latency percentiles".to_string(),
                )
            } else {
                match spread {
                    Some(s) => {
                        let twice = (2.0 * s).exp() - 1.0;
                        (
                            DELTA_FLOOR.max(twice),
                            format!(
                                "max(3%, 2 × A/A spread {:.2}% = {:.2}%) over all cells; per cell, the same rule on that cell's own runs when it has at least 4 per build (the delta column)",
                                (s.exp() - 1.0) * 100.0,
                                twice * 100.0
                            ),
                        )
                    }
                    None => (
                        DELTA_FLOOR,
                        "3% (no cell has two ok runs in one build: A/A spread unknown)".into(),
                    ),
                }
            };
            Margin {
                metric: k,
                aa_spread: spread,
                aa_pairs: n,
                delta,
                rule,
            }
        })
        .collect();

    // Verdicts, in parallel over cells.
    let labels: HashMap<&str, (String, String, String)> = summary
        .configs
        .iter()
        .map(|c| {
            (
                c.cell_id.as_str(),
                (c.short.clone(), c.kind.clone(), c.workload.clone()),
            )
        })
        .collect();
    let cells: Vec<(&str, &Vec<(&Run, &Run)>)> = pairs.iter().map(|(c, p)| (*c, p)).collect();
    let mut rows: Vec<Row> = cells
        .par_iter()
        .flat_map_iter(|(cell, ps)| {
            let (label, kind, workload) = labels.get(cell).cloned().unwrap_or_else(|| {
                let r = ps[0].1;
                (
                    short_label(&head.dimensions, &r.dims, &summary.dim_values),
                    r.kind.clone(),
                    r.workload.clone(),
                )
            });
            let label = format!("{label} ({workload})");
            margins
                .iter()
                .filter_map(|mg| {
                    let k = mg.metric;
                    // The margin is derived from this cell's own same-build spread when
                    // it has repetitions: one noisy cell (say, serving) must not widen
                    // the margin of a quiet one (ingest).
                    let delta = if is_latency(k) {
                        mg.delta
                    } else {
                        let (ob, oh) = (only_cell(&b_cells, cell), only_cell(&h_cells, cell));
                        match aa_spread(&[&ob, &oh], k) {
                            (Some(sp), n) if n >= 12 => DELTA_FLOOR.max((2.0 * sp).exp() - 1.0),
                            _ => mg.delta,
                        }
                    };
                    let w: Vec<f64> = ps
                        .iter()
                        .filter_map(|(b, h)| {
                            let (x, y) = (b.metric(k)?, h.metric(k)?);
                            (x > 0.0 && y > 0.0).then(|| {
                                if higher_is_better(k) {
                                    (x / y).ln()
                                } else {
                                    (y / x).ln()
                                }
                            })
                        })
                        .collect();
                    if w.is_empty() {
                        return None;
                    }
                    Some(verdict_row(cell, &label, &kind, &workload, k, &w, delta))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    rows.sort_by(|a, b| {
        a.verdict.cmp(&b.verdict).then_with(|| {
            let wa = if higher_is_better(a.metric) {
                -a.ratio.ln()
            } else {
                a.ratio.ln()
            };
            let wb = if higher_is_better(b.metric) {
                -b.ratio.ln()
            } else {
                b.ratio.ln()
            };
            wb.total_cmp(&wa)
        })
    });

    let md_path = match out {
        Some(p) => p.to_path_buf(),
        None => head_dir.join("compare").join("compare.md"),
    };
    let out_dir = md_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&out_dir).map_err(|e| Error::io(&out_dir, "create", e))?;
    let mut cmp = Comparison {
        base_dir: base_dir.to_path_buf(),
        head_dir: head_dir.to_path_buf(),
        rows,
        margins,
        excluded,
        unpaired,
        markdown: md_path.clone(),
        charts: Vec::new(),
    };
    let mut doc = Doc::new(format!(
        "Compare: {} → {}",
        base_dir.display(),
        head_dir.display()
    ));
    let mut made = Vec::new();
    write_doc(&cmp, &base, &head, &out_dir, &mut doc, &mut made)?;
    cmp.charts = made;
    std::fs::write(&md_path, doc.to_markdown()).map_err(|e| Error::io(&md_path, "write", e))?;
    Ok(cmp)
}

/// The verdict for one configuration and metric from oriented log ratios `w` (positive = worse).
pub fn verdict_row(
    cell: &str,
    label: &str,
    kind: &str,
    workload: &str,
    metric: usize,
    w: &[f64],
    delta: f64,
) -> Row {
    let wil = stats::wilcoxon_signed_rank(w);
    let ci: Interval = stats::bootstrap_median_ci(w, 0.90, stats::BOOT_RESAMPLES, stats::BOOT_SEED);
    let d = (1.0 + delta).ln();
    let med = ci.estimate;
    let verdict = if wil.p_greater < ALPHA && med > d {
        Verdict::Regression
    } else if wil.p_less < ALPHA && med < -d {
        Verdict::Improved
    } else if ci.within(-d, d) {
        Verdict::Same
    } else {
        Verdict::Inconclusive
    };
    // Back to head/base ratios.
    let to_ratio = |x: f64| {
        if higher_is_better(metric) {
            (-x).exp()
        } else {
            x.exp()
        }
    };
    let (a, b) = (to_ratio(ci.lo), to_ratio(ci.hi));
    Row {
        cell_id: cell.to_string(),
        label: label.to_string(),
        kind: kind.to_string(),
        workload: workload.to_string(),
        metric,
        pairs: w.len(),
        ratio: to_ratio(med),
        ci: (a.min(b), a.max(b)),
        p_worse: wil.p_greater,
        p_better: wil.p_less,
        delta,
        verdict,
    }
}

fn write_doc(
    c: &Comparison,
    base: &ResultSet,
    head: &ResultSet,
    out_dir: &Path,
    doc: &mut Doc,
    charts_made: &mut Vec<charts::ChartFiles>,
) -> Result<()> {
    let rev = |rs: &ResultSet| {
        rs.manifest
            .get("git_rev")
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_string()
    };
    doc.p(format!(
        "Base `{}` (rev {}), head `{}` (rev {}). **{} REGRESSION, {} IMPROVED, {} INCONCLUSIVE, {} SAME.** \
         Exit code 1 only on a REGRESSION.",
        c.base_dir.display(),
        rev(base),
        c.head_dir.display(),
        rev(head),
        c.count(Verdict::Regression),
        c.count(Verdict::Improved),
        c.count(Verdict::Inconclusive),
        c.count(Verdict::Same)
    ));
    doc.p(
        "Method: runs of the same cell are paired (by the `pair` column, else by repetition order); per pair the log \
         ratio head/base. REGRESSION: one-sided Wilcoxon signed-rank p < 0.01 (exact up to 30 pairs, normal \
         approximation with tie correction beyond) and median ratio worse than delta. IMPROVED: the mirror image. \
         SAME: the 90% bootstrap interval (4000 resamples, fixed seed) of the median ratio lies within ±delta. \
         Otherwise INCONCLUSIVE: add pairs. Fewer than 7 pairs can never reach p < 0.01.",
    );
    doc.h(1, "Margins");
    doc.table(
        &["metric", "delta", "how", "A/A run pairs"],
        c.margins
            .iter()
            .map(|mg| {
                vec![
                    crate::aggregate::metric_title(mg.metric).into(),
                    format!("{:.1}%", mg.delta * 100.0),
                    mg.rule.clone(),
                    mg.aa_pairs.to_string(),
                ]
            })
            .collect(),
    );
    doc.h(1, "Verdicts");
    doc.table(
        &[
            "verdict",
            "configuration",
            "metric",
            "pairs",
            "head/base",
            "90% interval",
            "p(worse)",
            "p(better)",
            "delta",
            "cell",
        ],
        c.rows
            .iter()
            .map(|r| {
                vec![
                    if r.verdict == Verdict::Regression {
                        format!("**{}**", r.verdict.as_str())
                    } else {
                        r.verdict.as_str().into()
                    },
                    r.label.clone(),
                    crate::aggregate::metric_title(r.metric).into(),
                    r.pairs.to_string(),
                    format!("{:+.1}%", (r.ratio - 1.0) * 100.0),
                    format!(
                        "{:+.1}% … {:+.1}%",
                        (r.ci.0 - 1.0) * 100.0,
                        (r.ci.1 - 1.0) * 100.0
                    ),
                    format!("{:.4}", r.p_worse),
                    format!("{:.4}", r.p_better),
                    format!("±{:.1}%", r.delta * 100.0),
                    format!("`{}`", r.cell_id),
                ]
            })
            .collect(),
    );
    for mg in &c.margins {
        let mut rows: Vec<&Row> = c.rows.iter().filter(|r| r.metric == mg.metric).collect();
        if rows.is_empty() {
            continue;
        }
        rows.truncate(crate::report::TOP);
        let name = match mg.metric {
            m::THROUGHPUT => "throughput".to_string(),
            m::ACK_P99 => "p99".to_string(),
            m::CPU_S_PER_GIB => "cpu".to_string(),
            k => crate::data::METRICS[k].to_string(),
        };
        let chart = charts::bar_chart(
            out_dir,
            &format!("compare-{name}"),
            &BarChart {
                title: format!(
                    "{}: head vs base per configuration{}",
                    crate::aggregate::metric_title(mg.metric),
                    if c.rows.iter().filter(|r| r.metric == mg.metric).count() > rows.len() { format!(" (first {})", rows.len()) } else { String::new() }
                ),
                x_label: format!(
                    "head/base − 1 (%), dot = median over pairs, line = 90% interval; green band = ±delta ({:.1}%); {}",
                    mg.delta * 100.0,
                    if higher_is_better(mg.metric) { "higher is better" } else { "lower is better" }
                ),
                rows: rows
                    .iter()
                    .map(|r| BarRow {
                        label: format!("{} [{}]", r.label, r.verdict.as_str()),
                        value: (r.ratio - 1.0) * 100.0,
                        lo: Some((r.ci.0 - 1.0) * 100.0),
                        hi: Some((r.ci.1 - 1.0) * 100.0),
                        points: vec![],
                        color: match r.verdict {
                            Verdict::Regression => charts::RED,
                            Verdict::Improved => charts::GREEN,
                            Verdict::Same => charts::BLUE,
                            Verdict::Inconclusive => charts::ORANGE,
                        },
                    })
                    .collect(),
                bars: false,
                reference: Some(0.0),
                band: Some((-mg.delta * 100.0, mg.delta * 100.0)),
                legend: vec![
                    (charts::RED, "REGRESSION".into()),
                    (charts::GREEN, "IMPROVED".into()),
                    (charts::ORANGE, "INCONCLUSIVE".into()),
                    (charts::BLUE, "SAME".into()),
                ],
            },
        )?;
        charts_made.push(chart.clone());
        doc.chart(chart);
    }
    doc.h(1, "Excluded runs");
    if c.excluded.is_empty() && c.unpaired.is_empty() {
        doc.p("None: every run is ok and paired.");
    } else {
        doc.p("A pair is dropped when either run's status is not `ok`; grouped by side, status and reason.");
        let mut groups: BTreeMap<(String, String, String), Vec<String>> = BTreeMap::new();
        for x in &c.excluded {
            groups
                .entry((x.side.to_string(), x.status.clone(), x.reason.clone()))
                .or_default()
                .push(x.run_id.clone());
        }
        for (id, side, why) in &c.unpaired {
            groups
                .entry((side.to_string(), "unpaired".into(), why.clone()))
                .or_default()
                .push(id.clone());
        }
        let rows = groups
            .into_iter()
            .map(|((side, status, reason), ids)| {
                let mut shown: Vec<String> =
                    ids.iter().take(12).map(|i| format!("`{i}`")).collect();
                if ids.len() > 12 {
                    shown.push(format!("… {} more", ids.len() - 12));
                }
                vec![
                    side,
                    status,
                    if reason.is_empty() {
                        "(no reason given)".into()
                    } else {
                        reason
                    },
                    ids.len().to_string(),
                    shown.join(" "),
                ]
            })
            .collect();
        doc.table(&["side", "status", "reason", "runs", "run ids"], rows);
    }
    Ok(())
}

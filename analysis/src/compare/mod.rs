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
//!
//! delta and whether a verdict may fail the build come from [`margin`]. Two sweeps of
//! different experiments are refused ([`identity`]).

pub mod identity;
pub mod margin;
mod output;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::aggregate::{higher_is_better, short_label, Summary};
use crate::charts;
use crate::data::{m, metric_index, ResultSet, Run};
use crate::doc::Doc;
use crate::error::{Error, Result};
use crate::stats::{self, Interval};
use margin::{CellMargin, MarginInputs};

pub const ALPHA: f64 = 0.01;

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

/// Resolves a metric name: `throughput`, `p99`, `p90`, `p50`, `p999`, `cpu`,
/// `efficiency`, or a column.
pub fn resolve_metric(name: &str) -> Result<usize> {
    let idx = match name.trim() {
        "throughput" | "tp" => Some(m::THROUGHPUT),
        "p99" | "latency" => Some(m::ACK_P99),
        "p90" => Some(m::ACK_P90),
        "p50" => Some(m::ACK_P50),
        "p999" | "p99.9" => Some(m::ACK_P999),
        "cpu" | "efficiency" | "cpu_s_per_gib" => Some(m::CPU_S_PER_GIB),
        other => metric_index(results_schema::canonical(other)),
    };
    idx.ok_or_else(|| {
        Error::Usage(format!(
            "unknown metric {name:?}; use auto, throughput, p50, p90, p99, p999, cpu or a metric column of runs.csv ({})",
            crate::data::METRICS.join(", ")
        ))
    })
}

/// How to compare.
#[derive(Clone, Debug, Default)]
pub struct CompareOptions {
    /// Metric names; empty or `auto` = each cell's defaults ([`margin::default_metrics`]).
    pub metrics: Vec<String>,
    /// Where compare.md goes (default HEAD_DIR/compare/compare.md).
    pub out: Option<PathBuf>,
    /// A same-build (A/A) sweep of the same experiment measured in the same job: margins
    /// from its pairs.
    pub aa: Option<PathBuf>,
    /// Compare sweeps of different experiments (cells of one id that differ are still
    /// never paired).
    pub allow_different: bool,
}

impl CompareOptions {
    pub fn metrics(names: &[&str]) -> CompareOptions {
        CompareOptions {
            metrics: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }
}

/// A summary of the margins of one metric over the cells.
#[derive(Clone, Debug)]
pub struct Margin {
    pub metric: usize,
    pub delta_min: f64,
    pub delta_max: f64,
    pub cells: usize,
    /// How the deltas were obtained (sources with their counts).
    pub rule: String,
}

#[derive(Clone, Debug)]
pub struct Row {
    pub cell_id: String,
    pub label: String,
    pub kind: String,
    pub workload: String,
    pub open_loop: bool,
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
    pub margin: CellMargin,
    pub verdict: Verdict,
    /// Whether this verdict may fail the build (exit 1 on REGRESSION).
    pub gated: bool,
    /// Why it is not gated (empty when gated).
    pub note: String,
    /// Open loop: median offered (sent) MB/s, head and base.
    pub offered: Option<(f64, f64)>,
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
    pub aa_dir: Option<PathBuf>,
    pub rows: Vec<Row>,
    pub margins: Vec<Margin>,
    pub excluded: Vec<Excluded>,
    /// Runs with no partner on the other side.
    pub unpaired: Vec<(String, &'static str, String)>,
    /// Why the two sweeps are not the same experiment (compared anyway: --allow-different-experiments).
    pub differences: Vec<String>,
    pub markdown: PathBuf,
    pub charts: Vec<charts::ChartFiles>,
}

impl Comparison {
    /// A gated REGRESSION: the build fails.
    pub fn any_regression(&self) -> bool {
        self.rows
            .iter()
            .any(|r| r.gated && r.verdict == Verdict::Regression)
    }

    /// Gated verdicts of one kind.
    pub fn count(&self, v: Verdict) -> usize {
        self.rows
            .iter()
            .filter(|r| r.gated && r.verdict == v)
            .count()
    }

    pub fn summary_text(&self) -> String {
        output::summary_text(self)
    }

    pub fn to_json(&self) -> serde_json::Value {
        output::to_json(self)
    }
}

/// `cell metric (label)` of every gated REGRESSION in `first` that is also one in `second`.
pub fn confirmed_regressions(first: &Comparison, second: &Comparison) -> Vec<String> {
    first
        .rows
        .iter()
        .filter(|r| r.gated && r.verdict == Verdict::Regression)
        .filter(|r| {
            second.rows.iter().any(|s| {
                s.cell_id == r.cell_id
                    && s.metric == r.metric
                    && s.gated
                    && s.verdict == Verdict::Regression
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

/// The pairs of two sides: per cell, (base, head) runs both ok; plus what was excluded
/// or left without a partner. Cells whose keys differ (`skip`) are never paired.
struct Pairing<'a> {
    pairs: BTreeMap<&'a str, Vec<(&'a Run, &'a Run)>>,
    excluded: Vec<Excluded>,
    unpaired: Vec<(String, &'static str, String)>,
}

fn pair_up<'a>(
    b_cells: &BTreeMap<&'a str, Vec<&'a Run>>,
    h_cells: &BTreeMap<&'a str, Vec<&'a Run>>,
    skip: &dyn Fn(&str) -> bool,
) -> Pairing<'a> {
    let mut pairs: BTreeMap<&str, Vec<(&Run, &Run)>> = BTreeMap::new();
    let mut excluded = Vec::new();
    let mut unpaired = Vec::new();
    let use_pair_col = b_cells
        .values()
        .chain(h_cells.values())
        .flatten()
        .all(|r| r.pair.is_some());
    for (cell, hb) in h_cells {
        let Some(bb) = b_cells.get(cell).filter(|_| !skip(cell)) else {
            let why = if skip(cell) {
                "a different cell of the same id on the other side"
            } else {
                "cell not in base"
            };
            for r in hb {
                unpaired.push((r.run_id.clone(), "head", why.to_string()));
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
    for (cell, bb) in b_cells {
        if !h_cells.contains_key(cell) {
            for r in bb {
                unpaired.push((r.run_id.clone(), "base", "cell not in head".to_string()));
            }
        }
    }
    Pairing {
        pairs,
        excluded,
        unpaired,
    }
}

/// Oriented log ratios (positive = head worse) of one metric over pairs.
fn oriented(ps: &[(&Run, &Run)], k: usize) -> Vec<f64> {
    ps.iter()
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
        .collect()
}

/// The A/A sweep's oriented pair log ratios per (cell, metric). `aa_dir` is the output of
/// an A/B sweep (`DIR` holding `base/` and `head/`), or one directory with both revisions.
fn aa_ratios(
    aa_dir: &Path,
    head: &ResultSet,
    head_cells: &BTreeMap<String, identity::CellKey>,
    allow_different: bool,
) -> Result<BTreeMap<(String, usize), Vec<f64>>> {
    let split = aa_dir.join("base").join("runs.csv").exists()
        && aa_dir.join("head").join("runs.csv").exists();
    let (sb, sh) = if split {
        let (b, h) = rayon::join(
            || ResultSet::load(&aa_dir.join("base")),
            || ResultSet::load(&aa_dir.join("head")),
        );
        (b?, h?)
    } else {
        let one = ResultSet::load(aa_dir)?;
        (one.clone(), one)
    };
    let (ab, ah) = (side_runs(&sb, "base"), side_runs(&sh, "head"));
    let aa_cells = identity::cells(&sh, &ah);
    let diff = identity::differences(&sh, &aa_cells, head, head_cells);
    if !diff.is_empty() && !allow_different {
        return Err(Error::Usage(format!(
            "--aa {}: not a sweep of the same experiment as {} (add --allow-different-experiments to use it anyway):\n  {}",
            aa_dir.display(),
            head.dir.display(),
            diff.join("\n  ")
        )));
    }
    let mismatched: Vec<String> = aa_cells
        .iter()
        .filter(|(id, k)| head_cells.get(*id).is_some_and(|hk| hk != *k))
        .map(|(id, _)| id.clone())
        .collect();
    let (bc, hc) = (by_cell(&ab), by_cell(&ah));
    let p = pair_up(&bc, &hc, &|c: &str| mismatched.iter().any(|x| x == c));
    let mut out = BTreeMap::new();
    for (cell, ps) in &p.pairs {
        for k in 0..crate::data::N_METRICS {
            let w = oriented(ps, k);
            if !w.is_empty() {
                out.insert((cell.to_string(), k), w);
            }
        }
    }
    Ok(out)
}

pub fn compare(base_dir: &Path, head_dir: &Path, opts: &CompareOptions) -> Result<Comparison> {
    let auto = opts.metrics.is_empty() || opts.metrics.iter().any(|m| m.trim() == "auto");
    let explicit: Vec<usize> = {
        let mut v = Vec::new();
        for n in opts.metrics.iter().filter(|m| m.trim() != "auto") {
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
    let (bk, hk) = (
        identity::cells(&base, &b_runs),
        identity::cells(&head, &h_runs),
    );
    let differences = identity::differences(&base, &bk, &head, &hk);
    if !differences.is_empty() && !opts.allow_different {
        return Err(Error::Usage(format!(
            "{} and {} are not sweeps of the same experiment; compare refuses to pair them (add --allow-different-experiments to compare the cells that match):\n  {}",
            base_dir.display(),
            head_dir.display(),
            differences.join("\n  ")
        )));
    }
    let mismatched: Vec<String> = bk
        .iter()
        .filter(|(id, k)| hk.get(*id).is_some_and(|h| h != *k))
        .map(|(id, _)| id.clone())
        .collect();
    let b_cells = by_cell(&b_runs);
    let h_cells = by_cell(&h_runs);
    let summary = Summary::build(&head);
    let p = pair_up(&b_cells, &h_cells, &|c: &str| {
        mismatched.iter().any(|x| x == c)
    });
    let aa = match &opts.aa {
        Some(d) => Some(aa_ratios(d, &head, &hk, opts.allow_different)?),
        None => None,
    };
    let inputs = MarginInputs {
        base: &b_cells,
        head: &h_cells,
        aa: aa.as_ref(),
    };

    let labels: HashMap<&str, String> = summary
        .configs
        .iter()
        .map(|c| (c.cell_id.as_str(), c.short.clone()))
        .collect();
    let cells: Vec<(&str, &Vec<(&Run, &Run)>)> = p.pairs.iter().map(|(c, p)| (*c, p)).collect();
    let mut rows: Vec<Row> = cells
        .par_iter()
        .flat_map_iter(|(cell, ps)| {
            let first = ps[0].1;
            let label = labels
                .get(cell)
                .cloned()
                .unwrap_or_else(|| short_label(&head.dimensions, &first.dims, &summary.dim_values));
            let label = format!("{label} ({})", first.workload);
            let open_loop = ps.iter().any(|(b, h)| b.open_loop() || h.open_loop());
            let metrics: Vec<usize> = if auto {
                let mut v = margin::default_metrics(open_loop).to_vec();
                for k in &explicit {
                    if !v.contains(k) {
                        v.push(*k);
                    }
                }
                v
            } else {
                explicit.clone()
            };
            let offered = open_loop.then(|| {
                let med = |side: usize| {
                    let v: Vec<f64> = ps
                        .iter()
                        .filter_map(|(b, h)| [b, h][side].metric(m::SENT))
                        .collect();
                    stats::median(&v)
                };
                (med(1), med(0))
            });
            let inputs = &inputs;
            metrics
                .into_iter()
                .filter_map(move |k| {
                    let w = oriented(ps, k);
                    if w.is_empty() {
                        return None;
                    }
                    let mg = inputs.margin(cell, k, &w);
                    let (gated, note) = margin::gate(&first.kind, open_loop, k, mg.delta);
                    let mut r = verdict_row(cell, &label, &first.kind, &first.workload, k, &w, mg);
                    r.open_loop = open_loop;
                    r.gated = gated;
                    r.note = note;
                    r.offered = offered.filter(|(h, b)| h.is_finite() && b.is_finite());
                    Some(r)
                })
                .collect::<Vec<_>>()
        })
        .collect();
    rows.sort_by(|a, b| {
        b.gated
            .cmp(&a.gated)
            .then(a.verdict.cmp(&b.verdict))
            .then_with(|| {
                let worse = |r: &Row| {
                    if higher_is_better(r.metric) {
                        -r.ratio.ln()
                    } else {
                        r.ratio.ln()
                    }
                };
                worse(b).total_cmp(&worse(a))
            })
    });
    let margins = summarize_margins(&rows);

    let md_path = match &opts.out {
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
        aa_dir: opts.aa.clone(),
        rows,
        margins,
        excluded: p.excluded,
        unpaired: p.unpaired,
        differences,
        markdown: md_path.clone(),
        charts: Vec::new(),
    };
    let mut doc = Doc::new(format!(
        "Compare: {} → {}",
        base_dir.display(),
        head_dir.display()
    ));
    let mut made = Vec::new();
    output::write_doc(&cmp, &base, &head, &out_dir, &mut doc, &mut made)?;
    cmp.charts = made;
    std::fs::write(&md_path, doc.to_markdown()).map_err(|e| Error::io(&md_path, "write", e))?;
    Ok(cmp)
}

fn summarize_margins(rows: &[Row]) -> Vec<Margin> {
    let mut by: BTreeMap<usize, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        by.entry(r.metric).or_default().push(r);
    }
    by.into_iter()
        .map(|(k, rs)| {
            let mut sources: BTreeMap<String, usize> = BTreeMap::new();
            for r in &rs {
                let s = match &r.margin.source {
                    margin::Source::AaPairs { .. } => "A/A sweep pairs",
                    margin::Source::WithinBuildCell { .. } => "the cell's within-build spread",
                    margin::Source::WithinBuildPooled { .. } => "within-build spread of all cells",
                    margin::Source::FloorOnly => "floor only",
                };
                *sources.entry(s.to_string()).or_default() += 1;
            }
            let src: Vec<String> = sources
                .into_iter()
                .map(|(s, n)| format!("{s} ({n} cells)"))
                .collect();
            Margin {
                metric: k,
                delta_min: rs.iter().map(|r| r.delta).fold(f64::INFINITY, f64::min),
                delta_max: rs.iter().map(|r| r.delta).fold(0.0, f64::max),
                cells: rs.len(),
                rule: format!(
                    "max({:.0}%, 2 × spread, A/A bias); pair noise from {}",
                    margin::floor(k) * 100.0,
                    src.join(", ")
                ),
            }
        })
        .collect()
}

/// The verdict for one configuration and metric from oriented log ratios `w` (positive = worse).
pub fn verdict_row(
    cell: &str,
    label: &str,
    kind: &str,
    workload: &str,
    metric: usize,
    w: &[f64],
    margin: CellMargin,
) -> Row {
    let delta = margin.delta;
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
        open_loop: false,
        metric,
        pairs: w.len(),
        ratio: to_ratio(med),
        ci: (a.min(b), a.max(b)),
        p_worse: wil.p_greater,
        p_better: wil.p_less,
        delta,
        margin,
        verdict,
        gated: true,
        note: String::new(),
        offered: None,
    }
}

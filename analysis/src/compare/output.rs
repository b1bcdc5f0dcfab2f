//! What `compare` writes: the aligned table on stdout, compare.md with its charts, and
//! the JSON of `--json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use super::{Comparison, Row, Verdict};
use crate::aggregate::{higher_is_better, metric_title};
use crate::charts::{self, BarChart, BarRow};
use crate::data::{m, ResultSet, METRICS};
use crate::doc::Doc;
use crate::error::Result;

fn pct(r: f64) -> String {
    format!("{:+.1}%", (r - 1.0) * 100.0)
}

fn verdict_cell(r: &Row) -> String {
    if !r.gated {
        format!("({}, not gated)", r.verdict.as_str())
    } else if r.verdict == Verdict::Regression {
        format!("**{}**", r.verdict.as_str())
    } else {
        r.verdict.as_str().into()
    }
}

/// The aligned table printed on stdout.
pub(super) fn summary_text(c: &Comparison) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "compare {} (base) -> {} (head){}: {} REGRESSION, {} IMPROVED, {} INCONCLUSIVE, {} SAME (gated verdicts); {} runs excluded (status not ok), {} unpaired",
        c.base_dir.display(),
        c.head_dir.display(),
        c.aa_dir
            .as_ref()
            .map(|a| format!(", margins from the A/A sweep {}", a.display()))
            .unwrap_or_default(),
        c.count(Verdict::Regression),
        c.count(Verdict::Improved),
        c.count(Verdict::Inconclusive),
        c.count(Verdict::Same),
        c.excluded.len(),
        c.unpaired.len()
    );
    for d in &c.differences {
        let _ = writeln!(o, "warning: not the same experiment: {d}");
    }
    let w = c
        .rows
        .iter()
        .map(|r| r.label.chars().count())
        .max()
        .unwrap_or(13)
        .clamp(13, 60);
    let _ = writeln!(
        o,
        "{:<25} {:<w$} {:<18} {:>5} {:>9} {:>19} {:>9} {:>6}",
        "verdict",
        "configuration",
        "metric",
        "pairs",
        "head/base",
        "90% interval",
        "p(worse)",
        "delta"
    );
    for r in &c.rows {
        let v = if r.gated {
            r.verdict.as_str().to_string()
        } else {
            format!("({}, not gated)", r.verdict.as_str())
        };
        let _ = writeln!(
            o,
            "{:<25} {:<w$} {:<18} {:>5} {:>+8.1}% {:>+8.1}% … {:>+6.1}% {:>9.4} {:>5.1}%",
            v,
            charts::ellipsize(&r.label, w),
            metric_title(r.metric),
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

fn metric_key(k: usize) -> &'static str {
    METRICS[k]
}

/// `--json`: everything of the verdict table, the margins and the excluded runs.
pub(super) fn to_json(c: &Comparison) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = c
        .rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "cell_id": r.cell_id,
                "configuration": r.label,
                "kind": r.kind,
                "workload": r.workload,
                "open_loop": r.open_loop,
                "metric": metric_key(r.metric),
                "higher_is_better": higher_is_better(r.metric),
                "pairs": r.pairs,
                "head_over_base": r.ratio,
                "interval_90": [r.ci.0, r.ci.1],
                "p_worse": r.p_worse,
                "p_better": r.p_better,
                "delta": r.delta,
                "margin": {
                    "source": r.margin.source.key(),
                    "how": r.margin.source.describe(),
                    "pair_noise": r.margin.pair_noise,
                    "spread": r.margin.spread,
                    "aa_bias": r.margin.bias,
                },
                "verdict": r.verdict.as_str(),
                "gated": r.gated,
                "not_gated_because": (!r.gated).then_some(&r.note),
                "offered_mb_per_s": r.offered.map(|(h, b)| serde_json::json!({"head": h, "base": b})),
            })
        })
        .collect();
    let count = |v: Verdict| c.count(v);
    serde_json::json!({
        "base_dir": c.base_dir.display().to_string(),
        "head_dir": c.head_dir.display().to_string(),
        "aa_dir": c.aa_dir.as_ref().map(|p| p.display().to_string()),
        "regression": c.any_regression(),
        "verdicts": {
            "REGRESSION": count(Verdict::Regression),
            "IMPROVED": count(Verdict::Improved),
            "INCONCLUSIVE": count(Verdict::Inconclusive),
            "SAME": count(Verdict::Same),
        },
        "not_the_same_experiment": c.differences,
        "margins": c.margins.iter().map(|mg| serde_json::json!({
            "metric": metric_key(mg.metric),
            "delta_min": mg.delta_min,
            "delta_max": mg.delta_max,
            "cells": mg.cells,
            "how": mg.rule,
        })).collect::<Vec<_>>(),
        "rows": rows,
        "excluded": c.excluded.iter().map(|x| serde_json::json!({
            "cell_id": x.cell_id, "side": x.side, "run_id": x.run_id,
            "status": x.status, "reason": x.reason,
        })).collect::<Vec<_>>(),
        "unpaired": c.unpaired.iter().map(|(id, side, why)| serde_json::json!({
            "run_id": id, "side": side, "reason": why,
        })).collect::<Vec<_>>(),
        "markdown": c.markdown.display().to_string(),
    })
}

pub(super) fn write_doc(
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
        "Base `{}` (rev {}), head `{}` (rev {}). **{} REGRESSION, {} IMPROVED, {} INCONCLUSIVE, {} SAME** \
         (gated verdicts). Exit code 1 only on a gated REGRESSION.",
        c.base_dir.display(),
        rev(base),
        c.head_dir.display(),
        rev(head),
        c.count(Verdict::Regression),
        c.count(Verdict::Improved),
        c.count(Verdict::Inconclusive),
        c.count(Verdict::Same)
    ));
    if !c.differences.is_empty() {
        doc.p(format!(
            "**Not the same experiment** (compared with --allow-different-experiments; cells of one id that differ are not paired): {}",
            c.differences.join("; ")
        ));
    }
    doc.p(
        "Method: runs of the same cell are paired (by the `pair` column, else by repetition order); per pair the log \
         ratio head/base. REGRESSION: one-sided Wilcoxon signed-rank p < 0.01 (exact up to 30 pairs, normal \
         approximation with tie correction beyond) and median ratio worse than delta. IMPROVED: the mirror image. \
         SAME: the 90% bootstrap interval (4000 resamples, fixed seed) of the median ratio lies within ±delta. \
         Otherwise INCONCLUSIVE: add pairs. Fewer than 7 pairs can never reach p < 0.01. Closed-loop cells are \
         judged by throughput and CPU s/GiB; open-loop ingest by CPU s/GiB and ack p50/p90 (where their A/A \
         spread is small); open-loop throughput is the offered load and is shown as acked vs offered, never gated.",
    );
    doc.h(1, "Margins");
    doc.p(match &c.aa_dir {
        Some(a) => format!(
            "delta per cell and metric = max(floor, 2 × spread, A/A bias). The spread is the standard error of the \
             median pair change with this many pairs, 1.25 × σ/√n, σ the noise of one pair (1.4826 × the median \
             absolute deviation of that cell's pair log ratios about their median in the A/A sweep `{}`, the same \
             build on both sides measured in the same job, pooled with the judged pairs' deviations about theirs); \
             the A/A bias counted is the part of that sweep's own median change beyond twice its standard error. \
             Cells without enough A/A pairs use their within-build spread.",
            a.display()
        ),
        None => "delta per cell and metric = max(floor, 2 × spread), the spread being the standard error of the \
                 median pair change with this many pairs, 1.25 × σ/√n, σ from the cell's within-build repetitions \
                 (median |ln(x_i/x_j)| / 0.6745 over its ok runs in each build; pooled over cells when a cell has \
                 fewer than 4 runs per build). Give `--aa DIR` (a same-build sweep of the same experiment) for margins \
                 from A/A pairs."
            .into(),
    });
    doc.table(
        &["metric", "delta (min … max over cells)", "how"],
        c.margins
            .iter()
            .map(|mg| {
                vec![
                    metric_title(mg.metric).into(),
                    format!(
                        "{:.1}% … {:.1}%",
                        mg.delta_min * 100.0,
                        mg.delta_max * 100.0
                    ),
                    mg.rule.clone(),
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
            "margin from",
            "cell",
        ],
        c.rows
            .iter()
            .map(|r| {
                vec![
                    verdict_cell(r),
                    r.label.clone(),
                    metric_title(r.metric).into(),
                    r.pairs.to_string(),
                    pct(r.ratio),
                    format!("{} … {}", pct(r.ci.0), pct(r.ci.1)),
                    format!("{:.4}", r.p_worse),
                    format!("{:.4}", r.p_better),
                    format!("±{:.1}%", r.delta * 100.0),
                    r.margin.source.describe(),
                    format!("`{}`", r.cell_id),
                ]
            })
            .collect(),
    );
    let ungated: Vec<&Row> = c.rows.iter().filter(|r| !r.gated).collect();
    if !ungated.is_empty() {
        let mut why: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for r in &ungated {
            why.entry(r.note.as_str()).or_default().push(format!(
                "{} `{}`",
                metric_title(r.metric),
                r.cell_id
            ));
        }
        doc.p(format!(
            "Not gated (shown, never fail the build): {}.",
            why.iter()
                .map(|(n, v)| format!("{} — {n}", v.join(", ")))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    let open: Vec<&Row> = c
        .rows
        .iter()
        .filter(|r| r.open_loop && r.metric == m::THROUGHPUT)
        .collect();
    if !open.is_empty() {
        doc.h(2, "Open loop: acked vs offered");
        doc.table(
            &[
                "configuration",
                "offered MB/s (base → head)",
                "acked head/base",
                "cell",
            ],
            open.iter()
                .map(|r| {
                    vec![
                        r.label.clone(),
                        r.offered
                            .map(|(h, b)| format!("{} → {}", charts::num(b), charts::num(h)))
                            .unwrap_or_else(|| "not recorded".into()),
                        pct(r.ratio),
                        format!("`{}`", r.cell_id),
                    ]
                })
                .collect(),
        );
    }
    for mg in &c.margins {
        let mut rows: Vec<&Row> = c.rows.iter().filter(|r| r.metric == mg.metric).collect();
        if rows.is_empty() {
            continue;
        }
        let total = rows.len();
        rows.truncate(crate::report::TOP);
        let name = match mg.metric {
            m::THROUGHPUT => "throughput".to_string(),
            m::ACK_P99 => "p99".to_string(),
            m::CPU_S_PER_GIB => "cpu".to_string(),
            k => METRICS[k].to_string(),
        };
        let chart = charts::bar_chart(
            out_dir,
            &format!("compare-{name}"),
            &BarChart {
                title: format!(
                    "{}: head vs base per configuration{}",
                    metric_title(mg.metric),
                    if total > rows.len() {
                        format!(" (first {})", rows.len())
                    } else {
                        String::new()
                    }
                ),
                x_label: format!(
                    "head/base − 1 (%), dot = median over pairs, line = 90% interval; green band = ±delta ({:.1}…{:.1}%); {}",
                    mg.delta_min * 100.0,
                    mg.delta_max * 100.0,
                    if higher_is_better(mg.metric) { "higher is better" } else { "lower is better" }
                ),
                rows: rows
                    .iter()
                    .map(|r| BarRow {
                        label: format!(
                            "{} [{}{}]",
                            r.label,
                            r.verdict.as_str(),
                            if r.gated { "" } else { ", not gated" }
                        ),
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
                band: Some((-mg.delta_min * 100.0, mg.delta_min * 100.0)),
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
        doc.p("A pair is dropped when either run's status is not `ok` (the sweep re-runs rejected pairs to top up the planned number); grouped by side, status and reason.");
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

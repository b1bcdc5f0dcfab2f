//! Main effect of each dimension and heatmaps of two dimensions at a time, on the metric a
//! workload is ranked by (throughput, or ack p99 for open loop). Dimensions that always
//! change together (every value of one goes with one value of the other) are merged into
//! one effect: each alone would claim the same gain.

use std::collections::HashMap;

use super::{pct, sanitize, Ctx, Workload, MAX_HEATMAPS};
use crate::aggregate::{metric_title, Config};
use crate::charts::{self, BarChart, BarRow, Heatmap};
use crate::data::ResultSet;
use crate::doc::Doc;
use crate::error::Result;
use crate::stats;

/// Main effect of changing one dimension (or one group of dimensions that always change
/// together) from its first value to `value`, all others equal.
#[derive(Clone, Debug)]
pub struct Effect {
    /// The dimension, or the group joined with " + ".
    pub dim: String,
    pub baseline: String,
    pub value: String,
    /// Geometric mean of metric(value)/metric(baseline) over matched configurations.
    pub ratio: f64,
    pub lo: Option<f64>,
    pub hi: Option<f64>,
    /// Matched configuration pairs (0: no matched pairs, marginal geometric means).
    pub matched: usize,
    /// More than one dimension: they always change together in this sweep (confounded).
    pub confounded: bool,
}

/// Groups of varying dimensions that always change together among `rank`: within a group,
/// the value of any member determines the value of every other.
pub fn confounded_groups(varying: &[usize], rank: &[&Config]) -> Vec<Vec<usize>> {
    let determines = |a: usize, b: usize| {
        let mut map: HashMap<&str, &str> = HashMap::new();
        rank.iter().all(|c| {
            let (x, y) = (c.dims[a].as_str(), c.dims[b].as_str());
            *map.entry(x).or_insert(y) == y
        })
    };
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for &k in varying {
        match groups
            .iter_mut()
            .find(|g| determines(g[0], k) && determines(k, g[0]))
        {
            Some(g) => g.push(k),
            None => groups.push(vec![k]),
        }
    }
    groups
}

fn group_value(c: &Config, g: &[usize]) -> String {
    g.iter()
        .map(|&k| c.dims[k].as_str())
        .collect::<Vec<_>>()
        .join(" + ")
}

pub fn main_effects(
    rs: &ResultSet,
    varying: &[usize],
    rank: &[&Config],
    metric: usize,
) -> Vec<Effect> {
    let mut out = Vec::new();
    let groups = confounded_groups(varying, rank);
    for g in &groups {
        let name = g
            .iter()
            .map(|&k| rs.dimensions[k].as_str())
            .collect::<Vec<_>>()
            .join(" + ");
        // Values in cell order (the first is the baseline).
        let mut values: Vec<String> = Vec::new();
        let mut ordered: Vec<&&Config> = rank.iter().collect();
        ordered.sort_by(|a, b| a.cell_id.cmp(&b.cell_id));
        for c in ordered {
            let v = group_value(c, g);
            if !values.contains(&v) {
                values.push(v);
            }
        }
        let baseline = &values[0];
        // key: every dimension outside the group -> (group value -> median)
        let mut by_key: HashMap<Vec<&str>, HashMap<String, f64>> = HashMap::new();
        for c in rank {
            let key: Vec<&str> = c
                .dims
                .iter()
                .enumerate()
                .filter(|(j, _)| !g.contains(j))
                .map(|(_, v)| v.as_str())
                .collect();
            if let Some(s) = c.metric(metric) {
                by_key
                    .entry(key)
                    .or_default()
                    .insert(group_value(c, g), s.median);
            }
        }
        for v in values.iter().skip(1) {
            let logs: Vec<f64> = by_key
                .values()
                .filter_map(|mp| Some((mp.get(v)? / mp.get(baseline)?).ln()))
                .filter(|x| x.is_finite())
                .collect();
            if !logs.is_empty() {
                let ci =
                    stats::bootstrap_mean_ci(&logs, 0.90, stats::BOOT_RESAMPLES, stats::BOOT_SEED);
                out.push(Effect {
                    dim: name.clone(),
                    baseline: baseline.clone(),
                    value: v.clone(),
                    ratio: ci.estimate.exp(),
                    lo: (logs.len() > 1).then(|| ci.lo.exp()),
                    hi: (logs.len() > 1).then(|| ci.hi.exp()),
                    matched: logs.len(),
                    confounded: g.len() > 1,
                });
            } else {
                let gm = |val: &str| {
                    let xs: Vec<f64> = rank
                        .iter()
                        .filter(|c| group_value(c, g) == val)
                        .filter_map(|c| c.metric(metric).map(|s| s.median))
                        .filter(|x| *x > 0.0)
                        .collect();
                    (!xs.is_empty()).then(|| stats::geomean(&xs))
                };
                if let (Some(a), Some(b)) = (gm(v), gm(baseline)) {
                    out.push(Effect {
                        dim: name.clone(),
                        baseline: baseline.clone(),
                        value: v.clone(),
                        ratio: a / b,
                        lo: None,
                        hi: None,
                        matched: 0,
                        confounded: g.len() > 1,
                    });
                }
            }
        }
    }
    out
}

/// Heatmaps with more than this share of empty cells are not drawn.
pub const MAX_EMPTY_SHARE: f64 = 0.5;

pub fn heatmaps_and_effects(
    ctx: &Ctx,
    w: &Workload,
    doc: &mut Doc,
    made: &mut Vec<charts::ChartFiles>,
) -> Result<()> {
    let rs = ctx.rs;
    let (metric, rank, tag) = (w.metric, &w.rank, &w.tag);
    let title = metric_title(metric);
    let effects = main_effects(rs, &w.varying, rank, metric);
    doc.h(2, "Main effect of each dimension");
    if effects.is_empty() {
        doc.p("No dimension varies among the measured configurations of this workload.");
    } else {
        doc.p(format!(
            "Change in {title} when one dimension moves from its first value to another while every other \
             dimension stays the same: geometric mean of the ratios over the matched pairs of configurations, with a \
             90% bootstrap interval over those pairs (a dimension that interacts with another, e.g. ring knobs with \
             the blocking backend, averages over both; the heatmaps show the interaction). Where no configuration \
             pair matches, the ratio of geometric means is shown without an interval. Dimensions that always change \
             together in this sweep are one effect (`a + b`, *confounded*): the sweep cannot tell them apart."
        ));
        let c = charts::bar_chart(
            ctx.out,
            &format!("effects-{tag}"),
            &BarChart {
                title: format!("Main effects on {title} (vs the dimension's first value)"),
                x_label: format!(
                    "change in {title} (%), dot = geometric mean over matched pairs, line = 90% interval"
                ),
                rows: effects
                    .iter()
                    .map(|e| {
                        let good = (e.ratio >= 1.0) == crate::aggregate::higher_is_better(metric);
                        BarRow {
                            label: format!(
                                "{}: {} → {}{}",
                                e.dim,
                                e.baseline,
                                e.value,
                                if e.confounded { " (confounded)" } else { "" }
                            ),
                            value: (e.ratio - 1.0) * 100.0,
                            lo: e.lo.map(|x| (x - 1.0) * 100.0),
                            hi: e.hi.map(|x| (x - 1.0) * 100.0),
                            points: vec![],
                            color: if good { charts::GREEN } else { charts::RED },
                        }
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
                &format!("{title} change"),
                "90% interval",
                "matched pairs",
            ],
            effects
                .iter()
                .map(|e| {
                    vec![
                        format!(
                            "`{}`{}",
                            e.dim,
                            if e.confounded {
                                " (confounded: always change together)"
                            } else {
                                ""
                            }
                        ),
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

    // Heatmaps: pairs of (non-confounded) varying dimensions, strongest first.
    let reps: Vec<usize> = confounded_groups(&w.varying, rank)
        .into_iter()
        .map(|g| g[0])
        .collect();
    let strength = |k: usize| {
        effects
            .iter()
            .filter(|e| e.dim.split(" + ").next() == Some(rs.dimensions[k].as_str()))
            .map(|e| e.ratio.ln().abs())
            .fold(0.0f64, f64::max)
    };
    let mut pairs = Vec::new();
    for i in 0..reps.len() {
        for j in (i + 1)..reps.len() {
            pairs.push((reps[i], reps[j]));
        }
    }
    pairs.sort_by(|a, b| {
        strength(b.0)
            .min(strength(b.1))
            .total_cmp(&strength(a.0).min(strength(a.1)))
    });
    doc.h(2, "Two dimensions at a time");
    if pairs.is_empty() {
        doc.p("Fewer than two independent dimensions vary in this workload: no heatmap.");
        return Ok(());
    }
    let values_of = |k: usize| {
        let mut v: Vec<String> = Vec::new();
        let mut ordered: Vec<&&Config> = rank.iter().collect();
        ordered.sort_by(|a, b| a.cell_id.cmp(&b.cell_id));
        for c in ordered {
            if !v.contains(&c.dims[k]) {
                v.push(c.dims[k].clone());
            }
        }
        v
    };
    let (mut drawn, mut sparse) = (0, Vec::new());
    let total = pairs.len();
    for (x, y) in pairs {
        if drawn == MAX_HEATMAPS {
            break;
        }
        let (xv, yv) = (values_of(x), values_of(y));
        let values: Vec<Vec<Option<f64>>> = yv
            .iter()
            .map(|b| {
                xv.iter()
                    .map(|a| {
                        let xs: Vec<f64> = rank
                            .iter()
                            .filter(|c| &c.dims[x] == a && &c.dims[y] == b)
                            .filter_map(|c| c.metric(metric).map(|s| s.median))
                            .filter(|v| *v > 0.0)
                            .collect();
                        (!xs.is_empty()).then(|| stats::geomean(&xs))
                    })
                    .collect()
            })
            .collect();
        let cells = xv.len() * yv.len();
        let empty = values.iter().flatten().filter(|v| v.is_none()).count();
        if empty as f64 > MAX_EMPTY_SHARE * cells as f64 {
            sparse.push(format!(
                "`{}` × `{}` ({empty} of {cells} combinations not measured)",
                rs.dimensions[x], rs.dimensions[y]
            ));
            continue;
        }
        let unit = title
            .split_once('(')
            .map(|(_, u)| u.trim_end_matches(')').to_string())
            .unwrap_or_default();
        let c = charts::heatmap(
            ctx.out,
            &format!(
                "heatmap-{tag}-{}-{}",
                sanitize(&rs.dimensions[x]),
                sanitize(&rs.dimensions[y])
            ),
            &Heatmap {
                title: format!("{title}: {} × {}", rs.dimensions[x], rs.dimensions[y]),
                x_dim: rs.dimensions[x].clone(),
                y_dim: rs.dimensions[y].clone(),
                x_values: xv,
                y_values: yv,
                values,
                unit,
                higher_is_better: crate::aggregate::higher_is_better(metric),
            },
        )?;
        made.push(c.clone());
        doc.chart(c);
        drawn += 1;
    }
    doc.p(format!(
        "{title} for each combination of two dimensions: geometric mean of the configurations' medians over every \
         other dimension; the colour scale is on the right. {drawn} of {total} pairs drawn, strongest dimensions \
         first{}.",
        if sparse.is_empty() {
            String::new()
        } else {
            format!(
                "; not drawn because mostly not measured: {}",
                sparse.join(", ")
            )
        }
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(id: &str, dims: &[&str]) -> Config {
        Config {
            cell_id: id.into(),
            revision: "head".into(),
            kind: "recorder".into(),
            workload: "ingest".into(),
            dims: dims.iter().map(|s| s.to_string()).collect(),
            dims_label: String::new(),
            short: id.into(),
            runs: vec![],
            n_ok: 0,
            not_ok: vec![],
            metrics: vec![],
        }
    }

    #[test]
    fn dimensions_that_always_change_together_are_one_group() {
        // dims 0 and 1 move together (a bijection); dim 2 varies on its own.
        let cs = [
            cfg("c0", &["4k", "256", "x"]),
            cfg("c1", &["4k", "256", "y"]),
            cfg("c2", &["16k", "64", "x"]),
            cfg("c3", &["16k", "64", "y"]),
        ];
        let rank: Vec<&Config> = cs.iter().collect();
        assert_eq!(
            confounded_groups(&[0, 1, 2], &rank),
            vec![vec![0, 1], vec![2]]
        );
    }
}

//! `analysis report DIR --by NAME`: a workload's configurations grouped by the value of
//! any dimension or engine option in effect (`opt.net.send`, `ring.sqpoll`), whether or
//! not the experiment varied it. Per value: the configurations and runs, the median of
//! the workload's ranking metric over every ok run with its range, the ratio of medians
//! to the first value (in cell order) with its uncertainty, CPU per GiB and p99.

use super::ratios::ratio_of;
use super::{f1, Ctx, Workload};
use crate::aggregate::{metric_title, Config};
use crate::data::{m, ResultSet};
use crate::doc::Doc;
use crate::error::{Error, Result};
use crate::stats;

/// Checks the `--by` names against the result set: each must be a dimension or an
/// option column (`opt.` optional).
pub fn check_names(rs: &ResultSet, names: &[String]) -> Result<()> {
    for n in names {
        if rs.dim_index(n).is_none() && rs.option_index(n).is_none() {
            let mut known: Vec<String> = rs.dimensions.clone();
            known.extend(rs.options.iter().map(|o| format!("opt.{o}")));
            let shown = if known.is_empty() {
                "none (this result set has no dimension and no option columns)".to_string()
            } else if known.len() > 12 {
                format!("{}, ... ({} in all)", known[..12].join(", "), known.len())
            } else {
                known.join(", ")
            };
            return Err(Error::Usage(format!(
                "--by {n}: {} has no dimension or option of that name; use one of {shown}",
                rs.dir.display()
            )));
        }
    }
    Ok(())
}

/// The ok values of `metric` over a set of configurations' runs.
fn values(rs: &ResultSet, configs: &[&Config], metric: usize) -> Vec<f64> {
    configs
        .iter()
        .flat_map(|c| c.runs.iter().map(|&i| &rs.runs[i]))
        .filter(|r| r.is_ok())
        .filter_map(|r| r.metric(metric))
        .collect()
}

fn median_range(v: &[f64]) -> String {
    if v.is_empty() {
        return "–".into();
    }
    let (lo, hi) = (
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    format!("{} ({}–{})", f1(stats::median(v)), f1(lo), f1(hi))
}

pub fn by_section(ctx: &Ctx, w: &Workload, name: &str, doc: &mut Doc) {
    let rs = ctx.rs;
    doc.h(2, format!("Grouped by `{name}`"));
    // Cell order (the summary's), so the first value is the experiment's first cell's.
    let configs: Vec<&Config> = ctx
        .sum
        .configs
        .iter()
        .filter(|c| w.rank.iter().any(|r| std::ptr::eq(*r, *c)))
        .collect();
    let mut groups: Vec<(String, Vec<&Config>)> = Vec::new();
    for c in configs {
        let v = c.dim(rs, name).unwrap_or("(none)").to_string();
        match groups.iter_mut().find(|(g, _)| *g == v) {
            Some((_, cs)) => cs.push(c),
            None => groups.push((v, vec![c])),
        }
    }
    if groups.len() < 2 {
        doc.p(format!(
            "Every configuration of this workload has the same value of `{name}` ({}): nothing to compare.",
            groups.first().map(|(g, _)| g.as_str()).unwrap_or("none")
        ));
    }
    let metric = w.metric;
    let p99 = if w.rank.iter().any(|c| c.metric(m::ACK_P99).is_some()) {
        m::ACK_P99
    } else {
        m::REQ_P99
    };
    doc.p(format!(
        "Every ok run of the configurations with each value (`(none)`: the runs have no value, e.g. a ring \
         option with the blocking backend); the ratio is of medians to the first value `{}`, with a 90% \
         bootstrap interval where both sides have at least {} runs, else the range. Configurations that \
         differ in other dimensions are pooled: read the per-configuration tables before concluding.",
        groups.first().map(|(g, _)| g.as_str()).unwrap_or(""),
        stats::MIN_REPS_FOR_INTERVAL
    ));
    let reference = groups
        .first()
        .map(|(_, cs)| values(rs, cs, metric))
        .unwrap_or_default();
    let ratio_head = format!(
        "x `{}`",
        groups.first().map(|(g, _)| g.as_str()).unwrap_or("")
    );
    let title = metric_title(metric);
    let p99_title = metric_title(p99);
    doc.table(
        &[
            name,
            "configurations",
            "runs",
            title,
            &ratio_head,
            "CPU s/GiB",
            p99_title,
        ],
        groups
            .iter()
            .map(|(g, cs)| {
                let v = values(rs, cs, metric);
                vec![
                    g.clone(),
                    cs.len().to_string(),
                    v.len().to_string(),
                    median_range(&v),
                    ratio_of(&v, &reference)
                        .map(|r| r.text())
                        .unwrap_or_else(|| "–".into()),
                    median_range(&values(rs, cs, m::CPU_S_PER_GIB)),
                    median_range(&values(rs, cs, p99)),
                ]
            })
            .collect(),
    );
}

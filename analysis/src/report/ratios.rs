//! Each configuration's throughput relative to the anchors measured in the same sweep
//! (fio, iperf3, nginx) and to the blocking backend, every ratio with its uncertainty: a
//! 90% bootstrap interval of the ratio of medians where both sides have at least 5 runs,
//! else the range (lowest / highest .. highest / lowest).

use super::{f1, Ctx, Workload, TOP};
use crate::aggregate::Config;
use crate::charts::{self, MultiChart};
use crate::data::m;
use crate::doc::Doc;
use crate::error::Result;
use crate::stats::{self, MIN_REPS_FOR_INTERVAL};

/// Anchor workloads compared with a recorder workload: same workload first, then the
/// natural counterparts (ingest: disk write and network; serve: nginx, disk read).
pub fn anchor_workloads(wl: &str) -> &'static [&'static str] {
    match wl {
        "ingest" | "bulk-ingest" => &["ingest", "bulk-ingest", "disk-write", "net"],
        "serve" => &["serve", "disk-read", "net"],
        _ => &[],
    }
}

/// The ok throughputs of a configuration.
fn values(ctx: &Ctx, c: &Config) -> Vec<f64> {
    c.runs
        .iter()
        .map(|&i| &ctx.rs.runs[i])
        .filter(|r| r.is_ok())
        .filter_map(|r| r.metric(m::THROUGHPUT))
        .filter(|x| *x > 0.0)
        .collect()
}

/// A ratio of medians with its interval (`interval`) or range.
#[derive(Clone, Copy, Debug)]
pub struct Ratio {
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
    pub interval: bool,
}

impl Ratio {
    pub fn text(&self) -> String {
        format!(
            "{:.2}× ({}{:.2}–{:.2})",
            self.value,
            if self.interval { "" } else { "range " },
            self.lo,
            self.hi
        )
    }
}

/// Median(a) / median(b), with a 90% bootstrap interval (fixed seed) when both have
/// enough repetitions, else the range.
pub fn ratio_of(a: &[f64], b: &[f64]) -> Option<Ratio> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let value = stats::median(a) / stats::median(b);
    if a.len() >= MIN_REPS_FOR_INTERVAL && b.len() >= MIN_REPS_FOR_INTERVAL {
        let mut rng = stats::SplitMix64::new(stats::BOOT_SEED);
        let mut ra = vec![0.0; a.len()];
        let mut rb = vec![0.0; b.len()];
        let mut est: Vec<f64> = (0..stats::BOOT_RESAMPLES)
            .map(|_| {
                for x in ra.iter_mut() {
                    *x = a[rng.below(a.len())];
                }
                for x in rb.iter_mut() {
                    *x = b[rng.below(b.len())];
                }
                stats::median_in_place(&mut ra) / stats::median_in_place(&mut rb)
            })
            .collect();
        est.sort_by(f64::total_cmp);
        return Some(Ratio {
            value,
            lo: stats::quantile_sorted(&est, 0.05),
            hi: stats::quantile_sorted(&est, 0.95),
            interval: true,
        });
    }
    let (amin, amax) = (
        a.iter().copied().fold(f64::INFINITY, f64::min),
        a.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let (bmin, bmax) = (
        b.iter().copied().fold(f64::INFINITY, f64::min),
        b.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    Some(Ratio {
        value,
        lo: amin / bmax,
        hi: amax / bmin,
        interval: false,
    })
}

pub fn ratios_section(
    ctx: &Ctx,
    w: &Workload,
    doc: &mut Doc,
    made: &mut Vec<charts::ChartFiles>,
) -> Result<()> {
    let (rs, sum, wl) = (ctx.rs, ctx.sum, w.name.as_str());
    doc.h(2, "Relative to the anchors and to the blocking backend");
    if w.open_loop {
        doc.p(
            "Open loop: the throughput is the offered load, so its ratio to an anchor says nothing about the \
             recorder; see the ack latency and the CPU per GiB instead.",
        );
        return Ok(());
    }
    let wanted = anchor_workloads(wl);
    let mut anchors: Vec<&Config> = sum
        .configs
        .iter()
        .filter(|c| !c.is_recorder() && (c.workload == wl || wanted.contains(&c.workload.as_str())))
        .filter(|c| c.metric(m::THROUGHPUT).is_some())
        .collect();
    anchors.sort_by_key(|c| wanted.iter().position(|x| *x == c.workload).unwrap_or(99));
    let backend = rs.dim_index("server.backend");
    let blocking: Vec<&Config> = match backend {
        Some(b) => w
            .rank
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
    // Same cell apart from the backend (and ring knobs); else every blocking configuration's runs.
    let blocking_values = |c: &Config| -> Vec<f64> {
        let Some(b) = backend else { return vec![] };
        let matched = blocking.iter().find(|x| {
            x.dims
                .iter()
                .enumerate()
                .all(|(j, v)| j == b || *v == c.dims[j] || rs.dimensions[j].starts_with("ring."))
        });
        match matched {
            Some(x) => values(ctx, x),
            None => blocking.iter().flat_map(|x| values(ctx, x)).collect(),
        }
    };
    let mut series: Vec<String> = anchors.iter().map(|a| a.short.clone()).collect();
    let with_blocking = !blocking.is_empty();
    if with_blocking {
        series.push("blocking backend".into());
    }
    let candidates: Vec<&Config> = w
        .rank
        .iter()
        .copied()
        .filter(|c| backend.is_none_or(|b| c.dims[b] != "blocking"))
        .collect();
    let row_vals = |c: &Config| -> Vec<Option<Ratio>> {
        let v = values(ctx, c);
        let mut out: Vec<Option<Ratio>> = anchors
            .iter()
            .map(|a| ratio_of(&v, &values(ctx, a)))
            .collect();
        if with_blocking {
            out.push(ratio_of(&v, &blocking_values(c)));
        }
        out
    };
    doc.p(format!(
        "Median throughput of each configuration divided by the median of the reference measured in the same sweep \
         ({}), and by the blocking backend (same cell apart from `server.backend` and the ring knobs, else every \
         blocking configuration). 1.0 = as fast as the reference. In brackets a 90% bootstrap interval of the ratio \
         where both sides have at least 5 runs, else the range (lowest/highest to highest/lowest).",
        if anchors.is_empty() {
            "none".into()
        } else {
            anchors
                .iter()
                .map(|a| {
                    let s = a.metric(m::THROUGHPUT).expect("filtered");
                    format!("{} = {} MB/s over {} runs", a.short, f1(s.median), s.n)
                })
                .collect::<Vec<_>>()
                .join(", ")
        }
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
        ctx.out,
        &format!("ratios-{}", w.tag),
        &MultiChart {
            title: format!("{wl}: throughput relative to references{more}"),
            x_label:
                "configuration throughput / reference throughput (ratio, log scale; 1 = equal)"
                    .into(),
            series: series.clone(),
            reference: Some(1.0),
            rows: candidates
                .iter()
                .take(TOP)
                .map(|c| {
                    (
                        c.short.clone(),
                        row_vals(c).iter().map(|r| r.map(|x| x.value)).collect(),
                    )
                })
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
                    super::opt(c.metric(m::THROUGHPUT).map(|s| s.median)),
                ];
                r.extend(
                    row_vals(c)
                        .into_iter()
                        .map(|v| v.map(|x| x.text()).unwrap_or_else(|| "–".into())),
                );
                r
            })
            .collect(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_carry_an_interval_or_a_range() {
        let a = [10.0, 11.0, 9.0, 10.5, 9.5];
        let b = [5.0, 5.5, 4.5, 5.2, 4.8];
        let r = ratio_of(&a, &b).unwrap();
        assert!(
            r.interval && r.lo < 2.0 && r.hi > 2.0 && (r.value - 2.0).abs() < 1e-9,
            "{r:?}"
        );
        let r = ratio_of(&a[..2], &b).unwrap();
        assert!(!r.interval);
        assert!((r.lo - 10.0 / 5.5).abs() < 1e-9 && (r.hi - 11.0 / 4.5).abs() < 1e-9);
        assert!(r.text().contains("range"));
    }
}

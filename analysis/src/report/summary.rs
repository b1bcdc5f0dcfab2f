//! The one-screen summary at the top of the report: per workload the winner, by how much,
//! with its uncertainty, and what limited it (disk, network, recorder CPU, generator, or
//! the offered load of an open-loop workload).

use super::{f1, pct, Ctx, Workload};
use crate::aggregate::{higher_is_better, metric_title, Config};
use crate::data::{m, ResultSet};
use crate::doc::Doc;

/// Cores the recorder and the generator could use in a run, from its `placement` column
/// (`separate:recorder=1;generator=0`) and the machine's cores.
fn cores_of(placement: &str, machine: usize) -> (f64, f64) {
    let count = |key: &str| {
        placement
            .split(';')
            .find_map(|kv| kv.trim_start_matches("separate:").strip_prefix(key))
            .map(|cpus| cpus.split(',').filter(|c| !c.trim().is_empty()).count())
    };
    match (count("recorder="), count("generator=")) {
        (Some(r), Some(g)) if r > 0 && g > 0 => (r as f64, g as f64),
        _ => (machine as f64, machine as f64),
    }
}

/// What limited a configuration, from the medians of its ok runs.
pub fn limit(rs: &ResultSet, c: &Config, open_loop: bool, iperf3: Option<f64>) -> String {
    let med = |k: usize| c.metric(k).map(|s| s.median);
    let machine = rs
        .manifest
        .get("cores")
        .and_then(|v| v.as_u64())
        .unwrap_or(1)
        .max(1) as usize;
    let placement = c
        .runs
        .iter()
        .map(|&i| &rs.runs[i])
        .find(|r| r.is_ok())
        .map(|r| r.placement.as_str())
        .unwrap_or("");
    let (rec_cores, gen_cores) = cores_of(placement, machine);
    let separate = placement.starts_with("separate");
    let rec = med(m::RECORDER_CPU_PCT);
    let gen = med(m::GEN_CPU);
    let mut found = Vec::new();
    if open_loop {
        if let (Some(acked), Some(sent)) = (med(m::THROUGHPUT), med(m::SENT)) {
            let late = med(m::LATE_FRAMES).unwrap_or(0.0);
            if acked >= 0.98 * sent && late == 0.0 {
                found.push(format!(
                    "the offered load: open loop, {} of {} MB/s offered acked, no late frame",
                    f1(acked),
                    f1(sent)
                ));
            } else {
                found.push(format!(
                    "the recorder fell behind the offered load: {} of {} MB/s acked, {} late frames",
                    f1(acked),
                    f1(sent),
                    f1(late)
                ));
            }
        } else {
            found.push("the offered load (open loop)".into());
        }
    }
    if let Some(u) = med(m::DEV_UTIL).filter(|u| *u >= 90.0) {
        found.push(format!("disk (device {u:.0}% busy)"));
    }
    if separate {
        if let Some(r) = rec.filter(|r| *r >= 85.0 * rec_cores) {
            found.push(format!(
                "recorder CPU ({r:.0}% of its {rec_cores:.0} core(s))"
            ));
        }
        if let Some(g) = gen.filter(|g| *g >= 85.0 * gen_cores) {
            found.push(format!(
                "the load generator ({g:.0}% of its {gen_cores:.0} core(s))"
            ));
        }
    } else if let (Some(r), Some(g)) = (rec, gen) {
        if r + g >= 85.0 * machine as f64 {
            found.push(format!(
                "CPU (recorder {r:.0}% + generator {g:.0}% of {machine} cores, shared)"
            ));
        }
    } else if let Some(r) = rec.filter(|r| *r >= 85.0 * rec_cores) {
        found.push(format!("recorder CPU ({r:.0}%)"));
    }
    if !open_loop {
        if let (Some(tp), Some(net)) = (med(m::THROUGHPUT), iperf3) {
            if tp >= 0.8 * net {
                found.push(format!(
                    "the network ({} MB/s, {:.0}% of iperf3's loopback {} MB/s)",
                    f1(tp),
                    100.0 * tp / net,
                    f1(net)
                ));
            }
        }
    }
    if found.is_empty() {
        format!(
            "none of disk, network, recorder CPU ({}) or generator ({}) near its limit: latency- or window-bound",
            rec.map(|r| format!("{r:.0}%")).unwrap_or_else(|| "?".into()),
            gen.map(|g| format!("{g:.0}%")).unwrap_or_else(|| "?".into()),
        )
    } else {
        found.join("; ")
    }
}

/// The iperf3 anchor's median MB/s, if the sweep has one.
pub fn iperf3_mbps(ctx: &Ctx) -> Option<f64> {
    let v: Vec<f64> = ctx
        .sum
        .configs
        .iter()
        .filter(|c| c.kind == "iperf3")
        .filter_map(|c| c.metric(m::THROUGHPUT).map(|s| s.median))
        .collect();
    (!v.is_empty()).then(|| crate::stats::median(&v))
}

pub fn summary(ctx: &Ctx, wls: &[Workload], doc: &mut Doc) {
    doc.h(1, "Summary");
    if wls.iter().all(|w| w.rank.is_empty()) {
        doc.p("No recorder configuration was measured.");
        return;
    }
    let net = iperf3_mbps(ctx);
    let rows = wls
        .iter()
        .filter(|w| !w.rank.is_empty())
        .map(|w| {
            let k = w.metric;
            let top = w.rank[0];
            let s = top
                .metric(k)
                .expect("ranked configurations have the metric");
            let b = s.band();
            let vs = match w.rank.get(1).and_then(|c| c.metric(k).map(|x| (c, x))) {
                None => "the only configuration".to_string(),
                Some((c, x)) => {
                    let xb = x.band();
                    let tied = b.overlaps(&xb);
                    // Better-by as a ratio, its range from the two bands.
                    let (r, lo, hi) = if higher_is_better(k) {
                        (s.median / x.median, b.lo / xb.hi, b.hi / xb.lo)
                    } else {
                        (x.median / s.median, xb.lo / b.hi, xb.hi / b.lo)
                    };
                    format!(
                        "{} better than {} ({} … {}){}",
                        pct(r),
                        c.short,
                        pct(lo.min(hi)),
                        pct(lo.max(hi)),
                        if tied {
                            format!(": **tied** ({}s overlap)", s.band_name())
                        } else {
                            String::new()
                        }
                    )
                }
            };
            vec![
                format!(
                    "`{}`{}",
                    w.name,
                    if w.open_loop { " (open loop)" } else { "" }
                ),
                format!("{} (`{}`)", top.short, top.cell_id),
                format!(
                    "{}: {} ({} {}, {} runs)",
                    metric_title(k),
                    f1(s.median),
                    s.band_name(),
                    s.band_text().trim_start_matches("range "),
                    s.n
                ),
                vs,
                limit(ctx.rs, top, w.open_loop, net),
            ]
        })
        .collect();
    doc.table(
        &[
            "workload",
            "winner",
            "its figure",
            "by how much",
            "what limited it",
        ],
        rows,
    );
    doc.p(
        "Closed-loop workloads are ranked by throughput, open-loop ones (a paced game server: throughput is the \
         offered load) by ack p99. *What limited it*: disk = device busy ≥ 90%; recorder CPU or generator = ≥ 85% \
         of the cores it could use (its half with `placement.policy = separate`, else recorder + generator over all \
         cores); network = within 80% of the iperf3 loopback anchor of the same sweep.",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_come_from_the_placement() {
        assert_eq!(cores_of("separate:recorder=1;generator=0", 2), (1.0, 1.0));
        assert_eq!(
            cores_of("separate:recorder=2,3;generator=0,1", 4),
            (2.0, 2.0)
        );
        assert_eq!(cores_of("shared", 2), (2.0, 2.0));
        assert_eq!(cores_of("", 8), (8.0, 8.0));
    }
}

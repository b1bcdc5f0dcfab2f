//! Rankings of one workload's configurations: closed loop by throughput, open loop by ack
//! latency with acked vs offered throughput and late frames; the ack latency section; and
//! the flags that say a configuration's figure is weaker than it looks (stopped at the
//! repetition cap above its RSD target, runs whose throughput trends in the window).

use super::{f1, opt, pct, Ctx, Workload, TOP};
use crate::aggregate::Config;
use crate::charts::{self, BarChart, BarRow, MultiChart};
use crate::data::m;
use crate::doc::Doc;
use crate::error::Result;

/// Trend over the window beyond which a run is not at steady state.
pub const TREND_LIMIT: f64 = 0.10;

/// Runs of `c` whose throughput trends in the window by more than [`TREND_LIMIT`].
pub fn trending_runs<'a>(ctx: &'a Ctx, c: &Config) -> Vec<(&'a str, f64)> {
    c.runs
        .iter()
        .map(|&i| &ctx.rs.runs[i])
        .filter(|r| r.is_ok())
        .filter_map(|r| {
            let t = ctx.series.get(&r.run_id)?.trend;
            (t.abs() > TREND_LIMIT).then_some((r.run_id.as_str(), t))
        })
        .collect()
}

/// The sweep's repetition rule from the manifest: (min, max, rsd_pct).
fn repeat_rule(ctx: &Ctx) -> Option<(usize, usize, f64)> {
    let r = ctx.rs.manifest.get("repeat")?;
    Some((
        r.get("min")?.as_u64()? as usize,
        r.get("max")?.as_u64()? as usize,
        r.get("rsd_pct")?.as_f64()?,
    ))
}

/// Flags of a configuration: stopped at the repetition cap above its RSD target; runs
/// whose throughput trends in the window.
pub fn flags(ctx: &Ctx, c: &Config) -> Vec<String> {
    let mut f = Vec::new();
    if let (Some((_, max, target)), Some(s)) = (repeat_rule(ctx), c.metric(m::THROUGHPUT)) {
        if s.n >= max && s.rsd_pct > target {
            f.push(format!(
                "stopped at the cap of {max} repetitions with RSD {:.1}% above its {target}% target",
                s.rsd_pct
            ));
        }
    }
    let t = trending_runs(ctx, c);
    if !t.is_empty() {
        f.push(format!(
            "{} of {} runs not steady (throughput trends {} over the window)",
            t.len(),
            c.n_ok,
            t.iter()
                .map(|(id, x)| format!("{:+.0}% in `{id}`", x * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    f
}

pub fn best_paragraph(w: &Workload, doc: &mut Doc) {
    let top = w.rank[0];
    let Some(s) = top.metric(m::THROUGHPUT) else {
        return;
    };
    let band = s.band();
    let ties: Vec<&str> = w.rank[1..]
        .iter()
        .filter(|c| {
            c.metric(m::THROUGHPUT)
                .is_some_and(|x| x.band().overlaps(&band))
        })
        .map(|c| c.short.as_str())
        .collect();
    doc.p(format!(
        "**Highest throughput: {} — {} MB/s ({} {}, {} ok runs), cell `{}`.** {}",
        top.short,
        f1(s.median),
        s.band_name(),
        s.band_text().trim_start_matches("range "),
        s.n,
        top.cell_id,
        if ties.is_empty() {
            "No other configuration is statistically tied with it.".to_string()
        } else {
            format!(
                "Tied with it (intervals, or ranges where there are fewer than 5 runs, overlap): {}{}. `analysis best` picks the simplest of them.",
                ties.iter().take(8).copied().collect::<Vec<_>>().join("; "),
                if ties.len() > 8 { format!("; and {} more", ties.len() - 8) } else { String::new() }
            )
        }
    ));
}

fn points(ctx: &Ctx, c: &Config, k: usize) -> Vec<f64> {
    c.runs
        .iter()
        .filter_map(|&r| {
            let run = &ctx.rs.runs[r];
            run.is_ok().then(|| run.metric(k)).flatten()
        })
        .collect()
}

pub fn throughput_section(
    ctx: &Ctx,
    w: &Workload,
    doc: &mut Doc,
    made: &mut Vec<charts::ChartFiles>,
) -> Result<()> {
    doc.h(2, "Throughput, ranked");
    let rank = &w.rank;
    let best = rank[0].metric(m::THROUGHPUT).map(|s| s.band());
    let any_range = rank
        .iter()
        .any(|c| c.metric(m::THROUGHPUT).is_some_and(|s| s.ci.is_none()));
    let rows: Vec<BarRow> = rank
        .iter()
        .take(TOP)
        .enumerate()
        .map(|(i, c)| {
            let s = c
                .metric(m::THROUGHPUT)
                .expect("ranked configs have throughput");
            let b = s.band();
            let tie = best.is_some_and(|x| x.overlaps(&b));
            BarRow {
                label: format!("#{} {}", i + 1, c.short),
                value: s.median,
                lo: Some(b.lo),
                hi: Some(b.hi),
                points: points(ctx, c, m::THROUGHPUT),
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
        ctx.out,
        &format!("throughput-{}", w.tag),
        &BarChart {
            title: format!("{}: throughput per configuration{more}", w.name),
            x_label: format!(
                "throughput (MB/s): bar = median, line = 90% interval{}, dots = repetitions",
                if any_range {
                    " (range where fewer than 5 runs)"
                } else {
                    ""
                }
            ),
            rows,
            bars: true,
            reference: None,
            band: None,
            legend: vec![
                (charts::GREEN, "overlaps the best's (tie)".into()),
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
                s.band_text(),
                format!("{:.1}%", s.rsd_pct),
                format!("{}/{}", c.n_ok, c.runs.len()),
                pct(s.median / top),
                flags(ctx, c).join("; "),
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
            "90% interval (or range)",
            "RSD",
            "ok/runs",
            "vs best",
            "flags",
            "cell",
            "dimensions",
        ],
        rows,
    );
    Ok(())
}

/// Open loop: the generator sends at its tick rate whatever the recorder does, so the
/// ranking is by ack latency and late frames, with acked vs offered throughput shown.
pub fn open_loop_section(ctx: &Ctx, w: &Workload, doc: &mut Doc) {
    doc.h(2, "Open loop: ranked by ack latency, acked vs offered");
    doc.p(
        "The load generator sends at its tick rate whatever the recorder does (open loop), so acked throughput \
         is the offered load as long as the recorder keeps up: it is shown next to what was offered, never \
         ranked. Configurations are ranked by ack p99 (lowest first); late frames are frames the generator \
         could not send on time.",
    );
    let v = |c: &Config, k| c.metric(k).map(|s| s.median);
    doc.table(
        &[
            "rank",
            "configuration",
            "ack p99 µs",
            "p99 interval (or range)",
            "ack p50 µs",
            "late frames",
            "acked MB/s",
            "offered MB/s",
            "acked / offered",
            "flags",
            "cell",
        ],
        w.rank
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let p99 = c.metric(m::ACK_P99);
                vec![
                    (i + 1).to_string(),
                    c.short.clone(),
                    opt(p99.map(|s| s.median)),
                    p99.map(|s| s.band_text()).unwrap_or_default(),
                    opt(v(c, m::ACK_P50)),
                    opt(v(c, m::LATE_FRAMES)),
                    opt(v(c, m::THROUGHPUT)),
                    opt(v(c, m::SENT)),
                    match (v(c, m::THROUGHPUT), v(c, m::SENT)) {
                        (Some(a), Some(s)) if s > 0.0 => format!("{:.1}%", 100.0 * a / s),
                        _ => "–".into(),
                    },
                    flags(ctx, c).join("; "),
                    format!("`{}`", c.cell_id),
                ]
            })
            .collect(),
    );
}

pub fn latency_section(
    ctx: &Ctx,
    w: &Workload,
    doc: &mut Doc,
    made: &mut Vec<charts::ChartFiles>,
) -> Result<()> {
    let rank = super::ranked(ctx.sum, &w.name, m::ACK_P99);
    doc.h(2, "Ack latency (p50, p90, p99, p99.9)");
    if rank.is_empty() {
        doc.p("No run of this workload measured ack latency.");
        return Ok(());
    }
    if !w.open_loop {
        doc.p(
            "Closed loop: a frame's ack latency runs from the moment its last byte was written into the socket, \
             so it mostly reflects the queue the in-flight bound allows (in flight / throughput).",
        );
    }
    let val = |c: &Config, k: usize| c.metric(k).map(|s| s.median);
    let more = if rank.len() > TOP {
        format!(" (lowest p99: {TOP} of {})", rank.len())
    } else {
        String::new()
    };
    let c = charts::multi_log_chart(
        ctx.out,
        &format!("latency-{}", w.tag),
        &MultiChart {
            title: format!(
                "{}: ack latency from {}{more}",
                w.name,
                if w.open_loop {
                    "intended send time"
                } else {
                    "the write of the last byte"
                }
            ),
            x_label: "ack latency (µs, log scale), median over repetitions".into(),
            series: vec!["p50".into(), "p90".into(), "p99".into(), "p99.9".into()],
            reference: None,
            rows: rank
                .iter()
                .take(TOP)
                .map(|c| {
                    (
                        c.short.clone(),
                        vec![
                            val(c, m::ACK_P50),
                            val(c, m::ACK_P90),
                            val(c, m::ACK_P99),
                            val(c, m::ACK_P999),
                        ],
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
            "p90 µs",
            "p99 µs",
            "p99 interval (or range)",
            "p99.9 µs",
            "max µs",
            "cell",
        ],
        rank.iter()
            .map(|c| {
                vec![
                    c.short.clone(),
                    opt(val(c, m::ACK_P50)),
                    opt(val(c, m::ACK_P90)),
                    opt(val(c, m::ACK_P99)),
                    c.metric(m::ACK_P99)
                        .map(|s| s.band_text())
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

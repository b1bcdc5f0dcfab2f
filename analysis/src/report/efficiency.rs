//! Efficiency of one workload's configurations: CPU seconds per GiB and I/Os per system
//! call, with their ranges, and the CPU columns that say what saturated.

use super::{opt, ranked, Ctx, Workload, TOP};
use crate::aggregate::metric_title;
use crate::charts::{self, BarChart, BarRow};
use crate::data::m;
use crate::doc::Doc;
use crate::error::Result;

pub fn efficiency_section(
    ctx: &Ctx,
    w: &Workload,
    doc: &mut Doc,
    made: &mut Vec<charts::ChartFiles>,
) -> Result<()> {
    let (sum, wl, out, tag) = (ctx.sum, w.name.as_str(), ctx.out, w.tag.as_str());
    doc.h(2, "Efficiency");
    let mut any = false;
    for (k, stem, what) in [
        (
            m::CPU_S_PER_GIB,
            "cpu-per-gib",
            "recorder CPU seconds (every thread) per GiB moved, lower is better",
        ),
        (
            m::IOS_PER_SYSCALL,
            "ios-per-syscall",
            "I/Os per system call, higher is better",
        ),
    ] {
        let rank = ranked(sum, wl, k);
        if rank.is_empty() {
            doc.p(format!(
                "No run of this workload measured {}{}.",
                metric_title(k),
                if k == m::IOS_PER_SYSCALL {
                    " (only io_uring runs count completions per io_uring_enter)"
                } else {
                    ""
                }
            ));
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
                "CPU s/GiB range",
                "I/Os per syscall",
                "recorder CPU %",
                "generator CPU %",
                "device busy %",
                "ctx switches/s",
                "peak RSS KiB",
            ],
            rank.iter()
                .map(|c| {
                    let v = |k| c.metric(k).map(|s| s.median);
                    vec![
                        c.short.clone(),
                        opt(v(m::THROUGHPUT)),
                        opt(v(m::CPU_S_PER_GIB)),
                        c.metric(m::CPU_S_PER_GIB)
                            .map(|s| format!("{}–{}", super::f1(s.min), super::f1(s.max)))
                            .unwrap_or_default(),
                        opt(v(m::IOS_PER_SYSCALL)),
                        opt(v(m::RECORDER_CPU_PCT)),
                        opt(v(m::GEN_CPU)),
                        opt(v(m::DEV_UTIL)),
                        opt(v(18)),
                        opt(v(m::RSS_KB)),
                    ]
                })
                .collect(),
        );
        doc.p(
            "CPU columns are percent of one core (a recorder pinned to one core saturates at ~100%); what limited \
             the best configuration is in the summary at the top.",
        );
    }
    Ok(())
}

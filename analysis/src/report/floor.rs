//! The ring's own overhead floor: `nop` anchor runs (`recorder io-bench --nop` on a ring
//! configuration, NOPs/s and CPU ns per NOP) and every io_uring recorder configuration put
//! against the floor of the ring with the same effective setup flags: how much of its
//! CPU the bare ring work of its completions accounts for.

use super::{f1, opt, Ctx};
use crate::aggregate::Config;
use crate::data::m;
use crate::doc::Doc;

/// `none` for an empty flag set.
fn flags_name(f: &str) -> &str {
    if f.is_empty() {
        "none"
    } else {
        f
    }
}

/// CPU % of one core that `completions_per_s` NOPs would cost at `ns_per_nop`.
pub fn floor_cpu_pct(completions_per_s: f64, ns_per_nop: f64) -> f64 {
    completions_per_s * ns_per_nop / 1e7
}

pub fn floor_section(ctx: &Ctx, doc: &mut Doc) {
    let (rs, sum) = (ctx.rs, ctx.sum);
    let nops: Vec<&Config> = sum
        .configs
        .iter()
        .filter(|c| c.kind == "nop" && c.metric(m::NOP_CPU_NS).is_some())
        .collect();
    let recs: Vec<&Config> = sum
        .configs
        .iter()
        .filter(|c| c.is_recorder() && c.metric(m::URING_COMPLETIONS_PER_S).is_some())
        .collect();
    if nops.is_empty() && recs.is_empty() {
        return;
    }
    doc.h(1, "Ring overhead floor");
    if nops.is_empty() {
        doc.p(
            "No nop anchor in this sweep (`kind = \"nop\"` cells run `recorder io-bench --nop` on each ring \
             configuration): recorder runs are not put against the ring's own cost.",
        );
        return;
    }
    doc.p(
        "nop anchor: IORING_OP_NOPs kept in flight on a ring built from the cell's [ring] options \
         (`recorder io-bench --nop`), the cost of the ring alone. NOPs/s per core = 10^9 / CPU ns per NOP \
         (the whole process, an SQPOLL thread included). Medians over the runs, ranges in brackets.",
    );
    doc.table(
        &[
            "configuration",
            "setup flags",
            "NOPs/s",
            "NOPs/s per core",
            "CPU ns per NOP",
            "NOPs per enter",
            "runs",
        ],
        nops.iter()
            .map(|c| {
                let s = |k| c.metric(k);
                vec![
                    c.short.clone(),
                    flags_name(c.effective_flags(rs).unwrap_or("")).to_string(),
                    s(m::NOPS_PER_S)
                        .map(|s| format!("{} ({}–{})", f1(s.median), f1(s.min), f1(s.max)))
                        .unwrap_or_default(),
                    s(m::NOP_CPU_NS)
                        .map(|s| {
                            format!(
                                "{} ({}–{})",
                                f1(1e9 / s.median),
                                f1(1e9 / s.max),
                                f1(1e9 / s.min)
                            )
                        })
                        .unwrap_or_default(),
                    s(m::NOP_CPU_NS)
                        .map(|s| format!("{} ({}–{})", f1(s.median), f1(s.min), f1(s.max)))
                        .unwrap_or_default(),
                    opt(s(m::NOPS_PER_ENTER).map(|s| s.median)),
                    c.n_ok.to_string(),
                ]
            })
            .collect(),
    );
    if recs.is_empty() {
        return;
    }
    doc.p(
        "Each io_uring recorder configuration against the floor of the ring with the same effective setup \
         flags: its completions per second (all rings, the whole run) at the NOP cost would take \
         `ring floor CPU %` of one core; `share` is that part of the recorder's own CPU. A small share says \
         the ring itself is not what the recorder spends its CPU on.",
    );
    let floor_of = |flags: &str| {
        nops.iter()
            .find(|n| n.effective_flags(rs) == Some(flags))
            .and_then(|n| n.metric(m::NOP_CPU_NS))
            .map(|s| s.median)
    };
    doc.table(
        &[
            "workload",
            "configuration",
            "setup flags",
            "completions/s",
            "I/Os per syscall",
            "CPU ns per NOP",
            "ring floor CPU %",
            "recorder CPU %",
            "share",
        ],
        recs.iter()
            .map(|c| {
                let v = |k| c.metric(k).map(|s| s.median);
                let flags = c.effective_flags(rs).unwrap_or("");
                let ns = floor_of(flags);
                let floor = ns
                    .zip(v(m::URING_COMPLETIONS_PER_S))
                    .map(|(n, r)| floor_cpu_pct(r, n));
                let share = floor
                    .zip(v(m::RECORDER_CPU_PCT).filter(|p| *p > 0.0))
                    .map(|(f, p)| format!("{:.1}%", 100.0 * f / p));
                vec![
                    c.workload.clone(),
                    c.short.clone(),
                    flags_name(flags).to_string(),
                    opt(v(m::URING_COMPLETIONS_PER_S)),
                    opt(v(m::IOS_PER_SYSCALL)),
                    ns.map(f1)
                        .unwrap_or_else(|| "no nop run with these flags".into()),
                    opt(floor),
                    opt(v(m::RECORDER_CPU_PCT)),
                    share.unwrap_or_else(|| "–".into()),
                ]
            })
            .collect(),
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn floor_cpu_pct_is_completions_at_the_nop_cost() {
        // 1 M completions/s at 100 ns each is 0.1 s of CPU per second: 10% of a core.
        assert!((super::floor_cpu_pct(1e6, 100.0) - 10.0).abs() < 1e-9);
    }
}

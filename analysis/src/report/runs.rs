//! One run's time series, stability within runs (stalls, trends), the runs that were not
//! measured, and the machine.

use std::collections::{BTreeMap, HashMap};

use super::{f1, Ctx, Workload};
use crate::aggregate::{Config, Summary};
use crate::charts::{self, Panel, SeriesChart};
use crate::data::{m, ResultSet, SeriesSummary, Status};
use crate::doc::Doc;
use crate::error::{Error, Result};
use crate::stats;

/// The ok run of `c` whose throughput is closest to the configuration's median.
pub fn median_run<'a>(rs: &'a ResultSet, c: &Config) -> Option<&'a crate::data::Run> {
    let med = c.metric(m::THROUGHPUT)?.median;
    c.runs
        .iter()
        .map(|&i| &rs.runs[i])
        .filter(|r| r.is_ok())
        .filter_map(|r| r.metric(m::THROUGHPUT).map(|t| (r, (t - med).abs())))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(r, _)| r)
}

pub fn timeseries_section(
    ctx: &Ctx,
    w: &Workload,
    doc: &mut Doc,
    made: &mut Vec<charts::ChartFiles>,
) -> Result<()> {
    let (rs, sum, rank, opts, out) = (ctx.rs, ctx.sum, &w.rank, ctx.opts, ctx.out);
    doc.h(2, "Time series of one run");
    let run = match &opts.run {
        Some(id) => rs.runs.iter().find(|r| &r.run_id == id).ok_or_else(|| {
            Error::Usage(format!(
                "--run {id}: no run with that run_id in {}/runs.csv",
                rs.dir.display()
            ))
        })?,
        None => match median_run(rs, rank[0]) {
            Some(r) => r,
            None => {
                doc.p("No ok run to show.");
                return Ok(());
            }
        },
    };
    let cfg = sum
        .configs
        .iter()
        .find(|c| c.cell_id == run.cell_id && c.revision == run.revision);
    let Some(ts) = rs.timeseries(&run.run_id)? else {
        doc.p(format!(
            "Run `{}` has no time series ({} does not exist).",
            run.run_id,
            rs.timeseries_path(&run.run_id).display()
        ));
        return Ok(());
    };
    doc.p(format!(
        "Run `{}` ({}; {}), {} samples. {}",
        run.run_id,
        cfg.map(|c| c.short.as_str()).unwrap_or(""),
        run.dims
            .iter()
            .zip(&rs.dimensions)
            .map(|(v, n)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(";"),
        ts.t_s.len(),
        if opts.run.is_some() {
            "Chosen with --run."
        } else {
            "The median run of the best configuration (choose another with --run RUN_ID)."
        }
    ));
    let col = |name: &str| ts.column(name).map(|v| v.to_vec());
    let kib_to_mib = |name: &str| {
        ts.column(name)
            .map(|v| v.iter().map(|x| x.map(|k| k / 1024.0)).collect::<Vec<_>>())
    };
    let mut panels = Vec::new();
    let mk = |names: &[(&str, &str)],
              f: &dyn Fn(&str) -> Option<Vec<Option<f64>>>|
     -> Vec<(String, Vec<Option<f64>>)> {
        names
            .iter()
            .filter_map(|(n, label)| f(n).map(|v| (label.to_string(), v)))
            .collect()
    };
    for (label, names, mib) in [
        (
            "MB/s",
            &[
                (results_schema::series::THROUGHPUT, "recorder throughput"),
                (results_schema::series::DEV_MB_PER_S, "device"),
            ][..],
            false,
        ),
        (
            "device busy (%)",
            &[("dev_util_pct", "device util")][..],
            false,
        ),
        (
            "MiB",
            &[("dirty_kb", "Dirty"), ("writeback_kb", "Writeback")][..],
            true,
        ),
        (
            "CPU (%: machine user/sys/iowait/steal; recorder, generator of one core)",
            &[
                ("cpu_user_pct", "user"),
                ("cpu_sys_pct", "sys"),
                ("cpu_iowait_pct", "iowait"),
                ("steal_pct", "steal"),
                ("recorder_cpu_pct", "recorder"),
                ("gen_cpu_pct", "generator"),
            ][..],
            false,
        ),
    ] {
        let s = if mib {
            mk(names, &kib_to_mib)
        } else {
            mk(names, &col)
        };
        if !s.is_empty() {
            panels.push(Panel {
                y_label: label.into(),
                series: s,
            });
        }
    }
    let c = charts::series_chart(
        out,
        "timeseries",
        &SeriesChart {
            title: format!(
                "Run {}: throughput, device, page cache and CPU over time",
                run.run_id
            ),
            t: ts.t_s.clone(),
            panels,
        },
    )?;
    made.push(c.clone());
    doc.chart(c);
    Ok(())
}

pub fn stability_section(ctx: &Ctx, doc: &mut Doc) {
    let (rs, sum, series) = (ctx.rs, ctx.sum, ctx.series);
    doc.h(1, "Stability within runs");
    if series.is_empty() {
        doc.p("No time series in this sweep.");
        return;
    }
    let mut rows: Vec<(f64, f64, f64, f64, &Config, usize)> = Vec::new();
    for c in sum.configs.iter().filter(|c| c.is_recorder()) {
        let ss: Vec<&SeriesSummary> = c
            .runs
            .iter()
            .filter_map(|&i| series.get(&rs.runs[i].run_id))
            .collect();
        if ss.is_empty() {
            continue;
        }
        let stall = stats::mean(&ss.iter().map(|s| s.stall_fraction).collect::<Vec<_>>());
        let cov = stats::median(&ss.iter().map(|s| s.throughput_cov).collect::<Vec<_>>());
        let dirty = ss.iter().map(|s| s.dirty_kb_max).fold(0.0, f64::max);
        let wb = ss.iter().map(|s| s.writeback_kb_max).fold(0.0, f64::max);
        rows.push((stall, cov, dirty, wb, c, ss.len()));
    }
    let mut trending: Vec<(&str, &Config, f64)> = Vec::new();
    for c in sum.configs.iter() {
        for r in c.runs.iter().map(|&i| &rs.runs[i]).filter(|r| r.is_ok()) {
            if let Some(s) = series.get(&r.run_id) {
                if s.trend.abs() > super::ranking::TREND_LIMIT {
                    trending.push((r.run_id.as_str(), c, s.trend));
                }
            }
        }
    }
    trending.sort_by(|a, b| b.2.abs().total_cmp(&a.2.abs()));
    rows.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.total_cmp(&a.1)));
    doc.p(format!(
        "From the time series of {} runs: share of samples in the measured window below half the run's median \
         throughput (stalls, e.g. write-back throttling) and the coefficient of variation of per-sample throughput. \
         The 15 least stable configurations:",
        series.len()
    ));
    doc.table(
        &[
            "configuration",
            "runs",
            "stalled samples",
            "throughput CoV (%)",
            "max Dirty (MiB)",
            "max Writeback (MiB)",
        ],
        rows.iter()
            .take(15)
            .map(|(stall, cov, d, w, c, n)| {
                vec![
                    format!("{} ({})", c.short, c.workload),
                    n.to_string(),
                    format!("{:.1}%", stall * 100.0),
                    format!("{:.1}%", cov * 100.0),
                    f1(d / 1024.0),
                    f1(w / 1024.0),
                ]
            })
            .collect(),
    );
    doc.h(2, "Runs not at steady state");
    if trending.is_empty() {
        doc.p(format!(
            "No run's throughput trends by more than {:.0}% over its measured window (least-squares line, start to end).",
            super::ranking::TREND_LIMIT * 100.0
        ));
    } else {
        doc.p(format!(
            "{} runs whose throughput trends by more than {:.0}% over the measured window (least-squares line through \
             the samples, change from start to end relative to the mean): not at steady state; a longer ramp-up or \
             window, or a cause such as memory reclaim or write-back, is worth a look. Their configurations are \
             flagged in the rankings.",
            trending.len(),
            super::ranking::TREND_LIMIT * 100.0
        ));
        doc.table(
            &["run", "configuration", "trend over the window"],
            trending
                .iter()
                .take(30)
                .map(|(id, c, t)| {
                    vec![
                        format!("`{id}`"),
                        format!("{} ({})", c.short, c.workload),
                        format!("{:+.0}%", t * 100.0),
                    ]
                })
                .collect(),
        );
    }
}

pub fn failures_section(rs: &ResultSet, sum: &Summary, doc: &mut Doc) {
    doc.h(1, "Unsupported, failed and rejected runs");
    let mut groups: BTreeMap<(Status, String), Vec<&crate::data::Run>> = BTreeMap::new();
    for r in rs.runs.iter().filter(|r| !r.is_ok()) {
        groups
            .entry((r.status, r.reason.clone()))
            .or_default()
            .push(r);
    }
    if groups.is_empty() {
        doc.p("Every run is ok.");
        return;
    }
    let short: HashMap<(&str, &str), &str> = sum
        .configs
        .iter()
        .map(|c| ((c.revision.as_str(), c.cell_id.as_str()), c.short.as_str()))
        .collect();
    doc.p("Never counted as zero throughput; an `unsupported` cell is what this kernel or device cannot do.");
    doc.table(
        &["status", "reason", "runs", "cells", "examples"],
        groups
            .iter()
            .map(|((st, reason), runs)| {
                let mut cells: Vec<&str> = runs.iter().map(|r| r.cell_id.as_str()).collect();
                cells.sort();
                cells.dedup();
                let ex: Vec<String> = runs
                    .iter()
                    .take(4)
                    .map(|r| {
                        format!(
                            "`{}` {}",
                            r.run_id,
                            short
                                .get(&(r.revision.as_str(), r.cell_id.as_str()))
                                .copied()
                                .unwrap_or("")
                        )
                    })
                    .collect();
                vec![
                    st.as_str().to_string(),
                    if reason.is_empty() {
                        "(no reason given)".into()
                    } else {
                        reason.clone()
                    },
                    runs.len().to_string(),
                    cells.len().to_string(),
                    ex.join("; ") + if runs.len() > 4 { "; …" } else { "" },
                ]
            })
            .collect(),
    );
    let all_bad: Vec<&Config> = sum
        .configs
        .iter()
        .filter(|c| c.all_unsupported_or_failed())
        .collect();
    if !all_bad.is_empty() {
        doc.p(format!(
            "{} configurations have no ok run at all.",
            all_bad.len()
        ));
    }
}

pub fn machine_section(rs: &ResultSet, doc: &mut Doc) {
    doc.h(1, "Machine and sweep");
    let mf = &rs.manifest;
    let s = |k: &str| -> String {
        match mf.get(k) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Null) | None => "–".into(),
            Some(v) => v.to_string(),
        }
    };
    let mem = mf
        .get("mem_total_kb")
        .and_then(|v| v.as_f64())
        .map(|k| format!("{:.1} GiB", k / 1048576.0))
        .unwrap_or_else(|| "–".into());
    let mut rows = vec![
        vec!["kernel".into(), s("kernel")],
        vec!["CPU".into(), s("cpu_model")],
        vec!["cores".into(), s("cores")],
        vec!["memory".into(), mem],
        vec!["git revision".into(), s("git_rev")],
        vec![
            "seed".into(),
            format!(
                "{}{}",
                s("seed"),
                if mf.get("seed_fresh").and_then(|v| v.as_bool()) == Some(true) {
                    " (fresh for this sweep)"
                } else {
                    ""
                }
            ),
        ],
    ];
    if let Some(t) = mf.get("tools").and_then(|v| v.as_object()) {
        rows.push(vec![
            "tool versions".into(),
            t.iter()
                .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or("not installed")))
                .collect::<Vec<_>>()
                .join("; "),
        ]);
    }
    if let Some(revs) = mf.get("revisions").and_then(|v| v.as_object()) {
        rows.push(vec![
            "revisions".into(),
            revs.iter()
                .map(|(k, v)| format!("{k} = {}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    rows.push(vec![
        "command line".into(),
        format!("`{}`", s("command_line")),
    ]);
    rows.push(vec![
        "started / finished".into(),
        format!("{} / {}", s("started_at"), s("finished_at")),
    ]);
    rows.push(vec!["experiment file".into(), s("experiment_file")]);
    if let Some(t) = mf.get("target").and_then(|v| v.as_object()) {
        let g = |k: &str| t.get(k).and_then(|v| v.as_str()).unwrap_or("–").to_string();
        rows.push(vec![
            "target".into(),
            format!(
                "{} `{}` on {} ({}), fs {} ({})",
                g("kind"),
                g("path"),
                g("device"),
                g("model"),
                g("fs"),
                g("mount_options")
            ),
        ]);
        if let Some(q) = t.get("queue").and_then(|v| v.as_object()) {
            rows.push(vec![
                "queue settings before the sweep".into(),
                q.iter()
                    .map(|(k, v)| {
                        format!(
                            "{k}={}",
                            v.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string())
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            ]);
        }
    }
    doc.table(&["", "value"], rows);
    if let Some(h) = mf.get("hwloc_topology").and_then(|v| v.as_str()) {
        doc.p("Topology (hwloc):");
        doc.pre(h);
    }
    if let Some(x) = mf.get("experiment").and_then(|v| v.as_str()) {
        doc.p("Experiment:");
        doc.pre(x);
    }
}

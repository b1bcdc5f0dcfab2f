//! The fio anchor (disk): fio's JSON result and the same telemetry as a recorder run.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{run_sampled, unsupported_or_failed};
use crate::experiment::Cell;
use crate::sweep::outcome::{fill_derived, reject_if_noisy};
use crate::sweep::{Ctx, Outcome};
use crate::telemetry;
use crate::util::{fmt_opt, unix_now};
use results_schema::col;

/// The anchor's fio job: these defaults, then the cell's `fio.*` settings.
pub fn fio_options(cell: &Cell) -> BTreeMap<String, String> {
    let mut opts: BTreeMap<String, String> = [
        ("name", "anchor"),
        ("rw", "write"),
        ("bs", "1m"),
        ("size", "1g"),
        ("ioengine", "io_uring"),
        ("iodepth", "32"),
        ("direct", "1"),
        ("numjobs", "1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in cell.section("fio") {
        opts.insert(k, v);
    }
    opts
}

/// The options in the order fio needs: engine options (hipri, sqthread_poll, fixedbufs,
/// ...) are only known after --ioengine.
pub fn fio_args_order(opts: &BTreeMap<String, String>) -> Vec<(&str, &str)> {
    let mut out: Vec<(&str, &str)> = ["name", "ioengine"]
        .iter()
        .filter_map(|k| opts.get_key_value(*k))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    out.extend(
        opts.iter()
            .filter(|(k, _)| *k != "name" && *k != "ioengine")
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    out
}

pub(crate) fn run_fio(ctx: &Ctx, cell: &Cell, run_id: &str) -> Outcome {
    let exp = ctx.exp;
    let dir = ctx.target.path.join(format!("fio-{run_id}"));
    let _ = std::fs::create_dir_all(&dir);
    let log_rel = format!("logs/{run_id}.log");
    let json = ctx.out.join(format!("logs/{run_id}.fio.json"));
    let opts = fio_options(cell);
    let mut cmd = Command::new("fio");
    for (k, v) in fio_args_order(&opts) {
        cmd.arg(format!("--{k}={v}"));
    }
    cmd.arg(format!("--directory={}", dir.display()))
        .arg("--time_based")
        .arg("--group_reporting")
        .arg(format!("--runtime={}", exp.measure_s.ceil() as u64))
        .arg(format!("--ramp_time={}", exp.ramp_up_s.ceil() as u64))
        .arg("--output-format=json")
        .arg(format!("--output={}", json.display()));
    let t_start = Instant::now();
    let started = unix_now();
    let res = run_sampled(ctx, cmd, &ctx.out.join(&log_rel), &[]);
    let _ = std::fs::remove_dir_all(&dir);
    let (ok, text, samples) = match res {
        Ok(x) => x,
        Err(e) => return Outcome::bad("failed", e),
    };
    let jtext = std::fs::read_to_string(&json).unwrap_or_default();
    if !ok {
        let mut o = unsupported_or_failed(&format!("{text}\n{jtext}"), "fio");
        o.log = log_rel;
        return o;
    }
    // fio may print warnings before the JSON object.
    let v: serde_json::Value = match jtext
        .find('{')
        .and_then(|i| serde_json::from_str(&jtext[i..]).ok())
    {
        Some(v) => v,
        None => {
            return Outcome {
                log: log_rel,
                ..Outcome::bad("failed", "fio wrote no JSON result")
            }
        }
    };
    let job = &v["jobs"][0];
    if job["error"].as_i64().unwrap_or(0) != 0 {
        let mut o =
            unsupported_or_failed(&format!("{text}\nerror {}", job["error"]), "fio job error");
        if job["error"].as_i64() == Some(95) {
            o.status = "unsupported".into();
        }
        o.log = log_rel;
        return o;
    }
    let bw = job["read"]["bw_bytes"].as_f64().unwrap_or(0.0)
        + job["write"]["bw_bytes"].as_f64().unwrap_or(0.0);
    let iops =
        job["read"]["iops"].as_f64().unwrap_or(0.0) + job["write"]["iops"].as_f64().unwrap_or(0.0);
    let side = if job["write"]["bw_bytes"].as_f64().unwrap_or(0.0)
        >= job["read"]["bw_bytes"].as_f64().unwrap_or(0.0)
    {
        "write"
    } else {
        "read"
    };
    let pct = |p: &str| {
        job[side]["clat_ns"]["percentile"][p]
            .as_f64()
            .map(|ns| ns / 1000.0)
    };
    let mut o = Outcome {
        status: "ok".into(),
        log: log_rel,
        ..Default::default()
    };
    let ws = t_start + Duration::from_secs_f64(exp.ramp_up_s.ceil());
    o.started_at = Some(started + exp.ramp_up_s.ceil());
    o.duration_s = Some(exp.measure_s.ceil());
    o.m.insert(col::THROUGHPUT, fmt_opt(Some(bw / 1e6)));
    o.m.insert(col::REQ_P50_US, fmt_opt(pct("50.000000")));
    o.m.insert(col::REQ_P99_US, fmt_opt(pct("99.000000")));
    o.m.insert(col::ERRORS, "0".into());
    let runtime_s = exp.measure_s.ceil();
    let cpu_s = (job["usr_cpu"].as_f64().unwrap_or(0.0) + job["sys_cpu"].as_f64().unwrap_or(0.0))
        / 100.0
        * runtime_s;
    let bytes = bw * runtime_s;
    if bytes > 0.0 {
        o.m.insert(
            "cpu_s_per_gib",
            fmt_opt(Some(cpu_s / (bytes / (1u64 << 30) as f64))),
        );
    }
    let _ = iops;
    let d = telemetry::derive(&samples, ws, ws + Duration::from_secs_f64(runtime_s));
    let _ = telemetry::write_timeseries(
        &ctx.out.join(format!("timeseries/{run_id}.csv")),
        &samples,
        ws,
    );
    fill_derived(&mut o, &d, bytes as u64, runtime_s);
    reject_if_noisy(ctx, cell, &mut o);
    o
}

//! The iperf3 anchor (loopback TCP): a one-shot server and a client run with its JSON result.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, run_sampled, unsupported_or_failed};
use crate::experiment::Cell;
use crate::sweep::outcome::{fill_derived, reject_if_noisy};
use crate::sweep::{Ctx, Outcome};
use crate::telemetry;
use crate::util::{fmt_opt, unix_now};
use results_schema::col;

pub(crate) fn run_iperf3(ctx: &Ctx, cell: &Cell, run_id: &str) -> Outcome {
    let exp = ctx.exp;
    let log_rel = format!("logs/{run_id}.log");
    let port = match free_port() {
        Ok(p) => p.to_string(),
        Err(e) => return Outcome::bad("failed", e),
    };
    let slog = ctx.out.join(format!("logs/{run_id}.server.log"));
    let server = std::fs::File::create(&slog)
        .map_err(|e| e.to_string())
        .and_then(|f| {
            Command::new("iperf3")
                .args(["-s", "-1", "-B", "127.0.0.1", "-p", &port])
                .stdin(Stdio::null())
                .stdout(f.try_clone().map_err(|e| e.to_string())?)
                .stderr(f)
                .spawn()
                .map_err(|e| format!("cannot start iperf3 -s: {e} (is iperf3 installed?)"))
        });
    let mut server = match server {
        Ok(s) => s,
        Err(e) => return Outcome::bad("failed", e),
    };
    std::thread::sleep(Duration::from_millis(400));
    let mut cmd = Command::new("iperf3");
    cmd.args(["-c", "127.0.0.1", "-p", &port, "-J"])
        .arg("-t")
        .arg(format!("{}", exp.measure_s.ceil() as u64))
        .arg("-O")
        .arg(format!("{}", exp.ramp_up_s.ceil() as u64));
    for (k, v) in cell.section("iperf3") {
        match k.as_str() {
            "parallel" => {
                cmd.arg("-P").arg(v);
            }
            "len" => {
                cmd.arg("-l").arg(v);
            }
            "window" => {
                cmd.arg("-w").arg(v);
            }
            "zerocopy" => {
                if v == "true" || v == "1" {
                    cmd.arg("-Z");
                }
            }
            "reverse" => {
                if v == "true" || v == "1" {
                    cmd.arg("-R");
                }
            }
            other => {
                let _ = server.kill();
                let _ = server.wait();
                return Outcome::bad(
                    "failed",
                    format!("iperf3.{other} is not a known iperf3 setting; use parallel, len, window, zerocopy, reverse"),
                );
            }
        }
    }
    let t_start = Instant::now();
    let started = unix_now();
    let res = run_sampled(ctx, cmd, &ctx.out.join(&log_rel), &[server.id() as i32]);
    let _ = server.kill();
    let _ = server.wait();
    let (ok, text, samples) = match res {
        Ok(x) => x,
        Err(e) => return Outcome::bad("failed", e),
    };
    let v: Option<serde_json::Value> = text
        .find('{')
        .and_then(|i| serde_json::from_str(&text[i..]).ok());
    let Some(v) = v.filter(|_| ok) else {
        let mut o = unsupported_or_failed(&text, "iperf3");
        o.log = log_rel;
        return o;
    };
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    let secs = v["end"]["sum_received"]["seconds"]
        .as_f64()
        .unwrap_or(exp.measure_s);
    let mut o = Outcome {
        status: "ok".into(),
        log: log_rel,
        ..Default::default()
    };
    let ws = t_start + Duration::from_secs_f64(exp.ramp_up_s.ceil());
    o.started_at = Some(started + exp.ramp_up_s.ceil());
    o.duration_s = Some(secs);
    o.m.insert(col::THROUGHPUT, fmt_opt(Some(bps / 8.0 / 1e6)));
    o.m.insert(col::ERRORS, "0".into());
    let bytes = bps / 8.0 * secs;
    let cpu_pct = v["end"]["cpu_utilization_percent"]["remote_total"].as_f64();
    if let Some(c) = cpu_pct {
        if bytes > 0.0 {
            o.m.insert(
                "cpu_s_per_gib",
                fmt_opt(Some(c / 100.0 * secs / (bytes / (1u64 << 30) as f64))),
            );
        }
    }
    let d = telemetry::derive(&samples, ws, ws + Duration::from_secs_f64(secs));
    let _ = telemetry::write_timeseries(
        &ctx.out.join(format!("timeseries/{run_id}.csv")),
        &samples,
        ws,
    );
    fill_derived(&mut o, &d, bytes as u64, secs);
    // The generator here is the iperf3 client, not the harness.
    if let Some(c) = v["end"]["cpu_utilization_percent"]["host_total"].as_f64() {
        o.m.insert(col::GEN_CPU_PCT, fmt_opt(Some(c)));
    }
    reject_if_noisy(ctx, cell, &mut o);
    o
}

//! The `nop` anchor: the ring's own overhead floor. `recorder io-bench --nop` keeps
//! `nop.qd` IORING_OP_NOPs in flight for the measured window on a ring built from the
//! cell's `ring.*` options, and reports NOPs per second, CPU ns per NOP and NOPs per
//! enter. Reports put recorder runs with the same effective setup flags against it.

use std::path::Path;
use std::process::{Command, Stdio};

use super::unsupported_or_failed;
use crate::experiment::Cell;
use crate::sweep::{Ctx, Outcome};
use crate::util::{fmt_opt, unix_now};
use results_schema::col;

/// `nop.*` settings the nop anchor understands.
pub const NOP_KEYS: &[&str] = &["qd"];

/// The ring configuration a nop cell asks for (defaults included) and its io-bench flags.
pub(crate) fn nop_ring_args(cell: &Cell) -> Result<(engine::config::Config, Vec<String>), String> {
    let mut cfg = engine::config::Config::default();
    let mut args = Vec::new();
    for (k, v) in cell.section("ring") {
        let key = format!("ring.{k}");
        cfg.set(&key, &v)
            .map_err(|e| format!("{key} = {v:?} is refused by the recorder's knob table: {e}"))?;
        args.push(format!("--{k}"));
        args.push(v);
    }
    cfg.validate()
        .map_err(|e| format!("the ring options are refused by the recorder's rules: {e}"))?;
    let qd = cell.u64_or("nop.qd", 32)?;
    if qd == 0 || qd > 4096 {
        return Err(format!("nop.qd = {qd}; use 1..=4096 NOPs in flight"));
    }
    args.extend(["--qd".to_string(), qd.to_string()]);
    Ok((cfg, args))
}

pub(crate) fn run_nop(ctx: &Ctx, cell: &Cell, run_id: &str, bin: &Path) -> Outcome {
    let log_rel = format!("logs/{run_id}.log");
    let (cfg, args) = match nop_ring_args(cell) {
        Ok(x) => x,
        Err(e) => return Outcome::bad("failed", e),
    };
    let secs = ctx.exp.measure_s;
    let started = unix_now();
    let out = Command::new(bin)
        .arg("io-bench")
        .args(["--backend", "uring", "--json", "--repeat", "1"])
        .arg("--nop")
        .arg(format!("{secs}"))
        .args(&args)
        .stdin(Stdio::null())
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => return Outcome::bad("failed", format!("cannot start {}: {e}", bin.display())),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let _ = std::fs::write(ctx.out.join(&log_rel), format!("{stdout}{stderr}"));
    let with_log = |mut o: Outcome| {
        o.log = log_rel.clone();
        o
    };
    if !out.status.success() {
        let text = format!("{stderr}{stdout}");
        let mut o = unsupported_or_failed(&text, "recorder io-bench --nop");
        if out.status.code() == Some(3) {
            o.status = "unsupported".into();
        }
        return with_log(o);
    }
    let v: serde_json::Value = match serde_json::from_str(&stdout) {
        Ok(v) => v,
        Err(e) => {
            return with_log(Outcome::bad(
                "failed",
                format!("io-bench --nop printed no JSON result: {e}"),
            ))
        }
    };
    let flags = |k: &str| {
        let f = v[k].as_str().unwrap_or("").to_string();
        if f == "none" {
            String::new()
        } else {
            f
        }
    };
    let (requested, effective) = (flags("ring_flags_requested"), flags("ring_flags"));
    if requested != effective {
        return with_log(Outcome::bad(
            "unsupported",
            format!("the ring was set up with {effective:?}, not the requested {requested:?}"),
        ));
    }
    let run = &v["runs"][0];
    let num = |k: &str| run[k].as_f64();
    let mut o = Outcome {
        status: "ok".into(),
        log: log_rel.clone(),
        started_at: Some(started),
        duration_s: num("elapsed_s"),
        requested_flags: requested,
        effective_flags: effective,
        ..Default::default()
    };
    o.m.insert(col::NOPS_PER_S, fmt_opt(num("nops_per_s")));
    o.m.insert(col::NOP_CPU_NS, fmt_opt(num("cpu_ns_per_nop")));
    o.m.insert(col::NOPS_PER_ENTER, fmt_opt(num("nops_per_enter")));
    o.m.insert(
        col::RECORDER_CPU_PCT,
        fmt_opt(
            num("cpu_s")
                .zip(num("elapsed_s"))
                .map(|(c, e)| 100.0 * c / e.max(1e-9)),
        ),
    );
    o.m.insert(col::RECORDER_CPU_S, fmt_opt(num("cpu_s")));
    o.options = cfg
        .to_pairs()
        .into_iter()
        .filter(|(k, _)| k.starts_with("ring."))
        .collect();
    o
}

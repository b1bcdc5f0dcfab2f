//! Anchors: fio (disk), iperf3 (loopback TCP), nginx (serving), measured like any cell
//! with the same telemetry, and nop (the ring's own overhead floor). Helpers they share.

mod fio;
mod iperf3;
mod nginx;
mod nop;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use super::{Ctx, Outcome};
use crate::telemetry::{self, Sampler};

pub(crate) use fio::run_fio;
pub use fio::{fio_args_order, fio_options};
pub(crate) use iperf3::run_iperf3;
pub(crate) use nginx::run_nginx;
pub use nop::NOP_KEYS;
pub(crate) use nop::{nop_ring_args, run_nop};

pub(crate) fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// Runs a child to completion while sampling telemetry for it; returns (exit ok, stdout+stderr text).
pub(crate) fn run_sampled(
    ctx: &Ctx,
    mut cmd: Command,
    log_path: &Path,
    extra_pids: &[i32],
) -> Result<(bool, String, Vec<telemetry::Sample>), String> {
    let log =
        std::fs::File::create(log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "cannot start {:?}: {e} (is it installed?)",
            cmd.get_program()
        )
    })?;
    let mut pids = vec![child.id() as i32];
    pids.extend_from_slice(extra_pids);
    let sampler = Sampler::start(
        ctx.target.device.clone(),
        pids,
        Arc::new(AtomicU64::new(0)),
        Duration::from_millis(250),
    );
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st;
        }
        if ctx.stop.load(Relaxed) {
            let _ = crate::util::send_signal(child.id(), "INT");
            std::thread::sleep(Duration::from_millis(500));
            let _ = child.kill();
            break child.wait().map_err(|e| e.to_string())?;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (samples, _) = sampler.finish();
    let text = std::fs::read_to_string(log_path).unwrap_or_default();
    Ok((status.success(), text, samples))
}

pub(crate) fn unsupported_or_failed(text: &str, what: &str) -> Outcome {
    let low = text.to_ascii_lowercase();
    let line = text
        .lines()
        .find(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("not supported")
                || l.contains("unsupported")
                || l.contains("invalid argument")
                || l.contains("error")
        })
        .unwrap_or_else(|| {
            text.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
        })
        .trim()
        .to_string();
    if low.contains("operation not supported")
        || low.contains("not supported")
        || low.contains("unsupported")
    {
        Outcome::bad("unsupported", format!("{what}: {line}"))
    } else {
        Outcome::bad("failed", format!("{what}: {line}"))
    }
}

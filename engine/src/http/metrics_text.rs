//! `/metrics`: Prometheus text exposition of the registry's counters.

use crate::protocol::ErrorCode;
use crate::server::registry::{Phase, Registry};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

/// Prometheus text exposition of the registry's counters.
pub fn metrics_text(reg: &Registry) -> String {
    let m = &reg.metrics;
    let g = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let mut s = String::new();
    let mut put = |name: &str, kind: &str, help: &str, v: u64| {
        let _ = write!(
            s,
            "# HELP recorder_{name} {help}\n# TYPE recorder_{name} {kind}\nrecorder_{name} {v}\n"
        );
    };
    let list = reg.list();
    let live = list.iter().filter(|i| i.phase == Phase::Live).count() as u64;
    put("matches_live", "gauge", "Matches in progress.", live);
    put(
        "matches_sealed",
        "gauge",
        "Sealed replays in the store.",
        list.len() as u64 - live,
    );
    put(
        "matches_started_total",
        "counter",
        "New matches started.",
        g(&m.matches_started),
    );
    put(
        "matches_resumed_total",
        "counter",
        "Writer resumes.",
        g(&m.matches_resumed),
    );
    put(
        "matches_sealed_total",
        "counter",
        "Matches sealed since start.",
        g(&m.matches_sealed),
    );
    put("frames_total", "counter", "Frames stored.", g(&m.frames));
    put(
        "frames_resent_total",
        "counter",
        "Resent frames ignored.",
        g(&m.resent_frames),
    );
    put(
        "payload_bytes_total",
        "counter",
        "Frame payload bytes stored.",
        g(&m.payload_bytes),
    );
    put("acks_total", "counter", "ACK messages sent.", g(&m.acks));
    let (enters, cqes) = crate::sys::ring::process_counters();
    put(
        "uring_enter_calls_total",
        "counter",
        "io_uring_enter system calls made by all rings of the process (0 for the blocking backend).",
        enters,
    );
    put(
        "uring_completions_total",
        "counter",
        "Completions reaped from all rings of the process; divided by uring_enter_calls_total it is I/Os per system call.",
        cqes,
    );
    put(
        "file_writes_total",
        "counter",
        "Writes to replay files.",
        g(&m.writes),
    );
    put(
        "file_write_bytes_total",
        "counter",
        "Bytes written to replay files (with O_DIRECT padding and tail rewrites).",
        g(&m.write_bytes),
    );
    put(
        "file_syncs_total",
        "counter",
        "fdatasync calls on replay files.",
        g(&m.syncs),
    );
    put(
        "ds_connections",
        "gauge",
        "Open DS connections.",
        reg.ds_connections() as u64,
    );
    put(
        "ds_connections_total",
        "counter",
        "DS connections accepted.",
        g(&m.ds_connections),
    );
    put(
        "http_connections",
        "gauge",
        "Open HTTP connections.",
        reg.http_connections() as u64,
    );
    put(
        "http_requests_total",
        "counter",
        "HTTP requests.",
        g(&m.http_requests),
    );
    put(
        "http_response_bytes_total",
        "counter",
        "HTTP body bytes sent.",
        g(&m.http_bytes),
    );
    put(
        "http_errors_total",
        "counter",
        "Malformed or timed-out HTTP requests.",
        g(&m.http_errors),
    );
    s.push_str("# HELP recorder_ds_errors_total ERROR messages sent to DS, by code.\n# TYPE recorder_ds_errors_total counter\n");
    for c in ErrorCode::ALL {
        let _ = writeln!(
            s,
            "recorder_ds_errors_total{{code=\"{}\"}} {}",
            c.name(),
            m.errors(c)
        );
    }
    s
}

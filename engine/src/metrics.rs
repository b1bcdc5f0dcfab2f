//! `/metrics` in the Prometheus / OpenMetrics text format, encoded by `prometheus-client`.
//!
//! What is exposed (all `recorder_*` except the standard `process_*`):
//! - counters and gauges read from [`Metrics`] fields at scrape time (the rows of
//!   [`COUNTERS`] and the gauges in [`render`]). **To add a counter**: add an `AtomicU64`
//!   field to `registry::Metrics`, bump it with `Metrics::add(&m.field, n)`, and add one
//!   row to [`COUNTERS`] (name without `_total`, help).
//! - histograms in [`Histograms`] (`registry.metrics.hist`): DS ack latency, HTTP request
//!   duration, storage write and sync duration; observe with [`observe_since`].
//! - `recorder_build_info{version,revision}` and `process_*` (CPU seconds, resident and
//!   virtual memory, open and max fds, threads, start time) read from /proc at scrape time.

use crate::protocol::ErrorCode;
use crate::server::registry::{Metrics, Phase, Registry};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Unit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The Content-Type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency histograms, in seconds.
#[derive(Debug)]
pub struct Histograms {
    /// Per frame: from the read that brought the frame in to the ACK covering it being
    /// queued on the connection.
    pub ds_ack_latency: Histogram,
    /// Per HTTP response: from the whole request head received to the last body byte
    /// handed to the kernel (for a live stream: to its last chunk).
    pub http_request: Histogram,
    /// Per replay-file write (both backends): issue to completion.
    pub storage_write: Histogram,
    /// Per fdatasync of a replay file (both backends): issue to completion.
    pub storage_sync: Histogram,
}

/// 25 µs .. ~27 s in factors of 2: fine enough for histogram_quantile at every scale a
/// recorder sees (a cached write, a journal commit, a slow disk, a long live download).
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(25e-6, 2.0, 21)
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms {
            ds_ack_latency: Histogram::new(latency_buckets()),
            http_request: Histogram::new(latency_buckets()),
            storage_write: Histogram::new(latency_buckets()),
            storage_sync: Histogram::new(latency_buckets()),
        }
    }
}

/// Observes the time since `t0` in seconds.
pub fn observe_since(h: &Histogram, t0: Instant) {
    h.observe(t0.elapsed().as_secs_f64());
}

type Field = fn(&Metrics) -> &AtomicU64;

/// Counters read from `registry::Metrics` fields: (name without `recorder_` and `_total`,
/// help, field). Names are what the harness and dashboards read: keep them.
pub const COUNTERS: &[(&str, &str, Field)] = &[
    ("matches_started", "New matches started.", |m| {
        &m.matches_started
    }),
    ("matches_resumed", "Writer resumes.", |m| &m.matches_resumed),
    ("matches_sealed", "Matches sealed since start.", |m| {
        &m.matches_sealed
    }),
    (
        "matches_abandoned",
        "Matches ended by abandon-after-s (sealed, or sealed and removed).",
        |m| &m.matches_abandoned,
    ),
    ("frames", "Frames stored.", |m| &m.frames),
    ("frames_resent", "Resent frames ignored.", |m| {
        &m.resent_frames
    }),
    ("payload_bytes", "Frame payload bytes stored.", |m| {
        &m.payload_bytes
    }),
    ("acks", "ACK messages sent.", |m| &m.acks),
    ("file_writes", "Writes to replay files.", |m| &m.writes),
    (
        "file_write_bytes",
        "Bytes written to replay files (with O_DIRECT padding and tail rewrites).",
        |m| &m.write_bytes,
    ),
    ("file_syncs", "fdatasync calls on replay files.", |m| {
        &m.syncs
    }),
    ("ds_connections", "DS connections accepted.", |m| {
        &m.ds_connections
    }),
    (
        "ds_connections_dropped",
        "DS connections that ended before their exchange was complete without a protocol answer: reset by the peer, a send that timed out or failed, a thread that could not start (each logged with its reason).",
        |m| &m.ds_connections_dropped,
    ),
    (
        "http_connections_dropped",
        "HTTP connections that ended in the middle of a response or a read: reset by the peer, a send that timed out (http-timeout-ms) or failed, a thread that could not start (each logged with its reason).",
        |m| &m.http_connections_dropped,
    ),
    ("http_requests", "HTTP requests.", |m| &m.http_requests),
    ("http_response_bytes", "HTTP body bytes sent.", |m| {
        &m.http_bytes
    }),
    (
        "http_errors",
        "Malformed or timed-out HTTP requests.",
        |m| &m.http_errors,
    ),
    (
        "journal_flushes",
        "storage-layout=journal: journal flushes completed (each made a group of appends durable).",
        |m| &m.journal_flushes,
    ),
    (
        "journal_flushed_appends",
        "Replay-file writes made durable by journal flushes; divided by journal_flushes_total it is the group size (matches per flush).",
        |m| &m.journal_flushed_appends,
    ),
    (
        "journal_record_bytes",
        "Record bytes made durable in the journals (headers and frame bytes, without block padding).",
        |m| &m.journal_record_bytes,
    ),
    (
        "journal_write_bytes",
        "Bytes written to the journal files (whole blocks: padding and tail-block rewrites included); with file_write_bytes_total over payload_bytes_total it is the write amplification.",
        |m| &m.journal_write_bytes,
    ),
    (
        "journal_checkpoints",
        "Journal checkpoints (replay files made durable, journal space before them reusable).",
        |m| &m.journal_checkpoints,
    ),
    (
        "journal_full_waits",
        "Appends that found their journal full and waited for a checkpoint (back-pressure).",
        |m| &m.journal_full_waits,
    ),
    (
        "replay_fd_opens",
        "storage-layout=journal: replay files opened on demand by the replay-fd-cache (a write to a file that was not open).",
        |m| &m.replay_fd_opens,
    ),
    (
        "replay_fd_evictions",
        "storage-layout=journal: replay files the replay-fd-cache closed to make room (least recently used first).",
        |m| &m.replay_fd_evictions,
    ),    ("tier_uploads", "Replays uploaded to the object store and verified whole.", |m| &m.tier_uploads),
    ("tier_upload_bytes", "Bytes of the replays uploaded.", |m| &m.tier_upload_bytes),
    ("tier_upload_parts", "Multipart parts uploaded.", |m| &m.tier_upload_parts),
    ("tier_upload_failures", "Upload attempts that failed (each is retried).", |m| &m.tier_upload_failures),
    ("tier_upload_lag_us", "Seal-to-archived time summed over uploaded replays, microseconds (divide by tier_uploads_total).", |m| &m.tier_upload_lag_us),
    ("tier_fetches", "Replays fetched from the object store into the local store.", |m| &m.tier_fetches),
    ("tier_fetch_bytes", "Bytes fetched from the object store.", |m| &m.tier_fetch_bytes),
    ("tier_corrupt", "Fetched objects refused by the integrity check (not served).", |m| &m.tier_corrupt),
    ("tier_redirects", "302 answers to presigned object URLs (tier.serve=redirect).", |m| &m.tier_redirects),
    ("tier_live_redirects", "307 answers sending a live match's viewer to the node recording it.", |m| &m.tier_live_redirects),
    ("tier_local_deleted", "Local copies of archived replays deleted (tier.keep-local).", |m| &m.tier_local_deleted),
];

#[derive(Clone, Copy, Debug)]
enum Kind {
    Counter,
    Gauge,
}

/// Values read at scrape time, encoded by the collector.
#[derive(Debug, Default)]
struct Snapshot {
    rows: Vec<(&'static str, &'static str, Kind, u64)>,
    /// recorder_ds_errors_total{code}
    errors: Vec<(&'static str, u64)>,
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for &(name, help, kind, v) in &self.rows {
            match kind {
                Kind::Counter => {
                    let c = ConstCounter::new(v);
                    c.encode(enc.encode_descriptor(name, bare(help), None, c.metric_type())?)?;
                }
                Kind::Gauge => {
                    let g = ConstGauge::new(v as i64);
                    g.encode(enc.encode_descriptor(name, bare(help), None, g.metric_type())?)?;
                }
            }
        }
        let mut m = enc.encode_descriptor(
            "ds_errors",
            "ERROR messages sent to DS, by code",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for &(code, v) in &self.errors {
            ConstCounter::new(v).encode(m.encode_family(&[("code", code)])?)?;
        }
        Ok(())
    }
}

/// `process_*` from /proc/self, read at scrape time. A value /proc does not give is left
/// out (never reported as 0).
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(me) = procfs::process::Process::myself() else {
            return Ok(());
        };
        let gauge = |enc: &mut DescriptorEncoder, name: &str, help: &str, unit, v: f64| {
            let g = ConstGauge::new(v);
            g.encode(enc.encode_descriptor(name, bare(help), unit, g.metric_type())?)
        };
        if let Ok(st) = me.stat() {
            let tps = procfs::ticks_per_second() as f64;
            let c = ConstCounter::new((st.utime + st.stime) as f64 / tps);
            c.encode(enc.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent in seconds",
                Some(&Unit::Seconds),
                c.metric_type(),
            )?)?;
            let page = procfs::page_size() as f64;
            gauge(
                &mut enc,
                "process_resident_memory",
                "Resident memory size in bytes.",
                Some(&Unit::Bytes),
                st.rss as f64 * page,
            )?;
            gauge(
                &mut enc,
                "process_virtual_memory",
                "Virtual memory size in bytes.",
                Some(&Unit::Bytes),
                st.vsize as f64,
            )?;
            gauge(
                &mut enc,
                "process_threads",
                "Number of OS threads in the process.",
                None,
                st.num_threads as f64,
            )?;
            if let Ok(boot) = procfs::boot_time_secs() {
                gauge(
                    &mut enc,
                    "process_start_time",
                    "Start time of the process since unix epoch in seconds.",
                    Some(&Unit::Seconds),
                    boot as f64 + st.starttime as f64 / tps,
                )?;
            }
        }
        if let Ok(n) = me.fd_count() {
            gauge(
                &mut enc,
                "process_open_fds",
                "Number of open file descriptors.",
                None,
                n as f64,
            )?;
        }
        if let Ok(l) = me.limits() {
            if let procfs::process::LimitValue::Value(v) = l.max_open_files.soft_limit {
                gauge(
                    &mut enc,
                    "process_max_fds",
                    "Maximum number of open file descriptors.",
                    None,
                    v as f64,
                )?;
            }
        }
        Ok(())
    }
}

/// prometheus-client ends every help text with a period.
fn bare(help: &str) -> &str {
    help.trim_end_matches('.')
}

/// The whole `/metrics` body.
pub fn render(reg: &Registry) -> String {
    let m = &reg.metrics;
    let list = reg.list();
    let live = list.iter().filter(|i| i.phase == Phase::Live).count() as u64;
    let (enters, cqes) = crate::sys::ring::process_counters();
    let mut snap = Snapshot::default();
    use Kind::*;
    snap.rows.extend([
        ("matches_live", "Matches in progress.", Gauge, live),
        ("matches_sealed", "Sealed replays in the store.", Gauge, list.len() as u64 - live),
        ("ds_connections", "Open DS connections.", Gauge, reg.ds_connections() as u64),
        ("http_connections", "Open HTTP connections.", Gauge, reg.http_connections() as u64),
        ("memory_reserved_bytes", "Bytes of server.memory-budget reserved by the matches in progress (append-buffer-bytes + 128 KiB each).", Gauge, reg.live_matches() as u64 * reg.limits.match_memory),
        ("memory_budget_bytes", "server.memory-budget (effective): a new match that would reserve more gets TOO_MANY_MATCHES.", Gauge, reg.limits.memory_budget.min(i64::MAX as u64)),
        ("uring_enter_calls", "io_uring_enter system calls made by all rings of the process (0 for the blocking backend).", Counter, enters),
        ("uring_completions", "Completions reaped from all rings of the process; divided by uring_enter_calls_total it is I/Os per system call.", Counter, cqes),
    ]);
    let (occ, cap, oldest) = m.journal_gauge();
    let lag_ms = if oldest == 0 {
        0
    } else {
        crate::storage::now_unix_us().saturating_sub(oldest) / 1000
    };
    snap.rows.extend([
        ("journal_occupancy_bytes", "Journal bytes not yet reclaimable (appended since each journal's last checkpoint), summed over the journals.", Gauge, occ),
        ("journal_capacity_bytes", "Record ring bytes of all journals.", Gauge, cap),
        ("journal_checkpoint_lag_ms", "Time since the oldest of the journals' last checkpoints (0 without journals).", Gauge, lag_ms),
    ]);
    snap.rows.extend([
        (
            "tier_backlog",
            "Sealed replays waiting for upload to the object store (on local disk).",
            Gauge,
            m.tier_backlog.load(Ordering::Relaxed),
        ),
        (
            "tier_backlog_bytes",
            "Bytes of the sealed replays waiting for upload.",
            Gauge,
            m.tier_backlog_bytes.load(Ordering::Relaxed),
        ),
    ]);
    for &(name, help, f) in COUNTERS {
        snap.rows
            .push((name, help, Counter, f(m).load(Ordering::Relaxed)));
    }
    snap.errors = ErrorCode::ALL
        .iter()
        .map(|&c| (c.name(), m.errors(c)))
        .collect();

    let mut root = prometheus_client::registry::Registry::default();
    root.register_collector(Box::new(ProcessCollector));
    let r = root.sub_registry_with_prefix("recorder");
    r.register(
        "build",
        "The recorder's version and the git revision it was built from",
        Info::new(vec![
            ("version", crate::VERSION),
            ("revision", crate::GIT_REVISION),
        ]),
    );
    r.register_collector(Box::new(snap));
    // The io_uring backend's SQE / enter / CQE counters and per-option worker counters.
    r.register_collector(crate::server::uring::metrics_collector());
    let h = &m.hist;
    for (name, help, hist) in [
        ("ds_ack_latency", "Per frame: from its receipt to the ACK covering it being queued on the DS connection.", &h.ds_ack_latency),
        ("http_request_duration", "Per HTTP response: from the whole request head received to the last body byte handed to the kernel (a live stream: its last chunk).", &h.http_request),
        ("storage_write_duration", "Per replay-file write, issue to completion (both backends).", &h.storage_write),
        ("storage_sync_duration", "Per replay-file fdatasync, issue to completion (both backends).", &h.storage_sync),
    ] {
        r.register_with_unit(name, bare(help), Unit::Seconds, hist.clone());
    }
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &root).is_err() {
        out.clear();
    }
    out
}

//! The columns of a sweep's result files, in one place for the writer (`harness sweep`)
//! and the reader (`analysis`, which never links the engine). docs/results.md describes
//! every column; a column added here must be added there too.
//!
//! `runs.csv` is `HEAD`, then one `dim.<name>` column per dimension, then `TAIL`, then one
//! `opt.<section>.<name>` column per engine option of [`OPTION_SECTIONS`] (the value in
//! effect in the run, whether or not the experiment varied it). Readers
//! select columns by name, so a column appended to `TAIL` changes nothing for them. A
//! column that is renamed keeps its old name in [`RENAMED`] so that old result
//! directories stay readable ([`canonical`]).
#![forbid(unsafe_code)]

pub mod manifest;

/// `manifest.json`'s `schema`: 2 since the MB/s columns are named `*_mb_per_s`.
pub const SCHEMA_VERSION: u32 = 2;

/// Column names of `runs.csv` (and `timeseries/*.csv` where the same quantity appears).
pub mod col {
    // Identity of the run (before the dimension columns).
    pub const RUN_ID: &str = "run_id";
    pub const CELL_ID: &str = "cell_id";
    pub const REP: &str = "rep";
    pub const PAIR: &str = "pair";
    pub const REVISION: &str = "revision";
    pub const KIND: &str = "kind";
    pub const WORKLOAD: &str = "workload";
    pub const STATUS: &str = "status";
    pub const REASON: &str = "reason";
    pub const STARTED_AT: &str = "started_at";
    pub const DURATION_S: &str = "duration_s";
    pub const DIMS: &str = "dims";
    /// Prefix of the one column per dimension.
    pub const DIM_PREFIX: &str = "dim.";
    /// Prefix of the one column per engine option (`opt.ring.sqpoll`), after `TAIL`.
    pub const OPT_PREFIX: &str = "opt.";

    // After the dimension columns: the documented ones, in docs/results.md order.
    pub const REQUESTED_FLAGS: &str = "requested_flags";
    pub const EFFECTIVE_FLAGS: &str = "effective_flags";
    /// The workload's headline figure, MB/s (10^6 bytes per second).
    pub const THROUGHPUT: &str = "throughput_mb_per_s";
    pub const FRAMES_PER_S: &str = "frames_per_s";
    pub const ACK_P50_US: &str = "ack_p50_us";
    pub const ACK_P99_US: &str = "ack_p99_us";
    pub const ACK_P999_US: &str = "ack_p999_us";
    pub const ACK_MAX_US: &str = "ack_max_us";
    pub const REQ_P50_US: &str = "req_p50_us";
    pub const REQ_P99_US: &str = "req_p99_us";
    pub const CPU_S_PER_GIB: &str = "cpu_s_per_gib";
    pub const IOS_PER_SYSCALL: &str = "ios_per_syscall";
    pub const RSS_KB: &str = "rss_kb";
    pub const GEN_CPU_PCT: &str = "gen_cpu_pct";
    pub const DEV_MB_PER_S: &str = "dev_mb_per_s";
    pub const DEV_IOPS: &str = "dev_iops";
    pub const DEV_MERGE_PCT: &str = "dev_merge_pct";
    pub const DEV_AWAIT_MS: &str = "dev_await_ms";
    pub const DEV_AQU_SZ: &str = "dev_aqu_sz";
    pub const DEV_UTIL_PCT: &str = "dev_util_pct";
    pub const CTX_SWITCHES_PER_S: &str = "ctx_switches_per_s";
    pub const STEAL_PCT: &str = "steal_pct";
    pub const DIRTY_KB_MAX: &str = "dirty_kb_max";
    pub const WRITEBACK_KB_MAX: &str = "writeback_kb_max";
    pub const ERRORS: &str = "errors";
    pub const LOG: &str = "log";

    // Added after the documented columns.
    pub const RECORDER_CPU_PCT: &str = "recorder_cpu_pct";
    pub const RECORDER_WRITE_MB_PER_S: &str = "recorder_write_mb_per_s";
    pub const NET_RX_SOFTIRQ_PER_S: &str = "net_rx_softirq_per_s";
    pub const BLOCK_SOFTIRQ_PER_S: &str = "block_softirq_per_s";
    pub const INTERRUPTS_PER_S: &str = "interrupts_per_s";
    pub const RING_FDINFO: &str = "ring_fdinfo";
    pub const ERROR_KINDS: &str = "error_kinds";
    pub const PLACEMENT: &str = "placement";
    pub const LOAD: &str = "load";
    pub const INFLIGHT_MAX_FRAMES: &str = "inflight_max_frames";
    pub const INFLIGHT_MAX_BYTES: &str = "inflight_max_bytes";
    pub const LATE_FRAMES: &str = "late_frames";
    pub const ACK_P90_US: &str = "ack_p90_us";
    /// Open-loop ingest: payload MB/s the generator wrote during the window.
    pub const SENT_MB_PER_S: &str = "sent_mb_per_s";
    /// Recorder (or anchor server) CPU seconds over the window, every thread.
    pub const RECORDER_CPU_S: &str = "recorder_cpu_s";
    /// The `tier` workload (docs/tier.md): node A's upload backlog drain rate after the
    /// ingest phase, mean seal-to-archived time, and downloads on node B through the tier
    /// (cold: each GET fetches the object), from B's local copies (hot), and from A (local).
    pub const TIER_UPLOAD_MB_PER_S: &str = "tier_upload_mb_per_s";
    pub const TIER_UPLOAD_LAG_MS: &str = "tier_upload_lag_ms";
    pub const TIER_COLD_MB_PER_S: &str = "tier_cold_mb_per_s";
    pub const TIER_HOT_MB_PER_S: &str = "tier_hot_mb_per_s";
    pub const TIER_LOCAL_MB_PER_S: &str = "tier_local_mb_per_s";
    // storage-layout=journal (empty otherwise), from the recorder's /metrics over the run.
    pub const JOURNAL_FLUSHES_PER_S: &str = "journal_flushes_per_s";
    pub const JOURNAL_GROUP_SIZE: &str = "journal_group_size";
    pub const JOURNAL_BYTES_PER_FLUSH: &str = "journal_bytes_per_flush";
    pub const JOURNAL_OCCUPANCY_PCT: &str = "journal_occupancy_pct";
    pub const JOURNAL_CHECKPOINT_LAG_MS: &str = "journal_checkpoint_lag_ms";
    /// Bytes the recorder wrote (replay files + journals) per payload byte ingested.
    pub const WRITE_AMPLIFICATION: &str = "write_amplification";
    /// Recorder runs: io_uring completions reaped per second over the run, all rings.
    pub const URING_COMPLETIONS_PER_S: &str = "uring_completions_per_s";
    /// `nop` anchor (`recorder io-bench --nop`): NOPs per second on the ring configuration,
    /// CPU nanoseconds per NOP (the whole process, SQPOLL thread included) and NOPs per
    /// io_uring_enter.
    pub const NOPS_PER_S: &str = "nops_per_s";
    pub const NOP_CPU_NS: &str = "nop_cpu_ns";
    pub const NOPS_PER_ENTER: &str = "nops_per_enter";
    /// `wrk-serve` workload (wrk as the client): completed requests per second and the
    /// request latency percentiles wrk reports (with `req_p50_us`, `req_p99_us`).
    pub const REQ_PER_S: &str = "req_per_s";
    pub const REQ_P90_US: &str = "req_p90_us";
    pub const REQ_P999_US: &str = "req_p999_us";
    pub const REQ_MAX_US: &str = "req_max_us";
}

/// Engine sections whose every option has an `opt.<section>.<name>` column: the ring, file
/// and network options in effect in the run (empty where the run has none: anchors, and
/// `ring`/`net` with the blocking backend, which uses neither).
pub const OPTION_SECTIONS: &[&str] = &["ring", "net", "file"];

/// Columns of `runs.csv` before the dimension columns.
pub const HEAD: &[&str] = &[
    col::RUN_ID,
    col::CELL_ID,
    col::REP,
    col::PAIR,
    col::REVISION,
    col::KIND,
    col::WORKLOAD,
    col::STATUS,
    col::REASON,
    col::STARTED_AT,
    col::DURATION_S,
    col::DIMS,
];

/// Columns of `runs.csv` after the dimension columns: the documented ones in
/// docs/results.md order, then the added ones. Append new columns at the end.
pub const TAIL: &[&str] = &[
    col::REQUESTED_FLAGS,
    col::EFFECTIVE_FLAGS,
    col::THROUGHPUT,
    col::FRAMES_PER_S,
    col::ACK_P50_US,
    col::ACK_P99_US,
    col::ACK_P999_US,
    col::ACK_MAX_US,
    col::REQ_P50_US,
    col::REQ_P99_US,
    col::CPU_S_PER_GIB,
    col::IOS_PER_SYSCALL,
    col::RSS_KB,
    col::GEN_CPU_PCT,
    col::DEV_MB_PER_S,
    col::DEV_IOPS,
    col::DEV_MERGE_PCT,
    col::DEV_AWAIT_MS,
    col::DEV_AQU_SZ,
    col::DEV_UTIL_PCT,
    col::CTX_SWITCHES_PER_S,
    col::STEAL_PCT,
    col::DIRTY_KB_MAX,
    col::WRITEBACK_KB_MAX,
    col::ERRORS,
    col::LOG,
    // Added after the documented columns (readers by name are unaffected).
    col::RECORDER_CPU_PCT,
    col::RECORDER_WRITE_MB_PER_S,
    col::NET_RX_SOFTIRQ_PER_S,
    col::BLOCK_SOFTIRQ_PER_S,
    col::INTERRUPTS_PER_S,
    col::RING_FDINFO,
    col::ERROR_KINDS,
    col::PLACEMENT,
    col::LOAD,
    col::INFLIGHT_MAX_FRAMES,
    col::INFLIGHT_MAX_BYTES,
    col::LATE_FRAMES,
    col::ACK_P90_US,
    col::SENT_MB_PER_S,
    col::RECORDER_CPU_S,
    col::TIER_UPLOAD_MB_PER_S,
    col::TIER_UPLOAD_LAG_MS,
    col::TIER_COLD_MB_PER_S,
    col::TIER_HOT_MB_PER_S,
    col::TIER_LOCAL_MB_PER_S,
    col::JOURNAL_FLUSHES_PER_S,
    col::JOURNAL_GROUP_SIZE,
    col::JOURNAL_BYTES_PER_FLUSH,
    col::JOURNAL_OCCUPANCY_PCT,
    col::JOURNAL_CHECKPOINT_LAG_MS,
    col::WRITE_AMPLIFICATION,
    col::URING_COMPLETIONS_PER_S,
    col::NOPS_PER_S,
    col::NOP_CPU_NS,
    col::NOPS_PER_ENTER,
    col::REQ_PER_S,
    col::REQ_P90_US,
    col::REQ_P999_US,
    col::REQ_MAX_US,
];

/// Columns every reader needs (a file without one of them is refused).
pub const REQUIRED: &[&str] = &[
    col::RUN_ID,
    col::CELL_ID,
    col::REP,
    col::REVISION,
    col::KIND,
    col::WORKLOAD,
    col::STATUS,
    col::THROUGHPUT,
];

/// Numeric per-run figures `analysis` keeps for every run, in this order (its index of a
/// metric is the position here). Empty = not measured, never 0.
pub const METRICS: &[&str] = &[
    col::THROUGHPUT,
    col::FRAMES_PER_S,
    col::ACK_P50_US,
    col::ACK_P99_US,
    col::ACK_P999_US,
    col::ACK_MAX_US,
    col::REQ_P50_US,
    col::REQ_P99_US,
    col::CPU_S_PER_GIB,
    col::IOS_PER_SYSCALL,
    col::RSS_KB,
    col::GEN_CPU_PCT,
    col::DEV_MB_PER_S,
    col::DEV_IOPS,
    col::DEV_MERGE_PCT,
    col::DEV_AWAIT_MS,
    col::DEV_AQU_SZ,
    col::DEV_UTIL_PCT,
    col::CTX_SWITCHES_PER_S,
    col::STEAL_PCT,
    col::DIRTY_KB_MAX,
    col::WRITEBACK_KB_MAX,
    // Added after the first 22 (indexes above stay stable).
    col::ACK_P90_US,
    col::SENT_MB_PER_S,
    col::LATE_FRAMES,
    col::RECORDER_CPU_PCT,
    col::RECORDER_CPU_S,
    col::URING_COMPLETIONS_PER_S,
    col::NOPS_PER_S,
    col::NOP_CPU_NS,
    col::NOPS_PER_ENTER,
    col::REQ_PER_S,
    col::REQ_P90_US,
    col::REQ_P999_US,
    col::REQ_MAX_US,
];

/// `(old name, current name)` of renamed columns, in `runs.csv` and in time series.
pub const RENAMED: &[(&str, &str)] = &[
    ("throughput_mbps", col::THROUGHPUT),
    ("dev_mbps", col::DEV_MB_PER_S),
    ("recorder_write_mbps", col::RECORDER_WRITE_MB_PER_S),
];

/// The current name of a column: old names of renamed columns map to the new ones.
pub fn canonical(name: &str) -> &str {
    RENAMED
        .iter()
        .find(|(old, _)| *old == name)
        .map(|(_, new)| *new)
        .unwrap_or(name)
}

/// The header of `runs.csv` for these dimensions and options (`ring.sqpoll`, ...: the
/// writer's option table, see [`OPTION_SECTIONS`]).
pub fn header(dims: &[String], options: &[String]) -> Vec<String> {
    HEAD.iter()
        .map(|s| s.to_string())
        .chain(dims.iter().map(|d| format!("{}{d}", col::DIM_PREFIX)))
        .chain(TAIL.iter().map(|s| s.to_string()))
        .chain(options.iter().map(|o| format!("{}{o}", col::OPT_PREFIX)))
        .collect()
}

/// The option a column holds (`opt.ring.sqpoll` -> `ring.sqpoll`), None for other columns.
pub fn option_of(column: &str) -> Option<&str> {
    column.strip_prefix(col::OPT_PREFIX)
}

/// Columns of `timeseries/<run_id>.csv`, one row per sample interval.
pub mod series {
    pub const T_S: &str = "t_s";
    pub const THROUGHPUT: &str = super::col::THROUGHPUT;
    pub const DEV_MB_PER_S: &str = super::col::DEV_MB_PER_S;
    pub const DEV_IOPS: &str = "dev_iops";
    pub const DEV_UTIL_PCT: &str = "dev_util_pct";
    pub const DIRTY_KB: &str = "dirty_kb";
    pub const WRITEBACK_KB: &str = "writeback_kb";
    pub const CPU_USER_PCT: &str = "cpu_user_pct";
    pub const CPU_SYS_PCT: &str = "cpu_sys_pct";
    pub const CPU_IOWAIT_PCT: &str = "cpu_iowait_pct";
    pub const STEAL_PCT: &str = "steal_pct";
    pub const RECORDER_CPU_PCT: &str = "recorder_cpu_pct";
    pub const GEN_CPU_PCT: &str = "gen_cpu_pct";
    pub const CTX_SWITCHES_PER_S: &str = "ctx_switches_per_s";
    pub const NET_RX_SOFTIRQ_PER_S: &str = "net_rx_softirq_per_s";
    pub const BLOCK_SOFTIRQ_PER_S: &str = "block_softirq_per_s";
    pub const PGPGOUT_KB_PER_S: &str = "pgpgout_kb_per_s";

    /// In file order: the documented columns, then the added ones.
    pub const COLUMNS: &[&str] = &[
        T_S,
        THROUGHPUT,
        DEV_MB_PER_S,
        DEV_IOPS,
        DEV_UTIL_PCT,
        DIRTY_KB,
        WRITEBACK_KB,
        CPU_USER_PCT,
        CPU_SYS_PCT,
        CPU_IOWAIT_PCT,
        STEAL_PCT,
        RECORDER_CPU_PCT,
        GEN_CPU_PCT,
        // Added columns (after the documented ones, so readers by name keep working):
        CTX_SWITCHES_PER_S,
        NET_RX_SOFTIRQ_PER_S,
        BLOCK_SOFTIRQ_PER_S,
        PGPGOUT_KB_PER_S,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_renames_point_at_current_columns() {
        let h = header(&["ring.sqpoll".to_string()], &["ring.sqpoll".to_string()]);
        let mut seen = std::collections::HashSet::new();
        for c in &h {
            assert!(seen.insert(c.as_str()), "column {c} appears twice");
        }
        for m in METRICS.iter().chain(REQUIRED) {
            assert!(h.iter().any(|c| c == m), "{m} is not a runs.csv column");
        }
        for (old, new) in RENAMED {
            assert!(!h.iter().any(|c| c == old), "{old} was renamed");
            assert!(
                h.iter().any(|c| c == new) || series::COLUMNS.contains(new),
                "{new} is not a column"
            );
            assert_eq!(canonical(old), *new);
        }
        assert_eq!(canonical("ack_p99_us"), "ack_p99_us");
        assert_eq!(h[HEAD.len()], "dim.ring.sqpoll");
        assert_eq!(h[HEAD.len() + 1], col::REQUESTED_FLAGS);
        assert_eq!(h.last().map(String::as_str), Some("opt.ring.sqpoll"));
        assert_eq!(option_of("opt.ring.sqpoll"), Some("ring.sqpoll"));
        assert_eq!(option_of("dim.ring.sqpoll"), None);
    }
}

//! No silent knobs, proven: every non-default value of every [ring], [file] and [net]
//! option that `recorder serve` accepts is observable where the kernel shows it, and every
//! one it cannot apply is refused up front with the reason.
//!
//! The list of (option, value) pairs is generated from the knob table: every non-default
//! value of a bool or enum knob, and at least one value of every other knob. A knob added
//! to the table without an entry in [`CHECKS`] fails `every_option_value_has_a_check`.
//!
//! What counts as "shown by the kernel": /proc/PID/fdinfo of the rings (SqThread,
//! SqThreadCpu, SqMask/CqMask, UserBufs, UserFiles, NAPI), the ring's effective setup
//! parameters as the kernel returned them (the "uring effective configuration" line),
//! /proc/PID/fdinfo of an open match file (O_DIRECT, O_DSYNC), stat of it (allocated
//! blocks), /proc/PID/task (io-wq and worker threads, their CPU affinity), /proc/net/tcp
//! (listeners, backlogs), `ss -tm` (socket buffers), fincore (page cache), /proc/PID/smaps
//! (arena pages), and the SQE / enter / CQE counters the engine keeps where it hands
//! entries to the kernel (`/metrics`: opcodes, IOSQE flags, opcode flags, largest length,
//! enter kinds, CQE flags) or the per-option worker counters.

mod common;
use common::*;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

type Pred = fn(&Obs) -> Result<(), String>;

enum Expect {
    /// `recorder serve` refuses the configuration up front; the message contains this.
    Refused(&'static str),
    /// The server runs and the predicate finds the option in effect.
    Shown(Pred),
    /// This kernel or device may not have it: either refused at start with a message
    /// containing this, or shown.
    RefusedOrShown(&'static str, Pred),
}

struct Check {
    key: &'static str,
    value: &'static str,
    /// Options it needs alongside.
    with: &'static [(&'static str, &'static str)],
    expect: Expect,
}

const fn c(
    key: &'static str,
    value: &'static str,
    with: &'static [(&'static str, &'static str)],
    expect: Expect,
) -> Check {
    Check {
        key,
        value,
        with,
        expect,
    }
}

use Expect::*;

const DIRECT: &[(&str, &str)] = &[("file.direct", "required")];
const SQPOLL: &[(&str, &str)] = &[("ring.sqpoll", "true")];
const REGBUF: &[(&str, &str)] = &[("file.register-buffers", "true")];
const FSYNC: &[(&str, &str)] = &[
    ("file.durability", "fdatasync"),
    ("server.storage-layout", "per-match"),
];
/// The replay files' own write options are observed with `storage-layout = per-match`
/// (with the journal they are buffered writes behind it).
const PER_MATCH: &[(&str, &str)] = &[("server.storage-layout", "per-match")];
const SPLICE64: &[(&str, &str)] = &[
    ("net.send", "splice"),
    ("net.serve-chunk-bytes", "64k"),
    ("net.pipe-bytes", "64k"),
];
const NAPI: &[(&str, &str)] = &[("net.napi-busy-poll-us", "50")];

static CHECKS: &[Check] = &[
    // ---- [ring] ----
    c("ring.iopoll", "true", &[], Refused("iopoll")),
    c(
        "ring.hybrid-iopoll",
        "true",
        &[("ring.iopoll", "true")],
        Refused("iopoll"),
    ),
    c(
        "ring.sqpoll",
        "true",
        &[],
        Shown(|o| o.ring_num("SqThread", |v| v > 0)),
    ),
    c(
        "ring.sq-thread-idle-ms",
        "1",
        SQPOLL,
        Shown(|o| {
            // The SQ thread goes to sleep after 1 ms without work, so between the loop's
            // ticks (every 10 ms) it sleeps again and again (voluntary context switches of
            // each iou-sqp thread); with the default 1 s it sleeps only before its first work.
            if !o.sq_sleeps.is_empty() && o.sq_sleeps.iter().all(|&n| n >= 3) {
                Ok(())
            } else {
                Err(format!(
                    "times each SQ thread went to sleep: {:?}",
                    o.sq_sleeps
                ))
            }
        }),
    ),
    c(
        "ring.sq-thread-cpu",
        "LAST_CPU",
        SQPOLL,
        Shown(|o| {
            // SQ_AFF pins the SQ thread: its affinity is that one CPU (fdinfo SqThreadCpu
            // only says where it ran last), and it ran there.
            let want = last_cpu().to_string();
            let sq: Vec<&(String, String)> = o
                .threads
                .iter()
                .filter(|(n, _)| n.starts_with("iou-sqp"))
                .collect();
            if sq.is_empty() || !sq.iter().all(|(_, c)| *c == want) {
                return Err(format!("SQ threads and their CPUs: {sq:?}"));
            }
            o.ring_num("SqThreadCpu", |v| v == last_cpu() as i64)
        }),
    ),
    c(
        "ring.sq-entries",
        "64",
        &[],
        Shown(|o| o.ring_str("SqMask", "0x3f")),
    ),
    c(
        "ring.cq-entries",
        "2048",
        &[],
        Shown(|o| o.ring_str("CqMask", "0x7ff")),
    ),
    c(
        "ring.clamp",
        "true",
        &[("ring.sq-entries", "100000")],
        Shown(|o| o.ring_str("SqMask", "0x7fff")),
    ),
    c(
        "ring.attach-wq",
        "first",
        SQPOLL,
        Shown(|o| {
            // With SQPOLL, attached rings share the first ring's SQ thread.
            let pids: Vec<&String> = o
                .worker_rings()
                .into_iter()
                .filter_map(|r| r.get("SqThread"))
                .collect();
            if pids.len() >= 2 && pids.iter().all(|p| *p == pids[0]) {
                Ok(())
            } else {
                Err(format!("SqThread of the rings: {pids:?}"))
            }
        }),
    ),
    c(
        "ring.r-disabled",
        "true",
        &[],
        Shown(|o| o.effective("ring.r-disabled", "true")),
    ),
    c(
        "ring.submit-all",
        "true",
        &[],
        Shown(|o| o.effective("ring.submit-all", "true")),
    ),
    c(
        "ring.coop-taskrun",
        "true",
        &[],
        Shown(|o| o.effective("ring.coop-taskrun", "true")),
    ),
    c(
        "ring.taskrun-flag",
        "true",
        &[("ring.coop-taskrun", "true")],
        Shown(|o| o.effective("ring.taskrun-flag", "true")),
    ),
    c(
        "ring.sqe128",
        "true",
        &[],
        Shown(|o| o.effective("ring.sqe128", "true")),
    ),
    c(
        "ring.cqe32",
        "true",
        &[],
        Shown(|o| o.effective("ring.cqe32", "true")),
    ),
    // single-issuer and defer-taskrun default to auto, which is on for the workers: their
    // `true` checks start from a configuration where auto is off (defer-taskrun false;
    // coop-taskrun on), so that they can fail without the option.
    c(
        "ring.single-issuer",
        "true",
        &[("ring.defer-taskrun", "false")],
        Shown(|o| o.effective("ring.single-issuer", "true")),
    ),
    c(
        "ring.defer-taskrun",
        "true",
        &[("ring.coop-taskrun", "true")],
        Shown(|o| {
            o.effective("ring.defer-taskrun", "true")?;
            o.effective("ring.single-issuer", "true")
        }),
    ),
    // auto (the default) turns both on for the workers; false must reach the ring.
    c(
        "ring.single-issuer",
        "false",
        &[],
        Shown(|o| {
            o.effective("ring.single-issuer", "false")?;
            o.effective("ring.defer-taskrun", "false")
        }),
    ),
    c(
        "ring.defer-taskrun",
        "false",
        &[],
        Shown(|o| {
            o.effective("ring.defer-taskrun", "false")?;
            o.effective("ring.single-issuer", "false")
        }),
    ),
    c(
        "ring.no-mmap",
        "true",
        &[],
        Shown(|o| {
            // No worker ring is mapped from its fd (only the process's wake-up ring may be).
            o.effective("ring.no-mmap", "true")?;
            if o.uring_maps <= 3 {
                Ok(())
            } else {
                Err(format!("{} io_uring mappings", o.uring_maps))
            }
        }),
    ),
    c(
        "ring.registered-fd-only",
        "true",
        &[("ring.no-mmap", "true")],
        Shown(|o| {
            // The worker rings have no fd at all.
            o.effective("ring.registered-fd-only", "true")?;
            if o.uring_fds <= 1 {
                Ok(())
            } else {
                Err(format!("{} io_uring fds", o.uring_fds))
            }
        }),
    ),
    c(
        "ring.no-sqarray",
        "true",
        &[],
        Shown(|o| o.effective("ring.no-sqarray", "true")),
    ),
    c(
        "ring.cqe-mixed",
        "true",
        &[],
        Shown(|o| o.effective("ring.cqe-mixed", "true")),
    ),
    c(
        "ring.register-ring-fd",
        "true",
        &[],
        Shown(|o| o.nonzero(&enter("IORING_ENTER_REGISTERED_RING"))),
    ),
    c(
        "ring.iowq-max-bounded",
        "3",
        &[],
        Shown(|o| o.effective("ring.iowq-max-bounded", "3")),
    ),
    c(
        "ring.iowq-max-unbounded",
        "3",
        &[],
        Shown(|o| o.effective("ring.iowq-max-unbounded", "3")),
    ),
    c(
        "ring.iowq-cpus",
        "LAST_CPU",
        FSYNC,
        Shown(|o| {
            let want = last_cpu().to_string();
            let wq: Vec<&(String, String)> = o
                .threads
                .iter()
                .filter(|(n, _)| n.starts_with("iou-wrk"))
                .collect();
            if !wq.is_empty() && wq.iter().all(|(_, cpus)| *cpus == want) {
                Ok(())
            } else {
                Err(format!("io-wq threads and their CPUs: {wq:?}"))
            }
        }),
    ),
    c(
        "ring.wait-nr",
        "8",
        &[],
        Shown(|o| o.nonzero(&enter("min_complete > 1"))),
    ),
    c(
        "ring.min-wait-usec",
        "200",
        &[("ring.wait-nr", "8"), ("ring.wait-timeout", "ext-arg")],
        Shown(|o| o.nonzero(&enter("min_wait_usec"))),
    ),
    c(
        "ring.wait-timeout",
        "ext-arg",
        &[],
        Shown(|o| {
            o.nonzero(&enter("EXT_ARG timeout"))?;
            o.zero(&sqes("IORING_OP_TIMEOUT"))
        }),
    ),
    c(
        "ring.cqe-skip-success",
        "true",
        SPLICE64,
        Shown(|o| o.nonzero(&sqe_flag("IOSQE_CQE_SKIP_SUCCESS"))),
    ),
    c(
        "ring.no-iowait",
        "true",
        &[],
        Shown(|o| o.nonzero(&enter("IORING_ENTER_NO_IOWAIT"))),
    ),
    // ---- [file] ----
    c(
        "file.write-op",
        "writev",
        &[],
        Shown(|o| o.nonzero(&sqes("IORING_OP_WRITEV"))),
    ),
    c(
        "file.write-op",
        "write-fixed",
        REGBUF,
        Shown(|o| o.nonzero(&sqes("IORING_OP_WRITE_FIXED"))),
    ),
    c(
        "file.write-op",
        "writev-fixed",
        REGBUF,
        Shown(|o| o.nonzero(&sqes("IORING_OP_WRITEV_FIXED"))),
    ),
    c(
        "file.read-op",
        "readv",
        &[],
        Shown(|o| o.nonzero(&sqes("IORING_OP_READV"))),
    ),
    c(
        "file.read-op",
        "read-fixed",
        REGBUF,
        Shown(|o| o.nonzero(&sqes("IORING_OP_READ_FIXED"))),
    ),
    c(
        "file.read-op",
        "readv-fixed",
        REGBUF,
        Shown(|o| o.nonzero(&sqes("IORING_OP_READV_FIXED"))),
    ),
    c(
        "file.register-buffers",
        "true",
        &[],
        Shown(|o| o.ring_num("UserBufs", |v| v == 64)),
    ),
    c(
        "file.register-files",
        "true",
        &[],
        Shown(|o| {
            o.ring_num("UserFiles", |v| v > 0)?;
            o.nonzero(&sqe_flag("IOSQE_FIXED_FILE"))?;
            o.nonzero(&worker("files_registered_total"))
        }),
    ),
    c(
        "file.direct",
        "required",
        PER_MATCH,
        Shown(|o| o.live_flags(libc::O_DIRECT)),
    ),
    c(
        "file.direct",
        "optional",
        PER_MATCH,
        Shown(|o| o.live_flags(libc::O_DIRECT)),
    ),
    c(
        "file.uncached",
        "true",
        PER_MATCH,
        Shown(|o| o.nonzero(&op_flag("RWF_DONTCACHE"))),
    ),
    c(
        "file.durability",
        "fdatasync",
        PER_MATCH,
        Shown(|o| o.nonzero(&op_flag("IORING_FSYNC_DATASYNC"))),
    ),
    c(
        "file.durability",
        "odsync",
        PER_MATCH,
        Shown(|o| o.live_flags(libc::O_DSYNC)),
    ),
    c(
        "file.durability",
        "rwf-dsync",
        PER_MATCH,
        Shown(|o| o.nonzero(&op_flag("RWF_DSYNC"))),
    ),
    c(
        "file.sync-interval-ms",
        "10",
        FSYNC,
        Refused("ack-interval-ms"),
    ),
    c(
        "file.sync-interval-bytes",
        "1m",
        FSYNC,
        Refused("ack-interval-ms"),
    ),
    c(
        "file.prealloc",
        "true",
        &[],
        Shown(|o| o.nonzero(&op_flag("FALLOC_FL_KEEP_SIZE"))),
    ),
    c(
        "file.prealloc-bytes",
        "32m",
        &[("file.prealloc", "true")],
        Shown(|o| {
            // The default (prealloc-bytes 0) preallocates 16 MiB.
            let b = o.live_blocks.ok_or("no open match file")?;
            if b * 512 >= 32 << 20 {
                Ok(())
            } else {
                Err(format!("{} bytes allocated", b * 512))
            }
        }),
    ),
    c("file.io-depth", "8", &[], Refused("io-bench")),
    c("file.block-size", "64k", &[], Refused("io-bench")),
    c("file.arena-bytes", "64m", &[], Refused("io-bench")),
    c(
        "file.buffer-memory",
        "pages",
        REGBUF,
        Shown(|o| {
            let f = o
                .arena_vmflags
                .as_deref()
                .ok_or("arena mapping not found")?;
            if f.split_whitespace().any(|x| x == "hg") {
                Err(format!("VmFlags {f}: MADV_HUGEPAGE set"))
            } else {
                Ok(())
            }
        }),
    ),
    c(
        "file.buffer-memory",
        "hugetlb",
        REGBUF,
        RefusedOrShown("huge", |o| {
            let f = o
                .arena_vmflags
                .as_deref()
                .ok_or("arena mapping not found")?;
            if f.split_whitespace().any(|x| x == "ht") {
                Ok(())
            } else {
                Err(format!("VmFlags {f}: not hugetlb"))
            }
        }),
    ),
    c("file.submit-batch", "4", &[], Refused("submit-batch")),
    c(
        "file.link-sync",
        "true",
        FSYNC,
        Shown(|o| {
            o.nonzero(&sqe_flag("IOSQE_IO_LINK"))?;
            o.nonzero(&op_flag("IORING_FSYNC_DATASYNC"))
        }),
    ),
    c(
        "file.write-behind",
        "true",
        PER_MATCH,
        Shown(|o| {
            o.nonzero(&sqes("IORING_OP_SYNC_FILE_RANGE"))?;
            o.nonzero(&op_flag("SYNC_FILE_RANGE_WRITE"))
        }),
    ),
    c(
        "file.force-async",
        "1",
        &[],
        Shown(|o| o.nonzero(&sqe_flag("IOSQE_ASYNC"))),
    ),
    c(
        "file.prealloc-mode",
        "write-zeroes",
        &[("file.prealloc", "true")],
        RefusedOrShown("WRITE_ZEROES", |o| {
            o.nonzero(&op_flag("FALLOC_FL_WRITE_ZEROES"))
        }),
    ),
    c(
        "file.file-ops",
        "ring",
        &[],
        Shown(|o| {
            o.nonzero(&sqes("IORING_OP_OPENAT"))?;
            o.nonzero(&sqes("IORING_OP_FTRUNCATE"))?;
            o.nonzero(&sqes("IORING_OP_RENAMEAT"))
        }),
    ),
    // ---- [net] ----
    c(
        "net.accept",
        "single",
        &[],
        Shown(|o| {
            o.nonzero(&sqes("IORING_OP_ACCEPT"))?;
            o.zero(&op_flag("IORING_ACCEPT_MULTISHOT"))
        }),
    ),
    c(
        "net.listeners",
        "acceptor",
        &[],
        Shown(|o| {
            if o.ingest_listeners != 1 {
                return Err(format!(
                    "{} listening sockets on the ingest port",
                    o.ingest_listeners
                ));
            }
            o.nonzero(&worker("handoffs_in_total"))
        }),
    ),
    c(
        "net.recv",
        "single",
        &[],
        Shown(|o| {
            o.nonzero(&sqes("IORING_OP_RECV"))?;
            o.zero(&op_flag("IORING_RECV_MULTISHOT"))
        }),
    ),
    c(
        "net.recv-buf-bytes",
        "4096",
        &[],
        Shown(|o| {
            let m = o.metric(&worker_gauge("recv_max_bytes"));
            if m > 0.0 && m <= 4096.0 {
                Ok(())
            } else {
                Err(format!("largest receive {m} bytes"))
            }
        }),
    ),
    c(
        "net.buf-ring-entries",
        "2",
        &[],
        Shown(|o| o.nonzero(&worker("enobufs_total"))),
    ),
    c(
        "net.send",
        "send-zc",
        &[],
        Shown(|o| o.nonzero(&sqes("IORING_OP_SEND_ZC"))),
    ),
    c(
        "net.send",
        "splice",
        &[],
        Shown(|o| o.nonzero(&sqes("IORING_OP_SPLICE"))),
    ),
    c(
        "net.send-zc-min-bytes",
        "1g",
        &[("net.send", "send-zc")],
        Shown(|o| {
            o.zero(&sqes("IORING_OP_SEND_ZC"))?;
            o.nonzero(&sqes("IORING_OP_SEND"))
        }),
    ),
    c(
        "net.serve-read",
        "direct",
        DIRECT,
        Shown(|o| {
            let (cached, total) = o.cached_after_download.ok_or("no page cache figure")?;
            if cached * 10 < total {
                Ok(())
            } else {
                Err(format!(
                    "{cached} of {total} pages in the page cache after a direct download"
                ))
            }
        }),
    ),
    c(
        "net.serve-chunk-bytes",
        "64k",
        &[],
        Shown(|o| {
            let m = o.metric(&len_max("IORING_OP_READ"));
            if m == 65536.0 {
                Ok(())
            } else {
                Err(format!("largest READ {m} bytes"))
            }
        }),
    ),
    c(
        "net.pipe-bytes",
        "1m",
        &[("net.send", "splice")],
        Shown(|o| {
            let m = o.metric(&worker_gauge("pipe_capacity_bytes"));
            if m >= (1 << 20) as f64 {
                Ok(())
            } else {
                Err(format!("pipe capacity {m}"))
            }
        }),
    ),
    c(
        "net.workers-pin",
        "cores",
        &[],
        Shown(|o| {
            let w: Vec<&(String, String)> = o
                .threads
                .iter()
                .filter(|(n, _)| n.starts_with("uring-w"))
                .collect();
            if w.len() == 2 && w.iter().all(|(_, c)| !c.contains(['-', ','])) {
                Ok(())
            } else {
                Err(format!("worker threads' CPUs: {w:?}"))
            }
        }),
    ),
    c(
        "net.tcp-nodelay",
        "false",
        &[],
        Shown(|o| o.zero(&worker("sockopts_applied_total"))),
    ),
    c(
        "net.listen-backlog",
        "7",
        &[],
        Shown(|o| {
            if !o.backlogs.is_empty() && o.backlogs.iter().all(|&b| b == 7) {
                Ok(())
            } else {
                Err(format!("listen backlogs {:?}", o.backlogs))
            }
        }),
    ),
    c(
        "net.sndbuf-bytes",
        "64k",
        &[],
        Shown(|o| o.skmem_has("tb131072")),
    ),
    c(
        "net.rcvbuf-bytes",
        "1m",
        &[],
        Shown(|o| o.skmem_has("rb2097152")),
    ),
    c(
        "net.worker-arena-slots",
        "8",
        REGBUF,
        Shown(|o| o.ring_num("UserBufs", |v| v == 8)),
    ),
    c(
        "net.direct-sockets",
        "true",
        &[],
        Shown(|o| {
            o.ring_num("UserFiles", |v| v > 0)?;
            o.nonzero(&op_flag("IORING_FILE_INDEX_ALLOC"))?;
            // Open connections have no fd: the process holds only its listening sockets.
            if o.socket_fds <= o.listener_sockets {
                Ok(())
            } else {
                Err(format!(
                    "{} TCP socket fds, {} listening",
                    o.socket_fds, o.listener_sockets
                ))
            }
        }),
    ),
    c(
        "net.recv-bundle",
        "true",
        &[],
        Shown(|o| {
            o.nonzero(&op_flag("IORING_RECVSEND_BUNDLE"))?;
            o.nonzero(&worker("recv_multi_buffer_total"))
        }),
    ),
    c(
        "net.buf-ring-inc",
        "true",
        &[
            ("net.recv-buf-bytes", "256k"),
            ("net.buf-ring-entries", "16"),
        ],
        Shown(|o| {
            o.nonzero(&cqe_flag("IORING_CQE_F_BUF_MORE"))?;
            o.zero(&worker("bufring_order_errors_total"))
        }),
    ),
    c(
        "net.send-batch",
        "vectored",
        &[],
        Shown(|o| o.nonzero(&op_flag("IORING_SEND_VECTORIZED"))),
    ),
    c(
        "net.send-zc-fixed",
        "true",
        &[
            ("net.send", "send-zc"),
            ("net.send-zc-min-bytes", "4096"),
            ("file.register-buffers", "true"),
        ],
        Shown(|o| o.nonzero(&op_flag("IORING_RECVSEND_FIXED_BUF"))),
    ),
    c(
        "net.napi-busy-poll-us",
        "50",
        &[],
        Shown(|o| {
            o.ring_str("NAPI", "enabled")?;
            o.ring_str("napi_busy_poll_dt", "50000")
        }),
    ),
    c(
        "net.napi-prefer-busy-poll",
        "true",
        NAPI,
        Shown(|o| o.ring_str("napi_prefer_busy_poll", "true")),
    ),
    c(
        "net.napi-tracking",
        "static",
        NAPI,
        Shown(|o| o.ring_str("napi tracking", "static")),
    ),
];

fn sqes(op: &str) -> String {
    format!("recorder_uring_sqes_total{{op=\"{op}\"}}")
}
fn len_max(op: &str) -> String {
    format!("recorder_uring_sqe_len_max{{op=\"{op}\"}}")
}
fn sqe_flag(f: &str) -> String {
    format!("recorder_uring_sqe_flags_total{{flag=\"{f}\"}}")
}
fn op_flag(f: &str) -> String {
    format!("recorder_uring_sqe_op_flags_total{{flag=\"{f}\"}}")
}
fn enter(k: &str) -> String {
    format!("recorder_uring_enters_by_kind_total{{kind=\"{k}\"}}")
}
fn cqe_flag(f: &str) -> String {
    format!("recorder_uring_cqe_flags_total{{flag=\"{f}\"}}")
}
fn worker(n: &str) -> String {
    format!("recorder_uring_worker_{n}")
}
fn worker_gauge(n: &str) -> String {
    worker(n)
}

fn last_cpu() -> u32 {
    engine::config::ring::online_cpus()
        .and_then(|c| c.last().copied())
        .unwrap_or(0) as u32
}

/// What one run of the server showed.
#[derive(Default, Debug)]
struct Obs {
    metrics: HashMap<String, f64>,
    /// fdinfo of every ring fd of the process (deduplicated by inode).
    rings: Vec<BTreeMap<String, String>>,
    effective: HashMap<String, String>,
    live_flags: Option<i64>,
    live_blocks: Option<u64>,
    threads: Vec<(String, String)>,
    ingest_listeners: usize,
    backlogs: Vec<u32>,
    skmem: String,
    socket_fds: usize,
    listener_sockets: usize,
    uring_fds: usize,
    uring_maps: usize,
    arena_vmflags: Option<String>,
    cached_after_download: Option<(u64, u64)>,
    /// Times each SQPOLL thread went to sleep since it started.
    sq_sleeps: Vec<u64>,
}

impl Obs {
    fn metric(&self, k: &str) -> f64 {
        self.metrics.get(k).copied().unwrap_or(0.0)
    }
    fn nonzero(&self, k: &str) -> Result<(), String> {
        if self.metric(k) > 0.0 {
            Ok(())
        } else {
            Err(format!("{k} is 0"))
        }
    }
    fn zero(&self, k: &str) -> Result<(), String> {
        let v = self.metric(k);
        if v == 0.0 {
            Ok(())
        } else {
            Err(format!("{k} is {v}"))
        }
    }

    fn worker_rings(&self) -> Vec<&BTreeMap<String, String>> {
        // The worker rings are the ones with a buffer ring, table or sizes we set; the
        // process's wake-up ring (8 entries, SqMask 0x7) is left out.
        self.rings
            .iter()
            .filter(|r| r.get("SqMask").map(String::as_str) != Some("0x7"))
            .collect()
    }
    fn ring_num(&self, k: &str, ok: fn(i64) -> bool) -> Result<(), String> {
        let rs = self.worker_rings();
        let vals: Vec<Option<i64>> = rs
            .iter()
            .map(|r| {
                r.get(k)
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .collect();
        if !vals.is_empty() && vals.iter().all(|v| v.is_some_and(ok)) {
            Ok(())
        } else {
            Err(format!("fdinfo {k} of the worker rings: {vals:?}"))
        }
    }
    fn ring_str(&self, k: &str, want: &str) -> Result<(), String> {
        let rs = self.worker_rings();
        let vals: Vec<Option<&String>> = rs.iter().map(|r| r.get(k)).collect();
        if !vals.is_empty() && vals.iter().all(|v| v.is_some_and(|v| v == want)) {
            Ok(())
        } else {
            Err(format!(
                "fdinfo {k} of the worker rings: {vals:?}, expected {want}"
            ))
        }
    }
    fn effective(&self, k: &str, want: &str) -> Result<(), String> {
        match self.effective.get(k) {
            Some(v) if v == want => Ok(()),
            v => Err(format!("effective {k} = {v:?}, expected {want}")),
        }
    }
    fn live_flags(&self, bit: i32) -> Result<(), String> {
        match self.live_flags {
            Some(f) if f & bit as i64 != 0 => Ok(()),
            f => Err(format!("the open match file's flags {f:?} lack {bit:#o}")),
        }
    }
    fn skmem_has(&self, s: &str) -> Result<(), String> {
        if self.skmem.contains(s) {
            Ok(())
        } else {
            Err(format!("ss -tm of the DS connection: {}", self.skmem))
        }
    }
}

fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn read_rings(pid: u32) -> (Vec<BTreeMap<String, String>>, usize, usize, usize) {
    let mut seen = std::collections::HashSet::new();
    let (mut rings, mut n, mut socks) = (Vec::new(), 0, 0);
    let tcp_inodes = tcp_inodes();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let link = std::fs::read_link(e.path()).unwrap_or_default();
        let link = link.to_string_lossy();
        if let Some(ino) = link
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
        {
            if tcp_inodes.contains(ino) {
                socks += 1;
            }
        }
        if link != "anon_inode:[io_uring]" {
            continue;
        }
        n += 1;
        let name = e.file_name();
        let Ok(text) =
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", name.to_string_lossy()))
        else {
            continue;
        };
        let m = engine::uring::parse_fdinfo(&text);
        if seen.insert(m.get("ino").cloned().unwrap_or_default()) {
            rings.push(m);
        }
    }
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let maps = maps.lines().filter(|l| l.contains("[io_uring]")).count();
    (rings, n, socks, maps)
}

/// Inodes of every TCP socket (/proc/net/tcp and tcp6).
fn tcp_inodes() -> std::collections::HashSet<String> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(9).map(str::to_string))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `(local port, state, tx_queue, inode)` of every /proc/net/tcp entry.
fn tcp_table() -> Vec<(u16, u8, u32)> {
    let t = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    t.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = u16::from_str_radix(f.get(1)?.rsplit_once(':')?.1, 16).ok()?;
            let st = u8::from_str_radix(f.get(3)?, 16).ok()?;
            let txq = u32::from_str_radix(f.get(4)?.split_once(':')?.0, 16).ok()?;
            Some((port, st, txq))
        })
        .collect()
}

fn threads(pid: u32) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(e.path().join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let st = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let cpus = st
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or("")
            .trim()
            .to_string();
        v.push((comm, cpus));
    }
    v
}

/// Voluntary context switches of each of the process's SQPOLL threads (iou-sqp-*): how
/// often each went to sleep since it started.
fn sq_voluntary_switches(pid: u32) -> Vec<u64> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("iou-sqp") {
            continue;
        }
        let st = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        v.push(
            st.lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0),
        );
    }
    v
}

/// The smaps VmFlags of the mapping holding the first registered buffer.
fn arena_vmflags(pid: u32, rings: &[BTreeMap<String, String>], fdinfo_raw: &str) -> Option<String> {
    let _ = rings;
    let addr = fdinfo_raw
        .lines()
        .find_map(|l| l.trim().strip_prefix("0: 0x"))
        .and_then(|a| u64::from_str_radix(a.split('/').next()?, 16).ok())?;
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut inside = false;
    for l in smaps.lines() {
        if let Some((range, _)) = l.split_once(' ') {
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                    inside = a <= addr && addr < b;
                    continue;
                }
            }
        }
        if inside {
            if let Some(f) = l.strip_prefix("VmFlags:") {
                return Some(f.trim().to_string());
            }
        }
    }
    None
}

fn fincore(path: &Path) -> Option<(u64, u64)> {
    let out = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--raw", "-o", "PAGES,SIZE"])
        .arg(path)
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout);
    let mut it = s.split_whitespace();
    let pages: u64 = it.next()?.parse().ok()?;
    let size: u64 = it.next()?.parse().ok()?;
    Some((pages, size.div_ceil(4096)))
}

fn args_of(check: &Check) -> Vec<String> {
    args_for(
        check
            .with
            .iter()
            .chain(std::iter::once(&(check.key, check.value))),
    )
}

fn args_for<'a>(kv: impl Iterator<Item = &'a (&'a str, &'a str)>) -> Vec<String> {
    let mut a = vec![
        "--workers".to_string(),
        "2".into(),
        "--ack-interval-ms".into(),
        "2".into(),
    ];
    for (k, v) in kv {
        let name = k.split_once('.').map_or(*k, |(_, n)| n);
        a.push(format!("--{name}"));
        a.push(if *v == "LAST_CPU" {
            last_cpu().to_string()
        } else {
            v.to_string()
        });
    }
    a
}

enum Outcome {
    /// The server refused to start (the message says why).
    Refused(String),
    /// It started but the workload failed.
    Failed(String),
    Ran(Box<Obs>),
}

fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Runs the check's configuration and the standard workload.
fn observe(check: &Check) -> Outcome {
    observe_args(&args_of(check))
}

fn observe_args(args: &[String]) -> Outcome {
    let dir = TempDir::new("knobs");
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_recorder"))
        .arg("serve")
        .arg("--store")
        .arg(dir.path())
        .args(&argv)
        .arg("--print-config")
        .output()
        .expect("run recorder");
    if !out.status.success() {
        return Outcome::Refused(String::from_utf8_lossy(&out.stderr).to_string());
    }
    let srv = match std::panic::catch_unwind(|| spawn_server("uring", dir.path(), &argv)) {
        Ok(s) => s,
        Err(e) => return Outcome::Refused(panic_text(&*e)),
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| workload(&srv, dir.path()))) {
        Ok(o) => Outcome::Ran(Box::new(o)),
        Err(e) => {
            // Worker set-up happens after the listeners are bound: a refusal there (the
            // kernel or device cannot) ends the server with an "unsupported" line.
            std::thread::sleep(Duration::from_millis(100));
            let log = srv.log_text();
            match log
                .lines()
                .find(|l| l.contains("recorder serve:") && l.contains("unsupported"))
            {
                Some(l) => Outcome::Refused(l.to_string()),
                None => Outcome::Failed(format!("{} (server log: {log})", panic_text(&*e))),
            }
        }
    }
}

/// A match left open, two whole matches, their downloads, then a quiet period; what the
/// kernel and the server show afterwards.
fn workload(srv: &Server, store: &Path) -> Obs {
    let pid = srv.child.as_ref().expect("running").id();
    // A match kept open while observing (its file's flags and allocation).
    let mut open = DsClient::connect(srv.ingest).unwrap();
    assert!(matches!(
        open.hello("open1", false, b"").unwrap(),
        Reply::Welcome { .. }
    ));
    for seq in 1..=5u64 {
        open.frame(
            seq,
            seq,
            if seq == 1 { 1 } else { 2 },
            &testkit::payload_for("open1", seq, 20_000),
        )
        .unwrap();
    }
    open.wait_ack(5, Duration::from_secs(10)).unwrap();
    // Two whole matches of ~30 KB frames, then downloads (whole and a range).
    let mut sent = Vec::new();
    for id in ["s0", "s1"] {
        let (p, r) = stream_match(srv.ingest, id, 30, 30_000);
        assert!(
            matches!(r, Reply::Sealed { .. }),
            "{id}: {r:?} ({})",
            srv.log_text()
        );
        sent.push((id, p));
    }
    let sealed = store.join("s0.rpl");
    if let Ok(f) = std::fs::File::open(&sealed) {
        let fd: std::os::fd::OwnedFd = f.into();
        let _ = engine::sys::fs::fadvise_dontneed(&fd);
    }
    for (id, p) in &sent {
        let g = testkit::http_get(srv.http, "GET", &format!("/matches/{id}"), &[]).unwrap();
        assert_eq!(g.status, 200, "{id}");
        check_replay(&g.body, id, p, true);
        let r = testkit::http_get(
            srv.http,
            "GET",
            &format!("/matches/{id}"),
            &[("Range", "bytes=13-70000")],
        )
        .unwrap();
        assert_eq!(r.status, 206);
        assert_eq!(r.body, g.body[13..=70000], "{id}: range");
    }
    let cached = fincore(&sealed);
    std::thread::sleep(Duration::from_millis(150));
    let sq_sleeps = sq_voluntary_switches(pid);
    let metrics = testkit::http_get(srv.http, "GET", "/metrics", &[]).unwrap();
    let metrics = parse_metrics(&String::from_utf8_lossy(&metrics.body));
    let (rings, uring_fds, socket_fds, uring_maps) = read_rings(pid);
    let mut raw_fdinfo = String::new();
    let mut live_flags = None;
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let link = std::fs::read_link(e.path()).unwrap_or_default();
        let name = e.file_name().to_string_lossy().to_string();
        let info =
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{name}")).unwrap_or_default();
        if link.to_string_lossy().contains("open1") {
            live_flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| i64::from_str_radix(f.trim(), 8).ok());
        }
        if raw_fdinfo.is_empty()
            && link.to_string_lossy() == "anon_inode:[io_uring]"
            && info.contains("UserBufs:")
        {
            if info.lines().any(|l| l.trim().starts_with("0: 0x")) {
                raw_fdinfo = info;
            }
        }
    }
    let live_blocks = std::fs::read_dir(store.join("live"))
        .into_iter()
        .flatten()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().contains("open1"))
        .and_then(|e| e.metadata().ok())
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m));
    let tcp = tcp_table();
    let iport = srv.ingest.port();
    let listening: Vec<&(u16, u8, u32)> = tcp.iter().filter(|(_, st, _)| *st == 0x0A).collect();
    let ingest_listeners = listening.iter().filter(|(p, ..)| *p == iport).count();
    let listener_sockets = listening
        .iter()
        .filter(|(p, ..)| *p == iport || *p == srv.http.port())
        .count();
    // `ss -ltn` shows a listener's backlog as its Send-Q.
    let backlogs = [iport, srv.http.port()]
        .iter()
        .flat_map(|p| {
            let out = Command::new("ss")
                .args(["-ltnH", "sport", "=", &format!(":{p}")])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
            out.lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    let skmem = Command::new("ss")
        .args([
            "-tmnH",
            "state",
            "established",
            "sport",
            "=",
            &format!(":{iport}"),
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let log = srv.log_text();
    let effective = log
        .lines()
        .find_map(|l| l.split_once("uring effective configuration: ").map(|x| x.1))
        .and_then(|j| serde_json::from_str::<HashMap<String, String>>(j).ok())
        .unwrap_or_default();
    let threads = threads(pid);
    let arena_vmflags = arena_vmflags(pid, &rings, &raw_fdinfo);
    let _ = open.end(5);
    Obs {
        metrics,
        rings,
        effective,
        live_flags,
        live_blocks,
        threads,
        ingest_listeners,
        backlogs,
        skmem,
        socket_fds,
        listener_sockets,
        uring_fds,
        uring_maps,
        arena_vmflags,
        cached_after_download: cached,
        sq_sleeps,
    }
}

fn run_check(check: &Check) -> Result<(), String> {
    let what = format!("{} = {}", check.key, check.value);
    match (&check.expect, observe(check)) {
        (_, Outcome::Failed(e)) => Err(format!("{what}: the workload failed: {e}")),
        (Refused(msg), Outcome::Refused(e)) if e.contains(msg) => Ok(()),
        (Refused(msg), Outcome::Refused(e)) => {
            Err(format!("{what}: refused, but without {msg:?}: {e}"))
        }
        (Refused(_), Outcome::Ran(_)) => Err(format!(
            "{what}: accepted, but the server cannot apply it and must refuse it"
        )),
        (RefusedOrShown(msg, _), Outcome::Refused(e)) if e.contains(msg) => Ok(()),
        (Shown(_) | RefusedOrShown(..), Outcome::Refused(e)) => {
            Err(format!("{what}: the server did not run: {e}"))
        }
        (Shown(p) | RefusedOrShown(_, p), Outcome::Ran(o)) => {
            p(&o).map_err(|e| format!("{what}: not observable: {e}"))
        }
    }
}

fn run_section(section: &str) {
    let checks: Vec<&Check> = CHECKS
        .iter()
        .filter(|c| c.key.starts_with(&format!("{section}.")))
        .collect();
    let failures = std::sync::Mutex::new(Vec::new());
    // A few servers at a time: each check is its own server and workload.
    for chunk in checks.chunks(2) {
        std::thread::scope(|s| {
            for c in chunk {
                let failures = &failures;
                s.spawn(move || {
                    if let Err(e) = run_check(c) {
                        failures.lock().unwrap().push(e);
                    }
                });
            }
        });
    }
    let f = failures.into_inner().unwrap();
    assert!(
        f.is_empty(),
        "{} option values not proven:\n{}",
        f.len(),
        f.join("\n")
    );
}

#[test]
fn every_option_value_has_a_check() {
    let mut missing = Vec::new();
    for k in engine::config::all_knobs()
        .into_iter()
        .filter(|k| matches!(k.section, "ring" | "file" | "net"))
    {
        let key = format!("{}.{}", k.section, k.name);
        let has = |v: &str| CHECKS.iter().any(|c| c.key == key && c.value == v);
        if k.values == "bool" {
            let v = if k.default == "true" { "false" } else { "true" };
            if !has(v) {
                missing.push(format!("{key} = {v}"));
            }
        } else if k.values.contains('|') && !k.values.contains(' ') {
            for v in k.values.split('|').filter(|v| *v != k.default) {
                if !has(v) {
                    missing.push(format!("{key} = {v}"));
                }
            }
        } else if !CHECKS.iter().any(|c| c.key == key) {
            missing.push(format!("{key} (some non-default value)"));
        }
    }
    for c in CHECKS {
        assert!(
            engine::config::find_knob(c.key).is_some(),
            "check for unknown option {}",
            c.key
        );
        let d = engine::config::Config::default();
        assert_ne!(
            d.get(c.key).as_deref(),
            Some(c.value),
            "{}: {} is the default",
            c.key,
            c.value
        );
    }
    assert!(missing.is_empty(), "options without a check in CHECKS (add one that shows where the kernel sees them, or refuse them in validate()):\n{}", missing.join("\n"));
}

#[test]
fn ring_options_take_effect_or_are_refused() {
    run_section("ring");
}

#[test]
fn file_options_take_effect_or_are_refused() {
    run_section("file");
}

#[test]
fn net_options_take_effect_or_are_refused() {
    run_section("net");
}

/// A check that passes without its option proves nothing: every predicate must fail on a
/// server run with the check's prerequisites alone (the same workload).
#[test]
fn every_check_fails_without_its_option() {
    let mut groups: Vec<(&[(&str, &str)], Vec<&Check>)> = Vec::new();
    for c in CHECKS.iter().filter(|c| !matches!(c.expect, Refused(_))) {
        match groups
            .iter_mut()
            .find(|(w, _)| std::ptr::eq(*w, c.with) || *w == c.with)
        {
            Some((_, v)) => v.push(c),
            None => groups.push((c.with, vec![c])),
        }
    }
    let failures = std::sync::Mutex::new(Vec::new());
    for chunk in groups.chunks(2) {
        std::thread::scope(|s| {
            for (with, checks) in chunk {
                let failures = &failures;
                s.spawn(move || {
                    let o = match observe_args(&args_for(with.iter())) {
                        Outcome::Ran(o) => o,
                        // The prerequisites alone are refused or fail (clamp without it):
                        // nothing to compare against.
                        _ => return,
                    };
                    for c in checks {
                        let (Shown(p) | RefusedOrShown(_, p)) = &c.expect else {
                            continue;
                        };
                        if p(&o).is_ok() {
                            failures.lock().unwrap().push(format!(
                                "{} = {}: the check passes without the option (prerequisites {:?})",
                                c.key, c.value, c.with
                            ));
                        }
                    }
                });
            }
        });
    }
    let f = failures.into_inner().unwrap();
    assert!(f.is_empty(), "checks that cannot fail:\n{}", f.join("\n"));
}

//! The io_uring backend of `recorder serve`: thread-per-core workers, each with its own
//! ring, doing ALL socket and file I/O through that ring.
//!
//! Layering: this module is an I/O driver. The protocol logic (DS ingest sessions, HTTP,
//! match files) is sans-IO and lives behind the [`Service`] trait: the driver feeds it
//! bytes and completions, the service answers with requests in an [`Io`] (send bytes,
//! stream a file range to a connection, write/read/fsync a file, close). One service
//! value per worker; nothing is shared between workers but what the service shares
//! itself (the registry).
//!
//! Per worker:
//! - one ring (see [`WorkerRing`]) built on the worker's own thread (so
//!   SINGLE_ISSUER/DEFER_TASKRUN hold), shared through one CQ by three users told apart
//!   by the top byte of `user_data`: socket ops (`sys::netops`, tag [`TAG_NET`]), file
//!   ops (`sys::fileops`, tag [`TAG_FILE`]) and cross-worker wake-ups ([`TAG_WAKE`]);
//! - listeners per `net.listeners`: one SO_REUSEPORT listener per worker and port, or
//!   worker 0 accepting for everybody and handing connections over (mailbox + MSG_RING);
//! - accept single-shot or multishot (`net.accept`), recv single-shot into a
//!   per-connection buffer or multishot from a provided-buffer ring (`net.recv`, ENOBUFS
//!   ends it: recycle, re-arm);
//! - output per connection is a FIFO of byte buffers and file ranges, one request in
//!   flight at a time (order is the protocol's); file ranges go out as READ (or
//!   READ_FIXED, `file.read-op`) into arena slots then SEND / SEND_ZC (`net.send`,
//!   `net.serve-read`), or as SPLICE file -> pipe -> socket;
//! - one arena of aligned slots (registered when `file.register-buffers`) for file data;
//! - a periodic TIMEOUT tick drives the service's timers (group commit, live tail),
//!   idle-connection sweeps and the shutdown check.
//!
//! Files, by job: `start` (listeners, anchor ring, worker threads), `worker` (the event
//! loop: wait, route, dispatch, tick, teardown, executing requests), `conn` (accept,
//! receive, EOF, reset, close sequence), `send` (byte and file-range output), `files`
//! (file requests and their completions), `reqs` ([`Io`], what a service asks for),
//! `wake` (MSG_RING wake-ups, acceptor mailboxes), `recorder` (the recorder's
//! [`Service`]: DS sessions and HTTP on this driver).
//!
//! Options that change how the ring is used, each applied here and counted where the
//! kernel sees it (`sys::stats`): sockets as direct descriptors and match/replay files in
//! a sparse registered-file table (`net.direct-sockets`, `file.register-files`; see
//! [`files`]), recv bundles and incremental buffer rings, vectored SEND and SEND_ZC from
//! registered buffers, the wait (`ring.wait-nr`, `min-wait-usec`, `wait-timeout`,
//! `no-iowait`), IOSQE_CQE_SKIP_SUCCESS, linked write -> sync pairs, IOSQE_ASYNC writes,
//! NAPI busy polling.
//!
//! IOPOLL rings cannot do socket I/O (EINVAL per request): `config::net::validate`
//! refuses `ring.iopoll` for this backend rather than running a second ring silently.

mod conn;
mod files;
mod recorder;
mod reqs;
mod send;
mod start;
mod wake;
mod worker;

use conn::*;
use files::FileTable;
pub use recorder::{run_server, Recorder};
use reqs::Req;
pub use reqs::{FileRef, FileStat, Io, Opened, WriteThen};
use send::*;
pub use start::{effective_rings, run};
pub use wake::Waker;
use wake::*;
use worker::*;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::net::{
    AcceptMode, Listeners, RecvMode, SendBatch, SendMode, ServeRead, WorkersPin,
};
use crate::config::Config;
use crate::sys::bufring::BufRing;
use crate::sys::fileops::{self, FileOps, OpKind, ReadOp, WriteOp};
use crate::sys::mem::{Arena, Slot};
use crate::sys::netops::{self, sockopt, Completion, Errno, NetBuf, NetOps, Pipe, Socket};
use crate::sys::ring::Ring;
use crate::uring::{Effective, RingError};

/// `user_data` top byte of socket operations.
pub const TAG_NET: u8 = 1;
/// `user_data` top byte of file operations.
pub const TAG_FILE: u8 = netops::MUX_TAG_FILE;
/// `user_data` top byte of cross-worker wake-ups (MSG_RING).
pub const TAG_WAKE: u8 = 3;
/// `user_data` top byte of a direct socket handed over by the acceptor (MSG_RING with
/// IORING_MSG_SEND_FD); bit 0 is the port (0 ingest, 1 HTTP), `res` the new slot.
pub const TAG_HANDOFF: u8 = 4;

/// Which listener a connection came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Port {
    /// DS ingest protocol.
    Ingest,
    /// HTTP replay serving.
    Http,
}

/// A connection of one worker: slot index and generation (stale ids never match).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl ConnId {
    fn new(idx: u32, gen: u32) -> ConnId {
        ConnId(((gen as u64 & 0xff_ffff) << 32) | idx as u64)
    }
    fn idx(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }
    fn gen(self) -> u32 {
        ((self.0 >> 32) & 0xff_ffff) as u32
    }
}

/// The protocol side of a worker. All callbacks run on the worker's thread.
pub trait Service {
    /// A new connection. `false` refuses it (for example a connection limit; the service
    /// may queue an error message first with `io.send`): the driver closes it after
    /// sending what was queued.
    fn open(&mut self, conn: ConnId, port: Port, io: &mut Io) -> bool;
    /// Bytes arrived, valid only during the call.
    fn data(&mut self, conn: ConnId, bytes: &[u8], io: &mut Io);
    /// The peer closed its sending side. The usual answer is `io.close(conn)`.
    fn eof(&mut self, conn: ConnId, io: &mut Io) {
        io.close(conn);
    }
    /// The connection is gone (closed by either side, reset, idle timeout); forget it.
    fn closed(&mut self, conn: ConnId, io: &mut Io);
    /// The driver dropped the connection before its exchange was complete (reset by the
    /// peer, a send that timed out or failed, ...); it is logged with `why`. `closed`
    /// follows. For the service's counters.
    fn dropped(&mut self, _conn: ConnId, _port: Port, _why: &str) {}
    /// A file range queued with `send_file` is out (`Ok(bytes)`) or failed.
    fn sent_file(&mut self, _conn: ConnId, _token: u64, _res: io::Result<u64>, _io: &mut Io) {}
    /// A write/read/fsync finished; the buffer comes back.
    fn file_done(&mut self, _token: u64, _res: io::Result<u32>, _buf: Option<Slot>, _io: &mut Io) {}
    /// Someone called this worker's [`Waker`] (and at every tick): look at whatever other
    /// threads handed over.
    fn woken(&mut self, _io: &mut Io) {}
    /// A `write_vec` finished (or could not be queued); the Vec comes back.
    fn file_done_vec(&mut self, _token: u64, _res: io::Result<u32>, _buf: Vec<u8>, _io: &mut Io) {}
    /// An `Io::openat` finished: the new file (a plain fd, or a slot of the file table).
    fn file_opened(&mut self, _token: u64, _res: io::Result<Opened>, _io: &mut Io) {}
    /// An `Io::statx` finished.
    fn file_stat(&mut self, token: u64, res: io::Result<FileStat>, io: &mut Io) {
        self.file_done(token, res.map(|_| 0), None, io);
    }
    /// Called every tick (`tick` in [`DriverOptions`]) and whenever `next_deadline` has
    /// passed: timers, group commit, live tails.
    fn tick(&mut self, _io: &mut Io) {}
    /// Called when the driver is about to wait: the earliest time `tick` must run (an ack
    /// cadence, say) if sooner than the next periodic tick.
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
    /// Shutdown was asked: stop taking new work, flush, send final acks. Called on every
    /// loop iteration until it returns true (or the grace period ends).
    fn shutdown(&mut self, _io: &mut Io) -> bool {
        true
    }
}

/// Driver settings that come from outside the [net] section (the [server] section and
/// the command line).
#[derive(Clone, Debug)]
pub struct DriverOptions {
    pub ingest_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub workers: usize,
    /// Connections per worker (the tables and buffers are sized from it).
    pub max_connections_per_worker: usize,
    /// Files a worker's service may register at once (`Io::register_file`): match files
    /// and replays being served; sizes the registered-file table with register-files.
    pub max_files_per_worker: usize,
    /// Close connections silent for this long (0 = never).
    pub idle_timeout: Duration,
    /// Abort a connection whose output makes no progress for this long (a peer that
    /// does not read), per port (0 = never).
    pub send_timeout_ingest: Duration,
    pub send_timeout_http: Duration,
    /// Timer period of the service and the sweeps.
    pub tick: Duration,
    /// Longest wait for the service to flush at shutdown.
    pub shutdown_grace: Duration,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            ingest_addr: "127.0.0.1:0".parse().expect("literal address"),
            http_addr: "127.0.0.1:0".parse().expect("literal address"),
            workers: 2,
            max_connections_per_worker: 4096,
            max_files_per_worker: 1024,
            idle_timeout: Duration::from_secs(60),
            send_timeout_ingest: Duration::from_secs(30),
            send_timeout_http: Duration::from_secs(10),
            tick: Duration::from_millis(20),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// What one worker's ring turned out to be, for `--print-config` and results.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WorkerReport {
    pub worker: usize,
    /// Requested vs effective setup flags, features, sizes, fdinfo (SqThread, UserBufs...).
    pub ring: Effective,
    /// CPU the worker is pinned to (`net.workers-pin = cores`).
    pub cpu: Option<usize>,
    pub recv: String,
    pub accept: String,
    pub send: String,
    pub listeners: String,
    /// Provided-buffer ring of multishot receive: (entries, bytes each).
    pub buf_ring: Option<(u32, u32)>,
    pub arena_slots: usize,
    pub arena_slot_bytes: usize,
    /// The arena is registered (IORING_REGISTER_BUFFERS): READ_FIXED / WRITE_FIXED usable.
    pub arena_registered: bool,
    /// The ring of this worker attached to the process's anchor ring (attach-wq first).
    pub attached_to_anchor: bool,
    /// Registered-file table (sparse) and its ranges.
    pub file_table: Option<files::Layout>,
    /// Provided buffers consumed incrementally (IOU_PBUF_RING_INC).
    pub buf_ring_inc: bool,
    /// NAPI busy polling in force, as the kernel reports it (fdinfo `NAPI:` and friends).
    pub napi: Option<crate::sys::register::NapiSettings>,
    /// Socket options set on the listeners, read back with getsockopt:
    /// `(TCP_NODELAY, SO_SNDBUF, SO_RCVBUF)`.
    pub listener_sockopts: Option<(i32, i32, i32)>,
}

/// Counters of one worker, for results.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub accepted: AtomicU64,
    pub closed: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub recv_rearms: AtomicU64,
    pub enobufs: AtomicU64,
    pub zc_copied: AtomicU64,
    pub zc_sends: AtomicU64,
    pub idle_closed: AtomicU64,
    /// Connections aborted because their output made no progress (send timeout).
    pub send_timeouts: AtomicU64,
    pub enter_calls: AtomicU64,
    /// Socket-op pushes that found the SQ full after a flush and waited for the kernel
    /// (SQPOLL thread) to consume entries: non-zero means sq-entries is small for the load.
    pub sq_waits: AtomicU64,
    /// Largest single receive completion (bytes): bounded by recv-buf-bytes.
    pub recv_max_bytes: AtomicU64,
    /// Receive completions whose bytes spanned several provided buffers (bundles).
    pub recv_multi_buffer: AtomicU64,
    /// Completions of an incremental buffer ring found out of order (must stay 0).
    pub bufring_order_errors: AtomicU64,
    /// Connections handed to another worker as direct descriptors (MSG_RING SEND_FD).
    pub handoffs_direct: AtomicU64,
    /// Connections adopted from a hand-off (either kind).
    pub handoffs_in: AtomicU64,
    /// setsockopt calls that succeeded on accepted sockets (TCP_NODELAY, SO_SNDBUF,
    /// SO_RCVBUF); with direct sockets the options are set on the listeners instead.
    pub sockopts_applied: AtomicU64,
    /// Linked write -> sync pairs whose write CQE the kernel skipped.
    pub cqes_skipped: AtomicU64,
    /// Sends that took several buffers in one SQE (IORING_SEND_VECTORIZED).
    pub sends_vectored: AtomicU64,
    /// Files installed in the registered-file table (matches, replays being served).
    pub files_registered: AtomicU64,
    /// Largest pipe capacity the kernel granted for splice (F_GETPIPE_SZ after F_SETPIPE_SZ).
    pub pipe_capacity_max: AtomicU64,
}

/// Every worker's counters in this process, for `/metrics` ([`metrics_text`]).
static ALL_STATS: Mutex<Vec<Arc<WorkerStats>>> = Mutex::new(Vec::new());

fn register_stats(s: &Arc<WorkerStats>) {
    ALL_STATS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(s.clone());
}

/// `/metrics` rows of the io_uring backend (registered by `metrics::render`): what every
/// ring of the process handed to the kernel (`sys::stats`: `recorder_uring_sqes_total{op}`,
/// `_sqe_flags_total{flag}`, `_sqe_op_flags_total{flag}`, `_sqe_len_max{op}`,
/// `_enters_by_kind_total{kind}`, `_cqe_flags_total{flag}`) and the workers' per-option
/// counters summed (`recorder_uring_worker_*`). Series that are 0 are left out.
pub fn metrics_collector() -> Box<dyn prometheus_client::collector::Collector> {
    Box::new(UringCollector)
}

#[derive(Debug)]
struct UringCollector;

impl prometheus_client::collector::Collector for UringCollector {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use crate::sys::stats::{CqeFlag, EnterKind, OpFlag, N_OPS, SQE_FLAG_NAMES};
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::MetricType;
        let st = crate::sys::stats::process_stats();
        let op_name = |i: usize| crate::sys::ring::opcode_name(i as u8);
        let mut family = |name: &str,
                          help: &str,
                          kind: MetricType,
                          label: &str,
                          rows: Vec<(String, u64)>|
         -> Result<(), std::fmt::Error> {
            let rows: Vec<(String, u64)> = rows.into_iter().filter(|(_, v)| *v != 0).collect();
            if rows.is_empty() {
                return Ok(());
            }
            let mut m = enc.encode_descriptor(name, help, None, kind)?;
            for (l, v) in rows {
                let labels = [(label, l.as_str())];
                let e = m.encode_family(&labels)?;
                match kind {
                    MetricType::Counter => ConstCounter::new(v).encode(e)?,
                    _ => ConstGauge::new(v as i64).encode(e)?,
                }
            }
            Ok(())
        };
        family(
            "uring_sqes",
            "SQEs pushed to every ring of the process, by opcode",
            MetricType::Counter,
            "op",
            (0..N_OPS).map(|i| (op_name(i), st.ops[i])).collect(),
        )?;
        family(
            "uring_sqe_len_max",
            "Largest sqe->len pushed, by opcode (bytes for reads, writes, sends and splices)",
            MetricType::Gauge,
            "op",
            (0..N_OPS).map(|i| (op_name(i), st.max_len[i])).collect(),
        )?;
        family(
            "uring_sqe_flags",
            "SQEs pushed with each IOSQE_* flag",
            MetricType::Counter,
            "flag",
            (0..8)
                .map(|i| (SQE_FLAG_NAMES[i].to_string(), st.sqe_flags[i]))
                .collect(),
        )?;
        family("uring_sqe_op_flags", "SQEs pushed with each opcode-specific flag (ioprio, op_flags, file_index, fallocate mode)", MetricType::Counter, "flag",
            OpFlag::ALL.iter().map(|f| (f.name().to_string(), st.op_flag(*f))).collect())?;
        family(
            "uring_enters_by_kind",
            "io_uring_enter calls by how they were made",
            MetricType::Counter,
            "kind",
            EnterKind::ALL
                .iter()
                .map(|k| (k.name().to_string(), st.enter(*k)))
                .collect(),
        )?;
        family(
            "uring_cqe_flags",
            "Completions that carried each IORING_CQE_F_* flag",
            MetricType::Counter,
            "flag",
            CqeFlag::ALL
                .iter()
                .map(|k| (k.name().to_string(), st.cqe_flag(*k)))
                .collect(),
        )?;
        let all = ALL_STATS.lock().unwrap_or_else(|e| e.into_inner());
        if all.is_empty() {
            return Ok(());
        }
        let sum = |f: fn(&WorkerStats) -> &AtomicU64| -> u64 {
            all.iter().map(|w| f(w).load(Ordering::Relaxed)).sum()
        };
        let max = |f: fn(&WorkerStats) -> &AtomicU64| -> u64 {
            all.iter()
                .map(|w| f(w).load(Ordering::Relaxed))
                .max()
                .unwrap_or(0)
        };
        let counters: [(&str, &str, u64); 16] = [
            ("accepted", "Connections accepted", sum(|w| &w.accepted)),
            ("closed", "Connections closed", sum(|w| &w.closed)),
            (
                "recv_rearms",
                "Multishot receives re-armed",
                sum(|w| &w.recv_rearms),
            ),
            (
                "enobufs",
                "Multishot receives ended by ENOBUFS (buffer ring empty)",
                sum(|w| &w.enobufs),
            ),
            ("zc_sends", "SEND_ZC results", sum(|w| &w.zc_sends)),
            (
                "zc_copied",
                "SEND_ZC notifications saying the kernel copied",
                sum(|w| &w.zc_copied),
            ),
            (
                "send_timeouts",
                "Connections cut off for output making no progress",
                sum(|w| &w.send_timeouts),
            ),
            (
                "sq_waits",
                "Pushes that waited for SQ room",
                sum(|w| &w.sq_waits),
            ),
            (
                "recv_multi_buffer",
                "Receive completions spanning several provided buffers (bundles)",
                sum(|w| &w.recv_multi_buffer),
            ),
            (
                "bufring_order_errors",
                "Incremental buffer ring completions out of order (must be 0)",
                sum(|w| &w.bufring_order_errors),
            ),
            (
                "handoffs_direct",
                "Direct sockets passed to another worker (MSG_RING SEND_FD)",
                sum(|w| &w.handoffs_direct),
            ),
            (
                "handoffs_in",
                "Connections adopted from the acceptor",
                sum(|w| &w.handoffs_in),
            ),
            (
                "sockopts_applied",
                "setsockopt calls that succeeded on accepted sockets",
                sum(|w| &w.sockopts_applied),
            ),
            (
                "link_head_cqes_skipped",
                "Linked write->sync pairs whose write CQE was skipped",
                sum(|w| &w.cqes_skipped),
            ),
            (
                "sends_vectored",
                "Sends of several buffers in one SQE (IORING_SEND_VECTORIZED)",
                sum(|w| &w.sends_vectored),
            ),
            (
                "files_registered",
                "Files installed in the registered-file table",
                sum(|w| &w.files_registered),
            ),
        ];
        for (name, help, v) in counters {
            let c = ConstCounter::new(v);
            c.encode(enc.encode_descriptor(
                &format!("uring_worker_{name}"),
                help,
                None,
                c.metric_type(),
            )?)?;
        }
        let gauges: [(&str, &str, u64); 2] = [
            (
                "recv_max_bytes",
                "Largest single receive completion (bytes)",
                max(|w| &w.recv_max_bytes),
            ),
            (
                "pipe_capacity_bytes",
                "Largest pipe capacity the kernel granted for splice (F_GETPIPE_SZ)",
                max(|w| &w.pipe_capacity_max),
            ),
        ];
        for (name, help, v) in gauges {
            let g = ConstGauge::new(v as i64);
            g.encode(enc.encode_descriptor(
                &format!("uring_worker_{name}"),
                help,
                None,
                g.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// Shared view of the server while it runs.
#[derive(Debug, Default)]
pub struct Handle {
    pub ingest_addr: Mutex<Option<SocketAddr>>,
    pub http_addr: Mutex<Option<SocketAddr>>,
    pub reports: Mutex<Vec<WorkerReport>>,
    pub stats: Mutex<Vec<Arc<WorkerStats>>>,
}

/// Why the backend could not run.
#[derive(Debug)]
pub enum UringError {
    /// The configuration cannot be used by this backend.
    Config(String),
    /// A listener could not be set up.
    Listen { addr: SocketAddr, err: io::Error },
    /// The kernel refused a ring or a feature the configuration asks for.
    Unsupported { what: String, err: io::Error },
    /// A worker failed while running.
    Worker { worker: usize, err: String },
    /// The ring could not be built as configured (refused, unsupported, disabled).
    Ring(RingError),
}

impl fmt::Display for UringError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UringError::Config(m) => write!(f, "{m}"),
            UringError::Listen { addr, err } => write!(f, "cannot listen on {addr}: {err}"),
            UringError::Unsupported { what, err } => write!(f, "unsupported: {what}: {err}"),
            UringError::Worker { worker, err } => write!(f, "worker {worker}: {err}"),
            UringError::Ring(e) => write!(f, "io_uring ring: {e}"),
        }
    }
}

impl std::error::Error for UringError {}

// ---------------------------------------------------------------------------------
// The ring shared by netops, fileops and wake-ups.

/// The ring type of the workers: the engine's own ring (every setup flag, built by
/// `uring::build` from the [ring] section) with a timed wait.
pub type WorkerRing = netops::RingWithTimer;

type Shared = netops::MuxRing<WorkerRing>;

type FileView = netops::FileView<WorkerRing>;

fn build_ring(cfg: &Config, anchor: Option<&Mutex<Ring>>) -> Result<(Ring, Effective), UringError> {
    let r = match anchor {
        Some(m) => {
            let g = m.lock().unwrap_or_else(|e| e.into_inner());
            crate::uring::build(&cfg.ring, Some(&g))
        }
        None => crate::uring::build(&cfg.ring, None),
    };
    r.map_err(UringError::Ring)
}

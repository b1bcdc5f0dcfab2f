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
//! IOPOLL rings cannot do socket I/O (EINVAL per request): `config::net::validate`
//! refuses `ring.iopoll` for this backend rather than running a second ring silently.

mod recorder;
pub use recorder::{run_server, Recorder};

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

use crate::config::net::{AcceptMode, Listeners, RecvMode, SendMode, ServeRead, WorkersPin};
use crate::config::Config;
use crate::sys::bufring::BufRing;
use crate::sys::fileops::{self, FileOps, ReadOp, WriteOp};
use crate::sys::mem::{Arena, Slot};
use crate::sys::netops::{self, sockopt, Completion, Errno, NetBuf, NetOps, Pipe};
use crate::sys::ring::Ring;
use crate::uring::{Effective, RingError};

/// `user_data` top byte of socket operations.
pub const TAG_NET: u8 = 1;
/// `user_data` top byte of file operations.
pub const TAG_FILE: u8 = netops::MUX_TAG_FILE;
/// `user_data` top byte of cross-worker wake-ups (MSG_RING).
pub const TAG_WAKE: u8 = 3;

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

/// One request of the service to the driver.
#[derive(Debug)]
enum Req {
    Send(ConnId, Vec<u8>),
    SendFile {
        conn: ConnId,
        file: Arc<File>,
        off: u64,
        len: u64,
        token: u64,
    },
    Close(ConnId),
    Abort(ConnId),
    PauseRecv(ConnId),
    ResumeRecv(ConnId),
    Write {
        fd: RawFd,
        op: Option<WriteOp>,
        buf: Slot,
        len: usize,
        off: u64,
        rw_flags: i32,
        token: u64,
    },
    WriteVec {
        fd: RawFd,
        buf: Vec<u8>,
        start: usize,
        len: usize,
        off: u64,
        rw_flags: i32,
        token: u64,
    },
    Read {
        fd: RawFd,
        buf: Slot,
        len: usize,
        off: u64,
        token: u64,
    },
    Fsync {
        fd: RawFd,
        datasync: bool,
        token: u64,
    },
}

/// What the service asks of the driver during a callback. Requests are executed in
/// order after the callback returns.
pub struct Io {
    reqs: Vec<Req>,
    arena: Arena,
    now: Instant,
    worker: usize,
    from_stage: bool,
    waker: Waker,
}

impl Io {
    /// Queues `bytes` on the connection's output, after what is already queued.
    pub fn send(&mut self, conn: ConnId, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.reqs.push(Req::Send(conn, bytes));
        }
    }
    /// Queues `len` bytes of `file` from `off` on the connection's output, sent the way
    /// `net.send` / `net.serve-read` say. `Service::sent_file` reports the end with `token`.
    pub fn send_file(&mut self, conn: ConnId, file: Arc<File>, off: u64, len: u64, token: u64) {
        self.reqs.push(Req::SendFile {
            conn,
            file,
            off,
            len,
            token,
        });
    }
    /// Closes the connection once its queued output is sent (receiving stops now).
    pub fn close(&mut self, conn: ConnId) {
        self.reqs.push(Req::Close(conn));
    }
    /// Stops receiving on the connection (backpressure: the service cannot take more
    /// input now); data already in flight may still arrive.
    pub fn pause_recv(&mut self, conn: ConnId) {
        self.reqs.push(Req::PauseRecv(conn));
    }
    /// Receives again after `pause_recv`.
    pub fn resume_recv(&mut self, conn: ConnId) {
        self.reqs.push(Req::ResumeRecv(conn));
    }
    /// Closes the connection now, dropping queued output.
    pub fn abort(&mut self, conn: ConnId) {
        self.reqs.push(Req::Abort(conn));
    }
    /// A buffer from the worker's arena (aligned, registered when `file.register-buffers`),
    /// or `None` when every slot is in use (the arena is sized at start-up; back off).
    pub fn alloc_slot(&self) -> Option<Slot> {
        self.arena.alloc()
    }
    pub fn slot_bytes(&self) -> usize {
        self.arena.slot_bytes()
    }
    /// Writes `buf[..len]` at `off` through the ring (`op` or `file.write-op`).
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &mut self,
        fd: RawFd,
        op: Option<WriteOp>,
        buf: Slot,
        len: usize,
        off: u64,
        rw_flags: i32,
        token: u64,
    ) {
        self.reqs.push(Req::Write {
            fd,
            op,
            buf,
            len,
            off,
            rw_flags,
            token,
        });
    }
    /// A handle that wakes this worker from another thread (`Service::woken` runs).
    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }
    /// True when appends go straight from the staging buffer (`write_vec`,
    /// `server.write-buffer = stage`) rather than through arena slots (`write`).
    pub fn write_from_stage(&self) -> bool {
        self.from_stage
    }
    /// Writes `buf[start..start + len]` at `off` straight from the Vec (no copy into the
    /// arena), in one operation of any length. `Service::file_done_vec` gives it back.
    #[allow(clippy::too_many_arguments)]
    pub fn write_vec(
        &mut self,
        fd: RawFd,
        buf: Vec<u8>,
        start: usize,
        len: usize,
        off: u64,
        rw_flags: i32,
        token: u64,
    ) {
        self.reqs.push(Req::WriteVec {
            fd,
            buf,
            start,
            len,
            off,
            rw_flags,
            token,
        });
    }
    /// Reads up to `len` bytes at `off` into `buf` through the ring (`file.read-op`).
    pub fn read(&mut self, fd: RawFd, buf: Slot, len: usize, off: u64, token: u64) {
        self.reqs.push(Req::Read {
            fd,
            buf,
            len,
            off,
            token,
        });
    }
    /// IORING_OP_FSYNC (with IORING_FSYNC_DATASYNC when `datasync`).
    pub fn fsync(&mut self, fd: RawFd, datasync: bool, token: u64) {
        self.reqs.push(Req::Fsync {
            fd,
            datasync,
            token,
        });
    }
    pub fn now(&self) -> Instant {
        self.now
    }
    pub fn worker(&self) -> usize {
        self.worker
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
    /// A file range queued with `send_file` is out (`Ok(bytes)`) or failed.
    fn sent_file(&mut self, _conn: ConnId, _token: u64, _res: io::Result<u64>, _io: &mut Io) {}
    /// A write/read/fsync finished; the buffer comes back.
    fn file_done(&mut self, _token: u64, _res: io::Result<u32>, _buf: Option<Slot>, _io: &mut Io) {}
    /// Someone called this worker's [`Waker`] (and at every tick): look at whatever other
    /// threads handed over.
    fn woken(&mut self, _io: &mut Io) {}
    /// A `write_vec` finished (or could not be queued); the Vec comes back.
    fn file_done_vec(&mut self, _token: u64, _res: io::Result<u32>, _buf: Vec<u8>, _io: &mut Io) {}
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

// ---------------------------------------------------------------------------------
// Connections.

/// ctx kinds in the top byte of NetOps/FileOps ctx values.
const K_RECV: u64 = 1;
const K_SEND: u64 = 2;
const K_SPLICE_IN: u64 = 3;
const K_SPLICE_OUT: u64 = 4;
const K_SPLICE_DRAIN: u64 = 5;
const K_CLOSE: u64 = 6;
const K_ACCEPT: u64 = 7;
const K_TICK: u64 = 8;
const K_IGNORE: u64 = 9;
const K_FILE_READ: u64 = 10;
const K_SERVICE_FILE: u64 = 11;
const K_MSG: u64 = 12;
const K_SHUTDOWN: u64 = 13;

/// How long a closing connection reads (and drops) input waiting for the peer's EOF.
const LINGER: Duration = Duration::from_millis(200);

fn ctx(kind: u64, conn: ConnId) -> u64 {
    (kind << 56) | conn.0
}
fn ctx_kind(c: u64) -> u64 {
    c >> 56
}
fn ctx_conn(c: u64) -> ConnId {
    ConnId(c & ((1 << 56) - 1))
}

enum Out {
    Bytes(Vec<u8>),
    File(FileOut),
}

struct FileOut {
    file: Arc<File>,
    /// O_DIRECT descriptor of the same file (serve-read=direct).
    direct: Option<OwnedFd>,
    off: u64,
    remaining: u64,
    sent: u64,
    token: u64,
    /// Bytes in the pipe waiting to go to the socket (splice).
    in_pipe: u32,
    /// Bytes of the chunk read into a slot and being sent (read + send path).
    chunk: u64,
}

#[derive(PartialEq, Eq, Debug, Clone, Copy)]
enum State {
    Open,
    /// No more receiving; close once the output queue is empty.
    Closing,
    /// Output sent and SHUT_WR done: reading (and dropping) until the peer's EOF or the
    /// deadline, so unread input does not turn the close into a reset that destroys our
    /// last bytes (an error message) before the peer reads them.
    Lingering(Instant),
    /// Ops being cancelled; CLOSE once none is in flight.
    Cancelling,
    /// CLOSE in flight.
    Closed,
}

struct Conn {
    gen: u32,
    fd: Option<OwnedFd>,
    state: State,
    recv_in_flight: bool,
    /// user_data of the receive in flight (to cancel a multishot one on pause).
    recv_ud: u64,
    /// The service asked not to receive for now.
    paused: bool,
    /// The peer closed its sending side.
    eof_seen: bool,
    recv_buf: Option<Vec<u8>>,
    out: VecDeque<Out>,
    /// A send, splice or file read of this connection is in flight.
    out_busy: bool,
    /// Bytes asked of the send in flight.
    send_len: usize,
    ops: u32,
    last_active: Instant,
    /// When the output op in flight was issued or last made progress.
    last_out: Instant,
    port: Port,
    pipe: Option<Pipe>,
}

// ---------------------------------------------------------------------------------
// run()

/// Runs the io_uring backend until `shutdown` is set. `make_service(worker)` builds each
/// worker's service on the worker's thread. The bound addresses and the per-worker ring
/// reports are published in `handle` as soon as they are known.
pub fn run<S, F>(
    cfg: &Config,
    opts: &DriverOptions,
    prebound: Option<(TcpListener, TcpListener)>,
    make_service: F,
    shutdown: Arc<AtomicBool>,
    handle: Arc<Handle>,
) -> Result<(), UringError>
where
    S: Service,
    F: Fn(usize) -> S + Send + Sync,
{
    cfg.validate().map_err(|e| UringError::Config(e.message))?;
    if opts.workers == 0 {
        return Err(UringError::Config("workers must be at least 1".into()));
    }
    let net = &cfg.net;
    let nworkers = opts.workers;
    // Listeners: bind on this thread so port 0 resolves once and every worker shares it.
    let per_worker = net.listeners == Listeners::Reuseport;
    let nl = if per_worker { nworkers } else { 1 };
    let mut listeners: Vec<Vec<(Port, TcpListener)>> = (0..nworkers).map(|_| Vec::new()).collect();
    let (mut pre_i, mut pre_h) = match prebound {
        Some((i, h)) => (Some(i), Some(h)),
        None => (None, None),
    };
    for (port, addr) in [
        (Port::Ingest, opts.ingest_addr),
        (Port::Http, opts.http_addr),
    ] {
        let mut bound = addr;
        #[allow(clippy::needless_range_loop)] // i also picks the caller's listener for i == 0
        for i in 0..nl {
            // A listener bound by the caller (its address already announced) is used as
            // the first one, so no connection ever finds the port closed; with reuseport
            // it gets SO_REUSEPORT now, and the others join its group when they listen.
            let pre = if i == 0 {
                if port == Port::Ingest {
                    pre_i.take()
                } else {
                    pre_h.take()
                }
            } else {
                None
            };
            let l = match pre {
                Some(l) => {
                    if per_worker {
                        sockopt::set_reuseport(l.as_raw_fd())
                            .map_err(|err| UringError::Listen { addr, err })?;
                    }
                    l
                }
                None => sockopt::listen(bound, per_worker, net.listen_backlog as i32)
                    .map_err(|err| UringError::Listen { addr: bound, err })?,
            };
            bound = l
                .local_addr()
                .map_err(|err| UringError::Listen { addr, err })?;
            listeners[i].push((port, l));
        }
        let slot = if port == Port::Ingest {
            &handle.ingest_addr
        } else {
            &handle.http_addr
        };
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(bound);
    }
    let mailboxes: Arc<Vec<Mailbox>> =
        Arc::new((0..nworkers).map(|_| Mailbox::default()).collect());
    // attach-wq first: one anchor ring, built here from the same [ring] section and never
    // used for I/O, is "the process's first ring"; every worker's ring attaches to its
    // io-wq (and, with SQPOLL, shares its SQ thread). Workers build their own rings on
    // their own threads (SINGLE_ISSUER / DEFER_TASKRUN bind the ring to its creator).
    let anchor: Option<Mutex<Ring>> = if cfg.ring.attach_wq == crate::config::ring::AttachWq::First
    {
        Some(Mutex::new(build_ring(cfg, None)?.0))
    } else {
        None
    };
    let errors: Mutex<Vec<UringError>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        let mut joins = Vec::new();
        for (w, ls) in listeners.into_iter().enumerate() {
            let shutdown = &shutdown;
            let handle = handle.clone();
            let mailboxes = mailboxes.clone();
            let anchor = anchor.as_ref();
            let make_service = &make_service;
            let errors = &errors;
            let j = std::thread::Builder::new()
                .name(format!("uring-w{w}"))
                .spawn_scoped(scope, move || {
                    let r = Worker::setup(cfg, opts, w, ls, mailboxes, anchor, &handle).and_then(
                        |mut wk| {
                            let svc = make_service(w);
                            wk.run(svc, shutdown)
                        },
                    );
                    if let Err(e) = r {
                        // One worker failing stops the server: others see the flag.
                        shutdown.store(true, Ordering::SeqCst);
                        errors.lock().unwrap_or_else(|e| e.into_inner()).push(e);
                    }
                });
            match j {
                Ok(j) => joins.push(j),
                Err(e) => {
                    shutdown.store(true, Ordering::SeqCst);
                    errors
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(UringError::Worker {
                            worker: w,
                            err: format!("cannot start thread: {e}"),
                        });
                    break;
                }
            }
        }
        for j in joins {
            if j.join().is_err() {
                shutdown.store(true, Ordering::SeqCst);
                errors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(UringError::Worker {
                        worker: usize::MAX,
                        err: "a worker panicked".into(),
                    });
            }
        }
    });
    match errors
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .next()
    {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// What the io_uring backend's rings would be with `cfg`, without serving: builds (and
/// drops) one ring per worker the way `run` does (anchor ring first for attach-wq), so
/// `--print-config` can show requested vs effective setup flags, sizes and fdinfo, or
/// the kernel's refusal, before anything listens. DEFER_TASKRUN/SINGLE_ISSUER rings are
/// built on this thread here; `run` builds them on their worker threads.
pub fn effective_rings(cfg: &Config, workers: usize) -> Result<Vec<Effective>, UringError> {
    cfg.validate().map_err(|e| UringError::Config(e.message))?;
    let anchor: Option<Mutex<Ring>> = if cfg.ring.attach_wq == crate::config::ring::AttachWq::First
    {
        Some(Mutex::new(build_ring(cfg, None)?.0))
    } else {
        None
    };
    (0..workers.max(1))
        .map(|_| build_ring(cfg, anchor.as_ref()).map(|(_, e)| e))
        .collect()
}

/// Wakes one worker from any thread: a MSG_RING CQE tagged [`TAG_WAKE`] on the worker's
/// ring, sent from a small process-wide "poster" ring, so a worker blocked in
/// io_uring_enter runs `Service::woken` at once (storage work finished on a helper
/// thread, say). A worker whose ring has no fd (REGISTERED_FD_ONLY) cannot be named by
/// MSG_RING: `wake` does nothing and the worker notices at its next tick.
#[derive(Clone)]
pub struct Waker {
    ring_fd: Option<RawFd>,
}

/// The process's poster ring, made at the first wake-up.
static POSTER: Mutex<Option<Poster>> = Mutex::new(None);

struct Poster {
    ring: io_uring::IoUring,
    net: NetOps<NetBuf>,
}

impl Waker {
    pub fn wake(&self) {
        let Some(fd) = self.ring_fd else { return };
        let mut g = POSTER.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            match io_uring::IoUring::new(8) {
                Ok(ring) => {
                    *g = Some(Poster {
                        ring,
                        net: NetOps::new(8, TAG_NET),
                    })
                }
                Err(e) => {
                    eprintln!("uring: cannot make the wake-up ring ({e}); workers notice finished storage work at their next tick");
                    return;
                }
            }
        }
        let p = g.as_mut().expect("just made");
        if p.net
            .msg_ring(&mut p.ring, fd, 0, (TAG_WAKE as u64) << 56, 0)
            .is_err()
        {
            return;
        }
        // MSG_RING completes on the sender at once; reap it so the table stays free.
        if p.ring.submit_and_wait(1).is_ok() {
            let cqes: Vec<_> = p.ring.completion().collect();
            for c in cqes {
                let _ = p.net.complete(c.user_data(), c.result(), c.flags());
            }
        }
    }
}

/// Connections handed from the acceptor (worker 0) to another worker.
#[derive(Default)]
struct Mailbox {
    conns: Mutex<Vec<(OwnedFd, Port)>>,
    ring_fd: Mutex<Option<RawFd>>,
}

fn conn_of(conns: &mut [Option<Conn>], id: ConnId) -> Option<&mut Conn> {
    conns
        .get_mut(id.idx())
        .and_then(|c| c.as_mut())
        .filter(|c| c.gen == id.gen())
}

struct Worker<'a> {
    cfg: &'a Config,
    opts: &'a DriverOptions,
    id: usize,
    shared: Rc<RefCell<Shared>>,
    net: NetOps<NetBuf>,
    files: FileOps<FileView>,
    arena: Arena,
    pbuf: Option<BufRing>,
    listeners: Vec<(Port, TcpListener, bool)>,
    conns: Vec<Option<Conn>>,
    gens: Vec<u32>,
    free: Vec<u32>,
    live: usize,
    mailboxes: Arc<Vec<Mailbox>>,
    next_target: usize,
    stats: Arc<WorkerStats>,
    io: Io,
    pending_close_listeners: bool,
    /// Connections closed without a CLOSE completion (CLOSE could not be queued).
    closed_now: Vec<ConnId>,
}

const BGID: u16 = 7;

impl<'a> Worker<'a> {
    fn setup(
        cfg: &'a Config,
        opts: &'a DriverOptions,
        id: usize,
        ls: Vec<(Port, TcpListener)>,
        mailboxes: Arc<Vec<Mailbox>>,
        anchor: Option<&Mutex<Ring>>,
        handle: &Handle,
    ) -> Result<Worker<'a>, UringError> {
        let net = &cfg.net;
        let cpu = match net.workers_pin {
            WorkersPin::None => None,
            WorkersPin::Cores => {
                let n = std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1);
                let cpu = id % n;
                netops::pin_current_thread(cpu).map_err(|err| UringError::Unsupported {
                    what: format!("pinning worker {id} to CPU {cpu}"),
                    err,
                })?;
                Some(cpu)
            }
        };
        let (mut ring, effective) = build_ring(cfg, anchor)?;
        *mailboxes[id]
            .ring_fd
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = ring.fd();
        let pbuf = if net.recv == RecvMode::Multishot {
            Some(BufRing::new(&mut ring, BGID, net.buf_ring_entries as u16, net.recv_buf_bytes).map_err(|err| {
                UringError::Unsupported { what: "IORING_REGISTER_PBUF_RING for recv=multishot (Linux 5.19+; or use --recv single)".into(), err }
            })?)
        } else {
            None
        };
        let shared = Rc::new(RefCell::new(Shared::new(
            WorkerRing::new(ring),
            effective.flags,
        )));
        let maxc = opts.max_connections_per_worker.max(1);
        // Every connection has at most: one recv, one send (plus a zc notif), two splices,
        // one cancel, one close. Listeners: one accept each. Plus tick and wake-ups.
        let net_ops = NetOps::new(maxc * 6 + 64, TAG_NET);
        // Arena: one slot holds one HTTP chunk (plus the O_DIRECT head skip) or one piece
        // of a match-file write. Sized by net.worker-arena-slots; a
        // request that finds it empty waits for a slot (never a heap fallback).
        // ... and one slot holds a whole append (append-buffer-bytes plus a frame's worth),
        // so an append is one write: pieces of one append would take turns on the file's
        // inode lock (extending writes), and small pieces keep the device queue shallow.
        let append_slot = cfg.server.append_buffer_bytes as usize + (128 << 10);
        let slot_bytes = (net.serve_chunk_bytes as usize + 4096)
            .max(append_slot)
            .next_multiple_of(4096);
        let slots = net.worker_arena_slots as usize;
        let arena = Arena::with_pages(slots * slot_bytes, slot_bytes, 4096, cfg.file.buffer_memory)
            .map_err(|e| UringError::Unsupported {
                what: "worker arena".into(),
                err: io::Error::other(e.to_string()),
            })?;
        let mut files = FileOps::new(
            netops::FileView(shared.clone()),
            slots + maxc.min(4096) + 64,
        );
        let mut registered = false;
        if cfg.file.register_buffers {
            files
                .register_arena(&arena)
                .map_err(|err| UringError::Unsupported {
                    what: format!(
                        "registering the worker arena ({} slots of {} bytes) as fixed buffers",
                        slots, slot_bytes
                    ),
                    err,
                })?;
            registered = true;
        }
        let mut ring_eff = effective;
        ring_eff.refresh_fdinfo(&shared.borrow().ring.ring);
        let report = WorkerReport {
            worker: id,
            ring: ring_eff,
            cpu,
            recv: crate::config::choice_name(net.recv, crate::config::net::RECV_CHOICES).into(),
            accept: crate::config::choice_name(net.accept, crate::config::net::ACCEPT_CHOICES)
                .into(),
            send: crate::config::choice_name(net.send, crate::config::net::SEND_CHOICES).into(),
            listeners: crate::config::choice_name(
                net.listeners,
                crate::config::net::LISTENERS_CHOICES,
            )
            .into(),
            buf_ring: pbuf
                .as_ref()
                .map(|_| (net.buf_ring_entries, net.recv_buf_bytes)),
            arena_slots: slots,
            arena_slot_bytes: slot_bytes,
            arena_registered: registered,
            attached_to_anchor: anchor.is_some(),
        };
        eprintln!(
            "uring worker {id}: ring flags {} (asked {}), features {}, sq {} cq {}, attach-wq {}, io-wq max workers {}, recv {}{}, accept {}, send {}, listeners {}, arena {} x {} bytes{}",
            report.ring.flag_names,
            report.ring.requested_flag_names,
            report.ring.feature_names,
            report.ring.sq_entries,
            report.ring.cq_entries,
            report.ring.attach_wq,
            report
                .ring
                .iowq_max_workers
                .map(|[b, u]| format!("bounded {b} unbounded {u}"))
                .unwrap_or_else(|| "kernel default".into()),
            report.recv,
            report.buf_ring.map(|(n, b)| format!(" (buffer ring {n} x {b})")).unwrap_or_default(),
            report.accept,
            report.send,
            report.listeners,
            report.arena_slots,
            report.arena_slot_bytes,
            if report.arena_registered { " registered" } else { "" },
        );
        let stats = Arc::new(WorkerStats::default());
        {
            let mut r = handle.reports.lock().unwrap_or_else(|e| e.into_inner());
            r.push(report);
            r.sort_by_key(|r| r.worker);
            handle
                .stats
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(stats.clone());
        }
        let io = Io {
            reqs: Vec::new(),
            arena: arena.clone(),
            now: Instant::now(),
            worker: id,
            from_stage: cfg.server.write_buffer == crate::config::server::WriteBuffer::Stage
                && !cfg.file.write_op.is_fixed(),
            waker: Waker {
                ring_fd: *mailboxes[id]
                    .ring_fd
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()),
            },
        };
        Ok(Worker {
            cfg,
            opts,
            id,
            shared,
            net: net_ops,
            files,
            arena,
            pbuf,
            listeners: ls.into_iter().map(|(p, l)| (p, l, false)).collect(),
            conns: Vec::new(),
            gens: Vec::new(),
            free: Vec::new(),
            live: 0,
            mailboxes,
            next_target: 0,
            stats,
            io,
            pending_close_listeners: false,
            closed_now: Vec::new(),
        })
    }

    fn err(&self, what: impl fmt::Display) -> UringError {
        UringError::Worker {
            worker: self.id,
            err: what.to_string(),
        }
    }

    fn arm_accept(&mut self, i: usize) -> Result<(), UringError> {
        let multishot = self.cfg.net.accept == AcceptMode::Multishot;
        let fd = self.listeners[i].1.as_raw_fd();
        let c = ctx(K_ACCEPT, ConnId(i as u64));
        self.net
            .accept(&mut *self.shared.borrow_mut(), fd, multishot, c)
            .map_err(|e| self.err(format!("arming accept: {e}")))?;
        self.listeners[i].2 = true;
        Ok(())
    }

    fn arm_tick(&mut self) -> Result<(), UringError> {
        let t = self.opts.tick;
        self.net
            .timeout(&mut *self.shared.borrow_mut(), t, ctx(K_TICK, ConnId(0)))
            .map_err(|e| self.err(format!("arming the tick: {e}")))?;
        Ok(())
    }

    fn run<S: Service>(&mut self, mut svc: S, shutdown: &AtomicBool) -> Result<(), UringError> {
        for i in 0..self.listeners.len() {
            self.arm_accept(i)?;
        }
        self.arm_tick()?;
        let mut shutdown_since: Option<Instant> = None;
        let mut svc_done = false;
        loop {
            self.io.now = Instant::now();
            if shutdown.load(Ordering::Relaxed) && shutdown_since.is_none() {
                shutdown_since = Some(self.io.now);
                self.stop_accepting();
            }
            if let Some(since) = shutdown_since {
                if !svc_done {
                    svc_done = svc.shutdown(&mut self.io);
                    self.exec(&mut svc)?;
                }
                let flushed = self
                    .conns
                    .iter()
                    .flatten()
                    .all(|c| c.out.is_empty() && !c.out_busy);
                if (svc_done && flushed)
                    || self.io.now.duration_since(since) > self.opts.shutdown_grace
                {
                    break;
                }
            }
            let deadline = svc.next_deadline();
            {
                let mut s = self.shared.borrow_mut();
                if !s.has_routed() {
                    let now = Instant::now();
                    let t = deadline
                        .filter(|d| d.saturating_duration_since(now) < self.opts.tick)
                        .map(|d| {
                            d.saturating_duration_since(now)
                                .max(Duration::from_micros(200))
                        });
                    s.wait(1, t).map_err(|e| UringError::Worker {
                        worker: self.id,
                        err: format!("io_uring_enter: {e}"),
                    })?;
                }
                s.route();
            }
            self.stats
                .enter_calls
                .store(self.shared.borrow().enters, Ordering::Relaxed);
            self.stats
                .sq_waits
                .store(self.net.sq_waits(), Ordering::Relaxed);
            self.io.now = Instant::now();
            self.dispatch(&mut svc)?;
            if deadline.is_some_and(|d| d <= self.io.now) {
                svc.tick(&mut self.io);
                self.exec(&mut svc)?;
            }
        }
        self.teardown(&mut svc)
    }

    fn stop_accepting(&mut self) {
        // Dropping a listener while its ACCEPT is in flight is safe (the kernel holds a
        // file reference); cancel it so the CQE comes back, then close.
        for i in 0..self.listeners.len() {
            let fd = self.listeners[i].1.as_raw_fd();
            let _ =
                self.net
                    .cancel_fd(&mut *self.shared.borrow_mut(), fd, ctx(K_IGNORE, ConnId(0)));
        }
        self.pending_close_listeners = true;
    }

    fn teardown<S: Service>(&mut self, svc: &mut S) -> Result<(), UringError> {
        // Close every connection, then wait (bounded) for every op to come back so no
        // buffer is freed under the kernel.
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| ConnId::new(i as u32, c.gen)))
            .collect();
        for id in ids {
            self.abort(id);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while (self.net.in_flight() > 1 || self.files.in_flight() > 0 || self.live > 0)
            && Instant::now() < deadline
        {
            {
                let mut s = self.shared.borrow_mut();
                s.wait(1, Some(Duration::from_millis(50)))
                    .map_err(|e| UringError::Worker {
                        worker: self.id,
                        err: e.to_string(),
                    })?;
                s.route();
            }
            self.io.now = Instant::now();
            self.dispatch(svc)?;
        }
        if let Some(p) = self.pbuf.take() {
            let _ = p.unregister(&mut self.shared.borrow_mut().ring.ring);
        }
        Ok(())
    }

    /// Handles every routed CQE, then runs the service's requests.
    fn dispatch<S: Service>(&mut self, svc: &mut S) -> Result<(), UringError> {
        loop {
            let next = self.shared.borrow_mut().pop_other();
            let Some((ud, res, flags)) = next else { break };
            match (ud >> 56) as u8 {
                TAG_NET => {
                    if let Some(c) = self.net.complete(ud, res, flags) {
                        self.on_net(c, svc)?;
                    }
                }
                TAG_WAKE => self.take_mail(svc)?,
                other => {
                    return Err(
                        self.err(format!("CQE with unknown tag {other} (user_data {ud:#x})"))
                    )
                }
            }
            self.exec(svc)?;
        }
        while let Some(c) = self.files.complete() {
            self.on_file(c, svc);
            self.exec(svc)?;
        }
        self.exec(svc)
    }

    fn take_mail<S: Service>(&mut self, svc: &mut S) -> Result<(), UringError> {
        let got = std::mem::take(
            &mut *self.mailboxes[self.id]
                .conns
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for (fd, port) in got {
            self.adopt(fd, port, svc)?;
        }
        svc.woken(&mut self.io);
        self.exec(svc)
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        conn_of(&mut self.conns, id)
    }

    fn adopt<S: Service>(
        &mut self,
        fd: OwnedFd,
        port: Port,
        svc: &mut S,
    ) -> Result<(), UringError> {
        let net = &self.cfg.net;
        if self.live >= self.opts.max_connections_per_worker {
            // The driver's hard limit (tables are sized from it): refuse at once. The
            // service's own limits (with a protocol error message) are lower.
            drop(fd);
            return Ok(());
        }
        let raw = fd.as_raw_fd();
        if net.tcp_nodelay {
            let _ = sockopt::set_nodelay(raw, true);
        }
        if net.sndbuf_bytes > 0 {
            let _ = sockopt::set_sndbuf(raw, net.sndbuf_bytes as i32);
        }
        if net.rcvbuf_bytes > 0 {
            let _ = sockopt::set_rcvbuf(raw, net.rcvbuf_bytes as i32);
        }
        let idx = match self.free.pop() {
            Some(i) => i as usize,
            None => {
                self.conns.push(None);
                self.gens.push(0);
                self.conns.len() - 1
            }
        };
        self.gens[idx] = (self.gens[idx] + 1) & 0xff_ffff;
        let gen = self.gens[idx];
        self.conns[idx] = Some(Conn {
            gen,
            fd: Some(fd),
            state: State::Open,
            recv_in_flight: false,
            recv_ud: 0,
            paused: false,
            eof_seen: false,
            recv_buf: if net.recv == RecvMode::Single {
                Some(vec![0u8; net.recv_buf_bytes as usize])
            } else {
                None
            },
            out: VecDeque::new(),
            out_busy: false,
            send_len: 0,
            ops: 0,
            last_active: self.io.now,
            last_out: self.io.now,
            port,
            pipe: None,
        });
        self.live += 1;
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let id = ConnId::new(idx as u32, gen);
        if svc.open(id, port, &mut self.io) {
            self.arm_recv(id);
        } else {
            self.io.reqs.push(Req::Close(id));
        }
        Ok(())
    }

    fn arm_recv(&mut self, id: ConnId) {
        let multishot = self.pbuf.is_some();
        let Some(c) = self.conn_mut(id) else { return };
        let lingering = matches!(c.state, State::Lingering(_));
        if !(c.state == State::Open || lingering) || c.recv_in_flight || (c.paused && !lingering) {
            return;
        }
        let fd =
            c.fd.as_ref()
                .map(|f| f.as_raw_fd())
                .expect("open connection has its fd");
        let buf = c.recv_buf.take();
        let r = {
            let mut s = self.shared.borrow_mut();
            if multishot {
                self.net.recv_multishot(&mut *s, fd, BGID, ctx(K_RECV, id))
            } else {
                self.net.recv(
                    &mut *s,
                    fd,
                    NetBuf::Heap(match buf {
                        Some(b) => b,
                        None => vec![0u8; self.cfg.net.recv_buf_bytes as usize],
                    }),
                    0,
                    ctx(K_RECV, id),
                )
            }
        };
        let c = self.conn_mut(id).expect("still there");
        match r {
            Ok(ud) => {
                c.recv_in_flight = true;
                c.recv_ud = ud;
                c.ops += 1;
            }
            Err(rej) => {
                if let Some(NetBuf::Heap(b)) = rej.buf {
                    c.recv_buf = Some(b);
                }
                eprintln!(
                    "uring worker: cannot arm a receive: {}; closing the connection",
                    rej.error
                );
                self.abort(id);
            }
        }
    }

    fn on_net<S: Service>(&mut self, c: Completion<NetBuf>, svc: &mut S) -> Result<(), UringError> {
        match c {
            Completion::Accept { ctx: cx, res, more } => {
                let i = (cx & 0xffff) as usize;
                if !more {
                    self.listeners[i].2 = false;
                }
                match res {
                    Ok(fd) => {
                        let port = self.listeners[i].0;
                        self.route_conn(fd, port, svc)?;
                    }
                    Err(Errno(libc::ECANCELED)) => {}
                    Err(Errno(
                        e @ (libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM),
                    )) => {
                        eprintln!("uring worker {}: accept: {} (raise the fd limit or lower max connections)", self.id, Errno(e));
                    }
                    Err(e) => {
                        if !matches!(e.0, libc::ECONNABORTED | libc::EINTR | libc::EAGAIN) {
                            eprintln!("uring worker {}: accept: {e}", self.id);
                        }
                    }
                }
                if !self.listeners[i].2 && !self.pending_close_listeners {
                    self.arm_accept(i)?;
                }
            }
            Completion::Timeout { ctx: _, res: _ } => {
                self.on_tick(svc);
                self.arm_tick()?;
            }
            Completion::Cancel { .. } | Completion::MsgRing { .. } => {}
            Completion::Shutdown { ctx: cx, res: _ } => {
                let id = ctx_conn(cx);
                self.op_done(id, false);
                self.maybe_close(id);
            }
            Completion::Close { ctx: cx, res: _ } => self.release_conn(ctx_conn(cx), svc),
            Completion::RecvMulti {
                ctx: cx, res, more, ..
            } => {
                let id = ctx_conn(cx);
                if !more {
                    self.op_done(id, false);
                    if let Some(c) = self.conn_mut(id) {
                        c.recv_in_flight = false;
                    }
                }
                let open = self.conn_mut(id).is_some_and(|c| c.state == State::Open);
                match res {
                    Ok(Some((bid, len))) => {
                        let pbuf = self.pbuf.as_mut().expect("multishot has a buffer ring");
                        let data = &pbuf.buf(bid)[..len];
                        if open {
                            self.stats.bytes_in.fetch_add(len as u64, Ordering::Relaxed);
                            svc.data(id, data, &mut self.io);
                        }
                        pbuf.recycle(bid);
                        let now = self.io.now;
                        if let Some(c) = self.conn_mut(id) {
                            c.last_active = now;
                        }
                        if !more {
                            self.stats.recv_rearms.fetch_add(1, Ordering::Relaxed);
                            self.exec(svc)?;
                            self.arm_recv(id);
                            self.maybe_close(id);
                        }
                    }
                    Ok(None) => self.on_eof(id, svc),
                    Err(Errno(libc::ENOBUFS)) => {
                        self.stats.enobufs.fetch_add(1, Ordering::Relaxed);
                        self.stats.recv_rearms.fetch_add(1, Ordering::Relaxed);
                        self.arm_recv(id);
                        self.maybe_close(id);
                    }
                    Err(Errno(libc::ECANCELED)) => {
                        self.arm_recv(id);
                        self.maybe_close(id)
                    }
                    Err(_) => self.on_reset(id),
                }
            }
            Completion::Recv {
                ctx: cx, res, buf, ..
            } => {
                let id = ctx_conn(cx);
                self.op_done(id, false);
                let NetBuf::Heap(buf) = buf else {
                    unreachable!("receive buffers are heap buffers")
                };
                let now = self.io.now;
                let Some(c) = self.conn_mut(id) else {
                    return Ok(());
                };
                c.recv_in_flight = false;
                c.recv_buf = Some(buf);
                match res {
                    Ok(0) => self.on_eof(id, svc),
                    Ok(n) => {
                        c.last_active = now;
                        let open = c.state == State::Open;
                        let buf = c.recv_buf.take().expect("just stored");
                        self.stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                        if open {
                            svc.data(id, &buf[..n], &mut self.io);
                        }
                        if let Some(c) = self.conn_mut(id) {
                            c.recv_buf = Some(buf);
                        }
                        // Run the service's requests (maybe a close) before re-arming.
                        self.exec(svc)?;
                        self.arm_recv(id);
                    }
                    Err(Errno(libc::ECANCELED)) => {
                        self.arm_recv(id);
                        self.maybe_close(id)
                    }
                    Err(_) => self.on_reset(id),
                }
            }
            Completion::Send {
                ctx: cx,
                res,
                buf,
                off,
                zc,
                notif_pending: _,
            } => {
                let id = ctx_conn(cx);
                if zc {
                    self.stats.zc_sends.fetch_add(1, Ordering::Relaxed);
                }
                self.op_done(id, true);
                match res {
                    Ok(n) => {
                        self.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                        let Some(c) = self.conn_mut(id) else {
                            return Ok(());
                        };
                        if n < c.send_len {
                            match buf {
                                // Short send: the rest goes first.
                                Some(b) => self.send_buf(id, b, off + n),
                                // SEND_ZC keeps the buffer until its notification: a short
                                // zero-copy send (an error midway) cannot be resumed.
                                None => self.abort(id),
                            }
                            return Ok(());
                        }
                        if let Some(Out::File(f)) = c.out.front_mut() {
                            if f.chunk > 0 {
                                f.sent += f.chunk;
                                f.off += f.chunk;
                                f.remaining -= f.chunk.min(f.remaining);
                                f.chunk = 0;
                            }
                        }
                        self.pump(id, svc);
                    }
                    Err(Errno(libc::ECANCELED)) => self.maybe_close(id),
                    Err(_) => self.on_reset(id),
                }
            }
            Completion::SendZcNotif { copied, .. } => {
                if copied {
                    self.stats.zc_copied.fetch_add(1, Ordering::Relaxed);
                }
            }
            Completion::Splice { ctx: cx, res } => {
                let id = ctx_conn(cx);
                let kind = ctx_kind(cx);
                self.op_done(id, kind != K_SPLICE_IN);
                self.on_splice(id, kind, res, svc);
            }
        }
        Ok(())
    }

    /// One op of connection `id` came back. `out` when it was the output op.
    fn op_done(&mut self, id: ConnId, out: bool) {
        if let Some(c) = self.conn_mut(id) {
            c.ops -= 1;
            if out {
                c.out_busy = false;
                c.last_out = Instant::now();
            }
        }
    }

    fn on_eof<S: Service>(&mut self, id: ConnId, svc: &mut S) {
        let Some(c) = self.conn_mut(id) else { return };
        c.eof_seen = true;
        match c.state {
            State::Open => svc.eof(id, &mut self.io),
            State::Lingering(_) => self.abort(id),
            _ => self.maybe_close(id),
        }
    }

    fn on_reset(&mut self, id: ConnId) {
        self.abort(id);
    }

    fn route_conn<S: Service>(
        &mut self,
        fd: OwnedFd,
        port: Port,
        svc: &mut S,
    ) -> Result<(), UringError> {
        let n = self.mailboxes.len();
        if self.cfg.net.listeners == Listeners::Acceptor && n > 1 {
            let target = self.next_target % n;
            self.next_target = self.next_target.wrapping_add(1);
            if target != self.id {
                self.mailboxes[target]
                    .conns
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((fd, port));
                let tfd = *self.mailboxes[target]
                    .ring_fd
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if let Some(tfd) = tfd {
                    let r = self.net.msg_ring(
                        &mut *self.shared.borrow_mut(),
                        tfd,
                        0,
                        (TAG_WAKE as u64) << 56,
                        ctx(K_MSG, ConnId(0)),
                    );
                    if let Err(e) = r {
                        // The target also checks its mailbox every tick.
                        eprintln!("uring worker {}: MSG_RING to worker {target}: {e}; it will pick the connection up at its next tick", self.id);
                    }
                }
                return Ok(());
            }
        }
        self.adopt(fd, port, svc)
    }

    fn on_tick<S: Service>(&mut self, svc: &mut S) {
        // Hand-overs and `Service::woken` also run every tick, in case a wake-up was lost
        // (no ring fd to MSG_RING, or the poster ring could not be made).
        let _ = self.take_mail(svc);
        let now = self.io.now;
        let lingered: Vec<ConnId> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
            .filter(|(_, c)| matches!(c.state, State::Lingering(t) if t <= now))
            .map(|(i, c)| ConnId::new(i as u32, c.gen))
            .collect();
        for id in lingered {
            self.abort(id);
        }
        let (ti, th) = (self.opts.send_timeout_ingest, self.opts.send_timeout_http);
        let stalled: Vec<ConnId> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
            .filter(|(_, c)| {
                let t = if c.port == Port::Ingest { ti } else { th };
                c.out_busy
                    && !t.is_zero()
                    && now.duration_since(c.last_out) > t
                    && matches!(c.state, State::Open | State::Closing)
            })
            .map(|(i, c)| ConnId::new(i as u32, c.gen))
            .collect();
        for id in stalled {
            self.stats.send_timeouts.fetch_add(1, Ordering::Relaxed);
            self.abort(id);
        }
        if !self.opts.idle_timeout.is_zero() {
            let now = self.io.now;
            let idle: Vec<ConnId> = self
                .conns
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
                .filter(|(_, c)| {
                    c.state == State::Open
                        && c.out.is_empty()
                        && !c.out_busy
                        && now.duration_since(c.last_active) > self.opts.idle_timeout
                })
                .map(|(i, c)| ConnId::new(i as u32, c.gen))
                .collect();
            for id in idle {
                self.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                self.abort(id);
            }
        }
        svc.tick(&mut self.io);
    }

    // ----- output

    fn send_buf(&mut self, id: ConnId, buf: NetBuf, off: usize) {
        let send = self.cfg.net.send;
        let zc_min = self.cfg.net.send_zc_min_bytes as usize;
        let Some(c) = self.conn_mut(id) else { return };
        if !matches!(c.state, State::Open | State::Closing) {
            // Being torn down: the buffer is dropped, nothing new goes in flight.
            return self.maybe_close(id);
        }
        let fd =
            c.fd.as_ref()
                .map(|f| f.as_raw_fd())
                .expect("connection with output has its fd");
        let len = netops::IoBuf::len(&buf) - off;
        let zc = send == SendMode::SendZc && len >= zc_min;
        let r = self.net.send(
            &mut *self.shared.borrow_mut(),
            fd,
            buf,
            off,
            zc,
            ctx(K_SEND, id),
        );
        let now = self.io.now;
        let c = self.conn_mut(id).expect("still there");
        match r {
            Ok(_) => {
                c.out_busy = true;
                c.last_out = Instant::now();
                c.send_len = len;
                c.ops += 1;
                c.last_active = now;
            }
            Err(rej) => {
                eprintln!(
                    "uring worker: cannot queue a send: {}; closing the connection",
                    rej.error
                );
                self.abort(id);
            }
        }
    }

    /// Starts the next output step of `id` if none is in flight.
    fn pump<S: Service>(&mut self, id: ConnId, svc: &mut S) {
        let net = self.cfg.net.clone();
        let Some(c) = conn_of(&mut self.conns, id) else {
            return;
        };
        if c.out_busy || matches!(c.state, State::Cancelling | State::Closed) {
            return;
        }
        match c.out.front_mut() {
            None => {
                if c.state == State::Closing {
                    self.start_close(id);
                }
            }
            Some(Out::Bytes(_)) => {
                let Some(Out::Bytes(mut b)) = c.out.pop_front() else {
                    unreachable!()
                };
                // Coalesce queued small messages (acks, headers) into one SEND.
                while let Some(Out::Bytes(next)) = c.out.front() {
                    if b.len() + next.len() > 64 * 1024 {
                        break;
                    }
                    b.extend_from_slice(next);
                    c.out.pop_front();
                }
                self.send_buf(id, NetBuf::Heap(b), 0);
            }
            Some(Out::File(f)) => {
                if f.remaining == 0 && f.in_pipe == 0 {
                    let Some(Out::File(f)) = c.out.pop_front() else {
                        unreachable!()
                    };
                    svc.sent_file(id, f.token, Ok(f.sent), &mut self.io);
                    return self.pump(id, svc);
                }
                let sock = c.fd.as_ref().map(|f| f.as_raw_fd()).expect("fd");
                if net.send == SendMode::Splice {
                    if c.pipe.is_none() {
                        match Pipe::new(net.pipe_bytes as usize) {
                            Ok(p) => c.pipe = Some(p),
                            Err(e) => {
                                eprintln!("uring worker: cannot create a pipe for splice: {e}");
                                return self.fail_file(id, e, svc);
                            }
                        }
                    }
                    let Some(Out::File(f)) = c.out.front_mut() else {
                        unreachable!()
                    };
                    let pipe = c.pipe.as_ref().expect("just made");
                    let r = if f.in_pipe > 0 {
                        // A short splice into the pipe broke the link: drain it first.
                        self.net
                            .splice(
                                &mut *self.shared.borrow_mut(),
                                pipe.read.as_raw_fd(),
                                -1,
                                sock,
                                -1,
                                f.in_pipe,
                                false,
                                ctx(K_SPLICE_DRAIN, id),
                            )
                            .map(|_| 1)
                    } else {
                        let len = (f.remaining.min(net.serve_chunk_bytes as u64) as usize)
                            .min(pipe.capacity) as u32;
                        let (file_fd, off) = (f.file.as_raw_fd(), f.off);
                        self.net
                            .splice_file_to_socket(
                                &mut *self.shared.borrow_mut(),
                                file_fd,
                                off,
                                pipe,
                                sock,
                                len,
                                ctx(K_SPLICE_IN, id),
                                ctx(K_SPLICE_OUT, id),
                            )
                            .map(|_| 2)
                    };
                    match r {
                        Ok(n) => {
                            c.ops += n;
                            c.out_busy = true;
                            c.last_out = Instant::now();
                        }
                        Err(rej) => {
                            let e = io::Error::other(rej.error.to_string());
                            self.fail_file(id, e, svc)
                        }
                    }
                } else {
                    // READ (page cache or O_DIRECT) into an arena slot, then SEND it.
                    let direct = net.serve_read == ServeRead::Direct;
                    if direct && f.direct.is_none() {
                        match netops::reopen_direct(f.file.as_raw_fd()) {
                            Ok(d) => f.direct = Some(d),
                            Err(e) => {
                                let e = io::Error::new(e.kind(), format!("serve-read=direct: cannot open the replay with O_DIRECT: {e}"));
                                return self.fail_file(id, e, svc);
                            }
                        }
                    }
                    let Some(mut slot) = self.arena.alloc() else {
                        // Arena exhausted: retry on the next completion or tick.
                        return;
                    };
                    let (fd, start, len) = if direct {
                        let start = f.off & !4095;
                        let skip = (f.off - start) as usize;
                        let want = (skip as u64 + f.remaining.min(net.serve_chunk_bytes as u64))
                            .next_multiple_of(4096) as usize;
                        (
                            f.direct.as_ref().expect("opened").as_raw_fd(),
                            start,
                            want.min(slot.capacity()),
                        )
                    } else {
                        (
                            f.file.as_raw_fd(),
                            f.off,
                            (f.remaining.min(net.serve_chunk_bytes as u64) as usize)
                                .min(slot.capacity()),
                        )
                    };
                    slot.set_len(len);
                    let op = self.cfg.file.read_op;
                    let op = if op.is_fixed() && !self.cfg.file.register_buffers {
                        ReadOp::Read
                    } else {
                        op
                    };
                    match self.files.read(
                        fileops::Fd(fd),
                        op,
                        slot,
                        len,
                        start,
                        0,
                        ctx(K_FILE_READ, id),
                    ) {
                        Ok(()) => {
                            let c = self.conn_mut(id).expect("still there");
                            c.out_busy = true;
                            c.last_out = Instant::now();
                            c.ops += 1;
                        }
                        Err(e) => {
                            let e = io::Error::other(format!("{e:?}"));
                            self.fail_file(id, e, svc)
                        }
                    }
                }
            }
        }
    }

    fn fail_file<S: Service>(&mut self, id: ConnId, e: io::Error, svc: &mut S) {
        if let Some(c) = self.conn_mut(id) {
            if let Some(Out::File(f)) = c.out.pop_front() {
                svc.sent_file(id, f.token, Err(e), &mut self.io);
            }
        }
        // A half-sent body cannot be repaired on this connection.
        self.abort(id);
    }

    fn on_splice<S: Service>(
        &mut self,
        id: ConnId,
        kind: u64,
        res: Result<usize, Errno>,
        svc: &mut S,
    ) {
        if let Ok(n) = res {
            if kind != K_SPLICE_IN {
                self.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        let now = self.io.now;
        let Some(c) = self.conn_mut(id) else { return };
        let Some(Out::File(f)) = c.out.front_mut() else {
            return self.maybe_close(id);
        };
        match (kind, res) {
            (K_SPLICE_IN, Ok(0)) => {
                let e = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "replay file shorter than the range being sent",
                );
                c.out_busy = true;
                c.last_out = Instant::now(); // the linked out-splice is still to come back (cancelled)
                self.fail_file(id, e, svc);
            }
            (K_SPLICE_IN, Ok(n)) => {
                f.in_pipe = n as u32;
                c.out_busy = true;
                c.last_out = Instant::now(); // wait for the out half
            }
            (K_SPLICE_OUT | K_SPLICE_DRAIN, Ok(n)) => {
                f.in_pipe -= (n as u32).min(f.in_pipe);
                f.sent += n as u64;
                f.off += n as u64;
                f.remaining -= (n as u64).min(f.remaining);
                c.last_active = now;
                self.pump(id, svc);
            }
            (K_SPLICE_OUT, Err(Errno(libc::ECANCELED))) if c.state != State::Cancelling => {
                // Short splice into the pipe: `in_pipe` bytes wait; pump drains them.
                self.pump(id, svc);
            }
            (_, Err(Errno(libc::ECANCELED))) => self.maybe_close(id),
            (_, Ok(_)) => unreachable!("splice ctx kind {kind}"),
            (_, Err(e)) => {
                let e = e.io();
                self.fail_file(id, e, svc);
            }
        }
    }

    fn on_file<S: Service>(&mut self, c: fileops::Completion, svc: &mut S) {
        match ctx_kind(c.tag) {
            K_FILE_READ => {
                let id = ctx_conn(c.tag);
                self.op_done(id, true);
                let Some(mut slot) = c.buf else { return };
                let direct = self.cfg.net.serve_read == ServeRead::Direct;
                let chunk_max = self.cfg.net.serve_chunk_bytes as u64;
                let Some(conn) = self.conn_mut(id) else {
                    return;
                };
                if conn.state == State::Cancelling || conn.state == State::Closed {
                    return self.maybe_close(id);
                }
                let Some(Out::File(f)) = conn.out.front_mut() else {
                    return;
                };
                match c.result {
                    Ok(n) => {
                        let skip = if direct { (f.off & 4095) as usize } else { 0 };
                        let avail = (n as usize).saturating_sub(skip);
                        let take = (avail as u64).min(f.remaining).min(chunk_max) as usize;
                        if take == 0 {
                            let e = io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "replay file shorter than the range being sent",
                            );
                            return self.fail_file(id, e, svc);
                        }
                        slot.set_len(skip + take);
                        f.chunk = take as u64;
                        self.send_buf(id, NetBuf::Slot(slot), skip);
                    }
                    Err(e) => self.fail_file(id, e, svc),
                }
            }
            K_SERVICE_FILE => match c.heap {
                Some(v) => svc.file_done_vec(c.tag & ((1 << 56) - 1), c.result, v, &mut self.io),
                None => svc.file_done(c.tag & ((1 << 56) - 1), c.result, c.buf, &mut self.io),
            },
            _ => {}
        }
    }

    // ----- closing

    /// Stops receiving and sending now, cancels what is in flight, then closes.
    fn abort(&mut self, id: ConnId) {
        let Some(c) = self.conn_mut(id) else { return };
        if matches!(c.state, State::Cancelling | State::Closed) {
            return;
        }
        c.state = State::Cancelling;
        c.out.clear();
        let fd = c.fd.as_ref().map(|f| f.as_raw_fd());
        if c.ops > 0 {
            if let Some(fd) = fd {
                let _ = self
                    .net
                    .cancel_fd(&mut *self.shared.borrow_mut(), fd, ctx(K_IGNORE, id));
            }
        }
        self.maybe_close(id);
    }

    /// CLOSE once nothing of `id` is in flight any more.
    fn maybe_close(&mut self, id: ConnId) {
        let Some(c) = self.conn_mut(id) else { return };
        if c.state == State::Cancelling && c.ops == 0 {
            c.state = State::Closed;
            let fd = c.fd.take().expect("fd until CLOSE");
            c.pipe = None;
            if let Err(rej) = self
                .net
                .close(&mut *self.shared.borrow_mut(), fd, ctx(K_CLOSE, id))
            {
                // The fd was closed synchronously; the slot is freed at once.
                eprintln!(
                    "uring worker: CLOSE not queued ({}); closed synchronously",
                    rej.error
                );
                self.closed_now.push(id);
            }
        }
    }

    fn release_conn<S: Service>(&mut self, id: ConnId, svc: &mut S) {
        if let Some(slot) = self.conns.get_mut(id.idx()) {
            if slot.as_ref().is_some_and(|c| c.gen == id.gen()) {
                *slot = None;
                self.free.push(id.idx() as u32);
                self.live -= 1;
                self.stats.closed.fetch_add(1, Ordering::Relaxed);
                svc.closed(id, &mut self.io);
            }
        }
    }

    /// Output is flushed: SHUT_WR, then linger reading until EOF (or 200 ms), then close.
    fn start_close(&mut self, id: ConnId) {
        let now = self.io.now;
        let Some(c) = conn_of(&mut self.conns, id) else {
            return;
        };
        if c.state != State::Closing {
            return; // already lingering or being torn down
        }
        if c.eof_seen || c.fd.is_none() {
            return self.abort(id);
        }
        let fd = c.fd.as_ref().map(|f| f.as_raw_fd()).expect("checked");
        let r = self.net.shutdown(
            &mut *self.shared.borrow_mut(),
            fd,
            libc::SHUT_WR,
            ctx(K_SHUTDOWN, id),
        );
        match r {
            Ok(_) => {
                let c = conn_of(&mut self.conns, id).expect("still there");
                c.ops += 1;
                c.state = State::Lingering(now + LINGER);
                c.paused = false;
                self.arm_recv(id);
            }
            Err(_) => self.abort(id),
        }
    }

    /// Executes the service's requests.
    fn exec<S: Service>(&mut self, svc: &mut S) -> Result<(), UringError> {
        for id in std::mem::take(&mut self.closed_now) {
            self.release_conn(id, svc);
        }
        while !self.io.reqs.is_empty() {
            let reqs = std::mem::take(&mut self.io.reqs);
            for r in reqs {
                match r {
                    Req::Send(id, bytes) => {
                        if let Some(c) = self.conn_mut(id) {
                            if matches!(c.state, State::Open | State::Closing) {
                                c.out.push_back(Out::Bytes(bytes));
                                self.pump(id, svc);
                            }
                        }
                    }
                    Req::SendFile {
                        conn,
                        file,
                        off,
                        len,
                        token,
                    } => {
                        let ok = self
                            .conn_mut(conn)
                            .is_some_and(|c| matches!(c.state, State::Open | State::Closing));
                        if !ok {
                            svc.sent_file(
                                conn,
                                token,
                                Err(io::Error::new(
                                    io::ErrorKind::NotConnected,
                                    "connection closed",
                                )),
                                &mut self.io,
                            );
                            continue;
                        }
                        let c = self.conn_mut(conn).expect("checked");
                        c.out.push_back(Out::File(FileOut {
                            file,
                            direct: None,
                            off,
                            remaining: len,
                            sent: 0,
                            token,
                            in_pipe: 0,
                            chunk: 0,
                        }));
                        self.pump(conn, svc);
                    }
                    Req::Close(id) => {
                        if let Some(c) = self.conn_mut(id) {
                            if c.state == State::Open {
                                c.state = State::Closing;
                            }
                            if c.out.is_empty() && !c.out_busy {
                                self.start_close(id);
                            }
                        }
                    }
                    Req::Abort(id) => self.abort(id),
                    Req::PauseRecv(id) => {
                        let multishot = self.pbuf.is_some();
                        if let Some(c) = conn_of(&mut self.conns, id) {
                            if !c.paused {
                                c.paused = true;
                                if multishot && c.recv_in_flight {
                                    let ud = c.recv_ud;
                                    let _ = self.net.cancel(
                                        &mut *self.shared.borrow_mut(),
                                        ud,
                                        ctx(K_IGNORE, id),
                                    );
                                }
                            }
                        }
                    }
                    Req::ResumeRecv(id) => {
                        if let Some(c) = conn_of(&mut self.conns, id) {
                            if c.paused {
                                c.paused = false;
                                self.arm_recv(id);
                            }
                        }
                    }
                    Req::Write {
                        fd,
                        op,
                        buf,
                        len,
                        off,
                        rw_flags,
                        token,
                    } => {
                        let op = op.unwrap_or(self.cfg.file.write_op);
                        if let Err(e) = self.files.write(
                            fileops::Fd(fd),
                            op,
                            buf,
                            len,
                            off,
                            rw_flags,
                            ctx(K_SERVICE_FILE, ConnId(token)),
                        ) {
                            let msg = format!("{e:?}");
                            svc.file_done(
                                token,
                                Err(io::Error::other(msg)),
                                e.into_slot(),
                                &mut self.io,
                            );
                        }
                    }
                    Req::WriteVec {
                        fd,
                        buf,
                        start,
                        len,
                        off,
                        rw_flags,
                        token,
                    } => {
                        let op = self.cfg.file.write_op;
                        if let Err((e, buf)) = self.files.write_vec(
                            fileops::Fd(fd),
                            op,
                            buf,
                            start,
                            len,
                            off,
                            rw_flags,
                            ctx(K_SERVICE_FILE, ConnId(token)),
                        ) {
                            let msg = format!("{e:?}");
                            svc.file_done_vec(token, Err(io::Error::other(msg)), buf, &mut self.io);
                        }
                    }
                    Req::Read {
                        fd,
                        buf,
                        len,
                        off,
                        token,
                    } => {
                        let op = self.cfg.file.read_op;
                        if let Err(e) = self.files.read(
                            fileops::Fd(fd),
                            op,
                            buf,
                            len,
                            off,
                            0,
                            ctx(K_SERVICE_FILE, ConnId(token)),
                        ) {
                            let msg = format!("{e:?}");
                            svc.file_done(
                                token,
                                Err(io::Error::other(msg)),
                                e.into_slot(),
                                &mut self.io,
                            );
                        }
                    }
                    Req::Fsync {
                        fd,
                        datasync,
                        token,
                    } => {
                        if let Err(e) = self.files.fsync(
                            fileops::Fd(fd),
                            datasync,
                            ctx(K_SERVICE_FILE, ConnId(token)),
                        ) {
                            let msg = format!("{e:?}");
                            svc.file_done(token, Err(io::Error::other(msg)), None, &mut self.io);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

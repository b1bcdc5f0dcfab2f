//! The blocking backend: a thread per connection with std::net and std::fs, the way a team
//! without io_uring would write it. Same protocol, same storage format, same HTTP; the
//! baseline every report compares against.
//!
//! DS connections: read with a timeout (to notice the ack cadence, idle timeout and
//! shutdown), execute each storage operation with pwrite / fdatasync / rename. HTTP
//! connections: parse, route, send the head, then the body with sendfile in turns shared by
//! the connection threads ([`SendTurns`]) or a chunked live tail waiting on the match's
//! condition variable.

use super::registry::{ConnGuard, Registry};
use super::replay_files::ReplayFiles;
use super::session::{IngestSession, Io};
use super::{ServerContext, ServerError};
use crate::http::{self, Body, LiveTail};
use crate::protocol::{self, ErrorCode, Msg};
use crate::storage;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const STACK: usize = 256 << 10;
/// Longest a connection thread blocks in read before it looks at the shutdown flag again.
/// Shutdown normally wakes every reader at once (`Conns::wake_all`); this bounds a race
/// with a connection accepted during shutdown.
const SHUTDOWN_POLL: Duration = Duration::from_secs(1);

/// Open connections, so shutdown can wake every blocked reader (shutdown(SHUT_RD) makes its
/// read return 0) instead of each thread polling a flag.
#[derive(Default)]
struct Conns {
    next: std::sync::atomic::AtomicU64,
    map: std::sync::Mutex<std::collections::HashMap<u64, TcpStream>>,
}

impl Conns {
    fn add(&self, s: &TcpStream) -> Option<u64> {
        let c = s.try_clone().ok()?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, c);
        Some(id)
    }
    fn remove(&self, id: Option<u64>) {
        if let Some(id) = id {
            self.map
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
    }
    fn wake_all(&self) {
        for s in self.map.lock().unwrap_or_else(|p| p.into_inner()).values() {
            let _ = s.shutdown(Shutdown::Read);
        }
    }
}

/// Runs until `ctx.shutdown` is set, then stops accepting, lets every DS connection flush,
/// ack and close (SHUTTING_DOWN), and returns.
pub fn run(ctx: ServerContext) -> Result<(), ServerError> {
    let ServerContext {
        cfg,
        registry,
        session,
        ingest,
        http,
        shutdown,
        journals,
    } = ctx;
    // storage-layout=journal: one group-commit WAL writer for every connection thread
    let wal = match journals.into_iter().next() {
        Some(j) => Some(
            super::wal::Wal::start(j, registry.clone())
                .map_err(|e| ServerError(format!("cannot start the WAL writer: {e}")))?,
        ),
        None => None,
    };
    // ... and one replay-fd-cache shared by the connection threads
    let files = super::fds::uses_fd_cache(&cfg).then(|| {
        Arc::new(ReplayFiles::new(
            cfg.server.replay_fd_cache as usize,
            registry.clone(),
            session.store.clone(),
        ))
    });
    let active = Arc::new(AtomicUsize::new(0));
    let conns = Arc::new(Conns::default());
    let ingest_addr = ingest
        .local_addr()
        .map_err(|e| ServerError(e.to_string()))?;
    let http_addr = http.local_addr().map_err(|e| ServerError(e.to_string()))?;
    let stop_accept = Arc::new(AtomicBool::new(false));

    let ds_acceptor = {
        let (reg, sess, stop, active) = (
            registry.clone(),
            session.clone(),
            stop_accept.clone(),
            active.clone(),
        );
        let shutdown = shutdown.clone();
        let conns = conns.clone();
        let wal = wal.clone();
        let files = files.clone();
        spawn("ds-accept", move || {
            accept_loop(ingest, &stop, |s| {
                let (reg, sess, active, shutdown) =
                    (reg.clone(), sess.clone(), active.clone(), shutdown.clone());
                let conns = conns.clone();
                let wal = wal.clone();
                let files = files.clone();
                // Admitted here, in accept order, so the connection over max-connections
                // is the one that came last (a check in the new thread would race the
                // threads started just before it).
                let admitted = reg.try_ds_connection();
                active.fetch_add(1, Ordering::AcqRel);
                let peer = s.peer_addr().ok();
                let (reg2, active2) = (reg.clone(), active.clone());
                let r = spawn("ds-conn", move || {
                    let id = conns.add(&s);
                    ds_connection(s, admitted, reg, sess, &shutdown, wal.as_deref(), files.as_deref());
                    conns.remove(id);
                    active.fetch_sub(1, Ordering::AcqRel);
                });
                if let Err(e) = r {
                    // the connection was closed with the closure: say so and count it
                    active2.fetch_sub(1, Ordering::AcqRel);
                    super::registry::Metrics::add(&reg2.metrics.ds_connections_dropped, 1);
                    tracing::error!(
                        "dropped the DS connection from {peer:?} without an answer: cannot start its thread: {e}"
                    );
                }
            })
        })
        .map_err(|e| ServerError(format!("cannot start the DS acceptor thread: {e}")))?
    };
    let http_acceptor = {
        let (reg, stop, active) = (registry.clone(), stop_accept.clone(), active.clone());
        let shutdown = shutdown.clone();
        let max = cfg.server.http_max_request_bytes as usize;
        let timeout = Duration::from_millis(cfg.server.http_timeout_ms);
        let conns = conns.clone();
        let turns = Arc::new(SendTurns::new(send_slots()));
        spawn("http-accept", move || {
            accept_loop(http, &stop, |s| {
                let (reg, active, shutdown) = (reg.clone(), active.clone(), shutdown.clone());
                let conns = conns.clone();
                let turns = turns.clone();
                let admitted = reg.try_http_connection();
                active.fetch_add(1, Ordering::AcqRel);
                let peer = s.peer_addr().ok();
                let (reg2, active2) = (reg.clone(), active.clone());
                let r = spawn("http-conn", move || {
                    let id = conns.add(&s);
                    http_connection(s, admitted, reg, max, timeout, &shutdown, &turns);
                    conns.remove(id);
                    active.fetch_sub(1, Ordering::AcqRel);
                });
                if let Err(e) = r {
                    active2.fetch_sub(1, Ordering::AcqRel);
                    super::registry::Metrics::add(&reg2.metrics.http_connections_dropped, 1);
                    tracing::error!(
                        "dropped the HTTP connection from {peer:?} without an answer: cannot start its thread: {e}"
                    );
                }
            })
        })
        .map_err(|e| ServerError(format!("cannot start the HTTP acceptor thread: {e}")))?
    };

    while !shutdown.load(Ordering::Acquire) {
        thread::sleep(Duration::from_millis(50));
    }
    tracing::info!(
        "shutting down: no new connections, flushing and acknowledging what was received"
    );
    registry.begin_shutdown();
    stop_accept.store(true, Ordering::Release);
    conns.wake_all();
    // wake the blocked accept calls
    let _ = TcpStream::connect_timeout(&ingest_addr, Duration::from_secs(1));
    let _ = TcpStream::connect_timeout(&http_addr, Duration::from_secs(1));
    let _ = ds_acceptor.join();
    let _ = http_acceptor.join();
    let deadline = Instant::now() + Duration::from_secs(20);
    while active.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let left = active.load(Ordering::Acquire);
    if left > 0 {
        tracing::warn!("{left} connections still open after 20 s; exiting anyway (live matches stay resumable)");
    }
    if let Some(w) = wal {
        w.stop();
    }
    Ok(())
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name(name.into())
        .stack_size(STACK)
        .spawn(f)
}

fn accept_loop(l: TcpListener, stop: &AtomicBool, mut on_conn: impl FnMut(TcpStream)) {
    loop {
        match l.accept() {
            Ok((s, _)) => {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                on_conn(s);
            }
            Err(e) => {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                // EMFILE and friends: back off instead of spinning
                tracing::warn!("accept failed: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Executes one storage operation for a session with std calls. With `wal`
/// (storage-layout=journal) a replay-file write is journaled after it completes and
/// reported done once the journal made it durable. With `files` (the replay-fd-cache of
/// that layout) the replay file is looked up there for each operation instead of being
/// held in `file` for the whole connection.
pub fn exec_io(
    io: Io,
    sess: &mut IngestSession,
    file: &mut Option<Arc<OwnedFd>>,
    reg: &Registry,
    opts: &storage::StoreOptions,
    wal: Option<&super::wal::Wal>,
    files: Option<&ReplayFiles>,
) {
    let id = sess.match_id().to_string();
    let fd = |file: &Option<Arc<OwnedFd>>| match (files, file) {
        (Some(c), _) => c.get(&id),
        (None, Some(f)) => Ok(f.clone()),
        (None, None) => Err(io::Error::other("match file is not open")),
    };
    match io {
        Io::Open {
            create,
            rescan,
            options,
            ..
        } => match storage::io::open_match(&reg.paths, &id, create, rescan, &options, u32::MAX) {
            Ok((f, st)) => {
                match files {
                    Some(c) => {
                        c.insert(&id, f);
                    }
                    None => *file = Some(Arc::new(f)),
                }
                sess.open_done(Ok(st));
            }
            Err(e) => sess.open_done(Err(e)),
        },
        Io::Write(req) => {
            let f = fd(file);
            let r = match &f {
                Ok(f) if wal.is_some() => {
                    storage::io::write_replay_req(f, &req, opts.rw_flags(), opts.vectored)
                }
                Ok(f) => storage::io::write_req(f, &req, opts.rw_flags(), opts.vectored),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            let r = match (r, wal, f) {
                // a bulk append: durable in its own file, written once
                (Ok(()), Some(_), Ok(f)) if sess.config().bypasses_journal(&req) => {
                    super::registry::Metrics::add(&reg.metrics.syncs, 1);
                    storage::io::sync(&f)
                }
                (Ok(()), Some(w), f) => {
                    // the group commit needs no replay file: let the cache close it meanwhile
                    drop(f);
                    w.append_wait(&id, &req)
                }
                (r, _, _) => r,
            };
            if let (Err(_), Some(c)) = (&r, files) {
                c.remove(&id); // the session drops the file's state; the next writer re-scans
            }
            sess.write_done(req, r);
        }
        Io::Sync => {
            let r = fd(file).and_then(|f| storage::io::sync(&f));
            sess.sync_done(r);
        }
        Io::FinishSeal { len, .. } => {
            let f = match files {
                Some(c) => c.take(&id),
                None => fd(file),
            };
            let r = f.and_then(|f| storage::io::seal_match(&reg.paths, &id, &f, len));
            sess.seal_done(r);
        }
    }
}

fn ds_connection(
    mut s: TcpStream,
    admitted: Result<ConnGuard, (ErrorCode, String)>,
    reg: Arc<Registry>,
    cfg: Arc<super::session::SessionConfig>,
    shutdown: &AtomicBool,
    wal: Option<&super::wal::Wal>,
    files: Option<&ReplayFiles>,
) {
    let _guard = match admitted {
        Ok(g) => g,
        Err((code, text)) => {
            reg.metrics.error(code);
            let mut out = Vec::new();
            protocol::encode(
                &mut out,
                &Msg::Error {
                    code: code as u16,
                    text: &text,
                },
            );
            let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = s.write_all(&out);
            let _ = s.shutdown(Shutdown::Write);
            return;
        }
    };
    let _ = s.set_nodelay(true);
    let _ = s.set_write_timeout(Some(cfg.idle_timeout));
    let peer = s.peer_addr().ok(); // now: a reset connection has no address any more
    let store = cfg.store.clone();
    let idle_timeout = cfg.idle_timeout;
    let mut sess = IngestSession::new(cfg, reg.clone(), Instant::now());
    let mut file: Option<Arc<OwnedFd>> = None;
    let mut buf = vec![0u8; 256 << 10];
    let mut timeout_set = Duration::ZERO;
    let mut shutdown_seen = false;
    loop {
        let now = Instant::now();
        while let Some(io) = sess.next_io(now) {
            exec_io(io, &mut sess, &mut file, &reg, &store, wal, files);
        }
        if sess.has_output() {
            let out = sess.take_output();
            if let Err(e) = s.write_all(&out) {
                dropped(&reg, peer, Kind::Ds, &write_error(e, idle_timeout));
                sess.peer_closed();
                continue;
            }
        }
        if sess.is_finished() {
            break;
        }
        if !shutdown_seen && shutdown.load(Ordering::Acquire) {
            shutdown_seen = true;
            sess.begin_shutdown();
            continue;
        }
        if !sess.wants_input() {
            // flushing towards the end: nothing to read, the next loop executes the I/O
            sess.on_timer(Instant::now());
            continue;
        }
        let now = Instant::now();
        let mut t = SHUTDOWN_POLL;
        if let Some(d) = sess.deadline() {
            t = t.min(d.saturating_duration_since(now));
        }
        let t = t.max(Duration::from_millis(1));
        // a shorter timeout must be set; a longer one only saves wakeups (setsockopt each
        // time would cost a syscall per read)
        if t < timeout_set || t > timeout_set * 2 {
            let _ = s.set_read_timeout(Some(t));
            timeout_set = t;
        }
        match s.read(&mut buf) {
            Ok(0) if shutdown.load(Ordering::Acquire) => {} // woken by shutdown: next loop
            Ok(0) => sess.peer_closed(),
            Ok(n) => sess.feed(&buf[..n], Instant::now()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                sess.on_timer(Instant::now())
            }
            Err(e) => {
                dropped(&reg, peer, Kind::Ds, &format!("read failed: {e}"));
                sess.peer_closed()
            }
        }
    }
    if let Some(c) = files {
        // the cache holds files of live sessions only: a match sealed or deleted later
        // must not stay open (its disk space held) after its writer left
        c.remove(sess.match_id());
    }
    let _ = s.flush();
    let _ = s.shutdown(Shutdown::Write);
    // drain briefly so the peer sees our last bytes before a reset
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 4096];
    let until = Instant::now() + Duration::from_millis(200);
    while Instant::now() < until {
        match s.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

fn http_connection(
    mut s: TcpStream,
    admitted: Option<ConnGuard>,
    reg: Arc<Registry>,
    max_head: usize,
    timeout: Duration,
    shutdown: &AtomicBool,
    turns: &SendTurns,
) {
    let Some(_guard) = admitted else {
        let r = http::error_response(&http::HttpError {
            status: 503,
            text: "too many HTTP connections (http-max-connections); retry later".into(),
        });
        let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = s.write_all(&r.head);
        if let Body::Bytes(b) = &r.body {
            let _ = s.write_all(b);
        }
        return;
    };
    let _ = s.set_nodelay(true);
    let _ = s.set_write_timeout(Some(timeout));
    let peer = s.peer_addr().ok(); // now: a reset connection has no address any more
    let mut buf: Vec<u8> = Vec::with_capacity(max_head.min(16384));
    let mut chunk = vec![0u8; 16384];
    let mut request_started: Option<Instant> = None;
    let mut read_timeout_set = Duration::ZERO;
    let mut idle_since = Instant::now();
    loop {
        match http::parse_request(&buf, max_head) {
            Ok(Some((req, n))) => {
                buf.drain(..n);
                request_started = if buf.is_empty() {
                    None
                } else {
                    Some(Instant::now())
                };
                let mut resp = http::route(&req, &reg);
                // The object-store tier works on its own runtime; this connection's
                // thread may block until it is done, then the request is routed again.
                for _ in 0..4 {
                    let Body::Wait(t) = &resp.body else { break };
                    t.wait(http::TIER_WAIT_MAX);
                    resp = http::route_after_wait(&req, &reg);
                }
                if matches!(resp.body, Body::Wait(_)) {
                    resp = http::error_response(&http::HttpError {
                        status: 504,
                        text: "the object store did not answer in time; retry later".into(),
                    });
                }
                match send_response(&mut s, resp, &reg, peer, turns) {
                    Ok(true) => {
                        idle_since = Instant::now();
                        if shutdown.load(Ordering::Acquire) {
                            break;
                        }
                        continue;
                    }
                    Ok(false) => break,
                    Err(e) => {
                        dropped(&reg, peer, Kind::Http, &write_error(e, timeout));
                        break;
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                reg.metrics.http_errors.fetch_add(1, Ordering::Relaxed);
                let _ = send_response(&mut s, http::error_response(&e), &reg, peer, turns);
                break;
            }
        }
        if shutdown.load(Ordering::Acquire) && buf.is_empty() {
            break;
        }
        let now = Instant::now();
        let since = request_started.unwrap_or(idle_since);
        let left = (since + timeout).saturating_duration_since(now);
        if left.is_zero() {
            if request_started.is_some() {
                reg.metrics.http_errors.fetch_add(1, Ordering::Relaxed);
                let _ = send_response(
                    &mut s,
                    http::error_response(&http::HttpError {
                        status: 408,
                        text: format!(
                            "request not received within {} ms (http-timeout-ms)",
                            timeout.as_millis()
                        ),
                    }),
                    &reg,
                    peer,
                    turns,
                );
            }
            break;
        }
        let t = left.min(SHUTDOWN_POLL).max(Duration::from_millis(1));
        if t < read_timeout_set || t > read_timeout_set * 2 {
            let _ = s.set_read_timeout(Some(t));
            read_timeout_set = t;
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                if request_started.is_none() {
                    request_started = Some(Instant::now());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                dropped(&reg, peer, Kind::Http, &format!("read failed: {e}"));
                break;
            }
        }
    }
    let _ = s.shutdown(Shutdown::Both);
}

#[derive(Clone, Copy)]
enum Kind {
    Ds,
    Http,
}

/// A connection ended before its exchange was complete (issue 12 bug 13: never without a
/// word): logged with the peer and `why`, counted in `recorder_{ds,http}_connections_dropped_total`.
fn dropped(reg: &Registry, peer: Option<std::net::SocketAddr>, kind: Kind, why: &str) {
    let peer = peer.map_or_else(|| "an unknown address".to_string(), |a| a.to_string());
    let (what, counter) = match kind {
        Kind::Ds => ("DS", &reg.metrics.ds_connections_dropped),
        Kind::Http => ("HTTP", &reg.metrics.http_connections_dropped),
    };
    super::registry::Metrics::add(counter, 1);
    tracing::warn!("dropped the {what} connection from {peer}: {why}");
}

/// A failed write, with the timeout named when it was one (SO_SNDTIMEO gives EAGAIN).
fn write_error(e: io::Error, timeout: Duration) -> String {
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        format!(
            "the peer accepted no bytes for {} ms (send timeout)",
            timeout.as_millis()
        )
    } else {
        format!("write failed: {e}")
    }
}

/// Sends one response; Ok(true) when the connection may serve another request.
fn send_response(
    s: &mut TcpStream,
    mut resp: http::Response,
    reg: &Registry,
    peer: Option<std::net::SocketAddr>,
    turns: &SendTurns,
) -> io::Result<bool> {
    let x = std::mem::take(&mut resp.exchange);
    let mut sent = 0u64;
    let r = send_body(s, resp, reg, &mut sent, turns);
    x.finish(reg, peer, sent, r.is_ok());
    r
}

fn send_body(
    s: &mut TcpStream,
    resp: http::Response,
    reg: &Registry,
    sent: &mut u64,
    turns: &SendTurns,
) -> io::Result<bool> {
    s.write_all(&resp.head)?;
    match resp.body {
        Body::None | Body::Wait(_) => {}
        Body::Bytes(b) => {
            s.write_all(&b)?;
            *sent = b.len() as u64;
        }
        Body::File {
            file: f,
            offset,
            len,
        } => {
            let n = send_file_in_turns(&f, offset, len, s, turns)?;
            *sent = n;
            if n != len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "replay shorter than announced",
                ));
            }
        }
        Body::Live(mut tail) => {
            let r = live_tail(s, &mut tail, reg);
            *sent = tail.sent;
            reg.metrics
                .http_bytes
                .fetch_add(tail.sent, Ordering::Relaxed);
            return r.map(|ok| ok && !resp.close);
        }
    }
    reg.metrics.http_bytes.fetch_add(*sent, Ordering::Relaxed);
    Ok(!resp.close)
}

/// The most of a replay body one connection thread sends in one turn. 256 KiB and 2 MiB
/// (nginx's `sendfile_max_chunk` default) measured alike (commit of issue 12 bug 14's
/// throughput fix).
const SEND_TURN_BYTES: u64 = 256 << 10;

/// How many connection threads may be in sendfile at once: one per CPU (1 and 2 measured
/// alike on 2 CPUs). Before the turns every connection thread was sending at once, and
/// `std::io::copy` did it with read + send through a user buffer (perf), not sendfile:
/// the 32 downloads' threads used ~1.4 CPUs of two, the client ~0.5, for half nginx's
/// requests/s; with the turns the recorder uses ~0.25 and the client ~1.7.
fn send_slots() -> usize {
    thread::available_parallelism().map_or(2, |n| n.get())
}

/// Turns at sending replay bodies, shared by the HTTP connection threads (issue 12 bug 14).
/// At most `slots` threads hold a turn; a thread that asks while none is free waits, and
/// waiting threads get turns in the order they asked (FIFO: the turn is handed to the first
/// of them directly, so a thread that just had one queues behind the others). The kernel's
/// scheduler alone was not fair here: with one blocking sendfile per replay (and with
/// smaller blocking chunks) some downloads under `wrk -t2 -c32` waited over 2 s while the
/// others' threads kept the CPUs.
pub(crate) struct SendTurns {
    state: std::sync::Mutex<TurnState>,
}

struct TurnState {
    free: usize,
    waiting: std::collections::VecDeque<Arc<TurnWaiter>>,
}

struct TurnWaiter {
    thread: thread::Thread,
    granted: AtomicBool,
}

impl SendTurns {
    pub(crate) fn new(slots: usize) -> SendTurns {
        SendTurns {
            state: std::sync::Mutex::new(TurnState {
                free: slots.max(1),
                waiting: Default::default(),
            }),
        }
    }

    /// Waits for a turn (FIFO); the turn ends when the guard is dropped.
    pub(crate) fn take(&self) -> Turn<'_> {
        let w = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.free > 0 {
                st.free -= 1;
                return Turn(self);
            }
            let w = Arc::new(TurnWaiter {
                thread: thread::current(),
                granted: AtomicBool::new(false),
            });
            st.waiting.push_back(w.clone());
            w
        };
        while !w.granted.load(Ordering::Acquire) {
            thread::park();
        }
        Turn(self)
    }

    fn give_back(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match st.waiting.pop_front() {
            Some(w) => {
                w.granted.store(true, Ordering::Release);
                w.thread.unpark();
            }
            None => st.free += 1,
        }
    }
}

/// A turn at sending; handed to the longest-waiting thread (or freed) when dropped.
pub(crate) struct Turn<'a>(&'a SendTurns);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.give_back();
    }
}

/// Sends `len` bytes of `f` from `offset` with sendfile on the non-blocking socket, in
/// turns of at most [`SEND_TURN_BYTES`]: a turn ends after that many bytes or when the
/// socket's buffer is full; the thread then waits for its socket to take bytes again
/// (up to the connection's write timeout, http-timeout-ms) without holding a turn, and
/// queues for the next one. So a client that does not read never holds up the others, and
/// no download waits for more than a round of the others' turns (bug 14). Returns the bytes
/// sent (fewer than `len` when the file is shorter: the caller reports it).
fn send_file_in_turns(
    f: &std::fs::File,
    offset: u64,
    len: u64,
    s: &mut TcpStream,
    turns: &SendTurns,
) -> io::Result<u64> {
    let timeout = s.write_timeout()?.unwrap_or(Duration::from_secs(10));
    s.set_nonblocking(true)?;
    let r = send_turns(f, offset, len, s, turns, timeout);
    let back = s.set_nonblocking(false);
    let n = r?;
    back?;
    Ok(n)
}

fn send_turns(
    f: &std::fs::File,
    offset: u64,
    len: u64,
    s: &TcpStream,
    turns: &SendTurns,
    timeout: Duration,
) -> io::Result<u64> {
    let (mut off, end) = (offset, offset + len);
    while off < end {
        let mut full = false;
        {
            let _turn = turns.take();
            let stop = end.min(off + SEND_TURN_BYTES);
            while off < stop {
                let want = (stop - off) as usize;
                match crate::sys::fs::sendfile(s, f, &mut off, want) {
                    Ok(0) => return Ok(off - offset), // the file is shorter
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        full = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if full && !crate::sys::fs::wait_writable(s, timeout)? {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "send timeout"));
        }
    }
    Ok(off - offset)
}

/// Streams a live match as chunks until it is sealed (Ok(true)) or the recorder stops (Ok(false)).
fn live_tail(s: &mut TcpStream, tail: &mut LiveTail, reg: &Registry) -> io::Result<bool> {
    let f = tail.open()?;
    let mut buf = vec![0u8; tail.max_chunk as usize];
    loop {
        let v = tail.shared.version();
        let now = Instant::now();
        if let Some((a, b)) = tail.next_range(now) {
            let n = (b - a) as usize;
            f.read_exact_at(&mut buf[..n], a)?;
            s.write_all(&http::chunk_head(n as u64))?;
            s.write_all(&buf[..n])?;
            s.write_all(b"\r\n")?;
            tail.sent(n as u64);
            continue;
        }
        if tail.is_done(now) {
            s.write_all(http::CHUNK_END)?;
            return Ok(true);
        }
        if reg.shutting_down() {
            return Ok(false);
        }
        let wait = match tail.retry_at(now) {
            Some(t) => t.saturating_duration_since(now),
            None => SHUTDOWN_POLL * 10,
        };
        tail.shared.wait_change(v, wait);
    }
}

#[cfg(test)]
mod tests {
    use super::SendTurns;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    fn queued(t: &SendTurns) -> usize {
        t.state.lock().unwrap().waiting.len()
    }

    fn wait_queued(t: &SendTurns, n: usize) {
        let t0 = Instant::now();
        while queued(t) < n {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no thread queued for a turn"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Bug 14's guarantee: turns go to the waiting threads in the order they asked, and a
    /// thread that just had one (and asks again at once) queues behind the others, so no
    /// download waits for more than a round of the others' turns.
    #[test]
    fn turns_go_first_come_first_served_and_a_returning_sender_queues_behind() {
        let turns = Arc::new(SendTurns::new(1));
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = turns.take();
        let mut hs = Vec::new();
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            let (t, o) = (turns.clone(), order.clone());
            hs.push(std::thread::spawn(move || {
                let _turn = t.take();
                o.lock().unwrap().push(name);
            }));
            wait_queued(&turns, i + 1);
        }
        drop(first);
        let again = turns.take();
        order.lock().unwrap().push("first again");
        drop(again);
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            ["a", "b", "c", "first again"],
            "turns were not taken in order"
        );
    }

    #[test]
    fn free_turns_are_taken_without_waiting() {
        let turns = SendTurns::new(2);
        let a = turns.take();
        let b = turns.take();
        assert_eq!(queued(&turns), 0);
        drop(a);
        let c = turns.take();
        drop((b, c));
        assert_eq!(turns.state.lock().unwrap().free, 2);
    }
}

//! The blocking backend: a thread per connection with std::net and std::fs, the way a team
//! without io_uring would write it. Same protocol, same storage format, same HTTP; the
//! baseline every report compares against.
//!
//! DS connections: read with a timeout (to notice the ack cadence, idle timeout and
//! shutdown), execute each storage operation with pwrite / fdatasync / rename. HTTP
//! connections: parse, route, send the head, then the body with `std::io::copy` (sendfile
//! on Linux) or a chunked live tail waiting on the match's condition variable.

use super::registry::{ConnGuard, Registry};
use super::replay_files::ReplayFiles;
use super::session::{IngestSession, Io};
use super::{ServerContext, ServerError};
use crate::http::{self, Body, LiveTail};
use crate::protocol::{self, ErrorCode, Msg};
use crate::storage;
use std::io::{self, Read, Seek, SeekFrom, Write};
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
        spawn("http-accept", move || {
            accept_loop(http, &stop, |s| {
                let (reg, active, shutdown) = (reg.clone(), active.clone(), shutdown.clone());
                let conns = conns.clone();
                let admitted = reg.try_http_connection();
                active.fetch_add(1, Ordering::AcqRel);
                let peer = s.peer_addr().ok();
                let (reg2, active2) = (reg.clone(), active.clone());
                let r = spawn("http-conn", move || {
                    let id = conns.add(&s);
                    http_connection(s, admitted, reg, max, timeout, &shutdown);
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
                match send_response(&mut s, resp, &reg, peer) {
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
                let _ = send_response(&mut s, http::error_response(&e), &reg, peer);
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
) -> io::Result<bool> {
    let x = std::mem::take(&mut resp.exchange);
    let mut sent = 0u64;
    let r = send_body(s, resp, reg, &mut sent);
    x.finish(reg, peer, sent, r.is_ok());
    r
}

fn send_body(
    s: &mut TcpStream,
    resp: http::Response,
    reg: &Registry,
    sent: &mut u64,
) -> io::Result<bool> {
    s.write_all(&resp.head)?;
    match resp.body {
        Body::None | Body::Wait(_) => {}
        Body::Bytes(b) => {
            s.write_all(&b)?;
            *sent = b.len() as u64;
        }
        Body::File {
            file: mut f,
            offset,
            len,
        } => {
            f.seek(SeekFrom::Start(offset))?;
            let n = send_file_fairly(&mut f, len, s)?;
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

/// How much of a replay one connection thread sends before it lets the others run.
const FILE_CHUNK: u64 = 256 << 10;

/// Sends `len` bytes of `f` (from its position) with sendfile, [`FILE_CHUNK`] at a time,
/// yielding the CPU between chunks. One sendfile of a whole 16 MiB replay kept a thread on
/// the CPU while the other downloads' threads waited: under `wrk -t2 -c32` 12-21 requests
/// per 8 s took over 2 s (issue 12 bug 14); with the yield none did, at about 24% fewer
/// requests per second (figures in commit 60a9bc2).
fn send_file_fairly(f: &mut std::fs::File, len: u64, s: &mut TcpStream) -> io::Result<u64> {
    let mut n = 0u64;
    while n < len {
        let want = FILE_CHUNK.min(len - n);
        // std::io::copy uses sendfile/splice for File -> TcpStream on Linux
        let got = io::copy(&mut Read::by_ref(f).take(want), s)?;
        n += got;
        if got < want {
            break; // the file is shorter: the caller reports it
        }
        thread::yield_now();
    }
    Ok(n)
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

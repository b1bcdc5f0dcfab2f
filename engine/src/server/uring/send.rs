//! Output: byte buffers (SEND / SEND_ZC, one vectored SEND over several with
//! `net.send-batch = vectored`) and file ranges (READ into an arena slot then SEND, or
//! SPLICE file -> pipe -> socket), one output operation in flight per connection.
//!
//! With `send-batch = vectored`, byte buffers queued just before a file range (an HTTP
//! head, a live-tail chunk head) wait for the range's first chunk and go out with it in
//! one SEND (IORING_SEND_VECTORIZED), and bytes queued right after it (the chunk's CRLF)
//! go with its last chunk. With `send-zc-fixed`, a chunk in a registered arena slot goes
//! out with SEND_ZC naming that buffer (IORING_RECVSEND_FIXED_BUF).

use super::*;

/// Most buffers one vectored SEND takes.
const VECTOR_MAX: usize = 64;

pub(super) enum Out {
    Bytes(Vec<u8>),
    File(FileOut),
}

pub(super) struct FileOut {
    pub(super) file: Arc<File>,
    /// How READs name the file: its fd, or its slot in the registered-file table.
    pub(super) fref: Option<FileRef>,
    /// O_DIRECT descriptor of the same file (serve-read=direct), and its table slot.
    pub(super) direct: Option<(OwnedFd, FileRef)>,
    pub(super) off: u64,
    pub(super) remaining: u64,
    pub(super) sent: u64,
    pub(super) token: u64,
    /// Bytes in the pipe waiting to go to the socket (splice).
    pub(super) in_pipe: u32,
    /// Bytes of the chunk read into a slot and being sent (read + send path).
    pub(super) chunk: u64,
    /// Byte buffers that go out in the same vectored SEND as the first chunk.
    pub(super) prefix: Vec<Vec<u8>>,
}

impl FileOut {
    pub(super) fn new(file: Arc<File>, off: u64, len: u64, token: u64) -> FileOut {
        FileOut {
            file,
            fref: None,
            direct: None,
            off,
            remaining: len,
            sent: 0,
            token,
            in_pipe: 0,
            chunk: 0,
            prefix: Vec::new(),
        }
    }
}

impl<'a> Worker<'a> {
    fn sock_of(&mut self, id: ConnId) -> Option<crate::sys::target::Target> {
        self.conn_mut(id)
            .and_then(|c| c.sock.as_ref().map(|s| s.target()))
    }

    pub(super) fn send_buf(&mut self, id: ConnId, buf: NetBuf, off: usize) {
        let send = self.cfg.net.send;
        let zc_min = self.cfg.net.send_zc_min_bytes as usize;
        let Some(c) = self.conn_mut(id) else { return };
        if !matches!(c.state, State::Open | State::Closing) {
            // Being torn down: the buffer is dropped, nothing new goes in flight.
            return self.maybe_close(id);
        }
        let fd = self
            .sock_of(id)
            .expect("connection with output has its socket");
        let len = netops::IoBuf::len(&buf) - off;
        let zc = send == SendMode::SendZc && len >= zc_min;
        let fixed_buf = match &buf {
            NetBuf::Slot(s) if zc && self.cfg.net.send_zc_fixed => Some(s.index() as u16),
            _ => None,
        };
        let r = self.net.send_opts(
            &mut *self.shared.borrow_mut(),
            fd,
            buf,
            off,
            netops::SendOpts { zc, fixed_buf },
            ctx(K_SEND, id),
        );
        self.sent_queued(id, r.map(|_| len).map_err(|rej| rej.error));
    }

    /// One SEND over several buffers (IORING_SEND_VECTORIZED).
    fn send_vectored(&mut self, id: ConnId, bufs: Vec<NetBuf>) {
        let Some(c) = self.conn_mut(id) else { return };
        if !matches!(c.state, State::Open | State::Closing) {
            return self.maybe_close(id);
        }
        let fd = self
            .sock_of(id)
            .expect("connection with output has its socket");
        let len: usize = bufs.iter().map(netops::IoBuf::len).sum();
        let zc =
            self.cfg.net.send == SendMode::SendZc && len >= self.cfg.net.send_zc_min_bytes as usize;
        self.stats.sends_vectored.fetch_add(1, Ordering::Relaxed);
        let r = self.net.send_vectored(
            &mut *self.shared.borrow_mut(),
            fd,
            bufs,
            0,
            zc,
            ctx(K_SEND, id),
        );
        self.sent_queued(id, r.map(|_| len).map_err(|rej| rej.error));
    }

    fn sent_queued(&mut self, id: ConnId, r: Result<usize, netops::SubmitError>) {
        let now = self.io.now;
        let c = self.conn_mut(id).expect("still there");
        match r {
            Ok(len) => {
                c.out_busy = true;
                c.last_out = Instant::now();
                c.send_len = len;
                c.ops += 1;
                c.last_active = now;
            }
            Err(e) => {
                self.drop_conn(id, format!("cannot queue a send: {e}"));
            }
        }
    }

    /// A send of `id` completed (`buf` is the buffer of a plain send, for a short send).
    pub(super) fn on_sent<S: Service>(
        &mut self,
        id: ConnId,
        res: Result<usize, Errno>,
        buf: Option<NetBuf>,
        off: usize,
        svc: &mut S,
    ) {
        match res {
            Ok(n) => {
                self.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                let Some(c) = self.conn_mut(id) else { return };
                if n < c.send_len {
                    let len = c.send_len;
                    match buf {
                        // Short send: the rest goes first.
                        Some(b) => self.send_buf(id, b, off + n),
                        // SEND_ZC keeps the buffer until its notification, and a vectored
                        // send's buffers are back in pieces: a short send (an error midway)
                        // cannot be resumed.
                        None => self.drop_conn(
                            id,
                            format!("a zero-copy or vectored send was short ({n} of {len} bytes) and cannot be resumed"),
                        ),
                    }
                    return;
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
            Err(e) => self.on_reset(id, e),
        }
    }

    /// Starts the next output step of `id` if none is in flight.
    pub(super) fn pump<S: Service>(&mut self, id: ConnId, svc: &mut S) {
        let net = self.cfg.net.clone();
        let vectored = net.send_batch == SendBatch::Vectored && net.send != SendMode::Splice;
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
            Some(Out::Bytes(_)) if vectored => {
                let mut bufs = Vec::new();
                while bufs.len() < VECTOR_MAX {
                    match c.out.front() {
                        Some(Out::Bytes(_)) => {
                            let Some(Out::Bytes(b)) = c.out.pop_front() else {
                                unreachable!()
                            };
                            bufs.push(b);
                        }
                        _ => break,
                    }
                }
                if let Some(Out::File(f)) = c.out.front_mut() {
                    if f.remaining > 0 && f.prefix.is_empty() {
                        // The head goes out with the first chunk.
                        f.prefix = bufs;
                        return self.pump(id, svc);
                    }
                }
                if bufs.len() == 1 {
                    let b = bufs.pop().expect("one");
                    self.send_buf(id, NetBuf::Heap(b), 0);
                } else {
                    self.send_vectored(id, bufs.into_iter().map(NetBuf::Heap).collect());
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
                    self.release_file_out(&f);
                    if !f.prefix.is_empty() {
                        // An empty range: its head goes alone.
                        for b in f.prefix.into_iter().rev() {
                            if let Some(c) = conn_of(&mut self.conns, id) {
                                c.out.push_front(Out::Bytes(b));
                            }
                        }
                    }
                    svc.sent_file(id, f.token, Ok(f.sent), &mut self.io);
                    return self.pump(id, svc);
                }
                let sock = c.sock.as_ref().map(|s| s.target()).expect("socket");
                if net.send == SendMode::Splice {
                    self.pump_splice(id, sock, svc);
                } else {
                    self.pump_read(id, svc);
                }
            }
        }
    }

    /// The file's READ target, registering it in the file table the first time.
    fn file_target(&mut self, id: ConnId) -> io::Result<FileRef> {
        let direct = self.cfg.net.serve_read == ServeRead::Direct;
        let Some(Out::File(f)) = conn_of(&mut self.conns, id).and_then(|c| c.out.front_mut())
        else {
            return Err(io::Error::other("no file range queued"));
        };
        if direct {
            if f.direct.is_none() {
                let d = netops::reopen_direct(f.file.as_raw_fd()).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("serve-read=direct: cannot open the replay with O_DIRECT: {e}"),
                    )
                })?;
                let raw = d.as_raw_fd();
                let r = self.io.files.borrow_mut().register(raw)?;
                let Some(Out::File(f)) =
                    conn_of(&mut self.conns, id).and_then(|c| c.out.front_mut())
                else {
                    unreachable!("checked above")
                };
                f.direct = Some((d, r));
            }
            let Some(Out::File(f)) = conn_of(&mut self.conns, id).and_then(|c| c.out.front_mut())
            else {
                unreachable!("checked above")
            };
            return Ok(f.direct.as_ref().expect("opened").1);
        }
        if let Some(r) = f.fref {
            return Ok(r);
        }
        let raw = f.file.as_raw_fd();
        let r = self.io.files.borrow_mut().register(raw)?;
        if let Some(Out::File(f)) = conn_of(&mut self.conns, id).and_then(|c| c.out.front_mut()) {
            f.fref = Some(r);
        }
        Ok(r)
    }

    /// Gives the file table slots of a finished range back.
    pub(super) fn release_file_out(&mut self, f: &FileOut) {
        let mut t = self.io.files.borrow_mut();
        if let Some(r) = f.fref {
            t.unregister(r);
        }
        if let Some((_, r)) = &f.direct {
            t.unregister(*r);
        }
    }

    /// Pumps, in arrival order, the connections whose file output found the arena empty,
    /// while slots are free; one that finds it empty again goes back in the queue (so each
    /// is tried at most once per call). Closed or reused connections are skipped.
    pub(super) fn retry_slot_waiters<S: Service>(&mut self, svc: &mut S) {
        let mut n = self.slot_waiters.len();
        while n > 0 && self.arena.free_slots() > 0 {
            n -= 1;
            let Some(id) = self.slot_waiters.pop_front() else {
                break;
            };
            if self.conn_mut(id).is_some() {
                self.pump(id, svc);
            }
        }
    }

    /// READ (page cache or O_DIRECT) of the next chunk into an arena slot; SEND follows.
    fn pump_read<S: Service>(&mut self, id: ConnId, svc: &mut S) {
        let net = &self.cfg.net;
        let direct = net.serve_read == ServeRead::Direct;
        let chunk_max = net.serve_chunk_bytes as u64;
        let target = match self.file_target(id) {
            Ok(t) => t,
            Err(e) => return self.fail_file(id, e, svc),
        };
        let Some(mut slot) = self.arena.alloc() else {
            // Arena exhausted: pumped again once completions give slots back
            // (`retry_slot_waiters`, after every dispatch and on the tick).
            if !self.slot_waiters.contains(&id) {
                self.slot_waiters.push_back(id);
            }
            return;
        };
        let Some(Out::File(f)) = conn_of(&mut self.conns, id).and_then(|c| c.out.front_mut())
        else {
            return;
        };
        let (start, len) = if direct {
            let start = f.off & !4095;
            let skip = (f.off - start) as usize;
            let want = (skip as u64 + f.remaining.min(chunk_max)).next_multiple_of(4096) as usize;
            (start, want.min(slot.capacity()))
        } else {
            (
                f.off,
                (f.remaining.min(chunk_max) as usize).min(slot.capacity()),
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
            target.target(),
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
                let e = io::Error::other(e.to_string());
                self.fail_file(id, e, svc)
            }
        }
    }

    /// A chunk of a file range was read into `slot`: send it (with its prefix and, for the
    /// last chunk, the bytes queued after the range, when vectored).
    pub(super) fn on_file_read<S: Service>(
        &mut self,
        id: ConnId,
        mut slot: Slot,
        result: io::Result<u32>,
        svc: &mut S,
    ) {
        let direct = self.cfg.net.serve_read == ServeRead::Direct;
        let chunk_max = self.cfg.net.serve_chunk_bytes as u64;
        let vectored = self.cfg.net.send_batch == SendBatch::Vectored;
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.state == State::Cancelling || conn.state == State::Closed {
            return self.maybe_close(id);
        }
        let Some(Out::File(f)) = conn.out.front_mut() else {
            return;
        };
        match result {
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
                if !vectored {
                    return self.send_buf(id, NetBuf::Slot(slot), skip);
                }
                let last = take as u64 == f.remaining;
                let mut bufs: Vec<NetBuf> = std::mem::take(&mut f.prefix)
                    .into_iter()
                    .map(NetBuf::Heap)
                    .collect();
                bufs.push(NetBuf::SlotAt(slot, skip));
                if last {
                    // Bytes queued right after the range (a chunk's CRLF) go along.
                    while bufs.len() < VECTOR_MAX {
                        match conn.out.get(1) {
                            Some(Out::Bytes(_)) => {
                                if let Some(Out::Bytes(b)) = conn.out.remove(1) {
                                    bufs.push(NetBuf::Heap(b));
                                }
                            }
                            _ => break,
                        }
                    }
                }
                if bufs.len() == 1 {
                    let b = bufs.pop().expect("one");
                    self.send_buf(id, b, 0);
                } else {
                    self.send_vectored(id, bufs);
                }
            }
            Err(e) => self.fail_file(id, e, svc),
        }
    }

    fn pump_splice<S: Service>(
        &mut self,
        id: ConnId,
        sock: crate::sys::target::Target,
        svc: &mut S,
    ) {
        let net = &self.cfg.net;
        let (chunk_max, pipe_bytes) = (net.serve_chunk_bytes as u64, net.pipe_bytes as usize);
        let target = match self.file_target(id) {
            Ok(t) => t,
            Err(e) => return self.fail_file(id, e, svc),
        };
        let Some(c) = conn_of(&mut self.conns, id) else {
            return;
        };
        if c.pipe.is_none() {
            match Pipe::new(pipe_bytes) {
                Ok(p) => {
                    self.stats
                        .pipe_capacity_max
                        .fetch_max(p.capacity as u64, Ordering::Relaxed);
                    c.pipe = Some(p)
                }
                Err(e) => {
                    tracing::warn!("uring worker: cannot create a pipe for splice: {e}");
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
                    netops::Fd(pipe.read.as_raw_fd()),
                    -1,
                    sock,
                    -1,
                    f.in_pipe,
                    false,
                    ctx(K_SPLICE_DRAIN, id),
                )
                .map(|_| 1)
        } else {
            let len = (f.remaining.min(chunk_max) as usize).min(pipe.capacity) as u32;
            self.net
                .splice_file_to_socket(
                    &mut *self.shared.borrow_mut(),
                    target.target(),
                    f.off,
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
    }

    pub(super) fn fail_file<S: Service>(&mut self, id: ConnId, e: io::Error, svc: &mut S) {
        let why = format!("a replay file could not be sent: {e}");
        if let Some(c) = self.conn_mut(id) {
            if let Some(Out::File(f)) = c.out.pop_front() {
                self.release_file_out(&f);
                svc.sent_file(id, f.token, Err(e), &mut self.io);
            }
        }
        // A half-sent body cannot be repaired on this connection.
        self.drop_conn(id, why);
    }

    pub(super) fn on_splice<S: Service>(
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
}

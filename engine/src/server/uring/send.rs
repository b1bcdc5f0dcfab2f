//! Output: byte buffers (SEND / SEND_ZC) and file ranges (READ into an arena slot then
//! SEND, or SPLICE file -> pipe -> socket), one output operation in flight per connection.

use super::*;

pub(super) enum Out {
    Bytes(Vec<u8>),
    File(FileOut),
}

pub(super) struct FileOut {
    pub(super) file: Arc<File>,
    /// O_DIRECT descriptor of the same file (serve-read=direct).
    pub(super) direct: Option<OwnedFd>,
    pub(super) off: u64,
    pub(super) remaining: u64,
    pub(super) sent: u64,
    pub(super) token: u64,
    /// Bytes in the pipe waiting to go to the socket (splice).
    pub(super) in_pipe: u32,
    /// Bytes of the chunk read into a slot and being sent (read + send path).
    pub(super) chunk: u64,
}

impl<'a> Worker<'a> {
    pub(super) fn send_buf(&mut self, id: ConnId, buf: NetBuf, off: usize) {
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
                tracing::error!(
                    "uring worker: cannot queue a send: {}; closing the connection",
                    rej.error
                );
                self.abort(id);
            }
        }
    }

    /// Starts the next output step of `id` if none is in flight.
    pub(super) fn pump<S: Service>(&mut self, id: ConnId, svc: &mut S) {
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
                                tracing::error!(
                                    "uring worker: cannot create a pipe for splice: {e}"
                                );
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

    pub(super) fn fail_file<S: Service>(&mut self, id: ConnId, e: io::Error, svc: &mut S) {
        if let Some(c) = self.conn_mut(id) {
            if let Some(Out::File(f)) = c.out.pop_front() {
                svc.sent_file(id, f.token, Err(e), &mut self.io);
            }
        }
        // A half-sent body cannot be repaired on this connection.
        self.abort(id);
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

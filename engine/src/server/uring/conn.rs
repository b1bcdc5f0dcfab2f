//! Connections: accept and adoption, receive, end of input, reset, and the close
//! sequence (SHUT_WR, linger, cancel, CLOSE). One [`Conn`] per socket.

use super::*;

/// ctx kinds in the top byte of NetOps/FileOps ctx values.
pub(super) const K_RECV: u64 = 1;
pub(super) const K_SEND: u64 = 2;
pub(super) const K_SPLICE_IN: u64 = 3;
pub(super) const K_SPLICE_OUT: u64 = 4;
pub(super) const K_SPLICE_DRAIN: u64 = 5;
pub(super) const K_CLOSE: u64 = 6;
pub(super) const K_ACCEPT: u64 = 7;
pub(super) const K_TICK: u64 = 8;
pub(super) const K_IGNORE: u64 = 9;
pub(super) const K_FILE_READ: u64 = 10;
pub(super) const K_SERVICE_FILE: u64 = 11;
pub(super) const K_MSG: u64 = 12;
pub(super) const K_SHUTDOWN: u64 = 13;
/// A direct socket sent to another worker (MSG_RING with IORING_MSG_SEND_FD): the ctx
/// carries the source slot and the port.
pub(super) const K_HANDOFF: u64 = 14;
/// The accept sequence number's bits in a direct hand-off's MSG_RING data (below the
/// tag byte, above the port bit).
const SEQ_MASK: u64 = (1 << 55) - 1;
/// CLOSE of an engine-managed slot of the registered-file table.
pub(super) const K_SLOT_CLOSE: u64 = 15;

/// How long a closing connection reads (and drops) input waiting for the peer's EOF.
pub(super) const LINGER: Duration = Duration::from_millis(200);

pub(super) fn ctx(kind: u64, conn: ConnId) -> u64 {
    (kind << 56) | conn.0
}
pub(super) fn ctx_kind(c: u64) -> u64 {
    c >> 56
}
pub(super) fn ctx_conn(c: u64) -> ConnId {
    ConnId(c & ((1 << 56) - 1))
}

#[derive(PartialEq, Eq, Debug, Clone, Copy)]
pub(super) enum State {
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

pub(super) struct Conn {
    pub(super) gen: u32,
    /// The socket (an fd, or a direct descriptor); `None` once CLOSE is queued.
    pub(super) sock: Option<Socket>,
    pub(super) state: State,
    pub(super) recv_in_flight: bool,
    /// user_data of the receive in flight (to cancel a multishot one on pause).
    pub(super) recv_ud: u64,
    /// The service asked not to receive for now.
    pub(super) paused: bool,
    /// The peer closed its sending side.
    pub(super) eof_seen: bool,
    pub(super) recv_buf: Option<Vec<u8>>,
    pub(super) out: VecDeque<Out>,
    /// A send, splice or file read of this connection is in flight.
    pub(super) out_busy: bool,
    /// Bytes asked of the send in flight.
    pub(super) send_len: usize,
    pub(super) ops: u32,
    pub(super) last_active: Instant,
    /// When the output op in flight was issued or last made progress.
    pub(super) last_out: Instant,
    pub(super) port: Port,
    pub(super) pipe: Option<Pipe>,
    /// The peer's address, read at accept (None for a direct socket: no fd to ask).
    pub(super) peer: Option<std::net::SocketAddr>,
}

impl<'a> Worker<'a> {
    pub(super) fn adopt<S: Service>(
        &mut self,
        sock: Socket,
        port: Port,
        svc: &mut S,
    ) -> Result<(), UringError> {
        let net = &self.cfg.net;
        if self.live >= self.opts.max_connections_per_worker {
            // The driver's hard limit (tables are sized from it): refuse at once. The
            // service's own limits (with a protocol error message) are lower.
            self.drop_socket(sock);
            return Ok(());
        }
        // Direct sockets have no fd for setsockopt: they inherit the options set on the
        // listeners (see `start::listener_options`).
        let raw_fd = sock.raw_fd();
        if let Some(raw) = raw_fd {
            let mut applied = 0;
            if net.tcp_nodelay && sockopt::set_nodelay(raw, true).is_ok() {
                applied += 1;
            }
            if net.sndbuf_bytes > 0 && sockopt::set_sndbuf(raw, net.sndbuf_bytes as i32).is_ok() {
                applied += 1;
            }
            if net.rcvbuf_bytes > 0 && sockopt::set_rcvbuf(raw, net.rcvbuf_bytes as i32).is_ok() {
                applied += 1;
            }
            self.stats
                .sockopts_applied
                .fetch_add(applied, Ordering::Relaxed);
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
        let peer = raw_fd.and_then(|fd| sockopt::peer_addr(fd).ok());
        self.conns[idx] = Some(Conn {
            gen,
            sock: Some(sock),
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
            peer,
        });
        self.live += 1;
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let id = ConnId::new(idx as u32, gen);
        self.io.opening_peer = peer;
        let opened = svc.open(id, port, &mut self.io);
        self.io.opening_peer = None;
        if opened {
            self.arm_recv(id);
        } else {
            self.io.reqs.push(Req::Close(id));
        }
        Ok(())
    }

    /// Closes a socket no connection owns (refused at the limit): an fd closes at once, a
    /// direct descriptor through the ring.
    pub(super) fn drop_socket(&mut self, sock: Socket) {
        if let Socket::Direct(_) = sock {
            let _ = self.net.close(
                &mut *self.shared.borrow_mut(),
                sock,
                ctx(K_IGNORE, ConnId(0)),
            );
        }
    }

    pub(super) fn arm_recv(&mut self, id: ConnId) {
        let multishot = self.pbuf.is_some();
        let bundle = self.cfg.net.recv_bundle;
        let Some(c) = self.conn_mut(id) else { return };
        let lingering = matches!(c.state, State::Lingering(_));
        if !(c.state == State::Open || lingering) || c.recv_in_flight || (c.paused && !lingering) {
            return;
        }
        let fd = c
            .sock
            .as_ref()
            .map(|s| s.target())
            .expect("open connection has its socket");
        let buf = c.recv_buf.take();
        let r = {
            let mut s = self.shared.borrow_mut();
            if multishot {
                self.net
                    .recv_multishot(&mut *s, fd, BGID, bundle, ctx(K_RECV, id))
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
                self.drop_conn(id, format!("cannot arm a receive: {}", rej.error));
            }
        }
    }

    pub(super) fn on_net<S: Service>(
        &mut self,
        c: Completion<NetBuf>,
        svc: &mut S,
    ) -> Result<(), UringError> {
        match c {
            Completion::Accept { ctx: cx, res, more } => {
                let i = (cx & 0xffff) as usize;
                if !more {
                    self.listeners[i].2 = false;
                }
                match res {
                    Ok(sock) => {
                        let port = self.listeners[i].0;
                        self.route_conn(sock, port, svc)?;
                    }
                    Err(Errno(libc::ECANCELED)) => {}
                    Err(Errno(
                        e @ (libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM),
                    )) => {
                        tracing::warn!("uring worker {}: accept: {} (raise the fd limit or lower max connections)", self.id, Errno(e));
                    }
                    Err(e) => {
                        if !matches!(e.0, libc::ECONNABORTED | libc::EINTR | libc::EAGAIN) {
                            tracing::warn!("uring worker {}: accept: {e}", self.id);
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
            Completion::Cancel { .. } => {}
            Completion::Unslotted { res } => {
                // A close, cancel or wake-up sent with IOSQE_CQE_SKIP_SUCCESS failed.
                if !matches!(res.0, libc::ENOENT | libc::EALREADY | libc::ECANCELED) {
                    tracing::warn!(
                        "uring worker {}: an operation without a completion slot failed: {res}",
                        self.id
                    );
                }
            }
            Completion::MsgRing { ctx: cx, res } => {
                if ctx_kind(cx) == K_HANDOFF {
                    self.handoff_done(cx, res, svc)?;
                }
            }
            Completion::Shutdown { ctx: cx, res: _ } => {
                let id = ctx_conn(cx);
                self.op_done(id, false);
                self.maybe_close(id);
            }
            Completion::Close { ctx: cx, res: _ } => self.release_conn(ctx_conn(cx), svc),
            Completion::RecvMulti {
                ctx: cx,
                res,
                more,
                bundle,
                buf_more,
                ..
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
                        let pieces = pbuf.consume(bid, len as u32, buf_more, bundle);
                        if pieces > 1 {
                            self.stats.recv_multi_buffer.fetch_add(1, Ordering::Relaxed);
                        }
                        self.stats
                            .recv_max_bytes
                            .fetch_max(len as u64, Ordering::Relaxed);
                        if open {
                            self.stats.bytes_in.fetch_add(len as u64, Ordering::Relaxed);
                            for i in 0..pieces {
                                svc.data(id, pbuf.piece(i), &mut self.io);
                            }
                        }
                        pbuf.release();
                        self.stats
                            .bufring_order_errors
                            .store(pbuf.order_errors(), Ordering::Relaxed);
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
                    Err(e) => self.on_reset(id, e),
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
                        self.stats
                            .recv_max_bytes
                            .fetch_max(n as u64, Ordering::Relaxed);
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
                    Err(e) => self.on_reset(id, e),
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
                self.on_sent(id, res, buf, off, svc);
            }
            Completion::SendV {
                ctx: cx,
                res,
                bufs,
                zc,
                ..
            } => {
                let id = ctx_conn(cx);
                if zc {
                    self.stats.zc_sends.fetch_add(1, Ordering::Relaxed);
                }
                self.op_done(id, true);
                drop(bufs); // arena slots go back
                self.on_sent(id, res, None, 0, svc);
            }
            Completion::SendZcNotif { copied, .. } => {
                if copied {
                    self.stats.zc_copied.fetch_add(1, Ordering::Relaxed);
                }
            }
            Completion::Splice {
                ctx: cx,
                res,
                in_skipped,
                out_cancelled,
            } => {
                if let Some((cin, n)) = in_skipped {
                    // The first half's CQE was skipped (success): account it first.
                    let id = ctx_conn(cin);
                    self.op_done(id, false);
                    self.on_splice(id, K_SPLICE_IN, Ok(n), svc);
                }
                let id = ctx_conn(cx);
                let kind = ctx_kind(cx);
                self.op_done(id, kind != K_SPLICE_IN);
                self.on_splice(id, kind, res, svc);
                if let Some(cout) = out_cancelled {
                    // The second half came back cancelled before this first half's CQE.
                    let id = ctx_conn(cout);
                    self.op_done(id, true);
                    self.on_splice(id, K_SPLICE_OUT, Err(Errno(libc::ECANCELED)), svc);
                }
            }
        }
        Ok(())
    }

    /// One op of connection `id` came back. `out` when it was the output op. A
    /// connection being torn down is closed once its last op is back, whatever the
    /// completion's handler does next (a send that completed before its cancel, say).
    pub(super) fn op_done(&mut self, id: ConnId, out: bool) {
        if let Some(c) = self.conn_mut(id) {
            c.ops -= 1;
            if out {
                c.out_busy = false;
                c.last_out = Instant::now();
            }
            if c.state == State::Cancelling && c.ops == 0 {
                self.maybe_close(id);
            }
        }
    }

    pub(super) fn on_eof<S: Service>(&mut self, id: ConnId, svc: &mut S) {
        let Some(c) = self.conn_mut(id) else { return };
        c.eof_seen = true;
        match c.state {
            State::Open => svc.eof(id, &mut self.io),
            State::Lingering(_) => self.abort(id),
            _ => self.maybe_close(id),
        }
    }

    /// A receive or send failed (ECONNRESET, EPIPE, ...): the connection is gone.
    pub(super) fn on_reset(&mut self, id: ConnId, e: Errno) {
        self.drop_conn(id, format!("{e}"));
    }

    /// Drops connection `id` before its exchange is complete: logged with `why` (and the
    /// worker), counted through `Service::dropped`, then torn down like [`Self::abort`]. A
    /// connection already being torn down is not counted again.
    pub(super) fn drop_conn(&mut self, id: ConnId, why: String) {
        let w = self.id;
        if let Some(c) = self.conn_mut(id) {
            if !matches!(
                c.state,
                State::Cancelling | State::Closed | State::Lingering(_)
            ) {
                let port = c.port;
                let what = if port == Port::Ingest { "DS" } else { "HTTP" };
                let peer = c
                    .peer
                    .map_or_else(|| "an unknown address".to_string(), |a| a.to_string());
                tracing::warn!(
                    "uring worker {w}: dropped the {what} connection {id:?} from {peer}: {why}"
                );
                self.dropped.push((id, port, why));
            }
        }
        self.abort(id);
    }

    pub(super) fn route_conn<S: Service>(
        &mut self,
        sock: Socket,
        port: Port,
        svc: &mut S,
    ) -> Result<(), UringError> {
        let n = self.mailboxes.len();
        if self.cfg.net.listeners == Listeners::Acceptor && n > 1 {
            // Numbered in accept order, so that connection limits refuse the newest.
            let seq = self.accept_seq;
            self.accept_seq += 1;
            let target = self.next_target % n;
            self.next_target = self.next_target.wrapping_add(1);
            if target != self.id {
                let tfd = *self.mailboxes[target]
                    .ring_fd
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let sock = match sock {
                    Socket::Direct(slot) => {
                        // Direct descriptors exist only in this ring's table: pass the file
                        // to the target ring's table (MSG_RING, IORING_MSG_SEND_FD), then
                        // empty our slot when that completes (`handoff_done`).
                        let Some(tfd) = tfd else {
                            // validate() refuses direct sockets + acceptor + rings without fds.
                            return self.adopt_numbered(Socket::Direct(slot), port, Some(seq), svc);
                        };
                        let port_bit = (port == Port::Http) as u64;
                        let cx = ctx(
                            K_HANDOFF,
                            ConnId(((target as u64) << 40) | ((slot as u64) << 1) | port_bit),
                        );
                        // In transit until the target has opened it, with its accept
                        // number, so limits see it as arriving before later ones.
                        self.mailboxes[target]
                            .in_transit
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((port, seq));
                        let r = self.net.msg_ring_send_fd(
                            &mut *self.shared.borrow_mut(),
                            tfd,
                            crate::sys::target::Fixed(slot),
                            ((TAG_HANDOFF as u64) << 56) | ((seq & SEQ_MASK) << 1) | port_bit,
                            cx,
                        );
                        return match r {
                            Ok(_) => {
                                self.handoff_seqs.insert(slot, seq);
                                Ok(())
                            }
                            Err(e) => {
                                self.mailboxes[target].arrived(port, seq);
                                tracing::warn!("uring worker {}: cannot hand a direct socket to worker {target} ({e}); serving it here", self.id);
                                self.adopt_numbered(Socket::Direct(slot), port, Some(seq), svc)
                            }
                        };
                    }
                    Socket::Fd(fd) => fd,
                };
                self.mailboxes[target]
                    .conns
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((sock, port, seq));
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
                        tracing::warn!("uring worker {}: MSG_RING to worker {target}: {e}; it will pick the connection up at its next tick", self.id);
                    }
                }
                return Ok(());
            }
            return self.adopt_numbered(sock, port, Some(seq), svc);
        }
        self.adopt(sock, port, svc)
    }

    /// [`Worker::adopt`] for a connection with an accept number: the service's limits
    /// count only connections accepted before it as ahead of it.
    pub(super) fn adopt_numbered<S: Service>(
        &mut self,
        sock: Socket,
        port: Port,
        seq: Option<u64>,
        svc: &mut S,
    ) -> Result<(), UringError> {
        self.io.opening_seq = seq;
        let r = self.adopt(sock, port, svc);
        self.io.opening_seq = None;
        r
    }

    /// The MSG_RING that passed a direct socket to another worker completed: on success
    /// our slot is emptied (the target's table holds its own reference); on failure the
    /// connection is served here.
    pub(super) fn handoff_done<S: Service>(
        &mut self,
        cx: u64,
        res: Result<(), Errno>,
        svc: &mut S,
    ) -> Result<(), UringError> {
        let v = ctx_conn(cx).0;
        let (target, slot, port) = (
            (v >> 40) as usize,
            ((v >> 1) & 0xffff_ffff) as u32,
            if v & 1 == 1 { Port::Http } else { Port::Ingest },
        );
        let seq = self.handoff_seqs.remove(&slot);
        match res {
            Ok(()) => {
                self.stats.handoffs_direct.fetch_add(1, Ordering::Relaxed);
                let _ = self.net.close(
                    &mut *self.shared.borrow_mut(),
                    Socket::Direct(slot),
                    ctx(K_IGNORE, ConnId(0)),
                );
                Ok(())
            }
            Err(e) => {
                if let (Some(m), Some(s)) = (self.mailboxes.get(target), seq) {
                    m.arrived(port, s);
                }
                tracing::warn!(
                    "uring worker {}: passing a direct socket failed ({e}); serving it here",
                    self.id
                );
                self.adopt_numbered(Socket::Direct(slot), port, seq, svc)
            }
        }
    }

    /// A direct socket arrived from the acceptor (TAG_HANDOFF CQE: `res` is our slot).
    pub(super) fn adopt_handoff<S: Service>(
        &mut self,
        ud: u64,
        res: i32,
        svc: &mut S,
    ) -> Result<(), UringError> {
        if res < 0 {
            // (The sender learns of the failure too and serves it, uncounting it.)
            tracing::warn!(
                "uring worker {}: a handed-over socket could not be installed: {}",
                self.id,
                Errno(-res)
            );
            return Ok(());
        }
        self.stats.handoffs_in.fetch_add(1, Ordering::Relaxed);
        let port = if ud & 1 == 1 {
            Port::Http
        } else {
            Port::Ingest
        };
        // Put in transit here by the acceptor when it sent it (see `route_conn`).
        let seq = (ud >> 1) & SEQ_MASK;
        let mb = self.mailboxes.clone();
        let r = self.adopt_numbered(Socket::Direct(res as u32), port, Some(seq), svc);
        mb[self.id].arrived(port, seq);
        r
    }

    /// Stops receiving and sending now, cancels what is in flight, then closes.
    pub(super) fn abort(&mut self, id: ConnId) {
        let Some(c) = self.conn_mut(id) else { return };
        if matches!(c.state, State::Cancelling | State::Closed) {
            // Already being torn down, but the op that brought us here (a send or
            // receive failing with ECONNRESET after the first abort) may have been the
            // last one in flight: close now. Returning without this left a reset
            // connection in Cancelling with nothing in flight forever (issue 12 bug 1:
            // its session held the match, MATCH_BUSY until restart, two fds leaked).
            return self.maybe_close(id);
        }
        c.state = State::Cancelling;
        let outs: Vec<Out> = c.out.drain(..).collect();
        for o in &outs {
            if let Out::File(f) = o {
                self.release_file_out(f);
            }
        }
        let Some(c) = self.conn_mut(id) else { return };
        let fd = c.sock.as_ref().map(|s| s.target());
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
    pub(super) fn maybe_close(&mut self, id: ConnId) {
        let Some(c) = self.conn_mut(id) else { return };
        if c.state == State::Cancelling && c.ops == 0 {
            c.state = State::Closed;
            let sock = c.sock.take().expect("socket until CLOSE");
            c.pipe = None;
            let direct = matches!(sock, Socket::Direct(_));
            match self
                .net
                .close(&mut *self.shared.borrow_mut(), sock, ctx(K_CLOSE, id))
            {
                // With skip-success no CLOSE completion comes: the kernel owns the socket
                // now, so the connection is released at once.
                Ok(_) if self.net.skip_success() => self.closed_now.push(id),
                Ok(_) => {}
                Err(rej) => {
                    // An fd was closed synchronously; a direct slot stays taken until the
                    // ring closes (logged: the table is sized with a margin).
                    tracing::warn!(
                        "uring worker: CLOSE not queued ({}); {}",
                        rej.error,
                        if direct {
                            "direct socket slot left in the table"
                        } else {
                            "closed synchronously"
                        }
                    );
                    self.closed_now.push(id);
                }
            }
        }
    }

    pub(super) fn release_conn<S: Service>(&mut self, id: ConnId, svc: &mut S) {
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
    pub(super) fn start_close(&mut self, id: ConnId) {
        let now = self.io.now;
        let Some(c) = conn_of(&mut self.conns, id) else {
            return;
        };
        if c.state != State::Closing {
            return; // already lingering or being torn down
        }
        if c.eof_seen || c.sock.is_none() {
            return self.abort(id);
        }
        let fd = c.sock.as_ref().map(|s| s.target()).expect("checked");
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
}

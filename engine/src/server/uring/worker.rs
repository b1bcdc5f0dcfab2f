//! One worker's event loop: ring and arena set-up, the wait / route / dispatch loop,
//! the periodic tick (linger, send and idle timeouts), shutdown and teardown, and the
//! execution of the service's requests.

use super::*;

pub(super) fn conn_of(conns: &mut [Option<Conn>], id: ConnId) -> Option<&mut Conn> {
    conns
        .get_mut(id.idx())
        .and_then(|c| c.as_mut())
        .filter(|c| c.gen == id.gen())
}

pub(super) struct Worker<'a> {
    pub(super) cfg: &'a Config,
    pub(super) opts: &'a DriverOptions,
    pub(super) id: usize,
    pub(super) shared: Rc<RefCell<Shared>>,
    pub(super) net: NetOps<NetBuf>,
    pub(super) files: FileOps<FileView>,
    pub(super) arena: Arena,
    pub(super) pbuf: Option<BufRing>,
    pub(super) listeners: Vec<(Port, TcpListener, bool)>,
    pub(super) conns: Vec<Option<Conn>>,
    pub(super) gens: Vec<u32>,
    pub(super) free: Vec<u32>,
    pub(super) live: usize,
    pub(super) mailboxes: Arc<Vec<Mailbox>>,
    pub(super) next_target: usize,
    /// The acceptor's next accept sequence number (`net.listeners=acceptor`).
    pub(super) accept_seq: u64,
    /// Accept sequence numbers of direct sockets passed to other workers, by our slot,
    /// until the MSG_RING completes.
    pub(super) handoff_seqs: std::collections::HashMap<u32, u64>,
    pub(super) stats: Arc<WorkerStats>,
    pub(super) io: Io,
    pub(super) pending_close_listeners: bool,
    /// Connections closed without a CLOSE completion (CLOSE could not be queued).
    pub(super) closed_now: Vec<ConnId>,
    /// Connections dropped since the last `exec`, for `Service::dropped`.
    pub(super) dropped: Vec<(ConnId, Port, String)>,
    /// Writes issued (for `file.force-async`'s every Nth).
    pub(super) writes_issued: u64,
    /// `ring.wait-timeout = ext-arg`: the tick is a deadline of the wait, not a TIMEOUT SQE.
    pub(super) tick_in_enter: bool,
    pub(super) next_tick: Instant,
    /// Connections whose file output found the arena empty (`pump_read`), in arrival
    /// order: pumped again when completions have given slots back.
    pub(super) slot_waiters: std::collections::VecDeque<ConnId>,
}

pub(super) const BGID: u16 = 7;

impl Drop for Worker<'_> {
    fn drop(&mut self) {
        // The listeners close when the fields drop, after this.
        self.unpublish_listeners();
    }
}

impl<'a> Worker<'a> {
    pub(super) fn setup(
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
        let unsupported = |what: String, err: io::Error| UringError::Unsupported { what, err };
        let feats = ring.features();
        let need_feature = |on: bool, bit: u32, what: &str| {
            if on && feats & bit == 0 {
                Err(unsupported(
                    what.to_string(),
                    io::Error::new(
                        io::ErrorKind::Unsupported,
                        "this kernel does not report the feature",
                    ),
                ))
            } else {
                Ok(())
            }
        };
        use crate::sys::ring::consts::*;
        need_feature(
            cfg.ring.cqe_skip_success,
            IORING_FEAT_CQE_SKIP,
            "ring.cqe-skip-success: IOSQE_CQE_SKIP_SUCCESS (IORING_FEAT_CQE_SKIP, Linux 5.17+)",
        )?;
        need_feature(
            net.recv_bundle,
            IORING_FEAT_RECVSEND_BUNDLE,
            "net.recv-bundle: IORING_RECVSEND_BUNDLE (IORING_FEAT_RECVSEND_BUNDLE, Linux 6.10+)",
        )?;
        *mailboxes[id]
            .ring_fd
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = ring.fd();
        let pbuf = if net.recv == RecvMode::Multishot {
            Some(
                BufRing::with_flags(
                    &mut ring,
                    BGID,
                    net.buf_ring_entries as u16,
                    net.recv_buf_bytes,
                    net.buf_ring_inc,
                )
                .map_err(|err| {
                    let what = if net.buf_ring_inc {
                        "IORING_REGISTER_PBUF_RING with IOU_PBUF_RING_INC for net.buf-ring-inc (Linux 6.12+)"
                    } else {
                        "IORING_REGISTER_PBUF_RING for recv=multishot (Linux 5.19+; or use --recv single)"
                    };
                    unsupported(what.into(), err)
                })?,
            )
        } else {
            None
        };
        // The registered-file table: listeners (direct sockets), files the service
        // installs, and the range the kernel allocates accepted sockets from.
        let layout = files::table_layout(cfg, opts, ls.len());
        if let Some(lay) = layout {
            let (total, l, f, k) = (lay.total, lay.listeners, lay.files, lay.alloc);
            ring.register_files_sparse(total).map_err(|err| {
                unsupported(
                    format!("IORING_REGISTER_FILES2 (sparse, {total} slots; Linux 5.19+)"),
                    err,
                )
            })?;
            if k > 0 {
                ring.register_file_alloc_range(l + f, k).map_err(|err| {
                    unsupported(
                        format!(
                            "IORING_REGISTER_FILE_ALLOC_RANGE {}..{} (Linux 6.0+)",
                            l + f,
                            l + f + k
                        ),
                        err,
                    )
                })?;
            }
            if l > 0 {
                let fds: Vec<RawFd> = ls.iter().map(|(_, l)| l.as_raw_fd()).collect();
                ring.register_files_update(0, &fds).map_err(|err| {
                    unsupported(
                        "installing the listeners in the registered-file table".into(),
                        err,
                    )
                })?;
            }
        }
        let napi = if net.napi_busy_poll_us > 0 {
            let tracking = match net.napi_tracking {
                crate::config::net::NapiTracking::Dynamic => IO_URING_NAPI_TRACKING_DYNAMIC,
                crate::config::net::NapiTracking::Static => IO_URING_NAPI_TRACKING_STATIC,
            };
            ring.register_napi(net.napi_busy_poll_us, net.napi_prefer_busy_poll, tracking)
                .map_err(|err| {
                    unsupported(
                        "IORING_REGISTER_NAPI for net.napi-busy-poll-us (Linux 6.9+; static tracking 6.13+)".into(),
                        err,
                    )
                })?;
            Some(crate::sys::register::NapiSettings {
                busy_poll_us: net.napi_busy_poll_us,
                prefer_busy_poll: net.napi_prefer_busy_poll,
                tracking,
            })
        } else {
            None
        };
        if cfg.ring.no_iowait {
            ring.set_no_iowait(true)
                .map_err(|err| unsupported("ring.no-iowait: IORING_ENTER_NO_IOWAIT".into(), err))?;
        }
        let mut wring = WorkerRing::new(ring);
        if cfg.ring.wait_timeout == crate::config::ring::WaitTimeout::ExtArg {
            let min = (cfg.ring.min_wait_usec > 0)
                .then(|| Duration::from_micros(cfg.ring.min_wait_usec as u64));
            wring.set_wait_in_enter(min).map_err(|err| {
                unsupported("ring.wait-timeout=ext-arg / min-wait-usec".into(), err)
            })?;
        }
        let shared = Rc::new(RefCell::new(Shared::new(wring, effective.flags)));
        let maxc = opts.max_connections_per_worker.max(1);
        // Every connection has at most: one recv, one send (plus a zc notif), two splices,
        // one cancel, one close. Listeners: one accept each. Plus tick and wake-ups.
        let mut net_ops = NetOps::new(maxc * 6 + 64, TAG_NET);
        net_ops.set_skip_success(cfg.ring.cqe_skip_success);
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
            slots + maxc.min(4096) + opts.max_files_per_worker + 64,
        );
        files.set_skip_link_heads(cfg.ring.cqe_skip_success);
        if let Some(lay) = layout {
            files.set_file_table(lay.total);
        }
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
        let listener_sockopts = if net.direct_sockets {
            ls.first()
                .map(|(_, l)| sockopt::readback(l.as_raw_fd()))
                .transpose()
                .map_err(|err| {
                    unsupported("reading back the listeners' socket options".into(), err)
                })?
        } else {
            None
        };
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
            file_table: layout,
            buf_ring_inc: pbuf.as_ref().is_some_and(|p| p.incremental()),
            napi,
            listener_sockopts,
        };
        tracing::debug!(
            target: crate::logging::STARTUP,
            "uring worker {id}: ring flags {} (asked {}), features {}, sq {} cq {}, attach-wq {}, io-wq max workers {}, recv {}{}, accept {}, send {}, listeners {}, arena {} x {} bytes{}{}{}",
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
            report
                .buf_ring
                .map(|(n, b)| format!(
                    " (buffer ring {n} x {b}{})",
                    if report.buf_ring_inc { ", incremental" } else { "" }
                ))
                .unwrap_or_default(),
            report.accept,
            report.send,
            report.listeners,
            report.arena_slots,
            report.arena_slot_bytes,
            if report.arena_registered { " registered" } else { "" },
            report
                .file_table
                .map(|t| format!(
                    ", file table {} slots ({} listeners, {} files, {} allocated{})",
                    t.total,
                    t.listeners,
                    t.files,
                    t.alloc,
                    t.capped_from
                        .map(|w| format!("; the limits ask for {w}, capped by RLIMIT_NOFILE"))
                        .unwrap_or_default()
                ))
                .unwrap_or_default(),
            report
                .napi
                .map(|n| format!(", napi busy poll {} us", n.busy_poll_us))
                .unwrap_or_default(),
        );
        let stats = Arc::new(WorkerStats::default());
        register_stats(&stats);
        {
            let mut r = handle.reports.lock().unwrap_or_else(|e| e.into_inner());
            r.push(report);
            r.sort_by_key(|r| r.worker);
            handle
                .stats
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(stats.clone());
            if r.len() == opts.workers {
                // The last worker up says what took effect, for results and sweeps.
                let eff = crate::uring::effective_config(cfg, &r);
                let pairs: serde_json::Map<String, serde_json::Value> = eff
                    .to_pairs()
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect();
                tracing::info!(
                    "uring effective configuration: {}",
                    serde_json::Value::Object(pairs)
                );
                let diff = crate::uring::differences(cfg, &eff);
                if !diff.is_empty() {
                    tracing::warn!("uring: not in effect as requested: {}", diff.join("; "));
                }
            }
        }
        let (first_file, file_slots) = layout.map_or((0, 0), |t| (t.listeners, t.files));
        let table = Rc::new(RefCell::new(FileTable::new(
            shared.clone(),
            cfg.file.register_files,
            first_file,
            file_slots,
            stats.clone(),
        )));
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
            peers: mailboxes.clone(),
            reuseport: net.listeners == Listeners::Reuseport,
            opening_seq: None,
            opening_peer: None,
            files: table,
            link_sync: cfg.file.link_sync,
            write_behind: cfg.file.write_behind,
            ring_file_ops: cfg.file.file_ops == crate::config::file::FileOpsMode::Ring,
            prealloc_mode: match cfg.file.prealloc_mode {
                crate::config::file::PreallocMode::KeepSize => libc::FALLOC_FL_KEEP_SIZE,
                crate::config::file::PreallocMode::WriteZeroes => {
                    crate::sys::fs::FALLOC_FL_WRITE_ZEROES
                }
            },
        };
        *mailboxes[id]
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner()) =
            ls.iter().map(|(p, l)| (*p, l.as_raw_fd())).collect();
        let tick_in_enter = shared.borrow().ring.waits_in_enter();
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
            accept_seq: 0,
            handoff_seqs: std::collections::HashMap::new(),
            stats,
            io,
            pending_close_listeners: false,
            closed_now: Vec::new(),
            dropped: Vec::new(),
            writes_issued: 0,
            tick_in_enter,
            next_tick: Instant::now(),
            slot_waiters: std::collections::VecDeque::new(),
        })
    }

    pub(super) fn err(&self, what: impl fmt::Display) -> UringError {
        UringError::Worker {
            worker: self.id,
            err: what.to_string(),
        }
    }

    pub(super) fn arm_accept(&mut self, i: usize) -> Result<(), UringError> {
        let multishot = self.cfg.net.accept == AcceptMode::Multishot;
        let direct = self.cfg.net.direct_sockets;
        // Direct sockets: listener i sits in slot i of the file table.
        let fd = if direct {
            crate::sys::target::Target::Fixed(i as u32)
        } else {
            crate::sys::target::Target::Fd(self.listeners[i].1.as_raw_fd())
        };
        let c = ctx(K_ACCEPT, ConnId(i as u64));
        self.net
            .accept(&mut *self.shared.borrow_mut(), fd, multishot, direct, c)
            .map_err(|e| self.err(format!("arming accept: {e}")))?;
        self.listeners[i].2 = true;
        Ok(())
    }

    pub(super) fn arm_tick(&mut self) -> Result<(), UringError> {
        let t = self.opts.tick;
        if self.tick_in_enter {
            // ring.wait-timeout = ext-arg: the tick is the wait's deadline (see `run`).
            self.next_tick = Instant::now() + t;
            return Ok(());
        }
        self.net
            .timeout(&mut *self.shared.borrow_mut(), t, ctx(K_TICK, ConnId(0)))
            .map_err(|e| self.err(format!("arming the tick: {e}")))?;
        Ok(())
    }

    pub(super) fn run<S: Service>(
        &mut self,
        mut svc: S,
        shutdown: &AtomicBool,
    ) -> Result<(), UringError> {
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
                    // With the tick in the enter, the wait ends at the next tick at the
                    // latest; otherwise the tick's TIMEOUT SQE ends it.
                    let deadline = if self.tick_in_enter {
                        Some(deadline.map_or(self.next_tick, |d| d.min(self.next_tick)))
                    } else {
                        deadline
                    };
                    let t = deadline
                        .filter(|d| {
                            self.tick_in_enter || d.saturating_duration_since(now) < self.opts.tick
                        })
                        .map(|d| {
                            d.saturating_duration_since(now)
                                .max(Duration::from_micros(200))
                        });
                    s.wait(self.cfg.ring.wait_nr as usize, t)
                        .map_err(|e| UringError::Worker {
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
            self.stats
                .cqes_skipped
                .store(self.files.cqes_skipped(), Ordering::Relaxed);
            self.io.now = Instant::now();
            self.dispatch(&mut svc)?;
            if self.tick_in_enter && self.io.now >= self.next_tick {
                self.on_tick(&mut svc);
                self.exec(&mut svc)?;
                self.next_tick = self.io.now + self.opts.tick;
            }
            if deadline.is_some_and(|d| d <= self.io.now) {
                svc.tick(&mut self.io);
                self.exec(&mut svc)?;
            }
        }
        self.teardown(&mut svc)
    }

    pub(super) fn stop_accepting(&mut self) {
        // Dropping a listener while its ACCEPT is in flight is safe (the kernel holds a
        // file reference); cancel it so the CQE comes back, then close.
        for i in 0..self.listeners.len() {
            let fd = if self.cfg.net.direct_sockets {
                crate::sys::target::Target::Fixed(i as u32)
            } else {
                crate::sys::target::Target::Fd(self.listeners[i].1.as_raw_fd())
            };
            let _ =
                self.net
                    .cancel_fd(&mut *self.shared.borrow_mut(), fd, ctx(K_IGNORE, ConnId(0)));
        }
        self.pending_close_listeners = true;
        self.unpublish_listeners();
    }

    /// Other workers stop asking this one's listeners (before they close).
    pub(super) fn unpublish_listeners(&mut self) {
        self.mailboxes[self.id]
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub(super) fn teardown<S: Service>(&mut self, svc: &mut S) -> Result<(), UringError> {
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
        let timers = if self.tick_in_enter { 0 } else { 1 };
        while (self.net.in_flight() > timers || self.files.in_flight() > 0 || self.live > 0)
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
    pub(super) fn dispatch<S: Service>(&mut self, svc: &mut S) -> Result<(), UringError> {
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
                TAG_HANDOFF => self.adopt_handoff(ud, res, svc)?,
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
        self.retry_slot_waiters(svc);
        self.exec(svc)
    }

    pub(super) fn take_mail<S: Service>(&mut self, svc: &mut S) -> Result<(), UringError> {
        // One at a time, in transit from the moment it leaves the mailbox until the
        // service has opened it, so `Io::waiting_elsewhere` always sees it.
        let mb = self.mailboxes.clone();
        let me = &mb[self.id];
        loop {
            let (fd, port, seq) = {
                let mut q = me.conns.lock().unwrap_or_else(|e| e.into_inner());
                if q.is_empty() {
                    break;
                }
                let (fd, port, seq) = q.remove(0);
                me.in_transit
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((port, seq));
                (fd, port, seq)
            };
            self.stats.handoffs_in.fetch_add(1, Ordering::Relaxed);
            let r = self.adopt_numbered(Socket::Fd(fd), port, Some(seq), svc);
            me.arrived(port, seq);
            r?;
        }
        svc.woken(&mut self.io);
        self.exec(svc)
    }

    pub(super) fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        conn_of(&mut self.conns, id)
    }

    pub(super) fn on_tick<S: Service>(&mut self, svc: &mut S) {
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
        self.retry_slot_waiters(svc);
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
            let port = self.conn_mut(id).map(|c| c.port);
            let t = if port == Some(Port::Ingest) { ti } else { th };
            self.drop_conn(
                id,
                format!(
                    "the peer accepted no bytes for {} ms (send timeout)",
                    t.as_millis()
                ),
            );
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

    /// Executes the service's requests.
    pub(super) fn exec<S: Service>(&mut self, svc: &mut S) -> Result<(), UringError> {
        for (id, port, why) in std::mem::take(&mut self.dropped) {
            svc.dropped(id, port, &why);
        }
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
                        c.out
                            .push_back(Out::File(FileOut::new(file, off, len, token)));
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
                    r => self.exec_file(r, svc),
                }
            }
        }
        Ok(())
    }
}

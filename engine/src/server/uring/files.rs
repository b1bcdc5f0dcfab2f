//! File requests of the service (WRITE / WRITEV / READ / FSYNC on match files, with the
//! opcodes of `[file]`, linked write -> sync pairs, SYNC_FILE_RANGE, FALLOCATE and the
//! in-ring file management of `sys::fsops`), their completions, and the worker's
//! registered-file table.
//!
//! The table (IORING_REGISTER_FILES2, sparse) exists when `file.register-files` or
//! `net.direct-sockets` is on. Its slots, in order: the worker's listeners (direct
//! sockets), files the service installs with `Io::register_file` (match files opened on
//! the storage threads, replays being served: this range is managed here, filled with
//! IORING_REGISTER_FILES_UPDATE), and the range the kernel allocates from
//! (IORING_REGISTER_FILE_ALLOC_RANGE: accepted sockets, files opened direct).

use super::*;

/// The registered-file table of one worker.
pub(super) struct FileTable {
    shared: Rc<RefCell<Shared>>,
    /// `file.register-files`: the service's files go in the table.
    enabled: bool,
    /// The slots installed by the engine (`Io::register_file`).
    range: std::ops::Range<u32>,
    /// Those of them that are free.
    free: Vec<u32>,
    /// Engine-managed slots with a CLOSE in flight, by the request's token.
    closing: std::collections::HashMap<u64, u32>,
    stats: Arc<WorkerStats>,
}

/// How the table is laid out: `(total, listeners, engine-managed files, kernel-allocated)`.
/// The kernel caps a table at RLIMIT_NOFILE (EMFILE above it): the soft limit is raised to
/// the hard one, and when the connection and match limits ask for more slots than that the
/// file and socket ranges are scaled down together (as plain descriptors would be capped
/// by the same limit); `capped_from` then says how many were asked for.
pub(super) fn table_layout(cfg: &Config, opts: &DriverOptions, listeners: usize) -> Option<Layout> {
    let files = cfg.file.register_files;
    let socks = cfg.net.direct_sockets;
    if !files && !socks {
        return None;
    }
    let conns = opts.max_connections_per_worker as u64;
    let l = if socks { listeners as u64 } else { 0 };
    // One slot per match this worker may write and per HTTP connection reading a replay
    // (the connection limit bounds both), plus room for live tails and a margin.
    let mut f = if files {
        opts.max_files_per_worker as u64 + 64
    } else {
        0
    };
    // Accepted sockets (and, with file-ops=ring, files opened straight into the table).
    let mut k = if socks { conns + 64 } else { 0 };
    if files && cfg.file.file_ops == crate::config::file::FileOpsMode::Ring {
        k += opts.max_files_per_worker as u64 + 64;
    }
    let want = l + f + k;
    // What RLIMIT_NOFILE allows (after raising the soft limit to the hard one), less
    // room for the process's own descriptors.
    let cap = crate::sys::limits::raise_nofile()
        .map(|(_, soft)| soft)
        .unwrap_or(1024)
        .saturating_sub(256)
        .max(l + 16);
    let mut capped_from = None;
    if want > cap {
        let room = cap - l;
        let (f0, k0) = (f, k);
        f = f0 * room / (f0 + k0);
        k = room - f;
        capped_from = Some(want as u32);
    }
    Some(Layout {
        total: (l + f + k) as u32,
        listeners: l as u32,
        files: f as u32,
        alloc: k as u32,
        capped_from,
    })
}

/// The registered-file table's ranges, in slot order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Layout {
    pub total: u32,
    pub listeners: u32,
    /// Slots for `Io::register_file`.
    pub files: u32,
    /// Slots the kernel allocates (IORING_FILE_INDEX_ALLOC: accepted sockets, direct opens).
    pub alloc: u32,
    /// Slots the limits asked for, when RLIMIT_NOFILE capped the table.
    pub capped_from: Option<u32>,
}

impl FileTable {
    pub(super) fn new(
        shared: Rc<RefCell<Shared>>,
        enabled: bool,
        first: u32,
        count: u32,
        stats: Arc<WorkerStats>,
    ) -> FileTable {
        FileTable {
            shared,
            enabled,
            range: first..first + count,
            free: (first..first + count).rev().collect(),
            closing: Default::default(),
            stats,
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.enabled
    }

    pub(super) fn register(&mut self, fd: RawFd) -> io::Result<FileRef> {
        if !self.enabled {
            return Ok(FileRef::Fd(fd));
        }
        let Some(slot) = self.free.pop() else {
            return Err(io::Error::other(
                "the registered-file table is full (sized from server.max-matches and server.http-max-connections)",
            ));
        };
        let r = self
            .shared
            .borrow_mut()
            .ring
            .ring
            .register_files_update(slot, &[fd]);
        match r {
            Ok(1) => {
                self.stats.files_registered.fetch_add(1, Ordering::Relaxed);
                Ok(FileRef::Slot(slot))
            }
            Ok(n) => {
                self.free.push(slot);
                Err(io::Error::other(format!(
                    "IORING_REGISTER_FILES_UPDATE updated {n} slots, expected 1"
                )))
            }
            Err(e) => {
                self.free.push(slot);
                Err(io::Error::new(
                    e.kind(),
                    format!("IORING_REGISTER_FILES_UPDATE of slot {slot}: {e}"),
                ))
            }
        }
    }

    pub(super) fn unregister(&mut self, file: FileRef) {
        let FileRef::Slot(slot) = file else { return };
        let r = self
            .shared
            .borrow_mut()
            .ring
            .ring
            .register_files_update(slot, &[-1]);
        if let Err(e) = r {
            // The slot keeps a reference to the file until the ring closes; never reuse it.
            tracing::warn!(
                "uring: emptying registered file slot {slot} failed: {e}; the slot is retired"
            );
            return;
        }
        // A slot the kernel allocated (a file opened straight into the table) goes back to
        // the kernel's allocator by being emptied; ours go back to our list.
        if self.is_managed(slot) {
            self.free.push(slot);
        }
    }

    fn is_managed(&self, slot: u32) -> bool {
        self.range.contains(&slot)
    }
}

impl<'a> Worker<'a> {
    /// The SQE options of the next write: IOSQE_ASYNC on every `file.force-async`th.
    fn write_opts(&mut self) -> fileops::SqeOpts {
        let n = self.cfg.file.force_async;
        let force_async = n > 0 && {
            self.writes_issued += 1;
            self.writes_issued % n as u64 == 0
        };
        fileops::SqeOpts { force_async }
    }

    /// Executes one file request of the service; a request the ring cannot take is
    /// completed at once with the error.
    pub(super) fn exec_file<S: Service>(&mut self, r: Req, svc: &mut S) {
        let fail = |me: &mut Self, svc: &mut S, token: u64, e: fileops::OpError| {
            let msg = e.to_string();
            svc.file_done(token, Err(io::Error::other(msg)), e.into_slot(), &mut me.io);
        };
        let tag = |token: u64| ctx(K_SERVICE_FILE, ConnId(token));
        match r {
            Req::Write {
                file,
                op,
                buf,
                len,
                off,
                rw_flags,
                then,
                token,
            } => {
                let op = op.unwrap_or(self.cfg.file.write_op);
                let opts = self.write_opts();
                let t = file.target();
                let r = match then {
                    None => self
                        .files
                        .write_opts(t, op, buf, len, off, rw_flags, opts, tag(token)),
                    Some(then) => {
                        let then = match then {
                            WriteThen::Sync { datasync } => fileops::Then::Fsync { datasync },
                            WriteThen::WriteBehind => fileops::Then::SyncRange {
                                flags: libc::SYNC_FILE_RANGE_WRITE,
                            },
                        };
                        self.files.write_then(
                            t,
                            op,
                            buf,
                            len,
                            off,
                            rw_flags,
                            opts,
                            then,
                            tag(token),
                        )
                    }
                };
                if let Err(e) = r {
                    fail(self, svc, token, e);
                }
            }
            Req::WriteVec {
                file,
                buf,
                start,
                len,
                off,
                rw_flags,
                token,
            } => {
                let op = self.cfg.file.write_op;
                let opts = self.write_opts();
                if let Err((e, buf)) = self.files.write_vec_opts(
                    file.target(),
                    op,
                    buf,
                    start,
                    len,
                    off,
                    rw_flags,
                    opts,
                    tag(token),
                ) {
                    svc.file_done_vec(
                        token,
                        Err(io::Error::other(e.to_string())),
                        buf,
                        &mut self.io,
                    );
                }
            }
            Req::Read {
                file,
                buf,
                len,
                off,
                token,
            } => {
                let op = self.cfg.file.read_op;
                if let Err(e) = self
                    .files
                    .read(file.target(), op, buf, len, off, 0, tag(token))
                {
                    fail(self, svc, token, e);
                }
            }
            Req::Fsync {
                file,
                datasync,
                token,
            } => {
                if let Err(e) = self.files.fsync(file.target(), datasync, tag(token)) {
                    fail(self, svc, token, e);
                }
            }
            Req::SyncRange {
                file,
                off,
                len,
                token,
            } => {
                let fl = libc::SYNC_FILE_RANGE_WRITE;
                if let Err(e) = self
                    .files
                    .sync_range(file.target(), off, len, fl, tag(token))
                {
                    fail(self, svc, token, e);
                }
            }
            Req::Fallocate {
                file,
                mode,
                off,
                len,
                token,
            } => {
                if let Err(e) = self
                    .files
                    .fallocate(file.target(), mode, off, len, tag(token))
                {
                    fail(self, svc, token, e);
                }
            }
            Req::Open {
                path,
                flags,
                mode,
                direct,
                token,
            } => {
                let direct = direct && self.io.files.borrow().enabled();
                if let Err(e) = self.files.openat(&path, flags, mode, direct, tag(token)) {
                    fail(self, svc, token, e);
                }
            }
            Req::Statx { path, token } => {
                let mask = libc::STATX_BASIC_STATS;
                if let Err(e) = self.files.statx(libc::AT_FDCWD, &path, 0, mask, tag(token)) {
                    svc.file_stat(token, Err(io::Error::other(e.to_string())), &mut self.io);
                }
            }
            Req::CloseFile { file, token } => {
                let managed = match file {
                    FileRef::Slot(s) if self.io.files.borrow().is_managed(s) => Some(s),
                    _ => None,
                };
                let t = if managed.is_some() {
                    ctx(K_SLOT_CLOSE, ConnId(token))
                } else {
                    tag(token)
                };
                match self.files.close(file.target(), t) {
                    Ok(()) => {
                        if let Some(s) = managed {
                            self.io.files.borrow_mut().closing.insert(token, s);
                        }
                    }
                    Err(e) => fail(self, svc, token, e),
                }
            }
            Req::Ftruncate { file, len, token } => {
                if let Err(e) = self.files.ftruncate(file.target(), len, tag(token)) {
                    fail(self, svc, token, e);
                }
            }
            Req::Rename { from, to, token } => {
                if let Err(e) = self.files.renameat(&from, &to, tag(token)) {
                    fail(self, svc, token, e);
                }
            }
            Req::Unlink { path, token } => {
                if let Err(e) = self.files.unlinkat(&path, tag(token)) {
                    fail(self, svc, token, e);
                }
            }
            _ => unreachable!("exec_file takes file requests only"),
        }
    }

    pub(super) fn on_file<S: Service>(&mut self, c: fileops::Completion, svc: &mut S) {
        match ctx_kind(c.tag) {
            K_FILE_READ => {
                let id = ctx_conn(c.tag);
                self.op_done(id, true);
                let Some(slot) = c.buf else { return };
                self.on_file_read(id, slot, c.result, svc);
            }
            K_SERVICE_FILE | K_SLOT_CLOSE => {
                let token = c.tag & ((1 << 56) - 1);
                if ctx_kind(c.tag) == K_SLOT_CLOSE {
                    let mut t = self.io.files.borrow_mut();
                    if let Some(s) = t.closing.remove(&token) {
                        t.free.push(s);
                    }
                }
                if let OpKind::Meta(crate::sys::fsops::MetaOp::Open { direct }) = c.kind {
                    let r = match (c.result, c.opened) {
                        (Err(e), _) => Err(e),
                        (Ok(slot), _) if direct => Ok(Opened::Slot(FileRef::Slot(slot))),
                        (Ok(_), Some(fd)) => Ok(Opened::Fd(fd)),
                        (Ok(_), None) => Err(io::Error::other("OPENAT returned no descriptor")),
                    };
                    return svc.file_opened(token, r, &mut self.io);
                }
                if let Some(st) = c.statx {
                    let r = c.result.map(|_| FileStat {
                        size: st.stx_size,
                        blocks: st.stx_blocks,
                        mode: st.stx_mode as u32,
                        mtime_ns: st.stx_mtime.tv_sec as i128 * 1_000_000_000
                            + st.stx_mtime.tv_nsec as i128,
                    });
                    return svc.file_stat(token, r, &mut self.io);
                }
                match c.heap {
                    Some(v) => svc.file_done_vec(token, c.result, v, &mut self.io),
                    None => svc.file_done(token, c.result, c.buf, &mut self.io),
                }
            }
            _ => {}
        }
    }
}

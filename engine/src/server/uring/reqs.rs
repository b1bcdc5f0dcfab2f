//! [`Io`]: what a [`Service`] asks of the driver during a callback.
//!
//! File requests name their file with a [`FileRef`]: a plain descriptor, or a slot of the
//! worker's registered-file table ([`Io::register_file`], `file.register-files`), which
//! the driver sends with IOSQE_FIXED_FILE. Durable-path primitives: [`Io::write_then`]
//! (a write linked to its fdatasync or to SYNC_FILE_RANGE write-behind, one completion),
//! [`Io::sync_file_range`], [`Io::fallocate`]; in-ring file management:
//! [`Io::openat`], [`Io::statx`], [`Io::close_file`], [`Io::ftruncate`], [`Io::rename`],
//! [`Io::unlink`]. Every one completes through `Service::file_done` (or
//! `Service::file_stat`) with its token.

use super::*;
use std::path::{Path, PathBuf};

/// How a file request names its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileRef {
    /// A plain descriptor the service keeps open until the request completes.
    Fd(RawFd),
    /// A slot of this worker's registered-file table (IOSQE_FIXED_FILE).
    Slot(u32),
}

impl From<RawFd> for FileRef {
    fn from(fd: RawFd) -> FileRef {
        FileRef::Fd(fd)
    }
}

impl FileRef {
    pub(super) fn target(self) -> crate::sys::target::Target {
        match self {
            FileRef::Fd(fd) => crate::sys::target::Target::Fd(fd),
            FileRef::Slot(i) => crate::sys::target::Target::Fixed(i),
        }
    }
}

/// What a linked write is followed by ([`Io::write_then`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteThen {
    /// IORING_OP_FSYNC (IORING_FSYNC_DATASYNC when `datasync`): durable on completion.
    Sync { datasync: bool },
    /// SYNC_FILE_RANGE_WRITE of the range written: write-back started.
    WriteBehind,
}

/// A file opened with [`Io::openat`].
#[derive(Debug)]
pub enum Opened {
    /// A new descriptor, owned by the service now.
    Fd(OwnedFd),
    /// A slot of the registered-file table (opened direct).
    Slot(FileRef),
}

/// What STATX found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStat {
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    pub mode: u32,
    pub mtime_ns: i128,
}

/// One request of the service to the driver.
#[derive(Debug)]
pub(super) enum Req {
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
        file: FileRef,
        op: Option<WriteOp>,
        buf: Slot,
        len: usize,
        off: u64,
        rw_flags: i32,
        then: Option<WriteThen>,
        token: u64,
    },
    WriteVec {
        file: FileRef,
        buf: Vec<u8>,
        start: usize,
        len: usize,
        off: u64,
        rw_flags: i32,
        token: u64,
    },
    Read {
        file: FileRef,
        buf: Slot,
        len: usize,
        off: u64,
        token: u64,
    },
    Fsync {
        file: FileRef,
        datasync: bool,
        token: u64,
    },
    SyncRange {
        file: FileRef,
        off: u64,
        len: u32,
        token: u64,
    },
    Fallocate {
        file: FileRef,
        mode: i32,
        off: u64,
        len: u64,
        token: u64,
    },
    Open {
        path: PathBuf,
        flags: i32,
        mode: u32,
        direct: bool,
        token: u64,
    },
    Statx {
        path: PathBuf,
        token: u64,
    },
    CloseFile {
        file: FileRef,
        token: u64,
    },
    Ftruncate {
        file: FileRef,
        len: u64,
        token: u64,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
        token: u64,
    },
    Unlink {
        path: PathBuf,
        token: u64,
    },
}

/// What the service asks of the driver during a callback. Requests are executed in
/// order after the callback returns.
pub struct Io {
    pub(super) reqs: Vec<Req>,
    pub(super) arena: Arena,
    pub(super) now: Instant,
    pub(super) worker: usize,
    pub(super) from_stage: bool,
    pub(super) waker: Waker,
    /// Every worker's mailbox and listeners, for [`Io::waiting_elsewhere`].
    pub(super) peers: Arc<Vec<Mailbox>>,
    pub(super) reuseport: bool,
    /// The accept sequence number of the connection being opened, when the acceptor
    /// numbered it (`net.listeners=acceptor`): only connections accepted before it
    /// count in [`Io::waiting_elsewhere`].
    pub(super) opening_seq: Option<u64>,
    /// The peer address of the connection being opened (None for a direct socket, which
    /// has no fd to ask).
    pub(super) opening_peer: Option<std::net::SocketAddr>,
    pub(super) files: Rc<RefCell<FileTable>>,
    pub(super) link_sync: bool,
    pub(super) write_behind: bool,
    pub(super) ring_file_ops: bool,
    pub(super) prealloc_mode: i32,
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

    /// How file requests should name `fd`: with `file.register-files`, a slot of the
    /// worker's registered-file table that now holds it (IORING_REGISTER_FILES_UPDATE;
    /// every request naming it goes with IOSQE_FIXED_FILE), else the fd itself. Give the
    /// slot back with [`Io::unregister_file`] before closing `fd`. Errors when the table is
    /// full (it is sized from server.max-matches and the HTTP connection limit).
    pub fn register_file(&mut self, fd: RawFd) -> io::Result<FileRef> {
        self.files.borrow_mut().register(fd)
    }
    /// Empties the table slot of `file` (nothing to do for a plain fd). Requests already
    /// queued on it keep their reference to the file.
    pub fn unregister_file(&mut self, file: FileRef) {
        self.files.borrow_mut().unregister(file);
    }
    /// Whether `file.register-files` is on (files are named by table slots).
    pub fn files_registered(&self) -> bool {
        self.files.borrow().enabled()
    }
    /// `file.link-sync`: appends should go out with [`Io::write_then`] and
    /// [`WriteThen::Sync`], making the group commit's fdatasync part of the write.
    pub fn link_sync(&self) -> bool {
        self.link_sync
    }
    /// `file.write-behind`: appends should go out with [`WriteThen::WriteBehind`].
    pub fn write_behind(&self) -> bool {
        self.write_behind
    }
    /// The fallocate mode of `file.prealloc-mode` (FALLOC_FL_KEEP_SIZE or
    /// FALLOC_FL_WRITE_ZEROES), for [`Io::fallocate`].
    pub fn prealloc_mode(&self) -> i32 {
        self.prealloc_mode
    }
    /// `file.file-ops = ring`: open, seal and delete files with the in-ring requests.
    pub fn ring_file_ops(&self) -> bool {
        self.ring_file_ops
    }

    /// Writes `buf[..len]` at `off` through the ring (`op` or `file.write-op`; every
    /// `file.force-async`th write with IOSQE_ASYNC).
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &mut self,
        file: impl Into<FileRef>,
        op: Option<WriteOp>,
        buf: Slot,
        len: usize,
        off: u64,
        rw_flags: i32,
        token: u64,
    ) {
        self.reqs.push(Req::Write {
            file: file.into(),
            op,
            buf,
            len,
            off,
            rw_flags,
            then: None,
            token,
        });
    }
    /// As [`Io::write`], linked (IOSQE_IO_LINK) to `then` in one submission:
    /// `Service::file_done` comes once, with the slot, when both are done; its result is
    /// the write's error or short count, else the sync's error, else `len`.
    #[allow(clippy::too_many_arguments)]
    pub fn write_then(
        &mut self,
        file: impl Into<FileRef>,
        buf: Slot,
        len: usize,
        off: u64,
        rw_flags: i32,
        then: WriteThen,
        token: u64,
    ) {
        self.reqs.push(Req::Write {
            file: file.into(),
            op: None,
            buf,
            len,
            off,
            rw_flags,
            then: Some(then),
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
        file: impl Into<FileRef>,
        buf: Vec<u8>,
        start: usize,
        len: usize,
        off: u64,
        rw_flags: i32,
        token: u64,
    ) {
        self.reqs.push(Req::WriteVec {
            file: file.into(),
            buf,
            start,
            len,
            off,
            rw_flags,
            token,
        });
    }
    /// Reads up to `len` bytes at `off` into `buf` through the ring (`file.read-op`).
    pub fn read(&mut self, file: impl Into<FileRef>, buf: Slot, len: usize, off: u64, token: u64) {
        self.reqs.push(Req::Read {
            file: file.into(),
            buf,
            len,
            off,
            token,
        });
    }
    /// IORING_OP_FSYNC (with IORING_FSYNC_DATASYNC when `datasync`).
    pub fn fsync(&mut self, file: impl Into<FileRef>, datasync: bool, token: u64) {
        self.reqs.push(Req::Fsync {
            file: file.into(),
            datasync,
            token,
        });
    }
    /// IORING_OP_SYNC_FILE_RANGE with SYNC_FILE_RANGE_WRITE: start write-back of
    /// `len` bytes at `off` now.
    pub fn sync_file_range(&mut self, file: impl Into<FileRef>, off: u64, len: u32, token: u64) {
        self.reqs.push(Req::SyncRange {
            file: file.into(),
            off,
            len,
            token,
        });
    }
    /// IORING_OP_FALLOCATE with `mode` (FALLOC_FL_KEEP_SIZE, FALLOC_FL_WRITE_ZEROES, ...).
    pub fn fallocate(
        &mut self,
        file: impl Into<FileRef>,
        mode: i32,
        off: u64,
        len: u64,
        token: u64,
    ) {
        self.reqs.push(Req::Fallocate {
            file: file.into(),
            mode,
            off,
            len,
            token,
        });
    }
    /// IORING_OP_OPENAT of `path`. `direct`: into a free slot of the registered-file table
    /// (needs `file.register-files`); `Service::file_done`'s result is the slot, else the
    /// new fd, which the service then owns.
    pub fn openat(&mut self, path: &Path, flags: i32, mode: u32, direct: bool, token: u64) {
        self.reqs.push(Req::Open {
            path: path.to_path_buf(),
            flags,
            mode,
            direct,
            token,
        });
    }
    /// IORING_OP_STATX of `path`; the answer comes in `Service::file_stat`.
    pub fn statx(&mut self, path: &Path, token: u64) {
        self.reqs.push(Req::Statx {
            path: path.to_path_buf(),
            token,
        });
    }
    /// IORING_OP_CLOSE of `file` (an fd the service gives up, or a table slot, which is
    /// emptied).
    pub fn close_file(&mut self, file: FileRef, token: u64) {
        self.reqs.push(Req::CloseFile { file, token });
    }
    /// IORING_OP_FTRUNCATE (6.9).
    pub fn ftruncate(&mut self, file: impl Into<FileRef>, len: u64, token: u64) {
        self.reqs.push(Req::Ftruncate {
            file: file.into(),
            len,
            token,
        });
    }
    /// IORING_OP_RENAMEAT.
    pub fn rename(&mut self, from: &Path, to: &Path, token: u64) {
        self.reqs.push(Req::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            token,
        });
    }
    /// IORING_OP_UNLINKAT.
    pub fn unlink(&mut self, path: &Path, token: u64) {
        self.reqs.push(Req::Unlink {
            path: path.to_path_buf(),
            token,
        });
    }
    pub fn now(&self) -> Instant {
        self.now
    }
    /// In [`super::Service::open`]: the new connection's peer address (None for a direct
    /// socket, `net.direct-sockets`, which has no fd for getpeername).
    pub fn opening_peer(&self) -> Option<std::net::SocketAddr> {
        self.opening_peer
    }
    /// Connections on `port` that other workers hold but have not opened yet: in their
    /// listeners' accept queues (`net.listeners=reuseport`) or handed over by the
    /// acceptor and not yet adopted. A connection limit counts them as if they came
    /// first, so that, as with one listener, the connection refused is the newest one
    /// rather than whichever a faster worker opened first. Hand-overs carry the order
    /// they were accepted in, and only those accepted before the one being opened
    /// count (a newer one waiting elsewhere must not make this one refused); accept
    /// queues have no order and count whole.
    pub fn waiting_elsewhere(&self, port: Port) -> usize {
        let before = |seq: u64| self.opening_seq.is_none_or(|mine| seq < mine);
        let mut n = 0;
        for (w, m) in self.peers.iter().enumerate() {
            if w == self.worker {
                continue;
            }
            // One snapshot of both lists (a connection moves from one to the other
            // under the `conns` lock).
            let q = m.conns.lock().unwrap_or_else(|e| e.into_inner());
            n += q
                .iter()
                .filter(|(_, p, s)| *p == port && before(*s))
                .count();
            n += m
                .in_transit
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|(p, s)| *p == port && before(*s))
                .count();
            drop(q);
            if self.reuseport {
                let ls = m.listeners.lock().unwrap_or_else(|e| e.into_inner());
                for (p, fd) in ls.iter() {
                    if *p == port {
                        n += sockopt::accept_queue(*fd).map_or(0, |(q, _)| q as usize);
                    }
                }
            }
        }
        n
    }
    pub fn worker(&self) -> usize {
        self.worker
    }
}

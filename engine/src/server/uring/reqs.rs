//! [`Io`]: what a [`Service`] asks of the driver during a callback.

use super::*;

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
    pub(super) reqs: Vec<Req>,
    pub(super) arena: Arena,
    pub(super) now: Instant,
    pub(super) worker: usize,
    pub(super) from_stage: bool,
    pub(super) waker: Waker,
    /// Every worker's mailbox and listeners, for [`Io::waiting_elsewhere`].
    pub(super) peers: Arc<Vec<Mailbox>>,
    pub(super) reuseport: bool,
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
    /// Connections on `port` that other workers hold but have not opened yet: in their
    /// listeners' accept queues (`net.listeners=reuseport`) or handed over by the
    /// acceptor and not yet adopted. A connection limit counts them as if they came
    /// first, so that, as with one listener, the connection refused is the newest one
    /// rather than whichever a faster worker opened first.
    pub fn waiting_elsewhere(&self, port: Port) -> usize {
        let mut n = 0;
        for (w, m) in self.peers.iter().enumerate() {
            if w == self.worker {
                continue;
            }
            n += m
                .conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|(_, p)| *p == port)
                .count();
            n += m.adopting[port as usize].load(Ordering::Acquire);
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

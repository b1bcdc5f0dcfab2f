//! Socket opcodes with owned buffers: the safe face of io_uring networking.
//!
//! The completion is the request: every operation occupies one slot of a [`NetOps`]
//! table, allocated at start-up; the slot owns whatever the kernel may touch (receive
//! buffer, send buffer, timespec) until the CQE that ends the operation is reaped, and
//! the SQE's `user_data` names the slot (`tag << 56 | generation << 32 | index`).
//! Callers attach their own `ctx: u64` (a connection id, say) and get it back in the
//! [`Completion`]. Reaping never runs callbacks: [`NetOps::complete`] turns one CQE into
//! one `Completion` value (or `None` for CQEs that are not ours).
//!
//! Operations: accept (single-shot or multishot; `more == false` means re-arm), recv
//! (single-shot into an owned buffer, or multishot from a provided-buffer group; ENOBUFS
//! without F_MORE means the group ran dry: recycle buffers, then re-arm), send, send_zc
//! (two CQEs: the result with F_MORE, then F_NOTIF; the buffer comes back with the
//! notification, never waited for per send), splice (file -> pipe -> socket, linked),
//! close, cancel (by user_data or every request on an fd) and timeout.
//!
//! The ring itself is abstract ([`SqSink`]), so the same table works over the engine's
//! own ring (`sys::ring::Ring`) and over the `io-uring` crate's `IoUring`.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::squeue::{Entry, Flags};
use io_uring::{opcode, types};

/// `IORING_CQE_F_BUFFER`: the upper 16 bits of `flags` carry a provided buffer id.
pub const CQE_F_BUFFER: u32 = 1 << 0;
/// `IORING_CQE_F_MORE`: more CQEs will follow for this request.
pub const CQE_F_MORE: u32 = 1 << 1;
/// `IORING_CQE_F_SOCK_NONEMPTY`: the socket had more data after this receive.
pub const CQE_F_SOCK_NONEMPTY: u32 = 1 << 2;
/// `IORING_CQE_F_NOTIF`: a SEND_ZC notification (buffer released by the kernel).
pub const CQE_F_NOTIF: u32 = 1 << 3;
/// `IORING_NOTIF_USAGE_ZC_COPIED`: in a notification's `res`, the data was copied, not
/// sent zero-copy (always the case on loopback).
pub const NOTIF_USAGE_ZC_COPIED: i32 = 1 << 31;

/// `IORING_SEND_ZC_REPORT_USAGE` (6.2): ask the notification to say whether the data
/// was copied.
pub const SEND_ZC_REPORT_USAGE: u16 = 1 << 3;

/// Where SQEs go. Implemented for the engine's ring and for `io_uring::IoUring`.
pub trait SqSink {
    /// Places one SQE in the submission queue; `false` when the queue is full.
    ///
    /// # Safety
    /// Every pointer inside `e` must stay valid until the CQE that ends the request
    /// has been reaped.
    unsafe fn push_sqe(&mut self, e: &Entry) -> bool;
    /// Free SQ slots right now.
    fn sq_space(&self) -> usize;
    /// Hands queued SQEs to the kernel (io_uring_enter, or a wake of the SQ thread).
    fn flush(&mut self) -> io::Result<usize>;
    /// SQ entries in all (an upper bound on what one push can ever need).
    fn sq_capacity(&self) -> usize {
        usize::MAX
    }
    /// Called when the SQ is still full after a [`flush`](SqSink::flush): blocks until
    /// the kernel has consumed at least one entry. With SQPOLL the SQ drains only when
    /// the kernel's SQ thread runs, so a flush alone may leave it full; this waits for
    /// that thread (IORING_ENTER_SQ_WAIT). Without SQPOLL a flush consumes the SQ, so
    /// the default is another flush.
    fn wait_sq_space(&mut self) -> io::Result<()> {
        self.flush().map(|_| ())
    }
}

impl SqSink for io_uring::IoUring {
    unsafe fn push_sqe(&mut self, e: &Entry) -> bool {
        // SAFETY: forwarded contract: the caller keeps `e`'s pointers valid.
        unsafe { self.submission().push(e).is_ok() }
    }
    fn sq_space(&self) -> usize {
        // SAFETY: only reads the ring's head/tail; no other thread holds the SQ.
        let sq = unsafe { self.submission_shared() };
        sq.capacity() - sq.len()
    }
    fn flush(&mut self) -> io::Result<usize> {
        self.submit()
    }
    fn sq_capacity(&self) -> usize {
        // SAFETY: only reads the ring's size; no other thread holds the SQ.
        unsafe { self.submission_shared() }.capacity()
    }
    fn wait_sq_space(&mut self) -> io::Result<()> {
        if self.params().is_setup_sqpoll() {
            self.submit()?;
            // SAFETY: as above.
            if unsafe { self.submission_shared() }.is_full() {
                self.submitter().squeue_wait()?;
            }
            Ok(())
        } else {
            self.submit().map(|_| ())
        }
    }
}

/// An errno from a CQE (`res < 0`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub fn io(self) -> io::Error {
        io::Error::from_raw_os_error(self.0)
    }
    pub fn name(self) -> &'static str {
        match self.0 {
            libc::ENOBUFS => "ENOBUFS",
            libc::ECANCELED => "ECANCELED",
            libc::ETIME => "ETIME",
            libc::EINVAL => "EINVAL",
            libc::EAGAIN => "EAGAIN",
            libc::EINTR => "EINTR",
            libc::ECONNRESET => "ECONNRESET",
            libc::EPIPE => "EPIPE",
            libc::ENOENT => "ENOENT",
            libc::EALREADY => "EALREADY",
            libc::EBADF => "EBADF",
            libc::EMFILE => "EMFILE",
            libc::ENFILE => "ENFILE",
            libc::EOPNOTSUPP => "EOPNOTSUPP",
            libc::ENOTSOCK => "ENOTSOCK",
            libc::ENOMEM => "ENOMEM",
            _ => "errno",
        }
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.io(), self.name())
    }
}

fn res_to(res: i32) -> Result<u32, Errno> {
    if res < 0 {
        Err(Errno(-res))
    } else {
        Ok(res as u32)
    }
}

/// A buffer whose heap memory stays put when the value moves, so the kernel may hold
/// its address while the operation owns the value.
///
/// # Safety
/// `ptr()` must return the same address for the life of the value (moves included), be
/// valid for `len()` bytes, and `ptr_mut()` likewise for writes.
pub unsafe trait IoBuf: Send + 'static {
    fn ptr(&self) -> *const u8;
    fn ptr_mut(&mut self) -> *mut u8;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// SAFETY: a Vec's heap allocation does not move when the Vec moves; it is not resized
// while owned by an operation (the table holds it, nobody else can touch it).
unsafe impl IoBuf for Vec<u8> {
    fn ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn ptr_mut(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn len(&self) -> usize {
        Vec::len(self)
    }
}

// SAFETY: as for Vec: the boxed slice's memory is fixed for its whole life.
unsafe impl IoBuf for Box<[u8]> {
    fn ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn ptr_mut(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

// SAFETY: a Slot is a fixed range of its arena's mapping, kept mapped by the slot's
// own reference to the arena; it moves without its memory moving.
unsafe impl IoBuf for super::mem::Slot {
    fn ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn ptr_mut(&mut self) -> *mut u8 {
        self.as_ptr()
    }
    fn len(&self) -> usize {
        super::mem::Slot::len(self)
    }
}

/// A send/receive buffer: heap bytes (headers, acks) or an arena slot (file data read
/// with READ / READ_FIXED, sent without another copy).
#[derive(Debug)]
pub enum NetBuf {
    Heap(Vec<u8>),
    Slot(super::mem::Slot),
}

impl NetBuf {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            NetBuf::Heap(v) => v,
            NetBuf::Slot(s) => s.as_slice(),
        }
    }
}

// SAFETY: both variants are stable-address buffers (see their impls).
unsafe impl IoBuf for NetBuf {
    fn ptr(&self) -> *const u8 {
        match self {
            NetBuf::Heap(v) => v.ptr(),
            NetBuf::Slot(s) => s.ptr(),
        }
    }
    fn ptr_mut(&mut self) -> *mut u8 {
        match self {
            NetBuf::Heap(v) => v.ptr_mut(),
            NetBuf::Slot(s) => s.ptr_mut(),
        }
    }
    fn len(&self) -> usize {
        match self {
            NetBuf::Heap(v) => IoBuf::len(v),
            NetBuf::Slot(s) => IoBuf::len(s),
        }
    }
}

/// Why an operation could not be queued. The buffer (if any) comes back with it.
#[derive(Debug)]
pub enum SubmitError {
    /// Every slot of the table is in flight: the table was sized too small for the load
    /// (raise the connection limit's derived op capacity, or lower concurrency).
    TableFull { capacity: usize },
    /// One operation needs more SQ entries than the whole submission queue has
    /// (a linked splice needs 2): raise `sq-entries`. A merely full SQ is waited out.
    SqFull,
    /// The flush that should have made room failed.
    Flush(io::Error),
    /// An argument is out of range (for example a buffer over 4 GiB, or an offset past its end).
    BadArgument(&'static str),
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::TableFull { capacity } => {
                write!(f, "all {capacity} network operation slots are in flight; raise the limit or lower the load")
            }
            SubmitError::SqFull => write!(
                f,
                "the submission queue is smaller than one operation's linked entries; raise sq-entries"
            ),
            SubmitError::Flush(e) => {
                write!(f, "io_uring_enter failed while making room in the SQ: {e}")
            }
            SubmitError::BadArgument(what) => write!(f, "bad argument: {what}"),
        }
    }
}

impl std::error::Error for SubmitError {}

/// A rejected operation: why, and the buffer that was handed in, returned unused.
#[derive(Debug)]
pub struct Rejected<B> {
    pub error: SubmitError,
    pub buf: Option<B>,
}

impl<B> fmt::Display for Rejected<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

/// A pipe for the SPLICE path, with its kernel buffer size.
pub struct Pipe {
    pub read: OwnedFd,
    pub write: OwnedFd,
    /// Capacity in bytes (F_GETPIPE_SZ after F_SETPIPE_SZ).
    pub capacity: usize,
}

impl Pipe {
    /// A close-on-exec pipe; `size` is asked for with F_SETPIPE_SZ (capped by
    /// /proc/sys/fs/pipe-max-size for unprivileged users) and the effective size is recorded.
    pub fn new(size: usize) -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: fds is a valid array of two ints for pipe2 to fill.
        let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded and returned two fresh fds that we now own.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        if size > 0 {
            // SAFETY: plain fcntl on an fd we own.
            let r =
                unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: plain fcntl on an fd we own.
        let cap = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        if cap < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Pipe {
            read,
            write,
            capacity: cap as usize,
        })
    }
}

/// One finished (or progressing, for multishot) operation.
#[derive(Debug)]
pub enum Completion<B> {
    /// A connection accepted (fd owned by the caller now), or an error. `more == false`:
    /// the accept request is over (single-shot, or multishot ended): re-arm.
    Accept {
        ctx: u64,
        res: Result<OwnedFd, Errno>,
        more: bool,
    },
    /// Single-shot receive into `buf[off..]`: `Ok(0)` is end of stream.
    Recv {
        ctx: u64,
        res: Result<usize, Errno>,
        buf: B,
        off: usize,
    },
    /// One multishot receive result. `Ok((bid, len))`: the data is in provided buffer
    /// `bid` of the group, which the caller must recycle once parsed. `Ok((_, 0))` with
    /// no buffer is end of stream. `more == false`: the request ended (ENOBUFS when the
    /// group ran dry, EOF, an error, or cancellation): recycle, then re-arm if wanted.
    RecvMulti {
        ctx: u64,
        res: Result<Option<(u16, usize)>, Errno>,
        more: bool,
        sock_nonempty: bool,
    },
    /// A send's result: bytes sent from `buf[off..]`. For SEND the buffer is back now.
    /// For SEND_ZC `buf` is `None` when a notification follows (`notif_pending`).
    Send {
        ctx: u64,
        res: Result<usize, Errno>,
        buf: Option<B>,
        off: usize,
        zc: bool,
        notif_pending: bool,
    },
    /// The SEND_ZC notification: the kernel no longer references the buffer.
    /// `copied`: the kernel copied instead of sending from the pages (loopback does).
    SendZcNotif { ctx: u64, buf: B, copied: bool },
    /// SPLICE result: bytes moved.
    Splice { ctx: u64, res: Result<usize, Errno> },
    /// CLOSE result.
    Close { ctx: u64, res: Result<(), Errno> },
    /// ASYNC_CANCEL result: number of requests cancelled (with `all`), or 0.
    Cancel { ctx: u64, res: Result<u32, Errno> },
    /// SHUTDOWN result.
    Shutdown { ctx: u64, res: Result<(), Errno> },
    /// MSG_RING result (on the sending ring).
    MsgRing { ctx: u64, res: Result<(), Errno> },
    /// TIMEOUT fired (`Ok(true)`, the kernel's -ETIME), completed by count
    /// (`Ok(false)`), or was cancelled (`Err(ECANCELED)`).
    Timeout { ctx: u64, res: Result<bool, Errno> },
}

enum Op<B> {
    Free {
        next: u32,
    },
    Accept {
        multishot: bool,
    },
    Recv {
        buf: B,
        off: usize,
    },
    RecvMulti,
    Send {
        buf: B,
        off: usize,
    },
    SendZc {
        buf: B,
        off: usize,
        result_seen: bool,
    },
    Splice,
    Close,
    Cancel,
    Timeout {
        _ts: Box<types::Timespec>,
    },
    MsgRing,
    Shutdown,
}

struct Slot<B> {
    op: Op<B>,
    ctx: u64,
    gen: u32,
}

const NONE: u32 = u32::MAX;
const GEN_MASK: u32 = 0x00ff_ffff;

/// The table of in-flight socket operations of one ring.
pub struct NetOps<B: IoBuf = Vec<u8>> {
    slots: Vec<Slot<B>>,
    free_head: u32,
    in_flight: usize,
    tag: u8,
    /// MSG_WAITALL on sends: the kernel retries short sends itself (5.19+ for SEND).
    pub send_waitall: bool,
    /// Times a push found the SQ still full after a flush and waited for the kernel
    /// to consume entries (or retried a busy enter): a sign sq-entries is small.
    sq_waits: u64,
}

/// Counters of one table, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetOpsStats {
    pub capacity: usize,
    pub in_flight: usize,
}

impl<B: IoBuf> NetOps<B> {
    /// A table of `capacity` slots. `tag` goes into the top byte of every user_data so
    /// the ring's other users (file ops, wakeups) can share the CQ: [`NetOps::owns`].
    pub fn new(capacity: usize, tag: u8) -> Self {
        assert!(
            capacity > 0 && capacity < NONE as usize,
            "netops capacity out of range: {capacity}"
        );
        let slots = (0..capacity)
            .map(|i| Slot {
                op: Op::Free {
                    next: if i + 1 < capacity {
                        (i + 1) as u32
                    } else {
                        NONE
                    },
                },
                ctx: 0,
                gen: 0,
            })
            .collect();
        NetOps {
            slots,
            free_head: 0,
            in_flight: 0,
            sq_waits: 0,
            tag,
            send_waitall: true,
        }
    }

    pub fn stats(&self) -> NetOpsStats {
        NetOpsStats {
            capacity: self.slots.len(),
            in_flight: self.in_flight,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Times a push found the SQ full after a flush and had to wait for the kernel.
    pub fn sq_waits(&self) -> u64 {
        self.sq_waits
    }

    /// Does this user_data belong to this table?
    pub fn owns(&self, user_data: u64) -> bool {
        (user_data >> 56) as u8 == self.tag
    }

    fn user_data(&self, idx: u32) -> u64 {
        ((self.tag as u64) << 56)
            | (((self.slots[idx as usize].gen & GEN_MASK) as u64) << 32)
            | idx as u64
    }

    fn alloc(&mut self, op: Op<B>, ctx: u64) -> Result<u32, (SubmitError, Op<B>)> {
        if self.free_head == NONE {
            return Err((
                SubmitError::TableFull {
                    capacity: self.slots.len(),
                },
                op,
            ));
        }
        let idx = self.free_head;
        let slot = &mut self.slots[idx as usize];
        let Op::Free { next } = slot.op else {
            unreachable!("free list points at a busy slot")
        };
        self.free_head = next;
        slot.op = op;
        slot.ctx = ctx;
        slot.gen = slot.gen.wrapping_add(1) & GEN_MASK;
        self.in_flight += 1;
        Ok(idx)
    }

    fn release(&mut self, idx: u32) -> Op<B> {
        let slot = &mut self.slots[idx as usize];
        let op = std::mem::replace(
            &mut slot.op,
            Op::Free {
                next: self.free_head,
            },
        );
        self.free_head = idx;
        self.in_flight -= 1;
        op
    }

    fn take_buf(op: Op<B>) -> Option<B> {
        match op {
            Op::Recv { buf, .. } | Op::Send { buf, .. } | Op::SendZc { buf, .. } => Some(buf),
            _ => None,
        }
    }

    /// Pushes `entries` (already pointing into slot `idx`'s owned memory), flushing once if
    /// the SQ has no room. On failure the slot is freed and its buffer returned.
    ///
    /// A full SQ is transient, never an error: it is flushed, and if it is still full
    /// (with SQPOLL the kernel thread may not have run yet) the call waits for the kernel
    /// to consume entries ([`SqSink::wait_sq_space`]). EINTR/EAGAIN/EBUSY from the flush
    /// are retried the same way. Only an SQ smaller than `entries` (it could never fit)
    /// or a hard flush error rejects the operation.
    fn push<S: SqSink + ?Sized>(
        &mut self,
        ring: &mut S,
        idx: u32,
        entries: &[Entry],
    ) -> Result<u64, Rejected<B>> {
        if entries.len() > ring.sq_capacity() {
            let op = self.release(idx);
            return Err(Rejected {
                error: SubmitError::SqFull,
                buf: Self::take_buf(op),
            });
        }
        let mut flushed = false;
        while ring.sq_space() < entries.len() {
            let r = if flushed {
                self.sq_waits += 1;
                ring.wait_sq_space().map(|_| 0)
            } else {
                ring.flush()
            };
            flushed = true;
            match r {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) =>
                {
                    // EBUSY/EAGAIN: the kernel has completions to post first; the
                    // sink routes them to user space when it waits (MuxRing), or the
                    // next flush succeeds once the CQ has room.
                    self.sq_waits += 1;
                    std::thread::yield_now();
                }
                Err(e) => {
                    let op = self.release(idx);
                    return Err(Rejected {
                        error: SubmitError::Flush(e),
                        buf: Self::take_buf(op),
                    });
                }
            }
        }
        for e in entries {
            // SAFETY: every pointer in these entries points into memory owned by slot
            // `idx` (heap buffers, boxed timespecs) or is null; the slot is only released
            // when the request's final CQE is reaped in `complete`. Space was checked.
            let ok = unsafe { ring.push_sqe(e) };
            assert!(
                ok,
                "SQ had {} free entries but refused a push",
                ring.sq_space()
            );
        }
        Ok(self.user_data(idx))
    }

    fn reject(&mut self, e: (SubmitError, Op<B>)) -> Rejected<B> {
        Rejected {
            error: e.0,
            buf: Self::take_buf(e.1),
        }
    }

    /// ACCEPT on `listen_fd` (SOCK_CLOEXEC). Multishot (5.19+) keeps posting one CQE per
    /// connection with F_MORE until it ends.
    pub fn accept<S: SqSink + ?Sized>(
        &mut self,
        ring: &mut S,
        listen_fd: RawFd,
        multishot: bool,
        ctx: u64,
    ) -> Result<u64, Rejected<B>> {
        let idx = self
            .alloc(Op::Accept { multishot }, ctx)
            .map_err(|e| self.reject(e))?;
        let fd = types::Fd(listen_fd);
        let e = if multishot {
            opcode::AcceptMulti::new(fd)
                .flags(libc::SOCK_CLOEXEC)
                .build()
        } else {
            opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build()
        };
        let ud = self.user_data(idx);
        self.push(ring, idx, &[e.user_data(ud)])
    }

    /// Single-shot RECV into `buf[off..]`.
    pub fn recv<S: SqSink + ?Sized>(
        &mut self,
        ring: &mut S,
        fd: RawFd,
        buf: B,
        off: usize,
        ctx: u64,
    ) -> Result<u64, Rejected<B>> {
        if off >= buf.len() || buf.len() - off > u32::MAX as usize {
            return Err(Rejected {
                error: SubmitError::BadArgument(
                    "recv: offset must be inside the buffer and the space under 4 GiB",
                ),
                buf: Some(buf),
            });
        }
        let len = (buf.len() - off) as u32;
        let idx = self
            .alloc(Op::Recv { buf, off }, ctx)
            .map_err(|e| self.reject(e))?;
        let Op::Recv { buf, .. } = &mut self.slots[idx as usize].op else {
            unreachable!()
        };
        // SAFETY: off < len checked above, so the pointer stays inside the allocation.
        let p = unsafe { buf.ptr_mut().add(off) };
        let e = opcode::Recv::new(types::Fd(fd), p, len).build();
        let ud = self.user_data(idx);
        self.push(ring, idx, &[e.user_data(ud)])
    }

    /// Multishot RECV (6.0+) picking buffers from provided-buffer group `bgid` (len 0).
    pub fn recv_multishot<S: SqSink + ?Sized>(
        &mut self,
        ring: &mut S,
        fd: RawFd,
        bgid: u16,
        ctx: u64,
    ) -> Result<u64, Rejected<B>> {
        let idx = self.alloc(Op::RecvMulti, ctx).map_err(|e| self.reject(e))?;
        let e = opcode::RecvMulti::new(types::Fd(fd), bgid).build();
        let ud = self.user_data(idx);
        self.push(ring, idx, &[e.user_data(ud)])
    }

    /// SEND of `buf[off..]`, or SEND_ZC (6.0+) when `zc`. With `send_waitall` the kernel
    /// finishes short sends itself; a short count can still come back (error midway).
    pub fn send<S: SqSink + ?Sized>(
        &mut self,
        ring: &mut S,
        fd: RawFd,
        buf: B,
        off: usize,
        zc: bool,
        ctx: u64,
    ) -> Result<u64, Rejected<B>> {
        if off >= buf.len() || buf.len() - off > u32::MAX as usize {
            return Err(Rejected {
                error: SubmitError::BadArgument(
                    "send: offset must be inside the buffer and the rest under 4 GiB",
                ),
                buf: Some(buf),
            });
        }
        let len = (buf.len() - off) as u32;
        let op = if zc {
            Op::SendZc {
                buf,
                off,
                result_seen: false,
            }
        } else {
            Op::Send { buf, off }
        };
        let idx = self.alloc(op, ctx).map_err(|e| self.reject(e))?;
        let p = match &self.slots[idx as usize].op {
            // SAFETY: off < len checked above.
            Op::Send { buf, .. } | Op::SendZc { buf, .. } => unsafe { buf.ptr().add(off) },
            _ => unreachable!(),
        };
        let flags = libc::MSG_NOSIGNAL
            | if self.send_waitall {
                libc::MSG_WAITALL
            } else {
                0
            };
        let e = if zc {
            opcode::SendZc::new(types::Fd(fd), p, len)
                .flags(flags)
                .zc_flags(SEND_ZC_REPORT_USAGE)
                .build()
        } else {
            opcode::Send::new(types::Fd(fd), p, len)
                .flags(flags)
                .build()
        };
        let ud = self.user_data(idx);
        self.push(ring, idx, &[e.user_data(ud)])
    }

    /// SPLICE `len` bytes from `fd_in` at `off_in` (-1: current position / pipe) to
    /// `fd_out` at `off_out` (-1 for pipes and sockets). `link` sets IOSQE_IO_LINK so the
    /// next SQE pushed runs after this one (and is cancelled if this one is short).
    #[allow(clippy::too_many_arguments)]
    pub fn splice<S: SqSink + ?Sized>(
        &mut self,
        ring: &mut S,
        fd_in: RawFd,
        off_in: i64,
        fd_out: RawFd,
        off_out: i64,
        len: u32,
        link: bool,
        ctx: u64,
    ) -> Result<u64, Rejected<B>> {
        let idx = self.alloc(Op::Splice, ctx).map_err(|e| self.reject(e))?;
        let mut e = opcode::Splice::new(types::Fd(fd_in), off_in, types::Fd(fd_out), off_out, len)
            .flags(libc::SPLICE_F_MOVE)
            .build();
        if link {
            e = e.flags(Flags::IO_LINK);
        }
        let ud = self.user_data(idx);
        self.push(ring, idx, &[e.user_data(ud)])
    }

    /// File -> pipe -> socket as two linked SPLICEs: `len` bytes of `file` at `off`
    /// into `pipe`, then out of the pipe into `sock`. `len` must fit the pipe. Two
    /// `Splice` completions come back with `ctx_in` and `ctx_out`; a short first one
    /// cancels the second (ECANCELED), and the caller drains the pipe with one more
    /// [`NetOps::splice`] of the count the first one moved.
    #[allow(clippy::too_many_arguments)]
    pub fn splice_file_to_socket<S: SqSink + ?Sized>(
        &mut self,
        ring: &mut S,
        file: RawFd,
        off: u64,
        pipe: &Pipe,
        sock: RawFd,
        len: u32,
        ctx_in: u64,
        ctx_out: u64,
    ) -> Result<(u64, u64), Rejected<B>> {
        if len as usize > pipe.capacity {
            return Err(Rejected {
                error: SubmitError::BadArgument("splice: length larger than the pipe"),
                buf: None,
            });
        }
        if ring.sq_space() < 2 {
            ring.flush().map_err(|e| Rejected {
                error: SubmitError::Flush(e),
                buf: None,
            })?;
            if ring.sq_space() < 2 {
                return Err(Rejected {
                    error: SubmitError::SqFull,
                    buf: None,
                });
            }
        }
        let a = self.splice(
            ring,
            file,
            off as i64,
            pipe.write.as_raw_fd(),
            -1,
            len,
            true,
            ctx_in,
        )?;
        match self.splice(
            ring,
            pipe.read.as_raw_fd(),
            -1,
            sock,
            -1,
            len,
            false,
            ctx_out,
        ) {
            Ok(b) => Ok((a, b)),
            Err(e) => {
                // Cannot happen (space checked, and a slot failure leaves `a` unlinked
                // to nothing): report, `a` completes on its own.
                Err(e)
            }
        }
    }

    /// CLOSE through the ring; the fd is consumed.
    pub fn close<S: SqSink + ?Sized>(
        &mut self,
        ring: &mut S,
        fd: OwnedFd,
        ctx: u64,
    ) -> Result<u64, Rejected<B>> {
        let idx = match self.alloc(Op::Close, ctx) {
            Ok(i) => i,
            Err(e) => {
                drop(fd); // closed synchronously instead
                return Err(self.reject(e));
            }
        };
        let raw = fd.into_raw_fd();
        let e = opcode::Close::new(types::Fd(raw)).build();
        let ud = self.user_data(idx);
        self.push(ring, idx, &[e.user_data(ud)]).inspect_err(|_| {
            // SAFETY: the CLOSE was not queued, so we still own `raw`; close it here.
            drop(unsafe { OwnedFd::from_raw_fd(raw) });
        })
    }

    /// ASYNC_CANCEL of the request with `target` user_data.
    pub fn cancel<S: SqSink + ?Sized>(
        &mut self,
        ring: &mut S,
        target: u64,
        ctx: u64,
    ) -> Result<u64, Rejected<B>> {
        let idx = self.alloc(Op::Cancel, ctx).map_err(|e| self.reject(e))?;
        let e = opcode::AsyncCancel::new(target).build();
        let ud = self.user_data(idx);
        self.push(ring, idx, &[e.user_data(ud)])
    }

    /// ASYNC_CANCEL of every request on `fd` (5.19+: IORING_ASYNC_CANCEL_FD | ALL).
    pub fn cancel_fd<S: SqSink + ?Sized>(
        &mut self,
        ring: &mut S,
        fd: RawFd,
        ctx: u64,
    ) -> Result<u64, Rejected<B>> {
        let idx = self.alloc(Op::Cancel, ctx).map_err(|e| self.reject(e))?;
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all()).build();
        let ud = self.user_data(idx);
        self.push(ring, idx, &[e.user_data(ud)])
    }

    /// TIMEOUT after `after` (relative), used for idle / slow-client sweeps.
    pub fn timeout<S: SqSink + ?Sized>(
        &mut self,
        ring: &mut S,
        after: Duration,
        ctx: u64,
    ) -> Result<u64, Rejected<B>> {
        let ts = Box::new(
            types::Timespec::new()
                .sec(after.as_secs())
                .nsec(after.subsec_nanos()),
        );
        let p: *const types::Timespec = &*ts;
        let idx = self
            .alloc(Op::Timeout { _ts: ts }, ctx)
            .map_err(|e| self.reject(e))?;
        let e = opcode::Timeout::new(p).build();
        let ud = self.user_data(idx);
        self.push(ring, idx, &[e.user_data(ud)])
    }

    /// SHUTDOWN (5.11+) of a socket: `how` is libc::SHUT_WR / SHUT_RD / SHUT_RDWR.
    pub fn shutdown<S: SqSink + ?Sized>(
        &mut self,
        ring: &mut S,
        fd: RawFd,
        how: i32,
        ctx: u64,
    ) -> Result<u64, Rejected<B>> {
        let idx = self.alloc(Op::Shutdown, ctx).map_err(|e| self.reject(e))?;
        let e = opcode::Shutdown::new(types::Fd(fd), how).build();
        let ud = self.user_data(idx);
        self.push(ring, idx, &[e.user_data(ud)])
    }

    /// MSG_RING (5.18+): posts a CQE with `target_user_data` and `value` as its res on
    /// the ring `target_ring_fd` (a wake-up or hand-off notice between workers). The
    /// target's CQE is not a netops one: give it a tag the target routes itself.
    pub fn msg_ring<S: SqSink + ?Sized>(
        &mut self,
        ring: &mut S,
        target_ring_fd: RawFd,
        value: i32,
        target_user_data: u64,
        ctx: u64,
    ) -> Result<u64, Rejected<B>> {
        let idx = self.alloc(Op::MsgRing, ctx).map_err(|e| self.reject(e))?;
        let e = opcode::MsgRingData::new(types::Fd(target_ring_fd), value, target_user_data, None)
            .build();
        let ud = self.user_data(idx);
        self.push(ring, idx, &[e.user_data(ud)])
    }

    /// Turns one CQE into a completion. `None` when the CQE is not this table's (other
    /// tag), or is stale (generation mismatch: a bug upstream; asserted in debug).
    pub fn complete(&mut self, user_data: u64, res: i32, flags: u32) -> Option<Completion<B>> {
        if !self.owns(user_data) {
            return None;
        }
        let idx = (user_data & 0xffff_ffff) as u32;
        let gen = ((user_data >> 32) as u32) & GEN_MASK;
        let slot = self.slots.get(idx as usize)?;
        if slot.gen != gen || matches!(slot.op, Op::Free { .. }) {
            debug_assert!(
                false,
                "CQE for a slot not in flight: user_data {user_data:#x}"
            );
            return None;
        }
        let ctx = slot.ctx;
        let more = flags & CQE_F_MORE != 0;
        match &mut self.slots[idx as usize].op {
            Op::Accept { multishot } => {
                let multishot = *multishot;
                let res = res_to(res).map(|fd| {
                    // SAFETY: a successful ACCEPT returns a fresh fd that nobody else owns.
                    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
                });
                let more = multishot && more;
                if !more {
                    self.release(idx);
                }
                Some(Completion::Accept { ctx, res, more })
            }
            Op::RecvMulti => {
                let sock_nonempty = flags & CQE_F_SOCK_NONEMPTY != 0;
                let res = res_to(res).map(|n| {
                    if flags & CQE_F_BUFFER != 0 {
                        Some(((flags >> 16) as u16, n as usize))
                    } else {
                        None
                    }
                });
                if !more {
                    self.release(idx);
                }
                Some(Completion::RecvMulti {
                    ctx,
                    res,
                    more,
                    sock_nonempty,
                })
            }
            Op::Recv { .. } => {
                let Op::Recv { buf, off } = self.release(idx) else {
                    unreachable!()
                };
                Some(Completion::Recv {
                    ctx,
                    res: res_to(res).map(|n| n as usize),
                    buf,
                    off,
                })
            }
            Op::Send { .. } => {
                let Op::Send { buf, off } = self.release(idx) else {
                    unreachable!()
                };
                Some(Completion::Send {
                    ctx,
                    res: res_to(res).map(|n| n as usize),
                    buf: Some(buf),
                    off,
                    zc: false,
                    notif_pending: false,
                })
            }
            Op::SendZc {
                result_seen, off, ..
            } => {
                if flags & CQE_F_NOTIF != 0 {
                    let copied = res & NOTIF_USAGE_ZC_COPIED != 0;
                    let Op::SendZc { buf, .. } = self.release(idx) else {
                        unreachable!()
                    };
                    return Some(Completion::SendZcNotif { ctx, buf, copied });
                }
                debug_assert!(!*result_seen, "two SEND_ZC results for one request");
                *result_seen = true;
                let off = *off;
                let r = res_to(res).map(|n| n as usize);
                if more {
                    Some(Completion::Send {
                        ctx,
                        res: r,
                        buf: None,
                        off,
                        zc: true,
                        notif_pending: true,
                    })
                } else {
                    let Op::SendZc { buf, .. } = self.release(idx) else {
                        unreachable!()
                    };
                    Some(Completion::Send {
                        ctx,
                        res: r,
                        buf: Some(buf),
                        off,
                        zc: true,
                        notif_pending: false,
                    })
                }
            }
            Op::Splice => {
                self.release(idx);
                Some(Completion::Splice {
                    ctx,
                    res: res_to(res).map(|n| n as usize),
                })
            }
            Op::Close => {
                self.release(idx);
                Some(Completion::Close {
                    ctx,
                    res: res_to(res).map(|_| ()),
                })
            }
            Op::Cancel => {
                self.release(idx);
                Some(Completion::Cancel {
                    ctx,
                    res: res_to(res),
                })
            }
            Op::Timeout { .. } => {
                self.release(idx);
                let r = match res {
                    r if r == -libc::ETIME => Ok(true),
                    r if r >= 0 => Ok(false),
                    r => Err(Errno(-r)),
                };
                Some(Completion::Timeout { ctx, res: r })
            }
            Op::Shutdown => {
                self.release(idx);
                Some(Completion::Shutdown {
                    ctx,
                    res: res_to(res).map(|_| ()),
                })
            }
            Op::MsgRing => {
                self.release(idx);
                Some(Completion::MsgRing {
                    ctx,
                    res: res_to(res).map(|_| ()),
                })
            }
            Op::Free { .. } => unreachable!(),
        }
    }
}

impl<B: IoBuf> Drop for NetOps<B> {
    fn drop(&mut self) {
        // Requests still in flight may be written by the kernel until the ring is
        // closed: leak their buffers instead of freeing memory the kernel can reach.
        if self.in_flight > 0 {
            for slot in self.slots.drain(..) {
                if !matches!(slot.op, Op::Free { .. }) {
                    std::mem::forget(slot.op);
                }
            }
        }
    }
}

/// Registers provided-buffer rings. Implemented for `io_uring::IoUring`; the engine's
/// own ring gets an impl once `sys::ring` lands.
pub trait PbufRegistrar {
    /// IORING_REGISTER_PBUF_RING.
    ///
    /// # Safety
    /// `ring_addr` must point at `entries` `io_uring_buf` slots, page aligned, valid until
    /// the group is unregistered or the ring is closed.
    unsafe fn register_pbuf_ring(&self, ring_addr: u64, entries: u16, bgid: u16) -> io::Result<()>;
    fn unregister_pbuf_ring(&self, bgid: u16) -> io::Result<()>;
}

impl PbufRegistrar for io_uring::IoUring {
    unsafe fn register_pbuf_ring(&self, ring_addr: u64, entries: u16, bgid: u16) -> io::Result<()> {
        // SAFETY: forwarded contract.
        unsafe {
            self.submitter()
                .register_buf_ring_with_flags(ring_addr, entries, bgid, 0)
        }
    }
    fn unregister_pbuf_ring(&self, bgid: u16) -> io::Result<()> {
        self.submitter().unregister_buf_ring(bgid)
    }
}

/// A provided-buffer ring (5.19+) for multishot receive: `entries` buffers of
/// `buf_len` bytes each, in one allocation, handed to the kernel through a shared ring
/// of `io_uring_buf` descriptors. The kernel picks a buffer per receive; the caller
/// reads it with [`PbufRing::get`] and gives it back with [`PbufRing::recycle`].
///
/// Local stand-in for `sys::bufring::BufRing` (owned by the ring helper) until that lands.
pub struct PbufRing {
    ring: *mut IoUringBuf,
    ring_bytes: usize,
    bufs: Box<[u8]>,
    buf_len: usize,
    entries: u16,
    mask: u16,
    tail: u16,
    bgid: u16,
    registered: bool,
    /// Buffers currently lent out (with the kernel or with the caller).
    out: Vec<bool>,
}

/// `struct io_uring_buf` (16 bytes); the ring's tail aliases `resv` of entry 0.
#[repr(C)]
struct IoUringBuf {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

// SAFETY: the mapping and the buffers are owned by this value; only `&mut self` methods
// write them, and the kernel side is synchronised through the tail's release store.
unsafe impl Send for PbufRing {}

impl PbufRing {
    /// Maps the descriptor ring and allocates the buffers. `entries` must be a power of
    /// two up to 32768; `buf_len` up to 4 GiB - 1.
    pub fn new(entries: u16, buf_len: usize, bgid: u16) -> io::Result<PbufRing> {
        if entries == 0 || !entries.is_power_of_two() || entries > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("buf-ring-entries must be a power of two from 1 to 32768, got {entries}"),
            ));
        }
        if buf_len == 0 || buf_len > u32::MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("recv-buf-bytes must be 1..4 GiB, got {buf_len}"),
            ));
        }
        let ring_bytes = (entries as usize * 16).next_multiple_of(4096);
        // SAFETY: anonymous private mapping, no fd; checked for MAP_FAILED below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let total = entries as usize * buf_len;
        let bufs = vec![0u8; total].into_boxed_slice();
        let mut r = PbufRing {
            ring: p.cast(),
            ring_bytes,
            bufs,
            buf_len,
            entries,
            mask: entries - 1,
            tail: 0,
            bgid,
            registered: false,
            out: vec![true; entries as usize],
        };
        for bid in 0..entries {
            r.stage(bid);
        }
        r.publish();
        Ok(r)
    }

    pub fn bgid(&self) -> u16 {
        self.bgid
    }
    pub fn buf_len(&self) -> usize {
        self.buf_len
    }
    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// Registers the ring with the kernel as group `bgid`.
    pub fn register<R: PbufRegistrar + ?Sized>(&mut self, ring: &R) -> io::Result<()> {
        // SAFETY: self.ring is a page-aligned mapping of `entries` descriptors, alive
        // until drop; the caller unregisters (or closes the ring) before dropping us,
        // see `unregister`; buffers stay allocated as long as `self` lives.
        unsafe { ring.register_pbuf_ring(self.ring as u64, self.entries, self.bgid)? };
        self.registered = true;
        Ok(())
    }

    pub fn unregister<R: PbufRegistrar + ?Sized>(&mut self, ring: &R) -> io::Result<()> {
        ring.unregister_pbuf_ring(self.bgid)?;
        self.registered = false;
        Ok(())
    }

    fn stage(&mut self, bid: u16) {
        let i = (self.tail & self.mask) as usize;
        // SAFETY: i < entries, inside the mapping; `bid` < entries so the address is
        // inside `bufs`. Writing `resv` of entry 0 would clobber the tail, so only the
        // first three fields are written.
        unsafe {
            let d = self.ring.add(i);
            std::ptr::addr_of_mut!((*d).addr)
                .write(self.bufs.as_ptr().add(bid as usize * self.buf_len) as u64);
            std::ptr::addr_of_mut!((*d).len).write(self.buf_len as u32);
            std::ptr::addr_of_mut!((*d).bid).write(bid);
        }
        self.out[bid as usize] = false;
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&mut self) {
        // SAFETY: the tail is the u16 at byte offset 14 of the mapping (entry 0's resv),
        // naturally aligned; the kernel reads it with an acquire load.
        let tail = unsafe { &*(self.ring.cast::<u8>().add(14) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
    }

    /// The kernel filled buffer `bid` with `len` bytes (from a RecvMulti completion):
    /// mark it lent to the caller and borrow its bytes.
    pub fn get(&mut self, bid: u16, len: usize) -> &[u8] {
        assert!(
            bid < self.entries && len <= self.buf_len,
            "buffer id {bid} / length {len} out of range"
        );
        self.out[bid as usize] = true;
        let start = bid as usize * self.buf_len;
        &self.bufs[start..start + len]
    }

    /// Gives buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        assert!(bid < self.entries, "buffer id {bid} out of range");
        assert!(self.out[bid as usize], "buffer {bid} recycled twice");
        self.stage(bid);
        self.publish();
    }

    /// Gives several buffers back with one tail update.
    pub fn recycle_many(&mut self, bids: &[u16]) {
        for &b in bids {
            assert!(
                b < self.entries && self.out[b as usize],
                "buffer {b} out of range or recycled twice"
            );
            self.stage(b);
        }
        self.publish();
    }
}

impl Drop for PbufRing {
    fn drop(&mut self) {
        // If still registered, the kernel may yet write into the buffers: leak them
        // rather than free memory the kernel can reach (the ring's close ends that).
        if self.registered {
            let bufs = std::mem::take(&mut self.bufs);
            std::mem::forget(bufs);
            return;
        }
        // SAFETY: the mapping was created in `new` with this size and is no longer shared.
        unsafe { libc::munmap(self.ring.cast(), self.ring_bytes) };
    }
}

/// setsockopt helpers for listeners and connections (plain syscalls, done once per socket).
pub mod sockopt {
    use super::*;

    fn set_int(fd: RawFd, level: i32, name: i32, v: i32) -> io::Result<()> {
        // SAFETY: passes a pointer to a live i32 and its size.
        let r = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&v as *const i32).cast(),
                std::mem::size_of::<i32>() as u32,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    pub fn set_nodelay(fd: RawFd, on: bool) -> io::Result<()> {
        set_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, on as i32)
    }
    pub fn set_reuseport(fd: RawFd) -> io::Result<()> {
        set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)
    }
    pub fn set_reuseaddr(fd: RawFd) -> io::Result<()> {
        set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
    }
    pub fn set_sndbuf(fd: RawFd, bytes: i32) -> io::Result<()> {
        set_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, bytes)
    }
    pub fn set_rcvbuf(fd: RawFd, bytes: i32) -> io::Result<()> {
        set_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, bytes)
    }
    pub fn set_zerocopy(fd: RawFd) -> io::Result<()> {
        set_int(fd, libc::SOL_SOCKET, libc::SO_ZEROCOPY, 1)
    }

    /// A listening socket's accept queue: (connections established and waiting to be
    /// accepted, the queue's limit), from TCP_INFO (for a listener the kernel reports
    /// them as tcpi_unacked and tcpi_sacked; `ss -ltn` shows them as Recv-Q and Send-Q).
    pub fn accept_queue(fd: RawFd) -> io::Result<(u32, u32)> {
        // SAFETY: all-zero is a valid tcp_info.
        let mut ti: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: passes a pointer to a live tcp_info and its size; the kernel writes at
        // most `len` bytes and stores how many in `len`.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut ti as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((ti.tcpi_unacked, ti.tcpi_sacked))
    }

    /// SO_LINGER on with a 0 s timeout: closing the socket then sends a RST instead of a
    /// FIN (what a crashing peer looks like; tests use it to reset connections).
    pub fn set_linger_zero(fd: RawFd) -> io::Result<()> {
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: passes a pointer to a live linger struct and its size.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&l as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as u32,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// A TCP listener on `addr` with SO_REUSEADDR and optionally SO_REUSEPORT, backlog
    /// `backlog`, close-on-exec. Returned as a std listener (blocking; the ring accepts).
    pub fn listen(
        addr: std::net::SocketAddr,
        reuseport: bool,
        backlog: i32,
    ) -> io::Result<std::net::TcpListener> {
        let domain = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fd we own.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        set_reuseaddr(fd)?;
        if reuseport {
            set_reuseport(fd)?;
        }
        let (storage, len) = sockaddr(addr);
        // SAFETY: storage holds a valid sockaddr of `len` bytes.
        if unsafe { libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: plain listen(2) on our fd.
        if unsafe { libc::listen(fd, backlog) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(std::net::TcpListener::from(owned))
    }

    fn sockaddr(addr: std::net::SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        match addr {
            std::net::SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as u16,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_in fits in sockaddr_storage.
                unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
                (ss, std::mem::size_of::<libc::sockaddr_in>() as u32)
            }
            std::net::SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as u16,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: sockaddr_in6 fits in sockaddr_storage.
                unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
                (ss, std::mem::size_of::<libc::sockaddr_in6>() as u32)
            }
        }
    }
}

/// Pins the calling thread to `cpu` (sched_setaffinity), for `net.workers-pin = cores`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {cpu} is beyond CPU_SETSIZE"),
        ));
    }
    // SAFETY: an all-zero cpu_set_t is valid; CPU_SET writes inside it (cpu < CPU_SETSIZE);
    // sched_setaffinity reads `size_of` bytes of it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A second, read-only O_DIRECT descriptor of the file open as `fd` (through
/// /proc/self/fd), so a replay can be served with O_DIRECT reads while its writer or the
/// page-cache readers keep their own descriptor.
pub fn reopen_direct(fd: RawFd) -> io::Result<OwnedFd> {
    let path =
        std::ffi::CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in a formatted path");
    // SAFETY: a valid NUL-terminated path; the result is checked.
    let r = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECT | libc::O_CLOEXEC,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open returned a fresh fd that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// What a ring shared by socket and file operations must provide.
pub trait MuxBase {
    /// # Safety
    /// As [`SqSink::push_sqe`].
    unsafe fn base_push(&mut self, e: &Entry) -> bool;
    fn base_sq_space(&self) -> usize;
    /// SQ entries in all.
    fn base_sq_capacity(&self) -> usize;
    fn base_submit(&mut self) -> io::Result<usize>;
    /// Blocks until the kernel has consumed SQ entries (SQPOLL: IORING_ENTER_SQ_WAIT,
    /// waking the SQ thread if it sleeps); other rings submit.
    fn base_wait_sq_space(&mut self) -> io::Result<()>;
    /// Submits and waits for `want` CQEs, or until `timeout` passes.
    fn base_wait(&mut self, want: usize, timeout: Option<Duration>) -> io::Result<usize>;
    /// Pops one CQE: (user_data, res, flags).
    fn base_pop(&mut self) -> Option<(u64, i32, u32)>;
    /// # Safety
    /// As `fileops::RingOps::register_buffers`.
    unsafe fn base_register_buffers(&mut self, iov: &[libc::iovec]) -> io::Result<()>;
    fn base_register_files(&mut self, fds: &[RawFd]) -> io::Result<()>;
}

impl MuxBase for io_uring::IoUring {
    unsafe fn base_push(&mut self, e: &Entry) -> bool {
        // SAFETY: forwarded contract.
        unsafe { self.push_sqe(e) }
    }
    fn base_sq_space(&self) -> usize {
        self.sq_space()
    }
    fn base_sq_capacity(&self) -> usize {
        self.sq_capacity()
    }
    fn base_submit(&mut self) -> io::Result<usize> {
        self.submit()
    }
    fn base_wait_sq_space(&mut self) -> io::Result<()> {
        SqSink::wait_sq_space(self)
    }
    fn base_wait(&mut self, want: usize, timeout: Option<Duration>) -> io::Result<usize> {
        match timeout {
            Some(t) => {
                let ts = types::Timespec::new()
                    .sec(t.as_secs())
                    .nsec(t.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.submitter().submit_with_args(want, &args)
            }
            None => self.submit_and_wait(want),
        }
    }
    fn base_pop(&mut self) -> Option<(u64, i32, u32)> {
        self.completion()
            .next()
            .map(|c| (c.user_data(), c.result(), c.flags()))
    }
    unsafe fn base_register_buffers(&mut self, iov: &[libc::iovec]) -> io::Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.submitter().register_buffers(iov) }
    }
    fn base_register_files(&mut self, fds: &[RawFd]) -> io::Result<()> {
        self.submitter().register_files(fds)
    }
}

/// `user_data` of the TIMEOUT a timed wait on the engine's ring pushes; its CQE is
/// dropped by [`RingWithTimer`]'s pop.
pub const MUX_WAIT_TIMER: u64 = 0xfe << 56;

/// The engine's own ring (every setup flag) with a timed wait: the ring has none, so a
/// timed wait pushes one TIMEOUT whose timespec lives here.
pub struct RingWithTimer {
    pub ring: super::ring::Ring,
    ts: Box<types::Timespec>,
    timer_armed: bool,
}

impl RingWithTimer {
    pub fn new(ring: super::ring::Ring) -> Self {
        RingWithTimer {
            ring,
            ts: Box::new(types::Timespec::new()),
            timer_armed: false,
        }
    }
}

impl MuxBase for RingWithTimer {
    unsafe fn base_push(&mut self, e: &Entry) -> bool {
        // SAFETY: forwarded contract.
        unsafe { self.ring.push(e).is_ok() }
    }
    fn base_sq_space(&self) -> usize {
        self.ring.sq_space_left()
    }
    fn base_sq_capacity(&self) -> usize {
        self.ring.sq_entries() as usize
    }
    fn base_submit(&mut self) -> io::Result<usize> {
        self.ring.submit()
    }
    fn base_wait_sq_space(&mut self) -> io::Result<()> {
        self.ring.wait_sq_space()
    }
    fn base_wait(&mut self, want: usize, timeout: Option<Duration>) -> io::Result<usize> {
        if let Some(t) = timeout {
            if !self.timer_armed && self.ring.cq_ready() == 0 {
                // The kernel copies the timespec when it prepares the request, which with
                // SQPOLL happens later on the SQ thread: the boxed timespec stays put for
                // the ring's life and is rewritten only while no timer is armed.
                *self.ts = types::Timespec::new()
                    .sec(t.as_secs())
                    .nsec(t.subsec_nanos());
                let e = opcode::Timeout::new(&*self.ts)
                    .build()
                    .user_data(MUX_WAIT_TIMER);
                // SAFETY: the timespec is owned by self and outlives the request.
                if unsafe { self.ring.push(&e) }.is_ok() {
                    self.timer_armed = true;
                }
            }
        }
        self.ring.submit_and_wait(want)
    }
    fn base_pop(&mut self) -> Option<(u64, i32, u32)> {
        loop {
            let c = self.ring.pop_cqe()?;
            if c.user_data == MUX_WAIT_TIMER {
                self.timer_armed = false;
                continue;
            }
            return Some((c.user_data, c.res, c.flags));
        }
    }
    unsafe fn base_register_buffers(&mut self, iov: &[libc::iovec]) -> io::Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.ring.register_buffers(iov) }
    }
    fn base_register_files(&mut self, fds: &[RawFd]) -> io::Result<()> {
        self.ring.register_files(fds)
    }
}

/// `user_data` top byte of file operations on a [`MuxRing`].
pub const MUX_TAG_FILE: u8 = 2;

/// One ring shared by socket ops ([`NetOps`], any tag but [`MUX_TAG_FILE`]) and file ops
/// (`sys::fileops::FileOps` through a [`FileView`]). CQEs are routed by the top byte of
/// `user_data` into two queues, so each user sees only its own.
pub struct MuxRing<R: MuxBase> {
    pub ring: R,
    file_cqes: std::collections::VecDeque<(u64, i32, u32)>,
    other_cqes: std::collections::VecDeque<(u64, i32, u32)>,
    /// io_uring_enter calls made through this value.
    pub enters: u64,
    /// IORING_SETUP_* bits in effect (recorded by the builder).
    pub setup_flags: u32,
}

impl<R: MuxBase> MuxRing<R> {
    pub fn new(ring: R, setup_flags: u32) -> Self {
        MuxRing {
            ring,
            file_cqes: Default::default(),
            other_cqes: Default::default(),
            enters: 0,
            setup_flags,
        }
    }
    /// Moves every CQE in the CQ to its user's queue.
    pub fn route(&mut self) {
        while let Some((ud, res, flags)) = self.ring.base_pop() {
            if (ud >> 56) as u8 == MUX_TAG_FILE {
                self.file_cqes.push_back((ud & ((1 << 56) - 1), res, flags));
            } else {
                self.other_cqes.push_back((ud, res, flags));
            }
        }
    }
    /// Next non-file CQE already routed.
    pub fn pop_other(&mut self) -> Option<(u64, i32, u32)> {
        self.other_cqes.pop_front()
    }
    pub fn has_routed(&self) -> bool {
        !self.other_cqes.is_empty() || !self.file_cqes.is_empty()
    }
    /// Submits and waits for one CQE (or `timeout`); EINTR/EAGAIN/EBUSY/ETIME are not errors.
    pub fn wait(&mut self, want: usize, timeout: Option<Duration>) -> io::Result<()> {
        self.enters += 1;
        match self.ring.base_wait(want, timeout) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY | libc::ETIME)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

impl<R: MuxBase> SqSink for MuxRing<R> {
    unsafe fn push_sqe(&mut self, e: &Entry) -> bool {
        debug_assert!(
            (e.get_user_data() >> 56) as u8 != MUX_TAG_FILE,
            "socket op uses the file tag"
        );
        // SAFETY: forwarded contract.
        unsafe { self.ring.base_push(e) }
    }
    fn sq_space(&self) -> usize {
        self.ring.base_sq_space()
    }
    fn flush(&mut self) -> io::Result<usize> {
        self.enters += 1;
        self.ring.base_submit()
    }
    fn sq_capacity(&self) -> usize {
        self.ring.base_sq_capacity()
    }
    fn wait_sq_space(&mut self) -> io::Result<()> {
        // Move posted CQEs to user space first: a kernel with completions it cannot
        // post (EBUSY) makes room in the CQ before it consumes more SQEs.
        self.route();
        self.enters += 1;
        self.ring.base_wait_sq_space()
    }
}

/// `FileOps`' view of a [`MuxRing`]: tags its user_data with [`MUX_TAG_FILE`] and pops
/// only file CQEs.
pub struct FileView<R: MuxBase>(pub std::rc::Rc<std::cell::RefCell<MuxRing<R>>>);

impl<R: MuxBase> super::fileops::RingOps for FileView<R> {
    unsafe fn push_sqe(&mut self, sqe: &Entry) -> Result<(), ()> {
        let ud = sqe.get_user_data();
        assert!(ud >> 56 == 0, "fileops user_data {ud:#x} uses the tag byte");
        let e = sqe.clone().user_data(ud | ((MUX_TAG_FILE as u64) << 56));
        let mut s = self.0.borrow_mut();
        // SAFETY: forwarded contract (same buffers; only user_data changed).
        if unsafe { s.ring.base_push(&e) } {
            Ok(())
        } else {
            Err(())
        }
    }
    fn submit(&mut self) -> io::Result<usize> {
        let mut s = self.0.borrow_mut();
        if s.ring.base_sq_space() == 0 {
            // FileOps calls this when a push found the SQ full. With SQPOLL a plain
            // submit may return before the SQ thread has taken anything (a busy spin):
            // wait for room instead.
            SqSink::wait_sq_space(&mut *s)?;
            return Ok(0);
        }
        s.enters += 1;
        s.ring.base_submit()
    }
    fn submit_and_wait(&mut self, want: usize) -> io::Result<usize> {
        let mut s = self.0.borrow_mut();
        if s.file_cqes.len() < want {
            s.wait(1, None)?;
            s.route();
        }
        Ok(0)
    }
    fn pop(&mut self) -> Option<(u64, i32, u32)> {
        let mut s = self.0.borrow_mut();
        if s.file_cqes.is_empty() {
            s.route();
        }
        s.file_cqes.pop_front()
    }
    unsafe fn register_buffers(&mut self, iov: &[libc::iovec]) -> io::Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.0.borrow_mut().ring.base_register_buffers(iov) }
    }
    fn register_files(&mut self, fds: &[RawFd]) -> io::Result<()> {
        self.0.borrow_mut().ring.base_register_files(fds)
    }
    fn enter_calls(&self) -> u64 {
        self.0.borrow().enters
    }
    fn setup_flags(&self) -> u32 {
        self.0.borrow().setup_flags
    }
}

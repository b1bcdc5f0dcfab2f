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

use super::target::on_target;
pub use super::target::{Fd, FileTarget, Fixed, Target};

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
/// `IORING_SEND_VECTORIZED` (6.17): `addr`/`len` of SEND and SEND_ZC are an iovec array
/// and its count.
pub const SEND_VECTORIZED: u16 = 1 << 5;
/// `IORING_CQE_F_BUF_MORE` (6.12): an incrementally consumed buffer stays in use.
pub const CQE_F_BUF_MORE: u32 = 1 << 4;

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
    /// The bytes of an arena slot from an offset on (an O_DIRECT chunk after its skip).
    SlotAt(super::mem::Slot, usize),
}

impl NetBuf {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            NetBuf::Heap(v) => v,
            NetBuf::Slot(s) => s.as_slice(),
            NetBuf::SlotAt(s, off) => &s.as_slice()[*off..],
        }
    }
}

// SAFETY: both variants are stable-address buffers (see their impls).
unsafe impl IoBuf for NetBuf {
    fn ptr(&self) -> *const u8 {
        match self {
            NetBuf::Heap(v) => v.ptr(),
            NetBuf::Slot(s) => s.ptr(),
            // SAFETY: the offset is within the slot's length (set by its creator).
            NetBuf::SlotAt(s, off) => unsafe { s.ptr().add((*off).min(IoBuf::len(s))) },
        }
    }
    fn ptr_mut(&mut self) -> *mut u8 {
        match self {
            NetBuf::Heap(v) => v.ptr_mut(),
            NetBuf::Slot(s) => s.ptr_mut(),
            // SAFETY: as for `ptr`.
            NetBuf::SlotAt(s, off) => unsafe { s.ptr_mut().add((*off).min(IoBuf::len(s))) },
        }
    }
    fn len(&self) -> usize {
        match self {
            NetBuf::Heap(v) => IoBuf::len(v),
            NetBuf::Slot(s) => IoBuf::len(s),
            NetBuf::SlotAt(s, off) => IoBuf::len(s).saturating_sub(*off),
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

/// A socket the caller owns: a plain descriptor, or a slot of the ring's registered-file
/// table (a direct descriptor: no fd exists; IOSQE_FIXED_FILE names it).
#[derive(Debug)]
pub enum Socket {
    Fd(OwnedFd),
    Direct(u32),
}

impl Socket {
    /// How SQEs name it.
    pub fn target(&self) -> Target {
        match self {
            Socket::Fd(f) => Target::Fd(f.as_raw_fd()),
            Socket::Direct(i) => Target::Fixed(*i),
        }
    }
    /// The plain descriptor, if it has one.
    pub fn raw_fd(&self) -> Option<RawFd> {
        match self {
            Socket::Fd(f) => Some(f.as_raw_fd()),
            Socket::Direct(_) => None,
        }
    }
}

/// One finished (or progressing, for multishot) operation.
#[derive(Debug)]
pub enum Completion<B> {
    /// A connection accepted (owned by the caller now: an fd, or with a direct accept a
    /// slot of the file table), or an error. `more == false`: the accept request is over
    /// (single-shot, or multishot ended): re-arm.
    Accept {
        ctx: u64,
        res: Result<Socket, Errno>,
        more: bool,
    },
    /// Single-shot receive into `buf[off..]`: `Ok(0)` is end of stream.
    Recv {
        ctx: u64,
        res: Result<usize, Errno>,
        buf: B,
        off: usize,
    },
    /// One multishot receive result. `Ok((bid, len))`: the data starts in provided buffer
    /// `bid` of the group (and, for a bundle, continues in the next ones in ring order:
    /// `sys::bufring::BufRing::consume`). `Ok(None)` is end of stream. `more == false`:
    /// the request ended (ENOBUFS when the group ran dry, EOF, an error, or
    /// cancellation): re-arm if wanted. `buf_more`: IORING_CQE_F_BUF_MORE (an incremental
    /// buffer the kernel keeps filling).
    RecvMulti {
        ctx: u64,
        res: Result<Option<(u16, usize)>, Errno>,
        more: bool,
        sock_nonempty: bool,
        bundle: bool,
        buf_more: bool,
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
    /// A vectored send's result (IORING_SEND_VECTORIZED): bytes sent from `bufs` (the
    /// first from `off`). `bufs` is empty when a SEND_ZC notification follows.
    SendV {
        ctx: u64,
        res: Result<usize, Errno>,
        bufs: Vec<B>,
        off: usize,
        zc: bool,
        notif_pending: bool,
    },
    /// The SEND_ZC notification: the kernel no longer references the buffer(s).
    /// `copied`: the kernel copied instead of sending from the pages (loopback does).
    SendZcNotif {
        ctx: u64,
        bufs: Vec<B>,
        copied: bool,
    },
    /// SPLICE result: bytes moved. `in_skipped`: this is the second half of a
    /// file -> pipe -> socket pair whose first half succeeded with its CQE skipped
    /// (IOSQE_CQE_SKIP_SUCCESS): it moved `.1` bytes into the pipe (its ctx is `.0`); handle
    /// that first. `out_cancelled`: this is the first half, which failed or was short, and
    /// the second half (ctx given) was cancelled (ECANCELED) before this CQE came; handle
    /// that after.
    Splice {
        ctx: u64,
        res: Result<usize, Errno>,
        in_skipped: Option<(u64, usize)>,
        out_cancelled: Option<u64>,
    },
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
    /// An operation sent without a table slot (IOSQE_CQE_SKIP_SUCCESS: a close, cancel or
    /// MSG_RING whose success carries nothing) failed: its CQE came after all.
    Unslotted { res: Errno },
}

enum Op<B> {
    Free {
        next: u32,
    },
    Accept {
        multishot: bool,
        direct: bool,
    },
    Recv {
        buf: B,
        off: usize,
    },
    RecvMulti {
        bundle: bool,
    },
    Send {
        buf: B,
        off: usize,
    },
    SendZc {
        buf: B,
        off: usize,
        result_seen: bool,
    },
    SendV {
        bufs: Vec<B>,
        _iov: Box<[libc::iovec]>,
        off: usize,
        zc: bool,
        result_seen: bool,
    },
    Splice,
    /// The first half of a linked pair sent with IOSQE_CQE_SKIP_SUCCESS: released by the
    /// second half's CQE when its own never comes.
    SpliceHead {
        len: u32,
        tail: u32,
        /// The second half's ctx once it came back cancelled (this one then failed).
        out_cancelled: Option<u64>,
    },
    SpliceTail {
        head: Option<u32>,
    },
    Close,
    Cancel,
    Timeout {
        _ts: Box<types::Timespec>,
    },
    MsgRing,
    Shutdown,
}

// SAFETY: the iovec array of SendV only points into buffers owned by the same Op.
unsafe impl<B: Send> Send for Op<B> {}

struct Slot<B> {
    op: Op<B>,
    ctx: u64,
    gen: u32,
}

const NONE: u32 = u32::MAX;
const GEN_MASK: u32 = 0x00ff_ffff;
/// Index bits of `user_data` for operations without a slot (IOSQE_CQE_SKIP_SUCCESS).
const UNSLOTTED: u32 = u32::MAX;

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
    /// IOSQE_CQE_SKIP_SUCCESS on closes, cancels, MSG_RING and splice link heads.
    skip_success: bool,
}

/// Counters of one table, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetOpsStats {
    pub capacity: usize,
    pub in_flight: usize,
}

/// How a send goes out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendOpts {
    /// IORING_OP_SEND_ZC (6.0+): two CQEs, the buffer kept until the notification.
    pub zc: bool,
    /// With `zc`: the buffer is registered buffer `index` (IORING_RECVSEND_FIXED_BUF):
    /// no page pinning per send.
    pub fixed_buf: Option<u16>,
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
            skip_success: false,
        }
    }

    /// With `on`, operations whose success carries nothing (closes, cancels, MSG_RING
    /// wake-ups and the first half of a splice pair) are sent with IOSQE_CQE_SKIP_SUCCESS
    /// (5.17+): no CQE unless they fail.
    pub fn set_skip_success(&mut self, on: bool) {
        self.skip_success = on;
    }

    pub fn skip_success(&self) -> bool {
        self.skip_success
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

    fn unslotted_user_data(&self) -> u64 {
        ((self.tag as u64) << 56) | ((GEN_MASK as u64) << 32) | UNSLOTTED as u64
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

    /// Makes room for `n` SQEs (flushing, then waiting for the kernel when the SQ stays
    /// full). Errors only when the SQ is smaller than `n` or a flush fails hard.
    fn make_room<S: SqSink + ?Sized>(&mut self, ring: &mut S, n: usize) -> Result<(), SubmitError> {
        if n > ring.sq_capacity() {
            return Err(SubmitError::SqFull);
        }
        let mut flushed = false;
        while ring.sq_space() < n {
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
                Err(e) => return Err(SubmitError::Flush(e)),
            }
        }
        Ok(())
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
        if let Err(error) = self.make_room(ring, entries.len()) {
            let op = self.release(idx);
            return Err(Rejected {
                error,
                buf: Self::take_buf(op),
            });
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

    /// Pushes an entry that owns no memory with IOSQE_CQE_SKIP_SUCCESS and no slot: only
    /// a failure comes back ([`Completion::Unslotted`]).
    fn push_unslotted<S: SqSink + ?Sized>(
        &mut self,
        ring: &mut S,
        e: Entry,
    ) -> Result<u64, Rejected<B>> {
        self.make_room(ring, 1)
            .map_err(|error| Rejected { error, buf: None })?;
        let ud = self.unslotted_user_data();
        let e = e.flags(Flags::SKIP_SUCCESS).user_data(ud);
        // SAFETY: the entry references no memory (close, cancel, MSG_RING data).
        let ok = unsafe { ring.push_sqe(&e) };
        assert!(ok, "SQ had room but refused a push");
        Ok(ud)
    }

    fn reject(&mut self, e: (SubmitError, Op<B>)) -> Rejected<B> {
        Rejected {
            error: e.0,
            buf: Self::take_buf(e.1),
        }
    }

    /// ACCEPT on `listener` (SOCK_CLOEXEC). Multishot (5.19+) keeps posting one CQE per
    /// connection with F_MORE until it ends. `direct`: each connection goes into a free
    /// slot of the registered-file table (IORING_FILE_INDEX_ALLOC, 5.19+) and comes back
    /// as [`Socket::Direct`].
    pub fn accept<S: SqSink + ?Sized>(
        &mut self,
        ring: &mut S,
        listener: impl FileTarget,
        multishot: bool,
        direct: bool,
        ctx: u64,
    ) -> Result<u64, Rejected<B>> {
        let idx = self
            .alloc(Op::Accept { multishot, direct }, ctx)
            .map_err(|e| self.reject(e))?;
        // A direct descriptor has no close-on-exec flag (the kernel refuses SOCK_CLOEXEC
        // with a file slot: EINVAL).
        let flags = if direct { 0 } else { libc::SOCK_CLOEXEC };
        let e = on_target!(listener.target(), fd => if multishot {
            opcode::AcceptMulti::new(fd)
                .allocate_file_index(direct)
                .flags(flags)
                .build()
        } else {
            opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut())
                .file_index(direct.then(types::DestinationSlot::auto_target))
                .flags(flags)
                .build()
        });
        let ud = self.user_data(idx);
        self.push(ring, idx, &[e.user_data(ud)])
    }

    /// Single-shot RECV into `buf[off..]`.
    pub fn recv<S: SqSink + ?Sized>(
        &mut self,
        ring: &mut S,
        sock: impl FileTarget,
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
        let e = on_target!(sock.target(), fd => opcode::Recv::new(fd, p, len).build());
        let ud = self.user_data(idx);
        self.push(ring, idx, &[e.user_data(ud)])
    }

    /// Multishot RECV (6.0+) picking buffers from provided-buffer group `bgid` (len 0);
    /// `bundle`: each completion may fill several buffers (IORING_RECVSEND_BUNDLE, 6.10+).
    pub fn recv_multishot<S: SqSink + ?Sized>(
        &mut self,
        ring: &mut S,
        sock: impl FileTarget,
        bgid: u16,
        bundle: bool,
        ctx: u64,
    ) -> Result<u64, Rejected<B>> {
        let idx = self
            .alloc(Op::RecvMulti { bundle }, ctx)
            .map_err(|e| self.reject(e))?;
        let e = on_target!(sock.target(), fd => if bundle {
            opcode::RecvMultiBundle::new(fd, bgid).build()
        } else {
            opcode::RecvMulti::new(fd, bgid).build()
        });
        let ud = self.user_data(idx);
        self.push(ring, idx, &[e.user_data(ud)])
    }

    fn send_flags(&self) -> i32 {
        libc::MSG_NOSIGNAL
            | if self.send_waitall {
                libc::MSG_WAITALL
            } else {
                0
            }
    }

    /// SEND of `buf[off..]`, or SEND_ZC (6.0+) when `zc`. With `send_waitall` the kernel
    /// finishes short sends itself; a short count can still come back (error midway).
    pub fn send<S: SqSink + ?Sized>(
        &mut self,
        ring: &mut S,
        sock: impl FileTarget,
        buf: B,
        off: usize,
        zc: bool,
        ctx: u64,
    ) -> Result<u64, Rejected<B>> {
        self.send_opts(
            ring,
            sock,
            buf,
            off,
            SendOpts {
                zc,
                fixed_buf: None,
            },
            ctx,
        )
    }

    /// [`NetOps::send`] with [`SendOpts`] (SEND_ZC from a registered buffer).
    pub fn send_opts<S: SqSink + ?Sized>(
        &mut self,
        ring: &mut S,
        sock: impl FileTarget,
        buf: B,
        off: usize,
        opts: SendOpts,
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
        let zc = opts.zc;
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
        let flags = self.send_flags();
        let e = on_target!(sock.target(), fd => if zc {
            opcode::SendZc::new(fd, p, len)
                .flags(flags)
                .zc_flags(SEND_ZC_REPORT_USAGE)
                .buf_index(opts.fixed_buf)
                .build()
        } else {
            opcode::Send::new(fd, p, len).flags(flags).build()
        });
        let ud = self.user_data(idx);
        self.push(ring, idx, &[e.user_data(ud)])
    }

    /// One SEND (or SEND_ZC) of several buffers, `bufs[0]` from `off` (IORING_SEND_VECTORIZED,
    /// 6.17+): a header and a body chunk, or queued messages, without copying them into
    /// one buffer first. The buffers come back in [`Completion::SendV`] (for SEND_ZC in
    /// the notification).
    pub fn send_vectored<S: SqSink + ?Sized>(
        &mut self,
        ring: &mut S,
        sock: impl FileTarget,
        bufs: Vec<B>,
        off: usize,
        zc: bool,
        ctx: u64,
    ) -> Result<u64, Rejected<B>> {
        if bufs.is_empty() || off >= bufs[0].len() || bufs.len() > 1024 {
            let mut bufs = bufs;
            return Err(Rejected {
                error: SubmitError::BadArgument(
                    "vectored send: 1..=1024 buffers, offset inside the first",
                ),
                buf: if bufs.is_empty() {
                    None
                } else {
                    Some(bufs.remove(0))
                },
            });
        }
        let iov: Box<[libc::iovec]> = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let skip = if i == 0 { off } else { 0 };
                libc::iovec {
                    // SAFETY: skip < len for the first buffer (checked), 0 for the others.
                    iov_base: unsafe { b.ptr().add(skip) } as *mut libc::c_void,
                    iov_len: b.len() - skip,
                }
            })
            .collect();
        let (iov_ptr, n) = (iov.as_ptr(), iov.len() as u32);
        let idx = self
            .alloc(
                Op::SendV {
                    bufs,
                    _iov: iov,
                    off,
                    zc,
                    result_seen: false,
                },
                ctx,
            )
            .map_err(|e| self.reject(e))?;
        let flags = self.send_flags();
        // The builders take a byte pointer and length; with IORING_SEND_VECTORIZED the
        // kernel reads them as the iovec array and its count.
        let p = iov_ptr as *const u8;
        let e = on_target!(sock.target(), fd => if zc {
            opcode::SendZc::new(fd, p, n)
                .flags(flags)
                .zc_flags(SEND_ZC_REPORT_USAGE | SEND_VECTORIZED)
                .build()
        } else {
            opcode::Send::new(fd, p, n)
                .flags(flags)
                .ioprio(SEND_VECTORIZED)
                .build()
        });
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
        fd_in: impl FileTarget,
        off_in: i64,
        fd_out: impl FileTarget,
        off_out: i64,
        len: u32,
        link: bool,
        ctx: u64,
    ) -> Result<u64, Rejected<B>> {
        let idx = self.alloc(Op::Splice, ctx).map_err(|e| self.reject(e))?;
        let e = splice_sqe(fd_in.target(), off_in, fd_out.target(), off_out, len, link);
        let ud = self.user_data(idx);
        self.push(ring, idx, &[e.user_data(ud)])
    }

    /// File -> pipe -> socket as two linked SPLICEs: `len` bytes of `file` at `off`
    /// into `pipe`, then out of the pipe into `sock`. `len` must fit the pipe. Two
    /// `Splice` completions come back with `ctx_in` and `ctx_out`; a short first one
    /// cancels the second (ECANCELED), and the caller drains the pipe with one more
    /// [`NetOps::splice`] of the count the first one moved. With skip-success on, the
    /// first half's CQE comes only if it fails or is short; otherwise the second half's
    /// completion says what it moved (`in_skipped`).
    #[allow(clippy::too_many_arguments)]
    pub fn splice_file_to_socket<S: SqSink + ?Sized>(
        &mut self,
        ring: &mut S,
        file: impl FileTarget,
        off: u64,
        pipe: &Pipe,
        sock: impl FileTarget,
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
        self.make_room(ring, 2)
            .map_err(|error| Rejected { error, buf: None })?;
        let skip = self.skip_success;
        let a = self
            .alloc(
                if skip {
                    Op::SpliceHead {
                        len,
                        tail: NONE,
                        out_cancelled: None,
                    }
                } else {
                    Op::Splice
                },
                ctx_in,
            )
            .map_err(|e| self.reject(e))?;
        let b = match self.alloc(
            Op::SpliceTail {
                head: skip.then_some(a),
            },
            ctx_out,
        ) {
            Ok(b) => b,
            Err(e) => {
                self.release(a);
                return Err(self.reject(e));
            }
        };
        if let Op::SpliceHead { tail, .. } = &mut self.slots[a as usize].op {
            *tail = b;
        }
        let mut first = splice_sqe(
            file.target(),
            off as i64,
            Target::Fd(pipe.write.as_raw_fd()),
            -1,
            len,
            true,
        );
        if skip {
            first = first.flags(Flags::SKIP_SUCCESS);
        }
        let second = splice_sqe(
            Target::Fd(pipe.read.as_raw_fd()),
            -1,
            sock.target(),
            -1,
            len,
            false,
        );
        let (ua, ub) = (self.user_data(a), self.user_data(b));
        for e in [first.user_data(ua), second.user_data(ub)] {
            // SAFETY: splices reference no memory; room was made above.
            let ok = unsafe { ring.push_sqe(&e) };
            assert!(ok, "SQ had room for a linked pair but refused a push");
        }
        Ok((ua, ub))
    }

    /// CLOSE through the ring; the socket (fd, or direct slot) is consumed. With
    /// skip-success on, no slot is taken and only a failure comes back
    /// ([`Completion::Unslotted`]): the caller may forget the socket at once.
    pub fn close<S: SqSink + ?Sized>(
        &mut self,
        ring: &mut S,
        sock: Socket,
        ctx: u64,
    ) -> Result<u64, Rejected<B>> {
        let t = sock.target();
        let e = on_target!(t, f => opcode::Close::new(f).build());
        // Once the SQE is queued the kernel owns the descriptor.
        let give_up = |s: Socket| {
            if let Socket::Fd(f) = s {
                let _ = f.into_raw_fd();
            }
        };
        if self.skip_success {
            return match self.push_unslotted(ring, e) {
                Ok(ud) => {
                    give_up(sock);
                    Ok(ud)
                }
                Err(r) => Err(r), // `sock` is dropped: an fd closes synchronously
            };
        }
        let idx = match self.alloc(Op::Close, ctx) {
            Ok(i) => i,
            Err(e) => return Err(self.reject(e)), // dropped: closed synchronously
        };
        let ud = self.user_data(idx);
        let r = self.push(ring, idx, &[e.user_data(ud)]);
        if r.is_ok() {
            give_up(sock);
        }
        r
    }

    /// ASYNC_CANCEL of the request with `target` user_data.
    pub fn cancel<S: SqSink + ?Sized>(
        &mut self,
        ring: &mut S,
        target: u64,
        ctx: u64,
    ) -> Result<u64, Rejected<B>> {
        let e = opcode::AsyncCancel::new(target).build();
        if self.skip_success {
            return self.push_unslotted(ring, e);
        }
        let idx = self.alloc(Op::Cancel, ctx).map_err(|e| self.reject(e))?;
        let ud = self.user_data(idx);
        self.push(ring, idx, &[e.user_data(ud)])
    }

    /// ASYNC_CANCEL of every request on `sock` (5.19+: IORING_ASYNC_CANCEL_FD | ALL, with
    /// IORING_ASYNC_CANCEL_FD_FIXED for a direct descriptor).
    pub fn cancel_fd<S: SqSink + ?Sized>(
        &mut self,
        ring: &mut S,
        sock: impl FileTarget,
        ctx: u64,
    ) -> Result<u64, Rejected<B>> {
        let e = on_target!(sock.target(), f => {
            opcode::AsyncCancel2::new(types::CancelBuilder::fd(f).all()).build()
        });
        if self.skip_success {
            return self.push_unslotted(ring, e);
        }
        let idx = self.alloc(Op::Cancel, ctx).map_err(|e| self.reject(e))?;
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
        sock: impl FileTarget,
        how: i32,
        ctx: u64,
    ) -> Result<u64, Rejected<B>> {
        let idx = self.alloc(Op::Shutdown, ctx).map_err(|e| self.reject(e))?;
        let e = on_target!(sock.target(), f => opcode::Shutdown::new(f, how).build());
        let ud = self.user_data(idx);
        self.push(ring, idx, &[e.user_data(ud)])
    }

    /// MSG_RING (5.18+): posts a CQE with `target_user_data` and `value` as its res on
    /// the ring `target_ring_fd` (a wake-up or hand-off notice between workers). The
    /// target's CQE is not a netops one: give it a tag the target routes itself. With
    /// skip-success on, the sender gets a CQE only if it fails.
    pub fn msg_ring<S: SqSink + ?Sized>(
        &mut self,
        ring: &mut S,
        target_ring_fd: RawFd,
        value: i32,
        target_user_data: u64,
        ctx: u64,
    ) -> Result<u64, Rejected<B>> {
        let e = opcode::MsgRingData::new(types::Fd(target_ring_fd), value, target_user_data, None)
            .build();
        if self.skip_success {
            return self.push_unslotted(ring, e);
        }
        let idx = self.alloc(Op::MsgRing, ctx).map_err(|e| self.reject(e))?;
        let ud = self.user_data(idx);
        self.push(ring, idx, &[e.user_data(ud)])
    }

    /// MSG_RING with IORING_MSG_SEND_FD (6.0+): installs the file in slot `src` of this
    /// ring's table into a free slot of the target ring's table (IORING_FILE_INDEX_ALLOC)
    /// and posts a CQE there with `target_user_data` and the new slot as its res. The
    /// sender's `src` slot stays (close it once this completes). Always completes on the
    /// sender ([`Completion::MsgRing`]), so the sender knows when it may close `src`.
    pub fn msg_ring_send_fd<S: SqSink + ?Sized>(
        &mut self,
        ring: &mut S,
        target_ring_fd: RawFd,
        src: Fixed,
        target_user_data: u64,
        ctx: u64,
    ) -> Result<u64, Rejected<B>> {
        let idx = self.alloc(Op::MsgRing, ctx).map_err(|e| self.reject(e))?;
        let e = opcode::MsgRingSendFd::new(
            types::Fd(target_ring_fd),
            types::Fixed(src.0),
            types::DestinationSlot::auto_target(),
            target_user_data,
        )
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
        if idx == UNSLOTTED {
            return Some(Completion::Unslotted {
                res: Errno(-res.min(0)),
            });
        }
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
            Op::Accept { multishot, direct } => {
                let (multishot, direct) = (*multishot, *direct);
                let res = res_to(res).map(|v| {
                    if direct {
                        Socket::Direct(v)
                    } else {
                        // SAFETY: a successful ACCEPT returns a fresh fd that nobody else owns.
                        Socket::Fd(unsafe { OwnedFd::from_raw_fd(v as RawFd) })
                    }
                });
                let more = multishot && more;
                if !more {
                    self.release(idx);
                }
                Some(Completion::Accept { ctx, res, more })
            }
            Op::RecvMulti { bundle } => {
                let bundle = *bundle;
                let sock_nonempty = flags & CQE_F_SOCK_NONEMPTY != 0;
                let buf_more = flags & CQE_F_BUF_MORE != 0;
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
                    bundle,
                    buf_more,
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
                    return Some(Completion::SendZcNotif {
                        ctx,
                        bufs: vec![buf],
                        copied,
                    });
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
            Op::SendV {
                zc,
                result_seen,
                off,
                ..
            } => {
                let (zc, off) = (*zc, *off);
                if zc && flags & CQE_F_NOTIF != 0 {
                    let copied = res & NOTIF_USAGE_ZC_COPIED != 0;
                    let Op::SendV { bufs, .. } = self.release(idx) else {
                        unreachable!()
                    };
                    return Some(Completion::SendZcNotif { ctx, bufs, copied });
                }
                *result_seen = true;
                let r = res_to(res).map(|n| n as usize);
                if zc && more {
                    return Some(Completion::SendV {
                        ctx,
                        res: r,
                        bufs: Vec::new(),
                        off,
                        zc,
                        notif_pending: true,
                    });
                }
                let Op::SendV { bufs, .. } = self.release(idx) else {
                    unreachable!()
                };
                Some(Completion::SendV {
                    ctx,
                    res: r,
                    bufs,
                    off,
                    zc,
                    notif_pending: false,
                })
            }
            Op::Splice => {
                self.release(idx);
                Some(Completion::Splice {
                    ctx,
                    res: res_to(res).map(|n| n as usize),
                    in_skipped: None,
                    out_cancelled: None,
                })
            }
            Op::SpliceHead {
                tail,
                out_cancelled,
                ..
            } => {
                // The first half posted its CQE after all: it failed or was short. With
                // IOSQE_CQE_SKIP_SUCCESS on a link head the kernel then cancels the rest of
                // the chain without posting their CQEs, so the second half is done too.
                let (tail, mut out_cancelled) = (*tail, *out_cancelled);
                self.release(idx);
                if tail != NONE {
                    if let Some(Slot {
                        op: Op::SpliceTail { .. },
                        ctx: tctx,
                        ..
                    }) = self.slots.get(tail as usize)
                    {
                        out_cancelled = Some(*tctx);
                        self.release(tail);
                    }
                }
                Some(Completion::Splice {
                    ctx,
                    res: res_to(res).map(|n| n as usize),
                    in_skipped: None,
                    out_cancelled,
                })
            }
            Op::SpliceTail { head } => {
                let head = *head;
                self.release(idx);
                let mut in_skipped = None;
                if let Some(h) = head {
                    if res == -libc::ECANCELED {
                        // The first half failed or was short (that cancelled this one) and
                        // its CQE is still to come: report both then.
                        if let Op::SpliceHead {
                            tail,
                            out_cancelled,
                            ..
                        } = &mut self.slots[h as usize].op
                        {
                            *tail = NONE;
                            *out_cancelled = Some(ctx);
                        }
                        return None;
                    }
                    // Its CQE was skipped: it moved all it was asked (a short or failed
                    // first half posts a CQE, and cancels this one).
                    if let Op::SpliceHead { len, .. } = self.slots[h as usize].op {
                        let hctx = self.slots[h as usize].ctx;
                        self.release(h);
                        in_skipped = Some((hctx, len as usize));
                    }
                }
                Some(Completion::Splice {
                    ctx,
                    res: res_to(res).map(|n| n as usize),
                    in_skipped,
                    out_cancelled: None,
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

/// The SPLICE entry `fd_in` -> `fd_out` (SPLICE_F_FD_IN_FIXED / IOSQE_FIXED_FILE for
/// direct descriptors), IOSQE_IO_LINK when `link`.
fn splice_sqe(
    fd_in: Target,
    off_in: i64,
    fd_out: Target,
    off_out: i64,
    len: u32,
    link: bool,
) -> Entry {
    let e = on_target!(fd_in, i => on_target!(fd_out, o => {
        opcode::Splice::new(i, off_in, o, off_out, len)
            .flags(libc::SPLICE_F_MOVE)
            .build()
    }));
    if link {
        e.flags(Flags::IO_LINK)
    } else {
        e
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
    /// The address of a connected TCP socket's peer (getpeername).
    pub fn peer_addr(fd: RawFd) -> io::Result<std::net::SocketAddr> {
        // SAFETY: the stream only borrows `fd` for this call: ManuallyDrop never closes it.
        let s = std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
        s.peer_addr()
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

    fn get_int(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
        let mut v: i32 = 0;
        let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
        // SAFETY: passes a pointer to a live i32 and its size.
        let r = unsafe { libc::getsockopt(fd, level, name, (&mut v as *mut i32).cast(), &mut len) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(v)
        }
    }

    /// listen(2) on a socket that already listens: sets its backlog to `backlog`.
    pub fn relisten(fd: RawFd, backlog: i32) -> io::Result<()> {
        // SAFETY: plain listen(2) on a valid fd.
        if unsafe { libc::listen(fd, backlog) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `(TCP_NODELAY, SO_SNDBUF, SO_RCVBUF)` as the kernel reports them (getsockopt).
    pub fn readback(fd: RawFd) -> io::Result<(i32, i32, i32)> {
        Ok((
            get_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY)?,
            get_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF)?,
            get_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)?,
        ))
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

pub use super::mux::{FileView, MuxBase, MuxRing, RingWithTimer, MUX_TAG_FILE, MUX_WAIT_TIMER};

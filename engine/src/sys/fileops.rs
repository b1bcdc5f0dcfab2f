//! File opcodes with owned buffers: a safe layer over a ring so that nothing outside
//! `sys` needs `unsafe` for file I/O.
//!
//! The completion is the request (as in TigerBeetle): each operation is given an arena
//! [`Slot`] (its buffer) and a caller tag; `FileOps` keeps the slot, and the iovec of a
//! vectored op, in a fixed-capacity in-flight table until the kernel's completion is
//! reaped, then hands both back in a [`Completion`]. `user_data` is the index into that
//! table. The table is sized once (`max_in_flight`); exceeding it is an error, not growth.
//!
//! Every write and read comes in its four kernel forms ([`WriteOp`], [`ReadOp`]): plain,
//! vectored, fixed (registered buffer: the slot's index, see `sys::mem`) and vectored
//! fixed. Files are named by a plain descriptor ([`Fd`]) or a registered-file index
//! ([`Fixed`]): distinct types. A full submission queue is submitted and the push retried.
//!
//! Durable-path primitives: a write can carry IOSQE_ASYNC ([`SqeOpts`], fio's
//! `force_async`) and be linked (IOSQE_IO_LINK) to an FSYNC or a SYNC_FILE_RANGE of what
//! it wrote ([`Then`], [`FileOps::write_then`]); the pair completes once, with the write's
//! buffer, when the second step is done (the write's own CQE is skipped on success with
//! IOSQE_CQE_SKIP_SUCCESS when asked). In-ring file management (OPENAT, STATX, CLOSE,
//! FTRUNCATE, RENAMEAT, UNLINKAT) is in `sys::fsops`, on the same table.
//!
//! The ring itself is anything implementing [`RingOps`]: the engine's own `sys::ring::Ring`
//! (what the engine uses) and the `io-uring` crate's `IoUring` ([`CrateRing`], kept as a
//! cross-check in tests); both are implemented here.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types};

use super::mem::{Arena, Slot};

/// What `FileOps` needs from a ring.
#[allow(clippy::result_unit_err)]
pub trait RingOps {
    /// Queues one SQE; `Err(())` when the SQ is full.
    ///
    /// # Safety
    /// Every buffer and iovec the entry points to must stay valid (and, for reads, not be
    /// accessed) until its completion has been reaped.
    unsafe fn push_sqe(&mut self, sqe: &squeue::Entry) -> Result<(), ()>;
    /// Submits queued SQEs without waiting.
    fn submit(&mut self) -> io::Result<usize>;
    /// Free SQ entries now (a linked pair needs two at once).
    fn sq_space(&self) -> usize;
    /// Submits queued SQEs and waits for at least `want` completions.
    fn submit_and_wait(&mut self, want: usize) -> io::Result<usize>;
    /// Takes one completion: (user_data, res, flags).
    fn pop(&mut self) -> Option<(u64, i32, u32)>;
    /// Registers buffers (IORING_REGISTER_BUFFERS).
    ///
    /// # Safety
    /// The memory described by `iov` must stay mapped for as long as the ring lives (or
    /// until unregistered).
    unsafe fn register_buffers(&mut self, iov: &[libc::iovec]) -> io::Result<()>;
    /// Registers files (IORING_REGISTER_FILES).
    fn register_files(&mut self, fds: &[RawFd]) -> io::Result<()>;
    /// io_uring_enter calls made so far.
    fn enter_calls(&self) -> u64;
    /// The setup flags in force (`IORING_SETUP_*` bits).
    fn setup_flags(&self) -> u32;
}

/// The `io-uring` crate's ring, counting its `io_uring_enter` calls.
pub struct CrateRing {
    ring: io_uring::IoUring,
    enters: u64,
    flags: u32,
}

impl CrateRing {
    /// A plain ring with `entries` SQ entries (flags given by the builder).
    pub fn new(entries: u32, builder: &io_uring::Builder) -> io::Result<CrateRing> {
        let ring = builder.build(entries)?;
        Ok(CrateRing {
            ring,
            enters: 0,
            flags: 0,
        })
    }
    /// Records the setup flags the ring was built with (the crate does not expose them).
    pub fn with_flags(mut self, flags: u32) -> Self {
        self.flags = flags;
        self
    }
}

impl RingOps for CrateRing {
    unsafe fn push_sqe(&mut self, sqe: &squeue::Entry) -> Result<(), ()> {
        // SAFETY: forwarded contract: the caller keeps the buffers valid until completion.
        unsafe { self.ring.submission().push(sqe).map_err(|_| ()) }
    }
    fn submit(&mut self) -> io::Result<usize> {
        self.enters += 1;
        self.ring.submit()
    }
    fn sq_space(&self) -> usize {
        // SAFETY: only reads the ring's head/tail; no other thread holds the SQ.
        let sq = unsafe { self.ring.submission_shared() };
        sq.capacity() - sq.len()
    }
    fn submit_and_wait(&mut self, want: usize) -> io::Result<usize> {
        self.enters += 1;
        self.ring.submit_and_wait(want)
    }
    fn pop(&mut self) -> Option<(u64, i32, u32)> {
        self.ring
            .completion()
            .next()
            .map(|c| (c.user_data(), c.result(), c.flags()))
    }
    unsafe fn register_buffers(&mut self, iov: &[libc::iovec]) -> io::Result<()> {
        // SAFETY: forwarded contract: the memory outlives the registration.
        unsafe { self.ring.submitter().register_buffers(iov) }
    }
    fn register_files(&mut self, fds: &[RawFd]) -> io::Result<()> {
        self.ring.submitter().register_files(fds)
    }
    fn enter_calls(&self) -> u64 {
        self.enters
    }
    fn setup_flags(&self) -> u32 {
        self.flags
    }
}

impl RingOps for super::ring::Ring {
    unsafe fn push_sqe(&mut self, sqe: &squeue::Entry) -> Result<(), ()> {
        // SAFETY: forwarded contract: the caller keeps the buffers valid until completion.
        unsafe { self.push(sqe).map_err(|_| ()) }
    }
    fn submit(&mut self) -> io::Result<usize> {
        super::ring::Ring::submit(self)
    }
    fn sq_space(&self) -> usize {
        self.sq_space_left()
    }
    fn submit_and_wait(&mut self, want: usize) -> io::Result<usize> {
        super::ring::Ring::submit_and_wait(self, want)
    }
    fn pop(&mut self) -> Option<(u64, i32, u32)> {
        self.pop_cqe().map(|c| (c.user_data, c.res, c.flags))
    }
    unsafe fn register_buffers(&mut self, iov: &[libc::iovec]) -> io::Result<()> {
        // SAFETY: forwarded contract: the memory outlives the registration.
        unsafe { super::ring::Ring::register_buffers(self, iov) }
    }
    fn register_files(&mut self, fds: &[RawFd]) -> io::Result<()> {
        super::ring::Ring::register_files(self, fds)
    }
    fn enter_calls(&self) -> u64 {
        super::ring::Ring::enter_calls(self)
    }
    fn setup_flags(&self) -> u32 {
        self.flags()
    }
}

use super::target::on_target;
pub use super::target::{Fd, FileTarget, Fixed, Target};

/// A slot made ready for one read or write (see `prepare`).
struct Prepared {
    s: Option<Slot>,
    idx: u32,
    ptr: *mut u8,
    iov: *const libc::iovec,
    buf_index: u16,
}

/// Write opcode form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WriteOp {
    /// IORING_OP_WRITE
    Write,
    /// IORING_OP_WRITEV
    Writev,
    /// IORING_OP_WRITE_FIXED
    WriteFixed,
    /// IORING_OP_WRITEV_FIXED (Linux 6.15+)
    WritevFixed,
}

/// Read opcode form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadOp {
    /// IORING_OP_READ
    Read,
    /// IORING_OP_READV
    Readv,
    /// IORING_OP_READ_FIXED
    ReadFixed,
    /// IORING_OP_READV_FIXED (Linux 6.15+)
    ReadvFixed,
}

impl WriteOp {
    pub const ALL: [WriteOp; 4] = [
        WriteOp::Write,
        WriteOp::Writev,
        WriteOp::WriteFixed,
        WriteOp::WritevFixed,
    ];
    pub fn is_fixed(self) -> bool {
        matches!(self, WriteOp::WriteFixed | WriteOp::WritevFixed)
    }
    pub fn is_vectored(self) -> bool {
        matches!(self, WriteOp::Writev | WriteOp::WritevFixed)
    }
    pub fn kernel_name(self) -> &'static str {
        match self {
            WriteOp::Write => "IORING_OP_WRITE",
            WriteOp::Writev => "IORING_OP_WRITEV",
            WriteOp::WriteFixed => "IORING_OP_WRITE_FIXED",
            WriteOp::WritevFixed => "IORING_OP_WRITEV_FIXED",
        }
    }
}

impl ReadOp {
    pub const ALL: [ReadOp; 4] = [
        ReadOp::Read,
        ReadOp::Readv,
        ReadOp::ReadFixed,
        ReadOp::ReadvFixed,
    ];
    pub fn is_fixed(self) -> bool {
        matches!(self, ReadOp::ReadFixed | ReadOp::ReadvFixed)
    }
    pub fn is_vectored(self) -> bool {
        matches!(self, ReadOp::Readv | ReadOp::ReadvFixed)
    }
    pub fn kernel_name(self) -> &'static str {
        match self {
            ReadOp::Read => "IORING_OP_READ",
            ReadOp::Readv => "IORING_OP_READV",
            ReadOp::ReadFixed => "IORING_OP_READ_FIXED",
            ReadOp::ReadvFixed => "IORING_OP_READV_FIXED",
        }
    }
}

/// SQE flags an operation may carry besides its opcode's own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SqeOpts {
    /// IOSQE_ASYNC: go to io-wq at once instead of trying inline first (for writes known
    /// to block, e.g. extending O_DIRECT writes on ext4; fio's `force_async`).
    pub force_async: bool,
}

impl SqeOpts {
    fn flags(self) -> squeue::Flags {
        if self.force_async {
            squeue::Flags::ASYNC
        } else {
            squeue::Flags::empty()
        }
    }
}

/// What a linked write is followed by (IOSQE_IO_LINK: it runs only once the write has
/// completed in full; a failed or short write cancels it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// IORING_OP_FSYNC, with IORING_FSYNC_DATASYNC when `datasync`: the data is durable
    /// when the pair completes.
    Fsync { datasync: bool },
    /// IORING_OP_SYNC_FILE_RANGE of the range just written with these `SYNC_FILE_RANGE_*`
    /// flags (SYNC_FILE_RANGE_WRITE: start write-back now, so a later fdatasync has less
    /// to flush).
    SyncRange { flags: u32 },
}

/// Which operation a completion belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Write(WriteOp),
    Read(ReadOp),
    Fsync {
        datasync: bool,
    },
    Fallocate,
    /// IORING_OP_SYNC_FILE_RANGE on its own.
    SyncRange,
    /// A write linked to a sync ([`FileOps::write_then`]), completed once.
    WriteThen(WriteOp, Then),
    /// In-ring file management (`sys::fsops`).
    Meta(super::fsops::MetaOp),
}

/// One finished operation: the tag given at submission, the kernel's result (bytes
/// transferred, or the errno as an `io::Error`) and the buffer, handed back.
#[derive(Debug)]
pub struct Completion {
    pub tag: u64,
    pub kind: OpKind,
    pub result: io::Result<u32>,
    pub buf: Option<Slot>,
    /// The heap buffer of a [`FileOps::write_vec`], handed back.
    pub heap: Option<Vec<u8>>,
    /// STATX result (`sys::fsops`).
    pub statx: Option<Box<libc::statx>>,
    /// The descriptor a successful OPENAT (not into the file table) returned, owned now.
    pub opened: Option<std::os::fd::OwnedFd>,
}

/// Why an operation could not be queued. The buffer, if any, is handed back.
#[derive(Debug)]
pub enum OpError {
    /// A fixed opcode with a slot of an arena not registered with this ring.
    BufferNotRegistered(Option<Slot>),
    /// A registered-file index beyond the registered table.
    FileNotRegistered(u32, Option<Slot>),
    /// More operations than the in-flight table holds.
    TooManyInFlight(usize, Option<Slot>),
    /// Length larger than the slot.
    BadLength {
        len: usize,
        capacity: usize,
        slot: Option<Slot>,
    },
    /// io_uring_enter failed while making room in the SQ.
    Submit(io::Error, Option<Slot>),
}

impl OpError {
    /// Takes back the buffer the failed operation was given.
    pub fn into_slot(self) -> Option<Slot> {
        match self {
            OpError::BufferNotRegistered(s)
            | OpError::FileNotRegistered(_, s)
            | OpError::TooManyInFlight(_, s)
            | OpError::BadLength { slot: s, .. }
            | OpError::Submit(_, s) => s,
        }
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::BufferNotRegistered(_) => write!(
                f,
                "a *-fixed opcode needs a buffer from the arena registered with this ring: turn register-buffers on"
            ),
            OpError::FileNotRegistered(i, _) => {
                write!(f, "registered file index {i} is not in the ring's file table: register the file first")
            }
            OpError::TooManyInFlight(n, _) => {
                write!(f, "more than {n} operations in flight: raise the in-flight limit or reap completions first")
            }
            OpError::BadLength { len, capacity, .. } => {
                write!(f, "I/O length {len} exceeds the buffer capacity {capacity}")
            }
            OpError::Submit(e, _) => write!(f, "io_uring_enter failed while the submission queue was full: {e}"),
        }
    }
}

impl std::error::Error for OpError {}

pub(super) struct InFlight {
    pub(super) tag: u64,
    pub(super) kind: OpKind,
    pub(super) buf: Option<Slot>,
    /// The buffer of a `write_vec`: owned here until the completion, so its heap memory
    /// (which a move of the Vec does not move) stays valid while the kernel reads it.
    pub(super) heap: Option<Vec<u8>>,
    /// Paths and result buffers of in-ring file management, owned until the completion.
    pub(super) meta: Option<Box<super::fsops::MetaArgs>>,
    /// Bytes asked (writes of a linked pair: a shorter result is a short write).
    pub(super) len: u32,
    pub(super) link: Link,
}

impl InFlight {
    pub(super) fn new(tag: u64, kind: OpKind) -> InFlight {
        InFlight {
            tag,
            kind,
            buf: None,
            heap: None,
            meta: None,
            len: 0,
            link: Link::None,
        }
    }
}

/// The place of an operation in a linked pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Link {
    None,
    /// The write: its CQE (if one comes) is kept until the second one's; `skip` when it
    /// was sent with IOSQE_CQE_SKIP_SUCCESS; `res` once its CQE was seen.
    Head {
        tail: u32,
        skip: bool,
        res: Option<i32>,
    },
    /// The sync after it; `res` when its CQE came before the head's failure CQE.
    Tail {
        head: u32,
        res: Option<i32>,
    },
}

/// File I/O on a ring with owned buffers. See the module documentation.
pub struct FileOps<R: RingOps> {
    pub(super) ring: R,
    /// In-flight entries; `user_data` = index. Never resized after `new`.
    pub(super) table: Vec<Option<InFlight>>,
    /// One iovec per table entry, at a stable address (boxed, never resized) so the
    /// kernel may read it any time before the completion.
    iovs: Box<[libc::iovec]>,
    pub(super) free: Vec<u32>,
    registered_arena: Option<Arena>,
    registered_files: u32,
    queued: usize,
    sq_full_retries: u64,
    /// IOSQE_CQE_SKIP_SUCCESS on the first SQE of linked pairs.
    skip_link_heads: bool,
    /// Completions whose CQE was skipped (linked pairs whose write succeeded).
    cqes_skipped: u64,
}

/// The SQE of a write with `op`'s opcode from `ptr` (or the one-entry `iov` for the
/// vectored forms), `buf_index` for the fixed forms.
#[allow(clippy::too_many_arguments)]
fn write_sqe(
    t: Target,
    op: WriteOp,
    ptr: *const u8,
    iov: *const libc::iovec,
    len: u32,
    buf_index: u16,
    offset: u64,
    rw_flags: i32,
) -> squeue::Entry {
    macro_rules! build {
        ($f:expr) => {
            match op {
                WriteOp::Write => opcode::Write::new($f, ptr, len)
                    .offset(offset)
                    .rw_flags(rw_flags)
                    .build(),
                WriteOp::Writev => opcode::Writev::new($f, iov, 1)
                    .offset(offset)
                    .rw_flags(rw_flags)
                    .build(),
                WriteOp::WriteFixed => opcode::WriteFixed::new($f, ptr, len, buf_index)
                    .offset(offset)
                    .rw_flags(rw_flags)
                    .build(),
                WriteOp::WritevFixed => opcode::WritevFixed::new($f, iov, 1, buf_index)
                    .offset(offset)
                    .rw_flags(rw_flags)
                    .build(),
            }
        };
    }
    match t {
        Target::Fd(fd) => build!(types::Fd(fd)),
        Target::Fixed(i) => build!(types::Fixed(i)),
    }
}

impl<R: RingOps> FileOps<R> {
    /// Wraps `ring`, allowing up to `max_in_flight` operations at once.
    pub fn new(ring: R, max_in_flight: usize) -> FileOps<R> {
        let n = max_in_flight.max(1);
        FileOps {
            ring,
            table: (0..n).map(|_| None).collect(),
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                n
            ]
            .into_boxed_slice(),
            free: (0..n as u32).rev().collect(),
            registered_arena: None,
            registered_files: 0,
            queued: 0,
            sq_full_retries: 0,
            skip_link_heads: false,
            cqes_skipped: 0,
        }
    }

    /// With `on`, the write of a linked pair carries IOSQE_CQE_SKIP_SUCCESS (5.17+): only
    /// a failed or short write posts its own CQE.
    pub fn set_skip_link_heads(&mut self, on: bool) {
        self.skip_link_heads = on;
    }

    /// Writes of linked pairs whose CQE the kernel skipped (IOSQE_CQE_SKIP_SUCCESS).
    pub fn cqes_skipped(&self) -> u64 {
        self.cqes_skipped
    }

    /// Declares a file table of `slots` registered by the ring's owner (sparse tables,
    /// direct descriptors): `Fixed(i)` with `i < slots` is accepted from then on.
    pub fn set_file_table(&mut self, slots: u32) {
        self.registered_files = slots;
    }

    pub fn ring(&self) -> &R {
        &self.ring
    }

    /// Registers every slot of `arena` as a fixed buffer (slot index = buffer index).
    /// The arena is kept alive by this `FileOps` (hence by the ring) from then on.
    pub fn register_arena(&mut self, arena: &Arena) -> io::Result<()> {
        arena.check_registrable().map_err(io::Error::other)?;
        let iov = arena.iovecs();
        // SAFETY: the arena's mapping stays alive as long as `self.registered_arena`
        // holds a clone, i.e. as long as the ring (owned by self) lives.
        unsafe { self.ring.register_buffers(&iov)? };
        self.registered_arena = Some(arena.clone());
        Ok(())
    }

    /// Registers `fds` as the ring's file table; `Fixed(i)` then names `fds[i]`.
    pub fn register_files(&mut self, fds: &[RawFd]) -> io::Result<()> {
        self.ring.register_files(fds)?;
        self.registered_files = fds.len() as u32;
        Ok(())
    }

    /// Operations queued or in flight.
    pub fn in_flight(&self) -> usize {
        self.table.len() - self.free.len()
    }

    /// Capacity of the in-flight table.
    pub fn capacity(&self) -> usize {
        self.table.len()
    }

    /// Times a push found the SQ full and had to submit first.
    pub fn sq_full_retries(&self) -> u64 {
        self.sq_full_retries
    }

    pub(super) fn check_target(&self, t: Target, slot: &mut Option<Slot>) -> Result<(), OpError> {
        if let Target::Fixed(i) = t {
            if i >= self.registered_files {
                return Err(OpError::FileNotRegistered(i, slot.take()));
            }
        }
        Ok(())
    }

    /// [`Self::check_target`] then [`Self::take_index`] for an operation without a slot
    /// (syncs, fallocate, sync_file_range).
    fn slotless_index(&mut self, t: Target) -> Result<u32, OpError> {
        let mut none = None;
        self.check_target(t, &mut none)?;
        self.take_index(&mut none)
    }

    pub(super) fn take_index(&mut self, slot: &mut Option<Slot>) -> Result<u32, OpError> {
        self.free
            .pop()
            .ok_or_else(|| OpError::TooManyInFlight(self.table.len(), slot.take()))
    }

    pub(super) fn push(
        &mut self,
        idx: u32,
        sqe: squeue::Entry,
        flight: InFlight,
    ) -> Result<(), OpError> {
        self.push_keep(idx, sqe, flight).map_err(|(e, _)| e)
    }

    /// `push`, handing back a `write_vec` buffer when the entry could not be queued.
    fn push_keep(
        &mut self,
        idx: u32,
        sqe: squeue::Entry,
        flight: InFlight,
    ) -> Result<(), (OpError, Option<Vec<u8>>)> {
        let sqe = sqe.user_data(idx as u64);
        self.table[idx as usize] = Some(flight);
        loop {
            // SAFETY: the buffer (a Slot, or a `write_vec` Vec whose heap memory does not
            // move with the Vec) and the iovec (in `self.iovs`) this entry points to are
            // owned by the in-flight table until `complete` removes the entry after the
            // kernel's completion; the arena mapping outlives the slot.
            if unsafe { self.ring.push_sqe(&sqe) }.is_ok() {
                self.queued += 1;
                return Ok(());
            }
            self.sq_full_retries += 1;
            if let Err(e) = self.ring.submit() {
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                let f = self.table[idx as usize].take().expect("entry just stored");
                self.free.push(idx);
                return Err((OpError::Submit(e, f.buf), f.heap));
            }
            self.queued = 0;
        }
    }

    fn check_fixed(&self, slot: &mut Option<Slot>) -> Result<u16, OpError> {
        let s = slot.as_ref().expect("slot present");
        match &self.registered_arena {
            Some(a) if a.id() == s.arena_id() => Ok(s.index() as u16),
            _ => Err(OpError::BufferNotRegistered(slot.take())),
        }
    }

    /// What a read and a write share before their opcode is built: the length fits the
    /// slot, the target and (for fixed ops) the buffer are registered with this ring, an
    /// in-flight index is free, and its one-entry iovec points at the slot.
    fn prepare(
        &mut self,
        t: Target,
        slot: Slot,
        len: usize,
        fixed: bool,
    ) -> Result<Prepared, OpError> {
        let mut s = Some(slot);
        let cap = s.as_ref().map_or(0, |s| s.capacity());
        if len > cap {
            return Err(OpError::BadLength {
                len,
                capacity: cap,
                slot: s.take(),
            });
        }
        self.check_target(t, &mut s)?;
        let buf_index = if fixed { self.check_fixed(&mut s)? } else { 0 };
        let idx = self.take_index(&mut s)?;
        let ptr = s.as_ref().expect("slot present").as_ptr();
        self.iovs[idx as usize] = libc::iovec {
            iov_base: ptr.cast(),
            iov_len: len,
        };
        let iov: *const libc::iovec = &self.iovs[idx as usize];
        Ok(Prepared {
            s,
            idx,
            ptr,
            iov,
            buf_index,
        })
    }

    #[allow(clippy::too_many_arguments)]
    /// Queues a write of `slot[..len]` at `offset` with `op`'s opcode and `rw_flags`
    /// (`RWF_DSYNC`, `RWF_DONTCACHE`). The slot comes back in the completion.
    pub fn write(
        &mut self,
        file: impl FileTarget,
        op: WriteOp,
        slot: Slot,
        len: usize,
        offset: u64,
        rw_flags: i32,
        tag: u64,
    ) -> Result<(), OpError> {
        let no_opts = SqeOpts::default();
        self.write_opts(file, op, slot, len, offset, rw_flags, no_opts, tag)
    }

    /// [`FileOps::write`] with SQE options (IOSQE_ASYNC).
    #[allow(clippy::too_many_arguments)]
    pub fn write_opts(
        &mut self,
        file: impl FileTarget,
        op: WriteOp,
        slot: Slot,
        len: usize,
        offset: u64,
        rw_flags: i32,
        opts: SqeOpts,
        tag: u64,
    ) -> Result<(), OpError> {
        let t = file.target();
        let Prepared {
            s,
            idx,
            ptr,
            iov,
            buf_index,
        } = self.prepare(t, slot, len, op.is_fixed())?;
        let sqe =
            write_sqe(t, op, ptr, iov, len as u32, buf_index, offset, rw_flags).flags(opts.flags());
        let mut f = InFlight::new(tag, OpKind::Write(op));
        f.buf = s;
        self.push(idx, sqe, f)
    }

    /// A write of `slot[..len]` at `offset` linked (IOSQE_IO_LINK) to `then`, submitted
    /// together: one completion, with the slot, when both are done. Its result is the
    /// write's error or short count if the write failed or was short (the sync is then
    /// cancelled by the kernel), else the sync's error, else `len`. The write carries
    /// IOSQE_CQE_SKIP_SUCCESS when [`FileOps::set_skip_link_heads`] is on.
    #[allow(clippy::too_many_arguments)]
    pub fn write_then(
        &mut self,
        file: impl FileTarget,
        op: WriteOp,
        slot: Slot,
        len: usize,
        offset: u64,
        rw_flags: i32,
        opts: SqeOpts,
        then: Then,
        tag: u64,
    ) -> Result<(), OpError> {
        let t = file.target();
        let Prepared {
            s,
            idx,
            ptr,
            iov,
            buf_index,
        } = self.prepare(t, slot, len, op.is_fixed())?;
        let mut s = s;
        let tail = match self.take_index(&mut s) {
            Ok(i) => i,
            Err(e) => {
                self.free.push(idx);
                return Err(e);
            }
        };
        let skip = self.skip_link_heads;
        let mut head_flags = opts.flags() | squeue::Flags::IO_LINK;
        if skip {
            head_flags |= squeue::Flags::SKIP_SUCCESS;
        }
        let w = write_sqe(t, op, ptr, iov, len as u32, buf_index, offset, rw_flags)
            .flags(head_flags)
            .user_data(idx as u64);
        let second = match then {
            Then::Fsync { datasync } => {
                let fl = if datasync {
                    types::FsyncFlags::DATASYNC
                } else {
                    types::FsyncFlags::empty()
                };
                on_target!(t, f => opcode::Fsync::new(f).flags(fl).build())
            }
            Then::SyncRange { flags } => {
                on_target!(t, f => opcode::SyncFileRange::new(f, len as u32)
                .offset(offset)
                .flags(flags)
                .build())
            }
        }
        .user_data(tail as u64);
        let mut head = InFlight::new(tag, OpKind::WriteThen(op, then));
        head.buf = s;
        head.len = len as u32;
        head.link = Link::Head {
            tail,
            skip,
            res: None,
        };
        let mut tl = InFlight::new(tag, OpKind::WriteThen(op, then));
        tl.link = Link::Tail {
            head: idx,
            res: None,
        };
        self.push_pair(idx, w, head, tail, second, tl)
    }

    /// Pushes two linked entries back to back: both must be in one submission, or the
    /// kernel would end the link at the end of the first batch.
    fn push_pair(
        &mut self,
        a: u32,
        sa: squeue::Entry,
        fa: InFlight,
        b: u32,
        sb: squeue::Entry,
        fb: InFlight,
    ) -> Result<(), OpError> {
        self.table[a as usize] = Some(fa);
        self.table[b as usize] = Some(fb);
        let release = |me: &mut Self, e: io::Error| {
            me.table[b as usize] = None;
            me.free.push(b);
            let f = me.table[a as usize].take().expect("entry just stored");
            me.free.push(a);
            OpError::Submit(e, f.buf)
        };
        while self.ring.sq_space() < 2 {
            self.sq_full_retries += 1;
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(release(self, e)),
            }
            self.queued = 0;
        }
        for e in [&sa, &sb] {
            // SAFETY: the slot and iovec these entries point to are owned by the table
            // until `complete` takes both entries out after their completions.
            if unsafe { self.ring.push_sqe(e) }.is_err() {
                // Space was checked above and nothing else pushes in between.
                return Err(release(self, io::Error::other("SQ refused a linked entry")));
            }
            self.queued += 1;
        }
        Ok(())
    }

    /// Queues SYNC_FILE_RANGE of `len` bytes at `offset` with `flags` on its own.
    pub fn sync_range(
        &mut self,
        file: impl FileTarget,
        offset: u64,
        len: u32,
        flags: u32,
        tag: u64,
    ) -> Result<(), OpError> {
        let t = file.target();
        let idx = self.slotless_index(t)?;
        let sqe = on_target!(t, f => opcode::SyncFileRange::new(f, len)
            .offset(offset)
            .flags(flags)
            .build());
        self.push(idx, sqe, InFlight::new(tag, OpKind::SyncRange))
    }

    #[allow(clippy::too_many_arguments)]
    /// Queues a write of `buf[start..start + len]` at `offset` straight from a heap buffer
    /// (no copy into an arena slot), with WRITE or WRITEV (`op`; the fixed forms need a
    /// registered slot and are refused). The Vec comes back in [`Completion::heap`], or
    /// with the error when it cannot be queued.
    pub fn write_vec(
        &mut self,
        file: impl FileTarget,
        op: WriteOp,
        buf: Vec<u8>,
        start: usize,
        len: usize,
        offset: u64,
        rw_flags: i32,
        tag: u64,
    ) -> Result<(), (OpError, Vec<u8>)> {
        self.write_vec_opts(
            file,
            op,
            buf,
            start,
            len,
            offset,
            rw_flags,
            SqeOpts::default(),
            tag,
        )
    }

    /// [`FileOps::write_vec`] with SQE options (IOSQE_ASYNC).
    #[allow(clippy::too_many_arguments)]
    pub fn write_vec_opts(
        &mut self,
        file: impl FileTarget,
        op: WriteOp,
        buf: Vec<u8>,
        start: usize,
        len: usize,
        offset: u64,
        rw_flags: i32,
        opts: SqeOpts,
        tag: u64,
    ) -> Result<(), (OpError, Vec<u8>)> {
        let t = file.target();
        if op.is_fixed() {
            return Err((OpError::BufferNotRegistered(None), buf));
        }
        if start.checked_add(len).is_none_or(|end| end > buf.len()) || len > u32::MAX as usize {
            let capacity = buf.len().saturating_sub(start);
            return Err((
                OpError::BadLength {
                    len,
                    capacity,
                    slot: None,
                },
                buf,
            ));
        }
        let mut none = None;
        if let Err(e) = self.check_target(t, &mut none) {
            return Err((e, buf));
        }
        let idx = match self.take_index(&mut none) {
            Ok(i) => i,
            Err(e) => return Err((e, buf)),
        };
        let ptr = buf[start..].as_ptr();
        self.iovs[idx as usize] = libc::iovec {
            iov_base: ptr as *mut libc::c_void,
            iov_len: len,
        };
        let iov: *const libc::iovec = &self.iovs[idx as usize];
        // `op` is WRITE or WRITEV here (fixed forms refused above): no buffer index.
        let sqe = write_sqe(t, op, ptr, iov, len as u32, 0, offset, rw_flags).flags(opts.flags());
        let mut f = InFlight::new(tag, OpKind::Write(op));
        f.heap = Some(buf);
        self.push_keep(idx, sqe, f)
            .map_err(|(e, heap)| (e, heap.unwrap_or_default()))
    }

    #[allow(clippy::too_many_arguments)]
    /// Queues a read of `len` bytes at `offset` into `slot` with `op`'s opcode.
    pub fn read(
        &mut self,
        file: impl FileTarget,
        op: ReadOp,
        slot: Slot,
        len: usize,
        offset: u64,
        rw_flags: i32,
        tag: u64,
    ) -> Result<(), OpError> {
        let t = file.target();
        let Prepared {
            s,
            idx,
            ptr,
            iov,
            buf_index,
        } = self.prepare(t, slot, len, op.is_fixed())?;
        let l = len as u32;
        macro_rules! build {
            ($f:expr) => {
                match op {
                    ReadOp::Read => opcode::Read::new($f, ptr, l)
                        .offset(offset)
                        .rw_flags(rw_flags)
                        .build(),
                    ReadOp::Readv => opcode::Readv::new($f, iov, 1)
                        .offset(offset)
                        .rw_flags(rw_flags)
                        .build(),
                    ReadOp::ReadFixed => opcode::ReadFixed::new($f, ptr, l, buf_index)
                        .offset(offset)
                        .rw_flags(rw_flags)
                        .build(),
                    ReadOp::ReadvFixed => opcode::ReadvFixed::new($f, iov, 1, buf_index)
                        .offset(offset)
                        .rw_flags(rw_flags)
                        .build(),
                }
            };
        }
        let sqe = match t {
            Target::Fd(fd) => build!(types::Fd(fd)),
            Target::Fixed(i) => build!(types::Fixed(i)),
        };
        let mut f = InFlight::new(tag, OpKind::Read(op));
        f.buf = s;
        self.push(idx, sqe, f)
    }

    /// Queues fsync (`datasync` = fdatasync semantics) of the whole file.
    pub fn fsync(
        &mut self,
        file: impl FileTarget,
        datasync: bool,
        tag: u64,
    ) -> Result<(), OpError> {
        let t = file.target();
        let idx = self.slotless_index(t)?;
        let flags = if datasync {
            types::FsyncFlags::DATASYNC
        } else {
            types::FsyncFlags::empty()
        };
        let sqe = on_target!(t, f => opcode::Fsync::new(f).flags(flags).build());
        self.push(idx, sqe, InFlight::new(tag, OpKind::Fsync { datasync }))
    }

    /// Queues fallocate(mode, offset, len).
    pub fn fallocate(
        &mut self,
        file: impl FileTarget,
        mode: i32,
        offset: u64,
        len: u64,
        tag: u64,
    ) -> Result<(), OpError> {
        let t = file.target();
        let idx = self.slotless_index(t)?;
        let sqe = on_target!(t, f => opcode::Fallocate::new(f, len)
            .offset(offset)
            .mode(mode)
            .build());
        self.push(idx, sqe, InFlight::new(tag, OpKind::Fallocate))
    }

    /// Submits what is queued. EINTR counts as nothing submitted.
    pub fn submit(&mut self) -> io::Result<usize> {
        match self.ring.submit() {
            Ok(n) => {
                self.queued = 0;
                Ok(n)
            }
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Submits what is queued and waits for `want` completions. EINTR, EAGAIN and EBUSY
    /// return `Ok(0)`: reap what is there and call again.
    pub fn submit_and_wait(&mut self, want: usize) -> io::Result<usize> {
        match self.ring.submit_and_wait(want) {
            Ok(n) => {
                self.queued = 0;
                Ok(n)
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) =>
            {
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }

    /// Takes one reaped completion, with its buffer back. A linked pair yields one
    /// completion, when its last CQE is reaped.
    pub fn complete(&mut self) -> Option<Completion> {
        loop {
            let (ud, res, _flags) = self.ring.pop()?;
            let idx = ud as u32;
            let link = match self.table.get(idx as usize).and_then(Option::as_ref) {
                Some(f) => f.link,
                None => panic!("completion with user_data {ud} matches no in-flight operation"),
            };
            match link {
                Link::None => {
                    let f = self.take_entry(idx);
                    return Some(Self::finish(f, res_of(res)));
                }
                Link::Head { tail, skip, .. } => {
                    let tail_res = match self.table[tail as usize].as_ref().map(|t| t.link) {
                        Some(Link::Tail { res, .. }) => res,
                        _ => None,
                    };
                    match tail_res {
                        // The sync's CQE (a cancellation) came first: both are in now.
                        Some(tr) => return Some(self.finish_pair(idx, tail, Some(res), tr)),
                        // A skip-success head posts a CQE only when it failed or was short,
                        // and the kernel then cancels the sync without a CQE of its own.
                        None if skip => {
                            return Some(self.finish_pair(idx, tail, Some(res), -libc::ECANCELED))
                        }
                        None => {
                            if let Some(f) = self.table[idx as usize].as_mut() {
                                f.link = Link::Head {
                                    tail,
                                    skip,
                                    res: Some(res),
                                };
                            }
                        }
                    }
                }
                Link::Tail { head, .. } => {
                    let (head_res, skip) = match self.table[head as usize].as_ref().map(|h| h.link)
                    {
                        Some(Link::Head { res, skip, .. }) => (res, skip),
                        _ => (None, false),
                    };
                    // The write's CQE is still to come only if it was not skipped (with
                    // skip-success a failed write's CQE comes alone, see above).
                    let head_pending = head_res.is_none() && !skip;
                    if head_pending {
                        if let Some(f) = self.table[idx as usize].as_mut() {
                            f.link = Link::Tail {
                                head,
                                res: Some(res),
                            };
                        }
                        continue;
                    }
                    if head_res.is_none() {
                        self.cqes_skipped += 1;
                    }
                    return Some(self.finish_pair(head, idx, head_res, res));
                }
            }
        }
    }

    fn take_entry(&mut self, idx: u32) -> InFlight {
        let f = self.table[idx as usize]
            .take()
            .expect("in-flight entry present");
        self.free.push(idx);
        f
    }

    fn finish(f: InFlight, result: io::Result<u32>) -> Completion {
        let statx = f.meta.and_then(|m| m.statx);
        let opened = match (&f.kind, &result) {
            (OpKind::Meta(super::fsops::MetaOp::Open { direct: false }), Ok(fd)) => {
                // SAFETY: a successful OPENAT without a file slot returns a new descriptor
                // that nothing else owns.
                Some(unsafe {
                    <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(*fd as RawFd)
                })
            }
            _ => None,
        };
        Completion {
            tag: f.tag,
            kind: f.kind,
            result,
            buf: f.buf,
            heap: f.heap,
            statx,
            opened,
        }
    }

    /// Both CQEs of a linked pair are in (the write's may have been skipped: `None`).
    fn finish_pair(
        &mut self,
        head: u32,
        tail: u32,
        head_res: Option<i32>,
        tail_res: i32,
    ) -> Completion {
        let h = self.take_entry(head);
        let _ = self.take_entry(tail);
        let len = h.len;
        let result = match head_res {
            Some(r) if r < 0 => Err(io::Error::from_raw_os_error(-r)),
            Some(r) if (r as u32) < len => Ok(r as u32),
            _ => res_of(tail_res).map(|_| len),
        };
        Self::finish(h, result)
    }

    /// Waits until every in-flight operation has completed; returns their completions.
    pub fn drain(&mut self) -> io::Result<VecDeque<Completion>> {
        let mut out = VecDeque::new();
        while self.in_flight() > 0 {
            while let Some(c) = self.complete() {
                out.push_back(c);
            }
            if self.in_flight() > 0 {
                self.submit_and_wait(1)?;
            }
        }
        Ok(out)
    }

    /// io_uring_enter calls made by the ring.
    pub fn enter_calls(&self) -> u64 {
        self.ring.enter_calls()
    }
}

fn res_of(res: i32) -> io::Result<u32> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as u32)
    }
}

impl<R: RingOps> Drop for FileOps<R> {
    fn drop(&mut self) {
        // Buffers of in-flight operations must not be freed while the kernel may use
        // them: wait for every completion (errors here leave the slots leaked in the
        // table rather than freed under the kernel).
        if self.in_flight() > 0 && self.drain().is_err() {
            for e in self.table.iter_mut() {
                if let Some(f) = e.take() {
                    std::mem::forget(f.buf);
                }
            }
        }
    }
}

//! One ring shared by socket operations ([`super::netops::NetOps`]) and file operations
//! ([`super::fileops::FileOps`] through a [`FileView`]), with CQEs routed by the top byte
//! of `user_data`; and the engine's ring with a timed wait ([`RingWithTimer`]): a
//! TIMEOUT SQE, or the timeout (and min_wait_usec) in the enter itself (IORING_ENTER_EXT_ARG).

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::squeue::Entry;
use io_uring::{opcode, types};

use super::netops::SqSink;

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

/// The engine's own ring (every setup flag) with a timed wait: a TIMEOUT SQE whose
/// timespec lives here, or, with [`RingWithTimer::set_wait_in_enter`], the timeout (and
/// min_wait_usec) passed in io_uring_enter itself (IORING_ENTER_EXT_ARG).
pub struct RingWithTimer {
    pub ring: super::ring::Ring,
    ts: Box<types::Timespec>,
    timer_armed: bool,
    /// Timeouts travel in the enter (no TIMEOUT SQE).
    in_enter: bool,
    /// min_wait_usec of waits (in-enter only).
    min_wait: Option<Duration>,
}

impl RingWithTimer {
    pub fn new(ring: super::ring::Ring) -> Self {
        RingWithTimer {
            ring,
            ts: Box::new(types::Timespec::new()),
            timer_armed: false,
            in_enter: false,
            min_wait: None,
        }
    }

    /// Waits pass their timeout in the enter (IORING_ENTER_EXT_ARG, FEAT_EXT_ARG) and,
    /// with `min_wait`, return once it has passed and a completion is there
    /// (IORING_FEAT_MIN_TIMEOUT). Errors if the kernel lacks either.
    pub fn set_wait_in_enter(&mut self, min_wait: Option<Duration>) -> io::Result<()> {
        use super::ring::consts::{IORING_FEAT_EXT_ARG, IORING_FEAT_MIN_TIMEOUT};
        let f = self.ring.features();
        if f & IORING_FEAT_EXT_ARG == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "wait-timeout=ext-arg needs IORING_FEAT_EXT_ARG (Linux 5.11+)",
            ));
        }
        if min_wait.is_some() && f & IORING_FEAT_MIN_TIMEOUT == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "min-wait-usec needs IORING_FEAT_MIN_TIMEOUT (Linux 6.12+)",
            ));
        }
        self.in_enter = true;
        self.min_wait = min_wait;
        Ok(())
    }

    /// Whether waits pass their timeout in the enter.
    pub fn waits_in_enter(&self) -> bool {
        self.in_enter
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
        if self.in_enter {
            if timeout.is_none() && self.min_wait.is_none() {
                return self.ring.submit_and_wait(want);
            }
            return self.ring.submit_and_wait_args(want, timeout, self.min_wait);
        }
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
    fn sq_space(&self) -> usize {
        self.0.borrow().ring.base_sq_space()
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

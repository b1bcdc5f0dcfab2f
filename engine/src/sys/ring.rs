//! Our own io_uring ring over the raw syscalls: one code path for every setup flag,
//! including those the `io-uring` crate cannot do (NO_MMAP, REGISTERED_FD_ONLY,
//! HYBRID_IOPOLL, CQE_MIXED).
//!
//! The `io-uring` crate is used only for SQE builders (`io_uring::opcode::*`); their
//! 64-byte (`squeue::Entry`) or 128-byte (`squeue::Entry128`) representation is copied
//! into the SQ slot. Structures and constants follow `include/uapi/linux/io_uring.h` of
//! Linux 6.18.
//!
//! Threading: a `Ring` may be moved to another thread (it is `Send`), but a registered
//! ring index (`register_ring_fd`, REGISTERED_FD_ONLY) belongs to the thread that made
//! it. On another thread the ring falls back to its plain fd; a REGISTERED_FD_ONLY ring
//! has none and refuses with EBADF-like `io::ErrorKind::Other` errors naming the cause.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::ptr;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::thread::ThreadId;

/// Kernel constants (uapi `io_uring.h`, Linux 6.18).
pub mod consts {
    pub const IORING_SETUP_IOPOLL: u32 = 1 << 0;
    pub const IORING_SETUP_SQPOLL: u32 = 1 << 1;
    pub const IORING_SETUP_SQ_AFF: u32 = 1 << 2;
    pub const IORING_SETUP_CQSIZE: u32 = 1 << 3;
    pub const IORING_SETUP_CLAMP: u32 = 1 << 4;
    pub const IORING_SETUP_ATTACH_WQ: u32 = 1 << 5;
    pub const IORING_SETUP_R_DISABLED: u32 = 1 << 6;
    pub const IORING_SETUP_SUBMIT_ALL: u32 = 1 << 7;
    pub const IORING_SETUP_COOP_TASKRUN: u32 = 1 << 8;
    pub const IORING_SETUP_TASKRUN_FLAG: u32 = 1 << 9;
    pub const IORING_SETUP_SQE128: u32 = 1 << 10;
    pub const IORING_SETUP_CQE32: u32 = 1 << 11;
    pub const IORING_SETUP_SINGLE_ISSUER: u32 = 1 << 12;
    pub const IORING_SETUP_DEFER_TASKRUN: u32 = 1 << 13;
    pub const IORING_SETUP_NO_MMAP: u32 = 1 << 14;
    pub const IORING_SETUP_REGISTERED_FD_ONLY: u32 = 1 << 15;
    pub const IORING_SETUP_NO_SQARRAY: u32 = 1 << 16;
    pub const IORING_SETUP_HYBRID_IOPOLL: u32 = 1 << 17;
    pub const IORING_SETUP_CQE_MIXED: u32 = 1 << 18;
    pub const IORING_SETUP_SQE_MIXED: u32 = 1 << 19;

    /// Every setup flag with its kernel name, in bit order (SQE_MIXED is 6.19+).
    pub const SETUP_FLAGS: &[(u32, &str)] = &[
        (IORING_SETUP_IOPOLL, "IORING_SETUP_IOPOLL"),
        (IORING_SETUP_SQPOLL, "IORING_SETUP_SQPOLL"),
        (IORING_SETUP_SQ_AFF, "IORING_SETUP_SQ_AFF"),
        (IORING_SETUP_CQSIZE, "IORING_SETUP_CQSIZE"),
        (IORING_SETUP_CLAMP, "IORING_SETUP_CLAMP"),
        (IORING_SETUP_ATTACH_WQ, "IORING_SETUP_ATTACH_WQ"),
        (IORING_SETUP_R_DISABLED, "IORING_SETUP_R_DISABLED"),
        (IORING_SETUP_SUBMIT_ALL, "IORING_SETUP_SUBMIT_ALL"),
        (IORING_SETUP_COOP_TASKRUN, "IORING_SETUP_COOP_TASKRUN"),
        (IORING_SETUP_TASKRUN_FLAG, "IORING_SETUP_TASKRUN_FLAG"),
        (IORING_SETUP_SQE128, "IORING_SETUP_SQE128"),
        (IORING_SETUP_CQE32, "IORING_SETUP_CQE32"),
        (IORING_SETUP_SINGLE_ISSUER, "IORING_SETUP_SINGLE_ISSUER"),
        (IORING_SETUP_DEFER_TASKRUN, "IORING_SETUP_DEFER_TASKRUN"),
        (IORING_SETUP_NO_MMAP, "IORING_SETUP_NO_MMAP"),
        (
            IORING_SETUP_REGISTERED_FD_ONLY,
            "IORING_SETUP_REGISTERED_FD_ONLY",
        ),
        (IORING_SETUP_NO_SQARRAY, "IORING_SETUP_NO_SQARRAY"),
        (IORING_SETUP_HYBRID_IOPOLL, "IORING_SETUP_HYBRID_IOPOLL"),
        (IORING_SETUP_CQE_MIXED, "IORING_SETUP_CQE_MIXED"),
        (IORING_SETUP_SQE_MIXED, "IORING_SETUP_SQE_MIXED"),
    ];

    pub const IORING_FEAT_SINGLE_MMAP: u32 = 1 << 0;
    pub const IORING_FEAT_NODROP: u32 = 1 << 1;
    pub const IORING_FEAT_SUBMIT_STABLE: u32 = 1 << 2;
    pub const IORING_FEAT_RW_CUR_POS: u32 = 1 << 3;
    pub const IORING_FEAT_CUR_PERSONALITY: u32 = 1 << 4;
    pub const IORING_FEAT_FAST_POLL: u32 = 1 << 5;
    pub const IORING_FEAT_POLL_32BITS: u32 = 1 << 6;
    pub const IORING_FEAT_SQPOLL_NONFIXED: u32 = 1 << 7;
    pub const IORING_FEAT_EXT_ARG: u32 = 1 << 8;
    pub const IORING_FEAT_NATIVE_WORKERS: u32 = 1 << 9;
    pub const IORING_FEAT_RSRC_TAGS: u32 = 1 << 10;
    pub const IORING_FEAT_CQE_SKIP: u32 = 1 << 11;
    pub const IORING_FEAT_LINKED_FILE: u32 = 1 << 12;
    pub const IORING_FEAT_REG_REG_RING: u32 = 1 << 13;
    pub const IORING_FEAT_RECVSEND_BUNDLE: u32 = 1 << 14;
    pub const IORING_FEAT_MIN_TIMEOUT: u32 = 1 << 15;
    pub const IORING_FEAT_RW_ATTR: u32 = 1 << 16;
    pub const IORING_FEAT_NO_IOWAIT: u32 = 1 << 17;

    pub const FEATURES: &[(u32, &str)] = &[
        (IORING_FEAT_SINGLE_MMAP, "SINGLE_MMAP"),
        (IORING_FEAT_NODROP, "NODROP"),
        (IORING_FEAT_SUBMIT_STABLE, "SUBMIT_STABLE"),
        (IORING_FEAT_RW_CUR_POS, "RW_CUR_POS"),
        (IORING_FEAT_CUR_PERSONALITY, "CUR_PERSONALITY"),
        (IORING_FEAT_FAST_POLL, "FAST_POLL"),
        (IORING_FEAT_POLL_32BITS, "POLL_32BITS"),
        (IORING_FEAT_SQPOLL_NONFIXED, "SQPOLL_NONFIXED"),
        (IORING_FEAT_EXT_ARG, "EXT_ARG"),
        (IORING_FEAT_NATIVE_WORKERS, "NATIVE_WORKERS"),
        (IORING_FEAT_RSRC_TAGS, "RSRC_TAGS"),
        (IORING_FEAT_CQE_SKIP, "CQE_SKIP"),
        (IORING_FEAT_LINKED_FILE, "LINKED_FILE"),
        (IORING_FEAT_REG_REG_RING, "REG_REG_RING"),
        (IORING_FEAT_RECVSEND_BUNDLE, "RECVSEND_BUNDLE"),
        (IORING_FEAT_MIN_TIMEOUT, "MIN_TIMEOUT"),
        (IORING_FEAT_RW_ATTR, "RW_ATTR"),
        (IORING_FEAT_NO_IOWAIT, "NO_IOWAIT"),
    ];

    pub const IORING_ENTER_GETEVENTS: u32 = 1 << 0;
    pub const IORING_ENTER_SQ_WAKEUP: u32 = 1 << 1;
    pub const IORING_ENTER_SQ_WAIT: u32 = 1 << 2;
    pub const IORING_ENTER_EXT_ARG: u32 = 1 << 3;
    pub const IORING_ENTER_REGISTERED_RING: u32 = 1 << 4;
    pub const IORING_ENTER_ABS_TIMER: u32 = 1 << 5;
    pub const IORING_ENTER_EXT_ARG_REG: u32 = 1 << 6;
    /// Waiting does not count as iowait (6.15, IORING_FEAT_NO_IOWAIT).
    pub const IORING_ENTER_NO_IOWAIT: u32 = 1 << 7;

    pub const IORING_SQ_NEED_WAKEUP: u32 = 1 << 0;
    pub const IORING_SQ_CQ_OVERFLOW: u32 = 1 << 1;
    pub const IORING_SQ_TASKRUN: u32 = 1 << 2;

    pub const IORING_CQE_F_BUFFER: u32 = 1 << 0;
    pub const IORING_CQE_F_MORE: u32 = 1 << 1;
    pub const IORING_CQE_F_SOCK_NONEMPTY: u32 = 1 << 2;
    pub const IORING_CQE_F_NOTIF: u32 = 1 << 3;
    pub const IORING_CQE_F_BUF_MORE: u32 = 1 << 4;
    pub const IORING_CQE_F_SKIP: u32 = 1 << 5;
    pub const IORING_CQE_F_32: u32 = 1 << 15;
    pub const IORING_CQE_BUFFER_SHIFT: u32 = 16;

    pub const IORING_OFF_SQ_RING: i64 = 0;
    pub const IORING_OFF_CQ_RING: i64 = 0x8000000;
    pub const IORING_OFF_SQES: i64 = 0x10000000;

    pub const IORING_REGISTER_BUFFERS: u32 = 0;
    pub const IORING_UNREGISTER_BUFFERS: u32 = 1;
    pub const IORING_REGISTER_FILES: u32 = 2;
    pub const IORING_UNREGISTER_FILES: u32 = 3;
    pub const IORING_REGISTER_FILES_UPDATE: u32 = 6;
    pub const IORING_REGISTER_PROBE: u32 = 8;
    pub const IORING_REGISTER_ENABLE_RINGS: u32 = 12;
    pub const IORING_REGISTER_IOWQ_AFF: u32 = 17;
    pub const IORING_UNREGISTER_IOWQ_AFF: u32 = 18;
    pub const IORING_REGISTER_IOWQ_MAX_WORKERS: u32 = 19;
    pub const IORING_REGISTER_RING_FDS: u32 = 20;
    pub const IORING_UNREGISTER_RING_FDS: u32 = 21;
    pub const IORING_REGISTER_FILES2: u32 = 13;
    pub const IORING_REGISTER_FILES_UPDATE2: u32 = 14;
    pub const IORING_REGISTER_PBUF_RING: u32 = 22;
    pub const IORING_UNREGISTER_PBUF_RING: u32 = 23;
    pub const IORING_REGISTER_FILE_ALLOC_RANGE: u32 = 25;
    pub const IORING_REGISTER_PBUF_STATUS: u32 = 26;
    pub const IORING_REGISTER_NAPI: u32 = 27;
    pub const IORING_UNREGISTER_NAPI: u32 = 28;
    /// `io_uring_rsrc_register.flags`: a table of empty slots (5.19).
    pub const IORING_RSRC_REGISTER_SPARSE: u32 = 1;
    /// `file_index` asking the kernel to pick a free slot of the table (5.19).
    pub const IORING_FILE_INDEX_ALLOC: u32 = u32::MAX;
    /// `io_uring_buf_reg.flags`: buffers consumed incrementally (6.12).
    pub const IOU_PBUF_RING_INC: u16 = 2;
    /// NAPI tracking strategies (`io_uring_napi.op_param`, 6.13).
    pub const IO_URING_NAPI_TRACKING_DYNAMIC: u32 = 0;
    pub const IO_URING_NAPI_TRACKING_STATIC: u32 = 1;
    pub const IO_URING_NAPI_REGISTER_OP: u8 = 0;
    pub const IORING_REGISTER_USE_REGISTERED_RING: u32 = 1 << 31;

    pub const IO_URING_OP_SUPPORTED: u16 = 1;

    /// Kernel limits (io_uring.c): SQ entries without CLAMP, CQ entries without CLAMP.
    pub const IORING_MAX_ENTRIES: u32 = 32768;
    pub const IORING_MAX_CQ_ENTRIES: u32 = 2 * IORING_MAX_ENTRIES;

    /// Opcode names, by number, as in `enum io_uring_op` (6.18 ends at PIPE; NOP128 and
    /// URING_CMD128 are 6.19).
    pub const OPCODE_NAMES: &[&str] = &[
        "IORING_OP_NOP",
        "IORING_OP_READV",
        "IORING_OP_WRITEV",
        "IORING_OP_FSYNC",
        "IORING_OP_READ_FIXED",
        "IORING_OP_WRITE_FIXED",
        "IORING_OP_POLL_ADD",
        "IORING_OP_POLL_REMOVE",
        "IORING_OP_SYNC_FILE_RANGE",
        "IORING_OP_SENDMSG",
        "IORING_OP_RECVMSG",
        "IORING_OP_TIMEOUT",
        "IORING_OP_TIMEOUT_REMOVE",
        "IORING_OP_ACCEPT",
        "IORING_OP_ASYNC_CANCEL",
        "IORING_OP_LINK_TIMEOUT",
        "IORING_OP_CONNECT",
        "IORING_OP_FALLOCATE",
        "IORING_OP_OPENAT",
        "IORING_OP_CLOSE",
        "IORING_OP_FILES_UPDATE",
        "IORING_OP_STATX",
        "IORING_OP_READ",
        "IORING_OP_WRITE",
        "IORING_OP_FADVISE",
        "IORING_OP_MADVISE",
        "IORING_OP_SEND",
        "IORING_OP_RECV",
        "IORING_OP_OPENAT2",
        "IORING_OP_EPOLL_CTL",
        "IORING_OP_SPLICE",
        "IORING_OP_PROVIDE_BUFFERS",
        "IORING_OP_REMOVE_BUFFERS",
        "IORING_OP_TEE",
        "IORING_OP_SHUTDOWN",
        "IORING_OP_RENAMEAT",
        "IORING_OP_UNLINKAT",
        "IORING_OP_MKDIRAT",
        "IORING_OP_SYMLINKAT",
        "IORING_OP_LINKAT",
        "IORING_OP_MSG_RING",
        "IORING_OP_FSETXATTR",
        "IORING_OP_SETXATTR",
        "IORING_OP_FGETXATTR",
        "IORING_OP_GETXATTR",
        "IORING_OP_SOCKET",
        "IORING_OP_URING_CMD",
        "IORING_OP_SEND_ZC",
        "IORING_OP_SENDMSG_ZC",
        "IORING_OP_READ_MULTISHOT",
        "IORING_OP_WAITID",
        "IORING_OP_FUTEX_WAIT",
        "IORING_OP_FUTEX_WAKE",
        "IORING_OP_FUTEX_WAITV",
        "IORING_OP_FIXED_FD_INSTALL",
        "IORING_OP_FTRUNCATE",
        "IORING_OP_BIND",
        "IORING_OP_LISTEN",
        "IORING_OP_RECV_ZC",
        "IORING_OP_EPOLL_WAIT",
        "IORING_OP_READV_FIXED",
        "IORING_OP_WRITEV_FIXED",
        "IORING_OP_PIPE",
        "IORING_OP_NOP128",
        "IORING_OP_URING_CMD128",
    ];
}

use consts::*;

/// `IORING_SETUP_A|IORING_SETUP_B`, unknown bits as `0x...`; "none" for 0.
pub fn setup_flag_names(flags: u32) -> String {
    names_of(flags, SETUP_FLAGS)
}

/// Feature bits by name (`SINGLE_MMAP|NODROP|...`).
pub fn feature_names(features: u32) -> String {
    names_of(features, FEATURES)
}

fn names_of(bits: u32, table: &[(u32, &str)]) -> String {
    if bits == 0 {
        return "none".to_string();
    }
    let mut out = Vec::new();
    let mut rest = bits;
    for (bit, name) in table {
        if bits & bit != 0 {
            out.push(name.to_string());
            rest &= !bit;
        }
    }
    if rest != 0 {
        out.push(format!("{rest:#x}"));
    }
    out.join("|")
}

/// The kernel's name of an opcode number (`IORING_OP_READ_FIXED`), or `IORING_OP_<n>`.
pub fn opcode_name(op: u8) -> String {
    OPCODE_NAMES
        .get(op as usize)
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("IORING_OP_{op}"))
}

/// The symbolic name of an errno (`EINVAL`), or `errno <n>`.
pub fn errno_name(errno: i32) -> String {
    let n = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::EPIPE => "EPIPE",
        libc::ERANGE => "ERANGE",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTSUP => "EOPNOTSUPP",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EBADFD => "EBADFD",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::ECONNRESET => "ECONNRESET",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ETIME => "ETIME",
        libc::ECANCELED => "ECANCELED",
        libc::EALREADY => "EALREADY",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::EOWNERDEAD => "EOWNERDEAD",
        libc::EDQUOT => "EDQUOT",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::ENOTCONN => "ENOTCONN",
        _ => return format!("errno {errno}"),
    };
    n.to_string()
}

fn last_errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct SqringOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    flags: u32,
    dropped: u32,
    array: u32,
    resv1: u32,
    user_addr: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct CqringOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    overflow: u32,
    cqes: u32,
    flags: u32,
    resv1: u32,
    user_addr: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct IoUringParams {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    features: u32,
    wq_fd: u32,
    resv: [u32; 3],
    sq_off: SqringOffsets,
    cq_off: CqringOffsets,
}

const _: () = assert!(std::mem::size_of::<IoUringParams>() == 120);
const _: () = assert!(std::mem::size_of::<io_uring::squeue::Entry>() == 64);
const _: () = assert!(std::mem::size_of::<io_uring::squeue::Entry128>() == 128);

/// struct io_uring_getevents_arg (IORING_ENTER_EXT_ARG).
#[repr(C)]
struct GeteventsArg {
    sigmask: u64,
    sigmask_sz: u32,
    min_wait_usec: u32,
    ts: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct RsrcUpdate {
    pub(super) offset: u32,
    pub(super) resv: u32,
    pub(super) data: u64,
}

/// What to ask `io_uring_setup` for. Only these fields reach the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetupParams {
    /// IORING_SETUP_* bits, passed as they are (nothing is added or dropped).
    pub flags: u32,
    pub sq_entries: u32,
    /// Used only with IORING_SETUP_CQSIZE.
    pub cq_entries: u32,
    /// Used only with IORING_SETUP_SQ_AFF.
    pub sq_thread_cpu: u32,
    /// Used only with IORING_SETUP_SQPOLL; 0 lets the kernel choose (1 s).
    pub sq_thread_idle_ms: u32,
    /// Used only with IORING_SETUP_ATTACH_WQ: the fd of the ring whose io-wq to share.
    pub wq_fd: Option<RawFd>,
}

impl Default for SetupParams {
    fn default() -> Self {
        SetupParams {
            flags: 0,
            sq_entries: 256,
            cq_entries: 0,
            sq_thread_cpu: 0,
            sq_thread_idle_ms: 0,
            wq_fd: None,
        }
    }
}

/// `io_uring_setup` (or mapping the ring) failed. Names the errno and every flag asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetupError {
    pub errno: i32,
    pub flags: u32,
    pub message: String,
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}) with flags {}: {}",
            errno_name(self.errno),
            io::Error::from_raw_os_error(self.errno),
            setup_flag_names(self.flags),
            self.message
        )
    }
}

impl std::error::Error for SetupError {}

/// The submission queue is full: submit (and reap) before pushing more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqFull;

impl fmt::Display for SqFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "submission queue full: submit pending entries first, or raise --sq-entries"
        )
    }
}

impl std::error::Error for SqFull {}

/// One completion. `big` holds the extra 16 bytes of a 32-byte CQE (CQE32 rings, or
/// IORING_CQE_F_32 entries of CQE_MIXED rings); zero otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cqe {
    pub user_data: u64,
    pub res: i32,
    pub flags: u32,
    pub big: [u64; 2],
}

impl Cqe {
    /// The provided-buffer id, when IORING_CQE_F_BUFFER is set.
    pub fn buffer_id(&self) -> Option<u16> {
        (self.flags & IORING_CQE_F_BUFFER != 0)
            .then_some((self.flags >> IORING_CQE_BUFFER_SHIFT) as u16)
    }
    /// IORING_CQE_F_MORE: a multishot request stays armed.
    pub fn more(&self) -> bool {
        self.flags & IORING_CQE_F_MORE != 0
    }
}

/// Anonymous, page-aligned memory from `mmap`, zero-filled, unmapped on drop.
pub struct AnonMem {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: AnonMem exclusively owns its mapping; moving it between threads is fine.
unsafe impl Send for AnonMem {}
// SAFETY: shared references only give out `&[u8]`.
unsafe impl Sync for AnonMem {}

/// The page size of this machine.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

impl AnonMem {
    /// Maps `len` bytes (rounded up to whole pages, at least one page).
    pub fn new(len: usize) -> io::Result<AnonMem> {
        let ps = page_size();
        let len = len.max(1).div_ceil(ps) * ps;
        // SAFETY: anonymous private mapping, no fd, no fixed address.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(AnonMem { ptr: p.cast(), len })
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` writable bytes exclusively borrowed through self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AnonMem {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A kernel mapping of the ring fd (mmap with IORING_OFF_*).
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn map(fd: RawFd, len: usize, offset: i64) -> io::Result<Mapping> {
        // SAFETY: shared mapping of an io_uring fd region, length from the kernel's offsets.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr: p.cast(), len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[allow(dead_code)] // the fields only keep the memory alive until drop
enum Memory {
    /// Kernel-allocated, mapped from the fd: rings (and a separate CQ ring without
    /// FEAT_SINGLE_MMAP) and SQEs.
    Mapped {
        rings: Mapping,
        cq: Option<Mapping>,
        sqes: Mapping,
    },
    /// NO_MMAP: ours, handed to the kernel in `sq_off.user_addr` / `cq_off.user_addr`.
    Owned { rings: AnonMem, sqes: AnonMem },
}

/// An io_uring instance: owns its fd (or registered index), its memory and its queues.
pub struct Ring {
    pub(super) fd: Option<RawFd>,
    /// Registered ring index (REGISTERED_FD_ONLY, or after `register_ring_fd`).
    pub(super) reg_index: Option<u32>,
    /// The thread the registered index belongs to.
    pub(super) reg_thread: Option<ThreadId>,
    flags: u32,
    features: u32,
    sq_entries: u32,
    cq_entries: u32,

    sq_khead: *const AtomicU32,
    sq_ktail: *const AtomicU32,
    sq_kflags: *const AtomicU32,
    sq_kdropped: *const AtomicU32,
    sq_mask: u32,
    sqes: *mut u8,
    sqe_size: usize,
    sq_tail: u32,
    /// Tail value last stored to the kernel.
    sq_published: u32,

    cq_khead: *const AtomicU32,
    cq_ktail: *const AtomicU32,
    cq_koverflow: *const AtomicU32,
    cq_mask: u32,
    cqes: *const u8,
    cq_head: u32,

    enter_calls: u64,
    cqe_skips: u64,
    pub(super) disabled: bool,
    /// Flags added to every io_uring_enter that waits (IORING_ENTER_NO_IOWAIT).
    wait_flags: u32,
    /// What this ring handed to the kernel (`sys::stats`).
    stats: std::sync::Arc<super::stats::RingStats>,
    /// Keeps the ring memory alive; dropped after the fd is closed.
    _mem: Memory,
}

// SAFETY: the raw pointers point into memory owned by this Ring (or the kernel's mapping
// of its fd); nothing is shared with other Rust objects. Registered indices are checked
// against the calling thread before use.
unsafe impl Send for Ring {}

fn roundup_pow2(v: u32) -> u64 {
    (v.max(1) as u64).next_power_of_two()
}

/// Upper bounds of the ring and SQE region sizes the kernel will ask for under NO_MMAP.
fn no_mmap_sizes(p: &SetupParams) -> (usize, usize) {
    let clamp = p.flags & IORING_SETUP_CLAMP != 0;
    let mut sq = roundup_pow2(p.sq_entries);
    if clamp {
        sq = sq.min(IORING_MAX_ENTRIES as u64);
    }
    let cq = if p.flags & IORING_SETUP_CQSIZE != 0 {
        let c = roundup_pow2(p.cq_entries);
        if clamp {
            c.min(IORING_MAX_CQ_ENTRIES as u64)
        } else {
            c
        }
    } else {
        2 * sq
    };
    // Cap so a refused size (the kernel rejects it before pinning) does not make us map
    // gigabytes: the kernel's maxima are 32768 / 65536.
    let sq = sq.min(IORING_MAX_ENTRIES as u64 * 2) as usize;
    let cq = cq.min(IORING_MAX_CQ_ENTRIES as u64 * 2) as usize;
    // struct io_rings header is 320 bytes on 64-byte cache lines; take a page. CQEs are
    // at most 32 bytes each; the SQ array (u32 per entry) follows, cache-line aligned.
    let rings = 4096 + cq * 32 + 64 + sq * 4;
    let sqe = if p.flags & IORING_SETUP_SQE128 != 0 {
        128
    } else {
        64
    };
    (rings, sq * sqe)
}

impl Ring {
    /// Creates a ring with exactly `p.flags`. Nothing is added, dropped or retried.
    pub fn setup(p: &SetupParams) -> Result<Ring, SetupError> {
        let err = |errno: i32, message: String| SetupError {
            errno,
            flags: p.flags,
            message,
        };
        let mut params = IoUringParams {
            flags: p.flags,
            cq_entries: p.cq_entries,
            sq_thread_cpu: p.sq_thread_cpu,
            sq_thread_idle: p.sq_thread_idle_ms,
            wq_fd: p.wq_fd.map(|f| f as u32).unwrap_or(0),
            ..Default::default()
        };
        let no_mmap = p.flags & IORING_SETUP_NO_MMAP != 0;
        let owned = if no_mmap {
            let (rl, sl) = no_mmap_sizes(p);
            let rings = AnonMem::new(rl).map_err(|e| {
                err(
                    e.raw_os_error().unwrap_or(libc::ENOMEM),
                    format!("allocating {rl} bytes of ring memory for NO_MMAP"),
                )
            })?;
            let sqes = AnonMem::new(sl).map_err(|e| {
                err(
                    e.raw_os_error().unwrap_or(libc::ENOMEM),
                    format!("allocating {sl} bytes of SQE memory for NO_MMAP"),
                )
            })?;
            for m in [&rings, &sqes] {
                // SAFETY: advice on our own mapping. MADV_DONTFORK keeps a forked child
                // from sharing (copy-on-write) the pages the kernel pins as the ring.
                unsafe {
                    libc::madvise(
                        m.as_ptr() as *mut libc::c_void,
                        m.len(),
                        libc::MADV_DONTFORK,
                    )
                };
            }
            params.cq_off.user_addr = rings.as_ptr() as u64;
            params.sq_off.user_addr = sqes.as_ptr() as u64;
            Some((rings, sqes))
        } else {
            None
        };
        // SAFETY: io_uring_setup reads and writes exactly one io_uring_params (120 bytes,
        // layout asserted above); under NO_MMAP the user_addr regions stay alive in `owned`.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_setup,
                p.sq_entries as libc::c_long,
                &mut params as *mut IoUringParams,
            )
        };
        if r < 0 {
            let e = last_errno();
            let hint = match e {
                libc::EPERM => "io_uring is forbidden here (sysctl kernel.io_uring_disabled, or seccomp); use the blocking backend",
                libc::ENOSYS => "this kernel has no io_uring",
                libc::EINVAL => "the kernel refuses this combination of flags or sizes",
                libc::EFAULT => "ring memory missing or unusable",
                libc::ENOMEM => "not enough lockable memory (RLIMIT_MEMLOCK) or memory",
                _ => "io_uring_setup failed",
            };
            return Err(err(
                e,
                format!("io_uring_setup(sq_entries={}): {hint}", p.sq_entries),
            ));
        }
        let ret = r as i32;
        let (fd, reg_index) = if p.flags & IORING_SETUP_REGISTERED_FD_ONLY != 0 {
            (None, Some(ret as u32))
        } else {
            (Some(ret), None)
        };
        let close_on_err = |e: SetupError| {
            if let Some(fd) = fd {
                // SAFETY: fd was returned by io_uring_setup and is owned here.
                unsafe { libc::close(fd) };
            }
            if let Some(idx) = reg_index {
                let up = RsrcUpdate {
                    offset: idx,
                    ..Default::default()
                };
                // SAFETY: unregisters the one ring index setup gave us.
                unsafe {
                    libc::syscall(
                        libc::SYS_io_uring_register,
                        idx as libc::c_long,
                        (IORING_UNREGISTER_RING_FDS | IORING_REGISTER_USE_REGISTERED_RING)
                            as libc::c_long,
                        &up as *const RsrcUpdate,
                        1 as libc::c_long,
                    )
                };
            }
            e
        };

        let cqe_size: usize = if p.flags & IORING_SETUP_CQE32 != 0 {
            32
        } else {
            16
        };
        let sqe_size: usize = if p.flags & IORING_SETUP_SQE128 != 0 {
            128
        } else {
            64
        };
        let (mem, rings_base, cq_base, sqes_base) = match owned {
            Some((mut rings, mut sqes)) => {
                // The kernel pinned its own idea of the sizes from our addresses; make sure
                // everything it described lies inside what we allocated.
                let cq_end = params.cq_off.cqes as usize + params.cq_entries as usize * cqe_size;
                let sq_end = if p.flags & IORING_SETUP_NO_SQARRAY == 0 {
                    params.sq_off.array as usize + params.sq_entries as usize * 4
                } else {
                    0
                };
                let sqe_end = params.sq_entries as usize * sqe_size;
                if cq_end.max(sq_end) > rings.len() || sqe_end > sqes.len() {
                    let e = err(
                        libc::EOVERFLOW,
                        format!(
                            "NO_MMAP: the kernel's ring layout ({} ring bytes, {sqe_end} SQE bytes) exceeds the memory supplied ({} / {}); this is an engine bug",
                            cq_end.max(sq_end),
                            rings.len(),
                            sqes.len()
                        ),
                    );
                    // Close the ring before its memory goes away.
                    let e = close_on_err(e);
                    drop((rings, sqes));
                    return Err(e);
                }
                let rb = rings.as_mut_ptr();
                let sb = sqes.as_mut_ptr();
                (Memory::Owned { rings, sqes }, rb, rb, sb)
            }
            None => {
                let fd = fd.expect("a ring without NO_MMAP has an fd");
                let mut sq_len = params.sq_off.array as usize + params.sq_entries as usize * 4;
                let mut cq_len =
                    params.cq_off.cqes as usize + params.cq_entries as usize * cqe_size;
                let single = params.features & IORING_FEAT_SINGLE_MMAP != 0;
                if single {
                    sq_len = sq_len.max(cq_len);
                    cq_len = sq_len;
                }
                let rings = Mapping::map(fd, sq_len, IORING_OFF_SQ_RING).map_err(|e| {
                    close_on_err(err(
                        e.raw_os_error().unwrap_or(libc::EIO),
                        format!("mmap of the SQ ring ({sq_len} bytes)"),
                    ))
                })?;
                let cq = if single {
                    None
                } else {
                    Some(Mapping::map(fd, cq_len, IORING_OFF_CQ_RING).map_err(|e| {
                        close_on_err(err(
                            e.raw_os_error().unwrap_or(libc::EIO),
                            format!("mmap of the CQ ring ({cq_len} bytes)"),
                        ))
                    })?)
                };
                let sqe_len = params.sq_entries as usize * sqe_size;
                let sqes = Mapping::map(fd, sqe_len, IORING_OFF_SQES).map_err(|e| {
                    close_on_err(err(
                        e.raw_os_error().unwrap_or(libc::EIO),
                        format!("mmap of the SQEs ({sqe_len} bytes)"),
                    ))
                })?;
                let rb = rings.ptr;
                let cb = cq.as_ref().map_or(rb, |m| m.ptr);
                let sb = sqes.ptr;
                (Memory::Mapped { rings, cq, sqes }, rb, cb, sb)
            }
        };

        let so = params.sq_off;
        let co = params.cq_off;
        // SAFETY: the offsets come from the kernel and lie inside the regions mapped or
        // allocated above (sizes derived from the same offsets or bounded from above).
        let ring = unsafe {
            let at = |base: *mut u8, off: u32| base.add(off as usize) as *const AtomicU32;
            Ring {
                fd,
                reg_index,
                reg_thread: reg_index.map(|_| std::thread::current().id()),
                // What the kernel left in io_uring_params.flags after setup.
                flags: params.flags,
                features: params.features,
                sq_entries: params.sq_entries,
                cq_entries: params.cq_entries,
                sq_khead: at(rings_base, so.head),
                sq_ktail: at(rings_base, so.tail),
                sq_kflags: at(rings_base, so.flags),
                sq_kdropped: at(rings_base, so.dropped),
                sq_mask: *(rings_base.add(so.ring_mask as usize) as *const u32),
                sqes: sqes_base,
                sqe_size,
                sq_tail: (*at(rings_base, so.tail)).load(Ordering::Relaxed),
                sq_published: (*at(rings_base, so.tail)).load(Ordering::Relaxed),
                cq_khead: at(cq_base, co.head),
                cq_ktail: at(cq_base, co.tail),
                cq_koverflow: at(cq_base, co.overflow),
                cq_mask: *(cq_base.add(co.ring_mask as usize) as *const u32),
                cqes: cq_base.add(co.cqes as usize),
                cq_head: (*at(cq_base, co.head)).load(Ordering::Relaxed),
                enter_calls: 0,
                cqe_skips: 0,
                wait_flags: 0,
                stats: super::stats::register(),
                disabled: p.flags & IORING_SETUP_R_DISABLED != 0,
                _mem: mem,
            }
        };
        if p.flags & IORING_SETUP_NO_SQARRAY == 0 {
            // SAFETY: the SQ index array has sq_entries u32 slots at sq_off.array.
            unsafe {
                let arr = rings_base.add(so.array as usize) as *mut u32;
                for i in 0..params.sq_entries {
                    *arr.add(i as usize) = i;
                }
            }
        }
        Ok(ring)
    }

    /// The setup flags this ring was created with (exactly those asked for).
    pub fn flags(&self) -> u32 {
        self.flags
    }
    /// IORING_FEAT_* bits the kernel returned.
    pub fn features(&self) -> u32 {
        self.features
    }
    pub fn sq_entries(&self) -> u32 {
        self.sq_entries
    }
    pub fn cq_entries(&self) -> u32 {
        self.cq_entries
    }
    /// The ring fd; None for REGISTERED_FD_ONLY rings.
    pub fn fd(&self) -> Option<RawFd> {
        self.fd
    }
    /// The registered ring index, when the ring fd is registered (or REGISTERED_FD_ONLY).
    pub fn registered_index(&self) -> Option<u32> {
        self.reg_index
    }
    /// io_uring_enter system calls made so far.
    pub fn enter_calls(&self) -> u64 {
        self.enter_calls
    }
    /// IORING_CQE_F_SKIP padding entries consumed (CQE_MIXED rings).
    pub fn cqe_skips(&self) -> u64 {
        self.cqe_skips
    }
    /// SQEs the kernel dropped as invalid (sq_dropped).
    pub fn sq_dropped(&self) -> u32 {
        // SAFETY: pointer into the live ring memory.
        unsafe { (*self.sq_kdropped).load(Ordering::Acquire) }
    }
    /// CQEs lost to overflow (only without FEAT_NODROP).
    pub fn cq_overflow(&self) -> u32 {
        // SAFETY: pointer into the live ring memory.
        unsafe { (*self.cq_koverflow).load(Ordering::Acquire) }
    }
    /// Whether the ring is still disabled (R_DISABLED and not yet enabled).
    pub fn is_disabled(&self) -> bool {
        self.disabled
    }

    fn sq_flags(&self) -> u32 {
        // SAFETY: pointer into the live ring memory.
        unsafe { (*self.sq_kflags).load(Ordering::Acquire) }
    }

    fn sq_head(&self) -> u32 {
        // SAFETY: pointer into the live ring memory.
        unsafe { (*self.sq_khead).load(Ordering::Acquire) }
    }

    /// Free SQ slots.
    pub fn sq_space_left(&self) -> usize {
        (self.sq_entries - self.sq_tail.wrapping_sub(self.sq_head())) as usize
    }

    /// Entries pushed and not yet published to the kernel plus those published and not
    /// yet consumed.
    pub fn sq_pending(&self) -> usize {
        self.sq_tail.wrapping_sub(self.sq_head()) as usize
    }

    fn slot(&mut self) -> Result<*mut u8, SqFull> {
        if self.sq_tail.wrapping_sub(self.sq_head()) >= self.sq_entries {
            return Err(SqFull);
        }
        let idx = (self.sq_tail & self.sq_mask) as usize;
        // SAFETY: idx < sq_entries, the SQE array has sq_entries slots of sqe_size bytes.
        Ok(unsafe { self.sqes.add(idx * self.sqe_size) })
    }

    /// Queues one 64-byte SQE (on an SQE128 ring the upper half is zeroed).
    ///
    /// # Safety
    /// Every buffer, iovec, file descriptor and other memory the SQE refers to must stay
    /// valid (and not be moved or freed) until its CQE has been reaped.
    pub unsafe fn push(&mut self, sqe: &io_uring::squeue::Entry) -> Result<(), SqFull> {
        let dst = self.slot()?;
        // SAFETY: Entry is the 64-byte io_uring_sqe (size asserted), plain bytes.
        let raw: &[u8; 64] = unsafe { &*(sqe as *const io_uring::squeue::Entry).cast() };
        self.stats.count_sqe(raw);
        // SAFETY: dst has sqe_size >= 64 bytes.
        unsafe {
            ptr::copy_nonoverlapping(raw.as_ptr(), dst, 64);
            if self.sqe_size == 128 {
                ptr::write_bytes(dst.add(64), 0, 64);
            }
        }
        self.sq_tail = self.sq_tail.wrapping_add(1);
        Ok(())
    }

    /// Queues an IORING_OP_NOP. Safe: a NOP refers to no buffer, descriptor or other
    /// memory (`recorder io-bench --nop`, the ring's own overhead floor).
    pub fn push_nop(&mut self, user_data: u64) -> Result<(), SqFull> {
        let sqe = io_uring::opcode::Nop::new().build().user_data(user_data);
        // SAFETY: a NOP carries no pointer or descriptor for the kernel to use.
        unsafe { self.push(&sqe) }
    }

    /// Queues one 128-byte SQE.
    ///
    /// # Safety
    /// As for [`Ring::push`].
    ///
    /// # Panics
    /// If the ring was not set up with IORING_SETUP_SQE128 (a programming error).
    pub unsafe fn push128(&mut self, sqe: &io_uring::squeue::Entry128) -> Result<(), SqFull> {
        assert!(
            self.sqe_size == 128,
            "push128 on a ring without IORING_SETUP_SQE128"
        );
        let dst = self.slot()?;
        // SAFETY: Entry128 is 128 bytes (asserted), plain bytes; its first 64 are the SQE.
        let raw: &[u8; 64] = unsafe { &*(sqe as *const io_uring::squeue::Entry128).cast() };
        self.stats.count_sqe(raw);
        // SAFETY: Entry128 is 128 bytes (asserted); dst has 128 bytes.
        unsafe { ptr::copy_nonoverlapping(sqe as *const _ as *const u8, dst, 128) };
        self.sq_tail = self.sq_tail.wrapping_add(1);
        Ok(())
    }

    fn publish_tail(&self) {
        // SAFETY: pointer into the live ring memory; release orders the SQE stores before it.
        unsafe { (*self.sq_ktail).store(self.sq_tail, Ordering::Release) };
    }

    /// The fd/flags pair io_uring_enter/register should use from this thread.
    fn target(&self) -> io::Result<(libc::c_long, bool)> {
        if let Some(idx) = self.reg_index {
            if self.reg_thread == Some(std::thread::current().id()) {
                return Ok((idx as libc::c_long, true));
            }
        }
        match self.fd {
            Some(fd) => Ok((fd as libc::c_long, false)),
            None => Err(io::Error::other(
                "REGISTERED_FD_ONLY ring used from a thread other than the one that created it; \
                 its registered index is only valid there",
            )),
        }
    }

    fn enter_raw(
        &mut self,
        to_submit: u32,
        min_complete: u32,
        flags: u32,
        arg: Option<&GeteventsArg>,
    ) -> io::Result<u32> {
        let (fd, registered) = self.target()?;
        let mut flags = if registered {
            flags | IORING_ENTER_REGISTERED_RING
        } else {
            flags
        };
        if flags & IORING_ENTER_GETEVENTS != 0 {
            flags |= self.wait_flags;
        }
        let (argp, argsz) = match arg {
            Some(a) => {
                flags |= IORING_ENTER_EXT_ARG;
                (
                    a as *const GeteventsArg as *const libc::c_void,
                    std::mem::size_of::<GeteventsArg>(),
                )
            }
            None => (ptr::null(), 0),
        };
        self.enter_calls += 1;
        self.stats.count_enter(
            flags,
            min_complete,
            arg.is_some_and(|a| a.ts != 0),
            arg.is_some_and(|a| a.min_wait_usec != 0),
        );
        // SAFETY: argp is null (argsz 0) or points to a live io_uring_getevents_arg whose
        // `ts` points to a live timespec (both borrowed for the duration of the call).
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                fd,
                to_submit as libc::c_long,
                min_complete as libc::c_long,
                flags as libc::c_long,
                argp,
                argsz as libc::c_long,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as u32)
        }
    }

    /// Submits everything pushed so far; does not wait. Returns the number of SQEs handed
    /// to the kernel (for SQPOLL: published to the poller thread).
    ///
    /// Enters the kernel with GETEVENTS (and `min_complete` 0) whenever completions
    /// would otherwise stay invisible: IOPOLL (completions are found by polling),
    /// DEFER_TASKRUN (task work runs only inside enter), IORING_SQ_TASKRUN or a CQ overflow.
    /// Makes no system call when there is nothing to submit and none of those holds.
    /// EINTR is retried; EAGAIN/EBUSY return `Ok(0)` when completions are waiting to be
    /// reaped (reap them, then submit again), otherwise the error.
    pub fn submit(&mut self) -> io::Result<usize> {
        self.submit_inner(0, None)
    }

    /// Submits and waits until at least `want` completions are visible. Makes no system
    /// call when nothing is pending and `want` completions are already visible.
    pub fn submit_and_wait(&mut self, want: usize) -> io::Result<usize> {
        self.submit_inner(want, None)
    }

    /// As [`Ring::submit_and_wait`], but gives up after `timeout` (IORING_ENTER_EXT_ARG,
    /// Linux 5.11+). Returns the SQEs submitted; a timeout is not an error (check the CQ).
    pub fn submit_and_wait_timeout(
        &mut self,
        want: usize,
        timeout: std::time::Duration,
    ) -> io::Result<usize> {
        self.submit_and_wait_args(want, Some(timeout), None)
    }

    /// Submits and waits for `want` completions with the wait's arguments in the enter
    /// (IORING_ENTER_EXT_ARG, 5.11+: no TIMEOUT SQE): give up after `timeout`; with
    /// `min_wait` (IORING_FEAT_MIN_TIMEOUT, 6.12+) return once `min_wait` has passed and
    /// at least one completion is there, so `want` > 1 batches completions under load
    /// without holding one back for long when the ring is quiet. A timeout is not an error.
    pub fn submit_and_wait_args(
        &mut self,
        want: usize,
        timeout: Option<std::time::Duration>,
        min_wait: Option<std::time::Duration>,
    ) -> io::Result<usize> {
        if self.features & IORING_FEAT_EXT_ARG == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "waiting with arguments in the enter needs IORING_FEAT_EXT_ARG (Linux 5.11+)",
            ));
        }
        if min_wait.is_some() && self.features & IORING_FEAT_MIN_TIMEOUT == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "min_wait_usec needs IORING_FEAT_MIN_TIMEOUT (Linux 6.12+)",
            ));
        }
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs() as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        let arg = GeteventsArg {
            sigmask: 0,
            sigmask_sz: 0,
            min_wait_usec: min_wait.map_or(0, |m| {
                (m.as_micros() as u64).clamp(1, u32::MAX as u64) as u32
            }),
            ts: ts.as_ref().map_or(0, |t| t as *const libc::timespec as u64),
        };
        match self.submit_inner(want, Some(&arg)) {
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => Ok(0),
            r => r,
        }
    }

    /// With `on`, every enter that waits carries IORING_ENTER_NO_IOWAIT (6.15+,
    /// IORING_FEAT_NO_IOWAIT): time blocked waiting is not accounted as iowait.
    pub fn set_no_iowait(&mut self, on: bool) -> io::Result<()> {
        if on && self.features & IORING_FEAT_NO_IOWAIT == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "IORING_ENTER_NO_IOWAIT needs IORING_FEAT_NO_IOWAIT (Linux 6.15+)",
            ));
        }
        self.wait_flags = if on { IORING_ENTER_NO_IOWAIT } else { 0 };
        Ok(())
    }

    /// SQPOLL: waits until the SQ thread has made room in a full SQ (IORING_ENTER_SQ_WAIT).
    /// Other rings: submits (which consumes the SQ).
    pub fn wait_sq_space(&mut self) -> io::Result<()> {
        if self.flags & IORING_SETUP_SQPOLL == 0 {
            return self.submit().map(|_| ());
        }
        self.publish_tail();
        self.sq_published = self.sq_tail;
        fence(Ordering::SeqCst);
        let mut flags = IORING_ENTER_SQ_WAIT;
        if self.sq_flags() & IORING_SQ_NEED_WAKEUP != 0 {
            flags |= IORING_ENTER_SQ_WAKEUP;
        }
        loop {
            match self.enter_raw(0, 0, flags, None) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn submit_inner(&mut self, want: usize, arg: Option<&GeteventsArg>) -> io::Result<usize> {
        if self.disabled {
            return Err(io::Error::from_raw_os_error(libc::EBADFD));
        }
        let want = want.min(u32::MAX as usize) as u32;
        self.publish_tail();
        let published = self.sq_tail;
        let newly = published.wrapping_sub(self.sq_published);
        self.sq_published = published;
        let satisfied = want > 0 && self.cq_ready() >= want as usize;
        if self.flags & IORING_SETUP_SQPOLL != 0 {
            // The tail store must be visible before we read NEED_WAKEUP (kernel pairs
            // this with a full barrier before it sets the flag and re-checks the tail).
            fence(Ordering::SeqCst);
            let mut flags = 0;
            let sqf = self.sq_flags();
            if sqf & IORING_SQ_NEED_WAKEUP != 0 {
                flags |= IORING_ENTER_SQ_WAKEUP;
            }
            if (want > 0 && !satisfied) || sqf & (IORING_SQ_CQ_OVERFLOW | IORING_SQ_TASKRUN) != 0 {
                flags |= IORING_ENTER_GETEVENTS;
            }
            if flags != 0 {
                let min = if flags & IORING_ENTER_GETEVENTS != 0 {
                    want
                } else {
                    0
                };
                loop {
                    match self.enter_raw(0, min, flags, arg) {
                        Ok(_) => break,
                        Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                        Err(e) => return self.busy_or(e, newly as usize),
                    }
                }
            }
            return Ok(newly as usize);
        }
        loop {
            let to_submit = published.wrapping_sub(self.sq_head());
            if to_submit == 0 && satisfied {
                return Ok(0);
            }
            let mut flags = 0;
            if want > 0
                || self.flags & (IORING_SETUP_IOPOLL | IORING_SETUP_DEFER_TASKRUN) != 0
                || self.sq_flags() & (IORING_SQ_CQ_OVERFLOW | IORING_SQ_TASKRUN) != 0
            {
                flags |= IORING_ENTER_GETEVENTS;
            }
            if to_submit == 0 && flags == 0 {
                return Ok(0);
            }
            match self.enter_raw(to_submit, want, flags, arg) {
                Ok(n) => return Ok(n as usize),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return self.busy_or(e, 0),
            }
        }
    }

    fn busy_or(&self, e: io::Error, v: usize) -> io::Result<usize> {
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EBUSY) if self.cq_ready() > 0 => Ok(v),
            _ => Err(e),
        }
    }

    /// Completions visible in the CQ now.
    pub fn cq_ready(&self) -> usize {
        // SAFETY: pointer into the live ring memory.
        let tail = unsafe { (*self.cq_ktail).load(Ordering::Acquire) };
        tail.wrapping_sub(self.cq_head) as usize
    }

    /// Reads the CQE at `head` (which must be before the tail): the entry and how many
    /// slots it takes.
    fn cqe_at(&self, head: u32) -> (Cqe, u32) {
        let idx = (head & self.cq_mask) as usize;
        let big_ring = self.flags & IORING_SETUP_CQE32 != 0;
        let mixed = self.flags & IORING_SETUP_CQE_MIXED != 0;
        let stride = if big_ring { 32 } else { 16 };
        // SAFETY: idx < cq_entries; each slot has `stride` bytes. A mixed-ring F_32 entry
        // never wraps (the kernel pads with F_SKIP), so slot idx+1 is in the array.
        unsafe {
            let p = self.cqes.add(idx * stride);
            let user_data = ptr::read_volatile(p as *const u64);
            let res = ptr::read_volatile(p.add(8) as *const i32);
            let flags = ptr::read_volatile(p.add(12) as *const u32);
            let wide = big_ring || (mixed && flags & IORING_CQE_F_32 != 0);
            let big = if wide {
                [
                    ptr::read_volatile(p.add(16) as *const u64),
                    ptr::read_volatile(p.add(24) as *const u64),
                ]
            } else {
                [0, 0]
            };
            let step = if mixed && flags & IORING_CQE_F_32 != 0 {
                2
            } else {
                1
            };
            (
                Cqe {
                    user_data,
                    res,
                    flags,
                    big,
                },
                step,
            )
        }
    }

    fn is_skip(&self, c: &Cqe) -> bool {
        self.flags & IORING_SETUP_CQE_MIXED != 0 && c.flags & IORING_CQE_F_SKIP != 0
    }

    fn cq_tail(&self) -> u32 {
        // SAFETY: pointer into the live ring memory; acquire pairs with the kernel's
        // release of the tail after writing the CQEs.
        unsafe { (*self.cq_ktail).load(Ordering::Acquire) }
    }

    fn store_cq_head(&self) {
        // SAFETY: pointer into the live ring memory; release: we are done reading.
        unsafe { (*self.cq_khead).store(self.cq_head, Ordering::Release) };
    }

    /// Takes the next completion, if one is visible. Handles CQE32 and CQE_MIXED
    /// (32-byte entries flagged IORING_CQE_F_32 take two slots; IORING_CQE_F_SKIP
    /// padding entries are consumed silently).
    pub fn pop_cqe(&mut self) -> Option<Cqe> {
        loop {
            if self.cq_tail() == self.cq_head {
                return None;
            }
            let (cqe, step) = self.cqe_at(self.cq_head);
            self.cq_head = self.cq_head.wrapping_add(step);
            self.store_cq_head();
            if self.is_skip(&cqe) {
                self.cqe_skips += 1;
                continue;
            }
            self.stats.count_cqe(cqe.flags);
            return Some(cqe);
        }
    }

    /// Hands up to `max` visible completions to `f` with one tail load and one head store
    /// (cheaper than `pop_cqe` per entry). Returns how many were handed over.
    pub fn reap(&mut self, max: usize, mut f: impl FnMut(Cqe)) -> usize {
        let tail = self.cq_tail();
        let mut n = 0;
        while self.cq_head != tail && n < max {
            let (cqe, step) = self.cqe_at(self.cq_head);
            self.cq_head = self.cq_head.wrapping_add(step);
            if self.is_skip(&cqe) {
                self.cqe_skips += 1;
                continue;
            }
            self.stats.count_cqe(cqe.flags);
            f(cqe);
            n += 1;
        }
        self.store_cq_head();
        n
    }

    /// io_uring_register on this ring (its fd, or its registered index when it has none).
    pub(crate) fn register(
        &self,
        opcode: u32,
        arg: *const libc::c_void,
        nr_args: u32,
    ) -> io::Result<i32> {
        let (fd, registered) = self.target()?;
        // Plain fds work everywhere; use the registered index only when there is no fd.
        let (fd, opcode) = match (self.fd, registered) {
            (Some(f), _) => (f as libc::c_long, opcode),
            (None, true) => (fd, opcode | IORING_REGISTER_USE_REGISTERED_RING),
            (None, false) => unreachable!("target() returns an fd or the registered index"),
        };
        loop {
            // SAFETY: `arg`/`nr_args` are set up by each caller for its opcode.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_io_uring_register,
                    fd,
                    opcode as libc::c_long,
                    arg,
                    nr_args as libc::c_long,
                )
            };
            if r >= 0 {
                return Ok(r as i32);
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("fd", &self.fd)
            .field("registered_index", &self.reg_index)
            .field("flags", &setup_flag_names(self.flags))
            .field("sq_entries", &self.sq_entries)
            .field("cq_entries", &self.cq_entries)
            .field("enter_calls", &self.enter_calls)
            .finish()
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        super::stats::unregister(&self.stats);
        if let Some(idx) = self.reg_index {
            if self.reg_thread == Some(std::thread::current().id()) {
                let up = RsrcUpdate {
                    offset: idx,
                    ..Default::default()
                };
                let op = if self.fd.is_some() {
                    IORING_UNREGISTER_RING_FDS
                } else {
                    IORING_UNREGISTER_RING_FDS | IORING_REGISTER_USE_REGISTERED_RING
                };
                let fd = self.fd.map_or(idx as libc::c_long, |f| f as libc::c_long);
                // SAFETY: unregisters our own registered index.
                unsafe {
                    libc::syscall(
                        libc::SYS_io_uring_register,
                        fd,
                        op as libc::c_long,
                        &up as *const RsrcUpdate,
                        1,
                    )
                };
            }
            // Otherwise the registration is released when the creating thread exits.
        }
        if let Some(fd) = self.fd {
            // SAFETY: we own the fd.
            unsafe { libc::close(fd) };
        }
        // `_mem` (mappings or NO_MMAP memory) is dropped after this: the kernel keeps its
        // own pins on NO_MMAP pages until the ring is freed.
    }
}

/// One read or write on `ring`, waited for: the probe's way of asking "does this I/O work
/// here". The buffer is page-aligned memory owned by this function (`len` bytes; for a
/// write, filled from `data`). Returns the completion's `res` and the buffer.
/// Completions of other requests seen meanwhile are discarded, so use a dedicated ring.
/// If waiting fails, the buffer is leaked (the kernel may still use it) and the ring
/// should be dropped.
pub fn sync_rw(
    ring: &mut Ring,
    fd: RawFd,
    write: Option<&[u8]>,
    len: u32,
    offset: u64,
) -> io::Result<(i32, AnonMem)> {
    const UD: u64 = 0x5052_4f42_4500_0001;
    let mut buf = AnonMem::new(len as usize)?;
    if let Some(d) = write {
        let n = d.len().min(len as usize);
        buf.as_mut_slice()[..n].copy_from_slice(&d[..n]);
    }
    let sqe = match write {
        Some(_) => io_uring::opcode::Write::new(io_uring::types::Fd(fd), buf.as_ptr(), len),
        None => return sync_read(ring, fd, buf, len, offset, UD),
    }
    .offset(offset)
    .build()
    .user_data(UD);
    // SAFETY: buf is owned here and either outlives the completion (we wait for it) or is
    // leaked on failure; the caller keeps fd open until we return.
    unsafe { ring.push(&sqe) }.map_err(|e| io::Error::other(e.to_string()))?;
    wait_for(ring, UD, buf)
}

fn sync_read(
    ring: &mut Ring,
    fd: RawFd,
    mut buf: AnonMem,
    len: u32,
    offset: u64,
    ud: u64,
) -> io::Result<(i32, AnonMem)> {
    let sqe = io_uring::opcode::Read::new(io_uring::types::Fd(fd), buf.as_mut_ptr(), len)
        .offset(offset)
        .build()
        .user_data(ud);
    // SAFETY: as in sync_rw.
    unsafe { ring.push(&sqe) }.map_err(|e| io::Error::other(e.to_string()))?;
    wait_for(ring, ud, buf)
}

fn wait_for(ring: &mut Ring, ud: u64, buf: AnonMem) -> io::Result<(i32, AnonMem)> {
    loop {
        while let Some(c) = ring.pop_cqe() {
            if c.user_data == ud {
                return Ok((c.res, buf));
            }
        }
        if let Err(e) = ring.submit_and_wait(1) {
            std::mem::forget(buf);
            return Err(e);
        }
    }
}

/// Raw `io_uring_register` on a plain fd (used by `BufRing`, which keeps its own dup of
/// the ring fd so it can unregister safely whatever order things are dropped in).
///
/// # Safety
/// `arg` / `nr_args` must be what the kernel expects for `opcode`, and any memory they
/// describe must stay valid as long as the kernel may use it.
pub(crate) unsafe fn raw_register(
    fd: RawFd,
    opcode: u32,
    arg: *const libc::c_void,
    nr_args: u32,
) -> io::Result<i32> {
    loop {
        // SAFETY: forwarded to the caller's contract.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                fd as libc::c_long,
                opcode as libc::c_long,
                arg,
                nr_args as libc::c_long,
            )
        };
        if r >= 0 {
            return Ok(r as i32);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

// ---- small system probes for `recorder probe` (statx, statfs, rlimits) ----

/// `statx(STATX_DIOALIGN)`: `(mem_align, offset_align)`; `None` when the kernel or
/// filesystem does not report it (or reports 0: O_DIRECT unsupported there).
pub fn statx_dioalign(path: &std::path::Path) -> io::Result<Option<(u32, u32)>> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: statx is plain data; zeroed is a valid value.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string and st a valid statx buffer.
    let r = unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), 0, libc::STATX_DIOALIGN, &mut st) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if st.stx_mask & libc::STATX_DIOALIGN == 0 || st.stx_dio_offset_align == 0 {
        return Ok(None);
    }
    Ok(Some((st.stx_dio_mem_align, st.stx_dio_offset_align)))
}

/// `statfs(path).f_type`.
pub fn statfs_type(path: &std::path::Path) -> io::Result<u64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: statfs is plain data.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and buffer.
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as u64)
}

/// `getrlimit`: `(soft, hard)`, `u64::MAX` meaning unlimited.
pub fn rlimit(resource: libc::__rlimit_resource_t) -> io::Result<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid rlimit buffer.
    if unsafe { libc::getrlimit(resource, &mut r) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((r.rlim_cur, r.rlim_max))
}

/// `(io_uring_enter calls, completions reaped)` over every ring of this process since it
/// started: their ratio is the process's I/Os per system call (`/metrics` exports both).
pub fn process_counters() -> (u64, u64) {
    let s = super::stats::process_stats();
    (s.enter(super::stats::EnterKind::Total), s.cqes)
}

//! What the rings of this process handed to the kernel, counted where it happens: every
//! SQE pushed (by opcode, by IOSQE_* flag, by opcode-specific flag such as
//! IORING_RECVSEND_BUNDLE or IORING_FSYNC_DATASYNC, and the largest length asked per
//! opcode), every io_uring_enter (by how it waited), and completion flags the kernel sets
//! (IORING_CQE_F_BUF_MORE, ...). These are the proof that an option reached the kernel:
//! `/metrics` exports them and the no-silent-knobs test reads them.
//!
//! Each ring owns one [`RingStats`] and is its only writer (plain load + store, no atomic
//! read-modify-write on the hot path); readers sum every live ring's counters and those of
//! rings already dropped ([`process_stats`]).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Opcode slots counted (`IORING_OP_*` numbers below this).
pub const N_OPS: usize = 80;

/// IOSQE_* flag bits, by bit number.
pub const SQE_FLAG_NAMES: [&str; 8] = [
    "IOSQE_FIXED_FILE",
    "IOSQE_IO_DRAIN",
    "IOSQE_IO_LINK",
    "IOSQE_IO_HARDLINK",
    "IOSQE_ASYNC",
    "IOSQE_BUFFER_SELECT",
    "IOSQE_CQE_SKIP_SUCCESS",
    "IOSQE_BIT7",
];

macro_rules! named {
    ($ty:ident { $($v:ident = $name:literal,)* }) => {
        /// Opcode-specific flags and fields counted per SQE.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(usize)]
        pub enum $ty { $($v,)* }
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$v,)*];
            pub const COUNT: usize = [$($name,)*].len();
            pub fn name(self) -> &'static str {
                [$($name,)*][self as usize]
            }
        }
    };
}

named!(OpFlag {
    RecvMultishot = "IORING_RECV_MULTISHOT",
    RecvSendPollFirst = "IORING_RECVSEND_POLL_FIRST",
    RecvSendFixedBuf = "IORING_RECVSEND_FIXED_BUF",
    SendZcReportUsage = "IORING_SEND_ZC_REPORT_USAGE",
    RecvSendBundle = "IORING_RECVSEND_BUNDLE",
    SendVectorized = "IORING_SEND_VECTORIZED",
    MsgWaitall = "MSG_WAITALL",
    AcceptMultishot = "IORING_ACCEPT_MULTISHOT",
    FileIndexAlloc = "IORING_FILE_INDEX_ALLOC",
    DirectSlot = "file_index (direct descriptor)",
    FsyncDatasync = "IORING_FSYNC_DATASYNC",
    RwfHipri = "RWF_HIPRI",
    RwfDsync = "RWF_DSYNC",
    RwfNowait = "RWF_NOWAIT",
    RwfDontcache = "RWF_DONTCACHE",
    FallocKeepSize = "FALLOC_FL_KEEP_SIZE",
    FallocZeroRange = "FALLOC_FL_ZERO_RANGE",
    FallocWriteZeroes = "FALLOC_FL_WRITE_ZEROES",
    MsgRingData = "IORING_MSG_DATA",
    MsgRingSendFd = "IORING_MSG_SEND_FD",
    MsgRingCqeSkip = "IORING_MSG_RING_CQE_SKIP",
    SyncFileRangeWrite = "SYNC_FILE_RANGE_WRITE",
    SpliceFdInFixed = "SPLICE_F_FD_IN_FIXED",
    CancelFdFixed = "IORING_ASYNC_CANCEL_FD_FIXED",
    TimeoutMultishot = "IORING_TIMEOUT_MULTISHOT",
    SqeBufIndex = "buf_index (registered buffer)",
});

named!(EnterKind {
    Total = "io_uring_enter",
    GetEvents = "IORING_ENTER_GETEVENTS",
    WaitNrOver1 = "min_complete > 1",
    ExtArg = "IORING_ENTER_EXT_ARG",
    ExtArgTimeout = "EXT_ARG timeout",
    MinWait = "min_wait_usec",
    NoIowait = "IORING_ENTER_NO_IOWAIT",
    SqWakeup = "IORING_ENTER_SQ_WAKEUP",
    SqWait = "IORING_ENTER_SQ_WAIT",
    RegisteredRing = "IORING_ENTER_REGISTERED_RING",
});

named!(CqeFlag {
    Buffer = "IORING_CQE_F_BUFFER",
    More = "IORING_CQE_F_MORE",
    SockNonempty = "IORING_CQE_F_SOCK_NONEMPTY",
    Notif = "IORING_CQE_F_NOTIF",
    BufMore = "IORING_CQE_F_BUF_MORE",
});

/// The counters of one ring (see the module documentation).
pub struct RingStats {
    ops: [AtomicU64; N_OPS],
    max_len: [AtomicU64; N_OPS],
    sqe_flags: [AtomicU64; 8],
    op_flags: [AtomicU64; OpFlag::COUNT],
    enters: [AtomicU64; EnterKind::COUNT],
    cqes: AtomicU64,
    cqe_flags: [AtomicU64; CqeFlag::COUNT],
}

#[inline]
fn bump(c: &AtomicU64, n: u64) {
    // One writer per ring: a load and a store are enough (readers tolerate a stale value).
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

const Z: AtomicU64 = AtomicU64::new(0);

impl Default for RingStats {
    fn default() -> Self {
        RingStats {
            ops: [Z; N_OPS],
            max_len: [Z; N_OPS],
            sqe_flags: [Z; 8],
            op_flags: [Z; OpFlag::COUNT],
            enters: [Z; EnterKind::COUNT],
            cqes: Z,
            cqe_flags: [Z; CqeFlag::COUNT],
        }
    }
}

// Opcode numbers (enum io_uring_op) the decoder looks at.
const OP_READV: u8 = 1;
const OP_WRITEV: u8 = 2;
const OP_FSYNC: u8 = 3;
const OP_READ_FIXED: u8 = 4;
const OP_WRITE_FIXED: u8 = 5;
const OP_SYNC_FILE_RANGE: u8 = 8;
const OP_SENDMSG: u8 = 9;
const OP_RECVMSG: u8 = 10;
const OP_TIMEOUT: u8 = 11;
const OP_ACCEPT: u8 = 13;
const OP_ASYNC_CANCEL: u8 = 14;
const OP_FALLOCATE: u8 = 17;
const OP_OPENAT: u8 = 18;
const OP_CLOSE: u8 = 19;
const OP_READ: u8 = 22;
const OP_WRITE: u8 = 23;
const OP_SEND: u8 = 26;
const OP_RECV: u8 = 27;
const OP_OPENAT2: u8 = 28;
const OP_SPLICE: u8 = 30;
const OP_MSG_RING: u8 = 40;
const OP_SEND_ZC: u8 = 47;
const OP_SENDMSG_ZC: u8 = 48;
const OP_READV_FIXED: u8 = 60;
const OP_WRITEV_FIXED: u8 = 61;

impl RingStats {
    /// Counts one SQE from its 64 raw bytes (`struct io_uring_sqe`).
    #[inline]
    pub fn count_sqe(&self, sqe: &[u8; 64]) {
        let op = sqe[0];
        let flags = sqe[1];
        let u16_at = |o: usize| u16::from_ne_bytes([sqe[o], sqe[o + 1]]);
        let u32_at = |o: usize| u32::from_ne_bytes([sqe[o], sqe[o + 1], sqe[o + 2], sqe[o + 3]]);
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&sqe[o..o + 8]);
            u64::from_ne_bytes(b)
        };
        let i = (op as usize).min(N_OPS - 1);
        bump(&self.ops[i], 1);
        let len = u32_at(24) as u64;
        if len > self.max_len[i].load(Relaxed) {
            self.max_len[i].store(len, Relaxed);
        }
        let mut f = flags;
        while f != 0 {
            let b = f.trailing_zeros() as usize;
            bump(&self.sqe_flags[b], 1);
            f &= f - 1;
        }
        let ioprio = u16_at(2);
        let op_flags = u32_at(28);
        let file_index = u32_at(44);
        let of = |x: OpFlag| bump(&self.op_flags[x as usize], 1);
        match op {
            OP_SEND | OP_RECV | OP_SEND_ZC | OP_SENDMSG | OP_RECVMSG | OP_SENDMSG_ZC => {
                for (bit, x) in [
                    (1, OpFlag::RecvSendPollFirst),
                    (2, OpFlag::RecvMultishot),
                    (4, OpFlag::RecvSendFixedBuf),
                    (8, OpFlag::SendZcReportUsage),
                    (16, OpFlag::RecvSendBundle),
                    (32, OpFlag::SendVectorized),
                ] {
                    if ioprio & bit != 0 {
                        of(x);
                    }
                }
                if op_flags & libc::MSG_WAITALL as u32 != 0 {
                    of(OpFlag::MsgWaitall);
                }
            }
            OP_ACCEPT | OP_OPENAT | OP_OPENAT2 => {
                if op == OP_ACCEPT && ioprio & 1 != 0 {
                    of(OpFlag::AcceptMultishot);
                }
                match file_index {
                    0 => {}
                    u32::MAX => of(OpFlag::FileIndexAlloc),
                    _ => of(OpFlag::DirectSlot),
                }
            }
            OP_CLOSE if file_index != 0 => of(OpFlag::DirectSlot),
            OP_FSYNC if op_flags & 1 != 0 => of(OpFlag::FsyncDatasync),
            OP_READ | OP_WRITE | OP_READV | OP_WRITEV | OP_READ_FIXED | OP_WRITE_FIXED
            | OP_READV_FIXED | OP_WRITEV_FIXED => {
                for (bit, x) in [
                    (0x1, OpFlag::RwfHipri),
                    (0x2, OpFlag::RwfDsync),
                    (0x8, OpFlag::RwfNowait),
                    (0x80, OpFlag::RwfDontcache),
                ] {
                    if op_flags & bit != 0 {
                        of(x);
                    }
                }
                if matches!(
                    op,
                    OP_READ_FIXED | OP_WRITE_FIXED | OP_READV_FIXED | OP_WRITEV_FIXED
                ) {
                    of(OpFlag::SqeBufIndex);
                }
            }
            OP_FALLOCATE => {
                // The mode travels in sqe->len.
                for (bit, x) in [
                    (0x01, OpFlag::FallocKeepSize),
                    (0x10, OpFlag::FallocZeroRange),
                    (0x80, OpFlag::FallocWriteZeroes),
                ] {
                    if len as u32 & bit != 0 {
                        of(x);
                    }
                }
            }
            OP_MSG_RING => {
                match u64_at(16) {
                    0 => of(OpFlag::MsgRingData),
                    1 => of(OpFlag::MsgRingSendFd),
                    _ => {}
                }
                if op_flags & 1 != 0 {
                    of(OpFlag::MsgRingCqeSkip);
                }
                if file_index == u32::MAX {
                    of(OpFlag::FileIndexAlloc);
                }
            }
            OP_SYNC_FILE_RANGE if op_flags & libc::SYNC_FILE_RANGE_WRITE as u32 != 0 => {
                of(OpFlag::SyncFileRangeWrite)
            }
            OP_SPLICE if op_flags & (1 << 31) != 0 => of(OpFlag::SpliceFdInFixed),
            OP_ASYNC_CANCEL if op_flags & 8 != 0 => of(OpFlag::CancelFdFixed),
            OP_TIMEOUT if op_flags & 64 != 0 => of(OpFlag::TimeoutMultishot),
            _ => {}
        }
        if op == OP_SEND_ZC && ioprio & 4 != 0 {
            of(OpFlag::SqeBufIndex);
        }
    }

    /// Counts one io_uring_enter with its flags and arguments.
    #[inline]
    pub fn count_enter(&self, flags: u32, min_complete: u32, timeout: bool, min_wait: bool) {
        use super::ring::consts::*;
        let e = |k: EnterKind| bump(&self.enters[k as usize], 1);
        e(EnterKind::Total);
        for (bit, k) in [
            (IORING_ENTER_GETEVENTS, EnterKind::GetEvents),
            (IORING_ENTER_EXT_ARG, EnterKind::ExtArg),
            (IORING_ENTER_NO_IOWAIT, EnterKind::NoIowait),
            (IORING_ENTER_SQ_WAKEUP, EnterKind::SqWakeup),
            (IORING_ENTER_SQ_WAIT, EnterKind::SqWait),
            (IORING_ENTER_REGISTERED_RING, EnterKind::RegisteredRing),
        ] {
            if flags & bit != 0 {
                e(k);
            }
        }
        if flags & IORING_ENTER_GETEVENTS != 0 && min_complete > 1 {
            e(EnterKind::WaitNrOver1);
        }
        if timeout {
            e(EnterKind::ExtArgTimeout);
        }
        if min_wait {
            e(EnterKind::MinWait);
        }
    }

    /// Counts one completion and the flags the kernel set on it.
    #[inline]
    pub fn count_cqe(&self, flags: u32) {
        use super::ring::consts::*;
        bump(&self.cqes, 1);
        if flags == 0 {
            return;
        }
        for (bit, k) in [
            (IORING_CQE_F_BUFFER, CqeFlag::Buffer),
            (IORING_CQE_F_MORE, CqeFlag::More),
            (IORING_CQE_F_SOCK_NONEMPTY, CqeFlag::SockNonempty),
            (IORING_CQE_F_NOTIF, CqeFlag::Notif),
            (IORING_CQE_F_BUF_MORE, CqeFlag::BufMore),
        ] {
            if flags & bit != 0 {
                bump(&self.cqe_flags[k as usize], 1);
            }
        }
    }

    fn add_into(&self, s: &mut Snapshot) {
        for i in 0..N_OPS {
            s.ops[i] += self.ops[i].load(Relaxed);
            s.max_len[i] = s.max_len[i].max(self.max_len[i].load(Relaxed));
        }
        for i in 0..8 {
            s.sqe_flags[i] += self.sqe_flags[i].load(Relaxed);
        }
        for i in 0..OpFlag::COUNT {
            s.op_flags[i] += self.op_flags[i].load(Relaxed);
        }
        for i in 0..EnterKind::COUNT {
            s.enters[i] += self.enters[i].load(Relaxed);
        }
        s.cqes += self.cqes.load(Relaxed);
        for i in 0..CqeFlag::COUNT {
            s.cqe_flags[i] += self.cqe_flags[i].load(Relaxed);
        }
    }

    fn retire(&self, into: &RingStats) {
        let mut s = Snapshot::default();
        self.add_into(&mut s);
        for i in 0..N_OPS {
            into.ops[i].fetch_add(s.ops[i], Relaxed);
            into.max_len[i].fetch_max(s.max_len[i], Relaxed);
        }
        for i in 0..8 {
            into.sqe_flags[i].fetch_add(s.sqe_flags[i], Relaxed);
        }
        for i in 0..OpFlag::COUNT {
            into.op_flags[i].fetch_add(s.op_flags[i], Relaxed);
        }
        for i in 0..EnterKind::COUNT {
            into.enters[i].fetch_add(s.enters[i], Relaxed);
        }
        into.cqes.fetch_add(s.cqes, Relaxed);
        for i in 0..CqeFlag::COUNT {
            into.cqe_flags[i].fetch_add(s.cqe_flags[i], Relaxed);
        }
    }
}

/// Summed counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub ops: [u64; N_OPS],
    pub max_len: [u64; N_OPS],
    pub sqe_flags: [u64; 8],
    pub op_flags: [u64; OpFlag::COUNT],
    pub enters: [u64; EnterKind::COUNT],
    pub cqes: u64,
    pub cqe_flags: [u64; CqeFlag::COUNT],
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            ops: [0; N_OPS],
            max_len: [0; N_OPS],
            sqe_flags: [0; 8],
            op_flags: [0; OpFlag::COUNT],
            enters: [0; EnterKind::COUNT],
            cqes: 0,
            cqe_flags: [0; CqeFlag::COUNT],
        }
    }
}

impl Snapshot {
    /// SQEs of opcode `op` (an `IORING_OP_*` number).
    pub fn op(&self, op: u8) -> u64 {
        self.ops[(op as usize).min(N_OPS - 1)]
    }
    pub fn op_flag(&self, f: OpFlag) -> u64 {
        self.op_flags[f as usize]
    }
    pub fn enter(&self, k: EnterKind) -> u64 {
        self.enters[k as usize]
    }
    pub fn cqe_flag(&self, k: CqeFlag) -> u64 {
        self.cqe_flags[k as usize]
    }
    /// SQEs with IOSQE flag bit `bit` (0 = IOSQE_FIXED_FILE ... 6 = IOSQE_CQE_SKIP_SUCCESS).
    pub fn sqe_flag(&self, bit: u32) -> u64 {
        self.sqe_flags[bit as usize & 7]
    }
}

static LIVE: Mutex<Vec<Arc<RingStats>>> = Mutex::new(Vec::new());
static RETIRED: std::sync::LazyLock<RingStats> = std::sync::LazyLock::new(RingStats::default);

/// A new ring's counters, listed for [`process_stats`].
pub fn register() -> Arc<RingStats> {
    let s = Arc::new(RingStats::default());
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(s.clone());
    s
}

/// A ring is gone: its counts move to the retired total.
pub fn unregister(s: &Arc<RingStats>) {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = live.iter().position(|x| Arc::ptr_eq(x, s)) {
        live.swap_remove(i);
        s.retire(&RETIRED);
    }
}

/// The sum over every ring this process has made.
pub fn process_stats() -> Snapshot {
    let mut s = Snapshot::default();
    RETIRED.add_into(&mut s);
    for r in LIVE.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        r.add_into(&mut s);
    }
    s
}

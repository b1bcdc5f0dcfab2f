//! File I/O engine: sequential or random writes and reads of one file with a block size
//! and a queue depth, under the [file] options (opcode forms, registration, O_DIRECT
//! policy, uncached, durability with group commit, preallocation), on either backend:
//!
//! - [`Backend::Uring`]: one ring (from the [ring] configuration) driven through
//!   `sys::fileops` with buffers from one aligned arena;
//! - [`Backend::Blocking`]: `io-depth` threads doing pwrite/pread (pwritev2 for
//!   RWF_DSYNC / RWF_DONTCACHE), fdatasync for group commit: what a team without io_uring
//!   would write. It is the comparison point and the way out when
//!   `kernel.io_uring_disabled` forbids rings.
//!
//! Data: with [`Fill::Seeded`] every block's content is a function of (seed, block index)
//! ([`fill_block`]), so reads can verify what earlier writes put there, whatever the
//! order and backend. [`Fill::Once`] fills each buffer once with random bytes up front
//! (as fio does), for benchmarks where generating data would cost CPU.
//!
//! Observed on Linux 6.18 / ext4 / virtio (no poll queues): with an IOPOLL ring, reads
//! fail with EOPNOTSUPP (reported as unsupported on this device) but writes into newly
//! allocated blocks complete (ext4 does not poll them), slowly, by busy polling.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::file::{Direct, Durability};
use crate::config::{Config, ConfigError};
use crate::sys::fileops::{Completion, Fd, FileOps, FileTarget, Fixed, OpKind, RingOps};
use crate::sys::fs::{self, AlignSource, DioAlign, OpenFlags};
use crate::sys::mem::{self, Arena, Slot};

/// Which implementation does the I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    Uring,
    Blocking,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Uring => "uring",
            Backend::Blocking => "blocking",
        }
    }
    pub fn parse(s: &str) -> Result<Backend, String> {
        match s {
            "uring" | "io_uring" | "io-uring" => Ok(Backend::Uring),
            "blocking" => Ok(Backend::Blocking),
            _ => Err(format!("unknown backend {s:?}: expected uring or blocking")),
        }
    }
}

/// Access pattern of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pattern {
    Write,
    Read,
    RandWrite,
    RandRead,
}

impl Pattern {
    pub fn is_write(self) -> bool {
        matches!(self, Pattern::Write | Pattern::RandWrite)
    }
    pub fn is_random(self) -> bool {
        matches!(self, Pattern::RandWrite | Pattern::RandRead)
    }
    /// fio's `rw=` name.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Write => "write",
            Pattern::Read => "read",
            Pattern::RandWrite => "randwrite",
            Pattern::RandRead => "randread",
        }
    }
    pub fn parse(s: &str) -> Result<Pattern, String> {
        match s {
            "write" => Ok(Pattern::Write),
            "read" => Ok(Pattern::Read),
            "randwrite" => Ok(Pattern::RandWrite),
            "randread" => Ok(Pattern::RandRead),
            _ => Err(format!(
                "unknown pattern {s:?}: expected write, read, randwrite or randread"
            )),
        }
    }
}

/// What goes into written blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// Block `i` holds `fill_block(seed, i)`; reads can verify it.
    Seeded(u64),
    /// Each buffer filled once with random bytes at start (fio's default); no verification.
    Once,
}

/// How a write job treats the file (each is a different workload for the filesystem).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Truncate to 0 and append: every write extends the file (what a recorder does with
    /// a new replay file, and what fio does with a file it creates). Extending O_DIRECT
    /// writes take the inode lock exclusively on ext4 and xfs.
    Fresh,
    /// Truncate to 0, then ftruncate to the job size: writes land in holes inside i_size.
    Sparse,
    /// Overwrite the blocks of an existing file at least the job size long.
    Overwrite,
}

impl WriteMode {
    pub fn name(self) -> &'static str {
        match self {
            WriteMode::Fresh => "fresh",
            WriteMode::Sparse => "sparse",
            WriteMode::Overwrite => "overwrite",
        }
    }
    pub fn parse(s: &str) -> Result<WriteMode, String> {
        match s {
            "fresh" => Ok(WriteMode::Fresh),
            "sparse" => Ok(WriteMode::Sparse),
            "overwrite" => Ok(WriteMode::Overwrite),
            _ => Err(format!(
                "unknown write mode {s:?}: expected fresh, sparse or overwrite"
            )),
        }
    }
}

/// One job: a file, a size, a pattern; the options come from a [`Config`].
#[derive(Clone, Debug)]
pub struct Job {
    pub path: PathBuf,
    /// Bytes to transfer; a multiple of the block size.
    pub size: u64,
    pub pattern: Pattern,
    pub fill: Fill,
    /// Reads: compare each block with `fill_block` (needs `Fill::Seeded`).
    pub verify: bool,
    pub write_mode: WriteMode,
    /// Seed of the random block order.
    pub order_seed: u64,
}

impl Job {
    pub fn new(path: impl Into<PathBuf>, size: u64, pattern: Pattern) -> Job {
        Job {
            path: path.into(),
            size,
            pattern,
            fill: Fill::Once,
            verify: false,
            write_mode: WriteMode::Fresh,
            order_seed: 0x5eed,
        }
    }
}

/// What was in effect for a job (requested options that could differ are recorded).
#[derive(Clone, Debug, PartialEq)]
pub struct Effective {
    pub backend: Backend,
    /// O_DIRECT in effect.
    pub direct: bool,
    /// Why O_DIRECT is off under direct=optional, if it is.
    pub direct_fallback_reason: Option<String>,
    /// The file's O_DIRECT alignment when direct is on.
    pub align: Option<DioAlign>,
    /// Ring setup flags in force (uring backend).
    pub ring_flags: Option<u32>,
    /// The ring's requested vs effective configuration (uring backend).
    pub ring: Option<crate::uring::Effective>,
    pub registered_buffers: bool,
    pub registered_files: bool,
    /// Operations in flight at most (queue depth or threads).
    pub io_depth: u32,
    /// Pages asked for behind the buffer arena (buffer-memory).
    pub buffer_memory: crate::sys::mem::PageKind,
    /// Bytes of the arena mapping, and how many of them were in huge pages at the end of
    /// the job (None: /proc/self/smaps unreadable).
    pub arena_bytes: u64,
    pub arena_huge_bytes: Option<u64>,
}

/// Measured figures of one job (the window excludes opening and preallocation).
#[derive(Clone, Debug, PartialEq)]
pub struct JobResult {
    pub pattern: Pattern,
    pub bytes: u64,
    pub ios: u64,
    pub elapsed_s: f64,
    pub cpu_user_s: f64,
    pub cpu_sys_s: f64,
    /// System calls that submitted or waited for I/O: io_uring_enter calls on the ring
    /// backend; pwrite/pread/pwritev2/fdatasync calls on the blocking backend.
    pub syscalls: u64,
    /// fdatasync (or fsync DATASYNC ops) issued by the durability policy.
    pub syncs: u64,
    /// Times the ring's SQ was full and had to be submitted before a push (ring backend).
    pub sq_full_retries: u64,
    pub effective: Effective,
}

impl JobResult {
    /// MB/s (10^6 bytes).
    pub fn mbps(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed_s.max(1e-9)
    }
    pub fn iops(&self) -> f64 {
        self.ios as f64 / self.elapsed_s.max(1e-9)
    }
    pub fn ios_per_syscall(&self) -> f64 {
        self.ios as f64 / (self.syscalls.max(1)) as f64
    }
    pub fn cpu_s_per_gib(&self) -> f64 {
        (self.cpu_user_s + self.cpu_sys_s) / (self.bytes as f64 / (1u64 << 30) as f64).max(1e-12)
    }
}

/// Why a job could not run. Messages say what to change.
#[derive(Debug)]
pub enum FileIoError {
    /// The configuration breaks a rule.
    Config(ConfigError),
    /// The kernel or device cannot do what was asked: report as "unsupported".
    Unsupported { what: String, reason: String },
    /// io_uring is forbidden here (`kernel.io_uring_disabled`, seccomp, LSM).
    UringDisabled { reason: String },
    /// A syscall failed.
    Io { what: String, err: io::Error },
    /// Bytes read differ from what was written.
    Verify { offset: u64, detail: String },
}

impl fmt::Display for FileIoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileIoError::Config(e) => write!(f, "{e}"),
            FileIoError::Unsupported { what, reason } => write!(f, "unsupported: {what}: {reason}"),
            FileIoError::UringDisabled { reason } => write!(
                f,
                "io_uring is disabled on this machine ({reason}): use --backend blocking, or allow io_uring with `sysctl kernel.io_uring_disabled=0`"
            ),
            FileIoError::Io { what, err } => write!(f, "{what}: {err}"),
            FileIoError::Verify { offset, detail } => write!(f, "data read back at offset {offset} differs from what was written: {detail}"),
        }
    }
}

impl std::error::Error for FileIoError {}

impl From<ConfigError> for FileIoError {
    fn from(e: ConfigError) -> Self {
        FileIoError::Config(e)
    }
}

impl FileIoError {
    /// Whether this is an "unsupported here" outcome (not a failure of the engine).
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            FileIoError::Unsupported { .. } | FileIoError::UringDisabled { .. }
        )
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> FileIoError {
    let what = what.into();
    move |err| FileIoError::Io { what, err }
}

// ---------------------------------------------------------------------------------------
// Data

/// Fills `buf` with the content of block `block` under `seed` (xorshift64* stream).
pub fn fill_block(seed: u64, block: u64, buf: &mut [u8]) {
    let mut x = splitmix(seed ^ block.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        c.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    let rest = chunks.into_remainder();
    x ^= x >> 12;
    let tail = x.to_le_bytes();
    let n = rest.len();
    rest.copy_from_slice(&tail[..n]);
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The expected content of a whole file of `size` bytes written with `Fill::Seeded(seed)`
/// in blocks of `block_size`.
pub fn expected_file(seed: u64, size: u64, block_size: u64) -> Vec<u8> {
    let mut v = vec![0u8; size as usize];
    for (i, c) in v.chunks_mut(block_size as usize).enumerate() {
        fill_block(seed, i as u64, c);
    }
    v
}

/// Block visiting order: sequential, or a seeded permutation (every block once).
fn block_order(blocks: u64, random: bool, seed: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..blocks).collect();
    if random {
        let mut s = splitmix(seed) | 1;
        for i in (1..v.len()).rev() {
            s = splitmix(s);
            let j = (s % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
    v
}

fn verify_block(
    seed: u64,
    block: u64,
    got: &[u8],
    scratch: &mut Vec<u8>,
    bs: u64,
) -> Result<(), FileIoError> {
    scratch.resize(got.len(), 0);
    fill_block(seed, block, scratch);
    if let Some(pos) = got.iter().zip(scratch.iter()).position(|(a, b)| a != b) {
        return Err(FileIoError::Verify {
            offset: block * bs + pos as u64,
            detail: format!(
                "block {block}: byte {pos} is {:#04x}, expected {:#04x}",
                got[pos], scratch[pos]
            ),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Opening

/// An open file with its effective O_DIRECT state.
pub struct OpenFile {
    pub fd: OwnedFd,
    pub direct: bool,
    pub direct_fallback_reason: Option<String>,
    pub align: Option<DioAlign>,
}

/// Opens `path` under the [file] options: O_DIRECT per the policy (optional falls back
/// to buffered when the filesystem refuses, with the reason), O_DSYNC for
/// durability=odsync, and checks block-size against the learnt alignment.
pub fn open_file(
    path: &Path,
    cfg: &Config,
    write: bool,
    create: bool,
) -> Result<OpenFile, FileIoError> {
    let f = &cfg.file;
    let base = OpenFlags {
        read: true,
        write,
        create,
        truncate: false,
        direct: false,
        dsync: write && f.durability == Durability::Odsync,
    };
    let (fd, direct, reason) = match f.direct {
        Direct::Off => (
            fs::open(path, base).map_err(io_err(format!("open {}", path.display())))?,
            false,
            None,
        ),
        Direct::Required | Direct::Optional => {
            let r = fs::open(
                path,
                OpenFlags {
                    direct: true,
                    ..base
                },
            )
            .and_then(|fd| fs::dio_align(&fd).map(|a| (fd, a)));
            match r {
                Ok((fd, _)) => (fd, true, None),
                Err(e)
                    if e.raw_os_error() == Some(libc::EINVAL)
                        || e.kind() == io::ErrorKind::Unsupported =>
                {
                    let reason = format!(
                        "the filesystem of {} refuses O_DIRECT ({e})",
                        path.display()
                    );
                    if f.direct == Direct::Required {
                        return Err(FileIoError::Unsupported {
                            what: "direct=required".into(),
                            reason: format!("{reason}: put the file on a filesystem with O_DIRECT (ext4, xfs) or set direct=optional or off"),
                        });
                    }
                    let fd =
                        fs::open(path, base).map_err(io_err(format!("open {}", path.display())))?;
                    (fd, false, Some(reason))
                }
                Err(e) => {
                    return Err(FileIoError::Io {
                        what: format!("open {} with O_DIRECT", path.display()),
                        err: e,
                    })
                }
            }
        }
    };
    let align = if direct {
        let a = fs::dio_align(&fd).map_err(io_err("statx(STATX_DIOALIGN)"))?;
        if !f.block_size.is_multiple_of(a.offset_align as u64) {
            return Err(FileIoError::Config(ConfigError::new(
                &["block-size", "direct"],
                format!(
                    "block-size={} is not a multiple of the O_DIRECT alignment {} of {} (from {}): use a multiple of {} or set direct=off",
                    f.block_size,
                    a.offset_align,
                    path.display(),
                    match a.source {
                        AlignSource::Statx => "statx STATX_DIOALIGN",
                        AlignSource::LogicalBlockSize => "the device's logical block size",
                        AlignSource::Assumed => "assumed",
                    },
                    a.offset_align
                ),
            )));
        }
        Some(a)
    } else {
        None
    };
    Ok(OpenFile {
        fd,
        direct,
        direct_fallback_reason: reason,
        align,
    })
}

/// Makes the arena for a job: slots of block-size (rounded up to the alignment), count
/// from arena-bytes (or io-depth), each aligned for O_DIRECT.
pub fn make_arena(
    cfg: &Config,
    slots_min: usize,
    align: Option<DioAlign>,
) -> Result<Arena, FileIoError> {
    let f = &cfg.file;
    let a = align
        .map_or(64, |a| a.mem_align.max(512) as usize)
        .min(mem::page_size());
    let slot = (f.block_size as usize).div_ceil(a) * a;
    let total = (f.arena_bytes_effective() as usize).max(slot * slots_min);
    Arena::with_pages(total, slot, a, f.buffer_memory).map_err(|e| FileIoError::Io {
        what: "buffer arena".into(),
        err: io::Error::other(e.to_string()),
    })
}

/// Prepares the file of a job: for writes, truncate (Fresh) and extend; for reads, checks
/// the file is at least `size` bytes. Returns nothing; preallocation is the backend's.
fn prepare(job: &Job, of: &OpenFile) -> Result<(), FileIoError> {
    let must_exist = !job.pattern.is_write() || job.write_mode == WriteMode::Overwrite;
    if must_exist {
        let sz = fs::file_size(&of.fd).map_err(io_err("statx size"))?;
        if sz < job.size {
            return Err(FileIoError::Io {
                what: format!("{} job on {}", job.pattern.name(), job.path.display()),
                err: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the file has {sz} bytes but the job needs {}: write it first (fileio::lay_out)", job.size),
                ),
            });
        }
    } else {
        fs::truncate(&of.fd, 0).map_err(io_err("ftruncate to 0"))?;
    }
    Ok(())
}

fn extend_after_prealloc(job: &Job, cfg: &Config, of: &OpenFile) -> Result<(), FileIoError> {
    if job.pattern.is_write() && job.write_mode == WriteMode::Sparse && !cfg.file.prealloc {
        fs::truncate(&of.fd, job.size).map_err(io_err("ftruncate to the job size"))?;
    }
    Ok(())
}

/// The rules of the sections file I/O uses: [ring] and [file]. ([net] and [server]
/// rules are about serving and do not apply to a file job: e.g. [net] refuses IOPOLL
/// because sockets cannot be polled, while file I/O is where IOPOLL is measured.)
pub fn validate(cfg: &Config) -> Result<(), ConfigError> {
    crate::config::ring::validate(cfg)?;
    crate::config::ring::validate_bench(cfg)?;
    crate::config::file::validate(cfg)?;
    crate::config::file::validate_bench(cfg)
}

fn check_job(job: &Job, cfg: &Config) -> Result<(), FileIoError> {
    validate(cfg)?;
    let bs = cfg.file.block_size;
    if job.size == 0 || !job.size.is_multiple_of(bs) {
        return Err(FileIoError::Config(ConfigError::new(
            &["block-size"],
            format!("the job size {} is not a non-zero multiple of block-size={bs}: change the size or the block size", job.size),
        )));
    }
    if job.verify && !matches!(job.fill, Fill::Seeded(_)) {
        return Err(FileIoError::Config(ConfigError::new(
            &[],
            "verify needs Fill::Seeded: the data must be known to be checked",
        )));
    }
    Ok(())
}

fn rw_flags(cfg: &Config, write: bool) -> i32 {
    let mut fl = 0;
    if cfg.file.uncached {
        fl |= fs::RWF_DONTCACHE;
    }
    if write && cfg.file.durability == Durability::RwfDsync {
        fl |= fs::RWF_DSYNC;
    }
    fl
}

/// Maps an errno from an I/O to "unsupported" where it means the kernel or device cannot
/// do what was asked, else to an I/O error.
fn map_io_error(err: io::Error, cfg: &Config, ring_flags: Option<u32>, what: &str) -> FileIoError {
    let errno = err.raw_os_error();
    if let (Some(flags), Some(no)) = (ring_flags, errno) {
        if let crate::uring::IoErrorClass::Unsupported { what, reason } =
            crate::uring::classify_io_error(flags, no)
        {
            return FileIoError::Unsupported { what, reason };
        }
    }
    if errno == Some(libc::EOPNOTSUPP) || errno == Some(libc::EINVAL) {
        if cfg.file.uncached {
            return FileIoError::Unsupported {
                what: "uncached (RWF_DONTCACHE)".into(),
                reason: format!("the kernel or filesystem refuses it ({err}); it needs Linux 6.14+: set uncached=false"),
            };
        }
        if errno == Some(libc::EINVAL) {
            let op = if what.contains("write") {
                cfg.file.write_op.kernel_name()
            } else {
                cfg.file.read_op.kernel_name()
            };
            return FileIoError::Io {
                what: format!("{what} with {op}"),
                err: io::Error::new(
                    err.kind(),
                    format!("{err} (unknown opcode on this kernel, or misaligned O_DIRECT I/O)"),
                ),
            };
        }
    }
    FileIoError::Io {
        what: what.into(),
        err,
    }
}

// ---------------------------------------------------------------------------------------
// Running a job

/// Runs one job on `backend` with `cfg`. Validates first.
pub fn run(job: &Job, cfg: &Config, backend: Backend) -> Result<JobResult, FileIoError> {
    check_job(job, cfg)?;
    if backend == Backend::Blocking
        && cfg.file.submit_batch != crate::config::file::SUBMIT_BATCH_DEFAULT
    {
        return Err(FileIoError::Config(ConfigError::new(
            &["submit-batch", "backend"],
            "submit-batch sets SQEs per io_uring_enter and the blocking backend has no ring: leave it at its default with backend=blocking",
        )));
    }
    let write = job.pattern.is_write();
    let of = open_file(&job.path, cfg, write, write)?;
    prepare(job, &of)?;
    match backend {
        Backend::Uring => run_uring(job, cfg, of),
        Backend::Blocking => run_blocking(job, cfg, of),
    }
}

/// Writes a whole file of `size` bytes with `Fill::Seeded(seed)` using a plain buffered
/// blocking writer (no options), for laying out files that read jobs then read.
pub fn lay_out(path: &Path, size: u64, block_size: u64, seed: u64) -> Result<(), FileIoError> {
    let fd = fs::open(
        path,
        OpenFlags {
            read: true,
            write: true,
            create: true,
            truncate: true,
            ..Default::default()
        },
    )
    .map_err(io_err(format!("create {}", path.display())))?;
    let mut buf = vec![0u8; block_size as usize];
    let mut off = 0;
    let mut i = 0;
    while off < size {
        let n = (size - off).min(block_size) as usize;
        fill_block(seed, i, &mut buf[..n]);
        let mut done = 0;
        while done < n {
            done += fs::pwrite(&fd, &buf[done..n], off + done as u64)
                .map_err(io_err("lay out: pwrite"))?;
        }
        off += n as u64;
        i += 1;
    }
    fs::fdatasync(&fd).map_err(io_err("lay out: fdatasync"))?;
    Ok(())
}

/// The ring type the uring backend uses.
pub type EngineRing = crate::sys::ring::Ring;

/// Builds the ring for a job from the [ring] configuration (`uring::build`): requested
/// flags are used as given or the job fails; nothing is dropped.
pub fn build_ring(cfg: &Config) -> Result<(EngineRing, crate::uring::Effective), FileIoError> {
    crate::uring::build(&cfg.ring, None).map_err(ring_error)
}

/// Maps a ring build failure to the engine's error, keeping "unsupported" and "disabled".
pub fn ring_error(e: crate::uring::RingError) -> FileIoError {
    use crate::uring::RingError;
    match e {
        RingError::Config(c) => FileIoError::Config(c),
        RingError::Disabled { reason } => FileIoError::UringDisabled { reason },
        RingError::Unsupported { what, reason } => FileIoError::Unsupported { what, reason },
        k @ RingError::Kernel { .. } => FileIoError::Io {
            what: "ring setup".into(),
            err: io::Error::other(k.to_string()),
        },
    }
}

struct GroupCommit {
    interval_bytes: u64,
    interval: Option<Duration>,
    bytes_since: u64,
    last: Instant,
}

impl GroupCommit {
    fn new(cfg: &Config) -> Option<GroupCommit> {
        (cfg.file.durability == Durability::Fdatasync).then(|| GroupCommit {
            interval_bytes: cfg.file.sync_interval_bytes,
            interval: (cfg.file.sync_interval_ms > 0)
                .then(|| Duration::from_millis(cfg.file.sync_interval_ms)),
            bytes_since: 0,
            last: Instant::now(),
        })
    }
    /// Whether an fdatasync is due now (some bytes are unsynced and a trigger fired; with
    /// no interval set, any unsynced bytes trigger).
    fn due(&self) -> bool {
        if self.bytes_since == 0 {
            return false;
        }
        let by_bytes = self.interval_bytes > 0 && self.bytes_since >= self.interval_bytes;
        let by_time = self.interval.is_some_and(|d| self.last.elapsed() >= d);
        let always = self.interval_bytes == 0 && self.interval.is_none();
        by_bytes || by_time || always
    }
    fn started(&mut self) {
        self.bytes_since = 0;
        self.last = Instant::now();
    }
}

const TAG_SYNC: u64 = u64::MAX;
const TAG_FALLOC: u64 = u64::MAX - 1;

fn run_uring(job: &Job, cfg: &Config, of: OpenFile) -> Result<JobResult, FileIoError> {
    let f = &cfg.file;
    let qd = f.io_depth as usize;
    let (ring, ring_eff) = build_ring(cfg)?;
    let ring_flags = ring.setup_flags();
    let mut ops = FileOps::new(ring, qd + 2);
    let arena = make_arena(cfg, qd, of.align)?;
    if f.register_buffers {
        mem::check_memlock_now(arena.locked_bytes() as u64)
            .map_err(|m| FileIoError::Config(ConfigError::new(&["register-buffers"], m)))?;
        ops.register_arena(&arena).map_err(|e| FileIoError::Io {
            what: "IORING_REGISTER_BUFFERS".into(),
            err: io::Error::new(e.kind(), format!("{e} (ENOMEM: RLIMIT_MEMLOCK too low; turn register-buffers off or raise ulimit -l)")),
        })?;
    }
    let raw = of.fd.as_raw_fd();
    if f.register_files {
        ops.register_files(&[raw])
            .map_err(io_err("IORING_REGISTER_FILES"))?;
        run_uring_loop(job, cfg, &of, &arena, &mut ops, Fixed(0), ring_flags)
    } else {
        run_uring_loop(job, cfg, &of, &arena, &mut ops, Fd(raw), ring_flags)
    }
    .map(|mut r| {
        r.effective.ring = Some(ring_eff);
        r
    })
}

fn fill_all_once(arena: &Arena) {
    // Take every slot, fill it with random bytes, give them back.
    let mut v: Vec<Slot> = std::iter::from_fn(|| arena.alloc()).collect();
    for (i, s) in v.iter_mut().enumerate() {
        fill_block(0xF10, i as u64, s.as_mut_slice());
    }
}

#[allow(clippy::too_many_arguments)]
fn run_uring_loop<R: RingOps, T: FileTarget>(
    job: &Job,
    cfg: &Config,
    of: &OpenFile,
    arena: &Arena,
    ops: &mut FileOps<R>,
    target: T,
    ring_flags: u32,
) -> Result<JobResult, FileIoError> {
    let f = &cfg.file;
    let bs = f.block_size;
    let qd = f.io_depth as usize;
    let write = job.pattern.is_write();
    let flags_rw = rw_flags(cfg, write);
    let rf = Some(ring_flags);
    if write && f.prealloc {
        let len = if f.prealloc_bytes == 0 {
            job.size
        } else {
            f.prealloc_bytes
        };
        ops.fallocate(target, 0, 0, len, TAG_FALLOC)
            .map_err(|e| FileIoError::Io {
                what: "fallocate".into(),
                err: io::Error::other(e.to_string()),
            })?;
        for c in ops.drain().map_err(io_err("io_uring_enter"))? {
            if let Err(e) = c.result {
                return Err(if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                    FileIoError::Unsupported {
                        what: "prealloc".into(),
                        reason: format!(
                            "the filesystem cannot fallocate ({e}): set prealloc=false"
                        ),
                    }
                } else {
                    FileIoError::Io {
                        what: "IORING_OP_FALLOCATE".into(),
                        err: e,
                    }
                });
            }
        }
    }
    extend_after_prealloc(job, cfg, of)?;
    if job.fill == Fill::Once {
        fill_all_once(arena);
    }
    let order = block_order(job.size / bs, job.pattern.is_random(), job.order_seed);
    let mut gc = GroupCommit::new(cfg);
    let mut sync_in_flight = false;
    let mut syncs = 0u64;
    let mut next = 0usize;
    let mut io_in_flight = 0usize;
    let mut done_bytes = 0u64;
    let mut ios = 0u64;
    let mut scratch = Vec::new();
    let op_err = |e: crate::sys::fileops::OpError| FileIoError::Io {
        what: "queueing an I/O".into(),
        err: io::Error::other(e.to_string()),
    };

    let batch = f.submit_batch as usize;
    let mut queued = 0usize;
    let enters0 = ops.enter_calls();
    let (u0, s0) = fs::cpu_times();
    let t0 = Instant::now();
    loop {
        while io_in_flight < qd && next < order.len() {
            if batch != 0 && queued == batch {
                // submit-batch: hand the last `batch` to the kernel before queueing more
                // (1-2 per enter go unplugged). The final batch of a turn goes with the
                // wait below, so batch 1 costs one enter per I/O, not two.
                ops.submit().map_err(io_err("io_uring_enter"))?;
                queued = 0;
            }
            let blk = order[next];
            let mut slot = arena.alloc().ok_or_else(|| FileIoError::Io {
                what: "buffer arena".into(),
                err: io::Error::other(format!("no free buffer with {io_in_flight} I/Os in flight: arena-bytes is too small for io-depth")),
            })?;
            slot.set_len(bs as usize);
            if write {
                if let Fill::Seeded(seed) = job.fill {
                    fill_block(seed, blk, slot.as_mut_slice());
                }
                ops.write(
                    target,
                    f.write_op,
                    slot,
                    bs as usize,
                    blk * bs,
                    flags_rw,
                    blk,
                )
                .map_err(op_err)?;
            } else {
                ops.read(
                    target,
                    f.read_op,
                    slot,
                    bs as usize,
                    blk * bs,
                    flags_rw,
                    blk,
                )
                .map_err(op_err)?;
            }
            next += 1;
            io_in_flight += 1;
            queued += 1;
        }
        queued = 0;
        if let Some(g) = gc.as_mut() {
            // Group commit, plus a final fdatasync once every write has completed.
            let all_done = next == order.len() && io_in_flight == 0 && g.bytes_since > 0;
            if !sync_in_flight && (g.due() || all_done) {
                ops.fsync(target, true, TAG_SYNC).map_err(op_err)?;
                g.started();
                sync_in_flight = true;
            }
        }
        if io_in_flight == 0 && !sync_in_flight {
            break;
        }
        ops.submit_and_wait(1).map_err(io_err("io_uring_enter"))?;
        while let Some(c) = ops.complete() {
            let Completion {
                tag,
                kind,
                result,
                buf,
                ..
            } = c;
            match kind {
                OpKind::Fsync { .. } => {
                    result.map_err(io_err("IORING_OP_FSYNC (fdatasync)"))?;
                    sync_in_flight = false;
                    syncs += 1;
                }
                OpKind::Write(_) | OpKind::Read(_) => {
                    io_in_flight -= 1;
                    let what = if write { "write" } else { "read" };
                    let n = result.map_err(|e| map_io_error(e, cfg, rf, what))? as u64;
                    if n != bs {
                        return Err(FileIoError::Io {
                            what: format!("{what} of block {tag}"),
                            err: io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!("short {what}: {n} of {bs} bytes at offset {}", tag * bs),
                            ),
                        });
                    }
                    if !write && job.verify {
                        if let (Fill::Seeded(seed), Some(b)) = (job.fill, buf.as_ref()) {
                            verify_block(seed, tag, b.as_slice(), &mut scratch, bs)?;
                        }
                    }
                    drop(buf);
                    done_bytes += n;
                    ios += 1;
                    if let Some(g) = gc.as_mut() {
                        g.bytes_since += n;
                    }
                }
                OpKind::Fallocate | OpKind::SyncRange | OpKind::WriteThen(..) | OpKind::Meta(_) => {
                }
            }
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (u1, s1) = fs::cpu_times();
    Ok(JobResult {
        pattern: job.pattern,
        bytes: done_bytes,
        ios,
        elapsed_s: elapsed,
        cpu_user_s: u1 - u0,
        cpu_sys_s: s1 - s0,
        syscalls: ops.enter_calls() - enters0,
        syncs,
        sq_full_retries: ops.sq_full_retries(),
        effective: Effective {
            backend: Backend::Uring,
            direct: of.direct,
            direct_fallback_reason: of.direct_fallback_reason.clone(),
            align: of.align,
            ring_flags: Some(ring_flags),
            ring: None,
            registered_buffers: f.register_buffers,
            registered_files: f.register_files,
            io_depth: f.io_depth,
            buffer_memory: f.buffer_memory,
            arena_bytes: arena.mapped_bytes() as u64,
            arena_huge_bytes: arena.huge_bytes(),
        },
    })
}

struct BlockingShared<'a> {
    job: &'a Job,
    cfg: &'a Config,
    fd: &'a OwnedFd,
    order: &'a [u64],
    next: AtomicUsize,
    stop: AtomicBool,
    error: Mutex<Option<FileIoError>>,
    bytes: AtomicU64,
    ios: AtomicU64,
    syscalls: AtomicU64,
    syncs: AtomicU64,
    gc: Option<Mutex<(GroupCommit, bool)>>,
}

impl BlockingShared<'_> {
    fn fail(&self, e: FileIoError) {
        self.stop.store(true, Ordering::Relaxed);
        let mut g = self.error.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(e);
        }
    }

    fn maybe_sync(&self, n: u64) -> Result<(), FileIoError> {
        let Some(m) = &self.gc else { return Ok(()) };
        {
            let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
            g.0.bytes_since += n;
            if g.1 || !g.0.due() {
                return Ok(());
            }
            g.0.started();
            g.1 = true;
        }
        let r = fs::fdatasync(self.fd);
        self.syscalls.fetch_add(1, Ordering::Relaxed);
        m.lock().unwrap_or_else(|e| e.into_inner()).1 = false;
        r.map_err(io_err("fdatasync"))?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn worker(&self, mut slot: Slot) -> Result<(), FileIoError> {
        let f = &self.cfg.file;
        let bs = f.block_size;
        let write = self.job.pattern.is_write();
        let flags = rw_flags(self.cfg, write);
        let mut scratch = Vec::new();
        slot.set_len(bs as usize);
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(&blk) = self.order.get(i) else {
                return Ok(());
            };
            let off = blk * bs;
            let mut done = 0usize;
            if write {
                if let Fill::Seeded(seed) = self.job.fill {
                    fill_block(seed, blk, slot.as_mut_slice());
                }
            }
            while done < bs as usize {
                let r = if write {
                    let b = &slot.as_slice()[done..];
                    if flags != 0 {
                        fs::pwritev2(self.fd, &[b], off + done as u64, flags)
                    } else {
                        fs::pwrite(self.fd, b, off + done as u64)
                    }
                } else {
                    let b = &mut slot.as_mut_slice()[done..];
                    if flags != 0 {
                        fs::preadv2(self.fd, &mut [b], off + done as u64, flags)
                    } else {
                        fs::pread(self.fd, b, off + done as u64)
                    }
                };
                self.syscalls.fetch_add(1, Ordering::Relaxed);
                match r {
                    Ok(0) => {
                        return Err(FileIoError::Io {
                            what: format!("read of block {blk}"),
                            err: io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "end of file before the job's size",
                            ),
                        })
                    }
                    Ok(n) => done += n,
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(e) => {
                        return Err(map_io_error(
                            e,
                            self.cfg,
                            None,
                            if write { "pwrite" } else { "pread" },
                        ))
                    }
                }
            }
            if !write && self.job.verify {
                if let Fill::Seeded(seed) = self.job.fill {
                    verify_block(seed, blk, slot.as_slice(), &mut scratch, bs)?;
                }
            }
            self.bytes.fetch_add(bs, Ordering::Relaxed);
            self.ios.fetch_add(1, Ordering::Relaxed);
            if write {
                self.maybe_sync(bs)?;
            }
        }
    }
}

fn run_blocking(job: &Job, cfg: &Config, of: OpenFile) -> Result<JobResult, FileIoError> {
    let f = &cfg.file;
    let qd = f.io_depth as usize;
    let arena = make_arena(cfg, qd, of.align)?;
    if job.pattern.is_write() && f.prealloc {
        let len = if f.prealloc_bytes == 0 {
            job.size
        } else {
            f.prealloc_bytes
        };
        fs::fallocate(&of.fd, 0, 0, len).map_err(|e| {
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                FileIoError::Unsupported {
                    what: "prealloc".into(),
                    reason: format!("the filesystem cannot fallocate ({e}): set prealloc=false"),
                }
            } else {
                FileIoError::Io {
                    what: "fallocate".into(),
                    err: e,
                }
            }
        })?;
    }
    extend_after_prealloc(job, cfg, &of)?;
    if job.fill == Fill::Once {
        fill_all_once(&arena);
    }
    let order = block_order(
        job.size / f.block_size,
        job.pattern.is_random(),
        job.order_seed,
    );
    let sh = BlockingShared {
        job,
        cfg,
        fd: &of.fd,
        order: &order,
        next: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        error: Mutex::new(None),
        bytes: AtomicU64::new(0),
        ios: AtomicU64::new(0),
        syscalls: AtomicU64::new(0),
        syncs: AtomicU64::new(0),
        gc: GroupCommit::new(cfg).map(|g| Mutex::new((g, false))),
    };
    let slots: Vec<Slot> = (0..qd).map_while(|_| arena.alloc()).collect();
    if slots.len() < qd {
        return Err(FileIoError::Io {
            what: "buffer arena".into(),
            err: io::Error::other("fewer buffers than io-depth threads"),
        });
    }
    let (u0, s0) = fs::cpu_times();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for slot in slots {
            let sh = &sh;
            s.spawn(move || {
                if let Err(e) = sh.worker(slot) {
                    sh.fail(e);
                }
            });
        }
    });
    if let Some(e) = sh.error.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(e);
    }
    // Final group commit: everything written is durable when the job ends.
    if let Some(m) = &sh.gc {
        if m.lock().unwrap_or_else(|e| e.into_inner()).0.bytes_since > 0 {
            fs::fdatasync(&of.fd).map_err(io_err("fdatasync"))?;
            sh.syscalls.fetch_add(1, Ordering::Relaxed);
            sh.syncs.fetch_add(1, Ordering::Relaxed);
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (u1, s1) = fs::cpu_times();
    Ok(JobResult {
        pattern: job.pattern,
        bytes: sh.bytes.load(Ordering::Relaxed),
        ios: sh.ios.load(Ordering::Relaxed),
        elapsed_s: elapsed,
        cpu_user_s: u1 - u0,
        cpu_sys_s: s1 - s0,
        syscalls: sh.syscalls.load(Ordering::Relaxed),
        syncs: sh.syncs.load(Ordering::Relaxed),
        sq_full_retries: 0,
        effective: Effective {
            backend: Backend::Blocking,
            direct: of.direct,
            direct_fallback_reason: of.direct_fallback_reason.clone(),
            align: of.align,
            ring_flags: None,
            ring: None,
            registered_buffers: false,
            registered_files: false,
            io_depth: f.io_depth,
            buffer_memory: f.buffer_memory,
            arena_bytes: arena.mapped_bytes() as u64,
            arena_huge_bytes: arena.huge_bytes(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_is_deterministic_and_block_dependent() {
        let mut a = vec![0u8; 1000];
        let mut b = vec![0u8; 1000];
        fill_block(1, 2, &mut a);
        fill_block(1, 2, &mut b);
        assert_eq!(a, b);
        fill_block(1, 3, &mut b);
        assert_ne!(a, b);
        assert!(
            a.iter().filter(|&&x| x == 0).count() < 50,
            "fill looks constant"
        );
    }

    #[test]
    fn random_order_is_a_permutation() {
        let o = block_order(1000, true, 7);
        let mut s = o.clone();
        s.sort();
        assert_eq!(s, (0..1000).collect::<Vec<_>>());
        assert_ne!(o, s);
    }

    #[test]
    fn group_commit_triggers() {
        let mut c = Config::default();
        c.file.durability = Durability::Fdatasync;
        c.file.sync_interval_bytes = 100;
        let mut g = GroupCommit::new(&c).unwrap();
        assert!(!g.due());
        g.bytes_since = 99;
        assert!(!g.due());
        g.bytes_since = 100;
        assert!(g.due());
        g.started();
        assert!(!g.due());
        c.file.sync_interval_bytes = 0;
        let mut g = GroupCommit::new(&c).unwrap();
        g.bytes_since = 1;
        assert!(g.due(), "no interval means after every write");
    }
}

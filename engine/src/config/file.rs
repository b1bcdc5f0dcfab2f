//! [file] section: how file I/O is done, on rings or on the blocking backend.
//!
//! Opcode forms, buffer and file registration, O_DIRECT policy, uncached buffered I/O,
//! the durability policy (with group commit for fdatasync), preallocation, queue depth,
//! block size and the size of the registered arena.

use super::{
    choice_name, parse_bool, parse_bytes, parse_choice, parse_num, Config, ConfigError, Knob,
    Section,
};
pub use crate::sys::fileops::{ReadOp, WriteOp};
pub use crate::sys::mem::PageKind;

/// O_DIRECT policy (three states, as TigerBeetle's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direct {
    /// O_DIRECT or fail with the reason.
    Required,
    /// O_DIRECT when the filesystem accepts it, else buffered; the effective mode is recorded.
    Optional,
    /// Buffered I/O.
    Off,
}

/// When written data is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Durability {
    /// Never explicitly (the page cache / device cache decides).
    None,
    /// fdatasync every sync-interval-ms or sync-interval-bytes (group commit); with both
    /// 0, after every completed write. A final fdatasync ends every write job.
    Fdatasync,
    /// The file is opened with O_DSYNC: every write is durable when it completes.
    Odsync,
    /// Each write carries RWF_DSYNC (pwritev2 on the blocking backend).
    RwfDsync,
}

pub const WRITE_OPS: &[(&str, WriteOp)] = &[
    ("write", WriteOp::Write),
    ("writev", WriteOp::Writev),
    ("write-fixed", WriteOp::WriteFixed),
    ("writev-fixed", WriteOp::WritevFixed),
];
pub const READ_OPS: &[(&str, ReadOp)] = &[
    ("read", ReadOp::Read),
    ("readv", ReadOp::Readv),
    ("read-fixed", ReadOp::ReadFixed),
    ("readv-fixed", ReadOp::ReadvFixed),
];
pub const DIRECTS: &[(&str, Direct)] = &[
    ("required", Direct::Required),
    ("optional", Direct::Optional),
    ("off", Direct::Off),
];
pub const DURABILITIES: &[(&str, Durability)] = &[
    ("none", Durability::None),
    ("fdatasync", Durability::Fdatasync),
    ("odsync", Durability::Odsync),
    ("rwf-dsync", Durability::RwfDsync),
];

/// How preallocation reserves space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PreallocMode {
    /// FALLOC_FL_KEEP_SIZE: unwritten extents, the file size unchanged (the first write
    /// to each extent converts it, a metadata update).
    KeepSize,
    /// FALLOC_FL_WRITE_ZEROES (6.17): written, zeroed extents and the file size set, so
    /// appends are overwrites (no extent conversion, no size change per write). Needs a
    /// device with unmap write-zeroes (write_zeroes_unmap_max_bytes > 0).
    WriteZeroes,
}

pub const PREALLOC_MODES: &[(&str, PreallocMode)] = &[
    ("keep-size", PreallocMode::KeepSize),
    ("write-zeroes", PreallocMode::WriteZeroes),
];

/// Who creates, syncs, renames and deletes match and replay files in `recorder serve`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileOpsMode {
    /// std calls on two storage helper threads (and synchronous opens for HTTP).
    Threads,
    /// The worker's ring: OPENAT, STATX, FSYNC, FTRUNCATE, RENAMEAT, UNLINKAT, CLOSE.
    Ring,
}

pub const FILE_OPS_MODES: &[(&str, FileOpsMode)] = &[
    ("threads", FileOpsMode::Threads),
    ("ring", FileOpsMode::Ring),
];

pub const BUFFER_MEMORIES: &[(&str, PageKind)] = &[
    ("thp", PageKind::Thp),
    ("pages", PageKind::Small),
    ("hugetlb", PageKind::Hugetlb),
];

/// `submit-batch` default: one SQE per io_uring_enter, like fio's iodepth_batch_submit.
pub const SUBMIT_BATCH_DEFAULT: u32 = 1;

/// Largest queue depth accepted (the in-flight table and arena are sized from it).
pub const IO_DEPTH_MAX: u32 = 4096;
/// Largest block size: one registered buffer is at most 1 GiB.
pub const BLOCK_SIZE_MAX: u64 = 1 << 30;

#[derive(Clone, Debug, PartialEq)]
pub struct FileConfig {
    pub write_op: WriteOp,
    pub read_op: ReadOp,
    pub register_buffers: bool,
    pub register_files: bool,
    pub direct: Direct,
    pub uncached: bool,
    pub durability: Durability,
    pub sync_interval_ms: u64,
    pub sync_interval_bytes: u64,
    pub prealloc: bool,
    /// 0 = the size of the job's file.
    pub prealloc_bytes: u64,
    pub io_depth: u32,
    pub block_size: u64,
    /// 0 = io-depth x block-size.
    pub arena_bytes: u64,
    pub buffer_memory: PageKind,
    /// SQEs per io_uring_enter in the file engine; 0 = all queued at once.
    pub submit_batch: u32,
    /// Each match-file write linked to its group-commit fdatasync (IOSQE_IO_LINK).
    pub link_sync: bool,
    /// SYNC_FILE_RANGE_WRITE after each buffered match-file write.
    pub write_behind: bool,
    /// IOSQE_ASYNC on every Nth write (fio's force_async); 0 = never.
    pub force_async: u32,
    pub prealloc_mode: PreallocMode,
    pub file_ops: FileOpsMode,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            write_op: WriteOp::Write,
            read_op: ReadOp::Read,
            register_buffers: false,
            register_files: false,
            direct: Direct::Off,
            uncached: false,
            durability: Durability::None,
            sync_interval_ms: 0,
            sync_interval_bytes: 0,
            prealloc: false,
            prealloc_bytes: 0,
            io_depth: 32,
            block_size: 1 << 20,
            arena_bytes: 0,
            buffer_memory: PageKind::Thp,
            submit_batch: SUBMIT_BATCH_DEFAULT,
            link_sync: false,
            write_behind: false,
            force_async: 0,
            prealloc_mode: PreallocMode::KeepSize,
            file_ops: FileOpsMode::Threads,
        }
    }
}

impl FileConfig {
    /// Bytes of the buffer arena: `arena-bytes`, or io-depth x block-size when 0.
    pub fn arena_bytes_effective(&self) -> u64 {
        if self.arena_bytes == 0 {
            self.io_depth as u64 * self.block_size
        } else {
            self.arena_bytes
        }
    }
}

const KNOBS: &[Knob] = &[
    Knob { section: "file", name: "write-op", kernel: "IORING_OP_WRITE*", since: "5.1", values: "write|writev|write-fixed|writev-fixed", default: "write", help: "Write opcode: WRITE, WRITEV, WRITE_FIXED or WRITEV_FIXED (6.15+). The fixed forms need register-buffers." },
    Knob { section: "file", name: "read-op", kernel: "IORING_OP_READ*", since: "5.1", values: "read|readv|read-fixed|readv-fixed", default: "read", help: "Read opcode: READ, READV, READ_FIXED or READV_FIXED (6.15+). The fixed forms need register-buffers." },
    Knob { section: "file", name: "register-buffers", kernel: "IORING_REGISTER_BUFFERS", since: "5.1", values: "bool", default: "false", help: "Register the aligned buffer arena once with the ring (one registered buffer per slot); counted against RLIMIT_MEMLOCK." },
    Knob { section: "file", name: "register-files", kernel: "IORING_REGISTER_FILES", since: "5.1", values: "bool", default: "false", help: "Register the file with the ring and name it by index (IOSQE_FIXED_FILE)." },
    Knob { section: "file", name: "direct", kernel: "O_DIRECT", since: "", values: "required|optional|off", default: "off", help: "O_DIRECT: required (fail if refused), optional (buffered if the filesystem refuses, recorded as effective), off." },
    Knob { section: "file", name: "uncached", kernel: "RWF_DONTCACHE", since: "6.14", values: "bool", default: "false", help: "Uncached buffered I/O: every read and write carries RWF_DONTCACHE. Excludes direct." },
    Knob { section: "file", name: "durability", kernel: "", since: "", values: "none|fdatasync|odsync|rwf-dsync", default: "none", help: "When writes become durable: never explicitly, fdatasync, O_DSYNC on open, or RWF_DSYNC per write. recorder serve: with fdatasync, one per match (or per journal flush) per server.ack-interval-ms, its group commit; io-bench: by group commit per sync-interval-* (refused by recorder serve)." },
    Knob { section: "file", name: "sync-interval-ms", kernel: "", since: "", values: "u64", default: "0", help: "Group commit: fdatasync when this many ms passed since the last one (durability=fdatasync; 0 = no time trigger)." },
    Knob { section: "file", name: "sync-interval-bytes", kernel: "", since: "", values: "size", default: "0", help: "Group commit: fdatasync when this many bytes completed since the last one (durability=fdatasync; both intervals 0 = after every write)." },
    Knob { section: "file", name: "prealloc", kernel: "fallocate", since: "", values: "bool", default: "false", help: "Preallocate the file with fallocate before writing (through the ring on the io_uring backend)." },
    Knob { section: "file", name: "prealloc-bytes", kernel: "", since: "", values: "size", default: "0", help: "Bytes to preallocate (0 = the job's file size). Needs prealloc." },
    Knob { section: "file", name: "io-depth", kernel: "", since: "", values: "u32", default: "32", help: "Operations in flight per file (ring queue depth, or threads of the blocking backend)." },
    Knob { section: "file", name: "block-size", kernel: "", since: "", values: "size", default: "1m", help: "Bytes per read or write; a multiple of the O_DIRECT alignment when direct is on." },
    Knob { section: "file", name: "arena-bytes", kernel: "", since: "", values: "size", default: "0", help: "Size of the aligned buffer arena (0 = io-depth x block-size); at least io-depth x block-size." },
    Knob { section: "file", name: "buffer-memory", kernel: "MADV_HUGEPAGE / MAP_HUGETLB", since: "2.6.38", values: "thp|pages|hugetlb", default: "thp", help: "Pages behind the buffer arena: thp = 2 MiB-aligned with MADV_HUGEPAGE (a 1 MiB buffer is then one DMA segment; with 4 KiB pages virtio-blk splits it into two requests), pages = plain 4 KiB pages, hugetlb = MAP_HUGETLB from the vm.nr_hugepages pool (fails if the pool is short). The bytes really in huge pages are reported." },
    Knob { section: "file", name: "link-sync", kernel: "IOSQE_IO_LINK (WRITE -> FSYNC)", since: "5.3", values: "bool", default: "false", help: "recorder serve, durability=fdatasync: each match-file write goes out linked to its fdatasync (IORING_FSYNC_DATASYNC) in one submission; one completion when both are done (with ring.cqe-skip-success the write's own CQE is skipped)." },
    Knob { section: "file", name: "write-behind", kernel: "IORING_OP_SYNC_FILE_RANGE", since: "5.2", values: "bool", default: "false", help: "recorder serve, buffered writes (direct=off): each match-file write is linked to SYNC_FILE_RANGE_WRITE of its range, starting write-back at once so the group-commit fdatasync has less to flush." },
    Knob { section: "file", name: "force-async", kernel: "IOSQE_ASYNC", since: "5.6", values: "u32", default: "0", help: "IOSQE_ASYNC on every Nth write (fio's force_async; 1 = all): the write goes to io-wq at once instead of trying inline first (extending O_DIRECT writes on ext4 always end up there). 0 = never." },
    Knob { section: "file", name: "prealloc-mode", kernel: "IORING_OP_FALLOCATE (FALLOC_FL_KEEP_SIZE / FALLOC_FL_WRITE_ZEROES)", since: "5.6 / 6.17", values: "keep-size|write-zeroes", default: "keep-size", help: "How prealloc reserves space, through the ring: keep-size (unwritten extents, size unchanged) or write-zeroes (written zeroed extents, file size set: appends become overwrites; needs a device with unmap write-zeroes, refused at start otherwise)." },
    Knob { section: "file", name: "file-ops", kernel: "IORING_OP_OPENAT / STATX / FTRUNCATE / RENAMEAT / UNLINKAT / CLOSE", since: "5.6 / 6.9", values: "threads|ring", default: "threads", help: "recorder serve: who opens, seals (truncate, sync, rename, directory syncs) and deletes match and replay files: std calls on two storage helper threads and synchronous opens for HTTP (threads), or the worker's ring (ring; opens go straight into the file table with register-files)." },
    Knob { section: "file", name: "submit-batch", kernel: "io_uring_enter(to_submit)", since: "5.1", values: "u32", default: "1", help: "File engine (io-bench): SQEs per io_uring_enter, 0 = everything queued at once. The kernel plugs a batch of 3 or more, so sequential bios merge up to max_sectors_kb: fewer, larger requests that complete together, and the loop then refills in bursts (on virtio-blk slower); 1 or 2 go unplugged, one I/O per completion. fio's iodepth_batch_submit (default 1). Not used by recorder serve." },
];

/// Formats bytes the way `parse_bytes` reads them, with the largest exact suffix.
pub fn format_bytes(b: u64) -> String {
    if b == 0 {
        return "0".into();
    }
    for (suffix, mult) in [("g", 1u64 << 30), ("m", 1 << 20), ("k", 1 << 10)] {
        if b.is_multiple_of(mult) {
            return format!("{}{suffix}", b / mult);
        }
    }
    b.to_string()
}

impl Section for FileConfig {
    const NAME: &'static str = "file";
    fn knobs() -> &'static [Knob] {
        KNOBS
    }
    fn set(&mut self, name: &str, v: &str) -> Result<(), String> {
        match name {
            "write-op" => self.write_op = parse_choice(v, WRITE_OPS)?,
            "read-op" => self.read_op = parse_choice(v, READ_OPS)?,
            "register-buffers" => self.register_buffers = parse_bool(v)?,
            "register-files" => self.register_files = parse_bool(v)?,
            "direct" => self.direct = parse_choice(v, DIRECTS)?,
            "uncached" => self.uncached = parse_bool(v)?,
            "durability" => self.durability = parse_choice(v, DURABILITIES)?,
            "sync-interval-ms" => self.sync_interval_ms = parse_num(v)?,
            "sync-interval-bytes" => self.sync_interval_bytes = parse_bytes(v)?,
            "prealloc" => self.prealloc = parse_bool(v)?,
            "prealloc-bytes" => self.prealloc_bytes = parse_bytes(v)?,
            "io-depth" => self.io_depth = parse_num(v)?,
            "block-size" => self.block_size = parse_bytes(v)?,
            "arena-bytes" => self.arena_bytes = parse_bytes(v)?,
            "buffer-memory" => self.buffer_memory = parse_choice(v, BUFFER_MEMORIES)?,
            "submit-batch" => self.submit_batch = parse_num(v)?,
            "link-sync" => self.link_sync = parse_bool(v)?,
            "write-behind" => self.write_behind = parse_bool(v)?,
            "force-async" => self.force_async = parse_num(v)?,
            "prealloc-mode" => self.prealloc_mode = parse_choice(v, PREALLOC_MODES)?,
            "file-ops" => self.file_ops = parse_choice(v, FILE_OPS_MODES)?,
            _ => return Err(format!("unknown option {name}")),
        }
        Ok(())
    }
    fn get(&self, name: &str) -> Option<String> {
        Some(match name {
            "write-op" => choice_name(self.write_op, WRITE_OPS).into(),
            "read-op" => choice_name(self.read_op, READ_OPS).into(),
            "register-buffers" => self.register_buffers.to_string(),
            "register-files" => self.register_files.to_string(),
            "direct" => choice_name(self.direct, DIRECTS).into(),
            "uncached" => self.uncached.to_string(),
            "durability" => choice_name(self.durability, DURABILITIES).into(),
            "sync-interval-ms" => self.sync_interval_ms.to_string(),
            "sync-interval-bytes" => format_bytes(self.sync_interval_bytes),
            "prealloc" => self.prealloc.to_string(),
            "prealloc-bytes" => format_bytes(self.prealloc_bytes),
            "io-depth" => self.io_depth.to_string(),
            "block-size" => format_bytes(self.block_size),
            "arena-bytes" => format_bytes(self.arena_bytes),
            "buffer-memory" => choice_name(self.buffer_memory, BUFFER_MEMORIES).into(),
            "submit-batch" => self.submit_batch.to_string(),
            "link-sync" => self.link_sync.to_string(),
            "write-behind" => self.write_behind.to_string(),
            "force-async" => self.force_async.to_string(),
            "prealloc-mode" => choice_name(self.prealloc_mode, PREALLOC_MODES).into(),
            "file-ops" => choice_name(self.file_ops, FILE_OPS_MODES).into(),
            _ => return None,
        })
    }
}

/// Cross-option rules of this section. Alignment against the real file (statx) is checked
/// when the file is opened (`fileio`), since it depends on the filesystem.
pub fn validate(cfg: &Config) -> Result<(), ConfigError> {
    let f = &cfg.file;
    if f.write_op.is_fixed() && !f.register_buffers {
        return Err(ConfigError::new(
            &["write-op", "register-buffers"],
            format!(
                "write-op={} uses registered buffers: set register-buffers=true or choose write-op=write or writev",
                choice_name(f.write_op, WRITE_OPS)
            ),
        ));
    }
    if f.read_op.is_fixed() && !f.register_buffers {
        return Err(ConfigError::new(
            &["read-op", "register-buffers"],
            format!(
                "read-op={} uses registered buffers: set register-buffers=true or choose read-op=read or readv",
                choice_name(f.read_op, READ_OPS)
            ),
        ));
    }
    if (cfg.ring.iopoll || cfg.ring.hybrid_iopoll) && f.direct != Direct::Required {
        return Err(ConfigError::new(
            &["iopoll", "direct"],
            "iopoll polls for completions of O_DIRECT I/O only (buffered I/O fails with EOPNOTSUPP): set direct=required or iopoll=false",
        ));
    }
    if (cfg.ring.iopoll || cfg.ring.hybrid_iopoll) && f.durability == Durability::Fdatasync {
        return Err(ConfigError::new(
            &["iopoll", "durability"],
            "an iopoll ring cannot run fsync/fdatasync (only reads and writes are polled): use durability=odsync or rwf-dsync, or iopoll=false",
        ));
    }
    if (cfg.ring.iopoll || cfg.ring.hybrid_iopoll) && f.prealloc {
        return Err(ConfigError::new(
            &["iopoll", "prealloc"],
            "an iopoll ring cannot run fallocate (only reads and writes are polled): set prealloc=false or iopoll=false",
        ));
    }
    if f.uncached && f.direct != Direct::Off {
        return Err(ConfigError::new(
            &["uncached", "direct"],
            "uncached (RWF_DONTCACHE) is a buffered-I/O mode and O_DIRECT bypasses the page cache already: set direct=off or uncached=false",
        ));
    }
    if f.durability != Durability::Fdatasync
        && (f.sync_interval_ms != 0 || f.sync_interval_bytes != 0)
    {
        return Err(ConfigError::new(
            &["sync-interval-ms", "sync-interval-bytes", "durability"],
            format!(
                "sync-interval-ms and sync-interval-bytes are group-commit intervals for durability=fdatasync, but durability={}: set durability=fdatasync or the intervals to 0",
                choice_name(f.durability, DURABILITIES)
            ),
        ));
    }
    if f.prealloc_mode != PreallocMode::KeepSize && !f.prealloc {
        return Err(ConfigError::new(
            &["prealloc-mode", "prealloc"],
            "prealloc-mode is set but prealloc=false: set prealloc=true or prealloc-mode=keep-size",
        ));
    }
    if f.link_sync && f.durability != Durability::Fdatasync {
        return Err(ConfigError::new(
            &["link-sync", "durability"],
            format!(
                "link-sync links each write to its fdatasync, but durability={}: set durability=fdatasync or link-sync=false",
                choice_name(f.durability, DURABILITIES)
            ),
        ));
    }
    if f.write_behind && f.direct != Direct::Off {
        return Err(ConfigError::new(
            &["write-behind", "direct"],
            "write-behind starts page-cache write-back (SYNC_FILE_RANGE_WRITE) and O_DIRECT writes have none: set direct=off or write-behind=false",
        ));
    }
    if f.write_behind && f.link_sync {
        return Err(ConfigError::new(
            &["write-behind", "link-sync"],
            "write-behind and link-sync both link a sync step to every write; with link-sync the fdatasync already flushes it: choose one",
        ));
    }
    if f.prealloc_bytes != 0 && !f.prealloc {
        return Err(ConfigError::new(
            &["prealloc-bytes", "prealloc"],
            "prealloc-bytes is set but prealloc=false: set prealloc=true or prealloc-bytes=0",
        ));
    }
    if f.io_depth == 0 || f.io_depth > IO_DEPTH_MAX {
        return Err(ConfigError::new(
            &["io-depth"],
            format!(
                "io-depth={} is outside 1..={IO_DEPTH_MAX}: choose a depth in that range",
                f.io_depth
            ),
        ));
    }
    if f.block_size == 0 || f.block_size > BLOCK_SIZE_MAX {
        return Err(ConfigError::new(
            &["block-size"],
            format!(
                "block-size={} is outside 1..=1g (a registered buffer is at most 1 GiB)",
                f.block_size
            ),
        ));
    }
    if f.direct != Direct::Off && !f.block_size.is_multiple_of(512) {
        return Err(ConfigError::new(
            &["block-size", "direct"],
            format!(
                "block-size={} is not a multiple of 512, the smallest O_DIRECT alignment: use a multiple of the device's block size (4k is always safe) or set direct=off",
                f.block_size
            ),
        ));
    }
    // Completions in flight (io-depth plus one fdatasync or fallocate) must fit the CQ,
    // or the kernel would overflow it on every burst.
    let cq = cfg
        .ring
        .cq_entries
        .map_or(2 * cfg.ring.sq_entries as u64, |c| c as u64);
    if f.io_depth as u64 + 1 > cq {
        return Err(ConfigError::new(
            &["io-depth", "sq-entries", "cq-entries"],
            format!(
                "io-depth={} needs a completion queue of at least {} entries but it has {cq}: raise sq-entries or cq-entries, or lower io-depth",
                f.io_depth,
                f.io_depth + 1
            ),
        ));
    }
    if f.submit_batch > f.io_depth {
        return Err(ConfigError::new(
            &["submit-batch", "io-depth"],
            format!(
                "submit-batch={} is more than io-depth={}: no more than io-depth I/Os are ever queued; use at most {} (or 0 for all)",
                f.submit_batch, f.io_depth, f.io_depth
            ),
        ));
    }
    let need = f.io_depth as u64 * f.block_size;
    if f.arena_bytes != 0 && f.arena_bytes < need {
        return Err(ConfigError::new(
            &["arena-bytes", "io-depth", "block-size"],
            format!(
                "arena-bytes={} holds fewer than io-depth={} buffers of block-size={}: set arena-bytes to at least {} (or 0 for automatic)",
                format_bytes(f.arena_bytes),
                f.io_depth,
                format_bytes(f.block_size),
                format_bytes(need)
            ),
        ));
    }
    if f.register_buffers {
        let slots = f.arena_bytes_effective() / f.block_size.max(1);
        if slots > crate::sys::mem::MAX_REGISTERED_BUFFERS as u64 {
            return Err(ConfigError::new(
                &["register-buffers", "arena-bytes", "block-size"],
                format!(
                    "the arena would hold {slots} buffers but the kernel registers at most {}: lower arena-bytes or raise block-size",
                    crate::sys::mem::MAX_REGISTERED_BUFFERS
                ),
            ));
        }
    }
    Ok(())
}

/// Rules of this section that hold only for `recorder serve` (called by
/// `config::server::validate_serve`): the io-bench job shape is not the server's.
pub fn validate_serve(cfg: &Config) -> Result<(), ConfigError> {
    let f = &cfg.file;
    let d = FileConfig::default();
    if cfg.server.backend == super::server::Backend::Blocking {
        for (name, set) in [
            ("link-sync", f.link_sync),
            ("write-behind", f.write_behind),
            ("force-async", f.force_async != 0),
            ("prealloc-mode", f.prealloc_mode != d.prealloc_mode),
            ("file-ops", f.file_ops != d.file_ops),
        ] {
            if set {
                let knob = KNOBS.iter().find(|k| k.name == name).map_or("", |k| k.name);
                return Err(ConfigError::new(
                    &[knob, "backend"],
                    format!("file.{name} is carried out on the io_uring backend's ring, and backend=blocking writes with pwrite/fdatasync on its connection threads: leave {name} at its default or use backend=uring"),
                ));
            }
        }
    }
    if (f.link_sync || f.write_behind)
        && cfg.server.write_buffer == super::server::WriteBuffer::Stage
    {
        return Err(ConfigError::new(
            &["link-sync", "write-behind", "write-buffer"],
            "link-sync and write-behind link their sync step to arena-slot writes; server.write-buffer=stage writes from the heap staging buffer, which this path does not link: use write-buffer=arena with them",
        ));
    }
    for (name, set, why) in [
        (
            "io-depth",
            f.io_depth != d.io_depth,
            "the recorder keeps one write in flight per match",
        ),
        (
            "block-size",
            f.block_size != d.block_size,
            "the recorder writes what a match staged (server.append-buffer-bytes)",
        ),
        (
            "arena-bytes",
            f.arena_bytes != d.arena_bytes,
            "the recorder's arena is net.worker-arena-slots slots per worker",
        ),
    ] {
        if set {
            let knob = KNOBS.iter().find(|k| k.name == name).map_or("", |k| k.name);
            return Err(ConfigError::new(
                &[knob],
                format!("file.{name} is an io-bench job option and recorder serve does not use it ({why}): leave it at its default"),
            ));
        }
    }
    Ok(())
}

/// `recorder io-bench` does not have the server's storage steps: refuses their options.
pub fn validate_bench(cfg: &Config) -> Result<(), ConfigError> {
    let f = &cfg.file;
    for (name, set) in [
        ("link-sync", f.link_sync),
        ("write-behind", f.write_behind),
        ("file-ops", f.file_ops != FileOpsMode::Threads),
    ] {
        if set {
            let knob = KNOBS.iter().find(|k| k.name == name).map_or("", |k| k.name);
            return Err(ConfigError::new(
                &[knob],
                format!("file.{name} is an option of recorder serve's match files; io-bench's group commit is sync-interval-ms / sync-interval-bytes: leave {name} at its default here"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Config {
        let mut c = Config::default();
        for (k, v) in pairs {
            c.set(&format!("file.{k}"), v).unwrap();
        }
        c
    }

    fn refused(pairs: &[(&str, &str)]) -> String {
        cfg(pairs)
            .validate()
            .expect_err("should be refused")
            .message
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        let d = FileConfig::default();
        assert_eq!(
            (d.write_op, d.read_op, d.direct, d.durability),
            (WriteOp::Write, ReadOp::Read, Direct::Off, Durability::None)
        );
        assert!(!d.register_buffers && !d.register_files);
    }

    #[test]
    fn fixed_ops_need_registered_buffers() {
        for op in ["write-fixed", "writev-fixed"] {
            let m = refused(&[("write-op", op)]);
            assert!(
                m.contains(&format!("write-op={op}")) && m.contains("set register-buffers=true"),
                "{m}"
            );
            cfg(&[("write-op", op), ("register-buffers", "true")])
                .validate()
                .unwrap();
        }
        for op in ["read-fixed", "readv-fixed"] {
            let m = refused(&[("read-op", op)]);
            assert!(
                m.contains(&format!("read-op={op}")) && m.contains("set register-buffers=true"),
                "{m}"
            );
        }
    }

    #[test]
    fn uncached_excludes_direct() {
        for d in ["required", "optional"] {
            let m = refused(&[("uncached", "true"), ("direct", d)]);
            assert!(m.contains("set direct=off or uncached=false"), "{m}");
        }
        cfg(&[("uncached", "true")]).validate().unwrap();
    }

    #[test]
    fn intervals_need_fdatasync() {
        let m = refused(&[("sync-interval-ms", "10")]);
        assert!(
            m.contains("durability=none") && m.contains("set durability=fdatasync"),
            "{m}"
        );
        let m = refused(&[("durability", "odsync"), ("sync-interval-bytes", "1m")]);
        assert!(m.contains("durability=odsync"), "{m}");
        cfg(&[("durability", "fdatasync"), ("sync-interval-bytes", "1m")])
            .validate()
            .unwrap();
    }

    #[test]
    fn prealloc_bytes_needs_prealloc() {
        let m = refused(&[("prealloc-bytes", "1g")]);
        assert!(m.contains("set prealloc=true"), "{m}");
    }

    #[test]
    fn depth_block_and_arena_limits() {
        assert!(refused(&[("io-depth", "0")]).contains("io-depth=0 is outside 1..=4096"));
        assert!(refused(&[("block-size", "2g")]).contains("block-size=2147483648 is outside"));
        let m = refused(&[("direct", "required"), ("block-size", "1000")]);
        assert!(m.contains("not a multiple of 512"), "{m}");
        let m = refused(&[
            ("io-depth", "8"),
            ("block-size", "1m"),
            ("arena-bytes", "4m"),
        ]);
        assert!(m.contains("set arena-bytes to at least 8m"), "{m}");
        let m = refused(&[
            ("register-buffers", "true"),
            ("block-size", "4k"),
            ("arena-bytes", "1g"),
        ]);
        assert!(m.contains("registers at most 16384"), "{m}");
    }

    #[test]
    fn iopoll_rules() {
        // This section's rules only ([net] refuses IOPOLL for serving on its own).
        let mut c = Config::default();
        c.set("ring.iopoll", "true").unwrap();
        let m = validate(&c).unwrap_err().message;
        assert!(m.contains("set direct=required or iopoll=false"), "{m}");
        c.set("file.direct", "required").unwrap();
        validate(&c).unwrap();
        c.set("file.durability", "fdatasync").unwrap();
        let m = validate(&c).unwrap_err().message;
        assert!(m.contains("cannot run fsync/fdatasync"), "{m}");
        c.set("file.durability", "none").unwrap();
        c.set("file.prealloc", "true").unwrap();
        let m = validate(&c).unwrap_err().message;
        assert!(m.contains("cannot run fallocate"), "{m}");
    }

    #[test]
    fn queue_depth_fits_the_completion_queue() {
        let mut c = Config::default();
        c.set("ring.sq-entries", "8").unwrap();
        c.set("file.io-depth", "32").unwrap();
        let m = c.validate().unwrap_err().message;
        assert!(
            m.contains("io-depth=32 needs a completion queue of at least 33 entries but it has 16"),
            "{m}"
        );
        c.set("ring.cq-entries", "64").unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn bad_values_are_named() {
        let mut c = Config::default();
        let e = c.set("file.write-op", "pwrite").unwrap_err();
        assert!(
            e.message.contains("write-op") && e.message.contains("write-fixed"),
            "{e}"
        );
        let e = c.set("file.direct", "maybe").unwrap_err();
        assert!(e.message.contains("required, optional, off"), "{e}");
    }

    #[test]
    fn sizes_print_back() {
        assert_eq!(format_bytes(1 << 20), "1m");
        assert_eq!(format_bytes(3 << 10), "3k");
        assert_eq!(format_bytes(1000), "1000");
        let c = cfg(&[("block-size", "128k")]);
        assert_eq!(c.get("file.block-size").unwrap(), "128k");
    }
}

//! Replay storage: one self-describing file per match (format in `format`, documented in
//! docs/format.md) and [`MatchFile`], the sans-IO append state machine that turns frames
//! into write requests any backend executes (std `pwrite` in the blocking backend, ring
//! opcodes in the io_uring backend).
//!
//! Life of a match file:
//! - `STORE/live/<id>.rpl.part` while recording: header, then frame records;
//! - at END: keyframe index + trailer appended, padding trimmed (truncate), made durable,
//!   renamed to `STORE/<id>.rpl`, directory fsynced;
//! - at start-up, every `live/*.part` is scanned and cut after its last whole record
//!   ([`recover_store`]); the match is then resumable by its DS.
//!
//! Writes: [`MatchFile::append`] copies a frame into a staging buffer.
//! [`MatchFile::take_write`] hands out one [`WriteReq`] (file offset + owned buffer) at a
//! time; the backend writes `req.bytes()` at `req.offset` and calls
//! [`MatchFile::write_done`]. With O_DIRECT the buffer is aligned, the offset is aligned
//! down and the length padded up: the partial tail block is re-written by the next request
//! (tail-block rewrite) until it fills. After a write, [`MatchFile::needs_sync`] says
//! whether an fdatasync is due under the durability policy; [`MatchFile::sync_done`]
//! records it. [`MatchFile::durable_seq`] is the sequence a durable ACK may carry.

pub mod fdcache;
pub mod format;
pub mod io;
pub mod journal;
pub mod journal_io;

use std::path::{Path, PathBuf};

pub use format::{FileHeader, FormatError, IndexEntry, RecordHeader, Replay, ScanOutcome, Trailer};

/// When appended bytes count as durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// After the write syscall/opcode completes: survives a crash of the recorder
    /// (kill -9), not of the machine.
    None,
    /// After an fdatasync that follows the write (group commit: one per ack interval).
    Fdatasync,
    /// Each write is synchronous through the O_DSYNC open flag.
    Odsync,
    /// Each write carries RWF_DSYNC (pwritev2 / the ring's rw_flags).
    RwfDsync,
}

impl Durability {
    /// True when a completed write is already durable.
    pub fn write_is_durable(self) -> bool {
        matches!(
            self,
            Durability::None | Durability::Odsync | Durability::RwfDsync
        )
    }
    pub fn name(self) -> &'static str {
        match self {
            Durability::None => "none",
            Durability::Fdatasync => "fdatasync",
            Durability::Odsync => "odsync",
            Durability::RwfDsync => "rwf-dsync",
        }
    }
}

/// How a match file is written. Built from the run's configuration by
/// `server::store_options`.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Open with O_DIRECT: aligned buffers, offsets and lengths, tail-block rewrite.
    pub direct: bool,
    /// Alignment for O_DIRECT (buffer address, file offset, length): the file system's
    /// DIO alignment; 4096 is safe on common devices.
    pub align: usize,
    pub durability: Durability,
    /// Staging buffer bytes: a write is issued at the latest when this much is pending.
    pub stage_bytes: usize,
    /// Bytes to preallocate (fallocate, FALLOC_FL_KEEP_SIZE) when a match file is
    /// created; 0 = none.
    pub prealloc_bytes: u64,
    /// RWF_DONTCACHE on every write (uncached buffered I/O, Linux 6.14+).
    pub uncached: bool,
    /// Vectored writes (`file.write-op = writev`): pwritev2 in the blocking backend.
    pub vectored: bool,
    /// Buffered files only (the journal layout's replay files, `journal-bypass-bytes`
    /// on a store that takes O_DIRECT): a match whose writes reach this many bytes is a
    /// bulk sender; after one such write (which records the file's partial last block) its
    /// file is written with O_DIRECT, aligned to `bulk_direct_align`, for the rest of the
    /// match. 0 = never.
    pub bulk_direct_bytes: usize,
    /// O_DIRECT alignment for `bulk_direct_bytes` (the store's).
    pub bulk_direct_align: usize,
}

impl StoreOptions {
    /// Per-write RWF_* flags the options ask for.
    pub fn rw_flags(&self) -> i32 {
        let mut f = 0;
        if self.durability == Durability::RwfDsync {
            f |= crate::sys::fs::RWF_DSYNC;
        }
        if self.uncached {
            f |= crate::sys::fs::RWF_DONTCACHE;
        }
        f
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            direct: false,
            align: 4096,
            durability: Durability::Fdatasync,
            stage_bytes: 1 << 20,
            prealloc_bytes: 0,
            uncached: false,
            vectored: false,
            bulk_direct_bytes: 0,
            bulk_direct_align: 4096,
        }
    }
}

/// A heap buffer whose usable part starts at an address aligned to `align` (for O_DIRECT),
/// built without `unsafe` by over-allocating and offsetting.
#[derive(Debug)]
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
    align: usize,
}

impl AlignedBuf {
    pub fn with_capacity(cap: usize, align: usize) -> AlignedBuf {
        let align = align.max(1);
        let raw = vec![0u8; cap + align];
        let start = raw.as_ptr().align_offset(align);
        assert!(start < align, "alignment {align} is not a power of two");
        AlignedBuf {
            raw,
            start,
            len: 0,
            align,
        }
    }
    pub fn capacity(&self) -> usize {
        self.raw.len() - self.start
    }
    /// Takes the buffer apart for a write straight from its memory: (the Vec, where the
    /// aligned bytes start, how many, the alignment). [`AlignedBuf::from_raw`] rebuilds it.
    pub fn into_raw(self) -> (Vec<u8>, usize, usize, usize) {
        (self.raw, self.start, self.len, self.align)
    }
    /// Rebuilds a buffer taken apart by [`AlignedBuf::into_raw`] (the same parts).
    pub fn from_raw(raw: Vec<u8>, start: usize, len: usize, align: usize) -> AlignedBuf {
        assert!(start + len <= raw.len(), "parts of another buffer");
        AlignedBuf {
            raw,
            start,
            len,
            align,
        }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn align(&self) -> usize {
        self.align
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
    /// The whole usable capacity, for I/O that fills the buffer (`set_len` afterwards).
    pub fn spare_mut(&mut self) -> &mut [u8] {
        let s = self.start;
        &mut self.raw[s..]
    }
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.capacity());
        self.len = len;
    }
    pub fn clear(&mut self) {
        self.len = 0;
    }
    /// Appends bytes, growing (re-aligned) when needed.
    pub fn extend(&mut self, b: &[u8]) {
        if self.len + b.len() > self.capacity() {
            let mut n =
                AlignedBuf::with_capacity((self.len + b.len()).next_power_of_two(), self.align);
            n.extend(self.as_slice());
            *self = n;
        }
        let s = self.start + self.len;
        self.raw[s..s + b.len()].copy_from_slice(b);
        self.len += b.len();
    }
    /// Pads with zeros up to `len`.
    pub fn pad_to(&mut self, len: usize) {
        if len <= self.len {
            return;
        }
        if len <= self.capacity() {
            let (a, b) = (self.start + self.len, self.start + len);
            self.raw[a..b].fill(0);
            self.len = len;
        } else {
            let z = vec![0u8; len - self.len];
            self.extend(&z);
        }
    }
}

/// One write for the backend to execute: `bytes()` at file offset `offset`.
#[derive(Debug)]
pub struct WriteReq {
    pub offset: u64,
    pub buf: AlignedBuf,
    /// Logical end of the data after this write (without O_DIRECT padding).
    pub end: u64,
    /// Highest frame sequence wholly contained once this write completes.
    pub last_seq: u64,
    /// First frame sequence this write starts (`last_seq + 1` when it holds no frame
    /// start, e.g. the header alone or the seal's index and trailer).
    pub first_seq: u64,
    /// An O_DIRECT write (aligned offset, buffer and length, padded past `end`): the
    /// file must be written through a descriptor with O_DIRECT (a bulk match of the
    /// journal layout switches to it, `StoreOptions::bulk_direct_bytes`).
    pub direct: bool,
}

impl WriteReq {
    /// What is written: aligned and padded with O_DIRECT.
    pub fn bytes(&self) -> &[u8] {
        self.buf.as_slice()
    }
    /// The file's bytes this write holds, without O_DIRECT padding: `data()` at `offset`
    /// ends at `end`. What a journal record of it carries (padding journaled would, at
    /// recovery, overwrite bytes written after it).
    pub fn data(&self) -> &[u8] {
        let n = (self.end.saturating_sub(self.offset) as usize).min(self.buf.len());
        &self.buf.as_slice()[..n]
    }
}

/// Public facts about a match file, copied into the registry after each durable step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileStats {
    pub created_unix_us: u64,
    pub frame_count: u64,
    pub last_seq: u64,
    pub first_tick: u64,
    pub last_tick: u64,
    pub payload_bytes: u64,
    pub first_frame_unix_us: u64,
    pub last_frame_unix_us: u64,
}

/// The append state machine of one match file (no I/O inside).
#[derive(Debug)]
pub struct MatchFile {
    pub match_id: String,
    opts: StoreOptions,
    /// Bytes staged, starting at file offset `stage_base`.
    stage: AlignedBuf,
    stage_base: u64,
    /// Logical end of everything appended (header + records [+ index + trailer]).
    data_end: u64,
    /// Bytes whose write completed / that are durable.
    written_end: u64,
    durable_end: u64,
    written_seq: u64,
    durable_seq: u64,
    in_flight: bool,
    /// Last sequence handed to a write (`take_write`).
    taken_seq: u64,
    stats: FileStats,
    index: Vec<IndexEntry>,
    sealed_len: Option<u64>,
    scratch: Vec<u8>,
    /// Buffers of completed writes, reused by `take_write`.
    spare: Vec<AlignedBuf>,
    /// A buffered file with `bulk_direct_bytes` after a bulk write: its bytes from
    /// `align_down(written_end, bulk_direct_align)` to `written_end` (what the first
    /// O_DIRECT write re-writes); None before (quiet matches hold nothing here).
    bulk_tail: Option<Vec<u8>>,
}

impl MatchFile {
    /// A new match: the header is staged; the first write creates it on disk.
    pub fn create(match_id: &str, created_unix_us: u64, opts: StoreOptions) -> MatchFile {
        let mut scratch = Vec::with_capacity(HEADER_BYTES_USIZE);
        format::encode_header(&mut scratch, match_id, created_unix_us);
        let cap = opts.stage_bytes.clamp(
            HEADER_BYTES_USIZE,
            initial_stage(&opts).max(HEADER_BYTES_USIZE),
        );
        let mut stage = AlignedBuf::with_capacity(cap + opts.align, opts.align);
        stage.extend(&scratch);
        MatchFile {
            match_id: match_id.to_string(),
            stage,
            stage_base: 0,
            data_end: format::HEADER_BYTES as u64,
            written_end: 0,
            durable_end: 0,
            written_seq: 0,
            durable_seq: 0,
            in_flight: false,
            taken_seq: 0,
            stats: FileStats {
                created_unix_us,
                ..Default::default()
            },
            index: Vec::new(),
            sealed_len: None,
            scratch,
            spare: Vec::new(),
            bulk_tail: None,
            opts,
        }
    }

    /// A match recovered from a scan: `valid_end` is where appends continue; `tail` holds
    /// the file bytes from `align_down(valid_end)` to `valid_end` (needed for O_DIRECT's
    /// tail-block rewrite; empty otherwise). Everything up to `valid_end` counts as durable
    /// (recovery syncs the cut file before resuming).
    pub fn resume(
        match_id: &str,
        scan: &ScanOutcome,
        tail: &[u8],
        opts: StoreOptions,
    ) -> MatchFile {
        let base = if opts.direct {
            align_down(scan.valid_end, opts.align as u64)
        } else {
            scan.valid_end
        };
        assert_eq!(
            base + tail.len() as u64,
            scan.valid_end.max(base),
            "tail must end at valid_end"
        );
        let mut stage = AlignedBuf::with_capacity(
            opts.stage_bytes.min(initial_stage(&opts)) + opts.align,
            opts.align,
        );
        if opts.direct {
            stage.extend(tail);
        }
        MatchFile {
            match_id: match_id.to_string(),
            stage,
            stage_base: base,
            data_end: scan.valid_end,
            written_end: scan.valid_end,
            durable_end: scan.valid_end,
            written_seq: scan.last_seq,
            durable_seq: scan.last_seq,
            in_flight: false,
            taken_seq: scan.last_seq,
            stats: FileStats {
                created_unix_us: scan.created_unix_us,
                frame_count: scan.frame_count,
                last_seq: scan.last_seq,
                first_tick: scan.first_tick,
                last_tick: scan.last_tick,
                payload_bytes: scan.payload_bytes,
                first_frame_unix_us: scan.first_frame_unix_us,
                last_frame_unix_us: scan.last_frame_unix_us,
            },
            index: scan.index.clone(),
            sealed_len: None,
            scratch: Vec::new(),
            spare: Vec::new(),
            bulk_tail: None,
            opts,
        }
    }

    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }
    /// Last sequence appended (staged or written).
    pub fn last_seq(&self) -> u64 {
        self.stats.last_seq
    }
    pub fn last_tick(&self) -> u64 {
        self.stats.last_tick
    }
    pub fn stats(&self) -> &FileStats {
        &self.stats
    }
    pub fn index(&self) -> &[IndexEntry] {
        &self.index
    }
    /// Sequence whose frames (and all before) are durable per the policy.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }
    /// Bytes of whole records written to the file (what a live reader may read).
    pub fn written_end(&self) -> u64 {
        self.written_end
    }
    pub fn durable_end(&self) -> u64 {
        self.durable_end
    }
    pub fn data_end(&self) -> u64 {
        self.data_end
    }
    /// Bytes appended but not yet handed to a write.
    pub fn pending_bytes(&self) -> u64 {
        self.data_end - self.written_end.max(self.stage_base)
    }
    pub fn has_unwritten(&self) -> bool {
        self.data_end > self.written_end
    }
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }
    /// True when the staging buffer is full enough that a write should be issued now.
    pub fn stage_full(&self) -> bool {
        self.stage.len() >= self.opts.stage_bytes
    }
    pub fn is_sealed(&self) -> bool {
        self.sealed_len.is_some()
    }

    /// Appends one frame record. The caller has validated seq (= last + 1), tick, kind, CRC.
    pub fn append(
        &mut self,
        seq: u64,
        tick: u64,
        kind: u8,
        payload_crc32c: u32,
        payload: &[u8],
        recv_unix_us: u64,
    ) {
        assert!(self.sealed_len.is_none(), "append after seal");
        assert_eq!(
            seq,
            self.stats.last_seq + 1,
            "frames are appended in sequence"
        );
        let h = RecordHeader {
            payload_len: payload.len() as u32,
            kind,
            seq,
            tick,
            recv_unix_us,
            payload_crc32c,
        };
        self.scratch.clear();
        format::encode_record_header(&mut self.scratch, &h);
        let off = self.data_end;
        self.stage.extend(&self.scratch);
        self.stage.extend(payload);
        self.data_end += h.record_bytes();
        if kind == crate::protocol::FRAME_KEY {
            self.index.push(IndexEntry {
                seq,
                tick,
                offset: off,
                recv_unix_us,
            });
        }
        if self.stats.frame_count == 0 {
            self.stats.first_tick = tick;
            self.stats.first_frame_unix_us = recv_unix_us;
        }
        self.stats.frame_count += 1;
        self.stats.last_seq = seq;
        self.stats.last_tick = tick;
        self.stats.last_frame_unix_us = recv_unix_us;
        self.stats.payload_bytes += payload.len() as u64;
    }

    /// Stages the keyframe index and trailer. Afterwards write everything, sync, and finish
    /// with [`MatchFile::sealed_len`] (truncate to it, rename, sync the directory).
    pub fn seal(&mut self, sealed_unix_us: u64) {
        assert!(self.sealed_len.is_none());
        let index_offset = self.data_end;
        self.scratch.clear();
        format::encode_index(&mut self.scratch, &self.index);
        let t = Trailer {
            index_offset,
            index_count: self.index.len() as u64,
            frame_count: self.stats.frame_count,
            last_seq: self.stats.last_seq,
            first_tick: self.stats.first_tick,
            last_tick: self.stats.last_tick,
            created_unix_us: self.stats.created_unix_us,
            sealed_unix_us,
            payload_bytes: self.stats.payload_bytes,
            first_frame_unix_us: self.stats.first_frame_unix_us,
        };
        format::encode_trailer(&mut self.scratch, &t);
        self.stage.extend(&self.scratch);
        self.data_end += self.scratch.len() as u64;
        self.sealed_len = Some(self.data_end);
    }

    /// Exact length of the sealed file (after [`MatchFile::seal`]).
    pub fn sealed_len(&self) -> Option<u64> {
        self.sealed_len
    }

    /// The next write, if there is unwritten data and no write in flight.
    pub fn take_write(&mut self) -> Option<WriteReq> {
        if self.in_flight || !self.has_unwritten() {
            return None;
        }
        if self.bulk_tail.is_some() && self.pending_bytes() >= self.opts.bulk_direct_bytes as u64 {
            self.go_direct();
        }
        let end = self.data_end;
        let a = self.opts.align as u64;
        let mut fresh = self.spare.pop().unwrap_or_else(|| {
            let cap = self.opts.stage_bytes.min(initial_stage(&self.opts)) + self.opts.align;
            AlignedBuf::with_capacity(cap, self.opts.align)
        });
        fresh.clear();
        let mut buf = std::mem::replace(&mut self.stage, AlignedBuf::with_capacity(0, 1));
        let offset = self.stage_base;
        if self.opts.direct {
            // keep the partial tail block for the next write, pad this one to a block
            let tail_base = align_down(end, a);
            let keep = (end - tail_base) as usize;
            if keep > 0 {
                let from = (tail_base - offset) as usize;
                fresh.extend(&buf.as_slice()[from..from + keep]);
            }
            let padded = align_up(end - offset, a) as usize;
            buf.pad_to(padded);
            self.stage_base = tail_base;
        } else {
            self.stage_base = end;
        }
        self.stage = fresh;
        self.in_flight = true;
        let first_seq = self.taken_seq + 1;
        self.taken_seq = self.stats.last_seq;
        Some(WriteReq {
            offset,
            buf,
            end,
            last_seq: self.stats.last_seq,
            first_seq,
            direct: self.opts.direct,
        })
    }

    /// True once this buffered file switched to O_DIRECT writes (a bulk match).
    pub fn went_direct(&self) -> bool {
        self.opts.direct && self.opts.bulk_direct_bytes > 0
    }

    /// A bulk match's buffered file switches to O_DIRECT: the staged bytes (from
    /// `written_end`) are preceded by the partial block before them, so that writes start
    /// aligned; from now on the file is written like a per-match O_DIRECT one.
    fn go_direct(&mut self) {
        let Some(tail) = self.bulk_tail.take() else {
            return;
        };
        let a = self.opts.bulk_direct_align.max(1);
        debug_assert_eq!(
            self.stage_base, self.written_end,
            "buffered stage follows the file"
        );
        let base = align_down(self.written_end, a as u64);
        debug_assert_eq!(base + tail.len() as u64, self.written_end);
        let mut stage = AlignedBuf::with_capacity(
            (tail.len() + self.stage.len()).max(self.opts.stage_bytes.min(INITIAL_STAGE_BYTES)) + a,
            a,
        );
        stage.extend(&tail);
        stage.extend(self.stage.as_slice());
        self.stage = stage;
        self.stage_base = base;
        self.spare.clear(); // buffers of the old alignment
        self.opts.direct = true;
        self.opts.align = a;
    }

    /// After a completed buffered write: keep the file's partial last block once the match
    /// wrote a bulk-sized write (the next bulk write switches to O_DIRECT with it).
    fn track_bulk_tail(&mut self, req: &WriteReq) {
        let bulk = self.opts.bulk_direct_bytes;
        if self.opts.direct || bulk == 0 {
            return;
        }
        if self.bulk_tail.is_none() && req.bytes().len() < bulk {
            return;
        }
        let a = self.opts.bulk_direct_align.max(1) as u64;
        let base = align_down(req.end, a);
        let data = req.data();
        let t = self.bulk_tail.get_or_insert_with(Vec::new);
        if base >= req.offset {
            t.clear();
            t.extend_from_slice(&data[(base - req.offset) as usize..]);
        } else if base + t.len() as u64 == req.offset {
            t.extend_from_slice(data); // within the same block
        } else {
            // only when the first bulk write does not reach a block boundary (a bulk size
            // below the alignment): wait for the next one
            self.bulk_tail = None;
        }
    }

    /// Records a completed write (the whole `req.bytes()` at `req.offset`) and takes its
    /// buffer back for reuse.
    pub fn write_done(&mut self, req: WriteReq) {
        assert!(self.in_flight, "write_done without a write in flight");
        // Buffered files (the journal layout's replay files) keep only small buffers: a
        // keyframe's large one is freed, so quiet matches stay small.
        self.track_bulk_tail(&req);
        let keep = self.opts.direct || req.buf.capacity() <= 4 * BUFFERED_STAGE_BYTES;
        // a buffer of the alignment in use (not one taken before a switch to O_DIRECT)
        let keep = keep && req.buf.align() == self.opts.align;
        if self.spare.len() < 2 && keep {
            self.spare.push(req.buf);
        }
        self.in_flight = false;
        self.written_end = req.end;
        self.written_seq = req.last_seq;
        if self.opts.durability.write_is_durable() {
            self.durable_end = req.end;
            self.durable_seq = req.last_seq;
        }
    }

    /// Gives up a write that failed: the data stays staged in memory is lost for this file;
    /// the caller reports STORAGE and stops using the file (recovery re-scans it).
    pub fn write_failed(&mut self) {
        self.in_flight = false;
    }

    /// True when written data is not yet durable and the policy needs an fdatasync.
    pub fn needs_sync(&self) -> bool {
        self.opts.durability == Durability::Fdatasync && self.durable_end < self.written_end
    }

    /// Records a completed fdatasync issued after writes up to `written_end`/`written_seq`
    /// (pass the values read before issuing it).
    pub fn sync_done(&mut self, written_end: u64, written_seq: u64) {
        self.durable_end = self.durable_end.max(written_end);
        self.durable_seq = self.durable_seq.max(written_seq);
    }

    /// (written_end, written_seq), to remember when issuing an fdatasync.
    pub fn sync_point(&self) -> (u64, u64) {
        (self.written_end, self.written_seq)
    }
}

const HEADER_BYTES_USIZE: usize = format::HEADER_BYTES;
/// Staging buffers start this small and grow (by doubling) up to what a write interval
/// needs, so ten thousand quiet matches do not each hold `stage_bytes`.
const INITIAL_STAGE_BYTES: usize = 64 << 10;
/// Initial staging buffer of a buffered (not O_DIRECT) match file: one 20-64 Hz frame
/// interval of deltas; grows for a keyframe, and the grown buffer is not kept.
const BUFFERED_STAGE_BYTES: usize = 4 << 10;

fn initial_stage(o: &StoreOptions) -> usize {
    if o.direct {
        INITIAL_STAGE_BYTES
    } else {
        BUFFERED_STAGE_BYTES
    }
}

pub fn align_down(v: u64, a: u64) -> u64 {
    v - v % a
}
pub fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Paths of the store.
/// File name of the retention log in the store root (see [`StorePaths::expired_log`]).
pub const EXPIRED_LOG: &str = "expired.ids";

#[derive(Clone, Debug)]
pub struct StorePaths {
    pub root: PathBuf,
}

impl StorePaths {
    pub fn new(root: impl Into<PathBuf>) -> StorePaths {
        StorePaths { root: root.into() }
    }
    pub fn live_dir(&self) -> PathBuf {
        self.root.join("live")
    }
    /// `STORE/journal`: the write-ahead journals (`server.storage-layout = journal`).
    pub fn journal_dir(&self) -> PathBuf {
        self.root.join("journal")
    }
    /// `STORE/expired.ids`: ids deleted by retention, one per line, oldest first.
    pub fn expired_log(&self) -> PathBuf {
        self.root.join(EXPIRED_LOG)
    }
    /// `STORE/live/<id>.rpl.part`. `id` must have passed `protocol::validate_match_id`.
    pub fn part_path(&self, id: &str) -> PathBuf {
        debug_assert!(crate::protocol::validate_match_id(id).is_ok());
        self.live_dir().join(format!("{id}.rpl.part"))
    }
    /// `STORE/<id>.rpl`.
    pub fn sealed_path(&self, id: &str) -> PathBuf {
        debug_assert!(crate::protocol::validate_match_id(id).is_ok());
        self.root.join(format!("{id}.rpl"))
    }
    /// Match id from a file name in the store, when it is one of ours.
    pub fn id_from_name(name: &str, suffix: &str) -> Option<String> {
        let id = name.strip_suffix(suffix)?;
        crate::protocol::validate_match_id(id)
            .ok()
            .map(|_| id.to_string())
    }
}

pub use io::{recover_store, RecoveredStore, SealedInfo};

/// Current time in microseconds since the Unix epoch.
pub fn now_unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Strong ETag of a sealed replay: its length and trailer CRC.
pub fn etag_for(len: u64, trailer_crc: u32) -> String {
    format!("\"{len:x}-{trailer_crc:08x}\"")
}

#[allow(dead_code)]
fn _assert_path(_: &Path) {}

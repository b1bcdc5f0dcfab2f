//! The write-ahead journal (`server.storage-layout = journal`), sans-IO: one fixed-size
//! file per io_uring worker (one for the blocking backend's WAL writer) that makes the
//! appends of every match the writer owns durable with one flush per group (group commit
//! across matches). Format in docs/format.md ("Journal").
//!
//! Shape of the file (`STORE/journal/w<N>.wal`, preallocated and zero-written once, then
//! reused as a ring):
//! - two checkpoint slots, one alignment block each, at offsets 0 and `align`: the newest
//!   valid one names the `redo` LSN recovery starts from;
//! - the record ring from `2 * align` to the end: record bytes at logical position (LSN)
//!   `l` live at file offset `2 * align + l % cap`. LSNs only grow; `l / cap` is the lap,
//!   and every record carries its own LSN, so a record left from an earlier lap never
//!   passes for a current one.
//!
//! Life of an append: [`Journal::append`] copies a replay-file write (match id, sequence
//! range, replay-file offset, bytes) into the staging buffer and returns the LSN after it.
//! [`Journal::take_write`] hands out the next flush (aligned, the partial tail block
//! re-written by the next one, never past the lap end) when a trigger says so;
//! the backend writes it (O_DIRECT, made durable per `file.durability`) and calls
//! [`Journal::write_done`]; every append whose LSN is at most [`Journal::durable`] may be
//! acknowledged. One flush is in flight at a time: the next takes everything appended
//! meanwhile (natural group commit).
//!
//! Checkpoints: [`Journal::begin_checkpoint`] returns `redo` = the current head. Because an
//! append is made only after its replay-file write completed, every byte journaled before
//! `redo` is in the replay files; the backend makes them durable (syncfs of the store) and
//! calls [`Journal::checkpoint_synced`]; the next write is then the checkpoint slot, and
//! once it is durable the ring space before `redo` is free again. A journal that is full
//! refuses appends ([`AppendError::Full`]) until a checkpoint frees space: acks slow down,
//! nothing is overwritten.

use super::align_up;
use std::time::{Duration, Instant};

pub const RECORD_MAGIC: [u8; 4] = *b"JREC";
pub const SLOT_MAGIC: [u8; 8] = *b"RPLJCKPT";
pub const JOURNAL_VERSION: u16 = 1;
pub const RECORD_HEADER_BYTES: usize = 56;
pub const SLOT_BYTES: usize = 64;
pub const KIND_DATA: u8 = 1;
pub const KIND_WRAP: u8 = 2;
/// Largest data part of one record: a larger write is split into several records.
pub const MAX_RECORD_DATA: usize = 256 << 10;

/// Sizes and triggers of one journal.
#[derive(Clone, Debug)]
pub struct JournalOptions {
    /// File size (checkpoint slots + record ring).
    pub bytes: u64,
    /// Block size of O_DIRECT writes (the store's DIO alignment).
    pub align: usize,
    /// Minimum spacing between the starts of two flushes (0: flush as soon as the previous
    /// one completed and something is pending).
    pub flush_interval: Duration,
    /// Flush at once, whatever the spacing, when this many bytes are pending.
    pub flush_bytes: usize,
    /// A checkpoint at least this often while anything was journaled since the last one.
    pub checkpoint_interval: Duration,
    /// A checkpoint at once when the ring is this full (percent of its capacity).
    pub checkpoint_fill_pct: u64,
    /// How long a checkpoint started by its interval spreads its replay-file writeback
    /// over (`journal-checkpoint-spread-pct` of the interval; zero: back to back). A
    /// checkpoint started by a filling journal is never spread.
    pub checkpoint_spread: Duration,
    /// TEST ONLY (`test-checkpoint-delay-ms`): the backend sleeps this long before a
    /// checkpoint's store sync.
    pub test_checkpoint_delay: Duration,
}

impl JournalOptions {
    /// Bytes of the record ring (file size without the two slots, whole blocks).
    pub fn capacity(&self) -> u64 {
        let a = self.align as u64;
        (self.bytes - 2 * a) / a * a
    }
    /// Smallest usable journal for these options: room for a few of the largest appends.
    pub fn min_bytes(align: usize, largest_append: u64) -> u64 {
        2 * align as u64 + 8 * (largest_append + (64 << 10))
    }
}

/// Why an append was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendError {
    /// The ring has no unreclaimed room: retry after the next checkpoint frees space.
    Full,
    /// A flush failed: the journal cannot make anything durable any more.
    Failed(String),
}

/// What a journal write is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// Record bytes; everything before `end_lsn` is durable once it completes.
    Data { end_lsn: u64, appends: u64 },
    /// A checkpoint slot naming `redo`.
    Slot { redo: u64, ckpt_no: u64 },
}

/// One journal write for the backend: `len` bytes (a multiple of the alignment) at file
/// offset `offset`, filled by [`Journal::take_write`].
#[derive(Debug, Clone, Copy)]
pub struct JournalWrite {
    pub offset: u64,
    pub len: usize,
    pub kind: WriteKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ckpt {
    Idle,
    /// The backend is making the replay files durable.
    Syncing {
        redo: u64,
    },
    /// Replay files are durable up to `redo`: the slot write is due.
    SlotDue {
        redo: u64,
    },
    SlotInFlight,
}

/// Counters of one journal (summed into the registry's metrics by the backends).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    pub flushes: u64,
    /// Appends (replay-file writes) made durable by flushes: / flushes = group size.
    pub flushed_appends: u64,
    /// Record bytes made durable (without padding and rewrites).
    pub record_bytes: u64,
    /// Bytes written to the journal file (whole blocks: padding and tail rewrites included).
    pub written_bytes: u64,
    pub checkpoints: u64,
    /// Appends refused because the ring was full (each retried later).
    pub full_waits: u64,
}

/// The append/flush/checkpoint state machine of one journal file (no I/O inside).
#[derive(Debug)]
pub struct Journal {
    o: JournalOptions,
    cap: u64,
    /// LSN after the last appended byte.
    head: u64,
    /// LSN up to which everything is durable.
    durable: u64,
    /// Space before this LSN may be reused (the redo point of the last durable checkpoint).
    reclaim: u64,
    /// Bytes `[stage_base, head)`; `stage_base` is block-aligned.
    stage: Vec<u8>,
    stage_base: u64,
    in_flight: bool,
    last_flush_start: Option<Instant>,
    appends_pending: u64,
    ckpt: Ckpt,
    ckpt_no: u64,
    last_ckpt: Instant,
    failed: Option<String>,
    stats: JournalStats,
    scratch: Vec<u8>,
}

impl Journal {
    /// A journal whose records continue at `start_lsn` (block-aligned; a lap start after
    /// recovery), with checkpoint number `ckpt_no` already durable naming `start_lsn`.
    pub fn new(o: JournalOptions, start_lsn: u64, ckpt_no: u64, now: Instant) -> Journal {
        let cap = o.capacity();
        assert!(cap >= 4 * o.align as u64, "journal too small");
        assert_eq!(start_lsn % o.align as u64, 0, "start at a block");
        Journal {
            cap,
            head: start_lsn,
            durable: start_lsn,
            reclaim: start_lsn,
            stage: Vec::new(),
            stage_base: start_lsn,
            in_flight: false,
            last_flush_start: None,
            appends_pending: 0,
            ckpt: Ckpt::Idle,
            ckpt_no,
            last_ckpt: now,
            failed: None,
            stats: JournalStats::default(),
            scratch: Vec::new(),
            o,
        }
    }

    pub fn options(&self) -> &JournalOptions {
        &self.o
    }
    pub fn head(&self) -> u64 {
        self.head
    }
    pub fn durable(&self) -> u64 {
        self.durable
    }
    pub fn reclaim(&self) -> u64 {
        self.reclaim
    }
    pub fn capacity(&self) -> u64 {
        self.cap
    }
    /// Bytes of the ring not yet reclaimable (appended since the last durable checkpoint).
    pub fn occupancy(&self) -> u64 {
        self.head - self.reclaim
    }
    pub fn stats(&self) -> JournalStats {
        self.stats
    }
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }
    /// Time since the last durable checkpoint.
    pub fn checkpoint_age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_ckpt)
    }

    fn lap_end(&self, lsn: u64) -> u64 {
        (lsn / self.cap + 1) * self.cap
    }
    /// File offset of the byte at `lsn`.
    pub fn file_offset(&self, lsn: u64) -> u64 {
        2 * self.o.align as u64 + lsn % self.cap
    }

    /// Record bytes `data` would take, split into records of at most [`MAX_RECORD_DATA`].
    fn space_for(id_len: usize, data_len: usize) -> u64 {
        let n = data_len.div_ceil(MAX_RECORD_DATA).max(1);
        (n * (RECORD_HEADER_BYTES + id_len + 7) + data_len) as u64 + 8 * n as u64
    }

    /// Journals one replay-file write: `data` goes at `offset` of match `match_id`'s replay
    /// file and holds frames `first_seq..=last_seq` (an empty range for the header alone).
    /// Returns the LSN the flush must pass before the write may be acknowledged.
    pub fn append(
        &mut self,
        match_id: &str,
        first_seq: u64,
        last_seq: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<u64, AppendError> {
        if let Some(e) = &self.failed {
            return Err(AppendError::Failed(e.clone()));
        }
        let need = Self::space_for(match_id.len(), data.len());
        // worst case: the rest of the lap is skipped before a record (less than the record)
        let worst = 2 * need;
        if align_up(self.head + worst, self.o.align as u64) > self.reclaim + self.cap {
            self.stats.full_waits += 1;
            return Err(AppendError::Full);
        }
        let mut off = offset;
        let mut chunks = data.chunks(MAX_RECORD_DATA).peekable();
        if chunks.peek().is_none() {
            self.push_record(KIND_DATA, match_id, first_seq, last_seq, off, &[]);
        }
        for c in chunks {
            self.push_record(KIND_DATA, match_id, first_seq, last_seq, off, c);
            off += c.len() as u64;
        }
        self.appends_pending += 1;
        Ok(self.head)
    }

    fn push_record(
        &mut self,
        kind: u8,
        id: &str,
        first_seq: u64,
        last_seq: u64,
        offset: u64,
        data: &[u8],
    ) {
        let len = align_up((RECORD_HEADER_BYTES + id.len() + data.len()) as u64, 8);
        let end = self.lap_end(self.head);
        if self.head + len > end {
            // skip to the next lap: a WRAP record where it fits, zeros after it
            if end - self.head >= RECORD_HEADER_BYTES as u64 {
                let mut w = Vec::with_capacity(RECORD_HEADER_BYTES);
                encode_record(&mut w, KIND_WRAP, self.head, "", 0, 0, 0, &[]);
                self.stage.extend_from_slice(&w);
                self.head += RECORD_HEADER_BYTES as u64;
            }
            let pad = (end - self.head) as usize;
            self.stage.resize(self.stage.len() + pad, 0);
            self.head = end;
        }
        let mut s = std::mem::take(&mut self.scratch);
        s.clear();
        encode_record(
            &mut s, kind, self.head, id, first_seq, last_seq, offset, data,
        );
        debug_assert_eq!(s.len() as u64, len);
        self.stage.extend_from_slice(&s);
        self.scratch = s;
        self.head += len;
    }

    /// True when appends wait for a flush.
    pub fn pending(&self) -> bool {
        self.head > self.durable
    }

    /// When the next write is due (a flush or a checkpoint slot), if any is.
    pub fn write_due_at(&self) -> Option<Instant> {
        if self.in_flight || self.failed.is_some() {
            return None;
        }
        if matches!(self.ckpt, Ckpt::SlotDue { .. }) {
            return Some(self.last_ckpt); // now
        }
        if !self.pending() {
            return None;
        }
        if (self.head - self.durable) as usize >= self.o.flush_bytes {
            return Some(self.last_ckpt);
        }
        Some(match self.last_flush_start {
            Some(t) => t + self.o.flush_interval,
            None => self.last_ckpt,
        })
    }

    /// The next write if one is due at `now`: fills `dst` (at least one block; a data flush
    /// takes at most `dst.len()` rounded down to blocks) and says where it goes.
    pub fn take_write(&mut self, now: Instant, dst: &mut [u8]) -> Option<JournalWrite> {
        let due = self.write_due_at()?;
        if now < due {
            return None;
        }
        let a = self.o.align;
        assert!(dst.len() >= a, "journal write buffer smaller than a block");
        if let Ckpt::SlotDue { redo } = self.ckpt {
            let no = self.ckpt_no + 1;
            dst[..a].fill(0);
            encode_slot(&mut dst[..SLOT_BYTES], no, redo, self.o.bytes, a as u32);
            self.ckpt = Ckpt::SlotInFlight;
            self.in_flight = true;
            return Some(JournalWrite {
                offset: (no % 2) * a as u64,
                len: a,
                kind: WriteKind::Slot { redo, ckpt_no: no },
            });
        }
        let max = (dst.len() / a * a) as u64;
        let end = self
            .head
            .min(self.stage_base + max)
            .min(self.lap_end(self.stage_base));
        let n = (end - self.stage_base) as usize;
        let padded = align_up(n as u64, a as u64) as usize;
        dst[..n].copy_from_slice(&self.stage[..n]);
        dst[n..padded].fill(0);
        self.in_flight = true;
        self.last_flush_start = Some(now);
        let appends = if end == self.head {
            std::mem::take(&mut self.appends_pending)
        } else {
            0
        };
        Some(JournalWrite {
            offset: self.file_offset(self.stage_base),
            len: padded,
            kind: WriteKind::Data {
                end_lsn: end,
                appends,
            },
        })
    }

    /// Records a completed (durable) write. An error fails the journal: every waiting
    /// append must be answered with a storage error.
    pub fn write_done(&mut self, w: JournalWrite, result: Result<(), String>, now: Instant) {
        assert!(self.in_flight, "write_done without a write in flight");
        self.in_flight = false;
        if let Err(e) = result {
            self.failed = Some(e);
            if matches!(w.kind, WriteKind::Slot { .. }) {
                self.ckpt = Ckpt::Idle;
            }
            return;
        }
        self.stats.written_bytes += w.len as u64;
        match w.kind {
            WriteKind::Data { end_lsn, appends } => {
                self.stats.flushes += 1;
                self.stats.flushed_appends += appends;
                self.stats.record_bytes += end_lsn - self.durable.max(self.stage_base);
                self.durable = end_lsn;
                let keep = super::align_down(end_lsn, self.o.align as u64).max(self.stage_base);
                let drop = (keep - self.stage_base) as usize;
                self.stage.drain(..drop);
                self.stage_base = keep;
                if self.stage.capacity() > (4 << 20) && self.stage.len() < (1 << 20) {
                    self.stage.shrink_to(1 << 20);
                }
            }
            WriteKind::Slot { redo, ckpt_no } => {
                self.ckpt_no = ckpt_no;
                self.reclaim = self.reclaim.max(redo);
                self.ckpt = Ckpt::Idle;
                self.last_ckpt = now;
                self.stats.checkpoints += 1;
            }
        }
    }

    /// When a checkpoint should start (none in progress and something to reclaim).
    pub fn checkpoint_due_at(&self) -> Option<Instant> {
        if self.ckpt != Ckpt::Idle || self.head == self.reclaim || self.failed.is_some() {
            return None;
        }
        if self.filling() {
            return Some(self.last_ckpt); // in the past: now
        }
        Some(self.last_ckpt + self.o.checkpoint_interval)
    }

    /// The ring has reached `checkpoint_fill_pct`: a checkpoint is due at once (and one
    /// in progress should stop spreading its writeback).
    pub fn filling(&self) -> bool {
        self.occupancy() * 100 >= self.cap * self.o.checkpoint_fill_pct
    }

    /// How long the checkpoint about to start may spread its replay-file writeback over:
    /// `checkpoint_spread`, or zero when the journal is filling (space is needed now).
    pub fn checkpoint_spread(&self) -> Duration {
        if self.filling() {
            Duration::ZERO
        } else {
            self.o.checkpoint_spread
        }
    }

    /// Starts a checkpoint: make every replay file durable up to what was written so far,
    /// then call [`Journal::checkpoint_synced`] with the returned redo LSN.
    pub fn begin_checkpoint(&mut self) -> u64 {
        assert_eq!(self.ckpt, Ckpt::Idle, "one checkpoint at a time");
        let redo = self.head;
        self.ckpt = Ckpt::Syncing { redo };
        redo
    }

    /// The replay files are durable (Ok) or could not be made so (the checkpoint is
    /// abandoned, retried at the next interval).
    pub fn checkpoint_synced(&mut self, redo: u64, ok: bool, now: Instant) {
        assert_eq!(self.ckpt, Ckpt::Syncing { redo });
        if ok {
            self.ckpt = Ckpt::SlotDue { redo };
        } else {
            self.ckpt = Ckpt::Idle;
            self.last_ckpt = now;
        }
    }
    pub fn checkpointing(&self) -> bool {
        self.ckpt != Ckpt::Idle
    }
}

#[allow(clippy::too_many_arguments)]
fn encode_record(
    out: &mut Vec<u8>,
    kind: u8,
    lsn: u64,
    id: &str,
    first_seq: u64,
    last_seq: u64,
    offset: u64,
    data: &[u8],
) {
    let start = out.len();
    let len = align_up((RECORD_HEADER_BYTES + id.len() + data.len()) as u64, 8) as u32;
    out.extend_from_slice(&RECORD_MAGIC);
    out.push(kind);
    out.push(id.len() as u8);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&first_seq.to_le_bytes());
    out.extend_from_slice(&last_seq.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    let crc = crc32c::crc32c(&out[start..start + 52]);
    let crc = crc32c::crc32c_append(crc, id.as_bytes());
    let crc = crc32c::crc32c_append(crc, data);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(data);
    out.resize(start + len as usize, 0);
}

fn encode_slot(out: &mut [u8], ckpt_no: u64, redo: u64, journal_bytes: u64, align: u32) {
    out[..8].copy_from_slice(&SLOT_MAGIC);
    out[8..10].copy_from_slice(&JOURNAL_VERSION.to_le_bytes());
    out[10..12].fill(0);
    out[12..16].copy_from_slice(&align.to_le_bytes());
    out[16..24].copy_from_slice(&journal_bytes.to_le_bytes());
    out[24..32].copy_from_slice(&ckpt_no.to_le_bytes());
    out[32..40].copy_from_slice(&redo.to_le_bytes());
    out[40..48].copy_from_slice(&super::now_unix_us().to_le_bytes());
    out[48..60].fill(0);
    let crc = crc32c::crc32c(&out[..60]);
    out[60..64].copy_from_slice(&crc.to_le_bytes());
}

/// The block of one checkpoint slot (for a fresh journal's first checkpoint).
pub fn slot_block(ckpt_no: u64, redo: u64, journal_bytes: u64, align: usize) -> Vec<u8> {
    let mut b = vec![0u8; align];
    encode_slot(
        &mut b[..SLOT_BYTES],
        ckpt_no,
        redo,
        journal_bytes,
        align as u32,
    );
    b
}

/// A valid checkpoint slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub ckpt_no: u64,
    pub redo: u64,
    pub journal_bytes: u64,
    pub align: u32,
    pub unix_us: u64,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

pub fn parse_slot(b: &[u8]) -> Option<Slot> {
    if b.len() < SLOT_BYTES || b[..8] != SLOT_MAGIC {
        return None;
    }
    if crc32c::crc32c(&b[..60]) != u32_at(b, 60) {
        return None;
    }
    if u16::from_le_bytes([b[8], b[9]]) != JOURNAL_VERSION {
        return None;
    }
    Some(Slot {
        align: u32_at(b, 12),
        journal_bytes: u64_at(b, 16),
        ckpt_no: u64_at(b, 24),
        redo: u64_at(b, 32),
        unix_us: u64_at(b, 40),
    })
}

/// One data record found by a recovery scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRecord {
    pub lsn: u64,
    pub match_id: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub offset: u64,
    /// Where its data is in the scanned file bytes.
    pub data: std::ops::Range<usize>,
}

/// What a scan of a journal file found.
#[derive(Debug, Default)]
pub struct ScanResult {
    /// The checkpoint the scan started from (None: no valid slot, nothing replayed).
    pub slot: Option<Slot>,
    pub records: Vec<DataRecord>,
    /// LSN after the last whole record.
    pub end_lsn: u64,
    /// Lines for the log: where the scan stopped and why, records skipped.
    pub notes: Vec<String>,
}

enum Parsed {
    Data(DataRecord, u64),
    Wrap,
    /// No record with this LSN here (zeros, a record of an earlier lap): the end.
    End,
    /// A record header that claims this LSN but fails its checks.
    Bad(String),
}

/// Scans a whole journal file (`file` = its bytes) from the newest checkpoint's redo LSN
/// to the last whole record. A torn or corrupt record ends the scan unless a later record
/// with its exact expected LSN follows (then the bad one is skipped with a note).
pub fn scan(file: &[u8], max_record_data: usize) -> ScanResult {
    let mut out = ScanResult::default();
    let a0 = parse_slot(file).filter(|_| file.len() >= 4096);
    let mut best: Option<Slot> = a0;
    // the second slot is one alignment block in; the alignment is in the first valid slot
    for align in [512usize, 1024, 2048, 4096, 8192, 16384, 65536] {
        if let Some(s) = file.get(align..).and_then(parse_slot) {
            if s.align as usize == align && best.is_none_or(|b| s.ckpt_no > b.ckpt_no) {
                best = Some(s);
            }
        }
    }
    let Some(slot) = best else {
        out.notes
            .push("no valid checkpoint slot: nothing to replay".into());
        return out;
    };
    out.slot = Some(slot);
    let align = slot.align as u64;
    if slot.journal_bytes != file.len() as u64 || align == 0 || file.len() as u64 <= 4 * align {
        out.notes.push(format!(
            "checkpoint slot says {} bytes, file has {}: nothing replayed",
            slot.journal_bytes,
            file.len()
        ));
        out.end_lsn = slot.redo;
        return out;
    }
    let cap = (file.len() as u64 - 2 * align) / align * align;
    let base = 2 * align;
    let mut lsn = slot.redo;
    let limit = slot.redo + cap;
    let at = |lsn: u64| (base + lsn % cap) as usize;
    while lsn < limit {
        let room = cap - lsn % cap;
        if room < RECORD_HEADER_BYTES as u64 {
            lsn += room;
            continue;
        }
        match parse_at(file, at(lsn), lsn, room, max_record_data) {
            Parsed::Data(r, len) => {
                out.records.push(r);
                lsn += len;
            }
            Parsed::Wrap => lsn += room,
            Parsed::End => break,
            Parsed::Bad(why) => {
                // a later record at its exact LSN means this one is corrupt, not the tail
                let mut probe = lsn + 8;
                let mut found = None;
                while probe < limit {
                    let r = cap - probe % cap;
                    if r >= RECORD_HEADER_BYTES as u64 {
                        if let Parsed::Data(..) | Parsed::Wrap =
                            parse_at(file, at(probe), probe, r, max_record_data)
                        {
                            found = Some(probe);
                            break;
                        }
                    }
                    probe += 8;
                }
                match found {
                    Some(p) => {
                        out.notes.push(format!(
                            "corrupt record at LSN {lsn} ({why}); {} bytes skipped, the scan goes on at LSN {p}",
                            p - lsn
                        ));
                        lsn = p;
                    }
                    None => {
                        out.notes.push(format!(
                            "torn or corrupt record at LSN {lsn} ({why}): the journal is cut there"
                        ));
                        break;
                    }
                }
            }
        }
    }
    out.end_lsn = lsn;
    out
}

fn parse_at(file: &[u8], p: usize, lsn: u64, room: u64, max_data: usize) -> Parsed {
    let h = &file[p..p + RECORD_HEADER_BYTES];
    if h[..4] != RECORD_MAGIC || u64_at(h, 8) != lsn {
        return Parsed::End;
    }
    let kind = h[4];
    let id_len = h[5] as usize;
    let len = u32_at(h, 16) as u64;
    let data_len = u32_at(h, 20) as usize;
    if len > room
        || data_len > max_data
        || id_len > 64
        || len != align_up((RECORD_HEADER_BYTES + id_len + data_len) as u64, 8)
    {
        return Parsed::Bad(format!(
            "impossible lengths (record {len}, data {data_len})"
        ));
    }
    let body = &file[p + RECORD_HEADER_BYTES..p + RECORD_HEADER_BYTES + id_len + data_len];
    let crc = crc32c::crc32c(&h[..52]);
    let crc = crc32c::crc32c_append(crc, body);
    if crc != u32_at(h, 52) {
        return Parsed::Bad("CRC32C mismatch".into());
    }
    match kind {
        KIND_WRAP => Parsed::Wrap,
        KIND_DATA => {
            let Ok(id) = std::str::from_utf8(&body[..id_len]) else {
                return Parsed::Bad("match id is not UTF-8".into());
            };
            if crate::protocol::validate_match_id(id).is_err() {
                return Parsed::Bad(format!("invalid match id {id:?}"));
            }
            let d0 = p + RECORD_HEADER_BYTES + id_len;
            Parsed::Data(
                DataRecord {
                    lsn,
                    match_id: id.to_string(),
                    first_seq: u64_at(h, 24),
                    last_seq: u64_at(h, 32),
                    offset: u64_at(h, 40),
                    data: d0..d0 + data_len,
                },
                len,
            )
        }
        k => Parsed::Bad(format!("unknown record kind {k}")),
    }
}

/// The LSN a journal continues at after a scan that ended at `end_lsn`: the next lap's
/// start, so no record written before the restart can ever pass for a new one.
pub fn restart_lsn(end_lsn: u64, cap: u64) -> u64 {
    (end_lsn / cap + 1) * cap
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(bytes: u64) -> JournalOptions {
        JournalOptions {
            bytes,
            align: 4096,
            flush_interval: Duration::ZERO,
            flush_bytes: 1 << 20,
            checkpoint_interval: Duration::from_secs(1),
            checkpoint_fill_pct: 50,
            checkpoint_spread: Duration::ZERO,
            test_checkpoint_delay: Duration::ZERO,
        }
    }

    /// Runs writes into an in-memory file image.
    fn flush_all(j: &mut Journal, file: &mut [u8], now: Instant) {
        let mut buf = vec![0u8; 1 << 20];
        while let Some(w) = j.take_write(now, &mut buf) {
            file[w.offset as usize..w.offset as usize + w.len].copy_from_slice(&buf[..w.len]);
            j.write_done(w, Ok(()), now);
        }
    }

    fn fresh(bytes: u64) -> (Journal, Vec<u8>, Instant) {
        let now = Instant::now();
        let mut file = vec![0u8; bytes as usize];
        file[..4096].copy_from_slice(&slot_block(1, 0, bytes, 4096));
        (Journal::new(opts(bytes), 0, 1, now), file, now)
    }

    #[test]
    fn appends_flush_and_scan_back_in_order() {
        let (mut j, mut file, now) = fresh(1 << 20);
        let a = j.append("m1", 1, 3, 128, b"abc").unwrap();
        let b = j.append("m2", 0, 0, 0, &[7u8; 5000]).unwrap();
        assert!(a < b && j.durable() < a);
        flush_all(&mut j, &mut file, now);
        assert_eq!(j.durable(), b);
        assert_eq!(j.stats().flushes, 1);
        assert_eq!(j.stats().flushed_appends, 2);
        let s = scan(&file, MAX_RECORD_DATA);
        assert_eq!(s.records.len(), 2, "{:?}", s.notes);
        assert_eq!(s.records[0].match_id, "m1");
        assert_eq!(&file[s.records[0].data.clone()], b"abc");
        assert_eq!(s.records[1].offset, 0);
        assert_eq!(s.end_lsn, b);
    }

    #[test]
    fn tail_block_is_rewritten_by_the_next_flush() {
        let (mut j, mut file, now) = fresh(1 << 20);
        j.append("m", 1, 1, 128, b"one").unwrap();
        flush_all(&mut j, &mut file, now);
        j.append("m", 2, 2, 131, b"two").unwrap();
        flush_all(&mut j, &mut file, now);
        let s = scan(&file, MAX_RECORD_DATA);
        assert_eq!(s.records.len(), 2);
        assert_eq!(j.stats().written_bytes, 2 * 4096);
    }

    #[test]
    fn a_checkpoint_is_spread_unless_the_journal_is_filling() {
        let bytes = 2 * 4096 + 1024 * 1024;
        let now = Instant::now();
        let mut o = opts(bytes);
        o.checkpoint_spread = Duration::from_millis(800);
        let mut j = Journal::new(o, 0, 1, now);
        let mut file = vec![0u8; bytes as usize];
        j.append("m", 1, 1, 0, &[1u8; 1000]).unwrap();
        flush_all(&mut j, &mut file, now);
        // due by its interval: spread
        assert_eq!(j.checkpoint_due_at(), Some(now + Duration::from_secs(1)));
        assert_eq!(j.checkpoint_spread(), Duration::from_millis(800));
        let mut n = 2;
        while j.occupancy() * 100 < j.capacity() * 50 {
            j.append("m", n, n, 0, &[1u8; 100 << 10]).unwrap();
            flush_all(&mut j, &mut file, now);
            n += 1;
        }
        // half full: due now, and not spread (the space is needed)
        assert_eq!(j.checkpoint_due_at(), Some(now));
        assert_eq!(j.checkpoint_spread(), Duration::ZERO);
    }

    #[test]
    fn full_ring_refuses_until_a_checkpoint_reclaims() {
        let (mut j, mut file, now) = fresh(2 * 4096 + 1024 * 1024);
        let data = vec![1u8; 100 << 10];
        let mut n = 0;
        while j.append("m", n, n, n * 1000, &data).is_ok() {
            n += 1;
            flush_all(&mut j, &mut file, now);
        }
        assert!(n >= 3, "{n}");
        assert_eq!(j.append("m", n, n, 0, &data), Err(AppendError::Full));
        let redo = j.begin_checkpoint();
        j.checkpoint_synced(redo, true, now);
        flush_all(&mut j, &mut file, now);
        assert_eq!(j.reclaim(), redo);
        // wraps around the ring now, and a scan from the new checkpoint sees only new records
        for i in 0..8 {
            j.append("m", 100 + i, 100 + i, 0, &data)
                .unwrap_or_else(|e| panic!("{i}: {e:?}"));
            flush_all(&mut j, &mut file, now);
            if j.occupancy() > 600 << 10 {
                let r = j.begin_checkpoint();
                j.checkpoint_synced(r, true, now);
                flush_all(&mut j, &mut file, now);
            }
        }
        let s = scan(&file, MAX_RECORD_DATA);
        assert!(!s.records.is_empty());
        assert!(
            s.records.iter().all(|r| r.first_seq >= 100),
            "{:?}",
            s.notes
        );
        assert_eq!(s.end_lsn, j.head());
        assert!(j.head() > j.capacity(), "wrapped at least once");
    }

    #[test]
    fn torn_tail_stops_the_scan_and_corrupt_middle_is_skipped() {
        let (mut j, mut file, now) = fresh(1 << 20);
        let mut ends = Vec::new();
        for i in 0..5u64 {
            ends.push(j.append("m", i, i, i * 10, &[i as u8; 300]).unwrap());
        }
        flush_all(&mut j, &mut file, now);
        // corrupt the payload of record 2: skipped, records 3 and 4 still found
        let s = scan(&file, MAX_RECORD_DATA);
        let r2 = s.records[2].data.start;
        file[r2 + 5] ^= 0xff;
        let s = scan(&file, MAX_RECORD_DATA);
        assert_eq!(s.records.len(), 4, "{:?}", s.notes);
        assert!(s.notes[0].contains("corrupt record"), "{:?}", s.notes);
        // tear the last record: the scan ends after record 3
        let last = s.records[3].data.start;
        file[last..last + 300].fill(0);
        let s = scan(&file, MAX_RECORD_DATA);
        assert_eq!(s.records.len(), 3, "{:?}", s.notes);
        assert!(s.notes.iter().any(|n| n.contains("cut")), "{:?}", s.notes);
        assert_eq!(s.end_lsn, ends[3]);
    }

    #[test]
    fn stale_records_of_an_earlier_lap_are_not_replayed() {
        let (mut j, mut file, now) = fresh(2 * 4096 + 64 * 4096);
        let cap = j.capacity();
        j.append("old", 1, 1, 0, &[1u8; 1000]).unwrap();
        flush_all(&mut j, &mut file, now);
        // restart one lap on: the old record is still in the file at the same offset
        let start = restart_lsn(j.head(), cap);
        let mut j2 = Journal::new(opts(file.len() as u64), start, 5, now);
        let len = file.len() as u64;
        file[4096..8192].copy_from_slice(&slot_block(6, start, len, 4096));
        let s = scan(&file, MAX_RECORD_DATA);
        assert!(s.records.is_empty(), "{:?}", s.records);
        j2.append("new", 1, 1, 0, b"x").unwrap();
        flush_all(&mut j2, &mut file, now);
        let s = scan(&file, MAX_RECORD_DATA);
        assert_eq!(s.records.len(), 1);
        assert_eq!(s.records[0].match_id, "new");
    }

    #[test]
    fn large_writes_are_split_into_records() {
        let (mut j, mut file, now) = fresh(4 << 20);
        let data: Vec<u8> = (0..(600 << 10)).map(|i| i as u8).collect();
        j.append("big", 1, 9, 4096, &data).unwrap();
        flush_all(&mut j, &mut file, now);
        let s = scan(&file, MAX_RECORD_DATA);
        assert_eq!(s.records.len(), 3);
        let mut got = Vec::new();
        for r in &s.records {
            assert_eq!(r.offset, 4096 + got.len() as u64);
            got.extend_from_slice(&file[r.data.clone()]);
        }
        assert_eq!(got, data);
    }

    #[test]
    fn flush_spacing_groups_appends() {
        let now = Instant::now();
        let mut o = opts(1 << 20);
        o.flush_interval = Duration::from_millis(5);
        let mut j = Journal::new(o, 0, 1, now);
        let mut buf = vec![0u8; 1 << 20];
        j.append("a", 1, 1, 0, b"1").unwrap();
        let w = j.take_write(now, &mut buf).unwrap();
        j.append("b", 1, 1, 0, b"2").unwrap();
        assert!(j.take_write(now, &mut buf).is_none(), "one write in flight");
        j.write_done(w, Ok(()), now);
        assert!(j.take_write(now, &mut buf).is_none(), "spacing not passed");
        j.append("c", 1, 1, 0, b"3").unwrap();
        let w = j
            .take_write(now + Duration::from_millis(5), &mut buf)
            .unwrap();
        assert_eq!(
            w.kind,
            WriteKind::Data {
                end_lsn: j.head(),
                appends: 2
            }
        );
    }
}

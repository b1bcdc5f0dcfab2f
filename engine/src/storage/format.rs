//! The replay file format (docs/format.md): encoders and parsers shared by the recorder,
//! its recovery scan, the tests and any downloader.
//!
//! Layout: a 128-byte file header, frame records (40-byte record header with its own CRC,
//! then the payload), and once sealed a keyframe index and a 96-byte trailer at the very
//! end. All integers little-endian. Zero padding and torn tails fail the record-header
//! CRC, so a scan always stops at the last whole record.

use std::fmt;
use std::io::{self, Read};

pub const FILE_MAGIC: [u8; 8] = *b"RPLYFILE";
pub const FORMAT_VERSION: u16 = 1;
pub const HEADER_BYTES: usize = 128;
pub const RECORD_HEADER_BYTES: usize = 40;
pub const INDEX_MAGIC: [u8; 4] = *b"RIDX";
pub const INDEX_HEAD_BYTES: usize = 16;
pub const INDEX_ENTRY_BYTES: usize = 32;
/// Index head + entries + crc(4) + pad(4).
pub fn index_bytes(count: usize) -> usize {
    INDEX_HEAD_BYTES + INDEX_ENTRY_BYTES * count + 8
}
pub const TRAILER_MAGIC: [u8; 8] = *b"RPLYTAIL";
pub const TRAILER_BYTES: usize = 96;

/// Why bytes are not a valid replay (or part of one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatError {
    /// Byte offset in the file where the problem is.
    pub offset: u64,
    pub what: String,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "replay file invalid at byte {}: {}",
            self.offset, self.what
        )
    }
}
impl std::error::Error for FormatError {}

fn ferr(offset: u64, what: impl Into<String>) -> FormatError {
    FormatError {
        offset,
        what: what.into(),
    }
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// The file header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileHeader {
    pub match_id: String,
    pub created_unix_us: u64,
}

pub fn encode_header(out: &mut Vec<u8>, match_id: &str, created_unix_us: u64) {
    assert!(
        match_id.len() <= 64,
        "match ids are validated before a file is created"
    );
    let start = out.len();
    out.extend_from_slice(&FILE_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(HEADER_BYTES as u16).to_le_bytes());
    out.extend_from_slice(&crate::protocol::VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&created_unix_us.to_le_bytes());
    out.push(match_id.len() as u8);
    out.extend_from_slice(match_id.as_bytes());
    out.resize(start + 124, 0);
    let crc = crc32c::crc32c(&out[start..start + 124]);
    out.extend_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(out.len() - start, HEADER_BYTES);
}

pub fn parse_header(b: &[u8]) -> Result<FileHeader, FormatError> {
    if b.len() < HEADER_BYTES {
        return Err(ferr(
            0,
            format!(
                "file is {} bytes, shorter than the {HEADER_BYTES}-byte header",
                b.len()
            ),
        ));
    }
    if b[..8] != FILE_MAGIC {
        return Err(ferr(0, "does not start with the magic \"RPLYFILE\""));
    }
    let crc = crc32c::crc32c(&b[..124]);
    if crc != u32_at(b, 124) {
        return Err(ferr(124, "header CRC32C mismatch"));
    }
    let v = u16_at(b, 8);
    if v != FORMAT_VERSION {
        return Err(ferr(
            8,
            format!("format version {v} is not supported (this reader knows {FORMAT_VERSION})"),
        ));
    }
    if u16_at(b, 10) as usize != HEADER_BYTES {
        return Err(ferr(
            10,
            format!("header length {} is not {HEADER_BYTES}", u16_at(b, 10)),
        ));
    }
    let n = b[24] as usize;
    if n == 0 || n > 64 {
        return Err(ferr(24, format!("match id length {n} is outside 1..=64")));
    }
    let match_id = std::str::from_utf8(&b[25..25 + n])
        .map_err(|_| ferr(25, "match id is not UTF-8"))?
        .to_string();
    crate::protocol::validate_match_id(&match_id).map_err(|e| ferr(25, e.text))?;
    Ok(FileHeader {
        match_id,
        created_unix_us: u64_at(b, 16),
    })
}

/// The header of one frame record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub payload_len: u32,
    pub kind: u8,
    pub seq: u64,
    pub tick: u64,
    pub recv_unix_us: u64,
    pub payload_crc32c: u32,
}

impl RecordHeader {
    pub fn record_bytes(&self) -> u64 {
        RECORD_HEADER_BYTES as u64 + self.payload_len as u64
    }
}

pub fn encode_record_header(out: &mut Vec<u8>, h: &RecordHeader) {
    let start = out.len();
    out.extend_from_slice(&h.payload_len.to_le_bytes());
    out.extend_from_slice(&[h.kind, 0, 0, 0]);
    out.extend_from_slice(&h.seq.to_le_bytes());
    out.extend_from_slice(&h.tick.to_le_bytes());
    out.extend_from_slice(&h.recv_unix_us.to_le_bytes());
    out.extend_from_slice(&h.payload_crc32c.to_le_bytes());
    let crc = crc32c::crc32c(&out[start..start + 36]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Parses a record header at file offset `offset` (for messages). `max_payload` bounds the length.
pub fn parse_record_header(
    b: &[u8],
    offset: u64,
    max_payload: u32,
) -> Result<RecordHeader, FormatError> {
    if b.len() < RECORD_HEADER_BYTES {
        return Err(ferr(offset, "record header is truncated"));
    }
    if crc32c::crc32c(&b[..36]) != u32_at(b, 36) {
        return Err(ferr(
            offset,
            "record header CRC32C mismatch (torn write, padding or corruption)",
        ));
    }
    let h = RecordHeader {
        payload_len: u32_at(b, 0),
        kind: b[4],
        seq: u64_at(b, 8),
        tick: u64_at(b, 16),
        recv_unix_us: u64_at(b, 24),
        payload_crc32c: u32_at(b, 32),
    };
    if h.kind != crate::protocol::FRAME_KEY && h.kind != crate::protocol::FRAME_DELTA {
        return Err(ferr(
            offset + 4,
            format!("record kind {} is not 1 (keyframe) or 2 (delta)", h.kind),
        ));
    }
    if b[5..8] != [0, 0, 0] {
        return Err(ferr(offset + 5, "reserved record bytes are not zero"));
    }
    if h.payload_len > max_payload {
        return Err(ferr(
            offset,
            format!(
                "record payload length {} exceeds {max_payload}",
                h.payload_len
            ),
        ));
    }
    Ok(h)
}

/// One keyframe index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IndexEntry {
    pub seq: u64,
    pub tick: u64,
    /// File offset of the keyframe's record header.
    pub offset: u64,
    pub recv_unix_us: u64,
}

pub fn encode_index(out: &mut Vec<u8>, entries: &[IndexEntry]) {
    let start = out.len();
    out.extend_from_slice(&INDEX_MAGIC);
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.seq.to_le_bytes());
        out.extend_from_slice(&e.tick.to_le_bytes());
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.recv_unix_us.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
}

/// Parses the index section `b` found at file offset `offset`.
pub fn parse_index(b: &[u8], offset: u64) -> Result<Vec<IndexEntry>, FormatError> {
    if b.len() < index_bytes(0) || b[..4] != INDEX_MAGIC {
        return Err(ferr(offset, "keyframe index does not start with \"RIDX\""));
    }
    let n = u64_at(b, 8) as usize;
    if b.len() != index_bytes(n) {
        return Err(ferr(
            offset,
            format!(
                "keyframe index of {n} entries should be {} bytes, found {}",
                index_bytes(n),
                b.len()
            ),
        ));
    }
    let body = INDEX_HEAD_BYTES + INDEX_ENTRY_BYTES * n;
    if crc32c::crc32c(&b[..body]) != u32_at(b, body) {
        return Err(ferr(offset + body as u64, "keyframe index CRC32C mismatch"));
    }
    Ok((0..n)
        .map(|i| {
            let o = INDEX_HEAD_BYTES + i * INDEX_ENTRY_BYTES;
            IndexEntry {
                seq: u64_at(b, o),
                tick: u64_at(b, o + 8),
                offset: u64_at(b, o + 16),
                recv_unix_us: u64_at(b, o + 24),
            }
        })
        .collect())
}

/// The trailer of a sealed replay (its last 96 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Trailer {
    pub index_offset: u64,
    pub index_count: u64,
    pub frame_count: u64,
    pub last_seq: u64,
    pub first_tick: u64,
    pub last_tick: u64,
    pub created_unix_us: u64,
    pub sealed_unix_us: u64,
    pub payload_bytes: u64,
    /// Receive time of the first and last frames (0 when the match has no frames).
    pub first_frame_unix_us: u64,
}

pub fn encode_trailer(out: &mut Vec<u8>, t: &Trailer) {
    let start = out.len();
    out.extend_from_slice(&TRAILER_MAGIC);
    for v in [
        t.index_offset,
        t.index_count,
        t.frame_count,
        t.last_seq,
        t.first_tick,
        t.last_tick,
        t.created_unix_us,
        t.sealed_unix_us,
        t.payload_bytes,
        t.first_frame_unix_us,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    debug_assert_eq!(out.len() - start, TRAILER_BYTES);
}

pub fn parse_trailer(b: &[u8], offset: u64) -> Result<Trailer, FormatError> {
    if b.len() != TRAILER_BYTES || b[..8] != TRAILER_MAGIC {
        return Err(ferr(
            offset,
            "no trailer (\"RPLYTAIL\") at the end: the replay is not sealed",
        ));
    }
    if crc32c::crc32c(&b[..88]) != u32_at(b, 88) {
        return Err(ferr(offset + 88, "trailer CRC32C mismatch"));
    }
    let g = |i: usize| u64_at(b, 8 + 8 * i);
    Ok(Trailer {
        index_offset: g(0),
        index_count: g(1),
        frame_count: g(2),
        last_seq: g(3),
        first_tick: g(4),
        last_tick: g(5),
        created_unix_us: g(6),
        sealed_unix_us: g(7),
        payload_bytes: g(8),
        first_frame_unix_us: g(9),
    })
}

/// A whole replay parsed and checked (every CRC, sequence order, index consistency).
#[derive(Clone, Debug)]
pub struct Replay {
    pub header: FileHeader,
    /// Each frame's record header and the byte range of its payload in the file.
    pub frames: Vec<(RecordHeader, std::ops::Range<usize>)>,
    /// Present when the file is sealed.
    pub trailer: Option<Trailer>,
    pub index: Vec<IndexEntry>,
}

/// Parses a whole replay file. A sealed file must be exactly header + records + index +
/// trailer; an unsealed one (a live download) is parsed up to its last whole record and
/// `trailer` is None. Every CRC is checked.
pub fn parse_replay(b: &[u8]) -> Result<Replay, FormatError> {
    let header = parse_header(b)?;
    let sealed = b.len() >= HEADER_BYTES + TRAILER_BYTES
        && b[b.len() - TRAILER_BYTES..b.len() - TRAILER_BYTES + 8] == TRAILER_MAGIC;
    let (data_end, trailer, index) = if sealed {
        let toff = b.len() - TRAILER_BYTES;
        let t = parse_trailer(&b[toff..], toff as u64)?;
        let io = t.index_offset as usize;
        if io < HEADER_BYTES || io > toff {
            return Err(ferr(
                toff as u64 + 8,
                format!("trailer index offset {io} is outside the file"),
            ));
        }
        let idx = parse_index(&b[io..toff], io as u64)?;
        if idx.len() as u64 != t.index_count {
            return Err(ferr(
                toff as u64 + 16,
                "trailer index count differs from the index",
            ));
        }
        (io, Some(t), idx)
    } else {
        (b.len(), None, Vec::new())
    };
    let mut frames = Vec::new();
    let mut off = HEADER_BYTES;
    let mut keyframes = Vec::new();
    while off + RECORD_HEADER_BYTES <= data_end {
        let h = match parse_record_header(&b[off..], off as u64, u32::MAX) {
            Ok(h) => h,
            Err(e) if trailer.is_none() => {
                let _ = e;
                break;
            }
            Err(e) => return Err(e),
        };
        let p = off + RECORD_HEADER_BYTES;
        let end = p + h.payload_len as usize;
        if end > data_end {
            if trailer.is_none() {
                break;
            }
            return Err(ferr(off as u64, "record runs past the keyframe index"));
        }
        if crc32c::crc32c(&b[p..end]) != h.payload_crc32c {
            return Err(ferr(
                off as u64,
                format!("frame {} payload CRC32C mismatch", h.seq),
            ));
        }
        let expect = frames.len() as u64 + 1;
        if h.seq != expect {
            return Err(ferr(
                off as u64 + 8,
                format!("frame sequence {} where {expect} was expected", h.seq),
            ));
        }
        if h.kind == crate::protocol::FRAME_KEY {
            keyframes.push(IndexEntry {
                seq: h.seq,
                tick: h.tick,
                offset: off as u64,
                recv_unix_us: h.recv_unix_us,
            });
        }
        frames.push((h, p..end));
        off = end;
    }
    if let Some(t) = &trailer {
        if off != data_end {
            return Err(ferr(
                off as u64,
                "bytes between the last record and the keyframe index",
            ));
        }
        if t.frame_count != frames.len() as u64 || t.last_seq != frames.len() as u64 {
            return Err(ferr(
                b.len() as u64 - TRAILER_BYTES as u64,
                "trailer frame count differs from the records",
            ));
        }
        if keyframes != index {
            return Err(ferr(
                t.index_offset,
                "keyframe index differs from the keyframe records",
            ));
        }
    }
    Ok(Replay {
        header,
        frames,
        trailer,
        index,
    })
}

/// What a scan of an in-progress file found: everything up to the last whole record.
#[derive(Clone, Debug, Default)]
pub struct ScanOutcome {
    pub created_unix_us: u64,
    /// Bytes of header + whole records; everything after is torn or garbage.
    pub valid_end: u64,
    /// File length found (so `valid_end < file_len` means a tail was cut).
    pub file_len: u64,
    pub frame_count: u64,
    pub last_seq: u64,
    pub first_tick: u64,
    pub last_tick: u64,
    pub payload_bytes: u64,
    pub first_frame_unix_us: u64,
    pub last_frame_unix_us: u64,
    pub index: Vec<IndexEntry>,
    /// Why the scan stopped before the end of the file, if it did.
    pub stop_reason: Option<String>,
}

/// Scans an in-progress replay from `r` (positioned at byte 0), streaming, checking each
/// record header and payload CRC and sequence continuity. Stops at the first invalid or
/// incomplete record. Errors only for an unreadable file or an invalid header whose match
/// id differs from `match_id`.
pub fn scan(
    mut r: impl Read,
    match_id: &str,
    max_payload: u32,
) -> io::Result<Result<ScanOutcome, FormatError>> {
    let mut hdr = [0u8; HEADER_BYTES];
    let got = read_full(&mut r, &mut hdr)?;
    let h = match parse_header(&hdr[..got]) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    if h.match_id != match_id {
        return Ok(Err(ferr(
            25,
            format!(
                "header names match {:?}, the file name says {match_id:?}",
                h.match_id
            ),
        )));
    }
    let mut s = ScanOutcome {
        created_unix_us: h.created_unix_us,
        valid_end: HEADER_BYTES as u64,
        ..Default::default()
    };
    let mut off = HEADER_BYTES as u64;
    let mut rh = [0u8; RECORD_HEADER_BYTES];
    let mut payload = Vec::new();
    loop {
        let n = read_full(&mut r, &mut rh)?;
        if n == 0 {
            break;
        }
        if n < RECORD_HEADER_BYTES {
            off += n as u64;
            s.stop_reason = Some(format!("torn record header at byte {}", s.valid_end));
            break;
        }
        let h = match parse_record_header(&rh, off, max_payload) {
            Ok(h) => h,
            Err(e) => {
                off += n as u64;
                s.stop_reason = Some(e.to_string());
                break;
            }
        };
        if h.seq != s.last_seq + 1 {
            off += n as u64;
            s.stop_reason = Some(format!(
                "record at byte {} has sequence {} after {}",
                s.valid_end, h.seq, s.last_seq
            ));
            break;
        }
        payload.resize(h.payload_len as usize, 0);
        let m = read_full(&mut r, &mut payload)?;
        off += (n + m) as u64;
        if m < payload.len() {
            s.stop_reason = Some(format!(
                "frame {} is torn: {} of {} payload bytes",
                h.seq,
                m,
                payload.len()
            ));
            break;
        }
        if crc32c::crc32c(&payload) != h.payload_crc32c {
            s.stop_reason = Some(format!(
                "frame {} payload CRC32C mismatch at byte {}",
                h.seq, s.valid_end
            ));
            break;
        }
        if h.kind == crate::protocol::FRAME_KEY {
            s.index.push(IndexEntry {
                seq: h.seq,
                tick: h.tick,
                offset: s.valid_end,
                recv_unix_us: h.recv_unix_us,
            });
        }
        if s.frame_count == 0 {
            s.first_tick = h.tick;
            s.first_frame_unix_us = h.recv_unix_us;
        }
        s.frame_count += 1;
        s.last_seq = h.seq;
        s.last_tick = h.tick;
        s.last_frame_unix_us = h.recv_unix_us;
        s.payload_bytes += h.payload_len as u64;
        s.valid_end = off;
    }
    // count what remains so file_len is known
    let mut sink = [0u8; 65536];
    loop {
        let k = r.read(&mut sink)?;
        if k == 0 {
            break;
        }
        off += k as u64;
    }
    s.file_len = off;
    Ok(Ok(s))
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

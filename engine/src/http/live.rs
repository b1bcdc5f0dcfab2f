//! Live download of a match in progress: chunked from byte 0, following the live tail,
//! ending with the last chunk once the match is sealed. Sans-IO.

use crate::server::registry::{MatchShared, Phase};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A live download in progress: sends everything readable (or readable `delay` ago),
/// waits for growth, ends with the final chunk once the match is sealed and all its bytes
/// went out. Backend-independent: the backend reads `next_range()` from the file, sends
/// it as a chunk (`chunk_head`, bytes, `\r\n`), calls `sent()`, and when `next_range()` is
/// None either finishes (`is_done`) or waits (for `MatchShared::version` to change or
/// until `retry_at()`).
pub struct LiveTail {
    pub shared: Arc<MatchShared>,
    pub part_path: PathBuf,
    pub sealed_path: PathBuf,
    pub delay: Duration,
    pub sent: u64,
    pub max_chunk: u64,
}

impl LiveTail {
    /// Bytes that may go out now: [sent, end).
    pub fn next_range(&self, now: Instant) -> Option<(u64, u64)> {
        let end = self.limit(now);
        (end > self.sent).then(|| (self.sent, end.min(self.sent + self.max_chunk)))
    }
    fn limit(&self, now: Instant) -> u64 {
        if self.delay.is_zero() {
            self.shared.info().bytes
        } else {
            match now.checked_sub(self.delay) {
                Some(t) => self.shared.bytes_at(t),
                None => 0,
            }
        }
    }
    pub fn sent(&mut self, n: u64) {
        self.sent += n;
    }
    /// True when the match is sealed and every byte went out: send the last chunk.
    pub fn is_done(&self, now: Instant) -> bool {
        let i = self.shared.info();
        i.phase == Phase::Sealed && self.sent >= i.bytes && self.limit(now) <= self.sent
    }
    /// With a delay, data becomes sendable as time passes: when to look again.
    pub fn retry_at(&self, now: Instant) -> Option<Instant> {
        (!self.delay.is_zero()).then(|| now + Duration::from_millis(20))
    }
    /// The file to read: the in-progress one, or the sealed one once renamed. An fd opened
    /// on the in-progress file stays valid across the rename.
    pub fn open(&self) -> std::io::Result<std::fs::File> {
        std::fs::File::open(&self.part_path).or_else(|_| std::fs::File::open(&self.sealed_path))
    }
}

/// Chunk header for `n` bytes.
pub fn chunk_head(n: u64) -> Vec<u8> {
    format!("{n:x}\r\n").into_bytes()
}
pub const CHUNK_END: &[u8] = b"0\r\n\r\n";

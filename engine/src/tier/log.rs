//! `STORE/archived.ids`: the replays this node knows the object store has whole, one line
//! each, appended with fdatasync after the store confirmed the object (so a restart knows
//! which sealed replays still need an upload, and can list archived replays whose local
//! copy was deleted). Line: `<id> <bytes> <trailer as 192 hex digits>`; the trailer gives
//! the listing's fields and the ETag without asking the store.

use crate::storage::{format, SealedInfo, StorePaths};
use std::collections::HashSet;
use std::io::Write;
use std::sync::Mutex;

/// File name of the archived log in the store root.
pub const ARCHIVED_LOG: &str = "archived.ids";

pub struct ArchivedLog {
    file: Mutex<std::fs::File>,
}

/// The line of one archived replay.
pub fn line(info: &SealedInfo) -> String {
    let mut t = Vec::with_capacity(format::TRAILER_BYTES);
    format::encode_trailer(&mut t, &info.trailer);
    let hex: String = t.iter().map(|b| format!("{b:02x}")).collect();
    format!("{} {} {hex}\n", info.id, info.len)
}

/// Parses one line back (None: damaged).
pub fn parse_line(l: &str) -> Option<SealedInfo> {
    let mut it = l.split_ascii_whitespace();
    let (id, len, hex) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || crate::protocol::validate_match_id(id).is_err() {
        return None;
    }
    let len: u64 = len.parse().ok()?;
    if hex.len() != 2 * format::TRAILER_BYTES {
        return None;
    }
    let b: Vec<u8> = (0..format::TRAILER_BYTES)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
        .collect::<Result<_, _>>()
        .ok()?;
    sealed_info_from_trailer(id, len, &b).ok()
}

/// A sealed replay's description from its length and trailer bytes.
pub fn sealed_info_from_trailer(id: &str, len: u64, b: &[u8]) -> Result<SealedInfo, String> {
    let off = len
        .checked_sub(format::TRAILER_BYTES as u64)
        .ok_or_else(|| format!("{len} bytes is too short for a sealed replay"))?;
    let trailer = format::parse_trailer(b, off).map_err(|e| e.to_string())?;
    let crc = u32::from_le_bytes(b[88..92].try_into().map_err(|_| "short trailer")?);
    Ok(SealedInfo {
        id: id.to_string(),
        len,
        trailer,
        etag: crate::storage::etag_for(len, crc),
    })
}

impl ArchivedLog {
    /// Opens (creates) the log and reads what earlier runs recorded: one entry per id,
    /// damaged lines skipped with a note.
    pub fn open(
        paths: &StorePaths,
    ) -> std::io::Result<(ArchivedLog, Vec<SealedInfo>, Vec<String>)> {
        std::fs::create_dir_all(&paths.root)?;
        let path = paths.root.join(ARCHIVED_LOG);
        let mut notes = Vec::new();
        let mut out = Vec::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mut seen = HashSet::new();
                for (i, l) in text.lines().enumerate() {
                    if l.trim().is_empty() {
                        continue;
                    }
                    match parse_line(l) {
                        Some(s) => {
                            if seen.insert(s.id.clone()) {
                                out.push(s);
                            }
                        }
                        None => notes.push(format!(
                            "{}:{}: damaged line skipped (the replay is checked against the store again if it is still local)",
                            path.display(),
                            i + 1
                        )),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        crate::storage::io::sync_dir(&paths.root)?;
        Ok((
            ArchivedLog {
                file: Mutex::new(file),
            },
            out,
            notes,
        ))
    }

    /// Records one archived replay durably.
    pub fn append(&self, info: &SealedInfo) -> std::io::Result<()> {
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(line(info).as_bytes())?;
        f.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archived_lines_round_trip_and_damage_is_refused() {
        let t = format::Trailer {
            index_offset: 100,
            index_count: 1,
            frame_count: 3,
            last_seq: 3,
            sealed_unix_us: 42,
            ..Default::default()
        };
        let mut b = Vec::new();
        format::encode_trailer(&mut b, &t);
        let s = sealed_info_from_trailer("m1", 500, &b).unwrap();
        let l = line(&s);
        let back = parse_line(l.trim_end()).unwrap();
        assert_eq!(
            (back.id.as_str(), back.len, back.trailer, back.etag.as_str()),
            ("m1", 500, t, s.etag.as_str())
        );
        let mut bad = l.clone();
        bad.replace_range(20..21, if &l[20..21] == "0" { "1" } else { "0" });
        assert!(
            parse_line(bad.trim_end()).is_none(),
            "a changed trailer digit fails its CRC"
        );
        assert!(parse_line("m1 500").is_none());
    }
}

//! File operations for match files with std I/O (the blocking backend, start-up recovery
//! and sealing). The io_uring backend executes [`super::WriteReq`]s on its ring instead and
//! calls the same recovery at start-up.

use super::format::{self, ScanOutcome, Trailer};
use super::{Durability, StoreOptions, StorePaths};
use crate::sys::fs as sysfs;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Opens a match file for appending with the options' open flags (O_DIRECT, O_DSYNC).
/// `create`: a new match (fails if the file exists), preallocated per the options.
pub fn open_for_append(path: &Path, create: bool, opts: &StoreOptions) -> io::Result<OwnedFd> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    if create {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(named)?;
    }
    let flags = sysfs::OpenFlags {
        read: true,
        write: true,
        create: false,
        truncate: false,
        direct: opts.direct,
        dsync: opts.durability == Durability::Odsync,
    };
    let fd = sysfs::open(path, flags).map_err(|e| {
        if e.raw_os_error() == Some(libc::EINVAL) && opts.direct {
            io::Error::new(
                e.kind(),
                format!(
                    "{}: O_DIRECT refused by the file system ({e}); set direct=off or optional",
                    path.display()
                ),
            )
        } else {
            named(e)
        }
    })?;
    if create && opts.prealloc_bytes > 0 {
        sysfs::fallocate(&fd, libc::FALLOC_FL_KEEP_SIZE, 0, opts.prealloc_bytes).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{}: fallocate of {} bytes failed: {e}",
                    path.display(),
                    opts.prealloc_bytes
                ),
            )
        })?;
    }
    Ok(fd)
}

/// Executes one write request: pwrite, or pwritev2 with the options' RWF_* flags. Pass
/// `StoreOptions::rw_flags()`; `vectored` (write-op=writev) always uses pwritev2.
pub fn write_req(
    fd: &OwnedFd,
    req: &super::WriteReq,
    rw_flags: i32,
    vectored: bool,
) -> io::Result<()> {
    pwrite_all(fd, req.bytes(), req.offset, rw_flags, vectored)
}

/// Executes a write of the journal layout's replay files, whose descriptors are opened
/// buffered: an O_DIRECT request (a bulk match's, `StoreOptions::bulk_direct_bytes`) first
/// turns O_DIRECT on for its descriptor.
pub fn write_replay_req(
    fd: &OwnedFd,
    req: &super::WriteReq,
    rw_flags: i32,
    vectored: bool,
) -> io::Result<()> {
    if req.direct {
        set_direct(fd)?;
    }
    write_req(fd, req, rw_flags, vectored)
}

/// Turns O_DIRECT on for a replay file opened buffered (a bulk match of the journal
/// layout); a no-op when it is on.
pub fn set_direct(fd: &OwnedFd) -> io::Result<()> {
    sysfs::set_direct(fd)
}

/// Writes all of `b` at `off`: pwrite, or pwritev2 with `rw_flags` (RWF_*) or when
/// `vectored`; retries short writes and EINTR.
pub fn pwrite_all(
    fd: &OwnedFd,
    mut b: &[u8],
    mut off: u64,
    rw_flags: i32,
    vectored: bool,
) -> io::Result<()> {
    while !b.is_empty() {
        let n = if rw_flags != 0 || vectored {
            sysfs::pwritev2(fd, &[b], off, rw_flags)
        } else {
            sysfs::pwrite(fd, b, off)
        };
        match n {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "pwrite wrote 0 bytes",
                ))
            }
            Ok(n) => {
                b = &b[n..];
                off += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// fdatasync of a match file.
pub fn sync(fd: &OwnedFd) -> io::Result<()> {
    sysfs::fdatasync(fd)
}

/// fsync of a directory (after create/rename so the name is durable).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Trims O_DIRECT padding, makes the sealed file durable, renames it to its final name and
/// syncs both directories. `file` is the append handle.
pub fn finish_seal(paths: &StorePaths, id: &str, fd: &OwnedFd, sealed_len: u64) -> io::Result<()> {
    sysfs::truncate(fd, sealed_len)?;
    sysfs::fdatasync(fd)?;
    let part = paths.part_path(id);
    let fin = paths.sealed_path(id);
    std::fs::rename(&part, &fin)?;
    sync_dir(&paths.root)?;
    sync_dir(&paths.live_dir())?;
    Ok(())
}

/// A sealed replay found in the store.
#[derive(Clone, Debug)]
pub struct SealedInfo {
    pub id: String,
    pub len: u64,
    pub trailer: Trailer,
    pub etag: String,
}

/// Reads the trailer of a sealed replay.
pub fn read_sealed_info(path: &Path, id: &str) -> Result<SealedInfo, String> {
    let mut f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if len < (format::HEADER_BYTES + format::TRAILER_BYTES) as u64 {
        return Err(format!(
            "{}: {len} bytes is too short for a sealed replay",
            path.display()
        ));
    }
    let mut hdr = [0u8; format::HEADER_BYTES];
    f.read_exact(&mut hdr).map_err(|e| e.to_string())?;
    let mut t = [0u8; format::TRAILER_BYTES];
    f.seek(SeekFrom::Start(len - t.len() as u64))
        .map_err(|e| e.to_string())?;
    f.read_exact(&mut t).map_err(|e| e.to_string())?;
    sealed_info_from(id, len, &hdr, &t).map_err(|e| format!("{}: {e}", path.display()))
}

/// What the registry lists for a sealed replay of `len` bytes, from its header and trailer
/// bytes (however they were read: std calls here, the ring in `file-ops=ring`).
pub fn sealed_info_from(
    id: &str,
    len: u64,
    header: &[u8],
    trailer: &[u8],
) -> Result<SealedInfo, String> {
    if len < (format::HEADER_BYTES + format::TRAILER_BYTES) as u64 {
        return Err(format!("{len} bytes is too short for a sealed replay"));
    }
    let h = format::parse_header(header).map_err(|e| e.to_string())?;
    if h.match_id != id {
        return Err(format!("header names match {:?}", h.match_id));
    }
    let trailer = &trailer[..format::TRAILER_BYTES.min(trailer.len())];
    let t = format::parse_trailer(trailer, len - format::TRAILER_BYTES as u64)
        .map_err(|e| e.to_string())?;
    let crc = u32::from_le_bytes(trailer[88..92].try_into().expect("4 bytes"));
    Ok(SealedInfo {
        id: id.to_string(),
        len,
        trailer: t,
        etag: super::etag_for(len, crc),
    })
}

/// What start-up recovery found.
#[derive(Debug, Default)]
pub struct RecoveredStore {
    /// In-progress matches: id, scan (after cutting), bytes of the partial tail block.
    pub live: Vec<(String, ScanOutcome, Vec<u8>)>,
    pub sealed: Vec<SealedInfo>,
    /// One line per action taken or problem found (cut tails, removed empty files, ...).
    pub notes: Vec<String>,
}

/// Prepares the store directory and recovers every in-progress match: each
/// `live/<id>.rpl.part` is scanned, a torn or corrupt tail is cut at the last whole record
/// (truncate + fdatasync), and the match is listed as resumable. A part file without a
/// valid header never held an acknowledged frame (the header goes out with the first write,
/// before any ACK) and is removed. Files that are not ours are left alone and noted.
pub fn recover_store(
    paths: &StorePaths,
    opts: &StoreOptions,
    max_payload: u32,
) -> io::Result<RecoveredStore> {
    std::fs::create_dir_all(paths.live_dir())?;
    let mut out = RecoveredStore::default();
    for ent in std::fs::read_dir(paths.live_dir())? {
        let ent = ent?;
        let name = ent.file_name().to_string_lossy().to_string();
        let Some(id) = StorePaths::id_from_name(&name, ".rpl.part") else {
            out.notes
                .push(format!("live/{name}: not a match file, ignored"));
            continue;
        };
        let path = ent.path();
        if paths.sealed_path(&id).exists() {
            out.notes.push(format!("live/{name}: match {id} is already sealed; in-progress file left in place, not resumable"));
            continue;
        }
        let f = File::open(&path)?;
        let scan = format::scan(io::BufReader::with_capacity(1 << 20, f), &id, max_payload)?;
        let scan = match scan {
            Ok(s) => s,
            Err(e) => {
                std::fs::remove_file(&path)?;
                out.notes.push(format!(
                    "live/{name}: {e}; it held no acknowledged frame, removed"
                ));
                continue;
            }
        };
        if scan.file_len > scan.valid_end {
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(scan.valid_end)?;
            f.sync_data()?;
            out.notes.push(format!(
                "live/{name}: cut {} bytes after frame {} ({})",
                scan.file_len - scan.valid_end,
                scan.last_seq,
                scan.stop_reason.as_deref().unwrap_or("padding")
            ));
        }
        let mut tail = Vec::new();
        if opts.direct {
            let base = super::align_down(scan.valid_end, opts.align as u64);
            tail.resize((scan.valid_end - base) as usize, 0);
            File::open(&path)?.read_exact_at(&mut tail, base)?;
        }
        out.live.push((id, scan, tail));
    }
    sync_dir(&paths.live_dir())?;
    for ent in std::fs::read_dir(&paths.root)? {
        let ent = ent?;
        let name = ent.file_name().to_string_lossy().to_string();
        if ent.file_type()?.is_dir() {
            continue;
        }
        let Some(id) = StorePaths::id_from_name(&name, ".rpl") else {
            if name == super::EXPIRED_LOG || name == crate::tier::log::ARCHIVED_LOG {
                continue; // the retention log (Registry::load_expired), the tier's log
            }
            out.notes.push(format!("{name}: not a replay, ignored"));
            continue;
        };
        match read_sealed_info(&ent.path(), &id) {
            Ok(i) => out.sealed.push(i),
            Err(e) => out.notes.push(format!("{e}; not served")),
        }
    }
    out.live.sort_by(|a, b| a.0.cmp(&b.0));
    out.sealed.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Executes `server::session::Io::Open`: creates a new match file (and makes its name
/// durable) or opens an existing one; with `rescan`, re-reads the file, cuts a torn tail
/// and returns a fresh append state.
pub fn open_match(
    paths: &StorePaths,
    id: &str,
    create: bool,
    rescan: bool,
    opts: &StoreOptions,
    max_payload: u32,
) -> io::Result<(OwnedFd, Option<super::MatchFile>)> {
    let path = paths.part_path(id);
    if create {
        std::fs::create_dir_all(paths.live_dir())?;
        let f = open_for_append(&path, true, opts)?;
        sync_dir(&paths.live_dir())?;
        return Ok((f, None));
    }
    let mut state = None;
    if rescan {
        let r = File::open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        if r.metadata()?.len() < format::HEADER_BYTES as u64 {
            // Created but never written (its first write failed, e.g. the disk was
            // full): the header goes out with the first frames, before any ACK, so it
            // holds no acknowledged frame. Start it again as a new match.
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(0)?;
            f.sync_data()?;
            let fresh = super::MatchFile::create(id, super::now_unix_us(), opts.clone());
            return Ok((open_for_append(&path, false, opts)?, Some(fresh)));
        }
        let scan = format::scan(io::BufReader::with_capacity(1 << 20, r), id, max_payload)?
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let f = OpenOptions::new().write(true).open(&path)?;
        if scan.file_len > scan.valid_end {
            f.set_len(scan.valid_end)?;
        }
        f.sync_data()?;
        let mut tail = Vec::new();
        if opts.direct {
            let base = super::align_down(scan.valid_end, opts.align as u64);
            tail.resize((scan.valid_end - base) as usize, 0);
            File::open(&path)?.read_exact_at(&mut tail, base)?;
        }
        state = Some(super::MatchFile::resume(id, &scan, &tail, opts.clone()));
    }
    Ok((open_for_append(&path, false, opts)?, state))
}

/// Executes `server::session::Io::FinishSeal` and reads back what was sealed.
pub fn seal_match(
    paths: &StorePaths,
    id: &str,
    file: &OwnedFd,
    len: u64,
) -> io::Result<SealedInfo> {
    finish_seal(paths, id, file, len)?;
    read_sealed_info(&paths.sealed_path(id), id)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

//! Journal files with std I/O: start-up recovery (every journal's records since its last
//! checkpoint written into the replay files), preparing the journals of a run (created
//! zero-written once, then reused), and the blocking write of one journal write.
//! The io_uring backend writes its journal through its ring instead.

use super::journal::{self, Journal, JournalOptions, JournalWrite};
use super::{AlignedBuf, Durability, StorePaths};
use crate::sys::fs as sysfs;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How journal writes are made durable (from `file.direct` and `file.durability`).
#[derive(Clone, Copy, Debug)]
pub struct JournalIo {
    pub direct: bool,
    pub durability: Durability,
}

impl JournalIo {
    /// RWF_* flags for each journal write.
    pub fn rw_flags(&self) -> i32 {
        if self.durability == Durability::RwfDsync {
            sysfs::RWF_DSYNC
        } else {
            0
        }
    }
    /// True when a write must be followed by an fdatasync.
    pub fn needs_fdatasync(&self) -> bool {
        self.durability == Durability::Fdatasync
    }
}

/// One journal of this run: its file (open for its writes) and its state.
pub struct JournalFile {
    pub path: PathBuf,
    pub fd: OwnedFd,
    pub journal: Journal,
    pub io: JournalIo,
}

/// What recovery found in one journal file.
#[derive(Debug, Clone)]
pub struct RecoveredJournal {
    pub path: PathBuf,
    pub len: u64,
    pub ckpt_no: u64,
    pub end_lsn: u64,
    pub align: u64,
}

fn named(path: &Path) -> impl Fn(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Journal files in the store (`journal/*.wal`), sorted.
pub fn journal_files(paths: &StorePaths) -> io::Result<Vec<PathBuf>> {
    let dir = paths.journal_dir();
    let mut v = Vec::new();
    match std::fs::read_dir(&dir) {
        Ok(rd) => {
            for e in rd {
                let p = e?.path();
                if p.extension().is_some_and(|x| x == "wal") {
                    v.push(p);
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(named(&dir)(e)),
    }
    v.sort();
    Ok(v)
}

/// Replays every journal of the store into the replay files: each record since the newest
/// checkpoint is written at its offset of `live/<id>.rpl.part` (records of matches sealed
/// since are skipped: a sealed replay was made durable whole), then every touched replay
/// file is fdatasynced. Run before the live-file scan (`recover_store`), which then cuts
/// what follows the last whole frame. Returns what it did, per journal, for the log.
pub fn recover_journals(
    paths: &StorePaths,
    max_payload: u32,
) -> io::Result<(Vec<RecoveredJournal>, Vec<String>)> {
    let mut notes = Vec::new();
    let mut found = Vec::new();
    let max_data = journal::MAX_RECORD_DATA.max(max_payload as usize);
    for path in journal_files(paths)? {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(named(&path))?;
        let s = journal::scan(&bytes, max_data);
        for n in &s.notes {
            notes.push(format!("journal/{name}: {n}"));
        }
        let Some(slot) = s.slot else { continue };
        let mut files: HashMap<String, Option<File>> = HashMap::new();
        let (mut replayed, mut skipped_sealed, mut missing, mut data_bytes) = (0u64, 0, 0, 0u64);
        for r in &s.records {
            let f = files.entry(r.match_id.clone()).or_insert_with(|| {
                OpenOptions::new()
                    .write(true)
                    .open(paths.part_path(&r.match_id))
                    .ok()
            });
            let Some(f) = f else {
                if paths.sealed_path(&r.match_id).exists() {
                    skipped_sealed += 1;
                } else {
                    missing += 1;
                }
                continue;
            };
            f.write_all_at(&bytes[r.data.clone()], r.offset)
                .map_err(named(&paths.part_path(&r.match_id)))?;
            replayed += 1;
            data_bytes += r.data.len() as u64;
        }
        let touched = files.values().filter(|f| f.is_some()).count();
        for (id, f) in &files {
            if let Some(f) = f {
                f.sync_data().map_err(named(&paths.part_path(id)))?;
            }
        }
        notes.push(format!(
            "journal/{name}: checkpoint {} (redo LSN {}): replayed {replayed} records ({data_bytes} bytes) into {touched} replay files{}{}",
            slot.ckpt_no,
            slot.redo,
            if skipped_sealed > 0 { format!(", {skipped_sealed} records of matches sealed since skipped") } else { String::new() },
            if missing > 0 { format!(", {missing} records of matches whose file is gone skipped") } else { String::new() },
        ));
        found.push(RecoveredJournal {
            path: path.clone(),
            len: bytes.len() as u64,
            ckpt_no: slot.ckpt_no,
            end_lsn: s.end_lsn,
            align: slot.align as u64,
        });
    }
    Ok((found, notes))
}

/// `STORE/journal/w<N>.wal`.
pub fn journal_path(paths: &StorePaths, n: usize) -> PathBuf {
    paths.journal_dir().join(format!("w{n}.wal"))
}

/// Prepares `count` journals for this run, after [`recover_journals`]: a journal that is
/// missing, or of another size or alignment, is created and zero-written whole (written
/// extents, so later O_DIRECT overwrites need no metadata commit); an existing one gets a
/// new checkpoint naming the lap after its last record, so nothing already replayed is
/// replayed again. Journals numbered `count` and up are removed (their records were
/// replayed above). Returns the journals and notes.
pub fn open_journals(
    paths: &StorePaths,
    count: usize,
    opts: &JournalOptions,
    jio: JournalIo,
    recovered: &[RecoveredJournal],
    now: Instant,
) -> io::Result<(Vec<JournalFile>, Vec<String>)> {
    let dir = paths.journal_dir();
    std::fs::create_dir_all(&dir).map_err(named(&dir))?;
    let mut notes = Vec::new();
    let mut out = Vec::new();
    let a = opts.align as u64;
    for n in 0..count {
        let path = journal_path(paths, n);
        let prev = recovered.iter().find(|r| r.path == path);
        let reuse = prev.filter(|r| r.len == opts.bytes && r.align == a);
        let (start, ckpt_no) = match reuse {
            Some(r) => (
                journal::restart_lsn(r.end_lsn, opts.capacity()),
                r.ckpt_no + 1,
            ),
            None => {
                create_zeroed(&path, opts.bytes)?;
                notes.push(format!(
                    "journal/w{n}.wal: created, {} bytes written once (zeros)",
                    opts.bytes
                ));
                (0, 1)
            }
        };
        let flags = sysfs::OpenFlags {
            read: true,
            write: true,
            create: false,
            truncate: false,
            direct: jio.direct,
            dsync: jio.durability == Durability::Odsync,
        };
        let fd = sysfs::open(&path, flags).map_err(named(&path))?;
        let mut b = AlignedBuf::with_capacity(opts.align, opts.align);
        b.extend(&journal::slot_block(ckpt_no, start, opts.bytes, opts.align));
        write_all_at(&fd, b.as_slice(), (ckpt_no % 2) * a, 0)?;
        sysfs::fdatasync(&fd).map_err(named(&path))?;
        out.push(JournalFile {
            path,
            fd,
            journal: Journal::new(opts.clone(), start, ckpt_no, now),
            io: jio,
        });
    }
    for p in journal_files(paths)? {
        if !out.iter().any(|j| j.path == p) {
            std::fs::remove_file(&p).map_err(named(&p))?;
            notes.push(format!(
                "{}: removed (this run has {count} journals; its records were replayed)",
                p.display()
            ));
        }
    }
    super::io::sync_dir(&dir).map_err(named(&dir))?;
    Ok((out, notes))
}

/// Creates (or re-creates) a journal file of `len` bytes, every block written with zeros
/// and fdatasynced.
fn create_zeroed(path: &Path, len: u64) -> io::Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(named(path))?;
    let zeros = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], off).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{}: writing the {len}-byte journal failed at byte {off}: {e} (free space, or lower server.journal-bytes)",
                    path.display()
                ),
            )
        })?;
        off += n as u64;
    }
    f.sync_all().map_err(named(path))
}

fn write_all_at(fd: &OwnedFd, b: &[u8], off: u64, rw_flags: i32) -> io::Result<()> {
    super::io::pwrite_all(fd, b, off, rw_flags, false)
}

/// Executes one journal write with std calls (the blocking backend's WAL writer): the
/// bytes at their offset, durable per the journal's durability.
pub fn write(fd: &OwnedFd, jio: JournalIo, w: &JournalWrite, bytes: &[u8]) -> io::Result<()> {
    write_all_at(fd, &bytes[..w.len], w.offset, jio.rw_flags())?;
    if jio.needs_fdatasync() {
        sysfs::fdatasync(fd)?;
    }
    Ok(())
}

/// Makes every replay file of the store durable for a checkpoint. First the data of `live`
/// (the live matches' replay files) is written back one file at a time
/// (`sync_file_range` WAIT_BEFORE | WRITE | WAIT_AFTER: no metadata, no cache flush), so the
/// device never holds a whole interval's writeback at once in front of the journals'
/// flushes; with a non-zero `spread` the files are started evenly over that long (file i
/// of n not before `spread * i / n`), so every journal flush in the meantime carries only
/// a slice of the writeback; a file that is gone (sealed and renamed meanwhile: made
/// durable at its seal) is skipped. Then one syncfs of the store's file system writes what
/// is left (metadata, files closed meanwhile, files `live` does not name) and flushes the
/// cache once (one journal commit for all files, where an fdatasync per file would commit
/// and flush once per file). Correctness rests on the syncfs alone: `live` only shapes
/// when the data goes out. Once `hurry` is set (a journal filled up meanwhile and needs
/// the space), the rest goes back to back.
pub fn sync_store(
    root: &Path,
    live: &[PathBuf],
    spread: Duration,
    hurry: &AtomicBool,
) -> io::Result<()> {
    let start = Instant::now();
    let n = live.len().max(1) as u32;
    for (i, p) in live.iter().enumerate() {
        // Sleep only when at least a millisecond ahead (fewer, longer sleeps), at most
        // 10 ms at a time so that `hurry` is seen soon.
        let at = start + spread * i as u32 / n;
        loop {
            let now = Instant::now();
            if at < now + Duration::from_millis(1) || hurry.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep((at - now).min(Duration::from_millis(10)));
        }
        let f = match File::open(p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(named(p)(e)),
        };
        sysfs::sync_file_range_all(
            &f,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        )
        .map_err(named(p))?;
    }
    let d = File::open(root).map_err(named(root))?;
    sysfs::syncfs(&d).map_err(named(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_store_spreads_the_writeback_and_skips_files_gone_meanwhile() {
        let dir = std::env::temp_dir().join(format!("sync-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut live: Vec<PathBuf> = (0..4)
            .map(|i| {
                let p = dir.join(format!("m{i}.rpl.part"));
                std::fs::write(&p, vec![i as u8; 64 << 10]).unwrap();
                p
            })
            .collect();
        // a file that is not there (sealed meanwhile) is skipped
        live.insert(1, dir.join("sealed-meanwhile.rpl.part"));
        // five files over 200 ms: the last starts 160 ms in
        let calm = AtomicBool::new(false);
        let t = Instant::now();
        sync_store(&dir, &live, Duration::from_millis(200), &calm).unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(160),
            "{:?}",
            t.elapsed()
        );
        // in a hurry (a journal filled up): back to back even over a whole minute's spread
        let t = Instant::now();
        sync_store(&dir, &live, Duration::from_secs(60), &AtomicBool::new(true)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
        // a store that is gone is an error naming it
        let gone = dir.join("no-such-store");
        let e = sync_store(&gone, &[], Duration::ZERO, &calm).unwrap_err();
        assert!(e.to_string().contains("no-such-store"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

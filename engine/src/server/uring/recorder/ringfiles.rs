//! `file.file-ops = ring`: a new match file is created and a finished one sealed with the
//! worker's ring instead of the storage helper threads. Create: IORING_OP_OPENAT
//! (O_CREAT|O_EXCL, with the store's O_DIRECT/O_DSYNC; straight into the registered-file
//! table with file.register-files) then FSYNC of the live directory so the name is
//! durable. Seal: FTRUNCATE to the sealed length, FSYNC(DATASYNC), RENAMEAT to the final
//! name, FSYNC of both directories, then READ of the header and trailer back into an
//! arena slot to build what the registry lists (as `storage::io::seal_match` does with std
//! calls). Resumes that must re-read a file still go to the storage threads (their scan
//! is a parser over a stream).

use super::*;
use crate::server::uring::Opened;

/// Where a ring-driven open or seal of one match is.
pub(super) enum RingJob {
    /// OPENAT of the new part file.
    Create,
    /// FSYNC of the live directory after the create; `st` waits for `open_done`.
    CreateSyncDir,
    /// The seal waits for an arena slot (for reading the header and trailer back).
    SealWaitSlot {
        len: u64,
    },
    Truncate {
        len: u64,
        slot: Slot,
    },
    SyncFile {
        len: u64,
        slot: Slot,
    },
    Rename {
        len: u64,
        slot: Slot,
    },
    SyncRoot {
        len: u64,
        slot: Slot,
    },
    SyncLive {
        len: u64,
        slot: Slot,
    },
    ReadHeader {
        len: u64,
    },
    ReadTrailer {
        len: u64,
        header: Vec<u8>,
    },
}

/// The store's directories, open for FSYNC (once per worker).
pub(super) struct Dirs {
    pub(super) root: OwnedFd,
    pub(super) live: OwnedFd,
}

pub(super) fn open_dirs(reg: &Registry) -> io::Result<Dirs> {
    let open = |p: &std::path::Path| -> io::Result<OwnedFd> {
        Ok(File::open(p)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?
            .into())
    };
    Ok(Dirs {
        root: open(&reg.paths.root)?,
        live: open(&reg.paths.live_dir())?,
    })
}

fn named(what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} (file-ops=ring): {e}"))
}

/// Starts the in-ring create of a new match's part file.
pub(super) fn create(
    ds: &mut Ds,
    id: ConnId,
    reg: &Registry,
    options: &storage::StoreOptions,
    io: &mut Io,
) {
    let mut flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
    if options.direct {
        flags |= libc::O_DIRECT;
    }
    if options.durability == storage::Durability::Odsync {
        flags |= libc::O_DSYNC;
    }
    let direct = io.files_registered();
    io.openat(
        &reg.paths.part_path(ds.sess.match_id()),
        flags,
        0o644,
        direct,
        id.0,
    );
    ds.pending = Pending::Ring(RingJob::Create);
}

/// Starts the in-ring seal (or waits for a slot to read the result back with).
pub(super) fn seal(ds: &mut Ds, len: u64, id: ConnId, io: &mut Io, queued: &mut Vec<ConnId>) {
    let Some(slot) = io.alloc_slot() else {
        ds.pending = Pending::Ring(RingJob::SealWaitSlot { len });
        if !ds.waiting {
            ds.waiting = true;
            queued.push(id);
        }
        return;
    };
    let Some(f) = ds.fref else {
        ds.pending = Pending::None;
        return ds
            .sess
            .seal_done(Err(io::Error::other("match file is not open")));
    };
    io.ftruncate(f, len, id.0);
    ds.pending = Pending::Ring(RingJob::Truncate { len, slot });
}

/// The create's OPENAT completed: the file is a slot of the table or an fd.
pub(super) fn created(
    ds: &mut Ds,
    res: io::Result<Opened>,
    id: ConnId,
    reg: &Registry,
    dirs: &Dirs,
    io: &mut Io,
) {
    match res {
        Ok(Opened::Slot(r)) => ds.fref = Some(r),
        Ok(Opened::Fd(f)) => {
            ds.fref = Some(FileRef::Fd(f.as_raw_fd()));
            ds.file = Some(f);
        }
        Err(e) => {
            ds.pending = Pending::None;
            let p = reg.paths.part_path(ds.sess.match_id());
            return ds
                .sess
                .open_done(Err(named(&format!("creating {}", p.display()), e)));
        }
    }
    io.fsync(dirs.live.as_raw_fd(), false, id.0);
    ds.pending = Pending::Ring(RingJob::CreateSyncDir);
}

/// One step of a ring job completed with `res` (and the slot of a read): issue the next.
/// `align` is the store's O_DIRECT alignment (1 for buffered files).
#[allow(clippy::too_many_arguments)]
pub(super) fn step(
    ds: &mut Ds,
    job: RingJob,
    res: io::Result<u32>,
    buf: Option<Slot>,
    id: ConnId,
    reg: &Registry,
    dirs: &Dirs,
    align: u64,
    io: &mut Io,
) {
    let mid = ds.sess.match_id().to_string();
    let paths = &reg.paths;
    let fail_seal = |ds: &mut Ds, what: &str, e: io::Error| {
        ds.pending = Pending::None;
        ds.sess.seal_done(Err(named(what, e)));
    };
    match job {
        RingJob::Create => {
            // Completes through `created` (Service::file_opened), not here.
            let _ = (res, buf);
            ds.pending = Pending::Ring(RingJob::Create);
        }
        RingJob::CreateSyncDir => {
            ds.pending = Pending::None;
            match res {
                Ok(_) => {
                    if ds.prealloc > 0 {
                        let n = std::mem::take(&mut ds.prealloc);
                        let f = ds.fref.expect("just opened");
                        io.fallocate(f, io.prealloc_mode(), 0, n, id.0);
                        ds.pending = Pending::Prealloc {
                            st: None,
                            _hold: None,
                        };
                    } else {
                        ds.sess.open_done(Ok(None));
                    }
                }
                Err(e) => ds
                    .sess
                    .open_done(Err(named("fsync of the live directory", e))),
            }
        }
        RingJob::SealWaitSlot { len } => {
            // Not a completion: retried when a slot came back (see `drive_inner`).
            let mut q = Vec::new();
            seal(ds, len, id, io, &mut q);
        }
        RingJob::Truncate { len, slot } => match res {
            Ok(_) => {
                io.fsync(ds.fref.expect("open"), true, id.0);
                ds.pending = Pending::Ring(RingJob::SyncFile { len, slot });
            }
            Err(e) => fail_seal(ds, "IORING_OP_FTRUNCATE of the sealed file", e),
        },
        RingJob::SyncFile { len, slot } => match res {
            Ok(_) => {
                io.rename(&paths.part_path(&mid), &paths.sealed_path(&mid), id.0);
                ds.pending = Pending::Ring(RingJob::Rename { len, slot });
            }
            Err(e) => fail_seal(ds, "fdatasync of the sealed file", e),
        },
        RingJob::Rename { len, slot } => match res {
            Ok(_) => {
                io.fsync(dirs.root.as_raw_fd(), false, id.0);
                ds.pending = Pending::Ring(RingJob::SyncRoot { len, slot });
            }
            Err(e) => fail_seal(ds, "IORING_OP_RENAMEAT to the sealed name", e),
        },
        RingJob::SyncRoot { len, slot } => match res {
            Ok(_) => {
                io.fsync(dirs.live.as_raw_fd(), false, id.0);
                ds.pending = Pending::Ring(RingJob::SyncLive { len, slot });
            }
            Err(e) => fail_seal(ds, "fsync of the store directory", e),
        },
        RingJob::SyncLive { len, mut slot } => match res {
            Ok(_) => {
                // O_DIRECT reads take whole aligned blocks: read the first one.
                let n = (crate::storage::format::HEADER_BYTES as u64).next_multiple_of(align.max(1))
                    as usize;
                slot.set_len(n);
                io.read(ds.fref.expect("open"), slot, n, 0, id.0);
                ds.pending = Pending::Ring(RingJob::ReadHeader { len });
            }
            Err(e) => fail_seal(ds, "fsync of the live directory", e),
        },
        RingJob::ReadHeader { len } => {
            let Some(mut slot) = buf else {
                return fail_seal(ds, "reading the header back", io::Error::other("no buffer"));
            };
            match res {
                Ok(n) if n as usize >= crate::storage::format::HEADER_BYTES => {
                    let header = slot.as_slice()[..crate::storage::format::HEADER_BYTES].to_vec();
                    let t = crate::storage::format::TRAILER_BYTES;
                    // O_DIRECT reads need aligned offsets: read the aligned block(s) that
                    // hold the trailer and cut it out when it comes back.
                    let (off, rl) = aligned_tail(len, t as u64, align);
                    slot.set_len(rl);
                    io.read(ds.fref.expect("open"), slot, rl, off, id.0);
                    ds.pending = Pending::Ring(RingJob::ReadTrailer { len, header });
                }
                Ok(n) => fail_seal(ds, "reading the header back", short(n)),
                Err(e) => fail_seal(ds, "reading the header back", e),
            }
        }
        RingJob::ReadTrailer { len, header } => {
            let Some(slot) = buf else {
                return fail_seal(
                    ds,
                    "reading the trailer back",
                    io::Error::other("no buffer"),
                );
            };
            let t = crate::storage::format::TRAILER_BYTES as u64;
            let (off, _) = aligned_tail(len, t, align);
            match res {
                Ok(n) if n as u64 >= len - off => {
                    let at = (len - t - off) as usize;
                    let trailer = &slot.as_slice()[at..at + t as usize];
                    ds.pending = Pending::None;
                    let r = storage::io::sealed_info_from(&mid, len, &header, trailer)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
                    if let Some(f) = ds.fref.take() {
                        release_ref(f, io);
                    }
                    ds.file = None;
                    ds.sess.seal_done(r);
                }
                Ok(n) => fail_seal(ds, "reading the trailer back", short(n)),
                Err(e) => fail_seal(ds, "reading the trailer back", e),
            }
        }
    }
}

fn short(n: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("short read: {n} bytes"),
    )
}

/// `(offset, length)` of the aligned read that covers the last `t` bytes of a `len`-byte
/// file (alignment 1 for buffered files).
fn aligned_tail(len: u64, t: u64, align: u64) -> (u64, usize) {
    let a = align.max(1);
    let off = crate::storage::align_down(len - t, a);
    let end = crate::storage::align_up(len, a);
    (off, (end - off) as usize)
}

/// Gives a file reference back: a table slot is emptied (a direct descriptor opened by
/// OPENAT is closed with it); an fd is closed by its owner.
fn release_ref(f: FileRef, io: &mut Io) {
    io.unregister_file(f);
}

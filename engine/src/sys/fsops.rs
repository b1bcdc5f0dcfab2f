//! In-ring file management on a [`FileOps`] table: IORING_OP_OPENAT (5.6; straight into
//! the registered-file table with IORING_FILE_INDEX_ALLOC, 5.15/5.19), STATX (5.6),
//! CLOSE (5.6; of a direct descriptor 5.15), FTRUNCATE (6.9), RENAMEAT and UNLINKAT
//! (5.11). Paths and the statx buffer are owned by the in-flight entry until the
//! completion, so callers pass plain `&Path`s. Results come back as [`Completion`]s:
//! `result` is the new fd or table slot for OPENAT, 0 otherwise; `statx` holds the STATX
//! answer.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use io_uring::{opcode, types};

use super::fileops::{FileOps, FileTarget, InFlight, OpError, OpKind, RingOps, Target};
use super::target::on_target;

/// Which in-ring file operation a completion belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaOp {
    /// OPENAT; `direct`: into the registered-file table (the result is the slot).
    Open {
        direct: bool,
    },
    Statx,
    Close,
    Ftruncate,
    Rename,
    Unlink,
}

/// Memory an in-ring file operation lends the kernel until its completion.
pub struct MetaArgs {
    pub(super) path: Option<CString>,
    pub(super) path2: Option<CString>,
    pub(super) statx: Option<Box<libc::statx>>,
}

fn cpath(p: &Path) -> Result<CString, OpError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        OpError::Submit(
            io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"),
            None,
        )
    })
}

impl<R: RingOps> FileOps<R> {
    fn push_meta(
        &mut self,
        op: MetaOp,
        args: MetaArgs,
        build: impl FnOnce(&MetaArgs) -> io_uring::squeue::Entry,
        tag: u64,
    ) -> Result<(), OpError> {
        let mut none = None;
        let idx = self.take_index(&mut none)?;
        let args = Box::new(args);
        // The entry points into `args`' heap memory, which the table keeps until the
        // completion (moving the Box does not move what it points to).
        let sqe = build(&args);
        let mut f = InFlight::new(tag, OpKind::Meta(op));
        f.meta = Some(args);
        self.push(idx, sqe, f)
    }

    /// OPENAT of `path` (relative to the current directory) with `flags` and `mode`.
    /// `direct`: the file goes into a free slot of the registered-file table
    /// (IORING_FILE_INDEX_ALLOC) and the completion's result is that slot, else a new fd
    /// that the caller owns (close it with `OwnedFd::from_raw_fd` or [`FileOps::close`]).
    pub fn openat(
        &mut self,
        path: &Path,
        flags: i32,
        mode: u32,
        direct: bool,
        tag: u64,
    ) -> Result<(), OpError> {
        let args = MetaArgs {
            path: Some(cpath(path)?),
            path2: None,
            statx: None,
        };
        // A direct descriptor has no close-on-exec flag (O_CLOEXEC with a slot: EINVAL).
        let fl = if direct {
            flags & !libc::O_CLOEXEC
        } else {
            flags | libc::O_CLOEXEC
        };
        self.push_meta(
            MetaOp::Open { direct },
            args,
            |a| {
                let mut o = opcode::OpenAt::new(
                    types::Fd(libc::AT_FDCWD),
                    a.path.as_ref().expect("set").as_ptr(),
                )
                .flags(fl)
                .mode(mode);
                if direct {
                    o = o.file_index(Some(types::DestinationSlot::auto_target()));
                }
                o.build()
            },
            tag,
        )
    }

    /// STATX of `path` (or, with `path` empty and `AT_EMPTY_PATH` in `flags`, of `dirfd`).
    pub fn statx(
        &mut self,
        dirfd: i32,
        path: &Path,
        flags: i32,
        mask: u32,
        tag: u64,
    ) -> Result<(), OpError> {
        let args = MetaArgs {
            path: Some(cpath(path)?),
            path2: None,
            // SAFETY: statx is plain data; all-zero is a valid value.
            statx: Some(Box::new(unsafe { std::mem::zeroed() })),
        };
        self.push_meta(
            MetaOp::Statx,
            args,
            |a| {
                let buf: *const libc::statx = &**a.statx.as_ref().expect("set");
                opcode::Statx::new(
                    types::Fd(dirfd),
                    a.path.as_ref().expect("set").as_ptr(),
                    buf as *mut types::statx,
                )
                .flags(flags)
                .mask(mask)
                .build()
            },
            tag,
        )
    }

    /// CLOSE of a descriptor the caller gives up (an fd is consumed by the kernel), or of
    /// a slot of the registered-file table (direct descriptor, 5.15+).
    pub fn close(&mut self, file: impl FileTarget, tag: u64) -> Result<(), OpError> {
        let t = file.target();
        let mut none = None;
        self.check_target(t, &mut none)?;
        let args = MetaArgs {
            path: None,
            path2: None,
            statx: None,
        };
        self.push_meta(
            MetaOp::Close,
            args,
            |_| on_target!(t, f => opcode::Close::new(f).build()),
            tag,
        )
    }

    /// FTRUNCATE (6.9+) to `len` bytes.
    pub fn ftruncate(&mut self, file: impl FileTarget, len: u64, tag: u64) -> Result<(), OpError> {
        let t: Target = file.target();
        let mut none = None;
        self.check_target(t, &mut none)?;
        let args = MetaArgs {
            path: None,
            path2: None,
            statx: None,
        };
        self.push_meta(
            MetaOp::Ftruncate,
            args,
            |_| on_target!(t, f => opcode::Ftruncate::new(f, len).build()),
            tag,
        )
    }

    /// RENAMEAT (5.11+) of `from` to `to` (paths relative to the current directory).
    pub fn renameat(&mut self, from: &Path, to: &Path, tag: u64) -> Result<(), OpError> {
        let args = MetaArgs {
            path: Some(cpath(from)?),
            path2: Some(cpath(to)?),
            statx: None,
        };
        self.push_meta(
            MetaOp::Rename,
            args,
            |a| {
                opcode::RenameAt::new(
                    types::Fd(libc::AT_FDCWD),
                    a.path.as_ref().expect("set").as_ptr(),
                    types::Fd(libc::AT_FDCWD),
                    a.path2.as_ref().expect("set").as_ptr(),
                )
                .build()
            },
            tag,
        )
    }

    /// UNLINKAT (5.11+) of `path`.
    pub fn unlinkat(&mut self, path: &Path, tag: u64) -> Result<(), OpError> {
        let args = MetaArgs {
            path: Some(cpath(path)?),
            path2: None,
            statx: None,
        };
        self.push_meta(
            MetaOp::Unlink,
            args,
            |a| {
                opcode::UnlinkAt::new(
                    types::Fd(libc::AT_FDCWD),
                    a.path.as_ref().expect("set").as_ptr(),
                )
                .build()
            },
            tag,
        )
    }
}

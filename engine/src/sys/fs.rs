//! File syscalls: open with O_DIRECT / O_DSYNC, the O_DIRECT alignment (statx
//! STATX_DIOALIGN, else the device's logical block size), fallocate, fdatasync,
//! positional reads and writes (pwritev2 with RWF_DSYNC / RWF_DONTCACHE for the blocking
//! backend), truncate, file size, and the process CPU times.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `RWF_DSYNC`: per-write O_DSYNC semantics (Linux 4.7+).
pub const RWF_DSYNC: i32 = libc::RWF_DSYNC;
/// `RWF_DONTCACHE`: uncached buffered I/O (Linux 6.14+).
pub const RWF_DONTCACHE: i32 = libc::RWF_DONTCACHE;

/// How to open a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenFlags {
    pub read: bool,
    pub write: bool,
    pub create: bool,
    pub truncate: bool,
    /// O_DIRECT.
    pub direct: bool,
    /// O_DSYNC.
    pub dsync: bool,
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path {} contains a NUL byte", path.display()),
        )
    })
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// open(2) with the given flags (always O_CLOEXEC). Mode 0644 when creating.
pub fn open(path: &Path, f: OpenFlags) -> io::Result<OwnedFd> {
    let mut flags = libc::O_CLOEXEC;
    flags |= match (f.read, f.write) {
        (true, true) => libc::O_RDWR,
        (false, true) => libc::O_WRONLY,
        _ => libc::O_RDONLY,
    };
    if f.create {
        flags |= libc::O_CREAT;
    }
    if f.truncate {
        flags |= libc::O_TRUNC;
    }
    if f.direct {
        flags |= libc::O_DIRECT;
    }
    if f.dsync {
        flags |= libc::O_DSYNC;
    }
    let p = cpath(path)?;
    // SAFETY: `p` is a NUL-terminated path that outlives the call.
    let fd = cvt(unsafe { libc::open(p.as_ptr(), flags, 0o644 as libc::c_uint) })?;
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Where an O_DIRECT alignment came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlignSource {
    /// statx(STATX_DIOALIGN) (Linux 6.1+, filesystems that report it).
    Statx,
    /// The backing block device's logical block size (sysfs).
    LogicalBlockSize,
    /// Neither was available: 4096, the safe choice.
    Assumed,
}

/// O_DIRECT alignment of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DioAlign {
    /// Buffer address alignment.
    pub mem_align: u32,
    /// File offset and length alignment.
    pub offset_align: u32,
    pub source: AlignSource,
}

/// statx of an open fd: (dio mem align, dio offset align) if reported, the device
/// (major, minor), and the size.
fn statx_fd(fd: RawFd, mask: u32) -> io::Result<libc::statx> {
    let empty = c"";
    // SAFETY: statx is plain data; zeroed is a valid value.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `empty` is a valid C string, `st` a valid out-pointer, AT_EMPTY_PATH with an fd.
    cvt(unsafe { libc::statx(fd, empty.as_ptr(), libc::AT_EMPTY_PATH, mask, &mut st) })?;
    Ok(st)
}

/// The O_DIRECT alignment for `fd`: statx(STATX_DIOALIGN) when the filesystem reports
/// it, else the logical block size of the device holding the file, else 4096.
/// A filesystem that reports STATX_DIOALIGN with zeros does not support O_DIRECT on this
/// file: that is an error (EINVAL), not a guess.
pub fn dio_align(fd: &OwnedFd) -> io::Result<DioAlign> {
    let st = statx_fd(fd.as_raw_fd(), libc::STATX_DIOALIGN)?;
    if st.stx_mask & libc::STATX_DIOALIGN != 0 {
        if st.stx_dio_mem_align == 0 || st.stx_dio_offset_align == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the filesystem reports no O_DIRECT support for this file (STATX_DIOALIGN is 0)",
            ));
        }
        return Ok(DioAlign {
            mem_align: st.stx_dio_mem_align,
            offset_align: st.stx_dio_offset_align,
            source: AlignSource::Statx,
        });
    }
    if let Some(lbs) = logical_block_size(st.stx_dev_major, st.stx_dev_minor) {
        return Ok(DioAlign {
            mem_align: lbs,
            offset_align: lbs,
            source: AlignSource::LogicalBlockSize,
        });
    }
    Ok(DioAlign {
        mem_align: 4096,
        offset_align: 4096,
        source: AlignSource::Assumed,
    })
}

/// Logical block size of block device major:minor (a partition looks at its parent).
pub fn logical_block_size(major: u32, minor: u32) -> Option<u32> {
    let base = format!("/sys/dev/block/{major}:{minor}");
    for p in [
        format!("{base}/queue/logical_block_size"),
        format!("{base}/../queue/logical_block_size"),
    ] {
        if let Ok(s) = std::fs::read_to_string(&p) {
            if let Ok(v) = s.trim().parse::<u32>() {
                return Some(v);
            }
        }
    }
    None
}

/// The block device (major, minor) holding the file.
pub fn device_of(fd: &OwnedFd) -> io::Result<(u32, u32)> {
    let st = statx_fd(fd.as_raw_fd(), libc::STATX_BASIC_STATS)?;
    Ok((st.stx_dev_major, st.stx_dev_minor))
}

/// fallocate(2). `mode` 0 allocates and extends the file size.
pub fn fallocate(fd: &OwnedFd, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    cvt(unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    })
    .map(|_| ())
}

/// Turns O_DIRECT on for an open file (fcntl F_SETFL; a no-op when it is on already).
/// The journal layout's replay files are opened buffered; a bulk match's file switches.
pub fn set_direct(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: plain fcntl calls on a valid fd.
    let fl = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    if fl & libc::O_DIRECT == 0 {
        // SAFETY: as above.
        cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_DIRECT) })?;
    }
    Ok(())
}

/// fdatasync(2).
pub fn fdatasync(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    cvt(unsafe { libc::fdatasync(fd.as_raw_fd()) }).map(|_| ())
}

/// fsync(2).
pub fn fsync(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    cvt(unsafe { libc::fsync(fd.as_raw_fd()) }).map(|_| ())
}

/// ftruncate(2).
pub fn truncate(fd: &OwnedFd, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) }).map(|_| ())
}

/// The file's size in bytes.
pub fn file_size(fd: &OwnedFd) -> io::Result<u64> {
    Ok(statx_fd(fd.as_raw_fd(), libc::STATX_SIZE)?.stx_size)
}

/// pwrite(2): one write at `offset`; returns the bytes written (may be short).
pub fn pwrite(fd: &OwnedFd, buf: &[u8], offset: u64) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of its length during the call.
    cvt_size(unsafe {
        libc::pwrite(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            offset as libc::off_t,
        )
    })
}

/// pread(2): one read at `offset`; returns the bytes read (0 at end of file).
pub fn pread(fd: &OwnedFd, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length during the call.
    cvt_size(unsafe {
        libc::pread(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            offset as libc::off_t,
        )
    })
}

/// pwritev2(2) with per-write flags (`RWF_DSYNC`, `RWF_DONTCACHE`).
pub fn pwritev2(fd: &OwnedFd, bufs: &[&[u8]], offset: u64, flags: i32) -> io::Result<usize> {
    let iov: Vec<libc::iovec> = bufs
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: every iovec points into a live slice borrowed for the call.
    cvt_size(unsafe {
        libc::pwritev2(
            fd.as_raw_fd(),
            iov.as_ptr(),
            iov.len() as i32,
            offset as libc::off_t,
            flags,
        )
    })
}

/// preadv2(2) with per-read flags (`RWF_DONTCACHE`).
pub fn preadv2(fd: &OwnedFd, bufs: &mut [&mut [u8]], offset: u64, flags: i32) -> io::Result<usize> {
    let iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: every iovec points into a live, exclusively borrowed slice for the call.
    cvt_size(unsafe {
        libc::preadv2(
            fd.as_raw_fd(),
            iov.as_ptr(),
            iov.len() as i32,
            offset as libc::off_t,
            flags,
        )
    })
}

/// posix_fadvise(POSIX_FADV_DONTNEED) over the whole file: drops its clean cached pages
/// (what fio's `invalidate=1` does before a job).
pub fn fadvise_dontneed(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    let r = unsafe { libc::posix_fadvise(fd.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// User and system CPU seconds of the whole process (all threads, including io_uring's
/// SQPOLL and io-wq threads, which belong to it), from getrusage(RUSAGE_SELF).
pub fn cpu_times() -> (f64, f64) {
    // SAFETY: zeroed rusage is valid plain data.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `r` is a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (t(r.ru_utime), t(r.ru_stime))
}

/// CPU nanoseconds the calling thread has used (user + system), from
/// clock_gettime(CLOCK_THREAD_CPUTIME_ID); 0 if the clock cannot be read.
pub fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid out-pointer for one timespec.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    if r != 0 {
        return 0;
    }
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// User and system CPU seconds of all waited-for children (getrusage(RUSAGE_CHILDREN)):
/// the delta around running a child counts every thread of it, io-wq and SQPOLL included.
pub fn children_cpu_times() -> (f64, f64) {
    // SAFETY: zeroed rusage is valid plain data.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `r` is a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut r) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (t(r.ru_utime), t(r.ru_stime))
}

/// The `kernel.io_uring_disabled` sysctl (0 allowed, 1 only for a group, 2 disabled),
/// or `None` when the kernel has no such sysctl.
pub fn io_uring_disabled() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Free and total bytes of the file system holding `path` (statvfs: f_bavail and
/// f_blocks, in f_frsize units), for the tier's "local disk filling" check.
pub fn fs_space(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated path; `st` is written by the kernel.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let unit = st.f_frsize as u64;
    Ok((st.f_bavail as u64 * unit, st.f_blocks as u64 * unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_sync_size() {
        let dir = std::env::temp_dir().join(format!("fs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        let fd = open(
            &p,
            OpenFlags {
                read: true,
                write: true,
                create: true,
                truncate: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            pwritev2(&fd, &[b"hello ", b"world"], 10, RWF_DSYNC).unwrap(),
            11
        );
        fdatasync(&fd).unwrap();
        assert_eq!(file_size(&fd).unwrap(), 21);
        let mut b = [0u8; 11];
        assert_eq!(pread(&fd, &mut b, 10).unwrap(), 11);
        assert_eq!(&b, b"hello world");
        fallocate(&fd, 0, 0, 1 << 20).unwrap();
        assert_eq!(file_size(&fd).unwrap(), 1 << 20);
        truncate(&fd, 5).unwrap();
        assert_eq!(file_size(&fd).unwrap(), 5);
        let a = dio_align(&fd).unwrap();
        assert!(
            a.mem_align.is_power_of_two() && a.offset_align.is_power_of_two(),
            "{a:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// syncfs(2): writes back every dirty file of the file system that holds `fd` and commits
/// its journal once (the recorder's journal checkpoints).
pub fn syncfs(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    cvt(unsafe { libc::syncfs(fd.as_raw_fd()) }).map(|_| ())
}

/// sync_file_range(2) over the whole file with `flags` (SYNC_FILE_RANGE_*): starts and/or
/// waits for the writeback of its dirty pages; writes no metadata and flushes no cache.
pub fn sync_file_range_all(fd: &impl AsRawFd, flags: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd; offset 0, nbytes 0 = to the end of the file.
    cvt(unsafe { libc::sync_file_range(fd.as_raw_fd(), 0, 0, flags) }).map(|_| ())
}

/// FALLOC_FL_WRITE_ZEROES (Linux 6.17): allocate written, zeroed extents.
pub const FALLOC_FL_WRITE_ZEROES: i32 = 0x80;

/// sendfile(2) from `file` at `*offset` to `sock`: returns the bytes sent (0 at end of
/// file) and advances `*offset` by them. On a non-blocking socket with a full send buffer
/// it fails with `WouldBlock`.
pub fn sendfile(
    sock: &impl AsRawFd,
    file: &impl AsRawFd,
    offset: &mut u64,
    count: usize,
) -> io::Result<usize> {
    let mut off = *offset as libc::off_t;
    // SAFETY: plain syscall on two valid fds; `off` is valid for reads and writes.
    let n =
        cvt_size(unsafe { libc::sendfile(sock.as_raw_fd(), file.as_raw_fd(), &mut off, count) })?;
    *offset = off as u64;
    Ok(n)
}

/// Waits until `sock` is writable (or has an error) for at most `timeout`; Ok(false) when
/// the time ran out.
pub fn wait_writable(sock: &impl AsRawFd, timeout: std::time::Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    loop {
        // SAFETY: `p` is one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r >= 0 {
            return Ok(r > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

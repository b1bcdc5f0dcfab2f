//! io_uring_register operations of the engine's ring: buffers, files (dense, sparse,
//! updates, the allocation range for direct descriptors), ring fds, io-wq limits and
//! affinity, the opcode probe, provided-buffer rings, NAPI busy polling.

use std::io;
use std::os::fd::RawFd;
use std::ptr;

use super::ring::consts::*;
use super::ring::Ring;

use super::ring::RsrcUpdate;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FilesUpdate {
    offset: u32,
    resv: u32,
    fds: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct ProbeOp {
    op: u8,
    resv: u8,
    flags: u16,
    resv2: u32,
}

#[repr(C)]
struct Probe {
    last_op: u8,
    ops_len: u8,
    resv: u16,
    resv2: [u32; 3],
    ops: [ProbeOp; 256],
}

/// `struct io_uring_rsrc_register` (IORING_REGISTER_FILES2 / BUFFERS2).
#[repr(C)]
struct RsrcRegister {
    nr: u32,
    flags: u32,
    resv2: u64,
    data: u64,
    tags: u64,
}

/// `struct io_uring_file_index_range`.
#[repr(C)]
struct FileIndexRange {
    off: u32,
    len: u32,
    resv: u64,
}

/// `struct io_uring_napi`.
#[repr(C)]
#[derive(Default)]
struct Napi {
    busy_poll_to: u32,
    prefer_busy_poll: u8,
    opcode: u8,
    pad: [u8; 2],
    op_param: u32,
    resv: u32,
}

/// `struct io_uring_buf_reg`.
#[repr(C)]
struct BufReg {
    ring_addr: u64,
    ring_entries: u32,
    bgid: u16,
    flags: u16,
    resv: [u64; 3],
}

/// NAPI busy polling as the kernel reports it back (IORING_REGISTER_NAPI).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NapiSettings {
    pub busy_poll_us: u32,
    pub prefer_busy_poll: bool,
    /// IO_URING_NAPI_TRACKING_DYNAMIC (0) or _STATIC (1).
    pub tracking: u32,
}

impl Ring {
    /// IORING_REGISTER_ENABLE_RINGS for an R_DISABLED ring.
    pub fn enable(&mut self) -> io::Result<()> {
        self.register(IORING_REGISTER_ENABLE_RINGS, ptr::null(), 0)?;
        self.disabled = false;
        Ok(())
    }

    /// IORING_REGISTER_BUFFERS.
    ///
    /// # Safety
    /// The memory described by `iov` must stay valid until the buffers are unregistered
    /// or the ring is dropped, and every SQE using it must respect its bounds.
    pub unsafe fn register_buffers(&mut self, iov: &[libc::iovec]) -> io::Result<()> {
        self.register(
            IORING_REGISTER_BUFFERS,
            iov.as_ptr().cast(),
            iov.len() as u32,
        )
        .map(|_| ())
    }

    pub fn unregister_buffers(&mut self) -> io::Result<()> {
        self.register(IORING_UNREGISTER_BUFFERS, ptr::null(), 0)
            .map(|_| ())
    }

    /// IORING_REGISTER_FILES. `-1` entries leave a slot empty (sparse).
    pub fn register_files(&mut self, fds: &[RawFd]) -> io::Result<()> {
        self.register(IORING_REGISTER_FILES, fds.as_ptr().cast(), fds.len() as u32)
            .map(|_| ())
    }

    /// IORING_REGISTER_FILES_UPDATE: replaces slots `offset..offset+fds.len()`.
    /// Returns the number of slots updated.
    pub fn register_files_update(&mut self, offset: u32, fds: &[RawFd]) -> io::Result<usize> {
        let up = FilesUpdate {
            offset,
            resv: 0,
            fds: fds.as_ptr() as u64,
        };
        self.register(
            IORING_REGISTER_FILES_UPDATE,
            (&up as *const FilesUpdate).cast(),
            fds.len() as u32,
        )
        .map(|n| n as usize)
    }

    pub fn unregister_files(&mut self) -> io::Result<()> {
        self.register(IORING_UNREGISTER_FILES, ptr::null(), 0)
            .map(|_| ())
    }

    /// IORING_REGISTER_RING_FDS: later enters use the registered index
    /// (IORING_ENTER_REGISTERED_RING) from this thread.
    pub fn register_ring_fd(&mut self) -> io::Result<()> {
        if self.reg_index.is_some() {
            return Ok(());
        }
        let fd = self
            .fd
            .ok_or_else(|| io::Error::other("ring has no fd to register"))?;
        let mut up = RsrcUpdate {
            offset: u32::MAX,
            resv: 0,
            data: fd as u64,
        };
        let n = self.register(
            IORING_REGISTER_RING_FDS,
            (&mut up as *mut RsrcUpdate).cast(),
            1,
        )?;
        if n != 1 {
            return Err(io::Error::other(format!(
                "IORING_REGISTER_RING_FDS registered {n} rings, expected 1"
            )));
        }
        self.reg_index = Some(up.offset);
        self.reg_thread = Some(std::thread::current().id());
        Ok(())
    }

    /// IORING_REGISTER_IOWQ_MAX_WORKERS. 0 leaves a limit unchanged. Returns the previous
    /// limits `[bounded, unbounded]`.
    pub fn register_iowq_max_workers(
        &mut self,
        bounded: u32,
        unbounded: u32,
    ) -> io::Result<[u32; 2]> {
        let mut v = [bounded, unbounded];
        self.register(IORING_REGISTER_IOWQ_MAX_WORKERS, v.as_mut_ptr().cast(), 2)?;
        Ok(v)
    }

    /// IORING_REGISTER_IOWQ_AFF: io-wq workers of this ring run only on `cpus`.
    pub fn register_iowq_aff(&mut self, cpus: &[usize]) -> io::Result<()> {
        // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &c in cpus {
            if c >= libc::CPU_SETSIZE as usize {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("cpu {c} out of range"),
                ));
            }
            // SAFETY: c < CPU_SETSIZE, checked above.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
        self.register(
            IORING_REGISTER_IOWQ_AFF,
            (&set as *const libc::cpu_set_t).cast(),
            std::mem::size_of::<libc::cpu_set_t>() as u32,
        )
        .map(|_| ())
    }

    /// IORING_REGISTER_PROBE: `(opcode, supported)` for every opcode this kernel knows.
    pub fn probe_opcodes(&self) -> io::Result<Vec<(u8, bool)>> {
        // SAFETY: Probe is plain data; zeroed is what the kernel expects.
        let mut p: Box<Probe> = Box::new(unsafe { std::mem::zeroed() });
        self.register(IORING_REGISTER_PROBE, (&mut *p as *mut Probe).cast(), 256)?;
        let n = (p.ops_len as usize).min(256).min(p.last_op as usize + 1);
        Ok(p.ops[..n]
            .iter()
            .map(|o| (o.op, o.flags & IO_URING_OP_SUPPORTED != 0))
            .collect())
    }

    /// IORING_REGISTER_PBUF_RING / UNREGISTER (used by `BufRing`). `flags` are the
    /// IOU_PBUF_RING_* bits (IOU_PBUF_RING_INC: incremental consumption, 6.12).
    ///
    /// # Safety
    /// `ring_addr` must point to `entries * 16` bytes, page aligned, that stay valid until
    /// the buffer ring is unregistered.
    pub(crate) unsafe fn register_pbuf_ring(
        &mut self,
        ring_addr: u64,
        entries: u32,
        bgid: u16,
        flags: u16,
    ) -> io::Result<()> {
        let reg = BufReg {
            ring_addr,
            ring_entries: entries,
            bgid,
            flags,
            resv: [0; 3],
        };
        self.register(IORING_REGISTER_PBUF_RING, (&reg as *const BufReg).cast(), 1)
            .map(|_| ())
    }

    pub(crate) fn unregister_pbuf_ring(&mut self, bgid: u16) -> io::Result<()> {
        let reg = BufReg {
            ring_addr: 0,
            ring_entries: 0,
            bgid,
            flags: 0,
            resv: [0; 3],
        };
        self.register(
            IORING_UNREGISTER_PBUF_RING,
            (&reg as *const BufReg).cast(),
            1,
        )
        .map(|_| ())
    }

    /// IORING_REGISTER_FILES2 with IORING_RSRC_REGISTER_SPARSE (5.19): a file table of
    /// `nr` empty slots, filled later by direct accept/open (IORING_FILE_INDEX_ALLOC),
    /// MSG_RING fd passing or [`Ring::register_files_update`]. The kernel refuses more
    /// slots than RLIMIT_NOFILE with EMFILE.
    pub fn register_files_sparse(&mut self, nr: u32) -> io::Result<()> {
        let r = RsrcRegister {
            nr,
            flags: IORING_RSRC_REGISTER_SPARSE,
            resv2: 0,
            data: 0,
            tags: 0,
        };
        self.register(
            IORING_REGISTER_FILES2,
            (&r as *const RsrcRegister).cast(),
            std::mem::size_of::<RsrcRegister>() as u32,
        )
        .map(|_| ())
    }

    /// IORING_REGISTER_FILE_ALLOC_RANGE (6.0): IORING_FILE_INDEX_ALLOC picks slots from
    /// `off..off + len` only (slots below stay for the engine to fill by index).
    pub fn register_file_alloc_range(&mut self, off: u32, len: u32) -> io::Result<()> {
        let r = FileIndexRange { off, len, resv: 0 };
        self.register(
            IORING_REGISTER_FILE_ALLOC_RANGE,
            (&r as *const FileIndexRange).cast(),
            0,
        )
        .map(|_| ())
    }

    /// IORING_REGISTER_NAPI (6.9): busy-poll the NIC queues of this ring's sockets for up
    /// to `busy_poll_us` while waiting; `tracking` is IO_URING_NAPI_TRACKING_DYNAMIC (the
    /// kernel learns NAPI ids from the sockets used) or _STATIC (6.13: ids added with
    /// IO_URING_NAPI_STATIC_ADD_ID only). Returns what was in force before.
    pub fn register_napi(
        &mut self,
        busy_poll_us: u32,
        prefer_busy_poll: bool,
        tracking: u32,
    ) -> io::Result<NapiSettings> {
        let mut n = Napi {
            busy_poll_to: busy_poll_us,
            prefer_busy_poll: prefer_busy_poll as u8,
            opcode: IO_URING_NAPI_REGISTER_OP,
            op_param: tracking,
            ..Default::default()
        };
        self.register(IORING_REGISTER_NAPI, (&mut n as *mut Napi).cast(), 1)?;
        Ok(NapiSettings {
            busy_poll_us: n.busy_poll_to,
            prefer_busy_poll: n.prefer_busy_poll != 0,
            tracking: n.op_param,
        })
    }

    /// IORING_UNREGISTER_NAPI: stops busy polling; returns the settings that were in force.
    pub fn unregister_napi(&mut self) -> io::Result<NapiSettings> {
        let mut n = Napi::default();
        self.register(IORING_UNREGISTER_NAPI, (&mut n as *mut Napi).cast(), 1)?;
        Ok(NapiSettings {
            busy_poll_us: n.busy_poll_to,
            prefer_busy_poll: n.prefer_busy_poll != 0,
            tracking: n.op_param,
        })
    }
}

//! Provided-buffer rings (IORING_REGISTER_PBUF_RING, Linux 5.19+): a ring of buffer
//! descriptors in memory we own, from which the kernel picks a buffer per completion
//! (multishot recv). The application hands buffers back by advancing the tail.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};

use super::ring::consts::IORING_UNREGISTER_PBUF_RING;
use super::ring::{raw_register, AnonMem, Ring};

#[repr(C)]
struct BufReg {
    ring_addr: u64,
    ring_entries: u32,
    bgid: u16,
    flags: u16,
    resv: [u64; 3],
}

/// A registered provided-buffer ring with `entries` buffers of `buf_len` bytes each,
/// page-aligned, owned here. Buffer ids are `0..entries`.
///
/// Drop unregisters the group (through a dup of the ring fd, so the order in which the
/// `Ring` and the `BufRing` are dropped does not matter) before freeing the memory. For a
/// REGISTERED_FD_ONLY ring, which has no fd, call [`BufRing::unregister`] before dropping
/// the ring; otherwise the memory is deliberately leaked rather than freed while the
/// kernel may still write into it.
pub struct BufRing {
    ring_mem: Option<AnonMem>,
    bufs: Option<AnonMem>,
    entries: u16,
    mask: u16,
    buf_len: u32,
    bgid: u16,
    tail: u16,
    /// dup of the ring fd (None for REGISTERED_FD_ONLY rings).
    fd: Option<RawFd>,
    registered: bool,
}

// SAFETY: owns its memory and fd; the kernel side is reached only through syscalls.
unsafe impl Send for BufRing {}

const ENTRY_SIZE: usize = 16;

impl BufRing {
    /// Allocates and registers buffer group `bgid`. `entries` must be a power of two
    /// (1..=32768), `buf_len` > 0.
    pub fn new(ring: &mut Ring, bgid: u16, entries: u16, buf_len: u32) -> io::Result<BufRing> {
        if entries == 0 || !entries.is_power_of_two() || entries > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "buffer ring entries must be a power of two from 1 to 32768, got {entries}"
                ),
            ));
        }
        if buf_len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer ring buf_len must be > 0",
            ));
        }
        let ring_mem = AnonMem::new(entries as usize * ENTRY_SIZE)?;
        let bufs = AnonMem::new(entries as usize * buf_len as usize)?;
        let fd = match ring.fd() {
            Some(f) => {
                // SAFETY: dup of a valid fd we are handed by the ring.
                let d = unsafe { libc::fcntl(f, libc::F_DUPFD_CLOEXEC, 0) };
                if d < 0 {
                    return Err(io::Error::last_os_error());
                }
                Some(d)
            }
            None => None,
        };
        let mut br = BufRing {
            ring_mem: Some(ring_mem),
            bufs: Some(bufs),
            entries,
            mask: entries - 1,
            buf_len,
            bgid,
            tail: 0,
            fd,
            registered: false,
        };
        for bid in 0..entries {
            br.put(bid);
        }
        br.publish();
        let rm = br.ring_mem.as_ref().expect("set above");
        // SAFETY: rm is page aligned, entries*16 bytes, alive until unregistered (drop
        // unregisters before freeing, or leaks).
        unsafe { ring.register_pbuf_ring(rm.as_ptr() as u64, entries as u32, bgid) }?;
        br.registered = true;
        Ok(br)
    }

    pub fn bgid(&self) -> u16 {
        self.bgid
    }
    pub fn entries(&self) -> u16 {
        self.entries
    }
    pub fn buf_len(&self) -> u32 {
        self.buf_len
    }

    /// The whole buffer `bid` (the completion's `res` says how many bytes are valid).
    /// Only meaningful between the CQE that returned `bid` and `recycle(bid)`.
    ///
    /// # Panics
    /// If `bid >= entries`.
    pub fn buf(&self, bid: u16) -> &[u8] {
        assert!(
            bid < self.entries,
            "buffer id {bid} out of range (entries {})",
            self.entries
        );
        let start = bid as usize * self.buf_len as usize;
        &self
            .bufs
            .as_ref()
            .expect("buffers live until drop")
            .as_slice()[start..start + self.buf_len as usize]
    }

    /// Writes the descriptor of `bid` at the local tail (not yet visible).
    fn put(&mut self, bid: u16) {
        let idx = (self.tail & self.mask) as usize;
        let addr = self
            .bufs
            .as_ref()
            .expect("buffers live until drop")
            .as_ptr() as u64
            + bid as u64 * self.buf_len as u64;
        let rm = self
            .ring_mem
            .as_mut()
            .expect("ring memory lives until drop")
            .as_mut_ptr();
        // SAFETY: idx < entries; each entry is 16 bytes {addr u64, len u32, bid u16, resv u16}.
        // Entry 0's resv is the shared tail, so only addr/len/bid are written.
        unsafe {
            let e = rm.add(idx * ENTRY_SIZE);
            std::ptr::write_volatile(e as *mut u64, addr);
            std::ptr::write_volatile(e.add(8) as *mut u32, self.buf_len);
            std::ptr::write_volatile(e.add(12) as *mut u16, bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        let rm = self
            .ring_mem
            .as_ref()
            .expect("ring memory lives until drop")
            .as_ptr();
        // SAFETY: the tail is the u16 at offset 14 of entry 0, 2-byte aligned; release
        // orders the descriptor writes before it.
        unsafe { (*(rm.add(14) as *const AtomicU16)).store(self.tail, Ordering::Release) };
    }

    /// Hands buffer `bid` back to the kernel.
    ///
    /// # Panics
    /// If `bid >= entries`.
    pub fn recycle(&mut self, bid: u16) {
        assert!(
            bid < self.entries,
            "buffer id {bid} out of range (entries {})",
            self.entries
        );
        self.put(bid);
        self.publish();
    }

    /// Unregisters the group through `ring` (needed for REGISTERED_FD_ONLY rings).
    pub fn unregister(mut self, ring: &mut Ring) -> io::Result<()> {
        if self.registered {
            ring.unregister_pbuf_ring(self.bgid)?;
            self.registered = false;
        }
        Ok(())
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.registered {
            let ok = match self.fd {
                Some(fd) => {
                    let reg = BufReg {
                        ring_addr: 0,
                        ring_entries: 0,
                        bgid: self.bgid,
                        flags: 0,
                        resv: [0; 3],
                    };
                    // SAFETY: unregisters our group through our own dup of the ring fd.
                    unsafe {
                        raw_register(
                            fd,
                            IORING_UNREGISTER_PBUF_RING,
                            (&reg as *const BufReg).cast(),
                            1,
                        )
                    }
                    .is_ok()
                }
                None => false,
            };
            if !ok {
                // The kernel may still write into these buffers: never free them.
                std::mem::forget(self.ring_mem.take());
                std::mem::forget(self.bufs.take());
            }
        }
        if let Some(fd) = self.fd {
            // SAFETY: our own dup.
            unsafe { libc::close(fd) };
        }
    }
}

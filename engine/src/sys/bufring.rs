//! Provided-buffer rings (IORING_REGISTER_PBUF_RING, Linux 5.19+): a ring of buffer
//! descriptors in memory we own, from which the kernel picks a buffer per completion
//! (multishot recv). The application hands buffers back by advancing the tail.
//!
//! Two refinements change what one completion means, and [`BufRing::consume`] handles
//! both: a *bundle* (IORING_RECVSEND_BUNDLE, 6.10) fills several buffers, consecutive in
//! ring order from the buffer id in the CQE; an *incremental* ring (IOU_PBUF_RING_INC,
//! 6.12) lets one buffer take several receives, each starting where the last ended, the
//! CQE saying IORING_CQE_F_BUF_MORE while the kernel keeps using it. With incremental
//! consumption the kernel consumes buffers strictly in ring order and completions are
//! reaped in that order, so the ring keeps each buffer's consumed length itself.

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
    /// IOU_PBUF_RING_INC: buffers consumed incrementally.
    incremental: bool,
    /// Ring position (tail counter value) at which each buffer id was last put.
    pos_of: Vec<u16>,
    /// Buffer id at each ring slot.
    bid_at: Vec<u16>,
    /// Bytes of each buffer the kernel has already filled (incremental rings).
    used: Vec<u32>,
    /// The kernel's head as far as reaped completions tell (incremental rings).
    head: u16,
    /// Pieces of the last `consume`: (buffer id, offset, length).
    pieces: Vec<(u16, u32, u32)>,
    /// Buffers the last `consume` finished, recycled by `release`.
    done: Vec<u16>,
    /// Completions whose buffer was not at the expected head of an incremental ring.
    order_errors: u64,
}

// SAFETY: owns its memory and fd; the kernel side is reached only through syscalls.
unsafe impl Send for BufRing {}

const ENTRY_SIZE: usize = 16;

impl BufRing {
    /// Allocates and registers buffer group `bgid`. `entries` must be a power of two
    /// (1..=32768), `buf_len` > 0.
    pub fn new(ring: &mut Ring, bgid: u16, entries: u16, buf_len: u32) -> io::Result<BufRing> {
        Self::with_flags(ring, bgid, entries, buf_len, false)
    }

    /// As [`BufRing::new`]; `incremental` registers it with IOU_PBUF_RING_INC (6.12+).
    pub fn with_flags(
        ring: &mut Ring,
        bgid: u16,
        entries: u16,
        buf_len: u32,
        incremental: bool,
    ) -> io::Result<BufRing> {
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
            incremental,
            pos_of: vec![0; entries as usize],
            bid_at: vec![0; entries as usize],
            used: vec![0; entries as usize],
            head: 0,
            pieces: Vec::new(),
            done: Vec::new(),
            order_errors: 0,
        };
        for bid in 0..entries {
            br.put(bid);
        }
        br.publish();
        let rm = br.ring_mem.as_ref().expect("set above");
        // SAFETY: rm is page aligned, entries*16 bytes, alive until unregistered (drop
        // unregisters before freeing, or leaks).
        let flags = if incremental {
            super::ring::consts::IOU_PBUF_RING_INC
        } else {
            0
        };
        unsafe { ring.register_pbuf_ring(rm.as_ptr() as u64, entries as u32, bgid, flags) }?;
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
        self.pos_of[bid as usize] = self.tail;
        self.bid_at[idx] = bid;
        self.used[bid as usize] = 0;
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

    /// Whether the ring was registered with IOU_PBUF_RING_INC.
    pub fn incremental(&self) -> bool {
        self.incremental
    }

    /// Completions of an incremental ring whose buffer was not the one at the kernel's
    /// head (never expected: the data placement would be wrong).
    pub fn order_errors(&self) -> u64 {
        self.order_errors
    }

    /// Takes one receive completion: `first` is the buffer id in the CQE, `res` the bytes
    /// received, `buf_more` its IORING_CQE_F_BUF_MORE, `bundle` whether the request was a
    /// bundle (the bytes may span several buffers, consecutive in ring order). Returns how
    /// many pieces the bytes are in; read them in order with [`BufRing::piece`], then call
    /// [`BufRing::release`] to hand the buffers the kernel is done with back.
    ///
    /// # Panics
    /// If `first` is out of range.
    pub fn consume(&mut self, first: u16, res: u32, buf_more: bool, bundle: bool) -> usize {
        assert!(first < self.entries, "buffer id {first} out of range");
        self.pieces.clear();
        self.done.clear();
        let mut pos = self.pos_of[first as usize];
        if self.incremental && pos != self.head {
            self.order_errors += 1;
        }
        let mut left = res;
        loop {
            let bid = self.bid_at[(pos & self.mask) as usize];
            let off = if self.incremental {
                self.used[bid as usize]
            } else {
                0
            };
            let avail = self.buf_len - off;
            let take = left.min(avail);
            self.pieces.push((bid, off, take));
            left -= take;
            // An incremental buffer stays with the kernel while it has room (BUF_MORE on
            // the completion that used it last); any other buffer is done once used.
            if self.incremental && take < avail && (left > 0 || buf_more) {
                self.used[bid as usize] = off + take;
                break;
            }
            self.done.push(bid);
            pos = pos.wrapping_add(1);
            if self.incremental {
                self.head = pos;
            }
            if left == 0 || !bundle {
                break;
            }
        }
        debug_assert_eq!(
            left, 0,
            "a completion of {res} bytes does not fit its buffers"
        );
        self.pieces.len()
    }

    /// Piece `i` of the last [`BufRing::consume`].
    pub fn piece(&self, i: usize) -> &[u8] {
        let (bid, off, len) = self.pieces[i];
        &self.buf(bid)[off as usize..(off + len) as usize]
    }

    /// Recycles the buffers the last [`BufRing::consume`] finished, with one tail update.
    pub fn release(&mut self) {
        if self.done.is_empty() {
            return;
        }
        let done = std::mem::take(&mut self.done);
        for &b in &done {
            self.put(b);
        }
        self.publish();
        self.done = done;
        self.done.clear();
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

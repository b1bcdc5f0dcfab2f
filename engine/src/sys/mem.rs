//! One aligned arena of I/O buffers, allocated once at start-up and handed out in
//! fixed-size slots.
//!
//! Contract of a [`Slot`]:
//! - its address is aligned to the arena's `align` (at least the page size, hence at
//!   least any O_DIRECT memory alignment a Linux filesystem asks for) and its length is
//!   the arena's `slot_bytes`, a multiple of `align`;
//! - registration is **per slot**: when the arena is registered with a ring, slot `i`
//!   is registered buffer `i` (`IORING_OP_*_FIXED` use `buf_index = slot.index()`).
//!   Per-slot registration keeps every fixed op (including the vectored `*V_FIXED`
//!   forms, whose iovecs must all lie in one registered buffer) inside its own buffer,
//!   and caps the arena at 16384 slots of at most 1 GiB (the kernel's limits);
//! - a slot returns to the free list when dropped (or given to [`Arena::free`]).
//!   Running out of slots is an error ([`Arena::alloc`] returns `None`), never a fallback
//!   to heap memory: the arena is sized from the configuration (io-depth x block-size).
//!
//! Memory is anonymous (`mmap(MAP_PRIVATE|MAP_ANONYMOUS)`), as registered buffers require,
//! backed by one of three page kinds ([`PageKind`]): plain 4 KiB pages, transparent huge
//! pages (a 2 MiB-aligned mapping with `MADV_HUGEPAGE`), or hugetlb pages
//! (`MAP_HUGETLB`, from the pool reserved by `vm.nr_hugepages`). Huge pages make a large
//! buffer physically contiguous, so a 1 MiB O_DIRECT write is one DMA segment instead of
//! 256 (virtio-blk takes at most 254 segments per request, so 4 KiB pages split every
//! 1 MiB write into two requests), and pinning for registration touches 512x fewer pages.

use std::fmt;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Most buffers the kernel registers in one table.
pub const MAX_REGISTERED_BUFFERS: usize = 16384;
/// Largest single registered buffer.
pub const MAX_REGISTERED_BUFFER_BYTES: usize = 1 << 30;

static NEXT_ARENA_ID: AtomicU64 = AtomicU64::new(1);

/// Size of a transparent or hugetlb huge page on x86-64 and arm64 (4 KiB base pages).
pub const HUGE_PAGE_BYTES: usize = 2 << 20;

/// Which pages back an arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageKind {
    /// Plain base pages.
    Small,
    /// Transparent huge pages: 2 MiB-aligned, `MADV_HUGEPAGE`. The kernel backs each
    /// aligned 2 MiB with a huge page when it can find one at first touch; see
    /// [`Arena::huge_bytes`] for what it actually did.
    Thp,
    /// `MAP_HUGETLB | MAP_HUGE_2MB` from the reserved pool; fails when the pool is short.
    Hugetlb,
}

struct Inner {
    ptr: NonNull<u8>,
    len: usize,
    pages: PageKind,
    slot_bytes: usize,
    slots: usize,
    align: usize,
    id: u64,
    free: Mutex<Vec<u32>>,
}

// SAFETY: the mapping is plain memory owned by `Inner`; all mutation of slot contents goes
// through `Slot`, which is handed out to exactly one owner at a time (the free list is
// behind a mutex), so sharing `Inner` between threads is sound.
unsafe impl Send for Inner {}
// SAFETY: see `Send`: `Inner` itself only exposes the free list (a Mutex) and constants.
unsafe impl Sync for Inner {}

impl Drop for Inner {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are the exact mapping made in `Arena::new`; no slot is alive
        // (each holds an Arc to this Inner), so nothing references the memory any more.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// An aligned arena of `slots` buffers of `slot_bytes` each. Cheap to clone (shared).
#[derive(Clone)]
pub struct Arena {
    inner: Arc<Inner>,
}

impl fmt::Debug for Arena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arena")
            .field("id", &self.inner.id)
            .field("slots", &self.inner.slots)
            .field("slot_bytes", &self.inner.slot_bytes)
            .field("align", &self.inner.align)
            .field("pages", &self.inner.pages)
            .finish()
    }
}

/// Why an arena could not be made.
#[derive(Debug)]
pub enum ArenaError {
    /// The sizes asked for are unusable; the message says which and why.
    Invalid(String),
    /// mmap failed.
    Map(io::Error),
}

impl fmt::Display for ArenaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArenaError::Invalid(m) => write!(f, "{m}"),
            ArenaError::Map(e) => write!(f, "cannot map the I/O buffer arena: {e}"),
        }
    }
}

impl std::error::Error for ArenaError {}

/// Sums `AnonHugePages` over the smaps entries inside [start, start + len).
fn smaps_anon_huge(smaps: &str, start: usize, len: usize) -> Option<u64> {
    let end = start + len;
    let mut inside = false;
    let mut total = 0u64;
    let mut seen = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                inside = a >= start && b <= end;
                seen |= inside;
                continue;
            }
        }
        if inside {
            if let Some(rest) = line.strip_prefix("AnonHugePages:") {
                let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
                total += kb * 1024;
            }
        }
    }
    seen.then_some(total)
}

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p <= 0 {
        4096
    } else {
        p as usize
    }
}

/// An anonymous private read-write mapping of `len` bytes with extra `flags`.
fn map_anon(len: usize, flags: libc::c_int) -> Result<NonNull<u8>, ArenaError> {
    // SAFETY: an anonymous private mapping with no address hint; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(ArenaError::Map(io::Error::last_os_error()));
    }
    NonNull::new(p.cast::<u8>())
        .ok_or_else(|| ArenaError::Map(io::Error::other("mmap returned null")))
}

/// A 2 MiB-aligned anonymous mapping of `len` (a multiple of 2 MiB) bytes advised for
/// transparent huge pages: maps `len + 2 MiB`, unmaps the unaligned head and tail.
fn map_thp(len: usize) -> Result<NonNull<u8>, ArenaError> {
    let over = len + HUGE_PAGE_BYTES;
    let raw = map_anon(over, 0)?.as_ptr() as usize;
    let start = raw.next_multiple_of(HUGE_PAGE_BYTES);
    let head = start - raw;
    let tail = over - head - len;
    // SAFETY: [raw, raw + head) and [start + len, raw + over) lie inside the mapping just
    // made and nothing references them; the kept part [start, start + len) is untouched.
    unsafe {
        if head > 0 {
            libc::munmap(raw as *mut libc::c_void, head);
        }
        if tail > 0 {
            libc::munmap((start + len) as *mut libc::c_void, tail);
        }
        // Advice only: a kernel without THP (or with it set to never) keeps base pages,
        // which `Arena::huge_bytes` then reports.
        libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
    Ok(NonNull::new(start as *mut u8).expect("aligned address of a successful mmap"))
}

impl Arena {
    /// Maps `total_bytes` (rounded down to whole slots) split into slots of `slot_bytes`,
    /// each aligned to `align` (a power of two; at most the page size since the mapping is
    /// page aligned). `slot_bytes` must be a multiple of `align`.
    pub fn new(total_bytes: usize, slot_bytes: usize, align: usize) -> Result<Arena, ArenaError> {
        Arena::with_pages(total_bytes, slot_bytes, align, PageKind::Small)
    }

    /// [`Arena::new`] backed by the given kind of pages.
    pub fn with_pages(
        total_bytes: usize,
        slot_bytes: usize,
        align: usize,
        pages: PageKind,
    ) -> Result<Arena, ArenaError> {
        let page = page_size();
        if align == 0 || !align.is_power_of_two() {
            return Err(ArenaError::Invalid(format!(
                "arena alignment {align} is not a power of two"
            )));
        }
        if align > page {
            return Err(ArenaError::Invalid(format!(
                "arena alignment {align} exceeds the page size {page}; no Linux filesystem asks for more"
            )));
        }
        if slot_bytes == 0 || !slot_bytes.is_multiple_of(align) {
            return Err(ArenaError::Invalid(format!(
                "buffer size {slot_bytes} is not a non-zero multiple of the alignment {align}: set block-size to a multiple of {align}"
            )));
        }
        let slots = total_bytes / slot_bytes;
        if slots == 0 {
            return Err(ArenaError::Invalid(format!(
                "arena of {total_bytes} bytes holds no buffer of {slot_bytes} bytes: raise arena-bytes"
            )));
        }
        if slots > u32::MAX as usize {
            return Err(ArenaError::Invalid(format!(
                "arena of {slots} slots is too many"
            )));
        }
        // Round the mapping up to whole pages so slot `i * slot_bytes` stays inside it.
        let (len, ptr) = match pages {
            PageKind::Small => {
                let len = (slots * slot_bytes).div_ceil(page) * page;
                (len, map_anon(len, 0)?)
            }
            PageKind::Hugetlb => {
                let len = (slots * slot_bytes).div_ceil(HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES;
                let p = map_anon(len, libc::MAP_HUGETLB | libc::MAP_HUGE_2MB).map_err(|e| {
                    match e {
                        ArenaError::Map(err) if err.raw_os_error() == Some(libc::ENOMEM) => {
                            ArenaError::Map(io::Error::new(
                                err.kind(),
                                format!(
                                    "{err}: the hugetlb pool has fewer than {} free 2 MiB pages; reserve them \
                                     (echo N > /proc/sys/vm/nr_hugepages, see HugePages_Free in /proc/meminfo) \
                                     or set buffer-memory to thp",
                                    len / HUGE_PAGE_BYTES
                                ),
                            ))
                        }
                        e => e,
                    }
                })?;
                (len, p)
            }
            PageKind::Thp => {
                let len = (slots * slot_bytes).div_ceil(HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES;
                (len, map_thp(len)?)
            }
        };
        let free = (0..slots as u32).rev().collect();
        Ok(Arena {
            inner: Arc::new(Inner {
                ptr,
                len,
                pages,
                slot_bytes,
                slots,
                align,
                id: NEXT_ARENA_ID.fetch_add(1, Ordering::Relaxed),
                free: Mutex::new(free),
            }),
        })
    }

    /// Takes a free slot, or `None` when all are in use (size the arena for the queue depth).
    pub fn alloc(&self) -> Option<Slot> {
        let idx = self
            .inner
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()?;
        Some(Slot {
            arena: self.inner.clone(),
            index: idx,
            len: self.inner.slot_bytes,
        })
    }

    /// Returns a slot to the free list (the same as dropping it).
    pub fn free(&self, slot: Slot) {
        debug_assert_eq!(
            slot.arena.id, self.inner.id,
            "slot freed into another arena"
        );
        drop(slot)
    }

    pub fn slots(&self) -> usize {
        self.inner.slots
    }
    /// Bytes of the mapping (whole pages of its kind).
    pub fn mapped_bytes(&self) -> usize {
        self.inner.len
    }
    /// Bytes of the arena that the kernel currently backs with huge pages: all of it for
    /// hugetlb; for THP, the mapping's `AnonHugePages` in /proc/self/smaps (only memory
    /// touched so far counts; `None` when smaps cannot be read); 0 for small pages.
    pub fn huge_bytes(&self) -> Option<u64> {
        match self.inner.pages {
            PageKind::Small => Some(0),
            PageKind::Hugetlb => Some(self.inner.len as u64),
            PageKind::Thp => {
                let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
                smaps_anon_huge(&smaps, self.inner.ptr.as_ptr() as usize, self.inner.len)
            }
        }
    }
    pub fn slot_bytes(&self) -> usize {
        self.inner.slot_bytes
    }
    pub fn align(&self) -> usize {
        self.inner.align
    }
    /// Slots currently free.
    pub fn free_slots(&self) -> usize {
        self.inner
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
    /// Process-unique identity of this arena (slots carry it; a ring remembers which arena
    /// it registered).
    pub fn id(&self) -> u64 {
        self.inner.id
    }
    /// Bytes of the arena counted against RLIMIT_MEMLOCK when it is registered.
    pub fn locked_bytes(&self) -> usize {
        self.inner.slots * self.inner.slot_bytes
    }

    /// One iovec per slot, in slot order: what `IORING_REGISTER_BUFFERS` takes.
    pub fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.inner.slots)
            .map(|i| libc::iovec {
                // SAFETY: i < slots, so the offset stays inside the mapping.
                iov_base: unsafe { self.inner.ptr.as_ptr().add(i * self.inner.slot_bytes) }.cast(),
                iov_len: self.inner.slot_bytes,
            })
            .collect()
    }

    /// Checks the arena can be registered: slot count and size within the kernel's limits.
    pub fn check_registrable(&self) -> Result<(), String> {
        if self.inner.slots > MAX_REGISTERED_BUFFERS {
            return Err(format!(
                "the arena has {} buffers but the kernel registers at most {MAX_REGISTERED_BUFFERS}: lower arena-bytes or raise block-size",
                self.inner.slots
            ));
        }
        if self.inner.slot_bytes > MAX_REGISTERED_BUFFER_BYTES {
            return Err(format!(
                "buffers of {} bytes exceed the 1 GiB limit of a registered buffer: lower block-size",
                self.inner.slot_bytes
            ));
        }
        Ok(())
    }
}

/// One buffer of an [`Arena`], owned by exactly one holder. Returns to the arena on drop.
pub struct Slot {
    arena: Arc<Inner>,
    index: u32,
    len: usize,
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("arena", &self.arena.id)
            .field("index", &self.index)
            .field("len", &self.len)
            .finish()
    }
}

impl Slot {
    /// Index of the slot in its arena = its registered buffer index.
    pub fn index(&self) -> u32 {
        self.index
    }
    /// Identity of the arena this slot belongs to.
    pub fn arena_id(&self) -> u64 {
        self.arena.id
    }
    /// Capacity in bytes (the arena's slot size).
    pub fn capacity(&self) -> usize {
        self.arena.slot_bytes
    }
    /// Length in use (defaults to the capacity).
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Sets the length in use; at most the capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.arena.slot_bytes,
            "slot length {len} beyond its capacity {}",
            self.arena.slot_bytes
        );
        self.len = len;
    }
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        // SAFETY: index < slots, so the offset is inside the mapping.
        unsafe {
            self.arena
                .ptr
                .as_ptr()
                .add(self.index as usize * self.arena.slot_bytes)
        }
    }
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the slot's range is inside the live mapping (the Arc keeps it), no other
        // Slot covers it (the free list hands each index to one owner), and `&self`
        // excludes concurrent mutation through this Slot.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len) }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, with `&mut self` giving exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr(), self.len) }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.arena
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.index);
    }
}

/// RLIMIT_MEMLOCK as (soft, hard) in bytes; `None` means unlimited.
pub fn memlock_limit() -> io::Result<(Option<u64>, Option<u64>)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid out-pointer for getrlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let f = |v: libc::rlim_t| {
        if v == libc::RLIM_INFINITY {
            None
        } else {
            Some(v)
        }
    };
    Ok((f(r.rlim_cur), f(r.rlim_max)))
}

/// Whether this process has CAP_IPC_LOCK in its effective set (then registered buffers
/// are not charged to RLIMIT_MEMLOCK).
pub fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// The memlock check as a pure function: `need` bytes to register, `limit` the soft
/// RLIMIT_MEMLOCK (`None` = unlimited), `cap_ipc_lock` whether the process is exempt.
pub fn check_memlock(need: u64, limit: Option<u64>, cap_ipc_lock: bool) -> Result<(), String> {
    match limit {
        _ if cap_ipc_lock => Ok(()),
        None => Ok(()),
        Some(l) if need <= l => Ok(()),
        Some(l) => Err(format!(
            "registered buffers need {} KiB of locked memory, RLIMIT_MEMLOCK is {} KiB: raise it with ulimit -l or turn register-buffers off",
            need.div_ceil(1024),
            l / 1024
        )),
    }
}

/// [`check_memlock`] with this process's limit and capabilities.
pub fn check_memlock_now(need: u64) -> Result<(), String> {
    let (soft, _) = memlock_limit().map_err(|e| format!("cannot read RLIMIT_MEMLOCK: {e}"))?;
    check_memlock(need, soft, has_cap_ipc_lock())
}

/// Lowers this process's soft and hard RLIMIT_MEMLOCK (for tests in a child process).
pub fn set_memlock_limit(bytes: u64) -> io::Result<()> {
    let r = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: `r` is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thp_arena_is_2mib_aligned_whole_huge_pages_and_usable() {
        let a = Arena::with_pages(3 * (1 << 20), 1 << 20, 4096, PageKind::Thp).unwrap();
        assert_eq!(a.mapped_bytes(), 4 << 20, "rounded up to whole 2 MiB pages");
        let mut s = a.alloc().unwrap();
        assert_eq!(s.as_ptr() as usize % HUGE_PAGE_BYTES, 0);
        s.as_mut_slice().fill(0xAB);
        assert!(s.as_slice().iter().all(|&b| b == 0xAB));
        // Touched memory only; the kernel may or may not have found a huge page.
        let huge = a.huge_bytes().expect("smaps lists the mapping");
        assert!(huge <= 4 << 20);
        drop(s);
        assert_eq!(a.free_slots(), 3);
    }

    #[test]
    fn smaps_sums_anon_huge_pages_of_the_mapping_only() {
        let smaps = "7f0000000000-7f0000400000 rw-p 00000000 00:00 0\nAnonHugePages:   2048 kB\n\
                     7f0000400000-7f0000600000 rw-p 00000000 00:00 0\nAnonHugePages:   2048 kB\n";
        let start = 0x7f00_0000_0000usize;
        assert_eq!(smaps_anon_huge(smaps, start, 4 << 20), Some(2 << 20));
        assert_eq!(smaps_anon_huge(smaps, start, 6 << 20), Some(4 << 20));
        assert_eq!(smaps_anon_huge(smaps, 0x1000, 4096), None);
    }

    #[test]
    fn slots_are_aligned_distinct_and_return_on_drop() {
        let a = Arena::new(4 * 8192, 8192, 4096).unwrap();
        assert_eq!(a.slots(), 4);
        let mut s: Vec<Slot> = (0..4).map(|_| a.alloc().unwrap()).collect();
        assert!(a.alloc().is_none(), "a fifth slot from a four-slot arena");
        for (i, sl) in s.iter_mut().enumerate() {
            assert_eq!(sl.as_ptr() as usize % 4096, 0);
            sl.as_mut_slice().fill(i as u8);
        }
        for (i, sl) in s.iter().enumerate() {
            assert!(sl.as_slice().iter().all(|&b| b == i as u8), "slots overlap");
        }
        drop(s.pop());
        assert_eq!(a.free_slots(), 1);
        assert!(a.alloc().is_some());
    }

    #[test]
    fn bad_sizes_are_named() {
        let e = Arena::new(1 << 20, 1000, 512).unwrap_err().to_string();
        assert!(e.contains("multiple of the alignment 512"), "{e}");
        let e = Arena::new(100, 4096, 4096).unwrap_err().to_string();
        assert!(e.contains("raise arena-bytes"), "{e}");
    }

    #[test]
    fn memlock_message() {
        let e = check_memlock(64 << 20, Some(8 << 20), false).unwrap_err();
        assert_eq!(
            e,
            "registered buffers need 65536 KiB of locked memory, RLIMIT_MEMLOCK is 8192 KiB: raise it with ulimit -l or turn register-buffers off"
        );
        assert!(check_memlock(64 << 20, Some(8 << 20), true).is_ok());
        assert!(check_memlock(64 << 20, None, false).is_ok());
        assert!(check_memlock(1 << 20, Some(8 << 20), false).is_ok());
    }
}

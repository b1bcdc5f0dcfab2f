//! A bounded cache of open replay-file descriptors (`server.replay-fd-cache`), for
//! `storage-layout = journal`.
//!
//! With the journal, an ACK does not need the replay file: the journal made the frames
//! durable, and the replay file is written behind, buffered. So a match does not hold its
//! replay file open for as long as its DS is connected (one descriptor per DS on top of its
//! socket, which capped 10,000 DS under a 20,000-descriptor RLIMIT_NOFILE). Each io_uring
//! worker (the blocking backend: the whole server) keeps at most `capacity` replay files
//! open; a write to a file that is not open opens it (no O_CREAT: the session's `Io::Open`
//! created it), and opening one more closes the least recently used.
//!
//! The backends keep only the files of their live sessions in it (a finished session's
//! file is removed), so a match sealed, moved or deleted later is not held open here.
//!
//! Closing needs no sync: the replay files of this layout are made durable by the
//! journal's checkpoints, a `syncfs` of the store, which writes back every dirty inode of
//! the file system whether a descriptor is open or not; a checkpoint only records what was
//! written before it started. Seals take the file out of the cache (`remove`) and fdatasync
//! it themselves.
//!
//! Descriptors are handed out as `Arc<OwnedFd>`: a caller writing through one (a blocking
//! connection thread, an io_uring fdatasync in flight) keeps it open while the cache may
//! already have let it go; the file closes when the last holder drops it.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// Counts since the cache was made (for `/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdCacheStats {
    /// Lookups that found the file open.
    pub hits: u64,
    /// Files opened on demand (a lookup that missed).
    pub opens: u64,
    /// Files closed to make room.
    pub evictions: u64,
}

struct Entry {
    fd: Arc<OwnedFd>,
    /// Use stamp: the key of this entry in `lru`.
    used: u64,
}

/// Open replay files by match id, least recently used closed first.
pub struct FdCache {
    capacity: usize,
    clock: u64,
    map: HashMap<String, Entry>,
    /// Use stamp -> match id, oldest first.
    lru: BTreeMap<u64, String>,
    stats: FdCacheStats,
}

impl FdCache {
    /// A cache holding at most `capacity` (at least 1) open files.
    pub fn new(capacity: usize) -> FdCache {
        FdCache {
            capacity: capacity.max(1),
            clock: 0,
            map: HashMap::new(),
            lru: BTreeMap::new(),
            stats: FdCacheStats::default(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Files open now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn stats(&self) -> FdCacheStats {
        self.stats
    }

    fn stamp(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Match `id`'s file: the open one, or `open()`'s (closing the least recently used
    /// file when the cache is full). An error of `open` is returned and nothing is cached.
    pub fn get(
        &mut self,
        id: &str,
        open: impl FnOnce() -> io::Result<OwnedFd>,
    ) -> io::Result<Arc<OwnedFd>> {
        let now = self.stamp();
        if let Some(e) = self.map.get_mut(id) {
            // move the entry's name to its new stamp (no allocation per hit)
            let name = self.lru.remove(&e.used).unwrap_or_else(|| id.to_string());
            e.used = now;
            self.lru.insert(now, name);
            self.stats.hits += 1;
            return Ok(e.fd.clone());
        }
        let fd = open()?;
        self.stats.opens += 1;
        Ok(self.put(id, fd, now))
    }

    /// Caches a file just opened for match `id` (a session's `Io::Open`), replacing the
    /// one cached for that id (a match created again, a file re-scanned).
    pub fn insert(&mut self, id: &str, fd: OwnedFd) -> Arc<OwnedFd> {
        let now = self.stamp();
        self.remove(id);
        self.put(id, fd, now)
    }

    fn put(&mut self, id: &str, fd: OwnedFd, now: u64) -> Arc<OwnedFd> {
        while self.map.len() >= self.capacity {
            let Some((_, old)) = self.lru.pop_first() else {
                break;
            };
            self.map.remove(&old);
            self.stats.evictions += 1;
        }
        let fd = Arc::new(fd);
        self.lru.insert(now, id.to_string());
        self.map.insert(
            id.to_string(),
            Entry {
                fd: fd.clone(),
                used: now,
            },
        );
        fd
    }

    /// Takes match `id`'s file out of the cache (a seal, a failed write whose file state
    /// is unknown); `None` when it is not open.
    pub fn remove(&mut self, id: &str) -> Option<Arc<OwnedFd>> {
        let e = self.map.remove(id)?;
        self.lru.remove(&e.used);
        Some(e.fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn devnull() -> io::Result<OwnedFd> {
        Ok(std::fs::File::open("/dev/null")?.into())
    }

    #[test]
    fn least_recently_used_file_is_closed_first() {
        let mut c = FdCache::new(2);
        let a = c.get("a", devnull).unwrap();
        c.get("b", devnull).unwrap();
        // "a" used again: "b" is now the oldest
        let a2 = c.get("a", || panic!("a is open")).unwrap();
        assert_eq!(a.as_raw_fd(), a2.as_raw_fd());
        c.get("c", devnull).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(
            c.stats(),
            FdCacheStats {
                hits: 1,
                opens: 3,
                evictions: 1
            }
        );
        c.get("a", || panic!("a stays open")).unwrap();
        let mut reopened = false;
        c.get("b", || {
            reopened = true;
            devnull()
        })
        .unwrap();
        assert!(reopened, "b was closed");
    }

    #[test]
    fn a_holder_keeps_an_evicted_file_open() {
        let mut c = FdCache::new(1);
        let a = c.get("a", devnull).unwrap();
        c.get("b", devnull).unwrap();
        assert_eq!(c.len(), 1);
        // the cache let "a" go; the holder's descriptor is still valid
        let r = is_open(&a);
        assert!(r, "evicted descriptor still open while held");
    }

    fn is_open(fd: &OwnedFd) -> bool {
        // fstat of a duplicate: fails with EBADF when the descriptor was closed
        fd.try_clone()
            .map(std::fs::File::from)
            .and_then(|f| f.metadata())
            .is_ok()
    }

    #[test]
    fn insert_replaces_and_remove_takes_out() {
        let mut c = FdCache::new(4);
        let a = c.get("a", devnull).unwrap();
        let b = c.insert("a", devnull().unwrap());
        assert_ne!(a.as_raw_fd(), b.as_raw_fd());
        assert_eq!(c.len(), 1);
        assert!(c.remove("a").is_some());
        assert!(c.remove("a").is_none());
        assert!(c.is_empty());
        assert!(c.get("x", || Err(io::Error::other("no"))).is_err());
        assert!(c.is_empty(), "a failed open caches nothing");
    }
}

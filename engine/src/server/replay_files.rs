//! The replay files a backend keeps open under `storage-layout = journal`
//! (`server.replay-fd-cache`): a [`FdCache`] that opens a match's `live/<id>.rpl.part` on
//! demand with the replay files' options and counts opens and closes in `/metrics`. One per
//! io_uring worker (only its thread uses it), one shared by the blocking backend's
//! connection threads (a lookup holds the lock; the write itself runs outside it).

use super::registry::{Metrics, Registry};
use crate::storage::fdcache::{FdCache, FdCacheStats};
use crate::storage::{io as sio, StoreOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

pub struct ReplayFiles {
    cache: Mutex<FdCache>,
    reg: Arc<Registry>,
    opts: StoreOptions,
}

impl ReplayFiles {
    /// `capacity` open files; `opts`: the replay files' write options (the journal
    /// layout's buffered ones).
    pub fn new(capacity: usize, reg: Arc<Registry>, opts: StoreOptions) -> ReplayFiles {
        ReplayFiles {
            cache: Mutex::new(FdCache::new(capacity)),
            reg,
            opts,
        }
    }

    fn lock(&self) -> MutexGuard<'_, FdCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts what the cache did since `before` into the registry's metrics.
    fn count(&self, before: FdCacheStats, after: FdCacheStats) {
        let m = &self.reg.metrics;
        Metrics::add(&m.replay_fd_opens, after.opens - before.opens);
        Metrics::add(&m.replay_fd_evictions, after.evictions - before.evictions);
    }

    /// Match `id`'s replay file, opened (without creating it) when it is not open.
    pub fn get(&self, id: &str) -> io::Result<Arc<OwnedFd>> {
        let mut c = self.lock();
        let before = c.stats();
        // the path only for a miss: formatting it for every write was ~1% of a worker at
        // 1,000 DS (perf, issue 9)
        let r = c.get(id, || {
            sio::open_for_append(&self.reg.paths.part_path(id), false, &self.opts)
        });
        let after = c.stats();
        drop(c);
        self.count(before, after);
        r
    }

    /// Caches the file a session's `Io::Open` just opened (or created).
    pub fn insert(&self, id: &str, fd: OwnedFd) -> Arc<OwnedFd> {
        let mut c = self.lock();
        let before = c.stats();
        let f = c.insert(id, fd);
        let after = c.stats();
        drop(c);
        self.count(before, after);
        f
    }

    /// Takes match `id`'s file out of the cache for its seal, opened when it is not open.
    pub fn take(&self, id: &str) -> io::Result<Arc<OwnedFd>> {
        if let Some(f) = self.remove(id) {
            return Ok(f);
        }
        let f = sio::open_for_append(&self.reg.paths.part_path(id), false, &self.opts)?;
        Metrics::add(&self.reg.metrics.replay_fd_opens, 1);
        Ok(Arc::new(f))
    }

    /// Takes match `id`'s file out (seal; a failed write leaves its state unknown).
    pub fn remove(&self, id: &str) -> Option<Arc<OwnedFd>> {
        self.lock().remove(id)
    }
}

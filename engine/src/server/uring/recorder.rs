//! The recorder as a [`Service`] of the io_uring driver: DS ingest sessions
//! (`server::session::IngestSession`) and HTTP (`crate::http`) on the same workers.
//!
//! Storage operations of a session map to the ring as follows:
//! - `Io::Write(req)`: the request's aligned bytes are copied into an arena slot (the
//!   worker's registered buffers when `file.register-buffers`; a slot holds a whole
//!   append) and written with `file.write-op` (WRITE / WRITEV / WRITE_FIXED /
//!   WRITEV_FIXED) through `sys::fileops`; a larger append goes in slot-sized pieces one
//!   after the other. With `server.write-buffer=stage`, one write straight from the
//!   staging buffer instead.
//! - `Io::Sync`: IORING_OP_FSYNC with IORING_FSYNC_DATASYNC (group commit: the session
//!   asks once per ack cadence, covering every frame written since).
//! - `Io::Open` and `Io::FinishSeal` (create + directory fsync, a resume scan, truncate +
//!   fdatasync + rename + directory fsyncs) run the blocking backend's std calls on the
//!   storage helper threads ([`StoragePool`]), so no worker loop waits on them; the result
//!   comes back through the worker's inbox and a MSG_RING wake-up (`Service::woken`).
//!
//! HTTP bodies go out with `Io::send_file` (READ/READ_FIXED + SEND/SEND_ZC, or SPLICE, per
//! [net]); a live tail is a chunked stream polled at each tick and after each chunk.

mod ringfiles;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::{ConnId, DriverOptions, FileRef, Io, Opened, Port, Service, Waker, WriteThen};
use crate::http::{self, Body, LiveTail};
use crate::protocol::{self, Msg};
use crate::server::registry::{ConnGuard, Registry};
use crate::server::replay_files::ReplayFiles;
use crate::server::session::{self, IngestSession, SessionConfig};
use crate::server::{ServerContext, ServerError};
use crate::storage::journal::{AppendError, JournalStats, JournalWrite, WriteKind};
use crate::storage::journal_io::JournalFile;
use crate::storage::{self, MatchFile, SealedInfo, WriteReq};
use crate::sys::mem::Slot;
use ringfiles::{Dirs, RingJob};
use std::collections::VecDeque;

/// Threads that run the blocking storage steps of sessions (open, resume scan, seal).
struct StoragePool {
    tx: Mutex<mpsc::Sender<Box<dyn FnOnce() + Send>>>,
}

/// Storage helper threads (the steps are rare and mostly wait on the disk).
const STORAGE_THREADS: usize = 2;

impl StoragePool {
    /// `threads` helper threads named `name-<i>`.
    fn start(name: &str, threads: usize) -> Result<Arc<StoragePool>, ServerError> {
        let (tx, rx) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || loop {
                    // Ends when every sender (the workers' recorders) is gone.
                    let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                })
                .map_err(|e| ServerError(format!("cannot start a storage thread: {e}")))?;
        }
        Ok(Arc::new(StoragePool { tx: Mutex::new(tx) }))
    }

    /// Runs `job` on a helper thread; false when the helpers are gone.
    fn run(&self, job: Box<dyn FnOnce() + Send>) -> bool {
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .is_ok()
    }
}

/// A storage step's result, waiting for the worker.
enum StorageDone {
    Opened(io::Result<(OwnedFd, Option<MatchFile>)>),
    Sealed(io::Result<SealedInfo>),
    /// A journal checkpoint's syncfs of the store finished (redo LSN, result).
    CheckpointSynced(u64, io::Result<()>),
    /// The object-store tier finished what an HTTP request waited for (`Body::Wait`).
    Tier,
}

/// Tokens of the worker journal's file operations: file tokens carry 56 bits, and a
/// connection id this high would need a slot index near 2^32 (connections per worker are
/// bounded far below).
const TOKEN_JOURNAL_WRITE: u64 = (1 << 56) - 2;
const TOKEN_JOURNAL_SYNC: u64 = (1 << 56) - 3;
/// Inbox id of journal results (not a connection).
const JOURNAL_INBOX: ConnId = ConnId(u64::MAX - 3);

/// The worker's journal (`storage-layout = journal`): its flushes go through this worker's
/// ring (arena slots, `file.write-op`, registered buffers when configured), one in flight.
struct WorkerJournal {
    n: usize,
    file: JournalFile,
    /// The write in flight (and whether its fdatasync was issued).
    in_flight: Option<(JournalWrite, bool)>,
    /// Sessions waiting for their append to become durable, in LSN order.
    waiters: VecDeque<(u64, ConnId)>,
    /// Sessions whose append found the journal full, in arrival order.
    full: VecDeque<ConnId>,
    /// A checkpoint's store sync runs on this worker's checkpoint thread.
    syncing: bool,
    ckpt_pool: Option<Arc<StoragePool>>,
    /// Set when the journal fills up during a checkpoint: its writeback stops pacing.
    hurry: Arc<std::sync::atomic::AtomicBool>,
    reported: JournalStats,
    /// How ring requests name the journal file (its registered-file slot with
    /// file.register-files), set at its first write.
    fref: Option<FileRef>,
}

type Inbox = Arc<Mutex<Vec<(ConnId, StorageDone)>>>;

/// `recorder serve --backend uring`.
pub fn run_server(ctx: ServerContext) -> Result<(), ServerError> {
    let ServerContext {
        cfg,
        registry,
        session,
        ingest,
        http,
        shutdown,
        journals,
    } = ctx;
    let journals: Mutex<Vec<Option<JournalFile>>> =
        Mutex::new(journals.into_iter().map(Some).collect());
    let ingest_addr = ingest
        .local_addr()
        .map_err(|e| ServerError(e.to_string()))?;
    let http_addr = http.local_addr().map_err(|e| ServerError(e.to_string()))?;
    let workers = if cfg.server.workers == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        cfg.server.workers as usize
    };
    let per_worker =
        (cfg.server.max_connections as usize + cfg.server.http_max_connections as usize).max(16);
    let http_timeout = Duration::from_millis(cfg.server.http_timeout_ms);
    let opts = DriverOptions {
        ingest_addr,
        http_addr,
        workers,
        // Each worker may end up with every connection (reuseport hashing is not even).
        max_connections_per_worker: per_worker,
        // ... and with every match file plus a replay per HTTP connection
        // (`Io::register_file` with file.register-files).
        max_files_per_worker: (cfg.server.max_matches as usize
            + cfg.server.http_max_connections as usize)
            .max(16),
        // Sessions time out themselves (idle-timeout-ms with a protocol error), HTTP in
        // the service (http-timeout-ms): no silent driver-level closes.
        idle_timeout: Duration::ZERO,
        // A DS that stops reading its acks, or an HTTP client that stops reading its
        // download, is cut off like the blocking backend's write timeouts do.
        send_timeout_ingest: Duration::from_millis(cfg.server.idle_timeout_ms),
        send_timeout_http: http_timeout,
        tick: Duration::from_millis(10),
        shutdown_grace: Duration::from_secs(20),
    };
    if cfg.file.prealloc && cfg.file.prealloc_mode == crate::config::file::PreallocMode::WriteZeroes
    {
        crate::sys::features::fallocate_write_zeroes(&registry.paths.root).map_err(|e| {
            ServerError(format!(
                "unsupported: file.prealloc-mode=write-zeroes: FALLOC_FL_WRITE_ZEROES on the store {} is refused ({e}); it needs Linux 6.17+ and a device with unmap write-zeroes (/sys/block/<dev>/queue/write_zeroes_unmap_max_bytes > 0): use prealloc-mode=keep-size",
                registry.paths.root.display()
            ))
        })?;
    }
    let handle = Arc::new(super::Handle::default());
    let http_max = cfg.server.http_max_request_bytes as usize;
    let pool = StoragePool::start("storage", STORAGE_THREADS)?;
    // One checkpoint thread per journal: a checkpoint's writeback is spread over most of
    // its interval (journal-checkpoint-spread-pct), which must not hold a storage thread
    // that opens and seals matches.
    let mut ckpt_pools = Vec::new();
    for w in 0..workers {
        let has_journal = journals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(w)
            .is_some_and(Option::is_some);
        ckpt_pools.push(if has_journal {
            Some(StoragePool::start(&format!("ckpt{w}"), 1)?)
        } else {
            None
        });
    }
    let make = |w: usize| {
        let mut r = Recorder::new(w, registry.clone(), session.clone(), http_max, http_timeout);
        r.pool = Some(pool.clone());
        let jf = journals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(w)
            .and_then(Option::take);
        r.inline_replay = jf.is_some() && crate::server::fds::replay_inline(&cfg);
        r.files = crate::server::fds::uses_fd_cache(&cfg).then(|| {
            Arc::new(ReplayFiles::new(
                cfg.server.replay_fd_cache as usize,
                registry.clone(),
                session.store.clone(),
            ))
        });
        r.journal = jf.map(|file| WorkerJournal {
            n: w,
            file,
            ckpt_pool: ckpt_pools.get(w).cloned().flatten(),
            hurry: Default::default(),
            in_flight: None,
            waiters: VecDeque::new(),
            full: VecDeque::new(),
            syncing: false,
            reported: JournalStats::default(),
            fref: None,
        });
        r
    };
    let r = super::run(
        &cfg,
        &opts,
        Some((ingest, http)),
        make,
        shutdown,
        handle.clone(),
    );
    r.map_err(|e| ServerError(format!("io_uring backend: {e}")))
}

enum Pending {
    None,
    /// A match-file write in pieces of one arena slot each: `next` is the first piece not
    /// yet issued (it waits for a free slot when the arena is empty).
    Write {
        req: WriteReq,
        next: usize,
        total: usize,
        in_flight: usize,
        err: Option<io::Error>,
    },
    /// A match-file write straight from the staging buffer, in one operation: the buffer
    /// is with the kernel, these are the rest of its `WriteReq`.
    WriteVec {
        offset: u64,
        end: u64,
        last_seq: u64,
        first_seq: u64,
        start: usize,
        len: usize,
        align: usize,
        direct: bool,
    },
    Sync,
    /// An open or seal on a storage helper thread.
    Storage,
    /// storage-layout=journal: the replay-file write completed and is journaled; it is
    /// reported done when a journal flush covering it is durable.
    Journal {
        req: WriteReq,
    },
    /// ... or it waits for journal space (a checkpoint).
    JournalFull {
        req: WriteReq,
    },
    /// A bulk write bypassing the journal (`journal-bypass-bytes`): its file's fdatasync
    /// (`_hold`: the replay-fd-cache's descriptor, kept open until the fdatasync is done).
    BypassSync {
        req: WriteReq,
        _hold: Option<Arc<OwnedFd>>,
    },
    /// The new match file's preallocation (IORING_OP_FALLOCATE); then `open_done`.
    /// `_hold`: with the replay-fd-cache, the file, held until the FALLOCATE is done.
    Prealloc {
        st: Option<MatchFile>,
        _hold: Option<Arc<OwnedFd>>,
    },
    /// An open or seal carried out with the ring (file.file-ops = ring).
    Ring(RingJob),
}

struct Ds {
    sess: IngestSession,
    file: Option<std::os::fd::OwnedFd>,
    /// How ring requests name the file: its slot in the registered-file table
    /// (file.register-files) or its fd.
    fref: Option<FileRef>,
    /// The last write went out linked to an fdatasync (file.link-sync) and both are done:
    /// the session's next Sync is already satisfied.
    synced: bool,
    /// The write in flight carries a linked fdatasync.
    synced_pending: bool,
    /// Bytes to preallocate through the ring once a new match file is open.
    prealloc: u64,
    pending: Pending,
    /// Still attached to a connection (false: the socket is gone, the session flushes).
    attached: bool,
    paused: bool,
    /// In `Recorder::waiting_for_slots` (a write piece found the arena empty).
    waiting: bool,
    /// The deadline of this session's live entry in `Recorder::timers` (entries with
    /// another time are stale and skipped when they come up).
    armed: Option<Instant>,
    /// A bulk match's O_DIRECT write through the ring (journal layout with the
    /// replay-fd-cache): the cache's descriptor, held (and named by `fref`) until the write
    /// and its fdatasync are done.
    direct_hold: Option<Arc<OwnedFd>>,
    _guard: Option<ConnGuard>,
}

impl Ds {
    /// Ends a held O_DIRECT write's use of the cache's descriptor (see `direct_hold`).
    fn take_direct_hold(&mut self) -> Option<Arc<OwnedFd>> {
        let h = self.direct_hold.take();
        if h.is_some() {
            self.fref = None;
        }
        h
    }
}

struct Live {
    tail: LiveTail,
    file: Arc<File>,
    chunk_in_flight: bool,
    close_after: bool,
    exchange: http::Exchange,
}

struct Http {
    _guard: Option<ConnGuard>,
    /// The client's address, for the access log (None for a direct socket).
    peer: Option<std::net::SocketAddr>,
    buf: Vec<u8>,
    request_started: Option<Instant>,
    idle_since: Instant,
    live: Option<Live>,
    files_in_flight: usize,
    /// The requests whose file bodies are in flight, oldest first (sends complete in order).
    file_exchanges: std::collections::VecDeque<http::Exchange>,
    closing: bool,
    /// A request waiting for the object-store tier; routed again when it posts `Tier`.
    waiting: Option<http::Request>,
}

enum Conn {
    Ds(Box<Ds>),
    Http(Box<Http>),
    /// Refused at open: an error is on its way, then close.
    Refused,
}

const TOKEN_BODY: u64 = 1;
const TOKEN_LIVE: u64 = 2;

/// One worker's recorder.
pub struct Recorder {
    worker: usize,
    reg: Arc<Registry>,
    scfg: Arc<SessionConfig>,
    http_max: usize,
    http_timeout: Duration,
    conns: HashMap<ConnId, Conn>,
    /// Sessions whose socket is gone but whose storage work is not finished.
    detached: HashMap<ConnId, Box<Ds>>,
    /// Sessions whose write waits for arena slots, retried as file ops complete.
    waiting_for_slots: Vec<ConnId>,
    shutting_down: bool,
    /// Helper threads for open/seal; `None` runs them inline (tests of the service alone).
    pool: Option<Arc<StoragePool>>,
    inbox: Inbox,
    journal: Option<WorkerJournal>,
    /// `server.replay-write = inline` (journal layout): replay-file writes are pwrites
    /// on this thread instead of ring writes.
    inline_replay: bool,
    /// The store's directories for FSYNC (file.file-ops = ring), opened at first use.
    dirs: Option<Arc<Dirs>>,
    /// The worker's replay-fd-cache (storage-layout=journal with inline replay writes):
    /// sessions do not hold their replay file, each operation looks it up here.
    files: Option<Arc<ReplayFiles>>,
    /// Session deadlines (idle timeouts, due writes, claim retries), earliest first, with
    /// lazy deletion: an entry is live while it equals its session's `armed`. Replaces a
    /// scan of every session's deadline per loop turn (7.6% of the worker at 1,000 DS).
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Next sweep of HTTP timeouts, live tails and detached sessions ([`SWEEP_EVERY`]).
    next_sweep: Option<Instant>,
}

/// How often `tick` looks at every connection (HTTP timeouts, live tails, detached
/// sessions); session timers come from `Recorder::timers` in between.
const SWEEP_EVERY: Duration = Duration::from_millis(10);

impl Recorder {
    pub fn new(
        worker: usize,
        reg: Arc<Registry>,
        scfg: Arc<SessionConfig>,
        http_max: usize,
        http_timeout: Duration,
    ) -> Recorder {
        Recorder {
            worker,
            reg,
            scfg,
            http_max,
            http_timeout,
            conns: HashMap::new(),
            detached: HashMap::new(),
            waiting_for_slots: Vec::new(),
            shutting_down: false,
            pool: None,
            inbox: Arc::new(Mutex::new(Vec::new())),
            journal: None,
            inline_replay: false,
            dirs: None,
            files: None,
            timers: BinaryHeap::new(),
            next_sweep: None,
        }
    }

    /// A replay-file write of session `id` finished. Per-match layout: report it. Journal
    /// layout: journal it; it is reported when the journal flush that holds it is durable.
    fn replay_written(&mut self, id: ConnId, req: WriteReq, r: io::Result<()>, io: &mut Io) {
        let hold = self.ds_mut(id).and_then(|ds| ds.take_direct_hold());
        if self.journal.is_none() || r.is_err() {
            let files = self.files.clone();
            if let Some(ds) = self.ds_mut(id) {
                if let (Err(_), Some(_), Some(c)) = (&r, &hold, &files) {
                    c.remove(ds.sess.match_id()); // its state is unknown now
                }
                ds.sess.write_done(req, r);
            }
            return;
        }
        if self.scfg.bypasses_journal(&req) {
            if let Some(ds) = self.ds_mut(id) {
                bypass_sync(ds, id, req, io, hold);
            }
            return;
        }
        drop(hold);
        self.journal_append(id, req);
        self.pump_journal(io);
    }

    fn journal_append(&mut self, id: ConnId, req: WriteReq) {
        let Some(wj) = self.journal.as_mut() else {
            return;
        };
        let ds = match self.conns.get_mut(&id) {
            Some(Conn::Ds(d)) => &mut **d,
            _ => match self.detached.get_mut(&id) {
                Some(d) => &mut **d,
                None => return,
            },
        };
        journal_append_to(wj, ds, id, req);
    }

    /// Issues the journal's next write (a flush or a checkpoint slot) when one is due and
    /// none is in flight, and starts a checkpoint when one is due.
    fn pump_journal(&mut self, io: &mut Io) {
        let now = io.now();
        let inbox = self.inbox.clone();
        let Some(wj) = self.journal.as_mut() else {
            return;
        };
        if wj.syncing && wj.file.journal.filling() {
            wj.hurry.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if wj.in_flight.is_none() && wj.file.journal.write_due_at().is_some_and(|t| t <= now) {
            if let Some(mut slot) = io.alloc_slot() {
                let cap = slot.capacity();
                slot.set_len(cap);
                match wj.file.journal.take_write(now, slot.as_mut_slice()) {
                    Some(w) => {
                        slot.set_len(w.len);
                        let fd = match wj.fref {
                            Some(r) => r,
                            None => {
                                let raw = wj.file.fd.as_raw_fd();
                                let r = io.register_file(raw).unwrap_or_else(|e| {
                                    tracing::error!("journal: cannot install the journal in the registered-file table ({e}); its writes name it by fd");
                                    FileRef::Fd(raw)
                                });
                                wj.fref = Some(r);
                                r
                            }
                        };
                        // file.link-sync: the flush's fdatasync goes out linked to it, one
                        // completion for both (else it follows the write's completion).
                        let linked = io.link_sync() && wj.file.io.needs_fdatasync();
                        if linked {
                            let then = WriteThen::Sync { datasync: true };
                            let fl = wj.file.io.rw_flags();
                            io.write_then(fd, slot, w.len, w.offset, fl, then, TOKEN_JOURNAL_WRITE);
                        } else {
                            io.write(
                                fd,
                                None,
                                slot,
                                w.len,
                                w.offset,
                                wj.file.io.rw_flags(),
                                TOKEN_JOURNAL_WRITE,
                            );
                        }
                        wj.in_flight = Some((w, linked));
                    }
                    None => drop(slot),
                }
            }
            // no free slot: retried when a file operation returns one, or at the tick
        }
        if !wj.syncing
            && wj
                .file
                .journal
                .checkpoint_due_at()
                .is_some_and(|t| t <= now)
        {
            // This worker's matches only: the syncfs that ends the checkpoint makes every
            // file durable, the per-file writeback before it only paces the data, and the
            // other workers pace theirs.
            let live = self.live_part_paths();
            let root = self.reg.paths.root.clone();
            let Some(wj) = self.journal.as_mut() else {
                return;
            };
            let spread = wj.file.journal.checkpoint_spread();
            let hurry = wj.hurry.clone();
            hurry.store(false, std::sync::atomic::Ordering::Relaxed);
            let redo = wj.file.journal.begin_checkpoint();
            let delay = wj.file.journal.options().test_checkpoint_delay;
            let job = move || {
                if !delay.is_zero() {
                    std::thread::sleep(delay); // TEST ONLY (test-checkpoint-delay-ms)
                }
                storage::journal_io::sync_store(&root, &live, spread, &hurry)
            };
            match wj.ckpt_pool.clone() {
                Some(p) => {
                    wj.syncing = true;
                    let waker = io.waker();
                    if !p.run(Box::new(move || {
                        let r = job();
                        post(
                            &inbox,
                            &waker,
                            JOURNAL_INBOX,
                            StorageDone::CheckpointSynced(redo, r),
                        );
                    })) {
                        wj.syncing = false;
                        wj.file.journal.checkpoint_synced(redo, false, now);
                    }
                }
                None => {
                    let r = job();
                    wj.file.journal.checkpoint_synced(redo, r.is_ok(), now);
                }
            }
        }
    }

    /// The replay files of the live matches this worker holds (connected or detached): what
    /// its checkpoints write back before their syncfs.
    fn live_part_paths(&self) -> Vec<std::path::PathBuf> {
        let connected = self.conns.values().filter_map(|c| match c {
            Conn::Ds(d) => Some(&**d),
            _ => None,
        });
        connected
            .chain(self.detached.values().map(|d| &**d))
            .map(|d| d.sess.match_id())
            .filter(|id| !id.is_empty())
            .map(|id| self.reg.paths.part_path(id))
            .collect()
    }

    /// A journal file operation completed.
    fn journal_done(&mut self, token: u64, res: io::Result<u32>, io: &mut Io) {
        let Some(wj) = self.journal.as_mut() else {
            return;
        };
        let Some((w, synced)) = wj.in_flight.take() else {
            return;
        };
        let mut result = match res {
            Err(e) => Err(format!(
                "journal {} write failed: {e}",
                wj.file.path.display()
            )),
            Ok(n) if token == TOKEN_JOURNAL_WRITE && n as usize != w.len => Err(format!(
                "journal {}: short write, {n} of {} bytes",
                wj.file.path.display(),
                w.len
            )),
            Ok(_) => Ok(()),
        };
        if result.is_ok() && token == TOKEN_JOURNAL_WRITE && wj.file.io.needs_fdatasync() && !synced
        {
            let fd = wj.fref.unwrap_or(FileRef::Fd(wj.file.fd.as_raw_fd()));
            io.fsync(fd, true, TOKEN_JOURNAL_SYNC);
            wj.in_flight = Some((w, true));
            return;
        }
        if let Err(e) = &result {
            tracing::error!("storage: {e}");
        } else {
            result = Ok(());
        }
        let now = io.now();
        wj.file.journal.write_done(w, result, now);
        let st = wj.file.journal.stats();
        let j = &wj.file.journal;
        self.reg.metrics.journal(
            wj.n,
            &wj.reported,
            &st,
            crate::server::registry::JournalGauge {
                occupancy_bytes: j.occupancy(),
                capacity_bytes: j.capacity(),
                last_checkpoint_unix_us: storage::now_unix_us()
                    .saturating_sub(j.checkpoint_age(now).as_micros() as u64),
            },
        );
        wj.reported = st;
        let durable = j.durable();
        let failed = j.failed().map(str::to_string);
        let mut ready = Vec::new();
        while let Some(&(lsn, id)) = wj.waiters.front() {
            if lsn > durable && failed.is_none() {
                break;
            }
            wj.waiters.pop_front();
            ready.push(id);
        }
        let retry: Vec<ConnId> = if matches!(w.kind, WriteKind::Slot { .. }) || failed.is_some() {
            wj.full.drain(..).collect()
        } else {
            Vec::new()
        };
        for id in ready {
            if let Some(ds) = self.ds_mut(id) {
                if let Pending::Journal { .. } = ds.pending {
                    let Pending::Journal { req, .. } =
                        std::mem::replace(&mut ds.pending, Pending::None)
                    else {
                        unreachable!()
                    };
                    let r = match &failed {
                        Some(e) => Err(io::Error::other(e.clone())),
                        None => Ok(()),
                    };
                    ds.sess.write_done(req, r);
                }
            }
            self.drive(id, io);
        }
        for id in retry {
            let Some(ds) = self.ds_mut(id) else { continue };
            if let Pending::JournalFull { .. } = ds.pending {
                let Pending::JournalFull { req } =
                    std::mem::replace(&mut ds.pending, Pending::None)
                else {
                    unreachable!()
                };
                self.journal_append(id, req);
                if matches!(self.ds_mut(id).map(|d| &d.pending), Some(Pending::None)) {
                    self.drive(id, io);
                }
            }
        }
        self.pump_journal(io);
    }

    fn ds_mut(&mut self, id: ConnId) -> Option<&mut Ds> {
        match self.conns.get_mut(&id) {
            Some(Conn::Ds(d)) => Some(d),
            _ => self.detached.get_mut(&id).map(|b| &mut **b),
        }
    }

    /// Runs the session's storage operations until one is asynchronous or none is due,
    /// sends its output, closes when it is finished.
    /// Retries writes that waited for arena slots, in arrival order, until the arena is
    /// empty again (retrying every waiter on every completion would be O(waiters) per
    /// completion, O(n^2) under load).
    fn retry_waiting(&mut self, io: &mut Io) {
        if self.waiting_for_slots.is_empty() {
            return;
        }
        let mut waiting = std::mem::take(&mut self.waiting_for_slots);
        let mut done = 0;
        while done < waiting.len() {
            let w = waiting[done];
            done += 1;
            match self.ds_mut(w) {
                Some(ds) => ds.waiting = false,
                None => continue,
            }
            self.drive(w, io);
            if self.ds_mut(w).is_some_and(|ds| ds.waiting) {
                break; // out of slots again: the rest keep their place
            }
        }
        waiting.drain(..done);
        waiting.append(&mut self.waiting_for_slots);
        self.waiting_for_slots = waiting;
    }

    fn drive(&mut self, id: ConnId, io: &mut Io) {
        let reg = self.reg.clone();
        let rw_flags = self.scfg.store.rw_flags();
        let mut queued = std::mem::take(&mut self.waiting_for_slots);
        let mut journal = self.journal.take();
        self.drive_inner(id, io, &reg, rw_flags, &mut queued, &mut journal);
        self.journal = journal;
        self.waiting_for_slots = queued;
        if self.journal.is_some() {
            self.pump_journal(io);
        }
        self.arm(id);
    }

    /// Puts session `id`'s deadline in `timers` when it is earlier than the entry it has
    /// (a later one is found when the earlier entry comes up: lazy deletion).
    fn arm(&mut self, id: ConnId) {
        let Some(ds) = self.ds_mut(id) else { return };
        let Some(d) = ds.sess.deadline() else { return };
        if ds.armed.is_some_and(|a| a <= d) {
            return;
        }
        ds.armed = Some(d);
        self.timers.push(Reverse((d, id.0)));
        let live = self.conns.len() + self.detached.len();
        if self.timers.len() > 4 * live + 1024 {
            // mostly stale entries: keep the live ones
            let conns = &self.conns;
            let detached = &self.detached;
            self.timers.retain(|Reverse((t, raw))| {
                let ds = match conns.get(&ConnId(*raw)) {
                    Some(Conn::Ds(d)) => Some(&**d),
                    _ => detached.get(&ConnId(*raw)).map(|b| &**b),
                };
                ds.is_some_and(|d| d.armed == Some(*t))
            });
        }
    }

    /// Runs the session timers that are due: `on_timer` and a drive for a session whose
    /// deadline passed, a new entry for one whose deadline moved later. Entries armed
    /// while this runs wait for the next call (a deadline that stays in the past cannot
    /// keep it looping).
    fn run_timers(&mut self, io: &mut Io) {
        let now = io.now();
        let mut due = Vec::new();
        while let Some(&Reverse((t, raw))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let id = ConnId(raw);
            let Some(ds) = self.ds_mut(id) else { continue };
            if ds.armed != Some(t) {
                continue; // stale
            }
            ds.armed = None;
            due.push(id);
        }
        for id in due {
            let Some(ds) = self.ds_mut(id) else { continue };
            if ds.sess.deadline().is_some_and(|d| d <= now) {
                ds.sess.on_timer(now);
                self.drive(id, io);
            } else {
                self.arm(id);
            }
        }
    }

    fn drive_inner(
        &mut self,
        id: ConnId,
        io: &mut Io,
        reg: &Arc<Registry>,
        rw_flags: i32,
        queued: &mut Vec<ConnId>,
        journal: &mut Option<WorkerJournal>,
    ) {
        let (pool, inbox) = (self.pool.clone(), self.inbox.clone());
        let inline = self.inline_replay;
        let files = self.files.clone();
        let ring_ops = io.ring_file_ops();
        if ring_ops && self.dirs.is_none() {
            match ringfiles::open_dirs(reg) {
                Ok(d) => self.dirs = Some(Arc::new(d)),
                Err(e) => {
                    tracing::warn!(
                        "recorder: file-ops=ring: cannot open the store directories: {e}"
                    )
                }
            }
        }
        let Some(ds) = self.ds_mut(id) else { return };
        let now = io.now();
        if matches!(ds.pending, Pending::Write { in_flight: 0, .. }) {
            issue_more(ds, id, io, rw_flags, queued);
        }
        if let Pending::Ring(RingJob::SealWaitSlot { len }) = ds.pending {
            ringfiles::seal(ds, len, id, io, queued);
        }
        while matches!(ds.pending, Pending::None) {
            let Some(op) = ds.sess.next_io(now) else {
                break;
            };
            match op {
                session::Io::Open {
                    create,
                    rescan,
                    mut options,
                    ..
                } => {
                    let mid = ds.sess.match_id().to_string();
                    let paths = reg.paths.clone();
                    // Preallocation goes through the ring (IORING_OP_FALLOCATE) once the
                    // file is open (`opened`), not on the storage thread.
                    ds.prealloc = if create {
                        std::mem::take(&mut options.prealloc_bytes)
                    } else {
                        0
                    };
                    if ring_ops && create && !rescan {
                        ringfiles::create(ds, id, reg, &options, io);
                        continue;
                    }
                    let open = move || {
                        storage::io::open_match(&paths, &mid, create, rescan, &options, u32::MAX)
                    };
                    match &pool {
                        Some(p) => {
                            let (inbox, waker) = (inbox.clone(), io.waker());
                            ds.pending = Pending::Storage;
                            if !p.run(Box::new(move || {
                                let r = open();
                                post(&inbox, &waker, id, StorageDone::Opened(r));
                            })) {
                                ds.pending = Pending::None;
                                ds.sess
                                    .open_done(Err(io::Error::other("storage threads stopped")));
                            }
                        }
                        None => match open() {
                            Ok((f, st)) => opened(ds, f, st, id, io, files.as_deref()),
                            Err(e) => ds.sess.open_done(Err(e)),
                        },
                    }
                }
                session::Io::Write(req) if inline && req.direct => {
                    // A bulk match's O_DIRECT write goes through the ring, as per-match
                    // writes do: the device time is not spent on this thread.
                    let f = match (&files, &ds.file) {
                        (Some(c), _) => c.get(ds.sess.match_id()).map(Some),
                        (None, Some(_)) => Ok(None),
                        (None, None) => Err(io::Error::other("match file is not open")),
                    };
                    let f = f.and_then(|f| {
                        match (&f, &ds.file) {
                            (Some(f), _) => storage::io::set_direct(f)?,
                            (None, Some(own)) => storage::io::set_direct(own)?,
                            (None, None) => unreachable!("checked above"),
                        }
                        Ok(f)
                    });
                    match f {
                        Ok(Some(f)) => {
                            ds.fref = Some(FileRef::Fd(f.as_raw_fd()));
                            ds.direct_hold = Some(f);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            if let Some(c) = &files {
                                c.remove(ds.sess.match_id());
                            }
                            ds.sess.write_done(req, Err(e));
                            continue;
                        }
                    }
                    issue_write(ds, req, id, io, 0, queued);
                }
                session::Io::Write(req) if inline => {
                    // a buffered page-cache write: cheaper here than a hand-off to io-wq
                    let f = match (&files, &ds.file) {
                        (Some(c), _) => c.get(ds.sess.match_id()).map(Some),
                        (None, Some(_)) => Ok(None),
                        (None, None) => Err(io::Error::other("match file is not open")),
                    };
                    let r = match (&f, &ds.file) {
                        (Ok(Some(f)), _) => storage::io::write_req(f, &req, 0, false),
                        (Ok(None), Some(f)) => storage::io::write_req(f, &req, 0, false),
                        (Ok(None), None) => unreachable!("checked above"),
                        (Err(e), _) => Err(io::Error::new(e.kind(), e.to_string())),
                    };
                    match (r, journal.as_mut()) {
                        (Ok(()), Some(_)) if ds.sess.config().bypasses_journal(&req) => {
                            bypass_sync(ds, id, req, io, f.ok().flatten())
                        }
                        (Ok(()), Some(wj)) => journal_append_to(wj, ds, id, req),
                        (r, _) => {
                            if let (Err(_), Some(c)) = (&r, &files) {
                                c.remove(ds.sess.match_id()); // its state is unknown now
                            }
                            ds.sess.write_done(req, r)
                        }
                    }
                }
                session::Io::Write(req) => issue_write(ds, req, id, io, rw_flags, queued),
                session::Io::Sync if ds.synced => {
                    // The fdatasync linked to the last write (file.link-sync) covers it.
                    ds.synced = false;
                    ds.sess.sync_done(Ok(()));
                }
                session::Io::Sync => match ds.fref {
                    Some(f) => {
                        io.fsync(f, true, id.0);
                        ds.pending = Pending::Sync;
                    }
                    None => ds
                        .sess
                        .sync_done(Err(io::Error::other("match file is not open"))),
                },
                session::Io::FinishSeal { len, .. } if ring_ops => {
                    ringfiles::seal(ds, len, id, io, queued);
                }
                session::Io::FinishSeal { len, .. } => {
                    let mid = ds.sess.match_id().to_string();
                    let paths = reg.paths.clone();
                    if let Some(r) = ds.fref.take() {
                        io.unregister_file(r);
                    }
                    let file = match &files {
                        Some(c) => match c.take(&mid) {
                            Ok(f) => Some(f),
                            Err(e) => {
                                ds.sess.seal_done(Err(e));
                                continue;
                            }
                        },
                        None => ds.file.take().map(Arc::new),
                    };
                    match (file, &pool) {
                        (None, _) => ds
                            .sess
                            .seal_done(Err(io::Error::other("match file is not open"))),
                        (Some(f), None) => {
                            ds.sess
                                .seal_done(storage::io::seal_match(&paths, &mid, &f, len));
                        }
                        (Some(f), Some(p)) => {
                            let (inbox, waker) = (inbox.clone(), io.waker());
                            ds.pending = Pending::Storage;
                            if !p.run(Box::new(move || {
                                let r = storage::io::seal_match(&paths, &mid, &f, len);
                                drop(f);
                                post(&inbox, &waker, id, StorageDone::Sealed(r));
                            })) {
                                ds.pending = Pending::None;
                                ds.sess
                                    .seal_done(Err(io::Error::other("storage threads stopped")));
                            }
                        }
                    }
                }
            }
        }
        if ds.sess.has_output() {
            let out = ds.sess.take_output();
            if ds.attached {
                io.send(id, out);
            }
        }
        let idle = matches!(ds.pending, Pending::None);
        if ds.sess.is_finished() && idle {
            if let Some(c) = &files {
                // the cache holds files of this worker's sessions only: a match sealed or
                // deleted later (elsewhere) must not stay open here
                c.remove(ds.sess.match_id());
            }
            if ds.attached {
                io.close(id);
            } else if let Some(mut ds) = self.detached.remove(&id) {
                release_file(&mut ds, io);
            }
            return;
        }
        // Backpressure: stop reading while the session has a full input buffer.
        if ds.attached {
            let want = ds.sess.wants_input();
            if !want && !ds.paused {
                ds.paused = true;
                io.pause_recv(id);
            } else if want && ds.paused {
                ds.paused = false;
                io.resume_recv(id);
            }
        }
    }

    /// A request that waited for the tier: route it again, answer, go on with the
    /// connection's pipelined requests.
    fn tier_ready(&mut self, id: ConnId, io: &mut Io) {
        let reg = self.reg.clone();
        let inbox = self.inbox.clone();
        let Some(Conn::Http(h)) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(req) = h.waiting.take() else { return };
        let resp = http::route_after_wait(&req, &reg);
        h.idle_since = io.now();
        send_or_wait(h, id, req, resp, io, &reg, &inbox);
        self.http_process(id, io);
    }

    fn http_process(&mut self, id: ConnId, io: &mut Io) {
        let reg = self.reg.clone();
        let max = self.http_max;
        let inbox = self.inbox.clone();
        let Some(Conn::Http(h)) = self.conns.get_mut(&id) else {
            return;
        };
        while h.live.is_none() && !h.closing && h.waiting.is_none() {
            match http::parse_request(&h.buf, max) {
                Ok(Some((req, n))) => {
                    h.buf.drain(..n);
                    h.request_started = if h.buf.is_empty() {
                        None
                    } else {
                        Some(io.now())
                    };
                    h.idle_since = io.now();
                    let resp = http::route(&req, &reg);
                    send_or_wait(h, id, req, resp, io, &reg, &inbox);
                }
                Ok(None) => break,
                Err(e) => {
                    reg.metrics.http_errors.fetch_add(1, Ordering::Relaxed);
                    send_response(h, id, http::error_response(&e), io, &reg);
                    break;
                }
            }
        }
        pump_live(h, id, io, &reg);
    }
}

/// Sends a response, or parks the request until the tier's ticket completes (the tier
/// posts `StorageDone::Tier` to this worker's inbox and wakes it; nothing blocks here).
fn send_or_wait(
    h: &mut Http,
    id: ConnId,
    req: http::Request,
    resp: http::Response,
    io: &mut Io,
    reg: &Registry,
    inbox: &Inbox,
) {
    if let Body::Wait(t) = &resp.body {
        h.waiting = Some(req);
        let (inbox, waker) = (inbox.clone(), io.waker());
        t.on_ready(move || post(&inbox, &waker, id, StorageDone::Tier));
        return;
    }
    send_response(h, id, resp, io, reg);
}

/// Journals a completed replay-file write of session `id` (its write is reported done when
/// a flush covering it is durable), or waits for journal space.
fn journal_append_to(wj: &mut WorkerJournal, ds: &mut Ds, id: ConnId, req: WriteReq) {
    let r = wj.file.journal.append(
        ds.sess.match_id(),
        req.first_seq,
        req.last_seq,
        req.offset,
        req.data(),
    );
    match r {
        Ok(lsn) => {
            wj.waiters.push_back((lsn, id));
            ds.pending = Pending::Journal { req };
        }
        Err(AppendError::Full) => {
            wj.full.push_back(id);
            ds.pending = Pending::JournalFull { req };
        }
        Err(AppendError::Failed(e)) => {
            ds.pending = Pending::None;
            ds.sess.write_done(req, Err(io::Error::other(e)));
        }
    }
}

/// A bulk replay-file write made durable in its own file (fdatasync through the ring),
/// written once instead of twice (`journal-bypass-bytes`).
fn bypass_sync(ds: &mut Ds, id: ConnId, req: WriteReq, io: &mut Io, hold: Option<Arc<OwnedFd>>) {
    let fref = match &hold {
        Some(f) => Some(FileRef::Fd(f.as_raw_fd())),
        None => ds.fref,
    };
    match fref {
        Some(f) => {
            io.fsync(f, true, id.0);
            ds.pending = Pending::BypassSync { req, _hold: hold };
        }
        None => ds
            .sess
            .write_done(req, Err(io::Error::other("match file is not open"))),
    }
}

/// A match file is open: name it for the ring (its registered-file slot with
/// file.register-files), preallocate it through the ring when asked, then tell the session.
fn opened(
    ds: &mut Ds,
    f: OwnedFd,
    st: Option<MatchFile>,
    id: ConnId,
    io: &mut Io,
    files: Option<&ReplayFiles>,
) {
    if let Some(c) = files {
        // the replay-fd-cache holds it; a preallocation names it by descriptor, held
        // until the FALLOCATE completes
        let f = c.insert(ds.sess.match_id(), f);
        if ds.prealloc > 0 {
            let n = std::mem::take(&mut ds.prealloc);
            io.fallocate(FileRef::Fd(f.as_raw_fd()), io.prealloc_mode(), 0, n, id.0);
            ds.pending = Pending::Prealloc { st, _hold: Some(f) };
            return;
        }
        return ds.sess.open_done(Ok(st));
    }
    let r = match io.register_file(f.as_raw_fd()) {
        Ok(r) => r,
        Err(e) => return ds.sess.open_done(Err(e)),
    };
    ds.file = Some(f);
    ds.fref = Some(r);
    if ds.prealloc > 0 {
        let n = std::mem::take(&mut ds.prealloc);
        io.fallocate(r, io.prealloc_mode(), 0, n, id.0);
        ds.pending = Pending::Prealloc { st, _hold: None };
        return;
    }
    ds.sess.open_done(Ok(st));
}

/// The session is done with its file: empty its table slot, close it.
fn release_file(ds: &mut Ds, io: &mut Io) {
    if let Some(r) = ds.fref.take() {
        io.unregister_file(r);
    }
    ds.file = None;
}

/// Hands a storage result to its worker and wakes it.
fn post(inbox: &Inbox, waker: &Waker, id: ConnId, done: StorageDone) {
    inbox
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((id, done));
    waker.wake();
}

fn issue_write(
    ds: &mut Ds,
    req: WriteReq,
    id: ConnId,
    io: &mut Io,
    rw_flags: i32,
    queued: &mut Vec<ConnId>,
) {
    if ds.fref.is_none() {
        ds.sess
            .write_done(req, Err(io::Error::other("match file is not open")));
        return;
    }
    ds.synced = false;
    let direct = req.direct;
    if io.write_from_stage() {
        // One write of the whole staged range from the staging buffer itself: no copy,
        // one operation (and one inode-lock turn) per append, whatever its size.
        let WriteReq {
            offset,
            buf,
            end,
            last_seq,
            first_seq,
            ..
        } = req;
        let (raw, start, len, align) = buf.into_raw();
        let fd = ds.fref.expect("checked above");
        ds.pending = Pending::WriteVec {
            offset,
            end,
            last_seq,
            first_seq,
            start,
            len,
            align,
            direct,
        };
        io.write_vec(fd, raw, start, len, offset, rw_flags, id.0);
        return;
    }
    let total = req.bytes().len().div_ceil(io.slot_bytes()).max(1);
    ds.pending = Pending::Write {
        req,
        next: 0,
        total,
        in_flight: 0,
        err: None,
    };
    issue_more(ds, id, io, rw_flags, queued);
}

/// Issues the pieces of the pending write for which a slot is free.
fn issue_more(ds: &mut Ds, id: ConnId, io: &mut Io, rw_flags: i32, queued: &mut Vec<ConnId>) {
    let Some(fd) = ds.fref else { return };
    let Pending::Write {
        req,
        next,
        total,
        in_flight,
        err,
    } = &mut ds.pending
    else {
        return;
    };
    if err.is_some() {
        *next = *total; // stop after a failed piece; finish when the rest is back
        return;
    }
    let sb = io.slot_bytes();
    let bytes = req.bytes();
    // One piece in flight per match: pieces of one append extend the same file, and
    // extending writes take the inode lock exclusively (O_DIRECT ones synchronously, in
    // io-wq), so parallel pieces only queue and spin on that lock (seen in perf as
    // rwsem_down_write_slowpath in iou-wrk threads, and 5-10x less ingest throughput).
    while *next < *total && *in_flight == 0 {
        let Some(mut slot) = io.alloc_slot() else {
            break;
        };
        let i = *next;
        let piece = &bytes[i * sb..((i + 1) * sb).min(bytes.len())];
        slot.set_len(piece.len());
        slot.as_mut_slice().copy_from_slice(piece);
        let off = req.offset + (i * sb) as u64;
        // The last piece carries the append's sync step: its fdatasync (file.link-sync)
        // or write-back start (file.write-behind), linked to it in one submission.
        let then = if i + 1 < *total {
            None
        } else if io.link_sync() {
            Some(WriteThen::Sync { datasync: true })
        } else if io.write_behind() {
            Some(WriteThen::WriteBehind)
        } else {
            None
        };
        match then {
            Some(t) => io.write_then(fd, slot, piece.len(), off, rw_flags, t, id.0),
            None => io.write(fd, None, slot, piece.len(), off, rw_flags, id.0),
        }
        if matches!(then, Some(WriteThen::Sync { .. })) {
            ds.synced_pending = true;
        }
        *next += 1;
        *in_flight += 1;
    }
    if *next < *total && *in_flight == 0 && !ds.waiting {
        // Nothing of ours in flight to wake us: retry when any file op returns a slot
        // (or at the next tick). The flag keeps this O(1) with thousands waiting.
        ds.waiting = true;
        queued.push(id);
    }
}

fn send_response(h: &mut Http, id: ConnId, mut resp: http::Response, io: &mut Io, reg: &Registry) {
    let x = std::mem::take(&mut resp.exchange);
    io.send(id, resp.head);
    match resp.body {
        Body::None => x.finish(reg, h.peer, 0, true),
        Body::Bytes(b) => {
            reg.metrics
                .http_bytes
                .fetch_add(b.len() as u64, Ordering::Relaxed);
            x.finish(reg, h.peer, b.len() as u64, true);
            io.send(id, b);
        }
        Body::File { file, offset, len } => {
            if len > 0 {
                h.files_in_flight += 1;
                h.file_exchanges.push_back(x);
                io.send_file(id, Arc::new(file), offset, len, TOKEN_BODY);
            } else {
                x.finish(reg, h.peer, 0, true);
            }
        }
        Body::Wait(_) => {} // handled by send_or_wait
        Body::Live(tail) => match tail.open() {
            Ok(f) => {
                h.live = Some(Live {
                    tail,
                    file: Arc::new(f),
                    chunk_in_flight: false,
                    close_after: resp.close,
                    exchange: x,
                });
                return;
            }
            Err(e) => {
                x.finish(reg, h.peer, 0, false);
                tracing::error!("cannot open the live match file: {e}");
                io.abort(id);
                h.closing = true;
                return;
            }
        },
    }
    if resp.close {
        h.closing = true;
        io.close(id);
    }
}

/// Sends the next live chunk if one is readable, ends the stream when the match is sealed.
fn pump_live(h: &mut Http, id: ConnId, io: &mut Io, reg: &Registry) {
    let Some(live) = h.live.as_mut() else { return };
    if live.chunk_in_flight {
        return;
    }
    let now = io.now();
    if let Some((a, b)) = live.tail.next_range(now) {
        let n = b - a;
        io.send(id, http::chunk_head(n));
        io.send_file(id, live.file.clone(), a, n, TOKEN_LIVE);
        io.send(id, b"\r\n".to_vec());
        live.tail.sent(n);
        live.chunk_in_flight = true;
        return;
    }
    if live.tail.is_done(now) {
        io.send(id, http::CHUNK_END.to_vec());
        reg.metrics
            .http_bytes
            .fetch_add(live.tail.sent, Ordering::Relaxed);
        live.exchange.finish(reg, h.peer, live.tail.sent, true);
        let close = live.close_after;
        h.live = None;
        h.idle_since = now;
        if close {
            h.closing = true;
            io.close(id);
        }
        return;
    }
    if reg.shutting_down() {
        reg.metrics
            .http_bytes
            .fetch_add(live.tail.sent, Ordering::Relaxed);
        live.exchange.finish(reg, h.peer, live.tail.sent, false);
        h.live = None;
        h.closing = true;
        io.close(id);
    }
}

impl Service for Recorder {
    fn open(&mut self, conn: ConnId, port: Port, io: &mut Io) -> bool {
        match port {
            Port::Ingest => match self
                .reg
                .try_ds_connection_behind(io.waiting_elsewhere(Port::Ingest))
            {
                Ok(g) => {
                    let sess = IngestSession::new(self.scfg.clone(), self.reg.clone(), io.now());
                    let ds = Ds {
                        sess,
                        file: None,
                        fref: None,
                        pending: Pending::None,
                        synced: false,
                        synced_pending: false,
                        prealloc: 0,
                        attached: true,
                        paused: false,
                        waiting: false,
                        armed: None,
                        direct_hold: None,
                        _guard: Some(g),
                    };
                    self.conns.insert(conn, Conn::Ds(Box::new(ds)));
                    self.arm(conn); // the HELLO's idle timeout
                    if self.shutting_down {
                        if let Some(Conn::Ds(d)) = self.conns.get_mut(&conn) {
                            d.sess.begin_shutdown();
                        }
                        self.drive(conn, io);
                    }
                    true
                }
                Err((code, text)) => {
                    self.reg.metrics.error(code);
                    let mut out = Vec::new();
                    protocol::encode(
                        &mut out,
                        &Msg::Error {
                            code: code as u16,
                            text: &text,
                        },
                    );
                    io.send(conn, out);
                    self.conns.insert(conn, Conn::Refused);
                    false
                }
            },
            Port::Http => match self.reg.try_http_connection() {
                Some(g) => {
                    let h = Http {
                        _guard: Some(g),
                        peer: io.opening_peer(),
                        buf: Vec::new(),
                        request_started: None,
                        idle_since: io.now(),
                        live: None,
                        files_in_flight: 0,
                        file_exchanges: Default::default(),
                        closing: false,
                        waiting: None,
                    };
                    self.conns.insert(conn, Conn::Http(Box::new(h)));
                    true
                }
                None => {
                    let r = http::error_response(&http::HttpError {
                        status: 503,
                        text: "too many HTTP connections (http-max-connections); retry later"
                            .into(),
                    });
                    io.send(conn, r.head);
                    if let Body::Bytes(b) = r.body {
                        io.send(conn, b);
                    }
                    self.conns.insert(conn, Conn::Refused);
                    false
                }
            },
        }
    }

    fn data(&mut self, conn: ConnId, bytes: &[u8], io: &mut Io) {
        match self.conns.get_mut(&conn) {
            Some(Conn::Ds(ds)) => {
                ds.sess.feed(bytes, io.now());
                self.drive(conn, io);
            }
            Some(Conn::Http(h)) => {
                if h.closing {
                    return;
                }
                if h.request_started.is_none() {
                    h.request_started = Some(io.now());
                }
                h.buf.extend_from_slice(bytes);
                if h.buf.len() > self.http_max + 65536 && h.live.is_some() {
                    // Requests pipelined behind a live stream pile up: refuse more input.
                    io.pause_recv(conn);
                }
                self.http_process(conn, io);
            }
            _ => {}
        }
    }

    fn eof(&mut self, conn: ConnId, io: &mut Io) {
        match self.conns.get_mut(&conn) {
            Some(Conn::Ds(ds)) => {
                ds.sess.peer_closed();
                self.drive(conn, io);
            }
            Some(Conn::Http(h)) => {
                // Answer what was fully received, then close.
                if !h.closing {
                    self.http_process(conn, io);
                }
                if let Some(Conn::Http(h)) = self.conns.get_mut(&conn) {
                    if h.live.is_none() {
                        h.closing = true;
                        io.close(conn);
                    }
                }
            }
            _ => io.close(conn),
        }
    }

    fn dropped(&mut self, _conn: ConnId, port: Port, _why: &str) {
        let m = &self.reg.metrics;
        crate::server::registry::Metrics::add(
            if port == Port::Ingest {
                &m.ds_connections_dropped
            } else {
                &m.http_connections_dropped
            },
            1,
        );
    }

    fn closed(&mut self, conn: ConnId, io: &mut Io) {
        match self.conns.remove(&conn) {
            Some(Conn::Ds(mut ds)) => {
                ds.attached = false;
                if !ds.sess.is_finished() {
                    ds.sess.peer_closed();
                }
                let busy = !matches!(ds.pending, Pending::None);
                if busy || !ds.sess.is_finished() {
                    self.detached.insert(conn, ds);
                    self.drive(conn, io);
                } else {
                    release_file(&mut ds, io);
                }
            }
            Some(Conn::Http(h)) => {
                if let Some(l) = h.live {
                    self.reg
                        .metrics
                        .http_bytes
                        .fetch_add(l.tail.sent, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }

    fn sent_file(&mut self, conn: ConnId, token: u64, res: io::Result<u64>, io: &mut Io) {
        let reg = self.reg.clone();
        let Some(Conn::Http(h)) = self.conns.get_mut(&conn) else {
            return;
        };
        match token {
            TOKEN_LIVE => {
                if let Some(l) = h.live.as_mut() {
                    l.chunk_in_flight = false;
                }
                if res.is_ok() {
                    pump_live(h, conn, io, &reg);
                    if h.live.is_none() && !h.closing {
                        self.http_process(conn, io);
                    }
                }
            }
            _ => {
                h.files_in_flight -= 1;
                if let Ok(n) = res {
                    reg.metrics.http_bytes.fetch_add(n, Ordering::Relaxed);
                }
                if let Some(x) = h.file_exchanges.pop_front() {
                    x.finish(&reg, h.peer, *res.as_ref().unwrap_or(&0), res.is_ok());
                }
                h.idle_since = io.now();
            }
        }
    }

    fn file_done(
        &mut self,
        token: u64,
        res: io::Result<u32>,
        buf: Option<crate::sys::mem::Slot>,
        io: &mut Io,
    ) {
        if token == TOKEN_JOURNAL_WRITE || token == TOKEN_JOURNAL_SYNC {
            drop(buf);
            self.journal_done(token, res, io);
            self.retry_waiting(io);
            return;
        }
        let id = ConnId(token);
        if let Some(ds) = self.ds_mut(id) {
            if matches!(ds.pending, Pending::Ring(_)) {
                let Pending::Ring(job) = std::mem::replace(&mut ds.pending, Pending::None) else {
                    unreachable!()
                };
                let align = if self.scfg.store.direct {
                    self.scfg.store.align as u64
                } else {
                    1
                };
                let reg = self.reg.clone();
                let dirs = self.dirs.clone();
                let Some(ds) = self.ds_mut(id) else { return };
                match dirs {
                    Some(d) => ringfiles::step(ds, job, res, buf, id, &reg, &d, align, io),
                    None => ds.sess.seal_done(Err(io::Error::other(
                        "file-ops=ring: the store directories could not be opened",
                    ))),
                }
                self.drive(id, io);
                self.retry_waiting(io);
                return;
            }
        }
        let piece_len = buf.as_ref().map(|b| b.len());
        drop(buf);
        let rw_flags = self.scfg.store.rw_flags();
        let reg = self.reg.clone();
        let mut queued = std::mem::take(&mut self.waiting_for_slots);
        let Some(ds) = self.ds_mut(id) else {
            self.waiting_for_slots = queued;
            return;
        };
        match &mut ds.pending {
            Pending::Write { in_flight, err, .. } => {
                *in_flight -= 1;
                match res {
                    Err(e) => {
                        err.get_or_insert(e);
                    }
                    Ok(n) if Some(n as usize) != piece_len => {
                        err.get_or_insert(io::Error::new(
                            io::ErrorKind::WriteZero,
                            format!("short write: {n} of {} bytes", piece_len.unwrap_or(0)),
                        ));
                    }
                    Ok(_) => {}
                }
                issue_more(ds, id, io, rw_flags, &mut queued);
                let Pending::Write {
                    next,
                    total,
                    in_flight,
                    ..
                } = &ds.pending
                else {
                    unreachable!()
                };
                if *in_flight > 0 || *next < *total {
                    self.waiting_for_slots = queued;
                    return;
                }
                let Pending::Write { req, err, .. } =
                    std::mem::replace(&mut ds.pending, Pending::None)
                else {
                    unreachable!()
                };
                // A linked fdatasync succeeded with the write: the next Sync is done.
                ds.synced = std::mem::take(&mut ds.synced_pending) && err.is_none();
                self.waiting_for_slots = queued;
                self.replay_written(id, req, err.map_or(Ok(()), Err), io);
                self.drive(id, io);
                self.retry_waiting(io);
                return;
            }
            Pending::Sync => {
                ds.pending = Pending::None;
                ds.sess.sync_done(res.map(|_| ()));
            }
            Pending::BypassSync { .. } => {
                let Pending::BypassSync { req, .. } =
                    std::mem::replace(&mut ds.pending, Pending::None)
                else {
                    unreachable!()
                };
                crate::server::registry::Metrics::add(&reg.metrics.syncs, 1);
                ds.sess.write_done(req, res.map(|_| ()));
            }
            Pending::Prealloc { .. } => {
                let Pending::Prealloc { st, .. } =
                    std::mem::replace(&mut ds.pending, Pending::None)
                else {
                    unreachable!()
                };
                match res {
                    Ok(_) => ds.sess.open_done(Ok(st)),
                    Err(e) => {
                        let e = io::Error::new(
                            e.kind(),
                            format!("preallocating the match file (IORING_OP_FALLOCATE): {e}"),
                        );
                        ds.sess.open_done(Err(e));
                    }
                }
            }
            // A write_vec completes through file_done_vec, never here; ring jobs above.
            Pending::WriteVec { .. }
            | Pending::Storage
            | Pending::None
            | Pending::Ring(_)
            | Pending::Journal { .. }
            | Pending::JournalFull { .. } => {}
        }
        self.waiting_for_slots = queued;
        self.drive(id, io);
        // Slots came back: writes that waited for them go now.
        self.retry_waiting(io);
    }

    fn file_opened(&mut self, token: u64, res: io::Result<Opened>, io: &mut Io) {
        let id = ConnId(token);
        let (reg, dirs) = (self.reg.clone(), self.dirs.clone());
        let Some(ds) = self.ds_mut(id) else { return };
        if !matches!(ds.pending, Pending::Ring(RingJob::Create)) {
            return; // the session is gone; an fd in `res` closes on drop
        }
        match dirs {
            Some(d) => ringfiles::created(ds, res, id, &reg, &d, io),
            None => {
                ds.pending = Pending::None;
                ds.sess.open_done(Err(io::Error::other(
                    "file-ops=ring: the store directories could not be opened",
                )));
            }
        }
        self.drive(id, io);
    }

    fn woken(&mut self, io: &mut Io) {
        let files = self.files.clone();
        let done = std::mem::take(&mut *self.inbox.lock().unwrap_or_else(|e| e.into_inner()));
        for (id, d) in done {
            if let StorageDone::Tier = d {
                self.tier_ready(id, io);
                continue;
            }
            if let StorageDone::CheckpointSynced(redo, r) = d {
                if let Some(wj) = self.journal.as_mut() {
                    wj.syncing = false;
                    if let Err(e) = &r {
                        tracing::error!("storage: checkpoint: {e}; retried at the next interval");
                    }
                    wj.file.journal.checkpoint_synced(redo, r.is_ok(), io.now());
                }
                self.pump_journal(io);
                continue;
            }
            let Some(ds) = self.ds_mut(id) else { continue };
            if !matches!(ds.pending, Pending::Storage) {
                continue;
            }
            ds.pending = Pending::None;
            match d {
                StorageDone::Opened(Ok((f, st))) => opened(ds, f, st, id, io, files.as_deref()),
                StorageDone::Opened(Err(e)) => ds.sess.open_done(Err(e)),
                StorageDone::Sealed(r) => ds.sess.seal_done(r),
                StorageDone::CheckpointSynced(..) => unreachable!("handled above"),
                StorageDone::Tier => unreachable!("handled above"),
            }
            self.drive(id, io);
        }
    }

    fn file_done_vec(&mut self, token: u64, res: io::Result<u32>, raw: Vec<u8>, io: &mut Io) {
        let id = ConnId(token);
        let Some(ds) = self.ds_mut(id) else { return };
        let Pending::WriteVec {
            offset,
            end,
            last_seq,
            first_seq,
            start,
            len,
            align,
            direct,
        } = std::mem::replace(&mut ds.pending, Pending::None)
        else {
            return;
        };
        let result = match res {
            Err(e) => Err(e),
            Ok(n) if n as usize != len => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {n} of {len} bytes"),
            )),
            Ok(_) => Ok(()),
        };
        let buf = if raw.len() >= start + len {
            crate::storage::AlignedBuf::from_raw(raw, start, len, align)
        } else {
            // Only when the ring could not take the write at all (the buffer never
            // reached the kernel and the error is reported below).
            crate::storage::AlignedBuf::with_capacity(0, align)
        };
        let req = WriteReq {
            offset,
            buf,
            end,
            last_seq,
            first_seq,
            direct,
        };
        self.replay_written(id, req, result, io);
        self.drive(id, io);
    }

    fn tick(&mut self, io: &mut Io) {
        self.pump_journal(io);
        self.run_timers(io);
        let now = io.now();
        if !self.shutting_down && self.next_sweep.is_some_and(|t| now < t) {
            self.retry_waiting(io);
            return;
        }
        self.next_sweep = Some(now + SWEEP_EVERY);
        let reg = self.reg.clone();
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| self.shutting_down || !matches!(c, Conn::Ds(_)))
            .map(|(id, _)| *id)
            .chain(self.detached.keys().copied())
            .collect();
        for id in ids {
            match self.conns.get_mut(&id) {
                Some(Conn::Http(h)) => {
                    if h.closing {
                        continue;
                    }
                    if h.live.is_some() {
                        pump_live(h, id, io, &reg);
                        if h.live.is_none() && !h.closing {
                            self.http_process(id, io);
                        }
                        continue;
                    }
                    if h.files_in_flight > 0 || h.waiting.is_some() {
                        continue;
                    }
                    if let Some(t) = h.request_started {
                        if now.duration_since(t) > self.http_timeout {
                            reg.metrics.http_errors.fetch_add(1, Ordering::Relaxed);
                            let e = http::HttpError {
                                status: 408,
                                text: format!(
                                    "request not received within {} ms (http-timeout-ms)",
                                    self.http_timeout.as_millis()
                                ),
                            };
                            send_response(h, id, http::error_response(&e), io, &reg);
                            h.closing = true;
                            io.close(id);
                        }
                    } else if now.duration_since(h.idle_since) > self.http_timeout
                        || self.shutting_down
                    {
                        h.closing = true;
                        io.close(id);
                    }
                }
                Some(Conn::Refused) | None if !self.detached.contains_key(&id) => {}
                _ => {
                    // Session timers ran above; here only detached sessions with nothing
                    // in flight (they finish without socket events) and, at shutdown,
                    // every session. Writes waiting for arena slots are retried in order
                    // by `retry_waiting` below.
                    let due = self
                        .ds_mut(id)
                        .is_some_and(|ds| !ds.attached && matches!(ds.pending, Pending::None));
                    if due || self.shutting_down {
                        self.drive(id, io);
                    }
                }
            }
        }
        // A safety net: normally a returning slot retries the waiters at once.
        self.retry_waiting(io);
    }

    fn next_deadline(&self) -> Option<Instant> {
        let journal = self.journal.as_ref().and_then(|wj| {
            let w = if wj.in_flight.is_none() {
                wj.file.journal.write_due_at()
            } else {
                None
            };
            let c = if wj.syncing {
                None
            } else {
                wj.file.journal.checkpoint_due_at()
            };
            w.into_iter().chain(c).min()
        });
        // the earliest timer entry (a stale one only makes the wait end early)
        let timer = self.timers.peek().map(|Reverse((t, _))| *t);
        timer.into_iter().chain(journal).min()
    }

    fn shutdown(&mut self, io: &mut Io) -> bool {
        if !self.shutting_down {
            self.shutting_down = true;
            if self.worker == 0 {
                self.reg.begin_shutdown();
            }
            let ids: Vec<ConnId> = self.conns.keys().copied().collect();
            for id in ids {
                if let Some(Conn::Ds(ds)) = self.conns.get_mut(&id) {
                    ds.sess.begin_shutdown();
                    self.drive(id, io);
                }
            }
            self.tick(io);
        }
        let ds_left =
            self.conns.values().any(|c| matches!(c, Conn::Ds(_))) || !self.detached.is_empty();
        !ds_left
    }
}

//! The registry: every match the recorder knows (live or sealed), the one-writer-per-match
//! rule, the match and connection limits, live-tail notification and the metrics.
//! Shared by all threads of either backend as `Arc<Registry>`; all methods take `&self`.

use crate::protocol::ErrorCode;
use crate::storage::{FileStats, IndexEntry, MatchFile, SealedInfo, StorePaths};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Limits the registry enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Matches in progress at once (sealed ones do not count).
    pub max_matches: usize,
    /// DS connections at once.
    pub max_connections: usize,
    /// HTTP connections at once.
    pub http_max_connections: usize,
    /// Longest `?delay_ms` a live viewer may ask for; bounds the per-match history.
    pub live_max_delay: Duration,
    /// Bytes all matches in progress may reserve (`memory-budget`), `match_memory` each.
    pub memory_budget: u64,
    pub match_memory: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_matches: 10_000,
            max_connections: 20_000,
            http_max_connections: 10_000,
            live_max_delay: Duration::from_secs(120),
            memory_budget: u64::MAX,
            match_memory: 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Live,
    Sealed,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Live => "live",
            Phase::Sealed => "sealed",
        }
    }
}

/// What is known about one match. Readers take a snapshot with [`MatchShared::info`].
#[derive(Clone, Debug)]
pub struct MatchInfo {
    pub id: String,
    pub phase: Phase,
    pub writer: bool,
    /// Bytes of the file a reader may read: whole records written (live) or the file length (sealed).
    pub bytes: u64,
    pub durable_seq: u64,
    pub stats: FileStats,
    pub sealed_unix_us: u64,
    /// Strong ETag once sealed.
    pub etag: Option<String>,
    /// The object store has the sealed replay whole (`crate::tier`).
    pub archived: bool,
    /// The sealed replay is in the local store (false: only in the object store).
    pub local: bool,
}

struct MatchState {
    info: MatchInfo,
    /// Keyframes published so far (live); for sealed matches it is read from the file.
    index: Vec<IndexEntry>,
    /// (publish time, bytes) samples for `?delay_ms` viewers, pruned to `live_max_delay`.
    history: VecDeque<(Instant, u64)>,
    /// The append state of a live match without a writer, waiting for a resume.
    parked: Option<MatchFile>,
    /// Set when the in-memory state was lost (storage error): the next writer re-scans the file.
    needs_rescan: bool,
    /// A live match without a writer: since when (for `abandon-after-s`).
    idle_since: Option<Instant>,
}

/// One match, shared by its writer and any number of readers.
pub struct MatchShared {
    pub id: String,
    state: Mutex<MatchState>,
    changed: Condvar,
    version: AtomicU64,
}

const HISTORY_STEP: Duration = Duration::from_millis(20);

impl MatchShared {
    fn lock(&self) -> MutexGuard<'_, MatchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn info(&self) -> MatchInfo {
        self.lock().info.clone()
    }
    /// Keyframes published so far (live matches).
    pub fn live_index(&self) -> Vec<IndexEntry> {
        self.lock().index.clone()
    }
    /// Increments on every publish and seal: poll it to notice growth without blocking.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }
    /// Readable bytes as they were at `at` (for `?delay_ms`): the newest sample not after `at`.
    pub fn bytes_at(&self, at: Instant) -> u64 {
        let st = self.lock();
        if st.info.phase == Phase::Sealed && st.history.back().is_none_or(|(t, _)| *t <= at) {
            return st.info.bytes;
        }
        let mut best = 0;
        for (t, b) in st.history.iter() {
            if *t <= at {
                best = *b;
            } else {
                break;
            }
        }
        best
    }
    /// Blocks until the version differs from `seen` or `timeout` passes; returns the new version.
    pub fn wait_change(&self, seen: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            let v = self.version();
            if v != seen {
                return v;
            }
            let now = Instant::now();
            if now >= deadline {
                return v;
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
    /// Call without holding the state lock. The version changes under the lock so a
    /// waiter between its check and its wait cannot miss the notification.
    fn bump(&self) {
        let _st = self.lock();
        self.version.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_all();
    }
}

/// Counters for /metrics and the harness.
#[derive(Default)]
pub struct Metrics {
    pub frames: AtomicU64,
    pub payload_bytes: AtomicU64,
    pub resent_frames: AtomicU64,
    pub acks: AtomicU64,
    pub writes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub syncs: AtomicU64,
    pub matches_started: AtomicU64,
    pub matches_resumed: AtomicU64,
    pub matches_sealed: AtomicU64,
    /// Matches ended by `abandon-after-s` (sealed, or sealed and removed).
    pub matches_abandoned: AtomicU64,
    pub ds_connections: AtomicU64,
    /// DS connections the blocking backend closed without a protocol answer (no thread
    /// could be started for them; each is logged with the reason).
    pub ds_connections_dropped: AtomicU64,
    pub http_connections_dropped: AtomicU64,
    pub http_requests: AtomicU64,
    pub http_bytes: AtomicU64,
    pub http_errors: AtomicU64,
    /// storage-layout=journal: flushes that completed, appends (replay-file writes) they
    /// made durable (/ flushes = group size), record bytes, bytes written to the journal
    /// files (blocks: padding and tail rewrites included), checkpoints, appends that found
    /// a journal full and waited.
    pub journal_flushes: AtomicU64,
    pub journal_flushed_appends: AtomicU64,
    pub journal_record_bytes: AtomicU64,
    pub journal_write_bytes: AtomicU64,
    pub journal_checkpoints: AtomicU64,
    pub journal_full_waits: AtomicU64,
    /// storage-layout=journal: replay files opened on demand by the replay-fd-cache (a
    /// write to a file that was not open) and closed to make room.
    pub replay_fd_opens: AtomicU64,
    pub replay_fd_evictions: AtomicU64,
    /// Per journal: (unreclaimed bytes, ring bytes, unix us of its last checkpoint).
    pub journal_gauges: Mutex<Vec<JournalGauge>>,
    /// Object-store tier (`crate::tier`): replays uploaded whole, their bytes, failed
    /// attempts (retried), seal-to-archived lag summed over uploads, replays fetched into
    /// the local store and their bytes, objects refused by the integrity check, 302s to
    /// presigned URLs, 307s to the node recording a live match, local copies deleted.
    pub tier_uploads: AtomicU64,
    pub tier_upload_bytes: AtomicU64,
    pub tier_upload_parts: AtomicU64,
    pub tier_upload_failures: AtomicU64,
    pub tier_upload_lag_us: AtomicU64,
    pub tier_fetches: AtomicU64,
    pub tier_fetch_bytes: AtomicU64,
    pub tier_corrupt: AtomicU64,
    pub tier_redirects: AtomicU64,
    pub tier_live_redirects: AtomicU64,
    pub tier_local_deleted: AtomicU64,
    /// Gauges: replays sealed here and not yet archived, and their bytes.
    pub tier_backlog: AtomicU64,
    pub tier_backlog_bytes: AtomicU64,
    errors: [AtomicU64; 32],
    /// Latency histograms (see `crate::metrics`).
    pub hist: crate::metrics::Histograms,
}

/// The gauges of one journal (see [`Metrics::journal_gauge`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalGauge {
    pub occupancy_bytes: u64,
    pub capacity_bytes: u64,
    pub last_checkpoint_unix_us: u64,
}

impl Metrics {
    pub fn error(&self, code: ErrorCode) {
        self.errors[code as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub fn errors(&self, code: ErrorCode) -> u64 {
        self.errors[code as usize].load(Ordering::Relaxed)
    }
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    /// Adds a journal's counters since `before` and sets its gauges.
    pub fn journal(
        &self,
        n: usize,
        before: &crate::storage::journal::JournalStats,
        now: &crate::storage::journal::JournalStats,
        gauge: JournalGauge,
    ) {
        Self::add(&self.journal_flushes, now.flushes - before.flushes);
        Self::add(
            &self.journal_flushed_appends,
            now.flushed_appends - before.flushed_appends,
        );
        Self::add(
            &self.journal_record_bytes,
            now.record_bytes - before.record_bytes,
        );
        Self::add(
            &self.journal_write_bytes,
            now.written_bytes - before.written_bytes,
        );
        Self::add(
            &self.journal_checkpoints,
            now.checkpoints - before.checkpoints,
        );
        Self::add(&self.journal_full_waits, now.full_waits - before.full_waits);
        let mut g = self
            .journal_gauges
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if g.len() <= n {
            g.resize(n + 1, JournalGauge::default());
        }
        g[n] = gauge;
    }
    /// Sum of the journals' unreclaimed bytes, sum of their ring bytes, and the oldest
    /// last-checkpoint time (0 without journals).
    pub fn journal_gauge(&self) -> (u64, u64, u64) {
        let g = self
            .journal_gauges
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let occ = g.iter().map(|x| x.occupancy_bytes).sum();
        let cap = g.iter().map(|x| x.capacity_bytes).sum();
        let oldest = g
            .iter()
            .map(|x| x.last_checkpoint_unix_us)
            .min()
            .unwrap_or(0);
        (occ, cap, oldest)
    }
}

/// The outcome of claiming the writer role for a match.
#[allow(clippy::large_enum_variant)]
pub enum Claim {
    /// A new match: create its file.
    New(WriterGuard),
    /// Continue a match: its append state.
    Resume(WriterGuard, MatchFile),
    /// Continue a match whose state must be re-read from its file (after a storage error).
    Rescan(WriterGuard),
}

/// Holds the writer role of one match; give it back with [`Registry::release_writer`]
/// (dropping it without does so too, with nothing parked).
pub struct WriterGuard {
    pub shared: Arc<MatchShared>,
    registry: Arc<Registry>,
    released: bool,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        if !self.released {
            self.registry.release_inner(&self.shared, None);
        }
    }
}

/// Counts one open connection while alive.
pub struct ConnGuard {
    counter: Arc<Registry>,
    http: bool,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let c = if self.http {
            &self.counter.http_connections
        } else {
            &self.counter.ds_connections
        };
        c.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct Registry {
    pub paths: StorePaths,
    pub limits: Limits,
    matches: Mutex<HashMap<String, Arc<MatchShared>>>,
    live_count: AtomicUsize,
    ds_connections: AtomicUsize,
    http_connections: AtomicUsize,
    shutting_down: AtomicBool,
    pub metrics: Metrics,
    waker: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
    /// Ids deleted by retention (bounded, oldest forgotten first): 410 for readers, refused for writers.
    expired: Mutex<(HashSet<String>, VecDeque<String>)>,
    /// The object-store tier, when `[tier]` is configured: told of every new and sealed
    /// match, consulted by HTTP routing for replays not on local disk.
    pub tier: std::sync::OnceLock<Arc<crate::tier::Tier>>,
}

/// How many expired ids are remembered.
const EXPIRED_MEMORY: usize = 100_000;

impl Registry {
    pub fn new(paths: StorePaths, limits: Limits) -> Arc<Registry> {
        Arc::new(Registry {
            paths,
            limits,
            matches: Mutex::new(HashMap::new()),
            live_count: AtomicUsize::new(0),
            ds_connections: AtomicUsize::new(0),
            http_connections: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
            metrics: Metrics::default(),
            waker: Mutex::new(None),
            expired: Mutex::new((HashSet::new(), VecDeque::new())),
            tier: std::sync::OnceLock::new(),
        })
    }

    /// Remembers the ids a previous run deleted by retention (`STORE/expired.ids`), so they
    /// stay 410 Gone and unusable after a restart. Lines that are not valid match ids are
    /// skipped with a note; a log more than twice the remembered bound is rewritten with
    /// its newest ids (temporary file, rename, directory sync). A sealed replay whose id is
    /// in the log is deleted (a crash interrupted its expiry). Call after
    /// [`Registry::load_recovered`]. Returns notes to print.
    pub fn load_expired(&self) -> Vec<String> {
        let path = self.paths.expired_log();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                return vec![format!(
                    "{}: cannot read ({e}); expired ids from earlier runs will answer 404, not 410",
                    path.display()
                )]
            }
        };
        let mut notes = Vec::new();
        let mut ids = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let id = line.trim();
            if id.is_empty() {
                continue;
            }
            if crate::protocol::validate_match_id(id).is_err() {
                notes.push(format!(
                    "{}:{}: not a match id, skipped",
                    path.display(),
                    i + 1
                ));
                continue;
            }
            ids.push(id.to_string());
        }
        let total = ids.len();
        let keep = &ids[total.saturating_sub(EXPIRED_MEMORY)..];
        for id in keep {
            self.remember_expired(id);
        }
        // A crash after the log line and before the delete (see `expire`) leaves the
        // replay on disk: finish the delete.
        let unfinished: Vec<Arc<MatchShared>> = {
            let map = self.map();
            keep.iter()
                .filter_map(|id| map.get(id))
                .filter(|m| m.info().phase == Phase::Sealed)
                .cloned()
                .collect()
        };
        if !unfinished.is_empty() {
            for m in &unfinished {
                let path = self.paths.sealed_path(&m.id);
                match std::fs::remove_file(&path) {
                    Ok(()) => notes.push(format!(
                        "{}: expired in an earlier run (expired.ids), deleted now",
                        path.display()
                    )),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => notes.push(format!(
                        "{}: expired in an earlier run but cannot be deleted ({e}); it answers 410",
                        path.display()
                    )),
                }
                self.map().remove(&m.id);
                m.bump();
            }
            if let Err(e) = crate::storage::io::sync_dir(&self.paths.root) {
                notes.push(format!("{}: cannot sync ({e})", self.paths.root.display()));
            }
        }
        if total > 2 * EXPIRED_MEMORY {
            let tmp = path.with_extension("ids.tmp");
            let body: String = keep.iter().map(|id| format!("{id}\n")).collect();
            let r = std::fs::write(&tmp, body)
                .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|_| std::fs::rename(&tmp, &path))
                .and_then(|_| crate::storage::io::sync_dir(&self.paths.root));
            if let Err(e) = r {
                notes.push(format!("{}: cannot compact ({e})", path.display()));
            }
        }
        notes
    }

    /// Appends `ids` to the retention log and makes it durable.
    fn log_expired(&self, ids: &[String]) -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.paths.expired_log())?;
        let body: String = ids.iter().map(|id| format!("{id}\n")).collect();
        f.write_all(body.as_bytes())?;
        f.sync_data()
    }

    /// True when `id` was a sealed replay deleted by retention.
    pub fn is_expired(&self, id: &str) -> bool {
        self.expired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .contains(id)
    }

    /// Retention: deletes sealed replays sealed before `cutoff_unix_us` (file, then entry);
    /// returns the ids deleted. Readers that already opened a file keep reading it.
    pub fn expire_sealed_before(&self, cutoff_unix_us: u64) -> Vec<String> {
        let victims: Vec<Arc<MatchShared>> = self
            .map()
            .values()
            .filter(|m| {
                let i = m.info();
                i.phase == Phase::Sealed && i.sealed_unix_us < cutoff_unix_us
            })
            .cloned()
            .collect();
        self.expire(victims, "retention")
    }

    /// Matches in progress that have had no writer for at least `after` (`abandon-after-s`).
    pub fn abandoned(&self, after: Duration) -> Vec<String> {
        let all: Vec<Arc<MatchShared>> = self.map().values().cloned().collect();
        let mut v: Vec<String> = all
            .iter()
            .filter(|m| {
                let st = m.lock();
                st.info.phase == Phase::Live
                    && !st.info.writer
                    && st.idle_since.is_some_and(|t| t.elapsed() >= after)
            })
            .map(|m| m.id.clone())
            .collect();
        v.sort();
        v
    }

    /// Deletes the sealed replay `id` as retention would (`abandon-action = remove`): 410
    /// for readers, MATCH_SEALED for writers. False when `id` is not a sealed match.
    pub fn remove_sealed(&self, id: &str, why: &str) -> bool {
        let Some(m) = self.get(id).filter(|m| m.info().phase == Phase::Sealed) else {
            return false;
        };
        !self.expire(vec![m], why).is_empty()
    }

    /// Deletes sealed replays and remembers their ids as expired: the ids are appended to
    /// `expired.ids` and synced first, then the files are deleted and the store directory
    /// synced. A crash in between leaves an id in the log whose file still exists, and
    /// start-up finishes that delete ([`Registry::load_expired`]); a replay is never gone
    /// while its id is unrecorded (which would answer 404 and let a DS reuse the id).
    /// When the log cannot be written nothing is deleted (retried on the next pass).
    fn expire(&self, victims: Vec<Arc<MatchShared>>, why: &str) -> Vec<String> {
        if victims.is_empty() {
            return Vec::new();
        }
        let ids: Vec<String> = victims.iter().map(|m| m.id.clone()).collect();
        if let Err(e) = self.log_expired(&ids) {
            tracing::warn!(
                "{why}: cannot record expired ids in {}: {e}; {} replays are kept until it can",
                self.paths.expired_log().display(),
                ids.len()
            );
            return Vec::new();
        }
        let mut done = Vec::new();
        for m in victims {
            let path = self.paths.sealed_path(&m.id);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    // Logged as expired already: the next start-up deletes it.
                    tracing::warn!("{why}: cannot delete {}: {e}", path.display());
                }
            }
            self.remember_expired(&m.id);
            self.map().remove(&m.id);
            m.bump();
            done.push(m.id.clone());
        }
        let _ = crate::storage::io::sync_dir(&self.paths.root);
        done
    }

    /// Adds `id` to the remembered expired ids (bounded, oldest forgotten first).
    fn remember_expired(&self, id: &str) {
        let mut ex = self.expired.lock().unwrap_or_else(|p| p.into_inner());
        if ex.0.insert(id.to_string()) {
            ex.1.push_back(id.to_string());
        }
        while ex.1.len() > EXPIRED_MEMORY {
            if let Some(old) = ex.1.pop_front() {
                ex.0.remove(&old);
            }
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<MatchShared>>> {
        self.matches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A hook called after every publish/seal (e.g. to wake an io_uring worker through an
    /// eventfd so it serves live tails).
    pub fn set_waker(&self, f: Arc<dyn Fn() + Send + Sync>) {
        *self.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }
    fn wake(&self) {
        let w = self.waker.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(w) = w {
            w();
        }
    }

    /// Adds what start-up recovery found: sealed replays and resumable live matches.
    pub fn load_recovered(&self, sealed: &[SealedInfo], live: Vec<MatchFile>) {
        let mut map = self.map();
        for s in sealed {
            let info = sealed_match_info(s);
            map.insert(s.id.clone(), Arc::new(new_shared(info, Vec::new(), None)));
        }
        for f in live {
            let info = MatchInfo {
                id: f.match_id.clone(),
                phase: Phase::Live,
                writer: false,
                bytes: f.written_end(),
                durable_seq: f.durable_seq(),
                stats: f.stats().clone(),
                sealed_unix_us: 0,
                etag: None,
                archived: false,
                local: true,
            };
            let idx = f.index().to_vec();
            let id = f.match_id.clone();
            // no writer since the file last changed (as far as the clock can tell)
            let age = std::fs::metadata(self.paths.part_path(&id))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default();
            let now = Instant::now();
            let shared = new_shared(info, idx, Some(f));
            shared.lock().idle_since = Some(now.checked_sub(age).unwrap_or(now));
            map.insert(id, Arc::new(shared));
            self.live_count.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<MatchShared>> {
        self.map().get(id).cloned()
    }

    /// Every match, sorted by id.
    pub fn list(&self) -> Vec<MatchInfo> {
        let all: Vec<Arc<MatchShared>> = self.map().values().cloned().collect();
        let mut v: Vec<MatchInfo> = all.iter().map(|m| m.info()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// The partial replay files of every live match: what a journal checkpoint writes back
    /// one file at a time before its syncfs (a sealed file was made durable at its seal).
    pub fn live_part_paths(&self) -> Vec<std::path::PathBuf> {
        let all: Vec<Arc<MatchShared>> = self.map().values().cloned().collect();
        all.iter()
            .filter_map(|m| {
                let st = m.lock();
                (st.info.phase == Phase::Live).then(|| self.paths.part_path(&st.info.id))
            })
            .collect()
    }

    pub fn live_matches(&self) -> usize {
        self.live_count.load(Ordering::Acquire)
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        for m in self.map().values() {
            m.bump();
        }
        self.wake();
    }
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Admits one DS connection, or says which limit refused it.
    pub fn try_ds_connection(self: &Arc<Self>) -> Result<ConnGuard, (ErrorCode, String)> {
        self.try_ds_connection_behind(0)
    }

    /// Admits one DS connection that arrived after `ahead` others not admitted yet (held
    /// by other threads of the backend): they count first, so the limit refuses the
    /// newest connection.
    pub fn try_ds_connection_behind(
        self: &Arc<Self>,
        ahead: usize,
    ) -> Result<ConnGuard, (ErrorCode, String)> {
        // Counted only when admitted: a refusal never raises the count for a moment,
        // where a connection admitted at the same time on another thread would see it.
        let mut n = self.ds_connections.load(Ordering::Acquire);
        while n + ahead < self.limits.max_connections {
            match self.ds_connections.compare_exchange_weak(
                n,
                n + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => n = now,
            }
        }
        if n + ahead >= self.limits.max_connections {
            let waiting = if ahead > 0 {
                format!(" (and {ahead} that arrived before this one)")
            } else {
                String::new()
            };
            return Err((
                ErrorCode::TooManyConnections,
                format!("the recorder has {n} DS connections{waiting}, its max-connections limit is {}; retry later", self.limits.max_connections),
            ));
        }
        Metrics::add(&self.metrics.ds_connections, 1);
        Ok(ConnGuard {
            counter: self.clone(),
            http: false,
        })
    }

    /// Admits one HTTP connection (None when `http-max-connections` is reached).
    pub fn try_http_connection(self: &Arc<Self>) -> Option<ConnGuard> {
        let n = self.http_connections.fetch_add(1, Ordering::AcqRel);
        let g = ConnGuard {
            counter: self.clone(),
            http: true,
        };
        (n < self.limits.http_max_connections).then_some(g)
    }

    pub fn ds_connections(&self) -> usize {
        self.ds_connections.load(Ordering::Acquire)
    }
    pub fn http_connections(&self) -> usize {
        self.http_connections.load(Ordering::Acquire)
    }

    /// Claims the writer role for `id` (already validated), applying the protocol's rules:
    /// sealed -> MATCH_SEALED, another writer -> MATCH_BUSY, in progress without RESUME ->
    /// MATCH_EXISTS, new match over `max-matches` or over `memory-budget` -> TOO_MANY_MATCHES.
    pub fn claim_writer(
        self: &Arc<Self>,
        id: &str,
        resume: bool,
    ) -> Result<Claim, (ErrorCode, String)> {
        if self.shutting_down() {
            return Err((
                ErrorCode::ShuttingDown,
                "the recorder is shutting down; reconnect with RESUME later".into(),
            ));
        }
        if self.is_expired(id) {
            return Err((
                ErrorCode::MatchSealed,
                format!("match {id} was sealed and has expired (retention-s, or abandon-action remove); use a new match id"),
            ));
        }
        let mut map = self.map();
        if let Some(m) = map.get(id).cloned() {
            drop(map);
            let mut st = m.lock();
            if st.info.phase == Phase::Sealed {
                return Err((
                    ErrorCode::MatchSealed,
                    format!("match {id} has ended and is sealed; it cannot be written again"),
                ));
            }
            if st.info.writer {
                return Err((
                    ErrorCode::MatchBusy,
                    format!(
                        "match {id} already has a writer connection; only one DS may write a match"
                    ),
                ));
            }
            if !resume {
                return Err((
                    ErrorCode::MatchExists,
                    format!("match {id} is in progress (last durable frame {}); reconnect with the RESUME flag to continue it", st.info.durable_seq),
                ));
            }
            st.info.writer = true;
            st.idle_since = None;
            let parked = st.parked.take();
            let rescan = st.needs_rescan || parked.is_none();
            drop(st);
            Metrics::add(&self.metrics.matches_resumed, 1);
            let g = WriterGuard {
                shared: m,
                registry: self.clone(),
                released: false,
            };
            return Ok(match parked {
                Some(f) if !rescan => Claim::Resume(g, f),
                _ => Claim::Rescan(g),
            });
        }
        let live = self.live_count.load(Ordering::Acquire);
        if live >= self.limits.max_matches {
            return Err((
                ErrorCode::TooManyMatches,
                format!(
                    "{live} matches are in progress, the max-matches limit is {}; retry later",
                    self.limits.max_matches
                ),
            ));
        }
        let reserved = (live as u64 + 1).saturating_mul(self.limits.match_memory);
        if reserved > self.limits.memory_budget {
            return Err((
                ErrorCode::TooManyMatches,
                format!(
                    "{live} matches are in progress and reserve {} bytes of the memory-budget of {} bytes ({} bytes each: append-buffer-bytes + 128 KiB); retry later",
                    live as u64 * self.limits.match_memory,
                    self.limits.memory_budget,
                    self.limits.match_memory
                ),
            ));
        }
        let info = MatchInfo {
            id: id.to_string(),
            phase: Phase::Live,
            writer: true,
            bytes: 0,
            durable_seq: 0,
            stats: FileStats {
                created_unix_us: crate::storage::now_unix_us(),
                ..Default::default()
            },
            sealed_unix_us: 0,
            etag: None,
            archived: false,
            local: true,
        };
        let m = Arc::new(new_shared(info, Vec::new(), None));
        map.insert(id.to_string(), m.clone());
        self.live_count.fetch_add(1, Ordering::AcqRel);
        drop(map);
        Metrics::add(&self.metrics.matches_started, 1);
        if let Some(t) = self.tier.get() {
            t.started(id);
        }
        Ok(Claim::New(WriterGuard {
            shared: m,
            registry: self.clone(),
            released: false,
        }))
    }

    /// Gives the writer role back. `file`: the append state to park for a resume (None
    /// after a storage error: the next writer re-scans the file, or, when the file was
    /// never created, the match is forgotten).
    pub fn release_writer(&self, mut g: WriterGuard, file: Option<MatchFile>) {
        g.released = true;
        self.release_inner(&g.shared, file);
    }

    /// Forgets a new match whose file could not be created.
    pub fn abandon_new(&self, mut g: WriterGuard) {
        g.released = true;
        let mut map = self.map();
        if map
            .get(&g.shared.id)
            .is_some_and(|m| Arc::ptr_eq(m, &g.shared))
        {
            map.remove(&g.shared.id);
            self.live_count.fetch_sub(1, Ordering::AcqRel);
        }
        g.shared.bump();
    }

    fn release_inner(&self, m: &Arc<MatchShared>, file: Option<MatchFile>) {
        let mut st = m.lock();
        st.info.writer = false;
        if st.info.phase == Phase::Live {
            st.idle_since = Some(Instant::now());
            st.needs_rescan = file.is_none();
            st.parked = file;
        }
        drop(st);
        m.bump();
    }

    /// Publishes a writer's progress: readable bytes, durable sequence, stats and the
    /// keyframes appended since the last publish.
    pub fn publish(&self, m: &MatchShared, file: &MatchFile) {
        let mut st = m.lock();
        let now = Instant::now();
        st.info.bytes = file.written_end();
        st.info.durable_seq = file.durable_seq();
        st.info.stats = file.stats().clone();
        let have = st.index.len();
        let idx = file.index();
        if idx.len() > have {
            // only keyframes inside the readable bytes
            let readable = file.written_end();
            for e in &idx[have..] {
                if e.offset < readable {
                    st.index.push(*e);
                }
            }
        }
        let bytes = st.info.bytes;
        match st.history.back() {
            Some((t, _)) if now.duration_since(*t) < HISTORY_STEP => {}
            _ => st.history.push_back((now, bytes)),
        }
        let horizon = self.limits.live_max_delay + Duration::from_secs(1);
        while st.history.len() > 2
            && st
                .history
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > horizon)
        {
            st.history.pop_front();
        }
        drop(st);
        m.bump();
        self.wake();
    }

    /// Marks a match sealed (its file renamed to the final name).
    pub fn sealed(&self, m: &MatchShared, info: &SealedInfo) {
        let mut st = m.lock();
        st.info.phase = Phase::Sealed;
        st.info.bytes = info.len;
        st.info.durable_seq = info.trailer.last_seq;
        st.info.sealed_unix_us = info.trailer.sealed_unix_us;
        st.info.etag = Some(info.etag.clone());
        st.parked = None;
        st.history.push_back((Instant::now(), info.len));
        drop(st);
        self.live_count.fetch_sub(1, Ordering::AcqRel);
        Metrics::add(&self.metrics.matches_sealed, 1);
        m.bump();
        self.wake();
        if let Some(t) = self.tier.get() {
            t.sealed(&m.id, info);
        }
    }

    /// The object store has `id` whole (tier upload done, or found there at start).
    pub fn set_archived(&self, id: &str) {
        if let Some(m) = self.get(id) {
            m.lock().info.archived = true;
        }
    }

    /// Whether the sealed replay `id` is in the local store.
    pub fn set_local(&self, id: &str, local: bool) {
        if let Some(m) = self.get(id) {
            m.lock().info.local = local;
        }
    }

    /// Adds a sealed replay known only from the object store (archived, not local), e.g.
    /// one another node recorded. Returns false when the id is already known here.
    pub fn add_archived(&self, s: &SealedInfo) -> bool {
        let mut map = self.map();
        if map.contains_key(&s.id) {
            return false;
        }
        let mut info = sealed_match_info(s);
        info.archived = true;
        info.local = false;
        map.insert(s.id.clone(), Arc::new(new_shared(info, Vec::new(), None)));
        true
    }
}

/// What a sealed replay's trailer says, as a registry entry (local, not yet archived).
fn sealed_match_info(s: &SealedInfo) -> MatchInfo {
    let t = &s.trailer;
    MatchInfo {
        id: s.id.clone(),
        phase: Phase::Sealed,
        writer: false,
        bytes: s.len,
        durable_seq: t.last_seq,
        stats: FileStats {
            created_unix_us: t.created_unix_us,
            frame_count: t.frame_count,
            last_seq: t.last_seq,
            first_tick: t.first_tick,
            last_tick: t.last_tick,
            payload_bytes: t.payload_bytes,
            first_frame_unix_us: t.first_frame_unix_us,
            last_frame_unix_us: 0,
        },
        sealed_unix_us: t.sealed_unix_us,
        etag: Some(s.etag.clone()),
        archived: false,
        local: true,
    }
}

fn new_shared(info: MatchInfo, index: Vec<IndexEntry>, parked: Option<MatchFile>) -> MatchShared {
    let bytes = info.bytes;
    let mut history = VecDeque::new();
    // a recovered match's bytes count as old, so delayed viewers see them at once
    let now = Instant::now();
    let old = now
        .checked_sub(Duration::from_secs(3600))
        .or_else(|| now.checked_sub(Duration::from_secs(1)))
        .unwrap_or(now);
    history.push_back((if bytes > 0 { old } else { now }, bytes));
    MatchShared {
        id: info.id.clone(),
        state: Mutex::new(MatchState {
            info,
            index,
            history,
            parked,
            needs_rescan: false,
            idle_since: None,
        }),
        changed: Condvar::new(),
        version: AtomicU64::new(1),
    }
}

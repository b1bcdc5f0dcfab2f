//! The object-store tier: sealed replays on S3-compatible storage, served by any node.
//!
//! - **Client**: Apache Arrow's `object_store` (`AmazonS3`: SigV4 signing, multipart,
//!   presigned URLs, retries of transient errors), on a small tokio runtime owned by the
//!   tier (threads "tier-*"). Nothing here runs on an io_uring worker or a blocking
//!   connection thread: they only take locks for in-memory state and hand work over.
//! - **Upload at seal** ([`Tier::sealed`], called by `Registry::sealed`): a bounded queue,
//!   `upload-concurrency` uploads at once, multipart above `part-bytes`, the store's
//!   checksum on every PUT/part (`checksum`), the replay's CRC32C as object metadata,
//!   checked back with a HEAD before the replay counts as archived. Failures retry with
//!   exponential backoff forever; a rescan every `retry-max-ms` picks up replays that did
//!   not fit the queue. The archived state is durable in `STORE/archived.ids`
//!   ([`log`]), so a restart knows it; a replay sealed but not in the log is uploaded again
//!   (or adopted when the store already has it whole).
//! - **Serving** (`crate::http::tier`): a replay not on local disk is fetched whole into the
//!   local store (CRC-checked, then renamed into place) and served by the normal file path,
//!   or redirected to a presigned URL. Requests wait on a [`Ticket`].
//! - **Several nodes**: every node lists `PREFIX/replays/` (`list-interval-s`) and looks
//!   unknown ids up on demand; a live match has a marker `PREFIX/live/<id>` naming the
//!   node that records it, so other nodes redirect its viewers there.
//!
//! Object layout: `PREFIX/replays/<id>.rpl` (the replay's bytes, metadata `crc32c`,
//! `etag`), `PREFIX/live/<id>` (body: the recording node's base URL),
//! `PREFIX/nodes/<node>` (written at start: proves the credentials can write).

mod client;
mod fetch;
pub mod log;
pub mod seaweed;
mod upload;

use crate::config::tier::{KeepLocal, TierConfig};
use crate::server::registry::{Metrics, Phase, Registry};
use crate::storage::{SealedInfo, StorePaths};
use object_store::aws::AmazonS3;
use object_store::path::Path as ObjPath;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

/// How long a failed or negative lookup answers for an id before the store is asked again.
const LOOKUP_MEMORY: Duration = Duration::from_secs(1);

/// A piece of tier work a request waits for (a fetch into the local store, a lookup).
/// Completes exactly once, success or not; the request is then routed again.
#[derive(Clone)]
pub struct Ticket(Arc<TicketInner>);

type Callbacks = Vec<Box<dyn FnOnce() + Send>>;

struct TicketInner {
    /// Done, and what to run when it is.
    state: Mutex<(bool, Callbacks)>,
    cv: Condvar,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ticket(done: {})", self.is_done())
    }
}

impl Default for Ticket {
    fn default() -> Self {
        Ticket(Arc::new(TicketInner {
            state: Mutex::new((false, Vec::new())),
            cv: Condvar::new(),
        }))
    }
}

impl Ticket {
    /// Runs `f` once the work is done (at once, on this thread, when it already is;
    /// otherwise on a tier thread: `f` must only hand over, e.g. post and wake a worker).
    pub fn on_ready(&self, f: impl FnOnce() + Send + 'static) {
        let mut st = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.0 {
            drop(st);
            f();
        } else {
            st.1.push(Box::new(f));
        }
    }
    /// Blocks until the work is done or `timeout` passes (blocking backend).
    pub fn wait(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut st = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        while !st.0 {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            st = self
                .0
                .cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
    pub fn is_done(&self) -> bool {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner()).0
    }
    fn complete(&self) {
        let cbs = {
            let mut st = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
            st.0 = true;
            std::mem::take(&mut st.1)
        };
        self.0.cv.notify_all();
        for f in cbs {
            f();
        }
    }
}

/// What the tier knows about an id that the registry does not.
#[derive(Clone, Debug)]
pub enum Lookup {
    /// Being looked up: wait for the ticket, then route again.
    Pending(Ticket),
    /// In the object store: now in the registry (route again).
    Found,
    /// A live match recorded by the node at this base URL.
    LiveAt(String),
    /// Not in the object store (asked within the last second).
    Missing,
    /// The store could not be asked (the error).
    Failed(String),
}

/// Where a replay's bytes are, for a GET that needs them.
pub enum Fetch {
    /// Being fetched into the local store: wait, then route again.
    Pending(Ticket),
    /// The last fetch failed (integrity check or store error): the text says why.
    Failed(String),
}

#[derive(Default)]
struct State {
    /// Sealed here, waiting for upload (queued or on local disk past the queue).
    backlog: HashMap<String, u64>,
    /// In the upload queue or being uploaded.
    queued: HashSet<String>,
    /// A replay did not fit the queue: the rescan looks for it.
    overflow: bool,
    lookups: HashMap<String, (Instant, Lookup)>,
    fetches: HashMap<String, Ticket>,
    fetch_failed: HashMap<String, (Instant, String)>,
    /// When each id was last fetched whole (pruned by the maintenance task).
    fetched: HashMap<String, Instant>,
    /// Matches whose live marker this node wrote (deleted once archived).
    markers: HashSet<String>,
}

/// How long the start-up test write may take before the store counts as unreachable.
const ACCESS_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The tier of one recorder process.
pub struct Tier {
    pub cfg: TierConfig,
    /// Always Some until dropped (then shut down without waiting, from any thread).
    rt: Option<tokio::runtime::Runtime>,
    store: Arc<AmazonS3>,
    reg: Weak<Registry>,
    paths: StorePaths,
    node_url: String,
    state: Mutex<State>,
    queue: tokio::sync::mpsc::Sender<String>,
    log: log::ArchivedLog,
    shutdown: std::sync::atomic::AtomicBool,
}

/// Why the tier could not start.
#[derive(Debug)]
pub struct TierError(pub String);

impl std::fmt::Display for TierError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Tier {
    /// Builds the client, checks that the credentials can write to the bucket (a start-up
    /// error when the store refuses them; a warning when it cannot be reached: replays then
    /// wait on local disk), loads `STORE/archived.ids`, marks the registry, queues every
    /// sealed replay that is not archived, and starts the background tasks. Returns the
    /// notes to print.
    pub fn start(
        cfg: &crate::config::Config,
        reg: &Arc<Registry>,
        http_bound: std::net::SocketAddr,
    ) -> Result<(Arc<Tier>, Vec<String>), TierError> {
        let t = &cfg.tier;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(8)
            .thread_name("tier")
            .enable_all()
            .build()
            .map_err(|e| TierError(format!("cannot start the tier's runtime: {e}")))?;
        let store = Arc::new(client::build(t)?);
        let node_url = if t.node_url.is_empty() {
            format!("http://{http_bound}")
        } else {
            t.node_url.clone()
        };
        let mut notes = Vec::new();
        // Bounded: a store that accepts connections but does not answer yet (object_store
        // retries 5xx answers for minutes) must not hold the recorder's start; it is then
        // treated as unreachable, and uploads wait and retry.
        let probe = rt.block_on(async {
            tokio::time::timeout(
                ACCESS_CHECK_TIMEOUT,
                client::check_access(&store, t, &node_url),
            )
            .await
            .unwrap_or_else(|_| {
                Err(client::AccessError::Unreachable(format!(
                    "no answer to a test write within {} s",
                    ACCESS_CHECK_TIMEOUT.as_secs()
                )))
            })
        });
        match probe {
            Ok(()) => notes.push(format!(
                "object store {} bucket {} prefix {}: writable",
                client::endpoint_name(t),
                t.bucket,
                t.prefix
            )),
            Err(client::AccessError::Refused(e)) => return Err(TierError(e)),
            Err(client::AccessError::Unreachable(e)) => notes.push(format!(
                "object store unreachable at start ({e}); sealed replays wait on local disk and are uploaded when it answers"
            )),
        }
        let paths = reg.paths.clone();
        let (log, entries, log_notes) = log::ArchivedLog::open(&paths).map_err(|e| {
            TierError(format!(
                "cannot open {}: {e}",
                paths.root.join(log::ARCHIVED_LOG).display()
            ))
        })?;
        notes.extend(log_notes);
        let (tx, rx) = tokio::sync::mpsc::channel(t.queue_max as usize);
        let tier = Arc::new(Tier {
            cfg: t.clone(),
            rt: Some(rt),
            store,
            reg: Arc::downgrade(reg),
            paths,
            node_url,
            state: Mutex::new(State::default()),
            queue: tx,
            log,
            shutdown: std::sync::atomic::AtomicBool::new(false),
        });
        let mut archived_here = 0;
        for s in &entries {
            if reg.get(&s.id).is_some() {
                reg.set_archived(&s.id);
            } else {
                reg.add_archived(s);
            }
            archived_here += 1;
        }
        let mut waiting = 0;
        for i in reg.list() {
            if i.phase == Phase::Sealed && !i.archived && i.local {
                tier.enqueue(&i.id, i.bytes);
                waiting += 1;
            }
        }
        if archived_here > 0 || waiting > 0 {
            notes.push(format!(
                "{archived_here} replays archived by earlier runs, {waiting} sealed replays to upload"
            ));
        }
        upload::spawn(&tier, rx);
        tier.spawn_maintenance();
        Ok((tier, notes))
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt
            .as_ref()
            .expect("the runtime lives as long as the tier")
    }

    fn registry(&self) -> Option<Arc<Registry>> {
        self.reg.upgrade()
    }

    fn key(&self, kind: &str, id: &str) -> ObjPath {
        match kind {
            "replays" => ObjPath::from(format!("{}/replays/{id}.rpl", self.cfg.prefix)),
            k => ObjPath::from(format!("{}/{k}/{id}", self.cfg.prefix)),
        }
    }

    /// A new match started here: write its live marker (off the caller's thread).
    pub fn started(self: &Arc<Self>, id: &str) {
        let t = self.clone();
        let id = id.to_string();
        self.lock().markers.insert(id.clone());
        self.rt().spawn(async move {
            let body = format!("{}\n", t.node_url);
            if let Err(e) =
                client::put_small(&t.store, &t.key("live", &id), body.into_bytes()).await
            {
                tracing::warn!("tier: cannot write the live marker of {id}: {e}");
            }
        });
    }

    /// A match was sealed here: queue its upload.
    pub fn sealed(self: &Arc<Self>, id: &str, info: &SealedInfo) {
        self.enqueue(id, info.len);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enqueue(self: &Arc<Self>, id: &str, len: u64) {
        let mut st = self.lock();
        st.backlog.insert(id.to_string(), len);
        if st.queued.contains(id) {
            return;
        }
        match self.queue.try_send(id.to_string()) {
            Ok(()) => {
                st.queued.insert(id.to_string());
            }
            Err(_) => st.overflow = true,
        }
        drop(st);
        self.publish_backlog();
    }

    fn publish_backlog(&self) {
        let (n, b) = {
            let st = self.lock();
            (st.backlog.len() as u64, st.backlog.values().sum::<u64>())
        };
        if let Some(r) = self.registry() {
            r.metrics.tier_backlog.store(n, Ordering::Relaxed);
            r.metrics.tier_backlog_bytes.store(b, Ordering::Relaxed);
        }
    }

    /// An upload finished and was verified: durable log, registry, marker, local copy.
    fn archived(self: &Arc<Self>, info: &SealedInfo, uploaded: bool) -> std::io::Result<()> {
        self.log.append(info)?;
        let reg = self.registry();
        if let Some(r) = &reg {
            r.set_archived(&info.id);
            if uploaded {
                let lag = crate::storage::now_unix_us().saturating_sub(info.trailer.sealed_unix_us);
                Metrics::add(&r.metrics.tier_uploads, 1);
                Metrics::add(&r.metrics.tier_upload_bytes, info.len);
                Metrics::add(&r.metrics.tier_upload_lag_us, lag);
            }
        }
        let marker = {
            let mut st = self.lock();
            st.backlog.remove(&info.id);
            st.queued.remove(&info.id);
            st.markers.remove(&info.id)
        };
        self.publish_backlog();
        if marker {
            let t = self.clone();
            let id = info.id.clone();
            self.rt().spawn(async move {
                let _ = client::delete(&t.store, &t.key("live", &id)).await;
            });
        }
        if self.cfg.keep_local == KeepLocal::For && self.cfg.keep_local_s == 0 {
            self.drop_local(&info.id);
        }
        Ok(())
    }

    /// Deletes the local copy of an archived replay (it stays served from the tier).
    fn drop_local(&self, id: &str) {
        let Some(r) = self.registry() else { return };
        let Some(m) = r.get(id) else { return };
        let i = m.info();
        if !(i.phase == Phase::Sealed && i.archived && i.local) {
            return;
        }
        // Marked non-local first: a request that finds no file goes to the tier.
        r.set_local(id, false);
        match std::fs::remove_file(self.paths.sealed_path(id)) {
            Ok(()) => Metrics::add(&r.metrics.tier_local_deleted, 1),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                r.set_local(id, true);
                tracing::warn!("tier: cannot delete the local copy of {id}: {e}");
            }
        }
    }

    /// Replays deleted by retention (`server.retention-s`): delete their objects too.
    pub fn expired(self: &Arc<Self>, ids: Vec<String>) {
        let t = self.clone();
        self.rt().spawn(async move {
            for id in ids {
                if let Err(e) = client::delete(&t.store, &t.key("replays", &id)).await {
                    tracing::warn!("tier: cannot delete the expired object of {id}: {e}");
                }
                t.lock().backlog.remove(&id);
            }
            t.publish_backlog();
        });
    }

    /// What the tier knows of an id the registry does not (routing of unknown ids). Starts
    /// a lookup (HEAD of the replay object, then the live marker) unless `waited`.
    pub fn lookup(self: &Arc<Self>, id: &str, waited: bool) -> Lookup {
        let mut st = self.lock();
        if let Some((at, l)) = st.lookups.get(id) {
            let fresh = at.elapsed() < LOOKUP_MEMORY;
            match l {
                Lookup::Pending(t) if !t.is_done() => return l.clone(),
                Lookup::Pending(_) => {}
                _ if fresh || waited => return l.clone(),
                _ => {}
            }
        }
        if waited {
            return Lookup::Failed("the object store did not answer in time".into());
        }
        let ticket = Ticket::default();
        st.lookups.insert(
            id.to_string(),
            (Instant::now(), Lookup::Pending(ticket.clone())),
        );
        drop(st);
        let t = self.clone();
        let id = id.to_string();
        let tk = ticket.clone();
        self.rt().spawn(async move {
            let r = fetch::lookup(&t, &id).await;
            t.lock().lookups.insert(id, (Instant::now(), r));
            tk.complete();
        });
        Lookup::Pending(ticket)
    }

    /// Brings the archived replay `id` (of `len` bytes, `etag`) into the local store, or
    /// says why it cannot. A fetch in progress is shared by every request for the id.
    pub fn fetch(self: &Arc<Self>, id: &str, len: u64, etag: &str, waited: bool) -> Fetch {
        let mut st = self.lock();
        if let Some((at, e)) = st.fetch_failed.get(id) {
            if waited || at.elapsed() < LOOKUP_MEMORY {
                return Fetch::Failed(e.clone());
            }
        }
        if let Some(t) = st.fetches.get(id) {
            if !t.is_done() {
                return Fetch::Pending(t.clone());
            }
        }
        // Waited for this very fetch and still no file: say so rather than loop.
        if waited
            && st
                .fetched
                .get(id)
                .is_some_and(|at| at.elapsed() < LOOKUP_MEMORY)
        {
            return Fetch::Failed(
                "the replay was fetched from the object store but its local copy is gone again (keep-local-s 0 deletes fetched copies at once; raise it)".into(),
            );
        }
        let ticket = Ticket::default();
        st.fetches.insert(id.to_string(), ticket.clone());
        st.fetch_failed.remove(id);
        drop(st);
        let t = self.clone();
        let (id, etag) = (id.to_string(), etag.to_string());
        let tk = ticket.clone();
        self.rt().spawn(async move {
            let r = fetch::fetch_into_store(&t, &id, len, &etag).await;
            {
                let mut st = t.lock();
                st.fetches.remove(&id);
                match &r {
                    Err(e) => {
                        st.fetch_failed
                            .insert(id.clone(), (Instant::now(), e.clone()));
                    }
                    Ok(()) => {
                        st.fetched.insert(id.clone(), Instant::now());
                    }
                }
            }
            if let Err(e) = r {
                tracing::warn!("tier: fetch of {id}: {e}");
            }
            tk.complete();
        });
        Fetch::Pending(ticket)
    }

    /// A presigned GET URL of the replay object (serve=redirect). Signing is local
    /// computation with static credentials; it runs on the tier runtime's handle.
    pub fn presigned_url(&self, id: &str) -> Result<String, String> {
        use object_store::signer::Signer;
        let path = self.key("replays", id);
        let exp = Duration::from_secs(self.cfg.presign_s);
        // Called from worker and connection threads, never from the runtime's own.
        self.rt()
            .block_on(
                self.store
                    .signed_url(object_store::signer::Method::GET, &path, exp),
            )
            .map(|u| u.to_string())
            .map_err(|e| e.to_string())
    }

    /// Background work: the rescan for replays that waited past the queue, the local-disk
    /// check, keep-local deletions, the bucket listing.
    fn spawn_maintenance(self: &Arc<Self>) {
        let t = Arc::downgrade(self);
        let period = Duration::from_millis(self.cfg.retry_max_ms.clamp(100, 1000));
        self.rt().spawn(async move {
            let mut last_list: Option<Instant> = None;
            let mut last_rescan = Instant::now();
            let mut last_disk_note: Option<Instant> = None;
            loop {
                tokio::time::sleep(period).await;
                let Some(t) = t.upgrade() else { return };
                if t.shutdown.load(Ordering::Acquire) {
                    return;
                }
                let Some(reg) = t.registry() else { return };
                if last_rescan.elapsed() >= Duration::from_millis(t.cfg.retry_max_ms) {
                    last_rescan = Instant::now();
                    t.rescan(&reg);
                }
                t.check_disk(&mut last_disk_note);
                {
                    let mut st = t.lock();
                    st.fetched.retain(|_, at| at.elapsed() < LOOKUP_MEMORY);
                    st.fetch_failed
                        .retain(|_, (at, _)| at.elapsed() < LOOKUP_MEMORY);
                    st.lookups.retain(|_, (at, l)| {
                        matches!(l, Lookup::Pending(_)) || at.elapsed() < LOOKUP_MEMORY
                    });
                }
                if t.cfg.keep_local == KeepLocal::For {
                    t.expire_local(&reg);
                }
                let every = Duration::from_secs(t.cfg.list_interval_s);
                if t.cfg.list_interval_s > 0 && last_list.is_none_or(|l| l.elapsed() >= every) {
                    last_list = Some(Instant::now());
                    if let Err(e) = fetch::list_new(&t, &reg).await {
                        tracing::warn!("tier: cannot list the bucket: {e}");
                    }
                }
            }
        });
    }

    fn rescan(self: &Arc<Self>, reg: &Registry) {
        let overflow = std::mem::take(&mut self.lock().overflow);
        if !overflow {
            return;
        }
        for i in reg.list() {
            if i.phase == Phase::Sealed && !i.archived && i.local {
                self.enqueue(&i.id, i.bytes);
            }
        }
    }

    /// A backlog on a filling disk is a clear error in the log (every 10 s) rather than a
    /// surprise: ingest fails with a storage error once the disk is full.
    fn check_disk(&self, last: &mut Option<Instant>) {
        let (n, bytes) = {
            let st = self.lock();
            (st.backlog.len(), st.backlog.values().sum::<u64>())
        };
        if n == 0 || last.is_some_and(|l| l.elapsed() < Duration::from_secs(10)) {
            return;
        }
        if let Ok((free, total)) = crate::sys::fs::fs_space(&self.paths.root) {
            if total > 0 && free * 100 / total < 5 {
                *last = Some(Instant::now());
                tracing::error!(
                    "tier: the local store {} has {} MiB free ({}%) and {n} sealed replays ({} MiB) wait for the object store; ingest will fail with storage errors when the disk is full: bring the object store back or free space",
                    self.paths.root.display(),
                    free >> 20,
                    free * 100 / total,
                    bytes >> 20
                );
            }
        }
    }

    /// keep-local=for: deletes local copies of archived replays older than keep-local-s
    /// (by the file's modification time: its seal, or its fetch).
    fn expire_local(&self, reg: &Registry) {
        let keep = Duration::from_secs(self.cfg.keep_local_s);
        for i in reg.list() {
            if !(i.phase == Phase::Sealed && i.archived && i.local) {
                continue;
            }
            let old = std::fs::metadata(self.paths.sealed_path(&i.id))
                .and_then(|m| m.modified())
                .map(|t| t.elapsed().unwrap_or_default() >= keep)
                .unwrap_or(false);
            if old {
                self.drop_local(&i.id);
            }
        }
    }

    /// Replays sealed here and not yet archived.
    pub fn backlog(&self) -> usize {
        self.lock().backlog.len()
    }
}

/// What the tier runs with beyond its knobs, for `--print-config` (never the secrets).
pub fn effective_json(cfg: &crate::config::Config) -> serde_json::Value {
    let t = &cfg.tier;
    if !t.enabled() {
        return serde_json::json!({ "enabled": false });
    }
    serde_json::json!({
        "enabled": true,
        "endpoint": if t.endpoint.is_empty() { format!("AWS S3 ({})", t.region) } else { t.endpoint.clone() },
        "allow_http": t.endpoint.starts_with("http://"),
        "node_url": if t.node_url.is_empty() { format!("http://{}", cfg.server.http_addr) } else { t.node_url.clone() },
        "credentials_source": match t.credentials {
            crate::config::tier::Credentials::Env => "environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN)".to_string(),
            crate::config::tier::Credentials::File => format!("{} [{}]", t.credentials_file, t.profile),
            crate::config::tier::Credentials::Anonymous => "none (unsigned requests)".to_string(),
        },
        "multipart_above_bytes": t.part_bytes,
        "objects": format!("{}/replays/<id>.rpl, {}/live/<id>, {}/nodes/<node>", t.prefix, t.prefix, t.prefix),
        "runtime_threads": 2,
    })
}

impl Drop for Tier {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::Release);
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

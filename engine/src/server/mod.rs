//! `recorder serve`: the replay recorder.
//!
//! # Backend-independent core (for both backends)
//!
//! - [`registry::Registry`] (`Arc`, all `&self`): matches live/sealed, one writer per match
//!   ([`registry::Registry::claim_writer`] -> [`registry::Claim`] New / Resume(file) /
//!   Rescan; give it back with `release_writer(guard, Some(file))` to park the append
//!   state for a resume), limits (`try_ds_connection`, `try_http_connection`), live-tail
//!   notification ([`registry::MatchShared::version`] to poll, `wait_change` to block,
//!   `Registry::set_waker` for a hook called on every publish/seal, e.g. an eventfd write),
//!   listing, metrics, `begin_shutdown`.
//! - [`session::IngestSession`]: a DS connection, sans-IO. `feed(bytes)`, loop
//!   `next_io(now)` -> [`session::Io`] (Open / Write(WriteReq) / Sync / FinishSeal), execute
//!   it, report with `open_done` / `write_done` / `sync_done` / `seal_done`; send
//!   `take_output()`; `on_timer(now)` at `deadline()`; `peer_closed()` on EOF;
//!   `begin_shutdown()`; close when `is_finished()` and the output is sent.
//!   std implementations of each Io: `storage::io::{open_match, write_req, seal_match}` and
//!   `File::sync_data` (the blocking backend's `exec_io` shows the mapping).
//! - [`crate::storage::MatchFile`]: append -> `take_write()` -> WriteReq {offset, aligned
//!   buffer, end, last_seq} -> `write_done`; O_DIRECT tail-block rewrite inside; group
//!   commit via `needs_sync`/`sync_done`; `seal`; `resume` from a recovery scan.
//! - [`crate::http`]: `parse_request(buf, max)` (one request per call, pipelining-safe),
//!   `route(&req, &registry)` -> `Response { head, body: None|Bytes|File{path,offset,len}
//!   |Live(LiveTail), close }`; `LiveTail::next_range/sent/is_done/retry_at` drive a chunked
//!   live download (`chunk_head`, `CHUNK_END`).
//! - [`start`] builds everything both backends share: validated config, recovered store,
//!   registry, session config, bound listeners ([`ServerContext`]).
//!
//! Backends: [`blocking::run`] (thread per connection, std) and `uring::run` (helper
//! "uring-server"; until it exists [`run_uring`] says it is not built).

pub mod abandon;
pub mod blocking;
pub mod fds;
pub mod memory;
pub mod registry;
pub mod replay_files;
pub mod service;
pub mod session;
pub mod startup;
pub mod testkit;
pub mod uring;
pub mod wal;

use crate::config::server::{AckModeKnob, Backend, StorageLayout};
use crate::config::{self, Config};
use crate::protocol::AckMode;
use crate::storage::{self, Durability, MatchFile, StoreOptions, StorePaths};
use registry::{Limits, Registry};
use session::SessionConfig;
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// Everything a backend needs to run.
pub struct ServerContext {
    pub cfg: Config,
    pub registry: Arc<Registry>,
    pub session: Arc<SessionConfig>,
    pub ingest: TcpListener,
    pub http: TcpListener,
    /// Set by SIGINT/SIGTERM (or a test): stop accepting, flush, ack, close, return.
    pub shutdown: Arc<AtomicBool>,
    /// `storage-layout = journal`: the journals of this run, recovered and ready (one per
    /// io_uring worker, one for the blocking backend); empty with `per-match`.
    pub journals: Vec<storage::journal_io::JournalFile>,
}

/// The replay files' write options under `storage-layout = journal`: buffered (the page
/// cache gathers the small appends; checkpoints write them out in large chunks), no sync
/// per write (the journal made the frames durable before the write is reported done).
/// A bulk match (`journal-bypass-bytes`) switches its file to O_DIRECT when the store took
/// O_DIRECT (`o.direct`, `file.direct`), as per-match files are written: its bytes bypass
/// both the journal and the page cache. Not with io_uring ring replay writes
/// (`replay-write = ring`), whose descriptors stay buffered.
pub fn replay_options_for_journal(o: &StoreOptions, cfg: &Config) -> StoreOptions {
    let switch = o.direct
        && (cfg.server.backend == Backend::Blocking || crate::config::server::replay_inline(cfg));
    StoreOptions {
        direct: false,
        align: 8,
        durability: Durability::None,
        uncached: false,
        bulk_direct_bytes: if switch {
            cfg.server.journal_bypass_bytes as usize
        } else {
            0
        },
        bulk_direct_align: o.align,
        ..o.clone()
    }
}

/// The journal's sizes and triggers from the [server] section (`align`: the store's).
pub fn journal_options(cfg: &Config, align: usize) -> storage::journal::JournalOptions {
    let s = &cfg.server;
    storage::journal::JournalOptions {
        bytes: s.journal_bytes / align as u64 * align as u64,
        align,
        flush_interval: Duration::from_micros(s.journal_flush_us),
        flush_bytes: s.journal_flush_bytes as usize,
        checkpoint_interval: Duration::from_millis(s.journal_checkpoint_ms),
        checkpoint_fill_pct: JOURNAL_CHECKPOINT_FILL_PCT,
        checkpoint_spread: Duration::from_millis(
            s.journal_checkpoint_ms * s.journal_checkpoint_spread_pct / 100,
        ),
        test_checkpoint_delay: Duration::from_millis(s.test_checkpoint_delay_ms),
    }
}

/// A checkpoint starts at once when a journal's unreclaimed part reaches this share.
pub const JOURNAL_CHECKPOINT_FILL_PCT: u64 = 50;

/// Journals a run needs: one per io_uring worker, one for the blocking backend.
pub fn journal_count(cfg: &Config) -> usize {
    match cfg.server.backend {
        Backend::Blocking => 1,
        Backend::Uring => (cfg.server.workers as usize).max(1),
    }
}

/// How match files are written, from the run's [file] and [server] sections, before the
/// store is probed ([`resolve_store_options`] settles O_DIRECT and its alignment).
/// `file.prealloc` with `prealloc-bytes = 0` preallocates [`DEFAULT_PREALLOC_BYTES`].
pub fn store_options(cfg: &Config) -> StoreOptions {
    use crate::config::file::{Direct, Durability as D};
    let f = &cfg.file;
    StoreOptions {
        direct: f.direct != Direct::Off,
        align: 4096,
        durability: match f.durability {
            D::None => Durability::None,
            D::Fdatasync => Durability::Fdatasync,
            D::Odsync => Durability::Odsync,
            D::RwfDsync => Durability::RwfDsync,
        },
        stage_bytes: cfg.server.append_buffer_bytes as usize,
        prealloc_bytes: match (f.prealloc, f.prealloc_bytes) {
            (false, _) => 0,
            (true, 0) => DEFAULT_PREALLOC_BYTES,
            (true, n) => n,
        },
        uncached: f.uncached,
        vectored: f.write_op.is_vectored(),
        bulk_direct_bytes: 0,
        bulk_direct_align: 4096,
    }
}

/// Preallocation per match file when `file.prealloc` is on and `prealloc-bytes` is 0.
pub const DEFAULT_PREALLOC_BYTES: u64 = 16 << 20;

/// Settles O_DIRECT against the store's file system: opens a probe file with O_DIRECT and
/// learns its alignment (statx STATX_DIOALIGN, else the device's logical block size).
/// `direct=required` refused -> error; `direct=optional` refused -> buffered, with a note.
pub fn resolve_store_options(
    cfg: &Config,
    root: &std::path::Path,
) -> Result<(StoreOptions, Vec<String>), ServerError> {
    use crate::config::file::Direct;
    let mut o = store_options(cfg);
    let mut notes = Vec::new();
    if !o.direct {
        return Ok((o, notes));
    }
    std::fs::create_dir_all(root)
        .map_err(|e| ServerError(format!("cannot create the store {}: {e}", root.display())))?;
    let probe = root.join(format!(".dio-probe-{}", std::process::id()));
    let flags = crate::sys::fs::OpenFlags {
        read: true,
        write: true,
        create: true,
        truncate: true,
        direct: true,
        dsync: false,
    };
    let r = crate::sys::fs::open(&probe, flags).and_then(|fd| crate::sys::fs::dio_align(&fd));
    let _ = std::fs::remove_file(&probe);
    match r {
        Ok(a) => {
            o.align = (a.mem_align.max(a.offset_align) as usize).max(512);
            notes.push(format!("O_DIRECT on {}: alignment {} ({:?})", root.display(), o.align, a.source));
        }
        Err(e) if cfg.file.direct == Direct::Optional => {
            o.direct = false;
            notes.push(format!("O_DIRECT refused on {} ({e}); direct=optional: writing buffered", root.display()));
        }
        Err(e) => {
            return Err(ServerError(format!(
                "O_DIRECT is refused on the store {} ({e}) and direct=required: use another file system or set direct=optional or off",
                root.display()
            )))
        }
    }
    Ok((o, notes))
}

pub fn session_config(cfg: &Config) -> SessionConfig {
    let s = &cfg.server;
    SessionConfig {
        ack_mode: match s.ack_mode {
            AckModeKnob::Durable => AckMode::Durable,
            AckModeKnob::Received => AckMode::Received,
        },
        ack_interval: Duration::from_millis(s.ack_interval_ms),
        max_frame_bytes: s.max_frame_bytes as u32,
        idle_timeout: Duration::from_millis(s.idle_timeout_ms),
        ds_token: s.ds_token.as_bytes().to_vec(),
        store: store_options(cfg),
        // always room for one whole message plus a read
        max_buffered_input: (2 * (s.max_frame_bytes as usize + 68)).max(4 << 20),
        test_write_delay: Duration::from_micros(s.test_write_delay_us),
        test_burn: session::TestBurn {
            per_frame: s.test_burn_rounds_per_frame,
            per_kib: s.test_burn_rounds_per_kib,
            cpu_pct: s.test_burn_cpu_pct,
        },
        journal_bypass_bytes: if s.storage_layout == StorageLayout::Journal {
            s.journal_bypass_bytes as usize
        } else {
            0
        },
    }
}

pub fn limits(cfg: &Config) -> Limits {
    let s = &cfg.server;
    Limits {
        max_matches: s.max_matches as usize,
        max_connections: s.max_connections as usize,
        http_max_connections: s.http_max_connections as usize,
        live_max_delay: Duration::from_millis(s.live_max_delay_ms),
        memory_budget: s.memory_budget,
        match_memory: config::server::match_memory_bytes(s),
    }
}

/// Why the server could not start or run.
#[derive(Debug)]
pub struct ServerError(pub String);

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ServerError {}

/// How long a start waits for a port still held by a listener of a process that just died
/// (see [`bind_listener`]); then it is refused as taken by another process.
pub const BIND_WAIT: Duration = Duration::from_secs(5);

/// Binds a listener on `addr` (host:port, the first address that binds) with the
/// configured `net.listen-backlog` (std's `TcpListener::bind` would use 128). The io_uring
/// backend uses it as its first listener (acceptor or first of a reuseport group), the
/// blocking backend as its only one.
///
/// It binds *without* SO_REUSEPORT (SO_REUSEADDR only, for TIME_WAIT), so the bind fails
/// with EADDRINUSE while any other socket listens on the port, reuseport or not. After a
/// kill -9 of the io_uring backend its listeners stay open (and keep accepting into their
/// queues) until the kernel has torn the dead process's rings down, some milliseconds
/// after the process is reaped; a restart that bound beside them with SO_REUSEPORT would
/// lose the connections hashed to them. So EADDRINUSE is retried every 10 ms for up to
/// [`BIND_WAIT`], logged, and only this listener (SO_REUSEPORT set after it is bound, by the
/// reuseport mode) lets the other workers' listeners join.
fn bind_listener(addr: &str, what: &str, backlog: u32) -> Result<TcpListener, ServerError> {
    use std::net::ToSocketAddrs;
    let refuse = |e: std::io::Error| ServerError(format!("cannot listen on {what} {addr}: {e}"));
    let t0 = std::time::Instant::now();
    let mut waiting = false;
    loop {
        let mut last = None;
        for sa in addr.to_socket_addrs().map_err(refuse)? {
            match crate::sys::netops::sockopt::listen(sa, false, backlog as i32) {
                Ok(l) => {
                    if waiting {
                        tracing::info!(
                            "{what} {addr}: bound after waiting {} ms for the port",
                            t0.elapsed().as_millis()
                        );
                    }
                    return Ok(l);
                }
                Err(e) => last = Some(e),
            }
        }
        let e = last
            .unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"));
        if e.kind() != std::io::ErrorKind::AddrInUse {
            return Err(refuse(e));
        }
        if t0.elapsed() >= BIND_WAIT {
            return Err(ServerError(format!(
                "cannot listen on {what} {addr}: {e}; still in use after waiting {} s: another process listens on it (`ss -ltnp` names it)",
                BIND_WAIT.as_secs()
            )));
        }
        if !waiting {
            tracing::warn!(
                "{what} {addr} is in use ({e}); waiting up to {} s for it (a recorder killed just now keeps its listeners until the kernel has closed its rings)",
                BIND_WAIT.as_secs()
            );
            waiting = true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Validates the configuration, recovers the store, binds both listeners.
pub fn start(mut cfg: Config, shutdown: Arc<AtomicBool>) -> Result<ServerContext, ServerError> {
    {
        let hard = crate::sys::limits::nofile().map_or(1024, |(_, h)| h);
        fds::resolve_auto(&mut cfg, hard);
    }
    let memory_note = memory::resolve_auto(&mut cfg);
    cfg.validate()
        .map_err(|e| ServerError(format!("invalid configuration: {e}")))?;
    config::server::validate_serve(&cfg)
        .map_err(|e| ServerError(format!("invalid configuration: {e}")))?;
    if cfg.server.store.is_empty() {
        return Err(ServerError(
            "no store directory: pass --store DIR (or store = \"DIR\" under [server])".into(),
        ));
    }
    if let Some(n) = memory_note {
        tracing::warn!("{n}");
    }
    let admitted = memory::matches_admitted(&cfg);
    tracing::info!(
        "limits: memory-budget {} bytes admits {admitted} matches in progress ({} bytes reserved each); max-matches {}",
        cfg.server.memory_budget,
        config::server::match_memory_bytes(&cfg.server),
        cfg.server.max_matches
    );
    let paths = StorePaths::new(&cfg.server.store);
    startup::check_store(&paths)?;
    let (opts, notes) = resolve_store_options(&cfg, &paths.root)?;
    for n in &notes {
        tracing::info!("storage: {n}");
    }
    match crate::sys::limits::raise_nofile() {
        Ok((before, after)) => tracing::info!(
            "limits: RLIMIT_NOFILE {before} -> {after} (hard limit); max-connections {} and http-max-connections {} need up to {} descriptors ({})",
            cfg.server.max_connections,
            cfg.server.http_max_connections,
            fds::needed(&cfg),
            if fds::uses_fd_cache(&cfg) {
                format!(
                    "replay files in {} cache(s) of {} (replay-fd-cache)",
                    fds::fd_caches(&cfg),
                    cfg.server.replay_fd_cache
                )
            } else {
                "each DS connection holds its replay file".to_string()
            }
        ),
        Err(e) => tracing::warn!("limits: cannot raise RLIMIT_NOFILE: {e}"),
    }
    let (soft, hard) = crate::sys::limits::nofile()
        .map_err(|e| ServerError(format!("cannot read RLIMIT_NOFILE: {e}")))?;
    fds::check(&cfg, soft, hard).map_err(ServerError)?;
    // Journals first: their records since the last checkpoint go into the replay files,
    // then the live-file scan below cuts each file after its last whole frame.
    let (recovered_journals, jnotes) =
        storage::journal_io::recover_journals(&paths, cfg.server.max_frame_bytes as u32)
            .map_err(|e| ServerError(format!("cannot recover the journals: {e}")))?;
    for n in &jnotes {
        tracing::info!("recovery: {n}");
    }
    let rec =
        storage::recover_store(&paths, &opts, cfg.server.max_frame_bytes as u32).map_err(|e| {
            ServerError(format!(
                "cannot prepare the store {}: {e}",
                paths.root.display()
            ))
        })?;
    for n in &rec.notes {
        tracing::info!("recovery: {n}");
    }
    let journal_layout = cfg.server.storage_layout == StorageLayout::Journal;
    let journals = if journal_layout {
        let jio = storage::journal_io::JournalIo {
            direct: opts.direct,
            durability: opts.durability,
        };
        let jo = journal_options(&cfg, opts.align.max(4096));
        let (j, notes) = storage::journal_io::open_journals(
            &paths,
            journal_count(&cfg),
            &jo,
            jio,
            &recovered_journals,
            std::time::Instant::now(),
        )
        .map_err(|e| ServerError(format!("cannot prepare the journals: {e}")))?;
        for n in &notes {
            tracing::info!("storage: {n}");
        }
        j
    } else {
        // per-match: journals of an earlier journal run were replayed above; drop them
        for p in storage::journal_io::journal_files(&paths).unwrap_or_default() {
            let _ = std::fs::remove_file(&p);
            tracing::info!(
                "storage: {} removed (storage-layout=per-match; its records were replayed)",
                p.display()
            );
        }
        Vec::new()
    };
    let replay_opts = if journal_layout {
        replay_options_for_journal(&opts, &cfg)
    } else {
        opts.clone()
    };
    let registry = Registry::new(paths, limits(&cfg));
    let live: Vec<MatchFile> = rec
        .live
        .iter()
        .map(|(id, scan, tail)| {
            let t: &[u8] = if replay_opts.direct { tail } else { &[] };
            MatchFile::resume(id, scan, t, replay_opts.clone())
        })
        .collect();
    if !live.is_empty() || !rec.sealed.is_empty() {
        tracing::info!(
            "recovery: {} resumable matches, {} sealed replays",
            live.len(),
            rec.sealed.len()
        );
    }
    registry.load_recovered(&rec.sealed, live);
    for n in registry.load_expired() {
        tracing::info!("recovery: {n}");
    }
    let backlog = cfg.net.listen_backlog;
    let ingest = bind_listener(&cfg.server.ingest_addr, "ingest-addr", backlog)?;
    let http = bind_listener(&cfg.server.http_addr, "http-addr", backlog)?;
    if cfg.tier.enabled() {
        let bound = http
            .local_addr()
            .map_err(|e| ServerError(format!("cannot read the bound http address: {e}")))?;
        let (t, notes) = crate::tier::Tier::start(&cfg, &registry, bound)
            .map_err(|e| ServerError(format!("tier: {e}")))?;
        for n in &notes {
            tracing::info!("tier: {n}");
        }
        let _ = registry.tier.set(t);
    }
    if cfg.server.retention_s > 0 {
        spawn_retention(
            registry.clone(),
            Duration::from_secs(cfg.server.retention_s),
            shutdown.clone(),
        )?;
    }
    if cfg.server.abandon_after_s > 0 {
        let at = ingest
            .local_addr()
            .map_err(|e| ServerError(format!("cannot read the bound ingest address: {e}")))?;
        abandon::spawn(
            registry.clone(),
            at,
            abandon::Policy {
                after: Duration::from_secs(cfg.server.abandon_after_s),
                action: cfg.server.abandon_action,
                credential: cfg.server.ds_token.as_bytes().to_vec(),
            },
            shutdown.clone(),
        )?;
    }
    let mut sc = session_config(&cfg);
    sc.store = replay_opts;
    let session = Arc::new(sc);
    Ok(ServerContext {
        cfg,
        registry,
        session,
        ingest,
        http,
        shutdown,
        journals,
    })
}

/// Deletes sealed replays older than `retention` (checked every retention/10, at most every
/// minute, at least every 100 ms), until shutdown.
fn spawn_retention(
    reg: Arc<Registry>,
    retention: Duration,
    shutdown: Arc<AtomicBool>,
) -> Result<(), ServerError> {
    let step = (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
    std::thread::Builder::new()
        .name("retention".into())
        .spawn(move || {
            while !shutdown.load(std::sync::atomic::Ordering::Acquire) {
                let cutoff = storage::now_unix_us().saturating_sub(retention.as_micros() as u64);
                let gone = reg.expire_sealed_before(cutoff);
                for id in &gone {
                    tracing::info!("retention: deleted {id}.rpl");
                }
                if let (Some(t), false) = (reg.tier.get(), gone.is_empty()) {
                    t.expired(gone);
                }
                std::thread::sleep(step);
            }
        })
        .map(|_| ())
        .map_err(|e| ServerError(format!("cannot start the retention thread: {e}")))
}

/// The io_uring backend entry point (helper "uring-server" replaces this stub's body with
/// a call to `uring::run(ctx)`).
pub fn run_uring(ctx: ServerContext) -> Result<(), ServerError> {
    uring::run_server(ctx)
}

/// Requested and effective configuration as JSON (`--print-config`).
pub fn config_json(requested: &Config, effective: &Config) -> serde_json::Value {
    let pairs = |c: &Config| {
        serde_json::Value::Object(
            c.to_pairs()
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect(),
        )
    };
    let (o, notes) = if effective.server.store.is_empty()
        || !std::path::Path::new(&effective.server.store).exists()
    {
        (
            store_options(effective),
            vec!["store not probed (does not exist yet): O_DIRECT alignment assumed".to_string()],
        )
    } else {
        resolve_store_options(effective, std::path::Path::new(&effective.server.store))
            .unwrap_or_else(|e| (store_options(effective), vec![e.0]))
    };
    serde_json::json!({
        "requested": pairs(requested),
        "effective": pairs(effective),
        "storage": storage_json(effective, &o, notes),
        "tier": crate::tier::effective_json(effective),
        "unused": unused(effective),
    })
}

/// The "storage" part of --print-config: what replay files (and journals) are written with.
fn storage_json(cfg: &Config, o: &StoreOptions, notes: Vec<String>) -> serde_json::Value {
    let layout = cfg.server.storage_layout;
    let replay = if layout == StorageLayout::Journal {
        replay_options_for_journal(o, cfg)
    } else {
        o.clone()
    };
    // the policy acks rely on; with the journal layout it applies to the journal and the
    // replay files are written as `journal.replay_files` says
    let mut v = serde_json::json!({
        "layout": crate::config::choice_name(layout, crate::config::server::STORAGE_LAYOUTS),
        "direct": o.direct,
        "align": o.align,
        "durability": o.durability.name(),
        "uncached": replay.uncached,
        "stage_bytes": replay.stage_bytes,
        "prealloc_bytes": replay.prealloc_bytes,
        "notes": notes,
    });
    if layout == StorageLayout::Journal {
        let jo = journal_options(cfg, o.align.max(4096));
        v["journal"] = serde_json::json!({
            "files": journal_count(cfg),
            "bytes": jo.bytes,
            "ring_bytes": jo.capacity(),
            "direct": o.direct,
            "durability": o.durability.name(),
            "align": jo.align,
            "flush_us": jo.flush_interval.as_micros() as u64,
            "flush_bytes": jo.flush_bytes,
            "checkpoint_ms": jo.checkpoint_interval.as_millis() as u64,
            "checkpoint_fill_pct": jo.checkpoint_fill_pct,
            "checkpoint_spread_ms": jo.checkpoint_spread.as_millis() as u64,
            "checkpoint_sync": "per-file sync_file_range (spread over checkpoint_spread_ms, not when a journal is half full), then syncfs",
            "replay_files": {
                "direct": replay.direct,
                "durability": replay.durability.name(),
                "write": crate::config::choice_name(cfg.server.replay_write, crate::config::server::REPLAY_WRITES),
                "bypass_bytes": cfg.server.journal_bypass_bytes,
                "bulk_direct": replay.bulk_direct_bytes > 0,
                "note": "buffered, no sync per write; made durable at checkpoints (syncfs) and at seal; writes of bypass_bytes or more are fdatasynced in their file instead of journaled; with bulk_direct, a match's file is written with O_DIRECT (aligned, like per-match) from its second write of bypass_bytes or more",
            },
        });
    }
    v
}

/// Sections that the chosen backend does not use (so nobody thinks they were applied).
fn unused(cfg: &Config) -> Vec<String> {
    let mut v = Vec::new();
    if cfg.server.backend == Backend::Blocking {
        v.push("ring: every [ring] option (backend=blocking has no ring)".to_string());
        v.push("net: every [net] option (backend=blocking uses std::net)".to_string());
    }
    if cfg.server.storage_layout == StorageLayout::Journal
        && cfg.server.replay_write == crate::config::server::ReplayWrite::Inline
    {
        v.push("server.write-buffer: with replay-write=inline replay files are written with pwrite; journal flushes always go through arena slots".to_string());
    }
    v.push("file.io-depth, file.block-size, file.arena-bytes: io-bench job options; the recorder stages up to append-buffer-bytes per match and keeps one write in flight per match".to_string());
    v
}

/// io-wq bounded workers per ring when `ring.iowq-max-bounded` is not set and match-file
/// writes or syncs block (see [`effective`]).
pub const SERVE_IOWQ_MAX_BOUNDED: u32 = 512;

/// What `recorder serve` runs with: `workers = 0` resolved to the CPU count, and with the
/// io_uring backend and a durability policy that blocks (fdatasync, O_DSYNC, RWF_DSYNC),
/// an unset `ring.iowq-max-bounded` raised from the kernel's default (4 x CPUs) to
/// [`SERVE_IOWQ_MAX_BOUNDED`]: every fdatasync holds an io-wq worker until the journal
/// commits, and with a few workers a thousand matches' syncs queue behind each other
/// instead of sharing commits (1000 DS at 20 Hz: ack p99 38 ms with the kernel default,
/// 5 ms with 512, on this project's 2-vCPU VM). Both values are printed by --print-config.
fn effective(cfg: &Config) -> Config {
    let mut e = cfg.clone();
    if e.server.backend == Backend::Uring
        && e.server.replay_write == crate::config::server::ReplayWrite::Auto
    {
        // file-ops=ring opens replay files straight into the ring's file table: there is
        // no descriptor for an inline pwrite, so they are written with the ring.
        e.server.replay_write = match e.server.storage_layout {
            StorageLayout::Journal if e.file.file_ops == crate::config::file::FileOpsMode::Ring => {
                crate::config::server::ReplayWrite::Ring
            }
            StorageLayout::Journal => crate::config::server::ReplayWrite::Inline,
            StorageLayout::PerMatch => crate::config::server::ReplayWrite::Ring,
        };
    }
    // auto single-issuer / defer-taskrun: concrete here, so that what is printed and
    // validated is what the rings are set up with (RingConfig::resolve_auto). The blocking
    // backend has no ring: left auto there (a ring option it is given explicitly is
    // refused by validate()).
    if e.server.backend == Backend::Uring {
        e.ring.resolve_auto();
    }
    if e.server.workers == 0 {
        e.server.workers = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
    }
    if e.server.backend == Backend::Uring
        && e.file.durability != crate::config::file::Durability::None
        && e.ring.iowq_max_bounded.is_none()
    {
        e.ring.iowq_max_bounded = Some(SERVE_IOWQ_MAX_BOUNDED);
    }
    let _ = memory::resolve_auto(&mut e);
    {
        // the hard limit: `start` raises the soft limit to it
        let hard = crate::sys::limits::nofile().map_or(1024, |(_, h)| h);
        fds::resolve_auto(&mut e, hard);
    }
    e
}

fn command() -> clap::Command {
    let cmd = clap::Command::new("recorder serve")
        .about("Run the replay recorder: DS ingest (docs/protocol.md) and HTTP replay serving")
        .arg(
            clap::Arg::new("config")
                .long("config")
                .value_name("FILE")
                .help("TOML configuration file ([ring], [file], [net], [server] tables)"),
        )
        .arg(
            clap::Arg::new("print-config")
                .long("print-config")
                .action(clap::ArgAction::SetTrue)
                .help("Print the requested and effective configuration as JSON and exit"),
        );
    config::add_knob_args(cmd)
}

/// `recorder serve ...`.
pub fn cli_main(args: Vec<String>) -> ExitCode {
    let m = match command().try_get_matches_from(std::iter::once("serve".to_string()).chain(args)) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let mut cfg = Config::default();
    if let Some(p) = m.get_one::<String>("config") {
        let text = match std::fs::read_to_string(p) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("recorder serve: cannot read config file {p}: {e}");
                return ExitCode::from(2);
            }
        };
        if let Err(e) = cfg.apply_toml(&text) {
            eprintln!("recorder serve: {p}: {e}");
            return ExitCode::from(2);
        }
    }
    if let Err(e) = config::apply_knob_args(&mut cfg, &m) {
        eprintln!("recorder serve: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = cfg
        .validate()
        .and_then(|_| config::server::validate_serve(&cfg))
    {
        eprintln!("recorder serve: invalid configuration: {e}");
        return ExitCode::from(2);
    }
    let eff = effective(&cfg);
    if m.get_flag("print-config") {
        println!(
            "{}",
            serde_json::to_string_pretty(&config_json(&cfg, &eff)).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    let setup = match crate::logging::init(&eff.server) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("recorder serve: {e}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(
        version = crate::VERSION,
        revision = crate::GIT_REVISION,
        backend = config::choice_name(eff.server.backend, config::server::BACKENDS),
        "recorder serve starting (log filter {:?} from {})",
        setup.filter,
        setup.filter_from
    );
    crate::http::set_access_log(eff.server.access_log);
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, shutdown.clone()) {
            tracing::error!("recorder serve: cannot install the signal handler: {e}");
            return ExitCode::from(1);
        }
    }
    if let Err(e) = service::handle_sighup(m.get_one::<String>("config").cloned()) {
        tracing::error!("recorder serve: cannot install the SIGHUP handler: {e}");
        return ExitCode::from(1);
    }
    let ctx = match start(eff, shutdown) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("recorder serve: {e}");
            return ExitCode::from(1);
        }
    };
    match (ctx.ingest.local_addr(), ctx.http.local_addr()) {
        (Ok(i), Ok(h)) => {
            tracing::info!("ingest listening on {i}");
            tracing::info!("http listening on {h}");
        }
        _ => {
            tracing::error!("recorder serve: cannot read the bound addresses");
            return ExitCode::from(1);
        }
    }
    service::notify_ready(&ctx);
    let r = match ctx.cfg.server.backend {
        Backend::Blocking => blocking::run(ctx),
        Backend::Uring => run_uring(ctx),
    };
    match r {
        Ok(()) => {
            tracing::info!("recorder serve: stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("recorder serve: {e}");
            ExitCode::from(1)
        }
    }
}

//! File descriptors at scale: what each connection of a backend can hold, the automatic
//! connection limits (`max-connections = 0`, `http-max-connections = 0`) fitted to
//! RLIMIT_NOFILE, and the start-up check that refuses limits that cannot fit (instead of
//! failing accepts with EMFILE under load).

use crate::config::server::{Backend, StorageLayout};
use crate::config::Config;

pub use crate::config::server::{replay_inline, uses_fd_cache};

/// Replay-file caches of a run: one per io_uring worker, one for the blocking backend.
pub fn fd_caches(cfg: &Config) -> u64 {
    match cfg.server.backend {
        Backend::Blocking => 1,
        Backend::Uring => cfg.server.workers.max(1) as u64,
    }
}

/// Bounds of the automatic `replay-fd-cache` (per cache).
const AUTO_CACHE_MIN: u64 = 16;
const AUTO_CACHE_MAX: u64 = 1024;
/// Share of the descriptors (1 / this) the automatic caches take together.
const AUTO_CACHE_SHARE: u64 = 8;

/// Descriptors one DS connection and one HTTP connection can hold at once.
/// uring: the socket, and the match's replay file unless the files are cached (a
/// download: its file).
/// blocking: the socket, the clone kept so shutdown can wake the reader, and the file
/// (cached with the journal layout).
pub fn per_connection(cfg: &Config) -> (u64, u64) {
    let file = u64::from(!uses_fd_cache(cfg));
    match cfg.server.backend {
        Backend::Uring => (1 + file, 2),
        Backend::Blocking => (2 + file, 3),
    }
}

/// Descriptors the server holds whatever its load: listeners, rings and their eventfds,
/// journals, the store directory, logs, stdio, with room to spare.
pub fn reserved(cfg: &Config) -> u64 {
    let workers = cfg.server.workers.max(1) as u64;
    let journals = if cfg.server.storage_layout == StorageLayout::Journal {
        super::journal_count(cfg) as u64
    } else {
        0
    };
    let cached = if uses_fd_cache(cfg) {
        fd_caches(cfg) * cfg.server.replay_fd_cache
    } else {
        0
    };
    64 + 8 * workers + journals + cached
}

/// Share of the descriptors the automatic HTTP limit takes (at most [`AUTO_HTTP_MAX`]).
const AUTO_HTTP_PCT: u64 = 10;
const AUTO_HTTP_MAX: u64 = 1000;

/// Resolves `replay-fd-cache = 0`, `max-connections = 0` and `http-max-connections = 0`
/// to what fits `limit` descriptors (the hard RLIMIT_NOFILE, which `recorder serve` raises
/// its soft limit to). Without the cache (per-match, replay-write=ring) `replay-fd-cache`
/// stays 0.
pub fn resolve_auto(cfg: &mut Config, limit: u64) {
    if cfg.server.replay_fd_cache == 0 && uses_fd_cache(cfg) {
        let free = limit.saturating_sub(reserved(cfg));
        cfg.server.replay_fd_cache =
            (free / AUTO_CACHE_SHARE / fd_caches(cfg)).clamp(AUTO_CACHE_MIN, AUTO_CACHE_MAX);
    }
    let (ds, http) = per_connection(cfg);
    let budget = limit.saturating_sub(reserved(cfg));
    let s = &mut cfg.server;
    if s.http_max_connections == 0 {
        s.http_max_connections = (budget * AUTO_HTTP_PCT / 100 / http).clamp(1, AUTO_HTTP_MAX);
    }
    if s.max_connections == 0 {
        let left = budget.saturating_sub(s.http_max_connections * http);
        s.max_connections = (left / ds).max(1);
    }
}

/// Descriptors the limits can need at once.
pub fn needed(cfg: &Config) -> u64 {
    let (ds, http) = per_connection(cfg);
    cfg.server.max_connections * ds + cfg.server.http_max_connections * http + reserved(cfg)
}

/// Ok when the limits fit `soft` descriptors; else what does not fit and what to change.
pub fn check(cfg: &Config, soft: u64, hard: u64) -> Result<(), String> {
    let need = needed(cfg);
    if need <= soft {
        return Ok(());
    }
    let (ds, http) = per_connection(cfg);
    let s = &cfg.server;
    Err(format!(
        "file descriptors: max-connections {} x {ds} + http-max-connections {} x {http} + {} reserved{} = {need} do not fit RLIMIT_NOFILE {soft} (hard limit {hard}); a {} DS connection holds {ds} ({}): lower max-connections / http-max-connections (0 fits them to the limit){}, or raise the hard limit (ulimit -Hn, systemd LimitNOFILE=)",
        s.max_connections,
        s.http_max_connections,
        reserved(cfg),
        if uses_fd_cache(cfg) {
            format!(
                " (of which replay-fd-cache {} x {} cache(s))",
                s.replay_fd_cache,
                fd_caches(cfg)
            )
        } else {
            String::new()
        },
        crate::config::choice_name(s.backend, crate::config::server::BACKENDS),
        match (s.backend, uses_fd_cache(cfg)) {
            (Backend::Blocking, true) => "its socket and a clone of it for shutdown wake-ups; replay files are in the replay-fd-cache",
            (Backend::Blocking, false) => "its socket, a clone of it for shutdown wake-ups and its match's replay file",
            (Backend::Uring, true) => "its socket; replay files are in the replay-fd-cache",
            (Backend::Uring, false) => "its socket and its match's replay file",
        },
        if uses_fd_cache(cfg) { ", lower replay-fd-cache" } else { ", or use storage-layout=journal (replay files in a bounded cache)" },
    ))
}

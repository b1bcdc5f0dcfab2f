//! File descriptors at scale: what each connection of a backend can hold, the automatic
//! connection limits (`max-connections = 0`, `http-max-connections = 0`) fitted to
//! RLIMIT_NOFILE, and the start-up check that refuses limits that cannot fit (instead of
//! failing accepts with EMFILE under load).

use crate::config::server::{Backend, StorageLayout};
use crate::config::Config;

/// Descriptors one DS connection and one HTTP connection can hold at once.
/// uring: the socket and the match's replay file (a download: its file).
/// blocking: the socket, the clone kept so shutdown can wake the reader, and the file.
pub fn per_connection(cfg: &Config) -> (u64, u64) {
    match cfg.server.backend {
        Backend::Uring => (2, 2),
        Backend::Blocking => (3, 3),
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
    64 + 8 * workers + journals
}

/// Share of the descriptors the automatic HTTP limit takes (at most [`AUTO_HTTP_MAX`]).
const AUTO_HTTP_PCT: u64 = 10;
const AUTO_HTTP_MAX: u64 = 1000;

/// Resolves `max-connections = 0` and `http-max-connections = 0` to what fits `limit`
/// descriptors (the hard RLIMIT_NOFILE, which `recorder serve` raises its soft limit to).
pub fn resolve_auto(cfg: &mut Config, limit: u64) {
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
        "file descriptors: max-connections {} x {ds} + http-max-connections {} x {http} + {} reserved = {need} do not fit RLIMIT_NOFILE {soft} (hard limit {hard}); a {} DS connection holds {ds} (its socket{} and its match's replay file): lower max-connections / http-max-connections (0 fits them to the limit), or raise the hard limit (ulimit -Hn, systemd LimitNOFILE=)",
        s.max_connections,
        s.http_max_connections,
        reserved(cfg),
        crate::config::choice_name(s.backend, crate::config::server::BACKENDS),
        if s.backend == Backend::Blocking { ", a clone of it for shutdown wake-ups" } else { "" },
    ))
}

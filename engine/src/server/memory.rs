//! The memory budget of matches in progress (`server.memory-budget`, issue 12 bug 9): the
//! machine's memory for the automatic budget, and what the budget admits.

use crate::config::server::{auto_memory_budget, match_memory_bytes};
use crate::config::Config;

/// The memory this process may use: MemTotal from /proc/meminfo, or the memory.max of its
/// cgroup (v2) when that is lower. None when neither can be read.
pub fn machine_bytes() -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("0::"))
                .map(|p| p.trim().to_string())
        })
        .and_then(|p| std::fs::read_to_string(format!("/sys/fs/cgroup{p}/memory.max")).ok())
        .and_then(|v| v.trim().parse::<u64>().ok()); // "max" does not parse: no limit
    match (total, cgroup) {
        (Some(t), Some(c)) => Some(t.min(c)),
        (t, c) => t.or(c),
    }
}

/// Resolves `memory-budget = 0` to half the machine's memory (4 GiB assumed when it cannot
/// be read, with a note).
pub fn resolve_auto(cfg: &mut Config) -> Option<String> {
    if cfg.server.memory_budget != 0 {
        return None;
    }
    let (bytes, note) = match machine_bytes() {
        Some(b) => (b, None),
        None => (
            4 << 30,
            Some("memory-budget: cannot read MemTotal or the cgroup's memory.max; auto assumes 4 GiB".to_string()),
        ),
    };
    cfg.server.memory_budget = auto_memory_budget(&cfg.server, bytes);
    note
}

/// Matches in progress the budget admits (at least one; `validate` refuses a smaller one).
pub fn matches_admitted(cfg: &Config) -> u64 {
    (cfg.server.memory_budget / match_memory_bytes(&cfg.server)).max(1)
}

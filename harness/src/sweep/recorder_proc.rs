//! Starting and stopping a recorder process for one run, and reading what it logs (its
//! addresses, its ring flags, why it refused a configuration) and its `/metrics` counters.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use super::Outcome;

/// When a recorder exited on its own: before it printed both listening addresses, or during
/// the run, after it had started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExitPhase {
    Startup,
    Run,
}

/// The one classification of a recorder that exited without being asked to (`status`: its
/// exit status): `unsupported` with the recorder's reason when it refused the configuration,
/// `failed` with the end of its log otherwise.
/// - In either phase, the recorder's own refusal `recorder serve: unsupported: ...` (its
///   fatal error for what the kernel or device refuses: at start, or at first use after it
///   started listening, e.g. FALLOC_FL_WRITE_ZEROES on this store's device).
/// - At start-up only, also a line saying so in other words (`unsupported`, `not supported`,
///   EOPNOTSUPP, `unknown option`): an exit before listening is the configuration or the
///   command line being refused. After the recorder started, such a word proves nothing (a
///   probe line, a crash quoting it): without the refusal line the run stays `failed`.
pub(crate) fn classify_exit(log: &str, status: &str, phase: ExitPhase) -> Outcome {
    let refusal = log.lines().find_map(|l| {
        l.split_once("recorder serve: unsupported: ")
            .map(|(_, r)| format!("unsupported: {}", r.trim()))
    });
    if let Some(reason) = refusal {
        return Outcome::bad("unsupported", reason);
    }
    if phase == ExitPhase::Startup {
        let hit = log.lines().find(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("unsupported")
                || l.contains("not supported")
                || l.contains("eopnotsupp")
                || l.contains("unknown option")
        });
        if let Some(l) = hit {
            return Outcome::bad("unsupported", l.trim().to_string());
        }
    }
    let reason = match phase {
        ExitPhase::Startup => {
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            format!(
                "recorder exited ({status}) before listening: {}",
                tail.join(" | ")
            )
        }
        ExitPhase::Run => {
            let last = log
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim();
            format!("recorder exited during the run ({status}); last log line: {last}")
        }
    };
    Outcome::bad("failed", reason)
}

/// Setup flags the recorder reports in its log. The uring backend prints, per worker,
/// `ring flags EFFECTIVE (asked REQUESTED), ...`; other lines naming `requested` / `effective`
/// with `IORING_SETUP_*` tokens are also understood. `word` is `requested` or `effective`.
pub(crate) fn flags_from_log(log: &str, word: &str) -> String {
    for l in log.lines() {
        if let Some(rest) = l.split("ring flags ").nth(1) {
            let (eff, req) = match rest.split_once(" (asked ") {
                Some((e, r)) => (e.trim(), r.split(')').next().unwrap_or("").trim()),
                None => (rest.split(',').next().unwrap_or("").trim(), ""),
            };
            let v = if word == "effective" { eff } else { req };
            return if v == "none" {
                String::new()
            } else {
                v.to_string()
            };
        }
    }
    for l in log.lines() {
        let low = l.to_ascii_lowercase();
        if low.contains(word) && l.contains("IORING_SETUP_") {
            let names: Vec<&str> = l
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|t| t.starts_with("IORING_SETUP_"))
                .collect();
            return names.join("|");
        }
    }
    String::new()
}

/// The `opt.*` columns of a recorder run: every ring, net and file option in effect. With
/// the io_uring backend these are what the recorder itself logs as in effect (`uring
/// effective configuration: {json}`, written once every worker's ring is up), nothing when
/// it did not get that far. The blocking backend has no ring and uses std::net (the
/// engine lists `[ring]` and `[net]` as unused), so only its `file.*` options are written,
/// as the configuration the cell asked for (defaults included) resolves them.
pub(crate) fn options_in_effect(
    log: &str,
    asked: &engine::config::Config,
) -> Vec<(String, String)> {
    let keys = super::runs_csv::option_keys();
    if asked.server.backend == engine::config::server::Backend::Blocking {
        return keys
            .into_iter()
            .filter(|k| k.starts_with("file."))
            .filter_map(|k| asked.get(&k).map(|v| (k, v)))
            .collect();
    }
    let Some(eff) = log.lines().find_map(|l| {
        let json = l.split("uring effective configuration: ").nth(1)?;
        serde_json::from_str::<serde_json::Value>(json.trim()).ok()
    }) else {
        return Vec::new();
    };
    keys.into_iter()
        .filter_map(|k| {
            let v = eff.get(&k)?.as_str()?.to_string();
            Some((k, v))
        })
        .collect()
}

/// Every `recorder_*` sample without labels of the recorder's `/metrics`, by name.
pub(crate) fn recorder_metrics(http: SocketAddr) -> Option<std::collections::HashMap<String, f64>> {
    let r = crate::httpc::get(http, "/metrics", None, Duration::from_secs(2)).ok()?;
    if r.status != 200 {
        return None;
    }
    let text = String::from_utf8_lossy(&r.body);
    Some(
        text.lines()
            .filter(|l| l.starts_with("recorder_") && !l.contains('{'))
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.trim().parse::<f64>().ok()?))
            })
            .collect(),
    )
}

/// Journal columns (storage-layout=journal) and the write amplification from two
/// `/metrics` scrapes `secs` apart; empty pairs when the run had no journal.
pub(crate) fn journal_columns(
    a: &std::collections::HashMap<String, f64>,
    b: &std::collections::HashMap<String, f64>,
    secs: f64,
) -> Vec<(&'static str, f64)> {
    use results_schema::col;
    let d = |k: &str| b.get(k).copied().unwrap_or(0.0) - a.get(k).copied().unwrap_or(0.0);
    let mut v = Vec::new();
    let payload = d("recorder_payload_bytes_total");
    let jw = d("recorder_journal_write_bytes_total");
    if payload > 0.0 {
        v.push((
            col::WRITE_AMPLIFICATION,
            (d("recorder_file_write_bytes_total") + jw) / payload,
        ));
    }
    let flushes = d("recorder_journal_flushes_total");
    if flushes > 0.0 && secs > 0.0 {
        v.push((col::JOURNAL_FLUSHES_PER_S, flushes / secs));
        v.push((
            col::JOURNAL_GROUP_SIZE,
            d("recorder_journal_flushed_appends_total") / flushes,
        ));
        v.push((col::JOURNAL_BYTES_PER_FLUSH, jw / flushes));
        let cap = b
            .get("recorder_journal_capacity_bytes")
            .copied()
            .unwrap_or(0.0);
        if cap > 0.0 {
            let occ = b
                .get("recorder_journal_occupancy_bytes")
                .copied()
                .unwrap_or(0.0);
            v.push((col::JOURNAL_OCCUPANCY_PCT, 100.0 * occ / cap));
        }
        if let Some(l) = b.get("recorder_journal_checkpoint_lag_ms") {
            v.push((col::JOURNAL_CHECKPOINT_LAG_MS, *l));
        }
    }
    v
}

/// `(io_uring_enter calls, completions)` from the recorder's `/metrics`.
pub(crate) fn uring_counters(http: SocketAddr) -> Option<(u64, u64)> {
    let r = crate::httpc::get(http, "/metrics", None, Duration::from_secs(2)).ok()?;
    if r.status != 200 {
        return None;
    }
    let text = String::from_utf8_lossy(&r.body);
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    Some((
        value("recorder_uring_enter_calls_total ")?,
        value("recorder_uring_completions_total ")?,
    ))
}

pub(crate) struct Recorder {
    pub child: Child,
    pub ingest: SocketAddr,
    pub http: SocketAddr,
    pub log_path: PathBuf,
}

#[allow(clippy::result_large_err)]
pub(crate) fn spawn_recorder(
    bin: &Path,
    store: &Path,
    args: &[String],
    log_path: &Path,
    cpus: Option<&str>,
    stop: &AtomicBool,
) -> Result<Recorder, Outcome> {
    let log = std::fs::File::create(log_path).map_err(|e| {
        Outcome::bad(
            "failed",
            format!("cannot create log {}: {e}", log_path.display()),
        )
    })?;
    let mut cmd = match cpus {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c).arg(bin);
            cmd
        }
        None => Command::new(bin),
    };
    cmd.arg("serve")
        .arg("--store")
        .arg(store)
        .args(["--ingest-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(args)
        // the recorder's per-worker ring set-up lines, which `flags_from_log` reads, are
        // logged at debug level under this target
        .env("RUST_LOG", "info,recorder::startup=debug")
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .map_err(|e| Outcome::bad("failed", e.to_string()))?,
        )
        .stderr(log);
    let mut child = cmd.spawn().map_err(|e| {
        Outcome::bad(
            "failed",
            format!("cannot start recorder {}: {e}", bin.display()),
        )
    })?;
    crate::util::raise_nofile_of(child.id(), 65_536);
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(log_path).unwrap_or_default();
        let find = |p: &str| {
            text.lines().find_map(|l| {
                l.split(p)
                    .nth(1)
                    .and_then(|a| a.trim().parse::<SocketAddr>().ok())
            })
        };
        if let (Some(i), Some(h)) = (find("ingest listening on "), find("http listening on ")) {
            return Ok(Recorder {
                child,
                ingest: i,
                http: h,
                log_path: log_path.to_path_buf(),
            });
        }
        if let Ok(Some(st)) = child.try_wait() {
            std::thread::sleep(Duration::from_millis(50));
            let text = std::fs::read_to_string(log_path).unwrap_or_default();
            return Err(classify_exit(&text, &st.to_string(), ExitPhase::Startup));
        }
        if t0.elapsed() > Duration::from_secs(30) || stop.load(Relaxed) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Outcome::bad(
                "failed",
                "recorder did not print `ingest listening on` and `http listening on` within 30 s",
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Recorder {
    /// SIGTERM, wait up to 10 s, then SIGKILL. Err(its exit status) if it had died before
    /// we asked (`classify_exit` with `ExitPhase::Run` says what that was).
    pub(crate) fn stop(mut self) -> Result<(), String> {
        if let Ok(Some(st)) = self.child.try_wait() {
            return Err(st.to_string());
        }
        let _ = crate::util::send_signal(self.child.id(), "TERM");
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log_path)
            .and_then(|mut f| {
                writeln!(
                    f,
                    "harness: recorder did not stop within 10 s of SIGTERM; killed"
                )
            });
        Ok(())
    }
}

pub(crate) fn vmhwm_kb(pid: u32) -> Option<f64> {
    procfs::process::Process::new(pid as i32)
        .ok()?
        .status()
        .ok()?
        .vmhwm
        .map(|v| v as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_in_effect_come_from_the_recorders_log_or_the_blocking_file_options() {
        let mut cfg = engine::config::Config::default();
        let log = "2026-12-01T15:00:00Z INFO recorder: uring effective configuration: \
                   {\"ring.sqpoll\":\"true\",\"net.recv\":\"multishot\",\"server.workers\":\"2\"}\n";
        let o = options_in_effect(log, &cfg);
        assert!(o.contains(&("ring.sqpoll".into(), "true".into())), "{o:?}");
        assert!(
            o.contains(&("net.recv".into(), "multishot".into())),
            "{o:?}"
        );
        assert!(!o.iter().any(|(k, _)| k.starts_with("server.")), "{o:?}");
        assert!(options_in_effect("no such line\n", &cfg).is_empty());
        cfg.set("server.backend", "blocking").unwrap();
        cfg.set("file.direct", "required").unwrap();
        let o = options_in_effect("", &cfg);
        assert!(
            o.contains(&("file.direct".into(), "required".into())),
            "{o:?}"
        );
        assert!(o.iter().all(|(k, _)| k.starts_with("file.")), "{o:?}");
    }

    #[test]
    fn an_exit_at_start_up_is_unsupported_when_its_log_says_so_in_any_words() {
        let o = classify_exit(
            "starting\nrecorder: ring.iopoll: IOPOLL unsupported on vda (no poll queues)\n",
            "exit status: 3",
            ExitPhase::Startup,
        );
        assert_eq!(o.status, "unsupported");
        assert!(o.reason.contains("IOPOLL"));
        let o = classify_exit(
            "error: unknown option '--ring.nope'\n",
            "exit status: 2",
            ExitPhase::Startup,
        );
        assert_eq!(o.status, "unsupported", "{}", o.reason);
        // The recorder's own refusal line is its reason, even after a probe line.
        let o = classify_exit(
            "probe: sqpoll not supported here\nERROR engine::server: recorder serve: unsupported: ring.iopoll: no poll queues on vda\n",
            "exit status: 1",
            ExitPhase::Startup,
        );
        assert_eq!(o.status, "unsupported");
        assert_eq!(o.reason, "unsupported: ring.iopoll: no poll queues on vda");
        let o = classify_exit(
            "thread main panicked at x.rs\n",
            "signal: 6",
            ExitPhase::Startup,
        );
        assert_eq!(o.status, "failed");
        assert!(o.reason.contains("panicked"), "{}", o.reason);
        assert!(o.reason.contains("before listening"), "{}", o.reason);
        assert!(o.reason.contains("signal: 6"), "{}", o.reason);
    }

    #[test]
    fn an_exit_during_the_run_is_unsupported_only_with_the_recorders_refusal_line() {
        let log = "2026-12-01T17:11:37Z INFO engine::server: ingest listening on 127.0.0.1:1\n\
                   2026-12-01T17:11:37Z ERROR engine::server: recorder serve: unsupported: file.prealloc-mode=write-zeroes: FALLOC_FL_WRITE_ZEROES on the store /s is refused (Operation not supported (os error 95))\n";
        let o = classify_exit(log, "exit status: 1", ExitPhase::Run);
        assert_eq!(o.status, "unsupported");
        assert_eq!(
            o.reason,
            "unsupported: file.prealloc-mode=write-zeroes: FALLOC_FL_WRITE_ZEROES on the store /s is refused (Operation not supported (os error 95))"
        );
        // A crash, or a log line merely mentioning the word, is not a refusal once the
        // recorder has started: failed, with the status and the last log line.
        let o = classify_exit(
            "recorder serve: storage: No space left on device\n",
            "exit status: 1",
            ExitPhase::Run,
        );
        assert_eq!(o.status, "failed");
        assert_eq!(
            o.reason,
            "recorder exited during the run (exit status: 1); last log line: recorder serve: storage: No space left on device"
        );
        let o = classify_exit(
            "probe: iopoll unsupported on vda\npanicked at src/x.rs\n\n",
            "signal: 6",
            ExitPhase::Run,
        );
        assert_eq!(o.status, "failed", "{}", o.reason);
        assert!(
            o.reason.ends_with("last log line: panicked at src/x.rs"),
            "{}",
            o.reason
        );
        // The same log at start-up is read with the looser words: unsupported.
        let o = classify_exit(
            "probe: iopoll unsupported on vda\npanicked at src/x.rs\n",
            "signal: 6",
            ExitPhase::Startup,
        );
        assert_eq!(o.status, "unsupported");
    }

    #[test]
    fn flags_are_read_from_the_log() {
        let log = "ring: requested IORING_SETUP_SQPOLL|IORING_SETUP_SQ_AFF\nring: effective flags IORING_SETUP_SQPOLL\n";
        assert_eq!(
            flags_from_log(log, "requested"),
            "IORING_SETUP_SQPOLL|IORING_SETUP_SQ_AFF"
        );
        assert_eq!(flags_from_log(log, "effective"), "IORING_SETUP_SQPOLL");
        let log = "uring worker 0: ring flags IORING_SETUP_SQPOLL|IORING_SETUP_SUBMIT_ALL (asked IORING_SETUP_SQPOLL|IORING_SETUP_SUBMIT_ALL), sq 256 cq 512\n";
        assert_eq!(
            flags_from_log(log, "effective"),
            "IORING_SETUP_SQPOLL|IORING_SETUP_SUBMIT_ALL"
        );
        assert_eq!(
            flags_from_log(log, "requested"),
            "IORING_SETUP_SQPOLL|IORING_SETUP_SUBMIT_ALL"
        );
        assert_eq!(
            flags_from_log(
                "uring worker 1: ring flags none (asked none), sq 256\n",
                "effective"
            ),
            ""
        );
    }
}

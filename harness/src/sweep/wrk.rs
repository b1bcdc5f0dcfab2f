//! The `wrk-serve` workload: replays served to wrk, an external HTTP load generator, so
//! that the recorder's serving (and nginx's, `kind = "nginx"` with the same workload) is
//! measured with a client that is not the harness. The recorder is prefilled like `serve`;
//! every replay is fetched once and its length checked; then wrk runs a warm-up of
//! `ramp_up_s` (rounded up to whole seconds) and the measured run of `measure_s`, its
//! requests going round-robin over the replays (a Lua script, each thread from its own
//! offset), and prints its figures from the script's `done()` hook: requests, bytes,
//! errors by kind, latency percentiles and its own CPU. See docs/sweeps.md.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::load::prefill;
use super::outcome::one_line;
use super::recorder_proc::Recorder;
use super::{Ctx, Outcome};
use crate::experiment::{Cell, Experiment};
use crate::httpc;
use crate::telemetry::Sampler;
use crate::util::{fmt_opt, unix_now};
use results_schema::col;

/// The workload's name.
pub const WORKLOAD: &str = "wrk-serve";
/// `wrk.*` settings of a `wrk-serve` cell.
pub const WRK_KEYS: &[&str] = &["threads", "connections", "timeout-s"];

/// wrk's command line for one cell.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WrkConfig {
    pub threads: u64,
    pub connections: u64,
    pub timeout_s: u64,
    pub warmup_s: u64,
    pub measure_s: u64,
}

impl WrkConfig {
    /// The `load` column: wrk's settings in effect.
    fn describe(&self, replays: usize) -> String {
        format!(
            "wrk -t{} -c{} -d{}s --timeout {}s --latency;warm-up={}s;replays={replays};order=round-robin",
            self.threads, self.connections, self.measure_s, self.timeout_s, self.warmup_s
        )
    }
}

/// A `wrk-serve` cell's wrk settings, checked (`harness plan` and `harness sweep` refuse
/// the experiment file before anything runs when they are wrong).
pub(crate) fn wrk_config(cell: &Cell, exp: &Experiment) -> Result<WrkConfig, String> {
    for (k, _) in cell.section("wrk") {
        if !WRK_KEYS.contains(&k.as_str()) {
            return Err(format!(
                "wrk.{k} is not a known wrk setting; use {}",
                WRK_KEYS.join(", ")
            ));
        }
    }
    let whole = |k: &str, d: u64, min: u64, max: u64| -> Result<u64, String> {
        match cell.get(k) {
            None => Ok(d),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(format!("{k} = {v:?}: a whole number from {min} to {max}")),
            },
        }
    };
    let threads = whole("wrk.threads", 2, 1, 64)?;
    let connections = whole("wrk.connections", 32, 1, 10_000)?;
    if connections < threads {
        return Err(format!(
            "wrk.connections = {connections} is less than wrk.threads = {threads}; wrk needs at least one connection per thread"
        ));
    }
    let timeout_s = whole("wrk.timeout-s", 10, 1, 3600)?;
    // wrk's -d takes whole seconds.
    if exp.measure_s < 1.0 || exp.measure_s.fract() != 0.0 {
        return Err(format!(
            "measure_s = {}: a wrk-serve cell needs a whole number of seconds (wrk's -d), at least 1",
            exp.measure_s
        ));
    }
    Ok(WrkConfig {
        threads,
        connections,
        timeout_s,
        warmup_s: exp.ramp_up_s.max(0.0).ceil() as u64,
        measure_s: exp.measure_s as u64,
    })
}

/// Whether wrk can run here: Err is the `unsupported` reason.
pub(crate) fn available() -> Result<(), String> {
    available_as("wrk")
}

fn available_as(prog: &str) -> Result<(), String> {
    match Command::new(prog).arg("--version").output() {
        // `wrk --version` prints its banner and exits 1.
        Ok(o) if String::from_utf8_lossy(&o.stdout).contains("wrk") => Ok(()),
        Ok(o) => Err(format!(
            "{prog} --version did not print wrk's banner ({}): {}",
            o.status,
            one_line(&String::from_utf8_lossy(&o.stderr))
        )),
        Err(e) => Err(format!(
            "the wrk-serve workload needs wrk, which cannot be started here ({prog}: {e}); install it (apt-get install wrk; ./lab installs it)"
        )),
    }
}

/// The measured part of a recorder `wrk-serve` run: prefill, then wrk on the replays.
pub(crate) fn drive_recorder(
    ctx: &Ctx,
    cell: &Cell,
    run_id: &str,
    rec: &Recorder,
    run_seed: u64,
    progress: &Arc<AtomicU64>,
    sampler: &Sampler,
    o: &mut Outcome,
) -> Result<(Instant, f64, u64), String> {
    let targets: Vec<(String, u64)> = prefill(ctx, cell, rec, run_seed)?
        .into_iter()
        .map(|(id, len)| (format!("/matches/{id}"), len))
        .collect();
    run_wrk(ctx, cell, run_id, rec.http, &targets, progress, sampler, o)
}

/// wrk's figures, from the `WRK_RESULT` line its `done()` hook prints.
#[derive(Debug, Default, Clone, PartialEq)]
struct WrkResult {
    requests: u64,
    bytes: u64,
    duration_us: u64,
    connect_errors: u64,
    read_errors: u64,
    write_errors: u64,
    status_errors: u64,
    timeouts: u64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    /// utime + stime of the wrk process in clock ticks; None when /proc was unreadable.
    cpu_ticks: Option<u64>,
}

fn parse_result(text: &str) -> Result<WrkResult, String> {
    let line = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("WRK_RESULT "))
        .ok_or_else(|| {
            format!(
                "wrk printed no WRK_RESULT line; its output: {}",
                one_line(text.trim())
            )
        })?;
    let mut r = WrkResult::default();
    for kv in line.split_whitespace() {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("wrk result {kv:?} is not key=value"))?;
        let f: f64 = v
            .parse()
            .map_err(|_| format!("wrk result {k} = {v:?} is not a number"))?;
        let n = f.max(0.0) as u64;
        match k {
            "requests" => r.requests = n,
            "bytes" => r.bytes = n,
            "duration_us" => r.duration_us = n,
            "connect_errors" => r.connect_errors = n,
            "read_errors" => r.read_errors = n,
            "write_errors" => r.write_errors = n,
            "status_errors" => r.status_errors = n,
            "timeouts" => r.timeouts = n,
            "p50_us" => r.p50_us = f,
            "p90_us" => r.p90_us = f,
            "p99_us" => r.p99_us = f,
            "p999_us" => r.p999_us = f,
            "max_us" => r.max_us = f,
            "cpu_ticks" => r.cpu_ticks = (f >= 0.0).then_some(n),
            _ => {}
        }
    }
    if r.duration_us == 0 {
        return Err(format!("wrk measured no time: {line}"));
    }
    Ok(r)
}

/// The Lua script: requests round-robin over `paths`, each thread from its own offset;
/// `done()` prints one `WRK_RESULT key=value ...` line (latencies in microseconds, as wrk
/// records them; CPU from /proc/self/stat after wrk joined its threads).
fn script(paths: &[String]) -> String {
    let list: Vec<String> = paths.iter().map(|p| format!("{p:?}")).collect();
    format!(
        r#"-- written by harness sweep for one wrk-serve run
local paths = {{ {} }}
local n = 0
function setup(thread)
  thread:set("offset", n)
  n = n + 1
end
function init(args)
  i = offset or 0
end
function request()
  i = i + 1
  return wrk.format("GET", paths[(i % #paths) + 1])
end
function done(summary, latency, requests)
  local ticks = -1
  local f = io.open("/proc/self/stat", "r")
  if f then
    local rest = f:read("*a"):match("^.*%)%s+(.*)$")
    f:close()
    if rest then
      local v = {{}}
      for w in rest:gmatch("%S+") do v[#v + 1] = w end
      -- v[1] is field 3 (state): utime and stime are fields 14 and 15
      ticks = tonumber(v[12]) + tonumber(v[13])
    end
  end
  local e = summary.errors
  io.write(string.format("WRK_RESULT requests=%.0f bytes=%.0f duration_us=%.0f connect_errors=%.0f read_errors=%.0f write_errors=%.0f status_errors=%.0f timeouts=%.0f p50_us=%.1f p90_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f cpu_ticks=%.0f\n",
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max, ticks))
end
"#,
        list.join(", ")
    )
}

/// Runs wrk to the end, forwarding the bytes it has read (`/proc/<pid>/io` rchar: socket
/// reads, headers included) to `progress` from `base`; returns its output.
fn run_one(
    ctx: &Ctx,
    cfg: &WrkConfig,
    secs: u64,
    url: &str,
    script_path: &Path,
    log_path: &Path,
    progress: &AtomicU64,
    base: u64,
) -> Result<(String, u64), String> {
    let log = std::fs::File::create(log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let mut child = Command::new("wrk")
        .args(["-t", &cfg.threads.to_string()])
        .args(["-c", &cfg.connections.to_string()])
        .args(["-d", &format!("{secs}s")])
        .args(["--timeout", &format!("{}s", cfg.timeout_s)])
        .arg("--latency")
        .arg("-s")
        .arg(script_path)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start wrk: {e}"))?;
    let pid = child.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(secs + cfg.timeout_s + 15);
    let mut read = 0u64;
    let status = loop {
        if let Ok(io) = procfs::process::Process::new(pid).and_then(|p| p.io()) {
            read = read.max(io.rchar);
            progress.store(base + read, Relaxed);
        }
        if let Ok(Some(st)) = child.try_wait() {
            break st;
        }
        if ctx.stop.load(Relaxed) || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(if ctx.stop.load(Relaxed) {
                "interrupted".to_string()
            } else {
                format!("wrk did not finish within {secs} s + its timeout + 15 s; killed")
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(log_path).unwrap_or_default();
    if !status.success() {
        return Err(format!(
            "wrk exited with {status}: {}",
            one_line(text.trim())
        ));
    }
    Ok((text, read))
}

/// The wrk load on `addr`: a length check of every target, the warm-up, then the measured
/// run; fills the serving columns. Returns the window start, its length and the bytes wrk
/// read in it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_wrk(
    ctx: &Ctx,
    cell: &Cell,
    run_id: &str,
    addr: SocketAddr,
    targets: &[(String, u64)],
    progress: &Arc<AtomicU64>,
    sampler: &Sampler,
    o: &mut Outcome,
) -> Result<(Instant, f64, u64), String> {
    let cfg = wrk_config(cell, ctx.exp)?;
    if targets.is_empty() {
        return Err("nothing to serve".into());
    }
    // wrk does not look at bodies: check once that each target is served whole.
    for (path, len) in targets {
        let r = httpc::get(addr, path, None, Duration::from_secs(60))?;
        if r.status != 200 || r.body.len() as u64 != *len {
            return Err(format!(
                "before wrk: GET {path} from {addr}: status {}, {} of {len} bytes",
                r.status,
                r.body.len()
            ));
        }
    }
    let paths: Vec<String> = targets.iter().map(|(p, _)| p.clone()).collect();
    let script_path = ctx.out.join(format!("logs/{run_id}.wrk.lua"));
    std::fs::write(&script_path, script(&paths))
        .map_err(|e| format!("cannot write {}: {e}", script_path.display()))?;
    let url = format!("http://{addr}/");
    let mut base = 0;
    if cfg.warmup_s > 0 {
        let warm_log = ctx.out.join(format!("logs/{run_id}.wrk-warmup.log"));
        let (_, read) = run_one(
            ctx,
            &cfg,
            cfg.warmup_s,
            &url,
            &script_path,
            &warm_log,
            progress,
            base,
        )?;
        base += read;
    }
    let log_path = ctx.out.join(format!("logs/{run_id}.wrk.log"));
    let ws = Instant::now();
    let started = unix_now();
    sampler.align_to(ws);
    let (text, _) = run_one(
        ctx,
        &cfg,
        cfg.measure_s,
        &url,
        &script_path,
        &log_path,
        progress,
        base,
    )?;
    let r = parse_result(&text)?;
    let secs = r.duration_us as f64 / 1e6;
    o.started_at = Some(started);
    o.duration_s = Some(secs);
    o.m.insert(col::LOAD, cfg.describe(targets.len()));
    o.m.insert(col::THROUGHPUT, fmt_opt(Some(r.bytes as f64 / 1e6 / secs)));
    o.m.insert(col::REQ_PER_S, fmt_opt(Some(r.requests as f64 / secs)));
    for (c, v) in [
        (col::REQ_P50_US, r.p50_us),
        (col::REQ_P90_US, r.p90_us),
        (col::REQ_P99_US, r.p99_us),
        (col::REQ_P999_US, r.p999_us),
        (col::REQ_MAX_US, r.max_us),
    ] {
        o.m.insert(c, fmt_opt((r.requests > 0).then_some(v)));
    }
    let tps = procfs::ticks_per_second() as f64;
    o.m.insert(
        col::GEN_CPU_PCT,
        fmt_opt(r.cpu_ticks.map(|t| 100.0 * t as f64 / tps / secs)),
    );
    let kinds = [
        ("WRK_CONNECT", r.connect_errors),
        ("WRK_READ", r.read_errors),
        ("WRK_WRITE", r.write_errors),
        ("WRK_STATUS", r.status_errors),
        ("WRK_TIMEOUT", r.timeouts),
    ];
    o.m.insert(
        col::ERRORS,
        kinds.iter().map(|(_, n)| n).sum::<u64>().to_string(),
    );
    o.m.insert(
        col::ERROR_KINDS,
        kinds
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k}={n}"))
            .collect::<Vec<_>>()
            .join(";"),
    );
    if r.requests == 0 {
        return Err(format!(
            "wrk completed no request in {secs:.1} s (errors: {})",
            o.m[col::ERROR_KINDS]
        ));
    }
    // A response that is not a replay (an error page) would make the figures meaningless.
    if r.status_errors > 0 {
        return Err(format!(
            "wrk got {} responses with an HTTP error status",
            r.status_errors
        ));
    }
    let shortest = targets.iter().map(|(_, l)| *l).min().unwrap_or(0);
    if r.bytes / r.requests < shortest {
        return Err(format!(
            "wrk read {} bytes per request, less than the shortest replay ({shortest} bytes)",
            r.bytes / r.requests
        ));
    }
    Ok((ws, secs, r.bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_wrk_is_a_reason_not_a_crash() {
        let e = available_as("wrk-not-installed-here").unwrap_err();
        assert!(
            e.contains("needs wrk") && e.contains("apt-get install wrk"),
            "{e}"
        );
    }

    #[test]
    fn the_done_hook_line_is_parsed_and_a_missing_one_is_an_error() {
        let text = "Running 5s test @ http://127.0.0.1:1/\n  2 threads and 32 connections\n\
                    WRK_RESULT requests=1340 bytes=22481567744 duration_us=5003212 connect_errors=0 read_errors=0 write_errors=0 status_errors=0 timeouts=2 p50_us=110233.0 p90_us=150000.5 p99_us=228001.0 p999_us=260000.0 max_us=270001.0 cpu_ticks=412\n";
        let r = parse_result(text).unwrap();
        assert_eq!(r.requests, 1340);
        assert_eq!(r.bytes, 22_481_567_744);
        assert_eq!(r.duration_us, 5_003_212);
        assert_eq!(r.timeouts, 2);
        assert_eq!(r.p99_us, 228001.0);
        assert_eq!(r.cpu_ticks, Some(412));
        let e = parse_result("unable to connect to 127.0.0.1:1 Connection refused\n").unwrap_err();
        assert!(
            e.contains("no WRK_RESULT") && e.contains("Connection refused"),
            "{e}"
        );
        let e = parse_result("WRK_RESULT requests=x\n").unwrap_err();
        assert!(e.contains("requests"), "{e}");
        // /proc unreadable in done(): CPU unknown, not zero.
        let r = parse_result("WRK_RESULT requests=1 bytes=1 duration_us=1 cpu_ticks=-1\n").unwrap();
        assert_eq!(r.cpu_ticks, None);
    }

    #[test]
    fn the_script_lists_every_path_quoted() {
        let s = script(&["/matches/a".into(), "/matches/b\"c".into()]);
        assert!(
            s.contains(r#"local paths = { "/matches/a", "/matches/b\"c" }"#),
            "{s}"
        );
        assert!(s.contains("function done(summary, latency, requests)"));
    }
}

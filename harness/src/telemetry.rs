//! Telemetry sampled during every run (procfs): the target device's /proc/diskstats,
//! /proc/stat (steal included), /proc/meminfo Dirty/Writeback, /proc/vmstat,
//! /proc/interrupts and /proc/softirqs, /proc/<pid>/stat and /io of the recorder (or anchor
//! server) and of the generator, and the recorder's io_uring fdinfo. Writes the per-run time
//! series and derives the per-run columns of docs/results.md.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use procfs::{Current, CurrentSI};

#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub t: Option<Instant>,
    pub disk: Option<procfs::DiskStat>,
    pub cpu_user: u64,
    pub cpu_sys: u64,
    pub cpu_iowait: u64,
    pub cpu_steal: u64,
    pub cpu_total: u64,
    pub ctxt: u64,
    pub dirty_kb: u64,
    pub writeback_kb: u64,
    pub pgpgout: i64,
    pub interrupts: u64,
    pub net_rx: u64,
    pub block_softirq: u64,
    /// CPU seconds of the server process (recorder or anchor server), and its io counters.
    /// `srv_cpu_s` is utime + stime of /proc/<pid>/stat (every thread, in clock ticks);
    /// `srv_cpu_ns` the same from the threads' /proc/<pid>/task/<tid>/schedstat, in
    /// nanoseconds, accumulated by the sampler (see [`CpuTracker`]).
    pub srv_cpu_s: Option<f64>,
    pub srv_cpu_ns: Option<u64>,
    pub srv_write_bytes: Option<u64>,
    pub srv_read_bytes: Option<u64>,
    pub gen_cpu_s: Option<f64>,
    pub progress_bytes: u64,
}

fn softirq_totals() -> (u64, u64) {
    let txt = std::fs::read_to_string("/proc/softirqs").unwrap_or_default();
    let sum = |name: &str| -> u64 {
        txt.lines()
            .find(|l| l.trim_start().starts_with(name))
            .map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0)
    };
    (sum("NET_RX:"), sum("BLOCK:"))
}

fn interrupts_total() -> u64 {
    let txt = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    let ncpu = txt
        .lines()
        .next()
        .map(|l| l.split_whitespace().count())
        .unwrap_or(0);
    txt.lines()
        .skip(1)
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .take(ncpu)
                .filter_map(|x| x.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// CPU time of a set of processes with nanosecond resolution: the sum over every thread of
/// the first field of /proc/<pid>/task/<tid>/schedstat (time on CPU), io-wq and SQPOLL
/// threads included (they are threads of the process). /proc/<pid>/stat has the same sum
/// in clock ticks (10 ms): over a 3 s window at 30% of a core that is +-2 ticks, 2%,
/// which is as large as the effects the regression check must see.
///
/// Threads come and go (io-wq workers): a thread seen for the first time counts from 0
/// (it was created since the last sample); a thread that is gone loses only what it ran
/// since the last sample (io-wq workers exit after being idle, so that is ~0).
#[derive(Default)]
pub struct CpuTracker {
    last: std::collections::HashMap<(i32, i32), u64>,
    total_ns: u64,
    started: bool,
}

impl CpuTracker {
    /// Reads every thread of `pids`; returns the accumulated CPU ns, or None when
    /// schedstat cannot be read (then /proc/<pid>/stat is used).
    pub fn sample(&mut self, pids: &[i32]) -> Option<u64> {
        let mut now = std::collections::HashMap::with_capacity(self.last.len().max(8));
        let mut any = false;
        for &pid in pids {
            let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for e in rd.flatten() {
                let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<i32>().ok()) else {
                    continue;
                };
                let Ok(txt) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))
                else {
                    continue;
                };
                if let Some(ns) = txt
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    now.insert((pid, tid), ns);
                    any = true;
                }
            }
        }
        if !any {
            return None;
        }
        if self.started {
            for (k, ns) in &now {
                let before = self.last.get(k).copied().unwrap_or(0);
                self.total_ns += ns.saturating_sub(before);
            }
        }
        self.started = true;
        self.last = now;
        Some(self.total_ns)
    }
}

pub fn take(
    dev: Option<&str>,
    srv_pids: &[i32],
    progress: &AtomicU64,
    cpu: &mut CpuTracker,
) -> Sample {
    let mut s = Sample {
        t: Some(Instant::now()),
        progress_bytes: progress.load(Relaxed),
        ..Default::default()
    };
    if let Some(d) = dev {
        if let Ok(all) = procfs::diskstats() {
            s.disk = all.into_iter().find(|x| x.name == d);
        }
    }
    if let Ok(k) = procfs::KernelStats::current() {
        let c = &k.total;
        s.cpu_user = c.user + c.nice;
        s.cpu_sys = c.system + c.irq.unwrap_or(0) + c.softirq.unwrap_or(0);
        s.cpu_iowait = c.iowait.unwrap_or(0);
        s.cpu_steal = c.steal.unwrap_or(0);
        s.cpu_total = c.user
            + c.nice
            + c.system
            + c.idle
            + s.cpu_iowait
            + c.irq.unwrap_or(0)
            + c.softirq.unwrap_or(0)
            + s.cpu_steal;
        s.ctxt = k.ctxt;
    }
    if let Ok(m) = procfs::Meminfo::current() {
        s.dirty_kb = m.dirty / 1024;
        s.writeback_kb = m.writeback / 1024;
    }
    if let Ok(v) = procfs::vmstat() {
        s.pgpgout = *v.get("pgpgout").unwrap_or(&0);
    }
    let (nr, bl) = softirq_totals();
    s.net_rx = nr;
    s.block_softirq = bl;
    s.interrupts = interrupts_total();
    for &pid in srv_pids {
        if let Some(c) = crate::util::proc_cpu_s(pid) {
            s.srv_cpu_s = Some(s.srv_cpu_s.unwrap_or(0.0) + c);
        }
        if let Ok(io) = procfs::process::Process::new(pid).and_then(|p| p.io()) {
            s.srv_write_bytes = Some(s.srv_write_bytes.unwrap_or(0) + io.write_bytes);
            s.srv_read_bytes = Some(s.srv_read_bytes.unwrap_or(0) + io.read_bytes);
        }
    }
    s.srv_cpu_ns = cpu.sample(srv_pids);
    s.gen_cpu_s = crate::util::proc_cpu_s(std::process::id() as i32);
    s
}

/// io_uring instances of a process, from /proc/<pid>/fdinfo: `rings=N;SqThread=..;SqThreadCpu=..;UserFiles=..;UserBufs=..`.
pub fn ring_fdinfo(pid: i32) -> String {
    let mut rings = 0;
    let mut parts: Vec<String> = Vec::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return String::new();
    };
    for e in rd.flatten() {
        let link = std::fs::read_link(e.path())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !link.contains("io_uring") {
            continue;
        }
        rings += 1;
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        for key in [
            "SqThread:",
            "SqThreadCpu:",
            "UserFiles:",
            "UserBufs:",
            "SqEntries:",
            "CqEntries:",
        ] {
            if let Some(l) = info.lines().find(|l| l.trim_start().starts_with(key)) {
                let v = l.split_whitespace().nth(1).unwrap_or("");
                parts.push(format!("r{rings}.{}={v}", key.trim_end_matches(':')));
            }
        }
    }
    if rings == 0 {
        return "rings=0".into();
    }
    format!("rings={rings};{}", parts.join(";"))
}

pub struct Sampler {
    stop: Arc<AtomicBool>,
    /// When set, samples are taken at `epoch + k * every` (see [`Sampler::align_to`]).
    epoch: Arc<Mutex<Option<Instant>>>,
    handle: Option<std::thread::JoinHandle<()>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    pub fdinfo: Arc<Mutex<String>>,
    /// The recorder, read once more at the end when the run was too short for a sample.
    pid: Option<i32>,
}

impl Sampler {
    pub fn start(
        dev: Option<String>,
        srv_pids: Vec<i32>,
        progress: Arc<AtomicU64>,
        every: Duration,
    ) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let fdinfo = Arc::new(Mutex::new(String::new()));
        let pid = srv_pids.first().copied();
        let epoch: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let (st, sa, fi, ep) = (stop.clone(), samples.clone(), fdinfo.clone(), epoch.clone());
        let handle = std::thread::Builder::new()
            .name("telemetry".into())
            .spawn(move || {
                let mut n = 0u64;
                let mut cpu = CpuTracker::default();
                while !st.load(Relaxed) {
                    let s = take(dev.as_deref(), &srv_pids, &progress, &mut cpu);
                    sa.lock().unwrap_or_else(|p| p.into_inner()).push(s);
                    if n == 8 {
                        if let Some(&pid) = srv_pids.first() {
                            *fi.lock().unwrap_or_else(|p| p.into_inner()) = ring_fdinfo(pid);
                        }
                    }
                    n += 1;
                    let now = Instant::now();
                    let aligned = *ep.lock().unwrap_or_else(|p| p.into_inner());
                    let t = match aligned {
                        Some(e) => next_tick(e, every, now),
                        None => now + every,
                    };
                    // Sleep in short steps (to stop promptly), the last one exactly to `t`.
                    loop {
                        let now = Instant::now();
                        if now >= t || st.load(Relaxed) {
                            break;
                        }
                        std::thread::sleep((t - now).min(Duration::from_millis(10)));
                    }
                }
            })
            .ok();
        Sampler {
            stop,
            epoch,
            handle,
            samples,
            fdinfo,
            pid,
        }
    }

    /// Takes the next samples at `t + k * every` (k any integer), so that the measured
    /// window starting at `t` begins and ends on a sample: its CPU, device and progress
    /// deltas then cover exactly the window.
    pub fn align_to(&self, t: Instant) {
        *self.epoch.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
    }

    pub fn finish(mut self) -> (Vec<Sample>, String) {
        self.stop.store(true, Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        let s = std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()));
        let mut f = self
            .fdinfo
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if f.is_empty() {
            if let Some(pid) = self.pid {
                f = ring_fdinfo(pid);
            }
        }
        (s, f)
    }
}

/// The first instant `epoch + k * every` (k any integer) later than `now` by at least 1 ms.
fn next_tick(epoch: Instant, every: Duration, now: Instant) -> Instant {
    let ev = every.as_secs_f64().max(1e-3);
    let target = now + Duration::from_millis(1);
    if target <= epoch {
        let back = ((epoch - target).as_secs_f64() / ev).floor();
        epoch - Duration::from_secs_f64(back * ev)
    } else {
        let k = ((target - epoch).as_secs_f64() / ev).ceil();
        epoch + Duration::from_secs_f64(k * ev)
    }
}

/// Per-run figures derived from the samples inside the measured window.
#[derive(Debug, Default, Clone)]
pub struct Derived {
    pub dev_mb_per_s: Option<f64>,
    pub dev_iops: Option<f64>,
    pub dev_merge_pct: Option<f64>,
    pub dev_await_ms: Option<f64>,
    pub dev_aqu_sz: Option<f64>,
    pub dev_util_pct: Option<f64>,
    pub ctx_switches_per_s: Option<f64>,
    pub steal_pct: Option<f64>,
    pub dirty_kb_max: Option<f64>,
    pub writeback_kb_max: Option<f64>,
    pub srv_cpu_s: Option<f64>,
    pub srv_write_mb_per_s: Option<f64>,
    pub net_rx_softirq_per_s: Option<f64>,
    pub block_softirq_per_s: Option<f64>,
    pub interrupts_per_s: Option<f64>,
    pub pgpgout_kb_per_s: Option<f64>,
    /// Seconds between the first and the last sample in the window (what the deltas cover).
    pub covered_s: Option<f64>,
    /// Generator progress (bytes acked or downloaded) over the same samples.
    pub progress_bytes: Option<u64>,
}

/// Samples this close to the window's ends count as inside it.
const WINDOW_TOLERANCE: Duration = Duration::from_millis(20);

pub fn derive(samples: &[Sample], ws: Instant, we: Instant) -> Derived {
    let lo = ws.checked_sub(WINDOW_TOLERANCE).unwrap_or(ws);
    let inwin: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t.is_some_and(|t| t >= lo && t <= we + WINDOW_TOLERANCE))
        .collect();
    let mut d = Derived::default();
    if inwin.len() < 2 {
        return d;
    }
    let (a, b) = (inwin[0], inwin[inwin.len() - 1]);
    let dt =
        b.t.expect("set")
            .duration_since(a.t.expect("set"))
            .as_secs_f64();
    if dt <= 0.0 {
        return d;
    }
    if let (Some(x), Some(y)) = (&a.disk, &b.disk) {
        let ios = (y.reads + y.writes).saturating_sub(x.reads + x.writes) as f64;
        let merges = (y.merged + y.writes_merged).saturating_sub(x.merged + x.writes_merged) as f64;
        let sectors = (y.sectors_read + y.sectors_written)
            .saturating_sub(x.sectors_read + x.sectors_written) as f64;
        let ticks = (y.time_reading + y.time_writing)
            .saturating_sub(x.time_reading + x.time_writing) as f64;
        d.dev_mb_per_s = Some(sectors * 512.0 / 1e6 / dt);
        d.dev_iops = Some(ios / dt);
        d.dev_merge_pct = if ios + merges > 0.0 {
            Some(100.0 * merges / (ios + merges))
        } else {
            Some(0.0)
        };
        d.dev_await_ms = if ios > 0.0 { Some(ticks / ios) } else { None };
        d.dev_aqu_sz = Some(
            y.weighted_time_in_progress
                .saturating_sub(x.weighted_time_in_progress) as f64
                / (dt * 1000.0),
        );
        d.dev_util_pct = Some(
            (100.0 * y.time_in_progress.saturating_sub(x.time_in_progress) as f64 / (dt * 1000.0))
                .min(100.0),
        );
    }
    d.ctx_switches_per_s = Some(b.ctxt.saturating_sub(a.ctxt) as f64 / dt);
    let tot = b.cpu_total.saturating_sub(a.cpu_total) as f64;
    if tot > 0.0 {
        d.steal_pct = Some(100.0 * b.cpu_steal.saturating_sub(a.cpu_steal) as f64 / tot);
    }
    d.dirty_kb_max = inwin.iter().map(|s| s.dirty_kb).max().map(|v| v as f64);
    d.writeback_kb_max = inwin.iter().map(|s| s.writeback_kb).max().map(|v| v as f64);
    d.covered_s = Some(dt);
    d.progress_bytes = Some(b.progress_bytes.saturating_sub(a.progress_bytes));
    d.srv_cpu_s = match (a.srv_cpu_ns, b.srv_cpu_ns, a.srv_cpu_s, b.srv_cpu_s) {
        (Some(x), Some(y), _, _) => Some(y.saturating_sub(x) as f64 / 1e9),
        (_, _, Some(x), Some(y)) => Some((y - x).max(0.0)),
        _ => None,
    };
    if let (Some(x), Some(y)) = (a.srv_write_bytes, b.srv_write_bytes) {
        d.srv_write_mb_per_s = Some(y.saturating_sub(x) as f64 / 1e6 / dt);
    }
    d.net_rx_softirq_per_s = Some(b.net_rx.saturating_sub(a.net_rx) as f64 / dt);
    d.block_softirq_per_s = Some(b.block_softirq.saturating_sub(a.block_softirq) as f64 / dt);
    d.interrupts_per_s = Some(b.interrupts.saturating_sub(a.interrupts) as f64 / dt);
    d.pgpgout_kb_per_s = Some((b.pgpgout - a.pgpgout).max(0) as f64 / dt);
    d
}

/// Columns of the time-series files (results-schema).
pub use results_schema::series::COLUMNS as TIMESERIES_COLUMNS;

/// Writes one row per sample interval; `t_s` is relative to the window start (ramp-up negative).
pub fn write_timeseries(path: &Path, samples: &[Sample], ws: Instant) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(f, "{}", TIMESERIES_COLUMNS.join(","))?;
    let o = crate::util::fmt_opt;
    for w in samples.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let (Some(ta), Some(tb)) = (a.t, b.t) else {
            continue;
        };
        let dt = tb.duration_since(ta).as_secs_f64();
        if dt <= 0.0 {
            continue;
        }
        let t_s = if tb >= ws {
            tb.duration_since(ws).as_secs_f64()
        } else {
            -ws.duration_since(tb).as_secs_f64()
        };
        let (mut dev_mb_per_s, mut dev_iops, mut util) = (None, None, None);
        if let (Some(x), Some(y)) = (&a.disk, &b.disk) {
            dev_mb_per_s = Some(
                (y.sectors_read + y.sectors_written)
                    .saturating_sub(x.sectors_read + x.sectors_written) as f64
                    * 512.0
                    / 1e6
                    / dt,
            );
            dev_iops = Some((y.reads + y.writes).saturating_sub(x.reads + x.writes) as f64 / dt);
            util = Some(
                (100.0 * y.time_in_progress.saturating_sub(x.time_in_progress) as f64
                    / (dt * 1000.0))
                    .min(100.0),
            );
        }
        let tot = b.cpu_total.saturating_sub(a.cpu_total) as f64;
        let pct = |x: u64, y: u64| {
            if tot > 0.0 {
                Some(100.0 * y.saturating_sub(x) as f64 / tot)
            } else {
                None
            }
        };
        let cpu_pct = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) => Some(100.0 * (y - x).max(0.0) / dt),
            _ => None,
        };
        writeln!(
            f,
            "{:.3},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            t_s,
            o(Some(
                b.progress_bytes.saturating_sub(a.progress_bytes) as f64 / 1e6 / dt
            )),
            o(dev_mb_per_s),
            o(dev_iops),
            o(util),
            b.dirty_kb,
            b.writeback_kb,
            o(pct(a.cpu_user, b.cpu_user)),
            o(pct(a.cpu_sys, b.cpu_sys)),
            o(pct(a.cpu_iowait, b.cpu_iowait)),
            o(pct(a.cpu_steal, b.cpu_steal)),
            o(match (a.srv_cpu_ns, b.srv_cpu_ns) {
                (Some(x), Some(y)) => Some(100.0 * y.saturating_sub(x) as f64 / 1e9 / dt),
                _ => cpu_pct(a.srv_cpu_s, b.srv_cpu_s),
            }),
            o(cpu_pct(a.gen_cpu_s, b.gen_cpu_s)),
            o(Some(b.ctxt.saturating_sub(a.ctxt) as f64 / dt)),
            o(Some(b.net_rx.saturating_sub(a.net_rx) as f64 / dt)),
            o(Some(
                b.block_softirq.saturating_sub(a.block_softirq) as f64 / dt
            )),
            o(Some((b.pgpgout - a.pgpgout).max(0) as f64 / dt)),
        )?;
    }
    f.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schedstat sum agrees with /proc/<pid>/stat's utime + stime (every thread), at
    /// nanosecond rather than 10 ms resolution, and counts a thread created between samples.
    #[test]
    fn cpu_tracker_sums_every_thread_like_proc_stat() {
        let me = std::process::id() as i32;
        let mut t = CpuTracker::default();
        let stat0 = crate::util::proc_cpu_s(me).unwrap();
        let ns0 = t.sample(&[me]).expect("schedstat is readable");
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let spinner = std::thread::spawn(move || {
            let mut x = 1u64;
            while !s2.load(Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            x
        });
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(300) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let ns1 = t.sample(&[me]).unwrap();
        let stat1 = crate::util::proc_cpu_s(me).unwrap();
        stop.store(true, Relaxed);
        let _ = spinner.join();
        let (by_ns, by_stat) = ((ns1 - ns0) as f64 / 1e9, stat1 - stat0);
        assert!(by_ns > 0.05, "the spinning thread ran: {by_ns} s");
        assert!(
            (by_ns - by_stat).abs() < 0.03 + 0.1 * by_stat,
            "schedstat {by_ns:.3} s vs stat {by_stat:.3} s"
        );
    }

    #[test]
    fn aligned_ticks_fall_on_the_epoch_grid() {
        let e = Instant::now() + Duration::from_secs(2);
        let every = Duration::from_millis(250);
        let now = Instant::now();
        let t = next_tick(e, every, now);
        let off = (e - t).as_secs_f64() / 0.25;
        assert!(t > now && (off - off.round()).abs() < 1e-6, "{off}");
        let later = e + Duration::from_millis(600);
        assert_eq!(next_tick(e, every, later), e + Duration::from_millis(750));
    }
}

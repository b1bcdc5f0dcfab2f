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
    pub srv_cpu_s: Option<f64>,
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

pub fn take(dev: Option<&str>, srv_pids: &[i32], progress: &AtomicU64) -> Sample {
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
        let (st, sa, fi) = (stop.clone(), samples.clone(), fdinfo.clone());
        let handle = std::thread::Builder::new()
            .name("telemetry".into())
            .spawn(move || {
                let mut n = 0u64;
                while !st.load(Relaxed) {
                    let s = take(dev.as_deref(), &srv_pids, &progress);
                    sa.lock().unwrap_or_else(|p| p.into_inner()).push(s);
                    if n == 8 {
                        if let Some(&pid) = srv_pids.first() {
                            *fi.lock().unwrap_or_else(|p| p.into_inner()) = ring_fdinfo(pid);
                        }
                    }
                    n += 1;
                    let t = Instant::now() + every;
                    while Instant::now() < t && !st.load(Relaxed) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            })
            .ok();
        Sampler {
            stop,
            handle,
            samples,
            fdinfo,
            pid,
        }
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
}

pub fn derive(samples: &[Sample], ws: Instant, we: Instant) -> Derived {
    let inwin: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.t.is_some_and(|t| t >= ws && t <= we + Duration::from_millis(300))
        })
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
    if let (Some(x), Some(y)) = (a.srv_cpu_s, b.srv_cpu_s) {
        d.srv_cpu_s = Some((y - x).max(0.0));
    }
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
            o(cpu_pct(a.srv_cpu_s, b.srv_cpu_s)),
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

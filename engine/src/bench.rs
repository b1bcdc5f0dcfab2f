//! `recorder io-bench`: file I/O benchmark with any ring configuration and [file] option,
//! side by side with fio in the same run.
//!
//! Each pattern is run `repeat` times, alternating ours and fio (ours, fio, ours, fio, ...)
//! so that drift on a shared machine hits both alike; the medians and their ratio are
//! reported. Write runs start from a deleted file for both (fio would otherwise overwrite
//! its previous run's blocks); read runs read one file laid out once, shared by both. The
//! page cache of the file is dropped before every run (fio's `invalidate=1`).
//!
//! Ours: MB/s (10^6), IOPS, I/Os per system call (io_uring_enter calls on the ring backend),
//! CPU seconds per GiB (getrusage user+sys of the process over the measured window).
//! fio: MB/s and IOPS from its JSON; CPU s/GiB from getrusage(RUSAGE_CHILDREN) around the
//! fio process (fio's own `usr_cpu`/`sys_cpu` are per job thread and miss io-wq/SQPOLL).
//!
//! What fio cannot express is said, and that pattern gets no fio figure rather than a
//! figure for something else: RWF_DSYNC, time-based group commit, READV/WRITEV_FIXED
//! (fio's fixedbufs uses the non-vectored fixed opcodes), RWF_DONTCACHE (fio 3.33's
//! `uncached` sends the pre-merge RWF_UNCACHED value 0x40, which is RWF_ATOMIC today).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::file::{format_bytes, Direct, Durability};
use crate::config::{self, choice_name, parse_bytes, Config, ConfigError};
use crate::fileio::{self, Backend, FileIoError, Fill, Job, JobResult, Pattern, WriteMode};
use crate::sys::fileops::{ReadOp, WriteOp};
use crate::sys::fs;
use crate::sys::mem::{self, PageKind};

/// What to benchmark.
#[derive(Clone, Debug)]
pub struct BenchSpec {
    /// Directory holding the benchmark files.
    pub dir: PathBuf,
    /// Bytes per run.
    pub size: u64,
    pub patterns: Vec<Pattern>,
    pub backend: Backend,
    /// Ring and file options (block-size, io-depth, opcodes, ...).
    pub cfg: Config,
    /// Run fio with the equivalent settings, alternating with ours.
    pub fio: bool,
    /// Runs of each side per pattern (median reported).
    pub repeat: usize,
    /// fio binary.
    pub fio_bin: String,
    /// How write runs treat the file (the same for fio).
    pub write_mode: WriteMode,
    /// fio's buffer memory (its `iomem`).
    pub fio_iomem: FioIomem,
    /// Raise vm.nr_hugepages for the run when the huge pages asked for are short, and put
    /// the old value back at the end.
    pub reserve_huge_pages: bool,
    /// `--nop SECONDS`: NOPs only on the configured ring (its overhead floor), no files.
    pub nop: Option<Duration>,
}

/// fio's buffer memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FioIomem {
    /// Like ours: 4 KiB pages when buffer-memory=pages, else hugetlb (`shmhuge`) when the
    /// pool has room, else 4 KiB pages with a note that the sides differ.
    Auto,
    /// `--iomem=malloc` (fio's default: 4 KiB pages).
    Malloc,
    /// `--iomem=shmhuge` (SysV shared memory from the hugetlb pool). fio has no THP mode.
    Shmhuge,
}

impl FioIomem {
    pub fn parse(s: &str) -> Result<FioIomem, String> {
        match s {
            "auto" => Ok(FioIomem::Auto),
            "malloc" => Ok(FioIomem::Malloc),
            "shmhuge" => Ok(FioIomem::Shmhuge),
            _ => Err(format!("{s:?} is not one of auto, malloc, shmhuge")),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            FioIomem::Auto => "auto",
            FioIomem::Malloc => "malloc",
            FioIomem::Shmhuge => "shmhuge",
        }
    }
}

impl BenchSpec {
    pub fn new(dir: impl Into<PathBuf>, cfg: Config) -> BenchSpec {
        BenchSpec {
            dir: dir.into(),
            size: 1 << 30,
            patterns: vec![Pattern::Write, Pattern::Read],
            backend: Backend::Uring,
            cfg,
            fio: false,
            repeat: 3,
            fio_bin: "fio".into(),
            write_mode: WriteMode::Fresh,
            fio_iomem: FioIomem::Auto,
            reserve_huge_pages: false,
            nop: None,
        }
    }
}

/// One measured run.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    pub mbps: f64,
    pub iops: f64,
    /// I/Os per system call (ours only; fio does not report it).
    pub ios_per_syscall: Option<f64>,
    pub cpu_s_per_gib: f64,
    pub elapsed_s: f64,
    /// GiB moved (fio parsing only).
    #[doc(hidden)]
    pub gib: Option<f64>,
}

impl From<&JobResult> for Measurement {
    fn from(r: &JobResult) -> Self {
        Measurement {
            mbps: r.mbps(),
            iops: r.iops(),
            ios_per_syscall: Some(r.ios_per_syscall()),
            cpu_s_per_gib: r.cpu_s_per_gib(),
            elapsed_s: r.elapsed_s,
            gib: None,
        }
    }
}

/// Results of one pattern.
#[derive(Clone, Debug)]
pub struct PatternResult {
    pub pattern: Pattern,
    pub ours: Vec<Measurement>,
    pub fio: Vec<Measurement>,
    /// Why fio was not run for this pattern (no equivalent setting), if so.
    pub fio_skipped: Option<String>,
    /// The fio command line used.
    pub fio_command: Option<String>,
    /// The effective settings of our last run.
    pub effective: fileio::Effective,
    /// fio's start-up CPU seconds (a one-block run), subtracted from its runs.
    pub fio_startup_cpu_s: Option<f64>,
    pub syncs: u64,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

impl PatternResult {
    pub fn ours_median(&self) -> Option<Measurement> {
        med(&self.ours)
    }
    pub fn fio_median(&self) -> Option<Measurement> {
        med(&self.fio)
    }
    /// ours / fio throughput: the median of the per-pair ratios (runs i of each side
    /// were measured back to back).
    pub fn ratio_mbps(&self) -> Option<f64> {
        median(self.pair_ratios(|m| m.mbps))
    }
    /// ours / fio CPU seconds per GiB, median of the per-pair ratios (below 1 = we use
    /// less CPU).
    pub fn ratio_cpu(&self) -> Option<f64> {
        median(self.pair_ratios(|m| m.cpu_s_per_gib))
    }
    /// Per-pair ours/fio ratios of one figure.
    pub fn pair_ratios(&self, f: impl Fn(&Measurement) -> f64) -> Vec<f64> {
        self.ours
            .iter()
            .zip(&self.fio)
            .filter(|(_, b)| f(b) > 0.0)
            .map(|(a, b)| f(a) / f(b))
            .collect()
    }
}

fn med(v: &[Measurement]) -> Option<Measurement> {
    Some(Measurement {
        mbps: median(v.iter().map(|m| m.mbps).collect())?,
        iops: median(v.iter().map(|m| m.iops).collect())?,
        ios_per_syscall: median(v.iter().filter_map(|m| m.ios_per_syscall).collect()),
        cpu_s_per_gib: median(v.iter().map(|m| m.cpu_s_per_gib).collect())?,
        elapsed_s: median(v.iter().map(|m| m.elapsed_s).collect())?,
        gib: None,
    })
}

/// The whole benchmark.
#[derive(Clone, Debug)]
pub struct BenchResult {
    pub spec: BenchSpec,
    pub results: Vec<PatternResult>,
    /// fio version string, when fio ran.
    pub fio_version: Option<String>,
    /// fio's `iomem` as run (auto resolved).
    pub fio_iomem: FioIomem,
    /// How the buffer memory of the two sides compares, and what was reserved.
    pub memory_notes: Vec<String>,
}

#[derive(Debug)]
pub enum BenchError {
    Engine(FileIoError),
    Fio(String),
}

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BenchError::Engine(e) => write!(f, "{e}"),
            BenchError::Fio(m) => write!(f, "fio: {m}"),
        }
    }
}

impl std::error::Error for BenchError {}

impl From<FileIoError> for BenchError {
    fn from(e: FileIoError) -> Self {
        BenchError::Engine(e)
    }
}

/// fio's arguments for the same work as ours, or why there is no equivalent.
pub fn fio_args(
    spec: &BenchSpec,
    pattern: Pattern,
    path: &Path,
    direct_effective: bool,
) -> Result<Vec<String>, String> {
    let f = &spec.cfg.file;
    let mut a: Vec<String> = vec![
        "--name=io-bench".into(),
        format!("--filename={}", path.display()),
        format!("--rw={}", pattern.name()),
        format!("--bs={}", f.block_size),
        format!("--direct={}", direct_effective as u8),
        "--output-format=json".into(),
        "--invalidate=1".into(),
        "--randrepeat=0".into(),
        format!("--fallocate={}", if f.prealloc { "native" } else { "none" }),
    ];
    if spec.fio_iomem == FioIomem::Shmhuge {
        a.push("--iomem=shmhuge".into());
    }
    if f.prealloc && f.prealloc_bytes != 0 && f.prealloc_bytes != spec.size {
        return Err("fio preallocates exactly the job size; prealloc-bytes differs".into());
    }
    if f.uncached {
        return Err("fio 3.33's uncached sends the pre-merge RWF_UNCACHED (0x40, RWF_ATOMIC on this kernel), not RWF_DONTCACHE".into());
    }
    if pattern.is_write() {
        match f.durability {
            Durability::None => {}
            Durability::Odsync => a.push("--sync=dsync".into()),
            Durability::RwfDsync => {
                return Err("fio has no per-write RWF_DSYNC for io_uring".into())
            }
            Durability::Fdatasync => {
                if f.sync_interval_ms != 0 {
                    return Err("fio has no time-based fdatasync (sync-interval-ms)".into());
                }
                let n = if f.sync_interval_bytes == 0 {
                    1
                } else {
                    f.sync_interval_bytes.div_ceil(f.block_size)
                };
                a.push(format!("--fdatasync={n}"));
                a.push("--end_fsync=1".into());
            }
        }
    }
    match spec.backend {
        Backend::Uring => {
            a.push("--ioengine=io_uring".into());
            a.push(format!("--iodepth={}", f.io_depth));
            // fio's iodepth_batch_submit is our submit-batch (0 = the whole queue).
            let batch = if f.submit_batch == 0 {
                f.io_depth
            } else {
                f.submit_batch
            };
            a.push(format!("--iodepth_batch_submit={batch}"));
            a.push(format!("--size={}", spec.size));
            if pattern.is_write() {
                match f.write_op {
                    WriteOp::Write => a.push("--nonvectored=1".into()),
                    WriteOp::Writev => a.push("--nonvectored=0".into()),
                    WriteOp::WriteFixed => a.push("--fixedbufs=1".into()),
                    WriteOp::WritevFixed => {
                        return Err("fio has no WRITEV_FIXED (fixedbufs uses WRITE_FIXED)".into())
                    }
                }
            } else {
                match f.read_op {
                    ReadOp::Read => a.push("--nonvectored=1".into()),
                    ReadOp::Readv => a.push("--nonvectored=0".into()),
                    ReadOp::ReadFixed => a.push("--fixedbufs=1".into()),
                    ReadOp::ReadvFixed => {
                        return Err("fio has no READV_FIXED (fixedbufs uses READ_FIXED)".into())
                    }
                }
            }
            if f.register_buffers && !a.iter().any(|x| x == "--fixedbufs=1") {
                // fio registers buffers only to use the fixed opcodes.
                return Err("fio registers buffers only together with the fixed opcodes".into());
            }
            if f.register_files {
                a.push("--registerfiles=1".into());
            }
            a.extend(ring_fio_args(&spec.cfg)?);
        }
        Backend::Blocking => {
            // io-depth threads sharing the file, each with its slice (fio cannot share a
            // cursor between jobs; random patterns stay random within each slice).
            let jobs = f.io_depth as u64;
            let per = spec.size / jobs / f.block_size * f.block_size;
            if per == 0 || per * jobs != spec.size {
                return Err(format!("size {} does not split into {jobs} equal whole-block slices for fio's psync jobs", spec.size));
            }
            a.push("--ioengine=psync".into());
            a.push("--thread".into());
            a.push(format!("--numjobs={jobs}"));
            a.push(format!("--size={per}"));
            a.push(format!("--offset_increment={per}"));
            a.push("--group_reporting".into());
        }
    }
    Ok(a)
}

/// The setup flags fio 3.33's io_uring engine always asks for (seen with strace):
/// CQSIZE | COOP_TASKRUN | SINGLE_ISSUER | DEFER_TASKRUN (it drops those it gets EINVAL
/// for, e.g. with SQPOLL). Ours are whatever [ring] says; both are printed.
pub const FIO_FORCED_FLAGS: &str = "IORING_SETUP_CQSIZE|IORING_SETUP_COOP_TASKRUN|IORING_SETUP_SINGLE_ISSUER|IORING_SETUP_DEFER_TASKRUN";

/// fio options for the [ring] configuration. fio can express IOPOLL (hipri), SQPOLL
/// (sqthread_poll) and SQ_AFF (sqthread_poll_cpu); other flags it cannot switch, so they
/// are reported side by side rather than refused.
fn ring_fio_args(cfg: &Config) -> Result<Vec<String>, String> {
    let r = &cfg.ring;
    let mut a = Vec::new();
    if r.hybrid_iopoll {
        return Err("fio 3.33 has no HYBRID_IOPOLL".into());
    }
    if r.iopoll {
        a.push("--hipri=1".to_string());
    }
    if r.sqpoll {
        a.push("--sqthread_poll=1".to_string());
        if let Some(cpu) = r.sq_thread_cpu {
            a.push(format!("--sqthread_poll_cpu={cpu}"));
        }
        if r.sq_thread_idle_ms.is_some() {
            return Err("fio has no option for the SQPOLL idle time (sq-thread-idle-ms)".into());
        }
    }
    Ok(a)
}

fn fio_version(bin: &str) -> Result<String, BenchError> {
    let o = Command::new(bin).arg("--version").output().map_err(|e| {
        BenchError::Fio(format!(
            "cannot run {bin:?} ({e}): install fio or leave out --fio"
        ))
    })?;
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// Runs fio once and parses its JSON.
/// Runs fio once and parses its JSON. CPU: fio's own usr_cpu/sys_cpu come from
/// getrusage(RUSAGE_THREAD) of its job thread and leave out io_uring's io-wq and SQPOLL
/// threads, which our figure includes; so the whole fio process is counted
/// (RUSAGE_CHILDREN around it), minus `startup_cpu_s`, fio's start-up and tear-down
/// measured with a one-block run.
fn run_fio(
    bin: &str,
    args: &[String],
    pattern: Pattern,
    startup_cpu_s: f64,
) -> Result<(Measurement, f64), BenchError> {
    let (u0, s0) = fs::children_cpu_times();
    let o = Command::new(bin)
        .args(args)
        .output()
        .map_err(|e| BenchError::Fio(format!("cannot run {bin:?}: {e}")))?;
    let (u1, s1) = fs::children_cpu_times();
    let out = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() {
        return Err(BenchError::Fio(format!(
            "{bin} {} failed ({}): {}{}",
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim(),
            out.trim()
        )));
    }
    let mut m = parse_fio_json(&out, pattern).map_err(BenchError::Fio)?;
    let cpu = (u1 - u0) + (s1 - s0);
    if let Some(gib) = m.gib.filter(|&g| g > 0.0) {
        m.cpu_s_per_gib = (cpu - startup_cpu_s).max(0.0) / gib;
    }
    Ok((m, cpu))
}

/// fio's CPU for start-up and tear-down: the same command moving one block per job.
fn fio_startup_cpu(
    bin: &str,
    args: &[String],
    pattern: Pattern,
    bs: u64,
) -> Result<f64, BenchError> {
    let tiny: Vec<String> = args
        .iter()
        .map(|a| {
            if a.starts_with("--size=") {
                format!("--size={bs}")
            } else if a.starts_with("--offset_increment=") {
                format!("--offset_increment={bs}")
            } else {
                a.clone()
            }
        })
        .collect();
    Ok(run_fio(bin, &tiny, pattern, 0.0)?.1)
}

/// Parses fio's `--output-format=json` (one job or group-reported jobs).
pub fn parse_fio_json(text: &str, pattern: Pattern) -> Result<Measurement, String> {
    // fio may print notes before the JSON object.
    let start = text.find('{').ok_or("no JSON object in fio's output")?;
    let v: Value = serde_json::from_str(&text[start..])
        .map_err(|e| format!("fio's JSON does not parse: {e}"))?;
    let job = v
        .get("jobs")
        .and_then(|j| j.get(0))
        .ok_or("fio's JSON has no jobs")?;
    if let Some(err) = job.get("error").and_then(Value::as_i64).filter(|&e| e != 0) {
        return Err(format!("fio job error {err}"));
    }
    let side = job
        .get(if pattern.is_write() { "write" } else { "read" })
        .ok_or("fio's JSON has no read/write section")?;
    let num = |o: &Value, k: &str| {
        o.get(k)
            .and_then(Value::as_f64)
            .ok_or(format!("fio's JSON lacks {k}"))
    };
    let bw = num(side, "bw_bytes")?;
    let iops = num(side, "iops")?;
    let io_bytes = num(side, "io_bytes")?;
    let runtime_ms = num(side, "runtime")?;
    let job_runtime_ms = num(job, "job_runtime").unwrap_or(runtime_ms);
    let cpu_pct = num(job, "usr_cpu")? + num(job, "sys_cpu")?;
    let cpu_s = cpu_pct / 100.0 * job_runtime_ms / 1000.0;
    let gib = io_bytes / (1u64 << 30) as f64;
    if io_bytes <= 0.0 || runtime_ms <= 0.0 {
        return Err("fio moved no data".into());
    }
    Ok(Measurement {
        mbps: bw / 1e6,
        iops,
        ios_per_syscall: None,
        cpu_s_per_gib: cpu_s / gib,
        elapsed_s: runtime_ms / 1000.0,
        gib: Some(gib),
    })
}

fn drop_cache(path: &Path) {
    if let Ok(fd) = fs::open(
        path,
        fs::OpenFlags {
            read: true,
            ..Default::default()
        },
    ) {
        let _ = fs::fadvise_dontneed(&fd);
    }
}

/// Runs the benchmark. Errors from our engine (including "unsupported") stop it.
pub fn run(spec: &BenchSpec) -> Result<BenchResult, BenchError> {
    fileio::validate(&spec.cfg).map_err(FileIoError::from)?;
    std::fs::create_dir_all(&spec.dir).map_err(|e| FileIoError::Io {
        what: format!("create {}", spec.dir.display()),
        err: e,
    })?;
    let fio_version = if spec.fio {
        Some(fio_version(&spec.fio_bin)?)
    } else {
        None
    };
    let mut memory_notes = Vec::new();
    let (fio_iomem, _reserved) = plan_huge_pages(spec, &mut memory_notes)?;
    let spec = &BenchSpec {
        fio_iomem,
        ..spec.clone()
    };
    let wpath = spec.dir.join("io-bench.write.dat");
    let rpath = spec.dir.join("io-bench.read.dat");
    let mut results = Vec::new();
    let repeat = spec.repeat.max(1);
    for &pattern in &spec.patterns {
        let path = if pattern.is_write() { &wpath } else { &rpath };
        let needs_layout = !pattern.is_write() || spec.write_mode == WriteMode::Overwrite;
        if needs_layout {
            let ok = std::fs::metadata(path)
                .map(|m| m.len() >= spec.size)
                .unwrap_or(false);
            if !ok {
                fileio::lay_out(path, spec.size, spec.cfg.file.block_size.max(1 << 20), 1)?;
            }
        }
        let mut job = Job::new(path, spec.size, pattern);
        job.fill = Fill::Once;
        job.write_mode = spec.write_mode;
        // Puts the file in the same state before each run, ours or fio's.
        let reset = |path: &Path| -> Result<(), BenchError> {
            if !pattern.is_write() || spec.write_mode == WriteMode::Overwrite {
                drop_cache(path);
                return Ok(());
            }
            let _ = std::fs::remove_file(path);
            if spec.write_mode == WriteMode::Sparse {
                let fd = fs::open(
                    path,
                    fs::OpenFlags {
                        write: true,
                        create: true,
                        ..Default::default()
                    },
                )
                .map_err(|e| FileIoError::Io {
                    what: format!("create {}", path.display()),
                    err: e,
                })?;
                fs::truncate(&fd, spec.size).map_err(|e| FileIoError::Io {
                    what: "ftruncate".into(),
                    err: e,
                })?;
            }
            Ok(())
        };
        let mut pr: Option<PatternResult> = None;
        // Pairs alternate their order (ours then fio, fio then ours, ...): on this kind of
        // machine the second run of a pair is often faster (the host's cache has settled),
        // and a fixed order would bias every ratio the same way.
        let run_fio_into = |p: &mut PatternResult, direct: bool| -> Result<(), BenchError> {
            let args = fio_args(spec, pattern, path, direct).map_err(BenchError::Fio)?;
            reset(path)?;
            if p.fio_startup_cpu_s.is_none() {
                p.fio_startup_cpu_s = Some(fio_startup_cpu(
                    &spec.fio_bin,
                    &args,
                    pattern,
                    spec.cfg.file.block_size,
                )?);
                reset(path)?;
            }
            let startup = p.fio_startup_cpu_s.unwrap_or(0.0);
            p.fio
                .push(run_fio(&spec.fio_bin, &args, pattern, startup)?.0);
            Ok(())
        };
        for i in 0..repeat {
            let fio_first = i % 2 == 1;
            if fio_first {
                if let Some(p) = pr.as_mut().filter(|p| p.fio_command.is_some()) {
                    let direct = p.effective.direct;
                    run_fio_into(p, direct)?;
                }
            }
            reset(path)?;
            let r = fileio::run(&job, &spec.cfg, spec.backend)?;
            let p = pr.get_or_insert_with(|| {
                let (fio_command, fio_skipped) = if spec.fio {
                    match fio_args(spec, pattern, path, r.effective.direct) {
                        Ok(a) => (Some(format!("{} {}", spec.fio_bin, a.join(" "))), None),
                        Err(why) => (None, Some(why)),
                    }
                } else {
                    (None, None)
                };
                PatternResult {
                    pattern,
                    ours: Vec::new(),
                    fio: Vec::new(),
                    fio_skipped,
                    fio_command,
                    effective: r.effective.clone(),
                    fio_startup_cpu_s: None,
                    syncs: r.syncs,
                }
            });
            p.ours.push(Measurement::from(&r));
            if !fio_first && p.fio_command.is_some() {
                run_fio_into(p, r.effective.direct)?;
            }
        }
        if pattern.is_write() && spec.write_mode != WriteMode::Overwrite {
            let _ = std::fs::remove_file(path);
        }
        results.extend(pr);
    }
    for r in &results {
        let e = &r.effective;
        if e.buffer_memory != PageKind::Small {
            if let Some(h) = e.arena_huge_bytes {
                memory_notes.push(format!(
                    "{}: our arena {} MiB, {} MiB of it in huge pages",
                    r.pattern.name(),
                    e.arena_bytes >> 20,
                    h >> 20
                ));
            }
        }
    }
    Ok(BenchResult {
        spec: spec.clone(),
        results,
        fio_version,
        fio_iomem,
        memory_notes,
    })
}

/// The hugetlb pool as /proc/meminfo shows it: (total, free) 2 MiB pages.
fn huge_pool() -> Option<(u64, u64)> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        m.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    Some((field("HugePages_Total:")?, field("HugePages_Free:")?))
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// Puts vm.nr_hugepages back to what it was when dropped.
struct HugePoolGuard {
    old: u64,
}

impl Drop for HugePoolGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(NR_HUGEPAGES, self.old.to_string()) {
            eprintln!(
                "io-bench: could not put vm.nr_hugepages back to {}: {e}; do it by hand: echo {} > {NR_HUGEPAGES}",
                self.old, self.old
            );
        }
    }
}

/// Decides fio's iomem for `spec.fio_iomem` and `file.buffer-memory`, reserving huge
/// pages when asked. Notes say when the two sides' buffer memory differs.
fn plan_huge_pages(
    spec: &BenchSpec,
    notes: &mut Vec<String>,
) -> Result<(FioIomem, Option<HugePoolGuard>), BenchError> {
    let f = &spec.cfg.file;
    let huge = mem::HUGE_PAGE_BYTES as u64;
    // fio's buffer: io-depth blocks plus its rounding to its hugepage-size (4 MiB) and
    // alignment slack (measured with fio 3.33: 32 x 1 MiB needs 18-20 pages).
    let fio_need = if spec.fio {
        (f.io_depth as u64 * f.block_size).div_ceil(huge) + 4
    } else {
        0
    };
    let ours_need = if f.buffer_memory == PageKind::Hugetlb {
        (f.arena_bytes_effective()
            .max(f.io_depth as u64 * f.block_size))
        .div_ceil(huge)
    } else {
        0
    };
    let wants_fio_huge = spec.fio
        && match spec.fio_iomem {
            FioIomem::Auto => f.buffer_memory != PageKind::Small,
            FioIomem::Shmhuge => true,
            FioIomem::Malloc => false,
        };
    let need = ours_need + if wants_fio_huge { fio_need } else { 0 };
    let mut guard = None;
    let (mut total, mut free) = huge_pool().unwrap_or((0, 0));
    if spec.reserve_huge_pages && need > free {
        let want = total + (need - free);
        std::fs::write(NR_HUGEPAGES, want.to_string()).map_err(|e| {
            BenchError::Fio(format!(
                "--reserve-huge-pages: cannot write {want} to {NR_HUGEPAGES} ({e}); run as root or reserve them yourself"
            ))
        })?;
        let old = total;
        guard = Some(HugePoolGuard { old });
        (total, free) = huge_pool().unwrap_or((0, 0));
        notes.push(format!(
            "vm.nr_hugepages raised from {old} to {total} for this run (asked {want}; {free} free), put back to {old} at the end"
        ));
    }
    let room_for_fio = free >= ours_need + fio_need;
    let iomem = match spec.fio_iomem {
        FioIomem::Auto if wants_fio_huge && room_for_fio => FioIomem::Shmhuge,
        FioIomem::Auto => FioIomem::Malloc,
        FioIomem::Shmhuge if spec.fio && !room_for_fio => {
            return Err(BenchError::Fio(format!(
                "--fio-iomem shmhuge needs {} free 2 MiB huge pages and the pool has {free}: add --reserve-huge-pages or echo N > {NR_HUGEPAGES}",
                ours_need + fio_need
            )))
        }
        x => x,
    };
    if spec.fio {
        let ours = choice_name(f.buffer_memory, crate::config::file::BUFFER_MEMORIES);
        let like = match (f.buffer_memory, iomem) {
            (PageKind::Small, FioIomem::Malloc) => true,
            (PageKind::Small, _) | (_, FioIomem::Malloc) => false,
            _ => true,
        };
        if like {
            notes.push(format!(
                "buffer memory: ours {ours}, fio iomem={}",
                iomem.name()
            ));
        } else {
            notes.push(format!(
                "buffer memory differs: ours {ours}, fio iomem={} (4 KiB pages unless shmhuge). Not like-for-like: \
                 huge pages alone can change large O_DIRECT I/O a lot here; for a fair ratio add --reserve-huge-pages \
                 (fio then uses shmhuge) or set --buffer-memory pages",
                iomem.name()
            ));
        }
    }
    Ok((iomem, guard))
}

impl BenchResult {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let s = &self.spec;
        let f = &s.cfg.file;
        let mut out = format!(
            "io-bench: backend={} write-mode={} size={} bs={} qd={} direct={} write-op={} read-op={} register-buffers={} register-files={} durability={} runs={} (median)\n",
            s.backend.name(),
            s.write_mode.name(),
            format_bytes(s.size),
            format_bytes(f.block_size),
            f.io_depth,
            s.cfg.get("file.direct").unwrap_or_default(),
            s.cfg.get("file.write-op").unwrap_or_default(),
            s.cfg.get("file.read-op").unwrap_or_default(),
            f.register_buffers,
            f.register_files,
            s.cfg.get("file.durability").unwrap_or_default(),
            s.repeat.max(1)
        );
        out.push_str(&format!(
            "{:<10} {:>10} {:>10} {:>10} {:>10} | {:>10} {:>10} | {:>8} {:>8}\n",
            "pattern", "MB/s", "IOPS", "IO/call", "CPUs/GiB", "fio MB/s", "CPUs/GiB", "MB/s", "CPU"
        ));
        out.push_str(&format!(
            "{:<10} {:>43} | {:>21} | {:>17}\n",
            "", "ours", "fio", "ours/fio"
        ));
        for r in &self.results {
            let o = r.ours_median();
            let fm = r.fio_median();
            let cell = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |x| format!("{x:.p$}"));
            out.push_str(&format!(
                "{:<10} {:>10} {:>10} {:>10} {:>10} | {:>10} {:>10} | {:>8} {:>8}\n",
                r.pattern.name(),
                cell(o.as_ref().map(|m| m.mbps), 0),
                cell(o.as_ref().map(|m| m.iops), 0),
                cell(o.as_ref().and_then(|m| m.ios_per_syscall), 2),
                cell(o.as_ref().map(|m| m.cpu_s_per_gib), 3),
                cell(fm.as_ref().map(|m| m.mbps), 0),
                cell(fm.as_ref().map(|m| m.cpu_s_per_gib), 3),
                cell(r.ratio_mbps(), 3),
                cell(r.ratio_cpu(), 3),
            ));
        }
        for r in &self.results {
            let pr = r.pair_ratios(|m| m.mbps);
            if pr.len() > 1 {
                let lo = pr.iter().cloned().fold(f64::INFINITY, f64::min);
                let hi = pr.iter().cloned().fold(0.0, f64::max);
                out.push_str(&format!(
                    "{}: ours/fio MB/s per pair {:.3}..{:.3} over {} pairs\n",
                    r.pattern.name(),
                    lo,
                    hi,
                    pr.len()
                ));
            }
        }
        for r in &self.results {
            if let Some(why) = &r.fio_skipped {
                out.push_str(&format!("fio not run for {}: {why}\n", r.pattern.name()));
            }
            if let Some(why) = &r.effective.direct_fallback_reason {
                out.push_str(&format!(
                    "{}: O_DIRECT off (direct=optional): {why}\n",
                    r.pattern.name()
                ));
            }
        }
        for n in &self.memory_notes {
            out.push_str(&format!("{n}\n"));
        }
        let extending =
            s.patterns.iter().any(|p| p.is_write()) && s.write_mode != WriteMode::Overwrite;
        if extending
            && s.backend == Backend::Uring
            && s.cfg.ring.iowq_max_bounded.is_none()
            && self.results.iter().any(|r| r.effective.direct)
        {
            out.push_str(
                "hint: O_DIRECT writes that extend the file run one at a time under the inode lock, in io-wq \
                 workers that spin on it; --iowq-max-bounded 2 keeps just two of them (less CPU, often faster)\n",
            );
        }
        if let Some(ring) = self.results.iter().find_map(|r| r.effective.ring.as_ref()) {
            out.push_str(&format!(
                "our ring: flags {} sq {} cq {}\n",
                ring.flag_names, ring.sq_entries, ring.cq_entries
            ));
        }
        if let Some(v) = &self.fio_version {
            if s.backend == Backend::Uring {
                out.push_str(&format!(
                    "fio: {v}; its io_uring engine always asks for {FIO_FORCED_FLAGS}\n"
                ));
            } else {
                out.push_str(&format!("fio: {v}\n"));
            }
            for r in &self.results {
                if let Some(c) = &r.fio_command {
                    out.push_str(&format!("  {}: {c}\n", r.pattern.name()));
                }
            }
        }
        out
    }

    pub fn to_json(&self) -> Value {
        let m = |m: &Measurement| json!({"mbps": m.mbps, "iops": m.iops, "ios_per_syscall": m.ios_per_syscall, "cpu_s_per_gib": m.cpu_s_per_gib, "elapsed_s": m.elapsed_s});
        let s = &self.spec;
        json!({
            "backend": s.backend.name(),
            "write_mode": s.write_mode.name(),
            "size": s.size,
            "repeat": s.repeat.max(1),
            "config": s.cfg.to_pairs().into_iter().filter(|(k, _)| k.starts_with("file.") || k.starts_with("ring.")).collect::<std::collections::BTreeMap<_, _>>(),
            "fio_version": self.fio_version,
            "fio_iomem": self.fio_iomem.name(),
            "memory_notes": self.memory_notes,
            "results": self.results.iter().map(|r| json!({
                "pattern": r.pattern.name(),
                "ours": r.ours.iter().map(m).collect::<Vec<_>>(),
                "fio": r.fio.iter().map(m).collect::<Vec<_>>(),
                "ours_median": r.ours_median().as_ref().map(m),
                "fio_median": r.fio_median().as_ref().map(m),
                "ratio_mbps": r.ratio_mbps(),
                "ratio_cpu_s_per_gib": r.ratio_cpu(),
                "fio_command": r.fio_command,
                "fio_startup_cpu_s": r.fio_startup_cpu_s,
                "ratio_mbps_pairs": r.pair_ratios(|m| m.mbps),
                "fio_skipped": r.fio_skipped,
                "syncs": r.syncs,
                "effective": {
                    "ring": r.effective.ring,
                    "direct": r.effective.direct,
                    "direct_fallback_reason": r.effective.direct_fallback_reason,
                    "dio_mem_align": r.effective.align.map(|a| a.mem_align),
                    "dio_offset_align": r.effective.align.map(|a| a.offset_align),
                    "ring_flags": r.effective.ring_flags,
                    "registered_buffers": r.effective.registered_buffers,
                    "registered_files": r.effective.registered_files,
                    "buffer_memory": choice_name(r.effective.buffer_memory, crate::config::file::BUFFER_MEMORIES),
                    "arena_bytes": r.effective.arena_bytes,
                    "arena_huge_bytes": r.effective.arena_huge_bytes,
                },
            })).collect::<Vec<_>>(),
        })
    }
}

fn command() -> clap::Command {
    let cmd = clap::Command::new("recorder io-bench")
        .about(
            "File I/O benchmark: sequential/random writes and reads with any ring and file option, side by side with fio. \
             --backend uring|blocking (the [server] knob of the same name) picks the I/O backend: rings, or pwrite/pread on io-depth threads.",
        )
        .arg(clap::Arg::new("path").long("path").value_name("DIR").default_value(".").help("Directory for the benchmark files"))
        .arg(clap::Arg::new("size").long("size").value_name("SIZE").default_value("1g").help("Bytes per run (a multiple of the block size)"))
        .arg(clap::Arg::new("bs").long("bs").value_name("SIZE").help("Block size (same as --block-size)"))
        .arg(clap::Arg::new("qd").long("qd").value_name("N").help("Queue depth (same as --io-depth)"))
        .arg(
            clap::Arg::new("rw")
                .long("rw")
                .value_name("write|read|randwrite|randread|all")
                .default_value("write,read")
                .help("Patterns, comma separated; all = write,read,randwrite,randread"),
        )
        .arg(clap::Arg::new("fio").long("fio").action(clap::ArgAction::SetTrue).help("Also run fio with the equivalent settings, alternating"))
        .arg(clap::Arg::new("repeat").long("repeat").value_name("N").default_value("3").help("Runs per side and pattern (median reported)"))
        .arg(clap::Arg::new("fio-bin").long("fio-bin").value_name("PATH").default_value("fio").help("fio binary"))
        .arg(
            clap::Arg::new("write-mode")
                .long("write-mode")
                .value_name("fresh|sparse|overwrite")
                .default_value("fresh")
                .help("Write runs: fresh = new empty file, every write extends it (fio's default); sparse = ftruncate'd to the size first; overwrite = existing blocks"),
        )
        .arg(
            clap::Arg::new("fio-iomem")
                .long("fio-iomem")
                .value_name("auto|malloc|shmhuge")
                .default_value("auto")
                .help("fio's buffer memory: auto = like ours (malloc for buffer-memory=pages, else shmhuge when the hugetlb pool has room, else malloc with a note); fio has no THP mode"),
        )
        .arg(
            clap::Arg::new("reserve-huge-pages")
                .long("reserve-huge-pages")
                .action(clap::ArgAction::SetTrue)
                .help("Raise vm.nr_hugepages for the run when the huge pages needed (fio's shmhuge, our hugetlb) are short; the old value is put back at the end"),
        )
        .arg(
            clap::Arg::new("nop")
                .long("nop")
                .value_name("SECONDS")
                .conflicts_with_all(["rw", "size", "fio", "write-mode", "fio-iomem", "path"])
                .help("NOPs only, like t/io_uring -N1: --qd IORING_OP_NOPs in flight for SECONDS per run on the ring the [ring] options build; reports NOPs/s, CPU ns per NOP and NOPs per enter, the ring's own overhead floor (no file, no fio)"),
        )
        .arg(clap::Arg::new("json").long("json").action(clap::ArgAction::SetTrue).help("Print one JSON object"))
        .arg(clap::Arg::new("config").long("config").value_name("FILE").help("TOML configuration file, applied before the options"));
    config::add_knob_args(cmd)
}

/// Parses `recorder io-bench` arguments into a spec (and whether to print JSON).
pub fn parse_args(args: Vec<String>) -> Result<(BenchSpec, bool), String> {
    let m = command()
        .try_get_matches_from(std::iter::once("io-bench".to_string()).chain(args))
        .map_err(|e| e.to_string())?;
    let mut cfg = Config::default();
    if let Some(p) = m.get_one::<String>("config") {
        let text = std::fs::read_to_string(p).map_err(|e| format!("cannot read {p}: {e}"))?;
        cfg.apply_toml(&text).map_err(|e| e.to_string())?;
    }
    config::apply_knob_args(&mut cfg, &m).map_err(|e| e.to_string())?;
    let conflict =
        |a: &str, b: &str| format!("--{a} and --{b} give different values: use one of them");
    if let Some(bs) = m.get_one::<String>("bs") {
        let v = parse_bytes(bs).map_err(|e| format!("--bs: {e}"))?;
        if m.get_one::<String>("block-size").is_some() && cfg.file.block_size != v {
            return Err(conflict("bs", "block-size"));
        }
        cfg.file.block_size = v;
    }
    if let Some(qd) = m.get_one::<String>("qd") {
        let v = config::parse_num::<u32>(qd).map_err(|e| format!("--qd: {e}"))?;
        if m.get_one::<String>("io-depth").is_some() && cfg.file.io_depth != v {
            return Err(conflict("qd", "io-depth"));
        }
        cfg.file.io_depth = v;
    }
    fileio::validate(&cfg).map_err(|e: ConfigError| e.to_string())?;
    let size = parse_bytes(m.get_one::<String>("size").expect("default"))
        .map_err(|e| format!("--size: {e}"))?;
    if size == 0 || size % cfg.file.block_size != 0 {
        return Err(format!(
            "--size {size} is not a non-zero multiple of the block size {}",
            cfg.file.block_size
        ));
    }
    let rw = m.get_one::<String>("rw").expect("default");
    let mut patterns = Vec::new();
    for p in rw.split(',') {
        if p == "all" {
            patterns.extend([
                Pattern::Write,
                Pattern::Read,
                Pattern::RandWrite,
                Pattern::RandRead,
            ]);
        } else {
            patterns.push(Pattern::parse(p.trim()).map_err(|e| format!("--rw: {e}"))?);
        }
    }
    // `--backend` is the [server] section's knob (same name, same values).
    let backend = match cfg.server.backend {
        crate::config::server::Backend::Uring => Backend::Uring,
        crate::config::server::Backend::Blocking => Backend::Blocking,
    };
    let repeat = config::parse_num::<usize>(m.get_one::<String>("repeat").expect("default"))
        .map_err(|e| format!("--repeat: {e}"))?;
    if repeat == 0 {
        return Err("--repeat must be at least 1".into());
    }
    let mut spec = BenchSpec::new(m.get_one::<String>("path").expect("default"), cfg);
    spec.size = size;
    spec.patterns = patterns;
    spec.backend = backend;
    spec.fio = m.get_flag("fio");
    spec.repeat = repeat;
    spec.fio_bin = m.get_one::<String>("fio-bin").expect("default").clone();
    spec.write_mode = WriteMode::parse(m.get_one::<String>("write-mode").expect("default"))
        .map_err(|e| format!("--write-mode: {e}"))?;
    spec.fio_iomem = FioIomem::parse(m.get_one::<String>("fio-iomem").expect("default"))
        .map_err(|e| format!("--fio-iomem: {e}"))?;
    spec.reserve_huge_pages = m.get_flag("reserve-huge-pages");
    if let Some(v) = m.get_one::<String>("nop") {
        let secs: f64 = v
            .parse()
            .ok()
            .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s <= 3600.0)
            .ok_or_else(|| format!("--nop {v:?}: seconds per run, a number in (0, 3600]"))?;
        if spec.backend != Backend::Uring {
            return Err("--nop measures an io_uring ring: it needs --backend uring".into());
        }
        spec.nop = Some(Duration::from_secs_f64(secs));
    }
    if spec.cfg.file.direct == Direct::Off && spec.fio {
        eprintln!("io-bench: note: direct=off: buffered results depend on the page cache state");
    }
    Ok((spec, m.get_flag("json")))
}

/// Entry point of `recorder io-bench` (args after the subcommand name).
pub fn cli_main(args: Vec<String>) -> ExitCode {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", command().render_help());
        return ExitCode::SUCCESS;
    }
    let (spec, as_json) = match parse_args(args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("recorder io-bench: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(d) = spec.nop {
        return nop_main(&spec, d, as_json);
    }
    match run(&spec) {
        Ok(r) => {
            let text = if as_json {
                serde_json::to_string_pretty(&r.to_json()).unwrap_or_default() + "\n"
            } else {
                r.table()
            };
            // A closed pipe (`| head`) is not an error worth a panic.
            use std::io::Write;
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("recorder io-bench: {e}");
            let unsupported = matches!(&e, BenchError::Engine(fe) if fe.is_unsupported());
            ExitCode::from(if unsupported { 3 } else { 1 })
        }
    }
}

/// `recorder io-bench --nop`: `--repeat` runs of [`crate::nopbench::run`], each printed,
/// with the median NOPs/s.
fn nop_main(spec: &BenchSpec, d: Duration, as_json: bool) -> ExitCode {
    let depth = spec.cfg.file.io_depth;
    let mut runs = Vec::new();
    let mut eff = None;
    for _ in 0..spec.repeat {
        match crate::nopbench::run(&spec.cfg, depth, d) {
            Ok((r, e)) => {
                runs.push(r);
                eff = Some(e);
            }
            Err(e) => {
                eprintln!("recorder io-bench --nop: {e}");
                return ExitCode::from(if e.is_unsupported() { 3 } else { 1 });
            }
        }
    }
    let mut per_s: Vec<f64> = runs.iter().map(|r| r.nops_per_s()).collect();
    per_s.sort_by(f64::total_cmp);
    let median = per_s[per_s.len() / 2];
    let eff = eff.expect("at least one run");
    let text = if as_json {
        let v = serde_json::json!({
            "mode": "nop",
            "io_depth": depth,
            "seconds_per_run": d.as_secs_f64(),
            "ring_flags": eff.flag_names,
            "ring_flags_requested": eff.requested_flag_names,
            "sq_entries": eff.sq_entries,
            "cq_entries": eff.cq_entries,
            "median_nops_per_s": median,
            "runs": runs.iter().map(|r| serde_json::json!({
                "nops": r.nops,
                "elapsed_s": r.elapsed_s,
                "cpu_s": r.cpu_s,
                "enters": r.enters,
                "nops_per_s": r.nops_per_s(),
                "cpu_ns_per_nop": r.cpu_ns_per_nop(),
                "nops_per_enter": r.nops_per_enter(),
            })).collect::<Vec<_>>(),
        });
        serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
    } else {
        let mut t = format!(
            "io-bench --nop: qd={depth} ring flags {} (asked {}), sq {} cq {}, {} run(s) of {:.1} s\n",
            eff.flag_names,
            eff.requested_flag_names,
            eff.sq_entries,
            eff.cq_entries,
            runs.len(),
            d.as_secs_f64()
        );
        for r in &runs {
            t += &format!(
                "  {:>12.0} NOPs/s  {:>8.1} CPU ns/NOP  {:>8} NOPs/enter\n",
                r.nops_per_s(),
                r.cpu_ns_per_nop(),
                r.nops_per_enter()
                    .map_or("-".to_string(), |v| format!("{v:.1}"))
            );
        }
        t += &format!("  median {median:.0} NOPs/s\n");
        t
    };
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    ExitCode::SUCCESS
}

//! From the [ring] configuration to a ring: validate, map knobs to setup parameters (one
//! function), set up, enable, register, and report requested vs effective.
//!
//! Nothing is ever dropped or retried: a refused combination fails with the errno and the
//! exact flags asked for.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::config::ring::{format_cpu_list, AttachWq};
use crate::config::{ConfigError, RingConfig};
use crate::sys::ring::consts::*;
use crate::sys::ring::{
    errno_name, feature_names, setup_flag_names, Ring, SetupError, SetupParams,
};

/// `IORING_SETUP_SQPOLL|IORING_SETUP_SQ_AFF` ("none" for 0).
pub fn flag_names(flags: u32) -> String {
    setup_flag_names(flags)
}

/// Why a ring could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RingError {
    /// Refused before calling the kernel.
    Config(ConfigError),
    /// The kernel refused `what` (setup or a registration) with `errno`; `flags` are the
    /// exact setup flags asked for.
    Kernel {
        errno: i32,
        flags: u32,
        what: String,
    },
    /// `kernel.io_uring_disabled` (or a seccomp/LSM policy) forbids io_uring here.
    Disabled { reason: String },
    /// This kernel or device cannot do `what`.
    Unsupported { what: String, reason: String },
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::Config(e) => write!(f, "ring configuration refused: {e}"),
            RingError::Kernel { errno, flags, what } => write!(
                f,
                "{what}: the kernel said {} ({}); setup flags asked for: {}",
                errno_name(*errno),
                std::io::Error::from_raw_os_error(*errno),
                flag_names(*flags)
            ),
            RingError::Disabled { reason } => write!(f, "io_uring is disabled: {reason}"),
            RingError::Unsupported { what, reason } => write!(f, "unsupported: {what}: {reason}"),
        }
    }
}

impl std::error::Error for RingError {}

impl From<ConfigError> for RingError {
    fn from(e: ConfigError) -> Self {
        RingError::Config(e)
    }
}

/// Requested and effective configuration of one ring, written with every result.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Effective {
    pub requested_flags: u32,
    pub requested_flag_names: String,
    /// Flags the kernel reported back in io_uring_params after setup.
    pub flags: u32,
    pub flag_names: String,
    pub sq_entries_requested: u32,
    pub cq_entries_requested: Option<u32>,
    pub sq_entries: u32,
    pub cq_entries: u32,
    pub features: u32,
    pub feature_names: String,
    /// The ring was created disabled (R_DISABLED) and enabled by `build`.
    pub enabled_after_setup: bool,
    /// attach-wq first: "off", "owner" (this is the first ring) or "attached".
    pub attach_wq: String,
    pub registered_ring_index: Option<u32>,
    /// io-wq limits in force after registration `[bounded, unbounded]`, when set.
    pub iowq_max_workers: Option<[u32; 2]>,
    /// Limits in force before we changed them.
    pub iowq_max_workers_before: Option<[u32; 2]>,
    pub iowq_cpus: String,
    /// From /proc/self/fdinfo/<ring fd>; None for REGISTERED_FD_ONLY rings (no fd).
    pub sq_thread_pid: Option<i64>,
    pub sq_thread_cpu: Option<i64>,
    pub user_bufs: Option<u64>,
    pub user_files: Option<u64>,
    /// Every `Key: value` line of the fdinfo (first occurrence).
    pub fdinfo: BTreeMap<String, String>,
    /// Why fdinfo is empty, when it is.
    pub fdinfo_note: String,
}

impl Effective {
    /// Re-reads /proc/self/fdinfo/<fd> (SqThread, SqThreadCpu, UserBufs, UserFiles, ...).
    /// Right after setup the kernel may still show the creating thread as `SqThread` (the
    /// SQPOLL thread records its own pid when it first runs): with SQPOLL, a reading that
    /// names this thread is retried for up to 200 ms.
    pub fn refresh_fdinfo(&mut self, ring: &Ring) {
        let own = own_tid();
        for _ in 0..100 {
            self.read_fdinfo(ring);
            let sqpoll = self.flags & IORING_SETUP_SQPOLL != 0;
            if !sqpoll || own.is_none() || self.sq_thread_pid != own {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    fn read_fdinfo(&mut self, ring: &Ring) {
        self.fdinfo.clear();
        let Some(fd) = ring.fd() else {
            self.fdinfo_note = "no ring fd (registered-fd-only): fdinfo unavailable".into();
            return;
        };
        let text = match std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) {
            Ok(t) => t,
            Err(e) => {
                self.fdinfo_note = format!("/proc/self/fdinfo/{fd}: {e}");
                return;
            }
        };
        self.fdinfo = parse_fdinfo(&text);
        self.fdinfo_note.clear();
        let num = |k: &str| {
            self.fdinfo
                .get(k)
                .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok())
        };
        self.sq_thread_pid = num("SqThread").filter(|&p| p > 0);
        self.sq_thread_cpu = num("SqThreadCpu").filter(|&c| c >= 0);
        self.user_bufs = num("UserBufs").map(|v| v as u64);
        self.user_files = num("UserFiles").map(|v| v as u64);
    }
}

/// This thread's id, from /proc/thread-self (a link to PID/task/TID).
fn own_tid() -> Option<i64> {
    std::fs::read_link("/proc/thread-self")
        .ok()?
        .file_name()?
        .to_str()?
        .parse()
        .ok()
}

/// `Key:\tvalue` lines of an io_uring fdinfo; indented or keyless lines (per-entry
/// listings) are skipped; the first occurrence of a key wins.
pub fn parse_fdinfo(text: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with(char::is_whitespace) {
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            let k = k.trim();
            // Keys may hold spaces ("napi tracking"); per-entry listings are indented.
            if k.is_empty() || k.chars().all(|c| c.is_ascii_digit()) {
                continue;
            }
            m.entry(k.to_string())
                .or_insert_with(|| v.trim().to_string());
        }
    }
    m
}

/// The one place that turns the [ring] configuration into setup parameters. `wq_fd` is
/// the first ring's fd for attach-wq (None: ATTACH_WQ is left off, this is the first ring).
pub fn setup_params(cfg: &RingConfig, wq_fd: Option<i32>) -> SetupParams {
    let mut flags = cfg.setup_flags();
    if wq_fd.is_none() {
        flags &= !IORING_SETUP_ATTACH_WQ;
    }
    SetupParams {
        flags,
        sq_entries: cfg.sq_entries,
        cq_entries: cfg.cq_entries.unwrap_or(0),
        sq_thread_cpu: cfg.sq_thread_cpu.unwrap_or(0),
        sq_thread_idle_ms: cfg.sq_thread_idle_ms.unwrap_or(0),
        wq_fd: if cfg.attach_wq == AttachWq::First {
            wq_fd
        } else {
            None
        },
    }
}

/// `kernel.io_uring_disabled` (0 allowed, 1 only for io_uring_group, 2 never), if readable.
pub fn io_uring_disabled_sysctl() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The running kernel's `(major, minor)` from /proc/sys/kernel/osrelease.
pub fn kernel_version() -> Option<(u32, u32)> {
    let s = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    parse_version(s.trim())
}

fn parse_version(s: &str) -> Option<(u32, u32)> {
    let mut it = s.split(|c: char| !c.is_ascii_digit());
    let a = it.next()?.parse().ok()?;
    let b = it.next()?.parse().ok()?;
    Some((a, b))
}

/// First kernel release of each setup flag (from the knob table / io_uring-facts.md).
pub fn flag_since(bit: u32) -> &'static str {
    match bit {
        IORING_SETUP_IOPOLL | IORING_SETUP_SQPOLL | IORING_SETUP_SQ_AFF => "5.1",
        IORING_SETUP_CQSIZE => "5.5",
        IORING_SETUP_CLAMP | IORING_SETUP_ATTACH_WQ => "5.6",
        IORING_SETUP_R_DISABLED => "5.10",
        IORING_SETUP_SUBMIT_ALL => "5.18",
        IORING_SETUP_COOP_TASKRUN
        | IORING_SETUP_TASKRUN_FLAG
        | IORING_SETUP_SQE128
        | IORING_SETUP_CQE32 => "5.19",
        IORING_SETUP_SINGLE_ISSUER => "6.0",
        IORING_SETUP_DEFER_TASKRUN => "6.1",
        IORING_SETUP_NO_MMAP | IORING_SETUP_REGISTERED_FD_ONLY => "6.5",
        IORING_SETUP_NO_SQARRAY => "6.6",
        IORING_SETUP_HYBRID_IOPOLL => "6.13",
        IORING_SETUP_CQE_MIXED => "6.18",
        IORING_SETUP_SQE_MIXED => "6.19",
        _ => "",
    }
}

/// Turns a setup failure into the right error: disabled io_uring, a flag newer than the
/// running kernel, or the kernel's errno with the flags asked for.
pub fn classify_setup_error(e: &SetupError) -> RingError {
    if e.errno == libc::EPERM {
        let sysctl = io_uring_disabled_sysctl();
        let reason = match sysctl {
            Some(2) => "sysctl kernel.io_uring_disabled=2 forbids io_uring for every process; use the blocking (pwrite/pread) backend, or set kernel.io_uring_disabled=0".to_string(),
            Some(1) => "sysctl kernel.io_uring_disabled=1 allows io_uring only for members of kernel.io_uring_group (and CAP_SYS_ADMIN); use the blocking (pwrite/pread) backend, or join that group".to_string(),
            _ => format!("io_uring_setup failed with EPERM (kernel.io_uring_disabled={}; probably a seccomp or LSM policy); use the blocking (pwrite/pread) backend", sysctl.map_or("unreadable".to_string(), |v| v.to_string())),
        };
        return RingError::Disabled { reason };
    }
    if e.errno == libc::ENOSYS {
        return RingError::Unsupported {
            what: "io_uring".into(),
            reason: "this kernel has no io_uring_setup (ENOSYS); use the blocking backend".into(),
        };
    }
    if e.errno == libc::EINVAL {
        if let Some(running) = kernel_version() {
            let too_new: Vec<String> = SETUP_FLAGS
                .iter()
                .filter(|(bit, _)| e.flags & bit != 0)
                .filter_map(|(bit, name)| {
                    let since = parse_version(flag_since(*bit))?;
                    (since > running).then(|| format!("{name} (Linux {}+)", flag_since(*bit)))
                })
                .collect();
            if !too_new.is_empty() {
                return RingError::Unsupported {
                    what: too_new.join(", "),
                    reason: format!("running Linux {}.{}, older than these flags; the kernel refused with EINVAL", running.0, running.1),
                };
            }
        }
    }
    RingError::Kernel {
        errno: e.errno,
        flags: e.flags,
        what: e.message.clone(),
    }
}

/// How an I/O completion error should be reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IoErrorClass {
    /// The ring's mode cannot do this I/O here ("unsupported on this device"): a cell of a
    /// sweep to report as unsupported with `reason`, never as zero.
    Unsupported { what: String, reason: String },
    /// An ordinary I/O error.
    Error { errno: i32, name: String },
}

impl IoErrorClass {
    pub fn into_ring_error(self, flags: u32) -> RingError {
        match self {
            IoErrorClass::Unsupported { what, reason } => RingError::Unsupported { what, reason },
            IoErrorClass::Error { errno, .. } => RingError::Kernel {
                errno,
                flags,
                what: "I/O completion".into(),
            },
        }
    }
}

/// Classifies a failed completion (`-res`) on a ring with setup `flags`. IOPOLL I/O that
/// fails with EOPNOTSUPP is "unsupported on this device" (no poll queues, or not O_DIRECT);
/// IOPOLL socket I/O fails with EINVAL.
pub fn classify_io_error(flags: u32, errno: i32) -> IoErrorClass {
    let errno = errno.abs();
    if flags & IORING_SETUP_IOPOLL != 0 {
        if errno == libc::EOPNOTSUPP {
            let what = if flags & IORING_SETUP_HYBRID_IOPOLL != 0 {
                "HYBRID_IOPOLL I/O"
            } else {
                "IOPOLL I/O"
            };
            return IoErrorClass::Unsupported {
                what: what.into(),
                reason: "unsupported on this device: EOPNOTSUPP (the block device has no poll queues, /sys/block/<dev>/queue/io_poll = 0, or the file is not opened with O_DIRECT)".into(),
            };
        }
        if errno == libc::EINVAL {
            return IoErrorClass::Unsupported {
                what: "IOPOLL I/O".into(),
                reason: "EINVAL: IOPOLL rings only do O_DIRECT read/write on pollable files (sockets and other opcodes are refused)".into(),
            };
        }
    }
    IoErrorClass::Error {
        errno,
        name: errno_name(errno),
    }
}

fn kernel_err(ring: &Ring, what: String, e: std::io::Error) -> RingError {
    RingError::Kernel {
        errno: e.raw_os_error().unwrap_or(libc::EIO),
        flags: ring.flags(),
        what,
    }
}

/// Builds a ring from `cfg`: validate (the kernel is never asked for a refused
/// combination), map, set up, register the ring fd, set io-wq limits and affinity, enable
/// an R_DISABLED ring, and read fdinfo. `first` is the process's first ring, used for
/// attach-wq (None: this ring is the first and owns its io-wq).
pub fn build(cfg: &RingConfig, first: Option<&Ring>) -> Result<(Ring, Effective), RingError> {
    build_opts(cfg, first, true)
}

/// As [`build`]; with `enable_now` false an R_DISABLED ring is left disabled for the
/// caller to register resources and then call `Ring::enable` (from the submitting thread
/// when single-issuer is on).
pub fn build_opts(
    cfg: &RingConfig,
    first: Option<&Ring>,
    enable_now: bool,
) -> Result<(Ring, Effective), RingError> {
    cfg.validate()?;
    let (wq_fd, attach) = match (cfg.attach_wq, first) {
        (AttachWq::Off, _) => (None, "off"),
        (AttachWq::First, None) => (None, "owner"),
        (AttachWq::First, Some(r)) => match r.fd() {
            Some(fd) => (Some(fd), "attached"),
            None => return Err(RingError::Unsupported {
                what: "attach-wq first".into(),
                reason:
                    "the first ring has no fd (registered-fd-only), so its io-wq cannot be shared"
                        .into(),
            }),
        },
    };
    let params = setup_params(cfg, wq_fd);
    let mut ring = Ring::setup(&params).map_err(|e| classify_setup_error(&e))?;
    let mut eff = Effective {
        requested_flags: params.flags,
        requested_flag_names: flag_names(params.flags),
        flags: ring.flags(),
        flag_names: flag_names(ring.flags()),
        sq_entries_requested: cfg.sq_entries,
        cq_entries_requested: cfg.cq_entries,
        sq_entries: ring.sq_entries(),
        cq_entries: ring.cq_entries(),
        features: ring.features(),
        feature_names: feature_names(ring.features()),
        attach_wq: attach.into(),
        iowq_cpus: format_cpu_list(&cfg.iowq_cpus),
        ..Default::default()
    };
    if eff.flags != eff.requested_flags {
        return Err(RingError::Kernel {
            errno: libc::EINVAL,
            flags: params.flags,
            what: format!(
                "the kernel reports flags {} in force, not the ones asked for",
                eff.flag_names
            ),
        });
    }
    if cfg.register_ring_fd {
        ring.register_ring_fd()
            .map_err(|e| kernel_err(&ring, "IORING_REGISTER_RING_FDS".into(), e))?;
    }
    eff.registered_ring_index = ring.registered_index();
    if cfg.iowq_max_bounded.is_some() || cfg.iowq_max_unbounded.is_some() {
        let b = cfg.iowq_max_bounded.unwrap_or(0);
        let u = cfg.iowq_max_unbounded.unwrap_or(0);
        let what = format!("IORING_REGISTER_IOWQ_MAX_WORKERS [{b}, {u}]");
        let before = ring
            .register_iowq_max_workers(b, u)
            .map_err(|e| kernel_err(&ring, what.clone(), e))?;
        // Asking with [0, 0] changes nothing and returns the limits now in force.
        let now = ring
            .register_iowq_max_workers(0, 0)
            .map_err(|e| kernel_err(&ring, what, e))?;
        eff.iowq_max_workers_before = Some(before);
        eff.iowq_max_workers = Some(now);
    }
    if !cfg.iowq_cpus.is_empty() {
        ring.register_iowq_aff(&cfg.iowq_cpus).map_err(|e| {
            kernel_err(
                &ring,
                format!(
                    "IORING_REGISTER_IOWQ_AFF cpus {}",
                    format_cpu_list(&cfg.iowq_cpus)
                ),
                e,
            )
        })?;
    }
    if cfg.r_disabled && enable_now {
        ring.enable()
            .map_err(|e| kernel_err(&ring, "IORING_REGISTER_ENABLE_RINGS".into(), e))?;
        eff.enabled_after_setup = true;
    }
    eff.refresh_fdinfo(&ring);
    Ok((ring, eff))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_parses() {
        let t = "pos:\t0\nSqMask:\t0x7\nSqThread:\t1234\nSqThreadCpu:\t1\nUserFiles:\t2\n    0: f\nUserBufs:\t0\nCqOverflowList:\n";
        let m = parse_fdinfo(t);
        assert_eq!(m.get("SqThread").map(String::as_str), Some("1234"));
        assert_eq!(m.get("UserFiles").map(String::as_str), Some("2"));
        assert!(!m.contains_key("0"));
    }

    #[test]
    fn iopoll_eopnotsupp_is_unsupported() {
        match classify_io_error(IORING_SETUP_IOPOLL, -libc::EOPNOTSUPP) {
            IoErrorClass::Unsupported { reason, .. } => {
                assert!(reason.contains("unsupported on this device"))
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(
            classify_io_error(0, libc::EOPNOTSUPP),
            IoErrorClass::Error {
                errno: libc::EOPNOTSUPP,
                name: "EOPNOTSUPP".into()
            }
        );
    }

    #[test]
    fn names() {
        assert_eq!(
            flag_names(IORING_SETUP_SQPOLL | IORING_SETUP_SQ_AFF),
            "IORING_SETUP_SQPOLL|IORING_SETUP_SQ_AFF"
        );
        assert_eq!(flag_names(0), "none");
    }
}

/// What `recorder serve --backend uring` runs with, as the kernel and the workers report
/// it: the requested configuration with every value the kernel shows replaced by what it
/// shows (setup flags in io_uring_params, SQ/CQ sizes, SqThreadCpu, io-wq limits in force,
/// UserBufs / UserFiles / NAPI in fdinfo, the incremental buffer ring). A value that
/// differs from the requested one did not take effect as asked; [`differences`] lists them.
/// Options with no kernel-side state (how the loop waits, what each SQE carries) are as
/// requested here; their proof is the SQE counters (`sys::stats`, `/metrics`).
pub fn effective_config(
    requested: &crate::config::Config,
    reports: &[crate::server::uring::WorkerReport],
) -> crate::config::Config {
    let mut e = requested.clone();
    let Some(w) = reports.first() else { return e };
    let r = &w.ring;
    let has = |bit: u32| r.flags & bit != 0;
    let ring = &mut e.ring;
    ring.iopoll = has(IORING_SETUP_IOPOLL);
    ring.hybrid_iopoll = has(IORING_SETUP_HYBRID_IOPOLL);
    ring.sqpoll = has(IORING_SETUP_SQPOLL);
    ring.clamp = has(IORING_SETUP_CLAMP);
    ring.r_disabled = has(IORING_SETUP_R_DISABLED);
    ring.submit_all = has(IORING_SETUP_SUBMIT_ALL);
    ring.coop_taskrun = has(IORING_SETUP_COOP_TASKRUN);
    ring.taskrun_flag = has(IORING_SETUP_TASKRUN_FLAG);
    ring.sqe128 = has(IORING_SETUP_SQE128);
    ring.cqe32 = has(IORING_SETUP_CQE32);
    ring.single_issuer = Some(has(IORING_SETUP_SINGLE_ISSUER));
    ring.defer_taskrun = Some(has(IORING_SETUP_DEFER_TASKRUN));
    ring.no_mmap = has(IORING_SETUP_NO_MMAP);
    ring.registered_fd_only = has(IORING_SETUP_REGISTERED_FD_ONLY);
    ring.no_sqarray = has(IORING_SETUP_NO_SQARRAY);
    ring.cqe_mixed = has(IORING_SETUP_CQE_MIXED);
    if requested.ring.attach_wq == AttachWq::First
        && !reports.iter().all(|w| w.ring.attach_wq == "attached")
    {
        ring.attach_wq = AttachWq::Off;
    }
    ring.sq_entries = r.sq_entries;
    if requested.ring.cq_entries.is_some() || r.cq_entries != 2 * r.sq_entries {
        ring.cq_entries = Some(r.cq_entries);
    }
    if requested.ring.sq_thread_cpu.is_some() {
        ring.sq_thread_cpu = r.sq_thread_cpu.map(|c| c as u32);
    }
    if let Some([b, u]) = r.iowq_max_workers {
        if requested.ring.iowq_max_bounded.is_some() {
            ring.iowq_max_bounded = Some(b);
        }
        if requested.ring.iowq_max_unbounded.is_some() {
            ring.iowq_max_unbounded = Some(u);
        }
    }
    ring.register_ring_fd = requested.ring.register_ring_fd && r.registered_ring_index.is_some();
    // fdinfo: what the kernel holds for the ring.
    if !r.fdinfo.is_empty() {
        e.file.register_buffers = r.user_bufs.unwrap_or(0) > 0;
        let table = r.user_files.unwrap_or(0) > 0;
        e.file.register_files =
            requested.file.register_files && table && w.file_table.is_some_and(|t| t.files > 0);
        e.net.direct_sockets =
            requested.net.direct_sockets && table && w.file_table.is_some_and(|t| t.alloc > 0);
        let napi_on = r.fdinfo.get("NAPI").is_some_and(|v| v == "enabled");
        if !napi_on {
            e.net.napi_busy_poll_us = 0;
            e.net.napi_prefer_busy_poll = false;
        } else {
            if let Some(ns) = r
                .fdinfo
                .get("napi_busy_poll_dt")
                .and_then(|v| v.parse::<u64>().ok())
            {
                e.net.napi_busy_poll_us = (ns / 1000) as u32;
            }
            if let Some(p) = r.fdinfo.get("napi_prefer_busy_poll") {
                e.net.napi_prefer_busy_poll = p == "true";
            }
            if let Some(t) = r.fdinfo.get("napi tracking") {
                e.net.napi_tracking = if t == "static" {
                    crate::config::net::NapiTracking::Static
                } else {
                    crate::config::net::NapiTracking::Dynamic
                };
            }
        }
    }
    if w.buf_ring.is_some() {
        e.net.buf_ring_inc = w.buf_ring_inc;
    }
    e
}

/// `section.name: requested -> effective` for every knob whose effective value differs.
pub fn differences(
    requested: &crate::config::Config,
    effective: &crate::config::Config,
) -> Vec<String> {
    requested
        .to_pairs()
        .into_iter()
        .zip(effective.to_pairs())
        .filter(|((_, a), (_, b))| a != b)
        .map(|((k, a), (_, b))| format!("{k}: {a:?} -> {b:?}"))
        .collect()
}

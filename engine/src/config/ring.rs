//! [ring] section: every io_uring setup flag, SQ/CQ sizes, ring fd registration and
//! io-wq limits. Turned into setup parameters in exactly one place, `uring::setup_params`.

use super::{choice_name, parse_bool, parse_choice, parse_num, Config, ConfigError, Knob, Section};

/// ATTACH_WQ policy: share the io-wq of the process's first ring, or not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachWq {
    #[default]
    Off,
    /// Every ring after the first is set up with IORING_SETUP_ATTACH_WQ and the first
    /// ring's fd; the first ring owns the shared io-wq.
    First,
}

const ATTACH_WQ: &[(&str, AttachWq)] = &[("off", AttachWq::Off), ("first", AttachWq::First)];

/// How a wait for completions is bounded in time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WaitTimeout {
    /// A TIMEOUT SQE is queued for the wait (its CQE ends it).
    #[default]
    Sqe,
    /// The timeout travels in io_uring_enter itself (IORING_ENTER_EXT_ARG, struct
    /// io_uring_getevents_arg): no SQE, no CQE; needed for min-wait-usec.
    ExtArg,
}

pub const WAIT_TIMEOUTS: &[(&str, WaitTimeout)] =
    &[("sqe", WaitTimeout::Sqe), ("ext-arg", WaitTimeout::ExtArg)];

/// The typed [ring] configuration. Defaults: a plain ring of 256 SQ entries, all off, but
/// single-issuer and defer-taskrun, which are `auto` (on for `recorder serve`'s io_uring
/// workers, see `resolve_auto`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingConfig {
    pub iopoll: bool,
    pub hybrid_iopoll: bool,
    pub sqpoll: bool,
    /// SQPOLL idle time before the thread sleeps; None = kernel default (1 s).
    pub sq_thread_idle_ms: Option<u32>,
    /// SQ_AFF: pin the SQPOLL thread to this CPU.
    pub sq_thread_cpu: Option<u32>,
    pub sq_entries: u32,
    /// CQSIZE when set; otherwise the kernel uses 2 * sq_entries.
    pub cq_entries: Option<u32>,
    pub clamp: bool,
    pub attach_wq: AttachWq,
    pub r_disabled: bool,
    pub submit_all: bool,
    pub coop_taskrun: bool,
    pub taskrun_flag: bool,
    pub sqe128: bool,
    pub cqe32: bool,
    /// SINGLE_ISSUER; None = auto: on exactly when DEFER_TASKRUN ends up on.
    pub single_issuer: Option<bool>,
    /// DEFER_TASKRUN; None = auto: on for `recorder serve`'s io_uring rings unless sqpoll
    /// or coop-taskrun is on or single-issuer is set false (`RingConfig::resolve_auto`),
    /// off elsewhere (bench tools, probes).
    pub defer_taskrun: Option<bool>,
    pub no_mmap: bool,
    pub registered_fd_only: bool,
    pub no_sqarray: bool,
    pub cqe_mixed: bool,
    pub register_ring_fd: bool,
    /// io-wq bounded worker limit (IORING_REGISTER_IOWQ_MAX_WORKERS); None = unchanged.
    pub iowq_max_bounded: Option<u32>,
    pub iowq_max_unbounded: Option<u32>,
    /// io-wq CPU affinity (IORING_REGISTER_IOWQ_AFF); empty = not set.
    pub iowq_cpus: Vec<usize>,
    /// Completions each wait asks for (io_uring_enter min_complete).
    pub wait_nr: u32,
    /// With wait-nr > 1: return once this long has passed and one completion is there
    /// (io_uring_getevents_arg.min_wait_usec, 6.12); 0 = off.
    pub min_wait_usec: u32,
    pub wait_timeout: WaitTimeout,
    /// IOSQE_CQE_SKIP_SUCCESS where a completion carries nothing.
    pub cqe_skip_success: bool,
    /// IORING_ENTER_NO_IOWAIT on every wait.
    pub no_iowait: bool,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            iopoll: false,
            hybrid_iopoll: false,
            sqpoll: false,
            sq_thread_idle_ms: None,
            sq_thread_cpu: None,
            sq_entries: 256,
            cq_entries: None,
            clamp: false,
            attach_wq: AttachWq::Off,
            r_disabled: false,
            submit_all: false,
            coop_taskrun: false,
            taskrun_flag: false,
            sqe128: false,
            cqe32: false,
            single_issuer: None,
            defer_taskrun: None,
            no_mmap: false,
            registered_fd_only: false,
            no_sqarray: false,
            cqe_mixed: false,
            register_ring_fd: false,
            iowq_max_bounded: None,
            iowq_max_unbounded: None,
            iowq_cpus: Vec::new(),
            wait_nr: 1,
            min_wait_usec: 0,
            wait_timeout: WaitTimeout::Sqe,
            cqe_skip_success: false,
            no_iowait: false,
        }
    }
}

const fn knob(
    name: &'static str,
    kernel: &'static str,
    since: &'static str,
    values: &'static str,
    default: &'static str,
    help: &'static str,
) -> Knob {
    Knob {
        section: "ring",
        name,
        kernel,
        since,
        values,
        default,
        help,
    }
}

const KNOBS: &[Knob] = &[
    knob("iopoll", "IORING_SETUP_IOPOLL", "5.1", "bool", "false",
        "Busy-poll for completions instead of interrupts. Needs O_DIRECT files on a device with poll queues; elsewhere I/O fails with EOPNOTSUPP (reported as unsupported on this device)."),
    knob("hybrid-iopoll", "IORING_SETUP_HYBRID_IOPOLL", "6.13", "bool", "false",
        "With iopoll: sleep for part of the expected completion time before polling, trading latency for CPU. Needs iopoll."),
    knob("sqpoll", "IORING_SETUP_SQPOLL", "5.1", "bool", "false",
        "A kernel thread (iou-sqp-PID) polls the submission queue, so submitting needs no system call while it is awake. Burns a CPU while busy."),
    knob("sq-thread-idle-ms", "io_uring_params.sq_thread_idle", "5.1", "u32", "",
        "How long the SQPOLL thread spins without work before it sleeps (empty = kernel default, 1000 ms). Needs sqpoll."),
    knob("sq-thread-cpu", "IORING_SETUP_SQ_AFF", "5.1", "u32", "",
        "Pin the SQPOLL thread to this CPU (empty = not pinned). Needs sqpoll."),
    knob("sq-entries", "io_uring_setup(entries)", "5.1", "u32", "256",
        "Submission queue size: a power of two from 1 to 32768 (any value with clamp; the kernel rounds up and clamps)."),
    knob("cq-entries", "IORING_SETUP_CQSIZE", "5.5", "u32", "",
        "Completion queue size (empty = 2 x sq-entries): a power of two >= sq-entries, up to 65536 (any value with clamp)."),
    knob("clamp", "IORING_SETUP_CLAMP", "5.6", "bool", "false",
        "Clamp sq-entries/cq-entries to the kernel maxima instead of refusing; the effective sizes are reported."),
    knob("attach-wq", "IORING_SETUP_ATTACH_WQ", "5.6", "off|first", "off",
        "first: every ring after the process's first one shares the first ring's io-wq (and SQPOLL thread)."),
    knob("r-disabled", "IORING_SETUP_R_DISABLED", "5.10", "bool", "false",
        "Create the ring disabled and enable it (IORING_REGISTER_ENABLE_RINGS) after registrations; with single-issuer the enabling thread becomes the submitter."),
    knob("submit-all", "IORING_SETUP_SUBMIT_ALL", "5.18", "bool", "false",
        "Keep submitting the rest of a batch when one SQE fails at submission time."),
    knob("coop-taskrun", "IORING_SETUP_COOP_TASKRUN", "5.19", "bool", "false",
        "Do not interrupt the submitting task to run completion work; it runs at the next kernel entry. Not with sqpoll."),
    knob("taskrun-flag", "IORING_SETUP_TASKRUN_FLAG", "5.19", "bool", "false",
        "Set IORING_SQ_TASKRUN when completion work is pending, so the engine enters the kernel only then. Needs coop-taskrun or defer-taskrun."),
    knob("sqe128", "IORING_SETUP_SQE128", "5.19", "bool", "false",
        "128-byte SQEs (needed by some URING_CMD users); doubles SQ memory."),
    knob("cqe32", "IORING_SETUP_CQE32", "5.19", "bool", "false",
        "32-byte CQEs for every completion; doubles CQ memory. Not with cqe-mixed."),
    knob("single-issuer", "IORING_SETUP_SINGLE_ISSUER", "6.0", "auto|true|false", "auto",
        "Promise that one thread submits; lets the kernel skip locking. A submit from another thread fails with EEXIST. auto: on exactly when defer-taskrun is on."),
    knob("defer-taskrun", "IORING_SETUP_DEFER_TASKRUN", "6.1", "auto|true|false", "auto",
        "Run completion work only when the task waits for completions (io_uring_enter with GETEVENTS). Needs single-issuer; not with sqpoll. auto: on in recorder serve's io_uring workers unless sqpoll or coop-taskrun is on or single-issuer is false (measured: -23% CPU per GiB on 200 x 64 Hz ingest, +12% serve MB/s, -3% closed-loop bulk MB/s; docs/architecture.md), off in bench tools."),
    knob("no-mmap", "IORING_SETUP_NO_MMAP", "6.5", "bool", "false",
        "The engine allocates the ring and SQE memory itself and hands it to the kernel instead of mmap-ing the ring fd."),
    knob("registered-fd-only", "IORING_SETUP_REGISTERED_FD_ONLY", "6.5", "bool", "false",
        "Setup returns a registered ring index and no fd; every enter uses IORING_ENTER_REGISTERED_RING. Needs no-mmap."),
    knob("no-sqarray", "IORING_SETUP_NO_SQARRAY", "6.6", "bool", "false",
        "No SQ index array: SQEs are consumed in ring order, one indirection less."),
    knob("cqe-mixed", "IORING_SETUP_CQE_MIXED", "6.18", "bool", "false",
        "16- and 32-byte CQEs in one ring (32-byte ones flagged IORING_CQE_F_32). Not with cqe32."),
    knob("register-ring-fd", "IORING_REGISTER_RING_FDS", "5.18", "bool", "false",
        "Register the ring fd so io_uring_enter skips the fd lookup (IORING_ENTER_REGISTERED_RING). Not with registered-fd-only, whose ring is registered already."),
    knob("iowq-max-bounded", "IORING_REGISTER_IOWQ_MAX_WORKERS", "5.15", "u32", "",
        "Limit of bounded io-wq workers (regular file and block I/O punted to threads) per NUMA node (empty = unchanged)."),
    knob("iowq-max-unbounded", "IORING_REGISTER_IOWQ_MAX_WORKERS", "5.15", "u32", "",
        "Limit of unbounded io-wq workers (sockets, pipes and other I/O that may block forever) (empty = unchanged)."),
    knob("iowq-cpus", "IORING_REGISTER_IOWQ_AFF", "5.14", "cpu-list", "",
        "CPUs the io-wq workers may run on, like 0,1 or 0-1 (empty = not set)."),
    knob("wait-nr", "io_uring_enter(min_complete)", "5.1", "u32", "1",
        "recorder serve: completions each loop turn waits for (1 = wake for every completion). Above 1 the loop batches completions; pair it with min-wait-usec so a quiet ring is not held until the tick."),
    knob("min-wait-usec", "IORING_FEAT_MIN_TIMEOUT (io_uring_getevents_arg.min_wait_usec)", "6.12", "u32", "0",
        "recorder serve: with wait-nr > 1, a wait returns once this many microseconds have passed and at least one completion is there (0 = off). Needs wait-timeout=ext-arg."),
    knob("wait-timeout", "IORING_ENTER_EXT_ARG", "5.11", "sqe|ext-arg", "sqe",
        "recorder serve: how the loop's waits and periodic tick are timed: a TIMEOUT SQE per wait and per tick (sqe), or the timeout passed in io_uring_enter itself (ext-arg: no timer SQEs or CQEs)."),
    knob("cqe-skip-success", "IOSQE_CQE_SKIP_SUCCESS", "5.17", "bool", "false",
        "recorder serve: no completion on success where it carries nothing: the write of a linked write->sync pair, the first half of a splice pair, closes, cancels and MSG_RING wake-ups (failures still post one)."),
    knob("no-iowait", "IORING_ENTER_NO_IOWAIT", "6.15", "bool", "false",
        "recorder serve: waits do not count as iowait while file I/O is in flight (cpuidle and load accounting; not a throughput knob)."),
];

fn parse_opt_num(v: &str) -> Result<Option<u32>, String> {
    if v.trim().is_empty() {
        Ok(None)
    } else {
        parse_num::<u32>(v).map(Some)
    }
}

/// `auto` (None), or a bool as `parse_bool` takes it.
fn parse_auto_bool(v: &str) -> Result<Option<bool>, String> {
    if v.trim().eq_ignore_ascii_case("auto") {
        Ok(None)
    } else {
        parse_bool(v)
            .map(Some)
            .map_err(|_| format!("expected auto, true or false, got {v:?}"))
    }
}

fn auto_b(v: Option<bool>) -> Option<String> {
    Some(v.map_or("auto".to_string(), |b| b.to_string()))
}

fn opt(v: Option<u32>) -> String {
    v.map(|n| n.to_string()).unwrap_or_default()
}

/// Parses a CPU list such as `0,1`, `0-3` or `0-1,3`. Empty = none.
pub fn parse_cpu_list(v: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("expected a CPU list such as 0,1 or 0-3, got {v:?}");
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().map_err(|_| bad())?;
                let b: usize = b.trim().parse().map_err(|_| bad())?;
                if a > b || b >= 4096 {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Formats a CPU list compactly (`0-3,5`).
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        parts.push(if j > i {
            format!("{}-{}", cpus[i], cpus[j])
        } else {
            cpus[i].to_string()
        });
        i = j + 1;
    }
    parts.join(",")
}

/// Online CPUs from /sys/devices/system/cpu/online, when readable.
pub fn online_cpus() -> Option<Vec<usize>> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
    parse_cpu_list(s.trim()).ok()
}

impl Section for RingConfig {
    const NAME: &'static str = "ring";
    fn knobs() -> &'static [Knob] {
        KNOBS
    }

    fn set(&mut self, name: &str, v: &str) -> Result<(), String> {
        match name {
            "iopoll" => self.iopoll = parse_bool(v)?,
            "hybrid-iopoll" => self.hybrid_iopoll = parse_bool(v)?,
            "sqpoll" => self.sqpoll = parse_bool(v)?,
            "sq-thread-idle-ms" => self.sq_thread_idle_ms = parse_opt_num(v)?,
            "sq-thread-cpu" => self.sq_thread_cpu = parse_opt_num(v)?,
            "sq-entries" => self.sq_entries = parse_num(v)?,
            "cq-entries" => self.cq_entries = parse_opt_num(v)?,
            "clamp" => self.clamp = parse_bool(v)?,
            "attach-wq" => self.attach_wq = parse_choice(v, ATTACH_WQ)?,
            "r-disabled" => self.r_disabled = parse_bool(v)?,
            "submit-all" => self.submit_all = parse_bool(v)?,
            "coop-taskrun" => self.coop_taskrun = parse_bool(v)?,
            "taskrun-flag" => self.taskrun_flag = parse_bool(v)?,
            "sqe128" => self.sqe128 = parse_bool(v)?,
            "cqe32" => self.cqe32 = parse_bool(v)?,
            "single-issuer" => self.single_issuer = parse_auto_bool(v)?,
            "defer-taskrun" => self.defer_taskrun = parse_auto_bool(v)?,
            "no-mmap" => self.no_mmap = parse_bool(v)?,
            "registered-fd-only" => self.registered_fd_only = parse_bool(v)?,
            "no-sqarray" => self.no_sqarray = parse_bool(v)?,
            "cqe-mixed" => self.cqe_mixed = parse_bool(v)?,
            "register-ring-fd" => self.register_ring_fd = parse_bool(v)?,
            "iowq-max-bounded" => self.iowq_max_bounded = parse_opt_num(v)?,
            "iowq-max-unbounded" => self.iowq_max_unbounded = parse_opt_num(v)?,
            "iowq-cpus" => self.iowq_cpus = parse_cpu_list(v)?,
            "wait-nr" => self.wait_nr = parse_num(v)?,
            "min-wait-usec" => self.min_wait_usec = parse_num(v)?,
            "wait-timeout" => self.wait_timeout = parse_choice(v, WAIT_TIMEOUTS)?,
            "cqe-skip-success" => self.cqe_skip_success = parse_bool(v)?,
            "no-iowait" => self.no_iowait = parse_bool(v)?,
            _ => return Err(format!("unknown option {name}")),
        }
        Ok(())
    }

    fn get(&self, name: &str) -> Option<String> {
        let b = |x: bool| Some(x.to_string());
        match name {
            "iopoll" => b(self.iopoll),
            "hybrid-iopoll" => b(self.hybrid_iopoll),
            "sqpoll" => b(self.sqpoll),
            "sq-thread-idle-ms" => Some(opt(self.sq_thread_idle_ms)),
            "sq-thread-cpu" => Some(opt(self.sq_thread_cpu)),
            "sq-entries" => Some(self.sq_entries.to_string()),
            "cq-entries" => Some(opt(self.cq_entries)),
            "clamp" => b(self.clamp),
            "attach-wq" => Some(choice_name(self.attach_wq, ATTACH_WQ).to_string()),
            "r-disabled" => b(self.r_disabled),
            "submit-all" => b(self.submit_all),
            "coop-taskrun" => b(self.coop_taskrun),
            "taskrun-flag" => b(self.taskrun_flag),
            "sqe128" => b(self.sqe128),
            "cqe32" => b(self.cqe32),
            "single-issuer" => auto_b(self.single_issuer),
            "defer-taskrun" => auto_b(self.defer_taskrun),
            "no-mmap" => b(self.no_mmap),
            "registered-fd-only" => b(self.registered_fd_only),
            "no-sqarray" => b(self.no_sqarray),
            "cqe-mixed" => b(self.cqe_mixed),
            "register-ring-fd" => b(self.register_ring_fd),
            "iowq-max-bounded" => Some(opt(self.iowq_max_bounded)),
            "iowq-max-unbounded" => Some(opt(self.iowq_max_unbounded)),
            "iowq-cpus" => Some(format_cpu_list(&self.iowq_cpus)),
            "wait-nr" => Some(self.wait_nr.to_string()),
            "min-wait-usec" => Some(self.min_wait_usec.to_string()),
            "wait-timeout" => Some(choice_name(self.wait_timeout, WAIT_TIMEOUTS).to_string()),
            "cqe-skip-success" => b(self.cqe_skip_success),
            "no-iowait" => b(self.no_iowait),
            _ => None,
        }
    }
}

/// Largest SQ size the kernel accepts without CLAMP.
pub const SQ_ENTRIES_MAX: u32 = 32768;
/// Largest CQ size the kernel accepts without CLAMP.
pub const CQ_ENTRIES_MAX: u32 = 65536;

impl RingConfig {
    /// (single-issuer, defer-taskrun) as set up: `auto` defer-taskrun is off here (bench
    /// tools, probes) unless `resolve_auto` made it concrete; `auto` single-issuer follows
    /// defer-taskrun.
    pub fn taskrun_in_force(&self) -> (bool, bool) {
        let defer = self.defer_taskrun.unwrap_or(false);
        (self.single_issuer.unwrap_or(defer), defer)
    }

    /// Makes `auto` concrete for `recorder serve`'s io_uring workers (elsewhere `auto`
    /// stays and `taskrun_in_force` reads it as off). Each worker ring is created, submitted to and waited on by its
    /// own thread, so DEFER_TASKRUN + SINGLE_ISSUER hold; they are left off with SQPOLL
    /// (the kernel runs the SQ from its own thread; DEFER_TASKRUN excludes it), when
    /// single-issuer is set false, and when coop-taskrun is set (the other way of running
    /// completion work, asked for by name).
    pub fn resolve_auto(&mut self) {
        if self.defer_taskrun.is_none() {
            self.defer_taskrun =
                Some(!self.sqpoll && !self.coop_taskrun && self.single_issuer != Some(false));
        }
        let (single, defer) = self.taskrun_in_force();
        self.single_issuer = Some(single);
        self.defer_taskrun = Some(defer);
    }

    /// Every cross-flag rule of the [ring] section, checked before the kernel is asked.
    /// The first broken rule is returned; its message names the flags and what to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let e = |knobs: &[&'static str], m: String| Err(ConfigError::new(knobs, m));
        if self.defer_taskrun == Some(true) && self.single_issuer == Some(false) {
            return e(
                &["defer-taskrun", "single-issuer"],
                "DEFER_TASKRUN needs SINGLE_ISSUER: set --single-issuer true (or auto), or drop --defer-taskrun".into(),
            );
        }
        if self.defer_taskrun == Some(true) && self.sqpoll {
            return e(
                &["defer-taskrun", "sqpoll"],
                "DEFER_TASKRUN excludes SQPOLL (the SQ thread, not the task, would run completions): drop --sqpoll or --defer-taskrun".into(),
            );
        }
        if self.coop_taskrun && self.sqpoll {
            return e(
                &["coop-taskrun", "sqpoll"],
                "COOP_TASKRUN excludes SQPOLL (the kernel refuses it with EINVAL): drop --sqpoll or --coop-taskrun".into(),
            );
        }
        if self.taskrun_flag && !(self.coop_taskrun || self.defer_taskrun == Some(true)) {
            return e(
                &["taskrun-flag", "coop-taskrun", "defer-taskrun"],
                "TASKRUN_FLAG needs COOP_TASKRUN or DEFER_TASKRUN: add --coop-taskrun true (or --defer-taskrun true with --single-issuer true), or drop --taskrun-flag".into(),
            );
        }
        if self.sq_thread_cpu.is_some() && !self.sqpoll {
            return e(
                &["sq-thread-cpu", "sqpoll"],
                "SQ_AFF (--sq-thread-cpu) needs SQPOLL: add --sqpoll true, or leave --sq-thread-cpu empty".into(),
            );
        }
        if self.sq_thread_idle_ms.is_some() && !self.sqpoll {
            return e(
                &["sq-thread-idle-ms", "sqpoll"],
                "--sq-thread-idle-ms is the SQPOLL thread's idle time and needs SQPOLL: add --sqpoll true, or leave --sq-thread-idle-ms empty".into(),
            );
        }
        if self.hybrid_iopoll && !self.iopoll {
            return e(
                &["hybrid-iopoll", "iopoll"],
                "HYBRID_IOPOLL needs IOPOLL: add --iopoll true, or drop --hybrid-iopoll".into(),
            );
        }
        if self.registered_fd_only && !self.no_mmap {
            return e(
                &["registered-fd-only", "no-mmap"],
                "REGISTERED_FD_ONLY needs NO_MMAP (without an fd the ring cannot be mmap-ed): add --no-mmap true, or drop --registered-fd-only".into(),
            );
        }
        if self.registered_fd_only && self.register_ring_fd {
            return e(
                &["registered-fd-only", "register-ring-fd"],
                "REGISTERED_FD_ONLY already returns a registered ring index; --register-ring-fd would register it twice: drop --register-ring-fd".into(),
            );
        }
        if self.registered_fd_only && self.attach_wq == AttachWq::First {
            return e(
                &["registered-fd-only", "attach-wq"],
                "ATTACH_WQ needs the first ring's fd, and REGISTERED_FD_ONLY rings have none: set --attach-wq off, or drop --registered-fd-only".into(),
            );
        }
        if self.cqe_mixed && self.cqe32 {
            return e(
                &["cqe-mixed", "cqe32"],
                "CQE_MIXED excludes CQE32 (mixed rings already carry 32-byte CQEs where needed): drop --cqe32 or --cqe-mixed".into(),
            );
        }
        if self.sq_entries == 0 {
            return e(&["sq-entries"], "--sq-entries must be at least 1".into());
        }
        if self.wait_nr == 0 || self.wait_nr > 4096 {
            return e(
                &["wait-nr"],
                format!(
                    "--wait-nr must be 1..=4096 completions per wait, got {}",
                    self.wait_nr
                ),
            );
        }
        if self.min_wait_usec != 0 && self.wait_timeout != WaitTimeout::ExtArg {
            return e(
                &["min-wait-usec", "wait-timeout"],
                "--min-wait-usec travels in io_uring_enter's argument (IORING_ENTER_EXT_ARG): add --wait-timeout ext-arg, or set --min-wait-usec 0".into(),
            );
        }
        if self.min_wait_usec != 0 && self.wait_nr == 1 {
            return e(
                &["min-wait-usec", "wait-nr"],
                "--min-wait-usec only matters when a wait asks for more than one completion: raise --wait-nr above 1, or set --min-wait-usec 0".into(),
            );
        }
        if self.min_wait_usec > 1_000_000 {
            return e(
                &["min-wait-usec"],
                format!(
                    "--min-wait-usec {} is over one second; the loop's tick is 10 ms",
                    self.min_wait_usec
                ),
            );
        }
        if !self.clamp {
            if self.sq_entries > SQ_ENTRIES_MAX {
                return e(
                    &["sq-entries", "clamp"],
                    format!("--sq-entries {} exceeds the kernel maximum {SQ_ENTRIES_MAX}: lower it, or add --clamp true to have it clamped", self.sq_entries),
                );
            }
            if !self.sq_entries.is_power_of_two() {
                return e(
                    &["sq-entries", "clamp"],
                    format!(
                        "--sq-entries {} is not a power of two; the kernel would silently round it up to {}: ask for that, or add --clamp true to accept kernel-adjusted sizes",
                        self.sq_entries,
                        self.sq_entries.next_power_of_two()
                    ),
                );
            }
        }
        if let Some(cq) = self.cq_entries {
            if cq == 0 {
                return e(
                    &["cq-entries"],
                    "--cq-entries must be at least 1 (leave it empty for 2 x sq-entries)".into(),
                );
            }
            if !self.clamp {
                if cq > CQ_ENTRIES_MAX {
                    return e(
                        &["cq-entries", "clamp"],
                        format!("--cq-entries {cq} exceeds the kernel maximum {CQ_ENTRIES_MAX}: lower it, or add --clamp true to have it clamped"),
                    );
                }
                if !cq.is_power_of_two() {
                    return e(
                        &["cq-entries", "clamp"],
                        format!(
                            "--cq-entries {cq} is not a power of two; the kernel would silently round it up to {}: ask for that, or add --clamp true",
                            cq.next_power_of_two()
                        ),
                    );
                }
            }
            let sq_eff = if self.clamp {
                (self.sq_entries as u64)
                    .next_power_of_two()
                    .min(SQ_ENTRIES_MAX as u64)
            } else {
                self.sq_entries as u64
            };
            let cq_eff = if self.clamp {
                (cq as u64).next_power_of_two().min(CQ_ENTRIES_MAX as u64)
            } else {
                cq as u64
            };
            if cq_eff < sq_eff {
                return e(
                    &["cq-entries", "sq-entries"],
                    format!("--cq-entries {cq} must be at least --sq-entries {} (the kernel refuses a smaller CQ): raise --cq-entries or lower --sq-entries", self.sq_entries),
                );
            }
        }
        let online = online_cpus();
        if let (Some(cpu), Some(on)) = (self.sq_thread_cpu, online.as_ref()) {
            if !on.contains(&(cpu as usize)) {
                return e(
                    &["sq-thread-cpu"],
                    format!("--sq-thread-cpu {cpu} is not an online CPU (online: {}): pick one of those", format_cpu_list(on)),
                );
            }
        }
        if let Some(on) = online.as_ref() {
            if let Some(c) = self.iowq_cpus.iter().find(|c| !on.contains(c)) {
                return e(
                    &["iowq-cpus"],
                    format!("--iowq-cpus names CPU {c}, which is not online (online: {}): use only those", format_cpu_list(on)),
                );
            }
        }
        Ok(())
    }

    /// The IORING_SETUP_* bits this configuration asks for (ATTACH_WQ included when
    /// `attach-wq` is `first`; `uring::build` leaves it off for the first ring itself).
    pub fn setup_flags(&self) -> u32 {
        use crate::sys::ring::consts::*;
        let mut f = 0;
        let mut set = |on: bool, bit: u32| {
            if on {
                f |= bit
            }
        };
        set(self.iopoll, IORING_SETUP_IOPOLL);
        set(self.hybrid_iopoll, IORING_SETUP_HYBRID_IOPOLL);
        set(self.sqpoll, IORING_SETUP_SQPOLL);
        set(self.sq_thread_cpu.is_some(), IORING_SETUP_SQ_AFF);
        set(self.cq_entries.is_some(), IORING_SETUP_CQSIZE);
        set(self.clamp, IORING_SETUP_CLAMP);
        set(self.attach_wq == AttachWq::First, IORING_SETUP_ATTACH_WQ);
        set(self.r_disabled, IORING_SETUP_R_DISABLED);
        set(self.submit_all, IORING_SETUP_SUBMIT_ALL);
        set(self.coop_taskrun, IORING_SETUP_COOP_TASKRUN);
        set(self.taskrun_flag, IORING_SETUP_TASKRUN_FLAG);
        set(self.sqe128, IORING_SETUP_SQE128);
        set(self.cqe32, IORING_SETUP_CQE32);
        let (single, defer) = self.taskrun_in_force();
        set(single, IORING_SETUP_SINGLE_ISSUER);
        set(defer, IORING_SETUP_DEFER_TASKRUN);
        set(self.no_mmap, IORING_SETUP_NO_MMAP);
        set(self.registered_fd_only, IORING_SETUP_REGISTERED_FD_ONLY);
        set(self.no_sqarray, IORING_SETUP_NO_SQARRAY);
        set(self.cqe_mixed, IORING_SETUP_CQE_MIXED);
        f
    }
}

/// Cross-option rules of this section.
pub fn validate(cfg: &Config) -> Result<(), ConfigError> {
    cfg.ring.validate()
}

/// `recorder io-bench` (the file engine) does not use the server loop's wait and
/// completion options: refuses them rather than ignore them.
pub fn validate_bench(cfg: &Config) -> Result<(), ConfigError> {
    let r = &cfg.ring;
    let d = RingConfig::default();
    for (name, set) in [
        ("wait-nr", r.wait_nr != d.wait_nr),
        ("min-wait-usec", r.min_wait_usec != d.min_wait_usec),
        ("wait-timeout", r.wait_timeout != d.wait_timeout),
        ("cqe-skip-success", r.cqe_skip_success),
        ("no-iowait", r.no_iowait),
    ] {
        if set {
            let knob = KNOBS.iter().find(|k| k.name == name).map_or("", |k| k.name);
            return Err(ConfigError::new(
                &[knob],
                format!("ring.{name} is an option of recorder serve's event loop; io-bench's file engine waits its own way (submit-batch, io-depth): leave {name} at its default here"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1").unwrap(), vec![0, 1]);
        assert_eq!(parse_cpu_list("3,0-1").unwrap(), vec![0, 1, 3]);
        assert_eq!(parse_cpu_list("").unwrap(), Vec::<usize>::new());
        assert!(parse_cpu_list("1-0").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert_eq!(format_cpu_list(&[0, 1, 2, 5]), "0-2,5");
    }

    #[test]
    fn default_is_a_plain_ring() {
        let c = RingConfig::default();
        assert_eq!(c.setup_flags(), 0);
        assert_eq!(c.sq_entries, 256);
        c.validate().unwrap();
    }
}

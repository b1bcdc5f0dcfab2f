//! `recorder probe [--json] [--path DIR]`: what this kernel and device accept.
//!
//! Every answer comes from asking the kernel (a real ring setup per flag, the opcode
//! probe, a real O_DIRECT read and write on an IOPOLL ring in DIR), never from version
//! tables.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;

use crate::sys::ring::consts::*;
use crate::sys::ring::{
    errno_name, feature_names, opcode_name, rlimit, statfs_type, statx_dioalign, sync_rw, Ring,
    SetupParams,
};
use crate::uring::{classify_io_error, flag_since, io_uring_disabled_sysctl, IoErrorClass};

/// One setup flag: does the kernel accept it alone, and with its prerequisites.
#[derive(Clone, Debug, Serialize)]
pub struct FlagProbe {
    /// Kernel constant, e.g. "IORING_SETUP_SQPOLL".
    pub flag: String,
    pub bit: u32,
    /// First kernel release with the flag.
    pub since: String,
    /// "ok", or the errno name the kernel refused the flag alone with ("EINVAL").
    pub alone: String,
    /// The flags it needs ("IORING_SETUP_SQPOLL"), or "" when it needs none.
    pub prereqs: String,
    /// "ok" or errno name for the flag together with its prerequisites (same as `alone`
    /// when it has none).
    pub with_prereqs: String,
    /// How it was asked, when that matters.
    pub note: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct OpcodeProbe {
    /// Kernel name, e.g. "IORING_OP_READ_FIXED".
    pub opcode: String,
    pub number: u8,
    pub supported: bool,
}

/// A resource limit; `None` = unlimited.
#[derive(Clone, Debug, Serialize)]
pub struct Limit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// What DIR sits on and whether IOPOLL I/O works there.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PathProbe {
    pub path: String,
    /// Filesystem type from /proc/self/mountinfo (e.g. "ext4"), or from the statfs magic.
    pub filesystem: String,
    pub fs_magic: String,
    pub mount_point: String,
    pub mount_source: String,
    /// st_dev of DIR, "major:minor".
    pub device: String,
    /// Whole-disk block device under /sys/block ("vda"), if any.
    pub block_device: Option<String>,
    /// Partition, if DIR is on one ("vda1").
    pub partition: Option<String>,
    /// Every readable file of /sys/block/<dev>/queue.
    pub queue: BTreeMap<String, String>,
    /// statx(STATX_DIOALIGN) on a file in DIR.
    pub dio_mem_align: Option<u32>,
    pub dio_offset_align: Option<u32>,
    pub dio_note: String,
    /// "ok", "unsupported: ..." or "error: ..." for a real O_DIRECT read on an IOPOLL ring.
    pub iopoll_read: String,
    /// The same for an O_DIRECT overwrite of allocated blocks.
    pub iopoll_write: String,
    /// Problems met while probing the path (each says what failed).
    pub errors: Vec<String>,
}

/// Everything `recorder probe` reports.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeReport {
    pub kernel_release: String,
    /// kernel.io_uring_disabled: 0 allowed, 1 restricted to io_uring_group, 2 disabled.
    pub io_uring_disabled: Option<u32>,
    /// Features of a plain ring (IORING_FEAT_*).
    pub features: u32,
    pub feature_names: String,
    pub setup_flags: Vec<FlagProbe>,
    pub opcodes: Vec<OpcodeProbe>,
    /// Why `opcodes` is empty, when it is.
    pub opcodes_error: String,
    pub path: PathProbe,
    pub rlimit_memlock: Limit,
    pub rlimit_nofile: Limit,
}

/// Prerequisite flags of each setup flag (what `with_prereqs` adds).
pub fn prereqs(bit: u32) -> u32 {
    match bit {
        IORING_SETUP_SQ_AFF => IORING_SETUP_SQPOLL,
        IORING_SETUP_TASKRUN_FLAG => IORING_SETUP_COOP_TASKRUN,
        IORING_SETUP_DEFER_TASKRUN => IORING_SETUP_SINGLE_ISSUER,
        IORING_SETUP_REGISTERED_FD_ONLY => IORING_SETUP_NO_MMAP,
        IORING_SETUP_HYBRID_IOPOLL => IORING_SETUP_IOPOLL,
        _ => 0,
    }
}

/// The parameters the probe uses to ask for `flags` (sizes that every flag accepts:
/// 8 SQ entries, 16 CQ entries for CQSIZE, CPU 0 for SQ_AFF, a 10 ms SQPOLL idle).
pub fn probe_params(flags: u32, wq_fd: Option<i32>) -> SetupParams {
    SetupParams {
        flags,
        sq_entries: 8,
        cq_entries: 16,
        sq_thread_cpu: 0,
        sq_thread_idle_ms: 10,
        wq_fd,
    }
}

fn try_setup(flags: u32, wq_fd: Option<i32>) -> String {
    match Ring::setup(&probe_params(flags, wq_fd)) {
        Ok(_) => "ok".into(),
        Err(e) => errno_name(e.errno),
    }
}

/// Asks the kernel for every setup flag alone and with its prerequisites.
pub fn probe_setup_flags() -> Vec<FlagProbe> {
    let first = Ring::setup(&probe_params(0, None)).ok();
    SETUP_FLAGS
        .iter()
        .map(|&(bit, name)| {
            let pre = prereqs(bit);
            let mut note = String::new();
            let (alone, with) = if bit == IORING_SETUP_ATTACH_WQ {
                // Alone: no wq_fd (0). With its prerequisite: another ring's fd.
                let alone = try_setup(bit, None);
                let with = match first.as_ref().and_then(|r| r.fd()) {
                    Some(fd) => try_setup(bit, Some(fd)),
                    None => "no first ring to attach to".into(),
                };
                note = "alone: wq_fd 0; with_prereqs: wq_fd of another ring".into();
                (alone, with)
            } else {
                let alone = try_setup(bit, None);
                let with = if pre == 0 {
                    alone.clone()
                } else {
                    try_setup(bit | pre, None)
                };
                (alone, with)
            };
            match bit {
                IORING_SETUP_NO_MMAP => note = "ring and SQE memory supplied by the engine".into(),
                IORING_SETUP_SQ_AFF => note = "CPU 0".into(),
                IORING_SETUP_CQSIZE => note = "cq_entries 16 for sq_entries 8".into(),
                _ => {}
            }
            FlagProbe {
                flag: name.to_string(),
                bit: bit.trailing_zeros(),
                since: flag_since(bit).to_string(),
                alone,
                prereqs: if bit == IORING_SETUP_ATTACH_WQ {
                    "wq_fd of another ring".into()
                } else if pre == 0 {
                    String::new()
                } else {
                    crate::uring::flag_names(pre)
                },
                with_prereqs: with,
                note,
            }
        })
        .collect()
}

fn fs_name_from_magic(m: u64) -> &'static str {
    match m {
        0xEF53 => "ext2/3/4",
        0x58465342 => "xfs",
        0x9123683E => "btrfs",
        0x01021994 => "tmpfs",
        0x858458f6 => "ramfs",
        0x794c7630 => "overlayfs",
        0x6969 => "nfs",
        0xF2F52010 => "f2fs",
        0x2fc12fc1 => "zfs",
        0xca451a4e => "bcachefs",
        0x01021997 => "9p",
        0x65735546 => "fuse",
        0x2011BAB0 => "exfat",
        0x4d44 => "vfat",
        0x73717368 => "squashfs",
        _ => "unknown",
    }
}

struct Mount {
    point: String,
    fstype: String,
    source: String,
    dev: String,
}

/// The mountinfo entry whose mount point is the longest prefix of `path`.
fn mount_of(path: &Path) -> Option<Mount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let p = path.to_string_lossy().to_string();
    let mut best: Option<Mount> = None;
    for line in text.lines() {
        let (left, right) = line.split_once(" - ")?;
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 2 {
            continue;
        }
        let point = l[4].replace("\\040", " ");
        let inside = p == point || point == "/" || p.starts_with(&format!("{point}/"));
        if inside && best.as_ref().is_none_or(|b| point.len() >= b.point.len()) {
            best = Some(Mount {
                point,
                fstype: r[0].into(),
                source: r[1].into(),
                dev: l[2].into(),
            });
        }
    }
    best
}

/// `/sys/dev/block/M:m` → (whole disk, partition).
fn block_device_of(dev: &str) -> Option<(String, Option<String>)> {
    let link = std::fs::canonicalize(format!("/sys/dev/block/{dev}")).ok()?;
    let name = link.file_name()?.to_string_lossy().to_string();
    if link.join("partition").exists() {
        let parent = link.parent()?.file_name()?.to_string_lossy().to_string();
        Some((parent, Some(name)))
    } else {
        Some((name, None))
    }
}

fn read_queue(disk: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let dir = format!("/sys/block/{disk}/queue");
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let p = e.path();
            if !p.is_file() {
                continue;
            }
            if let Ok(v) = std::fs::read_to_string(&p) {
                m.insert(
                    e.file_name().to_string_lossy().to_string(),
                    v.trim().to_string(),
                );
            }
        }
    }
    m
}

fn io_outcome(flags: u32, res: std::io::Result<i32>, want: usize) -> String {
    match res {
        Ok(n) if n >= 0 && n as usize == want => "ok".into(),
        Ok(n) if n >= 0 => format!("error: short transfer {n} of {want} bytes"),
        Ok(n) => match classify_io_error(flags, n) {
            IoErrorClass::Unsupported { reason, .. } if reason.starts_with("unsupported") => reason,
            IoErrorClass::Unsupported { reason, .. } => format!("unsupported: {reason}"),
            IoErrorClass::Error { name, .. } => format!("error: {name}"),
        },
        Err(e) => format!("error: {e}"),
    }
}

/// Creates a file in `dir`, writes it, and tries an O_DIRECT read and overwrite on an
/// IOPOLL ring. Fills the DIO alignment too. The file is removed.
fn probe_iopoll(dir: &Path, out: &mut PathProbe) {
    let tmp = dir.join(format!(
        ".recorder-probe-{}-{:?}.tmp",
        std::process::id(),
        std::thread::current().id()
    ));
    let len: usize = 64 * 1024;
    let result = (|| -> Result<(), String> {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(&tmp, &data).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| format!("fsync {}: {e}", tmp.display()))?;
        match statx_dioalign(&tmp) {
            Ok(Some((m, o))) => {
                out.dio_mem_align = Some(m);
                out.dio_offset_align = Some(o);
            }
            Ok(None) => {
                out.dio_note =
                    "statx(STATX_DIOALIGN) reports no O_DIRECT support for files here".into()
            }
            Err(e) => out.dio_note = format!("statx(STATX_DIOALIGN) failed: {e}"),
        }
        let f = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&tmp)
        {
            Ok(f) => f,
            Err(e) => {
                let m = format!("unsupported: O_DIRECT open fails here ({e})");
                out.iopoll_read = m.clone();
                out.iopoll_write = m;
                return Ok(());
            }
        };
        let mut ring = match Ring::setup(&probe_params(IORING_SETUP_IOPOLL, None)) {
            Ok(r) => r,
            Err(e) => {
                let m = format!("unsupported: IOPOLL ring refused: {e}");
                out.iopoll_read = m.clone();
                out.iopoll_write = m;
                return Ok(());
            }
        };
        let io_len = out.dio_offset_align.unwrap_or(4096).max(4096);
        let r = sync_rw(&mut ring, f.as_raw_fd(), None, io_len, 0);
        let ok_bytes = match &r {
            Ok((n, buf)) if *n as u32 == io_len => {
                buf.as_slice()[..io_len as usize] == data[..io_len as usize]
            }
            _ => true,
        };
        out.iopoll_read = io_outcome(ring.flags(), r.map(|(n, _)| n), io_len as usize);
        if !ok_bytes {
            out.iopoll_read = "error: bytes read differ from bytes written".into();
        }
        let w = sync_rw(
            &mut ring,
            f.as_raw_fd(),
            Some(&data[..io_len as usize]),
            io_len,
            0,
        );
        out.iopoll_write = io_outcome(ring.flags(), w.map(|(n, _)| n), io_len as usize);
        Ok(())
    })();
    if let Err(e) = result {
        out.errors.push(e);
        if out.iopoll_read.is_empty() {
            out.iopoll_read = "error: could not create a test file".into();
            out.iopoll_write = out.iopoll_read.clone();
        }
    }
    std::fs::remove_file(&tmp).ok();
}

/// Probes the filesystem and block device under `dir`.
pub fn probe_path(dir: &Path) -> PathProbe {
    let mut out = PathProbe {
        path: dir.display().to_string(),
        ..Default::default()
    };
    let canon = match std::fs::canonicalize(dir) {
        Ok(c) => c,
        Err(e) => {
            out.errors.push(format!("{}: {e}", dir.display()));
            return out;
        }
    };
    out.path = canon.display().to_string();
    match statfs_type(&canon) {
        Ok(m) => {
            out.fs_magic = format!("{m:#x}");
            out.filesystem = fs_name_from_magic(m).into();
        }
        Err(e) => out.errors.push(format!("statfs {}: {e}", canon.display())),
    }
    let mount = mount_of(&canon);
    if let Some(m) = &mount {
        out.filesystem = m.fstype.clone();
        out.mount_point = m.point.clone();
        out.mount_source = m.source.clone();
    }
    match std::fs::metadata(&canon) {
        Ok(md) => out.device = format!("{}:{}", libc::major(md.dev()), libc::minor(md.dev())),
        Err(e) => out.errors.push(format!("stat {}: {e}", canon.display())),
    }
    // st_dev first; for filesystems with anonymous devices (btrfs, overlay) fall back to
    // the mount's major:minor, then to the mount source's name.
    let found = block_device_of(&out.device)
        .or_else(|| mount.as_ref().and_then(|m| block_device_of(&m.dev)))
        .or_else(|| {
            let src = mount.as_ref()?.source.strip_prefix("/dev/")?.to_string();
            let md = std::fs::metadata(format!("/dev/{src}")).ok()?;
            block_device_of(&format!(
                "{}:{}",
                libc::major(md.rdev()),
                libc::minor(md.rdev())
            ))
        });
    match found {
        Some((disk, part)) => {
            out.queue = read_queue(&disk);
            out.block_device = Some(disk);
            out.partition = part;
        }
        None => out.errors.push(format!(
            "no block device behind {} (device {})",
            out.path, out.device
        )),
    }
    probe_iopoll(&canon, &mut out);
    if out.dio_mem_align.is_none() {
        if let Some(lbs) = out.queue.get("logical_block_size") {
            out.dio_note = format!("{}; the device's logical_block_size is {lbs}", out.dio_note)
                .trim_start_matches("; ")
                .to_string();
        }
    }
    out
}

fn limit(res: libc::__rlimit_resource_t) -> Limit {
    match rlimit(res) {
        Ok((s, h)) => Limit {
            soft: (s != libc::RLIM_INFINITY).then_some(s),
            hard: (h != libc::RLIM_INFINITY).then_some(h),
        },
        Err(_) => Limit {
            soft: None,
            hard: None,
        },
    }
}

/// The default DIR: `./store` when it exists, else the current directory.
pub fn default_path() -> PathBuf {
    let s = PathBuf::from("./store");
    if s.is_dir() {
        s
    } else {
        PathBuf::from(".")
    }
}

/// Runs every probe. `path` defaults to [`default_path`].
pub fn run_probe(path: Option<&Path>) -> ProbeReport {
    let dir = path.map(Path::to_path_buf).unwrap_or_else(default_path);
    let kernel_release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let (features, opcodes, opcodes_error) = match Ring::setup(&probe_params(0, None)) {
        Ok(r) => match r.probe_opcodes() {
            Ok(ops) => (
                r.features(),
                ops.into_iter()
                    .map(|(op, sup)| OpcodeProbe {
                        opcode: opcode_name(op),
                        number: op,
                        supported: sup,
                    })
                    .collect(),
                String::new(),
            ),
            Err(e) => (
                r.features(),
                Vec::new(),
                format!("IORING_REGISTER_PROBE failed: {e}"),
            ),
        },
        Err(e) => (0, Vec::new(), format!("no ring could be set up: {e}")),
    };
    ProbeReport {
        kernel_release,
        io_uring_disabled: io_uring_disabled_sysctl(),
        features,
        feature_names: feature_names(features),
        setup_flags: probe_setup_flags(),
        opcodes,
        opcodes_error,
        path: probe_path(&dir),
        rlimit_memlock: limit(libc::RLIMIT_MEMLOCK),
        rlimit_nofile: limit(libc::RLIMIT_NOFILE),
    }
}

fn fmt_limit(l: &Limit, unit: &str) -> String {
    let f = |v: Option<u64>| v.map_or("unlimited".to_string(), |v| format!("{v}{unit}"));
    format!("soft {}, hard {}", f(l.soft), f(l.hard))
}

/// The human-readable report.
pub fn render_text(r: &ProbeReport) -> String {
    let mut o = String::new();
    o.push_str(&format!("kernel                 {}\n", r.kernel_release));
    o.push_str(&format!(
        "io_uring_disabled      {}\n",
        match r.io_uring_disabled {
            Some(0) => "0 (rings allowed)".to_string(),
            Some(1) => "1 (only members of kernel.io_uring_group)".to_string(),
            Some(2) => "2 (io_uring disabled: use the blocking backend)".to_string(),
            Some(v) => v.to_string(),
            None => "unreadable".to_string(),
        }
    ));
    o.push_str(&format!("features               {}\n", r.feature_names));
    o.push_str(&format!(
        "RLIMIT_MEMLOCK         {}\n",
        fmt_limit(&r.rlimit_memlock, " bytes")
    ));
    o.push_str(&format!(
        "RLIMIT_NOFILE          {}\n\n",
        fmt_limit(&r.rlimit_nofile, "")
    ));
    o.push_str(&format!(
        "{:<34} {:>3} {:>6}  {:<10} {:<12} {}\n",
        "setup flag", "bit", "since", "alone", "w/ prereqs", "prereqs"
    ));
    for f in &r.setup_flags {
        o.push_str(&format!(
            "{:<34} {:>3} {:>6}  {:<10} {:<12} {}\n",
            f.flag,
            f.bit,
            f.since,
            f.alone,
            f.with_prereqs,
            if f.prereqs.is_empty() {
                "-"
            } else {
                &f.prereqs
            }
        ));
    }
    let sup = r.opcodes.iter().filter(|o| o.supported).count();
    o.push_str(&format!(
        "\nopcodes: {sup} of {} supported",
        r.opcodes.len()
    ));
    if !r.opcodes_error.is_empty() {
        o.push_str(&format!(" ({})", r.opcodes_error));
    }
    o.push('\n');
    for chunk in r.opcodes.chunks(3) {
        let cells: Vec<String> = chunk
            .iter()
            .map(|op| {
                format!(
                    "{:>2} {:<28} {:<3}",
                    op.number,
                    op.opcode,
                    if op.supported { "yes" } else { "no" }
                )
            })
            .collect();
        o.push_str(&format!("  {}\n", cells.join("  ")));
    }
    let p = &r.path;
    o.push_str(&format!("\npath                   {}\n", p.path));
    o.push_str(&format!(
        "filesystem             {} (magic {}) mounted on {} from {}\n",
        p.filesystem, p.fs_magic, p.mount_point, p.mount_source
    ));
    o.push_str(&format!(
        "block device           {}{} (st_dev {})\n",
        p.block_device.as_deref().unwrap_or("none"),
        p.partition
            .as_deref()
            .map(|s| format!(", partition {s}"))
            .unwrap_or_default(),
        p.device
    ));
    o.push_str(&format!(
        "DIO alignment          {}\n",
        match (p.dio_mem_align, p.dio_offset_align) {
            (Some(m), Some(off)) =>
                format!("memory {m} bytes, offset/length {off} bytes (statx STATX_DIOALIGN)"),
            _ => p.dio_note.clone(),
        }
    ));
    o.push_str(&format!("IOPOLL O_DIRECT read   {}\n", p.iopoll_read));
    o.push_str(&format!("IOPOLL O_DIRECT write  {}\n", p.iopoll_write));
    if !p.queue.is_empty() {
        o.push_str(&format!(
            "/sys/block/{}/queue:\n",
            p.block_device.as_deref().unwrap_or("?")
        ));
        for (k, v) in &p.queue {
            o.push_str(&format!("  {k:<32} {v}\n"));
        }
    }
    for e in &p.errors {
        o.push_str(&format!("note: {e}\n"));
    }
    o
}

const HELP: &str = "\
recorder probe [--json] [--path DIR]

Tells what this machine accepts: kernel release; every io_uring setup flag alone and with
its prerequisites (a real ring setup each); every opcode (IORING_REGISTER_PROBE); for DIR
(default ./store, or the current directory when it does not exist): filesystem, block
device and its /sys/block/<dev>/queue settings, O_DIRECT alignment (statx STATX_DIOALIGN),
whether IOPOLL O_DIRECT I/O really works there (a temporary file is written, read and
removed); RLIMIT_MEMLOCK, RLIMIT_NOFILE and kernel.io_uring_disabled.

  --json       print one JSON object instead of the table
  --path DIR   directory to probe";

/// Entry point of `recorder probe` (args after the subcommand name).
pub fn cli_main(args: Vec<String>) -> ExitCode {
    let mut json = false;
    let mut path: Option<PathBuf> = None;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => json = true,
            "--path" => match it.next() {
                Some(p) => path = Some(PathBuf::from(p)),
                None => {
                    eprintln!("recorder probe: --path needs a directory\n\n{HELP}");
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                println!("{HELP}");
                return ExitCode::SUCCESS;
            }
            other => {
                let (k, v) = other.split_once('=').unwrap_or((other, ""));
                if k == "--path" && !v.is_empty() {
                    path = Some(PathBuf::from(v));
                    continue;
                }
                eprintln!("recorder probe: unknown argument {other:?}\n\n{HELP}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(p) = &path {
        if !p.is_dir() {
            eprintln!(
                "recorder probe: --path {}: not a directory (give an existing directory to probe)",
                p.display()
            );
            return ExitCode::from(2);
        }
    }
    let report = run_probe(path.as_deref());
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("recorder probe: cannot serialize the report: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", render_text(&report));
    }
    ExitCode::SUCCESS
}

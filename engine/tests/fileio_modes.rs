//! Durability modes (file content and sync counts), preallocation, uncached, IOPOLL on a
//! device without poll queues, validation through `fileio::run`, the memlock check, and
//! the io_uring-disabled message.

use engine::config::Config;
use engine::fileio::{self, Backend, FileIoError, Fill, Job, Pattern};
use engine::sys::mem;
use std::path::PathBuf;

const SIZE: u64 = 256 << 10;
const BS: u64 = 16 << 10;

/// A temporary directory removed when the test ends (pass or fail).
struct Dir(PathBuf);

impl std::ops::Deref for Dir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmpdir(name: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("fileio-modes-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

fn cfg(pairs: &[(&str, &str)]) -> Config {
    let mut c = Config::default();
    c.set("file.block-size", "16k").unwrap();
    c.set("file.io-depth", "4").unwrap();
    for (k, v) in pairs {
        c.set(k, v).unwrap_or_else(|e| panic!("{k}={v}: {e}"));
    }
    c
}

fn write(dir: &std::path::Path, c: &Config, backend: Backend, seed: u64) -> fileio::JobResult {
    let path = dir.join(format!("f-{}", backend.name()));
    let mut job = Job::new(&path, SIZE, Pattern::Write);
    job.fill = Fill::Seeded(seed);
    let r = fileio::run(&job, c, backend).unwrap_or_else(|e| panic!("{backend:?}: {e}"));
    let data = std::fs::read(&path).unwrap();
    assert!(
        data[..SIZE as usize] == fileio::expected_file(seed, SIZE, BS)[..],
        "{backend:?}: content differs"
    );
    r
}

#[test]
fn durability_none_never_syncs() {
    let d = tmpdir("none");
    for b in [Backend::Uring, Backend::Blocking] {
        assert_eq!(write(&d, &cfg(&[]), b, 1).syncs, 0);
    }
}

#[test]
fn fdatasync_group_commit_by_bytes() {
    let d = tmpdir("gcbytes");
    let c = cfg(&[
        ("file.durability", "fdatasync"),
        ("file.sync-interval-bytes", "64k"),
        ("file.io-depth", "1"),
    ]);
    // One writer at depth 1: a sync after every 64 KiB, none left over at the end.
    assert_eq!(write(&d, &c, Backend::Blocking, 2).syncs, 4);
    // The ring keeps writing while its one fdatasync is in flight, so one sync can cover
    // several intervals (group commit): at least the final one, at most one per interval.
    let s = write(&d, &c, Backend::Uring, 2).syncs;
    assert!(
        (1..=5).contains(&s),
        "uring: {s} syncs for 256 KiB at 64 KiB intervals"
    );
    // Deeper queues: at least the final sync, at most one per interval plus the final one.
    let c = cfg(&[
        ("file.durability", "fdatasync"),
        ("file.sync-interval-bytes", "64k"),
    ]);
    for b in [Backend::Uring, Backend::Blocking] {
        let s = write(&d, &c, b, 3).syncs;
        assert!((1..=5).contains(&s), "{b:?}: {s} syncs");
    }
}

#[test]
fn fdatasync_without_interval_syncs_after_every_write() {
    let d = tmpdir("gcevery");
    let c = cfg(&[("file.durability", "fdatasync"), ("file.io-depth", "1")]);
    assert_eq!(write(&d, &c, Backend::Blocking, 4).syncs, SIZE / BS);
    // The ring overlaps writes with the one fdatasync in flight: each covers what
    // completed before it, so there are at most as many syncs as writes.
    let s = write(&d, &c, Backend::Uring, 4).syncs;
    assert!(
        (1..=SIZE / BS).contains(&s),
        "uring: {s} syncs for {} writes",
        SIZE / BS
    );
}

#[test]
fn fdatasync_by_time_ends_with_a_final_sync() {
    let d = tmpdir("gctime");
    let c = cfg(&[
        ("file.durability", "fdatasync"),
        ("file.sync-interval-ms", "60000"),
    ]);
    for b in [Backend::Uring, Backend::Blocking] {
        assert_eq!(
            write(&d, &c, b, 5).syncs,
            1,
            "{b:?}: only the final sync within a minute"
        );
    }
}

#[test]
fn odsync_opens_with_o_dsync() {
    let d = tmpdir("odsync");
    let c = cfg(&[("file.durability", "odsync")]);
    let of = fileio::open_file(&d.join("probe"), &c, true, true).unwrap();
    let fdinfo = std::fs::read_to_string(format!(
        "/proc/self/fdinfo/{}",
        std::os::fd::AsRawFd::as_raw_fd(&of.fd)
    ))
    .unwrap();
    let flags = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .unwrap()
        .trim();
    let flags = u32::from_str_radix(flags, 8).unwrap();
    assert_ne!(
        flags & libc::O_DSYNC as u32,
        0,
        "O_DSYNC not set: flags {flags:o}"
    );
    let plain = fileio::open_file(&d.join("probe2"), &cfg(&[]), true, true).unwrap();
    let fdinfo = std::fs::read_to_string(format!(
        "/proc/self/fdinfo/{}",
        std::os::fd::AsRawFd::as_raw_fd(&plain.fd)
    ))
    .unwrap();
    let flags = u32::from_str_radix(
        fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .unwrap()
            .trim(),
        8,
    )
    .unwrap();
    assert_eq!(flags & libc::O_DSYNC as u32, 0);
    for b in [Backend::Uring, Backend::Blocking] {
        assert_eq!(write(&d, &c, b, 6).syncs, 0);
    }
}

#[test]
fn rwf_dsync_writes_round_trip() {
    let d = tmpdir("rwfdsync");
    for direct in ["off", "required"] {
        let c = cfg(&[
            ("file.durability", "rwf-dsync"),
            ("file.direct", direct),
            ("file.write-op", "writev"),
        ]);
        for b in [Backend::Uring, Backend::Blocking] {
            assert_eq!(write(&d, &c, b, 7).syncs, 0);
        }
    }
}

#[test]
fn prealloc_allocates_before_writing() {
    let d = tmpdir("prealloc");
    let c = cfg(&[("file.prealloc", "true"), ("file.prealloc-bytes", "1m")]);
    for b in [Backend::Uring, Backend::Blocking] {
        write(&d, &c, b, 8);
        let m = std::fs::metadata(d.join(format!("f-{}", b.name()))).unwrap();
        assert_eq!(
            m.len(),
            1 << 20,
            "{b:?}: fallocate mode 0 extends the file to prealloc-bytes"
        );
        assert!(
            std::os::unix::fs::MetadataExt::blocks(&m) * 512 >= 1 << 20,
            "{b:?}: blocks not allocated"
        );
    }
    // Without prealloc a fresh write leaves the file exactly the job size.
    write(&d, &cfg(&[]), Backend::Uring, 8);
    assert_eq!(std::fs::metadata(d.join("f-uring")).unwrap().len(), SIZE);
}

#[test]
fn uncached_works_or_is_reported_unsupported() {
    let d = tmpdir("uncached");
    let c = cfg(&[("file.uncached", "true")]);
    for b in [Backend::Uring, Backend::Blocking] {
        let path = d.join(format!("u-{}", b.name()));
        let mut job = Job::new(&path, SIZE, Pattern::Write);
        job.fill = Fill::Seeded(10);
        match fileio::run(&job, &c, b) {
            Ok(_) => {
                assert!(std::fs::read(&path).unwrap() == fileio::expected_file(10, SIZE, BS));
                job.pattern = Pattern::Read;
                job.verify = true;
                fileio::run(&job, &c, b).unwrap();
            }
            Err(e) => assert!(
                e.is_unsupported(),
                "{b:?}: uncached failed with something else than unsupported: {e}"
            ),
        }
    }
}

#[test]
fn iopoll_on_a_device_without_poll_queues_is_unsupported() {
    // Polled reads go to the device as polled bios; a device without poll queues
    // refuses them (EOPNOTSUPP). (ext4 writes into newly allocated blocks are not
    // polled and complete even here, so the check reads.)
    let d = tmpdir("iopoll");
    let path = d.join("p");
    fileio::lay_out(&path, SIZE, BS, 11).unwrap();
    let c = cfg(&[("ring.iopoll", "true"), ("file.direct", "required")]);
    let of = fileio::open_file(&path, &c, false, false).unwrap();
    let (maj, min) = engine::sys::fs::device_of(&of.fd).unwrap();
    drop(of);
    let poll = std::fs::read_to_string(format!("/sys/dev/block/{maj}:{min}/queue/io_poll"))
        .or_else(|_| {
            std::fs::read_to_string(format!("/sys/dev/block/{maj}:{min}/../queue/io_poll"))
        })
        .unwrap_or_default();
    let mut job = Job::new(&path, SIZE, Pattern::Read);
    job.fill = Fill::Seeded(11);
    job.verify = true;
    match fileio::run(&job, &c, Backend::Uring) {
        Err(FileIoError::Unsupported { what, reason }) => {
            assert!(what.contains("IOPOLL"), "{what}");
            assert!(reason.contains("unsupported on this device"), "{reason}");
            assert_ne!(poll.trim(), "1", "the device polls but IOPOLL was refused");
        }
        Ok(_) => assert_eq!(
            poll.trim(),
            "1",
            "polled reads worked on a device without poll queues?"
        ),
        Err(e) => panic!("IOPOLL gave an untyped error: {e}"),
    }
}

#[test]
fn run_refuses_bad_configurations_by_name() {
    let d = tmpdir("refuse");
    let job = Job::new(d.join("x"), SIZE, Pattern::Write);
    let e = fileio::run(
        &job,
        &cfg(&[("file.write-op", "write-fixed")]),
        Backend::Uring,
    )
    .unwrap_err();
    assert!(e.to_string().contains("set register-buffers=true"), "{e}");
    let e = fileio::run(&job, &cfg(&[("ring.iopoll", "true")]), Backend::Uring).unwrap_err();
    assert!(e.to_string().contains("set direct=required"), "{e}");
    let e = fileio::run(
        &Job::new(d.join("x"), 100_000, Pattern::Write),
        &cfg(&[]),
        Backend::Blocking,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("not a non-zero multiple of block-size"),
        "{e}"
    );
    let e = fileio::run(
        &Job::new(d.join("missing"), SIZE, Pattern::Read),
        &cfg(&[]),
        Backend::Uring,
    )
    .unwrap_err();
    assert!(e.to_string().contains("No such file"), "{e}");
    std::fs::write(d.join("short"), b"abc").unwrap();
    let e = fileio::run(
        &Job::new(d.join("short"), SIZE, Pattern::Read),
        &cfg(&[]),
        Backend::Blocking,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("the file has 3 bytes but the job needs 262144"),
        "{e}"
    );
}

#[test]
fn io_uring_disabled_points_to_the_blocking_backend() {
    let e = fileio::ring_error(engine::uring::RingError::Disabled {
        reason: "kernel.io_uring_disabled = 2".into(),
    });
    assert!(e.is_unsupported());
    let m = e.to_string();
    assert!(
        m.contains("kernel.io_uring_disabled = 2") && m.contains("use --backend blocking"),
        "{m}"
    );
}

#[test]
fn memlock_check_reads_the_real_limit_in_a_child() {
    if std::env::var_os("FILEIO_MEMLOCK_CHILD").is_some() {
        mem::set_memlock_limit(64 << 10).unwrap();
        let (soft, _) = mem::memlock_limit().unwrap();
        let m = mem::check_memlock(32 << 20, soft, false).unwrap_err();
        println!("CHILD-MESSAGE: {m}");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "memlock_check_reads_the_real_limit_in_a_child",
            "--nocapture",
        ])
        .env("FILEIO_MEMLOCK_CHILD", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("CHILD-MESSAGE: registered buffers need 32768 KiB of locked memory, RLIMIT_MEMLOCK is 64 KiB: raise it with ulimit -l or turn register-buffers off"),
        "{text}"
    );
}

#[test]
fn submit_batch_one_enters_once_per_io_and_every_batch_writes_the_same_bytes() {
    let d = tmpdir("batch");
    for batch in ["0", "1", "2", "3", "4"] {
        let c = cfg(&[("file.submit-batch", batch)]);
        let r = write(&d, &c, Backend::Uring, 7);
        assert_eq!(r.ios, SIZE / BS, "batch {batch}");
        if batch == "1" {
            // At most one SQE per io_uring_enter: never fewer enters than I/Os.
            assert!(
                r.syscalls >= r.ios,
                "batch 1: {} enters for {} I/Os",
                r.syscalls,
                r.ios
            );
        }
    }
    // More than io-depth can never be queued: refused, naming both knobs.
    let mut c = Config::default();
    c.set("file.io-depth", "4").unwrap();
    c.set("file.submit-batch", "5").unwrap();
    let e = fileio::validate(&c).unwrap_err().to_string();
    assert!(
        e.contains("submit-batch=5") && e.contains("io-depth=4"),
        "{e}"
    );
    // The blocking backend has no ring: a non-default batch is refused, not ignored.
    let path = d.join("blocking");
    let c = cfg(&[("file.submit-batch", "4")]);
    let e = fileio::run(
        &Job::new(&path, SIZE, Pattern::Write),
        &c,
        Backend::Blocking,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("submit-batch") && e.contains("blocking"), "{e}");
}

#[test]
fn buffer_memory_thp_and_pages_write_the_same_bytes_and_report_huge_pages() {
    let d = tmpdir("bufmem");
    for mem_kind in ["thp", "pages"] {
        let c = cfg(&[
            ("file.buffer-memory", mem_kind),
            ("file.direct", "required"),
        ]);
        for b in [Backend::Uring, Backend::Blocking] {
            let r = write(&d, &c, b, 9);
            let e = &r.effective;
            assert_eq!(
                e.arena_bytes % if mem_kind == "thp" { 2 << 20 } else { 4096 },
                0,
                "{mem_kind}: the mapping is whole pages of its kind"
            );
            let huge = e.arena_huge_bytes.expect("smaps readable");
            if mem_kind == "pages" {
                assert_eq!(huge, 0);
            }
            assert!(huge <= e.arena_bytes);
        }
    }
}

#[test]
fn buffer_memory_hugetlb_without_a_pool_says_how_to_reserve_one() {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let free: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if free > 0 {
        eprintln!("skipped: the hugetlb pool has {free} free pages here");
        return;
    }
    let d = tmpdir("hugetlb");
    let c = cfg(&[("file.buffer-memory", "hugetlb")]);
    let e = fileio::run(
        &Job::new(d.join("f"), SIZE, Pattern::Write),
        &c,
        Backend::Uring,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("nr_hugepages") && e.contains("thp"), "{e}");
}

//! Data round trips: every write opcode x registered buffers (where legal) x O_DIRECT,
//! read back through every read opcode (verified block by block, and the whole file
//! compared byte for byte), on several ring configurations and on the blocking backend.

use engine::config::Config;
use engine::fileio::{self, Backend, Fill, Job, Pattern};
use std::path::PathBuf;

const SIZE: u64 = 256 << 10;
const BS: u64 = 16 << 10;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fileio-rt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn base(ring: &[(&str, &str)], direct: &str, reg: bool) -> Config {
    let mut c = Config::default();
    for (k, v) in ring {
        c.set(k, v)
            .unwrap_or_else(|e| panic!("ring option {k}={v}: {e}"));
    }
    c.set("file.direct", direct).unwrap();
    c.set("file.register-buffers", if reg { "true" } else { "false" })
        .unwrap();
    c.set("file.block-size", "16k").unwrap();
    c.set("file.io-depth", "4").unwrap();
    c
}

/// Writes with each legal write config, reads back with each legal read op.
fn matrix(name: &str, ring: &[(&str, &str)]) {
    let dir = tmpdir(name);
    let path = dir.join("data");
    let mut cells = 0;
    for direct in ["off", "required"] {
        for (wi, wop) in ["write", "writev", "write-fixed", "writev-fixed"]
            .into_iter()
            .enumerate()
        {
            for reg in [false, true] {
                if wop.contains("fixed") && !reg {
                    continue;
                }
                let seed =
                    1000 + wi as u64 * 10 + reg as u64 + if direct == "off" { 0 } else { 100 };
                let mut c = base(ring, direct, reg);
                c.set("file.write-op", wop).unwrap();
                let mut job = Job::new(&path, SIZE, Pattern::Write);
                job.fill = Fill::Seeded(seed);
                let r = fileio::run(&job, &c, Backend::Uring).unwrap_or_else(|e| {
                    panic!("{name}: write-op={wop} register-buffers={reg} direct={direct}: {e}")
                });
                assert_eq!((r.bytes, r.ios), (SIZE, SIZE / BS));
                assert_eq!(r.effective.direct, direct == "required");
                let on_disk = std::fs::read(&path).unwrap();
                assert!(
                    on_disk == fileio::expected_file(seed, SIZE, BS),
                    "{name}: {wop} reg={reg} direct={direct}: file content differs"
                );
                for rop in ["read", "readv", "read-fixed", "readv-fixed"] {
                    if rop.contains("fixed") && !reg {
                        continue;
                    }
                    let mut c = c.clone();
                    c.set("file.read-op", rop).unwrap();
                    for pattern in [Pattern::Read, Pattern::RandRead] {
                        let mut job = Job::new(&path, SIZE, pattern);
                        job.fill = Fill::Seeded(seed);
                        job.verify = true;
                        let r = fileio::run(&job, &c, Backend::Uring).unwrap_or_else(|e| {
                            panic!(
                                "{name}: read-op={rop} after {wop} reg={reg} direct={direct}: {e}"
                            )
                        });
                        assert_eq!(r.bytes, SIZE);
                    }
                    cells += 1;
                }
            }
        }
    }
    // 2 direct x (write, writev: reg off -> 2 reads, reg on -> 4; fixed x2: 4) = 2 x (2+4+2+4+4+4)
    assert_eq!(cells, 40);
    // A read that does not match the data is caught (the check can fail).
    let mut job = Job::new(&path, SIZE, Pattern::Read);
    job.fill = Fill::Seeded(424242);
    job.verify = true;
    let e = fileio::run(&job, &base(ring, "off", false), Backend::Uring).unwrap_err();
    assert!(
        e.to_string().contains("differs from what was written"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn round_trip_default_ring() {
    matrix("default", &[]);
}

#[test]
fn round_trip_sqpoll() {
    matrix(
        "sqpoll",
        &[("ring.sqpoll", "true"), ("ring.sq-thread-idle-ms", "10")],
    );
}

#[test]
fn round_trip_single_issuer_defer_taskrun() {
    matrix(
        "defer",
        &[
            ("ring.single-issuer", "true"),
            ("ring.defer-taskrun", "true"),
        ],
    );
}

#[test]
fn round_trip_coop_taskrun_flag() {
    matrix(
        "coop",
        &[("ring.coop-taskrun", "true"), ("ring.taskrun-flag", "true")],
    );
}

#[test]
fn round_trip_no_mmap_registered_fd_only() {
    matrix(
        "nommap",
        &[
            ("ring.no-mmap", "true"),
            ("ring.registered-fd-only", "true"),
            ("ring.no-sqarray", "true"),
        ],
    );
}

#[test]
fn round_trip_small_rings_submit_on_full_sq() {
    // An SQ of 2 entries with io-depth 4: pushes find the SQ full and submit first.
    matrix(
        "smallsq",
        &[
            ("ring.sq-entries", "2"),
            ("ring.cq-entries", "8"),
            ("ring.r-disabled", "true"),
            ("ring.submit-all", "true"),
        ],
    );
}

#[test]
fn full_submission_queue_is_submitted_and_retried() {
    let dir = tmpdir("sqfull");
    let c = base(
        // submit-batch 0: all four queued before one enter (with 1, the SQ never fills).
        &[
            ("ring.sq-entries", "2"),
            ("ring.cq-entries", "8"),
            ("file.submit-batch", "0"),
        ],
        "off",
        false,
    );
    let mut job = Job::new(dir.join("data"), SIZE, Pattern::Write);
    job.fill = Fill::Seeded(9);
    let r = fileio::run(&job, &c, Backend::Uring).unwrap();
    assert!(
        r.sq_full_retries > 0,
        "io-depth 4 on a 2-entry SQ never found it full"
    );
    assert!(std::fs::read(dir.join("data")).unwrap() == fileio::expected_file(9, SIZE, BS));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn round_trip_blocking_backend() {
    let dir = tmpdir("blocking");
    let path = dir.join("data");
    for direct in ["off", "required"] {
        for (i, pattern) in [Pattern::Write, Pattern::RandWrite].into_iter().enumerate() {
            let seed = 77 + i as u64 + if direct == "off" { 0 } else { 10 };
            let c = base(&[], direct, false);
            let mut job = Job::new(&path, SIZE, pattern);
            job.fill = Fill::Seeded(seed);
            let r = fileio::run(&job, &c, Backend::Blocking)
                .unwrap_or_else(|e| panic!("blocking {direct} {pattern:?}: {e}"));
            assert_eq!(r.effective.direct, direct == "required");
            assert_eq!(r.ios, SIZE / BS);
            assert!(
                std::fs::read(&path).unwrap() == fileio::expected_file(seed, SIZE, BS),
                "blocking write {direct}: content"
            );
            for rp in [Pattern::Read, Pattern::RandRead] {
                let mut job = Job::new(&path, SIZE, rp);
                job.fill = Fill::Seeded(seed);
                job.verify = true;
                fileio::run(&job, &c, Backend::Blocking)
                    .unwrap_or_else(|e| panic!("blocking read {direct}: {e}"));
                // And the ring reads what the blocking backend wrote.
                fileio::run(&job, &c, Backend::Uring)
                    .unwrap_or_else(|e| panic!("uring read of blocking data {direct}: {e}"));
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn registered_files_round_trip() {
    let dir = tmpdir("regfiles");
    let path = dir.join("data");
    let mut c = base(&[], "required", true);
    c.set("file.register-files", "true").unwrap();
    c.set("file.write-op", "write-fixed").unwrap();
    c.set("file.read-op", "readv-fixed").unwrap();
    let mut job = Job::new(&path, SIZE, Pattern::RandWrite);
    job.fill = Fill::Seeded(5);
    let r = fileio::run(&job, &c, Backend::Uring).unwrap();
    assert!(r.effective.registered_files && r.effective.registered_buffers);
    assert!(std::fs::read(&path).unwrap() == fileio::expected_file(5, SIZE, BS));
    job.pattern = Pattern::Read;
    job.verify = true;
    fileio::run(&job, &c, Backend::Uring).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

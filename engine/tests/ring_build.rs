//! Every setup flag (with its prerequisites) and the useful combinations, built through
//! `uring::build` from a `RingConfig`, doing real I/O: NOP, then a file written and read
//! back identical with opcode::Write/Read (buffered and O_DIRECT) and
//! opcode::WriteFixed/ReadFixed on registered buffers. IOPOLL on this virtio disk (no poll
//! queues) must give the typed "unsupported on this device" error.

use engine::config::ring::AttachWq;
use engine::config::RingConfig;
use engine::sys::ring::consts::*;
use engine::sys::ring::{AnonMem, Cqe, Ring};
use engine::uring::{self, classify_io_error, Effective, IoErrorClass};
use io_uring::{opcode, types};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

const LEN: usize = 64 * 1024;

fn tmpdir(tag: &str) -> PathBuf {
    // CARGO_TARGET_TMPDIR is on the real disk (ext4 on vda), so O_DIRECT is meaningful.
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "ring-build-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cfg(f: impl FnOnce(&mut RingConfig)) -> RingConfig {
    let mut c = RingConfig {
        sq_entries: 16,
        ..Default::default()
    };
    f(&mut c);
    c
}

fn build(c: &RingConfig) -> (Ring, Effective) {
    uring::build(c, None).unwrap_or_else(|e| panic!("build {c:?}: {e}"))
}

/// Waits for one completion, up to 30 s. On an IOPOLL ring `submit_and_wait` returns at
/// once when nothing is pollable, so this spins; a count of spins (100,000 here before) ran
/// out within ~0.1 s while a write punted to io-wq waited for a CPU on a guest with 30%
/// steal (seen in CI), so the bound is time, not spins.
fn wait_one(ring: &mut Ring) -> Cqe {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < std::time::Duration::from_secs(30) {
        if let Some(c) = ring.pop_cqe() {
            return c;
        }
        ring.submit_and_wait(1).expect("submit_and_wait");
    }
    panic!("no completion in 30 s");
}

fn run(ring: &mut Ring, sqe: io_uring::squeue::Entry) -> Cqe {
    // SAFETY: every caller keeps the buffers and files alive until this returns, which is
    // after the completion has been reaped.
    unsafe { ring.push(&sqe).expect("SQ has room") };
    ring.submit().expect("submit");
    wait_one(ring)
}

fn pattern(buf: &mut [u8], seed: u8) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2654435761).wrapping_shr(13) as u8 ^ seed;
    }
}

/// What happened to the file I/O on this ring.
#[derive(Debug, PartialEq)]
enum Outcome {
    Ok,
    Unsupported(String),
}

fn file_io(ring: &mut Ring, tag: &str, direct: bool, fixed: bool) -> Outcome {
    let dir = tmpdir(tag);
    let path = dir.join(if direct { "direct" } else { "buffered" });
    let mut oo = std::fs::OpenOptions::new();
    oo.read(true).write(true).create(true).truncate(true);
    if direct {
        oo.custom_flags(libc::O_DIRECT);
    }
    let f = oo.open(&path).unwrap();
    let fd = types::Fd(f.as_raw_fd());
    let mut wbuf = AnonMem::new(LEN).unwrap();
    let mut rbuf = AnonMem::new(LEN).unwrap();
    pattern(wbuf.as_mut_slice(), tag.len() as u8);
    if fixed {
        let iov = [
            libc::iovec {
                iov_base: wbuf.as_mut_ptr().cast(),
                iov_len: LEN,
            },
            libc::iovec {
                iov_base: rbuf.as_mut_ptr().cast(),
                iov_len: LEN,
            },
        ];
        // SAFETY: both buffers outlive the registration (unregistered below).
        unsafe { ring.register_buffers(&iov) }.expect("register_buffers");
        let mut eff = Effective::default();
        eff.refresh_fdinfo(ring);
        if ring.fd().is_some() {
            assert_eq!(
                eff.user_bufs,
                Some(2),
                "{tag}: fdinfo UserBufs after registering 2 buffers"
            );
        }
    }
    let mut outcome = Outcome::Ok;
    for half in 0..2u64 {
        // two writes at different offsets, then two reads
        let off = half * (LEN as u64 / 2);
        let p = slice_at(&wbuf, off as usize);
        let w = if fixed {
            opcode::WriteFixed::new(fd, p, LEN as u32 / 2, 0)
                .offset(off)
                .build()
        } else {
            opcode::Write::new(fd, p, LEN as u32 / 2)
                .offset(off)
                .build()
        };
        let c = run(ring, w.user_data(100 + half));
        assert_eq!(c.user_data, 100 + half);
        if c.res < 0 {
            match classify_io_error(ring.flags(), c.res) {
                IoErrorClass::Unsupported { what, reason } => {
                    outcome = Outcome::Unsupported(format!("{what}: {reason}"));
                    break;
                }
                IoErrorClass::Error { name, .. } => panic!("{tag}: write failed with {name}"),
            }
        }
        assert_eq!(c.res as usize, LEN / 2, "{tag}: short write");
    }
    if outcome == Outcome::Ok {
        let r = if fixed {
            opcode::ReadFixed::new(fd, rbuf.as_mut_ptr(), LEN as u32, 1)
                .offset(0)
                .build()
        } else {
            opcode::Read::new(fd, rbuf.as_mut_ptr(), LEN as u32)
                .offset(0)
                .build()
        };
        let c = run(ring, r.user_data(200));
        assert_eq!(c.user_data, 200);
        if c.res < 0 {
            // ext4 completes extending O_DIRECT writes synchronously (not polled), so on
            // an IOPOLL ring without poll queues it is often the read that fails.
            match classify_io_error(ring.flags(), c.res) {
                IoErrorClass::Unsupported { what, reason } => {
                    outcome = Outcome::Unsupported(format!("{what}: {reason}"))
                }
                IoErrorClass::Error { name, .. } => panic!("{tag}: read failed with {name}"),
            }
        } else {
            assert_eq!(c.res, LEN as i32, "{tag}: short read");
            assert!(
                rbuf.as_slice() == wbuf.as_slice(),
                "{tag}: bytes read back differ from bytes written"
            );
        }
    }
    if fixed {
        ring.unregister_buffers().unwrap();
    }
    drop(f);
    std::fs::remove_dir_all(&dir).ok();
    outcome
}

fn slice_at(m: &AnonMem, off: usize) -> *const u8 {
    assert!(off < m.len());
    m.as_slice()[off..].as_ptr()
}

/// NOP plus the four file I/O variants; all must succeed.
fn exercise(c: &RingConfig, tag: &str) -> (Ring, Effective) {
    let (mut ring, eff) = build(c);
    let n = run(&mut ring, opcode::Nop::new().build().user_data(9));
    assert_eq!((n.user_data, n.res), (9, 0), "{tag}: NOP");
    for (direct, fixed) in [(false, false), (true, false), (false, true), (true, true)] {
        let o = file_io(&mut ring, &format!("{tag}-{direct}-{fixed}"), direct, fixed);
        assert_eq!(o, Outcome::Ok, "{tag}: direct={direct} fixed={fixed}");
    }
    assert!(ring.enter_calls() > 0);
    (ring, eff)
}

#[test]
fn plain() {
    let (_, eff) = exercise(&RingConfig::default(), "plain");
    assert_eq!(eff.flags, 0);
    assert_eq!(eff.sq_entries, 256);
    assert_eq!(eff.cq_entries, 512);
    assert!(eff.features & IORING_FEAT_SINGLE_MMAP != 0);
    assert_eq!(eff.sq_thread_pid, None);
    assert!(eff.fdinfo.contains_key("SqMask"), "{:?}", eff.fdinfo);
}

#[test]
fn iopoll_is_unsupported_on_this_device() {
    for hybrid in [false, true] {
        let c = cfg(|c| {
            c.iopoll = true;
            c.hybrid_iopoll = hybrid;
        });
        let (mut ring, eff) = build(&c);
        assert!(eff.flags & IORING_SETUP_IOPOLL != 0);
        assert_eq!(eff.flags & IORING_SETUP_HYBRID_IOPOLL != 0, hybrid);
        let n = run(&mut ring, opcode::Nop::new().build().user_data(1));
        assert_eq!(n.res, 0, "NOP works on an IOPOLL ring");
        let io_poll = std::fs::read_to_string("/sys/block/vda/queue/io_poll").unwrap_or_default();
        let o = file_io(&mut ring, &format!("iopoll-{hybrid}"), true, false);
        if io_poll.trim() == "0" {
            match o {
                Outcome::Unsupported(m) => assert!(m.contains("unsupported on this device"), "{m}"),
                Outcome::Ok => {
                    panic!("IOPOLL O_DIRECT I/O succeeded on a device without poll queues")
                }
            }
        }
        // Buffered I/O is never pollable.
        match file_io(&mut ring, &format!("iopoll-buf-{hybrid}"), false, false) {
            Outcome::Unsupported(m) => assert!(m.contains("EOPNOTSUPP"), "{m}"),
            Outcome::Ok => panic!("buffered I/O on an IOPOLL ring succeeded"),
        }
    }
}

#[test]
fn sqpoll_has_an_sq_thread() {
    let (_, eff) = exercise(&cfg(|c| c.sqpoll = true), "sqpoll");
    assert!(
        eff.sq_thread_pid.is_some(),
        "fdinfo shows no SqThread: {:?}",
        eff.fdinfo
    );
}

#[test]
fn sqpoll_idle_and_affinity() {
    let cpu = engine::config::ring::online_cpus()
        .unwrap()
        .last()
        .copied()
        .unwrap() as u32;
    let (_, eff) = exercise(
        &cfg(|c| {
            c.sqpoll = true;
            c.sq_thread_idle_ms = Some(20);
            c.sq_thread_cpu = Some(cpu);
        }),
        "sqaff",
    );
    assert!(eff.flags & IORING_SETUP_SQ_AFF != 0);
    assert!(eff.sq_thread_pid.is_some());
    assert_eq!(
        eff.sq_thread_cpu,
        Some(cpu as i64),
        "SqThreadCpu: {:?}",
        eff.fdinfo
    );
}

#[test]
fn cqsize_and_clamp() {
    let (_, eff) = exercise(&cfg(|c| c.cq_entries = Some(1024)), "cqsize");
    assert_eq!((eff.sq_entries, eff.cq_entries), (16, 1024));
    assert!(eff.flags & IORING_SETUP_CQSIZE != 0);
    let (_, eff) = build(&cfg(|c| {
        c.clamp = true;
        c.sq_entries = 100_000;
        c.cq_entries = Some(1_000_000);
    }));
    assert_eq!(
        (eff.sq_entries, eff.cq_entries),
        (32768, 65536),
        "clamped sizes reported"
    );
    let (_, eff) = build(&cfg(|c| {
        c.clamp = true;
        c.sq_entries = 100;
    }));
    assert_eq!(eff.sq_entries, 128, "rounded up and reported");
}

#[test]
fn attach_wq_shares_the_first_rings_io_wq() {
    let c = cfg(|c| c.attach_wq = AttachWq::First);
    let (first, e1) = uring::build(&c, None).unwrap();
    assert_eq!(e1.attach_wq, "owner");
    assert_eq!(e1.flags & IORING_SETUP_ATTACH_WQ, 0);
    let (mut second, e2) = uring::build(&c, Some(&first)).unwrap();
    assert_eq!(e2.attach_wq, "attached");
    assert!(e2.flags & IORING_SETUP_ATTACH_WQ != 0);
    assert_eq!(file_io(&mut second, "attach", false, false), Outcome::Ok);
    // With SQPOLL, attaching shares the first ring's SQ thread too.
    let c = cfg(|c| {
        c.attach_wq = AttachWq::First;
        c.sqpoll = true;
    });
    let (first, e1) = uring::build(&c, None).unwrap();
    let (mut second, e2) = uring::build(&c, Some(&first)).unwrap();
    assert!(e1.sq_thread_pid.is_some());
    assert_eq!(
        e1.sq_thread_pid, e2.sq_thread_pid,
        "one SQ thread for both rings"
    );
    assert_eq!(
        file_io(&mut second, "attach-sqpoll", false, false),
        Outcome::Ok
    );
}

#[test]
fn r_disabled_is_enabled_and_works() {
    let c = cfg(|c| c.r_disabled = true);
    let (_, eff) = exercise(&c, "rdis");
    assert!(eff.enabled_after_setup);
    let (mut ring, eff) = uring::build_opts(&c, None, false).unwrap();
    assert!(!eff.enabled_after_setup);
    // SAFETY: NOP references no memory.
    unsafe { ring.push(&opcode::Nop::new().build()).unwrap() };
    assert_eq!(
        ring.submit().unwrap_err().raw_os_error(),
        Some(libc::EBADFD)
    );
    ring.enable().unwrap();
    assert_eq!(ring.submit().unwrap(), 1);
    assert_eq!(wait_one(&mut ring).res, 0);
}

#[test]
fn submit_all() {
    exercise(&cfg(|c| c.submit_all = true), "submit-all");
}

#[test]
fn coop_taskrun_with_and_without_flag() {
    exercise(&cfg(|c| c.coop_taskrun = true), "coop");
    exercise(
        &cfg(|c| {
            c.coop_taskrun = true;
            c.taskrun_flag = true;
        }),
        "coop-flag",
    );
}

#[test]
fn sqe128_cqe32_cqe_mixed() {
    exercise(&cfg(|c| c.sqe128 = true), "sqe128");
    exercise(&cfg(|c| c.cqe32 = true), "cqe32");
    exercise(&cfg(|c| c.cqe_mixed = true), "cqe-mixed");
}

#[test]
fn single_issuer_and_defer_taskrun() {
    exercise(&cfg(|c| c.single_issuer = Some(true)), "single");
    exercise(
        &cfg(|c| {
            c.single_issuer = Some(true);
            c.defer_taskrun = Some(true);
        }),
        "defer",
    );
    exercise(
        &cfg(|c| {
            c.single_issuer = Some(true);
            c.defer_taskrun = Some(true);
            c.taskrun_flag = true;
        }),
        "defer-flag",
    );
}

#[test]
fn no_mmap_ring_does_io() {
    let (ring, _) = exercise(&cfg(|c| c.no_mmap = true), "no-mmap");
    assert!(ring.flags() & IORING_SETUP_NO_MMAP != 0);
}

#[test]
fn registered_fd_only_ring_does_io() {
    let (ring, eff) = exercise(
        &cfg(|c| {
            c.no_mmap = true;
            c.registered_fd_only = true;
        }),
        "regfd-only",
    );
    assert!(ring.fd().is_none());
    assert!(eff.registered_ring_index.is_some());
    assert!(eff.fdinfo_note.contains("registered-fd-only"));
}

#[test]
fn no_sqarray() {
    exercise(&cfg(|c| c.no_sqarray = true), "no-sqarray");
}

#[test]
fn register_ring_fd() {
    let (_, eff) = exercise(&cfg(|c| c.register_ring_fd = true), "reg-ring-fd");
    assert!(eff.registered_ring_index.is_some());
}

#[test]
fn iowq_limits_and_affinity() {
    let (mut ring, eff) = exercise(
        &cfg(|c| {
            c.iowq_max_bounded = Some(3);
            c.iowq_max_unbounded = Some(5);
            c.iowq_cpus = vec![0];
        }),
        "iowq",
    );
    assert_eq!(eff.iowq_max_workers, Some([3, 5]));
    assert_eq!(ring.register_iowq_max_workers(0, 0).unwrap(), [3, 5]);
    assert_eq!(eff.iowq_cpus, "0");
}

#[test]
fn useful_combinations() {
    // fio / t/io_uring style: single issuer, deferred task work, registered ring, big CQ.
    exercise(
        &cfg(|c| {
            c.single_issuer = Some(true);
            c.defer_taskrun = Some(true);
            c.register_ring_fd = true;
            c.cq_entries = Some(64);
            c.no_sqarray = true;
        }),
        "fio-like",
    );
    // SQPOLL on memory we own, without a ring fd.
    let (_, eff) = exercise(
        &cfg(|c| {
            c.sqpoll = true;
            c.no_mmap = true;
            c.registered_fd_only = true;
            c.sq_thread_idle_ms = Some(10);
        }),
        "sqpoll-regfd",
    );
    assert!(eff.flags & IORING_SETUP_SQPOLL != 0);
    // Big SQEs and mixed CQEs on owned memory, coop task running with the flag.
    exercise(
        &cfg(|c| {
            c.no_mmap = true;
            c.sqe128 = true;
            c.cqe_mixed = true;
            c.coop_taskrun = true;
            c.taskrun_flag = true;
            c.submit_all = true;
            c.single_issuer = Some(true);
        }),
        "big-mixed",
    );
    // Every flag that can go together with DEFER_TASKRUN at once.
    exercise(
        &cfg(|c| {
            c.cq_entries = Some(32);
            c.clamp = true;
            c.r_disabled = true;
            c.submit_all = true;
            c.taskrun_flag = true;
            c.sqe128 = true;
            c.cqe32 = true;
            c.single_issuer = Some(true);
            c.defer_taskrun = Some(true);
            c.no_mmap = true;
            c.registered_fd_only = true;
            c.no_sqarray = true;
            c.iowq_max_bounded = Some(2);
        }),
        "all-defer",
    );
}

#[test]
fn refused_config_never_reaches_the_kernel() {
    let c = cfg(|c| {
        c.defer_taskrun = Some(true);
        c.single_issuer = Some(false)
    });
    match uring::build(&c, None) {
        Err(uring::RingError::Config(e)) => assert!(e.message.contains("SINGLE_ISSUER"), "{e}"),
        Err(e) => panic!("expected a configuration error, got {e}"),
        Ok(_) => panic!("DEFER_TASKRUN without SINGLE_ISSUER was built"),
    }
}

#[test]
fn kernel_refusal_names_errno_and_flags() {
    // SQ_AFF on a CPU the kernel does not have: validate() passes when the online list is
    // unreadable, so ask the raw layer, which reports errno and flags.
    let p = engine::sys::ring::SetupParams {
        flags: IORING_SETUP_SQPOLL | IORING_SETUP_SQ_AFF,
        sq_thread_cpu: 4000,
        sq_entries: 8,
        ..Default::default()
    };
    let e = Ring::setup(&p).expect_err("SQ_AFF on cpu 4000 must fail");
    let msg = uring::classify_setup_error(&e).to_string();
    assert!(msg.contains("EINVAL"), "{msg}");
    assert!(
        msg.contains("IORING_SETUP_SQPOLL|IORING_SETUP_SQ_AFF"),
        "{msg}"
    );
}

#[test]
fn setup_errors_are_classified() {
    use engine::sys::ring::SetupError;
    use engine::uring::{classify_setup_error, RingError};
    // SQE_MIXED is 6.19: on an older kernel the refusal is "unsupported, needs 6.19".
    let e = Ring::setup(&engine::sys::ring::SetupParams {
        flags: IORING_SETUP_SQE_MIXED,
        sq_entries: 8,
        ..Default::default()
    })
    .err();
    let running = uring::kernel_version().unwrap();
    if running < (6, 19) {
        match classify_setup_error(&e.expect("6.18 refuses SQE_MIXED")) {
            RingError::Unsupported { what, reason } => {
                assert!(
                    what.contains("IORING_SETUP_SQE_MIXED (Linux 6.19+)"),
                    "{what}"
                );
                assert!(reason.contains("EINVAL"), "{reason}");
            }
            o => panic!("{o}"),
        }
    }
    let eperm = SetupError {
        errno: libc::EPERM,
        flags: 0,
        message: String::new(),
    };
    match classify_setup_error(&eperm) {
        RingError::Disabled { reason } => assert!(reason.contains("blocking"), "{reason}"),
        o => panic!("{o}"),
    }
    let enosys = SetupError {
        errno: libc::ENOSYS,
        flags: 0,
        message: String::new(),
    };
    assert!(matches!(
        classify_setup_error(&enosys),
        RingError::Unsupported { .. }
    ));
    let other = SetupError {
        errno: libc::ENOMEM,
        flags: IORING_SETUP_SQPOLL,
        message: "x".into(),
    };
    let s = classify_setup_error(&other).to_string();
    assert!(
        s.contains("ENOMEM") && s.contains("IORING_SETUP_SQPOLL"),
        "{s}"
    );
}

#[test]
fn effective_serializes_requested_and_in_force() {
    let (_, eff) = build(&cfg(|c| {
        c.sqpoll = true;
        c.cq_entries = Some(64);
    }));
    let v = serde_json::to_value(&eff).unwrap();
    assert_eq!(
        v["requested_flag_names"],
        "IORING_SETUP_SQPOLL|IORING_SETUP_CQSIZE"
    );
    assert_eq!(v["flag_names"], v["requested_flag_names"]);
    assert_eq!(v["cq_entries"], 64);
    assert!(v["sq_thread_pid"].as_i64().unwrap() > 0);
    assert!(v["fdinfo"]["SqThread"].is_string());
}

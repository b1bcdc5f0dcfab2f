//! The raw ring (engine::sys::ring) with every setup flag this kernel accepts: NOP and a
//! real file write + read back through opcode::Write / opcode::Read.

use engine::sys::ring::consts::*;
use engine::sys::ring::{AnonMem, Ring, SetupParams};
use io_uring::{opcode, types};
use std::os::fd::AsRawFd;

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "ring-sys-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn wait_one(ring: &mut Ring) -> engine::sys::ring::Cqe {
    for _ in 0..10_000 {
        if let Some(c) = ring.pop_cqe() {
            return c;
        }
        ring.submit_and_wait(1).expect("submit_and_wait");
    }
    panic!("no completion");
}

/// NOP, then write 64 KiB with opcode::Write and read it back with opcode::Read.
fn exercise(ring: &mut Ring, tag: &str) {
    let nop = opcode::Nop::new().build().user_data(7);
    // SAFETY: NOP references no memory.
    unsafe { ring.push(&nop).unwrap() };
    assert_eq!(ring.submit().unwrap(), 1, "{tag}: one SQE submitted");
    let c = wait_one(ring);
    assert_eq!((c.user_data, c.res), (7, 0), "{tag}: NOP completes with 0");

    let dir = tmpdir(tag);
    let path = dir.join("f");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let mut wbuf = AnonMem::new(65536).unwrap();
    for (i, b) in wbuf.as_mut_slice().iter_mut().enumerate() {
        *b = (i * 31 % 251) as u8;
    }
    let w = opcode::Write::new(types::Fd(f.as_raw_fd()), wbuf.as_ptr(), 65536)
        .offset(0)
        .build()
        .user_data(1);
    // SAFETY: wbuf and f outlive the completion (we wait for it below).
    unsafe { ring.push(&w).unwrap() };
    ring.submit_and_wait(1).unwrap();
    let c = wait_one(ring);
    assert_eq!((c.user_data, c.res), (1, 65536), "{tag}: write");
    let mut rbuf = AnonMem::new(65536).unwrap();
    let r = opcode::Read::new(types::Fd(f.as_raw_fd()), rbuf.as_mut_ptr(), 65536)
        .offset(0)
        .build()
        .user_data(2);
    // SAFETY: rbuf and f outlive the completion.
    unsafe { ring.push(&r).unwrap() };
    ring.submit_and_wait(1).unwrap();
    let c = wait_one(ring);
    assert_eq!((c.user_data, c.res), (2, 65536), "{tag}: read");
    assert_eq!(
        rbuf.as_slice(),
        wbuf.as_slice(),
        "{tag}: bytes read back differ"
    );
    assert!(ring.enter_calls() >= 3);
    std::fs::remove_dir_all(&dir).ok();
}

fn setup(flags: u32) -> Ring {
    Ring::setup(&SetupParams {
        flags,
        sq_entries: 8,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("setup {}: {e}", engine::sys::ring::setup_flag_names(flags)))
}

#[test]
fn plain() {
    exercise(&mut setup(0), "plain");
}

#[test]
fn no_mmap() {
    exercise(&mut setup(IORING_SETUP_NO_MMAP), "no_mmap");
}

#[test]
fn registered_fd_only() {
    let mut r = setup(IORING_SETUP_NO_MMAP | IORING_SETUP_REGISTERED_FD_ONLY);
    assert!(r.fd().is_none());
    assert!(r.registered_index().is_some());
    exercise(&mut r, "regfd");
}

#[test]
fn cqe_mixed_sqe128_cqe32_nosqarray() {
    exercise(&mut setup(IORING_SETUP_CQE_MIXED), "mixed");
    exercise(&mut setup(IORING_SETUP_CQE32), "cqe32");
    exercise(&mut setup(IORING_SETUP_SQE128), "sqe128");
    exercise(&mut setup(IORING_SETUP_NO_SQARRAY), "nosqarray");
    exercise(
        &mut setup(IORING_SETUP_NO_MMAP | IORING_SETUP_SQE128 | IORING_SETUP_CQE32),
        "nommap-big",
    );
}

#[test]
fn taskrun_modes() {
    exercise(
        &mut setup(IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN),
        "defer",
    );
    exercise(
        &mut setup(
            IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
        ),
        "defer-flag",
    );
    exercise(
        &mut setup(IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG),
        "coop-flag",
    );
    exercise(&mut setup(IORING_SETUP_SUBMIT_ALL), "submit-all");
}

#[test]
fn sqpoll() {
    exercise(&mut setup(IORING_SETUP_SQPOLL), "sqpoll");
}

#[test]
fn registered_ring_fd() {
    let mut r = setup(0);
    r.register_ring_fd().unwrap();
    assert!(r.registered_index().is_some());
    exercise(&mut r, "reg-ring");
}

#[test]
fn r_disabled() {
    let mut r = setup(IORING_SETUP_R_DISABLED);
    let e = r.submit().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBADFD));
    r.enable().unwrap();
    exercise(&mut r, "rdis");
}

#[test]
fn probe_lists_read_fixed() {
    let r = setup(0);
    let ops = r.probe_opcodes().unwrap();
    assert!(
        ops.iter().any(|&(o, s)| o == 4 && s),
        "READ_FIXED supported"
    );
    assert!(ops.len() > 40);
}

#[test]
fn no_mmap_large_rings_span_many_pages() {
    for flags in [
        IORING_SETUP_NO_MMAP,
        IORING_SETUP_NO_MMAP | IORING_SETUP_SQE128 | IORING_SETUP_CQE32,
    ] {
        let mut r = Ring::setup(&SetupParams {
            flags,
            sq_entries: 4096,
            ..Default::default()
        })
        .unwrap();
        assert_eq!((r.sq_entries(), r.cq_entries()), (4096, 8192));
        // Fill the whole SQ, then reap all of it in batches.
        for i in 0..4096u64 {
            // SAFETY: NOP references no memory.
            unsafe { r.push(&opcode::Nop::new().build().user_data(i)).unwrap() };
        }
        assert_eq!(r.sq_space_left(), 0);
        // SAFETY: as above.
        assert!(
            unsafe { r.push(&opcode::Nop::new().build()) }.is_err(),
            "SQ full is reported"
        );
        assert_eq!(r.submit_and_wait(4096).unwrap(), 4096);
        let mut seen = vec![false; 4096];
        let n = r.reap(usize::MAX, |c| {
            assert_eq!(c.res, 0);
            seen[c.user_data as usize] = true;
        });
        assert_eq!(n, 4096);
        assert!(seen.iter().all(|&s| s));
        assert!(r.pop_cqe().is_none());
    }
}

#[test]
fn wait_with_timeout_returns_without_completions() {
    for flags in [
        0,
        IORING_SETUP_SQPOLL,
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
    ] {
        let mut r = setup(flags);
        let t = std::time::Instant::now();
        assert_eq!(
            r.submit_and_wait_timeout(1, std::time::Duration::from_millis(30))
                .unwrap(),
            0
        );
        assert!(
            t.elapsed() >= std::time::Duration::from_millis(25),
            "returned before the timeout"
        );
        assert!(r.pop_cqe().is_none());
        // With a completion pending it returns it.
        // SAFETY: NOP references no memory.
        unsafe { r.push(&opcode::Nop::new().build().user_data(5)).unwrap() };
        r.submit_and_wait_timeout(1, std::time::Duration::from_secs(5))
            .unwrap();
        assert_eq!(wait_one(&mut r).user_data, 5);
    }
}

#[test]
fn no_syscall_when_completions_already_visible() {
    let mut r = setup(0);
    for i in 0..4 {
        // SAFETY: NOP references no memory.
        unsafe { r.push(&opcode::Nop::new().build().user_data(i)).unwrap() };
    }
    r.submit_and_wait(4).unwrap();
    let calls = r.enter_calls();
    r.submit_and_wait(3).unwrap();
    r.submit().unwrap();
    assert_eq!(
        r.enter_calls(),
        calls,
        "nothing to submit and enough completions: no enter"
    );
    assert_eq!(r.cq_ready(), 4);
}

#[test]
fn sqpoll_full_sq_waits_for_space() {
    let mut r = setup(IORING_SETUP_SQPOLL);
    let mut pushed = 0u64;
    let mut reaped = 0u64;
    while pushed < 1000 {
        // SAFETY: NOP references no memory.
        match unsafe { r.push(&opcode::Nop::new().build().user_data(pushed)) } {
            Ok(()) => pushed += 1,
            Err(_) => r.wait_sq_space().unwrap(),
        }
        if pushed.is_multiple_of(8) {
            r.submit().unwrap();
        }
        reaped += r.reap(usize::MAX, |_| {}) as u64;
    }
    while reaped < pushed {
        r.submit_and_wait(1).unwrap();
        reaped += r.reap(usize::MAX, |_| {}) as u64;
    }
    assert_eq!(reaped, 1000);
}

#[test]
fn registered_files_and_update() {
    let mut r = setup(0);
    r.register_files(&[-1, -1, -1, -1]).unwrap();
    let dir = tmpdir("files");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("f"))
        .unwrap();
    assert_eq!(r.register_files_update(2, &[f.as_raw_fd()]).unwrap(), 1);
    let data = b"registered file slot two";
    let w = opcode::Write::new(types::Fixed(2), data.as_ptr(), data.len() as u32)
        .offset(0)
        .build()
        .user_data(1);
    // SAFETY: data and the registered file outlive the completion.
    unsafe { r.push(&w).unwrap() };
    r.submit_and_wait(1).unwrap();
    assert_eq!(wait_one(&mut r).res, data.len() as i32);
    assert_eq!(std::fs::read(dir.join("f")).unwrap(), data);
    // An empty slot fails with EBADF.
    let w = opcode::Write::new(types::Fixed(0), data.as_ptr(), 4)
        .offset(0)
        .build()
        .user_data(2);
    // SAFETY: as above.
    unsafe { r.push(&w).unwrap() };
    r.submit_and_wait(1).unwrap();
    assert_eq!(wait_one(&mut r).res, -libc::EBADF);
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", r.fd().unwrap())).unwrap();
    assert!(info.contains("UserFiles:\t4"), "{info}");
    r.unregister_files().unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn registered_index_is_per_thread() {
    // A registered ring fd falls back to the plain fd on another thread.
    let mut r = setup(0);
    r.register_ring_fd().unwrap();
    let r = std::thread::spawn(move || {
        exercise(&mut r, "moved-reg");
        r
    })
    .join()
    .unwrap();
    drop(r);
    // A REGISTERED_FD_ONLY ring has no fd to fall back to: a clear error, no crash.
    let mut r = setup(IORING_SETUP_NO_MMAP | IORING_SETUP_REGISTERED_FD_ONLY);
    let mut r = std::thread::spawn(move || {
        // SAFETY: NOP references no memory.
        unsafe { r.push(&opcode::Nop::new().build()).unwrap() };
        let e = r.submit().unwrap_err();
        assert!(e.to_string().contains("REGISTERED_FD_ONLY"), "{e}");
        r
    })
    .join()
    .unwrap();
    // Back on the creating thread it works (and the queued NOP goes out).
    assert_eq!(r.submit().unwrap(), 1);
    assert_eq!(wait_one(&mut r).res, 0);
}

#[test]
fn setup_error_names_errno_and_flags() {
    let e = Ring::setup(&SetupParams {
        flags: IORING_SETUP_TASKRUN_FLAG,
        sq_entries: 8,
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.errno, libc::EINVAL);
    let s = e.to_string();
    assert!(
        s.contains("EINVAL") && s.contains("IORING_SETUP_TASKRUN_FLAG"),
        "{s}"
    );
}

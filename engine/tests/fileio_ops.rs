//! `sys::fileops` directly: owned buffers come back with their completions, misuse is
//! refused with the buffer handed back, on the engine's ring and on the io-uring crate's.

use engine::config::RingConfig;
use engine::sys::fileops::{
    CrateRing, Fd, FileOps, Fixed, OpError, OpKind, ReadOp, RingOps, WriteOp,
};
use engine::sys::fs::{self, OpenFlags};
use engine::sys::mem::Arena;
use std::os::fd::AsRawFd;

fn file(name: &str) -> (std::path::PathBuf, std::os::fd::OwnedFd) {
    let d = std::env::temp_dir().join(format!("fileio-ops-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("f");
    let fd = fs::open(
        &p,
        OpenFlags {
            read: true,
            write: true,
            create: true,
            truncate: true,
            ..Default::default()
        },
    )
    .unwrap();
    (d, fd)
}

fn exercise<R: RingOps>(ops: &mut FileOps<R>, name: &str) {
    let (dir, fd) = file(name);
    let arena = Arena::new(4 * 4096, 4096, 4096).unwrap();
    ops.register_arena(&arena).unwrap();
    ops.register_files(&[fd.as_raw_fd()]).unwrap();
    // One write per form, each through a different naming of the file.
    for (i, op) in WriteOp::ALL.into_iter().enumerate() {
        let mut s = arena.alloc().unwrap();
        s.as_mut_slice().fill(b'a' + i as u8);
        if i % 2 == 0 {
            ops.write(
                Fd(fd.as_raw_fd()),
                op,
                s,
                4096,
                i as u64 * 4096,
                0,
                i as u64,
            )
            .unwrap();
        } else {
            ops.write(Fixed(0), op, s, 4096, i as u64 * 4096, 0, i as u64)
                .unwrap();
        }
    }
    ops.fsync(Fd(fd.as_raw_fd()), true, 99).unwrap();
    let done = ops.drain().unwrap();
    assert_eq!(done.len(), 5);
    for c in &done {
        match c.kind {
            OpKind::Write(_) => assert_eq!(c.result.as_ref().unwrap(), &4096, "{:?}", c.kind),
            OpKind::Fsync { datasync: true } => assert_eq!(c.tag, 99),
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(done);
    assert_eq!(arena.free_slots(), 4, "every buffer came back");
    for (i, op) in ReadOp::ALL.into_iter().enumerate() {
        let s = arena.alloc().unwrap();
        ops.read(Fixed(0), op, s, 4096, i as u64 * 4096, 0, i as u64)
            .unwrap();
    }
    for c in ops.drain().unwrap() {
        let b = c.buf.expect("buffer handed back");
        assert_eq!(c.result.unwrap(), 4096);
        assert!(
            b.as_slice().iter().all(|&x| x == b'a' + c.tag as u8),
            "{:?} read the wrong bytes",
            c.kind
        );
    }
    // Misuse: each refusal hands the buffer back.
    let other = Arena::new(4096, 4096, 4096).unwrap();
    let e = ops
        .write(
            Fd(fd.as_raw_fd()),
            WriteOp::WriteFixed,
            other.alloc().unwrap(),
            4096,
            0,
            0,
            0,
        )
        .unwrap_err();
    assert!(matches!(e, OpError::BufferNotRegistered(Some(_))), "{e}");
    assert!(e.to_string().contains("turn register-buffers on"));
    assert_eq!(other.free_slots(), 0);
    drop(e);
    assert_eq!(other.free_slots(), 1);
    let e = ops
        .read(
            Fixed(3),
            ReadOp::Read,
            arena.alloc().unwrap(),
            4096,
            0,
            0,
            0,
        )
        .unwrap_err();
    assert!(matches!(e, OpError::FileNotRegistered(3, Some(_))), "{e}");
    let e = ops
        .read(
            Fd(fd.as_raw_fd()),
            ReadOp::Read,
            arena.alloc().unwrap(),
            8192,
            0,
            0,
            0,
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("exceeds the buffer capacity 4096"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn engine_ring() {
    let (ring, _) = engine::uring::build(&RingConfig::default(), None).unwrap();
    let mut ops = FileOps::new(ring, 8);
    exercise(&mut ops, "engine");
    assert!(ops.enter_calls() > 0);
}

#[test]
fn crate_ring() {
    let ring = CrateRing::new(8, &io_uring::IoUring::builder()).unwrap();
    let mut ops = FileOps::new(ring, 8);
    exercise(&mut ops, "crate");
}

#[test]
fn in_flight_table_is_bounded() {
    let (ring, _) = engine::uring::build(&RingConfig::default(), None).unwrap();
    let mut ops = FileOps::new(ring, 2);
    let (dir, fd) = file("bounded");
    let arena = Arena::new(3 * 4096, 4096, 4096).unwrap();
    for i in 0..2 {
        ops.write(
            Fd(fd.as_raw_fd()),
            WriteOp::Write,
            arena.alloc().unwrap(),
            4096,
            i * 4096,
            0,
            i,
        )
        .unwrap();
    }
    let e = ops
        .write(
            Fd(fd.as_raw_fd()),
            WriteOp::Write,
            arena.alloc().unwrap(),
            4096,
            8192,
            0,
            2,
        )
        .unwrap_err();
    assert!(matches!(e, OpError::TooManyInFlight(2, Some(_))), "{e}");
    drop(e);
    assert_eq!(ops.drain().unwrap().len(), 2);
    assert_eq!(arena.free_slots(), 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

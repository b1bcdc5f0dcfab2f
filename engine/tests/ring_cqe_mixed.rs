//! CQE_MIXED and CQE32 completions through our pop_cqe: NOPs with IORING_NOP_CQE32
//! (Linux 6.18) post 32-byte CQEs carrying sqe->off / sqe->addr in big_cqe; on a small
//! mixed ring they must wrap, forcing IORING_CQE_F_SKIP padding, and every completion
//! must still come back once, in order, with the right payload.

use engine::config::RingConfig;
use engine::sys::ring::consts::*;
use engine::sys::ring::Ring;
use engine::uring;

const IORING_NOP_CQE32: u32 = 1 << 5;

/// A NOP SQE with nop_flags (offset 28), off (8) and addr (16) set.
fn nop(user_data: u64, big: Option<(u64, u64)>) -> io_uring::squeue::Entry {
    let e = io_uring::opcode::Nop::new().build().user_data(user_data);
    let Some((a, b)) = big else { return e };
    // SAFETY: squeue::Entry is the 64-byte io_uring_sqe (repr(C)); we patch the raw bytes.
    let mut raw: [u8; 64] = unsafe { std::mem::transmute(e) };
    raw[8..16].copy_from_slice(&a.to_ne_bytes());
    raw[16..24].copy_from_slice(&b.to_ne_bytes());
    raw[28..32].copy_from_slice(&IORING_NOP_CQE32.to_ne_bytes());
    // SAFETY: same layout back.
    unsafe { std::mem::transmute(raw) }
}

fn ring(mixed: bool) -> Ring {
    let c = RingConfig {
        sq_entries: 4,
        cq_entries: Some(8),
        cqe_mixed: mixed,
        cqe32: !mixed,
        ..Default::default()
    };
    uring::build(&c, None).unwrap().0
}

fn run_pattern(r: &mut Ring, mixed: bool) -> (usize, usize) {
    let mut next = 0u64;
    let mut expect = 0u64;
    let mut bigs = 0;
    // Mostly 32-byte CQEs with an odd number of small ones in between, so the tail lands
    // one slot before the wrap again and again.
    let big_at = |i: u64| !i.is_multiple_of(3);
    for round in 0..50 {
        let n = 1 + (next % 3);
        for _ in 0..n {
            let b = big_at(next).then_some((next * 1000 + 1, next * 1000 + 2));
            // SAFETY: NOP references no memory.
            unsafe { r.push(&nop(next, b)).unwrap() };
            next += 1;
        }
        r.submit_and_wait(n as usize).unwrap();
        // Alternate the two reaping paths.
        let mut got = Vec::new();
        if round % 2 == 0 {
            while let Some(c) = r.pop_cqe() {
                got.push(c);
            }
        } else {
            r.reap(usize::MAX, |c| got.push(c));
        }
        for c in got {
            assert_eq!(
                c.user_data, expect,
                "completions in order, none lost or repeated"
            );
            assert_eq!(c.res, 0);
            assert_eq!(
                c.flags & IORING_CQE_F_SKIP,
                0,
                "SKIP entries are never returned"
            );
            if big_at(expect) {
                assert_eq!(
                    c.big,
                    [expect * 1000 + 1, expect * 1000 + 2],
                    "big_cqe of {expect}"
                );
                if mixed {
                    assert!(c.flags & IORING_CQE_F_32 != 0);
                }
                bigs += 1;
            } else if mixed {
                assert_eq!(c.flags & IORING_CQE_F_32, 0);
                assert_eq!(c.big, [0, 0]);
            }
            expect += 1;
        }
    }
    assert_eq!(expect, next, "every completion reaped");
    (next as usize, bigs)
}

#[test]
fn mixed_ring_wraps_with_skip_entries() {
    let mut r = ring(true);
    assert_eq!(r.cq_entries(), 8);
    let (n, bigs) = run_pattern(&mut r, true);
    assert!(bigs > 20 && n > bigs);
    assert!(
        r.cqe_skips() > 0,
        "the pattern never made the kernel pad the wrap with a SKIP entry"
    );
}

#[test]
fn cqe32_ring_carries_big_payload() {
    let mut r = ring(false);
    run_pattern(&mut r, false);
    assert_eq!(r.cqe_skips(), 0);
}

#[test]
fn nop_cqe32_on_plain_ring_is_einval() {
    let mut r = uring::build(
        &RingConfig {
            sq_entries: 4,
            ..Default::default()
        },
        None,
    )
    .unwrap()
    .0;
    // SAFETY: NOP references no memory.
    unsafe { r.push(&nop(1, Some((1, 2)))).unwrap() };
    r.submit_and_wait(1).unwrap();
    assert_eq!(r.pop_cqe().unwrap().res, -libc::EINVAL);
}

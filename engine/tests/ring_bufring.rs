//! BufRing: multishot recv over loopback TCP picks buffers from the provided-buffer ring;
//! bytes arrive intact, buffers are recycled, ENOBUFS when the ring runs dry, and drop
//! order between Ring and BufRing does not matter.

use engine::config::RingConfig;
use engine::sys::bufring::BufRing;
use engine::sys::ring::Ring;
use engine::uring;
use io_uring::{opcode, types};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    (a, b)
}

fn ring(c: RingConfig) -> Ring {
    uring::build(&c, None).unwrap().0
}

/// Sends `msgs`, receives them through multishot recv into the buffer ring, returns the
/// bytes received (in order) and the number of completions.
fn recv_all(
    r: &mut Ring,
    br: &mut BufRing,
    sock: &TcpStream,
    tx: &mut TcpStream,
    total: usize,
) -> Vec<u8> {
    let recv = opcode::RecvMulti::new(types::Fd(sock.as_raw_fd()), br.bgid())
        .build()
        .user_data(42);
    // SAFETY: the socket and the buffer ring outlive the request (cancelled by closing the
    // socket / dropping the ring at the end of the test).
    unsafe { r.push(&recv).unwrap() };
    r.submit().unwrap();
    let mut got = Vec::new();
    let mut sent = 0;
    let chunk: Vec<u8> = (0..total).map(|i| (i * 7 % 256) as u8).collect();
    while got.len() < total {
        if sent < total {
            let n = (total - sent).min(3000);
            tx.write_all(&chunk[sent..sent + n]).unwrap();
            sent += n;
        }
        r.submit_and_wait(1).unwrap();
        while let Some(c) = r.pop_cqe() {
            assert_eq!(c.user_data, 42);
            if c.res == -libc::ENOBUFS {
                panic!("ran out of buffers although every one is recycled");
            }
            assert!(c.res > 0, "recv res {}", c.res);
            let bid = c.buffer_id().expect("IORING_CQE_F_BUFFER set");
            got.extend_from_slice(&br.buf(bid)[..c.res as usize]);
            br.recycle(bid);
            if !c.more() {
                // multishot ended: re-arm
                // SAFETY: as above.
                unsafe { r.push(&recv).unwrap() };
                r.submit().unwrap();
            }
        }
    }
    assert_eq!(got, chunk, "bytes received differ from bytes sent");
    got
}

#[test]
fn multishot_recv_through_buffer_ring() {
    for cfg in [
        RingConfig::default(),
        RingConfig {
            single_issuer: Some(true),
            defer_taskrun: Some(true),
            ..Default::default()
        },
        RingConfig {
            no_mmap: true,
            registered_fd_only: true,
            ..Default::default()
        },
    ] {
        let mut r = ring(cfg.clone());
        let mut br = BufRing::new(&mut r, 7, 8, 1024).unwrap();
        assert_eq!((br.entries(), br.buf_len()), (8, 1024));
        let (mut tx, rx) = pair();
        recv_all(&mut r, &mut br, &rx, &mut tx, 200_000);
        if r.fd().is_none() {
            br.unregister(&mut r).unwrap();
        }
    }
}

#[test]
fn empty_ring_gives_enobufs() {
    let mut r = ring(RingConfig::default());
    let br = BufRing::new(&mut r, 1, 2, 64).unwrap();
    let (mut tx, rx) = pair();
    let recv = opcode::RecvMulti::new(types::Fd(rx.as_raw_fd()), br.bgid())
        .build()
        .user_data(1);
    // SAFETY: socket and buffer ring outlive the request.
    unsafe { r.push(&recv).unwrap() };
    r.submit().unwrap();
    tx.write_all(&[1u8; 64 * 3]).unwrap();
    let mut bufs = 0;
    let mut enobufs = false;
    while !enobufs {
        r.submit_and_wait(1).unwrap();
        while let Some(c) = r.pop_cqe() {
            if c.res == -libc::ENOBUFS {
                assert!(!c.more(), "ENOBUFS ends the multishot");
                enobufs = true;
            } else {
                assert!(c.res > 0);
                bufs += 1; // never recycled
            }
        }
    }
    assert_eq!(bufs, 2, "both buffers used before ENOBUFS");
}

#[test]
fn bad_parameters_are_refused() {
    let mut r = ring(RingConfig::default());
    let e = BufRing::new(&mut r, 1, 3, 64).err().unwrap();
    assert!(e.to_string().contains("power of two"), "{e}");
    let e = BufRing::new(&mut r, 1, 4, 0).err().unwrap();
    assert!(e.to_string().contains("buf_len"), "{e}");
    let _a = BufRing::new(&mut r, 5, 4, 64).unwrap();
    let e = BufRing::new(&mut r, 5, 4, 64)
        .err()
        .expect("same group twice");
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
}

#[test]
fn ring_dropped_before_bufring() {
    let mut r = ring(RingConfig::default());
    let br = BufRing::new(&mut r, 3, 4, 128).unwrap();
    drop(r);
    drop(br); // unregisters through its own dup of the ring fd
}

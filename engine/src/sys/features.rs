//! Asks the running kernel whether it has each io_uring feature an option of the second
//! wave needs, by doing the thing once on a scratch ring (a vectored SEND over a socket
//! pair, a SEND_ZC from a registered buffer, a sparse file table, MSG_RING fd passing,
//! an incremental buffer ring, NAPI registration), or from the feature bits the kernel
//! reports. `recorder probe` lists the answers; `recorder serve` asks before it starts
//! and refuses an option this kernel cannot do, with the answer.

use std::io;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;

use io_uring::{opcode, types};

use super::ring::consts::*;
use super::ring::{AnonMem, Ring, SetupParams};

/// One feature and what the kernel said.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Feature {
    /// Short name, e.g. "send-vectorized".
    pub name: &'static str,
    /// Kernel constant(s).
    pub kernel: &'static str,
    pub since: &'static str,
    /// "ok", or "unsupported: ..." with the errno or the missing feature bit.
    pub result: String,
}

impl Feature {
    pub fn ok(&self) -> bool {
        self.result == "ok"
    }
}

fn scratch_ring(flags: u32) -> io::Result<Ring> {
    Ring::setup(&SetupParams {
        flags,
        sq_entries: 8,
        ..Default::default()
    })
    .map_err(|e| io::Error::from_raw_os_error(e.errno))
}

/// Submits one SQE and returns its CQE's `res` (the first CQE with `ud`).
fn run_one(ring: &mut Ring, sqe: io_uring::squeue::Entry, ud: u64) -> io::Result<i32> {
    // SAFETY: callers keep every buffer the entry points to alive until we return, and
    // we wait for the completion before returning (or return an error that leaks them:
    // the callers pass memory they own for the whole call).
    unsafe { ring.push(&sqe.user_data(ud)) }.map_err(|e| io::Error::other(e.to_string()))?;
    loop {
        ring.submit_and_wait(1)?;
        while let Some(c) = ring.pop_cqe() {
            if c.user_data == ud {
                return Ok(c.res);
            }
        }
    }
}

fn res(r: io::Result<i32>) -> io::Result<i32> {
    match r {
        Ok(n) if n < 0 => Err(io::Error::from_raw_os_error(-n)),
        other => other,
    }
}

fn tcp_pair() -> io::Result<(std::net::TcpStream, std::net::TcpStream)> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let a = std::net::TcpStream::connect(l.local_addr()?)?;
    let (b, _) = l.accept()?;
    Ok((a, b))
}

/// SEND with IORING_SEND_VECTORIZED (6.17) of two buffers arrives as their concatenation.
pub fn send_vectorized() -> io::Result<()> {
    let mut ring = scratch_ring(0)?;
    let (a, mut b) = tcp_pair()?;
    let parts: [&[u8]; 2] = [b"uring", b"-lab"];
    let iov: Vec<libc::iovec> = parts
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    let e = opcode::Send::new(types::Fd(a.as_raw_fd()), iov.as_ptr().cast(), 2)
        .ioprio(1 << 5)
        .build();
    let n = res(run_one(&mut ring, e, 1))?;
    if n != 9 {
        return Err(io::Error::other(format!(
            "vectored SEND sent {n} of 9 bytes"
        )));
    }
    let mut got = [0u8; 9];
    b.read_exact(&mut got)?;
    if &got != b"uring-lab" {
        return Err(io::Error::other("vectored SEND delivered other bytes"));
    }
    Ok(())
}

/// SEND_ZC from registered buffer 0 (IORING_RECVSEND_FIXED_BUF).
pub fn send_zc_fixed() -> io::Result<()> {
    let mut ring = scratch_ring(0)?;
    let (a, mut b) = tcp_pair()?;
    let mut mem = AnonMem::new(4096)?;
    mem.as_mut_slice()[..4].copy_from_slice(b"zcfx");
    let iov = [libc::iovec {
        iov_base: mem.as_mut_ptr().cast(),
        iov_len: 4096,
    }];
    // SAFETY: `mem` outlives the ring's use of it (the ring is dropped first below).
    unsafe { ring.register_buffers(&iov)? };
    let e = opcode::SendZc::new(types::Fd(a.as_raw_fd()), mem.as_ptr(), 4)
        .buf_index(Some(0))
        .build()
        .user_data(2);
    // SAFETY: `mem` is registered and alive until the notification is reaped below.
    unsafe { ring.push(&e) }.map_err(|e| io::Error::other(e.to_string()))?;
    let mut result = None;
    let mut notified = false;
    while result.is_none() || !notified {
        ring.submit_and_wait(1)?;
        while let Some(c) = ring.pop_cqe() {
            if c.flags & IORING_CQE_F_NOTIF != 0 {
                notified = true;
            } else {
                result = Some(c.res);
                if c.flags & IORING_CQE_F_MORE == 0 {
                    notified = true;
                }
            }
        }
    }
    drop(ring);
    let n = res(Ok(result.unwrap_or(-libc::EIO)))?;
    let mut got = [0u8; 4];
    b.read_exact(&mut got)?;
    if n != 4 || &got != b"zcfx" {
        return Err(io::Error::other(
            "SEND_ZC from a fixed buffer delivered other bytes",
        ));
    }
    Ok(())
}

/// A sparse registered-file table with an allocation range; an accept straight into it.
pub fn sparse_files_accept_direct() -> io::Result<()> {
    let mut ring = scratch_ring(0)?;
    ring.register_files_sparse(8)?;
    ring.register_file_alloc_range(2, 6)?;
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let _c = std::net::TcpStream::connect(addr)?;
    let e = opcode::Accept::new(
        types::Fd(l.as_raw_fd()),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    )
    .file_index(Some(types::DestinationSlot::auto_target()))
    .build();
    let slot = res(run_one(&mut ring, e, 3))?;
    if !(2..8).contains(&slot) {
        return Err(io::Error::other(format!(
            "direct accept returned slot {slot}, outside the allocation range 2..8"
        )));
    }
    Ok(())
}

/// MSG_RING with IORING_MSG_SEND_FD (6.0): a file in slot 0 of one ring's table arrives
/// in a slot of another's.
pub fn msg_ring_send_fd() -> io::Result<()> {
    let mut a = scratch_ring(0)?;
    let mut b = scratch_ring(0)?;
    a.register_files_sparse(2)?;
    b.register_files_sparse(2)?;
    let f = std::fs::File::open("/proc/self/stat")?;
    a.register_files_update(0, &[f.as_raw_fd()])?;
    let bfd = b
        .fd()
        .ok_or_else(|| io::Error::other("scratch ring without an fd"))?;
    let e = opcode::MsgRingSendFd::new(
        types::Fd(bfd),
        types::Fixed(0),
        types::DestinationSlot::auto_target(),
        77,
    )
    .build();
    res(run_one(&mut a, e, 4))?;
    b.submit_and_wait(1)?;
    match b.pop_cqe() {
        Some(c) if c.user_data == 77 && c.res >= 0 => Ok(()),
        Some(c) => Err(io::Error::other(format!(
            "the target ring got user_data {} res {}",
            c.user_data, c.res
        ))),
        None => Err(io::Error::other("no CQE on the target ring")),
    }
}

/// A provided-buffer ring registered with IOU_PBUF_RING_INC (6.12).
pub fn pbuf_ring_inc() -> io::Result<()> {
    let mut ring = scratch_ring(0)?;
    let mut br = super::bufring::BufRing::with_flags(&mut ring, 1, 4, 4096, true)?;
    // Fill one buffer with two sends: the second lands after the first in the same buffer.
    let (mut a, b) = tcp_pair()?;
    let recv = |ring: &mut Ring| {
        let e = opcode::Recv::new(types::Fd(b.as_raw_fd()), std::ptr::null_mut(), 0)
            .buf_group(1)
            .build()
            .flags(io_uring::squeue::Flags::BUFFER_SELECT)
            .user_data(5);
        // SAFETY: the buffers are the registered ring's, alive until `br` is dropped.
        unsafe { ring.push(&e) }.map_err(|e| io::Error::other(e.to_string()))?;
        loop {
            ring.submit_and_wait(1)?;
            if let Some(c) = ring.pop_cqe() {
                return Ok::<_, io::Error>(c);
            }
        }
    };
    a.write_all(b"one")?;
    let c1 = recv(&mut ring)?;
    a.write_all(b"two")?;
    let c2 = recv(&mut ring)?;
    for c in [&c1, &c2] {
        if c.res != 3 || c.buffer_id().is_none() {
            return Err(io::Error::other(format!("recv res {}", c.res)));
        }
    }
    let (b1, b2) = (c1.buffer_id().unwrap_or(9), c2.buffer_id().unwrap_or(9));
    if b1 != b2 || c1.flags & IORING_CQE_F_BUF_MORE == 0 {
        return Err(io::Error::other(
            "the second receive did not continue in the first's buffer (no incremental consumption)",
        ));
    }
    br.consume(b1, 3, true, false);
    let first = br.piece(0).to_vec();
    br.consume(b2, 3, true, false);
    if first != b"one" || br.piece(0) != b"two" {
        return Err(io::Error::other("incremental buffer contents differ"));
    }
    br.unregister(&mut ring)?;
    Ok(())
}

/// IORING_REGISTER_NAPI (6.9) and back.
pub fn napi() -> io::Result<()> {
    let mut ring = scratch_ring(0)?;
    ring.register_napi(10, false, IO_URING_NAPI_TRACKING_DYNAMIC)?;
    ring.unregister_napi()?;
    Ok(())
}

/// IORING_REGISTER_NAPI with static tracking (6.13).
pub fn napi_static() -> io::Result<()> {
    let mut ring = scratch_ring(0)?;
    ring.register_napi(10, false, IO_URING_NAPI_TRACKING_STATIC)?;
    ring.unregister_napi()?;
    Ok(())
}

/// A plain ring's IORING_FEAT_* bits.
pub fn ring_features() -> io::Result<u32> {
    Ok(scratch_ring(0)?.features())
}

fn from_bit(features: u32, bit: u32, name: &str) -> io::Result<()> {
    if features & bit != 0 {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "the kernel does not report {name}"
        )))
    }
}

/// Every probe, in the order `recorder probe` shows them.
pub fn all() -> Vec<Feature> {
    let feats = ring_features().unwrap_or(0);
    let mut v = Vec::new();
    let mut add = |name, kernel, since, r: io::Result<()>| {
        v.push(Feature {
            name,
            kernel,
            since,
            result: match r {
                Ok(()) => "ok".into(),
                Err(e) => format!("unsupported: {e}"),
            },
        })
    };
    add(
        "ext-arg",
        "IORING_FEAT_EXT_ARG",
        "5.11",
        from_bit(feats, IORING_FEAT_EXT_ARG, "IORING_FEAT_EXT_ARG"),
    );
    add(
        "cqe-skip",
        "IORING_FEAT_CQE_SKIP",
        "5.17",
        from_bit(feats, IORING_FEAT_CQE_SKIP, "IORING_FEAT_CQE_SKIP"),
    );
    add(
        "recvsend-bundle",
        "IORING_FEAT_RECVSEND_BUNDLE",
        "6.10",
        from_bit(
            feats,
            IORING_FEAT_RECVSEND_BUNDLE,
            "IORING_FEAT_RECVSEND_BUNDLE",
        ),
    );
    add(
        "min-timeout",
        "IORING_FEAT_MIN_TIMEOUT",
        "6.12",
        from_bit(feats, IORING_FEAT_MIN_TIMEOUT, "IORING_FEAT_MIN_TIMEOUT"),
    );
    add(
        "no-iowait",
        "IORING_FEAT_NO_IOWAIT",
        "6.15",
        from_bit(feats, IORING_FEAT_NO_IOWAIT, "IORING_FEAT_NO_IOWAIT"),
    );
    add(
        "sparse-files-accept-direct",
        "IORING_REGISTER_FILES2 (sparse) + FILE_ALLOC_RANGE + IORING_FILE_INDEX_ALLOC",
        "5.19 / 6.0",
        sparse_files_accept_direct(),
    );
    add(
        "msg-ring-send-fd",
        "IORING_OP_MSG_RING + IORING_MSG_SEND_FD",
        "6.0",
        msg_ring_send_fd(),
    );
    add(
        "pbuf-ring-inc",
        "IOU_PBUF_RING_INC",
        "6.12",
        pbuf_ring_inc(),
    );
    add(
        "send-vectorized",
        "IORING_SEND_VECTORIZED",
        "6.17",
        send_vectorized(),
    );
    add(
        "send-zc-fixed-buf",
        "IORING_OP_SEND_ZC + IORING_RECVSEND_FIXED_BUF",
        "6.0",
        send_zc_fixed(),
    );
    add("napi", "IORING_REGISTER_NAPI", "6.9", napi());
    add(
        "napi-static",
        "IO_URING_NAPI_TRACKING_STATIC",
        "6.13",
        napi_static(),
    );
    v
}

/// FALLOC_FL_WRITE_ZEROES on a scratch file in `dir` (a file system and device property:
/// the device needs unmap write-zeroes).
pub fn fallocate_write_zeroes(dir: &std::path::Path) -> io::Result<()> {
    let p = dir.join(format!(".wz-probe-{}", std::process::id()));
    let r = (|| {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)?;
        let fd: std::os::fd::OwnedFd = f.into();
        super::fs::fallocate(&fd, super::fs::FALLOC_FL_WRITE_ZEROES, 0, 1 << 16)
    })();
    let _ = std::fs::remove_file(&p);
    r
}

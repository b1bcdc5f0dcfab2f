//! Cross-thread wake-ups (MSG_RING from a process-wide poster ring) and the mailboxes
//! through which the acceptor hands connections to other workers.

use super::*;

/// Wakes one worker from any thread: a MSG_RING CQE tagged [`TAG_WAKE`] on the worker's
/// ring, sent from a small process-wide "poster" ring, so a worker blocked in
/// io_uring_enter runs `Service::woken` at once (storage work finished on a helper
/// thread, say). A worker whose ring has no fd (REGISTERED_FD_ONLY) cannot be named by
/// MSG_RING: `wake` does nothing and the worker notices at its next tick.
#[derive(Clone)]
pub struct Waker {
    pub(super) ring_fd: Option<RawFd>,
}

/// The process's poster ring, made at the first wake-up.
static POSTER: Mutex<Option<Poster>> = Mutex::new(None);

struct Poster {
    pub(super) ring: io_uring::IoUring,
    pub(super) net: NetOps<NetBuf>,
}

impl Waker {
    pub fn wake(&self) {
        let Some(fd) = self.ring_fd else { return };
        let mut g = POSTER.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            match io_uring::IoUring::new(8) {
                Ok(ring) => {
                    *g = Some(Poster {
                        ring,
                        net: NetOps::new(8, TAG_NET),
                    })
                }
                Err(e) => {
                    tracing::warn!("uring: cannot make the wake-up ring ({e}); workers notice finished storage work at their next tick");
                    return;
                }
            }
        }
        let p = g.as_mut().expect("just made");
        if p.net
            .msg_ring(&mut p.ring, fd, 0, (TAG_WAKE as u64) << 56, 0)
            .is_err()
        {
            return;
        }
        // MSG_RING completes on the sender at once; reap it so the table stays free.
        if p.ring.submit_and_wait(1).is_ok() {
            let cqes: Vec<_> = p.ring.completion().collect();
            for c in cqes {
                let _ = p.net.complete(c.user_data(), c.result(), c.flags());
            }
        }
    }
}

/// Connections handed from the acceptor (worker 0) to another worker, and what other
/// workers may ask of this one's listeners.
#[derive(Default)]
pub(super) struct Mailbox {
    /// Handed over by the acceptor, with their accept sequence numbers.
    pub(super) conns: Mutex<Vec<(OwnedFd, Port, u64)>>,
    pub(super) ring_fd: Mutex<Option<RawFd>>,
    /// The worker's listeners while they are open (emptied before they close, under
    /// the lock, so a reader never asks a closed or reused descriptor).
    pub(super) listeners: Mutex<Vec<(Port, RawFd)>>,
    /// Connections on their way to this worker's service, as (port, accept sequence):
    /// taken out of `conns`, or passed as direct descriptors (MSG_RING), and not opened
    /// yet. Lock order: `conns`, then `in_transit`.
    pub(super) in_transit: Mutex<Vec<(Port, u64)>>,
}

impl Mailbox {
    /// The connection numbered `seq` on `port` is no longer in transit to this worker
    /// (opened, refused, or served elsewhere).
    pub(super) fn arrived(&self, port: Port, seq: u64) {
        let mut t = self.in_transit.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = t.iter().position(|&(p, s)| p == port && s == seq) {
            t.swap_remove(i);
        }
    }
}

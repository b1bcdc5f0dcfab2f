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
    pub(super) conns: Mutex<Vec<(OwnedFd, Port)>>,
    pub(super) ring_fd: Mutex<Option<RawFd>>,
    /// The worker's listeners while they are open (emptied before they close, under
    /// the lock, so a reader never asks a closed or reused descriptor).
    pub(super) listeners: Mutex<Vec<(Port, RawFd)>>,
    /// Connections taken out of `conns` that the service has not opened yet, by port.
    pub(super) adopting: [AtomicUsize; 2],
}

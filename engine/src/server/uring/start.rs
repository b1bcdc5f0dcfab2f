//! Starting the backend: listeners, the attach-wq anchor ring, one thread per worker.

use super::*;

/// Runs the io_uring backend until `shutdown` is set. `make_service(worker)` builds each
/// worker's service on the worker's thread. The bound addresses and the per-worker ring
/// reports are published in `handle` as soon as they are known.
pub fn run<S, F>(
    cfg: &Config,
    opts: &DriverOptions,
    prebound: Option<(TcpListener, TcpListener)>,
    make_service: F,
    shutdown: Arc<AtomicBool>,
    handle: Arc<Handle>,
) -> Result<(), UringError>
where
    S: Service,
    F: Fn(usize) -> S + Send + Sync,
{
    cfg.validate().map_err(|e| UringError::Config(e.message))?;
    if opts.workers == 0 {
        return Err(UringError::Config("workers must be at least 1".into()));
    }
    let net = &cfg.net;
    let nworkers = opts.workers;
    check_kernel_features(cfg)?;
    // Listeners: bind on this thread so port 0 resolves once and every worker shares it.
    let per_worker = net.listeners == Listeners::Reuseport;
    let nl = if per_worker { nworkers } else { 1 };
    let mut listeners: Vec<Vec<(Port, TcpListener)>> = (0..nworkers).map(|_| Vec::new()).collect();
    let (mut pre_i, mut pre_h) = match prebound {
        Some((i, h)) => (Some(i), Some(h)),
        None => (None, None),
    };
    for (port, addr) in [
        (Port::Ingest, opts.ingest_addr),
        (Port::Http, opts.http_addr),
    ] {
        let mut bound = addr;
        #[allow(clippy::needless_range_loop)] // i also picks the caller's listener for i == 0
        for i in 0..nl {
            // A listener bound by the caller (its address already announced) is used as
            // the first one, so no connection ever finds the port closed; with reuseport
            // it gets SO_REUSEPORT now, and the others join its group when they listen.
            let pre = if i == 0 {
                if port == Port::Ingest {
                    pre_i.take()
                } else {
                    pre_h.take()
                }
            } else {
                None
            };
            let l = match pre {
                Some(l) => {
                    if per_worker {
                        sockopt::set_reuseport(l.as_raw_fd())
                            .map_err(|err| UringError::Listen { addr, err })?;
                    }
                    // The caller bound it with its own backlog: listen() again sets ours
                    // (Linux changes the backlog of a listening socket in place).
                    sockopt::relisten(l.as_raw_fd(), net.listen_backlog as i32)
                        .map_err(|err| UringError::Listen { addr, err })?;
                    l
                }
                None => sockopt::listen(bound, per_worker, net.listen_backlog as i32)
                    .map_err(|err| UringError::Listen { addr: bound, err })?,
            };
            bound = l
                .local_addr()
                .map_err(|err| UringError::Listen { addr, err })?;
            if net.direct_sockets {
                listener_options(net, l.as_raw_fd())
                    .map_err(|err| UringError::Listen { addr: bound, err })?;
            }
            listeners[i].push((port, l));
        }
        let slot = if port == Port::Ingest {
            &handle.ingest_addr
        } else {
            &handle.http_addr
        };
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(bound);
    }
    let mailboxes: Arc<Vec<Mailbox>> =
        Arc::new((0..nworkers).map(|_| Mailbox::default()).collect());
    // attach-wq first: one anchor ring, built here from the same [ring] section and never
    // used for I/O, is "the process's first ring"; every worker's ring attaches to its
    // io-wq (and, with SQPOLL, shares its SQ thread). Workers build their own rings on
    // their own threads (SINGLE_ISSUER / DEFER_TASKRUN bind the ring to its creator).
    let anchor: Option<Mutex<Ring>> = if cfg.ring.attach_wq == crate::config::ring::AttachWq::First
    {
        Some(Mutex::new(build_ring(cfg, None)?.0))
    } else {
        None
    };
    let errors: Mutex<Vec<UringError>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        let mut joins = Vec::new();
        for (w, ls) in listeners.into_iter().enumerate() {
            let shutdown = &shutdown;
            let handle = handle.clone();
            let mailboxes = mailboxes.clone();
            let anchor = anchor.as_ref();
            let make_service = &make_service;
            let errors = &errors;
            let j = std::thread::Builder::new()
                .name(format!("uring-w{w}"))
                .spawn_scoped(scope, move || {
                    let r = Worker::setup(cfg, opts, w, ls, mailboxes, anchor, &handle).and_then(
                        |mut wk| {
                            let svc = make_service(w);
                            wk.run(svc, shutdown)
                        },
                    );
                    if let Err(e) = r {
                        // One worker failing stops the server: others see the flag.
                        shutdown.store(true, Ordering::SeqCst);
                        errors.lock().unwrap_or_else(|e| e.into_inner()).push(e);
                    }
                });
            match j {
                Ok(j) => joins.push(j),
                Err(e) => {
                    shutdown.store(true, Ordering::SeqCst);
                    errors
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(UringError::Worker {
                            worker: w,
                            err: format!("cannot start thread: {e}"),
                        });
                    break;
                }
            }
        }
        for j in joins {
            if j.join().is_err() {
                shutdown.store(true, Ordering::SeqCst);
                errors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(UringError::Worker {
                        worker: usize::MAX,
                        err: "a worker panicked".into(),
                    });
            }
        }
    });
    match errors
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .next()
    {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Options whose kernel support shows only when the operation is tried (flags inside an
/// SQE) are tried once on a scratch ring before anything listens: refused up front with
/// the kernel's answer, never failing connections later.
fn check_kernel_features(cfg: &Config) -> Result<(), UringError> {
    use crate::sys::features;
    let net = &cfg.net;
    let checks: [(bool, &str, fn() -> io::Result<()>); 3] = [
        (
            net.send_batch == SendBatch::Vectored,
            "net.send-batch=vectored: IORING_SEND_VECTORIZED (Linux 6.17+)",
            features::send_vectorized,
        ),
        (
            net.send_zc_fixed,
            "net.send-zc-fixed: SEND_ZC with IORING_RECVSEND_FIXED_BUF (Linux 6.0+)",
            features::send_zc_fixed,
        ),
        (
            net.direct_sockets && net.listeners == Listeners::Acceptor,
            "net.direct-sockets with listeners=acceptor: MSG_RING with IORING_MSG_SEND_FD (Linux 6.0+)",
            features::msg_ring_send_fd,
        ),
    ];
    for (on, what, probe) in checks {
        if on {
            probe().map_err(|err| UringError::Unsupported {
                what: what.into(),
                err,
            })?;
        }
    }
    if net.direct_sockets || cfg.file.register_files {
        features::sparse_files_accept_direct().map_err(|err| UringError::Unsupported {
            what: "a sparse registered-file table with IORING_FILE_INDEX_ALLOC (Linux 5.19+, alloc range 6.0+)".into(),
            err,
        })?;
    }
    Ok(())
}

/// Socket options of accepted connections, set on a listener so that every socket
/// accepted from it inherits them (direct sockets have no fd to set them on).
fn listener_options(net: &crate::config::NetConfig, fd: RawFd) -> io::Result<()> {
    if net.tcp_nodelay {
        sockopt::set_nodelay(fd, true)?;
    }
    if net.sndbuf_bytes > 0 {
        sockopt::set_sndbuf(fd, net.sndbuf_bytes as i32)?;
    }
    if net.rcvbuf_bytes > 0 {
        sockopt::set_rcvbuf(fd, net.rcvbuf_bytes as i32)?;
    }
    Ok(())
}

/// What the io_uring backend's rings would be with `cfg`, without serving: builds (and
/// drops) one ring per worker the way `run` does (anchor ring first for attach-wq), so
/// `--print-config` can show requested vs effective setup flags, sizes and fdinfo, or
/// the kernel's refusal, before anything listens. DEFER_TASKRUN/SINGLE_ISSUER rings are
/// built on this thread here; `run` builds them on their worker threads.
pub fn effective_rings(cfg: &Config, workers: usize) -> Result<Vec<Effective>, UringError> {
    cfg.validate().map_err(|e| UringError::Config(e.message))?;
    let anchor: Option<Mutex<Ring>> = if cfg.ring.attach_wq == crate::config::ring::AttachWq::First
    {
        Some(Mutex::new(build_ring(cfg, None)?.0))
    } else {
        None
    };
    (0..workers.max(1))
        .map(|_| build_ring(cfg, anchor.as_ref()).map(|(_, e)| e))
        .collect()
}

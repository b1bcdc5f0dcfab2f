//! The io_uring driver of `recorder serve` under several [net]/[file] configurations,
//! with a small test service: the ingest port echoes every byte back (exercises accept,
//! recv single/multishot with buffer recycling, ordered sends), the HTTP port answers
//! `GET <name>\n` with the named file streamed by `send_file` (exercises READ /
//! READ_FIXED / O_DIRECT + SEND / SEND_ZC, and SPLICE). Bytes out == bytes in, always.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::config::Config;
use engine::server::uring::{run, ConnId, DriverOptions, Handle, Io, Port, Service};

struct TestSvc {
    dir: PathBuf,
    ports: HashMap<ConnId, (Port, Vec<u8>)>,
}

impl Service for TestSvc {
    fn open(&mut self, conn: ConnId, port: Port, _io: &mut Io) -> bool {
        self.ports.insert(conn, (port, Vec::new()));
        true
    }
    fn data(&mut self, conn: ConnId, bytes: &[u8], io: &mut Io) {
        let Some((port, line)) = self.ports.get_mut(&conn) else {
            panic!("data for unknown connection")
        };
        match port {
            Port::Ingest => io.send(conn, bytes.to_vec()),
            Port::Http => {
                line.extend_from_slice(bytes);
                if let Some(nl) = line.iter().position(|&b| b == b'\n') {
                    let req = String::from_utf8(line[..nl].to_vec()).unwrap();
                    line.clear();
                    let name = req.strip_prefix("GET ").expect("test request");
                    let f = File::open(self.dir.join(name)).unwrap();
                    let len = f.metadata().unwrap().len();
                    io.send(conn, format!("LEN {len}\n").into_bytes());
                    io.send_file(conn, Arc::new(f), 0, len, 1);
                    io.close(conn);
                }
            }
        }
    }
    fn closed(&mut self, conn: ConnId, _io: &mut Io) {
        assert!(
            self.ports.remove(&conn).is_some(),
            "closed twice or never opened"
        );
    }
    fn sent_file(&mut self, _conn: ConnId, _token: u64, res: std::io::Result<u64>, _io: &mut Io) {
        res.expect("file range sent");
    }
}

fn pattern(n: usize, seed: u32) -> Vec<u8> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

fn scenario(settings: &[(&str, &str)]) {
    let mut cfg = Config::default();
    for (k, v) in settings {
        cfg.set(k, v).unwrap_or_else(|e| panic!("{k}={v}: {e}"));
    }
    let dir = std::env::temp_dir().join(format!(
        "uring-driver-{}-{}",
        std::process::id(),
        settings
            .iter()
            .map(|(k, v)| format!("{k}{v}"))
            .collect::<String>()
            .replace(['/', '.'], "")
    ));
    std::fs::create_dir_all(&dir).unwrap();
    // Sizes that are not multiples of 4096 to exercise the unaligned tail with O_DIRECT.
    let files: Vec<(String, Vec<u8>)> = [(3 << 20) + 123, 70_001, 1]
        .iter()
        .enumerate()
        .map(|(i, &n)| (format!("f{i}"), pattern(n, i as u32)))
        .collect();
    for (name, data) in &files {
        std::fs::write(dir.join(name), data).unwrap();
    }
    let opts = DriverOptions {
        workers: 2,
        max_connections_per_worker: 64,
        ..Default::default()
    };
    let shutdown = Arc::new(AtomicBool::new(false));
    let handle = Arc::new(Handle::default());
    let server = {
        let (cfg, opts, shutdown, handle, dir) = (
            cfg.clone(),
            opts.clone(),
            shutdown.clone(),
            handle.clone(),
            dir.clone(),
        );
        std::thread::spawn(move || {
            run(
                &cfg,
                &opts,
                None,
                |_w| TestSvc {
                    dir: dir.clone(),
                    ports: HashMap::new(),
                },
                shutdown,
                handle,
            )
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let (ingest, http) = loop {
        let i = *handle.ingest_addr.lock().unwrap();
        let h = *handle.http_addr.lock().unwrap();
        if let (Some(i), Some(h)) = (i, h) {
            if handle.reports.lock().unwrap().len() == 2 {
                break (i, h);
            }
        }
        assert!(
            !server.is_finished(),
            "server ended early: {:?}",
            server.join().unwrap()
        );
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(5));
    };

    let mut clients = Vec::new();
    for c in 0..6u32 {
        clients.push(std::thread::spawn(move || {
            let mut s = TcpStream::connect(ingest).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let msg = pattern(150_000 + c as usize * 7919, c);
            let mut r = s.try_clone().unwrap();
            let reader = std::thread::spawn(move || {
                let mut got = vec![0u8; 150_000 + c as usize * 7919];
                r.read_exact(&mut got).unwrap();
                got
            });
            for chunk in msg.chunks(1000 + c as usize * 377) {
                s.write_all(chunk).unwrap();
            }
            let got = reader.join().unwrap();
            assert!(
                got == msg,
                "echo client {c}: bytes back differ from bytes sent"
            );
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty());
        }));
    }
    for round in 0..2 {
        for (name, data) in files.clone() {
            clients.push(std::thread::spawn(move || {
                let mut s = TcpStream::connect(http).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s.write_all(format!("GET {name}\n").as_bytes()).unwrap();
                let mut all = Vec::new();
                s.read_to_end(&mut all).unwrap();
                let nl = all.iter().position(|&b| b == b'\n').expect("header line");
                assert_eq!(
                    std::str::from_utf8(&all[..nl]).unwrap(),
                    format!("LEN {}", data.len())
                );
                assert!(
                    all[nl + 1..] == data[..],
                    "download {name} round {round}: {} bytes, expected {}",
                    all.len() - nl - 1,
                    data.len()
                );
            }));
        }
    }
    for c in clients {
        c.join().unwrap();
    }
    let reports = handle.reports.lock().unwrap().clone();
    shutdown.store(true, Ordering::SeqCst);
    server
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("server failed: {e}"));
    assert_eq!(reports.len(), 2);
    assert!(
        reports
            .iter()
            .all(|r| r.ring.sq_entries > 0 && r.ring.fdinfo.contains_key("SqMask")),
        "{reports:?}"
    );
    let stats = handle.stats.lock().unwrap();
    let accepted: u64 = stats
        .iter()
        .map(|s| s.accepted.load(Ordering::Relaxed))
        .sum();
    let closed: u64 = stats.iter().map(|s| s.closed.load(Ordering::Relaxed)).sum();
    assert_eq!(accepted, 12, "6 echo + 6 downloads");
    assert_eq!(closed, accepted, "every connection closed");
    if cfg.get("net.listeners").as_deref() == Some("reuseport")
        || cfg.get("net.listeners").as_deref() == Some("acceptor")
    {
        // Both workers got connections in acceptor mode (round-robin hand-off).
        if cfg.get("net.listeners").as_deref() == Some("acceptor") {
            assert!(
                stats.iter().all(|s| s.accepted.load(Ordering::Relaxed) > 0),
                "hand-off did not reach every worker"
            );
        }
    }
    if cfg.get("net.buf-ring-entries").as_deref() == Some("4") {
        let enobufs: u64 = stats
            .iter()
            .map(|s| s.enobufs.load(Ordering::Relaxed))
            .sum();
        let rearms: u64 = stats
            .iter()
            .map(|s| s.recv_rearms.load(Ordering::Relaxed))
            .sum();
        assert!(
            rearms > 0,
            "a 4-buffer ring never ended a multishot receive (enobufs {enobufs})"
        );
    }
    if cfg.get("net.send").as_deref() == Some("send-zc") {
        let zc: u64 = stats
            .iter()
            .map(|s| s.zc_sends.load(Ordering::Relaxed))
            .sum();
        assert!(zc > 0, "send=send-zc but no SEND_ZC was issued");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn defaults_multishot_recv_and_accept_send_page_cache() {
    scenario(&[]);
}

#[test]
fn single_shot_recv_and_accept() {
    scenario(&[("net.recv", "single"), ("net.accept", "single")]);
}

#[test]
fn multishot_recv_with_a_tiny_buffer_ring_recycles_through_enobufs() {
    scenario(&[
        ("net.recv", "multishot"),
        ("net.buf-ring-entries", "4"),
        ("net.recv-buf-bytes", "512"),
    ]);
}

#[test]
fn send_zc() {
    scenario(&[("net.send", "send-zc"), ("net.send-zc-min-bytes", "4096")]);
}

#[test]
fn splice_from_page_cache() {
    scenario(&[
        ("net.send", "splice"),
        ("net.serve-chunk-bytes", "64k"),
        ("net.pipe-bytes", "64k"),
    ]);
}

#[test]
fn direct_reads_with_registered_buffers_and_read_fixed() {
    scenario(&[
        ("net.serve-read", "direct"),
        ("file.register-buffers", "true"),
        ("file.read-op", "read-fixed"),
    ]);
}

#[test]
fn acceptor_hands_connections_to_every_worker() {
    scenario(&[("net.listeners", "acceptor"), ("net.workers-pin", "cores")]);
}

#[test]
fn effective_rings_report_what_the_kernel_set_up_or_why_not() {
    use engine::server::uring::{effective_rings, UringError};
    let mut cfg = Config::default();
    cfg.set("ring.sqpoll", "true").unwrap();
    cfg.set("ring.attach-wq", "first").unwrap();
    let eff = effective_rings(&cfg, 2).unwrap();
    assert_eq!(eff.len(), 2);
    for e in &eff {
        assert_eq!(e.flags, e.requested_flags);
        assert!(
            e.flag_names.contains("SQPOLL") && e.flag_names.contains("ATTACH_WQ"),
            "{}",
            e.flag_names
        );
        assert_eq!(e.attach_wq, "attached");
    }
    // IOPOLL cannot serve sockets: refused by name before any ring is built.
    let mut cfg = Config::default();
    cfg.set("ring.iopoll", "true").unwrap();
    cfg.set("file.direct", "required").unwrap();
    match effective_rings(&cfg, 1) {
        Err(UringError::Config(m)) => assert!(m.contains("iopoll") && m.contains("EINVAL"), "{m}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

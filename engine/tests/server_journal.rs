//! storage-layout=journal against a real recorder on loopback, both backends: kill -9
//! during the ingest of 1,000 matches loses no acknowledged frame; the journal alone
//! restores replay files that lost their written-behind tail; torn and corrupt journal
//! records; a full journal slows acks and loses nothing; checkpoints reuse journal space;
//! a restart in the middle of a checkpoint; ENOSPC.

mod common;
use common::*;
use engine::protocol::{self, Msg};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

const BACKENDS: &[&str] = &["blocking", "uring"];

/// The journal layout with small sizes for tests; `extra` pairs replace the defaults.
fn journal_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let defaults = [
        ("--storage-layout", "journal"),
        ("--journal-bytes", "4m"),
        ("--append-buffer-bytes", "64k"),
        ("--max-frame-bytes", "64k"),
        ("--direct", "required"),
        ("--durability", "fdatasync"),
        ("--ack-interval-ms", "2"),
    ];
    let mut v = Vec::new();
    for (k, val) in defaults {
        if !extra.contains(&k) {
            v.extend([k, val]);
        }
    }
    v.extend_from_slice(extra);
    v
}

fn metric(srv: &Server, name: &str) -> u64 {
    metric_at(srv.http, name).unwrap_or_else(|| panic!("metric {name} missing"))
}

/// A counter from the recorder's /metrics at `http`.
fn metric_at(http: SocketAddr, name: &str) -> Option<u64> {
    let r = testkit::http_get(http, "GET", "/metrics", &[]).ok()?;
    let text = String::from_utf8_lossy(&r.body).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("recorder_{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// One DS connection driven without blocking (many per thread).
struct Ds {
    id: String,
    s: TcpStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    next: u64,
    acked: u64,
    dead: bool,
}

impl Ds {
    fn pump(&mut self) {
        if self.dead {
            return;
        }
        while !self.out.is_empty() {
            match self.s.write(&self.out) {
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
        }
        let mut b = [0u8; 4096];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => {
                    self.dead = true;
                    break;
                }
                Ok(n) => self.inbuf.extend_from_slice(&b[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.dead = true;
                    break;
                }
            }
        }
        let mut used = 0;
        while let Ok(Some((m, n))) = protocol::decode(&self.inbuf[used..], 1 << 20) {
            if let Msg::Ack { seq } = m {
                self.acked = self.acked.max(seq);
            }
            used += n;
        }
        self.inbuf.drain(..used);
    }
}

fn payload(id: &str, seq: u64) -> Vec<u8> {
    testkit::payload_for(id, seq, 100 + (seq as usize * 37) % 400)
}

/// Streams `n` matches at about 50 Hz each until `run` has passed, kills the recorder with
/// SIGKILL, reads the acks that were sent before it died; returns (id, acked, sent).
fn ingest_then_kill(srv: &mut Server, n: usize, run: Duration) -> Vec<(String, u64, u64)> {
    let threads = 4;
    let addr = srv.ingest;
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let go_rx = std::sync::Arc::new(std::sync::Mutex::new(go_rx));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (go, ready) = (go_rx.clone(), ready_tx.clone());
            std::thread::spawn(move || {
                let mut conns = Vec::new();
                for i in (t..n).step_by(threads) {
                    let id = format!("j{i:04}");
                    let mut c = DsClient::connect(addr).unwrap();
                    let w = c.hello(&id, false, b"").unwrap();
                    assert!(
                        matches!(w, Reply::Welcome { last_seq: 0, .. }),
                        "{id}: {w:?}"
                    );
                    c.stream.set_nonblocking(true).unwrap();
                    conns.push(Ds {
                        id,
                        s: c.stream,
                        inbuf: Vec::new(),
                        out: Vec::new(),
                        next: 1,
                        acked: 0,
                        dead: false,
                    });
                }
                ready.send(()).unwrap();
                let _ = go.lock().unwrap().recv();
                // stream until every connection broke (the kill)
                let t0 = Instant::now();
                while conns.iter().any(|c| !c.dead) && t0.elapsed() < Duration::from_secs(60) {
                    for c in conns.iter_mut() {
                        if !c.dead && c.next - c.acked <= 4 && c.out.is_empty() {
                            let seq = c.next;
                            let kind = if seq % 20 == 1 { 1 } else { 2 };
                            protocol::encode_frame(
                                &mut c.out,
                                seq,
                                seq,
                                kind,
                                &payload(&c.id, seq),
                            );
                            c.next += 1;
                        }
                        c.pump();
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                conns
                    .into_iter()
                    .map(|c| {
                        let sent = c.next - 1 - (!c.out.is_empty()) as u64;
                        (c.id, c.acked, sent)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for _ in 0..threads {
        ready_rx.recv_timeout(Duration::from_secs(120)).unwrap();
    }
    for _ in 0..threads {
        go_tx.send(()).unwrap();
    }
    std::thread::sleep(run);
    srv.kill9();
    let mut v: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    v.sort();
    v
}

/// Resumes every match after a restart, checks WELCOME covers its acks, ENDs it at the
/// recorder's point and checks the sealed file holds exactly frames 1..=that point.
fn resume_and_check(srv: &Server, store: &Path, acked: &[(String, u64, u64)]) {
    let chunks: Vec<Vec<(String, u64, u64)>> = acked
        .chunks(acked.len().div_ceil(8).max(1))
        .map(|c| c.to_vec())
        .collect();
    let ingest = srv.ingest;
    let hs: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let store = store.to_path_buf();
            std::thread::spawn(move || {
                for (id, a, sent) in chunk {
                    let mut c = DsClient::connect(ingest).unwrap();
                    let r = c.hello(&id, true, b"").unwrap();
                    let Reply::Welcome { last_seq, .. } = r else {
                        panic!("{id}: {r:?}")
                    };
                    assert!(
                        last_seq >= a,
                        "{id}: recorder says {last_seq} is durable but {a} was acked"
                    );
                    assert!(
                        last_seq <= sent,
                        "{id}: {last_seq} durable, only {sent} sent"
                    );
                    let r = c.end(last_seq).unwrap();
                    assert!(
                        matches!(r, Reply::Sealed { last_seq: l, .. } if l == last_seq),
                        "{id}: {r:?}"
                    );
                    let b = std::fs::read(store.join(format!("{id}.rpl"))).unwrap();
                    let want: Vec<Vec<u8>> = (1..=last_seq).map(|s| payload(&id, s)).collect();
                    check_replay(&b, &id, &want, true);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}

fn kill9_during_1000_ds_ingest(backend: &str) {
    let dir = TempDir::new("jkill");
    let mut srv = spawn_server(backend, dir.path(), &journal_args(&["--workers", "2"]));
    let acked = ingest_then_kill(&mut srv, 1000, Duration::from_millis(1500));
    let total: u64 = acked.iter().map(|a| a.1).sum();
    assert!(
        acked.iter().filter(|a| a.1 > 0).count() > 900,
        "most matches got acks before the kill"
    );
    assert!(total > 5000, "acked {total} frames");
    let srv2 = srv.restart();
    let log = srv2.log_text();
    assert!(
        log.contains("journal/w0.wal: checkpoint"),
        "recovery reports the journal: {log}"
    );
    resume_and_check(&srv2, dir.path(), &acked);
    assert!(store_files(dir.path())
        .iter()
        .all(|f| f.ends_with(".rpl") && !f.contains('/')));
}

#[test]
fn kill9_during_1000_ds_ingest_journal_blocking() {
    kill9_during_1000_ds_ingest("blocking");
}

#[test]
fn kill9_during_1000_ds_ingest_journal_uring() {
    kill9_during_1000_ds_ingest("uring");
}

/// Sends `frames` frames of match `id` and waits for the ack of the last.
fn stream_acked(addr: SocketAddr, id: &str, frames: u64) -> DsClient {
    let mut c = DsClient::connect(addr).unwrap();
    assert!(matches!(
        c.hello(id, false, b"").unwrap(),
        Reply::Welcome { .. }
    ));
    for s in 1..=frames {
        c.frame(s, s, if s == 1 { 1 } else { 2 }, &payload(id, s))
            .unwrap();
    }
    assert_eq!(
        c.wait_ack(frames, Duration::from_secs(20)).unwrap(),
        Reply::Ack(frames)
    );
    c
}

fn journal_bytes(store: &Path, n: usize) -> Vec<u8> {
    std::fs::read(store.join(format!("journal/w{n}.wal"))).unwrap()
}

/// Where the records of match `id` are in a journal file (its data ranges).
fn records_of(file: &[u8], id: &str) -> Vec<engine::storage::journal::DataRecord> {
    let s = engine::storage::journal::scan(file, 1 << 20);
    s.records.into_iter().filter(|r| r.match_id == id).collect()
}

#[test]
fn journal_restores_a_replay_file_that_lost_its_written_behind_tail() {
    for backend in BACKENDS {
        let dir = TempDir::new("jrestore");
        // no checkpoint during the test: every record stays to be replayed
        let mut srv = spawn_server(
            backend,
            dir.path(),
            &journal_args(&["--journal-checkpoint-ms", "600000", "--workers", "1"]),
        );
        let _c = stream_acked(srv.ingest, "r", 30);
        srv.kill9();
        // what a power loss can do to a file written behind: its tail is gone
        let part = dir.path().join("live/r.rpl.part");
        let f = std::fs::OpenOptions::new().write(true).open(&part).unwrap();
        f.set_len(128 + 40).unwrap(); // the header and a torn first record
        drop(f);
        let srv2 = srv.restart();
        let mut c = DsClient::connect(srv2.ingest).unwrap();
        let r = c.hello("r", true, b"").unwrap();
        assert!(
            matches!(r, Reply::Welcome { last_seq: 30, .. }),
            "{backend}: {r:?}\n{}",
            srv2.log_text()
        );
        assert!(matches!(
            c.end(30).unwrap(),
            Reply::Sealed { last_seq: 30, .. }
        ));
        let want: Vec<Vec<u8>> = (1..=30).map(|s| payload("r", s)).collect();
        check_replay(
            &std::fs::read(dir.path().join("r.rpl")).unwrap(),
            "r",
            &want,
            true,
        );
    }
}

#[test]
fn torn_journal_tail_is_cut_and_corrupt_record_is_skipped() {
    for backend in BACKENDS {
        let dir = TempDir::new("jtorn");
        let mut srv = spawn_server(
            backend,
            dir.path(),
            &journal_args(&["--journal-checkpoint-ms", "600000", "--workers", "1"]),
        );
        let _a = stream_acked(srv.ingest, "a", 20);
        let _b = stream_acked(srv.ingest, "b", 20);
        srv.kill9();
        let path = dir.path().join("journal/w0.wal");
        let mut j = journal_bytes(dir.path(), 0);
        let s = engine::storage::journal::scan(&j, 1 << 20);
        let end = s.records.last().unwrap().data.end;
        // a corrupt record of match a in the middle (its frames are in the replay file)
        let ra = records_of(&j, "a");
        let mid = ra[ra.len() / 2].data.start;
        j[mid] ^= 0x5a;
        // a torn record after the last whole one: a header that claims the next LSN
        let next_lsn = s.end_lsn;
        let pos = (end + 7) / 8 * 8;
        j[pos..pos + 4].copy_from_slice(b"JREC");
        j[pos + 8..pos + 16].copy_from_slice(&next_lsn.to_le_bytes());
        j[pos + 16..pos + 20].copy_from_slice(&200u32.to_le_bytes());
        std::fs::write(&path, &j).unwrap();
        let srv2 = srv.restart();
        let log = srv2.log_text();
        assert!(log.contains("corrupt record"), "{backend}: {log}");
        assert!(log.contains("cut there"), "{backend}: {log}");
        for id in ["a", "b"] {
            let mut c = DsClient::connect(srv2.ingest).unwrap();
            let r = c.hello(id, true, b"").unwrap();
            assert!(
                matches!(r, Reply::Welcome { last_seq: 20, .. }),
                "{backend} {id}: {r:?}"
            );
            assert!(matches!(c.end(20).unwrap(), Reply::Sealed { .. }));
            let want: Vec<Vec<u8>> = (1..=20).map(|s| payload(id, s)).collect();
            check_replay(
                &std::fs::read(dir.path().join(format!("{id}.rpl"))).unwrap(),
                id,
                &want,
                true,
            );
        }
    }
}

/// Closed loop: at most `window` frames unacked; returns the client after all are acked.
fn closed_loop(addr: SocketAddr, id: &str, frames: u64, size: usize, window: u64) -> DsClient {
    let mut c = DsClient::connect(addr).unwrap();
    assert!(matches!(
        c.hello(id, false, b"").unwrap(),
        Reply::Welcome { .. }
    ));
    let mut seq = 1;
    while seq <= frames {
        pump(&mut c, id, &mut seq, frames, size, window);
    }
    assert_eq!(
        c.wait_ack(frames, Duration::from_secs(30)).unwrap(),
        Reply::Ack(frames)
    );
    c
}

/// One round of a closed loop: frames from `*seq` up to `last` while at most `window` are
/// unacked, then the next ACK.
fn pump(c: &mut DsClient, id: &str, seq: &mut u64, last: u64, size: usize, window: u64) {
    while *seq <= last && *seq - c.acked <= window {
        c.frame(*seq, *seq, 2, &testkit::payload_for(id, *seq, size))
            .unwrap();
        *seq += 1;
    }
    c.flush().unwrap();
    match c.recv(Duration::from_secs(20)).unwrap() {
        Reply::Ack(_) => {}
        r => panic!("{id}: {r:?}"),
    }
}

/// kill -9 of `srv` with `c` still connected, restart on the same store, RESUME of `id`:
/// the new server, the client and the sequence its WELCOME says is durable.
fn kill_and_resume(srv: &mut Server, c: DsClient, id: &str) -> (Server, DsClient, u64) {
    srv.kill9();
    drop(c);
    let srv2 = srv.restart();
    let mut c = DsClient::connect(srv2.ingest).unwrap();
    let r = c.hello(id, true, b"").unwrap();
    let Reply::Welcome { last_seq, .. } = r else {
        panic!("{id}: {r:?}")
    };
    (srv2, c, last_seq)
}

/// A recorder for bulk senders: 1 MiB frames and append buffer, one worker.
fn bulk_server(backend: &str, store: &Path) -> Server {
    spawn_server(
        backend,
        store,
        &journal_args(&[
            "--journal-bytes",
            "20m",
            "--append-buffer-bytes",
            "1m",
            "--max-frame-bytes",
            "1m",
            "--ack-interval-ms",
            "20",
            "--workers",
            "1",
        ]),
    )
}

#[test]
fn full_journal_slows_acks_and_checkpoints_reuse_its_space() {
    for backend in BACKENDS {
        let dir = TempDir::new("jfull");
        // a 2 MiB journal and slow checkpoints: 12 MB of frames must wait for space
        let srv = spawn_server(
            backend,
            dir.path(),
            &journal_args(&[
                "--journal-bytes",
                "2m",
                "--workers",
                "1",
                "--test-checkpoint-delay-ms",
                "150",
                "--journal-bypass-bytes",
                "0",
            ]),
        );
        let (frames, size) = (400u64, 30_000usize);
        let mut c = closed_loop(srv.ingest, "f", frames, size, 16);
        assert!(matches!(c.end(frames).unwrap(), Reply::Sealed { .. }));
        let want: Vec<Vec<u8>> = (1..=frames)
            .map(|s| testkit::payload_for("f", s, size))
            .collect();
        check_replay(
            &std::fs::read(dir.path().join("f.rpl")).unwrap(),
            "f",
            &want,
            true,
        );
        let cap = metric(&srv, "journal_capacity_bytes");
        let written = metric(&srv, "journal_write_bytes_total");
        assert!(
            written > 4 * cap,
            "{backend}: the ring was reused ({written} bytes written, {cap} capacity)"
        );
        assert!(metric(&srv, "journal_checkpoints_total") >= 4, "{backend}");
        assert!(
            metric(&srv, "journal_full_waits_total") > 0,
            "{backend}: appends waited for space"
        );
        assert!(metric(&srv, "journal_occupancy_bytes") <= cap);
    }
}

#[test]
fn resume_across_a_restart_in_the_middle_of_a_checkpoint() {
    for backend in BACKENDS {
        let dir = TempDir::new("jmidckpt");
        // every checkpoint sleeps 5 s before its sync: the kill lands inside one
        let mut srv = spawn_server(
            backend,
            dir.path(),
            &journal_args(&[
                "--workers",
                "1",
                "--journal-checkpoint-ms",
                "100",
                "--test-checkpoint-delay-ms",
                "5000",
            ]),
        );
        let c = stream_acked(srv.ingest, "m", 40);
        std::thread::sleep(Duration::from_millis(300));
        srv.kill9();
        drop(c);
        let srv2 = srv.restart();
        let mut c = DsClient::connect(srv2.ingest).unwrap();
        let r = c.hello("m", true, b"").unwrap();
        assert!(
            matches!(r, Reply::Welcome { last_seq: 40, .. }),
            "{backend}: {r:?}"
        );
        for s in 41..=60 {
            c.frame(s, s, 2, &payload("m", s)).unwrap();
        }
        assert_eq!(
            c.wait_ack(60, Duration::from_secs(10)).unwrap(),
            Reply::Ack(60)
        );
        // and once more, now with the checkpoints of the second run in the journal too
        let mut srv2 = srv2;
        srv2.kill9();
        let srv3 = srv2.restart();
        let mut c = DsClient::connect(srv3.ingest).unwrap();
        assert!(matches!(
            c.hello("m", true, b"").unwrap(),
            Reply::Welcome { last_seq: 60, .. }
        ));
        assert!(matches!(
            c.end(60).unwrap(),
            Reply::Sealed { last_seq: 60, .. }
        ));
        let want: Vec<Vec<u8>> = (1..=60).map(|s| payload("m", s)).collect();
        check_replay(
            &std::fs::read(dir.path().join("m.rpl")).unwrap(),
            "m",
            &want,
            true,
        );
    }
}

#[test]
fn enospc_in_replay_files_gives_storage_and_keeps_acked_frames() {
    let Some(fs) = SmallFs::mount("replay", "12m") else {
        assert!(
            std::env::var("CI").is_err(),
            "CI runs as root: mounting a tmpfs must work there"
        );
        eprintln!("skipped: cannot mount a tmpfs (not root)");
        return;
    };
    for backend in BACKENDS {
        let store = fs.0.join(backend);
        std::fs::create_dir_all(&store).unwrap();
        let mut srv = spawn_server(
            backend,
            &store,
            &journal_args(&["--journal-bytes", "2m", "--workers", "1", "--direct", "off"]),
        );
        let mut c = DsClient::connect(srv.ingest).unwrap();
        assert!(matches!(
            c.hello("e", false, b"").unwrap(),
            Reply::Welcome { .. }
        ));
        let mut err = None;
        let mut seq = 1;
        // 30 KB frames until the file system is full (12 MiB minus the two journals)
        while seq < 2000 && err.is_none() {
            if c.frame(seq, seq, 2, &testkit::payload_for("e", seq, 30_000))
                .is_err()
            {
                break;
            }
            seq += 1;
            if seq % 8 == 0 {
                let _ = c.flush();
                while let Ok(r) = c.recv(Duration::from_millis(if seq % 64 == 0 { 200 } else { 1 }))
                {
                    match r {
                        Reply::Ack(_) => {}
                        Reply::Closed => break,
                        r => {
                            err = Some(r);
                            break;
                        }
                    }
                }
            }
        }
        while err.is_none() {
            match c.recv(Duration::from_secs(10)) {
                Ok(Reply::Ack(_)) => {}
                Ok(r) => err = Some(r),
                Err(_) => break,
            }
        }
        let e = err.expect("an error");
        assert_eq!(
            e.error_code(),
            Some(protocol::ErrorCode::Storage),
            "{backend}: {e:?}"
        );
        let acked = c.acked;
        assert!(
            acked > 10,
            "{backend}: {acked} acked before the disk filled"
        );
        srv.kill9();
        // restart on the still-full file system: recovery needs no new space, and the
        // match resumes at least at its last ack with exactly the frames sent
        let srv2 = srv.restart();
        let mut c = DsClient::connect(srv2.ingest).unwrap();
        let r = c.hello("e", true, b"").unwrap();
        let Reply::Welcome { last_seq, .. } = r else {
            panic!("{backend}: {r:?}")
        };
        assert!(last_seq >= acked, "{backend}: {last_seq} < acked {acked}");
        drop(c);
        drop(srv2);
        let b = std::fs::read(store.join("live/e.rpl.part")).unwrap();
        let want: Vec<Vec<u8>> = (1..=last_seq)
            .map(|s| testkit::payload_for("e", s, 30_000))
            .collect();
        check_replay(&b, "e", &want, false);
        std::fs::remove_dir_all(&store).unwrap();
    }
}

#[test]
fn journal_that_does_not_fit_refuses_to_start() {
    let Some(fs) = SmallFs::mount("journal", "4m") else {
        assert!(
            std::env::var("CI").is_err(),
            "CI runs as root: mounting a tmpfs must work there"
        );
        eprintln!("skipped: cannot mount a tmpfs (not root)");
        return;
    };
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_recorder"))
        .args(["serve", "--store"])
        .arg(&fs.0)
        .args([
            "--ingest-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--storage-layout",
            "journal",
            "--journal-bytes",
            "8m",
            "--append-buffer-bytes",
            "64k",
            "--max-frame-bytes",
            "64k",
            "--backend",
            "blocking",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("journal-bytes") && err.contains("No space"),
        "{err}"
    );
}

#[test]
fn connection_limits_that_cannot_fit_rlimit_nofile_refuse_to_start() {
    let dir = TempDir::new("fds");
    for backend in BACKENDS {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_recorder"))
            .args(["serve", "--store"])
            .arg(dir.path())
            .args([
                "--ingest-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
                "--backend",
                backend,
                "--max-connections",
                "5000000",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t0.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("{backend}: the recorder started with limits that cannot fit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success(), "{backend}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("file descriptors")
                && err.contains("RLIMIT_NOFILE")
                && err.contains("5000000"),
            "{backend}: {err}"
        );
        // 0 (the default) fits the limit: the effective value is printed
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_recorder"))
            .args(["serve", "--print-config", "--backend", backend])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let eff: u64 = v["effective"]["server.max-connections"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        // the journal layout (default) keeps replay files in the replay-fd-cache
        let (ds_fds, _) = if *backend == "uring" { (1, 2) } else { (2, 3) };
        assert!(eff > 100, "{backend}: {eff}");
        let hard: u64 = std::fs::read_to_string("/proc/self/limits")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(4).and_then(|v| v.parse().ok()))
            .unwrap_or(u64::MAX);
        assert!(
            eff * ds_fds < hard,
            "{backend}: {eff} x {ds_fds} fits {hard}"
        );
    }
}

#[test]
fn bulk_writes_bypass_the_journal_and_survive_kill9() {
    for backend in BACKENDS {
        let dir = TempDir::new("jbulk");
        let mut srv = bulk_server(backend, dir.path());
        let (frames, size) = (120u64, 64_000usize);
        let c = closed_loop(srv.ingest, "bulk", frames, size, 48);
        let payload = metric(&srv, "payload_bytes_total");
        let journal = metric(&srv, "journal_record_bytes_total");
        let syncs = metric(&srv, "file_syncs_total");
        assert!(
            syncs > 0,
            "{backend}: bulk appends are synced in their file"
        );
        assert!(
            journal < payload / 2,
            "{backend}: most bulk bytes bypass the journal ({journal} journaled of {payload})"
        );
        let acked = c.acked;
        let (_srv2, mut c, last_seq) = kill_and_resume(&mut srv, c, "bulk");
        assert!(last_seq >= acked, "{backend}: {last_seq} < {acked}");
        assert!(matches!(c.end(last_seq).unwrap(), Reply::Sealed { .. }));
        let want: Vec<Vec<u8>> = (1..=last_seq)
            .map(|s| testkit::payload_for("bulk", s, size))
            .collect();
        check_replay(
            &std::fs::read(dir.path().join("bulk.rpl")).unwrap(),
            "bulk",
            &want,
            true,
        );
    }
}

/// Whether the server process `pid` holds match `id`'s live replay file open with
/// O_DIRECT (the flags in /proc/PID/fdinfo, as the kernel sees them).
fn replay_file_is_o_direct(pid: u32, id: &str) -> bool {
    let want = format!("live/{id}.rpl.part");
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|e| {
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        if !target.to_string_lossy().ends_with(&want) {
            return false;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        info.lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .is_some_and(|f| f & libc::O_DIRECT as u32 != 0)
    })
}

/// A bulk match of the journal layout writes its replay file with O_DIRECT (bypassing the
/// journal and the page cache); a kill -9 with frames in flight loses none of its acked
/// frames, and after RESUME it goes on to a byte-identical download.
#[test]
fn bulk_match_in_o_direct_killed_mid_stream_resumes_byte_identical() {
    for backend in BACKENDS {
        let dir = TempDir::new("jbulkdio");
        let mut srv = bulk_server(backend, dir.path());
        let (size, window, total) = (64_000usize, 48u64, 400u64);
        let mut c = DsClient::connect(srv.ingest).unwrap();
        assert!(matches!(
            c.hello("bulk", false, b"").unwrap(),
            Reply::Welcome { .. }
        ));
        // closed loop until the file went O_DIRECT and more was acked, then a full window
        // in flight and the kill
        let (mut seq, mut seen_direct) = (1u64, false);
        let pid = srv.pid().expect("a running server");
        while seq <= 300 && !(seen_direct && c.acked > 120) {
            pump(&mut c, "bulk", &mut seq, total, size, window);
            seen_direct = seen_direct || replay_file_is_o_direct(pid, "bulk");
        }
        assert!(
            seen_direct,
            "{backend}: the bulk match's replay file was never open with O_DIRECT"
        );
        while seq - c.acked <= window {
            c.frame(seq, seq, 2, &testkit::payload_for("bulk", seq, size))
                .unwrap();
            seq += 1;
        }
        c.flush().unwrap();
        let (acked, sent) = (c.acked, seq - 1);
        let (srv2, mut c, last_seq) = kill_and_resume(&mut srv, c, "bulk");
        assert!(
            (acked..=sent).contains(&last_seq),
            "{backend}: resumed at {last_seq}, acked {acked}, sent {sent}"
        );
        let mut seq = last_seq + 1;
        while seq <= total {
            pump(&mut c, "bulk", &mut seq, total, size, window);
        }
        assert_eq!(
            c.wait_ack(total, Duration::from_secs(30)).unwrap(),
            Reply::Ack(total)
        );
        assert!(matches!(c.end(total).unwrap(), Reply::Sealed { .. }));
        let want: Vec<Vec<u8>> = (1..=total)
            .map(|s| testkit::payload_for("bulk", s, size))
            .collect();
        let got = testkit::http_get(srv2.http, "GET", "/matches/bulk", &[]).unwrap();
        assert_eq!(got.status, 200, "{backend}: download");
        check_replay(&got.body, "bulk", &want, true);
        assert_eq!(
            got.body,
            std::fs::read(dir.path().join("bulk.rpl")).unwrap(),
            "{backend}: the download is the sealed file"
        );
    }
}

/// Replay files of the server process `pid` open now (`live/*.rpl.part`).
fn open_replay_files(pid: u32) -> usize {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    rd.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|p| p.to_string_lossy().ends_with(".rpl.part"))
        .count()
}

/// 200 matches through a replay-fd-cache of 8 files per cache: files are opened on
/// demand and closed least recently used, about as many open as the caches hold (plus a
/// few in transit), and a kill -9 in the middle loses no acked frame; every sealed file
/// holds exactly its frames.
#[test]
fn more_matches_than_the_replay_fd_cache_holds_lose_nothing_acked() {
    for backend in BACKENDS {
        let dir = TempDir::new("jfdc");
        let mut srv = spawn_server(
            backend,
            dir.path(),
            &journal_args(&["--workers", "2", "--replay-fd-cache", "8"]),
        );
        let pid = srv.pid().unwrap();
        let caches = if *backend == "uring" { 2 } else { 1 };
        // beyond the caches: files of HELLOs still on their way from the open to the cache,
        // and (blocking) a write's descriptor the cache let go while the write ran
        let slack = 24;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut most = 0;
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    most = most.max(open_replay_files(pid));
                    std::thread::sleep(Duration::from_millis(25));
                }
                most
            })
        };
        let http = srv.http;
        let opens = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1200));
            let get = |name: &str| metric_at(http, name).unwrap_or(0);
            (
                get("replay_fd_opens_total"),
                get("replay_fd_evictions_total"),
            )
        });
        let acked = ingest_then_kill(&mut srv, 200, Duration::from_millis(1500));
        stop.store(true, std::sync::atomic::Ordering::Release);
        let most = sampler.join().unwrap();
        let (opened, evicted) = opens.join().unwrap();
        assert!(
            opened > 200 && evicted > 0,
            "{backend}: files are reopened and closed ({opened} opens, {evicted} evictions)"
        );
        assert!(
            most <= 8 * caches + slack,
            "{backend}: {most} replay files open at once with replay-fd-cache 8 x {caches}"
        );
        assert!(
            acked.iter().filter(|a| a.1 > 0).count() > 180,
            "{backend}: most matches got acks before the kill"
        );
        let srv2 = srv.restart();
        resume_and_check(&srv2, dir.path(), &acked);
    }
}

/// Under a low RLIMIT_NOFILE the automatic replay-fd-cache and connection limits fit the
/// limit with one descriptor per DS on uring (two on blocking: the socket and its clone),
/// and per-match, whose DS hold their replay file, gets fewer connections.
#[test]
fn replay_fd_cache_auto_fits_a_low_rlimit_nofile() {
    let eff = |limit: &str, args: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new("prlimit")
            .arg(format!("--nofile={limit}:{limit}"))
            .arg(env!("CARGO_BIN_EXE_recorder"))
            .args(["serve", "--print-config"])
            .args(args)
            .output()
            .expect("prlimit runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["effective"].clone()
    };
    let num = |v: &serde_json::Value, k: &str| -> u64 { v[k].as_str().unwrap().parse().unwrap() };
    for (backend, ds_fds) in [("uring", 1), ("blocking", 2)] {
        let j = eff("2000", &["--backend", backend, "--workers", "2"]);
        let p = eff(
            "2000",
            &[
                "--backend",
                backend,
                "--workers",
                "2",
                "--storage-layout",
                "per-match",
            ],
        );
        let cache = num(&j, "server.replay-fd-cache");
        let caches = if backend == "uring" { 2 } else { 1 };
        assert!((16..=1024).contains(&cache), "{backend}: cache {cache}");
        let (jm, pm) = (
            num(&j, "server.max-connections"),
            num(&p, "server.max-connections"),
        );
        let jh = num(&j, "server.http-max-connections");
        assert!(
            jm * ds_fds + jh * (ds_fds + 1) + cache * caches <= 2000,
            "{backend}: {jm} DS + {jh} HTTP + {cache} x {caches} cached files fit 2000"
        );
        assert!(jm > pm, "{backend}: journal {jm} DS, per-match {pm}");
        assert_eq!(
            num(&p, "server.replay-fd-cache"),
            0,
            "{backend}: no cache with per-match"
        );
    }
    // an explicit cache with per-match is refused with the reason
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_recorder"))
        .args(["serve", "--print-config", "--storage-layout", "per-match"])
        .args(["--replay-fd-cache", "64"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("replay-fd-cache needs storage-layout=journal"),
        "{err}"
    );
}

//! `recorder serve --backend uring` end to end under several ring / file / net
//! configurations: concurrent DS matches, downloads (whole, ranged, live tail) byte for
//! byte equal to what was sent and stored; kill -9 during ingest, restart, resume: every
//! acknowledged frame present exactly once.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The effective setup flags every worker reported contain each of `flags`, and each
/// line contains each of `facts` ("recv single", "send send-zc", ...).
fn assert_workers(srv: &Server, flags: &[&str], facts: &[&str]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = srv.log_text();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("uring worker ") && l.contains("ring flags "))
            .collect();
        if lines.len() >= 2 {
            for l in lines {
                let eff = l
                    .split("ring flags ")
                    .nth(1)
                    .and_then(|r| r.split(" (asked").next())
                    .unwrap_or("");
                for f in flags {
                    assert!(
                        eff.split('|').any(|x| x == format!("IORING_SETUP_{f}")),
                        "flag {f} not in effect: {l}"
                    );
                }
                for f in facts {
                    assert!(l.contains(f), "{f:?} not reported: {l}");
                }
            }
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "workers did not report their rings: {log}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Streams `n` matches concurrently, then checks every download and the store.
fn ingest_and_download(extra: &[&str], n: usize) {
    ingest_and_download_checked(extra, n, &[], &[])
}

fn ingest_and_download_checked(extra: &[&str], n: usize, flags: &[&str], facts: &[&str]) {
    let dir = TempDir::new("uring-cfg");
    let mut args = vec!["--workers", "2", "--ack-interval-ms", "2"];
    args.extend_from_slice(extra);
    let srv = spawn_server("uring", dir.path(), &args);
    assert_workers(&srv, flags, facts);
    let ingest = srv.ingest;
    let handles: Vec<_> = (0..n)
        .map(|i| {
            std::thread::spawn(move || {
                let id = format!("u{i:02}");
                let (sent, r) = stream_match(ingest, &id, 40 + i as u64 * 3, 200 + i * 333);
                (id, sent, r)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (id, sent, r) in &results {
        let Reply::Sealed {
            last_seq,
            file_bytes,
        } = r
        else {
            panic!("{id}: {r:?} ({})", srv.log_text())
        };
        assert_eq!(*last_seq, sent.len() as u64);
        let g = testkit::http_get(srv.http, "GET", &format!("/matches/{id}"), &[]).unwrap();
        assert_eq!(g.status, 200, "{id}");
        assert_eq!(
            g.body.len() as u64,
            *file_bytes,
            "{id}: Content-Length bytes"
        );
        check_replay(&g.body, id, sent, true);
        let disk = std::fs::read(dir.path().join(format!("{id}.rpl"))).unwrap();
        assert_eq!(disk, g.body, "{id}: download equals the stored file");
        // A range that starts and ends off any block boundary.
        let (a, b) = (13u64, (*file_bytes).min(70_000) - 7);
        let r = testkit::http_get(
            srv.http,
            "GET",
            &format!("/matches/{id}"),
            &[("Range", &format!("bytes={a}-{b}"))],
        )
        .unwrap();
        assert_eq!(r.status, 206, "{id}");
        assert_eq!(r.body, disk[a as usize..=b as usize], "{id}: range bytes");
    }
    let mut want: Vec<String> = results
        .iter()
        .map(|(id, _, _)| format!("{id}.rpl"))
        .collect();
    want.sort();
    assert_eq!(
        store_files(dir.path()),
        want,
        "the store holds exactly the sealed replays"
    );
}

#[test]
fn defaults() {
    ingest_and_download(&[], 12);
}

#[test]
fn sqpoll() {
    ingest_and_download_checked(
        &["--sqpoll", "true", "--sq-thread-idle-ms", "50"],
        8,
        &["SQPOLL"],
        &[],
    );
}

#[test]
fn defer_taskrun_single_issuer() {
    ingest_and_download_checked(
        &["--single-issuer", "true", "--defer-taskrun", "true"],
        8,
        &["SINGLE_ISSUER", "DEFER_TASKRUN"],
        &[],
    );
}

#[test]
fn registered_buffers_o_direct_fixed_ops() {
    ingest_and_download_checked(
        &[
            "--register-buffers",
            "true",
            "--write-op",
            "write-fixed",
            "--read-op",
            "read-fixed",
            "--direct",
            "required",
            "--serve-read",
            "direct",
            "--append-buffer-bytes",
            "64k",
        ],
        8,
        &[],
        &["registered"],
    );
}

#[test]
fn no_mmap_single_shot_recv_and_accept_send_zc() {
    ingest_and_download_checked(
        &[
            "--no-mmap",
            "true",
            "--recv",
            "single",
            "--accept",
            "single",
            "--send",
            "send-zc",
            "--send-zc-min-bytes",
            "4096",
        ],
        8,
        &["NO_MMAP"],
        &["recv single", "accept single", "send send-zc"],
    );
}

#[test]
fn splice_acceptor_attach_wq_coop_taskrun() {
    ingest_and_download_checked(
        &[
            "--send",
            "splice",
            "--serve-chunk-bytes",
            "64k",
            "--pipe-bytes",
            "64k",
            "--listeners",
            "acceptor",
            "--attach-wq",
            "first",
            "--coop-taskrun",
            "true",
            "--taskrun-flag",
            "true",
        ],
        8,
        &["ATTACH_WQ", "COOP_TASKRUN", "TASKRUN_FLAG"],
        &["send splice", "listeners acceptor", "attach-wq attached"],
    );
}

#[test]
fn registered_fd_only_r_disabled_tiny_buffer_ring() {
    ingest_and_download_checked(
        &[
            "--no-mmap",
            "true",
            "--registered-fd-only",
            "true",
            "--r-disabled",
            "true",
            "--buf-ring-entries",
            "8",
            "--recv-buf-bytes",
            "1024",
        ],
        6,
        &["NO_MMAP", "REGISTERED_FD_ONLY", "R_DISABLED"],
        &["buffer ring 8 x 1024"],
    );
}

#[test]
fn tiny_arena_makes_writes_wait_for_slots() {
    // 4 slots of 132 KiB (an append of 4 KiB plus 128 KiB): 8 matches queue for slots.
    ingest_and_download_checked(
        &[
            "--worker-arena-slots",
            "4",
            "--append-buffer-bytes",
            "4k",
            "--serve-chunk-bytes",
            "16k",
        ],
        8,
        &[],
        &["arena 4 x 135168"],
    );
}

#[test]
fn appends_larger_than_a_slot_are_written_in_pieces_in_order() {
    // Frames of 300 KB in slots of 132 KiB: every append is three pieces, written one after
    // the other; with 4 slots three matches also wait for each other. O_DIRECT adds the
    // tail-block rewrite at every piece boundary.
    let dir = TempDir::new("uring-pieces");
    let srv = spawn_server(
        "uring",
        dir.path(),
        &[
            "--workers",
            "1",
            "--worker-arena-slots",
            "4",
            "--append-buffer-bytes",
            "4k",
            "--serve-chunk-bytes",
            "16k",
            "--direct",
            "required",
            "--durability",
            "fdatasync",
        ],
    );
    let ingest = srv.ingest;
    let handles: Vec<_> = (0..3)
        .map(|i| {
            std::thread::spawn(move || {
                let id = format!("big{i}");
                let (sent, r) = stream_match(ingest, &id, 6, 300_000 + i * 4099);
                (id, sent, r)
            })
        })
        .collect();
    for h in handles {
        let (id, sent, r) = h.join().unwrap();
        assert!(
            matches!(r, Reply::Sealed { last_seq: 6, .. }),
            "{id}: {r:?} ({})",
            srv.log_text()
        );
        let g = testkit::http_get(srv.http, "GET", &format!("/matches/{id}"), &[]).unwrap();
        assert_eq!(g.status, 200, "{id}");
        check_replay(&g.body, &id, &sent, true);
    }
}

#[test]
fn write_buffer_stage_writes_straight_from_the_staging_buffer() {
    ingest_and_download_checked(
        &[
            "--write-buffer",
            "stage",
            "--direct",
            "required",
            "--durability",
            "fdatasync",
        ],
        6,
        &[],
        &[],
    );
}

/// storage-layout=journal in the ring configurations above: journal flushes go through
/// the same ring, arena slots (registered buffers, fixed opcodes) and write ops.
#[test]
fn journal_layout_in_the_ring_configurations() {
    let j = ["--storage-layout", "journal", "--journal-bytes", "20m"];
    let configs: &[&[&str]] = &[
        &[],
        &["--direct", "required", "--durability", "fdatasync"],
        &[
            "--register-buffers",
            "true",
            "--write-op",
            "write-fixed",
            "--read-op",
            "read-fixed",
            "--direct",
            "required",
            "--serve-read",
            "direct",
            "--append-buffer-bytes",
            "64k",
        ],
        &[
            "--sqpoll",
            "true",
            "--sq-thread-idle-ms",
            "50",
            "--durability",
            "rwf-dsync",
        ],
        &[
            "--single-issuer",
            "true",
            "--defer-taskrun",
            "true",
            "--durability",
            "odsync",
        ],
        &[
            "--worker-arena-slots",
            "4",
            "--append-buffer-bytes",
            "4k",
            "--serve-chunk-bytes",
            "16k",
        ],
        &[
            "--write-buffer",
            "stage",
            "--direct",
            "required",
            "--durability",
            "fdatasync",
        ],
        // Journal flushes linked to their fdatasync, the journal and match files in the
        // registered-file table, sockets as direct descriptors, in-ring file management.
        &[
            "--direct",
            "required",
            "--durability",
            "fdatasync",
            "--link-sync",
            "true",
            "--register-files",
            "true",
            "--direct-sockets",
            "true",
            "--file-ops",
            "ring",
            "--cqe-skip-success",
            "true",
        ],
    ];
    for c in configs {
        let mut args = j.to_vec();
        args.extend_from_slice(c);
        ingest_and_download(&args, 6);
    }
}

#[test]
fn live_tail_over_splice_follows_until_sealed() {
    live_tail_over_splice(&[]);
}

#[test]
fn live_tail_over_splice_journal_layout() {
    live_tail_over_splice(&[
        "--storage-layout",
        "journal",
        "--journal-bytes",
        "20m",
        "--direct",
        "required",
    ]);
}

fn live_tail_over_splice(extra: &[&str]) {
    let dir = TempDir::new("uring-live");
    let mut args = vec![
        "--workers",
        "2",
        "--ack-interval-ms",
        "1",
        "--send",
        "splice",
        "--serve-chunk-bytes",
        "16k",
        "--pipe-bytes",
        "16k",
    ];
    args.extend_from_slice(extra);
    let srv = spawn_server("uring", dir.path(), &args);
    let mut c = DsClient::connect(srv.ingest).unwrap();
    assert!(matches!(
        c.hello("live1", false, b"").unwrap(),
        Reply::Welcome { last_seq: 0, .. }
    ));
    let mut sent = Vec::new();
    for seq in 1..=20u64 {
        let p = testkit::payload_for("live1", seq, 3000);
        c.frame(seq, seq, if seq == 1 { 1 } else { 2 }, &p).unwrap();
        sent.push(p);
    }
    c.wait_ack(20, Duration::from_secs(10)).unwrap();
    // Start a live download, then keep streaming, then end the match.
    let mut s = TcpStream::connect(srv.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /matches/live1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        all
    });
    std::thread::sleep(Duration::from_millis(50));
    for seq in 21..=60u64 {
        let p = testkit::payload_for("live1", seq, 3000);
        c.frame(seq, seq, 2, &p).unwrap();
        sent.push(p);
        if seq % 10 == 0 {
            c.flush().unwrap();
            std::thread::sleep(Duration::from_millis(15));
        }
    }
    let r = c.end(60).unwrap();
    assert!(matches!(r, Reply::Sealed { last_seq: 60, .. }), "{r:?}");
    let all = reader.join().unwrap();
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head")
        + 4;
    let head = String::from_utf8_lossy(&all[..split]).to_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let body = dechunk(&all[split..]);
    let disk = std::fs::read(dir.path().join("live1.rpl")).unwrap();
    assert_eq!(
        body, disk,
        "the live download is the sealed file, byte for byte"
    );
    check_replay(&body, "live1", &sent, true);
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let nl = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        b = &b[nl + 2..];
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[..n]);
        assert_eq!(&b[n..n + 2], b"\r\n");
        b = &b[n + 2..];
    }
}

#[test]
fn kill9_restart_resume_loses_no_acked_frame() {
    let dir = TempDir::new("uring-kill");
    let args = [
        "--workers",
        "2",
        "--ack-interval-ms",
        "3",
        "--direct",
        "required",
        "--register-buffers",
        "true",
        "--write-op",
        "write-fixed",
        "--append-buffer-bytes",
        "16k",
    ];
    let mut srv = spawn_server("uring", dir.path(), &args);
    let ids: Vec<String> = (0..4).map(|i| format!("k{i}")).collect();
    let mut clients: Vec<DsClient> = ids
        .iter()
        .map(|id| {
            let mut c = DsClient::connect(srv.ingest).unwrap();
            assert!(matches!(
                c.hello(id, false, b"").unwrap(),
                Reply::Welcome { last_seq: 0, .. }
            ));
            c
        })
        .collect();
    let mut acked = vec![0u64; ids.len()];
    for seq in 1..=50u64 {
        for (i, c) in clients.iter_mut().enumerate() {
            c.frame(
                seq,
                seq,
                if seq % 10 == 1 { 1 } else { 2 },
                &testkit::payload_for(&ids[i], seq, 700 + i * 300),
            )
            .unwrap();
        }
        if seq == 30 {
            for (i, c) in clients.iter_mut().enumerate() {
                if let Reply::Ack(a) = c.wait_ack(30, Duration::from_secs(10)).unwrap() {
                    acked[i] = a;
                }
            }
        }
    }
    for c in clients.iter_mut() {
        c.flush().unwrap();
    }
    std::thread::sleep(Duration::from_millis(5));
    srv.kill9();
    drop(clients);
    let srv2 = srv.restart();
    for (i, id) in ids.iter().enumerate() {
        let mut c = DsClient::connect(srv2.ingest).unwrap();
        let w = c.hello(id, true, b"").unwrap();
        let Reply::Welcome { last_seq, .. } = w else {
            panic!("{id}: {w:?}")
        };
        assert!(
            last_seq >= acked[i],
            "{id}: resume point {last_seq} is before the acknowledged {}",
            acked[i]
        );
        assert!(last_seq <= 50);
        // Resend everything after the resume point (and a few before: ignored).
        for seq in last_seq.saturating_sub(3).max(1)..=60 {
            c.frame(
                seq,
                seq,
                if seq % 10 == 1 { 1 } else { 2 },
                &testkit::payload_for(id, seq, 700 + i * 300),
            )
            .unwrap();
        }
        let r = c.end(60).unwrap();
        assert!(
            matches!(r, Reply::Sealed { last_seq: 60, .. }),
            "{id}: {r:?}"
        );
        let sent: Vec<Vec<u8>> = (1..=60u64)
            .map(|s| testkit::payload_for(id, s, 700 + i * 300))
            .collect();
        let b = std::fs::read(dir.path().join(format!("{id}.rpl"))).unwrap();
        check_replay(&b, id, &sent, true);
    }
}

#[test]
fn a_client_that_stops_reading_is_cut_off_and_others_continue() {
    let dir = TempDir::new("uring-slow");
    let srv = spawn_server(
        "uring",
        dir.path(),
        &[
            "--workers",
            "1",
            "--ack-interval-ms",
            "2",
            "--http-timeout-ms",
            "500",
            "--sndbuf-bytes",
            "64k",
        ],
    );
    // ~9 MiB replay: more than the loopback socket buffers of both ends hold.
    let (sent, r) = stream_match(srv.ingest, "big", 150, 60_000);
    let Reply::Sealed { file_bytes, .. } = r else {
        panic!("{r:?}")
    };
    let mut slow = TcpStream::connect(srv.http).unwrap();
    slow.write_all(b"GET /matches/big HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Another client is served meanwhile, byte for byte.
    let g = testkit::http_get(srv.http, "GET", "/matches/big", &[]).unwrap();
    assert_eq!(g.body.len() as u64, file_bytes);
    check_replay(&g.body, "big", &sent, true);
    // The stalled one is cut off after http-timeout-ms without progress.
    std::thread::sleep(Duration::from_millis(2000));
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let _ = slow.read_to_end(&mut got); // EOF or reset, both fine
    assert!(
        (got.len() as u64) < file_bytes,
        "the stalled client got the whole replay ({} bytes): it was not cut off",
        got.len()
    );
}

#[test]
fn direct_sockets_registered_files_acceptor_handoff_and_splice() {
    ingest_and_download_checked(
        &[
            "--direct-sockets",
            "true",
            "--register-files",
            "true",
            "--listeners",
            "acceptor",
            "--send",
            "splice",
            "--serve-chunk-bytes",
            "64k",
            "--pipe-bytes",
            "64k",
        ],
        8,
        &[],
        &["file table", "listeners acceptor"],
    );
}

#[test]
fn direct_sockets_zero_copy_from_registered_buffers_direct_reads() {
    ingest_and_download_checked(
        &[
            "--direct-sockets",
            "true",
            "--register-files",
            "true",
            "--register-buffers",
            "true",
            "--read-op",
            "read-fixed",
            "--serve-read",
            "direct",
            "--send",
            "send-zc",
            "--send-zc-min-bytes",
            "4096",
            "--send-zc-fixed",
            "true",
        ],
        8,
        &[],
        &["file table", "send send-zc"],
    );
}

#[test]
fn recv_bundles_incremental_buffers_vectored_sends() {
    ingest_and_download_checked(
        &[
            "--recv-bundle",
            "true",
            "--buf-ring-inc",
            "true",
            "--recv-buf-bytes",
            "64k",
            "--buf-ring-entries",
            "16",
            "--send-batch",
            "vectored",
        ],
        8,
        &[],
        &["incremental"],
    );
}

#[test]
fn batched_waits_in_the_enter_skip_success_no_iowait_linked_syncs() {
    ingest_and_download_checked(
        &[
            "--wait-nr",
            "8",
            "--wait-timeout",
            "ext-arg",
            "--min-wait-usec",
            "200",
            "--cqe-skip-success",
            "true",
            "--no-iowait",
            "true",
            "--durability",
            "fdatasync",
            "--direct",
            "required",
            "--link-sync",
            "true",
            "--force-async",
            "1",
            "--send",
            "splice",
            "--serve-chunk-bytes",
            "64k",
            "--pipe-bytes",
            "64k",
        ],
        8,
        &[],
        &[],
    );
}

#[test]
fn write_behind_prealloc_through_the_ring_napi() {
    ingest_and_download_checked(
        &[
            "--durability",
            "fdatasync",
            "--write-behind",
            "true",
            // with the journal (the default) write-behind needs the ring's replay writes
            "--replay-write",
            "ring",
            "--prealloc",
            "true",
            "--prealloc-bytes",
            "1m",
            "--napi-busy-poll-us",
            "20",
        ],
        6,
        &[],
        &["napi busy poll 20 us"],
    );
}

#[test]
fn in_ring_file_management_creates_and_seals_matches() {
    ingest_and_download_checked(
        &[
            "--file-ops",
            "ring",
            "--durability",
            "fdatasync",
            "--direct",
            "required",
            "--prealloc",
            "true",
        ],
        6,
        &[],
        &[],
    );
}

#[test]
fn in_ring_file_management_opens_straight_into_the_file_table() {
    ingest_and_download_checked(
        &[
            "--file-ops",
            "ring",
            "--register-files",
            "true",
            "--durability",
            "fdatasync",
        ],
        6,
        &[],
        &["file table"],
    );
}

/// Downloads of one replay on `conns` connections at once, each client pausing before it
/// reads, so that every connection wants an arena slot while the few there are stay held
/// (small socket send buffers keep the SENDs pending): each download must still finish,
/// byte for byte.
fn concurrent_downloads_beyond_the_arena(extra: &[&str], conns: usize) {
    let dir = TempDir::new("uring-arena-wait");
    let mut args = vec![
        "--workers",
        "1",
        "--serve-chunk-bytes",
        "16k",
        "--sndbuf-bytes",
        "16384",
    ];
    args.extend_from_slice(extra);
    let srv = spawn_server("uring", dir.path(), &args);
    let (_, r) = stream_match(srv.ingest, "w00", 40, 20_000);
    assert!(matches!(r, Reply::Sealed { .. }), "{r:?}");
    let disk = std::fs::read(dir.path().join("w00.rpl")).unwrap();
    let http = srv.http;
    let gate = std::sync::Arc::new(std::sync::Barrier::new(conns));
    let handles: Vec<_> = (0..conns)
        .map(|_| {
            let gate = gate.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(http).unwrap();
                s.write_all(b"GET /matches/w00 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                    .unwrap();
                gate.wait();
                std::thread::sleep(Duration::from_millis(300));
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut got = Vec::new();
                let r = s.read_to_end(&mut got);
                (r.map_err(|e| e.to_string()), got)
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (r, got) = h.join().unwrap();
        let body = got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| &got[p + 4..])
            .unwrap_or(&[]);
        assert!(
            r.is_ok() && body == disk.as_slice(),
            "download {i} of {conns}: {r:?}, {} of {} body bytes (a connection that found the arena empty must be resumed when a slot frees) ({})",
            body.len(),
            disk.len(),
            srv.log_text()
        );
    }
}

/// Regression: a file output whose READ found the arena empty was never resumed, so with
/// more concurrent downloads than slots (SEND_ZC holds a slot until its notification:
/// `net.send=send-zc` under `wrk -c32` served 0 requests in 5 s) the download stalled.
#[test]
fn downloads_waiting_for_an_arena_slot_are_resumed() {
    concurrent_downloads_beyond_the_arena(&["--worker-arena-slots", "4"], 8);
}

#[test]
fn send_zc_downloads_waiting_for_an_arena_slot_are_resumed() {
    concurrent_downloads_beyond_the_arena(
        &[
            "--worker-arena-slots",
            "4",
            "--send",
            "send-zc",
            "--register-buffers",
            "true",
        ],
        8,
    );
}

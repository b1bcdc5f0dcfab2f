//! kill -9 during ingest, restart, DS resume: every acknowledged frame is present exactly
//! once and the files are valid. Graceful shutdown leaves matches resumable.

mod common;
use common::*;
use std::time::Duration;

/// Streams frames from `from` on, recording the highest ACK, until the connection breaks.
fn stream_until_broken(c: &mut DsClient, id: &str, from: u64, max: u64) -> u64 {
    let mut seq = from;
    while seq <= max {
        let p = testkit::payload_for(id, seq, 700);
        if c.frame(seq, seq, if seq % 25 == 1 { 1 } else { 2 }, &p)
            .is_err()
            || c.flush().is_err()
        {
            break;
        }
        seq += 1;
        // read acks without blocking long
        if let Ok(Reply::Closed) = c.recv(Duration::from_millis(1)) {
            break;
        }
    }
    seq - 1
}

#[test]
fn kill9_restart_resume_loses_no_acked_frame() {
    kill9_restart_resume(&["--ack-interval-ms", "2"]);
}

#[test]
fn kill9_restart_resume_o_direct_fdatasync() {
    kill9_restart_resume(&[
        "--ack-interval-ms",
        "2",
        "--direct",
        "required",
        "--durability",
        "fdatasync",
        "--append-buffer-bytes",
        "16k",
    ]);
}

fn kill9_restart_resume(args: &[&str]) {
    let dir = TempDir::new("kill9");
    let mut srv = spawn_server(&default_backend(), dir.path(), args);
    let ids: Vec<String> = (0..6).map(|i| format!("k{i}")).collect();
    let ingest = srv.ingest;
    let threads: Vec<_> = ids
        .iter()
        .cloned()
        .map(|id| {
            std::thread::spawn(move || {
                let mut c = DsClient::connect(ingest).unwrap();
                let w = c.hello(&id, false, b"");
                assert!(
                    matches!(w, Ok(Reply::Welcome { last_seq: 0, .. })),
                    "{id}: {w:?}"
                );
                let sent = stream_until_broken(&mut c, &id, 1, 1_000_000);
                // drain what is left to read
                while let Ok(r) = c.recv(Duration::from_millis(200)) {
                    if r == Reply::Closed {
                        break;
                    }
                }
                (id, c.acked, sent)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    srv.kill9();
    let acked: Vec<(String, u64, u64)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (id, a, s) in &acked {
        assert!(*a > 0, "{id}: nothing was acked before the kill");
        assert!(a <= s);
    }
    let srv2 = srv.restart();
    for (id, a, _) in &acked {
        let mut c = DsClient::connect(srv2.ingest).unwrap();
        let r = c.hello(id, true, b"").unwrap();
        let Reply::Welcome { last_seq, .. } = r else {
            panic!("{id}: {r:?}")
        };
        assert!(
            last_seq >= *a,
            "{id}: recorder says {last_seq} is durable but {a} was acked"
        );
        // resend from the recorder's point, plus a few more, then END
        let end = last_seq + 20;
        for seq in last_seq + 1..=end {
            c.frame(seq, seq, 2, &testkit::payload_for(id, seq, 700))
                .unwrap();
        }
        let r = c.end(end).unwrap();
        assert!(
            matches!(r, Reply::Sealed { last_seq: l, .. } if l == end),
            "{id}: {r:?}"
        );
        let b = std::fs::read(dir.path().join(format!("{id}.rpl"))).unwrap();
        let want: Vec<Vec<u8>> = (1..=end)
            .map(|s| testkit::payload_for(id, s, 700))
            .collect();
        check_replay(&b, id, &want, true);
    }
    assert!(store_files(dir.path())
        .iter()
        .all(|f| f.ends_with(".rpl") && !f.contains('/')));
}

#[test]
fn torn_tail_is_cut_on_restart() {
    let dir = TempDir::new("torn");
    let mut srv = spawn_server(&default_backend(), dir.path(), &["--ack-interval-ms", "0"]);
    let mut c = DsClient::connect(srv.ingest).unwrap();
    assert!(matches!(
        c.hello("t", false, b"").unwrap(),
        Reply::Welcome { .. }
    ));
    let p: Vec<Vec<u8>> = (1..=10)
        .map(|s| testkit::payload_for("t", s, 333))
        .collect();
    for (i, x) in p.iter().enumerate() {
        c.frame(i as u64 + 1, 1, 2, x).unwrap();
    }
    assert_eq!(
        c.wait_ack(10, Duration::from_secs(10)).unwrap(),
        Reply::Ack(10)
    );
    srv.kill9();
    // simulate a torn write and zero padding after the last whole frame
    let part = dir.path().join("live/t.rpl.part");
    let mut b = std::fs::read(&part).unwrap();
    let whole = b.len();
    let mut torn = Vec::new();
    engine::protocol::encode_frame(&mut torn, 11, 1, 2, b"never acked");
    b.extend_from_slice(&torn[..20]);
    b.extend_from_slice(&[0x55; 30]);
    b.extend_from_slice(&[0; 4096]);
    std::fs::write(&part, &b).unwrap();
    let srv2 = srv.restart();
    assert!(
        srv2.log_text().contains("cut"),
        "recovery says what it cut: {}",
        srv2.log_text()
    );
    assert_eq!(std::fs::metadata(&part).unwrap().len() as usize, whole);
    // live download of the recovered match: valid, unsealed, 10 frames
    let mut c = DsClient::connect(srv2.ingest).unwrap();
    assert!(matches!(
        c.hello("t", true, b"").unwrap(),
        Reply::Welcome { last_seq: 10, .. }
    ));
    let r = c.end(10).unwrap();
    assert!(matches!(r, Reply::Sealed { last_seq: 10, .. }), "{r:?}");
    check_replay(
        &std::fs::read(dir.path().join("t.rpl")).unwrap(),
        "t",
        &p,
        true,
    );
}

#[test]
fn sigterm_flushes_acks_and_leaves_matches_resumable() {
    let dir = TempDir::new("term");
    let mut srv = spawn_server(
        &default_backend(),
        dir.path(),
        &["--ack-interval-ms", "200"],
    );
    let mut c = DsClient::connect(srv.ingest).unwrap();
    assert!(matches!(
        c.hello("g", false, b"").unwrap(),
        Reply::Welcome { .. }
    ));
    let p: Vec<Vec<u8>> = (1..=7).map(|s| testkit::payload_for("g", s, 100)).collect();
    for (i, x) in p.iter().enumerate() {
        c.frame(i as u64 + 1, 1, 2, x).unwrap();
    }
    c.flush().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(srv.terminate(), "graceful stop exits 0");
    // everything received was flushed and acked, then SHUTTING_DOWN
    let mut last = None;
    loop {
        match c.recv(Duration::from_secs(5)).unwrap() {
            Reply::Ack(_) => {}
            Reply::Closed => break,
            r => last = Some(r),
        }
    }
    assert_eq!(c.acked, 7);
    assert_eq!(
        last.and_then(|r| r.error_code()),
        Some(engine::protocol::ErrorCode::ShuttingDown)
    );
    let srv2 = srv.restart();
    let mut c = DsClient::connect(srv2.ingest).unwrap();
    assert!(matches!(
        c.hello("g", true, b"").unwrap(),
        Reply::Welcome { last_seq: 7, .. }
    ));
    assert!(matches!(
        c.end(7).unwrap(),
        Reply::Sealed { last_seq: 7, .. }
    ));
    check_replay(
        &std::fs::read(dir.path().join("g.rpl")).unwrap(),
        "g",
        &p,
        true,
    );
}

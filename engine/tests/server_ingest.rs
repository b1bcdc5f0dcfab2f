//! DS ingest end to end against a real `recorder serve` (blocking backend by default;
//! RECORDER_TEST_BACKEND=uring runs the same tests on the io_uring backend).

mod common;
use common::*;
use engine::protocol::{self, ErrorCode, Msg};
use std::time::Duration;

#[test]
fn many_matches_concurrently_bytes_identical_over_http() {
    many_matches(&["--ack-interval-ms", "5"]);
}

#[test]
fn many_matches_o_direct_fdatasync() {
    many_matches(&[
        "--ack-interval-ms",
        "3",
        "--direct",
        "required",
        "--durability",
        "fdatasync",
        "--append-buffer-bytes",
        "8k",
    ]);
}

#[test]
fn many_matches_rwf_dsync_prealloc_per_batch_acks() {
    many_matches(&[
        "--ack-interval-ms",
        "0",
        "--durability",
        "rwf-dsync",
        "--prealloc",
        "true",
        "--prealloc-bytes",
        "1m",
        "--write-op",
        "writev",
    ]);
}

#[test]
fn many_matches_odsync_direct_received_acks() {
    many_matches(&[
        "--ack-mode",
        "received",
        "--direct",
        "optional",
        "--durability",
        "odsync",
    ]);
}

#[test]
fn many_matches_journal_layout_both_backends() {
    for backend in ["blocking", "uring"] {
        for durability in [
            &["--direct", "required", "--durability", "fdatasync"][..],
            &["--durability", "rwf-dsync", "--write-op", "writev"],
            &["--direct", "optional", "--durability", "odsync"],
        ] {
            let mut args = vec![
                "--storage-layout",
                "journal",
                "--journal-bytes",
                "20m",
                "--ack-interval-ms",
                "3",
            ];
            args.extend_from_slice(durability);
            many_matches_on(backend, &args);
        }
    }
}

fn many_matches(args: &[&str]) {
    many_matches_on(&default_backend(), args)
}

fn many_matches_on(backend: &str, args: &[&str]) {
    let dir = TempDir::new("many");
    let srv = spawn_server(backend, dir.path(), args);
    let ingest = srv.ingest;
    let handles: Vec<_> = (0..24)
        .map(|i| {
            std::thread::spawn(move || {
                let id = format!("m{i:02}");
                let (sent, r) = stream_match(ingest, &id, 60 + i as u64, 300 + i * 50);
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
            panic!("{id}: {r:?}")
        };
        assert_eq!(*last_seq, sent.len() as u64);
        let g = testkit::http_get(srv.http, "GET", &format!("/matches/{id}"), &[]).unwrap();
        assert_eq!(g.status, 200, "{id}");
        assert_eq!(g.body.len() as u64, *file_bytes);
        assert_eq!(g.header("accept-ranges"), Some("bytes"));
        assert!(g.header("etag").is_some());
        check_replay(&g.body, id, sent, true);
        let disk = std::fs::read(dir.path().join(format!("{id}.rpl"))).unwrap();
        assert_eq!(disk, g.body, "{id}: download equals the stored file");
    }
    // the store holds exactly the sealed replays
    let mut want: Vec<String> = results
        .iter()
        .map(|(id, _, _)| format!("{id}.rpl"))
        .collect();
    want.sort();
    assert_eq!(store_files(dir.path()), want);
    // listing
    let l = testkit::http_get(srv.http, "GET", "/matches", &[]).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&l.body).unwrap();
    let list = v["matches"].as_array().unwrap();
    assert_eq!(list.len(), 24);
    let m5 = list.iter().find(|m| m["id"] == "m05").unwrap();
    assert_eq!(m5["state"], "sealed");
    assert_eq!(m5["frames"], 65);
    assert_eq!(m5["first_tick"], 2);
    assert_eq!(m5["last_tick"], 130);
    // index
    let ix = testkit::http_get(srv.http, "GET", "/matches/m05/index", &[]).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&ix.body).unwrap();
    let seqs: Vec<u64> = v["keyframes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 11, 21, 31, 41, 51, 61]);
}

#[test]
fn acks_are_cumulative_and_resends_are_ignored() {
    let dir = TempDir::new("resend");
    let srv = spawn_server(&default_backend(), dir.path(), &["--ack-interval-ms", "0"]);
    let mut c = DsClient::connect(srv.ingest).unwrap();
    assert!(matches!(
        c.hello("r1", false, b"").unwrap(),
        Reply::Welcome { last_seq: 0, .. }
    ));
    let p: Vec<Vec<u8>> = (1..=5)
        .map(|s| testkit::payload_for("r1", s, 100))
        .collect();
    for s in 1..=5u64 {
        c.frame(s, s, 2, &p[s as usize - 1]).unwrap();
    }
    assert_eq!(
        c.wait_ack(5, Duration::from_secs(10)).unwrap(),
        Reply::Ack(5)
    );
    // resend 3..=5 with different bytes: ignored, ACK 5 again
    for s in 3..=5u64 {
        c.frame(s, s, 2, b"DIFFERENT").unwrap();
    }
    c.flush().unwrap();
    assert_eq!(c.recv(Duration::from_secs(10)).unwrap(), Reply::Ack(5));
    let r = c.end(5).unwrap();
    assert!(matches!(r, Reply::Sealed { last_seq: 5, .. }), "{r:?}");
    let b = std::fs::read(dir.path().join("r1.rpl")).unwrap();
    check_replay(&b, "r1", &p, true);
}

/// Sends raw bytes after an optional HELLO and expects a given error code.
fn expect_error(srv: &Server, hello: Option<(&str, bool)>, raw: &[u8], code: ErrorCode) -> String {
    let mut c = DsClient::connect(srv.ingest).unwrap();
    if let Some((id, resume)) = hello {
        let w = c.hello(id, resume, b"").unwrap();
        assert!(matches!(w, Reply::Welcome { .. }), "{w:?}");
    }
    c.send_raw(raw).unwrap();
    loop {
        match c.recv(Duration::from_secs(10)).unwrap() {
            Reply::Ack(_) => continue,
            Reply::Error {
                code: Some(got),
                text,
            } => {
                assert_eq!(got, code, "{text}");
                assert_eq!(
                    c.recv(Duration::from_secs(5)).unwrap(),
                    Reply::Closed,
                    "the recorder closes after ERROR"
                );
                return text;
            }
            other => panic!("expected {code}, got {other:?}"),
        }
    }
}

fn frame_bytes(seq: u64, tick: u64, kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    protocol::encode_frame(&mut v, seq, tick, kind, payload);
    v
}

#[test]
fn bad_input_gets_its_error_and_other_matches_continue() {
    let dir = TempDir::new("bad");
    let srv = spawn_server(
        &default_backend(),
        dir.path(),
        &["--max-frame-bytes", "4096", "--ack-interval-ms", "1"],
    );
    // a healthy match in progress the whole time
    let mut good = DsClient::connect(srv.ingest).unwrap();
    assert!(matches!(
        good.hello("good", false, b"").unwrap(),
        Reply::Welcome { .. }
    ));
    let mut gp = Vec::new();
    let mut gseq = 0u64;
    let mut good_step = |good: &mut DsClient| {
        gseq += 1;
        let p = testkit::payload_for("good", gseq, 200);
        good.frame(gseq, gseq, 2, &p).unwrap();
        gp.push(p);
        assert_eq!(
            good.wait_ack(gseq, Duration::from_secs(10)).unwrap(),
            Reply::Ack(gseq)
        );
    };
    good_step(&mut good);

    // garbage before HELLO: a huge length
    let t = expect_error(
        &srv,
        None,
        b"GET / HTTP/1.1\r\n\r\n",
        ErrorCode::FrameTooLarge,
    );
    assert!(t.contains("exceeds"), "{t}");
    // unknown kind
    expect_error(&srv, None, &[1, 0, 0, 0, 0x7f], ErrorCode::Malformed);
    // FRAME before HELLO
    expect_error(
        &srv,
        None,
        &frame_bytes(1, 1, 2, b"x"),
        ErrorCode::Unexpected,
    );
    // wrong version
    let mut v = Vec::new();
    protocol::encode(
        &mut v,
        &Msg::Hello {
            version: 9,
            resume: false,
            match_id: "vv",
            credential: b"",
        },
    );
    let t = expect_error(&srv, None, &v, ErrorCode::BadVersion);
    assert!(t.contains('9'), "{t}");
    // bad match ids
    for id in ["../x", "", &"x".repeat(65), "a/b", "-a"] {
        let mut v = Vec::new();
        // encode by hand: the codec asserts nothing about the id
        protocol::encode(
            &mut v,
            &Msg::Hello {
                version: 1,
                resume: false,
                match_id: id,
                credential: b"",
            },
        );
        expect_error(&srv, None, &v, ErrorCode::BadMatchId);
    }
    // oversized frame (payload over max-frame-bytes but message under the +64 slack)
    let t = expect_error(
        &srv,
        Some(("big", false)),
        &frame_bytes(1, 1, 2, &[7u8; 4100]),
        ErrorCode::FrameTooLarge,
    );
    assert!(t.contains("4096"), "{t}");
    // oversized length announced
    expect_error(
        &srv,
        Some(("big2", false)),
        &(1u32 << 30).to_le_bytes(),
        ErrorCode::FrameTooLarge,
    );
    // bad CRC after two good frames: the good ones are kept and acked, then the error
    let mut raw = frame_bytes(1, 1, 1, b"one");
    raw.extend(frame_bytes(2, 2, 2, b"two"));
    let mut bad = frame_bytes(3, 3, 2, b"three");
    let l = bad.len();
    bad[l - 1] ^= 0xff;
    raw.extend(bad);
    let t = expect_error(&srv, Some(("crc", false)), &raw, ErrorCode::BadCrc);
    assert!(t.contains("frame 3"), "{t}");
    // sequence gap, tick regression, bad kind, END mismatch
    expect_error(
        &srv,
        Some(("gap", false)),
        &frame_bytes(2, 1, 2, b"x"),
        ErrorCode::SeqGap,
    );
    let mut raw = frame_bytes(1, 10, 2, b"a");
    raw.extend(frame_bytes(2, 9, 2, b"b"));
    expect_error(&srv, Some(("tick", false)), &raw, ErrorCode::TickRegression);
    expect_error(
        &srv,
        Some(("kind", false)),
        &frame_bytes(1, 1, 3, b"x"),
        ErrorCode::BadFrameKind,
    );
    let mut v = Vec::new();
    protocol::encode(&mut v, &Msg::End { last_seq: 7 });
    expect_error(&srv, Some(("endm", false)), &v, ErrorCode::Unexpected);
    // truncated frame then EOF: connection closes, nothing stored beyond the header
    {
        let mut c = DsClient::connect(srv.ingest).unwrap();
        assert!(matches!(
            c.hello("trunc", false, b"").unwrap(),
            Reply::Welcome { .. }
        ));
        let f = frame_bytes(1, 1, 2, &[1u8; 500]);
        c.send_raw(&f[..200]).unwrap();
        c.stream.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(c.recv(Duration::from_secs(10)).unwrap(), Reply::Closed);
    }
    // second writer and exists-without-resume
    {
        let mut c2 = DsClient::connect(srv.ingest).unwrap();
        let r = c2.hello("good", true, b"").unwrap();
        assert_eq!(r.error_code(), Some(ErrorCode::MatchBusy), "{r:?}");
        let mut c3 = DsClient::connect(srv.ingest).unwrap();
        assert_eq!(
            c3.hello("crc", false, b"").unwrap().error_code(),
            Some(ErrorCode::MatchExists)
        );
    }
    // the healthy match never noticed
    for _ in 0..5 {
        good_step(&mut good);
    }
    let r = good.end(gseq).unwrap();
    assert!(matches!(r, Reply::Sealed { .. }), "{r:?}");
    // sealed: cannot be written again
    let mut c = DsClient::connect(srv.ingest).unwrap();
    assert_eq!(
        c.hello("good", true, b"").unwrap().error_code(),
        Some(ErrorCode::MatchSealed)
    );
    check_replay(
        &std::fs::read(dir.path().join("good.rpl")).unwrap(),
        "good",
        &gp,
        true,
    );
    // frames validated before the bad CRC were stored
    let crc = std::fs::read(dir.path().join("live/crc.rpl.part")).unwrap();
    check_replay(&crc, "crc", &[b"one".to_vec(), b"two".to_vec()], false);
    // the store holds only what it should: no file for refused ids
    let files = store_files(dir.path());
    for f in &files {
        assert!(
            [
                "good.rpl",
                "live/big.rpl.part",
                "live/big2.rpl.part",
                "live/crc.rpl.part",
                "live/gap.rpl.part",
                "live/tick.rpl.part",
                "live/kind.rpl.part",
                "live/endm.rpl.part",
                "live/trunc.rpl.part"
            ]
            .contains(&f.as_str()),
            "unexpected file {f} in the store: {files:?}"
        );
    }
    assert!(!dir.path().parent().unwrap().join("x").exists());
    // metrics count the errors by code
    let m = testkit::http_get(srv.http, "GET", "/metrics", &[]).unwrap();
    let text = String::from_utf8(m.body).unwrap();
    assert!(
        text.contains("recorder_ds_errors_total{code=\"BAD_CRC\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("recorder_ds_errors_total{code=\"BAD_MATCH_ID\"} 5"),
        "{text}"
    );
}

#[test]
fn credential_and_limits() {
    let dir = TempDir::new("limits");
    let srv = spawn_server(
        &default_backend(),
        dir.path(),
        &[
            "--ds-token",
            "s3cret",
            "--max-matches",
            "2",
            "--max-connections",
            "3",
            "--idle-timeout-ms",
            "2000",
        ],
    );
    let mut c = DsClient::connect(srv.ingest).unwrap();
    assert_eq!(
        c.hello("a", false, b"wrong").unwrap().error_code(),
        Some(ErrorCode::AuthFailed)
    );
    drop(c);
    std::thread::sleep(Duration::from_millis(300)); // the refused connection is gone
    let mut a = DsClient::connect(srv.ingest).unwrap();
    assert!(matches!(
        a.hello("a", false, b"s3cret").unwrap(),
        Reply::Welcome { .. }
    ));
    let mut b = DsClient::connect(srv.ingest).unwrap();
    assert!(matches!(
        b.hello("b", false, b"s3cret").unwrap(),
        Reply::Welcome { .. }
    ));
    let mut c = DsClient::connect(srv.ingest).unwrap();
    let r = c.hello("c", false, b"s3cret").unwrap();
    assert_eq!(r.error_code(), Some(ErrorCode::TooManyMatches), "{r:?}");
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    // 3 connections open (a, b, hold): the 4th is refused
    let _hold = DsClient::connect(srv.ingest).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut d = DsClient::connect(srv.ingest).unwrap();
    let r = d.recv(Duration::from_secs(5)).unwrap();
    assert_eq!(r.error_code(), Some(ErrorCode::TooManyConnections), "{r:?}");
    // idle timeout closes a silent DS with IDLE_TIMEOUT; its match stays resumable
    let r = a.recv(Duration::from_secs(5)).unwrap();
    assert_eq!(r.error_code(), Some(ErrorCode::IdleTimeout), "{r:?}");
    drop(a);
    drop(d);
    std::thread::sleep(Duration::from_millis(300));
    let mut a2 = DsClient::connect(srv.ingest).unwrap();
    let r = a2.hello("a", true, b"s3cret").unwrap();
    assert!(matches!(r, Reply::Welcome { last_seq: 0, .. }), "{r:?}");
}

#[test]
fn empty_match_seals_and_http_connection_limit() {
    let dir = TempDir::new("empty");
    let srv = spawn_server(
        &default_backend(),
        dir.path(),
        &["--http-max-connections", "1"],
    );
    let mut c = DsClient::connect(srv.ingest).unwrap();
    assert!(matches!(
        c.hello("e0", false, b"").unwrap(),
        Reply::Welcome { .. }
    ));
    let r = c.end(0).unwrap();
    let Reply::Sealed {
        last_seq: 0,
        file_bytes,
    } = r
    else {
        panic!("{r:?}")
    };
    let b = std::fs::read(dir.path().join("e0.rpl")).unwrap();
    assert_eq!(b.len() as u64, file_bytes);
    check_replay(&b, "e0", &[], true);
    // one HTTP connection held open: the next gets 503
    let mut held = std::net::TcpStream::connect(srv.http).unwrap();
    let r = testkit::http_exchange(
        &mut held,
        b"GET /matches HTTP/1.1\r\nHost: a\r\n\r\n",
        false,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let r = testkit::http_get(srv.http, "GET", "/matches", &[]).unwrap();
    assert_eq!(r.status, 503);
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    let r = testkit::http_get(srv.http, "GET", "/matches/e0/index", &[]).unwrap();
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        (
            v["frames"].as_u64(),
            v["keyframes"].as_array().map(|a| a.len())
        ),
        (Some(0), Some(0))
    );
    assert!(v["first_tick"].is_null());
}

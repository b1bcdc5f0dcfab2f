//! Connections the recorder drops (issue 12, bug 13): the blocking backend dropped
//! connections under load without a word. Every connection the server drops must be logged
//! with its reason and counted in /metrics, on both backends.

#[macro_use]
mod common;
use common::*;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Bug 13: an HTTP client asks for an 8 MiB replay and never reads it (a 4 KiB receive
/// buffer). After http-timeout-ms the recorder drops the connection: it logs that, with
/// the peer and the reason (send timeout), and counts it in
/// recorder_http_connections_dropped_total; a client that reads everything is not counted.
fn dropped_connection_is_logged_with_its_reason_and_counted(backend: &str) {
    let dir = TempDir::new("drops13");
    let srv = spawn_server(backend, dir.path(), &["--http-timeout-ms", "500"]);
    let (payloads, r) = stream_match(srv.ingest, "big13", 128, 64 << 10);
    assert!(matches!(r, Reply::Sealed { .. }), "{r:?}");
    let whole = testkit::http_get(srv.http, "GET", "/matches/big13", &[]).unwrap();
    check_replay(&whole.body, "big13", &payloads, true);
    assert_eq!(metric(&srv, "recorder_http_connections_dropped_total"), 0);

    let mut s = std::net::TcpStream::connect(srv.http).unwrap();
    engine::sys::netops::sockopt::set_rcvbuf(s.as_raw_fd(), 4096).unwrap();
    s.write_all(b"GET /matches/big13 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let counted = {
        let until = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let n = metric(&srv, "recorder_http_connections_dropped_total");
            if n > 0 || std::time::Instant::now() > until {
                break n;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(
        counted, 1,
        "{backend}: the stalled download was not counted once"
    );
    let log = srv.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("dropped the HTTP connection"))
        .unwrap_or_else(|| panic!("{backend}: the drop is not logged:\n{log}"));
    assert!(
        line.contains("send timeout") && line.contains("500 ms"),
        "{backend}: the reason is not in the log line: {line}"
    );
    drop(s);
}
both_backends!(dropped_connection_is_logged_with_its_reason_and_counted);

/// Bug 13, DS side: a DS that resets its connection in the middle of a match (a crash,
/// SO_LINGER 0) is a dropped DS connection: logged with the DS's address and the reason
/// (the reset), and counted once in recorder_ds_connections_dropped_total; a DS that ends
/// its match normally is not counted.
fn ds_connection_reset_is_logged_with_its_reason_and_counted(backend: &str) {
    let dir = TempDir::new("drops13ds");
    let srv = spawn_server(backend, dir.path(), &[]);
    let (_, r) = stream_match(srv.ingest, "whole13", 3, 100);
    assert!(matches!(r, Reply::Sealed { .. }), "{r:?}");
    assert_eq!(metric(&srv, "recorder_ds_connections_dropped_total"), 0);

    let mut c = DsClient::connect(srv.ingest).unwrap();
    let me = c.stream.local_addr().unwrap().to_string();
    assert!(matches!(
        c.hello("reset13", false, b"").unwrap(),
        Reply::Welcome { .. }
    ));
    for seq in 1..=3 {
        c.frame(
            seq,
            seq,
            if seq == 1 { 1 } else { 2 },
            &testkit::payload_for("reset13", seq, 500),
        )
        .unwrap();
    }
    let r = c.wait_ack(3, Duration::from_secs(10));
    assert!(
        matches!(r, Ok(Reply::Ack(3))),
        "{backend}: frames not acked: {r:?}"
    );
    c.reset();
    let counted = {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let n = metric(&srv, "recorder_ds_connections_dropped_total");
            if n > 0 || std::time::Instant::now() > until {
                break n;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(
        counted, 1,
        "{backend}: the reset DS connection was not counted once"
    );
    // The counter can be seen before the log line reaches the file (both are written by
    // the worker, the line after the count): wait for the line as for the count.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = srv.log_text();
        if log.contains("dropped the DS connection") || std::time::Instant::now() > until {
            break log;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let line = log
        .lines()
        .find(|l| l.contains("dropped the DS connection"))
        .unwrap_or_else(|| panic!("{backend}: the drop is not logged:\n{log}"));
    assert!(
        line.contains(&me) && line.to_lowercase().contains("reset"),
        "{backend}: the DS's address ({me}) or the reason is not in the log line: {line}"
    );
}
both_backends!(ds_connection_reset_is_logged_with_its_reason_and_counted);

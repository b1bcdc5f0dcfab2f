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

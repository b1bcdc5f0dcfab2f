//! Restarting a recorder on the same ports right after it died (issue 12, bug 10): the new
//! server must bind at once (no "Address already in use") and never share its port with a
//! dead process's listeners, which after a kill -9 of the io_uring backend stay open until
//! the kernel has torn the dead rings down.

mod common;
use common::*;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

/// A free loopback port (bound and released; the kernel does not hand it out again soon).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Every one of `n` new DS connections gets WELCOME and every one of `n` HTTP requests an
/// answer from the server at `srv`; a connection hashed to a dead listener gets neither.
fn every_connection_is_answered(srv: &Server, round: usize, n: usize) {
    for k in 0..n {
        let id = format!("r{round}-c{k}");
        let mut c = DsClient::connect(srv.ingest).unwrap();
        let r = c.hello(&id, false, b"");
        assert!(
            matches!(r, Ok(Reply::Welcome { .. })),
            "round {round}, DS connection {k}: {r:?} instead of WELCOME"
        );
        let h = testkit::http_get(srv.http, "GET", "/matches", &[]);
        assert!(
            matches!(h, Ok(ref h) if h.status == 200),
            "round {round}, HTTP request {k}: {h:?}"
        );
    }
}

/// Bug 10: kill -9 a io_uring recorder with reuseport listeners (one per worker on both
/// ports, a DS connected so its ring has work in flight) and restart it at once on the
/// same ports, repeatedly: each restart comes up, and every connection after it says it
/// listens is answered by it.
#[test]
fn restart_right_after_kill9_binds_at_once_and_never_beside_dead_listeners() {
    let dir = TempDir::new("restart10");
    let ingest = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let extra = [
        "--ingest-addr",
        ingest.as_str(),
        "--http-addr",
        http.as_str(),
        "--workers",
        "2",
        "--listeners",
        "reuseport",
    ];
    let mut srv = spawn_server("uring", dir.path(), &extra);
    for round in 0..6 {
        let mut busy = DsClient::connect(srv.ingest).unwrap();
        assert!(matches!(
            busy.hello(&format!("busy{round}"), false, b""),
            Ok(Reply::Welcome { .. })
        ));
        srv.kill9();
        let next = srv.restart();
        drop(busy);
        every_connection_is_answered(&next, round, 10);
        srv = next;
    }
}

/// Bug 10, made deterministic: a SO_REUSEPORT listener of another process of the same user
/// (what a dead recorder's listener is until its rings are torn down) holds the ingest
/// port when the recorder starts. The recorder must neither fail with "Address already in
/// use" nor bind beside it: it waits (logged) until the port is free, then every
/// connection is answered by it.
#[test]
fn restart_waits_for_a_lingering_reuseport_listener_instead_of_sharing_the_port() {
    for backend in ["uring", "blocking"] {
        let dir = TempDir::new("linger10");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let lingering = engine::sys::netops::sockopt::listen(addr, true, 16).unwrap();
        let ingest = addr.to_string();
        let mut extra = vec!["--ingest-addr", ingest.as_str()];
        if backend == "uring" {
            extra.extend(["--workers", "2", "--listeners", "reuseport"]);
        }
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2000));
            drop(lingering);
        });
        let srv = spawn_server(backend, dir.path(), &extra);
        // a server that bound beside the lingering listener is up before it is released:
        // some of these connections then hash to it and are never answered
        every_connection_is_answered(&srv, 0, 10);
        release.join().unwrap();
        let log = srv.log_text();
        assert!(
            log.contains("is in use") && log.contains("bound after waiting"),
            "{backend}: the wait for the port is not logged:\n{log}"
        );
    }
}

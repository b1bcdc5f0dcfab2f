//! Regression for the SQPOLL "submission queue is still full after a flush" death
//! (brief uring-fix, problem 1): with SQPOLL the SQ drains only when the kernel's SQ
//! thread runs, so a flush can leave it full. A tiny SQ, SQPOLL and many connections
//! arriving and streaming at once must be waited out, never fatal and never a dropped
//! connection: every match seals with exactly the bytes sent and the recorder keeps
//! running.

mod common;
use common::*;
use std::time::Duration;

fn many_matches_through_a_tiny_sq(extra: &[&str], matches: usize) {
    let dir = TempDir::new("uring-sqfull");
    let mut args = vec![
        "--workers",
        "1",
        "--ack-interval-ms",
        "1",
        "--sq-entries",
        "2",
        "--cq-entries",
        "1024",
    ];
    args.extend_from_slice(extra);
    let mut srv = spawn_server("uring", dir.path(), &args);
    let ingest = srv.ingest;
    // Every DS connects, says hello and streams at the same moment: each arrival needs a
    // RECV and each ack a SEND, far more SQEs per loop iteration than 2 SQ entries.
    let start = std::sync::Arc::new(std::sync::Barrier::new(matches));
    let handles: Vec<_> = (0..matches)
        .map(|i| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let id = format!("q{i:03}");
                let (sent, r) = stream_match(ingest, &id, 30, 300 + i * 41);
                (id, sent, r)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let log = srv.log_text();
    assert!(
        !log.contains("still full") && !log.contains("cannot arm"),
        "a full SQ was treated as an error: {log}"
    );
    for (id, sent, r) in &results {
        let Reply::Sealed { last_seq, .. } = r else {
            panic!("{id}: {r:?}\n{log}")
        };
        assert_eq!(*last_seq, sent.len() as u64, "{id}");
        let disk = std::fs::read(dir.path().join(format!("{id}.rpl"))).unwrap();
        check_replay(&disk, id, sent, true);
    }
    // Still serving after the storm, and it shuts down cleanly.
    let g = testkit::http_get(srv.http, "GET", "/matches/q000", &[]).unwrap();
    assert_eq!(g.status, 200);
    std::thread::sleep(Duration::from_millis(10));
    assert!(
        srv.terminate(),
        "recorder did not exit cleanly: {}",
        srv.log_text()
    );
}

#[test]
fn sqpoll_tiny_sq_many_connections() {
    many_matches_through_a_tiny_sq(&["--sqpoll", "true", "--sq-thread-idle-ms", "1"], 64);
}

#[test]
fn tiny_sq_many_connections_without_sqpoll() {
    many_matches_through_a_tiny_sq(&[], 64);
}

//! The memory budget of matches in progress (issue 12, bug 9): with the defaults any client
//! could pin about 1.1 MiB per match for 10,000 matches. `server.memory-budget` bounds the
//! total; a new match over it gets TOO_MANY_MATCHES, on both backends.

#[macro_use]
mod common;
use common::*;
use engine::protocol::ErrorCode;

/// Bug 9: append-buffer-bytes 64 KiB reserves 192 KiB per match; a 400 KiB budget admits
/// two. The third new match is refused with TOO_MANY_MATCHES naming the budget, a RESUME
/// of a match in progress is not, a match that survives a kill -9 still counts, and once
/// one is sealed a new match is admitted again.
fn memory_budget_refuses_a_new_match_when_reached(backend: &str) {
    let dir = TempDir::new("membudget");
    let extra = ["--append-buffer-bytes", "64k", "--memory-budget", "400k"];
    let mut srv = spawn_server(backend, dir.path(), &extra);
    assert_eq!(metric(&srv, "recorder_memory_budget_bytes"), 400 << 10);
    let mut a = DsClient::connect(srv.ingest).unwrap();
    assert!(matches!(
        a.hello("m-a", false, b"").unwrap(),
        Reply::Welcome { .. }
    ));
    let p = testkit::payload_for("m-a", 1, 1000);
    a.frame(1, 1, 1, &p).unwrap();
    a.flush().unwrap();
    a.wait_ack(1, std::time::Duration::from_secs(10)).unwrap();
    let mut b = DsClient::connect(srv.ingest).unwrap();
    assert!(matches!(
        b.hello("m-b", false, b"").unwrap(),
        Reply::Welcome { .. }
    ));
    // a frame acked in each, so both survive the kill -9 below (a match without a frame
    // may have no file yet)
    b.frame(1, 1, 1, &testkit::payload_for("m-b", 1, 1000))
        .unwrap();
    b.flush().unwrap();
    b.wait_ack(1, std::time::Duration::from_secs(10)).unwrap();
    assert_eq!(
        metric(&srv, "recorder_memory_reserved_bytes"),
        2 * (192 << 10)
    );
    let mut c = DsClient::connect(srv.ingest).unwrap();
    let r = c.hello("m-c", false, b"").unwrap();
    assert_eq!(r.error_code(), Some(ErrorCode::TooManyMatches), "{r:?}");
    assert!(format!("{r:?}").contains("memory-budget"), "{r:?}");
    // the matches survive a kill -9 and still count; a RESUME is never refused for it
    drop((a, b, c));
    srv.kill9();
    let srv = srv.restart();
    let mut c = DsClient::connect(srv.ingest).unwrap();
    let r = c.hello("m-c", false, b"").unwrap();
    assert_eq!(r.error_code(), Some(ErrorCode::TooManyMatches), "{r:?}");
    let (w, sealed) = {
        let mut a = DsClient::connect(srv.ingest).unwrap();
        let w = a.hello("m-a", true, b"").unwrap();
        (w, a.end(1).unwrap())
    };
    assert!(matches!(w, Reply::Welcome { last_seq: 1, .. }), "{w:?}");
    assert!(matches!(sealed, Reply::Sealed { .. }), "{sealed:?}");
    let mut c = DsClient::connect(srv.ingest).unwrap();
    let r = c.hello("m-c", false, b"").unwrap();
    assert!(matches!(r, Reply::Welcome { .. }), "after a seal: {r:?}");
}
both_backends!(memory_budget_refuses_a_new_match_when_reached);

/// A budget that holds no match is refused at start, naming what to change; the automatic
/// budget is resolved and shown by --print-config.
#[test]
fn memory_budget_below_one_match_is_refused_and_auto_is_resolved() {
    let dir = TempDir::new("membudget-cfg");
    let (st, err) = serve_expecting_refusal(
        "blocking",
        dir.path(),
        &["--append-buffer-bytes", "1m", "--memory-budget", "1m"],
    );
    assert_eq!(st.and_then(|s| s.code()), Some(2), "{err}");
    assert!(
        err.contains("memory-budget") && err.contains("append-buffer-bytes"),
        "{err}"
    );
    let out = serve_command("blocking", dir.path(), &["--print-config"])
        .stdout(std::process::Stdio::piped())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let budget = |side: &str| -> u64 {
        let o = v[side].as_object().unwrap();
        let (_, b) = o
            .iter()
            .find(|(k, _)| k.ends_with("memory-budget"))
            .unwrap();
        b.as_str().unwrap().parse().unwrap()
    };
    assert_eq!(budget("requested"), 0);
    assert!(budget("effective") >= 192 << 10, "auto not resolved: {v}");
}

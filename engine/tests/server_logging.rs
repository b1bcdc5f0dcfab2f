//! Production mode of `recorder serve`: levelled, timestamped logs (text and JSON), the
//! per-worker start-up lines at debug level, log-file reopened on SIGHUP (which does not
//! kill the server), sd_notify readiness, bad log filters refused.

mod common;
use common::TempDir;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn recorder(store: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_recorder"));
    c.arg("serve")
        .arg("--store")
        .arg(store)
        .args(["--ingest-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--workers", "1"])
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    c
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(20), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn term(mut c: Child) -> std::process::ExitStatus {
    unsafe_kill(&c, libc::SIGTERM);
    c.wait().unwrap()
}

fn unsafe_kill(c: &Child, sig: i32) {
    // the test's own child, by pid
    let r = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(c.id().to_string())
        .status()
        .unwrap();
    assert!(r.success());
}

/// Starts a recorder logging to `log`; returns it and its HTTP address once it listens.
fn start_logging_to(
    dir: &std::path::Path,
    log: &std::path::Path,
    args: &[&str],
) -> (Child, std::net::SocketAddr) {
    let mut a = args.to_vec();
    a.extend(["--log-file", log.to_str().unwrap()]);
    let c = recorder(dir, &a).stderr(Stdio::null()).spawn().unwrap();
    let mut http = None;
    wait_for("listening", || {
        http = std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.split("http listening on ").nth(1)?.trim().parse().ok());
        http.is_some()
    });
    (c, http.unwrap())
}

/// Reads stderr lines until one contains `until`; returns all lines read.
fn lines_until(c: &mut Child, until: &str) -> Vec<String> {
    let err = c.stderr.take().unwrap();
    let mut out = Vec::new();
    for l in BufReader::new(err).lines() {
        let l = l.unwrap();
        let stop = l.contains(until);
        out.push(l);
        if stop {
            break;
        }
    }
    out
}

#[test]
fn json_log_lines_are_objects_with_timestamp_level_and_message() {
    let dir = TempDir::new("log-json");
    let mut c = recorder(dir.path(), &["--log-format", "json", "--backend", "uring"])
        .env("RUST_LOG", "debug")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_until(&mut c, "ring flags");
    term(c);
    let mut levels = Vec::new();
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        let ts = v["timestamp"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.contains('T'), "{ts}");
        assert!(v["message"].is_string(), "{l}");
        levels.push(v["level"].as_str().unwrap().to_string());
    }
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["version"], env!("CARGO_PKG_VERSION"));
    assert!(first["message"].as_str().unwrap().contains("from RUST_LOG"));
    assert!(lines.iter().any(|l| l.contains("http listening on")));
    // the per-worker set-up line is debug, under the recorder::startup target
    let w: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(
        (w["level"].as_str(), w["target"].as_str()),
        (Some("DEBUG"), Some("recorder::startup"))
    );
    assert!(levels.iter().any(|l| l == "INFO"));
}

#[test]
fn text_log_lines_have_timestamp_level_target_and_message() {
    let dir = TempDir::new("log-text");
    let run = |level: &str| {
        let mut c = recorder(dir.path(), &["--backend", "uring", "--log-level", level])
            // the knob wins over RUST_LOG
            .env("RUST_LOG", "error")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = lines_until(&mut c, "http listening on");
        // give the worker time to report, then stop and read the rest
        std::thread::sleep(Duration::from_millis(500));
        term(c);
        lines.retain(|l| !l.is_empty());
        lines
    };
    let info = run("info");
    let l = info
        .iter()
        .find(|l| l.contains("http listening on"))
        .unwrap();
    // "2026-12-01T08:22:08.379028Z  INFO engine::server: http listening on 127.0.0.1:PORT"
    let mut parts = l.split_whitespace();
    let ts = parts.next().unwrap();
    assert!(
        ts.len() >= 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "{l}"
    );
    assert_eq!(parts.next(), Some("INFO"), "{l}");
    let addr = l.rsplit(' ').next().unwrap();
    assert!(addr.parse::<std::net::SocketAddr>().is_ok(), "{l}");
    assert!(info[0].contains("from log-level"), "{info:?}");
}

#[test]
fn worker_startup_line_is_debug_only() {
    let dir = TempDir::new("log-debug");
    for (level, want) in [("info", false), ("info,recorder::startup=debug", true)] {
        let log = dir.path().join(format!("{want}.log"));
        let (c, _) = start_logging_to(
            dir.path(),
            &log,
            &["--backend", "uring", "--log-level", level],
        );
        let read = || std::fs::read_to_string(&log).unwrap_or_default();
        std::thread::sleep(Duration::from_millis(300));
        term(c);
        let text = read();
        assert_eq!(text.contains("ring flags"), want, "{level}: {text}");
        assert!(text.contains("recorder serve: stopped"), "{text}");
    }
}

#[test]
fn sighup_reopens_the_log_file_and_does_not_kill_the_server() {
    let dir = TempDir::new("log-hup");
    let log = dir.path().join("recorder.log");
    let c = recorder(
        dir.path(),
        &["--backend", "blocking", "--log-file", log.to_str().unwrap()],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    wait_for("listening", || read(&log).contains("http listening on"));
    // logrotate: move the file away, then SIGHUP
    let rotated = dir.path().join("recorder.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    unsafe_kill(&c, libc::SIGHUP);
    wait_for("reopened", || {
        read(&log).contains("SIGHUP: reopened log file")
    });
    assert!(read(&rotated).contains("http listening on"));
    // still serving
    let mut c = c;
    std::thread::sleep(Duration::from_millis(200));
    assert!(c.try_wait().unwrap().is_none(), "SIGHUP killed the server");
    let st = term(c);
    assert!(st.success(), "{st}");
    assert!(read(&log).contains("recorder serve: stopped"));
}

#[test]
fn ready_and_stopping_are_sent_to_notify_socket() {
    let dir = TempDir::new("log-notify");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let c = recorder(dir.path(), &["--backend", "blocking"])
        .env("NOTIFY_SOCKET", &sock_path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.starts_with("READY=1\n"), "{msg}");
    assert!(msg.contains(&format!("MAINPID={}", c.id())), "{msg}");
    assert!(msg.contains("STATUS=ingest on 127.0.0.1:"), "{msg}");
    unsafe_kill(&c, libc::SIGTERM);
    let n = sock.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("STOPPING=1"));
    let mut c = c;
    assert!(c.wait().unwrap().success());
}

#[test]
fn bad_log_filters_are_refused_with_the_source_named() {
    let dir = TempDir::new("log-bad");
    let o = recorder(dir.path(), &["--log-level", "info,=x=y"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("log-level"), "{err}");
    let o = recorder(dir.path(), &[])
        .env("RUST_LOG", "info,=x=y")
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("RUST_LOG"), "{err}");
    let o = recorder(dir.path(), &["--log-file", "/nonexistent-dir/x.log"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot open log-file"));
}

#[test]
fn access_log_has_one_line_per_response_only_when_asked() {
    let dir = TempDir::new("log-access");
    for on in [true, false] {
        let log = dir.path().join(format!("access-{on}.log"));
        let on_s = on.to_string();
        let args = ["--backend", "uring", "--access-log", on_s.as_str()];
        let (c, http) = start_logging_to(dir.path(), &log, &args);
        let read = || std::fs::read_to_string(&log).unwrap_or_default();
        let r = common::testkit::http_get(http, "GET", "/matches?x=1", &[]).unwrap();
        assert_eq!(r.status, 200);
        let r = common::testkit::http_get(http, "GET", "/nope", &[]).unwrap();
        assert_eq!(r.status, 404);
        if on {
            wait_for("access lines", || read().contains("GET /nope 404"));
            let text = read();
            let l = text
                .lines()
                .find(|l| l.contains("GET /matches?x=1 200"))
                .unwrap();
            assert!(
                l.contains("recorder::access") && l.contains("duration_ms="),
                "{l}"
            );
        } else {
            std::thread::sleep(Duration::from_millis(300));
        }
        term(c);
        assert_eq!(read().contains("recorder::access"), on, "{}", read());
    }
}

/// The access log names the client (issue 12): `client=ADDR` and the address first in the
/// message, on both backends; "-" where the recorder cannot know it (uring with
/// `net.direct-sockets`, whose sockets have no descriptor for getpeername).
#[test]
fn access_log_names_the_client_address() {
    use std::io::{Read, Write};
    let dir = TempDir::new("log-access-peer");
    for (name, args) in [
        ("blocking", &["--backend", "blocking"][..]),
        ("uring", &["--backend", "uring"][..]),
        (
            "uring-direct",
            &["--backend", "uring", "--direct-sockets", "true"][..],
        ),
    ] {
        let log = dir.path().join(format!("access-{name}.log"));
        let mut a = args.to_vec();
        a.extend(["--access-log", "true"]);
        let (c, http) = start_logging_to(dir.path(), &log, &a);
        let mut s = std::net::TcpStream::connect(http).unwrap();
        let me = s.local_addr().unwrap().to_string();
        s.write_all(b"GET /peer-check HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        assert!(resp.starts_with(b"HTTP/1.1 404"), "{name}");
        let read = || std::fs::read_to_string(&log).unwrap_or_default();
        wait_for("access line", || read().contains("GET /peer-check 404"));
        let text = read();
        let l = text
            .lines()
            .find(|l| l.contains("GET /peer-check 404"))
            .unwrap();
        let want = if name == "uring-direct" {
            "-".to_string()
        } else {
            me
        };
        assert!(
            l.contains(&format!("client={want}"))
                && l.contains(&format!("{want} GET /peer-check 404")),
            "{name}: {l}"
        );
        term(c);
    }
}

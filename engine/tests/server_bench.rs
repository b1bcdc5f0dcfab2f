//! Measurements, not assertions (ignored by default; run in release):
//! `cargo test --release -p engine --test server_bench -- --ignored --nocapture`
//! Environment: RECORDER_BENCH_STORE (dir, default a temp dir), RECORDER_TEST_BACKEND,
//! RECORDER_BENCH_ARGS (extra serve args, space separated).

mod common;
use common::*;
use std::time::{Duration, Instant};

fn extra_args() -> Vec<String> {
    std::env::var("RECORDER_BENCH_ARGS").map(|s| s.split_whitespace().map(String::from).collect()).unwrap_or_default()
}

/// Bulk ingest: `ds` connections each stream `mib` MiB of 64 KiB frames with up to
/// `window` frames unacknowledged, then END. Prints payload MB/s.
#[test]
#[ignore]
fn bulk_ingest() {
    let dir = TempDir::new("bench-bulk");
    let extra = extra_args();
    let mut args: Vec<&str> = vec!["--max-frame-bytes", "1m"];
    args.extend(extra.iter().map(|s| s.as_str()));
    let srv = spawn_server(&default_backend(), dir.path(), &args);
    let ds: usize = std::env::var("BENCH_DS").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let mib: u64 = std::env::var("BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let frame = 64 << 10;
    let frames = mib * (1 << 20) / frame as u64;
    let window = 64u64;
    let t0 = Instant::now();
    let hs: Vec<_> = (0..ds)
        .map(|i| {
            let addr = srv.ingest;
            std::thread::spawn(move || {
                let id = format!("bulk{i}");
                let mut c = DsClient::connect(addr).unwrap();
                assert!(matches!(c.hello(&id, false, b"").unwrap(), Reply::Welcome { .. }));
                let p = testkit::payload_for(&id, 1, frame);
                for seq in 1..=frames {
                    if seq > c.acked + window {
                        c.wait_ack(seq - window, Duration::from_secs(30)).unwrap();
                    }
                    c.frame(seq, seq, 2, &p).unwrap();
                }
                let r = c.end(frames).unwrap();
                assert!(matches!(r, Reply::Sealed { .. }), "{r:?}");
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let dt = t0.elapsed().as_secs_f64();
    let bytes = ds as u64 * frames * frame as u64;
    println!("bulk ingest backend={} ds={ds} payload={} MiB: {:.0} MB/s ({dt:.2} s) args={extra:?}", srv.backend, bytes >> 20, bytes as f64 / dt / 1e6);
}

/// Prepares sealed 16 MiB replays for download benchmarks and keeps the server running
/// for `BENCH_SERVE_S` seconds, printing its HTTP address (drive it with wrk).
#[test]
#[ignore]
fn serve_sealed_16m() {
    let store = std::env::var("RECORDER_BENCH_STORE").map(std::path::PathBuf::from).unwrap_or_else(|_| std::env::temp_dir().join("recorder-bench-serve"));
    std::fs::create_dir_all(&store).unwrap();
    let extra = extra_args();
    let args: Vec<&str> = extra.iter().map(|s| s.as_str()).collect();
    let srv = spawn_server(&default_backend(), &store, &args);
    for i in 0..4 {
        let id = format!("dl{i}");
        if store.join(format!("{id}.rpl")).exists() {
            continue;
        }
        let mut c = DsClient::connect(srv.ingest).unwrap();
        assert!(matches!(c.hello(&id, false, b"").unwrap(), Reply::Welcome { .. }));
        let p = testkit::payload_for(&id, 1, 16 << 10);
        let n = (16u64 << 20) / (16 << 10 as u64);
        for seq in 1..=n {
            c.frame(seq, seq, if seq % 100 == 1 { 1 } else { 2 }, &p).unwrap();
        }
        assert!(matches!(c.end(n).unwrap(), Reply::Sealed { .. }));
    }
    println!("serving {} on http://{}/matches/dl0", store.display(), srv.http);
    let secs: u64 = std::env::var("BENCH_SERVE_S").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    std::thread::sleep(Duration::from_secs(secs));
}

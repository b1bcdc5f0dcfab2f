//! Measurements, not assertions (ignored by default; run in release):
//! `cargo test --release -p engine --test server_bench -- --ignored --nocapture`
//! Environment: RECORDER_BENCH_STORE (dir, default a temp dir), RECORDER_TEST_BACKEND,
//! RECORDER_BENCH_ARGS (extra serve args, space separated).

mod common;
use common::*;
use std::time::{Duration, Instant};

fn extra_args() -> Vec<String> {
    std::env::var("RECORDER_BENCH_ARGS")
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
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
    let ds: usize = std::env::var("BENCH_DS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let mib: u64 = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
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
                assert!(matches!(
                    c.hello(&id, false, b"").unwrap(),
                    Reply::Welcome { .. }
                ));
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
    println!(
        "bulk ingest backend={} ds={ds} payload={} MiB: {:.0} MB/s ({dt:.2} s) args={extra:?}",
        srv.backend,
        bytes >> 20,
        bytes as f64 / dt / 1e6
    );
}

/// Prepares sealed 16 MiB replays for download benchmarks and keeps the server running
/// for `BENCH_SERVE_S` seconds, printing its HTTP address (drive it with wrk).
#[test]
#[ignore]
fn serve_sealed_16m() {
    let store = std::env::var("RECORDER_BENCH_STORE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("recorder-bench-serve"));
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
        assert!(matches!(
            c.hello(&id, false, b"").unwrap(),
            Reply::Welcome { .. }
        ));
        let p = testkit::payload_for(&id, 1, 16 << 10);
        let n = (16u64 << 20) / (16u64 << 10);
        for seq in 1..=n {
            c.frame(seq, seq, if seq % 100 == 1 { 1 } else { 2 }, &p)
                .unwrap();
        }
        assert!(matches!(c.end(n).unwrap(), Reply::Sealed { .. }));
    }
    println!(
        "serving {} on http://{}/matches/dl0",
        store.display(),
        srv.http
    );
    let secs: u64 = std::env::var("BENCH_SERVE_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    std::thread::sleep(Duration::from_secs(secs));
}

/// Many DS at a tick rate (open loop per DS: frame k is due at start + k/hz), 1 KiB deltas
/// and a 64 KiB keyframe every 10 s; prints frames acked and ack latency percentiles
/// measured from each frame's intended send time. BENCH_DS (default 1000), BENCH_S (10).
#[test]
#[ignore]
fn many_ds_tick_rate() {
    let dir = TempDir::new("bench-many");
    let extra = extra_args();
    let mut args: Vec<&str> = vec!["--max-connections", "0", "--max-matches", "100000"];
    args.extend(extra.iter().map(|s| s.as_str()));
    let srv = spawn_server(&default_backend(), dir.path(), &args);
    let ds: usize = std::env::var("BENCH_DS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let secs: u64 = std::env::var("BENCH_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let hz = 20u64;
    let start = Instant::now() + Duration::from_secs(2);
    let hs: Vec<_> = (0..ds)
        .map(|i| {
            let addr = srv.ingest;
            std::thread::Builder::new()
                .stack_size(128 << 10)
                .spawn(move || {
                    let id = format!("t{i}");
                    let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
                    let mut c = DsClient::connect(addr).unwrap();
                    assert!(matches!(
                        c.hello(&id, false, b"").unwrap(),
                        Reply::Welcome { .. }
                    ));
                    let delta = testkit::payload_for(&id, 2, 1024);
                    let key = testkit::payload_for(&id, 1, 64 << 10);
                    let n = secs * hz;
                    let phase = Duration::from_micros((i as u64 * 997) % 50_000);
                    let due = |k: u64| start + phase + Duration::from_millis(k * 1000 / hz);
                    let mut acked_seen = 0;
                    for seq in 1..=n {
                        let t = due(seq);
                        // read acks until the frame is due
                        loop {
                            let now = Instant::now();
                            if now >= t {
                                break;
                            }
                            if let Ok(Reply::Ack(_)) = c.recv(t - now) {}
                            while acked_seen < c.acked {
                                acked_seen += 1;
                                h.record(
                                    Instant::now()
                                        .saturating_duration_since(due(acked_seen))
                                        .as_micros() as u64,
                                )
                                .unwrap();
                            }
                        }
                        let kind = if seq % (10 * hz) == 1 { 1 } else { 2 };
                        c.frame(seq, seq, kind, if kind == 1 { &key } else { &delta })
                            .unwrap();
                        c.flush().unwrap();
                    }
                    let r = c.end(n).unwrap();
                    assert!(matches!(r, Reply::Sealed { .. }), "{r:?}");
                    while acked_seen < n {
                        acked_seen += 1;
                        h.record(
                            Instant::now()
                                .saturating_duration_since(due(acked_seen))
                                .as_micros() as u64,
                        )
                        .unwrap();
                    }
                    h
                })
                .unwrap()
        })
        .collect();
    let mut all = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for h in hs {
        all.add(h.join().unwrap()).unwrap();
    }
    println!(
        "many DS backend={} ds={ds} {hz} Hz {secs} s: {} frames; ack latency p50 {} us p99 {} us p99.9 {} us max {} us args={extra:?}",
        srv.backend,
        all.len(),
        all.value_at_quantile(0.5),
        all.value_at_quantile(0.99),
        all.value_at_quantile(0.999),
        all.max()
    );
}

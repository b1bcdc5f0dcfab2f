//! Closed-loop (unpaced) DS load: against the real recorder on both backends (every acked
//! frame downloads byte for byte, the in-flight bound holds), against a slow-acking peer that
//! checks the bound from the outside and makes paced frames late, the CLI's refusals, and a
//! bulk-ingest sweep cell recording its load settings.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use engine::protocol::{self, AckMode, Msg};
use harness::ds::{self, DsConfig, DsCounters};
use harness::util::SizeDist;

/// A real recorder on free ports; killed and its store removed on drop.
struct Recorder {
    child: Child,
    ingest: SocketAddr,
    http: SocketAddr,
    dir: PathBuf,
}

impl Recorder {
    #[allow(clippy::zombie_processes)] // killed and waited for in Drop
    fn start(backend: &str) -> Recorder {
        let dir = tmpdir(&format!("cl-{backend}"));
        let log = dir.join("log");
        let mut child = Command::new(recorder_bin())
            .args(["serve", "--store"])
            .arg(dir.join("store"))
            .args([
                "--ingest-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
                "--backend",
                backend,
            ])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        loop {
            let t = std::fs::read_to_string(&log).unwrap_or_default();
            let f = |p: &str| {
                t.lines()
                    .find_map(|l| l.split(p).nth(1).and_then(|a| a.trim().parse().ok()))
            };
            if let (Some(ingest), Some(http)) = (f("ingest listening on "), f("http listening on "))
            {
                return Recorder {
                    child,
                    ingest,
                    http,
                    dir,
                };
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "recorder did not start: {t}"
            );
            assert!(child.try_wait().unwrap().is_none(), "recorder exited: {t}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn closed(addr: SocketAddr, max_unacked: u64) -> DsConfig {
    DsConfig {
        addr,
        matches: 4,
        tick_hz: 0.0,
        max_unacked: Some(max_unacked),
        // Sizes that straddle socket writes and CRC checkpoints; keyframes every 5th frame.
        delta: SizeDist::parse("uniform:1k-40k").unwrap(),
        keyframe: SizeDist::Fixed(50_000),
        keyframe_every: 5,
        ramp_up_s: 0.2,
        measure_s: 1.0,
        ..Default::default()
    }
}

fn run(c: &DsConfig) -> ds::DsReport {
    ds::run(
        c,
        Arc::new(DsCounters::default()),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap()
}

fn closed_loop_against_the_real_recorder(backend: &str) {
    let rec = Recorder::start(backend);
    let n = 6;
    let c = closed(rec.ingest, n);
    let rep = run(&c);
    let s = rep.summary();
    assert!(rep.errors.is_empty(), "{s}");
    assert!(rep.unpaced);
    assert_eq!(rep.sealed as usize, c.matches, "{s}");
    assert!(
        rep.frames_acked_window > 0 && rep.throughput_mb_per_s() > 0.0,
        "{s}"
    );
    assert_eq!(
        rep.frames_acked, rep.frames_sent,
        "every frame sent is acked by SEALED: {s}"
    );
    assert!(rep.ack_pct(50.0).is_some_and(|v| v > 0.0), "{s}");
    for m in &rep.matches {
        assert!(
            m.max_inflight_frames <= n,
            "{}: {} frames in flight, bound {n}",
            m.id,
            m.max_inflight_frames
        );
        assert!(m.max_inflight_bytes <= n * 50_000, "{m:?}");
        assert!(m.acked_seq > 0, "{m:?}");
    }
    assert_eq!(
        rep.max_inflight_frames(),
        n,
        "unpaced sending fills the window at least once: {s}"
    );
    let v = ds::verify(&c, rec.http, &rep.matches);
    assert!(v.mismatches.is_empty(), "{:?}", v.mismatches);
    assert_eq!(v.verified, c.matches);
}

#[test]
fn closed_loop_verifies_and_keeps_the_bound_uring() {
    closed_loop_against_the_real_recorder("uring");
}

#[test]
fn closed_loop_verifies_and_keeps_the_bound_blocking() {
    closed_loop_against_the_real_recorder("blocking");
}

#[test]
fn closed_loop_resumes_against_the_real_recorder() {
    // Forced disconnects cut frames mid-write; the recorder's WELCOME says where to resume.
    let rec = Recorder::start("uring");
    let c = DsConfig {
        disconnect_every_s: 0.3,
        reconnect_delay_ms: 20,
        measure_s: 1.5,
        ..closed(rec.ingest, 16)
    };
    let rep = run(&c);
    let s = rep.summary();
    assert!(rep.reconnects > 0, "{s}");
    assert_eq!(rep.sealed as usize, c.matches, "{s}");
    let bad: Vec<_> = rep
        .errors
        .keys()
        .filter(|k| !k.starts_with("MATCH_BUSY") && *k != "DISCONNECTED")
        .collect();
    assert!(bad.is_empty(), "unexpected errors: {:?}", rep.errors);
    assert!(rep.max_inflight_frames() <= 16, "{s}");
    let v = ds::verify(&c, rec.http, &rep.matches);
    assert!(v.mismatches.is_empty(), "{:?}", v.mismatches);
    assert_eq!(v.verified, c.matches);
}

#[test]
fn byte_bound_holds_against_the_fake_recorder() {
    let f = Fake::start(&[]);
    let c = DsConfig {
        max_unacked: None,
        max_unacked_bytes: Some(100_000),
        delta: SizeDist::parse("uniform:10k-40k").unwrap(),
        keyframe: SizeDist::Fixed(40_000),
        keyframe_every: 0,
        ..closed(f.ingest, 1)
    };
    let rep = run(&c);
    assert!(rep.errors.is_empty(), "{}", rep.summary());
    assert!(rep.frames_acked > 0);
    for m in &rep.matches {
        assert!(m.max_inflight_bytes <= 100_000, "{m:?}");
        assert!(m.max_inflight_frames >= 1, "{m:?}");
    }
    let v = ds::verify(&c, f.http, &rep.matches);
    assert!(v.mismatches.is_empty(), "{:?}", v.mismatches);
    assert_eq!(v.verified, c.matches);
}

#[test]
fn unpaced_churn_and_resume_keep_every_acked_frame() {
    // Disconnects cut frames mid-write; RESUME resends from WELCOME's last_seq; matches end
    // after their duration and new ones take the slot.
    let f = Fake::start(&[]);
    let c = DsConfig {
        disconnect_every_s: 0.25,
        match_duration_s: 0.5,
        reconnect_delay_ms: 20,
        measure_s: 1.5,
        ..closed(f.ingest, 8)
    };
    let rep = run(&c);
    let s = rep.summary();
    assert!(rep.reconnects > 0, "{s}");
    assert!(rep.sealed as usize > c.matches, "churn: {s}");
    let bad: Vec<_> = rep
        .errors
        .keys()
        .filter(|k| !k.starts_with("MATCH_BUSY") && *k != "DISCONNECTED")
        .collect();
    assert!(bad.is_empty(), "unexpected errors: {:?}", rep.errors);
    assert!(rep.max_inflight_frames() <= 8, "{s}");
    let v = ds::verify(&c, f.http, &rep.matches);
    assert!(v.mismatches.is_empty(), "{:?}", v.mismatches);
    assert_eq!(v.not_sealed, 0);
    assert_eq!(
        v.verified,
        rep.matches.iter().filter(|m| m.acked_seq > 0).count()
    );
}

/// What the slow peer saw.
#[derive(Default)]
struct Seen {
    /// Most frames received beyond the last ACK sent, over all connections.
    max_unacked: AtomicU64,
    frames: AtomicU64,
    bad: AtomicU64,
}

/// A DS peer that acknowledges only every `ack_every`: one connection per thread, WELCOME
/// for a new match, frames checked (seq + 1, tick up, CRC), cumulative ACK on a timer, SEALED
/// on END. Counts from the outside how many frames were ever unacknowledged at once.
fn slow_peer(ack_every: Duration) -> (SocketAddr, Arc<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { return };
            let seen = s2.clone();
            std::thread::spawn(move || serve_slow(conn, ack_every, &seen));
        }
    });
    (addr, seen)
}

fn serve_slow(mut s: TcpStream, ack_every: Duration, seen: &Seen) {
    s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    let (mut buf, mut tmp) = (Vec::new(), vec![0u8; 256 * 1024]);
    let (mut last, mut tick, mut acked) = (0u64, 0u64, 0u64);
    let mut next_ack = Instant::now() + ack_every;
    let mut out = Vec::new();
    loop {
        match s.read(&mut tmp) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
        let mut off = 0;
        while let Ok(Some((msg, used))) = protocol::decode(&buf[off..], 1 << 21) {
            off += used;
            match msg {
                Msg::Hello { .. } => protocol::encode(
                    &mut out,
                    &Msg::Welcome {
                        version: 1,
                        ack_mode: AckMode::Durable,
                        last_seq: 0,
                        max_frame_bytes: 1 << 20,
                    },
                ),
                Msg::Frame {
                    seq,
                    tick: t,
                    crc32c,
                    payload,
                    ..
                } => {
                    if seq != last + 1
                        || (seq > 1 && t <= tick)
                        || protocol::check_crc(seq, crc32c, payload).is_err()
                    {
                        seen.bad.fetch_add(1, Ordering::Relaxed);
                    }
                    last = seq;
                    tick = t;
                    seen.frames.fetch_add(1, Ordering::Relaxed);
                    seen.max_unacked.fetch_max(last - acked, Ordering::Relaxed);
                }
                Msg::End { last_seq } => {
                    protocol::encode(
                        &mut out,
                        &Msg::Sealed {
                            last_seq,
                            file_bytes: 0,
                        },
                    );
                    let _ = s.write_all(&out);
                    return;
                }
                _ => {
                    seen.bad.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        buf.drain(..off);
        if Instant::now() >= next_ack {
            next_ack += ack_every;
            if last > acked {
                acked = last;
                protocol::encode(&mut out, &Msg::Ack { seq: acked });
            }
        }
        if !out.is_empty() {
            if s.write_all(&out).is_err() {
                return;
            }
            out.clear();
        }
    }
}

#[test]
fn the_bound_holds_as_seen_by_the_peer_unpaced() {
    let (addr, seen) = slow_peer(Duration::from_millis(50));
    let c = DsConfig {
        matches: 3,
        ..closed(addr, 5)
    };
    let rep = run(&c);
    assert!(rep.errors.is_empty(), "{}", rep.summary());
    assert_eq!(
        seen.bad.load(Ordering::Relaxed),
        0,
        "frames out of order or corrupt"
    );
    assert!(seen.frames.load(Ordering::Relaxed) > 0);
    // The peer counts frames beyond its own last ACK: the ACK may still be on the wire when
    // the next frames are counted, never more than the bound otherwise.
    assert_eq!(seen.max_unacked.load(Ordering::Relaxed), 5);
    assert_eq!(rep.max_inflight_frames(), 5, "{}", rep.summary());
    // About 1.2 s of 50 ms ack rounds x 5 frames x 3 matches: the bound, not the socket,
    // decides how much is sent.
    let acked = rep.frames_acked;
    assert!(
        (15..=3 * 5 * 40).contains(&acked),
        "{acked} frames acked: {}",
        rep.summary()
    );
}

#[test]
fn paced_frames_held_back_by_the_bound_are_sent_late() {
    let (addr, seen) = slow_peer(Duration::from_millis(200));
    let c = DsConfig {
        addr,
        matches: 2,
        tick_hz: 100.0,
        max_unacked: Some(4),
        delta: SizeDist::Fixed(1000),
        keyframe: SizeDist::Fixed(5000),
        keyframe_interval_s: 0.1,
        ramp_up_s: 0.1,
        measure_s: 1.0,
        ..Default::default()
    };
    let rep = run(&c);
    let s = rep.summary();
    assert!(rep.errors.is_empty(), "{s}");
    assert!(!rep.unpaced);
    assert_eq!(seen.bad.load(Ordering::Relaxed), 0);
    assert!(rep.max_inflight_frames() <= 4, "{s}");
    assert!(seen.max_unacked.load(Ordering::Relaxed) <= 4);
    // 100 Hz but 4 frames per 200 ms ack round: most frames go out late.
    assert!(
        rep.late_frames > rep.frames_sent / 2,
        "late {} of {}: {s}",
        rep.late_frames,
        rep.frames_sent
    );
    assert!(s.contains("late frames"), "{s}");
    // Latency is from the intended time, so holding frames back shows up as latency.
    assert!(rep.ack_pct(50.0).unwrap() > 200_000.0, "{s}");
}

#[test]
fn cli_refuses_nonsense_with_the_flag_named() {
    let cases: &[(&[&str], &str)] = &[
        (&["--tick-hz", "0", "--max-unacked", "0"], "--max-unacked 0"),
        (&["--tick-hz=-5"], "--tick-hz -5"),
        (
            &["--tick-hz", "32", "--keyframe-every", "4"],
            "--keyframe-every 4",
        ),
        (
            &["--tick-hz", "0", "--max-unacked-bytes", "0"],
            "--max-unacked-bytes 0",
        ),
        (
            &["--tick-hz", "0", "--max-unacked-bytes", "lots"],
            "--max-unacked-bytes",
        ),
    ];
    for (args, want) in cases {
        let o = Command::new(harness_bin())
            .arg("ds")
            .args(["--addr", "127.0.0.1:9", "--measure-s", "1"])
            .args(*args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        // bad command line: exit status 2 (harness --help)
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn bulk_ingest_sweep_cells_record_their_load_settings() {
    let d = tmpdir("cl-sweep");
    let exp = write_exp(
        &d,
        r#"
        ramp_up_s = 0.2
        measure_s = 0.6
        [cell]
        workload = "bulk-ingest"
        "load.matches" = 2
        "load.delta" = "fixed:16k"
        "load.max-unacked" = [3, 16]
        [[include]]
        workload = "bulk-ingest"
        "load.matches" = 2
        "load.delta" = "fixed:16k"
        "load.tick-hz" = 50
        "load.max-unacked" = "off"
        "#,
    );
    let out = d.join("out");
    let (code, err) = sweep(&exp, &out, &d.join("state"), &[]);
    assert_eq!(code, 0, "{err}");
    // A run rejected for steal (a shared VM) is re-run and keeps its own row: count the
    // others, one per cell.
    let rows = read_runs(&out);
    let ok: Vec<_> = rows.iter().filter(|r| r["status"] != "rejected").collect();
    assert_eq!(ok.len(), 3, "{err}");
    for r in &ok {
        assert_eq!(r["status"], "ok", "{r:?}\n{err}");
        assert!(
            r["throughput_mb_per_s"].parse::<f64>().unwrap() > 0.0,
            "{r:?}"
        );
        assert_eq!(r["errors"], "0", "{r:?}");
    }
    let by = |v: &str| {
        ok.iter()
            .find(|r| r["dim.load.max-unacked"] == v)
            .unwrap_or_else(|| panic!("no row with max-unacked {v}: {rows:?}"))
    };
    for n in [3u64, 16] {
        let r = by(&n.to_string());
        assert!(
            r["load"].contains(&format!("tick-hz=0;max-unacked={n};")),
            "{r:?}"
        );
        assert!(r["load"].contains("delta=fixed:16384"), "{r:?}");
        let seen: u64 = r["inflight_max_frames"].parse().unwrap();
        assert!((1..=n).contains(&seen), "{r:?}");
        assert_eq!(r["late_frames"], "", "no late frames when unpaced: {r:?}");
    }
    let paced = by("off");
    assert!(
        paced["load"].contains("tick-hz=50;max-unacked=off;"),
        "{paced:?}"
    );
    assert!(paced["late_frames"].parse::<u64>().is_ok(), "{paced:?}");
    // Load settings the generator refuses are the experiment file's error, found before
    // anything runs (exit 2), with the generator's own message.
    let bad = write_exp(
        &d,
        r#"
        [[include]]
        workload = "bulk-ingest"
        "load.tick-hz" = 50
        "load.keyframe-every" = 3
        "#,
    );
    let (code, err) = sweep(&bad, &d.join("bad"), &d.join("state"), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--keyframe-every 3"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

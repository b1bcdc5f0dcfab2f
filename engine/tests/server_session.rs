//! IngestSession and Registry driven directly (no sockets): the sans-IO contract both
//! backends rely on. An in-memory "backend" executes each Io with std calls.

use engine::protocol::{self, AckMode, ErrorCode, Msg};
use engine::server::registry::{Limits, Registry};
use engine::server::session::{IngestSession, Io, SessionConfig, WRITER_WAIT};
use engine::storage::{self, StoreOptions, StorePaths};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Rig {
    reg: Arc<Registry>,
    cfg: Arc<SessionConfig>,
    dir: std::path::PathBuf,
}

fn rig(tag: &str, f: impl FnOnce(&mut SessionConfig)) -> Rig {
    let dir = std::env::temp_dir().join(format!("session-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let paths = StorePaths::new(&dir);
    storage::recover_store(&paths, &StoreOptions::default(), u32::MAX).unwrap();
    let mut cfg = SessionConfig::default();
    f(&mut cfg);
    Rig {
        reg: Registry::new(paths, Limits::default()),
        cfg: Arc::new(cfg),
        dir,
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs every due Io; returns how many writes and syncs ran.
fn pump(
    s: &mut IngestSession,
    fd: &mut Option<std::sync::Arc<OwnedFd>>,
    reg: &Registry,
    now: Instant,
) -> (u32, u32) {
    let (mut w, mut y) = (0, 0);
    while let Some(io) = s.next_io(now) {
        match &io {
            Io::Write(_) => w += 1,
            Io::Sync => y += 1,
            _ => {}
        }
        engine::server::blocking::exec_io(io, s, fd, reg, &StoreOptions::default(), None, None);
    }
    (w, y)
}

fn decode_all(mut b: &[u8]) -> Vec<String> {
    let mut v = Vec::new();
    while let Some((m, n)) = protocol::decode(b, u32::MAX).unwrap() {
        v.push(match m {
            Msg::Welcome {
                last_seq, ack_mode, ..
            } => format!("WELCOME {last_seq} {ack_mode:?}"),
            Msg::Ack { seq } => format!("ACK {seq}"),
            Msg::Sealed { last_seq, .. } => format!("SEALED {last_seq}"),
            Msg::Error { code, .. } => format!("ERROR {}", ErrorCode::from_u16(code).unwrap()),
            other => format!("{other:?}"),
        });
        b = &b[n..];
    }
    v
}

fn hello(id: &str, resume: bool) -> Vec<u8> {
    let mut v = Vec::new();
    protocol::encode(
        &mut v,
        &Msg::Hello {
            version: 1,
            resume,
            match_id: id,
            credential: b"",
        },
    );
    v
}

#[test]
fn byte_at_a_time_input_and_group_commit_cadence() {
    let r = rig("cadence", |c| {
        c.ack_interval = Duration::from_millis(50);
        c.store.durability = storage::Durability::Fdatasync;
    });
    let t0 = Instant::now();
    let mut s = IngestSession::new(r.cfg.clone(), r.reg.clone(), t0);
    let mut fd = None;
    let mut input = hello("c1", false);
    for seq in 1..=20u64 {
        protocol::encode_frame(&mut input, seq, seq, 2, &vec![seq as u8; 300]);
    }
    // HELLO a byte at a time: nothing happens until it is whole, then Open, then WELCOME
    let hl = hello("c1", false).len();
    for (i, b) in input[..hl].iter().enumerate() {
        s.feed(std::slice::from_ref(b), t0);
        if i + 1 < hl {
            assert!(s.next_io(t0).is_none());
        }
    }
    pump(&mut s, &mut fd, &r.reg, t0);
    assert_eq!(decode_all(&s.take_output()), ["WELCOME 0 Durable"]);
    // the first frames after a quiet period are written at once (one write + one sync)
    let (first, rest) = input[hl..].split_at(input[hl..].len() / 2);
    s.feed(first, t0);
    assert_eq!(pump(&mut s, &mut fd, &r.reg, t0), (1, 1));
    let acks = decode_all(&s.take_output());
    assert_eq!(acks.len(), 1, "one cumulative ACK: {acks:?}");
    // more frames in odd slices within the interval: appended, not written yet
    for chunk in rest.chunks(77) {
        s.feed(chunk, t0 + Duration::from_millis(5));
    }
    assert_eq!(
        pump(&mut s, &mut fd, &r.reg, t0 + Duration::from_millis(10)),
        (0, 0)
    );
    assert!(
        s.take_output().is_empty(),
        "nothing acked before it is durable"
    );
    let d = s.deadline().unwrap();
    assert_eq!(
        d,
        t0 + Duration::from_millis(50),
        "next write one interval after the last"
    );
    // at the deadline: one write + one fdatasync, then a single cumulative ACK
    assert_eq!(pump(&mut s, &mut fd, &r.reg, d), (1, 1));
    assert_eq!(decode_all(&s.take_output()), ["ACK 20"]);
    let info = r.reg.get("c1").unwrap().info();
    assert_eq!(
        (info.durable_seq, info.stats.frame_count, info.writer),
        (20, 20, true)
    );
    // END: flush, seal, SEALED; the registry says sealed
    let mut end = Vec::new();
    protocol::encode(&mut end, &Msg::End { last_seq: 20 });
    s.feed(&end, d);
    pump(&mut s, &mut fd, &r.reg, d);
    assert_eq!(decode_all(&s.take_output()), ["SEALED 20"]);
    assert!(s.is_finished());
    assert_eq!(
        r.reg.get("c1").unwrap().info().phase,
        engine::server::registry::Phase::Sealed
    );
}

#[test]
fn received_mode_acks_on_receipt_and_errors_come_last() {
    let r = rig("recv", |c| {
        c.ack_mode = AckMode::Received;
        c.ack_interval = Duration::from_secs(5);
    });
    let t0 = Instant::now();
    let mut s = IngestSession::new(r.cfg.clone(), r.reg.clone(), t0);
    let mut fd = None;
    s.feed(&hello("r1", false), t0);
    pump(&mut s, &mut fd, &r.reg, t0);
    assert_eq!(decode_all(&s.take_output()), ["WELCOME 0 Received"]);
    let mut b = Vec::new();
    protocol::encode_frame(&mut b, 1, 1, 1, b"a");
    protocol::encode_frame(&mut b, 2, 2, 2, b"b");
    s.feed(&b, t0);
    assert_eq!(
        decode_all(&s.take_output()),
        ["ACK 2"],
        "received mode acks before any write"
    );
    // a gap: frames before it are written, then ERROR, then finished
    let mut g = Vec::new();
    protocol::encode_frame(&mut g, 9, 3, 2, b"x");
    s.feed(&g, t0);
    let (w, _) = pump(&mut s, &mut fd, &r.reg, t0);
    assert_eq!(w, 1, "what was received is written before closing");
    assert_eq!(decode_all(&s.take_output()), ["ERROR SEQ_GAP"]);
    assert!(s.is_finished());
    assert_eq!(s.error_sent(), Some(ErrorCode::SeqGap));
    drop(s);
    // the match is parked, resumable, and knows frame 2 is durable (durability none: written)
    let m = r.reg.get("r1").unwrap().info();
    assert_eq!((m.writer, m.durable_seq), (false, 2));
    let mut s2 = IngestSession::new(r.cfg.clone(), r.reg.clone(), t0);
    s2.feed(&hello("r1", true), t0);
    pump(&mut s2, &mut fd, &r.reg, t0);
    assert_eq!(decode_all(&s2.take_output()), ["WELCOME 2 Received"]);
    // while s2 writes, a third connection waits for the writer role, then is refused
    let mut s3 = IngestSession::new(r.cfg.clone(), r.reg.clone(), t0);
    s3.feed(&hello("r1", true), t0);
    assert!(s3.take_output().is_empty(), "waits for the writer first");
    assert!(s3.deadline().is_some_and(|d| d < t0 + WRITER_WAIT));
    s3.on_timer(t0 + WRITER_WAIT);
    assert_eq!(decode_all(&s3.take_output()), ["ERROR MATCH_BUSY"]);
    assert!(s3.is_finished());
}

/// Issue 12 bug 5: a RESUME that arrives while the match's previous writer is still
/// finishing (a DS reconnecting right after a reset or a close) waits for it instead of
/// getting MATCH_BUSY; input sent behind the HELLO is kept meanwhile.
#[test]
fn resume_right_after_a_close_waits_for_the_old_writer() {
    let r = rig("wait", |c| c.ack_interval = Duration::ZERO);
    let t0 = Instant::now();
    let mut fd = None;
    let mut s1 = IngestSession::new(r.cfg.clone(), r.reg.clone(), t0);
    s1.feed(&hello("w1", false), t0);
    pump(&mut s1, &mut fd, &r.reg, t0);
    let mut b = Vec::new();
    protocol::encode_frame(&mut b, 1, 1, 1, b"one");
    s1.feed(&b, t0);
    // the DS reconnects before the old session noticed it went away
    let mut s2 = IngestSession::new(r.cfg.clone(), r.reg.clone(), t0);
    let mut raw = hello("w1", true);
    protocol::encode_frame(&mut raw, 2, 2, 2, b"two");
    s2.feed(&raw, t0);
    assert!(
        s2.take_output().is_empty(),
        "waits while the old writer finishes"
    );
    let t1 = t0 + Duration::from_millis(20);
    s2.on_timer(t1);
    assert!(s2.take_output().is_empty(), "the old writer is still there");
    // the old connection's reset arrives: it flushes frame 1 and lets go
    s1.peer_closed();
    pump(&mut s1, &mut fd, &r.reg, t1);
    assert!(s1.is_finished());
    drop(s1);
    let mut fd2 = None;
    s2.on_timer(t1 + Duration::from_millis(10));
    pump(&mut s2, &mut fd2, &r.reg, t1);
    assert_eq!(
        decode_all(&s2.take_output()),
        ["WELCOME 1 Durable", "ACK 2"],
        "frame 2, sent behind the HELLO, is stored once the writer role is free"
    );
}

#[test]
fn idle_timeout_and_shutdown() {
    let r = rig("idle", |c| c.idle_timeout = Duration::from_millis(100));
    let t0 = Instant::now();
    let mut s = IngestSession::new(r.cfg.clone(), r.reg.clone(), t0);
    assert_eq!(s.deadline(), Some(t0 + Duration::from_millis(100)));
    s.on_timer(t0 + Duration::from_millis(100));
    assert_eq!(decode_all(&s.take_output()), ["ERROR IDLE_TIMEOUT"]);
    assert!(s.is_finished());
    let mut s = IngestSession::new(r.cfg.clone(), r.reg.clone(), t0);
    let mut fd = None;
    s.feed(&hello("sd", false), t0);
    pump(&mut s, &mut fd, &r.reg, t0);
    let mut b = Vec::new();
    protocol::encode_frame(&mut b, 1, 1, 1, b"k");
    s.feed(&b, t0);
    s.begin_shutdown();
    pump(&mut s, &mut fd, &r.reg, t0);
    assert_eq!(
        decode_all(&s.take_output()),
        ["WELCOME 0 Durable", "ACK 1", "ERROR SHUTTING_DOWN"]
    );
    assert!(s.is_finished());
}

/// TEST ONLY burn (the calibrated slowdown CI injects): the knobs reach the session and a
/// frame costs per_frame + per_kib * payload / 1024 rounds, no more, no fewer.
#[test]
fn test_burn_knobs_reach_the_session_and_count_rounds_by_frame_size() {
    use engine::server::session::TestBurn;
    let mut cfg = engine::config::Config::default();
    cfg.set("server.test-burn-rounds-per-frame", "7").unwrap();
    cfg.set("server.test-burn-rounds-per-kib", "3").unwrap();
    let b = engine::server::session_config(&cfg).test_burn;
    assert_eq!(
        b,
        TestBurn {
            per_frame: 7,
            per_kib: 3,
            cpu_pct: 0
        }
    );
    let by_rounds = |n: u64| {
        TestBurn {
            per_frame: n,
            per_kib: 0,
            cpu_pct: 0,
        }
        .burn(0, 42)
    };
    // 2,560 payload bytes = 2.5 KiB: 7 + 3 * 2560 / 1024 = 14 rounds.
    assert_eq!(b.burn(2560, 42), by_rounds(14));
    assert_ne!(b.burn(2560, 42), by_rounds(13));
    assert_eq!(
        TestBurn::default().burn(100_000, 42),
        42,
        "zero rounds: off"
    );
    assert!(!b.is_off() && TestBurn::default().is_off());
}

/// TEST ONLY CPU share (`test-burn-cpu-pct`): the knob reaches the session, values above
/// 100 are refused with the key named, and a thread that parses frames burns that share
/// of its own CPU time, once per 16 frames (or 64 KiB), never burning its own burn again.
#[test]
fn test_burn_cpu_share_burns_that_share_of_the_threads_own_cpu_time() {
    use engine::server::session::TestBurn;
    use engine::sys::fs::thread_cpu_ns;
    let mut cfg = engine::config::Config::default();
    cfg.set("server.test-burn-cpu-pct", "50").unwrap();
    let b = engine::server::session_config(&cfg).test_burn;
    assert_eq!(b.cpu_pct, 50);
    assert!(!b.is_off());
    let mut bad = engine::config::Config::default();
    bad.set("server.test-burn-cpu-pct", "101").unwrap();
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("test-burn-cpu-pct") && e.contains("101"), "{e}");

    // Work of a known CPU time between burns: the thread's total is 1.5x its work.
    let (work, total, before_16th, after_16th) = std::thread::spawn(move || {
        let spin = |n: u64| {
            let mut x = 1u64;
            for _ in 0..n {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            x
        };
        b.burn_cpu_share(1); // the first call only sets the mark
        let start = thread_cpu_ns();
        let mut work = 0;
        for i in 0..100 {
            let t0 = thread_cpu_ns();
            spin(200_000);
            work += thread_cpu_ns() - t0;
            b.burn_cpu_share(i);
        }
        let total = thread_cpu_ns() - start;
        // Per frame: 15 small frames burn nothing, the 16th burns for all of them.
        let t0 = thread_cpu_ns();
        spin(2_000_000);
        for i in 0..15 {
            b.burn(100, i);
        }
        let before_16th = thread_cpu_ns() - t0;
        b.burn(100, 15);
        let after_16th = thread_cpu_ns() - t0;
        (work, total, before_16th, after_16th)
    })
    .join()
    .unwrap();
    let ratio = total as f64 / work as f64;
    assert!(
        (1.40..1.65).contains(&ratio),
        "50% share: the thread used {total} ns for {work} ns of work ({ratio:.3}x)"
    );
    let r16 = after_16th as f64 / before_16th as f64;
    assert!(
        (1.40..1.65).contains(&r16),
        "the 16th frame burns 50% of the CPU since the last burn: {before_16th} ns before it, {after_16th} after ({r16:.3}x)"
    );
}

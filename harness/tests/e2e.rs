//! End to end against the real recorder (`recorder serve` from the engine crate): a short
//! sweep with both backends, ingest and serve; an engine-refused combination is an error
//! of the experiment file before anything runs; and the DS generator's byte-for-byte
//! verification through resumes.

mod common;

use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn short_sweep_against_the_real_recorder() {
    let rec = recorder_bin();
    let d = tmpdir("e2e");
    let exp = write_exp(
        &d,
        r#"
        ramp_up_s = 0.5
        measure_s = 1.5
        [cell]
        workload = ["ingest", "serve"]
        "server.backend" = ["blocking", "uring"]
        "load.matches" = 16
        "load.prefill-matches" = 4
        "load.prefill-s" = 1
        "load.concurrency" = 2
        "#,
    );
    let out = d.join("out");
    let t0 = Instant::now();
    let o = Command::new(harness_bin())
        .arg("sweep")
        .arg(&exp)
        .arg("--out")
        .arg(&out)
        .arg("--recorder")
        .arg(&rec)
        .env("HARNESS_STATE_DIR", d.join("state"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "the e2e sweep must stay short"
    );
    let rows = read_runs(&out);
    assert_eq!(rows.len(), 4, "{err}");
    for r in &rows {
        assert_eq!(r["status"], "ok", "{r:?}\n{err}");
        assert!(
            r["throughput_mb_per_s"].parse::<f64>().unwrap() > 0.0,
            "{r:?}"
        );
        assert_eq!(r["errors"], "0", "{r:?}");
        if r["workload"] == "ingest" {
            assert!(r["ack_p50_us"].parse::<f64>().unwrap() > 0.0);
        } else {
            assert!(r["req_p50_us"].parse::<f64>().unwrap() > 0.0);
        }
        if r["dim.server.backend"] == "uring" {
            assert!(
                r["ring_fdinfo"].starts_with("rings=") && r["ring_fdinfo"] != "rings=0",
                "{r:?}"
            );
            let ios: f64 = r["ios_per_syscall"]
                .parse()
                .unwrap_or_else(|_| panic!("uring run without ios_per_syscall: {r:?}"));
            assert!(ios > 0.0, "{r:?}");
        } else {
            assert_eq!(r["ring_fdinfo"], "rings=0");
            assert_eq!(
                r["ios_per_syscall"], "",
                "the blocking backend makes no io_uring_enter call: {r:?}"
            );
        }
        let log = std::fs::read_to_string(out.join(&r["log"])).unwrap();
        assert!(log.contains("ingest listening on"), "{log}");
    }
    // A combination the engine refuses is the experiment file's error: exit 2, the key
    // named, nothing run (not an `unsupported` cell).
    let bad = write_exp(
        &d,
        r#"
        measure_s = 1
        [cell]
        "server.backend" = ["uring", "blocking"]
        [[include]]
        "server.backend" = "blocking"
        "file.register-buffers" = true
        "#,
    );
    for cmd in ["plan", "sweep"] {
        let o = Command::new(harness_bin())
            .arg(cmd)
            .arg(&bad)
            .args(["--out"].iter().filter(|_| cmd == "sweep"))
            .args([d.join("bad-out")].iter().filter(|_| cmd == "sweep"))
            .env("HARNESS_STATE_DIR", d.join("state"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {err}");
        assert!(
            err.contains("c0002") && err.contains("register-buffers"),
            "{cmd}: the cell and the engine's message are named: {err}"
        );
    }
    assert!(!d.join("bad-out").join("runs.csv").exists());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn ds_verify_through_resumes_against_the_real_recorder() {
    let rec = recorder_bin();
    let d = tmpdir("e2e-ds");
    let log = d.join("log");
    let mut child = Command::new(&rec)
        .args(["serve", "--store"])
        .arg(d.join("store"))
        .args([
            "--ingest-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--backend",
            "uring",
        ])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let (ingest, http) = loop {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        let f = |p: &str| {
            t.lines().find_map(|l| {
                l.split(p)
                    .nth(1)
                    .and_then(|a| a.trim().parse::<std::net::SocketAddr>().ok())
            })
        };
        if let (Some(i), Some(h)) = (f("ingest listening on "), f("http listening on ")) {
            break (i, h);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "recorder did not start: {t}"
        );
        assert!(child.try_wait().unwrap().is_none(), "recorder exited: {t}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let cfg = harness::ds::DsConfig {
        addr: ingest,
        matches: 10,
        tick_hz: 50.0,
        ramp_up_s: 0.3,
        measure_s: 2.0,
        disconnect_every_s: 0.7,
        ..Default::default()
    };
    let rep = harness::ds::run(
        &cfg,
        Arc::new(harness::ds::DsCounters::default()),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    assert!(rep.reconnects > 0, "{}", rep.summary());
    assert_eq!(rep.sealed as usize, cfg.matches, "{}", rep.summary());
    let v = harness::ds::verify(&cfg, http, &rep.matches);
    let _ = child.kill();
    let _ = child.wait();
    assert!(v.mismatches.is_empty(), "{:?}", v.mismatches);
    assert_eq!(v.verified, cfg.matches);
    let _ = std::fs::remove_dir_all(&d);
}

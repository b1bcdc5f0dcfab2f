//! The `wrk-serve` workload against the real recorder (both backends) and nginx: wrk
//! drives the serving, and the row has its requests/s, MB/s, latency percentiles and
//! CPU beside the server's. Without wrk on the machine the cells are `unsupported` with
//! the reason (./lab installs wrk, so CI takes the first branch).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn wrk_installed() -> bool {
    Command::new("wrk")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("wrk"))
}

#[test]
fn wrk_drives_the_recorder_and_nginx_and_its_figures_are_in_runs_csv() {
    let rec = recorder_bin();
    let d = tmpdir("wrk");
    let exp = write_exp(
        &d,
        r#"
        ramp_up_s = 0.5
        measure_s = 1
        [cell]
        workload = "wrk-serve"
        "server.backend" = ["uring", "blocking"]
        "load.prefill-matches" = 3
        "load.prefill-s" = 1
        "load.tick-hz" = 64
        "load.delta" = "fixed:8k"
        "wrk.threads" = 1
        "wrk.connections" = 2
        [[include]]
        kind = "nginx"
        workload = "wrk-serve"
        "nginx.files" = 3
        "nginx.file-size" = "512k"
        "wrk.threads" = 1
        "wrk.connections" = 2
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
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "the sweep must stay short"
    );
    let rows = read_runs(&out);
    assert_eq!(rows.len(), 3, "{err}");
    if !wrk_installed() {
        assert_eq!(o.status.code(), Some(4), "nothing could run: {err}");
        for r in &rows {
            assert_eq!(r["status"], "unsupported", "{r:?}");
            assert!(r["reason"].contains("needs wrk"), "{r:?}");
            assert_eq!(r["throughput_mb_per_s"], "", "{r:?}");
        }
        return;
    }
    assert!(o.status.success(), "{err}");
    let num = |r: &std::collections::HashMap<String, String>, c: &str| -> f64 {
        r[c].parse()
            .unwrap_or_else(|_| panic!("{c} is not a number: {r:?}\n{err}"))
    };
    for r in &rows {
        assert_eq!(r["status"], "ok", "{r:?}\n{err}");
        assert_eq!(r["workload"], "wrk-serve");
        assert_eq!(r["errors"], "0", "{r:?}");
        let (mbs, rps) = (num(r, "throughput_mb_per_s"), num(r, "req_per_s"));
        assert!(mbs > 0.0 && rps > 0.0, "{r:?}");
        // Whole replays: bytes per request at least the smallest file served (nginx 512 KiB;
        // the recorder's replays are several hundred KiB at this prefill).
        if r["kind"] == "nginx" {
            assert!(mbs * 1e6 / rps >= 512.0 * 1024.0, "{r:?}");
        }
        let p50 = num(r, "req_p50_us");
        assert!(p50 > 0.0, "{r:?}");
        assert!(num(r, "req_p90_us") >= p50 && num(r, "req_p99_us") >= num(r, "req_p90_us"));
        assert!(num(r, "req_p999_us") >= num(r, "req_p99_us"));
        assert!(num(r, "req_max_us") >= num(r, "req_p999_us"));
        // wrk's CPU and the server's, side by side.
        assert!(num(r, "gen_cpu_pct") > 0.0, "{r:?}");
        assert!(num(r, "recorder_cpu_pct") > 0.0, "{r:?}");
        assert!(num(r, "cpu_s_per_gib") > 0.0, "{r:?}");
        assert!(
            r["load"].starts_with("wrk -t1 -c2 -d1s --timeout 10s --latency;warm-up=1s"),
            "{r:?}"
        );
        let wrk_log = out.join(format!("logs/{}.wrk.log", r["run_id"]));
        let text = std::fs::read_to_string(&wrk_log).unwrap();
        assert!(
            text.contains("WRK_RESULT") && text.contains("Latency Distribution"),
            "{text}"
        );
        // The options in effect, as for any recorder run (none for blocking's net.*).
        if r["kind"] == "recorder" {
            let uring = r["dim.server.backend"] == "uring";
            assert_eq!(r["opt.net.send"].is_empty(), !uring, "{r:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&d);
}

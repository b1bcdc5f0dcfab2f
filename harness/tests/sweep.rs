//! Sweeps against the fake recorder: CSV and manifest contents, unsupported and failed
//! cells, resume, and block-layer restoration on normal end, on error and on SIGINT
//! (on loop devices the tests create; never the root disk).

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn unsupported_and_crashed_cells_are_recorded_and_the_sweep_goes_on() {
    let d = tmpdir("sw1");
    let exp = write_exp(
        &d,
        r#"
        name = "t"
        ramp_up_s = 0.3
        measure_s = 1
        [cell]
        "load.matches" = [4, 8]
        [[include]]
        "raw.fake-unsupported" = "IOPOLL needs poll queues"
        [[include]]
        "raw.fake-crash-after-ms" = "300"
        "#,
    );
    let out = d.join("out");
    let (code, err) = sweep(&exp, &out, &d.join("state"), &["--fail-on-failed"]);
    assert_eq!(
        code, 3,
        "a failed run gives exit code 3 with --fail-on-failed: {err}"
    );
    let rows = read_runs(&out);
    assert_eq!(rows.len(), 4, "{err}");
    let by = |cell: &str| rows.iter().find(|r| r["cell_id"] == cell).unwrap();
    for c in ["c0000", "c0001"] {
        let r = by(c);
        assert_eq!(r["status"], "ok", "{r:?}");
        assert!(r["throughput_mb_per_s"].parse::<f64>().unwrap() > 0.0);
        assert!(r["ack_p99_us"].parse::<f64>().unwrap() > 0.0);
        assert!(!r["steal_pct"].is_empty() && !r["ctx_switches_per_s"].is_empty());
        assert_eq!(r["errors"], "0");
        assert!(out.join(&r["log"]).exists());
        assert!(out.join(format!("timeseries/{}.csv", r["run_id"])).exists());
    }
    assert_eq!(by("c0000")["dim.load.matches"], "4");
    assert_eq!(
        by("c0001")["dims"],
        "load.matches=8;raw.fake-unsupported=;raw.fake-crash-after-ms="
    );
    let u = by("c0002");
    assert_eq!(u["status"], "unsupported");
    assert!(u["reason"].contains("IOPOLL needs poll queues"), "{u:?}");
    assert!(
        u["throughput_mb_per_s"].is_empty(),
        "no metric for a run that was not measured"
    );
    let f = by("c0003");
    assert_eq!(f["status"], "failed", "{f:?}");
    let log = std::fs::read_to_string(out.join(&f["log"])).unwrap();
    assert!(
        log.contains("crashing on purpose"),
        "the failed run's log is kept: {log}"
    );
    assert!(
        f["reason"].contains("crashing on purpose"),
        "the reason quotes the log: {f:?}"
    );
    // Manifest.
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    for k in [
        "git_rev",
        "command_line",
        "started_at",
        "finished_at",
        "kernel",
        "cpu_model",
        "cores",
        "mem_total_kb",
        "hwloc_topology",
        "experiment",
    ] {
        assert!(!m[k].is_null(), "manifest lacks {k}");
    }
    assert_eq!(m["schema"], 2);
    assert_eq!(
        m["dimensions"],
        serde_json::json!([
            "load.matches",
            "raw.fake-unsupported",
            "raw.fake-crash-after-ms"
        ])
    );
    assert_eq!(m["target"]["kind"], "dir");
    assert!(
        m["target"]["queue"]
            .as_object()
            .is_some_and(|q| q.contains_key("scheduler")),
        "{}",
        m["target"]
    );
    assert!(m["hwloc_topology"].as_str().unwrap().contains("PU"));
    // CSV header: documented columns in the documented order.
    let h = std::fs::read_to_string(out.join("runs.csv")).unwrap();
    let head = h.lines().next().unwrap();
    assert!(head.starts_with("run_id,cell_id,rep,pair,revision,kind,workload,status,reason,started_at,duration_s,dims,dim.load.matches,dim.raw.fake-unsupported,dim.raw.fake-crash-after-ms,requested_flags,effective_flags,throughput_mb_per_s"), "{head}");
    // Resume: nothing left to do, no row added.
    let (code, err) = sweep(&exp, &out, &d.join("state"), &["--resume"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(read_runs(&out).len(), 4);
    // Without --resume an existing result dir is refused.
    let (code, err) = sweep(&exp, &out, &d.join("state"), &[]);
    assert_eq!(code, 2);
    assert!(err.contains("--resume"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

fn watch(
    dev: String,
    key: &'static str,
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(v) = harness::block::read_setting(&dev, key) {
                let mut s = seen.lock().unwrap();
                if s.last() != Some(&v) {
                    s.push(v);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

#[test]
fn block_settings_are_applied_then_restored_on_normal_end_and_on_refusal() {
    let lf = LoopFs::new("blk1");
    let (sched0, nom0) = (lf.read("scheduler"), lf.read("nomerges"));
    let other = if sched0 == "mq-deadline" {
        "none"
    } else {
        "mq-deadline"
    };
    let d = tmpdir("blk1o");
    let exp = write_exp(
        &d,
        &format!(
            r#"
            ramp_up_s = 0.3
            measure_s = 1
            [target]
            kind = "device"
            device = "{dev}"
            path = "{mnt}"
            [cell]
            "load.matches" = 4
            "block.scheduler" = "{other}"
            "block.nomerges" = [1, 2]
            [[include]]
            "block.nomerges" = 2
            "block.scheduler" = "no-such-scheduler"
            "#,
            dev = lf.dev,
            mnt = lf.mnt.display()
        ),
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen_n = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let w1 = watch(lf.dev.clone(), "scheduler", seen.clone(), stop.clone());
    let w2 = watch(lf.dev.clone(), "nomerges", seen_n.clone(), stop.clone());
    let out = d.join("out");
    let (code, err) = sweep(&exp, &out, &d.join("state"), &[]);
    stop.store(true, Ordering::Relaxed);
    w1.join().unwrap();
    w2.join().unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        seen.lock().unwrap().contains(&other.to_string()),
        "the scheduler was switched during runs: {:?}",
        seen.lock().unwrap()
    );
    let n = seen_n.lock().unwrap().clone();
    assert!(
        n.contains(&"1".to_string()) && n.contains(&"2".to_string()),
        "nomerges took both values: {n:?}"
    );
    assert_eq!(lf.read("scheduler"), sched0, "scheduler restored");
    assert_eq!(
        lf.read("nomerges"),
        nom0,
        "nomerges restored (also after the refused cell)"
    );
    let rows = read_runs(&out);
    let refused = rows.iter().find(|r| r["cell_id"] == "c0002").unwrap();
    assert_eq!(refused["status"], "unsupported");
    assert!(
        refused["reason"].contains("no-such-scheduler")
            && refused["reason"].contains("Invalid argument"),
        "{refused:?}"
    );
    assert!(rows.iter().filter(|r| r["status"] == "ok").count() == 2);
    // The timeseries has the device's stats.
    let ts = std::fs::read_to_string(out.join(format!(
        "timeseries/{}.csv",
        rows.iter().find(|r| r["status"] == "ok").unwrap()["run_id"]
    )))
    .unwrap();
    assert!(ts.lines().count() > 3, "{ts}");
    assert!(
        std::fs::read_dir(d.join("state")).unwrap().next().is_none(),
        "journal removed after a clean end"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn sigint_mid_run_restores_block_settings() {
    signal_mid_run_restores_block_settings("-INT", "blk2");
}

#[test]
fn sigterm_mid_run_restores_block_settings() {
    signal_mid_run_restores_block_settings("-TERM", "blk4");
}

fn signal_mid_run_restores_block_settings(signal: &str, tag: &str) {
    let lf = LoopFs::new(tag);
    let (sched0, ra0) = (lf.read("scheduler"), lf.read("read_ahead_kb"));
    let other = if sched0 == "mq-deadline" {
        "none"
    } else {
        "mq-deadline"
    };
    let ra = if ra0 == "512" { "256" } else { "512" };
    let d = tmpdir("blk2o");
    let exp = write_exp(
        &d,
        &format!(
            "ramp_up_s = 0.2\nmeasure_s = 60\n[target]\nkind = \"device\"\ndevice = \"{}\"\npath = \"{}\"\n[cell]\n\"load.matches\" = 2\n\"block.scheduler\" = \"{other}\"\n\"block.read_ahead_kb\" = {ra}\n",
            lf.dev,
            lf.mnt.display()
        ),
    );
    let out = d.join("out");
    let mut child = Command::new(harness_bin())
        .arg("sweep")
        .arg(&exp)
        .arg("--out")
        .arg(&out)
        .args(["--recorder", fake_bin()])
        .env("HARNESS_STATE_DIR", d.join("state"))
        .stderr(std::fs::File::create(d.join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while lf.read("scheduler") != other || lf.read("read_ahead_kb") != ra {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the sweep never applied the settings"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "sweep ended early: {}",
            std::fs::read_to_string(d.join("stderr")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The journal holds the originals while they are changed.
    let journal: String = std::fs::read_dir(d.join("state"))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert!(
        journal.contains(&format!("\"orig\":\"{sched0}\"")),
        "{journal}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let t1 = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(30),
            "the sweep did not stop after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = std::fs::read_to_string(d.join("stderr")).unwrap();
    assert_eq!(st.code(), Some(130), "{err}");
    assert_eq!(
        lf.read("scheduler"),
        sched0,
        "scheduler restored after SIGINT: {err}"
    );
    assert_eq!(
        lf.read("read_ahead_kb"),
        ra0,
        "read_ahead_kb restored after SIGINT"
    );
    let rows = read_runs(&out);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["status"], "failed");
    assert!(rows[0]["reason"].contains("interrupted"), "{:?}", rows[0]);
    assert!(
        std::fs::read_dir(d.join("state")).unwrap().next().is_none(),
        "journal removed"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_dead_harness_journal_is_replayed_at_start_up() {
    let lf = LoopFs::new("blk3");
    let nom0 = lf.read("nomerges");
    let changed = if nom0 == "2" { "1" } else { "2" };
    std::fs::write(harness::block::queue_path(&lf.dev, "nomerges"), changed).unwrap();
    let state = tmpdir("blk3s");
    // pid 2^22 + 1 is above the default pid_max: never alive.
    let entry = serde_json::json!({"op": "Sysfs", "path": harness::block::queue_path(&lf.dev, "nomerges"), "orig": nom0});
    std::fs::write(state.join("4194305.journal"), format!("{entry}\n")).unwrap();
    std::env::set_var("HARNESS_STATE_DIR", &state);
    let done = harness::block::recover_stale();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(lf.read("nomerges"), nom0);
    assert!(!state.join("4194305.journal").exists());
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn loop_target_is_created_and_removed() {
    let d = tmpdir("loopt");
    let exp = write_exp(
        &d,
        "ramp_up_s = 0.2\nmeasure_s = 0.8\n[target]\nkind = \"loop\"\nsize = \"256m\"\n[cell]\n\"load.matches\" = 3\n\"block.nomerges\" = [0, 2]\n",
    );
    let out = d.join("out");
    let (code, err) = sweep(&exp, &out, &d.join("state"), &[]);
    assert_eq!(code, 0, "{err}");
    let rows = read_runs(&out);
    assert!(rows.iter().all(|r| r["status"] == "ok"), "{rows:?}");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let dev = m["target"]["device"].as_str().unwrap().to_string();
    assert!(dev.starts_with("loop"), "{}", m["target"]);
    assert_eq!(m["target"]["fs"], "ext4");
    assert!(
        harness::block::loop_backing(&dev).is_none_or(|b| !b.starts_with(&out)),
        "loop device detached"
    );
    assert!(!out.join("target.img").exists());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn runs_over_the_generator_limit_are_rejected_with_the_reason() {
    let d = tmpdir("rej");
    let exp = write_exp(
        &d,
        "ramp_up_s = 0.2\nmeasure_s = 1\n[repeat]\nretries = 2\n[limits]\ngen_cpu_pct = 0.0001\n[cell]\n\"load.matches\" = 100\n",
    );
    let out = d.join("out");
    let (code, err) = sweep(&exp, &out, &d.join("state"), &[]);
    assert_eq!(
        code, 4,
        "no cell could run (every run rejected): exit 4\n{err}"
    );
    assert!(err.contains("no cell of the sweep could run"), "{err}");
    let rows = read_runs(&out);
    assert_eq!(
        rows.len(),
        3,
        "a rejected repetition is re-run, up to repeat.retries times: {rows:?}"
    );
    assert!(rows.iter().all(|r| r["status"] == "rejected"));
    assert!(
        err.contains("1 good repetition(s) short"),
        "the shortfall is reported: {err}"
    );
    assert_eq!(rows[0]["status"], "rejected", "{:?}", rows[0]);
    assert!(
        rows[0]["reason"].contains("load generator saturated"),
        "{:?}",
        rows[0]
    );
    assert!(
        rows[0]["reason"].contains("MB/s"),
        "the measured figure stays in the reason"
    );
    assert!(
        rows[0]["throughput_mb_per_s"].is_empty(),
        "a rejected run has no metrics"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_refusal_after_start_is_unsupported_and_a_crash_whose_log_mentions_the_word_is_failed() {
    let d = tmpdir("refuse");
    // Both recorders exit during the run. The first prints the recorder's own refusal line;
    // the second's log has a line with "unsupported" in it (the fake recorder echoes the
    // option) before it aborts: only the first is unsupported.
    let exp = write_exp(
        &d,
        r#"
        ramp_up_s = 0.3
        measure_s = 1
        [cell]
        "load.matches" = 4
        [[include]]
        "raw.fake-refuse-after-ms" = "300"
        [[include]]
        "raw.fake-note" = "iopoll unsupported on vda"
        "raw.fake-crash-after-ms" = "300"
        "#,
    );
    let out = d.join("out");
    let (code, err) = sweep(&exp, &out, &d.join("state"), &["--fail-on-failed"]);
    assert_eq!(code, 3, "the crash is a failed run: {err}");
    let rows = read_runs(&out);
    let by = |cell: &str| rows.iter().find(|r| r["cell_id"] == cell).unwrap();
    assert_eq!(rows.len(), 3, "{err}");
    assert_eq!(by("c0000")["status"], "ok");
    let u = by("c0001");
    assert_eq!(u["status"], "unsupported", "{u:?}");
    assert_eq!(
        u["reason"], "unsupported: fake refusal at first use",
        "{u:?}"
    );
    assert!(u["throughput_mb_per_s"].is_empty(), "{u:?}");
    assert!(out.join(&u["log"]).exists(), "{u:?}");
    let f = by("c0002");
    assert_eq!(f["status"], "failed", "{f:?}");
    assert!(f["reason"].contains("crashing on purpose"), "{f:?}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_sweep_where_no_cell_can_run_exits_4() {
    let d = tmpdir("none");
    let exp = write_exp(
        &d,
        "ramp_up_s = 0.2\nmeasure_s = 0.5\n[cell]\n\"raw.fake-unsupported\" = [\"no poll queues\", \"no SQPOLL\"]\n",
    );
    let out = d.join("out");
    let (code, err) = sweep(&exp, &out, &d.join("state"), &[]);
    assert_eq!(code, 4, "{err}");
    let rows = read_runs(&out);
    assert_eq!(rows.len(), 2, "an unsupported cell runs once: {rows:?}");
    assert!(rows.iter().all(|r| r["status"] == "unsupported"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn manifest_names_tool_versions_and_the_revision_outside_a_checkout() {
    let d = tmpdir("manifest");
    let exp = write_exp(
        &d,
        "ramp_up_s = 0.2\nmeasure_s = 0.5\nseed = \"fresh\"\n[cell]\n\"load.matches\" = 2\n",
    );
    let out = d.join("out");
    // Run from a directory that is not a git checkout.
    let o = Command::new(harness_bin())
        .arg("sweep")
        .arg(&exp)
        .arg("--out")
        .arg(&out)
        .args(["--recorder", fake_bin()])
        .env("HARNESS_STATE_DIR", d.join("state"))
        .current_dir(&d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let rev = m["git_rev"].as_str().unwrap();
    assert!(!rev.is_empty(), "{m}");
    assert_eq!(m["git_rev"], m["harness_git_rev"], "{m}");
    assert!(m["git_rev_source"]
        .as_str()
        .unwrap()
        .contains("harness build"));
    for k in [
        "fio",
        "iperf3",
        "nginx",
        "wrk",
        "kernel",
        "rustc",
        "harness",
        "recorder_head",
    ] {
        assert!(
            m["tools"].get(k).is_some(),
            "tools.{k} missing: {}",
            m["tools"]
        );
    }
    assert!(m["tools"]["kernel"].as_str().unwrap().starts_with("Linux"));
    assert!(m["tools"]["rustc"].as_str().unwrap().starts_with("rustc"));
    assert_eq!(m["seed_fresh"], true);
    assert!(m["seed"].as_u64().is_some());
    let _ = std::fs::remove_dir_all(&d);
}

/// `harness power`: trials written as they run, resumed where they stopped; its directory
/// is what `analysis power` reads (checked in analysis' own tests).
#[test]
fn power_trials_alternate_and_continue_where_they_stopped() {
    let d = tmpdir("power");
    let exp = write_exp(
        &d,
        "ramp_up_s = 0.2\nmeasure_s = 0.4\n[repeat]\nmin = 2\nmax = 2\n[cell]\n\"load.matches\" = 2\n",
    );
    let out = d.join("study");
    let power = |budget: &str| {
        Command::new(harness_bin())
            .arg("power")
            .arg(&exp)
            .args(["--recorder", fake_bin(), "--trials", "2"])
            .arg("--out")
            .arg(&out)
            .args(["--inject", "k5=--fake-burn 5", "--max-minutes", budget])
            .env("HARNESS_STATE_DIR", d.join("state"))
            .output()
            .unwrap()
    };
    // A budget of ~0 minutes: one trial sweep per call.
    let o = power("0");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("3 trial sweeps left"), "{err}");
    assert!(out.join("trials/01-aa/head/manifest.json").exists());
    assert!(!out.join("trials/01-k5").exists());
    let o = power("1000");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("1 of 4 trial sweeps done"), "{err}");
    for t in ["01-aa", "01-k5", "02-aa", "02-k5"] {
        let rows = read_runs(&out.join("trials").join(t).join("head"));
        assert_eq!(rows.len(), 2, "{t}: {rows:?}");
    }
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("trials/01-k5/head/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["head_args"], serde_json::json!(["--fake-burn", "5"]));
    let study: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("power.json")).unwrap()).unwrap();
    assert_eq!(study["injections"][0]["name"], "k5");
    // Another injection with the same --out is refused.
    let o = Command::new(harness_bin())
        .arg("power")
        .arg(&exp)
        .args(["--recorder", fake_bin(), "--trials", "2"])
        .arg("--out")
        .arg(&out)
        .args(["--inject", "k9=--fake-burn 9"])
        .env("HARNESS_STATE_DIR", d.join("state"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    // No A/A trial at all would leave the injected trials without margins.
    let o = Command::new(harness_bin())
        .arg("power")
        .arg(&exp)
        .args([
            "--recorder",
            fake_bin(),
            "--trials",
            "2",
            "--aa-trials",
            "0",
        ])
        .arg("--out")
        .arg(d.join("study2"))
        .args(["--inject", "k5=--fake-burn 5"])
        .env("HARNESS_STATE_DIR", d.join("state"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--aa-trials 0"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

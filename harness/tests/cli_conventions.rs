//! Issue 12's CLI conventions, against the real binaries: `--version` with the git
//! revision, no panic on a closed stdout, `harness ds` exits non-zero when it never
//! connected, `harness plan` and `harness sweep` exit alike on a bad experiment, and
//! `--json` for `harness ds` and `harness clients`.

mod common;
use common::*;
use std::process::{Command, Stdio};

fn revision() -> String {
    let o = Command::new("git").args(["rev-parse", "HEAD"]).output();
    match o {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => "unknown".into(),
    }
}

#[test]
fn version_names_the_package_version_and_git_revision() {
    for (bin, name) in [
        (harness_bin().into(), "harness"),
        (recorder_bin(), "recorder"),
    ] {
        let o = Command::new(&bin).arg("--version").output().unwrap();
        assert!(o.status.success(), "{name}");
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(
            out.trim(),
            format!("{name} {} (git {})", env!("CARGO_PKG_VERSION"), revision()),
            "{name}"
        );
    }
}

/// Runs `bin args` with stdout a pipe whose read end is already closed (as after
/// `| head` exited): the first write fails with EPIPE, whatever the output's size.
fn into_closed_pipe(bin: &std::path::Path, args: &[&str]) -> std::process::ExitStatus {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = Command::new(bin)
        .args(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{bin:?} {args:?}: {err}");
    o.status
}

#[test]
fn a_closed_stdout_is_not_a_panic() {
    // `recorder options` prints ~100 lines; `harness plan` one per cell
    let st = into_closed_pipe(&recorder_bin(), &["options"]);
    assert_eq!(st.code(), Some(0), "recorder options | head: {st}");
    let st = into_closed_pipe(&recorder_bin(), &["options", "--markdown"]);
    assert_eq!(st.code(), Some(0), "{st}");
    let exp = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments/ci.toml");
    let st = into_closed_pipe(harness_bin().as_ref(), &["plan", exp.to_str().unwrap()]);
    assert_eq!(st.code(), Some(0), "harness plan | head: {st}");
    // and `recorder options --help` exists
    let o = Command::new(recorder_bin())
        .args(["options", "--help"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("usage: recorder options"));
}

#[test]
fn harness_ds_that_never_connected_exits_1_with_the_reason() {
    let t = std::time::Instant::now();
    let o = Command::new(harness_bin())
        .args([
            "ds",
            "--addr",
            "127.0.0.1:1",
            "--matches",
            "2",
            "--ramp-up-s",
            "0",
            "--measure-s",
            "0.5",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("never connected to the recorder at 127.0.0.1:1")
            && err.contains("CONNECT_REFUSED"),
        "{err}"
    );
    assert!(t.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn harness_plan_and_sweep_exit_2_on_a_bad_experiment() {
    let dir = tmpdir("badexp");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "this is = = not toml\n").unwrap();
    for exp in [bad.clone(), dir.join("missing.toml")] {
        for cmd in ["plan", "sweep"] {
            let mut c = Command::new(harness_bin());
            c.arg(cmd).arg(&exp);
            if cmd == "sweep" {
                c.arg("--out").arg(dir.join("out"));
            }
            let o = c.output().unwrap();
            assert_eq!(
                o.status.code(),
                Some(2),
                "harness {cmd} {}: {}",
                exp.display(),
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
    // a usage error is 2 as well (clap)
    let o = Command::new(harness_bin()).args(["plan"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn harness_ds_and_clients_json_reports_parse() {
    let f = Fake::start(&[]);
    let o = Command::new(harness_bin())
        .args([
            "ds",
            "--addr",
            &f.ingest.to_string(),
            "--http",
            &f.http.to_string(),
        ])
        .args([
            "--matches",
            "3",
            "--tick-hz",
            "50",
            "--ramp-up-s",
            "0.2",
            "--measure-s",
            "1",
            "--delta",
            "fixed:300",
            "--keyframe",
            "2k",
            "--verify",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)));
    assert!(v["frames_acked"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["established"].as_u64(), Some(3), "{v}");
    assert!(v["ack_latency_us"]["p99"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(
        v["verify"]["mismatches"].as_array().unwrap().len(),
        0,
        "{v}"
    );
    assert!(v["verify"]["verified"].as_u64().unwrap() >= 1, "{v}");
    let o = Command::new(harness_bin())
        .args([
            "clients",
            "--addr",
            &f.http.to_string(),
            "--concurrency",
            "2",
        ])
        .args(["--ramp-up-s", "0", "--measure-s", "0.5", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)));
    let p = &v["phases"][0];
    assert_eq!(p["phase"], "hot");
    assert!(p["requests"].as_u64().unwrap() > 0, "{v}");
    assert!(p["request_latency_us"]["p50"].as_f64().is_some(), "{v}");
    assert_eq!(p["errors_total"].as_u64(), Some(0), "{v}");
}

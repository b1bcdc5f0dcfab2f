//! `recorder serve` command line: --print-config, --config FILE, refused options.

use std::process::Command;

fn serve(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_recorder"))
        .arg("serve")
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

#[test]
fn print_config_shows_requested_and_effective() {
    let dir = std::env::temp_dir().join(format!("cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("r.toml");
    std::fs::write(&cfg, "[server]\nack-interval-ms = 7\nbackend = \"blocking\"\n[file]\ndurability = \"fdatasync\"\n").unwrap();
    let (code, out, err) = serve(&[
        "--config",
        cfg.to_str().unwrap(),
        "--store",
        dir.to_str().unwrap(),
        "--max-matches",
        "5",
        "--print-config",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["requested"]["server.ack-interval-ms"], "7");
    assert_eq!(v["requested"]["server.max-matches"], "5");
    assert_eq!(v["requested"]["server.workers"], "0");
    assert_ne!(
        v["effective"]["server.workers"], "0",
        "workers resolved to the CPU count"
    );
    assert_eq!(v["storage"]["durability"], "fdatasync");
    assert!(v["unused"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u.as_str().unwrap().starts_with("ring")));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn refused_options_say_what_to_change() {
    let (code, _, err) = serve(&["--store", "/tmp/x", "--ack-mode", "maybe"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("ack-mode") && err.contains("durable, received"),
        "{err}"
    );
    let (code, _, err) = serve(&["--store", "/tmp/x", "--ingest-addr", "nowhere"]);
    assert_eq!(code, 2);
    assert!(err.contains("ingest-addr"), "{err}");
    let (code, _, err) = serve(&[
        "--store",
        "/tmp/x",
        "--backend",
        "blocking",
        "--register-buffers",
        "true",
        "--write-op",
        "write-fixed",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("backend=blocking"), "{err}");
    let (code, _, err) = serve(&[
        "--store",
        "/tmp/x",
        "--durability",
        "fdatasync",
        "--sync-interval-ms",
        "5",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("ack-interval-ms"), "{err}");
    let (code, _, err) = serve(&["--store", "/tmp/x", "--journal-checkpoint-spread-pct", "95"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("journal-checkpoint-spread-pct 95 must be between 0 and 90"),
        "{err}"
    );
    let (code, _, err) = serve(&[
        "--backend",
        "blocking",
        "--ingest-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("--store"), "{err}");
}

/// `auto` single-issuer / defer-taskrun: on for io_uring workers, off with sqpoll, with
/// coop-taskrun, with single-issuer false; left auto on the blocking backend (no ring);
/// explicit values kept. (That the rings really carry the flags is checked from the
/// kernel's side in no_silent_knobs.)
#[test]
fn auto_taskrun_is_on_for_uring_workers_unless_sqpoll() {
    let dir = std::env::temp_dir().join(format!("cli-taskrun-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let get = |extra: &[&str]| -> (String, String, String, String) {
        let mut args = vec!["--store", dir.to_str().unwrap(), "--print-config"];
        args.extend_from_slice(extra);
        let (code, out, err) = serve(&args);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let s = |w: &str, k: &str| v[w][k].as_str().unwrap().to_string();
        (
            s("requested", "ring.single-issuer"),
            s("requested", "ring.defer-taskrun"),
            s("effective", "ring.single-issuer"),
            s("effective", "ring.defer-taskrun"),
        )
    };
    let t = |a: &str, b: &str, c: &str, d: &str| {
        (a.to_string(), b.to_string(), c.to_string(), d.to_string())
    };
    assert_eq!(get(&[]), t("auto", "auto", "true", "true"));
    assert_eq!(
        get(&["--sqpoll", "true"]),
        t("auto", "auto", "false", "false")
    );
    assert_eq!(
        get(&["--coop-taskrun", "true"]),
        t("auto", "auto", "false", "false")
    );
    assert_eq!(
        get(&["--single-issuer", "false"]),
        t("false", "auto", "false", "false")
    );
    assert_eq!(
        get(&["--defer-taskrun", "false"]),
        t("auto", "false", "false", "false")
    );
    assert_eq!(
        get(&["--defer-taskrun", "false", "--single-issuer", "true"]),
        t("true", "false", "true", "false")
    );
    assert_eq!(
        get(&["--backend", "blocking"]),
        t("auto", "auto", "auto", "auto")
    );
    // an explicit defer-taskrun with sqpoll is refused, naming both
    let (code, _, err) = serve(&[
        "--store",
        dir.to_str().unwrap(),
        "--print-config",
        "--sqpoll",
        "true",
        "--defer-taskrun",
        "true",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("DEFER_TASKRUN excludes SQPOLL"), "{err}");
    let (code, _, err) = serve(&[
        "--store",
        dir.to_str().unwrap(),
        "--print-config",
        "--defer-taskrun",
        "maybe",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("auto, true or false"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn durable_uring_serve_raises_unset_iowq_bounded_workers_and_says_so() {
    let dir = std::env::temp_dir().join(format!("cli-iowq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let get = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["--store", dir.to_str().unwrap(), "--print-config"];
        args.extend_from_slice(extra);
        let (code, out, err) = serve(&args);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let key = "ring.iowq-max-bounded";
    // fdatasync on io_uring: unset -> 512, shown as effective, requested stays empty.
    let v = get(&["--durability", "fdatasync"]);
    assert_eq!(v["requested"][key], "");
    assert_eq!(v["effective"][key], "512");
    // An explicit value is kept.
    let v = get(&["--durability", "fdatasync", "--iowq-max-bounded", "16"]);
    assert_eq!(v["effective"][key], "16");
    // Nothing blocks on sync without a durability policy, and blocking has no ring.
    assert_eq!(get(&[])["effective"][key], "");
    assert_eq!(
        get(&["--durability", "fdatasync", "--backend", "blocking"])["effective"][key],
        ""
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The checkpoint's writeback spread is the given share of its interval, shown in
/// --print-config (the storage section) as the milliseconds it will take.
#[test]
fn checkpoint_spread_is_shown_as_a_share_of_the_interval() {
    let dir = std::env::temp_dir().join(format!("cli-spread-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spread = |extra: &[&str]| -> u64 {
        let mut args = vec!["--store", dir.to_str().unwrap(), "--print-config"];
        args.extend_from_slice(extra);
        let (code, out, err) = serve(&args);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["storage"]["journal"]["checkpoint_spread_ms"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(spread(&[]), 0);
    assert_eq!(
        spread(&[
            "--journal-checkpoint-ms",
            "500",
            "--journal-checkpoint-spread-pct",
            "50"
        ]),
        250
    );
    assert_eq!(spread(&["--journal-checkpoint-spread-pct", "80"]), 800);
    std::fs::remove_dir_all(&dir).unwrap();
}

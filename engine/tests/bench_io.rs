//! `recorder io-bench`: argument parsing, the fio equivalence table, fio JSON parsing, and
//! one small real run side by side with fio (no speed is asserted).

use engine::bench::{self, BenchSpec};
use engine::config::Config;
use engine::fileio::{Backend, Pattern, WriteMode};
use std::path::Path;

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn parses_the_documented_flags() {
    let (spec, json) = bench::parse_args(args(&[
        "--path",
        "/tmp/x",
        "--size",
        "64m",
        "--bs",
        "128k",
        "--qd",
        "8",
        "--rw",
        "all",
        "--backend",
        "blocking",
        "--fio",
        "--json",
        "--repeat",
        "5",
        "--direct",
        "required",
        "--sqpoll",
        "true",
        "--write-mode",
        "sparse",
    ]))
    .unwrap();
    assert!(json && spec.fio);
    assert_eq!(spec.size, 64 << 20);
    assert_eq!(spec.cfg.file.block_size, 128 << 10);
    assert_eq!(spec.cfg.file.io_depth, 8);
    assert_eq!(
        spec.patterns,
        vec![
            Pattern::Write,
            Pattern::Read,
            Pattern::RandWrite,
            Pattern::RandRead
        ]
    );
    assert_eq!(spec.backend, Backend::Blocking);
    assert_eq!(spec.repeat, 5);
    assert_eq!(spec.write_mode, WriteMode::Sparse);
    assert!(spec.cfg.ring.sqpoll);
    assert_eq!(spec.dir, Path::new("/tmp/x"));
}

#[test]
fn refuses_bad_arguments_by_name() {
    let e = bench::parse_args(args(&["--bs", "1m", "--block-size", "64k"])).unwrap_err();
    assert!(
        e.contains("--bs and --block-size give different values"),
        "{e}"
    );
    let e = bench::parse_args(args(&["--size", "1000000", "--bs", "1m"])).unwrap_err();
    assert!(
        e.contains("--size 1000000 is not a non-zero multiple of the block size"),
        "{e}"
    );
    let e = bench::parse_args(args(&["--rw", "sideways"])).unwrap_err();
    assert!(e.contains("--rw") && e.contains("sideways"), "{e}");
    let e = bench::parse_args(args(&["--backend", "aio"])).unwrap_err();
    assert!(
        e.contains("backend") && e.contains("uring, blocking"),
        "{e}"
    );
    // IOPOLL is a file-I/O option here even though serving refuses it.
    bench::parse_args(args(&["--iopoll", "true", "--direct", "required"])).unwrap();
    let e = bench::parse_args(args(&["--write-op", "write-fixed"])).unwrap_err();
    assert!(e.contains("set register-buffers=true"), "{e}");
}

fn spec(pairs: &[(&str, &str)]) -> BenchSpec {
    let mut c = Config::default();
    c.set("file.direct", "required").unwrap();
    for (k, v) in pairs {
        c.set(k, v).unwrap();
    }
    let mut s = BenchSpec::new("/tmp/d", c);
    s.size = 1 << 30;
    s
}

#[test]
fn fio_equivalents() {
    let p = Path::new("/tmp/d/f");
    let a = bench::fio_args(&spec(&[]), Pattern::Write, p, true).unwrap();
    for want in [
        "--ioengine=io_uring",
        "--iodepth=32",
        "--bs=1048576",
        "--direct=1",
        "--rw=write",
        "--nonvectored=1",
        "--fallocate=none",
        "--size=1073741824",
    ] {
        assert!(a.iter().any(|x| x == want), "{want} missing from {a:?}");
    }
    let a = bench::fio_args(&spec(&[("read-op", "readv")]), Pattern::Read, p, true).unwrap();
    assert!(a.iter().any(|x| x == "--nonvectored=0"), "{a:?}");
    let a = bench::fio_args(
        &spec(&[
            ("register-buffers", "true"),
            ("write-op", "write-fixed"),
            ("register-files", "true"),
            ("sqpoll", "true"),
            ("sq-thread-cpu", "1"),
        ]),
        Pattern::Write,
        p,
        true,
    )
    .unwrap();
    for want in [
        "--fixedbufs=1",
        "--registerfiles=1",
        "--sqthread_poll=1",
        "--sqthread_poll_cpu=1",
    ] {
        assert!(a.iter().any(|x| x == want), "{want} missing from {a:?}");
    }
    let a = bench::fio_args(&spec(&[("iopoll", "true")]), Pattern::Read, p, true).unwrap();
    assert!(a.iter().any(|x| x == "--hipri=1"), "{a:?}");
    let a = bench::fio_args(
        &spec(&[("durability", "fdatasync"), ("sync-interval-bytes", "4m")]),
        Pattern::Write,
        p,
        true,
    )
    .unwrap();
    assert!(
        a.iter().any(|x| x == "--fdatasync=4") && a.iter().any(|x| x == "--end_fsync=1"),
        "{a:?}"
    );
    let a = bench::fio_args(
        &spec(&[("durability", "odsync"), ("prealloc", "true")]),
        Pattern::Write,
        p,
        true,
    )
    .unwrap();
    assert!(
        a.iter().any(|x| x == "--sync=dsync") && a.iter().any(|x| x == "--fallocate=native"),
        "{a:?}"
    );
    let mut s = spec(&[("io-depth", "4")]);
    s.backend = Backend::Blocking;
    let a = bench::fio_args(&s, Pattern::Write, p, true).unwrap();
    for want in [
        "--ioengine=psync",
        "--numjobs=4",
        "--size=268435456",
        "--offset_increment=268435456",
    ] {
        assert!(a.iter().any(|x| x == want), "{want} missing from {a:?}");
    }
}

#[test]
fn fio_has_no_equivalent_is_said() {
    let p = Path::new("/tmp/d/f");
    let e = bench::fio_args(
        &spec(&[("durability", "rwf-dsync")]),
        Pattern::Write,
        p,
        true,
    )
    .unwrap_err();
    assert!(e.contains("RWF_DSYNC"), "{e}");
    let e = bench::fio_args(
        &spec(&[("register-buffers", "true"), ("write-op", "writev-fixed")]),
        Pattern::Write,
        p,
        true,
    )
    .unwrap_err();
    assert!(e.contains("WRITEV_FIXED"), "{e}");
    let e = bench::fio_args(
        &spec(&[("durability", "fdatasync"), ("sync-interval-ms", "10")]),
        Pattern::Write,
        p,
        true,
    )
    .unwrap_err();
    assert!(e.contains("time-based"), "{e}");
    let e = bench::fio_args(
        &spec(&[("direct", "off"), ("uncached", "true")]),
        Pattern::Read,
        p,
        false,
    )
    .unwrap_err();
    assert!(e.contains("RWF_DONTCACHE"), "{e}");
    let e = bench::fio_args(
        &spec(&[("iopoll", "true"), ("hybrid-iopoll", "true")]),
        Pattern::Read,
        p,
        true,
    )
    .unwrap_err();
    assert!(e.contains("HYBRID_IOPOLL"), "{e}");
    // Flags fio cannot switch are printed side by side, not refused.
    bench::fio_args(
        &spec(&[("single-issuer", "true"), ("defer-taskrun", "true")]),
        Pattern::Read,
        p,
        true,
    )
    .unwrap();
}

#[test]
fn parses_fio_json() {
    let text = r#"note: both iodepth >= 1 and synchronous I/O engine are selected
{
  "fio version" : "fio-3.33",
  "jobs" : [ { "jobname" : "io-bench", "error" : 0, "job_runtime" : 600,
      "read" : { "io_bytes" : 1073741824, "bw_bytes" : 1789569706, "iops" : 1706.67, "runtime" : 600 },
      "write" : { "io_bytes" : 0, "bw_bytes" : 0, "iops" : 0.0, "runtime" : 0 },
      "usr_cpu" : 1.5, "sys_cpu" : 8.5 } ]
}"#;
    let m = bench::parse_fio_json(text, Pattern::Read).unwrap();
    assert!((m.mbps - 1789.569706).abs() < 1e-6, "{}", m.mbps);
    assert!((m.iops - 1706.67).abs() < 1e-9);
    assert!((m.cpu_s_per_gib - 0.06).abs() < 1e-9, "{}", m.cpu_s_per_gib);
    assert!((m.elapsed_s - 0.6).abs() < 1e-9);
    let e = bench::parse_fio_json(text, Pattern::Write).unwrap_err();
    assert!(e.contains("no data"), "{e}");
    assert!(bench::parse_fio_json("garbage", Pattern::Read).is_err());
}

#[test]
fn small_run_side_by_side_with_fio() {
    let dir = std::env::temp_dir().join(format!("bench-io-{}", std::process::id()));
    let mut c = Config::default();
    c.set("file.direct", "required").unwrap();
    c.set("file.block-size", "64k").unwrap();
    c.set("file.io-depth", "4").unwrap();
    let mut s = BenchSpec::new(&dir, c);
    s.size = 4 << 20;
    s.patterns = vec![Pattern::Write, Pattern::RandRead];
    s.repeat = 2;
    s.fio = std::process::Command::new("fio")
        .arg("--version")
        .output()
        .is_ok();
    let r = bench::run(&s).unwrap();
    assert_eq!(r.results.len(), 2);
    for p in &r.results {
        assert_eq!(p.ours.len(), 2);
        assert!(p.effective.direct);
        let m = p.ours_median().unwrap();
        assert!(m.mbps > 0.0 && m.iops > 0.0 && m.ios_per_syscall.unwrap() > 0.0);
        if s.fio {
            assert_eq!(p.fio.len(), 2, "fio runs for {:?}", p.pattern);
            assert!(p.ratio_mbps().unwrap() > 0.0);
        } else {
            eprintln!("fio is not installed: the fio side is skipped");
        }
    }
    let t = r.table();
    assert!(t.contains("randread") && t.contains("ours/fio"), "{t}");
    let j = r.to_json();
    assert_eq!(j["results"][0]["pattern"], "write");
    assert!(
        !dir.join("io-bench.write.dat").exists(),
        "write file left behind"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--nop` (the ring's overhead floor, like t/io_uring -N1): a real run through the
/// binary, text and JSON, on a plain and an SQPOLL ring; file-only options are refused.
#[test]
fn nop_mode_runs_nops_on_the_configured_ring() {
    let bin = env!("CARGO_BIN_EXE_recorder");
    let ok = |args: &[&str]| -> Vec<u8> {
        let out = std::process::Command::new(bin).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let json = ok(&[
        "io-bench", "--nop", "0.1", "--repeat", "2", "--qd", "16", "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["mode"], "nop");
    assert_eq!(v["io_depth"], 16);
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for r in runs {
        assert!(r["nops"].as_u64().unwrap() > 0, "{r}");
        assert!(r["enters"].as_u64().unwrap() > 0, "{r}");
        assert!(r["nops_per_enter"].as_f64().unwrap() >= 1.0, "{r}");
    }
    let text = ok(&[
        "io-bench", "--nop", "0.1", "--repeat", "1", "--sqpoll", "true",
    ]);
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("IORING_SETUP_SQPOLL"), "{text}");
    assert!(text.contains("NOPs/s"), "{text}");
    for bad in [
        &["io-bench", "--nop", "1", "--fio"][..],
        &["io-bench", "--nop", "1", "--rw", "write"],
        &["io-bench", "--nop", "0"],
        &["io-bench", "--nop", "1", "--backend", "blocking"],
    ] {
        let out = std::process::Command::new(bin).args(bad).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{bad:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

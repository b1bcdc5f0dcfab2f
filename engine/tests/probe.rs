//! `recorder probe`: its answers checked against real ring setups, its JSON shape, and
//! the path probe on this machine's disk.

use engine::config::RingConfig;
use engine::probe::{prereqs, probe_params, run_probe, ProbeReport};
use engine::sys::ring::consts::*;
use engine::sys::ring::{errno_name, Ring};
use std::path::PathBuf;
use std::sync::OnceLock;

fn probe_dir() -> PathBuf {
    let d =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("probe-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn report() -> &'static ProbeReport {
    static R: OnceLock<ProbeReport> = OnceLock::new();
    R.get_or_init(|| run_probe(Some(&probe_dir())))
}

fn setup_answer(flags: u32, wq_fd: Option<i32>) -> String {
    match Ring::setup(&probe_params(flags, wq_fd)) {
        Ok(_) => "ok".into(),
        Err(e) => errno_name(e.errno),
    }
}

/// The [ring] knobs that ask for `bit` (plus the sizes the probe used).
fn config_for(bits: u32) -> RingConfig {
    let mut c = RingConfig {
        sq_entries: 8,
        ..Default::default()
    };
    let on = |b: u32| bits & b != 0;
    c.iopoll = on(IORING_SETUP_IOPOLL);
    c.sqpoll = on(IORING_SETUP_SQPOLL);
    c.sq_thread_cpu = on(IORING_SETUP_SQ_AFF).then_some(0);
    c.cq_entries = on(IORING_SETUP_CQSIZE).then_some(16);
    c.clamp = on(IORING_SETUP_CLAMP);
    c.r_disabled = on(IORING_SETUP_R_DISABLED);
    c.submit_all = on(IORING_SETUP_SUBMIT_ALL);
    c.coop_taskrun = on(IORING_SETUP_COOP_TASKRUN);
    c.taskrun_flag = on(IORING_SETUP_TASKRUN_FLAG);
    c.sqe128 = on(IORING_SETUP_SQE128);
    c.cqe32 = on(IORING_SETUP_CQE32);
    c.single_issuer = Some(on(IORING_SETUP_SINGLE_ISSUER));
    c.defer_taskrun = Some(on(IORING_SETUP_DEFER_TASKRUN));
    c.no_mmap = on(IORING_SETUP_NO_MMAP);
    c.registered_fd_only = on(IORING_SETUP_REGISTERED_FD_ONLY);
    c.no_sqarray = on(IORING_SETUP_NO_SQARRAY);
    c.hybrid_iopoll = on(IORING_SETUP_HYBRID_IOPOLL);
    c.cqe_mixed = on(IORING_SETUP_CQE_MIXED);
    c
}

#[test]
fn every_flag_answer_matches_a_real_setup() {
    let r = report();
    assert_eq!(r.setup_flags.len(), SETUP_FLAGS.len());
    let first = Ring::setup(&probe_params(0, None)).unwrap();
    let mut ok_count = 0;
    for f in &r.setup_flags {
        let bit = 1u32 << f.bit;
        assert_eq!(
            SETUP_FLAGS.iter().find(|(b, _)| *b == bit).unwrap().1,
            f.flag
        );
        if bit == IORING_SETUP_ATTACH_WQ {
            assert_eq!(f.alone, setup_answer(bit, None), "{}", f.flag);
            assert_eq!(f.with_prereqs, setup_answer(bit, first.fd()), "{}", f.flag);
            continue;
        }
        assert_eq!(f.alone, setup_answer(bit, None), "{} alone", f.flag);
        assert_eq!(
            f.with_prereqs,
            setup_answer(bit | prereqs(bit), None),
            "{} with prereqs",
            f.flag
        );
        // What the probe calls ok also builds through the configuration layer.
        if f.with_prereqs == "ok" {
            ok_count += 1;
            if bit == IORING_SETUP_SQE_MIXED {
                continue; // no knob (6.19+), never ok on 6.18
            }
            let c = config_for(bit | prereqs(bit));
            let (ring, eff) = engine::uring::build(&c, None)
                .unwrap_or_else(|e| panic!("{}: probe says ok, build says {e}", f.flag));
            assert!(eff.flags & bit != 0, "{}", f.flag);
            drop(ring);
        } else {
            assert!(
                f.with_prereqs.starts_with('E'),
                "{}: {}",
                f.flag,
                f.with_prereqs
            );
        }
    }
    assert!(
        ok_count >= 10,
        "suspiciously few flags accepted: {ok_count}"
    );
}

#[test]
fn known_answers_on_this_kernel() {
    // io_uring-facts.md, checked on Linux 6.18: these hold whatever the device.
    let r = report();
    let get = |n: &str| {
        r.setup_flags
            .iter()
            .find(|f| f.flag == n)
            .unwrap_or_else(|| panic!("{n} missing"))
    };
    assert_eq!(get("IORING_SETUP_SQ_AFF").alone, "EINVAL");
    assert_eq!(get("IORING_SETUP_SQ_AFF").with_prereqs, "ok");
    assert_eq!(get("IORING_SETUP_DEFER_TASKRUN").alone, "EINVAL");
    assert_eq!(get("IORING_SETUP_REGISTERED_FD_ONLY").alone, "EINVAL");
    assert_eq!(get("IORING_SETUP_TASKRUN_FLAG").alone, "EINVAL");
    assert_eq!(get("IORING_SETUP_HYBRID_IOPOLL").alone, "EINVAL");
    assert_eq!(get("IORING_SETUP_SQPOLL").alone, "ok");
}

#[test]
fn json_shape() {
    let v = serde_json::to_value(report()).unwrap();
    let flags = v["setup_flags"].as_array().expect("setup_flags is a list");
    assert!(!flags.is_empty());
    for f in flags {
        let name = f["flag"].as_str().expect("flag is a string");
        assert!(name.starts_with("IORING_SETUP_"), "{name}");
        let alone = f["alone"].as_str().expect("alone is a string");
        assert!(
            alone == "ok" || alone.starts_with('E'),
            "{name}: alone {alone:?}"
        );
        assert!(f["with_prereqs"].is_string());
    }
    let ops = v["opcodes"].as_array().expect("opcodes is a list");
    assert!(ops.len() > 40);
    for o in ops {
        assert!(o["opcode"].as_str().unwrap().starts_with("IORING_OP_"));
        assert!(o["supported"].is_boolean());
    }
    let rf = ops
        .iter()
        .find(|o| o["opcode"] == "IORING_OP_READ_FIXED")
        .expect("READ_FIXED listed");
    assert_eq!(rf["supported"], true);
    assert_eq!(rf["number"], 4);
    assert!(v["kernel_release"].is_string());
    assert!(v["rlimit_memlock"].is_object() && v["rlimit_nofile"].is_object());
    assert!(v["path"]["queue"].is_object());
}

#[test]
fn opcode_list_matches_the_kernel_probe() {
    let r = report();
    let ring = Ring::setup(&probe_params(0, None)).unwrap();
    let ops = ring.probe_opcodes().unwrap();
    assert_eq!(r.opcodes.len(), ops.len());
    for (p, (op, sup)) in r.opcodes.iter().zip(ops) {
        assert_eq!((p.number, p.supported), (op, sup));
    }
    assert_eq!(r.opcodes[62].opcode, "IORING_OP_PIPE");
}

#[test]
fn path_probe_on_this_disk() {
    let r = report();
    let p = &r.path;
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert!(!p.filesystem.is_empty());
    let disk = p
        .block_device
        .as_deref()
        .expect("a block device behind the target dir");
    assert!(std::path::Path::new(&format!("/sys/block/{disk}/queue")).is_dir());
    for k in [
        "scheduler",
        "nomerges",
        "io_poll",
        "logical_block_size",
        "nr_requests",
        "read_ahead_kb",
    ] {
        assert!(
            p.queue.contains_key(k),
            "queue/{k} missing: {:?}",
            p.queue.keys()
        );
    }
    let lbs: u32 = p.queue["logical_block_size"].parse().unwrap();
    if let Some(off) = p.dio_offset_align {
        assert!(off > 0 && off <= 4096, "{off}");
        assert!(off >= lbs.min(512));
    }
    // IOPOLL answer agrees with the device's io_poll setting.
    if p.queue["io_poll"] == "0" {
        assert!(
            p.iopoll_read.starts_with("unsupported"),
            "{}",
            p.iopoll_read
        );
    } else {
        assert_eq!(p.iopoll_read, "ok");
    }
    // The temporary file is gone.
    let leftovers: Vec<_> = std::fs::read_dir(probe_dir())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".recorder-probe")
        })
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn cli_json_and_bad_path() {
    let exe = env!("CARGO_BIN_EXE_recorder");
    let out = std::process::Command::new(exe)
        .args(["probe", "--json", "--path"])
        .arg(probe_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    assert!(v["setup_flags"].is_array() && v["opcodes"].is_array());
    let out = std::process::Command::new(exe)
        .args(["probe", "--path", "/no/such/dir"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/no/such/dir") && err.contains("not a directory"),
        "{err}"
    );
    let out = std::process::Command::new(exe)
        .args(["probe"])
        .current_dir(probe_dir())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("IORING_SETUP_SQPOLL") && text.contains("IOPOLL O_DIRECT read"),
        "{text}"
    );
}

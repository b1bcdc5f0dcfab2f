//! Every rule of the [ring] section's validate(): a bad combination is refused before the
//! kernel is asked (uring::build returns RingError::Config, never a ring or a kernel
//! error), with a message naming the flags and saying what to change. For the rules the
//! kernel itself enforces, the raw setup is shown to fail too, so the rule is real.

use engine::config::ring::AttachWq;
use engine::config::{Config, RingConfig};
use engine::sys::ring::{Ring, SetupParams};
use engine::uring::{self, RingError};

struct Case {
    name: &'static str,
    cfg: fn(&mut RingConfig),
    /// Substrings the message must contain.
    says: &'static [&'static str],
    /// The kernel refuses the same flags on its own (checked with a raw setup).
    kernel_refuses: bool,
}

const CASES: &[Case] = &[
    Case {
        name: "defer without single issuer",
        cfg: |c| {
            c.defer_taskrun = Some(true);
            c.single_issuer = Some(false)
        },
        says: &[
            "DEFER_TASKRUN needs SINGLE_ISSUER",
            "--single-issuer true",
            "drop --defer-taskrun",
        ],
        kernel_refuses: true,
    },
    Case {
        name: "defer with sqpoll",
        cfg: |c| {
            c.defer_taskrun = Some(true);
            c.single_issuer = Some(true);
            c.sqpoll = true
        },
        says: &["DEFER_TASKRUN excludes SQPOLL", "--sqpoll"],
        kernel_refuses: true,
    },
    Case {
        name: "coop with sqpoll",
        cfg: |c| {
            c.coop_taskrun = true;
            c.sqpoll = true
        },
        says: &["COOP_TASKRUN excludes SQPOLL", "--coop-taskrun"],
        kernel_refuses: true,
    },
    Case {
        name: "taskrun flag alone",
        cfg: |c| c.taskrun_flag = true,
        says: &[
            "TASKRUN_FLAG needs COOP_TASKRUN or DEFER_TASKRUN",
            "--coop-taskrun true",
            "drop --taskrun-flag",
        ],
        kernel_refuses: true,
    },
    Case {
        name: "taskrun flag with sqpoll",
        cfg: |c| {
            c.taskrun_flag = true;
            c.sqpoll = true
        },
        says: &["TASKRUN_FLAG needs COOP_TASKRUN or DEFER_TASKRUN"],
        kernel_refuses: true,
    },
    Case {
        name: "sq_aff without sqpoll",
        cfg: |c| c.sq_thread_cpu = Some(0),
        says: &["SQ_AFF", "needs SQPOLL", "--sqpoll true"],
        kernel_refuses: true,
    },
    Case {
        name: "idle without sqpoll",
        cfg: |c| c.sq_thread_idle_ms = Some(10),
        says: &["--sq-thread-idle-ms", "needs SQPOLL", "--sqpoll true"],
        kernel_refuses: false,
    },
    Case {
        name: "hybrid without iopoll",
        cfg: |c| c.hybrid_iopoll = true,
        says: &["HYBRID_IOPOLL needs IOPOLL", "--iopoll true"],
        kernel_refuses: true,
    },
    Case {
        name: "registered fd only without no_mmap",
        cfg: |c| c.registered_fd_only = true,
        says: &["REGISTERED_FD_ONLY needs NO_MMAP", "--no-mmap true"],
        kernel_refuses: true,
    },
    Case {
        name: "registered fd only and register ring fd",
        cfg: |c| {
            c.registered_fd_only = true;
            c.no_mmap = true;
            c.register_ring_fd = true
        },
        says: &["REGISTERED_FD_ONLY", "--register-ring-fd"],
        kernel_refuses: false,
    },
    Case {
        name: "registered fd only and attach wq",
        cfg: |c| {
            c.registered_fd_only = true;
            c.no_mmap = true;
            c.attach_wq = AttachWq::First
        },
        says: &["ATTACH_WQ", "REGISTERED_FD_ONLY", "--attach-wq off"],
        kernel_refuses: false,
    },
    Case {
        name: "cqe mixed with cqe32",
        cfg: |c| {
            c.cqe_mixed = true;
            c.cqe32 = true
        },
        says: &["CQE_MIXED excludes CQE32", "--cqe32"],
        kernel_refuses: true,
    },
    Case {
        name: "zero sq entries",
        cfg: |c| c.sq_entries = 0,
        says: &["--sq-entries must be at least 1"],
        kernel_refuses: true,
    },
    Case {
        name: "sq entries over the limit",
        cfg: |c| c.sq_entries = 40000,
        says: &["--sq-entries 40000", "32768", "--clamp true"],
        kernel_refuses: true,
    },
    Case {
        name: "sq entries not a power of two",
        cfg: |c| c.sq_entries = 100,
        says: &["--sq-entries 100", "power of two", "128"],
        kernel_refuses: false,
    },
    Case {
        name: "zero cq entries",
        cfg: |c| c.cq_entries = Some(0),
        says: &["--cq-entries must be at least 1"],
        kernel_refuses: true,
    },
    Case {
        name: "cq entries over the limit",
        cfg: |c| c.cq_entries = Some(100_000),
        says: &["--cq-entries 100000", "65536", "--clamp true"],
        kernel_refuses: true,
    },
    Case {
        name: "cq entries not a power of two",
        cfg: |c| c.cq_entries = Some(1000),
        says: &["--cq-entries 1000", "power of two", "1024"],
        kernel_refuses: false,
    },
    Case {
        name: "cq smaller than sq",
        cfg: |c| {
            c.sq_entries = 64;
            c.cq_entries = Some(16)
        },
        says: &["--cq-entries 16 must be at least --sq-entries 64"],
        kernel_refuses: true,
    },
    Case {
        name: "cq smaller than sq with clamp",
        cfg: |c| {
            c.clamp = true;
            c.sq_entries = 64;
            c.cq_entries = Some(16)
        },
        says: &["--cq-entries 16 must be at least --sq-entries 64"],
        kernel_refuses: true,
    },
    Case {
        name: "sq thread on an offline cpu",
        cfg: |c| {
            c.sqpoll = true;
            c.sq_thread_cpu = Some(999)
        },
        says: &["--sq-thread-cpu 999 is not an online CPU"],
        kernel_refuses: true,
    },
    Case {
        name: "io-wq on an offline cpu",
        cfg: |c| c.iowq_cpus = vec![0, 999],
        says: &["--iowq-cpus", "CPU 999", "not online"],
        kernel_refuses: false,
    },
];

#[test]
fn every_rule_refuses_before_the_kernel_with_a_message_naming_the_flags() {
    for case in CASES {
        let mut c = RingConfig {
            sq_entries: 8,
            ..Default::default()
        };
        (case.cfg)(&mut c);
        let direct = c.validate().expect_err(case.name);
        for s in case.says {
            assert!(
                direct.message.contains(s),
                "{}: message {:?} lacks {s:?}",
                case.name,
                direct.message
            );
        }
        assert!(!direct.knobs.is_empty(), "{}: no knob named", case.name);
        // Through the whole-config validate() and through build(): same refusal, no ring.
        let cfg = Config {
            ring: c.clone(),
            ..Default::default()
        };
        assert_eq!(cfg.validate().unwrap_err(), direct, "{}", case.name);
        match uring::build(&c, None) {
            Err(RingError::Config(e)) => assert_eq!(e, direct, "{}", case.name),
            Err(e) => panic!(
                "{}: expected a configuration error, the kernel was asked: {e}",
                case.name
            ),
            Ok(_) => panic!("{}: a refused configuration was built", case.name),
        }
    }
}

#[test]
fn kernel_enforced_rules_match_the_kernel() {
    for case in CASES.iter().filter(|c| c.kernel_refuses) {
        let mut c = RingConfig {
            sq_entries: 8,
            ..Default::default()
        };
        (case.cfg)(&mut c);
        let p = SetupParams {
            flags: c.setup_flags(),
            sq_entries: c.sq_entries,
            cq_entries: c.cq_entries.unwrap_or(0),
            sq_thread_cpu: c.sq_thread_cpu.unwrap_or(0),
            sq_thread_idle_ms: c.sq_thread_idle_ms.unwrap_or(0),
            wq_fd: None,
        };
        match Ring::setup(&p) {
            Err(e) => assert!(
                e.errno == libc::EINVAL || e.errno == libc::EFAULT,
                "{}: {e}",
                case.name
            ),
            Ok(_) => panic!(
                "{}: the kernel accepted what validate() refuses as a kernel rule",
                case.name
            ),
        }
    }
}

#[test]
fn accepted_neighbours_of_the_rules() {
    let ok: &[fn(&mut RingConfig)] = &[
        |c| {
            c.defer_taskrun = Some(true);
            c.single_issuer = Some(true)
        },
        // auto single-issuer follows defer-taskrun
        |c| c.defer_taskrun = Some(true),
        |c| {
            c.taskrun_flag = true;
            c.coop_taskrun = true
        },
        |c| {
            c.sqpoll = true;
            c.sq_thread_cpu = Some(0);
            c.sq_thread_idle_ms = Some(5)
        },
        |c| {
            c.iopoll = true;
            c.hybrid_iopoll = true
        },
        |c| {
            c.registered_fd_only = true;
            c.no_mmap = true
        },
        |c| c.cqe_mixed = true,
        |c| {
            c.clamp = true;
            c.sq_entries = 100;
            c.cq_entries = Some(100_000)
        },
        |c| c.cq_entries = Some(8),
    ];
    for (i, f) in ok.iter().enumerate() {
        let mut c = RingConfig {
            sq_entries: 8,
            ..Default::default()
        };
        f(&mut c);
        c.validate().unwrap_or_else(|e| panic!("case {i}: {e}"));
    }
}

#[test]
fn bad_values_are_refused_by_name() {
    let mut c = Config::default();
    let e = c.set("ring.sqpoll", "maybe").unwrap_err();
    assert!(
        e.message.contains("sqpoll") && e.message.contains("true or false"),
        "{e}"
    );
    let e = c.set("iowq-cpus", "0-x").unwrap_err();
    assert!(
        e.message.contains("iowq-cpus") && e.message.contains("CPU list"),
        "{e}"
    );
    let e = c.set("attach-wq", "second").unwrap_err();
    assert!(e.message.contains("off, first"), "{e}");
    let e = c.set("sq-entries", "-1").unwrap_err();
    assert!(e.message.contains("sq-entries"), "{e}");
    c.set("ring.iowq-cpus", "0-1").unwrap();
    assert_eq!(c.ring.iowq_cpus, vec![0, 1]);
    c.apply_toml("[ring]\nsqpoll = true\nsq-thread-idle-ms = 50\ncq-entries = 1024\n")
        .unwrap();
    assert!(c.ring.sqpoll);
    assert_eq!(c.ring.sq_thread_idle_ms, Some(50));
    assert_eq!(c.ring.cq_entries, Some(1024));
}

//! Benchmark, not a test (ignored by default): NOP round trips per second for ring
//! configurations, as ratios against a plain ring measured in the same run.
//! `cargo test --release -p engine --test ring_nop_rate -- --ignored --nocapture`

use engine::config::RingConfig;
use engine::uring;
use std::time::Instant;

fn rate(c: &RingConfig, batch: usize, rounds: usize) -> (f64, f64) {
    let (mut r, _) = uring::build(c, None).unwrap();
    let nop = io_uring::opcode::Nop::new().build();
    let t = Instant::now();
    let e0 = r.enter_calls();
    let mut done = 0;
    for _ in 0..rounds {
        for _ in 0..batch {
            // SAFETY: NOP references no memory.
            unsafe { r.push(&nop).unwrap() };
        }
        r.submit_and_wait(batch).unwrap();
        done += r.reap(usize::MAX, |_| {});
        while done % batch != 0 {
            r.submit_and_wait(1).unwrap();
            done += r.reap(usize::MAX, |_| {});
        }
    }
    let secs = t.elapsed().as_secs_f64();
    (
        done as f64 / secs,
        done as f64 / (r.enter_calls() - e0) as f64,
    )
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture in release"]
fn nop_rate_by_configuration() {
    let base = RingConfig {
        sq_entries: 64,
        ..Default::default()
    };
    let cfgs: Vec<(&str, RingConfig)> = vec![
        ("plain", base.clone()),
        (
            "register-ring-fd",
            RingConfig {
                register_ring_fd: true,
                ..base.clone()
            },
        ),
        (
            "coop+taskrun-flag",
            RingConfig {
                coop_taskrun: true,
                taskrun_flag: true,
                ..base.clone()
            },
        ),
        (
            "single-issuer+defer",
            RingConfig {
                single_issuer: Some(true),
                defer_taskrun: Some(true),
                ..base.clone()
            },
        ),
        (
            "no-sqarray",
            RingConfig {
                no_sqarray: true,
                ..base.clone()
            },
        ),
        (
            "no-mmap",
            RingConfig {
                no_mmap: true,
                ..base.clone()
            },
        ),
        (
            "no-mmap+registered-fd-only",
            RingConfig {
                no_mmap: true,
                registered_fd_only: true,
                ..base.clone()
            },
        ),
        (
            "cqe-mixed",
            RingConfig {
                cqe_mixed: true,
                ..base.clone()
            },
        ),
        (
            "sqpoll",
            RingConfig {
                sqpoll: true,
                ..base.clone()
            },
        ),
    ];
    let (batch, rounds) = (32, 20_000);
    // Alternate: anchor, config, anchor, ... and take medians of 3.
    println!(
        "{:<28} {:>12} {:>10} {:>8}",
        "config", "NOPs/s", "per enter", "ratio"
    );
    for (name, c) in &cfgs {
        let mut ratios = Vec::new();
        let mut rates = Vec::new();
        let mut per = 0.0;
        for _ in 0..3 {
            let (a, _) = rate(&base, batch, rounds);
            let (x, p) = rate(c, batch, rounds);
            ratios.push(x / a);
            rates.push(x);
            per = p;
        }
        ratios.sort_by(|a, b| a.partial_cmp(b).unwrap());
        rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{name:<28} {:>12.0} {per:>10.1} {:>8.2}",
            rates[1], ratios[1]
        );
    }
}

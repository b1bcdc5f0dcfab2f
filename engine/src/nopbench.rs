//! `recorder io-bench --nop`: the ring's own overhead floor, like fio's `t/io_uring -N1`.
//! IORING_OP_NOPs are kept `--qd` in flight on one ring built from the `[ring]` options
//! (every setup flag, sizes, SQPOLL, registered ring fd, ...), submitted in batches and
//! reaped the way the file benchmark does (one io_uring_enter submits what is queued and
//! waits for at least one completion). It reports NOPs per second, CPU nanoseconds per NOP
//! (the whole process: the SQPOLL thread included) and NOPs per enter, so that every other
//! figure of the same ring configuration can be put against what the ring alone costs.

use std::time::{Duration, Instant};

use crate::config::Config;
use crate::fileio::{ring_error, FileIoError};
use crate::sys::fs::cpu_times;

/// One NOP run.
#[derive(Clone, Debug)]
pub struct NopRun {
    pub nops: u64,
    pub elapsed_s: f64,
    /// User + system CPU seconds of the process over the run.
    pub cpu_s: f64,
    /// io_uring_enter calls the engine made (0 with SQPOLL when the thread kept up).
    pub enters: u64,
}

impl NopRun {
    pub fn nops_per_s(&self) -> f64 {
        self.nops as f64 / self.elapsed_s.max(1e-9)
    }
    pub fn cpu_ns_per_nop(&self) -> f64 {
        self.cpu_s * 1e9 / self.nops.max(1) as f64
    }
    /// NOPs completed per io_uring_enter (None when no enter was made: SQPOLL).
    pub fn nops_per_enter(&self) -> Option<f64> {
        (self.enters > 0).then(|| self.nops as f64 / self.enters as f64)
    }
}

/// Runs NOPs for `dur` with `depth` in flight (capped by the SQ size) on a ring built
/// from `cfg.ring`. A NOP that completes with an error ends the run with that error.
pub fn run(
    cfg: &Config,
    depth: u32,
    dur: Duration,
) -> Result<(NopRun, crate::uring::Effective), FileIoError> {
    let (mut ring, effective) = crate::uring::build(&cfg.ring, None).map_err(ring_error)?;
    let depth = (depth as usize).clamp(1, ring.sq_entries() as usize);
    let io_err = |what: &str, e: std::io::Error| FileIoError::Io {
        what: what.into(),
        err: e,
    };
    let (u0, s0) = cpu_times();
    let enters0 = ring.enter_calls();
    let t0 = Instant::now();
    let (mut in_flight, mut nops, mut failed) = (0usize, 0u64, None);
    let mut done = false;
    loop {
        done = done || t0.elapsed() >= dur || failed.is_some();
        if done && in_flight == 0 {
            break;
        }
        while !done && in_flight < depth && ring.push_nop(1).is_ok() {
            in_flight += 1;
        }
        ring.submit_and_wait(1)
            .map_err(|e| io_err("io_uring_enter (NOP)", e))?;
        let n = ring.reap(usize::MAX, |c| {
            if c.res < 0 && failed.is_none() {
                failed = Some(c.res);
            }
        });
        in_flight -= n;
        nops += n as u64;
    }
    let elapsed_s = t0.elapsed().as_secs_f64();
    let (u1, s1) = cpu_times();
    if let Some(res) = failed {
        return Err(io_err(
            "IORING_OP_NOP",
            std::io::Error::from_raw_os_error(-res),
        ));
    }
    let run = NopRun {
        nops,
        elapsed_s,
        cpu_s: (u1 - u0) + (s1 - s0),
        enters: ring.enter_calls() - enters0,
    };
    Ok((run, effective))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nops_complete_and_are_counted() {
        let cfg = Config::default();
        let (r, eff) = run(&cfg, 32, Duration::from_millis(50)).expect("a default ring runs NOPs");
        assert!(r.nops > 0, "no NOP completed");
        assert!(r.enters > 0, "no io_uring_enter without SQPOLL");
        assert!(r.nops >= r.enters, "{} NOPs in {} enters", r.nops, r.enters);
        assert_eq!(eff.sq_entries, 256);
    }
}

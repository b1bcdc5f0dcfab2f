//! Small shared pieces: time formatting, size distributions, deterministic payloads,
//! summary statistics, process CPU accounting.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::{Rng, SeedableRng};

/// Seconds since the Unix epoch as a float.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// RFC 3339 UTC timestamp (`2026-11-25T21:01:13Z`) for `SystemTime::now()`.
pub fn rfc3339_now() -> String {
    rfc3339(SystemTime::now())
}

pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// A distribution of sizes in bytes, parsed from text:
/// `fixed:N`, `uniform:A-B`, `lognormal:MEDIAN,SIGMA`, `exp:MEAN` (sizes accept k/m suffixes).
#[derive(Clone, Debug, PartialEq)]
pub enum SizeDist {
    Fixed(u64),
    Uniform(u64, u64),
    LogNormal { median: f64, sigma: f64 },
    Exp { mean: f64 },
}

impl SizeDist {
    pub fn parse(s: &str) -> Result<SizeDist, String> {
        let s = s.trim();
        let bad = |why: &str| {
            format!("size distribution {s:?}: {why}; use fixed:N, uniform:A-B, lognormal:MEDIAN,SIGMA or exp:MEAN (sizes like 512, 4k, 1m)")
        };
        let bytes = |v: &str| engine::config::parse_bytes(v).map_err(|e| bad(&e));
        let (kind, arg) = match s.split_once(':') {
            Some(x) => x,
            None => return Ok(SizeDist::Fixed(bytes(s)?)),
        };
        match kind {
            "fixed" => Ok(SizeDist::Fixed(bytes(arg)?)),
            "uniform" => {
                let (a, b) = arg
                    .split_once('-')
                    .ok_or_else(|| bad("uniform needs A-B"))?;
                let (a, b) = (bytes(a)?, bytes(b)?);
                if a > b {
                    return Err(bad("uniform lower bound is above the upper bound"));
                }
                Ok(SizeDist::Uniform(a, b))
            }
            "lognormal" => {
                let (m, sg) = arg
                    .split_once(',')
                    .ok_or_else(|| bad("lognormal needs MEDIAN,SIGMA"))?;
                let sigma: f64 = sg
                    .trim()
                    .parse()
                    .map_err(|_| bad("SIGMA is not a number"))?;
                if !(0.0..=5.0).contains(&sigma) {
                    return Err(bad("SIGMA must be between 0 and 5"));
                }
                Ok(SizeDist::LogNormal {
                    median: bytes(m)? as f64,
                    sigma,
                })
            }
            "exp" => Ok(SizeDist::Exp {
                mean: bytes(arg)? as f64,
            }),
            _ => Err(bad("unknown distribution")),
        }
    }

    /// Draws one size, clamped to `max`.
    pub fn sample<R: Rng>(&self, rng: &mut R, max: u64) -> u64 {
        let v = match *self {
            SizeDist::Fixed(n) => n,
            SizeDist::Uniform(a, b) => rng.gen_range(a..=b),
            SizeDist::LogNormal { median, sigma } => {
                // Box-Muller.
                let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
                let u2: f64 = rng.gen();
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                (median * (sigma * z).exp()).round() as u64
            }
            SizeDist::Exp { mean } => {
                let u: f64 = rng.gen_range(f64::EPSILON..1.0);
                (-mean * u.ln()).round() as u64
            }
        };
        v.min(max)
    }

    /// Mean size (for estimates and docs).
    pub fn mean(&self) -> f64 {
        match *self {
            SizeDist::Fixed(n) => n as f64,
            SizeDist::Uniform(a, b) => (a + b) as f64 / 2.0,
            SizeDist::LogNormal { median, sigma } => median * (sigma * sigma / 2.0).exp(),
            SizeDist::Exp { mean } => mean,
        }
    }
}

impl fmt::Display for SizeDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SizeDist::Fixed(n) => write!(f, "fixed:{n}"),
            SizeDist::Uniform(a, b) => write!(f, "uniform:{a}-{b}"),
            SizeDist::LogNormal { median, sigma } => write!(f, "lognormal:{median},{sigma}"),
            SizeDist::Exp { mean } => write!(f, "exp:{mean}"),
        }
    }
}

/// 64-bit FNV-1a, for seeding from strings.
pub fn fnv1a(s: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

const POOL_BYTES: usize = 1 << 20;

/// Deterministic frame payloads: the content of frame `seq` of match `id` is a function of
/// (`id`, `seq`, the size distributions), so `--verify` regenerates it instead of keeping it.
/// Bytes come from a 1 MiB random pool (cheap: one memcpy per frame) with the match hash
/// and seq written into the first 16 bytes so every frame is distinct.
pub struct PayloadGen {
    pool: Vec<u8>,
    pub delta: SizeDist,
    pub keyframe: SizeDist,
    /// A keyframe every this many frames (1 = every frame), from keyframe interval x tick rate.
    pub keyframe_every: u64,
    pub max_bytes: u64,
}

impl PayloadGen {
    pub fn new(
        delta: SizeDist,
        keyframe: SizeDist,
        keyframe_every: u64,
        max_bytes: u64,
    ) -> PayloadGen {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_f00d);
        let mut pool = vec![0u8; POOL_BYTES];
        rng.fill(&mut pool[..]);
        PayloadGen {
            pool,
            delta,
            keyframe,
            keyframe_every: keyframe_every.max(1),
            max_bytes,
        }
    }

    pub fn frame_kind(&self, seq: u64) -> u8 {
        if (seq - 1).is_multiple_of(self.keyframe_every) {
            engine::protocol::FRAME_KEY
        } else {
            engine::protocol::FRAME_DELTA
        }
    }

    /// Writes frame `seq` of match `id_hash` into `out` (cleared first); returns its kind.
    pub fn payload(&self, id_hash: u64, seq: u64, out: &mut Vec<u8>) -> u8 {
        let seed = id_hash ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut rng = SplitMix(seed);
        let kind = self.frame_kind(seq);
        let dist = if kind == engine::protocol::FRAME_KEY {
            &self.keyframe
        } else {
            &self.delta
        };
        let len = dist.sample(&mut rng, self.max_bytes) as usize;
        out.clear();
        let mut remaining = len;
        let mut off = (rand::RngCore::next_u64(&mut rng) as usize) % POOL_BYTES;
        while remaining > 0 {
            let n = remaining.min(self.pool.len() - off);
            out.extend_from_slice(&self.pool[off..off + n]);
            remaining -= n;
            off = 0;
        }
        let mut tag = [0u8; 16];
        tag[..8].copy_from_slice(&id_hash.to_le_bytes());
        tag[8..].copy_from_slice(&seq.to_le_bytes());
        let n = out.len().min(16);
        out[..n].copy_from_slice(&tag[..n]);
        kind
    }
}

/// SplitMix64: a tiny, fast, seedable generator for per-frame draws.
pub struct SplitMix(pub u64);

impl rand::RngCore for SplitMix {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        rand_core_fill(self, dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        rand_core_fill(self, dest);
        Ok(())
    }
}

fn rand_core_fill(r: &mut SplitMix, dest: &mut [u8]) {
    for chunk in dest.chunks_mut(8) {
        let v = rand::RngCore::next_u64(r).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// Mean, sample standard deviation and relative standard deviation (percent).
pub fn mean_sd(xs: &[f64]) -> (f64, f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    let sd = var.sqrt();
    let rsd = if mean.abs() > 0.0 {
        100.0 * sd / mean.abs()
    } else {
        0.0
    };
    (mean, sd, rsd)
}

/// CPU seconds (user + system) of a process, from /proc/<pid>/stat.
pub fn proc_cpu_s(pid: i32) -> Option<f64> {
    let p = procfs::process::Process::new(pid).ok()?;
    let st = p.stat().ok()?;
    Some((st.utime + st.stime) as f64 / procfs::ticks_per_second() as f64)
}

/// Formats an optional float for CSV: empty when unknown (never 0 for "not measured").
pub fn fmt_opt(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => {
            if x.abs() >= 100.0 {
                format!("{x:.1}")
            } else {
                format!("{x:.4}")
            }
        }
        _ => String::new(),
    }
}

/// Runs a command and returns stdout, or an error naming the command and its stderr.
pub fn run_cmd(prog: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| format!("could not run {prog}: {e} (is it installed?)"))?;
    if !out.status.success() {
        return Err(format!(
            "`{prog} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sends a signal to a process with the `kill` utility (the harness itself has no `unsafe`).
pub fn send_signal(pid: u32, sig: &str) -> Result<(), String> {
    run_cmd("kill", &[&format!("-{sig}"), &pid.to_string()]).map(|_| ())
}

/// Raises a process's open-file limit with `prlimit` (the harness has no `unsafe`) for
/// thousands of connections: to `want`, or, when that is not permitted (no
/// CAP_SYS_RESOURCE), the soft limit up to the hard one. Returns the soft limit in force.
pub fn raise_nofile_of(pid: u32, want: u64) -> u64 {
    let pid_s = pid.to_string();
    let limits = |p: u32| {
        procfs::process::Process::new(p as i32)
            .ok()
            .and_then(|p| p.limits().ok())
            .map(|l| {
                let v = |x: procfs::process::LimitValue| match x {
                    procfs::process::LimitValue::Value(v) => v,
                    procfs::process::LimitValue::Unlimited => u64::MAX,
                };
                (
                    v(l.max_open_files.soft_limit),
                    v(l.max_open_files.hard_limit),
                )
            })
    };
    if run_cmd(
        "prlimit",
        &["--pid", &pid_s, &format!("--nofile={want}:{want}")],
    )
    .is_err()
    {
        if let Some((soft, hard)) = limits(pid) {
            if soft < hard {
                let _ = run_cmd(
                    "prlimit",
                    &["--pid", &pid_s, &format!("--nofile={hard}:{hard}")],
                );
            }
        }
    }
    limits(pid).map(|l| l.0).unwrap_or(1024)
}

/// [`raise_nofile_of`] for this process.
pub fn raise_nofile(want: u64) -> u64 {
    raise_nofile_of(std::process::id(), want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_764_104_473)),
            "2025-11-25T21:01:13Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn size_dists_parse_and_sample_in_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let u = SizeDist::parse("uniform:200-2k").unwrap();
        assert_eq!(u, SizeDist::Uniform(200, 2048));
        for _ in 0..1000 {
            let v = u.sample(&mut rng, u64::MAX);
            assert!((200..=2048).contains(&v));
        }
        assert_eq!(SizeDist::parse("4k").unwrap(), SizeDist::Fixed(4096));
        assert!(SizeDist::parse("uniform:9-3")
            .unwrap_err()
            .contains("lower bound"));
        assert!(SizeDist::parse("pareto:1")
            .unwrap_err()
            .contains("unknown distribution"));
        let l = SizeDist::parse("lognormal:1k,0.5").unwrap();
        assert!(l.sample(&mut rng, 100) <= 100);
    }

    #[test]
    fn payloads_are_deterministic_and_distinct() {
        let g = PayloadGen::new(
            SizeDist::parse("uniform:10-5000").unwrap(),
            SizeDist::Fixed(70_000),
            8,
            1 << 20,
        );
        let (mut a, mut b) = (Vec::new(), Vec::new());
        assert_eq!(g.payload(7, 1, &mut a), engine::protocol::FRAME_KEY);
        assert_eq!(a.len(), 70_000);
        g.payload(7, 1, &mut b);
        assert_eq!(a, b);
        assert_eq!(g.payload(7, 2, &mut b), engine::protocol::FRAME_DELTA);
        assert_ne!(a, b);
        assert_eq!(g.payload(7, 9, &mut b), engine::protocol::FRAME_KEY);
    }

    #[test]
    fn rsd() {
        let (m, _, r) = mean_sd(&[10.0, 10.0, 10.0]);
        assert_eq!((m, r), (10.0, 0.0));
        let (_, _, r) = mean_sd(&[9.0, 11.0]);
        assert!((r - 14.142).abs() < 0.01);
    }
}

/// MemFree in MiB.
pub fn mem_free_mb() -> Option<u64> {
    use procfs::Current;
    procfs::Meminfo::current().ok().map(|m| m.mem_free >> 20)
}

/// When MemFree is below `min_mb`, drops the clean page cache (root); returns what was done
/// (None when nothing was needed).
pub fn ensure_free_memory(min_mb: u64) -> Option<String> {
    let free = mem_free_mb()?;
    if min_mb == 0 || free >= min_mb {
        return None;
    }
    Some(
        match std::fs::write("/proc/sys/vm/drop_caches", "1") {
            Ok(()) => format!(
                "dropped the page cache: MemFree {free} MiB -> {} MiB (min_free_mb {min_mb})",
                mem_free_mb().unwrap_or(0)
            ),
            Err(e) => format!(
                "MemFree {free} MiB is under min_free_mb {min_mb} but the page cache could not be dropped: {e}"
            ),
        },
    )
}

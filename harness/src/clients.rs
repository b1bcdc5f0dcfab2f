//! `harness clients`: replay downloaders and live viewers over HTTP.
//!
//! A reference pass downloads every match once (sizes and CRC32C checksums); then, for a
//! ramp-up plus a measured window, `concurrency` clients loop: pick a match (uniform or
//! Zipf popularity), download it whole or a random byte range over a keep-alive
//! connection, check the bytes against the reference, record latency. Live viewers
//! instead follow `GET /matches/{id}?delay_ms=N` until the stream ends or the window does
//! (a stream still open at the window end counts its bytes; its request is not a latency
//! sample). Cold runs drop the
//! page cache after the reference pass (needs root).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};

use crate::httpc::Conn;

#[derive(Clone, Debug, PartialEq)]
pub enum Popularity {
    Uniform,
    Zipf(f64),
}

impl Popularity {
    pub fn parse(s: &str) -> Result<Popularity, String> {
        let s = s.trim();
        if s == "uniform" {
            return Ok(Popularity::Uniform);
        }
        if let Some(v) = s.strip_prefix("zipf") {
            let v = v.trim_start_matches([':', '=']);
            let a: f64 = if v.is_empty() {
                1.0
            } else {
                v.parse()
                    .map_err(|_| format!("popularity {s:?}: zipf exponent is not a number"))?
            };
            if !(0.0..=5.0).contains(&a) {
                return Err(format!(
                    "popularity {s:?}: zipf exponent must be between 0 and 5"
                ));
            }
            return Ok(Popularity::Zipf(a));
        }
        Err(format!(
            "popularity {s:?}: use uniform or zipf:S (for example zipf:1.1)"
        ))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    Whole,
    /// Random ranges of this many bytes.
    Range(u64),
    /// Live tail with this delay.
    Live {
        delay_ms: u64,
    },
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode, String> {
        let s = s.trim();
        if s == "whole" {
            return Ok(Mode::Whole);
        }
        if let Some(v) = s.strip_prefix("range:") {
            let n = engine::config::parse_bytes(v).map_err(|e| format!("mode {s:?}: {e}"))?;
            if n == 0 {
                return Err(format!("mode {s:?}: range size must be above 0"));
            }
            return Ok(Mode::Range(n));
        }
        if let Some(v) = s.strip_prefix("live") {
            let v = v.trim_start_matches(':');
            let d = if v.is_empty() {
                0
            } else {
                v.parse()
                    .map_err(|_| format!("mode {s:?}: live delay must be whole milliseconds"))?
            };
            return Ok(Mode::Live { delay_ms: d });
        }
        Err(format!(
            "mode {s:?}: use whole, range:SIZE (range:64k) or live:DELAY_MS"
        ))
    }
}

#[derive(Clone, Debug)]
pub struct ClientsConfig {
    pub addr: SocketAddr,
    pub concurrency: usize,
    pub popularity: Popularity,
    pub mode: Mode,
    pub ramp_up_s: f64,
    pub measure_s: f64,
    /// Matches to fetch; empty = ask `GET /matches`.
    pub ids: Vec<String>,
    pub path_prefix: String,
    pub verify: bool,
    /// Drop the page cache after the reference pass.
    pub cold: bool,
    pub seed: u64,
    pub timeout: Duration,
}

impl Default for ClientsConfig {
    fn default() -> Self {
        ClientsConfig {
            addr: "127.0.0.1:8080".parse().expect("literal address"),
            concurrency: 8,
            popularity: Popularity::Uniform,
            mode: Mode::Whole,
            ramp_up_s: 1.0,
            measure_s: 5.0,
            ids: Vec::new(),
            path_prefix: "/matches/".into(),
            verify: true,
            cold: false,
            seed: 1,
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug)]
pub struct ClientsReport {
    pub measure_s: f64,
    pub requests: u64,
    pub bytes: u64,
    pub req_us: Histogram<u64>,
    pub ttfb_us: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
    pub verify_failures: Vec<String>,
    pub matches: usize,
    pub gen_cpu_pct: Option<f64>,
}

impl ClientsReport {
    pub fn throughput_mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.measure_s
    }
    pub fn pct(h: &Histogram<u64>, q: f64) -> Option<f64> {
        if h.is_empty() {
            None
        } else if q >= 100.0 {
            Some(h.max() as f64)
        } else {
            Some(h.value_at_quantile(q / 100.0) as f64)
        }
    }
    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum::<u64>() + self.verify_failures.len() as u64
    }
    /// The report as one JSON object (`harness clients --json`, one per phase).
    pub fn to_json(&self) -> serde_json::Value {
        let lat = |h: &Histogram<u64>| {
            serde_json::json!({
                "count": h.len(),
                "p50": Self::pct(h, 50.0),
                "p99": Self::pct(h, 99.0),
                "p99_9": Self::pct(h, 99.9),
                "max": Self::pct(h, 100.0),
            })
        };
        serde_json::json!({
            "measure_s": self.measure_s,
            "matches": self.matches,
            "requests": self.requests,
            "bytes": self.bytes,
            "throughput_mb_per_s": self.throughput_mb_per_s(),
            "request_latency_us": lat(&self.req_us),
            "first_byte_latency_us": lat(&self.ttfb_us),
            "errors": self.errors,
            "errors_total": self.errors_total(),
            "verify_failures": self.verify_failures,
            "gen_cpu_pct": self.gen_cpu_pct,
        })
    }
    pub fn summary(&self) -> String {
        let p = |h: &Histogram<u64>, q| {
            Self::pct(h, q)
                .map(|v| format!("{v:.0}"))
                .unwrap_or_else(|| "-".into())
        };
        let mut s = format!(
            "clients: {} matches, window {:.1}s: {} requests, {:.2} MB/s\nrequest latency us: p50 {} p99 {} p99.9 {} max {}; first byte p50 {} p99 {}\ngenerator CPU {}\n",
            self.matches,
            self.measure_s,
            self.requests,
            self.throughput_mb_per_s(),
            p(&self.req_us, 50.0),
            p(&self.req_us, 99.0),
            p(&self.req_us, 99.9),
            p(&self.req_us, 100.0),
            p(&self.ttfb_us, 50.0),
            p(&self.ttfb_us, 99.0),
            self.gen_cpu_pct.map(|c| format!("{c:.0}% of one core")).unwrap_or_else(|| "unknown".into()),
        );
        if self.errors.is_empty() && self.verify_failures.is_empty() {
            s.push_str("errors: none; content verified\n");
        } else {
            let e: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            s.push_str(&format!("errors: {}\n", e.join(" ")));
            for f in self.verify_failures.iter().take(10) {
                s.push_str(&format!("verify: {f}\n"));
            }
        }
        s
    }
}

/// Reads the match list from `GET /matches`: accepts a JSON array of ids or of objects with
/// `id`/`match_id`, or an object with a `matches` array. Only sealed matches are kept when
/// the listing says which are sealed.
pub fn list_matches(addr: SocketAddr, timeout: Duration) -> Result<Vec<String>, String> {
    let r = crate::httpc::get(addr, "/matches", None, timeout)?;
    if r.status != 200 {
        return Err(format!("GET /matches answered {}", r.status));
    }
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .map_err(|e| format!("GET /matches did not return JSON: {e}"))?;
    let arr = match &v {
        serde_json::Value::Array(a) => a.clone(),
        serde_json::Value::Object(o) => match o.get("matches") {
            Some(serde_json::Value::Array(a)) => a.clone(),
            _ => return Err("GET /matches: object without a `matches` array".into()),
        },
        _ => return Err("GET /matches: expected a JSON array or object".into()),
    };
    let mut ids = Vec::new();
    for e in arr {
        match e {
            serde_json::Value::String(s) => ids.push(s),
            serde_json::Value::Object(o) => {
                let id = o
                    .get("id")
                    .or_else(|| o.get("match_id"))
                    .and_then(|v| v.as_str());
                let live = o
                    .get("sealed")
                    .and_then(|v| v.as_bool())
                    .map(|s| !s)
                    .unwrap_or(false)
                    || o.get("state")
                        .and_then(|v| v.as_str())
                        .is_some_and(|s| s == "live" || s == "recording");
                if let Some(id) = id {
                    if !live {
                        ids.push(id.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    Ok(ids)
}

/// Writes `3` to /proc/sys/vm/drop_caches after a sync.
pub fn drop_caches() -> Result<(), String> {
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").map_err(|e| {
        format!(
            "cannot drop the page cache (/proc/sys/vm/drop_caches: {e}); cold-cache runs need root"
        )
    })
}

struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for k in 1..=n {
            acc += 1.0 / (k as f64).powf(s);
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf { cdf }
    }
    fn sample<R: Rng>(&self, rng: &mut R) -> usize {
        let u: f64 = rng.gen();
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }
}

#[derive(Clone)]
struct Reference {
    id: String,
    len: u64,
    crc: u32,
}

pub fn run(
    cfg: &ClientsConfig,
    progress_bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Result<ClientsReport, String> {
    if cfg.concurrency == 0 || cfg.concurrency > 10_000 {
        return Err(format!(
            "--concurrency {} is out of range; use 1 to 10000",
            cfg.concurrency
        ));
    }
    if cfg.measure_s <= 0.0 {
        return Err("--measure-s must be above 0".into());
    }
    let ids = if cfg.ids.is_empty() {
        list_matches(cfg.addr, cfg.timeout)?
    } else {
        cfg.ids.clone()
    };
    if ids.is_empty() {
        return Err(
            "no matches to download: the recorder lists none (ingest some first, or pass --ids)"
                .into(),
        );
    }
    // Reference pass.
    let mut refs = Vec::with_capacity(ids.len());
    if cfg.mode != (Mode::Live { delay_ms: 0 }) && !matches!(cfg.mode, Mode::Live { .. }) {
        let mut conn: Option<Conn> = None;
        for id in &ids {
            let path = format!("{}{}", cfg.path_prefix, id);
            if conn.is_none() {
                conn = Some(Conn::connect(cfg.addr, cfg.timeout)?);
            }
            let c = conn.as_mut().expect("connected above");
            let mut crc = 0u32;
            let h = c
                .get(&path, None, &mut |b| crc = crc32c::crc32c_append(crc, b))
                .map_err(|e| format!("reference download: {e}"))?;
            if h.status != 200 {
                return Err(format!(
                    "reference download of {path} answered {}",
                    h.status
                ));
            }
            if !h.keep_alive {
                conn = None;
            }
            refs.push(Reference {
                id: id.clone(),
                len: h.body_bytes,
                crc,
            });
        }
    } else {
        refs = ids
            .iter()
            .map(|id| Reference {
                id: id.clone(),
                len: 0,
                crc: 0,
            })
            .collect();
    }
    if cfg.cold {
        drop_caches()?;
    }
    let t0 = Instant::now();
    let window_start = t0 + Duration::from_secs_f64(cfg.ramp_up_s);
    let window_end = window_start + Duration::from_secs_f64(cfg.measure_s);
    let zipf = match cfg.popularity {
        Popularity::Zipf(s) => Some(Zipf::new(refs.len(), s)),
        Popularity::Uniform => None,
    };
    let requests = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let merged = Mutex::new((
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("bounds"),
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("bounds"),
        BTreeMap::<String, u64>::new(),
        Vec::<String>::new(),
    ));
    let cpu_at_start = Mutex::new(None::<(Instant, f64)>);
    let gen_cpu = std::thread::scope(|sc| {
        let probe = sc.spawn(|| {
            sleep_until(window_start, &stop);
            *cpu_at_start.lock().expect("lock") =
                crate::util::proc_cpu_s(std::process::id() as i32).map(|c| (Instant::now(), c));
            sleep_until(window_end, &stop);
            let c1 = crate::util::proc_cpu_s(std::process::id() as i32);
            match (*cpu_at_start.lock().expect("lock"), c1) {
                (Some((t, a)), Some(b)) => {
                    Some(100.0 * (b - a) / t.elapsed().as_secs_f64().max(1e-3))
                }
                _ => None,
            }
        });
        for w in 0..cfg.concurrency {
            let refs = &refs;
            let zipf = zipf.as_ref();
            let (requests, bytes, merged, stop, progress) =
                (&requests, &bytes, &merged, &stop, &progress_bytes);
            sc.spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed.wrapping_mul(31).wrapping_add(w as u64));
                let mut req = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("bounds");
                let mut ttfb = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("bounds");
                let mut errors = BTreeMap::<String, u64>::new();
                let mut fails = Vec::new();
                let mut conn: Option<Conn> = None;
                // Stagger the start over the ramp-up.
                let stagger = cfg.ramp_up_s * w as f64 / cfg.concurrency as f64;
                sleep_until(t0 + Duration::from_secs_f64(stagger), stop);
                while Instant::now() < window_end && !stop.load(Relaxed) {
                    let idx = match zipf {
                        Some(z) => z.sample(&mut rng),
                        None => rng.gen_range(0..refs.len()),
                    };
                    let r = &refs[idx];
                    let (path, range) = match cfg.mode {
                        Mode::Whole => (format!("{}{}", cfg.path_prefix, r.id), None),
                        Mode::Range(n) => {
                            let n = n.min(r.len.max(1));
                            let start = if r.len > n { rng.gen_range(0..=r.len - n) } else { 0 };
                            (format!("{}{}", cfg.path_prefix, r.id), Some((start, start + n - 1)))
                        }
                        Mode::Live { delay_ms } => (format!("{}{}?delay_ms={delay_ms}", cfg.path_prefix, r.id), None),
                    };
                    if conn.is_none() {
                        match Conn::connect(cfg.addr, cfg.timeout) {
                            Ok(c) => conn = Some(c),
                            Err(_) => {
                                *errors.entry("CONNECT".into()).or_insert(0) += 1;
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                        }
                    }
                    let c = conn.as_mut().expect("connected above");
                    let live = matches!(cfg.mode, Mode::Live { .. });
                    if live {
                        // A live stream lasts as long as the match: stop following it at the window end.
                        c.deadline = Some(window_end);
                        c.set_read_timeout(Duration::from_millis(500));
                    }
                    let mut crc = 0u32;
                    let mut got_window = 0u64;
                    let mut sink = |b: &[u8]| {
                        crc = crc32c::crc32c_append(crc, b);
                        let now = Instant::now();
                        if now >= window_start && now <= window_end {
                            got_window += b.len() as u64;
                        }
                        progress.fetch_add(b.len() as u64, Relaxed);
                    };
                    let res = c.get(&path, range, &mut sink);
                    let now = Instant::now();
                    match res {
                        Ok(h) => {
                            if !h.keep_alive {
                                conn = None;
                            }
                            let expect = if range.is_some() { 206 } else { 200 };
                            if h.status != expect {
                                *errors.entry(format!("HTTP_{}", h.status)).or_insert(0) += 1;
                                continue;
                            }
                            if now >= window_start && now <= window_end {
                                requests.fetch_add(1, Relaxed);
                                let _ = req.record((h.total.as_micros() as u64).max(1));
                                let _ = ttfb.record((h.ttfb.as_micros() as u64).max(1));
                            }
                            bytes.fetch_add(got_window, Relaxed);
                            if cfg.verify {
                                match (&cfg.mode, range) {
                                    (Mode::Whole, _) if h.body_bytes != r.len || crc != r.crc => {
                                        fails.push(format!(
                                            "{}: whole download {} bytes crc {crc:#010x}, reference {} bytes crc {:#010x}",
                                            r.id, h.body_bytes, r.len, r.crc
                                        ));
                                    }
                                    (Mode::Range(_), Some((a, b))) if h.body_bytes != b - a + 1 => {
                                        fails.push(format!("{}: range {a}-{b} returned {} bytes", r.id, h.body_bytes));
                                    }
                                    _ => {}
                                }
                            }
                        }
                        Err(e) if live && (e.contains(crate::httpc::DEADLINE) || Instant::now() >= window_end) => {
                            // Still following at the window end: its bytes count, it is no error.
                            conn = None;
                            bytes.fetch_add(got_window, Relaxed);
                        }
                        Err(e) if live && (e.contains("timed out") || e.contains("temporarily")) => {
                            // No new bytes for 500 ms: keep following on a new request.
                            conn = None;
                            bytes.fetch_add(got_window, Relaxed);
                        }
                        Err(e) => {
                            conn = None;
                            let kind = if e.contains("timed out") || e.contains("WouldBlock") || e.contains("temporarily") {
                                "TIMEOUT"
                            } else if e.contains("closed") {
                                "CLOSED"
                            } else {
                                "IO"
                            };
                            *errors.entry(kind.into()).or_insert(0) += 1;
                        }
                    }
                }
                let mut m = merged.lock().expect("merge lock");
                let _ = m.0.add(&req);
                let _ = m.1.add(&ttfb);
                for (k, v) in errors {
                    *m.2.entry(k).or_insert(0) += v;
                }
                m.3.extend(fails);
            });
        }
        probe.join().ok().flatten()
    });
    let (req_us, ttfb_us, errors, mut verify_failures) = merged.into_inner().expect("merge lock");
    if cfg.verify {
        if let Mode::Range(_) = cfg.mode {
            // Range contents: one checked sample per match against the reference.
            verify_failures.extend(check_ranges(cfg, &refs));
        }
    }
    let measured = if stop.load(Relaxed) {
        Instant::now()
            .min(window_end)
            .saturating_duration_since(window_start)
            .as_secs_f64()
            .max(1e-3)
    } else {
        cfg.measure_s
    };
    Ok(ClientsReport {
        measure_s: measured,
        requests: requests.load(Relaxed),
        bytes: bytes.load(Relaxed),
        req_us,
        ttfb_us,
        errors,
        verify_failures,
        matches: refs.len(),
        gen_cpu_pct: gen_cpu,
    })
}

/// Downloads each match whole and a few ranges of it, and checks the ranges are the same
/// bytes as the whole file.
fn check_ranges(cfg: &ClientsConfig, refs: &[Reference]) -> Vec<String> {
    let mut out = Vec::new();
    let Mode::Range(n) = cfg.mode else { return out };
    for r in refs.iter().take(32) {
        let path = format!("{}{}", cfg.path_prefix, r.id);
        let whole = match crate::httpc::get(cfg.addr, &path, None, cfg.timeout) {
            Ok(w) if w.status == 200 => w.body,
            Ok(w) => {
                out.push(format!("{}: GET answered {}", r.id, w.status));
                continue;
            }
            Err(e) => {
                out.push(format!("{}: {e}", r.id));
                continue;
            }
        };
        if crc32c::crc32c(&whole) != r.crc {
            out.push(format!(
                "{}: content changed since the reference pass",
                r.id
            ));
            continue;
        }
        let len = whole.len() as u64;
        if len == 0 {
            continue;
        }
        let n = n.min(len);
        for start in [0, (len - n) / 2, len - n] {
            match crate::httpc::get(cfg.addr, &path, Some((start, start + n - 1)), cfg.timeout) {
                Ok(p)
                    if p.status == 206 && p.body == whole[start as usize..(start + n) as usize] => {
                }
                Ok(p) => out.push(format!(
                    "{}: range {start}+{n}: status {} with {} bytes differs from the whole file",
                    r.id,
                    p.status,
                    p.body.len()
                )),
                Err(e) => out.push(format!("{}: range {start}+{n}: {e}", r.id)),
            }
        }
    }
    out
}

fn sleep_until(t: Instant, stop: &AtomicBool) {
    loop {
        let now = Instant::now();
        if now >= t || stop.load(Relaxed) {
            return;
        }
        std::thread::sleep((t - now).min(Duration::from_millis(50)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_modes_and_popularity() {
        assert_eq!(Mode::parse("range:64k").unwrap(), Mode::Range(65536));
        assert_eq!(
            Mode::parse("live:500").unwrap(),
            Mode::Live { delay_ms: 500 }
        );
        assert!(Mode::parse("partial").unwrap_err().contains("whole"));
        assert_eq!(
            Popularity::parse("zipf:1.2").unwrap(),
            Popularity::Zipf(1.2)
        );
        assert!(Popularity::parse("zipf:x").is_err());
    }

    #[test]
    fn zipf_prefers_low_ranks() {
        let z = Zipf::new(100, 1.2);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut counts = [0u32; 100];
        for _ in 0..20_000 {
            counts[z.sample(&mut rng)] += 1;
        }
        assert!(
            counts[0] > counts[10] && counts[10] > counts[90],
            "{:?}",
            &counts[..12]
        );
    }
}

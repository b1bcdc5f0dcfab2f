//! `harness ds`: simulated game dedicated servers, open loop or closed loop.
//!
//! **Paced (open loop, `tick_hz > 0`)**: each match sends its frames at its tick rate whatever
//! the recorder does: frame `seq` of a match is *due* at `start + (seq - 1) / tick_hz`, and its
//! ack latency is measured from that intended time, so a stalled recorder shows up as latency
//! instead of as a slower sender (no coordinated omission). An optional bound on frames (or
//! payload bytes) sent but not yet acknowledged per match (`max_unacked`) holds frames back
//! when it is reached; they go out late, and frames whose last byte left more than one tick
//! after their intended time are counted as *late frames*.
//!
//! **Unpaced (closed loop, `tick_hz == 0`)**: each match sends its next frame whenever fewer
//! than `max_unacked` frames are unacknowledged and the socket is writable, stops at the bound
//! and resumes on the next (cumulative) ACK: the recorder's saturation throughput. Ack latency
//! is measured from the frame's actual send time: the moment `writev` returned having accepted
//! the frame's last byte into the socket.
//!
//! A few threads each drive their share of the connections with epoll (mio) and a timer heap.
//! Frames are never buffered: the payload of frame `seq` of a match is a pure function of
//! (match id, seq) built from a pool generated once ([`FramePool`]), written with `writev`
//! straight from the pool (header + pool slice + 16-byte tag per frame, no per-frame allocation
//! or copy), and regenerated for a resend after RESUME and for `--verify`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::protocol::{self, ErrorCode, Msg};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rand::{Rng, RngCore, SeedableRng};

use crate::util::{fnv1a, SizeDist, SplitMix};

/// Everything `harness ds` can be told.
#[derive(Clone, Debug)]
pub struct DsConfig {
    pub addr: SocketAddr,
    /// A fleet of recorder ingest addresses: each match goes to the node that rendezvous
    /// hashing of its id picks (`crate::fleet`); empty: every match goes to `addr`.
    pub nodes: Vec<SocketAddr>,
    /// Concurrent matches (one TCP connection each).
    pub matches: usize,
    /// Frames per second per match; 0 = unpaced (closed loop: as fast as acks allow).
    pub tick_hz: f64,
    pub delta: SizeDist,
    pub keyframe: SizeDist,
    /// Paced mode: a keyframe every this many seconds (x tick rate = every K-th frame).
    pub keyframe_interval_s: f64,
    /// Unpaced mode: a keyframe every this many frames; 0 = only the first frame.
    /// Must be 0 with a tick rate (use `keyframe_interval_s` there).
    pub keyframe_every: u64,
    /// Frames sent but not yet acknowledged, per match, at most this many; `None` = no bound
    /// (only allowed when paced: pure open loop).
    pub max_unacked: Option<u64>,
    /// Payload bytes sent but not yet acknowledged, per match, at most this many (a single
    /// frame larger than this is still sent when nothing else is in flight); `None` = no bound.
    pub max_unacked_bytes: Option<u64>,
    /// Length of one match; 0 = until the run ends. A match that ends is sealed (END) and a
    /// new one starts in its slot at once (match churn at constant concurrency).
    pub match_duration_s: f64,
    /// Matches start spread evenly over this time; not measured.
    pub ramp_up_s: f64,
    /// The measured window after the ramp-up.
    pub measure_s: f64,
    /// Mean seconds between forced disconnects of one match (exponential); 0 = never.
    /// The match reconnects with RESUME after `reconnect_delay_ms` and resends from WELCOME's last_seq.
    pub disconnect_every_s: f64,
    pub reconnect_delay_ms: u64,
    pub threads: usize,
    pub id_prefix: String,
    pub credential: String,
    /// At the end, send END for every match and wait for SEALED (needed for `--verify`).
    pub end_at_stop: bool,
    /// The drain after the stop (END for every match) waits for SEALED while the recorder
    /// makes progress (an ACK or a SEALED arrives), and gives up after this many seconds
    /// without any: an open-loop run that outpaced the recorder leaves a backlog it is
    /// still storing, which a fixed deadline would cut off (issue 12, bug 15).
    pub drain_idle_s: f64,
    /// The drain gives up after this many seconds in any case.
    pub drain_max_s: f64,
    pub max_frame_bytes: u64,
    pub seed: u64,
}

impl Default for DsConfig {
    fn default() -> Self {
        DsConfig {
            addr: "127.0.0.1:7070".parse().expect("literal address"),
            nodes: Vec::new(),
            matches: 16,
            tick_hz: 32.0,
            delta: SizeDist::Uniform(200, 2000),
            keyframe: SizeDist::Fixed(48 * 1024),
            keyframe_interval_s: 3.0,
            keyframe_every: 0,
            max_unacked: None,
            max_unacked_bytes: None,
            match_duration_s: 0.0,
            ramp_up_s: 1.0,
            measure_s: 5.0,
            disconnect_every_s: 0.0,
            reconnect_delay_ms: 100,
            threads: 2,
            id_prefix: "ds".into(),
            credential: String::new(),
            end_at_stop: true,
            drain_idle_s: DEFAULT_DRAIN_IDLE_S,
            drain_max_s: DEFAULT_DRAIN_MAX_S,
            max_frame_bytes: 1 << 20,
            seed: 1,
        }
    }
}

/// `--drain-idle-s` default: seconds without an ACK or SEALED before the drain gives up.
pub const DEFAULT_DRAIN_IDLE_S: f64 = 20.0;
/// `--drain-max-s` default: the longest drain.
pub const DEFAULT_DRAIN_MAX_S: f64 = 120.0;

/// `harness ds --tick-hz 0` without `--max-unacked` / `--max-unacked-bytes`: frames in flight per match.
pub const DEFAULT_MAX_UNACKED_UNPACED: u64 = 32;

/// Largest accepted `--max-unacked` (frames per match).
pub const MAX_UNACKED_LIMIT: u64 = 1 << 20;

impl DsConfig {
    /// The ingest address of match `id`: its rendezvous node of `nodes`, else `addr`.
    pub fn addr_for(&self, id: &str) -> SocketAddr {
        if self.nodes.is_empty() {
            return self.addr;
        }
        let names: Vec<String> = self.nodes.iter().map(|a| a.to_string()).collect();
        self.nodes[crate::fleet::place(id, &names)]
    }

    /// Unpaced (closed loop): `tick_hz == 0`.
    pub fn unpaced(&self) -> bool {
        self.tick_hz == 0.0
    }

    pub fn check(&self) -> Result<(), String> {
        if self.matches == 0 {
            return Err("--matches must be at least 1".into());
        }
        for (name, v) in [
            ("--drain-idle-s", self.drain_idle_s),
            ("--drain-max-s", self.drain_max_s),
        ] {
            if !v.is_finite() || !(0.1..=86_400.0).contains(&v) {
                return Err(format!(
                    "{name} {v} is out of range; use 0.1 to 86400 seconds"
                ));
            }
        }
        if self.drain_idle_s > self.drain_max_s {
            return Err(format!(
                "--drain-idle-s {} is longer than --drain-max-s {}; the drain would never wait that long",
                self.drain_idle_s, self.drain_max_s
            ));
        }
        if !self.tick_hz.is_finite() || self.tick_hz < 0.0 || self.tick_hz > 10_000.0 {
            return Err(format!(
                "--tick-hz {} is out of range; use 1 to 10000 frames per second, or 0 for unpaced (closed loop, bounded by --max-unacked)",
                self.tick_hz
            ));
        }
        if let Some(n) = self.max_unacked {
            if n == 0 {
                return Err("--max-unacked 0 would never send a frame; use 1 or more (frames sent but not yet acknowledged, per match)".into());
            }
            if n > MAX_UNACKED_LIMIT {
                return Err(format!(
                    "--max-unacked {n} is above the limit {MAX_UNACKED_LIMIT} frames per match"
                ));
            }
        }
        if self.max_unacked_bytes == Some(0) {
            return Err("--max-unacked-bytes 0 would never send a frame; use a size such as 4m (payload bytes in flight per match)".into());
        }
        if self.unpaced() && self.max_unacked.is_none() && self.max_unacked_bytes.is_none() {
            return Err("--tick-hz 0 (unpaced) needs a bound on frames in flight: give --max-unacked N and/or --max-unacked-bytes SIZE".into());
        }
        if self.keyframe_every > 0 && !self.unpaced() {
            return Err(format!(
                "--keyframe-every {} counts frames and applies only with --tick-hz 0; with --tick-hz {} use --keyframe-interval-s",
                self.keyframe_every, self.tick_hz
            ));
        }
        let interval_ok = self.keyframe_interval_s.is_finite() && self.keyframe_interval_s > 0.0;
        if !self.unpaced() && !interval_ok {
            return Err(format!(
                "--keyframe-interval-s {} must be above 0",
                self.keyframe_interval_s
            ));
        }
        for (name, v) in [
            ("--match-duration-s", self.match_duration_s),
            ("--ramp-up-s", self.ramp_up_s),
            ("--disconnect-every-s", self.disconnect_every_s),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name} {v} must be 0 or more"));
            }
        }
        if self.threads == 0 || self.threads > 64 {
            return Err(format!(
                "--threads {} is out of range; use 1 to 64",
                self.threads
            ));
        }
        if !(self.measure_s.is_finite() && self.measure_s > 0.0) {
            return Err("--measure-s must be above 0".into());
        }
        if self.max_frame_bytes > u32::MAX as u64 - 64 {
            return Err(format!(
                "--max-frame-bytes {} is too large for the protocol's u32 length",
                self.max_frame_bytes
            ));
        }
        if self.id_prefix.is_empty() || self.id_prefix.len() > 40 {
            return Err("--id-prefix must be 1 to 40 characters".into());
        }
        protocol::validate_match_id(&self.id_prefix)
            .map_err(|e| format!("--id-prefix: {}", e.text))?;
        if self.credential.len() > 255 {
            return Err("--credential is longer than 255 bytes".into());
        }
        Ok(())
    }

    /// The load settings in effect, `key=value;...` (written with every sweep result).
    pub fn describe(&self) -> String {
        let opt = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_else(|| "off".into());
        let mut s = format!(
            "matches={};tick-hz={};max-unacked={};max-unacked-bytes={};delta={};keyframe={};",
            self.matches,
            self.tick_hz,
            opt(self.max_unacked),
            opt(self.max_unacked_bytes),
            self.delta,
            self.keyframe
        );
        if self.unpaced() {
            let _ = write!(s, "keyframe-every={};", self.keyframe_every);
        } else {
            let _ = write!(s, "keyframe-interval-s={};", self.keyframe_interval_s);
        }
        let _ = write!(
            s,
            "match-duration-s={};disconnect-every-s={};threads={}",
            self.match_duration_s, self.disconnect_every_s, self.threads
        );
        s
    }
}

/// Counters shared with the telemetry sampler while a run is going.
#[derive(Default, Debug)]
pub struct DsCounters {
    /// Frames whose last byte was written for the first time.
    pub frames_sent: AtomicU64,
    pub payload_bytes_sent: AtomicU64,
    /// Payload bytes whose last byte was written inside the measured window (what the
    /// generator offered the recorder then).
    pub payload_bytes_sent_window: AtomicU64,
    pub frames_acked: AtomicU64,
    pub payload_bytes_acked: AtomicU64,
    pub frames_acked_window: AtomicU64,
    pub payload_bytes_acked_window: AtomicU64,
    /// Paced mode: frames whose last byte left more than one tick after their intended time.
    pub late_frames: AtomicU64,
    /// Connection attempts (each sends HELLO once the TCP connect completes).
    pub connects: AtomicU64,
    /// TCP connects that completed.
    pub established: AtomicU64,
    pub reconnects: AtomicU64,
    pub sealed: AtomicU64,
}

/// What a match ended as, for `--verify` and for the in-flight bound.
#[derive(Clone, Debug)]
pub struct MatchRecord {
    pub id: String,
    pub acked_seq: u64,
    /// SEALED's (last_seq, file_bytes) if the match was sealed.
    pub sealed: Option<(u64, u64)>,
    pub failed: Option<String>,
    /// Most frames sent (at least partly written) but not acknowledged at any moment.
    pub max_inflight_frames: u64,
    /// Most payload bytes of such frames at any moment.
    pub max_inflight_bytes: u64,
}

#[derive(Debug)]
pub struct DsReport {
    pub measure_s: f64,
    /// Unpaced (closed loop) run: latencies are from the actual send time.
    pub unpaced: bool,
    pub frames_sent: u64,
    pub payload_bytes_sent: u64,
    pub payload_bytes_sent_window: u64,
    pub frames_acked: u64,
    pub payload_bytes_acked: u64,
    pub frames_acked_window: u64,
    pub payload_bytes_acked_window: u64,
    /// Paced mode: frames sent more than one tick after their intended time (whole run).
    pub late_frames: u64,
    pub connects: u64,
    /// TCP connects that completed; 0 means the recorder was never reached.
    pub established: u64,
    pub reconnects: u64,
    pub sealed: u64,
    /// Ack latency in microseconds, measured window only: from the intended send time
    /// (paced) or from the time the frame's last byte was written (unpaced).
    pub ack_us: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
    /// This process's CPU over the measured window, percent of one core.
    pub gen_cpu_pct: Option<f64>,
    pub matches: Vec<MatchRecord>,
    pub drain: Drain,
    /// TCP connect complete -> WELCOME, microseconds (every connection of the run).
    pub welcome_us: Histogram<u64>,
}

impl DsReport {
    pub fn throughput_mb_per_s(&self) -> f64 {
        self.payload_bytes_acked_window as f64 / 1e6 / self.measure_s
    }
    /// Payload MB/s the generator wrote during the window (open loop: the offered load,
    /// less what its schedule could not send in time, counted in late frames).
    pub fn sent_mb_per_s(&self) -> f64 {
        self.payload_bytes_sent_window as f64 / 1e6 / self.measure_s
    }
    pub fn frames_per_s(&self) -> f64 {
        self.frames_acked_window as f64 / self.measure_s
    }
    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }
    /// Most frames in flight on any match at any moment.
    pub fn max_inflight_frames(&self) -> u64 {
        self.matches
            .iter()
            .map(|m| m.max_inflight_frames)
            .max()
            .unwrap_or(0)
    }
    /// Most payload bytes in flight on any match at any moment.
    pub fn max_inflight_bytes(&self) -> u64 {
        self.matches
            .iter()
            .map(|m| m.max_inflight_bytes)
            .max()
            .unwrap_or(0)
    }
    /// The report as one JSON object (`harness ds --json`; docs/harness.md lists the fields).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "measure_s": self.measure_s,
            "unpaced": self.unpaced,
            "frames_sent": self.frames_sent,
            "payload_bytes_sent": self.payload_bytes_sent,
            "frames_acked": self.frames_acked,
            "payload_bytes_acked": self.payload_bytes_acked,
            "frames_acked_window": self.frames_acked_window,
            "payload_bytes_acked_window": self.payload_bytes_acked_window,
            "throughput_mb_per_s": self.throughput_mb_per_s(),
            "frames_per_s": self.frames_per_s(),
            "late_frames": self.late_frames,
            "connects": self.connects,
            "established": self.established,
            "reconnects": self.reconnects,
            "sealed": self.sealed,
            "ack_latency_us": {
                "count": self.ack_us.len(),
                "p50": self.ack_pct(50.0),
                "p99": self.ack_pct(99.0),
                "p99_9": self.ack_pct(99.9),
                "max": self.ack_pct(100.0),
            },
            "max_inflight_frames": self.max_inflight_frames(),
            "max_inflight_bytes": self.max_inflight_bytes(),
            "errors": self.errors,
            "errors_total": self.errors_total(),
            "gen_cpu_pct": self.gen_cpu_pct,
            "matches": self.matches.len(),
            "welcome_latency_us": {
                "count": self.welcome_us.len(),
                "p50": pct(&self.welcome_us, 50.0),
                "p99": pct(&self.welcome_us, 99.0),
                "max": pct(&self.welcome_us, 100.0),
            },
            "drain_s": self.drain.seconds(),
            "drain_gave_up": self.drain.gave_up,
            "not_sealed_why": self.drain.not_sealed_why,
            "unacked_at_drain_end_frames": self.drain.unacked_frames,
            "unacked_at_drain_end_bytes": self.drain.unacked_bytes,
        })
    }
    /// Percentile in microseconds, None when nothing was acked in the window.
    pub fn ack_pct(&self, q: f64) -> Option<f64> {
        pct(&self.ack_us, q)
    }

    pub fn summary(&self) -> String {
        let p = |q| {
            self.ack_pct(q)
                .map(|v| format!("{v:.0}"))
                .unwrap_or_else(|| "-".into())
        };
        let mut s = format!(
            "ds: window {:.1}s: acked {} frames, {:.2} MB/s payload ({:.0} frames/s); sent total {} frames / {:.1} MB, acked total {} frames\n\
             ack latency us ({}): p50 {} p99 {} p99.9 {} max {}\n\
             in flight per match at most {} frames / {:.2} MB{}\n\
             connects {} reconnects {} sealed {}; generator CPU {}\n",
            self.measure_s,
            self.frames_acked_window,
            self.throughput_mb_per_s(),
            self.frames_per_s(),
            self.frames_sent,
            self.payload_bytes_sent as f64 / 1e6,
            self.frames_acked,
            if self.unpaced {
                "unpaced: from the write of the frame's last byte"
            } else {
                "from intended send time"
            },
            p(50.0),
            p(99.0),
            p(99.9),
            p(100.0),
            self.max_inflight_frames(),
            self.max_inflight_bytes() as f64 / 1e6,
            if self.unpaced {
                String::new()
            } else {
                format!("; late frames {}", self.late_frames)
            },
            self.connects,
            self.reconnects,
            self.sealed,
            self.gen_cpu_pct.map(|c| format!("{c:.0}% of one core")).unwrap_or_else(|| "unknown".into()),
        );
        if self.errors.is_empty() {
            s.push_str("errors: none\n");
        } else {
            let e: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            s.push_str(&format!("errors: {}\n", e.join(" ")));
        }
        if !self.welcome_us.is_empty() {
            s.push_str(&format!(
                "WELCOME after connect ms: p50 {:.1} p99 {:.1} max {:.1}\n",
                self.welcome_us.value_at_quantile(0.5) as f64 / 1e3,
                self.welcome_us.value_at_quantile(0.99) as f64 / 1e3,
                self.welcome_us.max() as f64 / 1e3
            ));
        }
        if let Some(d) = self.drain.seconds() {
            s.push_str(&format!("drain: last SEALED {d:.1} s after the stop\n"));
        }
        if let Some(g) = &self.drain.gave_up {
            s.push_str(&format!("drain gave up: {g}\n"));
        }
        for (why, n) in &self.drain.not_sealed_why {
            s.push_str(&format!("not sealed: {n} matches: {why}\n"));
        }
        if self.drain.unacked_frames > 0 {
            s.push_str(&format!(
                "not sealed: {} frames / {:.1} MB sent and never acknowledged\n",
                self.drain.unacked_frames,
                self.drain.unacked_bytes as f64 / 1e6
            ));
        }
        s
    }
}

/// Percentile `q` (100 = max) of `h`, None when it is empty (the clients' definition).
fn pct(h: &Histogram<u64>, q: f64) -> Option<f64> {
    crate::clients::ClientsReport::pct(h, q)
}

/// Distinct payload bodies per size.
pub const POOL_VARIANTS: usize = 16;
/// Offset between the variants' bodies in the pool (odd, so no two align alike).
const VARIANT_STRIDE: usize = 4099;
/// CRC32C checkpoints along each variant's body, every this many bytes.
const CRC_STEP: usize = 4096;
/// Each payload ends with (match hash, seq), 16 bytes, so every frame is distinct.
pub const TAG_BYTES: usize = 16;

/// One frame's payload, as the pieces `writev` sends: `body` (a slice of the pool) then
/// `tag[..tag_len]`, of total length `len`, and its CRC32C.
#[derive(Clone, Copy, Debug)]
pub struct FrameRef<'a> {
    pub kind: u8,
    pub len: usize,
    pub crc: u32,
    pub body: &'a [u8],
    pub tag: [u8; TAG_BYTES],
    pub tag_len: usize,
}

impl FrameRef<'_> {
    /// The payload as one buffer (for `--verify`; the hot path never builds it).
    pub fn to_vec_into(&self, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(self.body);
        out.extend_from_slice(&self.tag[..self.tag_len]);
    }
}

/// Deterministic frame payloads from a pool generated once.
///
/// Frame `seq` of match `id_hash`: a SplitMix64 seeded from (id_hash, seq) draws the length
/// (from the delta or keyframe distribution, clamped to `max_bytes`) and one of
/// [`POOL_VARIANTS`] bodies; the payload is that body's first `len - 16` bytes followed by
/// the 16-byte tag (id_hash LE, seq LE). The CRC32C of a body prefix comes from checkpoints
/// every 4 KiB computed at start-up plus at most 4 KiB of hardware CRC, then the tag is
/// appended: well under a microsecond per frame whatever its size.
pub struct FramePool {
    pool: Vec<u8>,
    /// `crc_at[v][k]` = CRC32C of variant v's first `k * CRC_STEP` bytes.
    crc_at: Vec<Vec<u32>>,
    pub delta: SizeDist,
    pub keyframe: SizeDist,
    /// A keyframe every this many frames (1 = every frame; u64::MAX = only the first).
    pub keyframe_every: u64,
    pub max_bytes: u64,
}

impl FramePool {
    pub fn new(
        delta: SizeDist,
        keyframe: SizeDist,
        keyframe_every: u64,
        max_bytes: u64,
    ) -> FramePool {
        let cap = |d: &SizeDist| {
            match *d {
                SizeDist::Fixed(n) => n,
                SizeDist::Uniform(_, b) => b,
                _ => max_bytes,
            }
            .min(max_bytes) as usize
        };
        let body_max = cap(&delta).max(cap(&keyframe)).saturating_sub(TAG_BYTES);
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_f00d);
        let mut pool = vec![0u8; body_max + VARIANT_STRIDE * POOL_VARIANTS];
        rng.fill_bytes(&mut pool);
        let crc_at = (0..POOL_VARIANTS)
            .map(|v| {
                let body = &pool[v * VARIANT_STRIDE..v * VARIANT_STRIDE + body_max];
                let mut c = vec![0u32];
                let mut crc = 0;
                for chunk in body.chunks_exact(CRC_STEP) {
                    crc = crc32c::crc32c_append(crc, chunk);
                    c.push(crc);
                }
                c
            })
            .collect();
        FramePool {
            pool,
            crc_at,
            delta,
            keyframe,
            keyframe_every: keyframe_every.max(1),
            max_bytes,
        }
    }

    /// The pool for a configuration (also used by `--verify`).
    pub fn for_config(cfg: &DsConfig) -> FramePool {
        let every = if cfg.unpaced() {
            if cfg.keyframe_every == 0 {
                u64::MAX
            } else {
                cfg.keyframe_every
            }
        } else {
            (cfg.keyframe_interval_s * cfg.tick_hz).round().max(1.0) as u64
        };
        FramePool::new(
            cfg.delta.clone(),
            cfg.keyframe.clone(),
            every,
            cfg.max_frame_bytes,
        )
    }

    pub fn frame_kind(&self, seq: u64) -> u8 {
        if (seq - 1).is_multiple_of(self.keyframe_every) {
            protocol::FRAME_KEY
        } else {
            protocol::FRAME_DELTA
        }
    }

    /// Frame `seq` (from 1) of match `id_hash`.
    pub fn frame(&self, id_hash: u64, seq: u64) -> FrameRef<'_> {
        let mut rng = SplitMix(id_hash ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let kind = self.frame_kind(seq);
        let dist = if kind == protocol::FRAME_KEY {
            &self.keyframe
        } else {
            &self.delta
        };
        let len = dist.sample(&mut rng, self.max_bytes) as usize;
        let v = (rng.next_u64() % POOL_VARIANTS as u64) as usize;
        let mut tag = [0u8; TAG_BYTES];
        tag[..8].copy_from_slice(&id_hash.to_le_bytes());
        tag[8..].copy_from_slice(&seq.to_le_bytes());
        let body_len = len.saturating_sub(TAG_BYTES);
        let tag_len = len - body_len;
        let start = v * VARIANT_STRIDE;
        let body = &self.pool[start..start + body_len];
        let k = body_len / CRC_STEP;
        let crc = crc32c::crc32c_append(self.crc_at[v][k], &body[k * CRC_STEP..]);
        let crc = crc32c::crc32c_append(crc, &tag[..tag_len]);
        FrameRef {
            kind,
            len,
            crc,
            body,
            tag,
            tag_len,
        }
    }

    /// Writes frame `seq`'s payload into `out` (cleared first); returns its kind.
    pub fn payload(&self, id_hash: u64, seq: u64, out: &mut Vec<u8>) -> u8 {
        let f = self.frame(id_hash, seq);
        f.to_vec_into(out);
        f.kind
    }
}

/// Bytes of a FRAME message before its payload.
const HDR: usize = protocol::FRAME_HEADER_BYTES;
/// Frames per `writev` (3 iovecs each).
const BATCH: usize = 32;

/// The FRAME header (len, kind, seq, tick, frame kind, crc) as `engine::protocol::encode` writes it.
fn frame_header(seq: u64, f: &FrameRef<'_>) -> [u8; HDR] {
    let mut h = [0u8; HDR];
    h[..4].copy_from_slice(&((HDR - 4 + f.len) as u32).to_le_bytes());
    h[4] = protocol::KIND_FRAME;
    h[5..13].copy_from_slice(&seq.to_le_bytes());
    // Game tick: one per frame, so it increases with every frame in both modes.
    h[13..21].copy_from_slice(&(seq - 1).to_le_bytes());
    h[21] = f.kind;
    h[22..26].copy_from_slice(&f.crc.to_le_bytes());
    h
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum State {
    /// Not started yet (ramp-up) or waiting to reconnect.
    Waiting,
    Connecting,
    AwaitWelcome,
    Streaming,
    /// No new frames: the ones up to `last_frame` are written, then END, then SEALED awaited.
    Ending,
    Done,
}

/// A frame sent (at least partly) and not acknowledged yet.
#[derive(Clone, Copy)]
struct Inflight {
    len: u32,
    /// When its last byte was first written; None while partly written.
    sent: Option<Instant>,
}

struct Match {
    id: String,
    id_hash: u64,
    state: State,
    sock: Option<TcpStream>,
    /// Intended time of frame 1.
    start: Instant,
    /// Highest cumulative ACK.
    acked: u64,
    /// Highest frame started (partly or fully written) on any connection of this match.
    hi_seq: u64,
    /// Next frame to write on this connection; `wr_off` of its bytes are written already.
    wr_seq: u64,
    wr_off: usize,
    /// Frames acked+1 ..= hi_seq.
    inflight: VecDeque<Inflight>,
    inflight_bytes: u64,
    max_inflight_frames: u64,
    max_inflight_bytes: u64,
    /// HELLO (before any frame) or END (after the last one).
    ctrl: Vec<u8>,
    ctrl_pos: usize,
    end_queued: bool,
    inbuf: Vec<u8>,
    /// Last frame of this match, once known: END follows it.
    last_frame: Option<u64>,
    /// Unpaced matches with a duration end at this time.
    end_at: Option<Instant>,
    resume: bool,
    ever_connected: bool,
    /// A TCP connect of this match completed at least once (so its HELLO may be there).
    established: bool,
    /// When the current connection's TCP connect completed (HELLO goes out then).
    established_at: Option<Instant>,
    disconnect_at: Option<Instant>,
    wake: Option<Instant>,
    slot_gen: u32,
}

impl Match {
    /// A HELLO of this match may have reached the recorder (a connection was attempted).
    fn hello_tried(&self) -> bool {
        self.hi_seq > 0 || self.established || self.state != State::Waiting
    }

    /// Why this match is not sealed when the drain ends (`harness ds` reports the counts).
    fn unsealed_why(&self) -> &'static str {
        let end_written = self.end_queued && self.ctrl_pos >= self.ctrl.len();
        match self.state {
            State::Ending if end_written && self.acked < self.hi_seq => {
                "END sent, frames still unacknowledged (the recorder had not stored them yet)"
            }
            State::Ending if end_written => "END sent and every frame acknowledged, no SEALED",
            State::Ending | State::Streaming => {
                "END not written yet (socket full: frames still going out)"
            }
            State::AwaitWelcome => "HELLO sent, no WELCOME",
            State::Connecting => "TCP connect not complete",
            State::Waiting => "waiting to reconnect",
            State::Done => "done",
        }
    }

    fn intended(&self, seq: u64, hz: f64) -> Instant {
        self.start + Duration::from_secs_f64((seq - 1) as f64 / hz)
    }
}

/// Per-worker buffers for one `writev`, allocated once.
struct Scratch {
    hdrs: [[u8; HDR]; BATCH],
    /// (seq, frame length on the wire, payload length) per batch entry.
    batch: [(u64, usize, u32); BATCH],
}

struct Worker<'a> {
    cfg: &'a DsConfig,
    pool: &'a FramePool,
    ctr: &'a DsCounters,
    stop: &'a AtomicBool,
    poll: Poll,
    matches: Vec<Match>,
    slots: Vec<usize>,
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
    hist: Histogram<u64>,
    /// TCP connect complete -> WELCOME, microseconds, every connection of the run.
    welcome_hist: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    records: Vec<MatchRecord>,
    window_start: Instant,
    window_end: Instant,
    rng: rand::rngs::StdRng,
    scratch: Box<Scratch>,
    stopping: bool,
    drain: Drain,
}

const MAX_MSG: u32 = 1 << 16;

/// What stopped a match's writing for now.
#[derive(Debug, PartialEq, Eq)]
enum Blocked {
    /// The socket is full: wait for writable.
    Socket,
    /// Nothing more may go out now (pacing, in-flight bound, END written).
    Nothing,
}

impl<'a> Worker<'a> {
    fn err(&mut self, kind: &str) {
        *self.errors.entry(kind.to_string()).or_insert(0) += 1;
    }

    fn schedule(&mut self, i: usize, at: Instant) {
        let m = &mut self.matches[i];
        if m.wake.is_none_or(|w| at < w || w <= Instant::now()) {
            m.wake = Some(at);
            self.heap.push(Reverse((at, i)));
        }
    }

    fn new_match_id(&self, slot: usize, gen: u32) -> String {
        if gen == 0 {
            format!("{}-{}-{slot:05}", self.cfg.id_prefix, self.cfg.seed)
        } else {
            format!("{}-{}-{slot:05}-g{gen}", self.cfg.id_prefix, self.cfg.seed)
        }
    }

    fn make_match(&mut self, slot: usize, gen: u32, start: Instant) -> Match {
        let id = self.new_match_id(slot, gen);
        let dur = self.cfg.match_duration_s;
        let (last_frame, end_at) = if dur <= 0.0 {
            (None, None)
        } else if self.cfg.unpaced() {
            (None, Some(start + Duration::from_secs_f64(dur)))
        } else {
            (Some(((dur * self.cfg.tick_hz).ceil() as u64).max(1)), None)
        };
        let disconnect_at = self.next_disconnect(start);
        let cap = self.cfg.max_unacked.unwrap_or(64).min(4096) as usize;
        Match {
            id_hash: fnv1a(id.as_bytes()),
            id,
            state: State::Waiting,
            sock: None,
            start,
            acked: 0,
            hi_seq: 0,
            wr_seq: 1,
            wr_off: 0,
            inflight: VecDeque::with_capacity(cap),
            inflight_bytes: 0,
            max_inflight_frames: 0,
            max_inflight_bytes: 0,
            ctrl: Vec::with_capacity(256),
            ctrl_pos: 0,
            end_queued: false,
            inbuf: Vec::with_capacity(256),
            last_frame,
            end_at,
            resume: false,
            ever_connected: false,
            established: false,
            established_at: None,
            disconnect_at,
            wake: None,
            slot_gen: gen,
        }
    }

    fn next_disconnect(&mut self, from: Instant) -> Option<Instant> {
        if self.cfg.disconnect_every_s > 0.0 {
            let u: f64 = self.rng.gen_range(f64::EPSILON..1.0);
            Some(from + Duration::from_secs_f64(-self.cfg.disconnect_every_s * u.ln()))
        } else {
            None
        }
    }

    fn connect(&mut self, i: usize) {
        let addr = self.cfg.addr_for(&self.matches[i].id);
        match TcpStream::connect(addr) {
            Ok(mut s) => {
                if let Err(e) = self.poll.registry().register(
                    &mut s,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    self.err("REGISTER");
                    eprintln!("ds: cannot register socket: {e}");
                    self.backoff(i);
                    return;
                }
                let _ = s.set_nodelay(true);
                let m = &mut self.matches[i];
                m.sock = Some(s);
                m.state = State::Connecting;
                m.inbuf.clear();
                m.ctrl.clear();
                m.ctrl_pos = 0;
                m.end_queued = false;
                m.wr_off = 0;
                let resume = m.resume;
                protocol::encode(
                    &mut m.ctrl,
                    &Msg::Hello {
                        version: protocol::VERSION,
                        resume,
                        match_id: &m.id,
                        credential: self.cfg.credential.as_bytes(),
                    },
                );
                self.ctr.connects.fetch_add(1, Relaxed);
                if resume {
                    self.ctr.reconnects.fetch_add(1, Relaxed);
                }
            }
            Err(e) => {
                self.err(&format!("CONNECT_{}", io_kind(&e)));
                self.backoff(i);
            }
        }
    }

    /// Drops the connection and reconnects with RESUME after the reconnect delay.
    fn backoff(&mut self, i: usize) {
        self.close_sock(i);
        let m = &mut self.matches[i];
        m.state = State::Waiting;
        m.resume = true;
        let at = Instant::now() + Duration::from_millis(self.cfg.reconnect_delay_ms.max(1));
        m.wake = None;
        self.schedule(i, at);
    }

    fn close_sock(&mut self, i: usize) {
        if let Some(mut s) = self.matches[i].sock.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
    }

    fn finish(&mut self, i: usize, failed: Option<String>, sealed: Option<(u64, u64)>) {
        self.close_sock(i);
        let m = &mut self.matches[i];
        m.state = State::Done;
        m.wake = None;
        self.records.push(MatchRecord {
            id: m.id.clone(),
            acked_seq: m.acked,
            sealed,
            failed,
            max_inflight_frames: m.max_inflight_frames,
            max_inflight_bytes: m.max_inflight_bytes,
        });
    }

    /// Writes whatever may go out now: control bytes (HELLO / END), then frames (resends
    /// first, then new ones as pacing and the in-flight bound allow), then END once the last
    /// frame is written. Returns when the socket is full or nothing more may be sent.
    fn pump(&mut self, i: usize, now: Instant) -> io::Result<()> {
        loop {
            {
                let m = &mut self.matches[i];
                let Some(s) = m.sock.as_mut() else {
                    return Ok(());
                };
                while m.ctrl_pos < m.ctrl.len() {
                    match s.write(&m.ctrl[m.ctrl_pos..]) {
                        Ok(0) => {
                            return Err(io::Error::new(
                                io::ErrorKind::WriteZero,
                                "socket accepted 0 bytes",
                            ))
                        }
                        Ok(n) => m.ctrl_pos += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                }
                m.ctrl.clear();
                m.ctrl_pos = 0;
                if !matches!(m.state, State::Streaming | State::Ending) || m.end_queued {
                    return Ok(());
                }
                // An unpaced match with a duration ends when its time is up.
                if m.state == State::Streaming
                    && m.last_frame.is_none()
                    && m.end_at.is_some_and(|t| now >= t)
                {
                    m.last_frame = Some(m.hi_seq);
                }
            }
            if self.write_frames(i, now)? == Blocked::Socket {
                return Ok(());
            }
            let hz = self.cfg.tick_hz;
            let m = &mut self.matches[i];
            if let Some(l) = m.last_frame {
                if m.wr_seq > l && m.wr_off == 0 {
                    protocol::encode(&mut m.ctrl, &Msg::End { last_seq: l });
                    m.end_queued = true;
                    m.state = State::Ending;
                    continue;
                }
            }
            if m.state != State::Streaming {
                return Ok(());
            }
            if hz > 0.0 {
                // Paced: wake up when the next new frame is due (a frame held back by the
                // in-flight bound is retried on the next ACK instead).
                if m.wr_seq > m.hi_seq && m.wr_seq <= m.last_frame.unwrap_or(u64::MAX) {
                    let at = m.intended(m.wr_seq, hz);
                    if at > now {
                        self.schedule(i, at);
                    }
                }
            } else if let (None, Some(t)) = (m.last_frame, m.end_at) {
                self.schedule(i, t);
            }
            // A forced disconnect must happen even when no tick timer runs (unpaced, or
            // paced frames held back by the bound).
            if let Some(d) = self.matches[i].disconnect_at {
                self.schedule(i, d);
            }
            return Ok(());
        }
    }

    /// Writes frames with `writev` straight from the pool, batch after batch, until the socket
    /// is full or no frame may go out now.
    fn write_frames(&mut self, i: usize, now: Instant) -> io::Result<Blocked> {
        let cfg = self.cfg;
        let hz = cfg.tick_hz;
        let pool = self.pool;
        let (ws, we) = (self.window_start, self.window_end);
        let sc = &mut *self.scratch;
        let m = &mut self.matches[i];
        let Some(sock) = m.sock.as_mut() else {
            return Ok(Blocked::Nothing);
        };
        let (mut sent_frames, mut sent_bytes, mut late) = (0u64, 0u64, 0u64);
        let mut sent_window = 0u64;
        let res = loop {
            let limit = m.last_frame.unwrap_or(u64::MAX);
            let due = if hz > 0.0 {
                let e = now.saturating_duration_since(m.start).as_secs_f64();
                ((e * hz).floor() as u64 + 1).min(limit)
            } else {
                limit
            };
            // Plan a batch: resends (seq <= hi_seq) are already in flight; a new frame must
            // fit under the bound, counting the frames planned before it.
            let mut frs: [Option<FrameRef<'_>>; BATCH] = [None; BATCH];
            let (mut n, mut seq) = (0usize, m.wr_seq);
            let (mut fl, mut fb) = (m.hi_seq.saturating_sub(m.acked), m.inflight_bytes);
            while n < BATCH && seq <= due {
                let f = pool.frame(m.id_hash, seq);
                if seq > m.hi_seq {
                    if cfg.max_unacked.is_some_and(|mx| fl >= mx) {
                        break;
                    }
                    if cfg
                        .max_unacked_bytes
                        .is_some_and(|mb| fl > 0 && fb + f.len as u64 > mb)
                    {
                        break;
                    }
                    fl += 1;
                    fb += f.len as u64;
                }
                sc.hdrs[n] = frame_header(seq, &f);
                sc.batch[n] = (seq, HDR + f.len, f.len as u32);
                frs[n] = Some(f);
                n += 1;
                seq += 1;
            }
            if n == 0 {
                break Ok(Blocked::Nothing);
            }
            let mut iov = [IoSlice::new(&[]); 3 * BATCH];
            let mut k = 0;
            for (j, f) in frs[..n].iter().enumerate() {
                let Some(f) = f else { continue };
                let mut skip = if j == 0 { m.wr_off } else { 0 };
                for seg in [&sc.hdrs[j][..], f.body, &f.tag[..f.tag_len]] {
                    if skip >= seg.len() {
                        skip -= seg.len();
                        continue;
                    }
                    iov[k] = IoSlice::new(&seg[skip..]);
                    skip = 0;
                    k += 1;
                }
            }
            let w = match sock.write_vectored(&iov[..k]) {
                Ok(0) => {
                    break Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "socket accepted 0 bytes",
                    ))
                }
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(Blocked::Socket),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(e),
            };
            // The time the frames completed by this write had their last byte accepted.
            let t = Instant::now();
            let mut left = w;
            for &(seq, wire, plen) in &sc.batch[..n] {
                if left == 0 {
                    break;
                }
                let off = if seq == m.wr_seq { m.wr_off } else { 0 };
                if seq > m.hi_seq {
                    m.hi_seq = seq;
                    m.inflight.push_back(Inflight {
                        len: plen,
                        sent: None,
                    });
                    m.inflight_bytes += plen as u64;
                    m.max_inflight_frames = m.max_inflight_frames.max(m.hi_seq - m.acked);
                    m.max_inflight_bytes = m.max_inflight_bytes.max(m.inflight_bytes);
                }
                let rem = wire - off;
                if left < rem {
                    m.wr_off = off + left;
                    break;
                }
                left -= rem;
                m.wr_seq = seq + 1;
                m.wr_off = 0;
                if seq > m.acked {
                    if let Some(e) = m.inflight.get_mut((seq - m.acked - 1) as usize) {
                        if e.sent.is_none() {
                            e.sent = Some(t);
                            sent_frames += 1;
                            sent_bytes += plen as u64;
                            if t >= ws && t <= we {
                                sent_window += plen as u64;
                            }
                            // Late: last byte out more than one tick after the intended time.
                            if hz > 0.0 && t > m.start + Duration::from_secs_f64(seq as f64 / hz) {
                                late += 1;
                            }
                        }
                    }
                }
            }
        };
        if sent_frames > 0 {
            self.ctr.frames_sent.fetch_add(sent_frames, Relaxed);
            self.ctr.payload_bytes_sent.fetch_add(sent_bytes, Relaxed);
            self.ctr
                .payload_bytes_sent_window
                .fetch_add(sent_window, Relaxed);
        }
        if late > 0 {
            self.ctr.late_frames.fetch_add(late, Relaxed);
        }
        res
    }

    fn on_ack(&mut self, i: usize, seq: u64, now: Instant) {
        let hz = self.cfg.tick_hz;
        let in_window = now >= self.window_start && now <= self.window_end;
        let m = &mut self.matches[i];
        if seq < m.acked {
            *self.errors.entry("ACK_WENT_DOWN".into()).or_insert(0) += 1;
            return;
        }
        if seq > m.hi_seq {
            *self.errors.entry("ACK_BEYOND_SENT".into()).or_insert(0) += 1;
            return;
        }
        let (mut frames, mut bytes) = (0u64, 0u64);
        for s in m.acked + 1..=seq {
            let e = m
                .inflight
                .pop_front()
                .unwrap_or(Inflight { len: 0, sent: None });
            frames += 1;
            bytes += e.len as u64;
            // Paced: from the intended send time. Unpaced: from the write of the last byte.
            let from = if hz > 0.0 {
                m.start + Duration::from_secs_f64((s - 1) as f64 / hz)
            } else {
                e.sent.unwrap_or(now)
            };
            if in_window && from >= self.window_start {
                let us = now.saturating_duration_since(from).as_micros() as u64;
                let _ = self.hist.record(us.max(1));
            }
        }
        m.acked = seq;
        m.inflight_bytes = m.inflight_bytes.saturating_sub(bytes);
        if self.stopping && frames > 0 {
            self.drain.progress = Some(now);
        }
        self.ctr.frames_acked.fetch_add(frames, Relaxed);
        self.ctr.payload_bytes_acked.fetch_add(bytes, Relaxed);
        if in_window {
            self.ctr.frames_acked_window.fetch_add(frames, Relaxed);
            self.ctr
                .payload_bytes_acked_window
                .fetch_add(bytes, Relaxed);
        }
    }

    fn on_readable(&mut self, i: usize, now: Instant) {
        let mut buf = [0u8; 16 * 1024];
        let mut eof = false;
        loop {
            let r = match self.matches[i].sock.as_mut() {
                Some(s) => s.read(&mut buf),
                None => return,
            };
            match r {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => self.matches[i].inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.err(&format!("READ_{}", io_kind(&e)));
                    self.lost(i);
                    return;
                }
            }
        }
        let mut consumed = 0;
        let mut acks = false;
        loop {
            let inbuf = std::mem::take(&mut self.matches[i].inbuf);
            let res = protocol::decode(&inbuf[consumed..], MAX_MSG);
            let step = match res {
                Ok(None) => {
                    self.matches[i].inbuf = inbuf;
                    break;
                }
                Err(e) => {
                    self.matches[i].inbuf = inbuf;
                    self.err(&format!("DECODE_{}", e.code));
                    self.lost(i);
                    return;
                }
                Ok(Some((msg, n))) => {
                    let owned = OwnedMsg::from(&msg);
                    self.matches[i].inbuf = inbuf;
                    consumed += n;
                    owned
                }
            };
            acks |= matches!(step, OwnedMsg::Ack { .. });
            if !self.handle(i, step, now) {
                return;
            }
        }
        let m = &mut self.matches[i];
        if consumed > 0 {
            m.inbuf.drain(..consumed);
        }
        if eof {
            // Messages before the close were handled above (SEALED, ERROR); only a close
            // the protocol did not announce is a disconnect.
            self.err("DISCONNECTED");
            self.lost(i);
            return;
        }
        if acks {
            // ACKs free room under the in-flight bound: send what now may go.
            self.write_or_lose(i, now);
        }
    }

    /// Handles one message; false when the connection is gone.
    fn handle(&mut self, i: usize, msg: OwnedMsg, now: Instant) -> bool {
        match msg {
            OwnedMsg::Welcome { last_seq } => {
                let m = &mut self.matches[i];
                if m.state != State::AwaitWelcome {
                    self.err("UNEXPECTED_WELCOME");
                    return true;
                }
                m.ever_connected = true;
                if let Some(t) = m.established_at.take() {
                    let us = now.saturating_duration_since(t).as_micros() as u64;
                    let _ = self.welcome_hist.record(us.max(1));
                }
                let m = &mut self.matches[i];
                // Everything after the durable point is resent; frames it already has are acked.
                if last_seq > m.hi_seq {
                    self.err("WELCOME_AHEAD_OF_SENT");
                    self.finish(
                        i,
                        Some(format!("WELCOME last_seq {last_seq} is beyond frames sent")),
                        None,
                    );
                    return false;
                }
                if last_seq > m.acked {
                    self.on_ack(i, last_seq, now);
                } else if last_seq < m.acked {
                    // The recorder acked frames that it no longer has durable: a durability bug.
                    self.err("RESUME_BELOW_ACK");
                }
                let m = &mut self.matches[i];
                m.state = State::Streaming;
                m.wr_seq = last_seq + 1;
                m.wr_off = 0;
                // WELCOME answers a whole HELLO: nothing of it is left to write.
                m.ctrl.clear();
                m.ctrl_pos = 0;
                self.write_or_lose(i, now)
            }
            OwnedMsg::Ack { seq } => {
                self.on_ack(i, seq, now);
                true
            }
            OwnedMsg::Sealed {
                last_seq,
                file_bytes,
            } => {
                self.ctr.sealed.fetch_add(1, Relaxed);
                if self.stopping {
                    self.drain.last_sealed = Some(now);
                    self.drain.progress = Some(now);
                }
                let m = &self.matches[i];
                if last_seq != m.acked {
                    if last_seq > m.acked && last_seq <= m.hi_seq {
                        self.on_ack(i, last_seq, now);
                    } else {
                        self.err("SEALED_LAST_SEQ_MISMATCH");
                    }
                }
                self.finish(i, None, Some((last_seq, file_bytes)));
                self.maybe_churn(i, now);
                false
            }
            OwnedMsg::Error { code, text } => {
                let name = ErrorCode::from_u16(code)
                    .map(|c| c.name().to_string())
                    .unwrap_or_else(|| format!("ERROR_{code}"));
                self.err(&name);
                match ErrorCode::from_u16(code) {
                    Some(ErrorCode::ShuttingDown)
                    | Some(ErrorCode::IdleTimeout)
                    | Some(ErrorCode::MatchBusy) => {
                        self.lost(i);
                    }
                    _ => {
                        if self.errors.values().sum::<u64>() < 20 {
                            eprintln!(
                                "ds: match {}: recorder error {name}: {text}",
                                self.matches[i].id
                            );
                        }
                        self.finish(i, Some(format!("{name}: {text}")), None);
                    }
                }
                false
            }
            OwnedMsg::Other(k) => {
                self.err(&format!("UNEXPECTED_KIND_{k:#04x}"));
                true
            }
        }
    }

    fn maybe_churn(&mut self, i: usize, now: Instant) {
        if self.stopping || self.cfg.match_duration_s <= 0.0 {
            return;
        }
        let slot = self.slots[i];
        let gen = self.matches[i].slot_gen + 1;
        let m = self.make_match(slot, gen, now);
        self.matches[i] = m;
        self.schedule(i, now);
    }

    /// The connection broke: reconnect with RESUME unless we are ending.
    fn lost(&mut self, i: usize) {
        if self.stopping && !self.cfg.end_at_stop {
            self.finish(i, Some("connection lost while stopping".into()), None);
        } else {
            self.backoff(i);
        }
    }

    fn write_or_lose(&mut self, i: usize, now: Instant) -> bool {
        if let Err(e) = self.pump(i, now) {
            self.err(&format!("WRITE_{}", io_kind(&e)));
            self.lost(i);
            return false;
        }
        true
    }

    fn on_timer(&mut self, i: usize, now: Instant) {
        let st = self.matches[i].state;
        match st {
            State::Waiting => {
                if self.stopping && !self.matches[i].ever_connected && !self.cfg.end_at_stop {
                    return;
                }
                self.connect(i);
            }
            State::Streaming => {
                if let Some(d) = self.matches[i].disconnect_at {
                    if now >= d && !self.stopping {
                        self.matches[i].disconnect_at = self.next_disconnect(now);
                        self.close_sock(i);
                        let m = &mut self.matches[i];
                        m.state = State::Waiting;
                        m.resume = true;
                        m.wake = None;
                        let at = now + Duration::from_millis(self.cfg.reconnect_delay_ms.max(1));
                        self.schedule(i, at);
                        return;
                    }
                }
                self.write_or_lose(i, now);
                if let Some(d) = self.matches[i].disconnect_at {
                    if self.matches[i].state == State::Streaming {
                        self.schedule(i, d);
                    }
                }
            }
            _ => {}
        }
    }

    /// Stop: no more new frames; END every live match (if asked) after the frames already
    /// started, and wait for SEALED.
    fn begin_stop(&mut self, now: Instant) {
        self.stopping = true;
        for i in 0..self.matches.len() {
            match self.matches[i].state {
                State::Streaming if self.cfg.end_at_stop => {
                    let m = &mut self.matches[i];
                    m.last_frame = Some(m.hi_seq);
                    m.state = State::Ending;
                    self.write_or_lose(i, now);
                }
                State::Waiting | State::Connecting | State::AwaitWelcome
                    if self.cfg.end_at_stop && self.matches[i].hello_tried() =>
                {
                    // Will END after the (resume) handshake; a match whose HELLO may have
                    // reached the recorder is ENDed even without frames (END 0), or it
                    // would stay in progress there.
                    self.matches[i].last_frame = Some(self.matches[i].hi_seq);
                }
                State::Done | State::Ending => {}
                _ => self.finish(i, None, None),
            }
        }
    }

    fn run(mut self, t0: Instant, run_end: Instant) -> WorkerResult {
        let drain_idle = Duration::from_secs_f64(self.cfg.drain_idle_s);
        let drain_max = Duration::from_secs_f64(self.cfg.drain_max_s);
        let n = self.slots.len();
        for i in 0..n {
            let slot = self.slots[i];
            let offset = if self.cfg.matches > 1 {
                self.cfg.ramp_up_s * slot as f64 / self.cfg.matches as f64
            } else {
                0.0
            };
            let jitter: f64 = if self.cfg.unpaced() {
                0.0
            } else {
                self.rng.gen_range(0.0..1.0 / self.cfg.tick_hz)
            };
            let start = t0 + Duration::from_secs_f64(offset + jitter);
            let m = self.make_match(slot, 0, start);
            self.matches.push(m);
            self.schedule(i, start);
        }
        let mut events = Events::with_capacity(1024);
        let mut hard_end = None;
        loop {
            let now = Instant::now();
            if !self.stopping && (now >= run_end || self.stop.load(Relaxed)) {
                self.drain.stopped = Some(now);
                self.drain.progress = Some(now);
                self.begin_stop(now);
                hard_end = Some(now + drain_max);
            }
            if self.stopping {
                let open = self
                    .matches
                    .iter()
                    .filter(|m| m.state != State::Done)
                    .count();
                if open == 0 {
                    break;
                }
                if hard_end.is_some_and(|h| now >= h) {
                    self.drain.gave_up =
                        Some(format!("--drain-max-s {} reached", self.cfg.drain_max_s));
                    break;
                }
                if self.drain.progress.is_some_and(|p| now >= p + drain_idle) {
                    self.drain.gave_up = Some(format!(
                        "no ACK or SEALED for --drain-idle-s {}",
                        self.cfg.drain_idle_s
                    ));
                    break;
                }
            }
            // Timers.
            while let Some(Reverse((at, i))) = self.heap.peek().copied() {
                if at > now {
                    break;
                }
                self.heap.pop();
                if self.matches[i].wake != Some(at) {
                    continue;
                }
                self.matches[i].wake = None;
                self.on_timer(i, now);
            }
            let mut timeout = Duration::from_millis(50);
            if let Some(Reverse((at, _))) = self.heap.peek() {
                timeout = timeout.min(at.saturating_duration_since(Instant::now()));
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.err("POLL");
                }
                continue;
            }
            let now = Instant::now();
            for ev in events.iter() {
                let i = ev.token().0;
                if i >= self.matches.len() {
                    continue;
                }
                if self.matches[i].state == State::Connecting && (ev.is_writable() || ev.is_error())
                {
                    let ok = match self.matches[i].sock.as_ref() {
                        Some(s) => match s.take_error() {
                            Ok(None) => s.peer_addr().is_ok(),
                            _ => false,
                        },
                        None => false,
                    };
                    if !ok {
                        if ev.is_error() || ev.is_write_closed() {
                            self.err("CONNECT_REFUSED");
                            self.backoff(i);
                        }
                        continue;
                    }
                    self.ctr.established.fetch_add(1, Relaxed);
                    self.matches[i].established = true;
                    self.matches[i].established_at = Some(now);
                    self.matches[i].state = State::AwaitWelcome;
                }
                if ev.is_readable() || ev.is_read_closed() {
                    self.on_readable(i, now);
                }
                if ev.is_writable()
                    && self.matches[i].sock.is_some()
                    && self.matches[i].state != State::Connecting
                {
                    self.write_or_lose(i, now);
                }
            }
        }
        for i in 0..self.matches.len() {
            if self.matches[i].state != State::Done {
                let m = &self.matches[i];
                let why = m.unsealed_why();
                let unacked = m.hi_seq - m.acked;
                let detail = format!(
                    "not sealed when the drain ended ({}): {why}; frames sent {}, acknowledged {}",
                    self.drain.gave_up.as_deref().unwrap_or("stopped"),
                    m.hi_seq,
                    m.acked
                );
                if self.cfg.end_at_stop {
                    self.err("NOT_SEALED");
                    *self
                        .drain
                        .not_sealed_why
                        .entry(why.to_string())
                        .or_insert(0) += 1;
                    self.drain.unacked_frames += unacked;
                    self.drain.unacked_bytes += self.matches[i].inflight_bytes;
                }
                self.finish(i, self.cfg.end_at_stop.then_some(detail), None);
            }
        }
        WorkerResult {
            hist: self.hist,
            welcome_hist: self.welcome_hist,
            errors: self.errors,
            records: self.records,
            drain: self.drain,
        }
    }
}

/// What one generator thread hands back.
struct WorkerResult {
    hist: Histogram<u64>,
    welcome_hist: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    records: Vec<MatchRecord>,
    drain: Drain,
}

/// The end of a run: from the stop (END for every match) to the last SEALED, and what was
/// left when the drain deadline passed. Tells a recorder still storing a backlog (frames
/// unacknowledged after END) from a generator that never got END out, or a match stuck
/// before WELCOME.
#[derive(Debug, Default, Clone)]
pub struct Drain {
    stopped: Option<Instant>,
    last_sealed: Option<Instant>,
    /// The last ACK or SEALED after the stop.
    progress: Option<Instant>,
    /// Why the drain ended with matches unsealed (None: every match was sealed).
    pub gave_up: Option<String>,
    /// Unsealed matches at the deadline, by reason.
    pub not_sealed_why: BTreeMap<String, u64>,
    /// Frames (and their payload bytes) of unsealed matches sent but never acknowledged.
    pub unacked_frames: u64,
    pub unacked_bytes: u64,
}

impl Drain {
    fn merge(&mut self, o: Drain) {
        self.stopped = match (self.stopped, o.stopped) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_sealed = self.last_sealed.max(o.last_sealed);
        self.progress = self.progress.max(o.progress);
        if self.gave_up.is_none() {
            self.gave_up = o.gave_up;
        }
        for (k, v) in o.not_sealed_why {
            *self.not_sealed_why.entry(k).or_insert(0) += v;
        }
        self.unacked_frames += o.unacked_frames;
        self.unacked_bytes += o.unacked_bytes;
    }

    /// Seconds from the stop to the last SEALED (None when nothing was sealed after it).
    pub fn seconds(&self) -> Option<f64> {
        match (self.stopped, self.last_sealed) {
            (Some(a), Some(b)) if b >= a => Some((b - a).as_secs_f64()),
            _ => None,
        }
    }
}

enum OwnedMsg {
    Welcome { last_seq: u64 },
    Ack { seq: u64 },
    Sealed { last_seq: u64, file_bytes: u64 },
    Error { code: u16, text: String },
    Other(u8),
}

impl From<&Msg<'_>> for OwnedMsg {
    fn from(m: &Msg<'_>) -> Self {
        match *m {
            Msg::Welcome { last_seq, .. } => OwnedMsg::Welcome { last_seq },
            Msg::Ack { seq } => OwnedMsg::Ack { seq },
            Msg::Sealed {
                last_seq,
                file_bytes,
            } => OwnedMsg::Sealed {
                last_seq,
                file_bytes,
            },
            Msg::Error { code, text } => OwnedMsg::Error {
                code,
                text: text.to_string(),
            },
            Msg::Hello { .. } => OwnedMsg::Other(protocol::KIND_HELLO),
            Msg::Frame { .. } => OwnedMsg::Other(protocol::KIND_FRAME),
            Msg::End { .. } => OwnedMsg::Other(protocol::KIND_END),
        }
    }
}

fn io_kind(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "REFUSED".into(),
        Some(libc::ECONNRESET) => "RESET".into(),
        Some(libc::EPIPE) => "EPIPE".into(),
        Some(libc::EMFILE) | Some(libc::ENFILE) => "TOO_MANY_FILES".into(),
        Some(libc::EADDRNOTAVAIL) => "NO_PORTS".into(),
        Some(libc::ETIMEDOUT) => "TIMEOUT".into(),
        _ => format!("{:?}", e.kind()).to_uppercase(),
    }
}

/// Runs the generator: ramp-up, measured window, then stop (END + SEALED if asked).
/// `ctr` is shared with a sampler; `stop` ends the run early (SIGINT).
pub fn run(
    cfg: &DsConfig,
    ctr: Arc<DsCounters>,
    stop: Arc<AtomicBool>,
) -> Result<DsReport, String> {
    cfg.check()?;
    let want_fds = (cfg.matches as u64 + 256).max(1024);
    let have = crate::util::raise_nofile(want_fds.max(65_536));
    if have < want_fds {
        return Err(format!(
            "{} matches need {} open files but the limit is {have}; raise it (ulimit -n) or run as root",
            cfg.matches, want_fds
        ));
    }
    let pool = FramePool::for_config(cfg);
    let t0 = Instant::now() + Duration::from_millis(20);
    let window_start = t0 + Duration::from_secs_f64(cfg.ramp_up_s);
    let window_end = window_start + Duration::from_secs_f64(cfg.measure_s);
    let cpu0 = Arc::new(Mutex::new(None::<(Instant, f64)>));
    let nthreads = cfg.threads.min(cfg.matches);
    let results = std::thread::scope(|sc| {
        // CPU of this process over the window.
        let cpu_probe = {
            let cpu0 = cpu0.clone();
            let stop = stop.clone();
            sc.spawn(move || {
                let now = Instant::now();
                if window_start > now {
                    let mut left = window_start - now;
                    while left > Duration::ZERO && !stop.load(Relaxed) {
                        let d = left.min(Duration::from_millis(50));
                        std::thread::sleep(d);
                        left = left.saturating_sub(d);
                    }
                }
                *cpu0.lock().expect("cpu probe lock") =
                    crate::util::proc_cpu_s(std::process::id() as i32).map(|c| (Instant::now(), c));
                let mut left = window_end.saturating_duration_since(Instant::now());
                while left > Duration::ZERO && !stop.load(Relaxed) {
                    let d = left.min(Duration::from_millis(50));
                    std::thread::sleep(d);
                    left = left.saturating_sub(d);
                }
                let c1 = crate::util::proc_cpu_s(std::process::id() as i32);
                let c0 = *cpu0.lock().expect("cpu probe lock");
                match (c0, c1) {
                    (Some((t, a)), Some(b)) => {
                        let dt = t.elapsed().as_secs_f64();
                        (dt > 0.0).then(|| 100.0 * (b - a) / dt)
                    }
                    _ => None,
                }
            })
        };
        let mut handles = Vec::new();
        for t in 0..nthreads {
            let pool = &pool;
            let ctr = &*ctr;
            let stop = &*stop;
            handles.push(sc.spawn(move || -> Result<_, String> {
                let slots: Vec<usize> = (0..cfg.matches).filter(|s| s % nthreads == t).collect();
                let w = Worker {
                    cfg,
                    pool,
                    ctr,
                    stop,
                    poll: Poll::new().map_err(|e| format!("epoll_create failed: {e}"))?,
                    matches: Vec::with_capacity(slots.len()),
                    slots,
                    heap: BinaryHeap::new(),
                    hist: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                        .expect("valid histogram bounds"),
                    welcome_hist: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                        .expect("valid histogram bounds"),
                    errors: BTreeMap::new(),
                    records: Vec::new(),
                    window_start,
                    window_end,
                    rng: rand::rngs::StdRng::seed_from_u64(cfg.seed.wrapping_add(t as u64 * 7919)),
                    scratch: Box::new(Scratch {
                        hdrs: [[0u8; HDR]; BATCH],
                        batch: [(0, 0, 0); BATCH],
                    }),
                    stopping: false,
                    drain: Drain::default(),
                };
                Ok(w.run(t0, window_end))
            }));
        }
        let res: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        let cpu = cpu_probe.join().ok().flatten();
        (res, cpu)
    });
    let (res, gen_cpu_pct) = results;
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
    let mut errors = BTreeMap::new();
    let mut matches = Vec::new();
    let mut drain = Drain::default();
    let mut welcome_us =
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
    for r in res {
        let w = r.map_err(|_| "a ds worker thread panicked".to_string())??;
        hist.add(&w.hist)
            .map_err(|e| format!("histogram merge: {e}"))?;
        welcome_us
            .add(&w.welcome_hist)
            .map_err(|e| format!("histogram merge: {e}"))?;
        for (k, v) in w.errors {
            *errors.entry(k).or_insert(0) += v;
        }
        matches.extend(w.records);
        drain.merge(w.drain);
    }
    matches.sort_by(|a, b| a.id.cmp(&b.id));
    let measured = if stop.load(Relaxed) {
        window_end
            .min(Instant::now())
            .saturating_duration_since(window_start)
            .as_secs_f64()
            .max(1e-3)
    } else {
        cfg.measure_s
    };
    Ok(DsReport {
        measure_s: measured,
        unpaced: cfg.unpaced(),
        frames_sent: ctr.frames_sent.load(Relaxed),
        payload_bytes_sent: ctr.payload_bytes_sent.load(Relaxed),
        payload_bytes_sent_window: ctr.payload_bytes_sent_window.load(Relaxed),
        frames_acked: ctr.frames_acked.load(Relaxed),
        payload_bytes_acked: ctr.payload_bytes_acked.load(Relaxed),
        frames_acked_window: ctr.frames_acked_window.load(Relaxed),
        payload_bytes_acked_window: ctr.payload_bytes_acked_window.load(Relaxed),
        late_frames: ctr.late_frames.load(Relaxed),
        connects: ctr.connects.load(Relaxed),
        established: ctr.established.load(Relaxed),
        reconnects: ctr.reconnects.load(Relaxed),
        sealed: ctr.sealed.load(Relaxed),
        ack_us: hist,
        errors,
        gen_cpu_pct,
        matches,
        drain,
        welcome_us,
    })
}

/// Result of `--verify`.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub verified: usize,
    pub not_sealed: usize,
    pub mismatches: Vec<String>,
}

/// Downloads every sealed, acknowledged match and checks that frames 1..=acked are in it
/// byte-identical and in order. A file in the recorder's format (docs/format.md, magic
/// `RPLYFILE`) is parsed with `engine::storage::format` and compared record by record (seq,
/// kind, tick, payload); any other container is checked by finding each regenerated payload
/// after the previous one, which a missing, reordered or altered frame cannot pass.
pub fn verify(cfg: &DsConfig, http: SocketAddr, matches: &[MatchRecord]) -> VerifyReport {
    let gen = FramePool::for_config(cfg);
    let mut rep = VerifyReport::default();
    let mut payload = Vec::new();
    for m in matches {
        if m.acked_seq == 0 {
            continue;
        }
        if m.sealed.is_none() {
            rep.not_sealed += 1;
            continue;
        }
        let body = match crate::httpc::get(
            http,
            &format!("/matches/{}", m.id),
            None,
            Duration::from_secs(30),
        ) {
            Ok(r) if r.status == 200 => r.body,
            Ok(r) => {
                rep.mismatches.push(format!(
                    "{}: GET /matches/{} answered {}",
                    m.id, m.id, r.status
                ));
                continue;
            }
            Err(e) => {
                rep.mismatches
                    .push(format!("{}: download failed: {e}", m.id));
                continue;
            }
        };
        if let Some((_, file_bytes)) = m.sealed {
            if body.len() as u64 != file_bytes {
                rep.mismatches.push(format!(
                    "{}: downloaded {} bytes, SEALED said {file_bytes}",
                    m.id,
                    body.len()
                ));
                continue;
            }
        }
        let h = fnv1a(m.id.as_bytes());
        if body.starts_with(b"RPLYFILE") {
            // The recorder's replay format (docs/format.md): parse it and compare frame by frame.
            match verify_parsed(&gen, h, &m.id, m.acked_seq, &body) {
                Ok(()) => rep.verified += 1,
                Err(e) => rep.mismatches.push(e),
            }
            continue;
        }
        let mut pos = 0usize;
        let mut bad = None;
        for seq in 1..=m.acked_seq {
            gen.payload(h, seq, &mut payload);
            if payload.is_empty() {
                continue;
            }
            match find(&body[pos..], &payload) {
                Some(off) => pos += off + payload.len(),
                None => {
                    bad = Some(seq);
                    break;
                }
            }
        }
        match bad {
            None => rep.verified += 1,
            Some(seq) => rep.mismatches.push(format!(
                "{}: acknowledged frame {seq} (of {}) is not in the replay byte-identical after frame {}",
                m.id,
                m.acked_seq,
                seq - 1
            )),
        }
    }
    rep
}

/// Checks a replay file in the recorder's format: sealed, every frame 1..=acked present in
/// order with the kind, tick and payload the DS sent.
fn verify_parsed(gen: &FramePool, h: u64, id: &str, acked: u64, body: &[u8]) -> Result<(), String> {
    let r = engine::storage::format::parse_replay(body)
        .map_err(|e| format!("{id}: replay does not parse: {e}"))?;
    if r.trailer.is_none() {
        return Err(format!("{id}: replay is not sealed (no trailer)"));
    }
    if (r.frames.len() as u64) < acked {
        return Err(format!(
            "{id}: replay has {} frames but {acked} were acknowledged",
            r.frames.len()
        ));
    }
    let mut payload = Vec::new();
    for (i, (hdr, range)) in r.frames.iter().enumerate() {
        let seq = i as u64 + 1;
        if hdr.seq != seq {
            return Err(format!(
                "{id}: record {i} has seq {} (expected {seq})",
                hdr.seq
            ));
        }
        if seq > acked {
            break;
        }
        let kind = gen.payload(h, seq, &mut payload);
        if hdr.kind != kind || hdr.tick != seq - 1 {
            return Err(format!(
                "{id}: frame {seq}: kind {} tick {} (sent kind {kind} tick {})",
                hdr.kind,
                hdr.tick,
                seq - 1
            ));
        }
        if body[range.clone()] != payload[..] {
            return Err(format!(
                "{id}: acknowledged frame {seq} (of {acked}) differs from what was sent ({} vs {} bytes)",
                range.len(),
                payload.len()
            ));
        }
    }
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    if needle.len() > hay.len() {
        return None;
    }
    // Payloads end with a 16-byte unique tag (their bodies repeat across frames): at each
    // candidate, compare the tag first, then the rest.
    let k = needle.len().min(TAG_BYTES);
    let tail = &needle[needle.len() - k..];
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|b| *b == first)
        {
            None => return None,
            Some(p) => {
                let j = i + p;
                let end = j + needle.len();
                if hay[end - k..end] == *tail && hay[j..end] == *needle {
                    return Some(j);
                }
                i = j + 1;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unpaced() -> DsConfig {
        DsConfig {
            tick_hz: 0.0,
            max_unacked: Some(8),
            ..Default::default()
        }
    }

    #[test]
    fn pool_frames_encode_exactly_like_the_protocol_codec() {
        for (delta, key) in [
            ("fixed:64k", "48k"),
            ("uniform:0-20000", "fixed:70000"),
            ("fixed:7", "fixed:16"),
        ] {
            let pool = FramePool::new(
                SizeDist::parse(delta).unwrap(),
                SizeDist::parse(key).unwrap(),
                3,
                1 << 20,
            );
            let mut payload = Vec::new();
            for seq in 1..200u64 {
                let f = pool.frame(0xabcdef, seq);
                f.to_vec_into(&mut payload);
                assert_eq!(payload.len(), f.len);
                assert_eq!(f.crc, crc32c::crc32c(&payload), "{delta} seq {seq}");
                let mut want = Vec::new();
                protocol::encode_frame(&mut want, seq, seq - 1, f.kind, &payload);
                let mut got = frame_header(seq, &f).to_vec();
                got.extend_from_slice(&payload);
                assert_eq!(got, want, "{delta} seq {seq}");
            }
        }
    }

    #[test]
    fn payloads_are_deterministic_distinct_and_tagged() {
        let pool = FramePool::new(SizeDist::Fixed(4096), SizeDist::Fixed(4096), 1, 1 << 20);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        pool.payload(7, 1, &mut a);
        pool.payload(7, 1, &mut b);
        assert_eq!(a, b);
        pool.payload(7, 2, &mut b);
        assert_ne!(a, b);
        pool.payload(8, 1, &mut b);
        assert_ne!(a, b);
        assert_eq!(a[a.len() - 8..], 1u64.to_le_bytes());
        // Bodies come from a few variants, so many frames share one; the tag tells them apart.
        let bodies: std::collections::HashSet<_> = (1..200)
            .map(|s| pool.frame(7, s).body.as_ptr() as usize)
            .collect();
        assert!(bodies.len() > 1 && bodies.len() <= POOL_VARIANTS);
    }

    #[test]
    fn keyframe_rules_per_mode() {
        let mut c = unpaced();
        let kinds = |c: &DsConfig| {
            let p = FramePool::for_config(c);
            (1..=12).map(|s| p.frame_kind(s)).collect::<Vec<_>>()
        };
        let (k, d) = (protocol::FRAME_KEY, protocol::FRAME_DELTA);
        assert_eq!(kinds(&c), [vec![k], vec![d; 11]].concat(), "only the first");
        c.keyframe_every = 5;
        let got = kinds(&c);
        for (i, kind) in got.iter().enumerate() {
            assert_eq!(*kind, if i % 5 == 0 { k } else { d }, "frame {}", i + 1);
        }
        let paced = DsConfig {
            tick_hz: 4.0,
            keyframe_interval_s: 0.5,
            ..Default::default()
        };
        assert_eq!(kinds(&paced)[..4], [k, d, k, d]);
    }

    #[test]
    fn check_names_what_is_wrong() {
        let err = |c: DsConfig| c.check().unwrap_err();
        assert!(unpaced().check().is_ok());
        assert!(DsConfig::default().check().is_ok(), "paced, unbounded");
        let e = err(DsConfig {
            max_unacked: Some(0),
            ..unpaced()
        });
        assert!(e.contains("--max-unacked 0"), "{e}");
        let e = err(DsConfig {
            tick_hz: -1.0,
            ..Default::default()
        });
        assert!(
            e.contains("--tick-hz -1") && e.contains("0 for unpaced"),
            "{e}"
        );
        let e = err(DsConfig {
            tick_hz: f64::NAN,
            ..Default::default()
        });
        assert!(e.contains("--tick-hz NaN"), "{e}");
        let e = err(DsConfig {
            keyframe_every: 10,
            ..Default::default()
        });
        assert!(
            e.contains("--keyframe-every 10") && e.contains("--keyframe-interval-s"),
            "{e}"
        );
        let e = err(DsConfig {
            max_unacked: None,
            ..unpaced()
        });
        assert!(e.contains("needs a bound"), "{e}");
        assert!(DsConfig {
            max_unacked: None,
            max_unacked_bytes: Some(1 << 20),
            ..unpaced()
        }
        .check()
        .is_ok());
        let e = err(DsConfig {
            max_unacked_bytes: Some(0),
            ..unpaced()
        });
        assert!(e.contains("--max-unacked-bytes 0"), "{e}");
        let e = err(DsConfig {
            max_unacked: Some(MAX_UNACKED_LIMIT + 1),
            ..unpaced()
        });
        assert!(e.contains("above the limit"), "{e}");
        let e = err(DsConfig {
            keyframe_interval_s: 0.0,
            ..Default::default()
        });
        assert!(e.contains("--keyframe-interval-s 0"), "{e}");
        let e = err(DsConfig {
            match_duration_s: -2.0,
            ..Default::default()
        });
        assert!(e.contains("--match-duration-s -2"), "{e}");
    }

    #[test]
    fn describe_lists_the_mode_and_bounds() {
        let d = unpaced().describe();
        assert!(
            d.contains("tick-hz=0;max-unacked=8;max-unacked-bytes=off"),
            "{d}"
        );
        assert!(
            d.contains("keyframe-every=0") && !d.contains("keyframe-interval-s"),
            "{d}"
        );
        let d = DsConfig::default().describe();
        assert!(
            d.contains("max-unacked=off") && d.contains("keyframe-interval-s=3"),
            "{d}"
        );
    }

    #[test]
    fn find_locates_tagged_payloads_in_order() {
        let pool = FramePool::new(SizeDist::Fixed(300), SizeDist::Fixed(300), 1, 1 << 20);
        let mut hay = Vec::new();
        let mut p = Vec::new();
        for s in 1..=20 {
            pool.payload(3, s, &mut p);
            hay.extend_from_slice(&[0u8; 5]);
            hay.extend_from_slice(&p);
        }
        pool.payload(3, 7, &mut p);
        assert_eq!(find(&hay, &p), Some(6 * 305 + 5));
        pool.payload(3, 21, &mut p);
        assert_eq!(find(&hay, &p), None, "same body, other tag: not there");
    }
}

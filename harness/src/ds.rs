//! `harness ds`: simulated game dedicated servers, open loop.
//!
//! Each match sends its frames at its tick rate whatever the recorder does: frame `seq` of a
//! match is *due* at `start + (seq - 1) / tick_hz`, and its ack latency is measured from that
//! intended time, so a stalled recorder shows up as latency instead of as a slower sender
//! (no coordinated omission). A few threads each drive thousands of non-blocking sockets with
//! epoll (mio) and a timer heap; frames are generated lazily, at most `backlog_bytes` ahead of
//! what the socket accepted, and are a pure function of (match id, seq) so `--verify` can
//! regenerate them.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::protocol::{self, ErrorCode, Msg};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rand::{Rng, SeedableRng};

use crate::util::{fnv1a, PayloadGen, SizeDist};

/// Everything `harness ds` can be told.
#[derive(Clone, Debug)]
pub struct DsConfig {
    pub addr: SocketAddr,
    /// Concurrent matches (one TCP connection each).
    pub matches: usize,
    pub tick_hz: f64,
    pub delta: SizeDist,
    pub keyframe: SizeDist,
    pub keyframe_interval_s: f64,
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
    pub max_frame_bytes: u64,
    /// Per connection: frames are generated at most this far ahead of the socket.
    pub backlog_bytes: usize,
    pub seed: u64,
}

impl Default for DsConfig {
    fn default() -> Self {
        DsConfig {
            addr: "127.0.0.1:7070".parse().expect("literal address"),
            matches: 16,
            tick_hz: 32.0,
            delta: SizeDist::Uniform(200, 2000),
            keyframe: SizeDist::Fixed(48 * 1024),
            keyframe_interval_s: 3.0,
            match_duration_s: 0.0,
            ramp_up_s: 1.0,
            measure_s: 5.0,
            disconnect_every_s: 0.0,
            reconnect_delay_ms: 100,
            threads: 2,
            id_prefix: "ds".into(),
            credential: String::new(),
            end_at_stop: true,
            max_frame_bytes: 1 << 20,
            backlog_bytes: 4 << 20,
            seed: 1,
        }
    }
}

impl DsConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.matches == 0 {
            return Err("--matches must be at least 1".into());
        }
        if !(self.tick_hz > 0.0 && self.tick_hz <= 10_000.0) {
            return Err(format!(
                "--tick-hz {} is out of range; use 1 to 10000",
                self.tick_hz
            ));
        }
        if self.threads == 0 || self.threads > 64 {
            return Err(format!(
                "--threads {} is out of range; use 1 to 64",
                self.threads
            ));
        }
        if self.measure_s <= 0.0 {
            return Err("--measure-s must be above 0".into());
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
}

/// Counters shared with the telemetry sampler while a run is going.
#[derive(Default, Debug)]
pub struct DsCounters {
    pub frames_sent: AtomicU64,
    pub payload_bytes_sent: AtomicU64,
    pub frames_acked: AtomicU64,
    pub payload_bytes_acked: AtomicU64,
    pub frames_acked_window: AtomicU64,
    pub payload_bytes_acked_window: AtomicU64,
    pub connects: AtomicU64,
    pub reconnects: AtomicU64,
    pub sealed: AtomicU64,
}

/// What a match ended as, for `--verify`.
#[derive(Clone, Debug)]
pub struct MatchRecord {
    pub id: String,
    pub acked_seq: u64,
    /// SEALED's (last_seq, file_bytes) if the match was sealed.
    pub sealed: Option<(u64, u64)>,
    pub failed: Option<String>,
}

#[derive(Debug)]
pub struct DsReport {
    pub measure_s: f64,
    pub frames_sent: u64,
    pub payload_bytes_sent: u64,
    pub frames_acked: u64,
    pub payload_bytes_acked: u64,
    pub frames_acked_window: u64,
    pub payload_bytes_acked_window: u64,
    pub connects: u64,
    pub reconnects: u64,
    pub sealed: u64,
    /// Ack latency in microseconds from the intended send time, measured window only.
    pub ack_us: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
    /// This process's CPU over the measured window, percent of one core.
    pub gen_cpu_pct: Option<f64>,
    pub matches: Vec<MatchRecord>,
}

impl DsReport {
    pub fn throughput_mbps(&self) -> f64 {
        self.payload_bytes_acked_window as f64 / 1e6 / self.measure_s
    }
    pub fn frames_per_s(&self) -> f64 {
        self.frames_acked_window as f64 / self.measure_s
    }
    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }
    /// Percentile in microseconds, None when nothing was acked in the window.
    pub fn ack_pct(&self, q: f64) -> Option<f64> {
        if self.ack_us.is_empty() {
            None
        } else if q >= 100.0 {
            Some(self.ack_us.max() as f64)
        } else {
            Some(self.ack_us.value_at_quantile(q / 100.0) as f64)
        }
    }

    pub fn summary(&self) -> String {
        let p = |q| {
            self.ack_pct(q)
                .map(|v| format!("{v:.0}"))
                .unwrap_or_else(|| "-".into())
        };
        let mut s = format!(
            "ds: window {:.1}s: acked {} frames, {:.2} MB/s payload ({:.0} frames/s); sent total {} frames / {:.1} MB, acked total {} frames\n\
             ack latency us (from intended send time): p50 {} p99 {} p99.9 {} max {}\n\
             connects {} reconnects {} sealed {}; generator CPU {}\n",
            self.measure_s,
            self.frames_acked_window,
            self.throughput_mbps(),
            self.frames_per_s(),
            self.frames_sent,
            self.payload_bytes_sent as f64 / 1e6,
            self.frames_acked,
            p(50.0),
            p(99.0),
            p(99.9),
            p(100.0),
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
        s
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum State {
    /// Not started yet (ramp-up) or waiting to reconnect.
    Waiting,
    Connecting,
    AwaitWelcome,
    Streaming,
    Ending,
    Done,
}

struct Match {
    id: String,
    id_hash: u64,
    state: State,
    sock: Option<TcpStream>,
    /// Intended time of frame 1.
    start: Instant,
    /// Next frame to generate.
    next_seq: u64,
    /// Highest cumulative ACK.
    acked: u64,
    /// Payload lengths of frames acked+1 ..= next_seq-1.
    unacked_lens: VecDeque<u32>,
    out: Vec<u8>,
    out_pos: usize,
    inbuf: Vec<u8>,
    /// Last frame of this match, if it has a length.
    last_frame: Option<u64>,
    resume: bool,
    ever_connected: bool,
    disconnect_at: Option<Instant>,
    wake: Option<Instant>,
    slot_gen: u32,
}

impl Match {
    fn intended(&self, seq: u64, hz: f64) -> Instant {
        self.start + Duration::from_secs_f64((seq - 1) as f64 / hz)
    }
}

struct Worker<'a> {
    cfg: &'a DsConfig,
    gen: &'a PayloadGen,
    ctr: &'a DsCounters,
    stop: &'a AtomicBool,
    poll: Poll,
    matches: Vec<Match>,
    slots: Vec<usize>,
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
    hist: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    records: Vec<MatchRecord>,
    window_start: Instant,
    window_end: Instant,
    rng: rand::rngs::StdRng,
    scratch: Vec<u8>,
    stopping: bool,
}

const MAX_MSG: u32 = 1 << 16;

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
        let last_frame = if self.cfg.match_duration_s > 0.0 {
            Some(((self.cfg.match_duration_s * self.cfg.tick_hz).ceil() as u64).max(1))
        } else {
            None
        };
        let disconnect_at = self.next_disconnect(start);
        Match {
            id_hash: fnv1a(id.as_bytes()),
            id,
            state: State::Waiting,
            sock: None,
            start,
            next_seq: 1,
            acked: 0,
            unacked_lens: VecDeque::new(),
            out: Vec::with_capacity(4096),
            out_pos: 0,
            inbuf: Vec::with_capacity(256),
            last_frame,
            resume: false,
            ever_connected: false,
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
        let addr = self.cfg.addr;
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
                m.out.clear();
                m.out_pos = 0;
                let resume = m.resume;
                let id = m.id.clone();
                protocol::encode(
                    &mut m.out,
                    &Msg::Hello {
                        version: protocol::VERSION,
                        resume,
                        match_id: &id,
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
        });
    }

    /// Generates every due frame (up to the backlog limit) into the output buffer.
    fn generate(&mut self, i: usize, now: Instant) {
        let hz = self.cfg.tick_hz;
        let backlog = self.cfg.backlog_bytes;
        let m = &mut self.matches[i];
        if m.state != State::Streaming {
            return;
        }
        let elapsed = now.saturating_duration_since(m.start).as_secs_f64();
        let mut due = (elapsed * hz).floor() as u64 + 1;
        if let Some(l) = m.last_frame {
            due = due.min(l);
        }
        let (mut n, mut bytes) = (0u64, 0u64);
        while m.next_seq <= due && m.out.len() - m.out_pos < backlog {
            let seq = m.next_seq;
            let kind = self.gen.payload(m.id_hash, seq, &mut self.scratch);
            protocol::encode_frame(&mut m.out, seq, seq - 1, kind, &self.scratch);
            m.unacked_lens.push_back(self.scratch.len() as u32);
            bytes += self.scratch.len() as u64;
            n += 1;
            m.next_seq += 1;
        }
        self.ctr.frames_sent.fetch_add(n, Relaxed);
        self.ctr.payload_bytes_sent.fetch_add(bytes, Relaxed);
        if m.last_frame == Some(m.next_seq - 1) && !self.stopping {
            // Whole match generated: END follows the last frame.
            let last = m.next_seq - 1;
            protocol::encode(&mut m.out, &Msg::End { last_seq: last });
            m.state = State::Ending;
        } else if m.next_seq <= m.last_frame.unwrap_or(u64::MAX) {
            let at = m.intended(m.next_seq, hz);
            m.wake = None;
            self.schedule(i, at.max(now));
        }
    }

    /// Regenerates frames after `from` (exclusive) for a resend after RESUME.
    fn regenerate_after(&mut self, i: usize, from: u64) {
        let m = &mut self.matches[i];
        let mut lens = VecDeque::new();
        for seq in from + 1..m.next_seq {
            let kind = self.gen.payload(m.id_hash, seq, &mut self.scratch);
            protocol::encode_frame(&mut m.out, seq, seq - 1, kind, &self.scratch);
            lens.push_back(self.scratch.len() as u32);
        }
        m.unacked_lens = lens;
    }

    fn flush(&mut self, i: usize) -> io::Result<()> {
        let m = &mut self.matches[i];
        let Some(s) = m.sock.as_mut() else {
            return Ok(());
        };
        while m.out_pos < m.out.len() {
            match s.write(&m.out[m.out_pos..]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "socket accepted 0 bytes",
                    ))
                }
                Ok(n) => m.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if m.out_pos == m.out.len() {
            m.out.clear();
            m.out_pos = 0;
        } else if m.out_pos > 1 << 20 {
            m.out.drain(..m.out_pos);
            m.out_pos = 0;
        }
        Ok(())
    }

    fn on_ack(&mut self, i: usize, seq: u64, now: Instant) {
        let hz = self.cfg.tick_hz;
        let in_window = now >= self.window_start && now <= self.window_end;
        let m = &mut self.matches[i];
        if seq < m.acked {
            *self.errors.entry("ACK_WENT_DOWN".into()).or_insert(0) += 1;
            return;
        }
        if seq >= m.next_seq {
            *self.errors.entry("ACK_BEYOND_SENT".into()).or_insert(0) += 1;
            return;
        }
        let (mut frames, mut bytes) = (0u64, 0u64);
        for s in m.acked + 1..=seq {
            let len = m.unacked_lens.pop_front().unwrap_or(0) as u64;
            frames += 1;
            bytes += len;
            let intended = m.start + Duration::from_secs_f64((s - 1) as f64 / hz);
            if in_window && intended >= self.window_start {
                let us = now.saturating_duration_since(intended).as_micros() as u64;
                let _ = self.hist.record(us.max(1));
            }
        }
        m.acked = seq;
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
                m.state = State::Streaming;
                // Everything after the durable point is resent; frames it already has are acked.
                if last_seq + 1 > m.next_seq {
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
                } else if last_seq < self.matches[i].acked {
                    // The recorder acked frames that it no longer has durable: a durability bug.
                    self.err("RESUME_BELOW_ACK");
                }
                let m = &mut self.matches[i];
                m.out.clear();
                m.out_pos = 0;
                let from = last_seq;
                m.acked = m.acked.max(last_seq);
                if from < m.acked {
                    // Resend from the recorder's point of view; acked stays (counted already).
                }
                self.regenerate_after(i, from);
                let m = &mut self.matches[i];
                if m.last_frame.is_some_and(|l| m.next_seq > l) {
                    protocol::encode(
                        &mut m.out,
                        &Msg::End {
                            last_seq: m.next_seq - 1,
                        },
                    );
                    m.state = State::Ending;
                } else {
                    self.generate(i, now);
                }
                self.write_or_lose(i)
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
                let acked = self.matches[i].acked;
                if last_seq != acked {
                    if last_seq > acked && last_seq < self.matches[i].next_seq {
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

    fn write_or_lose(&mut self, i: usize) -> bool {
        if let Err(e) = self.flush(i) {
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
                self.generate(i, now);
                self.write_or_lose(i);
                if let Some(d) = self.matches[i].disconnect_at {
                    if self.matches[i].state == State::Streaming {
                        self.schedule(i, d);
                    }
                }
            }
            _ => {}
        }
    }

    /// Stop: no more frames; END every live match (if asked) and wait for SEALED.
    fn begin_stop(&mut self, now: Instant) {
        self.stopping = true;
        for i in 0..self.matches.len() {
            match self.matches[i].state {
                State::Streaming if self.cfg.end_at_stop => {
                    let m = &mut self.matches[i];
                    protocol::encode(
                        &mut m.out,
                        &Msg::End {
                            last_seq: m.next_seq - 1,
                        },
                    );
                    m.state = State::Ending;
                    self.write_or_lose(i);
                }
                State::Waiting | State::Connecting | State::AwaitWelcome
                    if self.cfg.end_at_stop && self.matches[i].next_seq > 1 =>
                {
                    // Will END after the resume handshake.
                    self.matches[i].last_frame = Some(self.matches[i].next_seq - 1);
                }
                State::Done | State::Ending => {}
                _ => self.finish(i, None, None),
            }
        }
        let _ = now;
    }

    fn run(
        mut self,
        t0: Instant,
        run_end: Instant,
        seal_deadline: Duration,
    ) -> (Histogram<u64>, BTreeMap<String, u64>, Vec<MatchRecord>) {
        let n = self.slots.len();
        for i in 0..n {
            let slot = self.slots[i];
            let offset = if self.cfg.matches > 1 {
                self.cfg.ramp_up_s * slot as f64 / self.cfg.matches as f64
            } else {
                0.0
            };
            let jitter: f64 = self.rng.gen_range(0.0..1.0 / self.cfg.tick_hz);
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
                self.begin_stop(now);
                hard_end = Some(now + seal_deadline);
            }
            if self.stopping {
                let open = self
                    .matches
                    .iter()
                    .filter(|m| m.state != State::Done)
                    .count();
                if open == 0 || hard_end.is_some_and(|h| now >= h) {
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
                    self.matches[i].state = State::AwaitWelcome;
                }
                if ev.is_readable() || ev.is_read_closed() {
                    self.on_readable(i, now);
                }
                if ev.is_writable() && self.matches[i].sock.is_some() {
                    if self.matches[i].state == State::Streaming {
                        self.generate(i, now);
                    }
                    self.write_or_lose(i);
                }
            }
        }
        for i in 0..self.matches.len() {
            if self.matches[i].state != State::Done {
                let why = match self.matches[i].state {
                    State::Ending => "no SEALED before the deadline",
                    _ => "still open at the end of the run",
                };
                if self.cfg.end_at_stop {
                    self.err("NOT_SEALED");
                }
                self.finish(
                    i,
                    if self.cfg.end_at_stop {
                        Some(why.into())
                    } else {
                        None
                    },
                    None,
                );
            }
        }
        (self.hist, self.errors, self.records)
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

/// Builds the payload generator for a configuration (also used by `--verify`).
pub fn payload_gen(cfg: &DsConfig) -> PayloadGen {
    let every = (cfg.keyframe_interval_s * cfg.tick_hz).round().max(1.0) as u64;
    PayloadGen::new(
        cfg.delta.clone(),
        cfg.keyframe.clone(),
        every,
        cfg.max_frame_bytes,
    )
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
    let gen = payload_gen(cfg);
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
            let gen = &gen;
            let ctr = &*ctr;
            let stop = &*stop;
            handles.push(sc.spawn(move || -> Result<_, String> {
                let slots: Vec<usize> = (0..cfg.matches).filter(|s| s % nthreads == t).collect();
                let w = Worker {
                    cfg,
                    gen,
                    ctr,
                    stop,
                    poll: Poll::new().map_err(|e| format!("epoll_create failed: {e}"))?,
                    matches: Vec::with_capacity(slots.len()),
                    slots,
                    heap: BinaryHeap::new(),
                    hist: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                        .expect("valid histogram bounds"),
                    errors: BTreeMap::new(),
                    records: Vec::new(),
                    window_start,
                    window_end,
                    rng: rand::rngs::StdRng::seed_from_u64(cfg.seed.wrapping_add(t as u64 * 7919)),
                    scratch: Vec::with_capacity(64 * 1024),
                    stopping: false,
                };
                Ok(w.run(t0, window_end, Duration::from_secs(20)))
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
    for r in res {
        let (h, e, m) = r.map_err(|_| "a ds worker thread panicked".to_string())??;
        hist.add(&h).map_err(|e| format!("histogram merge: {e}"))?;
        for (k, v) in e {
            *errors.entry(k).or_insert(0) += v;
        }
        matches.extend(m);
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
        frames_sent: ctr.frames_sent.load(Relaxed),
        payload_bytes_sent: ctr.payload_bytes_sent.load(Relaxed),
        frames_acked: ctr.frames_acked.load(Relaxed),
        payload_bytes_acked: ctr.payload_bytes_acked.load(Relaxed),
        frames_acked_window: ctr.frames_acked_window.load(Relaxed),
        payload_bytes_acked_window: ctr.payload_bytes_acked_window.load(Relaxed),
        connects: ctr.connects.load(Relaxed),
        reconnects: ctr.reconnects.load(Relaxed),
        sealed: ctr.sealed.load(Relaxed),
        ack_us: hist,
        errors,
        gen_cpu_pct,
        matches,
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
    let gen = payload_gen(cfg);
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
fn verify_parsed(
    gen: &PayloadGen,
    h: u64,
    id: &str,
    acked: u64,
    body: &[u8],
) -> Result<(), String> {
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
    if needle.len() > hay.len() {
        return None;
    }
    // Payloads start with a 16-byte unique tag: search for the tag, then compare the rest.
    let k = needle.len().min(16);
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
                if hay[j..j + k] == needle[..k] && hay[j..j + needle.len()] == *needle {
                    return Some(j);
                }
                i = j + 1;
            }
        }
    }
    None
}

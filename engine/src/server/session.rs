//! [`IngestSession`]: one DS connection as a sans-IO state machine.
//!
//! The backend feeds it received bytes ([`IngestSession::feed`]), asks it for the next
//! storage operation ([`IngestSession::next_io`]), executes that operation (std calls or
//! ring opcodes) and reports the result (`open_done`, `write_done`, `sync_done`,
//! `seal_done`), sends whatever [`IngestSession::take_output`] returns, and closes the
//! socket once [`IngestSession::is_finished`] is true and the output is sent. Timers: call
//! [`IngestSession::on_timer`] at [`IngestSession::deadline`] (idle timeout, ack cadence).
//!
//! At most one storage operation is in flight per session, so writes, syncs and the seal
//! of one match are ordered. Acks: in `durable` mode an ACK carries the match file's
//! durable sequence, sent when it advances; in `received` mode an ACK follows every batch
//! of input. ERROR is always the last message: what was validated before it is written,
//! synced and acknowledged first.

use super::registry::{Claim, Metrics, Registry, WriterGuard};
use crate::protocol::{self, AckMode, ErrorCode, Msg};
use crate::storage::{self, MatchFile, SealedInfo, StoreOptions, WriteReq};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Per-session settings, from the [server] configuration.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub ack_mode: AckMode,
    /// Longest time a received frame waits before it is written (and synced) and acked;
    /// 0 = write after every batch of input.
    pub ack_interval: Duration,
    pub max_frame_bytes: u32,
    pub idle_timeout: Duration,
    /// Expected DS credential; empty = none required.
    pub ds_token: Vec<u8>,
    pub store: StoreOptions,
    /// Input bytes buffered before the session stops asking for more (backpressure).
    pub max_buffered_input: usize,
    /// TEST ONLY (`test-write-delay-us`): sleep after every completed write.
    pub test_write_delay: Duration,
    /// TEST ONLY (`test-burn-rounds-per-frame`, `test-burn-rounds-per-kib`,
    /// `test-burn-cpu-pct`): CPU burnt for accepted frames, a slowdown proportional to the
    /// work.
    pub test_burn: TestBurn,
    /// storage-layout=journal: replay-file writes at least this large bypass the journal
    /// and are fdatasynced in their file instead (`journal-bypass-bytes`; 0 = never).
    pub journal_bypass_bytes: usize,
}

impl SessionConfig {
    /// True when this replay-file write is made durable by an fdatasync of its own file
    /// rather than by the journal (storage-layout=journal, `journal-bypass-bytes`).
    pub fn bypasses_journal(&self, req: &WriteReq) -> bool {
        self.journal_bypass_bytes > 0 && req.bytes().len() >= self.journal_bypass_bytes
    }
}

/// TEST ONLY: a known, proportional slowdown for the regression check (a sleep cannot
/// make a small one). Every accepted frame costs `per_frame + per_kib * payload / 1024`
/// rounds of a 64-bit mixing function on the thread that parses it; what a round costs
/// depends on the machine (docs/analysis.md, Calibrated injection). On top of that,
/// `cpu_pct` makes the parsing thread burn that share of its own CPU time (see
/// [`TestBurn::burn_cpu_share`]). Zero = off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestBurn {
    pub per_frame: u64,
    pub per_kib: u64,
    pub cpu_pct: u64,
}

/// The thread's CPU clock is read once per this many accepted frames or payload bytes
/// (whichever comes first), so that the reads themselves cost little.
const CPU_SHARE_FRAMES: u32 = 16;
const CPU_SHARE_BYTES: usize = 64 << 10;

/// Per thread: (CPU ns at the end of its last burn, frames and bytes since the last
/// clock read). The mark is taken after each burn, so burnt time is never burnt again.
struct CpuShare {
    mark_ns: u64,
    frames: u32,
    bytes: usize,
}

thread_local! {
    static CPU_SHARE: std::cell::RefCell<CpuShare> = const {
        std::cell::RefCell::new(CpuShare { mark_ns: 0, frames: 0, bytes: 0 })
    };
}

impl TestBurn {
    pub fn is_off(&self) -> bool {
        self.per_frame == 0 && self.per_kib == 0 && self.cpu_pct == 0
    }

    /// Burns the rounds due for a frame of `payload_len` bytes, then the CPU share due
    /// (when `cpu_pct` > 0); returns the hash (so the work cannot be optimised away).
    pub fn burn(&self, payload_len: usize, seed: u64) -> u64 {
        let rounds = self.per_frame + self.per_kib * payload_len as u64 / 1024;
        let x = Self::rounds(seed, rounds);
        if self.cpu_pct == 0 {
            return x;
        }
        let due = CPU_SHARE.with(|c| {
            let mut c = c.borrow_mut();
            c.frames += 1;
            c.bytes += payload_len;
            let due = c.frames >= CPU_SHARE_FRAMES || c.bytes >= CPU_SHARE_BYTES;
            if due {
                c.frames = 0;
                c.bytes = 0;
            }
            due
        });
        if due {
            self.burn_cpu_share(x)
        } else {
            x
        }
    }

    /// Burns `cpu_pct`% of the CPU time this thread has used since the end of its previous
    /// burn (its first call only sets the mark), measured on its own CPU clock: the
    /// thread's CPU time becomes (1 + cpu_pct/100) times its work, whatever each hash
    /// round costs on this machine.
    pub fn burn_cpu_share(&self, seed: u64) -> u64 {
        let now = crate::sys::fs::thread_cpu_ns();
        let mark = CPU_SHARE.with(|c| c.borrow().mark_ns);
        let mut x = seed;
        let mut end = now;
        if mark != 0 && now > mark {
            let owed = (now - mark).saturating_mul(self.cpu_pct) / 100;
            let target = now + owed;
            while end < target {
                x = Self::rounds(x, 256);
                end = crate::sys::fs::thread_cpu_ns();
                if end == 0 {
                    break; // no clock: burn nothing rather than spin forever
                }
            }
        }
        CPU_SHARE.with(|c| c.borrow_mut().mark_ns = end);
        x
    }

    /// `rounds` rounds of splitmix64 from `seed`.
    fn rounds(seed: u64, rounds: u64) -> u64 {
        let mut x = seed;
        for _ in 0..rounds {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x = std::hint::black_box(z ^ (z >> 31));
        }
        x
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            ack_mode: AckMode::Durable,
            ack_interval: Duration::from_millis(0),
            max_frame_bytes: 1 << 20,
            idle_timeout: Duration::from_secs(30),
            ds_token: Vec::new(),
            store: StoreOptions::default(),
            max_buffered_input: 4 << 20,
            test_write_delay: Duration::ZERO,
            test_burn: TestBurn::default(),
            journal_bypass_bytes: 0,
        }
    }
}

/// A storage operation for the backend to execute.
#[derive(Debug)]
pub enum Io {
    /// Open the match file at `path` for appending (`create`: a new match, the file must
    /// not exist; `rescan`: the in-memory state was lost, re-scan the file and return a
    /// fresh [`MatchFile`] with `open_done`). Use `storage::io::open_for_append` semantics
    /// (O_DIRECT / O_DSYNC from `options`).
    Open {
        path: PathBuf,
        create: bool,
        rescan: bool,
        options: StoreOptions,
    },
    /// Write `req.bytes()` at `req.offset`, then call `write_done(req, result)`.
    Write(WriteReq),
    /// fdatasync the match file, then call `sync_done(result)`.
    Sync,
    /// Seal: truncate to `len`, fdatasync, rename `part` to `sealed`, fsync both
    /// directories (`storage::io::finish_seal`), read the sealed info, `seal_done(result)`.
    FinishSeal {
        len: u64,
        part: PathBuf,
        sealed: PathBuf,
    },
}

/// How long a HELLO for a match whose writer connection is still finishing waits for it
/// before MATCH_BUSY: a DS that reconnects right after a reset (or right after the
/// recorder closed its connection) races the old session's last writes and its release.
pub const WRITER_WAIT: Duration = Duration::from_secs(2);
/// How often a waiting HELLO asks for the writer role again.
const WRITER_POLL: Duration = Duration::from_millis(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitHello,
    /// HELLO received, the match's writer is still finishing: asking again until
    /// `WRITER_WAIT` has passed (input is buffered meanwhile).
    Claiming,
    /// Io::Open is due or in flight.
    Opening,
    Streaming,
    /// END received: write everything, sync, finish the seal.
    Sealing,
    /// Flush what was received, then send the closing error (if any) and finish.
    Closing,
    Done,
}

/// One DS connection.
pub struct IngestSession {
    cfg: Arc<SessionConfig>,
    registry: Arc<Registry>,
    state: State,
    /// Received bytes not yet parsed are `inbuf[inbuf_pos..]`: consuming frames only
    /// advances `inbuf_pos`; the buffer is compacted when the consumed prefix is at
    /// least as long as the rest (amortised O(1) per byte; draining the front after
    /// every parse moved up to max-buffered-input bytes per 16 KiB received).
    inbuf: Vec<u8>,
    inbuf_pos: usize,
    out: Vec<u8>,
    match_id: String,
    guard: Option<WriterGuard>,
    file: Option<MatchFile>,
    open_issued: bool,
    opened: bool,
    open_create: bool,
    open_rescan: bool,
    io_in_flight: bool,
    /// (written_end, written_seq) when the in-flight sync was issued.
    sync_point: Option<(u64, u64)>,
    seal_issued: bool,
    acked: u64,
    reack: bool,
    first_pending: Option<Instant>,
    /// When the last write was issued: the ack interval spaces writes (group commit).
    last_write: Option<Instant>,
    last_rx: Instant,
    closing_error: Option<(ErrorCode, String)>,
    error_sent: Option<ErrorCode>,
    /// The peer closed its sending side: what is buffered is still processed (input sent
    /// with HELLO is kept until the open is done), then the session closes.
    eof: bool,
    /// Parsing stopped with whole messages still buffered (backpressure).
    stalled: bool,
    /// While `Claiming`: (resume flag, give up at, next try).
    claim: Option<(bool, Instant, Instant)>,
    /// Frames received and not yet acknowledged: (seq, when read), for the ack-latency
    /// histogram.
    unacked_rx: std::collections::VecDeque<(u64, Instant)>,
    /// When the write or sync in flight was issued (storage latency histograms).
    io_issued: Option<Instant>,
}

impl IngestSession {
    pub fn new(cfg: Arc<SessionConfig>, registry: Arc<Registry>, now: Instant) -> IngestSession {
        IngestSession {
            cfg,
            registry,
            state: State::AwaitHello,
            inbuf: Vec::new(),
            inbuf_pos: 0,
            out: Vec::new(),
            match_id: String::new(),
            guard: None,
            file: None,
            open_issued: false,
            opened: false,
            open_create: false,
            open_rescan: false,
            io_in_flight: false,
            sync_point: None,
            seal_issued: false,
            acked: 0,
            reack: false,
            first_pending: None,
            last_write: None,
            last_rx: now,
            closing_error: None,
            error_sent: None,
            eof: false,
            stalled: false,
            claim: None,
            unacked_rx: Default::default(),
            io_issued: None,
        }
    }

    /// The settings this session runs with.
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// The match this session writes (empty before HELLO).
    pub fn match_id(&self) -> &str {
        &self.match_id
    }

    /// Bytes to send to the DS (WELCOME, ACK, SEALED, ERROR), in order.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// True once the session has nothing more to do: send the remaining output, then close.
    pub fn is_finished(&self) -> bool {
        self.state == State::Done
    }

    /// The error this session sent before closing, if any.
    pub fn error_sent(&self) -> Option<ErrorCode> {
        self.error_sent
    }

    /// False while the session has enough unprocessed input (stop reading: backpressure).
    pub fn wants_input(&self) -> bool {
        !self.eof
            && matches!(
                self.state,
                State::AwaitHello | State::Claiming | State::Opening | State::Streaming
            )
            && self.inbuf.len() - self.inbuf_pos < self.cfg.max_buffered_input
    }

    /// When `on_timer` must be called next.
    pub fn deadline(&self) -> Option<Instant> {
        let mut d = None;
        if matches!(self.state, State::AwaitHello | State::Streaming) {
            d = Some(self.last_rx + self.cfg.idle_timeout);
        }
        if let (State::Claiming, Some((_, _, next))) = (self.state, self.claim) {
            d = Some(next);
        }
        if let Some(t) = self.write_due_at() {
            if !self.io_in_flight {
                d = Some(d.map_or(t, |x: Instant| x.min(t)));
            }
        }
        d
    }

    /// Group commit: pending frames are written at once after a quiet period, otherwise one
    /// `ack-interval` after the previous write, so a busy match gets at most one write (and
    /// sync, and ACK) per interval while a quiet one is not delayed.
    fn write_due_at(&self) -> Option<Instant> {
        let p = self.first_pending?;
        Some(match self.last_write {
            Some(w) => p.max(w + self.cfg.ack_interval),
            None => p,
        })
    }

    /// Idle timeout check; afterwards ask `next_io` (an ack may be due).
    pub fn on_timer(&mut self, now: Instant) {
        if self.state == State::Claiming && self.claim.is_some_and(|(_, _, next)| now >= next) {
            self.try_claim(now);
        }
        if matches!(self.state, State::AwaitHello | State::Streaming)
            && now >= self.last_rx + self.cfg.idle_timeout
        {
            self.fail(
                ErrorCode::IdleTimeout,
                format!(
                    "nothing received for {} ms (idle-timeout-ms); reconnect with RESUME",
                    self.cfg.idle_timeout.as_millis()
                ),
            );
        }
    }

    /// The peer closed its side (EOF) or the connection broke: process every whole
    /// message received before it (also input that arrived with HELLO while the match is
    /// still opening), flush, then finish. Only a torn last message is dropped.
    pub fn peer_closed(&mut self) {
        self.eof = true;
        match self.state {
            // whole messages are parsed as they arrive here: what is left is torn (and a
            // HELLO still waiting for the writer role has nobody to answer any more)
            State::AwaitHello | State::Claiming => {
                self.state = State::Done;
                self.inbuf.clear();
                self.inbuf_pos = 0;
            }
            // the buffered input is processed once the open is done (`open_done`)
            State::Opening => {}
            State::Streaming => self.close_if_input_done(),
            _ => {}
        }
    }

    /// After EOF: once no whole message waits (parsing did not stop for backpressure),
    /// drop the torn rest and close.
    fn close_if_input_done(&mut self) {
        if self.eof && self.state == State::Streaming && !self.stalled {
            self.state = State::Closing;
            self.inbuf.clear();
            self.inbuf_pos = 0;
        }
    }

    /// Graceful shutdown: flush and ack what was received, then SHUTTING_DOWN.
    pub fn begin_shutdown(&mut self) {
        if matches!(
            self.state,
            State::AwaitHello | State::Claiming | State::Opening | State::Streaming
        ) {
            self.closing_error = Some((
                ErrorCode::ShuttingDown,
                "the recorder is stopping; reconnect with RESUME later".into(),
            ));
            self.state = if matches!(self.state, State::AwaitHello | State::Claiming) {
                State::Done
            } else {
                State::Closing
            };
            if self.state == State::Done {
                self.send_closing_error();
            }
        }
    }

    fn fail(&mut self, code: ErrorCode, text: String) {
        if matches!(self.state, State::Closing | State::Done) {
            return;
        }
        self.registry.metrics.error(code);
        self.closing_error = Some((code, text));
        self.inbuf.clear();
        self.inbuf_pos = 0;
        if self.file.is_none() || self.state == State::Opening && !self.open_issued {
            self.state = State::Done;
            self.send_closing_error();
        } else {
            self.state = State::Closing;
        }
    }

    fn send_closing_error(&mut self) {
        if let Some((code, text)) = self.closing_error.take() {
            protocol::encode(
                &mut self.out,
                &Msg::Error {
                    code: code as u16,
                    text: &text,
                },
            );
            self.error_sent = Some(code);
        }
    }

    fn send_ack(&mut self, seq: u64) {
        if seq > self.acked || (self.reack && seq == self.acked) {
            protocol::encode(&mut self.out, &Msg::Ack { seq });
            self.acked = seq;
            self.reack = false;
            Metrics::add(&self.registry.metrics.acks, 1);
            let h = &self.registry.metrics.hist.ds_ack_latency;
            let now = Instant::now();
            while let Some(&(_, t)) = self.unacked_rx.front().filter(|f| f.0 <= seq) {
                h.observe(now.saturating_duration_since(t).as_secs_f64());
                self.unacked_rx.pop_front();
            }
        }
    }

    fn ackable(&self) -> u64 {
        match (self.cfg.ack_mode, &self.file) {
            (_, None) => self.acked,
            (AckMode::Durable, Some(f)) => f.durable_seq(),
            (AckMode::Received, Some(f)) => f.last_seq(),
        }
    }

    /// Received bytes. Parses as much as it can (in place when nothing is buffered).
    pub fn feed(&mut self, data: &[u8], now: Instant) {
        if !data.is_empty() {
            self.last_rx = now;
        }
        if !matches!(
            self.state,
            State::AwaitHello | State::Claiming | State::Opening | State::Streaming
        ) {
            return;
        }
        if self.inbuf_pos == self.inbuf.len() {
            self.inbuf.clear();
            self.inbuf_pos = 0;
            let used = self.process(data, now);
            if matches!(
                self.state,
                State::AwaitHello | State::Claiming | State::Opening | State::Streaming
            ) {
                self.inbuf.extend_from_slice(&data[used..]);
            }
        } else {
            if self.inbuf_pos >= self.inbuf.len() - self.inbuf_pos {
                self.inbuf.drain(..self.inbuf_pos);
                self.inbuf_pos = 0;
            }
            self.inbuf.extend_from_slice(data);
            self.process_buffered(now);
        }
    }

    fn process_buffered(&mut self, now: Instant) {
        let buf = std::mem::take(&mut self.inbuf);
        let used = self.process(&buf[self.inbuf_pos..], now);
        if matches!(
            self.state,
            State::AwaitHello | State::Claiming | State::Opening | State::Streaming
        ) {
            self.inbuf = buf;
            self.inbuf_pos += used;
            if self.inbuf_pos == self.inbuf.len() {
                self.inbuf.clear();
                self.inbuf_pos = 0;
            }
        } else {
            self.inbuf_pos = 0;
        }
    }

    /// Processes whole messages from `b`; returns the bytes consumed.
    fn process(&mut self, b: &[u8], now: Instant) -> usize {
        let max_len = self.cfg.max_frame_bytes.saturating_add(64);
        let mut used = 0;
        let recv_us = storage::now_unix_us();
        self.stalled = false;
        while matches!(self.state, State::AwaitHello | State::Streaming) {
            if let Some(f) = &self.file {
                if f.in_flight() && f.stage_full() {
                    self.stalled = true;
                    break; // backpressure: wait for the write
                }
            }
            let (msg, n) = match protocol::decode(&b[used..], max_len) {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(e) => {
                    self.fail(e.code, e.text);
                    break;
                }
            };
            used += n;
            self.on_msg(msg, now, recv_us);
        }
        if self.state == State::Streaming && (self.cfg.ack_mode == AckMode::Received || self.reack)
        {
            let a = self.ackable();
            self.send_ack(a);
        }
        used
    }

    fn on_msg(&mut self, msg: Msg<'_>, now: Instant, recv_us: u64) {
        match (self.state, msg) {
            (
                State::AwaitHello,
                Msg::Hello {
                    version,
                    resume,
                    match_id,
                    credential,
                },
            ) => self.on_hello(version, resume, match_id, credential, now),
            (State::AwaitHello, m) => self.fail(
                ErrorCode::Unexpected,
                format!("the first message must be HELLO, got {}", msg_name(&m)),
            ),
            (
                State::Streaming,
                Msg::Frame {
                    seq,
                    tick,
                    frame_kind,
                    crc32c,
                    payload,
                },
            ) => self.on_frame(seq, tick, frame_kind, crc32c, payload, now, recv_us),
            (State::Streaming, Msg::End { last_seq }) => self.on_end(last_seq),
            (_, m) => self.fail(
                ErrorCode::Unexpected,
                format!("{} is not expected here", msg_name(&m)),
            ),
        }
    }

    fn on_hello(
        &mut self,
        version: u16,
        resume: bool,
        match_id: &str,
        credential: &[u8],
        now: Instant,
    ) {
        if version != protocol::VERSION {
            return self.fail(
                ErrorCode::BadVersion,
                format!("protocol version {version} is not spoken here; this recorder speaks version {}", protocol::VERSION),
            );
        }
        if let Err(e) = protocol::validate_match_id(match_id) {
            return self.fail(e.code, e.text);
        }
        if !self.cfg.ds_token.is_empty() && !ct_eq(credential, &self.cfg.ds_token) {
            return self.fail(
                ErrorCode::AuthFailed,
                "the DS credential does not match the recorder's ds-token".into(),
            );
        }
        self.match_id = match_id.to_string();
        self.claim = Some((resume, now + WRITER_WAIT, now));
        self.try_claim(now);
    }

    /// Asks for the writer role; a match whose writer is still finishing is asked again
    /// every `WRITER_POLL` until `WRITER_WAIT` has passed, then MATCH_BUSY.
    fn try_claim(&mut self, now: Instant) {
        let Some((resume, until, _)) = self.claim else {
            return;
        };
        let match_id = self.match_id.clone();
        match self.registry.claim_writer(&match_id, resume) {
            Err((ErrorCode::MatchBusy, _)) if now < until => {
                self.claim = Some((resume, until, now + WRITER_POLL));
                self.state = State::Claiming;
                return;
            }
            Err((ErrorCode::MatchBusy, text)) => self.fail(
                ErrorCode::MatchBusy,
                format!(
                    "{text} (waited {} ms for it to finish); retry later",
                    WRITER_WAIT.as_millis()
                ),
            ),
            Err((code, text)) => self.fail(code, text),
            Ok(Claim::New(g)) => {
                self.guard = Some(g);
                self.file = Some(MatchFile::create(
                    &match_id,
                    storage::now_unix_us(),
                    self.cfg.store.clone(),
                ));
                self.open_create = true;
                self.state = State::Opening;
            }
            Ok(Claim::Resume(g, f)) => {
                self.guard = Some(g);
                self.file = Some(f);
                self.state = State::Opening;
            }
            Ok(Claim::Rescan(g)) => {
                self.guard = Some(g);
                self.open_rescan = true;
                self.state = State::Opening;
            }
        }
        self.claim = None;
    }

    #[allow(clippy::too_many_arguments)]
    fn on_frame(
        &mut self,
        seq: u64,
        tick: u64,
        kind: u8,
        crc: u32,
        payload: &[u8],
        now: Instant,
        recv_us: u64,
    ) {
        if payload.len() > self.cfg.max_frame_bytes as usize {
            return self.fail(
                ErrorCode::FrameTooLarge,
                format!(
                    "frame {seq} has {} payload bytes, max-frame-bytes is {}",
                    payload.len(),
                    self.cfg.max_frame_bytes
                ),
            );
        }
        if kind != protocol::FRAME_KEY && kind != protocol::FRAME_DELTA {
            return self.fail(
                ErrorCode::BadFrameKind,
                format!("frame {seq} has frame_kind {kind}; use 1 (keyframe) or 2 (delta)"),
            );
        }
        let f = self.file.as_mut().expect("streaming has a file");
        let last = f.last_seq();
        if seq <= last {
            Metrics::add(&self.registry.metrics.resent_frames, 1);
            self.reack = true;
            return;
        }
        if seq != last + 1 {
            return self.fail(
                ErrorCode::SeqGap,
                format!(
                    "frame {seq} follows frame {last}; send frame {} next",
                    last + 1
                ),
            );
        }
        if f.stats().frame_count > 0 && tick < f.last_tick() {
            let lt = f.last_tick();
            return self.fail(
                ErrorCode::TickRegression,
                format!("frame {seq} has tick {tick}, lower than the previous frame's tick {lt}"),
            );
        }
        if let Err(e) = protocol::check_crc(seq, crc, payload) {
            return self.fail(e.code, e.text);
        }
        if !self.cfg.test_burn.is_off() {
            // Deliberate, test-only slowdown (see `TestBurn`).
            self.cfg.test_burn.burn(payload.len(), seq ^ crc as u64);
        }
        f.append(seq, tick, kind, crc, payload, recv_us);
        Metrics::add(&self.registry.metrics.frames, 1);
        Metrics::add(&self.registry.metrics.payload_bytes, payload.len() as u64);
        self.unacked_rx.push_back((seq, now));
        if self.first_pending.is_none() {
            self.first_pending = Some(now);
        }
    }

    fn on_end(&mut self, last_seq: u64) {
        let f = self.file.as_mut().expect("streaming has a file");
        if last_seq != f.last_seq() {
            let have = f.last_seq();
            return self.fail(
                ErrorCode::Unexpected,
                format!(
                    "END says the last frame is {last_seq}, but the last frame received is {have}"
                ),
            );
        }
        f.seal(storage::now_unix_us());
        self.state = State::Sealing;
    }

    /// The next storage operation, if one is due now. Call after every event.
    pub fn next_io(&mut self, now: Instant) -> Option<Io> {
        if self.io_in_flight {
            return None;
        }
        if self.state == State::Opening {
            if self.open_issued {
                return None;
            }
            self.open_issued = true;
            self.io_in_flight = true;
            let paths = &self.registry.paths;
            return Some(Io::Open {
                path: paths.part_path(&self.match_id),
                create: self.open_create,
                rescan: self.open_rescan,
                options: self.cfg.store.clone(),
            });
        }
        if self.state == State::Closing && !self.opened {
            // never opened: nothing to flush
            self.finish_closing();
            return None;
        }
        let flushing = matches!(self.state, State::Sealing | State::Closing);
        let write_due = self.write_due_at().is_some_and(|t| now >= t);
        let file = self.file.as_mut()?;
        if file.has_unwritten() {
            let due = flushing || file.stage_full() || self.cfg.ack_interval.is_zero() || write_due;
            if due {
                let req = file.take_write()?;
                self.first_pending = None;
                self.last_write = Some(now);
                self.io_in_flight = true;
                self.io_issued = Some(now);
                return Some(Io::Write(req));
            }
            return None;
        }
        if file.needs_sync() {
            self.sync_point = Some(file.sync_point());
            self.io_in_flight = true;
            self.io_issued = Some(now);
            return Some(Io::Sync);
        }
        if self.state == State::Sealing && !self.seal_issued {
            self.seal_issued = true;
            self.io_in_flight = true;
            let len = file.sealed_len().expect("sealing file is sealed");
            let paths = &self.registry.paths;
            return Some(Io::FinishSeal {
                len,
                part: paths.part_path(&self.match_id),
                sealed: paths.sealed_path(&self.match_id),
            });
        }
        if self.state == State::Closing {
            self.finish_closing();
        }
        None
    }

    fn finish_closing(&mut self) {
        if self.opened {
            let a = self.ackable();
            self.send_ack(a);
        }
        self.send_closing_error();
        self.state = State::Done;
        self.release();
    }

    fn release(&mut self) {
        if let Some(g) = self.guard.take() {
            if self.open_create && !self.opened {
                self.file = None;
                return self.registry.abandon_new(g);
            }
            let f = self
                .file
                .take()
                .filter(|f| !f.in_flight() && !f.is_sealed());
            self.registry.release_writer(g, f);
        }
    }

    fn storage_failed(&mut self, what: &str, e: std::io::Error) {
        self.registry.metrics.error(ErrorCode::Storage);
        self.closing_error = Some((
            ErrorCode::Storage,
            format!("could not {what} for match {}: {e}", self.match_id),
        ));
        // the file's state is unknown now: drop it, the next writer re-scans the file
        self.file = None;
        if let Some(g) = self.guard.take() {
            if self.open_create && self.state == State::Opening {
                self.registry.abandon_new(g);
            } else {
                self.registry.release_writer(g, None);
            }
        }
        self.state = State::Done;
        self.send_closing_error();
    }

    /// Result of `Io::Open`. `rescanned`: the fresh state for an `rescan` open.
    pub fn open_done(&mut self, result: std::io::Result<Option<MatchFile>>) {
        self.io_in_flight = false;
        if self.state == State::Done {
            return;
        }
        match result {
            Err(e) => self.storage_failed("open the replay file", e),
            Ok(rescanned) => {
                self.opened = true;
                if let Some(f) = rescanned {
                    self.file = Some(f);
                }
                let f = self.file.as_ref().expect("open gives a file");
                let last = f.durable_seq();
                self.acked = last;
                protocol::encode(
                    &mut self.out,
                    &Msg::Welcome {
                        version: protocol::VERSION,
                        ack_mode: self.cfg.ack_mode,
                        last_seq: last,
                        max_frame_bytes: self.cfg.max_frame_bytes,
                    },
                );
                if let Some(g) = &self.guard {
                    self.registry.publish(&g.shared, f);
                }
                if self.state == State::Opening {
                    self.state = State::Streaming;
                    let now = Instant::now();
                    if self.inbuf_pos < self.inbuf.len() {
                        self.process_buffered(now);
                    }
                    self.close_if_input_done();
                }
            }
        }
    }

    /// Result of `Io::Write`.
    pub fn write_done(&mut self, req: WriteReq, result: std::io::Result<()>) {
        self.io_in_flight = false;
        let Some(f) = self.file.as_mut() else { return };
        match result {
            Err(e) => {
                f.write_failed();
                self.storage_failed("write the replay file", e);
            }
            Ok(()) => {
                if !self.cfg.test_write_delay.is_zero() {
                    // Deliberate, test-only slowdown (see `test-write-delay-us`).
                    std::thread::sleep(self.cfg.test_write_delay);
                }
                if let Some(t) = self.io_issued.take() {
                    crate::metrics::observe_since(&self.registry.metrics.hist.storage_write, t);
                }
                Metrics::add(&self.registry.metrics.writes, 1);
                Metrics::add(&self.registry.metrics.write_bytes, req.bytes().len() as u64);
                f.write_done(req);
                self.after_progress();
            }
        }
    }

    /// Result of `Io::Sync`.
    pub fn sync_done(&mut self, result: std::io::Result<()>) {
        self.io_in_flight = false;
        let point = self.sync_point.take();
        let Some(f) = self.file.as_mut() else { return };
        match result {
            Err(e) => self.storage_failed("fdatasync the replay file", e),
            Ok(()) => {
                if let Some(t) = self.io_issued.take() {
                    crate::metrics::observe_since(&self.registry.metrics.hist.storage_sync, t);
                }
                Metrics::add(&self.registry.metrics.syncs, 1);
                if let Some((end, seq)) = point {
                    f.sync_done(end, seq);
                }
                self.after_progress();
            }
        }
    }

    fn after_progress(&mut self) {
        if let (Some(g), Some(f)) = (&self.guard, &self.file) {
            self.registry.publish(&g.shared, f);
        }
        if self.cfg.ack_mode == AckMode::Durable && !matches!(self.state, State::Done) {
            let a = self.ackable();
            self.send_ack(a);
        }
        if self.state == State::Streaming && self.inbuf_pos < self.inbuf.len() {
            self.process_buffered(Instant::now());
            self.close_if_input_done();
        }
    }

    /// Result of `Io::FinishSeal`.
    pub fn seal_done(&mut self, result: std::io::Result<SealedInfo>) {
        self.io_in_flight = false;
        match result {
            Err(e) => self.storage_failed("seal the replay file", e),
            Ok(info) => {
                let last = info.trailer.last_seq;
                if let Some(g) = self.guard.take() {
                    self.registry.sealed(&g.shared, &info);
                    self.registry.release_writer(g, None);
                }
                let a = last;
                if self.cfg.ack_mode == AckMode::Durable {
                    self.send_ack(a);
                }
                protocol::encode(
                    &mut self.out,
                    &Msg::Sealed {
                        last_seq: last,
                        file_bytes: info.len,
                    },
                );
                self.file = None;
                self.state = State::Done;
            }
        }
    }
}

impl Drop for IngestSession {
    fn drop(&mut self) {
        self.release();
    }
}

fn msg_name(m: &Msg<'_>) -> &'static str {
    match m {
        Msg::Hello { .. } => "HELLO",
        Msg::Frame { .. } => "FRAME",
        Msg::End { .. } => "END",
        Msg::Welcome { .. } => "WELCOME",
        Msg::Ack { .. } => "ACK",
        Msg::Error { .. } => "ERROR",
        Msg::Sealed { .. } => "SEALED",
    }
}

/// Constant-time comparison for credentials.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

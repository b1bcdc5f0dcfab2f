//! [server] section: the recorder's addresses, backend, ack policy and limits.

use super::{
    choice_name, parse_bytes, parse_choice, parse_num, Config, ConfigError, Knob, Section,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Thread-per-core io_uring workers (`server::uring`).
    Uring,
    /// Thread per connection, std::fs / std::net: the baseline.
    Blocking,
}

pub const BACKENDS: &[(&str, Backend)] =
    &[("uring", Backend::Uring), ("blocking", Backend::Blocking)];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckModeKnob {
    Durable,
    Received,
}

/// Where the uring backend writes a match's appends from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteBuffer {
    /// Copied into the worker's arena (aligned, THP-backed, registered with
    /// register-buffers), one slot per append when it fits.
    Arena,
    /// Straight from the session's staging buffer (heap, no copy; user pages are pinned per
    /// write). Not with the fixed write opcodes.
    Stage,
}

pub const WRITE_BUFFERS: &[(&str, WriteBuffer)] =
    &[("arena", WriteBuffer::Arena), ("stage", WriteBuffer::Stage)];

/// How DS frames become durable (docs/architecture.md, "Durability").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageLayout {
    /// Each match's replay file is written and synced on its own (one fdatasync, or
    /// O_DSYNC write, per match per ack interval).
    PerMatch,
    /// Frames are made durable by a write-ahead journal per io_uring worker (one group
    /// commit writer for the blocking backend); replay files are written behind, buffered,
    /// and made durable at checkpoints and at seal.
    Journal,
}

pub const STORAGE_LAYOUTS: &[(&str, StorageLayout)] = &[
    ("per-match", StorageLayout::PerMatch),
    ("journal", StorageLayout::Journal),
];

/// How the io_uring backend writes replay files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayWrite {
    /// `ring` with storage-layout=per-match, `inline` with journal.
    Auto,
    /// Through the worker's ring (`file.write-op`, arena slots or the staging buffer).
    Ring,
    /// A pwrite on the worker thread: for the journal layout's buffered replay files,
    /// which only copy into the page cache (through the ring, ext4 runs them in io-wq:
    /// a hand-off and a wake-up per write).
    Inline,
}

pub const REPLAY_WRITES: &[(&str, ReplayWrite)] = &[
    ("auto", ReplayWrite::Auto),
    ("ring", ReplayWrite::Ring),
    ("inline", ReplayWrite::Inline),
];

pub const ACK_MODES: &[(&str, AckModeKnob)] = &[
    ("durable", AckModeKnob::Durable),
    ("received", AckModeKnob::Received),
];

#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    pub store: String,
    pub ingest_addr: String,
    pub http_addr: String,
    pub backend: Backend,
    pub workers: u32,
    pub ack_mode: AckModeKnob,
    pub ack_interval_ms: u64,
    pub append_buffer_bytes: u64,
    pub write_buffer: WriteBuffer,
    pub storage_layout: StorageLayout,
    pub replay_write: ReplayWrite,
    pub journal_bytes: u64,
    pub journal_flush_us: u64,
    pub journal_flush_bytes: u64,
    pub journal_checkpoint_ms: u64,
    /// Share of the checkpoint interval a checkpoint's replay-file writeback is spread over.
    pub journal_checkpoint_spread_pct: u64,
    pub journal_bypass_bytes: u64,
    /// Replay files kept open per io_uring worker (blocking: in total); 0 = auto.
    pub replay_fd_cache: u64,
    pub max_frame_bytes: u64,
    pub max_matches: u64,
    /// Memory live matches may reserve in all ([`match_memory_bytes`] each); 0 = auto
    /// ([`auto_memory_budget`], resolved at start).
    pub memory_budget: u64,
    pub max_connections: u64,
    pub http_max_connections: u64,
    pub idle_timeout_ms: u64,
    pub http_max_request_bytes: u64,
    pub http_timeout_ms: u64,
    pub live_max_delay_ms: u64,
    pub ds_token: String,
    pub retention_s: u64,
    /// Abandoned matches: no writer for this many seconds ends them per `abandon_action`; 0 = never.
    pub abandon_after_s: u64,
    pub abandon_action: AbandonAction,
    /// TEST ONLY: injected delay after every replay-file write completes.
    pub test_write_delay_us: u64,
    /// TEST ONLY: CPU burnt per accepted frame (hash rounds per frame and per KiB).
    pub test_burn_rounds_per_frame: u64,
    pub test_burn_rounds_per_kib: u64,
    /// TEST ONLY: CPU burnt as a share of the frame-parsing thread's own CPU time (percent).
    pub test_burn_cpu_pct: u64,
    /// Log filter (tracing EnvFilter directives); "" = RUST_LOG, else `info`.
    pub log_level: String,
    pub log_format: LogFormat,
    /// Log to this file (reopened on SIGHUP) instead of stderr; "" = stderr.
    pub log_file: String,
    /// One `info` line per HTTP response (target `recorder::access`).
    pub access_log: bool,
    /// TEST ONLY: injected delay before each journal checkpoint's store sync.
    pub test_checkpoint_delay_ms: u64,
}

/// What `abandon-after-s` does to a match left without a writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbandonAction {
    /// Sealed with the frames it has.
    Seal,
    /// Sealed, then deleted like retention deletes (410, id not reusable).
    Remove,
}

pub const ABANDON_ACTIONS: &[(&str, AbandonAction)] = &[
    ("seal", AbandonAction::Seal),
    ("remove", AbandonAction::Remove),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

pub const LOG_FORMATS: &[(&str, LogFormat)] =
    &[("text", LogFormat::Text), ("json", LogFormat::Json)];

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            store: String::new(),
            ingest_addr: "127.0.0.1:7070".into(),
            http_addr: "127.0.0.1:8080".into(),
            backend: Backend::Uring,
            workers: 0,
            ack_mode: AckModeKnob::Durable,
            ack_interval_ms: 20,
            append_buffer_bytes: 1 << 20,
            max_frame_bytes: 1 << 20,
            max_matches: 10_000,
            memory_budget: 0,
            max_connections: 0,
            http_max_connections: 0,
            idle_timeout_ms: 30_000,
            http_max_request_bytes: 8192,
            http_timeout_ms: 10_000,
            live_max_delay_ms: 120_000,
            ds_token: String::new(),
            retention_s: 0,
            abandon_after_s: 0,
            abandon_action: AbandonAction::Seal,
            test_write_delay_us: 0,
            test_checkpoint_delay_ms: 0,
            test_burn_rounds_per_frame: 0,
            test_burn_rounds_per_kib: 0,
            test_burn_cpu_pct: 0,
            write_buffer: WriteBuffer::Arena,
            log_level: String::new(),
            log_format: LogFormat::Text,
            log_file: String::new(),
            access_log: false,
            storage_layout: StorageLayout::Journal,
            replay_write: ReplayWrite::Auto,
            journal_bytes: 64 << 20,
            journal_flush_us: 1000,
            journal_flush_bytes: 256 << 10,
            journal_checkpoint_ms: 1000,
            journal_checkpoint_spread_pct: 0,
            journal_bypass_bytes: 256 << 10,
            replay_fd_cache: 0,
        }
    }
}

const fn k(
    name: &'static str,
    values: &'static str,
    default: &'static str,
    help: &'static str,
) -> Knob {
    Knob {
        section: "server",
        name,
        kernel: "",
        since: "",
        values,
        default,
        help,
    }
}

const KNOBS: &[Knob] = &[
    k("store", "path", "", "Store directory: sealed replays as <id>.rpl, matches in progress under live/. Required by `recorder serve`."),
    k("ingest-addr", "host:port", "127.0.0.1:7070", "Address the DS ingest protocol listens on (port 0 picks a free port; the bound address is printed on stderr)."),
    k("http-addr", "host:port", "127.0.0.1:8080", "Address the HTTP replay server listens on (port 0 picks a free port)."),
    k("backend", "uring|blocking", "uring", "uring: thread-per-core io_uring workers; blocking: a thread per connection with std::fs/std::net (the baseline)."),
    k("workers", "u32", "0", "io_uring worker threads (0 = one per CPU). The blocking backend ignores it."),
    k("ack-mode", "durable|received", "durable", "durable: an ACK for N means frames 1..=N are durable per the file durability policy; received: ACK on receipt (experiments only, announced in WELCOME)."),
    k("ack-interval-ms", "u64", "20", "Group commit per match: at most one write (+ fdatasync per the durability policy) and one cumulative ACK per interval; frames arriving after a quiet period are written at once (0 = after every batch of input)."),
    k("append-buffer-bytes", "bytes", "1048576", "Per-match staging buffer: a write is issued at the latest when this much is pending (whole aligned blocks with O_DIRECT)."),
    k("write-buffer", "arena|stage", "arena", "uring backend: where match-file writes come from. arena: the append is copied into the worker's arena (aligned, buffer-memory pages, registered with register-buffers; slots hold one append of append-buffer-bytes plus 128 KiB), one write per append; stage: straight from the match's staging buffer (no copy, but heap pages pinned per write). stage needs write-op write or writev."),
    k("storage-layout", "per-match|journal", "journal", "How acked frames are made durable. per-match: each match's replay file is written and synced itself (file.direct and file.durability apply to it; one sync per match per ack interval). journal: one write-ahead journal per io_uring worker (one group-commit writer thread for the blocking backend) makes the frames of all its matches durable with one flush per group; file.direct and file.durability apply to the journal, replay files are written behind it buffered and made durable at checkpoints (syncfs) and at seal."),
    k("replay-write", "auto|ring|inline", "auto", "io_uring backend: how replay files are written. ring: through the worker's ring (file.write-op, write-buffer); inline: a pwrite on the worker thread, for storage-layout=journal only, where replay files are buffered and a write only copies into the page cache (ext4 runs ring writes of buffered files in io-wq: a hand-off and wake-up per write). auto: ring with per-match, inline with journal. The effective value is in --print-config."),
    k("journal-bytes", "bytes", "67108864", "storage-layout=journal: size of each journal file (STORE/journal/w<N>.wal), preallocated and written once, then reused as a ring. A full journal slows acks until a checkpoint frees space."),
    k("journal-flush-us", "u64", "1000", "storage-layout=journal: minimum spacing between the starts of two flushes of one journal (flushes per second <= journals x 1e6 / this). One flush is in flight per journal; the next takes everything appended meanwhile. 0 = flush as soon as the previous one completed."),
    k("journal-flush-bytes", "bytes", "262144", "storage-layout=journal: flush at once, whatever journal-flush-us says, when this many bytes wait for a flush."),
    k("journal-checkpoint-ms", "u64", "1000", "storage-layout=journal: at least this often (and at once when a journal is half full) the replay files are made durable (live replay files written back one at a time with sync_file_range, spread over journal-checkpoint-spread-pct of this interval, then one syncfs of the store) and a checkpoint lets the journal space before it be reused."),
    k("journal-checkpoint-spread-pct", "u64", "0", "storage-layout=journal: a checkpoint started by its interval writes the live replay files back one at a time spread evenly over this share of journal-checkpoint-ms (io_uring: each worker its own matches' files, on its own checkpoint thread), then runs its syncfs, so that the journal flushes meanwhile (on a disk with a volatile write cache each is a cache flush) meet a slice of the replay writeback rather than all of it at once. 0 = back to back. Measured at 1,000 DS on a virtio disk it did not lower the ack tail (docs/architecture.md, Checkpoint pacing): sweep it on your disk before setting it. A checkpoint started because a journal is half full is never spread, and one under way stops pacing when its journal reaches half full."),
    k("journal-bypass-bytes", "bytes", "262144", "storage-layout=journal: a replay-file write at least this large (a bulk sender's append) is not journaled but made durable in its replay file itself (fdatasync) before its ack, so bulk bytes reach the disk once. From its second such write on, the match's replay file is written with O_DIRECT, aligned like a per-match file (file.direct on and taken by the store; not with replay-write=ring), so bulk bytes skip the page cache too; 0 = journal every write."),
    k("replay-fd-cache", "u64", "0", "storage-layout=journal (io_uring: with replay-write=inline): replay files kept open per io_uring worker (the blocking backend: in total); a write to a file that is not open opens it, and the least recently used one is closed (no sync needed: checkpoints sync the whole store). A DS connection then holds only its socket, so max-connections is no longer bound to two descriptors per DS. 0 = auto: an eighth of RLIMIT_NOFILE's descriptors, 16 to 1024 per cache; the effective value is in --print-config. With per-match or replay-write=ring each match holds its file while its DS is connected (set 0)."),
    k("max-frame-bytes", "bytes", "1048576", "Largest frame payload a DS may send (FRAME_TOO_LARGE above; messages above it + 64 are refused before their body is read)."),
    k("max-matches", "u64", "10000", "Matches in progress at once; a new match over it gets TOO_MANY_MATCHES."),
    k("memory-budget", "bytes", "0", "Memory all matches in progress may hold in their buffers. Each live match (connected or waiting for a RESUME, recovered ones included) reserves append-buffer-bytes + 128 KiB, its staging buffer at its fill limit plus the frame that crosses it and its bookkeeping; a new match that would exceed the budget gets TOO_MANY_MATCHES (a RESUME of a match in progress is never refused for it). 0 = auto: half the machine's memory (MemTotal, or the cgroup's memory.max when lower); the effective value and the number of matches it admits are in --print-config and the start-up log. Must hold at least one match."),
    k("max-connections", "u64", "0", "DS connections at once; one more gets TOO_MANY_CONNECTIONS. 0 = as many as RLIMIT_NOFILE allows (its hard limit, which the recorder raises its soft limit to, less HTTP and a reserve; a DS connection holds 2 descriptors with backend=uring, 3 with blocking); the effective value is in --print-config and the start-up log. A value that cannot fit is refused at start with the numbers."),
    k("http-max-connections", "u64", "0", "HTTP connections at once; one more gets 503 and is closed. 0 = 10% of the descriptors RLIMIT_NOFILE allows, at most 1000."),
    k("idle-timeout-ms", "u64", "30000", "A DS connection that sends nothing for this long gets IDLE_TIMEOUT and is closed (its match stays resumable)."),
    k("http-max-request-bytes", "bytes", "8192", "Largest HTTP request head; a larger one gets 431 and the connection is closed."),
    k("http-timeout-ms", "u64", "10000", "An HTTP client must send a whole request, and accept response bytes, within this long (slow clients are closed); idle keep-alive connections are closed after it."),
    k("live-max-delay-ms", "u64", "120000", "Largest ?delay_ms a live viewer may ask for; bounds the per-match publish history."),
    k("ds-token", "string", "", "Credential every DS HELLO must carry (empty: none required)."),
    k("retention-s", "u64", "0", "Sealed replays older than this many seconds are deleted (then 410 Gone until restart, and their id cannot be reused); 0 keeps them forever."),
    k("abandon-after-s", "u64", "0", "Abandoned matches: a match in progress that has had no writer connection for this many seconds (since its last writer went away; for a match found at start, since its file last changed) is ended as it stands per abandon-action, so it stops counting toward max-matches. 0 = never: a match stays resumable until a DS sends END. Must be longer than idle-timeout-ms, the time a DS retries MATCH_BUSY."),
    k("abandon-action", "seal|remove", "seal", "What abandon-after-s does to an abandoned match: seal (sealed with the frames it has and served like any sealed replay) or remove (sealed, then deleted the way retention-s deletes: 410 Gone, its id is not reused). Needs abandon-after-s."),
    k("test-checkpoint-delay-ms", "u64", "0", "TEST ONLY: with storage-layout=journal, sleep this long before each checkpoint's store sync (on the thread doing it), so tests can fill a journal or kill the recorder in the middle of a checkpoint; never set it in production."),
    k("test-write-delay-us", "u64", "0", "TEST ONLY: sleep this many microseconds after every replay-file write completes, on the thread that handles it. Injects a known slowdown so the regression check can be shown to catch one; never set it in production."),
    k("test-burn-rounds-per-frame", "u64", "0", "TEST ONLY: burn this many rounds of a 64-bit hash on the thread that parses every accepted frame (plus test-burn-rounds-per-kib per KiB of its payload). A slowdown proportional to the work; what it costs depends on the machine (CI injects 60 rounds per KiB, measured at -10..-12% MB/s in the CI runs of sessions 8 and 10; docs/analysis.md, Calibrated injection); never set it in production."),
    k("test-burn-rounds-per-kib", "u64", "0", "TEST ONLY: burn this many rounds of a 64-bit hash per KiB of every accepted frame's payload (see test-burn-rounds-per-frame); never set it in production."),
    k("test-burn-cpu-pct", "u64", "0", "TEST ONLY: every thread that parses accepted frames burns this share (percent, 0-100) of the CPU time it used itself since its last burn, measured on its own CPU clock (CLOCK_THREAD_CPUTIME_ID, read every 16 frames or 64 KiB of payload): that thread's CPU time grows by this share whatever the machine's speed (hash rounds cost what the machine makes them cost). Other threads (io-wq, storage, checkpoints) burn nothing, and the recorder absorbs a small burn: in experiments/ci-bulk.toml 10% moved MB/s by -0.1..+1.2%, 15% by -0.9..-11.5%, 30% by -4.7..-18.8% (docs/analysis.md, Power of the check). For power studies of the regression check; never set it in production."),
    k("log-level", "filter", "", "Log filter: a level (error, warn, info, debug, trace) or tracing EnvFilter directives such as `info,recorder::startup=debug` (the per-worker ring set-up lines are `recorder::startup` at debug). Empty: RUST_LOG if set, else info; a value given here wins over RUST_LOG."),
    k("log-format", "text|json", "text", "Log lines on stderr (or log-file): text (RFC 3339 UTC timestamp, level, target, message) or json (one object per line: timestamp, level, target, message and fields)."),
    k("log-file", "path", "", "Append log lines to this file instead of stderr; SIGHUP reopens it (for logrotate). Empty: stderr."),
    k("access-log", "bool", "false", "Log one info line per HTTP response when it is complete (target recorder::access: method, target, status, body bytes, duration_ms, complete)."),
];

impl Section for ServerConfig {
    const NAME: &'static str = "server";
    fn knobs() -> &'static [Knob] {
        KNOBS
    }
    fn set(&mut self, name: &str, v: &str) -> Result<(), String> {
        match name {
            "store" => self.store = v.to_string(),
            "ingest-addr" => self.ingest_addr = v.trim().to_string(),
            "http-addr" => self.http_addr = v.trim().to_string(),
            "backend" => self.backend = parse_choice(v, BACKENDS)?,
            "workers" => self.workers = parse_num(v)?,
            "ack-mode" => self.ack_mode = parse_choice(v, ACK_MODES)?,
            "ack-interval-ms" => self.ack_interval_ms = parse_num(v)?,
            "append-buffer-bytes" => self.append_buffer_bytes = parse_bytes(v)?,
            "write-buffer" => self.write_buffer = parse_choice(v, WRITE_BUFFERS)?,
            "storage-layout" => self.storage_layout = parse_choice(v, STORAGE_LAYOUTS)?,
            "replay-write" => self.replay_write = parse_choice(v, REPLAY_WRITES)?,
            "journal-bytes" => self.journal_bytes = parse_bytes(v)?,
            "journal-flush-us" => self.journal_flush_us = parse_num(v)?,
            "journal-flush-bytes" => self.journal_flush_bytes = parse_bytes(v)?,
            "journal-checkpoint-ms" => self.journal_checkpoint_ms = parse_num(v)?,
            "journal-checkpoint-spread-pct" => self.journal_checkpoint_spread_pct = parse_num(v)?,
            "journal-bypass-bytes" => self.journal_bypass_bytes = parse_bytes(v)?,
            "replay-fd-cache" => self.replay_fd_cache = parse_num(v)?,
            "max-frame-bytes" => self.max_frame_bytes = parse_bytes(v)?,
            "max-matches" => self.max_matches = parse_num(v)?,
            "memory-budget" => self.memory_budget = parse_bytes(v)?,
            "max-connections" => self.max_connections = parse_num(v)?,
            "http-max-connections" => self.http_max_connections = parse_num(v)?,
            "idle-timeout-ms" => self.idle_timeout_ms = parse_num(v)?,
            "http-max-request-bytes" => self.http_max_request_bytes = parse_bytes(v)?,
            "http-timeout-ms" => self.http_timeout_ms = parse_num(v)?,
            "live-max-delay-ms" => self.live_max_delay_ms = parse_num(v)?,
            "ds-token" => self.ds_token = v.to_string(),
            "retention-s" => self.retention_s = parse_num(v)?,
            "abandon-after-s" => self.abandon_after_s = parse_num(v)?,
            "abandon-action" => self.abandon_action = parse_choice(v, ABANDON_ACTIONS)?,
            "test-write-delay-us" => self.test_write_delay_us = parse_num(v)?,
            "test-burn-rounds-per-frame" => self.test_burn_rounds_per_frame = parse_num(v)?,
            "test-burn-rounds-per-kib" => self.test_burn_rounds_per_kib = parse_num(v)?,
            "test-burn-cpu-pct" => self.test_burn_cpu_pct = parse_num(v)?,
            "log-level" => self.log_level = v.trim().to_string(),
            "log-format" => self.log_format = parse_choice(v, LOG_FORMATS)?,
            "log-file" => self.log_file = v.to_string(),
            "access-log" => self.access_log = super::parse_bool(v)?,
            "test-checkpoint-delay-ms" => self.test_checkpoint_delay_ms = parse_num(v)?,
            _ => return Err(format!("unknown option {name}")),
        }
        Ok(())
    }
    fn get(&self, name: &str) -> Option<String> {
        Some(match name {
            "store" => self.store.clone(),
            "ingest-addr" => self.ingest_addr.clone(),
            "http-addr" => self.http_addr.clone(),
            "backend" => choice_name(self.backend, BACKENDS).to_string(),
            "workers" => self.workers.to_string(),
            "ack-mode" => choice_name(self.ack_mode, ACK_MODES).to_string(),
            "ack-interval-ms" => self.ack_interval_ms.to_string(),
            "append-buffer-bytes" => self.append_buffer_bytes.to_string(),
            "write-buffer" => choice_name(self.write_buffer, WRITE_BUFFERS).to_string(),
            "storage-layout" => choice_name(self.storage_layout, STORAGE_LAYOUTS).to_string(),
            "replay-write" => choice_name(self.replay_write, REPLAY_WRITES).to_string(),
            "journal-bytes" => self.journal_bytes.to_string(),
            "journal-flush-us" => self.journal_flush_us.to_string(),
            "journal-flush-bytes" => self.journal_flush_bytes.to_string(),
            "journal-checkpoint-ms" => self.journal_checkpoint_ms.to_string(),
            "journal-checkpoint-spread-pct" => self.journal_checkpoint_spread_pct.to_string(),
            "journal-bypass-bytes" => self.journal_bypass_bytes.to_string(),
            "replay-fd-cache" => self.replay_fd_cache.to_string(),
            "max-frame-bytes" => self.max_frame_bytes.to_string(),
            "max-matches" => self.max_matches.to_string(),
            "memory-budget" => self.memory_budget.to_string(),
            "max-connections" => self.max_connections.to_string(),
            "http-max-connections" => self.http_max_connections.to_string(),
            "idle-timeout-ms" => self.idle_timeout_ms.to_string(),
            "http-max-request-bytes" => self.http_max_request_bytes.to_string(),
            "http-timeout-ms" => self.http_timeout_ms.to_string(),
            "live-max-delay-ms" => self.live_max_delay_ms.to_string(),
            "ds-token" => self.ds_token.clone(),
            "retention-s" => self.retention_s.to_string(),
            "abandon-after-s" => self.abandon_after_s.to_string(),
            "abandon-action" => choice_name(self.abandon_action, ABANDON_ACTIONS).to_string(),
            "test-write-delay-us" => self.test_write_delay_us.to_string(),
            "test-burn-rounds-per-frame" => self.test_burn_rounds_per_frame.to_string(),
            "test-burn-rounds-per-kib" => self.test_burn_rounds_per_kib.to_string(),
            "test-burn-cpu-pct" => self.test_burn_cpu_pct.to_string(),
            "log-level" => self.log_level.clone(),
            "log-format" => choice_name(self.log_format, LOG_FORMATS).to_string(),
            "log-file" => self.log_file.clone(),
            "access-log" => self.access_log.to_string(),
            "test-checkpoint-delay-ms" => self.test_checkpoint_delay_ms.to_string(),
            _ => return None,
        })
    }
}

/// What each match in progress reserves of `memory-budget`: its staging buffer at its fill
/// limit (`append-buffer-bytes`) plus 128 KiB for the frame that crosses it, its keyframe
/// index and the write in flight (about 1.1 MiB with the defaults, as measured in issue 12).
pub fn match_memory_bytes(s: &ServerConfig) -> u64 {
    s.append_buffer_bytes + MATCH_MEMORY_SLACK
}

/// The part of [`match_memory_bytes`] above the staging buffer.
pub const MATCH_MEMORY_SLACK: u64 = 128 << 10;

/// `memory-budget = 0`: half of `machine_bytes` (MemTotal, or the cgroup limit when lower),
/// never less than one match.
pub fn auto_memory_budget(s: &ServerConfig, machine_bytes: u64) -> u64 {
    (machine_bytes / 2).max(match_memory_bytes(s))
}

/// Cross-option rules of this section.
pub fn validate(cfg: &Config) -> Result<(), ConfigError> {
    let s = &cfg.server;
    for (name, v) in [("ingest-addr", &s.ingest_addr), ("http-addr", &s.http_addr)] {
        if v.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::new(&[knob(name)], format!("{name} {v:?} is not an address such as 127.0.0.1:7070 (use port 0 for any free port)")));
        }
    }
    if s.max_frame_bytes == 0 || s.max_frame_bytes > (256 << 20) {
        return Err(ConfigError::new(
            &["max-frame-bytes"],
            format!(
                "max-frame-bytes {} must be between 1 and 256m",
                s.max_frame_bytes
            ),
        ));
    }
    if s.append_buffer_bytes < 4096 || s.append_buffer_bytes > (1 << 30) {
        return Err(ConfigError::new(
            &["append-buffer-bytes"],
            "append-buffer-bytes must be between 4k and 1g",
        ));
    }
    if s.ack_interval_ms > 10_000 {
        return Err(ConfigError::new(
            &["ack-interval-ms"],
            format!(
                "ack-interval-ms {} is over 10000; a DS would wait seconds for acks",
                s.ack_interval_ms
            ),
        ));
    }
    if s.http_max_request_bytes < 256 || s.http_max_request_bytes > (1 << 20) {
        return Err(ConfigError::new(
            &["http-max-request-bytes"],
            "http-max-request-bytes must be between 256 and 1m",
        ));
    }
    for (name, v) in [
        ("idle-timeout-ms", s.idle_timeout_ms),
        ("http-timeout-ms", s.http_timeout_ms),
    ] {
        if v == 0 {
            return Err(ConfigError::new(
                &[knob(name)],
                format!("{name} must be at least 1"),
            ));
        }
    }
    if s.max_matches == 0 {
        return Err(ConfigError::new(
            &["max-matches"],
            "max-matches must be at least 1",
        ));
    }
    let per_match = match_memory_bytes(s);
    if s.memory_budget != 0 && s.memory_budget < per_match {
        return Err(ConfigError::new(
            &["memory-budget", "append-buffer-bytes"],
            format!(
                "memory-budget {} holds no match: each match in progress reserves append-buffer-bytes + 128 KiB = {per_match} bytes; raise memory-budget (0 = auto) or lower append-buffer-bytes",
                s.memory_budget
            ),
        ));
    }
    if s.workers > 1024 {
        return Err(ConfigError::new(
            &["workers"],
            format!("workers {} is over 1024", s.workers),
        ));
    }
    if !s.log_level.is_empty() {
        crate::logging::parse_filter(&s.log_level)
            .map_err(|e| ConfigError::new(&["log-level"], format!("log-level: {e}")))?;
    }
    let largest = s.append_buffer_bytes + s.max_frame_bytes;
    let min_journal = crate::storage::journal::JournalOptions::min_bytes(65536, largest);
    if s.journal_bytes < min_journal || s.journal_bytes > (64 << 30) {
        return Err(ConfigError::new(
            &["journal-bytes", "append-buffer-bytes", "max-frame-bytes"],
            format!(
                "journal-bytes {} must be between {min_journal} (room for 8 of the largest appends, append-buffer-bytes + max-frame-bytes = {largest}) and 64g: raise journal-bytes or lower append-buffer-bytes / max-frame-bytes",
                s.journal_bytes
            ),
        ));
    }
    if s.journal_flush_us > 1_000_000 {
        return Err(ConfigError::new(
            &["journal-flush-us"],
            format!(
                "journal-flush-us {} is over 1000000: acks would wait a second for a flush",
                s.journal_flush_us
            ),
        ));
    }
    if s.journal_flush_bytes < 4096 || s.journal_flush_bytes > s.journal_bytes / 4 {
        return Err(ConfigError::new(
            &["journal-flush-bytes", "journal-bytes"],
            format!(
                "journal-flush-bytes {} must be between 4k and a quarter of journal-bytes ({})",
                s.journal_flush_bytes,
                s.journal_bytes / 4
            ),
        ));
    }
    if s.replay_fd_cache > 1_000_000 {
        return Err(ConfigError::new(
            &["replay-fd-cache"],
            format!(
                "replay-fd-cache {} is over 1000000 open replay files per cache: use 0 (fitted to RLIMIT_NOFILE) or a smaller count",
                s.replay_fd_cache
            ),
        ));
    }
    if s.journal_checkpoint_ms < 10 || s.journal_checkpoint_ms > 600_000 {
        return Err(ConfigError::new(
            &["journal-checkpoint-ms"],
            format!(
                "journal-checkpoint-ms {} must be between 10 and 600000",
                s.journal_checkpoint_ms
            ),
        ));
    }
    if s.journal_checkpoint_spread_pct > 90 {
        return Err(ConfigError::new(
            &["journal-checkpoint-spread-pct"],
            format!(
                "journal-checkpoint-spread-pct {} must be between 0 and 90: the writeback must end before the next checkpoint is due (0 = back to back)",
                s.journal_checkpoint_spread_pct
            ),
        ));
    }
    if s.test_burn_cpu_pct > 100 {
        return Err(ConfigError::new(
            &["test-burn-cpu-pct"],
            format!(
                "test-burn-cpu-pct {} must be between 0 and 100 (a share of the parsing thread's own CPU time; 0 = off)",
                s.test_burn_cpu_pct
            ),
        ));
    }
    if s.abandon_after_s > 0 && s.abandon_after_s.saturating_mul(1000) <= s.idle_timeout_ms {
        return Err(ConfigError::new(
            &["abandon-after-s", "idle-timeout-ms"],
            format!(
                "abandon-after-s {} must be longer than idle-timeout-ms {} ms: a DS whose connection died silently keeps its match for idle-timeout-ms and retries MATCH_BUSY that long (docs/protocol.md); raise abandon-after-s or lower idle-timeout-ms",
                s.abandon_after_s, s.idle_timeout_ms
            ),
        ));
    }
    if s.abandon_after_s == 0 && s.abandon_action != AbandonAction::Seal {
        return Err(ConfigError::new(
            &["abandon-action", "abandon-after-s"],
            "abandon-action remove needs abandon-after-s (0 never abandons a match): set abandon-after-s",
        ));
    }
    if s.ds_token.len() > 255 {
        return Err(ConfigError::new(
            &["ds-token"],
            "ds-token is longer than the 255 bytes a HELLO can carry",
        ));
    }
    Ok(())
}

/// Rules that hold only when the configuration runs `recorder serve` (the [file] section
/// is shared with `recorder io-bench`, where they do not apply). `recorder serve` checks
/// them after `Config::validate`; a harness preparing a serve cell should too.
pub fn validate_serve(cfg: &Config) -> Result<(), ConfigError> {
    crate::config::file::validate_serve(cfg)?;
    crate::config::net::validate_serve(cfg)?;
    let s = &cfg.server;
    let f = &cfg.file;
    if f.sync_interval_ms != 0 || f.sync_interval_bytes != 0 {
        return Err(ConfigError::new(
            &["sync-interval-ms", "sync-interval-bytes", "ack-interval-ms"],
            "the recorder's group commit is server.ack-interval-ms (frames are written, synced and acked together at that cadence): set file.sync-interval-ms and file.sync-interval-bytes to 0",
        ));
    }
    if s.replay_write == ReplayWrite::Inline && s.storage_layout == StorageLayout::PerMatch {
        return Err(ConfigError::new(
            &["replay-write", "storage-layout"],
            "replay-write=inline is for storage-layout=journal, whose replay files are buffered page-cache writes; with per-match the replay writes are the durable ones (O_DIRECT, synced) and would block the worker thread: use replay-write=ring or auto",
        ));
    }
    if s.storage_layout == StorageLayout::Journal && f.uncached {
        return Err(ConfigError::new(
            &["uncached", "storage-layout"],
            "uncached (RWF_DONTCACHE) applies to per-match replay files; with storage-layout=journal the replay files are buffered writes behind the journal, written out at checkpoints, and the journal itself is written with the durability policy: set storage-layout=per-match to measure uncached, or uncached=false",
        ));
    }
    if s.storage_layout == StorageLayout::Journal
        && f.write_behind
        && s.replay_write != ReplayWrite::Ring
    {
        return Err(ConfigError::new(
            &["write-behind", "storage-layout", "replay-write"],
            "write-behind links SYNC_FILE_RANGE_WRITE to the ring's replay-file writes; with storage-layout=journal and replay-write=auto or inline the replay files are written with pwrite on the worker and checkpoints write them out: set replay-write=ring, or storage-layout=per-match, or write-behind=false",
        ));
    }
    if s.replay_write == ReplayWrite::Inline && f.file_ops == crate::config::file::FileOpsMode::Ring
    {
        return Err(ConfigError::new(
            &["replay-write", "file-ops"],
            "file-ops=ring opens replay files straight into the ring's file table (direct descriptors), which leaves no descriptor for replay-write=inline's pwrite: use replay-write=ring or auto with file-ops=ring, or file-ops=threads",
        ));
    }
    if s.replay_write != ReplayWrite::Auto && s.backend == Backend::Blocking {
        return Err(ConfigError::new(
            &["replay-write", "backend"],
            "replay-write chooses how the io_uring backend writes replay files; the blocking backend always writes them with pwrite from the connection's thread: leave replay-write=auto with backend=blocking",
        ));
    }
    if s.replay_fd_cache != 0 && !uses_fd_cache(cfg) {
        return Err(ConfigError::new(
            &["replay-fd-cache", "storage-layout", "replay-write"],
            if s.storage_layout == StorageLayout::PerMatch {
                "replay-fd-cache needs storage-layout=journal: with per-match every ack syncs the match's replay file, so each DS holds its file open: set replay-fd-cache=0 or storage-layout=journal"
            } else {
                "replay-fd-cache needs replay files written with pwrite (replay-write=inline, or auto without file-ops=ring): ring writes and file-ops=ring name each match's file in the ring while its DS is connected: set replay-fd-cache=0 or replay-write=inline"
            },
        ));
    }
    if s.write_buffer == WriteBuffer::Stage && f.write_op.is_fixed() {
        return Err(ConfigError::new(
            &["write-buffer", "write-op"],
            "write-buffer=stage writes from the heap staging buffer, which is not a registered buffer: use write-op=write or writev with it, or write-buffer=arena for the fixed opcodes",
        ));
    }
    if f.submit_batch != crate::config::file::SUBMIT_BATCH_DEFAULT {
        return Err(ConfigError::new(
            &["submit-batch"],
            "submit-batch is the file benchmark engine's (recorder io-bench); the server submits everything queued once per loop turn: leave submit-batch at its default",
        ));
    }
    if s.backend == Backend::Blocking
        && (f.write_op.is_fixed()
            || f.read_op != crate::config::file::ReadOp::Read
            || f.register_buffers
            || f.register_files)
    {
        return Err(ConfigError::new(
            &["backend", "write-op", "read-op", "register-buffers", "register-files"],
            "registered buffers/files and the *-fixed opcodes are io_uring options, and the blocking backend sends replay bytes with sendfile (no read opcode): with backend=blocking use write-op=write or writev (pwritev2), read-op=read, register-buffers=false, register-files=false (or backend=uring)",
        ));
    }
    Ok(())
}

/// True when replay files are kept in a bounded cache ([`crate::storage::fdcache`],
/// `replay-fd-cache`) instead of one held open per DS: storage-layout=journal with the
/// blocking backend, or the io_uring backend writing replay files inline.
pub fn uses_fd_cache(cfg: &Config) -> bool {
    cfg.server.storage_layout == StorageLayout::Journal
        && match cfg.server.backend {
            Backend::Blocking => true,
            Backend::Uring => replay_inline(cfg),
        }
}

/// The io_uring backend writes replay files with pwrite on the worker (`replay-write`
/// inline, or auto with the journal layout unless file-ops=ring).
pub fn replay_inline(cfg: &Config) -> bool {
    use crate::config::file::FileOpsMode;
    match cfg.server.replay_write {
        ReplayWrite::Inline => true,
        ReplayWrite::Ring => false,
        ReplayWrite::Auto => {
            cfg.server.storage_layout == StorageLayout::Journal
                && cfg.file.file_ops != FileOpsMode::Ring
        }
    }
}

fn knob(name: &str) -> &'static str {
    KNOBS
        .iter()
        .find(|k| k.name == name)
        .map(|k| k.name)
        .unwrap_or("server")
}

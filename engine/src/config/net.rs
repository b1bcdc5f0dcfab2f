//! [net] section: how the io_uring backend accepts, receives and sends, and how it reads
//! replay bytes for HTTP. Each knob names the kernel constant it maps to and the first
//! release that has it; what the running kernel lacks is found when the workers set up
//! (probe + first use) and reported as unsupported, never dropped silently.

use super::{
    choice_name, parse_bool, parse_bytes, parse_choice, parse_num, Config, ConfigError, Knob,
    Section,
};

/// How connections are accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptMode {
    /// One ACCEPT SQE per connection.
    Single,
    /// One multishot ACCEPT per listener for its lifetime, re-armed when it ends.
    Multishot,
}
pub const ACCEPT_CHOICES: &[(&str, AcceptMode)] = &[
    ("single", AcceptMode::Single),
    ("multishot", AcceptMode::Multishot),
];

/// How listening sockets are spread over workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listeners {
    /// One SO_REUSEPORT listener per worker and port: the kernel spreads connections.
    Reuseport,
    /// One listener per port on worker 0, which hands accepted connections round-robin
    /// to the other workers (over their rings: a channel plus an eventfd/MSG_RING wake).
    Acceptor,
}
pub const LISTENERS_CHOICES: &[(&str, Listeners)] = &[
    ("reuseport", Listeners::Reuseport),
    ("acceptor", Listeners::Acceptor),
];

/// How bytes are received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvMode {
    /// One RECV SQE at a time per connection, into the connection's own buffer.
    Single,
    /// One multishot RECV per connection, buffers picked by the kernel from a
    /// provided-buffer ring shared by the worker's connections.
    Multishot,
}
pub const RECV_CHOICES: &[(&str, RecvMode)] = &[
    ("single", RecvMode::Single),
    ("multishot", RecvMode::Multishot),
];

/// How HTTP response bodies are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendMode {
    /// IORING_OP_SEND from a user buffer filled by a READ.
    Send,
    /// IORING_OP_SEND_ZC for sends of at least `send-zc-min-bytes` (SEND below it).
    SendZc,
    /// IORING_OP_SPLICE file -> pipe -> socket (no user-space copy; page cache only).
    Splice,
}
pub const SEND_CHOICES: &[(&str, SendMode)] = &[
    ("send", SendMode::Send),
    ("send-zc", SendMode::SendZc),
    ("splice", SendMode::Splice),
];

/// How replay bytes are read for HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServeRead {
    /// Buffered READ through the page cache (hot replays; required for splice).
    PageCache,
    /// O_DIRECT READ (READ_FIXED when the file section registers buffers) in aligned
    /// chunks: cold replays without polluting the page cache.
    Direct,
}
pub const SERVE_READ_CHOICES: &[(&str, ServeRead)] = &[
    ("page-cache", ServeRead::PageCache),
    ("direct", ServeRead::Direct),
];

/// How queued output buffers of one connection go out together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendBatch {
    /// Small queued messages are copied into one buffer (up to 64 KiB), one SEND.
    Copy,
    /// One SEND with IORING_SEND_VECTORIZED over the queued buffers (an HTTP head and its
    /// first body chunk, queued acks): no copy, one SQE.
    Vectored,
}
pub const SEND_BATCH_CHOICES: &[(&str, SendBatch)] =
    &[("copy", SendBatch::Copy), ("vectored", SendBatch::Vectored)];

/// How NAPI ids are learnt for busy polling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NapiTracking {
    /// The kernel records the NAPI id of every socket the ring uses.
    Dynamic,
    /// Only ids added explicitly (IO_URING_NAPI_STATIC_ADD_ID, from SO_INCOMING_NAPI_ID of
    /// accepted sockets), 6.13+.
    Static,
}
pub const NAPI_TRACKING_CHOICES: &[(&str, NapiTracking)] = &[
    ("dynamic", NapiTracking::Dynamic),
    ("static", NapiTracking::Static),
];

/// Worker thread placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkersPin {
    None,
    /// Worker i is pinned to online CPU i mod ncpu (sched_setaffinity).
    Cores,
}
pub const WORKERS_PIN_CHOICES: &[(&str, WorkersPin)] =
    &[("none", WorkersPin::None), ("cores", WorkersPin::Cores)];

#[derive(Clone, Debug, PartialEq)]
pub struct NetConfig {
    pub accept: AcceptMode,
    pub listeners: Listeners,
    pub recv: RecvMode,
    pub recv_buf_bytes: u32,
    pub buf_ring_entries: u32,
    pub send: SendMode,
    pub send_zc_min_bytes: u32,
    pub serve_read: ServeRead,
    pub serve_chunk_bytes: u32,
    pub pipe_bytes: u32,
    pub workers_pin: WorkersPin,
    pub tcp_nodelay: bool,
    pub listen_backlog: u32,
    pub sndbuf_bytes: u32,
    pub rcvbuf_bytes: u32,
    pub worker_arena_slots: u32,
    /// Sockets as direct descriptors (registered-file table; no fd).
    pub direct_sockets: bool,
    pub recv_bundle: bool,
    pub buf_ring_inc: bool,
    pub send_batch: SendBatch,
    pub send_zc_fixed: bool,
    /// NAPI busy-poll time per wait; 0 = off.
    pub napi_busy_poll_us: u32,
    pub napi_prefer_busy_poll: bool,
    pub napi_tracking: NapiTracking,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            accept: AcceptMode::Multishot,
            listeners: Listeners::Reuseport,
            recv: RecvMode::Multishot,
            recv_buf_bytes: 16384,
            buf_ring_entries: 1024,
            send: SendMode::Send,
            send_zc_min_bytes: 16384,
            serve_read: ServeRead::PageCache,
            serve_chunk_bytes: 262144,
            pipe_bytes: 262144,
            workers_pin: WorkersPin::None,
            tcp_nodelay: true,
            listen_backlog: 1024,
            sndbuf_bytes: 0,
            rcvbuf_bytes: 0,
            worker_arena_slots: 64,
            direct_sockets: false,
            recv_bundle: false,
            buf_ring_inc: false,
            send_batch: SendBatch::Copy,
            send_zc_fixed: false,
            napi_busy_poll_us: 0,
            napi_prefer_busy_poll: false,
            napi_tracking: NapiTracking::Dynamic,
        }
    }
}

const fn k(
    name: &'static str,
    kernel: &'static str,
    since: &'static str,
    values: &'static str,
    default: &'static str,
    help: &'static str,
) -> Knob {
    Knob {
        section: "net",
        name,
        kernel,
        since,
        values,
        default,
        help,
    }
}

const KNOBS: &[Knob] = &[
    k("accept", "IORING_ACCEPT_MULTISHOT", "5.19", "single|multishot", "multishot", "Accept with one SQE per connection, or one multishot ACCEPT per listener re-armed when it ends."),
    k("listeners", "SO_REUSEPORT", "3.9", "reuseport|acceptor", "reuseport", "One SO_REUSEPORT listener per worker and port, or one acceptor (worker 0) handing connections to the workers round-robin."),
    k("recv", "IORING_RECV_MULTISHOT", "6.0", "single|multishot", "multishot", "Single-shot RECV into a per-connection buffer, or one multishot RECV per connection from a provided-buffer ring."),
    k("recv-buf-bytes", "", "", "bytes", "16384", "Receive buffer size: the per-connection buffer (recv=single) or each provided buffer (recv=multishot)."),
    k("buf-ring-entries", "IORING_REGISTER_PBUF_RING", "5.19", "power of two <= 32768", "1024", "Provided buffers per worker for multishot receive (ENOBUFS when all are held; the receive is then re-armed)."),
    k("send", "IORING_OP_SEND_ZC / IORING_OP_SPLICE", "6.0 / 5.7", "send|send-zc|splice", "send", "How HTTP bodies go out: SEND from a read buffer, SEND_ZC (two CQEs, buffer kept until the notification), or SPLICE file -> pipe -> socket."),
    k("send-zc-min-bytes", "IORING_OP_SEND_ZC", "6.0", "bytes", "16384", "With send=send-zc, sends smaller than this use plain SEND (zero-copy setup costs more than copying small sends)."),
    k("serve-read", "O_DIRECT", "", "page-cache|direct", "page-cache", "How replay bytes are read for HTTP: buffered READ through the page cache, or O_DIRECT READ(_FIXED) in aligned chunks."),
    k("serve-chunk-bytes", "", "", "bytes", "262144", "Bytes read (or spliced) per step of one HTTP stream; with serve-read=direct a multiple of 4096."),
    k("pipe-bytes", "F_SETPIPE_SZ", "2.6.35", "bytes", "262144", "Pipe size per HTTP stream for send=splice (must hold serve-chunk-bytes)."),
    k("workers-pin", "sched_setaffinity", "", "none|cores", "none", "Pin worker i to online CPU i mod ncpu, or leave placement to the scheduler."),
    k("tcp-nodelay", "TCP_NODELAY", "", "bool", "true", "Disable Nagle on accepted connections (acks and small responses go out at once)."),
    k("listen-backlog", "listen(2) backlog", "", "u32", "1024", "Accept queue length of each listener, on both backends (capped by net.core.somaxconn)."),
    k("sndbuf-bytes", "SO_SNDBUF", "", "bytes", "0", "Socket send buffer of accepted connections; 0 keeps the kernel's autotuning."),
    k("rcvbuf-bytes", "SO_RCVBUF", "", "bytes", "0", "Socket receive buffer of accepted connections; 0 keeps the kernel's autotuning."),
    k(
        "worker-arena-slots",
        "IORING_REGISTER_BUFFERS",
        "5.1",
        "u32",
        "64",
        "Aligned buffers per io_uring worker, each the larger of serve-chunk-bytes + 4 KiB and server.append-buffer-bytes + 128 KiB (one whole append), registered when register-buffers: HTTP chunks and match-file writes wait for one when all are in use. Memory is touched only as slots are used.",
    ),
    k("direct-sockets", "IORING_FILE_INDEX_ALLOC / IOSQE_FIXED_FILE", "5.19", "bool", "false", "Sockets as direct descriptors: listeners in each worker's registered-file table, connections accepted straight into it (no fd), every socket op with IOSQE_FIXED_FILE, hand-off between workers (listeners=acceptor) by MSG_RING fd passing. Socket options are set on the listeners (accepted sockets inherit them)."),
    k("recv-bundle", "IORING_RECVSEND_BUNDLE", "6.10", "bool", "false", "recv=multishot: one receive completion may fill several provided buffers (consecutive in the ring) instead of one."),
    k("buf-ring-inc", "IOU_PBUF_RING_INC", "6.12", "bool", "false", "recv=multishot: provided buffers are consumed incrementally, each receive taking only what it needs from the current buffer, so large buffers (recv-buf-bytes 64k to 1m) hold whole frames without wasting memory on small reads."),
    k("send-batch", "IORING_SEND_VECTORIZED", "6.17", "copy|vectored", "copy", "How a connection's queued output goes out together: copy small messages into one buffer for one SEND (copy), or one SEND over all queued buffers with IORING_SEND_VECTORIZED (vectored: an HTTP head with its first body chunk, a chunk head with its chunk, queued acks; no copy)."),
    k("send-zc-fixed", "IORING_RECVSEND_FIXED_BUF", "6.0", "bool", "false", "send=send-zc with register-buffers: file chunks go out with SEND_ZC from the registered arena slot they were read into (buf_index), no page pinning per send."),
    k("napi-busy-poll-us", "IORING_REGISTER_NAPI", "6.9", "u32", "0", "Busy-poll the NIC receive queues of each worker's sockets for up to this many microseconds while waiting (0 = off). Loopback has no NAPI queue: it registers but polls nothing."),
    k("napi-prefer-busy-poll", "io_uring_napi.prefer_busy_poll", "6.9", "bool", "false", "With napi-busy-poll-us: prefer busy polling over interrupts (SO_PREFER_BUSY_POLL semantics)."),
    k("napi-tracking", "IO_URING_NAPI_TRACKING_STATIC", "6.13", "dynamic|static", "dynamic", "With napi-busy-poll-us: which NAPI ids are polled: every one the ring's sockets use (dynamic), or only those added from accepted sockets' SO_INCOMING_NAPI_ID (static, 6.13)."),
];

fn bytes_u32(v: &str) -> Result<u32, String> {
    let n = parse_bytes(v)?;
    u32::try_from(n).map_err(|_| format!("{v:?} is over 4 GiB"))
}

impl Section for NetConfig {
    const NAME: &'static str = "net";
    fn knobs() -> &'static [Knob] {
        KNOBS
    }
    fn set(&mut self, name: &str, v: &str) -> Result<(), String> {
        match name {
            "accept" => self.accept = parse_choice(v, ACCEPT_CHOICES)?,
            "listeners" => self.listeners = parse_choice(v, LISTENERS_CHOICES)?,
            "recv" => self.recv = parse_choice(v, RECV_CHOICES)?,
            "recv-buf-bytes" => self.recv_buf_bytes = bytes_u32(v)?,
            "buf-ring-entries" => self.buf_ring_entries = parse_num(v)?,
            "send" => self.send = parse_choice(v, SEND_CHOICES)?,
            "send-zc-min-bytes" => self.send_zc_min_bytes = bytes_u32(v)?,
            "serve-read" => self.serve_read = parse_choice(v, SERVE_READ_CHOICES)?,
            "serve-chunk-bytes" => self.serve_chunk_bytes = bytes_u32(v)?,
            "pipe-bytes" => self.pipe_bytes = bytes_u32(v)?,
            "workers-pin" => self.workers_pin = parse_choice(v, WORKERS_PIN_CHOICES)?,
            "tcp-nodelay" => self.tcp_nodelay = parse_bool(v)?,
            "listen-backlog" => self.listen_backlog = parse_num(v)?,
            "sndbuf-bytes" => self.sndbuf_bytes = bytes_u32(v)?,
            "rcvbuf-bytes" => self.rcvbuf_bytes = bytes_u32(v)?,
            "worker-arena-slots" => self.worker_arena_slots = parse_num(v)?,
            "direct-sockets" => self.direct_sockets = parse_bool(v)?,
            "recv-bundle" => self.recv_bundle = parse_bool(v)?,
            "buf-ring-inc" => self.buf_ring_inc = parse_bool(v)?,
            "send-batch" => self.send_batch = parse_choice(v, SEND_BATCH_CHOICES)?,
            "send-zc-fixed" => self.send_zc_fixed = parse_bool(v)?,
            "napi-busy-poll-us" => self.napi_busy_poll_us = parse_num(v)?,
            "napi-prefer-busy-poll" => self.napi_prefer_busy_poll = parse_bool(v)?,
            "napi-tracking" => self.napi_tracking = parse_choice(v, NAPI_TRACKING_CHOICES)?,
            _ => return Err(format!("unknown option {name}")),
        }
        Ok(())
    }
    fn get(&self, name: &str) -> Option<String> {
        Some(match name {
            "accept" => choice_name(self.accept, ACCEPT_CHOICES).to_string(),
            "listeners" => choice_name(self.listeners, LISTENERS_CHOICES).to_string(),
            "recv" => choice_name(self.recv, RECV_CHOICES).to_string(),
            "recv-buf-bytes" => self.recv_buf_bytes.to_string(),
            "buf-ring-entries" => self.buf_ring_entries.to_string(),
            "send" => choice_name(self.send, SEND_CHOICES).to_string(),
            "send-zc-min-bytes" => self.send_zc_min_bytes.to_string(),
            "serve-read" => choice_name(self.serve_read, SERVE_READ_CHOICES).to_string(),
            "serve-chunk-bytes" => self.serve_chunk_bytes.to_string(),
            "pipe-bytes" => self.pipe_bytes.to_string(),
            "workers-pin" => choice_name(self.workers_pin, WORKERS_PIN_CHOICES).to_string(),
            "tcp-nodelay" => self.tcp_nodelay.to_string(),
            "listen-backlog" => self.listen_backlog.to_string(),
            "sndbuf-bytes" => self.sndbuf_bytes.to_string(),
            "rcvbuf-bytes" => self.rcvbuf_bytes.to_string(),
            "worker-arena-slots" => self.worker_arena_slots.to_string(),
            "direct-sockets" => self.direct_sockets.to_string(),
            "recv-bundle" => self.recv_bundle.to_string(),
            "buf-ring-inc" => self.buf_ring_inc.to_string(),
            "send-batch" => choice_name(self.send_batch, SEND_BATCH_CHOICES).to_string(),
            "send-zc-fixed" => self.send_zc_fixed.to_string(),
            "napi-busy-poll-us" => self.napi_busy_poll_us.to_string(),
            "napi-prefer-busy-poll" => self.napi_prefer_busy_poll.to_string(),
            "napi-tracking" => choice_name(self.napi_tracking, NAPI_TRACKING_CHOICES).to_string(),
            _ => return None,
        })
    }
}

/// Names the ring section may give its IOPOLL knob (the first that exists is used).
pub const RING_IOPOLL_KNOBS: &[&str] = &["ring.iopoll", "ring.setup-iopoll"];

/// Is IORING_SETUP_IOPOLL asked for in the ring section?
pub fn ring_iopoll(cfg: &Config) -> bool {
    RING_IOPOLL_KNOBS
        .iter()
        .find_map(|k| cfg.get(k))
        .map(|v| parse_bool(&v).unwrap_or(false))
        .unwrap_or(false)
}

/// Cross-option rules of this section. What depends on the running kernel (multishot
/// receive needs 6.0, SEND_ZC 6.0, buffer rings 5.19) is checked when the workers set
/// up their rings, and reported there as unsupported with the kernel's answer.
pub fn validate(cfg: &Config) -> Result<(), ConfigError> {
    let n = &cfg.net;
    // IOPOLL rings accept only read/write-type opcodes: every socket request would fail
    // with EINVAL. The io_uring server does all socket I/O on its worker rings, so it
    // refuses IOPOLL rather than run a second ring behind the user's back.
    if ring_iopoll(cfg) {
        return Err(ConfigError::new(
            &["iopoll"],
            "ring iopoll cannot serve sockets: IORING_SETUP_IOPOLL rings fail every socket request (accept, recv, send) with EINVAL; \
             turn iopoll off for `recorder serve --backend uring` (measure IOPOLL with `recorder io-bench` on a device with poll queues)",
        ));
    }
    if n.buf_ring_entries == 0
        || !n.buf_ring_entries.is_power_of_two()
        || n.buf_ring_entries > 32768
    {
        return Err(ConfigError::new(&["buf-ring-entries"], format!("buf-ring-entries must be a power of two from 1 to 32768 (IORING_REGISTER_PBUF_RING), got {}", n.buf_ring_entries)));
    }
    if n.recv_buf_bytes < 512 || n.recv_buf_bytes > (1 << 30) {
        return Err(ConfigError::new(
            &["recv-buf-bytes"],
            format!(
                "recv-buf-bytes must be between 512 and 1 GiB, got {}",
                n.recv_buf_bytes
            ),
        ));
    }
    if n.recv == RecvMode::Multishot
        && (n.buf_ring_entries as u64) * (n.recv_buf_bytes as u64) > (1u64 << 32)
    {
        return Err(ConfigError::new(
            &["buf-ring-entries", "recv-buf-bytes"],
            format!("buf-ring-entries x recv-buf-bytes = {} bytes per worker is over 4 GiB; lower one of them", n.buf_ring_entries as u64 * n.recv_buf_bytes as u64),
        ));
    }
    if n.serve_chunk_bytes < 4096 {
        return Err(ConfigError::new(
            &["serve-chunk-bytes"],
            format!(
                "serve-chunk-bytes must be at least 4096, got {}",
                n.serve_chunk_bytes
            ),
        ));
    }
    if n.send == SendMode::Splice && n.serve_read == ServeRead::Direct {
        return Err(ConfigError::new(
            &["send", "serve-read"],
            "send=splice moves page-cache pages into the pipe; it needs serve-read=page-cache (or choose send=send or send-zc with serve-read=direct)",
        ));
    }
    if n.send == SendMode::Splice && n.serve_chunk_bytes > n.pipe_bytes {
        return Err(ConfigError::new(
            &["serve-chunk-bytes", "pipe-bytes"],
            format!("with send=splice each chunk passes through the pipe: serve-chunk-bytes ({}) must not exceed pipe-bytes ({})", n.serve_chunk_bytes, n.pipe_bytes),
        ));
    }
    if n.serve_read == ServeRead::Direct && !n.serve_chunk_bytes.is_multiple_of(4096) {
        return Err(ConfigError::new(
            &["serve-read", "serve-chunk-bytes"],
            format!("serve-read=direct reads whole aligned blocks: serve-chunk-bytes must be a multiple of 4096, got {}", n.serve_chunk_bytes),
        ));
    }
    if n.pipe_bytes < 4096 {
        return Err(ConfigError::new(
            &["pipe-bytes"],
            format!(
                "pipe-bytes must be at least 4096 (one page), got {}",
                n.pipe_bytes
            ),
        ));
    }
    if n.worker_arena_slots < 4 || n.worker_arena_slots > 16384 {
        return Err(ConfigError::new(
            &["worker-arena-slots"],
            format!("worker-arena-slots must be 4..16384 (the kernel registers at most 16384 buffers), got {}", n.worker_arena_slots),
        ));
    }
    if (n.recv_bundle || n.buf_ring_inc) && n.recv != RecvMode::Multishot {
        return Err(ConfigError::new(
            &["recv-bundle", "buf-ring-inc", "recv"],
            "recv-bundle and buf-ring-inc change how multishot receive uses the provided-buffer ring: set recv=multishot (recv=single uses one buffer per connection)",
        ));
    }
    if n.send_zc_fixed && (n.send != SendMode::SendZc || !cfg.file.register_buffers) {
        return Err(ConfigError::new(
            &["send-zc-fixed", "send", "register-buffers"],
            "send-zc-fixed sends SEND_ZC from registered buffers: set send=send-zc and file.register-buffers=true, or send-zc-fixed=false",
        ));
    }
    if n.send_zc_fixed && n.send_batch == SendBatch::Vectored {
        return Err(ConfigError::new(
            &["send-zc-fixed", "send-batch"],
            "send-zc-fixed names one registered buffer per send and a vectored send spans several (the kernel refuses vectored SEND_ZC from fixed buffers): choose send-batch=copy or send-zc-fixed=false",
        ));
    }
    if n.send_batch == SendBatch::Vectored && n.send == SendMode::Splice {
        return Err(ConfigError::new(
            &["send-batch", "send"],
            "send=splice moves file bytes through a pipe, not user buffers: send-batch=vectored applies to send=send or send-zc",
        ));
    }
    if n.napi_busy_poll_us == 0
        && (n.napi_prefer_busy_poll || n.napi_tracking != NapiTracking::Dynamic)
    {
        return Err(ConfigError::new(
            &["napi-prefer-busy-poll", "napi-tracking", "napi-busy-poll-us"],
            "napi-prefer-busy-poll and napi-tracking shape NAPI busy polling, which is off: set napi-busy-poll-us above 0, or leave them at their defaults",
        ));
    }
    if n.direct_sockets && n.listeners == Listeners::Acceptor && cfg.ring.registered_fd_only {
        return Err(ConfigError::new(
            &["direct-sockets", "listeners", "registered-fd-only"],
            "listeners=acceptor hands direct sockets to other workers with MSG_RING, which names the target ring by its fd, and registered-fd-only rings have none: use listeners=reuseport, direct-sockets=false, or registered-fd-only=false",
        ));
    }
    if n.listen_backlog == 0 {
        return Err(ConfigError::new(
            &["listen-backlog"],
            "listen-backlog must be at least 1",
        ));
    }
    Ok(())
}

/// Rules that hold only for `recorder serve`: the blocking backend has no ring and uses
/// std::net, so every non-default [ring] and [net] option (but listen-backlog, which both
/// backends apply) is refused with it rather than listed as unused.
pub fn validate_serve(cfg: &Config) -> Result<(), ConfigError> {
    use super::server::Backend;
    if cfg.server.backend != Backend::Blocking {
        return Ok(());
    }
    let d = Config::default();
    for k in super::all_knobs()
        .into_iter()
        .filter(|k| k.section == "ring" || k.section == "net")
        // the listeners are bound before either backend starts, with this backlog
        .filter(|k| !(k.section == "net" && k.name == "listen-backlog"))
    {
        let key = format!("{}.{}", k.section, k.name);
        if cfg.get(&key) != d.get(&key) {
            return Err(ConfigError::new(
                &[k.name, "backend"],
                format!(
                    "{key} is an option of the io_uring backend and backend=blocking has no ring (threads with std::net and std::fs): remove it or use backend=uring"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Config {
        let mut c = Config::default();
        for (k, v) in pairs {
            c.set(k, v).unwrap();
        }
        c
    }

    #[test]
    fn defaults_validate() {
        validate(&Config::default()).unwrap();
    }

    #[test]
    fn splice_needs_page_cache() {
        let e = validate(&cfg(&[("send", "splice"), ("serve-read", "direct")])).unwrap_err();
        assert_eq!(e.knobs, vec!["send", "serve-read"]);
        assert!(e.message.contains("serve-read=page-cache"), "{e}");
        validate(&cfg(&[("send", "splice"), ("serve-read", "page-cache")])).unwrap();
    }

    #[test]
    fn splice_chunk_must_fit_the_pipe() {
        let e = validate(&cfg(&[
            ("send", "splice"),
            ("serve-chunk-bytes", "1m"),
            ("pipe-bytes", "64k"),
        ]))
        .unwrap_err();
        assert!(e.message.contains("pipe-bytes"), "{e}");
    }

    #[test]
    fn buf_ring_entries_must_be_power_of_two() {
        for bad in ["0", "1000", "65536"] {
            let e = validate(&cfg(&[("buf-ring-entries", bad)])).unwrap_err();
            assert!(e.message.contains("power of two"), "{bad}: {e}");
        }
        validate(&cfg(&[("buf-ring-entries", "32768")])).unwrap();
    }

    #[test]
    fn direct_serving_needs_aligned_chunks() {
        let e = validate(&cfg(&[
            ("serve-read", "direct"),
            ("serve-chunk-bytes", "10000"),
        ]))
        .unwrap_err();
        assert!(e.message.contains("multiple of 4096"), "{e}");
    }

    #[test]
    fn bad_values_name_the_choices() {
        let mut c = Config::default();
        let e = c.set("net.send", "sendfile").unwrap_err();
        assert!(e.message.contains("send, send-zc, splice"), "{e}");
        let e = c.set("recv-buf-bytes", "5g").unwrap_err();
        assert!(e.message.contains("4 GiB"), "{e}");
    }

    #[test]
    fn iopoll_is_refused_once_the_ring_section_has_it() {
        // The ring section owns the knob; when it exists under one of the expected
        // names, turning it on must make the server refuse.
        let Some(key) = RING_IOPOLL_KNOBS
            .iter()
            .find(|k| Config::default().get(k).is_some())
        else {
            assert!(
                super::super::RingConfig::knobs().is_empty(),
                "the ring section has knobs but none named {RING_IOPOLL_KNOBS:?}: update RING_IOPOLL_KNOBS"
            );
            return;
        };
        let e = validate(&cfg(&[(key, "true")])).unwrap_err();
        assert!(e.message.contains("EINVAL"), "{e}");
    }
}

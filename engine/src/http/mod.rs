//! HTTP/1.1 for replay serving, sans-IO: an incremental request parser
//! ([`parse_request`], pipelining-safe: it consumes exactly one request), the router
//! ([`route`]) that turns a request into a [`Response`] plan, and the response builders.
//! The backend sends `Response::head`, then the body the plan names (bytes, a file range
//! or a live tail via [`LiveTail`]), and closes when `Response::close` is set.
//!
//! Routes: `GET|HEAD /matches` (JSON list), `/matches/{id}` (the replay: sealed with
//! Content-Length, ETag, Accept-Ranges, 206/416; live: chunked from the start following
//! the live tail, `?delay_ms=N`), `/matches/{id}/index` (keyframe index, JSON),
//! `/metrics` (Prometheus text).

use crate::protocol::{self, ErrorCode};
use crate::server::registry::{MatchInfo, MatchShared, Phase, Registry};
use crate::storage::{format, IndexEntry};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Other,
}

/// One parsed request head.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: Method,
    pub method_text: String,
    pub path: String,
    pub query: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub keep_alive: bool,
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub if_none_match: Option<String>,
}

/// A request that cannot be served; the connection is closed after the answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub text: String,
}

fn herr(status: u16, text: impl Into<String>) -> HttpError {
    HttpError {
        status,
        text: text.into(),
    }
}

/// Parses one request from the front of `buf`. `Ok(None)`: incomplete, read more (unless
/// `buf` already holds `max_head` bytes: then 431). `Ok(Some((req, consumed)))`: one whole
/// request (head and any Content-Length body, which is skipped). Errors are answered with
/// their status and the connection closed.
pub fn parse_request(buf: &[u8], max_head: usize) -> Result<Option<(Request, usize)>, HttpError> {
    // tolerate empty lines before a request (RFC 9112 2.2)
    let mut start = 0;
    while start < buf.len() && (buf[start] == b'\r' || buf[start] == b'\n') {
        start += 1;
        if start > 64 {
            return Err(herr(400, "too many empty lines before the request"));
        }
    }
    let b = &buf[start..];
    let Some(end) = find_head_end(b) else {
        if b.len() >= max_head {
            return Err(herr(
                431,
                format!("request head exceeds {max_head} bytes (http-max-request-bytes)"),
            ));
        }
        return Ok(None);
    };
    if end > max_head {
        return Err(herr(
            431,
            format!("request head exceeds {max_head} bytes (http-max-request-bytes)"),
        ));
    }
    let head = std::str::from_utf8(&b[..end])
        .map_err(|_| herr(400, "request head is not valid UTF-8/ASCII"))?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (m, target, ver) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) if !m.is_empty() && !t.is_empty() => (m, t, v),
        _ => {
            return Err(herr(
                400,
                format!("malformed request line {:?}", truncate(line, 80)),
            ))
        }
    };
    if !m
        .bytes()
        .all(|c| c.is_ascii_uppercase() || c == b'-' || c == b'_')
    {
        return Err(herr(400, format!("malformed method {:?}", truncate(m, 20))));
    }
    let minor = match ver {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        v if v.starts_with("HTTP/") => {
            return Err(herr(505, format!("{v} is not supported; use HTTP/1.1")))
        }
        _ => {
            return Err(herr(
                400,
                format!("malformed request line {:?}", truncate(line, 80)),
            ))
        }
    };
    if !target.starts_with('/') || target.bytes().any(|c| c <= b' ' || c == 0x7f) {
        return Err(herr(
            400,
            format!(
                "request target {:?} is not an absolute path",
                truncate(target, 80)
            ),
        ));
    }
    let method = match m {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => Method::Other,
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };
    let mut req = Request {
        method,
        method_text: m.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        minor,
        keep_alive: minor == 1,
        range: None,
        if_range: None,
        if_none_match: None,
    };
    let mut host = false;
    let mut content_length: Option<u64> = None;
    for l in lines {
        if l.is_empty() {
            continue;
        }
        if l.starts_with(' ') || l.starts_with('\t') {
            return Err(herr(400, "obsolete header line folding is not accepted"));
        }
        let Some((name, value)) = l.split_once(':') else {
            return Err(herr(
                400,
                format!("header line {:?} has no ':'", truncate(l, 80)),
            ));
        };
        if name.is_empty()
            || name
                .bytes()
                .any(|c| !(c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)))
        {
            return Err(herr(
                400,
                format!("malformed header name {:?}", truncate(name, 40)),
            ));
        }
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        match name.to_ascii_lowercase().as_str() {
            "host" => {
                if host {
                    return Err(herr(400, "more than one Host header"));
                }
                host = true;
            }
            "connection" => {
                for t in value.split(',').map(|t| t.trim().to_ascii_lowercase()) {
                    if t == "close" {
                        req.keep_alive = false;
                    } else if t == "keep-alive" && minor == 0 {
                        req.keep_alive = true;
                    }
                }
            }
            "content-length" => {
                let n: u64 = value
                    .parse()
                    .map_err(|_| herr(400, format!("Content-Length {value:?} is not a number")))?;
                if content_length.is_some_and(|c| c != n) {
                    return Err(herr(400, "conflicting Content-Length headers"));
                }
                content_length = Some(n);
            }
            "transfer-encoding" => {
                return Err(herr(
                    501,
                    "request bodies with Transfer-Encoding are not accepted",
                ))
            }
            "range" => req.range = Some(value.to_string()),
            "if-range" => req.if_range = Some(value.to_string()),
            "if-none-match" => req.if_none_match = Some(value.to_string()),
            _ => {}
        }
    }
    if minor == 1 && !host {
        return Err(herr(400, "HTTP/1.1 request without a Host header"));
    }
    let body = content_length.unwrap_or(0);
    if body > max_head as u64 {
        return Err(herr(
            413,
            format!("request body of {body} bytes is not accepted"),
        ));
    }
    let total = start + end + body as usize;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((req, total)))
}

/// Index just past the blank line ending the head (CRLFCRLF or LFLF).
fn find_head_end(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\n' {
            if b.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if b.get(i + 1) == Some(&b'\r') && b.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

pub fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Content Too Large",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// A response head. `len`: Content-Length, or None for chunked.
pub fn head(status: u16, headers: &[(&str, &str)], len: Option<u64>, keep_alive: bool) -> Vec<u8> {
    let mut h = format!(
        "HTTP/1.1 {status} {}\r\nServer: recorder\r\n",
        status_text(status)
    );
    for (k, v) in headers {
        let _ = write!(h, "{k}: {v}\r\n");
    }
    match len {
        Some(n) => {
            let _ = write!(h, "Content-Length: {n}\r\n");
        }
        None => h.push_str("Transfer-Encoding: chunked\r\n"),
    }
    h.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    h.into_bytes()
}

/// What to send for one request.
pub enum Body {
    None,
    Bytes(Vec<u8>),
    /// `len` bytes of the sealed replay `file` (already open, so retention deleting
    /// the path after the head was decided cannot cut the body short) from `offset`.
    File {
        file: std::fs::File,
        offset: u64,
        len: u64,
    },
    /// A live match, chunked from byte 0 following the tail (see [`LiveTail`]).
    Live(LiveTail),
}

pub struct Response {
    pub status: u16,
    pub head: Vec<u8>,
    pub body: Body,
    /// Close the connection after this response.
    pub close: bool,
}

impl Response {
    fn simple(
        status: u16,
        text: &str,
        keep_alive: bool,
        head_only: bool,
        extra: &[(&str, &str)],
    ) -> Response {
        let body = format!("{text}\n").into_bytes();
        let mut hs: Vec<(&str, &str)> = vec![("Content-Type", "text/plain; charset=utf-8")];
        hs.extend_from_slice(extra);
        Response {
            status,
            head: head(status, &hs, Some(body.len() as u64), keep_alive),
            body: if head_only {
                Body::None
            } else {
                Body::Bytes(body)
            },
            close: !keep_alive,
        }
    }
    fn json(v: &serde_json::Value, keep_alive: bool, head_only: bool) -> Response {
        let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
        body.push(b'\n');
        Response {
            status: 200,
            head: head(
                200,
                &[
                    ("Content-Type", "application/json"),
                    ("Cache-Control", "no-cache"),
                ],
                Some(body.len() as u64),
                keep_alive,
            ),
            body: if head_only {
                Body::None
            } else {
                Body::Bytes(body)
            },
            close: !keep_alive,
        }
    }
}

/// The answer to a request that failed to parse (always closes).
pub fn error_response(e: &HttpError) -> Response {
    Response::simple(e.status, &e.text, false, false, &[])
}

/// A live download in progress: sends everything readable (or readable `delay` ago),
/// waits for growth, ends with the final chunk once the match is sealed and all its bytes
/// went out. Backend-independent: the backend reads `next_range()` from the file, sends
/// it as a chunk (`chunk_head`, bytes, `\r\n`), calls `sent()`, and when `next_range()` is
/// None either finishes (`is_done`) or waits (for `MatchShared::version` to change or
/// until `retry_at()`).
pub struct LiveTail {
    pub shared: Arc<MatchShared>,
    pub part_path: PathBuf,
    pub sealed_path: PathBuf,
    pub delay: Duration,
    pub sent: u64,
    pub max_chunk: u64,
}

impl LiveTail {
    /// Bytes that may go out now: [sent, end).
    pub fn next_range(&self, now: Instant) -> Option<(u64, u64)> {
        let end = self.limit(now);
        (end > self.sent).then(|| (self.sent, end.min(self.sent + self.max_chunk)))
    }
    fn limit(&self, now: Instant) -> u64 {
        if self.delay.is_zero() {
            self.shared.info().bytes
        } else {
            match now.checked_sub(self.delay) {
                Some(t) => self.shared.bytes_at(t),
                None => 0,
            }
        }
    }
    pub fn sent(&mut self, n: u64) {
        self.sent += n;
    }
    /// True when the match is sealed and every byte went out: send the last chunk.
    pub fn is_done(&self, now: Instant) -> bool {
        let i = self.shared.info();
        i.phase == Phase::Sealed && self.sent >= i.bytes && self.limit(now) <= self.sent
    }
    /// With a delay, data becomes sendable as time passes: when to look again.
    pub fn retry_at(&self, now: Instant) -> Option<Instant> {
        (!self.delay.is_zero()).then(|| now + Duration::from_millis(20))
    }
    /// The file to read: the in-progress one, or the sealed one once renamed. An fd opened
    /// on the in-progress file stays valid across the rename.
    pub fn open(&self) -> std::io::Result<std::fs::File> {
        std::fs::File::open(&self.part_path).or_else(|_| std::fs::File::open(&self.sealed_path))
    }
}

/// Chunk header for `n` bytes.
pub fn chunk_head(n: u64) -> Vec<u8> {
    format!("{n:x}\r\n").into_bytes()
}
pub const CHUNK_END: &[u8] = b"0\r\n\r\n";

/// Turns one request into a response plan.
pub fn route(req: &Request, reg: &Registry) -> Response {
    Metrics_add(reg, 1);
    let ka = req.keep_alive && !reg.shutting_down();
    let head_only = req.method == Method::Head;
    if req.method == Method::Other {
        return Response::simple(
            405,
            &format!("method {} is not allowed; use GET or HEAD", req.method_text),
            ka,
            false,
            &[("Allow", "GET, HEAD")],
        );
    }
    let path = match percent_decode(&req.path) {
        Some(p) => p,
        None => {
            return Response::simple(
                400,
                "malformed percent-encoding in the path",
                false,
                head_only,
                &[],
            )
        }
    };
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match segs.as_slice() {
        ["matches"] => list_response(reg, ka, head_only),
        ["metrics"] => {
            let body = metrics_text(reg).into_bytes();
            Response {
                status: 200,
                head: head(
                    200,
                    &[("Content-Type", "text/plain; version=0.0.4")],
                    Some(body.len() as u64),
                    ka,
                ),
                body: if head_only {
                    Body::None
                } else {
                    Body::Bytes(body)
                },
                close: !ka,
            }
        }
        ["matches", id] | ["matches", id, "index"] => {
            if let Err(e) = protocol::validate_match_id(id) {
                return Response::simple(400, &e.text, ka, head_only, &[]);
            }
            let Some(m) = reg.get(id) else {
                if reg.is_expired(id) {
                    let text = format!("match {id} has expired and was deleted (retention-s)");
                    return Response::simple(410, &text, ka, head_only, &[]);
                }
                return Response::simple(
                    404,
                    &format!("no match {id} is recorded or being recorded here"),
                    ka,
                    head_only,
                    &[],
                );
            };
            if segs.len() == 3 {
                index_response(reg, &m, ka, head_only)
            } else {
                replay_response(req, reg, m, ka, head_only)
            }
        }
        _ => Response::simple(
            404,
            &format!("no such resource {:?}; try /matches", truncate(&path, 100)),
            ka,
            head_only,
            &[],
        ),
    }
}

#[allow(non_snake_case)]
fn Metrics_add(reg: &Registry, n: u64) {
    reg.metrics.http_requests.fetch_add(n, Ordering::Relaxed);
}

fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn info_json(i: &MatchInfo) -> serde_json::Value {
    let s = &i.stats;
    serde_json::json!({
        "id": i.id,
        "state": i.phase.name(),
        "bytes": i.bytes,
        "frames": s.frame_count,
        "last_seq": s.last_seq,
        "first_tick": if s.frame_count > 0 { Some(s.first_tick) } else { None },
        "last_tick": if s.frame_count > 0 { Some(s.last_tick) } else { None },
        "payload_bytes": s.payload_bytes,
        "start_unix_ms": s.created_unix_us / 1000,
        "end_unix_ms": if i.phase == Phase::Sealed { Some(i.sealed_unix_us / 1000) } else { None },
        "writer_connected": i.writer,
    })
}

fn list_response(reg: &Registry, ka: bool, head_only: bool) -> Response {
    let v: Vec<serde_json::Value> = reg.list().iter().map(info_json).collect();
    Response::json(&serde_json::json!({ "matches": v }), ka, head_only)
}

fn index_response(reg: &Registry, m: &MatchShared, ka: bool, head_only: bool) -> Response {
    let i = m.info();
    let entries: Result<Vec<IndexEntry>, String> = if i.phase == Phase::Sealed {
        read_sealed_index(&reg.paths.sealed_path(&i.id), i.bytes)
    } else {
        Ok(m.live_index())
    };
    match entries {
        Err(e) => Response::simple(
            500,
            &format!("could not read the index of match {}: {e}", i.id),
            false,
            head_only,
            &[],
        ),
        Ok(entries) => {
            let mut v = info_json(&i);
            v["keyframes"] = serde_json::to_value(entries).unwrap_or_default();
            Response::json(&v, ka, head_only)
        }
    }
}

/// Reads the keyframe index of a sealed replay of `len` bytes.
pub fn read_sealed_index(path: &std::path::Path, len: u64) -> Result<Vec<IndexEntry>, String> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut t = [0u8; format::TRAILER_BYTES];
    let toff = len.checked_sub(t.len() as u64).ok_or("file too short")?;
    f.read_exact_at(&mut t, toff).map_err(|e| e.to_string())?;
    let tr = format::parse_trailer(&t, toff).map_err(|e| e.to_string())?;
    let n = (toff
        .checked_sub(tr.index_offset)
        .ok_or("bad index offset")?) as usize;
    let mut b = vec![0u8; n];
    f.read_exact_at(&mut b, tr.index_offset)
        .map_err(|e| e.to_string())?;
    format::parse_index(&b, tr.index_offset).map_err(|e| e.to_string())
}

/// A parsed `Range` header against a representation of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeSpec {
    /// No (usable) range: send everything.
    Full,
    /// Inclusive first..=last.
    Part(u64, u64),
    Unsatisfiable,
}

/// Parses a single-range `bytes=` header. Syntactically invalid or multi-range headers are
/// ignored (RFC 9110 allows serving the whole representation).
pub fn parse_range(h: &str, len: u64) -> RangeSpec {
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeSpec::Full;
    };
    if spec.contains(',') {
        return RangeSpec::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeSpec::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let Ok(n) = b.parse::<u64>() else {
            return RangeSpec::Full;
        };
        if n == 0 || len == 0 {
            return RangeSpec::Unsatisfiable;
        }
        return RangeSpec::Part(len.saturating_sub(n), len - 1);
    }
    let Ok(first) = a.parse::<u64>() else {
        return RangeSpec::Full;
    };
    let last = if b.is_empty() {
        u64::MAX
    } else {
        match b.parse::<u64>() {
            Ok(l) if l >= first => l,
            _ => return RangeSpec::Full,
        }
    };
    if first >= len {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Part(first, last.min(len - 1))
}

fn replay_response(
    req: &Request,
    reg: &Registry,
    m: Arc<MatchShared>,
    ka: bool,
    head_only: bool,
) -> Response {
    let i = m.info();
    let mut delay = Duration::ZERO;
    for kv in req.query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if k == "delay_ms" {
            match v.parse::<u64>() {
                Ok(ms) if ms <= reg.limits.live_max_delay.as_millis() as u64 => {
                    delay = Duration::from_millis(ms)
                }
                Ok(ms) => {
                    return Response::simple(
                        400,
                        &format!(
                            "delay_ms {ms} exceeds the recorder's live-max-delay-ms of {}",
                            reg.limits.live_max_delay.as_millis()
                        ),
                        ka,
                        head_only,
                        &[],
                    )
                }
                Err(_) => {
                    return Response::simple(
                        400,
                        &format!("delay_ms {v:?} is not a whole number of milliseconds"),
                        ka,
                        head_only,
                        &[],
                    )
                }
            }
        }
    }
    if i.phase == Phase::Live {
        let h = head(
            200,
            &[
                ("Content-Type", "application/octet-stream"),
                ("Cache-Control", "no-store"),
                ("X-Match-State", "live"),
            ],
            None,
            ka,
        );
        return Response {
            status: 200,
            head: h,
            body: if head_only {
                Body::None
            } else {
                Body::Live(LiveTail {
                    part_path: reg.paths.part_path(&i.id),
                    sealed_path: reg.paths.sealed_path(&i.id),
                    shared: m,
                    delay,
                    sent: 0,
                    max_chunk: 256 << 10,
                })
            },
            close: !ka,
        };
    }
    let etag = i.etag.clone().unwrap_or_default();
    let len = i.bytes;
    if let Some(inm) = &req.if_none_match {
        if inm.trim() == "*"
            || inm
                .split(',')
                .any(|t| t.trim().trim_start_matches("W/") == etag)
        {
            return Response {
                status: 304,
                head: head_304(&etag, ka),
                body: Body::None,
                close: !ka,
            };
        }
    }
    let mut range = match &req.range {
        Some(r) => parse_range(r, len),
        None => RangeSpec::Full,
    };
    if req.if_range.as_deref().is_some_and(|ir| ir.trim() != etag) {
        range = RangeSpec::Full;
    }
    let path = reg.paths.sealed_path(&i.id);
    // Open before answering: a replay removed by retention between the listing and
    // now is gone (410), never a 200 whose body cannot follow.
    let file = if head_only || matches!(range, RangeSpec::Unsatisfiable) {
        None
    } else {
        match std::fs::File::open(&path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Response::simple(
                    410,
                    &format!("match {} has expired and its replay was deleted", i.id),
                    ka,
                    head_only,
                    &[],
                );
            }
            Err(e) => {
                return Response::simple(
                    500,
                    &format!("cannot open the replay: {e}"),
                    ka,
                    head_only,
                    &[],
                );
            }
        }
    };
    let common = [
        ("Content-Type", "application/octet-stream"),
        ("Accept-Ranges", "bytes"),
        ("ETag", etag.as_str()),
        ("Cache-Control", "public, max-age=31536000, immutable"),
        ("X-Match-State", "sealed"),
    ];
    match range {
        RangeSpec::Full => Response {
            status: 200,
            head: head(200, &common, Some(len), ka),
            body: match file {
                None => Body::None,
                Some(file) => Body::File {
                    file,
                    offset: 0,
                    len,
                },
            },
            close: !ka,
        },
        RangeSpec::Part(a, b) => {
            let cr = format!("bytes {a}-{b}/{len}");
            let mut hs = common.to_vec();
            hs.push(("Content-Range", cr.as_str()));
            Response {
                status: 206,
                head: head(206, &hs, Some(b - a + 1), ka),
                body: match file {
                    None => Body::None,
                    Some(file) => Body::File {
                        file,
                        offset: a,
                        len: b - a + 1,
                    },
                },
                close: !ka,
            }
        }
        RangeSpec::Unsatisfiable => {
            let cr = format!("bytes */{len}");
            Response::simple(
                416,
                &format!("range not satisfiable: the replay has {len} bytes"),
                ka,
                head_only,
                &[("Content-Range", cr.as_str()), ("Accept-Ranges", "bytes")],
            )
        }
    }
}

fn head_304(etag: &str, ka: bool) -> Vec<u8> {
    let mut h = format!(
        "HTTP/1.1 304 Not Modified\r\nServer: recorder\r\nETag: {etag}\r\nAccept-Ranges: bytes\r\n"
    );
    h.push_str(if ka {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    h.into_bytes()
}

/// Prometheus text exposition of the registry's counters.
pub fn metrics_text(reg: &Registry) -> String {
    let m = &reg.metrics;
    let g = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let mut s = String::new();
    let mut put = |name: &str, kind: &str, help: &str, v: u64| {
        let _ = write!(
            s,
            "# HELP recorder_{name} {help}\n# TYPE recorder_{name} {kind}\nrecorder_{name} {v}\n"
        );
    };
    let list = reg.list();
    let live = list.iter().filter(|i| i.phase == Phase::Live).count() as u64;
    put("matches_live", "gauge", "Matches in progress.", live);
    put(
        "matches_sealed",
        "gauge",
        "Sealed replays in the store.",
        list.len() as u64 - live,
    );
    put(
        "matches_started_total",
        "counter",
        "New matches started.",
        g(&m.matches_started),
    );
    put(
        "matches_resumed_total",
        "counter",
        "Writer resumes.",
        g(&m.matches_resumed),
    );
    put(
        "matches_sealed_total",
        "counter",
        "Matches sealed since start.",
        g(&m.matches_sealed),
    );
    put("frames_total", "counter", "Frames stored.", g(&m.frames));
    put(
        "frames_resent_total",
        "counter",
        "Resent frames ignored.",
        g(&m.resent_frames),
    );
    put(
        "payload_bytes_total",
        "counter",
        "Frame payload bytes stored.",
        g(&m.payload_bytes),
    );
    put("acks_total", "counter", "ACK messages sent.", g(&m.acks));
    let (enters, cqes) = crate::sys::ring::process_counters();
    put(
        "uring_enter_calls_total",
        "counter",
        "io_uring_enter system calls made by all rings of the process (0 for the blocking backend).",
        enters,
    );
    put(
        "uring_completions_total",
        "counter",
        "Completions reaped from all rings of the process; divided by uring_enter_calls_total it is I/Os per system call.",
        cqes,
    );
    put(
        "file_writes_total",
        "counter",
        "Writes to replay files.",
        g(&m.writes),
    );
    put(
        "file_write_bytes_total",
        "counter",
        "Bytes written to replay files (with O_DIRECT padding and tail rewrites).",
        g(&m.write_bytes),
    );
    put(
        "file_syncs_total",
        "counter",
        "fdatasync calls on replay files.",
        g(&m.syncs),
    );
    put(
        "ds_connections",
        "gauge",
        "Open DS connections.",
        reg.ds_connections() as u64,
    );
    put(
        "ds_connections_total",
        "counter",
        "DS connections accepted.",
        g(&m.ds_connections),
    );
    put(
        "http_connections",
        "gauge",
        "Open HTTP connections.",
        reg.http_connections() as u64,
    );
    put(
        "http_requests_total",
        "counter",
        "HTTP requests.",
        g(&m.http_requests),
    );
    put(
        "http_response_bytes_total",
        "counter",
        "HTTP body bytes sent.",
        g(&m.http_bytes),
    );
    put(
        "http_errors_total",
        "counter",
        "Malformed or timed-out HTTP requests.",
        g(&m.http_errors),
    );
    s.push_str("# HELP recorder_ds_errors_total ERROR messages sent to DS, by code.\n# TYPE recorder_ds_errors_total counter\n");
    for c in ErrorCode::ALL {
        let _ = writeln!(
            s,
            "recorder_ds_errors_total{{code=\"{}\"}} {}",
            c.name(),
            m.errors(c)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pipelined_requests_one_at_a_time() {
        let two = b"GET /matches HTTP/1.1\r\nHost: x\r\n\r\nHEAD /matches/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let (r, n) = parse_request(two, 8192).unwrap().unwrap();
        assert_eq!(
            (r.method, r.path.as_str(), r.keep_alive),
            (Method::Get, "/matches", true)
        );
        let (r2, n2) = parse_request(&two[n..], 8192).unwrap().unwrap();
        assert_eq!(
            (r2.method, r2.path.as_str(), r2.keep_alive),
            (Method::Head, "/matches/a", false)
        );
        assert_eq!(n + n2, two.len());
        for cut in 0..n {
            assert!(
                parse_request(&two[..cut], 8192).unwrap().is_none(),
                "prefix {cut}"
            );
        }
    }

    #[test]
    fn malformed_requests_are_named() {
        assert_eq!(
            parse_request(b"GARBAGE\r\n\r\n", 8192).unwrap_err().status,
            400
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\n\r\n", 8192)
                .unwrap_err()
                .status,
            400
        ); // no Host
        assert_eq!(
            parse_request(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 8192)
                .unwrap_err()
                .status,
            505
        );
        assert_eq!(
            parse_request(b"GET x HTTP/1.1\r\nHost: x\r\n\r\n", 8192)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", 8192)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            parse_request(
                b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                8192
            )
            .unwrap_err()
            .status,
            501
        );
        let big = format!("GET /{} HTTP/1.1\r\n", "a".repeat(9000));
        assert_eq!(parse_request(big.as_bytes(), 8192).unwrap_err().status, 431);
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeSpec::Part(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), RangeSpec::Part(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), RangeSpec::Part(90, 99));
        assert_eq!(parse_range("bytes=-1000", 100), RangeSpec::Part(0, 99));
        assert_eq!(parse_range("bytes=50-1000", 100), RangeSpec::Part(50, 99));
        assert_eq!(parse_range("bytes=100-", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-2", 100), RangeSpec::Full);
        assert_eq!(parse_range("items=1-2", 100), RangeSpec::Full);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeSpec::Full);
    }
}

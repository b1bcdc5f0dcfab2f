//! Test support: a small blocking DS client and a minimal HTTP/1.1 client, used by the
//! integration tests and usable by the harness for checks. Not a load generator.

use crate::protocol::{self, AckMode, ErrorCode, Msg};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A message from the recorder, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Welcome {
        ack_mode: AckMode,
        last_seq: u64,
        max_frame_bytes: u32,
    },
    Ack(u64),
    Sealed {
        last_seq: u64,
        file_bytes: u64,
    },
    Error {
        code: Option<ErrorCode>,
        text: String,
    },
    /// The recorder closed the connection.
    Closed,
}

impl Reply {
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            Reply::Error { code, .. } => *code,
            _ => None,
        }
    }
}

/// A blocking DS connection.
pub struct DsClient {
    pub stream: TcpStream,
    inbuf: Vec<u8>,
    /// Highest cumulative ACK seen.
    pub acked: u64,
    out: Vec<u8>,
}

impl DsClient {
    pub fn connect(addr: SocketAddr) -> io::Result<DsClient> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        // a server that stops reading must not hang a test in write_all
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        Ok(DsClient {
            stream,
            inbuf: Vec::new(),
            acked: 0,
            out: Vec::new(),
        })
    }

    pub fn send_raw(&mut self, b: &[u8]) -> io::Result<()> {
        self.stream.write_all(b)
    }

    /// Closes the connection with a RST (SO_LINGER 0), the way a crashing DS goes away.
    pub fn reset(self) {
        use std::os::fd::AsRawFd;
        let _ = crate::sys::netops::sockopt::set_linger_zero(self.stream.as_raw_fd());
        drop(self);
    }

    /// Sends HELLO and returns the first reply (WELCOME or ERROR).
    pub fn hello(&mut self, match_id: &str, resume: bool, credential: &[u8]) -> io::Result<Reply> {
        let mut v = Vec::new();
        protocol::encode(
            &mut v,
            &Msg::Hello {
                version: protocol::VERSION,
                resume,
                match_id,
                credential,
            },
        );
        self.send_raw(&v)?;
        let r = self.recv(Duration::from_secs(10))?;
        if let Reply::Welcome { last_seq, .. } = r {
            self.acked = last_seq;
        }
        Ok(r)
    }

    /// Queues a frame (sent by `flush` or automatically when 64 KiB are queued).
    pub fn frame(&mut self, seq: u64, tick: u64, kind: u8, payload: &[u8]) -> io::Result<()> {
        protocol::encode_frame(&mut self.out, seq, tick, kind, payload);
        if self.out.len() >= 64 << 10 {
            self.flush()?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let o = std::mem::take(&mut self.out);
            self.stream.write_all(&o)?;
        }
        Ok(())
    }

    /// Sends END and waits for SEALED (or an ERROR), consuming ACKs.
    pub fn end(&mut self, last_seq: u64) -> io::Result<Reply> {
        self.flush()?;
        let mut v = Vec::new();
        protocol::encode(&mut v, &Msg::End { last_seq });
        self.send_raw(&v)?;
        loop {
            match self.recv(Duration::from_secs(20))? {
                Reply::Ack(_) => continue,
                r => return Ok(r),
            }
        }
    }

    /// Reads until the cumulative ACK reaches `seq`; returns the reply that stopped it
    /// (an ACK >= seq, ERROR, Closed) or a timeout error.
    pub fn wait_ack(&mut self, seq: u64, timeout: Duration) -> io::Result<Reply> {
        self.flush()?;
        let until = Instant::now() + timeout;
        loop {
            if self.acked >= seq {
                return Ok(Reply::Ack(self.acked));
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no ACK for {seq} (last {})", self.acked),
                ));
            }
            match self.recv(left)? {
                Reply::Ack(_) => {}
                r => return Ok(r),
            }
        }
    }

    /// Receives one message.
    pub fn recv(&mut self, timeout: Duration) -> io::Result<Reply> {
        let until = Instant::now() + timeout;
        let mut chunk = [0u8; 4096];
        loop {
            match protocol::decode(&self.inbuf, u32::MAX) {
                Ok(Some((m, n))) => {
                    let r = match m {
                        Msg::Welcome {
                            ack_mode,
                            last_seq,
                            max_frame_bytes,
                            ..
                        } => Reply::Welcome {
                            ack_mode,
                            last_seq,
                            max_frame_bytes,
                        },
                        Msg::Ack { seq } => {
                            assert!(
                                seq >= self.acked,
                                "ACKs must never go down: {seq} after {}",
                                self.acked
                            );
                            self.acked = seq;
                            Reply::Ack(seq)
                        }
                        Msg::Sealed {
                            last_seq,
                            file_bytes,
                        } => Reply::Sealed {
                            last_seq,
                            file_bytes,
                        },
                        Msg::Error { code, text } => Reply::Error {
                            code: ErrorCode::from_u16(code),
                            text: text.to_string(),
                        },
                        other => {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("recorder sent a client message {other:?}"),
                            ))
                        }
                    };
                    self.inbuf.drain(..n);
                    return Ok(r);
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no message from the recorder",
                ));
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(Reply::Closed),
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(Reply::Closed),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// A deterministic payload for frame `seq` of match `id` (tests compare bytes).
pub fn payload_for(id: &str, seq: u64, len: usize) -> Vec<u8> {
    let mut x = crc32c::crc32c(id.as_bytes()) as u64 ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// One HTTP response, body de-chunked.
#[derive(Clone, Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub chunked: bool,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends raw bytes and reads exactly one response (for HEAD pass `head_only`).
pub fn http_exchange(
    s: &mut TcpStream,
    request: &[u8],
    head_only: bool,
    timeout: Duration,
) -> io::Result<HttpReply> {
    s.write_all(request)?;
    read_response(s, head_only, timeout, &mut Vec::new())
}

/// `GET path` (or HEAD) with extra header lines, `Connection: close`.
pub fn http_get(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> io::Result<HttpReply> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    http_exchange(
        &mut s,
        req.as_bytes(),
        method == "HEAD",
        Duration::from_secs(30),
    )
}

/// Reads one response from `s`; `carry` holds bytes read past the previous response.
pub fn read_response(
    s: &mut TcpStream,
    head_only: bool,
    timeout: Duration,
    carry: &mut Vec<u8>,
) -> io::Result<HttpReply> {
    let until = Instant::now() + timeout;
    let mut buf = std::mem::take(carry);
    let mut fill = |buf: &mut Vec<u8>| -> io::Result<bool> {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "HTTP response timed out",
            ));
        }
        s.set_read_timeout(Some(left))?;
        let mut c = [0u8; 65536];
        match s.read(&mut c) {
            Ok(0) => Ok(false),
            Ok(n) => {
                buf.extend_from_slice(&c[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(true)
            }
            Err(e) => Err(e),
        }
    };
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if !fill(&mut buf)? {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response head",
            ));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            )
        })?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut rest = buf.split_off(head_end);
    let chunked = get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let mut body = Vec::new();
    if head_only || status == 304 {
        *carry = rest;
    } else if chunked {
        loop {
            let Some(p) = rest.windows(2).position(|w| w == b"\r\n") else {
                if !fill(&mut rest)? {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside a chunked body",
                    ));
                }
                continue;
            };
            let n =
                usize::from_str_radix(std::str::from_utf8(&rest[..p]).unwrap_or("x").trim(), 16)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            while rest.len() < p + 2 + n + 2 {
                if !fill(&mut rest)? {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside a chunk",
                    ));
                }
            }
            body.extend_from_slice(&rest[p + 2..p + 2 + n]);
            rest.drain(..p + 2 + n + 2);
            if n == 0 {
                break;
            }
        }
        *carry = rest;
    } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while rest.len() < len {
            if !fill(&mut rest)? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed after {} of {len} body bytes", rest.len()),
                ));
            }
        }
        *carry = rest.split_off(len);
        body = rest;
    } else {
        while fill(&mut rest)? {}
        body = rest;
    }
    Ok(HttpReply {
        status,
        headers,
        body,
        chunked,
    })
}

//! A small blocking HTTP/1.1 client: keep-alive, Content-Length, chunked and
//! close-delimited bodies, Range requests, streaming into a sink (no body buffering
//! unless asked). Enough for replay downloads and live tails; nothing more.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

pub fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// What a streamed request returned.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body_bytes: u64,
    /// Time from sending the request to the first body byte (or the head if no body).
    pub ttfb: Duration,
    pub total: Duration,
    /// The server keeps the connection open for another request.
    pub keep_alive: bool,
}

/// One persistent connection.
pub struct Conn {
    rd: BufReader<TcpStream>,
    addr: SocketAddr,
    host: String,
    /// A body still arriving after this instant is abandoned with [`DEADLINE`] (live tails).
    pub deadline: Option<Instant>,
}

/// Error text of a request abandoned at its deadline (the connection is then unusable).
pub const DEADLINE: &str = "deadline reached while the body was still arriving";

impl Conn {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, String> {
        let s = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let _ = s.set_nodelay(true);
        Ok(Conn {
            rd: BufReader::with_capacity(256 * 1024, s),
            addr,
            host: addr.to_string(),
            deadline: None,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// GET `path` (optionally a byte range, inclusive), body bytes passed to `sink` as they arrive.
    pub fn get(
        &mut self,
        path: &str,
        range: Option<(u64, u64)>,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<Head, String> {
        let t0 = Instant::now();
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: uring-lab-harness\r\n",
            self.host
        );
        if let Some((a, b)) = range {
            req.push_str(&format!("Range: bytes={a}-{b}\r\n"));
        }
        req.push_str("\r\n");
        self.rd
            .get_mut()
            .write_all(req.as_bytes())
            .map_err(|e| format!("sending request for {path}: {e}"))?;
        let mut line = String::new();
        self.read_line(&mut line, path)?;
        let mut parts = line.trim_end().splitn(3, ' ');
        let version = parts.next().unwrap_or("").to_string();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{path}: malformed status line {:?}", line.trim_end()))?;
        if !version.starts_with("HTTP/1.") {
            return Err(format!(
                "{path}: not an HTTP/1.x response: {:?}",
                line.trim_end()
            ));
        }
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.read_line(&mut line, path)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l
                .split_once(':')
                .ok_or_else(|| format!("{path}: malformed header line {l:?}"))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let mut ttfb = t0.elapsed();
        let conn_close = header(&headers, "connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
            || version.as_str() == "HTTP/1.0";
        let chunked = header(&headers, "transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let clen = header(&headers, "content-length").and_then(|v| v.parse::<u64>().ok());
        let mut total = 0u64;
        let mut first = true;
        let mut buf = vec![0u8; 64 * 1024];
        let note_first = |ttfb: &mut Duration, first: &mut bool| {
            if *first {
                *ttfb = t0.elapsed();
                *first = false;
            }
        };
        let keep_alive;
        if status == 204 || status == 304 {
            keep_alive = !conn_close;
        } else if chunked {
            loop {
                line.clear();
                self.read_line(&mut line, path)?;
                let size_txt = line.trim_end().split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(size_txt, 16)
                    .map_err(|_| format!("{path}: bad chunk size line {:?}", line.trim_end()))?;
                if size == 0 {
                    // Trailers until the empty line.
                    loop {
                        line.clear();
                        self.read_line(&mut line, path)?;
                        if line.trim_end().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let mut left = size;
                while left > 0 {
                    let n = (left as usize).min(buf.len());
                    self.rd
                        .read_exact(&mut buf[..n])
                        .map_err(|e| format!("{path}: reading chunk: {e}"))?;
                    note_first(&mut ttfb, &mut first);
                    self.check_deadline()?;
                    self.check_deadline()?;
                    sink(&buf[..n]);
                    left -= n as u64;
                    total += n as u64;
                }
                line.clear();
                self.read_line(&mut line, path)?;
                if !line.trim_end().is_empty() {
                    return Err(format!("{path}: chunk not followed by CRLF"));
                }
            }
            keep_alive = !conn_close;
        } else if let Some(len) = clen {
            let mut left = len;
            while left > 0 {
                let n = (left as usize).min(buf.len());
                let got = self
                    .rd
                    .read(&mut buf[..n])
                    .map_err(|e| format!("{path}: reading body: {e}"))?;
                if got == 0 {
                    return Err(format!(
                        "{path}: connection closed after {} of {len} body bytes",
                        len - left
                    ));
                }
                note_first(&mut ttfb, &mut first);
                self.check_deadline()?;
                sink(&buf[..got]);
                left -= got as u64;
                total += got as u64;
            }
            keep_alive = !conn_close;
        } else {
            loop {
                let got = self
                    .rd
                    .read(&mut buf)
                    .map_err(|e| format!("{path}: reading body: {e}"))?;
                if got == 0 {
                    break;
                }
                note_first(&mut ttfb, &mut first);
                self.check_deadline()?;
                sink(&buf[..got]);
                total += got as u64;
            }
            keep_alive = false;
        }
        Ok(Head {
            status,
            headers,
            body_bytes: total,
            ttfb,
            total: t0.elapsed(),
            keep_alive,
        })
    }

    fn check_deadline(&self) -> Result<(), String> {
        match self.deadline {
            Some(d) if Instant::now() >= d => Err(DEADLINE.to_string()),
            _ => Ok(()),
        }
    }

    /// Sets the socket read timeout (a live tail uses a short one so the deadline is seen).
    pub fn set_read_timeout(&self, t: Duration) {
        let _ = self.rd.get_ref().set_read_timeout(Some(t));
    }

    fn read_line(&mut self, line: &mut String, path: &str) -> Result<(), String> {
        let n = self
            .rd
            .read_line(line)
            .map_err(|e| format!("{path}: reading response: {e}"))?;
        if n == 0 {
            return Err(format!(
                "{path}: connection closed before the response was complete"
            ));
        }
        Ok(())
    }
}

/// One GET on a fresh connection, body kept in memory.
pub fn get(
    addr: SocketAddr,
    path: &str,
    range: Option<(u64, u64)>,
    timeout: Duration,
) -> Result<Response, String> {
    let mut c = Conn::connect(addr, timeout)?;
    let mut body = Vec::new();
    let h = c.get(path, range, &mut |b| body.extend_from_slice(b))?;
    Ok(Response {
        status: h.status,
        headers: h.headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve_once(resp: &'static [u8]) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            s.write_all(resp).unwrap();
        });
        a
    }

    #[test]
    fn chunked_body_is_reassembled() {
        let a = serve_once(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n");
        let r = get(a, "/x", None, Duration::from_secs(5)).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello world");
    }

    #[test]
    fn content_length_and_truncation() {
        let a = serve_once(b"HTTP/1.1 206 Partial\r\nContent-Length: 3\r\n\r\nabc");
        let r = get(a, "/x", Some((0, 2)), Duration::from_secs(5)).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (206, &b"abc"[..]));
        let a =
            serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nabc");
        let e = get(a, "/x", None, Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("closed after 3 of 10"), "{e}");
    }
}

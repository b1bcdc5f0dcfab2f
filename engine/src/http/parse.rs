//! The request head: an incremental parser ([`parse_request`], pipelining-safe: it
//! consumes exactly one request per call). Sans-IO.

use super::truncate;

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
}

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
    pub if_modified_since: Option<String>,
    pub accept: Option<String>,
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

/// Most header fields a request may have; more is answered 431.
pub const MAX_HEADERS: usize = 100;

/// Parses one request from the front of `buf` (the head by `httparse`, the rules of
/// RFC 9112 on top). `Ok(None)`: incomplete, read more (unless `buf` already holds
/// `max_head` bytes: then 431). `Ok(Some((req, consumed)))`: one whole request (head and
/// any Content-Length body, which is skipped). Errors are answered with their status and
/// the connection closed.
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
    let too_big = || {
        herr(
            431,
            format!("request head exceeds {max_head} bytes (http-max-request-bytes)"),
        )
    };
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut hs);
    let end = match r.parse(b) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if b.len() >= max_head {
                Err(too_big())
            } else {
                Ok(None)
            };
        }
        Err(e) => return Err(head_error(e, b)),
    };
    if end > max_head {
        return Err(too_big());
    }
    let (Some(m), Some(target), Some(minor)) = (r.method, r.path, r.version) else {
        return Err(head_error(httparse::Error::Token, b));
    };
    if !m
        .bytes()
        .all(|c| c.is_ascii_uppercase() || c == b'-' || c == b'_')
    {
        return Err(herr(400, format!("malformed method {:?}", truncate(m, 20))));
    }
    let method = match m {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => Method::Other,
    };
    let origin = origin_form(target, method).ok_or_else(|| {
        herr(
            400,
            format!(
                "request target {:?} is neither an absolute path nor an absolute URI",
                truncate(target, 80)
            ),
        )
    })?;
    let (path, query) = match origin.split_once('?') {
        Some((p, q)) => (p, q),
        None => (origin.as_str(), ""),
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
        if_modified_since: None,
        accept: None,
    };
    let mut host = false;
    let mut content_length: Option<u64> = None;
    for h in r.headers.iter() {
        let name = h.name;
        // values we act on must be text; others may carry obs-text and are ignored
        let text = || {
            std::str::from_utf8(h.value)
                .map(|v| v.trim_matches(|c| c == ' ' || c == '\t'))
                .map_err(|_| herr(400, format!("header {name} is not ASCII/UTF-8 text")))
        };
        match name.to_ascii_lowercase().as_str() {
            "host" => {
                if host {
                    return Err(herr(400, "more than one Host header"));
                }
                host = true;
            }
            "connection" => {
                for t in text()?.split(',').map(|t| t.trim().to_ascii_lowercase()) {
                    if t == "close" {
                        req.keep_alive = false;
                    } else if t == "keep-alive" && minor == 0 {
                        req.keep_alive = true;
                    }
                }
            }
            "content-length" => {
                let v = text()?;
                // 1*DIGIT (RFC 9110 8.6): no sign, no spaces, no list
                let n = (!v.is_empty() && v.bytes().all(|c| c.is_ascii_digit()))
                    .then(|| v.parse::<u64>().ok())
                    .flatten()
                    .ok_or_else(|| {
                        herr(
                            400,
                            format!(
                                "Content-Length {:?} is not a number of bytes",
                                truncate(v, 40)
                            ),
                        )
                    })?;
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
            "range" => req.range = Some(text()?.to_string()),
            "if-range" => req.if_range = Some(text()?.to_string()),
            "if-none-match" => req.if_none_match = Some(text()?.to_string()),
            "if-modified-since" => req.if_modified_since = Some(text()?.to_string()),
            "accept" => req.accept = Some(text()?.to_string()),
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

/// The origin-form (`/path?query`) of a request target: as it is, or taken from an
/// absolute-form target (`http://host:port/path?query`, RFC 9112 3.2.2: a server must
/// accept it; the authority is not checked against Host, the recorder serves one site).
/// `OPTIONS *` maps to `*` (answered 405). None: any other form.
fn origin_form(target: &str, method: Method) -> Option<String> {
    if target.starts_with('/') || (target == "*" && method == Method::Other) {
        return Some(target.to_string());
    }
    let (scheme, rest) = target.split_once("://")?;
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return None;
    }
    let cut = rest.find(['/', '?']).unwrap_or(rest.len());
    if cut == 0 {
        return None; // no authority
    }
    // an empty path means "/" (RFC 9110 4.2.3)
    match &rest[cut..] {
        p if p.starts_with('/') => Some(p.to_string()),
        p => Some(format!("/{p}")),
    }
}

/// The answer to a head `httparse` refused.
fn head_error(e: httparse::Error, b: &[u8]) -> HttpError {
    let line_end = b.iter().position(|&c| c == b'\n').unwrap_or(b.len());
    let line = String::from_utf8_lossy(&b[..line_end]);
    let line = line.trim_end_matches('\r');
    match e {
        httparse::Error::Version => {
            let v = line.rsplit(' ').next().unwrap_or("");
            if v.starts_with("HTTP/") {
                herr(505, format!("{} is not supported; use HTTP/1.1", truncate(v, 20)))
            } else {
                herr(400, format!("malformed request line {:?}", truncate(line, 80)))
            }
        }
        httparse::Error::Token | httparse::Error::NewLine | httparse::Error::Status => {
            herr(400, format!("malformed request line {:?}", truncate(line, 80)))
        }
        httparse::Error::HeaderName => herr(
            400,
            "malformed header line: a name that is not a token, a line without ':', or obsolete line folding",
        ),
        httparse::Error::HeaderValue => herr(
            400,
            "a header value contains a control character (NUL, CR, LF or another byte below 0x20 other than tab)",
        ),
        httparse::Error::TooManyHeaders => herr(
            431,
            format!("more than {MAX_HEADERS} header fields"),
        ),
    }
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
    fn bug7_content_length_sign_nul_and_absolute_form() {
        let st = |r: &[u8]| {
            parse_request(r, 8192)
                .map(|o| o.map(|(q, _)| q))
                .map_err(|e| e.status)
        };
        assert_eq!(
            st(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n12345").unwrap_err(),
            400
        );
        assert_eq!(
            st(b"GET / HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n").unwrap_err(),
            400
        );
        let q = st(b"GET http://example.test:8080/matches/a?delay_ms=5 HTTP/1.1\r\nHost: example.test\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (q.path.as_str(), q.query.as_str()),
            ("/matches/a", "delay_ms=5")
        );
        let q = st(b"GET https://h HTTP/1.1\r\nHost: h\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(q.path, "/");
        let q = st(b"GET http://h?x=1 HTTP/1.1\r\nHost: h\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((q.path.as_str(), q.query.as_str()), ("/", "x=1"));
        assert_eq!(
            st(b"GET ftp://h/ HTTP/1.1\r\nHost: h\r\n\r\n").unwrap_err(),
            400
        );
        assert_eq!(st(b"GET * HTTP/1.1\r\nHost: h\r\n\r\n").unwrap_err(), 400);
        assert_eq!(
            st(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")
                .unwrap()
                .unwrap()
                .method,
            Method::Other
        );
        // more header fields than MAX_HEADERS: 431
        let mut many = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(st(&many).unwrap_err(), 431);
        // LF-only line ends and obs-text in a value we ignore are fine
        assert!(st(b"GET / HTTP/1.1\nHost: x\nX-T: caf\xe9\n\n")
            .unwrap()
            .is_some());
        // obsolete line folding is refused
        assert_eq!(
            st(b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n").unwrap_err(),
            400
        );
    }
}

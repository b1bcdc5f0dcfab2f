//! Response plans ([`Response`]: head bytes, a [`Body`], close or keep alive) and the
//! head builders. Sans-IO: the backend sends `head`, then the body the plan names.

use super::{Exchange, HttpError, LiveTail};
use std::fmt::Write as _;

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
        302 => "Found",
        307 => "Temporary Redirect",
        502 => "Bad Gateway",
        504 => "Gateway Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// `Date` (RFC 9110 6.6.1: an origin server with a clock sends it in every response).
pub fn http_date_now() -> String {
    httpdate::fmt_http_date(std::time::SystemTime::now())
}

/// A response head. `len`: Content-Length, or None for chunked.
pub fn head(status: u16, headers: &[(&str, &str)], len: Option<u64>, keep_alive: bool) -> Vec<u8> {
    let mut h = format!(
        "HTTP/1.1 {status} {}\r\nServer: recorder\r\nDate: {}\r\n",
        status_text(status),
        http_date_now()
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
    /// Nothing to send yet: the object-store tier is fetching or looking up what the
    /// answer needs. Send nothing; once the ticket completes (`Ticket::on_ready`, or
    /// `Ticket::wait` on a thread that may block), call `route_after_wait` with the same
    /// request and send that answer.
    Wait(crate::tier::Ticket),
}

pub struct Response {
    pub status: u16,
    pub head: Vec<u8>,
    pub body: Body,
    /// Close the connection after this response.
    pub close: bool,
    /// Report it with `exchange.finish(...)` once the response is sent.
    pub exchange: Exchange,
}

impl Response {
    pub(crate) fn simple(
        status: u16,
        text: &str,
        keep_alive: bool,
        head_only: bool,
        extra: &[(&str, &str)],
    ) -> Response {
        let body = format!("{text}\n").into_bytes();
        let ct = "text/plain; charset=utf-8";
        Response::with_body(status, ct, body, extra, keep_alive, head_only)
    }
    /// 200 with `body` of type `content_type` and `extra` headers (HEAD: the same head,
    /// no body).
    pub(crate) fn ok(
        content_type: &str,
        body: Vec<u8>,
        extra: &[(&str, &str)],
        keep_alive: bool,
        head_only: bool,
    ) -> Response {
        Response::with_body(200, content_type, body, extra, keep_alive, head_only)
    }
    fn with_body(
        status: u16,
        content_type: &str,
        body: Vec<u8>,
        extra: &[(&str, &str)],
        keep_alive: bool,
        head_only: bool,
    ) -> Response {
        let mut hs: Vec<(&str, &str)> = vec![("Content-Type", content_type)];
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
            exchange: Exchange::default(),
        }
    }
    pub(crate) fn json(
        v: &serde_json::Value,
        extra: &[(&str, &str)],
        keep_alive: bool,
        head_only: bool,
    ) -> Response {
        let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
        body.push(b'\n');
        let mut hs = vec![("Cache-Control", "no-cache")];
        hs.extend_from_slice(extra);
        Response::ok("application/json", body, &hs, keep_alive, head_only)
    }
}

/// The answer to a request that failed to parse (always closes).
pub fn error_response(e: &HttpError) -> Response {
    let mut r = Response::simple(e.status, &e.text, false, false, &[]);
    r.exchange.status = e.status;
    r
}

/// 304 for a sealed replay: the validators and caching headers a 200 would carry
/// (RFC 9110 15.4.5), no body.
pub(crate) fn head_304(etag: &str, last_modified: &str, cache: &str, ka: bool) -> Vec<u8> {
    let mut h = format!(
        "HTTP/1.1 304 Not Modified\r\nServer: recorder\r\nDate: {}\r\nETag: {etag}\r\nLast-Modified: {last_modified}\r\nCache-Control: {cache}\r\nAccept-Ranges: bytes\r\n",
        http_date_now()
    );
    h.push_str(if ka {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    h.into_bytes()
}

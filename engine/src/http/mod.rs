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
//!
//! Files by job: [`parse`] (request head), [`route`] (endpoints), [`replay`] (a replay's
//! response), [`live`] (the live tail), [`response`] (heads and plans), `tier` (replays
//! not on local disk: the object-store tier, `crate::tier`); `/metrics` is [`crate::metrics`].

mod access;
pub mod html;
mod live;
mod parse;
mod replay;
mod response;
mod route;
mod tier;

pub use crate::metrics::render as metrics_text;
pub use access::{set_access_log, Exchange};
pub use live::{chunk_head, LiveTail, CHUNK_END};
pub use parse::{parse_request, HttpError, Method, Request};
pub use replay::{parse_range, read_sealed_index, RangeSpec};
pub use response::{error_response, head, status_text, Body, Response};
pub use route::{route, route_after_wait, TIER_WAIT_MAX};

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

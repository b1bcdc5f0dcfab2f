//! Routing: one parsed [`Request`] and the registry -> a [`Response`] plan. Add an
//! endpoint as a match arm in [`route`] and a `*_response` function in its own file.

use super::replay::{read_sealed_index, replay_response};
use super::response::Response;
use super::{html, metrics_text, tier, truncate, Exchange, Method, Request};
use crate::protocol;
use crate::server::registry::{MatchInfo, MatchShared, Metrics, Phase, Registry};
use crate::storage::IndexEntry;
use std::time::Duration;

/// Longest a blocking connection thread waits on a [`Body::Wait`](super::Body::Wait)
/// ticket before routing again (the tier's own request timeouts normally end the work
/// sooner).
pub const TIER_WAIT_MAX: Duration = Duration::from_secs(120);

/// Turns one request into a response plan; its `exchange` is stamped with the request
/// and the time (call it as soon as the head is parsed).
pub fn route(req: &Request, reg: &Registry) -> Response {
    Metrics::add(&reg.metrics.http_requests, 1);
    stamped(req, reg, false)
}

/// Routes a request again after its [`Body::Wait`](super::Body::Wait) ticket completed: the tier's work is
/// done (or failed), and this answer does not start the same work again. (Its exchange
/// is stamped now: the access log and latency histogram leave the wait out.)
pub fn route_after_wait(req: &Request, reg: &Registry) -> Response {
    stamped(req, reg, true)
}

fn stamped(req: &Request, reg: &Registry, waited: bool) -> Response {
    let t0 = std::time::Instant::now();
    let mut r = route_inner(req, reg, waited);
    r.exchange = Exchange::new(req, r.status, t0);
    r
}

fn route_inner(req: &Request, reg: &Registry, mut waited: bool) -> Response {
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
        [] => page_response(reg, ka, head_only, &[]),
        ["matches"] if html::prefers_html(req.accept.as_deref()) => {
            page_response(reg, ka, head_only, &[("Vary", "Accept")])
        }
        ["matches"] => list_response(reg, ka, head_only),
        ["metrics"] => Response::ok(
            crate::metrics::CONTENT_TYPE,
            metrics_text(reg).into_bytes(),
            &[("Cache-Control", "no-cache")],
            ka,
            head_only,
        ),
        ["matches", id] | ["matches", id, "index"] => {
            if let Err(e) = protocol::validate_match_id(id) {
                return Response::simple(400, &e.text, ka, head_only, &[]);
            }
            let mut m = reg.get(id);
            if m.is_none() && !reg.is_expired(id) {
                if let Some(t) = reg.tier.get() {
                    if let Some(r) = tier::unknown_id(req, reg, t, id, waited, ka, head_only) {
                        return r;
                    }
                    m = reg.get(id);
                    // The wait (if any) was for the lookup; fetching the bytes is new work.
                    waited = false;
                }
            }
            let Some(m) = m else {
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
                index_response(reg, &m, waited, ka, head_only)
            } else {
                replay_response(req, reg, m, waited, ka, head_only)
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
        "archived": i.archived,
        "local": i.phase == Phase::Live || i.local,
    })
}

fn list_response(reg: &Registry, ka: bool, head_only: bool) -> Response {
    let v: Vec<serde_json::Value> = reg.list().iter().map(info_json).collect();
    Response::json(
        &serde_json::json!({ "matches": v }),
        &[("Vary", "Accept")],
        ka,
        head_only,
    )
}

fn page_response(reg: &Registry, ka: bool, head_only: bool, extra: &[(&str, &str)]) -> Response {
    let now_ms = crate::storage::now_unix_us() / 1000;
    let body = html::matches_page(&reg.list(), now_ms).into_bytes();
    let mut hs = vec![("Cache-Control", "no-cache")];
    hs.extend_from_slice(extra);
    Response::ok("text/html; charset=utf-8", body, &hs, ka, head_only)
}

fn index_response(
    reg: &Registry,
    m: &MatchShared,
    waited: bool,
    ka: bool,
    head_only: bool,
) -> Response {
    let i = m.info();
    if i.phase == Phase::Sealed && i.archived && !reg.paths.sealed_path(&i.id).exists() {
        if let Some(t) = reg.tier.get() {
            if let Err(r) = tier::not_local(reg, t, &i, false, waited, ka, head_only) {
                return r;
            }
        }
    }
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
            Response::json(&v, &[], ka, head_only)
        }
    }
}

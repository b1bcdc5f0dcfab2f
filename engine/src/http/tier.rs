//! Routing for replays the local store does not hold (`crate::tier`): ids this node does
//! not know (looked up in the object store; a live match on another node is a 307 to
//! it), and archived replays whose local copy is gone (302 to a presigned URL with
//! `tier.serve=redirect`; with `proxy`, fetched into the local store, checked, and then
//! served by the ordinary file path with Range, ETag and HEAD as for any local replay).
//!
//! Nothing here waits: work on the object store is started on the tier's runtime and the
//! request answers [`Body::Wait`]; the backend routes it again once the ticket completes
//! (`route_after_wait`, which starts no new work and answers what the tier found).

use super::{Body, Request, Response};
use crate::server::registry::{MatchInfo, Metrics, Registry};
use crate::tier::{Fetch, Lookup, Ticket, Tier};
use std::sync::Arc;

fn wait(t: Ticket) -> Response {
    Response {
        status: 0,
        head: Vec::new(),
        body: Body::Wait(t),
        close: false,
        exchange: Default::default(),
    }
}

fn unavailable(text: &str, ka: bool, head_only: bool) -> Response {
    Response::simple(502, text, ka, head_only, &[])
}

/// An id the registry does not know. `None`: it is known now (found in the object
/// store): route it as usual.
pub(super) fn unknown_id(
    req: &Request,
    reg: &Registry,
    tier: &Arc<Tier>,
    id: &str,
    waited: bool,
    ka: bool,
    head_only: bool,
) -> Option<Response> {
    Some(match tier.lookup(id, waited) {
        Lookup::Found => return None,
        Lookup::Pending(t) => wait(t),
        Lookup::LiveAt(url) => {
            Metrics::add(&reg.metrics.tier_live_redirects, 1);
            let mut loc = format!("{url}/matches/{id}");
            if !req.query.is_empty() {
                loc.push('?');
                loc.push_str(&req.query);
            }
            Response::simple(
                307,
                &format!("match {id} is live on {url}"),
                ka,
                head_only,
                &[("Location", loc.as_str()), ("Cache-Control", "no-store")],
            )
        }
        Lookup::Missing => Response::simple(
            404,
            &format!("no match {id} is recorded or being recorded here or in the object store"),
            ka,
            head_only,
            &[],
        ),
        Lookup::Failed(e) => unavailable(
            &format!("cannot look match {id} up in the object store: {e}"),
            ka,
            head_only,
        ),
    })
}

/// The archived replay `i` has no local file. `Ok(file)`: serve it (fetched now);
/// `Err(resp)`: answer that (302, wait, or why it cannot be served). `redirect`: whether
/// a 302 may answer (not for the keyframe index, whose JSON comes from the bytes).
#[allow(clippy::result_large_err)] // a Response is the natural error here
pub(super) fn not_local(
    reg: &Registry,
    tier: &Arc<Tier>,
    i: &MatchInfo,
    redirect: bool,
    waited: bool,
    ka: bool,
    head_only: bool,
) -> Result<std::fs::File, Response> {
    if redirect && tier.cfg.serve == crate::config::tier::Serve::Redirect {
        return match tier.presigned_url(&i.id) {
            Ok(url) => {
                Metrics::add(&reg.metrics.tier_redirects, 1);
                Err(Response::simple(
                    302,
                    &format!("match {} is served from the object store", i.id),
                    ka,
                    head_only,
                    &[("Location", url.as_str()), ("Cache-Control", "no-store")],
                ))
            }
            Err(e) => Err(unavailable(
                &format!("cannot presign the object of match {}: {e}", i.id),
                ka,
                head_only,
            )),
        };
    }
    // Fetched by an earlier request (or arrived between the check and now).
    if let Ok(f) = std::fs::File::open(reg.paths.sealed_path(&i.id)) {
        return Ok(f);
    }
    let etag = i.etag.clone().unwrap_or_default();
    match tier.fetch(&i.id, i.bytes, &etag, waited) {
        Fetch::Pending(t) => Err(wait(t)),
        Fetch::Failed(e) => Err(unavailable(&e, ka, head_only)),
    }
}

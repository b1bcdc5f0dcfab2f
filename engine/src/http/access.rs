//! One answered request, reported by the backend when its response is complete: the
//! HTTP latency histogram (`recorder_http_request_duration_seconds`) and, with
//! `server.access-log`, one access-log line (target `recorder::access`).

use super::Request;
use crate::server::registry::Registry;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

static ACCESS_LOG: AtomicBool = AtomicBool::new(false);

/// Turns the access log on or off (`server.access-log`; `recorder serve` sets it at start).
pub fn set_access_log(on: bool) {
    ACCESS_LOG.store(on, Ordering::Relaxed);
}

/// What the access log and the histogram need of a request; carried by its
/// [`super::Response`] until the backend has sent the response.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub method: String,
    /// The request target as received (path and query), or "-" for a request that could
    /// not be parsed.
    pub target: String,
    pub status: u16,
    /// When the whole request head had been received.
    pub started: Instant,
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange {
            method: "-".into(),
            target: "-".into(),
            status: 0,
            started: Instant::now(),
        }
    }
}

impl Exchange {
    pub fn new(req: &Request, status: u16, started: Instant) -> Exchange {
        let target = if req.query.is_empty() {
            req.path.clone()
        } else {
            format!("{}?{}", req.path, req.query)
        };
        Exchange {
            method: req.method_text.clone(),
            target,
            status,
            started,
        }
    }

    /// The response is complete (`complete`: every byte was handed to the kernel; false:
    /// the connection failed or the recorder stopped first). `body_bytes`: body bytes sent;
    /// `peer`: the client's address ("-" in the log when unknown).
    pub fn finish(
        &self,
        reg: &Registry,
        peer: Option<SocketAddr>,
        body_bytes: u64,
        complete: bool,
    ) {
        let d = self.started.elapsed();
        reg.metrics.hist.http_request.observe(d.as_secs_f64());
        if ACCESS_LOG.load(Ordering::Relaxed) {
            let client = match peer {
                Some(a) => a.to_string(),
                None => "-".to_string(),
            };
            tracing::info!(
                target: crate::logging::ACCESS,
                client = %client,
                method = %self.method,
                target = %self.target,
                status = self.status,
                bytes = body_bytes,
                duration_ms = format_args!("{:.3}", d.as_secs_f64() * 1e3),
                complete,
                "{client} {} {} {} {}",
                self.method,
                self.target,
                self.status,
                body_bytes
            );
        }
    }
}

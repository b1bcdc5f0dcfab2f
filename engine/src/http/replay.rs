//! A replay: sealed (Content-Length, ETag, ranges, 304, 410 when retention deleted it)
//! or live (chunked, see [`super::LiveTail`]).

use super::response::{head, head_304, Body, Response};
use super::{Exchange, LiveTail, Request};
use crate::server::registry::{MatchShared, Phase, Registry};
use crate::storage::{format, IndexEntry};
use std::sync::Arc;
use std::time::Duration;

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

/// A sealed replay never changes.
const SEALED_CACHE: &str = "public, max-age=31536000, immutable";

pub(super) fn replay_response(
    req: &Request,
    reg: &Registry,
    m: Arc<MatchShared>,
    waited: bool,
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
            exchange: Exchange::default(),
        };
    }
    let etag = i.etag.clone().unwrap_or_default();
    let len = i.bytes;
    // sealed replays never change: the seal time is their modification time
    let sealed_s = i.sealed_unix_us / 1_000_000;
    let modified = std::time::UNIX_EPOCH + Duration::from_secs(sealed_s);
    let last_modified = httpdate::fmt_http_date(modified);
    let secs = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    // If-None-Match wins; If-Modified-Since counts only without it (RFC 9110 13.2.2)
    let not_modified = match (&req.if_none_match, &req.if_modified_since) {
        (Some(inm), _) => {
            inm.trim() == "*"
                || inm
                    .split(',')
                    .any(|t| t.trim().trim_start_matches("W/") == etag)
        }
        (None, Some(ims)) => httpdate::parse_http_date(ims).is_ok_and(|t| sealed_s <= secs(t)),
        (None, None) => false,
    };
    if not_modified {
        return Response {
            status: 304,
            head: head_304(&etag, &last_modified, SEALED_CACHE, ka),
            body: Body::None,
            close: !ka,
            exchange: Exchange::default(),
        };
    }
    let mut range = match &req.range {
        Some(r) => parse_range(r, len),
        None => RangeSpec::Full,
    };
    // If-Range: an entity tag (strong comparison) or the Last-Modified date itself
    if let Some(ir) = req.if_range.as_deref().map(str::trim) {
        let same = match httpdate::parse_http_date(ir) {
            Ok(t) => secs(t) == sealed_s,
            Err(_) => ir == etag,
        };
        if !same {
            range = RangeSpec::Full;
        }
    }
    let path = reg.paths.sealed_path(&i.id);
    // Open before answering: a replay removed by retention between the listing and
    // now is gone (410), never a 200 whose body cannot follow.
    let file = if head_only || matches!(range, RangeSpec::Unsatisfiable) {
        None
    } else {
        match std::fs::File::open(&path) {
            Ok(f) => Some(f),
            // Archived and not (or no longer) local: the tier serves it.
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && i.archived
                    && reg.tier.get().is_some() =>
            {
                let t = reg.tier.get().expect("checked");
                match super::tier::not_local(reg, t, &i, true, waited, ka, head_only) {
                    Ok(f) => Some(f),
                    Err(r) => return r,
                }
            }
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
        ("Last-Modified", last_modified.as_str()),
        ("Cache-Control", SEALED_CACHE),
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
            exchange: Exchange::default(),
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
                exchange: Exchange::default(),
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

#[cfg(test)]
mod tests {
    use super::*;

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

//! The browser page: `GET /` (and `GET /matches` when the client prefers text/html) lists
//! live and sealed matches with human-readable times and sizes and download links. One
//! self-contained document (inline CSS, no script, nothing fetched); every value escaped.

use crate::server::registry::{MatchInfo, Phase};
use std::fmt::Write as _;

/// True when `accept` ranks text/html above application/json (RFC 9110 12.5.1 q-values;
/// `*/*` and `type/*` count for both). No header, a tie, or `*/*` alone: JSON.
pub fn prefers_html(accept: Option<&str>) -> bool {
    let Some(a) = accept else { return false };
    let (mut html, mut json) = (0.0f32, 0.0f32);
    for range in a.split(',') {
        let mut parts = range.split(';');
        let mt = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match mt.as_str() {
            "text/html" => html = html.max(q + 0.002),
            "application/json" => json = json.max(q + 0.002),
            "text/*" => html = html.max(q + 0.001),
            "application/*" => json = json.max(q + 0.001),
            "*/*" => {
                html = html.max(q);
                json = json.max(q);
            }
            _ => {}
        }
    }
    // a more specific range wins over a wildcard at the same q (the small offsets)
    html > json && html > 0.002
}

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Percent-encodes everything but RFC 3986 unreserved characters (a path segment, a query
/// value). Match ids are restricted, but the page does not rely on it.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// 1536 -> "1.5 KiB".
pub fn human_bytes(n: u64) -> String {
    const U: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u < U.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", U[u])
}

/// Unix milliseconds -> "2026-12-01 08:22:10 UTC".
pub fn human_time(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // civil date from days since 1970-01-01 (H. Hinnant's algorithm)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// 3723 s -> "1 h 02 min 03 s".
pub fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{}.{} s", s, ms % 1000 / 100),
        60..=3599 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min {:02} s", s / 3600, s % 3600 / 60, s % 60),
    }
}

/// The whole page for `list` (as `Registry::list` gives it) at `now_ms`.
pub fn matches_page(list: &[MatchInfo], now_ms: u64) -> String {
    let mut live: Vec<&MatchInfo> = list.iter().filter(|i| i.phase == Phase::Live).collect();
    let mut sealed: Vec<&MatchInfo> = list.iter().filter(|i| i.phase != Phase::Live).collect();
    live.sort_by_key(|i| std::cmp::Reverse(i.stats.created_unix_us));
    sealed.sort_by_key(|i| std::cmp::Reverse(i.sealed_unix_us));
    let mut h = String::with_capacity(4096 + 600 * list.len());
    h.push_str(concat!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
        "<title>Replay recorder: matches</title>\n<style>\n",
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\n",
        "table{border-collapse:collapse;margin-bottom:2em}\n",
        "th,td{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}\n",
        "td.n{text-align:right;font-variant-numeric:tabular-nums}\n",
        ".live{color:#b00;font-weight:bold}\n</style>\n</head>\n<body>\n",
        "<h1>Replay recorder</h1>\n"
    ));
    let _ = writeln!(
        h,
        "<p>{} live, {} sealed. Times are UTC. JSON for programs: <a href=\"/matches\">/matches</a> (without <code>Accept: text/html</code>); metrics: <a href=\"/metrics\">/metrics</a>.</p>",
        live.len(),
        sealed.len()
    );
    h.push_str("<h2>Live</h2>\n");
    if live.is_empty() {
        h.push_str("<p>No match in progress.</p>\n");
    } else {
        h.push_str("<table>\n<tr><th>Match</th><th>Started</th><th>Running for</th><th>Size</th><th>Frames</th><th>DS</th><th>Links</th></tr>\n");
        for i in live {
            let id = escape(&i.id);
            let href = format!("/matches/{}", percent_encode(&i.id));
            let start_ms = i.stats.created_unix_us / 1000;
            let _ = writeln!(
                h,
                "<tr><td><span class=\"live\">&#9679;</span> {id}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td><a href=\"{href}\">watch live (from the start)</a> &middot; <a href=\"{href}/index\">index</a></td></tr>",
                human_time(start_ms),
                human_duration(now_ms.saturating_sub(start_ms)),
                human_bytes(i.bytes),
                i.stats.frame_count,
                if i.writer { "connected" } else { "disconnected" },
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("<h2>Sealed</h2>\n");
    if sealed.is_empty() {
        h.push_str("<p>No sealed replay.</p>\n");
    } else {
        h.push_str("<table>\n<tr><th>Match</th><th>Started</th><th>Ended</th><th>Length</th><th>Size</th><th>Frames</th><th>Links</th></tr>\n");
        for i in sealed {
            let id = escape(&i.id);
            let href = format!("/matches/{}", percent_encode(&i.id));
            let start_ms = i.stats.created_unix_us / 1000;
            let end_ms = i.sealed_unix_us / 1000;
            let _ = writeln!(
                h,
                "<tr><td>{id}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td><a href=\"{href}\" download=\"{}.rpl\">download</a> &middot; <a href=\"{href}/index\">index</a></td></tr>",
                human_time(start_ms),
                human_time(end_ms),
                human_duration(end_ms.saturating_sub(start_ms)),
                human_bytes(i.bytes),
                i.stats.frame_count,
                escape(&percent_encode(&i.id)),
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("</body>\n</html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation_prefers_json_unless_html_ranks_higher() {
        assert!(!prefers_html(None));
        assert!(!prefers_html(Some("*/*")));
        assert!(!prefers_html(Some("application/json")));
        assert!(!prefers_html(Some("text/html;q=0.5, application/json")));
        assert!(prefers_html(Some(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        )));
        assert!(prefers_html(Some("text/html")));
        assert!(prefers_html(Some("text/*, application/json;q=0.5")));
        assert!(!prefers_html(Some("text/html;q=0")));
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(16 << 20), "16.0 MiB");
        assert_eq!(human_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(human_time(1_796_113_965_670), "2026-12-01 08:32:45 UTC");
        assert_eq!(human_time(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(human_duration(1_500), "1.5 s");
        assert_eq!(human_duration(3_723_000), "1 h 02 min 03 s");
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}

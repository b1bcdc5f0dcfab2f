//! Issue 12 bug 7 (HTTP deviations found by probing), on both backends: `Content-Length:
//! +5` and a NUL in a header value are 400, an absolute-form target is served, every
//! response carries `Date`, sealed replays carry `Last-Modified` and honour
//! `If-Modified-Since`. And the browser page: `GET /` and `/matches` with
//! `Accept: text/html` give HTML, escaped; JSON stays the default.

mod common;
use common::*;
use std::net::TcpStream;
use std::time::Duration;

const BACKENDS: [&str; 2] = ["blocking", "uring"];

fn raw(srv: &Server, req: &[u8]) -> testkit::HttpReply {
    let mut s = TcpStream::connect(srv.http).unwrap();
    let head_only = req.starts_with(b"HEAD ");
    testkit::http_exchange(&mut s, req, head_only, Duration::from_secs(10)).unwrap()
}

fn date_ok(r: &testkit::HttpReply) {
    let d = r
        .header("date")
        .unwrap_or_else(|| panic!("no Date in a {} response: {:?}", r.status, r.headers));
    let t = httpdate::parse_http_date(d).unwrap_or_else(|e| panic!("Date {d:?}: {e}"));
    let skew = t
        .duration_since(std::time::SystemTime::now())
        .map(|d| d.as_secs())
        .or_else(|e| Ok::<u64, ()>(e.duration().as_secs()))
        .unwrap();
    assert!(skew <= 2, "Date {d} is {skew} s off");
}

#[test]
fn bug7_content_length_with_a_sign_is_400() {
    for b in BACKENDS {
        let dir = TempDir::new("cl-sign");
        let srv = spawn_server(b, dir.path(), &[]);
        for cl in ["+5", "-1", " 5 5", "5,5", "0x5", "99999999999999999999999"] {
            let req =
                format!("GET /matches HTTP/1.1\r\nHost: x\r\nContent-Length: {cl}\r\n\r\n12345");
            let r = raw(&srv, req.as_bytes());
            assert_eq!(r.status, 400, "{b}: Content-Length {cl:?}");
            assert!(
                String::from_utf8_lossy(&r.body).contains("Content-Length"),
                "{b}"
            );
            date_ok(&r);
        }
        // a plain number is still accepted (the body is skipped)
        let r = raw(
            &srv,
            b"GET /matches HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n12345",
        );
        assert_eq!(r.status, 200, "{b}");
    }
}

#[test]
fn bug7_nul_in_a_header_value_is_400() {
    for b in BACKENDS {
        let dir = TempDir::new("nul");
        let srv = spawn_server(b, dir.path(), &[]);
        for bad in [
            &b"GET /matches HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n"[..],
            b"GET /matches HTTP/1.1\r\nHost: x\0\r\n\r\n",
            b"GET /matches HTTP/1.1\r\nHost: x\r\nRange: bytes=0-\x01\r\n\r\n",
        ] {
            let r = raw(&srv, bad);
            assert_eq!(r.status, 400, "{b}: {:?}", String::from_utf8_lossy(bad));
            assert!(
                String::from_utf8_lossy(&r.body).contains("control character"),
                "{b}: {}",
                String::from_utf8_lossy(&r.body)
            );
        }
    }
}

#[test]
fn bug7_absolute_form_request_target_is_served() {
    for b in BACKENDS {
        let dir = TempDir::new("absform");
        let srv = spawn_server(b, dir.path(), &[]);
        let (sent, _) = stream_match(srv.ingest, "abs1", 5, 100);
        let req = format!(
            "GET http://{}/matches/abs1 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            srv.http, srv.http
        );
        let r = raw(&srv, req.as_bytes());
        assert_eq!(r.status, 200, "{b}");
        check_replay(&r.body, "abs1", &sent, true);
        // authority only: the path is "/" (the page); a query survives
        let r = raw(
            &srv,
            b"HEAD HTTP://example.test HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(r.status, 200, "{b}");
        assert!(r.header("content-type").unwrap().starts_with("text/html"));
        let r = raw(
            &srv,
            b"GET http://h/matches/abs1?delay_ms=x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(r.status, 400, "{b}: the query reached the route");
        // other schemes and forms stay refused
        for t in ["ftp://h/matches", "matches", "http:///matches", "*"] {
            let req = format!("GET {t} HTTP/1.1\r\nHost: h\r\n\r\n");
            assert_eq!(raw(&srv, req.as_bytes()).status, 400, "{b}: {t}");
        }
    }
}

#[test]
fn bug7_every_response_has_a_date_header() {
    for b in BACKENDS {
        let dir = TempDir::new("date");
        let srv = spawn_server(b, dir.path(), &[]);
        stream_match(srv.ingest, "d1", 5, 100);
        let mut live = testkit::DsClient::connect(srv.ingest).unwrap();
        live.hello("d2", false, b"").unwrap();
        live.frame(1, 1, 1, b"abc").unwrap();
        live.wait_ack(1, Duration::from_secs(5)).unwrap();
        let g = |p: &str, h: &[(&str, &str)]| testkit::http_get(srv.http, "GET", p, h).unwrap();
        let etag = g("/matches/d1", &[]).header("etag").unwrap().to_string();
        let mut seen = Vec::new();
        for r in [
            g("/", &[]),
            g("/matches", &[]),
            g("/matches/d1", &[]),
            g("/matches/d1", &[("Range", "bytes=0-3")]),
            g("/matches/d1", &[("Range", "bytes=99999-")]),
            g("/matches/d1", &[("If-None-Match", &etag)]),
            g("/matches/d1/index", &[]),
            g("/matches/nope", &[]),
            g("/matches/bad%20id", &[]),
            g("/metrics", &[]),
            g("/elsewhere", &[]),
            raw(&srv, b"POST /matches HTTP/1.1\r\nHost: x\r\n\r\n"),
            raw(&srv, b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"),
            raw(&srv, b"GET / HTTP/1.1\r\n\r\n"),
        ] {
            date_ok(&r);
            seen.push(r.status);
        }
        assert_eq!(
            seen,
            [200, 200, 200, 206, 416, 304, 200, 404, 400, 200, 404, 405, 505, 400],
            "{b}"
        );
        // live: chunked head with Date (read the head only, then leave)
        let r = testkit::http_get(srv.http, "HEAD", "/matches/d2", &[]).unwrap();
        assert_eq!(r.header("x-match-state"), Some("live"));
        date_ok(&r);
        live.end(1).unwrap();
    }
}

#[test]
fn bug7_sealed_replay_has_last_modified_and_if_modified_since_gives_304() {
    for b in BACKENDS {
        let dir = TempDir::new("lastmod");
        let srv = spawn_server(b, dir.path(), &[]);
        let before = std::time::SystemTime::now();
        stream_match(srv.ingest, "lm1", 5, 100);
        let g = |h: &[(&str, &str)]| testkit::http_get(srv.http, "GET", "/matches/lm1", h).unwrap();
        let full = g(&[]);
        let lm = full
            .header("last-modified")
            .expect("Last-Modified")
            .to_string();
        let t = httpdate::parse_http_date(&lm).unwrap();
        let secs =
            |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert!(
            secs(t) >= secs(before) && secs(t) <= secs(before) + 5,
            "{lm}"
        );
        let listed = testkit::http_get(srv.http, "GET", "/matches", &[]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&listed.body).unwrap();
        assert_eq!(
            v["matches"][0]["end_unix_ms"].as_u64().unwrap() / 1000,
            secs(t),
            "Last-Modified is the seal time"
        );
        // not modified since then (or later): 304 with the validators, no body
        for ims in [
            lm.clone(),
            httpdate::fmt_http_date(t + Duration::from_secs(3600)),
        ] {
            let r = g(&[("If-Modified-Since", &ims)]);
            assert_eq!((r.status, r.body.len()), (304, 0), "{b}: {ims}");
            assert_eq!(r.header("last-modified"), Some(lm.as_str()));
            assert_eq!(r.header("etag"), full.header("etag"));
            assert!(r.header("cache-control").is_some());
            date_ok(&r);
        }
        // modified after an earlier date, or a date that does not parse: the replay
        let r = g(&[(
            "If-Modified-Since",
            &httpdate::fmt_http_date(t - Duration::from_secs(1)),
        )]);
        assert_eq!((r.status, r.body.len()), (200, full.body.len()), "{b}");
        assert_eq!(g(&[("If-Modified-Since", "yesterday")]).status, 200);
        // If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2)
        let r = g(&[("If-None-Match", "\"other\""), ("If-Modified-Since", &lm)]);
        assert_eq!(r.status, 200, "{b}");
        // If-Range with the Last-Modified date: the range; with another date: everything
        let r = g(&[("Range", "bytes=0-9"), ("If-Range", &lm)]);
        assert_eq!((r.status, r.body.len()), (206, 10), "{b}");
        let old = httpdate::fmt_http_date(t - Duration::from_secs(10));
        let r = g(&[("Range", "bytes=0-9"), ("If-Range", &old)]);
        assert_eq!(r.status, 200, "{b}");
    }
}

#[test]
fn browser_page_lists_live_and_sealed_matches_and_json_stays_the_default() {
    for b in BACKENDS {
        let dir = TempDir::new("page");
        let srv = spawn_server(b, dir.path(), &[]);
        stream_match(srv.ingest, "sealed-one", 30, 2000);
        let mut live = testkit::DsClient::connect(srv.ingest).unwrap();
        live.hello("live_one", false, b"").unwrap();
        live.frame(1, 1, 1, b"abc").unwrap();
        live.wait_ack(1, Duration::from_secs(5)).unwrap();
        let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        for (path, accept) in [("/", None), ("/matches", Some(browser))] {
            let h: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
            let r = testkit::http_get(srv.http, "GET", path, &h).unwrap();
            assert_eq!(r.status, 200, "{b} {path}");
            assert_eq!(
                r.header("content-type"),
                Some("text/html; charset=utf-8"),
                "{b} {path}"
            );
            let page = String::from_utf8(r.body).unwrap();
            assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
            assert!(page.contains("1 live, 1 sealed"), "{page}");
            assert!(
                page.contains("href=\"/matches/sealed-one\" download=\"sealed-one.rpl\""),
                "{page}"
            );
            assert!(page.contains("href=\"/matches/live_one\""), "{page}");
            assert!(
                page.contains("href=\"/matches/sealed-one/index\""),
                "{page}"
            );
            // sizes and times for people, not raw numbers
            assert!(page.contains(" KiB<"), "{page}");
            assert!(page.contains(" UTC<"), "{page}");
            // self-contained: no script, nothing loaded from elsewhere
            assert!(
                !page.contains("<script") && !page.contains("src="),
                "{page}"
            );
            if path == "/matches" {
                assert_eq!(
                    r.headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("vary"))
                        .map(|(_, v)| v.as_str()),
                    Some("Accept")
                );
            }
        }
        // programs keep JSON: no Accept, */*, application/json
        for accept in [None, Some("*/*"), Some("application/json")] {
            let h: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
            let r = testkit::http_get(srv.http, "GET", "/matches", &h).unwrap();
            assert_eq!(
                r.header("content-type"),
                Some("application/json"),
                "{accept:?}"
            );
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["matches"].as_array().unwrap().len(), 2);
        }
        // HEAD /: the page's head, no body
        let r = testkit::http_get(srv.http, "HEAD", "/", &[]).unwrap();
        assert_eq!((r.status, r.body.len()), (200, 0));
        assert!(r.header("content-length").unwrap().parse::<u64>().unwrap() > 500);
        live.end(1).unwrap();
    }
}

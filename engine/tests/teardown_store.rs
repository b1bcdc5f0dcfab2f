//! The store at its limits, on both backends (issue 12): a match created while the disk
//! is full (bug 4) and a read-only store (bug 6). Real `recorder serve` on a small tmpfs
//! (needs root, as CI runs).

mod common;
use common::*;
use engine::protocol::ErrorCode;
use std::io::Write;
use std::time::Duration;

const BACKENDS: [&str; 2] = ["blocking", "uring"];

/// Fills the file system under `dir` to the last byte; returns the filler's path.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    let chunk = vec![0xabu8; 64 << 10];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", p.display()),
        }
    }
    // the last partial page too
    for _ in 0..64 {
        if f.write(&[1u8; 512]).is_err() {
            break;
        }
    }
    let _ = f.sync_all();
    p
}

/// Starts match `id` on a full disk: WELCOME (an empty file is created), then the first
/// frame cannot be written: STORAGE.
fn start_on_full_disk(srv: &Server, id: &str) {
    let mut c = DsClient::connect(srv.ingest).unwrap();
    let w = c.hello(id, false, b"").unwrap();
    assert!(
        matches!(w, Reply::Welcome { last_seq: 0, .. }),
        "{id}: {w:?}"
    );
    c.frame(1, 1, 1, &testkit::payload_for(id, 1, 20_000))
        .unwrap();
    let r = c.wait_ack(1, Duration::from_secs(10)).unwrap();
    assert_eq!(r.error_code(), Some(ErrorCode::Storage), "{id}: {r:?}");
    let part = srv.store.join(format!("live/{id}.rpl.part"));
    let len = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    assert!(len < 128, "{id}: the part file has {len} bytes");
}

/// RESUME after space came back: a new match (WELCOME 0), streamed and sealed.
fn resume_and_finish(srv: &Server, id: &str) {
    let mut c = DsClient::connect(srv.ingest).unwrap();
    let w = c.hello(id, true, b"").unwrap();
    assert!(
        matches!(w, Reply::Welcome { last_seq: 0, .. }),
        "{id}: {w:?} ({})",
        srv.log_text()
    );
    let want: Vec<Vec<u8>> = (1..=3).map(|s| testkit::payload_for(id, s, 500)).collect();
    for (i, p) in want.iter().enumerate() {
        c.frame(i as u64 + 1, i as u64 + 1, if i == 0 { 1 } else { 2 }, p)
            .unwrap();
    }
    let r = c.end(3).unwrap();
    assert!(
        matches!(r, Reply::Sealed { last_seq: 3, .. }),
        "{id}: {r:?}"
    );
    let b = std::fs::read(srv.store.join(format!("{id}.rpl"))).unwrap();
    check_replay(&b, id, &want, true);
}

// Bug 4: a match created while the disk is full left a 0-byte .rpl.part that every RESUME
// refused with STORAGE ("shorter than the 128-byte header") until a restart. A file
// shorter than the header holds no acknowledged frame: it is a new match.
#[test]
fn match_created_on_a_full_disk_resumes_as_new_once_space_is_back() {
    let Some(fs) = SmallFs::mount_or_skip("fullnew", "16m") else {
        return;
    };
    // per-match: the first write to the replay file fails; journal (a small one, made
    // before the disk fills): the frame is journaled, its replay-file write behind fails
    let layouts: [&[&str]; 2] = [
        &["--storage-layout", "per-match"],
        &[
            "--storage-layout",
            "journal",
            "--journal-bytes",
            "2m",
            "--journal-flush-bytes",
            "64k",
            "--append-buffer-bytes",
            "64k",
            "--max-frame-bytes",
            "64k",
        ],
    ];
    for (backend, layout) in BACKENDS
        .iter()
        .flat_map(|b| layouts.iter().map(move |l| (*b, *l)))
    {
        let store = fs.0.join(backend);
        std::fs::create_dir_all(store.join("live")).unwrap();
        let mut args = vec![
            "--workers",
            "1",
            "--durability",
            "fdatasync",
            "--ack-interval-ms",
            "0",
        ];
        args.extend_from_slice(layout);
        eprintln!("{backend} {layout:?}");
        let mut srv = spawn_server(backend, &store, &args);
        // while running: RESUME right after space is freed
        let filler = fill(&fs.0);
        start_on_full_disk(&srv, "full");
        std::fs::remove_file(&filler).unwrap();
        resume_and_finish(&srv, "full");
        // across a restart: recovery treats the short file the same way
        let filler = fill(&fs.0);
        start_on_full_disk(&srv, "full2");
        srv.kill9();
        std::fs::remove_file(&filler).unwrap();
        std::fs::write(store.join("live/short.rpl.part"), [0u8; 60]).unwrap();
        let srv = srv.restart();
        resume_and_finish(&srv, "full2");
        resume_and_finish(&srv, "short");
        drop(srv);
        std::fs::remove_dir_all(&store).unwrap();
    }
}

// Bug 6: a read-only store was accepted at start, then every DS got STORAGE. Refused at
// start with the cause, like a store that is a regular file.
#[test]
fn read_only_store_is_refused_at_start() {
    let Some(fs) = SmallFs::mount_or_skip("rostore", "4m") else {
        return;
    };
    let store = fs.0.join("store");
    std::fs::create_dir_all(store.join("live")).unwrap();
    fs.remount(true);
    for backend in BACKENDS {
        let (status, err) = serve_expecting_refusal(backend, &store, &[]);
        let status =
            status.unwrap_or_else(|| panic!("{backend}: started on a read-only store: {err}"));
        assert_eq!(status.code(), Some(1), "{backend}: {err}");
        assert!(
            err.contains("not writable") && err.contains("Read-only file system"),
            "{backend}: {err}"
        );
        assert!(!err.contains("listening on"), "{backend}: {err}");
    }
    // the same store read-write starts and serves
    fs.remount(false);
    let srv = spawn_server("blocking", &store, &["--storage-layout", "per-match"]);
    let (_, r) = stream_match(srv.ingest, "rw", 2, 100);
    assert!(matches!(r, Reply::Sealed { .. }), "{r:?}");
}

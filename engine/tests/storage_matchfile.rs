//! MatchFile and the replay format without a server: O_DIRECT aligned writes with
//! tail-block rewrite, every durability bookkeeping path, seal, recovery scans at every
//! cut point, corrupt files named.

use engine::storage::format::{self, parse_replay};
use engine::storage::{self, Durability, MatchFile, StoreOptions, StorePaths};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

fn tmp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("storage-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn payload(seq: u64, len: usize) -> Vec<u8> {
    engine::server::testkit::payload_for("st", seq, len)
}

/// Appends `n` frames of varied sizes, writing through the file after every `batch`
/// frames, checking alignment and the on-disk prefix after every write.
fn write_frames(
    f: &mut MatchFile,
    fd: &std::os::fd::OwnedFd,
    logical: &mut Vec<u8>,
    from: u64,
    n: u64,
    batch: u64,
    opts: &StoreOptions,
) {
    let path_check = |_fd: &std::os::fd::OwnedFd, logical: &[u8], upto: u64| {
        // read through the page cache (the O_DIRECT fd needs aligned buffers)
        let mut got = vec![0u8; upto as usize];
        let file = std::fs::File::open(
            std::env::temp_dir().join(format!("{}/live/st.rpl.part", f_dir(opts))),
        )
        .unwrap();
        file.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(got, logical[..upto as usize], "file prefix up to {upto}");
    };
    for seq in from..from + n {
        let len = (seq as usize * 389) % 9000 + (if seq % 13 == 0 { 70_000 } else { 0 });
        let p = payload(seq, len);
        let kind = if seq % 10 == 1 { 1 } else { 2 };
        f.append(seq, seq * 3, kind, crc32c::crc32c(&p), &p, 1000 + seq);
        let mut rec = Vec::new();
        format::encode_record_header(
            &mut rec,
            &format::RecordHeader {
                payload_len: p.len() as u32,
                kind,
                seq,
                tick: seq * 3,
                recv_unix_us: 1000 + seq,
                payload_crc32c: crc32c::crc32c(&p),
            },
        );
        logical.extend_from_slice(&rec);
        logical.extend_from_slice(&p);
        if seq % batch == 0 {
            let req = f.take_write().expect("unwritten data gives a write");
            assert!(f.take_write().is_none(), "one write in flight at a time");
            if opts.direct {
                let a = opts.align as u64;
                assert_eq!(req.offset % a, 0, "offset aligned");
                assert_eq!(req.bytes().len() as u64 % a, 0, "length aligned");
                assert_eq!(
                    req.bytes().as_ptr() as usize % opts.align,
                    0,
                    "buffer aligned"
                );
            }
            storage::io::write_req(fd, &req, opts.rw_flags(), opts.vectored).unwrap();
            f.write_done(req);
            assert_eq!(f.written_end(), logical.len() as u64);
            if f.needs_sync() {
                let (e, s) = f.sync_point();
                storage::io::sync(fd).unwrap();
                f.sync_done(e, s);
            }
            assert_eq!(f.durable_seq(), seq);
            path_check(fd, logical, f.written_end());
        }
    }
}

fn f_dir(opts: &StoreOptions) -> String {
    format!(
        "storage-test-rt-{}-{}-{}-{}",
        opts.direct,
        opts.durability.name(),
        opts.stage_bytes,
        std::process::id()
    )
}

fn round_trip(direct: bool, durability: Durability, stage: usize) {
    let dir = tmp(&format!("rt-{direct}-{}-{stage}", durability.name()));
    let paths = StorePaths::new(&dir);
    let opts = StoreOptions {
        direct,
        align: 4096,
        durability,
        stage_bytes: stage,
        prealloc_bytes: 0,
        uncached: false,
        vectored: durability == Durability::Odsync,
        bulk_direct_bytes: 0,
        bulk_direct_align: 4096,
    };
    let (fd, _) = storage::io::open_match(&paths, "st", true, false, &opts, u32::MAX).unwrap();
    let mut f = MatchFile::create("st", 77, opts.clone());
    let mut logical = Vec::new();
    format::encode_header(&mut logical, "st", 77);
    write_frames(&mut f, &fd, &mut logical, 1, 60, 3, &opts);
    // crash here: recover from the file, resume, continue
    drop(fd);
    let rec = storage::recover_store(&paths, &opts, u32::MAX).unwrap();
    assert_eq!(rec.live.len(), 1);
    let (id, scan, tail) = &rec.live[0];
    assert_eq!(
        (id.as_str(), scan.last_seq, scan.valid_end),
        ("st", 60, logical.len() as u64)
    );
    let mut f = MatchFile::resume(id, scan, tail, opts.clone());
    assert_eq!(f.index(), &f.index().to_vec()[..]);
    let (fd, _) = storage::io::open_match(&paths, "st", false, false, &opts, u32::MAX).unwrap();
    write_frames(&mut f, &fd, &mut logical, 61, 40, 4, &opts);
    f.seal(99);
    while let Some(req) = f.take_write() {
        storage::io::write_req(&fd, &req, opts.rw_flags(), opts.vectored).unwrap();
        f.write_done(req);
    }
    let info = storage::io::seal_match(&paths, "st", &fd, f.sealed_len().unwrap()).unwrap();
    let bytes = std::fs::read(paths.sealed_path("st")).unwrap();
    assert_eq!(bytes.len() as u64, info.len);
    let r = parse_replay(&bytes).unwrap();
    assert_eq!(r.frames.len(), 100);
    assert_eq!(&bytes[..logical.len()], &logical[..]);
    let t = r.trailer.unwrap();
    assert_eq!(
        (
            t.frame_count,
            t.last_seq,
            t.first_tick,
            t.last_tick,
            t.created_unix_us,
            t.sealed_unix_us
        ),
        (100, 100, 3, 300, 77, 99)
    );
    let keys: Vec<u64> = r.index.iter().map(|e| e.seq).collect();
    assert_eq!(keys, (0..10).map(|i| i * 10 + 1).collect::<Vec<_>>());
    for e in &r.index {
        let h =
            format::parse_record_header(&bytes[e.offset as usize..], e.offset, u32::MAX).unwrap();
        assert_eq!(
            (h.seq, h.kind),
            (e.seq, 1),
            "index points at the keyframe record"
        );
    }
    assert!(!paths.part_path("st").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Appends frame `seq` of `len` bytes to `f` and to the expected file bytes.
fn append_frame(f: &mut MatchFile, logical: &mut Vec<u8>, seq: u64, len: usize) {
    let p = payload(seq, len);
    let kind = if seq == 1 { 1 } else { 2 };
    f.append(seq, seq, kind, crc32c::crc32c(&p), &p, 1000 + seq);
    let h = format::RecordHeader {
        payload_len: p.len() as u32,
        kind,
        seq,
        tick: seq,
        recv_unix_us: 1000 + seq,
        payload_crc32c: crc32c::crc32c(&p),
    };
    format::encode_record_header(logical, &h);
    logical.extend_from_slice(&p);
}

/// The journal layout's replay files are buffered; a bulk match (writes of
/// `bulk_direct_bytes` or more) switches its file to O_DIRECT after its first bulk write,
/// carrying the partial last block into its first aligned write; what a journal record of
/// a write holds (`data()`) never includes the padding.
#[test]
fn bulk_match_switches_its_buffered_replay_file_to_o_direct() {
    let dir = tmp("bulk-direct");
    let paths = StorePaths::new(&dir);
    let opts = StoreOptions {
        direct: false,
        align: 8,
        durability: Durability::None,
        stage_bytes: 1 << 20,
        bulk_direct_bytes: 64 << 10,
        bulk_direct_align: 4096,
        ..StoreOptions::default()
    };
    let (fd, _) = storage::io::open_match(&paths, "st", true, false, &opts, u32::MAX).unwrap();
    let mut f = MatchFile::create("st", 77, opts.clone());
    let mut logical = Vec::new();
    format::encode_header(&mut logical, "st", 77);
    let direct_flag = |fd: &std::os::fd::OwnedFd| {
        use std::os::fd::AsRawFd;
        // SAFETY: F_GETFL on a valid descriptor.
        let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        fl & libc::O_DIRECT != 0
    };
    let mut seq = 0;
    let write = |f: &mut MatchFile, logical: &Vec<u8>| {
        let req = f.take_write().expect("a write");
        assert_eq!(req.offset + req.data().len() as u64, req.end);
        assert_eq!(req.end, logical.len() as u64);
        if req.direct {
            assert_eq!(req.offset % 4096, 0, "offset aligned");
            assert_eq!(req.bytes().len() % 4096, 0, "length aligned");
            assert_eq!(req.bytes().as_ptr() as usize % 4096, 0, "buffer aligned");
        }
        storage::io::write_replay_req(&fd, &req, 0, false).unwrap();
        let direct = req.direct;
        f.write_done(req);
        let mut got = vec![0u8; logical.len()];
        std::fs::File::open(paths.part_path("st"))
            .unwrap()
            .read_exact_at(&mut got, 0)
            .unwrap();
        assert_eq!(
            got,
            logical[..],
            "file prefix after a write (direct: {direct})"
        );
        direct
    };
    // a quiet match: small frames and a keyframe below the bulk size stay buffered
    for len in [1000, 1000, 40_000, 1000, 3333] {
        seq += 1;
        append_frame(&mut f, &mut logical, seq, len);
        assert!(!write(&mut f, &logical), "small writes stay buffered");
    }
    assert!(!direct_flag(&fd) && !f.went_direct());
    // the first bulk write is still buffered; it records the partial block
    for _ in 0..5 {
        seq += 1;
        append_frame(&mut f, &mut logical, seq, 20_000);
    }
    assert!(!write(&mut f, &logical), "the first bulk write is buffered");
    // the next one goes O_DIRECT, starting at the block before the file's end
    for _ in 0..5 {
        seq += 1;
        append_frame(&mut f, &mut logical, seq, 20_000);
    }
    assert!(write(&mut f, &logical), "the second bulk write is O_DIRECT");
    assert!(direct_flag(&fd) && f.went_direct());
    // and it stays so, small writes included (tail-block rewrite)
    for len in [100, 70_000, 5, 9000] {
        seq += 1;
        append_frame(&mut f, &mut logical, seq, len);
        assert!(write(&mut f, &logical));
    }
    f.seal(99);
    while let Some(req) = f.take_write() {
        assert!(req.direct);
        storage::io::write_replay_req(&fd, &req, 0, false).unwrap();
        f.write_done(req);
    }
    storage::io::seal_match(&paths, "st", &fd, f.sealed_len().unwrap()).unwrap();
    let bytes = std::fs::read(paths.sealed_path("st")).unwrap();
    let r = parse_replay(&bytes).unwrap();
    assert_eq!(r.frames.len() as u64, seq);
    assert_eq!(&bytes[..logical.len()], &logical[..]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn buffered_none() {
    round_trip(false, Durability::None, 1 << 20);
}
#[test]
fn buffered_fdatasync_small_stage() {
    round_trip(false, Durability::Fdatasync, 4096);
}
#[test]
fn direct_fdatasync_tail_block_rewrite() {
    round_trip(true, Durability::Fdatasync, 8192);
}
#[test]
fn direct_rwf_dsync() {
    round_trip(true, Durability::RwfDsync, 1 << 20);
}
#[test]
fn buffered_odsync() {
    round_trip(false, Durability::Odsync, 1 << 16);
}

fn small_file(frames: u64) -> (Vec<u8>, Vec<u64>) {
    let mut b = Vec::new();
    format::encode_header(&mut b, "cut", 5);
    let mut ends = vec![b.len() as u64];
    for seq in 1..=frames {
        let p = payload(seq, (seq as usize * 17) % 50);
        format::encode_record_header(
            &mut b,
            &format::RecordHeader {
                payload_len: p.len() as u32,
                kind: 2,
                seq,
                tick: seq,
                recv_unix_us: 0,
                payload_crc32c: crc32c::crc32c(&p),
            },
        );
        b.extend_from_slice(&p);
        ends.push(b.len() as u64);
    }
    (b, ends)
}

#[test]
fn scan_stops_at_the_last_whole_record_for_every_cut() {
    let (b, ends) = small_file(8);
    for cut in format::HEADER_BYTES..=b.len() {
        let s = format::scan(&b[..cut], "cut", u32::MAX).unwrap().unwrap();
        let whole = ends.iter().filter(|e| **e <= cut as u64).count() as u64 - 1;
        assert_eq!(s.last_seq, whole, "cut {cut}");
        assert_eq!(s.valid_end, ends[whole as usize], "cut {cut}");
        assert_eq!(s.file_len, cut as u64);
        // zero padding after the cut changes nothing
        let mut padded = b[..cut].to_vec();
        padded.extend_from_slice(&[0u8; 5000]);
        let s2 = format::scan(&padded[..], "cut", u32::MAX).unwrap().unwrap();
        assert_eq!(
            (s2.last_seq, s2.valid_end),
            (whole, ends[whole as usize]),
            "cut {cut} + zeros"
        );
    }
    // a flipped payload byte stops the scan before that frame, naming it
    let mut bad = b.clone();
    let at = ends[4] as usize + format::RECORD_HEADER_BYTES;
    bad[at] ^= 1;
    let s = format::scan(&bad[..], "cut", u32::MAX).unwrap().unwrap();
    assert_eq!(s.last_seq, 4);
    assert!(s.stop_reason.unwrap().contains("frame 5"));
    // a header for another match is refused
    assert!(format::scan(&b[..], "other", u32::MAX).unwrap().is_err());
}

#[test]
fn parse_replay_names_corruption() {
    let dir = tmp("corrupt");
    let paths = StorePaths::new(&dir);
    let opts = StoreOptions::default();
    let (fd, _) = storage::io::open_match(&paths, "st", true, false, &opts, u32::MAX).unwrap();
    let mut f = MatchFile::create("st", 1, opts.clone());
    for seq in 1..=5 {
        let p = payload(seq, 100);
        f.append(seq, seq, 1, crc32c::crc32c(&p), &p, 0);
    }
    f.seal(2);
    let req = f.take_write().unwrap();
    storage::io::write_req(&fd, &req, 0, false).unwrap();
    f.write_done(req);
    storage::io::seal_match(&paths, "st", &fd, f.sealed_len().unwrap()).unwrap();
    let good = std::fs::read(paths.sealed_path("st")).unwrap();
    parse_replay(&good).unwrap();
    let flip = |i: usize| {
        let mut b = good.clone();
        b[i] ^= 0x40;
        parse_replay(&b).unwrap_err().to_string()
    };
    assert!(flip(3).contains("magic"));
    assert!(flip(format::HEADER_BYTES + 9).contains("record header CRC32C"));
    assert!(flip(format::HEADER_BYTES + format::RECORD_HEADER_BYTES + 1).contains("payload CRC32C"));
    assert!(flip(good.len() - 50).contains("trailer CRC32C"));
    let idx_off = good.len() - format::TRAILER_BYTES - format::index_bytes(5) + 20;
    assert!(flip(idx_off).contains("index CRC32C"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn recovery_removes_headerless_parts_and_ignores_foreign_files() {
    let dir = tmp("recover");
    let paths = StorePaths::new(&dir);
    std::fs::create_dir_all(paths.live_dir()).unwrap();
    std::fs::write(paths.part_path("empty"), b"").unwrap();
    std::fs::write(paths.live_dir().join("notes.txt"), b"hello").unwrap();
    std::fs::write(dir.join("bad.rpl"), b"not a replay").unwrap();
    let (b, _) = small_file(3);
    std::fs::write(paths.part_path("cut"), &b).unwrap();
    let rec = storage::recover_store(&paths, &StoreOptions::default(), u32::MAX).unwrap();
    assert!(
        !paths.part_path("empty").exists(),
        "a part file without a header held no acked frame"
    );
    assert!(
        paths.live_dir().join("notes.txt").exists(),
        "foreign files are left alone"
    );
    assert_eq!(rec.live.len(), 1);
    assert_eq!(rec.live[0].1.last_seq, 3);
    assert!(rec.sealed.is_empty());
    let notes = rec.notes.join("\n");
    assert!(
        notes.contains("empty.rpl.part")
            && notes.contains("notes.txt")
            && notes.contains("bad.rpl"),
        "{notes}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

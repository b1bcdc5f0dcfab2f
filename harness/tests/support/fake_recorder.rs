//! fake-recorder: a tiny stand-in for `recorder serve`, for the harness's own tests.
//!
//! Same CLI shape: `fake-recorder serve --store DIR --ingest-addr A --http-addr B [--NAME VALUE ...]`,
//! prints `ingest listening on ADDR` and `http listening on ADDR` on stderr, stops on SIGTERM.
//! Ingest: a thread per connection, every frame CRC-checked, appended to `DIR/<id>.replay` as
//! `u32 length + payload`, acked at once. HTTP: `GET /matches` (JSON), `GET /matches/{id}`
//! (whole file, `Range: bytes=a-b`). Test hooks: `--fake-corrupt-frame SEQ` stores that frame altered; `--fake-unsupported REASON` exits at start-up
//! saying the configuration is unsupported; `--fake-crash-after-ms N` aborts after N ms;
//! `--fake-refuse-after-ms N` exits after N ms with `recorder serve: unsupported: ...` (a
//! refusal at first use, after it started listening);
//! `--fake-frame-delay-ms N` stores one frame per N ms (each acked at once: a slow recorder
//! that keeps making progress); `--fake-welcome-delay-ms N` answers HELLO after N ms.
//! Every other `--NAME VALUE` is accepted and echoed to stderr.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use engine::protocol::{self, AckMode, ErrorCode, Msg};

#[derive(Default)]
struct MatchState {
    last_seq: u64,
    sealed: bool,
    busy: bool,
}

type Store = Arc<Mutex<HashMap<String, MatchState>>>;

/// Frame seq whose stored payload gets one byte flipped (0 = none): lets tests prove `--verify` catches it.
static CORRUPT_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// `--fake-frame-delay-ms`: milliseconds per stored frame (0 = none).
static FRAME_DELAY_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// `--fake-welcome-delay-ms`: milliseconds before WELCOME (0 = none).
static WELCOME_DELAY_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("serve") {
        eprintln!("usage: fake-recorder serve --store DIR --ingest-addr A --http-addr B");
        std::process::exit(2);
    }
    let mut store_dir = None;
    let mut ingest = "127.0.0.1:0".to_string();
    let mut http = "127.0.0.1:0".to_string();
    let mut i = 1;
    while i < args.len() {
        let k = args[i].trim_start_matches("--").to_string();
        let v = args.get(i + 1).cloned().unwrap_or_default();
        i += 2;
        match k.as_str() {
            "store" => store_dir = Some(PathBuf::from(v)),
            "ingest-addr" => ingest = v,
            "http-addr" => http = v,
            "fake-unsupported" => {
                eprintln!("recorder: configuration unsupported on this machine: {v}");
                std::process::exit(3);
            }
            "fake-corrupt-frame" => {
                CORRUPT_SEQ.store(v.parse().unwrap_or(0), Ordering::Relaxed);
            }
            "fake-frame-delay-ms" => {
                FRAME_DELAY_MS.store(v.parse().unwrap_or(0), Ordering::Relaxed)
            }
            "fake-welcome-delay-ms" => {
                WELCOME_DELAY_MS.store(v.parse().unwrap_or(0), Ordering::Relaxed)
            }
            "fake-refuse-after-ms" => {
                let ms: u64 = v.parse().unwrap_or(0);
                std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                    eprintln!("recorder serve: unsupported: fake refusal at first use");
                    std::process::exit(1);
                });
            }
            "fake-crash-after-ms" => {
                let ms: u64 = v.parse().unwrap_or(0);
                std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                    eprintln!("fake-recorder: crashing on purpose");
                    std::process::abort();
                });
            }
            _ => eprintln!("fake-recorder: option {k} = {v}"),
        }
    }
    let store_dir = store_dir.unwrap_or_else(|| {
        eprintln!("fake-recorder: --store DIR is required");
        std::process::exit(2)
    });
    std::fs::create_dir_all(&store_dir).expect("create store dir");
    let term = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, term.clone()).expect("signal");
    let il = TcpListener::bind(&ingest).expect("bind ingest");
    let hl = TcpListener::bind(&http).expect("bind http");
    eprintln!("ingest listening on {}", il.local_addr().unwrap());
    eprintln!("http listening on {}", hl.local_addr().unwrap());
    let store: Store = Arc::new(Mutex::new(HashMap::new()));
    {
        let (store, dir) = (store.clone(), store_dir.clone());
        std::thread::spawn(move || {
            for c in il.incoming().flatten() {
                let (store, dir) = (store.clone(), dir.clone());
                std::thread::spawn(move || ingest_conn(c, store, dir));
            }
        });
    }
    {
        let (store, dir) = (store.clone(), store_dir.clone());
        std::thread::spawn(move || {
            for c in hl.incoming().flatten() {
                let (store, dir) = (store.clone(), dir.clone());
                std::thread::spawn(move || http_conn(c, store, dir));
            }
        });
    }
    while !term.load(Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    eprintln!("fake-recorder: SIGTERM, stopping");
}

fn send(s: &mut TcpStream, m: &Msg<'_>) -> std::io::Result<()> {
    let mut v = Vec::new();
    protocol::encode(&mut v, m);
    s.write_all(&v)
}

fn error(s: &mut TcpStream, code: ErrorCode, text: &str) {
    let _ = send(
        s,
        &Msg::Error {
            code: code as u16,
            text,
        },
    );
}

fn ingest_conn(mut s: TcpStream, store: Store, dir: PathBuf) {
    let _ = s.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::new();
    let mut tmp = vec![0u8; 64 * 1024];
    let mut cur: Option<(String, File)> = None;
    loop {
        let n = match s.read(&mut tmp) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&tmp[..n]);
        let mut off = 0;
        let mut acks = 0u64;
        loop {
            let (msg, used) = match protocol::decode(&buf[off..], (1 << 20) + 64) {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(e) => {
                    error(&mut s, e.code, &e.text);
                    return release(&store, &cur);
                }
            };
            off += used;
            match msg {
                Msg::Hello {
                    match_id, resume, ..
                } => {
                    if let Err(e) = protocol::validate_match_id(match_id) {
                        error(&mut s, e.code, &e.text);
                        return;
                    }
                    let mut st = store.lock().unwrap();
                    let m = st.entry(match_id.to_string()).or_default();
                    if m.sealed {
                        error(&mut s, ErrorCode::MatchSealed, "sealed");
                        return;
                    }
                    if m.busy {
                        error(&mut s, ErrorCode::MatchBusy, "busy");
                        return;
                    }
                    if m.last_seq > 0 && !resume {
                        error(&mut s, ErrorCode::MatchExists, "exists; use RESUME");
                        return;
                    }
                    m.busy = true;
                    let last = m.last_seq;
                    drop(st);
                    let f = OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path(&dir, match_id))
                        .expect("open replay");
                    cur = Some((match_id.to_string(), f));
                    let wd = WELCOME_DELAY_MS.load(Ordering::Relaxed);
                    if wd > 0 {
                        std::thread::sleep(std::time::Duration::from_millis(wd));
                    }
                    let _ = send(
                        &mut s,
                        &Msg::Welcome {
                            version: 1,
                            ack_mode: AckMode::Durable,
                            last_seq: last,
                            max_frame_bytes: 1 << 20,
                        },
                    );
                }
                Msg::Frame {
                    seq,
                    crc32c,
                    payload,
                    ..
                } => {
                    let Some((id, f)) = cur.as_mut() else {
                        error(&mut s, ErrorCode::Unexpected, "FRAME before HELLO");
                        return;
                    };
                    if let Err(e) = protocol::check_crc(seq, crc32c, payload) {
                        error(&mut s, e.code, &e.text);
                        return release(&store, &cur);
                    }
                    let mut st = store.lock().unwrap();
                    let m = st.get_mut(id.as_str()).unwrap();
                    if seq <= m.last_seq {
                        acks = acks.max(m.last_seq);
                        continue;
                    }
                    if seq > m.last_seq + 1 {
                        drop(st);
                        error(&mut s, ErrorCode::SeqGap, "gap");
                        return release(&store, &cur);
                    }
                    f.write_all(&(payload.len() as u32).to_le_bytes()).unwrap();
                    if seq == CORRUPT_SEQ.load(Ordering::Relaxed) && !payload.is_empty() {
                        let mut p = payload.to_vec();
                        let mid = p.len() / 2;
                        p[mid] ^= 0xff;
                        f.write_all(&p).unwrap();
                    } else {
                        f.write_all(payload).unwrap();
                    }
                    m.last_seq = seq;
                    acks = seq;
                    let fd = FRAME_DELAY_MS.load(Ordering::Relaxed);
                    if fd > 0 {
                        drop(st);
                        std::thread::sleep(std::time::Duration::from_millis(fd));
                        if send(&mut s, &Msg::Ack { seq }).is_err() {
                            return release(&store, &cur);
                        }
                    }
                }
                Msg::End { last_seq } => {
                    let Some((id, f)) = cur.as_mut() else { return };
                    f.sync_data().unwrap();
                    let mut st = store.lock().unwrap();
                    let m = st.get_mut(id.as_str()).unwrap();
                    if last_seq != m.last_seq {
                        drop(st);
                        error(&mut s, ErrorCode::Unexpected, "END with a wrong last_seq");
                        return release(&store, &cur);
                    }
                    m.sealed = true;
                    m.busy = false;
                    let bytes = f.metadata().unwrap().len();
                    let _ = send(
                        &mut s,
                        &Msg::Sealed {
                            last_seq,
                            file_bytes: bytes,
                        },
                    );
                    return;
                }
                _ => {
                    error(&mut s, ErrorCode::Unexpected, "unexpected message");
                    return release(&store, &cur);
                }
            }
        }
        buf.drain(..off);
        if acks > 0 && send(&mut s, &Msg::Ack { seq: acks }).is_err() {
            break;
        }
    }
    release(&store, &cur);
}

fn release(store: &Store, cur: &Option<(String, File)>) {
    if let Some((id, _)) = cur {
        if let Some(m) = store.lock().unwrap().get_mut(id.as_str()) {
            m.busy = false;
        }
    }
}

fn path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.replay"))
}

fn http_conn(s: TcpStream, store: Store, dir: PathBuf) {
    let _ = s.set_nodelay(true);
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut range = None;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.strip_prefix("Range: bytes=") {
                let (a, b) = v.split_once('-').unwrap();
                range = Some((a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()));
            }
        }
        let path_only = target.split('?').next().unwrap_or("");
        if path_only == "/matches" {
            let st = store.lock().unwrap();
            let list: Vec<serde_json::Value> = st
                .iter()
                .map(|(k, v)| serde_json::json!({"id": k, "sealed": v.sealed, "last_seq": v.last_seq}))
                .collect();
            let body = serde_json::to_vec(&list).unwrap();
            let _ = write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = w.write_all(&body);
            continue;
        }
        let Some(id) = path_only.strip_prefix("/matches/") else {
            let _ = write!(w, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            continue;
        };
        let sealed = store.lock().unwrap().get(id).map(|m| m.sealed);
        if sealed != Some(true) {
            let _ = write!(w, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            continue;
        }
        let data = std::fs::read(path(&dir, id)).unwrap_or_default();
        match range {
            Some((a, b)) if (a as usize) < data.len() => {
                let b = (b as usize).min(data.len() - 1);
                let part = &data[a as usize..=b];
                let _ = write!(
                    w,
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{}\r\nContent-Length: {}\r\n\r\n",
                    data.len(),
                    part.len()
                );
                let _ = w.write_all(part);
            }
            _ => {
                let _ = write!(
                    w,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    data.len()
                );
                let _ = w.write_all(&data);
            }
        }
    }
}

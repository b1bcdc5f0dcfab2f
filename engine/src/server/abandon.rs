//! Abandoned matches (`server.abandon-after-s`, issue 12 bug 12): a match in progress that
//! has had no writer for that long is ended as it stands, so HELLOs that never END cannot
//! pin `max-matches` forever.
//!
//! The match is ended the way its DS would end it: over the ingest port, HELLO + RESUME
//! with the configured credential, then END for WELCOME's `last_seq`. The backend that
//! owns the match (either backend, either storage layout, with its journal and the tier's
//! seal hook) seals it through the one path every sealed match takes, and a DS that comes
//! back at the same moment meets the ordinary one-writer rule (it waits, then gets
//! `MATCH_SEALED`). With `abandon-action = remove` the sealed replay is then deleted as
//! retention deletes.

use super::registry::{Metrics, Registry};
use super::ServerError;
use crate::config::server::AbandonAction;
use crate::protocol::{self, ErrorCode, Msg};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Policy {
    pub after: Duration,
    pub action: AbandonAction,
    pub credential: Vec<u8>,
}

/// Checks every `after`/10 (between 100 ms and a minute) until shutdown.
pub fn spawn(
    reg: Arc<Registry>,
    ingest: SocketAddr,
    policy: Policy,
    shutdown: Arc<AtomicBool>,
) -> Result<(), ServerError> {
    let step = (policy.after / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let target = local_target(ingest);
    std::thread::Builder::new()
        .name("abandon".into())
        .spawn(move || {
            while !shutdown.load(Ordering::Acquire) && !reg.shutting_down() {
                for id in reg.abandoned(policy.after) {
                    if shutdown.load(Ordering::Acquire) || reg.shutting_down() {
                        break;
                    }
                    end_one(&reg, target, &policy, &id);
                }
                std::thread::sleep(step);
            }
        })
        .map(|_| ())
        .map_err(|e| ServerError(format!("cannot start the abandon thread: {e}")))
}

fn end_one(reg: &Registry, target: SocketAddr, policy: &Policy, id: &str) {
    let secs = policy.after.as_secs();
    match end_match(target, id, &policy.credential) {
        Ok(last_seq) => {
            Metrics::add(&reg.metrics.matches_abandoned, 1);
            if policy.action == AbandonAction::Remove && reg.remove_sealed(id, "abandon") {
                if let Some(t) = reg.tier.get() {
                    t.expired(vec![id.to_string()]);
                }
                tracing::info!(
                    "abandon: match {id} had no writer for {secs} s: sealed with {last_seq} frames and removed (abandon-action remove)"
                );
            } else {
                tracing::info!(
                    "abandon: match {id} had no writer for {secs} s: sealed with {last_seq} frames"
                );
            }
        }
        // A DS came back meanwhile, or the match was ended another way: nothing to do.
        Err(End::Refused(code, _))
            if code == ErrorCode::MatchBusy as u16 || code == ErrorCode::MatchSealed as u16 => {}
        Err(End::Refused(code, text)) if code == ErrorCode::TooManyConnections as u16 => {
            tracing::debug!("abandon: match {id}: {text}; trying again later")
        }
        Err(e) => tracing::warn!("abandon: cannot end match {id}: {e}; trying again later"),
    }
}

/// The ingest listener as a client reaches it: an unspecified address is this host.
fn local_target(ingest: SocketAddr) -> SocketAddr {
    let ip = match ingest.ip() {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, ingest.port())
}

enum End {
    Io(std::io::Error),
    Refused(u16, String),
    Protocol(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Io(e) => write!(f, "{e}"),
            End::Refused(c, t) => write!(f, "ERROR {c}: {t}"),
            End::Protocol(t) => f.write_str(t),
        }
    }
}

impl From<std::io::Error> for End {
    fn from(e: std::io::Error) -> End {
        End::Io(e)
    }
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// HELLO + RESUME, END(last_seq), SEALED: returns the sealed replay's last_seq.
fn end_match(target: SocketAddr, id: &str, credential: &[u8]) -> Result<u64, End> {
    let mut s = TcpStream::connect_timeout(&target, TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(TIMEOUT))?;
    let mut out = Vec::new();
    protocol::encode(
        &mut out,
        &Msg::Hello {
            version: protocol::VERSION,
            resume: true,
            match_id: id,
            credential,
        },
    );
    s.write_all(&out)?;
    let until = Instant::now() + TIMEOUT;
    let mut inbuf = Vec::new();
    let last_seq = match next_reply(&mut s, &mut inbuf, until)? {
        Reply::Welcome(seq) => seq,
        Reply::Sealed(_) | Reply::Ack => {
            return Err(End::Protocol("no WELCOME after HELLO".into()));
        }
    };
    out.clear();
    protocol::encode(&mut out, &Msg::End { last_seq });
    s.write_all(&out)?;
    loop {
        match next_reply(&mut s, &mut inbuf, until)? {
            Reply::Ack => continue,
            Reply::Sealed(seq) => return Ok(seq),
            Reply::Welcome(_) => return Err(End::Protocol("a second WELCOME".into())),
        }
    }
}

enum Reply {
    Welcome(u64),
    Ack,
    Sealed(u64),
}

fn next_reply(s: &mut TcpStream, inbuf: &mut Vec<u8>, until: Instant) -> Result<Reply, End> {
    loop {
        match protocol::decode(inbuf, u32::MAX) {
            Ok(Some((msg, used))) => {
                let r = match msg {
                    Msg::Welcome { last_seq, .. } => Ok(Reply::Welcome(last_seq)),
                    Msg::Ack { .. } => Ok(Reply::Ack),
                    Msg::Sealed { last_seq, .. } => Ok(Reply::Sealed(last_seq)),
                    Msg::Error { code, text } => Err(End::Refused(code, text.to_string())),
                    m => Err(End::Protocol(format!("unexpected message {m:?}"))),
                };
                inbuf.drain(..used);
                return r;
            }
            Ok(None) => {}
            Err(e) => return Err(End::Protocol(e.to_string())),
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(End::Protocol("no answer within 10 s".into()));
        }
        s.set_read_timeout(Some(left))?;
        let mut b = [0u8; 4096];
        let n = s.read(&mut b)?;
        if n == 0 {
            return Err(End::Protocol("connection closed".into()));
        }
        inbuf.extend_from_slice(&b[..n]);
    }
}

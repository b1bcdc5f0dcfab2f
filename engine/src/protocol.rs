//! DS ingest protocol, version 1: the codec for both sides. See `docs/protocol.md`.
//!
//! The decoder works on a byte slice and never allocates for payloads: a decoded
//! [`Msg::Frame`] borrows its payload from the input, so a server can parse in place
//! and copy once into its write buffer.

use std::fmt;

pub const MAGIC: [u8; 4] = *b"RPLY";
pub const VERSION: u16 = 1;
pub const HELLO_FLAG_RESUME: u16 = 1;
pub const MATCH_ID_MAX: usize = 64;
/// Bytes of a FRAME message before its payload: len(4) + kind(1) + seq(8) + tick(8) + frame_kind(1) + crc(4).
pub const FRAME_HEADER_BYTES: usize = 26;

pub const KIND_HELLO: u8 = 0x01;
pub const KIND_FRAME: u8 = 0x02;
pub const KIND_END: u8 = 0x03;
pub const KIND_WELCOME: u8 = 0x81;
pub const KIND_ACK: u8 = 0x82;
pub const KIND_ERROR: u8 = 0x83;
pub const KIND_SEALED: u8 = 0x84;

pub const FRAME_KEY: u8 = 1;
pub const FRAME_DELTA: u8 = 2;

/// Acknowledgement semantics announced in WELCOME.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckMode {
    /// An ACK for N means frames 1..=N are durable per the durability policy.
    Durable = 0,
    /// An ACK only means received. For experiments; never for production.
    Received = 1,
}

/// Error codes carried by ERROR messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    Malformed = 1,
    BadVersion = 2,
    BadMatchId = 3,
    AuthFailed = 4,
    MatchBusy = 5,
    MatchSealed = 6,
    MatchExists = 7,
    FrameTooLarge = 8,
    BadCrc = 9,
    SeqGap = 10,
    TooManyMatches = 11,
    TooManyConnections = 12,
    IdleTimeout = 13,
    Storage = 14,
    ShuttingDown = 15,
    Unexpected = 16,
    BadFrameKind = 17,
    TickRegression = 18,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::Malformed,
        ErrorCode::BadVersion,
        ErrorCode::BadMatchId,
        ErrorCode::AuthFailed,
        ErrorCode::MatchBusy,
        ErrorCode::MatchSealed,
        ErrorCode::MatchExists,
        ErrorCode::FrameTooLarge,
        ErrorCode::BadCrc,
        ErrorCode::SeqGap,
        ErrorCode::TooManyMatches,
        ErrorCode::TooManyConnections,
        ErrorCode::IdleTimeout,
        ErrorCode::Storage,
        ErrorCode::ShuttingDown,
        ErrorCode::Unexpected,
        ErrorCode::BadFrameKind,
        ErrorCode::TickRegression,
    ];

    pub fn from_u16(v: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| *c as u16 == v)
    }

    /// The name used in docs, logs and harness error counters.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "MALFORMED",
            ErrorCode::BadVersion => "BAD_VERSION",
            ErrorCode::BadMatchId => "BAD_MATCH_ID",
            ErrorCode::AuthFailed => "AUTH_FAILED",
            ErrorCode::MatchBusy => "MATCH_BUSY",
            ErrorCode::MatchSealed => "MATCH_SEALED",
            ErrorCode::MatchExists => "MATCH_EXISTS",
            ErrorCode::FrameTooLarge => "FRAME_TOO_LARGE",
            ErrorCode::BadCrc => "BAD_CRC",
            ErrorCode::SeqGap => "SEQ_GAP",
            ErrorCode::TooManyMatches => "TOO_MANY_MATCHES",
            ErrorCode::TooManyConnections => "TOO_MANY_CONNECTIONS",
            ErrorCode::IdleTimeout => "IDLE_TIMEOUT",
            ErrorCode::Storage => "STORAGE",
            ErrorCode::ShuttingDown => "SHUTTING_DOWN",
            ErrorCode::Unexpected => "UNEXPECTED",
            ErrorCode::BadFrameKind => "BAD_FRAME_KIND",
            ErrorCode::TickRegression => "TICK_REGRESSION",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One decoded message. Payload and strings borrow from the input buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg<'a> {
    Hello {
        version: u16,
        resume: bool,
        match_id: &'a str,
        credential: &'a [u8],
    },
    Frame {
        seq: u64,
        tick: u64,
        frame_kind: u8,
        crc32c: u32,
        payload: &'a [u8],
    },
    End {
        last_seq: u64,
    },
    Welcome {
        version: u16,
        ack_mode: AckMode,
        last_seq: u64,
        max_frame_bytes: u32,
    },
    Ack {
        seq: u64,
    },
    Error {
        code: u16,
        text: &'a str,
    },
    Sealed {
        last_seq: u64,
        file_bytes: u64,
    },
}

/// Why a byte sequence is not a valid message. Maps to an [`ErrorCode`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    pub code: ErrorCode,
    pub text: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.text)
    }
}

impl std::error::Error for DecodeError {}

fn malformed(text: impl Into<String>) -> DecodeError {
    DecodeError {
        code: ErrorCode::Malformed,
        text: text.into(),
    }
}

/// Checks a match id against the documented alphabet: 1..=64 of `A-Za-z0-9_-`, not starting with `-`.
pub fn validate_match_id(id: &str) -> Result<(), DecodeError> {
    let bad = |why: &str| {
        DecodeError {
        code: ErrorCode::BadMatchId,
        text: format!("match id {:?} {why}; use 1 to {MATCH_ID_MAX} characters of A-Z a-z 0-9 _ -, not starting with '-'", id.escape_debug().to_string()),
    }
    };
    if id.is_empty() {
        return Err(bad("is empty"));
    }
    if id.len() > MATCH_ID_MAX {
        return Err(bad("is too long"));
    }
    if id.starts_with('-') {
        return Err(bad("starts with '-'"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(bad(&format!("contains {:?}", c)));
    }
    Ok(())
}

struct Rd<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return Err(malformed(format!("{} message is truncated", self.what)));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn done(&self) -> Result<(), DecodeError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(malformed(format!(
                "{} message has {} trailing bytes",
                self.what,
                self.b.len()
            )))
        }
    }
}

/// Decodes one message from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole message (read more),
/// `Ok(Some((msg, consumed)))` otherwise. `max_len` bounds the `len` field; a larger
/// value is refused with `FRAME_TOO_LARGE` as soon as the 4 length bytes are in.
/// The payload CRC is *not* checked here (see [`check_crc`]) so the caller decides
/// where that cost is paid.
pub fn decode(buf: &[u8], max_len: u32) -> Result<Option<(Msg<'_>, usize)>, DecodeError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes(buf[..4].try_into().unwrap());
    if len == 0 {
        return Err(malformed("message length is 0"));
    }
    if len > max_len {
        return Err(DecodeError {
            code: ErrorCode::FrameTooLarge,
            text: format!("message length {len} exceeds the limit of {max_len} bytes"),
        });
    }
    let total = 4 + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let kind = buf[4];
    let body = &buf[5..total];
    let msg = decode_body(kind, body)?;
    Ok(Some((msg, total)))
}

fn decode_body(kind: u8, body: &[u8]) -> Result<Msg<'_>, DecodeError> {
    match kind {
        KIND_HELLO => {
            let mut r = Rd {
                b: body,
                what: "HELLO",
            };
            if r.take(4)? != MAGIC {
                return Err(malformed("HELLO does not start with the magic \"RPLY\""));
            }
            let version = r.u16()?;
            let flags = r.u16()?;
            if flags & !HELLO_FLAG_RESUME != 0 {
                return Err(malformed(format!(
                    "HELLO sets reserved flag bits {:#06x}",
                    flags & !HELLO_FLAG_RESUME
                )));
            }
            let id_len = r.u8()? as usize;
            let id = r.take(id_len)?;
            let cred_len = r.u8()? as usize;
            let credential = r.take(cred_len)?;
            r.done()?;
            let match_id = std::str::from_utf8(id).map_err(|_| DecodeError {
                code: ErrorCode::BadMatchId,
                text: "match id is not UTF-8; use A-Z a-z 0-9 _ -".into(),
            })?;
            Ok(Msg::Hello {
                version,
                resume: flags & HELLO_FLAG_RESUME != 0,
                match_id,
                credential,
            })
        }
        KIND_FRAME => {
            let mut r = Rd {
                b: body,
                what: "FRAME",
            };
            let seq = r.u64()?;
            let tick = r.u64()?;
            let frame_kind = r.u8()?;
            let crc32c = r.u32()?;
            Ok(Msg::Frame {
                seq,
                tick,
                frame_kind,
                crc32c,
                payload: r.b,
            })
        }
        KIND_END => {
            let mut r = Rd {
                b: body,
                what: "END",
            };
            let last_seq = r.u64()?;
            r.done()?;
            Ok(Msg::End { last_seq })
        }
        KIND_WELCOME => {
            let mut r = Rd {
                b: body,
                what: "WELCOME",
            };
            let version = r.u16()?;
            let ack_mode = match r.u8()? {
                0 => AckMode::Durable,
                1 => AckMode::Received,
                m => return Err(malformed(format!("WELCOME has unknown ack mode {m}"))),
            };
            let last_seq = r.u64()?;
            let max_frame_bytes = r.u32()?;
            r.done()?;
            Ok(Msg::Welcome {
                version,
                ack_mode,
                last_seq,
                max_frame_bytes,
            })
        }
        KIND_ACK => {
            let mut r = Rd {
                b: body,
                what: "ACK",
            };
            let seq = r.u64()?;
            r.done()?;
            Ok(Msg::Ack { seq })
        }
        KIND_ERROR => {
            let mut r = Rd {
                b: body,
                what: "ERROR",
            };
            let code = r.u16()?;
            let n = r.u16()? as usize;
            let t = r.take(n)?;
            r.done()?;
            let text = std::str::from_utf8(t).map_err(|_| malformed("ERROR text is not UTF-8"))?;
            Ok(Msg::Error { code, text })
        }
        KIND_SEALED => {
            let mut r = Rd {
                b: body,
                what: "SEALED",
            };
            let last_seq = r.u64()?;
            let file_bytes = r.u64()?;
            r.done()?;
            Ok(Msg::Sealed {
                last_seq,
                file_bytes,
            })
        }
        k => Err(malformed(format!("unknown message kind {k:#04x}"))),
    }
}

/// Checks a FRAME's payload CRC32C.
pub fn check_crc(seq: u64, crc: u32, payload: &[u8]) -> Result<(), DecodeError> {
    let got = crc32c::crc32c(payload);
    if got == crc {
        Ok(())
    } else {
        Err(DecodeError {
            code: ErrorCode::BadCrc,
            text: format!("frame {seq}: payload CRC32C is {got:#010x}, the frame says {crc:#010x}"),
        })
    }
}

fn put_header(out: &mut Vec<u8>, kind: u8, body_len: usize) {
    out.extend_from_slice(&((body_len + 1) as u32).to_le_bytes());
    out.push(kind);
}

/// Appends an encoded message to `out`.
pub fn encode(out: &mut Vec<u8>, msg: &Msg<'_>) {
    match *msg {
        Msg::Hello {
            version,
            resume,
            match_id,
            credential,
        } => {
            assert!(match_id.len() <= 255 && credential.len() <= 255);
            put_header(
                out,
                KIND_HELLO,
                4 + 2 + 2 + 1 + match_id.len() + 1 + credential.len(),
            );
            out.extend_from_slice(&MAGIC);
            out.extend_from_slice(&version.to_le_bytes());
            let flags: u16 = if resume { HELLO_FLAG_RESUME } else { 0 };
            out.extend_from_slice(&flags.to_le_bytes());
            out.push(match_id.len() as u8);
            out.extend_from_slice(match_id.as_bytes());
            out.push(credential.len() as u8);
            out.extend_from_slice(credential);
        }
        Msg::Frame {
            seq,
            tick,
            frame_kind,
            crc32c,
            payload,
        } => {
            put_header(out, KIND_FRAME, 8 + 8 + 1 + 4 + payload.len());
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&tick.to_le_bytes());
            out.push(frame_kind);
            out.extend_from_slice(&crc32c.to_le_bytes());
            out.extend_from_slice(payload);
        }
        Msg::End { last_seq } => {
            put_header(out, KIND_END, 8);
            out.extend_from_slice(&last_seq.to_le_bytes());
        }
        Msg::Welcome {
            version,
            ack_mode,
            last_seq,
            max_frame_bytes,
        } => {
            put_header(out, KIND_WELCOME, 2 + 1 + 8 + 4);
            out.extend_from_slice(&version.to_le_bytes());
            out.push(ack_mode as u8);
            out.extend_from_slice(&last_seq.to_le_bytes());
            out.extend_from_slice(&max_frame_bytes.to_le_bytes());
        }
        Msg::Ack { seq } => {
            put_header(out, KIND_ACK, 8);
            out.extend_from_slice(&seq.to_le_bytes());
        }
        Msg::Error { code, text } => {
            let t = &text.as_bytes()[..text.len().min(u16::MAX as usize)];
            put_header(out, KIND_ERROR, 2 + 2 + t.len());
            out.extend_from_slice(&code.to_le_bytes());
            out.extend_from_slice(&(t.len() as u16).to_le_bytes());
            out.extend_from_slice(t);
        }
        Msg::Sealed {
            last_seq,
            file_bytes,
        } => {
            put_header(out, KIND_SEALED, 16);
            out.extend_from_slice(&last_seq.to_le_bytes());
            out.extend_from_slice(&file_bytes.to_le_bytes());
        }
    }
}

/// Encodes a FRAME, computing the payload CRC32C.
pub fn encode_frame(out: &mut Vec<u8>, seq: u64, tick: u64, frame_kind: u8, payload: &[u8]) {
    let crc32c = crc32c::crc32c(payload);
    encode(
        out,
        &Msg::Frame {
            seq,
            tick,
            frame_kind,
            crc32c,
            payload,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(m: Msg<'_>) {
        let mut v = Vec::new();
        encode(&mut v, &m);
        let (d, n) = decode(&v, 1 << 20).unwrap().unwrap();
        assert_eq!(n, v.len());
        assert_eq!(d, m);
        // every strict prefix is incomplete, never an error
        for cut in 0..v.len() {
            assert_eq!(decode(&v[..cut], 1 << 20).unwrap(), None, "prefix {cut}");
        }
    }

    #[test]
    fn all_messages_roundtrip() {
        roundtrip(Msg::Hello {
            version: 1,
            resume: true,
            match_id: "m-1_x",
            credential: b"tok",
        });
        roundtrip(Msg::Frame {
            seq: 7,
            tick: 99,
            frame_kind: FRAME_KEY,
            crc32c: crc32c::crc32c(b"abc"),
            payload: b"abc",
        });
        roundtrip(Msg::Frame {
            seq: 1,
            tick: 0,
            frame_kind: FRAME_DELTA,
            crc32c: 0,
            payload: b"",
        });
        roundtrip(Msg::End { last_seq: 12 });
        roundtrip(Msg::Welcome {
            version: 1,
            ack_mode: AckMode::Durable,
            last_seq: 5,
            max_frame_bytes: 1 << 20,
        });
        roundtrip(Msg::Ack { seq: 3 });
        roundtrip(Msg::Error {
            code: ErrorCode::SeqGap as u16,
            text: "gap",
        });
        roundtrip(Msg::Sealed {
            last_seq: 3,
            file_bytes: 4096,
        });
    }

    #[test]
    fn documented_hello_example_decodes() {
        let bytes = [
            0x0d, 0, 0, 0, 0x01, 0x52, 0x50, 0x4c, 0x59, 1, 0, 0, 0, 2, b'm', b'1', 0,
        ];
        let (m, n) = decode(&bytes, 1024).unwrap().unwrap();
        assert_eq!(n, bytes.len());
        assert_eq!(
            m,
            Msg::Hello {
                version: 1,
                resume: false,
                match_id: "m1",
                credential: b""
            }
        );
    }

    #[test]
    fn frame_header_constant_matches_encoding() {
        let mut v = Vec::new();
        encode_frame(&mut v, 1, 1, FRAME_DELTA, &[0u8; 10]);
        assert_eq!(v.len(), FRAME_HEADER_BYTES + 10);
    }

    #[test]
    fn bad_input_is_named() {
        assert_eq!(
            decode(&[0, 0, 0, 0, 1], 100).unwrap_err().code,
            ErrorCode::Malformed
        );
        assert_eq!(
            decode(&[200, 0, 0, 0], 100).unwrap_err().code,
            ErrorCode::FrameTooLarge
        );
        assert_eq!(
            decode(&[1, 0, 0, 0, 0x7f], 100).unwrap_err().code,
            ErrorCode::Malformed
        );
        let mut v = Vec::new();
        encode(
            &mut v,
            &Msg::Hello {
                version: 1,
                resume: false,
                match_id: "a",
                credential: b"",
            },
        );
        v[5] = b'X';
        assert!(decode(&v, 100).unwrap_err().text.contains("magic"));
        assert_eq!(check_crc(4, 1, b"x").unwrap_err().code, ErrorCode::BadCrc);
    }

    #[test]
    fn match_ids() {
        for ok in ["a", "m-1", "A_b-9", &"x".repeat(64)] {
            validate_match_id(ok).unwrap();
        }
        for bad in [
            "",
            "../x",
            "a/b",
            "a.b",
            "-a",
            &"x".repeat(65),
            "é",
            "a b",
            "a\0",
        ] {
            assert_eq!(
                validate_match_id(bad).unwrap_err().code,
                ErrorCode::BadMatchId,
                "{bad:?}"
            );
        }
    }
}

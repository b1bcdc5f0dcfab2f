//! The recorder's log: `tracing` events through `tracing-subscriber`, levelled and
//! timestamped (RFC 3339, UTC), as text or one JSON object per line, on stderr or in a
//! file that SIGHUP reopens (see [`reopen`]).
//!
//! Filter: `server.log-level` (EnvFilter directives: `debug`, `info,recorder::startup=debug`),
//! else `RUST_LOG`, else `info`. Targets worth knowing: `recorder::startup` (the
//! per-worker ring set-up lines, debug), `recorder::access` (the HTTP access log, info,
//! only with `server.access-log`); every other event has its module path as target.

use crate::config::server::{LogFormat, ServerConfig};
use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Target of the per-worker start-up lines (debug level).
pub const STARTUP: &str = "recorder::startup";
/// Target of the HTTP access log (info level, with `server.access-log`).
pub const ACCESS: &str = "recorder::access";

/// Parses a filter as `server.log-level` or `RUST_LOG` would give it.
pub fn parse_filter(s: &str) -> Result<EnvFilter, String> {
    EnvFilter::builder().parse(s).map_err(|e| {
        format!("log filter {s:?} is not valid ({e}); use a level such as info or debug, or directives such as info,recorder::startup=debug")
    })
}

/// Where the log goes and what it was set up from (for the first log line).
#[derive(Clone, Debug)]
pub struct LogSetup {
    pub filter: String,
    pub filter_from: &'static str,
    pub file: Option<PathBuf>,
}

struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl LogFile {
    fn open(path: &Path) -> io::Result<File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    }
}

static FILE: OnceLock<Arc<LogFile>> = OnceLock::new();

#[derive(Clone)]
struct Sink(Option<Arc<LogFile>>);

enum SinkWriter<'a> {
    Stderr(io::Stderr),
    File(&'a LogFile),
}

impl Write for SinkWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            SinkWriter::Stderr(s) => s.write(buf),
            SinkWriter::File(f) => f.file.lock().unwrap_or_else(|e| e.into_inner()).write(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        // one event = one write_all: hold the lock for all of it so lines never interleave
        match self {
            SinkWriter::Stderr(s) => s.lock().write_all(buf),
            SinkWriter::File(f) => f
                .file
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_all(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = SinkWriter<'a>;
    fn make_writer(&'a self) -> SinkWriter<'a> {
        match &self.0 {
            None => SinkWriter::Stderr(io::stderr()),
            Some(f) => SinkWriter::File(f),
        }
    }
}

/// Installs the process-wide subscriber for `recorder serve`. Errors say what to change.
pub fn init(cfg: &ServerConfig) -> Result<LogSetup, String> {
    let env = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let (text, from) = if !cfg.log_level.is_empty() {
        (cfg.log_level.clone(), "log-level")
    } else if let Some(e) = env {
        (e, "RUST_LOG")
    } else {
        ("info".to_string(), "default")
    };
    let filter = parse_filter(&text).map_err(|e| format!("{from}: {e}"))?;
    let sink = if cfg.log_file.is_empty() {
        Sink(None)
    } else {
        let path = PathBuf::from(&cfg.log_file);
        let file = LogFile::open(&path)
            .map_err(|e| format!("cannot open log-file {}: {e}", path.display()))?;
        let lf = Arc::new(LogFile {
            path,
            file: Mutex::new(file),
        });
        let _ = FILE.set(lf.clone());
        Sink(Some(lf))
    };
    let ansi = sink.0.is_none() && io::stderr().is_terminal();
    let file = sink.0.as_ref().map(|f| f.path.clone());
    let text_layer = (cfg.log_format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(sink.clone())
            .with_ansi(ansi)
            .with_target(true)
    });
    let json_layer = (cfg.log_format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(sink.clone())
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(text_layer)
        .with(json_layer)
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    Ok(LogSetup {
        filter: text,
        filter_from: from,
        file,
    })
}

/// Reopens `server.log-file` (after logrotate moved it). `Ok(None)`: logging to stderr.
pub fn reopen() -> io::Result<Option<PathBuf>> {
    let Some(f) = FILE.get() else {
        return Ok(None);
    };
    let new = LogFile::open(&f.path)?;
    *f.file.lock().unwrap_or_else(|e| e.into_inner()) = new;
    Ok(Some(f.path.clone()))
}

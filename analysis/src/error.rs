//! One error type for the crate: every message names what was being read (file, line,
//! column) and what to do about it.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where in an input file a problem was found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    /// 1-based line number (the header is line 1).
    pub line: Option<u64>,
    /// 1-based column number and the column's header name.
    pub column: Option<(usize, String)>,
}

#[derive(Debug)]
pub enum Error {
    /// Input that could not be read or does not follow docs/results.md.
    Input { at: Location, message: String },
    /// An I/O error while reading or writing `path`.
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    /// Drawing a chart failed.
    Chart { chart: String, message: String },
    /// The request cannot be answered from the data (no ok runs, unknown metric, ...).
    Usage(String),
}

impl Error {
    pub fn input(
        file: &Path,
        line: Option<u64>,
        column: Option<(usize, &str)>,
        message: impl Into<String>,
    ) -> Self {
        Error::Input {
            at: Location {
                file: file.to_path_buf(),
                line,
                column: column.map(|(i, n)| (i, n.to_string())),
            },
            message: message.into(),
        }
    }

    pub fn io(path: &Path, action: &'static str, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }

    pub fn chart(chart: &str, e: impl fmt::Display) -> Self {
        Error::Chart {
            chart: chart.to_string(),
            message: e.to_string(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Input { at, message } => {
                write!(f, "{}", at.file.display())?;
                if let Some(l) = at.line {
                    write!(f, ":{l}")?;
                }
                if let Some((i, name)) = &at.column {
                    write!(f, ": column {i} ({name})")?;
                }
                write!(f, ": {message}")
            }
            Error::Io {
                path,
                action,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
            Error::Chart { chart, message } => write!(f, "drawing chart {chart} failed: {message}"),
            Error::Usage(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

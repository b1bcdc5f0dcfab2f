//! The replay recorder and its io_uring lab engine.
//!
//! Layers, bottom up:
//! - `sys`: the only module with `unsafe`: raw io_uring rings (every setup flag, own
//!   mapping for NO_MMAP / REGISTERED_FD_ONLY), registered memory, file and socket
//!   syscalls. No policy.
//! - `config`: one typed configuration per run, one knob table, one `validate()`.
//! - `uring`: builds a ring from the configuration; requested vs effective.
//! - `probe`: what this kernel and device accept.
//! - `fileio`: file I/O options (opcodes, registration, O_DIRECT, durability) on rings or
//!   on the plain blocking backend; `bench`: the `io-bench` benchmark.
//! - `protocol`, `storage`, `http`, `server`: the recorder itself; `tier`: sealed replays
//!   on an S3-compatible object store (uploads, fetches, several nodes).
#![deny(unsafe_code)]

/// The package version (Cargo.toml).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit this was built from ("unknown" outside a checkout); see build.rs.
pub const GIT_REVISION: &str = env!("GIT_REVISION");

pub mod bench;
pub mod cli;
pub mod config;
pub mod fileio;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod nopbench;
pub mod probe;
pub mod protocol;
pub mod server;
pub mod storage;
#[allow(unsafe_code)]
pub mod sys;
pub mod tier;
pub mod uring;

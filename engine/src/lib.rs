//! The replay recorder and its io_uring lab engine.
//!
//! Layers, bottom up:
//! - `sys`: the only module with `unsafe`: raw io_uring rings (every setup flag, own
//!   mapping for NO_MMAP / REGISTERED_FD_ONLY), registered memory, file syscalls. No policy.
//! - `config`: one typed configuration per run, one knob table, one `validate()`.
//! - `probe`: what this kernel and device accept.
//! - `fileio`: file I/O options (opcodes, registration, O_DIRECT, durability) on rings or
//!   on the plain blocking backend; the `io-bench` benchmark.
//! - `protocol`, `storage`, `http`, `server`: the recorder itself.

pub mod config;
pub mod protocol;

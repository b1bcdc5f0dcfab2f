//! The only place in the engine with `unsafe`: raw io_uring rings, registered memory,
//! file and socket syscalls. Mechanism only, no policy.
//!
//! Owners: `ring` and `bufring` (ring setup, mapping, submit/reap, registration, probing,
//! provided-buffer rings); `mem` and `fs` and `fileops` (aligned arena, file syscalls,
//! file opcodes with owned buffers); `netops` (socket opcodes with owned buffers).

pub mod bufring;
pub mod features;
pub mod fileops;
pub mod fs;
pub mod fsops;
pub mod limits;
pub mod mem;
pub mod mux;
pub mod netops;
pub mod register;
pub mod ring;
pub mod stats;
pub mod target;

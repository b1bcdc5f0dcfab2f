//! The harness: synthetic DS and client load, sweeps over engine and block-layer settings,
//! telemetry and anchors. The `harness` binary is a thin CLI over these modules.
#![deny(unsafe_code)]

pub mod block;
pub mod clients;
pub mod ds;
pub mod experiment;
pub mod fleet;
pub mod httpc;
pub mod placement;
pub mod power;
pub mod sweep;
pub mod target;
pub mod telemetry;
pub mod util;
pub mod validate;

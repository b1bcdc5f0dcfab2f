//! The harness: synthetic DS and client load, sweeps over engine and block-layer settings,
//! telemetry and anchors. The `harness` binary is a thin CLI over these modules.
#![deny(unsafe_code)]

pub mod clients;
pub mod ds;
pub mod httpc;
pub mod util;

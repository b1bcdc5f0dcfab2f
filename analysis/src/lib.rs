//! uring-lab `analysis`: reads sweep result directories (docs/results.md) and turns them
//! into reports with charts, paired regression verdicts and the winning configuration.
//! It reads result files only and does not link the engine.

pub mod aggregate;
pub mod bench;
pub mod best;
pub mod charts;
pub mod compare;
pub mod data;
pub mod doc;
pub mod error;
pub mod fixture;
pub mod power;
pub mod report;
pub mod stats;

pub use error::{Error, Result};

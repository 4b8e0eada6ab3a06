//! One file per `steer` subcommand: its arguments and its handler.
//! `main.rs` only dispatches.

pub mod flows;
pub mod hash;
pub mod lab;
pub mod nic;
pub mod restore;
pub mod run;
pub mod stats;

use std::time::Duration;

use anyhow::{bail, Context as _, Result};

/// A single-threaded runtime: steer's async work is a ticker, signals and the metrics server.
pub fn tokio_rt() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the tokio runtime")
}

/// `--interval` in seconds, checked.
pub fn interval(secs: f64) -> Result<Duration> {
    if !(0.05..=3600.0).contains(&secs) {
        bail!("invalid --interval {secs}: must be between 0.05 and 3600 seconds");
    }
    Ok(Duration::from_secs_f64(secs))
}

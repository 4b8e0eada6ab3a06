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
use tokio::signal::unix::{signal, Signal, SignalKind};

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

/// What the signals and a ticker ask a command for.
pub enum Event {
    Stop,
    Reload,
    Tick,
}

/// SIGINT and SIGTERM stop every command the same way (cleanly, putting back
/// what it changed); SIGHUP asks `steer run` to reload and is ignored elsewhere.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    pub fn new() -> Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    pub async fn next(&mut self, ticker: &mut tokio::time::Interval) -> Event {
        tokio::select! {
            _ = self.term.recv() => Event::Stop,
            _ = self.int.recv() => Event::Stop,
            _ = self.hup.recv() => Event::Reload,
            _ = ticker.tick() => Event::Tick,
        }
    }

    /// Waits for SIGINT or SIGTERM.
    pub async fn stopped(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

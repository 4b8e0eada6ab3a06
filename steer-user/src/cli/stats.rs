//! `steer stats`: per-CPU rates of a steer run (or, without one, softirq and softnet).

use std::io::{IsTerminal as _, Write as _};

use anyhow::Result;
use clap::Args;
use steer::stats;

#[derive(Args)]
pub struct StatsArgs {
    /// Interface whose `steer run` to read (works without one: softirq/softnet only).
    #[arg(long, value_parser = steer::iface::parse_name)]
    iface: String,
    /// Seconds between two tables (rates are over this interval).
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Print one interval and exit (for scripts).
    #[arg(long)]
    once: bool,
    /// One JSON object per interval (one per line) instead of the table.
    #[arg(long)]
    json: bool,
}

pub async fn run(a: StatsArgs) -> Result<()> {
    let period = super::interval(a.interval)?;
    let mut source = stats::Source::open(&a.iface)?;
    let tty = std::io::stdout().is_terminal() && !a.json;
    let mut prev = source.sample()?;
    let mut ticker = tokio::time::interval(period);
    ticker.tick().await;
    let mut signals = super::Signals::new()?;
    loop {
        match signals.next(&mut ticker).await {
            super::Event::Stop => return Ok(()),
            super::Event::Reload => continue,
            super::Event::Tick => {}
        }
        let now = source.sample()?;
        let report = stats::Report::new(&a.iface, &prev, &now);
        let mut out = std::io::stdout().lock();
        if a.json {
            writeln!(out, "{}", serde_json::to_string(&report)?)?;
        } else if tty {
            // Home and clear: redraw in place, like top.
            write!(out, "\x1b[H\x1b[2J{}", stats::render_table(&report))?;
        } else {
            writeln!(out, "{}", stats::render_table(&report))?;
        }
        out.flush()?;
        if a.once {
            return Ok(());
        }
        prev = now;
    }
}

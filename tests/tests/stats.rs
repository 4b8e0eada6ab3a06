//! `steer stats`, `--metrics`, `--config` + SIGHUP and the capability set,
//! against a real `steer run` in a veth lab with real UDP traffic between
//! the lab's namespaces (generic XDP: it sees socket traffic from the peer).

use std::{
    net::UdpSocket,
    process::Output,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use steer::{pins::Pinned, stats::Snapshot};
use steer_tests::{in_ns, require_root, Lab, SteerRun};

/// UDP from the tx namespace to the rx namespace, many source ports (so many
/// flows spread over the buckets), until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<u64>>>,
}

impl Traffic {
    fn start(lab: &Lab) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx_ns, rx_ip, s) = (lab.tx_ns.clone(), lab.rx_ip, stop.clone());
        let handle = std::thread::spawn(move || -> Result<u64> {
            in_ns(&tx_ns, move || -> Result<u64> {
                let socks: Vec<UdpSocket> =
                    (0..64).map(|_| UdpSocket::bind("0.0.0.0:0")).collect::<std::io::Result<_>>()?;
                let mut sent = 0u64;
                while !s.load(Ordering::Relaxed) {
                    for sock in &socks {
                        // Nobody listens: the receiver answers ICMP, which is fine.
                        if sock.send_to(b"steer-stats-test", (rx_ip, 9)).is_ok() {
                            sent += 1;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Ok(sent)
            })?
        });
        Self { stop, handle: Some(handle) }
    }

    fn stop(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take() {
            Some(h) => h.join().map_err(|_| anyhow::anyhow!("traffic thread panicked"))?,
            None => Ok(0),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn ok(out: Output, what: &str) -> Result<String> {
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// One `steer stats --json --once` object.
fn stats_json(lab: &Lab, interval: &str) -> Result<Value> {
    let out =
        lab.steer(&["stats", "--iface", &lab.rx_if, "--json", "--once", "--interval", interval]).output()?;
    let text = ok(out, "steer stats --json --once")?;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "--once prints exactly one JSON line: {text}");
    serde_json::from_str(lines[0]).context("parsing steer stats --json")
}

fn online_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn pinned_snapshot(iface: &str) -> Result<Snapshot> {
    let p = Pinned::open(iface)?;
    Ok(Snapshot::read(&p.stats, &p.targets)?)
}

fn totals_field(v: &Value, cpu: usize, field: &str) -> u64 {
    v["totals"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["cpu"] == cpu))
        .and_then(|t| t[field].as_u64())
        .unwrap_or(0)
}

#[test]
fn stats_json_rates_rise_on_every_steered_cpu_and_totals_match_the_maps() -> Result<()> {
    require_root();
    let lab = Lab::new()?;
    let n = online_cpus();
    let cpus = format!("0-{}", n - 1);
    let run = SteerRun::start(&lab, &["--xdp-mode", "skb", "--cpus", &cpus])?;
    let traffic = Traffic::start(&lab);
    std::thread::sleep(Duration::from_millis(300));
    let live = stats_json(&lab, "1")?;
    assert_eq!(live["attached"], "generic", "{live}");
    assert_eq!(live["iface"].as_str(), Some(lab.rx_if.as_str()));
    let rows = live["cpus"].as_array().context("cpus array")?;
    for cpu in 0..n {
        let row = rows.iter().find(|r| r["cpu"] == cpu).with_context(|| format!("no row for CPU {cpu}"))?;
        assert_eq!(row["steering"], true, "{row}");
        let inn = row["steered_in_pps"].as_f64().unwrap_or(0.0);
        assert!(inn > 10.0, "CPU {cpu} received no steered packets: {row}");
        for f in ["softirq_pct", "idle_pct"] {
            let p = row[f].as_f64().with_context(|| format!("{f} missing"))?;
            assert!((0.0..=100.0).contains(&p), "{f} = {p}");
        }
    }
    let imb = live["imbalance"].as_f64().context("imbalance")?;
    assert!(imb >= 1.0 && imb < n as f64, "imbalance {imb}");
    let sent = traffic.stop()?;
    assert!(sent > 1000, "only {sent} packets sent");

    // Quiet now: the cumulative totals must equal what the pinned maps say.
    std::thread::sleep(Duration::from_millis(200));
    let before = pinned_snapshot(&lab.rx_if)?;
    let quiet = stats_json(&lab, "0.2")?;
    let after = pinned_snapshot(&lab.rx_if)?;
    let mut steered = 0;
    for cpu in 0..n {
        let c = before.per_cpu[cpu];
        for (field, want, want_after) in [
            ("xdp_rx", c.seen, after.per_cpu[cpu].seen),
            ("redirected", c.redirected, after.per_cpu[cpu].redirected),
            ("steered_in", before.steered_in[cpu], after.steered_in[cpu]),
        ] {
            let got = totals_field(&quiet, cpu, field);
            // A stray packet (IPv6 ND) may arrive between the reads: bound it.
            assert!(
                got >= want && got <= want_after,
                "CPU {cpu} {field}: json {got}, maps {want}..{want_after}"
            );
        }
        steered += before.steered_in[cpu];
    }
    assert!(steered > 1000, "steered {steered}");
    let (ok_exit, err) = run.stop()?;
    assert!(ok_exit, "steer run failed: {err}");
    Ok(())
}

#[test]
fn stats_without_steer_shows_softirq_and_softnet_only() -> Result<()> {
    require_root();
    let lab = Lab::new()?;
    let v = stats_json(&lab, "0.3")?;
    assert!(v["attached"].is_null(), "{v}");
    let rows = v["cpus"].as_array().context("cpus")?;
    assert_eq!(rows.len(), online_cpus());
    for r in rows {
        assert!(r["xdp_rx_pps"].is_null() && r["steered_in_pps"].is_null(), "{r}");
        assert!(r["softirq_pct"].is_number() && r["softnet_processed_pps"].is_number(), "{r}");
    }
    // softnet totals are the kernel's file, as read by the test library.
    let processed = steer_tests::softnet_processed()?;
    for (cpu, p) in processed.iter().enumerate() {
        let got = totals_field(&v, cpu, "softnet_processed");
        assert!(got <= *p && got > 0, "CPU {cpu}: json {got}, file now {p}");
    }
    // Table, piped: plain lines (no escape codes), 80 columns.
    let out =
        ok(lab.steer(&["stats", "--iface", &lab.rx_if, "--once", "--interval", "0.2"]).output()?, "stats")?;
    assert!(!out.contains('\x1b'), "{out}");
    assert!(out.contains("no steer attached"), "{out}");
    for l in out.lines() {
        assert!(l.chars().count() <= 80, "line wider than 80 columns: {l:?}");
    }
    // A typo is an error, not an idle machine.
    let out = lab.steer(&["stats", "--iface", "nosuch0", "--once"]).output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"nosuch0\" does not exist"));
    Ok(())
}

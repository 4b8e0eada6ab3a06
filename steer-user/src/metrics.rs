//! `steer run --metrics ADDR`: Prometheus/OpenMetrics text for a sidecar
//! scraper. Every scrape takes a fresh [`Sample`](crate::stats::Sample)
//! through the same code as `steer stats --json`, so both agree; the text is
//! written by prometheus-client, served by a minimal HTTP/1.1 responder on
//! tokio (GET /metrics only, one request per connection).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};
use steer_common::PassReason;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use crate::{
    error::{Error, Result},
    stats::{CpuTotals, Source},
};

/// Port used when `--metrics` gives none.
pub const DEFAULT_PORT: u16 = 9847;

/// Parses `--metrics`: "PORT", ":PORT", "IP", or "IP:PORT". Without an IP it
/// listens on loopback only: exposing counters is the user's explicit choice.
pub fn parse_addr(s: &str) -> Result<SocketAddr> {
    let bad = || Error::BadValue {
        what: "--metrics",
        value: format!("\"{s}\""),
        why: "expected PORT, :PORT, IP or IP:PORT (e.g. 127.0.0.1:9847, [::1]:9847)".into(),
    };
    let t = s.trim();
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    if let Ok(port) = t.strip_prefix(':').unwrap_or(t).parse::<u16>() {
        return Ok(SocketAddr::new(loopback, port));
    }
    if let Ok(a) = t.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = t.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    Err(bad())
}

/// Samples the interface on every scrape.
#[derive(Debug)]
struct SteerCollector {
    iface: String,
    source: Arc<Mutex<SourceCell>>,
}

/// `Source` holds map fds (not `Debug`): a thin wrapper for the collector.
struct SourceCell(Source);

impl std::fmt::Debug for SourceCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Source")
    }
}

type Labels = Vec<(&'static str, String)>;

fn cpu(t: &CpuTotals) -> Labels {
    vec![("cpu", t.cpu.to_string())]
}

fn counter_family<N: prometheus_client::encoding::EncodeCounterValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, N)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn info(enc: &mut DescriptorEncoder, name: &str, help: &str, labels: Labels) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Info)?;
    m.encode_info(&labels)
}

impl Collector for SteerCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let sample = {
            let mut src = self.source.lock().map_err(|_| std::fmt::Error)?;
            src.0.sample().map_err(|e| {
                log::error!("metrics scrape: {e}");
                std::fmt::Error
            })?
        };
        let totals = sample.totals();
        let e = &mut enc;
        let opt = |f: fn(&CpuTotals) -> Option<u64>| {
            totals.iter().filter_map(move |t| f(t).map(|v| (cpu(t), v))).collect::<Vec<_>>()
        };
        let all = |f: fn(&CpuTotals) -> u64| totals.iter().map(move |t| (cpu(t), f(t))).collect::<Vec<_>>();
        info(e, "steer_build", "steer's version", vec![("version", env!("CARGO_PKG_VERSION").into())])?;
        let mode = sample.run.as_ref().filter(|_| sample.xdp.is_some()).map(|r| r.mode.clone());
        info(
            e,
            "steer_attach",
            "Interface and XDP attach mode of the running steer (mode \"none\": not attached)",
            vec![("iface", self.iface.clone()), ("mode", mode.unwrap_or_else(|| "none".into()))],
        )?;
        let ncpus = sample.run.as_ref().map_or(0, |r| r.cpus.len() as i64);
        gauge(e, "steer_steering_cpus", "Number of CPUs steer spreads packets over", ncpus)?;
        counter_family(
            e,
            "steer_packets",
            "Packets the XDP program ran on, by receiving CPU",
            opt(|t| t.xdp_rx),
        )?;
        counter_family(
            e,
            "steer_redirected",
            "Packets steered (into the CPUMAP, or passed in place when local), by receiving CPU",
            opt(|t| t.redirected),
        )?;
        counter_family(
            e,
            "steer_local",
            "Packets passed in place on the CPU they arrived on (steered to it, or kept), by CPU",
            opt(|t| t.local),
        )?;
        counter_family(
            e,
            "steer_kept",
            "Packets steered to another CPU but processed where they arrived, which was not \
             handing packets to that CPU (--spread busy), by CPU",
            opt(|t| t.kept),
        )?;
        counter_family(
            e,
            "steer_inner",
            "Tunnelled packets steered by their inner flow (--inner), by receiving CPU",
            opt(|t| t.inner),
        )?;
        counter_family(
            e,
            "steer_steered_in",
            "Packets redirected to this CPU, by target CPU",
            opt(|t| t.steered_in),
        )?;
        let mut passed = Vec::new();
        if let Some(x) = &sample.xdp {
            for (n, c) in x.per_cpu.iter().enumerate() {
                if !totals.iter().any(|t| t.cpu as usize == n) {
                    continue;
                }
                for r in PassReason::ALL {
                    passed.push((
                        vec![("cpu", n.to_string()), ("reason", r.name().to_string())],
                        c.passed[r as usize],
                    ));
                }
            }
        }
        counter_family(
            e,
            "steer_passed",
            "Packets passed up the stack unsteered, by CPU and reason",
            passed,
        )?;
        counter_family(
            e,
            "steer_redirect_errors",
            "Redirects the CPUMAP refused (passed instead), by receiving CPU",
            opt(|t| t.redirect_err),
        )?;
        let mut cm = Vec::new();
        for t in &totals {
            if let (Some(q), Some(k)) = (t.cpumap_enqueue_drops, t.cpumap_kthread_drops) {
                cm.push((vec![("cpu", t.cpu.to_string()), ("stage", "enqueue".into())], q));
                cm.push((vec![("cpu", t.cpu.to_string()), ("stage", "kthread".into())], k));
            }
        }
        counter_family(e, "steer_cpumap_drops", "Frames the CPUMAP dropped, by CPU and stage", cm)?;
        if let Some(b) = &sample.buckets {
            let st = &b.state;
            counter_family(
                e,
                "steer_bucket_moves",
                "Indirection-table buckets --rebalance moved (each once idle), by outcome",
                [("done", st.moves), ("planned", st.planned), ("given_up", st.cancelled)]
                    .map(|(k, v)| (vec![("outcome", k.to_string())], v)),
            )?;
            gauge(
                e,
                "steer_bucket_moves_pending",
                "Buckets asked to move and not idle yet",
                st.pending as i64,
            )?;
            let mut m = e.encode_descriptor(
                "steer_rebalance_imbalance",
                "max/mean of per-CPU load at the balancer's last decision (before) and as its moves make it (after)",
                None,
                MetricType::Gauge,
            )?;
            for (when, milli) in [("before", st.imbalance_before_milli), ("after", st.imbalance_after_milli)]
            {
                if milli > 0 {
                    ConstGauge::new(milli as f64 / 1000.0)
                        .encode(m.encode_family(&vec![("when", when.to_string())])?)?;
                }
            }
            gauge(
                e,
                "steer_rebalance_unsplittable_buckets",
                "Buckets whose load alone exceeds a CPU's fair share times the threshold",
                st.unsplittable as i64,
            )?;
        }
        if let Some(rfs) = sample.rfs_totals() {
            counter_family(
                e,
                "steer_rfs_hits",
                "Packets steered by the RFS flow table, by receiving CPU",
                opt(|t| t.rfs_hits),
            )?;
            let events = rfs.iter().filter(|(k, _)| **k != "flows" && **k != "hits");
            counter_family(
                e,
                "steer_rfs_events",
                "RFS events: misses, moves, deferred moves, inserts, removals, UDP expiries, evictions, hook events",
                events.map(|(k, v)| (vec![("event", k.to_string())], *v)).collect::<Vec<_>>(),
            )?;
            let flows = rfs.get("flows").copied().unwrap_or(0);
            gauge(e, "steer_rfs_flows", "Entries in the RFS flow table", flows as i64)?;
        }
        counter_family(
            e,
            "steer_softirq_seconds",
            "Seconds each CPU spent serving softirqs (/proc/stat)",
            totals.iter().map(|t| (cpu(t), t.softirq_s)).collect::<Vec<_>>(),
        )?;
        counter_family(
            e,
            "steer_idle_seconds",
            "Seconds each CPU was idle (/proc/stat)",
            totals.iter().map(|t| (cpu(t), t.idle_s)).collect::<Vec<_>>(),
        )?;
        counter_family(
            e,
            "steer_softnet_processed",
            "softnet_stat: packets processed",
            all(|t| t.softnet_processed),
        )?;
        counter_family(
            e,
            "steer_softnet_dropped",
            "softnet_stat: backlog drops",
            all(|t| t.softnet_dropped),
        )?;
        counter_family(
            e,
            "steer_softnet_time_squeeze",
            "softnet_stat: NET_RX budget exhausted",
            all(|t| t.time_squeeze),
        )?;
        counter_family(
            e,
            "steer_softnet_received_rps",
            "softnet_stat: RPS IPIs received",
            all(|t| t.received_rps),
        )?;
        counter_family(
            e,
            "steer_softnet_flow_limit",
            "softnet_stat: flow-limit drops",
            all(|t| t.flow_limit),
        )?;
        Ok(())
    }
}

/// The text a scrape returns (also used by tests).
pub fn encode(registry: &Registry) -> Result<String> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .map_err(|_| Error::Ebpf("encoding the metrics failed (see the log)".into()))?;
    Ok(out)
}

/// A registry that samples `iface` on every scrape.
pub fn registry(iface: &str) -> Result<Registry> {
    let source = Source::open(iface)?;
    let mut r = Registry::default();
    r.register_collector(Box::new(SteerCollector {
        iface: iface.to_string(),
        source: Arc::new(Mutex::new(SourceCell(source))),
    }));
    Ok(r)
}

/// Binds `addr` now (so a busy port is an error before anything is attached).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| Error::io(format!("listening on {addr} for --metrics"), e))
}

/// Serves `registry` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, registry: Registry) {
    let registry = Arc::new(registry);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                log::warn!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let reg = registry.clone();
        tokio::spawn(async move {
            if let Err(e) = tokio::time::timeout(Duration::from_secs(10), respond(stream, &reg)).await {
                log::debug!("metrics: {peer}: {e}");
            }
        });
    }
}

/// Reads one request head (bounded) and answers it, then closes.
async fn respond(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 16 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut first = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => match encode(registry) {
            Ok(b) => ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", b),
            Err(e) => ("500 Internal Server Error", "text/plain", format!("{e}\n")),
        },
        ("GET", "/") => ("200 OK", "text/plain", "steer: metrics at /metrics\n".to_string()),
        ("GET", _) => ("404 Not Found", "text/plain", "not found; metrics are at /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", "text/plain", "only GET\n".to_string()),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_defaults_to_loopback() {
        assert_eq!(parse_addr("9100").unwrap(), "127.0.0.1:9100".parse().unwrap());
        assert_eq!(parse_addr(":9100").unwrap(), "127.0.0.1:9100".parse().unwrap());
        assert_eq!(parse_addr("0.0.0.0:80").unwrap(), "0.0.0.0:80".parse().unwrap());
        assert_eq!(parse_addr("[::1]:80").unwrap(), "[::1]:80".parse().unwrap());
        assert_eq!(parse_addr("::1").unwrap(), SocketAddr::new("::1".parse().unwrap(), DEFAULT_PORT));
        let e = parse_addr("localhost:x").unwrap_err().to_string();
        assert!(e.contains("--metrics") && e.contains("localhost:x"), "{e}");
    }
}

//! TCP between the lab's namespaces: request/response like netperf TCP_RR
//! (each connection sends a small request and waits for the response; the
//! round trips give transactions per second and latency percentiles), and a
//! many-stream bulk transfer. Real sockets on both sides; the frames cross
//! the veth as socket traffic, through whatever the scenario attached.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use super::{topology::Topology, LabError, Result};

/// Outcome of one RR run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RrResult {
    pub connections: u32,
    pub secs: f64,
    pub transactions: u64,
    pub tps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Many-stream bulk transfer, Gbit/s (None when not run).
    pub bulk_gbps: Option<f64>,
    /// Context switches on the whole machine per transaction while it ran:
    /// each round trip wakes the client and the server (2), and whatever
    /// carries a packet to another CPU's task adds to it (a cpumap kthread is
    /// switched in, an RPS softirq is not).
    pub switches_per_tx: Option<f64>,
    /// steer scenarios: the share of the requests the XDP program passed in
    /// place (`--local-pass`) instead of queueing them to a CPU's kthread.
    pub in_place: Option<f64>,
}

/// Serves `listener` until `stop`: echoes `size`-byte requests, or (size 0)
/// swallows a bulk stream.
fn serve(listener: TcpListener, size: usize, stop: Arc<AtomicBool>) {
    let _ = listener.set_nonblocking(true);
    let mut workers = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut c, _)) => {
                let _ = c.set_nonblocking(false);
                let _ = c.set_nodelay(true);
                let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
                let stop = stop.clone();
                workers.push(std::thread::spawn(move || {
                    let mut buf = vec![0u8; size.max(64 * 1024)];
                    while !stop.load(Ordering::Relaxed) {
                        let want = if size == 0 { buf.len() } else { size };
                        match c.read(&mut buf[..want]) {
                            Ok(0) => break,
                            Ok(n) if size > 0 => {
                                let mut got = n;
                                while got < size {
                                    match c.read(&mut buf[got..size]) {
                                        Ok(0) | Err(_) => return,
                                        Ok(m) => got += m,
                                    }
                                }
                                if c.write_all(&buf[..size]).is_err() {
                                    break;
                                }
                            }
                            Ok(_) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(_) => break,
                        }
                    }
                }));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    for w in workers {
        let _ = w.join();
    }
}

fn connect(topo: &Topology, addr: SocketAddr) -> Result<TcpStream> {
    topo.tx_ns
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(3)))?
        .map_err(|e| LabError::io(format!("connecting to {addr} across the lab (TCP)"), e))
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// `connections` connections doing `size`-byte request/response for `secs`,
/// then (when `bulk_secs` > 0) as many bulk streams for `bulk_secs`.
pub fn run(
    topo: &Topology,
    port: u16,
    connections: u32,
    size: usize,
    secs: f64,
    bulk_secs: f64,
) -> Result<RrResult> {
    if connections == 0 || size == 0 {
        return Err(LabError::Msg(format!(
            "invalid RR settings: {connections} connections of {size}-byte requests (both must be > 0)"
        )));
    }
    let addr = SocketAddr::from((topo.rx_ip, port));
    let stop = Arc::new(AtomicBool::new(false));
    let listener = topo
        .rx_ns
        .run(move || TcpListener::bind(addr))?
        .map_err(|e| LabError::io(format!("binding {addr}"), e))?;
    let s2 = stop.clone();
    let server = std::thread::spawn(move || serve(listener, size, s2));
    let result = (|| -> Result<RrResult> {
        let streams: Vec<TcpStream> = (0..connections).map(|_| connect(topo, addr)).collect::<Result<_>>()?;
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let start = Instant::now();
        let handles: Vec<_> = streams
            .into_iter()
            .map(|mut c| {
                std::thread::spawn(move || -> std::io::Result<Vec<u32>> {
                    c.set_nodelay(true)?;
                    c.set_read_timeout(Some(Duration::from_secs(2)))?;
                    let req = vec![0x5au8; size];
                    let mut resp = vec![0u8; size];
                    let mut lat = Vec::with_capacity(1 << 16);
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        c.write_all(&req)?;
                        c.read_exact(&mut resp)?;
                        lat.push(t.elapsed().as_nanos().min(u32::MAX as u128) as u32);
                        if super::stop_requested() {
                            break;
                        }
                    }
                    Ok(lat)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            let lat = h
                .join()
                .map_err(|_| LabError::Msg("an RR client thread panicked".into()))?
                .map_err(|e| LabError::io("TCP request/response", e))?;
            all.extend(lat);
        }
        super::check_stop()?;
        let elapsed = start.elapsed().as_secs_f64();
        all.sort_unstable();
        Ok(RrResult {
            connections,
            secs: elapsed,
            transactions: all.len() as u64,
            tps: all.len() as f64 / elapsed.max(1e-9),
            p50_us: percentile(&all, 0.50),
            p99_us: percentile(&all, 0.99),
            ..Default::default()
        })
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    let mut r = result?;
    if bulk_secs > 0.0 {
        r.bulk_gbps = Some(bulk(topo, port.wrapping_add(1), connections, bulk_secs)?);
    }
    Ok(r)
}

/// `streams` TCP streams pushing 64 KiB writes for `secs`; returns Gbit/s received.
pub fn bulk(topo: &Topology, port: u16, streams: u32, secs: f64) -> Result<f64> {
    let addr = SocketAddr::from((topo.rx_ip, port));
    let stop = Arc::new(AtomicBool::new(false));
    let listener = topo
        .rx_ns
        .run(move || TcpListener::bind(addr))?
        .map_err(|e| LabError::io(format!("binding {addr}"), e))?;
    let s2 = stop.clone();
    let server = std::thread::spawn(move || serve(listener, 0, s2));
    let result = (|| -> Result<f64> {
        let conns: Vec<TcpStream> = (0..streams).map(|_| connect(topo, addr)).collect::<Result<_>>()?;
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let start = Instant::now();
        let handles: Vec<_> = conns
            .into_iter()
            .map(|mut c| {
                std::thread::spawn(move || -> u64 {
                    let _ = c.set_write_timeout(Some(Duration::from_millis(500)));
                    let buf = vec![0xa5u8; 64 * 1024];
                    let mut sent = 0u64;
                    while Instant::now() < deadline && !super::stop_requested() {
                        match c.write(&buf) {
                            Ok(n) => sent += n as u64,
                            Err(_) => break,
                        }
                    }
                    sent
                })
            })
            .collect();
        let bytes: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
        super::check_stop()?;
        Ok(bytes as f64 * 8.0 / start.elapsed().as_secs_f64().max(1e-9) / 1e9)
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    result
}

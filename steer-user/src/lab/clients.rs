//! Real servers and clients across the lab's veth: nginx + wrk, memcached +
//! memcslap, iperf3, sockperf ping-pong (UDP and TCP). Servers run in the
//! receiving namespace (what the scenario steers), clients in the sending one,
//! pinned to the generator's CPU, the "interrupt" CPU, like the measurements
//! in the bench README. Each is run only where its binaries are installed
//! (`cargo xtask bench` installs them); a missing one is reported, never faked.

use std::{
    os::fd::{AsRawFd as _, OwnedFd},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{topology::Topology, LabError, Result};

/// One client's outcome in one scenario.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ClientResult {
    pub client: String,
    /// The headline figure (requests/s, ops/s, Gbit/s, round trips/s).
    pub value: f64,
    pub unit: String,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    /// iperf3: TCP retransmissions.
    pub retransmits: Option<u64>,
}

/// A real client workload.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    pub name: &'static str,
    bins: &'static [&'static str],
    run: fn(&Ctx) -> Result<ClientResult>,
}

/// Every client the bench knows, in the order it runs them.
pub const ALL: [Client; 5] = [
    Client { name: "nginx+wrk", bins: &["nginx", "wrk"], run: nginx_wrk },
    Client { name: "memcached+memcslap", bins: &["memcached", "memcslap"], run: memcached },
    Client { name: "iperf3 -P4", bins: &["iperf3"], run: iperf3 },
    Client { name: "sockperf pp udp", bins: &["sockperf"], run: |c| sockperf(c, false) },
    Client { name: "sockperf pp tcp", bins: &["sockperf"], run: |c| sockperf(c, true) },
];

fn find(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = [PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")];
    std::env::split_paths(&path).chain(extra).map(|d| d.join(bin)).find(|p| p.is_file())
}

impl Client {
    /// Missing binaries, if any.
    pub fn missing(&self) -> Vec<&'static str> {
        self.bins.iter().copied().filter(|b| find(b).is_none()).collect()
    }

    pub fn run(&self, topo: &Topology, port: u16, secs: f64, client_cpu: u32) -> Result<ClientResult> {
        let ctx = Ctx { topo, port, secs, client_cpu, dir: scratch(self.name)? };
        let r = (self.run)(&ctx);
        let _ = std::fs::remove_dir_all(&ctx.dir);
        r.map(|r| ClientResult { client: self.name.into(), ..r })
    }
}

/// What a client run needs: the lab, a port, a duration, the client's CPU, a scratch directory.
pub struct Ctx<'a> {
    topo: &'a Topology,
    port: u16,
    secs: f64,
    client_cpu: u32,
    dir: PathBuf,
}

fn scratch(name: &str) -> Result<PathBuf> {
    let tag: String = name.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let dir = std::env::temp_dir().join(format!("steer-lab-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
    Ok(dir)
}

impl Ctx<'_> {
    fn server_addr(&self) -> String {
        self.topo.rx_ip.to_string()
    }

    /// `bin args` in namespace `fd`, optionally pinned to one CPU.
    fn command(&self, fd: OwnedFd, bin: &str, args: &[String], cpu: Option<u32>) -> Result<Command> {
        let path = find(bin).ok_or_else(|| LabError::Msg(format!("{bin} is not installed")))?;
        let mut c = Command::new(path);
        c.args(args).stdin(Stdio::null());
        // SAFETY: only async-signal-safe calls (setns, sched_setaffinity) between fork and exec;
        // `fd` moves into the closure and stays open until exec.
        unsafe {
            c.pre_exec(move || {
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(cpu) = cpu {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu as usize, &mut set);
                    if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok(c)
    }

    /// Starts a server in the receiving namespace and waits until its port accepts.
    fn server(&self, bin: &str, args: &[String], tcp_port: Option<u16>) -> Result<Server> {
        let mut c = self.command(self.topo.rx_ns.dup_fd()?, bin, args, None)?;
        let child = c
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LabError::io(format!("starting {bin} in the lab"), e))?;
        let mut s = Server { name: bin.to_string(), child };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(st)) = s.child.try_wait() {
                return Err(LabError::Msg(format!("{bin} exited at start ({st}): {}", s.stderr())));
            }
            let ready = match tcp_port {
                Some(p) => {
                    let addr = std::net::SocketAddr::new(self.topo.rx_ip.into(), p);
                    self.topo.tx_ns.run(move || {
                        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                    })?
                }
                None => {
                    std::thread::sleep(Duration::from_millis(300));
                    true
                }
            };
            if ready {
                return Ok(s);
            }
            if Instant::now() > deadline {
                return Err(LabError::Msg(format!("{bin} did not start listening within 5 s")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs a client in the sending namespace, pinned, bounded by the run's length plus a margin.
    fn client(&self, bin: &str, args: &[String]) -> Result<String> {
        let mut c = self.command(self.topo.tx_ns.dup_fd()?, bin, args, Some(self.client_cpu))?;
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LabError::io(format!("starting {bin} in the lab"), e))?;
        let deadline = Instant::now() + Duration::from_secs_f64(self.secs + 20.0);
        loop {
            super::check_stop()?;
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(LabError::Msg(format!("{bin} did not finish in time")));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(LabError::io(format!("waiting for {bin}"), e)),
            }
        }
        let out = child.wait_with_output().map_err(|e| LabError::io(format!("reading {bin}'s output"), e))?;
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            return Err(LabError::Msg(format!("{bin} failed ({}): {}", out.status, text.trim())));
        }
        Ok(text)
    }
}

/// A server process, stopped on drop.
struct Server {
    name: String,
    child: Child,
}

impl Server {
    fn stderr(&mut self) -> String {
        use std::io::Read as _;
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s.trim().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        log::warn!("{} ignored SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// "1.23ms" / "456.78us" / "1.2s" -> microseconds.
fn duration_us(s: &str) -> Option<f64> {
    let (num, mult) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * mult)
}

fn secs_arg(secs: f64) -> String {
    format!("{}s", secs.ceil().max(1.0) as u64)
}

fn nginx_wrk(c: &Ctx) -> Result<ClientResult> {
    let conf = c.dir.join("nginx.conf");
    let d = c.dir.display();
    let text = format!(
        "daemon off;\nmaster_process on;\nworker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; \
         uwsgi_temp_path {d}; scgi_temp_path {d};\n  server {{ listen {}:{}; location / {{ return 200 \"ok\\n\"; }} }} }}\n",
        c.server_addr(),
        c.port
    );
    std::fs::write(&conf, text).map_err(|e| LabError::io(format!("writing {}", conf.display()), e))?;
    let _server = c.server(
        "nginx",
        &["-c".into(), conf.display().to_string(), "-e".into(), format!("{d}/error.log")],
        Some(c.port),
    )?;
    let out = c.client(
        "wrk",
        &[
            "-t2".into(),
            "-c64".into(),
            format!("-d{}", secs_arg(c.secs)),
            "--latency".into(),
            format!("http://{}:{}/", c.server_addr(), c.port),
        ],
    )?;
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:").and_then(|v| v.trim().parse::<f64>().ok()))
        .ok_or_else(|| LabError::Msg(format!("wrk printed no Requests/sec: {out}")))?;
    let pct = |p: &str| {
        out.lines().find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(p)).then(|| f.next().and_then(duration_us)).flatten()
        })
    };
    Ok(ClientResult {
        value: rps,
        unit: "req/s".into(),
        p50_us: pct("50%"),
        p99_us: pct("99%"),
        ..Default::default()
    })
}

fn memcached(c: &Ctx) -> Result<ClientResult> {
    let _server = c.server(
        "memcached",
        &[
            "-u".into(),
            "root".into(),
            "-l".into(),
            c.server_addr(),
            "-p".into(),
            c.port.to_string(),
            "-t".into(),
            "2".into(),
            "-U".into(),
            "0".into(),
        ],
        Some(c.port),
    )?;
    // memcslap does a fixed amount of work: size it to about the run's length on this lab.
    let threads = 64u32;
    let per_thread = ((c.secs * 60_000.0) as u32 / threads).max(200);
    let out = c.client(
        "memcslap",
        &[
            format!("--servers={}:{}", c.server_addr(), c.port),
            format!("--concurrency={threads}"),
            format!("--execute-number={per_thread}"),
            "--test=get".into(),
            "--binary".into(),
        ],
    )?;
    // "Time to get  16000 keys by    8 threads:     0.185 seconds."
    let line = out
        .lines()
        .find(|l| l.contains("Time to get"))
        .ok_or_else(|| LabError::Msg(format!("memcslap printed no 'Time to get': {out}")))?;
    let nums: Vec<f64> = line.split([' ', ':']).filter_map(|w| w.parse::<f64>().ok()).collect();
    let (keys, secs) = match nums.as_slice() {
        [keys, _threads, secs] => (*keys, *secs),
        _ => return Err(LabError::Msg(format!("memcslap: cannot read \"{line}\""))),
    };
    Ok(ClientResult { value: keys / secs.max(1e-6), unit: "ops/s".into(), ..Default::default() })
}

fn iperf3(c: &Ctx) -> Result<ClientResult> {
    let _server = c.server(
        "iperf3",
        &["-s".into(), "-1".into(), "-B".into(), c.server_addr(), "-p".into(), c.port.to_string()],
        None,
    )?;
    let out = c.client(
        "iperf3",
        &[
            "-c".into(),
            c.server_addr(),
            "-p".into(),
            c.port.to_string(),
            "-P4".into(),
            "-t".into(),
            format!("{}", c.secs.ceil().max(1.0) as u64),
            "-J".into(),
        ],
    )?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| LabError::Msg(format!("iperf3 -J: {e}")))?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| LabError::Msg("iperf3 -J has no end.sum_received".into()))?;
    Ok(ClientResult {
        value: bps / 1e9,
        unit: "Gbit/s".into(),
        retransmits: v["end"]["sum_sent"]["retransmits"].as_u64(),
        ..Default::default()
    })
}

fn sockperf(c: &Ctx, tcp: bool) -> Result<ClientResult> {
    let proto = if tcp { vec!["--tcp".to_string()] } else { vec![] };
    let mut sargs = vec!["sr".to_string()];
    sargs.extend(proto.clone());
    sargs.extend(["-i".into(), c.server_addr(), "-p".into(), c.port.to_string()]);
    let _server = c.server("sockperf", &sargs, tcp.then_some(c.port))?;
    let mut cargs = vec!["pp".to_string()];
    cargs.extend(proto);
    cargs.extend([
        "-i".into(),
        c.server_addr(),
        "-p".into(),
        c.port.to_string(),
        "-t".into(),
        format!("{}", c.secs.ceil().max(1.0) as u64),
        // Back to back: the default paces 10000 messages/s, which every scenario keeps up with.
        "--mps=max".into(),
    ]);
    let out = c.client("sockperf", &cargs)?;
    // "sockperf: ---> percentile 50.000 =    2.498" (microseconds, half a round trip)
    let pct = |p: &str| {
        out.lines().find_map(|l| {
            let rest = l.split("percentile ").nth(1)?;
            let (q, v) = rest.split_once('=')?;
            (q.trim() == p).then(|| v.trim().parse::<f64>().ok()).flatten()
        })
    };
    let observations = out.lines().find_map(|l| {
        let rest = l.split("Total ").nth(1)?;
        rest.split_whitespace().next()?.parse::<f64>().ok()
    });
    Ok(ClientResult {
        value: observations.unwrap_or(0.0) / c.secs.ceil().max(1.0),
        unit: "round trips/s".into(),
        p50_us: pct("50.000"),
        p99_us: pct("99.000"),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_durations_read_in_microseconds() {
        assert_eq!(duration_us("1.50ms"), Some(1500.0));
        assert_eq!(duration_us("250.00us"), Some(250.0));
        assert_eq!(duration_us("2s"), Some(2e6));
        assert_eq!(duration_us("x"), None);
    }

    #[test]
    fn every_client_names_its_binaries() {
        for c in ALL {
            assert!(!c.bins.is_empty(), "{}", c.name);
        }
    }
}

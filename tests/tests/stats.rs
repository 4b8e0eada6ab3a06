//! `steer stats`, `--metrics`, `--config` + SIGHUP and the capability set,
//! against a real `steer run` in a veth lab with real UDP traffic between
//! the lab's namespaces (generic XDP: it sees socket traffic from the peer).

use std::{
    net::UdpSocket,
    process::{Command, Output, Stdio},
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
    let p = Pinned::open_id(&steer_tests::run_id(iface)?)?;
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

/// GET http://ADDR/metrics from inside network namespace `ns` with a real
/// HTTP client, parsed by a real exposition-format parser.
fn scrape(ns: &str, addr: &str) -> Result<(String, prometheus_parse::Scrape)> {
    let url = format!("http://{addr}/metrics");
    let body = in_ns(ns, move || -> Result<String> {
        let mut resp = ureq::get(&url).call().with_context(|| format!("GET {url}"))?;
        let ctype =
            resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        assert!(ctype.starts_with("application/openmetrics-text"), "content-type {ctype}");
        Ok(resp.body_mut().read_to_string()?)
    })??;
    let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))?;
    // The parser skips what it does not understand: make sure it understood every sample line.
    let skipped: Vec<&str> = body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| {
            !matches!(prometheus_parse::LineInfo::parse(l), prometheus_parse::LineInfo::Sample { .. })
        })
        .collect();
    assert!(skipped.is_empty(), "sample lines the parser did not accept: {skipped:?}");
    let sample_lines = body.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).count();
    assert_eq!(parsed.samples.len(), sample_lines, "samples lost:\n{body}");
    assert!(body.trim_end().ends_with("# EOF"), "no OpenMetrics EOF marker");
    Ok((body, parsed))
}

fn metric(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .and_then(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

fn test_port() -> u16 {
    20000 + (std::process::id() % 20000) as u16
}

#[test]
fn metrics_scrape_parses_and_counters_match_json() -> Result<()> {
    require_root();
    let lab = Lab::new()?;
    let n = online_cpus();
    let addr = format!("127.0.0.1:{}", test_port());
    let run = SteerRun::start(&lab, &["--xdp-mode", "skb", "--metrics", &addr])?;
    let traffic = Traffic::start(&lab);
    std::thread::sleep(Duration::from_millis(500));
    traffic.stop()?;
    std::thread::sleep(Duration::from_millis(200));
    let (body, s1) = scrape(&lab.rx_ns, &addr)?;
    let json = stats_json(&lab, "0.2")?;
    let (_, s2) = scrape(&lab.rx_ns, &addr)?;
    assert_eq!(
        metric(&s1, "steer_attach_info", &[("mode", "generic"), ("iface", &lab.rx_if)]),
        Some(1.0),
        "{body}"
    );
    assert!(metric(&s1, "steer_build_info", &[("version", env!("CARGO_PKG_VERSION"))]).is_some(), "{body}");
    assert_eq!(metric(&s1, "steer_steering_cpus", &[]), Some(n as f64));
    let mut steered = 0.0;
    for cpu in 0..n {
        let c = cpu.to_string();
        for (name, field) in [
            ("steer_packets_total", "xdp_rx"),
            ("steer_redirected_total", "redirected"),
            ("steer_steered_in_total", "steered_in"),
            ("steer_redirect_errors_total", "redirect_err"),
            ("steer_local_total", "local"),
            ("steer_kept_total", "kept"),
        ] {
            let (a, b) = (metric(&s1, name, &[("cpu", &c)]), metric(&s2, name, &[("cpu", &c)]));
            let (a, b) = (a.with_context(|| format!("{name} cpu {c} missing:\n{body}"))?, b.unwrap_or(-1.0));
            let j = totals_field(&json, cpu, field) as f64;
            assert!(a <= j && j <= b, "CPU {cpu} {name}: metrics {a}..{b}, json {j}");
        }
        steered += metric(&s1, "steer_steered_in_total", &[("cpu", &c)]).unwrap_or(0.0);
        let soft = metric(&s1, "steer_softirq_seconds_total", &[("cpu", &c)]).context("softirq seconds")?;
        assert!(soft > 0.0);
        assert!(metric(&s1, "steer_passed_total", &[("cpu", &c), ("reason", "non_ip")]).is_some(), "{body}");
    }
    assert!(steered > 500.0, "steered {steered}");
    // Only /metrics is served.
    let url = format!("http://{addr}/nope");
    let code = in_ns(&lab.rx_ns, move || match ureq::get(&url).call() {
        Err(ureq::Error::StatusCode(c)) => c,
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    })?;
    assert_eq!(code, 404);
    let (ok_exit, err) = run.stop()?;
    assert!(ok_exit, "{err}");
    Ok(())
}

#[test]
fn metrics_address_is_checked_before_attaching() -> Result<()> {
    require_root();
    let lab = Lab::new()?;
    let out = lab
        .steer(&["run", "--iface", &lab.rx_if, "--xdp-mode", "skb", "--metrics", "localhost:x"])
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid --metrics \"localhost:x\""), "{err}");
    assert!(!lab.rx_has_xdp()?, "a bad --metrics left XDP attached");
    // A port already in use: refused before attaching too.
    let addr = format!("127.0.0.1:{}", test_port() + 1);
    let a2 = addr.clone();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn({
        let ns = lab.rx_ns.clone();
        move || {
            in_ns(&ns, move || {
                let l = std::net::TcpListener::bind(&a2);
                let _ = rx.recv();
                drop(l);
            })
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let out = lab.steer(&["run", "--iface", &lab.rx_if, "--xdp-mode", "skb", "--metrics", &addr]).output()?;
    let _ = tx.send(());
    let _ = holder.join();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr) && err.contains("in use"), "{err}");
    assert!(!lab.rx_has_xdp()?);
    Ok(())
}

/// Inode of the pinned XDP link: the same inode means the same link, never re-attached.
fn link_inode(iface: &str) -> Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata(steer_tests::run_id(iface)?.pin_dir().join("link"))?.ino())
}

/// Packets steered to each CPU while `traffic` runs for `ms`, from the pinned maps.
fn steered_during(iface: &str, ms: u64) -> Result<(Vec<u64>, Snapshot)> {
    let a = pinned_snapshot(iface)?;
    std::thread::sleep(Duration::from_millis(ms));
    let b = pinned_snapshot(iface)?;
    let d = b.since(&a);
    Ok((d.steered_in.clone(), d))
}

fn sighup(run: &SteerRun) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(run.child.id() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(500));
}

#[test]
fn sighup_applies_a_new_cpu_list_live_and_a_broken_config_keeps_the_old() -> Result<()> {
    require_root();
    let n = online_cpus();
    assert!(n >= 2, "this test moves steering from CPU 0 to CPU 1: it needs 2 CPUs, the machine has {n}");
    let lab = Lab::new()?;
    let dir = std::env::temp_dir().join(format!("steer-test-{}", lab.rx_if));
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("steer.toml");
    let write = |text: String| std::fs::write(&cfg, text);
    write(format!("iface = \"{}\"\ncpus = \"0\"\nxdp-mode = \"skb\"\n", lab.rx_if))?;
    let cfg_s = cfg.to_string_lossy().to_string();
    // No --iface on the command line: it comes from the file.
    let child = lab
        .steer(&["run", "--quiet", "--config", &cfg_s])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let run = SteerRun { child, iface: lab.rx_if.clone() };
    let t0 = std::time::Instant::now();
    while link_inode(&lab.rx_if).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(20), "steer run --config did not attach");
        std::thread::sleep(Duration::from_millis(50));
    }
    let link = link_inode(&lab.rx_if)?;
    let traffic = Traffic::start(&lab);
    std::thread::sleep(Duration::from_millis(200));
    let (before, _) = steered_during(&lab.rx_if, 500)?;
    assert!(before[0] > 100 && before[1] == 0, "cpus = \"0\": steered {before:?}");

    // Move every bucket to CPU 1.
    write(format!("iface = \"{}\"\ncpus = [1]\nxdp-mode = \"skb\"\n", lab.rx_if))?;
    let around = pinned_snapshot(&lab.rx_if)?;
    sighup(&run);
    let (after, _) = steered_during(&lab.rx_if, 500)?;
    assert!(after[1] > 100 && after[0] == 0, "after SIGHUP with cpus = [1]: steered {after:?}");
    // Nothing passed unsteered or refused across the switch.
    let whole = pinned_snapshot(&lab.rx_if)?.since(&around).total();
    assert_eq!(whole.redirect_err, 0, "redirects refused during the switch");
    assert_eq!(whole.passed[steer_common::PassReason::NoConfig as usize], 0, "passed for lack of config");
    assert_eq!(link_inode(&lab.rx_if)?, link, "the link was re-created");
    let json = stats_json(&lab, "0.3")?;
    assert_eq!(json["steering_cpus"], serde_json::json!([1]), "run file not updated: {json}");

    // A broken file: logged, and CPU 1 keeps receiving.
    write("cpus = \"0-\"\n[[[\n".into())?;
    sighup(&run);
    let (still, _) = steered_during(&lab.rx_if, 400)?;
    assert!(still[1] > 100 && still[0] == 0, "after a broken config: steered {still:?}");
    // A valid file naming an offline/nonexistent CPU: refused the same way.
    write(format!("iface = \"{}\"\ncpus = \"{}\"\nxdp-mode = \"skb\"\n", lab.rx_if, n + 100))?;
    sighup(&run);
    let (still, _) = steered_during(&lab.rx_if, 400)?;
    assert!(still[1] > 100, "after a config with a missing CPU: steered {still:?}");
    assert_eq!(link_inode(&lab.rx_if)?, link);
    traffic.stop()?;
    let (ok_exit, err) = run.stop()?;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok_exit, "{err}");
    assert!(err.contains("SIGHUP: reloaded"), "{err}");
    assert!(err.contains("SIGHUP: keeping the running configuration") && err.contains("steer.toml"), "{err}");
    assert!(err.contains(&format!("CPU {}", n + 100)), "error does not name the CPU: {err}");
    Ok(())
}

/// `steer ARGS` in the lab's receiving namespace with only `caps` left in the
/// bounding set (as uid 0, exec then grants exactly those), via setpriv.
fn steer_with_caps(lab: &Lab, caps: &str, args: &[&str]) -> Command {
    let bin = steer_tests::steer_bin();
    let bounding = format!("--bounding-set=-all{}{caps}", if caps.is_empty() { "" } else { "," });
    let mut all: Vec<String> =
        vec![bounding, "--inh-caps=-all".into(), "--".into(), bin.to_string_lossy().into()];
    all.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    steer_tests::in_ns_command(&lab.rx_ns, "setpriv", &refs)
}

#[test]
fn bpf_net_admin_perfmon_are_enough_and_each_missing_one_is_named() -> Result<()> {
    require_root();
    assert!(
        Command::new("setpriv").arg("--version").output().is_ok_and(|o| o.status.success()),
        "setpriv (util-linux) is needed for this test: apt-get install util-linux"
    );
    let lab = Lab::new()?;
    // The three capabilities and nothing else: attaches, steers, stats works.
    let child = steer_with_caps(
        &lab,
        "+bpf,+net_admin,+perfmon",
        &["run", "--iface", &lab.rx_if, "--xdp-mode", "skb", "--quiet"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()?;
    let run = SteerRun { child, iface: lab.rx_if.clone() };
    let t0 = std::time::Instant::now();
    while link_inode(&lab.rx_if).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "steer run with CAP_BPF+NET_ADMIN+PERFMON did not attach"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", run.child.id()))?;
    let eff = status.lines().find(|l| l.starts_with("CapEff:")).context("CapEff")?;
    let eff = u64::from_str_radix(eff.trim_start_matches("CapEff:").trim(), 16)?;
    assert_eq!(eff, (1 << 39) | (1 << 38) | (1 << 12), "steer ran with more than the three capabilities");
    assert!(lab.rx_has_xdp()?);
    let traffic = Traffic::start(&lab);
    std::thread::sleep(Duration::from_millis(300));
    let out =
        steer_with_caps(&lab, "", &["stats", "--iface", &lab.rx_if, "--json", "--once", "--interval", "0.3"])
            .output()?;
    traffic.stop()?;
    let v: Value = serde_json::from_str(ok(out, "steer stats with no capabilities")?.trim())?;
    assert!(v["all"]["steered_in_pps"].as_f64().unwrap_or(0.0) > 10.0, "{v}");
    // Pinned objects are root's only.
    for pin in ["link", "stats", "targets", "cpus"] {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let m = std::fs::metadata(lab.pin_dir().join(pin))?;
        assert_eq!((m.uid(), m.permissions().mode() & 0o077), (0, 0), "{pin} is readable by others");
    }
    let (ok_exit, err) = run.stop()?;
    assert!(ok_exit, "{err}");
    assert!(!err.contains("will not be counted"), "cpumap tracepoints failed with these capabilities: {err}");

    // Each one missing: refused up front, by name, with nothing attached.
    for (caps, missing) in [
        ("+net_admin,+perfmon", "CAP_BPF"),
        ("+bpf,+perfmon", "CAP_NET_ADMIN"),
        ("+bpf,+net_admin", "CAP_PERFMON"),
    ] {
        let out =
            steer_with_caps(&lab, caps, &["run", "--iface", &lab.rx_if, "--xdp-mode", "skb", "--quiet"])
                .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "ran without {missing}");
        assert!(err.contains(&format!("missing capability {missing}")), "{caps}: {err}");
        assert!(!lab.rx_has_xdp()?, "XDP attached without {missing}");
        assert!(link_inode(&lab.rx_if).is_err(), "pinned without {missing}");
    }
    Ok(())
}

#[test]
fn cpumap_queue_drops_are_counted_and_account_for_the_loss() -> Result<()> {
    require_root();
    let lab = Lab::new()?;
    let n = online_cpus();
    // A one-frame queue per CPU: bursts overflow it.
    let run = SteerRun::start(&lab, &["--xdp-mode", "skb", "--qsize", "1"])?;
    std::thread::sleep(Duration::from_millis(200));
    let snmp0 = steer_tests::snmp(&lab.rx_ns)?;
    let m0 = pinned_snapshot(&lab.rx_if)?;
    let j0 = stats_json(&lab, "0.1")?;
    let traffic = Traffic::start(&lab);
    std::thread::sleep(Duration::from_millis(1500));
    traffic.stop()?;
    std::thread::sleep(Duration::from_millis(300));
    let j1 = stats_json(&lab, "0.1")?;
    let m1 = pinned_snapshot(&lab.rx_if)?;
    let snmp1 = steer_tests::snmp(&lab.rx_ns)?;
    let field = |j: &Value, cpu: usize, f: &str| totals_field(j, cpu, f);
    let mut drops = 0;
    for cpu in 0..n {
        for f in ["cpumap_enqueue_drops", "cpumap_kthread_drops"] {
            let row = j1["totals"].as_array().and_then(|a| a.iter().find(|t| t["cpu"] == cpu)).cloned();
            assert!(row.as_ref().is_some_and(|r| r[f].is_u64()), "{f} missing for CPU {cpu}: {row:?}");
            drops += field(&j1, cpu, f) - field(&j0, cpu, f);
        }
    }
    let steered: u64 = m1.since(&m0).steered_in.iter().sum();
    let delivered =
        snmp1.get("Udp.NoPorts").copied().unwrap_or(0) - snmp0.get("Udp.NoPorts").copied().unwrap_or(0);
    eprintln!("steered {steered}, cpumap drops {drops}, delivered to UDP {delivered}");
    assert!(steered > 1000, "steered {steered}");
    assert!(
        drops > 0,
        "a 1-frame queue under bursts dropped nothing? steered {steered}, delivered {delivered}"
    );
    // Every steered packet was either dropped by the cpumap or reached UDP.
    assert_eq!(
        steered,
        drops + delivered,
        "steered {steered} != cpumap drops {drops} + delivered {delivered}"
    );
    let (ok_exit, err) = run.stop()?;
    assert!(ok_exit, "{err}");
    Ok(())
}

#[test]
fn rfs_hits_show_in_stats_json_table_and_metrics() -> Result<()> {
    require_root();
    let lab = Lab::new()?;
    let addr = format!("127.0.0.1:{}", test_port() + 2);
    let run = SteerRun::start(&lab, &["--xdp-mode", "skb", "--mode", "rfs", "--metrics", &addr])?;
    // One TCP stream read by a server in the lab namespace: its reads fill the flow table.
    let rx_ip = lab.rx_ip;
    let listener = in_ns(&lab.rx_ns, move || std::net::TcpListener::bind((rx_ip, 7010)))??;
    let server = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut c, _) = listener.accept()?;
        let mut buf = vec![0u8; 4096];
        let mut n = 0;
        loop {
            match std::io::Read::read(&mut c, &mut buf)? {
                0 => return Ok(n),
                k => n += k,
            }
        }
    });
    in_ns(&lab.tx_ns, move || -> std::io::Result<()> {
        let mut c = std::net::TcpStream::connect((rx_ip, 7010))?;
        for _ in 0..400 {
            std::io::Write::write_all(&mut c, &[7u8; 1000])?;
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    })??;
    assert_eq!(server.join().map_err(|_| anyhow::anyhow!("server panicked"))??, 400 * 1000);

    let json = stats_json(&lab, "0.2")?;
    let rfs = &json["rfs"];
    let hits = rfs["hits"].as_u64().context("rfs.hits in --json")?;
    assert!(hits > 0, "no RFS hits: {json}");
    let per_cpu: u64 =
        json["totals"].as_array().context("totals")?.iter().filter_map(|t| t["rfs_hits"].as_u64()).sum();
    assert_eq!(per_cpu, hits, "per-CPU rfs_hits add up to rfs.hits");
    let table =
        ok(lab.steer(&["stats", "--iface", &lab.rx_if, "--once", "--interval", "0.2"]).output()?, "stats")?;
    assert!(table.contains(" rfs ") && table.contains("rfs: "), "{table}");
    let (body, s) = scrape(&lab.rx_ns, &addr)?;
    let scraped: f64 = (0..online_cpus())
        .filter_map(|c| metric(&s, "steer_rfs_hits_total", &[("cpu", &c.to_string())]))
        .sum();
    assert!(scraped >= hits as f64, "steer_rfs_hits_total {scraped} < json {hits}:\n{body}");
    assert!(metric(&s, "steer_rfs_events_total", &[("event", "misses")]).is_some(), "{body}");
    assert!(metric(&s, "steer_rfs_flows", &[]).is_some(), "{body}");
    run.stop()?;
    Ok(())
}

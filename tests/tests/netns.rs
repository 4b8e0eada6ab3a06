//! steer where it is deployed: veth, network namespaces, interfaces of the same
//! name in several namespaces (every pod has an eth0), commands run the way
//! README says (`ip netns exec NS steer ...`, emulated in-process by
//! [`steer_tests::netns_exec`]), hostile interface names, and an interface
//! deleted under a running steer.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;
use steer::{
    lab::topology::{self, NetNs},
    pins::{Pinned, RunId},
    sys::netlink::VethEnd,
};
use steer_tests::{in_ns, require_root, snmp, steer_bin, Lab, SteerRun};

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{:x}{}", std::process::id() & 0xfffff, N.fetch_add(1, Ordering::Relaxed))
}

fn online() -> Vec<u32> {
    steer::cpus::online().expect("reading online CPUs")
}

/// Sum of a per-CPU field of `steer stats --json`'s totals.
fn total(v: &Value, field: &str) -> u64 {
    v["totals"].as_array().map_or(0, |a| a.iter().filter_map(|t| t[field].as_u64()).sum())
}

/// `ip netns exec NS steer ARGS`: the way README tells a user to run steer in a namespace.
fn netns_exec(ns: &str, args: &[&str]) -> Command {
    let mut c = steer_tests::netns_exec(ns, steer_bin(), args);
    c.env("RUST_BACKTRACE", "0");
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Waits (bounded) for a child to exit; kills it past the deadline.
fn wait_exit(child: &mut Child, secs: u64) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn child_stderr(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// Bulk TCP from the peer namespace through `steer run --iface VETH` with no
/// mode given: auto must pick a mode that keeps TCP intact (no checksum
/// errors), and the traffic is steered to every CPU.
#[test]
fn default_mode_on_veth_keeps_bulk_tcp_intact_and_steers_it_to_every_cpu() {
    require_root();
    let lab = Lab::new().expect("making the lab");
    let run = SteerRun::start(&lab, &[]).expect("starting steer with no --xdp-mode");
    let id = lab.run_id(&lab.rx_if).unwrap();
    let mode = id.read_run().expect("run.json").mode;
    assert_eq!(mode, "generic", "auto on veth");
    let p = Pinned::open_id(&id).unwrap();
    let before = steer::stats::Snapshot::read(&p.stats, &p.targets).unwrap();
    let csum0 = snmp(&lab.rx_ns).unwrap()["Tcp.InCsumErrors"];
    // Enough flows that the hash gives every CPU some (4 land on one CPU in 1 of 8 runs on 2 CPUs).
    const STREAMS: usize = 16;
    const BYTES: usize = 2 << 20;
    let listener = in_ns(&lab.rx_ns, || TcpListener::bind("198.18.0.2:5301")).unwrap().expect("listening");
    let server = std::thread::spawn(move || {
        let mut got = 0usize;
        let mut readers = Vec::new();
        for _ in 0..STREAMS {
            let (mut s, _) = listener.accept().expect("accepting");
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            readers.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                let mut n = 0usize;
                while let Ok(k) = s.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    n += k;
                }
                n
            }));
        }
        for r in readers {
            got += r.join().unwrap();
        }
        got
    });
    let senders: Vec<_> = (0..STREAMS)
        .map(|_| {
            in_ns(&lab.tx_ns, || {
                TcpStream::connect_timeout(&"198.18.0.2:5301".parse().unwrap(), Duration::from_secs(5))
            })
            .unwrap()
            .expect("connecting from the peer namespace")
        })
        .map(|mut s| {
            std::thread::spawn(move || {
                s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
                let chunk = vec![0x5au8; 1 << 16];
                for _ in 0..BYTES / chunk.len() {
                    s.write_all(&chunk).expect("sending");
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let got = server.join().unwrap();
    let csum = snmp(&lab.rx_ns).unwrap()["Tcp.InCsumErrors"] - csum0;
    let d = steer::stats::Snapshot::read(&p.stats, &p.targets).unwrap().since(&before);
    println!("received {got} bytes, InCsumErrors +{csum}, steered in per CPU {:?}", d.steered_in);
    assert_eq!(got, STREAMS * BYTES, "every byte arrived");
    assert_eq!(csum, 0, "Tcp InCsumErrors grew");
    for cpu in online() {
        assert!(d.steered_in[cpu as usize] > 0, "CPU {cpu} got nothing: {:?}", d.steered_in);
    }
    let (ok, log) = run.stop().unwrap();
    assert!(ok, "{log}");
}

/// A network namespace with one veth whose name is the same in every such
/// namespace, and a peer namespace to send from. Removed on drop.
struct Pod {
    ns: String,
    peer_ns: String,
    subnet: u8,
    netns: NetNs,
    peer_netns: NetNs,
}

const POD_IF: &str = "stpod0";

impl Pod {
    fn new(subnet: u8) -> Self {
        let netns = NetNs::create(&unique("steer-pod-")).unwrap();
        let peer_netns = NetNs::create(&unique("steer-podp-")).unwrap();
        let pod =
            Self { ns: netns.name.clone(), peer_ns: peer_netns.name.clone(), subnet, netns, peer_netns };
        topology::create_veth(
            VethEnd::new(POD_IF).netns(pod.netns.as_raw_fd()),
            VethEnd::new("stpeer0").netns(pod.peer_netns.as_raw_fd()),
        )
        .unwrap();
        for (ns, dev, host) in [(&pod.netns, POD_IF, 2), (&pod.peer_netns, "stpeer0", 1)] {
            ns.add_address(dev, format!("198.18.{subnet}.{host}").parse().unwrap(), 24).unwrap();
            ns.set_link_up(dev).unwrap();
        }
        pod
    }

    fn start(&self) -> Child {
        netns_exec(&self.ns, &["run", "--iface", POD_IF, "--quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting steer run as ip netns exec would")
    }

    fn stats(&self) -> Value {
        let out =
            netns_exec(&self.ns, &["stats", "--iface", POD_IF, "--json", "--once", "--interval", "0.1"])
                .output()
                .unwrap();
        assert!(out.status.success(), "stats in {}: {}", self.ns, stderr(&out));
        serde_json::from_slice(&out.stdout).expect("stats --json is JSON")
    }

    /// Waits until `steer stats` in the namespace sees the run attached.
    fn wait_attached(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.stats()["attached"].is_null() {
            assert!(Instant::now() < deadline, "steer in {} never showed as attached", self.ns);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn send(&self, n: usize) {
        let to = format!("198.18.{}.2:9", self.subnet);
        in_ns(&self.peer_ns, move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            for i in 0..n {
                s.send_to(&[i as u8; 64], &to).unwrap();
            }
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }

    fn id(&self) -> RunId {
        in_ns(&self.ns, || RunId::of(POD_IF)).unwrap().unwrap()
    }

    fn has_xdp(&self) -> bool {
        in_ns(&self.ns, || steer::xdp_owner::query(steer::iface::index(POD_IF).unwrap()).unwrap())
            .unwrap()
            .is_some()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // The namespaces go when the fields drop, after this.
        let id = in_ns(&self.ns, || RunId::of(POD_IF));
        if let Ok(Ok(id)) = id {
            let _ = std::fs::remove_dir_all(id.state_dir());
            let _ = std::fs::remove_dir_all(id.pin_dir());
        }
    }
}

/// Two namespaces, each with an interface of the same name, each steered by
/// `ip netns exec NS steer run`: each `ip netns exec NS steer stats` sees its
/// own run and counters; SIGKILL one and `ip netns exec NS steer restore`
/// cleans that one only; the other keeps steering.
#[test]
fn two_namespaces_with_the_same_interface_name_each_find_their_own_run() {
    require_root();
    let (a, b) = (Pod::new(41), Pod::new(42));
    let (mut run_a, mut run_b) = (a.start(), b.start());
    a.wait_attached();
    b.wait_attached();
    assert_ne!(a.id(), b.id(), "same name, different runs");
    a.send(400);
    b.send(150);
    let (sa, sb) = (a.stats(), b.stats());
    let (na, nb) = (total(&sa, "xdp_rx"), total(&sb, "xdp_rx"));
    println!("pod a saw {na}, pod b saw {nb}; a {}, b {}", sa["attached"], sb["attached"]);
    assert!(na >= 400 && (150..400).contains(&nb), "each sees its own counters: a {na}, b {nb}");
    assert_eq!(sa["attached"], "generic");

    // SIGKILL a: nothing restores on exit.
    run_a.kill().unwrap();
    run_a.wait().unwrap();
    let out = netns_exec(&a.ns, &["restore", "--iface", POD_IF]).output().unwrap();
    assert!(out.status.success(), "restore in a: {}", stderr(&out));
    assert!(!a.has_xdp(), "a still has XDP after restore");
    assert!(!a.id().state_dir().exists(), "a's state left behind");

    // b is untouched and keeps steering.
    assert!(run_b.try_wait().unwrap().is_none(), "b's run died: {}", child_stderr(&mut run_b));
    assert!(b.has_xdp());
    let before = total(&b.stats(), "xdp_rx");
    b.send(100);
    let after = total(&b.stats(), "xdp_rx");
    assert!(after >= before + 100, "b stopped counting: {before} -> {after}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(run_b.id() as i32, libc::SIGTERM) };
    let st = wait_exit(&mut run_b, 15).expect("b exits on SIGTERM");
    assert!(st.success(), "b: {}", child_stderr(&mut run_b));
    assert!(!b.has_xdp() && !b.id().state_dir().exists(), "b left state behind");
}

/// Every command that takes `--iface` refuses names the kernel would refuse,
/// before any file is opened: files planted where a traversal would reach are
/// untouched.
#[test]
fn hostile_interface_names_are_refused_and_touch_nothing() {
    require_root();
    let plant = PathBuf::from(format!("/tmp/{}", unique("steer-plant-")));
    std::fs::create_dir_all(&plant).unwrap();
    let files = ["link", "stats", "config", "run.json", "nic.json"];
    for f in files {
        std::fs::write(plant.join(f), f).unwrap();
    }
    let traversal = format!("../../../..{}", plant.display());
    let names = [traversal.as_str(), "", "a/b", ".", "..", "sixteen-bytes-xx", "a b", "a:b"];
    let commands: [&[&str]; 8] = [
        &["run"],
        &["stats", "--once"],
        &["flows"],
        &["restore"],
        &["nic", "show"],
        &["nic", "plan"],
        &["nic", "apply"],
        &["nic", "restore"],
    ];
    for cmd in commands {
        for name in names {
            let out = Command::new(steer_bin()).args(cmd).args(["--iface", name]).output().unwrap();
            let err = stderr(&out);
            assert!(!out.status.success(), "steer {cmd:?} --iface {name:?} succeeded");
            assert!(err.contains("interface name"), "steer {cmd:?} --iface {name:?}: {err}");
        }
    }
    for f in files {
        assert_eq!(std::fs::read_to_string(plant.join(f)).unwrap(), f, "{f} was touched");
    }
    std::fs::remove_dir_all(&plant).unwrap();
}

/// A NIC snapshot that names a file steer does not manage is refused whole:
/// nothing is written.
#[test]
fn a_forged_nic_snapshot_is_refused() {
    require_root();
    let pod = Pod::new(43);
    let target = PathBuf::from(format!("/tmp/{}", unique("steer-forged-")));
    std::fs::write(&target, "original").unwrap();
    let steer_in = |args: &[&str]| netns_exec(&pod.ns, args).output().unwrap();
    let out = steer_in(&["nic", "apply", "--iface", POD_IF, "--rps-cpus", "0"]);
    assert!(out.status.success(), "apply: {}", stderr(&out));
    let snapshot = pod.id().state_dir().join("nic.json");
    let text = std::fs::read_to_string(&snapshot).unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    let steps = v["plan"]["steps"].as_array_mut().expect("steps");
    let step = steps.iter_mut().find(|s| s["knob"]["kind"] == "file").expect("a file step");
    step["knob"]["path"] = Value::String(target.display().to_string());
    std::fs::write(&snapshot, v.to_string()).unwrap();
    for cmd in [&["nic", "restore", "--iface", POD_IF][..], &["restore", "--iface", POD_IF]] {
        let out = steer_in(cmd);
        assert!(!out.status.success(), "{cmd:?} accepted a forged snapshot");
        assert!(stderr(&out).contains("not a snapshot steer made"), "{cmd:?}: {}", stderr(&out));
    }
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "original");
    // Put the genuine snapshot back so the device is restored.
    std::fs::write(&snapshot, text).unwrap();
    let out = steer_in(&["nic", "restore", "--iface", POD_IF]);
    assert!(out.status.success(), "restore: {}", stderr(&out));
    std::fs::remove_file(&target).unwrap();
}

/// Deleting the interface under a running steer: it exits non-zero with the
/// reason, leaves nothing pinned, and a recreated interface of the same name
/// can be steered at once.
#[test]
fn a_deleted_interface_stops_its_run_and_a_recreated_one_is_steered_at_once() {
    require_root();
    let lab = Lab::new().expect("making the lab");
    let mut run = SteerRun::start(&lab, &["--interval", "0.1"]).expect("starting steer");
    let id = lab.run_id(&lab.rx_if).unwrap();
    assert!(id.pin_dir().join("link").exists());
    lab.rx().delete_link(&lab.rx_if).unwrap();
    let st = wait_exit(&mut run.child, 10).expect("steer run noticed the interface was deleted");
    let mut err = String::new();
    if let Some(mut e) = run.child.stderr.take() {
        e.read_to_string(&mut err).unwrap();
    }
    assert!(!st.success(), "steer run exited 0 after its interface vanished: {err}");
    assert!(err.contains("disappeared"), "{err}");
    assert!(!id.pin_dir().exists(), "pins left behind");
    assert!(!id.state_dir().exists(), "state left behind");
    // The same name again, in the same namespace.
    topology::create_veth(
        VethEnd::new(&lab.rx_if).netns(lab.rx().as_raw_fd()),
        VethEnd::new(&lab.tx_if).netns(lab.tx().as_raw_fd()),
    )
    .unwrap();
    lab.rx().set_link_up(&lab.rx_if).unwrap();
    let again = SteerRun::start(&lab, &[]).expect("steering the recreated interface at once");
    let (ok, log) = again.stop().unwrap();
    assert!(ok, "{log}");
    assert!(!Path::new(&lab.pin_dir()).exists());
}

/// A user without the capabilities, against a live run in its namespace: the
/// commands fail and say "permission denied", never "no steer attached".
#[test]
fn a_user_without_privileges_is_told_permission_denied() {
    require_root();
    assert!(
        Command::new("setpriv").arg("--version").output().is_ok_and(|o| o.status.success()),
        "setpriv (util-linux) is needed for this test: apt-get install util-linux"
    );
    let pod = Pod::new(44);
    let mut run = netns_exec(&pod.ns, &["run", "--iface", POD_IF, "--quiet", "--mode", "rfs"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting steer run --mode rfs");
    pod.wait_attached();
    let bin = steer_bin();
    for cmd in
        [&["stats", "--iface", POD_IF, "--once", "--interval", "0.1"][..], &["flows", "--iface", POD_IF]]
    {
        let mut args = vec![
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ];
        args.push(bin.to_str().unwrap());
        args.extend_from_slice(cmd);
        let out =
            steer_tests::netns_exec(&pod.ns, "setpriv", &args).env("RUST_BACKTRACE", "0").output().unwrap();
        let err = stderr(&out);
        assert!(
            !out.status.success(),
            "steer {cmd:?} as nobody succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            err.contains("permission denied") && !err.contains("no steer"),
            "steer {cmd:?} as nobody: {err}"
        );
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(run.id() as i32, libc::SIGTERM) };
    assert!(wait_exit(&mut run, 15).is_some_and(|s| s.success()), "{}", child_stderr(&mut run));
}

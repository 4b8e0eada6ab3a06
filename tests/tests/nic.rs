//! `steer nic` and `steer run --engine kernel` on devices the tests create.
//!
//! The devices (a veth pair with 4 queues, a TAP) are made in the ROOT network
//! namespace with unique names: /sys/class/net there shows them, so the steer
//! binary reads and writes the right sysfs files, and the global
//! rps_sock_flow_entries (which only the initial namespace has) is in reach.
//! They are deleted on drop, and rps_sock_flow_entries is put back to the
//! value it had even if steer failed to. The namespace tests show the other
//! way: a device in a namespace, reached the way `ip netns exec` reaches it
//! ([`steer_tests::netns_exec`]), where the queues are the namespace's and
//! rps_sock_flow_entries stays the host's.
//!
//! "Restored bit for bit" is checked on `steer nic show --json`, which holds
//! every knob steer can change (channels, coalescing, offloads, RSS, IRQs,
//! every queue's rps_cpus/rps_flow_cnt/xps_cpus, rps_sock_flow_entries, NAPI).

use std::{
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;
use steer::{
    lab::topology::{self, NetNs},
    sys::netlink::VethEnd,
};
use steer_tests::{in_ns_command, netns_exec, netns_exec_in_pid_ns, require_root, steer_bin};

const RFS: &str = "/proc/sys/net/core/rps_sock_flow_entries";

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{:x}{}", std::process::id() & 0xffff, N.fetch_add(1, Ordering::Relaxed))
}

/// A device of ours in the root namespace, deleted on drop, plus the global
/// RFS size put back exactly as it was.
struct Dev {
    name: String,
    rfs_before: String,
}

impl Dev {
    fn veth4() -> Self {
        require_root();
        let name = unique("snv");
        let peer = format!("{name}p");
        topology::create_veth(VethEnd::new(&name).queues(4, 4), VethEnd::new(&peer).queues(4, 4))
            .expect("creating a veth pair with 4 queues");
        Self::new(name)
    }

    fn tap() -> Self {
        require_root();
        let name = unique("snt");
        topology::create_tap(&name).expect("creating a TAP device");
        Self::new(name)
    }

    fn new(name: String) -> Self {
        let rfs_before = std::fs::read_to_string(RFS).expect("reading rps_sock_flow_entries");
        Self { name, rfs_before }
    }

    fn show(&self) -> Value {
        let out = steer(&["nic", "show", "--iface", &self.name, "--json"]);
        assert!(out.status.success(), "steer nic show: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).expect("nic show --json is JSON")
    }

    fn state_file(&self) -> PathBuf {
        steer::pins::RunId::of(&self.name).expect("the device exists").state_dir().join("nic.json")
    }

    fn queue(&self, q: &str, file: &str) -> String {
        std::fs::read_to_string(format!("/sys/class/net/{}/queues/{q}/{file}", self.name))
            .unwrap_or_else(|e| panic!("reading {q}/{file}: {e}"))
            .trim()
            .to_string()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = Command::new(steer_bin()).args(["nic", "restore", "--iface", &self.name]).output();
        let state = steer::pins::RunId::of(&self.name).map(|id| id.state_dir());
        let _ = topology::delete_link(&self.name);
        if let Ok(dir) = state {
            let _ = std::fs::remove_dir_all(dir);
        }
        if std::fs::read_to_string(RFS).ok().as_deref() != Some(&self.rfs_before) {
            let _ = std::fs::write(RFS, &self.rfs_before);
        }
    }
}

fn steer(args: &[&str]) -> Output {
    Command::new(steer_bin()).args(args).env("RUST_BACKTRACE", "0").output().expect("running steer")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn rfs() -> String {
    std::fs::read_to_string(RFS).unwrap().trim().to_string()
}

#[test]
fn veth_channels_rps_rfs_xps_apply_then_restore_bit_for_bit() {
    let dev = Dev::veth4();
    let before = dev.show();
    assert_eq!(before["channels"]["rx"], 4, "{before}");
    let out = steer(&[
        "nic",
        "apply",
        "--iface",
        &dev.name,
        "--channels",
        "2",
        "--rps-cpus",
        "0-1",
        "--rfs-entries",
        "4096",
        "--xps",
        "--offload",
        "gro=on",
    ]);
    assert!(out.status.success(), "apply: {}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ethtool -L") && text.contains("→"), "plan lines: {text}");
    assert!(Path::new(&dev.state_file()).exists(), "the snapshot must stay while applied");

    let during = dev.show();
    assert_eq!(during["channels"]["rx"], 2);
    assert_eq!(during["rx_queues"].as_array().unwrap().len(), 2, "rx queues follow the channel count");
    assert_eq!(dev.queue("rx-0", "rps_cpus"), "3");
    assert_eq!(dev.queue("rx-1", "rps_flow_cnt"), "2048", "rps_flow_cnt = 4096 / 2 rx queues");
    assert_eq!(dev.queue("tx-0", "xps_cpus"), "1");
    assert_eq!(dev.queue("tx-1", "xps_cpus"), "2");
    assert_eq!(rfs(), "4096");
    assert_eq!(during["offloads"]["gro"]["requested"], true);

    let out = steer(&["nic", "restore", "--iface", &dev.name]);
    assert!(out.status.success(), "restore: {}", stderr(&out));
    assert_eq!(dev.show(), before, "restore must put back every value");
    assert_eq!(rfs(), dev.rfs_before.trim());
    assert!(!Path::new(&dev.state_file()).exists(), "restore removes the snapshot");
}

#[test]
fn restore_after_a_shrink_puts_back_the_queues_it_dropped() {
    let dev = Dev::veth4();
    // A value on queue 3 that a shrink to 2 channels destroys.
    std::fs::write(format!("/sys/class/net/{}/queues/rx-3/rps_cpus", dev.name), "2").unwrap();
    let before = dev.show();
    let out = steer(&["nic", "apply", "--iface", &dev.name, "--channels", "2"]);
    assert!(out.status.success(), "apply: {}", stderr(&out));
    assert!(!Path::new(&format!("/sys/class/net/{}/queues/rx-3", dev.name)).exists());
    let out = steer(&["restore", "--iface", &dev.name]);
    assert!(out.status.success(), "steer restore: {}", stderr(&out));
    assert_eq!(dev.queue("rx-3", "rps_cpus"), "2");
    assert_eq!(dev.show(), before);
}

#[test]
fn tap_coalesce_rx_frames_set_and_restored() {
    let dev = Dev::tap();
    let before = dev.show();
    let out = steer(&["nic", "apply", "--iface", &dev.name, "--coalesce", "rx-frames=32"]);
    assert!(out.status.success(), "apply: {}", stderr(&out));
    assert_eq!(dev.show()["coalesce"]["rx-frames"], 32);
    let out = steer(&["nic", "restore", "--iface", &dev.name]);
    assert!(out.status.success(), "restore: {}", stderr(&out));
    assert_eq!(dev.show(), before);
}

#[test]
fn tap_refusing_a_coalescing_parameter_rolls_back_the_earlier_steps() {
    let dev = Dev::tap();
    let before = dev.show();
    let rfs_before = rfs();
    // rps_cpus and RFS succeed first; tun cannot do rx-usecs, so step 4 fails.
    let out = steer(&[
        "nic",
        "apply",
        "--iface",
        &dev.name,
        "--rps-cpus",
        "0",
        "--rfs-entries",
        "4096",
        "--coalesce",
        "rx-usecs=50",
    ]);
    assert!(!out.status.success(), "apply must fail");
    let e = stderr(&out);
    for want in
        ["step 4/4", "coalescing", "driver tun", "ETHTOOL_SCOALESCE", "os error 95", "rolled back the 3"]
    {
        assert!(e.contains(want), "error lacks \"{want}\": {e}");
    }
    assert_eq!(dev.show(), before, "nothing may stay changed");
    assert_eq!(rfs(), rfs_before);
    assert!(!Path::new(&dev.state_file()).exists(), "a clean rollback leaves no snapshot");
}

#[test]
fn coalescing_on_veth_is_refused_naming_the_driver_and_nothing_changes() {
    let dev = Dev::veth4();
    let before = dev.show();
    assert!(before["coalesce"]["unsupported"].as_str().unwrap().contains("not supported by driver veth"));
    let out = steer(&["nic", "apply", "--iface", &dev.name, "--rps-cpus", "1", "--coalesce", "rx-usecs=0"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("driver veth") && e.contains("coalescing") && e.contains("nothing was changed"),
        "{e}"
    );
    assert_eq!(dev.show(), before);
    assert!(!Path::new(&dev.state_file()).exists());
}

#[test]
fn bad_values_are_named_and_change_nothing() {
    let dev = Dev::veth4();
    let before = dev.show();
    for (args, want) in [
        (vec!["--channels", "9"], "at most 4"),
        (vec!["--channels", "0"], "--channels 0"),
        (vec!["--rps-cpus", "4096"], "CPU 4096 is offline"),
        (vec!["--coalesce", "rx-usec=1"], "\"rx-usec\""),
        (vec!["--offload", "gro=maybe"], "\"maybe\""),
        (vec!["--rss-equal", "2"], "RSS indirection table"),
    ] {
        let mut all = vec!["nic", "apply", "--iface", &dev.name];
        all.extend(args.iter());
        let out = steer(&all);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    let out = steer(&["nic", "show", "--iface", "steer-nope0"]);
    assert!(stderr(&out).contains("interface \"steer-nope0\" does not exist"), "{}", stderr(&out));
    assert_eq!(dev.show(), before);
    assert!(!Path::new(&dev.state_file()).exists());
}

/// Waits for the run's snapshot (written before its first change) and for its last change.
fn wait_applied(dev: &Dev, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    // GRO on is the throughput profile's last step on veth.
    while !(Path::new(&dev.state_file()).exists() && dev.show()["offloads"]["gro"]["requested"] == true) {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("steer run exited early: {st}");
        }
        assert!(Instant::now() < deadline, "steer run did not apply within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_kernel_run(dev: &Dev) -> std::process::Child {
    Command::new(steer_bin())
        .args(["run", "--iface", &dev.name, "--engine", "kernel", "--profile", "throughput", "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting steer run")
}

#[test]
fn sigkill_mid_kernel_engine_run_then_steer_restore_puts_back_the_snapshot() {
    let dev = Dev::veth4();
    let before = dev.show();
    let mut child = spawn_kernel_run(&dev);
    wait_applied(&dev, &mut child);
    assert_eq!(rfs(), "32768", "the throughput profile sizes RFS as the seeds do");
    assert_eq!(dev.queue("rx-0", "rps_flow_cnt"), "8192", "32768 / 4 rx queues");
    // While it runs, steer restore refuses and names the owner.
    let out = steer(&["restore", "--iface", &dev.name]);
    assert!(!out.status.success() && stderr(&out).contains("still running"), "{}", stderr(&out));
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    assert_ne!(dev.show(), before, "a killed run leaves its settings");
    let out = steer(&["restore", "--iface", &dev.name]);
    assert!(out.status.success(), "steer restore: {}", stderr(&out));
    assert_eq!(dev.show(), before);
    assert_eq!(rfs(), dev.rfs_before.trim());
    assert!(!Path::new(&dev.state_file()).exists());
}

#[test]
fn sigterm_ends_a_kernel_engine_run_with_everything_restored() {
    let dev = Dev::veth4();
    let before = dev.show();
    let mut child = spawn_kernel_run(&dev);
    wait_applied(&dev, &mut child);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "steer run after SIGTERM: {}", stderr(&out));
    assert_eq!(dev.show(), before);
    assert!(!Path::new(&dev.state_file()).exists());
}

/// The interface of the default route: the machine's real one. Only read.
fn real_interface() -> String {
    let routes = std::fs::read_to_string("/proc/net/route").unwrap();
    routes
        .lines()
        .skip(1)
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&"00000000")).then(|| f[0].to_string())
        })
        .expect("no default route: this test needs the machine's real interface")
}

#[test]
fn plan_on_the_real_interface_is_read_only() {
    require_root();
    let iface = real_interface();
    let show = || steer(&["nic", "show", "--iface", &iface, "--json"]).stdout;
    let rfs_before = rfs();
    let before = show();
    for profile in ["latency", "throughput"] {
        let out = steer(&["nic", "plan", "--iface", &iface, "--profile", profile, "--xps"]);
        assert!(out.status.success(), "plan --profile {profile}: {}", stderr(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("plan for {iface}")));
    }
    let out = steer(&["nic", "plan", "--iface", &iface, "--profile", "throughput", "--json"]);
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan --json is JSON");
    assert_eq!(plan["iface"], iface.as_str());
    assert_eq!(show(), before, "plan must not change anything");
    assert_eq!(rfs(), rfs_before);
    assert!(!steer::pins::RunId::of(&iface).unwrap().state_dir().join("nic.json").exists());
}

#[test]
fn a_sys_of_another_namespace_is_refused_and_ip_netns_exec_works() {
    require_root();
    let netns = NetNs::create(&unique("steer-nic-")).unwrap(); // removed on drop
    let ns = netns.name.clone();
    let name = unique("snn");
    let peer = format!("{name}p");
    topology::create_veth(
        VethEnd::new(&name).queues(2, 2).netns(netns.as_raw_fd()),
        VethEnd::new(&peer).netns(netns.as_raw_fd()),
    )
    .unwrap();
    // setns only: /sys still shows the root namespace, which has no such device.
    let out = in_ns_command(&ns, steer_bin(), &["nic", "show", "--iface", &name]).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("ip netns exec"), "{}", stderr(&out));
    // ip netns exec mounts the namespace's /sys: show and a queue change work there.
    let run = |args: &[&str]| netns_exec(&ns, steer_bin(), args).output().unwrap();
    let out = run(&["nic", "apply", "--iface", &name, "--rps-cpus", "0"]);
    assert!(out.status.success(), "apply in the namespace: {}", stderr(&out));
    let out = run(&["nic", "show", "--iface", &name, "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rx_queues"][1]["rps_cpus"], "1");
    let out = run(&["nic", "restore", "--iface", &name]);
    assert!(out.status.success(), "restore in the namespace: {}", stderr(&out));
    let out = run(&["nic", "show", "--iface", &name, "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rx_queues"][1]["rps_cpus"], "0");
}

/// A network namespace of the test's own holding a veth pair with 4 queues;
/// steer runs there as through `ip netns exec`, which mounts the namespace's
/// /sys. The namespace, and the veth with it, is deleted on drop.
struct NsDev {
    ns: String,
    name: String,
    netns: NetNs,
}

impl NsDev {
    fn veth4() -> Self {
        require_root();
        let netns = NetNs::create(&unique("steer-nicns-")).expect("creating a network namespace");
        let dev = Self { ns: netns.name.clone(), name: unique("snk"), netns };
        let fd = dev.netns.as_raw_fd();
        let peer = format!("{}p", dev.name);
        topology::create_veth(
            VethEnd::new(&dev.name).queues(4, 4).netns(fd),
            VethEnd::new(&peer).queues(4, 4).netns(fd),
        )
        .expect("creating a veth pair with 4 queues in the namespace");
        dev
    }

    /// `steer ARGS` in the namespace, as `ip netns exec` runs it.
    fn steer(&self, args: &[&str]) -> Command {
        let mut c = netns_exec(&self.ns, steer_bin(), args);
        c.env("RUST_BACKTRACE", "0");
        c
    }

    fn show(&self) -> Value {
        let out = self.steer(&["nic", "show", "--iface", &self.name, "--json"]).output().unwrap();
        assert!(out.status.success(), "steer nic show in the namespace: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).expect("nic show --json is JSON")
    }
}

impl Drop for NsDev {
    fn drop(&mut self) {
        let _ = self.steer(&["nic", "restore", "--iface", &self.name]).output();
        let name = self.name.clone();
        let state =
            steer_tests::in_ns(&self.ns, move || steer::pins::RunId::of(&name).map(|id| id.state_dir()));
        // The namespace goes when `netns` drops, after this.
        if let Ok(Ok(dir)) = state {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn queue_values(show: &Value, kind: &str, file: &str) -> Vec<String> {
    show[kind].as_array().unwrap().iter().map(|q| q[file].as_str().unwrap().to_string()).collect()
}

#[test]
fn kernel_engine_in_a_namespace_applies_the_queues_leaves_the_host_table_and_restores_after_sigkill() {
    let dev = NsDev::veth4();
    let rfs_before = rfs();
    let before = dev.show();
    assert_eq!(queue_values(&before, "rx_queues", "rps_cpus").len(), 4, "{before}");
    let mut child = dev
        .steer(&["run", "--iface", &dev.name, "--engine", "kernel", "--cpus", "0-1", "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting steer run in the namespace");
    // XPS on the last tx queue is the plan's last step.
    let deadline = Instant::now() + Duration::from_secs(20);
    let during = loop {
        if let Ok(Some(st)) = child.try_wait() {
            let out = child.wait_with_output().unwrap();
            panic!("steer run exited early ({st}): {}", stderr(&out));
        }
        let now = dev.show();
        if queue_values(&now, "tx_queues", "xps_cpus").last().map(String::as_str) == Some("2") {
            break now;
        }
        assert!(Instant::now() < deadline, "steer run did not apply within 20 s: {now}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(queue_values(&during, "rx_queues", "rps_cpus"), ["3"; 4], "RPS over CPUs 0-1");
    assert_eq!(queue_values(&during, "rx_queues", "rps_flow_cnt"), ["8192"; 4], "32768 / 4 rx queues");
    assert_eq!(queue_values(&during, "tx_queues", "xps_cpus"), ["1", "2", "1", "2"], "XPS round-robin");
    assert_eq!(rfs(), rfs_before.trim(), "the host's rps_sock_flow_entries is not the namespace's to change");
    let out = dev.steer(&["restore", "--iface", &dev.name]).output().unwrap();
    assert!(!out.status.success() && stderr(&out).contains("still running"), "{}", stderr(&out));
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    assert_ne!(dev.show(), before, "a killed run leaves its settings");
    let out = dev.steer(&["restore", "--iface", &dev.name]).output().unwrap();
    assert!(out.status.success(), "steer restore in the namespace: {}", stderr(&out));
    assert_eq!(dev.show(), before, "restore must put back every value");
    assert_eq!(rfs(), rfs_before.trim());
}

#[test]
fn a_plan_in_a_namespace_says_the_global_rfs_table_is_the_hosts() {
    let dev = NsDev::veth4();
    let plan = |c: &mut Command| {
        let out = c.output().unwrap();
        assert!(out.status.success(), "steer nic plan in the namespace: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let args = ["nic", "plan", "--iface", &dev.name, "--rps-cpus", "0", "--rfs-entries", "4096"];
    let text = plan(&mut dev.steer(&args));
    assert!(text.contains("rx-3 rps_flow_cnt: 0 → 1024"), "the queues' share is planned: {text}");
    assert!(!text.contains(". rps_sock_flow_entries"), "no step for the host's table: {text}");
    for want in [
        "rps_sock_flow_entries skipped",
        "the global RFS table is the host's",
        "net.core.rps_sock_flow_entries=4096",
    ] {
        assert!(text.contains(want), "note lacks \"{want}\": {text}");
    }
    // Where PID 1 is in the initial namespace, the host's value is shown: a fresh PID namespace
    // whose PID 1 stays in the initial network namespace, with steer its child in the device's.
    let text = plan(&mut netns_exec_in_pid_ns(&dev.ns, steer_bin(), &args));
    assert!(text.contains(&format!("the host has {}", rfs())), "{text}");
}

//! `steer lab` and `steer lab bench` on the real kernel: every scenario
//! produces numbers, steer's scenarios really steered (counters), the kernel
//! RPS baseline really took effect (read back, and softnet's RPS IPIs), and
//! nothing is left behind: namespaces, sysctls, also after Ctrl-C. No
//! thresholds: the numbers go in bench/results, not in assertions.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use steer::lab::{
    kernel::{KernelRps, Rfs},
    topology::Topology,
};
use steer_tests::{require_root, steer_bin};

const SOCK_FLOW: &str = "/proc/sys/net/core/rps_sock_flow_entries";

/// Namespaces the lab of process `pid` may have left.
fn leftovers(pid: u32) -> Vec<String> {
    let (tx, rx) = (format!("steer-lab-tx-{pid:x}x"), format!("steer-lab-rx-{pid:x}x"));
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&tx) || n.starts_with(&rx))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn quick_bench_measures_every_scenario_and_steer_steers() {
    require_root();
    let dir = std::env::temp_dir().join(format!("steer-bench-test-{}", std::process::id()));
    let sock_flow_before = std::fs::read_to_string(SOCK_FLOW).unwrap();
    let child = Command::new(steer_bin())
        // One round: this checks that every scenario measures and steers, not the figures.
        .args(["lab", "bench", "--quick", "--no-cost", "--rounds", "1", "--out"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "steer lab bench failed: {stderr}");
    assert!(leftovers(pid).is_empty(), "namespaces left: {:?}", leftovers(pid));
    assert_eq!(
        std::fs::read_to_string(SOCK_FLOW).unwrap(),
        sock_flow_before,
        "rps_sock_flow_entries not restored"
    );

    let ncpu = steer::cpus::online().unwrap().len();
    let name = format!("quick-{ncpu}cpu");
    let md = std::fs::read_to_string(dir.join(format!("{name}.md"))).unwrap();
    assert!(md.contains("| scenario |") && md.contains("zero-loss"), "{md}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap()).unwrap();
    let scenarios = json["scenarios"].as_array().unwrap();
    let kinds: Vec<&str> = scenarios.iter().map(|s| s["scenario"]["kind"].as_str().unwrap()).collect();
    for k in ["no_steering", "kernel_rps", "kernel_rfs", "steer_rss", "steer_rfs"] {
        assert!(kinds.contains(&k), "scenario {k} missing: {kinds:?}");
    }
    for s in scenarios {
        let name = s["scenario"]["name"].as_str().unwrap();
        assert!(s["skipped"].is_null(), "{name} skipped: {}", s["skipped"]);
        let max = &s["flood"]["at_max"];
        assert!(max["sent"].as_u64().unwrap() > 0, "{name}: nothing sent");
        assert!(max["offered_pps"].as_f64().unwrap() > 0.0, "{name}: no offered rate");
        assert!(max["delivered"].as_u64().unwrap() > 0, "{name}: nothing delivered");
        assert!(!max["cpu"]["pps"].as_array().unwrap().is_empty(), "{name}: no per-CPU picture");
        assert!(
            s["flood"]["zero_loss"].is_object()
                || s["flood"]["steps"].as_array().is_some_and(|v| !v.is_empty())
        );
        match s["scenario"]["kind"].as_str().unwrap() {
            "steer_rss" | "steer_rfs" => {
                assert_eq!(
                    s["steered"], true,
                    "{name}: some CPU of the set got no redirects: {}",
                    max["steered_in"]
                );
                assert!(
                    max["redirected"].as_u64().unwrap() >= max["sent"].as_u64().unwrap() * 9 / 10,
                    "{name}"
                );
            }
            "kernel_rps" | "kernel_rfs" => {
                // RPS to another CPU shows as IPIs in softnet_stat (received_rps).
                let cpus: Vec<u64> =
                    s["scenario"]["cpus"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect();
                if cpus.iter().any(|c| *c != 0) {
                    assert!(s["received_rps"].as_u64().unwrap() > 0, "{name}: RPS did not take effect");
                }
            }
            _ => {}
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kernel_rps_is_written_in_the_lab_namespace_and_restored() {
    require_root();
    let topo = Topology::new().unwrap();
    let cpus = steer::cpus::online().unwrap();
    let before = KernelRps::current_mask(&topo).unwrap();
    assert!(before.trim_start_matches(['0', ',']).is_empty(), "RPS already on: {before}");
    let sock_flow_before = std::fs::read_to_string(SOCK_FLOW).unwrap();
    let rps = KernelRps::apply(&topo, &cpus, Some(Default::default())).unwrap();
    let now = KernelRps::current_mask(&topo).unwrap();
    assert_eq!(
        u64::from_str_radix(&now.replace(',', ""), 16).unwrap(),
        cpus.iter().map(|c| 1u64 << c).sum::<u64>(),
        "mask read back from the lab's rx queue: {now}"
    );
    assert_eq!(std::fs::read_to_string(SOCK_FLOW).unwrap().trim(), "32768");
    rps.restore(&topo).unwrap();
    assert_eq!(KernelRps::current_mask(&topo).unwrap(), before);
    assert_eq!(std::fs::read_to_string(SOCK_FLOW).unwrap(), sock_flow_before);
    // The root namespace's view of /sys was never touched.
    assert!(!std::path::Path::new(&format!("/sys/class/net/{}", topo.rx_if)).exists());
}

#[test]
fn kernel_rfs_in_the_lab_sizes_the_queue_notes_the_global_and_leaves_no_snapshot() {
    require_root();
    let topo = Topology::new().unwrap();
    let cnt_before = KernelRps::current(&topo, "rps_flow_cnt").unwrap();
    let sock_flow_before = std::fs::read_to_string(SOCK_FLOW).unwrap();
    let noted = format!("/run/steer/lab-sock-flow.{}", std::process::id());
    let rps = KernelRps::apply(&topo, &[0], Some(Rfs { sock_flow_entries: 4096 })).unwrap();
    assert_eq!(KernelRps::current(&topo, "rps_flow_cnt").unwrap(), "4096", "4096 entries / 1 rx queue");
    assert_eq!(std::fs::read_to_string(SOCK_FLOW).unwrap().trim(), "4096");
    assert_eq!(
        std::fs::read_to_string(&noted).unwrap().trim(),
        sock_flow_before.trim(),
        "the global value replaced is noted for a lab started after a kill"
    );
    // The veth goes with the lab's namespace: no NIC snapshot is left to restore.
    let rx_if = topo.rx_if.clone();
    let state = topo.rx_ns.run(move || steer::pins::RunId::of(&rx_if)).unwrap().unwrap().state_dir();
    assert!(!state.exists(), "{} was left", state.display());
    rps.restore(&topo).unwrap();
    assert_eq!(KernelRps::current(&topo, "rps_flow_cnt").unwrap(), cnt_before);
    assert_eq!(std::fs::read_to_string(SOCK_FLOW).unwrap(), sock_flow_before);
    assert!(!std::path::Path::new(&noted).exists());
}

#[test]
fn lab_topology_is_built_by_netlink_and_removed_on_drop() {
    require_root();
    let topo = Topology::new().unwrap();
    let (tx, rx) = (topo.tx_ns.name.clone(), topo.rx_ns.name.clone());
    assert!(std::path::Path::new("/run/netns").join(&tx).exists());
    let rx_if = topo.rx_if.clone();
    let idx = topo.rx_ns.run(move || steer::iface::index(&rx_if)).unwrap().unwrap();
    assert_eq!(idx, topo.rx_ifindex);
    // The tx side reaches the rx side over the veth (a UDP datagram, socket path).
    let rx_ip = topo.rx_ip;
    let sock = topo.rx_ns.run(move || std::net::UdpSocket::bind((rx_ip, 7009)).unwrap()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    topo.tx_ns
        .run(move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            s.send_to(b"lab", (rx_ip, 7009)).unwrap();
        })
        .unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(sock.recv(&mut buf).unwrap(), 3);
    drop(sock);
    drop(topo);
    assert!(!std::path::Path::new("/run/netns").join(&tx).exists());
    assert!(!std::path::Path::new("/run/netns").join(&rx).exists());
}

#[test]
fn ctrl_c_removes_the_lab() {
    require_root();
    let child = Command::new(steer_bin())
        .args(["lab", "bench", "--quick", "--no-cost", "--out", "/nonexistent-steer-dir"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while leftovers(pid).len() < 2 {
        assert!(Instant::now() < deadline, "the lab did not appear");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("the lab was removed"), "{err}");
    assert!(leftovers(pid).is_empty(), "namespaces left after Ctrl-C: {:?}", leftovers(pid));
}

#[test]
fn a_killed_labs_namespaces_are_removed_by_the_next_lab() {
    require_root();
    let mut child = Command::new(steer_bin())
        .args(["lab", "bench", "--quick", "--no-cost", "--out", "/nonexistent-steer-dir"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while leftovers(pid).len() < 2 {
        assert!(Instant::now() < deadline, "the lab did not appear");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(leftovers(pid).len(), 2, "SIGKILL runs no cleanup: the namespaces stay");
    let topo = Topology::new().unwrap();
    assert!(leftovers(pid).is_empty(), "stale namespaces not removed: {:?}", leftovers(pid));
    drop(topo);
}

#[test]
fn a_killed_rfs_scenarios_sysctl_is_restored_by_the_next_lab() {
    require_root();
    let before = std::fs::read_to_string(SOCK_FLOW).unwrap();
    let only = "kernel RPS+RFS all CPUs";
    let mut child = Command::new(steer_bin())
        .args(["lab", "bench", "--quick", "--no-cost", "--only", only, "--out", "/nonexistent-steer-dir"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state = format!("/run/steer/lab-sock-flow.{}", child.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::path::Path::new(&state).exists() {
        assert!(Instant::now() < deadline, "the RFS scenario did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(std::fs::read_to_string(SOCK_FLOW).unwrap().trim(), "32768", "RFS was on when killed");
    let dir = std::env::temp_dir().join(format!("steer-bench-test-k{}", std::process::id()));
    let out = Command::new(steer_bin())
        .args(["lab", "bench", "--quick", "--no-cost", "--no-rr", "--only", "no steering", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("restored net.core.rps_sock_flow_entries"));
    assert_eq!(std::fs::read_to_string(SOCK_FLOW).unwrap(), before);
    assert!(!std::path::Path::new(&state).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_is_named_and_builds_nothing() {
    require_root();
    for (args, needle) in [
        (&["lab", "--flows", "0"][..], "invalid --flows 0"),
        (&["lab", "--irq-cpu", "4096"][..], "invalid --irq-cpu 4096"),
        (&["lab", "bench", "--qsize", "0"][..], "invalid --qsize 0"),
        (&["lab", "bench", "--quick", "--only", "nothing-matches"][..], "--only \"nothing-matches\""),
    ] {
        let child = Command::new(steer_bin())
            .args(args)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: expected {needle:?} in {err}");
        assert!(leftovers(pid).is_empty(), "{args:?} left namespaces");
    }
}

//! `steer run --config FILE` as the sidecar runs it: options that only the
//! file gives (mode, engine, profile, RFS sizes) take effect on a real run.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;
use steer_tests::{netns_exec, require_root, steer_bin, Lab, SteerRun};

fn config(text: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let p = std::env::temp_dir().join(format!(
        "steer-config-test-{}-{}.toml",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&p, text).unwrap();
    p
}

/// `mode = "rfs"`, `flow-entries`, `migrate-idle-us` and `xdp-mode` from the file alone.
#[test]
fn rfs_mode_and_sizes_from_the_config_file_take_effect() {
    require_root();
    let lab = Lab::new().expect("making the lab");
    let f = config("mode = \"rfs\"\nflow-entries = 1024\nmigrate-idle-us = 250\nxdp-mode = \"skb\"\n");
    let run = SteerRun::start(&lab, &["--config", f.to_str().unwrap()]).expect("steer run --config");
    let rec = lab.run_id(&lab.rx_if).unwrap().read_run().expect("run.json");
    assert_eq!(
        (rec.steering.as_str(), rec.flow_entries, rec.migrate_idle_us, rec.mode.as_str()),
        ("rfs", Some(1024), Some(250), "generic"),
        "{rec:?}"
    );
    let out = lab.steer(&["flows", "--iface", &lab.rx_if, "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "steer flows on a run whose file said rfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, log) = run.stop().unwrap();
    assert!(ok, "{log}");
    std::fs::remove_file(f).unwrap();
}

/// `engine = "kernel"`, `profile` and `rfs-entries` from the file alone, in the
/// lab's namespace the way README says (`ip netns exec`, emulated by
/// [`netns_exec`]): the kernel's RPS is configured while it runs and put back
/// after.
#[test]
fn kernel_engine_and_profile_from_the_config_file_take_effect() {
    require_root();
    let lab = Lab::new().expect("making the lab");
    let f = config(&format!(
        "iface = \"{}\"\nengine = \"kernel\"\nprofile = \"throughput\"\nrfs-entries = 4096\ncpus = \"0\"\nquiet = true\n",
        lab.rx_if
    ));
    let show = || -> Value {
        let out = netns_exec(&lab.rx_ns, steer_bin(), &["nic", "show", "--iface", &lab.rx_if, "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "nic show: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let q = |v: &Value, f: &str| v["rx_queues"][0][f].as_str().unwrap_or_default().to_string();
    let before = show();
    let mut child = netns_exec(&lab.rx_ns, steer_bin(), &["run", "--config", f.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let during = loop {
        let v = show();
        if q(&v, "rps_flow_cnt") == "4096" {
            break v;
        }
        assert!(child.try_wait().unwrap().is_none(), "steer run --config exited early");
        assert!(Instant::now() < deadline, "the kernel engine from the file never applied: {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(q(&during, "rps_cpus").trim_start_matches(['0', ',']), "1", "rps_cpus over CPU 0: {during}");
    assert!(lab.state_dir().join("nic.json").exists(), "the snapshot is there while it runs");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    assert!(st.success(), "steer run exited with {st}");
    let after = show();
    assert_eq!(
        (q(&after, "rps_cpus"), q(&after, "rps_flow_cnt")),
        (q(&before, "rps_cpus"), q(&before, "rps_flow_cnt")),
        "restored on exit"
    );
    std::fs::remove_file(f).unwrap();
}

use std::path::Path;

use super::{file, keys, Engine, EngineRun, RunArgs};
use crate::{config::HashArg, config::XdpMode, nic::Profile, rfs::Mode};

fn parse(s: &str) -> crate::error::Result<RunArgs> {
    file::parse(s, Path::new("test.toml"))
}

fn cli(args: &[&str]) -> RunArgs {
    RunArgs::parse_args(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
}

/// One sample per `steer run` option: its TOML value, and the engine it applies to.
fn sample(key: &str) -> Option<(&'static str, Engine)> {
    Some(match key {
        "iface" => ("\"lo\"", Engine::Xdp),
        "cpus" => ("[0]", Engine::Xdp),
        "hash" => ("\"toeplitz\"", Engine::Xdp),
        "key" => (
            "\"6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa\"",
            Engine::Xdp,
        ),
        "seed" => ("7", Engine::Xdp),
        "symmetric" => ("true", Engine::Xdp),
        "table-size" => ("512", Engine::Xdp),
        "inner" => ("\"gre,vxlan\"", Engine::Xdp),
        "inner-udp-ports" => ("\"8472=vxlan,5555=fou\"", Engine::Xdp),
        "qsize" => ("64", Engine::Xdp),
        "xdp-mode" => ("\"skb\"", Engine::Xdp),
        "local-pass" => ("\"off\"", Engine::Xdp),
        "spread" => ("\"always\"", Engine::Xdp),
        "replace" => ("true", Engine::Xdp),
        "mode" => ("\"rfs\"", Engine::Xdp),
        "flow-entries" => ("1024", Engine::Xdp),
        "migrate-idle-us" => ("250", Engine::Xdp),
        "udp-timeout-s" => ("5", Engine::Xdp),
        "engine" => ("\"kernel\"", Engine::Kernel),
        "profile" => ("\"latency\"", Engine::Xdp),
        "rfs-entries" => ("4096", Engine::Kernel),
        "metrics" => ("\"9100\"", Engine::Xdp),
        "interval" => ("2.5", Engine::Xdp),
        "quiet" => ("true", Engine::Xdp),
        "rebalance" => ("true", Engine::Xdp),
        "rebalance-interval" => ("250", Engine::Xdp),
        "rebalance-threshold" => ("1.25", Engine::Xdp),
        "rebalance-moves" => ("4", Engine::Xdp),
        _ => return None,
    })
}

/// The base a sample needs to be valid on its own.
fn base(key: &str, engine: Engine) -> String {
    let mut t = String::new();
    if key != "iface" {
        t.push_str("iface = \"lo\"\n");
    }
    if engine == Engine::Kernel && key != "engine" {
        t.push_str("engine = \"kernel\"\n");
    }
    match key {
        "key" => t.push_str("hash = \"toeplitz\"\n"),
        "flow-entries" | "migrate-idle-us" | "udp-timeout-s" => t.push_str("mode = \"rfs\"\n"),
        "rebalance-interval" | "rebalance-threshold" | "rebalance-moves" => t.push_str("rebalance = true\n"),
        _ => {}
    }
    t
}

/// Every option of `steer run`, taken from the clap definition (so a new one
/// cannot be forgotten), has the same effect in a config file as on the
/// command line: the same parsed options and the same validated run.
#[test]
fn every_run_option_works_in_the_file_and_on_the_command_line() {
    let keys = keys();
    assert!(keys.len() >= 19, "{keys:?}");
    for key in keys {
        let (value, engine) = sample(&key).unwrap_or_else(|| panic!("no sample for option --{key}: add one"));
        let base_text = base(&key, engine);
        let from_file = parse(&format!("{base_text}{key} = {value}\n"))
            .unwrap_or_else(|e| panic!("{key} in a file: {e}"));
        // The command line: the base from the same parser, the option as a user types it.
        let mut args = file::table_to_args(&toml::from_str(&base_text).unwrap()).unwrap();
        let typed = value.trim_matches(['"', '[', ']']).to_string();
        args.push(format!("--{key}"));
        // A flag is typed bare: `--symmetric`.
        if typed != "true" {
            args.push(typed);
        }
        let from_cli = RunArgs::parse_args(&args).unwrap_or_else(|e| panic!("--{key}: {e}"));
        assert_eq!(from_file, from_cli, "--{key}");
        assert!(from_file.to_table().contains_key(&key), "--{key} was not taken: {from_file:?}");
        let (a, b) = (from_file.validate(), from_cli.validate());
        assert_eq!(format!("{a:?}"), format!("{b:?}"), "--{key}");
        a.unwrap_or_else(|e| panic!("--{key} = {value}: {e}"));
    }
}

#[test]
fn file_options_take_effect() {
    let r = parse(
        "iface = \"lo\"\nmode = \"rfs\"\nflow-entries = 1024\nmigrate-idle-us = 250\nprofile = \"latency\"\n",
    )
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(r.profile, Profile::Latency);
    let EngineRun::Xdp(o) = r.engine else { panic!("engine xdp expected") };
    let rfs = o.hash.rfs.expect("mode = rfs from the file");
    assert_eq!((rfs.flow_entries, rfs.migrate_idle_us), (1024, 250));
    let r = parse("iface = \"lo\"\nengine = \"kernel\"\nrfs-entries = 4096\ncpus = 0\n")
        .unwrap()
        .validate()
        .unwrap();
    match r.engine {
        EngineRun::Kernel { cpus, rfs_entries } => assert_eq!((cpus, rfs_entries), (vec![0], 4096)),
        EngineRun::Xdp(_) => panic!("engine = kernel from the file was ignored"),
    }
}

#[test]
fn every_option_parses_from_toml() {
    let s = parse(
        r#"
        iface = "eth1"
        cpus = [1, 2, 3]
        hash = "toeplitz"
        key = "00"
        seed = 7
        symmetric = true
        table-size = 512
        qsize = 1024
        xdp-mode = "skb"
        replace = true
        interval = 2.5
        quiet = true
        metrics = "9100"
        "#,
    )
    .unwrap();
    assert_eq!(s.iface.as_deref(), Some("eth1"));
    assert_eq!(s.hash.cpus.as_deref(), Some("1,2,3"));
    assert_eq!(s.hash.hash, Some(HashArg::Toeplitz));
    assert_eq!(
        (s.hash.seed, s.hash.symmetric, s.hash.table_size, s.qsize),
        (Some(7), Some(true), Some(512), Some(1024))
    );
    assert_eq!(s.xdp_mode, Some(XdpMode::Skb));
    assert_eq!((s.replace, s.quiet), (Some(true), Some(true)));
    assert_eq!(s.interval, Some(2.5));
    assert_eq!(s.metrics.as_deref(), Some("9100"));
}

#[test]
fn command_line_overrides_the_file() {
    let dir = std::env::temp_dir().join(format!("steer-opts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("f.toml");
    std::fs::write(&path, "iface = \"eth1\"\ncpus = \"0-3\"\ntable-size = 64\nsymmetric = true\n").unwrap();
    let s = file::merge(Some(&path), &cli(&["--cpus", "5", "--seed", "3", "--symmetric=false"])).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(s.hash.cpus.as_deref(), Some("5"));
    assert_eq!(s.hash.table_size, Some(64));
    assert_eq!(s.hash.seed, Some(3));
    assert_eq!(s.hash.symmetric, Some(false));
    assert_eq!(s.hash.hash, None);
    assert_eq!(s.config.as_deref(), Some(path.as_path()));
}

#[test]
fn errors_name_the_bad_value() {
    let e = parse("table_size = 5\n").unwrap_err().to_string();
    assert!(e.contains("table_size") && e.contains("line 1"), "{e}");
    let e = parse("iface = \"x\"\nhash = \"md5\"\n").unwrap_err().to_string();
    assert!(e.contains("\"md5\"") && e.contains("toeplitz") && e.contains("line 2"), "{e}");
    let e = RunArgs::default().validate().unwrap_err().to_string();
    assert!(e.contains("--iface"), "{e}");
    let e = parse("cpus = \"x\"\n").unwrap().validate().unwrap_err().to_string();
    assert!(e.contains("--iface") || e.contains("\"x\""), "{e}");
    let e = parse("seed = -1\n").unwrap_err().to_string();
    assert!(e.contains("seed") && e.contains("-1"), "{e}");
    let e = parse("interval = [1]\n").unwrap_err().to_string();
    assert!(e.contains("interval"), "{e}");
}

#[test]
fn cpus_take_a_number_a_list_or_text() {
    for (v, want) in [("5", "5"), ("[1, 2]", "1,2"), ("\"0-3,6\"", "0-3,6")] {
        assert_eq!(parse(&format!("cpus = {v}\n")).unwrap().hash.cpus.as_deref(), Some(want), "{v}");
    }
}

#[test]
fn options_that_do_not_apply_are_refused() {
    let e = cli(&["--iface", "lo", "--rfs-entries", "0"]).validate().unwrap_err().to_string();
    assert!(e.contains("--rfs-entries") && e.contains("--engine kernel"), "{e}");
    let e =
        cli(&["--iface", "lo", "--engine", "kernel", "--qsize", "64"]).validate().unwrap_err().to_string();
    assert!(e.contains("--qsize") && e.contains("--engine xdp"), "{e}");
    let e =
        cli(&["--iface", "lo", "--mode", "rss", "--flow-entries", "64"]).validate().unwrap_err().to_string();
    assert!(e.contains("--flow-entries 64"), "{e}");
}

#[test]
fn rebalance_options_are_checked_and_need_rebalance() {
    let e = cli(&["--iface", "lo", "--rebalance-threshold", "1.2"]).validate().unwrap_err().to_string();
    assert!(e.contains("--rebalance-threshold") && e.contains("--rebalance only"), "{e}");
    let e = cli(&["--iface", "lo", "--rebalance=false", "--rebalance-moves", "3"])
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("--rebalance-moves"), "{e}");
    for (opt, bad) in
        [("--rebalance-threshold", "0.9"), ("--rebalance-interval", "5"), ("--rebalance-moves", "0")]
    {
        let e = cli(&["--iface", "lo", "--rebalance", opt, bad]).validate().unwrap_err().to_string();
        assert!(e.contains(&format!("invalid {opt} {bad}")), "{e}");
    }
    let e = cli(&["--iface", "lo", "--engine", "kernel", "--rebalance"]).validate().unwrap_err().to_string();
    assert!(e.contains("--rebalance") && e.contains("--engine xdp"), "{e}");
    // Defaults, and --migrate-idle-us as the idle time of bucket moves without RFS.
    let r = cli(&["--iface", "lo", "--rebalance", "--migrate-idle-us", "800"]).validate().unwrap();
    let s = r.rebalance.expect("on");
    assert_eq!((s.interval.as_millis(), s.threshold, s.max_moves), (100, 1.10, 16));
    let EngineRun::Xdp(o) = r.engine else { panic!("engine xdp expected") };
    assert_eq!((o.hash.rfs, o.hash.steer_config().migrate_idle_us), (None, 800));
    assert!(cli(&["--iface", "lo"]).validate().unwrap().rebalance.is_none());
}

#[test]
fn spread_reaches_the_data_path_and_applies_live() {
    let cfg = |args: &[&str]| {
        let mut a = vec!["--iface", "lo"];
        a.extend_from_slice(args);
        match cli(&a).validate().unwrap().engine {
            EngineRun::Xdp(o) => o.hash.steer_config().spread,
            EngineRun::Kernel { .. } => panic!("engine xdp expected"),
        }
    };
    assert_eq!(cfg(&[]), steer_common::SPREAD_BUSY, "the default");
    assert_eq!(cfg(&["--spread", "always"]), steer_common::SPREAD_ALWAYS);
    let e =
        cli(&["--iface", "lo", "--engine", "kernel", "--spread", "busy"]).validate().unwrap_err().to_string();
    assert!(e.contains("--spread") && e.contains("--engine xdp"), "{e}");
    let e = parse("iface = \"a\"\nspread = \"sometimes\"\n").unwrap_err().to_string();
    assert!(e.contains("\"sometimes\"") && e.contains("always, busy"), "{e}");
    let a = parse("iface = \"a\"\n").unwrap();
    let b = parse("iface = \"a\"\nspread = \"always\"\n").unwrap();
    assert!(a.restart_only_changes(&b).is_empty(), "{:?}", a.restart_only_changes(&b));
}

#[test]
fn rebalance_is_applied_live_on_reload() {
    let a = parse("iface = \"a\"\n").unwrap();
    let b = parse("iface = \"a\"\nrebalance = true\nrebalance-threshold = 1.3\n").unwrap();
    assert!(a.restart_only_changes(&b).is_empty(), "{:?}", a.restart_only_changes(&b));
    let live = a.with_live_part_of(&b).unwrap();
    assert_eq!(live.rebalance_settings().unwrap().map(|s| s.threshold), Some(1.3));
}

#[test]
fn restart_only_options_are_kept_on_reload() {
    let a = parse("iface = \"a\"\nqsize = 64\n").unwrap();
    let b = parse("iface = \"b\"\nqsize = 128\ncpus = \"1\"\nmode = \"rfs\"\n").unwrap();
    let changes = a.restart_only_changes(&b);
    assert_eq!(changes.len(), 3, "{changes:?}");
    let live = a.with_live_part_of(&b).unwrap();
    assert_eq!(
        (live.iface.as_deref(), live.qsize, live.hash.cpus.as_deref()),
        (Some("a"), Some(64), Some("1"))
    );
    assert_eq!(live.mode, None::<Mode>);
}

#[test]
fn hostile_config_files_are_refused_with_the_reason() {
    let dir = std::env::temp_dir().join(format!("steer-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let big = dir.join("big.toml");
    std::fs::write(&big, vec![b'#'; (file::MAX_CONFIG_BYTES + 1) as usize]).unwrap();
    let binary = dir.join("binary.toml");
    std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
    for (path, want) in [
        (Path::new("/dev/zero"), "not a regular file"),
        (fifo.as_path(), "not a regular file"),
        (dir.as_path(), "a directory"),
        (big.as_path(), "bytes"),
        (binary.as_path(), "UTF-8"),
        (Path::new("/nonexistent/steer.toml"), "cannot be opened"),
    ] {
        let e = file::read(path).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains(&path.display().to_string()), "{}: {e}", path.display());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shipped_example_config_is_valid() {
    let text = include_str!("../../../deploy/steer.toml");
    let s = parse(text).unwrap();
    assert_eq!((s.iface.as_deref(), s.hash.cpus.as_deref()), (Some("eth0"), Some("1-3")));
    // Every option is listed in it, set or commented out.
    for key in keys() {
        assert!(
            text.lines().any(|l| l.trim_start_matches(['#', ' ']).starts_with(&format!("{key} ="))),
            "deploy/steer.toml does not list {key}"
        );
    }
    for k8s in
        [include_str!("../../../deploy/k8s/daemonset.yaml"), include_str!("../../../deploy/k8s/sidecar.yaml")]
    {
        // The ConfigMap's steer.toml: the indented block after "steer.toml: |".
        let block: String = k8s
            .lines()
            .skip_while(|l| !l.contains("steer.toml: |"))
            .skip(1)
            .take_while(|l| l.starts_with("    "))
            .map(|l| format!("{}\n", l.trim()))
            .collect();
        let p = parse(&block).unwrap();
        assert_eq!(p.iface.as_deref(), Some("eth0"), "{block}");
    }
}

//! `cargo xtask`: the one door for humans and CI.
//!
//! - `setup`: makes a fresh machine able to build eBPF (nightly + rust-src,
//!   bpf-linker built against the nightly toolchain's own LLVM). Idempotent.
//! - `build`: setup, then builds steer (with its eBPF object).
//! - `run -- ARGS`: build, then `steer run ARGS` (as root).
//! - `test`: setup, formatting, clippy, unit tests, in-kernel and integration tests.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

mod bench;

const BPF_LINKER_VERSION: &str = "0.13.0";

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what eBPF builds need (nightly rust-src, bpf-linker). Idempotent.
    Setup,
    /// Build steer and its eBPF object.
    Build {
        /// Optimised build.
        #[arg(long)]
        release: bool,
    },
    /// Build, then run `steer run` with the given arguments.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build, then run `steer` with any subcommand (`cargo xtask steer -- hash ...`).
    Steer {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build, then measure steer against no steering and the kernel's RPS/RFS in a veth lab
    /// (as root); results under bench/results/.
    Bench {
        /// Short run (under two minutes) for CI smoke.
        #[arg(long)]
        quick: bool,
        /// Extra arguments for `steer lab bench` (--flows N, --only TEXT, --irq-cpu N).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Draw the PNG beside a results JSON of `steer lab bench` (one run on a machine without
    /// this workspace, with the release binary copied there).
    Chart {
        /// bench/results/NAME.json
        json: PathBuf,
    },
    /// Formatting, clippy, unit tests and the kernel tests (as root).
    Test {
        /// Extra arguments for the test binaries (a test name filter, --nocapture).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Build { release } => setup().and_then(|_| build(release)).map(|_| ()),
        Cmd::Run { args } => run_steer(std::iter::once("run".to_string()).chain(args).collect()),
        Cmd::Steer { args } => run_steer(args),
        Cmd::Test { args } => test(&args),
        Cmd::Bench { quick, args } => bench::bench(quick, &args),
        Cmd::Chart { json } => bench::chart(&json).map(|png| eprintln!("wrote {}", png.display())),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut c = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

fn status(mut cmd: Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !st.success() {
        bail!("{shown} failed ({st})");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn step(what: &str, f: impl FnOnce() -> Result<bool>) -> Result<()> {
    let t = Instant::now();
    let did = f().with_context(|| format!("setup: {what}"))?;
    if did {
        eprintln!("setup: {what}: done in {:.1}s", t.elapsed().as_secs_f64());
    } else {
        eprintln!("setup: {what}: already there");
    }
    Ok(())
}

fn setup() -> Result<()> {
    let t = Instant::now();
    step("nightly toolchain", || {
        let list = output(Command::new("rustup").args(["toolchain", "list"]))
            .context("rustup is required (https://rustup.rs) to build the eBPF side")?;
        if list.lines().any(|l| l.starts_with("nightly")) {
            return Ok(false);
        }
        status({
            let mut c = Command::new("rustup");
            c.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
            c
        })?;
        Ok(true)
    })?;
    step("rust-src for nightly", || {
        let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
        if Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core").exists() {
            return Ok(false);
        }
        status({
            let mut c = Command::new("rustup");
            c.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
            c
        })?;
        Ok(true)
    })?;
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let llvm_major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("`rustc +nightly -vV` reports no LLVM version")?
        .to_string();
    step(&format!("bpf-linker {BPF_LINKER_VERSION} for LLVM {llvm_major}"), || bpf_linker(&llvm_major))?;
    eprintln!("setup: ready in {:.1}s", t.elapsed().as_secs_f64());
    Ok(())
}

/// Installs the Debian packages whose binaries are missing (`(binary, package)`),
/// running `apt-get update` once if the first install fails. Returns whether it installed.
pub(crate) fn apt_install(wanted: &[(&str, &str)]) -> Result<bool> {
    let found = |bin: &str| {
        let path = env::var_os("PATH").unwrap_or_default();
        env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .any(|d| d.join(bin).is_file())
    };
    let missing: Vec<&str> = wanted.iter().filter(|(bin, _)| !found(bin)).map(|(_, pkg)| *pkg).collect();
    if missing.is_empty() {
        return Ok(false);
    }
    let install = || {
        let mut c = Command::new("apt-get");
        c.args(["install", "-y", "-q"]).args(&missing).env("DEBIAN_FRONTEND", "noninteractive");
        status(c)
    };
    install().or_else(|_| {
        let mut c = Command::new("apt-get");
        c.args(["update", "-q"]);
        status(c)?;
        install()
    })?;
    Ok(true)
}

/// bpf-linker must link against the same LLVM major as the nightly rustc that
/// emits the bitcode. Debian has no LLVM 22, but the nightly toolchain ships
/// its own libLLVM: point LLVM_PREFIX at a directory that links to it.
fn bpf_linker(llvm_major: &str) -> Result<bool> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let lib = std::fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("libLLVM.so.{llvm_major}")))
        })
        .with_context(|| format!("no libLLVM.so.{llvm_major}* in {}", libdir.display()))?;
    let soname = lib.file_name().and_then(|n| n.to_str()).context("odd libLLVM name")?.to_string();
    let home = env::var("HOME").context("HOME is not set")?;
    // Not /tmp: this directory becomes bpf-linker's rpath.
    let prefix = Path::new(&home).join(format!(".local/share/steer/llvm-{llvm_major}"));
    let stamp = prefix.join("bpf-linker.stamp");
    let want = format!("bpf-linker {BPF_LINKER_VERSION} llvm-{llvm_major} {}", lib.display());
    let works = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION));
    if works && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == want) {
        return Ok(false);
    }
    let plib = prefix.join("lib");
    std::fs::create_dir_all(&plib).with_context(|| format!("creating {}", plib.display()))?;
    for name in ["libLLVM.so", soname.as_str()] {
        let link = plib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {} (about 3 minutes, once)",
        lib.display()
    );
    let mut c = Command::new("cargo");
    c.args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
        "--force",
        "--no-default-features",
        "--features",
        &format!("llvm-{llvm_major}"),
    ])
    .env("LLVM_PREFIX", &prefix);
    status(c)?;
    std::fs::write(&stamp, want).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(true)
}

fn build(release: bool) -> Result<PathBuf> {
    let mut c = cargo();
    c.args(["build", "--package", "steer-user", "--bin", "steer"]);
    if release {
        c.arg("--release");
    }
    status(c)?;
    let target =
        env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from);
    Ok(target.join(if release { "release" } else { "debug" }).join("steer"))
}

fn run_steer(args: Vec<String>) -> Result<()> {
    setup()?;
    let bin = build(true)?;
    let mut c = Command::new(bin);
    c.args(args);
    status(c)
}

fn test(args: &[String]) -> Result<()> {
    setup()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("the kernel tests load eBPF and build network namespaces: run `cargo xtask test` as root");
    }
    status({
        let mut c = cargo();
        c.args(["fmt", "--all", "--check"]);
        c
    })?;
    status({
        let mut c = cargo();
        c.args(["clippy", "--all-targets", "--", "-D", "warnings"]);
        c
    })?;
    let bin = build(false)?;
    let mut c = cargo();
    c.args(["test", "--"]);
    // Kernel tests share CPUs and counters: one at a time keeps them honest.
    c.arg("--test-threads=1");
    c.args(args);
    c.env("STEER_BIN", bin);
    run_counting(c)
}

/// Runs `cargo test`, echoing its output, and ends with one line that adds up
/// every test binary's "test result" ("tests: N passed, N failed").
fn run_counting(mut c: Command) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let shown = format!("{c:?}");
    let mut child =
        c.stdout(std::process::Stdio::piped()).spawn().with_context(|| format!("starting {shown}"))?;
    let (mut passed, mut failed) = (0u64, 0u64);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.context("reading cargo test output")?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                let count = |word: &str| {
                    rest.split(';')
                        .find_map(|part| {
                            part.trim()
                                .trim_start_matches("ok. ")
                                .trim_start_matches("FAILED. ")
                                .strip_suffix(word)
                        })
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .unwrap_or(0)
                };
                passed += count(" passed");
                failed += count(" failed");
            }
        }
    }
    let st = child.wait().context("waiting for cargo test")?;
    println!("tests: {passed} passed, {failed} failed");
    if !st.success() {
        bail!("{shown} failed ({st})");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

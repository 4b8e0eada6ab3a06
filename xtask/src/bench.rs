//! `cargo xtask bench [--quick] [-- ARGS]`: builds steer (release) and runs
//! `steer lab bench`, which builds its own lab, measures every scenario side by
//! side and writes markdown + JSON (+ PNG) under bench/results/.

use std::process::Command;

use anyhow::{bail, Result};

pub fn bench(quick: bool, args: &[String]) -> Result<()> {
    crate::setup()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { crate::libc_geteuid() } != 0 {
        bail!("the bench builds network namespaces and loads eBPF: run `cargo xtask bench` as root");
    }
    let bin = crate::build(true)?;
    let out = crate::workspace_root().join("bench").join("results");
    let mut c = Command::new(bin);
    c.args(["lab", "bench", "--out"]).arg(&out);
    if quick {
        c.arg("--quick");
    }
    c.args(args);
    crate::status(c)
}

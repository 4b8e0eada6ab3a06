//! Builds steer-ebpf for the BPF target (nightly + bpf-linker, installed by
//! `cargo xtask setup`) and leaves the object in OUT_DIR for `include_bytes!`.
use std::path::Path;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("steer-user has no parent directory")?
        .join("steer-ebpf");
    let root = root.to_str().context("non-UTF-8 path to steer-ebpf")?;
    // The eBPF crate depends on steer-common: rebuild when it changes too.
    println!("cargo:rerun-if-changed={root}/../steer-common/src");
    aya_build::build_ebpf(
        [aya_build::Package { name: "steer-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::Nightly,
    )
}

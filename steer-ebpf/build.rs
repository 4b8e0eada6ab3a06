//! Rebuild when bpf-linker changes: it is the linker of every eBPF object.
//!
//! It also generates the code (rustc hands it bitcode), so this is where LLVM
//! learns that a misaligned load is allowed: IP addresses and ports follow a
//! 14-byte Ethernet header, and without it every 16- and 32-bit packet field is
//! read a byte at a time and put together (bench/README.md has what that
//! costs). The verifier allows misaligned packet reads only where the kernel's
//! architecture has efficient unaligned access, so only there; misaligned stack
//! reads never (see `current_comm` in track.rs). An LLVM without the feature
//! warns and ignores it.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    // Set by cargo from aya-build's `--cfg bpf_target_arch`: the kernel the object is for.
    println!("cargo:rerun-if-env-changed=CARGO_CFG_BPF_TARGET_ARCH");
    let arch = std::env::var("CARGO_CFG_BPF_TARGET_ARCH").unwrap_or_default();
    if matches!(arch.as_str(), "x86_64" | "aarch64") {
        println!("cargo:rustc-link-arg-bins=--cpu-features=+allows-misaligned-mem-access");
    }
}

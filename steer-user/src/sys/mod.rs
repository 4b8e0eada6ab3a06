//! Every raw call steer makes into the kernel, and nearly all of its `unsafe`.
//! The rest of the crate calls the typed functions here and adds what the
//! user should read (which interface, which program, what to do).
//!
//! - [`bpf`]: the bpf(2) commands aya 0.14 lacks for steer's use, hand-written.

pub mod bpf;

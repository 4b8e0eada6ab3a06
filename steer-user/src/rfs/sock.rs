//! Where the UDP hook finds a socket's addresses: `struct sock_common` member
//! offsets from the kernel's BTF, the way CO-RE would relocate them. The
//! sock_recv_length tracepoint carries only the socket pointer, and these
//! offsets move between kernel versions and configurations, so they are never
//! compiled in. Parsed with the `btfparse` crate (aya 0.14 keeps member
//! lookup private); the members sit in anonymous unions and structs, which
//! its path lookup walks.

use std::path::Path;

use btfparse::{Offset, Readable, TypeInformation};
use steer_common::SockOffsets;

use crate::error::{Error, Result};

/// The running kernel's BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Where a member's offset goes in [`SockOffsets`].
type Slot = fn(&mut SockOffsets) -> &mut u32;

/// The members the hook reads: path in `struct sock`, size in bytes, and
/// where the offset goes.
const MEMBERS: [(&str, usize, Slot); 7] = [
    ("__sk_common.skc_daddr", 4, |o| &mut o.daddr),
    ("__sk_common.skc_rcv_saddr", 4, |o| &mut o.rcv_saddr),
    ("__sk_common.skc_dport", 2, |o| &mut o.dport),
    ("__sk_common.skc_num", 2, |o| &mut o.num),
    ("__sk_common.skc_state", 1, |o| &mut o.state),
    ("__sk_common.skc_v6_daddr", 16, |o| &mut o.v6_daddr),
    ("__sk_common.skc_v6_rcv_saddr", 16, |o| &mut o.v6_rcv_saddr),
];

/// The BTF file, read whole (a few MB; read once at start).
struct Bytes(Vec<u8>);

impl Readable for Bytes {
    fn read(&self, offset: u64, buf: &mut [u8]) -> btfparse::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|start| self.0.get(start..start.checked_add(buf.len())?))
            .ok_or_else(|| btfparse::Error::new(btfparse::ErrorKind::EOF, "read past the end of the BTF"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// The offsets in the BTF file at `path` (the kernel's: [`VMLINUX_BTF`]).
pub fn offsets(path: &Path) -> Result<SockOffsets> {
    let data = std::fs::read(path).map_err(|e| {
        Error::io(
            format!("reading the kernel's BTF {} (RFS for UDP needs CONFIG_DEBUG_INFO_BTF)", path.display()),
            e,
        )
    })?;
    let types = TypeInformation::new(&Bytes(data))
        .map_err(|e| Error::Ebpf(format!("parsing the kernel's BTF {}: {e:?}", path.display())))?;
    resolve(&types, path)
}

fn resolve(types: &TypeInformation, path: &Path) -> Result<SockOffsets> {
    let missing = |what: String| {
        Error::Ebpf(format!(
            "the kernel's BTF ({}) has no {what}: RFS cannot read UDP sockets on this kernel; use --mode rss",
            path.display()
        ))
    };
    let sock = types.id_of("sock").ok_or_else(|| missing("struct sock".into()))?;
    let size = types.size_of(sock).map_err(|_| missing("size of struct sock".into()))?;
    let mut out = SockOffsets { size: u32::try_from(size).unwrap_or(0), ..Default::default() };
    for (member, want, slot) in MEMBERS {
        let (tid, off) =
            types.offset_of(sock, member).map_err(|_| missing(format!("struct sock member {member}")))?;
        let Offset::ByteOffset(off) = off else {
            return Err(missing(format!("byte-aligned struct sock member {member} (it is a bit field)")));
        };
        let got = types.size_of(tid).unwrap_or(0);
        if got != want || off as usize + got > size {
            return Err(missing(format!(
                "struct sock member {member} of {want} bytes (it has {got} bytes at offset {off} of {size})"
            )));
        }
        *slot(&mut out) = off;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the machine that runs the tests: every member is found where the
    /// kernel's own layout has it relative to the others.
    #[test]
    fn this_kernels_sock_members_are_found() {
        let path = Path::new(VMLINUX_BTF);
        assert!(path.exists(), "{VMLINUX_BTF} missing: this kernel has no BTF, RFS for UDP cannot run here");
        let o = offsets(path).unwrap();
        println!("{o:?}");
        // struct sock_common opens with the address pair, then the port pair
        // (skc_dport then skc_num), and struct sock opens with sock_common.
        assert_eq!((o.daddr, o.rcv_saddr), (0, 4));
        assert_eq!(o.num, o.dport + 2);
        assert!(o.state > o.num && o.v6_rcv_saddr == o.v6_daddr + 16, "{o:?}");
        assert!(o.v6_rcv_saddr + 16 <= o.size, "{o:?}");
    }

    #[test]
    fn a_missing_member_is_one_line_naming_it() {
        let path = Path::new(VMLINUX_BTF);
        let data = std::fs::read(path).unwrap();
        let types = TypeInformation::new(&Bytes(data)).unwrap();
        let sock = types.id_of("sock").unwrap();
        assert!(types.offset_of(sock, "__sk_common.skc_no_such_member").is_err());
        let e = offsets(Path::new("/nonexistent/vmlinux")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/vmlinux") && !e.contains('\n'), "{e}");
    }
}

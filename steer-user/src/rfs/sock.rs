//! Where the socket hooks find a socket's flow and network namespace:
//! `struct sock_common` (and `struct net`) member offsets from the kernel's
//! BTF, the way CO-RE would relocate them, and the arguments of the raw
//! tracepoints they attach to. The hooks get only the socket pointer, every
//! hook needs the socket's namespace (the tracepoints fire for all of them),
//! and these offsets move between kernel versions and configurations, so they
//! are never compiled in. Parsed with the `btfparse` crate (aya 0.14 keeps
//! member lookup private); the members sit in anonymous unions and structs,
//! which its path lookup walks.

use std::path::Path;

use btfparse::{Offset, Readable, TypeInformation, TypeVariant};
use steer_common::{flow::tp::SOCK_HEAD, SockOffsets};

use crate::error::{Error, Result};

/// The running kernel's BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Where a member's offset goes in [`SockOffsets`].
type Slot = fn(&mut SockOffsets) -> &mut u32;

/// The members the hooks read from the head of the socket (its first
/// [`SOCK_HEAD`] bytes, copied at once): path in `struct sock`, size in bytes,
/// and where the offset goes.
const MEMBERS: [(&str, usize, Slot); 8] = [
    ("__sk_common.skc_daddr", 4, |o| &mut o.daddr),
    ("__sk_common.skc_rcv_saddr", 4, |o| &mut o.rcv_saddr),
    ("__sk_common.skc_dport", 2, |o| &mut o.dport),
    ("__sk_common.skc_state", 1, |o| &mut o.state),
    ("__sk_common.skc_family", 2, |o| &mut o.family),
    ("__sk_common.skc_v6_daddr", 16, |o| &mut o.v6_daddr),
    ("__sk_common.skc_v6_rcv_saddr", 16, |o| &mut o.v6_rcv_saddr),
    // possible_net_t: a struct holding the pointer (with CONFIG_NET_NS).
    ("__sk_common.skc_net.net", 8, |o| &mut o.net),
];

/// Read on their own: they lie past `sock_common`.
const PROTOCOL: &str = "sk_protocol";
/// In `struct inet_sock`, which starts with `struct sock`.
const SPORT: &str = "inet_sport";

/// The namespace's inode number in `struct net` (`ns_common.inum`, what
/// /proc/PID/ns/net shows).
const NET_INUM: &str = "ns.inum";

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

/// The offsets in the BTF file at `path` (the kernel's: [`VMLINUX_BTF`]),
/// for the network namespace whose inode number is `netns`.
pub fn offsets(path: &Path, netns: u64) -> Result<SockOffsets> {
    let netns = u32::try_from(netns).map_err(|_| Error::BadValue {
        what: "network namespace inode",
        value: netns.to_string(),
        why: "the kernel's are 32-bit (ns_common.inum)".into(),
    })?;
    let data = std::fs::read(path).map_err(|e| {
        Error::io(format!("reading the kernel's BTF {} (RFS needs CONFIG_DEBUG_INFO_BTF)", path.display()), e)
    })?;
    let types = TypeInformation::new(&Bytes(data))
        .map_err(|e| Error::Ebpf(format!("parsing the kernel's BTF {}: {e:?}", path.display())))?;
    for (_, event, args) in super::TRACEPOINTS {
        check_event(&types, event, args).map_err(|what| {
            Error::Ebpf(format!(
                "raw tracepoint {event}: {what} in the kernel's BTF ({}); RFS cannot run on this kernel, use --mode rss",
                path.display()
            ))
        })?;
    }
    Ok(SockOffsets { netns, ..resolve(&types, path)? })
}

/// The type `tid` names, under any typedef, const or volatile.
fn bare(types: &TypeInformation, mut tid: u32) -> Option<TypeVariant> {
    loop {
        match types.from_id(tid)? {
            TypeVariant::Typedef(t) => tid = *t.tid(),
            TypeVariant::Const(t) => tid = *t.tid(),
            TypeVariant::Volatile(t) => tid = *t.tid(),
            other => return Some(other),
        }
    }
}

/// Whether `btf_trace_EVENT`, the prototype of the raw tracepoint, takes the
/// arguments the hook reads: each named struct pointer or `int`.
fn check_event(types: &TypeInformation, event: &str, args: &[&str]) -> std::result::Result<(), String> {
    let name = format!("btf_trace_{event}");
    let id = types.id_of(&name).ok_or_else(|| format!("no {name}"))?;
    let proto = types.pointee_tid(id).map_err(|_| format!("{name} is not a function pointer"))?;
    let Some(TypeVariant::FuncProto(f)) = bare(types, proto) else {
        return Err(format!("{name} is not a function pointer"));
    };
    let params = f.parameter_list();
    let name_of = |tid: u32| -> Option<String> {
        match bare(types, tid)? {
            TypeVariant::Ptr(p) => match bare(types, *p.tid())? {
                TypeVariant::Struct(s) => s.name().clone(),
                _ => None,
            },
            TypeVariant::Int(i) => i.name().clone(),
            _ => None,
        }
    };
    let got: Vec<String> =
        params.iter().skip(1).map(|p| name_of(p.tid()).unwrap_or_else(|| "?".into())).collect();
    if got != args {
        return Err(format!("arguments ({}) instead of ({})", got.join(", "), args.join(", ")));
    }
    Ok(())
}

fn resolve(types: &TypeInformation, path: &Path) -> Result<SockOffsets> {
    let missing = |what: String| {
        Error::Ebpf(format!(
            "the kernel's BTF ({}) has no {what}: RFS cannot read sockets on this kernel; use --mode rss",
            path.display()
        ))
    };
    let sock = types.id_of("sock").ok_or_else(|| missing("struct sock".into()))?;
    let size = types.size_of(sock).map_err(|_| missing("size of struct sock".into()))?;
    let mut out = SockOffsets { size: u32::try_from(size).unwrap_or(0), ..Default::default() };
    for (member, want, slot) in MEMBERS {
        let off = member_of(types, "sock", member, want).map_err(missing)?;
        if off as usize + want > SOCK_HEAD {
            return Err(missing(format!(
                "struct sock member {member} in its first {SOCK_HEAD} bytes (at {off})"
            )));
        }
        *slot(&mut out) = off;
    }
    out.protocol = member_of(types, "sock", PROTOCOL, 2).map_err(missing)?;
    out.sport = member_of(types, "inet_sock", SPORT, 2).map_err(missing)?;
    out.net_inum = member_of(types, "net", NET_INUM, 4).map_err(missing)?;
    Ok(out)
}

/// Byte offset of `member` (`size` bytes) in `struct name`, or what is missing.
fn member_of(
    types: &TypeInformation,
    name: &str,
    member: &str,
    size: usize,
) -> std::result::Result<u32, String> {
    let id = types.id_of(name).ok_or_else(|| format!("struct {name}"))?;
    let whole = types.size_of(id).map_err(|_| format!("size of struct {name}"))?;
    let (tid, off) = types.offset_of(id, member).map_err(|_| format!("struct {name} member {member}"))?;
    let Offset::ByteOffset(off) = off else {
        return Err(format!("byte-aligned struct {name} member {member} (it is a bit field)"));
    };
    let got = types.size_of(tid).unwrap_or(0);
    if got != size || off as usize + got > whole {
        return Err(format!(
            "struct {name} member {member} of {size} bytes (it has {got} bytes at offset {off} of {whole})"
        ));
    }
    Ok(off)
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
        let o = offsets(path, 4026531840).unwrap();
        println!("{o:?}");
        // struct sock_common opens with the address pair, then the port pair
        // (skc_dport then skc_num), and struct sock opens with sock_common.
        assert_eq!((o.daddr, o.rcv_saddr), (0, 4));
        assert!(o.dport > o.rcv_saddr && o.family > o.dport && o.state > o.family, "{o:?}");
        assert!(o.v6_rcv_saddr == o.v6_daddr + 16, "{o:?}");
        // Past the head: sk_protocol in struct sock, inet_sport in struct inet_sock (which opens
        // with struct sock).
        assert!(o.protocol as usize >= SOCK_HEAD && o.protocol + 2 <= o.size, "{o:?}");
        assert!(o.sport >= o.size, "{o:?}");
        assert!(o.v6_rcv_saddr + 16 <= o.size, "{o:?}");
        // The namespace pointer sits in sock_common after the addresses, and
        // the inode given is carried through to the hooks.
        assert!(o.net > o.rcv_saddr && o.net.is_multiple_of(8) && o.net + 8 <= o.size, "{o:?}");
        assert!(o.net_inum > 0 && o.net_inum.is_multiple_of(4), "{o:?}");
        assert_eq!((o.netns, o.net_addr), (4026531840, 0));
        let e = offsets(path, 1 << 32).unwrap_err().to_string();
        assert!(e.contains("4294967296") && !e.contains('\n'), "{e}");
    }

    /// The raw tracepoints' prototypes on this kernel are what the hooks read,
    /// and another prototype is named, not guessed at.
    #[test]
    fn this_kernels_raw_tracepoints_take_what_the_hooks_read() {
        let data = std::fs::read(VMLINUX_BTF).unwrap();
        let types = TypeInformation::new(&Bytes(data)).unwrap();
        for (_, event, args) in super::super::TRACEPOINTS {
            check_event(&types, event, args).unwrap_or_else(|e| panic!("{event}: {e}"));
        }
        let e = check_event(&types, "sock_recv_length", &["sock", "int"]).unwrap_err();
        assert_eq!(e, "arguments (sock, int, int) instead of (sock, int)");
        let e = check_event(&types, "no_such_event", &["sock"]).unwrap_err();
        assert_eq!(e, "no btf_trace_no_such_event");
    }

    #[test]
    fn a_missing_member_is_one_line_naming_it() {
        let path = Path::new(VMLINUX_BTF);
        let data = std::fs::read(path).unwrap();
        let types = TypeInformation::new(&Bytes(data)).unwrap();
        let sock = types.id_of("sock").unwrap();
        assert!(types.offset_of(sock, "__sk_common.skc_no_such_member").is_err());
        let e = member_of(&types, "net", "ns.no_such_member", 4).unwrap_err();
        assert_eq!(e, "struct net member ns.no_such_member");
        let e = member_of(&types, "net", NET_INUM, 8).unwrap_err();
        assert!(e.starts_with("struct net member ns.inum of 8 bytes (it has 4 bytes"), "{e}");
        let e = offsets(Path::new("/nonexistent/vmlinux"), 1).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/vmlinux") && !e.contains('\n'), "{e}");
    }
}

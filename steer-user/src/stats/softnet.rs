//! `/proc/net/softnet_stat`: what each CPU's NET_RX softirq did. `dropped`
//! (backlog full) and `time_squeeze` (budget ran out with work left) are the
//! kernel's own signs of an overloaded receive CPU.

use crate::error::{Error, Result};

/// One CPU's row. The kernel keeps these as 32-bit counters that wrap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Softnet {
    pub cpu: u32,
    pub processed: u32,
    pub dropped: u32,
    pub time_squeeze: u32,
    pub received_rps: u32,
    pub flow_limit: u32,
}

/// Parses the file's text. Rows are online CPUs only; since 5.10 the 13th
/// column is the CPU number, older kernels are numbered by row.
pub fn parse(text: &str) -> Vec<Softnet> {
    text.lines()
        .enumerate()
        .filter_map(|(row, line)| {
            let v: Vec<u32> =
                line.split_whitespace().filter_map(|h| u32::from_str_radix(h, 16).ok()).collect();
            if v.len() < 11 {
                return None;
            }
            Some(Softnet {
                cpu: v.get(12).copied().unwrap_or(row as u32),
                processed: v[0],
                dropped: v[1],
                time_squeeze: v[2],
                received_rps: v[9],
                flow_limit: v[10],
            })
        })
        .collect()
}

pub fn read() -> Result<Vec<Softnet>> {
    let text = std::fs::read_to_string("/proc/net/softnet_stat")
        .map_err(|e| Error::io("reading /proc/net/softnet_stat", e))?;
    Ok(parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_with_cpu_column() {
        let text = "000265cd 00000002 00000003 00000000 00000000 00000000 00000000 00000000 00000000 00000004 00000005 00000000 00000000 00000000 00000000\n\
                    0002bc5c 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000003 00000000 00000000\n";
        let s = parse(text);
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[0],
            Softnet {
                cpu: 0,
                processed: 0x265cd,
                dropped: 2,
                time_squeeze: 3,
                received_rps: 4,
                flow_limit: 5
            }
        );
        // Row 1 is CPU 3 (CPUs 1 and 2 offline).
        assert_eq!(s[1].cpu, 3);
    }
}

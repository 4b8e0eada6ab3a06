//! CPU lists ("0-3,6"), the online set, and the number of possible CPUs.

use std::fmt::Write as _;

use crate::error::{Error, Result};

/// Parses a kernel-style CPU list: comma-separated CPUs and inclusive ranges.
/// Returns the CPUs sorted, without duplicates.
pub fn parse_list(list: &str) -> Result<Vec<u32>> {
    let bad = |why: String| Error::BadCpuList { list: list.to_string(), why };
    let mut cpus = Vec::new();
    for part in list.trim().split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(bad("empty element".into()));
        }
        let num = |s: &str| s.trim().parse::<u32>().map_err(|_| bad(format!("\"{s}\" is not a CPU number")));
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(bad(format!("range {a}-{b} is reversed")));
                }
                if b - a > 65535 {
                    return Err(bad(format!("range {a}-{b} is too large")));
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(num(part)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Formats CPUs as a compact list ("0-3,6").
pub fn format_list(cpus: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            let _ = write!(out, "{start}");
        } else {
            let _ = write!(out, "{start}-{end}");
        }
        i += 1;
    }
    out
}

fn read_sys_list(path: &str) -> Result<Vec<u32>> {
    let s = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {path}"), e))?;
    parse_list(s.trim())
}

/// CPUs that are online now.
pub fn online() -> Result<Vec<u32>> {
    read_sys_list("/sys/devices/system/cpu/online")
}

/// Number of possible CPUs (highest possible index + 1): the size of per-CPU maps.
pub fn possible_count() -> Result<u32> {
    let cpus = read_sys_list("/sys/devices/system/cpu/possible")?;
    cpus.last().map(|c| c + 1).ok_or(Error::EmptyCpuList)
}

/// Checks that every CPU of `cpus` is online; `None` means all online CPUs.
pub fn resolve(cpus: Option<&str>) -> Result<Vec<u32>> {
    let online = online()?;
    let Some(list) = cpus else {
        return Ok(online);
    };
    let wanted = parse_list(list)?;
    if wanted.is_empty() {
        return Err(Error::EmptyCpuList);
    }
    check_online(&wanted, &online)?;
    Ok(wanted)
}

/// Fails on the first CPU of `wanted` that is not in `online`.
pub fn check_online(wanted: &[u32], online: &[u32]) -> Result<()> {
    match wanted.iter().find(|c| !online.contains(c)) {
        Some(&cpu) => Err(Error::CpuOffline { cpu, online: format_list(online) }),
        None => Ok(()),
    }
}

/// The default indirection table: buckets dealt round-robin over `cpus`, as
/// `ethtool -X equal N` does.
pub fn indirection_table(cpus: &[u32], size: u32) -> Vec<u32> {
    (0..size as usize).map(|b| cpus[b % cpus.len()]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_ranges() {
        assert_eq!(parse_list("0-3,6").unwrap(), vec![0, 1, 2, 3, 6]);
        assert_eq!(parse_list(" 5 , 1,1 ").unwrap(), vec![1, 5]);
        assert_eq!(parse_list("7").unwrap(), vec![7]);
    }

    #[test]
    fn rejects_bad_lists_with_the_value() {
        for bad in ["", "a", "3-1", "1,,2", "-1", "1-"] {
            let e = parse_list(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("\"{bad}\"")), "{e}");
        }
    }

    #[test]
    fn formats_compactly() {
        assert_eq!(format_list(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
        assert_eq!(format_list(&[]), "");
    }

    #[test]
    fn offline_cpu_is_named() {
        let e = check_online(&[0, 12], &[0, 1, 2, 3, 4, 5, 6, 7]).unwrap_err();
        assert_eq!(e.to_string(), "CPU 12 is offline (online: 0-7)");
    }

    #[test]
    fn table_is_dealt_round_robin() {
        assert_eq!(indirection_table(&[2, 5], 4), vec![2, 5, 2, 5]);
        let t = indirection_table(&[0, 1, 2], 256);
        assert_eq!(t.iter().filter(|&&c| c == 0).count(), 86);
    }
}

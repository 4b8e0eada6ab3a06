//! `steer run --config FILE`: every `run` option in a TOML file, with the
//! command line taking precedence, and the re-read on SIGHUP. Keys are the
//! long option names (`table-size`, `xdp-mode`, ...):
//!
//! ```toml
//! iface = "eth0"
//! cpus = "2-7"          # or [2, 3, 4, 5, 6, 7]
//! hash = "toeplitz"
//! table-size = 512
//! metrics = "127.0.0.1:9847"
//! ```
//!
//! What a SIGHUP can change on the live program: `cpus`, `hash`, `key`,
//! `seed`, `symmetric`, `table-size` (up to the loaded size), `interval`,
//! `quiet`. `iface`, `xdp-mode`, `qsize`, `metrics` and `replace` need a
//! restart: a changed value is logged and ignored.

use std::path::{Path, PathBuf};

use clap::ValueEnum;

use crate::{
    config::{HashArg, HashSettings, XdpMode, DEFAULT_QSIZE, DEFAULT_TABLE_SIZE},
    cpus,
    error::{Error, Result},
};

/// A CPU list written as a string ("0-3,6") or as an array of numbers.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum CpuList {
    Text(String),
    List(Vec<u32>),
}

impl CpuList {
    pub fn as_text(&self) -> String {
        match self {
            Self::Text(s) => s.clone(),
            Self::List(v) => v.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
        }
    }
}

/// Every `run` option, each optional: the contents of a config file, or the
/// options given explicitly on the command line.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Partial {
    pub iface: Option<String>,
    pub cpus: Option<CpuList>,
    pub hash: Option<String>,
    pub key: Option<String>,
    pub seed: Option<u32>,
    pub symmetric: Option<bool>,
    pub table_size: Option<u32>,
    pub qsize: Option<u32>,
    pub xdp_mode: Option<String>,
    pub replace: Option<bool>,
    pub interval: Option<f64>,
    pub quiet: Option<bool>,
    pub metrics: Option<String>,
}

impl Partial {
    /// Reads and parses a config file; errors name the file and the line.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading config file {}", path.display()), e))?;
        toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            Error::BadValue {
                what: "config file",
                value: path.display().to_string(),
                why: match line {
                    Some(l) => format!("line {l}: {}", e.message()),
                    None => e.message().to_string(),
                },
            }
        })
    }
}

/// The options of a run after merging: command line over file over defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSettings {
    pub iface: String,
    pub cpus: Option<String>,
    pub hash: HashArg,
    pub key: Option<String>,
    pub seed: u32,
    pub symmetric: bool,
    pub table_size: u32,
    pub qsize: u32,
    pub xdp_mode: XdpMode,
    pub replace: bool,
    pub interval: f64,
    pub quiet: bool,
    pub metrics: Option<String>,
}

fn enum_value<T: ValueEnum>(what: &'static str, s: &str) -> Result<T> {
    T::from_str(s, true).map_err(|_| Error::BadValue {
        what,
        value: format!("\"{s}\""),
        why: format!(
            "expected one of: {}",
            T::value_variants()
                .iter()
                .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

impl RunSettings {
    /// `cli` wins over `file`, which wins over the defaults.
    pub fn merge(cli: &Partial, file: &Partial) -> Result<Self> {
        macro_rules! pick {
            ($f:ident) => {
                cli.$f.clone().or_else(|| file.$f.clone())
            };
        }
        let iface = pick!(iface).ok_or_else(|| Error::BadValue {
            what: "iface",
            value: "(none)".into(),
            why: "pass --iface IF or set iface = \"IF\" in the config file".into(),
        })?;
        Ok(Self {
            iface,
            cpus: pick!(cpus).map(|c| c.as_text()),
            hash: pick!(hash).map(|h| enum_value("hash", &h)).transpose()?.unwrap_or(HashArg::Fast),
            key: pick!(key),
            seed: pick!(seed).unwrap_or(0),
            symmetric: pick!(symmetric).unwrap_or(false),
            table_size: pick!(table_size).unwrap_or(DEFAULT_TABLE_SIZE),
            qsize: pick!(qsize).unwrap_or(DEFAULT_QSIZE),
            xdp_mode: pick!(xdp_mode)
                .map(|m| enum_value("xdp-mode", &m))
                .transpose()?
                .unwrap_or(XdpMode::Auto),
            replace: pick!(replace).unwrap_or(false),
            interval: pick!(interval).unwrap_or(1.0),
            quiet: pick!(quiet).unwrap_or(false),
            metrics: pick!(metrics),
        })
    }

    /// The validated hash settings (CPU list resolved against the online CPUs).
    pub fn hash_settings(&self) -> Result<HashSettings> {
        let cpus = cpus::resolve(self.cpus.as_deref())?;
        HashSettings::new(self.hash, self.key.as_deref(), self.seed, self.symmetric, self.table_size, cpus)
    }

    /// Options a running program cannot take without a restart that differ
    /// between `self` and `new`, as "name: old -> new".
    pub fn restart_only_changes(&self, new: &Self) -> Vec<String> {
        let mut v = Vec::new();
        let mut cmp = |name: &str, a: String, b: String| {
            if a != b {
                v.push(format!("{name}: {a} -> {b}"));
            }
        };
        cmp("iface", self.iface.clone(), new.iface.clone());
        cmp("xdp-mode", format!("{:?}", self.xdp_mode), format!("{:?}", new.xdp_mode));
        cmp("qsize", self.qsize.to_string(), new.qsize.to_string());
        cmp("metrics", format!("{:?}", self.metrics), format!("{:?}", new.metrics));
        cmp("replace", self.replace.to_string(), new.replace.to_string());
        v
    }

    /// `new` with the restart-only options of `self`: what a reload applies.
    pub fn live_part_of(&self, new: &Self) -> Self {
        Self {
            iface: self.iface.clone(),
            xdp_mode: self.xdp_mode,
            qsize: self.qsize,
            metrics: self.metrics.clone(),
            replace: self.replace,
            ..new.clone()
        }
    }
}

/// The config file and the command-line overrides, kept for SIGHUP.
#[derive(Clone, Debug)]
pub struct Reloader {
    pub path: PathBuf,
    pub cli: Partial,
}

impl Reloader {
    /// Re-reads the file and validates everything a reload would apply.
    /// On error nothing is applied: the caller keeps the running settings.
    pub fn reload(&self, current: &RunSettings) -> Result<(RunSettings, HashSettings)> {
        let file = Partial::load(&self.path)?;
        let new = RunSettings::merge(&self.cli, &file)?;
        for change in current.restart_only_changes(&new) {
            log::warn!("{}: {change} needs a restart; keeping the running value", self.path.display());
        }
        let new = current.live_part_of(&new);
        let hash = new.hash_settings()?;
        cpus::check_online(&hash.cpus, &cpus::online()?)?;
        if !(0.05..=3600.0).contains(&new.interval) {
            return Err(Error::BadValue {
                what: "interval",
                value: new.interval.to_string(),
                why: "must be between 0.05 and 3600 seconds".into(),
            });
        }
        Ok((new, hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Partial> {
        toml::from_str(s).map_err(|e| Error::BadValue {
            what: "config",
            value: String::new(),
            why: e.to_string(),
        })
    }

    #[test]
    fn every_option_parses_from_toml() {
        let p = parse(
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
        let s = RunSettings::merge(&Partial::default(), &p).unwrap();
        assert_eq!(s.iface, "eth1");
        assert_eq!(s.cpus.as_deref(), Some("1,2,3"));
        assert_eq!(s.hash, HashArg::Toeplitz);
        assert_eq!((s.seed, s.symmetric, s.table_size, s.qsize), (7, true, 512, 1024));
        assert_eq!(s.xdp_mode, XdpMode::Skb);
        assert!(s.replace && s.quiet);
        assert_eq!(s.interval, 2.5);
        assert_eq!(s.metrics.as_deref(), Some("9100"));
    }

    #[test]
    fn command_line_overrides_the_file() {
        let file = parse("iface = \"eth1\"\ncpus = \"0-3\"\ntable-size = 64\n").unwrap();
        let cli = Partial { cpus: Some(CpuList::Text("5".into())), seed: Some(3), ..Default::default() };
        let s = RunSettings::merge(&cli, &file).unwrap();
        assert_eq!(s.cpus.as_deref(), Some("5"));
        assert_eq!(s.table_size, 64);
        assert_eq!(s.seed, 3);
        assert_eq!(s.hash, HashArg::Fast);
    }

    #[test]
    fn errors_name_the_bad_value() {
        let e = parse("table_size = 5\n").unwrap_err().to_string();
        assert!(e.contains("table_size"), "{e}");
        let file = parse("iface = \"x\"\nhash = \"md5\"\n").unwrap();
        let e = RunSettings::merge(&Partial::default(), &file).unwrap_err().to_string();
        assert!(e.contains("\"md5\"") && e.contains("toeplitz"), "{e}");
        let e = RunSettings::merge(&Partial::default(), &Partial::default()).unwrap_err().to_string();
        assert!(e.contains("--iface"), "{e}");
    }

    #[test]
    fn restart_only_options_are_kept_on_reload() {
        let a =
            RunSettings::merge(&Partial::default(), &parse("iface = \"a\"\nqsize = 64\n").unwrap()).unwrap();
        let b = RunSettings::merge(
            &Partial::default(),
            &parse("iface = \"b\"\nqsize = 128\ncpus = \"1\"\n").unwrap(),
        )
        .unwrap();
        assert_eq!(a.restart_only_changes(&b).len(), 2);
        let live = a.live_part_of(&b);
        assert_eq!((live.iface.as_str(), live.qsize, live.cpus.as_deref()), ("a", 64, Some("1")));
    }

    #[test]
    fn shipped_example_config_is_valid() {
        let text = include_str!("../../deploy/steer.toml");
        let s = RunSettings::merge(&Partial::default(), &parse(text).unwrap()).unwrap();
        assert_eq!((s.iface.as_str(), s.cpus.as_deref()), ("eth0", Some("1-3")));
        for k8s in
            [include_str!("../../deploy/k8s/daemonset.yaml"), include_str!("../../deploy/k8s/sidecar.yaml")]
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
}

//! `steer run --config FILE`: reading the file safely, turning its keys into
//! the command line's arguments, and the re-read on SIGHUP.
//!
//! ```toml
//! iface = "eth0"
//! cpus = "2-7"          # or [2, 3, 4, 5, 6, 7], or 2
//! mode = "rfs"
//! table-size = 512
//! metrics = "127.0.0.1:9847"
//! ```

use std::{
    error::Error as _,
    fs::File,
    io::Read as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use super::{keys, RunArgs};
use crate::{
    config::HashSettings,
    error::{Error, Result},
};

/// Largest config file read: a real one is a few hundred bytes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reads `path` if it is a regular file of at most [`MAX_CONFIG_BYTES`].
/// Opened non-blocking, so that a FIFO cannot hang the run before it is refused.
pub fn read(path: &Path) -> Result<String> {
    let bad = |why: String| Error::Config { path: path.display().to_string(), why };
    let mut f = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| bad(format!("cannot be opened: {e}")))?;
    let meta = f.metadata().map_err(|e| bad(format!("cannot be read: {e}")))?;
    if !meta.is_file() {
        let kind = if meta.is_dir() { "a directory" } else { "not a regular file" };
        return Err(bad(format!("is {kind}; --config takes a TOML file")));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(bad(format!("is {} bytes; a config file is at most {MAX_CONFIG_BYTES}", meta.len())));
    }
    let mut text = String::new();
    (&mut f)
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| bad(format!("cannot be read as UTF-8 text: {e}")))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(bad(format!("is over {MAX_CONFIG_BYTES} bytes")));
    }
    Ok(text)
}

/// The line (1-based) where `key` is set in `text`, if it can be found.
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

/// Parses the file's text into options. Errors name the file, the key and its line.
pub fn parse(text: &str, path: &Path) -> Result<RunArgs> {
    let bad = |why: String| Error::Config { path: path.display().to_string(), why };
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        bad(match line {
            Some(l) => format!("line {l}: {}", e.message().trim()),
            None => e.message().trim().to_string(),
        })
    })?;
    let at = |k: &str| line_of(text, k).map_or(String::new(), |l| format!(" (line {l})"));
    let known = keys();
    if let Some(k) = table.keys().find(|k| !known.contains(k)) {
        return Err(bad(format!(
            "unknown key \"{k}\"{}; the keys are the long option names of `steer run`: {}",
            at(k),
            known.join(", ")
        )));
    }
    // Key by key first, so that an error points at its line.
    for (k, v) in &table {
        let one = toml::Table::from_iter([(k.clone(), v.clone())]);
        if let Err(e) = from_table(&one) {
            return Err(bad(format!("key \"{k}\"{}: {e}", at(k))));
        }
    }
    from_table(&table).map_err(|e| bad(e.to_string()))
}

/// Options from a table keyed by long option name, through the command line's parser.
pub fn from_table(t: &toml::Table) -> Result<RunArgs> {
    let args = table_to_args(t)?;
    RunArgs::parse_args(&args).map_err(|e| Error::BadOption(one_line(&e)))
}

/// `key = value` -> `--key=value`. A list is allowed for `cpus` only.
pub fn table_to_args(t: &toml::Table) -> Result<Vec<String>> {
    t.iter()
        .map(|(k, v)| {
            let bad = |why: &str| Error::BadOption(format!("{k} = {v}: {why}"));
            let value = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Array(a) if k == "cpus" => a
                    .iter()
                    .map(|c| c.as_integer().map(|c| c.to_string()).ok_or_else(|| bad("expected CPU numbers")))
                    .collect::<Result<Vec<_>>>()?
                    .join(","),
                _ => return Err(bad("expected a string, a number or true/false")),
            };
            Ok(format!("--{k}={value}"))
        })
        .collect()
}

/// A clap error in one line that names the option, the value and what is accepted.
pub fn one_line(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    let get = |k| match e.get(k) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => Some(v.join(", ")),
        _ => None,
    };
    // "--hash <HASH>" -> "--hash"
    let arg =
        get(ContextKind::InvalidArg).map(|a| a.split([' ', '=']).next().unwrap_or_default().to_string());
    match (arg, get(ContextKind::InvalidValue), get(ContextKind::ValidValue)) {
        (Some(a), Some(v), Some(valid)) => format!("invalid {a} \"{v}\": expected one of: {valid}"),
        (Some(a), Some(v), None) => {
            let why = e.source().map(|s| format!(": {s}")).unwrap_or_default();
            format!("invalid {a} \"{v}\"{why}")
        }
        _ => {
            let text = e.to_string();
            text.lines()
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty() && !l.starts_with("For more information") && !l.starts_with("Usage:")
                })
                .map(|l| l.trim_start_matches("error: "))
                .collect::<Vec<_>>()
                .join("; ")
        }
    }
}

/// File then command line: what `steer run` runs with.
pub fn merge(path: Option<&Path>, cli: &RunArgs) -> Result<RunArgs> {
    let Some(path) = path else {
        return Ok(cli.clone());
    };
    let file = parse(&read(path)?, path)?;
    let mut t = file.to_table();
    t.extend(cli.to_table());
    let mut merged = from_table(&t)?;
    merged.config = Some(path.to_path_buf());
    Ok(merged)
}

/// The config file and the command-line options, kept for SIGHUP.
#[derive(Clone, Debug)]
pub struct Reloader {
    pub path: PathBuf,
    pub cli: RunArgs,
}

impl Reloader {
    /// Re-reads the file and validates everything a reload would apply. On
    /// error nothing is applied: the caller keeps the running options.
    pub fn reload(&self, current: &RunArgs) -> Result<(RunArgs, HashSettings)> {
        let new = merge(Some(&self.path), &self.cli)?;
        for change in current.restart_only_changes(&new) {
            log::warn!("{}: {change} needs a restart; keeping the running value", self.path.display());
        }
        let new = current.with_live_part_of(&new)?;
        let secs = new.interval.unwrap_or(1.0);
        if !super::INTERVAL_RANGE.contains(&secs) {
            return Err(Error::BadValue {
                what: "interval",
                value: secs.to_string(),
                why: "must be between 0.05 and 3600 seconds".into(),
            });
        }
        new.rebalance_settings()?;
        let hash = new.hash.settings()?;
        Ok((new, hash))
    }
}

//! One typed configuration per run, described by one knob table.
//!
//! Every knob lives in exactly one section (`ring`, `file`, `net`, `server`, `tier`) and has one
//! kebab-case name used everywhere: the CLI flag `--NAME`, the TOML key `NAME` under
//! `[SECTION]`, experiment dimensions (`SECTION.NAME` or just `NAME`), `docs/options.md`,
//! and the requested/effective configuration written with every result.
//!
//! Each section module owns its struct, its slice of the table, `set`/`get` by name and
//! a `validate(&Config)` for its cross-option rules. This module only aggregates.

use std::fmt;

pub mod file;
pub mod net;
pub mod ring;
pub mod server;
pub mod tier;

pub use file::FileConfig;
pub use net::NetConfig;
pub use ring::RingConfig;
pub use server::ServerConfig;
pub use tier::TierConfig;

/// Every section, in table order.
pub const SECTIONS: &[&str] = &["ring", "file", "net", "server", "tier"];

/// One row of the knob table.
#[derive(Clone, Copy, Debug)]
pub struct Knob {
    /// Section: `ring`, `file`, `net` or `server`.
    pub section: &'static str,
    /// Kebab-case name, unique across all sections.
    pub name: &'static str,
    /// Kernel constant this knob maps to (`IORING_SETUP_SQPOLL`), or "".
    pub kernel: &'static str,
    /// First kernel release that has it ("5.1"), or "".
    pub since: &'static str,
    /// Accepted values, for help and docs: "bool", "u32", "write|writev|...".
    pub values: &'static str,
    /// Default, as it would be written on the command line.
    pub default: &'static str,
    /// What it does, one or two sentences.
    pub help: &'static str,
}

/// A configuration that cannot be used, with what to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The knobs involved, by name.
    pub knobs: Vec<&'static str>,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl ConfigError {
    pub fn new(knobs: &[&'static str], message: impl Into<String>) -> Self {
        ConfigError {
            knobs: knobs.to_vec(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// What each section implements so the table can drive parsing and printing.
pub trait Section: Default {
    const NAME: &'static str;
    fn knobs() -> &'static [Knob];
    /// Sets knob `name` from its textual value. The error says what values are accepted.
    fn set(&mut self, name: &str, value: &str) -> Result<(), String>;
    /// The current value of knob `name` in the same textual form `set` accepts.
    fn get(&self, name: &str) -> Option<String>;
}

/// The whole configuration of one run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    pub ring: RingConfig,
    pub file: FileConfig,
    pub net: NetConfig,
    pub server: ServerConfig,
    pub tier: TierConfig,
}

/// Every knob of every section, in table order.
pub fn all_knobs() -> Vec<&'static Knob> {
    RingConfig::knobs()
        .iter()
        .chain(FileConfig::knobs())
        .chain(NetConfig::knobs())
        .chain(ServerConfig::knobs())
        .chain(TierConfig::knobs())
        .collect()
}

/// Finds a knob by `name` or `section.name`.
pub fn find_knob(key: &str) -> Option<&'static Knob> {
    let (section, name) = match key.split_once('.') {
        Some((s, n)) => (Some(s), n),
        None => (None, key),
    };
    let name_dash = name.replace('_', "-");
    all_knobs()
        .into_iter()
        .find(|k| k.name == name_dash && section.is_none_or(|s| s == k.section))
}

pub fn parse_bool(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "on" | "yes" => Ok(true),
        "false" | "0" | "off" | "no" => Ok(false),
        _ => Err(format!("expected true or false, got {v:?}")),
    }
}

pub fn parse_num<T: std::str::FromStr>(v: &str) -> Result<T, String> {
    let t = v.trim().replace('_', "");
    t.parse::<T>()
        .map_err(|_| format!("expected a non-negative whole number, got {v:?}"))
}

/// Parses sizes such as `4096`, `64k`, `1m`, `2g` (binary multiples).
pub fn parse_bytes(v: &str) -> Result<u64, String> {
    let t = v.trim().to_ascii_lowercase().replace('_', "");
    let t = t
        .strip_suffix("ib")
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(&t)
        .to_string();
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (&t[..], 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("expected a size such as 4096, 64k, 1m or 2g, got {v:?}"))
}

/// Parses one of the values of an enum knob, listing them on error.
pub fn parse_choice<T: Copy>(v: &str, choices: &[(&str, T)]) -> Result<T, String> {
    let t = v.trim().to_ascii_lowercase().replace('_', "-");
    choices
        .iter()
        .find(|(n, _)| *n == t)
        .map(|(_, c)| *c)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
            format!("expected one of {}, got {v:?}", names.join(", "))
        })
}

/// The name of an enum value in `choices`.
pub fn choice_name<T: Copy + PartialEq>(v: T, choices: &[(&'static str, T)]) -> &'static str {
    choices
        .iter()
        .find(|(_, c)| *c == v)
        .map(|(n, _)| *n)
        .expect("every enum value is in its choice table")
}

impl Config {
    /// Sets a knob by `name` or `section.name`. Errors name the knob and the accepted values.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let knob = find_knob(key).ok_or_else(|| {
            ConfigError::new(
                &[],
                format!("unknown option {key:?}; `recorder options` lists every option"),
            )
        })?;
        let r = match knob.section {
            "ring" => self.ring.set(knob.name, value),
            "file" => self.file.set(knob.name, value),
            "net" => self.net.set(knob.name, value),
            "server" => self.server.set(knob.name, value),
            "tier" => self.tier.set(knob.name, value),
            s => unreachable!("knob {} in unknown section {s}", knob.name),
        };
        r.map_err(|e| ConfigError::new(&[knob.name], format!("option {}: {e}", knob.name)))
    }

    /// The value of a knob by `name` or `section.name`.
    pub fn get(&self, key: &str) -> Option<String> {
        let knob = find_knob(key)?;
        match knob.section {
            "ring" => self.ring.get(knob.name),
            "file" => self.file.get(knob.name),
            "net" => self.net.get(knob.name),
            "server" => self.server.get(knob.name),
            "tier" => self.tier.get(knob.name),
            _ => None,
        }
    }

    /// Every cross-option rule of every section. The first broken rule is returned;
    /// its message names the knobs and says what to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        ring::validate(self)?;
        file::validate(self)?;
        net::validate(self)?;
        server::validate(self)?;
        tier::validate(self)?;
        Ok(())
    }

    /// Applies a TOML document: `[section]` tables of `name = value`, or top-level
    /// `name = value` / `"section.name" = value`. Unknown keys are errors.
    pub fn apply_toml(&mut self, text: &str) -> Result<(), ConfigError> {
        let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigError::new(&[], format!("config file is not valid TOML: {e}"))
        })?;
        for (k, v) in &doc {
            match v {
                toml::Value::Table(t) => {
                    for (name, val) in t {
                        self.set(&format!("{k}.{name}"), &toml_scalar(val)?)?;
                    }
                }
                other => self.set(k, &toml_scalar(other)?)?,
            }
        }
        Ok(())
    }

    /// Every knob with its current value, as a TOML document that `apply_toml` reads back.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        for &section in SECTIONS {
            out.push_str(&format!("[{section}]\n"));
            for k in all_knobs().into_iter().filter(|k| k.section == section) {
                let v = self
                    .get(&format!("{section}.{}", k.name))
                    .unwrap_or_default();
                out.push_str(&format!("{} = {}\n", k.name, toml_quote(k, &v)));
            }
            out.push('\n');
        }
        out
    }

    /// Every knob with its current value as `section.name -> value` pairs (for CSV rows and JSON).
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        all_knobs()
            .into_iter()
            .map(|k| {
                let key = format!("{}.{}", k.section, k.name);
                let v = self.get(&key).unwrap_or_default();
                (key, v)
            })
            .collect()
    }
}

fn toml_scalar(v: &toml::Value) -> Result<String, ConfigError> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Array(a) => a
            .iter()
            .map(toml_scalar)
            .collect::<Result<Vec<_>, _>>()?
            .join(","),
        other => {
            return Err(ConfigError::new(
                &[],
                format!("unsupported TOML value {other}"),
            ))
        }
    })
}

fn toml_quote(k: &Knob, v: &str) -> String {
    if k.values == "bool"
        || (!v.is_empty() && v.chars().all(|c| c.is_ascii_digit()) && v.len() < 18)
    {
        v.to_string()
    } else {
        format!("{v:?}")
    }
}

/// Adds one `--NAME VALUE` argument per knob to a clap command, with the table's help.
pub fn add_knob_args(mut cmd: clap::Command) -> clap::Command {
    for k in all_knobs() {
        let mut help = format!(
            "{} [{}] (default: {})",
            k.help,
            k.values,
            if k.default.is_empty() {
                "none"
            } else {
                k.default
            }
        );
        if !k.kernel.is_empty() {
            help.push_str(&format!(" [{}; Linux {}+]", k.kernel, k.since));
        }
        cmd = cmd.arg(
            clap::Arg::new(k.name)
                .long(k.name)
                .value_name(k.values.to_uppercase())
                .help(help)
                .help_heading(format!("{} options", k.section))
                .num_args(1),
        );
    }
    cmd
}

/// Applies every knob argument the user gave on the command line.
pub fn apply_knob_args(cfg: &mut Config, m: &clap::ArgMatches) -> Result<(), ConfigError> {
    for k in all_knobs() {
        if let Some(v) = m.get_one::<String>(k.name) {
            cfg.set(&format!("{}.{}", k.section, k.name), v)?;
        }
    }
    Ok(())
}

/// `docs/options.md`, generated from the table.
pub fn options_markdown() -> String {
    let mut out = String::from(
        "# Options\n\nGenerated from the knob table by `recorder options --markdown`; do not edit by hand.\n\
         Each option is a command-line flag `--NAME`, a key `NAME` under `[SECTION]` in a TOML config file,\n\
         and a sweep dimension `SECTION.NAME` in experiment files.\n",
    );
    for &section in SECTIONS {
        out.push_str(&format!("\n## [{section}]\n\n| name | values | default | kernel constant | since | what it does |\n|---|---|---|---|---|---|\n"));
        for k in all_knobs().into_iter().filter(|k| k.section == section) {
            out.push_str(&format!(
                "| `{}` | {} | `{}` | {} | {} | {} |\n",
                k.name,
                k.values.replace('|', "\\|"),
                k.default,
                if k.kernel.is_empty() { "" } else { k.kernel },
                k.since,
                k.help.replace('|', "\\|")
            ));
        }
    }
    out
}

/// `recorder options [--markdown]`: lists every knob.
pub fn cli_main(args: Vec<String>) -> std::process::ExitCode {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("recorder options: list every option of the one knob table (section, name, accepted values, default, what it does)\n\nusage: recorder options [--markdown]\n\n  --markdown   write the table as docs/options.md's Markdown\n  -h, --help   this text\n\nEach option is a `recorder serve` flag --NAME, a TOML key NAME under [SECTION], and an experiment dimension SECTION.NAME.");
        return std::process::ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "--markdown") {
        print!("{}", options_markdown());
        return std::process::ExitCode::SUCCESS;
    }
    if let Some(a) = args.iter().find(|a| a.as_str() != "--markdown") {
        eprintln!("recorder options: unknown argument {a:?}; usage: recorder options [--markdown]");
        return std::process::ExitCode::from(2);
    }
    for k in all_knobs() {
        println!(
            "{:<8} {:<28} [{}] default {}  {}",
            k.section, k.name, k.values, k.default, k.help
        );
    }
    std::process::ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knob_names_are_unique_and_kebab_case() {
        let mut seen = std::collections::HashSet::new();
        for k in all_knobs() {
            assert!(seen.insert(k.name), "knob {} appears twice", k.name);
            assert!(
                k.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{}",
                k.name
            );
            assert!(!k.help.is_empty(), "knob {} has no help", k.name);
        }
    }

    #[test]
    fn every_knob_default_round_trips_through_set_and_get() {
        let d = Config::default();
        for k in all_knobs() {
            let key = format!("{}.{}", k.section, k.name);
            let v = d
                .get(&key)
                .unwrap_or_else(|| panic!("knob {key} has no getter"));
            assert_eq!(
                v, k.default,
                "default of {key} in the table differs from Config::default()"
            );
            let mut c = Config::default();
            c.set(&key, &v)
                .unwrap_or_else(|e| panic!("knob {key} refuses its own value {v:?}: {e}"));
            assert_eq!(c, d, "setting {key} to its default changed the config");
        }
    }

    #[test]
    fn toml_round_trip() {
        let d = Config::default();
        let mut c = Config::default();
        c.apply_toml(&d.to_toml()).unwrap();
        assert_eq!(c, d);
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let mut c = Config::default();
        let e = c.set("ring.no-such-knob", "1").unwrap_err();
        assert!(e.message.contains("no-such-knob"), "{e}");
        let e = c.apply_toml("[ring]\nbogus = 1\n").unwrap_err();
        assert!(e.message.contains("bogus"), "{e}");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("64k").unwrap(), 65536);
        assert_eq!(parse_bytes("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("x").is_err());
    }
}

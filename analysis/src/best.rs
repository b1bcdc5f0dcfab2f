//! `analysis best DIR`: the best supported configuration as a recorder config file.
//!
//! Candidates are the recorder configurations of one workload with no `unsupported` or
//! `failed` run. The best is the one with the best median; every candidate whose 90%
//! interval overlaps the best's is a tie, and ties go to the simpler configuration
//! (fewer knobs away from their defaults), then to the better median.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::aggregate::{Config, Summary};
use crate::data::{m, ResultSet, Status};
use crate::error::{Error, Result};
use crate::report::{ranked, workloads};

pub const SECTIONS: &[&str] = &["ring", "file", "net", "server"];

pub struct Best {
    pub toml: String,
    pub metric_name: String,
    pub workload: String,
    pub chosen_cell: String,
    /// (dimension, value) of the chosen configuration.
    pub dims: Vec<(String, String)>,
    pub defaults_source: Option<PathBuf>,
}

/// Knob defaults from `docs/options.md` (the table `recorder options --markdown` writes):
/// `section.name -> default`.
pub fn parse_options_md(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut section = String::new();
    for line in text.lines() {
        let l = line.trim();
        if let Some(s) = l.strip_prefix("## [").and_then(|s| s.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        if section.is_empty() || !l.starts_with("| `") {
            continue;
        }
        let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
        if cells.len() >= 3 {
            let name = cells[0].trim_matches('`');
            let default = cells[2].trim_matches('`');
            out.insert(format!("{section}.{name}"), default.to_string());
        }
    }
    out
}

/// Scalar `section.name = value` keys of the experiment's `[cell]` table (manifest.json's
/// `experiment` text), as strings.
fn experiment_scalars(manifest: &serde_json::Value) -> Vec<(String, String)> {
    let Some(text) = manifest.get("experiment").and_then(|v| v.as_str()) else {
        return Vec::new();
    };
    let Ok(doc) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let Some(cell) = doc.get("cell").and_then(|c| c.as_table()) else {
        return Vec::new();
    };
    cell.iter()
        .filter_map(|(k, v)| {
            let v = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                _ => return None,
            };
            Some((k.clone(), v))
        })
        .collect()
}

fn find_options_md(dir: &Path) -> Option<PathBuf> {
    let mut starts = vec![dir.to_path_buf()];
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    for s in starts {
        let abs = std::fs::canonicalize(&s).unwrap_or(s);
        for a in abs.ancestors() {
            for cand in [a.join("options.md"), a.join("docs").join("options.md")] {
                if cand.is_file() {
                    return Some(cand);
                }
            }
        }
    }
    None
}

fn norm(v: &str) -> String {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "on" | "yes" | "true" => "true".into(),
        "0" | "off" | "no" | "false" => "false".into(),
        other => other.replace('_', "-"),
    }
}

/// Whether `value` is the default of dimension `dim`.
pub fn is_default(defaults: &HashMap<String, String>, dim: &str, value: &str) -> bool {
    let key = if dim.contains('.') {
        Some(dim.to_string())
    } else {
        defaults
            .keys()
            .find(|k| k.rsplit('.').next() == Some(dim))
            .cloned()
    };
    if let Some(d) = key.and_then(|k| defaults.get(&k)) {
        return norm(d) == norm(value) || (d.is_empty() && value.is_empty());
    }
    matches!(
        norm(value).as_str(),
        "false" | "none" | "default" | "" | "off"
    )
}

/// A TOML scalar: bools and integers unquoted, everything else a quoted string.
pub fn toml_value(v: &str) -> String {
    let t = v.trim();
    if t == "true" || t == "false" {
        return t.to_string();
    }
    let digits = t.strip_prefix('-').unwrap_or(t);
    if !digits.is_empty()
        && digits.len() < 19
        && digits.chars().all(|c| c.is_ascii_digit())
        && !(digits.len() > 1 && digits.starts_with('0'))
    {
        return t.to_string();
    }
    toml::Value::String(t.to_string()).to_string()
}

pub fn resolve(metric: &str) -> Result<(usize, &'static str, &'static str)> {
    Ok(match metric {
        "throughput" => (
            m::THROUGHPUT,
            "throughput",
            "highest median throughput, MB/s",
        ),
        "p99" => (m::ACK_P99, "p99", "lowest median ack p99 latency, µs"),
        "efficiency" => (
            m::CPU_S_PER_GIB,
            "efficiency",
            "lowest median CPU seconds per GiB",
        ),
        other => {
            return Err(Error::Usage(format!(
                "unknown --metric {other:?}; use throughput, p99 or efficiency"
            )))
        }
    })
}

pub fn best(
    dir: &Path,
    metric: &str,
    workload: Option<&str>,
    defaults_path: Option<&Path>,
) -> Result<Best> {
    let (k, metric_name, what) = resolve(metric)?;
    let rs = ResultSet::load(dir)?;
    let sum = Summary::build(&rs);
    let wls = workloads(&rs);
    let wl = match workload {
        Some(w) if wls.iter().any(|x| x == w) => w.to_string(),
        Some(w) => {
            return Err(Error::Usage(format!(
                "--workload {w}: no recorder runs of that workload; the sweep has: {}",
                wls.join(", ")
            )))
        }
        None => wls
            .first()
            .cloned()
            .ok_or_else(|| Error::Usage(format!("{}: no recorder runs", dir.display())))?,
    };
    let (defaults, defaults_source) = match defaults_path {
        Some(p) => {
            let t = std::fs::read_to_string(p).map_err(|e| Error::io(p, "read", e))?;
            let d = parse_options_md(&t);
            if d.is_empty() {
                return Err(Error::input(
                    p,
                    None,
                    None,
                    "no option table found (expected the output of `recorder options --markdown`)",
                ));
            }
            (d, Some(p.to_path_buf()))
        }
        None => match find_options_md(dir) {
            Some(p) => (
                std::fs::read_to_string(&p)
                    .map(|t| parse_options_md(&t))
                    .unwrap_or_default(),
                Some(p),
            ),
            None => (HashMap::new(), None),
        },
    };
    let all = ranked(&sum, &wl, k);
    let bad = |c: &Config| {
        c.not_ok
            .iter()
            .any(|(s, _)| matches!(s, Status::Unsupported | Status::Failed))
    };
    let cands: Vec<&Config> = all.iter().copied().filter(|c| !bad(c)).collect();
    let excluded = sum
        .configs
        .iter()
        .filter(|c| c.is_recorder() && c.workload == wl && bad(c))
        .count();
    let Some(top) = cands.first() else {
        return Err(Error::Usage(format!(
            "{}: no supported configuration of workload {wl} has an ok run with {}",
            dir.display(),
            crate::data::METRICS[k]
        )));
    };
    // Ties: intervals overlap (the range where the repetitions are too few for one).
    let top_band = top.metric(k).expect("candidate has metric");
    let top_ci = top_band.band();
    let nondefault = |c: &Config| {
        rs.dimensions
            .iter()
            .zip(&c.dims)
            .filter(|(d, v)| !is_default(&defaults, d, v))
            .count()
    };
    let mut ties: Vec<&Config> = cands
        .iter()
        .copied()
        .filter(|c| c.metric(k).is_some_and(|s| s.band().overlaps(&top_ci)))
        .collect();
    // `ranked` order is best median first; a stable sort keeps it within equal simplicity.
    ties.sort_by_key(|c| nondefault(c));
    let chosen = ties[0];
    let st = chosen.metric(k).expect("candidate has metric");
    let ci = st.band();

    let mut o = String::new();
    let _ = writeln!(
        o,
        "# Recorder configuration chosen by `analysis best` ({what})."
    );
    let _ = writeln!(o, "# Run it with: recorder serve --config THIS_FILE");
    let _ = writeln!(
        o,
        "# source sweep: {} (git rev {}, started {})",
        dir.display(),
        rs.manifest
            .get("git_rev")
            .and_then(|v| v.as_str())
            .unwrap_or("?"),
        rs.manifest
            .get("started_at")
            .and_then(|v| v.as_str())
            .unwrap_or("?")
    );
    let _ = writeln!(
        o,
        "# workload: {wl}; metric: {metric_name} ({})",
        crate::data::METRICS[k]
    );
    let _ = writeln!(
        o,
        "# value: {} ({} {} – {}, {} ok runs), cell {}",
        crate::charts::num(st.median),
        st.band_name(),
        crate::charts::num(ci.lo),
        crate::charts::num(ci.hi),
        st.n,
        chosen.cell_id
    );
    let _ = writeln!(
        o,
        "# {} candidates ({} configurations with unsupported or failed runs left out); {} configuration(s) tied \
         with the best median (intervals, or ranges with fewer than 5 runs, overlap), resolved by fewest non-default knobs ({} here{})",
        cands.len(),
        excluded,
        ties.len(),
        nondefault(chosen),
        match &defaults_source {
            Some(p) => format!("; defaults from {}", p.display()),
            None => "; defaults assumed: false/none/off".into(),
        }
    );
    if chosen.cell_id != top.cell_id {
        let _ = writeln!(
            o,
            "# best median was cell {} ({}), statistically tied and less simple",
            top.cell_id, top.short
        );
    }
    let _ = writeln!(o, "# runner-ups:");
    for c in cands.iter().filter(|c| c.cell_id != chosen.cell_id).take(5) {
        let s = c.metric(k).expect("candidate");
        let ci = s.band();
        let _ = writeln!(
            o,
            "#   {} [{} – {}] cell {}{}: {}",
            crate::charts::num(s.median),
            crate::charts::num(ci.lo),
            crate::charts::num(ci.hi),
            c.cell_id,
            if ci.overlaps(&top_ci) { " (tie)" } else { "" },
            c.short
        );
    }
    if let Some(r) = chosen.runs.iter().map(|&i| &rs.runs[i]).find(|r| r.is_ok()) {
        if !r.requested_flags.is_empty() || !r.effective_flags.is_empty() {
            let _ = writeln!(
                o,
                "# setup flags requested: {}; in effect: {}",
                r.requested_flags, r.effective_flags
            );
        }
    }
    o.push('\n');

    let mut by_section: HashMap<&str, Vec<(String, String)>> = HashMap::new();
    let mut block = Vec::new();
    let mut other = Vec::new();
    let mut dims_out = Vec::new();
    // Recorder options the experiment fixed for every cell (scalars under [cell]) are not
    // dimensions, but they are part of the measured configuration: carry them over.
    for (d, v) in experiment_scalars(&rs.manifest) {
        if rs.dimensions.contains(&d) {
            continue;
        }
        if let Some((sec, name)) = d.split_once('.') {
            if let Some(s) = SECTIONS.iter().find(|s| **s == sec) {
                by_section.entry(s).or_default().push((name.to_string(), v));
            }
        }
    }
    for (d, v) in rs.dimensions.iter().zip(&chosen.dims) {
        dims_out.push((d.clone(), v.clone()));
        let (section, name) = match d.split_once('.') {
            Some((s, n)) => (s.to_string(), n.to_string()),
            None => match defaults
                .keys()
                .find(|kk| kk.rsplit('.').next() == Some(d.as_str()))
            {
                Some(kk) => (kk.split('.').next().unwrap_or("").to_string(), d.clone()),
                None => (String::new(), d.clone()),
            },
        };
        if v.is_empty() {
            other.push(format!(
                "{d} (not set in this configuration, so its default)"
            ));
            continue;
        }
        match SECTIONS.iter().find(|s| **s == section) {
            Some(s) => by_section.entry(s).or_default().push((name, v.clone())),
            None if section == "block" => block.push((name, v.clone())),
            None => other.push(format!("{d} = {v}")),
        }
    }
    if !block.is_empty() {
        let _ = writeln!(
            o,
            "# Block layer settings of this configuration: not recorder options. The operator must"
        );
        let _ = writeln!(o, "# apply them via sysfs before starting the recorder, for the device holding the replays:");
        for (n, v) in &block {
            let _ = writeln!(
                o,
                "#   echo {v} > /sys/block/<dev>/queue/{}",
                n.replace('-', "_")
            );
        }
        o.push('\n');
    }
    if !other.is_empty() {
        let _ = writeln!(
            o,
            "# Other sweep dimensions (load, anchors, environment, or options left at their default here): {}",
            other.join(", ")
        );
        o.push('\n');
    }
    for s in SECTIONS {
        let _ = writeln!(o, "[{s}]");
        match by_section.get(s) {
            Some(kv) => {
                for (n, v) in kv {
                    let _ = writeln!(o, "{n} = {}", toml_value(v));
                }
            }
            None => {
                let _ = writeln!(
                    o,
                    "# no swept knob in this section: the recorder's defaults apply"
                );
            }
        }
        o.push('\n');
    }
    Ok(Best {
        toml: o,
        metric_name: metric_name.to_string(),
        workload: wl,
        chosen_cell: chosen.cell_id.clone(),
        dims: dims_out,
        defaults_source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_values_are_typed() {
        assert_eq!(toml_value("true"), "true");
        assert_eq!(toml_value("256"), "256");
        assert_eq!(toml_value("-3"), "-3");
        assert_eq!(toml_value("64k"), "\"64k\"");
        assert_eq!(toml_value("007"), "\"007\"");
        assert_eq!(toml_value("write-fixed"), "\"write-fixed\"");
        assert_eq!(toml_value("a\"b"), "'a\"b'");
    }

    #[test]
    fn options_markdown_defaults() {
        let md = "# Options\n\n## [ring]\n\n| name | values | default | kernel constant | since | what it does |\n|---|---|---|---|---|---|\n\
                  | `sqpoll` | bool | `false` | IORING_SETUP_SQPOLL | 5.1 | poll |\n| `entries` | u32 | `256` |  |  | depth |\n\n## [file]\n\n\
                  | name | values | default | kernel constant | since | what it does |\n|---|---|---|---|---|---|\n| `write-op` | write\\|writev | `write` |  |  | op |\n";
        let d = parse_options_md(md);
        assert_eq!(d.get("ring.sqpoll").map(String::as_str), Some("false"));
        assert_eq!(d.get("ring.entries").map(String::as_str), Some("256"));
        assert_eq!(d.get("file.write-op").map(String::as_str), Some("write"));
        assert!(is_default(&d, "ring.entries", "256"));
        assert!(!is_default(&d, "ring.entries", "1024"));
        assert!(is_default(&d, "entries", "256"));
        assert!(is_default(&d, "file.write-op", "write"));
        assert!(is_default(&HashMap::new(), "x.y", "false"));
        assert!(!is_default(&HashMap::new(), "x.y", "true"));
    }

    #[test]
    fn experiment_scalars_are_carried_over_but_lists_are_not() {
        let m = serde_json::json!({
            "experiment": "name = \"x\"\n[cell]\n\"server.backend\" = \"blocking\"\n\"file.direct\" = \"required\"\n\"ring.sq-entries\" = 512\n\"ring.sqpoll\" = [true, false]\n"
        });
        let got = experiment_scalars(&m);
        assert!(
            got.contains(&("server.backend".into(), "blocking".into())),
            "{got:?}"
        );
        assert!(got.contains(&("file.direct".into(), "required".into())));
        assert!(got.contains(&("ring.sq-entries".into(), "512".into())));
        assert!(
            !got.iter().any(|(k, _)| k == "ring.sqpoll"),
            "a list is a dimension, not a scalar"
        );
        assert!(experiment_scalars(&serde_json::json!({})).is_empty());
    }
}

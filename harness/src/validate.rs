//! Checks every cell of an experiment before anything runs (`harness plan` and
//! `harness sweep`): every value, every combination and every anchor key, with the rules
//! of the part that will read it: the engine's knob table and `validate()` for recorder
//! keys, the generators' own checks for `load.*`, `fio --parse-only` for `fio.*`, and the
//! harness's own tables for `iperf3.*`, `nginx.*` and `placement.*`. A refusal is an error
//! of the experiment file (exit 2, the cell and the key named), never an `unsupported`
//! cell: `unsupported` is kept for what this kernel or device cannot do.

use std::net::SocketAddr;
use std::process::Command;

use crate::experiment::{Cell, Experiment};
use crate::sweep::engine_args::cell_engine_args;
use crate::sweep::load::{clients_config_for, ds_config_for};

/// `iperf3.*` settings the iperf3 anchor understands.
pub const IPERF3_KEYS: &[&str] = &["parallel", "len", "window", "zerocopy", "reverse"];
/// `nginx.*` settings the nginx anchor understands.
pub const NGINX_KEYS: &[&str] = &["files", "file-size", "sendfile", "workers"];
/// Namespaces that belong to one kind of cell only (`ring` to the recorder and to the
/// nop anchor, which builds the same ring).
const KIND_NAMESPACES: &[(&str, &str)] = &[
    ("ring", "recorder"),
    ("ring", "nop"),
    ("nop", "nop"),
    ("file", "recorder"),
    ("net", "recorder"),
    ("server", "recorder"),
    ("raw", "recorder"),
    ("fio", "fio"),
    ("iperf3", "iperf3"),
    ("nginx", "nginx"),
];

/// Every problem of every cell (empty = the experiment can run). Each names the file, the
/// cell and the key.
pub fn check(exp: &Experiment) -> Vec<String> {
    let fio = fio_available();
    let mut out = Vec::new();
    for c in &exp.cells {
        if let Err(e) = check_cell(exp, c, fio) {
            out.push(format!(
                "{}: cell {} ({}): {e}",
                exp.path.display(),
                c.id,
                c.short_label(&exp.dims)
            ));
        }
    }
    out
}

/// All problems as one error text (None = fine).
pub fn check_all(exp: &Experiment) -> Result<(), String> {
    let problems = check(exp);
    if problems.is_empty() {
        return Ok(());
    }
    let n = problems.len();
    let mut shown: Vec<String> = problems.into_iter().take(20).collect();
    if n > 20 {
        shown.push(format!("... and {} more", n - 20));
    }
    Err(format!(
        "the experiment has {n} error(s); nothing was run:\n  {}",
        shown.join("\n  ")
    ))
}

fn check_cell(exp: &Experiment, c: &Cell, fio: bool) -> Result<(), String> {
    let kind = c.kind();
    for k in c.values.keys() {
        let ns = k.split('.').next().unwrap_or("");
        let owners: Vec<&str> = KIND_NAMESPACES
            .iter()
            .filter(|(n, _)| *n == ns)
            .map(|(_, o)| *o)
            .collect();
        if let Some(owner) = owners.first().filter(|_| !owners.contains(&kind)) {
            {
                return Err(format!(
                    "{k} applies to kind = \"{owner}\" cells only, this cell is kind = \"{kind}\" (it would be ignored)"
                ));
            }
        }
    }
    let wrk_serve = c.workload() == crate::sweep::wrk::WORKLOAD;
    if let Some(k) = c.values.keys().find(|k| k.starts_with("wrk.")) {
        if !wrk_serve {
            return Err(format!(
                "{k} applies to workload = \"wrk-serve\" cells only, this cell is workload = \"{}\" (it would be ignored)",
                c.workload()
            ));
        }
    }
    if let Some(p) = c.get("placement.policy") {
        if !["shared", "separate"].contains(&p) {
            return Err(format!("placement.policy = {p:?}; use shared or separate"));
        }
    }
    let addr: SocketAddr = "127.0.0.1:9".parse().expect("literal address");
    match kind {
        "recorder" => {
            cell_engine_args(c)?;
            match c.workload().as_str() {
                "ingest" | "bulk-ingest" => {
                    ds_config_for(c, exp, addr, 1)?;
                }
                // Node A ingests like `ingest`; node B downloads through the tier.
                "tier" => {
                    ds_config_for(c, exp, addr, 1)?;
                    c.u64_or("load.concurrency", 8)?;
                    clients_config_for(c, exp, addr, vec!["m".into()], 1)?;
                }
                "serve" | "wrk-serve" => {
                    ds_config_for(c, exp, addr, 1)?;
                    c.u64_or("load.prefill-matches", 16)?;
                    c.f64_or("load.prefill-s", 3.0)?;
                    if wrk_serve {
                        crate::sweep::wrk::wrk_config(c, exp)?;
                    } else {
                        clients_config_for(c, exp, addr, vec!["m".into()], 1)?;
                    }
                }
                w => {
                    return Err(format!(
                        "workload = {w:?} does not apply to the recorder; use ingest, bulk-ingest, serve, wrk-serve or tier"
                    ))
                }
            }
        }
        "fio" => {
            if fio {
                fio_parse(c)?;
            }
        }
        "iperf3" => check_iperf3(c)?,
        "nginx" => {
            check_nginx(c)?;
            match c.workload().as_str() {
                "serve" => {
                    clients_config_for(c, exp, addr, vec!["m".into()], 1)?;
                }
                "wrk-serve" => {
                    crate::sweep::wrk::wrk_config(c, exp)?;
                }
                w => {
                    return Err(format!(
                        "workload = {w:?} does not apply to nginx; use serve (the harness's clients) or wrk-serve (wrk)"
                    ))
                }
            }
        }
        "nop" => {
            if let Some((k, _)) = c
                .values
                .keys()
                .filter_map(|k| k.strip_prefix("nop.").map(|s| (k, s)))
                .find(|(_, s)| !crate::sweep::NOP_KEYS.contains(s))
            {
                return Err(format!(
                    "{k} is not a known nop setting; use {}",
                    crate::sweep::NOP_KEYS.join(", ")
                ));
            }
            crate::sweep::nop_ring_args(c)?;
        }
        k => return Err(format!("kind = {k:?}")),
    }
    Ok(())
}

fn check_iperf3(c: &Cell) -> Result<(), String> {
    for (k, v) in c.section("iperf3") {
        let key = format!("iperf3.{k}");
        match k.as_str() {
            "parallel" => match v.parse::<u32>() {
                Ok(n) if (1..=128).contains(&n) => {}
                _ => return Err(format!("{key} = {v:?}: a number of streams from 1 to 128")),
            },
            "len" | "window" => {
                engine::config::parse_bytes(&v).map_err(|e| format!("{key} = {v:?}: {e}"))?;
            }
            "zerocopy" | "reverse" => {
                if !["true", "false", "1", "0"].contains(&v.as_str()) {
                    return Err(format!("{key} = {v:?}: use true or false"));
                }
            }
            _ => {
                return Err(format!(
                    "{key} is not a known iperf3 setting; use {}",
                    IPERF3_KEYS.join(", ")
                ))
            }
        }
    }
    Ok(())
}

fn check_nginx(c: &Cell) -> Result<(), String> {
    for (k, v) in c.section("nginx") {
        let key = format!("nginx.{k}");
        match k.as_str() {
            "files" => match v.parse::<u64>() {
                Ok(n) if n >= 1 => {}
                _ => {
                    return Err(format!(
                        "{key} = {v:?}: a whole number of files, at least 1"
                    ))
                }
            },
            "file-size" => {
                engine::config::parse_bytes(&v).map_err(|e| format!("{key} = {v:?}: {e}"))?;
            }
            "sendfile" => {
                if !["on", "off"].contains(&v.as_str()) {
                    return Err(format!("{key} = {v:?}: use on or off"));
                }
            }
            "workers" => {
                if v != "auto" && !v.parse::<u32>().is_ok_and(|n| n >= 1) {
                    return Err(format!(
                        "{key} = {v:?}: a number of worker processes or auto"
                    ));
                }
            }
            _ => {
                return Err(format!(
                    "{key} is not a known nginx setting; use {}",
                    NGINX_KEYS.join(", ")
                ))
            }
        }
    }
    if let Some(v) = c.get("load.file-size") {
        engine::config::parse_bytes(v).map_err(|e| format!("load.file-size = {v:?}: {e}"))?;
    }
    Ok(())
}

fn fio_available() -> bool {
    Command::new("fio")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// fio's own parser on the anchor's options (`fio --parse-only`), the way the run passes them.
fn fio_parse(c: &Cell) -> Result<(), String> {
    let mut cmd = Command::new("fio");
    cmd.arg("--parse-only");
    let opts = crate::sweep::anchors::fio_options(c);
    for (k, v) in crate::sweep::anchors::fio_args_order(&opts) {
        cmd.arg(format!("--{k}={v}"));
    }
    let o = cmd
        .output()
        .map_err(|e| format!("cannot run fio --parse-only: {e}"))?;
    if o.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("fio:"))
        .or_else(|| text.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("")
        .trim();
    // Name the key fio stopped at.
    let key = opts
        .keys()
        .find(|k| line.contains(&format!("{k}=")) || line.contains(&format!("'--{k}")))
        .map(|k| format!("fio.{k}"))
        .unwrap_or_else(|| "a fio.* setting".into());
    Err(format!("{key} is refused by fio ({line})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn exp(text: &str) -> Experiment {
        Experiment::parse(Path::new("t.toml"), text).unwrap()
    }

    #[test]
    fn bad_values_and_combinations_are_errors_of_the_file_naming_the_key() {
        let e = exp("[cell]\n\"server.backend\" = [\"uring\", \"bogus\"]\n");
        let p = check(&e);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("c0001") && p[0].contains("server.backend = \"bogus\""),
            "{p:?}"
        );
        let e = exp("[cell]\n\"load.matches\" = \"many\"\n");
        let p = check(&e);
        assert!(p[0].contains("load.matches"), "{p:?}");
        let e = exp("[cell]\n\"placement.policy\" = \"apart\"\n");
        assert!(check(&e)[0].contains("placement.policy"));
        let e = exp("[[include]]\nkind = \"iperf3\"\n\"iperf3.paralel\" = 2\n");
        let p = check(&e);
        assert!(
            p[0].contains("iperf3.paralel") && p[0].contains("parallel"),
            "{p:?}"
        );
        let e = exp("[[include]]\nkind = \"nginx\"\n\"nginx.sendfile\" = \"maybe\"\n");
        assert!(check(&e)[0].contains("nginx.sendfile"));
        let e = exp("[cell]\n\"fio.bs\" = \"4k\"\n");
        let p = check(&e);
        assert!(p[0].contains("fio.bs applies to kind = \"fio\""), "{p:?}");
        assert!(check(&exp("[cell]\n\"load.matches\" = [4, 8]\n")).is_empty());
    }

    #[test]
    fn wrk_settings_are_checked_and_apply_to_wrk_serve_cells_only() {
        let ok = "measure_s = 2\n[cell]\nworkload = \"wrk-serve\"\n\"wrk.connections\" = 8\n\
                  [[include]]\nkind = \"nginx\"\nworkload = \"wrk-serve\"\n\"wrk.threads\" = 1\n";
        assert!(check(&exp(ok)).is_empty(), "{:?}", check(&exp(ok)));
        let cases = [
            // a wrk key on a cell that wrk does not drive would be ignored
            ("measure_s = 2\n[cell]\nworkload = \"serve\"\n\"wrk.threads\" = 2\n", "applies to workload = \"wrk-serve\""),
            ("measure_s = 2\n[cell]\nworkload = \"wrk-serve\"\n\"wrk.threads\" = 0\n", "wrk.threads = \"0\""),
            ("measure_s = 2\n[cell]\nworkload = \"wrk-serve\"\n\"wrk.threads\" = 4\n\"wrk.connections\" = 2\n", "at least one connection per thread"),
            ("measure_s = 1.5\n[cell]\nworkload = \"wrk-serve\"\n", "whole number of seconds"),
            ("measure_s = 2\n[[include]]\nkind = \"nginx\"\nworkload = \"ingest\"\n", "does not apply to nginx"),
        ];
        for (text, want) in cases {
            let p = check(&exp(text));
            assert!(p.len() == 1 && p[0].contains(want), "{text}: {p:?}");
        }
        let e = Experiment::parse(
            Path::new("t.toml"),
            "[cell]\nworkload = \"wrk-serve\"\n\"wrk.conns\" = 8\n",
        )
        .unwrap_err();
        assert!(e.contains("wrk.conns") && e.contains("connections"), "{e}");
    }

    /// experiments/tier.toml was refused by `harness plan` (`workload = "tier"` was not in
    /// the table of workloads the checks knew): every shipped experiment must pass them.
    #[test]
    fn every_shipped_experiment_passes_the_checks() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "toml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let x = Experiment::parse(&path, &text).unwrap_or_else(|e| panic!("{e}"));
            let problems = check(&x);
            assert!(problems.is_empty(), "{}: {problems:?}", path.display());
            n += 1;
        }
        assert!(n >= 5, "only {n} experiment files in {}", dir.display());
    }

    #[test]
    fn fio_settings_are_checked_by_fio_itself() {
        if !fio_available() {
            eprintln!("fio is not installed: skipped (./lab installs it)");
            return;
        }
        let e = exp("[[include]]\nkind = \"fio\"\n\"fio.rw\" = \"wrte\"\n");
        let p = check(&e);
        assert!(p.len() == 1 && p[0].contains("fio.rw"), "{p:?}");
        let e = exp("[[include]]\nkind = \"fio\"\n\"fio.bogus\" = 1\n");
        assert!(check(&e)[0].contains("fio"), "{:?}", check(&e));
        assert!(check(&exp("[[include]]\nkind = \"fio\"\n\"fio.bs\" = \"4k\"\n")).is_empty());
    }
}

//! manifest.json: the machine, the target, the experiment and the revisions measured.

use std::collections::BTreeMap;
use std::path::Path;

use super::Ctx;
use crate::util::run_cmd;

/// System facts for the manifest.
pub(crate) fn system_facts() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_string();
    let mem = procfs::Meminfo::current_mem_total_kb();
    serde_json::json!({
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpu_model": model,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "mem_total_kb": mem,
    })
}

trait MemKb {
    fn current_mem_total_kb() -> u64;
}
impl MemKb for procfs::Meminfo {
    fn current_mem_total_kb() -> u64 {
        use procfs::Current;
        procfs::Meminfo::current()
            .map(|m| m.mem_total / 1024)
            .unwrap_or(0)
    }
}

/// First line of a command's output (stdout, else stderr: `nginx -v` writes there), or
/// None when it cannot run.
fn version_of(prog: &str, args: &[&str]) -> Option<String> {
    let o = std::process::Command::new(prog).args(args).output().ok()?;
    let text = if o.stdout.iter().any(|b| !b.is_ascii_whitespace()) {
        o.stdout
    } else {
        o.stderr
    };
    let line = String::from_utf8_lossy(&text)
        .lines()
        .find(|l| !l.trim().is_empty())?
        .trim()
        .to_string();
    // `wrk --version` prints its banner and exits 1; anything else failing is not a version.
    (o.status.success() || prog == "wrk").then_some(line)
}

/// Versions of the tools a sweep may run (null where one is not installed) and of the
/// binaries measured: fio, iperf3, nginx, wrk, the kernel, rustc, and each recorder's
/// `--version` (null when that build has no such flag).
pub(crate) fn tool_versions(recorders: &[(String, &Path)]) -> serde_json::Value {
    let mut m = serde_json::json!({
        "fio": version_of("fio", &["--version"]),
        "iperf3": version_of("iperf3", &["--version"]),
        "nginx": version_of("nginx", &["-v"]),
        "wrk": version_of("wrk", &["--version"]),
        "kernel": version_of("uname", &["-srv"]),
        "rustc": version_of("rustc", &["--version"]),
        "harness": format!("harness {} ({})", env!("CARGO_PKG_VERSION"), env!("GIT_REVISION")),
    });
    for (label, bin) in recorders {
        m[format!("recorder_{label}")] =
            serde_json::json!(version_of(&bin.to_string_lossy(), &["--version"]));
    }
    m
}

/// The revision the harness was built from (build-support/git_revision.rs): the measured
/// revision when the sweep runs outside a git checkout.
pub const HARNESS_GIT_REVISION: &str = env!("GIT_REVISION");

/// The revision being measured as head: the working directory's checkout, else the
/// revision the harness was built from.
pub fn head_rev() -> String {
    let repo = std::env::current_dir().unwrap_or_default();
    Some(git_rev(&repo, "HEAD"))
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| HARNESS_GIT_REVISION.to_string())
}

pub fn git_rev(dir: &Path, rev: &str) -> String {
    run_cmd("git", &["-C", &dir.to_string_lossy(), "rev-parse", rev])
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// What the manifest says about the sweep besides the machine and the experiment.
pub(crate) struct SweepFacts<'a> {
    pub cmdline: &'a str,
    pub started: &'a str,
    pub revisions: Option<&'a BTreeMap<String, String>>,
    pub queue_before: &'a [(String, String)],
    pub tools: &'a serde_json::Value,
    pub head_args: &'a [String],
}

fn repeat_json(r: &crate::experiment::Repeat) -> serde_json::Value {
    serde_json::json!({"min": r.min, "max": r.max, "rsd_pct": r.rsd_pct, "retries": r.retries})
}

pub(crate) fn write_manifest(
    dir: &Path,
    ctx: &Ctx,
    f: &SweepFacts,
    finished: Option<&str>,
) -> Result<(), String> {
    let (cmdline, started, revisions, queue_before, tools) =
        (f.cmdline, f.started, f.revisions, f.queue_before, f.tools);
    let exp = ctx.exp;
    let facts = system_facts();
    let repo = std::env::current_dir().unwrap_or_default();
    let mut m = serde_json::json!({
        "schema": results_schema::SCHEMA_VERSION,
        "git_rev": head_rev(),
        "git_rev_source": if git_rev(&repo, "HEAD").is_empty() {
            "the harness build (not run inside a git checkout)"
        } else {
            "git rev-parse HEAD in the working directory"
        },
        "harness_git_rev": HARNESS_GIT_REVISION,
        "tools": tools,
        "head_args": f.head_args,
        "command_line": cmdline,
        "started_at": started,
        "finished_at": finished,
        "kernel": facts["kernel"],
        "cpu_model": facts["cpu_model"],
        "cores": facts["cores"],
        "mem_total_kb": facts["mem_total_kb"],
        "hwloc_topology": ctx.topo.summary,
        "target": ctx.target.to_json(queue_before),
        "experiment_file": exp.path.display().to_string(),
        "experiment": exp.text,
        "dimensions": exp.dims,
        "experiment_name": exp.name,
        "cells": exp.cells.len(),
        "excluded_cells": exp.excluded,
        "repeat": repeat_json(&exp.repeat),
        // Cells whose [[include]] entry sets its own repetition counts.
        "cell_repeat": exp.cell_repeat.iter().map(|(id, r)| (id.clone(), repeat_json(r))).collect::<serde_json::Map<_, _>>(),
        "seed": exp.seed,
        "seed_fresh": exp.seed_fresh,
        "ramp_up_s": exp.ramp_up_s,
        "measure_s": exp.measure_s,
        "restore_journal": ctx.journal.path().display().to_string(),
    });
    if let Some(r) = revisions {
        m["revisions"] = serde_json::to_value(r).map_err(|e| e.to_string())?;
        if let Some(h) = r.get(dir.file_name().and_then(|s| s.to_str()).unwrap_or("")) {
            m["git_rev"] = serde_json::Value::String(h.clone());
        }
    }
    let tmp = dir.join("manifest.json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_string_pretty(&m).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join("manifest.json")).map_err(|e| e.to_string())
}

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

pub fn git_rev(dir: &Path, rev: &str) -> String {
    run_cmd("git", &["-C", &dir.to_string_lossy(), "rev-parse", rev])
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub(crate) fn write_manifest(
    dir: &Path,
    ctx: &Ctx,
    cmdline: &str,
    started: &str,
    finished: Option<&str>,
    revisions: Option<&BTreeMap<String, String>>,
    queue_before: &[(String, String)],
) -> Result<(), String> {
    let exp = ctx.exp;
    let facts = system_facts();
    let repo = std::env::current_dir().unwrap_or_default();
    let mut m = serde_json::json!({
        "schema": results_schema::SCHEMA_VERSION,
        "git_rev": git_rev(&repo, "HEAD"),
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
        "repeat": {"min": exp.repeat.min, "max": exp.repeat.max, "rsd_pct": exp.repeat.rsd_pct},
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

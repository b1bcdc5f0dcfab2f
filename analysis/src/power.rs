//! `analysis power DIR`: the false-alarm and detection rates of the regression check, from
//! the trials of `harness power` (DIR/power.json, DIR/trials/TT-NAME/{base,head}).
//!
//! Every trial is judged as CI judges a change: `compare` with each cell's margins from an
//! A/A sweep of the same study (`--aa`): an injected trial with the A/A trial of the same
//! round (in a study with fewer A/A than injected rounds, the nearest earlier A/A trial,
//! else the next), an A/A trial with another round's A/A trial (never its own pairs). Per kind of
//! trial (aa, each injection) and per cell and metric: how many trials were called
//! REGRESSION, INCONCLUSIVE, SAME, IMPROVED, and the change measured (median head/base over
//! the trials, with its range); per kind, how many trials had any gated REGRESSION (what
//! fails a build).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::aggregate::metric_title;
use crate::compare::{self, CompareOptions, Verdict};
use crate::doc::Doc;
use crate::error::{Error, Result};
use crate::stats;

/// One judged trial.
pub struct Trial {
    pub round: u32,
    pub kind: String,
    pub dir: PathBuf,
    pub aa: Option<PathBuf>,
    pub cmp: compare::Comparison,
}

/// Counts of one (kind, cell, metric).
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub label: String,
    pub cell_id: String,
    pub metric: usize,
    pub gated: usize,
    pub trials: usize,
    pub verdicts: BTreeMap<&'static str, usize>,
    pub ratios: Vec<f64>,
    pub deltas: Vec<f64>,
}

pub struct Power {
    pub dir: PathBuf,
    pub trials: Vec<Trial>,
    /// Kind -> (trials, trials with a gated REGRESSION).
    pub by_kind: BTreeMap<String, (usize, usize)>,
    pub tallies: BTreeMap<(String, String, usize), Tally>,
    /// Injection arguments by kind.
    pub injections: BTreeMap<String, String>,
    pub unfinished: Vec<PathBuf>,
    pub markdown: PathBuf,
}

pub fn power(dir: &Path) -> Result<Power> {
    let study_path = dir.join("power.json");
    let text =
        std::fs::read_to_string(&study_path).map_err(|e| Error::io(&study_path, "read", e))?;
    let study: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        Error::input(
            &study_path,
            Some(e.line() as u64),
            None,
            format!("not valid JSON: {e}"),
        )
    })?;
    let injections: BTreeMap<String, String> = study["injections"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| {
                    let args: Vec<&str> = i["args"]
                        .as_array()?
                        .iter()
                        .filter_map(|x| x.as_str())
                        .collect();
                    Some((i["name"].as_str()?.to_string(), args.join(" ")))
                })
                .collect()
        })
        .unwrap_or_default();
    let tdir = dir.join("trials");
    let mut found: Vec<(u32, String, PathBuf)> = Vec::new();
    let mut unfinished = Vec::new();
    let rd = std::fs::read_dir(&tdir).map_err(|e| Error::io(&tdir, "read", e))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((t, kind)) = name.split_once('-') else {
            continue;
        };
        let Ok(t) = t.parse::<u32>() else { continue };
        if results_schema::manifest::ab_finished(&e.path()) {
            found.push((t, kind.to_string(), e.path()));
        } else {
            unfinished.push(e.path());
        }
    }
    found.sort();
    let aa: BTreeMap<u32, PathBuf> = found
        .iter()
        .filter(|(_, k, _)| k == "aa")
        .map(|(t, _, d)| (*t, d.clone()))
        .collect();
    let margins_for = |t: u32, kind: &str| -> Option<PathBuf> {
        if kind != "aa" {
            // Its own round's A/A, else the nearest earlier one, else the next.
            return aa
                .range(..=t)
                .next_back()
                .or_else(|| aa.range(t + 1..).next())
                .map(|(_, d)| d.clone());
        }
        // Another round's A/A: the previous one, else the next.
        aa.range(..t)
            .next_back()
            .or_else(|| aa.range(t + 1..).next())
            .map(|(_, d)| d.clone())
    };
    let mut trials = Vec::new();
    for (t, kind, d) in &found {
        let aa_dir = margins_for(*t, kind);
        let cmp = compare::compare(
            &d.join("base"),
            &d.join("head"),
            &CompareOptions {
                aa: aa_dir.clone(),
                ..Default::default()
            },
        )?;
        trials.push(Trial {
            round: *t,
            kind: kind.clone(),
            dir: d.clone(),
            aa: aa_dir,
            cmp,
        });
    }
    let mut by_kind: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut tallies: BTreeMap<(String, String, usize), Tally> = BTreeMap::new();
    for tr in &trials {
        let e = by_kind.entry(tr.kind.clone()).or_default();
        e.0 += 1;
        e.1 += usize::from(tr.cmp.any_regression());
        for r in &tr.cmp.rows {
            let t = tallies
                .entry((tr.kind.clone(), r.cell_id.clone(), r.metric))
                .or_insert_with(|| Tally {
                    label: r.label.clone(),
                    cell_id: r.cell_id.clone(),
                    metric: r.metric,
                    ..Default::default()
                });
            t.trials += 1;
            t.gated += usize::from(r.gated);
            *t.verdicts.entry(r.verdict.as_str()).or_default() += 1;
            t.ratios.push(r.ratio);
            t.deltas.push(r.delta);
        }
    }
    let markdown = dir.join("power.md");
    let p = Power {
        dir: dir.to_path_buf(),
        trials,
        by_kind,
        tallies,
        injections,
        unfinished,
        markdown: markdown.clone(),
    };
    std::fs::write(&markdown, p.to_doc().to_markdown())
        .map_err(|e| Error::io(&markdown, "write", e))?;
    Ok(p)
}

fn pct(r: f64) -> String {
    format!("{:+.1}%", (r - 1.0) * 100.0)
}

impl Power {
    fn rows(&self) -> Vec<Vec<String>> {
        self.tallies
            .iter()
            .map(|((kind, _, _), t)| {
                let mut r = t.ratios.clone();
                r.sort_by(f64::total_cmp);
                let n = |v: Verdict| t.verdicts.get(v.as_str()).copied().unwrap_or(0);
                vec![
                    kind.clone(),
                    t.label.clone(),
                    metric_title(t.metric).to_string(),
                    if t.gated == t.trials {
                        "yes".into()
                    } else if t.gated == 0 {
                        "no".into()
                    } else {
                        format!("{} of {}", t.gated, t.trials)
                    },
                    format!("{} / {}", n(Verdict::Regression), t.trials),
                    n(Verdict::Inconclusive).to_string(),
                    n(Verdict::Same).to_string(),
                    n(Verdict::Improved).to_string(),
                    format!(
                        "{} ({} … {})",
                        pct(stats::median(&r)),
                        pct(r[0]),
                        pct(r[r.len() - 1])
                    ),
                    format!("±{:.1}%", stats::median(&t.deltas) * 100.0),
                ]
            })
            .collect()
    }

    pub fn to_doc(&self) -> Doc {
        let mut d = Doc::new(format!(
            "Power of the regression check: {}",
            self.dir.display()
        ));
        d.p(
            "Each trial is an interleaved A/B sweep judged like a CI change: `analysis compare` with each cell's \
             margin from an A/A trial (an injected trial: the A/A trial of its round; an A/A trial: another \
             round's A/A trial). A trial fails a build when any gated verdict is REGRESSION.",
        );
        d.h(1, "Trials");
        d.table(
            &[
                "trial kind",
                "head recorder",
                "trials",
                "with a gated REGRESSION (build fails)",
            ],
            self.by_kind
                .iter()
                .map(|(k, (n, reg))| {
                    vec![
                        k.clone(),
                        if k == "aa" {
                            "the same build (A/A)".into()
                        } else {
                            format!("`{}`", self.injections.get(k).cloned().unwrap_or_default())
                        },
                        n.to_string(),
                        format!("{reg} of {n}"),
                    ]
                })
                .collect(),
        );
        if !self.unfinished.is_empty() {
            d.p(format!(
                "Unfinished trials (not counted; `harness power` continues them): {}",
                self.unfinished
                    .iter()
                    .map(|p| format!("`{}`", p.display()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        d.h(1, "Per cell and metric");
        d.p(
            "REGRESSION counts every trial called so (gated or not); `gated` says whether the verdict may fail a \
             build. Change measured: median head/base over the trials (range). Margin: median delta.",
        );
        d.table(
            &[
                "trial kind",
                "cell",
                "metric",
                "gated",
                "REGRESSION",
                "INCONCLUSIVE",
                "SAME",
                "IMPROVED",
                "change measured",
                "margin",
            ],
            self.rows(),
        );
        d
    }

    pub fn summary_text(&self) -> String {
        let mut o = String::new();
        for (k, (n, reg)) in &self.by_kind {
            let _ = writeln!(
                o,
                "{k:<8} {n:>3} trials, {reg:>3} with a gated REGRESSION{}",
                self.injections
                    .get(k)
                    .map(|a| format!("   (head: {a})"))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(
            o,
            "\n{:<8} {:<40} {:<18} {:>6} {:>10} {:>5} {:>5} {:>5}  change measured (range)   margin",
            "kind", "cell", "metric", "gated", "REGRESSION", "INC", "SAME", "IMP"
        );
        for r in self.rows() {
            let _ = writeln!(
                o,
                "{:<8} {:<40} {:<18} {:>6} {:>10} {:>5} {:>5} {:>5}  {:<25} {}",
                r[0],
                crate::charts::ellipsize(&r[1], 40),
                r[2],
                r[3],
                r[4],
                r[5],
                r[6],
                r[7],
                r[8],
                r[9]
            );
        }
        o
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "dir": self.dir.display().to_string(),
            "kinds": self.by_kind.iter().map(|(k, (n, reg))| serde_json::json!({
                "kind": k, "trials": n, "trials_with_gated_regression": reg,
                "head_args": self.injections.get(k),
            })).collect::<Vec<_>>(),
            "cells": self.tallies.iter().map(|((k, _, _), t)| serde_json::json!({
                "kind": k, "cell_id": t.cell_id, "configuration": t.label,
                "metric": crate::data::METRICS[t.metric], "trials": t.trials, "gated": t.gated,
                "verdicts": t.verdicts, "head_over_base": t.ratios, "deltas": t.deltas,
            })).collect::<Vec<_>>(),
            "trials": self.trials.iter().map(|t| serde_json::json!({
                "round": t.round, "kind": t.kind, "dir": t.dir.display().to_string(),
                "margins_from": t.aa.as_ref().map(|p| p.display().to_string()),
                "gated_regression": t.cmp.any_regression(),
            })).collect::<Vec<_>>(),
            "unfinished": self.unfinished.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        })
    }
}

//! `harness sweep EXP.toml [--out DIR] [--resume] [--ab BASE_REV]`.
//!
//! Each cell starts a fresh recorder (or anchor) with the cell's configuration, runs a
//! ramp-up and a measured window with telemetry, stops it, restores the block layer, and
//! appends one row to runs.csv (flushed). Cells run in randomised interleaved rounds,
//! repeated from `repeat.min` up to `repeat.max` while the relative spread of throughput is
//! above `repeat.rsd_pct`. See docs/sweeps.md and docs/results.md.
//!
//! One job per file: `cell` (one run of one cell, block layer around it), `engine_args`
//! (a cell's recorder flags, checked with the engine's rules), `recorder_proc` (starting
//! and stopping a recorder, reading its log), `recorder_run` (one recorder run with
//! telemetry), `load` (the generators for each workload), `anchors` (fio, iperf3, nginx),
//! `outcome` (a run's result, derived metrics, rejection), `runs_csv` (the rows),
//! `manifest` (manifest.json), `ab` (building the base revision of an A/B sweep).

mod ab;
mod anchors;
mod cell;
mod engine_args;
mod load;
mod manifest;
mod outcome;
mod recorder_proc;
mod recorder_run;
mod runs_csv;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::block::{self, Journal};
use crate::experiment::{Cell, Experiment};
use crate::placement;
use crate::target::Target;
use crate::util::{mean_sd, rfc3339_now};

use ab::{build_base, remove_base_worktree};
use manifest::write_manifest;
use runs_csv::row_for;

pub use ab::default_recorder;
pub use cell::run_cell;
pub use manifest::git_rev;
pub use outcome::Outcome;
pub use runs_csv::{header, RunsCsv, HEAD_COLS, TAIL_COLS};

pub struct SweepOpts {
    pub experiment: PathBuf,
    pub out: Option<PathBuf>,
    pub resume: bool,
    pub recorder: Option<PathBuf>,
    pub ab: Option<String>,
    /// A/B with a prebuilt base binary (no build); exclusive with `ab`.
    pub base_recorder: Option<PathBuf>,
    pub command_line: String,
    /// Exit with 3 when a run failed (default: failed runs are data, exit 0).
    pub fail_on_failed: bool,
}

/// What every run needs.
pub struct Ctx<'a> {
    pub exp: &'a Experiment,
    pub out: PathBuf,
    pub target: Target,
    pub journal: &'a Journal,
    pub stop: Arc<AtomicBool>,
    pub topo: placement::Topo,
}

/// The whole sweep. Returns the exit code.
pub fn sweep(opts: SweepOpts, stop: Arc<AtomicBool>) -> Result<i32, String> {
    for msg in block::recover_stale() {
        eprintln!("harness: {msg}");
    }
    let exp = Experiment::load(&opts.experiment)?;
    let out = opts.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "results/{}-{}",
            exp.name,
            rfc3339_now().replace([':', '-'], "")
        ))
    });
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let out = out.canonicalize().map_err(|e| e.to_string())?;
    let journal = Journal::open()?;
    let mut target = Target::setup(&exp.target, &out, &journal)?;
    let queue_before = target
        .device
        .as_deref()
        .map(block::all_settings)
        .unwrap_or_default();
    let topo = placement::Topo::discover();
    let ctx = Ctx {
        exp: &exp,
        out: out.clone(),
        target: target.clone(),
        journal: &journal,
        stop: stop.clone(),
        topo,
    };
    let result = sweep_inner(&ctx, &opts, &queue_before);
    let problems = journal.restore_sysfs();
    for p in &problems {
        eprintln!("harness: restore: {p}");
    }
    if let Err(e) = target.teardown(&journal) {
        eprintln!("harness: target teardown: {e}");
    }
    if opts.ab.is_some() {
        remove_base_worktree(&out);
    }
    drop(journal);
    result.map(|c| if stop.load(Relaxed) { 130 } else { c })
}

pub(crate) fn sweep_inner(
    ctx: &Ctx,
    opts: &SweepOpts,
    queue_before: &[(String, String)],
) -> Result<i32, String> {
    let exp = ctx.exp;
    let stop = &ctx.stop;
    let started = rfc3339_now();
    // Revisions: plain sweep = one "head" dir (the out dir itself); A/B = base/ and head/.
    let head_bin = opts.recorder.clone().unwrap_or_else(default_recorder);
    let needs_recorder = exp.cells.iter().any(|c| c.kind() == "recorder");
    if needs_recorder && !head_bin.exists() {
        return Err(format!(
            "recorder binary {} not found; build it (cargo build --release -p engine) or pass --recorder PATH",
            head_bin.display()
        ));
    }
    let mut revs: Vec<(String, PathBuf, PathBuf)> = Vec::new(); // label, dir, binary
    let mut revisions = None;
    if let Some(bbin) = &opts.base_recorder {
        if !bbin.exists() {
            return Err(format!("--base-recorder {}: no such file", bbin.display()));
        }
        let repo = std::env::current_dir().unwrap_or_default();
        let mut r = BTreeMap::new();
        r.insert("base".to_string(), format!("binary {}", bbin.display()));
        r.insert(
            "head".to_string(),
            format!("{} ({})", git_rev(&repo, "HEAD"), head_bin.display()),
        );
        revisions = Some(r);
        revs.push(("base".into(), ctx.out.join("base"), bbin.clone()));
        revs.push(("head".into(), ctx.out.join("head"), head_bin.clone()));
    } else if let Some(base) = &opts.ab {
        let (bbin, bsha) = build_base(&ctx.out, base)?;
        let repo = std::env::current_dir().unwrap_or_default();
        let mut r = BTreeMap::new();
        r.insert("base".to_string(), bsha);
        r.insert("head".to_string(), git_rev(&repo, "HEAD"));
        revisions = Some(r);
        revs.push(("base".into(), ctx.out.join("base"), bbin));
        revs.push(("head".into(), ctx.out.join("head"), head_bin.clone()));
    } else {
        revs.push(("head".into(), ctx.out.clone(), head_bin.clone()));
    }
    let mut csvs = Vec::new();
    for (_, dir, _) in &revs {
        for sub in ["logs", "timeseries"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        // Timeseries and logs are written under ctx.out; for A/B they go to the revision dir.
        csvs.push(RunsCsv::open(dir, &exp.dims, opts.resume)?);
        write_manifest(
            dir,
            ctx,
            &opts.command_line,
            &started,
            None,
            revisions.as_ref(),
            queue_before,
        )?;
    }
    let ab = opts.ab.is_some() || opts.base_recorder.is_some();
    let mut rng = rand::rngs::StdRng::seed_from_u64(exp.seed ^ 0xA5A5);
    // Per cell: throughputs of ok runs (head, or head/base ratio for A/B) and reps done.
    let mut values: HashMap<String, Vec<f64>> = HashMap::new();
    let mut reps_done: HashMap<String, u32> = HashMap::new();
    let mut once: HashSet<String> = HashSet::new(); // unsupported cells are not repeated
    for c in &exp.cells {
        let mut r = 0;
        while csvs
            .iter()
            .all(|csv| csv.done.contains_key(&(c.id.clone(), r + 1)))
        {
            r += 1;
            let h = csvs
                .last()
                .expect("head")
                .done
                .get(&(c.id.clone(), r))
                .cloned();
            if let Some((st, thr)) = h {
                if st == "unsupported" {
                    once.insert(c.id.clone());
                }
                if st == "ok" {
                    if let Some(t) = thr {
                        let v = if ab {
                            csvs[0]
                                .done
                                .get(&(c.id.clone(), r))
                                .and_then(|b| b.1)
                                .map(|b| t / b)
                        } else {
                            Some(t)
                        };
                        if let Some(v) = v {
                            values.entry(c.id.clone()).or_default().push(v);
                        }
                    }
                }
            }
        }
        reps_done.insert(c.id.clone(), r);
    }
    let est_runs: u64 = exp
        .cells
        .iter()
        .map(|c| exp.repeat.min.saturating_sub(reps_done[&c.id]) as u64)
        .sum::<u64>()
        * revs.len() as u64;
    let per_run_s = exp.ramp_up_s + exp.measure_s + 3.0;
    let pb = indicatif::ProgressBar::new(est_runs);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} runs, ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let tty = std::io::stderr().is_terminal();
    eprintln!(
        "harness: sweep {}: {} cells ({} excluded), {}..{} repetitions, ~{:.0} s per run, results in {}",
        exp.name,
        exp.cells.len(),
        exp.excluded,
        exp.repeat.min,
        exp.repeat.max,
        per_run_s,
        ctx.out.display()
    );
    let mut any_failed = false;
    let mut round = 0u32;
    loop {
        round += 1;
        // Which cells run in this round.
        let mut todo: Vec<&Cell> = exp
            .cells
            .iter()
            .filter(|c| {
                let done = reps_done[&c.id];
                if once.contains(&c.id) || done >= exp.repeat.max {
                    return false;
                }
                if done < exp.repeat.min {
                    return true;
                }
                let v = values.get(&c.id).map(Vec::as_slice).unwrap_or(&[]);
                let (_, _, rsd) = mean_sd(v);
                v.len() >= 2 && rsd > exp.repeat.rsd_pct
            })
            .collect();
        if todo.is_empty() || stop.load(Relaxed) {
            break;
        }
        if round > exp.repeat.max + 1 {
            break;
        }
        if exp.random_order {
            todo.shuffle(&mut rng);
        }
        if reps_done.values().all(|r| *r >= exp.repeat.min) {
            pb.inc_length(todo.len() as u64 * revs.len() as u64);
        }
        for cell in todo {
            if stop.load(Relaxed) {
                break;
            }
            let rep = reps_done[&cell.id] + 1;
            let mut order: Vec<usize> = (0..revs.len()).collect();
            if exp.random_order {
                order.shuffle(&mut rng);
            }
            let mut thr: HashMap<usize, Option<f64>> = HashMap::new();
            let mut statuses = Vec::new();
            for ri in order {
                if stop.load(Relaxed) {
                    break;
                }
                let (label, dir, bin) = &revs[ri];
                let run_id = format!("{}-r{rep}", cell.id);
                pb.set_message(format!(
                    "{}{} {}",
                    if ab {
                        format!("{label} ")
                    } else {
                        String::new()
                    },
                    run_id,
                    cell.short_label(&exp.dims)
                ));
                let rctx = Ctx {
                    exp,
                    out: dir.clone(),
                    target: ctx.target.clone(),
                    journal: ctx.journal,
                    stop: ctx.stop.clone(),
                    topo: ctx.topo.clone(),
                };
                let seed = exp.seed.wrapping_mul(1_000_003).wrapping_add(rep as u64);
                let o = run_cell(&rctx, cell, &run_id, bin, seed);
                let row = row_for(
                    exp,
                    cell,
                    &run_id,
                    rep,
                    if ab { Some(rep) } else { None },
                    label,
                    &o,
                );
                csvs[ri].append(&row)?;
                let line = format!(
                    "{}{run_id} {} -> {}{}{}",
                    if ab {
                        format!("[{label}] ")
                    } else {
                        String::new()
                    },
                    cell.short_label(&exp.dims),
                    o.status,
                    o.throughput()
                        .map(|t| format!(" {t:.2} MB/s"))
                        .unwrap_or_default(),
                    if o.reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", o.reason)
                    }
                );
                if tty {
                    pb.println(line);
                } else {
                    eprintln!("harness: {line}");
                }
                pb.inc(1);
                if o.status == "failed" {
                    any_failed = true;
                }
                if o.status == "unsupported" {
                    once.insert(cell.id.clone());
                }
                thr.insert(
                    ri,
                    if o.status == "ok" {
                        o.throughput()
                    } else {
                        None
                    },
                );
                statuses.push(o.status.clone());
            }
            if stop.load(Relaxed) && statuses.len() < revs.len() {
                break;
            }
            *reps_done.get_mut(&cell.id).expect("every cell") = rep;
            let v = if ab {
                match (
                    thr.get(&0).copied().flatten(),
                    thr.get(&1).copied().flatten(),
                ) {
                    (Some(b), Some(h)) if b > 0.0 => Some(h / b),
                    _ => None,
                }
            } else {
                thr.get(&0).copied().flatten()
            };
            if let Some(v) = v {
                values.entry(cell.id.clone()).or_default().push(v);
            }
        }
    }
    pb.finish_and_clear();
    let finished = rfc3339_now();
    for (_, dir, _) in &revs {
        write_manifest(
            dir,
            ctx,
            &opts.command_line,
            &started,
            Some(&finished),
            revisions.as_ref(),
            queue_before,
        )?;
    }
    if stop.load(Relaxed) {
        eprintln!("harness: interrupted; the block layer is restored and runs.csv keeps every finished run (use --resume)");
    }
    eprintln!("harness: sweep done: results in {}", ctx.out.display());
    if any_failed {
        eprintln!("harness: some runs failed; their rows say why and their logs are kept");
    }
    Ok(if any_failed && opts.fail_on_failed {
        3
    } else {
        0
    })
}

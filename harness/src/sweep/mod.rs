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
//! `manifest` (manifest.json), `ab` (building the base revision of an A/B sweep), `tier`
//! and `wrk` (the `tier` and `wrk-serve` workloads).

mod ab;
pub mod anchors;
mod cell;
pub mod engine_args;
pub mod load;
mod manifest;
mod outcome;
mod recorder_proc;
mod recorder_run;
mod runs_csv;
mod tally;
mod tier;
pub(crate) mod wrk;

use std::collections::{BTreeMap, HashMap};
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
use crate::util::rfc3339_now;
use tally::Tally;

use ab::{build_base, remove_base_worktree};
use manifest::write_manifest;
use runs_csv::row_for;

pub use ab::default_recorder;

/// Exit codes of `harness sweep` (and of `harness plan` for 2): 0 done; 2 the experiment
/// file or the command line is wrong (nothing ran); 3 a run failed (with
/// --fail-on-failed); 4 no cell could run at all; 130 interrupted.
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_RUN_FAILED: i32 = 3;
pub const EXIT_NOTHING_RAN: i32 = 4;
pub(crate) use anchors::nop_ring_args;
pub use anchors::NOP_KEYS;
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
    /// Extra arguments for every head recorder (e.g. the TEST ONLY burn of CI's injected
    /// slowdown), recorded in the manifest's `revisions`.
    pub head_args: Vec<String>,
}

/// What every run needs.
pub struct Ctx<'a> {
    pub exp: &'a Experiment,
    pub out: PathBuf,
    pub target: Target,
    pub journal: &'a Journal,
    pub stop: Arc<AtomicBool>,
    pub topo: placement::Topo,
    /// Extra recorder arguments of this revision (`--head-args`).
    pub extra_args: Vec<String>,
}

/// The whole sweep. Returns the exit code.
pub fn sweep(opts: SweepOpts, stop: Arc<AtomicBool>) -> Result<i32, String> {
    for msg in block::recover_stale() {
        eprintln!("harness: {msg}");
    }
    let exp = Experiment::load(&opts.experiment)?;
    crate::validate::check_all(&exp)?;
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
        extra_args: Vec::new(),
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
    let needs_recorder = exp
        .cells
        .iter()
        .any(|c| c.kind() == "recorder" || c.kind() == "nop");
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
        let mut r = BTreeMap::new();
        r.insert("base".to_string(), format!("binary {}", bbin.display()));
        r.insert(
            "head".to_string(),
            format!(
                "{} ({}{})",
                manifest::head_rev(),
                head_bin.display(),
                if opts.head_args.is_empty() {
                    String::new()
                } else {
                    format!(" {}", opts.head_args.join(" "))
                }
            ),
        );
        revisions = Some(r);
        revs.push(("base".into(), ctx.out.join("base"), bbin.clone()));
        revs.push(("head".into(), ctx.out.join("head"), head_bin.clone()));
    } else if let Some(base) = &opts.ab {
        let (bbin, bsha) = build_base(&ctx.out, base)?;
        let mut r = BTreeMap::new();
        r.insert("base".to_string(), bsha);
        r.insert(
            "head".to_string(),
            if opts.head_args.is_empty() {
                manifest::head_rev()
            } else {
                format!("{} (+ {})", manifest::head_rev(), opts.head_args.join(" "))
            },
        );
        revisions = Some(r);
        revs.push(("base".into(), ctx.out.join("base"), bbin));
        revs.push(("head".into(), ctx.out.join("head"), head_bin.clone()));
    } else {
        revs.push(("head".into(), ctx.out.clone(), head_bin.clone()));
    }
    let bins: Vec<(String, &std::path::Path)> = revs
        .iter()
        .map(|(l, _, b)| (l.clone(), b.as_path()))
        .collect();
    let tools = manifest::tool_versions(&bins);
    let facts = manifest::SweepFacts {
        cmdline: &opts.command_line,
        started: &started,
        revisions: revisions.as_ref(),
        queue_before,
        tools: &tools,
        head_args: &opts.head_args,
    };
    let mut csvs = Vec::new();
    for (_, dir, _) in &revs {
        for sub in ["logs", "timeseries"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        // Timeseries and logs are written under ctx.out; for A/B they go to the revision dir.
        csvs.push(RunsCsv::open(dir, &exp.dims, opts.resume)?);
        write_manifest(dir, ctx, &facts, None)?;
    }
    let ab = opts.ab.is_some() || opts.base_recorder.is_some();
    let mut rng = rand::rngs::StdRng::seed_from_u64(exp.seed ^ 0xA5A5);
    let mut tally = resumed_tally(exp, &csvs, ab);
    let rp = |c: &Cell| exp.repeat_for(&c.id);
    let est_runs: u64 = exp
        .cells
        .iter()
        .map(|c| rp(c).min.saturating_sub(tally[&c.id].good) as u64)
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
    let own_counts: Vec<String> = exp
        .cells
        .iter()
        .filter_map(|c| {
            exp.cell_repeat.get(&c.id).map(|r| {
                format!(
                    "{} {}: {}..{} +{}",
                    c.id,
                    c.short_label(&exp.dims),
                    r.min,
                    r.max,
                    r.retries
                )
            })
        })
        .collect();
    eprintln!(
        "harness: sweep {}: {} cells ({} excluded), {}..{} repetitions (+{} for rejected ones){}, ~{:.0} s per run, seed {}{}, results in {}",
        exp.name,
        exp.cells.len(),
        exp.excluded,
        exp.repeat.min,
        exp.repeat.max,
        exp.repeat.retries,
        if own_counts.is_empty() {
            String::new()
        } else {
            format!(" (own counts: {})", own_counts.join("; "))
        },
        per_run_s,
        exp.seed,
        if exp.seed_fresh { " (fresh)" } else { "" },
        ctx.out.display()
    );
    let mut any_failed = false;
    let mut any_ok = false;
    loop {
        // Which cells run in this round: every cell short of its planned good repetitions
        // (rejected ones are replaced), or above its RSD target and under the cap.
        let mut todo: Vec<&Cell> = exp
            .cells
            .iter()
            .filter(|c| tally[&c.id].needs_more(rp(c)))
            .collect();
        if todo.is_empty() || stop.load(Relaxed) {
            break;
        }
        if exp.random_order {
            todo.shuffle(&mut rng);
        }
        let planned: u64 = exp
            .cells
            .iter()
            .map(|c| {
                let t = &tally[&c.id];
                t.attempts as u64 + u64::from(t.needs_more(rp(c)))
            })
            .sum::<u64>()
            * revs.len() as u64;
        if planned > pb.length().unwrap_or(0) + pb.position() {
            pb.set_length(planned);
        }
        for cell in todo {
            if stop.load(Relaxed) {
                break;
            }
            let rep = tally[&cell.id].attempts + 1;
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
                    extra_args: if label == "head" {
                        opts.head_args.clone()
                    } else {
                        Vec::new()
                    },
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
                match o.status.as_str() {
                    "failed" => any_failed = true,
                    "ok" => any_ok = true,
                    _ => {}
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
            let st: Vec<&str> = statuses.iter().map(String::as_str).collect();
            let t = tally.get_mut(&cell.id).expect("every cell");
            t.record(&st, v);
            if st.contains(&"rejected") && t.needs_more(rp(cell)) {
                let line = format!(
                    "{}-r{rep} rejected: re-run in a later round ({} of {} planned good repetitions so far)",
                    cell.id,
                    t.good,
                    rp(cell).min
                );
                if tty {
                    pb.println(line);
                } else {
                    eprintln!("harness: {line}");
                }
            }
        }
    }
    pb.finish_and_clear();
    let finished = rfc3339_now();
    for (_, dir, _) in &revs {
        write_manifest(dir, ctx, &facts, Some(&finished))?;
    }
    if stop.load(Relaxed) {
        eprintln!("harness: interrupted; the block layer is restored and runs.csv keeps every finished run (use --resume)");
    }
    eprintln!("harness: sweep done: results in {}", ctx.out.display());
    if any_failed {
        eprintln!("harness: some runs failed; their rows say why and their logs are kept");
    }
    for c in &exp.cells {
        if let Some(short) = tally[&c.id].short_of(rp(c)) {
            eprintln!(
                "harness: {} is {short} good repetition(s) short of the {} planned: {} rejected, no retries left (repeat.retries = {})",
                c.id,
                rp(c).min,
                tally[&c.id].rejected,
                rp(c).retries
            );
        }
    }
    if stop.load(Relaxed) {
        return Ok(0);
    }
    if !any_ok {
        let resumed_ok = csvs
            .iter()
            .any(|c| c.done.values().any(|(st, _)| st == "ok"));
        if !resumed_ok {
            eprintln!(
                "harness: no cell of the sweep could run (every run is unsupported, failed or rejected; see runs.csv)"
            );
            return Ok(EXIT_NOTHING_RAN);
        }
    }
    Ok(if any_failed && opts.fail_on_failed {
        EXIT_RUN_FAILED
    } else {
        0
    })
}

/// The tally of every cell from the rows already in runs.csv (`--resume`): a repetition
/// counts when every revision has its row.
fn resumed_tally(exp: &Experiment, csvs: &[RunsCsv], ab: bool) -> HashMap<String, Tally> {
    let mut out = HashMap::new();
    for c in &exp.cells {
        let mut t = Tally::default();
        let mut r = 1;
        while csvs
            .iter()
            .all(|csv| csv.done.contains_key(&(c.id.clone(), r)))
        {
            let rows: Vec<&(String, Option<f64>)> = csvs
                .iter()
                .map(|csv| &csv.done[&(c.id.clone(), r)])
                .collect();
            let st: Vec<&str> = rows.iter().map(|(s, _)| s.as_str()).collect();
            let ok = |i: usize| rows.get(i).filter(|(s, _)| s == "ok").and_then(|(_, v)| *v);
            let v = if ab {
                match (ok(0), ok(1)) {
                    (Some(b), Some(h)) if b > 0.0 => Some(h / b),
                    _ => None,
                }
            } else {
                ok(0)
            };
            t.record(&st, v);
            r += 1;
        }
        out.insert(c.id.clone(), t);
    }
    out
}

//! `harness power EXP --recorder BIN --trials N --inject NAME=ARGS ... --out DIR`: the
//! trials of a power study of the regression check. Trial t is one A/A sweep (`BIN` on
//! both sides) followed by one sweep per injection (`BIN` as base, `BIN ARGS` as head, e.g.
//! the TEST ONLY CPU burn), each a complete A/B sweep directory
//! `DIR/trials/TT-NAME/{base,head}` written as it runs. `analysis power DIR` turns them into
//! false-alarm and detection rates.
//!
//! With `--aa-trials` below `--trials`, only some rounds have an A/A sweep (spread over the
//! study, round 1 always among them), and the injected trials of the other rounds take their
//! margins from the nearest earlier A/A trial: a study whose bench time buys, say, 13 sweeps
//! spends 10 on the detection rate instead of splitting them 50/50.
//!
//! The study is long, so it runs in chunks: `--max-minutes M` stops before a trial that
//! would end past M minutes, and running the same command again continues where it
//! stopped (finished trials are kept; an interrupted one is resumed).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use crate::sweep::{self, SweepOpts};

pub struct PowerOpts {
    pub experiment: PathBuf,
    pub recorder: PathBuf,
    pub out: PathBuf,
    pub trials: u32,
    /// A/A trials. Above `trials`: the rounds beyond `trials` are A/A only, run between the
    /// full rounds, so that the false-alarm rate gets more trials than the detection rates
    /// without running every injection as often. Below `trials` (at least 1): only that
    /// many rounds, spread evenly and starting with round 1, have an A/A sweep.
    pub aa_trials: u32,
    /// (name, recorder arguments) of each injection.
    pub injections: Vec<(String, Vec<String>)>,
    pub max_minutes: Option<f64>,
    pub command_line: String,
}

/// Parses `NAME=ARGS` (ARGS split on white space).
pub fn parse_injection(s: &str) -> Result<(String, Vec<String>), String> {
    let (name, args) = s.split_once('=').ok_or_else(|| {
        format!("--inject {s:?}: use NAME=ARGS, e.g. kib5=\"--test-burn-rounds-per-kib 20\"")
    })?;
    let name = name.trim();
    if name.is_empty()
        || name == "aa"
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "--inject {s:?}: the name must be letters, digits, - or _ (and not \"aa\")"
        ));
    }
    let args: Vec<String> = args.split_whitespace().map(String::from).collect();
    if args.is_empty() {
        return Err(format!("--inject {s:?}: no recorder arguments after ="));
    }
    Ok((name.to_string(), args))
}

/// Whether round `t` (1..=trials) has an A/A sweep: every round when `aa_trials >= trials`,
/// else `aa_trials` rounds spread evenly, round 1 first (round t has one when
/// ceil(t * aa / trials) > ceil((t - 1) * aa / trials)).
pub fn round_has_aa(t: u32, trials: u32, aa_trials: u32) -> bool {
    if aa_trials >= trials {
        return true;
    }
    let c = |x: u32| (x * aa_trials).div_ceil(trials);
    c(t) > c(t - 1)
}

/// The trial directories in the order they run: round `t` (1..=trials) is an A/A sweep
/// (see [`round_has_aa`]) followed by one sweep per injection; the A/A-only rounds
/// trials+1..=aa_trials come between them, spread evenly (A/A-only round trials+j after
/// full round ceil(j * trials / extra)), so that every part of the study sees the same
/// machine.
pub fn plan(opts: &PowerOpts) -> Vec<(String, Vec<String>, PathBuf)> {
    let dir = |t: u32, name: &str| opts.out.join("trials").join(format!("{t:02}-{name}"));
    let extra = opts.aa_trials.saturating_sub(opts.trials);
    let mut out = Vec::new();
    let mut j = 1;
    for t in 1..=opts.trials.max(1) {
        if t <= opts.trials {
            if round_has_aa(t, opts.trials, opts.aa_trials) {
                out.push(("aa".to_string(), Vec::new(), dir(t, "aa")));
            }
            for (name, args) in &opts.injections {
                out.push((name.clone(), args.clone(), dir(t, name)));
            }
        }
        // A/A-only rounds due after round t (all of them when there are no full rounds).
        while j <= extra && (opts.trials == 0 || j * opts.trials <= t * extra) {
            out.push(("aa".to_string(), Vec::new(), dir(opts.trials + j, "aa")));
            j += 1;
        }
    }
    out
}

fn write_study(opts: &PowerOpts) -> Result<(), String> {
    std::fs::create_dir_all(opts.out.join("trials"))
        .map_err(|e| format!("{}: {e}", opts.out.display()))?;
    let path = opts.out.join("power.json");
    let study = serde_json::json!({
        "experiment_file": opts.experiment.display().to_string(),
        "experiment": std::fs::read_to_string(&opts.experiment).unwrap_or_default(),
        "recorder": opts.recorder.display().to_string(),
        "trials": opts.trials,
        "aa_trials": opts.aa_trials,
        "injections": opts.injections.iter().map(|(n, a)| serde_json::json!({"name": n, "args": a})).collect::<Vec<_>>(),
        "command_line": opts.command_line,
    });
    if let Ok(old) = std::fs::read_to_string(&path) {
        let old: serde_json::Value = serde_json::from_str(&old)
            .map_err(|e| format!("{}: not valid JSON: {e}", path.display()))?;
        for k in ["experiment", "injections"] {
            if old[k] != study[k] {
                return Err(format!(
                    "{} holds a study with other {k}; continue it with the same arguments or choose another --out",
                    path.display()
                ));
            }
        }
        // A study written before --aa-trials existed planned as many A/A trials as rounds.
        let old_aa = old["aa_trials"]
            .as_u64()
            .or(old["trials"].as_u64())
            .unwrap_or(0);
        if old["trials"].as_u64().unwrap_or(0) > opts.trials as u64
            || old_aa > opts.aa_trials as u64
        {
            return Ok(()); // asking for fewer trials than planned: keep the plan
        }
    }
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&study).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("{}: {e}", path.display()))
}

/// Runs the trials still missing. Returns the exit code (0: all done or stopped at the
/// time budget with the rest left for the next call; 130 interrupted).
pub fn run(opts: &PowerOpts, stop: Arc<AtomicBool>) -> Result<i32, String> {
    if !opts.recorder.exists() {
        return Err(format!(
            "--recorder {}: no such file",
            opts.recorder.display()
        ));
    }
    if opts.aa_trials == 0 && opts.trials > 0 && !opts.injections.is_empty() {
        return Err(
            "--aa-trials 0: the injected trials take their margins from an A/A trial of the study; use at least 1"
                .into(),
        );
    }
    write_study(opts)?;
    let trials = plan(opts);
    let todo: Vec<_> = trials
        .iter()
        .filter(|(_, _, d)| !results_schema::manifest::ab_finished(d))
        .collect();
    eprintln!(
        "harness power: {} of {} trial sweeps done, {} to go{}",
        trials.len() - todo.len(),
        trials.len(),
        todo.len(),
        opts.max_minutes
            .map(|m| format!(" (this call stops before a sweep that would end after {m} min)"))
            .unwrap_or_default()
    );
    let t0 = Instant::now();
    let mut longest = 0.0f64;
    for (i, (name, args, dir)) in todo.iter().enumerate() {
        if stop.load(Relaxed) {
            return Ok(130);
        }
        let elapsed = t0.elapsed().as_secs_f64();
        if let Some(m) = opts.max_minutes {
            if i > 0 && elapsed + longest > m * 60.0 {
                eprintln!(
                    "harness power: stopping at the time budget ({:.1} of {m} min used, a sweep takes ~{:.1} min); {} trial sweeps left: run the same command again to continue",
                    elapsed / 60.0,
                    longest / 60.0,
                    todo.len() - i
                );
                return Ok(0);
            }
        }
        eprintln!("harness power: trial {} ({name})", dir.display());
        let s0 = Instant::now();
        let code = sweep::sweep(
            SweepOpts {
                experiment: opts.experiment.clone(),
                out: Some(dir.clone()),
                resume: dir.join("head").join("runs.csv").exists(),
                recorder: Some(opts.recorder.clone()),
                ab: None,
                base_recorder: Some(opts.recorder.clone()),
                command_line: format!("{} (trial {})", opts.command_line, dir.display()),
                fail_on_failed: false,
                head_args: args.clone(),
            },
            stop.clone(),
        )?;
        longest = longest.max(s0.elapsed().as_secs_f64());
        if code == 130 || stop.load(Relaxed) {
            return Ok(130);
        }
        if code != 0 {
            eprintln!(
                "harness power: trial {} ended with exit code {code}",
                dir.display()
            );
        }
    }
    eprintln!(
        "harness power: every trial is done; `analysis power {}` gives the rates",
        opts.out.display()
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injections_are_named_and_trials_alternate() {
        let (n, a) = parse_injection("kib5=--test-burn-rounds-per-kib 20").unwrap();
        assert_eq!((n.as_str(), a.len()), ("kib5", 2));
        assert!(parse_injection("aa=--x 1").is_err());
        assert!(parse_injection("x y=--x 1").is_err());
        assert!(parse_injection("nothing").is_err());
        assert!(parse_injection("k=").is_err());
        let o = PowerOpts {
            experiment: "e.toml".into(),
            recorder: "r".into(),
            out: "/tmp/p".into(),
            trials: 2,
            aa_trials: 2,
            injections: vec![("k5".into(), vec!["--a".into()]), ("k10".into(), vec![])],
            max_minutes: None,
            command_line: String::new(),
        };
        let names: Vec<String> = plan(&o)
            .iter()
            .map(|(_, _, d)| d.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["01-aa", "01-k5", "01-k10", "02-aa", "02-k5", "02-k10"]
        );
    }

    #[test]
    fn a_a_only_rounds_are_spread_between_the_full_rounds() {
        let names = |trials, aa_trials| -> Vec<String> {
            let o = PowerOpts {
                experiment: "e.toml".into(),
                recorder: "r".into(),
                out: "/tmp/p".into(),
                trials,
                aa_trials,
                injections: vec![("k5".into(), vec!["--a".into()])],
                max_minutes: None,
                command_line: String::new(),
            };
            plan(&o)
                .iter()
                .map(|(_, _, d)| d.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            names(2, 4),
            ["01-aa", "01-k5", "03-aa", "02-aa", "02-k5", "04-aa"]
        );
        assert_eq!(
            names(4, 6),
            [
                "01-aa", "01-k5", "02-aa", "02-k5", "05-aa", "03-aa", "03-k5", "04-aa", "04-k5",
                "06-aa"
            ]
        );
        assert_eq!(names(0, 2), ["01-aa", "02-aa"]);
        // Fewer A/A rounds than full rounds: spread, round 1 first.
        assert_eq!(
            names(4, 2),
            ["01-aa", "01-k5", "02-k5", "03-aa", "03-k5", "04-k5"]
        );
        let n = names(10, 3);
        let aa: Vec<&String> = n.iter().filter(|x| x.ends_with("-aa")).collect();
        assert_eq!(aa, ["01-aa", "04-aa", "07-aa"]);
        assert_eq!(n.iter().filter(|x| x.ends_with("-k5")).count(), 10);
        // Every round's A/A exactly once.
        let mut n = names(10, 20);
        assert_eq!(n.iter().filter(|x| x.ends_with("-aa")).count(), 20);
        n.sort();
        n.dedup();
        assert_eq!(n.len(), 30);
    }
}

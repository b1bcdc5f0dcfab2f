//! `analysis`: reports, regression verdicts and the winning configuration from sweep
//! result directories (docs/results.md, docs/analysis.md).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use analysis::{best, compare, fixture, report};

#[derive(Parser)]
#[command(
    name = "analysis",
    version = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("GIT_REVISION"), ")"),
    about = "Reports, regression verdicts and the best configuration from uring-lab sweeps"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes DIR/report/{report.md,report.html} and every chart as PNG and SVG.
    Report {
        /// Sweep directory (holds manifest.json and runs.csv).
        dir: PathBuf,
        /// Run whose time series is drawn (default: the median run of the best configuration).
        #[arg(long, value_name = "RUN_ID")]
        run: Option<String>,
        /// Output directory (default DIR/report).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also group each workload's configurations by this dimension or engine option in
        /// effect (`opt.net.send`, `ring.sqpoll`; repeatable or comma-separated).
        #[arg(long, value_name = "NAME", value_delimiter = ',')]
        by: Vec<String>,
    },
    /// Paired comparison of two sweeps of the same experiment; exit code 1 only on a gated REGRESSION.
    Compare {
        base_dir: PathBuf,
        head_dir: PathBuf,
        /// Metrics: auto (per cell: closed loop throughput and cpu; open loop cpu, p50, p90,
        /// p99 and the acked throughput), or throughput, p50, p90, p99, cpu, any runs.csv
        /// metric column; repeat or comma-separate (with auto, the others are added).
        #[arg(long, value_delimiter = ',', default_values_t = vec!["auto".to_string()])]
        metric: Vec<String>,
        /// A same-build (A/A) sweep of the same experiment from the same job: each cell's
        /// margin from its A/A pairs.
        #[arg(long, value_name = "AA_DIR")]
        aa: Option<PathBuf>,
        /// Compare sweeps that are not the same experiment (cells of one id that differ are
        /// still never paired).
        #[arg(long)]
        allow_different_experiments: bool,
        /// Print the comparison as JSON (stdout) instead of the table.
        #[arg(long)]
        json: bool,
        /// Where to write compare.md (charts go next to it); default HEAD_DIR/compare/compare.md.
        #[arg(long)]
        out: Option<PathBuf>,
        /// A second round of pairs (BASE2_DIR HEAD2_DIR): exit code 1 only for a REGRESSION
        /// found in both rounds (same cell and metric). Its compare.md goes to HEAD2_DIR/compare/.
        #[arg(long, num_args = 2, value_names = ["BASE2_DIR", "HEAD2_DIR"])]
        confirm: Option<Vec<PathBuf>>,
    },
    /// False-alarm and detection rates of the regression check from `harness power` trials.
    Power {
        /// Study directory of `harness power` (power.json, trials/).
        dir: PathBuf,
        /// Print JSON (stdout) instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// The best supported configuration, written as a recorder config file (TOML).
    Best {
        dir: PathBuf,
        /// throughput (highest MB/s), p99 (lowest ack p99) or efficiency (lowest CPU s/GiB).
        #[arg(long, default_value = "throughput")]
        metric: String,
        /// Recorder workload to choose for (default: the one with the most runs).
        #[arg(long)]
        workload: Option<String>,
        /// Knob defaults: docs/options.md (from `recorder options --markdown`); found automatically when omitted.
        #[arg(long)]
        defaults: Option<PathBuf>,
        /// Output file (default DIR/best-METRIC.toml).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Writes a synthetic sweep directory (for tests, benchmarks and trying reports).
    GenFixture {
        dir: PathBuf,
        #[arg(long, default_value_t = 864)]
        runs: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// `revision` column (head, base).
        #[arg(long, default_value = "head")]
        revision: String,
        /// Fraction of throughput lost by every recorder run (0.15 = 15% slower).
        #[arg(long, default_value_t = 0.0)]
        slowdown: f64,
        /// Run-to-run noise: sd of ln(throughput).
        #[arg(long, default_value_t = 0.02)]
        noise: f64,
        /// Repetitions per cell (cells = runs / reps, at most the full product).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Samples per time series (0: none).
        #[arg(long, default_value_t = 20)]
        samples: usize,
        /// Noise shared with fixtures given the same value (an interleaved A/B sweep).
        #[arg(long)]
        shared_noise_seed: Option<u64>,
    },
    /// Times `report` on a synthetic sweep of N runs with time series (default 100,000).
    BenchScale {
        #[arg(long, default_value_t = 100_000)]
        runs: usize,
        /// Where to put the synthetic sweep (default: a directory under /tmp, removed afterwards).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, default_value_t = 20)]
        samples: usize,
    },
}

/// A closed stdout (`analysis ... | head`) ends the program quietly with status 0 instead of
/// `println!`'s panic; the same rule as engine::cli::exit_quietly_on_closed_stdout
/// (analysis never links the engine).
fn exit_quietly_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let p = info.payload();
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info)
    }));
}

fn main() -> ExitCode {
    exit_quietly_on_closed_stdout();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("analysis: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                eprintln!("  caused by: {s}");
                src = s.source();
            }
            ExitCode::from(2)
        }
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn emit(s: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(s.as_bytes()).and_then(|_| o.flush());
}

fn run(cli: Cli) -> analysis::Result<ExitCode> {
    match cli.cmd {
        Cmd::Report { dir, run, out, by } => {
            let r = report::report(&dir, &report::ReportOptions { run, out, by })?;
            emit(&format!("{}\n{}\n", r.markdown.display(), r.html.display()));
            eprintln!(
                "analysis: {} runs, {} time series, {} charts in {:.2} s",
                r.timings.runs,
                r.timings.series_files,
                r.charts.len(),
                r.timings.total_s
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Compare {
            base_dir,
            head_dir,
            metric,
            aa,
            allow_different_experiments,
            json,
            out,
            confirm,
        } => {
            let opts = compare::CompareOptions {
                metrics: metric,
                out,
                aa,
                allow_different: allow_different_experiments,
            };
            let c = compare::compare(&base_dir, &head_dir, &opts)?;
            eprintln!("analysis: wrote {}", c.markdown.display());
            let second = match confirm {
                Some(round2) => {
                    let o2 = compare::CompareOptions {
                        out: None,
                        ..opts.clone()
                    };
                    let c2 = compare::compare(&round2[0], &round2[1], &o2)?;
                    eprintln!("analysis: wrote {}", c2.markdown.display());
                    Some(c2)
                }
                None => None,
            };
            let failed = match &second {
                Some(c2) => !compare::confirmed_regressions(&c, c2).is_empty(),
                None => c.any_regression(),
            };
            if json {
                let mut v = c.to_json();
                if let Some(c2) = &second {
                    v["second_round"] = c2.to_json();
                    v["confirmed_regressions"] =
                        serde_json::json!(compare::confirmed_regressions(&c, c2));
                }
                v["exit_code"] = serde_json::json!(u8::from(failed));
                emit(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&v).unwrap_or_default()
                ));
            } else {
                emit(&c.summary_text());
                if let Some(c2) = &second {
                    emit(&format!("\nsecond round:\n{}", c2.summary_text()));
                    let confirmed = compare::confirmed_regressions(&c, c2);
                    emit(&format!(
                        "\n{} REGRESSION verdict(s) confirmed by the second round{}\n",
                        confirmed.len(),
                        if confirmed.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", confirmed.join("; "))
                        }
                    ));
                }
            }
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Power { dir, json } => {
            let p = analysis::power::power(&dir)?;
            if json {
                emit(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&p.to_json()).unwrap_or_default()
                ));
            } else {
                emit(&p.summary_text());
            }
            eprintln!("analysis: wrote {}", p.markdown.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Best {
            dir,
            metric,
            workload,
            defaults,
            out,
        } => {
            let b = best::best(&dir, &metric, workload.as_deref(), defaults.as_deref())?;
            let path = out.unwrap_or_else(|| dir.join(format!("best-{}.toml", b.metric_name)));
            std::fs::write(&path, &b.toml).map_err(|e| analysis::Error::io(&path, "write", e))?;
            emit(&b.toml);
            eprintln!(
                "analysis: wrote {} (run it with `recorder serve --config {}`)",
                path.display(),
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::GenFixture {
            dir,
            runs,
            seed,
            revision,
            slowdown,
            noise,
            reps,
            samples,
            shared_noise_seed,
        } => {
            let spec = fixture::FixtureSpec {
                runs,
                seed,
                revision,
                slowdown,
                noise,
                reps,
                samples,
                anchors: true,
                shared_noise_seed,
            };
            let info = fixture::generate(&dir, &spec)?;
            eprintln!(
                "analysis: {} runs in {} cells written to {}",
                info.runs,
                info.cells,
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::BenchScale { runs, dir, samples } => {
            analysis::bench::bench_scale(runs, dir, samples)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

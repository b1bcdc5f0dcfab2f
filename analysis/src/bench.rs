//! `analysis bench-scale`: times `report` on a large synthetic sweep, against an anchor
//! measured in the same run (reading every input file's bytes without parsing).

use std::path::PathBuf;
use std::time::Instant;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::fixture::{generate, FixtureSpec};
use crate::report::{report, ReportOptions};

pub fn bench_scale(runs: usize, dir: Option<PathBuf>, samples: usize) -> Result<()> {
    let (dir, remove) = match dir {
        Some(d) => (d, false),
        None => (
            std::env::temp_dir().join(format!("analysis-bench-{}", std::process::id())),
            true,
        ),
    };
    let t = Instant::now();
    let info = generate(
        &dir,
        &FixtureSpec {
            runs,
            samples,
            seed: 7,
            ..FixtureSpec::default()
        },
    )?;
    let gen_s = t.elapsed().as_secs_f64();

    // Anchor: read the bytes of runs.csv and every time series, no parsing.
    let t = Instant::now();
    let ts_dir = dir.join("timeseries");
    let entries: Vec<PathBuf> = std::fs::read_dir(&ts_dir)
        .map_err(|e| Error::io(&ts_dir, "list", e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    let bytes: u64 = entries
        .par_iter()
        .map(|p| std::fs::read(p).map(|b| b.len() as u64).unwrap_or(0))
        .sum::<u64>()
        + std::fs::read(dir.join("runs.csv"))
            .map(|b| b.len() as u64)
            .unwrap_or(0);
    let read_s = t.elapsed().as_secs_f64();

    let r = report(&dir, &ReportOptions::default())?;
    let tm = &r.timings;
    println!(
        "bench-scale: {} runs ({} cells), {} time series files, {:.1} MB of input",
        info.runs,
        info.cells,
        entries.len(),
        bytes as f64 / 1e6
    );
    println!("  generate fixture       {gen_s:8.2} s");
    println!("  anchor: read all bytes {read_s:8.2} s (no parsing)");
    println!(
        "  report total           {:8.2} s  = {:.1}x the anchor",
        tm.total_s,
        tm.total_s / read_s.max(1e-9)
    );
    println!("    load runs.csv        {:8.2} s", tm.load_s);
    println!("    aggregate            {:8.2} s", tm.aggregate_s);
    println!(
        "    time series          {:8.2} s ({} files)",
        tm.series_s, tm.series_files
    );
    println!(
        "    charts + documents   {:8.2} s ({} charts)",
        tm.charts_s,
        r.charts.len()
    );
    println!("  threads: {}", rayon::current_num_threads());
    if remove {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

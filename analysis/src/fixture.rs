//! Synthetic sweep directories in the format of docs/results.md, for tests, benchmarks
//! and for developing reports before real sweeps exist. The performance model is
//! explicit (see [`DIMS`]) so tests know which configuration must win.

use std::io::Write;
use std::path::Path;

use rayon::prelude::*;

use crate::data::METRICS;
use crate::error::{Error, Result};
use crate::stats::SplitMix64;

/// Dimensions of the synthetic sweep: name, values, throughput factor of each value.
/// Names and values follow docs/options.md where the knob exists (`server.backend` is the
/// dimension docs/results.md names for the blocking baseline).
/// The first value of each dimension is its default. Every supported uring cell is a valid
/// recorder configuration (`recorder serve --config` accepts what `best` writes from it).
pub const DIMS: &[(&str, &[&str], &[f64])] = &[
    ("ring.sqpoll", &["false", "true"], &[1.0, 1.30]),
    ("ring.iopoll", &["false", "true"], &[1.0, 1.0]),
    ("ring.coop-taskrun", &["false", "true"], &[1.0, 1.0]),
    ("file.write-op", &["write", "writev"], &[1.0, 1.12]),
    ("file.direct", &["off", "required"], &[1.0, 1.10]),
    (
        "block.scheduler",
        &["mq-deadline", "none", "bfq"],
        &[1.0, 1.08, 0.85],
    ),
    ("server.backend", &["uring", "blocking"], &[1.0, 0.55]),
];

/// Reason written for cells with `ring.iopoll=true`.
pub const IOPOLL_REASON: &str = "IORING_SETUP_IOPOLL: EOPNOTSUPP on vda (no poll queues)";

#[derive(Clone, Debug)]
pub struct FixtureSpec {
    /// Total rows of runs.csv (recorder runs; anchors come on top).
    pub runs: usize,
    pub seed: u64,
    /// `revision` column value.
    pub revision: String,
    /// Throughput lost by every recorder run (0.15 = 15% slower), latency grows alike.
    pub slowdown: f64,
    /// Log-normal run-to-run noise (sd of ln throughput).
    pub noise: f64,
    /// Repetitions per cell when `runs` is small (cells = runs / reps, at most all cells).
    pub reps: usize,
    /// Samples in each run's measured window (0 = no time series).
    pub samples: usize,
    /// Add fio / iperf3 / nginx anchor rows.
    pub anchors: bool,
    /// Seed of the run-to-run noise that is shared between fixtures with the same value
    /// (models a drift of the machine both builds see in an interleaved A/B sweep).
    pub shared_noise_seed: Option<u64>,
}

impl Default for FixtureSpec {
    fn default() -> Self {
        FixtureSpec {
            runs: 864,
            seed: 1,
            revision: "head".into(),
            slowdown: 0.0,
            noise: 0.02,
            reps: 3,
            samples: 20,
            anchors: true,
            shared_noise_seed: None,
        }
    }
}

/// What was generated.
#[derive(Clone, Debug)]
pub struct FixtureInfo {
    pub cells: usize,
    pub runs: usize,
    /// Dimension values of the best supported cell of the model (ties: fewer non-default values).
    pub best: Vec<(String, String)>,
}

/// Number of cells of the full product.
pub fn total_cells() -> usize {
    DIMS.iter().map(|d| d.1.len()).product()
}

/// Value index of each dimension for cell `c` (last dimension varies fastest).
pub fn cell_values(mut c: usize) -> Vec<usize> {
    let mut out = vec![0; DIMS.len()];
    for k in (0..DIMS.len()).rev() {
        let n = DIMS[k].1.len();
        out[k] = c % n;
        c /= n;
    }
    out
}

fn factor(v: &[usize]) -> f64 {
    let blocking = DIMS[6].1[v[6]] == "blocking";
    let mut f = 1.0;
    for (k, &i) in v.iter().enumerate() {
        if blocking && DIMS[k].0.starts_with("ring.") {
            continue;
        }
        f *= DIMS[k].2[i];
    }
    f
}

fn unsupported(v: &[usize]) -> bool {
    DIMS[1].1[v[1]] == "true"
}

fn n_cells(spec: &FixtureSpec) -> usize {
    total_cells()
        .min(spec.runs.div_ceil(spec.reps.max(1)))
        .max(1)
}

struct Row {
    fields: Vec<String>,
    series: Option<String>,
    run_id: String,
}

fn fmt(x: f64) -> String {
    format!("{x:.3}")
}

/// Writes DIR/manifest.json, DIR/runs.csv, DIR/timeseries/*.csv and DIR/logs/*.log.
pub fn generate(dir: &Path, spec: &FixtureSpec) -> Result<FixtureInfo> {
    std::fs::create_dir_all(dir.join("timeseries")).map_err(|e| Error::io(dir, "create", e))?;
    std::fs::create_dir_all(dir.join("logs")).map_err(|e| Error::io(dir, "create", e))?;
    let cells = n_cells(spec);
    let dim_names: Vec<&str> = DIMS.iter().map(|d| d.0).collect();
    let manifest = serde_json::json!({
        "schema": results_schema::SCHEMA_VERSION,
        "fixture": true,
        "git_rev": format!("fixture-{}-{}", spec.revision, spec.seed),
        "command_line": format!("analysis gen-fixture {} --runs {} --seed {}", dir.display(), spec.runs, spec.seed),
        "started_at": "2026-11-25T12:00:00Z",
        "finished_at": "2026-11-25T13:00:00Z",
        "kernel": "6.18.0-fixture",
        "cpu_model": "Synthetic CPU @ 2.0GHz (fixture)",
        "cores": 2,
        "mem_total_kb": 24_000_000u64,
        "hwloc_topology": "Machine (24GB) + Package + 2 x (Core + PU)",
        "target": {
            "kind": "loop", "path": "/tmp/fixture", "device": "loop0", "model": "virtio (fixture)",
            "fs": "ext4", "mount_options": "rw,relatime",
            "queue": { "scheduler": "[mq-deadline] none", "nomerges": "0", "read_ahead_kb": "128", "max_sectors_kb": "1280" }
        },
        "experiment_file": "experiments/fixture.toml",
        "experiment": "# synthetic sweep generated by analysis gen-fixture\n",
        "dimensions": dim_names,
    });
    let mpath = dir.join("manifest.json");
    std::fs::write(
        &mpath,
        serde_json::to_string_pretty(&manifest).unwrap_or_default(),
    )
    .map_err(|e| Error::io(&mpath, "write", e))?;

    let mut rows: Vec<Row> = (0..spec.runs)
        .into_par_iter()
        .map(|i| recorder_row(spec, cells, i))
        .collect();
    if spec.anchors {
        let reps = spec.reps.clamp(1, 5);
        for (ai, (kind, workload, mbps)) in [
            ("fio", "disk-write", 900.0),
            ("iperf3", "net", 4000.0),
            ("nginx", "serve", 1500.0),
        ]
        .iter()
        .enumerate()
        {
            for rep in 1..=reps {
                rows.push(anchor_row(spec, ai, kind, workload, *mbps, rep));
            }
        }
    }

    let mut header: Vec<String> = [
        "run_id",
        "cell_id",
        "rep",
        "pair",
        "revision",
        "kind",
        "workload",
        "status",
        "reason",
        "started_at",
        "duration_s",
        "dims",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    header.extend(dim_names.iter().map(|d| format!("dim.{d}")));
    header.push("requested_flags".into());
    header.push("effective_flags".into());
    header.extend(METRICS.iter().map(|s| s.to_string()));
    header.push("errors".into());
    header.push("log".into());
    let rpath = dir.join("runs.csv");
    let f = std::fs::File::create(&rpath).map_err(|e| Error::io(&rpath, "create", e))?;
    let mut w = csv::Writer::from_writer(std::io::BufWriter::new(f));
    let werr = |e: csv::Error| Error::io(&rpath, "write", std::io::Error::other(e));
    w.write_record(&header).map_err(werr)?;
    for r in &rows {
        w.write_record(&r.fields).map_err(werr)?;
    }
    w.flush().map_err(|e| Error::io(&rpath, "write", e))?;
    rows.par_iter().try_for_each(|r| -> Result<()> {
        if let Some(s) = &r.series {
            let p = dir.join("timeseries").join(format!("{}.csv", r.run_id));
            std::fs::write(&p, s).map_err(|e| Error::io(&p, "write", e))?;
        }
        Ok(())
    })?;
    let lp = dir.join("logs").join("README");
    let mut lf = std::fs::File::create(&lp).map_err(|e| Error::io(&lp, "create", e))?;
    let _ = writeln!(lf, "synthetic fixture: no recorder logs");

    // The model's best supported cell among the generated ones.
    let mut best: Option<(f64, usize, usize)> = None;
    for c in 0..cells {
        let v = cell_values(c);
        if unsupported(&v) {
            continue;
        }
        let f = factor(&v);
        let nondefault = v.iter().filter(|&&i| i != 0).count();
        let better = match best {
            None => true,
            Some((bf, bn, _)) => {
                f > bf * 1.0001 || ((f - bf).abs() <= bf * 1e-4 && nondefault < bn)
            }
        };
        if better {
            best = Some((f, nondefault, c));
        }
    }
    let best = best
        .map(|(_, _, c)| {
            cell_values(c)
                .iter()
                .enumerate()
                .map(|(k, &i)| (DIMS[k].0.to_string(), DIMS[k].1[i].to_string()))
                .collect()
        })
        .unwrap_or_default();
    Ok(FixtureInfo {
        cells,
        runs: rows.len(),
        best,
    })
}

fn recorder_row(spec: &FixtureSpec, cells: usize, i: usize) -> Row {
    let cell = i % cells;
    let rep = i / cells + 1;
    let v = cell_values(cell);
    let mut rng = SplitMix64::new(
        spec.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
    );
    let mut shared = spec
        .shared_noise_seed
        .map(|s| SplitMix64::new(s ^ (i as u64).wrapping_mul(0xA24B_AED4_963E_E407)));
    let run_id = format!("c{cell:04}-r{rep}");
    let cell_id = format!("c{cell:04}");
    let dims: Vec<String> = v
        .iter()
        .enumerate()
        .map(|(k, &x)| DIMS[k].1[x].to_string())
        .collect();
    let dims_label = DIMS
        .iter()
        .zip(&dims)
        .map(|(d, val)| format!("{}={val}", d.0))
        .collect::<Vec<_>>()
        .join(";");
    let blocking = dims[6] == "blocking";
    let mut flags = Vec::new();
    if !blocking {
        if dims[0] == "true" {
            flags.push("IORING_SETUP_SQPOLL");
        }
        if dims[1] == "true" {
            flags.push("IORING_SETUP_IOPOLL");
        }
        if dims[2] == "true" {
            flags.push("IORING_SETUP_COOP_TASKRUN");
        }
    }
    let requested = flags.join("|");
    let started = 1_764_072_000.0 + i as f64 * 12.0;
    let duration = spec.samples.max(1) as f64 * 0.25;
    let (status, reason) = if unsupported(&v) && !blocking {
        ("unsupported", IOPOLL_REASON.to_string())
    } else if cell == 5 % cells && rep == 2 {
        (
            "failed",
            format!("recorder exited with signal 11 (see logs/{run_id}.log)"),
        )
    } else if i % 97 == 13 {
        ("rejected", "steal 12.4% over the 5% limit".to_string())
    } else {
        ("ok", String::new())
    };
    let mut fields = vec![
        run_id.clone(),
        cell_id,
        rep.to_string(),
        rep.to_string(),
        spec.revision.clone(),
        "recorder".into(),
        "bulk-ingest".into(),
        status.into(),
        reason,
        fmt(started),
        fmt(duration),
        dims_label,
    ];
    fields.extend(dims.iter().cloned());
    fields.push(requested.clone());
    fields.push(if status == "unsupported" {
        String::new()
    } else {
        requested
    });
    if status != "ok" {
        fields.extend(std::iter::repeat_n(String::new(), METRICS.len() + 1));
        fields.push(format!("logs/{run_id}.log"));
        return Row {
            fields,
            series: None,
            run_id,
        };
    }
    let z = match shared.as_mut() {
        Some(s) => 0.7 * s.normal() + 0.3 * rng.normal(),
        None => rng.normal(),
    };
    let f = factor(&v) * (1.0 - spec.slowdown);
    let tp = 400.0 * f * (spec.noise * z).exp();
    let lat = 800.0 / f * (spec.noise * 2.0 * rng.normal()).exp();
    let sqpoll = !blocking && dims[0] == "true";
    let cpu = 2.0 / f.sqrt() * if sqpoll { 1.4 } else { 1.0 } * (0.03 * rng.normal()).exp();
    let ios = if blocking {
        1.0
    } else if sqpoll {
        8.0
    } else {
        4.0
    } * (0.02 * rng.normal()).exp();
    let dev = tp * 1.02;
    let buffered = dims[4] == "off";
    let metrics = [
        tp,
        tp * 1e6 / 1200.0,
        lat,
        lat * 4.0,
        lat * 10.0,
        lat * 25.0,
        f64::NAN,
        f64::NAN,
        cpu,
        ios,
        60_000.0 + 2000.0 * rng.unit(),
        30.0 + 20.0 * rng.unit(),
        dev,
        dev * 1e6 / 131072.0,
        if buffered { 12.0 } else { 0.5 },
        2.0 / f,
        8.0 * f,
        60.0 + 35.0 * rng.unit(),
        20_000.0 + 5000.0 * rng.unit(),
        2.0 * rng.unit(),
        if buffered { 400_000.0 } else { 2_000.0 },
        if buffered { 90_000.0 } else { 500.0 },
    ];
    // Metrics after the first 22 (ack p90, sent, late frames, recorder CPU) are not
    // modelled: empty.
    fields.extend(
        metrics
            .iter()
            .chain(std::iter::repeat(&f64::NAN))
            .take(METRICS.len())
            .map(|x| if x.is_nan() { String::new() } else { fmt(*x) }),
    );
    fields.push("0".into());
    fields.push(format!("logs/{run_id}.log"));
    let series = (spec.samples > 0).then(|| {
        let mut s = results_schema::series::COLUMNS[..13].join(",");
        s.push('\n');
        let stall_at = spec.samples * 3 / 5;
        for k in 0..(spec.samples + 4) {
            let t = (k as f64 - 4.0) * 0.25;
            let ramp = if t < 0.0 { 0.5 + 0.1 * k as f64 } else { 1.0 };
            let stall = buffered && k >= 4 && k - 4 == stall_at;
            let x = tp * ramp * (0.05 * rng.normal()).exp() * if stall { 0.2 } else { 1.0 };
            let dirty = if buffered { 300_000.0 + 100_000.0 * rng.unit() } else { 1_500.0 + 500.0 * rng.unit() };
            let wb = if stall { 90_000.0 } else if buffered { 20_000.0 * rng.unit() } else { 300.0 * rng.unit() };
            let user = 15.0 + 5.0 * rng.unit();
            let sys = 30.0 + 10.0 * rng.unit();
            s.push_str(&format!(
                "{t:.2},{x:.2},{:.2},{:.1},{:.1},{dirty:.0},{wb:.0},{user:.1},{sys:.1},{:.1},{:.2},{:.1},{:.1}\n",
                x * 1.02,
                x * 1.02e6 / 131072.0,
                (60.0 + 35.0 * rng.unit()).min(100.0),
                if stall { 40.0 } else { 3.0 * rng.unit() },
                2.0 * rng.unit(),
                if sqpoll { 140.0 } else { 70.0 } + 10.0 * rng.unit(),
                35.0 + 10.0 * rng.unit()
            ));
        }
        s
    });
    Row {
        fields,
        series,
        run_id,
    }
}

fn anchor_row(
    spec: &FixtureSpec,
    ai: usize,
    kind: &str,
    workload: &str,
    mbps: f64,
    rep: usize,
) -> Row {
    let mut rng = SplitMix64::new(spec.seed ^ 0xA5A5_0000 ^ ((ai * 16 + rep) as u64));
    let run_id = format!("a-{kind}-r{rep}");
    let tp = mbps * (spec.noise * rng.normal()).exp();
    let mut fields = vec![
        run_id.clone(),
        format!("anchor-{kind}"),
        rep.to_string(),
        rep.to_string(),
        spec.revision.clone(),
        kind.into(),
        workload.into(),
        "ok".into(),
        String::new(),
        fmt(1_764_000_000.0 + rep as f64 * 12.0),
        "5.000".into(),
        String::new(),
    ];
    fields.extend(DIMS.iter().map(|_| String::new()));
    fields.push(String::new());
    fields.push(String::new());
    let mut metrics = vec![String::new(); METRICS.len()];
    metrics[0] = fmt(tp);
    metrics[8] = fmt(1.0 * (0.03 * rng.normal()).exp());
    fields.extend(metrics);
    fields.push("0".into());
    fields.push(String::new());
    Row {
        fields,
        series: None,
        run_id,
    }
}

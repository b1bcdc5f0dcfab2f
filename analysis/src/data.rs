//! Reading a sweep directory (docs/results.md): `manifest.json`, `runs.csv` and
//! `timeseries/<run_id>.csv`. Parsing of rows and of time-series files runs on rayon.
//! Every error names the file, the line and the column.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};

/// Float metric columns of `runs.csv`, in schema order (results-schema). Indexes into
/// [`Run::metrics`].
pub use results_schema::METRICS;
pub const N_METRICS: usize = METRICS.len();

/// Metric indexes by name.
pub mod m {
    pub const THROUGHPUT: usize = 0;
    pub const FRAMES: usize = 1;
    pub const ACK_P50: usize = 2;
    pub const ACK_P99: usize = 3;
    pub const ACK_P999: usize = 4;
    pub const ACK_MAX: usize = 5;
    pub const REQ_P50: usize = 6;
    pub const REQ_P99: usize = 7;
    pub const CPU_S_PER_GIB: usize = 8;
    pub const IOS_PER_SYSCALL: usize = 9;
    pub const RSS_KB: usize = 10;
    pub const GEN_CPU: usize = 11;
    pub const DEV_MB_PER_S: usize = 12;
    pub const DEV_IOPS: usize = 13;
    pub const DEV_UTIL: usize = 17;
    pub const STEAL: usize = 19;
    pub const ACK_P90: usize = 22;
    pub const SENT: usize = 23;
    pub const LATE_FRAMES: usize = 24;
    pub const RECORDER_CPU_PCT: usize = 25;
    pub const RECORDER_CPU_S: usize = 26;
    pub const URING_COMPLETIONS_PER_S: usize = 27;
    pub const NOPS_PER_S: usize = 28;
    pub const NOP_CPU_NS: usize = 29;
    pub const NOPS_PER_ENTER: usize = 30;
}

/// Index of a metric column by its name.
pub fn metric_index(name: &str) -> Option<usize> {
    METRICS.iter().position(|m| *m == name)
}

/// Columns without which nothing can be said about a run.
pub use results_schema::REQUIRED as REQUIRED_COLUMNS;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Unsupported,
    Failed,
    Rejected,
}

impl Status {
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "ok" => Status::Ok,
            "unsupported" => Status::Unsupported,
            "failed" => Status::Failed,
            "rejected" => Status::Rejected,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Unsupported => "unsupported",
            Status::Failed => "failed",
            Status::Rejected => "rejected",
        }
    }
}

/// One row of `runs.csv`.
#[derive(Clone, Debug)]
pub struct Run {
    pub run_id: String,
    pub cell_id: String,
    pub rep: u32,
    pub pair: Option<u32>,
    pub revision: String,
    pub kind: String,
    pub workload: String,
    pub status: Status,
    pub reason: String,
    pub started_at: Option<f64>,
    pub duration_s: Option<f64>,
    /// Values of [`ResultSet::dimensions`], same order; empty where the column is empty.
    pub dims: Vec<String>,
    pub requested_flags: String,
    pub effective_flags: String,
    /// The generator's settings (`load` column; empty in old results and for anchors).
    pub load: String,
    /// Where the recorder and the generator ran (`placement` column).
    pub placement: String,
    /// Values of [`ResultSet::options`] (the `opt.*` columns), same order; empty where
    /// the run has none (anchors, old results).
    pub options: Vec<String>,
    pub metrics: [Option<f64>; N_METRICS],
    pub errors: Option<u64>,
    pub log: String,
    /// Line of the row in runs.csv (for messages).
    pub line: u64,
}

impl Run {
    pub fn metric(&self, idx: usize) -> Option<f64> {
        self.metrics[idx]
    }
    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }
    /// An open-loop (paced) ingest run: the generator sends at its tick rate whatever the
    /// recorder does, so its throughput is the offered load, not a measure of speed.
    /// Known from `sent_mb_per_s` (written for paced runs only), else the `load` column's
    /// tick rate, else the workload (`ingest` is paced by default; old results).
    pub fn open_loop(&self) -> bool {
        if self.metric(m::SENT).is_some() {
            return true;
        }
        if let Some(hz) = self
            .load
            .split(';')
            .find_map(|kv| kv.strip_prefix("tick-hz="))
        {
            return hz.parse::<f64>().is_ok_and(|h| h > 0.0);
        }
        self.kind == "recorder" && self.workload == "ingest"
    }
}

/// A whole sweep directory.
#[derive(Clone, Debug)]
pub struct ResultSet {
    pub dir: PathBuf,
    pub manifest: serde_json::Value,
    /// Dimension names in column order (from the manifest, checked against runs.csv).
    pub dimensions: Vec<String>,
    /// Engine options with an `opt.<section>.<name>` column, in column order (none in
    /// results written before those columns).
    pub options: Vec<String>,
    pub runs: Vec<Run>,
    /// Metric columns that runs.csv does not have at all (every value is then None).
    pub absent_columns: Vec<String>,
}

impl ResultSet {
    /// Reads `DIR/manifest.json` and `DIR/runs.csv`. Time series are read on demand.
    pub fn load(dir: &Path) -> Result<ResultSet> {
        if !dir.is_dir() {
            return Err(Error::Usage(format!(
                "{} is not a directory; give the output directory of `harness sweep` (it holds manifest.json and runs.csv)",
                dir.display()
            )));
        }
        let manifest = load_manifest(&dir.join("manifest.json"))?;
        let manifest_dims: Option<Vec<String>> = manifest
            .get("dimensions")
            .and_then(|d| d.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            });
        let runs_path = dir.join("runs.csv");
        let text =
            std::fs::read_to_string(&runs_path).map_err(|e| Error::io(&runs_path, "read", e))?;
        let (dimensions, options, runs, absent_columns) =
            parse_runs(&runs_path, &text, manifest_dims.as_deref())?;
        Ok(ResultSet {
            dir: dir.to_path_buf(),
            manifest,
            dimensions,
            options,
            runs,
            absent_columns,
        })
    }

    /// Index of a dimension by name (`ring.sqpoll`; a leading `dim.` is accepted).
    pub fn dim_index(&self, name: &str) -> Option<usize> {
        let name = name.strip_prefix("dim.").unwrap_or(name);
        self.dimensions.iter().position(|d| d == name)
    }

    /// Index of an engine option by name (`ring.sqpoll`; a leading `opt.` is accepted).
    pub fn option_index(&self, name: &str) -> Option<usize> {
        let name = results_schema::option_of(name).unwrap_or(name);
        self.options.iter().position(|o| o == name)
    }

    /// A run's value of a dimension or, when no dimension has that name, of the option
    /// in effect (the `opt.*` column): so any option can be grouped by, varied or not.
    /// None when the result set has neither (or the run has no value).
    pub fn value_of<'r>(&self, run: &'r Run, name: &str) -> Option<&'r str> {
        let v = match self.dim_index(name) {
            Some(i) => run.dims[i].as_str(),
            None => run.options[self.option_index(name)?].as_str(),
        };
        (!v.is_empty()).then_some(v)
    }

    /// Distinct revisions in row order of first appearance.
    pub fn revisions(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in &self.runs {
            if !out.contains(&r.revision) {
                out.push(r.revision.clone());
            }
        }
        out
    }

    pub fn timeseries_path(&self, run_id: &str) -> PathBuf {
        self.dir.join("timeseries").join(format!("{run_id}.csv"))
    }

    /// Reads the time series of one run; `Ok(None)` when the run has none.
    pub fn timeseries(&self, run_id: &str) -> Result<Option<TimeSeries>> {
        let p = self.timeseries_path(run_id);
        match std::fs::read_to_string(&p) {
            Ok(text) => TimeSeries::parse(&p, &text).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&p, "read", e)),
        }
    }

    /// Summaries of the time series of every run that has one, in parallel.
    pub fn timeseries_summaries(&self) -> Result<HashMap<String, SeriesSummary>> {
        let ts_dir = self.dir.join("timeseries");
        if !ts_dir.is_dir() {
            return Ok(HashMap::new());
        }
        let found: Vec<Result<Option<(String, SeriesSummary)>>> = self
            .runs
            .par_iter()
            .filter(|r| r.is_ok())
            .map(|r| {
                let p = self.timeseries_path(&r.run_id);
                match std::fs::read_to_string(&p) {
                    Ok(text) => Ok(Some((r.run_id.clone(), summarize_series(&p, &text)?))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(Error::io(&p, "read", e)),
                }
            })
            .collect();
        let mut out = HashMap::with_capacity(found.len());
        for f in found {
            if let Some((k, v)) = f? {
                out.insert(k, v);
            }
        }
        Ok(out)
    }
}

fn load_manifest(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "read", e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        Error::input(
            path,
            Some(e.line() as u64),
            None,
            format!("not valid JSON (column {}): {e}", e.column()),
        )
    })?;
    if !v.is_object() {
        return Err(Error::input(
            path,
            None,
            None,
            "expected one JSON object (see docs/results.md)",
        ));
    }
    if let Some(d) = v.get("dimensions") {
        if !d
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x.is_string()))
        {
            return Err(Error::input(
                path,
                None,
                None,
                "\"dimensions\" must be a list of dimension names",
            ));
        }
    }
    Ok(v)
}

struct Columns {
    idx: HashMap<String, usize>,
    dims: Vec<usize>,
    options: Vec<usize>,
    metrics: [Option<usize>; N_METRICS],
}

fn parse_runs(
    path: &Path,
    text: &str,
    manifest_dims: Option<&[String]>,
) -> Result<(Vec<String>, Vec<String>, Vec<Run>, Vec<String>)> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(text.as_bytes());
    let headers = rdr
        .headers()
        .map_err(|e| {
            Error::input(
                path,
                Some(1),
                None,
                format!("cannot read the header row: {e}"),
            )
        })?
        .clone();
    if headers.is_empty() || (headers.len() == 1 && headers[0].is_empty()) {
        return Err(Error::input(
            path,
            Some(1),
            None,
            "empty file: expected a header row (see docs/results.md)",
        ));
    }
    let mut idx = HashMap::new();
    // Old result directories name some columns differently (`throughput_mbps`): they are
    // read under their current names; messages quote the file's own header.
    for (i, h) in headers.iter().enumerate() {
        if idx
            .insert(results_schema::canonical(h).to_string(), i)
            .is_some()
        {
            return Err(Error::input(
                path,
                Some(1),
                Some((i + 1, h)),
                "column appears twice in the header",
            ));
        }
    }
    for req in REQUIRED_COLUMNS {
        if !idx.contains_key(*req) {
            return Err(Error::input(
                path,
                Some(1),
                None,
                format!("required column `{req}` is missing from the header (see docs/results.md for the columns)"),
            ));
        }
    }
    let header_dims: Vec<String> = headers
        .iter()
        .filter_map(|h| h.strip_prefix("dim."))
        .map(str::to_string)
        .collect();
    let dimensions = match manifest_dims {
        Some(md) if !md.is_empty() => {
            for d in md {
                if !idx.contains_key(&format!("dim.{d}")) {
                    return Err(Error::input(
                        path,
                        Some(1),
                        None,
                        format!("column `dim.{d}` is missing: manifest.json lists dimension `{d}`"),
                    ));
                }
            }
            md.to_vec()
        }
        _ => header_dims,
    };
    let mut metrics = [None; N_METRICS];
    let mut absent = Vec::new();
    for (i, m) in METRICS.iter().enumerate() {
        metrics[i] = idx.get(*m).copied();
        if metrics[i].is_none() {
            absent.push(m.to_string());
        }
    }
    let options: Vec<String> = headers
        .iter()
        .filter_map(results_schema::option_of)
        .map(str::to_string)
        .collect();
    let cols = Columns {
        options: options
            .iter()
            .map(|o| idx[&format!("{}{o}", results_schema::col::OPT_PREFIX)])
            .collect(),
        dims: dimensions
            .iter()
            .map(|d| idx[&format!("dim.{d}")])
            .collect(),
        idx,
        metrics,
    };

    let mut records = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line());
            Error::input(path, line, None, format!("malformed CSV row: {e}"))
        })?;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        records.push((line, rec));
    }
    let runs: Vec<Run> = records
        .par_iter()
        .map(|(line, rec)| parse_row(path, *line, rec, &headers, &cols))
        .collect::<Result<Vec<Run>>>()?;
    let mut seen = HashMap::with_capacity(runs.len());
    for r in &runs {
        if let Some(prev) = seen.insert(r.run_id.as_str(), r.line) {
            return Err(Error::input(
                path,
                Some(r.line),
                Some((cols.idx["run_id"] + 1, "run_id")),
                format!(
                    "run_id {:?} already used on line {prev}; run ids must be unique",
                    r.run_id
                ),
            ));
        }
    }
    Ok((dimensions, options, runs, absent))
}

fn parse_row(
    path: &Path,
    line: u64,
    rec: &csv::StringRecord,
    headers: &csv::StringRecord,
    c: &Columns,
) -> Result<Run> {
    let get = |name: &str| -> &str { c.idx.get(name).and_then(|&i| rec.get(i)).unwrap_or("") };
    let err =
        |i: usize, msg: String| Error::input(path, Some(line), Some((i + 1, &headers[i])), msg);
    let req_text = |name: &str| -> Result<String> {
        let i = c.idx[name];
        let v = rec.get(i).unwrap_or("").trim();
        if v.is_empty() {
            return Err(err(i, format!("`{name}` is empty; every run needs one")));
        }
        Ok(v.to_string())
    };
    let float = |i: usize| -> Result<Option<f64>> {
        let v = rec.get(i).unwrap_or("").trim();
        if v.is_empty() {
            return Ok(None);
        }
        match v.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(Some(x)),
            Ok(_) => Err(err(i, format!("{v:?} is not a finite number"))),
            Err(_) => Err(err(i, format!("{v:?} is not a number"))),
        }
    };
    let uint = |name: &str, required: bool| -> Result<Option<u64>> {
        let Some(&i) = c.idx.get(name) else {
            return Ok(None);
        };
        let v = rec.get(i).unwrap_or("").trim();
        if v.is_empty() {
            if required {
                return Err(err(
                    i,
                    format!("`{name}` is empty; expected a whole number"),
                ));
            }
            return Ok(None);
        }
        v.parse::<u64>()
            .map(Some)
            .map_err(|_| err(i, format!("{v:?} is not a non-negative whole number")))
    };
    let status_i = c.idx["status"];
    let status_text = rec.get(status_i).unwrap_or("").trim();
    let status = Status::parse(status_text).ok_or_else(|| {
        err(
            status_i,
            format!("unknown status {status_text:?}; expected ok, unsupported, failed or rejected"),
        )
    })?;
    let mut metrics = [None; N_METRICS];
    for (k, col) in c.metrics.iter().enumerate() {
        if let Some(i) = col {
            metrics[k] = float(*i)?;
        }
    }
    let opt_float =
        |name: &str| -> Result<Option<f64>> { c.idx.get(name).map_or(Ok(None), |&i| float(i)) };
    Ok(Run {
        run_id: req_text("run_id")?,
        cell_id: req_text("cell_id")?,
        rep: uint("rep", true)?.unwrap_or(0) as u32,
        pair: uint("pair", false)?.map(|p| p as u32),
        revision: req_text("revision")?,
        kind: req_text("kind")?,
        workload: req_text("workload")?,
        status,
        reason: get("reason").to_string(),
        started_at: opt_float("started_at")?,
        duration_s: opt_float("duration_s")?,
        dims: c
            .dims
            .iter()
            .map(|&i| rec.get(i).unwrap_or("").trim().to_string())
            .collect(),
        requested_flags: get("requested_flags").to_string(),
        effective_flags: get("effective_flags").to_string(),
        load: get("load").to_string(),
        placement: get("placement").to_string(),
        options: c
            .options
            .iter()
            .map(|&i| rec.get(i).unwrap_or("").trim().to_string())
            .collect(),
        metrics,
        errors: uint("errors", false)?,
        log: get("log").to_string(),
        line,
    })
}

use results_schema::series;

/// `timeseries/<run_id>.csv`: one row per sample.
#[derive(Clone, Debug, Default)]
pub struct TimeSeries {
    pub t_s: Vec<f64>,
    /// Column name -> values (None where the sample is empty). Only columns present in the file.
    pub columns: Vec<(String, Vec<Option<f64>>)>,
}

/// What the report keeps of each run's time series.
#[derive(Clone, Copy, Debug, Default)]
pub struct SeriesSummary {
    /// Samples in the measured window (t_s >= 0).
    pub samples: usize,
    /// Coefficient of variation of per-sample throughput in the window.
    pub throughput_cov: f64,
    /// Fraction of window samples below half the run's median throughput (stalls).
    pub stall_fraction: f64,
    /// Largest Dirty and Writeback seen, KiB.
    pub dirty_kb_max: f64,
    pub writeback_kb_max: f64,
    /// Throughput trend over the window: the least-squares line's change from the window's
    /// start to its end, relative to the mean (0.12 = rose by 12%).
    pub trend: f64,
}

/// Relative change across the window of the least-squares line through (t, x).
pub fn trend_of(t: &[f64], x: &[f64]) -> f64 {
    let n = t.len().min(x.len());
    if n < 4 {
        return 0.0;
    }
    let (mt, mx) = (
        t[..n].iter().sum::<f64>() / n as f64,
        x[..n].iter().sum::<f64>() / n as f64,
    );
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for i in 0..n {
        sxy += (t[i] - mt) * (x[i] - mx);
        sxx += (t[i] - mt) * (t[i] - mt);
    }
    if sxx <= 0.0 || mx <= 0.0 {
        return 0.0;
    }
    let span = t[..n].iter().copied().fold(f64::NEG_INFINITY, f64::max)
        - t[..n].iter().copied().fold(f64::INFINITY, f64::min);
    sxy / sxx * span / mx
}

impl TimeSeries {
    pub fn parse(path: &Path, text: &str) -> Result<TimeSeries> {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(text.as_bytes());
        let headers = rdr
            .headers()
            .map_err(|e| {
                Error::input(
                    path,
                    Some(1),
                    None,
                    format!("cannot read the header row: {e}"),
                )
            })?
            .clone();
        let t_i = headers.iter().position(|h| h == "t_s").ok_or_else(|| {
            Error::input(
                path,
                Some(1),
                None,
                "required column `t_s` is missing from the header",
            )
        })?;
        let cols: Vec<(usize, &str)> = headers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != t_i)
            .collect();
        let mut ts = TimeSeries {
            t_s: Vec::new(),
            columns: cols
                .iter()
                .map(|(_, n)| (results_schema::canonical(n).to_string(), Vec::new()))
                .collect(),
        };
        for rec in rdr.records() {
            let rec = rec.map_err(|e| {
                Error::input(
                    path,
                    e.position().map(|p| p.line()),
                    None,
                    format!("malformed CSV row: {e}"),
                )
            })?;
            let line = rec.position().map(|p| p.line());
            let num = |i: usize| -> Result<Option<f64>> {
                let v = rec.get(i).unwrap_or("").trim();
                if v.is_empty() {
                    return Ok(None);
                }
                v.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .map(Some)
                    .ok_or_else(|| {
                        Error::input(
                            path,
                            line,
                            Some((i + 1, &headers[i])),
                            format!("{v:?} is not a number"),
                        )
                    })
            };
            let t = num(t_i)?.ok_or_else(|| {
                Error::input(
                    path,
                    line,
                    Some((t_i + 1, "t_s")),
                    "`t_s` is empty; every sample needs a time",
                )
            })?;
            ts.t_s.push(t);
            for (k, (i, _)) in cols.iter().enumerate() {
                ts.columns[k].1.push(num(*i)?);
            }
        }
        Ok(ts)
    }

    pub fn column(&self, name: &str) -> Option<&[Option<f64>]> {
        self.columns
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    pub fn summary(&self) -> SeriesSummary {
        let mut s = SeriesSummary::default();
        if let Some(tp) = self.column(series::THROUGHPUT) {
            let pts: Vec<(f64, f64)> = self
                .t_s
                .iter()
                .zip(tp)
                .filter(|(t, _)| **t >= 0.0)
                .filter_map(|(t, v)| v.map(|v| (*t, v)))
                .collect();
            let w: Vec<f64> = pts.iter().map(|p| p.1).collect();
            let (tt, xx): (Vec<f64>, Vec<f64>) = pts.iter().copied().unzip();
            s.trend = trend_of(&tt, &xx);
            s.samples = w.len();
            if !w.is_empty() {
                let mean = w.iter().sum::<f64>() / w.len() as f64;
                let var = w.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / w.len() as f64;
                s.throughput_cov = if mean > 0.0 { var.sqrt() / mean } else { 0.0 };
                let med = crate::stats::median(&w);
                s.stall_fraction =
                    w.iter().filter(|x| **x < 0.5 * med).count() as f64 / w.len() as f64;
            }
        }
        let max_of = |name: &str| {
            self.column(name)
                .map_or(0.0, |v| v.iter().flatten().fold(0.0f64, |a, b| a.max(*b)))
        };
        s.dirty_kb_max = max_of(series::DIRTY_KB);
        s.writeback_kb_max = max_of(series::WRITEBACK_KB);
        s
    }
}

/// [`SeriesSummary`] of a time-series file without building the whole [`TimeSeries`]:
/// only `t_s`, `throughput_mb_per_s` (or its old name), `dirty_kb` and `writeback_kb` are parsed (every value
/// of those columns is checked, with the same file/line/column errors). Files with
/// quoted fields take the full CSV path.
pub fn summarize_series(path: &Path, text: &str) -> Result<SeriesSummary> {
    if text.contains('"') {
        return TimeSeries::parse(path, text).map(|t| t.summary());
    }
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .collect();
    let col = |n: &str| {
        header
            .iter()
            .position(|h| results_schema::canonical(h) == n)
    };
    let t_i = col("t_s").ok_or_else(|| {
        Error::input(
            path,
            Some(1),
            None,
            "required column `t_s` is missing from the header",
        )
    })?;
    let wanted = [
        col(series::THROUGHPUT),
        col(series::DIRTY_KB),
        col(series::WRITEBACK_KB),
    ];
    let mut tp = Vec::new();
    let mut tpt = Vec::new();
    let (mut dirty, mut wb) = (0.0f64, 0.0f64);
    for (k, line) in lines.enumerate() {
        if line.is_empty() {
            continue;
        }
        let line_no = k as u64 + 2;
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != header.len() {
            return Err(Error::input(
                path,
                Some(line_no),
                None,
                format!(
                    "malformed CSV row: {} fields, the header has {}",
                    fields.len(),
                    header.len()
                ),
            ));
        }
        let num = |i: usize| -> Result<Option<f64>> {
            let v = fields[i].trim();
            if v.is_empty() {
                return Ok(None);
            }
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| {
                    Error::input(
                        path,
                        Some(line_no),
                        Some((i + 1, header[i])),
                        format!("{v:?} is not a number"),
                    )
                })
        };
        let t = num(t_i)?.ok_or_else(|| {
            Error::input(
                path,
                Some(line_no),
                Some((t_i + 1, "t_s")),
                "`t_s` is empty; every sample needs a time",
            )
        })?;
        if let Some(i) = wanted[0] {
            if let Some(x) = num(i)? {
                if t >= 0.0 {
                    tp.push(x);
                    tpt.push(t);
                }
            }
        }
        if let Some(i) = wanted[1] {
            dirty = dirty.max(num(i)?.unwrap_or(0.0));
        }
        if let Some(i) = wanted[2] {
            wb = wb.max(num(i)?.unwrap_or(0.0));
        }
    }
    let mut s = SeriesSummary {
        samples: tp.len(),
        dirty_kb_max: dirty,
        writeback_kb_max: wb,
        ..Default::default()
    };
    if !tp.is_empty() {
        let mean = tp.iter().sum::<f64>() / tp.len() as f64;
        let var = tp.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / tp.len() as f64;
        s.throughput_cov = if mean > 0.0 { var.sqrt() / mean } else { 0.0 };
        let med = crate::stats::median(&tp);
        s.stall_fraction = tp.iter().filter(|x| **x < 0.5 * med).count() as f64 / tp.len() as f64;
        s.trend = trend_of(&tpt, &tp);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_series_summary_equals_the_full_parser() {
        let text = "t_s,throughput_mbps,dirty_kb,writeback_kb\n-0.25,10,5,1\n0,100,7,2\n0.25,20,9,0\n0.5,110,,3\n0.75,105,1,\n";
        let p = Path::new("x.csv");
        let a = summarize_series(p, text).unwrap();
        let b = TimeSeries::parse(p, text).unwrap().summary();
        assert_eq!(
            (a.samples, a.dirty_kb_max, a.writeback_kb_max),
            (4, 9.0, 3.0)
        );
        assert_eq!(
            (a.samples, a.dirty_kb_max, a.writeback_kb_max),
            (b.samples, b.dirty_kb_max, b.writeback_kb_max)
        );
        assert!((a.throughput_cov - b.throughput_cov).abs() < 1e-12);
        // median of 100, 20, 110, 105 is 102.5: one sample (20) is below half of it.
        assert_eq!(a.stall_fraction, 0.25);
        let e = summarize_series(p, "t_s,throughput_mbps\n0,1\n0.25,x\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "x.csv:3: column 2 (throughput_mbps): \"x\" is not a number"
        );
        let e = summarize_series(p, "t_s,throughput_mbps\n0,1,2\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("x.csv:2: malformed CSV row"), "{e}");
    }

    #[test]
    fn old_results_with_throughput_mbps_are_read_under_the_new_name() {
        let p = Path::new("runs.csv");
        for name in ["throughput_mbps", "throughput_mb_per_s"] {
            let text = format!(
                "run_id,cell_id,rep,revision,kind,workload,status,{name},dev_mbps\nc1-r1,c1,1,head,recorder,ingest,ok,12.5,3\n"
            );
            let (_, _, runs, absent) = parse_runs(p, &text, None).unwrap();
            assert_eq!(runs[0].metric(m::THROUGHPUT), Some(12.5), "{name}");
            assert_eq!(runs[0].metric(12), Some(3.0), "dev_mbps is dev_mb_per_s");
            assert!(!absent.iter().any(|a| a == "throughput_mb_per_s"));
        }
        let ts = TimeSeries::parse(p, "t_s,throughput_mbps\n0,4\n").unwrap();
        assert_eq!(ts.column(series::THROUGHPUT), Some(&[Some(4.0)][..]));
    }

    #[test]
    fn option_columns_are_read_and_old_results_without_them_still_load() {
        let p = Path::new("runs.csv");
        let text = "run_id,cell_id,rep,revision,kind,workload,status,dim.net.recv,throughput_mb_per_s,opt.ring.sqpoll,opt.net.recv\n\
                    c1-r1,c1,1,head,recorder,ingest,ok,multishot,12.5,true,multishot\n\
                    c2-r1,c2,1,head,nginx,serve,ok,,30,,\n";
        let (dims, options, runs, _) = parse_runs(p, text, None).unwrap();
        assert_eq!(dims, vec!["net.recv"]);
        assert_eq!(options, vec!["ring.sqpoll", "net.recv"]);
        assert_eq!(runs[0].options, vec!["true", "multishot"]);
        let rs = ResultSet {
            dir: PathBuf::from("."),
            manifest: serde_json::Value::Null,
            dimensions: dims,
            options,
            runs,
            absent_columns: vec![],
        };
        // a dimension wins over the option of the same name; any option can be looked up
        assert_eq!(rs.value_of(&rs.runs[0], "net.recv"), Some("multishot"));
        assert_eq!(rs.value_of(&rs.runs[0], "opt.ring.sqpoll"), Some("true"));
        assert_eq!(rs.value_of(&rs.runs[1], "ring.sqpoll"), None);
        assert_eq!(rs.value_of(&rs.runs[0], "ring.no-such"), None);
        let old = "run_id,cell_id,rep,revision,kind,workload,status,throughput_mb_per_s\nc1-r1,c1,1,head,recorder,ingest,ok,1\n";
        let (_, options, runs, _) = parse_runs(p, old, None).unwrap();
        assert!(options.is_empty() && runs[0].options.is_empty());
    }
}

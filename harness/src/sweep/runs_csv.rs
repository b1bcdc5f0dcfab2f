//! runs.csv: its columns, opening (and resuming) it, and one row per run.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::Outcome;
use crate::experiment::{Cell, Experiment};
use results_schema::col;

pub use results_schema::{header, HEAD as HEAD_COLS, TAIL as TAIL_COLS};

/// The options that get an `opt.<key>` column: every knob of the engine's table in
/// `results_schema::OPTION_SECTIONS`, in table order.
pub fn option_keys() -> Vec<String> {
    engine::config::all_knobs()
        .into_iter()
        .filter(|k| results_schema::OPTION_SECTIONS.contains(&k.section))
        .map(|k| format!("{}.{}", k.section, k.name))
        .collect()
}

/// runs.csv of one result directory.
pub struct RunsCsv {
    path: PathBuf,
    header: Vec<String>,
    /// (cell_id, rep) already present, with their status and throughput.
    pub done: HashMap<(String, u32), (String, Option<f64>)>,
}

impl RunsCsv {
    pub fn open(dir: &Path, dims: &[String], resume: bool) -> Result<RunsCsv, String> {
        let path = dir.join("runs.csv");
        let mut header = header(dims, &option_keys());
        let mut done = HashMap::new();
        if path.exists() {
            if !resume {
                return Err(format!(
                    "{} exists; use --resume to continue that sweep or choose another --out",
                    path.display()
                ));
            }
            let mut rd = csv::Reader::from_path(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let h: Vec<String> = rd
                .headers()
                .map_err(|e| e.to_string())?
                .iter()
                .map(String::from)
                .collect();
            // A sweep begun before the option columns existed resumes without them.
            if h != header && h == results_schema::header(dims, &[]) {
                header = h.clone();
            }
            if h != header {
                return Err(format!(
                    "{} was written by a different experiment (its columns differ); resume needs the same experiment file",
                    path.display()
                ));
            }
            let ci = |n: &str| h.iter().position(|x| x == n).expect("own header");
            let (c_cell, c_rep, c_status, c_thr) = (
                ci(col::CELL_ID),
                ci(col::REP),
                ci(col::STATUS),
                ci(col::THROUGHPUT),
            );
            for r in rd.records() {
                let r = r.map_err(|e| format!("{}: {e}", path.display()))?;
                let rep: u32 = r.get(c_rep).and_then(|v| v.parse().ok()).unwrap_or(0);
                done.insert(
                    (r.get(c_cell).unwrap_or("").to_string(), rep),
                    (
                        r.get(c_status).unwrap_or("").to_string(),
                        r.get(c_thr).and_then(|v| v.parse().ok()),
                    ),
                );
            }
        } else {
            let mut w = csv::Writer::from_path(&path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            w.write_record(&header).map_err(|e| e.to_string())?;
            w.flush().map_err(|e| e.to_string())?;
        }
        Ok(RunsCsv { path, header, done })
    }

    pub fn append(&mut self, row: &BTreeMap<String, String>) -> Result<(), String> {
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        let mut w = csv::WriterBuilder::new().has_headers(false).from_writer(f);
        let rec: Vec<&str> = self
            .header
            .iter()
            .map(|h| row.get(h).map(String::as_str).unwrap_or(""))
            .collect();
        w.write_record(&rec).map_err(|e| e.to_string())?;
        w.flush()
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        let f = w.into_inner().map_err(|e| e.to_string())?;
        f.sync_data().map_err(|e| e.to_string())?;
        Ok(())
    }
}

pub(crate) fn row_for(
    exp: &Experiment,
    cell: &Cell,
    run_id: &str,
    rep: u32,
    pair: Option<u32>,
    revision: &str,
    o: &Outcome,
) -> BTreeMap<String, String> {
    let mut r = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        r.insert(k.to_string(), v);
    };
    put("run_id", run_id.into());
    put("cell_id", cell.id.clone());
    put("rep", rep.to_string());
    put("pair", pair.map(|p| p.to_string()).unwrap_or_default());
    put("revision", revision.into());
    put("kind", cell.kind().into());
    put("workload", cell.workload());
    put("status", o.status.clone());
    put("reason", o.reason.clone());
    put(
        "started_at",
        o.started_at
            .filter(|_| o.status == "ok")
            .map(|t| format!("{t:.3}"))
            .unwrap_or_default(),
    );
    put(
        "duration_s",
        o.duration_s
            .filter(|_| o.status == "ok")
            .map(|t| format!("{t:.3}"))
            .unwrap_or_default(),
    );
    put("dims", cell.label(&exp.dims));
    for d in &exp.dims {
        put(&format!("dim.{d}"), cell.get(d).unwrap_or("").to_string());
    }
    put("requested_flags", o.requested_flags.clone());
    put("effective_flags", o.effective_flags.clone());
    for (k, v) in &o.options {
        put(&format!("{}{k}", col::OPT_PREFIX), v.clone());
    }
    for (k, v) in &o.m {
        put(k, v.clone());
    }
    put("log", o.log.clone());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_has_documented_columns_in_order() {
        let opts = option_keys();
        assert!(opts.iter().any(|o| o == "ring.sqpoll"));
        assert!(opts.iter().any(|o| o == "net.recv-bundle"));
        assert!(opts.iter().any(|o| o == "file.register-files"));
        assert!(!opts.iter().any(|o| o.starts_with("server.")));
        let h = header(&["server.backend".to_string()], &opts);
        assert_eq!(
            h[..12],
            HEAD_COLS.iter().map(|s| s.to_string()).collect::<Vec<_>>()[..]
        );
        assert_eq!(h[12], "dim.server.backend");
        assert_eq!(h[13], "requested_flags");
        let log_at = h.iter().position(|c| c == "log").unwrap();
        assert_eq!(h[log_at - 1], "errors");
        assert_eq!(h[h.len() - opts.len()], format!("opt.{}", opts[0]));
    }
}

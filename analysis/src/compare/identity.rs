//! Whether two result directories measured the same experiment: the same experiment file,
//! the same cells (kind, workload and dimension values per `cell_id`). `compare` refuses
//! anything else unless told otherwise (`--allow-different-experiments`), and even then
//! never pairs a cell with a different cell of the same id (a fio anchor with a recorder
//! cell once gave +1541%).

use std::collections::BTreeMap;

use crate::data::{ResultSet, Run};

/// What identifies a cell across sweeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CellKey {
    pub kind: String,
    pub workload: String,
    /// `name=value` for every dimension with a value.
    pub dims: Vec<String>,
}

impl CellKey {
    pub fn of(rs: &ResultSet, r: &Run) -> CellKey {
        CellKey {
            kind: r.kind.clone(),
            workload: r.workload.clone(),
            dims: rs
                .dimensions
                .iter()
                .zip(&r.dims)
                .filter(|(_, v)| !v.is_empty())
                .map(|(n, v)| format!("{n}={v}"))
                .collect(),
        }
    }
    pub fn describe(&self) -> String {
        let mut s = format!("{} {}", self.kind, self.workload);
        if !self.dims.is_empty() {
            s.push(' ');
            s.push_str(&self.dims.join(" "));
        }
        s
    }
}

/// Every cell of the runs given, by id.
pub fn cells(rs: &ResultSet, runs: &[&Run]) -> BTreeMap<String, CellKey> {
    let mut out = BTreeMap::new();
    for r in runs {
        out.entry(r.cell_id.clone())
            .or_insert_with(|| CellKey::of(rs, r));
    }
    out
}

fn experiment_text(rs: &ResultSet) -> Option<&str> {
    rs.manifest.get("experiment").and_then(|v| v.as_str())
}

fn experiment_name(rs: &ResultSet) -> Option<&str> {
    rs.manifest.get("experiment_name").and_then(|v| v.as_str())
}

/// The differences between two sweeps that make them different experiments (empty = the
/// same). `a_cells` / `b_cells` are the cells each side contributes.
pub fn differences(
    a: &ResultSet,
    a_cells: &BTreeMap<String, CellKey>,
    b: &ResultSet,
    b_cells: &BTreeMap<String, CellKey>,
) -> Vec<String> {
    let mut out = Vec::new();
    let (an, bn) = (experiment_name(a), experiment_name(b));
    if an.is_some() && bn.is_some() && an != bn {
        out.push(format!(
            "experiment names differ: {:?} in {} vs {:?} in {}",
            an.unwrap_or(""),
            a.dir.display(),
            bn.unwrap_or(""),
            b.dir.display()
        ));
    }
    if let (Some(x), Some(y)) = (experiment_text(a), experiment_text(b)) {
        if x != y {
            let first = x
                .lines()
                .zip(y.lines())
                .position(|(p, q)| p != q)
                .map(|i| i + 1)
                .unwrap_or(x.lines().count().min(y.lines().count()) + 1);
            out.push(format!(
                "the experiment files differ (manifest.json `experiment`, first at line {first})"
            ));
        }
    }
    for (id, ka) in a_cells {
        match b_cells.get(id) {
            Some(kb) if kb != ka => out.push(format!(
                "cell {id} is `{}` in {} but `{}` in {}",
                ka.describe(),
                a.dir.display(),
                kb.describe(),
                b.dir.display()
            )),
            None => out.push(format!("cell {id} is only in {}", a.dir.display())),
            _ => {}
        }
    }
    for id in b_cells.keys() {
        if !a_cells.contains_key(id) {
            out.push(format!("cell {id} is only in {}", b.dir.display()));
        }
    }
    out
}

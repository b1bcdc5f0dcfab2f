//! Experiment files: parsing, validation of names, and expansion into cells.
//!
//! Every list-valued key of `[cell]` (or of an `[[include]]` entry) is a dimension; the sweep
//! is the cartesian product, minus cells matching an `[[exclude]]` rule, plus the
//! `[[include]]` entries (each expanded the same way, on top of `[cell]`'s scalars).
//! See docs/sweeps.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One value of one key, kept as the text written to the CSV and passed to the recorder.
pub type Value = String;

/// Flattened keys of a table: (name, values, written as a list).
type KeyVals = Vec<(String, Vec<String>, bool)>;

/// A cell: an ordered set of key = value.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    pub id: String,
    pub values: BTreeMap<String, Value>,
}

impl Cell {
    pub fn get(&self, k: &str) -> Option<&str> {
        self.values.get(k).map(String::as_str)
    }
    pub fn kind(&self) -> &str {
        self.get("kind").unwrap_or("recorder")
    }
    pub fn workload(&self) -> String {
        match self.get("workload") {
            Some(w) => w.to_string(),
            None => match self.kind() {
                "fio" => {
                    if self.get("fio.rw").is_some_and(|r| r.contains("read")) {
                        "disk-read".into()
                    } else {
                        "disk-write".into()
                    }
                }
                "iperf3" => "net".into(),
                "nginx" => "serve".into(),
                "nop" => "nop".into(),
                _ => "ingest".into(),
            },
        }
    }
    /// `name=value;...` for the given dimension names.
    pub fn label(&self, dims: &[String]) -> String {
        dims.iter()
            .map(|d| format!("{d}={}", self.get(d).unwrap_or("")))
            .collect::<Vec<_>>()
            .join(";")
    }
    /// A short label for progress lines: kind/workload and the dimensions this cell sets.
    pub fn short_label(&self, dims: &[String]) -> String {
        let mut parts = vec![if self.kind() == "recorder" {
            self.workload()
        } else {
            self.kind().to_string()
        }];
        parts.extend(
            dims.iter()
                .filter_map(|d| self.get(d).map(|v| format!("{d}={v}"))),
        );
        parts.join(" ")
    }
    /// Keys in a namespace (`block.`), without the prefix.
    pub fn section(&self, prefix: &str) -> Vec<(String, String)> {
        self.values
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(prefix)
                    .and_then(|r| r.strip_prefix('.'))
                    .map(|r| (r.to_string(), v.clone()))
            })
            .collect()
    }
    pub fn f64_or(&self, k: &str, d: f64) -> Result<f64, String> {
        match self.get(k) {
            None => Ok(d),
            Some(v) => v
                .parse()
                .map_err(|_| format!("{k} = {v:?} is not a number")),
        }
    }
    pub fn u64_or(&self, k: &str, d: u64) -> Result<u64, String> {
        match self.get(k) {
            None => Ok(d),
            Some(v) => v
                .replace('_', "")
                .parse()
                .map_err(|_| format!("{k} = {v:?} is not a whole number")),
        }
    }
    pub fn str_or<'a>(&'a self, k: &str, d: &'a str) -> &'a str {
        self.get(k).unwrap_or(d)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Repeat {
    pub min: u32,
    pub max: u32,
    pub rsd_pct: f64,
    /// Extra repetitions per cell allowed to replace rejected ones (default: `min`).
    pub retries: u32,
}

#[derive(Clone, Debug)]
pub struct TargetSpec {
    /// dir | loop | device
    pub kind: String,
    pub path: Option<PathBuf>,
    pub device: Option<String>,
    /// loop: image size
    pub size: String,
    /// loop: `losetup --direct-io=on`
    pub loop_direct_io: bool,
    /// Allow block.* dimensions on a dir target (changes the root disk's queue settings).
    pub allow_block_changes: bool,
    /// Before every run, when MemFree is below this many MiB, drop the clean page cache
    /// (`echo 1 > /proc/sys/vm/drop_caches`), so that the run's writes do not reclaim memory
    /// in the middle of the window (0 = never).
    pub min_free_mb: u64,
}

#[derive(Clone, Debug)]
pub struct Experiment {
    pub path: PathBuf,
    pub text: String,
    pub name: String,
    pub description: String,
    pub ramp_up_s: f64,
    pub measure_s: f64,
    pub seed: u64,
    /// `seed = "fresh"`: `seed` was drawn for this sweep (it is written to the manifest),
    /// so that no run has the same place in the order every time.
    pub seed_fresh: bool,
    pub random_order: bool,
    pub repeat: Repeat,
    /// Cells whose `[[include]]` entry sets `repeat.*` (by cell id): their own counts, the
    /// `[repeat]` table's for every key the entry leaves out. Every other cell uses `repeat`.
    pub cell_repeat: BTreeMap<String, Repeat>,
    pub target: TargetSpec,
    pub steal_limit_pct: f64,
    pub gen_cpu_limit_pct: f64,
    /// Dimension names in column order (kind and workload have their own columns).
    pub dims: Vec<String>,
    pub cells: Vec<Cell>,
    /// Cells removed by exclude rules (for the log).
    pub excluded: usize,
}

/// Namespaces a cell key may use.
pub const NAMESPACES: &[&str] = &[
    "ring",
    "file",
    "net",
    "server",
    "tier",
    "raw",
    "block",
    "load",
    "placement",
    "fio",
    "iperf3",
    "nginx",
    "nop",
    "wrk",
];
pub const ENGINE_SECTIONS: &[&str] = &["ring", "file", "net", "server", "tier"];
pub const BLOCK_KEYS: &[&str] = &[
    "scheduler",
    "nomerges",
    "nr_requests",
    "read_ahead_kb",
    "max_sectors_kb",
    "wbt_lat_usec",
    "rq_affinity",
    "io_poll",
];
pub const LOAD_KEYS: &[&str] = &[
    "matches",
    "tick-hz",
    "delta",
    "keyframe",
    "keyframe-interval-s",
    "keyframe-every",
    "max-unacked",
    "max-unacked-bytes",
    "match-duration-s",
    "disconnect-every-s",
    "threads",
    "concurrency",
    "popularity",
    "mode",
    "cache",
    "prefill-matches",
    "prefill-s",
    "file-size",
];
/// Keys of `[repeat]`, which an `[[include]]` entry may also set for its own cells
/// (`"repeat.min" = 20`).
pub const REPEAT_KEYS: &[&str] = &["min", "max", "rsd_pct", "retries"];
pub const KINDS: &[&str] = &["recorder", "fio", "iperf3", "nginx", "nop"];
pub const WORKLOADS: &[&str] = &[
    "ingest",
    "bulk-ingest",
    "serve",
    "wrk-serve",
    "disk-write",
    "disk-read",
    "net",
    "tier",
    "nop",
];

/// A seed for `seed = "fresh"`: the clock and the process id.
fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (t ^ ((std::process::id() as u64) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 1
}

fn scalar(k: &str, v: &toml::Value) -> Result<String, String> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => {
            return Err(format!(
                "key {k:?}: value {other} must be a string, number or boolean (or a list of them)"
            ))
        }
    })
}

/// Flattens `[cell]`-like tables: nested tables become dotted names.
fn flatten(
    prefix: &str,
    t: &toml::Table,
    out: &mut Vec<(String, Vec<String>, bool)>,
) -> Result<(), String> {
    for (k, v) in t {
        let name = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(sub) => flatten(&name, sub, out)?,
            toml::Value::Array(a) => {
                if a.is_empty() {
                    return Err(format!("key {name:?}: an empty list gives no cells"));
                }
                let vals = a
                    .iter()
                    .map(|x| scalar(&name, x))
                    .collect::<Result<Vec<_>, _>>()?;
                out.push((name, vals, true));
            }
            other => out.push((name.clone(), vec![scalar(&name, other)?], false)),
        }
    }
    Ok(())
}

/// Checks one key name; engine knobs are looked up in the engine's knob table.
pub fn check_key(k: &str) -> Result<(), String> {
    if k == "kind" || k == "workload" {
        return Ok(());
    }
    if k.starts_with("repeat.") {
        return Err(format!(
            "key {k:?}: a cell's own repetition counts go in its [[include]] entry; [repeat] sets every cell's"
        ));
    }
    let (ns, rest) = k.split_once('.').ok_or_else(|| {
        format!(
            "key {k:?} has no namespace; use kind, workload or one of {}.NAME",
            NAMESPACES.join(", ")
        )
    })?;
    if !NAMESPACES.contains(&ns) {
        return Err(format!(
            "key {k:?}: unknown namespace {ns:?}; use one of {}",
            NAMESPACES.join(", ")
        ));
    }
    if ENGINE_SECTIONS.contains(&ns) && engine::config::find_knob(k).is_none() {
        return Err(format!(
            "key {k:?} is not an option of this recorder build; `recorder options` lists every option (use raw.{rest} to pass a flag the knob table does not know)"
        ));
    }
    if ns == "block" && !BLOCK_KEYS.contains(&rest) {
        return Err(format!(
            "key {k:?}: unknown block-layer setting; use one of {}",
            BLOCK_KEYS.join(", ")
        ));
    }
    if ns == "load" && !LOAD_KEYS.contains(&rest) {
        return Err(format!(
            "key {k:?}: unknown load setting; use one of {}",
            LOAD_KEYS.join(", ")
        ));
    }
    if ns == "wrk" && !crate::sweep::wrk::WRK_KEYS.contains(&rest) {
        return Err(format!(
            "key {k:?}: unknown wrk setting; use one of {}",
            crate::sweep::wrk::WRK_KEYS.join(", ")
        ));
    }
    if ns == "placement" && rest != "policy" {
        return Err(format!(
            "key {k:?}: the only placement setting is placement.policy"
        ));
    }
    Ok(())
}

fn product(keys: &[(String, Vec<String>, bool)]) -> Vec<BTreeMap<String, String>> {
    let mut out = vec![BTreeMap::new()];
    for (k, vals, _) in keys {
        let mut next = Vec::with_capacity(out.len() * vals.len());
        for base in &out {
            for v in vals {
                let mut c = base.clone();
                c.insert(k.clone(), v.clone());
                next.push(c);
            }
        }
        out = next;
    }
    out
}

fn rule_matches(rule: &[(String, Vec<String>, bool)], cell: &BTreeMap<String, String>) -> bool {
    rule.iter()
        .all(|(k, vals, _)| cell.get(k).is_some_and(|v| vals.iter().any(|x| x == v)))
}

impl Experiment {
    pub fn load(path: &Path) -> Result<Experiment, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read experiment {}: {e}", path.display()))?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Experiment, String> {
        let ctx = |e: String| format!("{}: {e}", path.display());
        let doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ctx(format!("not valid TOML: {e}")))?;
        const TOP: &[&str] = &[
            "name",
            "description",
            "ramp_up_s",
            "measure_s",
            "seed",
            "order",
            "repeat",
            "target",
            "limits",
            "cell",
            "include",
            "exclude",
        ];
        for k in doc.keys() {
            if !TOP.contains(&k.as_str()) {
                return Err(ctx(format!(
                    "unknown top-level key {k:?}; expected one of {}",
                    TOP.join(", ")
                )));
            }
        }
        let get_f = |t: &toml::Table, k: &str, d: f64| -> Result<f64, String> {
            match t.get(k) {
                None => Ok(d),
                Some(toml::Value::Float(f)) => Ok(*f),
                Some(toml::Value::Integer(i)) => Ok(*i as f64),
                Some(o) => Err(format!("{k} = {o} must be a number")),
            }
        };
        let name = doc
            .get("name")
            .and_then(|v| v.as_str())
            .map(String::from)
            .unwrap_or_else(|| {
                path.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
        let description = doc
            .get("description")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        let ramp_up_s = get_f(&doc, "ramp_up_s", 2.0).map_err(ctx)?;
        let measure_s = get_f(&doc, "measure_s", 10.0).map_err(ctx)?;
        if measure_s <= 0.0 || ramp_up_s < 0.0 {
            return Err(ctx(
                "measure_s must be above 0 and ramp_up_s at least 0".into()
            ));
        }
        let (seed, seed_fresh) = match doc.get("seed") {
            None => (1, false),
            Some(toml::Value::Integer(i)) if *i >= 0 => (*i as u64, false),
            Some(toml::Value::String(s)) if s == "fresh" => (fresh_seed(), true),
            Some(o) => {
                return Err(ctx(format!(
                    "seed = {o}: use a whole number (the same run order every time) or \"fresh\" (a new one per sweep, written to the manifest)"
                )))
            }
        };
        let random_order = match doc
            .get("order")
            .and_then(|v| v.as_str())
            .unwrap_or("random")
        {
            "random" => true,
            "sequential" => false,
            o => return Err(ctx(format!("order = {o:?}; use random or sequential"))),
        };
        let empty = toml::Table::new();
        let rep = section(&doc, "repeat", REPEAT_KEYS, &empty).map_err(ctx)?;
        let min = get_f(rep, "min", 1.0).map_err(ctx)? as u32;
        let repeat = Repeat {
            min,
            max: get_f(rep, "max", 1.0).map_err(ctx)? as u32,
            rsd_pct: get_f(rep, "rsd_pct", 5.0).map_err(ctx)?,
            retries: get_f(rep, "retries", min as f64).map_err(ctx)? as u32,
        };
        if repeat.min == 0 || repeat.max < repeat.min {
            return Err(ctx(format!(
                "repeat: min {} must be at least 1 and max {} at least min",
                repeat.min, repeat.max
            )));
        }
        let tt = section(
            &doc,
            "target",
            &[
                "kind",
                "path",
                "device",
                "size",
                "direct_io",
                "allow_block_changes",
                "min_free_mb",
            ],
            &empty,
        )
        .map_err(ctx)?;
        let target_str = |k: &str| -> Result<Option<String>, String> {
            match tt.get(k) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(o) => Err(format!("[target] {k} = {o} must be a string")),
            }
        };
        let target_bool = |k: &str| -> Result<bool, String> {
            match tt.get(k) {
                None => Ok(false),
                Some(toml::Value::Boolean(b)) => Ok(*b),
                Some(o) => Err(format!("[target] {k} = {o} must be true or false")),
            }
        };
        let target = TargetSpec {
            kind: target_str("kind")
                .map_err(ctx)?
                .unwrap_or_else(|| "dir".into()),
            path: target_str("path").map_err(ctx)?.map(PathBuf::from),
            device: target_str("device")
                .map_err(ctx)?
                .map(|s| s.trim_start_matches("/dev/").to_string()),
            size: target_str("size")
                .map_err(ctx)?
                .unwrap_or_else(|| "2g".into()),
            loop_direct_io: target_bool("direct_io").map_err(ctx)?,
            allow_block_changes: target_bool("allow_block_changes").map_err(ctx)?,
            min_free_mb: match tt.get("min_free_mb") {
                None => 0,
                Some(toml::Value::Integer(i)) if *i >= 0 => *i as u64,
                Some(o) => {
                    return Err(ctx(format!(
                        "[target] min_free_mb = {o}: a whole number of MiB (0 = never drop caches)"
                    )))
                }
            },
        };
        match target.kind.as_str() {
            "dir" | "loop" => {}
            "device" => {
                if target.device.is_none() || target.path.is_none() {
                    return Err(ctx(
                        "target kind = \"device\" needs device = \"NAME\" and path = a directory on a file system of that device".into(),
                    ));
                }
            }
            k => return Err(ctx(format!("target kind = {k:?}; use dir, loop or device"))),
        }
        let lt = section(&doc, "limits", &["steal_pct", "gen_cpu_pct"], &empty).map_err(ctx)?;
        let steal_limit_pct = get_f(lt, "steal_pct", 10.0).map_err(ctx)?;
        let gen_cpu_limit_pct = get_f(lt, "gen_cpu_pct", 95.0).map_err(ctx)?;

        let mut base = Vec::new();
        if let Some(c) = doc.get("cell") {
            let t = c
                .as_table()
                .ok_or_else(|| ctx("[cell] must be a table".into()))?;
            flatten("", t, &mut base).map_err(ctx)?;
        }
        let table_list = |key: &str| -> Result<Vec<KeyVals>, String> {
            let mut out = Vec::new();
            if let Some(v) = doc.get(key) {
                let arr = v
                    .as_array()
                    .ok_or_else(|| format!("{key} must be written [[{key}]]"))?;
                for e in arr {
                    let t = e
                        .as_table()
                        .ok_or_else(|| format!("each [[{key}]] must be a table"))?;
                    let mut kv = Vec::new();
                    flatten("", t, &mut kv)?;
                    if kv.is_empty() {
                        return Err(format!("an empty [[{key}]] entry"));
                    }
                    out.push(kv);
                }
            }
            Ok(out)
        };
        let mut includes = table_list("include").map_err(ctx)?;
        let excludes = table_list("exclude").map_err(ctx)?;
        // `repeat.*` of an [[include]] entry: its cells' own counts, not a cell key.
        let include_repeats = includes
            .iter_mut()
            .map(|inc| include_repeat(inc, &repeat))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ctx)?;
        for (k, vals, _) in base
            .iter()
            .chain(includes.iter().flatten())
            .chain(excludes.iter().flatten())
        {
            check_key(k).map_err(ctx)?;
            if k == "kind" {
                for v in vals {
                    if !KINDS.contains(&v.as_str()) {
                        return Err(ctx(format!(
                            "kind = {v:?}; use one of {}",
                            KINDS.join(", ")
                        )));
                    }
                }
            }
            if k == "workload" {
                for v in vals {
                    if !WORKLOADS.contains(&v.as_str()) {
                        return Err(ctx(format!(
                            "workload = {v:?}; use one of {}",
                            WORKLOADS.join(", ")
                        )));
                    }
                }
            }
        }
        // Dimensions: list-valued keys, in order of first appearance.
        let mut dims: Vec<String> = Vec::new();
        for (k, _, is_list) in base.iter().chain(includes.iter().flatten()) {
            if *is_list && !dims.contains(k) {
                dims.push(k.clone());
            }
        }
        let mut cells_v: Vec<BTreeMap<String, String>> = Vec::new();
        // Per cell (same index as cells_v): its own repeat counts, if an include set them.
        let mut reps_v: Vec<Option<Repeat>> = Vec::new();
        let mut excluded = 0;
        let has_cell_table = doc.contains_key("cell");
        if has_cell_table || includes.is_empty() {
            for c in product(&base) {
                if excludes.iter().any(|r| rule_matches(r, &c)) {
                    excluded += 1;
                } else {
                    cells_v.push(c);
                    reps_v.push(None);
                }
            }
        }
        let base_scalars: Vec<(String, Vec<String>, bool)> =
            base.iter().filter(|(_, _, l)| !l).cloned().collect();
        for (inc, own_rep) in includes.iter().zip(&include_repeats) {
            let mut keys: Vec<(String, Vec<String>, bool)> = base_scalars
                .iter()
                .filter(|(k, _, _)| !inc.iter().any(|(ik, _, _)| ik == k))
                .cloned()
                .collect();
            // An anchor does not inherit recorder-only keys.
            let kind = inc
                .iter()
                .find(|(k, _, _)| k == "kind")
                .map(|(_, v, _)| v[0].clone())
                .unwrap_or_else(|| "recorder".into());
            if kind != "recorder" {
                keys.retain(|(k, _, _)| {
                    let ns = k.split('.').next().unwrap_or("");
                    !(ENGINE_SECTIONS.contains(&ns) || ns == "raw" || k == "workload")
                });
            }
            keys.extend(inc.iter().cloned());
            for c in product(&keys) {
                if excludes.iter().any(|r| rule_matches(r, &c)) {
                    excluded += 1;
                } else if let Some(i) = cells_v.iter().position(|x| *x == c) {
                    // The same cell again: an entry's own counts apply to it, but two
                    // entries may not give it different ones.
                    match (&reps_v[i], own_rep) {
                        (Some(a), Some(b)) if a != b => {
                            return Err(ctx(format!(
                                "two [[include]] entries give one cell different repeat.* counts: {}",
                                c.iter()
                                    .map(|(k, v)| format!("{k}={v}"))
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            )));
                        }
                        (None, Some(b)) => reps_v[i] = Some(b.clone()),
                        _ => {}
                    }
                } else {
                    cells_v.push(c);
                    reps_v.push(own_rep.clone());
                }
            }
        }
        if cells_v.is_empty() {
            return Err(ctx(
                "the experiment has no cells (every combination is excluded?)".into(),
            ));
        }
        // Also a dimension: any key whose value is not the same in every cell (set by some
        // [[include]] entries only, for example). kind and workload have their own columns.
        for (k, _, _) in base.iter().chain(includes.iter().flatten()) {
            if dims.contains(k) || k == "kind" || k == "workload" {
                continue;
            }
            let first = cells_v[0].get(k);
            if cells_v.iter().any(|c| c.get(k) != first) {
                dims.push(k.clone());
            }
        }
        dims.retain(|d| d != "kind" && d != "workload");
        let cells: Vec<Cell> = cells_v
            .into_iter()
            .enumerate()
            .map(|(i, values)| Cell {
                id: format!("c{i:04}"),
                values,
            })
            .collect();
        let cell_repeat = cells
            .iter()
            .zip(reps_v)
            .filter_map(|(c, r)| r.map(|r| (c.id.clone(), r)))
            .collect();
        Ok(Experiment {
            path: path.to_path_buf(),
            text: text.to_string(),
            name,
            description,
            ramp_up_s,
            measure_s,
            seed,
            seed_fresh,
            random_order,
            repeat,
            cell_repeat,
            target,
            steal_limit_pct,
            gen_cpu_limit_pct,
            dims,
            cells,
            excluded,
        })
    }

    /// The repetition counts of one cell: its [[include]] entry's `repeat.*`, else `[repeat]`.
    pub fn repeat_for(&self, cell_id: &str) -> &Repeat {
        self.cell_repeat.get(cell_id).unwrap_or(&self.repeat)
    }

    /// Does any cell change the block layer?
    pub fn touches_block(&self) -> bool {
        self.cells
            .iter()
            .any(|c| c.values.keys().any(|k| k.starts_with("block.")))
    }
}

/// Takes the `repeat.*` keys out of one `[[include]]` entry: `None` when it sets none, else
/// `global` with the keys it sets (a larger `repeat.min` without `repeat.max` raises max to
/// it). A key of another name, a list, or counts that do not fit are the file's error.
fn include_repeat(inc: &mut KeyVals, global: &Repeat) -> Result<Option<Repeat>, String> {
    let (own, rest): (KeyVals, KeyVals) = std::mem::take(inc)
        .into_iter()
        .partition(|(k, _, _)| k.starts_with("repeat."));
    *inc = rest;
    if own.is_empty() {
        return Ok(None);
    }
    if inc.is_empty() {
        return Err("an [[include]] entry with only repeat.* keys names no cells".into());
    }
    let mut r = global.clone();
    let mut max_set = false;
    for (k, vals, is_list) in &own {
        let name = &k["repeat.".len()..];
        if !REPEAT_KEYS.contains(&name) {
            return Err(format!(
                "[[include]] {k}: unknown key; use repeat.{}",
                REPEAT_KEYS.join(", repeat.")
            ));
        }
        if *is_list {
            return Err(format!(
                "[[include]] {k}: one number, not a list (the repetition count is not a dimension)"
            ));
        }
        let v: f64 = vals[0]
            .parse()
            .map_err(|_| format!("[[include]] {k} = {:?} must be a number", vals[0]))?;
        let whole = || -> Result<u32, String> {
            if v >= 0.0 && v.fract() == 0.0 && v <= u32::MAX as f64 {
                Ok(v as u32)
            } else {
                Err(format!("[[include]] {k} = {v} must be a whole number"))
            }
        };
        match name {
            "min" => r.min = whole()?,
            "max" => {
                r.max = whole()?;
                max_set = true;
            }
            "retries" => r.retries = whole()?,
            _ => r.rsd_pct = v,
        }
    }
    if !max_set {
        r.max = r.max.max(r.min);
    }
    if r.min == 0 || r.max < r.min {
        return Err(format!(
            "[[include]] repeat: min {} must be at least 1 and max {} at least min",
            r.min, r.max
        ));
    }
    Ok(Some(r))
}

/// The table `[name]` of an experiment file (`empty` when absent), refusing a value that is
/// not a table and any key not in `known`: a misspelt key must be the file's error, never
/// a setting silently left at its default.
fn section<'a>(
    doc: &'a toml::Table,
    name: &str,
    known: &[&str],
    empty: &'a toml::Table,
) -> Result<&'a toml::Table, String> {
    let t = match doc.get(name) {
        None => return Ok(empty),
        Some(toml::Value::Table(t)) => t,
        Some(o) => return Err(format!("{name} = {o}: must be a table, written [{name}]")),
    };
    for k in t.keys() {
        if !known.contains(&k.as_str()) {
            return Err(format!(
                "[{name}] {k}: unknown key; use {}",
                known.join(", ")
            ));
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_and_rules() {
        let e = Experiment::parse(
            Path::new("t.toml"),
            r#"
            [cell]
            "load.matches" = [10, 100]
            "block.scheduler" = ["none", "mq-deadline"]
            "load.tick-hz" = 32
            [[exclude]]
            "load.matches" = 100
            "block.scheduler" = "none"
            [[include]]
            kind = "fio"
            "fio.rw" = ["write", "read"]
            "#,
        )
        .unwrap();
        assert_eq!(e.dims, vec!["load.matches", "block.scheduler", "fio.rw"]);
        assert_eq!(e.excluded, 1);
        assert_eq!(e.cells.len(), 3 + 2);
        let fio: Vec<&Cell> = e.cells.iter().filter(|c| c.kind() == "fio").collect();
        assert_eq!(fio.len(), 2);
        assert_eq!(fio[1].workload(), "disk-read");
        assert_eq!(
            fio[0].get("load.tick-hz"),
            Some("32"),
            "anchors inherit load scalars"
        );
        assert!(e.cells.iter().all(|c| c.get("load.tick-hz") == Some("32")));
        assert_eq!(e.cells[0].id, "c0000");
    }

    #[test]
    fn list_valued_exclude_rules_and_anchor_inheritance() {
        let e = Experiment::parse(
            Path::new("t.toml"),
            r#"
            [cell]
            "server.backend" = ["blocking", "uring"]
            "file.write-op" = ["write", "writev", "write-fixed"]
            "load.matches" = 7
            [[exclude]]
            "server.backend" = "blocking"
            "file.write-op" = ["writev", "write-fixed"]
            [[include]]
            kind = "iperf3"
            "#,
        )
        .unwrap();
        assert_eq!(e.excluded, 2);
        let rec: Vec<&Cell> = e.cells.iter().filter(|c| c.kind() == "recorder").collect();
        assert_eq!(rec.len(), 4);
        assert!(rec
            .iter()
            .all(|c| !(c.get("server.backend") == Some("blocking")
                && c.get("file.write-op") != Some("write"))));
        let ip = e.cells.iter().find(|c| c.kind() == "iperf3").unwrap();
        assert_eq!(
            ip.get("server.backend"),
            None,
            "anchors do not inherit engine keys"
        );
        assert_eq!(
            ip.get("load.matches"),
            Some("7"),
            "but they keep load scalars"
        );
        assert_eq!(ip.workload(), "net");
        assert_eq!(
            e.dims,
            vec!["server.backend", "file.write-op"],
            "kind has its own column"
        );
    }

    #[test]
    fn bad_names_are_refused_with_the_fix() {
        let err = Experiment::parse(Path::new("t.toml"), "[cell]\n\"bogus.x\" = 1\n").unwrap_err();
        assert!(err.contains("unknown namespace"), "{err}");
        let err =
            Experiment::parse(Path::new("t.toml"), "[cell]\n\"block.colour\" = 1\n").unwrap_err();
        assert!(err.contains("scheduler"), "{err}");
        let err = Experiment::parse(
            Path::new("t.toml"),
            "[cell]\n\"ring.no-such-knob\" = [1,2]\n",
        )
        .unwrap_err();
        assert!(err.contains("recorder options"), "{err}");
        let err = Experiment::parse(Path::new("t.toml"), "typo = 1\n").unwrap_err();
        assert!(err.contains("unknown top-level key"), "{err}");
    }

    /// A misspelt key in [target], [limits] or [repeat] was left at its default without a
    /// word (`min_free_mbb = 4096` dropped no cache, `steal = 5` kept the 10% limit).
    #[test]
    fn unknown_keys_of_target_limits_and_repeat_are_errors_naming_the_key() {
        for (text, named) in [
            ("[target]\nmin_free_mbb = 4096\n", "[target] min_free_mbb"),
            ("[limits]\nsteal = 5\n", "[limits] steal"),
            ("[repeat]\nminimum = 3\n", "[repeat] minimum"),
            ("target = 3\n", "target = 3"),
            ("[target]\nkind = 5\n", "[target] kind = 5"),
            ("[target]\ndirect_io = \"yes\"\n", "[target] direct_io"),
        ] {
            let err = Experiment::parse(Path::new("t.toml"), text).unwrap_err();
            assert!(err.contains(named), "{text}: {err}");
        }
        let e = Experiment::parse(
            Path::new("t.toml"),
            "[target]\nkind = \"dir\"\nmin_free_mb = 10\n[limits]\nsteal_pct = 5\n",
        )
        .unwrap();
        assert_eq!((e.target.min_free_mb, e.steal_limit_pct), (10, 5.0));
    }

    /// ci.toml's bulk-ingest cell needs 20 pairs to see 5% while the other cells keep 10;
    /// `[repeat]` is global, so an [[include]] entry sets its own cells' counts.
    #[test]
    fn an_include_entry_sets_its_own_cells_repetitions() {
        let e = Experiment::parse(
            Path::new("t.toml"),
            r#"
            [repeat]
            min = 10
            max = 10
            retries = 6
            [[include]]
            workload = "bulk-ingest"
            "load.delta" = "fixed:16k"
            "repeat.min" = 20
            [[include]]
            workload = "serve"
            repeat = { min = 4, max = 8, retries = 2 }
            [[include]]
            workload = "ingest"
            "#,
        )
        .unwrap();
        let by = |w: &str| e.cells.iter().find(|c| c.workload() == w).unwrap();
        let bulk = e.repeat_for(&by("bulk-ingest").id);
        assert_eq!(
            (bulk.min, bulk.max, bulk.retries),
            (20, 20, 6),
            "max follows min"
        );
        let serve = e.repeat_for(&by("serve").id);
        assert_eq!((serve.min, serve.max, serve.retries), (4, 8, 2));
        assert_eq!(e.repeat_for(&by("ingest").id), &e.repeat);
        assert!(
            e.cells
                .iter()
                .all(|c| c.values.keys().all(|k| !k.starts_with("repeat"))),
            "the counts are not cell keys (nor columns, nor recorder arguments)"
        );
        assert!(
            !e.dims.iter().any(|d| d.starts_with("repeat")),
            "{:?}",
            e.dims
        );

        for (text, named) in [
            (
                "[[include]]\nworkload = \"serve\"\n\"repeat.minimum\" = 3\n",
                "repeat.minimum",
            ),
            (
                "[[include]]\nworkload = \"serve\"\n\"repeat.min\" = [3, 5]\n",
                "not a list",
            ),
            (
                "[[include]]\nworkload = \"serve\"\n\"repeat.min\" = 2.5\n",
                "whole number",
            ),
            (
                "[[include]]\nworkload = \"serve\"\n\"repeat.min\" = 5\n\"repeat.max\" = 3\n",
                "at least min",
            ),
            (
                "[[include]]\n\"repeat.min\" = 5\n",
                "names no cells",
            ),
            (
                "[cell]\n\"repeat.min\" = 5\n",
                "[repeat] sets every cell's",
            ),
            (
                "[[include]]\nworkload = \"serve\"\n[[exclude]]\n\"repeat.min\" = 5\n",
                "[[include]] entry",
            ),
            (
                "[[include]]\nworkload = \"serve\"\n\"repeat.min\" = 5\n[[include]]\nworkload = \"serve\"\n\"repeat.min\" = 7\n",
                "different repeat.* counts",
            ),
        ] {
            let err = Experiment::parse(Path::new("t.toml"), text).unwrap_err();
            assert!(err.contains(named), "{text}: {err}");
        }
    }
}

//! `analysis compare` on hand-made A/B sweep directories: which metrics are gated (open
//! loop, anchors, latency with a large A/A spread), margins from an A/A sweep (`--aa`),
//! `--json`, and the refusal to pair sweeps of different experiments.

use std::path::{Path, PathBuf};
use std::process::Command;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("analysis-cmp-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_analysis"))
}

/// Metric values of one run, `(column, value)`.
type Vals<'a> = Vec<(&'a str, f64)>;

/// One cell of a hand-made sweep: kind, workload, load column, and per pair the metric
/// values of (base, head) as `column=value` lists.
struct CellSpec<'a> {
    id: &'a str,
    kind: &'a str,
    workload: &'a str,
    load: &'a str,
    pairs: Vec<(Vals<'a>, Vals<'a>)>,
}

const COLS: &[&str] = &[
    "throughput_mb_per_s",
    "cpu_s_per_gib",
    "ack_p50_us",
    "ack_p90_us",
    "ack_p99_us",
    "sent_mb_per_s",
];

/// Writes DIR/base and DIR/head as `harness sweep --ab` does.
fn ab_sweep(dir: &Path, experiment: &str, cells: &[CellSpec]) {
    for (side, pick) in [("base", 0usize), ("head", 1)] {
        let d = dir.join(side);
        std::fs::create_dir_all(&d).unwrap();
        let manifest = serde_json::json!({
            "schema": 2, "dimensions": ["x"], "experiment_name": "t",
            "experiment": experiment, "git_rev": side,
        });
        std::fs::write(d.join("manifest.json"), manifest.to_string()).unwrap();
        let mut csv = format!(
            "run_id,cell_id,rep,pair,revision,kind,workload,status,dim.x,load,{}\n",
            COLS.join(",")
        );
        for c in cells {
            for (i, p) in c.pairs.iter().enumerate() {
                let vals = if pick == 0 { &p.0 } else { &p.1 };
                let row: Vec<String> = COLS
                    .iter()
                    .map(|k| {
                        vals.iter()
                            .find(|(n, _)| n == k)
                            .map(|(_, v)| v.to_string())
                            .unwrap_or_default()
                    })
                    .collect();
                csv.push_str(&format!(
                    "{id}-r{r},{id},{r},{r},{side},{kind},{wl},ok,{id},\"{load}\",{}\n",
                    row.join(","),
                    id = c.id,
                    r = i + 1,
                    kind = c.kind,
                    wl = c.workload,
                    load = c.load,
                ));
            }
        }
        std::fs::write(d.join("runs.csv"), csv).unwrap();
    }
}

/// n pairs where head = base x `factor` for `metric`, with a small alternating noise.
fn pairs(
    n: usize,
    base: &[(&'static str, f64)],
    factor: &[(&'static str, f64)],
) -> Vec<(Vals<'static>, Vals<'static>)> {
    (0..n)
        .map(|i| {
            let wobble = 1.0 + 0.002 * ((i % 3) as f64 - 1.0);
            let b: Vec<(&str, f64)> = base.iter().map(|(k, v)| (*k, v * wobble)).collect();
            let h: Vec<(&str, f64)> = base
                .iter()
                .map(|(k, v)| {
                    let f = factor.iter().find(|(n, _)| n == k).map_or(1.0, |x| x.1);
                    let noise = 1.0 + 0.003 * (((i * 7) % 5) as f64 - 2.0) / 2.0;
                    (*k, v * wobble * f * noise)
                })
                .collect();
            (b, h)
        })
        .collect()
}

fn run_json(args: &[&Path], extra: &[&str]) -> (i32, serde_json::Value, String) {
    let o = bin()
        .arg("compare")
        .args(args)
        .args(extra)
        .arg("--json")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let v = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (o.status.code().unwrap_or(-1), v, err)
}

fn row<'a>(v: &'a serde_json::Value, cell: &str, metric: &str) -> &'a serde_json::Value {
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["cell_id"] == cell && r["metric"] == metric)
        .unwrap_or_else(|| panic!("no row {cell} {metric}: {v:#}"))
}

const GAME: &[(&str, f64)] = &[
    ("throughput_mb_per_s", 17.3),
    ("sent_mb_per_s", 17.3),
    ("cpu_s_per_gib", 14.0),
    ("ack_p50_us", 600.0),
    ("ack_p90_us", 1100.0),
    ("ack_p99_us", 1400.0),
];
const BULK: &[(&str, f64)] = &[("throughput_mb_per_s", 1600.0), ("cpu_s_per_gib", 0.66)];

#[test]
fn open_loop_throughput_and_anchors_are_shown_not_gated() {
    let d = tmp("gating");
    ab_sweep(
        &d,
        "x",
        &[
            // Open loop: acked throughput 20% lower (the generator's problem, not a
            // verdict), CPU and latency unchanged.
            CellSpec {
                id: "c0000",
                kind: "recorder",
                workload: "ingest",
                load: "matches=200;tick-hz=64",
                pairs: pairs(10, GAME, &[("throughput_mb_per_s", 0.8)]),
            },
            // An anchor 20% slower: the machine, not the build.
            CellSpec {
                id: "c0001",
                kind: "fio",
                workload: "disk-write",
                load: "",
                pairs: pairs(
                    10,
                    &[("throughput_mb_per_s", 900.0)],
                    &[("throughput_mb_per_s", 0.8)],
                ),
            },
            CellSpec {
                id: "c0002",
                kind: "recorder",
                workload: "bulk-ingest",
                load: "matches=8;tick-hz=0",
                pairs: pairs(10, BULK, &[]),
            },
        ],
    );
    let (code, v, err) = run_json(&[&d.join("base"), &d.join("head")], &[]);
    assert_eq!(code, 0, "{err}\n{v:#}");
    let tp = row(&v, "c0000", "throughput_mb_per_s");
    assert_eq!(tp["verdict"], "REGRESSION", "{tp}");
    assert_eq!(tp["gated"], false);
    assert!(tp["not_gated_because"]
        .as_str()
        .unwrap()
        .contains("offered"));
    assert!((tp["offered_mb_per_s"]["head"].as_f64().unwrap() - 17.3).abs() < 0.2);
    let fio = row(&v, "c0001", "throughput_mb_per_s");
    assert_eq!(
        (fio["verdict"].as_str(), fio["gated"].as_bool()),
        (Some("REGRESSION"), Some(false))
    );
    // Open loop by default: CPU, p50, p90 (gated: small spread), p99 shown only.
    for m in ["cpu_s_per_gib", "ack_p50_us", "ack_p90_us"] {
        let r = row(&v, "c0000", m);
        assert_eq!(r["gated"], true, "{r}");
        assert_eq!(r["verdict"], "SAME", "{r}");
    }
    assert_eq!(row(&v, "c0000", "ack_p99_us")["gated"], false);
    // Closed loop by default: throughput and CPU.
    assert_eq!(row(&v, "c0002", "throughput_mb_per_s")["gated"], true);
    assert_eq!(row(&v, "c0002", "cpu_s_per_gib")["gated"], true);
    assert!(v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["cell_id"] != "c0002" || !r["metric"].as_str().unwrap().starts_with("ack")));
    assert_eq!(
        v["verdicts"]["REGRESSION"], 0,
        "only gated verdicts are counted"
    );
    assert_eq!(v["regression"], false);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_five_percent_cpu_regression_is_caught_with_margins_from_an_aa_sweep() {
    let d = tmp("aa");
    let cells = |cpu: f64| {
        vec![CellSpec {
            id: "c0000",
            kind: "recorder",
            workload: "bulk-ingest",
            load: "matches=8;tick-hz=0",
            pairs: pairs(
                10,
                BULK,
                &[("cpu_s_per_gib", cpu), ("throughput_mb_per_s", 1.0 / cpu)],
            ),
        }]
    };
    ab_sweep(&d.join("aa"), "x", &cells(1.0));
    ab_sweep(&d.join("ab"), "x", &cells(1.05));
    let (code, v, err) = run_json(
        &[&d.join("ab/base"), &d.join("ab/head")],
        &["--aa", d.join("aa").to_str().unwrap()],
    );
    assert_eq!(code, 1, "{err}\n{v:#}");
    for m in ["cpu_s_per_gib", "throughput_mb_per_s"] {
        let r = row(&v, "c0000", m);
        assert_eq!(r["verdict"], "REGRESSION", "{r}");
        assert_eq!(r["margin"]["source"], "aa_pairs", "{r}");
        assert!(
            (r["delta"].as_f64().unwrap() - 0.03).abs() < 1e-9,
            "the floor: {r}"
        );
    }
    assert_eq!(v["exit_code"], 1);
    // The A/A sweep itself is never a regression.
    let (code, v, err) = run_json(&[&d.join("aa/base"), &d.join("aa/head")], &[]);
    assert_eq!(code, 0, "{err}\n{v:#}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn sweeps_of_different_experiments_are_refused_unless_told_otherwise() {
    let d = tmp("identity");
    let recorder = |pairs_| CellSpec {
        id: "c0000",
        kind: "recorder",
        workload: "bulk-ingest",
        load: "",
        pairs: pairs_,
    };
    ab_sweep(
        &d.join("a"),
        "name = \"a\"",
        &[recorder(pairs(8, BULK, &[]))],
    );
    // Same cell id, but a fio anchor: the +1541% pairing.
    ab_sweep(
        &d.join("b"),
        "name = \"b\"",
        &[CellSpec {
            id: "c0000",
            kind: "fio",
            workload: "disk-write",
            load: "",
            pairs: pairs(8, &[("throughput_mb_per_s", 90.0)], &[]),
        }],
    );
    let o = bin()
        .arg("compare")
        .arg(d.join("a/base"))
        .arg(d.join("b/head"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("not sweeps of the same experiment")
            && err.contains("experiment files differ")
            && err.contains("cell c0000 is `recorder bulk-ingest")
            && err.contains("`fio disk-write"),
        "{err}"
    );
    // Told otherwise: compared, but the two different cells of one id are not paired.
    let (code, v, err) = run_json(
        &[&d.join("a/base"), &d.join("b/head")],
        &["--allow-different-experiments"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(v["rows"].as_array().unwrap().is_empty(), "{v:#}");
    assert!(!v["not_the_same_experiment"].as_array().unwrap().is_empty());
    assert!(v["unpaired"].as_array().unwrap().len() >= 8);
    // An --aa sweep of another experiment is refused too.
    let o = bin()
        .arg("compare")
        .arg(d.join("a/base"))
        .arg(d.join("a/head"))
        .arg("--aa")
        .arg(d.join("b"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--aa"));
    let _ = std::fs::remove_dir_all(&d);
}

/// Pairs of a bulk-ingest cell from head/base MB/s changes (%), CPU s/GiB moving inversely.
fn bulk_pairs(changes: &[f64]) -> Vec<(Vals<'static>, Vals<'static>)> {
    changes
        .iter()
        .map(|c| {
            let f = 1.0 + c / 100.0;
            (
                vec![("throughput_mb_per_s", 1200.0), ("cpu_s_per_gib", 0.9)],
                vec![
                    ("throughput_mb_per_s", 1200.0 * f),
                    ("cpu_s_per_gib", 0.9 / f),
                ],
            )
        })
        .collect()
}

/// Power study 2026-12-01, round 3: a noisy A/A sweep (pairs +12.7 .. -10.3%) set the
/// margins of its round to 7.2% (MB/s) and 6.4% (CPU s/GiB), and a ~6% injection whose 10
/// pairs were all worse (p = 0.001) was INCONCLUSIVE on MB/s. The pair noise now pools the
/// A/A pairs with the judged ones, and the A/A bias counts only beyond its chance spread.
#[test]
fn one_noisy_aa_sweep_does_not_hide_a_six_percent_loss() {
    let d = tmp("noisy-aa");
    let cell = |changes: &[f64]| {
        vec![CellSpec {
            id: "c0000",
            kind: "recorder",
            workload: "bulk-ingest",
            load: "matches=8;tick-hz=0",
            pairs: bulk_pairs(changes),
        }]
    };
    // The pairs measured in that round (MB/s change per pair).
    let aa = [12.7, 7.0, 8.9, 3.6, -3.2, 4.6, -4.2, -3.2, -10.3, 5.1];
    let inj = [-5.5, -3.7, -7.3, -6.8, -7.5, -6.0, -10.3, -4.0, -6.7, -3.6];
    ab_sweep(&d.join("aa"), "x", &cell(&aa));
    ab_sweep(&d.join("inj"), "x", &cell(&inj));
    let (code, v, err) = run_json(
        &[&d.join("inj/base"), &d.join("inj/head")],
        &["--aa", d.join("aa").to_str().unwrap()],
    );
    assert_eq!(code, 1, "{err}\n{v:#}");
    for m in ["cpu_s_per_gib", "throughput_mb_per_s"] {
        let r = row(&v, "c0000", m);
        assert_eq!(r["verdict"], "REGRESSION", "{r}");
        assert!(r["delta"].as_f64().unwrap() < 0.05, "{r}");
        assert!(
            r["margin"]["aa_bias"].as_f64().unwrap() > 0.035,
            "shown: {r}"
        );
    }
    // A systematic offset between two identical sides still widens the margin: every A/A
    // pair 6% apart (noise 0.3%) keeps a 5% loss from being called a REGRESSION.
    let offset: Vec<f64> = (0..10).map(|i| -6.0 + 0.1 * (i % 3) as f64).collect();
    let loss: Vec<f64> = (0..10).map(|i| -5.0 + 0.1 * (i % 3) as f64).collect();
    ab_sweep(&d.join("aa2"), "x", &cell(&offset));
    ab_sweep(&d.join("inj2"), "x", &cell(&loss));
    let (code, v, err) = run_json(
        &[&d.join("inj2/base"), &d.join("inj2/head")],
        &["--aa", d.join("aa2").to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}\n{v:#}");
    let r = row(&v, "c0000", "throughput_mb_per_s");
    assert!(r["delta"].as_f64().unwrap() > 0.055, "{r}");
    assert_ne!(r["verdict"], "REGRESSION", "{r}");
    let _ = std::fs::remove_dir_all(&d);
}

//! End-to-end tests of the `analysis` commands on synthetic sweeps (gen-fixture).

use std::path::{Path, PathBuf};
use std::process::Command;

use analysis::compare::{compare, CompareOptions, Verdict};
use analysis::data::m;
use analysis::fixture::{generate, FixtureSpec, IOPOLL_REASON};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("analysis-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_analysis"))
}

fn assert_chart(dir: &Path, stem: &str) {
    let png = dir.join(format!("{stem}.png"));
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{} missing: {e}", png.display()));
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        png.display()
    );
    assert!(
        bytes.len() > 5_000,
        "{} is only {} bytes",
        png.display(),
        bytes.len()
    );
    let svg = std::fs::read_to_string(dir.join(format!("{stem}.svg"))).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("</svg>") && svg.len() > 1_000,
        "{stem}.svg is not a drawn SVG"
    );
    assert!(
        svg.contains("<text"),
        "{stem}.svg has no text (title, labels)"
    );
}

#[test]
fn report_writes_every_chart_and_a_self_contained_html() {
    let d = tmp("report");
    let sweep = d.join("sweep");
    generate(
        &sweep,
        &FixtureSpec {
            runs: 288 * 2,
            reps: 2,
            samples: 12,
            ..FixtureSpec::default()
        },
    )
    .unwrap();
    let out = bin().arg("report").arg(&sweep).output().unwrap();
    assert!(
        out.status.success(),
        "report failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep = sweep.join("report");
    for stem in [
        "throughput-bulk-ingest",
        "latency-bulk-ingest",
        "effects-bulk-ingest",
        "cpu-per-gib-bulk-ingest",
        "ios-per-syscall-bulk-ingest",
        "ratios-bulk-ingest",
        "timeseries",
    ] {
        assert_chart(&rep, stem);
    }
    let heatmaps: Vec<String> = std::fs::read_dir(&rep)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
        .filter(|n| n.starts_with("heatmap-") && n.ends_with(".png"))
        .collect();
    assert!(
        !heatmaps.is_empty() && heatmaps.len() <= analysis::report::MAX_HEATMAPS,
        "{heatmaps:?}"
    );
    for h in &heatmaps {
        assert_chart(&rep, h.trim_end_matches(".png"));
    }
    let md = std::fs::read_to_string(rep.join("report.md")).unwrap();
    let html = std::fs::read_to_string(rep.join("report.html")).unwrap();
    // Unsupported cells with their reason, the machine from the manifest, the anchors.
    assert!(
        md.contains(IOPOLL_REASON),
        "unsupported reason missing from report.md"
    );
    assert!(
        md.contains("6.18.0-fixture") && md.contains("Synthetic CPU"),
        "machine missing"
    );
    assert!(
        md.contains("fio disk-write") && md.contains("÷ blocking backend"),
        "ratios missing"
    );
    assert!(md.contains("![") && md.contains("throughput-bulk-ingest.png"));
    // Self-contained: charts inline, no references to image files.
    assert!(
        html.matches("<svg").count() >= 7 + heatmaps.len(),
        "charts not inlined"
    );
    assert!(
        !html.contains("src=\""),
        "report.html refers to external files"
    );
    // The timeseries chart shows the median run of the best configuration.
    assert!(md.contains("The median run of the best configuration"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn report_run_option_selects_the_run_and_rejects_unknown_ids() {
    let d = tmp("report-run");
    let sweep = d.join("sweep");
    generate(
        &sweep,
        &FixtureSpec {
            runs: 48,
            reps: 3,
            samples: 8,
            ..FixtureSpec::default()
        },
    )
    .unwrap();
    let out = bin()
        .args(["report", "--run", "c0003-r2"])
        .arg(&sweep)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = std::fs::read_to_string(sweep.join("report/report.md")).unwrap();
    assert!(md.contains("Run `c0003-r2`"), "chosen run not shown");
    let out = bin()
        .args(["report", "--run", "nope"])
        .arg(&sweep)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--run nope") && err.contains("runs.csv"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

fn ab(d: &Path, slowdown: f64, shared: Option<u64>) -> (PathBuf, PathBuf) {
    let base = d.join("base");
    let head = d.join("head");
    let spec = FixtureSpec {
        runs: 24 * 8,
        reps: 8,
        samples: 0,
        shared_noise_seed: shared,
        ..FixtureSpec::default()
    };
    generate(
        &base,
        &FixtureSpec {
            revision: "base".into(),
            seed: 21,
            ..spec.clone()
        },
    )
    .unwrap();
    generate(
        &head,
        &FixtureSpec {
            revision: "head".into(),
            seed: 22,
            slowdown,
            ..spec
        },
    )
    .unwrap();
    (base, head)
}

#[test]
fn aa_compare_is_same_or_inconclusive_never_regression() {
    for (name, shared) in [("aa-interleaved", Some(5)), ("aa-independent", None)] {
        let d = tmp(name);
        let (base, head) = ab(&d, 0.0, shared);
        let c = compare(
            &base,
            &head,
            &CompareOptions::metrics(&["throughput", "p99", "cpu"]),
        )
        .unwrap();
        assert!(!c.rows.is_empty());
        assert_eq!(
            c.count(Verdict::Regression),
            0,
            "{name}:\n{}",
            c.summary_text()
        );
        assert_eq!(
            c.count(Verdict::Improved),
            0,
            "{name}:\n{}",
            c.summary_text()
        );
        let tp: Vec<_> = c
            .rows
            .iter()
            .filter(|r| r.metric == m::THROUGHPUT)
            .collect();
        // Interleaved pairs share the run-to-run noise: most throughput rows are SAME.
        // Independent runs (no pairing) leave the pair noise whole: INCONCLUSIVE is then
        // the honest answer for many rows, never a REGRESSION.
        let same = tp.iter().filter(|r| r.verdict == Verdict::Same).count();
        if shared.is_some() {
            assert!(
                same * 2 > tp.len(),
                "{name}: only {same} of {} throughput rows SAME",
                tp.len()
            );
        }
        let out = bin().arg("compare").arg(&base).arg(&head).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("0 REGRESSION") && stdout.contains("verdict"),
            "{stdout}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[test]
fn injected_slowdown_is_a_regression_with_exit_code_1() {
    let d = tmp("regression");
    let (base, head) = ab(&d, 0.15, Some(5));
    let out_md = d.join("out").join("cmp.md");
    let out = bin()
        .arg("compare")
        .arg(&base)
        .arg(&head)
        .arg("--out")
        .arg(&out_md)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("REGRESSION"), "{stdout}");
    let c = compare(
        &base,
        &head,
        &CompareOptions {
            out: Some(d.join("lib").join("c.md")),
            ..CompareOptions::metrics(&["throughput"])
        },
    )
    .unwrap();
    let tp: Vec<_> = c.rows.iter().filter(|r| r.kind == "recorder").collect();
    let reg = tp
        .iter()
        .filter(|r| r.verdict == Verdict::Regression)
        .count();
    assert!(
        reg * 10 >= tp.len() * 9,
        "only {reg} of {} recorder configs flagged:\n{}",
        tp.len(),
        c.summary_text()
    );
    for r in &tp {
        assert!(
            r.ratio < 0.92 && r.ratio > 0.78,
            "{} ratio {}",
            r.label,
            r.ratio
        );
    }
    // The anchors did not change: never a regression.
    assert!(c
        .rows
        .iter()
        .filter(|r| r.kind != "recorder")
        .all(|r| r.verdict != Verdict::Regression));
    // compare.md and its charts next to --out; the failed and rejected runs are listed.
    let md = std::fs::read_to_string(&out_md).unwrap();
    assert!(
        md.contains("REGRESSION")
            && md.contains("recorder exited with signal 11")
            && md.contains("steal 12.4%"),
        "{md}"
    );
    assert_chart(out_md.parent().unwrap(), "compare-throughput");
    assert_chart(out_md.parent().unwrap(), "compare-cpu");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn best_writes_the_known_best_configuration_as_toml() {
    let d = tmp("best");
    let sweep = d.join("sweep");
    let info = generate(
        &sweep,
        &FixtureSpec {
            runs: 288 * 3,
            reps: 3,
            samples: 0,
            ..FixtureSpec::default()
        },
    )
    .unwrap();
    let out_file = d.join("best.toml");
    let out = bin()
        .arg("best")
        .arg(&sweep)
        .arg("--out")
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&out_file).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        text,
        "stdout and file differ"
    );
    let doc: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("not TOML: {e}\n{text}"));
    for s in ["ring", "file", "net", "server"] {
        assert!(
            doc.get(s).is_some_and(|v| v.is_table()),
            "section [{s}] missing:\n{text}"
        );
    }
    assert_eq!(doc.len(), 4, "only the four recorder sections: {text}");
    // The model's best (the tie on coop-taskrun, which has no effect, goes to the default).
    assert!(info
        .best
        .contains(&("ring.coop-taskrun".into(), "false".into())));
    for (dim, value) in &info.best {
        let (section, knob) = dim.split_once('.').unwrap();
        if section == "block" {
            assert!(
                text.contains(&format!(
                    "#   echo {value} > /sys/block/<dev>/queue/{}",
                    knob.replace('-', "_")
                )),
                "{text}"
            );
            assert!(doc.get(section).is_none());
            continue;
        }
        let got = &doc[section][knob];
        match value.as_str() {
            "true" | "false" => assert_eq!(got.as_bool(), Some(value == "true"), "{dim}:\n{text}"),
            v => assert_eq!(got.as_str(), Some(v), "{dim}:\n{text}"),
        }
    }
    assert!(
        text.contains("# runner-ups:")
            && (text.contains("90% interval") || text.contains("(range "))
            && text.contains(&format!("# source sweep: {}", sweep.display()))
    );
    for metric in ["p99", "efficiency"] {
        let out = bin()
            .args(["best", "--metric", metric])
            .arg(&sweep)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{metric}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let t: toml::Table = String::from_utf8_lossy(&out.stdout).parse().unwrap();
        assert!(t.contains_key("ring"));
    }
    // Efficiency (CPU s/GiB) prefers no SQPOLL thread in the model.
    let eff: toml::Table = std::fs::read_to_string(sweep.join("best-efficiency.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(eff["ring"]["sqpoll"].as_bool(), Some(false));
    let bad = bin()
        .args(["best", "--metric", "speed"])
        .arg(&sweep)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("use throughput, p99 or efficiency"));
    let _ = std::fs::remove_dir_all(&d);
}

fn write_sweep(d: &Path, runs_csv: &str) {
    std::fs::create_dir_all(d).unwrap();
    std::fs::write(
        d.join("manifest.json"),
        r#"{"schema":1,"dimensions":["ring.sqpoll"]}"#,
    )
    .unwrap();
    std::fs::write(d.join("runs.csv"), runs_csv).unwrap();
}

fn report_err(d: &Path) -> String {
    let out = bin().arg("report").arg(d).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected failure; stdout {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn malformed_input_names_file_line_and_column() {
    let d = tmp("malformed");
    let head = "run_id,cell_id,rep,pair,revision,kind,workload,status,reason,dim.ring.sqpoll,throughput_mbps\n";
    let good = "c1-r1,c1,1,,head,recorder,ingest,ok,,true,500.5\n";

    let s = d.join("bad-number");
    write_sweep(
        &s,
        &format!("{head}{good}c1-r2,c1,2,,head,recorder,ingest,ok,,true,12x.5\n"),
    );
    let e = report_err(&s);
    assert!(
        e.contains("runs.csv:3: column 11 (throughput_mbps)")
            && e.contains("\"12x.5\" is not a number"),
        "{e}"
    );

    let s = d.join("missing-column");
    write_sweep(&s, "run_id,cell_id,rep,revision,kind,workload,dim.ring.sqpoll,throughput_mbps\nc1-r1,c1,1,head,recorder,ingest,true,1\n");
    let e = report_err(&s);
    assert!(
        e.contains("runs.csv:1:") && e.contains("required column `status` is missing"),
        "{e}"
    );

    let s = d.join("missing-dim");
    write_sweep(&s, "run_id,cell_id,rep,revision,kind,workload,status,throughput_mbps\nc1-r1,c1,1,head,recorder,ingest,ok,1\n");
    let e = report_err(&s);
    assert!(e.contains("column `dim.ring.sqpoll` is missing"), "{e}");

    let s = d.join("bad-status");
    write_sweep(
        &s,
        &format!("{head}{good}c1-r2,c1,2,,head,recorder,ingest,okay,,true,1\n"),
    );
    let e = report_err(&s);
    assert!(
        e.contains("runs.csv:3: column 8 (status)") && e.contains("unknown status \"okay\""),
        "{e}"
    );

    let s = d.join("bad-rep");
    write_sweep(
        &s,
        &format!("{head}c1-r1,c1,one,,head,recorder,ingest,ok,,true,1\n"),
    );
    let e = report_err(&s);
    assert!(e.contains("runs.csv:2: column 3 (rep)"), "{e}");

    let s = d.join("ragged");
    write_sweep(&s, &format!("{head}{good}c1-r2,c1,2\n"));
    let e = report_err(&s);
    assert!(
        e.contains("runs.csv:3") && e.contains("malformed CSV row"),
        "{e}"
    );

    let s = d.join("duplicate-run");
    write_sweep(&s, &format!("{head}{good}{good}"));
    let e = report_err(&s);
    assert!(
        e.contains("runs.csv:3: column 1 (run_id)") && e.contains("already used on line 2"),
        "{e}"
    );

    let s = d.join("bad-series");
    write_sweep(&s, &format!("{head}{good}"));
    std::fs::create_dir_all(s.join("timeseries")).unwrap();
    std::fs::write(
        s.join("timeseries/c1-r1.csv"),
        "t_s,throughput_mbps\n0.0,1.0\n0.25,fast\n",
    )
    .unwrap();
    let e = report_err(&s);
    assert!(
        e.contains("timeseries/c1-r1.csv:3: column 2 (throughput_mbps)") && e.contains("\"fast\""),
        "{e}"
    );

    let s = d.join("bad-manifest");
    write_sweep(&s, &format!("{head}{good}"));
    std::fs::write(
        s.join("manifest.json"),
        "{\"schema\": 1,\n \"dimensions\": [\n",
    )
    .unwrap();
    let e = report_err(&s);
    assert!(
        e.contains("manifest.json:3") && e.contains("not valid JSON"),
        "{e}"
    );

    let e = report_err(&d.join("does-not-exist"));
    assert!(e.contains("is not a directory"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn minimal_valid_sweep_reports() {
    // Only the required columns and one dimension: the report still works and says what is absent.
    let d = tmp("minimal");
    let head = "run_id,cell_id,rep,pair,revision,kind,workload,status,reason,dim.ring.sqpoll,throughput_mbps\n";
    let rows = "a1,a,1,,head,recorder,ingest,ok,,false,400\na2,a,2,,head,recorder,ingest,ok,,false,410\n\
                b1,b,1,,head,recorder,ingest,ok,,true,500\nb2,b,2,,head,recorder,ingest,unsupported,no SQPOLL here,true,\n";
    write_sweep(&d, &format!("{head}{rows}"));
    let out = bin().arg("report").arg(&d).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = std::fs::read_to_string(d.join("report/report.md")).unwrap();
    assert!(
        md.contains("runs.csv has no column for: frames_per_s"),
        "absent columns not reported"
    );
    assert!(md.contains("no SQPOLL here"));
    assert_chart(&d.join("report"), "throughput-ingest");
    let _ = std::fs::remove_dir_all(&d);
}

/// A real (tiny) sweep written by `harness sweep` (tests/data/harness-smoke: 2 dimensions,
/// 2 repetitions, a fio anchor, extra columns the harness adds after the documented ones).
#[test]
fn reads_a_real_harness_sweep() {
    let d = tmp("harness-smoke");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/harness-smoke");
    let sweep = d.join("sweep");
    std::fs::create_dir_all(sweep.join("timeseries")).unwrap();
    for f in ["manifest.json", "runs.csv"] {
        std::fs::copy(src.join(f), sweep.join(f)).unwrap();
    }
    for e in std::fs::read_dir(src.join("timeseries")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), sweep.join("timeseries").join(e.file_name())).unwrap();
    }
    let out = bin().arg("report").arg(&sweep).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = std::fs::read_to_string(sweep.join("report/report.md")).unwrap();
    assert!(
        md.contains("10 runs (10 ok)") && md.contains("`ring.sqpoll` (false, true)"),
        "{md}"
    );
    // An old open-loop ingest sweep (no `load` column: `ingest` is paced by default): ranked
    // by ack latency with acked vs offered, no throughput ratios to the anchors.
    assert!(
        md.contains("Open loop: ranked by ack latency")
            && md.contains("offered load, so its ratio"),
        "{md}"
    );
    assert_chart(&sweep.join("report"), "timeseries");
    let out = bin().arg("best").arg(&sweep).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t: toml::Table = String::from_utf8_lossy(&out.stdout).parse().unwrap();
    assert!(t["server"]["backend"].as_str().is_some() && t["ring"]["sqpoll"].as_bool().is_some());
    // The same sweep against itself: every pair has ratio 1 -> SAME, exit code 0.
    let c = compare(
        &sweep,
        &sweep,
        &CompareOptions {
            out: Some(d.join("c/compare.md")),
            ..CompareOptions::metrics(&["throughput"])
        },
    )
    .unwrap();
    assert_eq!(c.rows.len(), 5);
    assert!(
        c.rows
            .iter()
            .all(|r| r.verdict == Verdict::Same && r.pairs == 2),
        "{}",
        c.summary_text()
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn confirm_round_fails_only_on_a_regression_seen_twice() {
    let d = tmp("confirm");
    let (base, slow) = ab(&d.join("r1"), 0.15, Some(5));
    let (base2, slow2) = ab(&d.join("r2"), 0.15, Some(6));
    let (base3, same3) = ab(&d.join("r3"), 0.0, Some(7));
    let run = |b: &Path, h: &Path, b2: &Path, h2: &Path| {
        bin()
            .arg("compare")
            .arg(b)
            .arg(h)
            .args(["--metric", "throughput", "--confirm"])
            .arg(b2)
            .arg(h2)
            .output()
            .unwrap()
    };
    let out = run(&base, &slow, &base2, &slow2);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("second round:") && !stdout.contains("\n0 REGRESSION verdict(s) confirmed"),
        "{stdout}"
    );
    // A regression in the first round that the second round does not see is not confirmed.
    let out = run(&base, &slow, &base3, &same3);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 REGRESSION verdict(s) confirmed"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn version_names_the_git_revision() {
    let o = bin().arg("--version").output().unwrap();
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with(&format!("analysis {} (git ", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    assert!(out.trim_end().ends_with(')') && out.len() > 30, "{out}");
}

/// `analysis power`: the trials of a `harness power` study judged like CI (margins from
/// another round's A/A trial); A/A trials counted as false alarms, injected ones as
/// detections; an unfinished trial is listed, not counted.
#[test]
fn power_counts_false_alarms_and_detections_per_trial_kind() {
    let d = tmp("power");
    let trials = d.join("trials");
    for round in 1..=2u64 {
        for (kind, slowdown) in [("aa", 0.0), ("s15", 0.15)] {
            let (b, h) = ab(
                &trials.join(format!("{round:02}-{kind}")),
                slowdown,
                Some(round),
            );
            assert!(b.exists() && h.exists());
        }
    }
    // A round without an A/A trial of its own (`--aa-trials` below `--trials`).
    let (b, h) = ab(&trials.join("03-s15"), 0.15, Some(3));
    assert!(b.exists() && h.exists());
    // A trial whose head side never finished (no manifest).
    std::fs::create_dir_all(trials.join("03-aa/base")).unwrap();
    std::fs::write(
        d.join("power.json"),
        r#"{"trials": 3, "injections": [{"name": "s15", "args": ["--test-burn-rounds-per-kib", "99"]}]}"#,
    )
    .unwrap();
    let out = bin().arg("power").arg(&d).arg("--json").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kind = |k: &str| {
        j["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["kind"] == k)
            .unwrap_or_else(|| panic!("no kind {k}: {j}"))
            .clone()
    };
    assert_eq!(kind("aa")["trials"], 2, "{j}");
    assert_eq!(kind("aa")["trials_with_gated_regression"], 0, "{j}");
    assert_eq!(kind("s15")["trials"], 3, "{j}");
    assert_eq!(kind("s15")["trials_with_gated_regression"], 3, "{j}");
    assert_eq!(kind("s15")["head_args"], "--test-burn-rounds-per-kib 99");
    // Each trial's margins come from an A/A trial, never from its own pairs.
    for t in j["trials"].as_array().unwrap() {
        let own = t["dir"].as_str().unwrap();
        let from = t["margins_from"]
            .as_str()
            .expect("margins from an A/A trial");
        assert!(from.ends_with("-aa") && from != own, "{t}");
        if own.ends_with("03-s15") {
            assert!(from.ends_with("02-aa"), "the nearest earlier A/A: {t}");
        }
    }
    assert!(
        j["unfinished"][0].as_str().unwrap().ends_with("03-aa"),
        "{j}"
    );
    let md = std::fs::read_to_string(d.join("power.md")).unwrap();
    assert!(md.contains("3 of 3") && md.contains("0 of 2"), "{md}");
    let _ = std::fs::remove_dir_all(&d);
}

/// `report --by NAME`: each workload's configurations grouped by one dimension's value,
/// with the ratio of medians to the first value; an unknown name is a usage error that
/// lists the names there are.
#[test]
fn report_by_groups_configurations_and_rejects_unknown_names() {
    let d = tmp("report-by");
    let sweep = d.join("sweep");
    generate(
        &sweep,
        &FixtureSpec {
            runs: 192,
            reps: 3,
            samples: 4,
            ..FixtureSpec::default()
        },
    )
    .unwrap();
    let out = bin()
        .args(["report", "--by", "server.backend,file.direct"])
        .arg(&sweep)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = std::fs::read_to_string(sweep.join("report/report.md")).unwrap();
    assert!(md.contains("Grouped by `file.direct`"), "{md}");
    // The fixture makes the blocking backend 0.55x uring's throughput: the `blocking` row's
    // ratio of medians to the first value, `uring`.
    let row = md
        .lines()
        .skip_while(|l| !l.contains("Grouped by `server.backend`"))
        .find(|l| l.starts_with("| blocking |"))
        .unwrap_or_else(|| panic!("no `blocking` row in the --by section:\n{md}"));
    let ratio: f64 = row
        .split('|')
        .nth(5)
        .and_then(|c| {
            c.trim()
                .split(|ch: char| !ch.is_ascii_digit() && ch != '.')
                .next()
        })
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("no ratio in {row:?}"));
    assert!(
        (0.45..0.65).contains(&ratio),
        "blocking ratio {ratio} in {row:?}"
    );
    let out = bin()
        .args(["report", "--by", "ring.nope"])
        .arg(&sweep)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--by ring.nope") && err.contains("ring.sqpoll"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

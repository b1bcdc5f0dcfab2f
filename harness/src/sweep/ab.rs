//! A/B sweeps: building the base revision's recorder in a git worktree of its own.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::git_rev;
use crate::util::run_cmd;

/// Builds `rev` in a temporary git worktree; returns the recorder binary.
pub(crate) fn build_base(out: &Path, rev: &str) -> Result<(PathBuf, String), String> {
    let repo = std::env::current_dir().map_err(|e| e.to_string())?;
    let sha = git_rev(&repo, rev);
    if sha.is_empty() {
        return Err(format!(
            "--ab {rev}: not a revision of the repository in {}",
            repo.display()
        ));
    }
    let wt = out.join(".ab-base");
    if !wt.join("Cargo.toml").exists() {
        run_cmd(
            "git",
            &[
                "-C",
                &repo.to_string_lossy(),
                "worktree",
                "add",
                "--detach",
                &wt.to_string_lossy(),
                &sha,
            ],
        )
        .map_err(|e| format!("--ab: cannot create a worktree for {rev}: {e}"))?;
    }
    // A target dir of its own (so head's target/release/recorder is never overwritten) that
    // persists across A/B sweeps, so only the engine itself is rebuilt next time.
    let top = run_cmd(
        "git",
        &[
            "-C",
            &repo.to_string_lossy(),
            "rev-parse",
            "--show-toplevel",
        ],
    )
    .map(|s| PathBuf::from(s.trim()))
    .unwrap_or(repo.clone());
    let tdir = top.join("target/ab-base");
    // First A/B sweep of this checkout (a fresh CI clone): start from head's release build,
    // so that only the workspace's own crates are compiled again (the dependencies'
    // artifacts are the same; on 2 cores this saves minutes).
    let head_release = top.join("target/release");
    if !tdir.join("release").exists() && head_release.join("deps").is_dir() {
        let _ = std::fs::create_dir_all(&tdir);
        match run_cmd(
            "cp",
            &[
                "-a",
                &head_release.to_string_lossy(),
                &tdir.join("release").to_string_lossy(),
            ],
        ) {
            Ok(_) => eprintln!(
                "harness: seeded {} from {} (dependencies are not rebuilt)",
                tdir.display(),
                head_release.display()
            ),
            Err(e) => eprintln!("harness: could not seed the base build from head's: {e}"),
        }
    }
    eprintln!(
        "harness: building base revision {sha} in {} (cargo build --release -p engine, target dir {})",
        wt.display(),
        tdir.display()
    );
    let st = Command::new("cargo")
        .args(["build", "--release", "-p", "engine", "--bin", "recorder"])
        .env("CARGO_TARGET_DIR", &tdir)
        .current_dir(&wt)
        .status()
        .map_err(|e| format!("--ab: cannot run cargo: {e}"))?;
    if !st.success() {
        return Err(format!("--ab: building {rev} failed ({st})"));
    }
    let built = tdir.join("release/recorder");
    let bin = out.join("recorder-base");
    std::fs::copy(&built, &bin)
        .map_err(|e| format!("--ab: {} was not built ({e})", built.display()))?;
    Ok((bin, sha))
}

pub(crate) fn remove_base_worktree(out: &Path) {
    let wt = out.join(".ab-base");
    if wt.exists() {
        let repo = std::env::current_dir().unwrap_or_default();
        let _ = run_cmd(
            "git",
            &[
                "-C",
                &repo.to_string_lossy(),
                "worktree",
                "remove",
                "--force",
                &wt.to_string_lossy(),
            ],
        );
    }
}

pub fn default_recorder() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .map(|p| p.join("recorder"))
        .unwrap_or_else(|| PathBuf::from("recorder"))
}

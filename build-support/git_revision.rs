// Shared by the build scripts of engine, harness and analysis (`include!`d, so each crate
// stays self-contained): sets GIT_REVISION to the checkout's commit ("unknown" without git
// or outside a checkout, e.g. a source tarball; RECORDER_GIT_REVISION overrides it) and
// re-runs when HEAD moves.
use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let o = Command::new("git").args(args).output().ok()?;
    if !o.status.success() {
        return None;
    }
    let s = String::from_utf8(o.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=RECORDER_GIT_REVISION");
    let rev = std::env::var("RECORDER_GIT_REVISION")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| git(&["rev-parse", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    // Re-run when HEAD or the branch it names moves (only paths that exist: a missing one
    // would make cargo re-run the script on every build).
    let mut watch = Vec::new();
    if let Some(d) = git(&["rev-parse", "--absolute-git-dir"]) {
        watch.push(format!("{d}/HEAD"));
    }
    if let Some(c) = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]) {
        watch.push(format!("{c}/packed-refs"));
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch.push(format!("{c}/{r}"));
        }
    }
    for w in watch.iter().filter(|w| Path::new(w).exists()) {
        println!("cargo:rerun-if-changed={w}");
    }
    if watch.is_empty() {
        println!("cargo:rerun-if-changed=build.rs");
    }
    println!("cargo:rustc-env=GIT_REVISION={rev}");
}

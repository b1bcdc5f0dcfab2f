//! `manifest.json`, written by `harness sweep` into each side's directory (docs/results.md):
//! the facts a reader needs without parsing the whole file.

use std::path::Path;

/// The manifest's file name in a sweep (or sweep side) directory.
pub const FILE: &str = "manifest.json";

/// Whether the sweep in `dir` finished: its manifest exists, is JSON and has a
/// `finished_at` string (written when the sweep's last run is done; a sweep that was
/// interrupted or is still running has none).
pub fn finished(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|m| m["finished_at"].is_string())
}

/// Whether an A/B sweep directory (`base/` and `head/`, as `harness sweep --ab` and
/// `harness power` write them) has both sides finished.
pub fn ab_finished(dir: &Path) -> bool {
    ["base", "head"].iter().all(|s| finished(&dir.join(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ab_sweep_is_finished_only_when_both_manifests_say_so() {
        let d =
            std::env::temp_dir().join(format!("results-schema-manifest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        for s in ["base", "head"] {
            std::fs::create_dir_all(d.join(s)).unwrap();
        }
        std::fs::write(
            d.join("base").join(FILE),
            r#"{"finished_at":"2026-12-01T15:00:00Z"}"#,
        )
        .unwrap();
        assert!(!ab_finished(&d), "head has no manifest yet");
        std::fs::write(
            d.join("head").join(FILE),
            r#"{"started_at":"x","finished_at":null}"#,
        )
        .unwrap();
        assert!(!ab_finished(&d), "head is still running");
        std::fs::write(d.join("head").join(FILE), "{not json").unwrap();
        assert!(
            !ab_finished(&d),
            "a broken manifest is not a finished sweep"
        );
        std::fs::write(
            d.join("head").join(FILE),
            r#"{"finished_at":"2026-12-01T15:01:00Z"}"#,
        )
        .unwrap();
        assert!(ab_finished(&d));
        std::fs::remove_dir_all(&d).unwrap();
    }
}

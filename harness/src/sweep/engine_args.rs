//! A recorder cell's command-line flags, checked with the engine's own configuration rules.

use crate::experiment::{Cell, ENGINE_SECTIONS};

/// Knobs the harness sets itself for every recorder run.
pub(crate) const HARNESS_OWNED: &[&str] =
    &["server.store", "server.ingest-addr", "server.http-addr"];

/// A recorder cell's command line, checked.
pub struct CellArgs {
    pub args: Vec<String>,
    /// Setup flags asked for (`IORING_SETUP_*|...`; empty for the blocking backend).
    pub requested_flags: String,
    /// The whole configuration the cell asks for, defaults included.
    pub config: engine::config::Config,
}

/// The recorder's command-line arguments for a cell and the setup flags it requests,
/// validated with the engine's own rules first. A refusal is an error of the experiment
/// file, naming the key: `harness plan` and `harness sweep` check every cell with this
/// before anything runs (`crate::validate`).
pub fn cell_engine_args(cell: &Cell) -> Result<CellArgs, String> {
    let mut cfg = engine::config::Config::default();
    let _ = cfg.set("server.store", "/nonexistent-store-checked-by-the-recorder");
    let _ = cfg.set("server.ingest-addr", "127.0.0.1:0");
    let _ = cfg.set("server.http-addr", "127.0.0.1:0");
    if cell.workload() == "tier" {
        // The tier workload points the recorders at its own object store.
        let _ = cfg.set("tier.bucket", super::tier::BUCKET);
    }
    let mut args = Vec::new();
    for k in cell.values.keys() {
        if HARNESS_OWNED.contains(&k.as_str()) {
            return Err(format!(
                "{k} is set by the harness for every run; remove it from the experiment"
            ));
        }
    }
    for (k, v) in &cell.values {
        let ns = k.split('.').next().unwrap_or("");
        if ENGINE_SECTIONS.contains(&ns) {
            cfg.set(k, v)
                .map_err(|e| format!("{k} = {v:?} is refused by the recorder's knob table: {e}"))?;
            let knob = engine::config::find_knob(k).expect("checked at load");
            args.push(format!("--{}", knob.name));
            args.push(v.clone());
        } else if let Some(raw) = k.strip_prefix("raw.") {
            args.push(format!("--{raw}"));
            args.push(v.clone());
        }
    }
    cfg.validate()
        .and_then(|_| engine::config::server::validate_serve(&cfg))
        .map_err(|e| {
            let keys: Vec<String> = cell
                .values
                .iter()
                .filter(|(k, _)| ENGINE_SECTIONS.contains(&k.split('.').next().unwrap_or("")))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!(
                "the combination {} is refused by the recorder's configuration rules: {e}",
                keys.join(" ")
            )
        })?;
    let requested = if cfg.server.backend == engine::config::server::Backend::Uring {
        engine::uring::flag_names(cfg.ring.setup_flags()).replace("none", "")
    } else {
        String::new()
    };
    Ok(CellArgs {
        args,
        requested_flags: requested,
        config: cfg,
    })
}

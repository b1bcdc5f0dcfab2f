//! One run of one cell: block-layer settings applied and always restored around it, the
//! run dispatched by kind (recorder or anchor), a panic caught and recorded.

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

use super::anchors::{run_fio, run_iperf3, run_nginx, run_nop};
use super::outcome::{clear_metrics_keep, one_line};
use super::recorder_run::run_recorder;
use super::{Ctx, Outcome};
use crate::block;
use crate::experiment::Cell;

/// One run of one cell: block settings applied and always restored around it.
pub fn run_cell(ctx: &Ctx, cell: &Cell, run_id: &str, bin: &Path, run_seed: u64) -> Outcome {
    // wrk drives the wrk-serve workload (recorder or nginx): without it the cell cannot run.
    if cell.workload() == super::wrk::WORKLOAD {
        if let Err(reason) = super::wrk::available() {
            return Outcome::bad("unsupported", reason);
        }
    }
    let blk = cell.section("block");
    if !blk.is_empty() {
        let Some(dev) = ctx.target.device.clone() else {
            return Outcome::bad(
                "unsupported",
                "block.* settings need a target on a block device; none found for the target path",
            );
        };
        if ctx.target.kind == "dir" && !ctx.exp.target.allow_block_changes {
            return Outcome::bad(
                "unsupported",
                format!("block.* settings on a dir target would change {dev} (the root disk); use target kind = \"loop\", or set allow_block_changes = true"),
            );
        }
        if let Err(e) = block::apply(ctx.journal, &dev, &blk) {
            let problems = ctx.journal.restore_sysfs();
            let mut o = Outcome::bad("unsupported", format!("{dev} refused it: {e}"));
            if !problems.is_empty() {
                o.reason
                    .push_str(&format!("; restore problems: {}", problems.join("; ")));
            }
            return o;
        }
    }
    if let Some(note) = crate::util::ensure_free_memory(ctx.exp.target.min_free_mb) {
        eprintln!("harness: {run_id}: {note}");
    }
    // A panic inside a run must not leave the block layer changed: catch it, restore, record.
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match cell.kind() {
        "recorder" => run_recorder(ctx, cell, run_id, bin, run_seed),
        "fio" => run_fio(ctx, cell, run_id),
        "iperf3" => run_iperf3(ctx, cell, run_id),
        "nginx" => run_nginx(ctx, cell, run_id, run_seed),
        "nop" => run_nop(ctx, cell, run_id, bin),
        k => Outcome::bad("failed", format!("unknown kind {k}")),
    }));
    let problems = ctx.journal.restore_sysfs();
    let mut o = res.unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Outcome::bad("failed", format!("harness panicked during the run: {msg}"))
    });
    if !problems.is_empty() {
        o.reason = one_line(&format!(
            "{}{}block restore problems: {}",
            o.reason,
            if o.reason.is_empty() { "" } else { "; " },
            problems.join("; ")
        ));
    }
    if ctx.stop.load(Relaxed) && o.status == "ok" {
        o.status = "failed".into();
        o.reason = "interrupted (SIGINT/SIGTERM) during the run".into();
        clear_metrics_keep(&mut o);
    }
    o
}

//! The `tier` workload: two recorder nodes on one object store (a SeaweedFS started for
//! the run on loopback, `engine::tier::seaweed`). Node A ingests (the `ingest` load, with
//! the tier uploading what it seals); then the backlog drains (upload MB/s, seal-to-
//! archived lag); node B, a second recorder on the same bucket with an empty store,
//! downloads every replay once through the tier (cold: each GET fetches the object), then
//! under the client load (hot: B's local copies); the same client load on A gives local
//! serving for comparison. The headline and ack columns are node A's ingest, so a `tier`
//! cell compares with an `ingest` cell of the same load (tier on vs off).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::load::{clients_config_for, run_ingest};
use super::recorder_proc::{spawn_recorder, Recorder};
use super::{Ctx, Outcome};
use crate::experiment::Cell;
use crate::util::fmt_opt;
use crate::{clients, httpc};
use engine::tier::seaweed::{self, SeaweedFs};
use results_schema::col;

/// The bucket of the run's SeaweedFS.
pub(crate) const BUCKET: &str = "replays";

/// Knobs the tier workload sets itself.
pub(crate) const TIER_OWNED: &[&str] = &[
    "tier.bucket",
    "tier.endpoint",
    "tier.credentials",
    "tier.credentials-file",
    "tier.profile",
];

/// The object store of one run and the `[tier]` flags that point a recorder at it.
pub(crate) struct TierEnv {
    pub weed: SeaweedFs,
    pub args: Vec<String>,
    dir: PathBuf,
}

impl Drop for TierEnv {
    fn drop(&mut self) {
        self.weed.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts the run's SeaweedFS and writes its credentials file.
#[allow(clippy::result_large_err)]
pub(crate) fn prepare(ctx: &Ctx, cell: &Cell, run_id: &str) -> Result<TierEnv, Outcome> {
    for k in TIER_OWNED {
        if cell.get(k).is_some() {
            return Err(Outcome::bad(
                "failed",
                format!("{k} is set by the tier workload (its own SeaweedFS); remove it from the experiment"),
            ));
        }
    }
    let dir = ctx.target.path.join(format!("tier-{run_id}"));
    let _ = std::fs::remove_dir_all(&dir);
    let weed = SeaweedFs::start(&dir.join("weed"), BUCKET)
        .map_err(|e| Outcome::bad("failed", format!("SeaweedFS: {e}")))?;
    let creds = dir.join("credentials");
    std::fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            seaweed::ACCESS_KEY,
            seaweed::SECRET_KEY
        ),
    )
    .map_err(|e| Outcome::bad("failed", format!("cannot write {}: {e}", creds.display())))?;
    let mut args = weed.tier_args(BUCKET);
    args.extend(["--credentials", "file", "--credentials-file"].map(String::from));
    args.push(creds.display().to_string());
    Ok(TierEnv { weed, args, dir })
}

fn metric(http: SocketAddr, name: &str) -> Result<u64, String> {
    let r = httpc::get(http, "/metrics", None, Duration::from_secs(10))?;
    let text = String::from_utf8_lossy(&r.body);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("recorder_{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("the recorder's /metrics has no recorder_{name}"))
}

/// Downloads every id once from `http` with `threads` connections; (bytes, seconds).
fn one_pass(http: SocketAddr, ids: &[(String, u64)], threads: usize) -> Result<(u64, f64), String> {
    let next = AtomicUsize::new(0);
    let bytes = AtomicU64::new(0);
    let err: Mutex<Option<String>> = Mutex::new(None);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Relaxed);
                let Some((id, len)) = ids.get(i) else { return };
                match httpc::get(
                    http,
                    &format!("/matches/{id}"),
                    None,
                    Duration::from_secs(60),
                ) {
                    Ok(r) if r.status == 200 && r.body.len() as u64 == *len => {
                        bytes.fetch_add(*len, Relaxed);
                    }
                    Ok(r) => {
                        *err.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
                            "GET /matches/{id} from {http}: status {}, {} of {len} bytes",
                            r.status,
                            r.body.len()
                        ));
                        return;
                    }
                    Err(e) => {
                        *err.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(format!("GET /matches/{id} from {http}: {e}"));
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok((bytes.load(Relaxed), t0.elapsed().as_secs_f64()))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn drive(
    ctx: &Ctx,
    cell: &Cell,
    a: &Recorder,
    env: &TierEnv,
    bin: &Path,
    engine_args: &[String],
    run_id: &str,
    run_seed: u64,
    progress: &Arc<AtomicU64>,
    sampler: &crate::telemetry::Sampler,
    o: &mut Outcome,
) -> Result<(Instant, f64, u64), String> {
    let exp = ctx.exp;
    // 1. Ingest on node A, the tier uploading as matches seal.
    let (ws, rep) = run_ingest(ctx, cell, a, run_seed, progress, sampler, o)?;
    // 2. The backlog drains.
    let t_end = Instant::now();
    let up0 = metric(a.http, "tier_upload_bytes_total")?;
    let until = t_end + Duration::from_secs(300);
    loop {
        if metric(a.http, "tier_backlog")? == 0 {
            break;
        }
        if Instant::now() > until || ctx.stop.load(Relaxed) {
            return Err("node A's upload backlog did not drain within 300 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let drain_s = t_end.elapsed().as_secs_f64();
    let up1 = metric(a.http, "tier_upload_bytes_total")?;
    let uploads = metric(a.http, "tier_uploads_total")?;
    let lag_us = metric(a.http, "tier_upload_lag_us_total")?;
    if up1 > up0 && drain_s > 0.0 {
        o.m.insert(
            col::TIER_UPLOAD_MB_PER_S,
            fmt_opt(Some((up1 - up0) as f64 / 1e6 / drain_s)),
        );
    }
    if uploads > 0 {
        o.m.insert(
            col::TIER_UPLOAD_LAG_MS,
            fmt_opt(Some(lag_us as f64 / uploads as f64 / 1000.0)),
        );
    }
    let ids: Vec<(String, u64)> = rep
        .matches
        .iter()
        .filter_map(|m| m.sealed.map(|(_, len)| (m.id.clone(), len)))
        .filter(|(_, len)| *len > 0)
        .collect();
    if ids.is_empty() {
        return Err("the ingest phase sealed no match".into());
    }
    // 3. Node B: an empty store on the same bucket.
    let store_b = ctx.target.path.join(format!("store-{run_id}-b"));
    let _ = std::fs::remove_dir_all(&store_b);
    std::fs::create_dir_all(&store_b)
        .map_err(|e| format!("cannot create {}: {e}", store_b.display()))?;
    let mut args_b = engine_args.to_vec();
    args_b.extend(env.args.iter().cloned());
    let log_b = ctx.out.join(format!("logs/{run_id}-b.log"));
    let b = spawn_recorder(bin, &store_b, &args_b, &log_b, None, &ctx.stop)
        .map_err(|e| format!("node B did not start: {}", e.reason))?;
    let conc = cell.u64_or("load.concurrency", 8)? as usize;
    let r = (|| -> Result<(), String> {
        let (bytes, secs) = one_pass(b.http, &ids, conc)?;
        o.m.insert(
            col::TIER_COLD_MB_PER_S,
            fmt_opt(Some(bytes as f64 / 1e6 / secs)),
        );
        let names: Vec<String> = ids.iter().map(|(id, _)| id.clone()).collect();
        for (node, column) in [
            (b.http, col::TIER_HOT_MB_PER_S),
            (a.http, col::TIER_LOCAL_MB_PER_S),
        ] {
            let ccfg = clients_config_for(cell, exp, node, names.clone(), run_seed)?;
            let rep = clients::run(&ccfg, Arc::new(AtomicU64::new(0)), ctx.stop.clone())?;
            if !rep.verify_failures.is_empty() {
                return Err(format!(
                    "content verification failed: {}",
                    rep.verify_failures[0]
                ));
            }
            o.m.insert(column, fmt_opt(Some(rep.throughput_mb_per_s())));
        }
        Ok(())
    })();
    let _ = b.stop();
    let _ = std::fs::remove_dir_all(&store_b);
    r?;
    Ok((ws, rep.measure_s, rep.payload_bytes_acked_window))
}

//! The nginx anchor (serving): files of the same sizes as the replays, downloaded by the
//! same clients as a recorder `serve` cell, or by wrk as a `wrk-serve` cell.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::free_port;
use crate::experiment::Cell;
use crate::sweep::load::{clients_config_for, run_clients};
use crate::sweep::outcome::{fill_derived, one_line, reject_if_noisy};
use crate::sweep::{Ctx, Outcome};
use crate::telemetry::{self, Sampler};
use crate::util::SizeDist;

pub(crate) fn run_nginx(ctx: &Ctx, cell: &Cell, run_id: &str, run_seed: u64) -> Outcome {
    let exp = ctx.exp;
    let log_rel = format!("logs/{run_id}.log");
    let files = match cell.u64_or("nginx.files", 16) {
        Ok(v) => v.max(1),
        Err(e) => return Outcome::bad("failed", e),
    };
    let size = match engine::config::parse_bytes(
        cell.get("nginx.file-size")
            .or(cell.get("load.file-size"))
            .unwrap_or("8m"),
    ) {
        Ok(v) => v,
        Err(e) => return Outcome::bad("failed", format!("nginx.file-size: {e}")),
    };
    let sendfile = cell.str_or("nginx.sendfile", "on").to_string();
    let workers = cell.str_or("nginx.workers", "1").to_string();
    let root = ctx.target.path.join(format!("nginx-{}", cell.id));
    let mdir = root.join("matches");
    if let Err(e) = std::fs::create_dir_all(&mdir) {
        return Outcome::bad("failed", format!("{}: {e}", mdir.display()));
    }
    let ids: Vec<String> = (0..files).map(|i| format!("n{i:05}")).collect();
    let gen =
        crate::util::PayloadGen::new(SizeDist::Fixed(size), SizeDist::Fixed(size), 1, size.max(1));
    let mut buf = Vec::new();
    for id in &ids {
        let p = mdir.join(id);
        if std::fs::metadata(&p)
            .map(|m| m.len() == size)
            .unwrap_or(false)
        {
            continue;
        }
        gen.payload(crate::util::fnv1a(id.as_bytes()), 1, &mut buf);
        if let Err(e) = std::fs::write(&p, &buf) {
            return Outcome::bad("failed", format!("{}: {e}", p.display()));
        }
    }
    let port = match free_port() {
        Ok(p) => p,
        Err(e) => return Outcome::bad("failed", e),
    };
    let ndir = ctx.out.join(format!("nginx-{run_id}"));
    let _ = std::fs::create_dir_all(ndir.join("tmp"));
    let conf = format!(
        "user root;\nworker_processes {workers};\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  sendfile {sendfile};\n  tcp_nopush on;\n  keepalive_requests 1000000;\n  default_type application/octet-stream;\n\
         \x20 client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
         \x20 server {{\n    listen 127.0.0.1:{port};\n    root {root};\n    location /matches/ {{ }}\n  }}\n}}\n",
        d = ndir.display(),
        root = root.display(),
    );
    let conf_path = ndir.join("nginx.conf");
    if let Err(e) = std::fs::write(&conf_path, conf) {
        return Outcome::bad("failed", e.to_string());
    }
    let log_path = ctx.out.join(&log_rel);
    let mut child = match std::fs::File::create(&log_path)
        .map_err(|e| e.to_string())
        .and_then(|f| {
            Command::new("nginx")
                .arg("-p")
                .arg(&ndir)
                .arg("-c")
                .arg(&conf_path)
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(f.try_clone().map_err(|e| e.to_string())?)
                .stderr(f)
                .spawn()
                .map_err(|e| format!("cannot start nginx: {e} (is nginx installed?)"))
        }) {
        Ok(c) => c,
        Err(e) => return Outcome::bad("failed", e),
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("valid addr");
    let t0 = Instant::now();
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        if let Ok(Some(st)) = child.try_wait() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Outcome {
                log: log_rel,
                ..Outcome::bad(
                    "failed",
                    format!("nginx exited ({st}): {}", one_line(&text)),
                )
            };
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            return Outcome {
                log: log_rel,
                ..Outcome::bad("failed", "nginx did not listen within 10 s")
            };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut pids = vec![child.id() as i32];
    pids.extend(children_of(child.id() as i32));
    let ccfg = match clients_config_for(cell, exp, addr, ids.clone(), run_seed) {
        Ok(c) => c,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Outcome::bad("failed", e);
        }
    };
    let progress = Arc::new(AtomicU64::new(0));
    let sampler = Sampler::start(
        ctx.target.device.clone(),
        pids,
        progress.clone(),
        Duration::from_millis(250),
    );
    let mut o = Outcome {
        status: "ok".into(),
        log: log_rel.clone(),
        ..Default::default()
    };
    let res = if cell.workload() == crate::sweep::wrk::WORKLOAD {
        let targets: Vec<(String, u64)> = ids
            .iter()
            .map(|id| (format!("/matches/{id}"), size))
            .collect();
        crate::sweep::wrk::run_wrk(
            ctx, cell, run_id, addr, &targets, &progress, &sampler, &mut o,
        )
    } else {
        run_clients(&ccfg, &progress, ctx, &mut o)
    };
    let (samples, _) = sampler.finish();
    let _ = crate::util::send_signal(child.id(), "QUIT");
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&ndir);
    match res {
        Err(e) => Outcome {
            log: log_rel,
            ..Outcome::bad("failed", e)
        },
        Ok((ws, measure_s, bytes)) => {
            let d = telemetry::derive(&samples, ws, ws + Duration::from_secs_f64(measure_s));
            let _ = telemetry::write_timeseries(
                &ctx.out.join(format!("timeseries/{run_id}.csv")),
                &samples,
                ws,
            );
            fill_derived(&mut o, &d, bytes, measure_s);
            if o.reason.starts_with("content verification failed") {
                o.status = "failed".into();
            }
            reject_if_noisy(ctx, cell, &mut o);
            o
        }
    }
}

pub(crate) fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect()
}

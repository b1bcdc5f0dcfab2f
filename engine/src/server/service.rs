//! What `recorder serve` does for a service manager: SIGHUP reopens the log file (and
//! never kills the server), readiness and stopping are announced to systemd through
//! `NOTIFY_SOCKET` (the sd_notify datagram protocol, no libsystemd needed).

use super::ServerContext;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::os::unix::net::UnixDatagram;

/// Installs the SIGHUP handler (replacing the default action, which terminates) and a
/// thread that, on SIGHUP, reopens `server.log-file`; on SIGTERM/SIGINT it tells systemd
/// the server is stopping (the shutdown itself is driven by the flag `start` was given).
pub fn handle_sighup(config_file: Option<String>) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig != SIGHUP {
                    tracing::info!(
                        "{} received: shutting down",
                        if sig == SIGTERM { "SIGTERM" } else { "SIGINT" }
                    );
                    notify("STOPPING=1\nSTATUS=shutting down");
                    continue;
                }
                match crate::logging::reopen() {
                    Ok(Some(p)) => tracing::info!(
                        "SIGHUP: reopened log file {}{}",
                        p.display(),
                        restart_note(&config_file)
                    ),
                    Ok(None) => tracing::info!(
                        "SIGHUP: logging to stderr, no log file to reopen{}",
                        restart_note(&config_file)
                    ),
                    Err(e) => tracing::error!(
                        "SIGHUP: cannot reopen the log file: {e}; still writing to the old one"
                    ),
                }
            }
        })?;
    Ok(())
}

fn restart_note(config_file: &Option<String>) -> String {
    match config_file {
        Some(p) => format!("; {p} is not re-read (every other option takes a restart)"),
        None => "; every other option takes a restart".into(),
    }
}

/// Tells systemd (Type=notify) that the listeners are bound and the store recovered.
pub fn notify_ready(ctx: &ServerContext) {
    let addr = |l: &std::net::TcpListener| {
        l.local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into())
    };
    notify(&format!(
        "READY=1\nSTATUS=ingest on {}, http on {}\nMAINPID={}",
        addr(&ctx.ingest),
        addr(&ctx.http),
        std::process::id()
    ));
}

/// Sends one sd_notify datagram to `$NOTIFY_SOCKET` (a path, or `@name` for the abstract
/// namespace). No socket: nothing to do. A failure is logged, never fatal.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let r = (|| -> std::io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        let p = path.to_string_lossy();
        if let Some(name) = p.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let a = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sock.send_to_addr(state.as_bytes(), &a)?;
        } else {
            sock.send_to(state.as_bytes(), &*p)?;
        }
        Ok(())
    })();
    if let Err(e) = r {
        tracing::warn!(
            "cannot notify the service manager at NOTIFY_SOCKET={}: {e}",
            path.to_string_lossy()
        );
    }
}

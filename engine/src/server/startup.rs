//! Start-up checks of `recorder serve` that refuse a run which could not work, with the
//! cause, before anything listens: the store must be a writable directory (a full one is
//! writable: it is reported, not refused).

use super::ServerError;
use crate::storage::StorePaths;
use std::io::Write;
use std::path::Path;

/// Refuses a store the recorder cannot use: not a directory, or one where it cannot
/// create, write, sync, rename and remove files (a read-only mount, no permission).
/// Every match needs all of those (create in `live/`, append, fdatasync, rename to the
/// store root at seal), so a store that fails here would answer every DS with STORAGE.
pub fn check_store(paths: &StorePaths) -> Result<(), ServerError> {
    let root = &paths.root;
    let full = std::cell::Cell::new(false);
    let refuse = |what: String, e: std::io::Error| {
        if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
            full.set(true);
        }
        ServerError(format!(
            "the store {} is not writable ({what}: {e}): recorder serve creates, writes, syncs and renames match files there; use a read-write file system and a directory this user may write, or another --store",
            root.display()
        ))
    };
    if root.exists() && !root.is_dir() {
        return Err(ServerError(format!(
            "the store {} exists and is not a directory",
            root.display()
        )));
    }
    let live = paths.live_dir();
    for d in [root.as_path(), live.as_path()] {
        if !d.is_dir() {
            std::fs::create_dir_all(d)
                .map_err(|e| refuse(format!("creating {}", d.display()), e))?;
        }
    }
    let name = format!(".write-probe-{}", std::process::id());
    let probe = live.join(&name);
    let moved = root.join(&name);
    let r = write_probe(&probe)
        .map_err(|e| refuse(format!("creating {}", probe.display()), e))
        .and_then(|_| {
            std::fs::rename(&probe, &moved).map_err(|e| {
                refuse(
                    format!("renaming {} to {}", probe.display(), moved.display()),
                    e,
                )
            })
        })
        .and_then(|_| {
            std::fs::remove_file(&moved)
                .map_err(|e| refuse(format!("removing {}", moved.display()), e))
        });
    let _ = std::fs::remove_file(&probe);
    let _ = std::fs::remove_file(&moved);
    match r {
        // A full store is writable: recovery and RESUME of what it holds must still work
        // (and space may come back); every new frame gets STORAGE until then.
        Err(_) if full.get() => {
            tracing::warn!(
                "the store {} is full (no space left for a probe file): frames will get STORAGE until space is freed",
                root.display()
            );
            Ok(())
        }
        r => r,
    }
}

fn write_probe(p: &Path) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(p)?;
    f.write_all(b"probe")?;
    f.sync_data()
}

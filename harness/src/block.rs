//! Block-layer settings of the target device, and the restore journal that guarantees
//! they are put back.
//!
//! Before anything is changed, the original value is appended (and fsync'd) to a journal
//! file `<state dir>/<pid>.journal`; loop devices and mounts the harness creates are
//! journalled the same way. Restoring replays the journal backwards and deletes it. A
//! harness that starts up replays every journal whose process is gone, so even a SIGKILL'd
//! sweep leaves nothing changed once the next harness runs. The state dir is
//! `$HARNESS_STATE_DIR` or `/var/lib/uring-lab-harness`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::experiment::BLOCK_KEYS;

/// Reads a queue setting; the scheduler's active value is the bracketed one.
pub fn read_setting(dev: &str, key: &str) -> Result<String, String> {
    let p = queue_path(dev, key);
    let raw =
        std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    Ok(parse_value(key, &raw))
}

pub fn parse_value(key: &str, raw: &str) -> String {
    let raw = raw.trim();
    if key == "scheduler" {
        if let (Some(a), Some(b)) = (raw.find('['), raw.find(']')) {
            return raw[a + 1..b].to_string();
        }
    }
    raw.to_string()
}

pub fn queue_path(dev: &str, key: &str) -> PathBuf {
    PathBuf::from(format!("/sys/block/{dev}/queue/{key}"))
}

/// Every queue setting of a device (for the manifest).
pub fn all_settings(dev: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let dir = PathBuf::from(format!("/sys/block/{dev}/queue"));
    if let Ok(rd) = std::fs::read_dir(&dir) {
        let mut names: Vec<String> = rd
            .flatten()
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for n in names {
            if let Ok(v) = std::fs::read_to_string(dir.join(&n)) {
                out.push((n.clone(), parse_value(&n, &v)));
            }
        }
    }
    out
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "op")]
pub enum Entry {
    /// A sysfs file and the value it had before the harness wrote it.
    Sysfs { path: PathBuf, orig: String },
    /// A loop device the harness attached (detach it), its image (delete it) and mount point (unmount it).
    Loop {
        dev: String,
        image: PathBuf,
        mount: Option<PathBuf>,
    },
}

pub fn state_dir() -> PathBuf {
    std::env::var_os("HARNESS_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/uring-lab-harness"))
}

/// The journal of this process. All changes go through it.
pub struct Journal {
    path: PathBuf,
    inner: Mutex<(Option<File>, Vec<Entry>)>,
}

impl Journal {
    pub fn open() -> Result<Journal, String> {
        // The directory is created on the first change, so sweeps that change nothing need
        // no write access to it.
        let path = state_dir().join(format!("{}.journal", std::process::id()));
        Ok(Journal {
            path,
            inner: Mutex::new((None, Vec::new())),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends an entry durably before the change it describes is made.
    pub fn record(&self, e: Entry) -> Result<(), String> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.0.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    format!(
                        "cannot create the restore-journal dir {} (set HARNESS_STATE_DIR to a writable directory): {e}",
                        dir.display()
                    )
                })?;
            }
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| format!("cannot open restore journal {}: {e}", self.path.display()))?;
            g.0 = Some(f);
        }
        let line = serde_json::to_string(&e).map_err(|e| e.to_string())? + "\n";
        let f = g.0.as_mut().expect("opened above");
        f.write_all(line.as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(|e| format!("cannot write restore journal {}: {e}", self.path.display()))?;
        g.1.push(e);
        Ok(())
    }

    /// Writes a sysfs setting, journalled. Refusals come back as `Err` with the kernel's answer.
    pub fn set_sysfs(&self, path: &Path, value: &str, key: &str) -> Result<(), String> {
        let orig_raw = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let orig = parse_value(key, &orig_raw);
        if orig == value {
            return Ok(());
        }
        self.record(Entry::Sysfs {
            path: path.to_path_buf(),
            orig,
        })?;
        std::fs::write(path, value)
            .map_err(|e| format!("{} refused {value:?}: {e}", path.display()))?;
        Ok(())
    }

    /// Restores every sysfs entry (newest first) and forgets them; loop entries stay.
    /// Returns the problems met (a value that could not be put back).
    pub fn restore_sysfs(&self) -> Vec<String> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut problems = Vec::new();
        let entries = std::mem::take(&mut g.1);
        let mut keep = Vec::new();
        for e in entries.iter().rev() {
            match e {
                Entry::Sysfs { path, orig } => {
                    if let Err(err) = restore_one(path, orig) {
                        problems.push(err);
                    }
                }
                other => keep.push(other.clone()),
            }
        }
        keep.reverse();
        g.1 = keep;
        rewrite(&self.path, &mut g);
        problems
    }

    /// Restores everything, detaches loop devices, deletes the journal.
    pub fn restore_all(&self) -> Vec<String> {
        let mut problems = self.restore_sysfs();
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for e in std::mem::take(&mut g.1).iter().rev() {
            problems.extend(undo(e));
        }
        g.0 = None;
        let _ = std::fs::remove_file(&self.path);
        problems
    }

    /// Forgets a loop entry after the target removed it itself.
    pub fn forget_loop(&self, dev: &str) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.1.retain(|e| !matches!(e, Entry::Loop { dev: d, .. } if d == dev));
        rewrite(&self.path, &mut g);
    }
}

fn rewrite(path: &Path, g: &mut (Option<File>, Vec<Entry>)) {
    g.0 = None;
    if g.1.is_empty() {
        let _ = std::fs::remove_file(path);
        return;
    }
    let text: String =
        g.1.iter()
            .filter_map(|e| serde_json::to_string(e).ok())
            .map(|l| l + "\n")
            .collect();
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let p = self.restore_all();
        for e in p {
            eprintln!("harness: restore: {e}");
        }
    }
}

fn restore_one(path: &Path, orig: &str) -> Result<(), String> {
    if !path.exists() {
        return Ok(()); // device gone (loop detached): nothing to restore
    }
    let key = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cur = std::fs::read_to_string(path)
        .map(|v| parse_value(&key, &v))
        .unwrap_or_default();
    if cur == orig {
        return Ok(());
    }
    std::fs::write(path, orig)
        .map_err(|e| format!("could not restore {} to {orig:?}: {e}", path.display()))?;
    let now = std::fs::read_to_string(path)
        .map(|v| parse_value(&key, &v))
        .unwrap_or_default();
    if now != orig {
        return Err(format!(
            "{} reads {now:?} after restoring {orig:?}",
            path.display()
        ));
    }
    Ok(())
}

fn undo(e: &Entry) -> Vec<String> {
    let mut p = Vec::new();
    match e {
        Entry::Sysfs { path, orig } => {
            if let Err(x) = restore_one(path, orig) {
                p.push(x);
            }
        }
        Entry::Loop { dev, image, mount } => {
            if let Some(m) = mount {
                if is_mounted(m) {
                    if let Err(x) = crate::util::run_cmd("umount", &[&m.to_string_lossy()]) {
                        let _ = crate::util::run_cmd("umount", &["-l", &m.to_string_lossy()]);
                        p.push(x);
                    }
                }
            }
            let devpath = format!("/dev/{dev}");
            if loop_backing(dev).is_some_and(|b| b == *image) {
                if let Err(x) = crate::util::run_cmd("losetup", &["-d", &devpath]) {
                    p.push(x);
                }
            }
            let _ = std::fs::remove_file(image);
        }
    }
    p
}

pub fn is_mounted(p: &Path) -> bool {
    let canon = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(4).is_some_and(|mp| Path::new(mp) == canon))
        })
        .unwrap_or(false)
}

pub fn loop_backing(dev: &str) -> Option<PathBuf> {
    std::fs::read_to_string(format!("/sys/block/{dev}/loop/backing_file"))
        .ok()
        .map(|s| PathBuf::from(s.trim()))
}

/// Replays the journals of harness processes that are gone. Returns what was done.
pub fn recover_stale() -> Vec<String> {
    let dir = state_dir();
    let mut done = Vec::new();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return done;
    };
    for f in rd.flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_suffix(".journal")
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() as i32 || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let text = std::fs::read_to_string(f.path()).unwrap_or_default();
        let entries: Vec<Entry> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        for e in entries.iter().rev() {
            let problems = undo(e);
            done.push(format!(
                "restored after dead harness {pid}: {e:?}{}",
                if problems.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", problems.join("; "))
                }
            ));
        }
        let _ = std::fs::remove_file(f.path());
    }
    done
}

/// Applies `block.*` values of a cell to `dev`, journalled. An `Err` is the device refusing a
/// value (the cell is then `unsupported`).
pub fn apply(j: &Journal, dev: &str, settings: &[(String, String)]) -> Result<(), String> {
    for (k, v) in settings {
        if !BLOCK_KEYS.contains(&k.as_str()) {
            return Err(format!("unknown block setting {k}"));
        }
        let p = queue_path(dev, k);
        if !p.exists() {
            return Err(format!(
                "device {dev} has no queue setting {k} ({} does not exist)",
                p.display()
            ));
        }
        j.set_sysfs(&p, v, k)
            .map_err(|e| format!("block.{k}={v}: {e}"))?;
        let now = read_setting(dev, k)?;
        if now != *v {
            return Err(format!(
                "block.{k}={v}: {dev} reads {now:?} after the write (the kernel adjusted it)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_value_is_the_bracketed_one() {
        assert_eq!(
            parse_value("scheduler", "none [mq-deadline] kyber\n"),
            "mq-deadline"
        );
        assert_eq!(parse_value("nomerges", "0\n"), "0");
    }
}

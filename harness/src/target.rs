//! Where the recorder writes during a sweep: a directory (default), a loop device the
//! harness creates over a file (and removes afterwards), or a named device.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::block::{Entry, Journal};
use crate::experiment::TargetSpec;
use crate::util::run_cmd;

#[derive(Debug, Clone)]
pub struct Target {
    pub kind: String,
    /// Directory on the target file system where run data goes.
    pub path: PathBuf,
    /// Whole-disk block device name (`vda`, `loop3`), if found.
    pub device: Option<String>,
    pub model: String,
    pub fs: String,
    pub mount_options: String,
    /// Set for loop targets the harness made.
    loop_dev: Option<(String, PathBuf, PathBuf)>,
}

/// The whole-disk device holding `path` (partitions resolve to their disk).
pub fn device_of(path: &Path) -> Option<String> {
    let dev = std::fs::metadata(path).ok()?.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    if sys.join("partition").exists() {
        sys.parent()?
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
    } else {
        sys.file_name().map(|s| s.to_string_lossy().into_owned())
    }
}

/// (fs type, mount options) of the mount holding `path`, from /proc/self/mountinfo.
pub fn mount_of(path: &Path) -> (String, String) {
    let canon = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut best: Option<(usize, String, String)> = None;
    for l in info.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        if f.len() < 10 {
            continue;
        }
        let mp = f[4];
        let sep = f.iter().position(|x| *x == "-").unwrap_or(0);
        if canon.starts_with(mp) && best.as_ref().is_none_or(|b| mp.len() >= b.0) {
            let fstype = f.get(sep + 1).unwrap_or(&"").to_string();
            let opts = format!("{},{}", f[5], f.get(sep + 3).unwrap_or(&""));
            best = Some((mp.len(), fstype, opts));
        }
    }
    best.map(|b| (b.1, b.2)).unwrap_or_default()
}

pub fn device_model(dev: &str) -> String {
    let base = format!("/sys/block/{dev}");
    if dev.starts_with("vd") {
        return "virtio-blk".into();
    }
    for p in ["device/model", "device/vendor"] {
        if let Ok(s) = std::fs::read_to_string(format!("{base}/{p}")) {
            if !s.trim().is_empty() {
                return s.trim().to_string();
            }
        }
    }
    if dev.starts_with("loop") {
        return format!(
            "loop device over {}",
            crate::block::loop_backing(dev)
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
    }
    if dev.starts_with("vd") {
        return "virtio-blk".into();
    }
    String::new()
}

impl Target {
    /// Sets the target up. `out` is the sweep's output directory.
    pub fn setup(spec: &TargetSpec, out: &Path, journal: &Journal) -> Result<Target, String> {
        match spec.kind.as_str() {
            "dir" => {
                let path = spec.path.clone().unwrap_or_else(|| out.join("target"));
                std::fs::create_dir_all(&path)
                    .map_err(|e| format!("cannot create target dir {}: {e}", path.display()))?;
                Ok(Self::describe("dir", path, None))
            }
            "device" => {
                let dev = spec.device.clone().expect("checked at parse");
                let path = spec.path.clone().expect("checked at parse");
                if !Path::new(&format!("/sys/block/{dev}")).exists() {
                    return Err(format!(
                        "target device {dev} does not exist (no /sys/block/{dev})"
                    ));
                }
                let found = device_of(&path);
                if found.as_deref() != Some(dev.as_str()) {
                    return Err(format!(
                        "target path {} is on device {}, not on {dev}; mount a file system of {dev} there",
                        path.display(),
                        found.unwrap_or_else(|| "unknown".into())
                    ));
                }
                Ok(Self::describe("device", path, Some(dev)))
            }
            "loop" => {
                let size = engine::config::parse_bytes(&spec.size)
                    .map_err(|e| format!("target size: {e}"))?;
                let image = out.join("target.img");
                let mnt = out.join("target-mnt");
                std::fs::create_dir_all(&mnt)
                    .map_err(|e| format!("cannot create {}: {e}", mnt.display()))?;
                let f = std::fs::File::create(&image)
                    .map_err(|e| format!("cannot create loop image {}: {e}", image.display()))?;
                f.set_len(size)
                    .map_err(|e| format!("cannot size loop image: {e}"))?;
                drop(f);
                let image = image.canonicalize().map_err(|e| e.to_string())?;
                let mut args = vec!["--find", "--show"];
                if spec.loop_direct_io {
                    args.push("--direct-io=on");
                }
                let img_s = image.to_string_lossy().into_owned();
                args.push(&img_s);
                let devpath = run_cmd("losetup", &args)
                    .map_err(|e| format!("cannot create a loop device: {e}"))?;
                let devpath = devpath.trim().to_string();
                let dev = devpath.trim_start_matches("/dev/").to_string();
                let mnt = mnt.canonicalize().map_err(|e| e.to_string())?;
                journal.record(Entry::Loop {
                    dev: dev.clone(),
                    image: image.clone(),
                    mount: Some(mnt.clone()),
                })?;
                run_cmd(
                    "mkfs.ext4",
                    &[
                        "-q",
                        "-F",
                        "-E",
                        "lazy_itable_init=0,lazy_journal_init=0",
                        &devpath,
                    ],
                )
                .map_err(|e| format!("mkfs.ext4 on {devpath}: {e}"))?;
                run_cmd("mount", &[&devpath, &mnt.to_string_lossy()])
                    .map_err(|e| format!("mounting {devpath}: {e}"))?;
                let mut t = Self::describe("loop", mnt.clone(), Some(dev.clone()));
                t.loop_dev = Some((dev, image, mnt));
                Ok(t)
            }
            k => Err(format!("unknown target kind {k}")),
        }
    }

    fn describe(kind: &str, path: PathBuf, dev: Option<String>) -> Target {
        let device = dev.or_else(|| device_of(&path));
        let (fs, mount_options) = mount_of(&path);
        let model = device.as_deref().map(device_model).unwrap_or_default();
        Target {
            kind: kind.into(),
            path,
            device,
            model,
            fs,
            mount_options,
            loop_dev: None,
        }
    }

    /// Removes what `setup` created (loop device, mount, image).
    pub fn teardown(&mut self, journal: &Journal) -> Result<(), String> {
        if let Some((dev, image, mnt)) = self.loop_dev.take() {
            let _ = std::process::Command::new("sync").status();
            let mut errs = Vec::new();
            if crate::block::is_mounted(&mnt) {
                if let Err(e) = run_cmd("umount", &[&mnt.to_string_lossy()]) {
                    errs.push(e);
                }
            }
            if let Err(e) = run_cmd("losetup", &["-d", &format!("/dev/{dev}")]) {
                errs.push(e);
            }
            let _ = std::fs::remove_file(&image);
            let _ = std::fs::remove_dir(&mnt);
            if errs.is_empty() {
                journal.forget_loop(&dev);
            } else {
                return Err(errs.join("; "));
            }
        }
        Ok(())
    }

    pub fn to_json(&self, queue_before: &[(String, String)]) -> serde_json::Value {
        let q: serde_json::Map<String, serde_json::Value> = queue_before
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        serde_json::json!({
            "kind": self.kind,
            "path": self.path.display().to_string(),
            "device": self.device,
            "model": self.model,
            "fs": self.fs,
            "mount_options": self.mount_options,
            "queue": q,
        })
    }
}

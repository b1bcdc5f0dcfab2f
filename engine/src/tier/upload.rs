//! Uploads of sealed replays: a dispatcher on the tier runtime takes ids from the bounded
//! queue and runs up to `upload-concurrency` uploads, each retried with exponential
//! backoff until the store has the object whole (HEAD: size and CRC32C metadata match).

use super::Tier;
use crate::server::registry::Metrics;
use crate::storage::SealedInfo;
use futures::stream::{FuturesUnordered, StreamExt};
use object_store::{
    Attribute, Attributes, GetOptions, ObjectStore, PutMultipartOptions, PutOptions, PutPayload,
};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

/// Parts of one multipart upload in flight at once.
const PARTS_IN_FLIGHT: usize = 2;
/// Object metadata key holding the whole replay's CRC32C (8 hex digits).
pub const META_CRC: &str = "crc32c";

pub fn spawn(tier: &Arc<Tier>, mut rx: tokio::sync::mpsc::Receiver<String>) {
    let sem = Arc::new(tokio::sync::Semaphore::new(
        tier.cfg.upload_concurrency as usize,
    ));
    let weak = Arc::downgrade(tier);
    tier.rt().spawn(async move {
        while let Some(id) = rx.recv().await {
            let Ok(permit) = sem.clone().acquire_owned().await else {
                return;
            };
            let Some(t) = weak.upgrade() else { return };
            tokio::spawn(async move {
                upload_until_done(&t, &id).await;
                drop(permit);
            });
        }
    });
}

enum Outcome {
    Done,
    /// The local file is gone (retention deleted it): nothing to upload.
    Gone,
}

async fn upload_until_done(t: &Arc<Tier>, id: &str) {
    let mut delay = Duration::from_millis(t.cfg.retry_min_ms);
    let max = Duration::from_millis(t.cfg.retry_max_ms);
    let mut failures = 0u64;
    loop {
        if t.shutdown.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        match upload_once(t, id).await {
            Ok(Outcome::Done) => return,
            Ok(Outcome::Gone) => {
                {
                    let mut st = t.lock();
                    st.queued.remove(id);
                    st.backlog.remove(id);
                }
                t.publish_backlog();
                return;
            }
            Err(e) => {
                failures += 1;
                if let Some(r) = t.registry() {
                    Metrics::add(&r.metrics.tier_upload_failures, 1);
                }
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(
                        "tier: upload of {id} failed ({e}); attempt {failures}, retrying in {} ms (the replay waits on local disk)",
                        delay.as_millis()
                    );
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(max);
            }
        }
    }
}

/// Runs file work on the runtime's blocking threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("file task failed: {e}"))?
}

/// CRC32C of a whole file, read in 1 MiB pieces.
pub fn file_crc(path: &std::path::Path) -> Result<u32, String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1 << 20];
    let mut crc = 0u32;
    loop {
        let n = f.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(crc);
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
    }
}

fn attributes(info: &SealedInfo, crc: u32) -> Attributes {
    let mut a = Attributes::new();
    a.insert(Attribute::ContentType, "application/octet-stream".into());
    a.insert(
        Attribute::Metadata(META_CRC.into()),
        format!("{crc:08x}").into(),
    );
    a.insert(
        Attribute::Metadata("etag".into()),
        info.etag.trim_matches('"').to_string().into(),
    );
    a
}

/// True when the store holds `key` with exactly `len` bytes and our CRC in its metadata.
pub async fn store_has(
    t: &Tier,
    key: &object_store::path::Path,
    len: u64,
    crc: u32,
) -> Result<bool, String> {
    let opts = GetOptions {
        head: true,
        ..Default::default()
    };
    match t.store.get_opts(key, opts).await {
        Ok(r) => {
            let meta_crc = r
                .attributes
                .get(&Attribute::Metadata(META_CRC.into()))
                .map(|v| v.to_string());
            Ok(r.meta.size == len && meta_crc.as_deref() == Some(format!("{crc:08x}").as_str()))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

async fn upload_once(t: &Arc<Tier>, id: &str) -> Result<Outcome, String> {
    let path = t.paths.sealed_path(id);
    let (p, i) = (path.clone(), id.to_string());
    let info = match blocking(move || {
        if !p.exists() {
            return Ok(None);
        }
        let info = crate::storage::io::read_sealed_info(&p, &i)?;
        let crc = file_crc(&p)?;
        Ok(Some((info, crc)))
    })
    .await?
    {
        Some(x) => x,
        None => return Ok(Outcome::Gone),
    };
    let (info, crc) = info;
    let key = t.key("replays", id);
    // A previous run may have finished the upload and died before logging it.
    if store_has(t, &key, info.len, crc).await? {
        t.archived(&info, false)
            .map_err(|e| format!("cannot record it in archived.ids: {e}"))?;
        return Ok(Outcome::Done);
    }
    let attrs = attributes(&info, crc);
    let part = t.cfg.part_bytes;
    if info.len <= part {
        let p = path.clone();
        let data = blocking(move || std::fs::read(&p).map_err(|e| e.to_string())).await?;
        let opts = PutOptions {
            attributes: attrs,
            ..Default::default()
        };
        t.store
            .put_opts(&key, PutPayload::from(data), opts)
            .await
            .map_err(|e| e.to_string())?;
    } else {
        let opts = PutMultipartOptions {
            attributes: attrs,
            ..Default::default()
        };
        let mut up = t
            .store
            .put_multipart_opts(&key, opts)
            .await
            .map_err(|e| e.to_string())?;
        let r = send_parts(t, &path, info.len, part, &mut *up).await;
        match r {
            Ok(()) => {
                up.complete().await.map_err(|e| e.to_string())?;
            }
            Err(e) => {
                let _ = up.abort().await;
                return Err(e);
            }
        }
    }
    if !store_has(t, &key, info.len, crc).await? {
        return Err("after the upload the store does not report the object whole (size and crc32c metadata)".into());
    }
    t.archived(&info, true)
        .map_err(|e| format!("cannot record it in archived.ids: {e}"))?;
    Ok(Outcome::Done)
}

async fn send_parts(
    t: &Arc<Tier>,
    path: &std::path::Path,
    len: u64,
    part: u64,
    up: &mut dyn object_store::MultipartUpload,
) -> Result<(), String> {
    let file = Arc::new(std::fs::File::open(path).map_err(|e| e.to_string())?);
    let mut inflight = FuturesUnordered::new();
    let mut off = 0u64;
    while off < len {
        let n = part.min(len - off) as usize;
        let f = file.clone();
        let o = off;
        let data = blocking(move || {
            let mut b = vec![0u8; n];
            f.read_exact_at(&mut b, o).map_err(|e| e.to_string())?;
            Ok(b)
        })
        .await?;
        if t.cfg.test_part_delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(t.cfg.test_part_delay_ms)).await;
        }
        inflight.push(up.put_part(PutPayload::from(data)));
        off += n as u64;
        if inflight.len() >= PARTS_IN_FLIGHT {
            if let Some(r) = inflight.next().await {
                r.map_err(|e| e.to_string())?;
                part_done(t);
            }
        }
    }
    while let Some(r) = inflight.next().await {
        r.map_err(|e| e.to_string())?;
        part_done(t);
    }
    Ok(())
}

fn part_done(t: &Tier) {
    if let Some(r) = t.registry() {
        Metrics::add(&r.metrics.tier_upload_parts, 1);
    }
}

//! Reading from the tier: looking an id up (replay object, then live marker), listing
//! replays other nodes archived, and fetching a replay into the local store with its
//! integrity checked (length, the CRC32C in its metadata, every CRC of the replay format,
//! the ETag) before it is renamed into place. A replay that fails any check is never
//! written to the store nor served.

use super::{Lookup, Tier};
use crate::server::registry::{Metrics, Registry};
use crate::storage::format;
use futures::stream::StreamExt;
use object_store::{Attribute, ObjectStore, ObjectStoreExt};
use std::sync::Arc;

/// Reads the trailer of `PREFIX/replays/<id>.rpl` (`len` bytes) into a registry entry.
async fn learn(t: &Tier, reg: &Registry, id: &str, len: u64) -> Result<(), String> {
    if len < format::TRAILER_BYTES as u64 {
        return Err(format!(
            "object of {id} has {len} bytes: not a sealed replay"
        ));
    }
    let key = t.key("replays", id);
    let b = t
        .store
        .get_range(&key, len - format::TRAILER_BYTES as u64..len)
        .await
        .map_err(|e| e.to_string())?;
    let info = super::log::sealed_info_from_trailer(id, len, &b)
        .map_err(|e| format!("object of {id}: {e}"))?;
    reg.add_archived(&info);
    Ok(())
}

/// Looks up an id this node does not know: the replay object, then the live marker.
pub async fn lookup(t: &Arc<Tier>, id: &str) -> Lookup {
    let Some(reg) = t.registry() else {
        return Lookup::Failed("shutting down".into());
    };
    match t.store.head(&t.key("replays", id)).await {
        Ok(meta) => {
            return match learn(t, &reg, id, meta.size).await {
                Ok(()) => Lookup::Found,
                Err(e) => Lookup::Failed(e),
            }
        }
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Lookup::Failed(format!("the object store did not answer: {e}")),
    }
    match t.store.get(&t.key("live", id)).await {
        Ok(r) => match r.bytes().await {
            Ok(b) => {
                let url = String::from_utf8_lossy(&b).trim().to_string();
                if url.is_empty() || url == t.node_url {
                    Lookup::Missing // our own stale marker: the match is not here
                } else {
                    Lookup::LiveAt(url)
                }
            }
            Err(e) => Lookup::Failed(format!("the object store did not answer: {e}")),
        },
        Err(object_store::Error::NotFound { .. }) => Lookup::Missing,
        Err(e) => Lookup::Failed(format!("the object store did not answer: {e}")),
    }
}

/// Lists `PREFIX/replays/` and adds replays this node does not know.
pub async fn list_new(t: &Arc<Tier>, reg: &Arc<Registry>) -> Result<(), String> {
    let prefix = object_store::path::Path::from(format!("{}/replays", t.cfg.prefix));
    let mut s = t.store.list(Some(&prefix));
    let mut new = Vec::new();
    while let Some(m) = s.next().await {
        let m = m.map_err(|e| e.to_string())?;
        let Some(name) = m.location.filename() else {
            continue;
        };
        let Some(id) = crate::storage::StorePaths::id_from_name(name, ".rpl") else {
            continue;
        };
        if reg.get(&id).is_none() && !reg.is_expired(&id) {
            new.push((id, m.size));
        }
    }
    let mut learning = futures::stream::iter(new)
        .map(|(id, len)| async move { (learn(t, reg, &id, len).await, id) })
        .buffer_unordered(8);
    while let Some((r, id)) = learning.next().await {
        if let Err(e) = r {
            tracing::warn!("tier: listing: {id}: {e}");
        }
    }
    Ok(())
}

/// Fetches `id` (expected `len` bytes and `etag`) into `STORE/<id>.rpl`.
pub async fn fetch_into_store(t: &Arc<Tier>, id: &str, len: u64, etag: &str) -> Result<(), String> {
    let Some(reg) = t.registry() else {
        return Err("shutting down".into());
    };
    let r = match t.store.get(&t.key("replays", id)).await {
        Ok(r) => r,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(format!(
                "the object of match {id} is not in the bucket any more"
            ))
        }
        Err(e) => return Err(format!("the object store did not answer: {e}")),
    };
    let meta_crc = r
        .attributes
        .get(&Attribute::Metadata(super::upload::META_CRC.into()))
        .map(|v| v.to_string());
    let bytes = r
        .bytes()
        .await
        .map_err(|e| format!("the object store did not answer: {e}"))?;
    Metrics::add(&reg.metrics.tier_fetch_bytes, bytes.len() as u64);
    let (paths, id2, etag) = (t.paths.clone(), id.to_string(), etag.to_string());
    let checked = tokio::task::spawn_blocking(move || -> Result<Result<(), String>, String> {
        if let Err(e) = verify(&bytes, &id2, len, &etag, meta_crc.as_deref()) {
            return Ok(Err(e));
        }
        place(&paths, &id2, &bytes)
            .map_err(|e| format!("cannot write the fetched replay into the local store: {e}"))?;
        Ok(Ok(()))
    })
    .await
    .map_err(|e| format!("fetch task failed: {e}"))?;
    match checked? {
        Ok(()) => {
            reg.set_local(id, true);
            Metrics::add(&reg.metrics.tier_fetches, 1);
            Ok(())
        }
        Err(e) => {
            Metrics::add(&reg.metrics.tier_corrupt, 1);
            Err(format!("the archived object of match {id} failed its integrity check ({e}); it is not served"))
        }
    }
}

/// Every check a fetched object must pass before it is served.
pub fn verify(
    b: &[u8],
    id: &str,
    len: u64,
    etag: &str,
    meta_crc: Option<&str>,
) -> Result<(), String> {
    if b.len() as u64 != len {
        return Err(format!(
            "the object has {} bytes, the replay {len}",
            b.len()
        ));
    }
    if let Some(want) = meta_crc {
        let got = format!("{:08x}", crc32c::crc32c(b));
        if got != want {
            return Err(format!(
                "CRC32C {got} differs from the {want} recorded at upload"
            ));
        }
    }
    let r = format::parse_replay(b).map_err(|e| format!("not a valid replay: {e}"))?;
    if r.header.match_id != id {
        return Err(format!(
            "the replay inside is of match {:?}",
            r.header.match_id
        ));
    }
    if r.trailer.is_none() {
        return Err("the replay inside is not sealed".into());
    }
    let crc = u32::from_le_bytes(
        b[b.len() - format::TRAILER_BYTES + 88..b.len() - format::TRAILER_BYTES + 92]
            .try_into()
            .map_err(|_| "short trailer")?,
    );
    let got = crate::storage::etag_for(len, crc);
    if got != etag {
        return Err(format!("its ETag {got} differs from the listed {etag}"));
    }
    Ok(())
}

/// Writes a verified replay to `STORE/tier-tmp/`, syncs it, renames it into place.
fn place(paths: &crate::storage::StorePaths, id: &str, b: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = paths.root.join("tier-tmp");
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(format!("{id}.rpl.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(b)?;
    f.sync_data()?;
    drop(f);
    std::fs::rename(&tmp, paths.sealed_path(id))?;
    crate::storage::io::sync_dir(&paths.root)
}

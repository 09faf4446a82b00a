//! Copying a closed segment to the bucket, writing manifests, and sweeping objects no manifest
//! names (a copy whose commit never happened: a failed upload, or a leader that lost its
//! leadership part way).

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use fjord_storage::batch::{BatchHeader, HEADER_SIZE};
use fjord_storage::remote::{ChunkExtent, RemoteManifest, RemoteSegment, SegmentExport};

use crate::error::Result;
use crate::store::RemoteStore;
use crate::CHUNK_BYTES;

/// The files of one copy, besides `.log`.
const SIDE_FILES: [&str; 4] = ["index", "timeindex", "txnindex", "snapshot"];

/// Copies `export` under `dir` as copy `id` (unique) by the leader at `leader_epoch`. With `compress`, a
/// segment whose batches are all uncompressed is stored as independently zstd-compressed
/// chunks of `CHUNK_BYTES` raw bytes (staged in `scratch`). On failure whatever was put is
/// deleted again (best effort; a sweep finds what is left).
pub async fn copy_segment(
    store: &RemoteStore,
    dir: &str,
    export: SegmentExport,
    leader_epoch: i32,
    id: &str,
    compress: bool,
    scratch: &Path,
) -> Result<RemoteSegment> {
    let mut seg = RemoteSegment {
        base_offset: export.base_offset,
        next_offset: export.next_offset,
        leader_epoch,
        id: id.to_string(),
        size: export.size,
        raw_size: export.size,
        max_timestamp: export.max_timestamp,
        copied_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        aborted: export.aborted.clone(),
        epochs: export.epochs.clone(),
        chunks: None,
        dir: None,
    };
    let res = put_all(store, dir, &export, &mut seg, compress, scratch).await;
    match res {
        Ok(()) => Ok(seg),
        Err(e) => {
            delete_copy(store, dir, &seg).await;
            Err(e)
        }
    }
}

async fn put_all(
    store: &RemoteStore,
    dir: &str,
    export: &SegmentExport,
    seg: &mut RemoteSegment,
    compress: bool,
    scratch: &Path,
) -> Result<()> {
    let sides = [&export.offset_index, &export.time_index, &export.txn_index, &export.producer_snapshot];
    for (ext, data) in SIDE_FILES.iter().zip(sides) {
        store.put(&format!("{dir}/{}", seg.object_name(ext)), Bytes::from(data.clone())).await?;
    }
    let key = format!("{dir}/{}", seg.object_name("log"));
    if compress {
        let (file, len) = (export.file.clone(), export.size);
        let staged = scratch.join(format!("{}.zst-staging", seg.id));
        let path = staged.clone();
        let archived =
            tokio::task::spawn_blocking(move || archive(&file, len, &path)).await.map_err(std::io::Error::other)?;
        match archived {
            Ok(Some((stored, extents))) => {
                let f = std::fs::File::open(&staged);
                let _ = std::fs::remove_file(&staged);
                let res = store.put_file(&key, Arc::new(f?), stored).await;
                res?;
                seg.size = stored;
                seg.chunks = Some(extents);
                return Ok(());
            }
            Ok(None) => {}
            Err(e) => {
                let _ = std::fs::remove_file(&staged);
                return Err(e.into());
            }
        }
    }
    store.put_file(&key, export.file.clone(), export.size).await
}

/// Whether every batch in the first `len` bytes of `file` is uncompressed (walking the batch
/// headers only).
fn all_uncompressed(file: &std::fs::File, len: u64) -> std::io::Result<bool> {
    let mut pos = 0u64;
    let mut head = [0u8; HEADER_SIZE];
    while pos + HEADER_SIZE as u64 <= len {
        file.read_exact_at(&mut head, pos)?;
        let Ok(h) = BatchHeader::parse(&head) else { return Ok(false) };
        if h.compression() != 0 {
            return Ok(false);
        }
        pos += h.total_size() as u64;
    }
    Ok(true)
}

/// Writes `len` bytes of `file` to `out` as zstd frames of `CHUNK_BYTES` raw bytes each, if
/// every batch is uncompressed: the stored size and each chunk's extents. None when the
/// producers compressed (their batches would not shrink) or nothing was saved.
#[allow(clippy::type_complexity)]
fn archive(file: &std::fs::File, len: u64, out: &Path) -> std::io::Result<Option<(u64, Vec<ChunkExtent>)>> {
    if !all_uncompressed(file, len)? {
        return Ok(None);
    }
    let mut w = std::io::BufWriter::new(std::fs::File::create(out)?);
    let mut extents = Vec::new();
    let mut raw = vec![0u8; CHUNK_BYTES as usize];
    let mut stored = 0u64;
    let mut pos = 0u64;
    while pos < len {
        let n = CHUNK_BYTES.min(len - pos);
        file.read_exact_at(&mut raw[..n as usize], pos)?;
        let z = zstd::bulk::compress(&raw[..n as usize], 3)?;
        w.write_all(&z)?;
        extents.push(ChunkExtent { raw_start: pos, raw_len: n, stored_start: stored, stored_len: z.len() as u64 });
        stored += z.len() as u64;
        pos += n;
    }
    w.flush()?;
    if stored >= len {
        let _ = std::fs::remove_file(out);
        return Ok(None);
    }
    Ok(Some((stored, extents)))
}

/// Deletes every object of `seg` (errors are logged: a sweep retries).
pub async fn delete_copy(store: &RemoteStore, dir: &str, seg: &RemoteSegment) {
    for ext in std::iter::once("log").chain(SIDE_FILES) {
        let key = format!("{dir}/{}", seg.object_name(ext));
        if let Err(e) = store.delete(&key).await {
            tracing::warn!(key, error = %e, "could not delete a remote object");
        }
    }
}

/// Puts the whole manifest as version `manifest.version`: with the objects, what a fresh cluster
/// restores the partition from.
pub async fn write_manifest(store: &RemoteStore, dir: &str, manifest: &RemoteManifest) -> Result<()> {
    let key = format!("{dir}/manifest/{:020}.json", manifest.version);
    store.put(&key, Bytes::from(manifest.to_json())).await
}

/// The newest manifest written under `dir`, if any.
pub async fn read_manifest(store: &RemoteStore, dir: &str) -> Result<Option<RemoteManifest>> {
    let keys = store.list(&format!("{dir}/manifest/")).await?;
    let Some(last) = keys.iter().rev().find(|k| k.ends_with(".json")) else { return Ok(None) };
    let data = store.get(last).await?;
    serde_json::from_slice(&data)
        .map(Some)
        .map_err(|e| crate::TieringError::Corrupt { key: last.clone(), why: e.to_string() })
}

/// Manifest versions kept in the bucket besides the newest.
const MANIFESTS_KEPT: usize = 3;

/// Deletes the objects under `dir` that `manifest` does not name and never will, and manifests
/// older than the last few. Run by the leader at `epoch`, whose manifest holds every copy a
/// leader of an earlier epoch committed (it serves only once it has applied an entry of its own
/// term): a copy of an earlier epoch missing from it is an orphan. Copies of its own epoch go
/// only when listed in `abandoned` (their commit was never proposed), and copies of a later
/// epoch never: a newer leader may be committing them while this one has not yet learnt it
/// lost its leadership. Returns how many objects went.
pub async fn sweep(
    store: &RemoteStore,
    dir: &str,
    manifest: &RemoteManifest,
    epoch: i32,
    abandoned: &std::collections::HashSet<String>,
) -> Result<usize> {
    let prefix = format!("{dir}/");
    let keys = store.list(&prefix).await?;
    let known: std::collections::HashSet<&str> = manifest.segments.iter().map(|s| s.id.as_str()).collect();
    let mut manifests = Vec::new();
    let mut gone = 0;
    for key in &keys {
        let Some(name) = key.strip_prefix(&prefix) else { continue };
        if let Some(m) = name.strip_prefix("manifest/") {
            manifests.push((m.to_string(), key.clone()));
            continue;
        }
        // {base:020}-{epoch}-{id}.{ext}; anything else is not Fjord's and stays.
        let Some((stem, _ext)) = name.rsplit_once('.') else { continue };
        let mut parts = stem.splitn(3, '-');
        let (Some(_base), Some(copied_in), Some(id)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let Ok(copied_in) = copied_in.parse::<i32>() else { continue };
        let orphan = copied_in < epoch || (copied_in == epoch && abandoned.contains(id));
        if orphan && !known.contains(id) {
            store.delete(key).await?;
            gone += 1;
        }
    }
    let newest = format!("{:020}.json", manifest.version);
    for (name, key) in manifests.iter().rev().skip(MANIFESTS_KEPT + 1) {
        if *name < newest {
            store.delete(key).await?;
            gone += 1;
        }
    }
    Ok(gone)
}

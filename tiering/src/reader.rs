//! Reads of remote segments: the batches from an offset, found through the segment's offset
//! index, fetched in `CHUNK_BYTES` chunks through the on-disk cache, the next chunk read ahead
//! for a sequential reader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use fjord_storage::batch::BatchHeader;
use fjord_storage::remote::{self, RemoteSegment};

use crate::cache::ChunkCache;
use crate::error::{Result, TieringError};
use crate::store::RemoteStore;
use crate::CHUNK_BYTES;

/// Small objects (offset and time indexes) kept in memory, at most this many.
const INDEXES_KEPT: usize = 4096;

#[derive(Clone)]
pub struct RemoteReader {
    store: Arc<RemoteStore>,
    cache: Arc<ChunkCache>,
    indexes: Arc<Mutex<HashMap<String, Bytes>>>,
}

impl RemoteReader {
    pub fn new(store: Arc<RemoteStore>, cache: Arc<ChunkCache>) -> RemoteReader {
        RemoteReader { store, cache, indexes: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// An index object of `seg` (`index` or `timeindex`).
    async fn index(&self, dir: &str, seg: &RemoteSegment, ext: &str) -> Result<Bytes> {
        let key = format!("{dir}/{}", seg.object_name(ext));
        if let Some(b) = self.indexes.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(b.clone());
        }
        let data = self.store.get(&key).await?;
        let mut m = self.indexes.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= INDEXES_KEPT {
            m.clear();
        }
        m.insert(key, data.clone());
        Ok(data)
    }

    fn chunks(seg: &RemoteSegment) -> u64 {
        seg.raw_size.div_ceil(CHUNK_BYTES)
    }

    /// The raw bytes of chunk `i` of `seg`'s `.log` object, from the cache or the bucket.
    async fn chunk(&self, dir: &str, seg: &RemoteSegment, i: u64) -> Result<Bytes> {
        let key = format!("{dir}/{}", seg.object_name("log"));
        let name = format!("{key}#{i}");
        let cache = self.cache.clone();
        let cached = {
            let name = name.clone();
            tokio::task::spawn_blocking(move || cache.get(&name)).await.map_err(std::io::Error::other)?
        };
        if let Some(b) = cached {
            return Ok(b);
        }
        let data = fetch_chunk(&self.store, &key, seg, i).await?;
        let cache = self.cache.clone();
        let keep = data.clone();
        tokio::task::spawn_blocking(move || cache.put(&name, &keep)).await.map_err(std::io::Error::other)?;
        Ok(data)
    }

    /// Reads chunk `i` into the cache in the background, unless it is there or past the end.
    fn read_ahead(&self, dir: &str, seg: &RemoteSegment, i: u64) {
        let name = format!("{dir}/{}#{i}", seg.object_name("log"));
        if i >= Self::chunks(seg) || self.cache.contains(&name) {
            return;
        }
        let (me, dir, seg) = (self.clone(), dir.to_string(), seg.clone());
        tokio::spawn(async move {
            if let Err(e) = me.chunk(&dir, &seg, i).await {
                tracing::debug!(error = %e, "remote read-ahead failed");
            }
        });
    }

    /// Whole batches of `seg` from the one holding `offset`, at most `max_bytes` unless the
    /// first batch alone is larger (it is returned whole, as a local read would).
    pub async fn read(&self, dir: &str, seg: &RemoteSegment, offset: i64, max_bytes: usize) -> Result<Bytes> {
        let t0 = Instant::now();
        let index = self.index(dir, seg, "index").await?;
        let pos = remote::index_position(&index, seg.base_offset, offset);
        if pos >= seg.raw_size {
            return Err(TieringError::Corrupt {
                key: format!("{dir}/{}", seg.object_name("index")),
                why: format!("position {pos} is past the segment's {} bytes", seg.raw_size),
            });
        }
        check_sizes(dir, seg)?;
        let mut want = (max_bytes as u64).clamp(1, 64 << 20);
        loop {
            if want > MAX_BATCH_READ {
                return Err(TieringError::Corrupt {
                    key: format!("{dir}/{}", seg.object_name("log")),
                    why: format!("no whole batch at offset {offset} within {MAX_BATCH_READ} bytes"),
                });
            }
            let end = (pos + want).min(seg.raw_size);
            let data = self.raw_range(dir, seg, pos, end).await?;
            let (s, e) = remote::batch_range(&data, offset, max_bytes, true);
            let complete = end == seg.raw_size;
            // A first batch running past what was read: read further (it is returned whole).
            if s == e && !complete && first_batch_runs_past(&data, offset) {
                want = want.saturating_mul(2);
                continue;
            }
            metrics::histogram!("fjord_remote_read_seconds").record(t0.elapsed().as_secs_f64());
            self.read_ahead(dir, seg, end.div_ceil(CHUNK_BYTES));
            return Ok(data.slice(s..e));
        }
    }

    /// Raw bytes [start, end) of `seg`'s batches, assembled from chunks.
    async fn raw_range(&self, dir: &str, seg: &RemoteSegment, start: u64, end: u64) -> Result<Bytes> {
        let first = start / CHUNK_BYTES;
        let last = end.div_ceil(CHUNK_BYTES);
        if last == first + 1 {
            let c = self.chunk(dir, seg, first).await?;
            let from = (start - first * CHUNK_BYTES) as usize;
            let to = ((end - first * CHUNK_BYTES) as usize).min(c.len());
            return Ok(c.slice(from.min(to)..to));
        }
        let mut out = BytesMut::with_capacity((end - start) as usize);
        for i in first..last {
            let c = self.chunk(dir, seg, i).await?;
            let base = i * CHUNK_BYTES;
            let from = start.saturating_sub(base) as usize;
            let to = ((end - base) as usize).min(c.len());
            if from < to {
                out.extend_from_slice(&c[from..to]);
            }
        }
        Ok(out.freeze())
    }

    /// The first batch of `seg` whose records reach timestamp `ts`, found through its time
    /// index (ListOffsets by timestamp on remote data).
    pub async fn batch_by_timestamp(&self, dir: &str, seg: &RemoteSegment, ts: i64) -> Result<Option<Bytes>> {
        if seg.max_timestamp < ts {
            return Ok(None);
        }
        let tindex = self.index(dir, seg, "timeindex").await?;
        let mut offset = remote::time_index_offset(&tindex, seg.base_offset, ts);
        while offset < seg.next_offset {
            let data = self.read(dir, seg, offset, 1 << 20).await?;
            if data.is_empty() {
                return Ok(None);
            }
            let mut pos = 0;
            while pos < data.len() {
                let h = BatchHeader::parse(&data[pos..]).map_err(|e| TieringError::Corrupt {
                    key: format!("{dir}/{}", seg.object_name("log")),
                    why: e.to_string(),
                })?;
                let end = pos + h.total_size();
                if h.max_timestamp >= ts && !h.is_control() {
                    return Ok(Some(data.slice(pos..end)));
                }
                offset = h.last_offset() + 1;
                pos = end;
            }
        }
        Ok(None)
    }
}

/// The most a read goes on looking for the end of one batch (a batch is at most
/// max.message.bytes, far below this).
const MAX_BATCH_READ: u64 = 256 << 20;

/// The manifest's sizes of a copy agree with each other (it comes from the bucket or a peer:
/// checked before anything is allocated by them).
fn check_sizes(dir: &str, seg: &RemoteSegment) -> Result<()> {
    let ok = match &seg.chunks {
        None => seg.raw_size == seg.size,
        Some(ext) => {
            ext.iter().all(|e| e.raw_len <= CHUNK_BYTES && e.stored_len <= 2 * CHUNK_BYTES)
                && ext.iter().map(|e| e.raw_len).sum::<u64>() == seg.raw_size
                && ext.len() as u64 == seg.raw_size.div_ceil(CHUNK_BYTES)
        }
    };
    if ok {
        Ok(())
    } else {
        Err(TieringError::Corrupt {
            key: format!("{dir}/{}", seg.object_name("log")),
            why: "the manifest's sizes of the copy disagree".into(),
        })
    }
}

fn first_batch_runs_past(data: &[u8], offset: i64) -> bool {
    let mut pos = 0;
    while pos < data.len() {
        let Ok(h) = BatchHeader::parse(&data[pos..]) else { return true };
        let end = pos + h.total_size();
        if end > data.len() {
            return true;
        }
        if h.last_offset() >= offset {
            return false;
        }
        pos = end;
    }
    true
}

/// Chunk `i` of the `.log` object `key`: a ranged read of the raw bytes, or of the chunk's
/// compressed extent, decompressed and checked against its recorded size.
async fn fetch_chunk(store: &RemoteStore, key: &str, seg: &RemoteSegment, i: u64) -> Result<Bytes> {
    match &seg.chunks {
        None => {
            let start = i * CHUNK_BYTES;
            store.get_range(key, start, (start + CHUNK_BYTES).min(seg.size)).await
        }
        Some(extents) => {
            let corrupt = |why: String| TieringError::Corrupt { key: key.to_string(), why };
            let ext = extents.get(i as usize).ok_or_else(|| corrupt(format!("no chunk {i}")))?;
            let stored = store.get_range(key, ext.stored_start, ext.stored_start + ext.stored_len).await?;
            let cap = ext.raw_len as usize;
            let raw = tokio::task::spawn_blocking(move || zstd::bulk::decompress(&stored[..], cap))
                .await
                .map_err(std::io::Error::other)?
                .map_err(|e| corrupt(format!("chunk {i}: {e}")))?;
            if raw.len() as u64 != ext.raw_len {
                return Err(corrupt(format!("chunk {i} holds {} bytes, not {}", raw.len(), ext.raw_len)));
            }
            Ok(Bytes::from(raw))
        }
    }
}

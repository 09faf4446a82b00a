//! Fjord's tiered storage (KIP-405): closed segments of a partition are copied to an
//! S3-compatible bucket with their indexes, aborted-transaction index and producer snapshot;
//! readers below the local log start are served from the bucket through a bounded on-disk
//! chunk cache.
//!
//! This crate knows the bucket and the object layout, not the cluster: the broker decides which
//! partitions it leads, commits each copy through the partition's log (a `RemoteChange`), and
//! asks this crate to move bytes.
//!
//! Layout under the configured prefix, per partition `{topic}-{topic id}/{partition}/`:
//! `{base offset:020}-{leader epoch}-{copy id}.{log,index,timeindex,txnindex,snapshot}` and
//! `manifest/{version:020}.json` (the whole manifest after each change).

pub mod cache;
pub mod copy;
pub mod error;
pub mod reader;
pub mod store;

pub use cache::ChunkCache;
pub use error::{Result, TieringError};
pub use reader::RemoteReader;
pub use store::{RemoteStore, S3Config};

/// Bytes of one cached (and, in an archived segment, independently compressed) chunk of a
/// segment's `.log` object: the unit of ranged reads, readahead and the cache.
pub const CHUNK_BYTES: u64 = 1 << 20;

/// Wait before retry number `failures` (from 1): 0.5 s doubling per failure, at most
/// `max`, scaled by a random factor in [0.5, 1.5) so partitions that failed together do not
/// retry together.
pub fn backoff(failures: u32, max: std::time::Duration) -> std::time::Duration {
    let base = std::time::Duration::from_millis(500).saturating_mul(1 << failures.clamp(1, 10).saturating_sub(1));
    base.mul_f64(0.5 + rand::random::<f64>()).min(max)
}

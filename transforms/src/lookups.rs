//! Lookup tables: a transform's declared compacted topics, read whole and kept current as
//! key → newest value maps, for enrichment (`fjord.lookup`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use crate::client::Client;
use crate::engine::{Lookup, NoSuchTable};

/// How long a lookup fetch waits for new records.
const FETCH_WAIT_MS: i32 = 500;
const FETCH_BYTES: i32 = 4 << 20;

pub struct Tables {
    maps: Vec<RwLock<HashMap<Bytes, Bytes>>>,
    /// Partitions (of all tables) not yet read up to their end as of the start.
    behind: watch::Sender<usize>,
}

impl Lookup for Tables {
    fn get(&self, table: usize, key: &[u8]) -> Result<Option<Bytes>, NoSuchTable> {
        let map = self.maps.get(table).ok_or(NoSuchTable)?;
        Ok(map.read().unwrap_or_else(|e| e.into_inner()).get(key).cloned())
    }
}

impl Tables {
    /// Starts reading `topics` (each a table, in order) from the cluster at `bootstrap`, until
    /// `stop`. Each partition is read on a connection of its own: a connection serves requests
    /// in order, and one partition's long poll would hold the others back.
    pub async fn start(bootstrap: Vec<String>, topics: &[String], stop: watch::Receiver<bool>) -> Arc<Tables> {
        let client = Arc::new(Client::connect(bootstrap.clone(), "fjord-transform-lookups"));
        let (behind, _) = watch::channel(0usize);
        let tables = Arc::new(Tables { maps: topics.iter().map(|_| RwLock::new(HashMap::new())).collect(), behind });
        for (i, topic) in topics.iter().enumerate() {
            let count = loop {
                match client.partition_count(topic).await {
                    Ok(n) => break n,
                    Err(e) => {
                        tracing::debug!(topic, error = %e, "lookup table's partitions");
                        if *stop.borrow() {
                            return tables;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            };
            for p in 0..count {
                tables.behind.send_modify(|b| *b += 1);
                let own = Arc::new(Client::connect(bootstrap.clone(), "fjord-transform-lookups"));
                tokio::spawn(follow(own, tables.clone(), i, topic.clone(), p, stop.clone()));
            }
        }
        tables
    }

    /// Waits until every table holds what its topic held when it started (so the first batches
    /// are not enriched from half-read tables), or `timeout`.
    pub async fn ready(&self, timeout: Duration) -> bool {
        let mut rx = self.behind.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|b| *b == 0)).await.is_ok_and(|r| r.is_ok())
    }
}

async fn follow(
    client: Arc<Client>,
    tables: Arc<Tables>,
    table: usize,
    topic: String,
    partition: i32,
    stop: watch::Receiver<bool>,
) {
    let mut caught_up = false;
    let mut end = None;
    let mut position = None;
    while !*stop.borrow() {
        if position.is_none() {
            position = client.list_offset(&topic, partition, -2).await.ok();
            end = client.list_offset(&topic, partition, -1).await.ok();
        }
        let Some(at) = position else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        match client.fetch(&topic, partition, at, FETCH_BYTES, FETCH_WAIT_MS, true).await {
            Ok(f) => {
                {
                    let mut map = tables.maps[table].write().unwrap_or_else(|e| e.into_inner());
                    for r in &f.records {
                        let Some(key) = r.key.clone() else { continue };
                        match &r.value {
                            Some(v) => map.insert(key, v.clone()),
                            None => map.remove(&key),
                        };
                    }
                }
                position = Some(f.next_offset.max(at));
                if !caught_up && end.is_none_or(|e| f.next_offset >= e || f.last_stable_offset <= at) {
                    caught_up = true;
                    tables.behind.send_modify(|b| *b = b.saturating_sub(1));
                }
            }
            Err(e) => {
                tracing::debug!(topic, partition, error = %e, "lookup table read");
                // Out of range (compaction or retention moved the start) or a moved leader:
                // start over from the log start; the map keeps what it has meanwhile.
                position = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    if !caught_up {
        tables.behind.send_modify(|b| *b = b.saturating_sub(1));
    }
}

//! Tiered storage in the broker (KIP-405): the copier that runs beside each partition leader,
//! and the remote reads Fetch and ListOffsets fall back to below the local log start.
//!
//! The copier, every `remote_log_manager_task_interval_ms`, for each partition of a topic with
//! `remote.storage.enable` that this node leads:
//! 1. on the first pass of a leadership, sweeps the partition's objects that the committed
//!    manifest does not name (copies whose commit never happened);
//! 2. copies each closed, committed and stable segment past the manifest's end, then commits
//!    its `RemoteChange::Add` through the partition's log (Raft, so every replica learns it and
//!    a new leader carries on from it), then writes the manifest object;
//! 3. applies total retention (`retention.ms`, `retention.bytes`) to the remote copies: commits
//!    `RemoteChange::DeleteBelow`, then deletes their objects.
//!
//! A copy whose commit fails is deleted again. Failures back off (with jitter) per partition;
//! produce never waits for any of it. Local retention lets a segment go only once the committed
//! manifest covers it (`LogConfig::remote_storage`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fjord_storage::remote::{RemoteChange, RemoteManifest, RemoteSegment};
use fjord_storage::PartitionLog;
use fjord_tiering::{copy, ChunkCache, RemoteReader, RemoteStore, S3Config, TieringError};
use tokio::sync::watch;

use crate::config::BrokerConfig;
use crate::leadership::{LeaderGuard, Leadership, NO_EPOCH};
use crate::server::Broker;

/// How long a commit of a manifest change may wait for the partition's Raft group.
const COMMIT_WAIT: Duration = Duration::from_secs(30);
/// Partitions copied at once.
const PARALLEL: usize = 4;
/// Segments one partition copies per pass (the rest wait for the next pass, so one busy
/// partition does not hold up the others).
const SEGMENTS_PER_PASS: usize = 8;
/// Longest back-off after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub struct Tiered {
    pub store: Arc<RemoteStore>,
    pub reader: RemoteReader,
    compress: bool,
    scratch: PathBuf,
    interval: Duration,
    states: Mutex<HashMap<(String, i32), PartState>>,
    /// `remote_copy_lag_max_bytes`.
    lag_max: u64,
    /// Partitions led here whose copies are more than `lag_max` behind: produce is refused.
    over_limit: Mutex<std::collections::HashSet<(String, i32)>>,
}

#[derive(Default, Clone)]
struct PartState {
    /// The leader epoch whose first pass swept the partition's objects.
    swept_epoch: Option<i32>,
    /// The manifest version last written to the bucket.
    written: u64,
    failures: u32,
    retry_at: Option<Instant>,
    /// Copies of this leadership whose Add was never proposed: the sweep may delete them.
    abandoned: std::collections::HashSet<String>,
    /// A copy whose Add was proposed but not seen to commit (timed out): no further copy until
    /// it shows in the manifest, or the leadership ends (the next leader's sweep then decides).
    pending: Option<(i32, String)>,
}

impl Tiered {
    /// Remote storage as configured, if `remote_storage_enable`. Refused credentials stop the
    /// broker here with the bucket's answer; an unreachable bucket does not (copies back off
    /// until it answers).
    pub async fn start(config: &BrokerConfig) -> anyhow::Result<Option<Arc<Tiered>>> {
        if !config.remote_storage_enable {
            return Ok(None);
        }
        let s3 = S3Config {
            bucket: config.s3_bucket.clone().unwrap_or_default(),
            region: config.s3_region.clone(),
            endpoint: config.s3_endpoint.clone(),
            prefix: config.s3_prefix.clone(),
        };
        let store = Arc::new(RemoteStore::connect(&s3).await?);
        match store.check().await {
            Ok(()) => {}
            Err(e @ (TieringError::Denied { .. } | TieringError::NotFound { .. } | TieringError::Config(_))) => {
                anyhow::bail!("remote storage (bucket {}): {e}", s3.bucket)
            }
            Err(e) => tracing::warn!(bucket = s3.bucket, error = %e, "remote storage unreachable; copies wait for it"),
        }
        let cache_dir = config.remote_cache_dir.clone().unwrap_or_else(|| config.data_dir.join("remote-cache"));
        let cache = Arc::new(ChunkCache::open(&cache_dir, config.remote_cache_max_bytes)?);
        let scratch = cache_dir.join("staging");
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch)?;
        tracing::info!(bucket = s3.bucket, endpoint = ?s3.endpoint, prefix = s3.prefix, "remote storage enabled");
        Ok(Some(Arc::new(Tiered {
            reader: RemoteReader::new(store.clone(), cache),
            store,
            compress: config.remote_storage_compression == "zstd",
            scratch,
            interval: Duration::from_millis(config.remote_log_manager_task_interval_ms),
            states: Mutex::new(HashMap::new()),
            lag_max: config.remote_copy_lag_max_bytes,
            over_limit: Mutex::new(Default::default()),
        })))
    }

    /// The bucket directory of a partition.
    pub fn partition_dir(&self, topic: &str, topic_id: uuid::Uuid, partition: i32) -> String {
        self.store.partition_dir(topic, &topic_id.simple().to_string(), partition)
    }

    fn state(&self, key: &(String, i32)) -> PartState {
        self.states.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned().unwrap_or_default()
    }

    /// Why a produce to `log` (partition `partition` of `topic`, whose config says whether it is
    /// `restoring`) is refused: a restore from the bucket not yet done, or copies too far behind.
    pub fn produce_refusal(&self, topic: &str, partition: i32, log: &PartitionLog, restoring: bool) -> Option<String> {
        if restoring && log.remote_manifest().version == 0 {
            return Some("the partition is being restored from the bucket (remote.restore.source); retry".into());
        }
        self.refusal(topic, partition)
    }

    /// Why a produce to `topic`-`partition` is refused, if its copies are too far behind.
    pub fn refusal(&self, topic: &str, partition: i32) -> Option<String> {
        let over = self.over_limit.lock().unwrap_or_else(|e| e.into_inner());
        if over.is_empty() || !over.contains(&(topic.to_string(), partition)) {
            return None;
        }
        Some(format!(
            "remote storage is behind: more than remote_copy_lag_max_bytes ({}) of this partition's closed \
             segments wait to be copied to the bucket; retry once copies resume",
            self.lag_max
        ))
    }

    fn set_over_limit(&self, key: &(String, i32), over: bool) {
        let mut set = self.over_limit.lock().unwrap_or_else(|e| e.into_inner());
        if over {
            set.insert(key.clone());
        } else {
            set.remove(key);
        }
    }

    fn set_state(&self, key: (String, i32), st: PartState) {
        self.states.lock().unwrap_or_else(|e| e.into_inner()).insert(key, st);
    }
}

/// Topics with `remote.storage.enable=true`: name, id, partitions, configs.
fn remote_topics(broker: &Broker) -> Vec<(String, uuid::Uuid, i32, std::collections::BTreeMap<String, String>)> {
    let on = |c: &std::collections::BTreeMap<String, String>| {
        c.get("remote.storage.enable").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    };
    if let Some(cluster) = &broker.cluster {
        return cluster.read(|m| {
            m.topics()
                .iter()
                .filter(|(_, t)| on(&t.configs))
                .map(|(n, t)| (n.clone(), t.id, i32::try_from(t.partitions.len()).unwrap_or(0), t.configs.clone()))
                .collect()
        });
    }
    broker
        .topics
        .list()
        .into_iter()
        .filter(|(_, m)| on(&m.configs))
        .map(|(n, m)| (n, m.id, m.partitions, m.configs))
        .collect()
}

/// The ids of the topics with remote storage, by name.
pub fn remote_topic_ids(broker: &Broker) -> HashMap<String, uuid::Uuid> {
    remote_topics(broker).into_iter().map(|(n, id, _, _)| (n, id)).collect()
}

/// Deletes the objects of a deleted topic from the bucket: its own directory (copies another
/// topic's restore took over stay with that topic). Failures are logged; a later DeleteTopics
/// of a topic of the same name does not see them (its id differs).
pub async fn delete_topic_objects(broker: Arc<Broker>, topic: String, id: uuid::Uuid) {
    let Some(tiered) = broker.tiered.clone() else { return };
    let dir = tiered.store.key(&format!("{topic}-{}/", id.simple()));
    // A leader's pass that began before the deletion may still put objects (and the manifest at
    // its end): rounds go on, a copier interval apart, until one finds the directory empty.
    let mut failures = 0u32;
    let mut total = 0;
    for _ in 0..60 {
        let res = async {
            let keys = tiered.store.list(&dir).await?;
            for k in &keys {
                tiered.store.delete(k).await?;
            }
            Ok::<usize, TieringError>(keys.len())
        }
        .await;
        match res {
            Ok(0) => {
                tracing::info!(topic, objects = total, "deleted a deleted topic's objects from remote storage");
                return;
            }
            Ok(n) => {
                total += n;
                tokio::time::sleep(tiered.interval.max(Duration::from_millis(200))).await;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(topic, error = %e, "could not delete a deleted topic's remote objects");
                tokio::time::sleep(fjord_tiering::backoff(failures, MAX_BACKOFF)).await;
            }
        }
    }
    tracing::warn!(topic, "gave up deleting a deleted topic's remote objects");
}

/// The copier (see the module's doc), until shutdown.
pub async fn copier_loop(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let Some(tiered) = broker.tiered.clone() else { return };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tiered.interval) => {}
            _ = shutdown.changed() => return,
        }
        let mut work = Vec::new();
        for (topic, id, partitions, configs) in remote_topics(&broker) {
            for p in 0..partitions {
                work.push((topic.clone(), id, p, configs.clone()));
            }
        }
        use futures::StreamExt;
        futures::stream::iter(work)
            .for_each_concurrent(PARALLEL, |(topic, id, p, configs)| {
                let (broker, tiered) = (broker.clone(), tiered.clone());
                async move { pass(&broker, &tiered, &topic, id, p, &configs).await }
            })
            .await;
    }
}

/// One pass over one partition.
async fn pass(
    broker: &Arc<Broker>,
    tiered: &Tiered,
    topic: &str,
    id: uuid::Uuid,
    p: i32,
    configs: &std::collections::BTreeMap<String, String>,
) {
    let key = (topic.to_string(), p);
    let mut st = tiered.state(&key);
    let Ok(guard) = broker.lead(topic, p, NO_EPOCH) else {
        // Another node copies: this one sweeps again if it leads again.
        if st.swept_epoch.is_some() {
            set_lag(topic, p, 0, 0);
            st.swept_epoch = None;
            tiered.set_over_limit(&key, false);
            tiered.set_state(key, st);
        }
        return;
    };
    if st.retry_at.is_some_and(|t| Instant::now() < t) {
        update_lag(tiered, &key, &guard.log);
        return;
    }
    let dir = tiered.partition_dir(topic, id, p);
    match copy_and_expire(broker, tiered, &guard, &dir, topic, configs, &mut st).await {
        Ok(()) => {
            st.failures = 0;
            st.retry_at = None;
        }
        Err(e) => {
            // A failed copy may have left objects its own clean-up could not delete (the bucket
            // being down): the next pass sweeps first.
            st.swept_epoch = None;
            st.failures = st.failures.saturating_add(1);
            let wait = fjord_tiering::backoff(st.failures, MAX_BACKOFF);
            st.retry_at = Some(Instant::now() + wait);
            metrics::counter!("fjord_remote_copy_errors_total").increment(1);
            if matches!(e, TieringError::Denied { .. }) {
                tracing::error!(topic, partition = p, error = %e, "remote storage refused a copy");
            } else {
                tracing::warn!(topic, partition = p, error = %e, retry_in_ms = wait.as_millis() as u64, "remote storage pass failed");
            }
        }
    }
    update_lag(tiered, &key, &guard.log);
    tiered.set_state(key, st);
}

/// The partition's copy backlog: exported, and past `remote_copy_lag_max_bytes`, produce is
/// refused.
fn update_lag(tiered: &Tiered, key: &(String, i32), log: &PartitionLog) {
    let (segments, bytes) = log.segments_after(log.remote_manifest().end().unwrap_or(i64::MIN));
    set_lag(&key.0, key.1, segments, bytes);
    let over = bytes > tiered.lag_max;
    if over && tiered.refusal(&key.0, key.1).is_none() {
        tracing::warn!(
            topic = key.0,
            partition = key.1,
            bytes,
            "copies to remote storage too far behind: produce refused"
        );
    }
    tiered.set_over_limit(key, over);
}

fn set_lag(topic: &str, p: i32, segments: usize, bytes: u64) {
    let labels = [("topic", topic.to_string()), ("partition", p.to_string())];
    metrics::gauge!("fjord_remote_upload_lag_segments", &labels).set(segments as f64);
    metrics::gauge!("fjord_remote_upload_lag_bytes", &labels).set(bytes as f64);
}

async fn copy_and_expire(
    broker: &Arc<Broker>,
    tiered: &Tiered,
    guard: &LeaderGuard,
    dir: &str,
    topic: &str,
    configs: &std::collections::BTreeMap<String, String>,
    st: &mut PartState,
) -> Result<(), TieringError> {
    let log = &guard.log;
    if let Some((epoch, id)) = &st.pending {
        let committed = log.remote_manifest().segments.iter().any(|s| &s.id == id);
        if committed || *epoch != guard.epoch {
            st.pending = None;
        } else {
            // Still leader in the epoch it was proposed in: it commits, or the leadership ends.
            return Ok(());
        }
    }
    if st.swept_epoch != Some(guard.epoch) {
        let gone = copy::sweep(&tiered.store, dir, &log.remote_manifest(), guard.epoch, &st.abandoned).await?;
        st.abandoned.clear();
        if gone > 0 {
            tracing::info!(topic, dir, objects = gone, "deleted remote objects no committed copy names");
        }
        if dir.ends_with("/0") {
            write_descriptor(broker, tiered, topic, configs).await?;
        }
        st.swept_epoch = Some(guard.epoch);
    }
    if log.config().remote_restore && log.remote_manifest().version == 0 {
        let source = configs.get("remote.restore.source").map(|s| s.trim().to_string()).unwrap_or_default();
        restore_partition(broker, tiered, guard, &source, dir).await?;
    }
    for _ in 0..SEGMENTS_PER_PASS {
        let m = log.remote_manifest();
        let from = m.end().unwrap_or_else(|| log.log_start_offset());
        let l = log.clone();
        let export = crate::api::blocking(move || l.export_segment(from))
            .await
            .map_err(|e| TieringError::Io(std::io::Error::other(e.to_string())))?;
        let Some(export) = export else { break };
        let (base, next, size) = (export.base_offset, export.next_offset, export.size);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let copied =
            copy::copy_segment(&tiered.store, dir, export, guard.epoch, &id, tiered.compress, &tiered.scratch).await;
        let seg = match copied {
            Ok(seg) => seg,
            Err(e) => {
                // Its own clean-up may have failed too (the bucket down): the sweep retries.
                st.abandoned.insert(id);
                return Err(e);
            }
        };
        match commit(broker, guard, RemoteChange::Add(seg.clone())).await {
            Ok(()) => {}
            Err(Commit::Refused(e)) => {
                copy::delete_copy(&tiered.store, dir, &seg).await;
                st.abandoned.insert(id);
                return Err(e);
            }
            Err(Commit::Unknown(e)) => {
                // It may still commit: the objects stay (deleting them could lose the only copy
                // of segments local retention then lets go).
                st.pending = Some((guard.epoch, id));
                return Err(e);
            }
        }
        metrics::counter!("fjord_remote_segments_copied_total").increment(1);
        tracing::debug!(topic, base, next, size, stored = seg.size, "segment copied to remote storage");
    }
    expire(broker, tiered, guard, dir, topic, configs).await?;
    let m = log.remote_manifest();
    if m.version > st.written {
        copy::write_manifest(&tiered.store, dir, &m).await?;
        st.written = m.version;
    }
    Ok(())
}

/// What a fresh cluster restores the topic from: its partition count and configs, at
/// `{topic}-{id}/topic.json` (written by partition 0's leader once per leadership).
#[derive(serde::Serialize, serde::Deserialize)]
struct Descriptor {
    name: String,
    id: String,
    partitions: i32,
    configs: BTreeMap<String, String>,
}

async fn write_descriptor(
    broker: &Arc<Broker>,
    tiered: &Tiered,
    topic: &str,
    configs: &BTreeMap<String, String>,
) -> Result<(), TieringError> {
    let Some(id) = broker.topic_id(topic) else { return Ok(()) };
    let partitions = remote_topics(broker).into_iter().find(|t| t.0 == topic).map_or(0, |t| t.2);
    let mut configs = configs.clone();
    configs.remove("remote.restore.source");
    let d = Descriptor { name: topic.to_string(), id: id.simple().to_string(), partitions, configs };
    let key = tiered.store.key(&format!("{topic}-{}/topic.json", d.id));
    tiered.store.put(&key, Bytes::from(serde_json::to_vec(&d).unwrap_or_default())).await
}

/// The bucket directory (`topic-id`) `source` names: itself, or the only directory of the topic
/// `source` in the bucket. Returns it with the source's descriptor.
async fn resolve_source(tiered: &Tiered, source: &str) -> Result<(String, Descriptor), String> {
    let source = source.trim();
    let is_dir =
        |s: &str| s.rsplit_once('-').is_some_and(|(_, id)| id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()));
    let mut dirs: Vec<String> = Vec::new();
    if is_dir(source) {
        dirs.push(source.to_string());
    } else {
        let prefix = tiered.store.key(&format!("{source}-"));
        let keys = tiered.store.list(&prefix).await.map_err(|e| e.to_string())?;
        let root = tiered.store.key("");
        for k in keys {
            let rel = k.strip_prefix(&root).unwrap_or(&k).trim_start_matches('/');
            if let Some((d, _)) = rel.split_once('/') {
                if is_dir(d)
                    && d.strip_prefix(source).and_then(|r| r.strip_prefix('-')).is_some_and(|id| id.len() == 32)
                    && !dirs.iter().any(|x| x == d)
                {
                    dirs.push(d.to_string());
                }
            }
        }
    }
    let dir = match dirs.as_slice() {
        [] => return Err(format!("the bucket holds no topic {source:?}")),
        [one] => one.clone(),
        many => {
            return Err(format!(
                "the bucket holds several topics named {source:?} (deleted and created again): name one of {}",
                many.join(", ")
            ))
        }
    };
    let key = tiered.store.key(&format!("{dir}/topic.json"));
    match tiered.store.get(&key).await {
        Ok(data) => {
            let d: Descriptor = serde_json::from_slice(&data).map_err(|e| format!("{key}: {e}"))?;
            Ok((dir, d))
        }
        // Copied before descriptors were written: the partitions are the directories with a
        // manifest, the configs the defaults.
        Err(TieringError::NotFound { .. }) => {
            let prefix = tiered.store.key(&format!("{dir}/"));
            let keys = tiered.store.list(&prefix).await.map_err(|e| e.to_string())?;
            let partitions = keys
                .iter()
                .filter_map(|k| k.strip_prefix(&prefix)?.split_once("/manifest/")?.0.parse::<i32>().ok())
                .max()
                .map_or(0, |p| p + 1);
            if partitions == 0 {
                return Err(format!("{dir} holds no manifest"));
            }
            let (name, id) = dir.rsplit_once('-').unwrap_or((&dir, ""));
            let d = Descriptor { name: name.into(), id: id.into(), partitions, configs: BTreeMap::new() };
            Ok((dir, d))
        }
        Err(e) => Err(format!("{key}: {e}")),
    }
}

/// Prepares a CreateTopics of a topic with `remote.restore.source`: the source resolved to its
/// bucket directory, its partition count (which must match one the request gives) and its
/// configs under the request's own.
pub async fn prepare_restore(
    broker: &Broker,
    partitions: i32,
    configs: &mut BTreeMap<String, String>,
) -> Result<i32, String> {
    let Some(source) = configs.get("remote.restore.source").cloned() else { return Ok(partitions) };
    let tiered = broker.tiered.as_ref().ok_or("remote.restore.source needs a broker with remote_storage_enable")?;
    let (dir, d) = resolve_source(tiered, &source).await?;
    if partitions != -1 && partitions != d.partitions {
        return Err(format!("{dir} has {} partitions, not {partitions}", d.partitions));
    }
    for (k, v) in d.configs {
        configs.entry(k).or_insert(v);
    }
    configs.insert("remote.storage.enable".into(), "true".into());
    configs.insert("remote.restore.source".into(), dir);
    Ok(d.partitions)
}

/// Restores partition `dir`'s log from the source's copies: the log moves on to the copies'
/// end (a filler entry, then the log start there, so offsets stay the source's), then the
/// manifest takes the copies. Produce waits meanwhile (`Tiered::refusal`); a failure is retried
/// by the next pass, and each step is skipped once done.
async fn restore_partition(
    broker: &Arc<Broker>,
    tiered: &Tiered,
    guard: &LeaderGuard,
    source: &str,
    dir: &str,
) -> Result<(), TieringError> {
    let partition = dir.rsplit('/').next().unwrap_or("0");
    let source_dir = tiered.store.key(&format!("{source}/{partition}"));
    let m = copy::read_manifest(&tiered.store, &source_dir).await?.unwrap_or_default();
    let mut segments = m.segments;
    for s in &mut segments {
        s.dir.get_or_insert_with(|| source_dir.clone());
    }
    let log = &guard.log;
    if let Some(end) = segments.iter().map(|s| s.next_offset).max() {
        if log.log_end_offset() > end {
            return Err(TieringError::Config(format!(
                "cannot restore {source_dir}: this partition's log already ends at {}, past the copies' end {end}",
                log.log_end_offset()
            )));
        }
        match &guard.raft {
            None => {
                let l = log.clone();
                let empty = fjord_storage::producer::ProducerStates::default().to_json();
                crate::api::blocking(move || l.reset_to(end, &empty))
                    .await
                    .map_err(|e| TieringError::Io(std::io::Error::other(e.to_string())))?;
            }
            Some(_) => {
                while log.log_end_offset() < end {
                    let from = log.log_end_offset();
                    let to = end.min(from + i64::from(i32::MAX));
                    propose(guard, fjord_storage::batch::build_filler(from, to, guard.epoch))
                        .await
                        .map_err(Commit::into_error)?;
                }
                if log.log_start_offset() < end {
                    propose(guard, fjord_replication::partition::entry::log_start_batch(end))
                        .await
                        .map_err(Commit::into_error)?;
                }
            }
        }
    }
    let n = segments.len();
    commit(broker, guard, RemoteChange::Restore(segments)).await.map_err(Commit::into_error)?;
    tracing::info!(dir, source = source_dir, segments = n, "partition restored from the bucket");
    Ok(())
}

/// Total retention over the remote copies: those wholly past `retention.ms` (by their newest
/// record) or, oldest first, beyond `retention.bytes` counted over the bucket and the local log.
async fn expire(
    broker: &Arc<Broker>,
    tiered: &Tiered,
    guard: &LeaderGuard,
    dir: &str,
    topic: &str,
    configs: &std::collections::BTreeMap<String, String>,
) -> Result<(), TieringError> {
    let log = &guard.log;
    let m = log.remote_manifest();
    if m.segments.is_empty() {
        return Ok(());
    }
    let defaults = broker.topics.defaults();
    let (retention_ms, retention_bytes) = crate::topic_config::total_retention(configs, &defaults);
    let Some(below) =
        expiry_point(&m, log.log_start_offset(), log.size_bytes(), retention_ms, retention_bytes, now_ms())
    else {
        return Ok(());
    };
    let dropped = m.below(below);
    commit(broker, guard, RemoteChange::DeleteBelow(below)).await.map_err(Commit::into_error)?;
    for seg in &dropped {
        copy::delete_copy(&tiered.store, seg.dir.as_deref().unwrap_or(dir), seg).await;
    }
    tracing::info!(topic, segments = dropped.len(), below, "retention deleted remote segments");
    Ok(())
}

/// Where total retention cuts the remote copies: the end of the last copy that goes.
fn expiry_point(
    m: &RemoteManifest,
    local_start: i64,
    local_bytes: u64,
    retention_ms: i64,
    retention_bytes: i64,
    now: i64,
) -> Option<i64> {
    // Bytes only the bucket holds, counted once where copies overlap.
    let remote_only: u64 = m.segments.iter().filter(|s| s.next_offset <= local_start).map(|s| s.raw_size).sum();
    let mut total = remote_only + local_bytes;
    // Copies wholly below the floor (DeleteRecords) go whatever the retention.
    let mut point = m.segments.iter().filter(|s| s.next_offset <= m.floor).map(|s| s.next_offset).max();
    for s in m.segments.iter().filter(|s| s.next_offset > m.floor) {
        let by_time = retention_ms >= 0 && s.max_timestamp >= 0 && now - s.max_timestamp > retention_ms;
        let only_remote = s.next_offset <= local_start;
        let by_size = retention_bytes >= 0 && only_remote && total > retention_bytes as u64;
        if !(by_time || by_size) {
            break;
        }
        if only_remote {
            total = total.saturating_sub(s.raw_size);
        }
        point = Some(s.next_offset);
    }
    point
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Commits a manifest change: through the partition's Raft group (every replica applies it), or
/// straight into the only replica's log.
/// Why a commit failed: refused before anything was proposed, or with its outcome unknown (it
/// may still commit).
enum Commit {
    Refused(TieringError),
    Unknown(TieringError),
}

impl Commit {
    fn into_error(self) -> TieringError {
        match self {
            Commit::Refused(e) | Commit::Unknown(e) => e,
        }
    }
}

async fn commit(_broker: &Arc<Broker>, guard: &LeaderGuard, change: RemoteChange) -> Result<(), Commit> {
    if guard.raft.is_none() {
        let log = guard.log.clone();
        return crate::api::blocking(move || log.apply_remote_change(&change))
            .await
            .map(|_| ())
            .map_err(|e| Commit::Refused(commit_error(guard, e.to_string())));
    }
    propose(guard, fjord_replication::partition::entry::remote_change_batch(&change)).await
}

fn commit_error(guard: &LeaderGuard, msg: String) -> TieringError {
    TieringError::Unavailable { op: "commit", key: guard.log.dir().display().to_string(), msg }
}

/// Proposes `batch` to the partition's Raft group and waits for it to apply here.
async fn propose(guard: &LeaderGuard, batch: Vec<u8>) -> Result<(), Commit> {
    use fjord_replication::partition::produce::ProduceError;
    let Some(w) = &guard.raft else {
        return Err(Commit::Refused(commit_error(guard, "not a replicated partition".into())));
    };
    let written = w.proposer.enqueue(&w.raft, &guard.log, batch, guard.epoch, COMMIT_WAIT);
    match tokio::time::timeout(COMMIT_WAIT, written).await {
        Ok(Ok(Ok(_))) => Ok(()),
        Ok(Ok(Err(ProduceError::Log(e)))) => Err(Commit::Refused(commit_error(guard, e.to_string()))),
        Ok(Ok(Err(e))) => Err(Commit::Unknown(commit_error(guard, e.to_string()))),
        Ok(Err(_)) => Err(Commit::Unknown(commit_error(guard, "the partition's leadership ended".into()))),
        Err(_) => Err(Commit::Unknown(commit_error(guard, "timed out".into()))),
    }
}

/// The remote copy a read of `offset` below the local log start goes to, if the bucket holds
/// it (and the local log does not).
pub fn remote_segment_for(log: &PartitionLog, offset: i64) -> Option<RemoteSegment> {
    if offset >= log.log_start_offset() {
        return None;
    }
    log.remote_manifest().find(offset).cloned()
}

/// The log start clients see: the first remote offset when the bucket's copies reach the local
/// log (so the two make one log), else the local log start.
pub fn log_start(log: &PartitionLog) -> i64 {
    let local = log.log_start_offset();
    log.remote_manifest().contiguous_start(local).unwrap_or(local)
}

/// Reads up to `max_bytes` of remote data at `offset` of a partition of `topic`.
pub async fn read(
    broker: &Broker,
    topic: &str,
    partition: i32,
    seg: &RemoteSegment,
    offset: i64,
    max_bytes: usize,
) -> Result<Bytes, TieringError> {
    let tiered = broker.tiered.as_ref().ok_or_else(|| TieringError::Config("remote storage is off".into()))?;
    let id = broker.topic_id(topic).unwrap_or_default();
    let dir = seg.dir.clone().unwrap_or_else(|| tiered.partition_dir(topic, id, partition));
    tiered.reader.read(&dir, seg, offset, max_bytes).await
}

/// The first batch of the remote data below the local log start whose records reach `ts`.
pub async fn batch_by_timestamp(
    broker: &Broker,
    topic: &str,
    partition: i32,
    log: &PartitionLog,
    ts: i64,
) -> Result<Option<Bytes>, TieringError> {
    let Some(tiered) = broker.tiered.as_ref() else { return Ok(None) };
    let local = log.log_start_offset();
    let m = log.remote_manifest();
    let id = broker.topic_id(topic).unwrap_or_default();
    let dir = tiered.partition_dir(topic, id, partition);
    for seg in m.segments.iter().filter(|s| s.base_offset < local && s.max_timestamp >= ts) {
        let dir = seg.dir.clone().unwrap_or_else(|| dir.clone());
        if let Some(b) = tiered.reader.batch_by_timestamp(&dir, seg, ts).await? {
            return Ok(Some(b));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(base: i64, next: i64, max_ts: i64, size: u64) -> RemoteSegment {
        RemoteSegment {
            base_offset: base,
            next_offset: next,
            leader_epoch: 0,
            id: format!("{base}"),
            size,
            raw_size: size,
            max_timestamp: max_ts,
            copied_ms: 0,
            aborted: Vec::new(),
            epochs: Vec::new(),
            chunks: None,
            dir: None,
        }
    }

    #[test]
    fn total_retention_counts_the_bucket_and_the_local_log() {
        let m = RemoteManifest {
            version: 3,
            segments: vec![seg(0, 10, 1_000, 100), seg(10, 20, 2_000, 100), seg(20, 30, 3_000, 100)],
            floor: 0,
        };
        // By time: the first two are past 1.5 s at t=3.6 s.
        assert_eq!(expiry_point(&m, 30, 50, 1_500, -1, 3_600), Some(20));
        assert_eq!(expiry_point(&m, 30, 50, -1, -1, 3_600), None);
        // By size: 300 remote-only + 50 local; 200 allowed drops the first two.
        assert_eq!(expiry_point(&m, 30, 50, -1, 200, 0), Some(20));
        assert_eq!(expiry_point(&m, 30, 50, -1, 350, 0), None);
        // A copy the local log also holds frees nothing by size.
        assert_eq!(expiry_point(&m, 15, 50, -1, 0, 0), Some(10));
        // Copies wholly below the floor (DeleteRecords) go whatever the retention.
        let cut = RemoteManifest { floor: 20, ..m };
        assert_eq!(expiry_point(&cut, 30, 50, -1, -1, 0), Some(20));
    }
}

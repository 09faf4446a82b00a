//! The topic registry: names, ids, partition counts and config overrides,
//! kept in `metadata.json` in the data dir (replaced atomically on every
//! change), and the open `PartitionLog` of every partition.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use fjord_storage::durability::{GroupCommit, SyncStrategy};
use fjord_storage::log::write_atomic;
use fjord_storage::{OpenOptions, PartitionLog};
use kafka_protocol::error::ResponseError;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::BrokerConfig;
use crate::topic_config;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicMeta {
    pub id: Uuid,
    pub partitions: i32,
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
    /// Broker-owned topics such as `__consumer_offsets`.
    #[serde(default)]
    pub internal: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct MetadataFile {
    cluster_id: String,
    #[serde(default)]
    topics: BTreeMap<String, TopicMeta>,
    /// Dynamic cluster-wide broker configs (topic defaults by their topic
    /// config name, others by their broker name), set through AlterConfigs
    /// on the broker resource named "".
    #[serde(default)]
    broker_configs: BTreeMap<String, String>,
    /// The same set on this broker by its id; they win over the cluster-wide ones.
    #[serde(default)]
    node_broker_configs: BTreeMap<String, String>,
    /// The next idempotent producer id to hand out.
    #[serde(default)]
    next_producer_id: i64,
}

/// A failed topic operation, carrying the Kafka error and a message.
#[derive(Debug, Clone)]
pub struct TopicError {
    pub code: ResponseError,
    pub message: String,
}

impl TopicError {
    pub fn new(code: ResponseError, message: impl Into<String>) -> Self {
        TopicError { code, message: message.into() }
    }
}

struct State {
    file: MetadataFile,
    logs: HashMap<(String, i32), Arc<PartitionLog>>,
    /// Names deleted in the last `RECREATE_QUARANTINE`, with when.
    recently_deleted: HashMap<String, Instant>,
}

/// How long a deleted topic's name is not auto-created again. A client that
/// still knows the topic (a closing consumer, a producer with old metadata)
/// asks for it by name with auto-creation allowed, and would otherwise bring
/// it back a moment after it was deleted. Kafka's ZooKeeper-era brokers had
/// the same window while a topic was "marked for deletion". Explicit
/// CreateTopics is not held back, and the clients that asked get the
/// retriable UNKNOWN_TOPIC_OR_PARTITION until the window ends.
pub const RECREATE_QUARANTINE: Duration = Duration::from_secs(5);

pub struct Topics {
    data_dir: PathBuf,
    static_defaults: BTreeMap<String, String>,
    /// What requests read. Held for writing only to swap in-memory state,
    /// never across a disk write: every request on a runtime worker reads
    /// it, and an fsync behind it (slow when the disk is busy) would stall
    /// them all, ApiVersions included.
    state: RwLock<State>,
    /// Serializes changes: a change copies the current file, makes the new
    /// one durable, and only then swaps it in (under a brief write lock).
    /// Changes run on blocking threads, so waiting here stalls no request.
    changes: Mutex<()>,
    /// What opening the logs at start had to do, summed over them.
    recovery: fjord_storage::RecoveryReport,
    /// The last stop was clean (its marker was found).
    clean_start: bool,
    /// Held while the broker runs: a second broker on this dir refuses to start.
    _lock: fjord_storage::DataDirLock,
    /// One group committer for every log, so syncs of all partitions share
    /// rounds (`fsync_method` chooses how a round is made durable).
    group_commit: GroupCommit,
    /// Where producer ids come from in a cluster (blocks the controller hands out, so no two
    /// nodes give out one id); unset, this node's own durable counter.
    producer_ids: std::sync::OnceLock<ProducerIdSource>,
}

/// Hands out a producer id no one else got; called on a blocking thread.
pub type ProducerIdSource = Box<dyn Fn() -> Result<i64, TopicError> + Send + Sync>;

/// Kafka's rule: 1-249 characters of [a-zA-Z0-9._-], not "." or "..".
pub fn validate_name(name: &str) -> Result<(), TopicError> {
    let bad = |m: String| Err(TopicError::new(ResponseError::InvalidTopicException, m));
    if name.is_empty() || name == "." || name == ".." {
        return bad(format!("Topic name {name:?} is illegal"));
    }
    if name.len() > 249 {
        return bad(format!("Topic name is longer than 249 characters: {name}"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') {
        return bad(format!(
            "Topic name {name:?} contains characters other than ASCII alphanumerics, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// Removes partitions opened for a change that did not happen.
fn discard(opened: Vec<(i32, Arc<PartitionLog>)>) {
    for (_, log) in opened {
        let _ = log.delete();
    }
}

fn storage_error(e: impl std::fmt::Display) -> TopicError {
    TopicError::new(ResponseError::KafkaStorageError, e.to_string())
}

impl Topics {
    /// Opens one partition's log with the broker's group committer.
    fn open_log(
        &self,
        dir: &Path,
        cfg: fjord_storage::LogConfig,
        clean: Option<&fjord_storage::CleanState>,
    ) -> fjord_storage::Result<PartitionLog> {
        let opts = OpenOptions { clean, group_commit: Some(self.group_commit.clone()), ..OpenOptions::default() };
        PartitionLog::open_opts(dir, cfg, opts)
    }

    pub fn open(config: &BrokerConfig) -> anyhow::Result<Topics> {
        let data_dir = config.data_dir.clone();
        // Before anything in the dir is read or changed (the clean-shutdown
        // marker is consumed just below).
        let lock = fjord_storage::DataDirLock::acquire(&data_dir)?;
        let clean = crate::clean_shutdown::take(&data_dir)?;
        let path = data_dir.join("metadata.json");
        let file: MetadataFile = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("metadata file {} is unreadable: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => MetadataFile {
                cluster_id: Uuid::new_v4().simple().to_string()[..22].to_string(),
                ..MetadataFile::default()
            },
            Err(e) => return Err(e.into()),
        };
        let static_defaults = config.log_defaults().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let mut topics = Topics {
            data_dir,
            static_defaults,
            state: RwLock::new(State { file, logs: HashMap::new(), recently_deleted: HashMap::new() }),
            changes: Mutex::new(()),
            recovery: Default::default(),
            clean_start: clean.is_some(),
            _lock: lock,
            group_commit: GroupCommit::new(match config.fsync_method {
                crate::config::FsyncMethod::Syncfs => SyncStrategy::Syncfs,
                crate::config::FsyncMethod::Fdatasync => SyncStrategy::Fdatasync,
            }),
            producer_ids: std::sync::OnceLock::new(),
        };
        let mut recovery = fjord_storage::RecoveryReport::default();
        {
            let mut st = topics.write();
            let defaults = topics.defaults_of(&st.file);
            let metas: Vec<(String, TopicMeta)> = st.file.topics.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            for (name, meta) in metas {
                let cfg = topic_config::log_config(&meta.configs, &defaults);
                for p in 0..meta.partitions {
                    let point = clean.as_ref().and_then(|c| c.get(&format!("{name}-{p}")));
                    let log = topics.open_log(&topics.partition_dir(&name, p), cfg.clone(), point)?;
                    recovery.add(&log.recovery_report());
                    st.logs.insert((name.clone(), p), Arc::new(log));
                }
            }
            topics.persist(&st.file)?;
        }
        topics.recovery = recovery;
        Ok(topics)
    }

    /// What opening the logs at start had to do, summed over them.
    pub fn recovery_report(&self) -> fjord_storage::RecoveryReport {
        self.recovery
    }

    /// Whether the last stop was clean.
    pub fn clean_start(&self) -> bool {
        self.clean_start
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a change: holds off other changes and returns a copy of the
    /// current file to edit (see `changes`).
    fn begin_change(&self) -> (MutexGuard<'_, ()>, MetadataFile) {
        let guard = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let file = self.read().file.clone();
        (guard, file)
    }

    /// Makes `file` durable, then current.
    fn commit_change(&self, file: MetadataFile) -> Result<(), TopicError> {
        self.persist(&file).map_err(storage_error)?;
        self.write().file = file;
        Ok(())
    }

    fn partition_dir(&self, topic: &str, p: i32) -> PathBuf {
        self.data_dir.join(format!("{topic}-{p}"))
    }

    fn persist(&self, file: &MetadataFile) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(file)?;
        write_atomic(&self.data_dir.join("metadata.json"), &json)?;
        Ok(())
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn cluster_id(&self) -> String {
        self.read().file.cluster_id.clone()
    }

    fn defaults_of(&self, file: &MetadataFile) -> BTreeMap<String, String> {
        let mut d = self.static_defaults.clone();
        d.extend(file.broker_configs.clone());
        d.extend(file.node_broker_configs.clone());
        d
    }

    /// Broker-wide defaults of every topic config, dynamic ones applied.
    pub fn defaults(&self) -> BTreeMap<String, String> {
        self.defaults_of(&self.read().file)
    }

    pub fn static_defaults(&self) -> &BTreeMap<String, String> {
        &self.static_defaults
    }

    /// Every dynamic broker config in force (this broker's over the cluster's).
    pub fn dynamic_broker_configs(&self) -> BTreeMap<String, String> {
        let st = self.read();
        let mut d = st.file.broker_configs.clone();
        d.extend(st.file.node_broker_configs.clone());
        d
    }

    /// The dynamic broker configs set on this broker (`per_node`) or for
    /// the whole cluster.
    pub fn broker_config_layer(&self, per_node: bool) -> BTreeMap<String, String> {
        let st = self.read();
        if per_node {
            st.file.node_broker_configs.clone()
        } else {
            st.file.broker_configs.clone()
        }
    }

    /// Makes `allocate_producer_id` take its ids from `source` (a cluster's controller); only
    /// the first call takes effect.
    pub fn set_producer_id_source(&self, source: ProducerIdSource) {
        let _ = self.producer_ids.set(source);
    }

    /// Hands out a producer id that was never given before, even across
    /// restarts: the counter is persisted before the id is returned.
    pub fn allocate_producer_id(&self) -> Result<i64, TopicError> {
        if let Some(source) = self.producer_ids.get() {
            return source();
        }
        let (_change, mut file) = self.begin_change();
        let id = file.next_producer_id;
        file.next_producer_id = id + 1;
        self.commit_change(file)?;
        Ok(id)
    }

    /// The partition's log. Handlers and coordinators go through
    /// `Leadership::lead` instead, which also says whether we lead it.
    pub fn log(&self, topic: &str, partition: i32) -> Option<Arc<PartitionLog>> {
        self.read().logs.get(&(topic.to_string(), partition)).cloned()
    }

    pub fn topic(&self, name: &str) -> Option<TopicMeta> {
        self.read().file.topics.get(name).cloned()
    }

    pub fn name_by_id(&self, id: Uuid) -> Option<String> {
        self.read().file.topics.iter().find(|(_, m)| m.id == id).map(|(n, _)| n.clone())
    }

    pub fn list(&self) -> Vec<(String, TopicMeta)> {
        self.read().file.topics.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub fn all_logs(&self) -> Vec<Arc<PartitionLog>> {
        self.read().logs.values().cloned().collect()
    }

    /// Creates a topic after checking name, partitions and configs.
    pub fn create(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<TopicMeta, TopicError> {
        self.create_topic(name, partitions, configs, validate_only, false)
    }

    /// Creates a broker-owned topic (hidden from deletion by clients).
    pub fn create_internal(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicMeta, TopicError> {
        self.create_topic(name, partitions, configs, false, true)
    }

    fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
        validate_only: bool,
        internal: bool,
    ) -> Result<TopicMeta, TopicError> {
        validate_name(name)?;
        if partitions < 1 {
            return Err(TopicError::new(
                ResponseError::InvalidPartitions,
                "Number of partitions must be larger than 0.",
            ));
        }
        if partitions > 100_000 {
            return Err(TopicError::new(
                ResponseError::InvalidPartitions,
                format!("{partitions} partitions is more than this broker serves"),
            ));
        }
        for (k, v) in &configs {
            topic_config::validate(k, v).map_err(|m| TopicError::new(ResponseError::InvalidConfig, m))?;
        }
        topic_config::validate_combination(&configs).map_err(|m| TopicError::new(ResponseError::InvalidConfig, m))?;
        let ignored = topic_config::ignored(configs.keys());
        if !ignored.is_empty() && !validate_only {
            tracing::info!(topic = name, ignored = %ignored.join(", "), "topic configs stored but not applied");
        }
        let (_change, mut file) = self.begin_change();
        if file.topics.contains_key(name) {
            return Err(TopicError::new(ResponseError::TopicAlreadyExists, format!("Topic '{name}' already exists.")));
        }
        let meta = TopicMeta { id: Uuid::new_v4(), partitions, configs, internal };
        if validate_only {
            return Ok(meta);
        }
        let cfg = topic_config::log_config(&meta.configs, &self.defaults_of(&file));
        let opened = self.open_new_partitions(name, 0..partitions, &cfg)?;
        file.topics.insert(name.to_string(), meta.clone());
        if let Err(e) = self.persist(&file) {
            // Not recorded, so not created: leave no partition behind.
            discard(opened);
            return Err(storage_error(e));
        }
        self.swap_in(file, name, opened);
        tracing::info!(topic = name, partitions, "created topic");
        Ok(meta)
    }

    pub fn delete(&self, name: &str) -> Result<TopicMeta, TopicError> {
        let (_change, mut file) = self.begin_change();
        if file.topics.get(name).is_some_and(|m| m.internal) {
            return Err(TopicError::new(
                ResponseError::InvalidRequest,
                format!("Internal topic '{name}' cannot be deleted"),
            ));
        }
        let Some(meta) = file.topics.remove(name) else {
            return Err(TopicError::new(
                ResponseError::UnknownTopicOrPartition,
                format!("Topic '{name}' does not exist"),
            ));
        };
        self.persist(&file).map_err(storage_error)?;
        let mut st = self.write();
        st.file = file;
        let now = Instant::now();
        st.recently_deleted.retain(|_, at| now.duration_since(*at) < RECREATE_QUARANTINE);
        st.recently_deleted.insert(name.to_string(), now);
        let removed: Vec<(i32, Arc<PartitionLog>)> =
            (0..meta.partitions).filter_map(|p| st.logs.remove(&(name.to_string(), p)).map(|l| (p, l))).collect();
        drop(st);
        // The files go after the lock is released: unlinking many segments
        // is disk work too.
        for (p, log) in removed {
            if let Err(e) = log.delete() {
                tracing::warn!(topic = name, partition = p, error = %e, "could not remove partition files");
            }
        }
        tracing::info!(topic = name, "deleted topic");
        Ok(meta)
    }

    /// Whether `name` was deleted less than `RECREATE_QUARANTINE` ago (and
    /// so must not be auto-created yet).
    pub fn deleted_recently(&self, name: &str) -> bool {
        self.read().recently_deleted.get(name).is_some_and(|at| at.elapsed() < RECREATE_QUARANTINE)
    }

    pub fn add_partitions(&self, name: &str, count: i32, validate_only: bool) -> Result<(), TopicError> {
        let (_change, mut file) = self.begin_change();
        let defaults = self.defaults_of(&file);
        let Some(meta) = file.topics.get(name).cloned() else {
            return Err(TopicError::new(
                ResponseError::UnknownTopicOrPartition,
                format!("Topic '{name}' does not exist"),
            ));
        };
        if count <= meta.partitions {
            let msg = if count == meta.partitions {
                format!("Topic already has {count} partitions.")
            } else {
                format!(
                    "Topic currently has {} partitions, which is higher than the requested {count}.",
                    meta.partitions
                )
            };
            return Err(TopicError::new(ResponseError::InvalidPartitions, msg));
        }
        if count > 100_000 {
            return Err(TopicError::new(
                ResponseError::InvalidPartitions,
                format!("{count} partitions is more than this broker serves"),
            ));
        }
        if validate_only {
            return Ok(());
        }
        let cfg = topic_config::log_config(&meta.configs, &defaults);
        let opened = self.open_new_partitions(name, meta.partitions..count, &cfg)?;
        if let Some(m) = file.topics.get_mut(name) {
            m.partitions = count;
        }
        if let Err(e) = self.persist(&file) {
            discard(opened);
            return Err(storage_error(e));
        }
        self.swap_in(file, name, opened);
        Ok(())
    }

    /// Makes a durable change visible: the new file, and the partitions it added.
    fn swap_in(&self, file: MetadataFile, name: &str, opened: Vec<(i32, Arc<PartitionLog>)>) {
        let mut st = self.write();
        st.file = file;
        for (p, log) in opened {
            st.logs.insert((name.to_string(), p), log);
        }
    }

    /// Opens empty logs for `partitions` of `name`, not yet visible to
    /// requests (the caller records them, then swaps them in).
    fn open_new_partitions(
        &self,
        name: &str,
        partitions: std::ops::Range<i32>,
        cfg: &fjord_storage::LogConfig,
    ) -> Result<Vec<(i32, Arc<PartitionLog>)>, TopicError> {
        let mut opened: Vec<(i32, Arc<PartitionLog>)> = Vec::new();
        for p in partitions {
            let dir = self.partition_dir(name, p);
            // A leftover dir of an earlier topic of this name must not leak in.
            let _ = std::fs::remove_dir_all(&dir);
            match self.open_log(&dir, cfg.clone(), None) {
                Ok(log) => opened.push((p, Arc::new(log))),
                Err(e) => {
                    discard(opened);
                    return Err(storage_error(e));
                }
            }
        }
        Ok(opened)
    }

    /// Replaces a topic's overrides (already validated) and applies them.
    pub fn set_topic_configs(&self, name: &str, configs: BTreeMap<String, String>) -> Result<(), TopicError> {
        let (_change, mut file) = self.begin_change();
        let defaults = self.defaults_of(&file);
        let Some(meta) = file.topics.get_mut(name) else {
            return Err(TopicError::new(
                ResponseError::UnknownTopicOrPartition,
                format!("Topic '{name}' does not exist"),
            ));
        };
        meta.configs = configs;
        let cfg = topic_config::log_config(&meta.configs, &defaults);
        let parts = meta.partitions;
        self.commit_change(file)?;
        let st = self.read();
        for p in 0..parts {
            if let Some(log) = st.logs.get(&(name.to_string(), p)) {
                log.set_config(cfg.clone());
            }
        }
        Ok(())
    }

    /// Replaces this broker's (`per_node`) or the cluster's dynamic broker
    /// configs and re-applies every topic's config.
    pub fn set_broker_configs(&self, per_node: bool, configs: BTreeMap<String, String>) -> Result<(), TopicError> {
        let (_change, mut file) = self.begin_change();
        if per_node {
            file.node_broker_configs = configs;
        } else {
            file.broker_configs = configs;
        }
        self.commit_change(file)?;
        let st = self.read();
        let defaults = self.defaults_of(&st.file);
        for ((name, _), log) in &st.logs {
            if let Some(meta) = st.file.topics.get(name) {
                log.set_config(topic_config::log_config(&meta.configs, &defaults));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A change whose metadata write hangs (here: the temp file is a FIFO
    /// nobody reads, as a stalled disk would hold an fsync) must not hold
    /// up readers, and when the write fails, the change leaves nothing.
    #[test]
    fn readers_do_not_wait_for_a_change_on_disk_and_a_failed_change_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
        let topics = Arc::new(Topics::open(&config).unwrap());
        topics.create("before", 1, BTreeMap::new(), false).unwrap();
        let fifo = dir.path().join("metadata.tmp");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());

        let creating = {
            let topics = topics.clone();
            std::thread::spawn(move || topics.create("stuck", 2, BTreeMap::new(), false))
        };
        // The change is now blocked opening the FIFO; readers still answer.
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let topics = topics.clone();
            std::thread::spawn(move || {
                let seen = (topics.topic("before").is_some(), topics.log("before", 0).is_some(), topics.list().len());
                let _ = tx.send(seen);
            });
        }
        let seen = rx.recv_timeout(Duration::from_secs(10)).expect("a reader was held up by a change on disk");
        assert_eq!(seen, (true, true, 1));
        assert!(topics.topic("stuck").is_none(), "not visible before it is durable");

        // Let the write through: fsync of a FIFO fails, so the change does.
        let mut reader = std::fs::File::open(&fifo).unwrap();
        let result = creating.join().unwrap();
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut reader, &mut sink);
        assert_eq!(result.err().map(|e| e.code), Some(ResponseError::KafkaStorageError));
        assert!(topics.topic("stuck").is_none());
        assert!(topics.log("stuck", 0).is_none());
        assert!(!dir.path().join("stuck-0").exists(), "no partition dir left behind");

        // With the disk back, changes work again.
        std::fs::remove_file(&fifo).unwrap();
        topics.create("after", 1, BTreeMap::new(), false).unwrap();
        assert!(topics.topic("after").is_some());
    }
}

//! The broker process: shared state, the TCP listener, background tasks
//! (retention) and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use fjord_storage::PartitionLog;

use crate::api::fetch_session::FetchSessions;
use crate::config::BrokerConfig;
use crate::connection;
use crate::coordinator::classic::{GroupCoordinator, OFFSETS_TOPIC};
use crate::coordinator::consumer::ConsumerGroups;
use crate::coordinator::txn::{TxnCoordinator, TXN_TOPIC};
use crate::leadership::{Leadership, NO_EPOCH};
use crate::topics::Topics;

/// Everything request handlers share.
pub struct Broker {
    pub config: BrokerConfig,
    pub topics: Arc<Topics>,
    pub groups: Arc<GroupCoordinator>,
    pub consumer_groups: ConsumerGroups,
    pub txns: Arc<TxnCoordinator>,
    pub node_id: i32,
    /// host and port clients are told to use.
    pub advertised_host: String,
    pub advertised_port: i32,
    pub fetch_sessions: FetchSessions,
    /// Bytes held by requests in flight (`queued_max_request_bytes`).
    pub request_memory: Arc<connection::RequestMemory>,
    /// This node's part of a cluster; None for a single node (no voters configured).
    pub cluster: Option<crate::cluster::ClusterNode>,
    /// Tiered storage, when `remote_storage_enable`.
    pub tiered: Option<Arc<crate::tiered::Tiered>>,
    /// WASM transforms: set once the broker exists (they hold it weakly).
    pub transforms: std::sync::OnceLock<Arc<crate::transforms::Transforms>>,
    shutdown: watch::Receiver<bool>,
}

impl Broker {
    /// A topic's name from its id: the cluster's topics first, then this node's own.
    pub fn topic_name(&self, id: uuid::Uuid) -> Option<String> {
        if let Some(name) =
            self.cluster.as_ref().and_then(|c| c.read(|m| m.topic_by_id(id).map(|(n, _)| n.to_string())))
        {
            return Some(name);
        }
        self.topics.name_by_id(id)
    }

    /// A topic's id from its name, the same way round.
    pub fn topic_id(&self, name: &str) -> Option<uuid::Uuid> {
        if let Some(id) = self.cluster.as_ref().and_then(|c| c.read(|m| m.topic(name).map(|t| t.id))) {
            return Some(id);
        }
        self.topics.topic(name).map(|m| m.id)
    }

    /// This node's log of a partition, whether it leads it or follows: the cluster's replica for
    /// a cluster topic, else the local registry's.
    pub fn local_log(&self, topic: &str, partition: i32) -> Option<Arc<PartitionLog>> {
        match &self.cluster {
            Some(c) if c.partition_count(topic).is_some() => c.local_log(topic, partition),
            _ => self.topics.log(topic, partition),
        }
    }

    /// Whether coordinator writes on a single node are synced before they are answered.
    pub fn txns_durable(&self) -> bool {
        self.config.fsync != crate::config::FsyncPolicy::Never
    }

    /// Resolves when the broker begins shutting down (ends long polls).
    pub async fn shutting_down(&self) {
        stopped(&mut self.shutdown.clone()).await
    }
}

/// Resolves once shutdown has been signalled.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

pub fn split_host_port(s: &str) -> Option<(String, i32)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if host.is_empty() {
        return None;
    }
    Some((host.trim_matches(|c| c == '[' || c == ']').to_string(), port as i32))
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A broker that is serving; dropping it does not stop it, `shutdown` does.
pub struct RunningBroker {
    pub local_addr: SocketAddr,
    /// Where the admin HTTP API listens, when `admin_listen` is set.
    pub admin_addr: Option<SocketAddr>,
    pub broker: Arc<Broker>,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The data dir, opened at start, for the shutdown's one syncfs.
    data_dir_handle: std::fs::File,
}

pub async fn start(config: BrokerConfig) -> anyhow::Result<RunningBroker> {
    config.validate()?;
    // Before any log is opened: recovery and producer-state rebuilds read
    // segments through their mappings, and those pages count against
    // mapped_resident_max_bytes like any read's.
    let mapped_baseline = mapped_resident_bytes();
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let local_addr = listener.local_addr()?;
    let (advertised_host, advertised_port) = match &config.advertised_listener {
        Some(a) => split_host_port(a).ok_or_else(|| anyhow::anyhow!("bad advertised_listener {a}"))?,
        None => (local_addr.ip().to_string(), local_addr.port() as i32),
    };
    let tiered = crate::tiered::Tiered::start(&config).await?;
    let topics = Arc::new(tokio::task::block_in_place(|| Topics::open(&config))?);
    let cluster = crate::cluster::start(&config, &format!("{advertised_host}:{advertised_port}"), &topics).await?;
    let data_dir_handle = std::fs::File::open(&config.data_dir)?;
    // In a cluster, groups live in the replicated `__consumer_offsets`, served by its leaders.
    let groups = if cluster.is_some() {
        GroupCoordinator::clustered(config.offsets_topic_num_partitions)
    } else {
        tokio::task::block_in_place(|| GroupCoordinator::open(&topics, config.offsets_topic_num_partitions))?
    };
    let groups =
        Arc::new(groups.with_initial_rebalance_delay(Duration::from_millis(config.group_initial_rebalance_delay_ms)));
    let durable = config.fsync != crate::config::FsyncPolicy::Never;
    // In a cluster, transactions live in the replicated `__transaction_state`, served by its
    // leaders as `__consumer_offsets` is.
    let txns = if cluster.is_some() {
        Arc::new(TxnCoordinator::clustered(
            topics.clone(),
            groups.clone(),
            config.transaction_state_log_num_partitions,
            durable,
            config.transaction_max_timeout_ms,
        ))
    } else {
        let txns = Arc::new(tokio::task::block_in_place(|| {
            TxnCoordinator::open(
                topics.clone(),
                groups.clone(),
                config.transaction_state_log_num_partitions,
                durable,
                config.transaction_max_timeout_ms,
            )
        })?);
        txns.recover().await;
        txns
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let broker = Arc::new(Broker {
        txns,
        node_id: config.node_id,
        advertised_host,
        advertised_port,
        topics,
        groups,
        consumer_groups: ConsumerGroups::new(Duration::from_millis(config.group_consumer_session_timeout_ms)),
        fetch_sessions: FetchSessions::new(1000),
        request_memory: connection::RequestMemory::new(config.queued_max_request_bytes),
        cluster,
        tiered,
        transforms: std::sync::OnceLock::new(),
        shutdown: shutdown_rx.clone(),
        config,
    });
    if let Some(cluster) = &broker.cluster {
        broker.txns.set_cluster(Arc::new(crate::cluster_txn::BrokerLink(Arc::downgrade(&broker))));
        cluster.serve_broker(Arc::downgrade(&broker));
        // Weak: the coordinator is part of the broker it asks.
        let weak = Arc::downgrade(&broker);
        broker.groups.set_leadership_check(Box::new(move |p, epoch| {
            weak.upgrade()
                .is_some_and(|b| b.lead(OFFSETS_TOPIC, p, NO_EPOCH).is_ok_and(|g| g.raft.is_some() && g.epoch == epoch))
        }));
    }
    let own = format!("{}:{}", broker.advertised_host, broker.advertised_port);
    let _ = broker.transforms.set(crate::transforms::Transforms::new(Arc::downgrade(&broker), own)?);
    let (admin_addr, admin_tasks) = match broker.config.admin_address() {
        Some(addr) => {
            let (bound, tasks) = crate::http::start(broker.clone(), addr, shutdown_rx.clone()).await?;
            (Some(bound), tasks)
        }
        None => (None, Vec::new()),
    };
    report_recovery(&broker.topics);
    let mut tasks = vec![
        tokio::spawn(accept_loop(broker.clone(), listener, shutdown_rx.clone())),
        tokio::spawn(log_pass_loop(
            broker.clone(),
            shutdown_rx.clone(),
            |b| Duration::from_millis(b.config.log_retention_check_interval_ms.max(10)),
            "retention",
            // Replicated partitions retain through Raft (`replicated_retention_loop`).
            false,
            retention_pass,
        )),
        tokio::spawn(log_pass_loop(
            broker.clone(),
            shutdown_rx.clone(),
            // log.cleaner.backoff.ms may change at runtime (AlterConfigs).
            |b| {
                let ms =
                    b.topics.dynamic_broker_configs().get("log.cleaner.backoff.ms").and_then(|v| v.trim().parse().ok());
                Duration::from_millis(ms.unwrap_or(b.config.log_cleaner_backoff_ms).max(10))
            },
            "compaction",
            // Each replica of a replicated partition compacts what it has applied.
            true,
            compaction_pass,
        )),
        tokio::spawn(session_expiry_loop(broker.clone(), shutdown_rx.clone())),
        tokio::spawn(coordinator_placement_loop(broker.clone(), shutdown_rx.clone())),
        tokio::spawn(replicated_retention_loop(broker.clone(), shutdown_rx.clone())),
        tokio::spawn(leader_balance_loop(broker.clone(), shutdown_rx.clone())),
        tokio::spawn(broker_configs_loop(broker.clone(), shutdown_rx.clone())),
        tokio::spawn(mapped_pages_loop(broker.clone(), shutdown_rx.clone(), mapped_baseline)),
        tokio::spawn(transaction_expiry_loop(broker.clone(), shutdown_rx.clone())),
        tokio::spawn(crate::tiered::copier_loop(broker.clone(), shutdown_rx.clone())),
        tokio::spawn(crate::transforms::supervise_loop(broker.clone(), shutdown_rx.clone())),
        tokio::spawn(flush_loop(broker.clone(), shutdown_rx)),
    ];
    tasks.extend(admin_tasks);
    tracing::info!(%local_addr, data_dir = %broker.config.data_dir.display(), "fjord listening");
    Ok(RunningBroker { local_addr, admin_addr, broker, shutdown_tx, tasks, data_dir_handle })
}

/// Logs and exports what opening the logs took: a clean restart scans no
/// segment and replays no batch.
fn report_recovery(topics: &Topics) {
    let r = topics.recovery_report();
    tracing::info!(
        clean = topics.clean_start(),
        segments_scanned = r.segments_scanned,
        indexes_rebuilt = r.indexes_rebuilt,
        torn_bytes = r.torn_bytes,
        batches_replayed = r.batches_replayed,
        "logs recovered"
    );
    metrics::gauge!("fjord_start_clean").set(if topics.clean_start() { 1.0 } else { 0.0 });
    metrics::gauge!("fjord_recovery_segments_scanned").set(r.segments_scanned as f64);
    metrics::gauge!("fjord_recovery_indexes_rebuilt").set(r.indexes_rebuilt as f64);
    metrics::gauge!("fjord_recovery_torn_bytes").set(r.torn_bytes as f64);
    metrics::gauge!("fjord_recovery_batches_replayed").set(r.batches_replayed as f64);
}

async fn accept_loop(broker: Arc<Broker>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    tokio::spawn(connection::serve(broker.clone(), stream, peer));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stopped(&mut shutdown) => return,
        }
    }
}

/// Removes group members whose session timed out and, less often, expired
/// committed offsets.
async fn session_expiry_loop(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let offsets_every = Duration::from_millis(broker.config.offsets_retention_check_interval_ms.max(10));
    let mut last_offsets_check = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stopped(&mut shutdown) => return,
        }
        broker.groups.expire_sessions();
        broker.consumer_groups.expire();
        if last_offsets_check.elapsed() >= offsets_every {
            last_offsets_check = tokio::time::Instant::now();
            let b = broker.clone();
            let _ = tokio::task::spawn_blocking(move || {
                b.groups.expire_offsets(&*b, b.config.offsets_retention_ms, |g| {
                    b.consumer_groups.with_group(g, |cg| cg.is_some_and(|cg| !cg.members.is_empty()))
                })
            })
            .await;
        }
    }
}

/// In a cluster: dynamic broker configs are the metadata's (changed through the controller by
/// any node), mirrored into this node's layers twice a second; topics' leader pinning goes into
/// the election order at the same pace (`ClusterNode::pin_campaigns`), and a leadership a
/// failover took off its pinned racks goes back once it can (`return_pinned_leaderships`).
async fn broker_configs_loop(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let Some(cluster) = &broker.cluster else { return };
    let mut pinned_tried = std::collections::HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stopped(&mut shutdown) => return,
        }
        let b = broker.clone();
        let mirrored = tokio::task::spawn_blocking(move || {
            b.cluster.as_ref().map(|c| c.mirror_broker_configs(&b.topics)).unwrap_or(Ok(false))
        })
        .await;
        cluster.pin_campaigns();
        if broker.config.auto_leader_rebalance_enable {
            let moved = cluster.return_pinned_leaderships(&mut pinned_tried).await;
            if moved > 0 {
                tracing::info!(moved, "leaderships moved back to the racks their topics pin them to");
            }
        }
        match mirrored {
            Ok(Ok(true)) => tracing::info!(node_id = cluster.node_id(), "dynamic broker configs follow the cluster's"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e.message, "cannot apply the cluster's dynamic broker configs"),
            Err(e) => tracing::warn!(error = %e, "broker config task failed"),
        }
    }
}

/// In a cluster: retention of the partition replicas, every `log.retention.check.interval.ms`
/// (the local pass skips their logs: they lose data only through Raft).
async fn replicated_retention_loop(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let Some(cluster) = &broker.cluster else { return };
    loop {
        let every = Duration::from_millis(broker.config.log_retention_check_interval_ms.max(10));
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped(&mut shutdown) => return,
        }
        cluster.apply_retention(now_ms()).await;
    }
}

/// In a cluster with `auto_leader_rebalance_enable`: every
/// `leader_imbalance_check_interval_seconds`, the partitions this node leads move back to their
/// preferred replicas (`ClusterNode::balance_leaders`), so leaderships spread again after
/// restarts and failovers.
async fn leader_balance_loop(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let Some(cluster) = &broker.cluster else { return };
    if !broker.config.auto_leader_rebalance_enable {
        return;
    }
    let every = Duration::from_secs(broker.config.leader_imbalance_check_interval_seconds.max(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped(&mut shutdown) => return,
        }
        let moved = cluster.balance_leaders().await;
        if moved > 0 {
            tracing::info!(moved, "leaderships moved back to preferred replicas");
        }
    }
}

/// In a cluster: the group coordinator serves the partitions of `__consumer_offsets` this node
/// leads, and the transaction coordinator those of `__transaction_state`. A partition is loaded
/// from its log when this node starts leading it (or leads it at a new epoch) and dropped when
/// another term begins.
async fn coordinator_placement_loop(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let Some(cluster) = &broker.cluster else { return };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stopped(&mut shutdown) => return,
        }
        if let Some(count) = cluster.partition_count(OFFSETS_TOPIC) {
            broker.groups.set_partitions(count);
            for p in 0..count {
                place(&broker, cluster, OFFSETS_TOPIC, p, &GroupPlacement).await;
            }
        }
        if let Some(count) = cluster.partition_count(TXN_TOPIC) {
            broker.txns.set_partitions(count);
            for p in 0..count {
                place(&broker, cluster, TXN_TOPIC, p, &TxnPlacement).await;
            }
        }
    }
}

/// A coordinator that serves the partitions of its internal topic that this node leads.
trait Placement {
    fn serving_epoch(&self, broker: &Broker, p: i32) -> Option<i32>;
    fn take_over(&self, broker: &Broker, p: i32, epoch: i32, log: &PartitionLog) -> anyhow::Result<()>;
    fn give_up(&self, broker: &Broker, p: i32);
    /// Work that follows a take-over, off the placement loop.
    fn after_take_over(&self, _broker: Arc<Broker>, _p: i32) {}
}

struct GroupPlacement;
struct TxnPlacement;

impl Placement for GroupPlacement {
    fn serving_epoch(&self, broker: &Broker, p: i32) -> Option<i32> {
        broker.groups.serving_epoch(p)
    }
    fn take_over(&self, broker: &Broker, p: i32, epoch: i32, log: &PartitionLog) -> anyhow::Result<()> {
        broker.groups.take_over(p, epoch, log)
    }
    fn give_up(&self, broker: &Broker, p: i32) {
        broker.groups.give_up(p);
        broker.consumer_groups.forget(|g| broker.groups.partition_for(g) == p);
    }
}

impl Placement for TxnPlacement {
    fn serving_epoch(&self, broker: &Broker, p: i32) -> Option<i32> {
        broker.txns.serving_epoch(p)
    }
    fn take_over(&self, broker: &Broker, p: i32, epoch: i32, log: &PartitionLog) -> anyhow::Result<()> {
        broker.txns.take_over(p, epoch, log)
    }
    fn give_up(&self, broker: &Broker, p: i32) {
        broker.txns.give_up(p)
    }
    /// Ends the previous coordinator left between their two phases are finished here.
    fn after_take_over(&self, broker: Arc<Broker>, p: i32) {
        tokio::spawn(async move { broker.txns.recover_partition(p).await });
    }
}

async fn place(
    broker: &Arc<Broker>,
    cluster: &crate::cluster::ClusterNode,
    topic: &'static str,
    p: i32,
    how: &'static (dyn Placement + Sync),
) {
    let led = broker.lead(topic, p, NO_EPOCH).ok().filter(|g| g.raft.is_some());
    match led {
        Some(guard) if how.serving_epoch(broker, p) != Some(guard.epoch) => {
            let b = broker.clone();
            let loaded = tokio::task::spawn_blocking(move || how.take_over(&b, p, guard.epoch, &guard.log)).await;
            match loaded {
                Ok(Ok(())) => how.after_take_over(broker.clone(), p),
                Ok(Err(e)) => tracing::error!(partition = p, error = %e, "cannot load {topic}"),
                Err(e) => tracing::error!(partition = p, error = %e, "{topic} load task failed"),
            }
        }
        Some(_) => {}
        // Dropped only once another term began: a leader that merely has not heard its quorum
        // lately keeps its state (its writes wait or fail meanwhile), so that hearing it again
        // does not reload it from a log that its own queued writes may still be reaching.
        None => {
            if let Some(epoch) = how.serving_epoch(broker, p) {
                if !cluster.raft_leader_at(topic, p, epoch) {
                    how.give_up(broker, p);
                }
            }
        }
    }
}

/// File-backed resident pages of this process, from /proc/self/statm
/// (its third field counts pages of mapped files and shared memory).
fn mapped_resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(2)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(4096) as u64)
}

/// Keeps segment pages that reads faulted into the broker's resident set
/// below `mapped_resident_max_bytes` (above `baseline`, what was mapped
/// before any log was opened: the binary's own pages and the like), by
/// unmapping them from every log.
async fn mapped_pages_loop(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>, baseline: Option<u64>) {
    let Some(baseline) = baseline else {
        return;
    };
    let budget = broker.config.mapped_resident_max_bytes;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stopped(&mut shutdown) => return,
        }
        if mapped_resident_bytes().is_none_or(|now| now.saturating_sub(baseline) <= budget) {
            continue;
        }
        let b = broker.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for log in b.topics.all_logs() {
                if let Err(e) = log.release_pages() {
                    tracing::warn!(log = %log.dir().display(), error = %e, "cannot unmap segment pages");
                }
            }
        })
        .await;
        metrics::counter!("fjord_mapped_page_releases_total").increment(1);
    }
}

/// `flush.ms`: a log holding records unsynced for that long is synced
/// (checked every 100 ms), whatever the acks they were produced with.
/// `flush.ms=0` is handled on the produce path (every append is synced).
async fn flush_loop(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    // When each log was first seen holding unsynced records.
    let mut dirty_since: std::collections::HashMap<std::path::PathBuf, i64> = std::collections::HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stopped(&mut shutdown) => return,
        }
        let now = now_ms();
        let mut due = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for log in broker.topics.all_logs() {
            let flush_ms = log.config().flush_ms;
            if flush_ms == i64::MAX || log.is_deleted() {
                continue;
            }
            let end = log.log_end_offset();
            if log.flushed_offset() >= end {
                dirty_since.remove(log.dir());
                continue;
            }
            seen.insert(log.dir().to_path_buf());
            let since = *dirty_since.entry(log.dir().to_path_buf()).or_insert(now);
            if now - since >= flush_ms {
                dirty_since.remove(log.dir());
                due.push((log, end));
            }
        }
        dirty_since.retain(|dir, _| seen.contains(dir));
        for (log, end) in due {
            if let Err(e) = log.sync(end).await {
                tracing::warn!(log = %log.dir().display(), error = %e, "flush.ms sync failed");
            }
        }
    }
}

/// Aborts transactions past their timeout and forgets idle transactional ids.
async fn transaction_expiry_loop(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let every =
        Duration::from_millis(broker.config.transaction_abort_timed_out_transaction_cleanup_interval_ms.max(10));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped(&mut shutdown) => return,
        }
        broker.txns.expire(now_ms(), broker.config.transactional_id_expiration_ms).await;
    }
}

/// Runs `work` on every live log, off the runtime, every `every`, until
/// shutdown. Retention and compaction are both such passes.
async fn log_pass_loop(
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
    every: fn(&Broker) -> Duration,
    what: &'static str,
    with_replicas: bool,
    work: fn(&PartitionLog, i64) -> fjord_storage::Result<()>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every(&broker)) => {}
            _ = stopped(&mut shutdown) => return,
        }
        let mut logs = broker.topics.all_logs();
        if let (true, Some(cluster)) = (with_replicas, &broker.cluster) {
            logs.extend(cluster.replica_logs());
        }
        let now = now_ms();
        let _ = tokio::task::spawn_blocking(move || {
            for log in logs.iter().filter(|l| !l.is_deleted()) {
                if let Err(e) = work(log, now) {
                    tracing::warn!(log = %log.dir().display(), error = %e, "{what} failed");
                }
            }
        })
        .await;
    }
}

fn retention_pass(log: &PartitionLog, now: i64) -> fjord_storage::Result<()> {
    log.expire_producers(now);
    log.apply_retention(now).map(|_| ())
}

fn compaction_pass(log: &PartitionLog, now: i64) -> fjord_storage::Result<()> {
    // Producers idle past producer.id.expiration.ms go first, replicated logs' included (their
    // retention runs through Raft, not `retention_pass`): compaction keeps each known
    // producer's newest batch.
    log.expire_producers(now);
    // Returns at once for logs that are not compacted, or not due yet
    // (min.cleanable.dirty.ratio, max.compaction.lag.ms).
    log.compact_if_due(now).map(|_| ())
}

impl RunningBroker {
    /// Stops accepting, ends long polls, and syncs every log to disk.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(c) = &self.broker.cluster {
            c.shutdown().await;
        }
        let logs = self.broker.topics.all_logs();
        let data_dir = self.broker.config.data_dir.clone();
        let handle = self.data_dir_handle;
        let clean = tokio::task::spawn_blocking(move || crate::clean_shutdown::record(&data_dir, &handle, &logs))
            .await
            .unwrap_or(false);
        tracing::info!(clean, "fjord stopped");
    }
}

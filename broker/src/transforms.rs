//! WASM transforms in the broker (transforms/ABI.md): the registry every node reads from the
//! internal topic `__transforms`, the runners this node starts for the input partitions it
//! leads, their log lines in `__transform_logs`, and what the admin API does to deploy, pause,
//! resume and delete them.
//!
//! The registry and logs topics are internal: clients cannot produce to them, so the broker
//! writes them itself, on the node leading their partition (`append_internal`, through the
//! cluster transport when that is another node).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use fjord_replication::rpc::{self, RemoteFailure};
use fjord_replication::NodeId;
use fjord_storage::batch::{build_records, NewRecord};
use fjord_transforms::client::Client;
use fjord_transforms::engine::{LogLine, Runtime};
use fjord_transforms::lookups::Tables;
use fjord_transforms::runner::{self, Ended, Runner};
use fjord_transforms::spec::{
    self, DeployRequest, RegistryKey, Start, State, TransformSpec, LOGS_TOPIC, REGISTRY_TOPIC,
};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::leadership::{Leadership, NO_EPOCH};
use crate::server::Broker;

/// The service RPC that appends records to an internal topic's partition on its leader: body
/// an [`Append`], answer `Result<(), String>`.
pub const RPC_INTERNAL_APPEND: u8 = fjord_replication::node::SERVICE_RPC_BASE + 3;

/// How often the supervisor compares the runners with the registry and the leaderships.
const SUPERVISE_EVERY: Duration = Duration::from_millis(500);
/// How long a registry or logs write may take to commit.
const WRITE_WAIT: Duration = Duration::from_secs(15);
/// The most log line bytes one `logs` call reads from the logs topic (what it found by then is
/// answered).
const LOGS_SCAN_MAX_BYTES: usize = 64 << 20;
/// How long to wait for lookup tables to be read before a runner starts anyway.
const LOOKUPS_READY_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize)]
pub struct Append {
    pub topic: String,
    pub partition: i32,
    pub batch: Vec<u8>,
}

/// What this node knows of the registry topic.
#[derive(Default)]
struct Registry {
    specs: BTreeMap<String, Arc<TransformSpec>>,
    modules: HashMap<String, Bytes>,
    /// Compiled modules by sha256 (compiling takes a while; every runner of it shares one).
    compiled: HashMap<String, fjord_transforms::wasmtime::Module>,
    /// The registry topic's offset read up to.
    position: i64,
}

struct Running {
    version: u64,
    /// The consumer group the runner keeps its progress in.
    group: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Ended>,
}

/// Lookup tables of one version of a transform on this node, shared by its runners.
struct SharedTables {
    version: u64,
    tables: Arc<Tables>,
    stop: watch::Sender<bool>,
}

pub struct Transforms {
    broker: Weak<Broker>,
    runtime: Runtime,
    /// This node's own Kafka listener, which runners and lookup tables connect to.
    bootstrap: String,
    /// For the registry, the logs and the admin API's views. Runners and lookup tables have
    /// their own: a connection serves its requests in order, and their long-polling fetches
    /// would hold everything else on it back.
    client: Arc<Client>,
    registry: Mutex<Registry>,
    runners: Mutex<HashMap<(String, i32), Running>>,
    tables: Mutex<HashMap<String, SharedTables>>,
    /// Versions that failed here: not restarted until the spec moves on (the pause it wrote
    /// may take a moment to come back through the registry).
    failed: Mutex<HashSet<(String, u64)>>,
    /// Serializes registry writes made through this node (read-modify-write of a spec).
    writes: tokio::sync::Mutex<()>,
}

/// A transform as the admin API shows it.
#[derive(Serialize)]
pub struct TransformView {
    pub name: String,
    pub id: String,
    pub input: String,
    pub outputs: Vec<String>,
    pub lookups: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub state: State,
    pub error: Option<String>,
    pub module: ModuleView,
    pub memory_limit_bytes: u64,
    pub fuel_per_batch: u64,
    pub start: Start,
    pub deployed_ms: i64,
    pub partitions: Vec<PartitionProgress>,
}

#[derive(Serialize)]
pub struct ModuleView {
    pub sha256: String,
    pub size_bytes: u64,
}

#[derive(Serialize)]
pub struct PartitionProgress {
    pub partition: i32,
    pub leader: Option<i32>,
    pub committed_offset: Option<i64>,
    pub end_offset: Option<i64>,
    pub lag: Option<i64>,
}

#[derive(Serialize)]
pub struct LogView {
    pub timestamp: i64,
    pub level: String,
    pub partition: Option<i32>,
    pub message: String,
}

/// Why an admin request was refused: the HTTP status to answer and a message.
#[derive(Debug)]
pub struct Refusal {
    pub not_found: bool,
    pub unavailable: bool,
    pub message: String,
}

impl Refusal {
    fn bad(message: impl Into<String>) -> Refusal {
        Refusal { not_found: false, unavailable: false, message: message.into() }
    }

    fn missing(name: &str) -> Refusal {
        Refusal { not_found: true, unavailable: false, message: format!("no transform named {name}") }
    }

    fn unavailable(message: impl Into<String>) -> Refusal {
        Refusal { not_found: false, unavailable: true, message: message.into() }
    }
}

impl Transforms {
    pub fn new(broker: Weak<Broker>, bootstrap: String) -> anyhow::Result<Arc<Transforms>> {
        Ok(Arc::new(Transforms {
            broker,
            runtime: Runtime::new()?,
            client: Arc::new(Client::connect(vec![bootstrap.clone()], "fjord-transforms")),
            bootstrap,
            registry: Mutex::new(Registry::default()),
            runners: Mutex::new(HashMap::new()),
            tables: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashSet::new()),
            writes: tokio::sync::Mutex::new(()),
        }))
    }

    fn broker(&self) -> Option<Arc<Broker>> {
        self.broker.upgrade()
    }

    fn lock_registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the registry topic from where this node stopped up to its current end. Returns
    /// whether it changed anything.
    async fn catch_up(&self) -> Result<bool, String> {
        let Some(broker) = self.broker() else { return Ok(false) };
        if partition_count(&broker, REGISTRY_TOPIC).is_none() {
            return Ok(false);
        }
        let mut changed = false;
        loop {
            let at = self.lock_registry().position;
            let f = self
                .client
                .fetch(REGISTRY_TOPIC, 0, at, 64 << 20, 0, true)
                .await
                .map_err(|e| format!("cannot read {REGISTRY_TOPIC}: {e}"))?;
            let done = f.records.is_empty() && f.next_offset <= at;
            let mut reg = self.lock_registry();
            for r in f.records {
                let Some(key) = r.key.as_deref() else { continue };
                match spec::parse_key(key) {
                    RegistryKey::Spec(name) => {
                        let name = name.to_string();
                        match r.value.as_deref().map(serde_json::from_slice::<TransformSpec>) {
                            Some(Ok(s)) => {
                                reg.specs.insert(name, Arc::new(s));
                            }
                            Some(Err(e)) => tracing::warn!(transform = %name, error = %e, "unreadable transform spec"),
                            None => {
                                reg.specs.remove(&name);
                            }
                        }
                    }
                    RegistryKey::Module(sha) => {
                        let sha = sha.to_string();
                        match r.value {
                            Some(v) => {
                                reg.modules.insert(sha, v);
                            }
                            None => {
                                reg.modules.remove(&sha);
                                reg.compiled.remove(&sha);
                            }
                        }
                    }
                    RegistryKey::Unknown => {}
                }
                changed = true;
            }
            reg.position = reg.position.max(f.next_offset);
            if done || reg.position >= f.high_watermark {
                return Ok(changed);
            }
        }
    }

    pub fn list(&self) -> Vec<Arc<TransformSpec>> {
        self.lock_registry().specs.values().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Option<Arc<TransformSpec>> {
        self.lock_registry().specs.get(name).cloned()
    }

    /// The compiled module of `spec` (compiled once per node).
    async fn module(&self, spec: &TransformSpec) -> Result<fjord_transforms::wasmtime::Module, String> {
        let bytes = {
            let reg = self.lock_registry();
            if let Some(m) = reg.compiled.get(&spec.module_sha256) {
                return Ok(m.clone());
            }
            reg.modules.get(&spec.module_sha256).cloned()
        };
        let bytes = bytes.ok_or_else(|| format!("module {} is not in the registry", spec.module_sha256))?;
        let runtime = self.runtime.clone();
        let limits = spec.limits();
        let module = tokio::task::spawn_blocking(move || runtime.compile(&bytes, &limits))
            .await
            .map_err(|e| e.to_string())??;
        self.lock_registry().compiled.insert(spec.module_sha256.clone(), module.clone());
        Ok(module)
    }

    /// Deploys (or redeploys) `name`.
    pub async fn deploy(&self, name: &str, req: DeployRequest) -> Result<TransformView, Refusal> {
        let broker = self.broker().ok_or_else(|| Refusal::unavailable("the broker is stopping"))?;
        let limits = spec::check_request(name, &req).map_err(Refusal::bad)?;
        let module = base64::engine::general_purpose::STANDARD
            .decode(req.module.trim())
            .map_err(|e| Refusal::bad(format!("module is not base64: {e}")))?;
        if module.len() > spec::MAX_MODULE_BYTES {
            return Err(Refusal::bad(format!(
                "the module has {} bytes; at most {} are taken",
                module.len(),
                spec::MAX_MODULE_BYTES
            )));
        }
        let input_partitions = partition_count(&broker, &req.input)
            .ok_or_else(|| Refusal::bad(format!("input topic {} does not exist", req.input)))?;
        for o in &req.outputs {
            if partition_count(&broker, o).is_none() {
                return Err(Refusal::bad(format!("output topic {o} does not exist")));
            }
            if o.starts_with("__") {
                return Err(Refusal::bad(format!("output topic {o} is internal")));
            }
        }
        for l in &req.lookups {
            if partition_count(&broker, l).is_none() {
                return Err(Refusal::bad(format!("lookup topic {l} does not exist")));
            }
            if !compacted(&broker, l) {
                return Err(Refusal::bad(format!(
                    "lookup topic {l} is not compacted (cleanup.policy=compact): a lookup table holds the \
                     newest value of each key"
                )));
            }
        }
        let sha = spec::sha256_hex(&module);
        {
            let runtime = self.runtime.clone();
            let bytes = module.clone();
            let compiled = tokio::task::spawn_blocking(move || runtime.compile(&bytes, &limits))
                .await
                .map_err(|e| Refusal::unavailable(e.to_string()))?
                .map_err(|e| Refusal::bad(format!("module refused: {e}")))?;
            self.lock_registry().compiled.insert(sha.clone(), compiled);
        }
        // Instantiating once proves it starts (its _initialize runs, its ABI version matches)
        // before anything is written.
        {
            let module = self.lock_registry().compiled.get(&sha).cloned().expect("just compiled");
            let runtime = self.runtime.clone();
            let env = fjord_transforms::engine::HostEnv {
                env: req.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                outputs: req.outputs.len(),
                lookups: Arc::new(fjord_transforms::engine::NoLookups),
            };
            tokio::task::spawn_blocking(move || runtime.instantiate(&module, env, limits).map(|_| ()))
                .await
                .map_err(|e| Refusal::unavailable(e.to_string()))?
                .map_err(|e| Refusal::bad(format!("module refused: {}", e.message)))?;
        }
        self.ensure_topics(&broker).await.map_err(Refusal::unavailable)?;
        let _serial = self.writes.lock().await;
        self.catch_up().await.map_err(Refusal::unavailable)?;
        let existing = self.get(name);
        let start = req.start.clone().unwrap_or_default();
        let start_offsets = match &existing {
            // A redeploy continues from the committed progress; the first deploy's starts stay.
            Some(e) if e.input == req.input => e.start_offsets.clone(),
            _ => self.resolve_start(&req.input, input_partitions, &start).await.map_err(Refusal::unavailable)?,
        };
        let spec = TransformSpec {
            name: name.to_string(),
            id: match &existing {
                Some(e) if e.input == req.input => e.id.clone(),
                _ => uuid::Uuid::new_v4().simple().to_string(),
            },
            input: req.input,
            outputs: req.outputs,
            lookups: req.lookups,
            env: req.env,
            start,
            start_offsets,
            memory_limit_bytes: limits.memory_bytes,
            fuel_per_batch: limits.fuel_per_batch,
            module_sha256: sha.clone(),
            module_size: module.len() as u64,
            state: State::Running,
            error: None,
            deployed_ms: now_ms(),
            version: existing.as_ref().map_or(1, |e| e.version + 1),
        };
        let mut records = Vec::new();
        if !self.lock_registry().modules.contains_key(&sha) {
            records.push((spec::module_key(&sha), Some(module)));
        }
        records.push((spec.registry_key(), Some(serde_json::to_vec(&spec).expect("a spec serializes"))));
        self.write_registry(&broker, records).await?;
        Ok(self.view(&spec).await)
    }

    /// Pauses (or resumes) `name` by hand.
    pub async fn set_state(&self, name: &str, state: State) -> Result<TransformView, Refusal> {
        let broker = self.broker().ok_or_else(|| Refusal::unavailable("the broker is stopping"))?;
        let _serial = self.writes.lock().await;
        self.catch_up().await.map_err(Refusal::unavailable)?;
        let current = self.get(name).ok_or_else(|| Refusal::missing(name))?;
        let mut next = (*current).clone();
        next.state = state;
        next.error = None;
        next.version += 1;
        let value = serde_json::to_vec(&next).expect("a spec serializes");
        self.write_registry(&broker, vec![(next.registry_key(), Some(value))]).await?;
        Ok(self.view(&next).await)
    }

    pub async fn delete(&self, name: &str) -> Result<(), Refusal> {
        let broker = self.broker().ok_or_else(|| Refusal::unavailable("the broker is stopping"))?;
        let _serial = self.writes.lock().await;
        self.catch_up().await.map_err(Refusal::unavailable)?;
        let current = self.get(name).ok_or_else(|| Refusal::missing(name))?;
        let mut records = vec![(current.registry_key(), None)];
        let shared = self.list().iter().any(|s| s.name != name && s.module_sha256 == current.module_sha256);
        if !shared {
            records.push((spec::module_key(&current.module_sha256), None));
        }
        self.write_registry(&broker, records).await
    }

    /// A failed runner's pause: only if the spec is still the version that failed.
    async fn pause_failed(&self, name: &str, version: u64, error: String) {
        let Some(broker) = self.broker() else { return };
        self.failed.lock().unwrap_or_else(|e| e.into_inner()).insert((name.to_string(), version));
        let _serial = self.writes.lock().await;
        if let Err(e) = self.catch_up().await {
            tracing::warn!(transform = name, error = %e, "cannot pause a failed transform");
            return;
        }
        let Some(current) = self.get(name) else { return };
        if current.version != version {
            return;
        }
        let mut next = (*current).clone();
        next.state = State::Paused;
        next.error = Some(error);
        next.version += 1;
        let value = serde_json::to_vec(&next).expect("a spec serializes");
        if let Err(e) = self.write_registry(&broker, vec![(next.registry_key(), Some(value))]).await {
            tracing::warn!(transform = name, error = %e.message, "cannot pause a failed transform");
        }
    }

    async fn write_registry(
        &self,
        broker: &Arc<Broker>,
        records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(), Refusal> {
        let now = now_ms();
        let batch = {
            let recs: Vec<NewRecord<'_>> = records
                .iter()
                .map(|(k, v)| NewRecord { timestamp: now, key: Some(k), value: v.as_deref(), headers: &[] })
                .collect();
            build_records(&recs, None)
        };
        append_internal(broker, REGISTRY_TOPIC, 0, batch).await.map_err(Refusal::unavailable)?;
        self.catch_up().await.map_err(Refusal::unavailable)?;
        Ok(())
    }

    /// Creates the registry and logs topics on first use.
    async fn ensure_topics(&self, broker: &Arc<Broker>) -> Result<(), String> {
        let logs: BTreeMap<String, String> =
            // A week of lines, and at most 1 GiB of them: a module logging on every record must
            // not fill the disk.
            [
                ("cleanup.policy", "delete"),
                ("retention.ms", "604800000"),
                ("retention.bytes", "1073741824"),
                ("segment.bytes", "16777216"),
            ]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let registry: BTreeMap<String, String> = [("cleanup.policy", "compact"), ("max.message.bytes", "67108864")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (name, configs) in [(REGISTRY_TOPIC, registry), (LOGS_TOPIC, logs)] {
            if partition_count(broker, name).is_some() {
                continue;
            }
            match &broker.cluster {
                Some(c) => c.ensure_internal_topic_with(name, 1, configs).await.map_err(|e| e.message)?,
                None => {
                    crate::internal_topic::ensure_with(&broker.topics, name, 1, configs).map_err(|e| e.to_string())?;
                }
            }
        }
        // The new topics' leaders are elected (in a cluster) before the first write.
        let deadline = tokio::time::Instant::now() + WRITE_WAIT;
        for name in [REGISTRY_TOPIC, LOGS_TOPIC] {
            while leader_node(broker, name, 0).is_none() {
                if tokio::time::Instant::now() > deadline {
                    return Err(format!("{name} has no leader yet; try again"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    async fn resolve_start(&self, input: &str, partitions: i32, start: &Start) -> Result<BTreeMap<i32, i64>, String> {
        let mut out = BTreeMap::new();
        for p in 0..partitions {
            let offset = match start.list_offsets_spec() {
                Err(offset) => offset,
                Ok(ts) => self
                    .client
                    .list_offset(input, p, ts)
                    .await
                    .map_err(|e| format!("cannot find the start of {input}-{p}: {e}"))?,
            };
            out.insert(p, offset);
        }
        Ok(out)
    }

    /// The view of `spec` with each input partition's progress.
    pub async fn view(&self, spec: &TransformSpec) -> TransformView {
        let broker = self.broker();
        let count = broker.as_ref().and_then(|b| partition_count(b, &spec.input)).unwrap_or(0);
        let mut partitions = Vec::new();
        for p in 0..count {
            // The last committed position: a transaction in flight does not hold the view back.
            let committed = self.client.last_committed_offset(&spec.group(), &spec.input, p).await.ok().flatten();
            let end = self.client.list_offset(&spec.input, p, -1).await.ok();
            partitions.push(PartitionProgress {
                partition: p,
                leader: broker.as_ref().and_then(|b| leader_node(b, &spec.input, p)),
                committed_offset: committed,
                end_offset: end,
                lag: match (committed, end) {
                    (Some(c), Some(e)) => Some((e - c).max(0)),
                    (None, Some(e)) => spec.start_offsets.get(&p).map(|s| (e - s).max(0)),
                    _ => None,
                },
            });
        }
        TransformView {
            name: spec.name.clone(),
            id: spec.id.clone(),
            input: spec.input.clone(),
            outputs: spec.outputs.clone(),
            lookups: spec.lookups.clone(),
            env: spec.env.clone(),
            state: spec.state,
            error: spec.error.clone(),
            module: ModuleView { sha256: spec.module_sha256.clone(), size_bytes: spec.module_size },
            memory_limit_bytes: spec.memory_limit_bytes,
            fuel_per_batch: spec.fuel_per_batch,
            start: spec.start.clone(),
            deployed_ms: spec.deployed_ms,
            partitions,
        }
    }

    /// The newest `limit` log lines of `name`, oldest first. The logs topic holds every
    /// transform's lines for a week, so it is read backwards from its end, in windows that
    /// double until `limit` lines are found or its start is reached; at most
    /// `LOGS_SCAN_MAX_BYTES` are read per call.
    pub async fn logs(&self, name: &str, limit: usize) -> Result<Vec<LogView>, Refusal> {
        self.catch_up().await.map_err(Refusal::unavailable)?;
        let Some(broker) = self.broker() else { return Ok(vec![]) };
        if partition_count(&broker, LOGS_TOPIC).is_none() {
            return Ok(vec![]);
        }
        let unavailable = |e: fjord_transforms::client::ClientError| Refusal::unavailable(e.to_string());
        let start = self.client.list_offset(LOGS_TOPIC, 0, -2).await.map_err(unavailable)?;
        let end = self.client.list_offset(LOGS_TOPIC, 0, -1).await.map_err(unavailable)?;
        let mut found: std::collections::VecDeque<LogView> = std::collections::VecDeque::new();
        let mut window = i64::try_from(limit).unwrap_or(i64::MAX).clamp(256, 1 << 20) * 4;
        let mut upper = end;
        let mut scanned = 0usize;
        while upper > start && found.len() < limit && scanned < LOGS_SCAN_MAX_BYTES {
            let lower = upper.saturating_sub(window).max(start);
            let mut lines = Vec::new();
            let mut at = lower;
            while at < upper {
                let f = self.client.fetch(LOGS_TOPIC, 0, at, 8 << 20, 0, true).await.map_err(unavailable)?;
                if f.next_offset <= at {
                    break;
                }
                at = f.next_offset;
                for r in f.records.into_iter().filter(|r| r.offset < upper) {
                    scanned += r.value.as_ref().map_or(0, |v| v.len());
                    if r.key.as_deref() == Some(name.as_bytes()) {
                        lines.push(log_view(r));
                    }
                }
            }
            // This window's lines come before everything found so far.
            for line in lines.into_iter().rev() {
                found.push_front(line);
            }
            upper = lower;
            window = window.saturating_mul(2);
        }
        while found.len() > limit {
            found.pop_front();
        }
        Ok(found.into())
    }

    async fn write_logs(&self, name: &str, partition: Option<i32>, lines: Vec<LogLine>) {
        let Some(broker) = self.broker() else { return };
        if lines.is_empty() {
            return;
        }
        if let Err(e) = self.ensure_topics(&broker).await {
            tracing::debug!(transform = name, error = %e, "transform logs not written");
            return;
        }
        let now = now_ms();
        let partition_text = partition.map(|p| p.to_string());
        let level_names: Vec<&str> = lines.iter().map(|l| l.level.name()).collect();
        let headers: Vec<Vec<fjord_storage::records::HeaderRef<'_>>> = level_names
            .iter()
            .map(|level| {
                let mut h: Vec<fjord_storage::records::HeaderRef<'_>> =
                    vec![(b"level".as_slice(), Some(level.as_bytes()))];
                if let Some(p) = &partition_text {
                    h.push((b"partition".as_slice(), Some(p.as_bytes())));
                }
                h
            })
            .collect();
        let batch = {
            let recs: Vec<NewRecord<'_>> = lines
                .iter()
                .zip(&headers)
                .map(|(l, h)| NewRecord {
                    timestamp: now,
                    key: Some(name.as_bytes()),
                    value: Some(l.message.as_bytes()),
                    headers: h,
                })
                .collect();
            build_records(&recs, None)
        };
        if let Err(e) = append_internal(&broker, LOGS_TOPIC, 0, batch).await {
            tracing::debug!(transform = name, error = %e, "transform logs not written");
        }
    }

    /// One supervision pass: reads the registry, stops runners whose spec moved on or whose
    /// partition this node no longer leads, and starts the missing ones.
    async fn supervise(self: &Arc<Self>) {
        let Some(broker) = self.broker() else { return };
        if let Err(e) = self.catch_up().await {
            tracing::debug!(error = %e, "transform registry not read");
        }
        let specs = self.list();
        let mut wanted: HashMap<(String, i32), Arc<TransformSpec>> = HashMap::new();
        {
            let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
            for s in &specs {
                if s.state != State::Running || failed.contains(&(s.name.clone(), s.version)) {
                    continue;
                }
                for p in 0..partition_count(&broker, &s.input).unwrap_or(0) {
                    if broker.lead(&s.input, p, NO_EPOCH).is_ok() {
                        wanted.insert((s.name.clone(), p), s.clone());
                    }
                }
            }
        }
        let mut to_start = Vec::new();
        // Progress groups of transforms deleted (or redeployed on another input, which starts a
        // new group), with the runners here that wrote to them.
        let mut orphaned: HashMap<String, Vec<tokio::task::JoinHandle<Ended>>> = HashMap::new();
        // Transforms whose runner count here is reported after this pass.
        let mut gauged: HashSet<String> = specs.iter().map(|s| s.name.clone()).collect();
        {
            let live_groups: HashSet<String> = specs.iter().map(|s| s.group()).collect();
            let mut runners = self.runners.lock().unwrap_or_else(|e| e.into_inner());
            let ended: Vec<(String, i32)> = runners
                .iter()
                .filter(|(key, r)| r.task.is_finished() || wanted.get(*key).is_none_or(|s| s.version != r.version))
                .map(|(key, _)| key.clone())
                .collect();
            for key in ended {
                gauged.insert(key.0.clone());
                let Some(r) = runners.remove(&key) else { continue };
                let _ = r.stop.send(true);
                if !live_groups.contains(&r.group) {
                    orphaned.entry(r.group).or_default().push(r.task);
                }
            }
            for (key, s) in &wanted {
                if !runners.contains_key(key) {
                    to_start.push((key.1, s.clone()));
                }
            }
        }
        for (group, tasks) in orphaned {
            // Once this node's runners of it have ended (their last transaction is over), the
            // group goes, so that consumer-group listings do not keep it forever. Every node
            // that ran some of its runners deletes it after its own: the last one to stop
            // removes what the others committed before.
            let client = self.client.clone();
            tokio::spawn(async move {
                for t in tasks {
                    let _ = t.await;
                }
                match client.delete_group(&group).await {
                    Ok(()) => tracing::info!(group = %group, "progress group of a removed transform deleted"),
                    Err(e) => {
                        tracing::warn!(group = %group, error = %e, "progress group of a removed transform not deleted")
                    }
                }
            });
        }
        // Lookup tables of versions no runner needs any more stop reading.
        {
            let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
            tables.retain(|name, t| {
                let keep = specs.iter().any(|s| &s.name == name && s.version == t.version && s.state == State::Running);
                if !keep {
                    let _ = t.stop.send(true);
                }
                keep
            });
        }
        for (partition, spec) in to_start {
            let module = match self.module(&spec).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(transform = %spec.name, error = %e, "transform module not loaded");
                    continue;
                }
            };
            let tables = self.tables_for(&spec).await;
            let (stop_tx, stop_rx) = watch::channel(false);
            let runner = Runner {
                spec: spec.clone(),
                module,
                partition,
                runtime: self.runtime.clone(),
                client: Arc::new(Client::connect(vec![self.bootstrap.clone()], "fjord-transform-runner")),
                lookups: tables.clone(),
                host: Arc::new(HostLink(Arc::downgrade(self))),
                stop: stop_rx,
            };
            let name = spec.name.clone();
            let task = tokio::spawn(async move {
                // Enrichment from half-read tables would differ from what a later replay
                // writes: the first batch waits for the tables (bounded, not forever).
                if !tables.ready(LOOKUPS_READY_WAIT).await {
                    tracing::warn!(transform = %name, "lookup tables not read to their end within 30 s; starting anyway");
                }
                let ended = runner.run().await;
                tracing::info!(transform = %name, partition, ?ended, "transform runner ended");
                ended
            });
            tracing::info!(transform = %spec.name, partition, version = spec.version, "transform runner started");
            self.runners.lock().unwrap_or_else(|e| e.into_inner()).insert(
                (spec.name.clone(), partition),
                Running { version: spec.version, group: spec.group(), stop: stop_tx, task },
            );
        }
        // Runners here per transform (a removed one's last value is 0).
        let runners = self.runners.lock().unwrap_or_else(|e| e.into_inner());
        for name in gauged {
            let here = runners.keys().filter(|(n, _)| *n == name).count();
            metrics::gauge!("fjord_transform_runners", "transform" => name).set(here as f64);
        }
    }

    async fn tables_for(&self, spec: &TransformSpec) -> Arc<Tables> {
        if let Some(t) = self.tables.lock().unwrap_or_else(|e| e.into_inner()).get(&spec.name) {
            if t.version == spec.version {
                return t.tables.clone();
            }
        }
        let (stop, rx) = watch::channel(false);
        let tables = Tables::start(vec![self.bootstrap.clone()], &spec.lookups, rx).await;
        let mut all = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) =
            all.insert(spec.name.clone(), SharedTables { version: spec.version, tables: tables.clone(), stop })
        {
            let _ = old.stop.send(true);
        }
        tables
    }

    /// Stops every runner (shutdown).
    fn stop_all(&self) {
        for (_, r) in self.runners.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            let _ = r.stop.send(true);
        }
        for (_, t) in self.tables.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            let _ = t.stop.send(true);
        }
    }
}

/// What a runner sees of this node.
struct HostLink(Weak<Transforms>);

impl runner::Host for HostLink {
    fn leads(&self, topic: &str, partition: i32) -> bool {
        self.0.upgrade().and_then(|t| t.broker()).is_some_and(|b| b.lead(topic, partition, NO_EPOCH).is_ok())
    }

    fn write_logs(&self, name: &str, partition: Option<i32>, lines: Vec<LogLine>) -> BoxFuture<'static, ()> {
        // In the background: a slow or unreachable logs partition must not hold the
        // transform back.
        if let Some(t) = self.0.upgrade() {
            let name = name.to_string();
            tokio::spawn(async move { t.write_logs(&name, partition, lines).await });
        }
        Box::pin(async {})
    }

    fn pause(
        &self,
        name: &str,
        partition: i32,
        version: u64,
        error: String,
        logs: Vec<LogLine>,
    ) -> BoxFuture<'static, ()> {
        let t = self.0.upgrade();
        let name = name.to_string();
        Box::pin(async move {
            if let Some(t) = t {
                t.write_logs(&name, Some(partition), logs).await;
                t.pause_failed(&name, version, error).await;
            }
        })
    }
}

/// A log line of the logs topic as the admin API shows it.
fn log_view(r: fjord_storage::records::Record) -> LogView {
    let header = |k: &str| {
        r.headers
            .iter()
            .find(|(hk, _)| hk.as_ref() == k.as_bytes())
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    LogView {
        timestamp: r.timestamp,
        level: header("level").unwrap_or_else(|| "info".into()),
        partition: header("partition").and_then(|p| p.parse().ok()),
        message: r.value.as_deref().map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default(),
    }
}

/// Supervises this node's runners until shutdown.
pub async fn supervise_loop(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let Some(t) = broker.transforms.get().cloned() else { return };
    drop(broker);
    let mut tick = tokio::time::interval(SUPERVISE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stopped = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = tick.tick() => t.supervise().await,
            _ = &mut stopped => break,
        }
    }
    t.stop_all();
}

fn partition_count(broker: &Broker, topic: &str) -> Option<i32> {
    match &broker.cluster {
        Some(c) => c.partition_count(topic),
        None => broker.topics.topic(topic).map(|m| m.partitions),
    }
}

fn leader_node(broker: &Broker, topic: &str, partition: i32) -> Option<i32> {
    match &broker.cluster {
        Some(c) => c.leader_address(topic, partition).map(|(node, _, _)| node),
        None => broker.topics.topic(topic).map(|_| broker.node_id),
    }
}

fn compacted(broker: &Broker, topic: &str) -> bool {
    let overrides = crate::api::configs::topic_configs(broker, topic).unwrap_or_default();
    let defaults: BTreeMap<String, String> =
        broker.config.log_defaults().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let (policy, _) = crate::topic_config::effective("cleanup.policy", &overrides, &defaults);
    policy.split(',').any(|p| p.trim() == "compact")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Appends `batch` to an internal topic's partition on its leader: here, or through the
/// cluster transport. Returns once the write is committed (replicated, or synced on a single
/// node).
pub async fn append_internal(broker: &Arc<Broker>, topic: &str, partition: i32, batch: Vec<u8>) -> Result<(), String> {
    if broker.lead(topic, partition, NO_EPOCH).is_ok() || broker.cluster.is_none() {
        return append_here(broker, topic, partition, batch).await;
    }
    let cluster = broker.cluster.as_ref().expect("a cluster");
    let node = leader_node(broker, topic, partition).ok_or_else(|| format!("{topic}-{partition} has no leader"))?;
    let target = NodeId::try_from(node).map_err(|_| format!("bad node id {node}"))?;
    let body = rpc::encode(&Append { topic: topic.to_string(), partition, batch }).map_err(|e| e.to_string())?;
    let answer = cluster
        .node
        .transport()
        .call(target, 0, RPC_INTERNAL_APPEND, &[&body], WRITE_WAIT + Duration::from_secs(1))
        .await
        .map_err(|e| format!("node {node}: {e}"))?;
    rpc::decode_response::<Result<(), String>>(&answer).map_err(|e| format!("node {node}: {e}"))?
}

async fn append_here(broker: &Arc<Broker>, topic: &str, partition: i32, batch: Vec<u8>) -> Result<(), String> {
    let guard = broker.lead(topic, partition, NO_EPOCH).map_err(|e| format!("{topic}-{partition}: {e:?}"))?;
    match guard.raft {
        Some(w) => w
            .proposer
            .produce(&w.raft, &guard.log, Bytes::from(batch), WRITE_WAIT)
            .await
            .map(|_| ())
            .map_err(|e| format!("{topic}-{partition}: {e}")),
        None => {
            let info =
                guard.log.append(&batch, guard.epoch, now_ms()).map_err(|e| format!("{topic}-{partition}: {e}"))?;
            guard.log.sync(info.last_offset + 1).await.map_err(|e| format!("{topic}-{partition}: {e}"))
        }
    }
}

/// The RPC side of [`append_internal`], on the leader.
pub fn serve_append(broker: Option<Arc<Broker>>, body: Bytes) -> BoxFuture<'static, Bytes> {
    Box::pin(async move {
        let Some(broker) = broker else {
            return rpc::encode_response::<Result<(), String>>(Err(&RemoteFailure::BadRequest(
                "the broker is starting".into(),
            )));
        };
        let a: Append = match rpc::decode(&body) {
            Ok(a) => a,
            Err(e) => {
                return rpc::encode_response::<Result<(), String>>(Err(&RemoteFailure::BadRequest(e.to_string())))
            }
        };
        if !a.topic.starts_with("__") {
            return rpc::encode_response::<Result<(), String>>(Ok(&Err(format!("{} is not internal", a.topic))));
        }
        let result = append_here(&broker, &a.topic, a.partition, a.batch).await;
        rpc::encode_response(Ok(&result))
    })
}

/// For the admin API: a refusal as an HTTP status and message.
pub fn status_of(r: &Refusal) -> (u16, &str) {
    let status = if r.not_found {
        404
    } else if r.unavailable {
        503
    } else {
        400
    };
    (status, r.message.as_str())
}

//! `fjordctl topic ...`: create, list, describe, alter configs, add partitions, delete, produce
//! and consume, all over the Kafka protocol.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::Subcommand;
use kafka_protocol::messages::*;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use serde::Serialize;

use crate::error::{CliError, Result};
use crate::kafka::{refusal, s, Client};
use crate::output::{emit, list, pairs, Table};
use crate::Cli;

#[derive(Subcommand)]
pub enum TopicCmd {
    /// Creates a topic
    Create {
        name: String,
        /// Partitions (broker default when unset)
        #[arg(short, long)]
        partitions: Option<i32>,
        /// Replication factor (broker default when unset)
        #[arg(short, long)]
        replication_factor: Option<i16>,
        /// A topic config, key=value (repeatable), e.g. -c retention.ms=86400000
        #[arg(short, long = "config", value_parser = key_value)]
        configs: Vec<(String, String)>,
    },
    /// Restores a topic from the tiered storage bucket into this cluster, offsets and
    /// timestamps intact (a fresh cluster pointed at the bucket of a lost one).
    ///
    /// The brokers need remote_storage_enable and the bucket; the topic is created with the
    /// source's partitions and configs, and each partition takes writes once it is restored.
    ///
    ///   fjordctl topic restore events
    ///   fjordctl topic restore events --source events-6f1c0e5d9a2b4c7d8e9f0a1b2c3d4e5f
    Restore {
        name: String,
        /// The bucket's directory of the topic (`name-topicid`) when it holds several
        #[arg(long)]
        source: Option<String>,
        /// Replication factor (broker default when unset)
        #[arg(short, long)]
        replication_factor: Option<i16>,
    },
    /// Lists topics
    List {
        /// Includes internal topics (__consumer_offsets, ...)
        #[arg(short, long)]
        internal: bool,
    },
    /// A topic's partitions (leader, replicas, in-sync replicas, offsets) and configs
    Describe { name: String },
    /// Sets or removes topic configs
    AlterConfig {
        name: String,
        /// key=value to set (repeatable)
        #[arg(long, value_parser = key_value)]
        set: Vec<(String, String)>,
        /// A key to return to its default (repeatable)
        #[arg(long)]
        delete: Vec<String>,
    },
    /// Raises a topic's partition count
    AddPartitions {
        name: String,
        /// The new total number of partitions
        #[arg(long)]
        total: i32,
    },
    /// Deletes topics
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Produces one record per line of standard input
    Produce {
        name: String,
        /// Every record to this partition (else by key hash, as Java clients do, or round robin)
        #[arg(short, long)]
        partition: Option<i32>,
        /// Splits each line into key and value at the first occurrence of this string
        #[arg(short = 'k', long)]
        key_delimiter: Option<String>,
        /// A header on every record, key=value (repeatable)
        #[arg(short = 'H', long = "header", value_parser = key_value)]
        headers: Vec<(String, String)>,
        /// all, 1 or 0
        #[arg(long, default_value = "all", value_parser = ["all", "1", "0", "-1"])]
        acks: String,
        #[arg(short = 'z', long, default_value = "none", value_parser = ["none", "gzip", "snappy", "lz4", "zstd"])]
        compression: String,
    },
    /// Prints records, as kcat does (-f for its format strings)
    Consume {
        name: String,
        /// Only these partitions (repeatable; all by default)
        #[arg(short, long = "partition")]
        partitions: Vec<i32>,
        /// Where to start: earliest, latest, an offset, or -N (N before the end)
        #[arg(long, default_value = "earliest", allow_hyphen_values = true)]
        offset: String,
        /// Start at the first record at or after this time (milliseconds since the epoch)
        #[arg(long, conflicts_with = "offset")]
        from_timestamp: Option<i64>,
        /// Stop after this many records
        #[arg(short = 'n', long)]
        num: Option<u64>,
        /// Stop at the end of each partition (as it was when consuming began)
        #[arg(short, long)]
        exit: bool,
        /// kcat-style format: %t topic, %p partition, %o offset, %k key, %s value, %T timestamp,
        /// %h headers, %K/%S key/value length, \n \t escapes
        #[arg(short = 'f', long = "record-format", default_value = "%s\\n")]
        record_format: String,
        /// Reads only committed transactional records
        #[arg(long)]
        read_committed: bool,
        /// Consumes as a member of this consumer group (its committed offsets, committed as read)
        #[arg(short, long)]
        group: Option<String>,
    },
}

pub fn key_value(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not key=value")),
    }
}

pub fn run(cmd: &TopicCmd, cli: &Cli) -> Result<()> {
    match cmd {
        TopicCmd::Create { name, partitions, replication_factor, configs } => {
            create(cli, name, *partitions, *replication_factor, configs)
        }
        TopicCmd::Restore { name, source, replication_factor } => {
            let source = source.clone().unwrap_or_else(|| name.clone());
            create(cli, name, None, *replication_factor, &[("remote.restore.source".to_string(), source)])
        }
        TopicCmd::List { internal } => list_topics(cli, *internal),
        TopicCmd::Describe { name } => describe(cli, name),
        TopicCmd::AlterConfig { name, set, delete } => alter_config(cli, name, set, delete),
        TopicCmd::AddPartitions { name, total } => add_partitions(cli, name, *total),
        TopicCmd::Delete { names } => delete(cli, names),
        TopicCmd::Produce { name, partition, key_delimiter, headers, acks, compression } => {
            produce(cli, name, *partition, key_delimiter.as_deref(), headers, acks, compression)
        }
        TopicCmd::Consume {
            name,
            partitions,
            offset,
            from_timestamp,
            num,
            exit,
            record_format,
            read_committed,
            group,
        } => {
            let opts = ConsumeOpts {
                partitions: partitions.clone(),
                start: match from_timestamp {
                    Some(ts) => Start::Timestamp(*ts),
                    None => parse_start(offset)?,
                },
                num: *num,
                exit: *exit,
                format: record_format.clone(),
                read_committed: *read_committed,
                group: group.clone(),
            };
            crate::group::consume(cli, name, opts)
        }
    }
}

#[derive(Serialize)]
struct Created {
    name: String,
    topic_id: String,
    partitions: i32,
    replication_factor: i16,
}

fn create(cli: &Cli, name: &str, partitions: Option<i32>, rf: Option<i16>, configs: &[(String, String)]) -> Result<()> {
    if partitions.is_some_and(|p| p < 1) {
        return Err(CliError::usage("--partitions must be at least 1"));
    }
    if rf.is_some_and(|r| r < 1) {
        return Err(CliError::usage("--replication-factor must be at least 1"));
    }
    let mut c = cli.kafka()?;
    let mut t = create_topics_request::CreatableTopic::default();
    t.name = TopicName(s(name));
    t.num_partitions = partitions.unwrap_or(-1);
    t.replication_factor = rf.unwrap_or(-1);
    t.configs = configs
        .iter()
        .map(|(k, v)| {
            let mut c = create_topics_request::CreatableTopicConfig::default();
            c.name = s(k);
            c.value = Some(s(v));
            c
        })
        .collect();
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![t];
    req.timeout_ms = i32::try_from(cli.wait().as_millis()).unwrap_or(i32::MAX);
    let r: CreateTopicsResponse = c.any(ApiKey::CreateTopics, 7, &req)?;
    let t = &r.topics[0];
    if t.error_code != 0 {
        return Err(refusal(&format!("creating topic {name}"), t.error_code, t.error_message.as_ref()));
    }
    wait_usable(&mut c, name, t.num_partitions);
    let out = Created {
        name: name.to_string(),
        topic_id: t.topic_id.to_string(),
        partitions: t.num_partitions,
        replication_factor: t.replication_factor,
    };
    emit(cli.format, &out, |o| {
        let mut t = Table::new(&["TOPIC", "ID", "PARTITIONS", "REPLICATION"]);
        t.row(vec![o.name.clone(), o.topic_id.clone(), o.partitions.to_string(), o.replication_factor.to_string()]);
        t
    });
    Ok(())
}

#[derive(Serialize)]
struct TopicRow {
    name: String,
    topic_id: String,
    internal: bool,
    partitions: usize,
    replication_factor: usize,
}

fn list_topics(cli: &Cli, internal: bool) -> Result<()> {
    let mut c = cli.kafka()?;
    let r = c.refresh(&[])?;
    let mut rows: Vec<TopicRow> = r
        .topics
        .iter()
        .filter(|t| internal || !t.is_internal)
        .map(|t| TopicRow {
            name: t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default(),
            topic_id: t.topic_id.to_string(),
            internal: t.is_internal,
            partitions: t.partitions.len(),
            replication_factor: t.partitions.first().map_or(0, |p| p.replica_nodes.len()),
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    emit(cli.format, &rows, |rows| {
        let mut t = Table::new(&["NAME", "PARTITIONS", "REPLICATION", "ID"]);
        for r in rows {
            t.row(vec![r.name.clone(), r.partitions.to_string(), r.replication_factor.to_string(), r.topic_id.clone()]);
        }
        t
    });
    Ok(())
}

#[derive(Serialize)]
struct PartitionRow {
    partition: i32,
    leader: i32,
    leader_epoch: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
    offline_replicas: Vec<i32>,
    log_start_offset: i64,
    high_watermark: i64,
}

#[derive(Serialize)]
struct Described {
    name: String,
    topic_id: String,
    internal: bool,
    partitions: Vec<PartitionRow>,
    /// Configs set on the topic (not the broker defaults).
    configs: BTreeMap<String, String>,
}

/// The broker a BROKER resource names (none for the cluster-wide defaults, name "").
fn broker_resource(resource_type: i8, name: &str) -> Option<i32> {
    (resource_type == 4).then(|| name.parse().ok()).flatten()
}

/// The configs of `resource` (2 topic, 4 broker) with their source: (name, value, source).
pub fn describe_configs(c: &mut Client, resource_type: i8, name: &str) -> Result<Vec<(String, Option<String>, i8)>> {
    let mut r = describe_configs_request::DescribeConfigsResource::default();
    r.resource_type = resource_type;
    r.resource_name = s(name);
    r.configuration_keys = None;
    let mut req = DescribeConfigsRequest::default();
    req.resources = vec![r];
    // A broker's own configs are asked of that broker (Kafka answers only for itself).
    let resp: DescribeConfigsResponse = match broker_resource(resource_type, name) {
        Some(id) => c.to(id, ApiKey::DescribeConfigs, 4, &req)?,
        None => c.any(ApiKey::DescribeConfigs, 4, &req)?,
    };
    let res = &resp.results[0];
    if res.error_code != 0 {
        return Err(refusal(&format!("configs of {name}"), res.error_code, res.error_message.as_ref()));
    }
    Ok(res
        .configs
        .iter()
        .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string()), c.config_source))
        .collect())
}

/// DescribeConfigs' source for a config set on the topic itself.
const TOPIC_CONFIG: i8 = 1;

fn describe(cli: &Cli, name: &str) -> Result<()> {
    let mut c = cli.kafka()?;
    let t = c.topic(name)?;
    let ids: Vec<i32> = t.partitions.iter().map(|p| p.partition_index).collect();
    let start = c.offsets(name, &ids, -2)?;
    let end = c.offsets(name, &ids, -1)?;
    let mut partitions: Vec<PartitionRow> = t
        .partitions
        .iter()
        .map(|p| PartitionRow {
            partition: p.partition_index,
            leader: p.leader_id.0,
            leader_epoch: p.leader_epoch,
            replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
            isr: p.isr_nodes.iter().map(|b| b.0).collect(),
            offline_replicas: p.offline_replicas.iter().map(|b| b.0).collect(),
            log_start_offset: start.get(&p.partition_index).copied().unwrap_or(-1),
            high_watermark: end.get(&p.partition_index).copied().unwrap_or(-1),
        })
        .collect();
    partitions.sort_by_key(|p| p.partition);
    let configs = describe_configs(&mut c, 2, name)?
        .into_iter()
        .filter(|(_, _, source)| *source == TOPIC_CONFIG)
        .map(|(k, v, _)| (k, v.unwrap_or_default()))
        .collect();
    let out = Described {
        name: name.to_string(),
        topic_id: t.topic_id.to_string(),
        internal: t.is_internal,
        partitions,
        configs,
    };
    match cli.format {
        crate::output::Format::Table => {
            let summary = pairs(&[
                ("name", out.name.clone()),
                ("id", out.topic_id.clone()),
                ("partitions", out.partitions.len().to_string()),
                ("configs", out.configs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")),
            ]);
            println!("{}", summary.render());
            emit(cli.format, &out, |o| {
                let mut t =
                    Table::new(&["PARTITION", "LEADER", "EPOCH", "REPLICAS", "ISR", "LOG-START", "HIGH-WATERMARK"]);
                for p in &o.partitions {
                    t.row(vec![
                        p.partition.to_string(),
                        p.leader.to_string(),
                        p.leader_epoch.to_string(),
                        list(&p.replicas),
                        list(&p.isr),
                        p.log_start_offset.to_string(),
                        p.high_watermark.to_string(),
                    ]);
                }
                t
            });
        }
        _ => emit(cli.format, &out, |_| Table::new(&[])),
    }
    Ok(())
}

/// IncrementalAlterConfigs of one resource: `set` (op 0) and `delete` (op 1).
pub fn alter_configs(
    c: &mut Client,
    resource_type: i8,
    name: &str,
    set: &[(String, String)],
    delete: &[String],
) -> Result<()> {
    if set.is_empty() && delete.is_empty() {
        return Err(CliError::usage("nothing to change: give --set key=value or --delete key"));
    }
    let mut r = incremental_alter_configs_request::AlterConfigsResource::default();
    r.resource_type = resource_type;
    r.resource_name = s(name);
    for (k, v) in set {
        let mut a = incremental_alter_configs_request::AlterableConfig::default();
        a.name = s(k);
        a.config_operation = 0;
        a.value = Some(s(v));
        r.configs.push(a);
    }
    for k in delete {
        let mut a = incremental_alter_configs_request::AlterableConfig::default();
        a.name = s(k);
        a.config_operation = 1;
        r.configs.push(a);
    }
    let mut req = IncrementalAlterConfigsRequest::default();
    req.resources = vec![r];
    let resp: IncrementalAlterConfigsResponse = match broker_resource(resource_type, name) {
        Some(id) => c.to(id, ApiKey::IncrementalAlterConfigs, 1, &req)?,
        None => c.any(ApiKey::IncrementalAlterConfigs, 1, &req)?,
    };
    let res = &resp.responses[0];
    if res.error_code != 0 {
        return Err(refusal(&format!("altering configs of {name}"), res.error_code, res.error_message.as_ref()));
    }
    Ok(())
}

fn alter_config(cli: &Cli, name: &str, set: &[(String, String)], delete: &[String]) -> Result<()> {
    let mut c = cli.kafka()?;
    alter_configs(&mut c, 2, name, set, delete)?;
    // A cluster node answers DescribeConfigs from the metadata it has applied, which may trail
    // the controller that took the change by a moment: show the configs once it has them.
    let deadline = Instant::now() + crate::kafka::RETRY_FOR;
    let configs = loop {
        let configs: BTreeMap<String, String> = describe_configs(&mut c, 2, name)?
            .into_iter()
            .filter(|(_, _, source)| *source == TOPIC_CONFIG)
            .map(|(k, v, _)| (k, v.unwrap_or_default()))
            .collect();
        let applied =
            set.iter().all(|(k, v)| configs.get(k) == Some(v)) && delete.iter().all(|k| !configs.contains_key(k));
        if applied || Instant::now() >= deadline {
            break configs;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    emit(cli.format, &configs, |m| {
        let mut t = Table::new(&["CONFIG", "VALUE"]);
        for (k, v) in m {
            t.row(vec![k.clone(), v.clone()]);
        }
        t
    });
    Ok(())
}

/// Usable when a command returns: waits (bounded) until the answering node's metadata shows
/// `name` with at least `partitions` partitions, each with a leader (a cluster node applies the
/// controller's record a moment after the controller answers).
fn wait_usable(c: &mut Client, name: &str, partitions: i32) {
    let deadline = Instant::now() + crate::kafka::RETRY_FOR;
    let usable = |t: &kafka_protocol::messages::metadata_response::MetadataResponseTopic| {
        t.partitions.len() >= usize::try_from(partitions).unwrap_or(0)
            && t.partitions.iter().all(|p| p.leader_id.0 >= 0)
    };
    while Instant::now() < deadline && !c.topic(name).is_ok_and(|t| usable(&t)) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn add_partitions(cli: &Cli, name: &str, total: i32) -> Result<()> {
    let mut c = cli.kafka()?;
    let mut t = create_partitions_request::CreatePartitionsTopic::default();
    t.name = TopicName(s(name));
    t.count = total;
    t.assignments = None;
    let mut req = CreatePartitionsRequest::default();
    req.topics = vec![t];
    req.timeout_ms = i32::try_from(cli.wait().as_millis()).unwrap_or(i32::MAX);
    let r: CreatePartitionsResponse = c.any(ApiKey::CreatePartitions, 3, &req)?;
    let res = &r.results[0];
    if res.error_code != 0 {
        return Err(refusal(&format!("adding partitions to {name}"), res.error_code, res.error_message.as_ref()));
    }
    wait_usable(&mut c, name, total);
    #[derive(Serialize)]
    struct Out {
        name: String,
        partitions: i32,
    }
    emit(cli.format, &Out { name: name.to_string(), partitions: total }, |o| {
        pairs(&[("topic", o.name.clone()), ("partitions", o.partitions.to_string())])
    });
    Ok(())
}

fn delete(cli: &Cli, names: &[String]) -> Result<()> {
    let mut c = cli.kafka()?;
    let mut req = DeleteTopicsRequest::default();
    req.topics = names
        .iter()
        .map(|n| {
            let mut t = delete_topics_request::DeleteTopicState::default();
            t.name = Some(TopicName(s(n)));
            t
        })
        .collect();
    req.timeout_ms = i32::try_from(cli.wait().as_millis()).unwrap_or(i32::MAX);
    let r: DeleteTopicsResponse = c.any(ApiKey::DeleteTopics, 6, &req)?;
    #[derive(Serialize)]
    struct Row {
        name: String,
        error: Option<String>,
    }
    let rows: Vec<Row> = r
        .responses
        .iter()
        .map(|t| Row {
            name: t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default(),
            error: (t.error_code != 0).then(|| {
                let msg = t.error_message.as_ref().map(|m| format!(" ({m})")).unwrap_or_default();
                format!("{}{msg}", crate::kafka::error_name(t.error_code))
            }),
        })
        .collect();
    emit(cli.format, &rows, |rows| {
        let mut t = Table::new(&["TOPIC", "RESULT"]);
        for r in rows {
            t.row(vec![r.name.clone(), r.error.clone().unwrap_or_else(|| "deleted".into())]);
        }
        t
    });
    // Gone from the answering node's metadata too before this command returns.
    let deadline = Instant::now() + crate::kafka::RETRY_FOR;
    let deleted: Vec<String> = rows.iter().filter(|r| r.error.is_none()).map(|r| r.name.clone()).collect();
    while Instant::now() < deadline && deleted.iter().any(|n| c.topic(n).is_ok()) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let failed: Vec<&Row> = rows.iter().filter(|r| r.error.is_some()).collect();
    if let Some(f) = failed.first() {
        return Err(CliError::failed(format!("deleting topic {}: {}", f.name, f.error.clone().unwrap_or_default())));
    }
    Ok(())
}

#[derive(Serialize)]
struct Produced {
    partition: i32,
    records: usize,
    base_offset: i64,
}

const BATCH_RECORDS: usize = 500;

#[allow(clippy::too_many_arguments)]
fn produce(
    cli: &Cli,
    name: &str,
    partition: Option<i32>,
    key_delimiter: Option<&str>,
    headers: &[(String, String)],
    acks: &str,
    compression: &str,
) -> Result<()> {
    let mut c = cli.kafka()?;
    let leaders = c.leaders(name)?;
    let n = i32::try_from(leaders.len()).unwrap_or(0);
    if n == 0 {
        return Err(CliError::failed(format!("topic {name} has no partitions")));
    }
    if let Some(p) = partition {
        if !(0..n).contains(&p) {
            return Err(CliError::usage(format!("topic {name} has partitions 0..{}, not {p}", n - 1)));
        }
    }
    let acks: i16 = match acks {
        "all" | "-1" => -1,
        "1" => 1,
        _ => 0,
    };
    let compression = match compression {
        "gzip" => Compression::Gzip,
        "snappy" => Compression::Snappy,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        _ => Compression::None,
    };
    let mut pending: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
    let mut results: BTreeMap<i32, Produced> = BTreeMap::new();
    let mut next = 0i32;
    let stdin = std::io::stdin();
    let headers: Vec<(String, String)> = headers.to_vec();
    let flush = |c: &mut Client, p: i32, records: Vec<Record>, results: &mut BTreeMap<i32, Produced>| -> Result<()> {
        let count = records.len();
        let base = send_batch(c, name, p, leaders[p as usize].1, records, acks, compression, cli.wait())?;
        let e = results.entry(p).or_insert(Produced { partition: p, records: 0, base_offset: base });
        e.records += count;
        Ok(())
    };
    for line in stdin.lock().lines() {
        let line = line?;
        let (key, value) = match key_delimiter.and_then(|d| line.split_once(d)) {
            Some((k, v)) => (Some(Bytes::from(k.to_string())), Bytes::from(v.to_string())),
            None => (None, Bytes::from(line)),
        };
        let p = match (partition, &key) {
            (Some(p), _) => p,
            (None, Some(k)) => fjord_storage::partitioner::partition_for_key(k, n),
            (None, None) => {
                next = (next + 1) % n;
                next
            }
        };
        let mut h = indexmap_headers(&headers);
        let record = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: now_ms(),
            key,
            value: Some(value),
            headers: std::mem::take(&mut h),
        };
        let batch = pending.entry(p).or_default();
        batch.push(record);
        if batch.len() >= BATCH_RECORDS {
            let records = std::mem::take(batch);
            flush(&mut c, p, records, &mut results)?;
        }
    }
    for (p, records) in std::mem::take(&mut pending) {
        if !records.is_empty() {
            flush(&mut c, p, records, &mut results)?;
        }
    }
    let rows: Vec<Produced> = results.into_values().collect();
    emit(cli.format, &rows, |rows| {
        let mut t = Table::new(&["PARTITION", "RECORDS", "FIRST OFFSET"]);
        for r in rows {
            t.row(vec![r.partition.to_string(), r.records.to_string(), r.base_offset.to_string()]);
        }
        t
    });
    Ok(())
}

fn indexmap_headers(
    headers: &[(String, String)],
) -> indexmap::IndexMap<kafka_protocol::protocol::StrBytes, Option<Bytes>> {
    headers.iter().map(|(k, v)| (s(k), Some(Bytes::from(v.clone())))).collect()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Produces `records` to `name`-`p` through its leader; the base offset it got (-1 with acks=0).
#[allow(clippy::too_many_arguments)]
fn send_batch(
    c: &mut Client,
    name: &str,
    p: i32,
    leader: i32,
    mut records: Vec<Record>,
    acks: i16,
    compression: Compression,
    wait: Duration,
) -> Result<i64> {
    // Offsets within the batch: the broker assigns the real ones.
    for (i, r) in records.iter_mut().enumerate() {
        r.offset = i as i64;
    }
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, &records, &RecordEncodeOptions { version: 2, compression })
        .map_err(|e| CliError::failed(format!("encoding records: {e}")))?;
    let batch = buf.freeze();
    let deadline = Instant::now() + crate::kafka::RETRY_FOR;
    let mut leader = leader;
    loop {
        let mut pd = produce_request::PartitionProduceData::default();
        pd.index = p;
        pd.records = Some(batch.clone());
        let mut td = produce_request::TopicProduceData::default();
        td.name = TopicName(s(name));
        td.partition_data = vec![pd];
        let mut req = ProduceRequest::default();
        req.acks = acks;
        req.timeout_ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        req.topic_data = vec![td];
        if acks == 0 {
            // No response comes: the request is written and done.
            return c.send_only(leader, ApiKey::Produce, 9, &req).map(|_| -1);
        }
        let r: ProduceResponse = c.to(leader, ApiKey::Produce, 9, &req)?;
        let pr = &r.responses[0].partition_responses[0];
        if pr.error_code == 0 {
            return Ok(pr.base_offset);
        }
        let retriable =
            kafka_protocol::error::ResponseError::try_from_code(pr.error_code).is_some_and(|e| e.is_retriable());
        if !retriable || Instant::now() >= deadline {
            return Err(refusal(&format!("producing to {name}-{p}"), pr.error_code, pr.error_message.as_ref()));
        }
        // A leader change: ask again who leads.
        std::thread::sleep(Duration::from_millis(200));
        leader = c.leaders(name)?.get(p as usize).map_or(-1, |(_, l)| *l);
    }
}

/// Where consuming starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Start {
    Earliest,
    Latest,
    Offset(i64),
    /// N records before the end.
    FromEnd(i64),
    Timestamp(i64),
}

pub fn parse_start(s: &str) -> Result<Start> {
    match s {
        "earliest" | "beginning" | "start" => Ok(Start::Earliest),
        "latest" | "end" => Ok(Start::Latest),
        n => match n.parse::<i64>() {
            Ok(v) if v >= 0 => Ok(Start::Offset(v)),
            Ok(v) => Ok(Start::FromEnd(-v)),
            Err(_) => Err(CliError::usage(format!("--offset {n:?} is not earliest, latest, an offset or -N"))),
        },
    }
}

pub struct ConsumeOpts {
    pub partitions: Vec<i32>,
    pub start: Start,
    pub num: Option<u64>,
    pub exit: bool,
    pub format: String,
    pub read_committed: bool,
    pub group: Option<String>,
}

/// The offset each partition starts at.
pub fn start_offsets(c: &mut Client, topic: &str, partitions: &[i32], start: Start) -> Result<HashMap<i32, i64>> {
    Ok(match start {
        Start::Earliest => c.offsets(topic, partitions, -2)?,
        Start::Latest => c.offsets(topic, partitions, -1)?,
        Start::Offset(o) => partitions.iter().map(|p| (*p, o)).collect(),
        Start::FromEnd(n) => {
            let first = c.offsets(topic, partitions, -2)?;
            let end = c.offsets(topic, partitions, -1)?;
            end.into_iter().map(|(p, end)| (p, (end - n).max(first.get(&p).copied().unwrap_or(0)))).collect()
        }
        Start::Timestamp(ts) => {
            let at = c.offsets(topic, partitions, ts)?;
            let end = c.offsets(topic, partitions, -1)?;
            // No record at or after the time: start at the end.
            at.into_iter().map(|(p, o)| (p, if o < 0 { end.get(&p).copied().unwrap_or(o) } else { o })).collect()
        }
    })
}

/// A fetched record, as the format string sees it.
pub struct Fetched {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Renders `r` with a kcat-style format string.
pub fn render(format: &str, r: &Fetched) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chars = format.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '%' => match chars.next() {
                Some('t') => out.extend_from_slice(r.topic.as_bytes()),
                Some('p') => out.extend_from_slice(r.partition.to_string().as_bytes()),
                Some('o') => out.extend_from_slice(r.offset.to_string().as_bytes()),
                Some('T') => out.extend_from_slice(r.timestamp.to_string().as_bytes()),
                Some('k') => out.extend_from_slice(r.key.as_deref().unwrap_or_default()),
                Some('s') => out.extend_from_slice(r.value.as_deref().unwrap_or_default()),
                Some('K') => {
                    out.extend_from_slice(r.key.as_ref().map_or(-1, |k| k.len() as i64).to_string().as_bytes())
                }
                Some('S') => {
                    out.extend_from_slice(r.value.as_ref().map_or(-1, |v| v.len() as i64).to_string().as_bytes())
                }
                Some('h') => {
                    let hs: Vec<String> = r
                        .headers
                        .iter()
                        .map(|(k, v)| format!("{k}={}", v.as_deref().map(String::from_utf8_lossy).unwrap_or_default()))
                        .collect();
                    out.extend_from_slice(hs.join(",").as_bytes());
                }
                Some('%') => out.push(b'%'),
                Some(other) => {
                    out.push(b'%');
                    out.extend_from_slice(other.to_string().as_bytes());
                }
                None => out.push(b'%'),
            },
            '\\' => match chars.next() {
                Some('n') => out.push(b'\n'),
                Some('t') => out.push(b'\t'),
                Some('r') => out.push(b'\r'),
                Some('\\') => out.push(b'\\'),
                Some(other) => {
                    out.push(b'\\');
                    out.extend_from_slice(other.to_string().as_bytes());
                }
                None => out.push(b'\\'),
            },
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out
}

/// The record as a JSON object (`--format json` prints one per line).
pub fn record_json(r: &Fetched) -> serde_json::Value {
    let text = |b: &Option<Bytes>| b.as_deref().map(|b| String::from_utf8_lossy(b).into_owned());
    serde_json::json!({
        "topic": r.topic,
        "partition": r.partition,
        "offset": r.offset,
        "timestamp": r.timestamp,
        "key": text(&r.key),
        "value": text(&r.value),
        "headers": r.headers.iter().map(|(k, v)| (k.clone(), text(v))).collect::<BTreeMap<_, _>>(),
    })
}

/// What one Fetch brought: the records, and for each partition the offset after its last
/// whole batch (control batches, whose records are not shown, move it too).
pub struct Fetch {
    pub records: Vec<Fetched>,
    pub next: HashMap<i32, i64>,
    /// A partition answered with a retriable error (its leader moved): look the leaders up again.
    pub retry: bool,
}

/// One Fetch of `partitions` (partition → next offset) from `leader`: the records at or past
/// each partition's offset, control batches skipped.
pub fn fetch(
    c: &mut Client,
    topic: &str,
    leader: i32,
    partitions: &BTreeMap<i32, i64>,
    read_committed: bool,
    max_wait_ms: i32,
) -> Result<Fetch> {
    let mut t = fetch_request::FetchTopic::default();
    t.topic = TopicName(s(topic));
    t.partitions = partitions
        .iter()
        .map(|(p, o)| {
            let mut fp = fetch_request::FetchPartition::default();
            fp.partition = *p;
            fp.fetch_offset = *o;
            fp.partition_max_bytes = 1 << 20;
            fp.current_leader_epoch = -1;
            fp.log_start_offset = -1;
            fp.last_fetched_epoch = -1;
            fp
        })
        .collect();
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(-1);
    req.max_wait_ms = max_wait_ms;
    req.min_bytes = 1;
    req.max_bytes = 8 << 20;
    req.isolation_level = i8::from(read_committed);
    req.session_epoch = -1;
    req.topics = vec![t];
    let r: FetchResponse = c.to(leader, ApiKey::Fetch, 12, &req)?;
    if r.error_code != 0 {
        return Err(refusal(&format!("fetching {topic}"), r.error_code, None));
    }
    let mut out = Vec::new();
    let mut next = HashMap::new();
    let mut retry = false;
    for tr in r.responses {
        for pr in tr.partitions {
            let p = pr.partition_index;
            if pr.error_code != 0 {
                let retriable = kafka_protocol::error::ResponseError::try_from_code(pr.error_code)
                    .is_some_and(|e| e.is_retriable());
                if retriable {
                    retry = true;
                    continue;
                }
                return Err(refusal(&format!("fetching {topic}-{p}"), pr.error_code, None));
            }
            let from = partitions.get(&p).copied().unwrap_or(0);
            // read_committed, as Kafka's consumer does it: a producer's aborted transaction runs
            // from the first offset the broker lists for it to its ABORT marker; records of that
            // producer in between are skipped, its later transactions are not.
            let mut aborted: Vec<(i64, i64)> =
                pr.aborted_transactions.iter().flatten().map(|a| (a.first_offset, a.producer_id.0)).collect();
            aborted.sort();
            let mut aborted = aborted.into_iter().peekable();
            let mut aborting: std::collections::HashSet<i64> = std::collections::HashSet::new();
            let Some(mut data) = pr.records else { continue };
            for batch in whole_batches(&mut data) {
                // baseOffset at 0, lastOffsetDelta at 23.
                let base = i64::from_be_bytes(batch[..8].try_into().expect("12 bytes at least"));
                let last = match batch.get(23..27) {
                    Some(delta) => base + i64::from(i32::from_be_bytes(delta.try_into().expect("4 bytes"))),
                    None => base,
                };
                let e = next.entry(p).or_insert(from);
                *e = (*e).max(last + 1);
                while let Some((_, pid)) = aborted.next_if(|(first, _)| *first <= last) {
                    aborting.insert(pid);
                }
                let mut b = batch;
                let Ok(set) = RecordBatchDecoder::decode(&mut b) else {
                    return Err(CliError::failed(format!("{topic}-{p}: a record batch could not be decoded")));
                };
                for rec in set.records {
                    if rec.control {
                        // An ABORT marker (control key type 0) ends its producer's aborted run.
                        if rec.key.as_deref().and_then(|k| k.get(2..4)) == Some(&[0, 0]) {
                            aborting.remove(&rec.producer_id);
                        }
                        continue;
                    }
                    if rec.offset < from || (read_committed && rec.transactional && aborting.contains(&rec.producer_id))
                    {
                        continue;
                    }
                    out.push(Fetched {
                        topic: topic.to_string(),
                        partition: p,
                        offset: rec.offset,
                        timestamp: rec.timestamp,
                        key: rec.key,
                        value: rec.value,
                        headers: rec.headers.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                    });
                }
            }
        }
    }
    Ok(Fetch { records: out, next, retry })
}

/// The whole record batches in `data` (a fetch may end with part of one).
fn whole_batches(data: &mut Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    while data.len() >= 12 {
        let len = i32::from_be_bytes([data[8], data[9], data[10], data[11]]);
        let Ok(len) = usize::try_from(len) else { break };
        if data.len() < 12 + len {
            break;
        }
        out.push(data.split_to(12 + len));
    }
    out
}

/// Writes one consumed record to stdout in the chosen format.
pub fn print_record(cli: &Cli, format: &str, r: &Fetched) {
    let mut stdout = std::io::stdout().lock();
    let _ = match cli.format {
        crate::output::Format::Table => stdout.write_all(&render(format, r)),
        crate::output::Format::Json => writeln!(stdout, "{}", record_json(r)),
        crate::output::Format::Yaml => {
            write!(stdout, "---\n{}", serde_yaml::to_string(&record_json(r)).unwrap_or_default())
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_render_like_kcat() {
        let r = Fetched {
            topic: "t".into(),
            partition: 2,
            offset: 7,
            timestamp: 1000,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"v1")),
            headers: vec![("h".into(), Some(Bytes::from_static(b"x")))],
        };
        assert_eq!(render("%t/%p@%o %k=%s %K %S %T [%h] 100%%\\n", &r), b"t/2@7 k=v1 1 2 1000 [h=x] 100%\n");
    }

    #[test]
    fn start_positions_parse() {
        assert_eq!(parse_start("earliest").unwrap(), Start::Earliest);
        assert_eq!(parse_start("latest").unwrap(), Start::Latest);
        assert_eq!(parse_start("42").unwrap(), Start::Offset(42));
        assert_eq!(parse_start("-5").unwrap(), Start::FromEnd(5));
        assert!(parse_start("soon").is_err());
    }
}

//! Broker configuration. Every key is defined once, in the `broker_config!`
//! table below (name, type, default, doc, validation, how Kafka names it);
//! the TOML file, the command line flags, the environment and the broker's
//! DescribeConfigs view all come from that table. Defaults give a
//! single-node broker on 127.0.0.1:9092.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::topic_config::Kind;

/// When appended data is forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FsyncPolicy {
    /// fsync before answering acks=all produces (group commit); acks=0/1 are
    /// left to the page cache, as Kafka does.
    AcksAll,
    /// fsync before answering every produce, whatever its acks.
    Always,
    /// Never fsync on the produce path; segments are synced when they roll.
    Never,
}

/// How a group-commit round makes the data of many partitions durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FsyncMethod {
    /// One `syncfs` of the data dir's filesystem when a round covers more
    /// than one segment file: one writeback and one device flush for all of
    /// them. It also waits for anything else dirty on that filesystem, so it
    /// suits a filesystem dedicated to the data dir.
    Syncfs,
    /// `fdatasync` of each segment file in the round (the default: its cost
    /// depends on Fjord's writes only).
    Fdatasync,
}

/// One voter of the controller quorum: its node id and the `cluster_listen`
/// address the other nodes reach it at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voter {
    pub id: i32,
    pub host: String,
    pub port: u16,
}

/// `controller_quorum_voters`, in Kafka's `controller.quorum.voters` format
/// `1@host:port,2@host:port,...`. Empty: no quorum, a single-node cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuorumVoters(pub Vec<Voter>);

impl QuorumVoters {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn get(&self, id: i32) -> Option<&Voter> {
        self.0.iter().find(|v| v.id == id)
    }
}

impl std::str::FromStr for QuorumVoters {
    type Err = String;

    /// An empty string is no voters (Kafka's default); otherwise every
    /// comma-separated entry must be `id@host:port` with a distinct id and
    /// address. Spaces may surround an entry, not sit inside one.
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Ok(QuorumVoters::default());
        }
        let mut voters: Vec<Voter> = Vec::new();
        for (i, entry) in s.split(',').map(str::trim).enumerate() {
            let n = i + 1;
            if entry.is_empty() {
                return Err(format!("entry {n} is empty (expected id@host:port)"));
            }
            if entry.contains(char::is_whitespace) {
                return Err(format!("entry {n} {entry:?} contains a space (expected id@host:port)"));
            }
            let (id, addr) = entry.split_once('@').ok_or_else(|| format!("entry {n} {entry:?} is not id@host:port"))?;
            let id: i32 = id
                .parse()
                .ok()
                .filter(|id| *id >= 0)
                .ok_or_else(|| format!("entry {n} {entry:?}: node id {id:?} is not an integer >= 0"))?;
            let (host, port) = voter_address(addr).map_err(|e| format!("entry {n} {entry:?}: {e}"))?;
            let voter = Voter { id, host, port };
            if voters.iter().any(|v| v.id == id) {
                return Err(format!("node id {id} is listed twice"));
            }
            if voters.iter().any(|v| v.host == voter.host && v.port == voter.port) {
                return Err(format!("address {addr} is listed twice"));
            }
            voters.push(voter);
        }
        Ok(QuorumVoters(voters))
    }
}

/// The `host:port` of a voter, an address the other nodes dial: a host
/// name or IPv4 address, or an IPv6 address in brackets (`[::1]:9192`,
/// which Kafka requires too: `::1:9192` would be ambiguous); a port 1-65535;
/// not an unspecified address (0.0.0.0, [::]), which no node can dial.
fn voter_address(addr: &str) -> Result<(String, u16), String> {
    let not_host_port = || format!("{addr:?} is not host:port (port 1-65535)");
    let (host, port) = addr.rsplit_once(':').ok_or_else(not_host_port)?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(not_host_port)?;
    let ip = if let Some(inner) = host.strip_prefix('[') {
        let v6: std::net::Ipv6Addr = inner
            .strip_suffix(']')
            .and_then(|h| h.parse().ok())
            .ok_or_else(|| format!("{addr:?}: {host} is not an IPv6 address in brackets"))?;
        Some(std::net::IpAddr::V6(v6))
    } else {
        if host.is_empty() {
            return Err(not_host_port());
        }
        if host.contains(':') {
            return Err(format!("{addr:?}: an IPv6 address must be in brackets, as in [::1]:9192"));
        }
        if host.contains(['@', '[', ']']) {
            return Err(format!("{addr:?}: {host:?} is not a host name or address"));
        }
        host.parse::<std::net::Ipv4Addr>().ok().map(std::net::IpAddr::V4)
    };
    if ip.is_some_and(|ip| ip.is_unspecified()) {
        return Err(format!("{addr:?}: {host} is not an address other nodes can reach"));
    }
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_string(), port))
}

/// Whether two `host:port` addresses are the same: the same text (host
/// names compared without case), or IP literals for the same socket
/// address (`[::1]:1` and `[0:0::1]:1`).
fn same_address(a: (&str, u16), b: (&str, u16)) -> bool {
    let ip = |h: &str| h.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().ok();
    a.1 == b.1 && (a.0.eq_ignore_ascii_case(b.0) || matches!((ip(a.0), ip(b.0)), (Some(x), Some(y)) if x == y))
}

impl fmt::Display for QuorumVoters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        for v in &self.0 {
            // An IPv6 address gets its brackets back.
            let host = if v.host.contains(':') { format!("[{}]", v.host) } else { v.host.clone() };
            write!(f, "{sep}{}@{host}:{}", v.id, v.port)?;
            sep = ",";
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for QuorumVoters {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A type a config key may have: how a flag or an environment variable
/// spells a value, and how the value is shown (`None`: unset).
pub trait ConfigValue: Sized {
    fn parse_value(s: &str) -> Result<Self, String>;
    fn show(&self) -> Option<String>;
}

macro_rules! from_str_values {
    ($($t:ty),*) => {$(
        impl ConfigValue for $t {
            fn parse_value(s: &str) -> Result<Self, String> {
                s.trim().parse().map_err(|e| format!("{e}"))
            }
            fn show(&self) -> Option<String> {
                Some(self.to_string())
            }
        }
    )*};
}
from_str_values!(bool, i32, i64, u64, usize, String, QuorumVoters);

impl ConfigValue for PathBuf {
    fn parse_value(s: &str) -> Result<Self, String> {
        Ok(PathBuf::from(s))
    }
    fn show(&self) -> Option<String> {
        Some(self.display().to_string())
    }
}

impl<T: ConfigValue> ConfigValue for Option<T> {
    fn parse_value(s: &str) -> Result<Self, String> {
        T::parse_value(s).map(Some)
    }
    fn show(&self) -> Option<String> {
        self.as_ref().and_then(T::show)
    }
}

macro_rules! enum_values {
    ($($t:ty),*) => {$(
        impl ConfigValue for $t {
            fn parse_value(s: &str) -> Result<Self, String> {
                <$t as clap::ValueEnum>::from_str(s.trim(), false).map_err(|_| {
                    let names: Vec<String> = <$t as clap::ValueEnum>::value_variants()
                        .iter()
                        .filter_map(|v| clap::ValueEnum::to_possible_value(v).map(|p| p.get_name().to_string()))
                        .collect();
                    format!("expected one of {}", names.join(", "))
                })
            }
            fn show(&self) -> Option<String> {
                clap::ValueEnum::to_possible_value(self).map(|p| p.get_name().to_string())
            }
        }
    )*};
}
enum_values!(FsyncPolicy, FsyncMethod);

/// How DescribeConfigs on the broker resource shows a key, by its Kafka
/// name.
#[derive(Debug, Clone, Copy)]
pub enum View {
    /// Not a Kafka config, or one Fjord does not describe.
    None,
    /// A static broker config AlterConfigs may not change.
    ReadOnly(&'static str, Kind),
    /// The static broker default of this topic config.
    TopicDefault(&'static str),
    /// The static value under a dynamic broker config of this name
    /// (`topic_config::DYNAMIC_BROKER_CONFIGS`).
    Dynamic(&'static str),
}

/// One config key of the table, its typed parts reached through functions.
#[derive(Debug)]
pub struct KeyDef {
    /// The TOML key.
    pub name: &'static str,
    /// The command line flag, `name` in kebab case.
    pub flag: &'static str,
    /// The environment variable, `FJORD_` and `name` in capitals.
    pub env: &'static str,
    pub doc: &'static str,
    pub view: View,
    set: fn(&mut BrokerConfig, &str) -> Result<(), String>,
    get: fn(&BrokerConfig) -> Option<String>,
    check: fn(&BrokerConfig) -> Result<(), String>,
}

impl KeyDef {
    /// The key's value in `c` as DescribeConfigs and `--help` show it.
    pub fn value(&self, c: &BrokerConfig) -> Option<String> {
        (self.get)(c)
    }

    pub fn default_value(&self) -> Option<String> {
        (self.get)(&BrokerConfig::default())
    }

    /// The doc comment as one line.
    pub fn doc_line(&self) -> String {
        self.doc.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    fn parse_only(&self, s: &str) -> Result<(), String> {
        (self.set)(&mut BrokerConfig::default(), s)
    }

    /// The broker config name Kafka gives this key, if it has one.
    pub fn kafka_name(&self) -> Option<&'static str> {
        match self.view {
            View::ReadOnly(n, _) | View::Dynamic(n) => Some(n),
            View::TopicDefault(n) => crate::topic_config::def(n).and_then(|d| d.broker_name),
            View::None => None,
        }
    }

    /// The type DescribeConfigs gives the key, if it describes it.
    fn kind(&self) -> Option<Kind> {
        match self.view {
            View::ReadOnly(_, kind) => Some(kind),
            View::TopicDefault(n) => crate::topic_config::def(n).map(|d| d.kind),
            View::Dynamic(n) => {
                crate::topic_config::DYNAMIC_BROKER_CONFIGS.iter().find(|d| d.name == n).map(|d| d.kind)
            }
            View::None => None,
        }
    }
}

/// `node_id` → `node-id`, at compile time (clap wants `&'static str`).
const fn kebab<const N: usize>(name: &str) -> [u8; N] {
    let b = name.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = if b[i] == b'_' { b'-' } else { b[i] };
        i += 1;
    }
    out
}

/// `node_id` → `FJORD_NODE_ID`, at compile time.
const fn env_name<const N: usize>(name: &str) -> [u8; N] {
    let prefix = b"FJORD_";
    let b = name.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = if i < prefix.len() { prefix[i] } else { b[i - prefix.len()].to_ascii_uppercase() };
        i += 1;
    }
    out
}

const fn utf8(b: &'static [u8]) -> &'static str {
    match std::str::from_utf8(b) {
        Ok(s) => s,
        Err(_) => panic!("config key names are ASCII"),
    }
}

/// Declares the keys: the `BrokerConfig` struct (deserialized from TOML),
/// its `Default`, and `KEYS`, the table flags and views are built from.
/// Each entry: doc, `name: Type = default`, then `view` and optionally
/// `check` (a validation of the value alone, whose message follows the key
/// name).
macro_rules! broker_config {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident : $ty:ty = $default:expr, view: $view:expr $(, check: $check:expr)? ;
    )*) => {
        #[derive(Debug, Clone, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct BrokerConfig {
            $( $(#[doc = $doc])* pub $name: $ty, )*
            /// The keys the file, a flag or a variable set, whatever their
            /// value (DescribeConfigs tells a static value from a default by
            /// it, as Kafka does).
            #[serde(skip)]
            pub explicit: BTreeSet<&'static str>,
        }

        impl Default for BrokerConfig {
            fn default() -> Self {
                BrokerConfig { $( $name: $default, )* explicit: BTreeSet::new() }
            }
        }

        /// Every config key, in the order `--help` lists them.
        pub static KEYS: &[KeyDef] = &[$(
            KeyDef {
                name: stringify!($name),
                flag: {
                    const B: [u8; stringify!($name).len()] = kebab(stringify!($name));
                    utf8(&B)
                },
                env: {
                    const B: [u8; stringify!($name).len() + 6] = env_name(stringify!($name));
                    utf8(&B)
                },
                doc: concat!($($doc, "\n"),*),
                view: $view,
                set: |c, s| {
                    c.$name = <$ty as ConfigValue>::parse_value(s)?;
                    Ok(())
                },
                get: |c| ConfigValue::show(&c.$name),
                check: |_c| {
                    $(
                        let check: fn(&$ty) -> Result<(), String> = $check;
                        check(&_c.$name)?;
                    )?
                    Ok(())
                },
            },
        )*];
    };
}

fn at_least(v: i64, min: i64) -> Result<(), String> {
    if v < min {
        Err(format!("must be >= {min}, got {v}"))
    } else {
        Ok(())
    }
}

/// A listener the broker binds: an IP address and port (no host name to resolve).
fn socket_address(v: Option<&str>) -> Result<(), String> {
    match v.map(str::parse::<std::net::SocketAddr>) {
        Some(Err(_)) => {
            Err(format!("must be an IP address and port such as 127.0.0.1:9644, got {:?}", v.unwrap_or("")))
        }
        _ => Ok(()),
    }
}

fn between(v: i64, lo: i64, hi: i64) -> Result<(), String> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(format!("must be {lo}..={hi}, got {v}"))
    }
}

fn host_port(v: &str) -> Result<(), String> {
    match crate::server::split_host_port(v) {
        Some(_) => Ok(()),
        None => Err(format!("must be host:port, got {v:?}")),
    }
}

/// Kafka's replica selectors (`replica.selector.class`), by their class names.
pub const LEADER_SELECTOR: &str = "org.apache.kafka.common.replica.LeaderSelector";
pub const RACK_AWARE_SELECTOR: &str = "org.apache.kafka.common.replica.RackAwareReplicaSelector";

fn optional_host_port(v: &Option<String>) -> Result<(), String> {
    v.as_deref().map_or(Ok(()), host_port)
}

const WEEK_MS: i64 = 7 * 24 * 3600 * 1000;

use View::{Dynamic, ReadOnly, TopicDefault};

broker_config! {
    /// Address to listen on for Kafka clients (host:port; port 0 picks a free one).
    listen: String = "127.0.0.1:9092".into(),
        view: ReadOnly("listeners", Kind::List), check: |v| host_port(v);
    /// host:port clients are told to connect to; defaults to the bound address.
    advertised_listener: Option<String> = None,
        view: ReadOnly("advertised.listeners", Kind::List), check: optional_host_port;
    /// Directory for partition logs and metadata (`log.dirs`).
    data_dir: PathBuf = PathBuf::from("./data"), view: ReadOnly("log.dirs", Kind::String),
        check: |v| if v.as_os_str().is_empty() { Err("must not be empty".into()) } else { Ok(()) };
    /// This node's id (`node.id`): required, and unique, in a cluster.
    node_id: i32 = 0, view: ReadOnly("node.id", Kind::Int), check: |v| at_least((*v).into(), 0);
    /// host:port for node-to-node traffic (Raft, the controller quorum);
    /// required with `controller_quorum_voters`.
    cluster_listen: Option<String> = None, view: View::None, check: optional_host_port;
    /// The controller quorum, `id@host:port,...` (Kafka's
    /// `controller.quorum.voters`), each address a voter's `cluster_listen`
    /// (IPv6 in brackets: `1@[::1]:9192`).
    /// Unset: a single-node cluster.
    controller_quorum_voters: QuorumVoters = QuorumVoters::default(),
        view: ReadOnly("controller.quorum.voters", Kind::List);
    /// This node's rack (`broker.rack`), reported to clients.
    broker_rack: Option<String> = None, view: ReadOnly("broker.rack", Kind::String),
        check: |v| match v {
            Some(r) if r.trim().is_empty() => Err("must not be empty".into()),
            _ => Ok(()),
        };
    /// Replicas of topics created without a replication factor
    /// (`default.replication.factor`): 1, or min(3, voters) with a quorum.
    default_replication_factor: Option<i32> = None,
        view: ReadOnly("default.replication.factor", Kind::Int),
        check: |v| v.map_or(Ok(()), |v| between(v.into(), 1, i16::MAX.into()));
    /// How often a broker heartbeats to the controller (`broker.heartbeat.interval.ms`).
    broker_heartbeat_interval_ms: u64 = 2_000,
        view: ReadOnly("broker.heartbeat.interval.ms", Kind::Int), check: |v| between(*v as i64, 10, 60_000);
    /// Silence after which the controller fences a broker (`broker.session.timeout.ms`): it
    /// leaves Metadata until it heartbeats again.
    broker_session_timeout_ms: u64 = 9_000,
        view: ReadOnly("broker.session.timeout.ms", Kind::Int), check: |v| between(*v as i64, 100, 600_000);
    /// `auto.leader.rebalance.enable`: in a cluster, each partition's leadership moves back to
    /// its preferred replica (the first) once that replica is alive and caught up.
    auto_leader_rebalance_enable: bool = true, view: ReadOnly("auto.leader.rebalance.enable", Kind::Boolean);
    /// `leader.imbalance.check.interval.seconds`: how often leaders check for that.
    leader_imbalance_check_interval_seconds: u64 = 300,
        view: ReadOnly("leader.imbalance.check.interval.seconds", Kind::Long),
        check: |v| between(*v as i64, 1, 86_400);
    /// `replica.selector.class` (KIP-392): how a partition's leader picks the replica a consumer
    /// reads from. Unset, or Kafka's `LeaderSelector`: the leader. Kafka's
    /// `RackAwareReplicaSelector` (or `rack-aware`): an in-sync follower on the consumer's
    /// `client.rack` when the leader is not on it.
    replica_selector_class: Option<String> = None, view: ReadOnly("replica.selector.class", Kind::String),
        check: |v| match v.as_deref().map(str::trim) {
            None | Some("") | Some(LEADER_SELECTOR) | Some(RACK_AWARE_SELECTOR) | Some("leader") | Some("rack-aware") => Ok(()),
            Some(other) => Err(format!(
                "unknown replica selector {other:?}: use {RACK_AWARE_SELECTOR} (or rack-aware), or {LEADER_SELECTOR} (or leader, the default)"
            )),
        };
    /// `min.insync.replicas`: default of the topic config.
    min_insync_replicas: i32 = 1, view: TopicDefault("min.insync.replicas"), check: |v| at_least((*v).into(), 1);
    /// Largest request frame accepted (`socket.request.max.bytes`).
    max_request_bytes: usize = 100 * 1024 * 1024,
        view: ReadOnly("socket.request.max.bytes", Kind::Int),
        check: |v| at_least(*v as i64, 1024);
    /// Bytes all connections together may hold in requests read but not yet
    /// answered (`queued.max.request.bytes`); past it connections stop
    /// reading until responses free some. -1 is unlimited (Kafka's default).
    // Kafka leaves this unbounded, so a burst of large produces can take all
    // the memory of a machine. 512 MiB is a fraction of a broker with a few
    // GiB, and five requests of the largest size still fit at once.
    queued_max_request_bytes: i64 = 512 * 1024 * 1024,
        view: ReadOnly("queued.max.request.bytes", Kind::Long);
    /// `auto.create.topics.enable`
    auto_create_topics: bool = true, view: ReadOnly("auto.create.topics.enable", Kind::Boolean);
    /// `num.partitions`: partitions of auto-created topics.
    num_partitions: i32 = 1, view: ReadOnly("num.partitions", Kind::Int), check: |v| at_least((*v).into(), 1);
    /// `log.segment.bytes`
    log_segment_bytes: u64 = 1 << 30, view: TopicDefault("segment.bytes");
    /// `log.roll.ms`
    log_roll_ms: i64 = WEEK_MS, view: TopicDefault("segment.ms");
    /// `log.retention.ms`
    log_retention_ms: i64 = WEEK_MS, view: TopicDefault("retention.ms");
    /// `log.retention.bytes`
    log_retention_bytes: i64 = -1, view: TopicDefault("retention.bytes");
    /// `message.max.bytes`
    message_max_bytes: usize = 1_048_588, view: TopicDefault("max.message.bytes");
    /// `log.index.interval.bytes`
    log_index_interval_bytes: u64 = 4096, view: TopicDefault("index.interval.bytes");
    /// `log.index.size.max.bytes`
    log_index_size_max_bytes: usize = 10 * 1024 * 1024, view: TopicDefault("segment.index.bytes");
    /// `log.message.timestamp.type`: CreateTime or LogAppendTime.
    log_message_timestamp_type: String = "CreateTime".into(), view: TopicDefault("message.timestamp.type");
    /// `compression.type`: `producer` keeps batches as sent; a codec
    /// (`uncompressed`, `gzip`, `snappy`, `lz4`, `zstd`) recompresses the
    /// batches of every topic without its own setting to it.
    compression_type: String = "producer".into(), view: TopicDefault("compression.type");
    /// `log.retention.check.interval.ms`
    log_retention_check_interval_ms: u64 = 300_000,
        view: ReadOnly("log.retention.check.interval.ms", Kind::Long);
    /// `log.cleaner.backoff.ms`: pause between compaction passes.
    log_cleaner_backoff_ms: u64 = 15_000, view: Dynamic("log.cleaner.backoff.ms");
    /// Kafka's `offsets.retention.minutes`, in ms: committed offsets of a
    /// group without members are kept this long.
    offsets_retention_ms: i64 = WEEK_MS, view: View::None;
    /// `offsets.retention.check.interval.ms`
    offsets_retention_check_interval_ms: u64 = 600_000,
        view: ReadOnly("offsets.retention.check.interval.ms", Kind::Long);
    /// `producer.id.expiration.ms`
    producer_id_expiration_ms: i64 = 24 * 3600 * 1000, view: Dynamic("producer.id.expiration.ms"),
        check: |v| at_least(*v, 1);
    /// `group.initial.rebalance.delay.ms`: the first rebalance of an empty
    /// classic group waits this long for more members (extended by each new
    /// one, up to the rebalance timeout); 0 starts it at once.
    group_initial_rebalance_delay_ms: u64 = 3_000,
        view: ReadOnly("group.initial.rebalance.delay.ms", Kind::Int);
    /// `group.consumer.session.timeout.ms` (KIP-848 groups).
    group_consumer_session_timeout_ms: u64 = 45_000,
        view: ReadOnly("group.consumer.session.timeout.ms", Kind::Int);
    /// `group.consumer.heartbeat.interval.ms` (KIP-848 groups).
    group_consumer_heartbeat_interval_ms: i32 = 5_000,
        view: ReadOnly("group.consumer.heartbeat.interval.ms", Kind::Int);
    /// When produced data is fsync'd: acks-all, always or never.
    fsync: FsyncPolicy = FsyncPolicy::AcksAll, view: View::None;
    /// How group commit syncs many partitions at once: fdatasync or syncfs.
    fsync_method: FsyncMethod = FsyncMethod::Fdatasync, view: View::None;
    /// Segment pages the broker may keep mapped in its resident set (pages
    /// faulted in by reads) before it unmaps them; they stay in the page
    /// cache. Bounds RSS whatever the data volume.
    mapped_resident_max_bytes: u64 = 64 << 20, view: View::None;
    /// Synced bytes at the end of each partition's log kept in the page cache; older ones are
    /// dropped from it after each sync, so readers behind by more read from disk. -1 keeps every
    /// page until the kernel evicts it, as Kafka does.
    log_page_cache_bytes: i64 = 64 << 20, view: View::None, check: |v| at_least(*v, -1);
    /// The admin HTTP API (an IP address and port): `/metrics` (Prometheus), `/v1/health`,
    /// `/v1/ready`, the cluster's brokers, topics, partitions and groups as JSON, and
    /// `/v1/openapi.json` describing them; off when unset.
    admin_listen: Option<String> = None, view: View::None,
        // Checked here, not when it binds: by then the Kafka port is open.
        check: |v| socket_address(v.as_deref());
    /// The earlier name of `admin_listen`, still accepted: the admin API serves `/metrics`.
    metrics_listen: Option<String> = None, view: View::None,
        check: |v| socket_address(v.as_deref());
    /// `offsets.topic.num.partitions`: partitions of `__consumer_offsets`,
    /// fixed when the topic is first created.
    offsets_topic_num_partitions: i32 = 50,
        view: ReadOnly("offsets.topic.num.partitions", Kind::Int), check: |v| between((*v).into(), 1, 1000);
    /// `transaction.state.log.num.partitions`: partitions of
    /// `__transaction_state`, fixed when the topic is first created.
    transaction_state_log_num_partitions: i32 = 50,
        view: ReadOnly("transaction.state.log.num.partitions", Kind::Int), check: |v| between((*v).into(), 1, 1000);
    /// `transaction.max.timeout.ms`: the longest transaction timeout a
    /// producer may ask for.
    transaction_max_timeout_ms: i32 = 900_000,
        view: ReadOnly("transaction.max.timeout.ms", Kind::Int), check: |v| at_least((*v).into(), 1);
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`
    transaction_abort_timed_out_transaction_cleanup_interval_ms: u64 = 10_000,
        view: ReadOnly("transaction.abort.timed.out.transaction.cleanup.interval.ms", Kind::Int);
    /// `transactional.id.expiration.ms`: an idle transactional id is
    /// forgotten after this long.
    transactional_id_expiration_ms: i64 = WEEK_MS,
        view: ReadOnly("transactional.id.expiration.ms", Kind::Int), check: |v| at_least(*v, 1);
    /// Tiered storage (KIP-405's `remote.log.storage.system.enable`): closed segments of topics
    /// with `remote.storage.enable=true` are copied to the bucket `s3_bucket`, and reads below
    /// the local log start are served from it. Credentials come from the standard AWS chain
    /// (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE and the profile files, web
    /// identity, container and instance roles), never from Fjord's config.
    remote_storage_enable: bool = false, view: ReadOnly("remote.log.storage.system.enable", Kind::Boolean);
    /// The S3 bucket of tiered storage (required with remote_storage_enable).
    s3_bucket: Option<String> = None, view: View::None,
        check: |v| match v {
            Some(b) if b.trim().is_empty() || b.contains('/') => Err("must be a bucket name".into()),
            _ => Ok(()),
        };
    /// The bucket's region.
    s3_region: String = "us-east-1".into(), view: View::None,
        check: |v| if v.trim().is_empty() { Err("must not be empty".into()) } else { Ok(()) };
    /// An S3-compatible endpoint (http:// or https:// URL, addressed path-style); unset: AWS.
    s3_endpoint: Option<String> = None, view: View::None,
        check: |v| match v.as_deref() {
            Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                Err(format!("{u:?} is not an http:// or https:// URL"))
            }
            _ => Ok(()),
        };
    /// Prefix of every object Fjord writes in the bucket (several clusters may share one).
    s3_prefix: String = String::new(), view: View::None;
    /// Directory of the cache of chunks read from the bucket; unset: `remote-cache` in data_dir.
    remote_cache_dir: Option<PathBuf> = None, view: View::None;
    /// Bytes the chunk cache may hold on disk.
    remote_cache_max_bytes: u64 = 1 << 30, view: View::None, check: |v| at_least(*v as i64, 1 << 20);
    /// `remote.log.manager.task.interval.ms`: how often a partition leader looks for segments
    /// to copy and remote data past retention.
    remote_log_manager_task_interval_ms: u64 = 5_000,
        view: ReadOnly("remote.log.manager.task.interval.ms", Kind::Long), check: |v| between(*v as i64, 10, 3_600_000);
    /// Bytes of closed segments a partition may hold that are not yet in the bucket (the bucket
    /// down or slow); past it produce to the partition is refused with NOT_ENOUGH_REPLICAS,
    /// which clients retry, until copies catch up. Nothing is deleted before it is copied.
    remote_copy_lag_max_bytes: u64 = 10 << 30, view: View::None, check: |v| at_least(*v as i64, 1);
    /// Archive compression of copied segments: `zstd` stores a segment whose batches the
    /// producers sent uncompressed as independently compressed 1 MiB chunks (ranged reads still
    /// work); `none` copies segments byte for byte.
    remote_storage_compression: String = "none".into(), view: View::None,
        check: |v| match v.as_str() {
            "none" | "zstd" => Ok(()),
            other => Err(format!("{other:?} is not none or zstd")),
        };
}

/// The key named `name` (the TOML spelling).
pub fn key(name: &str) -> Option<&'static KeyDef> {
    KEYS.iter().find(|k| k.name == name)
}

/// The key Kafka calls `kafka_name` among broker configs, if Fjord has
/// one: `log.segment.bytes`, not the topic config `segment.bytes` it is
/// the default of.
pub fn key_by_kafka_name(kafka_name: &str) -> Option<&'static KeyDef> {
    KEYS.iter().find(|k| k.kafka_name() == Some(kafka_name))
}

/// `FJORD_*` variables that are not keys: read by the test harness, the
/// failpoints and fjordctl, never a typo.
pub const RESERVED_VARIABLES: &[&str] = &[
    "FJORD_BIN",
    "FJORD_FAILPOINT",
    "FJORD_CACHE_DIR",
    "FJORD_LIBRDKAFKA_DIR",
    // fjordctl's: a shell set up for it may start a broker too.
    "FJORD_BROKERS",
    "FJORD_ADMIN_URL",
    "FJORD_PROFILE",
];

/// The `FJORD_*` names among `names` that are neither a key's variable
/// nor reserved: most likely a misspelt key, which would be silently
/// ignored.
pub fn unknown_variables(names: impl IntoIterator<Item = String>) -> Vec<String> {
    names
        .into_iter()
        .filter(|n| {
            n.starts_with("FJORD_") && !RESERVED_VARIABLES.contains(&n.as_str()) && !KEYS.iter().any(|k| k.env == n)
        })
        .collect()
}

/// Where a key's value on the command line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Flag,
    Variable,
}

/// The command line of `fjord`: `--config` and, for every key, its flag
/// (or environment variable), kept as text until applied over the file.
#[derive(Debug, Default)]
pub struct Args {
    /// TOML config file.
    pub config: Option<PathBuf>,
    /// Keys given on the command line or in the environment, with their
    /// values, already checked to parse.
    values: Vec<(&'static KeyDef, String, Origin)>,
}

/// Why the command line was refused.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    /// A bad flag, or `--help`/`--version` (clap prints and exits on them).
    #[error("{0}")]
    Flag(#[from] clap::Error),
    /// A variable that does not parse: named, since no flag was given.
    #[error("invalid value {value:?} for {variable}: {why}")]
    Variable { variable: &'static str, value: String, why: String },
}

impl Args {
    pub fn command() -> clap::Command {
        let defaults = BrokerConfig::default();
        let mut cmd = clap::Command::new("fjord")
            .version(env!("CARGO_PKG_VERSION"))
            .about("Fjord: a Kafka-compatible streaming broker")
            .next_line_help(true)
            .after_help(
                "Every flag overrides the same key of the config file; FJORD_<KEY> variables sit between them \
                 (an empty variable counts as unset).",
            )
            .arg(
                clap::Arg::new("config")
                    .long("config")
                    .short('c')
                    .value_name("FILE")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help("TOML config file (keys as the flags, in snake case: listen, data_dir, ...)"),
            );
        for k in KEYS {
            let default = match k.value(&defaults) {
                Some(v) if v.is_empty() => String::new(),
                Some(v) => format!(" [default: {v}]"),
                None => String::new(),
            };
            // The variables are read by `from_matches`, not clap: clap would
            // take an empty one as an empty value, and name the flag in the
            // error of a bad one.
            cmd = cmd.arg(
                clap::Arg::new(k.name)
                    .long(k.flag)
                    .value_name(&k.env["FJORD_".len()..])
                    .allow_negative_numbers(true)
                    .help(format!("{} [env: {}]{default}", k.doc_line(), k.env))
                    .value_parser(move |s: &str| k.parse_only(s).map(|()| s.to_string())),
            );
        }
        cmd
    }

    /// The flags of `m`, then the variables `env` gives for keys without a
    /// flag (empty ones are unset, as docker-compose's `${X:-}` leaves them).
    fn from_matches(mut m: clap::ArgMatches, env: impl Fn(&str) -> Option<OsString>) -> Result<Args, ArgsError> {
        let config = m.remove_one::<PathBuf>("config");
        let mut values = Vec::new();
        for k in KEYS {
            if let Some(v) = m.remove_one::<String>(k.name) {
                values.push((k, v, Origin::Flag));
                continue;
            }
            let Some(raw) = env(k.env).filter(|v| !v.is_empty()) else { continue };
            let bad = |value: String, why: String| ArgsError::Variable { variable: k.env, value, why };
            let v = raw.into_string().map_err(|raw| bad(raw.to_string_lossy().into(), "not UTF-8".into()))?;
            k.parse_only(&v).map_err(|why| bad(v.clone(), why))?;
            values.push((k, v, Origin::Variable));
        }
        Ok(Args { config, values })
    }

    /// The process's arguments and `FJORD_*` variables; a bad one exits
    /// with a message naming it.
    pub fn parse() -> Args {
        match Self::from_matches(Self::command().get_matches(), |name| std::env::var_os(name)) {
            Ok(args) => args,
            Err(e) => {
                eprintln!("fjord: {e}");
                std::process::exit(2);
            }
        }
    }

    /// The given arguments with the variables `env` gives.
    pub fn try_parse_with_env<I, T>(args: I, env: impl Fn(&str) -> Option<OsString>) -> Result<Args, ArgsError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Self::from_matches(Self::command().try_get_matches_from(args)?, env)
    }

    /// The given arguments alone: the process's environment is not read
    /// (a developer's FJORD_* variables stay out of tests).
    pub fn try_parse_from<I, T>(args: I) -> Result<Args, ArgsError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Self::try_parse_with_env(args, |_| None)
    }

    /// As `try_parse_from`; a bad argument panics.
    #[cfg(test)]
    pub fn parse_from<I, T>(args: I) -> Args
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Self::try_parse_from(args).unwrap_or_else(|e| panic!("{e}"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl BrokerConfig {
    /// Whether partition leaders send consumers to an in-sync follower on their rack (KIP-392).
    pub fn rack_aware_reads(&self) -> bool {
        matches!(self.replica_selector_class.as_deref().map(str::trim), Some(RACK_AWARE_SELECTOR) | Some("rack-aware"))
    }

    pub fn from_file(path: &Path) -> Result<BrokerConfig, ConfigError> {
        Ok(Self::read_file(path)?.0)
    }

    /// The file's config and the keys it sets.
    fn read_file(path: &Path) -> Result<(BrokerConfig, BTreeSet<String>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let parse_err = |e| ConfigError::Parse { path: path.into(), source: Box::new(e) };
        let config = toml::from_str(&text).map_err(parse_err)?;
        let table: toml::Table = toml::from_str(&text).map_err(parse_err)?;
        Ok((config, table.keys().cloned().collect()))
    }

    pub fn from_args(args: Args) -> Result<BrokerConfig, ConfigError> {
        let (mut c, mut given) = match &args.config {
            Some(p) => BrokerConfig::read_file(p)?,
            None => (BrokerConfig::default(), BTreeSet::new()),
        };
        for (k, v, origin) in &args.values {
            // A value from a variable names it: nothing on the command line does.
            let from = if *origin == Origin::Variable { format!("{}: ", k.env) } else { String::new() };
            // Checked when the arguments were parsed; still, no panic.
            (k.set)(&mut c, v).map_err(|e| ConfigError::Invalid(format!("{from}{}: {e}", k.name)))?;
            (k.check)(&c).map_err(|e| ConfigError::Invalid(format!("{from}{} {e}", k.name)))?;
            given.insert(k.name.to_string());
        }
        c.explicit = KEYS.iter().filter(|k| given.contains(k.name)).map(|k| k.name).collect();
        // Two nodes left on the default id would be taken for one.
        if !c.controller_quorum_voters.is_empty() && !given.contains("node_id") {
            return Err(ConfigError::Invalid(
                "node_id must be set when controller_quorum_voters is (each node of a cluster has its own)".into(),
            ));
        }
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        for k in KEYS {
            if let Err(e) = (k.check)(self) {
                return bad(format!("{} {e}", k.name));
            }
            // Described as an INT, so it must be one (Kafka's type).
            if k.kind() == Some(Kind::Int) {
                if let Some(v) = k.value(self).filter(|v| v.parse::<i32>().is_err()) {
                    return bad(format!(
                        "{} must be {}..={} (Kafka's {} is an INT), got {v}",
                        k.name,
                        i32::MIN,
                        i32::MAX,
                        k.kafka_name().unwrap_or(k.name)
                    ));
                }
            }
        }
        if self.queued_max_request_bytes != -1 && self.queued_max_request_bytes < self.max_request_bytes as i64 {
            return bad(format!(
                "queued_max_request_bytes ({}) is below max_request_bytes ({}): a request of the largest accepted \
                 size could never be read; raise it, or set -1 for no limit",
                self.queued_max_request_bytes, self.max_request_bytes
            ));
        }
        // Broker defaults go through the same checks as topic overrides.
        for (name, value) in self.log_defaults() {
            if crate::topic_config::def(name).is_none() {
                continue;
            }
            if let Err(e) = crate::topic_config::validate(name, &value) {
                let key = KEYS.iter().find(|k| matches!(k.view, View::TopicDefault(n) if n == name));
                return bad(match key {
                    Some(k) => format!("{}: {e}", k.name),
                    None => e,
                });
            }
        }
        if let (Some(a), Some(m)) = (&self.admin_listen, &self.metrics_listen) {
            if a != m {
                return bad(format!(
                    "admin_listen {a} and metrics_listen {m} differ: metrics_listen is the earlier name of \
                     admin_listen (which serves /metrics); set only admin_listen"
                ));
            }
        }
        if self.remote_storage_enable && self.s3_bucket.is_none() {
            return bad("remote_storage_enable needs s3_bucket: the bucket segments are copied to".into());
        }
        if !self.controller_quorum_voters.is_empty() && self.cluster_listen.is_none() {
            return bad(format!(
                "cluster_listen must be set when controller_quorum_voters is (node {} needs an address for \
                 node-to-node traffic)",
                self.node_id
            ));
        }
        if let Some(cluster_listen) =
            self.cluster_listen.as_deref().filter(|_| !self.controller_quorum_voters.is_empty())
        {
            self.validate_cluster_listen(cluster_listen)?;
        }
        Ok(())
    }

    /// With a quorum, `cluster_listen` is the address the other voters
    /// dial: a fixed port, not the Kafka listener's, this node's own entry
    /// in the voters and no other node's.
    fn validate_cluster_listen(&self, cluster_listen: &str) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        // Checked by the key's own check before.
        let Some((host, port)) = crate::server::split_host_port(cluster_listen) else { return Ok(()) };
        let me = (host.as_str(), port as u16);
        if port == 0 {
            return bad(format!(
                "cluster_listen {cluster_listen} must have a fixed port when controller_quorum_voters is set \
                 (the other nodes dial it)"
            ));
        }
        // The same address, or the same port with either on every address
        // (0.0.0.0): the second bind would fail.
        let unspecified = |h: &str| h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified());
        let clash = |(h, p): (String, i32)| {
            same_address(me, (&h, p as u16)) || (p as u16 == port as u16 && (unspecified(&h) || unspecified(&host)))
        };
        if crate::server::split_host_port(&self.listen).is_some_and(clash) {
            return bad(format!("cluster_listen {cluster_listen} must differ from listen {}", self.listen));
        }
        for v in &self.controller_quorum_voters.0 {
            let same = same_address(me, (&v.host, v.port));
            if v.id == self.node_id && !same {
                return bad(format!(
                    "cluster_listen {cluster_listen} is not node {}'s address in controller_quorum_voters ({})",
                    v.id,
                    QuorumVoters(vec![v.clone()])
                ));
            }
            if v.id != self.node_id && same {
                return bad(format!(
                    "cluster_listen {cluster_listen} is voter {}'s address in controller_quorum_voters, \
                     not node {}'s",
                    v.id, self.node_id
                ));
            }
        }
        Ok(())
    }

    /// Where the admin HTTP API listens: `admin_listen`, or `metrics_listen` (its earlier name).
    pub fn admin_address(&self) -> Option<&str> {
        self.admin_listen.as_deref().or(self.metrics_listen.as_deref())
    }

    /// `default.replication.factor`: as set, else 1 on a single node and
    /// min(3, voters) with a controller quorum.
    pub fn replication_factor_default(&self) -> i32 {
        self.default_replication_factor.unwrap_or_else(|| (self.controller_quorum_voters.len() as i32).clamp(1, 3))
    }

    /// The value DescribeConfigs shows for a key of the table, where it
    /// differs from the key's own value.
    pub fn described_value(&self, k: &KeyDef) -> Option<String> {
        match k.name {
            "default_replication_factor" => Some(self.replication_factor_default().to_string()),
            _ => k.value(self),
        }
    }

    /// The broker-level defaults of every topic config, by the topic
    /// config's name: Kafka's default unless this file sets the broker
    /// config it comes from.
    pub fn log_defaults(&self) -> Vec<(&'static str, String)> {
        let from_file: Vec<(&'static str, String)> = KEYS
            .iter()
            .filter_map(|k| match k.view {
                View::TopicDefault(name) => k.value(self).map(|v| (name, v)),
                _ => None,
            })
            .collect();
        let mut out: Vec<(&'static str, String)> = crate::topic_config::TOPIC_CONFIGS
            .iter()
            .map(|d| {
                let v = from_file.iter().find(|(n, _)| *n == d.name).map_or(d.default.to_string(), |(_, v)| v.clone());
                (d.name, v)
            })
            .collect();
        // Broker-wide only: not a topic config, but the log applies it.
        out.push(("producer.id.expiration.ms", self.producer_id_expiration_ms.to_string()));
        out.push((crate::topic_config::REMOTE_SYSTEM_ENABLE, self.remote_storage_enable.to_string()));
        out.push((crate::topic_config::LOG_PAGE_CACHE_BYTES, self.log_page_cache_bytes.to_string()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fjord.toml");
        std::fs::write(&p, "listen = \"127.0.0.1:1\"\nnum_partitions = 3\nfsync = \"never\"\n").unwrap();
        let args = Args::parse_from(["fjord", "--config", p.to_str().unwrap(), "--num-partitions", "5"]);
        let c = BrokerConfig::from_args(args).unwrap();
        assert_eq!(c.listen, "127.0.0.1:1");
        assert_eq!(c.num_partitions, 5);
        assert_eq!(c.fsync, FsyncPolicy::Never);
        assert_eq!(c.group_initial_rebalance_delay_ms, 3000, "Kafka's default");
        let args = Args::parse_from(["fjord", "--group-initial-rebalance-delay-ms", "0"]);
        assert_eq!(BrokerConfig::from_args(args).unwrap().group_initial_rebalance_delay_ms, 0);
    }

    #[test]
    fn bad_values_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fjord.toml");
        std::fs::write(&p, "listen = 5\n").unwrap();
        let e = BrokerConfig::from_file(&p).unwrap_err();
        assert!(e.to_string().contains("invalid config file"), "{e}");
        std::fs::write(&p, "no_such_key = 1\n").unwrap();
        assert!(BrokerConfig::from_file(&p).is_err());
        let args = Args::parse_from(["fjord", "--num-partitions", "0"]);
        assert!(BrokerConfig::from_args(args).is_err());
        let args = Args::parse_from(["fjord", "--log-segment-bytes", "10"]);
        assert!(BrokerConfig::from_args(args).is_err());
    }

    #[test]
    fn queued_request_bytes_must_hold_the_largest_request() {
        let args = Args::parse_from(["fjord", "--max-request-bytes", "2048", "--queued-max-request-bytes", "2047"]);
        let e = BrokerConfig::from_args(args).unwrap_err().to_string();
        assert!(e.contains("queued_max_request_bytes (2047) is below max_request_bytes (2048)"), "{e}");
        let args = Args::parse_from(["fjord", "--max-request-bytes", "2048", "--queued-max-request-bytes", "2048"]);
        assert_eq!(BrokerConfig::from_args(args).unwrap().queued_max_request_bytes, 2048);
        let args = Args::parse_from(["fjord", "--queued-max-request-bytes", "-1"]);
        assert_eq!(BrokerConfig::from_args(args).unwrap().queued_max_request_bytes, -1);
        let args = Args::parse_from(["fjord", "--queued-max-request-bytes", "-5"]);
        assert!(BrokerConfig::from_args(args).is_err());
    }

    #[test]
    fn every_key_has_a_derived_flag_and_variable() {
        for k in KEYS {
            assert_eq!(k.flag, k.name.replace('_', "-"), "flag of {}", k.name);
            assert_eq!(k.env, format!("FJORD_{}", k.name.to_uppercase()), "variable of {}", k.name);
            assert!(!k.doc_line().is_empty(), "{} has a doc", k.name);
        }
        let help = Args::command().render_long_help().to_string();
        for k in KEYS {
            assert!(help.contains(&format!("--{} <", k.flag)), "--help lists --{}", k.flag);
        }
    }

    /// Each key's flag takes the key's own default as text and gives it
    /// back: the flag, the parser and the display agree.
    #[test]
    fn every_flag_round_trips_its_default() {
        let mut checked = 0;
        for k in KEYS {
            let Some(v) = k.default_value().filter(|v| !v.is_empty()) else { continue };
            let flag = format!("--{}", k.flag);
            let args = Args::try_parse_from(["fjord", flag.as_str(), v.as_str()])
                .unwrap_or_else(|e| panic!("{flag} {v}: {e}"));
            let c = BrokerConfig::from_args(args).unwrap_or_else(|e| panic!("{flag} {v}: {e}"));
            assert_eq!(k.value(&c), Some(v), "{flag}");
            checked += 1;
        }
        assert!(checked > 30, "only {checked} keys have a default");
        let args = Args::parse_from(["fjord", "--advertised-listener", "h:1", "--metrics-listen", "127.0.0.1:2"]);
        let c = BrokerConfig::from_args(args).unwrap();
        assert_eq!(c.advertised_listener.as_deref(), Some("h:1"));
        assert_eq!(c.metrics_listen.as_deref(), Some("127.0.0.1:2"));
    }

    #[test]
    fn a_bad_flag_value_names_the_flag() {
        let e = Args::try_parse_from(["fjord", "--num-partitions", "x"]).unwrap_err().to_string();
        assert!(e.contains("--num-partitions"), "{e}");
        let e = Args::try_parse_from(["fjord", "--fsync", "sometimes"]).unwrap_err().to_string();
        assert!(e.contains("--fsync") && e.contains("acks-all, always, never"), "{e}");
        let e = Args::try_parse_from(["fjord", "--no-such-flag", "1"]).unwrap_err().to_string();
        assert!(e.contains("--no-such-flag"), "{e}");
        let args = Args::parse_from(["fjord", "--num-partitions", "0"]);
        let e = BrokerConfig::from_args(args).unwrap_err().to_string();
        assert_eq!(e, "invalid config: num_partitions must be >= 1, got 0");
        let args = Args::parse_from(["fjord", "--log-segment-bytes", "10"]);
        let e = BrokerConfig::from_args(args).unwrap_err().to_string();
        assert!(e.starts_with("invalid config: log_segment_bytes: "), "{e}");
    }

    /// The described views name configs Kafka has, each once.
    #[test]
    fn views_name_kafka_configs_once() {
        use crate::topic_config::{broker_key, BrokerKey, DYNAMIC_BROKER_CONFIGS, READ_ONLY_BROKER_CONFIGS};
        let mut seen = BTreeSet::new();
        for k in KEYS {
            match k.view {
                View::None => continue,
                View::TopicDefault(n) => assert!(crate::topic_config::def(n).is_some(), "{n}"),
                View::Dynamic(n) => assert!(DYNAMIC_BROKER_CONFIGS.iter().any(|d| d.name == n), "{n}"),
                View::ReadOnly(n, _) => {
                    assert!(matches!(broker_key(n), BrokerKey::ReadOnly), "{n} is read-only");
                    assert!(!READ_ONLY_BROKER_CONFIGS.contains(&n), "{n} is listed twice");
                    // Nor may a writable list name it: it would be both.
                    assert!(!DYNAMIC_BROKER_CONFIGS.iter().any(|d| d.name == n), "{n} is also dynamic");
                    let topic_default = crate::topic_config::TOPIC_CONFIGS.iter().find(|d| d.broker_name == Some(n));
                    assert!(topic_default.is_none(), "{n} is also a topic default");
                }
            }
            let n = k.kafka_name().unwrap_or_else(|| panic!("{} has no Kafka name", k.name));
            assert!(seen.insert(n), "{n} stands for two keys");
            assert_eq!(key_by_kafka_name(n).map(|k| k.name), Some(k.name));
        }
    }

    /// Topic defaults are found by their broker config name, which is the
    /// name a broker resource is described and altered under.
    #[test]
    fn keys_are_found_by_their_broker_config_name() {
        assert_eq!(key_by_kafka_name("log.segment.bytes").map(|k| k.name), Some("log_segment_bytes"));
        assert_eq!(key_by_kafka_name("log.retention.ms").map(|k| k.name), Some("log_retention_ms"));
        assert!(key_by_kafka_name("segment.bytes").is_none(), "a topic config name is not a broker config name");
        assert_eq!(key_by_kafka_name("num.partitions").map(|k| k.name), Some("num_partitions"));
    }

    fn voters(s: &str) -> Result<QuorumVoters, String> {
        s.parse()
    }

    #[test]
    fn quorum_voters_parse_kafkas_format() {
        let v = voters("1@127.0.0.1:9192, 2@node-2.example:9193,3@[::1]:9194").unwrap();
        let got: Vec<(i32, &str, u16)> = v.0.iter().map(|v| (v.id, v.host.as_str(), v.port)).collect();
        assert_eq!(got, vec![(1, "127.0.0.1", 9192), (2, "node-2.example", 9193), (3, "::1", 9194)]);
        assert_eq!(v.to_string(), "1@127.0.0.1:9192,2@node-2.example:9193,3@[::1]:9194");
        assert_eq!(voters(&v.to_string()), Ok(v.clone()));
        assert_eq!(v.get(2).map(|v| v.port), Some(9193));
        assert!(v.get(4).is_none());
        assert!(voters("").unwrap().is_empty(), "Kafka's default: no voters");
        // Spaces around entries are trimmed.
        let v = voters(" 1@h:1 ,\t2@[fe80::1]:2 ").unwrap();
        assert_eq!((v.0[0].host.as_str(), v.0[1].host.as_str(), v.0[1].port), ("h", "fe80::1", 2));
        assert_eq!(voters("0@h:1").unwrap().0[0].id, 0);
    }

    #[test]
    fn quorum_voters_refuse_bad_entries() {
        for (input, says) in [
            ("1@a:1,,2@b:2", "entry 2 is empty"),
            ("1@a:1,", "entry 2 is empty"),
            (",1@a:1", "entry 1 is empty"),
            ("1-a:1", "is not id@host:port"),
            ("x@a:1", "node id \"x\" is not an integer >= 0"),
            ("-1@a:1", "node id \"-1\" is not an integer >= 0"),
            ("99999999999@a:1", "is not an integer >= 0"),
            ("1@a", "\"a\" is not host:port"),
            ("1@:9", "is not host:port"),
            ("1@a:0", "is not host:port"),
            ("1@a:65536", "is not host:port"),
            ("1@a:port", "is not host:port"),
            ("1@a:1,1@b:2", "node id 1 is listed twice"),
            ("1@a:1,2@a:1", "address a:1 is listed twice"),
            ("1@::1", "an IPv6 address must be in brackets"),
            ("1@fe80::1", "an IPv6 address must be in brackets"),
            ("1@::1:9192", "an IPv6 address must be in brackets"),
            ("1@[h]:1", "[h] is not an IPv6 address in brackets"),
            ("1@[::1:1", "is not an IPv6 address in brackets"),
            ("1 @ h:1", "entry 1 \"1 @ h:1\" contains a space"),
            ("1@ h:1", "contains a space"),
            ("1@h h:1", "contains a space"),
            ("1@@h:1", "\"@h\" is not a host name or address"),
            ("1@0.0.0.0:9192", "0.0.0.0 is not an address other nodes can reach"),
            ("1@[::]:9192", "[::] is not an address other nodes can reach"),
            ("1@h:0", "is not host:port (port 1-65535)"),
        ] {
            let e = voters(input).expect_err(input);
            assert!(e.contains(says), "{input:?}: {e:?} does not say {says:?}");
        }
    }

    fn config(args: &[&str]) -> Result<BrokerConfig, String> {
        let args =
            Args::try_parse_from(std::iter::once("fjord").chain(args.iter().copied())).map_err(|e| e.to_string())?;
        BrokerConfig::from_args(args).map_err(|e| e.to_string())
    }

    const VOTERS: &str = "1@127.0.0.1:9192,2@127.0.0.1:9193,3@127.0.0.1:9194";

    #[test]
    fn cluster_keys_parse_and_validate() {
        let c = config(&[
            "--node-id",
            "1",
            "--cluster-listen",
            "127.0.0.1:9192",
            "--controller-quorum-voters",
            VOTERS,
            "--broker-rack",
            "r1",
        ])
        .unwrap();
        assert_eq!((c.node_id, c.broker_rack.as_deref()), (1, Some("r1")));
        assert_eq!(c.controller_quorum_voters.len(), 3);
        assert_eq!(c.replication_factor_default(), 3, "min(3, voters)");
        // A node that is not a voter joins as a broker.
        let c = config(&["--node-id", "7", "--cluster-listen", "h:1", "--controller-quorum-voters", VOTERS]).unwrap();
        assert!(c.controller_quorum_voters.get(7).is_none());

        let e = config(&["--cluster-listen", "h:1", "--controller-quorum-voters", VOTERS]).unwrap_err();
        assert!(e.contains("node_id must be set when controller_quorum_voters is"), "{e}");
        let e = config(&["--node-id", "1", "--controller-quorum-voters", VOTERS]).unwrap_err();
        assert!(e.contains("cluster_listen must be set"), "{e}");
        let e = config(&["--node-id", "1", "--cluster-listen", "h:1", "--controller-quorum-voters", "1@h:1,1@h:2"])
            .unwrap_err();
        assert!(e.contains("--controller-quorum-voters") && e.contains("node id 1 is listed twice"), "{e}");
        let e = config(&["--node-id", "-1"]).unwrap_err();
        assert_eq!(e, "invalid config: node_id must be >= 0, got -1");
        let e = config(&["--cluster-listen", "nowhere"]).unwrap_err();
        assert!(e.contains("cluster_listen must be host:port"), "{e}");
        let e = config(&["--listen", "9092"]).unwrap_err();
        assert!(e.contains("listen must be host:port"), "{e}");
        let e = config(&["--broker-rack", " "]).unwrap_err();
        assert!(e.contains("broker_rack must not be empty"), "{e}");
        let e = config(&["--min-insync-replicas", "0"]).unwrap_err();
        assert_eq!(e, "invalid config: min_insync_replicas must be >= 1, got 0");
        let e = config(&["--default-replication-factor", "0"]).unwrap_err();
        assert!(e.contains("default_replication_factor must be 1..=32767, got 0"), "{e}");
    }

    /// The command line issue 11 gives for a node of a cluster.
    #[test]
    fn the_documented_cluster_command_line_parses() {
        let line = "--node-id 1 --listen 127.0.0.1:9092 --advertised-listener 127.0.0.1:9092 \
                    --cluster-listen 127.0.0.1:9192 --controller-quorum-voters \
                    1@127.0.0.1:9192,2@127.0.0.1:9193,3@127.0.0.1:9194 --data-dir n1 --broker-rack r1";
        let c = config(&line.split_whitespace().collect::<Vec<_>>()).unwrap();
        assert_eq!((c.node_id, c.data_dir.as_path(), c.broker_rack.as_deref()), (1, Path::new("n1"), Some("r1")));
        assert_eq!(c.advertised_listener.as_deref(), Some("127.0.0.1:9092"));
        let me = c.controller_quorum_voters.get(c.node_id).expect("node 1 is a voter");
        assert_eq!((me.host.as_str(), me.port), ("127.0.0.1", 9192));
        assert_eq!(c.cluster_listen.as_deref(), Some("127.0.0.1:9192"));
    }

    #[test]
    fn replication_factor_and_min_insync_defaults() {
        let single = config(&[]).unwrap();
        assert_eq!((single.node_id, single.replication_factor_default()), (0, 1), "today's single node");
        let two = config(&["--node-id", "1", "--cluster-listen", "h:1", "--controller-quorum-voters", "1@h:1,2@h:2"]);
        assert_eq!(two.unwrap().replication_factor_default(), 2);
        let five = "1@h:1,2@h:2,3@h:3,4@h:4,5@h:5";
        let c = config(&["--node-id", "1", "--cluster-listen", "h:1", "--controller-quorum-voters", five]).unwrap();
        assert_eq!(c.replication_factor_default(), 3);
        assert_eq!(config(&["--default-replication-factor", "2"]).unwrap().replication_factor_default(), 2);
        let c = config(&["--min-insync-replicas", "2"]).unwrap();
        let defaults = c.log_defaults();
        assert!(defaults.contains(&("min.insync.replicas", "2".to_string())), "the topic default follows the key");
    }

    #[test]
    fn cluster_keys_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fjord.toml");
        let text = format!(
            "node_id = 2\ncluster_listen = \"127.0.0.1:9193\"\ncontroller_quorum_voters = \"{VOTERS}\"\n\
             broker_rack = \"r2\"\ndefault_replication_factor = 2\nmin_insync_replicas = 2\n"
        );
        std::fs::write(&p, text).unwrap();
        let c = config(&["--config", p.to_str().unwrap()]).unwrap();
        assert_eq!(c.controller_quorum_voters.get(2).map(|v| v.port), Some(9193));
        assert_eq!(
            (c.broker_rack.as_deref(), c.replication_factor_default(), c.min_insync_replicas),
            (Some("r2"), 2, 2)
        );
        std::fs::write(&p, "controller_quorum_voters = \"1@h:1,x@h:2\"\n").unwrap();
        let e = config(&["--config", p.to_str().unwrap()]).unwrap_err();
        assert!(e.contains("invalid config file") && e.contains("node id \"x\""), "{e}");
    }

    fn env_config(args: &[&str], vars: &[(&str, &str)]) -> Result<BrokerConfig, String> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let env = |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| OsString::from(v));
        let args = Args::try_parse_with_env(std::iter::once("fjord").chain(args.iter().copied()), env)
            .map_err(|e| e.to_string())?;
        BrokerConfig::from_args(args).map_err(|e| e.to_string())
    }

    /// docker-compose's `FJORD_X: ${X:-}` passes an empty variable for an
    /// unset one: it leaves the key at its default.
    #[test]
    fn an_empty_variable_is_unset() {
        let empty: Vec<(&str, &str)> = KEYS.iter().map(|k| (k.env, "")).collect();
        let c = env_config(&[], &empty).unwrap();
        assert_eq!(c.data_dir, Path::new("./data"));
        assert_eq!((c.node_id, c.advertised_listener.as_deref(), c.broker_rack.as_deref()), (0, None, None));
        assert_eq!(c.metrics_listen, None);
        assert!(c.explicit.is_empty(), "{:?}", c.explicit);
        // A variable with a value applies, and counts as given.
        let c = env_config(&[], &[("FJORD_NODE_ID", "4"), ("FJORD_BROKER_RACK", "r")]).unwrap();
        assert_eq!((c.node_id, c.broker_rack.as_deref()), (4, Some("r")));
        assert!(c.explicit.contains("node_id") && c.explicit.contains("broker_rack"));
    }

    #[test]
    fn a_bad_variable_is_named() {
        let e = env_config(&[], &[("FJORD_NODE_ID", "x")]).unwrap_err();
        assert!(e.starts_with("invalid value \"x\" for FJORD_NODE_ID: "), "{e}");
        assert!(!e.contains("--node-id"), "{e}");
        let e = env_config(&[], &[("FJORD_NODE_ID", "-1")]).unwrap_err();
        assert_eq!(e, "invalid config: FJORD_NODE_ID: node_id must be >= 0, got -1");
        let e = env_config(&[], &[("FJORD_METRICS_LISTEN", "nowhere")]).unwrap_err();
        assert!(e.contains("FJORD_METRICS_LISTEN: metrics_listen must be an IP address and port"), "{e}");
        // The flag wins, and a flag's error names the key as before.
        assert_eq!(env_config(&["--node-id", "2"], &[("FJORD_NODE_ID", "x")]).unwrap().node_id, 2);
    }

    #[test]
    fn data_dir_and_metrics_listen_are_checked_before_start() {
        let e = config(&["--data-dir", ""]).unwrap_err();
        assert_eq!(e, "invalid config: data_dir must not be empty");
        for bad in ["nowhere", "localhost", "127.0.0.1", "127.0.0.1:x", ""] {
            let e = config(&["--metrics-listen", bad]).unwrap_err();
            assert!(e.contains("metrics_listen must be an IP address and port"), "{bad:?}: {e}");
        }
        assert_eq!(config(&["--metrics-listen", "[::1]:0"]).unwrap().metrics_listen.as_deref(), Some("[::1]:0"));
    }

    /// Unit tests build their configs from their arguments alone: a
    /// developer's FJORD_* variables (here FJORD_NUM_PARTITIONS, and a
    /// failpoint that aborts the process where a transaction writes its
    /// markers) change nothing. Runs itself, and a transaction test, in a
    /// child process with those variables set.
    #[test]
    fn unit_tests_ignore_the_shell_environment() {
        const MARK: &str = "FJORD_TEST_CHILD";
        if std::env::var_os(MARK).is_some() {
            assert_eq!(config(&[]).unwrap().num_partitions, 1);
            return;
        }
        let me = "config::tests::unit_tests_ignore_the_shell_environment";
        let txn = "coordinator::txn::tests::commit_writes_markers_and_a_retry_of_the_same_end_succeeds";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", me, txn, "--test-threads", "1"])
            .env(MARK, "1")
            .env("FJORD_NUM_PARTITIONS", "7")
            .env("FJORD_FAILPOINT", "txn-after-first-marker")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("2 passed"), "both tests ran:\n{stdout}");
    }

    /// With a quorum, cluster_listen is this node's entry in the voters
    /// and no other's, with a fixed port, apart from the Kafka listener.
    #[test]
    fn cluster_listen_agrees_with_the_voters() {
        let cluster = |id: &str, listen: &str, voters: &str| {
            config(&["--node-id", id, "--cluster-listen", listen, "--controller-quorum-voters", voters])
        };
        let e = cluster("1", "127.0.0.1:9193", VOTERS).unwrap_err();
        assert!(
            e.contains(
                "cluster_listen 127.0.0.1:9193 is not node 1's address in controller_quorum_voters (1@127.0.0.1:9192)"
            ),
            "{e}"
        );
        let e = cluster("7", "127.0.0.1:9192", VOTERS).unwrap_err();
        assert!(e.contains("cluster_listen 127.0.0.1:9192 is voter 1's address"), "{e}");
        let e = cluster("7", "127.0.0.1:0", VOTERS).unwrap_err();
        assert!(e.contains("cluster_listen 127.0.0.1:0 must have a fixed port"), "{e}");
        let e = config(&[
            "--listen",
            "127.0.0.1:9192",
            "--node-id",
            "1",
            "--cluster-listen",
            "127.0.0.1:9192",
            "--controller-quorum-voters",
            VOTERS,
        ])
        .unwrap_err();
        assert!(e.contains("cluster_listen 127.0.0.1:9192 must differ from listen 127.0.0.1:9192"), "{e}");
        let on_all = ["--listen", "0.0.0.0:9192", "--node-id", "1", "--cluster-listen", "127.0.0.1:9192"];
        let e = config(&[&on_all[..], &["--controller-quorum-voters", VOTERS]].concat()).unwrap_err();
        assert!(e.contains("must differ from listen 0.0.0.0:9192"), "{e}");
        // The same socket address written two ways is the same entry.
        assert!(cluster("1", "[0:0::1]:9192", "1@[::1]:9192,2@h:1").is_ok());
        assert!(cluster("1", "H:1", "1@h:1,2@h:2").is_ok(), "host names compare without case");
        assert!(cluster("2", "[::1]:9192", "1@[0::1]:9192,2@h:1").unwrap_err().contains("is voter 1's address"));
        // Without voters, port 0 is fine (nothing dials it yet).
        assert!(config(&["--cluster-listen", "127.0.0.1:0"]).is_ok());
    }

    /// A key DescribeConfigs calls an INT holds one: a larger value is
    /// refused at start, not described as an INT it is not.
    #[test]
    fn int_keys_are_range_checked() {
        let mut checked = Vec::new();
        for k in KEYS.iter().filter(|k| k.kind() == Some(Kind::Int)) {
            for v in ["2147483648", "-2147483649"] {
                assert!(config(&[&format!("--{}", k.flag), v]).is_err(), "--{} {v} was accepted", k.flag);
            }
            if let Err(e) = config(&[&format!("--{}", k.flag), "2147483647"]) {
                assert!(!e.contains("INT"), "--{} 2147483647: {e}", k.flag);
            }
            checked.push(k.name);
        }
        assert!(checked.contains(&"transactional_id_expiration_ms") && checked.len() > 10, "{checked:?}");
        let e = config(&["--transactional-id-expiration-ms", "2592000000"]).unwrap_err();
        assert!(e.contains("transactional_id_expiration_ms must be -2147483648..=2147483647 (Kafka's transactional.id.expiration.ms is an INT), got 2592000000"), "{e}");
    }

    /// DescribeConfigs tells a static value from a default by whether the
    /// key was given, not by its value.
    #[test]
    fn the_keys_given_are_kept() {
        let c = config(&["--num-partitions", "1"]).unwrap();
        assert_eq!(c.explicit, BTreeSet::from(["num_partitions"]));
        assert!(config(&[]).unwrap().explicit.is_empty());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fjord.toml");
        std::fs::write(&p, "fsync = \"acks-all\"\n").unwrap();
        let c = env_config(&["--config", p.to_str().unwrap()], &[("FJORD_NODE_ID", "0")]).unwrap();
        assert_eq!(c.explicit, BTreeSet::from(["fsync", "node_id"]));
    }

    #[test]
    fn unknown_variables_are_found_and_reserved_ones_are_not_keys() {
        for name in RESERVED_VARIABLES {
            assert!(!KEYS.iter().any(|k| k.env == *name), "{name} is reserved and a key's variable");
            assert!(name.starts_with("FJORD_"));
        }
        let names = ["FJORD_NUM_PARTITONS", "FJORD_NUM_PARTITIONS", "FJORD_FAILPOINT", "PATH", "FJORD_BIN"];
        assert_eq!(unknown_variables(names.map(String::from)), vec!["FJORD_NUM_PARTITONS".to_string()]);
    }
}

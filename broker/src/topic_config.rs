//! Topic configs by their Kafka names (every one Apache Kafka 3.9 accepts):
//! type, default, validation, the broker config each falls back to, whether
//! Fjord applies it, and how they become a `LogConfig`. Also the broker
//! configs AlterConfigs may change at runtime, and those it may not.

use std::collections::BTreeMap;

use fjord_storage::records::{Codec, Compression};
use fjord_storage::{LogConfig, TimestampType};

/// Kafka's ConfigType values as DescribeConfigs reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
    Double = 6,
    List = 7,
}

/// What a value must satisfy beyond its type.
#[derive(Debug, Clone, Copy)]
pub enum Rule {
    Any,
    AtLeast(i64),
    Between(i64, i64),
    /// A number in [0, 1].
    Ratio,
    OneOf(&'static [&'static str]),
    /// A non-empty list of items from the set.
    ListOf(&'static [&'static str]),
    /// gzip's levels: 1–9, or -1 for the library default.
    GzipLevel,
    /// `*`, or `partition:broker` pairs.
    ThrottledReplicas,
    /// A Kafka release / inter-broker protocol version such as `2.8` or `0.10.0-IV1`.
    KafkaVersion,
}

/// Whether Fjord acts on a config or only stores and describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Applied,
    Ignored(&'static str),
}

pub struct ConfigDef {
    pub name: &'static str,
    /// The broker config that supplies the default (None: the topic's own
    /// default only, as for `remote.storage.enable`).
    pub broker_name: Option<&'static str>,
    pub kind: Kind,
    pub default: &'static str,
    pub rule: Rule,
    pub effect: Effect,
    pub doc: &'static str,
}

const LONG_MAX: &str = "9223372036854775807";

macro_rules! def {
    ($name:expr, $broker:expr, $kind:ident, $default:expr, $rule:expr, $effect:expr, $doc:expr) => {
        ConfigDef {
            name: $name,
            broker_name: $broker,
            kind: Kind::$kind,
            default: $default,
            rule: $rule,
            effect: $effect,
            doc: $doc,
        }
    };
}

use Effect::{Applied, Ignored};
use Rule::*;

const NO_TIERING: &str = "Fjord's tiered storage does not act on it yet";
const NO_THROTTLES: &str = "replication throttles are not in Fjord yet";
const RAFT_ELECTIONS: &str = "Fjord replicates with Raft: a replica lacking committed records is never elected";
const ONE_FETCHER: &str = "each Fjord node replicates through one connection per peer";

/// Every topic config of Kafka 3.9, in Kafka's order of documentation, and Fjord's own
/// `leader.preferred.racks`.
pub const TOPIC_CONFIGS: &[ConfigDef] = &[
    def!("cleanup.policy", Some("log.cleanup.policy"), List, "delete", ListOf(&["delete", "compact"]), Applied,
        "delete: closed segments go by retention.ms / retention.bytes; compact: only the newest record of each key is kept."),
    def!("compression.type", Some("compression.type"), String, "producer",
        OneOf(&["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"]), Applied,
        "producer keeps each batch as the producer compressed it; a codec name recompresses every batch that uses another codec when it is produced."),
    def!("compression.gzip.level", Some("compression.gzip.level"), Int, "-1", GzipLevel, Applied,
        "gzip level of batches the broker recompresses (1-9, -1 for the library default)."),
    def!("compression.lz4.level", Some("compression.lz4.level"), Int, "9", Between(1, 17), Applied,
        "lz4 level of batches the broker recompresses."),
    def!("compression.zstd.level", Some("compression.zstd.level"), Int, "3", Between(-131072, 22), Applied,
        "zstd level of batches the broker recompresses."),
    def!("delete.retention.ms", Some("log.cleaner.delete.retention.ms"), Long, "86400000", AtLeast(0), Applied,
        "How long compaction keeps tombstones (records with a null value) after their segment was written."),
    def!("file.delete.delay.ms", Some("log.segment.delete.delay.ms"), Long, "60000", AtLeast(0),
        Ignored("segment files are unlinked at once; readers keep their mappings until they finish"),
        "Delay before a deleted segment's file is removed."),
    def!("flush.messages", Some("log.flush.interval.messages"), Long, LONG_MAX, AtLeast(1), Applied,
        "An append that leaves this many or more records of the partition unsynced is fsync'd before it is acknowledged, whatever its acks."),
    def!("flush.ms", Some("log.flush.interval.ms"), Long, LONG_MAX, AtLeast(0), Applied,
        "Records left unsynced this long are fsync'd by a background pass (checked every 100 ms); 0 syncs every append before it is acknowledged."),
    def!("follower.replication.throttled.replicas", None, List, "", ThrottledReplicas, Ignored(NO_THROTTLES),
        "Replicas whose follower fetches are throttled."),
    def!("index.interval.bytes", Some("log.index.interval.bytes"), Int, "4096", AtLeast(0), Applied,
        "Bytes of log between two offset index entries."),
    def!("leader.replication.throttled.replicas", None, List, "", ThrottledReplicas, Ignored(NO_THROTTLES),
        "Replicas whose leader-side replication is throttled."),
    // Fjord's own (issue 12's leader pinning), not Kafka's: the racks whose brokers should lead
    // the topic's partitions, so that a write costs one round trip from the producers' region.
    def!("leader.preferred.racks", None, List, "", Any, Applied,
        "Racks (broker.rack values) whose replicas should lead the topic's partitions: placement, leader balancing and preferred elections pick the first replica on one of these racks. Empty, or no replica on them: the first replica leads."),
    def!("local.retention.bytes", Some("log.local.retention.bytes"), Long, "-2", AtLeast(-2), Applied,
        "Bytes kept locally when tiered storage is on (-2: retention.bytes); segments go locally only once they are in the bucket."),
    def!("local.retention.ms", Some("log.local.retention.ms"), Long, "-2", AtLeast(-2), Applied,
        "Time segments are kept locally when tiered storage is on (-2: retention.ms); segments go locally only once they are in the bucket."),
    def!("max.compaction.lag.ms", Some("log.cleaner.max.compaction.lag.ms"), Long, LONG_MAX, AtLeast(1), Applied,
        "A record left uncompacted longer than this makes the log due for compaction whatever its dirty ratio (and caps segment.ms)."),
    def!("max.message.bytes", Some("message.max.bytes"), Int, "1048588", AtLeast(0), Applied,
        "Largest record batch accepted (after recompression); a batch's records may expand to 32 times this (at least 32 MiB) when decompressed."),
    def!("message.downconversion.enable", Some("log.message.downconversion.enable"), Boolean, "true", Any,
        Ignored("Fjord serves only the v2 record format to Fetch v4 and later, so it never down-converts"),
        "Whether fetches of old message formats are down-converted."),
    def!("message.format.version", Some("log.message.format.version"), String, "3.0-IV1", KafkaVersion,
        Ignored("deprecated in Kafka 3.0 and ignored there too: batches are always stored in the v2 format"),
        "Message format version of the topic (deprecated)."),
    def!("message.timestamp.after.max.ms", Some("log.message.timestamp.after.max.ms"), Long, LONG_MAX, AtLeast(0), Applied,
        "With CreateTime, a batch holding a record timestamped more than this ahead of the broker's clock is refused (INVALID_TIMESTAMP)."),
    def!("message.timestamp.before.max.ms", Some("log.message.timestamp.before.max.ms"), Long, LONG_MAX, AtLeast(0), Applied,
        "With CreateTime, a batch holding a record timestamped more than this behind the broker's clock is refused (INVALID_TIMESTAMP)."),
    def!("message.timestamp.difference.max.ms", Some("log.message.timestamp.difference.max.ms"), Long, LONG_MAX, AtLeast(0), Applied,
        "Deprecated: stands for message.timestamp.before.max.ms and after.max.ms where those are not set."),
    def!("message.timestamp.type", Some("log.message.timestamp.type"), String, "CreateTime",
        OneOf(&["CreateTime", "LogAppendTime"]), Applied,
        "Whether record timestamps are the producer's or the broker's append time."),
    def!("min.cleanable.dirty.ratio", Some("log.cleaner.min.cleanable.ratio"), Double, "0.5", Ratio, Applied,
        "Share of not yet compacted bytes (among those compaction may touch) that makes the log due for compaction."),
    def!("min.compaction.lag.ms", Some("log.cleaner.min.compaction.lag.ms"), Long, "0", AtLeast(0), Applied,
        "Records younger than this are never compacted."),
    def!("min.insync.replicas", Some("min.insync.replicas"), Int, "1", AtLeast(1), Applied,
        "Replicas that must hold a record before an acks=all produce succeeds."),
    def!("preallocate", Some("log.preallocate"), Boolean, "false", Any,
        Ignored("Fjord always preallocates the active segment"),
        "Whether new segment files are preallocated."),
    def!("remote.log.copy.disable", None, Boolean, "false", Any, Ignored(NO_TIERING),
        "Stops copying segments to remote storage."),
    def!("remote.log.delete.on.disable", None, Boolean, "false", Any, Ignored(NO_TIERING),
        "Deletes remote data when remote storage is turned off for the topic."),
    // Fjord's own: disaster recovery from the bucket (tiered storage).
    def!("remote.restore.source", None, String, "", Any, Applied,
        "Set at creation: the topic (or `topic-id` directory) in the bucket whose copies this topic takes over, offsets and timestamps intact; needs remote.storage.enable=true. Partitions take writes once they are restored."),
    def!("remote.storage.enable", None, Boolean, "false", Any, Applied,
        "Whether closed segments are copied to remote storage (on a broker with remote_storage_enable); retention.ms and retention.bytes then count the bucket too."),
    def!("retention.bytes", Some("log.retention.bytes"), Long, "-1", Any, Applied,
        "Largest size of a partition before old segments are deleted; -1 for no limit."),
    def!("retention.ms", Some("log.retention.ms"), Long, "604800000", AtLeast(-1), Applied,
        "How long closed segments are kept; -1 keeps them forever."),
    def!("segment.bytes", Some("log.segment.bytes"), Int, "1073741824", AtLeast(14), Applied,
        "Size at which a segment file rolls (Fjord rolls at 1024 bytes at the least)."),
    def!("segment.index.bytes", Some("log.index.size.max.bytes"), Int, "10485760", AtLeast(4), Applied,
        "Preallocated size of each segment's offset and time index (4096 at the least in Fjord)."),
    def!("segment.jitter.ms", Some("log.roll.jitter.ms"), Long, "0", AtLeast(0),
        Ignored("segments roll at segment.ms exactly"),
        "Random reduction of segment.ms, to spread rolls."),
    def!("segment.ms", Some("log.roll.ms"), Long, "604800000", AtLeast(1), Applied,
        "Age at which a segment rolls even if not full."),
    def!("unclean.leader.election.enable", Some("unclean.leader.election.enable"), Boolean, "false", Any,
        Ignored(RAFT_ELECTIONS),
        "Whether a replica outside the in-sync set may become leader."),
];

pub fn def(name: &str) -> Option<&'static ConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// A broker config that AlterConfigs may change at runtime and that is
/// not the default of a topic config.
pub struct BrokerDef {
    pub name: &'static str,
    pub kind: Kind,
    pub default: &'static str,
    pub rule: Rule,
    pub effect: Effect,
    pub doc: &'static str,
}

const NO_THREAD_POOLS: &str = "Fjord sizes its runtime by the machine, not by these pools";
const NO_SASL: &str = "SASL is not served yet";

/// Kafka's dynamically updatable broker configs besides the topic
/// defaults (`log.cleaner.*`, thread pools, listener security, ...).
pub const DYNAMIC_BROKER_CONFIGS: &[BrokerDef] = &[
    BrokerDef {
        name: "log.cleaner.backoff.ms",
        kind: Kind::Long,
        default: "15000",
        rule: AtLeast(0),
        effect: Applied,
        doc: "Pause between compaction passes.",
    },
    BrokerDef {
        name: "log.cleaner.threads",
        kind: Kind::Int,
        default: "1",
        rule: AtLeast(0),
        effect: Ignored("one compaction pass runs over all logs"),
        doc: "Threads compacting logs.",
    },
    BrokerDef {
        name: "log.cleaner.dedupe.buffer.size",
        kind: Kind::Long,
        default: "134217728",
        rule: Any,
        effect: Ignored("compaction sizes its key map by the log"),
        doc: "Memory for the compaction key map.",
    },
    BrokerDef {
        name: "log.cleaner.io.buffer.size",
        kind: Kind::Int,
        default: "524288",
        rule: AtLeast(0),
        effect: Ignored("compaction reads mapped segments"),
        doc: "I/O buffer of compaction.",
    },
    BrokerDef {
        name: "log.cleaner.io.buffer.load.factor",
        kind: Kind::Double,
        default: "0.9",
        rule: Any,
        effect: Ignored("compaction sizes its key map by the log"),
        doc: "Load factor of the compaction key map.",
    },
    BrokerDef {
        name: "log.cleaner.io.max.bytes.per.second",
        kind: Kind::Double,
        default: "1.7976931348623157E308",
        rule: Any,
        effect: Ignored("compaction is not throttled"),
        doc: "I/O throttle of compaction.",
    },
    BrokerDef {
        name: "producer.id.expiration.ms",
        kind: Kind::Int,
        default: "86400000",
        rule: AtLeast(1),
        effect: Applied,
        doc: "Idempotent producer state is dropped after this long without a batch.",
    },
    BrokerDef {
        name: "num.io.threads",
        kind: Kind::Int,
        default: "8",
        rule: AtLeast(1),
        effect: Ignored(NO_THREAD_POOLS),
        doc: "Request handler threads.",
    },
    BrokerDef {
        name: "num.network.threads",
        kind: Kind::Int,
        default: "3",
        rule: AtLeast(1),
        effect: Ignored(NO_THREAD_POOLS),
        doc: "Network threads.",
    },
    BrokerDef {
        name: "num.replica.fetchers",
        kind: Kind::Int,
        default: "1",
        rule: Any,
        effect: Ignored(ONE_FETCHER),
        doc: "Replica fetcher threads.",
    },
    BrokerDef {
        name: "num.recovery.threads.per.data.dir",
        kind: Kind::Int,
        default: "1",
        rule: AtLeast(1),
        effect: Ignored(NO_THREAD_POOLS),
        doc: "Threads recovering logs at start-up.",
    },
    BrokerDef {
        name: "background.threads",
        kind: Kind::Int,
        default: "10",
        rule: AtLeast(1),
        effect: Ignored(NO_THREAD_POOLS),
        doc: "Background task threads.",
    },
    BrokerDef {
        name: "max.connections",
        kind: Kind::Int,
        default: "2147483647",
        rule: AtLeast(0),
        effect: Ignored("connections are not capped"),
        doc: "Most connections the broker accepts.",
    },
    BrokerDef {
        name: "max.connections.per.ip",
        kind: Kind::Int,
        default: "2147483647",
        rule: AtLeast(0),
        effect: Ignored("connections are not capped"),
        doc: "Most connections from one address.",
    },
    BrokerDef {
        name: "sasl.kerberos.min.time.before.relogin",
        kind: Kind::Long,
        default: "60000",
        rule: Any,
        effect: Ignored(NO_SASL),
        doc: "Login thread sleep time between refresh attempts.",
    },
    BrokerDef {
        name: "sasl.kerberos.ticket.renew.window.factor",
        kind: Kind::Double,
        default: "0.8",
        rule: Any,
        effect: Ignored(NO_SASL),
        doc: "Share of the ticket lifetime after which it is renewed.",
    },
    BrokerDef {
        name: "sasl.kerberos.ticket.renew.jitter",
        kind: Kind::Double,
        default: "0.05",
        rule: Any,
        effect: Ignored(NO_SASL),
        doc: "Random jitter added to the renewal time.",
    },
];

/// Broker configs Kafka refuses to change at runtime that Fjord knows but
/// has no key for (its own keys say so in `config::KEYS`): AlterConfigs on
/// them answers INVALID_REQUEST.
pub const READ_ONLY_BROKER_CONFIGS: &[&str] = &[
    "broker.id",
    "process.roles",
    "log.dir",
    "log.message.format.version",
    "log.retention.hours",
    "log.retention.minutes",
    "log.roll.hours",
    "log.roll.jitter.hours",
    "log.cleaner.enable",
    "log.flush.scheduler.interval.ms",
    "offsets.retention.minutes",
];

/// What a broker config name means to AlterConfigs on the broker resource.
pub enum BrokerKey {
    /// The default of a topic config; stored under the topic config's name.
    TopicDefault(&'static ConfigDef),
    Dynamic(&'static BrokerDef),
    ReadOnly,
    /// Not a config Fjord knows: Kafka accepts those too (plugins read
    /// their own), so it is stored and described.
    Unknown,
}

pub fn broker_key(name: &str) -> BrokerKey {
    let static_key = crate::config::key_by_kafka_name(name).map(|k| k.view);
    if READ_ONLY_BROKER_CONFIGS.contains(&name) || matches!(static_key, Some(crate::config::View::ReadOnly(..))) {
        return BrokerKey::ReadOnly;
    }
    if let Some(d) = TOPIC_CONFIGS.iter().find(|d| d.broker_name == Some(name)) {
        return BrokerKey::TopicDefault(d);
    }
    if let Some(d) = DYNAMIC_BROKER_CONFIGS.iter().find(|d| d.name == name) {
        return BrokerKey::Dynamic(d);
    }
    BrokerKey::Unknown
}

fn invalid(name: &str, value: &str, why: impl std::fmt::Display) -> String {
    format!("Invalid value {value} for configuration {name}: {why}")
}

fn is_kafka_version(v: &str) -> bool {
    // `0.10.0`, `0.10.0.1`, `2.8`, `3.0-IV1`, `2.8-IV0` ...
    let (release, iv) = match v.split_once("-IV") {
        Some((r, iv)) => (r, Some(iv)),
        None => (v, None),
    };
    if iv.is_some_and(|iv| iv.is_empty() || !iv.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    let parts: Vec<&str> = release.split('.').collect();
    if parts.iter().any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    match parts.first().copied() {
        Some("0") => (3..=4).contains(&parts.len()) && matches!(parts[1], "8" | "9" | "10" | "11"),
        Some("1") => parts.len() >= 2 && matches!(parts[1], "0" | "1"),
        Some("2") => parts.len() >= 2 && parts[1].parse::<u32>().is_ok_and(|m| m <= 8),
        Some("3") => parts.len() >= 2 && parts[1].parse::<u32>().is_ok_and(|m| m <= 9),
        _ => false,
    }
}

/// Checks one value against a type and rule; the message is what clients
/// see with INVALID_CONFIG.
pub fn check(name: &str, kind: Kind, rule: Rule, value: &str) -> Result<(), String> {
    let v = value.trim();
    match kind {
        Kind::Int | Kind::Long => {
            let n: i64 = v.parse().map_err(|_| {
                invalid(name, value, format!("Not a number of type {}", if kind == Kind::Int { "INT" } else { "LONG" }))
            })?;
            if kind == Kind::Int && i32::try_from(n).is_err() {
                return Err(invalid(name, value, "Not a number of type INT"));
            }
            match rule {
                AtLeast(min) if n < min => return Err(invalid(name, value, format!("Value must be at least {min}"))),
                Between(lo, hi) if n < lo || n > hi => {
                    return Err(invalid(name, value, format!("Value must be between {lo} and {hi}")))
                }
                GzipLevel if n != -1 && !(1..=9).contains(&n) => {
                    return Err(invalid(name, value, "Value must be between 1 and 9, or -1"))
                }
                _ => {}
            }
        }
        Kind::Double => {
            let x: f64 = v.parse().map_err(|_| invalid(name, value, "Not a number of type DOUBLE"))?;
            if matches!(rule, Ratio) && !(0.0..=1.0).contains(&x) {
                return Err(invalid(name, value, "Value must be between 0 and 1"));
            }
        }
        Kind::Boolean => {
            if !v.eq_ignore_ascii_case("true") && !v.eq_ignore_ascii_case("false") {
                return Err(invalid(name, value, "Expected value to be either true or false"));
            }
        }
        Kind::String => match rule {
            OneOf(allowed) if !allowed.contains(&v) => {
                return Err(invalid(name, value, format!("String must be one of: {}", allowed.join(", "))))
            }
            KafkaVersion if !is_kafka_version(v) => {
                return Err(invalid(name, value, "not a Kafka version such as 2.8 or 0.10.0"))
            }
            _ => {}
        },
        Kind::List => {
            let items: Vec<&str> = v.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
            match rule {
                ListOf(allowed) if items.is_empty() || items.iter().any(|i| !allowed.contains(i)) => {
                    return Err(invalid(name, value, format!("items must be from: {}", allowed.join(", "))));
                }
                ThrottledReplicas => {
                    let pair = |i: &str| {
                        i.split_once(':')
                            .is_some_and(|(p, b)| p.trim().parse::<u32>().is_ok() && b.trim().parse::<u32>().is_ok())
                    };
                    if !(items == ["*"] || items.iter().all(|i| pair(i))) {
                        return Err(invalid(
                            name,
                            value,
                            "must be the literal '*' or a list of replicas as [partitionId]:[brokerId],...",
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Checks one topic config value.
pub fn validate(name: &str, value: &str) -> Result<(), String> {
    let d = def(name).ok_or_else(|| format!("Unknown topic config name: {name}"))?;
    check(name, d.kind, d.rule, value)
}

/// Checks a stored broker-level value, keyed as `Topics` keeps them (topic
/// config names for topic defaults, broker names otherwise).
pub fn validate_broker(key: &str, value: &str) -> Result<(), String> {
    if let Some(d) = def(key) {
        return check(d.broker_name.unwrap_or(d.name), d.kind, d.rule, value);
    }
    match DYNAMIC_BROKER_CONFIGS.iter().find(|d| d.name == key) {
        Some(d) => check(d.name, d.kind, d.rule, value),
        None => Ok(()),
    }
}

/// Names of the configs in `set` that Fjord stores but does not act on,
/// with why, for the info line that says so.
pub fn ignored<'a>(set: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    set.into_iter()
        .filter_map(|k| {
            let effect = def(k)
                .map(|d| d.effect)
                .or_else(|| DYNAMIC_BROKER_CONFIGS.iter().find(|d| d.name == k.as_str()).map(|d| d.effect));
            match effect {
                Some(Ignored(why)) => Some(format!("{k} ({why})")),
                Some(Applied) => None,
                None => Some(format!("{k} (not a config Fjord knows)")),
            }
        })
        .collect()
}

/// Effective value: the topic override, else the broker default.
pub fn effective(
    name: &str,
    overrides: &BTreeMap<String, String>,
    defaults: &BTreeMap<String, String>,
) -> (String, bool) {
    match overrides.get(name) {
        Some(v) => (v.clone(), true),
        None => (
            defaults.get(name).cloned().or_else(|| def(name).map(|d| d.default.to_string())).unwrap_or_default(),
            false,
        ),
    }
}

/// The broker-wide setting `log_config` reads to know whether the broker has remote storage
/// (`BrokerConfig::log_defaults` passes it with the topic defaults).
pub const REMOTE_SYSTEM_ENABLE: &str = "remote.log.storage.system.enable";

/// The broker-wide `log_page_cache_bytes`, passed to `log_config` the same way. Not a Kafka
/// name: Kafka leaves the page cache to the kernel.
pub const LOG_PAGE_CACHE_BYTES: &str = "fjord.log.page.cache.bytes";

/// Checks a topic's whole set of configs: what no single value shows.
pub fn validate_combination(configs: &BTreeMap<String, String>) -> Result<(), String> {
    let remote = configs.get("remote.storage.enable").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let compact = configs.get("cleanup.policy").is_some_and(|v| v.split(',').any(|p| p.trim() == "compact"));
    if remote && compact {
        return Err("remote.storage.enable=true is not supported on a compacted topic (cleanup.policy=compact): \
                    compaction rewrites segments already copied to the bucket"
            .into());
    }
    Ok(())
}

/// Total retention of a topic with remote storage, the bucket included: (retention.ms,
/// retention.bytes).
pub fn total_retention(overrides: &BTreeMap<String, String>, defaults: &BTreeMap<String, String>) -> (i64, i64) {
    let num = |n: &str, fallback: i64| effective(n, overrides, defaults).0.trim().parse::<i64>().unwrap_or(fallback);
    (num("retention.ms", LogConfig::default().retention_ms), num("retention.bytes", -1))
}

pub fn log_config(overrides: &BTreeMap<String, String>, defaults: &BTreeMap<String, String>) -> LogConfig {
    let get = |n: &str| effective(n, overrides, defaults).0;
    let num = |n: &str, fallback: i64| get(n).trim().parse::<i64>().unwrap_or(fallback);
    let base = LogConfig::default();
    let compact = get("cleanup.policy").split(',').any(|p| p.trim() == "compact");
    // The deprecated difference stands for whichever bound is not set.
    let difference = num("message.timestamp.difference.max.ms", i64::MAX);
    let bound = |n: &str| match num(n, i64::MAX) {
        i64::MAX => difference,
        v => v,
    };
    let compression = Codec::from_name(get("compression.type").trim()).map(|codec| Compression {
        codec,
        level: match codec {
            Codec::Gzip => num("compression.gzip.level", -1) as i32,
            Codec::Lz4 => num("compression.lz4.level", 9) as i32,
            Codec::Zstd => num("compression.zstd.level", 3) as i32,
            _ => 0,
        },
    });
    let max_compaction_lag_ms = num("max.compaction.lag.ms", i64::MAX).max(1);
    // Tiered storage: the log's retention is then local.retention.* (-2: the total), and the
    // total is the remote copier's to apply.
    let remote = defaults.get(REMOTE_SYSTEM_ENABLE).is_some_and(|v| v == "true")
        && get("remote.storage.enable").trim().eq_ignore_ascii_case("true")
        && !compact;
    let (retention_ms, retention_bytes) = (num("retention.ms", base.retention_ms), num("retention.bytes", -1));
    let local = |n: &str, total: i64| match num(n, -2) {
        -2 => total,
        v => v,
    };
    let (retention_ms, retention_bytes) = if remote {
        (local("local.retention.ms", retention_ms), local("local.retention.bytes", retention_bytes))
    } else {
        (retention_ms, retention_bytes)
    };
    let segment_ms = num("segment.ms", base.segment_ms);
    LogConfig {
        segment_bytes: num("segment.bytes", base.segment_bytes as i64).max(1024) as u64,
        // Kafka rolls a compacted log's segments by max.compaction.lag.ms
        // too, or a record in the active segment would never be compacted.
        segment_ms: if compact { segment_ms.min(max_compaction_lag_ms) } else { segment_ms },
        retention_ms,
        retention_bytes,
        max_message_bytes: num("max.message.bytes", base.max_message_bytes as i64).max(0) as usize,
        index_interval_bytes: num("index.interval.bytes", 4096).max(0) as u64,
        segment_index_bytes: num("segment.index.bytes", base.segment_index_bytes as i64).max(4096) as usize,
        compact,
        delete: get("cleanup.policy").split(',').any(|p| p.trim() == "delete"),
        delete_retention_ms: num("delete.retention.ms", base.delete_retention_ms),
        producer_id_expiration_ms: defaults
            .get("producer.id.expiration.ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(base.producer_id_expiration_ms),
        timestamp_type: if get("message.timestamp.type").trim() == "LogAppendTime" {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        },
        compression,
        timestamp_before_max_ms: bound("message.timestamp.before.max.ms"),
        timestamp_after_max_ms: bound("message.timestamp.after.max.ms"),
        min_compaction_lag_ms: num("min.compaction.lag.ms", 0),
        max_compaction_lag_ms,
        min_cleanable_dirty_ratio: get("min.cleanable.dirty.ratio").trim().parse().unwrap_or(0.5),
        flush_messages: num("flush.messages", i64::MAX).max(1),
        flush_ms: num("flush.ms", i64::MAX),
        min_insync_replicas: num("min.insync.replicas", 1).clamp(1, i32::MAX as i64) as i32,
        remote_storage: remote,
        remote_restore: remote && !get("remote.restore.source").trim().is_empty(),
        page_cache_bytes: defaults
            .get(LOG_PAGE_CACHE_BYTES)
            .and_then(|v| v.parse().ok())
            .unwrap_or(base.page_cache_bytes),
    }
}

/// `flush.messages` and `flush.ms`: whether an append that leaves
/// `unsynced` records not yet on disk must be synced before it is
/// acknowledged, whatever its acks and the fsync policy.
pub fn flush_due(cfg: &LogConfig, unsynced: i64) -> bool {
    unsynced >= cfg.flush_messages || cfg.flush_ms == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_follows_kafka_rules() {
        assert!(validate("retention.ms", "-1").is_ok());
        assert!(validate("retention.ms", "-2").is_err());
        assert!(validate("retention.ms", "abc").is_err());
        assert!(validate("segment.bytes", "99999999999").is_err());
        assert!(validate("segment.bytes", "14").is_ok());
        assert!(validate("message.timestamp.type", "LogAppendTime").is_ok());
        assert!(validate("message.timestamp.type", "Whenever").is_err());
        assert!(validate("no.such.config", "1").is_err());
        assert!(validate("cleanup.policy", "compact").is_ok());
        assert!(validate("cleanup.policy", "compact,delete").is_ok());
        assert!(validate("cleanup.policy", "shred").is_err());
        assert!(validate("cleanup.policy", "").is_err());
        assert!(validate("compression.type", "zstd").is_ok());
        assert!(validate("compression.type", "brotli").is_err());
        assert!(validate("compression.gzip.level", "-1").is_ok());
        assert!(validate("compression.gzip.level", "0").is_err());
        assert!(validate("compression.zstd.level", "-131072").is_ok());
        assert!(validate("compression.zstd.level", "23").is_err());
        assert!(validate("compression.lz4.level", "17").is_ok());
        assert!(validate("min.cleanable.dirty.ratio", "0.01").is_ok());
        assert!(validate("min.cleanable.dirty.ratio", "1.5").is_err());
        assert!(validate("preallocate", "TRUE").is_ok());
        assert!(validate("preallocate", "yes").is_err());
        assert!(validate("message.format.version", "0.10.0.0").is_ok());
        assert!(validate("message.format.version", "2.8-IV1").is_ok());
        assert!(validate("message.format.version", "9.9").is_err());
        assert!(validate("leader.replication.throttled.replicas", "*").is_ok());
        assert!(validate("leader.replication.throttled.replicas", "0:1,1:2").is_ok());
        assert!(validate("leader.replication.throttled.replicas", "").is_ok());
        assert!(validate("leader.replication.throttled.replicas", "all").is_err());
        assert!(validate("max.compaction.lag.ms", "0").is_err());
        assert!(validate("flush.messages", "0").is_err());
    }

    #[test]
    fn every_default_passes_its_own_validation() {
        for d in TOPIC_CONFIGS {
            assert!(check(d.name, d.kind, d.rule, d.default).is_ok(), "{}", d.name);
        }
        for d in DYNAMIC_BROKER_CONFIGS {
            assert!(check(d.name, d.kind, d.rule, d.default).is_ok(), "{}", d.name);
        }
    }

    #[test]
    fn overrides_win_over_defaults() {
        let mut d = BTreeMap::new();
        d.insert("retention.ms".to_string(), "1000".to_string());
        d.insert("segment.bytes".to_string(), "2048".to_string());
        let mut o = BTreeMap::new();
        o.insert("retention.ms".to_string(), "5".to_string());
        let c = log_config(&o, &d);
        assert_eq!((c.retention_ms, c.segment_bytes), (5, 2048));
    }

    #[test]
    fn log_config_carries_the_applied_configs() {
        let o: BTreeMap<String, String> = [
            ("compression.type", "zstd"),
            ("compression.zstd.level", "7"),
            ("message.timestamp.difference.max.ms", "1000"),
            ("message.timestamp.after.max.ms", "50"),
            ("cleanup.policy", "compact"),
            ("max.compaction.lag.ms", "60000"),
            ("min.cleanable.dirty.ratio", "0.25"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let c = log_config(&o, &BTreeMap::new());
        assert_eq!(c.compression, Some(Compression { codec: Codec::Zstd, level: 7 }));
        assert_eq!((c.timestamp_before_max_ms, c.timestamp_after_max_ms), (1000, 50));
        assert_eq!((c.segment_ms, c.min_cleanable_dirty_ratio), (60000, 0.25));
        let c = log_config(&BTreeMap::new(), &BTreeMap::new());
        assert_eq!(c.compression, None);
        assert_eq!(c.timestamp_before_max_ms, i64::MAX);
    }
}

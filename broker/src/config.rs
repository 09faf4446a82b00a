//! Broker configuration: one typed struct read from a TOML file, with command
//! line flags on top. Defaults give a single-node broker on 127.0.0.1:9092.

use std::path::{Path, PathBuf};

use clap::Parser;
use serde::{Deserialize, Serialize};

/// When appended data is forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Address to listen on for Kafka clients.
    pub listen: String,
    /// host:port clients are told to connect to; defaults to the bound address.
    pub advertised_listener: Option<String>,
    /// Directory for partition logs and metadata (`log.dirs`).
    pub data_dir: PathBuf,
    /// `node.id`
    pub node_id: i32,
    /// Largest request frame accepted (`socket.request.max.bytes`).
    pub max_request_bytes: usize,
    /// Bytes all connections together may hold in requests read but not yet
    /// answered (`queued.max.request.bytes`); past it connections stop
    /// reading until responses free some. -1 is unlimited (Kafka's default).
    pub queued_max_request_bytes: i64,
    /// `auto.create.topics.enable`
    pub auto_create_topics: bool,
    /// `num.partitions`: partitions of auto-created topics.
    pub num_partitions: i32,
    /// `log.segment.bytes`
    pub log_segment_bytes: u64,
    /// `log.roll.ms`
    pub log_roll_ms: i64,
    /// `log.retention.ms`
    pub log_retention_ms: i64,
    /// `log.retention.bytes`
    pub log_retention_bytes: i64,
    /// `message.max.bytes`
    pub message_max_bytes: usize,
    /// `log.index.interval.bytes`
    pub log_index_interval_bytes: u64,
    /// `log.index.size.max.bytes`
    pub log_index_size_max_bytes: usize,
    /// `log.message.timestamp.type`: CreateTime or LogAppendTime.
    pub log_message_timestamp_type: String,
    /// `compression.type`: `producer` keeps batches as sent; a codec
    /// (`uncompressed`, `gzip`, `snappy`, `lz4`, `zstd`) recompresses the
    /// batches of every topic without its own setting to it.
    pub compression_type: String,
    /// `log.retention.check.interval.ms`
    pub log_retention_check_interval_ms: u64,
    /// `log.cleaner.backoff.ms`: pause between compaction passes.
    pub log_cleaner_backoff_ms: u64,
    /// Kafka's `offsets.retention.minutes`, in ms: committed offsets of a
    /// group without members are kept this long.
    pub offsets_retention_ms: i64,
    /// `offsets.retention.check.interval.ms`
    pub offsets_retention_check_interval_ms: u64,
    /// `producer.id.expiration.ms`
    pub producer_id_expiration_ms: i64,
    /// `group.initial.rebalance.delay.ms`: the first rebalance of an empty
    /// classic group waits this long for more members (extended by each new
    /// one, up to the rebalance timeout); 0 starts it at once.
    pub group_initial_rebalance_delay_ms: u64,
    /// `group.consumer.session.timeout.ms` (KIP-848 groups).
    pub group_consumer_session_timeout_ms: u64,
    /// `group.consumer.heartbeat.interval.ms` (KIP-848 groups).
    pub group_consumer_heartbeat_interval_ms: i32,
    /// When produced data is fsync'd.
    pub fsync: FsyncPolicy,
    /// How group commit syncs many partitions at once.
    pub fsync_method: FsyncMethod,
    /// Segment pages the broker may keep mapped in its resident set (pages
    /// faulted in by reads) before it unmaps them; they stay in the page
    /// cache. Bounds RSS whatever the data volume.
    pub mapped_resident_max_bytes: u64,
    /// Prometheus metrics endpoint (host:port); off when unset.
    pub metrics_listen: Option<String>,
    /// `offsets.topic.num.partitions`: partitions of `__consumer_offsets`,
    /// fixed when the topic is first created.
    pub offsets_topic_num_partitions: i32,
    /// `transaction.state.log.num.partitions`: partitions of
    /// `__transaction_state`, fixed when the topic is first created.
    pub transaction_state_log_num_partitions: i32,
    /// `transaction.max.timeout.ms`: the longest transaction timeout a
    /// producer may ask for.
    pub transaction_max_timeout_ms: i32,
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`
    pub transaction_abort_timed_out_transaction_cleanup_interval_ms: u64,
    /// `transactional.id.expiration.ms`: an idle transactional id is
    /// forgotten after this long.
    pub transactional_id_expiration_ms: i64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: "127.0.0.1:9092".into(),
            advertised_listener: None,
            data_dir: PathBuf::from("./data"),
            node_id: 0,
            max_request_bytes: 100 * 1024 * 1024,
            // Kafka leaves this unbounded, so a burst of large produces can
            // take all the memory of a machine. 512 MiB is a fraction of a
            // broker with a few GiB, and five requests of the largest size
            // (max_request_bytes) still fit at once.
            queued_max_request_bytes: 512 * 1024 * 1024,
            auto_create_topics: true,
            num_partitions: 1,
            log_segment_bytes: 1 << 30,
            log_roll_ms: 7 * 24 * 3600 * 1000,
            log_retention_ms: 7 * 24 * 3600 * 1000,
            log_retention_bytes: -1,
            message_max_bytes: 1_048_588,
            log_index_interval_bytes: 4096,
            log_index_size_max_bytes: 10 * 1024 * 1024,
            log_message_timestamp_type: "CreateTime".into(),
            compression_type: "producer".into(),
            log_retention_check_interval_ms: 300_000,
            log_cleaner_backoff_ms: 15_000,
            offsets_retention_ms: 7 * 24 * 3600 * 1000,
            offsets_retention_check_interval_ms: 600_000,
            producer_id_expiration_ms: 24 * 3600 * 1000,
            group_initial_rebalance_delay_ms: 3_000,
            group_consumer_session_timeout_ms: 45_000,
            group_consumer_heartbeat_interval_ms: 5_000,
            fsync: FsyncPolicy::AcksAll,
            fsync_method: FsyncMethod::Fdatasync,
            mapped_resident_max_bytes: 64 << 20,
            metrics_listen: None,
            offsets_topic_num_partitions: 50,
            transaction_state_log_num_partitions: 50,
            transaction_max_timeout_ms: 900_000,
            transaction_abort_timed_out_transaction_cleanup_interval_ms: 10_000,
            transactional_id_expiration_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

/// Command line of `fjord`. Every flag overrides the same key of the file.
#[derive(Debug, Parser)]
#[command(name = "fjord", version, about = "Fjord: a Kafka-compatible streaming broker")]
pub struct Args {
    /// TOML config file (keys as in BrokerConfig: listen, data_dir, ...).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub listen: Option<String>,
    #[arg(long)]
    pub advertised_listener: Option<String>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long)]
    pub node_id: Option<i32>,
    #[arg(long)]
    pub max_request_bytes: Option<usize>,
    #[arg(long, allow_negative_numbers = true)]
    pub queued_max_request_bytes: Option<i64>,
    #[arg(long)]
    pub auto_create_topics: Option<bool>,
    #[arg(long)]
    pub num_partitions: Option<i32>,
    #[arg(long)]
    pub log_segment_bytes: Option<u64>,
    #[arg(long)]
    pub log_retention_ms: Option<i64>,
    #[arg(long)]
    pub log_retention_bytes: Option<i64>,
    #[arg(long)]
    pub message_max_bytes: Option<usize>,
    #[arg(long)]
    pub log_retention_check_interval_ms: Option<u64>,
    #[arg(long)]
    pub compression_type: Option<String>,
    #[arg(long)]
    pub log_cleaner_backoff_ms: Option<u64>,
    #[arg(long)]
    pub offsets_retention_ms: Option<i64>,
    #[arg(long)]
    pub offsets_retention_check_interval_ms: Option<u64>,
    #[arg(long)]
    pub producer_id_expiration_ms: Option<i64>,
    #[arg(long)]
    pub group_initial_rebalance_delay_ms: Option<u64>,
    #[arg(long)]
    pub group_consumer_session_timeout_ms: Option<u64>,
    #[arg(long)]
    pub group_consumer_heartbeat_interval_ms: Option<i32>,
    #[arg(long, value_enum)]
    pub fsync: Option<FsyncPolicy>,
    #[arg(long, value_enum)]
    pub fsync_method: Option<FsyncMethod>,
    #[arg(long)]
    pub mapped_resident_max_bytes: Option<u64>,
    #[arg(long)]
    pub metrics_listen: Option<String>,
    #[arg(long)]
    pub transaction_max_timeout_ms: Option<i32>,
    #[arg(long)]
    pub transaction_abort_timed_out_transaction_cleanup_interval_ms: Option<u64>,
    #[arg(long)]
    pub transactional_id_expiration_ms: Option<i64>,
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
    pub fn from_file(path: &Path) -> Result<BrokerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), source: Box::new(e) })
    }

    pub fn from_args(args: Args) -> Result<BrokerConfig, ConfigError> {
        let mut c = match &args.config {
            Some(p) => BrokerConfig::from_file(p)?,
            None => BrokerConfig::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = args.$f { c.$f = v; } )* };
        }
        set!(
            listen,
            data_dir,
            node_id,
            max_request_bytes,
            queued_max_request_bytes,
            auto_create_topics,
            num_partitions,
            log_segment_bytes,
            log_retention_ms,
            log_retention_bytes,
            message_max_bytes,
            log_retention_check_interval_ms,
            compression_type,
            log_cleaner_backoff_ms,
            offsets_retention_ms,
            offsets_retention_check_interval_ms,
            producer_id_expiration_ms,
            group_initial_rebalance_delay_ms,
            group_consumer_session_timeout_ms,
            group_consumer_heartbeat_interval_ms,
            fsync,
            fsync_method,
            mapped_resident_max_bytes,
            transaction_max_timeout_ms,
            transaction_abort_timed_out_transaction_cleanup_interval_ms,
            transactional_id_expiration_ms
        );
        if args.advertised_listener.is_some() {
            c.advertised_listener = args.advertised_listener;
        }
        if args.metrics_listen.is_some() {
            c.metrics_listen = args.metrics_listen;
        }
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.num_partitions < 1 {
            return bad(format!("num_partitions must be >= 1, got {}", self.num_partitions));
        }
        if !(1..=1000).contains(&self.offsets_topic_num_partitions) {
            return bad(format!(
                "offsets_topic_num_partitions must be 1..=1000, got {}",
                self.offsets_topic_num_partitions
            ));
        }
        if !(1..=1000).contains(&self.transaction_state_log_num_partitions) {
            return bad(format!(
                "transaction_state_log_num_partitions must be 1..=1000, got {}",
                self.transaction_state_log_num_partitions
            ));
        }
        if self.transaction_max_timeout_ms < 1 {
            return bad(format!("transaction_max_timeout_ms must be >= 1, got {}", self.transaction_max_timeout_ms));
        }
        if self.transactional_id_expiration_ms < 1 {
            return bad(format!(
                "transactional_id_expiration_ms must be >= 1, got {}",
                self.transactional_id_expiration_ms
            ));
        }
        if self.max_request_bytes < 1024 {
            return bad(format!("max_request_bytes must be >= 1024, got {}", self.max_request_bytes));
        }
        if self.queued_max_request_bytes != -1 && self.queued_max_request_bytes < self.max_request_bytes as i64 {
            return bad(format!(
                "queued_max_request_bytes ({}) is below max_request_bytes ({}): a request of the largest accepted \
                 size could never be read; raise it, or set -1 for no limit",
                self.queued_max_request_bytes, self.max_request_bytes
            ));
        }
        // Broker defaults go through the same checks as topic overrides.
        if self.producer_id_expiration_ms < 1 {
            return bad(format!("producer_id_expiration_ms must be >= 1, got {}", self.producer_id_expiration_ms));
        }
        for (name, value) in self.log_defaults() {
            if crate::topic_config::def(name).is_none() {
                continue;
            }
            if let Err(e) = crate::topic_config::validate(name, &value) {
                return bad(e);
            }
        }
        if let Some(a) = &self.advertised_listener {
            if crate::server::split_host_port(a).is_none() {
                return bad(format!("advertised_listener must be host:port, got {a:?}"));
            }
        }
        Ok(())
    }

    /// The broker-level defaults of every topic config, by the topic
    /// config's name: Kafka's default unless this file sets the broker
    /// config it comes from.
    pub fn log_defaults(&self) -> Vec<(&'static str, String)> {
        let from_file: Vec<(&'static str, String)> = vec![
            ("segment.bytes", self.log_segment_bytes.to_string()),
            ("segment.ms", self.log_roll_ms.to_string()),
            ("retention.ms", self.log_retention_ms.to_string()),
            ("retention.bytes", self.log_retention_bytes.to_string()),
            ("max.message.bytes", self.message_max_bytes.to_string()),
            ("index.interval.bytes", self.log_index_interval_bytes.to_string()),
            ("segment.index.bytes", self.log_index_size_max_bytes.to_string()),
            ("message.timestamp.type", self.log_message_timestamp_type.clone()),
            ("compression.type", self.compression_type.clone()),
        ];
        let mut out: Vec<(&'static str, String)> = crate::topic_config::TOPIC_CONFIGS
            .iter()
            .map(|d| {
                let v = from_file.iter().find(|(n, _)| *n == d.name).map_or(d.default.to_string(), |(_, v)| v.clone());
                (d.name, v)
            })
            .collect();
        // Broker-wide only: not a topic config, but the log applies it.
        out.push(("producer.id.expiration.ms", self.producer_id_expiration_ms.to_string()));
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
}

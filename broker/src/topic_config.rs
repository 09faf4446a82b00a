//! Topic configs by their Kafka names: which exist, how each is checked, the
//! broker config each falls back to, and how they become a `LogConfig`.

use std::collections::BTreeMap;

use fjord_storage::{LogConfig, TimestampType};

/// Kafka's ConfigType values as DescribeConfigs reports them.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Int = 3,
    Long = 5,
    String = 2,
    List = 7,
}

pub struct ConfigDef {
    pub name: &'static str,
    /// The broker config that supplies the default.
    pub broker_name: &'static str,
    pub kind: Kind,
    pub min: i64,
    /// For enumerated strings, the allowed values.
    pub allowed: &'static [&'static str],
    pub doc: &'static str,
}

pub const TOPIC_CONFIGS: &[ConfigDef] = &[
    ConfigDef {
        name: "cleanup.policy",
        broker_name: "log.cleanup.policy",
        kind: Kind::List,
        min: 0,
        allowed: &["delete", "compact"],
        doc:
            "delete: old segments go by retention.ms/retention.bytes; compact: only the newest record per key is kept.",
    },
    ConfigDef {
        name: "segment.bytes",
        broker_name: "log.segment.bytes",
        kind: Kind::Int,
        min: 1024,
        allowed: &[],
        doc: "Size at which a segment file rolls.",
    },
    ConfigDef {
        name: "segment.ms",
        broker_name: "log.roll.ms",
        kind: Kind::Long,
        min: 1,
        allowed: &[],
        doc: "Age at which a segment rolls even if not full.",
    },
    ConfigDef {
        name: "retention.ms",
        broker_name: "log.retention.ms",
        kind: Kind::Long,
        min: -1,
        allowed: &[],
        doc: "How long closed segments are kept; -1 keeps them forever.",
    },
    ConfigDef {
        name: "retention.bytes",
        broker_name: "log.retention.bytes",
        kind: Kind::Long,
        min: -1,
        allowed: &[],
        doc: "Largest size of a partition before old segments are deleted; -1 for no limit.",
    },
    ConfigDef {
        name: "max.message.bytes",
        broker_name: "message.max.bytes",
        kind: Kind::Int,
        min: 0,
        allowed: &[],
        doc: "Largest record batch accepted.",
    },
    ConfigDef {
        name: "index.interval.bytes",
        broker_name: "log.index.interval.bytes",
        kind: Kind::Int,
        min: 0,
        allowed: &[],
        doc: "Bytes of log between two offset index entries.",
    },
    ConfigDef {
        name: "segment.index.bytes",
        broker_name: "log.index.size.max.bytes",
        kind: Kind::Int,
        min: 4096,
        allowed: &[],
        doc: "Preallocated size of each segment's offset and time index.",
    },
    ConfigDef {
        name: "message.timestamp.type",
        broker_name: "log.message.timestamp.type",
        kind: Kind::String,
        min: 0,
        allowed: &["CreateTime", "LogAppendTime"],
        doc: "Whether record timestamps are the producer's or the broker's append time.",
    },
    ConfigDef {
        name: "delete.retention.ms",
        broker_name: "log.cleaner.delete.retention.ms",
        kind: Kind::Long,
        min: 0,
        allowed: &[],
        doc: "How long compaction keeps tombstones (records with a null value).",
    },
    ConfigDef {
        name: "min.insync.replicas",
        broker_name: "min.insync.replicas",
        kind: Kind::Int,
        min: 1,
        allowed: &[],
        doc: "Replicas that must hold a record before an acks=all produce succeeds.",
    },
];

pub fn def(name: &str) -> Option<&'static ConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// Checks one value; the message is what clients see with INVALID_CONFIG.
pub fn validate(name: &str, value: &str) -> Result<(), String> {
    let d = def(name).ok_or_else(|| format!("Unknown topic config name: {name}"))?;
    match d.kind {
        Kind::Int | Kind::Long => {
            let v: i64 = value
                .trim()
                .parse()
                .map_err(|_| format!("Invalid value {value} for configuration {name}: not a number"))?;
            if matches!(d.kind, Kind::Int) && (v > i32::MAX as i64) {
                return Err(format!("Invalid value {value} for configuration {name}: out of range"));
            }
            if v < d.min {
                return Err(format!(
                    "Invalid value {value} for configuration {name}: Value must be at least {}",
                    d.min
                ));
            }
        }
        Kind::List => {
            let items: Vec<&str> = value.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
            if items.is_empty() || items.iter().any(|i| !d.allowed.is_empty() && !d.allowed.contains(i)) {
                return Err(format!(
                    "Invalid value {value} for configuration {name}: items must be from: {}",
                    d.allowed.join(", ")
                ));
            }
        }
        Kind::String => {
            if !d.allowed.is_empty() && !d.allowed.contains(&value.trim()) {
                return Err(format!(
                    "Invalid value {value} for configuration {name}: String must be one of: {}",
                    d.allowed.join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// Effective value: the topic override, else the broker default.
pub fn effective(
    name: &str,
    overrides: &BTreeMap<String, String>,
    defaults: &BTreeMap<String, String>,
) -> (String, bool) {
    match overrides.get(name) {
        Some(v) => (v.clone(), true),
        None => (defaults.get(name).cloned().unwrap_or_default(), false),
    }
}

pub fn log_config(overrides: &BTreeMap<String, String>, defaults: &BTreeMap<String, String>) -> LogConfig {
    let get = |n: &str| effective(n, overrides, defaults).0;
    let num = |n: &str, fallback: i64| get(n).trim().parse::<i64>().unwrap_or(fallback);
    let base = LogConfig::default();
    LogConfig {
        segment_bytes: num("segment.bytes", base.segment_bytes as i64).max(1024) as u64,
        segment_ms: num("segment.ms", base.segment_ms),
        retention_ms: num("retention.ms", base.retention_ms),
        retention_bytes: num("retention.bytes", base.retention_bytes),
        max_message_bytes: num("max.message.bytes", base.max_message_bytes as i64).max(0) as usize,
        index_interval_bytes: num("index.interval.bytes", 4096).max(0) as u64,
        segment_index_bytes: num("segment.index.bytes", base.segment_index_bytes as i64).max(4096) as usize,
        compact: get("cleanup.policy").split(',').any(|p| p.trim() == "compact"),
        delete: get("cleanup.policy").split(',').any(|p| p.trim() == "delete"),
        delete_retention_ms: num("delete.retention.ms", base.delete_retention_ms),
        producer_id_expiration_ms: defaults
            .get("producer.id.expiration.ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(base.producer_id_expiration_ms),
        timestamp_type: if get("message.timestamp.type") == "LogAppendTime" {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        },
    }
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
        assert!(validate("message.timestamp.type", "LogAppendTime").is_ok());
        assert!(validate("message.timestamp.type", "Whenever").is_err());
        assert!(validate("no.such.config", "1").is_err());
        assert!(validate("cleanup.policy", "compact").is_ok());
        assert!(validate("cleanup.policy", "compact,delete").is_ok());
        assert!(validate("cleanup.policy", "shred").is_err());
        assert!(validate("cleanup.policy", "").is_err());
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
}

//! OpenMessaging Benchmark workload files (YAML), with the producer settings
//! OMB keeps in its driver files (acks, linger, compression) folded in, and
//! three additions: a rate relative to a measured maximum, a backlog to
//! consume from the start, and the configs of the topics it creates.

use std::path::Path;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    #[serde(default = "one")]
    pub topics: u32,
    pub partitions_per_topic: u32,
    pub message_size: usize,
    #[serde(default = "one")]
    pub producers_per_topic: u32,
    #[serde(default = "one")]
    pub subscriptions_per_topic: u32,
    #[serde(default = "one")]
    pub consumer_per_subscription: u32,
    /// Messages per second over all producers; 0 is as fast as possible.
    #[serde(default)]
    pub producer_rate: f64,
    /// Run at this fraction of the rate a short max-rate probe reaches.
    #[serde(default)]
    pub producer_rate_of_max: Option<f64>,
    pub test_duration_minutes: f64,
    /// Produced before the measurement and consumed from the start of the
    /// topic during it (a catch-up read).
    #[serde(default)]
    pub consumer_backlog_messages: u64,
    #[serde(default = "default_acks")]
    pub acks: String,
    #[serde(default)]
    pub linger_ms: u32,
    #[serde(default = "default_compression")]
    pub compression: String,
    /// Kafka topic configs of the topics the run creates, e.g.
    /// `compression.type: zstd` to measure the broker recompressing.
    #[serde(default)]
    pub topic_config: std::collections::BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}
fn default_acks() -> String {
    "all".into()
}
fn default_compression() -> String {
    "none".into()
}

impl Workload {
    pub fn load(path: &Path) -> anyhow::Result<Workload> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read workload {}: {e}", path.display()))?;
        let w: Workload =
            serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("invalid workload {}: {e}", path.display()))?;
        w.validate().map_err(|e| anyhow::anyhow!("invalid workload {}: {e}", path.display()))?;
        Ok(w)
    }

    fn validate(&self) -> Result<(), String> {
        if self.topics == 0 || self.partitions_per_topic == 0 {
            return Err("topics and partitionsPerTopic must be at least 1".into());
        }
        if self.message_size < 16 {
            return Err(format!(
                "messageSize must be at least 16 bytes (it carries a timestamp), got {}",
                self.message_size
            ));
        }
        if !matches!(self.acks.as_str(), "0" | "1" | "all" | "-1") {
            return Err(format!("acks must be 0, 1 or all, got {}", self.acks));
        }
        if !matches!(self.compression.as_str(), "none" | "gzip" | "snappy" | "lz4" | "zstd") {
            return Err(format!("unknown compression {}", self.compression));
        }
        if self.test_duration_minutes <= 0.0 || self.producer_rate < 0.0 {
            return Err("testDurationMinutes must be positive and producerRate not negative".into());
        }
        if self.producer_rate_of_max.is_some_and(|f| !(0.0..=1.0).contains(&f) || f == 0.0) {
            return Err("producerRateOfMax must be in (0, 1]".into());
        }
        Ok(())
    }

    /// A file-name friendly form of the name.
    pub fn slug(&self) -> String {
        let s: String =
            self.name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
        s.split('-').filter(|p| !p.is_empty()).collect::<Vec<_>>().join("-")
    }
}

/// This package's directory. Cargo sets it at run time for tests and `cargo run`; the
/// compile-time value is only the fallback, because a build cache shared by two checkouts can
/// hold a binary compiled in the other one, whose path may be gone.
pub fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The workload files (`*.yaml`) in `dir`, sorted; subdirectories such as
/// `diagnostic/` hold extra workloads that are run by name.
pub fn files_in(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut v: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_workloads_parse() {
        let dir = manifest_dir().join("workloads");
        let reference = files_in(&dir).unwrap();
        assert!(reference.len() >= 5);
        for f in reference.iter().chain(&files_in(&dir.join("diagnostic")).unwrap()) {
            let w = Workload::load(f).unwrap();
            assert!(!w.slug().is_empty());
        }
    }

    #[test]
    fn bad_workloads_are_refused() {
        let bad = "name: x\npartitionsPerTopic: 1\nmessageSize: 4\ntestDurationMinutes: 1\n";
        let w: Workload = serde_yaml::from_str(bad).unwrap();
        assert!(w.validate().unwrap_err().contains("messageSize"));
        let typo = "name: x\npartitionsPerTopic: 1\nmessageSize: 100\ntestDurationMinutes: 1\nacks: most\n";
        let w: Workload = serde_yaml::from_str(typo).unwrap();
        assert!(w.validate().is_err());
        assert!(serde_yaml::from_str::<Workload>("name: x\nunknownField: 1\n").is_err());
    }
}

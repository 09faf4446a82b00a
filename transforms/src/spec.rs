//! What a transform is, as deployed: its spec as the admin API takes it, and its registry record
//! in the internal topic (`__transforms`), which every node reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::engine::{Limits, DEFAULT_FUEL_PER_BATCH, DEFAULT_MEMORY_LIMIT};

/// The internal topic holding every transform's spec and module.
pub const REGISTRY_TOPIC: &str = "__transforms";
/// The internal topic of transforms' log lines (key: the transform's name).
pub const LOGS_TOPIC: &str = "__transform_logs";
/// Most outputs a transform may declare.
pub const MAX_OUTPUTS: usize = 8;
/// Most lookup tables a transform may declare.
pub const MAX_LOOKUPS: usize = 8;
/// Most bytes of a module.
pub const MAX_MODULE_BYTES: usize = 16 << 20;
const MAX_ENV: usize = 128;
const MAX_ENV_BYTES: usize = 64 << 10;

/// Where a transform starts reading an input partition it has no committed position on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Start {
    Named(NamedStart),
    Offset { offset: i64 },
    Timestamp { timestamp: i64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamedStart {
    Earliest,
    Latest,
}

impl Default for Start {
    fn default() -> Self {
        Start::Named(NamedStart::Latest)
    }
}

impl Start {
    /// The ListOffsets timestamp that finds it (-2 earliest, -1 latest), or the offset itself.
    pub fn list_offsets_spec(&self) -> Result<i64, i64> {
        match self {
            Start::Named(NamedStart::Earliest) => Ok(-2),
            Start::Named(NamedStart::Latest) => Ok(-1),
            Start::Timestamp { timestamp } => Ok(*timestamp),
            Start::Offset { offset } => Err(*offset),
        }
    }
}

/// A deploy request's body (PUT /v1/transforms/{name}).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    pub input: String,
    pub outputs: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub lookups: Vec<String>,
    #[serde(default)]
    pub start: Option<Start>,
    #[serde(default)]
    pub memory_limit_bytes: Option<u64>,
    #[serde(default)]
    pub fuel_per_batch: Option<u64>,
    /// The module, base64.
    pub module: String,
}

/// Running, or stopped on every partition (by `pause`, or by a failed batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Running,
    Paused,
}

/// A transform's record in the registry topic (key `t/<name>`); its module is under
/// `m/<sha256>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransformSpec {
    pub name: String,
    /// Fixed at the first deploy, kept by redeploys: names the transactional ids and the
    /// progress group, so a redeploy continues and a delete-then-deploy starts over.
    pub id: String,
    pub input: String,
    pub outputs: Vec<String>,
    pub lookups: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub start: Start,
    /// The start resolved per partition at deploy (latest and timestamps name the offsets as of
    /// the deploy, not as of whenever a runner starts).
    pub start_offsets: BTreeMap<i32, i64>,
    pub memory_limit_bytes: u64,
    pub fuel_per_batch: u64,
    pub module_sha256: String,
    pub module_size: u64,
    pub state: State,
    /// Why it was paused by a failure (None when paused by hand or running).
    pub error: Option<String>,
    pub deployed_ms: i64,
    /// Bumped by every change: runners restart when the version they run is not the newest.
    pub version: u64,
}

impl TransformSpec {
    pub fn limits(&self) -> Limits {
        Limits { memory_bytes: self.memory_limit_bytes, fuel_per_batch: self.fuel_per_batch }
    }

    /// The consumer group holding its progress.
    pub fn group(&self) -> String {
        format!("__fjord.transform.{}.{}", self.name, self.id)
    }

    /// The transactional id of its runner on `partition`.
    pub fn transactional_id(&self, partition: i32) -> String {
        format!("__fjord.transform.{}.{}.{partition}", self.name, self.id)
    }

    /// The environment its module sees: its own variables and FJORD_*.
    pub fn environment(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env.push(("FJORD_TRANSFORM".into(), self.name.clone()));
        env.push(("FJORD_INPUT".into(), self.input.clone()));
        env.push(("FJORD_OUTPUTS".into(), self.outputs.join(",")));
        env.push(("FJORD_LOOKUPS".into(), self.lookups.join(",")));
        env
    }

    pub fn registry_key(&self) -> Vec<u8> {
        spec_key(&self.name)
    }
}

pub fn spec_key(name: &str) -> Vec<u8> {
    format!("t/{name}").into_bytes()
}

pub fn module_key(sha256: &str) -> Vec<u8> {
    format!("m/{sha256}").into_bytes()
}

/// A registry record's meaning, from its key.
pub enum RegistryKey<'a> {
    Spec(&'a str),
    Module(&'a str),
    Unknown,
}

pub fn parse_key(key: &[u8]) -> RegistryKey<'_> {
    match std::str::from_utf8(key) {
        Ok(k) => match (k.strip_prefix("t/"), k.strip_prefix("m/")) {
            (Some(name), _) => RegistryKey::Spec(name),
            (_, Some(sha)) => RegistryKey::Module(sha),
            _ => RegistryKey::Unknown,
        },
        Err(_) => RegistryKey::Unknown,
    }
}

/// Checks a transform's name: it becomes part of group and transactional ids and of URLs.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 100 {
        return Err("a transform's name has 1 to 100 characters".into());
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err(format!("transform name {name:?} may hold only ASCII letters, digits, '.', '_' and '-'"));
    }
    Ok(())
}

/// The checks of a deploy request that need no cluster state: counts, names, limits, env.
pub fn check_request(name: &str, req: &DeployRequest) -> Result<Limits, String> {
    check_name(name)?;
    if req.outputs.is_empty() || req.outputs.len() > MAX_OUTPUTS {
        return Err(format!("a transform has 1 to {MAX_OUTPUTS} outputs, not {}", req.outputs.len()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for o in &req.outputs {
        if o == &req.input {
            return Err(format!("output {o} is the input topic: a transform would read its own output"));
        }
        if !seen.insert(o) {
            return Err(format!("output {o} is declared twice"));
        }
    }
    if req.lookups.len() > MAX_LOOKUPS {
        return Err(format!("a transform has at most {MAX_LOOKUPS} lookup tables"));
    }
    if req.env.len() > MAX_ENV {
        return Err(format!("at most {MAX_ENV} environment variables"));
    }
    let mut env_bytes = 0;
    for (k, v) in &req.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(format!("environment variable {k:?}: names are non-empty without '=' or NUL"));
        }
        if k.starts_with("FJORD_") {
            return Err(format!("environment variable {k}: names starting FJORD_ are set by the broker"));
        }
        env_bytes += k.len() + v.len();
    }
    if env_bytes > MAX_ENV_BYTES {
        return Err(format!("environment variables over {MAX_ENV_BYTES} bytes"));
    }
    if let Some(Start::Offset { offset }) = &req.start {
        if *offset < 0 {
            return Err(format!("start offset {offset} is negative"));
        }
    }
    let limits = Limits {
        memory_bytes: req.memory_limit_bytes.unwrap_or(DEFAULT_MEMORY_LIMIT),
        fuel_per_batch: req.fuel_per_batch.unwrap_or(DEFAULT_FUEL_PER_BATCH),
    };
    limits.check()?;
    Ok(limits)
}

/// The hex SHA-256 of a module (its registry key).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(outputs: &[&str]) -> DeployRequest {
        DeployRequest {
            input: "in".into(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            lookups: vec![],
            start: None,
            memory_limit_bytes: None,
            fuel_per_batch: None,
            module: String::new(),
        }
    }

    #[test]
    fn requests_are_checked_before_anything_is_written() {
        assert!(check_request("ok", &req(&["a"])).is_ok());
        assert!(check_request("ok", &req(&[])).unwrap_err().contains("1 to 8"));
        assert!(check_request("ok", &req(&["a"; 9])).unwrap_err().contains("1 to 8"));
        assert!(check_request("ok", &req(&["in"])).unwrap_err().contains("input"));
        assert!(check_request("ok", &req(&["a", "a"])).unwrap_err().contains("twice"));
        assert!(check_request("bad name", &req(&["a"])).is_err());
        let mut r = req(&["a"]);
        r.env.insert("FJORD_X".into(), "1".into());
        assert!(check_request("ok", &r).unwrap_err().contains("FJORD_"));
        let mut r = req(&["a"]);
        r.memory_limit_bytes = Some(1024);
        assert!(check_request("ok", &r).unwrap_err().contains("memory_limit_bytes"));
    }

    #[test]
    fn start_points_parse_as_the_api_documents() {
        let s: Start = serde_json::from_str(r#""earliest""#).unwrap();
        assert_eq!(s, Start::Named(NamedStart::Earliest));
        let s: Start = serde_json::from_str(r#"{"offset": 42}"#).unwrap();
        assert_eq!(s, Start::Offset { offset: 42 });
        let s: Start = serde_json::from_str(r#"{"timestamp": 1700000000000}"#).unwrap();
        assert_eq!(s, Start::Timestamp { timestamp: 1_700_000_000_000 });
        assert!(serde_json::from_str::<Start>(r#""soon""#).is_err());
    }

    #[test]
    fn registry_keys_round_trip() {
        assert!(matches!(parse_key(&spec_key("x")), RegistryKey::Spec("x")));
        assert!(matches!(parse_key(&module_key("ab")), RegistryKey::Module("ab")));
        assert!(matches!(parse_key(b"zz"), RegistryKey::Unknown));
    }
}

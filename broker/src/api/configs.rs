//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs for topics and
//! for this broker (whose dynamic configs are the topic defaults).

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::metadata::str;
use crate::config::{self, View};
use crate::server::Broker;
use crate::topic_config::{self, TOPIC_CONFIGS};
use crate::topics::TopicError;

const TOPIC: i8 = 2;
const BROKER: i8 = 4;

// ConfigSource values of DescribeConfigs.
const DYNAMIC_TOPIC: i8 = 1;
const DYNAMIC_BROKER: i8 = 2;
const DYNAMIC_DEFAULT_BROKER: i8 = 3;
const STATIC_BROKER: i8 = 4;
const DEFAULT: i8 = 5;

fn err(code: ResponseError, msg: impl Into<String>) -> TopicError {
    TopicError::new(code, msg)
}

struct Described {
    name: String,
    value: Option<String>,
    source: i8,
    read_only: bool,
    kind: i8,
    doc: String,
    synonyms: Vec<(String, String, i8)>,
}

impl Described {
    /// A writable config whose value and source are those of its first
    /// synonym (the most specific level that sets it).
    fn from_synonyms(name: &str, kind: topic_config::Kind, doc: String, synonyms: Vec<(String, String, i8)>) -> Self {
        let (value, source) = synonyms.first().map(|(_, v, s)| (Some(v.clone()), *s)).unwrap_or_default();
        Described { name: name.into(), value, source, read_only: false, kind: kind as i8, doc, synonyms }
    }
}

/// Kafka's documentation line, plus what Fjord does not do with it.
fn doc_of(doc: &str, effect: topic_config::Effect) -> String {
    match effect {
        topic_config::Effect::Applied => doc.to_string(),
        topic_config::Effect::Ignored(why) => format!("{doc} Accepted and stored, but ignored by Fjord: {why}."),
    }
}

/// The dynamic synonyms of a broker config stored under `key`: this
/// broker's value, then the cluster-wide one.
fn dynamic_synonyms(broker: &Broker, key: &str, name: &str) -> Vec<(String, String, i8)> {
    let mut out = Vec::new();
    for (per_node, source) in [(true, DYNAMIC_BROKER), (false, DYNAMIC_DEFAULT_BROKER)] {
        if let Some(v) = broker.topics.broker_config_layer(per_node).get(key) {
            out.push((name.to_string(), v.clone(), source));
        }
    }
    out
}

/// STATIC_BROKER_CONFIG if the key Kafka calls `kafka_name` was set (in
/// the file, a flag or a variable), whatever its value, else DEFAULT_CONFIG.
fn static_source(broker: &Broker, kafka_name: &str) -> i8 {
    match config::key_by_kafka_name(kafka_name) {
        Some(k) if broker.config.explicit.contains(k.name) => STATIC_BROKER,
        _ => DEFAULT,
    }
}

/// The broker-level synonyms of a topic config: the dynamic broker
/// values, then the static one.
fn broker_synonyms(broker: &Broker, d: &topic_config::ConfigDef) -> Vec<(String, String, i8)> {
    let name = d.broker_name.unwrap_or(d.name).to_string();
    let mut out = dynamic_synonyms(broker, d.name, &name);
    let v = broker.topics.static_defaults().get(d.name).cloned().unwrap_or_else(|| d.default.to_string());
    let source = static_source(broker, &name);
    out.push((name, v, source));
    out
}

fn describe_topic(broker: &Broker, name: &str) -> Result<Vec<Described>, TopicError> {
    let configs = topic_configs(broker, name)
        .ok_or_else(|| err(ResponseError::UnknownTopicOrPartition, format!("Topic '{name}' does not exist")))?;
    Ok(topic_entries(broker, &configs))
}

/// A topic's config overrides: a cluster's topics from the replicated metadata, this node's
/// own from its registry.
pub(crate) fn topic_configs(broker: &Broker, name: &str) -> Option<BTreeMap<String, String>> {
    if let Some(configs) = broker.cluster.as_ref().and_then(|c| c.read(|m| m.topic(name).map(|t| t.configs.clone()))) {
        return Some(configs);
    }
    broker.topics.topic(name).map(|m| m.configs)
}

/// Every topic config of a topic with these overrides, as DescribeConfigs
/// (and CreateTopics v5+) report them.
fn topic_entries(broker: &Broker, overrides: &BTreeMap<String, String>) -> Vec<Described> {
    TOPIC_CONFIGS
        .iter()
        .map(|d| {
            let mut synonyms = Vec::new();
            if let Some(v) = overrides.get(d.name) {
                synonyms.push((d.name.to_string(), v.clone(), DYNAMIC_TOPIC));
            }
            synonyms.extend(broker_synonyms(broker, d));
            Described::from_synonyms(d.name, d.kind, doc_of(d.doc, d.effect), synonyms)
        })
        .collect()
}

/// The configs CreateTopics v5+ returns for a new topic: value, source and
/// read-only flag of each, as DescribeConfigs would give them.
pub fn created_topic_configs(
    broker: &Broker,
    overrides: &BTreeMap<String, String>,
) -> Vec<create_topics_response::CreatableTopicConfigs> {
    topic_entries(broker, overrides)
        .into_iter()
        .map(|d| {
            mk!(create_topics_response::CreatableTopicConfigs {
                name: str(&d.name),
                value: d.value.as_deref().map(str),
                read_only: d.read_only,
                config_source: d.source,
                is_sensitive: false
            })
        })
        .collect()
}

fn check_broker_name(broker: &Broker, resource: &str) -> Result<(), TopicError> {
    if resource.is_empty() || resource == broker.node_id.to_string() {
        Ok(())
    } else {
        Err(err(ResponseError::InvalidRequest, format!("Broker {resource} is not this broker ({})", broker.node_id)))
    }
}

fn describe_broker(broker: &Broker, resource: &str) -> Result<Vec<Described>, TopicError> {
    check_broker_name(broker, resource)?;
    let c = &broker.config;
    let dynamic = broker.topics.dynamic_broker_configs();
    let mut out = Vec::new();
    // The static keys of the config table Kafka would show here.
    for k in config::KEYS {
        let View::ReadOnly(name, kind) = k.view else { continue };
        let value = match name {
            "listeners" => Some(format!("PLAINTEXT://{}", c.listen)),
            "advertised.listeners" => {
                Some(format!("PLAINTEXT://{}:{}", broker.advertised_host, broker.advertised_port))
            }
            _ => c.described_value(k),
        };
        // Kafka has no default node.id: it is always set, so static.
        let source = if name == "node.id" { STATIC_BROKER } else { static_source(broker, name) };
        out.push(Described {
            name: name.into(),
            value: value.clone(),
            source,
            read_only: true,
            kind: kind as i8,
            doc: k.doc_line(),
            synonyms: value.map(|v| (name.to_string(), v, source)).into_iter().collect(),
        });
    }
    // Topic defaults: dynamic, except the deprecated message format.
    for d in TOPIC_CONFIGS {
        let Some(name) = d.broker_name else { continue };
        let synonyms = broker_synonyms(broker, d);
        let (value, source) = synonyms.first().map(|(_, v, s)| (Some(v.clone()), *s)).unwrap_or_default();
        out.push(Described {
            name: name.into(),
            value,
            source,
            read_only: matches!(topic_config::broker_key(name), topic_config::BrokerKey::ReadOnly),
            kind: d.kind as i8,
            doc: doc_of(d.doc, d.effect),
            synonyms,
        });
    }
    for d in topic_config::DYNAMIC_BROKER_CONFIGS {
        let mut synonyms = dynamic_synonyms(broker, d.name, d.name);
        let fixed = config::key_by_kafka_name(d.name).and_then(|k| k.value(c));
        let v = fixed.unwrap_or_else(|| d.default.to_string());
        let source = static_source(broker, d.name);
        synonyms.push((d.name.to_string(), v, source));
        out.push(Described::from_synonyms(d.name, d.kind, doc_of(d.doc, d.effect), synonyms));
    }
    // Configs Fjord does not know, set at runtime: described as stored.
    for k in dynamic.keys() {
        if matches!(topic_config::broker_key(k), topic_config::BrokerKey::Unknown) && topic_config::def(k).is_none() {
            let synonyms = dynamic_synonyms(broker, k, k);
            let (value, source) = synonyms.first().map(|(_, v, s)| (Some(v.clone()), *s)).unwrap_or_default();
            out.push(Described {
                name: k.clone(),
                value,
                source,
                read_only: false,
                kind: 2,
                doc: "Not a config Fjord knows; stored as set.".into(),
                synonyms,
            });
        }
    }
    Ok(out)
}

pub async fn describe(
    broker: Arc<Broker>,
    h: &RequestHeader,
    req: DescribeConfigsRequest,
) -> Option<DescribeConfigsResponse> {
    let version = h.request_api_version;
    let mut results = Vec::new();
    for r in req.resources {
        let name = r.resource_name.to_string();
        let described = match r.resource_type {
            TOPIC => describe_topic(&broker, &name),
            BROKER => describe_broker(&broker, &name),
            t => Err(err(ResponseError::InvalidRequest, format!("Resource type {t} is not supported"))),
        };
        let mut res =
            mk!(DescribeConfigsResult { resource_type: r.resource_type, resource_name: r.resource_name.clone() });
        match described {
            Ok(list) => {
                // Kafka treats a null or empty key list as "all configs".
                let keys: Option<Vec<String>> =
                    r.configuration_keys.filter(|k| !k.is_empty()).map(|k| k.iter().map(|s| s.to_string()).collect());
                res.configs = list
                    .into_iter()
                    .filter(|d| keys.as_ref().is_none_or(|k| k.contains(&d.name)))
                    .map(|d| {
                        mk!(DescribeConfigsResourceResult {
                            name: str(&d.name),
                            value: d.value.as_deref().map(str),
                            read_only: d.read_only,
                            config_source: d.source,
                            is_sensitive: false,
                            synonyms: if req.include_synonyms {
                                d.synonyms
                                    .iter()
                                    .map(|(n, v, s)| {
                                        mk!(DescribeConfigsSynonym { name: str(n), value: Some(str(v)), source: *s })
                                    })
                                    .collect()
                            } else {
                                vec![]
                            },
                            config_type: if version >= 3 { d.kind } else { 0 },
                            documentation: if req.include_documentation { Some(str(&d.doc)) } else { None }
                        })
                    })
                    .collect();
            }
            Err(e) => {
                res.error_code = e.code.code();
                res.error_message = Some(str(&e.message));
            }
        }
        results.push(res);
    }
    Some(mk!(DescribeConfigsResponse { results: results }))
}

/// One requested change: name, operation (0 set, 1 delete, 2 append,
/// 3 subtract) and value.
type Change = (String, i8, Option<String>);

/// Applies changes to a set of overrides. `kind_of` says the type of a
/// (translated) name or refuses it; `validate` checks each final value.
fn apply(
    current: &BTreeMap<String, String>,
    changes: &[Change],
    replace_all: bool,
    kind_of: impl Fn(&str) -> Result<topic_config::Kind, TopicError>,
    validate: impl Fn(&str, &str) -> Result<(), String>,
) -> Result<BTreeMap<String, String>, TopicError> {
    let mut next = if replace_all { BTreeMap::new() } else { current.clone() };
    let mut seen = std::collections::HashSet::new();
    for (name, op, value) in changes {
        if !seen.insert(name.clone()) {
            return Err(err(ResponseError::InvalidRequest, format!("Config {name} appears more than once")));
        }
        let is_list = kind_of(name)? == topic_config::Kind::List;
        match (op, value) {
            (0, Some(v)) => {
                next.insert(name.clone(), v.clone());
            }
            (0, None) if replace_all => {}
            (1, _) => {
                next.remove(name);
            }
            (2 | 3, Some(v)) if is_list => {
                // As Kafka: a list with no value set starts from the config's
                // default (APPEND compact to an unset cleanup.policy gives
                // "delete,compact", and SUBTRACT compact then "delete").
                let base = next.get(name).map(String::as_str).or_else(|| static_default(name)).unwrap_or("");
                let mut items: Vec<String> =
                    base.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect();
                for item in v.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()) {
                    if *op == 2 && !items.contains(&item) {
                        items.push(item);
                    } else if *op == 3 {
                        items.retain(|x| *x != item);
                    }
                }
                next.insert(name.clone(), items.join(","));
            }
            (2 | 3, _) => {
                return Err(err(
                    ResponseError::InvalidConfig,
                    format!("Config value append/subtract is not allowed for config key {name}"),
                ));
            }
            (0, None) => {
                return Err(err(ResponseError::InvalidConfig, format!("Null value not supported for: {name}")))
            }
            (op, _) => return Err(err(ResponseError::InvalidConfig, format!("Unknown config operation {op}"))),
        }
    }
    for (k, v) in &next {
        validate(k, v).map_err(|m| err(ResponseError::InvalidConfig, m))?;
    }
    Ok(next)
}

fn topic_kind(name: &str) -> Result<topic_config::Kind, TopicError> {
    topic_config::def(name)
        .map(|d| d.kind)
        .ok_or_else(|| err(ResponseError::InvalidConfig, format!("Unknown topic config name: {name}")))
}

/// Translates broker config names to how `Topics` keys them (topic
/// defaults by their topic config name), refusing read-only ones with
/// Kafka's INVALID_REQUEST. One exception: the DELETE of a read-only name
/// `stored` holds, a value an older Fjord accepted before the name became
/// read-only, which is otherwise hidden and stuck.
fn translate_broker_changes(
    changes: Vec<Change>,
    stored: &BTreeMap<String, String>,
) -> Result<Vec<Change>, TopicError> {
    let mut read_only = Vec::new();
    let mut out = Vec::new();
    for (n, op, v) in changes {
        match topic_config::broker_key(&n) {
            topic_config::BrokerKey::ReadOnly if op == 1 && stored.contains_key(&n) => out.push((n, op, v)),
            topic_config::BrokerKey::ReadOnly => read_only.push(n),
            topic_config::BrokerKey::TopicDefault(d) => out.push((d.name.to_string(), op, v)),
            topic_config::BrokerKey::Dynamic(_) | topic_config::BrokerKey::Unknown => out.push((n, op, v)),
        }
    }
    if !read_only.is_empty() {
        return Err(err(
            ResponseError::InvalidRequest,
            format!("Cannot update these configs dynamically: {}", read_only.join(", ")),
        ));
    }
    Ok(out)
}

/// The default a config has when nothing sets it (topic configs by their
/// topic name, which is also how broker changes are keyed here).
fn static_default(key: &str) -> Option<&'static str> {
    topic_config::def(key)
        .map(|d| d.default)
        .or_else(|| topic_config::DYNAMIC_BROKER_CONFIGS.iter().find(|d| d.name == key).map(|d| d.default))
}

fn broker_kind(key: &str) -> Result<topic_config::Kind, TopicError> {
    Ok(topic_config::def(key)
        .map(|d| d.kind)
        .or_else(|| topic_config::DYNAMIC_BROKER_CONFIGS.iter().find(|d| d.name == key).map(|d| d.kind))
        .unwrap_or(topic_config::Kind::String))
}

fn alter_resource(
    broker: &Broker,
    rtype: i8,
    rname: &str,
    changes: Vec<Change>,
    replace_all: bool,
    validate_only: bool,
) -> Result<(), TopicError> {
    match rtype {
        TOPIC => {
            let current = topic_configs(broker, rname).ok_or_else(|| {
                err(ResponseError::UnknownTopicOrPartition, format!("Topic '{rname}' does not exist"))
            })?;
            let next = apply(&current, &changes, replace_all, topic_kind, topic_config::validate)?;
            topic_config::validate_combination(&next).map_err(|m| err(ResponseError::InvalidConfig, m))?;
            if !validate_only {
                let set: Vec<&String> = changes.iter().filter(|c| c.1 != 1).map(|c| &c.0).collect();
                let ignored = topic_config::ignored(set);
                if !ignored.is_empty() {
                    tracing::info!(topic = rname, ignored = %ignored.join(", "), "topic configs stored but not applied");
                }
                match broker.cluster.as_ref().filter(|c| c.partition_count(rname).is_some()) {
                    // Through the controller: every replica applies the committed change.
                    Some(cluster) => {
                        let resource = fjord_replication::controller::ConfigResource::Topic { name: rname.to_string() };
                        submit_change(cluster, resource, &current, &next)?;
                    }
                    None => broker.topics.set_topic_configs(rname, next)?,
                }
            }
            Ok(())
        }
        BROKER => {
            check_broker_name(broker, rname)?;
            // Named by its id: this broker's own; named "": the cluster's default.
            let per_node = !rname.is_empty();
            // In a cluster the metadata holds both layers (every node mirrors them).
            let layer = match &broker.cluster {
                Some(c) => {
                    let me = broker.node_id;
                    c.read(|m| {
                        if per_node {
                            m.broker_configs(me).cloned().unwrap_or_default()
                        } else {
                            m.cluster_configs().clone()
                        }
                    })
                }
                None => broker.topics.broker_config_layer(per_node),
            };
            let translated = translate_broker_changes(changes, &layer)?;
            // Kafka answers INVALID_REQUEST, not INVALID_CONFIG, for a broker
            // config it cannot apply (KAFKA-13609 keeps it so).
            let next = apply(&layer, &translated, replace_all, broker_kind, topic_config::validate_broker).map_err(
                |e| match e.code {
                    ResponseError::InvalidConfig => err(ResponseError::InvalidRequest, e.message),
                    _ => e,
                },
            )?;
            if !validate_only {
                let set: Vec<&String> = translated.iter().filter(|c| c.1 != 1).map(|c| &c.0).collect();
                let ignored = topic_config::ignored(set);
                if !ignored.is_empty() {
                    tracing::info!(ignored = %ignored.join(", "), "broker configs stored but not applied");
                }
                if let Some(cluster) = &broker.cluster {
                    let node_id = per_node.then_some(broker.node_id);
                    let resource = fjord_replication::controller::ConfigResource::Broker { node_id };
                    submit_change(cluster, resource, &layer, &next)?;
                }
                // At once here; the other nodes follow the metadata (`broker_configs_loop`).
                broker.topics.set_broker_configs(per_node, next)?;
            }
            Ok(())
        }
        t => Err(err(ResponseError::InvalidRequest, format!("Resource type {t} is not supported"))),
    }
}

/// Submits the change from `current` to `next` configs of `resource` to the controller (keys
/// set or changed, keys removed as None) and waits for it to commit. Called on a blocking
/// thread (`alter_all`), so the wait holds no runtime worker.
fn submit_change(
    cluster: &crate::cluster::ClusterNode,
    resource: fjord_replication::controller::ConfigResource,
    current: &BTreeMap<String, String>,
    next: &BTreeMap<String, String>,
) -> Result<(), TopicError> {
    let mut changes: BTreeMap<String, Option<String>> =
        next.iter().filter(|(k, v)| current.get(*k) != Some(*v)).map(|(k, v)| (k.clone(), Some(v.clone()))).collect();
    changes.extend(current.keys().filter(|k| !next.contains_key(*k)).map(|k| (k.clone(), None)));
    if changes.is_empty() {
        return Ok(());
    }
    let req = fjord_replication::controller::Request::AlterConfigs { resource, changes };
    tokio::runtime::Handle::current().block_on(cluster.submit(req))?;
    Ok(())
}

/// Applies each resource's changes off the runtime; the result per
/// resource is its error, if any.
async fn alter_all(
    broker: Arc<Broker>,
    resources: Vec<(i8, StrBytes, Vec<Change>)>,
    replace_all: bool,
    validate_only: bool,
) -> Vec<(i8, StrBytes, Option<TopicError>)> {
    super::blocking(move || {
        resources
            .into_iter()
            .map(|(rtype, name, changes)| {
                let out = alter_resource(&broker, rtype, &name, changes, replace_all, validate_only);
                (rtype, name, out.err())
            })
            .collect()
    })
    .await
}

pub async fn alter(broker: Arc<Broker>, _h: &RequestHeader, req: AlterConfigsRequest) -> Option<AlterConfigsResponse> {
    let resources = req
        .resources
        .into_iter()
        .map(|r| {
            let changes =
                r.configs.iter().map(|c| (c.name.to_string(), 0i8, c.value.as_ref().map(|v| v.to_string()))).collect();
            (r.resource_type, r.resource_name, changes)
        })
        .collect();
    let responses = alter_all(broker, resources, true, req.validate_only)
        .await
        .into_iter()
        .map(|(resource_type, resource_name, err)| {
            mk!(alter_configs_response::AlterConfigsResourceResponse {
                resource_type: resource_type,
                resource_name: resource_name,
                error_code: err.as_ref().map_or(0, |e| e.code.code()),
                error_message: err.map(|e| str(&e.message))
            })
        })
        .collect();
    Some(mk!(AlterConfigsResponse { responses: responses }))
}

pub async fn incremental_alter(
    broker: Arc<Broker>,
    _h: &RequestHeader,
    req: IncrementalAlterConfigsRequest,
) -> Option<IncrementalAlterConfigsResponse> {
    let resources = req
        .resources
        .into_iter()
        .map(|r| {
            let changes = r
                .configs
                .iter()
                .map(|c| (c.name.to_string(), c.config_operation, c.value.as_ref().map(|v| v.to_string())))
                .collect();
            (r.resource_type, r.resource_name, changes)
        })
        .collect();
    let responses = alter_all(broker, resources, false, req.validate_only)
        .await
        .into_iter()
        .map(|(resource_type, resource_name, err)| {
            mk!(incremental_alter_configs_response::AlterConfigsResourceResponse {
                resource_type: resource_type,
                resource_name: resource_name,
                error_code: err.as_ref().map_or(0, |e| e.code.code()),
                error_message: err.map(|e| str(&e.message))
            })
        })
        .collect();
    Some(mk!(IncrementalAlterConfigsResponse { responses: responses }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list_op(current: &BTreeMap<String, String>, op: i8, value: &str) -> BTreeMap<String, String> {
        let changes = vec![("cleanup.policy".to_string(), op, Some(value.to_string()))];
        apply(current, &changes, false, topic_kind, topic_config::validate).expect("applies")
    }

    #[test]
    fn append_and_subtract_on_an_unset_list_start_from_its_default() {
        let appended = list_op(&BTreeMap::new(), 2, "compact");
        assert_eq!(appended["cleanup.policy"], "delete,compact");
        let subtracted = list_op(&appended, 3, "compact");
        assert_eq!(subtracted["cleanup.policy"], "delete");
        // A value that is set is the base, not the default.
        let set = BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]);
        assert_eq!(list_op(&set, 2, "delete")["cleanup.policy"], "compact,delete");
    }
}

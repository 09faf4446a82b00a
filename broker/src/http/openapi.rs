//! The OpenAPI 3.0 document of the admin API, served at `/v1/openapi.json`. Written by hand next
//! to the views it describes (`views.rs`); the compat suite checks every response the API gives
//! against it (schemathesis), so the two cannot drift apart unnoticed.

use serde_json::{json, Value};

fn int() -> Value {
    json!({"type": "integer"})
}

fn nullable(mut v: Value) -> Value {
    v["nullable"] = json!(true);
    v
}

fn ints() -> Value {
    json!({"type": "array", "items": {"type": "integer"}})
}

fn string() -> Value {
    json!({"type": "string"})
}

fn boolean() -> Value {
    json!({"type": "boolean"})
}

/// An object schema whose every listed property is required and no other is allowed.
fn object(props: &[(&str, Value)]) -> Value {
    let required: Vec<&str> = props.iter().map(|(k, _)| *k).collect();
    let properties: serde_json::Map<String, Value> = props.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn array_of(name: &str) -> Value {
    json!({"type": "array", "items": reference(name)})
}

fn json_response(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn error_response(description: &str) -> Value {
    json_response(description, reference("Error"))
}

fn schemas() -> Value {
    json!({
        "Error": object(&[("error", string())]),
        "Health": object(&[
            ("status", json!({"type": "string", "enum": ["up"]})),
            ("node_id", int()),
            ("version", string()),
            ("uptime_seconds", json!({"type": "integer", "minimum": 0})),
        ]),
        "Check": object(&[("name", string()), ("ok", boolean()), ("detail", string())]),
        "Readiness": object(&[("ready", boolean()), ("checks", array_of("Check"))]),
        "Cluster": object(&[
            ("cluster_id", string()),
            ("node_id", int()),
            ("mode", json!({"type": "string", "enum": ["single-node", "cluster"]})),
            ("controller_id", nullable(int())),
            ("brokers", int()),
            ("live_brokers", int()),
            ("topics", int()),
            ("partitions", int()),
            ("under_replicated_partitions", int()),
            ("offline_partitions", int()),
            ("reassigning_partitions", int()),
        ]),
        "Broker": object(&[
            ("node_id", int()),
            ("host", string()),
            ("port", int()),
            ("rack", nullable(string())),
            ("fenced", boolean()),
            ("controller_voter", boolean()),
            ("is_controller", boolean()),
        ]),
        "Topic": object(&[
            ("name", string()),
            ("id", json!({"type": "string", "format": "uuid"})),
            ("internal", boolean()),
            ("partition_count", int()),
            ("replication_factor", int()),
        ]),
        "TopicDetail": object(&[
            ("name", string()),
            ("id", json!({"type": "string", "format": "uuid"})),
            ("internal", boolean()),
            ("replication_factor", int()),
            ("configs", json!({"type": "object", "additionalProperties": {"type": "string"}})),
            ("partitions", array_of("Partition")),
        ]),
        "Reassignment": object(&[("target", ints()), ("adding", ints()), ("removing", ints())]),
        "LocalReplica": object(&[
            ("log_start_offset", int()),
            ("high_watermark", int()),
            ("log_end_offset", int()),
            ("size_bytes", int()),
            ("remote", nullable(reference("RemoteTier"))),
        ]),
        "RemoteTier": object(&[
            ("segments", int()),
            ("start_offset", nullable(int())),
            ("end_offset", nullable(int())),
            ("size_bytes", int()),
            ("manifest_version", int()),
            ("upload_lag_segments", int()),
            ("upload_lag_bytes", int()),
        ]),
        "Partition": object(&[
            ("topic", string()),
            ("partition", int()),
            ("leader", nullable(int())),
            ("leader_epoch", int()),
            ("replicas", ints()),
            ("isr", ints()),
            ("under_replicated", boolean()),
            ("offline", boolean()),
            ("reassignment", nullable(reference_object("Reassignment"))),
            ("local", nullable(reference_object("LocalReplica"))),
        ]),
        "GroupSummary": object(&[
            ("group_id", string()),
            ("type", json!({"type": "string", "enum": ["classic", "consumer"]})),
            ("protocol_type", string()),
            ("state", string()),
            ("members", int()),
        ]),
        "Member": object(&[
            ("member_id", string()),
            ("instance_id", nullable(string())),
            ("client_id", string()),
            ("client_host", string()),
            ("assignment", json!({"type": "object", "additionalProperties": ints()})),
        ]),
        "Offset": object(&[
            ("topic", string()),
            ("partition", int()),
            ("committed_offset", int()),
            ("end_offset", nullable(int())),
            ("lag", nullable(int())),
        ]),
        "Group": object(&[
            ("group_id", string()),
            ("type", json!({"type": "string", "enum": ["classic", "consumer"]})),
            ("protocol_type", string()),
            ("state", string()),
            ("members", array_of("Member")),
            ("offsets", array_of("Offset")),
            ("total_lag", int()),
        ]),
        "TransformStart": {"oneOf": [
            {"type": "string", "enum": ["earliest", "latest"]},
            object(&[("offset", json!({"type": "integer", "minimum": 0}))]),
            object(&[("timestamp", int())]),
        ]},
        "DeployRequest": {
            "type": "object",
            "properties": {
                "input": string(),
                "outputs": {"type": "array", "items": string(), "minItems": 1, "maxItems": 8},
                "env": {"type": "object", "additionalProperties": string()},
                "lookups": {"type": "array", "items": string(), "maxItems": 8},
                "start": reference("TransformStart"),
                "memory_limit_bytes": json!({"type": "integer", "minimum": 262144, "maximum": 1073741824}),
                "fuel_per_batch": json!({"type": "integer", "minimum": 1}),
                "module": {"type": "string", "format": "byte", "description": "the .wasm module, base64"},
            },
            "required": ["input", "outputs", "module"],
            "additionalProperties": false,
        },
        "TransformPartition": object(&[
            ("partition", int()),
            ("leader", nullable(int())),
            ("committed_offset", nullable(int())),
            ("end_offset", nullable(int())),
            ("lag", nullable(int())),
        ]),
        "TransformModule": object(&[("sha256", string()), ("size_bytes", int())]),
        "Transform": object(&[
            ("name", string()),
            ("id", string()),
            ("input", string()),
            ("outputs", json!({"type": "array", "items": string()})),
            ("lookups", json!({"type": "array", "items": string()})),
            ("env", json!({"type": "object", "additionalProperties": string()})),
            ("state", json!({"type": "string", "enum": ["running", "paused"]})),
            ("error", nullable(string())),
            ("module", reference("TransformModule")),
            ("memory_limit_bytes", int()),
            ("fuel_per_batch", int()),
            ("start", reference("TransformStart")),
            ("deployed_ms", int()),
            ("partitions", array_of("TransformPartition")),
        ]),
        "TransformLog": object(&[
            ("timestamp", int()),
            ("level", json!({"type": "string", "enum": ["debug", "info", "warn", "error"]})),
            ("partition", nullable(int())),
            ("message", string()),
        ]),
        "Deleted": object(&[("deleted", string())]),
        "DebugBundle": object(&[
            ("generated_at_ms", int()),
            ("node_id", int()),
            ("version", string()),
            ("config", json!({"type": "object", "additionalProperties": nullable(string())})),
            ("readiness", reference("Readiness")),
            ("cluster", reference("Cluster")),
            ("brokers", array_of("Broker")),
            ("metrics", string()),
            ("logs", json!({"type": "array", "items": {"type": "string"}})),
        ]),
    })
}

/// A `$ref` that may be made nullable: OpenAPI 3.0 ignores siblings of `$ref`, so the reference
/// sits inside `allOf`.
fn reference_object(name: &str) -> Value {
    json!({"type": "object", "allOf": [reference(name)]})
}

fn get(summary: &str, responses: Value) -> Value {
    json!({"get": {"summary": summary, "responses": responses}})
}

fn get_with(summary: &str, parameters: Value, responses: Value) -> Value {
    json!({"get": {"summary": summary, "parameters": parameters, "responses": responses}})
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string"}})
}

/// A POST that changes one transform's state and answers its view.
fn transform_action(summary: &str, done: &str) -> Value {
    json!({"post": {
        "summary": summary,
        "parameters": [path_param("name", "transform name")],
        "responses": {
            "200": json_response(done, reference("Transform")),
            "404": error_response("no such transform"),
            "503": error_response("the registry cannot be written now; try again"),
        },
    }})
}

pub fn document() -> String {
    let doc = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Fjord admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Health, readiness and the cluster as one node sees it, and WASM \
                transforms. Kafka's own operations (creating topics, resetting offsets) stay on the \
                Kafka protocol."
        },
        "paths": {
            "/metrics": {"get": {
                "summary": "Prometheus metrics (text exposition format)",
                "responses": {"200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}
            }},
            "/v1/health": get("Liveness: the process is up", json!({"200": json_response("up", reference("Health"))})),
            "/v1/ready": get("Readiness: joined the cluster and caught up", json!({
                "200": json_response("ready", reference("Readiness")),
                "503": json_response("not ready yet; the failing checks say why", reference("Readiness")),
            })),
            "/v1/cluster": get("The cluster in numbers", json!({"200": json_response("cluster", reference("Cluster"))})),
            "/v1/brokers": get("Registered brokers", json!({"200": json_response("brokers", array_of("Broker"))})),
            "/v1/topics": get("Topics", json!({"200": json_response("topics", array_of("Topic"))})),
            "/v1/topics/{name}": get_with("One topic, its configs and partitions",
                json!([path_param("name", "topic name")]),
                json!({
                    "200": json_response("the topic", reference("TopicDetail")),
                    "404": error_response("no such topic"),
                })),
            "/v1/partitions": get_with("Partitions, optionally of one topic or in one state",
                json!([
                    {"name": "topic", "in": "query", "required": false, "schema": {"type": "string"},
                     "description": "only this topic's partitions"},
                    {"name": "state", "in": "query", "required": false,
                     "schema": {"type": "string", "enum": ["all", "under-replicated", "offline", "reassigning"]},
                     "description": "only partitions in this state"},
                ]),
                json!({
                    "200": json_response("partitions", array_of("Partition")),
                    "400": error_response("unknown state"),
                    "404": error_response("no such topic"),
                })),
            "/v1/groups": get("Consumer groups this node coordinates",
                json!({"200": json_response("groups", array_of("GroupSummary"))})),
            "/v1/groups/{id}": get_with("One group this node coordinates: members, offsets and lag",
                json!([path_param("id", "group id")]),
                json!({
                    "200": json_response("the group", reference("Group")),
                    "404": error_response("not coordinated here (the message names the node that does)"),
                })),
            "/v1/debug/bundle": get("Config (secrets redacted), readiness, metrics and recent logs, for support",
                json!({"200": json_response("the bundle", reference("DebugBundle"))})),
            "/v1/transforms": get("WASM transforms (transforms/ABI.md), with each input partition's progress",
                json!({
                    "200": json_response("transforms", array_of("Transform")),
                    "503": error_response("the broker is starting"),
                })),
            "/v1/transforms/{name}": {
                "parameters": [path_param("name", "transform name")],
                "get": {"summary": "One transform: settings, module, state (and why it paused), progress", "responses": {
                    "200": json_response("the transform", reference("Transform")),
                    "404": error_response("no such transform"),
                    "503": error_response("the broker is starting"),
                }},
                "put": {
                    "summary": "Deploys a transform, or redeploys one (it keeps its progress)",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": reference("DeployRequest")}}},
                    "responses": {
                        "200": json_response("deployed", reference("Transform")),
                        "400": error_response("refused: what is wrong with the request or the module"),
                        "503": error_response("the registry cannot be written now; try again"),
                    },
                },
                "delete": {"summary": "Deletes a transform (its outputs stay)", "responses": {
                    "200": json_response("deleted", reference("Deleted")),
                    "404": error_response("no such transform"),
                    "503": error_response("the registry cannot be written now; try again"),
                }},
            },
            "/v1/transforms/{name}/pause": transform_action(
                "Stops a transform on every partition (its progress is kept)", "paused"),
            "/v1/transforms/{name}/resume": transform_action(
                "Starts a paused transform from its last committed position", "running"),
            "/v1/transforms/{name}/logs": get_with("A transform's newest log lines, oldest first",
                json!([
                    path_param("name", "transform name"),
                    {"name": "limit", "in": "query", "required": false,
                     "schema": {"type": "integer", "minimum": 1, "maximum": 10000},
                     "description": "how many lines (default 100)"},
                ]),
                json!({
                    "200": json_response("log lines", array_of("TransformLog")),
                    "400": error_response("bad limit"),
                    "404": error_response("no such transform"),
                    "503": error_response("the logs cannot be read now"),
                })),
            "/v1/openapi.json": {"get": {
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.0", "content": {"application/json": {"schema": {"type": "object"}}}}}
            }},
        },
        "components": {"schemas": schemas()},
    });
    doc.to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_reference_resolves() {
        let doc: serde_json::Value = serde_json::from_str(&super::document()).unwrap();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("#/components/schemas/").skip(1) {
            let name: String = part.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
            assert!(schemas.contains_key(&name), "{name} is referenced but not defined");
        }
    }
}

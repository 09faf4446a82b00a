//! The admin HTTP API on `admin_listen`: Prometheus metrics, liveness and readiness probes, the
//! cluster's brokers, topics, partitions and groups as JSON, a debug bundle for support, and the
//! OpenAPI document that describes all of it (`openapi.rs`, checked against what is served by
//! the compat suite). Kafka things stay on the Kafka protocol; this is for what Kafka has no API
//! for, and for tools that speak HTTP (probes, scrapers, dashboards).

mod openapi;
mod transforms;
pub mod views;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::server::Broker;

/// Histogram buckets, in seconds, for every latency the broker records: from a page-cache read
/// (well under a millisecond) to a request that waited out a long poll or an election.
const BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The process's one Prometheus recorder (the `metrics` facade has one global recorder).
static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

fn recorder() -> anyhow::Result<&'static PrometheusHandle> {
    if let Some(h) = RECORDER.get() {
        return Ok(h);
    }
    let handle = PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .map_err(|e| anyhow::anyhow!("metrics buckets: {e}"))?
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    Ok(RECORDER.get_or_init(|| handle))
}

/// Binds `addr` and serves the admin API until shutdown. Returns the bound address (port 0
/// picks a free one) and the server's task.
pub async fn start(
    broker: Arc<Broker>,
    addr: &str,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, Vec<JoinHandle<()>>)> {
    let addr: SocketAddr = addr.parse().map_err(|e| anyhow::anyhow!("bad admin_listen {addr}: {e}"))?;
    STARTED.get_or_init(std::time::Instant::now);
    let handle = recorder()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on admin_listen {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let app = router(broker.clone());
    let mut stop = shutdown.clone();
    let server = tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
            tracing::warn!(error = %e, "admin API stopped");
        }
    });
    // Histograms keep their samples until upkeep drains them into buckets.
    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => handle.run_upkeep(),
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    });
    let elections = tokio::spawn(count_elections(broker.clone(), broker_shutdown(&broker)));
    tracing::info!(%local, "admin API listening");
    Ok((local, vec![server, upkeep, elections]))
}

fn broker_shutdown(broker: &Arc<Broker>) -> impl std::future::Future<Output = ()> + Send + 'static {
    let broker = broker.clone();
    async move { broker.shutting_down().await }
}

fn router(broker: Arc<Broker>) -> Router {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/health", get(health))
        .route("/v1/ready", get(ready))
        .route("/v1/cluster", get(cluster))
        .route("/v1/brokers", get(brokers))
        .route("/v1/topics", get(topics))
        .route("/v1/topics/{name}", get(topic))
        .route("/v1/partitions", get(partitions))
        .route("/v1/groups", get(groups))
        .route("/v1/groups/{id}", get(group))
        .route("/v1/debug/bundle", get(debug_bundle))
        .route("/v1/openapi.json", get(openapi));
    transforms::routes(router).fallback(not_found).with_state(broker)
}

type B = State<Arc<Broker>>;

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody { error: message.into() })).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint (the API is described at /v1/openapi.json)")
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    node_id: i32,
    version: &'static str,
    uptime_seconds: u64,
}

static STARTED: OnceLock<std::time::Instant> = OnceLock::new();

/// Liveness: the process is up and its runtime answers.
async fn health(State(b): B) -> Json<Health> {
    Json(Health {
        status: "up",
        node_id: b.node_id,
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: STARTED.get_or_init(std::time::Instant::now).elapsed().as_secs(),
    })
}

#[derive(Serialize)]
pub struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

#[derive(Serialize)]
pub struct Readiness {
    ready: bool,
    checks: Vec<Check>,
}

/// Whether this node should get traffic: a single node once its logs are open (the API starts
/// after that); a cluster node once it has joined (its registration applied, unfenced), knows
/// the controller quorum's leader, and every partition replica it holds has caught up.
pub fn readiness(b: &Broker) -> Readiness {
    let mut checks = vec![Check { name: "logs_open", ok: true, detail: "every partition log is open".into() }];
    if let Some(c) = &b.cluster {
        let joined = c.joined();
        checks.push(Check {
            name: "joined",
            ok: joined,
            detail: if joined {
                "this process's registration is applied and unfenced".into()
            } else {
                "waiting for this process's registration to be applied and unfenced".into()
            },
        });
        let controller = c.controller_id();
        checks.push(Check {
            name: "controller_known",
            ok: controller >= 0,
            detail: if controller >= 0 {
                format!("node {controller} leads the controller quorum")
            } else {
                "no controller quorum leader is known".into()
            },
        });
        let lagging = c.lagging_replicas();
        let names: Vec<String> = lagging
            .iter()
            .take(10)
            .map(|(g, why)| {
                let name = if *g == fjord_replication::controller::CONTROLLER_GROUP {
                    Some("the controller metadata log".to_string())
                } else {
                    c.read(|m| m.partition(*g).map(|p| format!("{}-{}", p.topic, p.index)))
                };
                format!("{}: {why}", name.unwrap_or_else(|| format!("group {g}")))
            })
            .collect();
        checks.push(Check {
            name: "replicas_caught_up",
            ok: lagging.is_empty(),
            detail: if lagging.is_empty() {
                "the metadata log and every replica on this node have caught up with their leaders".into()
            } else {
                format!("{} logs have not caught up: {}", lagging.len(), names.join("; "))
            },
        });
    }
    Readiness { ready: checks.iter().all(|c| c.ok), checks }
}

async fn ready(State(b): B) -> Response {
    let r = readiness(&b);
    let status = if r.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(r)).into_response()
}

async fn cluster(State(b): B) -> Json<views::ClusterView> {
    Json(views::cluster(&b))
}

async fn brokers(State(b): B) -> Json<Vec<views::BrokerView>> {
    Json(views::brokers(&b))
}

async fn topics(State(b): B) -> Json<Vec<views::TopicView>> {
    Json(views::topics(&b))
}

async fn topic(State(b): B, Path(name): Path<String>) -> Response {
    match views::topic(&b, &name) {
        Some(t) => Json(t).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("topic {name:?} does not exist")),
    }
}

/// `?topic=` keeps one topic's partitions; `?state=` keeps those under-replicated, offline
/// (no live leader) or reassigning.
async fn partitions(State(b): B, Query(q): Query<HashMap<String, String>>) -> Response {
    let state = q.get("state").map(String::as_str);
    let keep: fn(&views::PartitionView) -> bool = match state {
        None | Some("all") => |_| true,
        Some("under-replicated") => |p| p.under_replicated,
        Some("offline") => |p| p.offline,
        Some("reassigning") => |p| p.reassignment.is_some(),
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("state {other:?} is not one of all, under-replicated, offline, reassigning"),
            )
        }
    };
    let topic = q.get("topic").map(String::as_str);
    if let Some(t) = topic {
        if !views::topics(&b).iter().any(|v| v.name == t) {
            return error(StatusCode::NOT_FOUND, format!("topic {t:?} does not exist"));
        }
    }
    Json(views::partitions(&b, topic).into_iter().filter(keep).collect::<Vec<_>>()).into_response()
}

async fn groups(State(b): B) -> Json<Vec<views::GroupSummary>> {
    Json(views::groups(&b))
}

async fn group(State(b): B, Path(id): Path<String>) -> Response {
    match views::group(&b, &id) {
        Some(g) => Json(g).into_response(),
        None => {
            let hint = match views::coordinator_of(&b, &id) {
                Some(n) if n != b.node_id => format!(" here: node {n} coordinates it, ask its admin API"),
                _ => String::new(),
            };
            error(StatusCode::NOT_FOUND, format!("group {id:?} is not known{hint}"))
        }
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi::document()).into_response()
}

/// Prometheus text: the recorded metrics, then the gauges worked out at scrape time from the
/// broker's state (so they never go stale when a group or partition goes away).
async fn metrics(State(b): B) -> Response {
    let mut text = RECORDER.get().map(|h| h.render()).unwrap_or_default();
    scrape_gauges(&b, &mut text);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[derive(Serialize)]
struct Bundle {
    generated_at_ms: i64,
    node_id: i32,
    version: &'static str,
    /// Every config key's value; keys that may hold secrets are shown as `[redacted]`.
    config: std::collections::BTreeMap<&'static str, Option<String>>,
    readiness: Readiness,
    cluster: views::ClusterView,
    brokers: Vec<views::BrokerView>,
    metrics: String,
    /// The most recent log lines, oldest first.
    logs: Vec<String>,
}

/// Names of keys whose values are not shown (credentials, when the TLS/SASL and S3 settings
/// add them).
fn secret(name: &str) -> bool {
    ["password", "secret", "credential", "token", "key"].iter().any(|w| name.contains(w))
}

async fn debug_bundle(State(b): B) -> Json<Bundle> {
    let config = crate::config::KEYS
        .iter()
        .map(|k| {
            let v = k.value(&b.config);
            (k.name, if secret(k.name) && v.is_some() { Some("[redacted]".to_string()) } else { v })
        })
        .collect();
    let mut metrics = RECORDER.get().map(|h| h.render()).unwrap_or_default();
    scrape_gauges(&b, &mut metrics);
    Json(Bundle {
        generated_at_ms: crate::server::now_ms(),
        node_id: b.node_id,
        version: env!("CARGO_PKG_VERSION"),
        config,
        readiness: readiness(&b),
        cluster: views::cluster(&b),
        brokers: views::brokers(&b),
        metrics,
        logs: crate::logring::recent(),
    })
}

/// A label value in Prometheus's text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn gauge_header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
}

fn scrape_gauges(b: &Broker, out: &mut String) {
    let parts = views::partitions(b, None);
    let me = b.node_id;
    let led: Vec<&views::PartitionView> = parts.iter().filter(|p| p.leader == Some(me) && !p.offline).collect();
    gauge_header(out, "fjord_ready", "1 when this node is ready for traffic (/v1/ready)");
    let _ = writeln!(out, "fjord_ready {}", u8::from(readiness(b).ready));
    gauge_header(out, "fjord_leader_partitions", "partitions this node leads");
    let _ = writeln!(out, "fjord_leader_partitions {}", led.len());
    gauge_header(
        out,
        "fjord_under_replicated_partitions",
        "partitions this node leads with fewer in-sync replicas than replicas",
    );
    let _ = writeln!(out, "fjord_under_replicated_partitions {}", led.iter().filter(|p| p.under_replicated).count());
    gauge_header(
        out,
        "fjord_offline_partitions",
        "partitions of the cluster without a live leader, as this node sees them",
    );
    let _ = writeln!(out, "fjord_offline_partitions {}", parts.iter().filter(|p| p.offline).count());
    let controller = match &b.cluster {
        Some(c) => c.controller.leader() == Some(c.node_id()),
        None => true,
    };
    gauge_header(out, "fjord_active_controller", "1 on the node leading the controller quorum");
    let _ = writeln!(out, "fjord_active_controller {}", u8::from(controller));

    gauge_header(out, "fjord_consumer_group_lag", "committed offset's distance to the high watermark, per partition");
    let mut sums = Vec::new();
    for g in views::groups(b) {
        let detail = views::group_detail(b, g);
        for o in &detail.offsets {
            if let Some(lag) = o.lag {
                let _ = writeln!(
                    out,
                    "fjord_consumer_group_lag{{group=\"{}\",topic=\"{}\",partition=\"{}\"}} {lag}",
                    label(&detail.group_id),
                    label(&o.topic),
                    o.partition
                );
            }
        }
        sums.push((detail.group_id, detail.total_lag));
    }
    gauge_header(out, "fjord_consumer_group_lag_sum", "a group's lag summed over its partitions");
    for (group, lag) in sums {
        let _ = writeln!(out, "fjord_consumer_group_lag_sum{{group=\"{}\"}} {lag}", label(&group));
    }

    let dir = b.config.data_dir.display().to_string();
    let used: u64 = match &b.cluster {
        Some(c) => c.replica_logs().iter().map(|l| l.size_bytes()).sum::<u64>(),
        None => 0,
    } + b.topics.all_logs().iter().map(|l| l.size_bytes()).sum::<u64>();
    gauge_header(out, "fjord_data_dir_log_bytes", "bytes of partition logs in the data dir");
    let _ = writeln!(out, "fjord_data_dir_log_bytes{{dir=\"{}\"}} {used}", label(&dir));
    if let Some((free, total)) = disk_space(&b.config.data_dir) {
        gauge_header(out, "fjord_data_dir_free_bytes", "bytes free for Fjord on the data dir's filesystem");
        let _ = writeln!(out, "fjord_data_dir_free_bytes{{dir=\"{}\"}} {free}", label(&dir));
        gauge_header(out, "fjord_data_dir_capacity_bytes", "size of the data dir's filesystem");
        let _ = writeln!(out, "fjord_data_dir_capacity_bytes{{dir=\"{}\"}} {total}", label(&dir));
    }
}

/// (bytes available to an unprivileged writer, filesystem size) of the filesystem holding `dir`.
fn disk_space(dir: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `st` a writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some((st.f_bavail as u64 * frsize, st.f_blocks as u64 * frsize))
}

/// Counts Raft elections and leader changes in the groups this node replicates, sampling every
/// group's term and leader twice a second: a term that moved on is that many elections, a
/// different known leader is a leader change.
async fn count_elections(broker: Arc<Broker>, stop: impl std::future::Future<Output = ()>) {
    let Some(cluster) = &broker.cluster else { return };
    // Exported from the start, at 0: a rate over a series that appears only with its first
    // election would miss that one.
    metrics::counter!("fjord_raft_elections_total").increment(0);
    metrics::counter!("fjord_raft_leader_changes_total").increment(0);
    let mut seen: HashMap<u64, (u64, Option<u64>)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => return,
        }
        let now = cluster.group_leaders();
        let mut next = HashMap::with_capacity(now.len());
        for (group, term, leader) in now {
            if let Some((old_term, old_leader)) = seen.get(&group) {
                if term > *old_term {
                    metrics::counter!("fjord_raft_elections_total").increment(term - old_term);
                }
                if leader.is_some() && leader != *old_leader {
                    metrics::counter!("fjord_raft_leader_changes_total").increment(1);
                }
            }
            next.insert(group, (term, leader));
        }
        seen = next;
    }
}

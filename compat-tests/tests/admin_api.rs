//! The admin HTTP API (`--admin-listen`) of a live `fjord`: every endpoint on a single node and
//! on a 3-node cluster, what each shows checked against what the Kafka clients did, readiness
//! that is false while a node is cut off and true once it has caught up, and schemathesis
//! checking every response against the served OpenAPI document.

use std::time::Duration;

use fjord_compat_tests::cluster::LocalCluster;
use fjord_compat_tests::proxy::LinkMode;
use fjord_compat_tests::wire::{batch_of, create_topic, produce, s};
use fjord_compat_tests::{free_addr, http_get, http_json, kcat_produce, python, wait_until, BrokerProcess, RawConn};
use kafka_protocol::messages::*;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(30);

/// Commits `offset` for `topic`-`partition` as group `group` without joining it (generation
/// -1, as admin tools and simple consumers commit); returns the error code.
fn try_commit(conn: &mut RawConn, group: &str, topic: &str, partition: i32, offset: i64) -> i16 {
    let mut req = OffsetCommitRequest::default();
    req.group_id = GroupId(s(group));
    req.generation_id_or_member_epoch = -1;
    let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
    t.name = TopicName(s(topic));
    let mut p = offset_commit_request::OffsetCommitRequestPartition::default();
    p.partition_index = partition;
    p.committed_offset = offset;
    t.partitions = vec![p];
    req.topics = vec![t];
    let r: OffsetCommitResponse = conn.call(ApiKey::OffsetCommit, 8, &req);
    r.topics[0].partitions[0].error_code
}

fn commit(conn: &mut RawConn, group: &str, topic: &str, partition: i32, offset: i64) {
    assert_eq!(try_commit(conn, group, topic, partition, offset), 0, "offset commit");
}

/// Runs schemathesis (every check, every phase) against the admin API at `addr`, with `topic`
/// and `group` as the path parameters so that the detail endpoints answer with real data.
fn schemathesis(addr: &str, topic: &str, group: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("schemathesis.toml");
    // The transform endpoints that name one transform are left to tests/transforms.rs, which
    // deploys real modules: here `name` is a topic's, which no transform has, and a deploy of
    // schema-valid bytes that are not a module is rightly refused.
    std::fs::write(
        &config,
        format!(
            "[parameters]\n\"path.name\" = \"{topic}\"\n\"path.id\" = \"{group}\"\n\n\
             [[operations]]\ninclude-path-regex = \"^/v1/transforms/\"\nenabled = false\n"
        ),
    )
    .unwrap();
    let st = python().with_file_name("schemathesis");
    let out = std::process::Command::new(&st)
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .args(["--config-file", config.to_str().unwrap(), "run", &format!("http://{addr}/v1/openapi.json")])
        .args(["--checks", "all", "--max-examples", "25", "--workers", "1", "--seed", "1"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", st.display()));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found responses that break the document:\n{text}");
    assert!(text.contains("passed"), "{text}");
    // Each detail endpoint was reached with data that exists, not only 404s.
    assert!(!text.contains("Missing test data"), "{text}");
}

fn names(list: &Value, key: &str) -> Vec<String> {
    list.as_array().unwrap().iter().map(|v| v[key].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_single_node_serves_health_topics_groups_lag_metrics_and_a_debug_bundle() {
    let admin = free_addr();
    let broker = BrokerProcess::start(&["--admin-listen", &admin]);
    let health = http_json(&admin, "/v1/health", 200);
    assert_eq!(health["status"], "up");
    assert_eq!(health["node_id"], 0);
    let ready = http_json(&admin, "/v1/ready", 200);
    assert_eq!(ready["ready"], true, "{ready}");

    let mut conn = RawConn::connect(&broker.bootstrap());
    assert_eq!(create_topic(&mut conn, "orders", 3, &[("retention.ms", "3600000")]).topics[0].error_code, 0);
    assert_eq!(produce(&mut conn, "orders", 0, batch_of(10, 1_700_000_000_000)).0, 0);
    kcat_produce(&broker.bootstrap(), "orders", "none", 1, &[], "a\nb\n");
    commit(&mut conn, "billing", "orders", 0, 4);
    commit(&mut conn, "billing", "orders", 1, 2);

    let cluster = http_json(&admin, "/v1/cluster", 200);
    assert_eq!(cluster["mode"], "single-node");
    assert_eq!(cluster["brokers"], 1);
    assert_eq!(cluster["offline_partitions"], 0);
    let brokers = http_json(&admin, "/v1/brokers", 200);
    assert_eq!(brokers[0]["port"].as_i64(), broker.bootstrap().rsplit(':').next().unwrap().parse::<i64>().ok());

    let topics = http_json(&admin, "/v1/topics", 200);
    let orders = topics.as_array().unwrap().iter().find(|t| t["name"] == "orders").expect("orders listed");
    assert_eq!(orders["partition_count"], 3);
    assert_eq!(orders["internal"], false);
    let detail = http_json(&admin, "/v1/topics/orders", 200);
    assert_eq!(detail["configs"]["retention.ms"], "3600000");
    let ends: Vec<i64> = detail["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["local"]["high_watermark"].as_i64().unwrap())
        .collect();
    assert_eq!(ends, vec![10, 2, 0]);
    let missing = http_json(&admin, "/v1/topics/nope", 404);
    assert!(missing["error"].as_str().unwrap().contains("nope"), "{missing}");
    assert_eq!(http_json(&admin, "/v1/partitions?topic=orders", 200).as_array().unwrap().len(), 3);
    assert_eq!(http_json(&admin, "/v1/partitions?state=under-replicated", 200).as_array().unwrap().len(), 0);
    http_json(&admin, "/v1/partitions?state=sideways", 400);
    http_json(&admin, "/v1/partitions?topic=nope", 404);
    http_json(&admin, "/v1/nowhere", 404);

    let groups = http_json(&admin, "/v1/groups", 200);
    assert!(names(&groups, "group_id").contains(&"billing".to_string()), "{groups}");
    let billing = http_json(&admin, "/v1/groups/billing", 200);
    let lags: Vec<(i64, i64, i64)> = billing["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (o["partition"].as_i64().unwrap(), o["committed_offset"].as_i64().unwrap(), o["lag"].as_i64().unwrap())
        })
        .collect();
    assert_eq!(lags, vec![(0, 4, 6), (1, 2, 0)]);
    assert_eq!(billing["total_lag"], 6);

    // Prometheus: real histogram buckets, bytes per topic, lag per partition, disk space.
    let (status, metrics) = http_get(&admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("fjord_request_duration_seconds_bucket{api=\"Produce\",le=\"0.005\"}"), "{metrics}");
    assert!(metrics.contains("fjord_topic_bytes_in_total{topic=\"orders\"}"), "{metrics}");
    assert!(
        metrics.lines().any(|l| l == "fjord_consumer_group_lag{group=\"billing\",topic=\"orders\",partition=\"0\"} 6"),
        "{metrics}"
    );
    assert!(metrics.lines().any(|l| l == "fjord_consumer_group_lag_sum{group=\"billing\"} 6"), "{metrics}");
    let free = metrics.lines().find(|l| l.starts_with("fjord_data_dir_free_bytes{")).expect("free space");
    assert!(free.rsplit(' ').next().unwrap().parse::<f64>().unwrap() > 0.0, "{free}");
    assert!(metrics.lines().any(|l| l == "fjord_ready 1"), "{metrics}");
    assert!(metrics.lines().any(|l| l == "fjord_leader_partitions 103"), "3 + 50 + 50 partitions: {metrics}");

    let bundle = http_json(&admin, "/v1/debug/bundle", 200);
    assert_eq!(bundle["config"]["admin_listen"], admin.as_str());
    assert!(bundle["metrics"].as_str().unwrap().contains("fjord_requests_total"));
    let logs = bundle["logs"].as_array().unwrap();
    assert!(logs.iter().any(|l| l.as_str().unwrap().contains("fjord listening")), "{logs:?}");

    schemathesis(&admin, "orders", "billing");
}

/// The ids of the brokers that node `i`'s admin API lists as fenced.
fn fenced(cluster: &LocalCluster, i: usize) -> Vec<i64> {
    let brokers = http_json(&cluster.metrics[i], "/v1/brokers", 200);
    brokers.as_array().unwrap().iter().filter(|b| b["fenced"] == true).map(|b| b["node_id"].as_i64().unwrap()).collect()
}

fn ready(addr: &str) -> (u16, Value) {
    let (status, body) = http_get(addr, "/v1/ready").expect("the admin API answers");
    (status, serde_json::from_str(&body).unwrap())
}

/// The node coordinating `group`, once the cluster names one (its `__consumer_offsets` is
/// created on the first FindCoordinator).
fn coordinator(cluster: &LocalCluster, group: &str) -> i32 {
    let mut req = FindCoordinatorRequest::default();
    req.key = s(group);
    let mut found = -1;
    wait_until(DEADLINE, "a coordinator for the group", || {
        let r: FindCoordinatorResponse = cluster.conn(0).call(ApiKey::FindCoordinator, 3, &req);
        found = r.node_id.0;
        r.error_code == 0
    });
    found
}

/// The index in `cluster` of the node coordinating `group`.
fn coordinator_index(cluster: &LocalCluster, group: &str) -> usize {
    usize::try_from(coordinator(cluster, group) - 1).expect("a node id from 1")
}

/// The JSON body of GET `path`, when it answers `status`.
fn get_json(addr: &str, path: &str, status: u16) -> Option<Value> {
    let (got, body) = http_get(addr, path)?;
    (got == status).then(|| serde_json::from_str(&body).ok()).flatten()
}

#[test]
fn a_cluster_node_is_ready_only_while_joined_and_caught_up() {
    let cluster = LocalCluster::start_proxied(3, &[]);
    cluster.wait_formed(DEADLINE);
    let r = create_topic(&mut cluster.conn(0), "events", 3, &[]);
    assert_eq!(r.topics[0].error_code, 0, "{:?}", r.topics[0].error_message);
    kcat_produce(&cluster.bootstrap(), "events", "none", 0, &[], "1\n2\n3\n");
    for admin in &cluster.metrics {
        wait_until(DEADLINE, "every node ready", || ready(admin).0 == 200);
    }
    let view = http_json(&cluster.metrics[1], "/v1/cluster", 200);
    assert_eq!(view["mode"], "cluster");
    assert_eq!(view["brokers"], 3);
    let controller = view["controller_id"].as_i64().unwrap();
    let brokers = http_json(&cluster.metrics[1], "/v1/brokers", 200);
    let flagged: Vec<i64> = brokers
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["is_controller"] == true)
        .map(|b| b["node_id"].as_i64().unwrap())
        .collect();
    assert_eq!(flagged, vec![controller]);
    assert_eq!(names(&brokers, "rack"), vec!["r1", "r2", "r3"]);
    let parts = http_json(&cluster.metrics[2], "/v1/partitions?topic=events", 200);
    for p in parts.as_array().unwrap() {
        assert_eq!(p["replicas"].as_array().unwrap().len(), 3, "{p}");
        assert!(p["local"].is_object(), "node 3 holds a replica of every partition: {p}");
    }

    // A group with lag, shown by its coordinator; another node names the coordinator. The
    // coordinator is looked up again on every try, as clients do: while the cluster settles the
    // leadership of the group's __consumer_offsets partition may still move.
    let mut c = 0;
    // NOT_COORDINATOR until the coordinator has loaded the group's partition.
    // The group's __consumer_offsets is created by the first FindCoordinator, 50 partitions of
    // three replicas each: under a loaded test run their elections take a while.
    let mut answers = Vec::new();
    wait_until(2 * DEADLINE, "the offset commit taken", || {
        c = coordinator_index(&cluster, "audit");
        let code = try_commit(&mut cluster.conn(c), "audit", "events", 0, 1);
        if answers.last() != Some(&(c, code)) {
            eprintln!("offset commit at node {}: error code {code}", c + 1);
            answers.push((c, code));
        }
        code == 0
    });
    // The end offset is the high watermark, which Raft's own entries move too (as transaction
    // markers do in Kafka): the lag is measured from it.
    wait_until(DEADLINE, "the group's lag measured from the replica's high watermark", || {
        c = coordinator_index(&cluster, "audit");
        let Some(audit) = get_json(&cluster.metrics[c], "/v1/groups/audit", 200) else { return false };
        let parts = http_json(&cluster.metrics[c], "/v1/partitions?topic=events", 200);
        let hw = parts[0]["local"]["high_watermark"].as_i64();
        hw >= Some(3)
            && audit["offsets"][0]["end_offset"].as_i64() == hw
            && audit["offsets"][0]["lag"].as_i64() == hw.map(|h| h - 1)
            && audit["total_lag"].as_i64() == hw.map(|h| h - 1)
    });
    // Another node names the coordinator once the partition's leadership has reached its copy
    // of the metadata (the controller publishes it; under load that can take a moment).
    wait_until(DEADLINE, "another node naming the coordinator", || {
        c = coordinator_index(&cluster, "audit");
        let elsewhere = get_json(&cluster.metrics[(c + 1) % 3], "/v1/groups/audit", 404);
        elsewhere
            .is_some_and(|e| e["error"].as_str().is_some_and(|e| e.contains(&format!("node {} coordinates it", c + 1))))
    });
    schemathesis(&cluster.metrics[c], "events", "audit");

    // The leader of events-0 cut off: it stops being ready, and the others elect a new leader,
    // fence it and show the partitions under-replicated while writes go on.
    let leader = parts[0]["leader"].as_i64().unwrap();
    let cut = usize::try_from(leader - 1).unwrap();
    let other = (cut + 1) % 3;
    cluster.isolate(cut, LinkMode::Cut);
    wait_until(DEADLINE, "the cut-off node not ready", || {
        let (status, body) = ready(&cluster.metrics[cut]);
        status == 503 && body["ready"] == false
    });
    let (_, body) = ready(&cluster.metrics[cut]);
    let failing: Vec<&Value> = body["checks"].as_array().unwrap().iter().filter(|c| c["ok"] == false).collect();
    assert!(!failing.is_empty(), "{body}");
    wait_until(DEADLINE, "the cut-off node fenced", || fenced(&cluster, other) == vec![leader]);
    wait_until(DEADLINE, "partitions under-replicated without it", || {
        http_json(&cluster.metrics[other], "/v1/cluster", 200)["under_replicated_partitions"].as_i64() >= Some(3)
    });
    let listed = http_json(&cluster.metrics[other], "/v1/partitions?state=under-replicated&topic=events", 200);
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");
    let alive: Vec<String> = (0..3).filter(|i| *i != cut).map(|i| cluster.nodes[i].bootstrap()).collect();
    kcat_produce(&alive.join(","), "events", "none", 0, &[], "4\n5\n");

    // Healed: ready again once it has caught up; its replica holds all five records.
    cluster.isolate(cut, LinkMode::Pass);
    wait_until(DEADLINE, "the healed node ready again", || ready(&cluster.metrics[cut]).0 == 200);
    wait_until(DEADLINE, "its replica of events-0 has all five records", || {
        let parts = http_json(&cluster.metrics[cut], "/v1/partitions?topic=events", 200);
        parts[0]["local"]["high_watermark"].as_i64() >= Some(5)
    });
    wait_until(DEADLINE, "nothing under-replicated", || {
        http_json(&cluster.metrics[other], "/v1/cluster", 200)["under_replicated_partitions"] == 0
    });

    // events-0 had an election while its leader was cut off, which the others counted.
    let (_, metrics) = http_get(&cluster.metrics[other], "/metrics").unwrap();
    let elections = metrics.lines().find(|l| l.starts_with("fjord_raft_elections_total ")).expect("elections counted");
    assert!(elections.rsplit(' ').next().unwrap().parse::<f64>().unwrap() >= 1.0, "{elections}");
    assert!(metrics.lines().any(|l| l.starts_with("fjord_fsync_seconds_bucket{le=")), "{metrics}");
    let scrape = |a: &String| http_get(a, "/metrics").unwrap().1;
    // Each node counts what its metadata records; the three copies agree once applied.
    wait_until(DEADLINE, "every partition led by exactly one node, one active controller", || {
        let pages: Vec<String> = cluster.metrics.iter().map(scrape).collect();
        let leading: f64 = pages
            .iter()
            .map(|m| m.lines().find_map(|l| l.strip_prefix("fjord_leader_partitions ")?.parse::<f64>().ok()).unwrap())
            .sum();
        let total = http_json(&cluster.metrics[other], "/v1/cluster", 200)["partitions"].as_f64().unwrap();
        let active = pages.iter().filter(|m| m.lines().any(|l| l == "fjord_active_controller 1")).count();
        leading == total && active == 1
    });
}

/// A broker that is not a controller voter (it learns the metadata log without voting) becomes
/// ready like the voters, and the brokers list says which nodes vote.
#[test]
fn a_broker_outside_the_controller_quorum_is_ready_once_caught_up() {
    let mut cluster = LocalCluster::start(3);
    cluster.wait_formed(DEADLINE);
    let i = cluster.add_broker("r4", &[]);
    wait_until(DEADLINE, "the added broker ready", || ready(&cluster.metrics[i]).0 == 200);
    let brokers = http_json(&cluster.metrics[i], "/v1/brokers", 200);
    let voters: Vec<i64> = brokers
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["controller_voter"] == true)
        .map(|b| b["node_id"].as_i64().unwrap())
        .collect();
    assert_eq!(voters, vec![1, 2, 3], "{brokers}");
    assert_eq!(brokers.as_array().unwrap().len(), 4);
}

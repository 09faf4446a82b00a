//! A cluster of three `fjord` processes on loopback: they form the controller quorum, register
//! as brokers, and answer Metadata and DescribeCluster from the replicated metadata; topics
//! created through one node appear on all; the loss of the controller's process moves the
//! controller and fences its broker; a restarted node catches up, and the metadata survives a
//! restart of every process; a leader whose process died is not named to clients. Records
//! through those partitions: `cluster_data.rs`.

use std::collections::BTreeSet;
use std::time::Duration;

use fjord_compat_tests::cluster::LocalCluster;
use fjord_compat_tests::wire::{s, topic_metadata};
use fjord_compat_tests::{wait_until, RawConn};
use kafka_protocol::messages::*;

const NODES: usize = 3;
const DEADLINE: Duration = Duration::from_secs(30);

fn describe_cluster(conn: &mut RawConn) -> DescribeClusterResponse {
    let mut req = DescribeClusterRequest::default();
    req.endpoint_type = 1;
    conn.call(ApiKey::DescribeCluster, 1, &req)
}

/// (live broker ids with their racks, controller id) as one node sees them.
fn view(conn: &mut RawConn) -> (Vec<(i32, Option<String>)>, i32) {
    let r = describe_cluster(conn);
    let mut brokers: Vec<(i32, Option<String>)> =
        r.brokers.iter().map(|b| (b.broker_id.0, b.rack.as_ref().map(|r| r.to_string()))).collect();
    brokers.sort();
    (brokers, r.controller_id.0)
}

fn create(
    conn: &mut RawConn,
    name: &str,
    partitions: i32,
    replication: i16,
) -> create_topics_response::CreatableTopicResult {
    let mut t = create_topics_request::CreatableTopic::default();
    t.name = TopicName(s(name));
    t.num_partitions = partitions;
    t.replication_factor = replication;
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![t];
    req.timeout_ms = 10_000;
    let mut r: CreateTopicsResponse = conn.call(ApiKey::CreateTopics, 7, &req);
    r.topics.remove(0)
}

#[test]
fn three_nodes_share_metadata_through_the_controller_quorum() {
    let mut cluster = LocalCluster::start(NODES);
    let everyone: Vec<(i32, Option<String>)> = (1..=NODES as i32).map(|i| (i, Some(format!("r{i}")))).collect();

    // Every node lists the three brokers with their racks and names the same controller.
    let mut controller = -1;
    wait_until(DEADLINE, "all nodes to list three brokers and agree on a controller", || {
        let views: Vec<_> = (0..NODES).map(|i| view(&mut cluster.conn(i))).collect();
        controller = views[0].1;
        views.iter().all(|(brokers, c)| *brokers == everyone && *c == controller && *c >= 1)
    });
    // A registration is recorded only after the cluster was named.
    let cluster_ids: BTreeSet<String> =
        (0..NODES).map(|i| describe_cluster(&mut cluster.conn(i)).cluster_id.to_string()).collect();
    assert_eq!(cluster_ids.len(), 1, "one cluster id: {cluster_ids:?}");
    assert!(!cluster_ids.iter().next().unwrap().is_empty());

    // A topic created through node 2 shows on every node, with the same id and three replicas
    // per partition on three racks.
    let created = create(&mut cluster.conn(1), "events", 3, 3);
    assert_eq!(created.error_code, 0, "{:?}", created.error_message);
    assert_eq!((created.num_partitions, created.replication_factor), (3, 3));
    let mut ids = BTreeSet::new();
    for i in 0..NODES {
        let mut conn = cluster.conn(i);
        wait_until(DEADLINE, "the topic on every node", || {
            topic_metadata(&mut conn, "events", false).partitions.len() == 3
        });
        let t = topic_metadata(&mut conn, "events", false);
        ids.insert(t.topic_id);
        for p in &t.partitions {
            let replicas: BTreeSet<i32> = p.replica_nodes.iter().map(|b| b.0).collect();
            assert_eq!(replicas, (1..=3).collect(), "partition {} replicas", p.partition_index);
        }
    }
    assert_eq!(ids.len(), 1, "one topic id across nodes");
    assert_eq!(created.topic_id, *ids.iter().next().unwrap());

    // Each partition is a Raft group on its three replicas: a leader is elected and reported,
    // with every replica in sync, and all nodes show the same leaders.
    let mut shown = Vec::new();
    wait_until(DEADLINE, "every partition led, with three in sync, the same on every node", || {
        let views: Vec<_> = (0..NODES).map(|i| cluster.leaders(i, "events")).collect();
        shown = views[0].clone();
        views.iter().all(|v| *v == shown)
            && shown.len() == 3
            && shown.iter().all(|(_, l, isr)| (1..=3).contains(l) && *isr == 3)
    });
    for (i, n) in cluster.nodes.iter().enumerate() {
        let dirs = std::fs::read_dir(n.data_dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("events-"));
        assert_eq!(dirs.count(), 3, "node {} holds a replica of each partition", i + 1);
    }

    // The controller refuses what Kafka refuses, whichever node is asked.
    assert_eq!(create(&mut cluster.conn(2), "events", 3, 3).error_code, 36, "TOPIC_ALREADY_EXISTS");
    assert_eq!(create(&mut cluster.conn(0), "wide", 1, 4).error_code, 38, "INVALID_REPLICATION_FACTOR");

    // Deleting through another node removes it everywhere.
    let mut req = DeleteTopicsRequest::default();
    req.topic_names = vec![TopicName(s("events"))];
    let r: DeleteTopicsResponse = cluster.conn(2).call(ApiKey::DeleteTopics, 4, &req);
    assert_eq!(r.responses[0].error_code, 0);
    for i in 0..NODES {
        let mut conn = cluster.conn(i);
        wait_until(DEADLINE, "the topic gone from every node", || {
            topic_metadata(&mut conn, "events", false).error_code == 3
        });
        let dir = cluster.nodes[i].data_dir.path().to_path_buf();
        wait_until(DEADLINE, "the deleted topic's replicas removed from disk", || {
            std::fs::read_dir(&dir)
                .unwrap()
                .filter_map(|e| e.ok())
                .all(|e| !e.file_name().to_string_lossy().starts_with("events-"))
        });
    }
    let kept = create(&mut cluster.conn(0), "kept", 3, 3);
    assert_eq!(kept.error_code, 0);
    wait_until(DEADLINE, "the kept topic's partitions led", || {
        let v = cluster.leaders(0, "kept");
        v.len() == 3 && v.iter().all(|(_, l, _)| *l >= 1)
    });

    // CreatePartitions through another node adds a led partition that every node shows.
    let mut ct = create_partitions_request::CreatePartitionsTopic::default();
    ct.name = TopicName(s("kept"));
    ct.count = 4;
    // Clients send null when they leave placement to the controller.
    ct.assignments = None;
    let mut creq = CreatePartitionsRequest::default();
    creq.topics = vec![ct];
    creq.timeout_ms = 10_000;
    let cr: CreatePartitionsResponse = cluster.conn(2).call(ApiKey::CreatePartitions, 3, &creq);
    assert_eq!(cr.results[0].error_code, 0, "{:?}", cr.results[0].error_message);
    wait_until(DEADLINE, "four led partitions on every node", || {
        (0..NODES).all(|i| {
            let v = cluster.leaders(i, "kept");
            v.len() == 4 && v.iter().all(|(_, l, _)| *l >= 1)
        })
    });

    // Metadata with auto-creation asks the controller: the topic exists on every node after.
    topic_metadata(&mut cluster.conn(1), "auto", true);
    for i in 0..NODES {
        let mut conn = cluster.conn(i);
        wait_until(DEADLINE, "the auto-created topic on every node", || {
            topic_metadata(&mut conn, "auto", false).error_code != 3
        });
    }

    // The controller's process dies: the others elect another controller and fence its broker.
    let dead = controller;
    cluster.nodes[(dead - 1) as usize].kill9();
    let alive: Vec<usize> = (0..NODES).filter(|i| *i as i32 + 1 != dead).collect();
    let remaining: Vec<(i32, Option<String>)> = everyone.iter().filter(|(id, _)| *id != dead).cloned().collect();
    wait_until(DEADLINE, "a new controller, and the dead broker fenced", || {
        alive.iter().all(|i| {
            let (brokers, c) = view(&mut cluster.conn(*i));
            brokers == remaining && c != dead && c >= 1
        })
    });
    // DescribeCluster v2 lists the fenced broker, flagged, when asked to.
    let mut req = DescribeClusterRequest::default();
    req.endpoint_type = 1;
    req.include_fenced_brokers = true;
    let all: DescribeClusterResponse = cluster.conn(alive[0]).call(ApiKey::DescribeCluster, 2, &req);
    let fenced: Vec<i32> = all.brokers.iter().filter(|b| b.is_fenced).map(|b| b.broker_id.0).collect();
    assert_eq!(fenced, vec![dead], "the dead broker, fenced");
    assert_eq!(all.brokers.len(), NODES);

    // Partitions the dead node led get new leaders among the living.
    wait_until(DEADLINE, "every partition of the kept topic led by a live node", || {
        alive.iter().all(|i| {
            let v = cluster.leaders(*i, "kept");
            v.len() == 4 && v.iter().all(|(_, l, _)| *l >= 1 && *l != dead)
        })
    });
    // The surviving majority still changes metadata.
    assert_eq!(create(&mut cluster.conn(alive[0]), "after", 1, 2).error_code, 0);

    // The dead node restarts on its data dir: it catches up on what it missed and is live again.
    cluster.nodes[(dead - 1) as usize].restart();
    let mut conn = cluster.conn((dead - 1) as usize);
    wait_until(DEADLINE, "the restarted node to catch up and be live", || {
        view(&mut conn).0 == everyone && topic_metadata(&mut conn, "after", false).error_code != 3
    });

    // Every process stops and starts again: the metadata is on disk.
    for n in &mut cluster.nodes {
        n.kill9();
    }
    for n in &mut cluster.nodes {
        n.restart();
    }
    for i in 0..NODES {
        let mut conn = cluster.conn(i);
        wait_until(DEADLINE, "the metadata back after a full restart", || {
            view(&mut conn).0 == everyone && topic_metadata(&mut conn, "after", false).partitions.len() == 1
        });
        assert_eq!(topic_metadata(&mut conn, "events", false).error_code, 3, "the deleted topic stays deleted");
    }
}

/// Per partition of `topic`: (leader id, preferred leader id: the first replica) as node index
/// `i` shows them.
fn leaders_and_preferred(cluster: &LocalCluster, i: usize, topic: &str) -> Vec<(i32, i32)> {
    let t = topic_metadata(&mut cluster.conn(i), topic, false);
    let mut v: Vec<(i32, i32, i32)> = t
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.leader_id.0, p.replica_nodes.first().map_or(-1, |r| r.0)))
        .collect();
    v.sort();
    v.into_iter().map(|(_, l, p)| (l, p)).collect()
}

/// auto.leader.rebalance.enable: leaderships go to each partition's preferred replica (the
/// first, which placement spreads evenly), and after a node's restart the partitions it led
/// come back to it instead of staying on the nodes that took them over.
#[test]
fn leaders_move_back_to_their_preferred_replicas_after_a_restart() {
    let mut cluster = LocalCluster::start_with(NODES, &["--leader-imbalance-check-interval-seconds", "1"]);
    cluster.wait_formed(DEADLINE);
    let topic = "balanced";
    assert_eq!(create(&mut cluster.conn(0), topic, 6, 3).error_code, 0);
    let all_preferred = |cluster: &LocalCluster, i: usize| {
        let v = leaders_and_preferred(cluster, i, topic);
        v.len() == 6 && v.iter().all(|(l, p)| l == p)
    };
    wait_until(DEADLINE, "every partition led by its preferred replica", || all_preferred(&cluster, 0));
    // Placement spread the preferred leaders: two per node.
    let per_node = |cluster: &LocalCluster| {
        let mut n = [0usize; NODES];
        for (l, _) in leaders_and_preferred(cluster, 0, topic) {
            n[(l - 1) as usize] += 1;
        }
        n
    };
    assert_eq!(per_node(&cluster), [2, 2, 2]);
    // Node 3 dies: the others take its partitions over.
    cluster.nodes[2].kill9();
    wait_until(DEADLINE, "node 3's partitions led elsewhere", || {
        let v = leaders_and_preferred(&cluster, 0, topic);
        v.len() == 6 && v.iter().all(|(l, _)| *l > 0 && *l != 3)
    });
    // Back, it catches up and gets them again.
    cluster.nodes[2].restart();
    wait_until(Duration::from_secs(60), "the leaderships back on the preferred replicas", || {
        (0..NODES).all(|i| all_preferred(&cluster, i))
    });
    assert_eq!(per_node(&cluster), [2, 2, 2]);
}

/// Runs `elect_leaders.py` (confluent-kafka's AdminClient.elect_leaders) and returns its lines.
fn elect(bootstrap: &str, topic: &str, kind: &str, partitions: &[i32]) -> Vec<String> {
    let script = fjord_compat_tests::clients_dir().join("python/elect_leaders.py");
    let mut cmd = fjord_compat_tests::client(fjord_compat_tests::python());
    cmd.arg(script).args([bootstrap, topic, kind]);
    cmd.args(partitions.iter().map(|p| p.to_string()));
    let out = fjord_compat_tests::run_client(&mut cmd, Duration::from_secs(60));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// ElectLeaders with a real admin client: with automatic rebalancing off, the partitions a
/// restarted node preferred stay with the nodes that took them over until a PREFERRED election
/// moves them back; partitions already on their preferred replica need none; UNCLEAN is never
/// needed while a partition has a leader.
#[test]
fn elect_leaders_moves_partitions_to_their_preferred_replicas() {
    let mut cluster = LocalCluster::start_with(NODES, &["--auto-leader-rebalance-enable", "false"]);
    cluster.wait_formed(DEADLINE);
    let topic = "elected";
    assert_eq!(create(&mut cluster.conn(0), topic, 6, 3).error_code, 0);
    wait_until(DEADLINE, "a leader for every partition", || {
        let v = leaders_and_preferred(&cluster, 0, topic);
        v.len() == 6 && v.iter().all(|(l, _)| *l > 0)
    });
    // Node 3 dies and returns: its preferred partitions are led elsewhere.
    cluster.nodes[2].kill9();
    wait_until(DEADLINE, "every partition led by node 1 or 2", || {
        let v = leaders_and_preferred(&cluster, 0, topic);
        v.len() == 6 && v.iter().all(|(l, _)| *l == 1 || *l == 2)
    });
    cluster.nodes[2].restart();
    // Live again (registered and unfenced) and back in every ISR.
    wait_until(DEADLINE, "node 3 live and back in every ISR", || {
        view(&mut cluster.conn(0)).0.len() == NODES && cluster.leaders(0, topic).iter().all(|(_, _, isr)| *isr == 3)
    });
    let all: Vec<i32> = (0..6).collect();
    // A PREFERRED election answers `ok` for each partition led off its preferred replica, which
    // it moves there, and ELECTION_NOT_NEEDED for the others. The leaderships it is checked
    // against are the ones every node shows just before. An election under load can move one in
    // between, and the leader may judge a preferred replica not ready yet
    // (PREFERRED_LEADER_NOT_AVAILABLE): then, as after a leadership that moves off its preferred
    // replica again before every node shows them all there, the election runs again against a
    // fresh look-up.
    let agreed = |cluster: &LocalCluster| {
        let mut shown = Vec::new();
        wait_until(DEADLINE, "every node to show the same leader for every partition", || {
            shown = leaders_and_preferred(cluster, 0, topic);
            shown.len() == 6
                && shown.iter().all(|(l, _)| *l > 0)
                && (1..NODES).all(|i| leaders_and_preferred(cluster, i, topic) == shown)
        });
        shown
    };
    let before = agreed(&cluster);
    assert!(before.iter().any(|(l, p)| l != p), "node 3 led none of its partitions before the election");
    let (mut before, mut moved, mut rounds) = (before, 0, 0);
    loop {
        rounds += 1;
        let lines = elect(&cluster.bootstrap(), topic, "preferred", &all);
        assert_eq!(lines.len(), 6, "{lines:?}");
        let mut again = false;
        for (p, (leader, preferred)) in before.iter().enumerate() {
            let want = if leader == preferred { "ELECTION_NOT_NEEDED" } else { "ok" };
            if lines[p].starts_with(&format!("{p} {want}")) {
                moved += usize::from(want == "ok");
                continue;
            }
            let moved_since = ["ok", "ELECTION_NOT_NEEDED", "PREFERRED_LEADER_NOT_AVAILABLE"]
                .iter()
                .any(|w| lines[p].starts_with(&format!("{p} {w}")));
            assert!(
                moved_since && rounds < 10,
                "partition {p} (leader {leader}, preferred {preferred}), round {rounds}: {}",
                lines[p]
            );
            again = true;
        }
        let on_preferred = || {
            (0..NODES).all(|i| {
                let v = leaders_and_preferred(&cluster, i, topic);
                v.len() == 6 && v.iter().all(|(l, p)| l == p)
            })
        };
        if !again && fjord_compat_tests::poll_until(DEADLINE, on_preferred) {
            break;
        }
        assert!(rounds < 10, "the leaderships never all stayed on their preferred replicas");
        before = agreed(&cluster);
    }
    assert!(moved > 0, "no partition was moved by a PREFERRED election");
    // Every partition has a leader: no unclean election is needed.
    let lines = elect(&cluster.bootstrap(), topic, "unclean", &all);
    assert!(lines.len() == 6 && lines.iter().all(|l| l.contains("ELECTION_NOT_NEEDED")), "{lines:?}");
}

/// Runs `pinned_leaders.py` (confluent-kafka's AdminClient) on `topic` with `args`; returns
/// what it prints (the pinning DescribeConfigs gives back).
fn pinned_leaders(cluster: &LocalCluster, topic: &str, args: &[&str]) -> String {
    let mut cmd = fjord_compat_tests::client(fjord_compat_tests::python());
    cmd.current_dir(fjord_compat_tests::clients_dir().join("python"));
    cmd.arg("pinned_leaders.py").arg(cluster.bootstrap()).arg(topic).args(args);
    let out = fjord_compat_tests::run_client(&mut cmd, Duration::from_secs(90));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Leader pinning (`leader.preferred.racks`) set and changed with a real admin client: a topic
/// created pinned to rack r2 is led from node 2 (the only node there); re-pinned to r3, the
/// leader balancer moves every leadership to node 3; DescribeConfigs shows each value.
#[test]
fn a_topic_pinned_to_a_rack_is_led_from_it() {
    let cluster = LocalCluster::start_with(NODES, &["--leader-imbalance-check-interval-seconds", "1"]);
    cluster.wait_formed(DEADLINE);
    let topic = "pinned";
    let pin = |args: &[&str]| pinned_leaders(&cluster, topic, args);
    let led_by = |cluster: &LocalCluster, node: i32| {
        let v = cluster.leaders(0, topic);
        v.len() == 6 && v.iter().all(|(_, l, _)| *l == node)
    };
    assert_eq!(pin(&["create", "r2", "6", "3"]), "leader.preferred.racks=r2");
    wait_until(DEADLINE, "every partition led from rack r2", || led_by(&cluster, 2));
    assert_eq!(pin(&["alter", "r3"]), "leader.preferred.racks=r3");
    wait_until(DEADLINE, "every partition led from rack r3", || led_by(&cluster, 3));
}

/// Leader pinning through a failover: nodes 1 and 2 in rack us, node 3 in eu, and a topic
/// pinned to us (every node a replica of each partition), led from us. When node 1 dies, its
/// partitions are led from us again (node 2), not from eu: the replicas on a pinned rack take
/// the first turns to campaign, and a leadership that lands in eu anyway (an election on a
/// loaded machine) goes back to the first live replica on the pinned rack with the balancer.
#[test]
fn a_pinned_topic_is_led_from_its_rack_again_after_its_leader_dies() {
    let mut cluster =
        LocalCluster::start_on_racks(&["us", "us", "eu"], &["--leader-imbalance-check-interval-seconds", "1"]);
    cluster.wait_formed(DEADLINE);
    let topic = "pinned-failover";
    pinned_leaders(&cluster, topic, &["create", "us", "6", "3"]);
    wait_until(DEADLINE, "every partition led from us, every replica in sync", || {
        let v = cluster.leaders(1, topic);
        v.len() == 6 && v.iter().all(|(_, l, isr)| (*l == 1 || *l == 2) && *isr == 3)
    });
    let from_node_1 = cluster.leaders(1, topic).iter().filter(|(_, l, _)| *l == 1).count();
    assert!(from_node_1 > 0, "node 1 leads none of the partitions: {:?}", cluster.leaders(1, topic));
    cluster.nodes[0].kill9();
    wait_until(DEADLINE, "every partition led from node 2, the live replica in us", || {
        let v = cluster.leaders(1, topic);
        v.len() == 6 && v.iter().all(|(_, l, _)| *l == 2)
    });
}

/// Leader pinning with one replica per rack (us, eu, ap; a topic pinned to us): the failover
/// of the us node has to move every leadership out of us, and when the node is back (caught
/// up) the leaderships return to it within seconds, with the leader balancer at its default
/// five-minute interval: a pinned partition led off its racks goes back as soon as it can.
#[test]
fn a_pinned_leadership_returns_to_its_rack_as_soon_as_a_replica_there_can_lead() {
    let mut cluster = LocalCluster::start_on_racks(&["us", "eu", "ap"], &[]);
    cluster.wait_formed(DEADLINE);
    let topic = "pinned-return";
    pinned_leaders(&cluster, topic, &["create", "us", "6", "3"]);
    let led_from_us = |cluster: &LocalCluster, i: usize| {
        let v = cluster.leaders(i, topic);
        v.len() == 6 && v.iter().all(|(_, l, isr)| *l == 1 && *isr == 3)
    };
    wait_until(DEADLINE, "every partition led from us, every replica in sync", || led_from_us(&cluster, 1));
    cluster.nodes[0].kill9();
    wait_until(DEADLINE, "every partition led from eu or ap", || {
        let v = cluster.leaders(1, topic);
        v.len() == 6 && v.iter().all(|(_, l, _)| *l == 2 || *l == 3)
    });
    cluster.nodes[0].restart();
    wait_until(DEADLINE, "every partition led from us again", || led_from_us(&cluster, 1));
}

/// A leadership transfer whose target never takes over: ElectLeaders starts it, and the target's
/// cluster links are blackholed at that moment. openraft's leader stops heartbeats and writes
/// once it hands over and cannot take that back, so the two others must elect a leader
/// themselves: the partition takes acks=all writes again within seconds instead of never.
#[test]
fn a_leadership_transfer_that_never_completes_becomes_an_election() {
    use fjord_compat_tests::proxy::LinkMode;
    let cluster = LocalCluster::start_proxied(NODES, &["--auto-leader-rebalance-enable", "false"]);
    cluster.wait_formed(DEADLINE);
    let topic = "stalled-transfer";
    assert_eq!(create(&mut cluster.conn(0), topic, 1, 3).error_code, 0);
    let state = |cluster: &LocalCluster| leaders_and_preferred(cluster, 0, topic).first().copied();
    wait_until(DEADLINE, "a leader", || state(&cluster).is_some_and(|(l, _)| l > 0));
    let (_, preferred) = state(&cluster).unwrap();
    let p = (preferred - 1) as usize;
    let other = (p + 1) % NODES;
    // Moves the leadership off the preferred replica if it has it: cuts it off until another
    // node leads, then lets it back in.
    let off_preferred = || {
        if leaders_and_preferred(&cluster, other, topic).first().is_some_and(|(l, _)| *l == preferred) {
            cluster.isolate(p, LinkMode::Cut);
            wait_until(DEADLINE, "another leader", || {
                leaders_and_preferred(&cluster, other, topic).first().is_some_and(|(l, _)| *l > 0 && *l != preferred)
            });
            cluster.isolate(p, LinkMode::Pass);
        }
    };
    // The transfer starts (the preferred replica still looks alive), and its links go dark. On a
    // loaded machine the leader may judge the replica not ready (PREFERRED_LEADER_NOT_AVAILABLE,
    // 80, nothing started), or an election of its own may have given the preferred replica the
    // leadership back after it was let in (ELECTION_NOT_NEEDED, 84): then the links heal, the
    // leadership is moved off it again if needed, and the transfer is tried again.
    let mut req = ElectLeadersRequest::default();
    req.election_type = 0;
    req.timeout_ms = 1_000;
    let mut tp = elect_leaders_request::TopicPartitions::default();
    tp.topic = TopicName(s(topic));
    tp.partitions = vec![0];
    req.topic_partitions = Some(vec![tp]);
    let mut attempts = 0;
    loop {
        off_preferred();
        wait_until(DEADLINE, "every node live and in the ISR", || {
            view(&mut cluster.conn(other)).0.len() == NODES
                && cluster.leaders(other, topic).iter().all(|(_, _, isr)| *isr == 3)
        });
        let mut conn = cluster.conn(other);
        cluster.isolate(p, LinkMode::Blackhole);
        let resp: ElectLeadersResponse = conn.call(ApiKey::ElectLeaders, 2, &req);
        let code = resp.replica_election_results[0].partition_result[0].error_code;
        // REQUEST_TIMED_OUT (7): started, never completed.
        if code == 7 {
            break;
        }
        attempts += 1;
        assert!((code == 80 || code == 84) && attempts < 10, "{resp:?}");
        cluster.isolate(p, LinkMode::Pass);
    }
    // The others elect a leader between them, which takes an acks=all write.
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let leader = leaders_and_preferred(&cluster, other, topic).first().map(|(l, _)| *l).unwrap_or(-1);
        if leader > 0 && leader != preferred {
            let b = fjord_compat_tests::wire::batch(&[b"after the stalled transfer".as_slice()], 0);
            let (code, _) = fjord_compat_tests::wire::produce(&mut cluster.conn((leader - 1) as usize), topic, 0, b);
            if code == 0 {
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no writable leader after the stalled transfer");
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.isolate(p, LinkMode::Pass);
}

/// A leader whose process dies is not named to clients while its replicas elect another: the
/// nodes that lost their connection to it answer "no leader" (LEADER_NOT_AVAILABLE), so clients
/// keep asking for metadata instead of sending to a dead address, long before the controller
/// fences the broker. Here the partition has two replicas, so the survivor cannot elect itself
/// and the broker stays registered for a minute: nothing but the lost connection can change
/// the answer. The node comes back and is named again.
#[test]
fn a_dead_leader_is_not_named_before_its_broker_is_fenced() {
    let mut cluster = LocalCluster::start_with(
        NODES,
        &["--broker-session-timeout-ms", "60000", "--leader-imbalance-check-interval-seconds", "1"],
    );
    cluster.wait_formed(DEADLINE);
    let topic = "pairs";
    assert_eq!(create(&mut cluster.conn(0), topic, 3, 2).error_code, 0);
    wait_until(DEADLINE, "every partition led by its preferred replica on every node", || {
        (0..NODES).all(|i| {
            let v = leaders_and_preferred(&cluster, i, topic);
            v.len() == 3 && v.iter().all(|(l, p)| l == p)
        })
    });
    // Placement spreads the preferred replicas, so some partition is led by a node that is not
    // the controller (whose loss would move the controller as well).
    let controller = view(&mut cluster.conn(0)).1;
    let (partition, dead) = leaders_and_preferred(&cluster, 0, topic)
        .iter()
        .enumerate()
        .find(|(_, (l, _))| *l != controller)
        .map(|(p, (l, _))| (p as i32, *l))
        .expect("placement put every preferred replica on the controller");
    cluster.nodes[(dead - 1) as usize].kill9();
    let survivors: Vec<usize> = (0..NODES).filter(|i| *i as i32 != dead - 1).collect();
    let answer = |cluster: &LocalCluster, i: usize| {
        let t = topic_metadata(&mut cluster.conn(i), topic, false);
        t.partitions.iter().find(|p| p.partition_index == partition).map(|p| (p.leader_id.0, p.error_code))
    };
    for &i in &survivors {
        wait_until(DEADLINE, "the survivors to answer no leader for the dead node's partition", || {
            answer(&cluster, i) == Some((-1, 5))
        });
    }
    for &i in &survivors {
        let (brokers, _) = view(&mut cluster.conn(i));
        assert!(brokers.iter().any(|(b, _)| *b == dead), "node {dead} fenced already: {brokers:?}");
    }
    // Back, it leads again (or its partner does), and every node names that leader.
    cluster.nodes[(dead - 1) as usize].restart();
    wait_until(DEADLINE, "the partition led again on every node", || {
        let first = answer(&cluster, 0);
        first.is_some_and(|(l, e)| l > 0 && e == 0) && (0..NODES).all(|i| answer(&cluster, i) == first)
    });
}

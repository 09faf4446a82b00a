//! A cluster of `fjord` processes on loopback, each a controller voter on its own data dir,
//! started the way the README starts one.

use std::time::Duration;

use kafka_protocol::messages::{metadata_request, ApiKey, MetadataRequest, MetadataResponse, TopicName};

use std::collections::BTreeMap;

use crate::proxy::{LinkMode, LinkProxy};
use crate::{free_addr, wait_until, BrokerProcess, RawConn};

pub struct LocalCluster {
    pub nodes: Vec<BrokerProcess>,
    /// Each node's admin API (`--admin-listen`: `/metrics`, `/v1/...`), by node index.
    pub metrics: Vec<String>,
    /// With `start_proxied`: the proxy on each directed link (from node index, to node index).
    pub links: BTreeMap<(usize, usize), LinkProxy>,
    /// The controller voters every node was given (not with `start_proxied`).
    voters: Option<String>,
}

impl LocalCluster {
    /// `n` nodes with ids 1..=n on racks r1..rn (see `start_node`).
    pub fn start(n: usize) -> LocalCluster {
        Self::start_with(n, &[])
    }

    /// `start` with more flags for every node.
    pub fn start_with(n: usize, extra: &[&str]) -> LocalCluster {
        let racks: Vec<String> = (1..=n).map(|i| format!("r{i}")).collect();
        Self::start_on_racks(&racks.iter().map(String::as_str).collect::<Vec<_>>(), extra)
    }

    /// `start_with`, one node per entry of `racks`, on that rack (nodes may share one).
    pub fn start_on_racks(racks: &[&str], extra: &[&str]) -> LocalCluster {
        let n = racks.len();
        let ports: Vec<String> = (0..n).map(|_| free_addr()).collect();
        let voters = |_: usize| -> String {
            ports.iter().enumerate().map(|(i, a)| format!("{}@{a}", i + 1)).collect::<Vec<_>>().join(",")
        };
        let (nodes, metrics) = (0..n).map(|i| start_node(i, racks[i], &ports[i], &voters(i), extra)).unzip();
        LocalCluster { nodes, metrics, links: BTreeMap::new(), voters: Some(voters(0)) }
    }

    /// Starts one more node, id `nodes.len() + 1`, on `rack`: not a controller voter, it joins
    /// as a broker only (as a node added to a running cluster does). Returns its index.
    pub fn add_broker(&mut self, rack: &str, extra: &[&str]) -> usize {
        let voters = self.voters.clone().expect("add_broker needs a cluster from start_on_racks");
        let i = self.nodes.len();
        let (node, metrics) = start_node(i, rack, &free_addr(), &voters, extra);
        self.nodes.push(node);
        self.metrics.push(metrics);
        i
    }

    /// `start_with`, every node dialing every other through a [`LinkProxy`] of its own (a
    /// node's voter list names the proxies as the other voters' addresses), so that tests can
    /// cut, blackhole or delay any directed link.
    pub fn start_proxied(n: usize, extra: &[&str]) -> LocalCluster {
        let ports: Vec<String> = (0..n).map(|_| free_addr()).collect();
        let mut links = BTreeMap::new();
        for from in 0..n {
            for to in (0..n).filter(|t| *t != from) {
                links.insert((from, to), LinkProxy::start(Some(&ports[to])).expect("start a link proxy"));
            }
        }
        let voters = |me: usize| -> String {
            (0..n)
                .map(|j| {
                    let addr = if j == me { ports[j].clone() } else { links[&(me, j)].addr() };
                    format!("{}@{addr}", j + 1)
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        let (nodes, metrics) =
            (0..n).map(|i| start_node(i, &format!("r{}", i + 1), &ports[i], &voters(i), extra)).unzip();
        LocalCluster { nodes, metrics, links, voters: None }
    }

    /// Sets every link to and from node index `i` to `mode` (`Pass` heals it).
    pub fn isolate(&self, i: usize, mode: LinkMode) {
        for ((from, to), link) in &self.links {
            if *from == i || *to == i {
                link.set_mode(mode);
            }
        }
    }

    /// Waits until every node lists every broker and names a controller: the cluster takes
    /// admin requests from then on (a client asks the controller it is shown).
    pub fn wait_formed(&self, timeout: Duration) {
        wait_until(timeout, "every node to list every broker and a controller", || {
            (0..self.nodes.len()).all(|i| {
                let mut req = MetadataRequest::default();
                req.topics = Some(Vec::new());
                let r: MetadataResponse = self.conn(i).call(ApiKey::Metadata, 12, &req);
                r.brokers.len() == self.nodes.len() && r.controller_id.0 >= 1
            })
        });
    }

    /// A connection to node index `i` (node id `i + 1`).
    pub fn conn(&self, i: usize) -> RawConn {
        RawConn::connect(&self.nodes[i].bootstrap())
    }

    /// Every node's client address, comma-separated, as clients take a bootstrap list.
    pub fn bootstrap(&self) -> String {
        self.nodes.iter().map(|n| n.bootstrap()).collect::<Vec<_>>().join(",")
    }

    /// (partition, leader id, in-sync replica count) of `topic` as node index `i` shows them;
    /// nothing while that node refuses Metadata (it lost contact with the controller quorum).
    pub fn leaders(&self, i: usize, topic: &str) -> Vec<(i32, i32, usize)> {
        let mut req = MetadataRequest::default();
        req.topics = Some(vec![metadata_request::MetadataRequestTopic::default()
            .with_name(Some(TopicName(kafka_protocol::protocol::StrBytes::from_string(topic.to_string()))))]);
        let Some(r): Option<MetadataResponse> = self.conn(i).try_call(ApiKey::Metadata, 12, &req) else {
            return Vec::new();
        };
        let Some(t) = r.topics.into_iter().next() else { return Vec::new() };
        let mut v: Vec<(i32, i32, usize)> =
            t.partitions.iter().map(|p| (p.partition_index, p.leader_id.0, p.isr_nodes.len())).collect();
        v.sort();
        v
    }
}

/// Node index `i` (id `i + 1`) on `rack`, with its cluster port and voter list. Liveness is
/// tightened (heartbeats every 200 ms, fenced after 2 s) so that tests see a dead broker fenced
/// quickly, unless `extra` sets either flag itself.
fn start_node(i: usize, rack: &str, cluster_listen: &str, voters: &str, extra: &[&str]) -> (BrokerProcess, String) {
    let id = (i + 1).to_string();
    let metrics = free_addr();
    let mut args = vec![
        "--node-id",
        &id,
        "--cluster-listen",
        cluster_listen,
        "--controller-quorum-voters",
        voters,
        "--broker-rack",
        rack,
        "--admin-listen",
        &metrics,
    ];
    for (flag, value) in [("--broker-heartbeat-interval-ms", "200"), ("--broker-session-timeout-ms", "2000")] {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend_from_slice(extra);
    (BrokerProcess::start(&args), metrics)
}

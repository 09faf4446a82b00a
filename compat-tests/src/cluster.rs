//! A cluster of `fjord` processes on loopback, each a controller voter on its own data dir,
//! started the way the README starts one.

use std::time::Duration;

use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse};

use crate::wire::topic_metadata;
use crate::{free_addr, wait_until, BrokerProcess, RawConn};

pub struct LocalCluster {
    pub nodes: Vec<BrokerProcess>,
}

impl LocalCluster {
    /// `n` nodes with ids 1..=n on racks r1..rn. Liveness is tightened (heartbeats every
    /// 200 ms, fenced after 2 s) so that tests see a dead broker fenced quickly.
    pub fn start(n: usize) -> LocalCluster {
        let ports: Vec<String> = (0..n).map(|_| free_addr()).collect();
        let voters: Vec<String> = ports.iter().enumerate().map(|(i, a)| format!("{}@{a}", i + 1)).collect();
        let voters = voters.join(",");
        let nodes = (0..n)
            .map(|i| {
                let id = (i + 1).to_string();
                let rack = format!("r{}", i + 1);
                BrokerProcess::start(&[
                    "--node-id",
                    &id,
                    "--cluster-listen",
                    &ports[i],
                    "--controller-quorum-voters",
                    &voters,
                    "--broker-rack",
                    &rack,
                    "--broker-heartbeat-interval-ms",
                    "200",
                    "--broker-session-timeout-ms",
                    "2000",
                ])
            })
            .collect();
        LocalCluster { nodes }
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

    /// (partition, leader id, in-sync replica count) of `topic` as node index `i` shows them.
    pub fn leaders(&self, i: usize, topic: &str) -> Vec<(i32, i32, usize)> {
        let t = topic_metadata(&mut self.conn(i), topic, false);
        let mut v: Vec<(i32, i32, usize)> =
            t.partitions.iter().map(|p| (p.partition_index, p.leader_id.0, p.isr_nodes.len())).collect();
        v.sort();
        v
    }
}

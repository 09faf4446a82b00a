//! Transactions across the nodes of a cluster: the transaction coordinator's view of the rest
//! of the broker (`TxnCluster`), and the node-to-node service that writes a transaction's
//! markers on the node leading each partition (Kafka's WriteTxnMarkers, sent over the cluster
//! transport rather than the client listener, so no client can write a marker).

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use fjord_replication::rpc::{self, RemoteFailure};
use fjord_replication::transport::InboundHandler;
use fjord_replication::NodeId;
use futures::future::BoxFuture;
use kafka_protocol::error::ResponseError;

use crate::coordinator::txn::{write_markers_here, LeaderAt, Markers, TxnCluster};
use crate::leadership::{LeaderGuard, Leadership, Replica, NO_EPOCH};
use crate::server::Broker;

/// The service RPC that writes markers (after the controller's `RPC_SUBMIT`).
pub const RPC_TXN_MARKERS: u8 = fjord_replication::node::SERVICE_RPC_BASE + 1;

/// The service RPC that asks a partition's leader to hand its leadership to the preferred
/// replica (ElectLeaders through another node): body the group id, answer an error code.
pub const RPC_ELECT_PREFERRED: u8 = fjord_replication::node::SERVICE_RPC_BASE + 2;

/// How long a node may take to answer a marker request: its markers wait for their
/// partitions' commits (up to the coordinator writes' own 15 s), as an acks=all produce does.
/// Longer than that wait, so that an answer is not given up while its marker may still land.
const MARKERS_WAIT: Duration = Duration::from_secs(16);

/// The node's service RPCs: the controller's, and the broker's own once it is built.
pub struct Services {
    pub controller: Arc<dyn InboundHandler>,
    pub broker: OnceLock<Weak<Broker>>,
}

impl InboundHandler for Services {
    fn handle(&self, from: NodeId, group: u64, rpc_code: u8, body: Bytes) -> BoxFuture<'static, Bytes> {
        if rpc_code == RPC_ELECT_PREFERRED {
            let broker = self.broker.get().and_then(Weak::upgrade);
            return Box::pin(async move {
                let Some(cluster) = broker.as_ref().and_then(|b| b.cluster.as_ref()) else {
                    return rpc::encode_response::<()>(Err(&RemoteFailure::BadRequest(
                        "the broker is starting".into(),
                    )));
                };
                let group: u64 = match rpc::decode(&body) {
                    Ok(g) => g,
                    Err(e) => return rpc::encode_response::<()>(Err(&RemoteFailure::BadRequest(e.to_string()))),
                };
                let code = match cluster.to_preferred(group).await {
                    Ok(true) => 0i16,
                    Ok(false) => ResponseError::ElectionNotNeeded.code(),
                    Err(e) => e.code(),
                };
                rpc::encode_response(Ok(&code))
            });
        }
        if rpc_code == crate::transforms::RPC_INTERNAL_APPEND {
            return crate::transforms::serve_append(self.broker.get().and_then(Weak::upgrade), body);
        }
        if rpc_code != RPC_TXN_MARKERS {
            return self.controller.handle(from, group, rpc_code, body);
        }
        let broker = self.broker.get().and_then(Weak::upgrade);
        Box::pin(async move {
            let Some(broker) = broker else {
                return rpc::encode_response::<()>(Err(&RemoteFailure::BadRequest("the broker is starting".into())));
            };
            let m: Markers = match rpc::decode(&body) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(from, error = %e, "malformed marker request");
                    return rpc::encode_response::<()>(Err(&RemoteFailure::BadRequest(e.to_string())));
                }
            };
            let durable = broker.txns_durable();
            let codes: Vec<i16> = write_markers_here(&*broker, &broker.groups, &m, durable)
                .await
                .into_iter()
                .map(|e| e.map_or(0, |e| e.code()))
                .collect();
            rpc::encode_response(Ok(&codes))
        })
    }
}

/// The broker as the transaction coordinator of a cluster node sees it.
pub struct BrokerLink(pub Weak<Broker>);

impl TxnCluster for BrokerLink {
    fn lead(&self, topic: &str, partition: i32) -> Result<LeaderGuard, ResponseError> {
        let broker = self.0.upgrade().ok_or(ResponseError::CoordinatorNotAvailable)?;
        broker.lead(topic, partition, NO_EPOCH)
    }

    fn partition_known(&self, topic: &str, partition: i32) -> Option<bool> {
        let broker = self.0.upgrade()?;
        let cluster = broker.cluster.as_ref()?;
        match cluster.replica(topic, partition) {
            Some(Some(_)) => cluster.is_internal(topic),
            _ => None,
        }
    }

    fn leader_of(&self, topic: &str, partition: i32) -> LeaderAt {
        let Some(broker) = self.0.upgrade() else { return LeaderAt::Unknown };
        let Some(cluster) = broker.cluster.as_ref() else { return LeaderAt::Here };
        match cluster.replica(topic, partition) {
            None | Some(None) => LeaderAt::Gone,
            Some(Some(replica)) => {
                if matches!(replica, Replica::Raft { .. }) && broker.lead(topic, partition, NO_EPOCH).is_ok() {
                    return LeaderAt::Here;
                }
                match cluster.leader_address(topic, partition) {
                    Some((node, _, _)) if node != broker.node_id => LeaderAt::Node(node),
                    // The metadata still names this node, which does not lead: a new leader is
                    // being elected, or this one has not served its first entry yet.
                    _ => LeaderAt::Unknown,
                }
            }
        }
    }

    fn write_markers(
        &self,
        node: Option<i32>,
        m: Markers,
        wait: Duration,
    ) -> BoxFuture<'static, Vec<Option<ResponseError>>> {
        let broker = self.0.upgrade();
        Box::pin(async move {
            let n = m.partitions.len();
            let Some(broker) = broker else { return vec![Some(ResponseError::CoordinatorNotAvailable); n] };
            let Some(node) = node else {
                let durable = broker.txns_durable();
                return write_markers_here(&*broker, &broker.groups, &m, durable).await;
            };
            let unreachable = vec![Some(ResponseError::NotLeaderOrFollower); n];
            let (Some(cluster), Ok(target)) = (broker.cluster.as_ref(), NodeId::try_from(node)) else {
                return unreachable;
            };
            let body = match rpc::encode(&m) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode a marker request");
                    return unreachable;
                }
            };
            let answer =
                cluster.node.transport().call(target, 0, RPC_TXN_MARKERS, &[&body], wait.min(MARKERS_WAIT)).await;
            let codes = match answer
                .map_err(|e| e.to_string())
                .and_then(|b| rpc::decode_response::<Vec<i16>>(&b).map_err(|e| e.to_string()))
            {
                Ok(codes) if codes.len() == n => codes,
                Ok(codes) => {
                    tracing::warn!(node, got = codes.len(), want = n, "marker answer of the wrong length");
                    return unreachable;
                }
                Err(e) => {
                    tracing::debug!(node, error = %e, "marker request failed");
                    return unreachable;
                }
            };
            codes
                .into_iter()
                .map(|c| (c != 0).then(|| ResponseError::try_from_code(c).unwrap_or(ResponseError::UnknownServerError)))
                .collect()
        })
    }
}

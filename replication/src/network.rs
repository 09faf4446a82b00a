//! openraft's network over the node transport: `Router` implements openraft-multi's
//! `GroupRouter`, so every group's RPCs to a peer share that peer's one connection.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::{RPCOption, RPCTypes, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use openraft::{BasicNode, OptionalSend};
use openraft_multi::{GroupNetworkAdapter, GroupNetworkFactory, GroupRouter};
use serde::de::DeserializeOwned;

use crate::rpc::{self, CodecError, Rpc};
use crate::transport::{CallError, Transport};
use crate::types::{GroupId, NodeId, TypeConfig};

/// Sends Raft RPCs of any group to any peer through the node's transport.
#[derive(Clone)]
pub struct Router {
    transport: Transport,
}

/// The network factory handed to each group's `Raft`.
pub type NetworkFactory = GroupNetworkFactory<Router, GroupId>;

impl Router {
    pub fn new(transport: Transport) -> Self {
        Self { transport }
    }

    pub fn factory(&self, group: GroupId) -> NetworkFactory {
        GroupNetworkFactory::new(self.clone(), group)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        target: NodeId,
        group: GroupId,
        rpc: Rpc,
        body: Vec<Bytes>,
        timeout: Duration,
    ) -> Result<T, RPCError<TypeConfig>> {
        let answer =
            self.transport.call_pieces(target, group, rpc as u8, body, timeout).await.map_err(|e| match e {
                CallError::Unreachable { .. } => RPCError::Unreachable(Unreachable::from_string(e.to_string())),
                CallError::Timeout { timeout, .. } => {
                    RPCError::Timeout(Timeout { action: rpc_type(rpc), id: self.transport.node_id(), target, timeout })
                }
                // Entries are not capped in bytes yet (the partition store will cap each append);
                // openraft retries this like any network error.
                CallError::TooLarge { .. } => RPCError::Network(NetworkError::from_string(e.to_string())),
            })?;
        rpc::decode_response(&answer).map_err(|e| match e {
            // The peer is up but cannot serve the group now (not created yet, shutting down):
            // openraft backs off on Unreachable and retries, which is what we want.
            CodecError::Remote(f) => RPCError::Unreachable(Unreachable::from_string(f.to_string())),
            other => RPCError::Network(NetworkError::from_string(other.to_string())),
        })
    }
}

/// Timeout of an RPC that carries `bytes` of entries or snapshot data. openraft hands
/// AppendEntries its `heartbeat_interval` as the timeout, which under the node election driver is
/// a short, otherwise unused value (75 ms with the shipped timings): a batch slower than that to
/// send, or to fsync on the follower, would time out on every retry and never commit. A payload
/// gets a floor of seconds plus time for its size at a pessimistic 8 MiB/s.
pub fn payload_timeout(bytes: usize) -> Duration {
    const FLOOR: Duration = Duration::from_secs(5);
    const BYTES_PER_SEC: u64 = 8 << 20;
    FLOOR + Duration::from_millis((bytes as u64).saturating_mul(1000) / BYTES_PER_SEC)
}

fn rpc_type(rpc: Rpc) -> RPCTypes {
    match rpc {
        Rpc::AppendEntries => RPCTypes::AppendEntries,
        // (A recovery question is asked outside openraft's network, `ReplicaNode::peers_recovering`.)
        Rpc::Vote | Rpc::PreVote | Rpc::Recovering => RPCTypes::Vote,
        Rpc::FullSnapshot => RPCTypes::InstallSnapshot,
        Rpc::TransferLeader => RPCTypes::TransferLeader,
    }
}

fn encode_failed(e: CodecError) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string(e.to_string()))
}

fn entry_bytes(e: &openraft::type_config::alias::EntryOf<TypeConfig>) -> usize {
    match &e.payload {
        openraft::EntryPayload::Normal(data) => data.0.len(),
        _ => 0,
    }
}

impl GroupRouter<TypeConfig, GroupId> for Router {
    type SnapshotData = Bytes;

    async fn append_entries(
        &self,
        target: NodeId,
        group_id: GroupId,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // An empty AppendEntries is a heartbeat, which openraft times out itself at the same
        // short interval; only requests carrying entries get the payload timeout.
        let timeout = if rpc.entries.is_empty() {
            option.hard_ttl()
        } else {
            let bytes = rpc.entries.iter().map(entry_bytes).sum();
            option.hard_ttl().max(payload_timeout(bytes))
        };
        let body = rpc::encode_append(&rpc).map_err(encode_failed)?;
        self.call(target, group_id, Rpc::AppendEntries, body.into_pieces(), timeout).await
    }

    async fn vote(
        &self,
        target: NodeId,
        group_id: GroupId,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let body = rpc::encode(&rpc).map_err(encode_failed)?;
        self.call(target, group_id, Rpc::Vote, vec![body.into()], option.hard_ttl()).await
    }

    async fn pre_vote(
        &self,
        target: NodeId,
        group_id: GroupId,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let body = rpc::encode(&rpc).map_err(encode_failed)?;
        self.call(target, group_id, Rpc::PreVote, vec![body.into()], option.hard_ttl()).await
    }

    async fn full_snapshot(
        &self,
        target: NodeId,
        group_id: GroupId,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, Bytes>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let body = rpc::encode_snapshot(&vote, &snapshot.meta, snapshot.snapshot)
            .map_err(|e| StreamingError::from(encode_failed(e)))?;
        let pieces = body.into_pieces();
        let bytes = pieces.iter().map(Bytes::len).sum();
        let timeout = option.hard_ttl().max(payload_timeout(bytes));
        let send = self.call(target, group_id, Rpc::FullSnapshot, pieces, timeout);
        tokio::select! {
            biased;
            r = send => r.map_err(StreamingError::from),
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }

    async fn transfer_leader(
        &self,
        target: NodeId,
        group_id: GroupId,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let body = rpc::encode(&req).map_err(encode_failed)?;
        self.call(target, group_id, Rpc::TransferLeader, vec![body.into()], option.hard_ttl()).await
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = GroupNetworkAdapter<TypeConfig, GroupId, Router>;

    /// The membership carries each node's cluster address; registering it here lets a group
    /// reach a node the transport has not heard of (a node added by a membership change). A
    /// known peer keeps the address it was given (configured addresses win).
    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        self.factory.transport.add_peer_if_unknown(target, &node.addr);
        GroupNetworkAdapter::new(self.factory.clone(), target, self.group_id)
    }
}

//! The openraft type configuration shared by every Raft group of a Fjord node.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A node of the cluster (Kafka's `node.id`).
pub type NodeId = u64;

/// A Raft group: the controller quorum or one partition. Ids are handed out by the controller and
/// never reused, so a recreated topic never receives messages meant for its old incarnation.
pub type GroupId = u64;

/// The application payload of one Raft entry: one Kafka record batch, kept as the bytes the
/// producer sent. On the wire it travels raw after the entry metadata and is sliced without a copy
/// on the receiving side.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchData(pub Bytes);

impl std::fmt::Display for BatchData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "batch of {} bytes", self.0.len())
    }
}

/// What applying an entry answers its proposer (openraft's `R`): where a partition entry landed,
/// which is what a produce response needs. Groups whose entries are not record batches (the
/// controller, the in-memory test log) answer `Applied::default()`, all -1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub base_offset: i64,
    pub last_offset: i64,
    /// The broker's timestamp when the topic uses LogAppendTime, else -1.
    pub log_append_time: i64,
    pub log_start_offset: i64,
}

impl Default for Applied {
    fn default() -> Self {
        Applied { base_offset: -1, last_offset: -1, log_append_time: -1, log_start_offset: -1 }
    }
}

openraft::declare_raft_types!(
    /// Terms are u64 because openraft's storage test suite needs `Term: From<u64>`; a term is the
    /// batch's partitionLeaderEpoch (an i32), so terms past `i32::MAX` are refused when a batch is
    /// stamped (later milestone). The std leader id allows one leader per term, as Kafka's leader
    /// epoch does.
    pub TypeConfig:
        D = BatchData,
        R = Applied,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Term = u64,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, NodeId>,
        Vote = openraft::impls::Vote<Self::LeaderId>,
        AsyncRuntime = crate::rt::FjordRuntime,
);

/// A Raft group handle with the state machine type `SM`.
pub type Raft<SM> = openraft::Raft<TypeConfig, SM>;

/// Largest term that still fits Kafka's partitionLeaderEpoch (an i32).
pub const MAX_TERM: u64 = i32::MAX as u64;

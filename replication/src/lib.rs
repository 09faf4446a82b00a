//! Raft replication for Fjord: the openraft type config, a node-to-node transport that carries
//! every group's RPCs over one connection per peer, the group registry, the heartbeat and
//! election drivers, and `controller`, the cluster metadata state machine that the controller
//! quorum's Raft group applies on every node.

pub mod applier;
pub mod clock;
pub mod controller;
pub mod election;
pub mod heartbeat;
pub mod machine;
pub mod mem;
pub mod network;
pub mod node;
pub mod partition;
pub mod reassign;
pub mod recovery;
pub mod registry;
pub mod rpc;
pub mod rt;
pub mod server;
pub mod transport;
pub mod types;

pub use types::{Applied, BatchData, GroupId, NodeId, Raft, TypeConfig};

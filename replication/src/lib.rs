//! Raft replication for Fjord. `controller` is the cluster metadata state
//! machine that the controller quorum's Raft group applies on every node.

pub mod controller;

//! The controller's metadata state machine: records, the state they build,
//! replica placement, snapshots, and the import of a single-node data dir.
//! Pure and deterministic (no I/O, clock or randomness), so openraft's
//! `RaftStateMachine` can drive it and every node applies it identically.

pub mod placement;
mod records;

pub use records::{
    BrokerRegistration, ConfigResource, CreateTopic, DecodeError, ErrorCode, GroupId, LeadershipReport,
    MetadataError, MetadataRecord, NodeId, RECORD_VERSION,
};

//! The controller's metadata state machine: records, the state they build,
//! replica placement, snapshots, and the import of a single-node data dir.
//! Pure and deterministic (no I/O, clock or randomness), so openraft's
//! `RaftStateMachine` can drive it and every node applies it identically.
//!
//! The controller leader turns a request into a record with a
//! `ClusterMetadata::propose_*` call (a Kafka error if refused), proposes
//! `record.encode()`, and every node, on commit, calls
//! `apply(&MetadataRecord::decode(bytes)?)`. An `Err` from apply is an
//! answer for the proposer (the state moved since the proposal), not a
//! failure of the log: the state is unchanged and the next entry applies.
//! Snapshots are `snapshot()` / `ClusterMetadata::restore`.

mod import;
mod machine;
pub mod placement;
mod propose;
mod reassign;
mod records;
mod service;
mod state;

pub use import::{import_single_node, ImportError};
pub use machine::{ControllerMachine, ProposeError};
pub use propose::{AnyConfig, ConfigValidator, NewTopic, ReassignmentStep, TopicDefaults, PRODUCER_ID_BLOCK};
pub use records::{
    BrokerRegistration, ConfigResource, CreateTopic, DecodeError, ErrorCode, GroupId, LeadershipReport, MetadataError,
    MetadataRecord, NodeId, Reassignment, RECORD_VERSION,
};
pub use service::{Answer, Controller, Liveness, Request, SubmitError, TaskGuard, RPC_SUBMIT};
pub use state::{
    validate_topic_name, Broker, ClusterMetadata, Outcome, Partition, Reassigning, Topic, CONTROLLER_GROUP,
    MAX_PARTITIONS,
};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

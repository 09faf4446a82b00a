//! The state machine type of a node's groups. One `ReplicaNode` (one transport, one registry,
//! one set of drivers) hosts the controller quorum's group and the node's partition groups, and
//! openraft fixes one state machine type per `Raft`, so this enum carries either kind and passes
//! each call to it.

use std::io;

use bytes::Bytes;
use futures::Stream;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::OptionalSend;

use crate::controller::ControllerMachine;
use crate::partition::PartitionStateMachine;
use crate::types::TypeConfig;

#[derive(Clone)]
pub enum NodeMachine {
    Controller(ControllerMachine),
    Partition(PartitionStateMachine),
}

impl RaftSnapshotBuilder<TypeConfig> for NodeMachine {
    type SnapshotData = Bytes;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Bytes>, io::Error> {
        match self {
            NodeMachine::Controller(m) => m.build_snapshot().await,
            NodeMachine::Partition(m) => m.build_snapshot().await,
        }
    }
}

impl RaftStateMachine<TypeConfig> for NodeMachine {
    type SnapshotData = Bytes;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        match self {
            NodeMachine::Controller(m) => m.applied_state().await,
            NodeMachine::Partition(m) => m.applied_state().await,
        }
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        match self {
            NodeMachine::Controller(m) => m.apply(entries).await,
            NodeMachine::Partition(m) => m.apply(entries).await,
        }
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMetaOf<TypeConfig>, snapshot: Bytes) -> Result<(), io::Error> {
        match self {
            NodeMachine::Controller(m) => m.install_snapshot(meta, snapshot).await,
            NodeMachine::Partition(m) => m.install_snapshot(meta, snapshot).await,
        }
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<TypeConfig, Bytes>>, io::Error> {
        match self {
            NodeMachine::Controller(m) => m.get_current_snapshot().await,
            NodeMachine::Partition(m) => m.get_current_snapshot().await,
        }
    }
}

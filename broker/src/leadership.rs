//! Partition leadership: the one question handlers ask before touching a
//! partition ("am I its leader, at which epoch?"), answered with the log to use.

use std::sync::Arc;

use fjord_replication::applier::LocalReplica;
use fjord_replication::machine::NodeMachine;
use fjord_replication::partition::produce;
use fjord_replication::Raft;
use fjord_storage::PartitionLog;
use kafka_protocol::error::ResponseError;

use crate::topics::Topics;

/// A request that names no leader epoch (Kafka's -1): it is not checked.
pub const NO_EPOCH: i32 = -1;

/// How this node holds a partition.
#[derive(Clone)]
pub enum Replica {
    /// The only copy, on this node: always the leader, at the epoch its log
    /// last recorded.
    Local(Arc<PartitionLog>),
    /// This node's replica of a partition's Raft group: the leader is whoever
    /// the group's metrics say, its epoch the current term, and a follower
    /// answers NOT_LEADER_OR_FOLLOWER.
    Raft { raft: Raft<NodeMachine>, replica: LocalReplica },
    /// A partition of the cluster with no replica on this node.
    Elsewhere,
}

impl Replica {
    /// Our leader epoch, or the error a client gets when we do not lead.
    fn leader_epoch(&self) -> Result<i32, ResponseError> {
        match self {
            // A log never written has no epoch yet: it starts at 0, the
            // epoch its first append carries.
            Replica::Local(log) => Ok(log.latest_epoch().unwrap_or(0)),
            Replica::Raft { raft, .. } => produce::leader_epoch(raft).ok_or(ResponseError::NotLeaderOrFollower),
            Replica::Elsewhere => Err(ResponseError::NotLeaderOrFollower),
        }
    }

    fn log(&self) -> Option<&Arc<PartitionLog>> {
        match self {
            Replica::Local(log) => Some(log),
            Replica::Raft { replica, .. } => Some(&replica.log),
            Replica::Elsewhere => None,
        }
    }

    /// How writes reach the log: through the group when it is replicated.
    fn writer(&self) -> Option<RaftWriter> {
        match self {
            Replica::Raft { raft, replica } => {
                Some(RaftWriter { raft: raft.clone(), proposer: replica.proposer.clone() })
            }
            _ => None,
        }
    }
}

/// The way into a replicated partition's log: every write is proposed to its
/// Raft group through its proposer, never appended to the log directly.
#[derive(Clone)]
pub struct RaftWriter {
    pub raft: Raft<NodeMachine>,
    pub proposer: Arc<produce::Proposer>,
}

/// Proof of leadership for one request: the log to read or write and the
/// epoch appends must carry.
#[derive(Clone)]
pub struct LeaderGuard {
    pub log: Arc<PartitionLog>,
    pub epoch: i32,
    /// Set for a replicated partition: writes go through it.
    pub raft: Option<RaftWriter>,
}

/// Kafka's check of a request's `current_leader_epoch` against ours: an older
/// one is fenced (the client's metadata is stale), a newer one is unknown
/// (ours is stale, the client retries), -1 skips the check.
pub fn check_epoch(ours: i32, requested: i32) -> Result<(), ResponseError> {
    match requested {
        NO_EPOCH => Ok(()),
        r if r < ours => Err(ResponseError::FencedLeaderEpoch),
        r if r > ours => Err(ResponseError::UnknownLeaderEpoch),
        _ => Ok(()),
    }
}

/// Where partitions are found and who leads them. Handlers and coordinators
/// go through `lead` for every partition they serve or append to.
pub trait Leadership: Send + Sync {
    /// This node's replica of the partition, if it has one.
    fn replica(&self, topic: &str, partition: i32) -> Option<Replica>;

    /// The partition's log and epoch when this node leads it and
    /// `current_leader_epoch` (or [`NO_EPOCH`]) matches ours.
    fn lead(&self, topic: &str, partition: i32, current_leader_epoch: i32) -> Result<LeaderGuard, ResponseError> {
        let replica = self.replica(topic, partition).ok_or(ResponseError::UnknownTopicOrPartition)?;
        let epoch = replica.leader_epoch()?;
        check_epoch(epoch, current_leader_epoch)?;
        let log = replica.log().ok_or(ResponseError::NotLeaderOrFollower)?.clone();
        Ok(LeaderGuard { log, epoch, raft: replica.writer() })
    }

    /// The leader epoch Metadata reports, -1 when the partition is unknown.
    fn leader_epoch(&self, topic: &str, partition: i32) -> i32 {
        self.lead(topic, partition, NO_EPOCH).map(|g| g.epoch).unwrap_or(NO_EPOCH)
    }
}

/// A single node holds every partition of the registry as its only copy.
impl Leadership for Topics {
    fn replica(&self, topic: &str, partition: i32) -> Option<Replica> {
        self.log(topic, partition).map(Replica::Local)
    }
}

/// The broker's view: in a cluster, a topic of the replicated metadata is
/// served by the partition's Raft group; anything else (the coordinators'
/// internal topics, which stay local to each node for now, and every topic of
/// a single node) by the local registry.
impl Leadership for crate::server::Broker {
    fn replica(&self, topic: &str, partition: i32) -> Option<Replica> {
        if let Some(found) = self.cluster.as_ref().and_then(|c| c.replica(topic, partition)) {
            return found;
        }
        self.topics.replica(topic, partition)
    }
}

/// What a coordinator tells its client when it cannot lead the internal
/// partition it writes to (Kafka's mapping): another node leads it (or will),
/// so look the coordinator up again, or it is not there at all yet.
pub fn coordinator_error(e: ResponseError) -> ResponseError {
    match e {
        ResponseError::NotLeaderOrFollower | ResponseError::FencedLeaderEpoch => ResponseError::NotCoordinator,
        _ => ResponseError::CoordinatorNotAvailable,
    }
}

/// Kafka's answer to OffsetForLeaderEpoch for `epoch` on a log whose leader
/// epoch is `ours`: the epoch asked for (or the largest below it) and where
/// it ends; `(-1, -1)` when the log knows nothing of it.
pub fn end_offset_for(log: &PartitionLog, ours: i32, epoch: i32) -> (i32, i64) {
    if epoch == NO_EPOCH || epoch > ours {
        return (NO_EPOCH, -1);
    }
    if epoch == ours {
        // Also covers a log never written, whose epoch cache is empty.
        return (ours, log.log_end_offset());
    }
    match log.end_offset_for_epoch(epoch) {
        Some(found) => found,
        // Older than anything recorded: it ended where the first recorded
        // epoch starts, which the cache keeps at or after the log start.
        None => (epoch, log.first_epoch_start().unwrap_or_else(|| log.log_end_offset())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BrokerConfig;
    use fjord_storage::batch::build_batch;
    use std::collections::BTreeMap;

    fn topics() -> (tempfile::TempDir, Topics) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
        let topics = Topics::open(&cfg).unwrap();
        topics.create("t", 1, BTreeMap::new(), false).unwrap();
        (dir, topics)
    }

    #[test]
    fn unknown_partitions_are_unknown() {
        let (_d, topics) = topics();
        assert_eq!(topics.lead("nope", 0, NO_EPOCH).err(), Some(ResponseError::UnknownTopicOrPartition));
        assert_eq!(topics.lead("t", 1, NO_EPOCH).err(), Some(ResponseError::UnknownTopicOrPartition));
        assert_eq!(topics.leader_epoch("t", 1), -1);
    }

    #[test]
    fn a_new_log_leads_at_epoch_zero_and_checks_the_requested_epoch() {
        let (_d, topics) = topics();
        let g = topics.lead("t", 0, NO_EPOCH).unwrap();
        assert_eq!(g.epoch, 0);
        assert!(topics.lead("t", 0, 0).is_ok());
        assert_eq!(topics.lead("t", 0, 1).err(), Some(ResponseError::UnknownLeaderEpoch));
    }

    #[test]
    fn the_epoch_is_the_logs_latest_and_older_ones_are_fenced() {
        let (_d, topics) = topics();
        let log = topics.lead("t", 0, NO_EPOCH).unwrap().log;
        log.append(&build_batch(0, 1, &[(None, Some(b"a"))]), 0, 1).unwrap();
        log.append(&build_batch(0, 1, &[(None, Some(b"b"))]), 3, 1).unwrap();
        assert_eq!(topics.leader_epoch("t", 0), 3);
        assert_eq!(topics.lead("t", 0, 3).unwrap().epoch, 3);
        assert_eq!(topics.lead("t", 0, 2).err(), Some(ResponseError::FencedLeaderEpoch));
        assert_eq!(topics.lead("t", 0, 4).err(), Some(ResponseError::UnknownLeaderEpoch));
        // OffsetForLeaderEpoch: epoch 0 ended where 3 began; 3 runs to the end.
        assert_eq!(end_offset_for(&log, 3, 0), (0, 1));
        assert_eq!(end_offset_for(&log, 3, 2), (0, 1));
        assert_eq!(end_offset_for(&log, 3, 3), (3, 2));
        assert_eq!(end_offset_for(&log, 3, 4), (-1, -1));
        assert_eq!(end_offset_for(&log, 3, -1), (-1, -1));
    }
}

//! Partition reassignments in the metadata: what AlterPartitionReassignments records, and the
//! two steps the group's leader records as it changes the group's Raft membership
//! (`crate::reassign` drives those).
//!
//! While a reassignment is in progress a partition's `replicas` is the target followed by every
//! other node that may hold the group's log, as Kafka lists them; adding replicas are the
//! target's not in the original set, removing replicas are the listed ones not in the target.
//!
//! Unlike Kafka's, a replaced or cancelled reassignment does not drop the replicas it was
//! adding at once: they may already be voters of the group, and dropping them from `replicas`
//! would have them delete logs that count towards commits. They stay listed as removing until
//! the leader has taken them out of the group. Cancelling sets the original replicas as the
//! target, and the leader moves the group back to them like any other reassignment.

use super::records::{err, ErrorCode, GroupId, MetadataError, NodeId, Reassignment};
use super::state::{ClusterMetadata, Outcome, Partition, Reassigning};

impl Partition {
    /// Whether a reassignment is in progress.
    pub fn reassigning(&self) -> bool {
        self.reassignment.is_some()
    }

    /// The replicas a reassignment in progress moves to (else the replicas), in order.
    pub fn target(&self) -> Vec<NodeId> {
        self.reassignment.as_ref().map_or_else(|| self.replicas.clone(), |r| r.target.clone())
    }

    /// The replicas before the reassignment in progress (else the replicas), in order.
    pub fn original(&self) -> Vec<NodeId> {
        self.reassignment.as_ref().map_or_else(|| self.replicas.clone(), |r| r.original.clone())
    }

    /// Kafka's adding replicas: the target's that were not in the original set.
    pub fn adding(&self) -> Vec<NodeId> {
        let original = self.original();
        self.target().into_iter().filter(|r| !original.contains(r)).collect()
    }

    /// Kafka's removing replicas: the listed ones outside the target.
    pub fn removing(&self) -> Vec<NodeId> {
        let target = self.target();
        self.replicas.iter().filter(|r| !target.contains(r)).copied().collect()
    }

    /// The replicas outside the original set that the group's leader may have made voters
    /// (`Reassigning::promoted`).
    pub fn promoted(&self) -> &[NodeId] {
        self.reassignment.as_ref().map_or(&[], |r| r.promoted.as_slice())
    }

    /// Sets a new target: the replicas become the target followed by every other listed node.
    fn retarget(&mut self, target: Vec<NodeId>) {
        let (original, promoted) = match self.reassignment.take() {
            Some(r) => (r.original, r.promoted),
            None => (self.replicas.clone(), Vec::new()),
        };
        let mut replicas = target.clone();
        replicas.extend(self.replicas.iter().filter(|r| !target.contains(r)));
        self.replicas = replicas;
        self.reassignment = Some(Reassigning { target, original, promoted, epoch: self.reassignments });
        self.reassignments += 1;
    }
}

fn same_set(a: &[NodeId], b: &[NodeId]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

impl ClusterMetadata {
    pub(super) fn apply_alter_reassignments(&mut self, entries: &[Reassignment], allow_rf_change: bool) -> Outcome {
        let (mut applied, mut skipped) = (Vec::new(), Vec::new());
        for e in entries {
            match self.alter_reassignment(e, allow_rf_change) {
                Ok(()) => applied.push(e.group_id),
                Err(error) => skipped.push((e.group_id, error)),
            }
        }
        Outcome::ReassignmentsAltered { applied, skipped }
    }

    fn alter_reassignment(&mut self, e: &Reassignment, allow_rf_change: bool) -> Result<(), MetadataError> {
        let g = e.group_id;
        let p = self.partitions().get(&g).ok_or_else(|| {
            MetadataError::new(ErrorCode::UnknownTopicOrPartition, format!("No partition has group {g}"))
        })?;
        let target = match &e.target {
            None if !p.reassigning() => {
                return err(
                    ErrorCode::NoReassignmentInProgress,
                    format!("No reassignment of {}-{} is in progress", p.topic, p.index),
                )
            }
            None => p.original(),
            Some(t) => {
                self.check_replica_lists(std::slice::from_ref(t))
                    .map_err(|e| MetadataError::new(e.code, format!("{}-{}: {}", p.topic, p.index, e.message)))?;
                let current = p.original().len();
                if !allow_rf_change && t.len() != current {
                    return err(
                        ErrorCode::InvalidReplicationFactor,
                        format!(
                            "{}-{} has {current} replicas and the target {}; the request does not allow changing the replication factor",
                            p.topic,
                            p.index,
                            t.len()
                        ),
                    );
                }
                t.clone()
            }
        };
        let p = self.partition_mut(g)?;
        if !p.reassigning() && same_set(&target, &p.replicas) {
            // Only the order changes (the preferred leader): no replica moves, so the group's
            // membership already matches.
            p.replicas = target;
            return Ok(());
        }
        p.retarget(target);
        Ok(())
    }

    pub(super) fn apply_promote_reassignment(
        &mut self,
        g: GroupId,
        epoch: u64,
        joining: &[NodeId],
    ) -> Result<Outcome, MetadataError> {
        let p = self.current_reassignment(g, epoch)?;
        let target = p.target();
        if joining.is_empty() || joining.iter().any(|j| !target.contains(j)) {
            return err(
                ErrorCode::InvalidRequest,
                format!("Group {g} moves to {target:?}; it cannot promote {joining:?}"),
            );
        }
        let original = p.original();
        // A group's leader has made its membership change: it has had a leader (see
        // `apply_complete_reassignment`).
        p.leader_epoch = p.leader_epoch.max(1);
        if let Some(r) = &mut p.reassignment {
            for j in joining {
                if !original.contains(j) && !r.promoted.contains(j) {
                    r.promoted.push(*j);
                }
            }
        }
        Ok(Outcome::ReassignmentPromoting { group_id: g })
    }

    pub(super) fn apply_complete_reassignment(&mut self, g: GroupId, epoch: u64) -> Result<Outcome, MetadataError> {
        let p = self.current_reassignment(g, epoch)?;
        let target = p.target();
        p.replicas = target.clone();
        p.reassignment = None;
        p.isr.retain(|r| target.contains(r));
        if p.leader.is_some_and(|l| !target.contains(&l)) {
            p.leader = None;
        }
        // Only a leader completes a reassignment, so the group has had one (at a term of at
        // least 1), whether or not its leadership reports were taken: a replica that starts
        // without its log from now on recovers before it votes (`applier`).
        p.leader_epoch = p.leader_epoch.max(1);
        Ok(Outcome::ReassignmentCompleted { group_id: g })
    }

    /// Whether reassignment `epoch` of `g` is in progress (a step a leader decided for a
    /// reassignment since replaced, even by one to the same target, is refused; the leader
    /// works towards the new one).
    pub(super) fn check_reassignment(&self, g: GroupId, epoch: u64) -> Result<(), MetadataError> {
        let Some(p) = self.partition(g) else {
            return err(ErrorCode::UnknownTopicOrPartition, format!("No partition has group {g}"));
        };
        match &p.reassignment {
            Some(r) if r.epoch == epoch => Ok(()),
            Some(r) => err(
                ErrorCode::NoReassignmentInProgress,
                format!("Group {g} is at reassignment {} (to {:?}), not {epoch}", r.epoch, r.target),
            ),
            None => err(ErrorCode::NoReassignmentInProgress, format!("No reassignment of group {g} is in progress")),
        }
    }

    fn current_reassignment(&mut self, g: GroupId, epoch: u64) -> Result<&mut Partition, MetadataError> {
        self.check_reassignment(g, epoch)?;
        self.partition_mut(g)
    }
}

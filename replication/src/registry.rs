//! The Raft groups hosted on this node, by group id: where inbound RPCs find their group and the
//! heartbeat driver finds the local leaders.

use std::collections::BTreeMap;
use std::sync::RwLock;

use openraft::storage::RaftStateMachine;

use crate::types::{GroupId, Raft, TypeConfig};

/// `None` marks a group being started: its id is taken before `Raft::new` runs, so two starts of
/// one group can never both open its store and vote from it.
pub struct GroupRegistry<SM: RaftStateMachine<TypeConfig>> {
    groups: RwLock<BTreeMap<GroupId, Option<Raft<SM>>>>,
}

/// Refusal to start a group this node already runs (or is starting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("group {0} is already running on this node")]
pub struct AlreadyRunning(pub GroupId);

impl<SM: RaftStateMachine<TypeConfig>> Default for GroupRegistry<SM> {
    fn default() -> Self {
        Self { groups: RwLock::new(BTreeMap::new()) }
    }
}

impl<SM: RaftStateMachine<TypeConfig>> GroupRegistry<SM> {
    // A poisoned lock only means a panic elsewhere while holding it; the map is still whole
    // (every critical section is one insert, remove or read), so keep serving.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<GroupId, Option<Raft<SM>>>> {
        self.groups.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<GroupId, Option<Raft<SM>>>> {
        self.groups.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `group`'s id for a start, in the same critical section as the check that no other
    /// start or running instance holds it. Follow with `fill` or `release`.
    pub fn reserve(&self, group: GroupId) -> Result<(), AlreadyRunning> {
        let mut groups = self.write();
        if groups.contains_key(&group) {
            return Err(AlreadyRunning(group));
        }
        groups.insert(group, None);
        Ok(())
    }

    /// Publishes the handle of a group reserved with `reserve`.
    pub fn fill(&self, group: GroupId, raft: Raft<SM>) {
        self.write().insert(group, Some(raft));
    }

    /// Gives up a reservation whose start failed (a running group is left alone).
    pub fn release(&self, group: GroupId) {
        let mut groups = self.write();
        if matches!(groups.get(&group), Some(None)) {
            groups.remove(&group);
        }
    }

    pub fn remove(&self, group: GroupId) -> Option<Raft<SM>> {
        self.write().remove(&group).flatten()
    }

    pub fn get(&self, group: GroupId) -> Option<Raft<SM>> {
        self.read().get(&group).cloned().flatten()
    }

    pub fn len(&self) -> usize {
        self.read().values().filter(|r| r.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every group this node currently leads (from each group's metrics, no round trip).
    pub fn leaders(&self) -> Vec<Raft<SM>> {
        self.read().values().flatten().filter(|r| r.is_leader()).cloned().collect()
    }

    pub fn all(&self) -> Vec<(GroupId, Raft<SM>)> {
        self.read().iter().filter_map(|(g, r)| Some((*g, r.clone()?))).collect()
    }
}

//! The Raft groups hosted on this node, by group id: where inbound RPCs find their group and the
//! heartbeat driver finds the local leaders.

use std::collections::HashMap;
use std::sync::RwLock;

use openraft::storage::RaftStateMachine;

use crate::types::{GroupId, Raft, TypeConfig};

pub struct GroupRegistry<SM: RaftStateMachine<TypeConfig>> {
    groups: RwLock<HashMap<GroupId, Raft<SM>>>,
}

impl<SM: RaftStateMachine<TypeConfig>> Default for GroupRegistry<SM> {
    fn default() -> Self {
        Self { groups: RwLock::new(HashMap::new()) }
    }
}

impl<SM: RaftStateMachine<TypeConfig>> GroupRegistry<SM> {
    // A poisoned lock only means a panic elsewhere while holding it; the map is still whole
    // (every critical section is one insert, remove or read), so keep serving.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<GroupId, Raft<SM>>> {
        self.groups.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<GroupId, Raft<SM>>> {
        self.groups.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a group; returns the handle it replaced, if any.
    pub fn insert(&self, group: GroupId, raft: Raft<SM>) -> Option<Raft<SM>> {
        self.write().insert(group, raft)
    }

    pub fn remove(&self, group: GroupId) -> Option<Raft<SM>> {
        self.write().remove(&group)
    }

    pub fn get(&self, group: GroupId) -> Option<Raft<SM>> {
        self.read().get(&group).cloned()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Every group this node currently leads (from each group's metrics, no round trip).
    pub fn leaders(&self) -> Vec<Raft<SM>> {
        self.read().values().filter(|r| r.is_leader()).cloned().collect()
    }

    pub fn all(&self) -> Vec<(GroupId, Raft<SM>)> {
        self.read().iter().map(|(g, r)| (*g, r.clone())).collect()
    }
}

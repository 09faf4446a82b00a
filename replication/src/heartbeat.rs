//! The node-level heartbeat driver. Groups run with `enable_heartbeat = false`; once per interval
//! the driver triggers a heartbeat on every local leader, so the heartbeats of all groups to a
//! peer are queued together and leave in one coalesced write instead of one timer per group.
//!
//! openraft 0.10.0-alpha.37 sends a triggered heartbeat whatever `enable_heartbeat` says:
//! `RaftCore::handle_external_command(ExternalCommand::Heartbeat)` calls `send_heartbeat` without
//! looking at the flag, which only gates the tick's own heartbeat (`RaftCore::handle_tick`).

use std::sync::Arc;
use std::time::Duration;

use openraft::storage::RaftStateMachine;
use tokio::task::JoinHandle;

use crate::registry::GroupRegistry;
use crate::types::TypeConfig;

/// Runs until dropped.
pub struct HeartbeatDriver {
    task: JoinHandle<()>,
}

impl HeartbeatDriver {
    pub fn spawn<SM: RaftStateMachine<TypeConfig>>(registry: Arc<GroupRegistry<SM>>, interval: Duration) -> Self {
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                for raft in registry.leaders() {
                    // Fails only when the group is shutting down; the next sweep skips it.
                    if let Err(e) = raft.trigger().heartbeat().await {
                        tracing::debug!(error = %e, "heartbeat trigger failed");
                    }
                }
            }
        });
        Self { task }
    }
}

impl Drop for HeartbeatDriver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

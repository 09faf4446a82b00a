//! A partition reassignment on the group's leader: the metadata names the target replicas
//! (`controller::reassign`), and the leader changes the group's Raft membership to them, one
//! safe step at a time, re-reading the state before each:
//!
//! 1. each target replica outside the group joins as a learner (it copies the log, takes no
//!    part in commits or elections);
//! 2. once every joining replica is within `CATCH_UP_LAG` entries of the leader and holds an
//!    entry of the leader's term at or past the commit it was first seen to follow
//!    (`CatchUpMarks`: a joining replica, which starts recovering, `recovery`, has ended its
//!    recovery and votes by then) and answers that it is not recovering (it may have restarted
//!    since), the leader records that it is about to make them voters (`Reassigning::promoted`, so one that later loses its disk
//!    recovers rather than starting afresh);
//! 3. a leader that is itself leaving hands its leadership to an in-sync target voter (first
//!    making the target replicas voters beside the current ones, if none is yet);
//! 4. the voters become the target (openraft's joint consensus: both majorities agree until
//!    the new set alone decides), and learners outside the target are dropped;
//! 5. the leader reports the reassignment complete; the metadata then lists the target alone,
//!    and the replicas left out stop and delete their logs.
//!
//! Any leader of the group picks up where the last stopped, since every step starts from the
//! group's membership as its log records it. Before each membership change the leader asks the
//! controller whether its reassignment (by epoch) is still the one in progress, so a node whose
//! metadata lags never moves a group towards a replaced target. Membership changes hold the
//! partition's write lock (`Proposer::exclusive`), so a pipelined producer write never mistakes
//! a membership entry for its own.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::{BasicNode, ChangeMembers};

use crate::applier::Replicas;
use crate::controller::{Controller, ReassignmentStep, Request};
use crate::machine::NodeMachine;
use crate::node::ReplicaNode;
use crate::partition::produce::leader_epoch;
use crate::types::{GroupId, NodeId};

/// How far (in Raft entries) a joining replica may be behind the leader's log when it becomes
/// a voter. Raft is safe whatever the lag; a voter far behind only slows commits until it has
/// caught up, and while a majority needs it, stalls them.
pub const CATCH_UP_LAG: u64 = 1000;

/// For each member of a group other than its leader: the leader's term, and the leader's commit
/// index when the member's progress first showed an entry of that term. A recovering replica
/// ends its recovery at an entry of its leader's term at or past the commit that leader named
/// in the first AppendEntries it heard from it (`recovery`); that append went out before the
/// progress showed, so its commit is at most the mark. Unlike the leader's commit index of the
/// moment, the mark stays put, so a replica following a busy leader a little behind reaches it.
#[derive(Clone, Debug, Default)]
pub struct CatchUpMarks(BTreeMap<NodeId, (u64, Option<u64>)>);

/// How often the leader looks at its groups' reassignments.
const STEP_INTERVAL: Duration = Duration::from_millis(200);

/// A reassignment in progress, as the metadata has it.
struct Moving {
    topic: String,
    index: i32,
    epoch: u64,
    target: Vec<NodeId>,
    /// The original replicas and those recorded as promoted: the nodes that may be voters.
    may_vote: BTreeSet<NodeId>,
}

/// Drives the reassignments of the groups this node leads, until dropped (through the
/// returned future's task).
pub(crate) async fn run(
    node: Arc<ReplicaNode<NodeMachine>>,
    controller: Arc<Controller<NodeMachine>>,
    replicas: Arc<Replicas>,
) {
    let mut steps: BTreeMap<GroupId, tokio::task::JoinHandle<()>> = BTreeMap::new();
    let marks: Arc<std::sync::Mutex<BTreeMap<GroupId, CatchUpMarks>>> = Arc::default();
    // The groups whose catch-up lag this node published, to zero it when they are done.
    let mut lagging: BTreeMap<GroupId, (String, i32)> = BTreeMap::new();
    let mut changes = controller.machine().subscribe();
    loop {
        tokio::select! {
            biased;
            _ = tokio::time::sleep(STEP_INTERVAL) => {}
            changed = changes.changed() => if changed.is_err() { return },
        }
        let (moving, addresses) = controller.machine().read(|m| {
            let moving: BTreeMap<GroupId, Moving> = m
                .partitions()
                .iter()
                .filter_map(|(g, p)| {
                    let r = p.reassignment.as_ref()?;
                    // Not before the group's first leadership is on record: a replica of a group
                    // that has never had a leader starts empty as a voter (the applier's rule;
                    // one that may have lost its disk settles with the others first,
                    // `recovery::settle_replica`), which must not happen once membership entries
                    // have been committed.
                    if p.leader_epoch == 0 {
                        return None;
                    }
                    let ids = |v: &[i32]| v.iter().filter_map(|n| NodeId::try_from(*n).ok()).collect::<Vec<_>>();
                    let may_vote = ids(&r.original).into_iter().chain(ids(&r.promoted)).collect();
                    let m = Moving {
                        topic: p.topic.clone(),
                        index: p.index,
                        epoch: r.epoch,
                        target: ids(&r.target),
                        may_vote,
                    };
                    Some((*g, m))
                })
                .collect();
            (moving, crate::applier::cluster_addresses(m))
        });
        metrics::gauge!("fjord_partitions_reassigning").set(moving.len() as f64);
        steps.retain(|_, h| !h.is_finished());
        for (g, (topic, index)) in &lagging {
            if !moving.contains_key(g) {
                metrics::gauge!("fjord_reassignment_lag_entries", "topic" => topic.clone(), "partition" => index.to_string())
                    .set(0.0);
            }
        }
        lagging.retain(|g, _| moving.contains_key(g));
        marks.lock().unwrap_or_else(|e| e.into_inner()).retain(|g, _| moving.contains_key(g));
        for (group, m) in moving {
            let Some(raft) = node.group(group) else { continue };
            if steps.contains_key(&group) || leader_epoch(&raft).is_none() {
                continue;
            }
            let Some(replica) = replicas.get(group) else { continue };
            lagging.insert(group, (m.topic.clone(), m.index));
            let (node, controller, addresses, marks) =
                (node.clone(), controller.clone(), addresses.clone(), marks.clone());
            // Its own task: a membership change waits for its commit (a leader without a
            // quorum waits as long as it has none), and other groups must not wait with it.
            let task = tokio::spawn(async move {
                if let Err(e) = step(&node, &controller, group, &m, &replica, &addresses, &marks).await {
                    tracing::info!(group, topic = %m.topic, partition = m.index, error = %e, "reassignment step did not complete; retrying");
                }
            });
            steps.insert(group, task);
        }
    }
}

/// What a group's leader knows when it decides the next step of a reassignment.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub me: NodeId,
    /// The leader's term.
    pub term: u64,
    /// Every voter, of each config while the membership is joint.
    pub voters: BTreeSet<NodeId>,
    /// Voters and learners.
    pub members: BTreeSet<NodeId>,
    /// Whether the membership has a single config (not joint).
    pub uniform: bool,
    /// How far behind this leader's log each member is (in entries); `None` for one that has
    /// matched nothing yet (it may be down), which is never taken as caught up.
    pub lag: BTreeMap<NodeId, Option<u64>>,
    /// The voters other than the leader that hold every committed entry and answered within
    /// `READY_HEARD`: those a leadership may be handed to.
    pub ready: Vec<NodeId>,
    /// The leader (which may be a joining replica itself, when a move leaves it out of the
    /// voters for a while) and the members whose logs match its log up to an entry of its
    /// term at or past its mark (`CatchUpMarks`). A replica that was recovering (every learner
    /// joins recovering) has ended its recovery by then: it answered the append only after.
    /// Only such a replica is made a voter: one still recovering refuses every vote, and a
    /// membership whose majority needs it could elect no leader once this one is gone.
    pub current: BTreeSet<NodeId>,
    /// The nodes the metadata allows to be voters: the original replicas and those recorded
    /// as promoted.
    pub may_vote: BTreeSet<NodeId>,
    /// The leader's last log index.
    pub last_index: u64,
    /// The leadership and the membership entry this view was taken at: a change decided on it
    /// is made only while both still hold (`View::preconditions`).
    pub leader_id: Option<openraft::type_config::alias::CommittedLeaderIdOf<crate::TypeConfig>>,
    pub membership_log_id: Option<openraft::type_config::alias::LogIdOf<crate::TypeConfig>>,
}

/// How recently a voter must have answered the leader to be handed its leadership (a transfer
/// to a node that died stops the group's writes until an election).
pub const READY_HEARD: Duration = Duration::from_secs(1);

impl View {
    /// The view of the leader whose metrics these are.
    /// `alive` tells whether a node was heard from within `READY_HEARD` (any frame from it:
    /// an idle group's own heartbeats are sparse).
    pub fn of(
        metrics: &openraft::RaftMetrics<crate::TypeConfig>,
        may_vote: BTreeSet<NodeId>,
        alive: impl Fn(NodeId) -> bool,
        marks: &mut CatchUpMarks,
    ) -> View {
        let membership = metrics.membership_config.membership();
        let members: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let last_index = metrics.last_log_index.unwrap_or(0);
        let matched = |n: &NodeId| metrics.replication.as_ref().and_then(|r| r.get(n).cloned().flatten());
        let lag = members
            .iter()
            .map(|n| {
                let lag = match matched(n) {
                    _ if *n == metrics.id => Some(0),
                    Some(l) => Some(last_index.saturating_sub(l.index())),
                    None => None,
                };
                (*n, lag)
            })
            .collect();
        let committed = metrics.local_committed.as_ref().map(|l| l.index());
        let ready = voters
            .iter()
            .filter(|v| **v != metrics.id && matched(v).map(|l| l.index()) >= committed && alive(**v))
            .copied()
            .collect();
        let mut current = BTreeSet::from([metrics.id]);
        for n in members.iter().filter(|n| **n != metrics.id) {
            let Some(l) = matched(n) else { continue };
            if l.committed_leader_id().term != metrics.current_term {
                continue;
            }
            let mark = marks.0.entry(*n).or_insert((metrics.current_term, committed));
            if mark.0 != metrics.current_term {
                *mark = (metrics.current_term, committed);
            }
            if Some(l.index()) >= mark.1 {
                current.insert(*n);
            }
        }
        marks.0.retain(|n, _| members.contains(n));
        View {
            me: metrics.id,
            term: metrics.current_term,
            voters,
            members,
            uniform: membership.get_joint_config().len() == 1,
            lag,
            ready,
            current,
            may_vote,
            last_index,
            leader_id: Some(openraft::vote::RaftLeaderId::to_committed(metrics.vote.leader_id())),
            membership_log_id: *metrics.membership_config.log_id(),
        }
    }

    /// What a membership change decided on this view requires of the group when it is made:
    /// the same leadership, and no membership entry since. The check with the controller comes
    /// before the wait for the partition's lock; a change made meanwhile (by a later leadership
    /// of this node, say) makes this one fail rather than act on a membership it did not see.
    pub fn preconditions(&self) -> Vec<openraft::raft::Precondition<crate::TypeConfig>> {
        use openraft::raft::Precondition;
        let mut p = vec![Precondition::LastMembershipLogId { last_membership_log_id: self.membership_log_id }];
        if let Some(l) = &self.leader_id {
            p.push(Precondition::CommittedLeaderId { committed_leader_id: *l });
        }
        p
    }

    /// How far the furthest-behind joining replica of `target` is (a replica that matched
    /// nothing is behind by the whole log), for the progress metric.
    pub fn behind(&self, target: &[NodeId]) -> u64 {
        target
            .iter()
            .filter(|t| !self.voters.contains(t))
            .map(|t| self.lag.get(t).copied().flatten().unwrap_or(self.last_index + 1))
            .max()
            .unwrap_or(0)
    }
}

/// The next step of a reassignment to `target`, on the group's leader (the module's list).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Target replicas outside the group join as learners.
    AddLearners(BTreeSet<NodeId>),
    /// Joining replicas are still catching up: nothing to do yet.
    CatchUp,
    /// Record in the metadata that these joining replicas may become voters.
    RecordPromotion(BTreeSet<NodeId>),
    /// This leader is leaving: hand the leadership to this ready target voter.
    TransferLeadership(NodeId),
    /// This leader is leaving and no target voter is ready yet: wait.
    WaitInSync,
    /// This leader is leaving and no target replica votes yet: make them voters beside it.
    AddVoters(BTreeSet<NodeId>),
    /// The voters become the target (through a joint config).
    ReplaceVoters(BTreeSet<NodeId>),
    /// Learners outside the target leave the group.
    DropLearners(BTreeSet<NodeId>),
    /// The group's membership is the target: report the reassignment complete.
    Complete,
}

/// Decides the next step from the leader's view alone, so that any leader, at any point, picks
/// up where the last one stopped.
pub fn next_step(target: &[NodeId], v: &View) -> Step {
    let target_set: BTreeSet<NodeId> = target.iter().copied().collect();
    let missing: BTreeSet<NodeId> = target_set.difference(&v.members).copied().collect();
    if !missing.is_empty() {
        return Step::AddLearners(missing);
    }
    let joining: BTreeSet<NodeId> = target_set.difference(&v.voters).copied().collect();
    let caught_up = joining
        .iter()
        .all(|j| v.lag.get(j).copied().flatten().is_some_and(|l| l <= CATCH_UP_LAG) && v.current.contains(j));
    if !caught_up {
        return Step::CatchUp;
    }
    let unrecorded: BTreeSet<NodeId> = joining.difference(&v.may_vote).copied().collect();
    if !unrecorded.is_empty() {
        return Step::RecordPromotion(unrecorded);
    }
    if !target_set.contains(&v.me) {
        let ready: Vec<NodeId> =
            target.iter().filter(|t| v.voters.contains(t) && v.ready.contains(t)).copied().collect();
        if !ready.is_empty() {
            // A transfer that does not take ends in an election, at a new term: the next
            // attempt then goes to the next candidate (one that refuses, say while recovering,
            // is not asked forever).
            return Step::TransferLeadership(ready[(v.term % ready.len() as u64) as usize]);
        }
        return if joining.is_empty() { Step::WaitInSync } else { Step::AddVoters(joining) };
    }
    if !v.uniform || v.voters != target_set {
        return Step::ReplaceVoters(target_set);
    }
    let strays: BTreeSet<NodeId> = v.members.difference(&target_set).copied().collect();
    if !strays.is_empty() {
        return Step::DropLearners(strays);
    }
    Step::Complete
}

/// One step of a group's reassignment on its leader.
async fn step(
    node: &ReplicaNode<NodeMachine>,
    controller: &Controller<NodeMachine>,
    group: GroupId,
    m: &Moving,
    replica: &crate::applier::LocalReplica,
    addresses: &BTreeMap<NodeId, String>,
    marks: &std::sync::Mutex<BTreeMap<GroupId, CatchUpMarks>>,
) -> Result<(), String> {
    let raft = node.group(group).ok_or("the group stopped")?;
    let alive = |n: NodeId| node.transport().last_heard(n).is_some_and(|t| t.elapsed() < READY_HEARD);
    let view = {
        let mut marks = marks.lock().unwrap_or_else(|e| e.into_inner());
        View::of(&raft.metrics().borrow_watched(), m.may_vote.clone(), alive, marks.entry(group).or_default())
    };
    metrics::gauge!("fjord_reassignment_lag_entries", "topic" => m.topic.clone(), "partition" => m.index.to_string())
        .set(view.behind(&m.target) as f64);
    let next = next_step(&m.target, &view);
    let term = view.term;
    if matches!(next, Step::CatchUp | Step::WaitInSync) {
        return Ok(());
    }
    // A joining replica still recovering refuses every vote: made a voter, it could leave the
    // group's membership unable to elect once this leader is gone. The progress seen here
    // cannot tell (a learner that restarted has emptied its log, which this leader learns at its
    // next append that gets through), so each one is asked. The answer could go stale only by
    // another restart in the moment before the change commits.
    let new_voters: BTreeSet<NodeId> = match &next {
        Step::RecordPromotion(ids) | Step::AddVoters(ids) => ids.clone(),
        Step::ReplaceVoters(ids) => ids.difference(&view.voters).copied().collect(),
        _ => BTreeSet::new(),
    };
    let asked: Vec<NodeId> = new_voters.into_iter().filter(|n| *n != view.me).collect();
    if !asked.is_empty() {
        let answers = node.peers_recovering(group, &asked, READY_HEARD).await;
        if let Some(n) = asked.iter().find(|n| answers.get(n) != Some(&false)) {
            tracing::info!(group, topic = %m.topic, partition = m.index, node = n, "a joining replica is recovering or did not answer: it does not become a voter yet");
            return Ok(());
        }
    }
    tracing::info!(group, topic = %m.topic, partition = m.index, step = ?next, target = ?m.target, "reassignment step");
    let change = |changes: ChangeMembers<NodeId, BasicNode>, retain: bool| {
        let raft = raft.clone();
        async move {
            // Still the reassignment in progress? (This node's metadata may lag.)
            submit_step(controller, group, m, ReassignmentStep::Check).await?;
            let guard = view.preconditions();
            replica
                .proposer
                .exclusive(async move { raft.change_membership_if(changes, retain, guard).await.map(|_| ()) })
                .await
                .map_err(|e| e.to_string())
        }
    };
    match next {
        Step::AddLearners(ids) => {
            let nodes = ids.iter().map(|t| (*t, BasicNode::new(addresses.get(t).cloned().unwrap_or_default())));
            change(ChangeMembers::AddNodes(nodes.collect()), true).await
        }
        Step::CatchUp | Step::WaitInSync => Ok(()),
        Step::RecordPromotion(ids) => {
            let joining = ids.iter().filter_map(|n| i32::try_from(*n).ok()).collect();
            submit_step(controller, group, m, ReassignmentStep::Promote(joining)).await
        }
        Step::TransferLeadership(to) => node.transfer_leader(group, to).await,
        Step::AddVoters(ids) => change(ChangeMembers::AddVoterIds(ids), true).await,
        Step::ReplaceVoters(ids) => change(ChangeMembers::ReplaceAllVoters(ids), false).await,
        Step::DropLearners(ids) => change(ChangeMembers::RemoveNodes(ids), false).await,
        Step::Complete => {
            // The metadata records this leadership, at this term, before the reassignment
            // completes: a replica that a later reassignment adds back takes the recorded epoch
            // as the newest term its group has seen (`applier`), and only leaders that know the
            // membership reached here (which dropped whatever node left) have a term that high.
            // And the membership reached is committed, seen in one snapshot with this node still
            // leading in the same term: a leader whose membership still has a departed node as a
            // voter is then older than this term.
            let now = raft.metrics().borrow_watched().clone();
            let committed = now.state == openraft::ServerState::Leader
                && now.current_term == term
                && now.committed_membership_config.log_id() == now.membership_config.log_id();
            if !committed {
                return Err("the new membership is not committed in this term yet".into());
            }
            let me = i32::try_from(node.id()).map_err(|_| "node id out of range".to_string())?;
            let recorded = controller.machine().read(|md| {
                md.partition(group)
                    .is_some_and(|p| p.leader == Some(me) && u64::try_from(p.leader_epoch).ok() == Some(term))
            });
            if !recorded {
                return Err("this leadership is not recorded yet; completing after it is".into());
            }
            submit_step(controller, group, m, ReassignmentStep::Complete).await
        }
    }
}

async fn submit_step(
    controller: &Controller<NodeMachine>,
    group_id: GroupId,
    m: &Moving,
    step: ReassignmentStep,
) -> Result<(), String> {
    match controller.submit(Request::ReassignmentStep { group_id, epoch: m.epoch, step }, Duration::from_secs(10)).await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    /// Leader `me` of a group with these voters and learners, every member caught up.
    fn view(me: NodeId, voters: &[NodeId], learners: &[NodeId]) -> View {
        let members: BTreeSet<NodeId> = voters.iter().chain(learners).copied().collect();
        View {
            me,
            voters: set(voters),
            lag: members.iter().map(|m| (*m, Some(0))).collect(),
            members: members.clone(),
            uniform: true,
            term: 7,
            ready: voters.iter().copied().filter(|v| *v != me).collect(),
            current: members.clone(),
            may_vote: members.clone(),
            last_index: 100,
            leader_id: None,
            membership_log_id: None,
        }
    }

    #[test]
    fn a_move_off_the_leader_goes_learner_promotion_transfer_voters_complete() {
        let target = [4, 2, 3];
        let original = set(&[1, 2, 3]);
        let mut v = view(1, &[1, 2, 3], &[]);
        v.may_vote = original.clone();
        assert_eq!(next_step(&target, &v), Step::AddLearners(set(&[4])));
        let mut v = view(1, &[1, 2, 3], &[4]);
        v.may_vote = original.clone();
        // A learner that matched nothing (it may be down) or is far behind is waited for.
        v.lag.insert(4, None);
        assert_eq!(next_step(&target, &v), Step::CatchUp);
        assert_eq!(v.behind(&target), 101);
        v.lag.insert(4, Some(CATCH_UP_LAG + 1));
        assert_eq!(next_step(&target, &v), Step::CatchUp);
        v.lag.insert(4, Some(CATCH_UP_LAG));
        // Near enough, but not yet holding every committed entry in this leader's term: it
        // may still be recovering, and would then refuse every vote as a voter.
        v.current.remove(&4);
        assert_eq!(next_step(&target, &v), Step::CatchUp);
        v.current.insert(4);
        assert_eq!(next_step(&target, &v), Step::RecordPromotion(set(&[4])));
        v.may_vote.insert(4);
        // The leader is leaving: a ready target voter takes over, a different one at each
        // term (a transfer that does not take ends in an election).
        v.ready = vec![2, 3];
        v.term = 8;
        assert_eq!(next_step(&target, &v), Step::TransferLeadership(2));
        v.term = 9;
        assert_eq!(next_step(&target, &v), Step::TransferLeadership(3));
        v.ready = vec![3];
        assert_eq!(next_step(&target, &v), Step::TransferLeadership(3));
        // The new leader changes the voters, then reports.
        let v = view(3, &[1, 2, 3], &[4]);
        assert_eq!(next_step(&target, &v), Step::ReplaceVoters(set(&[2, 3, 4])));
        let mut joint = view(3, &[1, 2, 3, 4], &[]);
        joint.uniform = false;
        assert_eq!(next_step(&target, &joint), Step::ReplaceVoters(set(&[2, 3, 4])));
        assert_eq!(next_step(&target, &view(3, &[2, 3, 4], &[])), Step::Complete);
    }

    #[test]
    fn a_move_to_all_new_replicas_makes_them_voters_before_the_leader_leaves() {
        let target = [4, 5, 6];
        let v = view(1, &[1, 2, 3], &[4, 5, 6]);
        assert_eq!(next_step(&target, &v), Step::AddVoters(set(&[4, 5, 6])));
        let mut v = view(1, &[1, 2, 3, 4, 5, 6], &[]);
        v.ready = vec![2, 3];
        // Target voters, none ready yet: wait rather than hand over to a lagging one.
        assert_eq!(next_step(&target, &v), Step::WaitInSync);
        v.ready = vec![2, 5];
        assert_eq!(next_step(&target, &v), Step::TransferLeadership(5));
    }

    #[test]
    fn learners_outside_the_target_are_dropped_before_completing() {
        // A cancelled move left learner 4; the target is the original set again.
        let target = [1, 2, 3];
        assert_eq!(next_step(&target, &view(1, &[1, 2, 3], &[4])), Step::DropLearners(set(&[4])));
        assert_eq!(next_step(&target, &view(1, &[1, 2, 3], &[])), Step::Complete);
        // Growing and shrinking the replication factor.
        assert_eq!(next_step(&[1, 2, 3, 4], &view(1, &[1, 2, 3], &[4])), Step::ReplaceVoters(set(&[1, 2, 3, 4])));
        assert_eq!(next_step(&[1], &view(1, &[1, 2, 3], &[])), Step::ReplaceVoters(set(&[1])));
    }
}

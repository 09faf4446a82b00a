//! The node-level election driver, for groups run with openraft's tick off (`enable_tick =
//! false`): one timer per node instead of one per group. It pings every peer each interval and
//! tracks silence per node, not per group; a follower group whose leader's node has been silent
//! past the group's jittered election timeout (or that has no leader) starts a pre-vote election.
//!
//! With elections owned here, per-group heartbeats only carry the commit index and the followers'
//! lease, so the heartbeat driver can run them far less often than failover detection needs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::RaftStateMachine;
use openraft::{Config, ConfigError, ServerState};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::node::{GroupTimings, Stickiness};
use crate::recovery::Recovery;
use crate::registry::GroupRegistry;
use crate::transport::Transport;
use crate::types::{GroupId, NodeId, TypeConfig};

/// Timing of the node-level election driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElectionTimings {
    /// How often each peer is pinged and the groups are checked.
    pub ping_interval: Duration,
    /// A leader's node silent this long (jittered per group up to the max) loses its groups.
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
}

impl ElectionTimings {
    /// openraft's config for a group whose elections this driver owns: no tick at all, so an
    /// idle group wakes only for the heartbeats it sends or receives.
    ///
    /// openraft takes `election_timeout_max` as the followers' leader lease, during which they
    /// refuse (pre-)votes, and as the leader's quorum lease, past which it refuses writes until
    /// a quorum answers again (`node::write` renews it). The lease (`lease`) is set to expire
    /// before this driver can declare a node silent (half to three quarters of the minimum
    /// timeout), so the first campaign after a leader's node goes quiet is not refused by the
    /// other followers; the guard against a needless campaign is the node-level silence (and the
    /// stickiness of pre-votes, `node::Stickiness`). It is not shorter because openraft derives
    /// its RPC deadlines from the same settings: a heartbeat must be answered within
    /// `heartbeat_interval` (a quarter of the minimum timeout here) and a vote within the lower
    /// bound, and on a loaded node or a long link a shorter budget fails them.
    pub fn raft_config(&self, cluster_name: &str) -> Result<Arc<Config>, ConfigError> {
        let lease_max = self.lease();
        let lease_min = self.election_timeout_min / 2;
        let group = GroupTimings {
            // Unused with the tick off; openraft's check only wants it below the election timeout.
            heartbeat_interval: lease_min / 2,
            election_timeout_min: lease_min,
            election_timeout_max: lease_max,
        };
        let config = Config { enable_tick: false, ..group.base_config(cluster_name) };
        Ok(Arc::new(config.validate()?))
    }
}

impl ElectionTimings {
    /// The followers' leader lease and the leader's quorum lease of groups run by this driver.
    pub fn lease(&self) -> Duration {
        self.election_timeout_min * 3 / 4
    }
}

/// Runs until dropped.
pub struct ElectionDriver {
    tasks: Vec<JoinHandle<()>>,
}

/// A deterministic per (node, group, attempt) jitter, so that replicas of one group do not all
/// campaign at once, and a simulation replays the same schedule (splitmix64).
fn jitter(t: &ElectionTimings, node: NodeId, group: GroupId, attempt: u64) -> Duration {
    let mut x = node
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(group.rotate_left(17))
        .wrapping_add(attempt.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    x ^= x >> 30;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    let span = t.election_timeout_max.saturating_sub(t.election_timeout_min).as_micros().max(1) as u64;
    t.election_timeout_min + Duration::from_micros(x % span)
}

/// How long after its leader's node went silent this node's replica of `group` first campaigns,
/// at `rank` of `count` candidates (`campaign_rank`): each candidate gets a slot of the timeout
/// range, so two replicas rarely campaign at once and split the vote. Retries then use plain
/// jitter.
fn first_campaign_delay(t: &ElectionTimings, me: NodeId, group: GroupId, (rank, count): (u32, u32)) -> Duration {
    let slots = count.max(1);
    let slot = t.election_timeout_max.saturating_sub(t.election_timeout_min) / slots;
    let within = jitter(t, me, group, 0).saturating_sub(t.election_timeout_min) / slots / 2;
    t.election_timeout_min + slot * rank.min(slots - 1) + within
}

/// This node's turn to campaign for `group` among `candidates` (the group's voters but the lost
/// leader), and how many take turns: those in `first` (replicas on a rack its topic pins leaders
/// to, `ReplicaNode::set_campaign_first`) go before the others, each part in an order that
/// differs per group so the new leaders spread over the nodes.
fn campaign_rank(
    t: &ElectionTimings,
    me: NodeId,
    group: GroupId,
    candidates: &[NodeId],
    first: &[NodeId],
) -> (u32, u32) {
    let mut order: Vec<NodeId> = candidates.to_vec();
    order.sort_by_key(|c| (!first.contains(c), jitter(t, *c, group, u64::MAX)));
    let rank = order.iter().position(|c| *c == me).unwrap_or(order.len());
    (rank as u32, order.len() as u32)
}

/// How many times a group whose leader's process is down campaigns at its turn (every
/// `down_campaign_delay` cycle) before it falls back to the ordinary jittered retries: a group
/// that cannot elect without the dead leader (it lacks a majority) would otherwise campaign
/// every few rounds for as long as the leader stays down.
const DOWN_ATTEMPTS: u64 = 3;

/// How long after the lease of a leader whose process is down this node's replica of a group
/// first campaigns, at `rank` (`campaign_rank`, the same order as `first_campaign_delay`): the
/// candidates take turns a round apart, the first at once. A retry comes a whole cycle (a round
/// per candidate) later, so the turns never meet.
fn down_campaign_delay(t: &ElectionTimings, (rank, _): (u32, u32)) -> Duration {
    t.ping_interval * rank
}

/// The voters of `raft`'s group other than `but`.
fn voters_but<SM: RaftStateMachine<TypeConfig>>(raft: &openraft::Raft<TypeConfig, SM>, but: NodeId) -> Vec<NodeId> {
    let m = raft.metrics();
    let m = openraft::async_runtime::watch::WatchReceiver::borrow_watched(&m);
    m.membership_config.membership().voter_ids().filter(|v| *v != but).collect()
}

/// The sweeper's clock: one round per interval, rounds delayed rather than bunched up after a
/// stall (`MissedTickBehavior::Delay`).
///
/// A peer's silence is judged by when this node last processed a frame from it. If this thread
/// was busy or descheduled, frames may be waiting unread: each round first lets the readers run
/// (yield_now lets the runtime poll its I/O driver), and a round that comes late is skipped, so a
/// stall of our own is not taken for the peers' silence. But only one in a row: under sustained
/// overload every round is late, and skipping them all would mean no failover ever; the round
/// after a skipped one has had a whole interval for the readers to catch up, so it judges.
struct Rounds {
    ticker: tokio::time::Interval,
    interval: Duration,
    last: Instant,
    skipped_late: bool,
}

impl Rounds {
    fn new(interval: Duration) -> Self {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { ticker, interval, last: Instant::now(), skipped_late: false }
    }

    /// Waits until `at` (sooner than the next round) and lets the readers run; returns the time.
    /// The round clock is not moved, but the wake counts as a round for the lateness check.
    async fn at(&mut self, at: Instant) -> Instant {
        tokio::time::sleep_until(at).await;
        tokio::task::yield_now().await;
        self.last = Instant::now();
        self.last
    }

    /// Waits for the next round that judges silence; returns its time.
    async fn next(&mut self) -> Instant {
        loop {
            self.ticker.tick().await;
            tokio::task::yield_now().await;
            let now = Instant::now();
            let lag = now.saturating_duration_since(self.last);
            self.last = now;
            if lag > self.interval * 2 && !self.skipped_late {
                tracing::debug!(?lag, "election driver ran late; not judging silence this round");
                self.skipped_late = true;
                continue;
            }
            self.skipped_late = false;
            return now;
        }
    }
}

/// Per-group state of the driver: when the group may next campaign.
struct Suspect {
    next_attempt: Instant,
    attempt: u64,
    /// Its leader's process is known to be down (`Transport::known_down`).
    down: bool,
}

impl ElectionDriver {
    pub(crate) fn spawn<SM: RaftStateMachine<TypeConfig>>(
        registry: Arc<GroupRegistry<SM>>,
        transport: Transport,
        recovery: Arc<Recovery>,
        stickiness: Arc<Stickiness>,
        timings: ElectionTimings,
    ) -> Self {
        let pinger = {
            let transport = transport.clone();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(timings.ping_interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    for peer in transport.peer_ids() {
                        let t = transport.clone();
                        // A ping slower than the interval is as good as lost.
                        tokio::spawn(async move {
                            let _ = t.ping(peer, timings.ping_interval).await;
                        });
                    }
                }
            })
        };
        let sweeper = tokio::spawn(async move {
            let me = transport.node_id();
            let mut suspects: BTreeMap<GroupId, Suspect> = BTreeMap::new();
            let mut rounds = Rounds::new(timings.ping_interval);
            let mut next_full_scan = Instant::now();
            loop {
                // Groups whose leader's process is down campaign at their turn, not at the next
                // round: each round waited is a round every one of their clients waits too.
                let now = match suspects.values().filter(|s| s.down).map(|s| s.next_attempt).min() {
                    Some(at) if at < Instant::now() + timings.ping_interval => rounds.at(at).await,
                    _ => rounds.next().await,
                };
                let heard: BTreeMap<NodeId, Option<Instant>> =
                    transport.peer_ids().into_iter().map(|p| (p, transport.last_heard(p))).collect();
                let down: std::collections::BTreeSet<NodeId> =
                    heard.keys().copied().filter(|p| transport.known_down(*p)).collect();
                // Scanning every group costs microseconds each; while every peer answers and no
                // group was leaderless at the last scan, a scan per minimum election timeout is
                // enough to notice a group that lost its leader some other way.
                let any_silent = heard
                    .values()
                    .any(|t| t.is_none_or(|t| now.saturating_duration_since(t) >= timings.election_timeout_min));
                if !any_silent && down.is_empty() && suspects.is_empty() && now < next_full_scan {
                    continue;
                }
                next_full_scan = now + timings.election_timeout_min;
                let groups = registry.all();
                suspects.retain(|g, _| registry.get(*g).is_some());
                for (group, raft) in groups {
                    let (state, leader) = {
                        let m = raft.metrics();
                        let m = openraft::async_runtime::watch::WatchReceiver::borrow_watched(&m);
                        (m.state, m.current_leader)
                    };
                    // A replica recovering a lost log never campaigns (`recovery`).
                    if state == ServerState::Leader || state == ServerState::Learner || recovery.is_recovering(group) {
                        suspects.remove(&group);
                        continue;
                    }
                    // Silence starts at the last frame from the leader's node; with no leader
                    // known (or ourselves, stepping down), at the first scan that sees it.
                    let leader = leader.filter(|l| *l != me);
                    // A leader whose node answers but that has sent the group nothing for a few
                    // heartbeats (its node restarted, perhaps empty) is as good as silent.
                    // A leader whose process is known to be down (`Transport::known_down`)
                    // need not be waited for: the candidates take turns one round apart from
                    // the moment the other followers' lease, which runs from the leader's last
                    // AppendEntries, has run out.
                    if let Some(l) = leader.filter(|l| down.contains(l)) {
                        let last = stickiness.last_append(group, l).or(heard.get(&l).copied().flatten()).unwrap_or(now);
                        let candidates = voters_but(&raft, l);
                        let rank = campaign_rank(&timings, me, group, &candidates, &stickiness.campaign_first(group));
                        let turn = down_campaign_delay(&timings, rank);
                        // (A tenth more: their lease started when they processed the append,
                        // a little after ours.)
                        let at = (last + timings.lease() * 11 / 10).max(now) + turn;
                        let s = suspects.entry(group).or_insert(Suspect { next_attempt: at, attempt: 0, down: true });
                        if s.attempt == 0 {
                            s.down = true;
                            s.next_attempt = s.next_attempt.min(at);
                        }
                        if now < s.next_attempt {
                            continue;
                        }
                        s.attempt += 1;
                        // Retried every cycle while the leader stays down: its groups have no
                        // leader, so every round of delay is a round of outage. After a few
                        // cycles, the ordinary jittered retries.
                        s.down = s.attempt < DOWN_ATTEMPTS;
                        s.next_attempt = if s.down {
                            now + timings.ping_interval * (candidates.len().max(1) as u32)
                        } else {
                            now + jitter(&timings, me, group, s.attempt)
                        };
                        tracing::debug!(
                            group,
                            leader = l,
                            attempt = s.attempt,
                            "leader's process is down; starting a pre-vote"
                        );
                        if let Err(e) = raft.trigger().elect(true).await {
                            tracing::debug!(group, error = %e, "election trigger failed");
                        }
                        continue;
                    }
                    let silent_since = match leader {
                        Some(l) => match heard.get(&l).copied().flatten() {
                            Some(t)
                                if now.saturating_duration_since(t) < timings.election_timeout_min
                                    && stickiness.leading_here(group, l) =>
                            {
                                suspects.remove(&group);
                                continue;
                            }
                            Some(t) if now.saturating_duration_since(t) >= timings.election_timeout_min => t,
                            _ => now,
                        },
                        None => now,
                    };
                    let s = suspects.entry(group).or_insert_with(|| {
                        let candidates: Vec<NodeId> = match leader {
                            Some(l) => voters_but(&raft, l),
                            None => voters_but(&raft, NodeId::MAX),
                        };
                        Suspect {
                            next_attempt: silent_since
                                + first_campaign_delay(
                                    &timings,
                                    me,
                                    group,
                                    campaign_rank(&timings, me, group, &candidates, &stickiness.campaign_first(group)),
                                ),
                            attempt: 0,
                            down: false,
                        }
                    });
                    s.down = false;
                    if now < s.next_attempt {
                        continue;
                    }
                    s.attempt += 1;
                    s.next_attempt = now + jitter(&timings, me, group, s.attempt);
                    tracing::debug!(group, ?leader, attempt = s.attempt, "leader silent; starting a pre-vote");
                    // openraft ignores the trigger on a node that is not a voter of the group.
                    if let Err(e) = raft.trigger().elect(true).await {
                        tracing::debug!(group, error = %e, "election trigger failed");
                    }
                }
            }
        });
        Self { tasks: vec![pinger, sweeper] }
    }
}

impl Drop for ElectionDriver {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    /// Replicas on a pinned rack take the first turns whatever the per-group order would be;
    /// the others follow in that order.
    #[test]
    fn pinned_candidates_take_the_first_turns() {
        let t = ElectionTimings {
            ping_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(300),
            election_timeout_max: Duration::from_millis(500),
        };
        let candidates = [1, 2, 3, 4];
        for group in 0..64 {
            let ranks: Vec<u32> =
                candidates.iter().map(|c| campaign_rank(&t, *c, group, &candidates, &[4]).0).collect();
            assert_eq!(ranks[3], 0, "group {group}: {ranks:?}");
            let mut sorted = ranks.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 1, 2, 3]);
            assert_eq!(down_campaign_delay(&t, campaign_rank(&t, 4, group, &candidates, &[4])), Duration::ZERO);
        }
    }

    use super::*;

    /// The candidates of a group whose leader is down take distinct turns a round apart, the
    /// first at once, and their retries a cycle later keep them apart.
    #[test]
    fn down_campaign_turns_are_distinct_rounds() {
        let t = ElectionTimings {
            ping_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(300),
            election_timeout_max: Duration::from_millis(500),
        };
        let candidates = [1, 2, 4];
        let mut firsts = [0usize; 3];
        for group in 0..300 {
            let mut turns: Vec<Duration> = candidates
                .iter()
                .map(|c| down_campaign_delay(&t, campaign_rank(&t, *c, group, &candidates, &[])))
                .collect();
            firsts[candidates
                .iter()
                .position(|c| down_campaign_delay(&t, campaign_rank(&t, *c, group, &candidates, &[])).is_zero())
                .unwrap()] += 1;
            turns.sort();
            assert_eq!(turns, vec![Duration::ZERO, t.ping_interval, t.ping_interval * 2], "group {group}");
            // A retry comes a cycle (a round per candidate) later: turn + k * cycle never meets
            // another candidate's.
            let cycle = t.ping_interval * candidates.len() as u32;
            for k in 1..4u32 {
                let retried: std::collections::BTreeSet<Duration> = turns.iter().map(|d| *d + cycle * k).collect();
                assert_eq!(retried.len(), candidates.len());
            }
        }
        // Who goes first differs by group, so new leaders spread over the nodes.
        assert!(firsts.iter().all(|n| *n > 50), "{firsts:?}");
    }

    #[test]
    fn jitter_stays_in_range_and_spreads() {
        let t = ElectionTimings {
            ping_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(300),
            election_timeout_max: Duration::from_millis(500),
        };
        let mut seen = std::collections::BTreeSet::new();
        for node in 1..4 {
            for group in 0..200 {
                let j = jitter(&t, node, group, 0);
                assert!(j >= t.election_timeout_min && j < t.election_timeout_max, "{j:?}");
                seen.insert(j.as_millis());
            }
        }
        assert!(seen.len() > 100, "jitter is not spread: {} distinct values", seen.len());
    }

    #[test]
    fn candidates_take_turns_and_the_first_one_varies_by_group() {
        let t = ElectionTimings {
            ping_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(300),
            election_timeout_max: Duration::from_millis(500),
        };
        let mut first = std::collections::BTreeMap::new();
        for group in 0..300 {
            let d2 = first_campaign_delay(&t, 2, group, campaign_rank(&t, 2, group, &[2, 3], &[]));
            let d3 = first_campaign_delay(&t, 3, group, campaign_rank(&t, 3, group, &[2, 3], &[]));
            for d in [d2, d3] {
                assert!(d >= t.election_timeout_min && d < t.election_timeout_max, "{d:?}");
            }
            // One slot (100 ms) apart at least half a slot: no simultaneous campaigns.
            let gap = d2.abs_diff(d3);
            assert!(gap >= Duration::from_millis(50), "group {group}: {d2:?} vs {d3:?}");
            *first.entry(if d2 < d3 { 2 } else { 3 }).or_insert(0) += 1;
        }
        assert!(first[&2] > 50 && first[&3] > 50, "first campaigners not spread: {first:?}");
    }

    /// R5: with every round of work taking three intervals (a runtime overloaded for good), rounds
    /// still judge silence, so elections still start; a single stall of our own is still skipped.
    #[tokio::test(start_paused = true)]
    async fn late_rounds_still_judge_under_sustained_overload() {
        let interval = Duration::from_millis(100);
        // Every time it is scheduled, another task takes three intervals of the clock: whenever
        // the driver's round yields to let the readers run, the round becomes late.
        let hog = tokio::spawn(async move {
            loop {
                tokio::time::advance(interval * 3).await;
            }
        });
        let mut rounds = Rounds::new(interval);
        let start = Instant::now();
        let mut judged = 0;
        while Instant::now() < start + Duration::from_secs(10) {
            if tokio::time::timeout(Duration::from_secs(1), rounds.next()).await.is_ok() {
                judged += 1;
            }
        }
        hog.abort();
        let _ = hog.await;
        // Every round is late; at most every other one is skipped.
        assert!(judged >= 5, "only {judged} rounds judged silence in 10 s of overload");

        // Back to an idle runtime: one stall is not judged, the next round is.
        let mut rounds = Rounds::new(interval);
        rounds.next().await;
        rounds.next().await;
        tokio::time::advance(interval * 5).await;
        let after_stall = Instant::now();
        let judged_at = rounds.next().await;
        assert!(
            judged_at >= after_stall + interval,
            "the round that came late after a stall was judged at {:?} after it",
            judged_at - after_stall
        );
    }
}

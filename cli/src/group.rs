//! `fjordctl group ...`: list, describe (members, offsets, lag), reset offsets, delete; and the
//! consumer behind `topic consume`, alone or as a member of a classic consumer group.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::Subcommand;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable};
use serde::Serialize;

use crate::error::{CliError, Result};
use crate::kafka::{coordinator_moved, error_name, refusal, s, Client};
use crate::output::{emit, Progress, Table};
use crate::topic::{fetch, print_record, start_offsets, ConsumeOpts};
use crate::Cli;

#[derive(Subcommand)]
pub enum GroupCmd {
    /// Lists the consumer groups of every broker
    List,
    /// A group's members, committed offsets and lag per partition
    Describe { group: String },
    /// Moves a group's committed offsets (the group must have no members)
    ResetOffsets {
        group: String,
        /// The topic whose offsets move
        #[arg(long)]
        topic: String,
        /// Only these partitions (repeatable; all by default)
        #[arg(short, long = "partition")]
        partitions: Vec<i32>,
        #[arg(long, group = "to")]
        to_earliest: bool,
        #[arg(long, group = "to")]
        to_latest: bool,
        #[arg(long, group = "to")]
        to_offset: Option<i64>,
        /// The first offset at or after this time (milliseconds since the epoch)
        #[arg(long, group = "to")]
        to_timestamp: Option<i64>,
        /// Moves each committed offset by N (negative: back)
        #[arg(long, group = "to", allow_hyphen_values = true)]
        shift_by: Option<i64>,
        /// Shows the new offsets without committing them
        #[arg(long)]
        dry_run: bool,
    },
    /// Deletes groups (each must have no members)
    Delete {
        #[arg(required = true)]
        groups: Vec<String>,
    },
}

pub fn run(cmd: &GroupCmd, cli: &Cli) -> Result<()> {
    match cmd {
        GroupCmd::List => list_groups(cli),
        GroupCmd::Describe { group } => describe(cli, group),
        GroupCmd::ResetOffsets {
            group,
            topic,
            partitions,
            to_earliest,
            to_latest,
            to_offset,
            to_timestamp,
            shift_by,
            dry_run,
        } => {
            let target = if *to_earliest {
                Target::Earliest
            } else if *to_latest {
                Target::Latest
            } else if let Some(o) = to_offset {
                Target::Offset(*o)
            } else if let Some(t) = to_timestamp {
                Target::Timestamp(*t)
            } else if let Some(n) = shift_by {
                Target::Shift(*n)
            } else {
                return Err(CliError::usage(
                    "say where to: --to-earliest, --to-latest, --to-offset N, --to-timestamp MS or --shift-by N",
                ));
            };
            reset(cli, group, topic, partitions, target, *dry_run)
        }
        GroupCmd::Delete { groups } => delete(cli, groups),
    }
}

#[derive(Serialize)]
struct GroupRow {
    group: String,
    state: String,
    protocol_type: String,
    coordinator: i32,
}

fn list_groups(cli: &Cli) -> Result<()> {
    let mut c = cli.kafka()?;
    let mut ids: Vec<i32> = c.brokers.keys().copied().collect();
    ids.sort();
    let mut rows = Vec::new();
    let mut answered = 0;
    for id in ids {
        // Groups live on their coordinators: one broker down hides its groups, not the rest.
        let r: ListGroupsResponse = match c.to(id, ApiKey::ListGroups, 4, &ListGroupsRequest::default()) {
            Ok(r) => r,
            Err(e) if e.kind == crate::error::Kind::Unreachable => {
                eprintln!("fjordctl: {e}; the groups it coordinates are not listed");
                continue;
            }
            Err(e) => return Err(e),
        };
        answered += 1;
        if r.error_code != 0 {
            return Err(refusal(&format!("listing groups on broker {id}"), r.error_code, None));
        }
        for g in r.groups {
            rows.push(GroupRow {
                group: g.group_id.0.to_string(),
                state: g.group_state.to_string(),
                protocol_type: g.protocol_type.to_string(),
                coordinator: id,
            });
        }
    }
    if answered == 0 {
        return Err(CliError::unreachable("no broker answered ListGroups"));
    }
    rows.sort_by(|a, b| a.group.cmp(&b.group));
    emit(cli.format, &rows, |rows| {
        let mut t = Table::new(&["GROUP", "STATE", "TYPE", "COORDINATOR"]);
        for r in rows {
            t.row(vec![r.group.clone(), r.state.clone(), r.protocol_type.clone(), r.coordinator.to_string()]);
        }
        t
    });
    Ok(())
}

#[derive(Serialize)]
struct Member {
    member_id: String,
    client_id: String,
    host: String,
    assignment: BTreeMap<String, Vec<i32>>,
}

#[derive(Serialize)]
struct OffsetRow {
    topic: String,
    partition: i32,
    committed: i64,
    /// None when the topic no longer exists.
    end: Option<i64>,
    lag: Option<i64>,
    member: Option<String>,
}

#[derive(Serialize)]
struct Described {
    group: String,
    state: String,
    protocol: String,
    coordinator: i32,
    members: Vec<Member>,
    offsets: Vec<OffsetRow>,
    total_lag: i64,
}

/// The consumer protocol's assignment (a version, then topic → partitions); empty if the bytes
/// are another protocol type's.
pub fn decode_assignment(bytes: &[u8]) -> BTreeMap<String, Vec<i32>> {
    let mut out = BTreeMap::new();
    if bytes.len() < 2 {
        return out;
    }
    let mut b = Bytes::copy_from_slice(bytes);
    let version = b.get_i16();
    if let Ok(a) = ConsumerProtocolAssignment::decode(&mut b, version.clamp(0, 3)) {
        for t in a.assigned_partitions {
            out.insert(t.topic.0.to_string(), t.partitions);
        }
    }
    out
}

fn describe_group(c: &mut Client, coordinator: i32, group: &str) -> Result<describe_groups_response::DescribedGroup> {
    let mut req = DescribeGroupsRequest::default();
    req.groups = vec![GroupId(s(group))];
    let r: DescribeGroupsResponse = c.to(coordinator, ApiKey::DescribeGroups, 5, &req)?;
    let g = r.groups.into_iter().next().ok_or_else(|| CliError::failed(format!("group {group}: no description")))?;
    if g.error_code != 0 {
        return Err(refusal(&format!("describing group {group}"), g.error_code, None));
    }
    Ok(g)
}

/// The group's committed offsets, (topic, partition) → offset.
fn committed(c: &mut Client, coordinator: i32, group: &str) -> Result<BTreeMap<(String, i32), i64>> {
    let mut req = OffsetFetchRequest::default();
    req.group_id = GroupId(s(group));
    req.topics = None;
    let r: OffsetFetchResponse = c.to(coordinator, ApiKey::OffsetFetch, 7, &req)?;
    if r.error_code != 0 {
        return Err(refusal(&format!("offsets of group {group}"), r.error_code, None));
    }
    let mut out = BTreeMap::new();
    for t in r.topics {
        for p in t.partitions {
            if p.committed_offset >= 0 {
                out.insert((t.name.0.to_string(), p.partition_index), p.committed_offset);
            }
        }
    }
    Ok(out)
}

fn describe(cli: &Cli, group: &str) -> Result<()> {
    let mut c = cli.kafka()?;
    let (coordinator, (g, offsets)) = c.with_coordinator(group, |c, at| {
        let g = describe_group(c, at, group)?;
        let offsets = committed(c, at, group)?;
        Ok((g, offsets))
    })?;
    if g.group_state.as_str() == "Dead" {
        return Err(CliError::failed(format!("group {group} does not exist")));
    }
    let members: Vec<Member> = g
        .members
        .iter()
        .map(|m| Member {
            member_id: m.member_id.to_string(),
            client_id: m.client_id.to_string(),
            host: m.client_host.to_string(),
            assignment: decode_assignment(&m.member_assignment),
        })
        .collect();
    let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (t, p) in offsets.keys() {
        by_topic.entry(t.clone()).or_default().push(*p);
    }
    let mut rows = Vec::new();
    for (topic, parts) in by_topic {
        // Offsets may remain of a topic deleted since: its end and lag are unknown.
        let ends = match c.offsets(&topic, &parts, -1) {
            Ok(ends) => ends,
            Err(e) if e.code.is_some() => HashMap::new(),
            Err(e) => return Err(e),
        };
        for p in parts {
            let committed = offsets.get(&(topic.clone(), p)).copied().unwrap_or(-1);
            let end = ends.get(&p).copied();
            let member = members.iter().find(|m| m.assignment.get(&topic).is_some_and(|ps| ps.contains(&p)));
            rows.push(OffsetRow {
                lag: end.map(|end| (end - committed).max(0)),
                member: member.map(|m| m.member_id.clone()),
                topic: topic.clone(),
                partition: p,
                committed,
                end,
            });
        }
    }
    let out = Described {
        group: group.to_string(),
        state: g.group_state.to_string(),
        protocol: g.protocol_data.to_string(),
        coordinator,
        members,
        total_lag: rows.iter().filter_map(|r| r.lag).sum(),
        offsets: rows,
    };
    match cli.format {
        crate::output::Format::Table => {
            let head = crate::output::pairs(&[
                ("group", out.group.clone()),
                ("state", out.state.clone()),
                ("coordinator", out.coordinator.to_string()),
                ("members", out.members.len().to_string()),
                ("total lag", out.total_lag.to_string()),
            ]);
            println!("{}", head.render());
            emit(cli.format, &out, |o| {
                let mut t = Table::new(&["TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "MEMBER"]);
                for r in &o.offsets {
                    t.row(vec![
                        r.topic.clone(),
                        r.partition.to_string(),
                        r.committed.to_string(),
                        crate::output::opt(&r.end),
                        crate::output::opt(&r.lag),
                        crate::output::opt(&r.member),
                    ]);
                }
                t
            });
        }
        _ => emit(cli.format, &out, |_| Table::new(&[])),
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Earliest,
    Latest,
    Offset(i64),
    Timestamp(i64),
    Shift(i64),
}

#[derive(Serialize)]
struct ResetRow {
    topic: String,
    partition: i32,
    current: Option<i64>,
    new: i64,
}

/// Commits `offsets` for `group`, as a member (`generation`, `member`) or, with -1 and "", as an
/// admin tool commits for a group without members.
fn commit(
    c: &mut Client,
    coordinator: i32,
    group: &str,
    generation: i32,
    member: &str,
    topic: &str,
    offsets: &BTreeMap<i32, i64>,
) -> Result<()> {
    let mut req = OffsetCommitRequest::default();
    req.group_id = GroupId(s(group));
    req.generation_id_or_member_epoch = generation;
    req.member_id = s(member);
    let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
    t.name = TopicName(s(topic));
    t.partitions = offsets
        .iter()
        .map(|(p, o)| {
            let mut cp = offset_commit_request::OffsetCommitRequestPartition::default();
            cp.partition_index = *p;
            cp.committed_offset = *o;
            cp
        })
        .collect();
    req.topics = vec![t];
    let r: OffsetCommitResponse = c.to(coordinator, ApiKey::OffsetCommit, 8, &req)?;
    for t in &r.topics {
        for p in &t.partitions {
            if p.error_code != 0 {
                return Err(refusal(
                    &format!("committing {group}'s offset of {topic}-{}", p.partition_index),
                    p.error_code,
                    None,
                ));
            }
        }
    }
    Ok(())
}

/// Partitions committed per OffsetCommit request, so a reset of many partitions shows progress.
const RESET_CHUNK: usize = 100;

fn reset(cli: &Cli, group: &str, topic: &str, only: &[i32], target: Target, dry_run: bool) -> Result<()> {
    let mut c = cli.kafka()?;
    let parts = c.select_partitions(topic, only)?;
    let (_, (g, current)) = c.with_coordinator(group, |c, at| {
        let g = describe_group(c, at, group)?;
        let current = committed(c, at, group)?;
        Ok((g, current))
    })?;
    if !g.members.is_empty() {
        return Err(CliError::failed(format!(
            "group {group} has {} active member(s) (state {}): stop its consumers before resetting its offsets",
            g.members.len(),
            g.group_state
        )));
    }
    let first = c.offsets(topic, &parts, -2)?;
    let end = c.offsets(topic, &parts, -1)?;
    let at = match target {
        Target::Timestamp(ts) => Some(c.offsets(topic, &parts, ts)?),
        _ => None,
    };
    let mut rows = Vec::new();
    for p in &parts {
        let missing = || CliError::failed(format!("{topic}-{p}: no offsets from its leader"));
        let (first, end) = (*first.get(p).ok_or_else(missing)?, *end.get(p).ok_or_else(missing)?);
        let cur = current.get(&(topic.to_string(), *p)).copied();
        let wanted = match target {
            Target::Earliest => first,
            Target::Latest => end,
            Target::Offset(o) => o,
            Target::Timestamp(_) => at.as_ref().and_then(|m| m.get(p)).copied().filter(|o| *o >= 0).unwrap_or(end),
            Target::Shift(n) => cur.unwrap_or(first).saturating_add(n),
        };
        // As Kafka's tool does: an offset outside the log is moved into it (the two ends come
        // from separate requests, so they are not assumed ordered).
        let new = wanted.max(first).min(end.max(first));
        rows.push(ResetRow { topic: topic.to_string(), partition: *p, current: cur, new });
    }
    if !dry_run {
        let progress = Progress::new();
        let offsets: Vec<(i32, i64)> = rows.iter().map(|r| (r.partition, r.new)).collect();
        let mut done = 0;
        for chunk in offsets.chunks(RESET_CHUNK) {
            let map: BTreeMap<i32, i64> = chunk.iter().copied().collect();
            c.with_coordinator(group, |c, at| commit(c, at, group, -1, "", topic, &map))?;
            done += chunk.len();
            progress.update(&format!("committed {done}/{} partitions", offsets.len()));
        }
        progress.done(&format!("committed {} partitions", offsets.len()));
    }
    emit(cli.format, &rows, |rows| {
        let mut t = Table::new(&["TOPIC", "PARTITION", "CURRENT", if dry_run { "NEW (dry run)" } else { "NEW" }]);
        for r in rows {
            t.row(vec![r.topic.clone(), r.partition.to_string(), crate::output::opt(&r.current), r.new.to_string()]);
        }
        t
    });
    Ok(())
}

fn delete(cli: &Cli, groups: &[String]) -> Result<()> {
    let mut c = cli.kafka()?;
    #[derive(Serialize)]
    struct Row {
        group: String,
        error: Option<String>,
    }
    let mut rows = Vec::new();
    for g in groups {
        let mut req = DeleteGroupsRequest::default();
        req.groups_names = vec![GroupId(s(g))];
        let (_, code) = c.with_coordinator(g, |c, at| {
            let r: DeleteGroupsResponse = c.to(at, ApiKey::DeleteGroups, 2, &req)?;
            match r.results.first().map_or(0, |x| x.error_code) {
                code if coordinator_moved(code) => Err(refusal("deleting group", code, None)),
                code => Ok(code),
            }
        })?;
        rows.push(Row { group: g.clone(), error: (code != 0).then(|| error_name(code)) });
    }
    emit(cli.format, &rows, |rows| {
        let mut t = Table::new(&["GROUP", "RESULT"]);
        for r in rows {
            t.row(vec![r.group.clone(), r.error.clone().unwrap_or_else(|| "deleted".into())]);
        }
        t
    });
    if let Some(r) = rows.iter().find(|r| r.error.is_some()) {
        return Err(CliError::failed(format!("deleting group {}: {}", r.group, r.error.clone().unwrap_or_default())));
    }
    Ok(())
}

/// Set by SIGINT/SIGTERM: the consumer commits, leaves its group and stops.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// A classic group membership of `topic` (the "range" protocol, as Kafka's consumers name it).
struct Membership {
    group: String,
    coordinator: i32,
    member_id: String,
    generation: i32,
    last_heartbeat: Instant,
}

const SESSION_TIMEOUT_MS: i32 = 30_000;
/// How long JoinGroup and SyncGroup may take: the rebalance timeout, and a margin.
const REBALANCE_WAIT: Duration = Duration::from_secs(45);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(3);

fn versioned<T: Encodable>(value: &T, version: i16) -> Result<Bytes> {
    let mut b = BytesMut::new();
    b.put_i16(version);
    value.encode(&mut b, version).map_err(|e| CliError::failed(format!("encoding: {e}")))?;
    Ok(b.freeze())
}

/// Joins `group` for `topic`; when this member leads, assigns the topic's partitions to the
/// members by ranges. Returns the membership and this member's partitions.
/// `previous` is the member id of an earlier generation: rejoining under it, rather than as a
/// new member, keeps the coordinator from waiting out the old member's rebalance timeout.
fn join(
    c: &mut Client,
    group: &str,
    topic: &str,
    partitions: &[i32],
    previous: Option<&str>,
) -> Result<(Membership, Vec<i32>)> {
    let mut coordinator = c.coordinator(group)?;
    let mut sub = ConsumerProtocolSubscription::default();
    sub.topics = vec![s(topic)];
    let metadata = versioned(&sub, 0)?;
    let mut member_id = previous.unwrap_or_default().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let joined = loop {
        let mut p = join_group_request::JoinGroupRequestProtocol::default();
        p.name = s("range");
        p.metadata = metadata.clone();
        let mut req = JoinGroupRequest::default();
        req.group_id = GroupId(s(group));
        req.session_timeout_ms = SESSION_TIMEOUT_MS;
        req.rebalance_timeout_ms = SESSION_TIMEOUT_MS;
        req.member_id = s(&member_id);
        req.protocol_type = s("consumer");
        req.protocols = vec![p];
        // The coordinator answers once every member has rejoined, up to the rebalance timeout.
        let r: JoinGroupResponse = c.waiting_on(coordinator, ApiKey::JoinGroup, 5, &req, REBALANCE_WAIT)?;
        match r.error_code {
            0 => break r,
            // MEMBER_ID_REQUIRED: join again with the id the coordinator gave.
            79 => member_id = r.member_id.to_string(),
            // UNKNOWN_MEMBER_ID: the old id expired; join as a new member.
            25 if !member_id.is_empty() => member_id.clear(),
            code if coordinator_moved(code) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
                coordinator = c.coordinator(group)?;
            }
            code if Instant::now() < deadline
                && kafka_protocol::error::ResponseError::try_from_code(code).is_some_and(|e| e.is_retriable()) =>
            {
                std::thread::sleep(Duration::from_millis(200))
            }
            code => return Err(refusal(&format!("joining group {group}"), code, None)),
        }
    };
    let member_id = joined.member_id.to_string();
    let mut assignments = Vec::new();
    if joined.leader.as_str() == member_id {
        let mut members: Vec<String> = joined.members.iter().map(|m| m.member_id.to_string()).collect();
        members.sort();
        let n = members.len();
        for (i, m) in members.iter().enumerate() {
            // Kafka's range assignor: consecutive partitions, the first members one more each.
            let per = partitions.len() / n;
            let extra = partitions.len() % n;
            let start = i * per + i.min(extra);
            let len = per + usize::from(i < extra);
            let mut tp = consumer_protocol_assignment::TopicPartition::default();
            tp.topic = TopicName(s(topic));
            tp.partitions = partitions[start..start + len].to_vec();
            let mut a = ConsumerProtocolAssignment::default();
            a.assigned_partitions = vec![tp];
            let mut sa = sync_group_request::SyncGroupRequestAssignment::default();
            sa.member_id = s(m);
            sa.assignment = versioned(&a, 0)?;
            assignments.push(sa);
        }
    }
    let mut req = SyncGroupRequest::default();
    req.group_id = GroupId(s(group));
    req.generation_id = joined.generation_id;
    req.member_id = s(&member_id);
    req.assignments = assignments;
    let r: SyncGroupResponse = c.waiting_on(coordinator, ApiKey::SyncGroup, 3, &req, REBALANCE_WAIT)?;
    if r.error_code != 0 {
        return Err(refusal(&format!("joining group {group}"), r.error_code, None));
    }
    let mine = decode_assignment(&r.assignment).remove(topic).unwrap_or_default();
    let m = Membership {
        group: group.to_string(),
        coordinator,
        member_id,
        generation: joined.generation_id,
        last_heartbeat: Instant::now(),
    };
    Ok((m, mine))
}

impl Membership {
    /// Heartbeats when one is due: false when the group is rebalancing (rejoin).
    fn heartbeat(&mut self, c: &mut Client) -> Result<bool> {
        if self.last_heartbeat.elapsed() < HEARTBEAT_EVERY {
            return Ok(true);
        }
        let mut req = HeartbeatRequest::default();
        req.group_id = GroupId(s(&self.group));
        req.generation_id = self.generation;
        req.member_id = s(&self.member_id);
        let r: HeartbeatResponse = c.to(self.coordinator, ApiKey::Heartbeat, 3, &req)?;
        self.last_heartbeat = Instant::now();
        match r.error_code {
            0 => Ok(true),
            // REBALANCE_IN_PROGRESS, ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, or the coordinator
            // moved: join again.
            22 | 25 | 27 => Ok(false),
            code if coordinator_moved(code) => Ok(false),
            code => Err(refusal(&format!("heartbeat to group {}", self.group), code, None)),
        }
    }

    fn leave(&self, c: &mut Client) {
        let mut req = LeaveGroupRequest::default();
        req.group_id = GroupId(s(&self.group));
        let mut who = leave_group_request::MemberIdentity::default();
        who.member_id = s(&self.member_id);
        req.members = vec![who];
        let _: Result<LeaveGroupResponse> = c.to(self.coordinator, ApiKey::LeaveGroup, 3, &req);
    }
}

/// `topic consume`: prints records from the chosen partitions (or, with a group, the ones the
/// group assigns this member), until the count, the end, or a signal.
pub fn consume(cli: &Cli, topic: &str, opts: ConsumeOpts) -> Result<()> {
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let mut c = cli.kafka()?;
    let all = c.select_partitions(topic, &[])?;
    let wanted = c.select_partitions(topic, &opts.partitions)?;
    let mut printed = 0u64;
    let mut member_id: Option<String> = None;
    // A coordinator that moves (its __consumer_offsets partition changed leader) or a rebalance
    // while joining: join again, as consumers do, for a bounded time.
    let rejoin_until = Instant::now() + Duration::from_secs(60);
    let rejoin = |e: &CliError| {
        Instant::now() < rejoin_until
            && e.code.is_some_and(|code| coordinator_moved(code) || matches!(code, 22 | 25 | 27))
    };
    loop {
        let (membership, parts) = match &opts.group {
            Some(g) => match join(&mut c, g, topic, &all, member_id.as_deref()) {
                Ok((m, mine)) => {
                    member_id = Some(m.member_id.clone());
                    (Some(m), mine)
                }
                Err(e) if rejoin(&e) => {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                Err(e) => return Err(e),
            },
            None => (None, wanted.clone()),
        };
        let mut positions: BTreeMap<i32, i64> = start_offsets(&mut c, topic, &parts, opts.start)?.into_iter().collect();
        if let Some(m) = &membership {
            // The group's committed offsets win where it has them.
            let done = match committed(&mut c, m.coordinator, &m.group) {
                Ok(done) => done,
                Err(e) if rejoin(&e) => {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                Err(e) => return Err(e),
            };
            for (p, o) in positions.iter_mut() {
                if let Some(at) = done.get(&(topic.to_string(), *p)) {
                    *o = *at;
                }
            }
        }
        // read_committed reads up to the last stable offset: an open transaction's records are
        // not there to reach yet.
        let ends: HashMap<i32, i64> =
            if opts.exit { c.offsets_as(topic, &parts, -1, opts.read_committed)? } else { HashMap::new() };
        let mut membership = membership;
        let outcome =
            consume_assigned(cli, &mut c, topic, &opts, &mut positions, &ends, &mut printed, membership.as_mut())?;
        if let Some(m) = membership.as_ref().filter(|_| outcome == Outcome::Done) {
            if !positions.is_empty() {
                // To the coordinator found again if it moved (it keeps the member and generation).
                c.with_coordinator(&m.group, |c, at| {
                    commit(c, at, &m.group, m.generation, &m.member_id, topic, &positions)
                })?;
            }
            m.leave(&mut c);
        }
        if outcome != Outcome::Rebalance {
            return Ok(());
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Done,
    Rebalance,
}

#[allow(clippy::too_many_arguments)]
fn consume_assigned(
    cli: &Cli,
    c: &mut Client,
    topic: &str,
    opts: &ConsumeOpts,
    positions: &mut BTreeMap<i32, i64>,
    ends: &HashMap<i32, i64>,
    printed: &mut u64,
    mut membership: Option<&mut Membership>,
) -> Result<Outcome> {
    let mut leaders: HashMap<i32, i32> = c.leaders(topic)?.into_iter().collect();
    loop {
        if STOP.load(Ordering::SeqCst) {
            return Ok(Outcome::Done);
        }
        if opts.num.is_some_and(|n| *printed >= n) {
            return Ok(Outcome::Done);
        }
        let active: BTreeMap<i32, i64> = positions
            .iter()
            .filter(|(p, o)| !opts.exit || ends.get(p).is_none_or(|end| **o < *end))
            .map(|(p, o)| (*p, *o))
            .collect();
        if opts.exit && active.is_empty() {
            return Ok(Outcome::Done);
        }
        if let Some(m) = membership.as_deref_mut() {
            if !m.heartbeat(c)? {
                return Ok(Outcome::Rebalance);
            }
        }
        let mut by_leader: BTreeMap<i32, BTreeMap<i32, i64>> = BTreeMap::new();
        for (p, o) in &active {
            by_leader.entry(leaders.get(p).copied().unwrap_or(-1)).or_default().insert(*p, *o);
        }
        if active.is_empty() {
            // A member with no partitions waits, heartbeating, for the next rebalance.
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        let wait = if by_leader.len() > 1 { 100 } else { 500 };
        let mut any_error = false;
        for (leader, parts) in by_leader {
            if leader < 0 {
                any_error = true;
                continue;
            }
            let fetched = match fetch(c, topic, leader, &parts, opts.read_committed, wait) {
                Ok(r) => r,
                Err(e) if e.kind == crate::error::Kind::Unreachable => {
                    any_error = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            any_error |= fetched.retry;
            let mut stopped_early = false;
            for r in fetched.records {
                if opts.num.is_some_and(|n| *printed >= n) {
                    stopped_early = true;
                    break;
                }
                if opts.exit && ends.get(&r.partition).is_some_and(|end| r.offset >= *end) {
                    continue;
                }
                print_record(cli, &opts.format, &r);
                *printed += 1;
                positions.insert(r.partition, r.offset + 1);
            }
            if !stopped_early {
                // Past the batches read whole, control batches included: the end of a log may
                // be one (a new leader's first entry), which has no record to print.
                for (p, n) in fetched.next {
                    let at = positions.entry(p).or_insert(n);
                    *at = (*at).max(n);
                }
            }
        }
        if any_error {
            // A leader moved or went away: look again.
            std::thread::sleep(Duration::from_millis(200));
            leaders = c.leaders(topic)?.into_iter().collect();
        }
        if let Some(m) = membership.as_deref_mut() {
            match commit(c, m.coordinator, &m.group, m.generation, &m.member_id, topic, positions) {
                Ok(()) => {}
                // Moved, or the group rebalanced: join again (the next member resumes from what
                // was committed last, so a record may be printed twice, never skipped).
                Err(e) if e.code.is_some_and(|code| coordinator_moved(code) || matches!(code, 22 | 25 | 27)) => {
                    return Ok(Outcome::Rebalance)
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_decode_from_the_consumer_protocol() {
        let mut tp = consumer_protocol_assignment::TopicPartition::default();
        tp.topic = TopicName(s("events"));
        tp.partitions = vec![0, 2];
        let mut a = ConsumerProtocolAssignment::default();
        a.assigned_partitions = vec![tp];
        let bytes = versioned(&a, 0).unwrap();
        let got = decode_assignment(&bytes);
        assert_eq!(got.get("events"), Some(&vec![0, 2]));
        assert!(decode_assignment(b"\x00").is_empty());
    }
}

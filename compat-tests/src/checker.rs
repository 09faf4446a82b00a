//! A checker in the spirit of Jepsen for fault tests: given what producers
//! sent and heard back, what tailing consumers read meanwhile, and what the
//! partitions hold in the end, it lists every way the log broke its promises.
//!
//! The history is a JSONL file of [`Event`]s (one per line, any order), so a
//! failed run can be judged again from its file alone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One line of a history file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A producer handed record `"{producer}:{seq}"` for `partition` to its client.
    Invoke { producer: u32, seq: u64, partition: i32, ns: u64 },
    /// The broker acknowledged it; `offset` is None when the client learnt
    /// no offset (a retry answered DUPLICATE_SEQUENCE_NUMBER).
    Ok { producer: u32, seq: u64, offset: Option<i64>, ns: u64 },
    /// The client gave up on it; it may still have been written.
    Fail { producer: u32, seq: u64, kind: String, ns: u64 },
    /// A tailing consumer read `value` at `offset` while the test ran.
    Read { partition: i32, offset: i64, value: String, ns: u64 },
    /// The read-back after the run: `value` is at `offset`.
    Final { partition: i32, offset: i64, value: String },
    /// A fault the test injected or healed (for whoever reads a failed
    /// history; the checker ignores it).
    Fault { what: String, ns: u64 },
}

/// The record a producer sends as its `seq`-th, as the value `"{producer}:{seq}"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId {
    pub producer: u32,
    pub seq: u64,
}

impl RecordId {
    pub fn value(&self) -> String {
        format!("{}:{}", self.producer, self.seq)
    }

    pub fn parse(value: &str) -> Option<RecordId> {
        let (p, s) = value.split_once(':')?;
        Some(RecordId { producer: p.parse().ok()?, seq: s.parse().ok()? })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok {
        offset: Option<i64>,
    },
    Err {
        kind: String,
    },
    /// No answer before the run ended (the client was still retrying).
    Unknown,
}

/// One produce, from its invocation to its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub id: RecordId,
    pub partition: i32,
    pub invoke_ns: u64,
    pub outcome: Outcome,
    pub complete_ns: Option<u64>,
}

/// A record seen at an offset, by a tailing consumer or the final read.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Observation {
    pub partition: i32,
    pub offset: i64,
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    pub ops: Vec<Op>,
    /// Every partition read back from its start to its high watermark.
    pub final_log: Vec<Observation>,
    pub tail_reads: Vec<Observation>,
}

impl History {
    /// Joins invocations with their outcomes. A completion without an
    /// invocation, or a record completed twice, makes the history unusable
    /// (a driver bug), not a verdict.
    pub fn from_events(events: impl IntoIterator<Item = Event>) -> Result<History, String> {
        let mut ops: BTreeMap<RecordId, Op> = BTreeMap::new();
        let mut completions: Vec<(RecordId, Outcome, u64)> = Vec::new();
        let mut h = History::default();
        for e in events {
            match e {
                Event::Invoke { producer, seq, partition, ns } => {
                    let id = RecordId { producer, seq };
                    let op = Op { id, partition, invoke_ns: ns, outcome: Outcome::Unknown, complete_ns: None };
                    if ops.insert(id, op).is_some() {
                        return Err(format!("{} was invoked twice", id.value()));
                    }
                }
                Event::Ok { producer, seq, offset, ns } => {
                    completions.push((RecordId { producer, seq }, Outcome::Ok { offset }, ns))
                }
                Event::Fail { producer, seq, kind, ns } => {
                    completions.push((RecordId { producer, seq }, Outcome::Err { kind }, ns))
                }
                Event::Read { partition, offset, value, .. } => {
                    h.tail_reads.push(Observation { partition, offset, value })
                }
                Event::Final { partition, offset, value } => h.final_log.push(Observation { partition, offset, value }),
                Event::Fault { .. } => {}
            }
        }
        for (id, outcome, ns) in completions {
            let op = ops.get_mut(&id).ok_or_else(|| format!("{} completed but was never invoked", id.value()))?;
            if op.complete_ns.is_some() {
                return Err(format!("{} completed twice", id.value()));
            }
            op.outcome = outcome;
            op.complete_ns = Some(ns);
        }
        h.ops = ops.into_values().collect();
        Ok(h)
    }

    pub fn load(path: &Path) -> Result<History, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let events = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1)))
            .collect::<Result<Vec<Event>, String>>()?;
        History::from_events(events)
    }
}

/// Where a value was found: (partition, offset) pairs.
pub type Places = Vec<(i32, i64)>;

/// One broken promise, with what is needed to find it in the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Acknowledged, and not in the final log at all.
    LostAck { value: String, partition: i32, acked_offset: Option<i64> },
    /// Acknowledged at one place, found at another.
    AckedElsewhere { value: String, partition: i32, acked_offset: Option<i64>, found: Places },
    /// Two different records acknowledged at the same offset.
    ConflictingAcks { partition: i32, offset: i64, values: Vec<String> },
    /// One record at more than one place.
    Duplicate { value: String, found: Places },
    /// A producer's records in a partition not in the order it sent them.
    Reordered { producer: u32, partition: i32, first: (i64, u64), then: (i64, u64) },
    /// A tailing consumer read a record that the final log does not hold
    /// there: it was served and later truncated (or moved).
    TruncatedRead { partition: i32, offset: i64, value: String, found: Places },
    /// A record no producer sent.
    NeverSent { partition: i32, offset: i64, value: String },
    /// `later` was sent after `acked` was acknowledged, yet sits before it.
    RealTimeOrder { partition: i32, acked: (String, i64, u64), later: (String, i64, u64) },
}

impl Violation {
    /// The class of violation, for counting and for tests.
    pub fn class(&self) -> &'static str {
        match self {
            Violation::LostAck { .. } => "lost-ack",
            Violation::AckedElsewhere { .. } => "acked-elsewhere",
            Violation::ConflictingAcks { .. } => "conflicting-acks",
            Violation::Duplicate { .. } => "duplicate",
            Violation::Reordered { .. } => "reordered",
            Violation::TruncatedRead { .. } => "truncated-read",
            Violation::NeverSent { .. } => "never-sent",
            Violation::RealTimeOrder { .. } => "real-time-order",
        }
    }
}

fn offset_str(o: &Option<i64>) -> String {
    o.map_or("an unknown offset".to_string(), |o| format!("offset {o}"))
}

fn places_str(p: &Places) -> String {
    if p.is_empty() {
        return "nowhere".to_string();
    }
    p.iter().map(|(part, off)| format!("{part}@{off}")).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] ", self.class())?;
        match self {
            Violation::LostAck { value, partition, acked_offset } => write!(
                f,
                "{value} was acknowledged on partition {partition} at {} and is missing from the final log",
                offset_str(acked_offset)
            ),
            Violation::AckedElsewhere { value, partition, acked_offset, found } => write!(
                f,
                "{value} was acknowledged on partition {partition} at {} but is at {}",
                offset_str(acked_offset),
                places_str(found)
            ),
            Violation::ConflictingAcks { partition, offset, values } => {
                write!(f, "partition {partition} offset {offset} was acknowledged to {}", values.join(" and "))
            }
            Violation::Duplicate { value, found } => {
                write!(f, "{value} is in the log more than once: {}", places_str(found))
            }
            Violation::Reordered { producer, partition, first, then } => write!(
                f,
                "producer {producer} on partition {partition}: seq {} at offset {} comes before seq {} at offset {}",
                first.1, first.0, then.1, then.0
            ),
            Violation::TruncatedRead { partition, offset, value, found } => write!(
                f,
                "a tailing consumer read {value} at {partition}@{offset}; the final log has it at {}",
                places_str(found)
            ),
            Violation::NeverSent { partition, offset, value } => {
                write!(f, "{partition}@{offset} holds {value:?}, which no producer sent")
            }
            Violation::RealTimeOrder { partition, acked, later } => write!(
                f,
                "partition {partition}: {} (offset {}) was acknowledged at {} ns, then {} was sent at {} ns and \
                 still landed before it, at offset {}",
                acked.0, acked.1, acked.2, later.0, later.2, later.1
            ),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub ops: usize,
    pub acked: usize,
    pub failed: usize,
    pub unknown: usize,
    /// Failed or unknown records that are in the final log anyway.
    pub unacked_present: usize,
    pub final_records: usize,
    pub tail_reads: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub violations: Vec<Violation>,
    pub stats: Stats,
}

impl Verdict {
    pub fn is_valid(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn has(&self, class: &str) -> bool {
        self.violations.iter().any(|v| v.class() == class)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        writeln!(
            f,
            "{} ops: {} acknowledged, {} failed, {} unknown ({} unacknowledged in the log); {} records in the final \
             log; {} tail reads; {} violations",
            s.ops,
            s.acked,
            s.failed,
            s.unknown,
            s.unacked_present,
            s.final_records,
            s.tail_reads,
            self.violations.len()
        )?;
        let mut by_class: BTreeMap<&str, usize> = BTreeMap::new();
        for v in &self.violations {
            *by_class.entry(v.class()).or_default() += 1;
        }
        if !by_class.is_empty() {
            let counts: Vec<String> = by_class.iter().map(|(c, n)| format!("{n} {c}")).collect();
            writeln!(f, "violations by class: {}", counts.join(", "))?;
        }
        for v in &self.violations {
            writeln!(f, "  {v}")?;
        }
        Ok(())
    }
}

/// Judges a history. Unacknowledged records (failed or unknown) may or may
/// not be in the log; everything else listed in [`Violation`] fails it.
pub fn check(h: &History) -> Verdict {
    let mut violations = Vec::new();
    let ops: HashMap<RecordId, &Op> = h.ops.iter().map(|op| (op.id, op)).collect();

    // Where each value is in the final log; each (partition, offset) once.
    let mut final_log: Vec<&Observation> = h.final_log.iter().collect();
    final_log.sort_by_key(|o| (o.partition, o.offset));
    final_log.dedup_by(|a, b| a.partition == b.partition && a.offset == b.offset && a.value == b.value);
    let mut places: HashMap<&str, Places> = HashMap::new();
    let mut at: HashMap<(i32, i64), &str> = HashMap::new();
    for o in &final_log {
        places.entry(o.value.as_str()).or_default().push((o.partition, o.offset));
        if let Some(other) = at.insert((o.partition, o.offset), o.value.as_str()) {
            // The read-back itself saw two records at one offset.
            violations.push(Violation::Duplicate {
                value: format!("{other} / {}", o.value),
                found: vec![(o.partition, o.offset)],
            });
        }
    }

    for o in &final_log {
        if RecordId::parse(&o.value).and_then(|id| ops.get(&id)).is_none() {
            violations.push(Violation::NeverSent { partition: o.partition, offset: o.offset, value: o.value.clone() });
        }
    }
    let mut dups: Vec<(&str, &Places)> = places.iter().filter(|(_, p)| p.len() > 1).map(|(v, p)| (*v, p)).collect();
    dups.sort();
    for (value, found) in dups {
        violations.push(Violation::Duplicate { value: value.to_string(), found: found.clone() });
    }

    // Acknowledged records: present, once, where the broker said.
    let mut stats = Stats { ops: h.ops.len(), final_records: final_log.len(), ..Stats::default() };
    let mut acks_at: BTreeMap<(i32, i64), Vec<String>> = BTreeMap::new();
    for op in &h.ops {
        let value = op.id.value();
        let found = places.get(value.as_str());
        match &op.outcome {
            Outcome::Ok { offset } => {
                stats.acked += 1;
                if let Some(o) = offset {
                    acks_at.entry((op.partition, *o)).or_default().push(value.clone());
                }
                let Some(found) = found else {
                    violations.push(Violation::LostAck { value, partition: op.partition, acked_offset: *offset });
                    continue;
                };
                let right_place = match offset {
                    Some(o) => found.contains(&(op.partition, *o)),
                    None => found.iter().any(|(p, _)| *p == op.partition),
                };
                if !right_place {
                    violations.push(Violation::AckedElsewhere {
                        value,
                        partition: op.partition,
                        acked_offset: *offset,
                        found: found.clone(),
                    });
                }
            }
            Outcome::Err { .. } | Outcome::Unknown => {
                if matches!(op.outcome, Outcome::Unknown) {
                    stats.unknown += 1;
                } else {
                    stats.failed += 1;
                }
                if found.is_some() {
                    stats.unacked_present += 1;
                }
            }
        }
    }
    for ((partition, offset), mut values) in acks_at {
        values.sort();
        values.dedup();
        if values.len() > 1 {
            violations.push(Violation::ConflictingAcks { partition, offset, values });
        }
    }

    // Per producer and partition, sequence numbers rise with the offset.
    let mut last: HashMap<(i32, u32), (i64, u64)> = HashMap::new();
    for o in &final_log {
        let Some(id) = RecordId::parse(&o.value) else { continue };
        if let Some(&(prev_off, prev_seq)) = last.get(&(o.partition, id.producer)) {
            if id.seq < prev_seq {
                violations.push(Violation::Reordered {
                    producer: id.producer,
                    partition: o.partition,
                    first: (prev_off, prev_seq),
                    then: (o.offset, id.seq),
                });
            }
        }
        last.insert((o.partition, id.producer), (o.offset, id.seq));
    }

    // What tailing consumers read must still be there, at the same place.
    let mut seen = HashSet::new();
    for r in &h.tail_reads {
        if !seen.insert(r) {
            continue;
        }
        if at.get(&(r.partition, r.offset)) != Some(&r.value.as_str()) {
            violations.push(Violation::TruncatedRead {
                partition: r.partition,
                offset: r.offset,
                value: r.value.clone(),
                found: places.get(r.value.as_str()).cloned().unwrap_or_default(),
            });
        }
    }
    stats.tail_reads = seen.len();

    // Real time: a record sent after another was acknowledged lands after it
    // in the same partition. Sweeping each partition upwards, the latest
    // invocation among lower offsets must precede every acknowledgement.
    let mut latest_below: Option<(i32, &Observation, &Op)> = None;
    for o in &final_log {
        let Some(op) = RecordId::parse(&o.value).and_then(|id| ops.get(&id)) else { continue };
        if places.get(o.value.as_str()).is_some_and(|p| p.len() > 1) {
            continue; // already a duplicate; its place is ambiguous
        }
        if latest_below.is_some_and(|(p, _, _)| p != o.partition) {
            latest_below = None;
        }
        if let (Outcome::Ok { .. }, Some(acked_ns), Some((_, lo, lop))) = (&op.outcome, op.complete_ns, latest_below) {
            if lop.invoke_ns > acked_ns {
                violations.push(Violation::RealTimeOrder {
                    partition: o.partition,
                    acked: (o.value.clone(), o.offset, acked_ns),
                    later: (lo.value.clone(), lo.offset, lop.invoke_ns),
                });
            }
        }
        if latest_below.is_none_or(|(_, _, lop)| op.invoke_ns > lop.invoke_ns) {
            latest_below = Some((o.partition, *o, *op));
        }
    }

    Verdict { violations, stats }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn invoke(producer: u32, seq: u64, partition: i32, ns: u64) -> Event {
        Event::Invoke { producer, seq, partition, ns }
    }
    fn ok(producer: u32, seq: u64, offset: i64, ns: u64) -> Event {
        Event::Ok { producer, seq, offset: Some(offset), ns }
    }
    fn fail(producer: u32, seq: u64, ns: u64) -> Event {
        Event::Fail { producer, seq, kind: "MessageTimedOut".into(), ns }
    }
    fn fin(partition: i32, offset: i64, value: &str) -> Event {
        Event::Final { partition, offset, value: value.into() }
    }
    fn read(partition: i32, offset: i64, value: &str) -> Event {
        Event::Read { partition, offset, value: value.into(), ns: 0 }
    }

    fn verdict(events: Vec<Event>) -> Verdict {
        check(&History::from_events(events).expect("well-formed history"))
    }

    /// Two producers on partition 0, acknowledged in order, read back whole.
    fn clean() -> Vec<Event> {
        vec![
            invoke(0, 0, 0, 10),
            ok(0, 0, 0, 20),
            invoke(1, 0, 0, 11),
            ok(1, 0, 1, 21),
            invoke(0, 1, 0, 30),
            ok(0, 1, 2, 40),
            invoke(0, 2, 1, 31),
            ok(0, 2, 0, 41),
            read(0, 0, "0:0"),
            read(0, 1, "1:0"),
            fin(0, 0, "0:0"),
            fin(0, 1, "1:0"),
            fin(0, 2, "0:1"),
            fin(1, 0, "0:2"),
        ]
    }

    fn only(v: &Verdict, class: &str) {
        assert!(!v.violations.is_empty(), "expected {class}, got a clean verdict");
        assert!(v.violations.iter().all(|x| x.class() == class), "expected only {class}:\n{v}");
    }

    #[test]
    fn a_clean_history_passes() {
        let v = verdict(clean());
        assert!(v.is_valid(), "{v}");
        assert_eq!(v.stats.acked, 4);
        assert_eq!(v.stats.final_records, 4);
        assert_eq!(v.stats.tail_reads, 2);
    }

    #[test]
    fn unacknowledged_records_may_or_may_not_be_there() {
        // 1:1 failed and is absent; 1:2 failed but was written; 1:3 never
        // heard back and was written; 1:4 never heard back and is absent.
        let mut h = clean();
        h.extend([
            invoke(1, 1, 0, 50),
            fail(1, 1, 60),
            invoke(1, 2, 0, 51),
            fail(1, 2, 61),
            invoke(1, 3, 0, 52),
            invoke(1, 4, 0, 53),
            fin(0, 3, "1:2"),
            fin(0, 4, "1:3"),
            read(0, 4, "1:3"),
        ]);
        let v = verdict(h);
        assert!(v.is_valid(), "{v}");
        assert_eq!((v.stats.failed, v.stats.unknown, v.stats.unacked_present), (2, 2, 2));
    }

    #[test]
    fn an_ack_without_an_offset_needs_the_record_in_its_partition() {
        let mut h = clean();
        h.extend([invoke(1, 1, 0, 50), Event::Ok { producer: 1, seq: 1, offset: None, ns: 60 }, fin(0, 3, "1:1")]);
        assert!(verdict(h.clone()).is_valid());
        h.pop();
        only(&verdict(h), "lost-ack");
    }

    #[test]
    fn a_lost_acknowledged_record_is_flagged() {
        let mut h = clean();
        h.retain(|e| *e != fin(0, 2, "0:1"));
        let v = verdict(h);
        only(&v, "lost-ack");
        assert_eq!(v.violations[0], Violation::LostAck { value: "0:1".into(), partition: 0, acked_offset: Some(2) });
    }

    #[test]
    fn a_record_at_another_offset_than_acknowledged_is_flagged() {
        let mut h = clean();
        h.retain(|e| *e != ok(0, 2, 0, 41));
        h.push(ok(0, 2, 7, 41));
        let v = verdict(h);
        only(&v, "acked-elsewhere");
        assert!(v.to_string().contains("0:2 was acknowledged on partition 1 at offset 7 but is at 1@0"), "{v}");
    }

    #[test]
    fn a_record_in_another_partition_is_flagged() {
        let mut h = clean();
        h.retain(|e| *e != fin(1, 0, "0:2"));
        h.push(fin(2, 0, "0:2"));
        only(&verdict(h), "acked-elsewhere");
    }

    #[test]
    fn two_acknowledgements_of_one_offset_are_flagged() {
        let mut h = clean();
        h.retain(|e| *e != ok(1, 0, 1, 21));
        h.push(ok(1, 0, 0, 21));
        let v = verdict(h);
        assert!(v.has("conflicting-acks"), "{v}");
        assert!(v.has("acked-elsewhere"), "{v}");
    }

    #[test]
    fn a_duplicate_is_flagged() {
        let mut h = clean();
        h.push(fin(0, 3, "1:0"));
        let v = verdict(h);
        only(&v, "duplicate");
        assert_eq!(v.violations[0], Violation::Duplicate { value: "1:0".into(), found: vec![(0, 1), (0, 3)] });
    }

    #[test]
    fn a_duplicate_of_an_unacknowledged_record_is_flagged_too() {
        let mut h = clean();
        h.extend([invoke(1, 1, 1, 50), fin(1, 1, "1:1"), fin(1, 2, "1:1")]);
        only(&verdict(h), "duplicate");
    }

    #[test]
    fn reordering_within_a_producer_and_partition_is_flagged() {
        // 1:1 and 1:2 were never acknowledged, so only their order is wrong.
        let mut h = clean();
        h.extend([invoke(1, 1, 0, 50), invoke(1, 2, 0, 51), fin(0, 3, "1:2"), fin(0, 4, "1:1")]);
        let v = verdict(h);
        only(&v, "reordered");
        assert_eq!(v.violations[0], Violation::Reordered { producer: 1, partition: 0, first: (3, 2), then: (4, 1) });
    }

    #[test]
    fn different_producers_and_partitions_do_not_order_each_other() {
        let mut h = clean();
        // Producer 1's seq 5 before producer 0's seq 3: different producers.
        h.extend([invoke(1, 5, 0, 50), invoke(0, 3, 0, 51), fin(0, 3, "1:5"), fin(0, 4, "0:3")]);
        assert!(verdict(h).is_valid());
    }

    #[test]
    fn a_read_of_later_truncated_data_is_flagged() {
        let mut h = clean();
        // 1:1 was served at 0@3, then the partition lost it.
        h.extend([invoke(1, 1, 0, 50), read(0, 3, "1:1")]);
        let v = verdict(h);
        only(&v, "truncated-read");
        assert!(v.to_string().contains("the final log has it at nowhere"), "{v}");
    }

    #[test]
    fn a_read_at_another_offset_than_the_final_log_is_flagged() {
        let mut h = clean();
        // Served at 0@3, but after a truncation it was written again at 0@4.
        h.extend([invoke(1, 1, 0, 50), invoke(0, 3, 0, 50), read(0, 3, "1:1"), fin(0, 3, "0:3"), fin(0, 4, "1:1")]);
        only(&verdict(h), "truncated-read");
    }

    #[test]
    fn a_record_never_sent_is_flagged() {
        let mut h = clean();
        h.extend([fin(0, 3, "7:1"), fin(0, 4, "garbage")]);
        let v = verdict(h);
        only(&v, "never-sent");
        assert_eq!(v.violations.len(), 2);
        assert!(v.to_string().contains("violations by class: 2 never-sent\n"), "{v}");
    }

    #[test]
    fn a_record_sent_after_an_ack_but_landing_before_it_is_flagged() {
        // 1:1 is invoked at 100, after 0:1 was acknowledged at 40, yet it
        // sits below 0:1. Its outcome is unknown: only its place counts.
        let h = vec![
            invoke(0, 0, 0, 10),
            ok(0, 0, 0, 20),
            invoke(0, 1, 0, 30),
            ok(0, 1, 2, 40),
            invoke(1, 1, 0, 100),
            fin(0, 0, "0:0"),
            fin(0, 1, "1:1"),
            fin(0, 2, "0:1"),
        ];
        let v = verdict(h);
        only(&v, "real-time-order");
        assert!(v.to_string().contains("0:1 (offset 2) was acknowledged at 40 ns, then 1:1 was sent at 100 ns"), "{v}");
    }

    #[test]
    fn concurrent_records_may_land_in_either_order() {
        // 1:1 was invoked before 0:1's acknowledgement: no real-time order.
        let h = vec![
            invoke(0, 1, 0, 30),
            ok(0, 1, 1, 40),
            invoke(1, 1, 0, 35),
            ok(1, 1, 0, 45),
            fin(0, 0, "1:1"),
            fin(0, 1, "0:1"),
        ];
        assert!(verdict(h).is_valid());
    }

    #[test]
    fn malformed_histories_are_refused() {
        assert!(History::from_events([ok(0, 0, 0, 1)]).is_err());
        assert!(History::from_events([invoke(0, 0, 0, 1), invoke(0, 0, 1, 2)]).is_err());
        assert!(History::from_events([invoke(0, 0, 0, 1), ok(0, 0, 0, 2), fail(0, 0, 3)]).is_err());
    }

    #[test]
    fn a_history_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let mut events = clean();
        events.push(Event::Fault { what: "SIGKILL".into(), ns: 25 });
        let lines: Vec<String> = events.iter().map(|e| serde_json::to_string(e).unwrap()).collect();
        std::fs::write(&path, lines.join("\n")).unwrap();
        assert_eq!(History::load(&path).unwrap(), History::from_events(clean()).unwrap());
        std::fs::write(&path, "{\"type\":\"invoke\"}\n").unwrap();
        assert!(History::load(&path).unwrap_err().contains(":1:"));
    }

    /// What happens to a record in the model.
    #[derive(Clone, Copy, Debug)]
    enum Fate {
        Acked,
        /// Written, but the producer heard an error or nothing.
        WrittenUnacked {
            failed: bool,
        },
        /// Never written; the producer heard an error or nothing.
        NotWritten {
            failed: bool,
        },
    }

    fn fate() -> impl Strategy<Value = Fate> {
        prop_oneof![
            6 => Just(Fate::Acked),
            1 => any::<bool>().prop_map(|failed| Fate::WrittenUnacked { failed }),
            1 => any::<bool>().prop_map(|failed| Fate::NotWritten { failed }),
        ]
    }

    /// A correct broker: records are appended in the order the steps are
    /// generated; each is invoked up to 3 steps before its append and
    /// acknowledged up to 3 steps after, so nearby records overlap in time.
    /// Tailing consumers read a prefix of each partition.
    fn model() -> impl Strategy<Value = Vec<Event>> {
        let step = (0u32..3, 0i32..3, fate(), 0u64..30, 1u64..30);
        (prop::collection::vec(step, 20..120), prop::collection::vec(0.0f64..1.0, 3)).prop_map(|(steps, tails)| {
            let mut seqs = [0u64; 3];
            let mut ends = [0i64; 3];
            let mut events = Vec::new();
            let mut written: Vec<Vec<String>> = vec![Vec::new(); 3];
            for (i, (producer, partition, fate, before, after)) in steps.into_iter().enumerate() {
                let seq = seqs[producer as usize];
                seqs[producer as usize] += 1;
                let t = (i as u64 + 1) * 100;
                events.push(invoke(producer, seq, partition, t - before));
                let end = &mut ends[partition as usize];
                let value = RecordId { producer, seq }.value();
                match fate {
                    Fate::Acked => {
                        events.push(ok(producer, seq, *end, t + after));
                        events.push(fin(partition, *end, &value));
                        written[partition as usize].push(value);
                        *end += 1;
                    }
                    Fate::WrittenUnacked { failed } => {
                        if failed {
                            events.push(fail(producer, seq, t + after));
                        }
                        events.push(fin(partition, *end, &value));
                        written[partition as usize].push(value);
                        *end += 1;
                    }
                    Fate::NotWritten { failed } => {
                        if failed {
                            events.push(fail(producer, seq, t + after));
                        }
                    }
                }
            }
            for (p, (log, frac)) in written.iter().zip(tails).enumerate() {
                let n = (log.len() as f64 * frac) as usize;
                for (o, v) in log.iter().enumerate().take(n) {
                    events.push(read(p as i32, o as i64, v));
                }
            }
            events
        })
    }

    #[derive(Clone, Copy, Debug)]
    enum Injected {
        LoseAck,
        MoveAck,
        Duplicate,
        Reorder,
        TruncatedRead,
        NeverSent,
        RealTime,
    }

    fn finals(h: &[Event]) -> Vec<(i32, i64, String)> {
        h.iter()
            .filter_map(|e| match e {
                Event::Final { partition, offset, value } => Some((*partition, *offset, value.clone())),
                _ => None,
            })
            .collect()
    }

    fn is_acked(h: &[Event], value: &str) -> bool {
        let id = RecordId::parse(value).unwrap();
        h.iter().any(|e| matches!(e, Event::Ok { producer, seq, .. } if *producer == id.producer && *seq == id.seq))
    }

    /// Breaks a clean history in one way; None if it has nothing to break
    /// that way (too few records of the right kind). Returns the class the
    /// checker must report.
    fn inject(mut h: Vec<Event>, fault: Injected, pick: usize) -> Option<(Vec<Event>, &'static str)> {
        let fs = finals(&h);
        let class = match fault {
            Injected::LoseAck => {
                let acked: Vec<_> = fs.iter().filter(|f| is_acked(&h, &f.2)).collect();
                let (p, o, v) = (*acked.get(pick % acked.len().max(1))?).clone();
                h.retain(|e| *e != fin(p, o, &v));
                "lost-ack"
            }
            Injected::MoveAck => {
                // The final log holds an acknowledged record at a fresh offset.
                let acked: Vec<_> = fs.iter().filter(|f| is_acked(&h, &f.2)).collect();
                let (p, o, v) = (*acked.get(pick % acked.len().max(1))?).clone();
                h.retain(|e| *e != fin(p, o, &v));
                h.push(fin(p, 1_000_000, &v));
                "acked-elsewhere"
            }
            Injected::Duplicate => {
                let (p, _, v) = fs.get(pick % fs.len().max(1))?.clone();
                h.push(fin(p, 1_000_000, &v));
                "duplicate"
            }
            Injected::Reorder => {
                // Swap the values of two records of one producer in one partition.
                let mut pairs = Vec::new();
                for (i, a) in fs.iter().enumerate() {
                    let ida = RecordId::parse(&a.2).unwrap();
                    if let Some(b) = fs[i + 1..]
                        .iter()
                        .find(|b| b.0 == a.0 && RecordId::parse(&b.2).unwrap().producer == ida.producer)
                    {
                        pairs.push((a.clone(), b.clone()));
                    }
                }
                let (a, b) = pairs.get(pick % pairs.len().max(1))?.clone();
                for e in h.iter_mut() {
                    if *e == fin(a.0, a.1, &a.2) {
                        *e = fin(a.0, a.1, &b.2);
                    } else if *e == fin(b.0, b.1, &b.2) {
                        *e = fin(b.0, b.1, &a.2);
                    }
                }
                "reordered"
            }
            Injected::TruncatedRead => {
                // A consumer read, past today's end, a record later cut.
                let (p, _, v) = fs.get(pick % fs.len().max(1))?.clone();
                h.push(read(p, 1_000_000, &v));
                "truncated-read"
            }
            Injected::NeverSent => {
                h.push(fin((pick % 3) as i32, 1_000_000, "99:0"));
                "never-sent"
            }
            Injected::RealTime => {
                // Move a record's invocation after the acknowledgement of an
                // acknowledged record above it in its partition.
                let mut pairs = Vec::new();
                for (i, a) in fs.iter().enumerate() {
                    if let Some(b) = fs[i + 1..].iter().find(|b| b.0 == a.0 && is_acked(&h, &b.2)) {
                        pairs.push((a.clone(), b.clone()));
                    }
                }
                let (a, b) = pairs.get(pick % pairs.len().max(1))?.clone();
                let idb = RecordId::parse(&b.2).unwrap();
                let acked_ns = h.iter().find_map(|e| match e {
                    Event::Ok { producer, seq, ns, .. } if *producer == idb.producer && *seq == idb.seq => Some(*ns),
                    _ => None,
                })?;
                let ida = RecordId::parse(&a.2).unwrap();
                for e in h.iter_mut() {
                    match e {
                        Event::Invoke { producer, seq, ns, .. } if *producer == ida.producer && *seq == ida.seq => {
                            *ns = acked_ns + 1
                        }
                        Event::Ok { producer, seq, ns, .. } | Event::Fail { producer, seq, ns, .. }
                            if *producer == ida.producer && *seq == ida.seq =>
                        {
                            *ns = (*ns).max(acked_ns + 2)
                        }
                        _ => {}
                    }
                }
                "real-time-order"
            }
        };
        Some((h, class))
    }

    fn any_fault() -> impl Strategy<Value = Injected> {
        prop_oneof![
            Just(Injected::LoseAck),
            Just(Injected::MoveAck),
            Just(Injected::Duplicate),
            Just(Injected::Reorder),
            Just(Injected::TruncatedRead),
            Just(Injected::NeverSent),
            Just(Injected::RealTime),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, max_global_rejects: 4000, ..ProptestConfig::default() })]

        #[test]
        fn histories_of_a_correct_log_pass(h in model()) {
            let v = verdict(h);
            prop_assert!(v.is_valid(), "{}", v);
        }

        #[test]
        fn every_injected_fault_is_detected(h in model(), fault in any_fault(), pick in any::<usize>()) {
            let injected = inject(h, fault, pick);
            prop_assume!(injected.is_some());
            let (h, class) = injected.unwrap();
            let v = verdict(h);
            prop_assert!(v.has(class), "{:?} not reported as {}:\n{}", fault, class, v);
        }
    }
}

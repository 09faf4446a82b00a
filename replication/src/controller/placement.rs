//! Where a new partition's replicas go: on distinct racks whenever there are
//! enough, with replicas and preferred leaders (first replicas) spread evenly
//! over the live brokers. Deterministic: the same brokers and load give the
//! same answer on every node, with no randomness.

use std::collections::BTreeMap;

use super::records::{ErrorCode, MetadataError, NodeId};

/// A broker that may receive replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub node_id: NodeId,
    /// None: the broker counts as a rack of its own.
    pub rack: Option<String>,
}

/// What the brokers already carry; updated as partitions are placed, so a
/// topic created after another continues the spread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Load {
    pub replicas: BTreeMap<NodeId, usize>,
    pub leaders: BTreeMap<NodeId, usize>,
    /// Partitions placed so far: varies which followers pair with a leader.
    pub placed: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum RackKey<'a> {
    Named(&'a str),
    Alone(NodeId),
}

fn rack_of(c: &Candidate) -> RackKey<'_> {
    match &c.rack {
        Some(r) => RackKey::Named(r),
        None => RackKey::Alone(c.node_id),
    }
}

/// The topic config that pins preferred leaders to racks (issue 12's leader
/// pinning): a comma-separated list of rack names.
pub const LEADER_PREFERRED_RACKS: &str = "leader.preferred.racks";

/// The racks a `leader.preferred.racks` value names (empty: no pinning).
pub fn preferred_racks(value: Option<&str>) -> Vec<String> {
    value.unwrap_or("").split(',').map(str::trim).filter(|r| !r.is_empty()).map(str::to_string).collect()
}

/// Replica lists for `count` new partitions of `replication_factor`
/// replicas each, first replica = preferred leader. With `leader_racks`
/// non-empty, preferred leaders come from brokers in those racks while any
/// is a candidate (the producers are near them); the other replicas still
/// spread over racks.
pub fn place(
    candidates: &[Candidate],
    load: &mut Load,
    count: usize,
    replication_factor: usize,
    leader_racks: &[String],
) -> Result<Vec<Vec<NodeId>>, MetadataError> {
    let mut brokers: Vec<&Candidate> = candidates.iter().collect();
    brokers.sort_by_key(|c| c.node_id);
    brokers.dedup_by_key(|c| c.node_id);
    let n = brokers.len();
    if replication_factor == 0 || replication_factor > n {
        return Err(MetadataError::new(
            ErrorCode::InvalidReplicationFactor,
            format!(
                "Unable to replicate the partition {replication_factor} time(s): The target replication factor of \
                 {replication_factor} cannot be reached because only {n} broker(s) are registered."
            ),
        ));
    }
    let pinned: Vec<usize> =
        (0..n).filter(|&i| brokers[i].rack.as_ref().is_some_and(|r| leader_racks.contains(r))).collect();
    let leader_choices: Vec<usize> = if pinned.is_empty() { (0..n).collect() } else { pinned };
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        // The leader goes to the broker leading the fewest partitions, so
        // preferred leaders stay within one of each other.
        let leader_pos = leader_choices
            .iter()
            .copied()
            .min_by_key(|&i| {
                let id = brokers[i].node_id;
                (load.leaders.get(&id).copied().unwrap_or(0), load.replicas.get(&id).copied().unwrap_or(0), i)
            })
            .unwrap_or(0);
        let mut chosen = vec![leader_pos];
        let mut racks_used: BTreeMap<RackKey, usize> = BTreeMap::new();
        *racks_used.entry(rack_of(brokers[leader_pos])).or_default() += 1;
        // Rotating the tie-break every round of n partitions varies which
        // brokers follow a given leader, so a failure spreads its load.
        let shift = if n > 1 { (load.placed / n) % (n - 1) } else { 0 };
        while chosen.len() < replication_factor {
            let next = (0..n)
                .filter(|i| !chosen.contains(i))
                .min_by_key(|&i| {
                    let c = brokers[i];
                    let distance = (i + n - leader_pos - 1 + n - shift) % n;
                    (
                        racks_used.get(&rack_of(c)).copied().unwrap_or(0),
                        load.replicas.get(&c.node_id).copied().unwrap_or(0),
                        distance,
                    )
                })
                .unwrap_or(0);
            *racks_used.entry(rack_of(brokers[next])).or_default() += 1;
            chosen.push(next);
        }
        let replicas: Vec<NodeId> = chosen.iter().map(|&i| brokers[i].node_id).collect();
        *load.leaders.entry(replicas[0]).or_default() += 1;
        for r in &replicas {
            *load.replicas.entry(*r).or_default() += 1;
        }
        load.placed += 1;
        out.push(replicas);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn brokers(spec: &[(NodeId, Option<&str>)]) -> Vec<Candidate> {
        spec.iter().map(|(id, r)| Candidate { node_id: *id, rack: r.map(str::to_string) }).collect()
    }

    fn rack_map(c: &[Candidate]) -> BTreeMap<NodeId, Option<String>> {
        c.iter().map(|c| (c.node_id, c.rack.clone())).collect()
    }

    fn spread(counts: impl Iterator<Item = usize>) -> usize {
        let v: Vec<usize> = counts.collect();
        v.iter().max().unwrap() - v.iter().min().unwrap()
    }

    #[test]
    fn three_racks_of_three_put_every_partition_on_three_racks() {
        let c = brokers(&[
            (1, Some("a")),
            (2, Some("a")),
            (3, Some("a")),
            (4, Some("b")),
            (5, Some("b")),
            (6, Some("b")),
            (7, Some("c")),
            (8, Some("c")),
            (9, Some("c")),
        ]);
        let racks = rack_map(&c);
        let mut load = Load::default();
        let parts = place(&c, &mut load, 90, 3, &[]).unwrap();
        assert_eq!(parts.len(), 90);
        for p in &parts {
            let distinct: BTreeSet<_> = p.iter().map(|id| racks[id].clone()).collect();
            assert_eq!(distinct.len(), 3, "{p:?} not on 3 racks");
        }
        assert!(spread(c.iter().map(|b| load.replicas[&b.node_id])) <= 1, "{load:?}");
        assert!(spread(c.iter().map(|b| load.leaders[&b.node_id])) <= 1, "{load:?}");
    }

    #[test]
    fn two_racks_with_rf_three_use_both_racks_two_and_one() {
        let c = brokers(&[(1, Some("a")), (2, Some("a")), (3, Some("b")), (4, Some("b"))]);
        let racks = rack_map(&c);
        let mut load = Load::default();
        for p in place(&c, &mut load, 40, 3, &[]).unwrap() {
            let mut per_rack: BTreeMap<Option<String>, usize> = BTreeMap::new();
            for id in &p {
                *per_rack.entry(racks[id].clone()).or_default() += 1;
            }
            let mut sizes: Vec<usize> = per_rack.values().copied().collect();
            sizes.sort();
            assert_eq!(sizes, vec![1, 2], "{p:?}");
        }
        assert!(spread(c.iter().map(|b| load.replicas[&b.node_id])) <= 1, "{load:?}");
    }

    #[test]
    fn brokers_without_rack_count_as_their_own_rack() {
        // Rack "a" holds two brokers, 3 and 4 have none: RF 3 must never put
        // both rack-a brokers in one partition.
        let c = brokers(&[(1, Some("a")), (2, Some("a")), (3, None), (4, None)]);
        let mut load = Load::default();
        for p in place(&c, &mut load, 30, 3, &[]).unwrap() {
            assert!(!(p.contains(&1) && p.contains(&2)), "{p:?}");
        }
    }

    #[test]
    fn leaders_stay_within_one_across_many_topics() {
        let c = brokers(&[(1, Some("x")), (2, Some("y")), (3, Some("z")), (4, Some("x")), (5, None)]);
        let mut load = Load::default();
        for count in [1, 7, 3, 13, 2, 29, 5] {
            place(&c, &mut load, count, 2, &[]).unwrap();
            assert!(spread(c.iter().map(|b| load.leaders.get(&b.node_id).copied().unwrap_or(0))) <= 1, "{load:?}");
        }
        assert_eq!(load.leaders.values().sum::<usize>(), 60);
        assert_eq!(load.replicas.values().sum::<usize>(), 120);
    }

    #[test]
    fn replicas_are_distinct_and_placement_is_deterministic() {
        let c = brokers(&[(3, None), (1, None), (2, None), (9, Some("r"))]);
        let (mut a, mut b) = (Load::default(), Load::default());
        let pa = place(&c, &mut a, 20, 3, &[]).unwrap();
        let mut reversed = c.clone();
        reversed.reverse();
        let pb = place(&reversed, &mut b, 20, 3, &[]).unwrap();
        assert_eq!(pa, pb, "input order must not matter");
        for p in &pa {
            assert_eq!(p.iter().collect::<BTreeSet<_>>().len(), 3);
        }
        // Followers vary: not every partition led by 1 has the same followers.
        let led_by_1: BTreeSet<&[NodeId]> = pa.iter().filter(|p| p[0] == 1).map(|p| &p[1..]).collect();
        assert!(led_by_1.len() > 1, "{pa:?}");
    }

    #[test]
    fn too_few_brokers_is_invalid_replication_factor() {
        let c = brokers(&[(1, None), (2, None)]);
        let e = place(&c, &mut Load::default(), 1, 3, &[]).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidReplicationFactor);
        let e = place(&c, &mut Load::default(), 1, 0, &[]).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidReplicationFactor);
    }

    #[test]
    fn pinned_leaders_stay_in_the_preferred_racks_and_balance_there() {
        let c = brokers(&[
            (1, Some("eu")),
            (2, Some("eu")),
            (3, Some("us")),
            (4, Some("us")),
            (5, Some("ap")),
            (6, Some("ap")),
        ]);
        let racks = rack_map(&c);
        let mut load = Load::default();
        let pinned = preferred_racks(Some(" us , nowhere,"));
        assert_eq!(pinned, vec!["us".to_string(), "nowhere".to_string()]);
        let parts = place(&c, &mut load, 21, 3, &pinned).unwrap();
        for p in &parts {
            assert_eq!(racks[&p[0]].as_deref(), Some("us"), "{p:?}");
            let distinct: BTreeSet<_> = p.iter().map(|id| racks[id].clone()).collect();
            assert_eq!(distinct.len(), 3, "{p:?}");
        }
        let (l3, l4) = (load.leaders[&3], load.leaders[&4]);
        assert!(l3.abs_diff(l4) <= 1 && l3 + l4 == 21, "{load:?}");
        // No live broker in the pinned racks: leaders go anywhere.
        let parts = place(&c, &mut Load::default(), 6, 1, &["mars".to_string()]).unwrap();
        assert_eq!(parts.iter().map(|p| p[0]).collect::<BTreeSet<_>>().len(), 6);
    }
}

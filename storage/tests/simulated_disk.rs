//! The simulated disk (`fjord_storage::disk::sim`) under a Raft log: a power cut undoes a
//! seeded choice of the unsynced sectors (all, all after a kept prefix, or any subset, which
//! tears entries and their sidecar rows apart), and the reopened log still holds every entry it
//! reported durable, then a prefix of the rest, each entry whole and where it was.

use fjord_storage::batch::{build_batch, patch};
use fjord_storage::disk::sim;
use fjord_storage::{LogConfig, OpenOptions, PartitionLog};

fn open(dir: &std::path::Path) -> PartitionLog {
    // Small segments, so crashes also find rolls (a new segment and sidecar) unsynced.
    let config = LogConfig { segment_bytes: 2_000, ..LogConfig::default() };
    PartitionLog::open_opts(dir, config, OpenOptions { raft: true, ..OpenOptions::default() }).unwrap()
}

/// Entry `i`, stamped at the log end: one to three records whose values name it.
fn entry(log: &PartitionLog, i: u64) -> Vec<u8> {
    let value = format!("entry-{i:04}-{}", "x".repeat((i % 7) as usize * 30));
    let kvs: Vec<_> = (0..1 + i % 3).map(|_| (None, Some(value.as_bytes()))).collect();
    let mut b = build_batch(0, 1_000 + i as i64, &kvs);
    patch(&mut b, log.log_end_offset(), 1, None);
    b
}

/// (entries written, entries synced, entries the reopened log holds, crash report)
async fn one_cut(seed: u64) -> (u64, u64, u64, sim::Crash) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    sim::attach(&root, sim::Options::default());
    let dir = root.join("p-0");
    let log = open(&dir);
    let (synced, written) = (5 + seed % 20, 30 + seed % 11);
    let mut stored = Vec::new();
    for i in 0..written {
        let e = entry(&log, i);
        log.append_raft_entry(&e, i, 0).unwrap();
        stored.push(e);
        if i + 1 == synced {
            log.sync(log.log_end_offset()).await.unwrap();
        }
    }
    let crash = sim::crash(&root, seed).unwrap();
    drop(log);
    let log = open(&dir);
    let held = match log.raft_index_range() {
        Some((first, last)) => {
            assert_eq!(first, 0, "seed {seed}: the log starts at its first entry");
            last + 1
        }
        None => 0,
    };
    let entries = log.raft_entries(0, held, usize::MAX).unwrap();
    assert_eq!(entries.len() as u64, held, "seed {seed}: every entry in range is readable");
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(&e.data[..], &stored[i][..], "seed {seed}: entry {i} is what was written");
    }
    // The log takes appends where it ends now.
    let next = entry(&log, held);
    log.append_raft_entry(&next, held, 0).unwrap();
    sim::detach(&root);
    (written, synced, held, crash)
}

#[tokio::test]
async fn a_power_cut_keeps_what_was_synced_and_a_whole_prefix_of_the_rest() {
    let (mut lost, mut torn) = (0, 0);
    for seed in 0..120 {
        let (written, synced, held, crash) = one_cut(seed).await;
        assert!(held >= synced, "seed {seed}: {held} entries after the cut, {synced} were synced ({crash:?})");
        assert!(held <= written);
        assert!(crash.files > 0 && crash.sectors_lost + crash.sectors_kept > 0, "seed {seed}: {crash:?}");
        // (Entries past the sync may survive anyway: a segment is synced when it rolls.)
        if held < written {
            lost += 1;
        }
        if crash.sectors_lost > 0 && crash.sectors_kept > 0 {
            torn += 1;
        }
    }
    // Cuts that lose entries are drawn, torn writes (part kept, part lost) among them.
    assert!(lost > 0 && torn > 0, "{lost} cuts lost entries, {torn} tore writes");
}

/// A disk that loses syncs (the planted bug the cluster simulation must catch) keeps nothing
/// unsynced through the cut's choice: what a sync reported durable can vanish.
#[tokio::test]
async fn a_disk_that_loses_syncs_loses_synced_entries() {
    let mut lost_synced = 0;
    for seed in 0..20 {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        sim::attach(&root, sim::Options { lose_syncs: true, ..sim::Options::default() });
        let log = open(&root.join("p-0"));
        for i in 0..10 {
            let e = entry(&log, i);
            log.append_raft_entry(&e, i, 0).unwrap();
        }
        log.sync(log.log_end_offset()).await.unwrap();
        assert_eq!(log.flushed_offset(), log.log_end_offset(), "the sync reported success");
        sim::crash(&root, seed).unwrap();
        drop(log);
        let held = open(&root.join("p-0")).raft_index_range().map_or(0, |(_, last)| last + 1);
        if held < 10 {
            lost_synced += 1;
        }
        sim::detach(&root);
    }
    assert!(lost_synced > 0, "no cut lost an entry the lying disk had reported synced");
}

/// Files outside an attached directory are real: written and synced as ever, untouched by a
/// cut of another directory.
#[tokio::test]
async fn files_outside_a_simulated_directory_are_untouched() {
    let (sim_dir, real_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    sim::attach(sim_dir.path(), sim::Options::default());
    let log = open(real_dir.path());
    for i in 0..10 {
        let e = entry(&log, i);
        log.append_raft_entry(&e, i, 0).unwrap();
    }
    let crash = sim::crash(real_dir.path(), 7).unwrap();
    assert_eq!(crash, sim::Crash::default(), "nothing of a real directory is tracked");
    drop(log);
    assert_eq!(open(real_dir.path()).raft_index_range(), Some((0, 9)));
    sim::detach(sim_dir.path());
}

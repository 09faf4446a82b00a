//! The clean-shutdown marker and the recovery-point checkpoint of a data dir
//! (Kafka's `.kafka_cleanshutdown` and `recovery-point-offset-checkpoint`):
//! a clean stop records where each log's active segment ends, so the next
//! start opens every log without reading its batches.
//!
//! The marker is removed, durably, before a start writes anything, and
//! written only after every log has been synced at shutdown; so a marker
//! always speaks for the logs as they are. Without it (a crash), every
//! active segment is scanned and its torn tail cut, as always.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use fjord_storage::log::write_atomic;
use fjord_storage::{CleanState, PartitionLog};

const MARKER: &str = ".fjord-clean-shutdown";
const CHECKPOINT: &str = "recovery-point-checkpoint";
const HEADER: &str = "fjord recovery points v1";

/// Where each log (by its directory name) stood at the last clean shutdown.
pub type RecoveryPoints = HashMap<String, CleanState>;

/// At start, before anything in `data_dir` is written: the recovery points
/// if the last stop was clean, and the marker gone either way.
pub fn take(data_dir: &Path) -> anyhow::Result<Option<RecoveryPoints>> {
    let marker = data_dir.join(MARKER);
    if !marker.exists() {
        return Ok(None);
    }
    let checkpoint = data_dir.join(CHECKPOINT);
    let points = match std::fs::read_to_string(&checkpoint) {
        Ok(text) => parse(&text).unwrap_or_else(|| {
            tracing::warn!(file = %checkpoint.display(), "unreadable recovery-point checkpoint; scanning every log");
            HashMap::new()
        }),
        Err(e) => {
            tracing::warn!(file = %checkpoint.display(), error = %e, "clean-shutdown marker without a checkpoint; scanning every log");
            HashMap::new()
        }
    };
    std::fs::remove_file(&marker)?;
    // The removal must be on disk before any write it no longer covers.
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(Some(points))
}

fn parse(text: &str) -> Option<RecoveryPoints> {
    let mut lines = text.lines();
    if lines.next()? != HEADER {
        return None;
    }
    let mut points = HashMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split(' ').collect();
        let [dir, base, size, next, max_ts, max_ts_offset] = f.as_slice() else {
            return None;
        };
        let state = CleanState {
            base_offset: base.parse().ok()?,
            size: size.parse().ok()?,
            next_offset: next.parse().ok()?,
            max_timestamp: max_ts.parse().ok()?,
            offset_of_max_timestamp: max_ts_offset.parse().ok()?,
        };
        points.insert(dir.to_string(), state);
    }
    Some(points)
}

/// The directory name a log is recorded under.
pub fn log_key(log: &PartitionLog) -> Option<String> {
    Some(log.dir().file_name()?.to_string_lossy().into_owned())
}

/// At shutdown, once no request can write any more: snapshots every log,
/// syncs the data dir's filesystem once for all of them, then writes the
/// checkpoint and the marker. Any failure leaves no marker (the next start
/// recovers as after a crash). Returns whether the marker was written.
/// `data_dir_handle` is the data dir opened at start (see `sync_filesystem`).
pub fn record(data_dir: &Path, data_dir_handle: &std::fs::File, logs: &[std::sync::Arc<PartitionLog>]) -> bool {
    let mut text = format!("{HEADER}\n");
    let mut ok = true;
    for log in logs.iter().filter(|l| !l.is_deleted()) {
        match (log_key(log), log.shutdown_state(false)) {
            (Some(key), Ok(s)) => {
                let _ = writeln!(
                    text,
                    "{key} {} {} {} {} {}",
                    s.base_offset, s.size, s.next_offset, s.max_timestamp, s.offset_of_max_timestamp
                );
            }
            (_, Err(e)) => {
                tracing::warn!(log = %log.dir().display(), error = %e, "clean-shutdown snapshot failed");
                if let Err(e) = log.sync_now() {
                    tracing::warn!(log = %log.dir().display(), error = %e, "flush at shutdown failed");
                }
                ok = false;
            }
            (None, Ok(_)) => ok = false,
        }
    }
    if let Err(e) = fjord_storage::durability::sync_filesystem(data_dir_handle) {
        // One sync per log then, as before the marker existed.
        tracing::warn!(error = %e, "syncfs of the data dir failed; syncing each log");
        for log in logs.iter().filter(|l| !l.is_deleted()) {
            if let Err(e) = log.shutdown_state(true) {
                tracing::warn!(log = %log.dir().display(), error = %e, "flush at shutdown failed");
                ok = false;
            }
        }
    }
    if !ok {
        return false;
    }
    let written = write_atomic(&data_dir.join(CHECKPOINT), text.as_bytes())
        .and_then(|()| write_atomic(&data_dir.join(MARKER), b""));
    if let Err(e) = written {
        tracing::warn!(error = %e, "cannot write the clean-shutdown marker");
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips_and_rejects_garbage() {
        let text = format!("{HEADER}\nt-0 0 100 5 1000 3\nother.topic-12 40 0 40 -1 -1\n");
        let p = parse(&text).unwrap();
        assert_eq!(
            p["t-0"],
            CleanState { base_offset: 0, size: 100, next_offset: 5, max_timestamp: 1000, offset_of_max_timestamp: 3 }
        );
        assert_eq!(p["other.topic-12"].next_offset, 40);
        assert!(parse("something else\n").is_none());
        assert!(parse(&format!("{HEADER}\nt-0 0 100\n")).is_none());
        assert!(parse(&format!("{HEADER}\nt-0 0 x 5 1 1\n")).is_none());
    }

    #[test]
    fn marker_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        assert!(take(dir.path()).unwrap().is_none());
        std::fs::write(dir.path().join(MARKER), b"").unwrap();
        // A marker without its checkpoint: a clean start, but nothing trusted.
        assert_eq!(take(dir.path()).unwrap().map(|p| p.len()), Some(0));
        assert!(!dir.path().join(MARKER).exists());
        assert!(take(dir.path()).unwrap().is_none());
    }
}

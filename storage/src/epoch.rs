//! Leader epoch → start offset cache, persisted beside the segments. Raft
//! terms become partitionLeaderEpoch values, and followers truncate by them.

use std::path::{Path, PathBuf};

use crate::error::Result;

#[derive(Debug, Clone)]
pub struct EpochCache {
    path: PathBuf,
    entries: Vec<(i32, i64)>,
}

impl EpochCache {
    pub fn load(dir: &Path) -> Result<EpochCache> {
        let path = dir.join("leader-epoch-checkpoint");
        let mut entries = Vec::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines() {
                let mut it = line.split_whitespace();
                if let (Some(e), Some(o)) = (it.next(), it.next()) {
                    if let (Ok(e), Ok(o)) = (e.parse(), o.parse()) {
                        entries.push((e, o));
                    }
                }
            }
        }
        Ok(EpochCache { path, entries })
    }

    fn persist(&self) -> Result<()> {
        let text: String = self.entries.iter().map(|(e, o)| format!("{e} {o}\n")).collect();
        crate::log::write_atomic(&self.path, text.as_bytes())
    }

    /// Records that `epoch` starts at `offset` if it is newer than the last.
    pub fn assign(&mut self, epoch: i32, offset: i64) -> Result<()> {
        if epoch < 0 || self.entries.last().is_some_and(|(e, _)| *e >= epoch) {
            return Ok(());
        }
        self.entries.push((epoch, offset));
        self.persist()
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|(e, _)| *e)
    }

    /// The end offset of `epoch`: the start of the next larger epoch, or the
    /// log end if `epoch` is the latest. Returns the largest epoch <= asked.
    pub fn end_offset_for(&self, epoch: i32, log_end: i64) -> Option<(i32, i64)> {
        let i = self.entries.iter().rposition(|(e, _)| *e <= epoch)?;
        let end = self.entries.get(i + 1).map(|(_, o)| *o).unwrap_or(log_end);
        Some((self.entries[i].0, end))
    }

    /// Drops epochs that start at or after `offset` (suffix truncation).
    pub fn truncate_from(&mut self, offset: i64) -> Result<()> {
        let before = self.entries.len();
        self.entries.retain(|(_, o)| *o < offset);
        if self.entries.len() != before {
            self.persist()?;
        }
        Ok(())
    }

    /// The log start moved to `start`: epochs that ended before it go, and
    /// the one in force at `start` now starts there (Kafka's
    /// `truncateFromStart`).
    pub fn truncate_before(&mut self, start: i64) -> Result<()> {
        let Some(i) = self.entries.iter().rposition(|(_, o)| *o <= start) else {
            return Ok(());
        };
        if i == 0 && self.entries[0].1 == start {
            return Ok(());
        }
        self.entries.drain(..i);
        self.entries[0].1 = start;
        self.persist()
    }

    pub fn entries(&self) -> &[(i32, i64)] {
        &self.entries
    }
}

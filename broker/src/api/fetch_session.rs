//! Incremental fetch sessions (KIP-227): the broker remembers which
//! partitions a consumer fetches, so later requests name only what changed
//! and responses carry only partitions with news.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use uuid::Uuid;

/// One partition as a session remembers it.
#[derive(Debug, Clone)]
pub struct CachedPartition {
    pub topic: String,
    pub topic_id: Uuid,
    pub partition: i32,
    pub fetch_offset: i64,
    pub max_bytes: i32,
    /// The leader epoch the client last named (-1: none), checked on every
    /// fetch of the session.
    pub current_leader_epoch: i32,
    /// What the last response told the client, to detect changes.
    pub last_hw: i64,
    pub last_log_start: i64,
}

#[derive(Debug)]
pub struct Session {
    /// The epoch the next request must carry.
    pub next_epoch: i32,
    pub partitions: Vec<CachedPartition>,
    last_used: Instant,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SessionError {
    NotFound,
    InvalidEpoch,
}

pub struct FetchSessions {
    max: usize,
    inner: Mutex<(i32, HashMap<i32, Session>)>,
}

impl FetchSessions {
    pub fn new(max: usize) -> Self {
        FetchSessions { max, inner: Mutex::new((0, HashMap::new())) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (i32, HashMap<i32, Session>)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn remove(&self, id: i32) {
        self.lock().1.remove(&id);
    }

    /// Starts a session over `partitions`; 0 when sessions cannot be had.
    pub fn create(&self, partitions: Vec<CachedPartition>) -> i32 {
        if self.max == 0 {
            return 0;
        }
        let mut g = self.lock();
        if g.1.len() >= self.max {
            // Evict the least recently used session; its client falls back
            // to a full fetch when told the id is gone.
            if let Some(oldest) = g.1.iter().min_by_key(|(_, s)| s.last_used).map(|(id, _)| *id) {
                g.1.remove(&oldest);
            }
        }
        let mut id = g.0;
        loop {
            id = id.wrapping_add(1);
            if id > 0 && !g.1.contains_key(&id) {
                break;
            }
        }
        g.0 = id;
        g.1.insert(id, Session { next_epoch: 1, partitions, last_used: Instant::now() });
        id
    }

    /// Applies an incremental request under `id`/`epoch` and returns the
    /// session's partitions after it. `update` changes or adds partitions;
    /// `forget` removes (topic, partition) pairs.
    pub fn update(
        &self,
        id: i32,
        epoch: i32,
        update: Vec<CachedPartition>,
        forget: &[(String, i32)],
    ) -> Result<Vec<CachedPartition>, SessionError> {
        let mut g = self.lock();
        let s = g.1.get_mut(&id).ok_or(SessionError::NotFound)?;
        if s.next_epoch != epoch {
            return Err(SessionError::InvalidEpoch);
        }
        s.next_epoch = if epoch == i32::MAX { 1 } else { epoch + 1 };
        s.last_used = Instant::now();
        s.partitions.retain(|p| !forget.iter().any(|(t, i)| *t == p.topic && *i == p.partition));
        for u in update {
            match s.partitions.iter_mut().find(|p| p.topic == u.topic && p.partition == u.partition) {
                Some(p) => {
                    p.fetch_offset = u.fetch_offset;
                    p.max_bytes = u.max_bytes;
                    p.current_leader_epoch = u.current_leader_epoch;
                }
                None => s.partitions.push(u),
            }
        }
        Ok(s.partitions.clone())
    }

    /// Records what a response told the client.
    pub fn remember(&self, id: i32, sent: &[(String, i32, i64, i64)]) {
        let mut g = self.lock();
        if let Some(s) = g.1.get_mut(&id) {
            for (t, i, hw, ls) in sent {
                if let Some(p) = s.partitions.iter_mut().find(|p| p.topic == *t && p.partition == *i) {
                    p.last_hw = *hw;
                    p.last_log_start = *ls;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(t: &str, p: i32, off: i64) -> CachedPartition {
        CachedPartition {
            topic: t.into(),
            topic_id: Uuid::nil(),
            partition: p,
            fetch_offset: off,
            max_bytes: 100,
            current_leader_epoch: -1,
            last_hw: -1,
            last_log_start: -1,
        }
    }

    #[test]
    fn epochs_must_follow_and_forgotten_partitions_leave() {
        let s = FetchSessions::new(2);
        let id = s.create(vec![part("a", 0, 0), part("a", 1, 0)]);
        assert!(id > 0);
        assert_eq!(s.update(id, 2, vec![], &[]).unwrap_err(), SessionError::InvalidEpoch);
        let ps = s.update(id, 1, vec![part("a", 0, 7), part("b", 0, 3)], &[("a".into(), 1)]).unwrap();
        let got: Vec<_> = ps.iter().map(|p| (p.topic.as_str(), p.partition, p.fetch_offset)).collect();
        assert_eq!(got, vec![("a", 0, 7), ("b", 0, 3)]);
        assert_eq!(s.update(999, 1, vec![], &[]).unwrap_err(), SessionError::NotFound);
        // A full cache evicts the least recently used session.
        let id2 = s.create(vec![]);
        let id3 = s.create(vec![]);
        assert!(id2 != id3);
        assert_eq!(s.update(id, 2, vec![], &[]).unwrap_err(), SessionError::NotFound);
    }
}

//! A bounded on-disk cache of segment chunks read from the bucket: least recently used chunks
//! go first once the cache holds more than its limit. It starts empty at each process start
//! (what it held may belong to copies deleted meanwhile).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;

pub struct ChunkCache {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// name -> (file number, size, last use)
    entries: HashMap<String, (u64, u64, u64)>,
    total: u64,
    tick: u64,
    next_file: u64,
}

impl ChunkCache {
    /// A cache in `dir` (created, emptied of earlier chunks) holding at most `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<ChunkCache> {
        std::fs::create_dir_all(dir)?;
        for e in std::fs::read_dir(dir)?.flatten() {
            if e.file_name().to_string_lossy().ends_with(".chunk") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(ChunkCache { dir: dir.to_path_buf(), max_bytes, state: Mutex::new(State::default()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, n: u64) -> PathBuf {
        self.dir.join(format!("{n}.chunk"))
    }

    /// Whether `name` is cached (without counting a use).
    pub fn contains(&self, name: &str) -> bool {
        self.lock().entries.contains_key(name)
    }

    /// The cached chunk `name`, counted as a hit or a miss.
    pub fn get(&self, name: &str) -> Option<Bytes> {
        let file = {
            let mut st = self.lock();
            st.tick += 1;
            let tick = st.tick;
            st.entries.get_mut(name).map(|e| {
                e.2 = tick;
                e.0
            })
        };
        let data = file.and_then(|n| std::fs::read(self.path(n)).ok());
        if data.is_some() {
            metrics::counter!("fjord_remote_cache_hits_total").increment(1);
        } else {
            metrics::counter!("fjord_remote_cache_misses_total").increment(1);
        }
        data.map(Bytes::from)
    }

    /// Caches `data` as `name`, evicting the least recently used chunks past the limit. A
    /// failure to write leaves it uncached (the next read goes to the bucket again).
    pub fn put(&self, name: &str, data: &[u8]) {
        let size = data.len() as u64;
        if size > self.max_bytes {
            return;
        }
        let n = {
            let mut st = self.lock();
            st.next_file += 1;
            st.next_file
        };
        let tmp = self.dir.join(format!("{n}.tmp"));
        if std::fs::write(&tmp, data).and_then(|_| std::fs::rename(&tmp, self.path(n))).is_err() {
            let _ = std::fs::remove_file(&tmp);
            return;
        }
        let mut drop_files = Vec::new();
        {
            let mut st = self.lock();
            st.tick += 1;
            let tick = st.tick;
            if let Some((old, old_size, _)) = st.entries.insert(name.to_string(), (n, size, tick)) {
                st.total -= old_size;
                drop_files.push(old);
            }
            st.total += size;
            while st.total > self.max_bytes {
                let Some(oldest) = st.entries.iter().min_by_key(|(_, e)| e.2).map(|(k, _)| k.clone()) else { break };
                if let Some((f, s, _)) = st.entries.remove(&oldest) {
                    st.total -= s;
                    drop_files.push(f);
                }
            }
            metrics::gauge!("fjord_remote_cache_bytes").set(st.total as f64);
        }
        for f in drop_files {
            let _ = std::fs::remove_file(self.path(f));
        }
    }

    /// Bytes cached.
    pub fn size(&self) -> u64 {
        self.lock().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_chunks_go_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("7.chunk"), b"left by an earlier process").unwrap();
        let c = ChunkCache::open(dir.path(), 30).unwrap();
        assert!(!dir.path().join("7.chunk").exists());
        c.put("a", &[1; 10]);
        c.put("b", &[2; 10]);
        c.put("c", &[3; 10]);
        assert_eq!(c.get("a").as_deref(), Some(&[1u8; 10][..]), "a is now the most recent");
        c.put("d", &[4; 10]);
        assert!(c.get("b").is_none(), "b was the least recently used");
        assert!(c.contains("a") && c.contains("c") && c.contains("d"));
        assert_eq!(c.size(), 30);
        c.put("huge", &[0; 31]);
        assert!(!c.contains("huge"), "a chunk over the whole limit is not cached");
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 3, "evicted chunks' files are removed");
    }
}

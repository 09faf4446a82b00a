//! `DataDirLock`: an exclusive `flock` on a data dir's `.lock` file, held
//! for the life of the process, so two brokers never share one data dir.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{LogError, Result};

/// Held while the data dir is in use; dropping it (or the process
/// exiting, however it exits) releases the lock.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock without waiting: another holder (another process, or
    /// another open in this one, since `flock` locks belong to the open
    /// file) makes this fail with `LogError::DataDirLocked`.
    pub fn acquire(dir: &Path) -> Result<DataDirLock> {
        // A data dir made here is synced into its parent (partition
        // directories are synced into it as they are made).
        crate::log::create_dirs_durably(dir)?;
        let path = dir.join(".lock");
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        // SAFETY: flock(2) on a descriptor this function owns.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Err(LogError::DataDirLocked(dir.to_path_buf()));
            }
            return Err(e.into());
        }
        Ok(DataDirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

//! `DataDirLock`: one holder per data dir at a time.

use fjord_storage::{DataDirLock, LogError};

#[test]
fn a_second_lock_on_a_data_dir_fails_until_the_first_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let first = DataDirLock::acquire(dir.path()).unwrap();
    // flock belongs to the open file: a second open in the same process is
    // refused like another process would be.
    match DataDirLock::acquire(dir.path()) {
        Err(LogError::DataDirLocked(p)) => assert_eq!(p, dir.path()),
        other => panic!("second lock: {other:?}"),
    }
    let msg = DataDirLock::acquire(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("in use by another process"), "{msg}");
    drop(first);
    let again = DataDirLock::acquire(dir.path()).unwrap();
    assert!(again.path().starts_with(dir.path()));
}

//! The wall clock, behind one seam. Only timestamps stored with records read it (LogAppendTime
//! on a partition leader, the time a Raft entry was written, a metadata record's batch
//! timestamp); every timer, lease, election and timeout in this crate runs on tokio's monotonic
//! clock. So a step of the wall clock (NTP, a VM migration) can move timestamps, never decide
//! who leads or what commits. The simulation steps it (`jump`) to hold the code to that.

use std::sync::atomic::{AtomicI64, Ordering};

/// What `jump` has added to the system clock, in ms (0 outside simulations).
static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Milliseconds since the Unix epoch, as this process's wall clock reads them.
pub fn now_ms() -> i64 {
    let system = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    system.saturating_add(OFFSET_MS.load(Ordering::Relaxed))
}

/// Steps the wall clock every caller of `now_ms` in this process sees by `by_ms` (backwards
/// when negative), as a clock step on every machine of a cluster would. For simulations.
pub fn jump(by_ms: i64) {
    OFFSET_MS.fetch_add(by_ms, Ordering::Relaxed);
}

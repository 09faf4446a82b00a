//! The wall clock, behind one seam. Only timestamps stored with records read it (LogAppendTime
//! on a partition leader, the time a Raft entry was written, a metadata record's batch
//! timestamp); every timer, lease, election and timeout in this crate runs on tokio's monotonic
//! clock. So a step of the wall clock (NTP, a VM migration) can move timestamps, never decide
//! who leads or what commits. The simulation steps it (`jump`) to hold the code to that, and
//! reads it from simulated time (`simulate`) so a seed replays the stored bytes too.

use std::cell::Cell;

thread_local! {
    /// What `jump` has added on this thread, in ms (0 outside simulations).
    static OFFSET_MS: Cell<i64> = const { Cell::new(0) };
    /// Where this thread reads the time instead of the system clock (simulations).
    static SOURCE: Cell<Option<fn() -> i64>> = const { Cell::new(None) };
}

/// Milliseconds since the Unix epoch, as this process's wall clock reads them.
pub fn now_ms() -> i64 {
    let base = match SOURCE.with(Cell::get) {
        Some(source) => source(),
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
    };
    base.saturating_add(OFFSET_MS.with(Cell::get))
}

/// Steps the wall clock `now_ms` reads on this thread by `by_ms` (backwards when negative), as
/// a clock step on every machine of a cluster would: a simulation runs all its hosts on one
/// thread. For simulations.
pub fn jump(by_ms: i64) {
    OFFSET_MS.with(|o| o.set(o.get().saturating_add(by_ms)));
}

/// From now on `now_ms` on this thread reads `source` (None: the system clock again). For
/// simulations, whose hosts all run on the thread that drives them.
pub fn simulate(source: Option<fn() -> i64>) {
    SOURCE.with(|s| s.set(source));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_simulated_clock_reads_its_source_and_steps() {
        simulate(Some(|| 1_000));
        assert_eq!(now_ms(), 1_000);
        jump(-300);
        assert_eq!(now_ms(), 700);
        jump(300);
        simulate(None);
        assert!(now_ms() > 1_700_000_000_000, "the system clock again");
    }
}

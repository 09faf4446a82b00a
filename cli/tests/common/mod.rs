//! What fjordctl's test files share: a bounded run of the binary and checks of its result.

use std::process::Child;
use std::time::Duration;

use serde_json::Value;

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> &Run {
        assert_eq!(self.code, 0, "fjordctl failed:\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    pub fn json(&self) -> Value {
        self.ok();
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.stdout))
    }

    /// The error: exactly one line on stderr, starting with "fjordctl: ", nothing on stdout,
    /// no panic, and the exit code.
    pub fn refused(&self, code: i32, says: &str) {
        assert_eq!(self.code, code, "stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        let lines: Vec<&str> = self.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line, not:\n{}", self.stderr);
        assert!(lines[0].starts_with("fjordctl: "), "{:?}", lines[0]);
        assert!(lines[0].contains(says), "{:?} does not say {says:?}", lines[0]);
        assert!(self.stdout.is_empty(), "nothing on stdout: {}", self.stdout);
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
    }
}

/// Waits for `child` (fjordctl `args`) for at most `limit`: a command that hangs is killed and
/// the test fails naming it.
pub fn bounded(child: Child, args: &[&str], limit: Duration) -> Run {
    let pid = child.id() as i32;
    let (done, watchdog) = std::sync::mpsc::channel::<()>();
    let killer = std::thread::spawn(move || {
        let timed_out = watchdog.recv_timeout(limit).is_err();
        if timed_out {
            // SAFETY: kill(2) on a pid this test spawned and has not reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        timed_out
    });
    let out = child.wait_with_output().expect("fjordctl's output");
    let _ = done.send(());
    assert!(!killer.join().expect("watchdog"), "fjordctl {args:?} did not finish within {limit:?}");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

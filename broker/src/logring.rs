//! The process's most recent log lines, kept in memory for the admin API's debug bundle: a
//! support engineer gets them without shell access to the node. `fjord` writes its logs through
//! `Tee`, which sends each line to stderr as before and keeps a copy here.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::Mutex;

/// How many lines are kept; older ones are dropped first.
pub const KEPT_LINES: usize = 2_000;

static RECENT: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

/// The kept lines, oldest first.
pub fn recent() -> Vec<String> {
    RECENT.lock().map(|r| r.iter().cloned().collect()).unwrap_or_default()
}

fn keep(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let Ok(mut recent) = RECENT.lock() else { return };
    for line in text.lines().filter(|l| !l.is_empty()) {
        if recent.len() == KEPT_LINES {
            recent.pop_front();
        }
        recent.push_back(line.to_string());
    }
}

/// A `tracing_subscriber` writer: stderr, and a copy of each event in memory. The formatter
/// writes one event per writer, so a writer's buffer holds whole lines when it is dropped.
#[derive(Default)]
pub struct Tee {
    buf: Vec<u8>,
}

impl Write for Tee {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // A log line that cannot reach stderr is dropped, as the plain stderr writer would.
        let _ = io::stderr().write_all(&self.buf);
        // The copy is kept without the terminal's colour codes.
        keep(&strip_ansi(&self.buf));
    }
}

/// `bytes` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == 0x1b && bytes.get(i + 1) == Some(&b'[') {
            i += 2;
            while i < bytes.len() && !bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            i += 1;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_codes_are_stripped_and_only_the_newest_lines_are_kept() {
        assert_eq!(strip_ansi(b"\x1b[2mts\x1b[0m \x1b[32m INFO\x1b[0m msg"), b"ts  INFO msg");
        for i in 0..KEPT_LINES + 5 {
            drop(Tee { buf: format!("line {i}\n").into_bytes() });
        }
        let kept = recent();
        assert_eq!(kept.len(), KEPT_LINES);
        assert_eq!(kept.last().map(String::as_str), Some(format!("line {}", KEPT_LINES + 4).as_str()));
        assert_eq!(kept.first().map(String::as_str), Some("line 5"));
    }
}

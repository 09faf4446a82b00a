//! The machine's own limits, measured in the same run as the broker, so
//! Fjord's figures can be read as fractions of what the hardware gave at
//! that moment (shared machines drift by more than the differences we
//! care about).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Ceilings {
    /// Sequential 1 MiB writes to the page cache, MB/s.
    pub disk_write_mb_s: f64,
    /// Sequential 1 MiB writes, each followed by fdatasync, MB/s.
    pub disk_write_fsync_mb_s: f64,
    /// One TCP stream over loopback, MB/s.
    pub loopback_mb_s: f64,
}

const CHUNK: usize = 1 << 20;

/// Writes `total` bytes in 1 MiB chunks into a file in `dir`; with `fsync`,
/// fdatasync after every chunk (what a durable log that syncs each write
/// could at best do).
fn disk(dir: &Path, total: usize, fsync: bool) -> anyhow::Result<f64> {
    let file = tempfile::NamedTempFile::new_in(dir)?;
    let mut f = file.as_file();
    let buf = vec![0x5au8; CHUNK];
    let start = Instant::now();
    let mut written = 0;
    while written < total {
        f.write_all(&buf)?;
        if fsync {
            f.sync_data()?;
        }
        written += CHUNK;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(written as f64 / secs / 1e6)
}

/// One client streams to one server over 127.0.0.1 for `for_how_long`.
fn loopback(for_how_long: Duration) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    });
    let mut c = TcpStream::connect(addr)?;
    let buf = vec![0xa5u8; CHUNK];
    let start = Instant::now();
    while start.elapsed() < for_how_long {
        c.write_all(&buf)?;
    }
    c.shutdown(std::net::Shutdown::Write)?;
    let total = server.join().map_err(|_| anyhow::anyhow!("loopback reader panicked"))??;
    Ok(total as f64 / start.elapsed().as_secs_f64() / 1e6)
}

/// The best of three trials: a ceiling is what the machine can do, and on a
/// shared machine a single trial often catches a neighbour's burst.
fn best_of_three(mut trial: impl FnMut() -> anyhow::Result<f64>) -> anyhow::Result<f64> {
    let mut best = 0f64;
    for _ in 0..3 {
        best = best.max(trial()?);
    }
    Ok(best)
}

/// Measures all three; `quick` keeps it to a fraction of a second (smoke runs).
pub fn measure(dir: &Path, quick: bool) -> anyhow::Result<Ceilings> {
    let (bytes, fsync_bytes, secs) = if quick { (32 << 20, 8 << 20, 0.1) } else { (1 << 30, 256 << 20, 2.0) };
    Ok(Ceilings {
        disk_write_mb_s: best_of_three(|| disk(dir, bytes, false))?,
        disk_write_fsync_mb_s: best_of_three(|| disk(dir, fsync_bytes, true))?,
        loopback_mb_s: best_of_three(|| loopback(Duration::from_secs_f64(secs)))?,
    })
}

//! The broker under test: started from its binary in a fresh data dir (or
//! an external one given by address), and its CPU time and memory read
//! from /proc.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// CPU and memory of a process, from /proc, and its own metrics page.
pub struct BrokerStats {
    pid: u32,
    /// The broker's Prometheus endpoint, when the bench started it with one.
    metrics: Option<String>,
}

impl BrokerStats {
    pub fn new(pid: u32, metrics: Option<String>) -> BrokerStats {
        BrokerStats { pid, metrics }
    }

    /// The broker's own account of Produce latency: request read → response
    /// written, queueing behind earlier responses included, as percentiles
    /// of its rolling summary (about the last minute).
    pub fn produce_residence(&self) -> Option<crate::driver::Percentiles> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.metrics.as_ref()?).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
        let mut page = String::new();
        s.read_to_string(&mut page).ok()?;
        let value = |suffix: &str| -> Option<f64> {
            let prefix = format!("fjord_request_residence_seconds{suffix}");
            page.lines().find(|l| l.starts_with(&prefix))?.split_whitespace().last()?.parse().ok()
        };
        let q = |q: &str| value(&format!("{{api=\"Produce\",quantile=\"{q}\"}}")).map(|v| v * 1000.0);
        Some(crate::driver::Percentiles {
            p50_ms: q("0.5")?,
            p99_ms: q("0.99")?,
            p999_ms: q("0.999")?,
            max_ms: q("1")?,
            count: value("_count{api=\"Produce\"}")? as u64,
        })
    }

    /// User + system CPU seconds used so far.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // Fields after the parenthesised command name; utime and stime are
        // the 14th and 15th fields of the line.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow::anyhow!("odd /proc stat"))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> anyhow::Result<f64> {
            Ok(fields.get(i).ok_or_else(|| anyhow::anyhow!("short /proc stat"))?.parse::<f64>()?)
        };
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Ok((ticks(11)? + ticks(12)?) / hz)
    }

    fn status_kib(&self, key: &str) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let line = status.lines().find(|l| l.starts_with(key)).ok_or_else(|| anyhow::anyhow!("no {key} in status"))?;
        let kib: f64 = line.split_whitespace().nth(1).ok_or_else(|| anyhow::anyhow!("bad {key}"))?.parse()?;
        Ok(kib)
    }

    pub fn rss_mib(&self) -> anyhow::Result<f64> {
        Ok(self.status_kib("VmRSS:")? / 1024.0)
    }

    /// Resident anonymous memory: the heap and stacks, without the pages of
    /// mapped segment files (those are page cache the kernel reclaims).
    pub fn anon_rss_mib(&self) -> anyhow::Result<f64> {
        Ok(self.status_kib("RssAnon:")? / 1024.0)
    }

    /// The high-water mark of resident memory since the process started.
    pub fn peak_rss_mib(&self) -> anyhow::Result<f64> {
        Ok(self.status_kib("VmHWM:")? / 1024.0)
    }
}

/// A broker process the benchmark started; killed when dropped.
pub struct Broker {
    child: Child,
    pub bootstrap: String,
    pub stats: BrokerStats,
    _data: tempfile::TempDir,
}

impl Broker {
    /// Starts `bin` on a free port with a new data dir under `parent`, with
    /// `extra` flags.
    pub fn start(bin: &Path, parent: &Path, extra: &[String]) -> anyhow::Result<Broker> {
        let data = tempfile::tempdir_in(parent)?;
        let metrics = if extra.iter().any(|a| a.starts_with("--metrics-listen")) {
            None
        } else {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            Some(format!("127.0.0.1:{port}"))
        };
        let mut child = Command::new(bin)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .args(metrics.iter().flat_map(|m| ["--metrics-listen", m.as_str()]))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start broker {}: {e}", bin.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no broker stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let bootstrap = line
            .trim()
            .strip_prefix("fjord listening on ")
            .ok_or_else(|| anyhow::anyhow!("broker did not start: {line:?}"))?
            .to_string();
        let stats = BrokerStats::new(child.id(), metrics);
        Ok(Broker { child, bootstrap, stats, _data: data })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

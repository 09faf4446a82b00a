//! The broker under test: started from its binary in a fresh data dir (or
//! an external one given by address), and its CPU time and memory read
//! from /proc.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// CPU and memory of the broker's processes (one, or every node of a cluster), from /proc,
/// and a single broker's own metrics page.
pub struct BrokerStats {
    pids: Vec<u32>,
    /// The broker's Prometheus endpoint, when the bench started one broker with it.
    metrics: Option<String>,
}

impl BrokerStats {
    pub fn new(pid: u32, metrics: Option<String>) -> BrokerStats {
        BrokerStats { pids: vec![pid], metrics }
    }

    /// The nodes of a cluster: CPU is their sum, memory the largest node's.
    pub fn cluster(pids: Vec<u32>) -> BrokerStats {
        BrokerStats { pids, metrics: None }
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

    /// User + system CPU seconds used so far, by every process.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        self.pids.iter().map(|p| cpu_seconds(*p)).sum()
    }

    /// The largest value of a /proc status field (KiB) over the processes.
    fn status_kib(&self, key: &str) -> anyhow::Result<f64> {
        let mut max = 0f64;
        for p in &self.pids {
            max = max.max(status_kib(*p, key)?);
        }
        Ok(max)
    }

    /// Resident memory (of the largest node).
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

/// User + system CPU seconds `pid` used so far.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
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

fn status_kib(pid: u32, key: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(key)).ok_or_else(|| anyhow::anyhow!("no {key} in status"))?;
    let kib: f64 = line.split_whitespace().nth(1).ok_or_else(|| anyhow::anyhow!("bad {key}"))?.parse()?;
    Ok(kib)
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
        let metrics = if extra.iter().any(|a| a.starts_with("--metrics-listen") || a.starts_with("--admin-listen")) {
            None
        } else {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            Some(format!("127.0.0.1:{port}"))
        };
        let mut child = Command::new(bin)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .args(metrics.iter().flat_map(|m| ["--admin-listen", m.as_str()]))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start broker {}: {e}", bin.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no broker stdout"))?;
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        // The admin API's address comes first when it is on; the client listener's line last.
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            if !line.starts_with("fjord admin API listening on ") {
                break;
            }
        }
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

fn free_addr() -> anyhow::Result<String> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string())
}

/// `n` broker processes forming a cluster on loopback, started the way the README starts one:
/// each a controller voter with its own data dir, on racks r1..rn. Killed when dropped.
pub struct Cluster {
    nodes: Vec<Child>,
    pub bootstrap: String,
    pub stats: BrokerStats,
    _data: Vec<tempfile::TempDir>,
    /// Each node's stderr, `node-<id>.log`.
    logs: tempfile::TempDir,
}

impl Cluster {
    /// Starts the cluster; a node that exits at start-up (most often because another process
    /// took a port between `free_addr` finding it free and the node binding it) makes it try
    /// again with other ports, up to three times.
    pub fn start(bin: &Path, parent: &Path, extra: &[String], n: usize) -> anyhow::Result<Cluster> {
        let mut attempt = 1;
        loop {
            match Self::start_once(bin, parent, extra, n) {
                Err(StartError::NodeExited(why)) if attempt < 3 => {
                    eprintln!("  {why}; starting the cluster again on other ports");
                    attempt += 1;
                }
                Err(StartError::NodeExited(why)) => anyhow::bail!(why),
                Err(StartError::Other(e)) => return Err(e),
                Ok(c) => return Ok(c),
            }
        }
    }

    fn start_once(bin: &Path, parent: &Path, extra: &[String], n: usize) -> Result<Cluster, StartError> {
        let listen: Vec<String> = (0..n).map(|_| free_addr()).collect::<anyhow::Result<_>>()?;
        let cluster: Vec<String> = (0..n).map(|_| free_addr()).collect::<anyhow::Result<_>>()?;
        let voters: Vec<String> = cluster.iter().enumerate().map(|(i, a)| format!("{}@{a}", i + 1)).collect();
        let voters = voters.join(",");
        let logs = tempfile::tempdir_in(parent).map_err(anyhow::Error::from)?;
        let mut started = Cluster {
            nodes: Vec::new(),
            bootstrap: listen.join(","),
            stats: BrokerStats::cluster(Vec::new()),
            _data: Vec::new(),
            logs,
        };
        for i in 0..n {
            let data = tempfile::tempdir_in(parent).map_err(anyhow::Error::from)?;
            // Each node's log, so that a node failing at start-up can say why.
            let log = std::fs::File::create(started.logs.path().join(format!("node-{}.log", i + 1)))
                .map_err(anyhow::Error::from)?;
            let child = Command::new(bin)
                .args(["--node-id", &(i + 1).to_string(), "--listen", &listen[i], "--advertised-listener", &listen[i]])
                .args(["--cluster-listen", &cluster[i], "--controller-quorum-voters", &voters])
                .args(["--broker-rack", &format!("r{}", i + 1), "--data-dir"])
                .arg(data.path())
                .args(extra)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| anyhow::anyhow!("cannot start broker {}: {e}", bin.display()))?;
            started.nodes.push(child);
            started._data.push(data);
        }
        started.stats = BrokerStats::cluster(started.nodes.iter().map(|c| c.id()).collect());
        started.wait_formed(n)?;
        Ok(started)
    }

    /// Until the metadata lists every node and a controller (topics can be created then).
    fn wait_formed(&mut self, n: usize) -> Result<(), StartError> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let client: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .map_err(anyhow::Error::from)?;
        loop {
            for (i, c) in self.nodes.iter_mut().enumerate() {
                if let Some(status) = c.try_wait().map_err(anyhow::Error::from)? {
                    let log = self.logs.path().join(format!("node-{}.log", i + 1));
                    let text = std::fs::read_to_string(log).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(5).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    return Err(StartError::NodeExited(format!(
                        "cluster node {} exited at start-up: {status}: {}",
                        i + 1,
                        tail.join(" | ")
                    )));
                }
            }
            if let Ok(md) = client.fetch_metadata(None, std::time::Duration::from_secs(2)) {
                if md.brokers().len() == n {
                    return Ok(());
                }
            }
            if std::time::Instant::now() >= deadline {
                return Err(anyhow::anyhow!("the {n}-node cluster did not form within 60 s").into());
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

/// Why a cluster did not start: a node exited (worth another try on other ports), or anything
/// else.
enum StartError {
    NodeExited(String),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(e: anyhow::Error) -> Self {
        StartError::Other(e)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

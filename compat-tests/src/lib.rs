//! Test harness: starts the real `fjord` binary on a free port with a temp
//! data dir, runs unmodified Kafka clients against it, and speaks raw Kafka
//! frames for the bad-input tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod checker;
pub mod cluster;
pub mod jepsen;
pub mod legacy;
pub mod proxy;
pub mod s3;
pub mod wire;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse, RequestHeader,
    ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// This package's directory. Cargo sets it at run time for tests and `cargo run`; the
/// compile-time value is only the fallback, because a build cache shared by two checkouts can
/// hold a binary compiled in the other one, whose path may be gone.
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub fn repo_root() -> PathBuf {
    manifest_dir().parent().expect("compat-tests sits in the workspace").to_path_buf()
}

/// The broker binary, built by the test command before the suite runs.
pub fn broker_bin() -> PathBuf {
    if let Ok(p) = std::env::var("FJORD_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| repo_root().join("target"));
    let bin = target.join("debug").join("fjord");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p fjord-broker` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// fjordctl, built beside the broker by the test command.
pub fn fjordctl_bin() -> PathBuf {
    let bin = broker_bin().with_file_name("fjordctl");
    assert!(bin.exists(), "{} is missing: run `cargo build -p fjord-cli` first (scripts/test.sh does)", bin.display());
    bin
}

/// A command running the broker binary without the FJORD_* variables of
/// the shell that runs the tests (a developer's `FJORD_FSYNC=never` would
/// otherwise apply to every test broker): each key's variable, from the
/// broker's config table, and the reserved ones such as FJORD_FAILPOINT.
/// A test sets the ones it means with `env`.
pub fn broker_command() -> Command {
    let mut cmd = Command::new(broker_bin());
    let keys = fjord_broker::config::KEYS.iter().map(|k| k.env);
    for name in keys.chain(fjord_broker::config::RESERVED_VARIABLES.iter().copied()) {
        cmd.env_remove(name);
    }
    cmd
}

/// Python of the project's venv (made by scripts/setup-test-deps.sh).
pub fn python() -> PathBuf {
    let p = repo_root().join(".venv/bin/python");
    assert!(p.exists(), "{} is missing: run scripts/setup-test-deps.sh", p.display());
    p
}

pub fn clients_dir() -> PathBuf {
    repo_root().join("compat-tests/clients")
}

/// A broker process with its own data dir.
pub struct BrokerProcess {
    child: Option<Child>,
    pub port: u16,
    pub data_dir: tempfile::TempDir,
    extra: Vec<String>,
    /// Environment of the broker process (failpoints).
    pub env: Vec<(String, String)>,
    log_path: PathBuf,
    /// Where a cluster node's node-to-node port listens (`fjord cluster listening on`).
    pub cluster_addr: Option<String>,
}

impl BrokerProcess {
    pub fn start(extra: &[&str]) -> BrokerProcess {
        Self::start_with_env(extra, &[])
    }

    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> BrokerProcess {
        Self::start_on(tempfile::tempdir().expect("temp dir"), extra, env)
    }

    /// A broker on a data dir prepared beforehand (as an older version left it).
    pub fn start_in(data_dir: tempfile::TempDir, extra: &[&str]) -> BrokerProcess {
        Self::start_on(data_dir, extra, &[])
    }

    fn start_on(data_dir: tempfile::TempDir, extra: &[&str], env: &[(&str, &str)]) -> BrokerProcess {
        let log_path = data_dir.path().with_extension("log");
        let mut b = BrokerProcess {
            child: None,
            port: free_port(),
            data_dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            log_path,
            cluster_addr: None,
        };
        b.spawn();
        b
    }

    /// A line of the broker's /proc status in kB (`VmRSS`, `RssFile`, …).
    pub fn status_kb(&self, field: &str) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with(&format!("{field}:")))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Waits for the broker to exit on its own (a failpoint that aborts).
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        let c = self.child.as_mut().expect("broker running");
        loop {
            if let Some(status) = c.try_wait().expect("wait for broker") {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "broker did not exit:\n{}", self.log_tail());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).expect("broker log");
        // Kafka's 3 s group.initial.rebalance.delay.ms would add 3 s to every
        // group a test forms; tests that are about the delay set their own.
        let delay_flag = "--group-initial-rebalance-delay-ms";
        let default_delay: &[&str] =
            if self.extra.iter().any(|a| a.starts_with(delay_flag)) { &[] } else { &[delay_flag, "100"] };
        let mut child = broker_command()
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args(default_delay)
            .args(&self.extra)
            // An error that ends the broker then fits in one line of its log, where the tail
            // shown on failure finds it (a backtrace would push it out).
            .env("RUST_BACKTRACE", "0")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start fjord");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        // A cluster node first says where its cluster port is, and the admin API where it
        // listens; the client listener's line comes last.
        loop {
            line.clear();
            reader.read_line(&mut line).expect("read broker stdout");
            if let Some(a) = line.trim().strip_prefix("fjord cluster listening on ") {
                self.cluster_addr = Some(a.to_string());
            } else if !line.starts_with("fjord admin API listening on ") {
                break;
            }
        }
        let addr = line.trim().strip_prefix("fjord listening on ").unwrap_or_else(|| {
            panic!("broker did not start: {line:?}\n{}", self.log_tail());
        });
        self.port = addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
        self.child = Some(child);
    }

    /// SIGSTOP: the process stops where it is, its sockets open and silent.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        let c = self.child.as_ref().expect("broker running");
        // SAFETY: plain kill(2) on a child we own and have not reaped.
        unsafe {
            libc::kill(c.id() as i32, sig);
        }
    }

    /// Empties the data dir of a stopped broker: its disk was lost.
    pub fn wipe(&mut self) {
        assert!(self.child.is_none(), "stop the broker before wiping its data");
        for entry in std::fs::read_dir(self.data_dir.path()).expect("data dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path).expect("remove");
            } else {
                std::fs::remove_file(&path).expect("remove");
            }
        }
    }

    /// SIGKILL: no flush, no clean shutdown.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("broker running");
        // SAFETY: plain kill(2) on a child we own.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        c.wait().expect("wait for broker")
    }

    /// Starts again on the same port and data dir.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the broker before restarting it");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // The port may linger for a moment after a kill.
            self.spawn_checked();
            if self.child.is_some() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(self.child.is_some(), "broker did not restart:\n{}", self.log_tail());
    }

    fn spawn_checked(&mut self) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.spawn()));
        if r.is_err() {
            self.child = None;
        }
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// The broker's whole log (removed when the process is dropped).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// How many lines of the broker's whole log (every run of it) contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log_path).unwrap_or_default().lines().filter(|l| l.contains(needle)).count()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// A command for an external client (kcat, python, node). `cargo test`
/// points LD_LIBRARY_PATH at the native build outputs of the whole
/// workspace, which include the librdkafka the bench builds for itself
/// (without zstd or TLS); a client must load its own libraries instead.
pub fn client(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(program);
    c.env_remove("LD_LIBRARY_PATH");
    c
}

/// Produces `key:value` lines with kcat (acks=all) to one partition of
/// `topic` under `codec`, with `extra` kcat arguments (headers and the like).
pub fn kcat_produce(bootstrap: &str, topic: &str, codec: &str, partition: i32, extra: &[&str], lines: &str) {
    let mut child = client("kcat")
        .args(["-b", bootstrap, "-t", topic, "-P", "-K", ":", "-z", codec, "-p", &partition.to_string()])
        .args(extra)
        .args(["-X", "acks=all"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat is installed (scripts/setup-test-deps.sh)");
    child.stdin.take().expect("stdin").write_all(lines.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("kcat");
    assert!(out.status.success(), "kcat produce failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs a client program to completion and fails the test, with its output,
/// if it does not succeed within `timeout`.
pub fn run_client(cmd: &mut Command, timeout: Duration) -> Output {
    let (status, out) = run_to_exit(cmd, timeout);
    let shown = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match status {
        Some(s) if s.success() => {
            println!("{shown}");
            out
        }
        Some(s) => panic!("{cmd:?} failed with {s}\n{shown}"),
        None => panic!("{cmd:?} timed out after {timeout:?}\n{shown}"),
    }
}

/// Runs a program until it exits, or kills it at `timeout` (status None),
/// and returns what it printed whatever its exit status.
pub fn run_to_exit(cmd: &mut Command, timeout: Duration) -> (Option<std::process::ExitStatus>, Output) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let status_now = child.wait().expect("wait");
    let stdout = t_out.join().unwrap_or_default();
    let stderr = t_err.join().unwrap_or_default();
    (status, Output { status: status_now, stdout, stderr })
}

/// Polls `cond` until it holds or the deadline passes.
pub fn wait_until(timeout: Duration, what: &str, cond: impl FnMut() -> bool) {
    assert!(poll_until(timeout, cond), "timed out waiting for {what}");
}

/// Polls `cond` until it holds (true) or `timeout` passes (false): `wait_until` for a caller
/// that does something else when the time is up.
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The answers to a Produce after which a client looks the partition's leader up again and
/// resends: LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER (the leadership moved) and
/// REQUEST_TIMED_OUT (the replicas did not commit it in time, as during an election).
pub const LEADER_MOVED: [i16; 3] = [5, 6, 7];

/// Sends `req`, an acks=all or acks=1 Produce to one partition, to the node `leader()` names,
/// and again to the node it names next after a `LEADER_MOVED` answer or a closed connection,
/// as Kafka's clients follow a partition's leader, for up to a minute; returns the first other
/// answer's (error code, base offset). A plain batch sent again may be stored twice (a leader
/// that lost its leadership after appending it answers NOT_LEADER_OR_FOLLOWER, and its successor
/// may still commit the entry); an [`IdempotentProducer`]'s is stored once.
pub fn produce_following(mut leader: impl FnMut() -> RawConn, req: &ProduceRequest) -> (i16, i64) {
    let mut answer = None;
    wait_until(Duration::from_secs(60), "a produce answered by the partition's leader", || {
        let Some(r) = leader().try_call::<_, ProduceResponse>(ApiKey::Produce, 9, req) else { return false };
        let p = &r.responses[0].partition_responses[0];
        answer = Some((p.error_code, p.base_offset));
        !LEADER_MOVED.contains(&p.error_code)
    });
    answer.expect("answered")
}

/// An idempotent producer of raw batches, as Kafka's clients write by default: a producer id
/// from InitProducerId and a sequence number per partition, so that a batch sent again after
/// the leadership moved (`produce_following`) is answered by the leader that holds it with its
/// first offsets instead of being stored twice.
pub struct IdempotentProducer {
    pub producer_id: i64,
    pub epoch: i16,
    /// The next sequence number of each (topic, partition).
    sequences: std::collections::BTreeMap<(String, i32), i32>,
}

impl IdempotentProducer {
    /// A producer id from the node `conn()` reaches (asked again while none can be given).
    pub fn new(mut conn: impl FnMut() -> RawConn) -> IdempotentProducer {
        let mut req = InitProducerIdRequest::default();
        req.transactional_id = None;
        let mut id = (-1, -1);
        wait_until(Duration::from_secs(60), "a producer id", || {
            let Some(r) = conn().try_call::<_, InitProducerIdResponse>(ApiKey::InitProducerId, 4, &req) else {
                return false;
            };
            // COORDINATOR_NOT_AVAILABLE: no producer id block could be had from the controller.
            assert!(matches!(r.error_code, 0 | 15), "InitProducerId: error {}", r.error_code);
            id = (r.producer_id.0, r.producer_epoch);
            r.error_code == 0
        });
        IdempotentProducer { producer_id: id.0, epoch: id.1, sequences: Default::default() }
    }

    /// The next batch of `values` to `partition` of `topic`, numbered after the previous one.
    /// It is expected to be stored: the sequence moves on whatever the answer. (A producer whose
    /// newest batch is stamped more than `producer.id.expiration.ms` ago is forgotten, so the
    /// timestamp is best the current time.)
    pub fn batch(&mut self, topic: &str, partition: i32, values: &[&[u8]], timestamp: i64) -> Bytes {
        let seq = self.sequences.entry((topic.to_string(), partition)).or_insert(0);
        let b = wire::idempotent_batch(values, timestamp, self.producer_id, self.epoch, *seq);
        *seq += values.len() as i32;
        b
    }

    /// The next batch, produced with acks=all to the leader `leader()` names
    /// (`produce_following`): the answer's (error code, base offset).
    pub fn send(
        &mut self,
        leader: impl FnMut() -> RawConn,
        topic: &str,
        partition: i32,
        values: &[&[u8]],
        timestamp: i64,
    ) -> (i16, i64) {
        let b = self.batch(topic, partition, values, timestamp);
        produce_following(leader, &wire::produce_request(topic, partition, b))
    }
}

/// A free local address (for `--metrics-listen`).
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A port nothing listens on now, below the kernel's ephemeral range (32768 and up on Linux).
/// A broker restarted on its old port then cannot find it taken by a client's outgoing
/// connection, which the kernel numbers from that range (as it does `:0` listeners).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    // Each test process starts at its own place in 10000..32000, so processes run one after
    // another do not reuse each other's ports at once.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = 10_000 + (u64::from(std::process::id()) * 7919 % 22_000) as u32;
    let _ = NEXT.compare_exchange(0, start, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..22_000 {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = (10_000 + (n - 10_000) % 22_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below 32000");
}

/// The Prometheus page, once the endpoint serves one that mentions `needle`
/// (it starts with the broker, not before it accepts clients, and a metric
/// appears once it is first recorded).
pub fn scrape_metrics(addr: &str, needle: &str) -> String {
    let scrape = || -> Option<String> {
        let mut s = TcpStream::connect(addr).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(body)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(b) = scrape().filter(|b| b.contains(needle)) {
            return b;
        }
        assert!(Instant::now() < deadline, "no metrics with {needle} served on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET path` on the admin API at `addr`: the status code and the body, or None while nothing
/// answers there.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// `http_get` of a JSON endpoint that must answer `status`.
pub fn http_json(addr: &str, path: &str, status: u16) -> serde_json::Value {
    let (got, body) = http_get(addr, path).unwrap_or_else(|| panic!("nothing answers GET {path} on {addr}"));
    assert_eq!(got, status, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
}

/// The value of an unlabelled metric on a Prometheus page.
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A bare Kafka connection for speaking frames directly.
pub struct RawConn {
    pub stream: TcpStream,
    next_id: i32,
}

impl RawConn {
    pub fn connect(addr: &str) -> RawConn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        RawConn { stream, next_id: 1 }
    }

    /// A second handle on the same connection, numbering requests from
    /// where this one is: one thread sends while another reads.
    pub fn try_clone(&self) -> std::io::Result<RawConn> {
        Ok(RawConn { stream: self.stream.try_clone()?, next_id: self.next_id })
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Encodes and sends a request; returns its correlation id.
    pub fn send<R: Encodable>(&mut self, key: ApiKey, version: i16, req: &R) -> i32 {
        let id = self.next_id;
        self.next_id += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = key as i16;
        header.request_api_version = version;
        header.correlation_id = id;
        header.client_id = Some(StrBytes::from_static_str("fjord-compat"));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header.encode(&mut buf, key.request_header_version(version)).expect("encode header");
        req.encode(&mut buf, version).expect("encode request");
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&buf).expect("send");
        id
    }

    /// Reads one response frame; None if the broker closed the connection.
    /// Panics if it did neither within the read timeout (a hang).
    pub fn recv_frame(&mut self) -> Option<Bytes> {
        let mut len = [0u8; 4];
        if !self.read_or_closed(&mut len) {
            return None;
        }
        let mut body = vec![0u8; i32::from_be_bytes(len).max(0) as usize];
        if !self.read_or_closed(&mut body) {
            return None;
        }
        Some(Bytes::from(body))
    }

    /// Fills `buf`; false if the broker closed the connection first (end of
    /// stream or a reset). A read timeout is not a close: the broker neither
    /// answered nor hung up, which fails the test.
    fn read_or_closed(&mut self, buf: &mut [u8]) -> bool {
        use std::io::ErrorKind;
        let mut filled = 0;
        while filled < buf.len() {
            match self.stream.read(&mut buf[filled..]) {
                Ok(0) => return false,
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    let timeout = self.stream.read_timeout().ok().flatten();
                    panic!("the broker neither answered nor closed the connection within {timeout:?}: a hang")
                }
                Err(_) => return false,
            }
        }
        true
    }

    pub fn recv<R: Decodable>(&mut self, key: ApiKey, version: i16, correlation_id: i32) -> R {
        let mut frame = self.recv_frame().expect("broker closed the connection");
        let header = ResponseHeader::decode(&mut frame, key.response_header_version(version)).expect("response header");
        assert_eq!(header.correlation_id, correlation_id, "responses must come back in request order");
        R::decode(&mut frame, version).expect("decode response")
    }

    /// `call`, or None when the broker closes the connection instead of answering (a cluster
    /// node that lost contact with the controller quorum does so to Metadata).
    pub fn try_call<Q: Encodable, R: Decodable>(&mut self, key: ApiKey, version: i16, req: &Q) -> Option<R> {
        let id = self.send(key, version, req);
        let mut frame = self.recv_frame()?;
        let header = ResponseHeader::decode(&mut frame, key.response_header_version(version)).expect("response header");
        assert_eq!(header.correlation_id, id, "responses must come back in request order");
        Some(R::decode(&mut frame, version).expect("decode response"))
    }

    pub fn call<Q: Encodable, R: Decodable>(&mut self, key: ApiKey, version: i16, req: &Q) -> R {
        let id = self.send(key, version, req);
        self.recv(key, version, id)
    }

    /// True once the peer has closed the connection (end of stream or a
    /// reset), false if it sent something instead. Panics if it did neither
    /// within the read timeout: a broker that hangs on bad input, rather
    /// than closing, fails the test.
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        !self.read_or_closed(&mut b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that hangs up counts as closed; one that holds the
    /// connection open without a word is a hang and fails the caller.
    #[test]
    fn is_closed_tells_a_close_from_a_hang() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut conn = RawConn::connect(&addr);
        let (peer, _) = listener.accept().unwrap();
        drop(peer);
        assert!(conn.is_closed());

        let mut conn = RawConn::connect(&addr);
        let (_peer, _) = listener.accept().unwrap();
        conn.stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let hang = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| conn.is_closed()));
        let msg = hang.expect_err("a silent open connection is not closed");
        let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("a hang"), "{msg}");
        let hang = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| conn.recv_frame()));
        assert!(hang.is_err(), "recv_frame must not call a hang a close either");
    }
}

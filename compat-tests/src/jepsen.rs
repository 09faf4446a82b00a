//! The workload of the fault tests: idempotent librdkafka producers write
//! uniquely numbered records (acks=all) while a tailing consumer reads them,
//! every send, outcome and read logged to a JSONL history; after the run a
//! fresh consumer reads every partition back and `checker` judges it all.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::checker::{check, Event, History, Verdict};

/// Nanoseconds since the first call in this process: one clock for every
/// thread, so invocations and acknowledgements compare.
pub fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Appends events to the history file, one JSON object per line.
#[derive(Clone)]
pub struct HistoryLog {
    out: Arc<Mutex<BufWriter<File>>>,
    path: PathBuf,
}

impl HistoryLog {
    pub fn create(path: &Path) -> std::io::Result<HistoryLog> {
        Ok(HistoryLog { out: Arc::new(Mutex::new(BufWriter::new(File::create(path)?))), path: path.to_path_buf() })
    }

    pub fn log(&self, e: &Event) {
        let line = serde_json::to_string(e).expect("events always serialize");
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        // A write error surfaces at `flush`; the history is then unusable.
        let _ = writeln!(out, "{line}");
    }

    pub fn flush(&self) -> std::io::Result<()> {
        self.out.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What the workload writes to and how hard.
#[derive(Clone, Debug)]
pub struct Workload {
    pub bootstrap: String,
    pub topic: String,
    pub partitions: i32,
    pub producers: u32,
    /// Records a producer may have unacknowledged at once.
    pub window: usize,
    /// librdkafka settings on top of the defaults below, for every client
    /// (timeouts suited to the faults of a test).
    pub overrides: Vec<(String, String)>,
}

impl Workload {
    pub fn new(bootstrap: &str, topic: &str, partitions: i32, producers: u32) -> Workload {
        Workload {
            bootstrap: bootstrap.to_string(),
            topic: topic.to_string(),
            partitions,
            producers,
            window: 200,
            overrides: Vec::new(),
        }
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            // A broker that comes back is found again within half a second,
            // not after librdkafka's default backoff of up to 10 s.
            .set("reconnect.backoff.ms", "20")
            .set("reconnect.backoff.max.ms", "500")
            .set("retry.backoff.ms", "20")
            .set("retry.backoff.max.ms", "500")
            .set("topic.metadata.refresh.interval.ms", "1000");
        c
    }

    fn with_overrides(&self, mut c: ClientConfig) -> ClientConfig {
        for (k, v) in &self.overrides {
            c.set(k, v);
        }
        c
    }

    fn producer_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            // Long enough to ride out a restart or an election: an unanswered
            // record stays in flight and is retried, not failed.
            .set("message.timeout.ms", "30000");
        self.with_overrides(c)
    }

    fn consumer_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        c.set("group.id", "fjord-jepsen")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_uncommitted")
            .set("check.crcs", "true")
            .set("fetch.wait.max.ms", "100");
        self.with_overrides(c)
    }
}

/// Creates `topic`; an existing topic is an error (its history is unknown).
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32, replication: i32) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().map_err(|e| e.to_string())?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = futures::executor::block_on(admin.create_topics([&new], &opts)).map_err(|e| e.to_string())?;
    for r in results {
        r.map_err(|(t, e)| format!("cannot create {t}: {e}"))?;
    }
    Ok(())
}

/// Waits until Metadata answers with a leader for every partition of `topic`.
pub fn wait_for_leaders(bootstrap: &str, topic: &str, partitions: i32, timeout: Duration) -> Result<(), String> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    loop {
        let last = match consumer.fetch_metadata(Some(topic), Duration::from_millis(500)) {
            Ok(md) => {
                let led = md
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .map(|t| t.partitions().iter().filter(|p| p.leader() >= 0 && p.error().is_none()).count());
                if led == Some(partitions as usize) {
                    return Ok(());
                }
                format!("{led:?} of {partitions} partitions have a leader")
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(format!("no leader for every partition of {topic} within {timeout:?}: {last}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    tail_reads: AtomicU64,
}

struct Delivery {
    producer: u32,
    history: HistoryLog,
    counters: Arc<Counters>,
    outstanding: AtomicUsize,
}

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    /// The record's seq.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        let (producer, seq, ns) = (self.producer, seq as u64, now_ns());
        let event = match result {
            Ok(m) => {
                self.counters.acked.fetch_add(1, Ordering::Relaxed);
                // A retry answered DUPLICATE_SEQUENCE_NUMBER carries no offset.
                Event::Ok { producer, seq, offset: Some(m.offset()).filter(|o| *o >= 0), ns }
            }
            Err((e, _)) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                Event::Fail { producer, seq, kind: e.to_string(), ns }
            }
        };
        self.history.log(&event);
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a run went, from the clients' side.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    /// Records still unanswered when the drain deadline passed.
    pub unknown: u64,
    /// Fatal client errors (an idempotent producer that lost its sequence
    /// state stops with one): each ended its producer early.
    pub fatal: Vec<String>,
}

/// How a producer thread ended: records left unanswered, and its fatal error.
type ProducerEnd = (u64, Option<String>);

/// A running workload: producers and a tailing consumer, each a thread.
pub struct Run {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    history: HistoryLog,
    producers: Vec<JoinHandle<Result<ProducerEnd, String>>>,
    tail: Option<JoinHandle<Result<(), String>>>,
    drain: Arc<Mutex<Duration>>,
}

impl Run {
    /// Starts the producers and the tailing consumer; every event goes to `history`.
    pub fn start(w: &Workload, history: &Path) -> Result<Run, String> {
        let history = HistoryLog::create(history).map_err(|e| format!("{}: {e}", history.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let drain = Arc::new(Mutex::new(Duration::from_secs(30)));
        let mut producers = Vec::new();
        for id in 0..w.producers {
            let (w, stop, counters, history, drain) =
                (w.clone(), stop.clone(), counters.clone(), history.clone(), drain.clone());
            producers.push(std::thread::spawn(move || produce(id, &w, &stop, counters, history, &drain)));
        }
        let tail = {
            let (w, stop, counters, history) = (w.clone(), stop.clone(), counters.clone(), history.clone());
            std::thread::spawn(move || tail(&w, &stop, &counters, &history))
        };
        Ok(Run { stop, counters, history, producers, tail: Some(tail), drain })
    }

    pub fn acked(&self) -> u64 {
        self.counters.acked.load(Ordering::Relaxed)
    }

    /// Records sent and not yet answered.
    pub fn in_flight(&self) -> u64 {
        let c = &self.counters;
        let answered = c.acked.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed);
        c.sent.load(Ordering::Relaxed).saturating_sub(answered)
    }

    pub fn tail_reads(&self) -> u64 {
        self.counters.tail_reads.load(Ordering::Relaxed)
    }

    /// Waits until `n` records in all have been acknowledged.
    pub fn wait_acked(&self, n: u64, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while self.acked() < n {
            if Instant::now() > deadline {
                return Err(format!("only {} of {n} records acknowledged within {timeout:?}", self.acked()));
            }
            if self.producers.iter().all(|p| p.is_finished()) {
                return Err(format!("every producer stopped with {} of {n} records acknowledged", self.acked()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Stops sending, waits up to `drain` for every outstanding record's
    /// delivery report (those still unanswered stay unknown), stops the
    /// tailing consumer and flushes the history.
    pub fn stop(mut self, drain: Duration) -> Result<RunReport, String> {
        *self.drain.lock().unwrap_or_else(|p| p.into_inner()) = drain;
        self.stop.store(true, Ordering::SeqCst);
        let mut report = RunReport::default();
        for p in self.producers.drain(..) {
            let (unknown, fatal) = p.join().map_err(|_| "a producer thread panicked".to_string())??;
            report.unknown += unknown;
            report.fatal.extend(fatal);
        }
        if let Some(t) = self.tail.take() {
            t.join().map_err(|_| "the tailing consumer panicked".to_string())??;
        }
        let c = &self.counters;
        report.sent = c.sent.load(Ordering::Relaxed);
        report.acked = c.acked.load(Ordering::Relaxed);
        report.failed = c.failed.load(Ordering::Relaxed);
        self.history.flush().map_err(|e| format!("{}: {e}", self.history.path().display()))?;
        Ok(report)
    }

    /// Notes a fault (a kill, a partition, a heal) in the history, at now.
    pub fn log_fault(&self, what: &str) {
        self.history.log(&Event::Fault { what: what.to_string(), ns: now_ns() });
    }

    pub fn history_path(&self) -> &Path {
        self.history.path()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // A test that fails midway must not leave clients running (nor
        // draining for long).
        *self.drain.lock().unwrap_or_else(|p| p.into_inner()) = Duration::ZERO;
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One producer: sends `"{id}:{seq}"` round-robin over the partitions with
/// at most `window` records unanswered, until stopped; then drains. Returns
/// how many records stayed unanswered and the fatal error, if any.
fn produce(
    id: u32,
    w: &Workload,
    stop: &AtomicBool,
    counters: Arc<Counters>,
    history: HistoryLog,
    drain: &Mutex<Duration>,
) -> Result<ProducerEnd, String> {
    let ctx = Delivery { producer: id, history: history.clone(), counters: counters.clone(), outstanding: 0.into() };
    let producer: BaseProducer<Delivery> =
        w.producer_config().create_with_context(ctx).map_err(|e| format!("producer {id}: {e}"))?;
    let mut seq: u64 = 0;
    let mut fatal = None;
    while !stop.load(Ordering::Relaxed) {
        if let Some((code, reason)) = producer.client().fatal_error() {
            fatal = Some(format!("producer {id}: {code:?}: {reason}"));
            break;
        }
        if producer.context().outstanding.load(Ordering::Relaxed) >= w.window {
            // Wait for delivery reports to open the window.
            producer.poll(Duration::from_millis(20));
            continue;
        }
        let partition = ((seq + u64::from(id)) % w.partitions as u64) as i32;
        let value = format!("{id}:{seq}");
        let ns = now_ns();
        let record = BaseRecord::<(), [u8], usize>::with_opaque_to(&w.topic, seq as usize)
            .partition(partition)
            .payload(value.as_bytes());
        // Counted before the send: the report may come from any later poll.
        producer.context().outstanding.fetch_add(1, Ordering::Relaxed);
        match producer.send(record) {
            Ok(()) => {
                counters.sent.fetch_add(1, Ordering::Relaxed);
                history.log(&Event::Invoke { producer: id, seq, partition, ns });
                seq += 1;
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                producer.context().outstanding.fetch_sub(1, Ordering::Relaxed);
                producer.poll(Duration::from_millis(20));
            }
            Err((e, _)) => {
                // Refused before it left the client: definitely not written,
                // but logged like any failure (the checker allows either).
                producer.context().outstanding.fetch_sub(1, Ordering::Relaxed);
                counters.sent.fetch_add(1, Ordering::Relaxed);
                counters.failed.fetch_add(1, Ordering::Relaxed);
                history.log(&Event::Invoke { producer: id, seq, partition, ns });
                history.log(&Event::Fail { producer: id, seq, kind: e.to_string(), ns: now_ns() });
                seq += 1;
            }
        }
        producer.poll(Duration::ZERO);
    }
    let deadline = Instant::now() + *drain.lock().unwrap_or_else(|p| p.into_inner());
    while producer.context().outstanding.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        producer.poll(Duration::from_millis(20));
    }
    // Dropping the producer purges what is still unanswered with error
    // reports; the checker treats those like unknown outcomes.
    let unknown = producer.context().outstanding.load(Ordering::Relaxed) as u64;
    Ok((unknown, fatal))
}

/// The tailing consumer: reads every partition from the start as records
/// arrive and logs each (partition, offset, value) it is given.
fn tail(w: &Workload, stop: &AtomicBool, counters: &Counters, history: &HistoryLog) -> Result<(), String> {
    let consumer: BaseConsumer = w.consumer_config().create().map_err(|e| format!("tailing consumer: {e}"))?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..w.partitions {
        tpl.add_partition_offset(&w.topic, p, Offset::Beginning).map_err(|e| e.to_string())?;
    }
    consumer.assign(&tpl).map_err(|e| format!("tailing consumer: {e}"))?;
    while !stop.load(Ordering::Relaxed) {
        // Errors (the broker going away) are the point of the test; the
        // client reconnects by itself.
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
            let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            history.log(&Event::Read { partition: m.partition(), offset: m.offset(), value, ns: now_ns() });
            counters.tail_reads.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Reads every partition from its start up to its high watermark (as
/// ListOffsets says before the read) with a fresh consumer, logs each record
/// as a `Final` event, and checks the high watermarks did not move meanwhile
/// (a log still changing cannot be judged). An election moves a partition's
/// high watermark with an entry of its own (a control batch) even with every
/// producer stopped, so a read-back during which one moved is done again, from
/// the start, up to four more times; only the read that saw the logs still is
/// logged.
pub fn read_back(w: &Workload, history: &Path, timeout: Duration) -> Result<u64, String> {
    const ATTEMPTS: usize = 5;
    let mut moved = Vec::new();
    for _ in 0..ATTEMPTS {
        match read_back_once(w, timeout)? {
            ReadBack::Still { events, records } => {
                let log = HistoryLog {
                    out: Arc::new(Mutex::new(BufWriter::new(open_append(history)?))),
                    path: history.into(),
                };
                for e in &events {
                    log.log(e);
                }
                log.flush().map_err(|e| format!("{}: {e}", history.display()))?;
                return Ok(records);
            }
            ReadBack::Moved { highs, after } => {
                println!("high watermarks moved during the read-back: {highs:?} then {after:?}; reading again");
                moved.push((highs, after));
            }
        }
    }
    Err(format!("high watermarks moved during each of {ATTEMPTS} read-backs: {moved:?}"))
}

/// What one read-back found.
enum ReadBack {
    /// The high watermarks stayed where they were: the `Final` events, and how many records.
    Still { events: Vec<Event>, records: u64 },
    /// The high watermarks before and after the read, which moved.
    Moved { highs: Vec<i64>, after: Vec<i64> },
}

/// One read-back of every partition (see `read_back`).
fn read_back_once(w: &Workload, timeout: Duration) -> Result<ReadBack, String> {
    let mut cfg = w.consumer_config();
    cfg.set("enable.partition.eof", "true").set("group.id", "fjord-jepsen-read-back");
    let consumer: BaseConsumer = cfg.create().map_err(|e| format!("read-back consumer: {e}"))?;
    let deadline = Instant::now() + timeout;
    let watermarks = |c: &BaseConsumer| -> Result<Vec<i64>, String> {
        (0..w.partitions)
            .map(|p| {
                c.fetch_watermarks(&w.topic, p, deadline.saturating_duration_since(Instant::now()))
                    .map(|(_, high)| high)
                    .map_err(|e| format!("ListOffsets of {}-{p}: {e}", w.topic))
            })
            .collect()
    };
    let highs = watermarks(&consumer)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..w.partitions {
        tpl.add_partition_offset(&w.topic, p, Offset::Beginning).map_err(|e| e.to_string())?;
    }
    consumer.assign(&tpl).map_err(|e| format!("read-back consumer: {e}"))?;
    // A partition is done once the consumer reports its end (its fetch
    // position reached the broker's high watermark, which is at least the
    // one listed above) with no record since. `next` is the offset after
    // the last record read, to check no record lies past the watermark.
    let mut next = vec![0i64; w.partitions as usize];
    let mut at_end = vec![false; w.partitions as usize];
    let mut events = Vec::new();
    let mut records = 0;
    while !at_end.iter().all(|e| *e) {
        if Instant::now() > deadline {
            return Err(format!("read-back incomplete after {timeout:?}: at {next:?} of {highs:?}"));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let p = m.partition() as usize;
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                events.push(Event::Final { partition: m.partition(), offset: m.offset(), value });
                records += 1;
                if let (Some(n), Some(e)) = (next.get_mut(p), at_end.get_mut(p)) {
                    *n = (*n).max(m.offset() + 1);
                    *e = false;
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                if let Some(e) = at_end.get_mut(p as usize) {
                    *e = true;
                }
            }
            Some(Err(_)) | None => {}
        }
    }
    let after = watermarks(&consumer)?;
    if after != highs {
        return Ok(ReadBack::Moved { highs, after });
    }
    if let Some((p, n)) = next.iter().enumerate().find(|(p, n)| **n > highs[*p]) {
        return Err(format!("partition {p} served offsets up to {n}, past its high watermark {}", highs[p]));
    }
    Ok(ReadBack::Still { events, records })
}

fn open_append(path: &Path) -> Result<File, String> {
    std::fs::OpenOptions::new().append(true).open(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Judges the history file (events of the run and the read-back).
pub fn judge(history: &Path) -> Result<Verdict, String> {
    Ok(check(&History::load(history)?))
}

/// What a fault test's run came to once it was stopped, read back and judged.
pub struct Judged {
    pub report: RunReport,
    pub verdict: Verdict,
    /// Acknowledged records sent before one of the faults and answered after it: proof that
    /// the clients' retries crossed the faults rather than the faults falling in quiet moments.
    pub crossed: usize,
}

/// Stops `run`, reads every partition back into the history in `work` (`history.jsonl`) and
/// judges it. A run the checker rejects, or whose producers died, fails the test here, with the
/// history kept for a post-mortem. `faults_ns` are the moments (`now_ns`) the faults began.
pub fn stop_and_judge(run: Run, w: &Workload, work: tempfile::TempDir, faults_ns: &[u64], started: Instant) -> Judged {
    let drain = Duration::from_secs(30);
    let report = run.stop(drain).expect("stop the workload");
    println!("clients: {report:?}");
    let history = work.path().join("history.jsonl");
    let read = read_back(w, &history, drain).expect("read back");
    let h = History::load(&history).expect("a well-formed history");
    let verdict = check(&h);
    println!("{read} records read back in {:?}\n{verdict}", started.elapsed());
    if !verdict.is_valid() || !report.fatal.is_empty() {
        let kept = work.keep();
        panic!(
            "the checker failed (history kept at {}):\nfatal client errors: {:?}\n{verdict}",
            kept.join("history.jsonl").display(),
            report.fatal
        );
    }
    let crossed = h
        .ops
        .iter()
        .filter(|op| matches!(op.outcome, crate::checker::Outcome::Ok { .. }))
        .filter(|op| faults_ns.iter().any(|f| op.invoke_ns < *f && op.complete_ns.is_some_and(|c| c > *f)))
        .count();
    println!("{crossed} records were sent before a fault and acknowledged after it");
    Judged { report, verdict, crossed }
}

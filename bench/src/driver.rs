//! Runs one workload against a broker with librdkafka producers and
//! consumers: paced or unpaced sends, publish latency from each delivery
//! report, end-to-end latency from the send time carried in the first eight
//! bytes of every record, and a once-a-second timeline with live progress.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use serde::Serialize;

use crate::proc::BrokerStats;
use crate::workload::Workload;

/// All timestamps are nanoseconds since this instant (one process, so one clock).
fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 10 minutes, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub count: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |v: u64| v as f64 / 1000.0;
        Percentiles {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            count: h.len(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RawProduce {
    pub msgs_s: f64,
    pub mb_s: f64,
    /// Request sent → acknowledged.
    pub request_latency: Percentiles,
    pub broker_cpu_cores: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub second: f64,
    pub produced_msgs_s: f64,
    pub consumed_msgs_s: f64,
    pub broker_rss_mib: f64,
    pub broker_anon_rss_mib: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RunResult {
    pub workload: String,
    pub slug: String,
    /// Nodes of the cluster it ran on (1: a single broker), and the replicas of its topics.
    pub nodes: u32,
    pub replication_factor: u32,
    /// Which round of `--rounds` it was (1-based; None with one round): ratios are taken
    /// within a round.
    pub round: Option<u32>,
    pub partitions: u32,
    pub message_size: usize,
    pub acks: String,
    pub target_rate: f64,
    pub duration_s: f64,
    pub produced_msgs: u64,
    pub produce_msgs_s: f64,
    pub produce_mb_s: f64,
    pub consumed_msgs: u64,
    pub consume_msgs_s: f64,
    pub consume_mb_s: f64,
    pub publish_latency: Percentiles,
    pub end_to_end_latency: Percentiles,
    pub send_errors: u64,
    pub broker_cpu_cores: Option<f64>,
    pub broker_peak_rss_mib: Option<f64>,
    /// Largest anonymous RSS seen in the once-a-second samples.
    pub broker_peak_anon_rss_mib: Option<f64>,
    /// Backlog workloads: the same backlog read again by a bare Fetch client
    /// that decodes no records (`raw`), and the broker's CPU meanwhile.
    pub raw_fetch_mb_s: Option<f64>,
    /// The broker's Produce residence (read → response written) over about
    /// the last minute of the run, from its metrics.
    pub broker_produce_residence: Option<Percentiles>,
    pub raw_fetch_broker_cpu_cores: Option<f64>,
    /// Max-rate produce workloads: the same ingest by a bare Produce client
    /// sending pre-encoded batches (`raw`).
    pub raw_produce: Option<RawProduce>,
    pub timeline: Vec<Sample>,
}

impl RunResult {
    /// The workload's name, with the cluster it ran on when that was more than one node.
    pub fn label(&self) -> String {
        let mut label = self.workload.clone();
        if self.nodes > 1 {
            label += &format!(" · {} nodes, RF {}", self.nodes, self.replication_factor);
        }
        if let Some(round) = self.round {
            label += &format!(" · round {round}");
        }
        label
    }
}

#[derive(Default)]
struct Counters {
    acked: AtomicU64,
    consumed: AtomicU64,
    consumed_bytes: AtomicU64,
    errors: AtomicU64,
}

struct DeliveryCtx {
    counters: Arc<Counters>,
    latency: Mutex<Histogram<u64>>,
}

impl ClientContext for DeliveryCtx {}

impl ProducerContext for DeliveryCtx {
    /// The send time (ns); a usize needs no allocation per record.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_ns: usize) {
        match result {
            Ok(_) => {
                self.counters.acked.fetch_add(1, Ordering::Relaxed);
                let us = (now_ns().saturating_sub(sent_ns as u64) / 1000).max(1);
                if let Ok(mut h) = self.latency.lock() {
                    let _ = h.record(us);
                }
            }
            Err(_) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

pub struct Target<'a> {
    pub bootstrap: &'a str,
    pub broker: Option<&'a BrokerStats>,
    pub quiet: bool,
    /// Nodes of the cluster under test (1: a single broker).
    pub nodes: u32,
    /// Replicas of every topic the run creates.
    pub replication: u32,
}

impl Target<'_> {
    /// The same target without progress output or broker figures (a probe run).
    fn quiet(&self) -> Target<'_> {
        Target { broker: None, quiet: true, ..*self }
    }
}

fn topic_names(w: &Workload, run: usize) -> Vec<String> {
    (0..w.topics).map(|t| format!("bench-{}-{run}-{t}", w.slug())).collect()
}

fn create_topics(target: &Target<'_>, names: &[String], w: &Workload) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", target.bootstrap).create()?;
    let replicas = target.replication as i32;
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| {
            w.topic_config.iter().fold(
                NewTopic::new(n, w.partitions_per_topic as i32, TopicReplication::Fixed(replicas)),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in futures::executor::block_on(admin.create_topics(&topics, &opts))? {
        r.map_err(|(t, e)| anyhow::anyhow!("cannot create topic {t}: {e}"))?;
    }
    Ok(())
}

fn producer_config(bootstrap: &str, w: &Workload) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("acks", &w.acks)
        .set("linger.ms", w.linger_ms.to_string())
        .set("compression.type", &w.compression)
        // Deep enough to keep the broker busy; shallow enough that a
        // max-rate run's latency is not mostly time spent queued in the client.
        .set("queue.buffering.max.messages", "200000")
        .set("queue.buffering.max.kbytes", "2097151")
        .set("batch.size", "1000000")
        .set("message.timeout.ms", "120000");
    c
}

/// One producer thread: sends until `stop`, paced to `rate` msgs/s (0 = as
/// fast as the client takes them), to partitions round-robin.
fn produce(
    bootstrap: &str,
    w: &Workload,
    topics: &[String],
    rate: f64,
    stop: &AtomicBool,
    limit: u64,
    counters: Arc<Counters>,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let ctx = DeliveryCtx { counters, latency: Mutex::new(histogram()) };
    // The threaded producer serves delivery reports on its own thread as
    // they arrive, so publish latency is not inflated by how often this
    // loop would get around to polling.
    let producer: ThreadedProducer<DeliveryCtx> = producer_config(bootstrap, w).create_with_context(ctx)?;
    let mut payload = vec![0u8; w.message_size];
    for (i, b) in payload.iter_mut().enumerate().skip(8) {
        *b = (i % 251) as u8;
    }
    let interval = if rate > 0.0 { Duration::from_secs_f64(1.0 / rate) } else { Duration::ZERO };
    let start = Instant::now();
    let mut sent: u64 = 0;
    let partitions = w.partitions_per_topic as u64;
    while !stop.load(Ordering::Relaxed) && sent < limit {
        if rate > 0.0 {
            let due = start + interval.mul_f64(sent as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep((due - now).min(Duration::from_millis(5)));
                continue;
            }
        }
        let topic = &topics[(sent % topics.len() as u64) as usize];
        let partition = ((sent / topics.len() as u64) % partitions) as i32;
        let t = now_ns();
        payload[..8].copy_from_slice(&t.to_be_bytes());
        let record =
            BaseRecord::<(), [u8], usize>::with_opaque_to(topic, t as usize).payload(&payload[..]).partition(partition);
        match producer.send(record) {
            Ok(()) => sent += 1,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                std::thread::sleep(Duration::from_micros(200));
            }
            Err((e, _)) => anyhow::bail!("send failed: {e}"),
        }
    }
    producer.flush(Duration::from_secs(120))?;
    let latency = producer.context().latency.lock().map(|h| h.clone()).unwrap_or_else(|_| histogram());
    Ok((sent, latency))
}

/// One consumer thread: reads until `stop` or until `until` records arrived.
fn consume(
    bootstrap: &str,
    group: &str,
    topics: &[String],
    stop: &AtomicBool,
    until: u64,
    counters: Arc<Counters>,
    ready: &AtomicU64,
) -> anyhow::Result<Histogram<u64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()?;
    let refs: Vec<&str> = topics.iter().map(|s| s.as_str()).collect();
    consumer.subscribe(&refs)?;
    let mut e2e = histogram();
    let mut announced = false;
    while !stop.load(Ordering::Relaxed) && counters.consumed.load(Ordering::Relaxed) < until {
        let Some(msg) = consumer.poll(Duration::from_millis(100)) else {
            if !announced && !consumer.assignment()?.elements().is_empty() {
                announced = true;
                ready.fetch_add(1, Ordering::SeqCst);
            }
            continue;
        };
        let msg = msg?;
        if !announced {
            announced = true;
            ready.fetch_add(1, Ordering::SeqCst);
        }
        let payload = msg.payload().unwrap_or_default();
        if payload.len() >= 8 {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&payload[..8]);
            let us = (now_ns().saturating_sub(u64::from_be_bytes(ts)) / 1000).max(1);
            let _ = e2e.record(us);
        }
        counters.consumed.fetch_add(1, Ordering::Relaxed);
        counters.consumed_bytes.fetch_add(payload.len() as u64, Ordering::Relaxed);
    }
    Ok(e2e)
}

/// Produces `n` records as fast as possible (a backlog, or a max-rate probe).
fn fill(bootstrap: &str, w: &Workload, topics: &[String], n: u64) -> anyhow::Result<f64> {
    let counters = Arc::new(Counters::default());
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let (sent, _) = produce(bootstrap, w, topics, 0.0, &stop, n, counters.clone())?;
    let errors = counters.errors.load(Ordering::Relaxed);
    anyhow::ensure!(errors == 0, "{errors} of {sent} backlog records failed");
    Ok(sent as f64 / start.elapsed().as_secs_f64())
}

/// The workload's ingest again, by the bare Produce client, on a fresh
/// topic, for a third of the run (2 to 20 s).
fn raw_produce(target: &Target<'_>, w: &Workload, run_no: usize, duration: Duration) -> anyhow::Result<RawProduce> {
    let topics = topic_names(w, run_no + 2000);
    create_topics(target, &topics, w)?;
    let run_for = (duration / 3).clamp(Duration::from_secs(2), Duration::from_secs(20));
    let acks = if w.acks == "all" || w.acks == "-1" { -1 } else { 1 };
    let cpu_before = target.broker.map(|b| b.cpu_seconds()).transpose()?;
    // One request of about 1 MB: librdkafka's batch.size here is 1 MB too.
    let r = crate::raw::produce_for(
        target.bootstrap,
        &topics[0],
        w.partitions_per_topic,
        w.message_size,
        acks,
        1 << 20,
        run_for,
    )?;
    let broker_cpu_cores = match (target.broker, cpu_before) {
        (Some(b), Some(before)) => Some((b.cpu_seconds()? - before) / r.secs),
        _ => None,
    };
    let out = RawProduce {
        msgs_s: r.records as f64 / r.secs,
        mb_s: r.bytes as f64 / r.secs / 1e6,
        request_latency: Percentiles::of(&r.latency),
        broker_cpu_cores,
    };
    eprintln!("  raw produce (pre-encoded batches): {:.0} msgs/s, {:.0} MB/s", out.msgs_s, out.mb_s);
    Ok(out)
}

/// Runs `w` for `duration` (the workload's own unless overridden).
pub fn run(target: &Target<'_>, w: &Workload, run_no: usize, duration: Duration) -> anyhow::Result<RunResult> {
    let topics = topic_names(w, run_no);
    create_topics(target, &topics, w)?;
    let producers = (w.producers_per_topic * w.topics) as usize;
    let consumers = (w.consumer_per_subscription * w.subscriptions_per_topic) as usize;

    let mut rate = w.producer_rate;
    if let Some(fraction) = w.producer_rate_of_max {
        // The maximum is that of the whole workload, consumers included (on
        // its own topics), so the fraction is of what the system sustains.
        let mut probe = w.clone();
        probe.producer_rate_of_max = None;
        probe.producer_rate = 0.0;
        let probe_for = Duration::from_secs_f64((duration.as_secs_f64() / 4.0).clamp(1.0, 15.0));
        let max = run(&target.quiet(), &probe, run_no + 1000, probe_for)?.produce_msgs_s;
        rate = max * fraction;
        if !target.quiet {
            eprintln!("  max-rate probe (with consumers): {max:.0} msgs/s; running at {rate:.0} msgs/s");
        }
    }
    if w.consumer_backlog_messages > 0 {
        let r = fill(target.bootstrap, w, &topics, w.consumer_backlog_messages)?;
        if !target.quiet {
            eprintln!("  backlog of {} records written at {r:.0} msgs/s", w.consumer_backlog_messages);
        }
    }

    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicU64::new(0));
    let cpu_before = target.broker.map(|b| b.cpu_seconds()).transpose()?;
    let until = if w.consumer_backlog_messages > 0 { w.consumer_backlog_messages } else { u64::MAX };
    let group = format!("bench-{}-{run_no}", w.slug());

    std::thread::scope(|s| -> anyhow::Result<RunResult> {
        let consumer_threads: Vec<_> = (0..consumers)
            .map(|_| {
                let (c, st, rd, tp, g) = (counters.clone(), stop.clone(), ready.clone(), &topics, &group);
                s.spawn(move || consume(target.bootstrap, g, tp, &st, until, c, &rd))
            })
            .collect();
        // Producers start once every consumer has its partitions, so the
        // end-to-end figures are not inflated by the first rebalance.
        let wait_from = Instant::now();
        while ready.load(Ordering::SeqCst) < consumers as u64 && wait_from.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let start = Instant::now();
        let per_producer_rate = if rate > 0.0 { rate / producers.max(1) as f64 } else { 0.0 };
        let producer_threads: Vec<_> = (0..producers)
            .map(|_| {
                let (c, st, tp) = (counters.clone(), stop.clone(), &topics);
                s.spawn(move || produce(target.bootstrap, w, tp, per_producer_rate, &st, u64::MAX, c))
            })
            .collect();

        let mut timeline = Vec::new();
        let (mut last_acked, mut last_consumed, mut last_t) = (0u64, 0u64, Instant::now());
        loop {
            std::thread::sleep(Duration::from_millis(1000).saturating_sub(last_t.elapsed()));
            let now = Instant::now();
            let dt = now.duration_since(last_t).as_secs_f64();
            let acked = counters.acked.load(Ordering::Relaxed);
            let consumed = counters.consumed.load(Ordering::Relaxed);
            let rss = target.broker.and_then(|b| b.rss_mib().ok()).unwrap_or(0.0);
            let anon = target.broker.and_then(|b| b.anon_rss_mib().ok()).unwrap_or(0.0);
            let sample = Sample {
                second: start.elapsed().as_secs_f64(),
                produced_msgs_s: (acked - last_acked) as f64 / dt,
                consumed_msgs_s: (consumed - last_consumed) as f64 / dt,
                broker_rss_mib: rss,
                broker_anon_rss_mib: anon,
            };
            if !target.quiet {
                eprintln!(
                    "  [{:>5.1}s] produced {:>9.0} msg/s {:>7.1} MB/s | consumed {:>9.0} msg/s | broker RSS {:>6.1} MiB ({:.1} anon)",
                    sample.second,
                    sample.produced_msgs_s,
                    sample.produced_msgs_s * w.message_size as f64 / 1e6,
                    sample.consumed_msgs_s,
                    rss,
                    anon
                );
            }
            timeline.push(sample);
            (last_acked, last_consumed, last_t) = (acked, consumed, now);
            let backlog_done = w.consumer_backlog_messages > 0 && consumed >= w.consumer_backlog_messages;
            if start.elapsed() >= duration || backlog_done {
                break;
            }
        }
        stop.store(true, Ordering::SeqCst);
        let mut produced = 0;
        let mut publish = histogram();
        for t in producer_threads {
            let (n, h) = t.join().map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
            produced += n;
            publish.add(&h)?;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let mut e2e = histogram();
        for t in consumer_threads {
            e2e.add(&t.join().map_err(|_| anyhow::anyhow!("consumer thread panicked"))??)?;
        }
        let consumed = counters.consumed.load(Ordering::Relaxed);
        let consumed_bytes = counters.consumed_bytes.load(Ordering::Relaxed);
        let cpu = match (target.broker, cpu_before) {
            (Some(b), Some(before)) => Some((b.cpu_seconds()? - before) / elapsed),
            _ => None,
        };
        let broker_produce_residence = target.broker.and_then(|b| b.produce_residence()).filter(|p| p.count > 0);
        let (mut raw_fetch_mb_s, mut raw_fetch_broker_cpu_cores) = (None, None);
        // The bare clients send to the one broker they are given, which leads every partition
        // only on a single node.
        if w.consumer_backlog_messages > 0 && target.nodes == 1 {
            let cpu_before = target.broker.map(|b| b.cpu_seconds()).transpose()?;
            let (mut bytes, mut secs) = (0u64, 0f64);
            for t in &topics {
                let (b, s) = crate::raw::read_topic(target.bootstrap, t, w.partitions_per_topic)?;
                bytes += b;
                secs += s;
            }
            raw_fetch_mb_s = Some(bytes as f64 / secs / 1e6);
            if let (Some(b), Some(before)) = (target.broker, cpu_before) {
                raw_fetch_broker_cpu_cores = Some((b.cpu_seconds()? - before) / secs);
            }
            if !target.quiet {
                eprintln!("  raw fetch (no record decoding): {:.0} MB/s", bytes as f64 / secs / 1e6);
            }
        }
        let raw_produce = if w.producer_rate == 0.0
            && w.producer_rate_of_max.is_none()
            && w.consumer_backlog_messages == 0
            && w.acks != "0"
            && !target.quiet
            && target.nodes == 1
        {
            Some(raw_produce(target, w, run_no, duration)?)
        } else {
            None
        };
        Ok(RunResult {
            workload: w.name.clone(),
            slug: if target.nodes > 1 { format!("{}-{}-nodes", w.slug(), target.nodes) } else { w.slug() },
            nodes: target.nodes,
            replication_factor: target.replication,
            round: None,
            partitions: w.partitions_per_topic * w.topics,
            message_size: w.message_size,
            acks: w.acks.clone(),
            target_rate: rate,
            duration_s: elapsed,
            produced_msgs: produced,
            produce_msgs_s: produced as f64 / elapsed,
            produce_mb_s: produced as f64 * w.message_size as f64 / elapsed / 1e6,
            consumed_msgs: consumed,
            consume_msgs_s: consumed as f64 / elapsed,
            consume_mb_s: consumed_bytes as f64 / elapsed / 1e6,
            publish_latency: Percentiles::of(&publish),
            end_to_end_latency: if w.consumer_backlog_messages > 0 {
                Percentiles::default()
            } else {
                Percentiles::of(&e2e)
            },
            send_errors: counters.errors.load(Ordering::Relaxed),
            broker_cpu_cores: cpu,
            broker_peak_rss_mib: target.broker.and_then(|b| b.peak_rss_mib().ok()),
            broker_peak_anon_rss_mib: target
                .broker
                .map(|_| timeline.iter().map(|s| s.broker_anon_rss_mib).fold(0.0, f64::max)),
            raw_fetch_mb_s,
            raw_fetch_broker_cpu_cores,
            broker_produce_residence,
            raw_produce,
            timeline,
        })
    })
}

//! One transform on one input partition, beside the partition's leader: reads committed input,
//! runs the module, and writes the outputs together with the new input position in one
//! transaction, so every input record's outputs are written once (ABI.md, "Exactly once").

use std::sync::Arc;
use std::time::Duration;

use fjord_storage::records::Record;
use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::client::{Client, ClientError, ProducerRecord, TxnProducer};
use crate::engine::{self, LogLine, Lookup, OutRecord, Runtime};
use crate::spec::TransformSpec;

/// How long a transaction may stay open before the coordinator aborts it.
const TXN_TIMEOUT_MS: i32 = 60_000;
/// How long a fetch waits for new input.
const FETCH_WAIT_MS: i32 = 500;

/// What the runner needs of the broker it runs in.
pub trait Host: Send + Sync + 'static {
    /// Whether this node still leads `topic`'s `partition`.
    fn leads(&self, topic: &str, partition: i32) -> bool;
    /// Writes a transform's log lines to the logs topic (best effort).
    fn write_logs(&self, name: &str, partition: Option<i32>, lines: Vec<LogLine>) -> BoxFuture<'static, ()>;
    /// Writes the failed batch's log lines, then pauses the transform everywhere with `error`,
    /// unless its spec moved on past `version`: once it shows as paused, its logs say why.
    fn pause(
        &self,
        name: &str,
        partition: i32,
        version: u64,
        error: String,
        logs: Vec<LogLine>,
    ) -> BoxFuture<'static, ()>;
}

/// How a runner ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Asked to stop (a new spec, a pause, a delete, shutdown).
    Stopped,
    /// This node no longer leads the input partition.
    NotLeader,
    /// Another runner took the transactional id over.
    Fenced,
    /// The module failed; the transform was paused.
    Failed(String),
}

pub struct Runner {
    pub spec: Arc<TransformSpec>,
    pub module: wasmtime::Module,
    pub partition: i32,
    pub runtime: Runtime,
    pub client: Arc<Client>,
    pub lookups: Arc<dyn Lookup>,
    pub host: Arc<dyn Host>,
    pub stop: watch::Receiver<bool>,
}

impl Runner {
    /// Runs until stopped, fenced, no longer the leader, or the module fails. Transient errors
    /// (a moved coordinator or output leader, a timeout) restart from the committed position.
    pub async fn run(mut self) -> Ended {
        let ended = self.run_sessions().await;
        // The partition's lag is reported by whichever node runs it next; this one's would stay.
        self.report_lag(0, 0);
        ended
    }

    async fn run_sessions(&mut self) -> Ended {
        let mut backoff = Duration::from_millis(100);
        loop {
            if *self.stop.borrow() {
                return Ended::Stopped;
            }
            if !self.host.leads(&self.spec.input, self.partition) {
                return Ended::NotLeader;
            }
            match self.session().await {
                Ok(ended) => return ended,
                Err(ClientError::Fenced(_)) => return Ended::Fenced,
                Err(e) => {
                    tracing::debug!(transform = %self.spec.name, partition = self.partition, error = %e,
                        "transform runner restarts from its committed position");
                    metrics::counter!("fjord_transform_restarts_total", "transform" => self.spec.name.clone())
                        .increment(1);
                    let stop = self.stop.clone();
                    if stopped_within(stop, backoff).await {
                        return Ended::Stopped;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One producer session: fence older runners, find the committed position, then process
    /// batches until something ends it.
    async fn session(&mut self) -> Result<Ended, ClientError> {
        let spec = self.spec.clone();
        let p = self.partition;
        let mut producer = TxnProducer::new(&self.client, &spec.transactional_id(p));
        // Fences any older runner of this partition and aborts its open transaction.
        producer.init(TXN_TIMEOUT_MS).await?;
        let mut position = match self.client.committed_offset(&spec.group(), &spec.input, p).await? {
            Some(o) => o,
            None => self.start_offset().await?,
        };
        let env =
            engine::HostEnv { env: spec.environment(), outputs: spec.outputs.len(), lookups: self.lookups.clone() };
        let runtime = self.runtime.clone();
        let module = self.module.clone();
        let limits = spec.limits();
        let guest = tokio::task::spawn_blocking(move || runtime.instantiate(&module, env, limits))
            .await
            .map_err(|e| ClientError::State(format!("instance task: {e}")))?;
        let mut guest = match guest {
            Ok(g) => Some(g),
            Err(e) => return Ok(self.fail(e.message, e.logs).await),
        };
        let batch_bytes = limits.batch_bytes();
        loop {
            if *self.stop.borrow() {
                return Ok(Ended::Stopped);
            }
            if !self.host.leads(&spec.input, p) {
                return Ok(Ended::NotLeader);
            }
            let fetched = tokio::select! {
                f = self.client.fetch(&spec.input, p, position, batch_bytes as i32, FETCH_WAIT_MS, true) => f,
                _ = self.stop.changed() => return Ok(Ended::Stopped),
            };
            let fetched = match fetched {
                Ok(f) => f,
                Err(ClientError::OffsetOutOfRange(_)) => {
                    // Retention took input the transform had not read: go on from the log start,
                    // as a consumer with auto.offset.reset=earliest would, and say so.
                    let start = self.client.list_offset(&spec.input, p, -2).await?;
                    let line = LogLine {
                        level: engine::Level::Warn,
                        message: format!("offset {position} is gone from {}-{p}; going on from {start}", spec.input),
                    };
                    self.host.write_logs(&spec.name, Some(p), vec![line]).await;
                    position = start;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if fetched.records.is_empty() {
                // Only control records (markers) or nothing: nothing to write; their offsets are
                // passed over and counted at the next committed batch.
                position = position.max(fetched.next_offset);
                self.report_lag(fetched.last_stable_offset, position);
                continue;
            }
            let next = fetched.next_offset.max(fetched.records.last().map_or(position, |r| r.offset + 1));
            let input_end = fetched.last_stable_offset;
            let records = fetched.records;
            let count_in = records.len() as u64;
            let mut g = guest.take().expect("a live instance");
            let started = std::time::Instant::now();
            let ran = tokio::task::spawn_blocking(move || {
                let mut out = engine::BatchOutput::default();
                for chunk in chunks(&records, batch_bytes) {
                    match g.run(chunk) {
                        Ok(o) => {
                            out.records.extend(o.records);
                            out.logs.extend(o.logs);
                        }
                        Err(mut e) => {
                            out.logs.append(&mut e.logs);
                            return (g, Err((e.message, out.logs)));
                        }
                    }
                }
                (g, Ok(out))
            })
            .await
            .map_err(|e| ClientError::State(format!("transform task: {e}")))?;
            let (g, ran) = ran;
            metrics::histogram!("fjord_transform_batch_seconds", "transform" => spec.name.clone())
                .record(started.elapsed().as_secs_f64());
            let out = match ran {
                Ok(out) => out,
                Err((message, logs)) => {
                    drop(g);
                    return Ok(self.fail(message, logs).await);
                }
            };
            guest = Some(g);
            self.write(&mut producer, out.records, next).await?;
            if !out.logs.is_empty() {
                self.host.write_logs(&spec.name, Some(p), out.logs).await;
            }
            metrics::counter!("fjord_transform_records_in_total", "transform" => spec.name.clone()).increment(count_in);
            position = next;
            self.report_lag(input_end, position);
        }
    }

    /// One transaction: every output record, and the input position after the batch.
    async fn write(
        &mut self,
        producer: &mut TxnProducer,
        outputs: Vec<(usize, OutRecord)>,
        next: i64,
    ) -> Result<(), ClientError> {
        let spec = self.spec.clone();
        let written = outputs.len();
        producer.begin()?;
        let result = async {
            let mut by_partition: std::collections::BTreeMap<(usize, i32), Vec<OutRecord>> = Default::default();
            for (output, record) in outputs {
                let topic = &spec.outputs[output];
                let count = self.client.partition_count(topic).await?;
                let partition = partition_for(record.key.as_deref(), self.partition, count);
                by_partition.entry((output, partition)).or_default().push(record);
            }
            let writes = by_partition
                .into_iter()
                .map(|((output, partition), records)| {
                    let records = records
                        .into_iter()
                        .map(|r| ProducerRecord {
                            timestamp: r.timestamp,
                            key: r.key.map(Into::into),
                            value: r.value.map(Into::into),
                            headers: r.headers.into_iter().map(|(k, v)| (k.into(), v.map(Into::into))).collect(),
                        })
                        .collect();
                    (spec.outputs[output].clone(), partition, records)
                })
                .collect();
            // Every output partition's records go at once.
            producer.send_many(writes).await?;
            producer.send_offsets(&spec.group(), &[(spec.input.clone(), self.partition, next)]).await?;
            producer.commit().await
        }
        .await;
        match result {
            Ok(()) => {
                metrics::counter!("fjord_transform_records_out_total", "transform" => spec.name.clone())
                    .increment(written as u64);
                Ok(())
            }
            Err(ClientError::Fenced(m)) => Err(ClientError::Fenced(m)),
            Err(e) => {
                // The transaction is not committed: abort it so the next session starts clean
                // (if the abort fails too, the next InitProducerId aborts it).
                let _ = producer.abort().await;
                Err(e)
            }
        }
    }

    /// The offset to start from when the transform has no committed position here.
    async fn start_offset(&self) -> Result<i64, ClientError> {
        if let Some(o) = self.spec.start_offsets.get(&self.partition) {
            return Ok(*o);
        }
        // A partition added after the deploy: from its beginning (nothing in it predates the
        // transform's start).
        self.client.list_offset(&self.spec.input, self.partition, -2).await
    }

    /// Sets the lag gauge: committed input (up to the last stable offset, which a
    /// read_committed reader reaches) not yet transformed.
    fn report_lag(&self, input_end: i64, position: i64) {
        metrics::gauge!("fjord_transform_lag_records", "transform" => self.spec.name.clone(),
            "partition" => self.partition.to_string())
        .set((input_end - position).max(0) as f64);
    }

    async fn fail(&self, message: String, mut logs: Vec<LogLine>) -> Ended {
        metrics::counter!("fjord_transform_failures_total", "transform" => self.spec.name.clone()).increment(1);
        let message = format!("partition {}: {message}", self.partition);
        tracing::warn!(transform = %self.spec.name, error = %message, "transform paused");
        logs.push(LogLine { level: engine::Level::Error, message: format!("paused: {message}") });
        self.host.pause(&self.spec.name, self.partition, self.spec.version, message.clone(), logs).await;
        Ended::Failed(message)
    }
}

/// Splits records into calls of at most [`engine::MAX_BATCH_RECORDS`] records and `bytes`
/// encoded bytes (one record at least).
fn chunks(records: &[Record], bytes: usize) -> Vec<&[Record]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = 4;
    for (i, r) in records.iter().enumerate() {
        let len = engine::encoded_len(r);
        if i > start && (i - start >= engine::MAX_BATCH_RECORDS || size + len > bytes) {
            out.push(&records[start..i]);
            start = i;
            size = 4;
        }
        size += len;
    }
    if start < records.len() {
        out.push(&records[start..]);
    }
    out
}

/// Kafka's default partitioner for keyed records (murmur2 of the key), so outputs keyed like
/// other producers' records land on the same partitions; unkeyed ones follow the input
/// partition.
pub fn partition_for(key: Option<&[u8]>, input_partition: i32, count: i32) -> i32 {
    let count = count.max(1);
    match key {
        Some(k) => fjord_storage::partitioner::partition_for_key(k, count),
        None => input_partition.rem_euclid(count),
    }
}

/// Waits `d`, or less when `stop` turns true: true when it did.
async fn stopped_within(mut stop: watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        r = stop.changed() => r.is_err() || *stop.borrow(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn batches_are_cut_by_count_and_bytes() {
        let rec = |o: i64, n: usize| Record {
            offset: o,
            timestamp: 0,
            key: None,
            value: Some(Bytes::from(vec![b'x'; n])),
            headers: vec![],
        };
        let many: Vec<Record> = (0..1200).map(|i| rec(i, 1)).collect();
        let c = chunks(&many, 1 << 20);
        assert_eq!(c.iter().map(|c| c.len()).collect::<Vec<_>>(), vec![500, 500, 200]);
        let big: Vec<Record> = (0..5).map(|i| rec(i, 1000)).collect();
        let c = chunks(&big, 2500);
        assert_eq!(c.iter().map(|c| c.len()).collect::<Vec<_>>(), vec![2, 2, 1]);
        // A record larger than the limit still goes, alone.
        let c = chunks(&big[..1], 10);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn unkeyed_outputs_follow_the_input_partition() {
        assert_eq!(partition_for(None, 5, 3), 2);
        let p = partition_for(Some(b"user-1"), 0, 7);
        assert!((0..7).contains(&p));
        assert_eq!(p, partition_for(Some(b"user-1"), 3, 7));
    }
}

//! One client connection: size-prefixed frames in, responses out in request
//! order. Requests run concurrently (a long poll does not hold up the
//! pipeline behind it); this loop knows nothing of what they mean.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::dispatch::{self, HandlerResult};
use crate::server::Broker;

tokio::task_local! {
    /// The client address of the request being handled (DescribeGroups shows it).
    pub static PEER: SocketAddr;
}

/// Requests a connection may have in flight before we stop reading.
const MAX_IN_FLIGHT: usize = 256;

/// The bytes that requests read but not yet answered hold, across every
/// connection, bounded by `queued_max_request_bytes`: a frame takes its size
/// before its body is read and gives it back once its response is written,
/// so past the bound connections stop reading instead of allocating.
pub struct RequestMemory {
    budget: Option<Arc<Semaphore>>,
    /// (held now, most ever held), under one lock so the gauges are set in
    /// the order the counts changed.
    held: Mutex<(u64, u64)>,
}

/// A frame's share of `RequestMemory`, given back on drop.
pub struct HeldBytes {
    memory: Arc<RequestMemory>,
    bytes: u64,
    // Released after `drop` has lowered `held`, so `held` never shows more
    // than the budget allows.
    _permit: Option<OwnedSemaphorePermit>,
}

impl RequestMemory {
    /// `max_bytes` < 0: unlimited (still counted, for the gauges).
    pub fn new(max_bytes: i64) -> Arc<RequestMemory> {
        let budget = usize::try_from(max_bytes).ok().map(|b| Arc::new(Semaphore::new(b.min(Semaphore::MAX_PERMITS))));
        Arc::new(RequestMemory { budget, held: Mutex::new((0, 0)) })
    }

    /// Waits until `bytes` fit in the budget. Config validation keeps every
    /// frame that passes the max_request_bytes check within it.
    async fn acquire(self: &Arc<Self>, bytes: usize) -> Result<HeldBytes, String> {
        let permit = match &self.budget {
            Some(sem) => {
                let n = u32::try_from(bytes).map_err(|_| format!("frame of {bytes} bytes is too large"))?;
                let permit = match sem.clone().try_acquire_many_owned(n) {
                    Ok(p) => p,
                    Err(_) => {
                        // The budget is spent: this connection stops reading.
                        metrics::counter!("fjord_queued_request_waits_total").increment(1);
                        sem.clone().acquire_many_owned(n).await.map_err(|_| "request budget closed".to_string())?
                    }
                };
                Some(permit)
            }
            None => None,
        };
        self.update(|held, peak| {
            *held += bytes as u64;
            *peak = (*peak).max(*held);
        });
        Ok(HeldBytes { memory: self.clone(), bytes: bytes as u64, _permit: permit })
    }

    fn update(&self, change: impl FnOnce(&mut u64, &mut u64)) {
        let mut g = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let (held, peak) = &mut *g;
        change(held, peak);
        metrics::gauge!("fjord_queued_request_bytes").set(*held as f64);
        metrics::gauge!("fjord_queued_request_bytes_peak").set(*peak as f64);
    }
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        let bytes = self.bytes;
        self.memory.update(|held, _| *held = held.saturating_sub(bytes));
    }
}

/// A request's answer-to-be, with when it arrived, for the residence metric,
/// and the request memory it holds until the answer is written.
struct Queued {
    pending: Pending,
    arrived: Instant,
    api: &'static str,
    held: HeldBytes,
}

enum Pending {
    Response(JoinHandle<HandlerResult>),
    Ready(HandlerResult),
    Close,
}

pub async fn serve(broker: Arc<Broker>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    metrics::gauge!("fjord_connections").increment(1.0);
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Queued>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(write_loop(wr, rx, peer));
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let max = broker.config.max_request_bytes;
    loop {
        let frame = tokio::select! {
            f = read_frame(&mut rd, max, &broker.request_memory) => f,
            _ = tx.closed() => break,
        };
        let (frame, held) = match frame {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(reason) => {
                tracing::warn!(%peer, %reason, "closing connection");
                break;
            }
        };
        metrics::counter!("fjord_requests_total").increment(1);
        let arrived = Instant::now();
        let api = match i16::from_be_bytes([frame[0], frame[1]]) {
            0 => "Produce",
            1 => "Fetch",
            _ => "other",
        };
        let pending = match dispatch::prepare(&broker, frame) {
            // Each request runs here, in arrival order, up to its first wait;
            // only then does it go on as its own task. Appends and commits
            // happen before a handler's first await, so two pipelined
            // produces to a partition land in the order they were sent (as
            // Kafka's one-request-at-a-time connections guarantee), while a
            // long poll or an fsync wait holds up nothing behind it.
            Ok(fut) => {
                let mut fut = Box::pin(PEER.scope(peer, fut));
                match futures::poll!(fut.as_mut()) {
                    std::task::Poll::Ready(result) => Pending::Ready(result),
                    std::task::Poll::Pending => Pending::Response(tokio::spawn(fut)),
                }
            }
            Err(reason) => {
                tracing::warn!(%peer, %reason, "closing connection");
                let _ = tx.send(Queued { pending: Pending::Close, arrived, api, held }).await;
                break;
            }
        };
        if tx.send(Queued { pending, arrived, api, held }).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
    metrics::gauge!("fjord_connections").decrement(1.0);
}

/// Reads one frame, once its size fits in the request memory budget;
/// `Ok(None)` on a clean end of stream.
async fn read_frame<R: AsyncReadExt + Unpin>(
    rd: &mut R,
    max: usize,
    memory: &Arc<RequestMemory>,
) -> Result<Option<(Bytes, HeldBytes)>, String> {
    let size = match rd.read_i32().await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(format!("read error: {e}")),
    };
    if size < 8 {
        return Err(format!("frame size {size} is too small for a request header"));
    }
    if size as usize > max {
        return Err(format!("frame of {size} bytes exceeds the {max}-byte limit (max_request_bytes)"));
    }
    // Read into uninitialised capacity: zeroing a 1 MiB produce first
    // would be one more pass over every byte.
    let size = size as usize;
    let held = memory.acquire(size).await?;
    let mut buf = BytesMut::with_capacity(size);
    while buf.len() < size {
        let want = size - buf.len();
        match rd.read_buf(&mut (&mut buf).limit(want)).await {
            Ok(0) => return Err(format!("truncated frame: {} of {size} bytes", buf.len())),
            Ok(_) => {}
            Err(e) => return Err(format!("truncated frame: {e}")),
        }
    }
    Ok(Some((buf.freeze(), held)))
}

async fn write_loop(wr: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::Receiver<Queued>, peer: SocketAddr) {
    let mut out = BufWriter::with_capacity(64 * 1024, wr);
    // Responses written to the buffer but not yet to the socket.
    let mut unflushed: Vec<(Instant, &'static str, HeldBytes)> = Vec::new();
    while let Some(Queued { pending, arrived, api, held }) = rx.recv().await {
        let outcome = match pending {
            Pending::Close => break,
            Pending::Ready(result) => Ok(result),
            Pending::Response(h) => {
                // Responses already written must not wait behind one that is
                // still running (a produce waiting for its fsync, a fetch
                // long poll): send them before waiting.
                if !h.is_finished() && !flush(&mut out, &mut unflushed).await {
                    break;
                }
                h.await
            }
        };
        match outcome {
            Ok(Ok(Some(frame))) => {
                if let Err(e) = crate::frame::write_frame(&mut out, frame).await {
                    tracing::debug!(%peer, error = %e, "write failed");
                    break;
                }
                unflushed.push((arrived, api, held));
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %e, "closing connection after a bad request");
                break;
            }
            Err(e) => {
                tracing::error!(%peer, error = %e, "request handler failed");
                break;
            }
        }
        // Responses that are ready go out together in one write.
        if rx.is_empty() && !flush(&mut out, &mut unflushed).await {
            break;
        }
    }
    let _ = out.flush().await;
    let _ = out.shutdown().await;
}

/// Flushes the buffered responses and records how long each request spent
/// in the broker, read to written (queueing behind earlier responses
/// included): what the client waits for, as far as the broker can tell.
async fn flush(
    out: &mut BufWriter<tokio::net::tcp::OwnedWriteHalf>,
    unflushed: &mut Vec<(Instant, &'static str, HeldBytes)>,
) -> bool {
    if out.flush().await.is_err() {
        return false;
    }
    // Dropping each entry's held bytes lets blocked readers go on.
    for (arrived, api, _held) in unflushed.drain(..) {
        metrics::histogram!("fjord_request_residence_seconds", "api" => api).record(arrived.elapsed().as_secs_f64());
    }
    true
}

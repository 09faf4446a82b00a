//! The node transport over real loopback TCP: calls and their coalescing, in-flight calls failing
//! when the socket dies and reconnection, a peer whose process stops known down until it is back,
//! and refusal of bad handshakes and bad frames.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{init_tracing, wait_until, KillableConnector};
use fjord_replication::transport::frame::encode_header;
use fjord_replication::transport::{
    BoxFuture, CallError, FrameDecoder, Hello, InboundHandler, Kind, TcpConnector, TcpListener, Transport,
    TransportConfig, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const ECHO: u8 = 1;
const BLACK_HOLE: u8 = 99;

/// Answers `ECHO` with the reversed body and `BLACK_HOLE` never, reporting that it arrived.
struct TestHandler {
    arrived: mpsc::UnboundedSender<u64>,
}

impl InboundHandler for TestHandler {
    fn handle(&self, _from: u64, group: u64, rpc: u8, body: Bytes) -> BoxFuture<'static, Bytes> {
        let _ = self.arrived.send(group);
        Box::pin(async move {
            if rpc == BLACK_HOLE {
                futures::future::pending::<()>().await;
            }
            let mut v = body.to_vec();
            v.reverse();
            Bytes::from(v)
        })
    }
}

struct Server {
    transport: Transport,
    addr: String,
    arrived: mpsc::UnboundedReceiver<u64>,
}

async fn server(cluster: &str, id: u64, max_frame_bytes: usize) -> Server {
    let (tx, arrived) = mpsc::unbounded_channel();
    let mut config = TransportConfig::new(cluster, id);
    config.max_frame_bytes = max_frame_bytes;
    let transport = Transport::new(config, Arc::new(TcpConnector), Arc::new(TestHandler { arrived: tx }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    transport.serve(listener);
    Server { transport, addr, arrived }
}

fn client(cluster: &str, id: u64, connector: Arc<KillableConnector>) -> Transport {
    let (tx, _rx) = mpsc::unbounded_channel();
    Transport::new(TransportConfig::new(cluster, id), connector, Arc::new(TestHandler { arrived: tx }))
}

async fn connected(t: &Transport, peer: u64) {
    let t = t.clone();
    wait_until(Duration::from_secs(10), "connection", move || {
        let t = t.clone();
        async move { t.is_connected(peer) }
    })
    .await;
}

#[tokio::test]
async fn concurrent_calls_are_answered_and_coalesced() {
    init_tracing();
    let srv = server("c", 2, 1 << 20).await;
    let a = client("c", 1, KillableConnector::new());
    a.add_peer(2, &srv.addr);
    connected(&a, 2).await;

    let calls = (0..200u64).map(|i| {
        let a = a.clone();
        async move {
            let body = format!("request {i}");
            let answer = a.call(2, i, ECHO, &[body.as_bytes()], Duration::from_secs(10)).await.unwrap();
            let mut expected = body.into_bytes();
            expected.reverse();
            assert_eq!(&answer[..], &expected[..]);
        }
    });
    futures::future::join_all(calls).await;

    let stats = a.stats();
    assert_eq!(stats.frames_sent, 200);
    assert_eq!(stats.frames_received, 200);
    // The 200 requests were queued before the writer ran: far fewer writes than frames.
    assert!(stats.writes * 10 <= stats.frames_sent, "requests not coalesced: {stats:?}");
    let served = srv.transport.stats();
    assert!(served.writes < served.frames_sent, "responses not coalesced: {served:?}");
}

#[tokio::test]
async fn in_flight_calls_fail_when_the_socket_dies_and_the_peer_reconnects() {
    init_tracing();
    let mut srv = server("c", 2, 1 << 20).await;
    let connector = KillableConnector::new();
    let a = client("c", 1, connector.clone());
    a.add_peer(2, &srv.addr);
    connected(&a, 2).await;

    let pending = {
        let a = a.clone();
        tokio::spawn(async move { a.call(2, 7, BLACK_HOLE, &[b"never answered"], Duration::from_secs(60)).await })
    };
    assert_eq!(srv.arrived.recv().await, Some(7));
    assert_eq!(connector.kill_all(), 1);

    let result = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the in-flight call must fail promptly, not wait for its timeout")
        .unwrap();
    assert!(matches!(result, Err(CallError::Unreachable { node: 2, .. })), "{result:?}");

    let a2 = a.clone();
    wait_until(Duration::from_secs(10), "reconnection", move || {
        let a = a2.clone();
        async move { a.stats().connections_established >= 2 && a.is_connected(2) }
    })
    .await;
    let answer = a.call(2, 1, ECHO, &[b"abc"], Duration::from_secs(10)).await.unwrap();
    assert_eq!(&answer[..], b"cba");

    // Frames too large to coalesce take their own write, in both directions, next to small ones.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let pieces: [&[u8]; 2] = [&big[..100], &big[100..]];
    let (small, large) = tokio::join!(
        a.call(2, 2, ECHO, &[b"xy"], Duration::from_secs(10)),
        a.call(2, 3, ECHO, &pieces, Duration::from_secs(10)),
    );
    assert_eq!(&small.unwrap()[..], b"yx");
    let mut reversed = big.clone();
    reversed.reverse();
    assert_eq!(&large.unwrap()[..], &reversed[..]);

    // Shared pieces, as entries' batches go: small ones copied behind the header, large ones
    // written from their own buffers, small ones after a large one in order.
    let shared = Bytes::from(big.clone());
    let cuts = [0, 100, 4196, 4200, 204_200, 204_210, 300_000];
    let pieces: Vec<Bytes> = cuts.windows(2).map(|w| shared.slice(w[0]..w[1])).collect();
    let (small, large) = tokio::join!(
        a.call(2, 4, ECHO, &[b"uv"], Duration::from_secs(10)),
        a.call_pieces(2, 5, ECHO, pieces, Duration::from_secs(10)),
    );
    assert_eq!(&small.unwrap()[..], b"vu");
    assert_eq!(&large.unwrap()[..], &reversed[..]);
}

/// A peer whose process stops (its end closes the connection, then nothing listens at its
/// address) is known down at once, not after a silence; once it listens again it is not.
#[tokio::test]
async fn a_peer_that_stops_is_known_down_until_it_is_back() {
    init_tracing();
    let srv = server("c", 2, 1 << 20).await;
    let a = client("c", 1, KillableConnector::new());
    a.add_peer(2, &srv.addr);
    connected(&a, 2).await;
    assert_eq!(&a.call(2, 1, ECHO, &[b"ab"], Duration::from_secs(10)).await.unwrap()[..], b"ba");
    assert!(!a.known_down(2));

    srv.transport.shutdown();
    let a2 = a.clone();
    wait_until(Duration::from_secs(10), "the stopped peer known down", move || {
        let a = a2.clone();
        async move { a.known_down(2) }
    })
    .await;

    // The same node again, on the same address.
    let (tx, _rx) = mpsc::unbounded_channel();
    let back =
        Transport::new(TransportConfig::new("c", 2), Arc::new(TcpConnector), Arc::new(TestHandler { arrived: tx }));
    back.serve(TcpListener::bind(&srv.addr).await.unwrap());
    let a2 = a.clone();
    wait_until(Duration::from_secs(10), "the peer back and not known down", move || {
        let a = a2.clone();
        async move { a.is_connected(2) && !a.known_down(2) }
    })
    .await;
    assert_eq!(&a.call(2, 1, ECHO, &[b"cd"], Duration::from_secs(10)).await.unwrap()[..], b"dc");
}

/// Writes a handshake and returns the decoded answer (`None` if the server closed first).
async fn raw_handshake(stream: &mut TcpStream, hello: &Hello) -> Option<Result<Hello, String>> {
    let body = postcard::to_stdvec(hello).unwrap();
    let mut buf = BytesMut::new();
    encode_header(&mut buf, Kind::Hello, 0, 0, 0, body.len());
    buf.extend_from_slice(&body);
    stream.write_all(&buf).await.unwrap();
    let decoder = FrameDecoder::new(1 << 20);
    let mut rbuf = BytesMut::new();
    loop {
        if let Some(frame) = decoder.decode(&mut rbuf).unwrap() {
            assert_eq!(frame.kind, Kind::HelloAck);
            return Some(postcard::from_bytes(&frame.body).unwrap());
        }
        if stream.read_buf(&mut rbuf).await.unwrap_or(0) == 0 {
            return None;
        }
    }
}

/// Reads until the server closes the connection, with a deadline.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut sink = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    })
    .await
    .unwrap_or(false)
}

fn hello(cluster: &str, from: u64, to: u64, version: u16) -> Hello {
    Hello { cluster_id: cluster.to_string(), from, to, version }
}

#[tokio::test]
async fn mismatched_handshakes_are_refused() {
    init_tracing();
    let srv = server("blue", 2, 1 << 20).await;
    for (bad, why) in [
        (hello("red", 1, 2, PROTOCOL_VERSION), "cluster id"),
        (hello("blue", 1, 3, PROTOCOL_VERSION), "addressed to node 3"),
        (hello("blue", 1, 2, PROTOCOL_VERSION + 1), "protocol version"),
    ] {
        let mut s = TcpStream::connect(&srv.addr).await.unwrap();
        match raw_handshake(&mut s, &bad).await {
            Some(Err(reason)) => assert!(reason.contains(why), "{reason}"),
            other => panic!("{bad:?} was not refused: {other:?}"),
        }
        assert!(closed_by_server(&mut s).await, "{bad:?}: connection left open");
    }

    // A whole transport of another cluster never gets a working connection.
    let red = client("red", 1, KillableConnector::new());
    red.add_peer(2, &srv.addr);
    let err = red.call(2, 1, ECHO, &[b"x"], Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(err, CallError::Unreachable { .. }), "{err:?}");

    // The right handshake is accepted, mirrored.
    let mut s = TcpStream::connect(&srv.addr).await.unwrap();
    assert_eq!(
        raw_handshake(&mut s, &hello("blue", 1, 2, PROTOCOL_VERSION)).await,
        Some(Ok(hello("blue", 2, 1, PROTOCOL_VERSION)))
    );
}

#[tokio::test]
async fn oversize_and_malformed_frames_close_the_connection() {
    init_tracing();
    let srv = server("c", 2, 1024).await;
    let good = hello("c", 1, 2, PROTOCOL_VERSION);

    let mut frames: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut oversize = BytesMut::new();
    encode_header(&mut oversize, Kind::Request, 1, 1, ECHO, 5000);
    frames.push(("oversize", oversize.to_vec()));
    frames.push(("too short", vec![0, 0, 0, 3, 0, 0, 0]));
    let mut unknown_kind = BytesMut::new();
    encode_header(&mut unknown_kind, Kind::Request, 1, 1, ECHO, 0);
    unknown_kind[4] = 42;
    frames.push(("unknown kind", unknown_kind.to_vec()));
    let mut response = BytesMut::new();
    encode_header(&mut response, Kind::Response, 1, 1, ECHO, 0);
    frames.push(("response on an inbound connection", response.to_vec()));

    for (what, bytes) in frames {
        let mut s = TcpStream::connect(&srv.addr).await.unwrap();
        assert!(matches!(raw_handshake(&mut s, &good).await, Some(Ok(_))));
        s.write_all(&bytes).await.unwrap();
        assert!(closed_by_server(&mut s).await, "{what}: connection left open");
    }

    // A real transport sending more than the server accepts loses its connection (and the
    // call), then reconnects.
    let a = client("c", 1, KillableConnector::new());
    a.add_peer(2, &srv.addr);
    connected(&a, 2).await;
    let big = vec![0u8; 2000];
    let err = a.call(2, 1, ECHO, &[&big], Duration::from_secs(10)).await.unwrap_err();
    assert!(matches!(err, CallError::Unreachable { .. }), "{err:?}");

    // A sender with the same limit refuses to send it at all.
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut config = TransportConfig::new("c", 3);
    config.max_frame_bytes = 1024;
    let small = Transport::new(config, Arc::new(TcpConnector), Arc::new(TestHandler { arrived: tx }));
    small.add_peer(2, &srv.addr);
    connected(&small, 2).await;
    let err = small.call(2, 1, ECHO, &[&big], Duration::from_secs(10)).await.unwrap_err();
    assert!(matches!(err, CallError::TooLarge { len: 2018, max: 1024 }), "{err:?}");

    // Garbage instead of a handshake is closed too.
    let mut s = TcpStream::connect(&srv.addr).await.unwrap();
    s.write_all(&[0xff; 64]).await.unwrap();
    assert!(closed_by_server(&mut s).await, "garbage handshake");

    // The server still serves well-behaved peers.
    connected(&a, 2).await;
    let answer = a.call(2, 1, ECHO, &[b"ok"], Duration::from_secs(10)).await.unwrap();
    assert_eq!(&answer[..], b"ko");
}

/// R2: before the handshake only a handshake-sized frame is accepted. A socket that announces a
/// 100 MiB frame is closed on the length prefix, well before the handshake timeout (3 s), instead
/// of the server reserving the frame and waiting for it.
#[tokio::test]
async fn a_huge_frame_before_the_handshake_is_refused_at_once() {
    init_tracing();
    let srv = server("c", 2, fjord_replication::transport::DEFAULT_MAX_FRAME_BYTES).await;
    let mut s = TcpStream::connect(&srv.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    s.write_all(&(100u32 << 20).to_be_bytes()).await.unwrap();
    assert!(closed_by_server(&mut s).await, "connection left open");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "closed only after {took:?}: the prefix was not refused");
    // The server still serves well-behaved peers.
    let mut s = TcpStream::connect(&srv.addr).await.unwrap();
    assert!(matches!(raw_handshake(&mut s, &hello("c", 1, 2, PROTOCOL_VERSION)).await, Some(Ok(_))));
}

/// A peer that completes the handshake on every connection and then never reads: a half-open or
/// wedged node. Keeps its sockets open so the kernel does not reset them.
async fn black_hole(cluster: &'static str, id: u64) -> (String, Arc<std::sync::Mutex<Vec<TcpStream>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let decoder = FrameDecoder::new(1 << 10);
            let mut rbuf = BytesMut::new();
            let theirs: Hello = loop {
                if let Ok(Some(f)) = decoder.decode(&mut rbuf) {
                    break postcard::from_bytes(&f.body).unwrap();
                }
                if s.read_buf(&mut rbuf).await.unwrap_or(0) == 0 {
                    break hello("", 0, 0, 0);
                }
            };
            let ours = hello(cluster, id, theirs.from, PROTOCOL_VERSION);
            let body = postcard::to_stdvec(&Ok::<_, String>(ours)).unwrap();
            let mut buf = BytesMut::new();
            encode_header(&mut buf, Kind::HelloAck, 0, 0, 0, body.len());
            buf.extend_from_slice(&body);
            let _ = s.write_all(&buf).await;
            keep.lock().unwrap().push(s);
        }
    });
    (addr, held)
}

/// R1: towards a peer that stops reading, queued bytes are bounded (calls then fail at once as
/// `Unreachable`), and unanswered pings close the connection, which is dialed again.
#[tokio::test]
async fn a_peer_that_stops_reading_costs_bounded_memory_and_is_redialed() {
    init_tracing();
    let (addr, _held) = black_hole("c", 2).await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut config = TransportConfig::new("c", 1);
    config.max_queued_bytes = 4 << 20;
    config.max_unanswered_pings = 3;
    let t = Transport::new(config, Arc::new(TcpConnector), Arc::new(TestHandler { arrived: tx }));
    t.add_peer(2, &addr);
    connected(&t, 2).await;

    // Fill the socket buffers and then the queue: 256 KiB calls that are never answered. Without a
    // bound every call would queue (and 1,000 of them hold 256 MiB).
    let chunk = vec![7u8; 256 << 10];
    let mut refused = None;
    for i in 0..1000 {
        let started = tokio::time::Instant::now();
        match t.call(2, 1, ECHO, &[&chunk], Duration::from_millis(1)).await {
            Err(CallError::Unreachable { reason, .. }) if reason.contains("queue full") => {
                assert!(started.elapsed() < Duration::from_secs(1), "refusal was not immediate");
                refused = Some(i);
                break;
            }
            Err(_) => {}
            Ok(_) => panic!("a black hole answered"),
        }
    }
    let refused = refused.expect("1,000 unanswered 256 KiB calls were all queued");
    assert!(refused > 0);

    // Pings go unanswered; after three in a row the connection is closed and dialed again.
    let before = t.stats().connections_established;
    let t2 = t.clone();
    wait_until(Duration::from_secs(10), "the transport to redial the silent peer", move || {
        let t = t2.clone();
        async move {
            let _ = t.ping(2, Duration::from_millis(20)).await;
            t.stats().connections_established > before
        }
    })
    .await;
    t.shutdown();
}

const STALE: u8 = 7;
const LIVE: u8 = 8;

/// A peer built from the transport's own framing: completes the handshake on one connection, then
/// reads nothing until `resume` fires; from then on it reports the rpc code of every request it
/// receives, in order, and answers each with an empty body.
async fn stalled_peer(
    cluster: &'static str,
    id: u64,
) -> (String, tokio::sync::oneshot::Sender<()>, mpsc::UnboundedReceiver<u8>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (resume, resumed) = tokio::sync::oneshot::channel::<()>();
    let (seen_tx, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let decoder = FrameDecoder::new(4 << 20);
        let mut rbuf = BytesMut::new();
        let theirs: Hello = loop {
            if let Some(f) = decoder.decode(&mut rbuf).unwrap() {
                break postcard::from_bytes(&f.body).unwrap();
            }
            assert!(s.read_buf(&mut rbuf).await.unwrap() > 0, "closed during the handshake");
        };
        let body = postcard::to_stdvec(&Ok::<_, String>(hello(cluster, id, theirs.from, PROTOCOL_VERSION))).unwrap();
        let mut buf = BytesMut::new();
        encode_header(&mut buf, Kind::HelloAck, 0, 0, 0, body.len());
        buf.extend_from_slice(&body);
        s.write_all(&buf).await.unwrap();
        let _ = resumed.await;
        loop {
            while let Some(f) = decoder.decode(&mut rbuf).unwrap() {
                let _ = seen_tx.send(f.rpc);
                let mut out = BytesMut::new();
                encode_header(&mut out, Kind::Response, f.corr_id, f.group_id, f.rpc, 0);
                s.write_all(&out).await.unwrap();
            }
            if s.read_buf(&mut rbuf).await.unwrap_or(0) == 0 {
                return;
            }
        }
    });
    (addr, resume, seen)
}

/// R1: requests whose calls timed out, or whose caller dropped the future, while the peer was not
/// reading are not written once it reads again: only what the writer had already handed to the
/// socket reaches it, and the live call that follows is not stuck behind the stale backlog.
#[tokio::test]
async fn requests_of_timed_out_or_dropped_calls_are_not_sent_after_a_stall() {
    init_tracing();
    let (addr, resume, mut seen) = stalled_peer("c", 2).await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let t = Transport::new(TransportConfig::new("c", 1), Arc::new(TcpConnector), Arc::new(TestHandler { arrived: tx }));
    t.add_peer(2, &addr);
    connected(&t, 2).await;

    // 60 MiB of requests against a peer that reads nothing: far more than the socket buffers hold,
    // so most wait in the queue while their calls end, half by timeout, half dropped by the caller.
    const CALLS: u64 = 60;
    let chunk = vec![5u8; 1 << 20];
    let calls = (0..CALLS).map(|i| {
        let (t, chunk) = (t.clone(), chunk.clone());
        async move {
            if i % 2 == 0 {
                t.call(2, i, STALE, &[&chunk], Duration::from_millis(300)).await.is_err()
            } else {
                let body: [&[u8]; 1] = [&chunk];
                let call = t.call(2, i, STALE, &body, Duration::from_secs(60));
                tokio::time::timeout(Duration::from_millis(300), call).await.is_err()
            }
        }
    });
    let ended = futures::future::join_all(calls).await;
    assert!(ended.iter().all(|e| *e), "a call to a peer that reads nothing succeeded");

    let _ = resume.send(());
    let answer = t.call(2, 1000, LIVE, &[b"now"], Duration::from_secs(10)).await;
    assert!(answer.is_ok(), "live call after the stall: {answer:?}");
    let mut stale_received = 0u64;
    loop {
        let rpc = tokio::time::timeout(Duration::from_secs(10), seen.recv()).await.unwrap().unwrap();
        if rpc == LIVE {
            break;
        }
        assert_eq!(rpc, STALE);
        stale_received += 1;
    }
    let skipped = t.stats().stale_requests_skipped;
    // What the peer got is exactly what the writer had taken before the calls ended: the socket
    // buffers' worth (a few MiB here), not the whole backlog.
    assert_eq!(stale_received + skipped, CALLS, "received {stale_received}, skipped {skipped}");
    assert!(stale_received < CALLS / 2, "{stale_received} of {CALLS} stale requests were still sent");
    t.shutdown();
}

/// R3: a peer that reconnects (its old sockets still open here, as when they went half-open)
/// leaves one inbound connection on this node: each newer handshake closes the older connection.
#[tokio::test]
async fn a_newer_connection_from_a_node_closes_its_older_ones() {
    init_tracing();
    let srv = server("c", 2, 1 << 20).await;
    let mut old = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(&srv.addr).await.unwrap();
        assert!(matches!(raw_handshake(&mut s, &hello("c", 1, 2, PROTOCOL_VERSION)).await, Some(Ok(_))));
        old.push(s);
    }
    let mut newest = old.pop().unwrap();
    for s in &mut old {
        assert!(closed_by_server(s).await, "an older connection from node 1 stayed open");
    }
    let t = srv.transport.clone();
    wait_until(Duration::from_secs(10), "one inbound connection left", move || {
        let t = t.clone();
        async move { t.stats().inbound_connections == 1 }
    })
    .await;
    // The newest one still serves: a ping is answered.
    let mut ping = BytesMut::new();
    encode_header(&mut ping, Kind::Request, 42, 0, 0, 0);
    newest.write_all(&ping).await.unwrap();
    let decoder = FrameDecoder::new(1 << 10);
    let mut rbuf = BytesMut::new();
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(f) = decoder.decode(&mut rbuf).unwrap() {
                return f;
            }
            assert!(newest.read_buf(&mut rbuf).await.unwrap() > 0, "newest connection closed");
        }
    })
    .await
    .unwrap();
    assert_eq!((answer.kind, answer.corr_id), (Kind::Response, 42));

    // Another node's connection is not affected by node 1's.
    let mut other = TcpStream::connect(&srv.addr).await.unwrap();
    assert!(matches!(raw_handshake(&mut other, &hello("c", 3, 2, PROTOCOL_VERSION)).await, Some(Ok(_))));
    let t = srv.transport.clone();
    wait_until(Duration::from_secs(10), "two inbound connections", move || {
        let t = t.clone();
        async move { t.stats().inbound_connections == 2 }
    })
    .await;
    srv.transport.shutdown();
}

//! The cluster-link proxy on plain TCP echo servers: each mode does what it
//! says to established and new connections, and healing restores traffic.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fjord_compat_tests::proxy::{LinkMode, LinkProxy};
use fjord_compat_tests::wait_until;

/// An echo server counting the connections it accepted and the bytes it got.
struct Echo {
    addr: String,
    accepted: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
}

impl Echo {
    fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (accepted, received) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (a, r) = (accepted.clone(), received.clone());
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        // Counted before the echo, so a client that has read
                        // its echo always sees the bytes counted.
                        r.fetch_add(n as u64, Ordering::SeqCst);
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Echo { addr, accepted, received }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }
}

fn connect(proxy: &LinkProxy) -> TcpStream {
    let s = TcpStream::connect(proxy.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Sends `msg` and reads exactly its echo.
fn echo(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).unwrap();
    read_n(s, msg.len())
}

fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut got = vec![0u8; n];
    s.read_exact(&mut got).unwrap();
    got
}

/// True if the peer closed the connection (end of stream or reset) within
/// the read timeout; false if it stayed silent and open.
fn closed(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 1];
    let r = s.read(&mut b);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    match r {
        Ok(0) => true,
        Ok(_) => panic!("unexpected bytes"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(_) => true,
    }
}

/// Nothing arrives on `s` within `quiet` (used to show a blackhole holds).
fn silent(s: &mut TcpStream, quiet: Duration) -> bool {
    !closed(s, quiet)
}

#[test]
fn pass_forwards_both_ways() {
    let server = Echo::start();
    let proxy = LinkProxy::start(Some(&server.addr)).unwrap();
    let mut a = connect(&proxy);
    assert_eq!(echo(&mut a, b"hello"), b"hello");
    assert_eq!(server.accepted(), 1);
    assert_eq!(proxy.mode(), LinkMode::Pass);
}

#[test]
fn drop_new_resets_new_connections_and_keeps_established_ones() {
    let server = Echo::start();
    let proxy = LinkProxy::start(Some(&server.addr)).unwrap();
    let mut a = connect(&proxy);
    assert_eq!(echo(&mut a, b"before"), b"before");

    proxy.set_mode(LinkMode::DropNew);
    let mut b = connect(&proxy);
    assert!(closed(&mut b, Duration::from_secs(10)), "a new connection must be dropped");
    assert_eq!(server.accepted(), 1, "a dropped connection never reaches the server");
    assert_eq!(echo(&mut a, b"during"), b"during", "the established connection carries on");

    proxy.heal();
    let mut c = connect(&proxy);
    assert_eq!(echo(&mut c, b"after"), b"after");
    assert_eq!(server.accepted(), 2);
}

#[test]
fn blackhole_holds_bytes_until_healed() {
    let server = Echo::start();
    let proxy = LinkProxy::start(Some(&server.addr)).unwrap();
    let mut a = connect(&proxy);
    assert_eq!(echo(&mut a, b"before"), b"before");
    let received = server.received();

    proxy.set_mode(LinkMode::Blackhole);
    a.write_all(b"held").unwrap();
    let mut b = connect(&proxy);
    b.write_all(b"new").unwrap();
    // Neither the established nor the new connection gets anything through,
    // and neither is closed.
    assert!(silent(&mut a, Duration::from_millis(300)), "no echo through a blackhole");
    assert!(silent(&mut b, Duration::from_millis(100)), "a new connection is held open");
    assert_eq!(server.received(), received, "the server got no byte");
    assert_eq!(server.accepted(), 1, "the new connection was not dialed upstream");

    proxy.heal();
    assert_eq!(read_n(&mut a, 4), b"held", "held bytes are delivered on heal");
    assert_eq!(read_n(&mut b, 3), b"new");
    assert_eq!(server.accepted(), 2);
    assert_eq!(echo(&mut a, b"after"), b"after");
}

#[test]
fn cut_closes_established_connections_and_resets_new_ones() {
    let server = Echo::start();
    let proxy = LinkProxy::start(Some(&server.addr)).unwrap();
    let mut a = connect(&proxy);
    assert_eq!(echo(&mut a, b"before"), b"before");
    assert_eq!(proxy.connections(), 1);

    proxy.set_mode(LinkMode::Cut);
    assert!(closed(&mut a, Duration::from_secs(10)), "the established connection is cut");
    assert_eq!(proxy.connections(), 0);
    let mut b = connect(&proxy);
    assert!(closed(&mut b, Duration::from_secs(10)), "a new connection is reset while cut");
    assert_eq!(server.accepted(), 1);

    proxy.heal();
    let mut c = connect(&proxy);
    assert_eq!(echo(&mut c, b"after"), b"after");
    assert_eq!(server.accepted(), 2);
}

#[test]
fn delay_adds_latency_to_each_chunk_without_serializing_them() {
    let server = Echo::start();
    let proxy = LinkProxy::start(Some(&server.addr)).unwrap();
    let mut a = connect(&proxy);
    assert_eq!(echo(&mut a, b"warm"), b"warm");
    // Long beside scheduling hiccups on a loaded machine, so the bounds below have room.
    let delay = Duration::from_secs(1);

    proxy.set_mode(LinkMode::Delay(delay));
    let t = Instant::now();
    assert_eq!(echo(&mut a, b"slow"), b"slow");
    let rtt = t.elapsed();
    assert!(rtt >= delay * 2, "a round trip crosses the link twice: {rtt:?}");

    // Five chunks 50 ms apart: pipelined, they take about 2 delays plus the
    // spacing, not 5 round trips (10 s).
    let t = Instant::now();
    let mut w = a.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0..5u8 {
            w.write_all(&[b'0' + i]).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    assert_eq!(read_n(&mut a, 5), b"01234", "order is kept");
    writer.join().unwrap();
    let total = t.elapsed();
    assert!(total >= delay * 2 && total < delay * 5, "pipelined chunks took {total:?}");

    proxy.heal();
    let t = Instant::now();
    assert_eq!(echo(&mut a, b"fast"), b"fast");
    assert!(t.elapsed() < delay, "healed link is not delayed: {:?}", t.elapsed());
}

#[test]
fn a_proxy_without_upstream_resets_until_told_where_to_forward() {
    let server = Echo::start();
    let proxy = LinkProxy::start(None).unwrap();
    let mut a = connect(&proxy);
    assert!(closed(&mut a, Duration::from_secs(10)));
    proxy.forward_to(&server.addr);
    let mut b = connect(&proxy);
    assert_eq!(echo(&mut b, b"hi"), b"hi");
    wait_until(Duration::from_secs(5), "the proxy counts its dial", || proxy.dialed() == 1);
}

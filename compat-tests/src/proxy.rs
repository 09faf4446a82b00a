//! A fault-injecting TCP proxy for the idempotence tests: it forwards Kafka
//! frames between clients and the broker and, every so often, swallows the
//! response to a Produce request and cuts the connection. The broker has
//! written the batch; the client never hears so and must retry it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

const PRODUCE: i16 = 0;

pub struct LossyProxy {
    pub port: u16,
    upstream: Arc<OnceLock<String>>,
    drop_every: usize,
    produce_responses: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let n = i32::from_be_bytes(len);
    if n < 0 {
        return None;
    }
    let mut frame = vec![0u8; 4 + n as usize];
    frame[..4].copy_from_slice(&len);
    s.read_exact(&mut frame[4..]).ok()?;
    Some(frame)
}

impl LossyProxy {
    /// Listens on a free port; `forward_to` names the broker once it runs
    /// (the broker must advertise the proxy, so the proxy comes first).
    /// Every `drop_every`-th Produce response is lost.
    pub fn bind(drop_every: usize) -> LossyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listen");
        let port = listener.local_addr().expect("addr").port();
        let proxy = LossyProxy {
            port,
            upstream: Arc::new(OnceLock::new()),
            drop_every: drop_every.max(1),
            produce_responses: Arc::new(AtomicUsize::new(0)),
            dropped: Arc::new(AtomicUsize::new(0)),
        };
        let (upstream, every, count, dropped) =
            (proxy.upstream.clone(), proxy.drop_every, proxy.produce_responses.clone(), proxy.dropped.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Some(addr) = upstream.get() else { continue };
                let Ok(server) = TcpStream::connect(addr) else { continue };
                Self::serve(client, server, every, count.clone(), dropped.clone());
            }
        });
        proxy
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn forward_to(&self, broker: &str) {
        let _ = self.upstream.set(broker.to_string());
    }

    /// How many Produce responses were swallowed so far.
    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }

    fn serve(
        mut client: TcpStream,
        mut server: TcpStream,
        every: usize,
        count: Arc<AtomicUsize>,
        dropped: Arc<AtomicUsize>,
    ) {
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        // correlation id → API key of requests in flight on this connection.
        let inflight: Arc<Mutex<HashMap<i32, i16>>> = Arc::default();
        let (Ok(mut c_read), Ok(mut s_write)) = (client.try_clone(), server.try_clone()) else { return };
        let requests = inflight.clone();
        std::thread::spawn(move || {
            while let Some(frame) = read_frame(&mut c_read) {
                if frame.len() >= 12 {
                    let key = i16::from_be_bytes([frame[4], frame[5]]);
                    let corr = i32::from_be_bytes([frame[8], frame[9], frame[10], frame[11]]);
                    requests.lock().unwrap_or_else(|p| p.into_inner()).insert(corr, key);
                }
                if s_write.write_all(&frame).is_err() {
                    break;
                }
            }
            let _ = s_write.shutdown(Shutdown::Both);
        });
        std::thread::spawn(move || {
            while let Some(frame) = read_frame(&mut server) {
                let corr =
                    if frame.len() >= 8 { i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]) } else { -1 };
                let key = inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&corr);
                if key == Some(PRODUCE) && (count.fetch_add(1, Ordering::SeqCst) + 1).is_multiple_of(every) {
                    dropped.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                if client.write_all(&frame).is_err() {
                    break;
                }
            }
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        });
    }
}

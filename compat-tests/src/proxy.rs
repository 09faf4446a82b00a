//! Fault-injecting TCP proxies. `LossyProxy` forwards Kafka frames between
//! clients and the broker and, every so often, swallows the response to a
//! Produce request and cuts the connection (the broker has written the
//! batch; the client never hears so and must retry it). `LinkProxy` stands
//! on one directed link between cluster nodes and is switched at runtime
//! between passing, dropping, blackholing, cutting and delaying traffic.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

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

/// What a [`LinkProxy`] does with traffic, from the moment it is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkMode {
    /// Forward everything.
    Pass,
    /// Reset each new connection as it arrives (the dialer sees it close at
    /// once); established connections carry on.
    DropNew,
    /// Accept new connections without dialing upstream, and forward no byte
    /// in either direction on any connection: bytes are held, as a silent
    /// network holds TCP segments that are retransmitted, and delivered in
    /// order once the mode allows again (if the peers are still there).
    Blackhole,
    /// Cut every established connection now (both sides see it close) and
    /// reset new ones, until the mode changes.
    Cut,
    /// Forward each chunk this long after it was read, in both directions;
    /// chunks are pipelined, so the link's throughput is unchanged.
    Delay(Duration),
}

/// One proxied connection: the two sockets, to cut them from outside.
struct Link {
    client: TcpStream,
    server: TcpStream,
    cut: AtomicBool,
}

impl Link {
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in [&self.client, &self.server] {
            set_linger_zero(s);
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// With SO_LINGER 0 the last close sends a reset instead of a FIN.
fn set_linger_zero(s: &TcpStream) {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on a descriptor `s` keeps open, with a pointer to a
    // live linger struct and its size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

#[derive(Default)]
struct LinkState {
    mode: Mutex<Option<LinkMode>>,
    changed: Condvar,
    upstream: Mutex<Option<String>>,
    links: Mutex<HashMap<u64, Arc<Link>>>,
    next_id: AtomicU64,
    stopped: AtomicBool,
    /// Connections dialed upstream so far.
    dialed: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LinkState {
    fn mode(&self) -> LinkMode {
        lock(&self.mode).unwrap_or(LinkMode::Pass)
    }

    /// Waits while the link is blackholed (or until `cut` says to give up).
    fn wait_open(&self, cut: impl Fn() -> bool) -> LinkMode {
        let mut m = lock(&self.mode);
        while *m == Some(LinkMode::Blackhole) && !cut() && !self.stopped.load(Ordering::SeqCst) {
            m = self.changed.wait(m).unwrap_or_else(|p| p.into_inner());
        }
        m.unwrap_or(LinkMode::Pass)
    }
}

/// A TCP proxy for one directed link (node A dialing node B): A is
/// configured with the proxy's address for B. Both byte directions of the
/// connections on that link obey the current [`LinkMode`].
pub struct LinkProxy {
    addr: SocketAddr,
    state: Arc<LinkState>,
}

impl LinkProxy {
    /// Listens on a free local port, forwarding to `upstream` (which may
    /// be set later with [`LinkProxy::forward_to`]).
    pub fn start(upstream: Option<&str>) -> std::io::Result<LinkProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(LinkState::default());
        *lock(&state.upstream) = upstream.map(str::to_string);
        let st = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if st.stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let st = st.clone();
                std::thread::spawn(move || accept(st, client));
            }
        });
        Ok(LinkProxy { addr, state })
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    pub fn forward_to(&self, upstream: &str) {
        *lock(&self.state.upstream) = Some(upstream.to_string());
    }

    pub fn mode(&self) -> LinkMode {
        self.state.mode()
    }

    /// Switches the link; `Cut` cuts the established connections before
    /// returning.
    pub fn set_mode(&self, mode: LinkMode) {
        *lock(&self.state.mode) = Some(mode);
        if mode == LinkMode::Cut {
            let links: Vec<Arc<Link>> = lock(&self.state.links).drain().map(|(_, l)| l).collect();
            for l in links {
                l.cut();
            }
        }
        self.state.changed.notify_all();
    }

    /// Back to `Pass`: held bytes flow, new connections get through.
    pub fn heal(&self) {
        self.set_mode(LinkMode::Pass);
    }

    /// Connections currently forwarded.
    pub fn connections(&self) -> usize {
        lock(&self.state.links).len()
    }

    /// Connections dialed upstream since the start.
    pub fn dialed(&self) -> u64 {
        self.state.dialed.load(Ordering::SeqCst)
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        for (_, l) in lock(&self.state.links).drain() {
            l.cut();
        }
        self.state.changed.notify_all();
        // Wakes the accept loop so it sees `stopped`.
        let _ = TcpStream::connect(self.addr);
    }
}

/// A new connection: held while blackholed, reset while dropping or cut,
/// otherwise dialed upstream and forwarded.
fn accept(st: Arc<LinkState>, client: TcpStream) {
    let mode = st.wait_open(|| false);
    let upstream = lock(&st.upstream).clone();
    if st.stopped.load(Ordering::SeqCst) || matches!(mode, LinkMode::DropNew | LinkMode::Cut) {
        set_linger_zero(&client);
        return;
    }
    let Some(server) = upstream.and_then(|a| TcpStream::connect(a).ok()) else {
        // Nothing to forward to: the dialer sees a reset, as from a dead node.
        set_linger_zero(&client);
        return;
    };
    st.dialed.fetch_add(1, Ordering::SeqCst);
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { return };
    let link = Arc::new(Link { client: c2, server: s2, cut: AtomicBool::new(false) });
    let id = st.next_id.fetch_add(1, Ordering::SeqCst);
    {
        let mut links = lock(&st.links);
        // A cut between the dial and here would miss this link otherwise.
        if st.mode() == LinkMode::Cut {
            drop(links);
            link.cut();
            return;
        }
        links.insert(id, link.clone());
    }
    let remaining = Arc::new(AtomicUsize::new(2));
    let (Ok(c_read), Ok(s_read)) = (client.try_clone(), server.try_clone()) else { return };
    for (from, to) in [(c_read, server), (s_read, client)] {
        let (st, link, remaining) = (st.clone(), link.clone(), remaining.clone());
        std::thread::spawn(move || {
            pump(&st, &link, from, to);
            if remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
                lock(&st.links).remove(&id);
            }
        });
    }
}

/// Copies one direction: a reader thread timestamps chunks as they arrive;
/// this thread writes each once the mode allows (held while blackholed,
/// due at arrival + delay when delayed). The end of the stream is passed on
/// as a half-close.
fn pump(st: &LinkState, link: &Link, mut from: TcpStream, mut to: TcpStream) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });
    for (arrived, chunk) in rx {
        let mode = st.wait_open(|| link.cut.load(Ordering::SeqCst));
        if link.cut.load(Ordering::SeqCst) || st.stopped.load(Ordering::SeqCst) {
            return;
        }
        if let LinkMode::Delay(d) = mode {
            // The delay is the fault being injected, not a wait for an event.
            std::thread::sleep((arrived + d).saturating_duration_since(Instant::now()));
        }
        if to.write_all(&chunk).is_err() {
            return;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

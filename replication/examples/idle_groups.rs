//! Idle cost of many Raft groups: 3 in-process nodes, each on its own single-threaded tokio
//! runtime (one OS thread, so its CPU time is that thread's), N groups × 3 voters with leaders
//! spread, over the real transport on loopback. After the groups settle it samples each node's
//! CPU (utime+stime of its thread) and the bytes and frames it sends, then optionally isolates
//! one node and measures how long its groups take to elect new leaders.
//!
//! cargo run --release -p fjord-replication --example idle_groups -- --heartbeat-ms 250

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fjord_replication::election::ElectionTimings;
use fjord_replication::mem::{MemLog, MemStateMachine};
use fjord_replication::node::{GroupTimings, ReplicaNode};
use fjord_replication::registry::GroupRegistry;
use fjord_replication::transport::{TcpConnector, TcpListener, Transport, TransportConfig};
use fjord_replication::NodeId;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::{BasicNode, ServerState};

const NODES: u64 = 3;

#[derive(Clone, Debug)]
struct Opts {
    groups: u64,
    heartbeat_ms: u64,
    election_min_ms: u64,
    election_max_ms: u64,
    /// `driver`: enable_heartbeat=false and the node-level driver; `openraft`: each group's own
    /// heartbeat timer (for comparison).
    heartbeats: String,
    settle_secs: u64,
    sample_secs: u64,
    failover: bool,
    /// Experiment: openraft's per-group tick turned off after settling (no election timers).
    no_tick: bool,
    /// `group`: openraft's per-group election timers (tick); `node`: tick off, the node-level
    /// election driver pinging peers every `ping_ms`, with `heartbeat_ms` the group heartbeats.
    elections: String,
    ping_ms: u64,
}

fn parse_opts() -> Result<Opts, String> {
    let mut o = Opts {
        groups: 1000,
        heartbeat_ms: 250,
        election_min_ms: 0,
        election_max_ms: 0,
        heartbeats: "driver".into(),
        settle_secs: 5,
        sample_secs: 30,
        failover: true,
        no_tick: false,
        elections: "group".into(),
        ping_ms: 100,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--groups" => o.groups = num(value()?)?,
            "--heartbeat-ms" => o.heartbeat_ms = num(value()?)?,
            "--election-min-ms" => o.election_min_ms = num(value()?)?,
            "--election-max-ms" => o.election_max_ms = num(value()?)?,
            "--heartbeats" => o.heartbeats = value()?,
            "--settle-secs" => o.settle_secs = num(value()?)?,
            "--sample-secs" => o.sample_secs = num(value()?)?,
            "--no-failover" => o.failover = false,
            "--no-tick" => o.no_tick = true,
            "--elections" => o.elections = value()?,
            "--ping-ms" => o.ping_ms = num(value()?)?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if o.elections != "group" && o.elections != "node" {
        return Err("--elections is group or node".into());
    }
    if o.election_min_ms == 0 {
        o.election_min_ms = if o.elections == "node" { 3 * o.ping_ms } else { 3 * o.heartbeat_ms };
    }
    if o.election_max_ms == 0 {
        o.election_max_ms = if o.elections == "node" { o.election_min_ms * 5 / 3 } else { 2 * o.election_min_ms };
    }
    if o.heartbeats != "driver" && o.heartbeats != "openraft" {
        return Err("--heartbeats is driver or openraft".into());
    }
    Ok(o)
}

/// What the measuring thread needs from a node.
struct NodeHandle {
    id: NodeId,
    tid: u32,
    transport: Transport,
    registry: Arc<GroupRegistry<MemStateMachine>>,
    stop: tokio::sync::oneshot::Sender<()>,
}

/// The calling thread's id, from /proc/thread-self -> "<pid>/task/<tid>".
fn current_tid() -> Result<u32, String> {
    let link = std::fs::read_link("/proc/thread-self").map_err(|e| e.to_string())?;
    link.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("unexpected /proc/thread-self: {link:?}"))
}

/// utime + stime of a thread, in clock ticks.
fn thread_cpu_ticks(tid: u32) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).map_err(|e| e.to_string())?;
    // Fields after the parenthesised command name, which may itself contain spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    let utime: u64 = fields.get(11).and_then(|v| v.parse().ok()).ok_or("utime")?;
    let stime: u64 = fields.get(12).and_then(|v| v.parse().ok()).ok_or("stime")?;
    Ok(utime + stime)
}

fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn spawn_node(
    id: NodeId,
    listener: std::net::TcpListener,
    members: BTreeMap<NodeId, BasicNode>,
    opts: Opts,
    started: Arc<tokio::sync::Barrier>,
    ready: std::sync::mpsc::Sender<NodeHandle>,
) -> std::thread::JoinHandle<()> {
    let thread = std::thread::Builder::new().name(format!("node-{id}"));
    let spawned = thread.spawn(move || {
        let tid = current_tid().expect("thread id");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let listener = TcpListener(tokio::net::TcpListener::from_std(listener).expect("listener"));
            let node: ReplicaNode<MemStateMachine> =
                ReplicaNode::new(TransportConfig::new("idle-groups", id), Arc::new(TcpConnector));
            node.serve(listener);
            for (peer, n) in &members {
                node.add_peer(*peer, &n.addr);
            }
            let node_elections = opts.elections == "node";
            let election_timings = ElectionTimings {
                ping_interval: Duration::from_millis(opts.ping_ms),
                election_timeout_min: Duration::from_millis(opts.election_min_ms),
                election_timeout_max: Duration::from_millis(opts.election_max_ms),
            };
            let config = if node_elections {
                election_timings.raft_config("idle-groups")
            } else {
                GroupTimings {
                    heartbeat_interval: Duration::from_millis(opts.heartbeat_ms),
                    election_timeout_min: Duration::from_millis(opts.election_min_ms),
                    election_timeout_max: Duration::from_millis(opts.election_max_ms),
                }
                .config("idle-groups")
            }
            .expect("raft config");
            let config = {
                let mut c = (*config).clone();
                c.enable_heartbeat = opts.heartbeats == "openraft";
                Arc::new(c)
            };
            for group in 1..=opts.groups {
                node.start_group(group, config.clone(), MemLog::default(), MemStateMachine::default())
                    .await
                    .expect("start group");
            }
            let _driver =
                (opts.heartbeats == "driver").then(|| node.start_heartbeats(Duration::from_millis(opts.heartbeat_ms)));
            let _elections = node_elections.then(|| node.start_elections(election_timings));
            started.wait().await;
            // Spread the first elections: group g starts on node g % 3 + 1.
            for group in (1..=opts.groups).filter(|g| g % NODES + 1 == id) {
                let raft = node.group(group).expect("group");
                raft.initialize(members.clone()).await.expect("initialize");
            }
            let (stop, stopped) = tokio::sync::oneshot::channel();
            let handle =
                NodeHandle { id, tid, transport: node.transport().clone(), registry: node.registry().clone(), stop };
            let _ = ready.send(handle);
            let _ = stopped.await;
            node.transport().shutdown();
        });
    });
    match spawned {
        Ok(t) => t,
        Err(e) => panic!("cannot spawn node thread: {e}"),
    }
}

/// One node's counters at an instant.
#[derive(Clone, Copy)]
struct Sample {
    cpu_ticks: u64,
    bytes_sent: u64,
    frames_sent: u64,
    writes: u64,
}

fn sample(n: &NodeHandle) -> Sample {
    let s = n.transport.stats();
    Sample {
        cpu_ticks: thread_cpu_ticks(n.tid).unwrap_or(0),
        bytes_sent: s.bytes_sent,
        frames_sent: s.frames_sent,
        writes: s.writes,
    }
}

/// Groups whose leader is known and acting, as seen from every node.
fn settled_groups(nodes: &[NodeHandle], groups: u64) -> u64 {
    (1..=groups)
        .filter(|g| {
            let mut leader = None;
            for n in nodes {
                let Some(raft) = n.registry.get(*g) else { return false };
                let m = raft.metrics().borrow_watched().clone();
                let Some(l) = m.current_leader else { return false };
                if *leader.get_or_insert(l) != l {
                    return false;
                }
                if l == n.id && m.state != ServerState::Leader {
                    return false;
                }
            }
            true
        })
        .count() as u64
}

/// Sum of every group's term on every node: it moves only when an election happens.
fn term_sum(nodes: &[NodeHandle], groups: u64) -> u64 {
    nodes
        .iter()
        .flat_map(|n| (1..=groups).filter_map(|g| n.registry.get(g)))
        .map(|r| r.metrics().borrow_watched().current_term)
        .sum()
}

fn leaders_of(n: &NodeHandle, groups: u64) -> Vec<u64> {
    (1..=groups).filter(|g| n.registry.get(*g).is_some_and(|r| r.is_leader())).collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let opts = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("idle_groups: {e}");
            std::process::exit(2);
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()))
        .try_init();
    println!(
        "groups={} heartbeat={}ms election={}..{}ms heartbeats={} elections={} ping={}ms",
        opts.groups,
        opts.heartbeat_ms,
        opts.election_min_ms,
        opts.election_max_ms,
        opts.heartbeats,
        opts.elections,
        opts.ping_ms
    );

    let mut listeners = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=NODES {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let addr: SocketAddr = l.local_addr().expect("addr");
        members.insert(id, BasicNode::new(addr.to_string()));
        listeners.push(l);
    }
    let started = Arc::new(tokio::sync::Barrier::new(NODES as usize));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let t0 = Instant::now();
    let threads: Vec<_> = (1..=NODES)
        .zip(listeners)
        .map(|(id, l)| spawn_node(id, l, members.clone(), opts.clone(), started.clone(), ready_tx.clone()))
        .collect();
    let mut nodes: Vec<NodeHandle> = (0..NODES).map(|_| ready_rx.recv().expect("node ready")).collect();
    nodes.sort_by_key(|n| n.id);

    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let settled = settled_groups(&nodes, opts.groups);
        if settled == opts.groups {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("only {settled} of {} groups settled", opts.groups);
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("all groups settled after {:.1}s", t0.elapsed().as_secs_f64());
    if opts.no_tick {
        for n in &nodes {
            for (_, raft) in n.registry.all() {
                raft.runtime_config().tick(false);
            }
        }
    }
    std::thread::sleep(Duration::from_secs(opts.settle_secs));

    let ticks_per_sec = clock_ticks_per_sec() as f64;
    let terms_before = term_sum(&nodes, opts.groups);
    let before: Vec<_> = nodes.iter().map(sample).collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(opts.sample_secs));
    let after: Vec<_> = nodes.iter().map(sample).collect();
    let secs = start.elapsed().as_secs_f64();
    let terms_after = term_sum(&nodes, opts.groups);

    println!("| node | leaders | CPU % of a core | sent KiB/s | frames/s | frames per write |");
    println!("|---|---|---|---|---|---|");
    let mut cpu_max: f64 = 0.0;
    for ((n, b), a) in nodes.iter().zip(&before).zip(&after) {
        let cpu = (a.cpu_ticks - b.cpu_ticks) as f64 / ticks_per_sec / secs * 100.0;
        cpu_max = cpu_max.max(cpu);
        let frames = (a.frames_sent - b.frames_sent) as f64;
        let writes = (a.writes - b.writes).max(1) as f64;
        println!(
            "| {} | {} | {:.2} | {:.1} | {:.0} | {:.1} |",
            n.id,
            leaders_of(n, opts.groups).len(),
            cpu,
            (a.bytes_sent - b.bytes_sent) as f64 / 1024.0 / secs,
            frames / secs,
            frames / writes,
        );
    }
    println!(
        "summary: elections={} heartbeat={}ms election={}..{}ms heartbeats={} max_cpu={:.2}% elections_during_sample={} rss={:.0}MiB sample={:.0}s",
        opts.elections,
        opts.heartbeat_ms,
        opts.election_min_ms,
        opts.election_max_ms,
        opts.heartbeats,
        cpu_max,
        terms_after - terms_before,
        rss_mib(),
        secs
    );

    if opts.failover {
        // Isolate node 1 (its transport stops: connections close, its listener goes away) and time
        // how long each group it led takes to have a new leader acknowledged by both other nodes.
        let victim = &nodes[0];
        let led = leaders_of(victim, opts.groups);
        let t = Instant::now();
        victim.transport.shutdown();
        let mut elapsed = Vec::new();
        let mut waiting = led.clone();
        let deadline = t + Duration::from_secs(30);
        while !waiting.is_empty() && Instant::now() < deadline {
            waiting.retain(|g| {
                let moved = nodes[1..].iter().all(|n| {
                    n.registry.get(*g).is_some_and(|r| {
                        let m = r.metrics().borrow_watched().clone();
                        m.current_leader.is_some_and(|l| l != victim.id)
                    })
                });
                if moved {
                    elapsed.push(t.elapsed());
                }
                !moved
            });
            std::thread::sleep(Duration::from_millis(5));
        }
        elapsed.sort();
        println!(
            "failover: {} groups led by the isolated node; new leader after p50={}ms p99={}ms max={}ms; {} not moved in 30s",
            led.len(),
            percentile(&elapsed, 0.5).as_millis(),
            percentile(&elapsed, 0.99).as_millis(),
            elapsed.last().copied().unwrap_or_default().as_millis(),
            waiting.len()
        );
    }

    for n in nodes {
        let _ = n.stop.send(());
    }
    for t in threads {
        let _ = t.join();
    }
}

//! `fjord-bench`: measures a Fjord broker the way the field measures
//! brokers (OpenMessaging Benchmark workloads, librdkafka clients), next to
//! the machine's own disk and loopback ceilings taken in the same run.

mod ceilings;
mod driver;
mod proc;
mod raw;
mod report;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "fjord-bench", about = "OpenMessaging-style benchmark of a Fjord broker")]
struct Args {
    /// Workload files (OMB YAML); default: every file in bench/workloads.
    workloads: Vec<PathBuf>,
    /// The broker binary to start for each workload (a fresh data dir each).
    #[arg(long)]
    broker_bin: Option<PathBuf>,
    /// Benchmark an already running broker instead (no CPU/RSS figures).
    #[arg(long, conflicts_with = "broker_bin")]
    bootstrap: Option<String>,
    /// Where results.json, results.md and the plots go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Overrides every workload's testDurationMinutes (seconds).
    #[arg(long)]
    duration_secs: Option<f64>,
    /// Where the broker's data dirs and the disk ceiling's file go (the disk
    /// measured should be the broker's).
    #[arg(long, default_value = ".")]
    data_parent: PathBuf,
    /// A flag for the broker (repeat for more), e.g. `--broker-arg=--fsync=never`.
    #[arg(long, allow_hyphen_values = true)]
    broker_arg: Vec<String>,
    /// A seconds-long run of a small workload: checks that the tool works.
    #[arg(long)]
    smoke: bool,
    /// Cluster sizes to run every workload on, in order, e.g. `1,3`: each size is that many
    /// `fjord` processes on this machine, each a controller voter, and topics get
    /// `--replication-factor` replicas (default: the size, at most 3). With more than one size,
    /// the report gives each run as ratios of the same workload on the first size.
    #[arg(long, value_delimiter = ',', default_value = "1", conflicts_with = "bootstrap")]
    nodes: Vec<u32>,
    /// Replicas of the topics the runs create (default: the cluster's size, at most 3; 1 with
    /// `--bootstrap`).
    #[arg(long)]
    replication_factor: Option<u32>,
    /// Runs every workload on all the `--nodes` sizes this many times, alternating sizes, so
    /// that a slow spell of this shared machine lands on one round rather than on one size;
    /// the report gives each round's ratios and their median.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
}

fn default_broker_bin() -> PathBuf {
    let root = workload::manifest_dir().join("..");
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    let release = target.join("release/fjord");
    if release.exists() {
        release
    } else {
        target.join("debug/fjord")
    }
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("fjord-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut workloads = Vec::new();
    let files = if args.workloads.is_empty() {
        workload::files_in(&workload::manifest_dir().join("workloads"))?
    } else {
        args.workloads.clone()
    };
    for f in &files {
        let mut w = workload::Workload::load(f)?;
        if args.smoke {
            // Small enough to finish in seconds on a debug build.
            w.consumer_backlog_messages = w.consumer_backlog_messages.min(20_000);
            w.producer_rate = if w.producer_rate_of_max.is_some() { 0.0 } else { w.producer_rate };
            w.producer_rate_of_max = None;
        }
        workloads.push(w);
    }
    if args.smoke {
        workloads.truncate(2);
    }
    if let Some(bad) = args.nodes.iter().find(|n| **n == 0 || **n > 9) {
        anyhow::bail!("--nodes: a cluster size must be 1 to 9, got {bad}");
    }
    if let Some(rf) = args.replication_factor {
        let smallest = if args.bootstrap.is_some() { u32::MAX } else { args.nodes.iter().copied().min().unwrap_or(1) };
        anyhow::ensure!(
            rf >= 1 && rf <= smallest,
            "--replication-factor {rf}: must be at least 1 and at most the smallest cluster size ({smallest})"
        );
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    std::fs::create_dir_all(&args.data_parent)?;
    eprintln!("measuring the machine's ceilings (disk, loopback)…");
    let ceilings = ceilings::measure(&args.data_parent, args.smoke)?;
    eprintln!(
        "  disk {:.0} MB/s, disk with fdatasync {:.0} MB/s, loopback {:.0} MB/s",
        ceilings.disk_write_mb_s, ceilings.disk_write_fsync_mb_s, ceilings.loopback_mb_s
    );
    let broker_bin = args.broker_bin.clone().unwrap_or_else(default_broker_bin);
    let mut runs = Vec::new();
    let sizes = if args.bootstrap.is_some() { vec![1] } else { args.nodes.clone() };
    let rounds = if sizes.len() > 1 { args.rounds } else { 1 };
    let per_workload = sizes.len() * rounds as usize;
    let total = workloads.len() * per_workload;
    for (i, w) in workloads.iter().enumerate() {
        let duration = Duration::from_secs_f64(match (args.smoke, args.duration_secs) {
            (true, _) => 3.0,
            (false, Some(s)) => s,
            (false, None) => w.test_duration_minutes * 60.0,
        });
        let order = (0..rounds).flat_map(|round| sizes.iter().map(move |&nodes| (round, nodes)));
        for (j, (round, nodes)) in order.enumerate() {
            let replication =
                args.replication_factor.unwrap_or(if args.bootstrap.is_some() { 1 } else { nodes.min(3) });
            let on = if nodes > 1 { format!(" on {nodes} nodes (RF {replication})") } else { String::new() };
            let n = i * per_workload + j + 1;
            let of_round = if rounds > 1 { format!(", round {}/{rounds}", round + 1) } else { String::new() };
            eprintln!("[{n}/{total}] {}{on}{of_round} for {:.0}s", w.name, duration.as_secs_f64());
            // Topic names carry the run number, unique over the whole invocation.
            let run_no = n - 1;
            let mut result = match &args.bootstrap {
                Some(b) => {
                    let target = driver::Target { bootstrap: b, broker: None, quiet: false, nodes: 1, replication };
                    driver::run(&target, w, run_no, duration)?
                }
                None if nodes == 1 => {
                    let broker = proc::Broker::start(&broker_bin, &args.data_parent, &args.broker_arg)?;
                    let target = driver::Target {
                        bootstrap: &broker.bootstrap,
                        broker: Some(&broker.stats),
                        quiet: false,
                        nodes,
                        replication,
                    };
                    driver::run(&target, w, run_no, duration)?
                }
                None => {
                    let cluster =
                        proc::Cluster::start(&broker_bin, &args.data_parent, &args.broker_arg, nodes as usize)?;
                    let target = driver::Target {
                        bootstrap: &cluster.bootstrap,
                        broker: Some(&cluster.stats),
                        quiet: false,
                        nodes,
                        replication,
                    };
                    driver::run(&target, w, run_no, duration)?
                }
            };
            if rounds > 1 {
                result.round = Some(round + 1);
                // Plot file names come from the slug: one per round.
                result.slug = format!("{}-round-{}", result.slug, round + 1);
            }
            eprintln!(
                "  => {:.0} msgs/s ({:.1} MB/s) produced, {:.1} MB/s consumed, e2e p99 {:.1} ms",
                result.produce_msgs_s, result.produce_mb_s, result.consume_mb_s, result.end_to_end_latency.p99_ms
            );
            runs.push(result);
        }
    }
    let report = report::Report {
        date_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        cores,
        broker: args.bootstrap.clone().unwrap_or_else(|| broker_bin.display().to_string()),
        ceilings,
        runs,
    };
    report::write_all(&report, &args.out)?;
    println!("{}", report::markdown(&report));
    eprintln!("results in {}", args.out.display());
    Ok(())
}

//! `fjordctl local start|stop|status`: a cluster of `fjord` processes on this machine for
//! development, each with its data dir and log under one directory the user can find.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Subcommand;
use serde::{Deserialize, Serialize};

use crate::error::{CliError, Result};
use crate::http::Admin;
use crate::output::{emit, Progress, Table};
use crate::Cli;

#[derive(Subcommand)]
pub enum LocalCmd {
    /// Starts N nodes (a controller quorum of all of them when N > 1)
    Start {
        #[arg(short, long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
        nodes: u16,
        /// Where the nodes' data dirs and logs go (default ~/.local/share/fjordctl/local)
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Node i's Kafka port is base+i-1, its cluster port base+100+i-1, its admin API
        /// base+552+i-1 (9644 for the default base)
        #[arg(long, default_value_t = 9092, value_parser = clap::value_parser!(u16).range(1024..=60000))]
        base_port: u16,
        /// The fjord binary (default: next to fjordctl, else on PATH)
        #[arg(long)]
        fjord: Option<PathBuf>,
        /// Deletes the nodes' data from an earlier run first
        #[arg(long)]
        fresh: bool,
    },
    /// Stops the local cluster (its data stays for the next start)
    Stop {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The local cluster's nodes, their addresses, logs and whether they run
    Status {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Serialize, Deserialize, Clone)]
struct Node {
    id: u16,
    pid: i32,
    kafka: String,
    admin: String,
    cluster: Option<String>,
    data_dir: PathBuf,
    log: PathBuf,
    #[serde(default)]
    running: bool,
}

#[derive(Serialize, Deserialize)]
struct State {
    nodes: Vec<Node>,
}

fn base_dir(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = flag {
        return Ok(d.to_path_buf());
    }
    let data = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(h) => PathBuf::from(h).join(".local").join("share"),
            None => return Err(CliError::usage("no directory for the local cluster: set --dir or HOME")),
        },
    };
    Ok(data.join("fjordctl").join("local"))
}

fn alive(pid: i32) -> bool {
    // Signal 0 checks the process exists; a zombie child of ours would count, but the nodes are
    // not our children once started (setsid, and fjordctl exits).
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

fn load(dir: &Path) -> Result<Option<State>> {
    match std::fs::read_to_string(dir.join("cluster.json")) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| CliError::failed(format!("{}: {e}", dir.join("cluster.json").display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CliError::failed(format!("{}: {e}", dir.join("cluster.json").display()))),
    }
}

fn fjord_binary(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(f) = flag {
        if !f.is_file() {
            return Err(CliError::usage(format!("--fjord {}: no such file", f.display())));
        }
        return Ok(f.to_path_buf());
    }
    if let Some(beside) = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join("fjord"))) {
        if beside.is_file() {
            return Ok(beside);
        }
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let f = dir.join("fjord");
        if f.is_file() {
            return Ok(f);
        }
    }
    Err(CliError::usage("no fjord binary next to fjordctl or on PATH: give --fjord PATH"))
}

pub fn run(cmd: &LocalCmd, cli: &Cli) -> Result<()> {
    match cmd {
        LocalCmd::Start { nodes, dir, base_port, fjord, fresh } => {
            start(cli, *nodes, &base_dir(dir.as_deref())?, *base_port, fjord.as_deref(), *fresh)
        }
        LocalCmd::Stop { dir } => stop(cli, &base_dir(dir.as_deref())?),
        LocalCmd::Status { dir } => status(cli, &base_dir(dir.as_deref())?),
    }
}

/// How long `local start` waits for every node to be ready.
const READY_WAIT: Duration = Duration::from_secs(90);

fn start(cli: &Cli, n: u16, dir: &Path, base: u16, fjord: Option<&Path>, fresh: bool) -> Result<()> {
    if let Some(state) = load(dir)? {
        if state.nodes.iter().any(|n| alive(n.pid)) {
            return Err(CliError::failed(format!(
                "a local cluster is already running from {} (fjordctl local stop)",
                dir.display()
            )));
        }
    }
    let bin = fjord_binary(fjord)?;
    if fresh {
        for i in 1..=9 {
            let d = dir.join(format!("node-{i}"));
            if d.exists() {
                std::fs::remove_dir_all(&d).map_err(|e| CliError::failed(format!("{}: {e}", d.display())))?;
            }
        }
    }
    let port = |offset: u16, i: u16| base + offset + i - 1;
    let voters: Vec<String> = (1..=n).map(|i| format!("{i}@127.0.0.1:{}", port(100, i))).collect();
    let mut nodes = Vec::new();
    // Kept while the nodes start: a child that exits is a zombie until waited for, which
    // `kill(pid, 0)` would take for alive.
    let mut children = Vec::new();
    for i in 1..=n {
        let node_dir = dir.join(format!("node-{i}"));
        let data_dir = node_dir.join("data");
        std::fs::create_dir_all(&data_dir).map_err(|e| CliError::failed(format!("{}: {e}", data_dir.display())))?;
        let log = node_dir.join("fjord.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| CliError::failed(format!("{}: {e}", log.display())))?;
        let kafka = format!("127.0.0.1:{}", port(0, i));
        let admin = format!("127.0.0.1:{}", port(552, i));
        let mut cmd = Command::new(&bin);
        cmd.args(["--node-id", &i.to_string(), "--listen", &kafka, "--advertised-listener", &kafka])
            .args(["--admin-listen", &admin, "--broker-rack", &format!("rack-{i}")])
            .arg("--data-dir")
            .arg(&data_dir);
        let cluster = (n > 1).then(|| format!("127.0.0.1:{}", port(100, i)));
        if let Some(c) = &cluster {
            cmd.args(["--cluster-listen", c, "--controller-quorum-voters", &voters.join(",")]);
        }
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // Its own session: the node outlives this command and the terminal's Ctrl-C.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| CliError::failed(format!("starting {}: {e}", bin.display())))?;
        let pid = child.id() as i32;
        children.push(child);
        nodes.push(Node { id: i, pid, kafka, admin: format!("http://{admin}"), cluster, data_dir, log, running: true });
    }
    let state = State { nodes };
    std::fs::write(dir.join("cluster.json"), serde_json::to_string_pretty(&state).unwrap_or_default())?;
    let progress = Progress::new();
    let deadline = Instant::now() + READY_WAIT;
    loop {
        let mut ready = 0;
        for (node, child) in state.nodes.iter().zip(children.iter_mut()) {
            if !matches!(child.try_wait(), Ok(None)) {
                return Err(CliError::failed(format!(
                    "node {} exited while starting: see {}",
                    node.id,
                    node.log.display()
                )));
            }
            let admin = Admin::new(&node.admin, Duration::from_secs(2))?;
            if admin.get("/v1/ready").is_ok_and(|(status, _)| status == 200) {
                ready += 1;
            }
        }
        progress.update(&format!("{ready}/{} nodes ready", state.nodes.len()));
        if ready == state.nodes.len() {
            progress.done(&format!("{ready} nodes ready"));
            break;
        }
        if Instant::now() >= deadline {
            return Err(CliError::failed(format!(
                "{ready}/{} nodes ready after {}s: see the logs under {}",
                state.nodes.len(),
                READY_WAIT.as_secs(),
                dir.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    show(cli, &state);
    if cli.format == crate::output::Format::Table {
        let brokers: Vec<&str> = state.nodes.iter().map(|n| n.kafka.as_str()).collect();
        println!(
            "\nbrokers: {}\nuse it:  export FJORD_BROKERS={} FJORD_ADMIN_URL={}",
            brokers.join(","),
            brokers.join(","),
            state.nodes[0].admin
        );
    }
    Ok(())
}

fn show(cli: &Cli, state: &State) {
    emit(cli.format, &state.nodes, |nodes| {
        let mut t = Table::new(&["NODE", "PID", "KAFKA", "ADMIN API", "RUNNING", "LOG"]);
        for n in nodes {
            t.row(vec![
                n.id.to_string(),
                n.pid.to_string(),
                n.kafka.clone(),
                n.admin.clone(),
                n.running.to_string(),
                n.log.display().to_string(),
            ]);
        }
        t
    });
}

/// How long `local stop` waits for a node to shut down cleanly before killing it.
const STOP_WAIT: Duration = Duration::from_secs(30);

fn stop(cli: &Cli, dir: &Path) -> Result<()> {
    let Some(mut state) = load(dir)? else {
        return Err(CliError::failed(format!("no local cluster in {}", dir.display())));
    };
    let progress = Progress::new();
    for n in &state.nodes {
        if alive(n.pid) {
            unsafe {
                libc::kill(n.pid, libc::SIGTERM);
            }
        }
    }
    let deadline = Instant::now() + STOP_WAIT;
    loop {
        let left = state.nodes.iter().filter(|n| alive(n.pid)).count();
        if left == 0 {
            break;
        }
        progress.update(&format!("waiting for {left} node(s) to stop"));
        if Instant::now() >= deadline {
            for n in state.nodes.iter().filter(|n| alive(n.pid)) {
                unsafe {
                    libc::kill(n.pid, libc::SIGKILL);
                }
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    progress.done("stopped");
    for n in &mut state.nodes {
        n.running = false;
    }
    std::fs::remove_file(dir.join("cluster.json"))?;
    show(cli, &state);
    Ok(())
}

fn status(cli: &Cli, dir: &Path) -> Result<()> {
    let Some(mut state) = load(dir)? else {
        return Err(CliError::failed(format!("no local cluster in {}", dir.display())));
    };
    for n in &mut state.nodes {
        n.running = alive(n.pid);
    }
    show(cli, &state);
    Ok(())
}

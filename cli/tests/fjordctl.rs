//! Every fjordctl command against live `fjord` processes: a single node and a 3-node cluster,
//! its JSON output parsed and checked against what the brokers hold, and bad arguments and
//! unreachable brokers answered with one clear line and the documented exit code.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Run;
use fjord_compat_tests::cluster::LocalCluster;
use fjord_compat_tests::{broker_bin, free_addr, free_port, wait_until, BrokerProcess};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(30);
/// How long one fjordctl command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

struct Ctl {
    env: Vec<(String, String)>,
    _config: tempfile::TempDir,
}

impl Ctl {
    /// fjordctl with its own (empty) profiles file and the given connection variables.
    fn new(brokers: &str, admin: &str) -> Ctl {
        let config = tempfile::tempdir().unwrap();
        let env = vec![
            ("FJORD_BROKERS".to_string(), brokers.to_string()),
            ("FJORD_ADMIN_URL".to_string(), format!("http://{admin}")),
            ("FJORDCTL_CONFIG".to_string(), config.path().join("config.toml").display().to_string()),
        ];
        Ctl { env, _config: config }
    }

    fn run_with(&self, args: &[&str], stdin: &str, without: &[&str]) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fjordctl"));
        cmd.args(args)
            .envs(self.env.iter().filter(|(k, _)| !without.contains(&k.as_str())).map(|(k, v)| (k, v)))
            .env_remove("FJORD_PROFILE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for w in without {
            cmd.env_remove(w);
        }
        let mut child = cmd.spawn().expect("run fjordctl");
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        common::bounded(child, args, COMMAND_LIMIT)
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, "", &[])
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        self.run(&all).json()
    }
}

fn values(records: &str) -> Vec<Value> {
    records.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn every_command_against_a_single_node() {
    let admin = free_addr();
    let broker = BrokerProcess::start(&["--admin-listen", &admin]);
    every_command(&broker.bootstrap(), &admin, 1);
}

/// The sum over `topic`'s partitions of their high watermarks, as `topic describe` shows them.
fn high_watermarks(ctl: &Ctl, topic: &str) -> i64 {
    let d = ctl.json(&["topic", "describe", topic]);
    d["partitions"].as_array().unwrap().iter().map(|p| p["high_watermark"].as_i64().unwrap()).sum()
}

/// Every command against the cluster at `bootstrap` (its first node's admin API at `admin`),
/// of `nodes` brokers. Offsets are compared with the high watermarks the brokers show, which on
/// a cluster also count Raft's own entries.
fn every_command(bootstrap: &str, admin: &str, nodes: usize) {
    let ctl = Ctl::new(bootstrap, admin);
    let created = ctl.json(&["topic", "create", "orders", "-p", "3", "-c", "retention.ms=3600000"]);
    assert_eq!(created["partitions"], 3);
    assert_eq!(created["replication_factor"].as_u64(), Some(nodes.min(3) as u64));
    let topics = ctl.json(&["topic", "list"]);
    let names: Vec<&str> = topics.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["orders"], "internal topics hidden");

    // Keyed records go where the Java client's partitioner puts them: one key, one partition.
    let lines = "user1:a\nuser2:b\nuser1:c\nuser3:d\nuser2:e\nuser1:f\n";
    let produced =
        ctl.run_with(&["topic", "produce", "orders", "-k", ":", "-H", "src=test", "-o", "json"], lines, &[]).json();
    let total: i64 = produced.as_array().unwrap().iter().map(|p| p["records"].as_i64().unwrap()).sum();
    assert_eq!(total, 6);
    let read = ctl.run(&["topic", "consume", "orders", "-e", "-o", "json"]);
    assert_eq!(read.code, 0, "{}", read.stderr);
    let records = values(&read.stdout);
    assert_eq!(records.len(), 6);
    for key in ["user1", "user2", "user3"] {
        let parts: std::collections::BTreeSet<i64> =
            records.iter().filter(|r| r["key"] == key).map(|r| r["partition"].as_i64().unwrap()).collect();
        assert_eq!(parts.len(), 1, "{key} on one partition: {parts:?}");
    }
    let user1: Vec<&str> =
        records.iter().filter(|r| r["key"] == "user1").map(|r| r["value"].as_str().unwrap()).collect();
    assert_eq!(user1, vec!["a", "c", "f"], "in order within the partition");
    assert!(records.iter().all(|r| r["headers"]["src"] == "test"));
    let p = records[0]["partition"].as_i64().unwrap();
    let first = records.iter().filter(|r| r["partition"] == p).map(|r| r["offset"].as_i64().unwrap()).min().unwrap();
    let formatted = ctl.run(&["topic", "consume", "orders", "-p", &p.to_string(), "-e", "-f", "%p:%o:%k=%s\\n"]);
    assert!(formatted.stdout.starts_with(&format!("{p}:{first}:")), "{}", formatted.stdout);
    assert_eq!(ctl.run(&["topic", "consume", "orders", "-n", "2"]).stdout.lines().count(), 2);
    let used: std::collections::BTreeSet<i64> = records.iter().map(|r| r["partition"].as_i64().unwrap()).collect();
    let last = ctl.run(&["topic", "consume", "orders", "--offset", "-1", "-e", "-f", "%s\\n"]);
    assert_eq!(last.stdout.lines().count(), used.len(), "the last record of each partition: {}", last.stdout);

    let described = ctl.json(&["topic", "describe", "orders"]);
    assert_eq!(described["configs"]["retention.ms"], "3600000");
    for p in described["partitions"].as_array().unwrap() {
        assert_eq!(p["replicas"].as_array().unwrap().len(), nodes.min(3), "{p}");
    }

    // A group member reads everything and commits; lag shows what is produced after.
    let member = ctl.run(&["topic", "consume", "orders", "-g", "billing", "-e", "-o", "json"]);
    assert_eq!(values(&member.stdout).len(), 6, "{}", member.stderr);
    let all = ctl.json(&["topic", "list", "--internal"]);
    assert!(all.as_array().unwrap().iter().any(|t| t["name"] == "__consumer_offsets"));
    let group = ctl.json(&["group", "describe", "billing"]);
    assert_eq!(group["total_lag"], 0, "{group}");
    ctl.run_with(&["topic", "produce", "orders", "-p", "0"], "x\ny\n", &[]).json_or_table();
    let group = ctl.json(&["group", "describe", "billing"]);
    let committed_sum: i64 =
        group["offsets"].as_array().unwrap().iter().map(|o| o["committed"].as_i64().unwrap()).sum();
    assert_eq!(group["total_lag"].as_i64(), Some(high_watermarks(&ctl, "orders") - committed_sum), "{group}");
    assert!(group["total_lag"].as_i64() >= Some(2), "{group}");
    let again = ctl.run(&["topic", "consume", "orders", "-g", "billing", "-e", "-f", "%s\\n"]);
    assert_eq!(again.stdout, "x\ny\n", "the member resumes from the group's offsets");
    assert!(ctl.json(&["group", "list"]).as_array().unwrap().iter().any(|g| g["group"] == "billing"));

    // Offset resets: a dry run changes nothing; each target moves the committed offsets.
    let dry = ctl.json(&["group", "reset-offsets", "billing", "--topic", "orders", "--to-earliest", "--dry-run"]);
    assert!(dry.as_array().unwrap().iter().all(|r| r["new"] == 0));
    assert_eq!(ctl.json(&["group", "describe", "billing"])["total_lag"], 0);
    ctl.json(&["group", "reset-offsets", "billing", "--topic", "orders", "--to-earliest"]);
    assert_eq!(
        ctl.json(&["group", "describe", "billing"])["total_lag"].as_i64(),
        Some(high_watermarks(&ctl, "orders"))
    );
    ctl.json(&["group", "reset-offsets", "billing", "--topic", "orders", "--shift-by", "1", "-p", "0"]);
    let committed = |g: &Value, p: i64| {
        g["offsets"].as_array().unwrap().iter().find(|o| o["partition"] == p).unwrap()["committed"].as_i64().unwrap()
    };
    assert_eq!(committed(&ctl.json(&["group", "describe", "billing"]), 0), 1);
    ctl.json(&["group", "reset-offsets", "billing", "--topic", "orders", "--to-latest"]);
    assert_eq!(ctl.json(&["group", "describe", "billing"])["total_lag"], 0);
    ctl.run(&["group", "reset-offsets", "billing", "--topic", "orders"]).refused(2, "--to-earliest");

    let configs =
        ctl.json(&["topic", "alter-config", "orders", "--set", "cleanup.policy=compact", "--delete", "retention.ms"]);
    assert_eq!(configs["cleanup.policy"], "compact");
    assert!(configs.get("retention.ms").is_none(), "{configs}");
    ctl.json(&["topic", "add-partitions", "orders", "--total", "4"]);
    assert_eq!(ctl.json(&["topic", "describe", "orders"])["partitions"].as_array().unwrap().len(), 4);

    let info = ctl.json(&["cluster", "info"]);
    assert_eq!(info["brokers"].as_array().unwrap().len(), nodes);
    // A new internal topic's partitions elect their leaders: healthy once they have.
    wait_until(DEADLINE, "the cluster healthy", || ctl.run(&["cluster", "health"]).code == 0);
    assert_eq!(ctl.json(&["cluster", "health"])["healthy"], true);
    wait_until(DEADLINE, "no partition under-replicated", || {
        ctl.json(&["cluster", "partitions", "--under-replicated"]).as_array().unwrap().is_empty()
    });
    assert!(ctl.json(&["cluster", "partitions", "--leaderless"]).as_array().unwrap().is_empty());
    let broker_configs = ctl.json(&["cluster", "config"]);
    assert!(broker_configs.get("num.partitions").is_some(), "{broker_configs}");

    ctl.json(&["group", "delete", "billing"]);
    ctl.run(&["group", "describe", "billing"]).refused(1, "billing");
    ctl.json(&["topic", "delete", "orders"]);
    ctl.run(&["topic", "describe", "orders"]).refused(1, "UnknownTopicOrPartition");

    // Bad arguments and unreachable brokers: one line, the documented exit code.
    ctl.run(&["topic", "create", "t", "-p", "0"]).refused(2, "--partitions must be at least 1");
    ctl.run(&["--brokers", "nohost", "topic", "list"]).refused(2, "not host:port");
    ctl.run(&["--brokers", "127.0.0.1:1", "topic", "list"]).refused(3, "cannot reach any broker");
    ctl.run(&["--admin-url", "http://127.0.0.1:1", "cluster", "health"]).refused(3, "admin API");
    ctl.run(&["--admin-url", "ftp://x", "cluster", "health"]).refused(2, "http://");
    ctl.run(&["--profile", "nope", "topic", "list"]).refused(2, "no profile named \"nope\"");
    ctl.run(&["topic", "consume", "nope", "-e"]).refused(1, "UnknownTopicOrPartition");
    let missing = ctl.run(&["topic", "create"]);
    assert_eq!(missing.code, 2);
    assert!(missing.stderr.contains("<NAME>"), "{}", missing.stderr);

    // Profiles: saved from the connection flags, used when no flag or variable is given.
    let url = format!("http://{admin}");
    let saved = ctl.run(&["profile", "create", "dev", "--brokers", bootstrap, "--admin-url", &url, "--use"]);
    assert_eq!(saved.code, 0, "{}", saved.stderr);
    let profiles = ctl.json(&["profile", "list"]);
    assert_eq!(profiles[0]["name"], "dev");
    assert_eq!(profiles[0]["current"], true);
    let via_profile = ctl.run_with(&["cluster", "info", "-o", "json"], "", &["FJORD_BROKERS", "FJORD_ADMIN_URL"]);
    assert_eq!(via_profile.json()["brokers"].as_array().unwrap().len(), nodes);
    ctl.run(&["profile", "use", "prod"]).refused(2, "no profile named \"prod\"");
    ctl.run(&["profile", "delete", "dev"]).json_or_table();
    assert!(ctl.json(&["profile", "list"]).as_array().unwrap().is_empty());

    let completion = ctl.run(&["completion", "bash"]);
    assert!(completion.code == 0 && completion.stdout.contains("fjordctl"), "{}", completion.stderr);
    let help = ctl.run(&["--help"]);
    assert!(help.stdout.contains("Examples:") && help.stdout.contains("Exit codes"), "{}", help.stdout);
    assert!(ctl.run(&["group", "--help"]).stdout.contains("reset-offsets billing"));
}

trait JsonOrTable {
    fn json_or_table(&self);
}

impl JsonOrTable for Run {
    /// The command succeeded (its table output is not parsed).
    fn json_or_table(&self) {
        assert_eq!(self.code, 0, "{}{}", self.stdout, self.stderr);
    }
}

/// A base port whose node ports (`local start`'s layout) are all free now.
fn free_base() -> u16 {
    loop {
        let base = free_port();
        if base > 31_000 {
            continue;
        }
        let ports = (0..3).flat_map(|i| [base + i, base + 100 + i, base + 552 + i]);
        if ports.into_iter().all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
}

#[test]
fn cluster_commands_against_three_nodes_and_a_local_cluster() {
    let cluster = LocalCluster::start(3);
    cluster.wait_formed(DEADLINE);
    every_command(&cluster.bootstrap(), &cluster.metrics[0], 3);
    let ctl = Ctl::new(&cluster.bootstrap(), &cluster.metrics[0]);
    ctl.json(&["topic", "create", "events", "-p", "3", "-r", "3"]);
    let parts = ctl.json(&["cluster", "partitions", "--topic", "events"]);
    assert!(parts.as_array().unwrap().iter().all(|p| p["replicas"].as_array().unwrap().len() == 3), "{parts}");
    ctl.run_with(&["topic", "produce", "events"], "1\n2\n3\n4\n", &[]).json_or_table();

    // A move to two replicas, waited for; nothing left in progress after.
    let moved = ctl.json(&["cluster", "reassign", "--topic", "events", "-p", "0", "--replicas", "3,2", "--wait"]);
    assert_eq!(moved["complete"], true, "{moved}");
    let p0 = &ctl.json(&["cluster", "partitions", "--topic", "events"])[0];
    assert_eq!(p0["replicas"], serde_json::json!([3, 2]), "{p0}");
    assert_eq!(ctl.json(&["cluster", "reassign", "--list"]).as_array().unwrap().len(), 0);
    ctl.run(&["cluster", "reassign", "--topic", "events", "--replicas", "1,1"]).refused(2, "names a broker twice");
    ctl.run(&["cluster", "reassign", "--topic", "events", "--replicas", "1,2,9"]).refused(1, "events");

    // Preferred leaders: every partition led by its first replica once elected.
    let elected = ctl.json(&["cluster", "elect-leaders", "--topic", "events"]);
    assert_eq!(elected.as_array().unwrap().len(), 3, "{elected}");
    wait_until(DEADLINE, "every partition led by its first replica", || {
        let parts = ctl.json(&["cluster", "partitions", "--topic", "events"]);
        parts.as_array().unwrap().iter().all(|p| p["leader"] == p["replicas"][0])
    });
    let unclean = ctl.run(&["cluster", "elect-leaders", "--topic", "events", "--type", "unclean", "-o", "json"]);
    assert!(unclean.json().as_array().unwrap().iter().all(|r| r["result"] == "not needed"), "{}", unclean.stdout);

    let read = ctl.run(&["topic", "consume", "events", "-e", "-g", "audit", "-f", "%s\\n"]);
    let mut got: Vec<&str> = read.stdout.lines().collect();
    got.sort();
    assert_eq!(got, vec!["1", "2", "3", "4"], "{}", read.stderr);
    let group = ctl.json(&["group", "describe", "audit"]);
    assert!(group["coordinator"].as_i64().unwrap() >= 1, "{group}");
    assert_eq!(group["total_lag"], 0);
    // __consumer_offsets was created by the group's first FindCoordinator: healthy once every
    // one of its partitions has a leader and every replica has caught up.
    wait_until(DEADLINE, "the cluster healthy", || ctl.run(&["cluster", "health"]).code == 0);
    let unhealthy = ctl.run(&["--admin-url", "http://127.0.0.1:1", "cluster", "health"]);
    unhealthy.refused(3, "admin API");
    assert_eq!(ctl.json(&["cluster", "info"])["brokers"].as_array().unwrap().len(), 3);

    // `local start` runs a cluster of its own, which the other commands reach.
    let dir = tempfile::tempdir().unwrap();
    let base = free_base().to_string();
    let dir_arg = dir.path().display().to_string();
    let fjord = broker_bin().display().to_string();
    let started =
        ctl.json(&["local", "start", "--nodes", "3", "--dir", &dir_arg, "--base-port", &base, "--fjord", &fjord]);
    assert_eq!(started.as_array().unwrap().len(), 3, "{started}");
    let kafka: Vec<String> =
        started.as_array().unwrap().iter().map(|n| n["kafka"].as_str().unwrap().to_string()).collect();
    let local = Ctl::new(&kafka.join(","), started[0]["admin"].as_str().unwrap().trim_start_matches("http://"));
    local.json(&["topic", "create", "dev", "-r", "3"]);
    assert_eq!(local.json(&["cluster", "info"])["brokers"].as_array().unwrap().len(), 3);
    assert!(dir.path().join("node-1").join("fjord.log").exists());
    ctl.run(&["local", "start", "--nodes", "3", "--dir", &dir_arg, "--base-port", &base, "--fjord", &fjord])
        .refused(1, "already running");
    let status = ctl.json(&["local", "status", "--dir", &dir_arg]);
    assert!(status.as_array().unwrap().iter().all(|n| n["running"] == true), "{status}");
    let stopped = ctl.json(&["local", "stop", "--dir", &dir_arg]);
    assert!(stopped.as_array().unwrap().iter().all(|n| n["running"] == false));
    local.run(&["topic", "list"]).refused(3, "cannot reach any broker");
    ctl.run(&["local", "stop", "--dir", &dir_arg]).refused(1, "no local cluster");
}

/// read_committed skips an aborted transaction's records and keeps the same producer's later
/// committed ones (written by confluent-kafka's transactional producer); two group members split
/// a topic's partitions between them, the second joining while the first consumes.
#[test]
fn transactions_and_a_shared_group() {
    let admin = free_addr();
    let broker = BrokerProcess::start(&["--admin-listen", &admin]);
    let ctl = Ctl::new(&broker.bootstrap(), &admin);
    ctl.json(&["topic", "create", "payments", "-p", "1"]);
    let script = r#"
import sys
from confluent_kafka import Producer
p = Producer({"bootstrap.servers": sys.argv[1], "transactional.id": "fjordctl-test"})
p.init_transactions()
# Flushed before each abort: records still queued in the client would be dropped, not written.
p.begin_transaction(); p.produce("payments", b"aborted-1"); p.produce("payments", b"aborted-2"); p.flush(); p.abort_transaction()
p.begin_transaction(); p.produce("payments", b"committed-1"); p.commit_transaction()
p.begin_transaction(); p.produce("payments", b"aborted-3"); p.flush(); p.abort_transaction()
p.begin_transaction(); p.produce("payments", b"committed-2"); p.commit_transaction()
"#;
    let out = fjord_compat_tests::client(fjord_compat_tests::python())
        .args(["-c", script, &broker.bootstrap()])
        .output()
        .expect("python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let committed = ctl.run(&["topic", "consume", "payments", "-e", "--read-committed", "-f", "%s\\n"]);
    assert_eq!(committed.stdout, "committed-1\ncommitted-2\n", "{}", committed.stderr);
    let all = ctl.run(&["topic", "consume", "payments", "-e", "-f", "%s\\n"]);
    assert_eq!(all.stdout.lines().count(), 5, "{}", all.stdout);

    // Two members of one group: the first takes every partition, then shares them once the
    // second joins; between them they print every record once.
    ctl.json(&["topic", "create", "clicks", "-p", "4"]);
    let lines: String = (0..40).map(|i| format!("k{i}:v{i}\n")).collect();
    ctl.run_with(&["topic", "produce", "clicks", "-k", ":"], &lines, &[]).json_or_table();
    let spawn = |n: &str| {
        Command::new(env!("CARGO_BIN_EXE_fjordctl"))
            .args(["topic", "consume", "clicks", "-g", "shared", "-f", "%p %s\\n", "-n", n])
            .envs(ctl.env.iter().map(|(k, v)| (k.clone(), v.clone())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = spawn("1000");
    // The first member is in the group (Stable, one member) before the second joins.
    wait_until(DEADLINE, "the first member in the group", || {
        let g = ctl.run(&["group", "describe", "shared", "-o", "json"]);
        g.code == 0 && serde_json::from_str::<Value>(&g.stdout).unwrap()["members"].as_array().unwrap().len() == 1
    });
    let second = spawn("1000");
    wait_until(DEADLINE, "both members in the group, partitions shared", || {
        let g = ctl.run(&["group", "describe", "shared", "-o", "json"]);
        if g.code != 0 {
            return false;
        }
        let g: Value = serde_json::from_str(&g.stdout).unwrap();
        let members = g["members"].as_array().unwrap();
        members.len() == 2 && members.iter().all(|m| m["assignment"]["clicks"].as_array().is_some_and(|a| a.len() == 2))
    });
    wait_until(DEADLINE, "every record consumed and committed", || {
        ctl.run(&["group", "describe", "shared", "-o", "json"]).code == 0
            && serde_json::from_str::<Value>(&ctl.run(&["group", "describe", "shared", "-o", "json"]).stdout).unwrap()
                ["total_lag"]
                == 0
    });
    for child in [first, second] {
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "a member exits cleanly on SIGTERM: {}", String::from_utf8_lossy(&out.stderr));
    }
    let described = ctl.json(&["group", "describe", "shared"]);
    assert_eq!(described["members"].as_array().unwrap().len(), 0, "both left the group: {described}");
}

//! `fjordctl cluster ...`: brokers, health (the admin API), partition states, reassignments,
//! leader elections and broker configs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Subcommand;
use kafka_protocol::messages::*;
use serde::Serialize;

use crate::error::{CliError, Result};
use crate::kafka::{refusal, s, Client};
use crate::output::{emit, list, opt, pairs, Progress, Table};
use crate::topic::{alter_configs, describe_configs, key_value};
use crate::Cli;

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// The cluster id, controller and brokers
    Info,
    /// Readiness and partition health from the admin API; exits 1 when unhealthy
    Health,
    /// Partitions with their leader, replicas and in-sync replicas
    Partitions {
        /// Only this topic's
        #[arg(long)]
        topic: Option<String>,
        /// Only partitions with fewer in-sync replicas than replicas
        #[arg(long)]
        under_replicated: bool,
        /// Only partitions without a leader
        #[arg(long)]
        leaderless: bool,
    },
    /// Moves partitions to new replicas (or lists and cancels moves)
    Reassign {
        /// The topic whose partitions move
        #[arg(long, required_unless_present = "list")]
        topic: Option<String>,
        /// Partitions to move (repeatable; all of the topic's by default)
        #[arg(short, long = "partition")]
        partitions: Vec<i32>,
        /// The new replicas, broker ids in preference order, e.g. 4,2,3
        #[arg(long, value_delimiter = ',', required_unless_present_any = ["cancel", "list"])]
        replicas: Vec<i32>,
        /// Cancels the partitions' moves in progress instead
        #[arg(long, conflicts_with = "replicas")]
        cancel: bool,
        /// Lists the moves in progress
        #[arg(long, conflicts_with_all = ["replicas", "cancel"])]
        list: bool,
        /// Waits until the moves complete, showing progress
        #[arg(long)]
        wait: bool,
    },
    /// Moves leaderships to the preferred replicas (or, unclean, to any replica)
    ElectLeaders {
        /// Only this topic's partitions (all partitions by default)
        #[arg(long)]
        topic: Option<String>,
        /// Only these partitions of the topic (repeatable)
        #[arg(short, long = "partition", requires = "topic")]
        partitions: Vec<i32>,
        #[arg(long = "type", default_value = "preferred", value_parser = ["preferred", "unclean"])]
        election: String,
    },
    /// Shows broker configs, or sets and removes dynamic ones
    Config {
        /// One broker's configs (cluster-wide defaults when unset)
        #[arg(long)]
        broker: Option<i32>,
        /// key=value to set (repeatable)
        #[arg(long, value_parser = key_value)]
        set: Vec<(String, String)>,
        /// A key to return to its default (repeatable)
        #[arg(long)]
        delete: Vec<String>,
    },
}

pub fn run(cmd: &ClusterCmd, cli: &Cli) -> Result<()> {
    match cmd {
        ClusterCmd::Info => info(cli),
        ClusterCmd::Health => health(cli),
        ClusterCmd::Partitions { topic, under_replicated, leaderless } => {
            partitions(cli, topic.as_deref(), *under_replicated, *leaderless)
        }
        ClusterCmd::Reassign { topic, partitions, replicas, cancel, list, wait } => {
            if *list {
                return list_reassignments(cli);
            }
            let topic = topic.as_deref().unwrap_or_default();
            reassign(cli, topic, partitions, if *cancel { None } else { Some(replicas.as_slice()) }, *wait)
        }
        ClusterCmd::ElectLeaders { topic, partitions, election } => {
            elect(cli, topic.as_deref(), partitions, election == "unclean")
        }
        ClusterCmd::Config { broker, set, delete } => config(cli, *broker, set, delete),
    }
}

#[derive(Serialize)]
struct BrokerRow {
    id: i32,
    host: String,
    port: i32,
    rack: Option<String>,
    controller: bool,
}

#[derive(Serialize)]
struct Info {
    cluster_id: Option<String>,
    controller: i32,
    brokers: Vec<BrokerRow>,
}

fn info(cli: &Cli) -> Result<()> {
    let c = cli.kafka()?;
    let mut brokers: Vec<BrokerRow> = c
        .brokers
        .values()
        .map(|b| BrokerRow {
            id: b.id,
            host: b.host.clone(),
            port: b.port,
            rack: b.rack.clone(),
            controller: b.id == c.controller,
        })
        .collect();
    brokers.sort_by_key(|b| b.id);
    let out = Info { cluster_id: c.cluster_id.clone(), controller: c.controller, brokers };
    if cli.format == crate::output::Format::Table {
        println!("cluster {}  controller {}\n", opt(&out.cluster_id), out.controller);
    }
    emit(cli.format, &out, |o| {
        let mut t = Table::new(&["ID", "HOST", "PORT", "RACK", ""]);
        for b in &o.brokers {
            t.row(vec![
                b.id.to_string(),
                b.host.clone(),
                b.port.to_string(),
                opt(&b.rack),
                if b.controller { "controller".into() } else { String::new() },
            ]);
        }
        t
    });
    Ok(())
}

#[derive(Serialize)]
struct Health {
    healthy: bool,
    admin_url: String,
    node_id: i64,
    ready: bool,
    brokers: i64,
    live_brokers: i64,
    under_replicated_partitions: i64,
    offline_partitions: i64,
    /// The readiness checks that failed.
    failing: Vec<String>,
}

fn health(cli: &Cli) -> Result<()> {
    let admin = cli.admin()?;
    let (status, ready) = admin.json("/v1/ready", &[200, 503])?;
    let (_, cluster) = admin.json("/v1/cluster", &[200])?;
    let n = |v: &serde_json::Value| v.as_i64().unwrap_or(-1);
    let failing: Vec<String> = ready["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["ok"] == false)
        .map(|c| format!("{}: {}", c["name"].as_str().unwrap_or(""), c["detail"].as_str().unwrap_or("")))
        .collect();
    let out = Health {
        ready: status == 200,
        admin_url: admin.url(),
        node_id: n(&cluster["node_id"]),
        brokers: n(&cluster["brokers"]),
        live_brokers: n(&cluster["live_brokers"]),
        under_replicated_partitions: n(&cluster["under_replicated_partitions"]),
        offline_partitions: n(&cluster["offline_partitions"]),
        healthy: status == 200
            && n(&cluster["offline_partitions"]) == 0
            && n(&cluster["brokers"]) == n(&cluster["live_brokers"]),
        failing,
    };
    emit(cli.format, &out, |h| {
        pairs(&[
            ("healthy", h.healthy.to_string()),
            ("node (admin API)", format!("{} ({})", h.node_id, h.admin_url)),
            ("ready", h.ready.to_string()),
            ("brokers live", format!("{}/{}", h.live_brokers, h.brokers)),
            ("under-replicated partitions", h.under_replicated_partitions.to_string()),
            ("offline partitions", h.offline_partitions.to_string()),
            ("failing checks", if h.failing.is_empty() { "-".into() } else { h.failing.join("; ") }),
        ])
    });
    if !out.healthy {
        return Err(CliError::failed("the cluster is not healthy"));
    }
    Ok(())
}

#[derive(Serialize)]
struct PartitionRow {
    topic: String,
    partition: i32,
    leader: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
}

fn partitions(cli: &Cli, topic: Option<&str>, under: bool, leaderless: bool) -> Result<()> {
    let mut c = cli.kafka()?;
    let r = match topic {
        Some(t) => {
            c.topic(t)?;
            c.refresh(&[t.to_string()])?
        }
        None => c.refresh(&[])?,
    };
    let mut rows = Vec::new();
    for t in &r.topics {
        let name = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
        for p in &t.partitions {
            let row = PartitionRow {
                topic: name.clone(),
                partition: p.partition_index,
                leader: p.leader_id.0,
                replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                isr: p.isr_nodes.iter().map(|b| b.0).collect(),
            };
            let keep = (!under || row.isr.len() < row.replicas.len()) && (!leaderless || row.leader < 0);
            if keep {
                rows.push(row);
            }
        }
    }
    rows.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    emit(cli.format, &rows, |rows| {
        let mut t = Table::new(&["TOPIC", "PARTITION", "LEADER", "REPLICAS", "ISR"]);
        for r in rows {
            t.row(vec![
                r.topic.clone(),
                r.partition.to_string(),
                r.leader.to_string(),
                list(&r.replicas),
                list(&r.isr),
            ]);
        }
        t
    });
    Ok(())
}

#[derive(Serialize)]
struct Moving {
    topic: String,
    partition: i32,
    replicas: Vec<i32>,
    adding: Vec<i32>,
    removing: Vec<i32>,
}

fn ongoing(c: &mut Client) -> Result<Vec<Moving>> {
    let mut req = ListPartitionReassignmentsRequest::default();
    req.timeout_ms = 10_000;
    req.topics = None;
    let r: ListPartitionReassignmentsResponse = c.any(ApiKey::ListPartitionReassignments, 0, &req)?;
    if r.error_code != 0 {
        return Err(refusal("listing reassignments", r.error_code, r.error_message.as_ref()));
    }
    let mut out = Vec::new();
    for t in r.topics {
        for p in t.partitions {
            out.push(Moving {
                topic: t.name.0.to_string(),
                partition: p.partition_index,
                replicas: p.replicas.iter().map(|b| b.0).collect(),
                adding: p.adding_replicas.iter().map(|b| b.0).collect(),
                removing: p.removing_replicas.iter().map(|b| b.0).collect(),
            });
        }
    }
    out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(out)
}

fn moving_table(rows: &Vec<Moving>) -> Table {
    let mut t = Table::new(&["TOPIC", "PARTITION", "REPLICAS", "ADDING", "REMOVING"]);
    for r in rows {
        t.row(vec![r.topic.clone(), r.partition.to_string(), list(&r.replicas), list(&r.adding), list(&r.removing)]);
    }
    t
}

fn list_reassignments(cli: &Cli) -> Result<()> {
    let mut c = cli.kafka()?;
    let rows = ongoing(&mut c)?;
    emit(cli.format, &rows, moving_table);
    Ok(())
}

/// How long `reassign --wait` waits before giving up (the moves go on without it).
const REASSIGN_WAIT: Duration = Duration::from_secs(600);

fn reassign(cli: &Cli, topic: &str, only: &[i32], replicas: Option<&[i32]>, wait: bool) -> Result<()> {
    let mut c = cli.kafka()?;
    let parts = c.select_partitions(topic, only)?;
    if let Some(r) = replicas {
        let mut seen = r.to_vec();
        seen.sort();
        seen.dedup();
        if seen.len() != r.len() {
            return Err(CliError::usage(format!("--replicas {} names a broker twice", list(r))));
        }
    }
    let mut rt = alter_partition_reassignments_request::ReassignableTopic::default();
    rt.name = TopicName(s(topic));
    rt.partitions = parts
        .iter()
        .map(|p| {
            let mut rp = alter_partition_reassignments_request::ReassignablePartition::default();
            rp.partition_index = *p;
            rp.replicas = replicas.map(|r| r.iter().map(|b| BrokerId(*b)).collect());
            rp
        })
        .collect();
    let mut req = AlterPartitionReassignmentsRequest::default();
    req.timeout_ms = i32::try_from(cli.wait().as_millis()).unwrap_or(i32::MAX);
    req.topics = vec![rt];
    let r: AlterPartitionReassignmentsResponse = c.any(ApiKey::AlterPartitionReassignments, 0, &req)?;
    if r.error_code != 0 {
        return Err(refusal(&format!("reassigning {topic}"), r.error_code, r.error_message.as_ref()));
    }
    for t in &r.responses {
        for p in &t.partitions {
            if p.error_code != 0 {
                return Err(refusal(
                    &format!("reassigning {topic}-{}", p.partition_index),
                    p.error_code,
                    p.error_message.as_ref(),
                ));
            }
        }
    }
    if wait {
        let progress = Progress::new();
        let deadline = Instant::now() + REASSIGN_WAIT;
        loop {
            let left: Vec<Moving> =
                ongoing(&mut c)?.into_iter().filter(|m| m.topic == topic && parts.contains(&m.partition)).collect();
            // Complete once the metadata this node serves shows the new replicas too (a cluster
            // node may apply the controller's record a moment after the move is done).
            let shown = match replicas {
                Some(target) => c
                    .topic(topic)?
                    .partitions
                    .iter()
                    .filter(|p| parts.contains(&p.partition_index))
                    .all(|p| p.replica_nodes.iter().map(|b| b.0).collect::<Vec<_>>() == target),
                None => true,
            };
            if left.is_empty() && shown {
                progress.done(&format!("{} partition move(s) complete", parts.len()));
                break;
            }
            progress.update(&format!("{} of {} partition move(s) complete", parts.len() - left.len(), parts.len()));
            if Instant::now() >= deadline {
                return Err(CliError::failed(format!(
                    "{} partition move(s) still in progress after {}s (they go on; see `cluster reassign --list`)",
                    left.len(),
                    REASSIGN_WAIT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let rows: Vec<Moving> =
        if wait { Vec::new() } else { ongoing(&mut c)?.into_iter().filter(|m| m.topic == topic).collect() };
    #[derive(Serialize)]
    struct Out {
        topic: String,
        partitions: Vec<i32>,
        replicas: Option<Vec<i32>>,
        cancelled: bool,
        complete: bool,
        in_progress: Vec<Moving>,
    }
    let out = Out {
        topic: topic.to_string(),
        partitions: parts,
        replicas: replicas.map(<[i32]>::to_vec),
        cancelled: replicas.is_none(),
        complete: wait,
        in_progress: rows,
    };
    emit(cli.format, &out, |o| moving_table(&o.in_progress));
    Ok(())
}

#[derive(Serialize)]
struct Elected {
    topic: String,
    partition: i32,
    result: String,
}

fn elect(cli: &Cli, topic: Option<&str>, only: &[i32], unclean: bool) -> Result<()> {
    let mut c = cli.kafka()?;
    let mut req = ElectLeadersRequest::default();
    req.election_type = i8::from(unclean);
    req.timeout_ms = i32::try_from(cli.wait().as_millis()).unwrap_or(i32::MAX);
    req.topic_partitions = match topic {
        None => None,
        Some(t) => {
            let parts = c.select_partitions(t, only)?;
            let mut tp = elect_leaders_request::TopicPartitions::default();
            tp.topic = TopicName(s(t));
            tp.partitions = parts;
            Some(vec![tp])
        }
    };
    let r: ElectLeadersResponse = c.any(ApiKey::ElectLeaders, 2, &req)?;
    if r.error_code != 0 {
        return Err(refusal("electing leaders", r.error_code, None));
    }
    let mut rows = Vec::new();
    let mut failed = None;
    for t in &r.replica_election_results {
        for p in &t.partition_result {
            // ELECTION_NOT_NEEDED (84): already led by its preferred replica (or, unclean, led).
            let result = match p.error_code {
                0 => "elected".to_string(),
                84 => "not needed".to_string(),
                code => {
                    let e = refusal(&format!("{}-{}", t.topic.0, p.partition_id), code, p.error_message.as_ref());
                    failed.get_or_insert(e.message.clone());
                    e.message
                }
            };
            rows.push(Elected { topic: t.topic.0.to_string(), partition: p.partition_id, result });
        }
    }
    rows.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    emit(cli.format, &rows, |rows| {
        let mut t = Table::new(&["TOPIC", "PARTITION", "RESULT"]);
        for r in rows {
            t.row(vec![r.topic.clone(), r.partition.to_string(), r.result.clone()]);
        }
        t
    });
    match failed {
        Some(m) => Err(CliError::failed(format!("leader election failed: {m}"))),
        None => Ok(()),
    }
}

fn config(cli: &Cli, broker: Option<i32>, set: &[(String, String)], delete: &[String]) -> Result<()> {
    let mut c = cli.kafka()?;
    let name = broker.map(|b| b.to_string()).unwrap_or_default();
    if !set.is_empty() || !delete.is_empty() {
        alter_configs(&mut c, 4, &name, set, delete)?;
    }
    // Without --broker, the configs as the controller has them (dynamic cluster-wide defaults
    // included).
    let described = if name.is_empty() { c.controller.max(0).to_string() } else { name.clone() };
    let configs = describe_configs(&mut c, 4, &described)?;
    let rows: BTreeMap<String, Option<String>> = configs.into_iter().map(|(k, v, _)| (k, v)).collect();
    emit(cli.format, &rows, |rows| {
        let mut t = Table::new(&["CONFIG", "VALUE"]);
        for (k, v) in rows {
            t.row(vec![k.clone(), opt(v)]);
        }
        t
    });
    Ok(())
}

//! `fjordctl`: one command line for a Fjord cluster. Kafka things (topics, groups, records,
//! reassignments, leader elections) go over the Kafka protocol, so it works against any broker
//! that speaks it; Fjord's own (health, readiness, partition states, transforms) over the admin
//! HTTP API.

mod cluster;
mod error;
mod group;
mod http;
mod kafka;
mod local;
mod output;
mod profile;
mod topic;
mod transform;

use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};

use error::{CliError, Result};
use output::Format;

const EXAMPLES: &str = "\
Examples:
  fjordctl local start --nodes 3               a 3-node cluster on this machine
  fjordctl topic create events -p 6 -r 3
  echo '{\"user\":1}' | fjordctl topic produce events
  fjordctl topic consume events --offset earliest -n 10 -f '%p@%o %k %s\\n'
  fjordctl group describe billing              members, offsets and lag
  fjordctl group reset-offsets billing --topic events --to-earliest --dry-run
  fjordctl cluster health                      every broker's readiness
  fjordctl transform deploy mask --input events --output masked --dir ./mask
  fjordctl profile create prod --brokers k1:9092,k2:9092 --admin-url http://k1:9644 --use

Exit codes: 0 done, 1 the operation failed, 2 bad arguments or configuration,
3 a broker or the admin API could not be reached.";

const PROFILE_EXAMPLES: &str = "\
Examples:
  fjordctl profile create prod --brokers k1:9092,k2:9092 --admin-url http://k1:9644 --use
  fjordctl profile list
  fjordctl --profile staging topic list       one command with another profile";

const TOPIC_EXAMPLES: &str = "\
Examples:
  fjordctl topic create events -p 6 -r 3 -c retention.ms=604800000
  fjordctl topic describe events -o json
  fjordctl topic alter-config events --set cleanup.policy=compact --delete retention.ms
  fjordctl topic add-partitions events --total 12
  printf 'k1:v1\\nk2:v2\\n' | fjordctl topic produce events -k : -H source=cli
  fjordctl topic consume events --offset -10 -e -f '%T %k %s\\n'
  fjordctl topic consume events --from-timestamp 1700000000000 -n 100 -o json
  fjordctl topic consume events -g audit       as a member of group audit";

const GROUP_EXAMPLES: &str = "\
Examples:
  fjordctl group list
  fjordctl group describe billing -o json
  fjordctl group reset-offsets billing --topic events --to-timestamp 1700000000000 --dry-run
  fjordctl group reset-offsets billing --topic events -p 0 --shift-by -100
  fjordctl group delete old-group";

const CLUSTER_EXAMPLES: &str = "\
Examples:
  fjordctl cluster health && echo healthy
  fjordctl cluster partitions --under-replicated
  fjordctl cluster reassign --topic events -p 0 -p 1 --replicas 4,2,3 --wait
  fjordctl cluster reassign --list
  fjordctl cluster elect-leaders --topic events
  fjordctl cluster config --broker 2 --set log.retention.ms=86400000";

const TRANSFORM_EXAMPLES: &str = "\
Examples:
  fjordctl transform init mask                 a Rust transform project in ./mask
  fjordctl transform build mask                its .wasm (needs `rustup target add wasm32-wasip1`)
  fjordctl transform deploy mask --input events --output masked --dir mask --env FIELDS=email
  fjordctl transform deploy route --input events --output a --output b --module route.wasm --from @1700000000000
  fjordctl transform list
  fjordctl transform describe mask             state, error, committed offsets and lag per partition
  fjordctl transform logs mask -n 20
  fjordctl transform pause mask && fjordctl transform resume mask
  fjordctl transform delete mask";

const LOCAL_EXAMPLES: &str = "\
Examples:
  fjordctl local start --nodes 3               nodes on 127.0.0.1:9092-9094, admin APIs on 9644-9646
  fjordctl local status
  fjordctl local stop";

#[derive(Parser)]
#[command(name = "fjordctl", version, about = "Manage Fjord clusters: topics, groups, records, the cluster itself", after_help = EXAMPLES)]
pub struct Cli {
    /// Kafka bootstrap brokers, host:port,... (overrides the profile)
    #[arg(short, long, global = true, env = "FJORD_BROKERS")]
    brokers: Option<String>,
    /// The admin API's base URL, e.g. http://127.0.0.1:9644 (overrides the profile)
    #[arg(long, global = true, env = "FJORD_ADMIN_URL")]
    admin_url: Option<String>,
    /// The profile to use instead of the current one
    #[arg(long, global = true, env = "FJORD_PROFILE")]
    profile: Option<String>,
    /// The profiles file (default ~/.config/fjordctl/config.toml)
    #[arg(long = "config-file", global = true, env = "FJORDCTL_CONFIG")]
    config: Option<PathBuf>,
    /// Output: human tables, or JSON or YAML for scripts
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    format: Format,
    /// Seconds to wait for a broker's answer
    #[arg(long, global = true, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Named connection settings (brokers, admin URL, TLS/SASL)
    #[command(subcommand, after_help = PROFILE_EXAMPLES)]
    Profile(profile_cmd::ProfileCmd),
    /// Create, inspect, change and delete topics; produce and consume records
    #[command(subcommand, after_help = TOPIC_EXAMPLES)]
    Topic(topic::TopicCmd),
    /// Consumer groups: members, lag, offset resets
    #[command(subcommand, after_help = GROUP_EXAMPLES)]
    Group(group::GroupCmd),
    /// The cluster: brokers, health, partitions, reassignments, leader elections, configs
    #[command(subcommand, after_help = CLUSTER_EXAMPLES)]
    Cluster(cluster::ClusterCmd),
    /// WebAssembly transforms: scaffold, build, deploy, inspect, pause and resume them
    #[command(subcommand, after_help = TRANSFORM_EXAMPLES)]
    Transform(transform::TransformCmd),
    /// A cluster of `fjord` processes on this machine, for development
    #[command(subcommand, after_help = LOCAL_EXAMPLES)]
    Local(local::LocalCmd),
    /// Prints a shell completion script (bash, zsh, fish, elvish, powershell)
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

mod profile_cmd {
    use clap::Subcommand;

    use crate::error::{CliError, Result};
    use crate::output::{emit, Table};
    use crate::profile::{check_host_port, config_path, ConfigFile, Profile};

    #[derive(Subcommand, Clone)]
    pub enum ProfileCmd {
        /// Creates (or replaces) a profile from --brokers, --admin-url and the TLS/SASL settings
        Create {
            name: String,
            #[arg(long)]
            tls_ca_file: Option<String>,
            #[arg(long)]
            tls_cert_file: Option<String>,
            #[arg(long)]
            tls_key_file: Option<String>,
            /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512
            #[arg(long)]
            sasl_mechanism: Option<String>,
            #[arg(long)]
            sasl_username: Option<String>,
            #[arg(long)]
            sasl_password: Option<String>,
            /// Makes it the current profile
            #[arg(long = "use")]
            use_it: bool,
        },
        /// Makes a profile the current one
        Use { name: String },
        /// Lists the profiles (* marks the current one)
        List,
        /// Deletes a profile
        Delete { name: String },
    }

    pub fn run(cmd: ProfileCmd, cli: &crate::Cli) -> Result<()> {
        let path = config_path(cli.config.as_deref())?;
        let mut file = ConfigFile::load(&path)?;
        match cmd {
            ProfileCmd::Create {
                name,
                tls_ca_file,
                tls_cert_file,
                tls_key_file,
                sasl_mechanism,
                sasl_username,
                sasl_password,
                use_it,
            } => {
                // The global `--brokers` and `--admin-url` are what the profile saves.
                let brokers = cli.brokers.clone();
                if let Some(b) = &brokers {
                    for a in b.split(',').map(str::trim).filter(|a| !a.is_empty()) {
                        check_host_port(a)?;
                    }
                }
                if let Some(m) = &sasl_mechanism {
                    if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&m.as_str()) {
                        return Err(CliError::usage(format!(
                            "sasl mechanism {m:?} is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
                        )));
                    }
                }
                let profile = Profile {
                    brokers,
                    admin_url: cli.admin_url.clone(),
                    tls_ca_file,
                    tls_cert_file,
                    tls_key_file,
                    sasl_mechanism,
                    sasl_username,
                    sasl_password,
                };
                file.profiles.insert(name.clone(), profile);
                if use_it || file.current.is_none() {
                    file.current = Some(name.clone());
                }
                file.save(&path)?;
                eprintln!("profile {name} saved in {}", path.display());
            }
            ProfileCmd::Use { name } => {
                if !file.profiles.contains_key(&name) {
                    return Err(file.unknown(&name));
                }
                file.current = Some(name);
                file.save(&path)?;
            }
            ProfileCmd::Delete { name } => {
                if !file.profiles.contains_key(&name) {
                    return Err(file.unknown(&name));
                }
                file.profiles.remove(&name);
                if file.current.as_deref() == Some(&name) {
                    file.current = None;
                }
                file.save(&path)?;
            }
            ProfileCmd::List => {
                #[derive(serde::Serialize)]
                struct Row {
                    name: String,
                    current: bool,
                    brokers: Option<String>,
                    admin_url: Option<String>,
                }
                let rows: Vec<Row> = file
                    .profiles
                    .iter()
                    .map(|(n, p)| Row {
                        name: n.clone(),
                        current: file.current.as_deref() == Some(n),
                        brokers: p.brokers.clone(),
                        admin_url: p.admin_url.clone(),
                    })
                    .collect();
                emit(cli.format, &rows, |rows| {
                    let mut t = Table::new(&["NAME", "BROKERS", "ADMIN URL"]);
                    for r in rows {
                        let name = if r.current { format!("{} *", r.name) } else { r.name.clone() };
                        t.row(vec![name, crate::output::opt(&r.brokers), crate::output::opt(&r.admin_url)]);
                    }
                    t
                });
            }
        }
        Ok(())
    }
}

impl Cli {
    fn settings(&self) -> Result<profile::Settings> {
        let path = profile::config_path(self.config.as_deref())?;
        let file = profile::ConfigFile::load(&path)?;
        profile::Settings::resolve(&file, self.profile.as_deref(), self.brokers.as_deref(), self.admin_url.as_deref())
    }

    pub fn kafka(&self) -> Result<kafka::Client> {
        let s = self.settings()?;
        kafka::Client::connect(&s.brokers, self.wait())
    }

    pub fn admin(&self) -> Result<http::Admin> {
        let s = self.settings()?;
        http::Admin::new(&s.admin_url, self.wait())
    }

    pub fn wait(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Profile(cmd) => profile_cmd::run(cmd.clone(), &cli),
        Command::Topic(cmd) => topic::run(cmd, &cli),
        Command::Group(cmd) => group::run(cmd, &cli),
        Command::Cluster(cmd) => cluster::run(cmd, &cli),
        Command::Transform(cmd) => transform::run(cmd, &cli),
        Command::Local(cmd) => local::run(cmd, &cli),
        Command::Completion { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "fjordctl", &mut std::io::stdout());
            Ok(())
        }
    }
}

fn main() {
    // A closed stdout (`| head`) should end quietly, as other CLI tools do.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        let e: CliError = e;
        eprintln!("fjordctl: {e}");
        std::process::exit(e.exit_code());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}

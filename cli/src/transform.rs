//! `fjordctl transform ...`: WebAssembly transforms (transforms/ABI.md). Deploy, list, describe,
//! pause, resume, delete and read logs over the admin HTTP API; scaffold (`init`) and build
//! (`build`, cargo for wasm32-wasip1) a Rust transform project on this machine.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use clap::{ArgGroup, Args, Subcommand};
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{CliError, Result};
use crate::http::{segment, Admin};
use crate::output::{emit, list, pairs, Format, Progress, Table};
use crate::Cli;

/// The target transforms are built for.
pub const TARGET: &str = "wasm32-wasip1";
// The broker's limits (transforms/src/spec.rs and engine.rs), checked here too so a mistake is
// named before a module is uploaded.
/// How many outputs a transform may write (the module numbers them from 0).
const MAX_OUTPUTS: usize = 8;
/// How many lookup tables a transform may read.
const MAX_LOOKUPS: usize = 8;
/// The largest module (a Rust transform built for size is usually well under 1 MiB).
const MAX_MODULE_BYTES: u64 = 16 << 20;
/// Most environment variables, and most bytes of their names and values together.
const MAX_ENV: usize = 128;
const MAX_ENV_BYTES: usize = 64 << 10;
/// The memory limit's bounds.
const MIN_MEMORY_LIMIT: u64 = 256 << 10;
const MAX_MEMORY_LIMIT: u64 = 1 << 30;
/// The prefix of the environment variables the broker sets itself (ABI.md, `environ_get`).
const HOST_ENV_PREFIX: &str = "FJORD_";
/// The exports ABI.md requires, with their kind (0 function, 2 memory).
const REQUIRED_EXPORTS: [(&str, u8); 4] =
    [("memory", 2), ("fjord_abi_version", 0), ("fjord_alloc", 0), ("fjord_on_batch", 0)];

#[derive(Subcommand)]
pub enum TransformCmd {
    /// Deploys a transform (or redeploys one: it keeps its progress) from a .wasm module
    Deploy(DeployArgs),
    /// Lists the transforms with their state and lag
    List,
    /// A transform's settings, module, state (and the error that paused it) and, per input
    /// partition, its committed offset and lag
    Describe { name: String },
    /// Stops a transform on every partition (its progress is kept)
    Pause { name: String },
    /// Starts a paused transform again from its last committed position
    Resume { name: String },
    /// Deletes a transform (its output topics stay)
    Delete { name: String },
    /// A transform's recent log lines, oldest first: what the module logged or printed, and its errors
    Logs {
        name: String,
        /// How many of the newest lines
        #[arg(short = 'n', long = "num", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        num: u32,
    },
    /// Scaffolds a Rust transform project (an identity transform, the SDK vendored in) that
    /// builds offline
    Init {
        /// The project's (cargo package's) name
        name: String,
        /// Where (default ./NAME); must not exist or be empty
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Builds a transform project for wasm32-wasip1 (cargo build --release) and prints the
    /// module's path and size
    Build {
        /// The project directory
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Args)]
#[command(group(ArgGroup::new("source").required(true).args(["module", "dir"])))]
pub struct DeployArgs {
    /// The transform's name
    name: String,
    /// The topic it reads
    #[arg(long)]
    input: String,
    /// A topic it writes (repeatable, 1 to 8): the module's output 0, 1, ... in this order
    #[arg(long = "output", value_name = "TOPIC")]
    outputs: Vec<String>,
    /// The module, a .wasm file
    #[arg(long, value_name = "FILE.wasm")]
    module: Option<PathBuf>,
    /// A transform project: deploys the module `fjordctl transform build` made of it
    #[arg(long, value_name = "PROJECT_DIR")]
    dir: Option<PathBuf>,
    /// An environment variable for the module, KEY=VALUE (repeatable)
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// A compacted topic the module can look keys up in (repeatable): its table 0, 1, ... in
    /// this order
    #[arg(long = "lookup", value_name = "TOPIC")]
    lookups: Vec<String>,
    /// Where it starts reading an input partition it has no committed position on: earliest,
    /// latest, an offset, or @TIMESTAMP_MS (the first record at or after it); the broker's
    /// default (latest) when unset. A redeploy keeps the positions committed so far
    #[arg(long, value_name = "POSITION")]
    from: Option<String>,
    /// How far the module's memory may grow, in bytes (or with KiB, MiB, GiB); the broker's
    /// default (2 MiB) when unset
    #[arg(long, value_name = "BYTES")]
    memory_limit: Option<String>,
    /// Fuel per batch (about as many WebAssembly instructions); the broker's default
    /// (2000000000) when unset
    #[arg(long, value_name = "N")]
    fuel: Option<String>,
}

pub fn run(cmd: &TransformCmd, cli: &Cli) -> Result<()> {
    match cmd {
        TransformCmd::Deploy(args) => deploy(cli, args),
        TransformCmd::List => {
            let admin = cli.admin()?;
            let views = call(&admin, "GET", "/v1/transforms", None)?;
            emit(cli.format, &views, list_table);
            Ok(())
        }
        TransformCmd::Describe { name } => {
            let view = call(&cli.admin()?, "GET", &path(name)?, None)?;
            print_view(cli.format, &view);
            Ok(())
        }
        TransformCmd::Pause { name } => {
            let view = call(&cli.admin()?, "POST", &format!("{}/pause", path(name)?), None)?;
            print_view(cli.format, &view);
            Ok(())
        }
        TransformCmd::Resume { name } => {
            let view = call(&cli.admin()?, "POST", &format!("{}/resume", path(name)?), None)?;
            print_view(cli.format, &view);
            Ok(())
        }
        TransformCmd::Delete { name } => {
            let out = call(&cli.admin()?, "DELETE", &path(name)?, None)?;
            emit(cli.format, &out, |o| pairs(&[("deleted", text(&o["deleted"]))]));
            Ok(())
        }
        TransformCmd::Logs { name, num } => {
            let lines = call(&cli.admin()?, "GET", &format!("{}/logs?limit={num}", path(name)?), None)?;
            match cli.format {
                Format::Table => {
                    let mut out = String::new();
                    for l in lines.as_array().into_iter().flatten() {
                        out += &log_line(l);
                        out.push('\n');
                    }
                    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
                }
                _ => emit(cli.format, &lines, |_| Table::new(&[])),
            }
            Ok(())
        }
        TransformCmd::Init { name, dir } => init(cli, name, dir.as_deref()),
        TransformCmd::Build { dir } => build(cli, dir),
    }
}

// ---------------------------------------------------------------------------------------------
// The admin API

/// The API path of transform `name`.
fn path(name: &str) -> Result<String> {
    check_name(name)?;
    Ok(format!("/v1/transforms/{}", segment(name)))
}

/// A transform's name: 1 to 100 ASCII letters, digits, '.', '_' and '-' (it becomes part of
/// group and transactional ids, and of the API's URLs).
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 100 {
        return Err(CliError::usage(format!("transform name {name:?}: a name has 1 to 100 characters")));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err(CliError::usage(format!(
            "transform name {name:?} may hold only ASCII letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

/// One call of the transforms API: the JSON of a 200, or the API's error as a failure.
fn call(admin: &Admin, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
    let bytes = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
    let (status, text) = admin.request(method, path, bytes.as_deref())?;
    let value = serde_json::from_str::<Value>(&text);
    if status == 200 {
        return value.map_err(|e| CliError::failed(format!("admin API {method} {path}: not JSON ({e})")));
    }
    let message = match &value {
        Ok(v) => v["error"].as_str().map(str::to_string),
        Err(_) => None,
    };
    let hint = match (status, &message) {
        (_, Some(m)) => m.clone(),
        // An API that has no such route answers without the JSON error the transforms API
        // always gives.
        (404 | 405, None) => format!(
            "the admin API at {} has no transforms API (is the broker a Fjord version with transforms?)",
            admin.url()
        ),
        (413, None) => format!(
            "the request ({} bytes, the module base64-encoded) is over the admin API's body limit",
            bytes.as_ref().map_or(0, Vec::len)
        ),
        (_, None) if text.trim().is_empty() => "(no message)".to_string(),
        (_, None) => text.trim().to_string(),
    };
    Err(CliError::failed(format!("admin API {method} {path}: {status} {hint}")))
}

/// A JSON value as a table cell: strings as they are, null as "-".
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().map(text).collect()
}

/// The sum of the partitions' lag; None when no partition's is known.
fn total_lag(view: &Value) -> Option<i64> {
    let lags: Vec<i64> =
        view["partitions"].as_array().into_iter().flatten().filter_map(|p| p["lag"].as_i64()).collect();
    (!lags.is_empty()).then(|| lags.iter().sum())
}

fn list_table(views: &Value) -> Table {
    let mut t = Table::new(&["NAME", "STATE", "INPUT", "OUTPUTS", "LAG", "ERROR"]);
    for v in views.as_array().into_iter().flatten() {
        let error = match v["error"].as_str() {
            Some(e) => {
                let first = e.lines().next().unwrap_or_default();
                if first.chars().count() > 60 {
                    format!("{}...", first.chars().take(57).collect::<String>())
                } else {
                    first.to_string()
                }
            }
            None => "-".to_string(),
        };
        t.row(vec![
            text(&v["name"]),
            text(&v["state"]),
            text(&v["input"]),
            list(&strings(&v["outputs"])),
            total_lag(v).map_or_else(|| "-".to_string(), |l| l.to_string()),
            error,
        ]);
    }
    t
}

fn start_text(start: &Value) -> String {
    if let Some(o) = start["offset"].as_i64() {
        return format!("offset {o}");
    }
    if let Some(ts) = start["timestamp"].as_i64() {
        return format!("timestamp {ts} ({})", iso_ms(ts));
    }
    text(start)
}

fn bytes_text(n: &Value) -> String {
    match n.as_u64() {
        Some(n) => format!("{n} ({})", human_bytes(n)),
        None => text(n),
    }
}

/// A transform as `describe` (and deploy, pause, resume) shows it: every field, then a row per
/// input partition; JSON and YAML are the API's view as it is.
fn print_view(format: Format, view: &Value) {
    if format != Format::Table {
        emit(format, view, |_| Table::new(&[]));
        return;
    }
    let env = view["env"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", text(v))).collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".to_string());
    let or_dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
    let module = &view["module"];
    // A table cell is one line: a longer error (a trap's backtrace) follows the tables in full.
    let error = view["error"].as_str().filter(|e| !e.trim().is_empty());
    let error_cell = match error {
        Some(e) if e.trim().contains('\n') => {
            format!("{} (in full below)", e.trim().lines().next().unwrap_or_default())
        }
        _ => text(&view["error"]),
    };
    let summary = pairs(&[
        ("name", text(&view["name"])),
        ("id", text(&view["id"])),
        ("state", text(&view["state"])),
        ("error", error_cell),
        ("input", text(&view["input"])),
        ("outputs", or_dash(list(&strings(&view["outputs"])))),
        ("lookups", or_dash(list(&strings(&view["lookups"])))),
        ("env", env),
        ("start", start_text(&view["start"])),
        ("module sha256", text(&module["sha256"])),
        ("module size", bytes_text(&module["size_bytes"])),
        ("memory limit", bytes_text(&view["memory_limit_bytes"])),
        ("fuel per batch", text(&view["fuel_per_batch"])),
        ("deployed", view["deployed_ms"].as_i64().map_or_else(|| text(&view["deployed_ms"]), iso_ms)),
        ("total lag", total_lag(view).map_or_else(|| "-".to_string(), |l| l.to_string())),
    ]);
    let mut t = Table::new(&["PARTITION", "LEADER", "COMMITTED", "END", "LAG"]);
    for p in view["partitions"].as_array().into_iter().flatten() {
        t.row(vec![
            text(&p["partition"]),
            text(&p["leader"]),
            text(&p["committed_offset"]),
            text(&p["end_offset"]),
            text(&p["lag"]),
        ]);
    }
    let mut out = format!("{}\n{}", summary.render(), t.render());
    if let Some(e) = error.filter(|e| e.trim().contains('\n')) {
        out += "\nerror:\n";
        for l in e.trim_end().lines() {
            out += &format!("  {l}\n");
        }
    }
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
}

/// `timestamp level [pN] message`, the timestamp in UTC.
fn log_line(l: &Value) -> String {
    let ts = l["timestamp"].as_i64().map_or_else(|| text(&l["timestamp"]), iso_ms);
    let partition = match l["partition"].as_i64() {
        Some(p) => format!(" [p{p}]"),
        None => String::new(),
    };
    format!("{ts} {}{partition} {}", text(&l["level"]), text(&l["message"]))
}

/// Milliseconds since the epoch as ISO 8601 UTC (2023-11-14T22:13:20.000Z).
pub fn iso_ms(ms: i64) -> String {
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

// ---------------------------------------------------------------------------------------------
// deploy

/// A Kafka topic name (1 to 249 of [a-zA-Z0-9._-], not "." or "..").
fn check_topic(flag: &str, t: &str) -> Result<()> {
    let legal = !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !legal {
        return Err(CliError::usage(format!(
            "{flag} {t:?} is not a topic name (1 to 249 letters, digits, '.', '_' or '-')"
        )));
    }
    Ok(())
}

/// `--env` values as a map: KEY=VALUE each, no key twice, none of the host's own.
fn parse_env(env: &[String]) -> Result<BTreeMap<String, String>> {
    if env.len() > MAX_ENV {
        return Err(CliError::usage(format!(
            "a transform has at most {MAX_ENV} environment variables, not {}",
            env.len()
        )));
    }
    let mut out = BTreeMap::new();
    for e in env {
        let Some((k, v)) = e.split_once('=') else {
            return Err(CliError::usage(format!("--env {e:?} is not KEY=VALUE")));
        };
        if k.is_empty() {
            return Err(CliError::usage(format!("--env {e:?} has no name before the '='")));
        }
        if e.contains('\0') {
            return Err(CliError::usage(format!("--env {k}: a NUL character cannot be in an environment variable")));
        }
        if k.starts_with(HOST_ENV_PREFIX) {
            return Err(CliError::usage(format!(
                "--env {k}: names starting {HOST_ENV_PREFIX} are the broker's (it sets FJORD_TRANSFORM, FJORD_INPUT, FJORD_OUTPUTS and FJORD_LOOKUPS)"
            )));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(CliError::usage(format!("--env {k} is given twice")));
        }
    }
    let bytes: usize = out.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_ENV_BYTES {
        return Err(CliError::usage(format!(
            "the environment variables are {bytes} bytes; a transform's may be {MAX_ENV_BYTES} at most"
        )));
    }
    Ok(out)
}

/// `--from`: earliest, latest, an offset, or @TIMESTAMP_MS, as the API's `start`.
fn parse_from(s: &str) -> Result<Value> {
    let bad = || {
        CliError::usage(format!(
            "--from {s:?} is not earliest, latest, an offset (e.g. 42) or @TIMESTAMP_MS (e.g. @1700000000000)"
        ))
    };
    match s {
        "earliest" | "latest" => Ok(json!(s)),
        _ => match s.strip_prefix('@') {
            Some(ts) => {
                let ts: i64 = ts.parse().map_err(|_| bad())?;
                if ts < 0 {
                    return Err(bad());
                }
                Ok(json!({ "timestamp": ts }))
            }
            None => {
                let offset: i64 = s.parse().map_err(|_| bad())?;
                if offset < 0 {
                    return Err(CliError::usage(format!(
                        "--from {s}: an offset cannot be negative (earliest, latest, an offset or @TIMESTAMP_MS)"
                    )));
                }
                Ok(json!({ "offset": offset }))
            }
        },
    }
}

/// `--memory-limit`: bytes, or a number with K/KiB, M/MiB or G/GiB; 256 KiB to 1 GiB.
fn parse_memory(s: &str) -> Result<u64> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => {
            return Err(CliError::usage(format!(
                "--memory-limit {s:?} is not a size: bytes, or a number with KiB, MiB or GiB (e.g. 4MiB)"
            )))
        }
    };
    let bytes = n.parse::<u64>().ok().and_then(|n| n.checked_mul(1 << shift)).ok_or_else(|| {
        CliError::usage(format!(
            "--memory-limit {s:?} is not a size: bytes, or a number with KiB, MiB or GiB (e.g. 4MiB)"
        ))
    })?;
    if !(MIN_MEMORY_LIMIT..=MAX_MEMORY_LIMIT).contains(&bytes) {
        return Err(CliError::usage(format!(
            "--memory-limit {s}: a transform's memory limit is from 256 KiB (a Rust module needs a few pages to start) to 1 GiB"
        )));
    }
    Ok(bytes)
}

fn parse_fuel(s: &str) -> Result<u64> {
    match s.replace('_', "").parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(CliError::usage(format!("--fuel {s:?} is not a positive whole number (e.g. 2000000000)"))),
    }
}

/// The request body of a deploy, checked here so a mistake is named before anything is sent.
fn deploy_body(a: &DeployArgs, module: &[u8]) -> Result<Value> {
    let mut body = json!({
        "input": a.input,
        "outputs": a.outputs,
        "env": parse_env(&a.env)?,
        "lookups": a.lookups,
        "module": base64::engine::general_purpose::STANDARD.encode(module),
    });
    if let Some(f) = &a.from {
        body["start"] = parse_from(f)?;
    }
    if let Some(m) = &a.memory_limit {
        body["memory_limit_bytes"] = json!(parse_memory(m)?);
    }
    if let Some(f) = &a.fuel {
        body["fuel_per_batch"] = json!(parse_fuel(f)?);
    }
    Ok(body)
}

/// Everything about the arguments but the module.
fn check_deploy_args(a: &DeployArgs) -> Result<()> {
    check_name(&a.name)?;
    check_topic("--input", &a.input)?;
    if a.outputs.is_empty() || a.outputs.len() > MAX_OUTPUTS {
        return Err(CliError::usage(format!(
            "a transform writes 1 to {MAX_OUTPUTS} topics: give --output TOPIC once for each (got {})",
            a.outputs.len()
        )));
    }
    for (i, o) in a.outputs.iter().enumerate() {
        check_topic("--output", o)?;
        if *o == a.input {
            return Err(CliError::usage(format!(
                "--output {o} is the input topic: the transform would read its own output, forever"
            )));
        }
        if a.outputs[..i].contains(o) {
            return Err(CliError::usage(format!("--output {o} is given twice")));
        }
    }
    if a.lookups.len() > MAX_LOOKUPS {
        return Err(CliError::usage(format!(
            "a transform reads at most {MAX_LOOKUPS} lookup tables (got {} --lookup)",
            a.lookups.len()
        )));
    }
    for (i, l) in a.lookups.iter().enumerate() {
        check_topic("--lookup", l)?;
        if a.lookups[..i].contains(l) {
            return Err(CliError::usage(format!("--lookup {l} is given twice")));
        }
    }
    parse_env(&a.env)?;
    if let Some(f) = &a.from {
        parse_from(f)?;
    }
    if let Some(m) = &a.memory_limit {
        parse_memory(m)?;
    }
    if let Some(f) = &a.fuel {
        parse_fuel(f)?;
    }
    Ok(())
}

fn deploy(cli: &Cli, a: &DeployArgs) -> Result<()> {
    check_deploy_args(a)?;
    let file = match (&a.module, &a.dir) {
        (Some(m), _) => m.clone(),
        (None, Some(dir)) => {
            let project = project_dir(dir)?;
            let wasm = module_path(&project)?;
            if !wasm.exists() {
                return Err(CliError::usage(format!(
                    "{} has no module at {} yet: build it first with `fjordctl transform build {}`",
                    dir.display(),
                    wasm.display(),
                    dir.display()
                )));
            }
            warn_if_stale(&project, &wasm);
            wasm
        }
        (None, None) => return Err(CliError::usage("give the module: --module FILE.wasm or --dir PROJECT_DIR")),
    };
    let module = read_module(&file)?;
    let body = deploy_body(a, &module)?;
    let admin = cli.admin()?;
    let progress = Progress::new();
    progress.update(&format!("deploying {} ({}) to {}", a.name, human_bytes(module.len() as u64), admin.url()));
    let view = call(&admin, "PUT", &path(&a.name)?, Some(&body));
    progress.clear();
    print_view(cli.format, &view?);
    Ok(())
}

/// The module at `file`, checked to be a core WebAssembly module with the ABI's exports.
fn read_module(file: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(file).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => CliError::usage(format!("module {} does not exist", file.display())),
        _ => CliError::usage(format!("module {}: {e}", file.display())),
    })?;
    if !meta.is_file() {
        return Err(CliError::usage(format!("module {} is not a file", file.display())));
    }
    if meta.len() > MAX_MODULE_BYTES {
        return Err(CliError::usage(format!(
            "module {} is {}; fjordctl deploys modules up to {} (build with `fjordctl transform build`, which optimizes for size)",
            file.display(),
            human_bytes(meta.len()),
            human_bytes(MAX_MODULE_BYTES)
        )));
    }
    let bytes = std::fs::read(file).map_err(|e| CliError::usage(format!("module {}: {e}", file.display())))?;
    check_module(&bytes).map_err(|why| CliError::usage(format!("module {}: {why}", file.display())))?;
    Ok(bytes)
}

/// Checks what can be checked before the broker sees the module: the magic, a core module's
/// version, and the exports ABI.md requires.
fn check_module(b: &[u8]) -> std::result::Result<(), String> {
    if b.len() < 8 || &b[..4] != b"\0asm" {
        return Err("not a WebAssembly module (it does not start with \\0asm): give the .wasm a build made".into());
    }
    if b[4..8] != [1, 0, 0, 0] {
        return Err(
            "a WebAssembly component, not a core module: build for wasm32-wasip1 (not wasm32-wasip2)".to_string()
        );
    }
    let exports = exports(&b[8..]).ok_or("not a valid WebAssembly module (its sections are cut short)")?;
    let missing: Vec<&str> = REQUIRED_EXPORTS
        .iter()
        .filter(|(name, kind)| !exports.iter().any(|(n, k)| n == name && k == kind))
        .map(|(name, _)| *name)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "it does not export {} (transforms/ABI.md): is it built with the Fjord transform SDK, as a cdylib?",
            missing.join(", ")
        ));
    }
    Ok(())
}

/// The (name, kind) of every export in a module's sections.
fn exports(mut b: &[u8]) -> Option<Vec<(String, u8)>> {
    fn leb(b: &mut &[u8]) -> Option<u32> {
        let mut out: u64 = 0;
        for shift in (0..35).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            out |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return u32::try_from(out).ok();
            }
        }
        None
    }
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Some(head)
    }
    let mut out = Vec::new();
    while let Some((&id, rest)) = b.split_first() {
        b = rest;
        let size = leb(&mut b)? as usize;
        let mut section = take(&mut b, size)?;
        if id == 7 {
            for _ in 0..leb(&mut section)? {
                let len = leb(&mut section)? as usize;
                let name = String::from_utf8_lossy(take(&mut section, len)?).into_owned();
                let kind = *take(&mut section, 1)?.first()?;
                leb(&mut section)?;
                out.push((name, kind));
            }
        }
    }
    Some(out)
}

/// Says so on stderr when a project's sources changed after its module was built.
fn warn_if_stale(project: &Path, wasm: &Path) {
    let Ok(built) = std::fs::metadata(wasm).and_then(|m| m.modified()) else { return };
    fn newest(dir: &Path) -> Option<std::time::SystemTime> {
        let mut out = None;
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let p = e.path();
            let t = if p.is_dir() { newest(&p) } else { e.metadata().ok()?.modified().ok() };
            out = out.max(t);
        }
        out
    }
    let sources = [project.join("src"), project.join("Cargo.toml")];
    let changed =
        sources.iter().filter_map(|p| if p.is_dir() { newest(p) } else { p.metadata().ok()?.modified().ok() }).max();
    if changed.is_some_and(|c| c > built) {
        eprintln!(
            "fjordctl: warning: {} changed after {} was built; `fjordctl transform build {}` first to deploy the change",
            project.display(),
            wasm.display(),
            project.display()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// build

fn project_dir(dir: &Path) -> Result<PathBuf> {
    if !dir.join("Cargo.toml").is_file() {
        return Err(CliError::usage(format!(
            "{} has no Cargo.toml: give a transform project's directory (`fjordctl transform init NAME` makes one)",
            dir.display()
        )));
    }
    std::fs::canonicalize(dir).map_err(|e| CliError::usage(format!("{}: {e}", dir.display())))
}

fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").filter(|c| !c.is_empty()).unwrap_or_else(|| "cargo".into())
}

fn no_cargo(e: std::io::Error) -> CliError {
    if e.kind() == std::io::ErrorKind::NotFound {
        CliError::usage(format!(
            "cargo is not installed (or not on PATH): install Rust from https://rustup.rs, then `rustup target add {TARGET}`"
        ))
    } else {
        CliError::failed(format!("running cargo: {e}"))
    }
}

/// The .wasm `cargo build --release --target wasm32-wasip1` makes of the project in `dir`:
/// `<target_directory>/wasm32-wasip1/release/<lib name>.wasm`, from `cargo metadata`.
fn module_path(dir: &Path) -> Result<PathBuf> {
    let out = Command::new(cargo())
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(no_cargo)?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        let why = why.lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join("; ");
        return Err(CliError::usage(format!("cargo metadata in {}: {why}", dir.display())));
    }
    let meta: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| CliError::failed(format!("cargo metadata in {}: not JSON ({e})", dir.display())))?;
    let target_dir = meta["target_directory"]
        .as_str()
        .ok_or_else(|| CliError::failed(format!("cargo metadata in {}: no target_directory", dir.display())))?;
    let packages = meta["packages"].as_array().cloned().unwrap_or_default();
    let cdylib = |p: &Value| {
        p["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["kind"].as_array().into_iter().flatten().any(|k| k == "cdylib"))
            .and_then(|t| t["name"].as_str())
            .map(str::to_string)
    };
    let here = dir.join("Cargo.toml");
    // The package of this directory, else the workspace's only cdylib.
    let package = packages
        .iter()
        .find(|p| p["manifest_path"].as_str().is_some_and(|m| Path::new(m) == here))
        .or_else(|| {
            let libs: Vec<&Value> = packages.iter().filter(|p| cdylib(p).is_some()).collect();
            (libs.len() == 1).then(|| libs[0])
        })
        .ok_or_else(|| {
            CliError::usage(format!(
                "{} is a workspace of several packages: give the directory of the transform's own package",
                dir.display()
            ))
        })?;
    let lib = cdylib(package).ok_or_else(|| {
        CliError::usage(format!(
            "package {} builds no cdylib, so no module: add `[lib] crate-type = [\"cdylib\"]` to {}",
            text(&package["name"]),
            text(&package["manifest_path"])
        ))
    })?;
    Ok(Path::new(target_dir).join(TARGET).join("release").join(format!("{}.wasm", lib.replace('-', "_"))))
}

/// Whether the toolchain that builds in `dir` has the standard library for wasm32-wasip1;
/// None when rustc cannot say (cargo's own error says it then).
fn target_installed(dir: &Path) -> Option<bool> {
    let rustc = std::env::var_os("RUSTC").filter(|r| !r.is_empty()).unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let libdir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Some(std::fs::read_dir(libdir).is_ok_and(|mut d| d.next().is_some()))
}

#[derive(Serialize)]
struct Built {
    module: PathBuf,
    size_bytes: u64,
}

fn build(cli: &Cli, dir: &Path) -> Result<()> {
    let project = project_dir(dir)?;
    if target_installed(&project) == Some(false) {
        return Err(CliError::usage(format!(
            "the {TARGET} target is not installed for the Rust toolchain that builds {}: install it with `rustup target add {TARGET}`",
            dir.display()
        )));
    }
    eprintln!("fjordctl: building {} (cargo build --release --target {TARGET})", project.display());
    // cargo's progress and errors go to stderr as cargo prints them; stdout is for the result.
    let to_stderr = std::io::stderr().as_fd().try_clone_to_owned()?;
    let status = Command::new(cargo())
        .args(["build", "--release", "--target", TARGET])
        .current_dir(&project)
        .stdin(Stdio::null())
        .stdout(Stdio::from(to_stderr))
        .stderr(Stdio::inherit())
        .status()
        .map_err(no_cargo)?;
    if !status.success() {
        return Err(CliError::failed(format!(
            "cargo build failed in {} ({status}): its errors are above",
            project.display()
        )));
    }
    let module = module_path(&project)?;
    let size_bytes = std::fs::metadata(&module)
        .map_err(|e| CliError::failed(format!("cargo built, but {}: {e}", module.display())))?
        .len();
    let out = Built { module, size_bytes };
    emit(cli.format, &out, |b| {
        pairs(&[
            ("module", b.module.display().to_string()),
            ("size", format!("{} ({})", b.size_bytes, human_bytes(b.size_bytes))),
        ])
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// init

/// The SDK's files (transforms/sdk), vendored into every scaffold so it builds offline.
const SDK_FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../../transforms/sdk/Cargo.toml")),
    ("src/lib.rs", include_str!("../../transforms/sdk/src/lib.rs")),
    ("src/codec.rs", include_str!("../../transforms/sdk/src/codec.rs")),
    ("src/host.rs", include_str!("../../transforms/sdk/src/host.rs")),
    ("src/testing.rs", include_str!("../../transforms/sdk/src/testing.rs")),
    ("src/tests.rs", include_str!("../../transforms/sdk/src/tests.rs")),
];

/// Where the scaffold vendors the SDK, relative to the project.
const SDK_DIR: &str = "fjord-transform-sdk";

const LIB_RS: &str = include_str!("transform_template/lib.rs");

fn check_package_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let legal = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.len() <= 64;
    if !legal {
        return Err(CliError::usage(format!(
            "{name:?} cannot be a package name: start with a letter, then letters, digits, '-' or '_' (64 at most)"
        )));
    }
    if name.replace('-', "_") == sdk_package().replace('-', "_") {
        return Err(CliError::usage(format!("{name:?} is the SDK's own package name: choose another")));
    }
    Ok(())
}

/// The SDK's package name, from its Cargo.toml.
fn sdk_package() -> String {
    toml::from_str::<toml::Table>(SDK_FILES[0].1)
        .ok()
        .and_then(|t| t.get("package")?.get("name")?.as_str().map(str::to_string))
        .unwrap_or_else(|| "fjord-transform-sdk".to_string())
}

/// The scaffold's files, path (relative to the project) and contents.
fn scaffold(name: &str) -> Vec<(String, String)> {
    let sdk = sdk_package();
    let cargo_toml = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
# A WebAssembly module the broker loads (transforms/ABI.md).
crate-type = ["cdylib"]

[dependencies]
{sdk} = {{ path = "{SDK_DIR}" }}

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
panic = "abort"
strip = true

# A workspace of its own: the project builds the same wherever it is, inside another
# workspace's directory or not.
[workspace]
"#
    );
    let config = format!(
        r#"[build]
target = "{TARGET}"

[target.{TARGET}]
rustflags = ["-C", "link-arg=-zstack-size=65536"]
"#
    );
    let readme = format!(
        "# {name}\n\nA Fjord transform (a WebAssembly module for `{TARGET}`).\n\n\
         ```sh\n\
         rustup target add {TARGET}        # once\n\
         fjordctl transform build\n\
         fjordctl transform deploy {name} --input IN --output OUT --dir .\n\
         fjordctl transform describe {name}\n\
         fjordctl transform logs {name}\n\
         ```\n\n\
         `src/lib.rs` is the transform; `{SDK_DIR}/` is the SDK it is written against, vendored so the\n\
         project builds offline.\n"
    );
    let mut files = vec![
        ("Cargo.toml".to_string(), cargo_toml),
        (".cargo/config.toml".to_string(), config),
        (".gitignore".to_string(), "/target\n".to_string()),
        ("README.md".to_string(), readme),
        ("src/lib.rs".to_string(), LIB_RS.replace("fjord_transform_sdk", &sdk.replace('-', "_"))),
    ];
    for (path, contents) in SDK_FILES {
        let contents = if *path == "Cargo.toml" { without_workspace(contents) } else { contents.to_string() };
        files.push((format!("{SDK_DIR}/{path}"), contents));
    }
    files
}

/// The SDK's Cargo.toml without its `[workspace]` table (and the comment lines just above it):
/// in the repository the SDK is a workspace of its own, but vendored inside a project it is a
/// member of the project's (cargo refuses two workspace roots in one workspace).
fn without_workspace(manifest: &str) -> String {
    let lines: Vec<&str> = manifest.lines().collect();
    let Some(at) = lines.iter().position(|l| l.trim() == "[workspace]") else {
        return manifest.to_string();
    };
    let end = lines[at + 1..].iter().position(|l| l.trim_start().starts_with('[')).map_or(lines.len(), |i| at + 1 + i);
    let mut start = at;
    while start > 0 && lines[start - 1].trim_start().starts_with('#') {
        start -= 1;
    }
    let mut out: Vec<&str> = lines[..start].to_vec();
    while out.last().is_some_and(|l| l.trim().is_empty()) {
        out.pop();
    }
    out.push("");
    out.push("# Vendored by `fjordctl transform init`: a member of the transform project's workspace.");
    out.push("");
    out.extend(&lines[end..]);
    while out.last().is_some_and(|l| l.trim().is_empty()) {
        out.pop();
    }
    out.join("\n") + "\n"
}

#[derive(Serialize)]
struct Scaffolded {
    name: String,
    dir: PathBuf,
    files: Vec<String>,
}

fn init(cli: &Cli, name: &str, dir: Option<&Path>) -> Result<()> {
    check_package_name(name)?;
    let dir = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    match std::fs::read_dir(&dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(CliError::usage(format!(
                    "{} is not empty: give --dir a new or empty directory",
                    dir.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(CliError::usage(format!("{} is a file, not a directory", dir.display())))
        }
        Err(e) => return Err(CliError::usage(format!("{}: {e}", dir.display()))),
    }
    let files = scaffold(name);
    for (path, contents) in &files {
        let p = dir.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| CliError::failed(format!("{}: {e}", parent.display())))?;
        }
        std::fs::write(&p, contents).map_err(|e| CliError::failed(format!("{}: {e}", p.display())))?;
    }
    let out = Scaffolded {
        name: name.to_string(),
        dir: std::fs::canonicalize(&dir).unwrap_or(dir.clone()),
        files: files.into_iter().map(|(p, _)| p).collect(),
    };
    emit(cli.format, &out, |s| {
        pairs(&[("project", s.name.clone()), ("dir", s.dir.display().to_string()), ("files", s.files.join(" "))])
    });
    if cli.format == Format::Table {
        eprintln!(
            "\nnext:\n  cd {}\n  fjordctl transform build\n  fjordctl transform deploy {name} --input IN --output OUT --dir .",
            dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sdk_source_file_is_embedded() {
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../transforms/sdk");
        let mut on_disk = vec!["Cargo.toml".to_string()];
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(root, &p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        walk(&sdk, &sdk.join("src"), &mut on_disk);
        on_disk.sort();
        let mut embedded: Vec<String> = SDK_FILES.iter().map(|(p, _)| p.to_string()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk, "SDK_FILES must embed every file of transforms/sdk/src");
        for (p, contents) in SDK_FILES {
            assert_eq!(*contents, std::fs::read_to_string(sdk.join(p)).unwrap(), "{p}");
        }
    }

    #[test]
    fn the_vendored_sdk_is_no_workspace_root() {
        let manifest = "[package]\nname = \"sdk\"\n\n[dependencies]\n\n# Its own root:\n# really.\n[workspace]\n\n[features]\nx = []\n";
        assert_eq!(
            without_workspace(manifest),
            "[package]\nname = \"sdk\"\n\n[dependencies]\n\n# Vendored by `fjordctl transform init`: a member of the transform project's workspace.\n\n[features]\nx = []\n"
        );
        let vendored: toml::Table = without_workspace(SDK_FILES[0].1).parse().unwrap();
        assert!(vendored.get("workspace").is_none());
        assert!(vendored.get("package").is_some());
        assert_eq!(without_workspace("[package]\n"), "[package]\n");
    }

    #[test]
    fn starts_parse() {
        assert_eq!(parse_from("earliest").unwrap(), json!("earliest"));
        assert_eq!(parse_from("latest").unwrap(), json!("latest"));
        assert_eq!(parse_from("42").unwrap(), json!({"offset": 42}));
        assert_eq!(parse_from("@1700000000000").unwrap(), json!({"timestamp": 1_700_000_000_000i64}));
        for bad in ["", "-1", "@", "@x", "@-5", "soon", "1.5"] {
            assert!(parse_from(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory_limits_parse() {
        assert_eq!(parse_memory("2097152").unwrap(), 2 << 20);
        assert_eq!(parse_memory("4MiB").unwrap(), 4 << 20);
        assert_eq!(parse_memory("512 KiB").unwrap(), 512 << 10);
        assert_eq!(parse_memory("1g").unwrap(), 1 << 30);
        for bad in ["", "MiB", "1000", "64KiB", "2GiB", "2 parsecs", "-1"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_parses() {
        let env = parse_env(&["A=1".into(), "B=x=y".into(), "C=".into()]).unwrap();
        assert_eq!(env["B"], "x=y");
        assert_eq!(env["C"], "");
        for bad in ["A", "=1", "FJORD_INPUT=x", "FJORD_X=1"] {
            assert!(parse_env(&[bad.to_string()]).is_err(), "{bad}");
        }
        assert!(parse_env(&["A=1".into(), "A=2".into()]).is_err());
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(iso_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(iso_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn modules_are_checked() {
        // (module (memory (export "memory") 1) (func (export "fjord_abi_version") (result i32) i32.const 1) ...)
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        let exports: Vec<(&str, u8)> = vec![("memory", 2), ("fjord_abi_version", 0), ("fjord_alloc", 0)];
        let mut section = vec![exports.len() as u8];
        for (name, kind) in &exports {
            section.push(name.len() as u8);
            section.extend_from_slice(name.as_bytes());
            section.extend_from_slice(&[*kind, 0]);
        }
        m.push(7);
        m.push(section.len() as u8);
        m.extend_from_slice(&section);
        let err = check_module(&m).unwrap_err();
        assert!(err.contains("fjord_on_batch") && !err.contains("fjord_alloc"), "{err}");
        assert!(check_module(b"hello world").unwrap_err().contains("\\0asm"));
        assert!(check_module(b"\0asm\x0d\0\x01\0").unwrap_err().contains("component"));
        assert!(check_module(b"\0asm\x01\0\0\0\x07\x05\x01").unwrap_err().contains("cut short"));
    }
}

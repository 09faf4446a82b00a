//! `fjordctl transform ...` without a broker: arguments refused before anything is sent, the
//! admin API requests as a tiny fake HTTP server receives them (their formatting only; the
//! broker's end-to-end tests deploy real modules), and `init` then `build` of the scaffold
//! making a real module (needs `rustup target add wasm32-wasip1`).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use common::Run;
use serde_json::{json, Value};

/// Where the scaffold builds: outside the clone, kept between runs like the workspace's own.
fn scaffold_target() -> std::path::PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    Path::new(&home).join(".cache/fjord/scaffold-target")
}

/// fjordctl with an empty profiles file, its admin API at `admin`, and `env` on top; killed
/// (and the test failed) past `limit`.
fn fjordctl_env(admin: &str, args: &[&str], env: &[(&str, &str)], limit: Duration) -> Run {
    let config = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fjordctl"));
    cmd.args(args)
        .env("FJORD_ADMIN_URL", format!("http://{admin}"))
        .env("FJORDCTL_CONFIG", config.path().join("config.toml"))
        .env_remove("FJORD_PROFILE")
        .env_remove("FJORD_BROKERS")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("run fjordctl");
    common::bounded(child, args, limit)
}

fn fjordctl(admin: &str, args: &[&str]) -> Run {
    fjordctl_env(admin, args, &[], Duration::from_secs(60))
}

/// An address nothing listens on.
const NOBODY: &str = "127.0.0.1:1";

#[derive(Debug)]
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        assert_eq!(self.header("content-type"), Some("application/json"), "{self:?}");
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A fake admin API answering one request with `status` and `body`: its address, and the
/// request it received (None if none came within 30 s).
fn serve_one(status: u16, body: &str) -> (String, JoinHandle<Option<Request>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    listener.set_nonblocking(true).unwrap();
    let body = body.to_string();
    let handle = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => return None,
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap().to_string();
        let target = parts.next().unwrap().to_string();
        assert_eq!(parts.next(), Some("HTTP/1.1"), "{line}");
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body_in = vec![0; len];
        reader.read_exact(&mut body_in).unwrap();
        let reason = if status == 200 { "OK" } else { "Error" };
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        Some(Request { method, target, headers, body: body_in })
    });
    (addr, handle)
}

/// Runs fjordctl against a fake admin API giving `status` and `answer`: fjordctl's run and the
/// request the API received.
fn against(status: u16, answer: &Value, args: &[&str]) -> (Run, Request) {
    let (addr, server) = serve_one(status, &answer.to_string());
    let run = fjordctl(&addr, args);
    let request = server.join().unwrap().unwrap_or_else(|| panic!("no request came: {}", run.stderr));
    (run, request)
}

/// A module with the exports ABI.md requires (and nothing behind them: the fake API does not
/// run it).
fn module_bytes() -> Vec<u8> {
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    let exports = [("memory", 2u8), ("fjord_abi_version", 0), ("fjord_alloc", 0), ("fjord_on_batch", 0)];
    let mut section = vec![exports.len() as u8];
    for (name, kind) in exports {
        section.push(name.len() as u8);
        section.extend_from_slice(name.as_bytes());
        section.extend_from_slice(&[kind, 0]);
    }
    m.push(7);
    m.push(section.len() as u8);
    m.extend_from_slice(&section);
    m
}

fn view(name: &str, state: &str, error: Option<&str>) -> Value {
    json!({
        "name": name,
        "id": "7f3a",
        "input": "events",
        "outputs": ["masked", "audit"],
        "lookups": ["users"],
        "env": {"FIELDS": "email"},
        "state": state,
        "error": error,
        "module": {"sha256": "ab12", "size_bytes": 1234},
        "memory_limit_bytes": 4194304,
        "fuel_per_batch": 1000000,
        "start": {"timestamp": 1700000000000i64},
        "deployed_ms": 1700000000123i64,
        "partitions": [
            {"partition": 0, "leader": 1, "committed_offset": 40, "end_offset": 42, "lag": 2},
            {"partition": 1, "leader": null, "committed_offset": null, "end_offset": null, "lag": null}
        ]
    })
}

#[test]
fn deploy_arguments_are_checked_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("t.wasm");
    std::fs::write(&wasm, module_bytes()).unwrap();
    let wasm = wasm.to_str().unwrap();
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "not a module at all").unwrap();
    let text = text.to_str().unwrap();
    let bare = dir.path().join("bare.wasm");
    std::fs::write(&bare, b"\0asm\x01\0\0\0").unwrap();
    let bare = bare.to_str().unwrap();
    let deploy = |extra: &[&str]| {
        let mut args = vec!["transform", "deploy", "mask", "--input", "events"];
        args.extend(extra);
        fjordctl(NOBODY, &args)
    };

    deploy(&["--module", wasm]).refused(2, "1 to 8 topics");
    let nine: Vec<String> = (0..9).map(|i| format!("--output=o{i}")).collect();
    let mut args: Vec<&str> = nine.iter().map(String::as_str).collect();
    args.extend(["--module", wasm]);
    deploy(&args).refused(2, "(got 9)");
    deploy(&["--output", "a", "--module", wasm, "--env", "NOEQUALS"]).refused(2, "--env \"NOEQUALS\" is not KEY=VALUE");
    deploy(&["--output", "a", "--module", wasm, "--env", "=v"]).refused(2, "no name");
    deploy(&["--output", "a", "--module", wasm, "--env", "A=1", "--env", "A=2"]).refused(2, "twice");
    deploy(&["--output", "a", "--module", wasm, "--env", "FJORD_INPUT=x"])
        .refused(2, "names starting FJORD_ are the broker's");
    deploy(&["--output", "a", "--module", "/nonexistent/t.wasm"]).refused(2, "/nonexistent/t.wasm does not exist");
    deploy(&["--output", "a", "--module", text]).refused(2, "not a WebAssembly module");
    deploy(&["--output", "a", "--module", bare]).refused(2, "does not export memory, fjord_abi_version");
    deploy(&["--output", "a", "--module", wasm, "--from", "yesterday"]).refused(2, "--from \"yesterday\" is not");
    deploy(&["--output", "a", "--module", wasm, "--from=-5"]).refused(2, "cannot be negative");
    deploy(&["--output", "a", "--module", wasm, "--from", "@soon"]).refused(2, "@TIMESTAMP_MS");
    deploy(&["--output", "a", "--module", wasm, "--memory-limit", "12"]).refused(2, "256 KiB");
    deploy(&["--output", "a", "--module", wasm, "--memory-limit", "lots"]).refused(2, "not a size");
    deploy(&["--output", "a", "--module", wasm, "--fuel", "0"]).refused(2, "--fuel");
    deploy(&["--output", "events", "--module", wasm]).refused(2, "is the input topic");
    deploy(&["--output", "a", "--output", "a", "--module", wasm]).refused(2, "--output a is given twice");
    deploy(&["--output", "bad topic", "--module", wasm]).refused(2, "not a topic name");
    deploy(&["--output", "a", "--dir", dir.path().to_str().unwrap()]).refused(2, "has no Cargo.toml");
    // Neither or both of --module and --dir: clap's own usage error.
    assert_eq!(deploy(&["--output", "a"]).code, 2);
    assert_eq!(deploy(&["--output", "a", "--module", wasm, "--dir", "."]).code, 2);
    // Valid arguments get as far as the (absent) admin API.
    deploy(&["--output", "a", "--module", wasm]).refused(3, "admin API at http://127.0.0.1:1");
    fjordctl(NOBODY, &["transform", "describe", "a/b"]).refused(2, "may hold only ASCII letters");
    deploy(&["--output", "a", "--module", wasm, "--lookup", "l1", "--lookup", "l1"])
        .refused(2, "--lookup l1 is given twice");
}

#[test]
fn requests_are_formatted_as_the_api_wants() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("mask.wasm");
    std::fs::write(&wasm, module_bytes()).unwrap();
    let wasm = wasm.to_str().unwrap();

    // deploy: every field of the body, the module base64-encoded; the view printed as is.
    let answer = view("mask", "running", None);
    let (run, req) = against(
        200,
        &answer,
        &[
            "transform",
            "deploy",
            "mask",
            "--input",
            "events",
            "--output",
            "masked",
            "--output",
            "audit",
            "--module",
            wasm,
            "--env",
            "FIELDS=email",
            "--env",
            "MODE=a=b",
            "--lookup",
            "users",
            "--from",
            "@1700000000000",
            "--memory-limit",
            "4MiB",
            "--fuel",
            "1000000",
            "-o",
            "json",
        ],
    );
    assert_eq!(run.json(), answer);
    assert_eq!((req.method.as_str(), req.target.as_str()), ("PUT", "/v1/transforms/mask"));
    assert_eq!(req.header("content-length").unwrap().parse::<usize>().unwrap(), req.body.len());
    let body = req.json();
    let module = base64::engine::general_purpose::STANDARD.decode(body["module"].as_str().unwrap()).unwrap();
    assert_eq!(module, module_bytes());
    let mut rest = body.clone();
    rest.as_object_mut().unwrap().remove("module");
    assert_eq!(
        rest,
        json!({
            "input": "events",
            "outputs": ["masked", "audit"],
            "env": {"FIELDS": "email", "MODE": "a=b"},
            "lookups": ["users"],
            "start": {"timestamp": 1700000000000i64},
            "memory_limit_bytes": 4194304,
            "fuel_per_batch": 1000000
        })
    );

    // The optional fields are left to the broker when not given; the start positions' forms.
    for (from, start) in
        [(None, None), (Some("earliest"), Some(json!("earliest"))), (Some("42"), Some(json!({"offset": 42})))]
    {
        let mut args = vec!["transform", "deploy", "mask", "--input", "events", "--output", "masked", "--module", wasm];
        if let Some(f) = from {
            args.extend(["--from", f]);
        }
        let (run, req) = against(200, &answer, &args);
        run.ok();
        let body = req.json();
        assert_eq!(body.get("start"), start.as_ref(), "{body}");
        assert!(body.get("memory_limit_bytes").is_none() && body.get("fuel_per_batch").is_none(), "{body}");
        assert_eq!((body["env"].clone(), body["lookups"].clone()), (json!({}), json!([])));
        // The table: every field, the partitions with their offsets and lag.
        assert!(run.stdout.contains("masked,audit") && run.stdout.contains("FIELDS=email"), "{}", run.stdout);
        assert!(run.stdout.contains("2023-11-14T22:13:20.123Z"), "{}", run.stdout);
        let p0 = run.stdout.lines().find(|l| l.starts_with("0 ")).unwrap();
        assert_eq!(p0.split_whitespace().collect::<Vec<_>>(), ["0", "1", "40", "42", "2"]);
    }

    // A refusal: the API's message, exit 1.
    let (run, _) = against(
        400,
        &json!({"error": "module does not export fjord_on_batch"}),
        &["transform", "deploy", "mask", "--input", "events", "--output", "masked", "--module", wasm],
    );
    run.refused(1, "400 module does not export fjord_on_batch");

    // list, describe, pause, resume, delete, logs: their method and path.
    let (run, req) = against(
        200,
        &json!([view("mask", "running", None), view("route", "paused", Some("trap: out of fuel"))]),
        &["transform", "list"],
    );
    assert_eq!((req.method.as_str(), req.target.as_str()), ("GET", "/v1/transforms"));
    let lines: Vec<&str> = run.ok().stdout.lines().collect();
    assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["NAME", "STATE", "INPUT", "OUTPUTS", "LAG", "ERROR"]);
    assert!(
        lines[1].starts_with("mask ") && lines[1].contains(" running ") && lines[1].contains(" 2 "),
        "{}",
        run.stdout
    );
    assert!(lines[2].contains("paused") && lines[2].ends_with("trap: out of fuel"), "{}", run.stdout);

    let paused = view("mask", "paused", Some("wasm trap: unreachable\n  0: fjord_on_batch\n  1: identity"));
    let (run, req) = against(200, &paused, &["transform", "describe", "mask"]);
    assert_eq!((req.method.as_str(), req.target.as_str()), ("GET", "/v1/transforms/mask"));
    let error_row = run.ok().stdout.lines().find(|l| l.starts_with("error ")).unwrap().to_string();
    assert!(error_row.ends_with("wasm trap: unreachable (in full below)"), "{}", run.stdout);
    assert!(
        run.stdout.ends_with("\nerror:\n  wasm trap: unreachable\n    0: fjord_on_batch\n    1: identity\n"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("timestamp 1700000000000"), "{}", run.stdout);
    let (run, req) = against(200, &paused, &["transform", "describe", "mask.v2", "-o", "json"]);
    assert_eq!(req.target, "/v1/transforms/mask.v2");
    assert_eq!(run.json(), paused);

    let (run, req) = against(200, &paused, &["transform", "pause", "mask", "-o", "json"]);
    assert_eq!((req.method.as_str(), req.target.as_str()), ("POST", "/v1/transforms/mask/pause"));
    assert_eq!(req.header("content-length"), Some("0"));
    assert_eq!(run.json()["state"], "paused");
    let (run, req) = against(200, &view("mask", "running", None), &["transform", "resume", "mask", "-o", "json"]);
    assert_eq!((req.method.as_str(), req.target.as_str()), ("POST", "/v1/transforms/mask/resume"));
    assert_eq!(run.json()["state"], "running");

    let (run, req) = against(200, &json!({"deleted": "mask"}), &["transform", "delete", "mask", "-o", "json"]);
    assert_eq!((req.method.as_str(), req.target.as_str()), ("DELETE", "/v1/transforms/mask"));
    assert_eq!(run.json(), json!({"deleted": "mask"}));

    let logs = json!([
        {"timestamp": 1700000000000i64, "level": "info", "partition": 0, "message": "started"},
        {"timestamp": 1700000000001i64, "level": "error", "partition": null, "message": "paused: out of fuel"}
    ]);
    let (run, req) = against(200, &logs, &["transform", "logs", "mask", "-n", "5"]);
    assert_eq!((req.method.as_str(), req.target.as_str()), ("GET", "/v1/transforms/mask/logs?limit=5"));
    assert_eq!(
        run.ok().stdout,
        "2023-11-14T22:13:20.000Z info [p0] started\n2023-11-14T22:13:20.001Z error paused: out of fuel\n"
    );
    let (run, req) = against(200, &logs, &["transform", "logs", "mask", "-o", "json"]);
    assert_eq!(req.target, "/v1/transforms/mask/logs?limit=100");
    assert_eq!(run.json(), logs);

    // Errors: the API's 404, a server without the transforms API, no server at all.
    let (run, _) = against(404, &json!({"error": "no transform named nope"}), &["transform", "describe", "nope"]);
    run.refused(1, "no transform named nope");
    let (addr, server) = serve_one(404, "");
    fjordctl(&addr, &["transform", "list"]).refused(1, "has no transforms API");
    server.join().unwrap().unwrap();
    fjordctl(NOBODY, &["transform", "list"]).refused(3, "admin API");
    assert_eq!(fjordctl(NOBODY, &["transform", "logs", "mask", "-n", "0"]).code, 2, "-n 0 is refused");
}

/// `init` writes a project that `build` turns into a module `deploy --dir` sends, inside
/// another workspace's directory (the scaffold is a workspace of its own).
#[test]
fn init_then_build_makes_a_module() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("Cargo.toml"), "[workspace]\nmembers = []\n").unwrap();
    let project = root.path().join("my-mask");
    let p = project.to_str().unwrap();
    let init = fjordctl(NOBODY, &["transform", "init", "my-mask", "--dir", p, "-o", "json"]).json();
    assert_eq!(init["name"], "my-mask");
    for f in [
        "Cargo.toml",
        ".cargo/config.toml",
        "src/lib.rs",
        "fjord-transform-sdk/Cargo.toml",
        "fjord-transform-sdk/src/lib.rs",
    ] {
        assert!(project.join(f).is_file(), "{f} missing");
    }
    let manifest: toml::Table = std::fs::read_to_string(project.join("Cargo.toml")).unwrap().parse().unwrap();
    assert_eq!(manifest["lib"]["crate-type"], toml::Value::Array(vec!["cdylib".into()]));
    assert_eq!(manifest["profile"]["release"]["opt-level"].as_str(), Some("s"));
    assert_eq!(manifest["profile"]["release"]["panic"].as_str(), Some("abort"));
    assert!(manifest["workspace"].as_table().is_some_and(|w| w.is_empty()));
    let config = std::fs::read_to_string(project.join(".cargo/config.toml")).unwrap();
    assert!(config.contains("target = \"wasm32-wasip1\"") && config.contains("-zstack-size=65536"), "{config}");

    fjordctl(NOBODY, &["transform", "init", "my-mask", "--dir", p]).refused(2, "is not empty");
    fjordctl(NOBODY, &["transform", "init", "9lives", "--dir", root.path().join("x").to_str().unwrap()])
        .refused(2, "cannot be a package name");

    // Not built yet: deploy --dir says to build first.
    let deploy = ["transform", "deploy", "my-mask", "--input", "events", "--output", "masked", "--dir", p];
    fjordctl(NOBODY, &deploy).refused(2, "fjordctl transform build");

    let target = scaffold_target();
    let env = [("CARGO_TARGET_DIR", target.to_str().expect("utf-8 path"))];
    let built = fjordctl_env(NOBODY, &["transform", "build", p, "-o", "json"], &env, Duration::from_secs(900));
    assert!(
        built.stderr.contains("Compiling my-mask") || built.stderr.contains("Finished"),
        "cargo's progress on stderr: {}",
        built.stderr
    );
    let built = built.json();
    let wasm = Path::new(built["module"].as_str().unwrap()).to_path_buf();
    assert_eq!(wasm, scaffold_target().join("wasm32-wasip1/release/my_mask.wasm"));
    let bytes = std::fs::read(&wasm).unwrap();
    assert_eq!(built["size_bytes"].as_u64(), Some(bytes.len() as u64));
    assert!(bytes.starts_with(b"\0asm\x01\0\0\0"));

    // The scaffold's own unit test passes on the build machine (the SDK's TestHost in place of
    // the broker), as its src/lib.rs says to run it.
    let rustc = Command::new("rustc").arg("-vV").output().unwrap();
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .unwrap();
    let tested = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["test", "--offline", "--target", &host])
        .current_dir(&project)
        .env("CARGO_TARGET_DIR", scaffold_target())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&tested.stdout);
    assert!(tested.status.success() && said.contains("1 passed"), "{said}{}", String::from_utf8_lossy(&tested.stderr));

    // deploy --dir sends that module (the fake API checks nothing more).
    let (addr, server) = serve_one(200, &view("my-mask", "running", None).to_string());
    fjordctl_env(&addr, &deploy, &env, Duration::from_secs(60)).ok();
    let req = server.join().unwrap().unwrap();
    let sent = base64::engine::general_purpose::STANDARD.decode(req.json()["module"].as_str().unwrap()).unwrap();
    assert_eq!(sent, bytes);

    // A toolchain without the target: said, with how to install it, before cargo runs.
    let bin = root.path().join("rustc-without-wasm");
    std::fs::write(&bin, "#!/bin/sh\necho /nonexistent/lib/rustlib/wasm32-wasip1/lib\n").unwrap();
    let mut perms = std::fs::metadata(&bin).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&bin, perms).unwrap();
    fjordctl_env(NOBODY, &["transform", "build", p], &[("RUSTC", bin.to_str().unwrap())], Duration::from_secs(60))
        .refused(2, "rustup target add wasm32-wasip1");
    fjordctl(NOBODY, &["transform", "build", root.path().join("none").to_str().unwrap()]).refused(2, "no Cargo.toml");
}

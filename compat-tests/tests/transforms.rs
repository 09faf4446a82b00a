//! WASM transforms (transforms/ABI.md) through `fjordctl transform`, against live brokers: every
//! example of transforms/examples deployed and its outputs read back exactly by a real client;
//! broken modules refused or paused with a clear message while the node serves on; and in a
//! cluster, a SIGKILLed node and leader changes neither lose nor duplicate an output record.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use fjord_compat_tests::cluster::LocalCluster;
use fjord_compat_tests::{
    clients_dir, fjordctl_bin, free_addr, http_json, kcat_produce, python, run_client, scrape_metrics, wait_until,
    BrokerProcess,
};
use serde_json::{json, Value};

/// A built example module (transforms/examples/build.sh, which scripts/test.sh runs first).
fn example(name: &str) -> PathBuf {
    let dir = std::env::var("FJORD_WASM_DIR").map(PathBuf::from).unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        PathBuf::from(home).join(".cache/fjord/wasm-target/wasm32-wasip1/release")
    });
    let path = dir.join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing: run transforms/examples/build.sh (scripts/test.sh does)", path.display());
    path
}

fn py(args: &[&str]) -> Command {
    let mut c = Command::new(python());
    c.current_dir(clients_dir().join("python")).arg("transforms.py").args(args);
    c.env_remove("LD_LIBRARY_PATH");
    c
}

fn fjordctl(admin: &str, args: &[&str]) -> Output {
    Command::new(fjordctl_bin())
        .args(["--admin-url", &format!("http://{admin}"), "--timeout", "60"])
        .args(args)
        .output()
        .expect("fjordctl runs")
}

fn fjordctl_ok(admin: &str, args: &[&str]) -> String {
    let out = fjordctl(admin, args);
    assert!(
        out.status.success(),
        "fjordctl {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn describe(admin: &str, name: &str) -> Value {
    http_json(admin, &format!("/v1/transforms/{name}"), 200)
}

/// Waits until the transform has processed its input to the end on every partition.
fn wait_caught_up(admin: &str, name: &str, timeout: Duration) -> Value {
    let mut last = Value::Null;
    wait_until(timeout, &format!("transform {name} caught up"), || {
        last = describe(admin, name);
        assert_ne!(last["state"], "paused", "transform {name} paused: {last}");
        let parts = last["partitions"].as_array().cloned().unwrap_or_default();
        !parts.is_empty()
            && parts.iter().all(|p| p["committed_offset"].is_i64() && p["committed_offset"] == p["end_offset"])
    });
    last
}

/// The value of the series `series` (a metric name with its labels, as the Prometheus page
/// writes them) on the node whose admin API is `admin`; 0 while it is not on the page.
fn metric(admin: &str, series: &str) -> f64 {
    scrape_metrics(admin, "fjord_")
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The consumer groups the broker at `bootstrap` lists (fjordctl group list).
fn groups(admin: &str, bootstrap: &str) -> Vec<String> {
    let listed: Value = serde_json::from_str(&fjordctl_ok(admin, &["-b", bootstrap, "-o", "json", "group", "list"]))
        .expect("group list is JSON");
    listed.as_array().expect("a list").iter().filter_map(|g| g["group"].as_str().map(String::from)).collect()
}

fn topics(bootstrap: &str, spec: Value) {
    run_client(&mut py(&["topics", bootstrap, &spec.to_string()]), Duration::from_secs(90));
}

const N: usize = 400;

#[test]
fn every_example_deployed_with_fjordctl_writes_exactly_its_outputs() {
    let admin = free_addr();
    let broker = BrokerProcess::start(&["--admin-listen", &admin]);
    let b = broker.bootstrap();
    topics(
        &b,
        json!({
            "events": [3, {}], "raw": [3, {}], "users": [1, {"cleanup.policy": "compact"}],
            "identity-out": [3, {}], "purchases": [2, {}], "enriched": [3, {}], "redacted": [1, {}],
            "page_view": [1, {}], "click": [1, {}], "route-rest": [2, {}],
            "valid": [2, {}], "dead-letter": [1, {}],
        }),
    );
    run_client(&mut py(&["produce", &b, "users", "0", "users"]), Duration::from_secs(60));
    // Half the events before the deploys, half after: both the backlog and the live stream.
    let n = N.to_string();
    run_client(&mut py(&["produce", &b, "events", &(N / 2).to_string(), "events"]), Duration::from_secs(60));
    let deploys: Vec<(&str, Vec<&str>)> = vec![
        ("identity", vec!["--input", "events", "--output", "identity-out"]),
        (
            "filter",
            vec![
                "--input",
                "events",
                "--output",
                "purchases",
                "--env",
                "FILTER_FIELD=type",
                "--env",
                "FILTER_VALUE=purchase",
            ],
        ),
        ("enrich", vec!["--input", "events", "--output", "enriched", "--lookup", "users"]),
        ("redact", vec!["--input", "events", "--output", "redacted", "--env", "REDACT_FIELDS=email,ip"]),
        (
            "route",
            vec![
                "--input",
                "events",
                "--output",
                "page_view",
                "--output",
                "click",
                "--output",
                "route-rest",
                "--env",
                "ROUTE_FIELD=type",
            ],
        ),
        (
            "validate",
            vec![
                "--input",
                "raw",
                "--output",
                "valid",
                "--output",
                "dead-letter",
                "--env",
                "REQUIRED_FIELDS=event_id,user",
            ],
        ),
    ];
    for (name, args) in &deploys {
        let module = example(name);
        let mut all =
            vec!["transform", "deploy", name, "--module", module.to_str().expect("path"), "--from", "earliest"];
        all.extend(args.iter().copied());
        fjordctl_ok(&admin, &all);
    }
    // The rest of the events, and the raw ones, with the transforms running.
    run_client(&mut py(&["produce", &b, "events", &n, "events", &(N / 2).to_string()]), Duration::from_secs(60));
    run_client(&mut py(&["produce", &b, "raw", &n, "raw"]), Duration::from_secs(60));
    for (name, _) in &deploys {
        wait_caught_up(&admin, name, Duration::from_secs(120));
    }
    for (name, _) in &deploys {
        run_client(&mut py(&["check", &b, name, &n]), Duration::from_secs(120));
    }
    // The node's metrics count what went through: identity writes one record per input, filter
    // fewer; each input partition has a runner here and no lag.
    let series = |m: &str, t: &str| format!("fjord_transform_{m}{{transform=\"{t}\"}}");
    let identity_in = metric(&admin, &series("records_in_total", "identity"));
    assert!(identity_in >= N as f64, "identity read {identity_in} of {N} records");
    if metric(&admin, &series("restarts_total", "identity")) == 0.0 {
        assert_eq!(identity_in, N as f64, "identity read each input once");
    }
    assert_eq!(metric(&admin, &series("records_out_total", "identity")), identity_in);
    let filtered = metric(&admin, &series("records_out_total", "filter"));
    assert!(
        filtered > 0.0 && filtered < metric(&admin, &series("records_in_total", "filter")),
        "filter wrote {filtered}"
    );
    assert_eq!(metric(&admin, &series("runners", "identity")), 3.0);
    assert!(metric(&admin, &series("batch_seconds_count", "enrich")) >= 1.0);
    for p in 0..3 {
        let lag = format!("fjord_transform_lag_records{{transform=\"identity\",partition=\"{p}\"}}");
        wait_until(Duration::from_secs(30), "identity's lag reported as none", || metric(&admin, &lag) == 0.0);
    }
    // list and describe show them; -o json is machine-readable.
    let listed: Value = serde_json::from_str(&fjordctl_ok(&admin, &["-o", "json", "transform", "list"])).expect("JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(deploys.len()), "{listed}");
    let d: Value =
        serde_json::from_str(&fjordctl_ok(&admin, &["-o", "json", "transform", "describe", "enrich"])).expect("JSON");
    assert_eq!(d["state"], "running");
    assert_eq!(d["lookups"], json!(["users"]));
    assert_eq!(d["partitions"].as_array().map(Vec::len), Some(3), "{d}");
    // Pause: new input waits; resume: it is processed, once.
    fjordctl_ok(&admin, &["transform", "pause", "identity"]);
    assert_eq!(describe(&admin, "identity")["state"], "paused");
    wait_until(Duration::from_secs(30), "identity's runners stopped", || {
        metric(&admin, &series("runners", "identity")) == 0.0
    });
    kcat_produce(
        &b,
        "events",
        "none",
        0,
        &[],
        "user-0:{\"event_id\":\"late\",\"type\":\"click\",\"user\":\"user-0\"}\n",
    );
    fjordctl_ok(&admin, &["transform", "resume", "identity"]);
    wait_caught_up(&admin, "identity", Duration::from_secs(60));
    // Delete: gone from the list, and so is the group that kept its progress.
    let progress = |g: &String| g.starts_with("__fjord.transform.route.");
    assert_eq!(groups(&admin, &b).iter().filter(|g| progress(g)).count(), 1, "route's progress group is listed");
    fjordctl_ok(&admin, &["transform", "delete", "route"]);
    let out = fjordctl(&admin, &["transform", "describe", "route"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no transform named route"), "{out:?}");
    wait_until(Duration::from_secs(30), "route's progress group deleted", || !groups(&admin, &b).iter().any(progress));
    assert!(groups(&admin, &b).iter().any(|g| g.starts_with("__fjord.transform.identity.")), "others' groups stay");
    assert_eq!(metric(&admin, &series("runners", "route")), 0.0);
}

/// WebAssembly text for a module with the ABI's exports whose `fjord_on_batch` body is `body`.
fn module_wat(body: &str) -> String {
    format!(
        r#"(module
            (memory (export "memory") 2)
            (func (export "fjord_abi_version") (result i32) i32.const 1)
            (func (export "fjord_alloc") (param i32) (result i32) i32.const 1024)
            (func (export "fjord_on_batch") (param i32 i32) (result i32) {body}))"#
    )
}

fn write_module(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> String {
    let p = dir.path().join(format!("{name}.wasm"));
    std::fs::write(&p, bytes).expect("write module");
    p.to_string_lossy().into_owned()
}

#[test]
fn broken_modules_are_refused_or_paused_and_the_node_serves_on() {
    let admin = free_addr();
    let broker = BrokerProcess::start(&["--admin-listen", &admin]);
    let b = broker.bootstrap();
    topics(&b, json!({"in": [1, {}], "out": [1, {}]}));
    let dir = tempfile::tempdir().expect("temp dir");
    let deploy = |name: &str, module: &str, extra: &[&str]| {
        let mut args = vec!["transform", "deploy", name, "--module", module, "--input", "in", "--output", "out"];
        args.extend_from_slice(extra);
        fjordctl(&admin, &args)
    };
    // Refused at deploy, each with what is wrong.
    let garbage = write_module(&dir, "garbage", b"\0asm\x01\0\0\0 this is not a module");
    let missing = write_module(
        &dir,
        "missing",
        &wat::parse_str(
            r#"(module (memory (export "memory") 1) (func (export "fjord_abi_version") (result i32) i32.const 1))"#,
        )
        .expect("wat"),
    );
    let imports = write_module(
        &dir,
        "imports",
        &wat::parse_str(
            module_wat("i32.const 0")
                .replace("(module", r#"(module (import "env" "socket" (func (param i32) (result i32)))"#),
        )
        .expect("wat"),
    );
    let wrong_abi = write_module(
        &dir,
        "wrong-abi",
        &wat::parse_str(module_wat("i32.const 0").replace("(result i32) i32.const 1)", "(result i32) i32.const 7)"))
            .expect("wat"),
    );
    for (module, says) in [
        (&garbage, "not a valid WebAssembly module"),
        (&missing, "does not export fjord_alloc, fjord_on_batch"),
        (&imports, "env.socket"),
        (&wrong_abi, "ABI version 7"),
    ] {
        let out = deploy("refused", module, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{module}: {err}");
    }
    assert_eq!(http_json(&admin, "/v1/transforms", 200), json!([]), "nothing refused was deployed");

    // Deployed, then paused by the first batch, each with its reason.
    let trap = write_module(&dir, "trap", &wat::parse_str(module_wat("unreachable")).expect("wat"));
    let spin = write_module(&dir, "spin", &wat::parse_str(module_wat("(loop (br 0)) i32.const 0")).expect("wat"));
    let hog = write_module(
        &dir,
        "hog",
        &wat::parse_str(module_wat(
            "(loop (br_if 0 (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) unreachable",
        ))
        .expect("wat"),
    );
    let failing = write_module(&dir, "fails", &wat::parse_str(module_wat("i32.const 3")).expect("wat"));
    let cases: [(&str, &String, &[&str], &str); 4] = [
        ("trap", &trap, &[], "trapped"),
        ("spin", &spin, &["--fuel", "20000000"], "out of fuel"),
        ("hog", &hog, &[], "memory limit of 2097152"),
        ("fails", &failing, &[], "returned error 3"),
    ];
    for (name, module, extra, _) in &cases {
        let out = deploy(name, module, extra);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    kcat_produce(&b, "in", "none", 0, &[], "k:first\nk:second\n");
    for (name, _, _, says) in &cases {
        let mut d = Value::Null;
        wait_until(Duration::from_secs(60), &format!("{name} paused"), || {
            d = describe(&admin, name);
            d["state"] == "paused"
        });
        let error = d["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{name}: {d}");
        // describe (table) shows the error; the logs topic has it too.
        assert!(fjordctl_ok(&admin, &["transform", "describe", name]).contains(says));
        let logs = fjordctl_ok(&admin, &["transform", "logs", name]);
        assert!(logs.contains("paused") && logs.contains(says), "{name} logs: {logs}");
        // Nothing of the failed batches was written.
        assert_eq!(d["partitions"][0]["committed_offset"], Value::Null, "{d}");
        assert_eq!(metric(&admin, &format!("fjord_transform_failures_total{{transform=\"{name}\"}}")), 1.0);
    }
    // The node serves on: produce and fetch on it still work.
    kcat_produce(&b, "in", "none", 0, &[], "k:third\n");
    let out = run_client(
        Command::new("kcat").args(["-b", &b, "-t", "in", "-C", "-o", "beginning", "-c", "3", "-e", "-f", "%s\n"]),
        Duration::from_secs(30),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "first\nsecond\nthird\n");
    let out = run_client(
        Command::new("kcat").args(["-b", &b, "-t", "out", "-C", "-o", "beginning", "-e", "-f", "%s\n"]),
        Duration::from_secs(30),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "no output from failed batches");
    // A resumed transform that fails again is paused again.
    fjordctl_ok(&admin, &["transform", "resume", "trap"]);
    wait_until(Duration::from_secs(60), "trap paused again", || describe(&admin, "trap")["state"] == "paused");
}

/// `fjordctl transform deploy copy` of `module` from clicks to clicks-out: the view it prints.
fn deploy_copy(admin: &str, module: &std::path::Path, extra: &[&str]) -> Value {
    let module = module.to_str().expect("path");
    let mut args = vec!["-o", "json", "transform", "deploy", "copy", "--module", module];
    args.extend(["--input", "clicks", "--output", "clicks-out"]);
    args.extend_from_slice(extra);
    serde_json::from_str(&fjordctl_ok(admin, &args)).expect("JSON")
}

#[test]
fn a_killed_node_and_leader_changes_neither_lose_nor_duplicate_outputs() {
    // Leaders go back to their preferred replicas within a second of being able to.
    let mut cluster = LocalCluster::start_with(3, &["--leader-imbalance-check-interval-seconds", "1"]);
    cluster.wait_formed(Duration::from_secs(60));
    let b = cluster.bootstrap();
    let admin = cluster.metrics[0].clone();
    topics(&b, json!({"clicks": [3, {}], "clicks-out": [3, {}]}));
    let module = example("identity");
    deploy_copy(&admin, &module, &["--from", "earliest"]);
    let first = 6000usize;
    // Paced (100 ms after each 200 records, about 3 s in all), so the kill below lands while
    // input is still arriving however fast the transform keeps up.
    let mut producer = py(&["stream", &b, "clicks", &first.to_string(), "0", "100"]).spawn().expect("producer");
    let committed = |admin: &str| -> i64 {
        let d = describe(admin, "copy");
        d["partitions"].as_array().into_iter().flatten().filter_map(|p| p["committed_offset"].as_i64()).sum()
    };
    // Mid-stream, SIGKILL the node running partition 0's runner.
    wait_until(Duration::from_secs(120), "a sixth of the outputs", || committed(&admin) > (first / 6) as i64);
    let leader = cluster.leaders(0, "clicks").iter().find(|l| l.0 == 0).map(|l| l.1).expect("a leader of clicks-0");
    let killed = usize::try_from(leader - 1).expect("node index");
    cluster.nodes[killed].kill9();
    let alive = (0..3).find(|i| *i != killed).expect("a live node");
    let admin = cluster.metrics[alive].clone();
    assert!(committed(&admin) < first as i64, "the node was killed with input left to transform");
    let status = producer.wait().expect("producer");
    assert!(status.success(), "every input record was acknowledged");
    // The killed node comes back and, as the preferred replica, leads again: the runners move
    // a second time, and what is produced now is transformed on their new home.
    cluster.nodes[killed].restart();
    wait_until(Duration::from_secs(120), "the restarted node leading again", || {
        cluster.leaders(alive, "clicks").iter().any(|l| l.1 == leader)
    });
    // A redeploy mid-stream (a new version of the same transform): the new runners go on from
    // the committed positions of the old ones.
    let total = first + 4000;
    let mut producer = py(&["stream", &b, "clicks", &total.to_string(), &first.to_string()]).spawn().expect("producer");
    wait_until(Duration::from_secs(120), "more outputs after the restart", || {
        committed(&admin) > (first + 1000) as i64
    });
    let redeployed = deploy_copy(&admin, &module, &[]);
    assert_eq!(redeployed["state"], "running");
    assert!(producer.wait().expect("producer").success(), "every input record was acknowledged");
    wait_caught_up(&admin, "copy", Duration::from_secs(180));
    run_client(&mut py(&["count", &b, "clicks-out", &total.to_string()]), Duration::from_secs(180));
}

#[test]
fn start_points_and_guest_log_lines() {
    let admin = free_addr();
    let broker = BrokerProcess::start(&["--admin-listen", &admin]);
    let b = broker.bootstrap();
    topics(&b, json!({"src": [1, {}], "from-latest": [1, {}], "from-offset": [1, {}], "from-time": [1, {}]}));
    // Events 0..10 at timestamps T+0 .. T+9 (transforms.py's event timestamps).
    run_client(&mut py(&["produce", &b, "src", "10", "events"]), Duration::from_secs(60));
    let module = example("identity");
    let module = module.to_str().expect("path");
    let t6 = format!("@{}", 1_700_000_000_000i64 + 6);
    for (name, out, from) in
        [("latest", "from-latest", "latest"), ("offset", "from-offset", "4"), ("time", "from-time", t6.as_str())]
    {
        fjordctl_ok(
            &admin,
            &["transform", "deploy", name, "--module", module, "--input", "src", "--output", out, "--from", from],
        );
    }
    // Three more after the deploys.
    run_client(&mut py(&["produce", &b, "src", "13", "events", "10"]), Duration::from_secs(60));
    for name in ["latest", "offset", "time"] {
        wait_caught_up(&admin, name, Duration::from_secs(60));
    }
    let count = |topic: &str| {
        let out = run_client(
            Command::new("kcat").args(["-b", &b, "-t", topic, "-C", "-o", "beginning", "-e", "-q", "-f", "%o\n"]),
            Duration::from_secs(30),
        );
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    assert_eq!(count("from-latest"), 3, "latest: only what came after the deploy");
    assert_eq!(count("from-offset"), 9, "offset 4: events 4..13");
    assert_eq!(count("from-time"), 7, "from T+6: events 6..13");

    // What a module logs, and prints to stdout, reaches `fjordctl transform logs`.
    let dir = tempfile::tempdir().expect("temp dir");
    let chatty = wat::parse_str(
        r#"(module
            (import "fjord" "log" (func $log (param i32 i32 i32)))
            (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 2)
            (data (i32.const 100) "hello from the guest")
            (data (i32.const 200) "printed line\n")
            (data (i32.const 300) "\c8\00\00\00\0d\00\00\00")
            (func (export "fjord_abi_version") (result i32) i32.const 1)
            (func (export "fjord_alloc") (param i32) (result i32) i32.const 1024)
            (func (export "fjord_on_batch") (param i32 i32) (result i32)
                (call $log (i32.const 2) (i32.const 100) (i32.const 20))
                (drop (call $fd_write (i32.const 1) (i32.const 300) (i32.const 1) (i32.const 400)))
                i32.const 0))"#,
    )
    .expect("wat");
    let chatty = write_module(&dir, "chatty", &chatty);
    fjordctl_ok(
        &admin,
        &[
            "transform",
            "deploy",
            "chatty",
            "--module",
            &chatty,
            "--input",
            "src",
            "--output",
            "from-latest",
            "--from",
            "earliest",
        ],
    );
    wait_caught_up(&admin, "chatty", Duration::from_secs(60));
    // Log lines are written beside the transform, not in its transaction: they follow shortly.
    let mut logs = String::new();
    wait_until(Duration::from_secs(30), "the module's log lines", || {
        logs = fjordctl_ok(&admin, &["transform", "logs", "chatty"]);
        logs.contains("hello from the guest") && logs.contains("printed line")
    });
    assert!(logs.lines().any(|l| l.contains("warn") && l.contains("hello from the guest")), "{logs}");
    assert!(logs.lines().any(|l| l.contains("info") && l.contains("printed line")), "{logs}");
    let json: Value =
        serde_json::from_str(&fjordctl_ok(&admin, &["-o", "json", "transform", "logs", "chatty", "-n", "1"]))
            .expect("JSON");
    assert_eq!(json.as_array().map(Vec::len), Some(1), "-n 1 gives one line: {json}");

    // Another module's 2,000 lines per batch after chatty's: `logs` reads the logs topic back
    // from its end in widening windows, and still finds chatty's lines behind them, in order.
    let loud = wat::parse_str(
        r#"(module
            (import "fjord" "log" (func $log (param i32 i32 i32)))
            (memory (export "memory") 2)
            (data (i32.const 100) "loud line.")
            (func (export "fjord_abi_version") (result i32) i32.const 1)
            (func (export "fjord_alloc") (param i32) (result i32) i32.const 1024)
            (func (export "fjord_on_batch") (param i32 i32) (result i32) (local $i i32)
                (loop $again
                    (call $log (i32.const 2) (i32.const 100) (i32.const 10))
                    (local.set $i (i32.add (local.get $i) (i32.const 1)))
                    (br_if $again (i32.lt_u (local.get $i) (i32.const 2000))))
                i32.const 0))"#,
    )
    .expect("wat");
    let loud = write_module(&dir, "loud", &loud);
    let deploy = [
        "transform",
        "deploy",
        "loud",
        "--module",
        &loud,
        "--input",
        "src",
        "--output",
        "from-time",
        "--from",
        "earliest",
    ];
    fjordctl_ok(&admin, &deploy);
    wait_caught_up(&admin, "loud", Duration::from_secs(60));
    let lines = |name: &str, n: &str| -> Vec<Value> {
        let out = fjordctl_ok(&admin, &["-o", "json", "transform", "logs", name, "-n", n]);
        serde_json::from_str::<Value>(&out).expect("JSON").as_array().cloned().unwrap_or_default()
    };
    wait_until(Duration::from_secs(30), "loud's lines", || lines("loud", "10000").len() >= 2000);
    let loud_lines = lines("loud", "10000");
    assert!(loud_lines.iter().all(|l| l["message"] == "loud line."), "only loud's own lines");
    assert_eq!(lines("loud", "3").len(), 3);
    let chatty_lines = lines("chatty", "2");
    let messages: Vec<&str> = chatty_lines.iter().filter_map(|l| l["message"].as_str()).collect();
    assert_eq!(messages.len(), 2, "{chatty_lines:?}");
    assert!(messages.iter().all(|m| m.contains("hello from the guest") || m.contains("printed line")), "{messages:?}");
    let all_chatty = lines("chatty", "10000");
    assert_eq!(&all_chatty[all_chatty.len() - 2..], &chatty_lines[..], "the newest two, oldest first");
}

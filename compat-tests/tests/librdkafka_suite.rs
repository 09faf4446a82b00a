//! librdkafka's own test suite against the real broker: the `test-runner`
//! that scripts/librdkafka-suite.sh builds from the rdkafka-sys crate's
//! librdkafka source runs its broker tests; every one passes or is listed,
//! with its reason, in compat-tests/librdkafka/skip.txt.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fjord_compat_tests::{repo_root, BrokerProcess};

/// The Kafka release whose behaviour Fjord matches: tests gated on a broker
/// version run as against that release.
const KAFKA_VERSION: &str = "3.9.0";
/// Tests run at once by the main run. Each starts its own clients and most
/// wait on timers (session timeouts, rebalance delays), so more than the
/// two cores here.
const PARALLEL: &str = "-p6";
/// Each run is killed past this.
const RUN_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// 0113 (cooperative rebalancing) alone runs ten minutes in full. It runs in
/// quick mode, and in full only the subtests that cover what Fjord got
/// wrong (issue 10), each in a process of its own beside the others.
const LONG_TEST: &str = "0113";
const LONG_TEST_SUBTESTS: &[&str] = &["l_unsubscribe", "v_commit_during_rebalance"];

/// 0081 (admin APIs) creates, describes and deletes ACLs, which needs an
/// authorizer: Kafka without one answers SECURITY_DISABLED as Fjord does, so
/// those subtests fail against either. Every other subtest of 0081 runs, one
/// run each (SUBTESTS takes one substring), in a lane of its own, but
/// UserScramCredentials: SCRAM credentials come with SASL (the security
/// issue), and until then their APIs are not served.
const ADMIN_TEST: &str = "0081";
const ADMIN_SUBTESTS: &[&str] = &[
    "unclean_destroy",
    "CreateTopics",
    "DeleteTopics",
    "CreatePartitions",
    "AlterConfigs",
    "DescribeConfigs",
    "DeleteRecords",
    "ListConsumerGroups",
    "DescribeConsumerGroups",
    "DescribeTopics",
    "DescribeCluster",
    "DeleteGroups",
    "DeleteConsumerGroupOffsets",
    "ListOffsets",
    "AlterConsumerGroupOffsets",
    "ListConsumerGroupOffsets",
];

/// One line of skip.txt: a test number and why it cannot pass here.
struct Skip {
    number: String,
    reason: String,
}

/// One test-runner process: which tests, in which mode.
struct Run {
    label: String,
    /// TESTS: the test numbers to run (all when None).
    tests: Option<String>,
    /// SUBTESTS: a substring of the subtest names to run.
    subtests: Option<String>,
    /// TESTS_SKIP: the test numbers not to run.
    skip: String,
    args: Vec<String>,
}

/// What a run left: its summary, full output and exit status.
struct Outcome {
    states: BTreeMap<String, String>,
    text: String,
    status: Option<std::process::ExitStatus>,
}

/// Tests that drive sockets through librdkafka's socket emulator (sockem).
/// Sockem closes descriptors under the client: in a parallel run it broke a
/// neighbouring test's connection ("Bad file descriptor" in another client
/// of the same process), and run together their clients were once still
/// shutting down when the runner counted leftover threads. So each runs
/// alone, in a process of its own.
fn sockem_tests(source_tests: &Path) -> Vec<String> {
    let src = std::fs::read_to_string(source_tests.join("test.c")).expect("librdkafka tests/test.c");
    let table = src.split("struct test tests[] = {").nth(1).expect("the tests table of test.c");
    table
        .split("_TEST(")
        .skip(1)
        // The entry's flags come before its closing `),`; manual tests run
        // only when named, and local ones need no broker.
        .filter_map(|entry| entry.split("),").next())
        .filter(|e| e.contains("TEST_F_SOCKEM") && !e.contains("TEST_F_MANUAL") && !e.contains("TEST_F_LOCAL"))
        .map(|entry| entry[..4].to_string())
        .collect()
}

fn skip_list(source_tests: &Path) -> Vec<Skip> {
    let path = repo_root().join("compat-tests/librdkafka/skip.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut skips: Vec<Skip> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (number, reason) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let reason = reason.trim();
        let at = format!("{}:{}", path.display(), i + 1);
        assert!(number.len() == 4 && number.bytes().all(|b| b.is_ascii_digit()), "{at}: not a test number");
        assert!(!reason.is_empty(), "{at}: test {number} is skipped without a reason");
        assert!(skips.iter().all(|s| s.number != number), "{at}: test {number} is listed twice");
        let exists = std::fs::read_dir(source_tests)
            .expect("librdkafka tests dir")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(&format!("{number}-")));
        assert!(exists, "{at}: librdkafka has no test {number}");
        skips.push(Skip { number: number.to_string(), reason: reason.to_string() });
    }
    skips
}

/// The runner's closing summary: state of each test by name. Rows look
/// like `|<color> 0001_multiobj   |     PASSED |   1.234s <reset>|`; a test
/// that timed out makes the runner print the table early, so the last row
/// of a test wins.
fn summary(log: &str) -> BTreeMap<String, String> {
    let mut states = BTreeMap::new();
    for line in log.lines() {
        let plain = strip_ansi(line);
        let cells: Vec<&str> = plain.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[0].is_empty() {
            continue;
        }
        let (name, state) = (cells[1], cells[2]);
        let is_test = name.len() > 5 && name.as_bytes()[..4].iter().all(u8::is_ascii_digit) && &name[4..5] == "_";
        if is_test && ["PASSED", "FAILED", "SKIPPED", "RUNNING", "DNS"].contains(&state) {
            states.insert(name.to_string(), state.to_string());
        }
    }
    states
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-byte (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The lines a test printed (the runner prefixes them with its name).
fn lines_of<'a>(log: &'a str, test: &str) -> Vec<&'a str> {
    let tag = format!("[{test} ");
    log.lines().filter(|l| l.contains(&tag)).collect()
}

/// The lines of a run's log that say why a test failed (its warnings and
/// failed assertions), the last few: CI shows the panic message first, and
/// a failure should be explained there without the kept logs.
fn causes(log: &str) -> Vec<String> {
    let lines: Vec<String> = log
        .lines()
        .map(strip_ansi)
        .filter(|l| l.contains("WARN:") || l.contains("FAIL") || l.contains("assert"))
        .filter(|l| !l.contains("SKIPPING TEST"))
        .collect();
    lines[lines.len().saturating_sub(12)..].to_vec()
}

/// Fails the test, keeping the runners' logs for a look.
fn fail_keeping_logs(work: tempfile::TempDir, broker: &BrokerProcess, why: &str, causes: &[String]) -> ! {
    let kept = work.keep();
    // The whole broker log beside the runners' (a stall shows there).
    let _ = std::fs::copy(broker.log_path(), kept.join("broker.log"));
    panic!(
        "{why}; runner and broker logs kept in {}\nwhat the runners said:\n{}\nbroker log:\n{}",
        kept.display(),
        causes.join("\n"),
        broker.log_tail()
    );
}

/// Runs one test-runner process to its end (or RUN_TIMEOUT), echoing the
/// start and end of each test.
fn run(run: &Run, dir: &Path, conf: &Path, log_path: &Path) -> Outcome {
    let tests_dir = dir.join("tests");
    let mut cmd = Command::new(tests_dir.join("test-runner"));
    cmd.args(&run.args)
        .current_dir(&tests_dir)
        .env("LD_LIBRARY_PATH", format!("{}:{}", dir.join("src").display(), dir.join("src-cpp").display()))
        .env("RDKAFKA_TEST_CONF", conf)
        .env("TEST_KAFKA_VERSION", KAFKA_VERSION)
        .env("TESTS_SKIP", &run.skip)
        // librdkafka's CI mode: longer client timeouts on a loaded machine.
        .env("CI", "true")
        .env_remove("TESTS")
        .env_remove("SUBTESTS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(t) = &run.tests {
        cmd.env("TESTS", t);
    }
    if let Some(t) = &run.subtests {
        cmd.env("SUBTESTS", t);
    }
    println!(
        "==> [{}] test-runner {} (TESTS={:?} SUBTESTS={:?})",
        run.label,
        run.args.join(" "),
        run.tests,
        run.subtests
    );
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start test-runner: {e}"));
    // Both streams go to one log.
    let log = std::sync::Arc::new(std::sync::Mutex::new(File::create(log_path).expect("runner log")));
    let pumps: Vec<_> = [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("stderr")),
    ]
    .into_iter()
    .map(|stream| {
        let log = log.clone();
        let label = run.label.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let plain = strip_ansi(&line);
                if plain.contains("================= Test ")
                    || plain.contains("================= Running test ")
                    || plain.contains("TEST FAILURE")
                {
                    println!("[{label}] {}", plain.trim());
                }
                let mut f = log.lock().unwrap_or_else(|p| p.into_inner());
                let _ = writeln!(f, "{line}");
            }
        })
    })
    .collect();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for test-runner") {
            break Some(s);
        }
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for p in pumps {
        let _ = p.join();
    }
    println!("==> [{}] finished in {:.0} s ({status:?})", run.label, started.elapsed().as_secs_f64());
    let text = String::from_utf8_lossy(&std::fs::read(log_path).expect("read runner log")).into_owned();
    Outcome { states: summary(&text), text, status }
}

#[test]
fn librdkafka_broker_tests() {
    let dir = PathBuf::from(std::env::var("FJORD_LIBRDKAFKA_DIR").unwrap_or_else(|_| {
        panic!("FJORD_LIBRDKAFKA_DIR is not set: scripts/librdkafka-suite.sh builds librdkafka's test-runner and runs this test")
    }));
    let tests_dir = dir.join("tests");
    let runner = tests_dir.join("test-runner");
    assert!(runner.exists(), "{} was not built: run scripts/librdkafka-suite.sh", runner.display());
    let skips = skip_list(&tests_dir);
    let skip: Vec<&str> = skips.iter().map(|s| s.number.as_str()).collect();
    for s in &skips {
        println!("skip {}: {}", s.number, s.reason);
    }

    // Kafka's defaults where the suite relies on them: new topics get 4
    // partitions (its "default" scenario) and 0113 waits for the 3 s
    // initial rebalance delay.
    let broker = BrokerProcess::start(&["--num-partitions", "4", "--group-initial-rebalance-delay-ms", "3000"]);
    let work = tempfile::tempdir().expect("temp dir");
    let conf = work.path().join("test.conf");
    std::fs::write(&conf, format!("metadata.broker.list={}\n", broker.bootstrap())).expect("write test.conf");

    // LIBRDKAFKA_SUITE_FULL=1 runs 0113 in full too (15 minutes here).
    let full = std::env::var("LIBRDKAFKA_SUITE_FULL").is_ok_and(|v| v == "1");
    let sockem: Vec<String> = sockem_tests(&tests_dir).into_iter().filter(|t| !skip.contains(&t.as_str())).collect();
    let run_of = |label: &str, tests: Option<String>, subtests: Option<&str>, args: &[&str]| Run {
        label: label.to_string(),
        tests,
        subtests: subtests.map(str::to_string),
        skip: skip.join(","),
        args: args.iter().map(|a| a.to_string()).collect(),
    };
    // -L: broker tests only (local and mock-cluster tests test the client
    // alone); -E: no sockem tests, which get their own run.
    // Lanes run side by side; the runs of a lane one after another.
    let mut main = run_of("main", None, None, &["-L", "-E", PARALLEL]);
    let sockem_lane = sockem.iter().map(|t| run_of(&format!("sockem {t}"), Some(t.clone()), None, &["-L"])).collect();
    let mut long_lane = Vec::new();
    if !full {
        main.skip.push_str(&format!(",{LONG_TEST}"));
        long_lane.push(run_of(&format!("{LONG_TEST} quick"), Some(LONG_TEST.into()), None, &["-L", "-Q"]));
        for subtest in LONG_TEST_SUBTESTS {
            long_lane.push(run_of(&format!("{LONG_TEST} {subtest}"), Some(LONG_TEST.into()), Some(subtest), &["-L"]));
        }
    }
    main.skip.push_str(&format!(",{ADMIN_TEST}"));
    // 0081's runs take six minutes one after another: half of them follow
    // 0113's short runs, so no lane outlasts the main run by much.
    let mut admin_lane = Vec::new();
    for (i, sub) in ADMIN_SUBTESTS.iter().enumerate() {
        let r = run_of(&format!("{ADMIN_TEST} {sub}"), Some(ADMIN_TEST.into()), Some(sub), &["-L"]);
        if i % 2 == 0 {
            admin_lane.push(r)
        } else {
            long_lane.push(r)
        }
    }
    let lanes: Vec<Vec<Run>> = vec![vec![main], sockem_lane, long_lane, admin_lane];

    let started = Instant::now();
    let outcomes: Vec<Vec<Outcome>> = std::thread::scope(|scope| {
        let handles: Vec<_> = lanes
            .iter()
            .enumerate()
            .map(|(i, lane)| {
                let (dir, conf, work) = (&dir, &conf, work.path());
                scope.spawn(move || {
                    lane.iter()
                        .enumerate()
                        .map(|(j, r)| run(r, dir, conf, &work.join(format!("runner-{i}-{j}.log"))))
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("runner thread")).collect()
    });
    let runs: Vec<&Run> = lanes.iter().flatten().collect();
    let outcomes: Vec<Outcome> = outcomes.into_iter().flatten().collect();

    let mut passed = 0;
    let mut failed: Vec<String> = Vec::new();
    let mut broken: Vec<String> = Vec::new();
    // What the runners said of what failed, for the failure message.
    let mut said: Vec<String> = Vec::new();
    // Runs to repeat, alone, for what failed in them.
    let mut retries: Vec<Run> = Vec::new();
    for (r, o) in runs.iter().zip(&outcomes) {
        passed += o.states.values().filter(|s| *s == "PASSED").count();
        let mut failed_here: Vec<String> = Vec::new();
        for (name, state) in &o.states {
            if matches!(state.as_str(), "FAILED" | "RUNNING") {
                failed_here.push(name.clone());
                let lines = lines_of(&o.text, name);
                println!("---- [{}] {name} FAILED; its last lines ----", r.label);
                for l in &lines[lines.len().saturating_sub(60)..] {
                    println!("{}", strip_ansi(l));
                }
            }
        }
        let ended_badly = o.states.is_empty() || o.status.is_none() || !o.status.is_some_and(|s| s.success());
        if o.states.is_empty() || o.status.is_none() {
            let tail: Vec<&str> = o.text.lines().collect();
            println!("---- [{}] ended without a summary; its last lines ----", r.label);
            println!("{}", tail[tail.len().saturating_sub(80)..].join("\n"));
        }
        if failed_here.is_empty() && !ended_badly {
            continue;
        }
        // A failed test runs once more, alone (its number for the main run,
        // the same run otherwise): on two shared cores a stalled moment can
        // fail a timing-bound client test. Both outcomes are printed, and
        // a test passing only on its retry is reported as flaky.
        if failed_here.is_empty() && r.tests.is_none() {
            // The whole main run broke off: too long to repeat.
            broken.push(format!("{} (exit {:?})", r.label, o.status));
            said.extend(causes(&o.text).into_iter().map(|l| format!("[{}] {l}", r.label)));
            continue;
        }
        let tests = if failed_here.is_empty() || r.tests.is_some() {
            r.tests.clone()
        } else {
            Some(failed_here.iter().map(|n| n[..4].to_string()).collect::<Vec<_>>().join(","))
        };
        retries.push(Run {
            label: format!("retry {}", r.label),
            tests,
            subtests: r.subtests.clone(),
            skip: r.skip.clone(),
            args: r.args.iter().filter(|a| !a.starts_with("-p")).cloned().collect(),
        });
    }
    let mut flaky: Vec<String> = Vec::new();
    for (i, retry) in retries.iter().enumerate() {
        let o = run(retry, &dir, &conf, &work.path().join(format!("runner-retry-{i}.log")));
        let ok = !o.states.is_empty() && o.status.is_some_and(|s| s.success());
        if !ok {
            said.extend(causes(&o.text).into_iter().map(|l| format!("[{}] {l}", retry.label)));
        }
        for (name, state) in &o.states {
            match state.as_str() {
                "PASSED" if ok => flaky.push(format!("{}/{name}", retry.label)),
                "FAILED" | "RUNNING" => {
                    failed.push(format!("{}/{name}", retry.label));
                    let lines = lines_of(&o.text, name);
                    println!("---- [{}] {name} FAILED again; its last lines ----", retry.label);
                    for l in &lines[lines.len().saturating_sub(60)..] {
                        println!("{}", strip_ansi(l));
                    }
                }
                _ => {}
            }
        }
        if ok {
            passed += o.states.values().filter(|s| *s == "PASSED").count();
        } else if o.states.values().all(|s| !matches!(s.as_str(), "FAILED" | "RUNNING")) {
            broken.push(format!("{} (exit {:?})", retry.label, o.status));
        }
    }
    if !flaky.is_empty() {
        println!("==> FLAKY: failed in the suite run, passed alone: {flaky:?}");
    }
    let by_runner: Vec<&String> = outcomes[0]
        .states
        .iter()
        .filter(|(n, s)| s.as_str() == "SKIPPED" && !skip.contains(&&n[..4]))
        .map(|(n, _)| n)
        .collect();
    println!(
        "==> all runs done in {:.0} s; {} tests skipped by skip.txt, {} by the runner itself: {}",
        started.elapsed().as_secs_f64(),
        skips.len(),
        by_runner.len(),
        by_runner.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
    );
    println!("librdkafka: {passed} passed, {} failed", failed.len());
    if !broken.is_empty() {
        fail_keeping_logs(work, &broker, &format!("test-runner runs broke off: {broken:?}"), &said);
    }
    if !failed.is_empty() || passed == 0 {
        fail_keeping_logs(work, &broker, &format!("{} librdkafka tests failed: {failed:?}", failed.len()), &said);
    }
}

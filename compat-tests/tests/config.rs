//! The `fjord` command line and config file, from outside: flags, FJORD_*
//! variables and the file set the same keys in that order of precedence,
//! and a bad value stops the broker at start with one line naming the key.

use std::process::Command;
use std::time::Duration;

use fjord_compat_tests::wire::topic_metadata;
use fjord_compat_tests::{broker_bin, run_to_exit, BrokerProcess, RawConn};

/// Runs `fjord` with these arguments, expecting it to stop on its own;
/// returns whether it succeeded and its stdout and stderr.
fn fjord_exits(args: &[&str]) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(broker_bin());
    cmd.arg("--listen").arg("127.0.0.1:0").arg("--data-dir").arg(dir.path()).args(args);
    let (status, out) = run_to_exit(&mut cmd, Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let status = status.unwrap_or_else(|| panic!("fjord {args:?} kept running:\n{stderr}"));
    assert!(!stderr.contains("panicked"), "fjord {args:?} panicked:\n{stderr}");
    (status.success(), String::from_utf8_lossy(&out.stdout).to_string(), stderr)
}

/// Asserts `fjord` refuses to start with these arguments, saying `says`
/// in one line.
fn refused(args: &[&str], says: &str) {
    let (ok, _, stderr) = fjord_exits(args);
    assert!(!ok, "fjord {args:?} should not start");
    let line = stderr.lines().find(|l| l.contains(says));
    assert!(line.is_some(), "fjord {args:?}: no line says {says:?}:\n{stderr}");
}

fn partitions_of_a_new_topic(broker: &BrokerProcess) -> usize {
    let mut conn = RawConn::connect(&broker.bootstrap());
    topic_metadata(&mut conn, "auto", true).partitions.len()
}

#[test]
fn variables_sit_between_the_file_and_the_flags() {
    let env = BrokerProcess::start_with_env(&[], &[("FJORD_NUM_PARTITIONS", "3")]);
    assert_eq!(partitions_of_a_new_topic(&env), 3, "FJORD_NUM_PARTITIONS");
    let flag = BrokerProcess::start_with_env(&["--num-partitions", "2"], &[("FJORD_NUM_PARTITIONS", "3")]);
    assert_eq!(partitions_of_a_new_topic(&flag), 2, "the flag wins over the variable");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("fjord.toml");
    std::fs::write(&file, "num_partitions = 5\n").expect("write config");
    let file_arg = file.to_str().expect("utf-8 path");
    let from_file = BrokerProcess::start(&["--config", file_arg]);
    assert_eq!(partitions_of_a_new_topic(&from_file), 5, "the file");
    let over_file = BrokerProcess::start_with_env(&["--config", file_arg], &[("FJORD_NUM_PARTITIONS", "4")]);
    assert_eq!(partitions_of_a_new_topic(&over_file), 4, "the variable wins over the file");
}

#[test]
fn help_lists_every_key_as_a_flag() {
    let (ok, help, stderr) = fjord_exits(&["--help"]);
    assert!(ok, "{stderr}");
    // Keys that had no flag before every key got one, and the oldest ones.
    for flag in ["--listen", "--data-dir", "--num-partitions", "--log-roll-ms", "--offsets-topic-num-partitions"] {
        assert!(help.contains(&format!("{flag} <")), "{flag} missing from --help:\n{help}");
    }
    assert!(help.contains("FJORD_NUM_PARTITIONS"), "variables are listed:\n{help}");
    assert!(help.contains("[default: 604800000]"), "defaults are listed:\n{help}");
}

#[test]
fn bad_values_stop_the_broker_naming_the_key() {
    refused(&["--num-partitions", "0"], "num_partitions must be >= 1, got 0");
    refused(&["--num-partitions", "many"], "--num-partitions");
    refused(&["--fsync", "sometimes"], "acks-all, always, never");
    refused(&["--log-segment-bytes", "10"], "log_segment_bytes");
    refused(&["--no-such-flag", "1"], "--no-such-flag");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("fjord.toml");
    std::fs::write(&file, "no_such_key = 1\n").expect("write config");
    refused(&["--config", file.to_str().expect("utf-8 path")], "no_such_key");
    refused(&["--config", "/no/such/fjord.toml"], "cannot read config file");
}

//! The CI smoke run: seconds of the benchmark against the real broker, so
//! the tool keeps working. No performance targets are asserted here; the
//! full run is `fjord-bench` on demand (bench/README.md).

use std::path::PathBuf;
use std::process::Command;

fn broker_bin() -> PathBuf {
    // Cargo sets it at run time; the compile-time path may be another checkout's (shared cache).
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("..");
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    let bin = target.join("debug/fjord");
    assert!(bin.exists(), "{} is missing: build fjord-broker first (scripts/test.sh does)", bin.display());
    bin
}

#[test]
fn smoke_run_measures_and_reports() {
    let work = tempfile::tempdir().expect("temp dir");
    let out = work.path().join("out");
    let run = Command::new(env!("CARGO_BIN_EXE_fjord-bench"))
        .arg("--smoke")
        .arg("--broker-bin")
        .arg(broker_bin())
        .arg("--out")
        .arg(&out)
        .arg("--data-parent")
        .arg(work.path())
        .output()
        .expect("run fjord-bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "fjord-bench failed:\n{stderr}");
    assert!(stderr.contains("produced"), "live progress is shown:\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).expect("results.json")).expect("json");
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2);
    for r in runs {
        assert!(r["produced_msgs"].as_u64().unwrap_or(0) > 0, "records were produced: {r}");
        assert!(r["consumed_msgs"].as_u64().unwrap_or(0) > 0, "records were consumed: {r}");
        assert!(r["end_to_end_latency"]["count"].as_u64().unwrap_or(0) > 0);
        assert!(r["broker_peak_rss_mib"].as_f64().unwrap_or(0.0) > 0.0);
        let slug = r["slug"].as_str().expect("slug");
        assert!(out.join(format!("throughput-{slug}.svg")).exists());
    }
    assert!(report["ceilings"]["disk_write_fsync_mb_s"].as_f64().unwrap_or(0.0) > 0.0);
    let md = std::fs::read_to_string(out.join("results.md")).expect("results.md");
    assert!(md.contains("× fsync'd disk"));
    let svg = std::fs::read_to_string(out.join("latency.svg")).expect("latency.svg");
    assert!(svg.starts_with("<svg"));
}

/// `--nodes 1,3`: the workload on one node, then on three `fjord` processes forming a cluster
/// (RF 3), and the report's table of the cluster's figures as ratios of the single node's.
#[test]
fn cluster_run_is_compared_with_one_node() {
    let work = tempfile::tempdir().expect("temp dir");
    let out = work.path().join("out");
    let workload = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("workloads/cluster/1-max-rate.yaml");
    let run = Command::new(env!("CARGO_BIN_EXE_fjord-bench"))
        .args(["--smoke", "--nodes", "1,3", "--broker-bin"])
        .arg(broker_bin())
        .arg("--out")
        .arg(&out)
        .arg("--data-parent")
        .arg(work.path())
        .arg(&workload)
        .output()
        .expect("run fjord-bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "fjord-bench failed:\n{stderr}");
    assert!(stderr.contains("on 3 nodes (RF 3)"), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).expect("results.json")).expect("json");
    let runs = report["runs"].as_array().expect("runs");
    let sizes: Vec<(u64, u64)> = runs
        .iter()
        .map(|r| (r["nodes"].as_u64().unwrap_or(0), r["replication_factor"].as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(sizes, vec![(1, 1), (3, 3)]);
    for r in runs {
        assert!(r["produced_msgs"].as_u64().unwrap_or(0) > 0, "records were produced: {r}");
        assert!(r["end_to_end_latency"]["count"].as_u64().unwrap_or(0) > 0, "records were consumed: {r}");
        assert!(r["broker_cpu_cores"].as_f64().unwrap_or(0.0) > 0.0);
        let slug = r["slug"].as_str().expect("slug");
        assert!(out.join(format!("throughput-{slug}.svg")).exists());
    }
    let md = std::fs::read_to_string(out.join("results.md")).expect("results.md");
    assert!(md.contains("× the same workload on the first cluster size"), "{md}");
    assert!(md.contains("· 3 nodes, RF 3"), "{md}");
}

#[test]
fn bad_cluster_sizes_are_clear_errors() {
    for (args, says) in [
        (&["--nodes", "0"][..], "--nodes"),
        (&["--nodes", "1,3", "--replication-factor", "2"][..], "--replication-factor"),
        (&["--nodes", "3", "--bootstrap", "127.0.0.1:9092"][..], "cannot be used with"),
    ] {
        let run = Command::new(env!("CARGO_BIN_EXE_fjord-bench")).args(args).output().expect("run fjord-bench");
        assert!(!run.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.contains(says) && stderr.lines().count() <= 6, "{args:?}: {stderr}");
    }
}

#[test]
fn bad_workload_is_a_clear_error() {
    let work = tempfile::tempdir().expect("temp dir");
    let bad = work.path().join("bad.yaml");
    std::fs::write(&bad, "name: broken\npartitionsPerTopic: 0\nmessageSize: 100\ntestDurationMinutes: 1\n").unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_fjord-bench")).arg(&bad).output().expect("run fjord-bench");
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("invalid workload") && stderr.contains("partitionsPerTopic"), "{stderr}");
}

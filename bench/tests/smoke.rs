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
